/* AdamW on a flat buffer in torch.optim.AdamW's order of operations (csrc/cpu/adamw.c):
 *   g ← grad_scale·g;  p ← p·(1 − lr·wd);  m ← m + (1 − β1)(g − m);  v ← β2·v + (1 − β2)·g²
 *   p ← p − (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + eps)
 * and Σx² in float64 for global-norm clipping (fixed-size two-stage reduction: deterministic). */
#include "cuda_internal.cuh"

__global__ void adamw_kernel(float *p, float *m, float *v, const float *g, size_t n, float beta1, float beta2,
                             float eps, float decay, float step_size, float bias_correction2_sqrt, float grad_scale) {
    CA_GRID_STRIDE(i, n) {
        float gi = g[i] * grad_scale;
        float pi = p[i] * decay;
        float mi = m[i] + (1.0f - beta1) * (gi - m[i]);
        float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - step_size * (mi / (sqrtf(vi) / bias_correction2_sqrt + eps));
    }
}

extern "C" void ca_cuda_adamw_update(float *p, float *m, float *v, const float *g, size_t n, float lr, float beta1,
                                     float beta2, float eps, float weight_decay, int step, float grad_scale) {
    if (!n || ca_cuda_failed()) return;
    /* the scalars exactly as the CPU op forms them (pow in double, then rounded) */
    const float decay = 1.0f - lr * weight_decay;
    const float step_size = lr / (float)(1.0 - pow(beta1, step));
    const float bias_correction2_sqrt = sqrtf((float)(1.0 - pow(beta2, step)));
    adamw_kernel<<<ca_blocks(n, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(
        p, m, v, g, n, beta1, beta2, eps, decay, step_size, bias_correction2_sqrt, grad_scale);
    CA_CUDA_LAUNCHED("adamw_update");
}

#define SUMSQ_BLOCKS 256

/* partial[b] = Σ over the grid-stride slice of block b of x² (or (x − ref)²), in double */
__global__ void sum_squares_kernel(double *partial, const float *x, const float *ref, size_t n) {
    __shared__ double shared[32];
    double s = 0.0;
    CA_GRID_STRIDE(i, n) {
        double d = ref ? (double)x[i] - (double)ref[i] : (double)x[i];
        s += d * d;
    }
    s = ca_block_sum(s, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

/* Σ (x − ref)² over n (ref may be NULL), on the device, summed in a fixed order: the same result every run. */
double ca_cuda_sum_squares_diff(const float *x, const float *ref, size_t n) {
    if (!n || ca_cuda_failed()) return 0.0;
    double *partial = (double *)ca_cuda_workspace(SUMSQ_BLOCKS * sizeof(double));
    if (!partial) return 0.0;
    sum_squares_kernel<<<SUMSQ_BLOCKS, CA_BLOCK, 0, ca_cuda_stream()>>>(partial, x, ref, n);
    if (!CA_CUDA_LAUNCHED("sum_squares")) return 0.0;
    double host[SUMSQ_BLOCKS];
    if (!ca_cuda_ok(cudaMemcpyAsync(host, partial, sizeof host, cudaMemcpyDeviceToHost, ca_cuda_stream()),
                    "sum_squares (copy)") ||
        !ca_cuda_ok(cudaStreamSynchronize(ca_cuda_stream()), "sum_squares (synchronize)"))
        return 0.0;
    double total = 0.0;
    for (int b = 0; b < SUMSQ_BLOCKS; b++) total += host[b];
    return total;
}

extern "C" double ca_cuda_sum_squares(const float *x, size_t n) { return ca_cuda_sum_squares_diff(x, NULL, n); }
