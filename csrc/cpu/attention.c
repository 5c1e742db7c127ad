/* Scaled dot-product attention with grouped KV heads (lfm2.md §2.5), after q/k RMSNorm and RoPE:
 *   S = q·kᵀ/sqrt(HS) over the visible keys,  P = softmax(S) (fp32, max-subtracted),  o = P·v.
 * Query head h reads KV head h / (NH/NKV) (repeat_interleave). Query t sits at absolute position q_offset+t
 * and, when causal, sees keys j ≤ q_offset+t; key_mask[b, j] = 0 hides key j (right padding). A query that
 * sees no key gets P = 0 and o = 0 (HF's additive finfo.min mask would give a uniform average instead; such
 * rows are padding whose outputs are never used).
 * Layouts are the projections' natural (B, T, heads, HS): rows of one head are strided by heads·HS. */
#include <math.h>

#include "captionaura/ca_blas.h"
#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

/* Forward tiles: ATT_QT queries against ATT_KT keys (scores) or ATT_KT head dimensions (outputs). Every score is
 * the fmaf chain Σ_d q[d]·k[d] over d in order, times the scale, and every output the fmaf chain Σ_j P_j·v_j[d]
 * over j in order (keys a row cannot see hold P = 0 and add exact zeros), whatever the tile, the lengths or the
 * thread count: a chunk of queries at q_offset gets bit for bit the rows of one causal pass, so chunked prefill
 * equals one prefill. Keys are transposed a block at a time on the stack (HS · ATT_KB floats, 64 KiB) so that
 * ATT_KT scores of a query are one row of vector FMAs. */
#define ATT_QT 4
#define ATT_KT 16
#define ATT_KB_FLOATS 16384
#define ATT_QCHUNK 64 /* query rows per task */

/* s_i[j0 + jj] = scale · Σ_d q_i[d] · kt[d][jj] for i < nq, jj < nk (kt: the block's keys transposed) */
__attribute__((always_inline)) static inline void score_tile(float *const *s, const float *const *q, const float *kt,
                                                            int ldk, int HS, int j0, int nk, const int nq,
                                                            float scale) {
    float acc[ATT_QT][ATT_KT];
    for (int i = 0; i < nq; i++)
        for (int jj = 0; jj < ATT_KT; jj++) acc[i][jj] = 0.0f;
    for (int d = 0; d < HS; d++) {
        const float *restrict kr = kt + (size_t)d * ldk;
        for (int i = 0; i < nq; i++) {
            const float qd = q[i][d];
#pragma omp simd
            for (int jj = 0; jj < ATT_KT; jj++) acc[i][jj] = fmaf(qd, kr[jj], acc[i][jj]);
        }
    }
    for (int i = 0; i < nq; i++)
        for (int jj = 0; jj < nk; jj++) s[i][j0 + jj] = acc[i][jj] * scale;
}

/* o_i[d0 + dd] = Σ_{j < jn} p_i[j] · v_j[d0 + dd] for i < nq, dd < nd (v rows strided by ldv) */
__attribute__((always_inline)) static inline void output_tile(float *const *o, const float *const *p, const float *v,
                                                             size_t ldv, int jn, int d0, const int nd, const int nq) {
    float acc[ATT_QT][ATT_KT];
    for (int i = 0; i < nq; i++)
        for (int dd = 0; dd < ATT_KT; dd++) acc[i][dd] = 0.0f;
    for (int j = 0; j < jn; j++) {
        const float *restrict vr = v + (size_t)j * ldv + d0;
        for (int i = 0; i < nq; i++) {
            const float pj = p[i][j];
#pragma omp simd
            for (int dd = 0; dd < nd; dd++) acc[i][dd] = fmaf(pj, vr[dd], acc[i][dd]);
        }
    }
    for (int i = 0; i < nq; i++)
        for (int dd = 0; dd < nd; dd++) o[i][d0 + dd] = acc[i][dd];
}

/* the tiles with nq (and nd = ATT_KT) as constants, so that each instantiation keeps its accumulators in registers */
#define ATT_CASES(call) \
    switch (nq) {      \
    case 1: call(1); break; \
    case 2: call(2); break; \
    case 3: call(3); break; \
    default: call(4); break; \
    }

__attribute__((always_inline)) static inline void score_tile_n(float *const *s, const float *const *q,
                                                              const float *kt, int ldk, int HS, int j0, int nk, int nq,
                                                              float scale) {
#define ATT_SCORE(n) score_tile(s, q, kt, ldk, HS, j0, nk, n, scale)
    ATT_CASES(ATT_SCORE)
#undef ATT_SCORE
}

__attribute__((always_inline)) static inline void output_tile_n(float *const *o, const float *const *p,
                                                               const float *v, size_t ldv, int jn, int d0, int nd,
                                                               int nq) {
#define ATT_OUTPUT(n) output_tile(o, p, v, ldv, jn, d0, ATT_KT, n)
    if (nd == ATT_KT) {
        ATT_CASES(ATT_OUTPUT)
    } else {
        output_tile(o, p, v, ldv, jn, d0, nd, nq);
    }
#undef ATT_OUTPUT
}

/* keys a query can see: [0, limit) under the causal rule (all Tk otherwise), key_mask aside */
static inline int visible_limit(int causal, int q_offset, int t, int Tk) {
    long long lim = causal ? (long long)q_offset + t + 1 : Tk;
    return lim < 0 ? 0 : (lim > Tk ? Tk : (int)lim);
}

CA_AVX512_CLONE
void ca_cpu_attention_forward(float *restrict out,              /* (B, Tq, NH, HS) */
                              float *restrict att,              /* (B, NH, Tq, Tk) probabilities */
                              const float *restrict q,          /* (B, Tq, NH, HS) */
                              const float *restrict k,          /* (B, Tk, NKV, HS) */
                              const float *restrict v,          /* (B, Tk, NKV, HS) */
                              const int32_t *restrict key_mask, /* (B, Tk) or NULL */
                              int B, int Tq, int Tk, int NH, int NKV, int HS, int causal, int q_offset) {
    if (B <= 0 || Tq <= 0 || NH <= 0 || NKV <= 0 || HS <= 0) return;
    const float scale = 1.0f / sqrtf((float)HS);
    const int group = NH / NKV, nqc = (Tq + ATT_QCHUNK - 1) / ATT_QCHUNK;
    const size_t ldq = (size_t)NH * HS, ldkv = (size_t)NKV * HS;
    const int KB = HS <= ATT_KB_FLOATS / ATT_KT ? ATT_KB_FLOATS / HS / ATT_KT * ATT_KT : ATT_KT; /* keys a block */
    /* one task per (batch, query head, chunk of query rows): it owns those att rows and out columns */
#pragma omp parallel for schedule(dynamic, 1) if ((size_t)B * NH * Tq * (Tk > 0 ? Tk : 1) * HS > CA_PAR_MIN)
    for (int task = 0; task < B * NH * nqc; task++) {
        const int b = task / (NH * nqc), h = task / nqc % NH, g = h / group;
        const int t0 = task % nqc * ATT_QCHUNK, rows = Tq - t0 < ATT_QCHUNK ? Tq - t0 : ATT_QCHUNK;
        const int32_t *km = key_mask ? key_mask + (size_t)b * Tk : NULL;
        const float *kb = k + (size_t)b * Tk * ldkv + (size_t)g * HS, *vb = v + (size_t)b * Tk * ldkv + (size_t)g * HS;
        const int jn = visible_limit(causal, q_offset, t0 + rows - 1, Tk); /* keys any row of the chunk sees */
        float *P[ATT_QCHUNK];
        const float *Q[ATT_QCHUNK];
        for (int i = 0; i < rows; i++) {
            P[i] = att + (((size_t)b * NH + h) * Tq + t0 + i) * Tk;
            Q[i] = q + ((size_t)b * Tq + t0 + i) * ldq + (size_t)h * HS;
        }
        /* S = scale · q·kᵀ, a block of keys at a time */
        for (int j0 = 0; j0 < jn; j0 += KB) {
            const int nkb = jn - j0 < KB ? jn - j0 : KB, ldk = (nkb + ATT_KT - 1) / ATT_KT * ATT_KT;
            float kt[(size_t)HS * KB]; /* (HS, ldk): the block's keys transposed; 64 KiB for HS ≤ 1024 */
            for (int j = 0; j < ldk; j++)
                for (int d = 0; d < HS; d++) kt[(size_t)d * ldk + j] = j < nkb ? kb[(size_t)(j0 + j) * ldkv + d] : 0.0f;
            for (int i0 = 0; i0 < rows; i0 += ATT_QT) {
                const int nq = rows - i0 < ATT_QT ? rows - i0 : ATT_QT;
                const int lim = visible_limit(causal, q_offset, t0 + i0 + nq - 1, Tk) - j0; /* the tile's last row */
                for (int jj = 0; jj < (lim < nkb ? lim : nkb); jj += ATT_KT)
                    score_tile_n(P + i0, Q + i0, kt + jj, ldk, HS, j0 + jj, nkb - jj < ATT_KT ? nkb - jj : ATT_KT, nq,
                                 scale);
            }
        }
        /* P = softmax over the keys each row sees; 0 elsewhere */
        int any_visible = 0;
        for (int i = 0; i < rows; i++) {
            float *restrict p = P[i];
            const int jend = visible_limit(causal, q_offset, t0 + i, Tk);
            float mx = -INFINITY;
            for (int j = 0; j < jend; j++) {
                if (km && !km[j]) p[j] = -INFINITY;
                mx = p[j] > mx ? p[j] : mx;
            }
            for (int j = jend; j < Tk; j++) p[j] = 0.0f;
            if (mx == -INFINITY) { /* no visible key: P = 0, o = 0 */
                for (int j = 0; j < jend; j++) p[j] = 0.0f;
                continue;
            }
            any_visible = 1;
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int j = 0; j < jend; j++) {
                float e = p[j] == -INFINITY ? 0.0f : ca_expf(p[j] - mx);
                p[j] = e;
                sum += e;
            }
            float inv = 1.0f / sum; /* sum ≥ 1: the max term contributes exp(0) */
            for (int j = 0; j < jend; j++) p[j] *= inv;
        }
        /* o = P·v */
        float *O[ATT_QCHUNK];
        for (int i = 0; i < rows; i++) O[i] = out + ((size_t)b * Tq + t0 + i) * ldq + (size_t)h * HS;
        for (int i0 = 0; i0 < rows; i0 += ATT_QT) {
            const int nq = rows - i0 < ATT_QT ? rows - i0 : ATT_QT;
            const int lim = any_visible ? visible_limit(causal, q_offset, t0 + i0 + nq - 1, Tk) : 0;
            for (int d0 = 0; d0 < HS; d0 += ATT_KT)
                output_tile_n(O + i0, (const float *const *)P + i0, vb, ldkv, lim, d0,
                              HS - d0 < ATT_KT ? HS - d0 : ATT_KT, nq);
        }
    }
}

/* With dP = dO·vᵀ and D_t = Σ_j P_tj dP_tj (= dO_t·o_t), the softmax Jacobian gives dS = P ⊙ (dP − D), so
 *   dq = scale · dS·k,   dk = scale · Σ_{h∈group} dSᵀ·q_h,   dv = Σ_{h∈group} Pᵀ·dO_h,
 * per head through sgemm (OpenBLAS single-threaded, threads.c). One task per (batch, KV head) so the sums over a
 * group's query heads stay inside one thread; query rows go in blocks whose dS fits a 64 KiB stack buffer, and
 * each block stops at the last key any of its rows sees (P = 0 beyond: the causal triangle is not computed). */
#define ATT_DS_FLOATS 16384

void ca_cpu_attention_backward(float *restrict dq,         /* (B, Tq, NH, HS) = */
                               float *restrict dk,         /* (B, Tk, NKV, HS) = */
                               float *restrict dv,         /* (B, Tk, NKV, HS) = */
                               const float *restrict dout, /* (B, Tq, NH, HS) */
                               const float *restrict q, const float *restrict k, const float *restrict v,
                               const float *restrict att,  /* (B, NH, Tq, Tk) */
                               int B, int Tq, int Tk, int NH, int NKV, int HS) {
    if (B <= 0 || NH <= 0 || NKV <= 0 || HS <= 0 || Tq <= 0 || Tk <= 0) return;
    const float scale = 1.0f / sqrtf((float)HS);
    const int group = NH / NKV, ldq = NH * HS, ldkv = NKV * HS;
    const int QB = Tk <= ATT_DS_FLOATS ? ATT_DS_FLOATS / Tk : 1; /* query rows a block */
#pragma omp parallel for schedule(dynamic, 1) if ((size_t)B * NH * Tq * Tk * HS > CA_PAR_MIN)
    for (int bg = 0; bg < B * NKV; bg++) {
        const int b = bg / NKV, g = bg % NKV;
        const float *kb = k + (size_t)b * Tk * ldkv + (size_t)g * HS, *vb = v + (size_t)b * Tk * ldkv + (size_t)g * HS;
        float *dkb = dk + (size_t)b * Tk * ldkv + (size_t)g * HS, *dvb = dv + (size_t)b * Tk * ldkv + (size_t)g * HS;
        float dS[QB * Tk > ATT_DS_FLOATS ? QB * Tk : ATT_DS_FLOATS]; /* (rows, jn) */
        for (int j = 0; j < Tk; j++)
            for (int d = 0; d < HS; d++) dkb[(size_t)j * ldkv + d] = 0.0f, dvb[(size_t)j * ldkv + d] = 0.0f;
        for (int h = g * group; h < (g + 1) * group; h++) {
            for (int t0 = 0; t0 < Tq; t0 += QB) {
                const int rows = Tq - t0 < QB ? Tq - t0 : QB;
                const float *P = att + (((size_t)b * NH + h) * Tq + t0) * Tk;                     /* (rows, Tk) */
                const size_t r0 = ((size_t)b * Tq + t0) * ldq + (size_t)h * HS;
                const float *dO = dout + r0, *Qb = q + r0;                                           /* (rows, HS) */
                int jn = 0; /* keys [0, jn) hold every nonzero P of the block */
                for (int i = 0; i < rows; i++) {
                    const float *p = P + (size_t)i * Tk;
                    int j = Tk;
                    while (j > jn && p[j - 1] == 0.0f) j--;
                    jn = j;
                }
                if (jn == 0) {
                    for (int i = 0; i < rows; i++)
                        for (int d = 0; d < HS; d++) dq[r0 + (size_t)i * ldq + d] = 0.0f;
                    continue;
                }
                /* dv[:jn] += P_blkᵀ (jn, rows) · dO_blk (rows, HS) */
                ca_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, jn, HS, rows, 1.0f, P, Tk, dO, ldq, 1.0f, dvb,
                               ldkv);
                /* dP (rows, jn) = dO_blk · v[:jn]ᵀ, then dS = P ⊙ (dP − D) · scale in place */
                ca_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, jn, HS, 1.0f, dO, ldq, vb, ldkv, 0.0f, dS,
                               jn);
                ca_softmax_backward_rows(dS, (size_t)jn, P, (size_t)Tk, rows, jn, scale);
                /* dq_blk (rows, HS) = dS · k[:jn];  dk[:jn] += dSᵀ (jn, rows) · q_blk (rows, HS) */
                ca_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, HS, jn, 1.0f, dS, jn, kb, ldkv, 0.0f,
                               dq + r0, ldq);
                ca_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, jn, HS, rows, 1.0f, dS, jn, Qb, ldq, 1.0f, dkb,
                               ldkv);
            }
        }
    }
}
