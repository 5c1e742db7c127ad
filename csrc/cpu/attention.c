/* Scaled dot-product attention with grouped KV heads (lfm2.md §2.5), after q/k RMSNorm and RoPE:
 *   S = q·kᵀ/sqrt(HS) over the visible keys,  P = softmax(S) (fp32, max-subtracted),  o = P·v.
 * Query head h reads KV head h / (NH/NKV) (repeat_interleave). Query t sits at absolute position q_offset+t
 * and, when causal, sees keys j ≤ q_offset+t; key_mask[b, j] = 0 hides key j (right padding). A query that
 * sees no key gets P = 0 and o = 0 (HF's additive finfo.min mask would give a uniform average instead; such
 * rows are padding whose outputs are never used).
 * Layouts are the projections' natural (B, T, heads, HS): rows of one head are strided by heads·HS. */
#include <math.h>

#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

#define DP_KEEP 2048 /* 8 KiB of stack per thread in the backward */

static inline float dot_hs(const float *restrict a, const float *restrict b, int HS) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int d = 0; d < HS; d++) s += a[d] * b[d];
    return s;
}

void ca_cpu_attention_forward(float *restrict out,              /* (B, Tq, NH, HS) */
                              float *restrict att,              /* (B, NH, Tq, Tk) probabilities */
                              const float *restrict q,          /* (B, Tq, NH, HS) */
                              const float *restrict k,          /* (B, Tk, NKV, HS) */
                              const float *restrict v,          /* (B, Tk, NKV, HS) */
                              const int32_t *restrict key_mask, /* (B, Tk) or NULL */
                              int B, int Tq, int Tk, int NH, int NKV, int HS, int causal, int q_offset) {
    if (B <= 0 || Tq <= 0 || NH <= 0 || NKV <= 0 || HS <= 0) return;
    const float scale = 1.0f / sqrtf((float)HS);
    const int group = NH / NKV;
    /* one task per (batch, query head): it owns its att rows and its out columns */
#pragma omp parallel for schedule(static) if ((size_t)B * NH * Tq * (Tk > 0 ? Tk : 1) * HS > CA_PAR_MIN)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH, g = h / group;
        const int32_t *km = key_mask ? key_mask + (size_t)b * Tk : NULL;
        for (int t = 0; t < Tq; t++) {
            const float *restrict qt = q + (((size_t)b * Tq + t) * NH + h) * HS;
            float *restrict p = att + (((size_t)b * NH + h) * Tq + t) * Tk;
            float *restrict o = out + (((size_t)b * Tq + t) * NH + h) * HS;
            long long lim = causal ? (long long)q_offset + t + 1 : Tk; /* keys [0, jend) can be visible */
            int jend = lim < 0 ? 0 : (lim > Tk ? Tk : (int)lim);
            float mx = -INFINITY;
            for (int j = 0; j < jend; j++) {
                if (km && !km[j]) {
                    p[j] = -INFINITY;
                    continue;
                }
                float s = dot_hs(qt, k + (((size_t)b * Tk + j) * NKV + g) * HS, HS) * scale;
                p[j] = s;
                mx = s > mx ? s : mx;
            }
            for (int j = jend; j < Tk; j++) p[j] = 0.0f;
            for (int d = 0; d < HS; d++) o[d] = 0.0f;
            if (mx == -INFINITY) { /* no visible key */
                for (int j = 0; j < jend; j++) p[j] = 0.0f;
                continue;
            }
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int j = 0; j < jend; j++) {
                float e = p[j] == -INFINITY ? 0.0f : ca_expf(p[j] - mx);
                p[j] = e;
                sum += e;
            }
            float inv = 1.0f / sum; /* sum ≥ 1: the max term contributes exp(0) */
            for (int j = 0; j < jend; j++) p[j] *= inv;
            for (int j = 0; j < jend; j++) {
                float pj = p[j];
                if (pj == 0.0f) continue;
                const float *restrict vj = v + (((size_t)b * Tk + j) * NKV + g) * HS;
#pragma omp simd
                for (int d = 0; d < HS; d++) o[d] += pj * vj[d];
            }
        }
    }
}

/* With dP = dO·vᵀ and D_t = Σ_j P_tj dP_tj (= dO_t·o_t), the softmax Jacobian gives dS = P ⊙ (dP − D), so
 *   dq_t = scale · Σ_j dS_tj k_j,   dk_j = scale · Σ_{h∈group, t} dS_tj q_t,   dv_j = Σ_{h∈group, t} P_tj dO_t.
 * One task per (batch, KV head) so the sums over a group's query heads stay inside one thread (no races,
 * no heap scratch); dP of the first DP_KEEP keys is kept on the stack between the two passes over the keys,
 * beyond that it is recomputed (so any Tk works without a heap buffer). Keys with P = 0 (masked, or beyond
 * the causal limit) contribute nothing and are skipped. */
void ca_cpu_attention_backward(float *restrict dq,         /* (B, Tq, NH, HS) = */
                               float *restrict dk,         /* (B, Tk, NKV, HS) = */
                               float *restrict dv,         /* (B, Tk, NKV, HS) = */
                               const float *restrict dout, /* (B, Tq, NH, HS) */
                               const float *restrict q, const float *restrict k, const float *restrict v,
                               const float *restrict att,  /* (B, NH, Tq, Tk) */
                               int B, int Tq, int Tk, int NH, int NKV, int HS) {
    if (B <= 0 || NH <= 0 || NKV <= 0 || HS <= 0) return;
    const float scale = 1.0f / sqrtf((float)HS);
    const int group = NH / NKV;
#pragma omp parallel for schedule(static) if ((size_t)B * NH * Tq * (Tk > 0 ? Tk : 1) * HS > CA_PAR_MIN)
    for (int bg = 0; bg < B * NKV; bg++) {
        int b = bg / NKV, g = bg % NKV;
        float dpk[DP_KEEP]; /* dP of the first DP_KEEP keys of the current query; later keys are recomputed */
        for (int j = 0; j < Tk; j++) {
            size_t off = (((size_t)b * Tk + j) * NKV + g) * HS;
            for (int d = 0; d < HS; d++) dk[off + d] = 0.0f, dv[off + d] = 0.0f;
        }
        for (int h = g * group; h < (g + 1) * group; h++) {
            for (int t = 0; t < Tq; t++) {
                size_t qoff = (((size_t)b * Tq + t) * NH + h) * HS;
                const float *restrict p = att + (((size_t)b * NH + h) * Tq + t) * Tk;
                const float *restrict dot = dout + qoff;
                const float *restrict qt = q + qoff;
                float *restrict dqt = dq + qoff;
                for (int d = 0; d < HS; d++) dqt[d] = 0.0f;
                float D = 0.0f;
                for (int j = 0; j < Tk; j++) {
                    float dp = 0.0f;
                    if (p[j] != 0.0f) {
                        dp = dot_hs(dot, v + (((size_t)b * Tk + j) * NKV + g) * HS, HS);
                        D += p[j] * dp;
                    }
                    if (j < DP_KEEP) dpk[j] = dp;
                }
                for (int j = 0; j < Tk; j++) {
                    float pj = p[j];
                    if (pj == 0.0f) continue;
                    size_t kvoff = (((size_t)b * Tk + j) * NKV + g) * HS;
                    float dp = j < DP_KEEP ? dpk[j] : dot_hs(dot, v + kvoff, HS);
                    float ds = pj * (dp - D) * scale;
                    const float *restrict kj = k + kvoff;
                    float *restrict dkj = dk + kvoff;
                    float *restrict dvj = dv + kvoff;
#pragma omp simd
                    for (int d = 0; d < HS; d++) {
                        dqt[d] += ds * kj[d];
                        dkj[d] += ds * qt[d];
                        dvj[d] += pj * dot[d];
                    }
                }
            }
        }
    }
}
