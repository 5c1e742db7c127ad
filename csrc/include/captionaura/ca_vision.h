/* The LFM2-VL vision side: the SigLIP2 NaFlex vision tower and the multimodal projector (lfm2.md §4.3–4.6),
 * forward and backward, with the same structure as the text model (ca_model.h): a parameter table with
 * Hugging Face names over one flat parameter buffer (and a mirrored gradient buffer), an activation arena
 * sized on first use, and all compute through a backend table.
 *
 * Input: one batch of tiles exactly as transformers' Lfm2VlModel.get_image_features receives them
 *   pixel_values          (T, P, K) float32   K = num_channels·patch²; patch (r, c) of a tile is row r·wP + c,
 *                                            vector element (py·patch + px)·num_channels + ch; rows ≥ hP·wP
 *                                            are padding
 *   spatial_shapes        (T, 2) int32       (hP, wP) per tile, both divisible by downsample_factor
 *   pixel_attention_mask  (T, P) int32       1 for the first hP·wP rows of each tile, 0 after (or NULL)
 * Output: image features (Σ_t hP·wP/f², text hidden), tile after tile, each tile's tokens row-major over its
 * (hP/f, wP/f) grid: the rows transformers scatters into the <image> positions, in order.
 *
 * Each tile runs unpadded (its valid patches only): equivalent to transformers' key-padding mask, since
 * padded rows never reach valid ones and are dropped before the projector (lfm2.md gotcha 11). */
#ifndef CA_VISION_H
#define CA_VISION_H

#include <stddef.h>
#include <stdint.h>

#include "captionaura/ca_backend.h"
#include "captionaura/ca_model.h"
#include "captionaura/ca_status.h"

typedef struct ca_vision_config {
    /* vision_config (Siglip2VisionConfig) */
    int hidden_size;          /* D */
    int intermediate_size;    /* F */
    int num_hidden_layers;    /* as configured */
    int num_attention_heads;  /* NH, head size D/NH */
    int num_channels;         /* 3 */
    int patch_size;           /* 16 */
    int num_patches;          /* 256: the position table is a sqrt(num_patches)² grid */
    double layer_norm_eps;    /* 1e-6 */
    int mlp_gelu_tanh;        /* hidden_act: 1 = gelu_pytorch_tanh / gelu_new, 0 = exact gelu */
    int vision_use_head;      /* a pooling head may exist in the file; LFM2-VL never uses it */
    /* Lfm2VlConfig */
    int vision_feature_layer; /* -1 = the last layer */
    int num_layers_run;       /* resolved: vision_feature_layer == -1 ? N : (vision_feature_layer mod N) + 1 */
    int downsample_factor;    /* f = 2 */
    int projector_hidden_size;
    int projector_bias;
    int projector_use_layernorm;
    int projector_gelu_tanh;  /* projector_hidden_act: 0 = "gelu" (exact erf, lfm2.md gotcha 14) */
    int text_hidden_size;     /* projector output width = text_config.hidden_size */
} ca_vision_config;

/* Parses a whole LFM2-VL config.json text (its vision_config object and the top-level projector fields;
 * text_config.hidden_size for the output width). Key-naming errors are CA_ERR_KEY / CA_ERR_VALUE. */
ca_status ca_vision_config_from_json(ca_vision_config *cfg, const char *json, size_t len);
ca_status ca_vision_config_validate(const ca_vision_config *cfg);

typedef struct {
    float *ln1_w, *ln1_b;  /* (D) layer_norm1 */
    float *q_w, *q_b;      /* (D, D), (D) */
    float *k_w, *k_b;
    float *v_w, *v_b;
    float *o_w, *o_b;      /* self_attn.out_proj */
    float *ln2_w, *ln2_b;  /* (D) layer_norm2 */
    float *fc1_w, *fc1_b;  /* (F, D), (F) */
    float *fc2_w, *fc2_b;  /* (D, F), (D) */
} ca_vision_layer;

/* The linears of the vision side that can carry a LoRA adapter: six per encoder layer, then the patch
 * embedding and the projector's two (those three with layer -1). */
typedef enum {
    CA_VPROJ_Q, CA_VPROJ_K, CA_VPROJ_V, CA_VPROJ_OUT, /* encoder.layers.<l>.self_attn.{q,k,v,out}_proj */
    CA_VPROJ_FC1, CA_VPROJ_FC2,                       /* encoder.layers.<l>.mlp.fc{1,2} */
    CA_VPROJ_PATCH,                                   /* embeddings.patch_embedding */
    CA_VPROJ_LINEAR_1, CA_VPROJ_LINEAR_2,             /* multi_modal_projector.linear_{1,2} */
    CA_NUM_VPROJ
} ca_vision_proj;
#define CA_VPROJ_PER_LAYER 6

/* One vision LoRA adapter: y = W·x + b + scaling · B(A·dropout(x)); A and B live in the flat LoRA buffer. */
typedef struct {
    int layer;            /* encoder layer, -1 for the patch embedding and the projector */
    ca_vision_proj proj;
    int r, in, out;
    float scaling, dropout;
    size_t a_offset;      /* A (r, in) = lora_A.weight, in floats into lora_params */
    size_t b_offset;      /* B (out, r) = lora_B.weight */
    float *h;             /* (rows, r) activation A·x̃, in the arena (rows = N patches or M tokens) */
} ca_vision_lora_adapter;

/* Saved activations of one encoder layer over the N packed valid patches of all tiles. */
typedef struct {
    float *x1;            /* (N, D) layer_norm1 output */
    float *mean1, *rstd1; /* (N) */
    float *q, *k, *v;     /* (N, NH, HS) projections */
    float *att;           /* Σ_t NH·S_t² softmax probabilities, tile after tile */
    float *ao;            /* (N, D) attention output, out_proj input */
    float *mid;           /* (N, D) h + attention block */
    float *x2;            /* (N, D) layer_norm2 output */
    float *mean2, *rstd2; /* (N) */
    float *h1;            /* (N, F) fc1 output */
    float *act;           /* (N, F) gelu(fc1), fc2 input */
} ca_vision_layer_acts;

typedef struct ca_vision_model {
    ca_vision_config cfg;
    const ca_backend *be;

    ca_param_info *param_info; /* (num_param_tensors) */
    int num_param_tensors;
    size_t num_parameters;     /* floats in params (tensors are 16-float aligned) */
    float *params, *grads;     /* (num_parameters); grads allocated on first backward */
    uint16_t *params_bf16;     /* (num_parameters) bf16 weights (params then hold the same rounded values), or NULL */
    int fp32_dropped;          /* bf16 only: the linear weights' fp32 values were released (drop_fp32) */
    int lowp_oom;              /* a bf16 GEMM found no memory for its workspace in this pass (fp32 dropped) */

    float *patch_w, *patch_b;  /* (D, K), (D) embeddings.patch_embedding */
    float *pos_table;          /* (G, G, D) embeddings.position_embedding, G = sqrt(num_patches) */
    ca_vision_layer *layers;   /* (num_layers_run) */
    float *post_w, *post_b;    /* (D) post_layernorm */
    float *pln_w, *pln_b;      /* (f²D) projector layer_norm, NULL without it */
    float *l1_w, *l1_b;        /* (PH, f²D), (PH) linear_1 (bias NULL when projector_bias is off) */
    float *l2_w, *l2_b;        /* (TH, PH), (TH) linear_2 */

    /* the last forward: tiles and their packed layout */
    int num_tiles;
    int *tile_h, *tile_w;      /* (num_tiles) hP, wP */
    size_t *tile_off;          /* (num_tiles + 1) first packed patch of each tile; tile_off[T] = N */
    size_t *tile_att;          /* (num_tiles) offset of each tile's probabilities in a layer's att */
    size_t *tile_tok;          /* (num_tiles + 1) first output token of each tile; tile_tok[T] = M */
    size_t att_floats;         /* Σ_t NH·S_t²: one layer's attention probabilities */
    int tiles_cap;
    int have_train_acts;       /* the last forward kept every layer's activations (backward possible) */

    /* activation arena, laid out for the last forward's (N, M, att) */
    float *acts;
    size_t acts_floats;
    ca_vision_layer_acts *lacts; /* (num_layers_run) when training, else one reused slot */
    float *x_in;               /* (N, K) packed pixel patches */
    float *pos;                /* (N, D) resized position embeddings */
    float *hs;                 /* (L+1, N, D) residual stream entering each layer; hs[L] = last layer output */
    float *xf;                 /* (N, D) post_layernorm output */
    float *meanf, *rstdf;      /* (N) */
    float *un;                 /* (M, f²D) pixel-unshuffled features */
    float *pn;                 /* (M, f²D) projector layer_norm output (= un without it) */
    float *meanp, *rstdp;      /* (M) */
    float *p1;                 /* (M, PH) linear_1 output */
    float *pa;                 /* (M, PH) gelu(linear_1) */
    float *lora_xdrop;         /* (max rows, max in) dropped-out adapter input (forward scratch) */

    /* LoRA: one flat buffer for every adapter's A and B, with a mirrored gradient buffer (as ca_lfm2_model) */
    ca_vision_lora_adapter *lora; /* (num_lora) */
    int num_lora;
    int *lora_slot;            /* (num_layers_run·CA_VPROJ_PER_LAYER + 3) adapter index or -1 */
    float *lora_params;        /* (lora_size) */
    float *lora_grads;         /* (lora_size) */
    size_t lora_size;
    int lora_enabled;          /* 0 while disabled or merged */
    int lora_freeze_A;         /* FFA-LoRA: A stays at its (shared-seed) init, only B trains */
    int base_frozen;           /* LoRA training: backward fills only the adapters' gradients */
    uint64_t dropout_seed;     /* advanced by every train forward; backward regenerates the same masks */
} ca_vision_model;

ca_status ca_vision_create(ca_vision_model **out, const ca_vision_config *cfg, const ca_backend *be);
/* "fp32" | "bf16": the weights' dtype (CPU). bf16 rounds every parameter in place and keeps a bf16 copy: every
 * linear runs the bf16 GEMM (inputs rounded to bf16, fp32 sums); a backward then passes gradients through the
 * frozen base only (LoRA). Loading, init and merging re-pack.
 * keep_fp32 = 0 (bf16, AVX512-BF16 CPUs) gives back the memory of the linear weights' fp32 values, each as soon as
 * it is packed, as ca_lfm2_set_inference_dtype does; saving and merging refuse until a later call restores them
 * (exactly). */
ca_status ca_vision_set_dtype(ca_vision_model *m, const char *dtype, int keep_fp32);
const char *ca_vision_dtype(const ca_vision_model *m);
void ca_vision_free(ca_vision_model *m);
/* Moves the model's buffers to backend `be` (e.g. &ca_cuda_backend); CA_ERR_NOMEM leaves it unchanged. */
ca_status ca_vision_set_backend(ca_vision_model *m, const ca_backend *be);
/* N(0, std) for matrices and the position table, ones for LayerNorm weights, zeros for biases. */
ca_status ca_vision_init_random(ca_vision_model *m, uint64_t seed, float std);
int ca_vision_find_param(const ca_vision_model *m, const char *name);

/* Output tokens of a batch of tiles (Σ hP·wP/f²), after the same validation as the forward. */
ca_status ca_vision_num_tokens(const ca_vision_model *m, int64_t *tokens, int64_t *patches,
                               const int32_t *spatial_shapes, const int32_t *mask, int T, int P);

/* Forward over T tiles of P patch rows (see the top of this file). features (M, TH) and hidden
 * (L+1, N, D) (N = Σ hP·wP packed valid patches, tile after tile; entry 0 the embeddings, entry l+1 the
 * output of layer l, the last one before post_layernorm) are optional outputs. `train` keeps every layer's
 * activations for ca_vision_backward. */
ca_status ca_vision_forward(ca_vision_model *m, float *features, float *hidden, const float *pixel_values,
                            const int32_t *spatial_shapes, const int32_t *mask, int T, int P, int train);

/* Backward of the last (train) forward from d features (M, TH): every parameter's gradient into m->grads (none
 * while base_frozen) and every adapter's into m->lora_grads, overwritten, or added to when `accumulate`. */
ca_status ca_vision_backward(ca_vision_model *m, const float *d_features, int accumulate);

/* Reads every vision and projector tensor from safetensors files (a single file or all shards). Tensors of
 * other prefixes (model.language_model.*, lm_head) are left alone; within model.vision_tower.* and
 * model.multi_modal_projector.* a missing, unexpected or misshapen tensor is an error naming it. Encoder
 * layers past the feature layer (index in [num_layers_run, num_hidden_layers)) are accepted and not read. */
ca_status ca_vision_load_safetensors(ca_vision_model *m, const char *const *paths, int num_paths);
ca_status ca_vision_save_safetensors(const ca_vision_model *m, const char *path);

/* Adds LoRA adapters on the given (layer, projection) pairs (layer -1 for CA_VPROJ_PATCH / LINEAR_1 /
 * LINEAR_2), all of rank r; replaces any previous adapters. A and B start at zero: see ca_vision_lora_init. */
ca_status ca_vision_lora_add(ca_vision_model *m, const int *layers, const int *projs, int n, int r, float scaling,
                             float dropout);
void ca_vision_lora_clear(ca_vision_model *m);
/* PEFT's init: A kaiming-uniform (or N(0, 1/r²) when gaussian), B = 0. */
ca_status ca_vision_lora_init(ca_vision_model *m, uint64_t seed, int gaussian);
/* W += sign · scaling · B·A for every adapter (sign 1 merges, −1 unmerges). */
ca_status ca_vision_lora_merge(ca_vision_model *m, float sign);
const char *ca_vision_proj_name(ca_vision_proj proj);

#endif
