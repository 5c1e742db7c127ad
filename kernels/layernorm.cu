/* LayerNorm (SigLIP2 tower and projector, lfm2.md §4.3, §4.6), as csrc/cpu/layernorm.c:
 * y = (x − mean)·rstd·w + b,  rstd = 1/sqrt(var_biased + eps), two-pass variance. One block per row. */
#include "cuda_internal.cuh"

__global__ void layernorm_forward_kernel(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                                         const float *bias, int C, float eps) {
    __shared__ float shared[32];
    const size_t row = blockIdx.x;
    const float *x = inp + row * C;
    float *y = out + row * C;
    float s = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) s += x[i];
    const float m = ca_block_sum(s, shared) / (float)C;
    float v = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) v += (x[i] - m) * (x[i] - m);
    v = ca_block_sum(v, shared);
    const float r = 1.0f / sqrtf(v / (float)C + eps);
    if (threadIdx.x == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
    for (int i = threadIdx.x; i < C; i += blockDim.x) y[i] = (x[i] - m) * r * weight[i] + bias[i];
}

/* dx += r · (g − mean(g) − x̂ · mean(g ⊙ x̂)),  g = w ⊙ dy,  x̂ = (x − m)·r */
__global__ void layernorm_backward_kernel(float *dinp, const float *dout, const float *inp, const float *weight,
                                          const float *mean, const float *rstd, int C) {
    __shared__ float shared[32];
    const size_t row = blockIdx.x;
    const float *x = inp + row * C, *dy = dout + row * C;
    float *dx = dinp + row * C;
    const float m = mean[row], r = rstd[row];
    float sg = 0.0f, sgx = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        float g = weight[i] * dy[i];
        sg += g;
        sgx += g * (x[i] - m) * r;
    }
    const float mg = ca_block_sum(sg, shared) / (float)C;
    const float mgx = ca_block_sum(sgx, shared) / (float)C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) dx[i] += r * (weight[i] * dy[i] - mg - (x[i] - m) * r * mgx);
}

struct LayernormDweight { /* dw[c] += Σ_n dy · x̂ */
    const float *dout, *inp, *mean, *rstd;
    int C;
    __device__ float operator()(int n, int c) const {
        size_t i = (size_t)n * C + c;
        return dout[i] * ((inp[i] - mean[n]) * rstd[n]);
    }
};

struct LayernormDbias { /* db[c] += Σ_n dy */
    const float *dout;
    int C;
    __device__ float operator()(int n, int c) const { return dout[(size_t)n * C + c]; }
};

static unsigned int row_threads(int C) {
    unsigned int t = (unsigned int)((C + 31) / 32 * 32);
    return t > CA_BLOCK ? CA_BLOCK : t;
}

extern "C" void ca_cuda_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                                          const float *bias, int N, int C, float eps) {
    if (N <= 0 || C <= 0 || ca_cuda_failed()) return;
    layernorm_forward_kernel<<<N, row_threads(C), 0, ca_cuda_stream()>>>(out, mean, rstd, inp, weight, bias, C, eps);
    CA_CUDA_LAUNCHED("layernorm_forward");
}

extern "C" void ca_cuda_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                           const float *inp, const float *weight, const float *mean,
                                           const float *rstd, int N, int C) {
    if (N <= 0 || C <= 0 || ca_cuda_failed()) return;
    cudaStream_t s = ca_cuda_stream();
    layernorm_backward_kernel<<<N, row_threads(C), 0, s>>>(dinp, dout, inp, weight, mean, rstd, C);
    if (!CA_CUDA_LAUNCHED("layernorm_backward")) return;
    if (dweight)
        column_sum_kernel<<<column_sum_grid(N, C), dim3(32, 8), 0, s>>>(dweight, N, C,
                                                                       LayernormDweight{dout, inp, mean, rstd, C});
    if (dbias) column_sum_kernel<<<column_sum_grid(N, C), dim3(32, 8), 0, s>>>(dbias, N, C, LayernormDbias{dout, C});
    CA_CUDA_LAUNCHED("layernorm_backward (dweight, dbias)");
}
