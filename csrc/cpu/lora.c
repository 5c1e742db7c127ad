/* The low-rank path of a LoRA-adapted linear (PEFT's lora.Linear.forward):
 *   y = W·x + s · B(A·x̃),   x̃ = dropout(x),  s = alpha/r (alpha/sqrt(r) with rsLoRA)
 * The base product W·x is the ordinary linear op; this file adds the s·B(A·x̃) term and its gradients, and the
 * dropout that feeds it. Every GEMM here has one side of size r, so they are cheap next to the base GEMM. */
#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

/* forward:  h = x̃·Aᵀ  (N, r);   out += s · h·Bᵀ  (N, OC) */
void ca_cpu_lora_forward(float *out, float *h, const float *x, const float *A, const float *B, float scale, int N, int C,
                         int OC, int r) {
    ca_cpu_gemm(0, 1, N, r, C, 1.0f, x, C, A, C, 0.0f, h, r);
    ca_cpu_gemm(0, 1, N, OC, r, scale, h, r, B, r, 1.0f, out, OC);
}

/* backward, from out += s·h·Bᵀ and h = x̃·Aᵀ:
 *   dB += s · doutᵀ·h   (OC, r)      dh = s · dout·B   (N, r)
 *   dA += dhᵀ·x̃         (r, C)       dx̃ += dh·A        (N, C) */
void ca_cpu_lora_backward(float *dx, float *dA, float *dB, float *dh, const float *dout, const float *x, const float *h,
                          const float *A, const float *B, float scale, int N, int C, int OC, int r) {
    if (dB) ca_cpu_gemm(1, 0, OC, r, N, scale, dout, OC, h, r, 1.0f, dB, r);
    ca_cpu_gemm(0, 0, N, r, OC, scale, dout, OC, B, r, 0.0f, dh, r);
    if (dA) ca_cpu_gemm(1, 0, r, C, N, 1.0f, dh, r, x, C, 1.0f, dA, C);
    if (dx) ca_cpu_gemm(0, 0, N, C, r, 1.0f, dh, r, A, C, 1.0f, dx, C);
}

/* Inverted dropout with a counter-based mask, so backward regenerates the mask from (seed, index) instead of
 * storing it: keep element i iff u(seed, i) >= p, where u is the top 24 bits of a splitmix64 hash in [0, 1);
 * kept elements are scaled by 1/(1−p). */
static inline int dropout_keep(uint64_t seed, size_t i, float p) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f) >= p;
}

void ca_cpu_dropout_forward(float *out, const float *inp, size_t n, float p, uint64_t seed) {
    const float keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (n > 4 * CA_PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = dropout_keep(seed, i, p) ? inp[i] * keep_scale : 0.0f;
}

void ca_cpu_dropout_backward(float *dinp, const float *dout, size_t n, float p, uint64_t seed) {
    ca_cpu_dropout_forward(dinp, dout, n, p, seed); /* the same mask and scale: d/dx (x·keep/(1−p)) */
}

/* merge: W += scale · B·A  (OC, C); unmerge is scale → −scale (PEFT's get_delta_weight = s·B·A) */
void ca_cpu_lora_merge(float *W, const float *A, const float *B, float scale, int C, int OC, int r) {
    ca_cpu_gemm(0, 0, OC, C, r, scale, B, r, A, C, 1.0f, W, C);
}
