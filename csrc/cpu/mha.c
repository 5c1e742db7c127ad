/* Bidirectional multi-head self-attention of one sequence through GEMMs (the SigLIP2 encoder, lfm2.md §4.3):
 *   S_h = q_h·k_hᵀ·scale,  P_h = softmax(S_h) (fp32, max-subtracted, every key visible),  o_h = P_h·v_h
 * with scale = 1/sqrt(HS) and heads the contiguous HS-slices of each row, as transformers' Siglip2Attention.
 * attention.c computes the same thing one dot product at a time (it handles causal masks, GQA and decoding);
 * a vision tile has ~1024 queries and keys, where per-head sgemm is several times faster. OpenBLAS runs
 * single-threaded (threads.c): the heads are spread over the OpenMP threads, one sgemm call each. */
#include <math.h>

#include "captionaura/ca_blas.h"
#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

void ca_cpu_mha_forward(float *restrict out,     /* (T, NH, HS) */
                        float *restrict att,     /* (NH, T, T) probabilities */
                        const float *restrict q, /* (T, NH, HS) */
                        const float *restrict k, /* (T, NH, HS) */
                        const float *restrict v, /* (T, NH, HS) */
                        int T, int NH, int HS) {
    if (T <= 0 || NH <= 0 || HS <= 0) return;
    const int ld = NH * HS;
    const float scale = 1.0f / sqrtf((float)HS);
#pragma omp parallel for schedule(dynamic, 1) if ((size_t)NH * T * T * HS > CA_PAR_MIN)
    for (int h = 0; h < NH; h++) {
        float *P = att + (size_t)h * T * T;
        /* S (T, T) = scale · q_h (T, HS) · k_hᵀ (HS, T) */
        ca_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, HS, scale, q + h * HS, ld, k + h * HS, ld, 0.0f,
                       P, T);
        for (int t = 0; t < T; t++) {
            float *restrict p = P + (size_t)t * T;
            float mx = p[0];
            for (int j = 1; j < T; j++) mx = p[j] > mx ? p[j] : mx;
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int j = 0; j < T; j++) {
                float e = ca_expf(p[j] - mx);
                p[j] = e;
                sum += e;
            }
            float inv = 1.0f / sum;
#pragma omp simd
            for (int j = 0; j < T; j++) p[j] *= inv;
        }
        /* o_h (T, HS) = P (T, T) · v_h (T, HS) */
        ca_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, HS, T, 1.0f, P, T, v + h * HS, ld, 0.0f,
                       out + h * HS, ld);
    }
}

/* dv_h = P_hᵀ·do_h;  dP = do_h·v_hᵀ;  dS = P ⊙ (dP − rowsum(P ⊙ dP))·scale;  dq_h = dS·k_h;  dk_h = dSᵀ·q_h.
 * dS of each head goes to its slice of `scratch` (the op itself never allocates). */
void ca_cpu_mha_backward(float *restrict dq,         /* (T, NH, HS) = */
                         float *restrict dk,         /* (T, NH, HS) = */
                         float *restrict dv,         /* (T, NH, HS) = */
                         float *restrict scratch,    /* (NH, T, T) */
                         const float *restrict dout, /* (T, NH, HS) */
                         const float *restrict q, const float *restrict k, const float *restrict v,
                         const float *restrict att,  /* (NH, T, T) */
                         int T, int NH, int HS) {
    if (T <= 0 || NH <= 0 || HS <= 0) return;
    const int ld = NH * HS;
    const float scale = 1.0f / sqrtf((float)HS);
#pragma omp parallel for schedule(dynamic, 1) if ((size_t)NH * T * T * HS > CA_PAR_MIN)
    for (int h = 0; h < NH; h++) {
        const float *P = att + (size_t)h * T * T;
        float *dS = scratch + (size_t)h * T * T;
        const int o = h * HS;
        ca_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, HS, T, 1.0f, P, T, dout + o, ld, 0.0f, dv + o, ld);
        ca_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, HS, 1.0f, dout + o, ld, v + o, ld, 0.0f, dS, T);
        for (int t = 0; t < T; t++) {
            const float *restrict p = P + (size_t)t * T;
            float *restrict d = dS + (size_t)t * T;
            float D = 0.0f;
#pragma omp simd reduction(+ : D)
            for (int j = 0; j < T; j++) D += p[j] * d[j];
#pragma omp simd
            for (int j = 0; j < T; j++) d[j] = p[j] * (d[j] - D) * scale;
        }
        ca_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, HS, T, 1.0f, dS, T, k + o, ld, 0.0f, dq + o, ld);
        ca_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, HS, T, 1.0f, dS, T, q + o, ld, 0.0f, dk + o, ld);
    }
}
