/* LFM2 config.json reader (lfm2.md §1; transformers configuration_lfm2.py and Lfm2MLP).
 *
 * Key precedence, following transformers' Lfm2Config.__init__ where it defines one:
 *   intermediate_size  <- block_ff_dim if present, else intermediate_size   (block_ff_dim overrides)
 *   tie_word_embeddings <- tie_embedding if present, else tie_word_embeddings
 *   rope_theta         <- rope_parameters.rope_theta, else theta, else rope_theta (newer transformers move the
 *                         theta into rope_parameters; the original checkpoints use theta)
 *   num_attention_heads <- num_attention_heads, else num_heads (original-key alias)
 *   norm_eps           <- norm_eps, else block_norm_eps
 *   layer types        <- layer_types ("conv"/"full_attention") if present, else full_attn_idxs, else all
 *                         attention
 *   head_dim           <- head_dim if present, else hidden_size / num_attention_heads
 * A JSON null counts as absent (the class default applies). */
#include "captionaura/ca_config.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "captionaura/ca_json.h"

/* Largest config.json read from disk: real ones are a few KB. */
#define CA_CONFIG_MAX_BYTES ((long)16 * 1024 * 1024)

void ca_lfm2_config_defaults(ca_lfm2_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->vocab_size = 65536;
    cfg->hidden_size = 2560;
    cfg->intermediate_size = 12288;
    cfg->num_hidden_layers = 32;
    cfg->num_attention_heads = 32;
    cfg->num_key_value_heads = 8;
    cfg->head_dim = 2560 / 32;
    cfg->conv_L_cache = 3;
    cfg->conv_bias = 0;
    cfg->block_multiple_of = 256;
    cfg->block_auto_adjust_ff_dim = 1;
    cfg->has_block_ffn_dim_multiplier = 1;
    cfg->block_ffn_dim_multiplier = 1.0;
    cfg->norm_eps = 1e-5;
    cfg->rope_theta = 1e6;
    cfg->max_position_embeddings = 128000;
    cfg->tie_word_embeddings = 1;
    cfg->pad_token_id = 0;
    cfg->bos_token_id = 1;
    cfg->eos_token_id = 2;
    memset(cfg->layer_is_attention, 1, (size_t)cfg->num_hidden_layers);
    (void)ca_lfm2_config_resolve_ffn_dim(cfg);
}

ca_status ca_lfm2_config_resolve_ffn_dim(ca_lfm2_config *cfg) {
    int64_t ff = cfg->intermediate_size;
    if (ff < 1) return ca_error(CA_ERR_VALUE, "intermediate_size: must be >= 1, got %lld", (long long)ff);
    if (cfg->block_auto_adjust_ff_dim) {
        ff = (int64_t)(2.0 * (double)ff / 3.0); /* Python int(2 * ff / 3): true division, truncation */
        if (cfg->has_block_ffn_dim_multiplier) {
            double scaled = cfg->block_ffn_dim_multiplier * (double)ff;
            if (!(scaled >= 0.0 && scaled < (double)INT_MAX))
                return ca_error(CA_ERR_VALUE, "block_ffn_dim_multiplier: %g gives an FFN width out of range",
                                cfg->block_ffn_dim_multiplier);
            ff = (int64_t)scaled;
            int64_t m = cfg->block_multiple_of;
            if (m < 1) return ca_error(CA_ERR_VALUE, "block_multiple_of: must be >= 1, got %lld", (long long)m);
            /* transformers rounds up to block_multiple_of only inside the multiplier branch (llama.cpp's
             * converter rounds unconditionally; the two agree for every published checkpoint). */
            ff = m * ((ff + m - 1) / m);
        }
    }
    if (ff < 1 || ff > INT_MAX)
        return ca_error(CA_ERR_VALUE, "intermediate_size: %d resolves to an FFN width of %lld (block_auto_adjust_ff_dim)",
                        cfg->intermediate_size, (long long)ff);
    cfg->ffn_dim = (int)ff;
    return CA_OK;
}

/* ---- typed key readers ------------------------------------------------------------------------------ */

static const ca_json *get_present(const ca_json *obj, const char *key) {
    const ca_json *v = ca_json_get(obj, key);
    return (v && v->type != CA_JSON_NULL) ? v : NULL;
}

static ca_status missing(const char *key) {
    return ca_error(CA_ERR_KEY, "config.json: missing required key '%s'", key);
}

static ca_status read_int(const ca_json *v, const char *key, int64_t lo, int *out) {
    char what[96];
    snprintf(what, sizeof what, "config.json key '%s'", key);
    int64_t x;
    CA_TRY(ca_json_as_int(v, what, lo, INT_MAX, &x));
    *out = (int)x;
    return CA_OK;
}

/* Optional int: leaves *out (the default) when absent or null. */
static ca_status opt_int(const ca_json *obj, const char *key, int64_t lo, int *out) {
    const ca_json *v = get_present(obj, key);
    return v ? read_int(v, key, lo, out) : CA_OK;
}

static ca_status opt_double(const ca_json *obj, const char *key, double *out) {
    const ca_json *v = get_present(obj, key);
    if (!v) return CA_OK;
    char what[96];
    snprintf(what, sizeof what, "config.json key '%s'", key);
    return ca_json_as_double(v, what, out);
}

static ca_status opt_bool(const ca_json *obj, const char *key, int *out) {
    const ca_json *v = get_present(obj, key);
    if (!v) return CA_OK;
    char what[96];
    snprintf(what, sizeof what, "config.json key '%s'", key);
    return ca_json_as_bool(v, what, out);
}

/* pad/bos/eos: an int, null (-1), or — for eos in some generation configs — a list whose first entry is
 * used. */
static ca_status token_id(const ca_json *obj, const char *key, int *out) {
    const ca_json *v = ca_json_get(obj, key);
    if (!v) return CA_OK; /* absent: class default */
    if (v->type == CA_JSON_NULL) {
        *out = -1;
        return CA_OK;
    }
    if (v->type == CA_JSON_ARRAY) {
        if (v->len == 0) {
            *out = -1;
            return CA_OK;
        }
        char what[96];
        snprintf(what, sizeof what, "config.json key '%s[0]'", key);
        int64_t x;
        CA_TRY(ca_json_as_int(ca_json_at(v, 0), what, -1, INT_MAX, &x));
        *out = (int)x;
        return CA_OK;
    }
    return read_int(v, key, -1, out);
}

static ca_status read_layer_types(ca_lfm2_config *cfg, const ca_json *obj) {
    int n = cfg->num_hidden_layers;
    const ca_json *types = get_present(obj, "layer_types");
    if (types) {
        if (types->type != CA_JSON_ARRAY)
            return ca_error(CA_ERR_VALUE, "config.json key 'layer_types': expected an array of strings, got %s",
                            ca_json_type_name(types->type));
        if (types->len != (size_t)n)
            return ca_error(CA_ERR_VALUE, "config.json key 'layer_types': %zu entries but num_hidden_layers is %d",
                            types->len, n);
        for (int i = 0; i < n; i++) {
            const ca_json *t = ca_json_at(types, (size_t)i);
            if (t->type == CA_JSON_STRING && strcmp(t->str, "full_attention") == 0) cfg->layer_is_attention[i] = 1;
            else if (t->type == CA_JSON_STRING && strcmp(t->str, "conv") == 0) cfg->layer_is_attention[i] = 0;
            else
                return ca_error(CA_ERR_VALUE,
                                "config.json key 'layer_types[%d]': expected \"conv\" or \"full_attention\", got %s%s%.60s%s",
                                i, t->type == CA_JSON_STRING ? "" : ca_json_type_name(t->type),
                                t->type == CA_JSON_STRING ? "\"" : "", t->type == CA_JSON_STRING ? t->str : "",
                                t->type == CA_JSON_STRING ? "\"" : "");
        }
        return CA_OK;
    }
    const ca_json *idxs = get_present(obj, "full_attn_idxs");
    if (idxs) {
        if (idxs->type != CA_JSON_ARRAY)
            return ca_error(CA_ERR_VALUE, "config.json key 'full_attn_idxs': expected an array of integers, got %s",
                            ca_json_type_name(idxs->type));
        memset(cfg->layer_is_attention, 0, sizeof cfg->layer_is_attention);
        for (size_t i = 0; i < idxs->len; i++) {
            char what[64];
            snprintf(what, sizeof what, "config.json key 'full_attn_idxs[%zu]'", i);
            int64_t x;
            CA_TRY(ca_json_as_int(ca_json_at(idxs, i), what, 0, n - 1, &x));
            cfg->layer_is_attention[x] = 1;
        }
        return CA_OK;
    }
    memset(cfg->layer_is_attention, 0, sizeof cfg->layer_is_attention);
    memset(cfg->layer_is_attention, 1, (size_t)n);
    return CA_OK;
}

static ca_status read_rope_theta(ca_lfm2_config *cfg, const ca_json *obj) {
    const ca_json *params = get_present(obj, "rope_parameters");
    if (params) {
        if (params->type != CA_JSON_OBJECT)
            return ca_error(CA_ERR_VALUE, "config.json key 'rope_parameters': expected an object, got %s",
                            ca_json_type_name(params->type));
        /* transformers v5 may key the parameters by layer type; LFM2's RoPE is in its attention layers. */
        const ca_json *per_type = get_present(params, "full_attention");
        if (per_type && per_type->type == CA_JSON_OBJECT) params = per_type;
        const ca_json *type = get_present(params, "rope_type");
        if (type && (type->type != CA_JSON_STRING || strcmp(type->str, "default") != 0))
            return ca_error(CA_ERR_UNSUPPORTED, "config.json key 'rope_parameters.rope_type': only \"default\" RoPE is supported, got %s%.60s",
                            type->type == CA_JSON_STRING ? "" : ca_json_type_name(type->type),
                            type->type == CA_JSON_STRING ? type->str : "");
        const ca_json *theta = get_present(params, "rope_theta");
        if (theta) return ca_json_as_double(theta, "config.json key 'rope_parameters.rope_theta'", &cfg->rope_theta);
    }
    const ca_json *scaling = get_present(obj, "rope_scaling");
    if (scaling) {
        const ca_json *type = scaling->type == CA_JSON_OBJECT ? get_present(scaling, "rope_type") : NULL;
        if (!type) type = scaling->type == CA_JSON_OBJECT ? get_present(scaling, "type") : NULL;
        if (!type || type->type != CA_JSON_STRING || strcmp(type->str, "default") != 0)
            return ca_error(CA_ERR_UNSUPPORTED, "config.json key 'rope_scaling': RoPE scaling is not supported");
    }
    if (get_present(obj, "theta")) return opt_double(obj, "theta", &cfg->rope_theta);
    return opt_double(obj, "rope_theta", &cfg->rope_theta);
}

ca_status ca_lfm2_config_from_json_value(ca_lfm2_config *cfg, const ca_json *root) {
    ca_lfm2_config_defaults(cfg);
    if (!root || root->type != CA_JSON_OBJECT)
        return ca_error(CA_ERR_VALUE, "config.json: expected a JSON object, got %s",
                        root ? ca_json_type_name(root->type) : "nothing");

    /* LFM2-VL: the text model's configuration is the nested text_config object. */
    const ca_json *obj = root;
    const ca_json *model_type = get_present(root, "model_type");
    int is_vl = model_type && model_type->type == CA_JSON_STRING &&
                (strcmp(model_type->str, "lfm2-vl") == 0 || strcmp(model_type->str, "lfm2_vl") == 0);
    const ca_json *text = get_present(root, "text_config");
    if (text) {
        if (text->type != CA_JSON_OBJECT)
            return ca_error(CA_ERR_VALUE, "config.json key 'text_config': expected an object, got %s",
                            ca_json_type_name(text->type));
        obj = text;
        model_type = get_present(obj, "model_type");
    } else if (is_vl) {
        return ca_error(CA_ERR_KEY, "config.json: missing required key 'text_config' in an LFM2-VL config");
    }
    /* A different architecture would otherwise half-parse into a wrong LFM2 (e.g. every layer attention). */
    if (model_type && (model_type->type != CA_JSON_STRING || strcmp(model_type->str, "lfm2") != 0))
        return ca_error(CA_ERR_UNSUPPORTED, "config.json key 'model_type': expected \"lfm2\", got %s%.60s",
                        model_type->type == CA_JSON_STRING ? "" : ca_json_type_name(model_type->type),
                        model_type->type == CA_JSON_STRING ? model_type->str : "");

    /* Required sizes. */
    const ca_json *v;
    if (!(v = get_present(obj, "vocab_size"))) return missing("vocab_size");
    CA_TRY(read_int(v, "vocab_size", 1, &cfg->vocab_size));
    if (!(v = get_present(obj, "hidden_size"))) return missing("hidden_size");
    CA_TRY(read_int(v, "hidden_size", 1, &cfg->hidden_size));
    if (!(v = get_present(obj, "num_hidden_layers"))) return missing("num_hidden_layers");
    CA_TRY(read_int(v, "num_hidden_layers", 1, &cfg->num_hidden_layers));
    if (cfg->num_hidden_layers > CA_MAX_LAYERS)
        return ca_error(CA_ERR_VALUE, "config.json key 'num_hidden_layers': %d exceeds the supported %d",
                        cfg->num_hidden_layers, CA_MAX_LAYERS);
    if ((v = get_present(obj, "num_attention_heads"))) CA_TRY(read_int(v, "num_attention_heads", 1, &cfg->num_attention_heads));
    else if ((v = get_present(obj, "num_heads"))) CA_TRY(read_int(v, "num_heads", 1, &cfg->num_attention_heads));
    else return ca_error(CA_ERR_KEY, "config.json: missing required key 'num_attention_heads' (or 'num_heads')");
    if ((v = get_present(obj, "block_ff_dim"))) CA_TRY(read_int(v, "block_ff_dim", 1, &cfg->intermediate_size));
    else if ((v = get_present(obj, "intermediate_size"))) CA_TRY(read_int(v, "intermediate_size", 1, &cfg->intermediate_size));
    else return ca_error(CA_ERR_KEY, "config.json: missing required key 'intermediate_size' (or 'block_ff_dim')");

    /* Optional, class defaults otherwise. */
    CA_TRY(opt_int(obj, "num_key_value_heads", 1, &cfg->num_key_value_heads));
    if ((v = get_present(obj, "head_dim"))) {
        CA_TRY(read_int(v, "head_dim", 1, &cfg->head_dim));
    } else {
        if (cfg->hidden_size % cfg->num_attention_heads != 0)
            return ca_error(CA_ERR_VALUE,
                            "config.json: hidden_size %d is not divisible by num_attention_heads %d (and no head_dim key)",
                            cfg->hidden_size, cfg->num_attention_heads);
        cfg->head_dim = cfg->hidden_size / cfg->num_attention_heads;
    }
    CA_TRY(opt_int(obj, "conv_L_cache", 1, &cfg->conv_L_cache));
    CA_TRY(opt_bool(obj, "conv_bias", &cfg->conv_bias));
    CA_TRY(opt_int(obj, "block_multiple_of", 1, &cfg->block_multiple_of));
    CA_TRY(opt_bool(obj, "block_auto_adjust_ff_dim", &cfg->block_auto_adjust_ff_dim));
    v = ca_json_get(obj, "block_ffn_dim_multiplier");
    if (v && v->type == CA_JSON_NULL) {
        cfg->has_block_ffn_dim_multiplier = 0;
    } else if (v) {
        CA_TRY(ca_json_as_double(v, "config.json key 'block_ffn_dim_multiplier'", &cfg->block_ffn_dim_multiplier));
        cfg->has_block_ffn_dim_multiplier = 1;
    }
    if (get_present(obj, "norm_eps")) CA_TRY(opt_double(obj, "norm_eps", &cfg->norm_eps));
    else CA_TRY(opt_double(obj, "block_norm_eps", &cfg->norm_eps));
    CA_TRY(read_rope_theta(cfg, obj));
    CA_TRY(opt_int(obj, "max_position_embeddings", 0, &cfg->max_position_embeddings));
    if (get_present(obj, "tie_embedding")) CA_TRY(opt_bool(obj, "tie_embedding", &cfg->tie_word_embeddings));
    else CA_TRY(opt_bool(obj, "tie_word_embeddings", &cfg->tie_word_embeddings));
    CA_TRY(token_id(obj, "pad_token_id", &cfg->pad_token_id));
    CA_TRY(token_id(obj, "bos_token_id", &cfg->bos_token_id));
    CA_TRY(token_id(obj, "eos_token_id", &cfg->eos_token_id));
    CA_TRY(read_layer_types(cfg, obj));
    return ca_lfm2_config_resolve_ffn_dim(cfg);
}

ca_status ca_lfm2_config_from_json(ca_lfm2_config *cfg, const char *json, size_t len) {
    ca_json_doc doc;
    ca_status status = ca_json_parse(&doc, json, len);
    if (status != CA_OK) {
        char inner[512];
        snprintf(inner, sizeof inner, "%s", ca_last_error());
        ca_lfm2_config_defaults(cfg);
        return ca_error(status, "config.json: %s", inner);
    }
    status = ca_lfm2_config_from_json_value(cfg, &doc.root);
    ca_json_free(&doc);
    return status;
}

ca_status ca_lfm2_config_from_file(ca_lfm2_config *cfg, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return ca_error(CA_ERR_IO, "%s: cannot open", path);
    char *buf = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size < 0 || size > CA_CONFIG_MAX_BYTES || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return ca_error(CA_ERR_IO, "%s: cannot read (or larger than 16 MB)", path);
    }
    buf = malloc((size_t)size + 1);
    if (!buf) {
        fclose(f);
        return ca_error(CA_ERR_NOMEM, "out of memory reading %s", path);
    }
    size_t got = fread(buf, 1, (size_t)size, f);
    fclose(f);
    if (got != (size_t)size) {
        free(buf);
        return ca_error(CA_ERR_IO, "%s: short read", path);
    }
    ca_status status = ca_lfm2_config_from_json(cfg, buf, got);
    free(buf);
    if (status != CA_OK) {
        char inner[640];
        snprintf(inner, sizeof inner, "%s", ca_last_error());
        return ca_error(status, "%s: %s", path, inner);
    }
    return CA_OK;
}

ca_status ca_lfm2_config_validate(const ca_lfm2_config *cfg) {
    if (cfg->vocab_size < 1) return ca_error(CA_ERR_VALUE, "vocab_size must be >= 1, got %d", cfg->vocab_size);
    if (cfg->hidden_size < 1) return ca_error(CA_ERR_VALUE, "hidden_size must be >= 1, got %d", cfg->hidden_size);
    if (cfg->num_hidden_layers < 1 || cfg->num_hidden_layers > CA_MAX_LAYERS)
        return ca_error(CA_ERR_VALUE, "num_hidden_layers must be in [1, %d], got %d", CA_MAX_LAYERS,
                        cfg->num_hidden_layers);
    if (cfg->num_attention_heads < 1)
        return ca_error(CA_ERR_VALUE, "num_attention_heads must be >= 1, got %d", cfg->num_attention_heads);
    if (cfg->num_key_value_heads < 1)
        return ca_error(CA_ERR_VALUE, "num_key_value_heads must be >= 1, got %d", cfg->num_key_value_heads);
    if (cfg->num_attention_heads % cfg->num_key_value_heads != 0)
        return ca_error(CA_ERR_VALUE, "num_attention_heads (%d) must be a multiple of num_key_value_heads (%d)",
                        cfg->num_attention_heads, cfg->num_key_value_heads);
    if (cfg->head_dim < 2 || cfg->head_dim % 2 != 0)
        return ca_error(CA_ERR_VALUE, "head_dim must be even and >= 2 for RoPE, got %d", cfg->head_dim);
    if ((long long)cfg->num_attention_heads * cfg->head_dim > INT_MAX)
        return ca_error(CA_ERR_VALUE, "num_attention_heads * head_dim is too large");
    if (cfg->intermediate_size < 1)
        return ca_error(CA_ERR_VALUE, "intermediate_size must be >= 1, got %d", cfg->intermediate_size);
    if (cfg->ffn_dim < 1) return ca_error(CA_ERR_VALUE, "resolved FFN width must be >= 1, got %d", cfg->ffn_dim);
    if (cfg->conv_L_cache < 1) return ca_error(CA_ERR_VALUE, "conv_L_cache must be >= 1, got %d", cfg->conv_L_cache);
    if (cfg->conv_bias)
        return ca_error(CA_ERR_UNSUPPORTED, "conv_bias=true is not supported (every LFM2 checkpoint has none)");
    if (cfg->block_multiple_of < 1)
        return ca_error(CA_ERR_VALUE, "block_multiple_of must be >= 1, got %d", cfg->block_multiple_of);
    if (!(cfg->norm_eps > 0.0) || !isfinite(cfg->norm_eps))
        return ca_error(CA_ERR_VALUE, "norm_eps must be a positive number, got %g", cfg->norm_eps);
    if (!(cfg->rope_theta > 0.0) || !isfinite(cfg->rope_theta))
        return ca_error(CA_ERR_VALUE, "rope_theta must be a positive number, got %g", cfg->rope_theta);
    if (cfg->max_position_embeddings < 0)
        return ca_error(CA_ERR_VALUE, "max_position_embeddings must be >= 0, got %d", cfg->max_position_embeddings);
    for (int i = 0; i < cfg->num_hidden_layers; i++)
        if (cfg->layer_is_attention[i] > 1)
            return ca_error(CA_ERR_VALUE, "layer_is_attention[%d] must be 0 or 1", i);
    return CA_OK;
}
