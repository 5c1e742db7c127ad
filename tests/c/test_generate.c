/* Decoding under AddressSanitizer + UndefinedBehaviorSanitizer (`make c-tests`): the processors' tie rules on
 * hand-made score rows, then greedy / sampling / beam search on a small random model (a batch of prompts of
 * different lengths, several eos ids, a stopping callback, every early_stopping value), and bad settings
 * rejected with a status. Parity with transformers is tests/test_generate.py's job.
 *
 * CA_TEST_LIBS: -fopenmp -DCA_BLAS_SCIPY_PREFIX=1 -I$($PY -c "import scipy_openblas32 as s; print(s.get_include_dir())") -L$($PY -c "import scipy_openblas32 as s; print(s.get_lib_dir())") -lscipy_openblas -Wl,-rpath,$($PY -c "import scipy_openblas32 as s; print(s.get_lib_dir())")
 */
// CA_TEST_SOURCES: csrc/*.c csrc/cpu/*.c
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "captionaura/ca_generate.h"

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
    "{\"vocab_size\": 41, \"hidden_size\": 24, \"intermediate_size\": 40, \"num_hidden_layers\": 3,"
    " \"num_attention_heads\": 3, \"num_key_value_heads\": 1, \"conv_L_cache\": 3,"
    " \"block_auto_adjust_ff_dim\": false, \"layer_types\": [\"conv\", \"full_attention\", \"conv\"],"
    " \"tie_word_embeddings\": true}";

static ca_gen_config base_config(const int32_t *eos, int n_eos, int N) {
    ca_gen_config g = {0};
    g.max_new_tokens = N;
    g.temperature = 1.0f;
    g.top_p = 1.0f;
    g.min_p = -1.0f;
    g.repetition_penalty = 1.0f;
    g.num_beams = 1;
    g.length_penalty = 1.0f;
    g.num_return_sequences = 1;
    g.eos_ids = eos;
    g.n_eos = n_eos;
    g.pad_id = 0;
    return g;
}

static int calls = 0;
static int stop_row1(void *user, int seq, int32_t token) {
    (void)user, (void)token;
    calls++;
    return seq == 1; /* finish row 1 after its first token */
}

static void test_processors(void) {
    const int V = 6;
    float wv[6];
    int32_t wi[12];
    ca_gen_config g = base_config(NULL, 0, 1);
    /* top_k = 2 over {1, 2, 2, 3, 0, −1}: threshold 2 keeps 3 and both tied 2s */
    float s[6] = {1, 2, 2, 3, 0, -1};
    g.top_k = 2;
    ca_gen_warp(s, V, &g, 1, wv, wi);
    CHECK(s[3] == 3 && s[1] == 2 && s[2] == 2 && isinf(s[0]) && isinf(s[4]) && isinf(s[5]));
    /* top_p tiny keeps only the top token (min_tokens_to_keep = 1) */
    float t[6] = {0, 0.5f, 4, 1, 0, 0};
    g.top_k = 0, g.top_p = 0.01f;
    ca_gen_warp(t, V, &g, 1, wv, wi);
    for (int i = 0; i < V; i++) CHECK(i == 2 ? t[i] == 4 : isinf(t[i]));
    /* top_p = 0.5 on probabilities (0.4, 0.3, 0.2, 0.1): ascending cumsum 0.1, 0.3, 0.6, 1 → drops 0.1 and 0.2 */
    float u[4] = {logf(0.1f), logf(0.4f), logf(0.2f), logf(0.3f)};
    g.top_p = 0.5f;
    ca_gen_warp(u, 4, &g, 1, wv, wi);
    CHECK(isinf(u[0]) && isinf(u[2]) && !isinf(u[1]) && !isinf(u[3]));
    /* min_p = 0.45: keeps p ≥ 0.18 */
    float v[4] = {logf(0.1f), logf(0.4f), logf(0.2f), logf(0.3f)};
    g.top_p = 1.0f, g.min_p = 0.45f;
    ca_gen_warp(v, 4, &g, 1, wv, wi);
    CHECK(isinf(v[0]) && !isinf(v[1]) && !isinf(v[2]) && !isinf(v[3]));
    /* min_keep = 3 (beam sampling with two eos ids): top_k = 1, top_p tiny and min_p = 1 each keep the 3 best */
    for (int which = 0; which < 3; which++) {
        float x[6] = {1, 5, 2, 4, 0, 3};
        ca_gen_config h = base_config(NULL, 0, 1);
        if (which == 0) h.top_k = 1;
        if (which == 1) h.top_k = 0, h.top_p = 0.01f;
        if (which == 2) h.top_k = 0, h.min_p = 1.0f;
        ca_gen_warp(x, 6, &h, 3, wv, wi);
        CHECK(x[1] == 5 && x[3] == 4 && x[5] == 3 && isinf(x[0]) && isinf(x[2]) && isinf(x[4]));
    }
    /* temperature divides */
    float w[2] = {1, -2};
    g.min_p = -1, g.temperature = 0.5f;
    ca_gen_warp(w, 2, &g, 1, wv, wi);
    CHECK(w[0] == 2 && w[1] == -4);
    /* repetition penalty: s/θ for s > 0, s·θ for s < 0, unseen untouched */
    float r[3] = {2, -2, 2};
    const uint8_t seen[3] = {1, 1, 0};
    ca_gen_repetition_penalty(r, seen, 3, 2.0f);
    CHECK(r[0] == 1 && r[1] == -4 && r[2] == 2);
    /* no_repeat_ngram n = 2 on 1 2 3 1: the prefix (1) was followed by 2 → 2 banned only */
    float q[4] = {0, 0, 0, 0};
    const int32_t seq[4] = {1, 2, 3, 1};
    ca_gen_no_repeat_ngram(q, seq, 4, 2, 4);
    CHECK(isinf(q[2]) && !isinf(q[0]) && !isinf(q[1]) && !isinf(q[3]));
    /* sampling: u = 0 picks the first token with mass, u → 1 the last */
    const float p[4] = {-INFINITY, 0, 0, -INFINITY};
    CHECK(ca_gen_sample(p, 4, 0.0) == 1 && ca_gen_sample(p, 4, 0.999) == 2);
}

int main(void) {
    test_processors();
    ca_lfm2_config cfg;
    CHECK(ca_lfm2_config_from_json(&cfg, CONFIG, strlen(CONFIG)) == CA_OK);
    ca_lfm2_model *m = NULL;
    CHECK(ca_lfm2_create(&m, &cfg, &ca_cpu_backend) == CA_OK);
    if (!m) return 1;
    ca_lfm2_init_random(m, 7, 0.3f);
    const int V = cfg.vocab_size, N = 12;
    const int32_t prompts[] = {3, 9, 4, 5, 11, 12, 13, 14, 15, 2, 8};
    const int32_t plen[] = {2, 7, 2}; /* three prompts of different lengths */
    int32_t out[3 * 4 * 12], lens[12];
    float scores[12], steps[3 * 12 * 41];

    /* greedy, then the same batch with the eos ids set to some emitted tokens */
    int32_t none[] = {40};
    ca_gen_config g = base_config(none, 1, N);
    g.min_new_tokens = N;
    CHECK(ca_generate(m, &g, prompts, plen, 3, out, lens, NULL, steps, NULL, NULL) == CA_OK);
    for (int b = 0; b < 3; b++) CHECK(lens[b] == N);
    int32_t greedy[3 * 12];
    memcpy(greedy, out, sizeof greedy);
    int32_t eos[2] = {greedy[4], greedy[12 + 2]};
    g = base_config(eos, 2, N);
    CHECK(ca_generate(m, &g, prompts, plen, 3, out, lens, NULL, NULL, NULL, NULL) == CA_OK);
    for (int b = 0; b < 3; b++) {
        CHECK(lens[b] >= 1 && lens[b] <= N);
        CHECK(memcmp(out + b * N, greedy + b * N, (size_t)lens[b] * sizeof(int32_t)) == 0);
        for (int j = lens[b]; j < N; j++) CHECK(out[b * N + j] == 0);
    }
    /* a callback finishing row 1 after its first token; called once per emitted token */
    g = base_config(none, 1, N);
    calls = 0;
    CHECK(ca_generate(m, &g, prompts, plen, 3, out, lens, NULL, NULL, stop_row1, NULL) == CA_OK);
    CHECK(lens[0] == N && lens[1] == 1 && lens[2] == N && calls == 2 * N + 1);

    /* sampling with every warper: reproducible for a seed */
    g = base_config(none, 1, N);
    g.do_sample = 1, g.temperature = 0.8f, g.top_k = 10, g.top_p = 0.9f, g.min_p = 0.05f, g.seed = 99;
    g.repetition_penalty = 1.3f, g.no_repeat_ngram_size = 2;
    int32_t again[3 * 12];
    CHECK(ca_generate(m, &g, prompts, plen, 3, out, lens, NULL, steps, NULL, NULL) == CA_OK);
    CHECK(ca_generate(m, &g, prompts, plen, 3, again, lens, NULL, NULL, NULL, NULL) == CA_OK);
    CHECK(memcmp(out, again, sizeof again) == 0);
    for (int i = 0; i < 3 * N; i++) CHECK(out[i] >= 0 && out[i] < V);

    /* beam search: 4 beams, 3 returned, every early_stopping value, sorted scores */
    for (int es = 0; es < 3; es++) {
        g = base_config(eos, 2, N);
        g.num_beams = 4, g.num_return_sequences = 3, g.length_penalty = 0.7f, g.early_stopping = es;
        g.no_repeat_ngram_size = 3;
        CHECK(ca_generate(m, &g, prompts, plen, 3, out, lens, scores, NULL, NULL, NULL) == CA_OK);
        for (int r = 0; r < 9; r++) {
            CHECK(lens[r] >= 1 && lens[r] <= N && isfinite(scores[r]) && scores[r] < 0);
            if (r % 3) CHECK(scores[r] <= scores[r - 1]);
        }
    }

    /* bad settings */
    g = base_config(none, 1, N);
    g.num_beams = 0;
    CHECK(ca_generate(m, &g, prompts, plen, 3, out, lens, NULL, NULL, NULL, NULL) == CA_ERR_VALUE);
    g = base_config(none, 1, N);
    g.num_beams = 2, g.num_return_sequences = 3;
    CHECK(ca_generate(m, &g, prompts, plen, 3, out, lens, NULL, NULL, NULL, NULL) == CA_ERR_VALUE);
    g = base_config(none, 1, N);
    g.do_sample = 1, g.temperature = 0;
    CHECK(ca_generate(m, &g, prompts, plen, 3, out, lens, NULL, NULL, NULL, NULL) == CA_ERR_VALUE);
    g = base_config(none, 1, N);
    const int32_t bad_ids[] = {3, 999};
    const int32_t bad_len[] = {2};
    CHECK(ca_generate(m, &g, bad_ids, bad_len, 1, out, lens, NULL, NULL, NULL, NULL) == CA_ERR_INDEX);

    ca_lfm2_free(m);
    if (failures) fprintf(stderr, "test_generate: %d check(s) failed\n", failures);
    return failures != 0;
}
