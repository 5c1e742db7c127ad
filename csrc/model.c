/* LFM2 text model: parameter table, activation arena, forward, backward and checkpoint I/O.
 * The math of each op lives in csrc/cpu/ (and kernels/); this file only wires ops into the
 * architecture of lfm2.md §2:
 *
 *   h_0 = embed_tokens[ids]
 *   mid_l = h_l + mixer_l(operator_norm_l(h_l))          mixer = ShortConv or Attention
 *   h_{l+1} = mid_l + w2(silu(w1 x2) ⊙ w3 x2),  x2 = ffn_norm_l(mid_l)
 *   logits = embedding_norm(h_L) · lm_headᵀ               (lm_head tied to embed_tokens by default)
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "captionaura/ca_model.h"
#include "captionaura/ca_profile.h"
#include "captionaura/ca_safetensors.h"

/* ------------------------------------------------------------------------------------------------ */
/* parameter table                                                                                   */

/* The one place that knows LFM2's tensor names, shapes and their order in the flat buffer. */
static ca_status build_param_table(ca_lfm2_model *m, ca_param_table *tb) {
    const ca_lfm2_config *c = &m->cfg;
    const int64_t C = c->hidden_size, F = c->ffn_dim, V = c->vocab_size, HS = c->head_dim;
    const int64_t NH = c->num_attention_heads, NKV = c->num_key_value_heads, L = c->conv_L_cache;
    CA_TRY(ca_param_table_add(tb, &m->embed_tokens, 2, V, C, 0, "model.embed_tokens.weight"));
    for (int l = 0; l < c->num_hidden_layers; l++) {
        ca_lfm2_layer *w = &m->layers[l];
        w->is_attention = c->layer_is_attention[l];
        CA_TRY(ca_param_table_add(tb, &w->operator_norm, 1, C, 0, 0, "model.layers.%d.operator_norm.weight", l));
        if (w->is_attention) {
            CA_TRY(ca_param_table_add(tb, &w->q_proj, 2, NH * HS, C, 0, "model.layers.%d.self_attn.q_proj.weight", l));
            CA_TRY(ca_param_table_add(tb, &w->k_proj, 2, NKV * HS, C, 0, "model.layers.%d.self_attn.k_proj.weight", l));
            CA_TRY(ca_param_table_add(tb, &w->v_proj, 2, NKV * HS, C, 0, "model.layers.%d.self_attn.v_proj.weight", l));
            CA_TRY(ca_param_table_add(tb, &w->attn_out, 2, C, NH * HS, 0, "model.layers.%d.self_attn.out_proj.weight", l));
            CA_TRY(ca_param_table_add(tb, &w->q_norm, 1, HS, 0, 0, "model.layers.%d.self_attn.q_layernorm.weight", l));
            CA_TRY(ca_param_table_add(tb, &w->k_norm, 1, HS, 0, 0, "model.layers.%d.self_attn.k_layernorm.weight", l));
        } else {
            CA_TRY(ca_param_table_add(tb, &w->in_proj, 2, 3 * C, C, 0, "model.layers.%d.conv.in_proj.weight", l));
            CA_TRY(ca_param_table_add(tb, &w->conv, 3, C, 1, L, "model.layers.%d.conv.conv.weight", l));
            CA_TRY(ca_param_table_add(tb, &w->conv_out, 2, C, C, 0, "model.layers.%d.conv.out_proj.weight", l));
        }
        CA_TRY(ca_param_table_add(tb, &w->ffn_norm, 1, C, 0, 0, "model.layers.%d.ffn_norm.weight", l));
        CA_TRY(ca_param_table_add(tb, &w->w1, 2, F, C, 0, "model.layers.%d.feed_forward.w1.weight", l));
        CA_TRY(ca_param_table_add(tb, &w->w3, 2, F, C, 0, "model.layers.%d.feed_forward.w3.weight", l));
        CA_TRY(ca_param_table_add(tb, &w->w2, 2, C, F, 0, "model.layers.%d.feed_forward.w2.weight", l));
    }
    CA_TRY(ca_param_table_add(tb, &m->embedding_norm, 1, C, 0, 0, "model.embedding_norm.weight"));
    if (!c->tie_word_embeddings) CA_TRY(ca_param_table_add(tb, &m->lm_head, 2, V, C, 0, "lm_head.weight"));
    return CA_OK;
}

ca_status ca_lfm2_create(ca_lfm2_model **out, const ca_lfm2_config *cfg, const ca_backend *be) {
    *out = NULL;
    CA_TRY(ca_lfm2_config_validate(cfg));
    if (cfg->conv_bias) return ca_error(CA_ERR_UNSUPPORTED, "conv_bias=true is not supported (no LFM2 checkpoint uses it)");
    ca_lfm2_model *m = calloc(1, sizeof *m);
    if (!m) return ca_error(CA_ERR_NOMEM, "out of memory allocating the model");
    m->cfg = *cfg;
    m->be = be ? be : &ca_cpu_backend;
    m->layers = calloc((size_t)cfg->num_hidden_layers, sizeof *m->layers);
    m->lacts = calloc((size_t)cfg->num_hidden_layers, sizeof *m->lacts);
    m->lora_slot = malloc((size_t)cfg->num_hidden_layers * CA_NUM_PROJ * sizeof *m->lora_slot);
    m->lora_enabled = 1;
    ca_param_table tb = {0};
    ca_status st = (m->layers && m->lacts && m->lora_slot) ? CA_OK
                                                           : ca_error(CA_ERR_NOMEM, "out of memory allocating layers");
    for (int i = 0; m->lora_slot && i < cfg->num_hidden_layers * CA_NUM_PROJ; i++) m->lora_slot[i] = -1;
    if (st == CA_OK) st = build_param_table(m, &tb);
    if (st == CA_OK && !(m->trainable = malloc((size_t)tb.count)))
        st = ca_error(CA_ERR_NOMEM, "out of memory allocating the parameter table");
    if (st == CA_OK) {
        memset(m->trainable, 1, (size_t)tb.count);
        st = ca_param_table_bind(&tb, m->be, &m->params, &m->param_info, &m->num_param_tensors, &m->num_parameters);
    }
    if (st != CA_OK) {
        ca_param_table_discard(&tb);
        ca_lfm2_free(m);
        return st;
    }
    if (cfg->tie_word_embeddings) m->lm_head = m->embed_tokens;
    *out = m;
    return CA_OK;
}

static void drop_lowp(ca_lfm2_model *m);

void ca_lfm2_free(ca_lfm2_model *m) {
    if (!m) return;
    m->be->free(m->params);
    m->be->free(m->grads);
    m->be->free(m->acts);
    drop_lowp(m);
    ca_lfm2_lora_clear(m);
    free(m->param_info);
    free(m->trainable);
    free(m->lora_slot);
    free(m->layers);
    free(m->lacts);
    free(m);
}

int ca_lfm2_find_param(const ca_lfm2_model *m, const char *name) {
    return ca_param_find(m->param_info, m->num_param_tensors, name);
}

/* Moves every buffer to backend `be` (parameters, gradients, adapters; activations are re-made on the next
 * call). The parameter views are re-bound through a fresh table; copies are plain memcpy, so each backend's
 * memory must be host-addressable (the CUDA table's managed memory is). On failure nothing changes. */
ca_status ca_lfm2_set_backend(ca_lfm2_model *m, const ca_backend *be) {
    if (be == m->be) return CA_OK;
    if (m->params_bf16 || m->params_q8)
        return ca_error(CA_ERR_VALUE, "%s inference weights run on the CPU only: call to_inference_dtype('fp32') "
                                      "before moving the model to %s", ca_lfm2_inference_dtype(m), be->name);
    ca_param_table tb = {0};
    ca_status st = build_param_table(m, &tb); /* the same layout: only the views are re-pointed by the move */
    if (st != CA_OK) {
        ca_param_table_discard(&tb);
        return st;
    }
    ca_train_buffers bufs = {m->grads, m->lora_params, m->lora_grads};
    st = ca_params_move(&tb, m->be, be, &m->params, m->num_parameters, &bufs, m->lora_size, "model");
    if (st != CA_OK) return st;
    if (m->cfg.tie_word_embeddings) m->lm_head = m->embed_tokens;
    m->grads = bufs.grads;
    m->lora_params = bufs.lora_params;
    m->lora_grads = bufs.lora_grads;
    m->be->free(m->acts);
    m->acts = NULL;
    m->acts_floats = 0;
    m->act_B = m->act_T = 0;
    m->be = be;
    return CA_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* inference dtype                                                                                   */

static void drop_lowp(ca_lfm2_model *m) {
    ca_cpu_backend.free(m->params_bf16), ca_cpu_backend.free(m->params_q8), free(m->q8_scales), free(m->q8_scale_at);
    m->params_bf16 = NULL, m->params_q8 = NULL, m->q8_scales = NULL, m->q8_scale_at = NULL;
    m->lowp_stale = 0;
}

/* Tensor i's bf16 copy from its fp32 values, which are rounded in place, or given back (a matrix, drop_fp32). */
static void pack_bf16_tensor(ca_lfm2_model *m, int i, int drop_fp32) {
    const ca_param_info *p = &m->param_info[i];
    ca_params_pack_bf16(m->params_bf16 + p->offset, m->params + p->offset, p->numel, drop_fp32 && p->ndim == 2);
}

/* Reads tensor i into a bf16 model that gave back its fp32 weights: packed as it is read. */
static ca_status load_packing(ca_lfm2_model *m, int i, const ca_safetensors *file, const ca_st_tensor *t) {
    const ca_param_info *p = &m->param_info[i];
    if (p->ndim == 2) return ca_params_load_bf16(m->params_bf16 + p->offset, m->params + p->offset, p->numel, file, t);
    CA_TRY(ca_safetensors_read_f32(file, t, m->params + p->offset, p->numel));
    pack_bf16_tensor(m, i, 1);
    return CA_OK;
}

/* Rounds params to the inference dtype's values and packs them (bf16: all; int8: the 2-D tensors). With
 * drop_fp32 (bf16), each matrix's fp32 pages are given back as soon as it is packed, so that converting never
 * holds both copies of the weights at once. */
static void repack_lowp(ca_lfm2_model *m, int drop_fp32) {
    m->fp32_dropped = 0; /* params were (re)written whole: loading, init, merging */
    for (int i = 0; m->params_bf16 && i < m->num_param_tensors; i++) pack_bf16_tensor(m, i, drop_fp32);
    m->fp32_dropped = m->params_bf16 && drop_fp32;
    for (int i = 0; m->params_q8 && i < m->num_param_tensors; i++) {
        const ca_param_info *p = &m->param_info[i];
        if (p->ndim == 2)
            ca_cpu_q8_quantize_rows(m->params_q8 + p->offset, m->q8_scales + m->q8_scale_at[i], m->params + p->offset,
                                    (int)p->shape[0], (int)p->shape[1]);
    }
}

static int any_trainable(const ca_lfm2_model *m);

/* After an optimiser step on a bf16 model's base: the bf16 copy from the fp32 master weights (which keep their
 * small updates: params are not rounded in place here, as they are by set_inference_dtype) */
static void sync_lowp(ca_lfm2_model *m) {
    if (!m->lowp_stale || !m->params_bf16) return;
    ca_cpu_bf16_from_f32(m->params_bf16, m->params, m->num_parameters);
    m->lowp_stale = 0;
}

static ca_status check_drop_fp32(int bf16) {
    if (!bf16) return ca_error(CA_ERR_VALUE, "only a bf16 model can give back its fp32 weights");
    if (strcmp(ca_cpu_lowp_isa(), "avx512") != 0)
        return ca_error(CA_ERR_VALUE, "giving back the fp32 weights needs AVX512-BF16 (this CPU's bf16 GEMMs fall "
                                      "back to fp32 ones, which read them)");
    return CA_OK; /* training base parameters then refuses (loss_and_grad): they need their fp32 master weights */
}

/* The matrices' fp32 values back from the bf16 copy (exact: they were bf16 values). */
static void restore_fp32(ca_lfm2_model *m) {
    if (!m->fp32_dropped) return;
    for (int i = 0; i < m->num_param_tensors; i++) {
        const ca_param_info *p = &m->param_info[i];
        if (p->ndim == 2) ca_cpu_f32_from_bf16(m->params + p->offset, m->params_bf16 + p->offset, p->numel);
    }
    m->fp32_dropped = 0;
}

ca_status ca_lfm2_set_inference_dtype(ca_lfm2_model *m, const char *dtype, int keep_fp32) {
    const int bf16 = !strcmp(dtype, "bf16"), int8 = !strcmp(dtype, "int8");
    if (!bf16 && !int8 && strcmp(dtype, "fp32"))
        return ca_error(CA_ERR_VALUE, "inference dtype '%s' is not one of 'fp32', 'bf16', 'int8'", dtype);
    ca_status st;
    if (!keep_fp32 && (st = check_drop_fp32(bf16)) != CA_OK) return st;
    restore_fp32(m);
    if ((bf16 || int8) && m->be != &ca_cpu_backend && m->be != &ca_cpu_profiling_backend)
        return ca_error(CA_ERR_VALUE, "%s inference weights run on the CPU only (the model is on %s)", dtype,
                        m->be->name);
    drop_lowp(m);
    /* the packed copies come from the CPU allocator (huge pages: the decoding GEMVs stream them); the bf16 one is
     * not zeroed first, as repack_lowp writes it whole: its pages cost memory only as the conversion reaches them */
    if (bf16 && !(m->params_bf16 = ca_cpu_alloc_uninit(m->num_parameters * sizeof(uint16_t)))) goto nomem;
    if (int8) {
        size_t rows = 0;
        if (!(m->q8_scale_at = malloc((size_t)m->num_param_tensors * sizeof(size_t)))) goto nomem;
        for (int i = 0; i < m->num_param_tensors; i++) {
            m->q8_scale_at[i] = rows;
            if (m->param_info[i].ndim == 2) rows += (size_t)m->param_info[i].shape[0];
        }
        if (!(m->params_q8 = ca_cpu_backend.alloc(m->num_parameters)) || !(m->q8_scales = malloc((rows + 1) * sizeof(float))))
            goto nomem;
    }
    repack_lowp(m, !keep_fp32);
    return CA_OK;
nomem:
    drop_lowp(m);
    return ca_error(CA_ERR_NOMEM, "out of memory for %zu %s weights", m->num_parameters, dtype);
}

const char *ca_lfm2_inference_dtype(const ca_lfm2_model *m) {
    return m->params_bf16 ? "bf16" : m->params_q8 ? "int8" : "fp32";
}

/* ------------------------------------------------------------------------------------------------ */
/* seeded initialisation                                                                             */

ca_status ca_lfm2_init_random(ca_lfm2_model *m, uint64_t seed, float std) {
    ca_rng rng;
    ca_rng_seed(&rng, seed);
    for (int i = 0; i < m->num_param_tensors; i++) {
        const ca_param_info *p = &m->param_info[i];
        float *w = m->params + p->offset;
        if (p->ndim == 1) { /* norms start at one, as in transformers */
            for (size_t j = 0; j < p->numel; j++) w[j] = 1.0f;
            continue;
        }
        ca_rng_fill_normal(&rng, w, p->numel, std);
    }
    /* transformers zeroes the padding_idx row of the embedding at init */
    const ca_lfm2_config *c = &m->cfg;
    if (c->pad_token_id >= 0 && c->pad_token_id < c->vocab_size)
        memset(m->embed_tokens + (size_t)c->pad_token_id * c->hidden_size, 0, (size_t)c->hidden_size * sizeof(float));
    repack_lowp(m, 0);
    return CA_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* activation arena                                                                                  */

/* The largest adapter rank, and the largest input width among adapters with dropout (0 when none). */
static void lora_extents(const ca_lfm2_model *m, size_t *max_r, size_t *max_drop_in) {
    *max_r = *max_drop_in = 0;
    for (int i = 0; i < m->num_lora; i++) {
        if ((size_t)m->lora[i].r > *max_r) *max_r = (size_t)m->lora[i].r;
        if (m->lora[i].dropout > 0 && (size_t)m->lora[i].in > *max_drop_in) *max_drop_in = (size_t)m->lora[i].in;
    }
}

/* Float counts of the backward scratch slots (see backward_scratch, same order): dres and dx, then the slots only
 * layers use, which live in the LM head's logits block (free once the head is done). */
#define CA_SCRATCH_SLOTS 16
static void scratch_sizes(const ca_lfm2_model *m, size_t N, size_t sizes[CA_SCRATCH_SLOTS]) {
    const ca_lfm2_config *c = &m->cfg;
    const size_t C = c->hidden_size, F = c->ffn_dim;
    const size_t QD = (size_t)c->num_attention_heads * c->head_dim, KD = (size_t)c->num_key_value_heads * c->head_dim;
    size_t max_r = 0, max_drop_in = 0;
    lora_extents(m, &max_r, &max_drop_in);
    const size_t all[CA_SCRATCH_SLOTS] = {N * C,  N * C,  N * C,  N * F,  N * F,     N * F,           N * 3 * C,
                                          N * QD, N * QD, N * KD, N * KD, N * QD,    N * KD,          N * max_r,
                                          N * max_drop_in, N * max_drop_in};
    for (int i = 0; i < CA_SCRATCH_SLOTS; i++) sizes[i] = (all[i] + 15) & ~(size_t)15;
}

/* floats of one block of LM-head logits in training (32 MB: 128 rows of a 65536-token vocabulary; each block
 * streams the whole head weight through both GEMMs, so smaller blocks cost throughput) */
#define CA_HEAD_BLOCK_FLOATS ((size_t)8 << 20)

/* Lays out (or, with base == NULL, only measures) every activation buffer for (B, T). */
static size_t layout_acts(ca_lfm2_model *m, float *base, int B, int T) {
    const ca_lfm2_config *c = &m->cfg;
    const size_t N = (size_t)B * T, C = c->hidden_size, F = c->ffn_dim, V = c->vocab_size;
    const size_t QD = (size_t)c->num_attention_heads * c->head_dim, KD = (size_t)c->num_key_value_heads * c->head_dim;
    const size_t NH = c->num_attention_heads, NKV = c->num_key_value_heads;
    size_t used = 0;
#define CA_TAKE(ptr, count)                                                                        \
    do {                                                                                           \
        size_t n_ = ((count) + 15) & ~(size_t)15;                                                  \
        if (base) (ptr) = base + used;                                                             \
        used += n_;                                                                                \
    } while (0)
    /* cheap to recompute in backward, so every layer shares one buffer of each: the RMSNorm outputs x1 and x2
     * (x1 is used up before x2 is made), silu(gate)·up, the attention layers' normed and rotated q and k, and the
     * conv layers' B⊙x, conv output and C⊙conv (all three from the in_proj output z) */
    float *normed = NULL, *act = NULL, *qr = NULL, *kr = NULL, *u = NULL, *conv = NULL, *y = NULL;
    CA_TAKE(normed, N * C);
    CA_TAKE(act, N * F);
    CA_TAKE(qr, N * QD);
    CA_TAKE(kr, N * KD);
    CA_TAKE(u, N * C);
    CA_TAKE(conv, N * C);
    CA_TAKE(y, N * C);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        ca_lfm2_layer_acts a = {0};
        a.x1 = a.x2 = normed;
        CA_TAKE(a.rstd1, N);
        CA_TAKE(a.mid, N * C);
        CA_TAKE(a.rstd2, N);
        CA_TAKE(a.gate, N * F);
        CA_TAKE(a.up, N * F);
        a.act = act;
        if (c->layer_is_attention[l]) {
            CA_TAKE(a.q, N * QD);
            CA_TAKE(a.k, N * KD);
            CA_TAKE(a.v, N * KD);
            CA_TAKE(a.qrstd, N * NH);
            CA_TAKE(a.krstd, N * NKV);
            a.qr = qr;
            a.kr = kr;
            CA_TAKE(a.att, (size_t)B * NH * T * T);
            CA_TAKE(a.ao, N * QD);
        } else {
            CA_TAKE(a.z, N * 3 * C);
            a.u = u;
            a.c = conv;
            a.y = y;
        }
        if (base) m->lacts[l] = a;
    }
    CA_TAKE(m->hs, (size_t)(c->num_hidden_layers + 1) * N * C);
    CA_TAKE(m->xf, N * C);
    CA_TAKE(m->rstdf, N);
    /* the LM head and the loss run over blocks of rows: a (rows, V) block of at most CA_HEAD_BLOCK_FLOATS */
    const size_t max_rows = V >= CA_HEAD_BLOCK_FLOATS ? 1 : CA_HEAD_BLOCK_FLOATS / V;
    const size_t head_rows = max_rows < N ? max_rows : N;
    if (base) m->head_rows = (int)head_rows;
    size_t sizes[CA_SCRATCH_SLOTS], layer_scratch = 0;
    scratch_sizes(m, N, sizes);
    for (int i = 2; i < CA_SCRATCH_SLOTS; i++) layer_scratch += sizes[i];
    CA_TAKE(m->logits, head_rows * V > layer_scratch ? head_rows * V : layer_scratch);
    CA_TAKE(m->head_x, head_rows * C);
    CA_TAKE(m->head_dx, head_rows * C);
    size_t max_r = 0, max_drop_in = 0;
    lora_extents(m, &max_r, &max_drop_in);
    for (int i = 0; i < m->num_lora; i++) CA_TAKE(m->lora[i].h, N * m->lora[i].r);
    CA_TAKE(m->lora_xdrop, N * max_drop_in);
    float *ints = NULL;
    CA_TAKE(ints, 5 * N); /* positions, targets, mask, head_index, head_targets as int32 */
    if (base) {
        m->pos = (int32_t *)ints;
        m->targets = m->pos + N;
        m->mask = m->targets + N;
        m->head_index = m->mask + N;
        m->head_targets = m->head_index + N;
    }
#undef CA_TAKE
    return used;
}

static ca_status ensure_acts(ca_lfm2_model *m, int B, int T) {
    if (m->acts && B == m->act_B && T == m->act_T) return CA_OK;
    size_t need = layout_acts(m, NULL, B, T);
    if (!m->acts || need > m->acts_floats) {
        m->be->free(m->acts);
        m->acts = m->be->alloc(need * sizeof(float));
        if (!m->acts) {
            m->acts_floats = 0;
            m->act_B = m->act_T = 0;
            return ca_error(CA_ERR_NOMEM, "out of memory allocating activations for batch %d x %d tokens (%.1f MB)",
                            B, T, need * 4.0 / 1e6);
        }
        m->acts_floats = need;
    }
    layout_acts(m, m->acts, B, T);
    m->act_B = B;
    m->act_T = T;
    return CA_OK;
}



/* Scratch for backward: gradients of one layer's activations, reused layer after layer. */
typedef struct {
    float *dres;  /* (N, C) gradient of the residual stream */
    float *dx;    /* (N, C) gradient of a norm's output */
    float *dmix;  /* (N, C) gradient of the conv gated output y */
    float *dgate; /* (N, F) */
    float *dup;   /* (N, F) */
    float *dact;  /* (N, F) */
    float *dz;    /* (N, 3C) */
    float *dao;   /* (N, NH*HS) */
    float *dq;    /* (N, NH*HS) */
    float *dk;    /* (N, NKV*HS) */
    float *dv;    /* (N, NKV*HS) */
    float *dqraw; /* (N, NH*HS) */
    float *dkraw; /* (N, NKV*HS) */
    float *dh;    /* (N, max r) LoRA */
    float *xdrop; /* (N, max in) LoRA input after dropout, regenerated */
    float *dxl;   /* (N, max in) LoRA input gradient before dropout's backward */
    float *base;  /* dres and dx (the other slots are in m->logits) */
    int input_grad; /* whether layer 0 passes a gradient down to its input (else its first projections skip it) */
} backward_scratch;

/* dres and dx get their own memory; the layers' slots share the logits block, whose rows are dead by then */
static ca_status scratch_alloc(const ca_lfm2_model *m, backward_scratch *s, int B, int T) {
    size_t sizes[CA_SCRATCH_SLOTS];
    scratch_sizes(m, (size_t)B * T, sizes);
    float **slots[CA_SCRATCH_SLOTS] = {&s->dres, &s->dx, &s->dmix, &s->dgate, &s->dup, &s->dact, &s->dz, &s->dao,
                                       &s->dq, &s->dk, &s->dv, &s->dqraw, &s->dkraw, &s->dh, &s->xdrop, &s->dxl};
    s->base = m->be->alloc((sizes[0] + sizes[1]) * sizeof(float));
    if (!s->base)
        return ca_error(CA_ERR_NOMEM, "out of memory allocating backward scratch (%.1f MB)",
                        (sizes[0] + sizes[1]) * 4.0 / 1e6);
    s->dres = s->base;
    s->dx = s->base + sizes[0];
    size_t used = 0;
    for (int i = 2; i < CA_SCRATCH_SLOTS; i++) {
        *slots[i] = m->logits + used;
        used += sizes[i];
    }
    return CA_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* projections: the one choke point where every linear of a decoder layer runs, LoRA included          */

/* The gradient slot of a parameter view, or NULL when its tensor is frozen (or gradients are off). */
static float *grad_of(const ca_lfm2_model *m, const float *param) {
    if (!m->grads) return NULL;
    size_t offset = (size_t)(param - m->params);
    int lo = 0, hi = m->num_param_tensors - 1; /* the table is sorted by offset */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (m->param_info[mid].offset <= offset) lo = mid;
        else hi = mid - 1;
    }
    return m->trainable[lo] ? m->grads + offset : NULL;
}

static int any_trainable(const ca_lfm2_model *m) {
    for (int i = 0; i < m->num_param_tensors; i++)
        if (m->trainable[i]) return 1;
    return 0;
}

static const char *const proj_names[CA_NUM_PROJ] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "conv.in_proj",
    "conv.out_proj", "feed_forward.w1", "feed_forward.w3", "feed_forward.w2",
};

const char *ca_lfm2_proj_name(ca_lfm2_proj proj) {
    return proj >= 0 && proj < CA_NUM_PROJ ? proj_names[proj] : "?";
}

/* The weight (out, in) of projection `proj` of layer `l`, or NULL when the layer's kind has none. */
static float *proj_weight(const ca_lfm2_model *m, int l, ca_lfm2_proj proj, int *in, int *out) {
    const ca_lfm2_config *c = &m->cfg;
    const ca_lfm2_layer *w = &m->layers[l];
    const int C = c->hidden_size, F = c->ffn_dim, QD = c->num_attention_heads * c->head_dim;
    const int KD = c->num_key_value_heads * c->head_dim;
    switch (proj) {
    case CA_PROJ_Q: *in = C, *out = QD; return w->q_proj;
    case CA_PROJ_K: *in = C, *out = KD; return w->k_proj;
    case CA_PROJ_V: *in = C, *out = KD; return w->v_proj;
    case CA_PROJ_ATTN_OUT: *in = QD, *out = C; return w->attn_out;
    case CA_PROJ_IN: *in = C, *out = 3 * C; return w->in_proj;
    case CA_PROJ_CONV_OUT: *in = C, *out = C; return w->conv_out;
    case CA_PROJ_W1: *in = C, *out = F; return w->w1;
    case CA_PROJ_W3: *in = C, *out = F; return w->w3;
    case CA_PROJ_W2: *in = F, *out = C; return w->w2;
    default: return NULL;
    }
}

static const ca_lora_adapter *lora_at(const ca_lfm2_model *m, int l, ca_lfm2_proj proj) {
    if (!m->lora_enabled || !m->num_lora) return NULL;
    int slot = m->lora_slot[l * CA_NUM_PROJ + proj];
    return slot < 0 ? NULL : &m->lora[slot];
}

/* Each adapter draws its own dropout mask per step from (step seed, adapter index). */
static uint64_t lora_dropout_seed(const ca_lfm2_model *m, const ca_lora_adapter *a) {
    return m->dropout_seed * 0x100000001B3ull + (uint64_t)(a - m->lora) * 0x9E3779B97F4A7C15ull;
}

/* A bf16 kernel whose workspace could not be allocated falls back to the fp32 GEMM, except when the fp32 values
 * were dropped: then the pass is reported as out of memory at its end (ca_pass_status). */
static void lowp_failed(ca_lfm2_model *m, float *out, size_t n) {
    m->lowp_oom = 1;
    memset(out, 0, n * sizeof(float));
}

/* out (N, OC) = inp (N, C) · Wᵀ for a parameter matrix W: one token of inference (or a decoding step of several
 * sequences, row by row, so that a batch computes what one-by-one decoding does) goes through the
 * row-streaming GEMV (memory-bound) on the packed bf16 / int8 copy when there is one, else on the fp32 weights
 * (CPU backend); prompts and training go to the bf16 GEMM (inputs rounded to bf16) in bf16 and int8 modes, else
 * to the fp32 GEMM. */
static void head_forward(ca_lfm2_model *m, float *out, const float *inp, const float *W, int N, int C, int OC) {
    const size_t at = (size_t)(W - m->params);
    const int gemv = (N == 1 && !m->training) || m->decoding_step;
    if (m->params_bf16 && gemv) {
        ca_cpu_linear_bf16_forward(out, inp, m->params_bf16 + at, N, C, OC);
    } else if (m->params_q8) { /* W's tensor: the last one starting at or before `at` */
        int lo = 0, hi = m->num_param_tensors - 1;
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (m->param_info[mid].offset <= at) lo = mid;
            else hi = mid - 1;
        }
        const float *scale = m->q8_scales + m->q8_scale_at[lo];
        if (gemv) ca_cpu_linear_q8_forward(out, inp, m->params_q8 + at, scale, N, C, OC);
        else if (ca_cpu_linear_q8_gemm_forward(out, inp, m->params_q8 + at, scale, W, N, C, OC) != 0)
            m->be->linear_forward(out, inp, W, NULL, N, C, OC); /* (only when the GEMM's workspace is missing) */
    } else if (gemv && !m->params_bf16 && m->be == &ca_cpu_backend) {
        ca_cpu_linear_f32_gemv_forward(out, inp, W, N, C, OC);
    } else if (!m->params_bf16 || ca_cpu_linear_bf16_gemm_forward(out, inp, m->params_bf16 + at, W, N, C, OC) != 0) {
        if (m->fp32_dropped) lowp_failed(m, out, (size_t)N * OC);
        else m->be->linear_forward(out, inp, W, NULL, N, C, OC); /* (bf16: only when the GEMM's workspace is missing) */
    }
}

/* dinp (N, C) = or += dout (N, OC) · W, and dW += doutᵀ · inp when W trains. A bf16 model trains in mixed
 * precision: both through bf16 GEMMs (dout and inp rounded to bf16, fp32 sums), dW into the fp32 gradients. */
static void head_backward(ca_lfm2_model *m, float *dinp, const float *dout, const float *inp, const float *W, int N,
                          int C, int OC, int accumulate) {
    float *dW = grad_of(m, W);
    if (!m->params_bf16) {
        m->be->linear_backward(dinp, dW, NULL, dout, inp, W, N, C, OC, accumulate);
        return;
    } /* (each falls back to fp32 when its workspace cannot be allocated) */
    if (dinp && ca_cpu_linear_bf16_gemm_backward(dinp, dout, m->params_bf16 + (W - m->params), W, N, C, OC,
                                                 accumulate) != 0) {
        if (m->fp32_dropped) lowp_failed(m, dinp, (size_t)N * C);
        else m->be->linear_backward(dinp, NULL, NULL, dout, inp, W, N, C, OC, accumulate);
    }
    if (dW && ca_cpu_linear_bf16_gemm_weight_grad(dW, dout, inp, N, C, OC) != 0)
        m->be->linear_backward(NULL, dW, NULL, dout, inp, W, N, C, OC, 0);
}

/* out (N, outd) = inp (N, in) · Wᵀ  [+ s · B(A·dropout(inp)) when the projection has an adapter] */
static void proj_forward(ca_lfm2_model *m, int l, ca_lfm2_proj proj, float *out, const float *inp, int N) {
    int in, outd;
    const float *W = proj_weight(m, l, proj, &in, &outd);
    head_forward(m, out, inp, W, N, in, outd);
    const ca_lora_adapter *a = lora_at(m, l, proj);
    if (!a) return;
    const float *x = inp;
    if (a->dropout > 0 && m->training) {
        m->be->dropout_forward(m->lora_xdrop, inp, (size_t)N * in, a->dropout, lora_dropout_seed(m, a));
        x = m->lora_xdrop;
    }
    m->be->lora_forward(out, a->h, x, m->lora_params + a->a_offset, m->lora_params + a->b_offset, a->scaling, N, in,
                        outd, a->r);
}


/* dinp (= or += by accumulate) and the gradients of W and of the adapter, from dout (N, outd). */
static void proj_backward(ca_lfm2_model *m, int l, ca_lfm2_proj proj, float *dinp, const float *dout, const float *inp,
                          int N, int accumulate, backward_scratch *s) {
    int in, outd;
    const float *W = proj_weight(m, l, proj, &in, &outd);
    head_backward(m, dinp, dout, inp, W, N, in, outd, accumulate);
    const ca_lora_adapter *a = lora_at(m, l, proj);
    if (!a) return;
    const float *A = m->lora_params + a->a_offset, *Bw = m->lora_params + a->b_offset;
    float *dA = m->lora_freeze_A ? NULL : m->lora_grads + a->a_offset, *dB = m->lora_grads + a->b_offset;
    if (a->dropout > 0) {
        const uint64_t seed = lora_dropout_seed(m, a);
        const size_t n = (size_t)N * in;
        m->be->dropout_forward(s->xdrop, inp, n, a->dropout, seed);
        if (dinp) m->be->zero(s->dxl, n);
        m->be->lora_backward(dinp ? s->dxl : NULL, dA, dB, s->dh, dout, s->xdrop, a->h, A, Bw, a->scaling, N, in, outd,
                             a->r);
        if (!dinp) return;
        m->be->dropout_backward(s->dxl, s->dxl, n, a->dropout, seed);
        m->be->add_inplace(dinp, s->dxl, n);
    } else {
        m->be->lora_backward(dinp, dA, dB, s->dh, dout, inp, a->h, A, Bw, a->scaling, N, in, outd, a->r);
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* forward                                                                                           */

static ca_status check_tokens(const ca_lfm2_model *m, const int32_t *ids, const int32_t *mask, int B, int T) {
    if (B <= 0 || T <= 0) return ca_error(CA_ERR_VALUE, "input_ids is empty (batch %d, length %d)", B, T);
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            int32_t id = ids[(size_t)b * T + t];
            if (id < 0 || id >= m->cfg.vocab_size)
                return ca_error(CA_ERR_INDEX, "input_ids[%d, %d] = %d is outside the vocabulary [0, %d)", b, t, id,
                                m->cfg.vocab_size);
            if (mask && mask[(size_t)b * T + t] != 0 && mask[(size_t)b * T + t] != 1)
                return ca_error(CA_ERR_VALUE, "attention_mask[%d, %d] = %d; expected 0 or 1", b, t,
                                mask[(size_t)b * T + t]);
        }
    }
    return CA_OK;
}

/* transformers zeroes padded positions of a conv block's input when the mask has zeros and T > 1;
 * doing the same keeps padded rows identical to it. */
static int conv_masks_padding(const ca_lfm2_model *m, int B, int T) { return m->has_padding && T > 1; }

static void zero_masked_rows(const ca_lfm2_model *m, float *x, size_t width, int N) {
    for (int n = 0; n < N; n++)
        if (!m->mask[n]) m->be->zero(x + (size_t)n * width, width);
}

static void layer_forward(ca_lfm2_model *m, int l, int B, int T) {
    const ca_backend *be = m->be;
    const ca_lfm2_config *c = &m->cfg;
    const int N = B * T, C = c->hidden_size, F = c->ffn_dim, HS = c->head_dim;
    const int NH = c->num_attention_heads, NKV = c->num_key_value_heads;
    const float eps = (float)c->norm_eps;
    const ca_lfm2_layer *w = &m->layers[l];
    ca_lfm2_layer_acts *a = &m->lacts[l];
    const float *h = m->hs + (size_t)l * N * C;   /* (N, C) layer input */
    float *hout = m->hs + (size_t)(l + 1) * N * C; /* (N, C) layer output */

    be->rmsnorm_forward(a->x1, a->rstd1, h, w->operator_norm, N, C, eps);
    if (w->is_attention) {
        proj_forward(m, l, CA_PROJ_Q, a->q, a->x1, N);
        proj_forward(m, l, CA_PROJ_K, a->k, a->x1, N);
        proj_forward(m, l, CA_PROJ_V, a->v, a->x1, N);
        /* per-head RMSNorm over HS before RoPE (lfm2.md §2.5) */
        be->rmsnorm_forward(a->qr, a->qrstd, a->q, w->q_norm, N * NH, HS, eps);
        be->rmsnorm_forward(a->kr, a->krstd, a->k, w->k_norm, N * NKV, HS, eps);
        be->rope_forward(a->qr, a->qr, m->pos, N, NH, HS, (float)c->rope_theta);
        be->rope_forward(a->kr, a->kr, m->pos, N, NKV, HS, (float)c->rope_theta);
        be->attention_forward(a->ao, a->att, a->qr, a->kr, a->v, m->has_padding ? m->mask : NULL, B, T, T, NH, NKV,
                              HS, 1, 0);
        proj_forward(m, l, CA_PROJ_ATTN_OUT, a->mid, a->ao, N);
    } else {
        proj_forward(m, l, CA_PROJ_IN, a->z, a->x1, N);
        if (conv_masks_padding(m, B, T)) zero_masked_rows(m, a->z, (size_t)3 * C, N);
        be->shortconv_forward(a->y, a->u, a->c, a->z, w->conv, NULL, B, T, C, c->conv_L_cache);
        proj_forward(m, l, CA_PROJ_CONV_OUT, a->mid, a->y, N);
    }
    be->add_inplace(a->mid, h, (size_t)N * C);
    be->rmsnorm_forward(a->x2, a->rstd2, a->mid, w->ffn_norm, N, C, eps);
    proj_forward(m, l, CA_PROJ_W1, a->gate, a->x2, N);
    proj_forward(m, l, CA_PROJ_W3, a->up, a->x2, N);
    be->swiglu_forward(a->act, a->gate, a->up, N, F);
    proj_forward(m, l, CA_PROJ_W2, hout, a->act, N);
    be->add_inplace(hout, a->mid, (size_t)N * C);
}

static ca_status check_features(const ca_lfm2_model *m, const ca_lfm2_features *f, int N) {
    if (!f || f->count == 0) return CA_OK;
    if (f->count < 0 || !f->positions || !f->values) return ca_error(CA_ERR_VALUE, "malformed feature rows");
    unsigned char *seen = calloc((size_t)N, 1);
    if (!seen) return ca_error(CA_ERR_NOMEM, "out of memory checking feature positions");
    ca_status st = CA_OK;
    for (int p = 0; p < f->count && st == CA_OK; p++) {
        int32_t n = f->positions[p];
        if (n < 0 || n >= N) st = ca_error(CA_ERR_INDEX, "feature position %d is outside [0, %d)", n, N);
        else if (seen[n]++) st = ca_error(CA_ERR_VALUE, "feature position %d is given twice", n);
    }
    free(seen);
    return st;
}

void ca_lfm2_embed(ca_lfm2_model *m, float *out, const int32_t *ids, int N) {
    const int C = m->cfg.hidden_size;
    if (!m->fp32_dropped) {
        m->be->embedding_forward(out, ids, m->embed_tokens, N, C);
        return;
    }
    const uint16_t *table = m->params_bf16 + (m->embed_tokens - m->params);
    for (int n = 0; n < N; n++) ca_cpu_f32_from_bf16(out + (size_t)n * C, table + (size_t)ids[n] * C, (size_t)C);
}

/* Runs embedding → layers → final norm for validated inputs; leaves activations in the arena. */
static ca_status forward_body(ca_lfm2_model *m, const int32_t *ids, const int32_t *mask, int B, int T,
                              const ca_lfm2_features *features) {
    sync_lowp(m);
    CA_TRY(check_tokens(m, ids, mask, B, T));
    CA_TRY(check_features(m, features, B * T));
    CA_TRY(ensure_acts(m, B, T));
    const ca_lfm2_config *c = &m->cfg;
    const int N = B * T, C = c->hidden_size;
    m->has_padding = 0;
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            size_t n = (size_t)b * T + t;
            m->pos[n] = t; /* right padding: positions count from each sequence's start */
            m->mask[n] = mask ? mask[n] : 1;
            if (!m->mask[n]) m->has_padding = 1;
        }
    }
    ca_lfm2_embed(m, m->hs, ids, N);
    if (features && features->count)
        m->be->scatter_rows(m->hs, features->values, features->positions, features->count, C);
    for (int l = 0; l < c->num_hidden_layers; l++) layer_forward(m, l, B, T);
    m->be->rmsnorm_forward(m->xf, m->rstdf, m->hs + (size_t)c->num_hidden_layers * N * C, m->embedding_norm, N, C,
                           (float)c->norm_eps);
    return CA_OK;
}

ca_status ca_lfm2_forward(ca_lfm2_model *m, float *logits, float *hidden, const int32_t *ids, const int32_t *mask,
                          int B, int T) {
    return ca_lfm2_forward_ex(m, logits, hidden, ids, mask, B, T, NULL);
}

ca_status ca_lfm2_forward_ex(ca_lfm2_model *m, float *logits, float *hidden, const int32_t *ids, const int32_t *mask,
                             int B, int T, const ca_lfm2_features *features) {
    CA_TRY(forward_body(m, ids, mask, B, T, features));
    const ca_lfm2_config *c = &m->cfg;
    const int N = B * T, C = c->hidden_size;
    if (logits) head_forward(m, logits, m->xf, m->lm_head, N, C, c->vocab_size); /* as the layers' projections */
    if (hidden) { /* transformers' layout: embeddings, layers 0..L-2, then the final-normed last layer */
        m->be->copy(hidden, m->hs, (size_t)c->num_hidden_layers * N * C * sizeof(float));
        m->be->copy(hidden + (size_t)c->num_hidden_layers * N * C, m->xf, (size_t)N * C * sizeof(float));
    }
    return ca_pass_status(&m->lowp_oom, m->be);
}

/* ------------------------------------------------------------------------------------------------ */
/* backward                                                                                          */


static void layer_backward(ca_lfm2_model *m, int l, int B, int T, backward_scratch *s) {
    const ca_backend *be = m->be;
    const ca_lfm2_config *c = &m->cfg;
    const int N = B * T, C = c->hidden_size, F = c->ffn_dim, HS = c->head_dim;
    const int NH = c->num_attention_heads, NKV = c->num_key_value_heads;
    const ca_lfm2_layer *w = &m->layers[l];
    ca_lfm2_layer_acts *a = &m->lacts[l];
    const float *h = m->hs + (size_t)l * N * C;
    const float eps = (float)c->norm_eps;

    /* FFN: hout = mid + w2·act  →  s->dres holds d hout on entry, d mid after the ffn_norm backward.
     * act and x2 live in buffers every layer shares: recompute this layer's (bit-identical to the forward) */
    be->swiglu_forward(a->act, a->gate, a->up, N, F);
    proj_backward(m, l, CA_PROJ_W2, s->dact, s->dres, a->act, N, 0, s);
    be->swiglu_backward(s->dgate, s->dup, s->dact, a->gate, a->up, N, F);
    be->rmsnorm_forward(a->x2, a->rstd2, a->mid, w->ffn_norm, N, C, eps);
    proj_backward(m, l, CA_PROJ_W1, s->dx, s->dgate, a->x2, N, 0, s);
    proj_backward(m, l, CA_PROJ_W3, s->dx, s->dup, a->x2, N, 1, s);
    be->rmsnorm_backward(s->dres, grad_of(m, w->ffn_norm), s->dx, a->mid, w->ffn_norm, a->rstd2, N, C);

    /* mixer: mid = h + mixer(x1); dx1 (into s->dx) only when something below layer 0 needs it */
    float *dx1 = l > 0 || s->input_grad ? s->dx : NULL;
    be->rmsnorm_forward(a->x1, a->rstd1, h, w->operator_norm, N, C, eps); /* x1 shares x2's buffer */
    if (w->is_attention) {
        proj_backward(m, l, CA_PROJ_ATTN_OUT, s->dao, s->dres, a->ao, N, 0, s);
        /* qr and kr as the forward made them */
        be->rmsnorm_forward(a->qr, a->qrstd, a->q, w->q_norm, N * NH, HS, eps);
        be->rmsnorm_forward(a->kr, a->krstd, a->k, w->k_norm, N * NKV, HS, eps);
        be->rope_forward(a->qr, a->qr, m->pos, N, NH, HS, (float)c->rope_theta);
        be->rope_forward(a->kr, a->kr, m->pos, N, NKV, HS, (float)c->rope_theta);
        be->attention_backward(s->dq, s->dk, s->dv, s->dao, a->qr, a->kr, a->v, a->att, B, T, T, NH, NKV, HS);
        be->rope_backward(s->dq, s->dq, m->pos, N, NH, HS, (float)c->rope_theta);
        be->rope_backward(s->dk, s->dk, m->pos, N, NKV, HS, (float)c->rope_theta);
        be->zero(s->dqraw, (size_t)N * NH * HS);
        be->zero(s->dkraw, (size_t)N * NKV * HS);
        be->rmsnorm_backward(s->dqraw, grad_of(m, w->q_norm), s->dq, a->q, w->q_norm, a->qrstd, N * NH, HS);
        be->rmsnorm_backward(s->dkraw, grad_of(m, w->k_norm), s->dk, a->k, w->k_norm, a->krstd, N * NKV, HS);
        proj_backward(m, l, CA_PROJ_Q, dx1, s->dqraw, a->x1, N, 0, s);
        proj_backward(m, l, CA_PROJ_K, dx1, s->dkraw, a->x1, N, 1, s);
        proj_backward(m, l, CA_PROJ_V, dx1, s->dv, a->x1, N, 1, s);
    } else {
        be->shortconv_forward(a->y, a->u, a->c, a->z, w->conv, NULL, B, T, C, c->conv_L_cache); /* u, c, y anew */
        proj_backward(m, l, CA_PROJ_CONV_OUT, s->dmix, s->dres, a->y, N, 0, s);
        be->shortconv_backward(s->dz, grad_of(m, w->conv), s->dmix, a->z, a->u, a->c, w->conv, B, T, C,
                               c->conv_L_cache);
        if (conv_masks_padding(m, B, T)) zero_masked_rows(m, s->dz, (size_t)3 * C, N);
        proj_backward(m, l, CA_PROJ_IN, dx1, s->dz, a->x1, N, 0, s);
    }
    if (dx1) be->rmsnorm_backward(s->dres, grad_of(m, w->operator_norm), dx1, h, w->operator_norm, a->rstd1, N, C);
}

ca_status ca_lfm2_loss_and_grad(ca_lfm2_model *m, double *loss, const int32_t *ids, const int32_t *labels,
                                const int32_t *mask, int B, int T, int accumulate) {
    return ca_lfm2_loss_and_grad_ex(m, loss, ids, labels, mask, B, T, accumulate, NULL);
}

ca_status ca_lfm2_loss_and_grad_ex(ca_lfm2_model *m, double *loss, const int32_t *ids, const int32_t *labels,
                                   const int32_t *mask, int B, int T, int accumulate, ca_lfm2_features *features) {
    const ca_lfm2_config *c = &m->cfg;
    const int N = B * T, C = c->hidden_size, V = c->vocab_size;
    if (B <= 0 || T <= 0) return ca_error(CA_ERR_VALUE, "input_ids is empty (batch %d, length %d)", B, T);
    if (m->params_q8)
        return ca_error(CA_ERR_VALUE, "the model holds int8 inference weights: call to_inference_dtype('fp32') "
                                      "before training");
    if (m->fp32_dropped && any_trainable(m))
        return ca_error(CA_ERR_VALUE, "base parameters train (mixed precision needs their fp32 master weights) but "
                                      "they were dropped: add LoRA adapters, or call to_inference_dtype('bf16') to "
                                      "restore them");
    /* causal-LM shift: position t predicts labels[t+1]; the last position of each row predicts nothing */
    int64_t count = 0;
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            int32_t y = labels[(size_t)b * T + t];
            if (y != CA_IGNORE_INDEX && (y < 0 || y >= V))
                return ca_error(CA_ERR_INDEX, "labels[%d, %d] = %d is neither -100 nor a token id in [0, %d)", b, t, y,
                                V);
        }
    }
    m->dropout_seed++; /* a fresh dropout mask every step, the same in forward and backward */
    m->training = 1;
    ca_status st = forward_body(m, ids, mask, B, T, features);
    m->training = 0;
    CA_TRY(st);
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            int32_t y = t + 1 < T ? labels[(size_t)b * T + t + 1] : CA_IGNORE_INDEX;
            m->targets[(size_t)b * T + t] = y;
            if (y != CA_IGNORE_INDEX) {
                m->head_index[count] = b * T + t;
                m->head_targets[count] = y;
                count++;
            }
        }
    }
    if (count == 0) return ca_error(CA_ERR_VALUE, "labels leave no token to predict (all -100 after the shift)");

    /* gradients only for what trains: a frozen base under LoRA needs no full-size gradient buffer */
    if (any_trainable(m)) {
        if (!m->grads) {
            m->grads = m->be->alloc(m->num_parameters * sizeof(float));
            if (!m->grads) return ca_error(CA_ERR_NOMEM, "out of memory allocating gradients");
        } else if (!accumulate) {
            m->be->zero(m->grads, m->num_parameters);
        }
    }
    if (m->num_lora && m->lora_enabled && !accumulate) m->be->zero(m->lora_grads, m->lora_size);
    backward_scratch s;
    CA_TRY(scratch_alloc(m, &s, B, T));

    /* Only rows with a target reach the LM head (a caption's prompt and image rows have none and get dxf = 0).
     * They go in blocks of head_rows: x = xf[head_index], logits = x · lm_headᵀ, the loss and d logits in place,
     * dx = d logits · lm_head scattered back to dxf; dlm_head (when it trains) adds up over the blocks. */
    double loss_sum = 0.0;
    m->be->zero(s.dx, (size_t)N * C);
    for (int64_t r0 = 0; r0 < count; r0 += m->head_rows) {
        const int rows = count - r0 < m->head_rows ? (int)(count - r0) : m->head_rows;
        const int32_t *index = m->head_index + r0, *targets = m->head_targets + r0;
        m->be->gather_rows(m->head_x, m->xf, index, rows, C);
        head_forward(m, m->logits, m->head_x, m->lm_head, rows, C, V);
        loss_sum += m->be->crossentropy_forward(NULL, m->logits, targets, rows, V);
        m->be->crossentropy_backward(m->logits, m->logits, targets, (float)(1.0 / (double)count), rows, V);
        head_backward(m, m->head_dx, m->logits, m->head_x, m->lm_head, rows, C, V, 0);
        m->be->scatter_rows(s.dx, m->head_dx, index, rows, C);
    }
    *loss = loss_sum / (double)count;
    m->be->zero(s.dres, (size_t)N * C);
    m->be->rmsnorm_backward(s.dres, grad_of(m, m->embedding_norm), s.dx, m->hs + (size_t)c->num_hidden_layers * N * C,
                            m->embedding_norm, m->rstdf, N, C);
    /* the gradient of the layers' input feeds the embedding, the image features and layer 0's operator norm */
    s.input_grad = grad_of(m, m->embed_tokens) || (features && features->count && features->grad) ||
                   grad_of(m, m->layers[0].operator_norm);
    for (int l = c->num_hidden_layers - 1; l >= 0; l--) layer_backward(m, l, B, T, &s);
    /* the replaced embeddings took no part: their gradient goes to the features instead */
    if (features && features->count) {
        if (features->grad) m->be->gather_rows(features->grad, s.dres, features->positions, features->count, C);
        for (int p = 0; p < features->count; p++) m->be->zero(s.dres + (size_t)features->positions[p] * C, (size_t)C);
    }
    /* nn.Embedding(padding_idx=pad_token_id): looking up the pad token contributes no gradient */
    if (c->pad_token_id >= 0)
        for (int n = 0; n < N; n++)
            if (ids[n] == c->pad_token_id) m->be->zero(s.dres + (size_t)n * C, (size_t)C);
    float *dwte = grad_of(m, m->embed_tokens);
    if (dwte) m->be->embedding_backward(dwte, s.dres, ids, N, C);
    m->be->free(s.base);
    if (m->params_bf16 && any_trainable(m)) m->lowp_stale = 1; /* an optimiser step is to follow */
    return ca_pass_status(&m->lowp_oom, m->be);
}

/* ------------------------------------------------------------------------------------------------ */
/* checkpoints                                                                                       */

/* "model.x" → prefix + "x" (prefix NULL keeps the name). */
static void checkpoint_name(char *out, size_t cap, const char *name, const char *prefix) {
    if (prefix && strncmp(name, "model.", 6) == 0)
        snprintf(out, cap, "%s%s", prefix, name + 6);
    else
        snprintf(out, cap, "%s", name);
}

ca_status ca_lfm2_load_safetensors(ca_lfm2_model *m, const char *const *paths, int num_paths, const char *prefix) {
    if (num_paths <= 0) return ca_error(CA_ERR_VALUE, "no safetensors file given");
    /* A bf16 model without its fp32 weights packs each tensor as it is read, and gives the matrix's fp32 pages
     * back at once: loading holds the bf16 copy and one fp32 tensor, never the fp32 model. */
    const int dropping = m->fp32_dropped;
    ca_safetensors *files = calloc((size_t)num_paths, sizeof *files);
    if (!files) return ca_error(CA_ERR_NOMEM, "out of memory opening checkpoints");
    ca_status st = CA_OK;
    int opened = 0;
    for (; opened < num_paths && st == CA_OK; opened++) st = ca_safetensors_open(&files[opened], paths[opened]);
    if (st != CA_OK) opened--; /* the failed one closed itself */

    /* every tensor of the checkpoint must be used once (unused ones mean a config/checkpoint mismatch) */
    int total = 0;
    for (int f = 0; f < opened; f++) total += files[f].num_tensors;
    unsigned char *used = st == CA_OK ? calloc((size_t)total + 1, 1) : NULL;
    if (st == CA_OK && !used) st = ca_error(CA_ERR_NOMEM, "out of memory loading checkpoints");

    char name[CA_PARAM_NAME_MAX + 64];
    for (int i = 0; st == CA_OK && i < m->num_param_tensors; i++) {
        const ca_param_info *p = &m->param_info[i];
        checkpoint_name(name, sizeof name, p->name, prefix);
        const ca_st_tensor *found = NULL;
        int found_file = -1, base = 0;
        for (int f = 0; f < opened; f++) {
            const ca_st_tensor *t = ca_safetensors_find(&files[f], name);
            if (t) {
                if (found) {
                    st = ca_error(CA_ERR_FORMAT, "tensor '%s' appears in both %s and %s", name, files[found_file].path,
                                  files[f].path);
                    break;
                }
                found = t;
                found_file = f;
                used[base + (int)(t - files[f].tensors)] = 1;
            }
            base += files[f].num_tensors;
        }
        if (st != CA_OK) break;
        if (!found) {
            st = ca_error(CA_ERR_KEY, "checkpoint is missing tensor '%s'", name);
            break;
        }
        int same = found->ndim == p->ndim;
        for (int d = 0; same && d < p->ndim; d++) same = found->shape[d] == p->shape[d];
        if (!same) {
            char want[64], got[64];
            int wn = snprintf(want, sizeof want, "[");
            for (int d = 0; d < p->ndim; d++) wn += snprintf(want + wn, sizeof want - wn, d ? ", %lld" : "%lld", (long long)p->shape[d]);
            snprintf(want + wn, sizeof want - wn, "]");
            int gn = snprintf(got, sizeof got, "[");
            for (int d = 0; d < found->ndim && gn < (int)sizeof got - 24; d++)
                gn += snprintf(got + gn, sizeof got - gn, d ? ", %lld" : "%lld", (long long)found->shape[d]);
            snprintf(got + gn, sizeof got - gn, "]");
            st = ca_error(CA_ERR_SHAPE, "tensor '%s' has shape %s in %s but the config expects %s", name, got,
                          files[found_file].path, want);
            break;
        }
        st = dropping ? load_packing(m, i, &files[found_file], found)
                      : ca_safetensors_read_f32(&files[found_file], found, m->params + p->offset, p->numel);
    }
    /* unknown tensors that belong to this model (its prefix, or lm_head) are an error; a tied lm_head is fine */
    const char *own = prefix ? prefix : "model.";
    for (int f = 0, base = 0; st == CA_OK && f < opened; base += files[f].num_tensors, f++) {
        for (int j = 0; j < files[f].num_tensors; j++) {
            const char *tn = files[f].tensors[j].name;
            if (used[base + j]) continue;
            if (strcmp(tn, "lm_head.weight") == 0 && m->cfg.tie_word_embeddings) continue;
            if (strncmp(tn, own, strlen(own)) == 0 || strncmp(tn, "lm_head.", 8) == 0) {
                st = ca_error(CA_ERR_KEY, "checkpoint %s has unexpected tensor '%s' (not part of this config)",
                              files[f].path, tn);
                break;
            }
        }
    }
    free(used);
    for (int f = 0; f < opened; f++) ca_safetensors_close(&files[f]);
    free(files);
    if (!dropping) repack_lowp(m, 0);
    return st;
}

ca_status ca_lfm2_save_safetensors(const ca_lfm2_model *m, const char *path, const char *prefix) {
    if (m->fp32_dropped)
        return ca_error(CA_ERR_VALUE, "the fp32 weights were dropped: call to_inference_dtype('bf16') to restore them "
                                      "before saving");
    ca_st_item *items = calloc((size_t)m->num_param_tensors, sizeof *items);
    char(*names)[CA_PARAM_NAME_MAX + 64] = calloc((size_t)m->num_param_tensors, sizeof *names);
    if (!items || !names) {
        free(items);
        free(names);
        return ca_error(CA_ERR_NOMEM, "out of memory saving the checkpoint");
    }
    for (int i = 0; i < m->num_param_tensors; i++) {
        const ca_param_info *p = &m->param_info[i];
        checkpoint_name(names[i], sizeof names[i], p->name, prefix);
        items[i] = (ca_st_item){names[i], CA_DT_F32, p->ndim, p->shape, m->params + p->offset};
    }
    const char *metadata[] = {"format", "pt"};
    ca_status st = ca_safetensors_write(path, items, m->num_param_tensors, metadata, 1);
    free(items);
    free(names);
    return st;
}

/* ------------------------------------------------------------------------------------------------ */
/* LoRA adapters                                                                                     */

void ca_lfm2_lora_clear(ca_lfm2_model *m) {
    if (m->lora_params) m->be->free(m->lora_params);
    if (m->lora_grads) m->be->free(m->lora_grads);
    free(m->lora);
    m->lora = NULL;
    m->lora_params = m->lora_grads = NULL;
    m->num_lora = 0;
    m->lora_size = 0;
    for (int i = 0; m->lora_slot && i < m->cfg.num_hidden_layers * CA_NUM_PROJ; i++) m->lora_slot[i] = -1;
    m->lora_freeze_A = 0;   /* new adapters train both factors until frozen again */
    m->act_B = m->act_T = 0; /* the arena layout changes */
}

ca_status ca_lfm2_lora_add(ca_lfm2_model *m, const int *layers, const int *projs, int n, int r, float scaling,
                           float dropout) {
    if (r <= 0) return ca_error(CA_ERR_VALUE, "LoRA rank r must be positive, got %d", r);
    if (n <= 0) return ca_error(CA_ERR_VALUE, "no LoRA target module given");
    if (!(dropout >= 0.0f && dropout < 1.0f)) return ca_error(CA_ERR_VALUE, "lora_dropout must be in [0, 1), got %g", dropout);
    if (!isfinite(scaling)) return ca_error(CA_ERR_VALUE, "LoRA scaling must be finite");
    for (int i = 0; i < n; i++) {
        int in = 0, out = 0;
        if (layers[i] < 0 || layers[i] >= m->cfg.num_hidden_layers || projs[i] < 0 || projs[i] >= CA_NUM_PROJ)
            return ca_error(CA_ERR_VALUE, "LoRA target %d: layer %d / projection %d out of range", i, layers[i], projs[i]);
        if (!proj_weight(m, layers[i], (ca_lfm2_proj)projs[i], &in, &out))
            return ca_error(CA_ERR_VALUE, "layer %d is a %s layer and has no %s", layers[i],
                            m->cfg.layer_is_attention[layers[i]] ? "attention" : "conv", proj_names[projs[i]]);
        for (int j = 0; j < i; j++)
            if (layers[j] == layers[i] && projs[j] == projs[i])
                return ca_error(CA_ERR_VALUE, "LoRA target model.layers.%d.%s given twice", layers[i], proj_names[projs[i]]);
    }
    ca_lfm2_lora_clear(m);
    m->lora = calloc((size_t)n, sizeof *m->lora);
    if (!m->lora) return ca_error(CA_ERR_NOMEM, "out of memory adding LoRA adapters");
    size_t offset = 0;
    for (int i = 0; i < n; i++) {
        ca_lora_adapter *a = &m->lora[i];
        a->layer = layers[i];
        a->proj = (ca_lfm2_proj)projs[i];
        proj_weight(m, a->layer, a->proj, &a->in, &a->out);
        a->r = r;
        a->scaling = scaling;
        a->dropout = dropout;
        a->a_offset = offset;
        offset += (size_t)r * a->in;
        a->b_offset = offset;
        offset += (size_t)a->out * r;
        m->lora_slot[a->layer * CA_NUM_PROJ + a->proj] = i;
    }
    m->num_lora = n;
    m->lora_size = offset;
    m->lora_params = m->be->alloc(offset * sizeof(float));
    m->lora_grads = m->be->alloc(offset * sizeof(float));
    if (!m->lora_params || !m->lora_grads) {
        ca_lfm2_lora_clear(m);
        return ca_error(CA_ERR_NOMEM, "out of memory allocating %zu LoRA parameters", offset);
    }
    return CA_OK;
}

void ca_lora_init_adapter(float *A, float *B, int r, int in, int out, ca_rng *rng, int gaussian) {
    const size_t numel = (size_t)r * in;
    if (gaussian) { /* N(0, 1/r²) */
        ca_rng_fill_normal(rng, A, numel, 1.0 / r);
    } else { /* kaiming_uniform(a=sqrt(5)): bound = sqrt(6 / ((1 + 5)·fan_in)) = 1/sqrt(fan_in) */
        const double bound = 1.0 / sqrt((double)in);
        for (size_t j = 0; j < numel; j++) A[j] = (float)((2.0 * ca_rng_uniform(rng) - 1.0) * bound);
    }
    memset(B, 0, (size_t)out * r * sizeof(float));
}

ca_status ca_lfm2_lora_init(ca_lfm2_model *m, uint64_t seed, int gaussian) {
    ca_rng rng;
    ca_rng_seed(&rng, seed);
    for (int i = 0; i < m->num_lora; i++) {
        const ca_lora_adapter *a = &m->lora[i];
        ca_lora_init_adapter(m->lora_params + a->a_offset, m->lora_params + a->b_offset, a->r, a->in, a->out, &rng,
                             gaussian);
    }
    return CA_OK;
}

ca_status ca_lfm2_lora_merge(ca_lfm2_model *m, float sign) {
    if (m->fp32_dropped)
        return ca_error(CA_ERR_VALUE, "the fp32 weights were dropped: call to_inference_dtype('bf16') to restore them "
                                      "before merging");
    for (int i = 0; i < m->num_lora; i++) {
        const ca_lora_adapter *a = &m->lora[i];
        int in = 0, out = 0;
        float *W = proj_weight(m, a->layer, a->proj, &in, &out);
        m->be->lora_merge(W, m->lora_params + a->a_offset, m->lora_params + a->b_offset, sign * a->scaling, in, out, a->r);
    }
    repack_lowp(m, 0);
    return CA_OK;
}

ca_status ca_lfm2_set_trainable(ca_lfm2_model *m, int index, int trainable) {
    if (index < 0 || index >= m->num_param_tensors)
        return ca_error(CA_ERR_INDEX, "parameter index %d out of range [0, %d)", index, m->num_param_tensors);
    m->trainable[index] = trainable != 0;
    return CA_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* decoding caches and the cached forward                                                            */

ca_status ca_lfm2_cache_create(const ca_lfm2_model *m, int capacity, ca_lfm2_cache **out) {
    *out = NULL;
    if (capacity <= 0) return ca_error(CA_ERR_VALUE, "cache capacity must be positive, got %d", capacity);
    const ca_lfm2_config *c = &m->cfg;
    ca_lfm2_cache *cache = calloc(1, sizeof *cache);
    if (!cache) return ca_error(CA_ERR_NOMEM, "out of memory allocating a decoding cache");
    for (int l = 0; l < c->num_hidden_layers; l++) c->layer_is_attention[l] ? cache->num_attention++ : cache->num_conv++;
    cache->be = m->be;
    cache->capacity = capacity;
    cache->kv_width = c->num_key_value_heads * c->head_dim;
    cache->conv_rows = c->conv_L_cache - 1;
    cache->conv_width = c->hidden_size;
    const size_t kv = (size_t)cache->num_attention * capacity * cache->kv_width;
    const size_t conv = (size_t)cache->num_conv * cache->conv_rows * cache->conv_width;
    cache->k = kv ? m->be->alloc(kv * sizeof(float)) : NULL;
    cache->v = kv ? m->be->alloc(kv * sizeof(float)) : NULL;
    cache->conv = conv ? m->be->alloc(conv * sizeof(float)) : NULL;
    if ((kv && (!cache->k || !cache->v)) || (conv && !cache->conv)) {
        ca_lfm2_cache_free(cache);
        return ca_error(CA_ERR_NOMEM, "out of memory for a decoding cache of %d positions (%.1f MB)", capacity,
                        (2.0 * kv + conv) * 4 / 1e6);
    }
    *out = cache;
    return CA_OK;
}

void ca_lfm2_cache_free(ca_lfm2_cache *cache) {
    if (!cache) return;
    cache->be->free(cache->k);
    cache->be->free(cache->v);
    cache->be->free(cache->conv);
    free(cache);
}

void ca_lfm2_cache_reset(ca_lfm2_cache *cache) {
    cache->length = 0;
    if (cache->conv) /* a fresh sequence starts from zero conv state */
        cache->be->zero(cache->conv, (size_t)cache->num_conv * cache->conv_rows * cache->conv_width);
}

ca_status ca_lfm2_cache_copy(ca_lfm2_cache *dst, const ca_lfm2_cache *src) {
    if (dst->capacity != src->capacity || dst->num_attention != src->num_attention || dst->num_conv != src->num_conv ||
        dst->kv_width != src->kv_width || dst->conv_width != src->conv_width)
        return ca_error(CA_ERR_VALUE, "caches of different models or capacities cannot be copied");
    if (dst == src) return CA_OK;
    /* only the filled prefix of each layer's keys and values matters */
    const size_t row = (size_t)src->kv_width * sizeof(float), layer = (size_t)src->capacity * src->kv_width;
    for (int a = 0; a < src->num_attention; a++) {
        dst->be->copy(dst->k + a * layer, src->k + a * layer, (size_t)src->length * row);
        dst->be->copy(dst->v + a * layer, src->v + a * layer, (size_t)src->length * row);
    }
    if (src->conv)
        dst->be->copy(dst->conv, src->conv, (size_t)src->num_conv * src->conv_rows * src->conv_width * sizeof(float));
    dst->length = src->length;
    return CA_OK;
}

/* One attention layer for B cached sequences: append this chunk's keys and values to each cache, then let
 * each row's queries attend to everything its sequence has seen (causal from position `past`). */
static void cached_attention(ca_lfm2_model *m, int l, int ordinal, ca_lfm2_cache *const *caches, const int32_t *lengths,
                             int B, int T, float *att) {
    const ca_lfm2_config *c = &m->cfg;
    const int NH = c->num_attention_heads, NKV = c->num_key_value_heads, HS = c->head_dim;
    const size_t QD = (size_t)NH * HS, KD = (size_t)NKV * HS;
    ca_lfm2_layer_acts *a = &m->lacts[l];
    for (int b = 0; b < B; b++) {
        ca_lfm2_cache *cache = caches[b];
        const int len = lengths[b], past = cache->length;
        float *ao = a->ao + (size_t)b * T * QD;
        if (len == 0) continue;
        float *K = cache->k + (size_t)ordinal * cache->capacity * KD, *V = cache->v + (size_t)ordinal * cache->capacity * KD;
        m->be->copy(K + (size_t)past * KD, a->kr + (size_t)b * T * KD, (size_t)len * KD * sizeof(float));
        m->be->copy(V + (size_t)past * KD, a->v + (size_t)b * T * KD, (size_t)len * KD * sizeof(float));
        m->be->attention_forward(ao, att, a->qr + (size_t)b * T * QD, K, V, NULL, 1, len, past + len, NH, NKV, HS, 1, past);
        if (len < T) m->be->zero(ao + (size_t)len * QD, (size_t)(T - len) * QD);
    }
}

/* One conv layer's gated convolution for B cached sequences, continuing from and then advancing each
 * sequence's state: the new state is the last L−1 rows of [state; u]. */
static void cached_shortconv(ca_lfm2_model *m, int l, int ordinal, ca_lfm2_cache *const *caches, const int32_t *lengths,
                             int B, int T) {
    const ca_lfm2_config *c = &m->cfg;
    const int C = c->hidden_size, L = c->conv_L_cache, keep = L - 1;
    ca_lfm2_layer_acts *a = &m->lacts[l];
    for (int b = 0; b < B; b++) {
        const int len = lengths[b];
        const size_t off = (size_t)b * T * C;
        if (len == 0) continue;
        float *state = caches[b]->conv + (size_t)ordinal * keep * C;
        m->be->shortconv_forward(a->y + off, a->u + off, a->c + off, a->z + 3 * off, m->layers[l].conv,
                                 keep > 0 ? state : NULL, 1, len, C, L);
        if (len < T) m->be->zero(a->y + off + (size_t)len * C, (size_t)(T - len) * C);
        if (keep == 0) continue;
        if (len >= keep) {
            m->be->copy(state, a->u + off + (size_t)(len - keep) * C, (size_t)keep * C * sizeof(float));
        } else {
            m->be->copy(state, state + (size_t)len * C, (size_t)(keep - len) * C * sizeof(float));
            m->be->copy(state + (size_t)(keep - len) * C, a->u + off, (size_t)len * C * sizeof(float));
        }
    }
}

ca_status ca_lfm2_forward_cached(ca_lfm2_model *m, ca_lfm2_cache *const *caches, const int32_t *ids,
                                 const float *embeds, const int32_t *lengths, int B, int T, float *logits,
                                 int all_logits) {
    const ca_lfm2_config *c = &m->cfg;
    const int C = c->hidden_size, V = c->vocab_size, F = c->ffn_dim, N = B * T;
    const int NH = c->num_attention_heads, HS = c->head_dim;
    const float eps = (float)c->norm_eps;
    if (B <= 0 || T <= 0) return ca_error(CA_ERR_VALUE, "input_ids is empty (batch %d, length %d)", B, T);
    sync_lowp(m);
    int longest = 0;
    for (int b = 0; b < B; b++) {
        if (!caches[b]) return ca_error(CA_ERR_VALUE, "sequence %d has no cache", b);
        if (caches[b]->be != m->be)
            return ca_error(CA_ERR_VALUE, "sequence %d: its cache lives on the %s backend, the model on %s (create "
                            "caches after moving the model)", b, caches[b]->be->name, m->be->name);
        if (lengths[b] < 0 || lengths[b] > T)
            return ca_error(CA_ERR_VALUE, "lengths[%d] = %d is outside [0, %d]", b, lengths[b], T);
        if (caches[b]->length + lengths[b] > caches[b]->capacity)
            return ca_error(CA_ERR_VALUE, "sequence %d needs %d positions but its cache holds %d", b,
                            caches[b]->length + lengths[b], caches[b]->capacity);
        for (int j = 0; j < b; j++)
            if (caches[j] == caches[b] && lengths[b] && lengths[j])
                return ca_error(CA_ERR_VALUE, "sequences %d and %d share one cache", j, b);
        for (int t = 0; t < lengths[b] && !embeds; t++) {
            int32_t id = ids[(size_t)b * T + t];
            if (id < 0 || id >= V)
                return ca_error(CA_ERR_INDEX, "input_ids[%d, %d] = %d is outside the vocabulary [0, %d)", b, t, id, V);
        }
        if (caches[b]->length + lengths[b] > longest) longest = caches[b]->length + lengths[b];
    }
    CA_TRY(ensure_acts(m, B, T));
    float *att = m->be->alloc((size_t)NH * T * (longest > 0 ? longest : 1) * sizeof(float)); /* (NH, T, Tk) */
    float *last = m->be->alloc((size_t)B * (2 * C + V) * sizeof(float)); /* rows (B, C), normed (B, C), (B, V) */
    if (!att || !last) {
        m->be->free(att), m->be->free(last);
        return ca_error(CA_ERR_NOMEM, "out of memory for a decoding step");
    }
    m->decoding_step = T == 1;
    int32_t *safe_ids = m->targets; /* (N): padded positions read token 0 instead of whatever they hold */
    m->has_padding = 0;
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            const size_t n = (size_t)b * T + t;
            m->mask[n] = t < lengths[b];
            m->pos[n] = caches[b]->length + t;
            safe_ids[n] = (m->mask[n] && !embeds) ? ids[n] : 0;
            m->has_padding |= !m->mask[n];
        }
    }
    if (embeds) m->be->copy(m->hs, embeds, (size_t)N * C * sizeof(float));
    else ca_lfm2_embed(m, m->hs, safe_ids, N);

    for (int l = 0, n_attn = 0, n_conv = 0; l < c->num_hidden_layers; l++) {
        const ca_lfm2_layer *w = &m->layers[l];
        ca_lfm2_layer_acts *a = &m->lacts[l];
        const float *h = m->hs + (size_t)l * N * C;
        float *hout = m->hs + (size_t)(l + 1) * N * C;
        m->be->rmsnorm_forward(a->x1, a->rstd1, h, w->operator_norm, N, C, eps);
        if (w->is_attention) {
            const int NKV = c->num_key_value_heads;
            proj_forward(m, l, CA_PROJ_Q, a->q, a->x1, N);
            proj_forward(m, l, CA_PROJ_K, a->k, a->x1, N);
            proj_forward(m, l, CA_PROJ_V, a->v, a->x1, N);
            m->be->rmsnorm_forward(a->qr, a->qrstd, a->q, w->q_norm, N * NH, HS, eps);
            m->be->rmsnorm_forward(a->kr, a->krstd, a->k, w->k_norm, N * NKV, HS, eps);
            m->be->rope_forward(a->qr, a->qr, m->pos, N, NH, HS, (float)c->rope_theta);
            m->be->rope_forward(a->kr, a->kr, m->pos, N, NKV, HS, (float)c->rope_theta);
            cached_attention(m, l, n_attn++, caches, lengths, B, T, att);
            proj_forward(m, l, CA_PROJ_ATTN_OUT, a->mid, a->ao, N);
        } else {
            proj_forward(m, l, CA_PROJ_IN, a->z, a->x1, N);
            if (m->has_padding) zero_masked_rows(m, a->z, (size_t)3 * C, N);
            cached_shortconv(m, l, n_conv++, caches, lengths, B, T);
            proj_forward(m, l, CA_PROJ_CONV_OUT, a->mid, a->y, N);
        }
        m->be->add_inplace(a->mid, h, (size_t)N * C);
        m->be->rmsnorm_forward(a->x2, a->rstd2, a->mid, w->ffn_norm, N, C, eps);
        proj_forward(m, l, CA_PROJ_W1, a->gate, a->x2, N);
        proj_forward(m, l, CA_PROJ_W3, a->up, a->x2, N);
        m->be->swiglu_forward(a->act, a->gate, a->up, N, F);
        proj_forward(m, l, CA_PROJ_W2, hout, a->act, N);
        m->be->add_inplace(hout, a->mid, (size_t)N * C);
    }
    const float *top = m->hs + (size_t)c->num_hidden_layers * N * C;
    if (all_logits) {
        m->be->rmsnorm_forward(m->xf, m->rstdf, top, m->embedding_norm, N, C, eps);
        head_forward(m, logits, m->xf, m->lm_head, N, C, V);
    } else { /* only each row's last real token reaches the (V × C) head */
        float *rows = last, *normed = last + (size_t)B * C, *row_logits = last + (size_t)2 * B * C;
        for (int b = 0; b < B; b++) {
            const int t = lengths[b] > 0 ? lengths[b] - 1 : 0;
            m->be->copy(rows + (size_t)b * C, top + ((size_t)b * T + t) * C, (size_t)C * sizeof(float));
        }
        m->be->rmsnorm_forward(normed, m->rstdf, rows, m->embedding_norm, B, C, eps);
        head_forward(m, row_logits, normed, m->lm_head, B, C, V);
        for (int b = 0; b < B; b++)
            if (lengths[b] > 0) m->be->copy(logits + (size_t)b * V, row_logits + (size_t)b * V, (size_t)V * sizeof(float));
    }
    for (int b = 0; b < B; b++) caches[b]->length += lengths[b];
    m->decoding_step = 0;
    m->be->free(att);
    m->be->free(last);
    return ca_pass_status(&m->lowp_oom, m->be);
}
