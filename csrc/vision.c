/* LFM2-VL vision side: SigLIP2 NaFlex tower + pixel unshuffle + projector (lfm2.md §4.3–4.6), forward,
 * backward and checkpoint I/O. The math of each op lives in csrc/cpu/; this file wires them:
 *
 *   per tile t (hP·wP = S valid patches, run unpadded):
 *     h_0 = patches · Wpatchᵀ + b + resize_aa(pos_table, (hP, wP))
 *     mid_l = h_l + out_proj(MHA(LN1_l(h_l)))                   bidirectional, within the tile
 *     h_{l+1} = mid_l + fc2(gelu_tanh(fc1(LN2_l(mid_l))))
 *     xf = post_layernorm(h_L)                                   L = num_layers_run (vision_feature_layer)
 *     u = unshuffle_f(xf on the (hP, wP) grid)                   (S/f², f²D), TL TR BL BR
 *     features = linear_2(gelu_erf(linear_1(LN_proj(u))))       LN_proj optional, eps 1e-5
 */
#include "captionaura/ca_vision.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "captionaura/ca_json.h"
#include "captionaura/ca_profile.h"
#include "captionaura/ca_safetensors.h"

#define VISION_PREFIX "model.vision_tower.vision_model."
#define PROJECTOR_PREFIX "model.multi_modal_projector."
#define PROJECTOR_LN_EPS 1e-5f /* nn.LayerNorm default (lfm2.md gotcha 15) */

/* ------------------------------------------------------------------------------------------------ */
/* config                                                                                            */

static const ca_json *present(const ca_json *obj, const char *key) {
    const ca_json *v = ca_json_get(obj, key);
    return (v && v->type != CA_JSON_NULL) ? v : NULL;
}

static ca_status get_int(const ca_json *obj, const char *where, const char *key, int required, int64_t lo,
                         int *out) {
    const ca_json *v = present(obj, key);
    if (!v) return required ? ca_error(CA_ERR_KEY, "config.json: missing required key '%s%s'", where, key) : CA_OK;
    char what[128];
    snprintf(what, sizeof what, "config.json key '%s%s'", where, key);
    int64_t x;
    CA_TRY(ca_json_as_int(v, what, lo, INT_MAX, &x));
    *out = (int)x;
    return CA_OK;
}

static ca_status get_bool(const ca_json *obj, const char *where, const char *key, int *out) {
    const ca_json *v = present(obj, key);
    if (!v) return CA_OK;
    char what[128];
    snprintf(what, sizeof what, "config.json key '%s%s'", where, key);
    return ca_json_as_bool(v, what, out);
}

/* GELU variant of an ACT2FN name: 1 tanh form, 0 exact. */
static ca_status get_act(const ca_json *obj, const char *where, const char *key, int *tanh_form) {
    const ca_json *v = present(obj, key);
    if (!v) return CA_OK;
    char what[128];
    snprintf(what, sizeof what, "config.json key '%s%s'", where, key);
    const char *s;
    CA_TRY(ca_json_as_string(v, what, &s));
    if (strcmp(s, "gelu_pytorch_tanh") == 0 || strcmp(s, "gelu_new") == 0 || strcmp(s, "gelu_fast") == 0 ||
        strcmp(s, "gelu_python_tanh") == 0)
        *tanh_form = 1;
    else if (strcmp(s, "gelu") == 0 || strcmp(s, "gelu_python") == 0)
        *tanh_form = 0;
    else
        return ca_error(CA_ERR_UNSUPPORTED, "%s: activation \"%.40s\" is not supported (only GELU forms)", what, s);
    return CA_OK;
}

static ca_status config_from_value(ca_vision_config *c, const ca_json *root) {
    memset(c, 0, sizeof *c);
    /* Siglip2VisionConfig and Lfm2VlConfig class defaults */
    c->hidden_size = 768;
    c->intermediate_size = 3072;
    c->num_hidden_layers = 12;
    c->num_attention_heads = 12;
    c->num_channels = 3;
    c->patch_size = 16;
    c->num_patches = 256;
    c->layer_norm_eps = 1e-6;
    c->mlp_gelu_tanh = 1;
    c->vision_use_head = 1;
    c->vision_feature_layer = -1;
    c->downsample_factor = 2;
    c->projector_hidden_size = 2560;
    c->projector_bias = 1;
    c->projector_use_layernorm = 1;
    c->projector_gelu_tanh = 0;
    c->text_hidden_size = 2560;
    if (!root || root->type != CA_JSON_OBJECT) return ca_error(CA_ERR_VALUE, "config.json: expected a JSON object");
    const ca_json *vc = present(root, "vision_config");
    if (!vc) return ca_error(CA_ERR_KEY, "config.json: missing required key 'vision_config' (not an LFM2-VL config?)");
    if (vc->type != CA_JSON_OBJECT) return ca_error(CA_ERR_VALUE, "config.json key 'vision_config': expected an object");
    const ca_json *mt = present(vc, "model_type");
    if (mt && (mt->type != CA_JSON_STRING || strcmp(mt->str, "siglip2_vision_model") != 0))
        return ca_error(CA_ERR_UNSUPPORTED, "config.json key 'vision_config.model_type': expected \"siglip2_vision_model\", got %.60s",
                        mt->type == CA_JSON_STRING ? mt->str : ca_json_type_name(mt->type));
    const char *V = "vision_config.";
    CA_TRY(get_int(vc, V, "hidden_size", 0, 1, &c->hidden_size));
    CA_TRY(get_int(vc, V, "intermediate_size", 0, 1, &c->intermediate_size));
    CA_TRY(get_int(vc, V, "num_hidden_layers", 0, 1, &c->num_hidden_layers));
    CA_TRY(get_int(vc, V, "num_attention_heads", 0, 1, &c->num_attention_heads));
    CA_TRY(get_int(vc, V, "num_channels", 0, 1, &c->num_channels));
    CA_TRY(get_int(vc, V, "patch_size", 0, 1, &c->patch_size));
    CA_TRY(get_int(vc, V, "num_patches", 0, 1, &c->num_patches));
    const ca_json *v = present(vc, "layer_norm_eps");
    if (v) CA_TRY(ca_json_as_double(v, "config.json key 'vision_config.layer_norm_eps'", &c->layer_norm_eps));
    CA_TRY(get_act(vc, V, "hidden_act", &c->mlp_gelu_tanh));
    CA_TRY(get_bool(vc, V, "vision_use_head", &c->vision_use_head));

    v = present(root, "vision_feature_layer");
    if (v) {
        int64_t x;
        CA_TRY(ca_json_as_int(v, "config.json key 'vision_feature_layer'", INT_MIN, INT_MAX, &x));
        c->vision_feature_layer = (int)x;
    }
    CA_TRY(get_int(root, "", "downsample_factor", 0, 1, &c->downsample_factor));
    CA_TRY(get_int(root, "", "projector_hidden_size", 0, 1, &c->projector_hidden_size));
    CA_TRY(get_bool(root, "", "projector_bias", &c->projector_bias));
    CA_TRY(get_bool(root, "", "projector_use_layernorm", &c->projector_use_layernorm));
    CA_TRY(get_act(root, "", "projector_hidden_act", &c->projector_gelu_tanh));
    const ca_json *tc = present(root, "text_config");
    if (tc && tc->type == CA_JSON_OBJECT) CA_TRY(get_int(tc, "text_config.", "hidden_size", 0, 1, &c->text_hidden_size));

    /* which layers run (lfm2.md §4.4): the remote-code model keeps layers[:vision_feature_layer + 1] */
    int n = c->num_hidden_layers, vfl = c->vision_feature_layer;
    if (vfl == -1) c->num_layers_run = n;
    else if (vfl < -n || vfl >= n)
        return ca_error(CA_ERR_VALUE, "config.json key 'vision_feature_layer': %d is out of range for %d vision layers",
                        vfl, n);
    else c->num_layers_run = (vfl < 0 ? vfl + n : vfl) + 1;
    return ca_vision_config_validate(c);
}

ca_status ca_vision_config_from_json(ca_vision_config *cfg, const char *json, size_t len) {
    ca_json_doc doc;
    ca_status st = ca_json_parse(&doc, json, len);
    if (st != CA_OK) {
        char inner[512];
        snprintf(inner, sizeof inner, "%s", ca_last_error());
        return ca_error(st, "config.json: %s", inner);
    }
    st = config_from_value(cfg, &doc.root);
    ca_json_free(&doc);
    return st;
}

ca_status ca_vision_config_validate(const ca_vision_config *c) {
    if (c->hidden_size % c->num_attention_heads != 0)
        return ca_error(CA_ERR_VALUE, "vision hidden_size %d is not divisible by num_attention_heads %d", c->hidden_size,
                        c->num_attention_heads);
    int g = (int)lround(sqrt((double)c->num_patches));
    if (g * g != c->num_patches)
        return ca_error(CA_ERR_VALUE, "vision num_patches %d is not a square (the position table is a square grid)",
                        c->num_patches);
    if (c->num_layers_run < 1 || c->num_layers_run > c->num_hidden_layers || c->num_hidden_layers > CA_MAX_LAYERS)
        return ca_error(CA_ERR_VALUE, "vision layers to run (%d of %d) out of range", c->num_layers_run,
                        c->num_hidden_layers);
    if (!(c->layer_norm_eps > 0.0) || !isfinite(c->layer_norm_eps))
        return ca_error(CA_ERR_VALUE, "vision layer_norm_eps must be a positive number, got %g", c->layer_norm_eps);
    if ((long long)c->num_channels * c->patch_size * c->patch_size > INT_MAX / 4 ||
        (long long)c->hidden_size * c->downsample_factor * c->downsample_factor > INT_MAX / 4)
        return ca_error(CA_ERR_VALUE, "vision sizes too large");
    return CA_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* parameter table                                                                                   */

/* The one place that knows the vision tower's and projector's tensor names, shapes and buffer order. */
static ca_status build_param_table(ca_vision_model *m, ca_param_table *tb) {
    const ca_vision_config *c = &m->cfg;
    const int64_t D = c->hidden_size, F = c->intermediate_size, K = (int64_t)c->num_channels * c->patch_size * c->patch_size;
    const int64_t U = D * c->downsample_factor * c->downsample_factor, PH = c->projector_hidden_size, TH = c->text_hidden_size;
    const char *E = VISION_PREFIX "embeddings.";
    CA_TRY(ca_param_table_add(tb, &m->patch_w, 2, D, K, 0, "%spatch_embedding.weight", E));
    CA_TRY(ca_param_table_add(tb, &m->patch_b, 1, D, 0, 0, "%spatch_embedding.bias", E));
    CA_TRY(ca_param_table_add(tb, &m->pos_table, 2, c->num_patches, D, 0, "%sposition_embedding.weight", E));
    for (int l = 0; l < c->num_layers_run; l++) {
        ca_vision_layer *w = &m->layers[l];
        const char *L = VISION_PREFIX "encoder.layers.";
        CA_TRY(ca_param_table_add(tb, &w->ln1_w, 1, D, 0, 0, "%s%d.layer_norm1.weight", L, l));
        CA_TRY(ca_param_table_add(tb, &w->ln1_b, 1, D, 0, 0, "%s%d.layer_norm1.bias", L, l));
        CA_TRY(ca_param_table_add(tb, &w->q_w, 2, D, D, 0, "%s%d.self_attn.q_proj.weight", L, l));
        CA_TRY(ca_param_table_add(tb, &w->q_b, 1, D, 0, 0, "%s%d.self_attn.q_proj.bias", L, l));
        CA_TRY(ca_param_table_add(tb, &w->k_w, 2, D, D, 0, "%s%d.self_attn.k_proj.weight", L, l));
        CA_TRY(ca_param_table_add(tb, &w->k_b, 1, D, 0, 0, "%s%d.self_attn.k_proj.bias", L, l));
        CA_TRY(ca_param_table_add(tb, &w->v_w, 2, D, D, 0, "%s%d.self_attn.v_proj.weight", L, l));
        CA_TRY(ca_param_table_add(tb, &w->v_b, 1, D, 0, 0, "%s%d.self_attn.v_proj.bias", L, l));
        CA_TRY(ca_param_table_add(tb, &w->o_w, 2, D, D, 0, "%s%d.self_attn.out_proj.weight", L, l));
        CA_TRY(ca_param_table_add(tb, &w->o_b, 1, D, 0, 0, "%s%d.self_attn.out_proj.bias", L, l));
        CA_TRY(ca_param_table_add(tb, &w->ln2_w, 1, D, 0, 0, "%s%d.layer_norm2.weight", L, l));
        CA_TRY(ca_param_table_add(tb, &w->ln2_b, 1, D, 0, 0, "%s%d.layer_norm2.bias", L, l));
        CA_TRY(ca_param_table_add(tb, &w->fc1_w, 2, F, D, 0, "%s%d.mlp.fc1.weight", L, l));
        CA_TRY(ca_param_table_add(tb, &w->fc1_b, 1, F, 0, 0, "%s%d.mlp.fc1.bias", L, l));
        CA_TRY(ca_param_table_add(tb, &w->fc2_w, 2, D, F, 0, "%s%d.mlp.fc2.weight", L, l));
        CA_TRY(ca_param_table_add(tb, &w->fc2_b, 1, D, 0, 0, "%s%d.mlp.fc2.bias", L, l));
    }
    CA_TRY(ca_param_table_add(tb, &m->post_w, 1, D, 0, 0, VISION_PREFIX "post_layernorm.weight"));
    CA_TRY(ca_param_table_add(tb, &m->post_b, 1, D, 0, 0, VISION_PREFIX "post_layernorm.bias"));
    if (c->projector_use_layernorm) {
        CA_TRY(ca_param_table_add(tb, &m->pln_w, 1, U, 0, 0, PROJECTOR_PREFIX "layer_norm.weight"));
        CA_TRY(ca_param_table_add(tb, &m->pln_b, 1, U, 0, 0, PROJECTOR_PREFIX "layer_norm.bias"));
    }
    CA_TRY(ca_param_table_add(tb, &m->l1_w, 2, PH, U, 0, PROJECTOR_PREFIX "linear_1.weight"));
    if (c->projector_bias) CA_TRY(ca_param_table_add(tb, &m->l1_b, 1, PH, 0, 0, PROJECTOR_PREFIX "linear_1.bias"));
    CA_TRY(ca_param_table_add(tb, &m->l2_w, 2, TH, PH, 0, PROJECTOR_PREFIX "linear_2.weight"));
    if (c->projector_bias) CA_TRY(ca_param_table_add(tb, &m->l2_b, 1, TH, 0, 0, PROJECTOR_PREFIX "linear_2.bias"));
    return CA_OK;
}

ca_status ca_vision_create(ca_vision_model **out, const ca_vision_config *cfg, const ca_backend *be) {
    *out = NULL;
    CA_TRY(ca_vision_config_validate(cfg));
    ca_vision_model *m = calloc(1, sizeof *m);
    if (!m) return ca_error(CA_ERR_NOMEM, "out of memory allocating the vision model");
    m->cfg = *cfg;
    m->be = be ? be : &ca_cpu_backend;
    m->layers = calloc((size_t)cfg->num_layers_run, sizeof *m->layers);
    m->lacts = calloc((size_t)cfg->num_layers_run, sizeof *m->lacts);
    m->lora_slot = malloc(((size_t)cfg->num_layers_run * CA_VPROJ_PER_LAYER + 3) * sizeof *m->lora_slot);
    m->lora_enabled = 1;
    ca_param_table tb = {0};
    ca_status st = (m->layers && m->lacts && m->lora_slot)
                       ? CA_OK
                       : ca_error(CA_ERR_NOMEM, "out of memory allocating vision layers");
    for (int i = 0; m->lora_slot && i < cfg->num_layers_run * CA_VPROJ_PER_LAYER + 3; i++) m->lora_slot[i] = -1;
    if (st == CA_OK) st = build_param_table(m, &tb);
    if (st == CA_OK)
        st = ca_param_table_bind(&tb, m->be, &m->params, &m->param_info, &m->num_param_tensors, &m->num_parameters);
    if (st != CA_OK) {
        ca_param_table_discard(&tb);
        ca_vision_free(m);
        return st;
    }
    *out = m;
    return CA_OK;
}

void ca_vision_free(ca_vision_model *m) {
    if (!m) return;
    ca_cpu_backend.free(m->params_bf16);
    m->be->free(m->params);
    m->be->free(m->grads);
    m->be->free(m->acts);
    ca_vision_lora_clear(m);
    free(m->lora_slot);
    free(m->param_info);
    free(m->layers);
    free(m->lacts);
    free(m->tile_h);
    free(m->tile_w);
    free(m->tile_off);
    free(m->tile_att);
    free(m->tile_tok);
    free(m);
}

/* Moves parameters and gradients to backend `be` (activations are re-made by the next forward), re-binding the
 * views through a fresh table as ca_lfm2_set_backend does. On failure nothing changes. */
ca_status ca_vision_set_backend(ca_vision_model *m, const ca_backend *be) {
    if (be == m->be) return CA_OK;
    if (m->params_bf16)
        return ca_error(CA_ERR_VALUE, "bf16 vision weights run on the CPU only: call to_inference_dtype('fp32') "
                                      "before moving the model to %s", be->name);
    ca_param_table tb = {0};
    ca_status st = build_param_table(m, &tb);
    if (st != CA_OK) {
        ca_param_table_discard(&tb);
        return st;
    }
    ca_train_buffers bufs = {m->grads, m->lora_params, m->lora_grads};
    st = ca_params_move(&tb, m->be, be, &m->params, m->num_parameters, &bufs, m->lora_size, "vision model");
    if (st != CA_OK) return st;
    m->grads = bufs.grads;
    m->lora_params = bufs.lora_params;
    m->lora_grads = bufs.lora_grads;
    m->be->free(m->acts);
    m->acts = NULL;
    m->acts_floats = 0;
    m->have_train_acts = 0;
    m->be = be;
    return CA_OK;
}

/* Rounds params to bf16 in place and refreshes the bf16 copy (after anything that wrote params). */
static void repack_bf16(ca_vision_model *m) {
    m->fp32_dropped = 0; /* params were (re)written whole: loading, init, merging */
    if (!m->params_bf16) return;
    ca_cpu_bf16_from_f32(m->params_bf16, m->params, m->num_parameters);
    ca_cpu_f32_from_bf16(m->params, m->params_bf16, m->num_parameters);
}

static float *proj_weight(const ca_vision_model *m, int l, ca_vision_proj proj, float **bias, int *in, int *out);

/* fn(m, W, n, ctx) over every linear weight (out × in = n floats) of the tower and projector */
static void each_linear_weight(ca_vision_model *m, void (*fn)(ca_vision_model *, float *, size_t, void *), void *ctx) {
    for (int l = 0; l < m->cfg.num_layers_run + 1; l++)
        for (int p = 0; p < CA_NUM_VPROJ; p++) {
            if ((l < m->cfg.num_layers_run) != (p < CA_VPROJ_PER_LAYER)) continue; /* per-layer, then the rest once */
            int in = 0, out = 0;
            float *bias, *W = proj_weight(m, l, (ca_vision_proj)p, &bias, &in, &out);
            fn(m, W, (size_t)in * out, ctx);
        }
}

static void widen_back(ca_vision_model *m, float *W, size_t n, void *ctx) {
    ca_cpu_f32_from_bf16(W, m->params_bf16 + (W - m->params), n);
}

/* ctx: one flag per parameter tensor, set for the linear weights */
static void mark_linear(ca_vision_model *m, float *W, size_t n, void *ctx) {
    for (int i = 0; i < m->num_param_tensors; i++)
        if (m->params + m->param_info[i].offset == W) ((unsigned char *)ctx)[i] = 1;
}

/* One flag per parameter tensor, set for the linear weights (the ones whose fp32 values can be given back). */
static unsigned char *linear_flags(ca_vision_model *m) {
    unsigned char *linear = calloc((size_t)m->num_param_tensors, 1);
    if (linear) each_linear_weight(m, mark_linear, linear);
    return linear;
}

/* Tensor i's bf16 copy from its fp32 values, which are rounded in place, or given back (a linear weight). */
static void pack_tensor(ca_vision_model *m, int i, int give_back) {
    const ca_param_info *p = &m->param_info[i];
    ca_params_pack_bf16(m->params_bf16 + p->offset, m->params + p->offset, p->numel, give_back);
}

/* repack_bf16 for keep_fp32 = 0: tensor by tensor, each linear weight giving its fp32 pages back as soon as it
 * is packed, so that converting never holds both copies of the weights. */
static ca_status pack_dropping_fp32(ca_vision_model *m) {
    unsigned char *linear = linear_flags(m);
    if (!linear) return ca_error(CA_ERR_NOMEM, "out of memory");
    for (int i = 0; i < m->num_param_tensors; i++) pack_tensor(m, i, linear[i]);
    free(linear);
    m->fp32_dropped = 1;
    return CA_OK;
}

ca_status ca_vision_set_dtype(ca_vision_model *m, const char *dtype, int keep_fp32) {
    const int bf16 = !strcmp(dtype, "bf16");
    if (!bf16 && strcmp(dtype, "fp32"))
        return ca_error(CA_ERR_VALUE, "vision dtype '%s' is not one of 'fp32', 'bf16'", dtype);
    if (!keep_fp32 && !bf16) return ca_error(CA_ERR_VALUE, "only a bf16 vision tower can give back its fp32 weights");
    if (!keep_fp32 && strcmp(ca_cpu_lowp_isa(), "avx512") != 0)
        return ca_error(CA_ERR_VALUE, "giving back the fp32 weights needs AVX512-BF16 (this CPU's bf16 GEMMs fall "
                                      "back to fp32 ones, which read them)");
    if (bf16 && m->be != &ca_cpu_backend && m->be != &ca_cpu_profiling_backend)
        return ca_error(CA_ERR_VALUE, "bf16 vision weights run on the CPU only (the model is on %s)", m->be->name);
    if (m->fp32_dropped) {
        each_linear_weight(m, widen_back, NULL);
        m->fp32_dropped = 0;
    }
    ca_cpu_backend.free(m->params_bf16);
    m->params_bf16 = NULL;
    /* not zeroed first: the packing writes it whole, and its pages cost memory only as the packing reaches them */
    if (bf16 && !(m->params_bf16 = ca_cpu_alloc_uninit(m->num_parameters * sizeof(uint16_t))))
        return ca_error(CA_ERR_NOMEM, "out of memory for %zu bf16 vision weights", m->num_parameters);
    if (keep_fp32) {
        repack_bf16(m);
        return CA_OK;
    }
    ca_status st = pack_dropping_fp32(m);
    if (st != CA_OK) {
        ca_cpu_backend.free(m->params_bf16);
        m->params_bf16 = NULL;
    }
    return st;
}

const char *ca_vision_dtype(const ca_vision_model *m) {
    return m->params_bf16 ? "bf16" : "fp32";
}

int ca_vision_find_param(const ca_vision_model *m, const char *name) {
    return ca_param_find(m->param_info, m->num_param_tensors, name);
}

ca_status ca_vision_init_random(ca_vision_model *m, uint64_t seed, float std) {
    ca_rng rng;
    ca_rng_seed(&rng, seed);
    for (int i = 0; i < m->num_param_tensors; i++) {
        const ca_param_info *p = &m->param_info[i];
        float *w = m->params + p->offset;
        if (p->ndim == 1) { /* LayerNorm weight 1, every bias 0 (nn.LayerNorm / nn.Linear conventions) */
            size_t n = strlen(p->name);
            float v = (n > 7 && strcmp(p->name + n - 7, ".weight") == 0) ? 1.0f : 0.0f;
            for (size_t j = 0; j < p->numel; j++) w[j] = v;
            continue;
        }
        ca_rng_fill_normal(&rng, w, p->numel, std);
    }
    repack_bf16(m);
    return CA_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* inputs and the activation arena                                                                   */

static ca_status check_tiles(const ca_vision_model *m, const int32_t *shapes, const int32_t *mask, int T, int P,
                             int64_t *patches, int64_t *tokens) {
    const int f = m->cfg.downsample_factor;
    if (T <= 0 || P <= 0) return ca_error(CA_ERR_VALUE, "pixel_values is empty (%d tiles of %d patches)", T, P);
    int64_t n = 0, t_out = 0;
    for (int t = 0; t < T; t++) {
        int h = shapes[2 * t], w = shapes[2 * t + 1];
        if (h < 1 || w < 1)
            return ca_error(CA_ERR_VALUE, "spatial_shapes[%d] = (%d, %d): both sides must be >= 1", t, h, w);
        if ((int64_t)h * w > P)
            return ca_error(CA_ERR_SHAPE, "spatial_shapes[%d] = (%d, %d) has %lld patches but pixel_values holds %d per tile",
                            t, h, w, (long long)h * w, P);
        if (h % f || w % f)
            return ca_error(CA_ERR_SHAPE, "spatial_shapes[%d] = (%d, %d) is not divisible by downsample_factor %d", t, h, w, f);
        if (mask) {
            const int32_t *mr = mask + (size_t)t * P;
            for (int j = 0; j < P; j++) {
                int want = j < h * w;
                if (mr[j] != want)
                    return ca_error(CA_ERR_VALUE,
                                    "pixel_attention_mask[%d, %d] = %d, but spatial_shapes (%d, %d) makes the first %d patches "
                                    "valid and the rest padding",
                                    t, j, mr[j], h, w, h * w);
            }
        }
        n += (int64_t)h * w;
        t_out += (int64_t)(h / f) * (w / f);
    }
    if (n > INT_MAX / 4) return ca_error(CA_ERR_VALUE, "too many patches in one batch (%lld)", (long long)n);
    *patches = n;
    *tokens = t_out;
    return CA_OK;
}

ca_status ca_vision_num_tokens(const ca_vision_model *m, int64_t *tokens, int64_t *patches,
                               const int32_t *spatial_shapes, const int32_t *mask, int T, int P) {
    return check_tiles(m, spatial_shapes, mask, T, P, patches, tokens);
}

/* Rows an adapter's linear sees: the N packed patches in the tower, the M output tokens in the projector. */
static size_t lora_rows(const ca_vision_lora_adapter *a, size_t N, size_t M) {
    return (a->proj == CA_VPROJ_LINEAR_1 || a->proj == CA_VPROJ_LINEAR_2) ? M : N;
}

/* Lays out (base == NULL: only measures) every activation buffer for N packed patches, M output tokens and
 * A attention probabilities per layer; `slots` layer-activation sets (all layers for training, else one). */
static size_t layout_acts(ca_vision_model *m, float *base, size_t N, size_t M, size_t A, int slots) {
    const ca_vision_config *c = &m->cfg;
    const size_t D = c->hidden_size, F = c->intermediate_size, K = (size_t)c->num_channels * c->patch_size * c->patch_size;
    const size_t U = D * c->downsample_factor * c->downsample_factor, PH = c->projector_hidden_size;
    const size_t L = c->num_layers_run;
    size_t used = 0;
#define TAKE(ptr, count)                                                                           \
    do {                                                                                           \
        size_t n_ = ((count) + 15) & ~(size_t)15;                                                  \
        if (base) (ptr) = base + used;                                                             \
        used += n_;                                                                                \
    } while (0)
    for (int s = 0; s < slots; s++) {
        ca_vision_layer_acts a = {0};
        TAKE(a.x1, N * D);
        TAKE(a.mean1, N);
        TAKE(a.rstd1, N);
        TAKE(a.q, N * D);
        TAKE(a.k, N * D);
        TAKE(a.v, N * D);
        TAKE(a.att, A);
        TAKE(a.ao, N * D);
        TAKE(a.mid, N * D);
        TAKE(a.x2, N * D);
        TAKE(a.mean2, N);
        TAKE(a.rstd2, N);
        TAKE(a.h1, N * F);
        TAKE(a.act, N * F);
        if (base)
            for (size_t l = s; l < (slots == 1 ? L : (size_t)s + 1); l++) m->lacts[l] = a; /* one slot: shared */
    }
    TAKE(m->x_in, N * K);
    TAKE(m->pos, N * D);
    TAKE(m->hs, (L + 1) * N * D);
    TAKE(m->xf, N * D);
    TAKE(m->meanf, N);
    TAKE(m->rstdf, N);
    TAKE(m->un, M * U);
    TAKE(m->pn, M * U);
    TAKE(m->meanp, M);
    TAKE(m->rstdp, M);
    TAKE(m->p1, M * PH);
    TAKE(m->pa, M * PH);
    size_t max_drop = 0;
    for (int i = 0; i < m->num_lora; i++) {
        ca_vision_lora_adapter *a = &m->lora[i];
        const size_t rows = lora_rows(a, N, M);
        TAKE(a->h, rows * a->r);
        if (a->dropout > 0 && rows * a->in > max_drop) max_drop = rows * a->in;
    }
    TAKE(m->lora_xdrop, max_drop);
#undef TAKE
    return used;
}

static ca_status ensure_tiles(ca_vision_model *m, int T) {
    if (T <= m->tiles_cap) return CA_OK;
    int *h = realloc(m->tile_h, (size_t)T * sizeof *h);
    if (h) m->tile_h = h;
    int *w = realloc(m->tile_w, (size_t)T * sizeof *w);
    if (w) m->tile_w = w;
    size_t *o = realloc(m->tile_off, (size_t)(T + 1) * sizeof *o);
    if (o) m->tile_off = o;
    size_t *a = realloc(m->tile_att, (size_t)T * sizeof *a);
    if (a) m->tile_att = a;
    size_t *k = realloc(m->tile_tok, (size_t)(T + 1) * sizeof *k);
    if (k) m->tile_tok = k;
    if (!h || !w || !o || !a || !k) return ca_error(CA_ERR_NOMEM, "out of memory for %d tiles", T);
    m->tiles_cap = T;
    return CA_OK;
}

static ca_status ensure_acts(ca_vision_model *m, size_t N, size_t M, size_t A, int slots) {
    size_t need = layout_acts(m, NULL, N, M, A, slots);
    if (!m->acts || need > m->acts_floats) {
        m->be->free(m->acts);
        m->acts = m->be->alloc(need * sizeof(float));
        if (!m->acts) {
            m->acts_floats = 0;
            return ca_error(CA_ERR_NOMEM, "out of memory allocating vision activations (%.1f MB)", need * 4.0 / 1e6);
        }
        m->acts_floats = need;
    }
    layout_acts(m, m->acts, N, M, A, slots);
    return CA_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* projections: the one choke point where every linear of the vision side runs, LoRA included          */

static const char *const vproj_names[CA_NUM_VPROJ] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2",
    "embeddings.patch_embedding", "linear_1", "linear_2",
};

const char *ca_vision_proj_name(ca_vision_proj proj) {
    return proj >= 0 && proj < CA_NUM_VPROJ ? vproj_names[proj] : "?";
}

/* The weight (out, in) and bias of linear `proj` (of encoder layer `l` for the per-layer ones). */
static float *proj_weight(const ca_vision_model *m, int l, ca_vision_proj proj, float **bias, int *in, int *out) {
    const ca_vision_config *c = &m->cfg;
    const int D = c->hidden_size, F = c->intermediate_size, K = c->num_channels * c->patch_size * c->patch_size;
    const int U = D * c->downsample_factor * c->downsample_factor, PH = c->projector_hidden_size;
    const ca_vision_layer *w = proj < CA_VPROJ_PER_LAYER ? &m->layers[l] : NULL;
    switch (proj) {
    case CA_VPROJ_Q: *in = D, *out = D, *bias = w->q_b; return w->q_w;
    case CA_VPROJ_K: *in = D, *out = D, *bias = w->k_b; return w->k_w;
    case CA_VPROJ_V: *in = D, *out = D, *bias = w->v_b; return w->v_w;
    case CA_VPROJ_OUT: *in = D, *out = D, *bias = w->o_b; return w->o_w;
    case CA_VPROJ_FC1: *in = D, *out = F, *bias = w->fc1_b; return w->fc1_w;
    case CA_VPROJ_FC2: *in = F, *out = D, *bias = w->fc2_b; return w->fc2_w;
    case CA_VPROJ_PATCH: *in = K, *out = D, *bias = m->patch_b; return m->patch_w;
    case CA_VPROJ_LINEAR_1: *in = U, *out = PH, *bias = m->l1_b; return m->l1_w;
    case CA_VPROJ_LINEAR_2: *in = PH, *out = c->text_hidden_size, *bias = m->l2_b; return m->l2_w;
    default: return NULL;
    }
}

static int slot_index(const ca_vision_model *m, int l, ca_vision_proj proj) {
    return proj < CA_VPROJ_PER_LAYER ? l * CA_VPROJ_PER_LAYER + proj
                                     : m->cfg.num_layers_run * CA_VPROJ_PER_LAYER + (proj - CA_VPROJ_PER_LAYER);
}

static const ca_vision_lora_adapter *lora_at(const ca_vision_model *m, int l, ca_vision_proj proj) {
    if (!m->lora_enabled || !m->num_lora) return NULL;
    int slot = m->lora_slot[slot_index(m, l, proj)];
    return slot < 0 ? NULL : &m->lora[slot];
}

/* Each adapter draws its own dropout mask per train forward from (step seed, adapter index). */
static uint64_t lora_dropout_seed(const ca_vision_model *m, const ca_vision_lora_adapter *a) {
    return m->dropout_seed * 0x100000001B3ull + (uint64_t)(a - m->lora) * 0x9E3779B97F4A7C15ull;
}

/* out (rows, outd) = inp (rows, in) · Wᵀ + b  [+ s · B(A·dropout(inp)) when the linear has an adapter] */
static void proj_forward(ca_vision_model *m, int l, ca_vision_proj proj, float *out, const float *inp, int rows,
                         int train) {
    int in, outd;
    float *bias;
    const float *W = proj_weight(m, l, proj, &bias, &in, &outd);
    if (m->params_bf16 && ca_cpu_linear_bf16_gemm_forward(out, inp, m->params_bf16 + (W - m->params), W, rows, in,
                                                          outd) == 0) {
        for (int n = 0; bias && n < rows; n++)
            for (int o = 0; o < outd; o++) out[(size_t)n * outd + o] += bias[o];
    } else if (m->fp32_dropped) { /* no fp32 weights to fall back on: the pass fails at its end */
        m->lowp_oom = 1;
        memset(out, 0, (size_t)rows * outd * sizeof(float));
    } else {
        m->be->linear_forward(out, inp, W, bias, rows, in, outd);
    }
    const ca_vision_lora_adapter *a = lora_at(m, l, proj);
    if (!a) return;
    const float *x = inp;
    if (a->dropout > 0 && train) {
        m->be->dropout_forward(m->lora_xdrop, inp, (size_t)rows * in, a->dropout, lora_dropout_seed(m, a));
        x = m->lora_xdrop;
    }
    m->be->lora_forward(out, a->h, x, m->lora_params + a->a_offset, m->lora_params + a->b_offset, a->scaling, rows,
                        in, outd, a->r);
}

/* Backward scratch of the LoRA path: (rows, max r) dh, and (rows, max in) regenerated dropout input and its
 * gradient before dropout's backward. */
typedef struct {
    float *dh, *xdrop, *dxl;
} lora_scratch;

static float *grad_of(const ca_vision_model *m, const float *param);

/* dinp (= or += by accumulate; NULL: not wanted) and the gradients of W, b and of the adapter, from dout. */
static void proj_backward(ca_vision_model *m, int l, ca_vision_proj proj, float *dinp, const float *dout,
                          const float *inp, int rows, int accumulate, const lora_scratch *s) {
    int in, outd;
    float *bias;
    const float *W = proj_weight(m, l, proj, &bias, &in, &outd);
    if (!m->params_bf16 || !dinp ||
        ca_cpu_linear_bf16_gemm_backward(dinp, dout, m->params_bf16 + (W - m->params), W, rows, in, outd,
                                         accumulate) != 0) { /* (bf16: the base is frozen, no dW or db) */
        if (m->fp32_dropped && dinp) m->lowp_oom = 1; /* no fp32 weights to fall back on: the pass fails */
        else m->be->linear_backward(dinp, grad_of(m, W), grad_of(m, bias), dout, inp, W, rows, in, outd, accumulate);
    }
    const ca_vision_lora_adapter *a = lora_at(m, l, proj);
    if (!a) return;
    const float *A = m->lora_params + a->a_offset, *Bw = m->lora_params + a->b_offset;
    float *dA = m->lora_freeze_A ? NULL : m->lora_grads + a->a_offset, *dB = m->lora_grads + a->b_offset;
    if (a->dropout > 0) {
        const uint64_t seed = lora_dropout_seed(m, a);
        const size_t n = (size_t)rows * in;
        m->be->dropout_forward(s->xdrop, inp, n, a->dropout, seed);
        if (dinp) m->be->zero(s->dxl, n);
        m->be->lora_backward(dinp ? s->dxl : NULL, dA, dB, s->dh, dout, s->xdrop, a->h, A, Bw, a->scaling, rows, in,
                             outd, a->r);
        if (dinp) {
            m->be->dropout_backward(s->dxl, s->dxl, n, a->dropout, seed);
            m->be->add_inplace(dinp, s->dxl, n);
        }
    } else {
        m->be->lora_backward(dinp, dA, dB, s->dh, dout, inp, a->h, A, Bw, a->scaling, rows, in, outd, a->r);
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* forward                                                                                           */

static void layer_forward(ca_vision_model *m, int l, int train) {
    const ca_backend *be = m->be;
    const ca_vision_config *c = &m->cfg;
    const int N = (int)m->tile_off[m->num_tiles], D = c->hidden_size, F = c->intermediate_size;
    const int NH = c->num_attention_heads, HS = D / NH;
    const float eps = (float)c->layer_norm_eps;
    const ca_vision_layer *w = &m->layers[l];
    ca_vision_layer_acts *a = &m->lacts[l];
    const float *h = m->hs + (size_t)l * N * D;   /* (N, D) layer input */
    float *hout = m->hs + (size_t)(l + 1) * N * D; /* (N, D) layer output */

    be->layernorm_forward(a->x1, a->mean1, a->rstd1, h, w->ln1_w, w->ln1_b, N, D, eps);
    proj_forward(m, l, CA_VPROJ_Q, a->q, a->x1, N, train);
    proj_forward(m, l, CA_VPROJ_K, a->k, a->x1, N, train);
    proj_forward(m, l, CA_VPROJ_V, a->v, a->x1, N, train);
    for (int t = 0; t < m->num_tiles; t++) { /* bidirectional attention within each tile's valid patches */
        size_t off = m->tile_off[t] * D;
        int S = (int)(m->tile_off[t + 1] - m->tile_off[t]);
        if (!m->params_bf16 ||
            ca_cpu_mha_bf16_forward(a->ao + off, a->att + m->tile_att[t], a->q + off, a->k + off, a->v + off, S, NH,
                                    HS) != 0)
            be->mha_forward(a->ao + off, a->att + m->tile_att[t], a->q + off, a->k + off, a->v + off, S, NH, HS);
    }
    proj_forward(m, l, CA_VPROJ_OUT, a->mid, a->ao, N, train);
    be->add_inplace(a->mid, h, (size_t)N * D);
    be->layernorm_forward(a->x2, a->mean2, a->rstd2, a->mid, w->ln2_w, w->ln2_b, N, D, eps);
    proj_forward(m, l, CA_VPROJ_FC1, a->h1, a->x2, N, train);
    be->gelu_forward(a->act, a->h1, (size_t)N * F, c->mlp_gelu_tanh);
    proj_forward(m, l, CA_VPROJ_FC2, hout, a->act, N, train);
    be->add_inplace(hout, a->mid, (size_t)N * D);
}

ca_status ca_vision_forward(ca_vision_model *m, float *features, float *hidden, const float *pixel_values,
                            const int32_t *spatial_shapes, const int32_t *mask, int T, int P, int train) {
    const ca_vision_config *c = &m->cfg;
    const ca_backend *be = m->be;
    int64_t N64, M64;
    m->have_train_acts = 0;
    CA_TRY(check_tiles(m, spatial_shapes, mask, T, P, &N64, &M64));
    CA_TRY(ensure_tiles(m, T));
    const int D = c->hidden_size, K = c->num_channels * c->patch_size * c->patch_size, f = c->downsample_factor;
    const int NH = c->num_attention_heads, G = (int)lround(sqrt((double)c->num_patches));
    const int U = D * f * f, PH = c->projector_hidden_size, L = c->num_layers_run;
    size_t A = 0;
    m->num_tiles = T;
    m->tile_off[0] = m->tile_tok[0] = 0;
    for (int t = 0; t < T; t++) {
        int h = spatial_shapes[2 * t], w = spatial_shapes[2 * t + 1];
        m->tile_h[t] = h;
        m->tile_w[t] = w;
        m->tile_off[t + 1] = m->tile_off[t] + (size_t)h * w;
        m->tile_tok[t + 1] = m->tile_tok[t] + (size_t)(h / f) * (w / f);
        m->tile_att[t] = A;
        A += (size_t)NH * h * w * h * w;
    }
    const size_t N = (size_t)N64, M = (size_t)M64;
    m->att_floats = A;
    CA_TRY(ensure_acts(m, N, M, A, train ? L : 1));
    if (train) m->dropout_seed++; /* a fresh dropout mask every step, the same in forward and backward */

    /* embeddings: patch_embedding over the packed valid patches, plus the per-tile resized position table */
    for (int t = 0; t < T; t++)
        m->be->copy(m->x_in + m->tile_off[t] * K, pixel_values + (size_t)t * P * K,
                    (m->tile_off[t + 1] - m->tile_off[t]) * K * sizeof(float));
    proj_forward(m, -1, CA_VPROJ_PATCH, m->hs, m->x_in, (int)N, train);
    for (int t = 0; t < T; t++)
        be->posresize_forward(m->pos + m->tile_off[t] * D, m->pos_table, G, G, m->tile_h[t], m->tile_w[t], D);
    be->add_inplace(m->hs, m->pos, N * D);

    for (int l = 0; l < L; l++) layer_forward(m, l, train);
    be->layernorm_forward(m->xf, m->meanf, m->rstdf, m->hs + (size_t)L * N * D, m->post_w, m->post_b, (int)N, D,
                          (float)c->layer_norm_eps);

    /* projector, per tile: unshuffle on its (hP, wP) grid, then LayerNorm → linear_1 → GELU → linear_2 */
    for (int t = 0; t < T; t++)
        be->unshuffle_forward(m->un + m->tile_tok[t] * U, m->xf + m->tile_off[t] * D, m->tile_h[t], m->tile_w[t], D, f);
    const float *pin = m->un;
    if (m->pln_w) {
        be->layernorm_forward(m->pn, m->meanp, m->rstdp, m->un, m->pln_w, m->pln_b, (int)M, U, PROJECTOR_LN_EPS);
        pin = m->pn;
    }
    proj_forward(m, -1, CA_VPROJ_LINEAR_1, m->p1, pin, (int)M, train);
    be->gelu_forward(m->pa, m->p1, M * PH, c->projector_gelu_tanh);
    if (features) proj_forward(m, -1, CA_VPROJ_LINEAR_2, features, m->pa, (int)M, train);
    if (hidden) m->be->copy(hidden, m->hs, (size_t)(L + 1) * N * D * sizeof(float));
    m->have_train_acts = train ? 1 : 0;
    return ca_pass_status(&m->lowp_oom, m->be);
}

/* ------------------------------------------------------------------------------------------------ */
/* backward                                                                                          */

/* The gradient slot of a parameter view; NULL for an absent tensor or a frozen base. */
static float *grad_of(const ca_vision_model *m, const float *param) {
    return (param && m->grads && !m->base_frozen) ? m->grads + (param - m->params) : NULL;
}

typedef struct {
    float *dres; /* (N, D) residual-stream gradient */
    float *dx;   /* (N, D) gradient of a LayerNorm output */
    float *dao;  /* (N, D) */
    float *dq, *dk, *dv; /* (N, D) */
    float *dact; /* (N, F) */
    float *dh1;  /* (N, F) */
    float *du;   /* (M, U) d unshuffled features */
    float *dpn;  /* (M, U) d projector-LN output */
    float *dpa;  /* (M, PH) */
    float *dp1;  /* (M, PH) */
    float *dS;   /* Σ_t NH·S_t² attention-score gradients (mha_backward workspace) */
    lora_scratch lora; /* dh (max rows, max r), xdrop and dxl (max rows, max in) */
    float *base;
} vision_scratch;

ca_status ca_vision_backward(ca_vision_model *m, const float *d_features, int accumulate) {
    if (!m->have_train_acts)
        return ca_error(CA_ERR_VALUE, "vision backward needs a preceding forward with train=True on the same model");
    const ca_vision_config *c = &m->cfg;
    const ca_backend *be = m->be;
    const int D = c->hidden_size, F = c->intermediate_size;
    const int f = c->downsample_factor, U = D * f * f, PH = c->projector_hidden_size;
    const int NH = c->num_attention_heads, HS = D / NH, L = c->num_layers_run, G = (int)lround(sqrt((double)c->num_patches));
    const int T = m->num_tiles, N = (int)m->tile_off[T], M = (int)m->tile_tok[T];
    if (m->params_bf16 && !m->base_frozen)
        return ca_error(CA_ERR_VALUE, "a vision tower with bf16 weights trains LoRA adapters only (a frozen base): "
                                      "call to_inference_dtype('fp32') to train base parameters");
    if (m->base_frozen) {
        /* LoRA: no base gradient to fill */
    } else if (!m->grads) {
        m->grads = be->alloc(m->num_parameters * sizeof(float));
        if (!m->grads) return ca_error(CA_ERR_NOMEM, "out of memory allocating vision gradients");
    } else if (!accumulate) {
        be->zero(m->grads, m->num_parameters);
    }
    if (m->num_lora && m->lora_enabled && !accumulate) be->zero(m->lora_grads, m->lora_size);
    size_t max_rh = 0, max_drop = 0;
    for (int i = 0; i < m->num_lora; i++) {
        const ca_vision_lora_adapter *a = &m->lora[i];
        const size_t rows = lora_rows(a, (size_t)N, (size_t)M);
        if (rows * a->r > max_rh) max_rh = rows * a->r;
        if (a->dropout > 0 && rows * a->in > max_drop) max_drop = rows * a->in;
    }
    vision_scratch s;
    const size_t sizes[] = {(size_t)N * D, (size_t)N * D, (size_t)N * D, (size_t)N * D, (size_t)N * D, (size_t)N * D,
                            (size_t)N * F, (size_t)N * F, (size_t)M * U, (size_t)M * U, (size_t)M * PH, (size_t)M * PH,
                            m->att_floats, max_rh, max_drop, max_drop};
    float **slots[] = {&s.dres, &s.dx, &s.dao, &s.dq, &s.dk, &s.dv, &s.dact, &s.dh1, &s.du, &s.dpn, &s.dpa, &s.dp1, &s.dS,
                       &s.lora.dh, &s.lora.xdrop, &s.lora.dxl};
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) total += (sizes[i] + 15) & ~(size_t)15;
    s.base = be->alloc(total * sizeof(float));
    if (!s.base) return ca_error(CA_ERR_NOMEM, "out of memory allocating vision backward scratch (%.1f MB)", total * 4.0 / 1e6);
    for (size_t i = 0, used = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        *slots[i] = s.base + used;
        used += (sizes[i] + 15) & ~(size_t)15;
    }

    /* projector: features = linear_2(gelu(linear_1(pn))) */
    proj_backward(m, -1, CA_VPROJ_LINEAR_2, s.dpa, d_features, m->pa, M, 0, &s.lora);
    be->gelu_backward(s.dp1, s.dpa, m->p1, (size_t)M * PH, c->projector_gelu_tanh);
    if (m->pln_w) {
        proj_backward(m, -1, CA_VPROJ_LINEAR_1, s.dpn, s.dp1, m->pn, M, 0, &s.lora);
        be->zero(s.du, (size_t)M * U); /* layernorm_backward accumulates */
        be->layernorm_backward(s.du, grad_of(m, m->pln_w), grad_of(m, m->pln_b), s.dpn, m->un, m->pln_w, m->meanp,
                               m->rstdp, M, U);
    } else {
        proj_backward(m, -1, CA_VPROJ_LINEAR_1, s.du, s.dp1, m->un, M, 0, &s.lora);
    }
    for (int t = 0; t < T; t++)
        be->unshuffle_backward(s.dx + m->tile_off[t] * D, s.du + m->tile_tok[t] * U, m->tile_h[t], m->tile_w[t], D, f);
    be->zero(s.dres, (size_t)N * D);
    be->layernorm_backward(s.dres, grad_of(m, m->post_w), grad_of(m, m->post_b), s.dx, m->hs + (size_t)L * N * D,
                           m->post_w, m->meanf, m->rstdf, N, D);

    for (int l = L - 1; l >= 0; l--) {
        const ca_vision_layer *w = &m->layers[l];
        const ca_vision_layer_acts *a = &m->lacts[l];
        const float *h = m->hs + (size_t)l * N * D;
        /* MLP: hout = mid + fc2(gelu(fc1(x2))); s.dres = d hout on entry, d mid after layer_norm2's backward */
        proj_backward(m, l, CA_VPROJ_FC2, s.dact, s.dres, a->act, N, 0, &s.lora);
        be->gelu_backward(s.dh1, s.dact, a->h1, (size_t)N * F, c->mlp_gelu_tanh);
        proj_backward(m, l, CA_VPROJ_FC1, s.dx, s.dh1, a->x2, N, 0, &s.lora);
        be->layernorm_backward(s.dres, grad_of(m, w->ln2_w), grad_of(m, w->ln2_b), s.dx, a->mid, w->ln2_w, a->mean2,
                               a->rstd2, N, D);
        /* attention: mid = h + out_proj(attn(q, k, v)) */
        proj_backward(m, l, CA_VPROJ_OUT, s.dao, s.dres, a->ao, N, 0, &s.lora);
        for (int t = 0; t < T; t++) {
            size_t off = m->tile_off[t] * D;
            int S = (int)(m->tile_off[t + 1] - m->tile_off[t]);
            be->mha_backward(s.dq + off, s.dk + off, s.dv + off, s.dS + m->tile_att[t], s.dao + off, a->q + off,
                             a->k + off, a->v + off, a->att + m->tile_att[t], S, NH, HS);
        }
        proj_backward(m, l, CA_VPROJ_Q, s.dx, s.dq, a->x1, N, 0, &s.lora);
        proj_backward(m, l, CA_VPROJ_K, s.dx, s.dk, a->x1, N, 1, &s.lora);
        proj_backward(m, l, CA_VPROJ_V, s.dx, s.dv, a->x1, N, 1, &s.lora);
        be->layernorm_backward(s.dres, grad_of(m, w->ln1_w), grad_of(m, w->ln1_b), s.dx, h, w->ln1_w, a->mean1,
                               a->rstd1, N, D);
    }
    /* embeddings: h_0 = x_in · Wpatchᵀ + b + resize(pos_table) */
    proj_backward(m, -1, CA_VPROJ_PATCH, NULL, s.dres, m->x_in, N, 0, &s.lora);
    for (int t = 0; t < T && grad_of(m, m->pos_table); t++)
        be->posresize_backward(grad_of(m, m->pos_table), s.dres + m->tile_off[t] * D, G, G, m->tile_h[t], m->tile_w[t],
                               D);
    be->free(s.base);
    return ca_pass_status(&m->lowp_oom, m->be);
}

/* ------------------------------------------------------------------------------------------------ */
/* checkpoints                                                                                       */

/* 1 when `name` is an encoder layer that exists in the config but is cut off by vision_feature_layer. */
static int is_truncated_layer(const ca_vision_config *c, const char *name) {
    const char *pre = VISION_PREFIX "encoder.layers.";
    size_t n = strlen(pre);
    if (strncmp(name, pre, n) != 0) {
        pre = "model.vision_tower.encoder.layers.";
        n = strlen(pre);
        if (strncmp(name, pre, n) != 0) return 0;
    }
    char *end;
    long idx = strtol(name + n, &end, 10);
    return end != name + n && *end == '.' && idx >= c->num_layers_run && idx < c->num_hidden_layers;
}

static int is_unused_head(const ca_vision_config *c, const char *name) {
    return c->vision_use_head && (strncmp(name, VISION_PREFIX "head.", strlen(VISION_PREFIX "head.")) == 0 ||
                                  strncmp(name, "model.vision_tower.head.", 24) == 0);
}

ca_status ca_vision_load_safetensors(ca_vision_model *m, const char *const *paths, int num_paths) {
    if (num_paths <= 0) return ca_error(CA_ERR_VALUE, "no safetensors file given");
    ca_safetensors *files = calloc((size_t)num_paths, sizeof *files);
    if (!files) return ca_error(CA_ERR_NOMEM, "out of memory opening checkpoints");
    ca_status st = CA_OK;
    int opened = 0;
    for (; opened < num_paths && st == CA_OK; opened++) st = ca_safetensors_open(&files[opened], paths[opened]);
    if (st != CA_OK) opened--;
    int total = 0;
    for (int f = 0; f < opened; f++) total += files[f].num_tensors;
    unsigned char *used = st == CA_OK ? calloc((size_t)total + 1, 1) : NULL;
    if (st == CA_OK && !used) st = ca_error(CA_ERR_NOMEM, "out of memory loading checkpoints");
    /* A bf16 tower without its fp32 weights packs each tensor as it is read, the linear weights straight into the
     * bf16 copy: loading never holds the fp32 tower. */
    unsigned char *linear = st == CA_OK && m->fp32_dropped ? linear_flags(m) : NULL;
    if (st == CA_OK && m->fp32_dropped && !linear) st = ca_error(CA_ERR_NOMEM, "out of memory loading checkpoints");

    for (int i = 0; st == CA_OK && i < m->num_param_tensors; i++) {
        const ca_param_info *p = &m->param_info[i];
        const ca_st_tensor *found = NULL;
        int found_file = -1;
        /* hub checkpoints name the tower model.vision_tower.vision_model.*; transformers >= 5 saves it without
         * the vision_model. level (its Siglip2VisionModel prefix change): accept either, never both */
        char alt[CA_PARAM_NAME_MAX];
        const size_t vp = strlen(VISION_PREFIX);
        int has_alt = strncmp(p->name, VISION_PREFIX, vp) == 0;
        if (has_alt) snprintf(alt, sizeof alt, "model.vision_tower.%s", p->name + vp);
        for (int f = 0, base = 0; f < opened; base += files[f].num_tensors, f++) {
            for (int form = 0; form < 1 + has_alt; form++) {
                const ca_st_tensor *t = ca_safetensors_find(&files[f], form ? alt : p->name);
                if (!t) continue;
                if (found) {
                    st = ca_error(CA_ERR_FORMAT, "tensor '%s' appears twice (%s and %s, with or without 'vision_model.')",
                                  p->name, files[found_file].path, files[f].path);
                    break;
                }
                found = t;
                found_file = f;
                used[base + (int)(t - files[f].tensors)] = 1;
            }
            if (st != CA_OK) break;
            continue;
        }
        if (st != CA_OK) break;
        if (!found) {
            st = ca_error(CA_ERR_KEY, "checkpoint is missing tensor '%s'", p->name);
            break;
        }
        int same = found->ndim == p->ndim;
        for (int d = 0; same && d < p->ndim; d++) same = found->shape[d] == p->shape[d];
        if (!same) {
            char want[64], got[96];
            int wn = snprintf(want, sizeof want, "[");
            for (int d = 0; d < p->ndim; d++) wn += snprintf(want + wn, sizeof want - wn, d ? ", %lld" : "%lld", (long long)p->shape[d]);
            snprintf(want + wn, sizeof want - wn, "]");
            int gn = snprintf(got, sizeof got, "[");
            for (int d = 0; d < found->ndim && gn < (int)sizeof got - 24; d++)
                gn += snprintf(got + gn, sizeof got - gn, d ? ", %lld" : "%lld", (long long)found->shape[d]);
            snprintf(got + gn, sizeof got - gn, "]");
            st = ca_error(CA_ERR_SHAPE, "tensor '%s' has shape %s in %s but the config expects %s", p->name, got,
                          files[found_file].path, want);
            break;
        }
        if (linear && linear[i]) {
            st = ca_params_load_bf16(m->params_bf16 + p->offset, m->params + p->offset, p->numel, &files[found_file],
                                     found);
        } else {
            st = ca_safetensors_read_f32(&files[found_file], found, m->params + p->offset, p->numel);
            if (st == CA_OK && linear) pack_tensor(m, i, 0);
        }
    }
    /* unknown tensors under the vision / projector prefixes are errors (a config/checkpoint mismatch) */
    for (int f = 0, base = 0; st == CA_OK && f < opened; base += files[f].num_tensors, f++) {
        for (int j = 0; j < files[f].num_tensors; j++) {
            const char *tn = files[f].tensors[j].name;
            if (used[base + j]) continue;
            int ours = strncmp(tn, "model.vision_tower.", 19) == 0 || strncmp(tn, PROJECTOR_PREFIX, strlen(PROJECTOR_PREFIX)) == 0;
            if (!ours || is_truncated_layer(&m->cfg, tn) || is_unused_head(&m->cfg, tn)) continue;
            st = ca_error(CA_ERR_KEY, "checkpoint %s has unexpected tensor '%s' (not part of this vision config)",
                          files[f].path, tn);
            break;
        }
    }
    free(used);
    for (int f = 0; f < opened; f++) ca_safetensors_close(&files[f]);
    free(files);
    if (st == CA_OK && !linear) repack_bf16(m);
    free(linear);
    return st;
}

ca_status ca_vision_save_safetensors(const ca_vision_model *m, const char *path) {
    if (m->fp32_dropped)
        return ca_error(CA_ERR_VALUE, "the fp32 vision weights were dropped: call to_dtype('bf16') to restore them "
                                      "before saving");
    ca_st_item *items = calloc((size_t)m->num_param_tensors, sizeof *items);
    if (!items) return ca_error(CA_ERR_NOMEM, "out of memory saving the vision checkpoint");
    for (int i = 0; i < m->num_param_tensors; i++) {
        const ca_param_info *p = &m->param_info[i];
        items[i] = (ca_st_item){p->name, CA_DT_F32, p->ndim, p->shape, m->params + p->offset};
    }
    const char *metadata[] = {"format", "pt"};
    ca_status st = ca_safetensors_write(path, items, m->num_param_tensors, metadata, 1);
    free(items);
    return st;
}

/* ------------------------------------------------------------------------------------------------ */
/* LoRA adapters                                                                                     */

void ca_vision_lora_clear(ca_vision_model *m) {
    if (m->lora_params) m->be->free(m->lora_params);
    if (m->lora_grads) m->be->free(m->lora_grads);
    free(m->lora);
    m->lora = NULL;
    m->lora_params = m->lora_grads = NULL;
    m->num_lora = 0;
    m->lora_size = 0;
    for (int i = 0; m->lora_slot && i < m->cfg.num_layers_run * CA_VPROJ_PER_LAYER + 3; i++) m->lora_slot[i] = -1;
    m->lora_freeze_A = 0;   /* new adapters train both factors until frozen again */
    m->have_train_acts = 0; /* the arena layout changes */
}

ca_status ca_vision_lora_add(ca_vision_model *m, const int *layers, const int *projs, int n, int r, float scaling,
                             float dropout) {
    if (r <= 0) return ca_error(CA_ERR_VALUE, "LoRA rank r must be positive, got %d", r);
    if (n <= 0) return ca_error(CA_ERR_VALUE, "no LoRA target module given");
    if (!(dropout >= 0.0f && dropout < 1.0f)) return ca_error(CA_ERR_VALUE, "lora_dropout must be in [0, 1), got %g", dropout);
    if (!isfinite(scaling)) return ca_error(CA_ERR_VALUE, "LoRA scaling must be finite");
    for (int i = 0; i < n; i++) {
        const int per_layer = projs[i] >= 0 && projs[i] < CA_VPROJ_PER_LAYER;
        if (projs[i] < 0 || projs[i] >= CA_NUM_VPROJ ||
            (per_layer ? layers[i] < 0 || layers[i] >= m->cfg.num_layers_run : layers[i] != -1))
            return ca_error(CA_ERR_VALUE, "vision LoRA target %d: layer %d / projection %d out of range", i, layers[i],
                            projs[i]);
        for (int j = 0; j < i; j++)
            if (layers[j] == layers[i] && projs[j] == projs[i])
                return ca_error(CA_ERR_VALUE, "vision LoRA target %d (layer %d, %s) given twice", i, layers[i],
                                vproj_names[projs[i]]);
    }
    ca_vision_lora_clear(m);
    m->lora = calloc((size_t)n, sizeof *m->lora);
    if (!m->lora) return ca_error(CA_ERR_NOMEM, "out of memory adding vision LoRA adapters");
    size_t offset = 0;
    for (int i = 0; i < n; i++) {
        ca_vision_lora_adapter *a = &m->lora[i];
        float *bias;
        a->layer = layers[i];
        a->proj = (ca_vision_proj)projs[i];
        proj_weight(m, a->layer, a->proj, &bias, &a->in, &a->out);
        a->r = r;
        a->scaling = scaling;
        a->dropout = dropout;
        a->a_offset = offset;
        offset += (size_t)r * a->in;
        a->b_offset = offset;
        offset += (size_t)a->out * r;
        m->lora_slot[slot_index(m, a->layer, a->proj)] = i;
    }
    m->num_lora = n;
    m->lora_size = offset;
    m->lora_params = m->be->alloc(offset * sizeof(float));
    m->lora_grads = m->be->alloc(offset * sizeof(float));
    if (!m->lora_params || !m->lora_grads) {
        ca_vision_lora_clear(m);
        return ca_error(CA_ERR_NOMEM, "out of memory allocating %zu vision LoRA parameters", offset);
    }
    m->be->zero(m->lora_params, offset);
    m->be->zero(m->lora_grads, offset);
    return CA_OK;
}

ca_status ca_vision_lora_init(ca_vision_model *m, uint64_t seed, int gaussian) {
    ca_rng rng;
    ca_rng_seed(&rng, seed);
    for (int i = 0; i < m->num_lora; i++) {
        const ca_vision_lora_adapter *a = &m->lora[i];
        ca_lora_init_adapter(m->lora_params + a->a_offset, m->lora_params + a->b_offset, a->r, a->in, a->out, &rng,
                             gaussian);
    }
    return CA_OK;
}

ca_status ca_vision_lora_merge(ca_vision_model *m, float sign) {
    if (m->fp32_dropped)
        return ca_error(CA_ERR_VALUE, "the fp32 vision weights were dropped: call to_dtype('bf16') to restore them "
                                      "before merging");
    for (int i = 0; i < m->num_lora; i++) {
        const ca_vision_lora_adapter *a = &m->lora[i];
        int in = 0, out = 0;
        float *bias;
        float *W = proj_weight(m, a->layer, a->proj, &bias, &in, &out);
        m->be->lora_merge(W, m->lora_params + a->a_offset, m->lora_params + a->b_offset, sign * a->scaling, in, out,
                          a->r);
    }
    repack_bf16(m);
    return CA_OK;
}
