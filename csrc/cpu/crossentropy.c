/* Softmax cross-entropy over the vocabulary: loss_n = logsumexp(logits_n) − logits_n[target_n], rows whose
 * target is CA_IGNORE_INDEX (−100) skipped. The max is subtracted before exp; the exp sum and the loss total
 * are accumulated in double (V = 65536 terms per row). */
#include <math.h>

#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

#define CE_MAX_THREADS 256

/* logsumexp of one row: max + log Σ exp(l − max), the sum in double. */
static double row_lse(const float *restrict l, int V) {
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int j = 0; j < V; j++) mx = l[j] > mx ? l[j] : mx;
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; j++) sum += (double)ca_expf(l[j] - mx);
    return (double)mx + log(sum);
}

/* Returns Σ loss_n over counted rows. Each thread sums a fixed contiguous range of rows into its own slot and
 * the slots are added in order, so the total does not depend on thread timing (only on the thread count). */
CA_AVX512_CLONE
double ca_cpu_crossentropy_forward(float *restrict losses,          /* (N) or NULL */
                                   const float *restrict logits,    /* (N, V) */
                                   const int32_t *restrict targets, /* (N) */
                                   int N, int V) {
    if (N <= 0 || V <= 0) return 0.0;
    double partial[CE_MAX_THREADS];
    int used = 1;
#ifdef _OPENMP
    int maxt = omp_get_max_threads();
#else
    int maxt = 1;
#endif
    if (maxt > CE_MAX_THREADS) maxt = CE_MAX_THREADS;
#pragma omp parallel num_threads(maxt) if ((size_t)N * V > CA_PAR_MIN)
    {
        int it = CA_OMP_IT(), nt = CA_OMP_NT();
        if (it == 0) used = nt;
        int n0 = (int)((long long)N * it / nt), n1 = (int)((long long)N * (it + 1) / nt);
        double acc = 0.0;
        for (int n = n0; n < n1; n++) {
            int tg = targets[n];
            if (tg == CA_IGNORE_INDEX) {
                if (losses) losses[n] = 0.0f;
                continue;
            }
            const float *l = logits + (size_t)n * V;
            double ln = row_lse(l, V) - (double)l[tg];
            if (losses) losses[n] = (float)ln;
            acc += ln;
        }
        partial[it] = acc;
    }
    double total = 0.0;
    for (int i = 0; i < used; i++) total += partial[i];
    return total;
}

/* d loss_n / d logits_n = softmax(logits_n) − onehot(target_n); times `scale` (e.g. 1/count for a mean).
 * dlogits may alias logits: every element is read (max, sum) before its own write, and the write loop has
 * no cross-iteration dependence (hence omp simd without restrict). */
CA_AVX512_CLONE
void ca_cpu_crossentropy_backward(float *dlogits,                  /* (N, V) = */
                                  const float *logits,             /* (N, V) */
                                  const int32_t *restrict targets, /* (N) */
                                  float scale, int N, int V) {
    if (N <= 0 || V <= 0) return;
#pragma omp parallel for schedule(static) if ((size_t)N * V > CA_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *l = logits + (size_t)n * V;
        float *dl = dlogits + (size_t)n * V;
        int tg = targets[n];
        if (tg == CA_IGNORE_INDEX) {
            for (int j = 0; j < V; j++) dl[j] = 0.0f;
            continue;
        }
        double lse = row_lse(l, V);
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int j = 0; j < V; j++) mx = l[j] > mx ? l[j] : mx; /* same max as row_lse (a max is exact in any order) */
        /* softmax_j = exp(l_j − mx) / Σ = exp(l_j − mx) · exp(mx − lse) */
        float k = (float)exp((double)mx - lse) * scale;
#pragma omp simd
        for (int j = 0; j < V; j++) dl[j] = ca_expf(l[j] - mx) * k;
        dl[tg] -= scale;
    }
}
