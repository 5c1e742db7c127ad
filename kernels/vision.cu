/* The vision tower's data-movement ops: pixel unshuffle (lfm2.md §4.5, csrc/cpu/unshuffle.c) and the
 * antialiased bilinear resize of the position table (§4.3, csrc/cpu/posresize.c: F.interpolate(mode="bilinear",
 * align_corners=False, antialias=True), separable triangle filters widened by the downscale factor, weights in
 * float64 as on the CPU). */
#include "cuda_internal.cuh"

/* out[i·(W/f) + j][(dy·f + dx)·C + c] = inp[(f·i + dy)·W + f·j + dx][c]; one thread per output element.
 * forward copies inp → out, backward the inverse gather out → inp (a permutation: dinp is written). */
__global__ void unshuffle_kernel(float *out, float *inp, int H, int W, int C, int f, bool forward) {
    const int Wo = W / f;
    const size_t total = (size_t)(H / f) * Wo * f * f * C;
    CA_GRID_STRIDE(o, total) {
        const size_t p = o / ((size_t)f * f * C);
        const int rem = (int)(o % ((size_t)f * f * C));
        const int blk = rem / C, c = rem % C, dy = blk / f, dx = blk % f;
        const int i = (int)(p / Wo), j = (int)(p % Wo);
        const size_t src = ((size_t)(f * i + dy) * W + (f * j + dx)) * C + c;
        if (forward) out[o] = inp[src];
        else inp[src] = out[o];
    }
}

extern "C" void ca_cuda_unshuffle_forward(float *out, const float *inp, int H, int W, int C, int f) {
    if (H <= 0 || W <= 0 || C <= 0 || f <= 0 || ca_cuda_failed()) return;
    size_t total = (size_t)(H / f) * (W / f) * f * f * C;
    if (!total) return;
    unshuffle_kernel<<<ca_blocks(total, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(out, (float *)inp, H, W, C, f,
                                                                                   true);
    CA_CUDA_LAUNCHED("unshuffle_forward");
}

extern "C" void ca_cuda_unshuffle_backward(float *dinp, const float *dout, int H, int W, int C, int f) {
    if (H <= 0 || W <= 0 || C <= 0 || f <= 0 || ca_cuda_failed()) return;
    size_t total = (size_t)(H / f) * (W / f) * f * f * C;
    if (!total) return;
    unshuffle_kernel<<<ca_blocks(total, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>((float *)dout, dinp, H, W, C, f,
                                                                                   false);
    CA_CUDA_LAUNCHED("unshuffle_backward");
}

/* The taps [*lo, *lo + *n) of output index o (an axis of S inputs resized to T) and 1/Σw (0 when empty):
 *   scale = S/T,  support = max(scale, 1),  invs = scale ≥ 1 ? 1/scale : 1,  center = scale·(o + 0.5)
 *   lo = max((int)(center − support + 0.5), 0),  hi = min((int)(center + support + 0.5), S)
 *   w_j = max(0, 1 − |(j − center + 0.5)·invs|) */
__device__ double aa_window(int o, int S, int T, int *lo, int *n) {
    double scale = (double)S / (double)T;
    double support = scale >= 1.0 ? scale : 1.0, invs = scale >= 1.0 ? 1.0 / scale : 1.0;
    double center = scale * (o + 0.5);
    long a = (long)(center - support + 0.5), b = (long)(center + support + 0.5);
    if (a < 0) a = 0;
    if (b > S) b = S;
    *lo = (int)a;
    *n = b > a ? (int)(b - a) : 0;
    double total = 0.0;
    for (long j = a; j < b; j++) {
        double t = 1.0 - fabs((j - center + 0.5) * invs);
        total += t > 0.0 ? t : 0.0;
    }
    return total > 0.0 ? 1.0 / total : 0.0;
}

__device__ float aa_weight(int j, int o, int S, int T, double inv_total) {
    double scale = (double)S / (double)T;
    double invs = scale >= 1.0 ? 1.0 / scale : 1.0;
    double t = 1.0 - fabs((j - scale * (o + 0.5) + 0.5) * invs);
    return t > 0.0 ? (float)(t * inv_total) : 0.0f;
}

/* forward: out[y][x][c] = Σ_i Σ_j wy(y,i)·wx(x,j)·table[i][j][c], one thread per output element;
 * backward: dtable[i][j][c] += the same weight · dout[y][x][c], scattered with atomicAdd. */
__global__ void posresize_kernel(float *out, float *table, int Hi, int Wi, int Ho, int Wo, int C, bool forward) {
    const size_t total = (size_t)Ho * Wo * C;
    CA_GRID_STRIDE(e, total) {
        const int c = (int)(e % C);
        const size_t p = e / C;
        const int y = (int)(p / Wo), x = (int)(p % Wo);
        int ylo, yn, xlo, xn;
        const double yinv = aa_window(y, Hi, Ho, &ylo, &yn);
        const double xinv = aa_window(x, Wi, Wo, &xlo, &xn);
        float acc = 0.0f;
        const float g = forward ? 0.0f : out[e];
        for (int i = ylo; i < ylo + yn; i++) {
            const float wy = aa_weight(i, y, Hi, Ho, yinv);
            if (wy == 0.0f) continue;
            for (int j = xlo; j < xlo + xn; j++) {
                const float w = wy * aa_weight(j, x, Wi, Wo, xinv);
                if (w == 0.0f) continue;
                float *t = table + ((size_t)i * Wi + j) * C + c;
                if (forward) acc += w * *t;
                else atomicAdd(t, w * g);
            }
        }
        if (forward) out[e] = acc;
    }
}

extern "C" void ca_cuda_posresize_forward(float *out, const float *table, int Hi, int Wi, int Ho, int Wo, int C) {
    if (Ho <= 0 || Wo <= 0 || C <= 0 || ca_cuda_failed()) return;
    size_t total = (size_t)Ho * Wo * C;
    posresize_kernel<<<ca_blocks(total, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(out, (float *)table, Hi, Wi, Ho,
                                                                                   Wo, C, true);
    CA_CUDA_LAUNCHED("posresize_forward");
}

extern "C" void ca_cuda_posresize_backward(float *dtable, const float *dout, int Hi, int Wi, int Ho, int Wo, int C) {
    if (Ho <= 0 || Wo <= 0 || C <= 0 || ca_cuda_failed()) return;
    size_t total = (size_t)Ho * Wo * C;
    posresize_kernel<<<ca_blocks(total, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>((float *)dout, dtable, Hi, Wi, Ho,
                                                                                   Wo, C, false);
    CA_CUDA_LAUNCHED("posresize_backward");
}
