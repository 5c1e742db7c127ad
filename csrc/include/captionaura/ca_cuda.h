/* The CUDA backend (the .cu files of kernels/): launchers with the CPU ops' signatures (ca_ops.h) and a ca_cuda_ prefix,
 * the runtime (device query, memory, errors) and the ca_cuda_backend table.
 *
 * Pointers: every op takes device-accessible pointers (cudaMalloc / cudaMallocManaged). The table's alloc
 * returns managed memory, so the model code's host-side work (initialisation, checkpoint loading, KV-cache
 * appends, position and mask setup) runs unchanged on the same buffers; the table's ops therefore finish
 * (stream synchronise) before they return, and stage plain host pointers (token ids and image features
 * handed in from Python) through a device buffer. The ca_cuda_* launchers themselves are asynchronous on the
 * backend's stream.
 *
 * Errors: ops return void, as on the CPU. A failed launch or cuBLAS call is recorded (the first one wins)
 * and every later op becomes a no-op; ca_cuda_check() turns it into CA_ERR_DEVICE with its message and
 * clears it. Nothing here exits or aborts. Without a device (or without a driver) ca_cuda_device_count()
 * is 0 and ca_cuda_unavailable_reason() says why; no op may be called then.
 *
 * Precision: fp32 storage and fp32 accumulation (cuBLAS in its default, non-TF32 math mode), float64 where
 * the CPU op uses it (cross-entropy sums, Σx², federated accumulators). bf16 weight storage is offered as an
 * option for inference GEMMs: ca_cuda_linear_forward_bf16 (bf16 operands, fp32 accumulation and output). */
#ifndef CA_CUDA_H
#define CA_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "captionaura/ca_backend.h"
#include "captionaura/ca_ops.h"
#include "captionaura/ca_status.h"

/* ---- runtime (runtime.cu) ---- */
/* Devices visible to the runtime; 0 when there is none, no driver, or the runtime fails to start. */
int ca_cuda_device_count(void);
/* Why ca_cuda_device_count() is 0 ("" when a device is present), e.g. "cudaGetDeviceCount: no CUDA-capable
 * device is detected (cudaErrorNoDevice)". */
const char *ca_cuda_unavailable_reason(void);
/* Name and compute capability of device 0 into buf ("" without a device). */
void ca_cuda_device_name(char *buf, size_t size);
/* Creates the stream and the cuBLAS handle on first use: CA_ERR_DEVICE with the reason when no device. */
ca_status ca_cuda_init(void);
/* Opens cuBLAS, as ca_cuda_init does first (it is loaded on first use, not linked: importing the package maps
 * none of it). Needs no device: CA_ERR_DEVICE names the library or entry point that is missing. */
ca_status ca_cuda_load_libraries(void);
int ca_cuda_libraries_loaded(void); /* whether cuBLAS is open in this process */
/* The first error recorded since the last check, as CA_ERR_DEVICE (and ca_error's message); CA_OK if none.
 * Synchronises the stream first, so asynchronous kernel faults are caught too. */
ca_status ca_cuda_check(void);
/* Records an error found outside the runtime (first one wins). */
void ca_cuda_record_error(const char *what, const char *detail);

void *ca_cuda_malloc(size_t bytes);         /* device memory, zero-filled; NULL on failure (error recorded) */
void *ca_cuda_malloc_managed(size_t bytes); /* managed memory, zero-filled; NULL on failure */
void ca_cuda_free(void *p);
int ca_cuda_is_device_accessible(const void *p); /* device or managed memory the kernels can dereference */
ca_status ca_cuda_memcpy_h2d(void *dst, const void *src, size_t bytes);
ca_status ca_cuda_memcpy_d2h(void *dst, const void *src, size_t bytes);
ca_status ca_cuda_memcpy_d2d(void *dst, const void *src, size_t bytes);
ca_status ca_cuda_synchronize(void);

/* ---- GEMM (linear.cu): row-major C (M, Nc) = alpha·op(A)·op(B) + beta·C through cuBLAS ---- */
void ca_cuda_gemm(int transA, int transB, int M, int Nc, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc);
/* bf16 weights: out (N, OC) = inp (N, C) · Wᵀ + b with W (OC, C) in bf16, inp rounded to bf16, fp32
 * accumulation (cublasGemmEx, CUBLAS_COMPUTE_32F) and fp32 output. */
void ca_cuda_linear_forward_bf16(float *out, const float *inp, const uint16_t *weight_bf16, const float *bias,
                                 int N, int C, int OC);
void ca_cuda_f32_to_bf16(uint16_t *out, const float *inp, size_t n); /* round to nearest even */
void ca_cuda_bf16_to_f32(float *out, const uint16_t *inp, size_t n);

/* ---- ops: the signatures and conventions of ca_ops.h ---- */
void ca_cuda_embedding_forward(float *out, const int32_t *ids, const float *wte, int N, int C);
void ca_cuda_embedding_backward(float *dwte, const float *dout, const int32_t *ids, int N, int C);
void ca_cuda_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps);
void ca_cuda_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                              const float *rstd, int N, int C);
void ca_cuda_linear_forward(float *out, const float *inp, const float *weight, const float *bias, int N, int C, int OC);
void ca_cuda_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                             const float *weight, int N, int C, int OC, int accumulate);
void ca_cuda_shortconv_forward(float *y, float *u, float *c, const float *z, const float *weight, const float *state,
                               int B, int T, int C, int L);
void ca_cuda_shortconv_backward(float *dz, float *dweight, const float *dy, const float *z, const float *u,
                                const float *c, const float *weight, int B, int T, int C, int L);
/* Decode step: one token per sequence (T = 1) with the state (B, L-1, C) advanced in place to the last L-1
 * u columns, so a decode loop never leaves the device. */
void ca_cuda_shortconv_step(float *y, float *u, float *c, float *state, const float *z, const float *weight, int B,
                            int C, int L);
void ca_cuda_rope_forward(float *out, const float *inp, const int32_t *pos, int N, int NH, int HS, float theta);
void ca_cuda_rope_backward(float *dinp, const float *dout, const int32_t *pos, int N, int NH, int HS, float theta);
void ca_cuda_attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                               const int32_t *key_mask, int B, int Tq, int Tk, int NH, int NKV, int HS, int causal,
                               int q_offset);
void ca_cuda_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                                const float *v, const float *att, int B, int Tq, int Tk, int NH, int NKV, int HS);
/* Decode over a KV cache without the probabilities cache: out (B, NH, HS) for one query per sequence at
 * position Tk-1 (keys [0, Tk) visible), split over key chunks and combined with a log-sum-exp merge. */
void ca_cuda_attention_decode(float *out, const float *q, const float *k, const float *v, int B, int Tk, int NH,
                              int NKV, int HS);
void ca_cuda_swiglu_forward(float *out, const float *gate, const float *up, int N, int F);
void ca_cuda_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, int N,
                             int F);
double ca_cuda_crossentropy_forward(float *losses, const float *logits, const int32_t *targets, int N, int V);
void ca_cuda_crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets, float scale, int N,
                                   int V);
void ca_cuda_add_inplace(float *y, const float *x, size_t n);
void ca_cuda_scale_inplace(float *y, float s, size_t n);
void ca_cuda_zero(float *y, size_t n);
void ca_cuda_scatter_rows(float *dst, const float *src, const int32_t *idx, int P, int C);
void ca_cuda_gather_rows(float *dst, const float *src, const int32_t *idx, int P, int C);
void ca_cuda_lora_forward(float *out, float *h, const float *x, const float *A, const float *B, float scale, int N,
                          int C, int OC, int r);
void ca_cuda_lora_backward(float *dx, float *dA, float *dB, float *dh, const float *dout, const float *x,
                           const float *h, const float *A, const float *B, float scale, int N, int C, int OC, int r);
void ca_cuda_lora_merge(float *W, const float *A, const float *B, float scale, int C, int OC, int r);
void ca_cuda_dropout_forward(float *out, const float *inp, size_t n, float p, uint64_t seed);
void ca_cuda_dropout_backward(float *dinp, const float *dout, size_t n, float p, uint64_t seed);
void ca_cuda_adamw_update(float *p, float *m, float *v, const float *g, size_t n, float lr, float beta1, float beta2,
                          float eps, float weight_decay, int step, float grad_scale);
double ca_cuda_sum_squares(const float *x, size_t n);
void ca_cuda_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                               const float *bias, int N, int C, float eps);
void ca_cuda_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                                const float *weight, const float *mean, const float *rstd, int N, int C);
void ca_cuda_gelu_forward(float *out, const float *inp, size_t N, int tanh_form);
void ca_cuda_gelu_backward(float *dinp, const float *dout, const float *inp, size_t N, int tanh_form);
void ca_cuda_posresize_forward(float *out, const float *table, int Hi, int Wi, int Ho, int Wo, int C);
void ca_cuda_posresize_backward(float *dtable, const float *dout, int Hi, int Wi, int Ho, int Wo, int C);
void ca_cuda_unshuffle_forward(float *out, const float *inp, int H, int W, int C, int f);
void ca_cuda_unshuffle_backward(float *dinp, const float *dout, int H, int W, int C, int f);
void ca_cuda_mha_forward(float *out, float *att, const float *q, const float *k, const float *v, int T, int NH, int HS);
void ca_cuda_mha_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout, const float *q,
                          const float *k, const float *v, const float *att, int T, int NH, int HS);

/* ---- federated aggregation (fed.cu): the arithmetic of csrc/fed.c on device vectors ---- */
void ca_cuda_fed_acc_add(double *sum, const float *x, double w, size_t n);     /* sum += w·x in float64 */
void ca_cuda_fed_acc_mean(float *out, const double *sum, double weight, size_t n); /* out = (float)(sum / weight) */
double ca_cuda_fed_l2norm(const float *x, const float *ref, size_t n);         /* ‖x − ref‖₂ (ref may be NULL) */
void ca_cuda_fed_fedavgm_step(float *x, float *v, const double *sum, double weight, size_t n, double server_lr,
                              double momentum, int first_round);
void ca_cuda_fed_fedopt_step(float *x, float *m, float *v, const double *sum, double weight, size_t n, int kind,
                             double eta, double beta1, double beta2, double tau);
void ca_cuda_fed_clip(float *out, const float *x, const float *ref, size_t n, double clip_norm, double *norm);

/* The backend table (backend.cu): the ops above, synchronous, on managed memory. */
extern const ca_backend ca_cuda_backend;

#ifdef __cplusplus
}
#endif

#endif
