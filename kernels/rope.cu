/* NEOX rotary position embedding (lfm2.md §2.5), as csrc/cpu/rope.c: element i pairs with i + HS/2,
 *   inv_freq_i = 1 / theta^(2i/HS),  a = pos · inv_freq_i  (all fp32, the order transformers uses)
 *   x'[i] = x[i]·cos a − x[i+HS/2]·sin a,   x'[i+HS/2] = x[i+HS/2]·cos a + x[i]·sin a.
 * One thread per (token, head, pair); it reads its pair before writing it, so out may alias inp. The backward
 * rotates by −a (the transpose of a rotation). */
#include "cuda_internal.cuh"

__global__ void rope_kernel(float *out, const float *inp, const int32_t *pos, int N, int NH, int HS, float theta,
                            float sign) {
    const int half = HS / 2;
    const size_t total = (size_t)N * NH * half;
    CA_GRID_STRIDE(t, total) {
        const int i = (int)(t % half);
        const size_t nh = t / half; /* = n·NH + h */
        const size_t n = nh / NH;
        const float expo = (float)(2 * i) / (float)HS;
        const float inv_freq = 1.0f / powf(theta, expo);
        const float a = (float)pos[n] * inv_freq;
        const float cs = cosf(a), sn = sign * sinf(a);
        const float *x = inp + nh * HS;
        float *o = out + nh * HS;
        const float x1 = x[i], x2 = x[i + half];
        o[i] = x1 * cs - x2 * sn;
        o[i + half] = x2 * cs + x1 * sn;
        if ((HS & 1) && i == 0) o[HS - 1] = x[HS - 1]; /* odd HS: the unpaired last element passes through */
    }
}

static void rope(float *out, const float *inp, const int32_t *pos, int N, int NH, int HS, float theta, float sign,
                 const char *name) {
    if (N <= 0 || NH <= 0 || HS < 2 || ca_cuda_failed()) return;
    size_t total = (size_t)N * NH * (HS / 2);
    rope_kernel<<<ca_blocks(total, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(out, inp, pos, N, NH, HS, theta, sign);
    CA_CUDA_LAUNCHED(name);
}

extern "C" void ca_cuda_rope_forward(float *out, const float *inp, const int32_t *pos, int N, int NH, int HS,
                                     float theta) {
    rope(out, inp, pos, N, NH, HS, theta, 1.0f, "rope_forward");
}

extern "C" void ca_cuda_rope_backward(float *dinp, const float *dout, const int32_t *pos, int N, int NH, int HS,
                                      float theta) {
    rope(dinp, dout, pos, N, NH, HS, theta, -1.0f, "rope_backward");
}
