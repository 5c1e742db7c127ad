/* Linear layer: out = inp · Wᵀ + b, W stored [OC, C] as in torch (lfm2.md: no biases in LFM2, but LoRA and
 * the vision projector use them). All the FLOPs go to (Open)BLAS sgemm; a single row goes to sgemv, which
 * is 5–14x faster than a 1-row sgemm in OpenBLAS (machine.md) and is what decoding hits. */
#include "captionaura/ca_blas.h"
#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

void ca_cpu_linear_forward(float *restrict out,          /* (N, OC) */
                           const float *restrict inp,    /* (N, C) */
                           const float *restrict weight, /* (OC, C) */
                           const float *restrict bias,   /* (OC) or NULL */
                           int N, int C, int OC) {
    if (N <= 0 || OC <= 0) return;
    float beta = 0.0f;
    if (bias) { /* preload the bias and let sgemm accumulate onto it (beta = 1) */
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) out[(size_t)n * OC + o] = bias[o];
        beta = 1.0f;
    }
    if (C <= 0) { /* empty reduction: BLAS would reject lda = 0 */
        if (!bias) ca_cpu_zero(out, (size_t)N * OC);
        return;
    }
    if (N == 1) { /* out (OC) = W (OC, C) · x (C); y is zeroed here because sgemv's beta = 0 may keep NaNs */
        if (!bias) ca_cpu_zero(out, (size_t)OC);
        ca_cblas_sgemv(CblasRowMajor, CblasNoTrans, OC, C, 1.0f, weight, C, inp, 1, 1.0f, out, 1);
    } else /* out (N, OC) = inp (N, C) · Wᵀ (C, OC) */
        ca_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, inp, C, weight, C, beta, out,
                       OC);
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
        float beta = accumulate ? 1.0f : 0.0f;
        if (N == 1) { /* dinp (C) = Wᵀ (C, OC) · dout (OC) */
            if (!accumulate) ca_cpu_zero(dinp, (size_t)C);
            ca_cblas_sgemv(CblasRowMajor, CblasTrans, OC, C, 1.0f, weight, C, dout, 1, 1.0f, dinp, 1);
        } else /* dinp (N, C) = dout (N, OC) · W (OC, C) */
            ca_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.0f, dout, OC, weight, C, beta,
                           dinp, C);
    }
    if (dweight && C > 0) /* dW (OC, C) += doutᵀ (OC, N) · inp (N, C) */
        ca_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight,
                       C);
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
