/* Token embedding (lfm2.md §2.1): out[n] = wte[ids[n]], and its transpose dwte[ids[n]] += dout[n].
 * The backward scatters with atomicAdd: rows repeating a token add in an unspecified order (fp32 sums that
 * differ from the CPU's in the last bits only when a token repeats). */
#include "cuda_internal.cuh"

/* one thread per (n, c) */
__global__ void embedding_forward_kernel(float *out, const int32_t *ids, const float *wte, int N, int C) {
    size_t total = (size_t)N * C;
    CA_GRID_STRIDE(i, total) {
        size_t n = i / C, c = i % C;
        out[i] = wte[(size_t)ids[n] * C + c];
    }
}

__global__ void embedding_backward_kernel(float *dwte, const float *dout, const int32_t *ids, int N, int C) {
    size_t total = (size_t)N * C;
    CA_GRID_STRIDE(i, total) {
        size_t n = i / C, c = i % C;
        atomicAdd(&dwte[(size_t)ids[n] * C + c], dout[i]);
    }
}

extern "C" void ca_cuda_embedding_forward(float *out, const int32_t *ids, const float *wte, int N, int C) {
    if (N <= 0 || C <= 0 || ca_cuda_failed()) return;
    size_t total = (size_t)N * C;
    embedding_forward_kernel<<<ca_blocks(total, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(out, ids, wte, N, C);
    CA_CUDA_LAUNCHED("embedding_forward");
}

extern "C" void ca_cuda_embedding_backward(float *dwte, const float *dout, const int32_t *ids, int N, int C) {
    if (N <= 0 || C <= 0 || ca_cuda_failed()) return;
    size_t total = (size_t)N * C;
    embedding_backward_kernel<<<ca_blocks(total, CA_BLOCK), CA_BLOCK, 0, ca_cuda_stream()>>>(dwte, dout, ids, N, C);
    CA_CUDA_LAUNCHED("embedding_backward");
}
