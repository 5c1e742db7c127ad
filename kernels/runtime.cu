/* The CUDA runtime side of the backend: device discovery (no device is a normal answer, never an error),
 * the stream and cuBLAS handle, memory, the scratch workspace and the first-error-wins error record. */
#include <dlfcn.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "cuda_internal.cuh"

#ifndef CA_CUBLAS_SONAME /* CMakeLists.txt names the cuBLAS it found; this is the nvidia-cublas 13 wheel's */
#define CA_CUBLAS_SONAME "libcublas.so.13"
#endif

namespace {

struct DeviceProbe {
    int count = 0;
    char reason[256] = "";
    char name[256] = "";
};

/* Asked once: cudaGetDeviceCount fails with cudaErrorNoDevice / cudaErrorInsufficientDriver on machines
 * without a GPU or driver; that only means "no device". */
const DeviceProbe &probe() {
    static DeviceProbe p = [] {
        DeviceProbe d;
        int n = 0;
        cudaError_t err = cudaGetDeviceCount(&n);
        if (err != cudaSuccess) {
            snprintf(d.reason, sizeof d.reason, "cudaGetDeviceCount: %s (%s)", cudaGetErrorString(err),
                     cudaGetErrorName(err));
            (void)cudaGetLastError(); /* clear the runtime's sticky copy of a non-fatal error */
            return d;
        }
        if (n <= 0) {
            snprintf(d.reason, sizeof d.reason, "cudaGetDeviceCount: no CUDA device is visible");
            return d;
        }
        cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
            snprintf(d.name, sizeof d.name, "%.200s (sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
                     prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
        d.count = n;
        return d;
    }();
    return p;
}

std::mutex g_lock; /* guards initialisation, the error record and the workspace */
std::atomic<bool> g_failed{false};
char g_error[512];
cudaStream_t g_stream = nullptr;
cublasHandle_t g_cublas = nullptr;
CaCublasApi g_cublas_api;
std::atomic<bool> g_cublas_loaded{false}; /* read without the lock by ca_cuda_libraries_loaded */
bool g_ready = false;
void *g_workspace = nullptr;
size_t g_workspace_bytes = 0;

const char *cublas_name(cublasStatus_t st) {
    switch (st) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_UNKNOWN";
    }
}

} // namespace

extern "C" int ca_cuda_device_count(void) { return probe().count; }

extern "C" const char *ca_cuda_unavailable_reason(void) { return probe().reason; }

extern "C" void ca_cuda_device_name(char *buf, size_t size) {
    if (size) snprintf(buf, size, "%s", probe().name);
}

/* Caller holds g_lock. */
static void record_locked(const char *what, const char *detail) {
    if (g_failed.load()) return;
    snprintf(g_error, sizeof g_error, "CUDA error in %s: %s", what, detail);
    g_failed.store(true);
}

extern "C" void ca_cuda_record_error(const char *what, const char *detail) {
    std::lock_guard<std::mutex> guard(g_lock);
    record_locked(what, detail);
}

bool ca_cuda_failed(void) { return g_failed.load(std::memory_order_relaxed); }

bool ca_cuda_ok(cudaError_t err, const char *what) {
    if (err == cudaSuccess) return true;
    char detail[256];
    snprintf(detail, sizeof detail, "%s (%s)", cudaGetErrorString(err), cudaGetErrorName(err));
    ca_cuda_record_error(what, detail);
    return false;
}

bool ca_cublas_ok(cublasStatus_t st, const char *what) {
    if (st == CUBLAS_STATUS_SUCCESS) return true;
    ca_cuda_record_error(what, cublas_name(st));
    return false;
}

/* cuBLAS is opened on first use, not linked: mapping it (libcublasLt above all) costs a process about 180 MB of
 * resident memory, which every `import captionaura` would pay, on machines without a GPU too. The extension's
 * run path (the nvidia-cublas wheel's folder, or the toolkit's) is searched, as for a linked library.
 * Caller holds g_lock. */
static ca_status load_cublas_locked(void) {
    if (g_cublas_loaded) return CA_OK;
    void *lib = dlopen(CA_CUBLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!lib) return ca_error(CA_ERR_DEVICE, "cannot open cuBLAS (%s): %s", CA_CUBLAS_SONAME, dlerror());
    struct {
        void **slot;
        const char *symbol;
    } entries[] = {
        {(void **)&g_cublas_api.create, "cublasCreate_v2"},
        {(void **)&g_cublas_api.destroy, "cublasDestroy_v2"},
        {(void **)&g_cublas_api.set_stream, "cublasSetStream_v2"},
        {(void **)&g_cublas_api.set_math_mode, "cublasSetMathMode"},
        {(void **)&g_cublas_api.sgemm, "cublasSgemm_v2"},
        {(void **)&g_cublas_api.gemm_ex, "cublasGemmEx"},
    };
    for (const auto &e : entries)
        if (!(*e.slot = dlsym(lib, e.symbol))) {
            dlclose(lib);
            return ca_error(CA_ERR_DEVICE, "%s has no %s: a cuBLAS of another major version?", CA_CUBLAS_SONAME,
                            e.symbol);
        }
    g_cublas_loaded = true; /* the library stays open for the process's lifetime */
    return CA_OK;
}

extern "C" ca_status ca_cuda_load_libraries(void) {
    std::lock_guard<std::mutex> guard(g_lock);
    return load_cublas_locked();
}

extern "C" int ca_cuda_libraries_loaded(void) { return g_cublas_loaded; }

extern "C" ca_status ca_cuda_init(void) {
    if (ca_cuda_device_count() == 0) return ca_error(CA_ERR_DEVICE, "no CUDA device: %s", ca_cuda_unavailable_reason());
    std::lock_guard<std::mutex> guard(g_lock);
    if (g_ready) return CA_OK;
    ca_status loaded = load_cublas_locked();
    if (loaded != CA_OK) return loaded;
    cudaError_t err = cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking);
    if (err != cudaSuccess)
        return ca_error(CA_ERR_DEVICE, "cudaStreamCreate: %s (%s)", cudaGetErrorString(err), cudaGetErrorName(err));
    cublasStatus_t st = g_cublas_api.create(&g_cublas);
    if (st == CUBLAS_STATUS_SUCCESS) st = g_cublas_api.set_stream(g_cublas, g_stream);
    /* fp32 GEMMs stay fp32: no TF32 tensor-op rounding (parity with the CPU backend) */
    if (st == CUBLAS_STATUS_SUCCESS) st = g_cublas_api.set_math_mode(g_cublas, CUBLAS_DEFAULT_MATH);
    if (st != CUBLAS_STATUS_SUCCESS) {
        if (g_cublas) g_cublas_api.destroy(g_cublas);
        g_cublas = nullptr;
        cudaStreamDestroy(g_stream);
        g_stream = nullptr;
        return ca_error(CA_ERR_DEVICE, "cublasCreate: %s", cublas_name(st));
    }
    g_ready = true;
    return CA_OK;
}

cudaStream_t ca_cuda_stream(void) { return g_stream; }
cublasHandle_t ca_cuda_cublas(void) { return g_cublas; }
const CaCublasApi &ca_cublas(void) { return g_cublas_api; }

extern "C" ca_status ca_cuda_check(void) {
    if (g_ready) ca_cuda_ok(cudaStreamSynchronize(g_stream), "cudaStreamSynchronize");
    std::lock_guard<std::mutex> guard(g_lock);
    if (!g_failed.load()) return CA_OK;
    g_failed.store(false);
    return ca_error(CA_ERR_DEVICE, "%s", g_error);
}

extern "C" ca_status ca_cuda_synchronize(void) { return ca_cuda_check(); }

void *ca_cuda_workspace(size_t bytes) {
    std::lock_guard<std::mutex> guard(g_lock);
    if (bytes <= g_workspace_bytes) return g_workspace;
    if (g_workspace) {
        cudaStreamSynchronize(g_stream); /* the old scratch may still be read by queued kernels */
        cudaFree(g_workspace);
        g_workspace = nullptr;
        g_workspace_bytes = 0;
    }
    size_t grown = bytes + bytes / 4;
    if (cudaMalloc(&g_workspace, grown) != cudaSuccess) {
        g_workspace = nullptr;
        (void)cudaGetLastError();
        char detail[128];
        snprintf(detail, sizeof detail, "cannot allocate %zu bytes of scratch", grown);
        record_locked("workspace", detail);
        return nullptr;
    }
    g_workspace_bytes = grown;
    return g_workspace;
}

extern "C" void *ca_cuda_malloc(size_t bytes) {
    void *p = nullptr;
    size_t rounded = bytes ? (bytes + 255) & ~(size_t)255 : 256;
    if (!ca_cuda_ok(cudaMalloc(&p, rounded), "cudaMalloc")) return nullptr;
    if (!ca_cuda_ok(cudaMemset(p, 0, rounded), "cudaMemset")) {
        cudaFree(p);
        return nullptr;
    }
    return p;
}

extern "C" void *ca_cuda_malloc_managed(size_t bytes) {
    void *p = nullptr;
    size_t rounded = bytes ? (bytes + 255) & ~(size_t)255 : 256;
    if (!ca_cuda_ok(cudaMallocManaged(&p, rounded, cudaMemAttachGlobal), "cudaMallocManaged")) return nullptr;
    /* zero-filled like the CPU backend's alloc; synchronous so host code may touch it at once */
    if (!ca_cuda_ok(cudaMemset(p, 0, rounded), "cudaMemset") ||
        !ca_cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize")) {
        cudaFree(p);
        return nullptr;
    }
    return p;
}

extern "C" void ca_cuda_free(void *p) {
    if (!p) return;
    if (g_ready) cudaStreamSynchronize(g_stream); /* queued kernels may still use it */
    ca_cuda_ok(cudaFree(p), "cudaFree");
}

static ca_status copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, const char *what) {
    if (!bytes) return CA_OK;
    if (!ca_cuda_ok(cudaMemcpyAsync(dst, src, bytes, kind, g_stream), what) ||
        !ca_cuda_ok(cudaStreamSynchronize(g_stream), what))
        return ca_cuda_check();
    return CA_OK;
}

extern "C" ca_status ca_cuda_memcpy_h2d(void *dst, const void *src, size_t bytes) {
    return copy(dst, src, bytes, cudaMemcpyHostToDevice, "cudaMemcpy (host to device)");
}

extern "C" ca_status ca_cuda_memcpy_d2h(void *dst, const void *src, size_t bytes) {
    return copy(dst, src, bytes, cudaMemcpyDeviceToHost, "cudaMemcpy (device to host)");
}

extern "C" ca_status ca_cuda_memcpy_d2d(void *dst, const void *src, size_t bytes) {
    return copy(dst, src, bytes, cudaMemcpyDeviceToDevice, "cudaMemcpy (device to device)");
}

/* Device or managed memory; plain or registered host memory, and unknown pointers, are not. */
extern "C" int ca_cuda_is_device_accessible(const void *p) {
    cudaPointerAttributes attr;
    if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}
