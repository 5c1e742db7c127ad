/* Softmax cross-entropy over the vocabulary (csrc/cpu/crossentropy.c): loss_n = logsumexp(logits_n) −
 * logits_n[target_n], rows with target −100 skipped; the exp sums in double. One block per row. The forward's
 * total is summed on the host from the per-row losses in row order (deterministic). */
#include <vector>

#include "cuda_internal.cuh"

#define CE_THREADS 512

/* max and logsumexp of one row (every thread gets both) */
__device__ void row_max_lse(const float *l, int V, float *shared_f, double *shared_d, float *mx_out, double *lse_out) {
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, l[j]);
    mx = ca_block_max(mx, shared_f);
    double sum = 0.0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) sum += (double)expf(l[j] - mx);
    sum = ca_block_sum(sum, shared_d);
    *mx_out = mx;
    *lse_out = (double)mx + log(sum);
}

__global__ void crossentropy_forward_kernel(double *row_loss, float *losses, const float *logits,
                                            const int32_t *targets, int V) {
    __shared__ float shared_f[32];
    __shared__ double shared_d[32];
    const size_t n = blockIdx.x;
    const int tg = targets[n];
    if (tg == CA_IGNORE_INDEX) { /* uniform per block: no thread reaches a barrier alone */
        if (threadIdx.x == 0) {
            row_loss[n] = 0.0;
            if (losses) losses[n] = 0.0f;
        }
        return;
    }
    const float *l = logits + n * V;
    float mx;
    double lse;
    row_max_lse(l, V, shared_f, shared_d, &mx, &lse);
    if (threadIdx.x == 0) {
        double ln = lse - (double)l[tg];
        row_loss[n] = ln;
        if (losses) losses[n] = (float)ln;
    }
}

/* dlogits = (softmax − onehot)·scale, rows with target −100 zero. dlogits may alias logits: every thread
 * reads its elements for the max and the sum before the block reductions' barriers, and afterwards reads
 * each element only right before writing it itself. */
__global__ void crossentropy_backward_kernel(float *dlogits, const float *logits, const int32_t *targets, float scale,
                                             int V) {
    __shared__ float shared_f[32];
    __shared__ double shared_d[32];
    const size_t n = blockIdx.x;
    const int tg = targets[n];
    float *dl = dlogits + n * V;
    if (tg == CA_IGNORE_INDEX) {
        for (int j = threadIdx.x; j < V; j += blockDim.x) dl[j] = 0.0f;
        return;
    }
    const float *l = logits + n * V;
    float mx;
    double lse;
    row_max_lse(l, V, shared_f, shared_d, &mx, &lse);
    const float k = (float)exp((double)mx - lse) * scale; /* softmax_j = exp(l_j − mx)·exp(mx − lse) */
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float g = expf(l[j] - mx) * k;
        if (j == tg) g -= scale;
        dl[j] = g;
    }
}

extern "C" double ca_cuda_crossentropy_forward(float *losses, const float *logits, const int32_t *targets, int N,
                                               int V) {
    if (N <= 0 || V <= 0 || ca_cuda_failed()) return 0.0;
    double *row_loss = (double *)ca_cuda_workspace((size_t)N * sizeof(double));
    if (!row_loss) return 0.0;
    crossentropy_forward_kernel<<<N, CE_THREADS, 0, ca_cuda_stream()>>>(row_loss, losses, logits, targets, V);
    if (!CA_CUDA_LAUNCHED("crossentropy_forward")) return 0.0;
    std::vector<double> host((size_t)N);
    if (!ca_cuda_ok(cudaMemcpyAsync(host.data(), row_loss, (size_t)N * sizeof(double), cudaMemcpyDeviceToHost,
                                    ca_cuda_stream()),
                    "crossentropy_forward (copy)") ||
        !ca_cuda_ok(cudaStreamSynchronize(ca_cuda_stream()), "crossentropy_forward (synchronize)"))
        return 0.0;
    double total = 0.0;
    for (int n = 0; n < N; n++) total += host[(size_t)n];
    return total;
}

extern "C" void ca_cuda_crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets, float scale,
                                              int N, int V) {
    if (N <= 0 || V <= 0 || ca_cuda_failed()) return;
    crossentropy_backward_kernel<<<N, CE_THREADS, 0, ca_cuda_stream()>>>(dlogits, logits, targets, scale, V);
    CA_CUDA_LAUNCHED("crossentropy_backward");
}
