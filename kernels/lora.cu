/* The low-rank path of a LoRA-adapted linear (PEFT's lora.Linear), as csrc/cpu/lora.c:
 *   y = W·x + s · B(A·x̃),  x̃ = dropout(x)
 * four thin cuBLAS GEMMs, and the counter-based inverted dropout whose mask is regenerated from (seed, index)
 * with exactly the CPU's splitmix64 hash, so CPU and CUDA drop the same elements. */
#include "cuda_internal.cuh"

/* forward:  h = x̃·Aᵀ (N, r);  out += s·h·Bᵀ (N, OC) */
extern "C" void ca_cuda_lora_forward(float *out, float *h, const float *x, const float *A, const float *B, float scale,
                                     int N, int C, int OC, int r) {
    ca_cuda_gemm(0, 1, N, r, C, 1.0f, x, C, A, C, 0.0f, h, r);
    ca_cuda_gemm(0, 1, N, OC, r, scale, h, r, B, r, 1.0f, out, OC);
}

/* dB += s·doutᵀ·h;  dh = s·dout·B;  dA += dhᵀ·x̃;  dx̃ += dh·A */
extern "C" void ca_cuda_lora_backward(float *dx, float *dA, float *dB, float *dh, const float *dout, const float *x,
                                      const float *h, const float *A, const float *B, float scale, int N, int C,
                                      int OC, int r) {
    if (dB) ca_cuda_gemm(1, 0, OC, r, N, scale, dout, OC, h, r, 1.0f, dB, r);
    ca_cuda_gemm(0, 0, N, r, OC, scale, dout, OC, B, r, 0.0f, dh, r);
    if (dA) ca_cuda_gemm(1, 0, r, C, N, 1.0f, dh, r, x, C, 1.0f, dA, C);
    if (dx) ca_cuda_gemm(0, 0, N, C, r, 1.0f, dh, r, A, C, 1.0f, dx, C);
}

/* W += s·B·A (OC, C) */
extern "C" void ca_cuda_lora_merge(float *W, const float *A, const float *B, float scale, int C, int OC, int r) {
    ca_cuda_gemm(0, 0, OC, C, r, scale, B, r, A, C, 1.0f, W, C);
}

/* keep element i iff u(seed, i) ≥ p, u = top 24 bits of splitmix64(seed + φ·(i+1)) / 2²⁴ (csrc/cpu/lora.c) */
__device__ __forceinline__ bool dropout_keep(uint64_t seed, size_t i, float p) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f) >= p;
}

__global__ void dropout_kernel(float *out, const float *inp, size_t n, float p, float keep_scale, uint64_t seed) {
    CA_GRID_STRIDE(i, n) out[i] = dropout_keep(seed, i, p) ? inp[i] * keep_scale : 0.0f;
}

extern "C" void ca_cuda_dropout_forward(float *out, const float *inp, size_t n, float p, uint64_t seed) {
    if (!n || ca_cuda_failed()) return;
    const float keep_scale = 1.0f / (1.0f - p);
    dropout_kernel<<<ca_blocks(n, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(out, inp, n, p, keep_scale, seed);
    CA_CUDA_LAUNCHED("dropout");
}

/* the same mask and scale: d/dx (x·keep/(1−p)) */
extern "C" void ca_cuda_dropout_backward(float *dinp, const float *dout, size_t n, float p, uint64_t seed) {
    ca_cuda_dropout_forward(dinp, dout, n, p, seed);
}
