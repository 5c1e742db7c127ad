/* Low-precision linear algebra: the weight-streaming GEMVs of decoding (below), and the bf16 GEMMs of prompts and
 * of training a bf16 model (further down, "bf16 GEMMs").
 *
 * Weight-streaming GEMVs for decoding: out (OC) = W (OC, C) · x (C) with W in fp32, in bf16, or in int8
 * with one fp32 scale per row (W[o, k] = scale[o] · q[o, k]). Decoding one token reads every weight once and
 * does 2 FLOP per weight, so it is bound by memory bandwidth (machine.md: ≈ 21–25 GB/s per core).
 *
 * bf16: x, the products and the sums stay fp32. bf16 is the top half of an fp32: widening is a 16-bit left
 * shift, exact, so the only error is the rounding of W to bf16 (relative 2⁻⁹).
 *
 * int8 (q8 × q8, as llama.cpp's q8_0 dot products): x is quantised once per call in blocks of 32,
 *   d_b = max_{k∈b} |x_k| / 127,  qx_k = rint(x_k · 127 / max_{k∈b} |x_k|) ∈ [−127, 127]   (all-zero block: d_b = 0)
 *   out[o] = scale[o] · Σ_b d_b · Σ_{k∈b} q[o, k] · qx_k     (the inner sums exact in int32, the outer in fp32)
 * so the inner loop is integer multiply-adds (AVX512-VNNI vpdpbusd: 64 weights per instruction). vpdpbusd
 * multiplies unsigned by signed bytes: it gets |qx| and q with the sign of qx applied (|q| ≤ 127, so the
 * negation cannot overflow); AVX2's vpmaddubsw does the same with vpsignb.
 *
 * Each thread walks its rows one at a time, front to back: one sequential stream per core. (Four rows per
 * pass sharing each load of x ran at half the bandwidth here, Zen 4: four interleaved streams defeat the
 * prefetchers.) The AVX-512 variants are chosen at run time (cpuid); the core's baseline is x86-64-v3
 * (AVX2 + FMA), so the AVX2 variants are always there. */
#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>

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
    for (size_t i = 0; i < n; i++) out[i] = ca_bf16_roundf(in[i]);
}

void ca_cpu_f32_from_bf16(float *restrict out, const uint16_t *restrict in, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = bf16_widen(in[i]);
}

/* Rows [o0, o1) of out_j = W · x_j for nx ≤ 4 inputs x_j (stride ldx; outputs stride ldo), one weight row at a
 * time, each weight loaded once for all inputs; W is bf16 (widened on load) or, with f32 set, fp32 (the fp32
 * model's decoding GEMV: the same single stream per core, which OpenBLAS's sgemv does not keep). Every input
 * gets the same sums in the same order whatever nx is (four accumulators over 64 weights a pass, then
 * 16-wide, then scalar), so a batch computes bit for bit what one-by-one decoding does. nx and f32 are
 * constants in each instantiation (the wrappers below). */
#define CA_WIDEN512(p) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define CA_WIDEN256(p) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))

static inline float weight_at(const void *w, int k, const int f32) {
    return f32 ? ((const float *)w)[k] : bf16_widen(((const uint16_t *)w)[k]);
}

__attribute__((target("avx512f,avx512bw,avx512dq"), always_inline)) static inline __m512 weights512(const void *w, int k,
                                                                                                    const int f32) {
    return f32 ? _mm512_loadu_ps((const float *)w + k) : CA_WIDEN512((const uint16_t *)w + k);
}

__attribute__((target("avx2,fma"), always_inline)) static inline __m256 weights256(const void *w, int k, const int f32) {
    return f32 ? _mm256_loadu_ps((const float *)w + k) : CA_WIDEN256((const uint16_t *)w + k);
}

__attribute__((target("avx512f,avx512bw,avx512dq"), always_inline)) static inline void rows_avx512(
    float *restrict out, size_t ldo, const float *restrict x, size_t ldx, const int nx, const void *restrict W,
    const int f32, int C, int o0, int o1) {
    const int C64 = C & ~63, C16 = C & ~15;
    const size_t row_bytes = (size_t)C * (f32 ? 4 : 2);
    for (int o = o0; o < o1; o++) {
        const void *w = (const char *)W + (size_t)o * row_bytes;
        __m512 a[4][4];
        for (int j = 0; j < nx; j++)
            for (int r = 0; r < 4; r++) a[j][r] = _mm512_setzero_ps();
        int k = 0;
        for (; k < C64; k += 64)
            for (int r = 0; r < 4; r++) {
                const __m512 wv = weights512(w, k + 16 * r, f32);
                for (int j = 0; j < nx; j++) a[j][r] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + j * ldx + k + 16 * r), a[j][r]);
            }
        for (; k < C16; k += 16) {
            const __m512 wv = weights512(w, k, f32);
            for (int j = 0; j < nx; j++) a[j][0] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + j * ldx + k), a[j][0]);
        }
        for (int j = 0; j < nx; j++) {
            float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[j][0], a[j][1]), _mm512_add_ps(a[j][2], a[j][3])));
            for (int t = k; t < C; t++) s += weight_at(w, t, f32) * x[j * ldx + t];
            out[j * ldo + o] = s;
        }
    }
}

__attribute__((target("avx2,fma"))) static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"), always_inline)) static inline void rows_avx2(
    float *restrict out, size_t ldo, const float *restrict x, size_t ldx, const int nx, const void *restrict W,
    const int f32, int C, int o0, int o1) {
    const int C32 = C & ~31, C8 = C & ~7;
    const size_t row_bytes = (size_t)C * (f32 ? 4 : 2);
    for (int o = o0; o < o1; o++) {
        const void *w = (const char *)W + (size_t)o * row_bytes;
        __m256 a[4][4];
        for (int j = 0; j < nx; j++)
            for (int r = 0; r < 4; r++) a[j][r] = _mm256_setzero_ps();
        int k = 0;
        for (; k < C32; k += 32)
            for (int r = 0; r < 4; r++) {
                const __m256 wv = weights256(w, k + 8 * r, f32);
                for (int j = 0; j < nx; j++) a[j][r] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + j * ldx + k + 8 * r), a[j][r]);
            }
        for (; k < C8; k += 8) {
            const __m256 wv = weights256(w, k, f32);
            for (int j = 0; j < nx; j++) a[j][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + j * ldx + k), a[j][0]);
        }
        for (int j = 0; j < nx; j++) {
            float s = hsum256(_mm256_add_ps(_mm256_add_ps(a[j][0], a[j][1]), _mm256_add_ps(a[j][2], a[j][3])));
            for (int t = k; t < C; t++) s += weight_at(w, t, f32) * x[j * ldx + t];
            out[j * ldo + o] = s;
        }
    }
}
#undef CA_WIDEN512
#undef CA_WIDEN256

typedef void (*gemv_rows_fn)(float *, size_t, const float *, size_t, int, const void *, int, int, int, int);

#define CA_ROWS_CASE(fn, n) \
    case n: f32 ? fn(out, ldo, x, ldx, n, W, 1, C, o0, o1) : fn(out, ldo, x, ldx, n, W, 0, C, o0, o1); break;
#define CA_ROWS_CASES(fn) \
    switch (nx < 4 ? nx : 4) { CA_ROWS_CASE(fn, 1) CA_ROWS_CASE(fn, 2) CA_ROWS_CASE(fn, 3) default: CA_ROWS_CASE(fn, 4) }

__attribute__((target("avx512f,avx512bw,avx512dq"))) static void gemv_rows_avx512(
    float *out, size_t ldo, const float *x, size_t ldx, int nx, const void *W, int f32, int C, int o0, int o1) {
    CA_ROWS_CASES(rows_avx512)
}

__attribute__((target("avx2,fma"))) static void gemv_rows_avx2(float *out, size_t ldo, const float *x, size_t ldx,
                                                               int nx, const void *W, int f32, int C, int o0, int o1) {
    CA_ROWS_CASES(rows_avx2)
}
#undef CA_ROWS_CASES
#undef CA_ROWS_CASE

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

/* x quantised for the int8 GEMV: blocks of 32, zero-padded to Cp = C rounded up to 64 */
typedef struct {
    int8_t *qx;      /* (Cp) */
    uint8_t *ax;     /* (Cp) |qx| */
    __mmask64 *neg;  /* (Cp/64) bit k: qx_k < 0 */
    float *d;        /* (Cp/32) block scales */
    float *d_lane;   /* (Cp/4) the scale of each group of 4 bytes (one int32 lane of vpdpbusd) */
} q8_input;

static void q8_quantize_input(q8_input *in, const float *restrict x, int C) {
    const int Cp = (C + 63) & ~63;
    for (int b = 0; b < Cp / 32; b++) {
        const int k0 = b * 32, k1 = k0 + 32 < C ? k0 + 32 : C;
        float amax = 0.0f;
        for (int k = k0; k < k1; k++) amax = fmaxf(amax, fabsf(x[k]));
        const float inv = amax > 0 ? 127.0f / amax : 0.0f;
        for (int k = k0; k < k0 + 32; k++) {
            float r = k < k1 ? nearbyintf(x[k] * inv) : 0.0f;
            r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
            in->qx[k] = (int8_t)r;
            in->ax[k] = (uint8_t)fabsf(r);
        }
        in->d[b] = amax / 127.0f;
        for (int j = 0; j < 8; j++) in->d_lane[b * 8 + j] = in->d[b];
    }
    for (int c = 0; c < Cp / 64; c++) {
        uint64_t m = 0;
        for (int k = 0; k < 64; k++) m |= (uint64_t)(in->qx[c * 64 + k] < 0) << k;
        in->neg[c] = m;
    }
}

/* Σ_b d_b Σ_{k∈b} q_k qx_k for k ∈ [k0, C) (k0 a multiple of 32), scalar */
static float q8_dot_tail(const int8_t *restrict q, const q8_input *in, int k0, int C) {
    float s = 0.0f;
    for (int b0 = k0; b0 < C; b0 += 32) {
        int32_t acc = 0;
        for (int k = b0; k < C && k < b0 + 32; k++) acc += (int32_t)q[k] * in->qx[k];
        s += in->d[b0 / 32] * (float)acc;
    }
    return s;
}

/* The int8 rows for nx ≤ 4 quantised inputs, as the bf16 ones: each weight loaded once, each input's sums in
 * the same order whatever nx is. */
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vnni"), always_inline)) static inline void q8_rows_avx512(
    float *restrict out, size_t ldo, const q8_input *in, const int nx, const int8_t *restrict W,
    const float *restrict scale, int C, int o0, int o1) {
    const int C64 = C & ~63;
    const __m512i zero = _mm512_setzero_si512();
    for (int o = o0; o < o1; o++) {
        const int8_t *w = W + (size_t)o * C;
        __m512 f[4][2];
        for (int j = 0; j < nx; j++) f[j][0] = f[j][1] = _mm512_setzero_ps();
        /* 64 weights (two blocks) per chunk; even chunks into f[j][0], odd ones into f[j][1] (two chains) */
#define CA_Q8_CHUNK(k, r)                                                                                          \
    do {                                                                                                           \
        const __m512i q = _mm512_loadu_si512(w + (k));                                                             \
        for (int j = 0; j < nx; j++) {                                                                             \
            /* q · sign(qx), then |qx| · that = q · qx, four bytes per int32 lane */                               \
            const __m512i sq = _mm512_mask_sub_epi8(q, in[j].neg[(k) / 64], zero, q);                              \
            const __m512i i = _mm512_dpbusd_epi32(zero, _mm512_loadu_si512(in[j].ax + (k)), sq);                   \
            f[j][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_loadu_ps(in[j].d_lane + (k) / 4), f[j][r]);    \
        }                                                                                                          \
    } while (0)
        int k = 0;
        for (; k + 128 <= C64; k += 128) {
            CA_Q8_CHUNK(k, 0);
            CA_Q8_CHUNK(k + 64, 1);
        }
        if (k < C64) CA_Q8_CHUNK(k, 0);
#undef CA_Q8_CHUNK
        for (int j = 0; j < nx; j++)
            out[j * ldo + o] = scale[o] * (_mm512_reduce_add_ps(_mm512_add_ps(f[j][0], f[j][1])) + q8_dot_tail(w, &in[j], C64, C));
    }
}

__attribute__((target("avx2,fma"), always_inline)) static inline void q8_rows_avx2(
    float *restrict out, size_t ldo, const q8_input *in, const int nx, const int8_t *restrict W,
    const float *restrict scale, int C, int o0, int o1) {
    const int C32 = C & ~31;
    const __m256i ones = _mm256_set1_epi16(1);
    for (int o = o0; o < o1; o++) {
        const int8_t *w = W + (size_t)o * C;
        __m256 f[4][2];
        for (int j = 0; j < nx; j++) f[j][0] = f[j][1] = _mm256_setzero_ps();
        /* one block of 32 per chunk; even blocks into f[j][0], odd ones into f[j][1] */
#define CA_Q8_BLOCK(k, r)                                                                                          \
    do {                                                                                                           \
        const __m256i q = _mm256_loadu_si256((const __m256i *)(w + (k)));                                          \
        for (int j = 0; j < nx; j++) {                                                                             \
            const __m256i sq = _mm256_sign_epi8(q, _mm256_loadu_si256((const __m256i *)(in[j].qx + (k))));         \
            /* |qx| · q·sign(qx): byte pairs to int16 (≤ 2·127² < 2¹⁵, no saturation), then to int32 */           \
            const __m256i i = _mm256_madd_epi16(                                                                   \
                _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(in[j].ax + (k))), sq), ones);            \
            f[j][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(in[j].d[(k) / 32]), f[j][r]);         \
        }                                                                                                          \
    } while (0)
        int k = 0;
        for (; k + 64 <= C32; k += 64) {
            CA_Q8_BLOCK(k, 0);
            CA_Q8_BLOCK(k + 32, 1);
        }
        if (k < C32) CA_Q8_BLOCK(k, 0);
#undef CA_Q8_BLOCK
        for (int j = 0; j < nx; j++)
            out[j * ldo + o] = scale[o] * (hsum256(_mm256_add_ps(f[j][0], f[j][1])) + q8_dot_tail(w, &in[j], C32, C));
    }
}

__attribute__((target("avx512f,avx512bw,avx512dq,avx512vnni"))) static void gemv_q8_rows_avx512(
    float *out, size_t ldo, const q8_input *in, int nx, const int8_t *W, const float *scale, int C, int o0, int o1) {
    switch (nx) {
    case 1: q8_rows_avx512(out, ldo, in, 1, W, scale, C, o0, o1); break;
    case 2: q8_rows_avx512(out, ldo, in, 2, W, scale, C, o0, o1); break;
    case 3: q8_rows_avx512(out, ldo, in, 3, W, scale, C, o0, o1); break;
    default: q8_rows_avx512(out, ldo, in, 4, W, scale, C, o0, o1); break;
    }
}

__attribute__((target("avx2,fma"))) static void gemv_q8_rows_avx2(float *out, size_t ldo, const q8_input *in, int nx,
                                                                  const int8_t *W, const float *scale, int C, int o0,
                                                                  int o1) {
    switch (nx) {
    case 1: q8_rows_avx2(out, ldo, in, 1, W, scale, C, o0, o1); break;
    case 2: q8_rows_avx2(out, ldo, in, 2, W, scale, C, o0, o1); break;
    case 3: q8_rows_avx2(out, ldo, in, 3, W, scale, C, o0, o1); break;
    default: q8_rows_avx2(out, ldo, in, 4, W, scale, C, o0, o1); break;
    }
}



static int cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni") &&
           __builtin_cpu_supports("avx512bf16");
}

static int lowp_avx512 = -1; /* -1 until the first call: then the best the CPU has */

static gemv_rows_fn gemv_rows(void) {
    if (lowp_avx512 < 0) lowp_avx512 = cpu_has_avx512();
    return lowp_avx512 ? gemv_rows_avx512 : gemv_rows_avx2;
}

int ca_cpu_lowp_set_isa(const char *isa) {
    if (!strcmp(isa, "auto")) lowp_avx512 = cpu_has_avx512();
    else if (!strcmp(isa, "avx2")) lowp_avx512 = 0;
    else if (!strcmp(isa, "avx512") && cpu_has_avx512()) lowp_avx512 = 1;
    else return -1;
    return 0;
}

const char *ca_cpu_lowp_isa(void) {
    return gemv_rows() == gemv_rows_avx512 ? "avx512" : "avx2";
}

/* The inputs go four at a time (each weight read once per group); one parallel region per group, the rows
 * of W split over the threads. */
static void linear_rows_forward(float *restrict out, const float *restrict inp, const void *restrict weight, int f32,
                                int N, int C, int OC) {
    if (N <= 0 || OC <= 0) return;
    const gemv_rows_fn rows = gemv_rows();
    const int par = (size_t)OC * C > CA_PAR_MIN * 4;
    for (int n = 0; n < N; n += 4) {
        const int nx = N - n < 4 ? N - n : 4;
#pragma omp parallel if (par)
        {
            int o0, o1;
            ca_col_slice(OC, CA_OMP_IT(), CA_OMP_NT(), &o0, &o1);
            if (o0 < o1) rows(out + (size_t)n * OC, OC, inp + (size_t)n * C, C, nx, weight, f32, C, o0, o1);
        }
    }
}

void ca_cpu_linear_bf16_forward(float *restrict out,            /* (N, OC) */
                                const float *restrict inp,      /* (N, C) */
                                const uint16_t *restrict weight, /* (OC, C) bf16 */
                                int N, int C, int OC) {
    linear_rows_forward(out, inp, weight, 0, N, C, OC);
}

void ca_cpu_linear_f32_gemv_forward(float *restrict out,         /* (N, OC) */
                                    const float *restrict inp,   /* (N, C) */
                                    const float *restrict weight, /* (OC, C) */
                                    int N, int C, int OC) {
    linear_rows_forward(out, inp, weight, 1, N, C, OC);
}

void ca_cpu_linear_q8_forward(float *restrict out,          /* (N, OC) */
                              const float *restrict inp,    /* (N, C) */
                              const int8_t *restrict weight, /* (OC, C) */
                              const float *restrict scale,  /* (OC) */
                              int N, int C, int OC) {
    if (N <= 0 || OC <= 0 || C <= 0) return;
    const int avx512 = gemv_rows() == gemv_rows_avx512; /* the same ISA choice */
    const int par = (size_t)OC * C > CA_PAR_MIN * 8;
    /* four inputs' quantised copies live on the stack: ≈ 4 · 3.3·C bytes (60 KB for LFM2-350M's widest
     * input, 4608) */
    const int Cp = (C + 63) & ~63;
    int8_t qx[4][Cp];
    uint8_t ax[4][Cp];
    __mmask64 neg[4][Cp / 64];
    float d[4][Cp / 32], d_lane[4][Cp / 4];
    q8_input in[4];
    for (int j = 0; j < 4; j++) in[j] = (q8_input){qx[j], ax[j], neg[j], d[j], d_lane[j]};
    for (int n = 0; n < N; n += 4) {
        const int nx = N - n < 4 ? N - n : 4;
        for (int j = 0; j < nx; j++) q8_quantize_input(&in[j], inp + (size_t)(n + j) * C, C);
#pragma omp parallel if (par)
        {
            int o0, o1;
            ca_col_slice(OC, CA_OMP_IT(), CA_OMP_NT(), &o0, &o1);
            if (o0 < o1) {
                if (avx512) gemv_q8_rows_avx512(out + (size_t)n * OC, OC, in, nx, weight, scale, C, o0, o1);
                else gemv_q8_rows_avx2(out + (size_t)n * OC, OC, in, nx, weight, scale, C, o0, o1);
            }
        }
    }
}

/* ---- bf16 GEMMs: prompts of a bf16 or int8 model, and training a bf16 model (mixed precision) ----
 *   forward      out (N, OC)     = bf16(x) (N, C) · Wᵀ          (int8: · qᵀ, times the row scale; q exact in bf16)
 *   input grad   dx (N, C)  [+]= bf16(dy) (N, OC) · W          (W (OC, C) bf16)
 *   weight grad  dW (OC, C)  += bf16(dy)ᵀ (OC, N) · bf16(x)    (into the fp32 gradient)
 * vdpbf16ps adds a·b over a pair of bf16 (exact products) into an fp32 lane: twice the fp32 FMA rate. One
 * register tile serves all three: 8 rows of an operand A whose pairs along the reduction are contiguous as stored
 * (one broadcast pair at a time) against a panel of 32 columns packed as pairs along the reduction,
 * P[kp][j] = (b[2kp][j], b[2kp+1][j]), one 64-byte load per 16 columns:
 *   forward:    A = W's rows (as stored),  P = 32 rows of bf16(x) (packed while rounding x)  → tile = outᵀ
 *   input grad: A = bf16(dy)'s rows,       P = 32 columns of W (two rows interleaved)         → tile = dx
 *   weight grad: A = bf16(dy)ᵀ (transposed), P = 32 columns of bf16(x) (two rows interleaved)  → tile = dW
 * Whatever the tiling and the thread count, every output sums its reduction in the same order (pair by pair,
 * in chunks of CA_BF16_KC pairs for the gradients), so a row's result does not depend on the other rows
 * (batched prefill equals one-by-one). Without AVX512-BF16: the fp32 GEMM on the bf16-rounded inputs and W's
 * fp32 values (the same products, summed in another order). */
#define CA_BF16_ROWS 8
#define CA_BF16_COLS 32
#define CA_BF16_KC 2048 /* reduction pairs per gradient panel: 256 KiB, within L2 */

/* Σ_kp A[r][kp] · P[kp][j] (pairs) for r < nr, j < 32: into tile[r][j] (out NULL), or into out[r·ldo + j] for
 * j < nc, written (add 0) or added to (add 1) */
__attribute__((target("avx512f,avx512bw,avx512dq,avx512bf16"), always_inline)) static inline void bf16_tile(
    float tile[CA_BF16_ROWS][CA_BF16_COLS], float *restrict out, size_t ldo, int nc, int add,
    const uint16_t *restrict a, size_t lda /* in bf16 */, const int nr, const uint32_t *restrict panel, int K2) {
    __m512 acc[CA_BF16_ROWS][2];
    for (int r = 0; r < nr; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int kp = 0; kp < K2; kp++) {
        const __m512bh p0 = (__m512bh)_mm512_loadu_si512(panel + (size_t)kp * CA_BF16_COLS);
        const __m512bh p1 = (__m512bh)_mm512_loadu_si512(panel + (size_t)kp * CA_BF16_COLS + 16);
        for (int r = 0; r < nr; r++) {
            uint32_t pair;
            memcpy(&pair, a + r * lda + 2 * (size_t)kp, sizeof pair);
            const __m512bh av = (__m512bh)_mm512_set1_epi32((int)pair);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, p0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, p1);
        }
    }
    if (!out) {
        for (int r = 0; r < nr; r++) {
            _mm512_storeu_ps(tile[r], acc[r][0]);
            _mm512_storeu_ps(tile[r] + 16, acc[r][1]);
        }
        return;
    }
    const __mmask16 m0 = nc >= 16 ? 0xFFFF : (__mmask16)((1u << nc) - 1u);
    const __mmask16 m1 = nc >= 32 ? 0xFFFF : nc > 16 ? (__mmask16)((1u << (nc - 16)) - 1u) : 0;
    for (int r = 0; r < nr; r++) {
        float *o = out + (size_t)r * ldo;
        if (add) {
            acc[r][0] = _mm512_add_ps(acc[r][0], _mm512_maskz_loadu_ps(m0, o));
            acc[r][1] = _mm512_add_ps(acc[r][1], _mm512_maskz_loadu_ps(m1, o + 16));
        }
        _mm512_mask_storeu_ps(o, m0, acc[r][0]);
        _mm512_mask_storeu_ps(o + 16, m1, acc[r][1]);
    }
}

/* nr is a constant in each instantiation, so the accumulators stay in registers */
__attribute__((target("avx512f,avx512bw,avx512dq,avx512bf16"))) static void bf16_tile_rows(
    float tile[CA_BF16_ROWS][CA_BF16_COLS], float *out, size_t ldo, int nc, int add, const uint16_t *a, size_t lda,
    int nr, const uint32_t *panel, int K2) {
    switch (nr) {
#define CA_ROWS(r) case r: bf16_tile(tile, out, ldo, nc, add, a, lda, r, panel, K2); break;
        CA_ROWS(1) CA_ROWS(2) CA_ROWS(3) CA_ROWS(4) CA_ROWS(5) CA_ROWS(6) CA_ROWS(7)
#undef CA_ROWS
    default: bf16_tile(tile, out, ldo, nc, add, a, lda, CA_BF16_ROWS, panel, K2); break;
    }
}

/* out (ldo ≥ K rounded up to even) = bf16(in) (K), round to nearest even; the odd tail pair gets a zero.
 * vcvtne2ps2bf16 reads denormal inputs as zero. */
__attribute__((target("avx512f,avx512bw,avx512dq,avx512bf16"))) static inline void bf16_row_avx512(
    uint16_t *restrict out, const float *restrict in, int K) {
    int k = 0;
    for (; k + 32 <= K; k += 32)
        _mm512_storeu_si512(out + k, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(in + k + 16), _mm512_loadu_ps(in + k)));
    for (; k < K; k++) out[k] = ca_bf16_roundf(in[k]);
    if (K % 2) out[K] = 0;
}

__attribute__((target("avx512f,avx512bw,avx512dq,avx512bf16"))) static void bf16_rows_avx512(
    uint16_t *restrict out, size_t ldo, const float *restrict in, int n, int K) {
#pragma omp parallel for if ((size_t)n * K > CA_PAR_MIN) schedule(static)
    for (int i = 0; i < n; i++) bf16_row_avx512(out + (size_t)i * ldo, in + (size_t)i * K, K);
}

/* W's rows as the forward's A operand: bf16 rows as stored, or int8 rows (q, exact in bf16) widened per group of 8
 * rows into the thread's buffer, the row scale applied to the sums. */
typedef struct {
    const uint16_t *bf16; /* (OC, ld) */
    size_t ld;            /* bf16 row stride, even (0: C) */
    const int8_t *q;      /* (OC, C) */
    const float *scale;   /* (OC) */
} bf16_gemm_weights;

__attribute__((target("avx512f,avx512bw,avx512dq,avx512bf16"))) static void q8_rows_to_bf16(
    uint16_t *restrict out, /* (nr, 2·K2) */ const int8_t *restrict q, int nr, int C, int K2) {
    for (int r = 0; r < nr; r++) {
        const int8_t *qr = q + (size_t)r * C;
        uint16_t *o = out + (size_t)r * 2 * K2;
        int k = 0;
        for (; k + 32 <= C; k += 32) {
            const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(qr + k))));
            const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(qr + k + 16))));
            _mm512_storeu_si512(o + k, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
        for (; k < 2 * K2; k++) o[k] = k < C ? ca_bf16_roundf((float)qr[k]) : 0;
    }
}

__attribute__((target("avx512f,avx512bw,avx512dq,avx512bf16"))) static int bf16_gemm_forward_avx512(
    float *restrict out, const float *restrict inp, bf16_gemm_weights w, int N, int C, int OC) {
    const uint16_t *restrict W = w.bf16;
    const int K2 = (C + 1) / 2, panels = (N + CA_BF16_COLS - 1) / CA_BF16_COLS;
    const int groups = (OC + CA_BF16_ROWS - 1) / CA_BF16_ROWS;
    /* x as panels of 32 rows, pairs along C: xp[p][kp][j] = bf16 pair of x[32p + j] at 2kp (rows past N: 0) */
    uint32_t *xp = calloc((size_t)panels * K2 * CA_BF16_COLS, sizeof(uint32_t)); /* (panels, K2, 32) */
    uint16_t *Wp = NULL;                                                          /* (OC, 2·K2): odd C only */
    size_t lda = w.ld ? w.ld : (size_t)C;
    if (!xp) return -1;
    if (W && C % 2) { /* W's rows as stored start mid-pair: a padded copy */
        if (!(Wp = malloc((size_t)OC * 2 * K2 * sizeof(uint16_t)))) return free(xp), -1;
        for (int o = 0; o < OC; o++) {
            memcpy(Wp + (size_t)o * 2 * K2, W + (size_t)o * lda, (size_t)C * sizeof(uint16_t));
            Wp[(size_t)o * 2 * K2 + C] = 0;
        }
        lda = 2 * (size_t)K2;
    }
    const uint16_t *A = Wp ? Wp : W;
    const int par = (size_t)N * OC * C > (size_t)CA_PAR_MIN * 16;
    int failed = 0;
#pragma omp parallel if (par)
    {
        uint16_t row[2 * K2];
        uint16_t *qrows = w.q ? malloc((size_t)CA_BF16_ROWS * 2 * K2 * sizeof(uint16_t)) : NULL; /* (8, 2·K2) */
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            bf16_row_avx512(row, inp + (size_t)n * C, C);
            uint32_t *dst = xp + (size_t)(n / CA_BF16_COLS) * K2 * CA_BF16_COLS + n % CA_BF16_COLS;
            for (int kp = 0; kp < K2; kp++) memcpy(dst + (size_t)kp * CA_BF16_COLS, row + 2 * kp, sizeof(uint32_t));
        }
        float tile[CA_BF16_ROWS][CA_BF16_COLS];
#pragma omp for schedule(static)
        for (int g = 0; g < groups; g++) {
            const int o0 = g * CA_BF16_ROWS, nr = OC - o0 < CA_BF16_ROWS ? OC - o0 : CA_BF16_ROWS;
            if (w.q && !qrows) continue; /* reported below */
            if (w.q) q8_rows_to_bf16(qrows, w.q + (size_t)o0 * C, nr, C, K2);
            const uint16_t *a = w.q ? qrows : A + (size_t)o0 * lda;
            for (int p = 0; p < panels; p++) {
                const int n0 = p * CA_BF16_COLS, nc = N - n0 < CA_BF16_COLS ? N - n0 : CA_BF16_COLS;
                bf16_tile_rows(tile, NULL, 0, 0, 0, a, w.q ? 2 * (size_t)K2 : lda, nr, xp + (size_t)p * K2 * CA_BF16_COLS,
                               K2);
                for (int j = 0; j < nc; j++)
                    for (int r = 0; r < nr; r++)
                        out[(size_t)(n0 + j) * OC + o0 + r] = w.q ? w.scale[o0 + r] * tile[r][j] : tile[r][j];
            }
        }
        if (w.q && !qrows) {
#pragma omp atomic write
            failed = 1;
        }
        free(qrows);
    }
    free(xp);
    free(Wp);
    return failed ? -1 : 0;
}

/* out (M, C) (row stride ldo) = or += A (M, K) · B (K, C): A's rows bf16 with pairs along K (stride lda,
 * zero-padded to an even K), B's rows bf16 (stride ldb). Threads split B's column panels; the reduction goes in
 * chunks of CA_BF16_KC pairs (a panel chunk stays in L2), each chunk's sums added to out. Returns −1 when the
 * panels' workspace is missing. */
__attribute__((target("avx512f,avx512bw,avx512dq,avx512bf16"))) static int bf16_gemm_nn_avx512(
    float *restrict out, size_t ldo, const uint16_t *restrict A, size_t lda, const uint16_t *restrict B, size_t ldb,
    int M, int C, int K, int accumulate) {
    const int K2 = (K + 1) / 2, panels = (C + CA_BF16_COLS - 1) / CA_BF16_COLS;
    const int par = (size_t)M * K * C > (size_t)CA_PAR_MIN * 16;
#ifdef _OPENMP
    const int threads = par ? omp_get_max_threads() : 1;
#else
    const int threads = 1;
#endif
    const int KC = K2 < CA_BF16_KC ? K2 : CA_BF16_KC;
    uint32_t *panels_ws = malloc((size_t)threads * KC * CA_BF16_COLS * sizeof(uint32_t)); /* (threads, KC, 32) */
    if (!panels_ws) return -1;
    const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                        37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
#pragma omp parallel if (par)
    {
        uint32_t *panel = panels_ws + (size_t)CA_OMP_IT() * KC * CA_BF16_COLS;
#pragma omp for schedule(static)
        for (int p = 0; p < panels; p++) {
            const int c0 = p * CA_BF16_COLS, nc = C - c0 < CA_BF16_COLS ? C - c0 : CA_BF16_COLS;
            const __mmask32 cols = nc == 32 ? ~0u : (1u << nc) - 1u;
            for (int k0 = 0; k0 < K2; k0 += KC) {
                const int kn = K2 - k0 < KC ? K2 - k0 : KC;
                for (int kp = 0; kp < kn; kp++) { /* P[kp][j] = (B[2kp, c0 + j], B[2kp + 1, c0 + j]) */
                    const int k = 2 * (k0 + kp);
                    const __m512i r0 = _mm512_maskz_loadu_epi16(cols, B + (size_t)k * ldb + c0);
                    const __m512i r1 = k + 1 < K ? _mm512_maskz_loadu_epi16(cols, B + (size_t)(k + 1) * ldb + c0)
                                                 : _mm512_setzero_si512();
                    _mm512_storeu_si512(panel + (size_t)kp * CA_BF16_COLS, _mm512_permutex2var_epi16(r0, lo, r1));
                    _mm512_storeu_si512(panel + (size_t)kp * CA_BF16_COLS + 16, _mm512_permutex2var_epi16(r0, hi, r1));
                }
                for (int m0 = 0; m0 < M; m0 += CA_BF16_ROWS) {
                    const int nr = M - m0 < CA_BF16_ROWS ? M - m0 : CA_BF16_ROWS;
                    bf16_tile_rows(NULL, out + (size_t)m0 * ldo + c0, ldo, nc, accumulate || k0,
                                   A + (size_t)m0 * lda + 2 * (size_t)k0, lda, nr, panel, kn);
                }
            }
        }
    }
    free(panels_ws);
    return 0;
}

/* A row stride for bf16 operand rows of K values: even, and 64 bytes off a multiple of 4 KiB, so that the 8 rows
 * of a tile do not share L1 sets */
static size_t bf16_lda(int K) {
    return 2 * (size_t)((K + 1) / 2) + 32;
}

/* dinp (N, C) [+]= bf16(dout) (N, OC) · W (OC, C) */
__attribute__((target("avx512f,avx512bw,avx512dq,avx512bf16"))) static int bf16_gemm_backward_avx512(
    float *restrict dinp, const float *restrict dout, const uint16_t *restrict W, int N, int C, int OC,
    int accumulate) {
    const size_t ldy = bf16_lda(OC);
    uint16_t *dy = malloc((size_t)N * ldy * sizeof(uint16_t)); /* (N, ldy) bf16(dout), zero-padded */
    if (!dy) return -1;
    bf16_rows_avx512(dy, ldy, dout, N, OC);
    const int rc = bf16_gemm_nn_avx512(dinp, (size_t)C, dy, ldy, W, (size_t)C, N, C, OC, accumulate);
    free(dy);
    return rc;
}

/* v[j] ← column j of the 16 × 16 matrix of 32-bit lanes whose rows are v[0..15] */
__attribute__((target("avx512f"), always_inline)) static inline void transpose16_epi32(__m512i v[16]) {
    __m512i t[16];
    for (int i = 0; i < 8; i++) { /* per 128-bit lane L: rows 2i, 2i+1 interleaved */
        t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* v[4i + k], lane L: rows 4i..4i+3 of column 4L + k */
        v[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        v[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        v[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        v[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int i = 0; i < 2; i++) /* lanes: rows 8i..+3 and 8i+4..+7 of columns k, 8+k (0x88) or 4+k, 12+k (0xDD) */
        for (int k = 0; k < 4; k++) {
            t[8 * i + k] = _mm512_shuffle_i32x4(v[8 * i + k], v[8 * i + 4 + k], 0x88);
            t[8 * i + 4 + k] = _mm512_shuffle_i32x4(v[8 * i + k], v[8 * i + 4 + k], 0xDD);
        }
    for (int j = 0; j < 8; j++) {
        v[j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0x88);
        v[8 + j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0xDD);
    }
}

/* dyt (OC, ldt) = bf16(dout)ᵀ with dout (N, OC), zero-padded to an even N: blocks of 32 rows × 16 columns go
 * through registers as 16 × 16 pairs (two rows rounded and interleaved, then transposed), the rest one by one */
__attribute__((target("avx512f,avx512bw,avx512dq,avx512bf16"))) static void bf16_transpose_avx512(
    uint16_t *restrict dyt, size_t ldt, const float *restrict dout, int N, int OC) {
    const __m512i pairs = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                           21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const int N32 = N / 32 * 32;
#pragma omp parallel for schedule(static) if ((size_t)N * OC > CA_PAR_MIN)
    for (int o0 = 0; o0 < OC; o0 += 16) {
        const int on = OC - o0 < 16 ? OC - o0 : 16;
        const __mmask16 m = (__mmask16)((1u << on) - 1u);
        for (int n0 = 0; n0 < N32; n0 += 32) {
            __m512i v[16]; /* v[np] lane j: the pair (dout[n0 + 2np, o0 + j], dout[n0 + 2np + 1, o0 + j]) */
            for (int np = 0; np < 16; np++) {
                const float *row = dout + (size_t)(n0 + 2 * np) * OC + o0;
                const __m512bh h = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m, row + OC), _mm512_maskz_loadu_ps(m, row));
                v[np] = _mm512_permutexvar_epi16(pairs, (__m512i)h);
            }
            transpose16_epi32(v);
            for (int j = 0; j < on; j++) _mm512_storeu_si512(dyt + (size_t)(o0 + j) * ldt + n0, v[j]);
        }
        for (int n = N32; n < N; n++) {
            uint16_t h[16];
            _mm256_storeu_si256((__m256i *)h, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, dout + (size_t)n * OC + o0)));
            for (int j = 0; j < on; j++) dyt[(size_t)(o0 + j) * ldt + n] = h[j];
        }
        if (N % 2)
            for (int j = 0; j < on; j++) dyt[(size_t)(o0 + j) * ldt + N] = 0;
    }
}

/* dW (OC, C) += bf16(dout)ᵀ (OC, N) · bf16(inp) (N, C): the reduction runs over the rows, so dout is transposed
 * into pairs along N (A) and inp's rows are interleaved into panels (B) */
__attribute__((target("avx512f,avx512bw,avx512dq,avx512bf16"))) static int bf16_gemm_weight_grad_avx512(
    float *restrict dweight, const float *restrict dout, const float *restrict inp, int N, int C, int OC) {
    const size_t ldt = bf16_lda(N);
    uint16_t *dyt = malloc((size_t)OC * ldt * sizeof(uint16_t)); /* (OC, ldt) bf16(dout)ᵀ, zero-padded */
    uint16_t *xb = malloc((size_t)N * C * sizeof(uint16_t));     /* (N, C) bf16(inp) */
    if (!dyt || !xb) return free(dyt), free(xb), -1;
    bf16_rows_avx512(xb, (size_t)C, inp, N, C);
    bf16_transpose_avx512(dyt, ldt, dout, N, OC);
    const int rc = bf16_gemm_nn_avx512(dweight, (size_t)C, dyt, ldt, xb, (size_t)C, OC, C, N, 1);
    free(dyt);
    free(xb);
    return rc;
}

/* The forward on AVX512-BF16, else the fp32 GEMM on bf16(x) and weight_f32 (W's values in fp32) */
static int bf16_gemm_forward(float *restrict out, const float *restrict inp, bf16_gemm_weights w,
                             const float *restrict weight_f32, int N, int C, int OC) {
    if (N <= 0 || OC <= 0 || C <= 0) return 0;
    if (gemv_rows() == gemv_rows_avx512) return bf16_gemm_forward_avx512(out, inp, w, N, C, OC);
    float *xr = malloc((size_t)N * C * sizeof(float)); /* bf16(x) as fp32 */
    if (!xr) return -1;
    for (size_t i = 0; i < (size_t)N * C; i++) xr[i] = bf16_widen(ca_bf16_roundf(inp[i]));
    ca_cpu_linear_forward(out, xr, weight_f32, NULL, N, C, OC);
    free(xr);
    return 0;
}

int ca_cpu_linear_bf16_gemm_forward(float *restrict out,              /* (N, OC) */
                                    const float *restrict inp,        /* (N, C) */
                                    const uint16_t *restrict weight,  /* (OC, C) bf16 */
                                    const float *restrict weight_f32, /* (OC, C) the same values in fp32 */
                                    int N, int C, int OC) {
    return bf16_gemm_forward(out, inp, (bf16_gemm_weights){weight, 0, NULL, NULL}, weight_f32, N, C, OC);
}

int ca_cpu_linear_q8_gemm_forward(float *restrict out,              /* (N, OC) */
                                  const float *restrict inp,        /* (N, C) */
                                  const int8_t *restrict q,         /* (OC, C) */
                                  const float *restrict scale,      /* (OC) */
                                  const float *restrict weight_f32, /* (OC, C) scale · q in fp32 */
                                  int N, int C, int OC) {
    return bf16_gemm_forward(out, inp, (bf16_gemm_weights){NULL, 0, q, scale}, weight_f32, N, C, OC);
}

int ca_cpu_linear_bf16_gemm_weight_grad(float *restrict dweight,    /* (OC, C) += */
                                        const float *restrict dout, /* (N, OC) */
                                        const float *restrict inp,  /* (N, C) */
                                        int N, int C, int OC) {
    if (N <= 0 || C <= 0 || OC <= 0) return 0;
    if (gemv_rows() == gemv_rows_avx512) return bf16_gemm_weight_grad_avx512(dweight, dout, inp, N, C, OC);
    float *r = malloc(((size_t)N * OC + (size_t)N * C) * sizeof(float)); /* bf16(dout), bf16(inp) as fp32 */
    if (!r) return -1;
    for (size_t i = 0; i < (size_t)N * OC; i++) r[i] = bf16_widen(ca_bf16_roundf(dout[i]));
    for (size_t i = 0; i < (size_t)N * C; i++) r[(size_t)N * OC + i] = bf16_widen(ca_bf16_roundf(inp[i]));
    ca_cpu_linear_backward(NULL, dweight, NULL, r, r + (size_t)N * OC, NULL, N, C, OC, 1);
    free(r);
    return 0;
}

int ca_cpu_linear_bf16_gemm_backward(float *restrict dinp,             /* (N, C) = or += (accumulate) */
                                     const float *restrict dout,       /* (N, OC) */
                                     const uint16_t *restrict weight,  /* (OC, C) bf16 */
                                     const float *restrict weight_f32, /* (OC, C) the same values in fp32 */
                                     int N, int C, int OC, int accumulate) {
    if (N <= 0 || C <= 0) return 0;
    if (OC <= 0) {
        if (!accumulate) memset(dinp, 0, (size_t)N * C * sizeof(float));
        return 0;
    }
    if (gemv_rows() == gemv_rows_avx512) return bf16_gemm_backward_avx512(dinp, dout, weight, N, C, OC, accumulate);
    float *dr = malloc((size_t)N * OC * sizeof(float)); /* bf16(dout) as fp32 */
    if (!dr) return -1;
    for (size_t i = 0; i < (size_t)N * OC; i++) dr[i] = bf16_widen(ca_bf16_roundf(dout[i]));
    ca_cpu_linear_backward(dinp, NULL, NULL, dr, NULL, weight_f32, N, C, OC, accumulate);
    free(dr);
    return 0;
}

/* The kernels as building blocks of other ops (mha.c), AVX512-BF16 only: callers check ca_cpu_lowp_isa() */
int ca_cpu_bf16_gemm_nt(float *out, const float *x, const uint16_t *W, size_t ldw, int N, int C, int OC) {
    return bf16_gemm_forward_avx512(out, x, (bf16_gemm_weights){W, ldw, NULL, NULL}, N, C, OC);
}

int ca_cpu_bf16_gemm_nn(float *out, size_t ldo, const uint16_t *A, size_t lda, const uint16_t *B, size_t ldb, int M,
                        int C, int K) {
    return bf16_gemm_nn_avx512(out, ldo, A, lda, B, ldb, M, C, K, 0);
}

void ca_cpu_bf16_rows(uint16_t *out, size_t ldo, const float *in, int n, int K) {
    bf16_rows_avx512(out, ldo, in, n, K);
}
