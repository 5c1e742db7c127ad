/* The gated short convolution of LFM2's conv blocks (lfm2.md §2.4), as csrc/cpu/shortconv.c:
 *   z = [Bg | Cg | xv],  u = Bg ⊙ xv,  c[t,h] = Σ_{k<L} w[h,k]·u[t−(L−1)+k, h],  y = Cg ⊙ c
 * (u before t = 0 from `state`, zeros without it). Prefill: one kernel forms u, a second the convolution (each
 * thread one (b, t, h), the taps summed in k order as on the CPU). Decode: one thread per (b, h) does the step
 * and advances its column of the state. */
#include "cuda_internal.cuh"

/* u[b,t,h] = Bg ⊙ xv */
__global__ void shortconv_gate_kernel(float *u, const float *z, size_t rows, int C) {
    const size_t total = rows * C;
    CA_GRID_STRIDE(i, total) {
        size_t row = i / C, h = i % C;
        const float *zr = z + row * 3 * C;
        u[i] = zr[h] * zr[2 * C + h];
    }
}

__global__ void shortconv_conv_kernel(float *y, float *c, const float *u, const float *z, const float *weight,
                                      const float *state, int B, int T, int C, int L) {
    const size_t total = (size_t)B * T * C;
    CA_GRID_STRIDE(i, total) {
        const int h = (int)(i % C);
        const size_t bt = i / C;
        const int t = (int)(bt % T), b = (int)(bt / T);
        float acc = 0.0f;
        for (int k = 0; k < L; k++) {
            int s = t - (L - 1) + k; /* source time of tap k */
            float src;
            if (s >= 0) src = u[((size_t)b * T + s) * C + h];
            else if (state) src = state[((size_t)b * (L - 1) + (s + L - 1)) * C + h]; /* u at times −(L−1)…−1 */
            else continue;
            acc += weight[(size_t)h * L + k] * src;
        }
        c[i] = acc;
        y[i] = z[bt * 3 * C + C + h] * acc;
    }
}

/* One decode step (T = 1) per sequence: y, u, c (B, C); state (B, L−1, C) becomes the last L−1 columns of
 * [state; u]. Each thread owns one (b, h) column of the state. */
__global__ void shortconv_step_kernel(float *y, float *u, float *c, float *state, const float *z, const float *weight,
                                      int B, int C, int L) {
    const size_t total = (size_t)B * C;
    CA_GRID_STRIDE(i, total) {
        const int h = (int)(i % C), b = (int)(i / C);
        const float *zr = z + (size_t)b * 3 * C;
        const float ub = zr[h] * zr[2 * C + h];
        float *st = state + (size_t)b * (L - 1) * C + h; /* row j of this column: st[j·C] */
        float acc = 0.0f;
        for (int k = 0; k < L - 1; k++) acc += weight[(size_t)h * L + k] * st[(size_t)k * C];
        acc += weight[(size_t)h * L + L - 1] * ub;
        for (int j = 0; j + 1 < L - 1; j++) st[(size_t)j * C] = st[(size_t)(j + 1) * C];
        if (L > 1) st[(size_t)(L - 2) * C] = ub;
        u[i] = ub;
        c[i] = acc;
        y[i] = zr[C + h] * acc;
    }
}

/* Backward (state as zeros), with dc = dy ⊙ Cg:  du[s,h] = Σ_k w[h,k]·dc[s+(L−1)−k, h];
 * dBg = du ⊙ xv,  dCg = dy ⊙ c,  dxv = du ⊙ Bg. One thread per (b, s, h). */
__global__ void shortconv_backward_kernel(float *dz, const float *dy, const float *z, const float *c,
                                          const float *weight, int B, int T, int C, int L) {
    const size_t total = (size_t)B * T * C;
    CA_GRID_STRIDE(i, total) {
        const int h = (int)(i % C);
        const size_t bs = i / C;
        const int s = (int)(bs % T), b = (int)(bs / T);
        float du = 0.0f;
        for (int k = 0; k < L; k++) {
            int t = s + (L - 1) - k; /* the output step where u[s] sits under tap k */
            if (t >= T) continue;
            size_t trow = (size_t)b * T + t;
            du += weight[(size_t)h * L + k] * (dy[trow * C + h] * z[trow * 3 * C + C + h]);
        }
        const float *zs = z + bs * 3 * C;
        float *dzs = dz + bs * 3 * C;
        dzs[h] = du * zs[2 * C + h];
        dzs[C + h] = dy[i] * c[i];
        dzs[2 * C + h] = du * zs[h];
    }
}

/* dw[h,k] += Σ_{b,t} dc[t,h]·u[t−(L−1)+k, h]: a column sum over the B·T rows of C·L columns */
struct ShortconvDweight {
    const float *dy, *z, *u;
    int T, C, L;
    __device__ float operator()(int n, int col) const {
        const int h = col / L, k = col % L, t = n % T, b = n / T;
        const int s = t - (L - 1) + k;
        if (s < 0) return 0.0f;
        const size_t row = (size_t)b * T + t;
        return (dy[row * C + h] * z[row * 3 * C + C + h]) * u[((size_t)b * T + s) * C + h];
    }
};

extern "C" void ca_cuda_shortconv_forward(float *y, float *u, float *c, const float *z, const float *weight,
                                          const float *state, int B, int T, int C, int L) {
    if (B <= 0 || T <= 0 || C <= 0 || L <= 0 || ca_cuda_failed()) return;
    const size_t total = (size_t)B * T * C;
    shortconv_gate_kernel<<<ca_blocks(total, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(u, z, (size_t)B * T, C);
    if (!CA_CUDA_LAUNCHED("shortconv_forward (gate)")) return;
    shortconv_conv_kernel<<<ca_blocks(total, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(y, c, u, z, weight, state, B,
                                                                                        T, C, L);
    CA_CUDA_LAUNCHED("shortconv_forward");
}

extern "C" void ca_cuda_shortconv_step(float *y, float *u, float *c, float *state, const float *z, const float *weight,
                                       int B, int C, int L) {
    if (B <= 0 || C <= 0 || L <= 0 || ca_cuda_failed()) return;
    const size_t total = (size_t)B * C;
    shortconv_step_kernel<<<ca_blocks(total, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(y, u, c, state, z, weight, B,
                                                                                        C, L);
    CA_CUDA_LAUNCHED("shortconv_step");
}

extern "C" void ca_cuda_shortconv_backward(float *dz, float *dweight, const float *dy, const float *z, const float *u,
                                           const float *c, const float *weight, int B, int T, int C, int L) {
    if (B <= 0 || T <= 0 || C <= 0 || L <= 0 || ca_cuda_failed()) return;
    const size_t total = (size_t)B * T * C;
    shortconv_backward_kernel<<<ca_blocks(total, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(dz, dy, z, c, weight, B,
                                                                                            T, C, L);
    if (!CA_CUDA_LAUNCHED("shortconv_backward")) return;
    if (dweight) {
        column_sum_kernel<<<column_sum_grid(B * T, C * L), dim3(32, 8), 0, ca_cuda_stream()>>>(
            dweight, B * T, C * L, ShortconvDweight{dy, z, u, T, C, L});
        CA_CUDA_LAUNCHED("shortconv_backward (dweight)");
    }
}
