/* Antialiased bilinear resize of SigLIP2's learned position table (lfm2.md §4.3, gotcha 10), exactly
 * F.interpolate(mode="bilinear", align_corners=False, antialias=True): separable 1-D triangle filters whose
 * support widens with the downscale factor (PIL-style), computed per axis as PyTorch's CPU AA kernel does:
 *
 *   scale = S/T,  support = scale ≥ 1 ? scale : 1,  invs = scale ≥ 1 ? 1/scale : 1,  center = scale·(o + 0.5)
 *   lo = max((int)(center − support + 0.5), 0),  hi = min((int)(center + support + 0.5), S)
 *   w_j = max(0, 1 − |(j − center + 0.5)·invs|) for j ∈ [lo, hi), normalised to Σ w = 1
 *
 * For T ≥ S this is ordinary bilinear (align_corners=False, edge clamped); for T < S every input cell inside
 * the widened window contributes. out[y][x] = Σ_i Σ_j wy(y,i)·wx(x,j)·table[i][j]: the 2-D weight is the
 * product of the per-axis ones, so a same-size resize is the identity. Weights are evaluated in float64 (the
 * sub-ulp differences from PyTorch's float weights stay far below the fp32 output's rounding). */
#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

/* The taps [*lo, *lo + *n) of output index o and 1/Σw (0 when the window is empty). */
static double aa_window(int o, int S, int T, int *lo, int *n) {
    double scale = (double)S / (double)T;
    double support = scale >= 1.0 ? scale : 1.0, invs = scale >= 1.0 ? 1.0 / scale : 1.0;
    double center = scale * (o + 0.5);
    long a = (long)(center - support + 0.5), b = (long)(center + support + 0.5); /* C truncation, as PyTorch */
    if (a < 0) a = 0;
    if (b > S) b = S;
    *lo = (int)a;
    *n = b > a ? (int)(b - a) : 0;
    double total = 0.0;
    for (long j = a; j < b; j++) {
        double t = 1.0 - __builtin_fabs((j - center + 0.5) * invs);
        total += t > 0.0 ? t : 0.0;
    }
    return total > 0.0 ? 1.0 / total : 0.0;
}

static inline float aa_weight(int j, int o, int S, int T, double inv_total) {
    double scale = (double)S / (double)T;
    double invs = scale >= 1.0 ? 1.0 / scale : 1.0;
    double t = 1.0 - __builtin_fabs((j - scale * (o + 0.5) + 0.5) * invs);
    return t > 0.0 ? (float)(t * inv_total) : 0.0f;
}

void ca_cpu_posresize_forward(float *restrict out,         /* (Ho, Wo, C) */
                              const float *restrict table, /* (Hi, Wi, C) */
                              int Hi, int Wi, int Ho, int Wo, int C) {
    if (Ho <= 0 || Wo <= 0 || C <= 0) return;
    /* one task per output pixel: it owns its C outputs */
#pragma omp parallel for schedule(static) if ((size_t)Ho * Wo * C > CA_PAR_MIN / 4)
    for (int p = 0; p < Ho * Wo; p++) {
        int y = p / Wo, x = p % Wo;
        int ylo, yn, xlo, xn;
        double yinv = aa_window(y, Hi, Ho, &ylo, &yn);
        double xinv = aa_window(x, Wi, Wo, &xlo, &xn);
        float *restrict o = out + (size_t)p * C;
        for (int c = 0; c < C; c++) o[c] = 0.0f;
        for (int i = ylo; i < ylo + yn; i++) {
            float wy = aa_weight(i, y, Hi, Ho, yinv);
            if (wy == 0.0f) continue;
            for (int j = xlo; j < xlo + xn; j++) {
                float w = wy * aa_weight(j, x, Wi, Wo, xinv);
                if (w == 0.0f) continue;
                const float *restrict t = table + ((size_t)i * Wi + j) * C;
#pragma omp simd
                for (int c = 0; c < C; c++) o[c] += w * t[c];
            }
        }
    }
}

/* The transpose of the forward: dtable[i][j] += Σ_y Σ_x wy(y,i)·wx(x,j)·dout[y][x]. Threads split the
 * channels so that every thread owns its slice of every table row (race-free, deterministic). */
void ca_cpu_posresize_backward(float *restrict dtable,     /* (Hi, Wi, C) += */
                               const float *restrict dout, /* (Ho, Wo, C) */
                               int Hi, int Wi, int Ho, int Wo, int C) {
    if (Ho <= 0 || Wo <= 0 || C <= 0) return;
#pragma omp parallel if ((size_t)Ho * Wo * C > CA_PAR_MIN / 4)
    {
        int c0, c1;
        ca_col_slice(C, CA_OMP_IT(), CA_OMP_NT(), &c0, &c1);
        for (int p = 0; p < Ho * Wo && c0 < c1; p++) {
            int y = p / Wo, x = p % Wo;
            int ylo, yn, xlo, xn;
            double yinv = aa_window(y, Hi, Ho, &ylo, &yn);
            double xinv = aa_window(x, Wi, Wo, &xlo, &xn);
            const float *restrict g = dout + (size_t)p * C;
            for (int i = ylo; i < ylo + yn; i++) {
                float wy = aa_weight(i, y, Hi, Ho, yinv);
                if (wy == 0.0f) continue;
                for (int j = xlo; j < xlo + xn; j++) {
                    float w = wy * aa_weight(j, x, Wi, Wo, xinv);
                    if (w == 0.0f) continue;
                    float *restrict d = dtable + ((size_t)i * Wi + j) * C;
#pragma omp simd
                    for (int c = c0; c < c1; c++) d[c] += w * g[c];
                }
            }
        }
    }
}
