/* C-level tests of the federated kernels (fed.c, secagg.c) under AddressSanitizer + UBSan (`make c-tests`):
 * every buffer is heap-allocated at its exact size, sizes cover the OpenMP thresholds and odd tails, and the
 * error paths must return a status (never abort).
 *
 * CA_TEST_SOURCES: csrc/fed.c csrc/secagg.c csrc/status.c
 * CA_TEST_LIBS: -fopenmp
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "captionaura/ca_fed.h"

static int failures = 0;
static int checks = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__, __LINE__, #cond, \
                    ca_last_error());                                                              \
        }                                                                                          \
    } while (0)

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand(void) { /* xorshift64*, uniform in [-1, 1) */
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return (float)((double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void test_acc(size_t n, int K) {
    float **xs = malloc(K * sizeof *xs);
    double *ref = calloc(n, sizeof *ref);
    double W = 0;
    ca_fed_acc acc;
    CHECK(ca_fed_acc_init(&acc, n) == CA_OK);
    for (int k = 0; k < K; k++) {
        xs[k] = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) xs[k][i] = frand();
        double w = 1 + k;
        ca_fed_acc_add(&acc, xs[k], w);
        for (size_t i = 0; i < n; i++) ref[i] += w * xs[k][i];
        W += w;
    }
    float *out = malloc(n * sizeof(float));
    CHECK(ca_fed_acc_mean(out, &acc) == CA_OK);
    {   /* the batched add gives the same bits as K single adds */
        ca_fed_acc acc2;
        double *ws = malloc(K * sizeof(double));
        for (int k = 0; k < K; k++) ws[k] = 1 + k;
        CHECK(ca_fed_acc_init(&acc2, n) == CA_OK);
        ca_fed_acc_add_many(&acc2, (const float *const *)xs, ws, K);
        CHECK(memcmp(acc2.sum, acc.sum, n * sizeof(double)) == 0 && acc2.weight == acc.weight);
        ca_fed_acc_free(&acc2);
        free(ws);
    }
    int ok = 1;
    for (size_t i = 0; i < n; i++) ok &= out[i] == (float)(ref[i] / W);
    CHECK(ok);
    CHECK(ca_fed_first_nonfinite(xs[0], n) == n);
    {   /* fused validate-and-add: a bad vector leaves the accumulator (nearly) as it was */
        double *snap = malloc(n * sizeof(double));
        memcpy(snap, acc.sum, n * sizeof(double));
        double w0 = acc.weight;
        float saved = xs[0][n - 1];
        xs[0][n - 1] = INFINITY;
        CHECK(ca_fed_acc_add_checked(&acc, xs[0], 3.0) == n - 1);
        int same = acc.weight == w0;
        for (size_t i = 0; i < n; i++) same &= fabs(acc.sum[i] - snap[i]) <= 4e-16 * fabs(snap[i]) + 1e-300;
        CHECK(same);
        xs[0][n - 1] = saved;
        CHECK(ca_fed_acc_add_checked(&acc, xs[0], 0.0) == n); /* finite: added (weight 0 keeps ref valid) */
        CHECK(acc.count == K + 1);
        acc.count = K;
        free(snap);
    }
    xs[0][n - 1] = NAN;
    CHECK(ca_fed_first_nonfinite(xs[0], n) == n - 1);
    xs[0][n / 2] = -INFINITY;
    CHECK(ca_fed_first_nonfinite(xs[0], n) == n / 2);
    xs[0][n / 2] = 0; xs[0][n - 1] = 0;

    /* coordinate rules on K vectors */
    for (int rule = 0; rule < 3; rule++) {
        int param = rule == CA_FED_TRIMMED ? K / 4 : (rule == CA_FED_CLOSEST ? (K + 1) / 2 : 0);
        CHECK(ca_fed_coordinate_rule(out, (const float *const *)xs, K, n, rule, param) == CA_OK);
        double *col = malloc(K * sizeof(double));
        int good = 1;
        for (size_t i = 0; i < n; i += 997) { /* spot-check: min ≤ result ≤ max */
            double lo = 1e30, hi = -1e30;
            for (int k = 0; k < K; k++) { lo = fmin(lo, xs[k][i]); hi = fmax(hi, xs[k][i]); }
            good &= out[i] >= (float)lo && out[i] <= (float)hi;
        }
        CHECK(good);
        free(col);
    }
    CHECK(ca_fed_coordinate_rule(out, (const float *const *)xs, K, n, CA_FED_TRIMMED, K) == CA_ERR_VALUE);
    CHECK(ca_fed_coordinate_rule(out, (const float *const *)xs, K, n, CA_FED_CLOSEST, 0) == CA_ERR_VALUE);

    double *D = malloc((size_t)K * K * sizeof(double));
    CHECK(ca_fed_pairwise_sqdist(D, (const float *const *)xs, K, n) == CA_OK);
    double d01 = 0;
    for (size_t i = 0; i < n; i++) d01 += ((double)xs[0][i] - xs[1 % K][i]) * ((double)xs[0][i] - xs[1 % K][i]);
    CHECK(fabs(D[1 % K] - d01) <= 1e-9 * (1 + d01));
    CHECK(D[0] == 0);

    /* optimiser steps keep state finite; FedAvgM with lr 1, momentum 0 is the mean */
    float *x = calloc(n, sizeof(float)), *m = calloc(n, sizeof(float)), *v = calloc(n, sizeof(float));
    for (int kind = 0; kind < 3; kind++) CHECK(ca_fed_fedopt_step(x, m, v, &acc, kind, 0.1, 0.9, 0.99, 1e-3) == CA_OK);
    CHECK(ca_fed_fedopt_step(x, m, v, &acc, 7, 0.1, 0.9, 0.99, 1e-3) == CA_ERR_VALUE);
    memset(x, 0, n * sizeof(float));
    CHECK(ca_fed_fedavgm_step(x, NULL, &acc, 1.0, 0.0, 1) == CA_OK);
    CHECK(ca_fed_acc_mean(out, &acc) == CA_OK);
    ok = 1;
    for (size_t i = 0; i < n; i++) ok &= fabsf(x[i] - out[i]) <= 1e-6f;
    CHECK(ok);
    CHECK(ca_fed_fedavgm_step(x, NULL, &acc, 1.0, 0.9, 1) == CA_ERR_VALUE); /* momentum needs a buffer */

    /* clipping lands on the sphere */
    double norm;
    ca_fed_clip(out, xs[0], xs[1 % K], n, 0.5, &norm);
    CHECK(K == 1 || fabs(ca_fed_l2norm(out, xs[1 % K], n) - fmin(0.5, norm)) < 1e-4);
    /* proximal term */
    CHECK(fabs(ca_fed_proximal(NULL, xs[0], xs[0], n, 1.0)) == 0.0);

    ca_fed_acc_reset(&acc);
    CHECK(ca_fed_acc_mean(out, &acc) == CA_ERR_VALUE); /* no weight: a status, not a division by zero */
    ca_fed_acc_free(&acc);
    ca_fed_acc_free(&acc); /* idempotent */
    for (int k = 0; k < K; k++) free(xs[k]);
    free(xs); free(ref); free(out); free(D); free(x); free(m); free(v);
}

static void test_secagg(size_t n) {
    uint32_t *q = malloc(n * 4), *mask = malloc(n * 4), *y = malloc(n * 4);
    float *x = malloc(n * 4), *out = malloc(n * 4);
    for (size_t i = 0; i < n; i++) { x[i] = 3 * frand(); mask[i] = (uint32_t)(rng_state >> 7) ^ (uint32_t)i; frand(); }
    CHECK(ca_secagg_quantize(q, x, NULL, n, 1.0, 8.0, 1u << 22, 32) == CA_OK);
    memcpy(y, q, n * 4);
    CHECK(ca_secagg_add_mod(y, mask, n, 1, 32) == CA_OK);
    CHECK(ca_secagg_add_mod(y, mask, n, -1, 32) == CA_OK);
    CHECK(memcmp(y, q, n * 4) == 0);
    CHECK(ca_secagg_dequantize(out, q, n, 1, 8.0, 1u << 22, 32) == CA_OK);
    int ok = 1;
    for (size_t i = 0; i < n; i++) ok &= fabsf(out[i] - x[i]) <= 8.0f / ((1u << 22) - 1) + 1e-6f;
    CHECK(ok);
    CHECK(ca_secagg_quantize(q, x, NULL, n, 1.0, 8.0, 1u << 22, 0) == CA_ERR_VALUE);
    CHECK(ca_secagg_quantize(q, x, NULL, n, 1.0, 8.0, 1ull << 33, 32) == CA_ERR_VALUE);
    CHECK(ca_secagg_add_mod(y, mask, n, 2, 32) == CA_ERR_VALUE);
    CHECK(ca_secagg_dequantize(out, q, n, 5000, 8.0, 1u << 22, 32) == CA_ERR_VALUE);
    free(q); free(mask); free(y); free(x); free(out);
}

int main(void) {
    size_t sizes[] = {1, 63, 65, 4097, 40001, 100003};
    int Ks[] = {1, 2, 5, 33};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
        for (size_t k = 0; k < sizeof Ks / sizeof *Ks; k++) test_acc(sizes[s] < 2 ? 2 : sizes[s], Ks[k]);
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) test_secagg(sizes[s]);
    printf("test_fed: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
