/* Linear layer: out = inp · Wᵀ + b, W stored [OC, C] as in torch (lfm2.md: no biases in LFM2, but LoRA and
 * the vision projector use them). All the FLOPs go to (Open)BLAS sgemm; a single row goes to sgemv, which
 * is 5–14x faster than a 1-row sgemm in OpenBLAS (machine.md) and is what decoding hits.
 *
 * Threading: when OpenBLAS runs single-threaded and OpenMP has several threads, the GEMM is split into
 * one block of output columns (or rows) per OpenMP thread, each a single-threaded sgemm. Then the whole core
 * runs on the one OpenMP thread pool. With OpenBLAS's own pthreads pool AND OpenMP, the two pools' idle
 * threads spin against each other on every switch between a GEMM and an OpenMP op, which measured here
 * ~9 ms per switch on 2 cores (a 256x1024 rmsnorm after an sgemm: 12 ms instead of 0.03 ms). When OpenBLAS
 * has several threads, it gets the whole GEMM as one call. */
#include "captionaura/ca_blas.h"
#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

/* Below this many multiply-adds a GEMM is not worth splitting. */
#define GEMM_SPLIT_MIN (1 << 20)

static int split_threads(double work) {
#ifdef _OPENMP
    if (work < GEMM_SPLIT_MIN || omp_in_parallel()) return 1;
    int nt = omp_get_max_threads();
    /* OpenBLAS keeps a fixed table of per-caller buffers (2·NUM_THREADS of its build, 64 or more for the
     * scipy-openblas wheels): stay well inside it */
    if (nt > 32) nt = 32;
    if (nt > 1 && ca_openblas_get_num_threads() == 1) return nt;
#endif
    (void)work;
    return 1;
}

/* Row-major C (M, Nc) = beta·C + alpha·op(A)·op(B), op(A) (M, K), op(B) (K, Nc); split over the larger of M and
 * Nc in 16-aligned blocks (one per thread). Each block is an independent sgemm on sub-matrices:
 * columns j0.. of C use B's rows j0.. (transB) or columns j0.. (not transB); rows i0.. of C use A's rows
 * i0.. (not transA) or columns i0.. (transA). */
void ca_cpu_gemm(int transA, int transB, int M, int Nc, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc) {
    enum CBLAS_TRANSPOSE ta = transA ? CblasTrans : CblasNoTrans, tb = transB ? CblasTrans : CblasNoTrans;
    int nt = split_threads((double)M * Nc * K);
    if (nt == 1) {
        ca_cblas_sgemm(CblasRowMajor, ta, tb, M, Nc, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int by_cols = Nc >= M;
    int D = by_cols ? Nc : M;
#pragma omp parallel num_threads(nt)
    {
        int d0, d1;
        ca_col_slice(D, CA_OMP_IT(), CA_OMP_NT(), &d0, &d1);
        if (d0 < d1) {
            if (by_cols)
                ca_cblas_sgemm(CblasRowMajor, ta, tb, M, d1 - d0, K, alpha, A, lda,
                               B + (transB ? (size_t)d0 * ldb : (size_t)d0), ldb, beta, C + d0, ldc);
            else
                ca_cblas_sgemm(CblasRowMajor, ta, tb, d1 - d0, Nc, K, alpha,
                               A + (transA ? (size_t)d0 : (size_t)d0 * lda), lda, B, ldb, beta,
                               C + (size_t)d0 * ldc, ldc);
        }
    }
}

/* y (M) += op(A)·x with A (M, K) row-major (transA = 0), or y (K) += Aᵀ·x (transA = 1); y must be
 * initialised (sgemv's beta = 0 may keep NaNs of an uninitialised y, so callers zero it). Split over y. */
static void gemv_acc(int transA, int M, int K, const float *A, const float *x, float *y) {
    int ny = transA ? K : M;
    int nt = split_threads((double)M * K * 4); /* memory-bound: splitting pays earlier */
    if (nt == 1) {
        ca_cblas_sgemv(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, M, K, 1.0f, A, K, x, 1, 1.0f, y, 1);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        int d0, d1;
        ca_col_slice(ny, CA_OMP_IT(), CA_OMP_NT(), &d0, &d1);
        if (d0 < d1) {
            if (transA) /* y[d0:d1] += A[:, d0:d1]ᵀ · x */
                ca_cblas_sgemv(CblasRowMajor, CblasTrans, M, d1 - d0, 1.0f, A + d0, K, x, 1, 1.0f, y + d0, 1);
            else /* y[d0:d1] += A[d0:d1, :] · x */
                ca_cblas_sgemv(CblasRowMajor, CblasNoTrans, d1 - d0, K, 1.0f, A + (size_t)d0 * K, K, x, 1, 1.0f,
                               y + d0, 1);
        }
    }
}

void ca_cpu_linear_forward(float *restrict out,          /* (N, OC) */
                           const float *restrict inp,    /* (N, C) */
                           const float *restrict weight, /* (OC, C) */
                           const float *restrict bias,   /* (OC) or NULL */
                           int N, int C, int OC) {
    if (N <= 0 || OC <= 0) return;
    float beta = 0.0f;
    if (bias) { /* preload the bias and let BLAS accumulate onto it (beta = 1) */
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) out[(size_t)n * OC + o] = bias[o];
        beta = 1.0f;
    }
    if (C <= 0) { /* empty reduction: BLAS would reject lda = 0 */
        if (!bias) ca_cpu_zero(out, (size_t)N * OC);
        return;
    }
    if (N == 1) { /* out (OC) = W (OC, C) · x (C) */
        if (!bias) ca_cpu_zero(out, (size_t)OC);
        gemv_acc(0, OC, C, weight, inp, out);
    } else { /* out (N, OC) = inp (N, C) · Wᵀ (C, OC) */
        ca_cpu_gemm(0, 1, N, OC, C, 1.0f, inp, C, weight, C, beta, out, OC);
    }
}

/* From out = inp·Wᵀ + b:  dinp = dout·W,  dW = doutᵀ·inp,  db = Σ_n dout[n]. */
void ca_cpu_linear_backward(float *restrict dinp,         /* (N, C) = or += (accumulate); NULL to skip */
                            float *restrict dweight,      /* (OC, C) += ; NULL to skip */
                            float *restrict dbias,        /* (OC) += ; NULL to skip */
                            const float *restrict dout,   /* (N, OC) */
                            const float *restrict inp,    /* (N, C) */
                            const float *restrict weight, /* (OC, C) */
                            int N, int C, int OC, int accumulate) {
    if (N <= 0) return;
    if (OC <= 0) { /* nothing flows back; a written dinp still has to be defined */
        if (dinp && !accumulate && C > 0) ca_cpu_zero(dinp, (size_t)N * C);
        return;
    }
    if (dinp && C > 0) {
        if (N == 1) { /* dinp (C) = Wᵀ (C, OC) · dout (OC) */
            if (!accumulate) ca_cpu_zero(dinp, (size_t)C);
            gemv_acc(1, OC, C, weight, dout, dinp);
        } else { /* dinp (N, C) = dout (N, OC) · W (OC, C) */
            ca_cpu_gemm(0, 0, N, C, OC, 1.0f, dout, OC, weight, C, accumulate ? 1.0f : 0.0f, dinp, C);
        }
    }
    if (dweight && C > 0) /* dW (OC, C) += doutᵀ (OC, N) · inp (N, C) */
        ca_cpu_gemm(1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
    if (dbias) { /* reduce over rows with threads splitting the channels: race-free and deterministic */
#pragma omp parallel if ((size_t)N * OC > CA_PAR_MIN)
        {
            int o0, o1;
            ca_col_slice(OC, CA_OMP_IT(), CA_OMP_NT(), &o0, &o1);
            for (int n = 0; n < N && o0 < o1; n++) {
                const float *restrict dy = dout + (size_t)n * OC;
                for (int o = o0; o < o1; o++) dbias[o] += dy[o];
            }
        }
    }
}
