/* Flat elementwise helpers (residual adds, gradient scaling, clearing) and the row scatter/gather of
 * LFM2-VL's image features, as csrc/cpu/elementwise.c. */
#include "cuda_internal.cuh"

__global__ void add_inplace_kernel(float *y, const float *x, size_t n) {
    CA_GRID_STRIDE(i, n) y[i] += x[i];
}

__global__ void scale_inplace_kernel(float *y, float s, size_t n) {
    CA_GRID_STRIDE(i, n) y[i] *= s;
}

/* dst[idx[p]] = src[p] (scatter) or dst[p] = src[idx[p]] (gather), rows of C floats; one thread per (p, c) */
__global__ void rows_kernel(float *dst, const float *src, const int32_t *idx, int P, int C, bool scatter) {
    size_t total = (size_t)P * C;
    CA_GRID_STRIDE(i, total) {
        size_t p = i / C, c = i % C, row = (size_t)idx[p];
        if (scatter) dst[row * C + c] = src[i];
        else dst[i] = src[row * C + c];
    }
}

extern "C" void ca_cuda_add_inplace(float *y, const float *x, size_t n) {
    if (!n || ca_cuda_failed()) return;
    add_inplace_kernel<<<ca_blocks(n, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(y, x, n);
    CA_CUDA_LAUNCHED("add_inplace");
}

extern "C" void ca_cuda_scale_inplace(float *y, float s, size_t n) {
    if (!n || ca_cuda_failed()) return;
    scale_inplace_kernel<<<ca_blocks(n, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(y, s, n);
    CA_CUDA_LAUNCHED("scale_inplace");
}

extern "C" void ca_cuda_zero(float *y, size_t n) {
    if (!n || ca_cuda_failed()) return;
    ca_cuda_ok(cudaMemsetAsync(y, 0, n * sizeof(float), ca_cuda_stream()), "zero");
}

extern "C" void ca_cuda_scatter_rows(float *dst, const float *src, const int32_t *idx, int P, int C) {
    if (P <= 0 || C <= 0 || ca_cuda_failed()) return;
    size_t total = (size_t)P * C;
    rows_kernel<<<ca_blocks(total, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(dst, src, idx, P, C, true);
    CA_CUDA_LAUNCHED("scatter_rows");
}

extern "C" void ca_cuda_gather_rows(float *dst, const float *src, const int32_t *idx, int P, int C) {
    if (P <= 0 || C <= 0 || ca_cuda_failed()) return;
    size_t total = (size_t)P * C;
    rows_kernel<<<ca_blocks(total, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(dst, src, idx, P, C, false);
    CA_CUDA_LAUNCHED("gather_rows");
}
