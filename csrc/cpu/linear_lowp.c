/* Low-precision weight-only GEMV for decoding: out (OC) = W (OC, C) · x (C) with W stored in bf16, or in int8
 * with one fp32 scale per row (W[o, k] = scale[o] · q[o, k]), and x, the products and the sums in fp32. Decoding one token reads every weight once and does 2 FLOP per weight, so it
 * is bound by memory bandwidth (machine.md: ≈ 21–25 GB/s per core); bf16 halves the bytes per token.
 *
 * bf16 is the top half of an fp32: widening is a 16-bit left shift, exact, so the only error is the rounding of
 * W to bf16 (relative 2⁻⁹), and x keeps full fp32 precision (unlike a dot product of two bf16 vectors such as
 * AVX512-BF16's vdpbf16ps, which would round x as well). The widening costs one shift per 16 weights, far
 * below the memory time. The AVX-512 variant is chosen at run time (cpuid); the core's baseline is
 * x86-64-v3 (AVX2 + FMA), so the AVX2 variant is always there.
 *
 * int8 quarters the bytes; widening is a sign extension and an exact int → float conversion.
 *
 * Four rows share each load of x; the rows are split over the OpenMP threads in 16-row blocks. */
#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

#include <immintrin.h>
#include <math.h>

/* fp32 → bf16, round to nearest even (as torch's .to(torch.bfloat16)); NaNs stay (quiet) NaNs. */
static inline uint16_t bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float bf16_widen(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

void ca_cpu_bf16_from_f32(uint16_t *restrict out, /* (n) */
                          const float *restrict in, /* (n) */
                          size_t n) {
#pragma omp parallel for if (n > CA_PAR_MIN) schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = bf16_round(in[i]);
}

void ca_cpu_f32_from_bf16(float *restrict out, const uint16_t *restrict in, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = bf16_widen(in[i]);
}

/* rows [o0, o1) of out = W · x; the k tail (C % 16) is summed after the vector part */
__attribute__((target("avx512f,avx512bw,avx512dq"))) static void gemv_bf16_rows_avx512(
    float *restrict out, const float *restrict x, const uint16_t *restrict W, int C, int o0, int o1) {
    const int C16 = C & ~15;
    int o = o0;
    for (; o + 4 <= o1; o += 4) {
        const uint16_t *w0 = W + (size_t)o * C, *w1 = w0 + C, *w2 = w1 + C, *w3 = w2 + C;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
        for (int k = 0; k < C16; k += 16) {
            const __m512 xv = _mm512_loadu_ps(x + k);
#define CA_WIDEN512(p) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
            a0 = _mm512_fmadd_ps(CA_WIDEN512(w0 + k), xv, a0);
            a1 = _mm512_fmadd_ps(CA_WIDEN512(w1 + k), xv, a1);
            a2 = _mm512_fmadd_ps(CA_WIDEN512(w2 + k), xv, a2);
            a3 = _mm512_fmadd_ps(CA_WIDEN512(w3 + k), xv, a3);
        }
        float s0 = _mm512_reduce_add_ps(a0), s1 = _mm512_reduce_add_ps(a1);
        float s2 = _mm512_reduce_add_ps(a2), s3 = _mm512_reduce_add_ps(a3);
        for (int k = C16; k < C; k++) {
            s0 += bf16_widen(w0[k]) * x[k], s1 += bf16_widen(w1[k]) * x[k];
            s2 += bf16_widen(w2[k]) * x[k], s3 += bf16_widen(w3[k]) * x[k];
        }
        out[o] = s0, out[o + 1] = s1, out[o + 2] = s2, out[o + 3] = s3;
    }
    for (; o < o1; o++) {
        const uint16_t *w0 = W + (size_t)o * C;
        __m512 a0 = _mm512_setzero_ps();
        for (int k = 0; k < C16; k += 16) a0 = _mm512_fmadd_ps(CA_WIDEN512(w0 + k), _mm512_loadu_ps(x + k), a0);
#undef CA_WIDEN512
        float s0 = _mm512_reduce_add_ps(a0);
        for (int k = C16; k < C; k++) s0 += bf16_widen(w0[k]) * x[k];
        out[o] = s0;
    }
}

__attribute__((target("avx2,fma"))) static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) static void gemv_bf16_rows_avx2(float *restrict out, const float *restrict x, const uint16_t *restrict W, int C,
                                int o0, int o1) {
    const int C8 = C & ~7;
    int o = o0;
#define CA_WIDEN256(p) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
    for (; o + 4 <= o1; o += 4) {
        const uint16_t *w0 = W + (size_t)o * C, *w1 = w0 + C, *w2 = w1 + C, *w3 = w2 + C;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        for (int k = 0; k < C8; k += 8) {
            const __m256 xv = _mm256_loadu_ps(x + k);
            a0 = _mm256_fmadd_ps(CA_WIDEN256(w0 + k), xv, a0);
            a1 = _mm256_fmadd_ps(CA_WIDEN256(w1 + k), xv, a1);
            a2 = _mm256_fmadd_ps(CA_WIDEN256(w2 + k), xv, a2);
            a3 = _mm256_fmadd_ps(CA_WIDEN256(w3 + k), xv, a3);
        }
        float s0 = hsum256(a0), s1 = hsum256(a1), s2 = hsum256(a2), s3 = hsum256(a3);
        for (int k = C8; k < C; k++) {
            s0 += bf16_widen(w0[k]) * x[k], s1 += bf16_widen(w1[k]) * x[k];
            s2 += bf16_widen(w2[k]) * x[k], s3 += bf16_widen(w3[k]) * x[k];
        }
        out[o] = s0, out[o + 1] = s1, out[o + 2] = s2, out[o + 3] = s3;
    }
    for (; o < o1; o++) {
        const uint16_t *w0 = W + (size_t)o * C;
        __m256 a0 = _mm256_setzero_ps();
        for (int k = 0; k < C8; k += 8) a0 = _mm256_fmadd_ps(CA_WIDEN256(w0 + k), _mm256_loadu_ps(x + k), a0);
        float s0 = hsum256(a0);
        for (int k = C8; k < C; k++) s0 += bf16_widen(w0[k]) * x[k];
        out[o] = s0;
    }
#undef CA_WIDEN256
}

/* q (OC, C) = round(W / scale), scale (OC) = max_k |W[o, k]| / 127 (0 for an all-zero row); W is overwritten
 * with scale · q, the values the int8 GEMV multiplies by. */
void ca_cpu_q8_quantize_rows(int8_t *restrict q, float *restrict scale, float *restrict W, int OC, int C) {
#pragma omp parallel for if ((size_t)OC * C > CA_PAR_MIN) schedule(static)
    for (int o = 0; o < OC; o++) {
        float *w = W + (size_t)o * C;
        int8_t *qo = q + (size_t)o * C;
        float amax = 0.0f;
        for (int k = 0; k < C; k++) amax = fmaxf(amax, fabsf(w[k]));
        const float s = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
        for (int k = 0; k < C; k++) {
            float r = nearbyintf(w[k] * inv);
            r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
            qo[k] = (int8_t)r;
            w[k] = s * r;
        }
        scale[o] = s;
    }
}

__attribute__((target("avx512f,avx512bw,avx512dq"))) static void gemv_q8_rows_avx512(
    float *restrict out, const float *restrict x, const int8_t *restrict W, const float *restrict scale, int C,
    int o0, int o1) {
    const int C16 = C & ~15;
#define CA_Q8_512(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))
    int o = o0;
    for (; o + 4 <= o1; o += 4) {
        const int8_t *w0 = W + (size_t)o * C, *w1 = w0 + C, *w2 = w1 + C, *w3 = w2 + C;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
        for (int k = 0; k < C16; k += 16) {
            const __m512 xv = _mm512_loadu_ps(x + k);
            a0 = _mm512_fmadd_ps(CA_Q8_512(w0 + k), xv, a0);
            a1 = _mm512_fmadd_ps(CA_Q8_512(w1 + k), xv, a1);
            a2 = _mm512_fmadd_ps(CA_Q8_512(w2 + k), xv, a2);
            a3 = _mm512_fmadd_ps(CA_Q8_512(w3 + k), xv, a3);
        }
        float s0 = _mm512_reduce_add_ps(a0), s1 = _mm512_reduce_add_ps(a1);
        float s2 = _mm512_reduce_add_ps(a2), s3 = _mm512_reduce_add_ps(a3);
        for (int k = C16; k < C; k++) s0 += w0[k] * x[k], s1 += w1[k] * x[k], s2 += w2[k] * x[k], s3 += w3[k] * x[k];
        out[o] = scale[o] * s0, out[o + 1] = scale[o + 1] * s1, out[o + 2] = scale[o + 2] * s2;
        out[o + 3] = scale[o + 3] * s3;
    }
    for (; o < o1; o++) {
        const int8_t *w0 = W + (size_t)o * C;
        __m512 a0 = _mm512_setzero_ps();
        for (int k = 0; k < C16; k += 16) a0 = _mm512_fmadd_ps(CA_Q8_512(w0 + k), _mm512_loadu_ps(x + k), a0);
        float s0 = _mm512_reduce_add_ps(a0);
        for (int k = C16; k < C; k++) s0 += w0[k] * x[k];
        out[o] = scale[o] * s0;
    }
#undef CA_Q8_512
}

__attribute__((target("avx2,fma"))) static void gemv_q8_rows_avx2(float *restrict out, const float *restrict x, const int8_t *restrict W,
                              const float *restrict scale, int C, int o0, int o1) {
    const int C8 = C & ~7;
#define CA_Q8_256(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
    int o = o0;
    for (; o + 4 <= o1; o += 4) {
        const int8_t *w0 = W + (size_t)o * C, *w1 = w0 + C, *w2 = w1 + C, *w3 = w2 + C;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        for (int k = 0; k < C8; k += 8) {
            const __m256 xv = _mm256_loadu_ps(x + k);
            a0 = _mm256_fmadd_ps(CA_Q8_256(w0 + k), xv, a0);
            a1 = _mm256_fmadd_ps(CA_Q8_256(w1 + k), xv, a1);
            a2 = _mm256_fmadd_ps(CA_Q8_256(w2 + k), xv, a2);
            a3 = _mm256_fmadd_ps(CA_Q8_256(w3 + k), xv, a3);
        }
        float s0 = hsum256(a0), s1 = hsum256(a1), s2 = hsum256(a2), s3 = hsum256(a3);
        for (int k = C8; k < C; k++) s0 += w0[k] * x[k], s1 += w1[k] * x[k], s2 += w2[k] * x[k], s3 += w3[k] * x[k];
        out[o] = scale[o] * s0, out[o + 1] = scale[o + 1] * s1, out[o + 2] = scale[o + 2] * s2;
        out[o + 3] = scale[o + 3] * s3;
    }
    for (; o < o1; o++) {
        const int8_t *w0 = W + (size_t)o * C;
        __m256 a0 = _mm256_setzero_ps();
        for (int k = 0; k < C8; k += 8) a0 = _mm256_fmadd_ps(CA_Q8_256(w0 + k), _mm256_loadu_ps(x + k), a0);
        float s0 = hsum256(a0);
        for (int k = C8; k < C; k++) s0 += w0[k] * x[k];
        out[o] = scale[o] * s0;
    }
#undef CA_Q8_256
}

typedef void (*gemv_bf16_rows_fn)(float *, const float *, const uint16_t *, int, int, int);

static int cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq");
}

static int lowp_avx512 = -1; /* -1 until the first call: then the best the CPU has */

static gemv_bf16_rows_fn gemv_bf16_rows(void) {
    if (lowp_avx512 < 0) lowp_avx512 = cpu_has_avx512();
    return lowp_avx512 ? gemv_bf16_rows_avx512 : gemv_bf16_rows_avx2;
}

int ca_cpu_lowp_set_isa(const char *isa) {
    if (!strcmp(isa, "auto")) lowp_avx512 = cpu_has_avx512();
    else if (!strcmp(isa, "avx2")) lowp_avx512 = 0;
    else if (!strcmp(isa, "avx512") && cpu_has_avx512()) lowp_avx512 = 1;
    else return -1;
    return 0;
}

const char *ca_cpu_lowp_isa(void) {
    return gemv_bf16_rows() == gemv_bf16_rows_avx512 ? "avx512" : "avx2";
}

void ca_cpu_linear_bf16_forward(float *restrict out,            /* (N, OC) */
                                const float *restrict inp,      /* (N, C) */
                                const uint16_t *restrict weight, /* (OC, C) bf16 */
                                int N, int C, int OC) {
    if (N <= 0 || OC <= 0) return;
    const gemv_bf16_rows_fn rows = gemv_bf16_rows();
    const int par = (size_t)OC * C > CA_PAR_MIN * 4;
    for (int n = 0; n < N; n++) {
        float *y = out + (size_t)n * OC;
        const float *x = inp + (size_t)n * C;
#pragma omp parallel if (par)
        {
            int o0, o1;
            ca_col_slice(OC, CA_OMP_IT(), CA_OMP_NT(), &o0, &o1);
            if (o0 < o1) rows(y, x, weight, C, o0, o1);
        }
    }
}

void ca_cpu_linear_q8_forward(float *restrict out,          /* (N, OC) */
                              const float *restrict inp,    /* (N, C) */
                              const int8_t *restrict weight, /* (OC, C) */
                              const float *restrict scale,  /* (OC) */
                              int N, int C, int OC) {
    if (N <= 0 || OC <= 0) return;
    const int avx512 = gemv_bf16_rows() == gemv_bf16_rows_avx512; /* the same ISA choice */
    const int par = (size_t)OC * C > CA_PAR_MIN * 8;
    for (int n = 0; n < N; n++) {
        float *y = out + (size_t)n * OC;
        const float *x = inp + (size_t)n * C;
#pragma omp parallel if (par)
        {
            int o0, o1;
            ca_col_slice(OC, CA_OMP_IT(), CA_OMP_NT(), &o0, &o1);
            if (o0 < o1) {
                if (avx512) gemv_q8_rows_avx512(y, x, weight, scale, C, o0, o1);
                else gemv_q8_rows_avx2(y, x, weight, scale, C, o0, o1);
            }
        }
    }
}
