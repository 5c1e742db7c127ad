/* The LFM2 text model: one flat parameter buffer (and a mirrored gradient buffer) described by a
 * parameter table with Hugging Face names, per-layer views into it, and one activation arena sized from
 * (batch, seq) on first use. Forward, backward and checkpoint I/O; all compute goes through a backend table. */
#ifndef CA_MODEL_H
#define CA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "captionaura/ca_backend.h"
#include "captionaura/ca_config.h"
#include "captionaura/ca_params.h"
#include "captionaura/ca_status.h"


/* The linear projections of a decoder layer: the places a LoRA adapter can sit. */
typedef enum {
    CA_PROJ_Q, CA_PROJ_K, CA_PROJ_V, CA_PROJ_ATTN_OUT, /* attention layers: self_attn.{q,k,v,out}_proj */
    CA_PROJ_IN, CA_PROJ_CONV_OUT,                       /* conv layers: conv.{in,out}_proj */
    CA_PROJ_W1, CA_PROJ_W3, CA_PROJ_W2,                 /* every layer: feed_forward.w{1,3,2} */
    CA_NUM_PROJ
} ca_lfm2_proj;

/* One LoRA adapter: y = W·x + scaling · B(A·dropout(x)). A and B live in the model's flat LoRA buffer. */
typedef struct {
    int layer;
    ca_lfm2_proj proj;
    int r, in, out;
    float scaling, dropout;
    size_t a_offset;  /* A (r, in) = lora_A.weight, in floats into lora_params */
    size_t b_offset;  /* B (out, r) = lora_B.weight */
    float *h;         /* (N, r) activation A·x̃, in the arena */
} ca_lora_adapter;

/* Views of one decoder layer's weights (NULL where the layer kind has none). */
typedef struct {
    int is_attention;
    float *operator_norm;  /* (C) */
    float *ffn_norm;       /* (C) */
    float *w1;             /* (F, C) gate */
    float *w3;             /* (F, C) up */
    float *w2;             /* (C, F) down */
    /* conv layers */
    float *in_proj;        /* (3C, C) */
    float *conv;           /* (C, L) (HF [C, 1, L]) */
    float *conv_out;       /* (C, C)  conv.out_proj */
    /* attention layers */
    float *q_proj;         /* (NH*HS, C) */
    float *k_proj;         /* (NKV*HS, C) */
    float *v_proj;         /* (NKV*HS, C) */
    float *attn_out;       /* (C, NH*HS)  self_attn.out_proj */
    float *q_norm;         /* (HS) */
    float *k_norm;         /* (HS) */
} ca_lfm2_layer;

/* Saved activations of one decoder layer for (B, T) tokens, N = B*T (NULL where the kind has none). */
typedef struct {
    float *x1;     /* (N, C) operator_norm output (one buffer, with x2, for every layer) */
    float *rstd1;  /* (N) */
    float *mid;    /* (N, C) residual after the mixer: h + mixer(x1) */
    float *x2;     /* (N, C) ffn_norm output (the buffer of x1) */
    float *rstd2;  /* (N) */
    float *gate;   /* (N, F) w1 output */
    float *up;     /* (N, F) w3 output */
    float *act;    /* (N, F) silu(gate) ⊙ up: one buffer shared by every layer, recomputed in backward */
    /* conv */
    float *z;      /* (N, 3C) in_proj output */
    float *u;      /* (N, C) B ⊙ x (u, c, y: one buffer each for every layer) */
    float *c;      /* (N, C) conv output */
    float *y;      /* (N, C) C ⊙ conv, out_proj input */
    /* attention */
    float *q;      /* (N, NH*HS) q_proj output (pre-norm) */
    float *k;      /* (N, NKV*HS) */
    float *v;      /* (N, NKV*HS) */
    float *qrstd;  /* (N*NH) */
    float *krstd;  /* (N*NKV) */
    float *qr;     /* (N, NH*HS) normed + rotated (qr, kr: one buffer each for every layer) */
    float *kr;     /* (N, NKV*HS) */
    float *att;    /* (B, NH, T, T) probabilities */
    float *ao;     /* (N, NH*HS) attention output, out_proj input */
} ca_lfm2_layer_acts;

typedef struct ca_lfm2_model {
    ca_lfm2_config cfg;
    const ca_backend *be;

    ca_param_info *param_info; /* (num_param_tensors) */
    int num_param_tensors;
    size_t num_parameters;     /* floats in params */

    float *params;             /* (num_parameters) */
    float *grads;              /* (num_parameters), allocated on first backward */
    float *embed_tokens;       /* (V, C) */
    float *embedding_norm;     /* (C) final norm */
    float *lm_head;            /* (V, C): embed_tokens when tied */
    ca_lfm2_layer *layers;     /* (num_hidden_layers) */

    /* activation arena for (act_B, act_T); regrown when a larger batch arrives */
    int act_B, act_T;
    float *acts;
    size_t acts_floats;
    ca_lfm2_layer_acts *lacts; /* (num_hidden_layers) */
    float *hs;                 /* (L+1, N, C) residual stream entering each layer; hs[L] = last layer output */
    float *xf;                 /* (N, C) final norm output */
    float *rstdf;              /* (N) */
    float *logits;             /* (head_rows, V) loss_and_grad's logits, a block of rows at a time; then the
                                  layers' backward scratch */
    float *head_x;             /* (head_rows, C) the block's final-norm rows */
    float *head_dx;            /* (head_rows, C) their gradient */
    int head_rows;             /* rows per block: the (N, V) logits are never held whole */
    int32_t *pos;              /* (N) positions */
    int32_t *targets;          /* (N) shifted labels */
    int32_t *mask;             /* (N) attention mask (all ones when none was given) */
    int32_t *head_index;       /* (N) the rows with a target, packed: only they reach the LM head */
    int32_t *head_targets;     /* (N) their targets */
    int has_padding;           /* the current mask has zeros */
    float *lora_xdrop;         /* (N, max in) dropped-out adapter input (forward scratch) */

    /* which base tensors receive gradients (all, until LoRA freezes the base) */
    unsigned char *trainable;  /* (num_param_tensors) */

    /* LoRA: one flat buffer for every adapter's A and B, with a mirrored gradient buffer */
    ca_lora_adapter *lora;     /* (num_lora) */
    int num_lora;
    int *lora_slot;            /* (num_hidden_layers * CA_NUM_PROJ) adapter index or -1 */
    float *lora_params;        /* (lora_size) */
    float *lora_grads;         /* (lora_size) */
    size_t lora_size;
    int lora_enabled;          /* 0 inside `with model.disable_lora()` */
    int lora_freeze_A;         /* FFA-LoRA: A stays at its (shared-seed) init, only B trains */
    uint64_t dropout_seed;     /* advanced every training step */
    int training;              /* dropout active (inside loss_and_grad) */

    /* bf16 / int8 inference weights (CPU): params rounded in place to the low-precision values, and packed
     * here for the decoding GEMV (one token reads a half / a quarter of the bytes); NULL in fp32 mode */
    uint16_t *params_bf16;     /* (num_parameters) */
    int8_t *params_q8;         /* (num_parameters): the matrices' entries; vectors stay fp32 in params */
    float *q8_scales;          /* one per row of every matrix */
    size_t *q8_scale_at;       /* (num_param_tensors) its first row's index in q8_scales */
    int decoding_step;         /* inside a one-token-per-sequence cached forward: every row takes the GEMV */
    int lowp_stale;            /* a bf16 model's base trained (mixed precision: params are the fp32 master
                                * weights): the bf16 copy is re-made from them before the next pass */
    int fp32_dropped;          /* bf16 only: the matrices' fp32 values in params were released (their pages read
                                * as zeros); frozen-base training and inference run on the bf16 copy */
    int lowp_oom;              /* a bf16 GEMM found no memory for its workspace in this pass (fp32 dropped) */
} ca_lfm2_model;

/* "fp32" | "bf16" | "int8": weights used for inference. bf16 rounds every parameter to bf16 in place, int8
 * every matrix to scale[row] · int8 (the prefill GEMMs and the decoding GEMVs then use identical weights), and
 * packs them for the decoding GEMV; "fp32" drops the packed copy (the rounding stays). A bf16 model trains in
 * mixed precision (bf16 GEMMs, fp32 gradients, params the fp32 master weights); training refuses an int8
 * model. Loading, init and LoRA merge re-pack.
 * keep_fp32 = 0 (bf16 on AVX512-BF16 CPUs) gives back the memory of the matrices' fp32 values, each as soon as
 * it is packed: the bf16 copy is then all there is of them, for inference and LoRA on the frozen base. Training
 * base parameters, merging, saving and reading those parameters refuse until a later call restores them
 * (widened from bf16, exactly). */
ca_status ca_lfm2_set_inference_dtype(ca_lfm2_model *m, const char *dtype, int keep_fp32);
const char *ca_lfm2_inference_dtype(const ca_lfm2_model *m);

/* Builds the parameter table and allocates parameters (zeros) for a validated config. */
ca_status ca_lfm2_create(ca_lfm2_model **out, const ca_lfm2_config *cfg, const ca_backend *be);
void ca_lfm2_free(ca_lfm2_model *m);
/* Moves parameters, gradients and adapters to backend `be` (e.g. &ca_cuda_backend); activations are re-made
 * on the next call and caches must be created after the move. On failure the model is unchanged. */
ca_status ca_lfm2_set_backend(ca_lfm2_model *m, const ca_backend *be);

/* Seeded initialisation: N(0, std) for matrices and embeddings, ones for norms. */
ca_status ca_lfm2_init_random(ca_lfm2_model *m, uint64_t seed, float std);

/* Forward over B right-padded sequences of T tokens. ids (B, T); mask (B, T) of 0/1 or NULL.
 * logits (B, T, V) and hidden (L+1, B, T, C) are optional outputs (NULL to skip); hidden follows
 * transformers' output_hidden_states: the embeddings, the outputs of layers 0..L-2, and the final norm of
 * the last layer's output. */
ca_status ca_lfm2_forward(ca_lfm2_model *m, float *logits, float *hidden, const int32_t *ids, const int32_t *mask,
                          int B, int T);

/* Rows that replace token embeddings (LFM2-VL's image features at the <image> positions). positions are
 * flat indices b*T + t, distinct; backward writes d loss / d values into `grad` when it is non-NULL. */
typedef struct {
    const int32_t *positions; /* (P) */
    const float *values;      /* (P, C) */
    float *grad;              /* (P, C) or NULL */
    int count;                /* P */
} ca_lfm2_features;

ca_status ca_lfm2_forward_ex(ca_lfm2_model *m, float *logits, float *hidden, const int32_t *ids, const int32_t *mask,
                             int B, int T, const ca_lfm2_features *features);
ca_status ca_lfm2_loss_and_grad_ex(ca_lfm2_model *m, double *loss, const int32_t *ids, const int32_t *labels,
                                   const int32_t *mask, int B, int T, int accumulate, ca_lfm2_features *features);

/* Causal-LM loss (labels shifted left by one inside, −100 ignored, mean over counted tokens) and the
 * gradient of every parameter into m->grads (overwritten, or added when `accumulate`). */
ca_status ca_lfm2_loss_and_grad(ca_lfm2_model *m, double *loss, const int32_t *ids, const int32_t *labels,
                                const int32_t *mask, int B, int T, int accumulate);

/* Reads every parameter from safetensors files (a single file or all shards of an index), converting
 * BF16/F16/F64 to F32. `prefix` replaces the leading "model." of each name (NULL: keep). Missing, extra
 * or misshapen tensors are errors naming the tensor; a tied lm_head.weight in the file is accepted.
 * Into a bf16 model that gave back its fp32 weights (set_inference_dtype("bf16", 0) on a fresh model), each
 * tensor is packed as it is read and the matrices' fp32 pages given back at once: the fp32 model is never held. */
ca_status ca_lfm2_load_safetensors(ca_lfm2_model *m, const char *const *paths, int num_paths, const char *prefix);

/* Writes every parameter as F32 with Hugging Face names (atomically: temp file, then rename). */
ca_status ca_lfm2_save_safetensors(const ca_lfm2_model *m, const char *path, const char *prefix);

int ca_lfm2_find_param(const ca_lfm2_model *m, const char *name);

/* ---- decoding ----------------------------------------------------------------------------------
 * The state of one sequence between calls (lfm2.md §2.4, general chunked form): keys and values of every
 * attention layer, and the last L−1 conv inputs u = B⊙x of every conv layer. Kept per sequence, separate
 * from the activation arena, so beams and batched requests each own one. */
typedef struct ca_lfm2_cache {
    const ca_backend *be; /* owner of the buffers */
    int capacity;      /* positions it can hold */
    int length;        /* positions consumed so far (the next token's position) */
    int num_attention, num_conv;
    int kv_width;      /* NKV*HS */
    int conv_rows, conv_width; /* L−1, C */
    float *k;          /* (num_attention, capacity, NKV*HS) */
    float *v;          /* (num_attention, capacity, NKV*HS) */
    float *conv;       /* (num_conv, L−1, C) */
} ca_lfm2_cache;

ca_status ca_lfm2_cache_create(const ca_lfm2_model *m, int capacity, ca_lfm2_cache **out);
void ca_lfm2_cache_free(ca_lfm2_cache *cache);
void ca_lfm2_cache_reset(ca_lfm2_cache *cache);
/* dst takes src's contents (both from the same model and of the same capacity): beam reordering. */
ca_status ca_lfm2_cache_copy(ca_lfm2_cache *dst, const ca_lfm2_cache *src);

/* Feeds T new tokens of each of B sequences through the model, reading and extending each sequence's
 * cache: a whole prompt, a chunk of one, or one decoding step are the same call, and chunked prefill
 * equals one prefill. ids (B, T), right-padded: lengths (B) says how many tokens of each row are real
 * (0 leaves that sequence untouched). `embeds` (B, T, C), when non-NULL, replaces the token embeddings
 * (LFM2-VL's image features); ids are then only checked where embeds is NULL. logits: (B, V) at each
 * row's last real token (rows with length 0 are left untouched), or (B, T, V) with all_logits. */
ca_status ca_lfm2_forward_cached(ca_lfm2_model *m, ca_lfm2_cache *const *caches, const int32_t *ids,
                                 const float *embeds, const int32_t *lengths, int B, int T, float *logits,
                                 int all_logits);

/* out (N, C) = the token embeddings of ids (valid ids), from the bf16 copy when the fp32 values were given back:
 * what callers that build their own input embeddings (LFM2-VL's image positions) start from. */
void ca_lfm2_embed(ca_lfm2_model *m, float *out, const int32_t *ids, int N);

/* "self_attn.q_proj", "conv.in_proj", "feed_forward.w1", ... (the module path after "model.layers.N."). */
const char *ca_lfm2_proj_name(ca_lfm2_proj proj);

/* Adds LoRA adapters on the given (layer, projection) pairs, all of rank r (the pairs must exist in the
 * layer's kind and be distinct). Replaces any previous adapters. A and B start at zero: see ca_lfm2_lora_init. */
ca_status ca_lfm2_lora_add(ca_lfm2_model *m, const int *layers, const int *projs, int n, int r, float scaling,
                           float dropout);
void ca_lfm2_lora_clear(ca_lfm2_model *m);
/* PEFT's init: A ~ kaiming_uniform(a=sqrt(5)) = U(−1/sqrt(in), 1/sqrt(in)), or N(0, 1/r²) when gaussian; B = 0. */
ca_status ca_lfm2_lora_init(ca_lfm2_model *m, uint64_t seed, int gaussian);
/* PEFT's initialisation of one adapter: lora_A (r, in) ~ kaiming_uniform(a=√5), or N(0, 1/r²) when gaussian;
 * lora_B (out, r) = 0. */
void ca_lora_init_adapter(float *A, float *B, int r, int in, int out, ca_rng *rng, int gaussian);
/* W += sign · scaling · B·A for every adapter (sign +1 merges, −1 unmerges). */
ca_status ca_lfm2_lora_merge(ca_lfm2_model *m, float sign);
/* Whether base tensor `index` of the parameter table receives gradients. */
ca_status ca_lfm2_set_trainable(ca_lfm2_model *m, int index, int trainable);

#endif
