/* Bidirectional multi-head self-attention of one sequence through GEMMs (the SigLIP2 encoder, lfm2.md §4.3):
 *   S_h = q_h·k_hᵀ·scale,  P_h = softmax(S_h) (fp32, max-subtracted, every key visible),  o_h = P_h·v_h
 * with scale = 1/sqrt(HS) and heads the contiguous HS-slices of each row, as transformers' Siglip2Attention.
 * attention.c computes the same thing one dot product at a time (it handles causal masks, GQA and decoding);
 * a vision tile has ~1024 queries and keys, where per-head sgemm is several times faster. OpenBLAS runs
 * single-threaded (threads.c): the heads are spread over the OpenMP threads, one sgemm call each. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "captionaura/ca_blas.h"
#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

/* Query rows per block: a block's scores (QB x T floats, 1 MB at T = 1024) stay in L2 between the score GEMM,
 * the softmax and the P·v GEMM, instead of streaming the whole (T, T) matrix through memory three times. */
#define QB 256

static void softmax_rows(float *restrict P, int rows, int T) {
    for (int t = 0; t < rows; t++) {
        float *restrict p = P + (size_t)t * T;
        float mx = p[0];
#pragma omp simd reduction(max : mx) /* without the pragma GCC keeps a NaN-exact scalar loop */
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
}

void ca_cpu_mha_forward(float *restrict out,     /* (T, NH, HS) */
                        float *restrict att,     /* (NH, T, T) probabilities */
                        const float *restrict q, /* (T, NH, HS) */
                        const float *restrict k, /* (T, NH, HS) */
                        const float *restrict v, /* (T, NH, HS) */
                        int T, int NH, int HS) {
    if (T <= 0 || NH <= 0 || HS <= 0) return;
    const int ld = NH * HS, nb = (T + QB - 1) / QB;
    const float scale = 1.0f / sqrtf((float)HS);
    /* one task per (head, block of query rows): it owns those rows of att and out */
#pragma omp parallel for schedule(dynamic, 1) if ((size_t)NH * T * T * HS > CA_PAR_MIN)
    for (int task = 0; task < NH * nb; task++) {
        int h = task / nb, t0 = (task % nb) * QB, rows = T - t0 < QB ? T - t0 : QB;
        float *P = att + ((size_t)h * T + t0) * T;
        /* S (rows, T) = scale · q_h[t0:] (rows, HS) · k_hᵀ (HS, T) */
        ca_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, T, HS, scale, q + (size_t)t0 * ld + h * HS, ld,
                       k + h * HS, ld, 0.0f, P, T);
        softmax_rows(P, rows, T);
        /* o_h[t0:] (rows, HS) = P (rows, T) · v_h (T, HS) */
        ca_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, HS, T, 1.0f, P, T, v + h * HS, ld, 0.0f,
                       out + (size_t)t0 * ld + h * HS, ld);
    }
}

/* The same attention with bf16 GEMMs (a bf16 tower): S_h = bf16(q_h·scale)·bf16(k_h)ᵀ and o_h = bf16(P_h)·bf16(v_h)
 * with fp32 sums, the softmax and the stored probabilities fp32. Returns −1 (nothing written) without
 * AVX512-BF16 or when a workspace cannot be allocated: the caller runs the fp32 op. */
int ca_cpu_mha_bf16_forward(float *restrict out,     /* (T, NH, HS) */
                            float *restrict att,     /* (NH, T, T) probabilities */
                            const float *restrict q, /* (T, NH, HS) */
                            const float *restrict k, /* (T, NH, HS) */
                            const float *restrict v, /* (T, NH, HS) */
                            int T, int NH, int HS) {
    if (T <= 0 || NH <= 0 || HS <= 0) return 0;
    if (strcmp(ca_cpu_lowp_isa(), "avx512") != 0 || HS % 2) return -1;
    const int ld = NH * HS, nb = (T + QB - 1) / QB;
    const size_t ldp = 2 * (size_t)((T + 1) / 2) + 32; /* bf16(P) rows: even, off a power-of-two stride */
    const float scale = 1.0f / sqrtf((float)HS);
    /* bf16(k) transposed per head, kt (NH, HS, ldt), for S = q·kᵀ as a row-major GEMM with vector stores; and
     * bf16(v) (T, NH, HS) */
    const size_t ldt = (size_t)T + 32;
    uint16_t *kt = malloc(((size_t)NH * HS * ldt + (size_t)T * ld) * sizeof(uint16_t)), *vb = kt + (size_t)NH * HS * ldt;
    if (!kt) return -1;
    ca_cpu_bf16_rows(vb, (size_t)ld, v, T, ld);
#pragma omp parallel for schedule(static) if ((size_t)T * ld > CA_PAR_MIN)
    for (int c = 0; c < ld; c++) /* c = h·HS + d: row c of kt */
        for (int t = 0; t < T; t++) kt[(size_t)c * ldt + t] = ca_bf16_roundf(k[(size_t)t * ld + c]);
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) if ((size_t)NH * T * T * HS > CA_PAR_MIN) reduction(| : failed)
    for (int task = 0; task < NH * nb; task++) {
        int h = task / nb, t0 = (task % nb) * QB, rows = T - t0 < QB ? T - t0 : QB;
        float *P = att + ((size_t)h * T + t0) * T;
        uint16_t *qb = malloc((size_t)rows * HS * sizeof(uint16_t));  /* (rows, HS) bf16(q_h[t0:]·scale) */
        uint16_t *pb = malloc((size_t)rows * ldp * sizeof(uint16_t)); /* (rows, ldp) bf16(P) */
        if (!qb || !pb) {
            failed = 1;
        } else {
            for (int t = 0; t < rows; t++)
                for (int d = 0; d < HS; d++)
                    qb[(size_t)t * HS + d] = ca_bf16_roundf(q[(size_t)(t0 + t) * ld + h * HS + d] * scale);
            failed |= ca_cpu_bf16_gemm_nn(P, (size_t)T, qb, (size_t)HS, kt + (size_t)h * HS * ldt, ldt, rows, T, HS) != 0;
            softmax_rows(P, rows, T);
            ca_cpu_bf16_rows(pb, ldp, P, rows, T);
            failed |= ca_cpu_bf16_gemm_nn(out + (size_t)t0 * ld + h * HS, (size_t)ld, pb, ldp, vb + h * HS, (size_t)ld,
                                          rows, HS, T) != 0;
        }
        free(qb);
        free(pb);
    }
    free(kt);
    return failed ? -1 : 0;
}

/* dv_h = P_hᵀ·do_h;  dP = do_h·v_hᵀ;  dS = P ⊙ (dP − rowsum(P ⊙ dP))·scale;  dq_h = dS·k_h;  dk_h = dSᵀ·q_h.
 * One task per head (dk_h and dv_h sum over every query row), query rows in blocks of QB so that each
 * block's dS stays in cache; dS goes to the head's slice of `scratch` (the op itself never allocates). */
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
        const int o = h * HS;
        for (int t0 = 0; t0 < T; t0 += QB) {
            int rows = T - t0 < QB ? T - t0 : QB;
            const float *P = att + ((size_t)h * T + t0) * T;
            float *dS = scratch + ((size_t)h * T + t0) * T;
            const size_t r0 = (size_t)t0 * ld;
            float beta = t0 == 0 ? 0.0f : 1.0f; /* dk_h, dv_h: written by the first block, summed after */
            /* dv_h (T, HS) += P_blkᵀ (T, rows) · do_blk (rows, HS) */
            ca_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, HS, rows, 1.0f, P, T, dout + r0 + o, ld, beta,
                           dv + o, ld);
            /* dP (rows, T) = do_blk · v_hᵀ */
            ca_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, T, HS, 1.0f, dout + r0 + o, ld, v + o, ld,
                           0.0f, dS, T);
            ca_softmax_backward_rows(dS, (size_t)T, P, (size_t)T, rows, T, scale);
            /* dq_blk (rows, HS) = dS · k_h;  dk_h (T, HS) += dSᵀ (T, rows) · q_blk (rows, HS) */
            ca_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, HS, T, 1.0f, dS, T, k + o, ld, 0.0f,
                           dq + r0 + o, ld);
            ca_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, HS, rows, 1.0f, dS, T, q + r0 + o, ld, beta,
                           dk + o, ld);
        }
    }
}
