/* Decoding on top of the cached forward (ca_lfm2_forward_cached): greedy, sampling and beam search with
 * transformers 5.23 `generate` semantics (processor order, tie rules, beam bookkeeping). Every sequence has
 * its own cache, so a batch of prompts of different lengths runs unpadded and equals one-by-one decoding. */
#ifndef CA_GENERATE_H
#define CA_GENERATE_H

#include <stdint.h>

#include "captionaura/ca_model.h"
#include "captionaura/ca_status.h"

enum { CA_EARLY_STOP_FALSE = 0, CA_EARLY_STOP_TRUE = 1, CA_EARLY_STOP_NEVER = 2 };

typedef struct ca_gen_config {
    int max_new_tokens;       /* ≥ 0 */
    int min_new_tokens;       /* eos is masked (−inf) while fewer new tokens than this exist */
    int do_sample;            /* 0: argmax (num_beams 1) or beam search; 1: multinomial or beam sampling */
    float temperature;        /* sampling only; 1 = off */
    int top_k;                /* sampling only; 0 = off */
    float top_p;              /* sampling only; ≥ 1 = off */
    float min_p;              /* sampling only; < 0 = off (transformers' None) */
    float repetition_penalty; /* 1 = off */
    int no_repeat_ngram_size; /* 0 = off */
    int num_beams;            /* 1 = greedy/sampling */
    float length_penalty;     /* beams: finished score = sum log p / new_len^length_penalty */
    int early_stopping;       /* CA_EARLY_STOP_* */
    int num_return_sequences; /* beams: ≤ num_beams; otherwise must be 1 */
    const int32_t *eos_ids;   /* n_eos ids (may be 0) */
    int n_eos;
    int32_t pad_id;           /* written after a sequence finished */
    uint64_t seed;            /* sampling: row (or beam-sampled prompt) b draws from its own stream seeded with (seed, b) */
    /* rows that replace prompt token embeddings during prefill (LFM2-VL image features): positions index
     * the concatenated prompts; num_features 0 = none */
    const int32_t *feature_positions; /* (num_features) */
    const float *feature_values;      /* (num_features, hidden) */
    int num_features;
} ca_gen_config;

/* Called after each emitted token of each live sequence (greedy/sampling only), in batch order within a
 * step. Return 0 to go on, 1 to finish that sequence after this token (a stop string), −1 to abort the
 * whole call (ca_generate then returns CA_ERR_VALUE with the message "generation aborted by callback"). */
typedef int (*ca_gen_callback)(void *user, int seq, int32_t token);

/* Decodes continuations of B prompts, concatenated in `prompts` with lengths `prompt_lengths` (each ≥ 1).
 * Outputs, for R = num_return_sequences rows per prompt (row b*R + r):
 *   out_tokens (B*R, max_new_tokens): the new tokens, padded with pad_id after the row's end;
 *   out_lengths (B*R): how many new tokens the row has (including a final eos);
 *   seq_scores (B*R) or NULL: beams: the finished hypothesis' score (length-penalised); otherwise unused;
 *   step_scores (B, max_new_tokens, V) or NULL: greedy/sampling: the processed scores each step
 *   (transformers' output_scores); steps after a row finished are left untouched.
 * `cb` may be NULL. */
ca_status ca_generate(ca_lfm2_model *m, const ca_gen_config *g, const int32_t *prompts, const int32_t *prompt_lengths,
                      int B, int32_t *out_tokens, int32_t *out_lengths, float *seq_scores, float *step_scores,
                      ca_gen_callback cb, void *user);

/* ---- the pieces, exposed for tests: each works on one row of V scores in place ---- */
/* scores[t] for every t in `seen` (a V-byte mask): s < 0 ? s·penalty : s/penalty. */
void ca_gen_repetition_penalty(float *scores, const uint8_t *seen, int V, float penalty);
/* Bans (−inf) every token that would complete an n-gram already present in seq[0..len). */
void ca_gen_no_repeat_ngram(float *scores, const int32_t *seq, int len, int n, int V);
/* The sampling warpers in transformers' order: temperature, top-k, top-p, min-p; each keeps at least min_keep
 * tokens (transformers' min_tokens_to_keep: 1 for sampling, max(2, 1 + n_eos) for beam sampling).
 * work_vals holds V floats, work_idx 2V int32. */
void ca_gen_warp(float *scores, int V, const ca_gen_config *g, int min_keep, float *work_vals, int32_t *work_idx);
/* A draw from softmax(scores) with the uniform u ∈ [0, 1). */
int ca_gen_sample(const float *scores, int V, double u);

#endif
