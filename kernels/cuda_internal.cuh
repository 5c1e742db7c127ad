/* Shared by the kernels/ sources: the stream, the cuBLAS handle, the scratch workspace, error recording
 * and the warp/block reductions. Not a public header (ca_cuda.h is). */
#ifndef CA_CUDA_INTERNAL_CUH
#define CA_CUDA_INTERNAL_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "captionaura/ca_cuda.h"

#define CA_WARP 32
#define CA_BLOCK 256 /* threads of the 1-D elementwise launches and the row-per-block reductions */

/* The cuBLAS entry points the backend calls, resolved from the library when it is opened (runtime.cu): it is
 * not linked, so that importing the package costs nothing for it (see ca_cuda_load_libraries). */
struct CaCublasApi {
    decltype(&cublasCreate_v2) create;
    decltype(&cublasDestroy_v2) destroy;
    decltype(&cublasSetStream_v2) set_stream;
    decltype(&cublasSetMathMode) set_math_mode;
    decltype(&cublasSgemm_v2) sgemm;
    /* (C++ sees an inline overload of cublasGemmEx too: the C entry point is spelt out) */
    cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *,
                              const void *, cudaDataType, int, const void *, cudaDataType, int, const void *, void *,
                              cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
};

/* The backend's stream, cuBLAS handle and entry points (runtime.cu); valid after ca_cuda_init() succeeded. */
cudaStream_t ca_cuda_stream(void);
cublasHandle_t ca_cuda_cublas(void);
const CaCublasApi &ca_cublas(void);
/* True when an error is pending: ops then return without launching anything. */
bool ca_cuda_failed(void);
/* Records err (if not cudaSuccess) with the op name; returns true on success. */
bool ca_cuda_ok(cudaError_t err, const char *what);
bool ca_cublas_ok(cublasStatus_t st, const char *what);
/* Device scratch of at least `bytes`, grown on demand and owned by the runtime (one in flight at a time:
 * ops on the backend's single stream use it one after another). NULL on failure (error recorded). */
void *ca_cuda_workspace(size_t bytes);

/* Σ (x − ref)² in float64 (ref may be NULL), deterministic; synchronises (adamw.cu). */
double ca_cuda_sum_squares_diff(const float *x, const float *ref, size_t n);

/* Checks the launch that just happened (configuration errors surface here, faults at ca_cuda_check). */
#define CA_CUDA_LAUNCHED(name) ca_cuda_ok(cudaGetLastError(), name)

static inline unsigned int ca_blocks(size_t n, unsigned int threads) {
    size_t b = (n + threads - 1) / threads;
    return (unsigned int)(b > 0x7fffffffu ? 0x7fffffffu : (b ? b : 1));
}

/* Grid-stride loop bounds for elementwise kernels over n elements. */
#define CA_GRID_STRIDE(i, n)                                                                                   \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

template <typename T> __device__ __forceinline__ T ca_warp_sum(T x) {
    for (int off = CA_WARP / 2; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

__device__ __forceinline__ float ca_warp_max(float x) {
    for (int off = CA_WARP / 2; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
    return x;
}

/* Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
 * `shared` holds 32 values; the function syncs before returning so it can be called again at once. */
template <typename T> __device__ T ca_block_sum(T x, T *shared) {
    const int lane = threadIdx.x % CA_WARP, warp = threadIdx.x / CA_WARP, nwarps = blockDim.x / CA_WARP;
    x = ca_warp_sum(x);
    if (lane == 0) shared[warp] = x;
    __syncthreads();
    T total = lane < nwarps ? shared[lane] : (T)0;
    total = ca_warp_sum(total);
    __syncthreads();
    return total;
}

__device__ __forceinline__ float ca_block_max(float x, float *shared) {
    const int lane = threadIdx.x % CA_WARP, warp = threadIdx.x / CA_WARP, nwarps = blockDim.x / CA_WARP;
    x = ca_warp_max(x);
    if (lane == 0) shared[warp] = x;
    __syncthreads();
    float m = lane < nwarps ? shared[lane] : -INFINITY;
    m = ca_warp_max(m);
    __syncthreads();
    return m;
}

/* acc[c] += Σ_n term(n, c) for an (N, C) grid: blocks of 32 channels x 8 row lanes, each block takes a slice of
 * the rows, reduces over its 8 lanes in shared memory and adds into acc with one atomicAdd per channel.
 * Launch with column_sum_grid(N, C) and dim3(32, 8). */
template <typename Term> __global__ void column_sum_kernel(float *acc, int N, int C, Term term) {
    __shared__ float part[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f;
    if (c < C)
        for (int n = blockIdx.y * 8 + threadIdx.y; n < N; n += gridDim.y * 8) s += term(n, c);
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float total = 0.0f;
        for (int y = 0; y < 8; y++) total += part[y][threadIdx.x];
        atomicAdd(&acc[c], total);
    }
}

static inline dim3 column_sum_grid(int N, int C) {
    int row_blocks = (N + 63) / 64; /* about 64 rows per block, at most 128 blocks down the rows */
    if (row_blocks > 128) row_blocks = 128;
    return dim3((unsigned)((C + 31) / 32), (unsigned)(row_blocks > 0 ? row_blocks : 1));
}

#endif
