/* Federated aggregation over flat float32 vectors (fed.c) and the mask arithmetic of secure aggregation
 * (secagg.c). Notation follows federated.md §A2: x_t = current global vector, x_k = client k's returned
 * vector, n_k = its weight (number of examples), K clients, n coordinates.
 *
 * Streaming: a ca_fed_acc holds Σ_k n_k·x_k in float64 and Σ_k n_k, so a server feeds one client vector at a
 * time and keeps one float64 accumulator whatever K (Flower keeps all K replies and sums in float32). The
 * robust rules (median, trimmed mean, Krum, Bulyan) need every vector: they take K pointers, never a stacked
 * copy. Everything is OpenMP across coordinates; per-coordinate arithmetic is in double.
 * Functions that can fail return ca_status (ca_error() holds the message); the others never fail because the
 * caller validated sizes. Nothing here prints, exits or aborts. */
#ifndef CA_FED_H
#define CA_FED_H

#include <stddef.h>
#include <stdint.h>

#include "captionaura/ca_status.h"

/* ---- validation ---- */

/* Index of the first NaN/Inf in x, or n when every value is finite. */
size_t ca_fed_first_nonfinite(const float *x, /* (n) */
                              size_t n);

/* ‖x‖₂ (global L2 norm, accumulated in double); ‖x − ref‖₂ when ref is not NULL. */
double ca_fed_l2norm(const float *x,   /* (n) */
                     const float *ref, /* (n) or NULL */
                     size_t n);

/* ---- streaming weighted sum (FedAvg and every rule whose server step is a weighted mean) ---- */
typedef struct ca_fed_acc {
    double *sum;   /* (n) Σ_k w_k·x_k */
    double weight; /* Σ_k w_k */
    size_t n;
    int count;     /* vectors added */
} ca_fed_acc;

ca_status ca_fed_acc_init(ca_fed_acc *acc, size_t n); /* zeroed; CA_ERR_NOMEM */
void ca_fed_acc_free(ca_fed_acc *acc);                /* safe on a zeroed or freed acc */
void ca_fed_acc_reset(ca_fed_acc *acc);
/* sum += w·x (w ≥ 0 and finite, x finite: the caller validated). */
void ca_fed_acc_add(ca_fed_acc *acc, const float *x /* (n) */, double w);
/* Validate and add in one read of x: returns n and adds w·x when x is finite; otherwise returns the index of
 * the first NaN/Inf and leaves the accumulator as it was (to within one float64 ulp per coordinate in the
 * blocks added before the bad value was seen; weight and count untouched). */
size_t ca_fed_acc_add_checked(ca_fed_acc *acc, const float *x /* (n) */, double w);
/* sum += Σ_{k<G} w_k·x_k in one pass over the accumulator (for vectors already in memory); bit-identical to
 * G calls of ca_fed_acc_add in the same order. */
void ca_fed_acc_add_many(ca_fed_acc *acc, const float *const *xs /* G pointers to (n) */,
                         const double *ws /* (G) */, int G);
/* out = sum / weight, the weighted mean p_k = n_k/Σn_j of federated.md §A2; CA_ERR_VALUE when Σw == 0. */
ca_status ca_fed_acc_mean(float *out /* (n) */, const ca_fed_acc *acc);
/* out = sum (no division), e.g. the secure-aggregation path or a caller that divides later. */
void ca_fed_acc_sum(float *out /* (n) */, const ca_fed_acc *acc);

/* ---- server optimisers on the pseudo-gradient Δ = x̄ − x_t, x̄ = acc mean (Flower fedopt.py family) ----
 * m ← β1·m + (1−β1)·Δ                                (Adagrad: β1 = 0 ⇒ m = Δ)
 * Adam:    v ← β2·v + (1−β2)·Δ²
 * Yogi:    v ← v − (1−β2)·Δ²·sign(v − Δ²)
 * Adagrad: v ← v + Δ²
 * x ← x + eta·m / (√v + τ)    (eta already bias-corrected by the caller for Adam: η·√(1−β2^{t+1})/(1−β1^{t+1}))
 * m, v start at zero (the caller zeroes them once); they are float32 like Flower's state. */
typedef enum { CA_FEDOPT_ADAM = 0, CA_FEDOPT_YOGI = 1, CA_FEDOPT_ADAGRAD = 2 } ca_fedopt_kind;
ca_status ca_fed_fedopt_step(float *x,              /* (n) x_t in, x_{t+1} out */
                             float *m,              /* (n) first moment, in/out */
                             float *v,              /* (n) second moment, in/out */
                             const ca_fed_acc *acc, /* (n) Σ n_k x_k, Σ n_k */
                             ca_fedopt_kind kind, double eta, double beta1, double beta2, double tau);

/* FedAvgM (Flower fedavgm.py, PyTorch SGD momentum convention, no Nesterov):
 * g = x_t − x̄;  momentum > 0: v = g on the first round, else v = μ·v + g, and g ← v;  x ← x_t − η_s·g.
 * `v` may be NULL when momentum == 0. */
ca_status ca_fed_fedavgm_step(float *x,              /* (n) in/out */
                              float *v,              /* (n) momentum buffer, in/out, or NULL */
                              const ca_fed_acc *acc, /* (n) */
                              double server_lr, double momentum, int first_round);

/* FedProx, client side: returns μ/2·‖w − w_t‖² (squared, as in the FedProx paper and Flower's baseline) and,
 * when grad is not NULL, adds its gradient μ·(w − w_t) to grad. */
double ca_fed_proximal(float *grad,       /* (n) += μ(w − w_t), or NULL */
                       const float *w,    /* (n) local weights */
                       const float *w_t,  /* (n) global weights received this round */
                       size_t n, double mu);

/* ---- robust rules over K vectors (unweighted, like Flower) ---- */
typedef enum {
    CA_FED_MEDIAN = 0,  /* coordinate-wise median; even K: mean of the two middle values (np.median) */
    CA_FED_TRIMMED = 1, /* sort K values, mean of sorted[param, K − param) (param = int(β·K), Flower) */
    CA_FED_CLOSEST = 2, /* Bulyan's last step: mean of the `param` values closest to the coordinate median */
} ca_fed_coord_rule;
ca_status ca_fed_coordinate_rule(float *out,              /* (n) */
                                 const float *const *xs,  /* K pointers to (n) */
                                 int K, size_t n, ca_fed_coord_rule rule, int param);

/* D[i][j] = ‖x_i − x_j‖² summed as Σ(x_i − x_j)² in double (not ‖x‖²+‖y‖²−2x·y, which cancels when the
 * vectors are close, the normal case late in training). Used by Krum, MultiKrum and Bulyan's selection. */
ca_status ca_fed_pairwise_sqdist(double *D,               /* (K, K) symmetric, zero diagonal */
                                 const float *const *xs,  /* K pointers to (n) */
                                 int K, size_t n);

/* ---- differential privacy ----
 * FlatClip (arXiv 1710.06963): u = x − ref; u ← u·min(1, C/‖u‖₂); out = ref + u. Returns ‖u‖₂ before clipping
 * in *norm. out may alias x. */
void ca_fed_clip(float *out,        /* (n) */
                 const float *x,    /* (n) */
                 const float *ref,  /* (n) reference (current global) or NULL for ref = 0 */
                 size_t n, double clip_norm, double *norm);

/* out += noise (float64 noise drawn by the caller, e.g. N(0, σ²) with σ = z·C/m). */
void ca_fed_add_noise(float *out, const double *noise, size_t n);

/* STREAM triad a = b + s·c (24 bytes per element, OpenMP like the kernels above): benchmarks report the
 * aggregation bandwidth as a fraction of it, measured in the same run. */
void ca_fed_stream_triad(double *a, const double *b, const double *c, double s, size_t n);

/* ---- secure aggregation mask arithmetic (secagg.c), all modulo 2^bits, 1 ≤ bits ≤ 32 ----
 * Quantisation with clipping range c and Q levels: step Δ = 2c/(Q−1),
 *   q = ⌊(clip(s·x, −c, c) + c)/Δ + u⌋,  u ∈ [0,1) from `rnd` (stochastic, unbiased) or u = 1/2 (nearest)
 * so q ∈ [0, Q−1]. The sum of K quantised vectors dequantises as Σ s·x ≈ S·Δ − K·c while K·(Q−1) < 2^bits. */
ca_status ca_secagg_quantize(uint32_t *q,          /* (n) out */
                             const float *x,       /* (n) */
                             const uint32_t *rnd,  /* (n) uniform 32-bit words or NULL (round to nearest) */
                             size_t n, double scale, double clip, uint64_t levels, int bits);
/* y = y + sign·mask mod 2^bits (sign = +1 or −1): adding a party's masks, removing them on the server, or
 * summing masked vectors (mask = another client's y). */
ca_status ca_secagg_add_mod(uint32_t *y, const uint32_t *mask, size_t n, int sign, int bits);
/* out = S·Δ − K·c, S read as an integer in [0, 2^bits). */
ca_status ca_secagg_dequantize(float *out, const uint32_t *sum, size_t n, int num_clients, double clip,
                               uint64_t levels, int bits);

#endif
