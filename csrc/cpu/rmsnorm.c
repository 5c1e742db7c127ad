/* RMSNorm (lfm2.md §2.3): y = w ⊙ (x · r),  r = 1/sqrt(mean(x²) + eps), plain w (not 1+w), fp32 throughout.
 * Also used per head over HS for the attention q/k norms (N = tokens·heads, C = HS). */
#include <math.h>

#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

CA_AVX512_CLONE
void ca_cpu_rmsnorm_forward(float *restrict out,          /* (N, C) */
                            float *restrict rstd,         /* (N) cache for the backward */
                            const float *restrict inp,    /* (N, C) */
                            const float *restrict weight, /* (C) */
                            int N, int C, float eps) {
    if (N <= 0 || C <= 0) return;
#pragma omp parallel for schedule(static) if ((size_t)N * C > CA_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *restrict x = inp + (size_t)n * C;
        float *restrict y = out + (size_t)n * C;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int i = 0; i < C; i++) ss += x[i] * x[i];
        float r = 1.0f / sqrtf(ss / (float)C + eps);
        rstd[n] = r;
        /* (x·r) first, then ·w: the same rounding order as transformers */
        for (int i = 0; i < C; i++) y[i] = weight[i] * (x[i] * r);
    }
}

/* With x̂ = x·r and g = w ⊙ dy:  ∂r/∂x_i = −r³x_i/C, hence
 *   dx = r · (g − x̂ · mean(g ⊙ x̂))            (ACCUMULATED: dinp is the residual-stream gradient)
 *   dw += Σ_n dy ⊙ x̂                             */
CA_AVX512_CLONE
void ca_cpu_rmsnorm_backward(float *restrict dinp,         /* (N, C) += */
                             float *restrict dweight,      /* (C) += ; NULL to skip */
                             const float *restrict dout,   /* (N, C) */
                             const float *restrict inp,    /* (N, C) */
                             const float *restrict weight, /* (C) */
                             const float *restrict rstd,   /* (N) */
                             int N, int C) {
    if (N <= 0 || C <= 0) return;
    int par = (size_t)N * C > CA_PAR_MIN;
#pragma omp parallel if (par)
    {
#pragma omp for schedule(static) nowait
        for (int n = 0; n < N; n++) {
            const float *restrict x = inp + (size_t)n * C;
            const float *restrict dy = dout + (size_t)n * C;
            float *restrict dx = dinp + (size_t)n * C;
            float r = rstd[n];
            float dot = 0.0f; /* Σ_i g_i x_i */
#pragma omp simd reduction(+ : dot)
            for (int i = 0; i < C; i++) dot += weight[i] * dy[i] * x[i];
            float k = dot * r * r / (float)C; /* mean(g ⊙ x̂) · r, so that dx = r·g − x·r·k */
            for (int i = 0; i < C; i++) dx[i] += r * (weight[i] * dy[i] - x[i] * k);
        }
        /* dweight reduces over rows: split channels instead (race-free, deterministic) */
        if (dweight) {
            int c0, c1;
            ca_col_slice(C, CA_OMP_IT(), CA_OMP_NT(), &c0, &c1);
            for (int n = 0; n < N && c0 < c1; n++) {
                const float *restrict x = inp + (size_t)n * C;
                const float *restrict dy = dout + (size_t)n * C;
                float r = rstd[n];
                for (int i = c0; i < c1; i++) dweight[i] += dy[i] * (x[i] * r);
            }
        }
    }
}
