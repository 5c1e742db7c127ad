/* Federated aggregation kernels (ca_fed.h): validation, the streaming float64 weighted sum, Flower's server
 * optimisers, FedProx's proximal term, the robust coordinate-wise rules, Krum distances and DP clipping.
 * Loops over coordinates are OpenMP-parallel with static schedules and written so the compiler vectorises
 * them (no branches in the inner body, float→double conversions in registers). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "captionaura/ca_fed.h"

/* Small vectors are not worth waking the thread pool for. */
#define PAR_MIN 32768

/* ---- validation ---- */

size_t ca_fed_first_nonfinite(const float *x, size_t n) {
    enum { B = 4096 };
    size_t first = n, nblocks = (n + B - 1) / B;
    /* An IEEE float is NaN/Inf iff its exponent bits are all ones: an integer test. Each block ORs the
     * test branch-free (vectorised, one pass at memory speed); only a block that has a bad value is
     * rescanned for its first index. */
#pragma omp parallel for schedule(static) reduction(min : first) if (n > PAR_MIN)
    for (size_t b = 0; b < nblocks; b++) {
        size_t i0 = b * B, i1 = n - i0 < B ? n : i0 + B;
        uint32_t bad = 0;
        for (size_t i = i0; i < i1; i++) {
            uint32_t u;
            memcpy(&u, &x[i], 4);
            bad |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
        }
        if (!bad) continue;
        for (size_t i = i0; i < i1; i++) {
            uint32_t u;
            memcpy(&u, &x[i], 4);
            if ((u & 0x7f800000u) == 0x7f800000u) {
                if (i < first) first = i;
                break;
            }
        }
    }
    return first;
}

double ca_fed_l2norm(const float *x, const float *ref, size_t n) {
    double s = 0.0;
    if (ref) {
#pragma omp parallel for schedule(static) reduction(+ : s) if (n > PAR_MIN)
        for (size_t i = 0; i < n; i++) {
            double d = (double)x[i] - (double)ref[i];
            s += d * d;
        }
    } else {
#pragma omp parallel for schedule(static) reduction(+ : s) if (n > PAR_MIN)
        for (size_t i = 0; i < n; i++) s += (double)x[i] * (double)x[i];
    }
    return sqrt(s);
}

/* ---- streaming weighted sum ---- */

ca_status ca_fed_acc_init(ca_fed_acc *acc, size_t n) {
    memset(acc, 0, sizeof *acc);
    /* 64-byte aligned so the AVX loads of the accumulator never split cache lines. */
    size_t bytes = (n ? n : 1) * sizeof(double);
    bytes = (bytes + 63) & ~(size_t)63;
    acc->sum = aligned_alloc(64, bytes);
    if (!acc->sum) return ca_error(CA_ERR_NOMEM, "fed accumulator: cannot allocate %zu doubles", n);
    acc->n = n;
    ca_fed_acc_reset(acc);
    return CA_OK;
}

void ca_fed_acc_free(ca_fed_acc *acc) {
    free(acc->sum);
    acc->sum = NULL;
    acc->n = 0;
}

void ca_fed_acc_reset(ca_fed_acc *acc) {
    double *s = acc->sum;
    size_t n = acc->n;
    /* Parallel first touch: each thread zeroes the pages it will accumulate into later. */
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) s[i] = 0.0;
    acc->weight = 0.0;
    acc->count = 0;
}

void ca_fed_acc_add(ca_fed_acc *acc, const float *x, double w) {
    double *restrict s = acc->sum;
    size_t n = acc->n;
    /* Σ n_k x_k in float64: 20 bytes of memory traffic per coordinate (4 read, 8 read, 8 written). Weights are
     * applied per client rather than normalised first (Flower's aggregate_inplace) so the mean needs Σn_k only
     * at the end, which is what streaming needs. */
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) s[i] += w * (double)x[i];
    acc->weight += w;
    acc->count += 1;
}

#define CHECK_BLOCK 2048

size_t ca_fed_acc_add_checked(ca_fed_acc *acc, const float *x, double w) {
    double *restrict s = acc->sum;
    size_t n = acc->n, nblocks = (n + CHECK_BLOCK - 1) / CHECK_BLOCK;
    size_t first_bad = n; /* shared: lowest bad index found by any thread */
    /* Validation fused into the add: each 8 KB block of x is tested (branch-free OR of the exponent test),
     * then added while it is still in L1, so x is read from memory once (24 → 20 bytes per coordinate
     * compared with a separate validation pass). A bad block stops its thread; after the loop every thread
     * subtracts the blocks it already added. */
#pragma omp parallel if (n > PAR_MIN)
    {
        size_t lo = nblocks, hi = 0; /* blocks [lo, hi) added by this thread (static schedule: contiguous) */
        int stopped = 0;
#pragma omp for schedule(static)
        for (size_t b = 0; b < nblocks; b++) {
            if (stopped) continue;
            size_t i0 = b * CHECK_BLOCK, i1 = n - i0 < CHECK_BLOCK ? n : i0 + CHECK_BLOCK;
            uint32_t bad = 0;
            for (size_t i = i0; i < i1; i++) {
                uint32_t u;
                memcpy(&u, &x[i], 4);
                bad |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
            }
            if (bad) {
                size_t i = i0;
                for (; i < i1; i++) {
                    uint32_t u;
                    memcpy(&u, &x[i], 4);
                    if ((u & 0x7f800000u) == 0x7f800000u) break;
                }
#pragma omp critical(ca_fed_first_bad)
                if (i < first_bad) first_bad = i;
                stopped = 1;
                continue;
            }
            for (size_t i = i0; i < i1; i++) s[i] += w * (double)x[i];
            if (b < lo) lo = b;
            hi = b + 1;
        }
        /* implicit barrier: first_bad is final here */
        if (first_bad < n && lo < hi) {
            /* (s + w·x) − w·x restores s to within one float64 ulp (exactly in most coordinates); far below
             * what survives the float32 rounding of the mean. */
            size_t i0 = lo * CHECK_BLOCK, i1 = hi * CHECK_BLOCK < n ? hi * CHECK_BLOCK : n;
            for (size_t i = i0; i < i1; i++) s[i] -= w * (double)x[i];
        }
    }
    if (first_bad < n) return first_bad;
    acc->weight += w;
    acc->count += 1;
    return n;
}

#define MANY_BLOCK 2048

void ca_fed_acc_add_many(ca_fed_acc *acc, const float *const *xs, const double *ws, int G) {
    double *restrict s = acc->sum;
    size_t n = acc->n, nblocks = (n + MANY_BLOCK - 1) / MANY_BLOCK;
    /* G clients per pass: a 16 KB block of the accumulator stays in L1 while every client's block streams
     * through it, so the float64 sum is read and written once per G clients (4 + 16/G bytes per client and
     * coordinate instead of 20). Same per-coordinate order of additions as G single adds. Measured on the
     * 2-core EPYC VM this was written on: no faster than G single adds (which already run at the triad's
     * bandwidth, counting 20 B/coordinate), slower while the accumulator fits in L3 — the 16 interleaved
     * short streams defeat the hardware prefetcher. Kept for machines with more cores per memory channel. */
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (size_t b = 0; b < nblocks; b++) {
        size_t i0 = b * MANY_BLOCK, i1 = n - i0 < MANY_BLOCK ? n : i0 + MANY_BLOCK;
        for (int k = 0; k < G; k++) {
            const float *restrict x = xs[k];
            double w = ws[k];
            for (size_t i = i0; i < i1; i++) s[i] += w * (double)x[i];
        }
    }
    for (int k = 0; k < G; k++) acc->weight += ws[k];
    acc->count += G;
}

ca_status ca_fed_acc_mean(float *out, const ca_fed_acc *acc) {
    if (!(acc->weight > 0.0))
        return ca_error(CA_ERR_VALUE, "weighted mean: total weight is %g (no client or all weights zero)",
                        acc->weight);
    const double *restrict s = acc->sum;
    double w = acc->weight;
    size_t n = acc->n;
    /* a true division (not ·1/w): the float64 mean is then correctly rounded before the float32 rounding */
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = (float)(s[i] / w);
    return CA_OK;
}

void ca_fed_acc_sum(float *out, const ca_fed_acc *acc) {
    const double *restrict s = acc->sum;
    size_t n = acc->n;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = (float)s[i];
}

/* ---- server optimisers ---- */

ca_status ca_fed_fedopt_step(float *x, float *m, float *v, const ca_fed_acc *acc, ca_fedopt_kind kind,
                             double eta, double beta1, double beta2, double tau) {
    if (!(acc->weight > 0.0)) return ca_error(CA_ERR_VALUE, "FedOpt: total weight is %g", acc->weight);
    if (kind != CA_FEDOPT_ADAM && kind != CA_FEDOPT_YOGI && kind != CA_FEDOPT_ADAGRAD)
        return ca_error(CA_ERR_VALUE, "FedOpt: unknown kind %d", (int)kind);
    const double *restrict s = acc->sum;
    double w = acc->weight;
    size_t n = acc->n;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        /* Flower rounds x̄ to float32 before forming Δ; we do the same so the state matches to the ulp. */
        float mean = (float)(s[i] / w);
        double d = (double)mean - (double)x[i];
        double mi = beta1 * (double)m[i] + (1.0 - beta1) * d;
        double d2 = d * d, vi = (double)v[i];
        if (kind == CA_FEDOPT_ADAM) vi = beta2 * vi + (1.0 - beta2) * d2;
        else if (kind == CA_FEDOPT_YOGI) vi = vi - (1.0 - beta2) * d2 * (double)((vi > d2) - (vi < d2));
        else vi = vi + d2;
        m[i] = (float)mi;
        v[i] = (float)vi;
        /* Flower uses the float32 state it just stored. */
        x[i] = (float)((double)x[i] + eta * (double)m[i] / (sqrt((double)v[i]) + tau));
    }
    return CA_OK;
}

ca_status ca_fed_fedavgm_step(float *x, float *v, const ca_fed_acc *acc, double server_lr, double momentum,
                              int first_round) {
    if (!(acc->weight > 0.0)) return ca_error(CA_ERR_VALUE, "FedAvgM: total weight is %g", acc->weight);
    if (momentum != 0.0 && !v) return ca_error(CA_ERR_VALUE, "FedAvgM: momentum buffer required");
    const double *restrict s = acc->sum;
    double w = acc->weight;
    size_t n = acc->n;
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float mean = (float)(s[i] / w);
        float g = (float)((double)x[i] - (double)mean); /* pseudo-gradient x_t − x̄ (float32 like Flower) */
        if (momentum != 0.0) {
            v[i] = first_round ? g : (float)(momentum * (double)v[i] + (double)g);
            g = v[i];
        }
        x[i] = (float)((double)x[i] - server_lr * (double)g);
    }
    return CA_OK;
}

double ca_fed_proximal(float *grad, const float *w, const float *w_t, size_t n, double mu) {
    double s = 0.0;
    if (grad) {
#pragma omp parallel for schedule(static) reduction(+ : s) if (n > PAR_MIN)
        for (size_t i = 0; i < n; i++) {
            double d = (double)w[i] - (double)w_t[i];
            s += d * d;
            grad[i] += (float)(mu * d); /* ∂/∂w μ/2‖w − w_t‖² = μ(w − w_t) */
        }
    } else {
#pragma omp parallel for schedule(static) reduction(+ : s) if (n > PAR_MIN)
        for (size_t i = 0; i < n; i++) {
            double d = (double)w[i] - (double)w_t[i];
            s += d * d;
        }
    }
    return 0.5 * mu * s;
}

/* ---- robust coordinate-wise rules ---- */

/* Max-heap sift of a[r] within a[0..end). */
static void sift_down(double *a, int r, int end) {
    for (;;) {
        int c = 2 * r + 1;
        if (c >= end) return;
        if (c + 1 < end && a[c + 1] > a[c]) c++;
        if (a[r] >= a[c]) return;
        double t = a[r]; a[r] = a[c]; a[c] = t;
        r = c;
    }
}

/* Sorts a[0..K) ascending. K is the number of clients (tens to hundreds): insertion sort up to 32, else a
 * heap sort (no recursion, no allocation, O(K log K) worst case). */
static void sort_doubles(double *a, int K) {
    if (K <= 32) {
        for (int i = 1; i < K; i++) {
            double t = a[i];
            int j = i - 1;
            while (j >= 0 && a[j] > t) { a[j + 1] = a[j]; j--; }
            a[j + 1] = t;
        }
        return;
    }
    for (int r = K / 2 - 1; r >= 0; r--) sift_down(a, r, K);
    for (int end = K - 1; end > 0; end--) {
        double t = a[0]; a[0] = a[end]; a[end] = t;
        sift_down(a, 0, end);
    }
}

static double median_sorted(const double *a, int K) {
    return (K & 1) ? a[K / 2] : 0.5 * (a[K / 2 - 1] + a[K / 2]);
}

/* The `beta` values closest to the median m of sorted a form a contiguous window of the sorted order: grow
 * it from the middle, taking whichever neighbour is nearer to m (Flower's np.argpartition on |a − m|). */
static double mean_closest(const double *a, int K, int beta) {
    double m = median_sorted(a, K);
    int lo = K / 2, hi = K / 2; /* window [lo, hi) */
    double s = 0.0;
    for (int taken = 0; taken < beta; taken++) {
        int take_lo = hi >= K || (lo > 0 && fabs(a[lo - 1] - m) <= fabs(a[hi] - m));
        if (take_lo) s += a[--lo];
        else s += a[hi++];
    }
    return s / beta;
}

#define COORD_BLOCK 64

ca_status ca_fed_coordinate_rule(float *out, const float *const *xs, int K, size_t n, ca_fed_coord_rule rule,
                                 int param) {
    if (K < 1) return ca_error(CA_ERR_VALUE, "coordinate rule: need at least one vector, got %d", K);
    if (rule == CA_FED_TRIMMED && (param < 0 || 2 * param >= K))
        return ca_error(CA_ERR_VALUE, "trimmed mean: cutting %d from each end of %d values leaves none", param, K);
    if (rule == CA_FED_CLOSEST && (param < 1 || param > K))
        return ca_error(CA_ERR_VALUE, "closest-to-median mean: beta=%d outside [1, %d]", param, K);
    if (rule != CA_FED_MEDIAN && rule != CA_FED_TRIMMED && rule != CA_FED_CLOSEST)
        return ca_error(CA_ERR_VALUE, "coordinate rule: unknown rule %d", (int)rule);
    size_t nblocks = (n + COORD_BLOCK - 1) / COORD_BLOCK;
    int failed = 0;
#pragma omp parallel if (n > 4096)
    {
        /* One (COORD_BLOCK, K) tile per thread: gathering a block of coordinates from every client reads
         * each client's memory in cache-line runs instead of one strided float per client per coordinate. */
        double *tile = malloc((size_t)COORD_BLOCK * K * sizeof(double));
        if (!tile) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (size_t b = 0; b < nblocks; b++) {
            if (!tile) continue;
            size_t i0 = b * COORD_BLOCK, bn = n - i0 < COORD_BLOCK ? n - i0 : COORD_BLOCK;
            for (int k = 0; k < K; k++) {
                const float *xk = xs[k] + i0;
                for (size_t j = 0; j < bn; j++) tile[j * K + k] = (double)xk[j];
            }
            for (size_t j = 0; j < bn; j++) {
                double *a = tile + j * K;
                sort_doubles(a, K);
                double r;
                if (rule == CA_FED_MEDIAN) r = median_sorted(a, K);
                else if (rule == CA_FED_TRIMMED) {
                    double s = 0.0;
                    for (int k = param; k < K - param; k++) s += a[k];
                    r = s / (K - 2 * param);
                } else r = mean_closest(a, K, param);
                out[i0 + j] = (float)r;
            }
        }
        free(tile);
    }
    if (failed) return ca_error(CA_ERR_NOMEM, "coordinate rule: cannot allocate a %d x %d tile", COORD_BLOCK, K);
    return CA_OK;
}

#define DIST_BLOCK 2048

ca_status ca_fed_pairwise_sqdist(double *D, const float *const *xs, int K, size_t n) {
    if (K < 1) return ca_error(CA_ERR_VALUE, "pairwise distances: need at least one vector");
    size_t KK = (size_t)K * K;
    memset(D, 0, KK * sizeof(double));
    size_t nblocks = (n + DIST_BLOCK - 1) / DIST_BLOCK;
    int failed = 0;
#pragma omp parallel if (n > PAR_MIN)
    {
        double *part = calloc(KK, sizeof(double)); /* this thread's partial sums over its blocks */
        if (!part) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (size_t b = 0; b < nblocks; b++) {
            if (!part) continue;
            /* A block of every client stays in L2 (2048·4 B·K) while the K(K−1)/2 pairs sweep it. */
            size_t i0 = b * DIST_BLOCK, bn = n - i0 < DIST_BLOCK ? n - i0 : DIST_BLOCK;
            for (int p = 0; p < K; p++) {
                const float *xp = xs[p] + i0;
                for (int q = p + 1; q < K; q++) {
                    const float *xq = xs[q] + i0;
                    double s = 0.0;
                    for (size_t j = 0; j < bn; j++) {
                        double d = (double)xp[j] - (double)xq[j];
                        s += d * d;
                    }
                    part[(size_t)p * K + q] += s;
                }
            }
        }
        if (part) {
#pragma omp critical
            for (size_t i = 0; i < KK; i++) D[i] += part[i];
            free(part);
        }
    }
    if (failed) return ca_error(CA_ERR_NOMEM, "pairwise distances: cannot allocate %d x %d partials", K, K);
    for (int p = 0; p < K; p++)
        for (int q = p + 1; q < K; q++) D[(size_t)q * K + p] = D[(size_t)p * K + q];
    return CA_OK;
}

/* ---- differential privacy ---- */

void ca_fed_clip(float *out, const float *x, const float *ref, size_t n, double clip_norm, double *norm) {
    double u = ca_fed_l2norm(x, ref, n);
    if (norm) *norm = u;
    /* min(1, C/‖u‖): an update already inside the ball is passed through bit-exactly. */
    double scale = (u > clip_norm && u > 0.0) ? clip_norm / u : 1.0;
    if (ref) {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
        for (size_t i = 0; i < n; i++)
            out[i] = scale == 1.0 ? x[i] : (float)((double)ref[i] + scale * ((double)x[i] - (double)ref[i]));
    } else {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
        for (size_t i = 0; i < n; i++) out[i] = scale == 1.0 ? x[i] : (float)(scale * (double)x[i]);
    }
}

void ca_fed_add_noise(float *out, const double *noise, size_t n) {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = (float)((double)out[i] + noise[i]);
}

/* ---- STREAM triad (McCalpin): the memory-bandwidth yardstick the aggregation benchmark reports against ---- */
void ca_fed_stream_triad(double *a, const double *b, const double *c, double s, size_t n) {
#pragma omp parallel for schedule(static) if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) a[i] = b[i] + s * c[i];
}
