/* Linear layer out = inp · Wᵀ + b (W stored [OC, C] as in torch), as csrc/cpu/linear.c, on cuBLAS; plus the
 * row-major GEMM every cuBLAS caller here goes through and the bf16-weight variant.
 *
 * Row-major ↔ column-major: a row-major (R, K) matrix with leading dimension ld is the column-major (K, R)
 * matrix with the same ld, i.e. its transpose. So the row-major C = op(A)·op(B) is the column-major
 * Cᵀ = op(B)ᵀ·op(A)ᵀ: cublasSgemm with the operands swapped, the same transpose flags and (Nc, M) sizes. */
#include <cuda_bf16.h>

#include "cuda_internal.cuh"

extern "C" void ca_cuda_gemm(int transA, int transB, int M, int Nc, int K, float alpha, const float *A, int lda,
                             const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || Nc <= 0 || ca_cuda_failed()) return;
    if (K <= 0) { /* empty reduction: C = beta·C (cuBLAS requires K ≥ 1 for a meaningful call) */
        if (beta == 0.0f) {
            for (int i = 0; i < M; i++) ca_cuda_zero(C + (size_t)i * ldc, (size_t)Nc);
        } else if (beta != 1.0f) {
            for (int i = 0; i < M; i++) ca_cuda_scale_inplace(C + (size_t)i * ldc, beta, (size_t)Nc);
        }
        return;
    }
    cublasOperation_t ta = transA ? CUBLAS_OP_T : CUBLAS_OP_N, tb = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    ca_cublas_ok(ca_cublas().sgemm(ca_cuda_cublas(), tb, ta, Nc, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc),
                 "cublasSgemm");
}

/* out[n, o] = bias[o] */
__global__ void fill_bias_kernel(float *out, const float *bias, int N, int OC) {
    size_t total = (size_t)N * OC;
    CA_GRID_STRIDE(i, total) out[i] = bias[i % OC];
}

struct ColumnOf { /* db[o] += Σ_n dout[n, o] */
    const float *x;
    int C;
    __device__ float operator()(int n, int c) const { return x[(size_t)n * C + c]; }
};

extern "C" void ca_cuda_linear_forward(float *out, const float *inp, const float *weight, const float *bias, int N,
                                       int C, int OC) {
    if (N <= 0 || OC <= 0 || ca_cuda_failed()) return;
    float beta = 0.0f;
    if (bias) { /* preload the bias and let cuBLAS accumulate onto it (beta = 1) */
        size_t total = (size_t)N * OC;
        fill_bias_kernel<<<ca_blocks(total, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(out, bias, N, OC);
        if (!CA_CUDA_LAUNCHED("linear_forward (bias)")) return;
        beta = 1.0f;
    }
    if (C <= 0) {
        if (!bias) ca_cuda_zero(out, (size_t)N * OC);
        return;
    }
    /* out (N, OC) = inp (N, C) · Wᵀ (C, OC) */
    ca_cuda_gemm(0, 1, N, OC, C, 1.0f, inp, C, weight, C, beta, out, OC);
}

/* dinp = dout·W (or +=),  dW += doutᵀ·inp,  db += Σ_n dout[n] */
extern "C" void ca_cuda_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                                        const float *weight, int N, int C, int OC, int accumulate) {
    if (N <= 0 || ca_cuda_failed()) return;
    if (OC <= 0) {
        if (dinp && !accumulate && C > 0) ca_cuda_zero(dinp, (size_t)N * C);
        return;
    }
    if (dinp && C > 0) ca_cuda_gemm(0, 0, N, C, OC, 1.0f, dout, OC, weight, C, accumulate ? 1.0f : 0.0f, dinp, C);
    if (dweight && C > 0) ca_cuda_gemm(1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
    if (dbias) {
        column_sum_kernel<<<column_sum_grid(N, OC), dim3(32, 8), 0, ca_cuda_stream()>>>(dbias, N, OC,
                                                                                       ColumnOf{dout, OC});
        CA_CUDA_LAUNCHED("linear_backward (dbias)");
    }
}

/* ---- bf16 weights ---- */

__global__ void f32_to_bf16_kernel(uint16_t *out, const float *inp, size_t n) {
    CA_GRID_STRIDE(i, n) out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(inp[i]));
}

__global__ void bf16_to_f32_kernel(float *out, const uint16_t *inp, size_t n) {
    CA_GRID_STRIDE(i, n) out[i] = __bfloat162float(__ushort_as_bfloat16(inp[i]));
}

extern "C" void ca_cuda_f32_to_bf16(uint16_t *out, const float *inp, size_t n) {
    if (!n || ca_cuda_failed()) return;
    f32_to_bf16_kernel<<<ca_blocks(n, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(out, inp, n);
    CA_CUDA_LAUNCHED("f32_to_bf16");
}

extern "C" void ca_cuda_bf16_to_f32(float *out, const uint16_t *inp, size_t n) {
    if (!n || ca_cuda_failed()) return;
    bf16_to_f32_kernel<<<ca_blocks(n, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(out, inp, n);
    CA_CUDA_LAUNCHED("bf16_to_f32");
}

extern "C" void ca_cuda_linear_forward_bf16(float *out, const float *inp, const uint16_t *weight_bf16,
                                            const float *bias, int N, int C, int OC) {
    if (N <= 0 || OC <= 0 || C <= 0 || ca_cuda_failed()) return;
    size_t n_in = (size_t)N * C;
    uint16_t *inp_bf16 = (uint16_t *)ca_cuda_workspace(n_in * sizeof(uint16_t));
    if (!inp_bf16) return;
    ca_cuda_f32_to_bf16(inp_bf16, inp, n_in);
    float beta = 0.0f;
    if (bias) {
        size_t total = (size_t)N * OC;
        fill_bias_kernel<<<ca_blocks(total, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(out, bias, N, OC);
        if (!CA_CUDA_LAUNCHED("linear_forward_bf16 (bias)")) return;
        beta = 1.0f;
    }
    const float alpha = 1.0f;
    /* row-major out (N, OC) = inp (N, C) · Wᵀ  ⇔  column-major outᵀ (OC, N) = W·inpᵀ with W read transposed */
    ca_cublas_ok(ca_cublas().gemm_ex(ca_cuda_cublas(), CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, &alpha, weight_bf16,
                                     CUDA_R_16BF, C, inp_bf16, CUDA_R_16BF, C, &beta, out, CUDA_R_32F, OC,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "cublasGemmEx (bf16)");
}
