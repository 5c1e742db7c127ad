/* The LFM2 model end to end under AddressSanitizer + UndefinedBehaviorSanitizer (`make c-tests`): a small
 * random model with conv and attention layers runs forward and backward on a right-padded batch, saves and
 * reloads its checkpoint, and rejects bad token ids and labels with a status instead of crashing.
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

#include "captionaura/ca_model.h"

static int failures = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__, __LINE__, #cond, \
                    ca_last_error());                                                              \
        }                                                                                          \
    } while (0)

static const char *CONFIG =
    "{\"vocab_size\": 37, \"hidden_size\": 24, \"intermediate_size\": 40, \"num_hidden_layers\": 3,"
    " \"num_attention_heads\": 3, \"num_key_value_heads\": 1, \"conv_L_cache\": 4,"
    " \"block_auto_adjust_ff_dim\": false, \"layer_types\": [\"conv\", \"full_attention\", \"conv\"],"
    " \"tie_word_embeddings\": false}";

enum { B = 2, T = 7 };

int main(void) {
    ca_lfm2_config cfg;
    CHECK(ca_lfm2_config_from_json(&cfg, CONFIG, strlen(CONFIG)) == CA_OK);
    ca_lfm2_model *m = NULL;
    CHECK(ca_lfm2_create(&m, &cfg, &ca_cpu_backend) == CA_OK);
    if (!m) return 1;
    ca_lfm2_init_random(m, 42, 0.2f);

    int32_t ids[B * T], labels[B * T], mask[B * T];
    for (int i = 0; i < B * T; i++) {
        ids[i] = (i * 7 + 3) % cfg.vocab_size;
        labels[i] = ids[i];
        mask[i] = !(i / T == 1 && i % T >= 4); /* row 1 padded after 4 tokens */
        if (!mask[i]) labels[i] = CA_IGNORE_INDEX;
    }
    float *logits = malloc(sizeof(float) * B * T * cfg.vocab_size);
    float *hidden = malloc(sizeof(float) * (cfg.num_hidden_layers + 1) * B * T * cfg.hidden_size);
    CHECK(ca_lfm2_forward(m, logits, hidden, ids, mask, B, T) == CA_OK);
    int finite = 1;
    for (int i = 0; i < B * T * cfg.vocab_size; i++) finite &= isfinite(logits[i]) != 0;
    CHECK(finite);

    double loss = 0;
    CHECK(ca_lfm2_loss_and_grad(m, &loss, ids, labels, mask, B, T, 0) == CA_OK);
    CHECK(isfinite(loss) && loss > 0);
    double gnorm = 0;
    for (size_t i = 0; i < m->num_parameters; i++) gnorm += (double)m->grads[i] * m->grads[i];
    CHECK(gnorm > 0 && isfinite(gnorm));

    /* a batch of another shape regrows the arena */
    CHECK(ca_lfm2_forward(m, NULL, NULL, ids, NULL, 1, B * T) == CA_OK);

    /* checkpoint round trip */
    char path[] = "/tmp/ca_test_model_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    CHECK(ca_lfm2_save_safetensors(m, path, NULL) == CA_OK);
    ca_lfm2_model *again = NULL;
    CHECK(ca_lfm2_create(&again, &cfg, &ca_cpu_backend) == CA_OK);
    const char *paths[] = {path};
    CHECK(ca_lfm2_load_safetensors(again, paths, 1, NULL) == CA_OK);
    CHECK(memcmp(again->params, m->params, m->num_parameters * sizeof(float)) == 0);
    /* the wrong prefix finds no tensor */
    CHECK(ca_lfm2_load_safetensors(again, paths, 1, "model.language_model.") == CA_ERR_KEY);
    unlink(path);
    ca_lfm2_free(again);

    /* bad input is a status, never a crash */
    int32_t bad_ids[B * T];
    memcpy(bad_ids, ids, sizeof ids);
    bad_ids[5] = cfg.vocab_size;
    CHECK(ca_lfm2_forward(m, logits, NULL, bad_ids, NULL, B, T) == CA_ERR_INDEX);
    labels[3] = -7;
    CHECK(ca_lfm2_loss_and_grad(m, &loss, ids, labels, mask, B, T, 0) == CA_ERR_INDEX);
    for (int i = 0; i < B * T; i++) labels[i] = CA_IGNORE_INDEX;
    CHECK(ca_lfm2_loss_and_grad(m, &loss, ids, labels, mask, B, T, 0) == CA_ERR_VALUE);
    CHECK(ca_lfm2_forward(m, logits, NULL, ids, NULL, 0, T) == CA_ERR_VALUE);

    free(logits);
    free(hidden);
    ca_lfm2_free(m);
    if (failures) fprintf(stderr, "test_model: %d check(s) failed\n", failures);
    else printf("test_model: all checks passed\n");
    return failures != 0;
}
