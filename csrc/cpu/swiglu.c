/* SwiGLU gate of the LFM2 feed-forward (lfm2.md §2.6): out = silu(gate) ⊙ up, silu(a) = a·σ(a),
 * gate = w1·x, up = w3·x. Elementwise over N·F, so one flat parallel loop; ca_expf keeps it vectorised. */
#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

void ca_cpu_swiglu_forward(float *restrict out,        /* (N, F) */
                           const float *restrict gate, /* (N, F) */
                           const float *restrict up,   /* (N, F) */
                           int N, int F) {
    if (N <= 0 || F <= 0) return;
    size_t n = (size_t)N * F;
#pragma omp parallel for simd schedule(static) if (n > CA_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float a = gate[i];
        float sig = 1.0f / (1.0f + ca_expf(-a));
        out[i] = a * sig * up[i];
    }
}

/* silu'(a) = σ(a)·(1 + a·(1 − σ(a))), hence dgate = dout ⊙ up ⊙ silu'(gate), dup = dout ⊙ silu(gate). */
void ca_cpu_swiglu_backward(float *restrict dgate,      /* (N, F) = */
                            float *restrict dup,        /* (N, F) = */
                            const float *restrict dout, /* (N, F) */
                            const float *restrict gate, const float *restrict up, int N, int F) {
    if (N <= 0 || F <= 0) return;
    size_t n = (size_t)N * F;
#pragma omp parallel for simd schedule(static) if (n > CA_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float a = gate[i];
        float sig = 1.0f / (1.0f + ca_expf(-a));
        float g = dout[i];
        dgate[i] = g * up[i] * sig * (1.0f + a * (1.0f - sig));
        dup[i] = g * a * sig;
    }
}
