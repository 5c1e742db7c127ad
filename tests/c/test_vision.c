/* C-level checks of the vision side (csrc/vision.c and its ops) for the sanitizer build (ASan/UBSan): a tiny
 * random LFM2-VL tower + projector, a padded batch of tiles, forward (inference and train), backward, each
 * tile alone vs the batch, accumulate, the committed fixture checkpoint loaded strictly, save/load round trip,
 * and the input-validation errors. Parity with transformers is tested from Python (tests/test_vision.py).
 *
 * CA_TEST_LIBS: -fopenmp -DCA_BLAS_SCIPY_PREFIX=1 -I$($PY -c "import scipy_openblas32 as s; print(s.get_include_dir())") -L$($PY -c "import scipy_openblas32 as s; print(s.get_lib_dir())") -lscipy_openblas -Wl,-rpath,$($PY -c "import scipy_openblas32 as s; print(s.get_lib_dir())")
 */
// CA_TEST_SOURCES: csrc/*.c csrc/cpu/*.c
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "captionaura/ca_vision.h"

static int failures = 0, checks = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__, __LINE__, #cond, \
                    ca_last_error());                                                              \
        }                                                                                          \
    } while (0)

static const char *CFG =
    "{\"model_type\": \"lfm2_vl\", \"vision_config\": {\"model_type\": \"siglip2_vision_model\", \"hidden_size\": 24,"
    " \"intermediate_size\": 40, \"num_hidden_layers\": 3, \"num_attention_heads\": 3, \"num_channels\": 3,"
    " \"patch_size\": 2, \"num_patches\": 16, \"layer_norm_eps\": 1e-6, \"hidden_act\": \"gelu_pytorch_tanh\","
    " \"vision_use_head\": false}, \"vision_feature_layer\": -2, \"downsample_factor\": 2,"
    " \"projector_hidden_size\": 20, \"projector_hidden_act\": \"gelu\", \"projector_bias\": true,"
    " \"projector_use_layernorm\": true, \"text_config\": {\"hidden_size\": 12}}";

static float frand(unsigned *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xFFFF) / 65536.0f * 2.0f - 1.0f;
}

static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

int main(void) {
    ca_vision_config cfg;
    CHECK(ca_vision_config_from_json(&cfg, CFG, strlen(CFG)) == CA_OK);
    CHECK(cfg.num_layers_run == 2 && cfg.hidden_size == 24 && cfg.text_hidden_size == 12);
    ca_vision_model *m = NULL;
    CHECK(ca_vision_create(&m, &cfg, NULL) == CA_OK);
    if (!m) return 1;
    CHECK(ca_vision_init_random(m, 7, 0.3f) == CA_OK);

    /* three tiles (4x6 up/down from the 4x4 table, 2x2, 6x2), padded to P = 24 patches of K = 12 */
    enum { T = 3, P = 24, K = 12, TH = 12 };
    int32_t shapes[T * 2] = {4, 6, 2, 2, 6, 2};
    int32_t mask[T * P] = {0};
    float *pv = calloc((size_t)T * P * K, sizeof(float));
    unsigned seed = 1;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < shapes[2 * t] * shapes[2 * t + 1]; j++) {
            mask[t * P + j] = 1;
            for (int c = 0; c < K; c++) pv[((size_t)t * P + j) * K + c] = frand(&seed);
        }
    int64_t M = 0, N = 0;
    CHECK(ca_vision_num_tokens(m, &M, &N, shapes, mask, T, P) == CA_OK);
    CHECK(M == 6 + 1 + 3 && N == 24 + 4 + 12);
    float *feats = calloc((size_t)M * TH, sizeof(float)), *f2 = calloc((size_t)M * TH, sizeof(float));
    float *hidden = calloc((size_t)3 * N * 24, sizeof(float));
    CHECK(ca_vision_forward(m, feats, hidden, pv, shapes, mask, T, P, 0) == CA_OK);
    CHECK(all_finite(feats, (size_t)M * TH) && all_finite(hidden, (size_t)3 * N * 24));
    CHECK(ca_vision_backward(m, feats, 0) != CA_OK); /* no train forward yet */

    /* each tile alone, unpadded, gives the batch's rows */
    size_t tok = 0;
    for (int t = 0; t < T; t++) {
        int S = shapes[2 * t] * shapes[2 * t + 1];
        CHECK(ca_vision_forward(m, f2, NULL, pv + (size_t)t * P * K, shapes + 2 * t, NULL, 1, S, 0) == CA_OK);
        int n = (shapes[2 * t] / 2) * (shapes[2 * t + 1] / 2);
        float worst = 0.0f;
        for (int i = 0; i < n * TH; i++) worst = fmaxf(worst, fabsf(f2[i] - feats[tok * TH + i]));
        CHECK(worst < 1e-5f);
        tok += (size_t)n;
    }

    /* train forward + backward; accumulate doubles the gradients */
    float *dfeat = calloc((size_t)M * TH, sizeof(float));
    for (int64_t i = 0; i < M * TH; i++) dfeat[i] = frand(&seed);
    CHECK(ca_vision_forward(m, f2, NULL, pv, shapes, mask, T, P, 1) == CA_OK);
    CHECK(memcmp(f2, feats, (size_t)M * TH * sizeof(float)) == 0);
    CHECK(ca_vision_backward(m, dfeat, 0) == CA_OK);
    CHECK(all_finite(m->grads, m->num_parameters));
    float *g1 = malloc(m->num_parameters * sizeof(float));
    memcpy(g1, m->grads, m->num_parameters * sizeof(float));
    CHECK(ca_vision_backward(m, dfeat, 1) == CA_OK);
    float worst = 0.0f;
    for (size_t i = 0; i < m->num_parameters; i++) worst = fmaxf(worst, fabsf(m->grads[i] - 2.0f * g1[i]));
    CHECK(worst < 1e-4f);
    /* a finite-difference probe of one position-table entry: the backward into the table through the resize */
    int pi = ca_vision_find_param(m, "model.vision_tower.vision_model.embeddings.position_embedding.weight");
    CHECK(pi >= 0);
    if (pi >= 0) {
        size_t idx = m->param_info[pi].offset + 5 * 24 + 3;
        double eps = 1e-2, lp = 0, lm = 0;
        float keep = m->params[idx];
        m->params[idx] = keep + (float)eps;
        ca_vision_forward(m, f2, NULL, pv, shapes, mask, T, P, 0);
        for (int64_t i = 0; i < M * TH; i++) lp += (double)f2[i] * dfeat[i];
        m->params[idx] = keep - (float)eps;
        ca_vision_forward(m, f2, NULL, pv, shapes, mask, T, P, 0);
        for (int64_t i = 0; i < M * TH; i++) lm += (double)f2[i] * dfeat[i];
        m->params[idx] = keep;
        double fd = (lp - lm) / (2 * eps);
        CHECK(fabs(fd - g1[idx]) <= 2e-2 * fmax(1.0, fabs(fd)));
    }

    /* LoRA on every linear kind (both layers run, the patch embedding, the projector): B = 0 leaves the
     * features alone; with random A, B (and dropout) the backward's adapter gradients match central finite
     * differences of <features, dfeat> over train forwards that draw the same dropout masks; merge reproduces
     * the adapted forward */
    {
        int layers[2 * CA_VPROJ_PER_LAYER + 3], projs[2 * CA_VPROJ_PER_LAYER + 3], n = 0;
        for (int l = 0; l < 2; l++)
            for (int p = 0; p < CA_VPROJ_PER_LAYER; p++) layers[n] = l, projs[n++] = p;
        for (int p = CA_VPROJ_PATCH; p < CA_NUM_VPROJ; p++) layers[n] = -1, projs[n++] = p;
        int bad_layer[1] = {2}, bad_proj[1] = {CA_VPROJ_Q};
        CHECK(ca_vision_lora_add(m, bad_layer, bad_proj, 1, 2, 1.0f, 0.0f) == CA_ERR_VALUE); /* layer 2 does not run */
        CHECK(ca_vision_lora_add(m, layers, projs, n, 2, 1.5f, 0.1f) == CA_OK);
        CHECK(m->num_lora == n);
        CHECK(ca_vision_lora_init(m, 3, 0) == CA_OK);
        CHECK(ca_vision_forward(m, f2, NULL, pv, shapes, mask, T, P, 0) == CA_OK);
        CHECK(memcmp(f2, feats, (size_t)M * TH * sizeof(float)) == 0);
        for (size_t i = 0; i < m->lora_size; i++) m->lora_params[i] = 0.3f * frand(&seed);
        const uint64_t s0 = 11;
        m->dropout_seed = s0;
        CHECK(ca_vision_forward(m, f2, NULL, pv, shapes, mask, T, P, 1) == CA_OK);
        CHECK(ca_vision_backward(m, dfeat, 0) == CA_OK);
        CHECK(all_finite(m->lora_grads, m->lora_size));
        float *lg = malloc(m->lora_size * sizeof(float));
        memcpy(lg, m->lora_grads, m->lora_size * sizeof(float));
        for (int i = 0; i < m->num_lora; i++) { /* the largest A and B entry of every adapter */
            const ca_vision_lora_adapter *a = &m->lora[i];
            for (int which = 0; which < 2; which++) {
                size_t off = which ? a->b_offset : a->a_offset, len = (size_t)a->r * (which ? a->out : a->in), best = off;
                for (size_t j = off; j < off + len; j++)
                    if (fabsf(lg[j]) > fabsf(lg[best])) best = j;
                double eps = 1e-2, lp = 0, lm = 0;
                float keep = m->lora_params[best];
                m->lora_params[best] = keep + (float)eps;
                m->dropout_seed = s0;
                ca_vision_forward(m, f2, NULL, pv, shapes, mask, T, P, 1);
                for (int64_t k = 0; k < M * TH; k++) lp += (double)f2[k] * dfeat[k];
                m->lora_params[best] = keep - (float)eps;
                m->dropout_seed = s0;
                ca_vision_forward(m, f2, NULL, pv, shapes, mask, T, P, 1);
                for (int64_t k = 0; k < M * TH; k++) lm += (double)f2[k] * dfeat[k];
                m->lora_params[best] = keep;
                double fdv = (lp - lm) / (2 * eps);
                CHECK(fabs(fdv - lg[best]) <= 2e-2 * fmax(1e-2, fabs(fdv)));
                if (fabs(fdv - lg[best]) > 2e-2 * fmax(1e-2, fabs(fdv)))
                    fprintf(stderr, "adapter %d (%s, layer %d) %c: fd %g vs grad %g\n", i,
                            ca_vision_proj_name(a->proj), a->layer, which ? 'B' : 'A', fdv, lg[best]);
            }
        }
        /* merge: the base forward with W + s·B·A equals the adapted inference forward */
        float *adapted = calloc((size_t)M * TH, sizeof(float));
        CHECK(ca_vision_forward(m, adapted, NULL, pv, shapes, mask, T, P, 0) == CA_OK);
        CHECK(ca_vision_lora_merge(m, 1.0f) == CA_OK);
        m->lora_enabled = 0;
        CHECK(ca_vision_forward(m, f2, NULL, pv, shapes, mask, T, P, 0) == CA_OK);
        worst = 0.0f;
        for (int64_t i = 0; i < M * TH; i++) worst = fmaxf(worst, fabsf(f2[i] - adapted[i]));
        CHECK(worst < 1e-4f);
        CHECK(ca_vision_lora_merge(m, -1.0f) == CA_OK);
        CHECK(ca_vision_forward(m, f2, NULL, pv, shapes, mask, T, P, 0) == CA_OK);
        worst = 0.0f;
        for (int64_t i = 0; i < M * TH; i++) worst = fmaxf(worst, fabsf(f2[i] - feats[i]));
        CHECK(worst < 1e-4f);
        m->lora_enabled = 1;
        ca_vision_lora_clear(m);
        free(adapted);
        free(lg);
    }

    /* validation errors */
    int32_t bad[T * 2] = {4, 6, 3, 2, 6, 2};
    CHECK(ca_vision_forward(m, f2, NULL, pv, bad, NULL, T, P, 0) == CA_ERR_SHAPE);
    int32_t big[T * 2] = {4, 8, 2, 2, 6, 2};
    CHECK(ca_vision_forward(m, f2, NULL, pv, big, NULL, T, P, 0) == CA_ERR_SHAPE);
    mask[P + 1] = 0;
    CHECK(ca_vision_forward(m, f2, NULL, pv, shapes, mask, T, P, 0) == CA_ERR_VALUE);
    CHECK(ca_vision_backward(m, dfeat, 0) != CA_OK); /* the failed forward dropped the train activations */

    /* save + load round trip (hub names) */
    char path[] = "/tmp/ca_test_vision_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    CHECK(ca_vision_save_safetensors(m, path) == CA_OK);
    ca_vision_model *m2 = NULL;
    CHECK(ca_vision_create(&m2, &cfg, NULL) == CA_OK);
    const char *paths[1] = {path};
    CHECK(m2 && ca_vision_load_safetensors(m2, paths, 1) == CA_OK);
    CHECK(m2 && memcmp(m2->params, m->params, m->num_parameters * sizeof(float)) == 0);
    unlink(path);
    ca_vision_free(m2);

    /* the committed fixture checkpoint (transformers 5 names), if present: strict load succeeds */
    const char *fx = "tests/reference/fixtures/lfm2vl/p16";
    char cfgpath[256], stpath[256];
    snprintf(cfgpath, sizeof cfgpath, "%s/config.json", fx);
    snprintf(stpath, sizeof stpath, "%s/model.safetensors", fx);
    FILE *f = fopen(cfgpath, "rb");
    if (f) {
        char buf[8192];
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        ca_vision_config c3;
        CHECK(ca_vision_config_from_json(&c3, buf, n) == CA_OK);
        ca_vision_model *m3 = NULL;
        CHECK(ca_vision_create(&m3, &c3, NULL) == CA_OK);
        const char *p3[1] = {stpath};
        CHECK(m3 && ca_vision_load_safetensors(m3, p3, 1) == CA_OK);
        ca_vision_free(m3);
    }

    free(pv);
    free(feats);
    free(f2);
    free(hidden);
    free(dfeat);
    free(g1);
    ca_vision_free(m);
    if (failures) {
        fprintf(stderr, "test_vision: %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("test_vision: all %d checks passed\n", checks);
    return 0;
}
