/* NEOX rotary position embedding (lfm2.md §2.5): element i pairs with i + HS/2 (rotate_half), not (2i, 2i+1).
 *   inv_freq_i = 1 / theta^(2i/HS),  a = pos · inv_freq_i,
 *   x'[i] = x[i]·cos a − x[i+HS/2]·sin a,   x'[i+HS/2] = x[i+HS/2]·cos a + x[i]·sin a.
 * The angle is built in fp32 exactly as transformers does (fp32 exponent 2i/HS, fp32 power and reciprocal,
 * fp32 product with the position), so the cos/sin agree with it to the last ulp or so even at large positions
 * where the fp32 rounding of the angle dominates. The frequencies are computed once per call, cos/sin once per
 * token and shared by its heads, in chunks of RCH pairs on the stack. */
#include <math.h>

#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

#define RCH 128 /* rotation pairs per stack chunk: HS ≤ 256 in one pass */

/* Rotates all NH heads of one token by +a (sign = +1) or −a (sign = −1); out may alias inp, since each pair
 * is read before it is written. */
static void rope_row(float *out, const float *inp, int32_t pos, const float *inv_freq, int NH, int HS, float sign) {
    int half = HS / 2;
    float cs[RCH], sn[RCH];
    for (int i0 = 0; i0 < half; i0 += RCH) {
        int m = half - i0 < RCH ? half - i0 : RCH;
        for (int i = 0; i < m; i++) {
            float a = (float)pos * inv_freq[i0 + i];
            cs[i] = cosf(a);
            sn[i] = sign * sinf(a);
        }
        for (int h = 0; h < NH; h++) {
            const float *x = inp + (size_t)h * HS + i0;
            float *o = out + (size_t)h * HS + i0;
            for (int i = 0; i < m; i++) {
                float x1 = x[i], x2 = x[i + half];
                o[i] = x1 * cs[i] - x2 * sn[i];
                o[i + half] = x2 * cs[i] + x1 * sn[i];
            }
        }
    }
    if (HS & 1) /* odd HS has no partner for its last element: pass it through (callers require even HS) */
        for (int h = 0; h < NH; h++) out[(size_t)h * HS + HS - 1] = inp[(size_t)h * HS + HS - 1];
}

/* inv_freq_i = 1 / theta^(2i/HS) for i < HS/2 */
static void rope_frequencies(float *inv_freq, int HS, float theta) {
    for (int i = 0; i < HS / 2; i++) inv_freq[i] = 1.0f / powf(theta, (float)(2 * i) / (float)HS);
}

static void rope_rows(float *out, const float *inp, const int32_t *pos, int N, int NH, int HS, float theta,
                      float sign) {
    if (N <= 0 || NH <= 0 || HS < 2) return;
    float inv_freq[HS / 2];
    rope_frequencies(inv_freq, HS, theta);
#pragma omp parallel for schedule(static) if ((size_t)N * NH * HS > CA_PAR_MIN)
    for (int n = 0; n < N; n++)
        rope_row(out + (size_t)n * NH * HS, inp + (size_t)n * NH * HS, pos[n], inv_freq, NH, HS, sign);
}

void ca_cpu_rope_forward(float *out,          /* (N, NH, HS), may alias inp */
                         const float *inp,    /* (N, NH, HS) */
                         const int32_t *pos,  /* (N) */
                         int N, int NH, int HS, float theta) {
    rope_rows(out, inp, pos, N, NH, HS, theta, 1.0f);
}

/* The rotation is orthogonal, so its transpose (rotation by −a) maps dout to dinp. */
void ca_cpu_rope_backward(float *dinp,        /* (N, NH, HS) =, may alias dout */
                          const float *dout,  /* (N, NH, HS) */
                          const int32_t *pos, /* (N) */
                          int N, int NH, int HS, float theta) {
    rope_rows(dinp, dout, pos, N, NH, HS, theta, -1.0f);
}
