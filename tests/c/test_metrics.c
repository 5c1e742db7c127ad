/* C-level checks of ca_caption_metrics: hand-computed values of the toolkit's quirks and argument errors.
 * Built with the sanitizers by the c-tests target; returns non-zero on failure.
 *
 * CA_TEST_SOURCES: csrc/metrics.c csrc/status.c
 * CA_TEST_LIBS: -fopenmp
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "captionaura/ca_metrics.h"

static int failures = 0;

#define CHECK(cond)                                                                                        \
    do {                                                                                                   \
        if (!(cond)) {                                                                                     \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);                       \
            failures++;                                                                                    \
        }                                                                                                  \
    } while (0)

static ca_text T(const char *s) { return (ca_text){s, strlen(s)}; }

int main(void) {
    /* two images with disjoint vocabularies: idf = log 2 everywhere; exact copies of the only reference */
    ca_text cands[2] = {T("a b c"), T("x y z w")};
    ca_text refs[2] = {T("a b c"), T("x y z w")};
    int64_t off[3] = {0, 1, 2};
    double bleu_pi[8], cider_pi[2], rouge_pi[2];
    ca_caption_scores sc = {.bleu_per_image = bleu_pi, .cider_per_image = cider_pi, .rouge_per_image = rouge_pi};
    CHECK(ca_caption_metrics(2, cands, off, refs, CA_METRIC_ALL, &sc) == CA_OK);
    CHECK(fabs(cider_pi[0] - 7.5) < 1e-12); /* the missing 4-gram order is not renormalised */
    CHECK(fabs(cider_pi[1] - 10.0) < 1e-12);
    CHECK(rouge_pi[0] == 1.0 && rouge_pi[1] == 1.0);
    CHECK(bleu_pi[3 * 2 + 0] > 0.03 && bleu_pi[3 * 2 + 0] < 0.0317); /* 3 tokens: BLEU-4 ~ 1e-6^(1/4) */
    CHECK(bleu_pi[0] < 1.0 && bleu_pi[0] > 1.0 - 1e-9);             /* exact match is never exactly 1 */

    /* one image: CIDEr is 0 (log N = 0); empty candidate: BLEU 0, ROUGE-L 0 */
    ca_text empty = T("");
    CHECK(ca_caption_metrics(1, &empty, off, refs, CA_METRIC_ALL, &sc) == CA_OK);
    CHECK(cider_pi[0] == 0.0 && bleu_pi[0] == 0.0 && rouge_pi[0] == 0.0);

    /* errors: no images, an image without references, all references empty for CIDEr */
    CHECK(ca_caption_metrics(0, cands, off, refs, CA_METRIC_ALL, &sc) == CA_ERR_VALUE);
    int64_t bad_off[3] = {0, 0, 2};
    CHECK(ca_caption_metrics(2, cands, bad_off, refs, CA_METRIC_ALL, &sc) == CA_ERR_VALUE);
    CHECK(strstr(ca_last_error(), "image 0") != NULL);
    ca_text empties[2] = {T(""), T(" ")};
    CHECK(ca_caption_metrics(2, cands, off, empties, CA_METRIC_CIDER, &sc) == CA_ERR_VALUE);
    CHECK(ca_caption_metrics(2, cands, off, refs, 99u, &sc) == CA_ERR_VALUE);

    /* random captions (multi-byte whitespace, empty fields, repeated n-grams): no crash, values in range */
    static char buf[400][160];
    static ca_text rc[400];
    static int64_t roff[101];
    static double rb[400], rcid[100], rrou[100];
    const char *pool[] = {"a", "b", "dog", "\xc2\xa0", " ", "  ", "\xe3\x80\x80", "\t", "caf\xc3\xa9", "x y", ""};
    unsigned seed = 12345;
    for (int i = 0; i < 400; i++) {
        buf[i][0] = 0;
        int n = (int)((seed = seed * 1103515245u + 12345u) >> 16) % 12;
        for (int j = 0; j < n; j++) {
            seed = seed * 1103515245u + 12345u;
            strcat(buf[i], pool[(seed >> 16) % (sizeof pool / sizeof pool[0])]);
            strcat(buf[i], " ");
        }
        rc[i] = T(buf[i]);
    }
    for (int i = 0; i <= 100; i++) roff[i] = 3 * i;
    ca_caption_scores rs = {.bleu_per_image = rb, .cider_per_image = rcid, .rouge_per_image = rrou};
    CHECK(ca_caption_metrics(100, rc + 300, roff, rc, CA_METRIC_ALL, &rs) == CA_OK);
    for (int i = 0; i < 100; i++) {
        CHECK(rcid[i] >= 0 && rcid[i] <= 10.0 + 1e-9);
        CHECK(rrou[i] >= 0 && rrou[i] <= 1.0 + 1e-12);
        for (int k = 0; k < 4; k++) CHECK(rb[k * 100 + i] >= 0 && rb[k * 100 + i] <= 1.0);
    }

    if (failures) fprintf(stderr, "test_metrics: %d failure(s)\n", failures);
    return failures != 0;
}
