/* The profiling backend: forwards to the CPU ops, timing each call. Linear calls are split into the GEMMs
 * they issue (forward: NT; backward: NN for dinp, TN for dweight) so each shape's time can be set against
 * a raw sgemm of that shape. Below it, the anchors the benchmarks measure: that raw sgemm, and the FMA peak. */
#include <immintrin.h>
#include <omp.h>
#include <stdlib.h>
#include <time.h>

#include "captionaura/ca_backend.h"
#include "captionaura/ca_blas.h"
#include "captionaura/ca_profile.h"

static ca_profile profile;

const char *const ca_prof_op_names[CA_PROF_NUM_OPS] = {
    "embedding", "rmsnorm", "linear", "shortconv", "rope", "attention", "swiglu", "crossentropy", "elementwise", "lora",
    "layernorm", "gelu", "mha", "vision_misc",
};

const ca_profile *ca_profile_get(void) { return &profile; }

void ca_profile_reset(void) { profile = (ca_profile){0}; }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void record_gemm(int ta, int tb, int M, int N, int K, double seconds) {
    for (int i = 0; i < profile.num_gemms; i++) {
        ca_prof_gemm *g = &profile.gemms[i];
        if (g->trans_a == ta && g->trans_b == tb && g->M == M && g->N == N && g->K == K) {
            g->calls++;
            g->seconds += seconds;
            return;
        }
    }
    if (profile.num_gemms == CA_PROF_MAX_GEMMS) return;
    profile.gemms[profile.num_gemms++] = (ca_prof_gemm){ta, tb, M, N, K, 1, seconds};
}

#define TIMED(op, call)                                                                            \
    do {                                                                                           \
        double t0_ = now();                                                                        \
        call;                                                                                      \
        profile.seconds[op] += now() - t0_;                                                        \
        profile.calls[op]++;                                                                       \
    } while (0)

static void p_embedding_forward(float *o, const int32_t *i, const float *w, int N, int C) {
    TIMED(CA_PROF_EMBEDDING, ca_cpu_embedding_forward(o, i, w, N, C));
}
static void p_embedding_backward(float *dw, const float *d, const int32_t *i, int N, int C) {
    TIMED(CA_PROF_EMBEDDING, ca_cpu_embedding_backward(dw, d, i, N, C));
}
static void p_rmsnorm_forward(float *o, float *r, const float *x, const float *w, int N, int C, float eps) {
    TIMED(CA_PROF_RMSNORM, ca_cpu_rmsnorm_forward(o, r, x, w, N, C, eps));
}
static void p_rmsnorm_backward(float *dx, float *dw, const float *d, const float *x, const float *w, const float *r,
                               int N, int C) {
    TIMED(CA_PROF_RMSNORM, ca_cpu_rmsnorm_backward(dx, dw, d, x, w, r, N, C));
}
static void p_linear_forward(float *o, const float *x, const float *w, const float *b, int N, int C, int OC) {
    double t0 = now();
    ca_cpu_linear_forward(o, x, w, b, N, C, OC);
    double dt = now() - t0;
    profile.seconds[CA_PROF_LINEAR] += dt;
    profile.calls[CA_PROF_LINEAR]++;
    record_gemm(0, 1, N, OC, C, dt);
}
static void p_linear_backward(float *dx, float *dw, float *db, const float *d, const float *x, const float *w, int N,
                              int C, int OC, int acc) {
    /* time the two GEMMs separately so each shape is attributed its own cost */
    double t0 = now();
    if (dx) ca_cpu_linear_backward(dx, NULL, NULL, d, x, w, N, C, OC, acc);
    double t1 = now();
    if (dw || db) ca_cpu_linear_backward(NULL, dw, db, d, x, w, N, C, OC, acc);
    double t2 = now();
    profile.seconds[CA_PROF_LINEAR] += t2 - t0;
    profile.calls[CA_PROF_LINEAR]++;
    if (dx) record_gemm(0, 0, N, C, OC, t1 - t0);
    if (dw) record_gemm(1, 0, OC, C, N, t2 - t1);
}
static void p_shortconv_forward(float *y, float *u, float *c, const float *z, const float *w, const float *s, int B,
                                int T, int C, int L) {
    TIMED(CA_PROF_SHORTCONV, ca_cpu_shortconv_forward(y, u, c, z, w, s, B, T, C, L));
}
static void p_shortconv_backward(float *dz, float *dw, const float *dy, const float *z, const float *u, const float *c,
                                 const float *w, int B, int T, int C, int L) {
    TIMED(CA_PROF_SHORTCONV, ca_cpu_shortconv_backward(dz, dw, dy, z, u, c, w, B, T, C, L));
}
static void p_rope_forward(float *o, const float *x, const int32_t *p, int N, int NH, int HS, float th) {
    TIMED(CA_PROF_ROPE, ca_cpu_rope_forward(o, x, p, N, NH, HS, th));
}
static void p_rope_backward(float *dx, const float *d, const int32_t *p, int N, int NH, int HS, float th) {
    TIMED(CA_PROF_ROPE, ca_cpu_rope_backward(dx, d, p, N, NH, HS, th));
}
static void p_attention_forward(float *o, float *a, const float *q, const float *k, const float *v, const int32_t *km,
                                int B, int Tq, int Tk, int NH, int NKV, int HS, int causal, int off) {
    TIMED(CA_PROF_ATTENTION, ca_cpu_attention_forward(o, a, q, k, v, km, B, Tq, Tk, NH, NKV, HS, causal, off));
}
static void p_attention_backward(float *dq, float *dk, float *dv, const float *d, const float *q, const float *k,
                                 const float *v, const float *a, int B, int Tq, int Tk, int NH, int NKV, int HS) {
    TIMED(CA_PROF_ATTENTION, ca_cpu_attention_backward(dq, dk, dv, d, q, k, v, a, B, Tq, Tk, NH, NKV, HS));
}
static void p_swiglu_forward(float *o, const float *g, const float *u, int N, int F) {
    TIMED(CA_PROF_SWIGLU, ca_cpu_swiglu_forward(o, g, u, N, F));
}
static void p_swiglu_backward(float *dg, float *du, const float *d, const float *g, const float *u, int N, int F) {
    TIMED(CA_PROF_SWIGLU, ca_cpu_swiglu_backward(dg, du, d, g, u, N, F));
}
static double p_crossentropy_forward(float *l, const float *x, const int32_t *t, int N, int V) {
    double r;
    TIMED(CA_PROF_CROSSENTROPY, r = ca_cpu_crossentropy_forward(l, x, t, N, V));
    return r;
}
static void p_crossentropy_backward(float *d, const float *x, const int32_t *t, float s, int N, int V) {
    TIMED(CA_PROF_CROSSENTROPY, ca_cpu_crossentropy_backward(d, x, t, s, N, V));
}
static void p_add_inplace(float *y, const float *x, size_t n) { TIMED(CA_PROF_ELEMENTWISE, ca_cpu_add_inplace(y, x, n)); }
static void p_scale_inplace(float *y, float s, size_t n) { TIMED(CA_PROF_ELEMENTWISE, ca_cpu_scale_inplace(y, s, n)); }
static void p_zero(float *y, size_t n) { TIMED(CA_PROF_ELEMENTWISE, ca_cpu_zero(y, n)); }

static void p_lora_forward(float *o, float *h, const float *x, const float *A, const float *B, float s, int N, int C,
                           int OC, int r) {
    TIMED(CA_PROF_LORA, ca_cpu_lora_forward(o, h, x, A, B, s, N, C, OC, r));
}
static void p_lora_backward(float *dx, float *dA, float *dB, float *dh, const float *d, const float *x, const float *h,
                            const float *A, const float *B, float s, int N, int C, int OC, int r) {
    TIMED(CA_PROF_LORA, ca_cpu_lora_backward(dx, dA, dB, dh, d, x, h, A, B, s, N, C, OC, r));
}
static void p_layernorm_forward(float *o, float *mu, float *r, const float *x, const float *w, const float *b, int N, int C,
                                float eps) {
    TIMED(CA_PROF_LAYERNORM, ca_cpu_layernorm_forward(o, mu, r, x, w, b, N, C, eps));
}
static void p_layernorm_backward(float *dx, float *dw, float *db, const float *d, const float *x, const float *w,
                                 const float *mu, const float *r, int N, int C) {
    TIMED(CA_PROF_LAYERNORM, ca_cpu_layernorm_backward(dx, dw, db, d, x, w, mu, r, N, C));
}
static void p_gelu_forward(float *o, const float *x, size_t n, int t) { TIMED(CA_PROF_GELU, ca_cpu_gelu_forward(o, x, n, t)); }
static void p_gelu_backward(float *dx, const float *d, const float *x, size_t n, int t) {
    TIMED(CA_PROF_GELU, ca_cpu_gelu_backward(dx, d, x, n, t));
}
static void p_posresize_forward(float *o, const float *t, int a, int b, int c, int d, int C) {
    TIMED(CA_PROF_VISION_MISC, ca_cpu_posresize_forward(o, t, a, b, c, d, C));
}
static void p_posresize_backward(float *dt, const float *d, int a, int b, int c, int e, int C) {
    TIMED(CA_PROF_VISION_MISC, ca_cpu_posresize_backward(dt, d, a, b, c, e, C));
}
static void p_unshuffle_forward(float *o, const float *x, int H, int W, int C, int f) {
    TIMED(CA_PROF_VISION_MISC, ca_cpu_unshuffle_forward(o, x, H, W, C, f));
}
static void p_unshuffle_backward(float *dx, const float *d, int H, int W, int C, int f) {
    TIMED(CA_PROF_VISION_MISC, ca_cpu_unshuffle_backward(dx, d, H, W, C, f));
}
static void p_mha_forward(float *o, float *a, const float *q, const float *k, const float *v, int T, int NH, int HS) {
    TIMED(CA_PROF_MHA, ca_cpu_mha_forward(o, a, q, k, v, T, NH, HS));
}
static void p_mha_backward(float *dq, float *dk, float *dv, float *s, const float *d, const float *q, const float *k,
                           const float *v, const float *a, int T, int NH, int HS) {
    TIMED(CA_PROF_MHA, ca_cpu_mha_backward(dq, dk, dv, s, d, q, k, v, a, T, NH, HS));
}

static void *p_alloc(size_t bytes) { return ca_cpu_backend.alloc(bytes); }
static void p_free(void *p) { ca_cpu_backend.free(p); }
static void p_copy(void *dst, const void *src, size_t bytes) { ca_cpu_backend.copy(dst, src, bytes); }

const ca_backend ca_cpu_profiling_backend = {
    .name = "cpu-profiled",
    .alloc = p_alloc,
    .free = p_free,
    .copy = p_copy,
    .embedding_forward = p_embedding_forward,
    .embedding_backward = p_embedding_backward,
    .rmsnorm_forward = p_rmsnorm_forward,
    .rmsnorm_backward = p_rmsnorm_backward,
    .linear_forward = p_linear_forward,
    .linear_backward = p_linear_backward,
    .shortconv_forward = p_shortconv_forward,
    .shortconv_backward = p_shortconv_backward,
    .rope_forward = p_rope_forward,
    .rope_backward = p_rope_backward,
    .attention_forward = p_attention_forward,
    .attention_backward = p_attention_backward,
    .swiglu_forward = p_swiglu_forward,
    .swiglu_backward = p_swiglu_backward,
    .crossentropy_forward = p_crossentropy_forward,
    .crossentropy_backward = p_crossentropy_backward,
    .add_inplace = p_add_inplace,
    .scale_inplace = p_scale_inplace,
    .zero = p_zero,
    .scatter_rows = ca_cpu_scatter_rows,
    .gather_rows = ca_cpu_gather_rows,
    .lora_forward = p_lora_forward,
    .lora_backward = p_lora_backward,
    .lora_merge = ca_cpu_lora_merge,
    .dropout_forward = ca_cpu_dropout_forward,
    .dropout_backward = ca_cpu_dropout_backward,
    .adamw_update = ca_cpu_adamw_update,
    .sum_squares = ca_cpu_sum_squares,
    .layernorm_forward = p_layernorm_forward,
    .layernorm_backward = p_layernorm_backward,
    .gelu_forward = p_gelu_forward,
    .gelu_backward = p_gelu_backward,
    .posresize_forward = p_posresize_forward,
    .posresize_backward = p_posresize_backward,
    .unshuffle_forward = p_unshuffle_forward,
    .unshuffle_backward = p_unshuffle_backward,
    .mha_forward = p_mha_forward,
    .mha_backward = p_mha_backward,
};

ca_status ca_sgemm_seconds(double *seconds, int trans_a, int trans_b, int M, int N, int K, int reps) {
    if (M <= 0 || N <= 0 || K <= 0 || reps <= 0) return ca_error(CA_ERR_VALUE, "sgemm sizes must be positive");
    float *a = ca_cpu_backend.alloc((size_t)M * K * sizeof(float));
    float *b = ca_cpu_backend.alloc((size_t)K * N * sizeof(float));
    float *c = ca_cpu_backend.alloc((size_t)M * N * sizeof(float));
    if (!a || !b || !c) {
        ca_cpu_backend.free(a), ca_cpu_backend.free(b), ca_cpu_backend.free(c);
        return ca_error(CA_ERR_NOMEM, "out of memory for an sgemm of %d x %d x %d", M, N, K);
    }
    unsigned s = 12345u;
    for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)((s = s * 1103515245u + 12345u) >> 16) / 65536.0f - 0.5f;
    for (size_t i = 0; i < (size_t)K * N; i++) b[i] = (float)((s = s * 1103515245u + 12345u) >> 16) / 65536.0f - 0.5f;
    /* The anchor is OpenBLAS's own threading over the same thread count our split GEMMs use (it stays at 1
     * everywhere else: threads.c says why). */
    ca_openblas_set_num_threads(ca_get_num_threads());
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        ca_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K,
                       1.0f, a, trans_a ? M : K, b, trans_b ? K : N, 1.0f, c, N);
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    ca_openblas_set_num_threads(1);
    ca_cpu_backend.free(a), ca_cpu_backend.free(b), ca_cpu_backend.free(c);
    *seconds = best;
    return CA_OK;
}

/* The machine's speed of light for the benchmarks: independent FMA chains with no memory traffic, on every
 * thread at once. 12 chains cover the FMA latency (4 cycles) times the pipes (2) with room to spare. For fp32
 * both vector widths are tried (Zen 4 double-pumps 512-bit FMAs, other cores may not); bf16 is vdpbf16ps,
 * the instruction of our bf16 GEMMs. */
#define CA_PEAK_CHAINS 12
#define CA_PEAK_ITERS (1 << 23)

__attribute__((target("avx2,fma"))) static float fma_chains_avx2(float seed) {
    __m256 acc[CA_PEAK_CHAINS];
    const __m256 mul = _mm256_set1_ps(0.999999f), add = _mm256_set1_ps(1e-7f);
    for (int c = 0; c < CA_PEAK_CHAINS; c++) acc[c] = _mm256_set1_ps(seed + (float)c);
    for (int i = 0; i < CA_PEAK_ITERS; i++)
        for (int c = 0; c < CA_PEAK_CHAINS; c++) acc[c] = _mm256_fmadd_ps(acc[c], mul, add);
    __m256 sum = acc[0];
    for (int c = 1; c < CA_PEAK_CHAINS; c++) sum = _mm256_add_ps(sum, acc[c]);
    float lanes[8];
    _mm256_storeu_ps(lanes, sum);
    return lanes[0];
}

__attribute__((target("avx512f"))) static float fma_chains_avx512(float seed) {
    __m512 acc[CA_PEAK_CHAINS];
    const __m512 mul = _mm512_set1_ps(0.999999f), add = _mm512_set1_ps(1e-7f);
    for (int c = 0; c < CA_PEAK_CHAINS; c++) acc[c] = _mm512_set1_ps(seed + (float)c);
    for (int i = 0; i < CA_PEAK_ITERS; i++)
        for (int c = 0; c < CA_PEAK_CHAINS; c++) acc[c] = _mm512_fmadd_ps(acc[c], mul, add);
    __m512 sum = acc[0];
    for (int c = 1; c < CA_PEAK_CHAINS; c++) sum = _mm512_add_ps(sum, acc[c]);
    return _mm512_reduce_add_ps(sum);
}

/* vdpbf16ps: 16 lanes, each a sum of 2 bf16 products = 4 FLOP per lane. */
__attribute__((target("avx512f,avx512bf16"))) static float dpbf16_chains(float seed) {
    __m512 acc[CA_PEAK_CHAINS];
    const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3380); /* 1, 6e-8 */
    for (int c = 0; c < CA_PEAK_CHAINS; c++) acc[c] = _mm512_set1_ps(seed + (float)c);
    for (int i = 0; i < CA_PEAK_ITERS; i++)
        for (int c = 0; c < CA_PEAK_CHAINS; c++) acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
    __m512 sum = acc[0];
    for (int c = 1; c < CA_PEAK_CHAINS; c++) sum = _mm512_add_ps(sum, acc[c]);
    return _mm512_reduce_add_ps(sum);
}

enum { PEAK_AVX2, PEAK_AVX512, PEAK_BF16 };

static double peak_seconds(int kind, int threads, volatile float *sink) {
    double t0 = now();
#pragma omp parallel num_threads(threads)
    {
        const float r = kind == PEAK_AVX2     ? fma_chains_avx2(1.0f)
                        : kind == PEAK_AVX512 ? fma_chains_avx512(1.0f)
                                              : dpbf16_chains(1.0f);
#pragma omp atomic
        *sink += r;
    }
    return now() - t0;
}

ca_status ca_fma_peak_gflops(double *gflops, int bf16, int reps) {
    __builtin_cpu_init();
    if (reps <= 0) return ca_error(CA_ERR_VALUE, "reps must be positive");
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
        return ca_error(CA_ERR_UNSUPPORTED, "the FMA peak probe needs AVX2 and FMA");
    if (bf16 && !(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16")))
        return ca_error(CA_ERR_UNSUPPORTED, "this CPU has no AVX512-BF16 (vdpbf16ps)");
    const int threads = ca_get_num_threads();
    int kinds[2] = {PEAK_AVX2, PEAK_AVX512}, num_kinds = __builtin_cpu_supports("avx512f") ? 2 : 1;
    if (bf16) kinds[0] = PEAK_BF16, num_kinds = 1;
    volatile float sink = 0.0f;
    double best = 0.0;
    for (int k = 0; k < num_kinds; k++) {
        /* FLOP per instruction: 8 lanes × 2 (ymm FMA), 16 × 2 (zmm FMA), 16 × 4 (zmm bf16 pair dot product) */
        const double per_instr = kinds[k] == PEAK_AVX2 ? 16.0 : kinds[k] == PEAK_AVX512 ? 32.0 : 64.0;
        const double flops = per_instr * CA_PEAK_CHAINS * (double)CA_PEAK_ITERS * threads;
        for (int r = 0; r < reps; r++) {
            const double seconds = peak_seconds(kinds[k], threads, &sink);
            if (flops / seconds > best) best = flops / seconds;
        }
    }
    *gflops = best / 1e9;
    return CA_OK;
}

/* Read bandwidth: every thread XORs its share of a buffer far larger than the caches (huge-page advised, as the
 * weights are), best of `reps`: the roofline of a decoding step, which only reads its weights. */
ca_status ca_read_bandwidth_gbs(double *gbs, size_t bytes, int reps) {
    const size_t n = bytes / sizeof(uint64_t);
    if (n == 0 || reps <= 0) return ca_error(CA_ERR_VALUE, "bytes and reps must be positive");
    uint64_t *buf = ca_cpu_alloc_uninit(n * sizeof(uint64_t));
    if (!buf) return ca_error(CA_ERR_NOMEM, "out of memory for a %zu-byte bandwidth probe", bytes);
    const int threads = ca_get_num_threads();
    /* Written before it is read: untouched pages would all map the kernel's shared zero page, and the probe would
     * measure a cache, not memory. Each thread first-touches the share it will read. */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++) buf[i] = i * 0x9e3779b97f4a7c15ull;
    volatile uint64_t sink = 0;
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        uint64_t acc = 0;
        const double t0 = now();
#pragma omp parallel for num_threads(threads) schedule(static) reduction(^ : acc)
        for (size_t i = 0; i < n; i++) acc ^= buf[i];
        const double dt = now() - t0;
        sink ^= acc;
        if (dt < best) best = dt;
    }
    ca_cpu_backend.free(buf);
    *gbs = (double)(n * sizeof(uint64_t)) / best / 1e9;
    return CA_OK;
}
