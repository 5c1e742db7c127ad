/* The backend table: model code calls ops through it, never through #ifdefs, so the CUDA backend
 * (kernels/) slots in with the same signatures. Memory functions let a backend own device buffers. */
#ifndef CA_BACKEND_H
#define CA_BACKEND_H

#include "captionaura/ca_ops.h"
#include "captionaura/ca_status.h"

typedef struct ca_backend {
    const char *name;
    /* memory */
    void *(*alloc)(size_t bytes); /* zero-filled, 64-byte aligned; NULL on failure */
    void (*free)(void *p);
    /* memmove semantics; either side may be host memory or this backend's (KV-cache appends, outputs) */
    void (*copy)(void *dst, const void *src, size_t bytes);
    /* ops (see ca_ops.h) */
    void (*embedding_forward)(float *, const int32_t *, const float *, int, int);
    void (*embedding_backward)(float *, const float *, const int32_t *, int, int);
    void (*rmsnorm_forward)(float *, float *, const float *, const float *, int, int, float);
    void (*rmsnorm_backward)(float *, float *, const float *, const float *, const float *, const float *, int, int);
    void (*linear_forward)(float *, const float *, const float *, const float *, int, int, int);
    void (*linear_backward)(float *, float *, float *, const float *, const float *, const float *, int, int, int, int);
    void (*shortconv_forward)(float *, float *, float *, const float *, const float *, const float *, int, int, int, int);
    void (*shortconv_backward)(float *, float *, const float *, const float *, const float *, const float *, const float *, int, int, int, int);
    void (*rope_forward)(float *, const float *, const int32_t *, int, int, int, float);
    void (*rope_backward)(float *, const float *, const int32_t *, int, int, int, float);
    void (*attention_forward)(float *, float *, const float *, const float *, const float *, const int32_t *, int, int, int, int, int, int, int, int);
    void (*attention_backward)(float *, float *, float *, const float *, const float *, const float *, const float *, const float *, int, int, int, int, int, int);
    void (*swiglu_forward)(float *, const float *, const float *, int, int);
    void (*swiglu_backward)(float *, float *, const float *, const float *, const float *, int, int);
    double (*crossentropy_forward)(float *, const float *, const int32_t *, int, int);
    void (*crossentropy_backward)(float *, const float *, const int32_t *, float, int, int);
    void (*add_inplace)(float *, const float *, size_t);
    void (*scale_inplace)(float *, float, size_t);
    void (*zero)(float *, size_t);
    void (*scatter_rows)(float *, const float *, const int32_t *, int, int);
    void (*gather_rows)(float *, const float *, const int32_t *, int, int);
    void (*lora_forward)(float *, float *, const float *, const float *, const float *, float, int, int, int, int);
    void (*lora_backward)(float *, float *, float *, float *, const float *, const float *, const float *,
                          const float *, const float *, float, int, int, int, int);
    void (*lora_merge)(float *, const float *, const float *, float, int, int, int);
    void (*dropout_forward)(float *, const float *, size_t, float, uint64_t);
    void (*dropout_backward)(float *, const float *, size_t, float, uint64_t);
    void (*adamw_update)(float *, float *, float *, const float *, size_t, float, float, float, float, float, int,
                         float);
    double (*sum_squares)(const float *, size_t);
    /* vision ops (see ca_ops.h, "Vision ops") */
    void (*layernorm_forward)(float *, float *, float *, const float *, const float *, const float *, int, int, float);
    void (*layernorm_backward)(float *, float *, float *, const float *, const float *, const float *, const float *, const float *, int, int);
    void (*gelu_forward)(float *, const float *, size_t, int);
    void (*gelu_backward)(float *, const float *, const float *, size_t, int);
    void (*posresize_forward)(float *, const float *, int, int, int, int, int);
    void (*posresize_backward)(float *, const float *, int, int, int, int, int);
    void (*unshuffle_forward)(float *, const float *, int, int, int, int);
    void (*unshuffle_backward)(float *, const float *, int, int, int, int);
    void (*mha_forward)(float *, float *, const float *, const float *, const float *, int, int, int);
    void (*mha_backward)(float *, float *, float *, float *, const float *, const float *, const float *, const float *, const float *, int, int, int);
    /* device backends: the first failure since the last call (then cleared) as a ca_status with its message;
     * NULL for backends whose ops cannot fail (the CPU). Model code checks it once per public call. */
    ca_status (*status)(void);
} ca_backend;

static inline ca_status ca_backend_status(const ca_backend *be) { return be->status ? be->status() : CA_OK; }

/* The end of a model's public call: a bf16 GEMM that found no workspace while the fp32 weights were dropped, so
 * had no fp32 fallback (*lowp_oom, then cleared), else the backend's deferred failure. */
static inline ca_status ca_pass_status(int *lowp_oom, const ca_backend *be) {
    if (*lowp_oom) {
        *lowp_oom = 0;
        return ca_error(CA_ERR_NOMEM, "out of memory for a bf16 GEMM's workspace (the fp32 weights were dropped, so "
                                      "there is no fp32 fallback)");
    }
    return ca_backend_status(be);
}

extern const ca_backend ca_cpu_backend;
/* ca_cpu_backend.alloc without the zeroing, for a buffer its owner writes whole before reading it: a large one's
 * pages (fresh from the kernel) then cost memory only as they are written. Freed by ca_cpu_backend.free. */
void *ca_cpu_alloc_uninit(size_t bytes);

/* Threads used by OpenMP loops, process-wide (0 = leave as is); OpenBLAS stays at one. */
void ca_set_num_threads(int n);
/* The count set by ca_set_num_threads, else the calling thread's OpenMP default. */
int ca_get_num_threads(void);
/* Gives the calling thread the process-wide count (OpenMP keeps it per thread): every compute entry calls it. */
void ca_threads_apply(void);
/* Threads an OpenMP parallel region opened on the calling thread gets now, as the ops' loops see it. */
int ca_threads_team_size(void);

#endif
