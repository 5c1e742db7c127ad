/* The gated short convolution of LFM2's conv blocks (lfm2.md §2.4), between in_proj and out_proj:
 *   z = [Bg | Cg | xv]  (in_proj output, chunked in that order),  u = Bg ⊙ xv,
 *   c[t,h] = Σ_{k<L} w[h,k] · u[t−(L−1)+k, h]   (PyTorch cross-correlation: w[h,L−1] hits the current token),
 *   y = Cg ⊙ c.
 * Work is tiled in blocks of HB channels so the depthwise taps can be held transposed ([k][channel]) on
 * the stack and the inner loops run contiguously over channels. */
#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

#define HB 64     /* channels per tile */
#define KMAX 16   /* taps held transposed on the stack; longer kernels index w directly (slower, same math) */

/* Tap k of channel h0+j: from the transposed tile (sk = HB, sj = 1) or straight from w (sk = 1, sj = L).
 * The kernels below are inlined with constant strides, so the common case vectorises. */
#define TAP(wp, sk, sj, k, j) (wp)[(size_t)(k) * (sk) + (size_t)(j) * (sj)]

static inline void conv_fwd_tile(float *restrict y, float *restrict u, float *restrict c,
                                 const float *restrict z, const float *restrict wp, int sk, int sj,
                                 const float *restrict state, int b, int h0, int hb, int T, int C, int L) {
    for (int t = 0; t < T; t++) {
        size_t row = (size_t)b * T + t;
        const float *restrict zr = z + row * 3 * C + h0;
        float *restrict ur = u + row * C + h0;
        float *restrict cr = c + row * C + h0;
        float *restrict yr = y + row * C + h0;
        for (int j = 0; j < hb; j++) ur[j] = zr[j] * zr[2 * C + j]; /* u = Bg ⊙ xv */
        for (int j = 0; j < hb; j++) cr[j] = 0.0f;
        for (int k = 0; k < L; k++) {
            int s = t - (L - 1) + k; /* source time of tap k */
            const float *restrict src;
            if (s >= 0)
                src = u + ((size_t)b * T + s) * C + h0;
            else if (state) /* state holds u at times −(L−1) … −1 */
                src = state + ((size_t)b * (L - 1) + (s + L - 1)) * C + h0;
            else
                continue; /* zero padding */
            for (int j = 0; j < hb; j++) cr[j] += TAP(wp, sk, sj, k, j) * src[j];
        }
        for (int j = 0; j < hb; j++) yr[j] = zr[C + j] * cr[j]; /* y = Cg ⊙ c */
    }
}

CA_AVX512_CLONE
void ca_cpu_shortconv_forward(float *restrict y,            /* (B, T, C) */
                              float *restrict u,            /* (B, T, C) cache */
                              float *restrict c,            /* (B, T, C) cache */
                              const float *restrict z,      /* (B, T, 3C) */
                              const float *restrict weight, /* (C, L) */
                              const float *restrict state,  /* (B, L-1, C) or NULL */
                              int B, int T, int C, int L) {
    if (B <= 0 || T <= 0 || C <= 0 || L <= 0) return;
    int nblk = (C + HB - 1) / HB;
    /* tiles are independent across (batch, channel block); time runs in order inside a tile because c[t]
     * reads u of earlier steps written by the same tile */
#pragma omp parallel for schedule(static) if ((size_t)B * T * C > CA_PAR_MIN)
    for (int task = 0; task < B * nblk; task++) {
        int b = task / nblk, h0 = (task % nblk) * HB;
        int hb = C - h0 < HB ? C - h0 : HB;
        if (L <= KMAX) {
            float wt[KMAX * HB]; /* wt[k][j] = w[h0+j, k] */
            for (int k = 0; k < L; k++)
                for (int j = 0; j < hb; j++) wt[k * HB + j] = weight[(size_t)(h0 + j) * L + k];
            conv_fwd_tile(y, u, c, z, wt, HB, 1, state, b, h0, hb, T, C, L);
        } else {
            conv_fwd_tile(y, u, c, z, weight + (size_t)h0 * L, 1, L, state, b, h0, hb, T, C, L);
        }
    }
}

/* Backward (state treated as zeros: training runs whole sequences). With dc = dy ⊙ Cg:
 *   dCg = dy ⊙ c;   du[s,h] = Σ_k w[h,k]·dc[s+(L−1)−k, h] (the transposed correlation);
 *   dBg = du ⊙ xv;  dxv = du ⊙ Bg;   dw[h,k] += Σ_{b,t} dc[t,h]·u[t−(L−1)+k, h].
 * Tiles split channels only (dw reduces over batch and time), so no two threads touch the same dw. */
static inline void conv_bwd_tile(float *restrict dz, float *restrict acc, int ak, int aj,
                                 const float *restrict dy, const float *restrict z, const float *restrict u,
                                 const float *restrict c, const float *restrict wp, int sk, int sj, int h0,
                                 int hb, int B, int T, int C, int L) {
    float du[HB];
    for (int b = 0; b < B; b++) {
        for (int s = 0; s < T; s++) {
            size_t srow = (size_t)b * T + s;
            const float *restrict us = u + srow * C + h0;
            for (int j = 0; j < hb; j++) du[j] = 0.0f;
            for (int k = 0; k < L; k++) {
                int t = s + (L - 1) - k; /* the output step where u[s] sits under tap k */
                if (t >= T) continue;
                size_t trow = (size_t)b * T + t;
                const float *restrict dyt = dy + trow * C + h0;
                const float *restrict cgt = z + trow * 3 * C + C + h0;
                for (int j = 0; j < hb; j++) du[j] += TAP(wp, sk, sj, k, j) * (dyt[j] * cgt[j]);
                if (acc)
                    for (int j = 0; j < hb; j++) TAP(acc, ak, aj, k, j) += (dyt[j] * cgt[j]) * us[j];
            }
            const float *restrict zs = z + srow * 3 * C + h0;
            const float *restrict dys = dy + srow * C + h0;
            const float *restrict cs = c + srow * C + h0;
            float *restrict dzs = dz + srow * 3 * C + h0;
            for (int j = 0; j < hb; j++) {
                dzs[j] = du[j] * zs[2 * C + j];  /* dBg */
                dzs[C + j] = dys[j] * cs[j];     /* dCg */
                dzs[2 * C + j] = du[j] * zs[j];  /* dxv */
            }
        }
    }
}

CA_AVX512_CLONE
void ca_cpu_shortconv_backward(float *restrict dz,           /* (B, T, 3C) = */
                               float *restrict dweight,      /* (C, L) += ; NULL to skip */
                               const float *restrict dy,     /* (B, T, C) */
                               const float *restrict z,      /* (B, T, 3C) */
                               const float *restrict u,      /* (B, T, C) */
                               const float *restrict c,      /* (B, T, C) */
                               const float *restrict weight, /* (C, L) */
                               int B, int T, int C, int L) {
    if (B <= 0 || T <= 0 || C <= 0 || L <= 0) return;
    int nblk = (C + HB - 1) / HB;
#pragma omp parallel for schedule(static) if ((size_t)B * T * C > CA_PAR_MIN)
    for (int blk = 0; blk < nblk; blk++) {
        int h0 = blk * HB;
        int hb = C - h0 < HB ? C - h0 : HB;
        if (L <= KMAX) {
            float wt[KMAX * HB], acc[KMAX * HB];
            for (int k = 0; k < L; k++)
                for (int j = 0; j < hb; j++) {
                    wt[k * HB + j] = weight[(size_t)(h0 + j) * L + k];
                    acc[k * HB + j] = 0.0f;
                }
            conv_bwd_tile(dz, dweight ? acc : NULL, HB, 1, dy, z, u, c, wt, HB, 1, h0, hb, B, T, C, L);
            if (dweight)
                for (int k = 0; k < L; k++)
                    for (int j = 0; j < hb; j++) dweight[(size_t)(h0 + j) * L + k] += acc[k * HB + j];
        } else { /* long kernels: accumulate straight into dweight (it is += anyway) */
            conv_bwd_tile(dz, dweight ? dweight + (size_t)h0 * L : NULL, 1, L, dy, z, u, c,
                          weight + (size_t)h0 * L, 1, L, h0, hb, B, T, C, L);
        }
    }
}
