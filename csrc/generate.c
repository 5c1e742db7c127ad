/* Decoding: greedy, multinomial sampling and beam search over ca_lfm2_forward_cached, reproducing
 * transformers 5.23 `GenerationMixin.generate` (generation/utils.py `_sample`, `_beam_search`;
 * generation/logits_process.py for each processor). What matters for identical tokens:
 *
 *   processor order (`_get_logits_processor`): repetition_penalty → no_repeat_ngram → min_new_tokens, then,
 *   only when sampling, temperature → top_k → top_p → min_p; beam search applies the same processors to
 *   log_softmax(logits), not to the logits;
 *   float32 arithmetic where transformers does it in float32 (penalties, temperature, beam score sums and
 *   the length-penalty division by a float32-rounded new_len^lp);
 *   argmax and every ranking break ties towards the lower index (torch.argmax's rule).
 *
 * Sampling cannot reproduce torch's RNG (a Philox/MT stream behind torch.multinomial); it draws from our own
 * splitmix64 streams, one per batch row, so the same seed gives the same tokens for the same prompts.
 *
 * Beam sampling (do_sample with num_beams > 1, `_get_top_k_continuations`): the warpers keep at least
 * max(2, 1 + n_eos) tokens per beam (transformers' min_tokens_to_keep for beams), and the K candidates are drawn
 * without replacement from softmax over the beams·V accumulated scores. torch.multinomial does that with the
 * exponential race (the K largest p/E, E ~ Exp(1), in descending order); we take the same race in the log
 * domain, the K largest acc − log E, so that candidates far below the top (p underflowing to 0 in float32)
 * still come out in score order rather than in an arbitrary one. The draw order matters: only the first
 * num_beams candidates may finish a hypothesis. */
#include "captionaura/ca_generate.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NEG_INF (-INFINITY)
/* transformers marks impossible beams by adding −1e9 in float32 (not −inf, so sums stay finite) */
#define BEAM_NEG 1.0e9f

/* ---- random numbers: splitmix64 (Steele et al.), one stream per row ---- */
static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
/* u ∈ [0, 1) with 53 random bits */
static double uniform01(uint64_t *state) { return (double)(splitmix64(state) >> 11) * 0x1.0p-53; }
/* E ~ Exp(1) = −log u with u ∈ (0, 1) (53 bits, centred in its bin so u is never 0) */
static double exponential1(uint64_t *state) {
    return -log(((double)(splitmix64(state) >> 11) + 0.5) * 0x1.0p-53);
}
/* row b's stream: splitmix64 state seeded from (seed, b), warmed once */
static uint64_t stream_seed(uint64_t seed, int b) {
    uint64_t state = seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(b + 1));
    splitmix64(&state);
    return state;
}

static int is_eos(const ca_gen_config *g, int32_t t) {
    for (int i = 0; i < g->n_eos; i++)
        if (g->eos_ids[i] == t) return 1;
    return 0;
}

/* ---- processors, one row of V scores each ---- */

/* RepetitionPenaltyLogitsProcessor: every token already in the sequence (prompt included, padding not):
 * s < 0 ? s·θ : s/θ, so the penalty always lowers the token's score. */
void ca_gen_repetition_penalty(float *scores, const uint8_t *seen, int V, float penalty) {
    for (int t = 0; t < V; t++)
        if (seen[t]) scores[t] = scores[t] < 0 ? scores[t] * penalty : scores[t] / penalty;
}

/* NoRepeatNGramLogitsProcessor: the next token completes the n-gram (seq[len−n+1..len), next); every earlier
 * window whose first n−1 tokens equal that prefix bans its last token. n = 1 bans every token seen. */
void ca_gen_no_repeat_ngram(float *scores, const int32_t *seq, int len, int n, int V) {
    if (n <= 0 || len < n) return;
    const int32_t *prefix = seq + len - (n - 1);
    for (int i = 0; i + n <= len; i++) {
        int match = 1;
        for (int j = 0; j < n - 1 && match; j++) match = seq[i + j] == prefix[j];
        if (match && seq[i + n - 1] >= 0 && seq[i + n - 1] < V) scores[seq[i + n - 1]] = NEG_INF;
    }
}

/* k-th largest (k ≥ 1) of vals[0..n) by quickselect; vals is scrambled. */
static float kth_largest(float *vals, int n, int k) {
    int lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float pivot = vals[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (vals[i] > pivot) i++;
            while (vals[j] < pivot) j--;
            if (i <= j) {
                float t = vals[i];
                vals[i] = vals[j], vals[j] = t;
                i++, j--;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else break;
    }
    return vals[want];
}

typedef struct {
    float v;
    int32_t i;
} scored_index;

/* ascending by value, ties by index: torch.sort(stable) of the scores */
static int cmp_ascending(const void *a, const void *b) {
    const scored_index *x = a, *y = b;
    if (x->v < y->v) return -1;
    if (x->v > y->v) return 1;
    return (x->i > y->i) - (x->i < y->i);
}

/* softmax of the finite scores into probs (float32 results; the sum in double) and the index of the first max */
static int softmax_row(const float *s, int V, float *probs) {
    int arg = 0;
    for (int t = 1; t < V; t++)
        if (s[t] > s[arg]) arg = t;
    const float mx = s[arg];
    double sum = 0;
    for (int t = 0; t < V; t++) sum += (probs[t] = s[t] == NEG_INF ? 0.0f : expf(s[t] - mx));
    const float inv = (float)(1.0 / sum);
    for (int t = 0; t < V; t++) probs[t] *= inv;
    return arg;
}

void ca_gen_warp(float *s, int V, const ca_gen_config *g, int min_keep, float *work_vals, int32_t *work_idx) {
    if (min_keep > V) min_keep = V;
    /* TemperatureLogitsWarper: s/T (skipped at T = 1) */
    if (g->temperature != 1.0f)
        for (int t = 0; t < V; t++) s[t] /= g->temperature;
    /* TopKLogitsWarper: k = max(top_k, min_keep); drop s < (k-th largest s); every token tied with the k-th stays */
    if (g->top_k > 0) {
        int k = g->top_k > min_keep ? g->top_k : min_keep;
        k = k < V ? k : V;
        memcpy(work_vals, s, (size_t)V * sizeof(float));
        const float thr = kth_largest(work_vals, V, k);
        for (int t = 0; t < V; t++)
            if (s[t] < thr) s[t] = NEG_INF;
    }
    /* TopPLogitsWarper: sort ascending, p = softmax, c = cumsum(p) (accumulated in double, stored as float as
     * torch's CPU cumsum does); drop c ≤ 1 − top_p except the min_keep largest. Tokens already at −inf have
     * c = 0 ≤ 1 − top_p and stay dropped, so only the finite ones are sorted. */
    if (g->top_p < 1.0f) {
        scored_index *si = (scored_index *)(void *)work_idx; /* work_idx holds 2V int32 */
        int n = 0;
        for (int t = 0; t < V; t++)
            if (s[t] != NEG_INF) si[n].v = s[t], si[n].i = t, n++;
        qsort(si, (size_t)n, sizeof *si, cmp_ascending);
        if (n > 0) {
            const float mx = si[n - 1].v;
            double sum = 0;
            for (int j = 0; j < n; j++) sum += (work_vals[j] = expf(si[j].v - mx));
            const float inv = (float)(1.0 / sum);
            const float limit = (float)(1.0 - (double)g->top_p);
            double c = 0;
            for (int j = 0; j < n - min_keep; j++) { /* j ≥ n − min_keep: the kept top tokens */
                c += (double)(work_vals[j] * inv);
                if ((float)c <= limit) s[si[j].i] = NEG_INF;
            }
        }
    }
    /* MinPLogitsWarper: p = softmax(s); drop p < min_p · max p, but never the min_keep largest scores (the top
     * token; for beams, ties at the min_keep-th score are kept by lower index) */
    if (g->min_p >= 0.0f) {
        const int arg = softmax_row(s, V, work_vals);
        const float thr = g->min_p * work_vals[arg];
        float keep_thr = s[arg];
        int keep_ties = 1; /* how many tokens equal to keep_thr are protected, lowest index first */
        if (min_keep > 1) {
            float *vals = (float *)(void *)work_idx; /* work_idx holds 2V int32 */
            memcpy(vals, s, (size_t)V * sizeof(float));
            keep_thr = kth_largest(vals, V, min_keep);
            keep_ties = min_keep;
            for (int t = 0; t < V; t++) keep_ties -= s[t] > keep_thr;
        }
        for (int t = 0; t < V; t++) {
            int protect = s[t] > keep_thr;
            if (s[t] == keep_thr && keep_ties > 0) protect = 1, keep_ties--;
            if (!protect && work_vals[t] < thr) s[t] = NEG_INF;
        }
    }
}

int ca_gen_sample(const float *s, int V, double u) {
    int arg = 0;
    for (int t = 1; t < V; t++)
        if (s[t] > s[arg]) arg = t;
    const float mx = s[arg];
    double sum = 0;
    for (int t = 0; t < V; t++) sum += s[t] == NEG_INF ? 0.0 : exp((double)s[t] - mx);
    /* inverse CDF: the first token whose cumulative mass passes u·Σ */
    const double target = u * sum;
    double c = 0;
    int last = arg;
    for (int t = 0; t < V; t++) {
        if (s[t] == NEG_INF) continue;
        c += exp((double)s[t] - mx);
        last = t;
        if (c > target) return t;
    }
    return last;
}

static int argmax_row(const float *s, int V) {
    int arg = 0;
    for (int t = 1; t < V; t++)
        if (s[t] > s[arg]) arg = t;
    return arg;
}

/* The processors every strategy applies (before the sampling warpers). gen = new tokens so far. */
static void process_row(const ca_gen_config *g, float *row, int V, const uint8_t *seen, const int32_t *seq, int len,
                        int gen) {
    if (g->repetition_penalty != 1.0f) ca_gen_repetition_penalty(row, seen, V, g->repetition_penalty);
    if (g->no_repeat_ngram_size > 0) ca_gen_no_repeat_ngram(row, seq, len, g->no_repeat_ngram_size, V);
    /* MinNewTokensLengthLogitsProcessor: eos impossible before min_new_tokens new tokens */
    if (gen < g->min_new_tokens)
        for (int i = 0; i < g->n_eos; i++)
            if (g->eos_ids[i] >= 0 && g->eos_ids[i] < V) row[g->eos_ids[i]] = NEG_INF;
}

/* log_softmax in place: s − max − log Σ exp(s − max) (the sum in double) */
static void log_softmax_row(float *s, int V) {
    float mx = s[0];
    for (int t = 1; t < V; t++) mx = s[t] > mx ? s[t] : mx;
    double sum = 0;
    for (int t = 0; t < V; t++) sum += exp((double)s[t] - mx);
    const float lse = (float)log(sum);
    for (int t = 0; t < V; t++) s[t] = s[t] - mx - lse;
}

static void free_caches(ca_lfm2_cache **c, int n) {
    if (!c) return;
    for (int i = 0; i < n; i++) ca_lfm2_cache_free(c[i]);
    free(c);
}

/* Prefill: the prompts laid out (B, T) in `ids` (row b's tokens start at index base[b] of the concatenated
 * prompts) run through the cached forward; with feature rows, their embeddings are the token embeddings with
 * the features scattered in at their positions (features of prompts not in this call are skipped). */
static ca_status prefill(ca_lfm2_model *m, const ca_gen_config *g, ca_lfm2_cache **caches, const int32_t *ids,
                         const int32_t *lens, const size_t *base, int B, int T, float *logits) {
    if (g->num_features == 0) return ca_lfm2_forward_cached(m, caches, ids, NULL, lens, B, T, logits, 0);
    const int C = m->cfg.hidden_size, V = m->cfg.vocab_size;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < lens[b]; t++)
            if (ids[(size_t)b * T + t] < 0 || ids[(size_t)b * T + t] >= V)
                return ca_error(CA_ERR_INDEX, "prompt token %d is outside the vocabulary [0, %d)", ids[(size_t)b * T + t], V);
    int32_t *safe = malloc((size_t)B * T * sizeof(int32_t)); /* padding reads token 0 */
    float *embeds = m->be->alloc((size_t)B * T * C * sizeof(float));
    if (!safe || !embeds) {
        free(safe);
        m->be->free(embeds);
        return ca_error(CA_ERR_NOMEM, "out of memory for prefill embeddings");
    }
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) safe[(size_t)b * T + t] = t < lens[b] ? ids[(size_t)b * T + t] : 0;
    ca_lfm2_embed(m, embeds, safe, B * T);
    for (int p = 0; p < g->num_features; p++) {
        const size_t k = (size_t)g->feature_positions[p];
        for (int b = 0; b < B; b++) {
            if (k >= base[b] && k < base[b] + (size_t)lens[b]) {
                memcpy(embeds + ((size_t)b * T + (k - base[b])) * C, g->feature_values + (size_t)p * C,
                       (size_t)C * sizeof(float));
                break;
            }
        }
    }
    ca_status st = ca_lfm2_forward_cached(m, caches, ids, embeds, lens, B, T, logits, 0);
    free(safe);
    m->be->free(embeds);
    return st;
}

static ca_status new_caches(ca_lfm2_model *m, int n, const int *capacity, ca_lfm2_cache ***out) {
    ca_lfm2_cache **c = calloc((size_t)n, sizeof *c);
    if (!c) return ca_error(CA_ERR_NOMEM, "out of memory for decoding caches");
    for (int i = 0; i < n; i++) {
        ca_status st = ca_lfm2_cache_create(m, capacity[i], &c[i]);
        if (st != CA_OK) {
            free_caches(c, n);
            return st;
        }
    }
    *out = c;
    return CA_OK;
}

/* ---- greedy and sampling: one row per prompt, finished rows are no longer fed ---- */
static ca_status decode_rows(ca_lfm2_model *m, const ca_gen_config *g, const int32_t *prompts, const int32_t *plen,
                             int B, int32_t *out, int32_t *out_len, float *step_scores, ca_gen_callback cb,
                             void *user) {
    const int V = m->cfg.vocab_size, N = g->max_new_tokens;
    int Tmax = 0, Smax = 0;
    int *cap = malloc((size_t)B * sizeof *cap);
    size_t *off = malloc((size_t)B * sizeof *off);
    if (!cap || !off) {
        free(cap), free(off);
        return ca_error(CA_ERR_NOMEM, "out of memory for decoding state");
    }
    size_t total = 0;
    for (int b = 0; b < B; b++) {
        Tmax = plen[b] > Tmax ? plen[b] : Tmax;
        cap[b] = plen[b] + N;
        Smax = cap[b] > Smax ? cap[b] : Smax;
        off[b] = total;
        total += (size_t)plen[b];
    }
    ca_lfm2_cache **caches = NULL;
    ca_status st = new_caches(m, B, cap, &caches);
    float *logits = malloc((size_t)B * V * sizeof(float));
    float *wv = malloc((size_t)V * sizeof(float));
    int32_t *wi = malloc((size_t)2 * V * sizeof(int32_t));
    int32_t *ids = calloc((size_t)B * Tmax, sizeof(int32_t));
    int32_t *next = calloc((size_t)B, sizeof(int32_t)); /* each step's (B, 1) input */
    int32_t *lens = malloc((size_t)B * sizeof(int32_t));
    int32_t *seq = malloc((size_t)B * Smax * sizeof(int32_t)); /* prompt + new tokens of each row */
    int *seqlen = malloc((size_t)B * sizeof(int));
    uint8_t *seen = calloc((size_t)B * V, 1);
    uint8_t *done = calloc((size_t)B, 1);
    uint64_t *rng = malloc((size_t)B * sizeof(uint64_t));
    if (st == CA_OK && (!logits || !wv || !wi || !ids || !next || !lens || !seq || !seqlen || !seen || !done || !rng))
        st = ca_error(CA_ERR_NOMEM, "out of memory for decoding state");
    if (st != CA_OK) goto out;

    for (int b = 0; b < B; b++) {
        memcpy(ids + (size_t)b * Tmax, prompts + off[b], (size_t)plen[b] * sizeof(int32_t));
        memcpy(seq + (size_t)b * Smax, prompts + off[b], (size_t)plen[b] * sizeof(int32_t));
        seqlen[b] = plen[b];
        lens[b] = plen[b];
        for (int j = 0; j < plen[b]; j++)
            if (prompts[off[b] + j] >= 0 && prompts[off[b] + j] < V) seen[(size_t)b * V + prompts[off[b] + j]] = 1;
        rng[b] = stream_seed(g->seed, b);
    }
    size_t *base = malloc((size_t)B * sizeof(size_t));
    if (!base) {
        st = ca_error(CA_ERR_NOMEM, "out of memory for decoding state");
        goto out;
    }
    for (int b = 0; b < B; b++) base[b] = (size_t)off[b];
    st = prefill(m, g, caches, ids, lens, base, B, Tmax, logits);
    free(base);
    if (st != CA_OK) goto out;

    for (int step = 0; step < N; step++) {
        int alive = 0;
        for (int b = 0; b < B; b++) {
            if (done[b]) {
                lens[b] = 0;
                continue;
            }
            float *row = logits + (size_t)b * V;
            int32_t *s = seq + (size_t)b * Smax;
            process_row(g, row, V, seen + (size_t)b * V, s, seqlen[b], step);
            if (g->do_sample) ca_gen_warp(row, V, g, 1, wv, wi);
            if (step_scores) memcpy(step_scores + ((size_t)b * N + step) * V, row, (size_t)V * sizeof(float));
            const int32_t tok = g->do_sample ? ca_gen_sample(row, V, uniform01(&rng[b])) : argmax_row(row, V);
            out[(size_t)b * N + step] = tok;
            out_len[b] = step + 1;
            s[seqlen[b]++] = tok;
            seen[(size_t)b * V + tok] = 1;
            next[b] = tok;
            lens[b] = 1;
            if (is_eos(g, tok)) done[b] = 1;
            if (cb) {
                const int r = cb(user, b, tok);
                if (r < 0) {
                    st = ca_error(CA_ERR_VALUE, "generation aborted by callback");
                    goto out;
                }
                if (r > 0) done[b] = 1;
            }
            if (done[b]) lens[b] = 0;
            alive += !done[b];
        }
        if (!alive || step + 1 == N) break;
        /* one token per live row; finished rows have length 0 and their caches stay untouched */
        st = ca_lfm2_forward_cached(m, caches, next, NULL, lens, B, 1, logits, 0);
        if (st != CA_OK) goto out;
    }
out:
    free_caches(caches, B);
    free(cap), free(off), free(logits), free(wv), free(wi), free(ids), free(next), free(lens), free(seq), free(seqlen);
    free(seen), free(done), free(rng);
    return st;
}

/* ---- beam search, one prompt at a time (transformers' batch items never interact) ---- */

/* Inserts (v, i) into the descending top-k list (n kept so far); equal values keep the earlier index first. */
static void topk_insert(float *vals, int32_t *idx, int *n, int k, float v, int32_t i) {
    if (*n == k && !(v > vals[k - 1])) return;
    int p = *n < k ? (*n)++ : k - 1;
    while (p > 0 && v > vals[p - 1]) {
        vals[p] = vals[p - 1], idx[p] = idx[p - 1];
        p--;
    }
    vals[p] = v, idx[p] = i;
}

typedef struct {
    float score;
    int finished;
    int len;
    int32_t *tokens; /* max_new_tokens */
} hypothesis;

/* Beam sampling's candidates: K draws without replacement from softmax(acc) over the nb·V accumulated scores,
 * in draw order (see the top of the file): the K largest keys acc − log E, E ~ Exp(1), descending. */
static void sample_candidates(const float *acc, int n, int K, uint64_t *rng, float *cand, int32_t *cand_idx,
                              double *keys) {
    int nk = 0;
    for (int j = 0; j < n; j++) {
        const double key = acc[j] == NEG_INF ? -INFINITY : (double)acc[j] - log(exponential1(rng));
        if (nk == K && !(key > keys[K - 1])) continue;
        int p = nk < K ? nk++ : K - 1; /* insertion into the descending list; equal keys keep the lower index */
        while (p > 0 && key > keys[p - 1]) {
            keys[p] = keys[p - 1], cand_idx[p] = cand_idx[p - 1];
            p--;
        }
        keys[p] = key, cand_idx[p] = (int32_t)j;
    }
    for (int k = 0; k < K; k++) cand[k] = acc[cand_idx[k]];
}

static ca_status beam_one(ca_lfm2_model *m, const ca_gen_config *g, const int32_t *prompt, size_t base, int plen,
                          uint64_t rng, int32_t *out, int32_t *out_len, float *seq_scores) {
    const int V = m->cfg.vocab_size, N = g->max_new_tokens, nb = g->num_beams;
    int K = (g->n_eos + 1 > 2 ? g->n_eos + 1 : 2) * nb; /* candidates kept per step */
    if (K > nb * V) K = nb * V;                              /* (a vocabulary smaller than the candidate count) */
    const int S = plen + N;
    const float lp = g->length_penalty;
    const int min_keep = g->n_eos + 1 > 2 ? g->n_eos + 1 : 2; /* transformers' min_tokens_to_keep for beams */
    int *cap = malloc((size_t)2 * nb * sizeof *cap);
    if (!cap) return ca_error(CA_ERR_NOMEM, "out of memory for beam search");
    for (int i = 0; i < 2 * nb; i++) cap[i] = S;
    ca_lfm2_cache **caches = NULL;
    ca_status st = new_caches(m, 2 * nb, cap, &caches);
    free(cap);
    if (st != CA_OK) return st;
    ca_lfm2_cache **cur = caches, **alt = caches + nb;

    float *logits = malloc((size_t)nb * V * sizeof(float));
    int32_t *hist = malloc((size_t)2 * nb * S * sizeof(int32_t)); /* running sequences, two sets */
    uint8_t *seen = calloc((size_t)2 * nb * V, 1);
    float *run_score = malloc((size_t)nb * sizeof(float));
    float *cand = malloc((size_t)K * sizeof(float));
    int32_t *cand_idx = malloc((size_t)K * sizeof(int32_t));
    uint8_t *hits = malloc((size_t)K);
    hypothesis *pool = calloc((size_t)nb, sizeof *pool), *merged = calloc((size_t)nb, sizeof *merged);
    int32_t *pool_tok = malloc((size_t)2 * nb * (N > 0 ? N : 1) * sizeof(int32_t));
    float *mval = malloc((size_t)(nb + K) * sizeof(float));
    int32_t *midx = malloc((size_t)(nb + K) * sizeof(int32_t));
    int32_t *ids = malloc((size_t)(nb > plen ? nb : plen) * sizeof(int32_t));
    int32_t *lens = malloc((size_t)nb * sizeof(int32_t));
    float *sel = malloc((size_t)nb * sizeof(float));
    int32_t *sel_idx = malloc((size_t)nb * sizeof(int32_t));
    /* beam sampling: the warpers' work rows and the candidates' keys */
    float *wv = g->do_sample ? malloc((size_t)V * sizeof(float)) : NULL;
    int32_t *wi = g->do_sample ? malloc((size_t)2 * V * sizeof(int32_t)) : NULL;
    double *keys = g->do_sample ? malloc((size_t)K * sizeof(double)) : NULL;
    if (!logits || !hist || !seen || !run_score || !cand || !cand_idx || !hits || !pool || !merged || !pool_tok ||
        !mval || !midx || !ids || !lens || !sel || !sel_idx || (g->do_sample && (!wv || !wi || !keys))) {
        st = ca_error(CA_ERR_NOMEM, "out of memory for beam search");
        goto out;
    }
    int32_t *hist_cur = hist, *hist_alt = hist + (size_t)nb * S;
    uint8_t *seen_cur = seen, *seen_alt = seen + (size_t)nb * V;
    for (int i = 0; i < nb; i++) {
        pool[i] = (hypothesis){-BEAM_NEG, 0, 0, pool_tok + (size_t)i * N};
        merged[i].tokens = pool_tok + (size_t)(nb + i) * N;
        run_score[i] = i == 0 ? 0.0f : -BEAM_NEG; /* only beam 0 is live at first: the others are its copies */
        memcpy(hist_cur + (size_t)i * S, prompt, (size_t)plen * sizeof(int32_t));
        for (int j = 0; j < plen; j++)
            if (prompt[j] >= 0 && prompt[j] < V) seen_cur[(size_t)i * V + prompt[j]] = 1;
    }
    if (N == 0) goto emit;
    /* prefill beam 0, then every beam starts from the same state and logits */
    lens[0] = plen;
    memcpy(ids, prompt, (size_t)plen * sizeof(int32_t));
    st = prefill(m, g, cur, ids, lens, &base, 1, plen, logits);
    if (st != CA_OK) goto out;
    for (int i = 1; i < nb; i++) {
        if ((st = ca_lfm2_cache_copy(cur[i], cur[0])) != CA_OK) goto out;
        memcpy(logits + (size_t)i * V, logits, (size_t)V * sizeof(float));
    }

    int unsatisfied = 1; /* transformers' is_early_stop_heuristic_unsatisfied */
    for (int gen = 0;; ) {
        /* scores of every continuation: running score + processed log p (float32 sums); then the K best, or
         * (beam sampling) K drawn without replacement */
        int nc = 0;
        for (int i = 0; i < nb; i++) {
            float *row = logits + (size_t)i * V;
            log_softmax_row(row, V);
            process_row(g, row, V, seen_cur + (size_t)i * V, hist_cur + (size_t)i * S, plen + gen, gen);
            if (g->do_sample) {
                ca_gen_warp(row, V, g, min_keep, wv, wi);
                for (int t = 0; t < V; t++) row[t] += run_score[i];
            } else {
                for (int t = 0; t < V; t++) topk_insert(cand, cand_idx, &nc, K, row[t] + run_score[i], (int32_t)i * V + t);
            }
        }
        if (g->do_sample) sample_candidates(logits, nb * V, K, &rng, cand, cand_idx, keys);
        int all_hit = 1;
        for (int k = 0; k < K; k++) {
            /* stopping criteria on the candidate: eos, or the max length reached */
            hits[k] = is_eos(g, cand_idx[k] % V) || gen + 1 >= N;
            all_hit &= hits[k];
        }
        /* finished hypotheses: only the best nb candidates may finish; score = Σ log p / new_len^lp with new_len
         * counting the eos token; a full pool (early_stopping=True) or a search judged done adds −1e9 */
        int pool_full = 1;
        for (int p = 0; p < nb; p++) pool_full &= pool[p].finished;
        const float denom = (float)pow((double)(gen + 1), (double)lp);
        int nm = 0;
        for (int p = 0; p < nb; p++) topk_insert(mval, midx, &nm, nb, pool[p].score, p);
        for (int k = 0; k < K; k++) {
            float v = cand[k] / denom;
            if (pool_full && g->early_stopping == CA_EARLY_STOP_TRUE) v += -BEAM_NEG;
            if (!unsatisfied) v += -BEAM_NEG;
            if (!(hits[k] && k < nb)) v += -BEAM_NEG;
            topk_insert(mval, midx, &nm, nb, v, nb + k);
        }
        for (int p = 0; p < nb; p++) {
            hypothesis *h = &merged[p];
            if (midx[p] < nb) {
                const hypothesis *o = &pool[midx[p]];
                h->finished = o->finished, h->len = o->len;
                memcpy(h->tokens, o->tokens, (size_t)o->len * sizeof(int32_t));
            } else {
                const int k = midx[p] - nb, src = cand_idx[k] / V;
                h->finished = hits[k] && k < nb;
                h->len = gen + 1;
                memcpy(h->tokens, hist_cur + (size_t)src * S + plen, (size_t)gen * sizeof(int32_t));
                h->tokens[gen] = cand_idx[k] % V;
            }
            h->score = mval[p];
        }
        for (int p = 0; p < nb; p++) { /* swap the pool's token buffers with merged's */
            int32_t *t = pool[p].tokens;
            pool[p] = merged[p];
            merged[p].tokens = t;
        }
        /* running beams: the best nb candidates that did not stop (stopped ones get −1e9) */
        int ns = 0;
        for (int k = 0; k < K; k++) topk_insert(sel, sel_idx, &ns, nb, hits[k] ? cand[k] + -BEAM_NEG : cand[k], k);
        gen++;
        /* early-stop heuristic: can the best running beam still beat the worst finished hypothesis? */
        if (unsatisfied) {
            const int best_len = (g->early_stopping == CA_EARLY_STOP_NEVER && lp > 0.0f) ? N : gen;
            const float best = sel[0] / (float)pow((double)best_len, (double)lp);
            float worst = pool[0].score;
            for (int p = 1; p < nb; p++) worst = pool[p].score < worst ? pool[p].score : worst;
            int any = 0;
            for (int p = 0; p < nb; p++) any |= best > (pool[p].finished ? worst : -BEAM_NEG);
            unsatisfied = any;
        }
        pool_full = 1;
        for (int p = 0; p < nb; p++) pool_full &= pool[p].finished;
        if (!unsatisfied || (pool_full && g->early_stopping == CA_EARLY_STOP_TRUE) || all_hit || gen >= N) break;
        /* reorder: running beam i continues candidate sel_idx[i] (its source beam's cache and history + token) */
        for (int i = 0; i < nb; i++) {
            const int k = sel_idx[i], src = cand_idx[k] / V;
            const int32_t tok = cand_idx[k] % V;
            if ((st = ca_lfm2_cache_copy(alt[i], cur[src])) != CA_OK) goto out;
            memcpy(hist_alt + (size_t)i * S, hist_cur + (size_t)src * S, (size_t)(plen + gen - 1) * sizeof(int32_t));
            hist_alt[(size_t)i * S + plen + gen - 1] = tok;
            memcpy(seen_alt + (size_t)i * V, seen_cur + (size_t)src * V, (size_t)V);
            seen_alt[(size_t)i * V + tok] = 1;
            run_score[i] = sel[i];
            ids[i] = tok;
            lens[i] = 1;
        }
        ca_lfm2_cache **tc = cur;
        cur = alt, alt = tc;
        int32_t *th = hist_cur;
        hist_cur = hist_alt, hist_alt = th;
        uint8_t *ts = seen_cur;
        seen_cur = seen_alt, seen_alt = ts;
        st = ca_lfm2_forward_cached(m, cur, ids, NULL, lens, nb, 1, logits, 0);
        if (st != CA_OK) goto out;
    }
emit:
    for (int r = 0; r < g->num_return_sequences; r++) {
        int32_t *o = out + (size_t)r * N;
        for (int j = 0; j < N; j++) o[j] = j < pool[r].len ? pool[r].tokens[j] : g->pad_id;
        out_len[r] = pool[r].len;
        if (seq_scores) seq_scores[r] = N == 0 ? 0.0f : pool[r].score;
    }
out:
    free_caches(caches, 2 * nb);
    free(logits), free(hist), free(seen), free(run_score), free(cand), free(cand_idx), free(hits), free(pool);
    free(merged), free(pool_tok), free(mval), free(midx), free(ids), free(lens), free(sel), free(sel_idx);
    free(wv), free(wi), free(keys);
    return st;
}

ca_status ca_generate(ca_lfm2_model *m, const ca_gen_config *g, const int32_t *prompts, const int32_t *prompt_lengths,
                      int B, int32_t *out_tokens, int32_t *out_lengths, float *seq_scores, float *step_scores,
                      ca_gen_callback cb, void *user) {
    if (B < 1) return ca_error(CA_ERR_VALUE, "generate needs at least one prompt");
    if (g->max_new_tokens < 0) return ca_error(CA_ERR_VALUE, "max_new_tokens must be >= 0, got %d", g->max_new_tokens);
    if (g->min_new_tokens < 0) return ca_error(CA_ERR_VALUE, "min_new_tokens must be >= 0, got %d", g->min_new_tokens);
    if (g->num_beams < 1) return ca_error(CA_ERR_VALUE, "num_beams must be >= 1, got %d", g->num_beams);
    if (g->n_eos < 0 || (g->n_eos > 0 && !g->eos_ids)) return ca_error(CA_ERR_VALUE, "bad eos token list");
    if (g->do_sample && !(g->temperature > 0.0f))
        return ca_error(CA_ERR_VALUE, "temperature must be > 0 when sampling, got %g", g->temperature);
    if (g->do_sample && !(g->top_p > 0.0f && g->top_p <= 1.0f))
        return ca_error(CA_ERR_VALUE, "top_p must be in (0, 1], got %g", g->top_p);
    if (g->top_k < 0) return ca_error(CA_ERR_VALUE, "top_k must be >= 0, got %d", g->top_k);
    if (!(g->repetition_penalty > 0.0f))
        return ca_error(CA_ERR_VALUE, "repetition_penalty must be > 0, got %g", g->repetition_penalty);
    if (g->no_repeat_ngram_size < 0) return ca_error(CA_ERR_VALUE, "no_repeat_ngram_size must be >= 0");
    const int R = g->num_return_sequences;
    if (R < 1 || R > g->num_beams)
        return ca_error(CA_ERR_VALUE, "num_return_sequences must be in [1, num_beams], got %d", R);
    for (int b = 0; b < B; b++)
        if (prompt_lengths[b] < 1) return ca_error(CA_ERR_VALUE, "prompt %d is empty", b);
    const int N = g->max_new_tokens;
    for (size_t i = 0; i < (size_t)B * R * N; i++) out_tokens[i] = g->pad_id;
    for (int i = 0; i < B * R; i++) out_lengths[i] = 0;
    if (g->num_beams == 1) {
        if (N == 0) return CA_OK;
        return decode_rows(m, g, prompts, prompt_lengths, B, out_tokens, out_lengths, step_scores, cb, user);
    }
    size_t off = 0;
    for (int b = 0; b < B; b++) {
        CA_TRY(beam_one(m, g, prompts + off, off, prompt_lengths[b], stream_seed(g->seed, b),
                        out_tokens + (size_t)b * R * N, out_lengths + (size_t)b * R,
                        seq_scores ? seq_scores + (size_t)b * R : NULL));
        off += (size_t)prompt_lengths[b];
    }
    return CA_OK;
}
