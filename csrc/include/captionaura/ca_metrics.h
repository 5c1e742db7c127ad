/* Caption metrics of the COCO caption toolkit (pycocoevalcap 1.2): BLEU-1..4, CIDEr-D and ROUGE-L.
 *
 * The scorers take already tokenised captions as UTF-8 text (tokens separated by spaces, as the toolkit's
 * PTBTokenizer wrapper writes them) and reproduce the toolkit's numbers including its quirks
 * (see shared/reference/cocoeval.md):
 *   - BLEU and CIDEr split a caption like Python's str.split() (any Unicode whitespace, U+00A0 included),
 *     ROUGE-L splits like str.split(" ") (ASCII space only, empty fields are tokens).
 *   - BLEU: clipped n-gram counts, "closest" reference length (tie -> shorter), tiny = 1e-15, small = 1e-9,
 *     corpus BLEU from summed counts.
 *   - CIDEr-D: n = 1..4, sigma = 6, min-clipping, x10, document frequency over the references of exactly
 *     this call, idf with log(N images).
 *   - ROUGE-L: beta = 1.2, precision and recall maximised separately over the references.
 * Everything is accumulated in float64. The core never prints, exits or aborts: errors come back as a
 * ca_status with a message in ca_last_error(). */
#ifndef CA_METRICS_H
#define CA_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "captionaura/ca_status.h"

/* A UTF-8 string that need not be NUL-terminated. */
typedef struct {
    const char *ptr;
    size_t len;
} ca_text;

enum {
    CA_METRIC_BLEU = 1u << 0,
    CA_METRIC_CIDER = 1u << 1,
    CA_METRIC_ROUGE_L = 1u << 2,
    CA_METRIC_ALL = CA_METRIC_BLEU | CA_METRIC_CIDER | CA_METRIC_ROUGE_L,
};

/* Outputs of ca_caption_metrics. Per-image arrays are owned by the caller and may be NULL when the metric
 * is not requested; the corpus values are filled for every requested metric. */
typedef struct {
    double *bleu_per_image;  /* [4][n_images]: BLEU-(k+1) of image i at bleu_per_image[k * n_images + i] */
    double *cider_per_image; /* [n_images] */
    double *rouge_per_image; /* [n_images] */
    double bleu[4];          /* corpus BLEU-1..4 (from counts summed over images) */
    double cider;            /* mean of the per-image CIDEr-D */
    double rouge_l;          /* mean of the per-image ROUGE-L */
    /* BLEU's summed statistics, as the toolkit prints them */
    double bleu_testlen, bleu_reflen, bleu_guess[4], bleu_correct[4];
} ca_caption_scores;

/* Scores n_images candidates. Image i has the candidate cands[i] and the references
 * refs[ref_offsets[i] .. ref_offsets[i+1]); ref_offsets has n_images + 1 non-decreasing entries starting at 0
 * and every image needs at least one reference. `metrics` is a mask of CA_METRIC_*. */
ca_status ca_caption_metrics(int64_t n_images, const ca_text *cands, const int64_t *ref_offsets, const ca_text *refs,
                             unsigned metrics, ca_caption_scores *out);

#endif
