/* LayerNorm of the SigLIP2 vision tower and the LFM2-VL projector (lfm2.md §4.3, §4.6), as torch's
 * nn.LayerNorm: y = (x − mean) · rstd · w + b,  rstd = 1/sqrt(var_biased + eps), statistics in fp32 over the
 * last dimension. The vision tower uses eps 1e-6, the projector 1e-5. */
#include <math.h>

#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

void ca_cpu_layernorm_forward(float *restrict out,          /* (N, C) */
                              float *restrict mean,         /* (N) cache */
                              float *restrict rstd,         /* (N) cache */
                              const float *restrict inp,    /* (N, C) */
                              const float *restrict weight, /* (C) */
                              const float *restrict bias,   /* (C) */
                              int N, int C, float eps) {
    if (N <= 0 || C <= 0) return;
#pragma omp parallel for schedule(static) if ((size_t)N * C > CA_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *restrict x = inp + (size_t)n * C;
        float *restrict y = out + (size_t)n * C;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int i = 0; i < C; i++) s += x[i];
        float m = s / (float)C;
        /* two-pass variance: (x − m)² summed, no E[x²] − m² cancellation */
        float v = 0.0f;
#pragma omp simd reduction(+ : v)
        for (int i = 0; i < C; i++) v += (x[i] - m) * (x[i] - m);
        float r = 1.0f / sqrtf(v / (float)C + eps);
        mean[n] = m;
        rstd[n] = r;
#pragma omp simd
        for (int i = 0; i < C; i++) y[i] = (x[i] - m) * r * weight[i] + bias[i];
    }
}

/* With x̂ = (x − m)·r and g = w ⊙ dy:
 *   dx = r · (g − mean(g) − x̂ · mean(g ⊙ x̂))      (ACCUMULATED: dinp is a residual-stream gradient)
 *   dw += Σ_n dy ⊙ x̂,   db += Σ_n dy                                                               */
void ca_cpu_layernorm_backward(float *restrict dinp,         /* (N, C) += */
                               float *restrict dweight,      /* (C) += ; NULL to skip */
                               float *restrict dbias,        /* (C) += ; NULL to skip */
                               const float *restrict dout,   /* (N, C) */
                               const float *restrict inp,    /* (N, C) */
                               const float *restrict weight, /* (C) */
                               const float *restrict mean,   /* (N) */
                               const float *restrict rstd,   /* (N) */
                               int N, int C) {
    if (N <= 0 || C <= 0) return;
#pragma omp parallel if ((size_t)N * C > CA_PAR_MIN)
    {
#pragma omp for schedule(static) nowait
        for (int n = 0; n < N; n++) {
            const float *restrict x = inp + (size_t)n * C;
            const float *restrict dy = dout + (size_t)n * C;
            float *restrict dx = dinp + (size_t)n * C;
            float m = mean[n], r = rstd[n];
            float sg = 0.0f, sgx = 0.0f; /* Σ g, Σ g·x̂ */
#pragma omp simd reduction(+ : sg, sgx)
            for (int i = 0; i < C; i++) {
                float g = weight[i] * dy[i];
                sg += g;
                sgx += g * (x[i] - m) * r;
            }
            float mg = sg / (float)C, mgx = sgx / (float)C;
#pragma omp simd
            for (int i = 0; i < C; i++) dx[i] += r * (weight[i] * dy[i] - mg - (x[i] - m) * r * mgx);
        }
        /* parameter gradients reduce over rows: split the channels instead (race-free, deterministic) */
        if (dweight || dbias) {
            int c0, c1;
            ca_col_slice(C, CA_OMP_IT(), CA_OMP_NT(), &c0, &c1);
            for (int n = 0; n < N && c0 < c1; n++) {
                const float *restrict x = inp + (size_t)n * C;
                const float *restrict dy = dout + (size_t)n * C;
                float m = mean[n], r = rstd[n];
                if (dweight)
                    for (int i = c0; i < c1; i++) dweight[i] += dy[i] * ((x[i] - m) * r);
                if (dbias)
                    for (int i = c0; i < c1; i++) dbias[i] += dy[i];
            }
        }
    }
}
