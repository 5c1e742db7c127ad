/* Private helpers shared by the CPU op files (not part of the ops contract). */
#ifndef CA_CPU_INTERNAL_H
#define CA_CPU_INTERNAL_H

/* The op files never read floating-point exception flags, so GCC may treat FP ops as non-trapping: without
 * this, loops calling ca_expf below (clamp + rounding + polynomial) are left scalar ("control flow in loop"),
 * 4–8x slower for swiglu and the softmaxes. Must come before any function definition in the file. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#define CA_OMP_NT() omp_get_num_threads()
#define CA_OMP_IT() omp_get_thread_num()
#else
#define CA_OMP_NT() 1
#define CA_OMP_IT() 0
#endif

/* Below this many floats of work a parallel region costs more than it saves. */
#define CA_PAR_MIN 32768

/* The column slice [*c0, *c1) of a C-wide row owned by thread `it` of `nt`, cut at 16-float (cache line)
 * boundaries so that threads never write the same line. Used for reductions over rows (dweight, dbias,
 * dwte) that are parallelised over channels to stay race-free and deterministic. */
static inline void ca_col_slice(int C, int it, int nt, int *c0, int *c1) {
    long long blocks = (C + 15) / 16;
    long long a = blocks * it / nt * 16, b = blocks * (it + 1) / nt * 16;
    *c0 = (int)(a < C ? a : C);
    *c1 = (int)(b < C ? b : C);
}

/* Elementwise ops built twice, for AVX-512 (x86-64-v4) and the AVX2 baseline, the loader picking by CPU: their
 * exp/sigmoid loops run about 2x faster in 16 lanes (swiglu 96 -> 46 us at 256 x 384). Elementwise results are
 * the same in both; a sum over lanes may round differently from one CPU to another, never between two calls. */
#define CA_AVX512_CLONE __attribute__((target_clones("arch=x86-64-v4", "default")))

/* exp(x) in float, ~1 ulp, branch-free so that loops calling it vectorise (glibc's expf does not without
 * -ffast-math). Cephes polynomial on r = x − n·ln2, |r| ≤ ln2/2, then scaled by 2^n through the exponent bits.
 * Inputs are clamped to [-87.3, 88.3], so tiny results saturate at ~1e-38 instead of flushing to 0 and huge
 * ones at ~2e38 instead of inf: softmax / sigmoid callers never depend on either. */
static inline float ca_expf(float x) {
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.3f ? 88.3f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round-to-nearest via 1.5·2^23 */
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } s;
    s.i = ((int32_t)n + 127) << 23;
    return p * s.f;
}

/* fp32 → bf16 bits, round to nearest even (NaN stays a quiet NaN) */
static inline uint16_t ca_bf16_roundf(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* σ(x) = 1/(1 + e^(−x)) from e = exp(−|x|) ∈ (0, 1]: σ = 1/(1 + e) for x ≥ 0, e/(1 + e) below. One division and
 * no overflow: 1/(1 + ca_expf(−x)) vectorises with a second division for the clamped branch, 3x slower here. */
static inline float ca_sigmoidf(float x) {
    const float e = ca_expf(x < 0.0f ? x : -x);
    const float s = 1.0f / (1.0f + e);
    return x >= 0.0f ? s : e * s;
}

/* Softmax backward over rows of probabilities P and, in place, dP: D = Σ_j P_j·dP_j (= dO·o), then
 * dS_j = P_j·(dP_j − D)·scale, the scale of the scores folded in (attention.c, mha.c). */
static inline void ca_softmax_backward_rows(float *restrict dS, size_t ldd, const float *restrict P, size_t ldp,
                                            int rows, int n, float scale) {
    for (int i = 0; i < rows; i++) {
        const float *restrict p = P + (size_t)i * ldp;
        float *restrict d = dS + (size_t)i * ldd;
        float D = 0.0f;
#pragma omp simd reduction(+ : D)
        for (int j = 0; j < n; j++) D += p[j] * d[j];
#pragma omp simd
        for (int j = 0; j < n; j++) d[j] = p[j] * (d[j] - D) * scale;
    }
}

/* Row-major C (M, Nc) = beta·C + alpha·op(A)·op(B) through (Open)BLAS, split across the OpenMP threads when
 * large (linear.c explains why the core keeps OpenBLAS single-threaded). */
void ca_cpu_gemm(int transA, int transB, int M, int Nc, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc);

/* linear_lowp.c's bf16 kernels as building blocks (AVX512-BF16 only: callers check ca_cpu_lowp_isa()); fp32 sums,
 * −1 when a workspace cannot be allocated:
 *   nt:   out (N, OC) = bf16(x) (N, C) · Wᵀ, W (OC, C) bf16 with row stride ldw (even; 0: C)
 *   nn:   out (M, C) (row stride ldo) = A (M, K) · B (K, C), A bf16 rows of stride lda (even, zero-padded to an
 *         even K), B bf16 rows of stride ldb
 *   rows: out (n rows of stride ldo ≥ K rounded up to even) = bf16(in) (n, K), round to nearest even */
int ca_cpu_bf16_gemm_nt(float *out, const float *x, const uint16_t *W, size_t ldw, int N, int C, int OC);
int ca_cpu_bf16_gemm_nn(float *out, size_t ldo, const uint16_t *A, size_t lda, const uint16_t *B, size_t ldb, int M,
                        int C, int K);
void ca_cpu_bf16_rows(uint16_t *out, size_t ldo, const float *in, int n, int K);

#endif
