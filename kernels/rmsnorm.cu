/* RMSNorm (lfm2.md §2.3), as csrc/cpu/rmsnorm.c: y = w ⊙ (x · r),  r = 1/sqrt(mean(x²) + eps), plain w.
 * One block per row; also used per head (N = tokens·heads, C = HS). */
#include "cuda_internal.cuh"

__global__ void rmsnorm_forward_kernel(float *out, float *rstd, const float *inp, const float *weight, int C,
                                       float eps) {
    __shared__ float shared[32];
    const size_t row = blockIdx.x;
    const float *x = inp + row * C;
    float *y = out + row * C;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) ss += x[i] * x[i];
    ss = ca_block_sum(ss, shared);
    const float r = 1.0f / sqrtf(ss / (float)C + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    for (int i = threadIdx.x; i < C; i += blockDim.x) y[i] = weight[i] * (x[i] * r);
}

/* dx += r · (g − x̂ · mean(g ⊙ x̂)),  g = w ⊙ dy,  x̂ = x·r  (as dx = r·g − x·r·k with k = r²·Σ g·x / C) */
__global__ void rmsnorm_backward_kernel(float *dinp, const float *dout, const float *inp, const float *weight,
                                        const float *rstd, int C) {
    __shared__ float shared[32];
    const size_t row = blockIdx.x;
    const float *x = inp + row * C, *dy = dout + row * C;
    float *dx = dinp + row * C;
    const float r = rstd[row];
    float dot = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) dot += weight[i] * dy[i] * x[i];
    dot = ca_block_sum(dot, shared);
    const float k = dot * r * r / (float)C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) dx[i] += r * (weight[i] * dy[i] - x[i] * k);
}

/* dw[c] += Σ_n dy[n,c] · x[n,c] · r[n] */
struct RmsnormDweight {
    const float *dout, *inp, *rstd;
    int C;
    __device__ float operator()(int n, int c) const {
        size_t i = (size_t)n * C + c;
        return dout[i] * (inp[i] * rstd[n]);
    }
};

/* Threads per row block: the smallest multiple of 32 covering C, at most CA_BLOCK. */
static unsigned int row_threads(int C) {
    unsigned int t = (unsigned int)((C + 31) / 32 * 32);
    return t > CA_BLOCK ? CA_BLOCK : t;
}

extern "C" void ca_cuda_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C,
                                        float eps) {
    if (N <= 0 || C <= 0 || ca_cuda_failed()) return;
    rmsnorm_forward_kernel<<<N, row_threads(C), 0, ca_cuda_stream()>>>(out, rstd, inp, weight, C, eps);
    CA_CUDA_LAUNCHED("rmsnorm_forward");
}

extern "C" void ca_cuda_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                                         const float *weight, const float *rstd, int N, int C) {
    if (N <= 0 || C <= 0 || ca_cuda_failed()) return;
    rmsnorm_backward_kernel<<<N, row_threads(C), 0, ca_cuda_stream()>>>(dinp, dout, inp, weight, rstd, C);
    if (!CA_CUDA_LAUNCHED("rmsnorm_backward")) return;
    if (dweight) {
        column_sum_kernel<<<column_sum_grid(N, C), dim3(32, 8), 0, ca_cuda_stream()>>>(
            dweight, N, C, RmsnormDweight{dout, inp, rstd, C});
        CA_CUDA_LAUNCHED("rmsnorm_backward (dweight)");
    }
}
