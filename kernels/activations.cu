/* The pointwise ops: SwiGLU (lfm2.md §2.6) and GELU in its tanh and erf forms (lfm2.md §4.3, §4.6), with the
 * formulas of csrc/cpu/swiglu.c and csrc/cpu/gelu.c (GELU's tanh form as x·σ(2u), since ½(1 + tanh u) = σ(2u)). */
#include "cuda_internal.cuh"

#define GELU_K0 0.7978845608028654f /* √(2/π) */
#define GELU_K1 0.044715f
#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT_2PI 0.3989422804014327f

/* out = silu(gate) ⊙ up,  silu(a) = a·σ(a) */
__global__ void swiglu_forward_kernel(float *out, const float *gate, const float *up, size_t n) {
    CA_GRID_STRIDE(i, n) {
        float g = gate[i];
        float sig = 1.0f / (1.0f + expf(-g));
        out[i] = g * sig * up[i];
    }
}

/* silu'(a) = σ(a)·(1 + a·(1 − σ(a))):  dgate = dout ⊙ up ⊙ silu'(gate),  dup = dout ⊙ silu(gate) */
__global__ void swiglu_backward_kernel(float *dgate, float *dup, const float *dout, const float *gate,
                                       const float *up, size_t n) {
    CA_GRID_STRIDE(i, n) {
        float a = gate[i], dy = dout[i];
        float sig = 1.0f / (1.0f + expf(-a));
        float u = up[i];
        dgate[i] = dy * u * sig * (1.0f + a * (1.0f - sig));
        dup[i] = dy * a * sig;
    }
}

__global__ void gelu_forward_kernel(float *out, const float *inp, size_t n, int tanh_form) {
    CA_GRID_STRIDE(i, n) {
        float x = inp[i];
        if (tanh_form) {
            float u2 = 2.0f * GELU_K0 * (x + GELU_K1 * x * x * x);
            out[i] = x / (1.0f + expf(-u2));
        } else {
            out[i] = 0.5f * x * (1.0f + erff(x * INV_SQRT2));
        }
    }
}

/* tanh form: d/dx[x·s] = s + x·s(1 − s)·2u',  s = σ(2u),  u' = √(2/π)(1 + 3·0.044715x²);
 * erf form:  d/dx[x·Φ(x)] = Φ(x) + x·φ(x) */
__global__ void gelu_backward_kernel(float *dinp, const float *dout, const float *inp, size_t n, int tanh_form) {
    CA_GRID_STRIDE(i, n) {
        float x = inp[i];
        if (tanh_form) {
            float u2 = 2.0f * GELU_K0 * (x + GELU_K1 * x * x * x);
            float s = 1.0f / (1.0f + expf(-u2));
            float du2 = 2.0f * GELU_K0 * (1.0f + 3.0f * GELU_K1 * x * x);
            dinp[i] = dout[i] * (s + x * s * (1.0f - s) * du2);
        } else {
            float cdf = 0.5f * (1.0f + erff(x * INV_SQRT2));
            float pdf = INV_SQRT_2PI * expf(-0.5f * x * x);
            dinp[i] = dout[i] * (cdf + x * pdf);
        }
    }
}

extern "C" void ca_cuda_swiglu_forward(float *out, const float *gate, const float *up, int N, int F) {
    if (N <= 0 || F <= 0 || ca_cuda_failed()) return;
    size_t n = (size_t)N * F;
    swiglu_forward_kernel<<<ca_blocks(n, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(out, gate, up, n);
    CA_CUDA_LAUNCHED("swiglu_forward");
}

extern "C" void ca_cuda_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                                        int N, int F) {
    if (N <= 0 || F <= 0 || ca_cuda_failed()) return;
    size_t n = (size_t)N * F;
    swiglu_backward_kernel<<<ca_blocks(n, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(dgate, dup, dout, gate, up, n);
    CA_CUDA_LAUNCHED("swiglu_backward");
}

extern "C" void ca_cuda_gelu_forward(float *out, const float *inp, size_t N, int tanh_form) {
    if (!N || ca_cuda_failed()) return;
    gelu_forward_kernel<<<ca_blocks(N, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(out, inp, N, tanh_form);
    CA_CUDA_LAUNCHED("gelu_forward");
}

extern "C" void ca_cuda_gelu_backward(float *dinp, const float *dout, const float *inp, size_t N, int tanh_form) {
    if (!N || ca_cuda_failed()) return;
    gelu_backward_kernel<<<ca_blocks(N, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(dinp, dout, inp, N, tanh_form);
    CA_CUDA_LAUNCHED("gelu_backward");
}
