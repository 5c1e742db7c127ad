/* LFM2 text-model configuration, resolved from a Hugging Face config.json (lfm2.md §1): every key alias
 * (block_ff_dim, tie_embedding, theta / rope_theta / rope_parameters, num_heads, block_norm_eps, ...),
 * layer_types / full_attn_idxs, and the FFN auto-adjust rule. This reader is the single place those
 * rules live; the Python Lfm2Config round-trips through it. */
#ifndef CA_CONFIG_H
#define CA_CONFIG_H

#include <stddef.h>

#include "captionaura/ca_status.h"

#define CA_MAX_LAYERS 512

typedef struct ca_lfm2_config {
    int vocab_size;
    int hidden_size;
    int intermediate_size;        /* as configured (block_ff_dim overrides intermediate_size) */
    int ffn_dim;                  /* resolved FFN width after block_auto_adjust_ff_dim (lfm2.md §1.2) */
    int num_hidden_layers;
    int num_attention_heads;
    int num_key_value_heads;
    int head_dim;                 /* head_dim key, else hidden_size / num_attention_heads */
    int conv_L_cache;             /* short-conv kernel length L */
    int conv_bias;
    int block_multiple_of;
    int block_auto_adjust_ff_dim;
    int has_block_ffn_dim_multiplier; /* 0 when the key is null */
    double block_ffn_dim_multiplier;
    double norm_eps;
    double rope_theta;
    int max_position_embeddings;
    int tie_word_embeddings;
    int pad_token_id, bos_token_id, eos_token_id; /* -1 when null/absent */
    unsigned char layer_is_attention[CA_MAX_LAYERS]; /* 1 = full_attention, 0 = conv */
} ca_lfm2_config;

/* Parses `json` (a config.json text of `len` bytes). For LFM2-VL configs pass the text_config object's
 * text. Missing required keys, wrong types and inconsistent values are CA_ERR_KEY / CA_ERR_VALUE with a
 * message naming the key.
 * Also accepted (io area addition): a whole LFM2-VL config.json — when the top-level object has a
 * "text_config" object, that object is read (model_type "lfm2-vl"/"lfm2_vl" without one is CA_ERR_KEY).
 * Required keys: vocab_size, hidden_size, num_hidden_layers, num_attention_heads (or num_heads), and
 * intermediate_size or block_ff_dim; every other field takes the Lfm2Config class default (lfm2.md §1.1).
 * The result is not validated: call ca_lfm2_config_validate. */
ca_status ca_lfm2_config_from_json(ca_lfm2_config *cfg, const char *json, size_t len);

/* Same, from a parsed JSON object (io area addition; see ca_json.h). */
struct ca_json;
ca_status ca_lfm2_config_from_json_value(ca_lfm2_config *cfg, const struct ca_json *root);

/* Reads and parses a config.json file (io area addition); errors name the file. */
ca_status ca_lfm2_config_from_file(ca_lfm2_config *cfg, const char *path);

/* Fills the Lfm2Config class defaults (lfm2.md §1.1) with every layer attention and ffn_dim resolved
 * (io area addition). */
void ca_lfm2_config_defaults(ca_lfm2_config *cfg);

/* Recomputes cfg->ffn_dim from intermediate_size, block_auto_adjust_ff_dim, block_ffn_dim_multiplier and
 * block_multiple_of exactly as transformers' Lfm2MLP does (lfm2.md §1.2) (io area addition). */
ca_status ca_lfm2_config_resolve_ffn_dim(ca_lfm2_config *cfg);

/* Checks sizes and divisibility (heads, kv heads, head_dim even for RoPE, L >= 1, layer count). */
ca_status ca_lfm2_config_validate(const ca_lfm2_config *cfg);

#endif
