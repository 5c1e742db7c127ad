/* ca_cuda_backend: the ca_backend table on the CUDA ops, for the model code (csrc/model.c, csrc/vision.c)
 * as it is. Its alloc returns managed memory, which that code also reads and writes on the host (weights
 * loaded from safetensors, positions, masks, KV-cache appends), so every op here waits for its kernels before
 * returning. Buffers the caller hands in from outside (token ids, positions, masks, targets, image features,
 * logits and feature outputs that live in NumPy arrays) may be plain host memory: ops whose sizes are known
 * stage such a pointer through a temporary device copy (written back for outputs). Failures are recorded (see
 * ca_cuda.h) and reported by the table's status(). */
#include <mutex>

#include "cuda_internal.cuh"

namespace {

/* A pointer the kernels can use for `bytes` bytes at p: p itself, or a device copy of it that is copied back
 * to p at scope exit when `writeback` is set (after the stream has finished). */
class Staged {
  public:
    Staged(const void *p, size_t bytes, bool writeback) : orig_((void *)p), bytes_(bytes), writeback_(writeback) {
        if (!p || !bytes || ca_cuda_failed() || ca_cuda_is_device_accessible(p)) return;
        if (!ca_cuda_ok(cudaMalloc(&copy_, bytes), "staging a host buffer (cudaMalloc)")) {
            copy_ = nullptr;
            return;
        }
        ca_cuda_ok(cudaMemcpyAsync(copy_, p, bytes, cudaMemcpyHostToDevice, ca_cuda_stream()),
                   "staging a host buffer (copy in)");
    }
    ~Staged() {
        if (!copy_) return;
        ca_cuda_ok(cudaStreamSynchronize(ca_cuda_stream()), "staging a host buffer (synchronize)");
        if (writeback_ && !ca_cuda_failed())
            ca_cuda_ok(cudaMemcpy(orig_, copy_, bytes_, cudaMemcpyDeviceToHost), "staging a host buffer (copy out)");
        cudaFree(copy_);
    }
    template <typename T> T *get() const { return (T *)(copy_ ? copy_ : orig_); }
    Staged(const Staged &) = delete;
    Staged &operator=(const Staged &) = delete;

  private:
    void *orig_;
    void *copy_ = nullptr;
    size_t bytes_;
    bool writeback_;
};

/* One table op at a time, process-wide: the ops share the stream, the scratch workspace and the error record,
 * while two models may compute from two Python threads (each holding only its own model's lock). */
std::mutex op_lock;

/* Lazily starts the runtime; false (error recorded) without a device. */
bool ready() {
    if (ca_cuda_failed()) return false;
    if (ca_cuda_init() == CA_OK) return true;
    ca_cuda_record_error("ca_cuda_backend", ca_last_error());
    return false;
}

/* The end of every table op: its kernels have finished (host code may read the results). */
void finish(const char *name) {
    if (!ca_cuda_failed()) ca_cuda_ok(cudaStreamSynchronize(ca_cuda_stream()), name);
}

const size_t F = sizeof(float), I = sizeof(int32_t);

/* NULL is the whole report of a failed allocation (the model code raises MemoryError with the size): the
 * runtime's record of it is dropped so that it does not fail the next, unrelated op. */
void *t_alloc(size_t bytes) {
    if (!ready()) return nullptr;
    void *p = ca_cuda_malloc_managed(bytes);
    if (!p) (void)ca_cuda_check();
    return p;
}

void t_free(void *p) {
    if (p) ca_cuda_free(p);
}

ca_status t_status(void) { return ca_cuda_check(); }

/* memmove between any two of host, device and managed memory (unified addressing tells them apart);
 * overlapping ranges go through the scratch workspace. */
void t_copy(void *dst, const void *src, size_t bytes) {
    std::lock_guard<std::mutex> guard(op_lock);
    if (!bytes || !ready()) return;
    const char *d = (const char *)dst, *s = (const char *)src;
    cudaStream_t stream = ca_cuda_stream();
    if (d < s + bytes && s < d + bytes) {
        void *tmp = ca_cuda_workspace(bytes);
        if (!tmp || !ca_cuda_ok(cudaMemcpyAsync(tmp, src, bytes, cudaMemcpyDefault, stream), "copy (to scratch)"))
            return;
        src = tmp;
    }
    ca_cuda_ok(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream), "copy");
    finish("copy");
}

void t_embedding_forward(float *out, const int32_t *ids, const float *wte, int N, int C) {
    std::lock_guard<std::mutex> guard(op_lock);
    if (!ready()) return;
    {
        Staged o(out, (size_t)N * C * F, true), i(ids, (size_t)N * I, false);
        ca_cuda_embedding_forward(o.get<float>(), i.get<const int32_t>(), wte, N, C);
    }
    finish("embedding_forward");
}

void t_embedding_backward(float *dwte, const float *dout, const int32_t *ids, int N, int C) {
    std::lock_guard<std::mutex> guard(op_lock);
    if (!ready()) return;
    {
        Staged d(dout, (size_t)N * C * F, false), i(ids, (size_t)N * I, false);
        ca_cuda_embedding_backward(dwte, d.get<const float>(), i.get<const int32_t>(), N, C);
    }
    finish("embedding_backward");
}

void t_linear_forward(float *out, const float *inp, const float *weight, const float *bias, int N, int C, int OC) {
    std::lock_guard<std::mutex> guard(op_lock);
    if (!ready()) return;
    {
        Staged o(out, (size_t)N * OC * F, true), x(inp, (size_t)N * C * F, false);
        Staged w(weight, (size_t)OC * C * F, false), b(bias, (size_t)OC * F, false);
        ca_cuda_linear_forward(o.get<float>(), x.get<const float>(), w.get<const float>(), b.get<const float>(), N, C,
                               OC);
    }
    finish("linear_forward");
}

void t_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                       const float *weight, int N, int C, int OC, int accumulate) {
    std::lock_guard<std::mutex> guard(op_lock);
    if (!ready()) return;
    {
        Staged dx(dinp, (size_t)N * C * F, true), dw(dweight, (size_t)OC * C * F, true), db(dbias, (size_t)OC * F, true);
        Staged dy(dout, (size_t)N * OC * F, false), x(inp, (size_t)N * C * F, false);
        Staged w(weight, (size_t)OC * C * F, false);
        ca_cuda_linear_backward(dx.get<float>(), dw.get<float>(), db.get<float>(), dy.get<const float>(),
                                x.get<const float>(), w.get<const float>(), N, C, OC, accumulate);
    }
    finish("linear_backward");
}

void t_scatter_rows(float *dst, const float *src, const int32_t *idx, int P, int C) {
    std::lock_guard<std::mutex> guard(op_lock);
    if (!ready()) return;
    {
        Staged s(src, (size_t)P * C * F, false), i(idx, (size_t)P * I, false);
        ca_cuda_scatter_rows(dst, s.get<const float>(), i.get<const int32_t>(), P, C);
    }
    finish("scatter_rows");
}

void t_gather_rows(float *dst, const float *src, const int32_t *idx, int P, int C) {
    std::lock_guard<std::mutex> guard(op_lock);
    if (!ready()) return;
    {
        Staged d(dst, (size_t)P * C * F, true), i(idx, (size_t)P * I, false);
        ca_cuda_gather_rows(d.get<float>(), src, i.get<const int32_t>(), P, C);
    }
    finish("gather_rows");
}

double t_crossentropy_forward(float *losses, const float *logits, const int32_t *targets, int N, int V) {
    std::lock_guard<std::mutex> guard(op_lock);
    if (!ready()) return 0.0;
    double total;
    {
        Staged l(losses, (size_t)N * F, true), t(targets, (size_t)N * I, false);
        total = ca_cuda_crossentropy_forward(l.get<float>(), logits, t.get<const int32_t>(), N, V);
    }
    finish("crossentropy_forward");
    return total;
}

void t_crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets, float scale, int N, int V) {
    std::lock_guard<std::mutex> guard(op_lock);
    if (!ready()) return;
    {
        Staged t(targets, (size_t)N * I, false);
        ca_cuda_crossentropy_backward(dlogits, logits, t.get<const int32_t>(), scale, N, V);
    }
    finish("crossentropy_backward");
}

void t_rope_forward(float *out, const float *inp, const int32_t *pos, int N, int NH, int HS, float theta) {
    std::lock_guard<std::mutex> guard(op_lock);
    if (!ready()) return;
    {
        Staged p(pos, (size_t)N * I, false);
        ca_cuda_rope_forward(out, inp, p.get<const int32_t>(), N, NH, HS, theta);
    }
    finish("rope_forward");
}

void t_rope_backward(float *dinp, const float *dout, const int32_t *pos, int N, int NH, int HS, float theta) {
    std::lock_guard<std::mutex> guard(op_lock);
    if (!ready()) return;
    {
        Staged p(pos, (size_t)N * I, false);
        ca_cuda_rope_backward(dinp, dout, p.get<const int32_t>(), N, NH, HS, theta);
    }
    finish("rope_backward");
}

void t_attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                         const int32_t *key_mask, int B, int Tq, int Tk, int NH, int NKV, int HS, int causal,
                         int q_offset) {
    std::lock_guard<std::mutex> guard(op_lock);
    if (!ready()) return;
    {
        Staged m(key_mask, (size_t)B * Tk * I, false);
        ca_cuda_attention_forward(out, att, q, k, v, m.get<const int32_t>(), B, Tq, Tk, NH, NKV, HS, causal,
                                  q_offset);
    }
    finish("attention_forward");
}

double t_sum_squares(const float *x, size_t n) {
    std::lock_guard<std::mutex> guard(op_lock);
    if (!ready()) return 0.0;
    return ca_cuda_sum_squares(x, n); /* synchronises itself */
}

/* The remaining ops take backend buffers only: run, then wait. */
#define CA_SYNC_OP(name, params, args)                                                                             \
    void t_##name params {                                                                                         \
        std::lock_guard<std::mutex> guard(op_lock);                                                                \
        if (!ready()) return;                                                                                      \
        ca_cuda_##name args;                                                                                       \
        finish(#name);                                                                                             \
    }

CA_SYNC_OP(rmsnorm_forward, (float *o, float *r, const float *x, const float *w, int N, int C, float eps),
           (o, r, x, w, N, C, eps))
CA_SYNC_OP(rmsnorm_backward,
           (float *dx, float *dw, const float *dy, const float *x, const float *w, const float *r, int N, int C),
           (dx, dw, dy, x, w, r, N, C))
CA_SYNC_OP(shortconv_forward,
           (float *y, float *u, float *c, const float *z, const float *w, const float *s, int B, int T, int C, int L),
           (y, u, c, z, w, s, B, T, C, L))
CA_SYNC_OP(shortconv_backward,
           (float *dz, float *dw, const float *dy, const float *z, const float *u, const float *c, const float *w,
            int B, int T, int C, int L),
           (dz, dw, dy, z, u, c, w, B, T, C, L))
CA_SYNC_OP(attention_backward,
           (float *dq, float *dk, float *dv, const float *dy, const float *q, const float *k, const float *v,
            const float *a, int B, int Tq, int Tk, int NH, int NKV, int HS),
           (dq, dk, dv, dy, q, k, v, a, B, Tq, Tk, NH, NKV, HS))
CA_SYNC_OP(swiglu_forward, (float *o, const float *g, const float *u, int N, int Fd), (o, g, u, N, Fd))
CA_SYNC_OP(swiglu_backward, (float *dg, float *du, const float *dy, const float *g, const float *u, int N, int Fd),
           (dg, du, dy, g, u, N, Fd))
CA_SYNC_OP(add_inplace, (float *y, const float *x, size_t n), (y, x, n))
CA_SYNC_OP(scale_inplace, (float *y, float s, size_t n), (y, s, n))
CA_SYNC_OP(zero, (float *y, size_t n), (y, n))
CA_SYNC_OP(lora_forward,
           (float *o, float *h, const float *x, const float *A, const float *B, float s, int N, int C, int OC, int r),
           (o, h, x, A, B, s, N, C, OC, r))
CA_SYNC_OP(lora_backward,
           (float *dx, float *dA, float *dB, float *dh, const float *dy, const float *x, const float *h, const float *A,
            const float *B, float s, int N, int C, int OC, int r),
           (dx, dA, dB, dh, dy, x, h, A, B, s, N, C, OC, r))
CA_SYNC_OP(lora_merge, (float *W, const float *A, const float *B, float s, int C, int OC, int r),
           (W, A, B, s, C, OC, r))
CA_SYNC_OP(dropout_forward, (float *o, const float *x, size_t n, float p, uint64_t seed), (o, x, n, p, seed))
CA_SYNC_OP(dropout_backward, (float *o, const float *x, size_t n, float p, uint64_t seed), (o, x, n, p, seed))
CA_SYNC_OP(adamw_update,
           (float *p, float *m, float *v, const float *g, size_t n, float lr, float b1, float b2, float eps, float wd,
            int step, float gs),
           (p, m, v, g, n, lr, b1, b2, eps, wd, step, gs))
CA_SYNC_OP(layernorm_forward,
           (float *o, float *mu, float *r, const float *x, const float *w, const float *b, int N, int C, float eps),
           (o, mu, r, x, w, b, N, C, eps))
CA_SYNC_OP(layernorm_backward,
           (float *dx, float *dw, float *db, const float *dy, const float *x, const float *w, const float *mu,
            const float *r, int N, int C),
           (dx, dw, db, dy, x, w, mu, r, N, C))
CA_SYNC_OP(gelu_forward, (float *o, const float *x, size_t n, int t), (o, x, n, t))
CA_SYNC_OP(gelu_backward, (float *dx, const float *dy, const float *x, size_t n, int t), (dx, dy, x, n, t))
CA_SYNC_OP(posresize_forward, (float *o, const float *t, int Hi, int Wi, int Ho, int Wo, int C),
           (o, t, Hi, Wi, Ho, Wo, C))
CA_SYNC_OP(posresize_backward, (float *dt, const float *dy, int Hi, int Wi, int Ho, int Wo, int C),
           (dt, dy, Hi, Wi, Ho, Wo, C))
CA_SYNC_OP(unshuffle_forward, (float *o, const float *x, int H, int W, int C, int f), (o, x, H, W, C, f))
CA_SYNC_OP(unshuffle_backward, (float *dx, const float *dy, int H, int W, int C, int f), (dx, dy, H, W, C, f))
CA_SYNC_OP(mha_forward, (float *o, float *a, const float *q, const float *k, const float *v, int T, int NH, int HS),
           (o, a, q, k, v, T, NH, HS))
CA_SYNC_OP(mha_backward,
           (float *dq, float *dk, float *dv, float *s, const float *dy, const float *q, const float *k, const float *v,
            const float *a, int T, int NH, int HS),
           (dq, dk, dv, s, dy, q, k, v, a, T, NH, HS))

#undef CA_SYNC_OP

ca_backend make_table() {
    ca_backend b = {};
    b.name = "cuda";
    b.alloc = t_alloc;
    b.free = t_free;
    b.copy = t_copy;
    b.embedding_forward = t_embedding_forward;
    b.embedding_backward = t_embedding_backward;
    b.rmsnorm_forward = t_rmsnorm_forward;
    b.rmsnorm_backward = t_rmsnorm_backward;
    b.linear_forward = t_linear_forward;
    b.linear_backward = t_linear_backward;
    b.shortconv_forward = t_shortconv_forward;
    b.shortconv_backward = t_shortconv_backward;
    b.rope_forward = t_rope_forward;
    b.rope_backward = t_rope_backward;
    b.attention_forward = t_attention_forward;
    b.attention_backward = t_attention_backward;
    b.swiglu_forward = t_swiglu_forward;
    b.swiglu_backward = t_swiglu_backward;
    b.crossentropy_forward = t_crossentropy_forward;
    b.crossentropy_backward = t_crossentropy_backward;
    b.add_inplace = t_add_inplace;
    b.scale_inplace = t_scale_inplace;
    b.zero = t_zero;
    b.scatter_rows = t_scatter_rows;
    b.gather_rows = t_gather_rows;
    b.lora_forward = t_lora_forward;
    b.lora_backward = t_lora_backward;
    b.lora_merge = t_lora_merge;
    b.dropout_forward = t_dropout_forward;
    b.dropout_backward = t_dropout_backward;
    b.adamw_update = t_adamw_update;
    b.sum_squares = t_sum_squares;
    b.layernorm_forward = t_layernorm_forward;
    b.layernorm_backward = t_layernorm_backward;
    b.gelu_forward = t_gelu_forward;
    b.gelu_backward = t_gelu_backward;
    b.posresize_forward = t_posresize_forward;
    b.posresize_backward = t_posresize_backward;
    b.unshuffle_forward = t_unshuffle_forward;
    b.unshuffle_backward = t_unshuffle_backward;
    b.mha_forward = t_mha_forward;
    b.mha_backward = t_mha_backward;
    b.status = t_status;
    return b;
}

} // namespace

extern "C" const ca_backend ca_cuda_backend = make_table();
