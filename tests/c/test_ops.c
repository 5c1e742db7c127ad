/* Plain-C checks of the CPU ops at odd sizes, for the sanitizer build (ASan/UBSan, `make c-tests`): every
 * forward against a double-precision loop written here, every backward that has non-trivial indexing
 * (shortconv, attention) against central finite differences of its own forward. Exits nonzero on failure.
 *
 * CA_TEST_LIBS: -fopenmp -DCA_BLAS_SCIPY_PREFIX=1 -I$($PY -c "import scipy_openblas32 as s; print(s.get_include_dir())") -L$($PY -c "import scipy_openblas32 as s; print(s.get_lib_dir())") -lscipy_openblas -Wl,-rpath,$($PY -c "import scipy_openblas32 as s; print(s.get_lib_dir())")
 */
// CA_TEST_SOURCES: csrc/cpu/*.c csrc/threads.c csrc/status.c
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "captionaura/ca_ops.h"

static int failures = 0;

#define CHECK(cond, ...)                                                                                      \
    do {                                                                                                      \
        if (!(cond)) {                                                                                        \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                              \
            fprintf(stderr, __VA_ARGS__);                                                                     \
            fprintf(stderr, "\n");                                                                            \
            failures++;                                                                                       \
        }                                                                                                     \
    } while (0)

static unsigned long long rng_state = 88172645463325252ULL;
static float frand(void) { /* xorshift64, uniform in [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}
static float *rnd(size_t n) {
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = frand();
    return p;
}
static float *filled(size_t n, float v) {
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = v;
    return p;
}
/* max |a−b| / max(max|b|, 1e-6) */
static double relmax(const float *a, const double *b, size_t n) {
    double d = 0, m = 1e-6;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (!(e <= d)) d = e; /* NaN propagates */
        if (fabs(b[i]) > m) m = fabs(b[i]);
    }
    return d / m;
}
static double dotf(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

static void test_embedding(void) {
    int N = 5, V = 7, C = 13;
    int32_t ids[5] = {3, 0, 3, 6, 3};
    float *wte = rnd((size_t)V * C), *out = filled((size_t)N * C, NAN), *dout = rnd((size_t)N * C);
    ca_cpu_embedding_forward(out, ids, wte, N, C);
    CHECK(memcmp(out + 2 * C, wte + 3 * C, C * sizeof(float)) == 0, "embedding row");
    float *dwte = filled((size_t)V * C, 1.0f);
    ca_cpu_embedding_backward(dwte, dout, ids, N, C);
    double want = 1.0 + (double)dout[0 * C + 4] + dout[2 * C + 4] + dout[4 * C + 4];
    CHECK(fabs(dwte[3 * C + 4] - want) < 1e-5, "embedding backward accumulates repeated ids");
    CHECK(dwte[1 * C] == 1.0f, "embedding backward leaves unused rows");
    free(wte), free(out), free(dout), free(dwte);
}

static void test_rmsnorm(void) {
    int N = 4, C = 13;
    float eps = 1e-5f;
    float *x = rnd((size_t)N * C), *w = rnd(C), *out = filled((size_t)N * C, NAN), *rstd = filled(N, NAN);
    float *dout = rnd((size_t)N * C), *dx = filled((size_t)N * C, 0.5f), *dw = filled(C, 0.25f);
    double *ref = malloc(sizeof(double) * N * C), *rdx = malloc(sizeof(double) * N * C);
    ca_cpu_rmsnorm_forward(out, rstd, x, w, N, C, eps);
    ca_cpu_rmsnorm_backward(dx, dw, dout, x, w, rstd, N, C);
    double dw0 = 0.25;
    for (int n = 0; n < N; n++) {
        double ss = 0, gx = 0;
        for (int i = 0; i < C; i++) ss += (double)x[n * C + i] * x[n * C + i];
        double r = 1.0 / sqrt(ss / C + eps);
        for (int i = 0; i < C; i++) gx += (double)w[i] * dout[n * C + i] * x[n * C + i];
        for (int i = 0; i < C; i++) {
            ref[n * C + i] = w[i] * x[n * C + i] * r;
            rdx[n * C + i] = 0.5 + r * w[i] * dout[n * C + i] - x[n * C + i] * r * r * r * gx / C;
        }
        dw0 += (double)dout[n * C] * x[n * C] * r;
    }
    CHECK(relmax(out, ref, (size_t)N * C) < 1e-5, "rmsnorm forward");
    CHECK(relmax(dx, rdx, (size_t)N * C) < 1e-5, "rmsnorm backward dinp (+=)");
    CHECK(fabs(dw[0] - dw0) < 1e-5, "rmsnorm backward dweight (+=)");
    free(x), free(w), free(out), free(rstd), free(dout), free(dx), free(dw), free(ref), free(rdx);
}

static void test_linear(void) {
    int C = 13, OC = 7;
    for (int N = 1; N <= 5; N += 4) { /* N = 1 takes the sgemv path */
        float *x = rnd((size_t)N * C), *W = rnd((size_t)OC * C), *b = rnd(OC), *out = filled((size_t)N * OC, NAN);
        float *dout = rnd((size_t)N * OC), *dx = filled((size_t)N * C, NAN), *dW = filled((size_t)OC * C, 0.0f);
        float *db = filled(OC, 0.0f);
        double *ref = malloc(sizeof(double) * N * OC), *rdx = malloc(sizeof(double) * N * C);
        ca_cpu_linear_forward(out, x, W, b, N, C, OC);
        ca_cpu_linear_backward(dx, dW, db, dout, x, W, N, C, OC, 0);
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) ref[n * OC + o] = b[o] + dotf(x + n * C, W + o * C, C);
        for (int n = 0; n < N; n++)
            for (int i = 0; i < C; i++) {
                double s = 0;
                for (int o = 0; o < OC; o++) s += (double)dout[n * OC + o] * W[o * C + i];
                rdx[n * C + i] = s;
            }
        double dW00 = 0, db0 = 0;
        for (int n = 0; n < N; n++) dW00 += (double)dout[n * OC] * x[n * C], db0 += dout[n * OC];
        CHECK(relmax(out, ref, (size_t)N * OC) < 1e-5, "linear forward N=%d", N);
        CHECK(relmax(dx, rdx, (size_t)N * C) < 1e-5, "linear backward dinp N=%d", N);
        CHECK(fabs(dW[0] - dW00) < 1e-5 && fabs(db[0] - db0) < 1e-5, "linear backward dW/db N=%d", N);
        free(x), free(W), free(b), free(out), free(dout), free(dx), free(dW), free(db), free(ref), free(rdx);
    }
}

/* ---- shortconv: forward vs a double loop, backward vs finite differences of Σ dy·y ---- */
static double conv_objective(const float *z, const float *w, const float *dy, int B, int T, int C, int L) {
    size_t n = (size_t)B * T * C;
    float *y = malloc(n * sizeof(float)), *u = malloc(n * sizeof(float)), *c = malloc(n * sizeof(float));
    ca_cpu_shortconv_forward(y, u, c, z, w, NULL, B, T, C, L);
    double s = dotf(y, dy, n);
    free(y), free(u), free(c);
    return s;
}

static void test_shortconv(int B, int T, int C, int L) {
    size_t n = (size_t)B * T * C;
    float *z = rnd(3 * n), *w = rnd((size_t)C * L), *dy = rnd(n);
    float *y = filled(n, NAN), *u = filled(n, NAN), *c = filled(n, NAN);
    double *ref = malloc(n * sizeof(double));
    ca_cpu_shortconv_forward(y, u, c, z, w, NULL, B, T, C, L);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < C; h++) {
                double acc = 0;
                for (int k = 0; k < L; k++) {
                    int s = t - (L - 1) + k;
                    if (s < 0) continue;
                    const float *zs = z + ((size_t)b * T + s) * 3 * C;
                    acc += (double)w[h * L + k] * zs[h] * zs[2 * C + h];
                }
                ref[((size_t)b * T + t) * C + h] = z[((size_t)b * T + t) * 3 * C + C + h] * acc;
            }
    CHECK(relmax(y, ref, n) < 1e-5, "shortconv forward B%d T%d C%d L%d", B, T, C, L);
    float *dz = filled(3 * n, NAN), *dw = filled((size_t)C * L, 0.0f);
    ca_cpu_shortconv_backward(dz, dw, dy, z, u, c, w, B, T, C, L);
    const float h = 1e-2f;
    for (int trial = 0; trial < 12; trial++) {
        int use_w = trial % 3 == 0;
        float *p = use_w ? w : z;
        size_t i = (size_t)((frand() + 1.0f) * 0.5f * (use_w ? (size_t)C * L : 3 * n)) % (use_w ? (size_t)C * L : 3 * n);
        float keep = p[i];
        p[i] = keep + h;
        double fp = conv_objective(z, w, dy, B, T, C, L);
        p[i] = keep - h;
        double fm = conv_objective(z, w, dy, B, T, C, L);
        p[i] = keep;
        double fd = (fp - fm) / (2 * h), an = use_w ? dw[i] : dz[i];
        CHECK(fabs(fd - an) < 2e-3 * (1 + fabs(an)), "shortconv backward %s[%zu]: fd %g vs %g", use_w ? "w" : "z",
              i, fd, an);
    }
    free(z), free(w), free(dy), free(y), free(u), free(c), free(ref), free(dz), free(dw);
}

/* ---- attention: forward vs a double loop, backward vs finite differences ---- */
typedef struct {
    int B, Tq, Tk, NH, NKV, HS, causal, q_offset;
    const int32_t *mask;
} attn_shape;

static double attn_objective(const attn_shape *s, const float *q, const float *k, const float *v, const float *dout) {
    size_t no = (size_t)s->B * s->Tq * s->NH * s->HS, na = (size_t)s->B * s->NH * s->Tq * s->Tk;
    float *out = malloc(no * sizeof(float)), *att = malloc(na * sizeof(float));
    ca_cpu_attention_forward(out, att, q, k, v, s->mask, s->B, s->Tq, s->Tk, s->NH, s->NKV, s->HS, s->causal,
                             s->q_offset);
    double r = dotf(out, dout, no);
    free(out), free(att);
    return r;
}

static void test_attention(void) {
    int32_t mask[2 * 7] = {0, 1, 1, 1, 1, 1, 1, /* key 0 hidden: query 0 of batch 0 sees nothing */
                           1, 1, 1, 1, 1, 0, 0};
    attn_shape s = {2, 4, 7, 3, 1, 16, 1, 0, mask};
    /* Tq=4 queries over Tk=7 keys with q_offset 0: queries see keys 0..t, except hidden ones */
    size_t nq = (size_t)s.B * s.Tq * s.NH * s.HS, nk = (size_t)s.B * s.Tk * s.NKV * s.HS;
    size_t na = (size_t)s.B * s.NH * s.Tq * s.Tk;
    float *q = rnd(nq), *k = rnd(nk), *v = rnd(nk), *dout = rnd(nq);
    float *out = filled(nq, NAN), *att = filled(na, NAN);
    double *ref = malloc(nq * sizeof(double));
    for (int qo = 0; qo <= 3; qo += 3) {
        s.q_offset = qo;
        ca_cpu_attention_forward(out, att, q, k, v, mask, s.B, s.Tq, s.Tk, s.NH, s.NKV, s.HS, 1, qo);
        for (int b = 0; b < s.B; b++)
            for (int h = 0; h < s.NH; h++)
                for (int t = 0; t < s.Tq; t++) {
                    double sc[7], mx = -INFINITY, sum = 0;
                    int g = h / (s.NH / s.NKV);
                    const float *qt = q + (((size_t)b * s.Tq + t) * s.NH + h) * s.HS;
                    for (int j = 0; j < s.Tk; j++) {
                        int vis = j <= qo + t && mask[b * s.Tk + j];
                        sc[j] = vis ? dotf(qt, k + (((size_t)b * s.Tk + j) * s.NKV + g) * s.HS, s.HS) / 4.0 : -INFINITY;
                        if (sc[j] > mx) mx = sc[j];
                    }
                    for (int j = 0; j < s.Tk; j++) sum += sc[j] == -INFINITY ? 0 : exp(sc[j] - mx);
                    for (int d = 0; d < s.HS; d++) {
                        double o = 0;
                        for (int j = 0; j < s.Tk; j++)
                            if (sc[j] != -INFINITY)
                                o += exp(sc[j] - mx) / sum * v[(((size_t)b * s.Tk + j) * s.NKV + g) * s.HS + d];
                        ref[(((size_t)b * s.Tq + t) * s.NH + h) * s.HS + d] = o;
                    }
                }
        CHECK(relmax(out, ref, nq) < 1e-5, "attention forward q_offset %d", qo);
        if (qo == 0) /* query 0 of batch 0 sees only key 0, which is hidden */
            CHECK(out[0] == 0.0f && att[0] == 0.0f && att[1] == 0.0f, "attention: no visible key gives zeros");
    }
    /* backward at q_offset 3 */
    float *dq = filled(nq, NAN), *dk = filled(nk, NAN), *dv = filled(nk, NAN);
    ca_cpu_attention_backward(dq, dk, dv, dout, q, k, v, att, s.B, s.Tq, s.Tk, s.NH, s.NKV, s.HS);
    const float h = 1e-2f;
    for (int trial = 0; trial < 15; trial++) {
        int which = trial % 3;
        float *p = which == 0 ? q : which == 1 ? k : v;
        float *g = which == 0 ? dq : which == 1 ? dk : dv;
        size_t n = which == 0 ? nq : nk;
        size_t i = (size_t)((frand() + 1.0f) * 0.5f * n) % n;
        float keep = p[i];
        p[i] = keep + h;
        double fp = attn_objective(&s, q, k, v, dout);
        p[i] = keep - h;
        double fm = attn_objective(&s, q, k, v, dout);
        p[i] = keep;
        double fd = (fp - fm) / (2 * h);
        CHECK(fabs(fd - g[i]) < 2e-3 * (1 + fabs(g[i])), "attention backward %c[%zu]: fd %g vs %g", "qkv"[which], i,
              fd, g[i]);
    }
    free(q), free(k), free(v), free(dout), free(out), free(att), free(ref), free(dq), free(dk), free(dv);
}

static void test_rope(void) {
    int N = 3, NH = 2, HS = 300; /* more pairs than one stack chunk */
    int32_t pos[3] = {0, 17, 4000};
    size_t n = (size_t)N * NH * HS;
    float *x = rnd(n), *y = malloc(n * sizeof(float));
    memcpy(y, x, n * sizeof(float));
    ca_cpu_rope_forward(y, y, pos, N, NH, HS, 1e6f);
    CHECK(memcmp(y, x, (size_t)NH * HS * sizeof(float)) == 0, "rope at position 0 is the identity");
    float a = 17.0f * (1.0f / powf(1e6f, 2.0f / 300.0f)); /* pair i = 1 of token 1 */
    double want = x[NH * HS + 1] * cos(a) - x[NH * HS + 1 + HS / 2] * sin(a);
    CHECK(fabs(y[NH * HS + 1] - want) < 1e-5, "rope value");
    ca_cpu_rope_backward(y, y, pos, N, NH, HS, 1e6f);
    double d = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs(y[i] - x[i]));
    CHECK(d < 1e-5, "rope backward inverts forward (%g)", d);
    free(x), free(y);
}

static void test_swiglu_and_crossentropy(void) {
    int N = 3, F = 21;
    float *g = rnd((size_t)N * F), *u = rnd((size_t)N * F), *out = filled((size_t)N * F, NAN);
    g[0] = -100.0f, g[1] = 100.0f;
    ca_cpu_swiglu_forward(out, g, u, N, F);
    double err = 0;
    for (int i = 0; i < N * F; i++) err = fmax(err, fabs(out[i] - g[i] / (1.0 + exp(-(double)g[i])) * u[i]));
    CHECK(err < 1e-5, "swiglu forward (%g)", err);
    float *dg = filled((size_t)N * F, NAN), *du = filled((size_t)N * F, NAN), *dout = rnd((size_t)N * F);
    ca_cpu_swiglu_backward(dg, du, dout, g, u, N, F);
    CHECK(isfinite(dg[0]) && isfinite(dg[1]) && fabs(du[1] - dout[1] * 100.0f) < 1e-3, "swiglu saturated");

    int V = 37;
    float *logits = rnd((size_t)N * V), *losses = filled(N, NAN), *dl = filled((size_t)N * V, NAN);
    int32_t tg[3] = {5, CA_IGNORE_INDEX, 36};
    double total = ca_cpu_crossentropy_forward(losses, logits, tg, N, V), want = 0;
    for (int n = 0; n < N; n++) {
        if (tg[n] < 0) continue;
        double s = 0;
        for (int j = 0; j < V; j++) s += exp(logits[n * V + j]);
        want += log(s) - logits[n * V + tg[n]];
    }
    CHECK(fabs(total - want) < 1e-5 && losses[1] == 0.0f, "crossentropy forward");
    ca_cpu_crossentropy_backward(dl, logits, tg, 0.5f, N, V);
    double rs = 0;
    for (int j = 0; j < V; j++) rs += dl[j];
    CHECK(fabs(rs) < 1e-6 && dl[V] == 0.0f && dl[5] < 0.0f, "crossentropy backward");
    ca_cpu_crossentropy_backward(logits, logits, tg, 0.5f, N, V); /* in place */
    CHECK(memcmp(logits, dl, (size_t)N * V * sizeof(float)) == 0, "crossentropy backward in place");
    free(g), free(u), free(out), free(dg), free(du), free(dout), free(logits), free(losses), free(dl);
}

static void test_elementwise(void) {
    size_t n = 300001;
    float *y = filled(n, 1.0f), *x = filled(n, 2.0f);
    ca_cpu_add_inplace(y, x, n);
    ca_cpu_scale_inplace(y, 0.5f, n);
    CHECK(y[0] == 1.5f && y[n - 1] == 1.5f, "add/scale");
    ca_cpu_zero(y, n);
    CHECK(y[n / 2] == 0.0f, "zero");
    free(y), free(x);
}

int main(void) {
    test_embedding();
    test_rmsnorm();
    test_linear();
    test_shortconv(2, 5, 70, 4);  /* two channel tiles */
    test_shortconv(1, 3, 9, 5);   /* T < L */
    test_shortconv(1, 6, 5, 20);  /* kernel longer than the stack tile */
    test_attention();
    test_rope();
    test_swiglu_and_crossentropy();
    test_elementwise();
    if (failures) {
        fprintf(stderr, "test_ops: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_ops: all passed\n");
    return 0;
}
