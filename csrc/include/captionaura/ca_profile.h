/* A profiling backend: the CPU backend with every op timed, and every GEMM shape recorded, so benchmarks
 * can compare the model's GEMM throughput with raw cblas_sgemm on the same shapes. Not thread-safe: it
 * times one model call at a time (the Python layer serialises compute per model). */
#ifndef CA_PROFILE_H
#define CA_PROFILE_H

#include "captionaura/ca_backend.h"

typedef enum {
    CA_PROF_EMBEDDING, CA_PROF_RMSNORM, CA_PROF_LINEAR, CA_PROF_SHORTCONV, CA_PROF_ROPE, CA_PROF_ATTENTION,
    CA_PROF_SWIGLU, CA_PROF_CROSSENTROPY, CA_PROF_ELEMENTWISE, CA_PROF_LORA,
    CA_PROF_LAYERNORM, CA_PROF_GELU, CA_PROF_MHA, CA_PROF_VISION_MISC, /* vision ops (posresize, unshuffle: misc) */
    CA_PROF_NUM_OPS
} ca_prof_op;

#define CA_PROF_MAX_GEMMS 256

/* One GEMM shape as cblas sees it (row-major C(M,N) = op(A)(M,K) · op(B)(K,N)) and the time spent in it. */
typedef struct {
    int trans_a, trans_b, M, N, K;
    long calls;
    double seconds;
} ca_prof_gemm;

typedef struct {
    double seconds[CA_PROF_NUM_OPS];
    long calls[CA_PROF_NUM_OPS];
    ca_prof_gemm gemms[CA_PROF_MAX_GEMMS];
    int num_gemms;
} ca_profile;

extern const ca_backend ca_cpu_profiling_backend;
extern const char *const ca_prof_op_names[CA_PROF_NUM_OPS];

const ca_profile *ca_profile_get(void);
void ca_profile_reset(void);

/* Best-of-`reps` seconds of one cblas_sgemm of the given shape on fresh random matrices. */
ca_status ca_sgemm_seconds(double *seconds, int trans_a, int trans_b, int M, int N, int K, int reps);

/* The FLOP rate of ca_get_num_threads() threads doing nothing but register FMAs (fp32, or vdpbf16ps with
 * bf16 != 0): the speed of light a benchmark sets its FLOPs against (best of `reps`, in GFLOP/s). */
ca_status ca_fma_peak_gflops(double *gflops, int bf16, int reps);
/* The DRAM read bandwidth of ca_get_num_threads() threads streaming a `bytes` buffer (best of `reps`, GB/s). */
ca_status ca_read_bandwidth_gbs(double *gbs, size_t bytes, int reps);

#endif
