/* SwiGLU gate of the LFM2 feed-forward (lfm2.md §2.6): out = silu(gate) ⊙ up, silu(a) = a·σ(a),
 * gate = w1·x, up = w3·x. Elementwise over N·F, so one flat parallel loop; ca_sigmoidf keeps it vectorised. */
#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

CA_AVX512_CLONE
void ca_cpu_swiglu_forward(float *restrict out,        /* (N, F) */
                           const float *restrict gate, /* (N, F) */
                           const float *restrict up,   /* (N, F) */
                           int N, int F) {
    if (N <= 0 || F <= 0) return;
#pragma omp parallel for schedule(static) if ((size_t)N * F > CA_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *restrict g = gate + (size_t)n * F, *restrict u = up + (size_t)n * F;
        float *restrict o = out + (size_t)n * F;
#pragma omp simd
        for (int i = 0; i < F; i++) {
            float sig = ca_sigmoidf(g[i]);
            o[i] = g[i] * sig * u[i];
        }
    }
}

/* silu'(a) = σ(a)·(1 + a·(1 − σ(a))), hence dgate = dout ⊙ up ⊙ silu'(gate), dup = dout ⊙ silu(gate). */
CA_AVX512_CLONE
void ca_cpu_swiglu_backward(float *restrict dgate,      /* (N, F) = */
                            float *restrict dup,        /* (N, F) = */
                            const float *restrict dout, /* (N, F) */
                            const float *restrict gate, const float *restrict up, int N, int F) {
    if (N <= 0 || F <= 0) return;
#pragma omp parallel for schedule(static) if ((size_t)N * F > CA_PAR_MIN)
    for (int n = 0; n < N; n++) {
        size_t off = (size_t)n * F;
        const float *restrict g = gate + off, *restrict u = up + off, *restrict dy = dout + off;
        float *restrict dg = dgate + off, *restrict du = dup + off;
#pragma omp simd
        for (int i = 0; i < F; i++) {
            float a = g[i];
            float sig = ca_sigmoidf(a);
            dg[i] = dy[i] * u[i] * sig * (1.0f + a * (1.0f - sig));
            du[i] = dy[i] * a * sig;
        }
    }
}
