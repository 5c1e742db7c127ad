/* GELU in the two forms LFM2-VL uses (lfm2.md §4.3, §4.6, gotcha 14):
 *   tanh form (SigLIP2 MLP, "gelu_pytorch_tanh"):  0.5·x·(1 + tanh(u)),  u = √(2/π)·(x + 0.044715·x³)
 *   exact form (projector, ACT2FN["gelu"]):       0.5·x·(1 + erf(x/√2))
 * The tanh form is evaluated as x·σ(2u) (since 0.5·(1 + tanh u) = σ(2u)) so that the loop vectorises with
 * ca_sigmoidf; the vision MLP calls it on N·F = 1024·3072 values per layer. erf comes from libm (the projector's
 * 256·2560 values per image are too few to matter). */
#include <math.h>

#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

#define GELU_K0 0.7978845608028654f /* √(2/π) */
#define GELU_K1 0.044715f
#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT_2PI 0.3989422804014327f

void ca_cpu_gelu_forward(float *restrict out,       /* (N) */
                         const float *restrict inp, /* (N) */
                         size_t N, int tanh_form) {
    if (tanh_form) {
#pragma omp parallel for simd schedule(static) if (N > CA_PAR_MIN)
        for (size_t i = 0; i < N; i++) {
            float x = inp[i];
            float u2 = 2.0f * GELU_K0 * (x + GELU_K1 * x * x * x);
            out[i] = x * ca_sigmoidf(u2);
        }
    } else {
#pragma omp parallel for schedule(static) if (N > CA_PAR_MIN)
        for (size_t i = 0; i < N; i++) {
            float x = inp[i];
            out[i] = 0.5f * x * (1.0f + erff(x * INV_SQRT2));
        }
    }
}

/* tanh form: with s = σ(2u),  d/dx [x·s] = s + x·s·(1 − s)·2u',  u' = √(2/π)·(1 + 3·0.044715·x²)
 * exact form: d/dx [x·Φ(x)] = Φ(x) + x·φ(x),  φ(x) = exp(−x²/2)/√(2π) */
void ca_cpu_gelu_backward(float *restrict dinp,       /* (N) = */
                          const float *restrict dout, /* (N) */
                          const float *restrict inp,  /* (N) */
                          size_t N, int tanh_form) {
    if (tanh_form) {
#pragma omp parallel for simd schedule(static) if (N > CA_PAR_MIN)
        for (size_t i = 0; i < N; i++) {
            float x = inp[i];
            float u2 = 2.0f * GELU_K0 * (x + GELU_K1 * x * x * x);
            float s = ca_sigmoidf(u2);
            float du2 = 2.0f * GELU_K0 * (1.0f + 3.0f * GELU_K1 * x * x);
            dinp[i] = dout[i] * (s + x * s * (1.0f - s) * du2);
        }
    } else {
#pragma omp parallel for schedule(static) if (N > CA_PAR_MIN)
        for (size_t i = 0; i < N; i++) {
            float x = inp[i];
            float cdf = 0.5f * (1.0f + erff(x * INV_SQRT2));
            float pdf = INV_SQRT_2PI * expf(-0.5f * x * x);
            dinp[i] = dout[i] * (cdf + x * pdf);
        }
    }
}
