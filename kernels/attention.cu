/* Scaled dot-product attention with grouped KV heads (lfm2.md §2.5) and the SigLIP2 encoder's plain
 * multi-head attention, as csrc/cpu/attention.c and csrc/cpu/mha.c:
 *   S = q·kᵀ/sqrt(HS) over the visible keys,  P = softmax(S) (fp32, max-subtracted),  o = P·v
 * Query head h reads KV head h / (NH/NKV). Query t sits at position q_offset + t and, when causal, sees keys
 * j ≤ q_offset + t; key_mask[b, j] = 0 hides key j. A query that sees no key gets P = 0 and o = 0.
 *
 * The op contract caches P (B, NH, Tq, Tk) for the backward, so the prefill kernel is fused per query row:
 * one block per (b, h, t) computes its scores (one warp per key, lanes over HS), the softmax and P·v in one
 * launch, with P written once. Decoding over a KV cache without that cache goes through
 * ca_cuda_attention_decode: the keys split into chunks, each block a partial softmax (max, sum, P·v) of its
 * chunk, merged by a second kernel with the log-sum-exp rule (flash-decoding).
 * Layouts are the projections' natural (B, T, heads, HS). */
#include "cuda_internal.cuh"

#define ATT_THREADS 128 /* 4 warps */
#define ATT_WARPS (ATT_THREADS / CA_WARP)

/* q·k over HS by one warp; every lane gets the sum */
__device__ __forceinline__ float warp_dot(const float *a, const float *b, int HS) {
    float s = 0.0f;
    for (int d = threadIdx.x % CA_WARP; d < HS; d += CA_WARP) s += a[d] * b[d];
    return ca_warp_sum(s);
}

/* grid (Tq, NH, B); dynamic shared memory: HS floats (the query row) */
__global__ void attention_forward_kernel(float *out, float *att, const float *q, const float *k, const float *v,
                                         const int32_t *key_mask, int Tq, int Tk, int NH, int NKV, int HS, int causal,
                                         int q_offset, float scale) {
    extern __shared__ float q_row[];
    __shared__ float shared[32];
    const int t = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int g = h / (NH / NKV), lane = threadIdx.x % CA_WARP, warp = threadIdx.x / CA_WARP;
    const float *qt = q + (((size_t)b * Tq + t) * NH + h) * HS;
    float *p = att + (((size_t)b * NH + h) * Tq + t) * Tk;
    float *o = out + (((size_t)b * Tq + t) * NH + h) * HS;
    const int32_t *km = key_mask ? key_mask + (size_t)b * Tk : nullptr;
    const long long lim = causal ? (long long)q_offset + t + 1 : Tk; /* keys [0, jend) may be visible */
    const int jend = lim < 0 ? 0 : (lim > Tk ? Tk : (int)lim);

    for (int d = threadIdx.x; d < HS; d += blockDim.x) q_row[d] = qt[d];
    __syncthreads();
    /* scores: warp w takes keys w, w + ATT_WARPS, ... */
    float mx = -INFINITY;
    for (int j = warp; j < jend; j += ATT_WARPS) {
        float s = -INFINITY;
        if (!km || km[j]) s = warp_dot(q_row, k + (((size_t)b * Tk + j) * NKV + g) * HS, HS) * scale;
        if (lane == 0) p[j] = s;
        mx = fmaxf(mx, s);
    }
    for (int j = jend + threadIdx.x; j < Tk; j += blockDim.x) p[j] = 0.0f;
    mx = ca_block_max(mx, shared); /* its barriers also publish the p[] writes to the block */
    if (mx == -INFINITY) {         /* no visible key (block-uniform) */
        for (int j = threadIdx.x; j < jend; j += blockDim.x) p[j] = 0.0f;
        for (int d = threadIdx.x; d < HS; d += blockDim.x) o[d] = 0.0f;
        return;
    }
    float sum = 0.0f;
    for (int j = threadIdx.x; j < jend; j += blockDim.x) {
        float e = p[j] == -INFINITY ? 0.0f : expf(p[j] - mx);
        p[j] = e;
        sum += e;
    }
    sum = ca_block_sum(sum, shared); /* ≥ 1: the max term contributes exp(0) */
    const float inv = 1.0f / sum;
    for (int j = threadIdx.x; j < jend; j += blockDim.x) p[j] *= inv;
    __syncthreads();
    /* o[d] = Σ_j P_j v_j[d]: threads over d, keys in order */
    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < jend; j++) acc += p[j] * v[(((size_t)b * Tk + j) * NKV + g) * HS + d];
        o[d] = acc;
    }
}

/* Backward, step 1, grid (Tq, NH, B): dP_j = dO_t·v_j, D = Σ_j P_j dP_j, dS_j = P_j (dP_j − D)·scale (stored in
 * ds, laid out like att), dq_t = Σ_j dS_j k_j. Keys with P = 0 (masked, beyond the causal limit) give dS = 0. */
__global__ void attention_backward_dq_kernel(float *dq, float *ds, const float *dout, const float *k, const float *v,
                                             const float *att, int Tq, int Tk, int NH, int NKV, int HS, float scale) {
    __shared__ float shared[32];
    const int t = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int g = h / (NH / NKV), lane = threadIdx.x % CA_WARP, warp = threadIdx.x / CA_WARP;
    const size_t qoff = (((size_t)b * Tq + t) * NH + h) * HS;
    const float *p = att + (((size_t)b * NH + h) * Tq + t) * Tk;
    float *dsr = ds + (((size_t)b * NH + h) * Tq + t) * Tk;
    const float *dot = dout + qoff;
    float D = 0.0f; /* lane 0 of each warp accumulates its keys' P·dP */
    for (int j = warp; j < Tk; j += ATT_WARPS) {
        float dp = 0.0f;
        if (p[j] != 0.0f) dp = warp_dot(dot, v + (((size_t)b * Tk + j) * NKV + g) * HS, HS);
        if (lane == 0) {
            dsr[j] = dp;
            D += p[j] * dp;
        }
    }
    D = ca_block_sum(lane == 0 ? D : 0.0f, shared); /* barriers publish dsr */
    for (int j = threadIdx.x; j < Tk; j += blockDim.x) dsr[j] = p[j] * (dsr[j] - D) * scale;
    __syncthreads();
    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < Tk; j++) acc += dsr[j] * k[(((size_t)b * Tk + j) * NKV + g) * HS + d];
        dq[qoff + d] = acc;
    }
}

/* Backward, step 2, grid (Tk, NKV, B), threads over d: dk_j = Σ_{h∈group, t} dS_tj q_t,
 * dv_j = Σ_{h∈group, t} P_tj dO_t. Each (b, j, g) is owned by one block: written (=), no atomics. */
__global__ void attention_backward_dkv_kernel(float *dk, float *dv, const float *ds, const float *dout, const float *q,
                                              const float *att, int Tq, int Tk, int NH, int NKV, int HS) {
    const int j = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
    const int group = NH / NKV;
    const size_t kvoff = (((size_t)b * Tk + j) * NKV + g) * HS;
    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        float dk_acc = 0.0f, dv_acc = 0.0f;
        for (int h = g * group; h < (g + 1) * group; h++) {
            const size_t prow = ((size_t)b * NH + h) * Tq;
            for (int t = 0; t < Tq; t++) {
                const float pj = att[(prow + t) * Tk + j];
                if (pj == 0.0f) continue;
                const size_t qoff = (((size_t)b * Tq + t) * NH + h) * HS;
                dk_acc += ds[(prow + t) * Tk + j] * q[qoff + d];
                dv_acc += pj * dout[qoff + d];
            }
        }
        dk[kvoff + d] = dk_acc;
        dv[kvoff + d] = dv_acc;
    }
}

static unsigned int head_threads(int HS) {
    unsigned int t = (unsigned int)((HS + 31) / 32 * 32);
    return t > CA_BLOCK ? CA_BLOCK : t;
}

static bool grid_fits(int x, int y, int z) { return x <= 0x7fffffff && y <= 65535 && z <= 65535; }

extern "C" void ca_cuda_attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                                          const int32_t *key_mask, int B, int Tq, int Tk, int NH, int NKV, int HS,
                                          int causal, int q_offset) {
    if (B <= 0 || Tq <= 0 || NH <= 0 || NKV <= 0 || HS <= 0 || ca_cuda_failed()) return;
    if (!grid_fits(Tq, NH, B)) {
        ca_cuda_record_error("attention_forward", "grid too large (B or NH above 65535)");
        return;
    }
    const float scale = 1.0f / sqrtf((float)HS);
    attention_forward_kernel<<<dim3(Tq, NH, B), ATT_THREADS, (size_t)HS * sizeof(float), ca_cuda_stream()>>>(
        out, att, q, k, v, key_mask, Tq, Tk, NH, NKV, HS, causal, q_offset, scale);
    CA_CUDA_LAUNCHED("attention_forward");
}

/* ds: (B, NH, Tq, Tk) scratch for dS */
static void attention_backward(float *dq, float *dk, float *dv, float *ds, const float *dout, const float *q,
                               const float *k, const float *v, const float *att, int B, int Tq, int Tk, int NH,
                               int NKV, int HS) {
    if (!grid_fits(Tq, NH, B) || !grid_fits(Tk, NKV, B)) {
        ca_cuda_record_error("attention_backward", "grid too large (B or NH above 65535)");
        return;
    }
    const float scale = 1.0f / sqrtf((float)HS);
    attention_backward_dq_kernel<<<dim3(Tq, NH, B), ATT_THREADS, 0, ca_cuda_stream()>>>(dq, ds, dout, k, v, att, Tq,
                                                                                         Tk, NH, NKV, HS, scale);
    if (!CA_CUDA_LAUNCHED("attention_backward (dq)")) return;
    attention_backward_dkv_kernel<<<dim3(Tk, NKV, B), head_threads(HS), 0, ca_cuda_stream()>>>(dk, dv, ds, dout, q,
                                                                                                att, Tq, Tk, NH, NKV,
                                                                                                HS);
    CA_CUDA_LAUNCHED("attention_backward (dk, dv)");
}

extern "C" void ca_cuda_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                           const float *k, const float *v, const float *att, int B, int Tq, int Tk,
                                           int NH, int NKV, int HS) {
    if (B <= 0 || NH <= 0 || NKV <= 0 || HS <= 0 || ca_cuda_failed()) return;
    if (Tq <= 0 || Tk <= 0) { /* nothing attended: the written gradients are zero */
        if (Tq > 0) ca_cuda_zero(dq, (size_t)B * Tq * NH * HS);
        if (Tk > 0) ca_cuda_zero(dk, (size_t)B * Tk * NKV * HS), ca_cuda_zero(dv, (size_t)B * Tk * NKV * HS);
        return;
    }
    float *ds = (float *)ca_cuda_workspace((size_t)B * NH * Tq * Tk * sizeof(float));
    if (!ds) return;
    attention_backward(dq, dk, dv, ds, dout, q, k, v, att, B, Tq, Tk, NH, NKV, HS);
}

/* ---- SigLIP2 encoder attention: one sequence, every key visible, NKV = NH ---- */

extern "C" void ca_cuda_mha_forward(float *out, float *att, const float *q, const float *k, const float *v, int T,
                                    int NH, int HS) {
    /* (T, NH, HS) is (B = 1, T, NH, HS) and (NH, T, T) is (1, NH, T, T) */
    ca_cuda_attention_forward(out, att, q, k, v, nullptr, 1, T, T, NH, NH, HS, 0, 0);
}

extern "C" void ca_cuda_mha_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                                     const float *q, const float *k, const float *v, const float *att, int T, int NH,
                                     int HS) {
    if (T <= 0 || NH <= 0 || HS <= 0 || ca_cuda_failed()) return;
    attention_backward(dq, dk, dv, scratch, dout, q, k, v, att, 1, T, T, NH, NH, HS);
}

/* ---- decoding over a KV cache (flash-decoding) ---- */

#define DEC_CHUNK 256 /* keys per partial block */

/* grid (chunks, NH, B): partial softmax over keys [c·DEC_CHUNK, …) of the query at position Tk − 1:
 * part_m = max score, part_l = Σ exp(s − part_m), part_o[d] = Σ exp(s − part_m)·v[d]. Dynamic shared memory:
 * HS (query) + DEC_CHUNK (weights) floats. */
__global__ void attention_decode_partial_kernel(float *part_o, float *part_m, float *part_l, const float *q,
                                                const float *k, const float *v, int Tk, int NH, int NKV, int HS,
                                                float scale) {
    extern __shared__ float smem[];
    float *q_row = smem, *w = smem + HS;
    __shared__ float shared[32];
    const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, chunks = gridDim.x;
    const int g = h / (NH / NKV), lane = threadIdx.x % CA_WARP, warp = threadIdx.x / CA_WARP;
    const int j0 = c * DEC_CHUNK, j1 = min(Tk, j0 + DEC_CHUNK);
    const float *qt = q + ((size_t)b * NH + h) * HS;
    for (int d = threadIdx.x; d < HS; d += blockDim.x) q_row[d] = qt[d];
    __syncthreads();
    float mx = -INFINITY;
    for (int j = j0 + warp; j < j1; j += ATT_WARPS) {
        float s = warp_dot(q_row, k + (((size_t)b * Tk + j) * NKV + g) * HS, HS) * scale;
        if (lane == 0) w[j - j0] = s;
        mx = fmaxf(mx, s);
    }
    mx = ca_block_max(mx, shared);
    float sum = 0.0f;
    for (int j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
        float e = expf(w[j - j0] - mx);
        w[j - j0] = e;
        sum += e;
    }
    sum = ca_block_sum(sum, shared);
    const size_t slot = ((size_t)b * NH + h) * chunks + c;
    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = j0; j < j1; j++) acc += w[j - j0] * v[(((size_t)b * Tk + j) * NKV + g) * HS + d];
        part_o[slot * HS + d] = acc;
    }
    if (threadIdx.x == 0) {
        part_m[slot] = mx;
        part_l[slot] = sum;
    }
}

/* grid (NH, B): M = max_c m_c,  o = Σ_c e^{m_c − M}·o_c / Σ_c e^{m_c − M}·l_c */
__global__ void attention_decode_merge_kernel(float *out, const float *part_o, const float *part_m,
                                              const float *part_l, int chunks, int NH, int HS) {
    const int h = blockIdx.x, b = blockIdx.y;
    const size_t base = ((size_t)b * NH + h) * chunks;
    float M = -INFINITY;
    for (int c = 0; c < chunks; c++) M = fmaxf(M, part_m[base + c]);
    float L = 0.0f;
    for (int c = 0; c < chunks; c++) L += expf(part_m[base + c] - M) * part_l[base + c];
    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        float acc = 0.0f;
        for (int c = 0; c < chunks; c++) acc += expf(part_m[base + c] - M) * part_o[(base + c) * HS + d];
        out[((size_t)b * NH + h) * HS + d] = acc / L;
    }
}

extern "C" void ca_cuda_attention_decode(float *out, const float *q, const float *k, const float *v, int B, int Tk,
                                         int NH, int NKV, int HS) {
    if (B <= 0 || NH <= 0 || NKV <= 0 || HS <= 0 || ca_cuda_failed()) return;
    if (Tk <= 0) {
        ca_cuda_zero(out, (size_t)B * NH * HS);
        return;
    }
    if (!grid_fits(1, NH, B)) {
        ca_cuda_record_error("attention_decode", "grid too large (B or NH above 65535)");
        return;
    }
    const int chunks = (Tk + DEC_CHUNK - 1) / DEC_CHUNK;
    const size_t slots = (size_t)B * NH * chunks;
    float *part = (float *)ca_cuda_workspace(slots * (HS + 2) * sizeof(float));
    if (!part) return;
    float *part_o = part, *part_m = part + slots * HS, *part_l = part_m + slots;
    const float scale = 1.0f / sqrtf((float)HS);
    const size_t smem = ((size_t)HS + DEC_CHUNK) * sizeof(float);
    attention_decode_partial_kernel<<<dim3(chunks, NH, B), ATT_THREADS, smem, ca_cuda_stream()>>>(
        part_o, part_m, part_l, q, k, v, Tk, NH, NKV, HS, scale);
    if (!CA_CUDA_LAUNCHED("attention_decode (partial)")) return;
    attention_decode_merge_kernel<<<dim3(NH, B), head_threads(HS), 0, ca_cuda_stream()>>>(out, part_o, part_m, part_l,
                                                                                          chunks, NH, HS);
    CA_CUDA_LAUNCHED("attention_decode (merge)");
}
