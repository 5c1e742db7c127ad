/* Pixel unshuffle of the LFM2-VL projector (lfm2.md §4.5, gotcha 20): the (H, W) grid of C-vectors becomes
 * an (H/f, W/f) grid of f²C-vectors,
 *   out[i][j] = concat_{dy < f} concat_{dx < f} inp[f·i + dy][f·j + dx]
 * i.e. for f = 2 the channel blocks are top-left, top-right, bottom-left, bottom-right (transformers'
 * Lfm2VlMultiModalProjector.pixel_unshuffle: reshape/permute/reshape/permute gives dy outer, dx inner).
 * Output tokens are row-major over (i, j). A pure permutation: the backward is the inverse gather. */
#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

void ca_cpu_unshuffle_forward(float *restrict out,       /* (H/f · W/f, f·f·C) */
                              const float *restrict inp, /* (H · W, C) */
                              int H, int W, int C, int f) {
    if (H <= 0 || W <= 0 || C <= 0 || f <= 0) return;
    const int Ho = H / f, Wo = W / f;
#pragma omp parallel for schedule(static) if ((size_t)H * W * C > 4 * CA_PAR_MIN)
    for (int p = 0; p < Ho * Wo; p++) {
        int i = p / Wo, j = p % Wo;
        float *restrict o = out + (size_t)p * f * f * C;
        for (int dy = 0; dy < f; dy++)
            for (int dx = 0; dx < f; dx++)
                memcpy(o + (size_t)(dy * f + dx) * C, inp + ((size_t)(f * i + dy) * W + (f * j + dx)) * C,
                       (size_t)C * sizeof(float));
    }
}

void ca_cpu_unshuffle_backward(float *restrict dinp,       /* (H · W, C) = */
                               const float *restrict dout, /* (H/f · W/f, f·f·C) */
                               int H, int W, int C, int f) {
    if (H <= 0 || W <= 0 || C <= 0 || f <= 0) return;
    const int Ho = H / f, Wo = W / f;
#pragma omp parallel for schedule(static) if ((size_t)H * W * C > 4 * CA_PAR_MIN)
    for (int p = 0; p < Ho * Wo; p++) {
        int i = p / Wo, j = p % Wo;
        const float *restrict g = dout + (size_t)p * f * f * C;
        for (int dy = 0; dy < f; dy++)
            for (int dx = 0; dx < f; dx++)
                memcpy(dinp + ((size_t)(f * i + dy) * W + (f * j + dx)) * C, g + (size_t)(dy * f + dx) * C,
                       (size_t)C * sizeof(float));
    }
}
