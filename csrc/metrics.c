/* COCO caption metrics (BLEU-1..4, CIDEr-D, ROUGE-L) equal to pycocoevalcap 1.2; see ca_metrics.h and
 * shared/reference/cocoeval.md sections 3-5.
 *
 * Layout of one call:
 *   1. tokens   : every caption is split (str.split() rules for BLEU/CIDEr, str.split(" ") for ROUGE-L) and
 *                 each distinct token is interned to a uint32 id (open-addressing table over the bytes).
 *   2. n-grams  : every 1..4-gram is interned to a gram id through an exact 64-bit key (id of its first
 *                 k-1 tokens, last token id), order by order over the whole corpus with prefetching; each
 *                 caption becomes a list of (gram id, count) in first-occurrence order (the order the
 *                 toolkit's dicts iterate in, which keeps float summation orders identical).
 *   3. scorers  : per image, work with "epoch-stamped" scratch arrays indexed by gram id (no clearing, no
 *                 per-image hash tables). Counts are exact integers; scores are float64.
 * Captions are numbered: candidates 0..n-1, then references n..n+n_refs-1. */
#include "captionaura/ca_metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define BLEU_N 4
#define CIDER_N 4
#define CIDER_SIGMA 6.0
#define BLEU_TINY 1e-15  /* added to numerators "so that if guess is 0 still return 0" */
#define BLEU_SMALL 1e-9  /* added to denominators to avoid division by zero */
#define ROUGE_BETA 1.2
#define NP_E 2.718281828459045 /* numpy.e, the base of the toolkit's Gaussian length penalty */

/* ------------------------------------------------------------------------------------------------------ */
/* small helpers                                                                                          */

static void *grow(void *ptr, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return ptr;
    size_t n = *cap ? *cap : 64;
    while (n < need) n *= 2;
    void *p = realloc(ptr, n * elem);
    if (!p) return NULL;
    *cap = n;
    return p;
}

static inline uint64_t mix64(uint64_t x) { /* splitmix64 finaliser: a cheap full-avalanche 64-bit mix */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static inline uint64_t hash_bytes(const unsigned char *p, size_t n) { /* FNV-1a, then mixed */
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return mix64(h ^ n);
}

/* Byte length of the Python whitespace character at p (the set str.split() splits on), or 0. */
static inline size_t py_space_len(const unsigned char *p, const unsigned char *end) {
    unsigned c = p[0];
    if (c < 0x80) return (c == 0x20 || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f)) ? 1 : 0;
    if (c == 0xC2) return (p + 1 < end && (p[1] == 0x85 || p[1] == 0xA0)) ? 2 : 0; /* U+0085, U+00A0 */
    if (p + 2 >= end) return 0;
    if (c == 0xE1) return (p[1] == 0x9A && p[2] == 0x80) ? 3 : 0; /* U+1680 */
    if (c == 0xE2) {
        if (p[1] == 0x80 && ((p[2] >= 0x80 && p[2] <= 0x8A) || p[2] == 0xA8 || p[2] == 0xA9 || p[2] == 0xAF))
            return 3; /* U+2000..U+200A, U+2028, U+2029, U+202F */
        return (p[1] == 0x81 && p[2] == 0x9F) ? 3 : 0; /* U+205F */
    }
    if (c == 0xE3) return (p[1] == 0x80 && p[2] == 0x80) ? 3 : 0; /* U+3000 */
    return 0;
}

/* ------------------------------------------------------------------------------------------------------ */
/* interning of tokens (byte strings) and n-grams (up to 4 token ids)                                     */

/* Per-caption n-gram lists store (gram id, count | order << 28): the order travels with the entry so the
 * scorers do not touch a per-gram array for it. */
#define LIST_ORDER_SHIFT 28
#define LIST_COUNT_MASK 0x0FFFFFFFu

typedef struct {
    uint32_t stamp; /* epoch of the caption or image that last wrote aux */
    uint32_t aux;
} gram_mark;

typedef struct {
    /* tokens: slot -> id + 1 (0 = empty); per id its bytes and hash */
    uint32_t *tok_slots;
    size_t tok_mask;
    const char **tok_ptr;
    uint32_t *tok_len;
    uint64_t *tok_hash;
    size_t n_tok, tok_cap, tok_cap2, tok_cap3;
    /* n-grams: open-addressing slots (key, id); per id its key and scratch columns */
    struct ngram_slot_ *ng_slots;
    size_t ng_mask;
    uint64_t *ng_key;
    gram_mark *ng_mark; /* scratch per gram: epoch stamp + position in the current list or a max count */
    uint32_t *ng_df;    /* CIDEr document frequency */
    size_t n_ng, ng_cap[7];
    uint32_t epoch;     /* bumped for every caption, image or reference that stamps ng_mark */
    uint32_t *unigram; /* token id -> gram id of its unigram (UINT32_MAX: not yet interned) */
} interner;

static void interner_free(interner *t) {
    free(t->tok_slots); free(t->tok_ptr); free(t->tok_len); free(t->tok_hash);
    free(t->ng_slots); free(t->ng_key); free(t->ng_mark);
    free(t->ng_df); free(t->unigram);
}

/* Returns the id of token bytes [p, p+n), inserting it when new; UINT32_MAX on allocation failure. */
static uint32_t intern_token_h(interner *t, const char *p, size_t n, uint64_t h);

static inline uint32_t intern_token(interner *t, const char *p, size_t n) {
    return intern_token_h(t, p, n, hash_bytes((const unsigned char *)p, n));
}

/* The same with the hash of the bytes, hash_bytes(p, n), already computed. */
static uint32_t intern_token_h(interner *t, const char *p, size_t n, uint64_t h) {
    if ((t->n_tok + 1) * 2 > t->tok_mask + 1) { /* keep load <= 1/2 */
        size_t new_size = t->tok_mask ? (t->tok_mask + 1) * 2 : 1024;
        uint32_t *s = calloc(new_size, sizeof *s);
        if (!s) return UINT32_MAX;
        for (size_t id = 0; id < t->n_tok; id++) {
            size_t j = t->tok_hash[id] & (new_size - 1);
            while (s[j]) j = (j + 1) & (new_size - 1);
            s[j] = (uint32_t)id + 1;
        }
        free(t->tok_slots);
        t->tok_slots = s;
        t->tok_mask = new_size - 1;
    }
    size_t j = h & t->tok_mask;
    for (uint32_t e; (e = t->tok_slots[j]) != 0; j = (j + 1) & t->tok_mask) {
        uint32_t id = e - 1;
        if (t->tok_hash[id] == h && t->tok_len[id] == n && memcmp(t->tok_ptr[id], p, n) == 0) return id;
    }
    if (t->n_tok >= UINT32_MAX - 2) return UINT32_MAX;
    size_t need = t->n_tok + 1;
    void *a = grow(t->tok_ptr, &t->tok_cap, need, sizeof *t->tok_ptr);
    if (!a) return UINT32_MAX;
    t->tok_ptr = a;
    a = grow(t->tok_len, &t->tok_cap2, need, sizeof *t->tok_len);
    if (!a) return UINT32_MAX;
    t->tok_len = a;
    a = grow(t->tok_hash, &t->tok_cap3, need, sizeof *t->tok_hash);
    if (!a) return UINT32_MAX;
    t->tok_hash = a;
    uint32_t id = (uint32_t)t->n_tok++;
    t->tok_ptr[id] = p;
    t->tok_len[id] = (uint32_t)n;
    t->tok_hash[id] = h;
    t->tok_slots[j] = id + 1;
    return id;
}

/* N-gram keys are chained: the key of a k-gram is (gram id of its first k-1 tokens) << 32 | last token id,
 * and a unigram's prefix is the marker UNIGRAM_PREFIX. Keys are exact and fit 64 bits whatever the
 * vocabulary, so a table slot holds the whole key next to the id: one (prefetched) cache line per lookup. */
#define UNIGRAM_PREFIX 0xFFFFFFFFULL

typedef struct ngram_slot_ {
    uint64_t key;
    uint32_t id1; /* id + 1, 0 = empty */
    uint32_t pad;
} ngram_slot;

static int ngram_table_resize(interner *t, size_t size) {
    ngram_slot *s = calloc(size, sizeof *s);
    if (!s) return -1;
    for (size_t id = 0; id < t->n_ng; id++) {
        size_t j = mix64(t->ng_key[id]) & (size - 1);
        while (s[j].id1) j = (j + 1) & (size - 1);
        s[j].key = t->ng_key[id];
        s[j].id1 = (uint32_t)id + 1;
    }
    free(t->ng_slots);
    t->ng_slots = s;
    t->ng_mask = size - 1;
    return 0;
}

/* Sizes the per-gram columns for up to `n` distinct n-grams so the counting pass never reallocates them.
 * The slot table starts with n/8 slots (caption sets have ~n/8 distinct n-grams) and grows: sizing it for the
 * worst case makes it too large for the caches. */
static int ngram_reserve(interner *t, size_t n) {
    size_t size = 4096;
    while (size < n / 8) size *= 2;
    if (size > t->ng_mask + 1 && ngram_table_resize(t, size)) return -1;
    void *p;
    if (!(p = grow(t->ng_key, &t->ng_cap[0], n, sizeof *t->ng_key))) return -1;
    t->ng_key = p;
    if (!(p = grow(t->ng_mark, &t->ng_cap[1], n, sizeof *t->ng_mark))) return -1;
    t->ng_mark = p;
    return 0;
}

/* Returns the gram id of `key` (hash h, order k), inserting it when new; UINT32_MAX on failure.
 * Linear probing at load <= 3/4. */
static uint32_t intern_ngram(interner *t, uint64_t key, uint64_t h, int k) {
    size_t j = h & t->ng_mask;
    for (ngram_slot *e; (e = &t->ng_slots[j])->id1 != 0; j = (j + 1) & t->ng_mask) {
        if (e->key == key) return e->id1 - 1;
    }
    if (t->n_ng >= UINT32_MAX - 2) return UINT32_MAX;
    if ((t->n_ng + 1) * 4 > (t->ng_mask + 1) * 3) { /* load <= 3/4 keeps the table small */
        if (ngram_table_resize(t, (t->ng_mask + 1) * 2)) return UINT32_MAX;
        j = h & t->ng_mask;
        while (t->ng_slots[j].id1) j = (j + 1) & t->ng_mask;
    }
    size_t need = t->n_ng + 1;
    void *p;
    if (!(p = grow(t->ng_key, &t->ng_cap[0], need, sizeof *t->ng_key))) return UINT32_MAX;
    t->ng_key = p;
    if (!(p = grow(t->ng_mark, &t->ng_cap[1], need, sizeof *t->ng_mark))) return UINT32_MAX;
    t->ng_mark = p;
    uint32_t id = (uint32_t)t->n_ng++;
    t->ng_key[id] = key;
    t->ng_mark[id].stamp = 0;
    t->ng_slots[j].key = key;
    t->ng_slots[j].id1 = id + 1;
    return id;
}

/* ------------------------------------------------------------------------------------------------------ */
/* per-caption token and n-gram lists                                                                     */

typedef struct {
    uint32_t *data;
    size_t len, cap;
} u32_vec;

static inline int u32_push(u32_vec *v, uint32_t x) {
    if (v->len == v->cap) {
        void *p = grow(v->data, &v->cap, v->len + 1, sizeof *v->data);
        if (!p) return -1;
        v->data = p;
    }
    v->data[v->len++] = x;
    return 0;
}

/* Appends the token ids of `text` split like Python's str.split() (runs of Unicode whitespace). Sets
 * *single_spaced when every separator is exactly one ASCII space between two tokens (then str.split(" ")
 * gives the same tokens). */
static ca_status split_whitespace(interner *t, ca_text text, u32_vec *out, int *single_spaced) {
    const unsigned char *p = (const unsigned char *)text.ptr, *end = p + text.len;
    *single_spaced = text.len > 0;
    while (p < end) {
        size_t s;
        const unsigned char *sep = p;
        while (p < end && (s = py_space_len(p, end)) != 0) p += s;
        if (p != sep && (p - sep != 1 || *sep != ' ' || sep == (const unsigned char *)text.ptr)) *single_spaced = 0;
        if (p >= end) {
            if (p != sep) *single_spaced = 0;
            break;
        }
        const unsigned char *start = p;
        uint64_t h = 0xcbf29ce484222325ULL; /* hash_bytes, computed while scanning */
        while (p < end && ((*p > 0x20 && *p < 0x80) || py_space_len(p, end) == 0)) h = (h ^ *p++) * 0x100000001b3ULL;
        size_t n = (size_t)(p - start);
        uint32_t id = intern_token_h(t, (const char *)start, n, mix64(h ^ n));
        if (id == UINT32_MAX || u32_push(out, id)) return ca_error(CA_ERR_NOMEM, "metrics: out of memory (tokens)");
    }
    return CA_OK;
}

/* Appends the token ids of `text` split like Python's str.split(" "): every field between single ASCII
 * spaces is a token, empty ones included ("" -> [""]). */
static ca_status split_space(interner *t, ca_text text, u32_vec *out) {
    const char *p = text.ptr, *end = p + text.len;
    for (;;) {
        const char *sp = memchr(p, ' ', (size_t)(end - p));
        const char *stop = sp ? sp : end;
        uint32_t id = intern_token(t, p, (size_t)(stop - p));
        if (id == UINT32_MAX || u32_push(out, id)) return ca_error(CA_ERR_NOMEM, "metrics: out of memory (tokens)");
        if (!sp) break;
        p = sp + 1;
    }
    return CA_OK;
}

typedef struct {
    int64_t n_img, n_cap;
    const int64_t *ref_off;
    size_t *ws_start; /* [n_cap + 1] into ws.data: token ids of str.split() */
    size_t *ng_start; /* [n_cap + 1] into gid/cnt */
    size_t *sp_start; /* [n_cap + 1] into sp.data: token ids of str.split(" ") */
    u32_vec ws, gid, cnt, sp;
} corpus;

/* Builds every caption's (gram id, count | order << 28) list, in the order the toolkit's precook() inserts
 * n-grams into its dict: all unigrams left to right, then bigrams, ...
 *
 * The work runs order by order over the whole corpus rather than caption by caption: the k-gram at token
 * position p is keyed by the (k-1)-gram id at p (kept in pos_gid, updated in place) and the k-th token, so
 * all k-grams of the corpus are independent lookups. They go through the table in chunks: keys, hashes and
 * slot prefetches for a chunk first, then the lookups, then the per-gram marks are prefetched before the
 * per-caption de-duplication. This overlaps the cache misses of a table far larger than the caches.
 * Each caption writes into its own region of gid/cnt (sized for its distinct n-grams at most), compacted at
 * the end. */
#define NGRAM_CHUNK 64

static ca_status count_all_ngrams(interner *t, corpus *c) {
    const int64_t n_cap = c->n_cap;
    const uint32_t *w = c->ws.data;
    size_t n_pos = c->ws.len;
    size_t *region = malloc(((size_t)n_cap + 1) * sizeof *region); /* start of each caption's region */
    size_t *fill = calloc((size_t)n_cap, sizeof *fill);             /* entries written so far */
    uint32_t *pos_gid = malloc((n_pos + 1) * sizeof *pos_gid);
    ca_status st = CA_OK;
    if (!region || !fill || !pos_gid) goto nomem;
    region[0] = 0;
    for (int64_t x = 0; x < n_cap; x++) {
        size_t len = c->ws_start[x + 1] - c->ws_start[x], r = 0;
        if (len >= LIST_COUNT_MASK) {
            st = ca_error(CA_ERR_VALUE, "metrics: a caption has too many tokens (%zu)", len);
            goto out;
        }
        for (size_t k = 1; k <= BLEU_N && k <= len; k++) r += len - k + 1;
        region[x + 1] = region[x] + r;
    }
    void *p;
    if (!(p = grow(c->gid.data, &c->gid.cap, region[n_cap] + 1, sizeof *c->gid.data))) goto nomem;
    c->gid.data = p;
    if (!(p = grow(c->cnt.data, &c->cnt.cap, region[n_cap] + 1, sizeof *c->cnt.data))) goto nomem;
    c->cnt.data = p;
    if (!(t->unigram = malloc((t->n_tok + 1) * sizeof *t->unigram)) || ngram_reserve(t, region[n_cap] + 1)) goto nomem;
    memset(t->unigram, 0xFF, (t->n_tok + 1) * sizeof *t->unigram);

    for (int k = 1; k <= BLEU_N; k++) {
        uint64_t keys[NGRAM_CHUNK], hashes[NGRAM_CHUNK];
        uint32_t gids[NGRAM_CHUNK];
        size_t where[NGRAM_CHUNK];  /* token position of each chunk item */
        int64_t owner[NGRAM_CHUNK]; /* caption of each chunk item */
        int m = 0;
        int64_t cur = -1; /* caption whose de-duplication epoch is current */
        uint32_t epoch = 0;
        for (int64_t x = 0; x <= n_cap; x++) {
            size_t lo = x < n_cap ? c->ws_start[x] : 0, hi = x < n_cap ? c->ws_start[x + 1] : 0;
            size_t n_items = hi - lo >= (size_t)k ? hi - lo - (size_t)k + 1 : 0;
            for (size_t i = 0; i <= n_items; i++) {
                int last = x == n_cap;
                if (i < n_items) { /* queue the k-gram at position lo + i */
                    size_t pos = lo + i;
                    if (k == 1) {
                        keys[m] = UNIGRAM_PREFIX << 32 | w[pos];
                    } else {
                        keys[m] = (uint64_t)pos_gid[pos] << 32 | w[pos + (size_t)k - 1];
                    }
                    hashes[m] = mix64(keys[m]);
                    if (k > 1) __builtin_prefetch(&t->ng_slots[hashes[m] & t->ng_mask]);
                    where[m] = pos;
                    owner[m] = x;
                    m++;
                }
                if (m == NGRAM_CHUNK || (last && m > 0)) {
                    for (int j = 0; j < m; j++) { /* lookups */
                        uint32_t g;
                        if (k == 1) {
                            uint32_t tok = w[where[j]];
                            g = t->unigram[tok];
                            if (g == UINT32_MAX) g = t->unigram[tok] = intern_ngram(t, keys[j], hashes[j], 1);
                        } else {
                            g = intern_ngram(t, keys[j], hashes[j], k);
                        }
                        if (g == UINT32_MAX) goto nomem;
                        gids[j] = g;
                        pos_gid[where[j]] = g;
                        __builtin_prefetch(&t->ng_mark[g]);
                    }
                    for (int j = 0; j < m; j++) { /* per-caption de-duplication and counts */
                        int64_t cx = owner[j];
                        if (cx != cur) {
                            cur = cx;
                            epoch = ++t->epoch;
                        }
                        gram_mark *mk = &t->ng_mark[gids[j]];
                        if (mk->stamp != epoch) {
                            mk->stamp = epoch;
                            mk->aux = (uint32_t)fill[cx];
                            size_t e = region[cx] + fill[cx]++;
                            c->gid.data[e] = gids[j];
                            c->cnt.data[e] = 1u | (uint32_t)k << LIST_ORDER_SHIFT;
                        } else {
                            c->cnt.data[region[cx] + mk->aux] += 1;
                        }
                    }
                    m = 0;
                }
                if (last) break;
            }
        }
    }

    /* compact the regions into consecutive lists */
    size_t out_pos = 0;
    c->ng_start[0] = 0;
    for (int64_t x = 0; x < n_cap; x++) {
        memmove(c->gid.data + out_pos, c->gid.data + region[x], fill[x] * sizeof *c->gid.data);
        memmove(c->cnt.data + out_pos, c->cnt.data + region[x], fill[x] * sizeof *c->cnt.data);
        out_pos += fill[x];
        c->ng_start[x + 1] = out_pos;
    }
    c->gid.len = c->cnt.len = out_pos;
    goto out;
nomem:
    st = ca_error(CA_ERR_NOMEM, "metrics: out of memory (n-grams)");
out:
    free(region);
    free(fill);
    free(pos_gid);
    return st;
}

/* ------------------------------------------------------------------------------------------------------ */
/* the scorers                                                                                            */


/* BLEU with the toolkit's BleuScorer.compute_score(option="closest"):
 *   p_k = (correct_k + tiny) / (guess_k + small), BLEU-k = (prod_{i<=k} p_i)^(1/k) * BP,
 *   BP = exp(1 - 1/ratio) if ratio = (testlen + tiny)/(reflen + small) < 1 else 1,
 * per image and on counts summed over images. The products are evaluated in the same order as the
 * toolkit so results agree to the last bit where libm does. */
static void bleu_from_counts(const double correct[BLEU_N], const double guess[BLEU_N], double testlen,
                             double reflen, double out[BLEU_N]) {
    double bleu = 1.0;
    for (int k = 0; k < BLEU_N; k++) {
        bleu *= (correct[k] + BLEU_TINY) / (guess[k] + BLEU_SMALL);
        out[k] = pow(bleu, 1.0 / (k + 1));
    }
    double ratio = (testlen + BLEU_TINY) / (reflen + BLEU_SMALL);
    if (ratio < 1) {
        for (int k = 0; k < BLEU_N; k++) out[k] *= exp(1 - 1 / ratio);
    }
}

/* `df`, when not NULL, also receives CIDEr's document frequencies (the distinct n-grams of each image's
 * references are exactly the ones stamped here); *max_df their maximum. */
static void score_bleu(interner *t, const corpus *c, ca_caption_scores *out, uint32_t *df, uint32_t *max_df) {
    const int64_t n = c->n_img;
    double tot_correct[BLEU_N] = {0}, tot_guess[BLEU_N] = {0}, tot_test = 0, tot_ref = 0;
    for (int64_t i = 0; i < n; i++) {
        /* max count of each n-gram over the references (clipping bound), stamped for this image */
        uint32_t epoch = ++t->epoch;
        double testlen = (double)(c->ws_start[i + 1] - c->ws_start[i]);
        double reflen = 0, best_diff = INFINITY;
        for (int64_t r = c->n_img + c->ref_off[i]; r < c->n_img + c->ref_off[i + 1]; r++) {
            double len = (double)(c->ws_start[r + 1] - c->ws_start[r]);
            /* "closest": min over (|len - testlen|, len), so a tie goes to the shorter reference */
            double diff = fabs(len - testlen);
            if (diff < best_diff || (diff == best_diff && len < reflen)) best_diff = diff, reflen = len;
            for (size_t e = c->ng_start[r]; e < c->ng_start[r + 1]; e++) {
                uint32_t k = c->cnt.data[e] & LIST_COUNT_MASK, g = c->gid.data[e];
                gram_mark *mk = &t->ng_mark[g];
                if (mk->stamp != epoch) {
                    mk->stamp = epoch, mk->aux = k;
                    if (df && ++df[g] > *max_df) *max_df = df[g];
                } else if (k > mk->aux) {
                    mk->aux = k;
                }
            }
        }
        double correct[BLEU_N] = {0}, guess[BLEU_N];
        for (size_t e = c->ng_start[i]; e < c->ng_start[i + 1]; e++) {
            uint32_t k = c->cnt.data[e] & LIST_COUNT_MASK, order = c->cnt.data[e] >> LIST_ORDER_SHIFT;
            const gram_mark *mk = &t->ng_mark[c->gid.data[e]];
            uint32_t bound = mk->stamp == epoch ? mk->aux : 0;
            correct[order - 1] += (double)(k < bound ? k : bound);
        }
        for (int k = 0; k < BLEU_N; k++) {
            guess[k] = testlen - k > 0 ? testlen - k : 0;
            tot_correct[k] += correct[k];
            tot_guess[k] += guess[k];
        }
        tot_test += testlen;
        tot_ref += reflen;
        if (out->bleu_per_image) {
            double b[BLEU_N];
            bleu_from_counts(correct, guess, testlen, reflen, b);
            for (int k = 0; k < BLEU_N; k++) out->bleu_per_image[k * n + i] = b[k];
        }
    }
    bleu_from_counts(tot_correct, tot_guess, tot_test, tot_ref, out->bleu);
    memcpy(out->bleu_correct, tot_correct, sizeof tot_correct);
    memcpy(out->bleu_guess, tot_guess, sizeof tot_guess);
    out->bleu_testlen = tot_test;
    out->bleu_reflen = tot_ref;
}

/* CIDEr-D as CiderScorer (n = 4, sigma = 6):
 *   df(g) = number of images whose reference set contains g; w(g) = log N - log(max(1, df(g)));
 *   v_n(x)[g] = tf_x(g) * w(g) for the n-grams of caption x; len(x) = number of bigrams of x;
 *   sim_n(c, r) = sum_g min(v_n(c)[g], v_n(r)[g]) * v_n(r)[g] / (|v_n(c)| |v_n(r)|)   (no division if a norm is 0)
 *                 * e^(-(len(c) - len(r))^2 / (2 sigma^2));
 *   CIDEr(c) = 10 * mean_n( sum_j sim_n(c, r_j) ) / m;   corpus = mean over images. */
static ca_status score_cider(interner *t, const corpus *c, ca_caption_scores *out, int df_done, uint32_t max_df) {
    const int64_t n = c->n_img;

    /* document frequency: each image adds 1 for every distinct n-gram of its references */
    for (int64_t i = 0; i < n && !df_done; i++) {
        uint32_t epoch = ++t->epoch;
        for (int64_t r = n + c->ref_off[i]; r < n + c->ref_off[i + 1]; r++) {
            for (size_t e = c->ng_start[r]; e < c->ng_start[r + 1]; e++) {
                uint32_t g = c->gid.data[e];
                if (t->ng_mark[g].stamp != epoch) {
                    t->ng_mark[g].stamp = epoch;
                    if (++t->ng_df[g] > max_df) max_df = t->ng_df[g];
                }
            }
        }
    }
    if (max_df == 0) /* the toolkit fails here too: max() of its empty document-frequency dict */
        return ca_error(CA_ERR_VALUE, "CIDEr: every reference caption is empty, the document frequency is undefined");

    /* idf per gram; log N is the toolkit's ref_len */
    const double log_n = log((double)n);
    double *idf = malloc(t->n_ng * sizeof *idf);
    double *norm = malloc((size_t)c->n_cap * CIDER_N * sizeof *norm);
    if (!idf || !norm) {
        free(idf); free(norm);
        goto nomem;
    }
    for (size_t g = 0; g < t->n_ng; g++) idf[g] = log_n - log(t->ng_df[g] > 1 ? (double)t->ng_df[g] : 1.0);

    /* L2 norm of each caption's tf-idf vector per order (sum of squares first, then sqrt) */
    for (int64_t x = 0; x < c->n_cap; x++) {
        double s[CIDER_N] = {0};
        for (size_t e = c->ng_start[x]; e < c->ng_start[x + 1]; e++) {
            uint32_t g = c->gid.data[e];
            double v = (double)(c->cnt.data[e] & LIST_COUNT_MASK) * idf[g];
            s[(c->cnt.data[e] >> LIST_ORDER_SHIFT) - 1] += v * v;
        }
        for (int k = 0; k < CIDER_N; k++) norm[x * CIDER_N + k] = sqrt(s[k]);
    }

    double total = 0;
    int failed = 0;
    const double two_sigma2 = 2 * (CIDER_SIGMA * CIDER_SIGMA);
    /* images are independent: each thread keeps its own "this gram is in the reference" stamps and values */
#pragma omp parallel reduction(+ : total)
    {
    uint32_t *stamp = calloc(t->n_ng ? t->n_ng : 1, sizeof *stamp), epoch = 0;
    double *ref_val = malloc((t->n_ng ? t->n_ng : 1) * sizeof *ref_val);
    if (!stamp || !ref_val) {
#pragma omp atomic write
        failed = 1;
    }
#pragma omp for schedule(static) /* a fixed split keeps the corpus sum's order deterministic */
    for (int64_t i = 0; i < n; i++) {
        if (!stamp || !ref_val) continue;
        double score[CIDER_N] = {0};
        size_t lc = c->ws_start[i + 1] - c->ws_start[i];
        double len_c = lc > 0 ? (double)(lc - 1) : 0; /* number of bigrams */
        const double *nc = norm + i * CIDER_N;
        for (int64_t r = n + c->ref_off[i]; r < n + c->ref_off[i + 1]; r++) {
            ++epoch;
            for (size_t e = c->ng_start[r]; e < c->ng_start[r + 1]; e++) {
                uint32_t g = c->gid.data[e];
                stamp[g] = epoch;
                ref_val[g] = (double)(c->cnt.data[e] & LIST_COUNT_MASK) * idf[g];
            }
            size_t lr = c->ws_start[r + 1] - c->ws_start[r];
            double len_r = lr > 0 ? (double)(lr - 1) : 0;
            const double *nr = norm + r * CIDER_N;
            double val[CIDER_N] = {0};
            for (size_t e = c->ng_start[i]; e < c->ng_start[i + 1]; e++) {
                uint32_t g = c->gid.data[e];
                if (stamp[g] != epoch) continue; /* v_r[g] = 0: the term is 0 */
                double vc = (double)(c->cnt.data[e] & LIST_COUNT_MASK) * idf[g], vr = ref_val[g];
                val[(c->cnt.data[e] >> LIST_ORDER_SHIFT) - 1] += (vc < vr ? vc : vr) * vr;
            }
            double delta = len_c - len_r;
            double penalty = pow(NP_E, -(delta * delta) / two_sigma2); /* the toolkit computes np.e ** x */
            for (int k = 0; k < CIDER_N; k++) {
                if (nc[k] != 0 && nr[k] != 0) val[k] /= nc[k] * nr[k];
                score[k] += val[k] * penalty;
            }
        }
        double m = (double)(c->ref_off[i + 1] - c->ref_off[i]);
        double s = ((score[0] + score[1]) + score[2]) + score[3];
        double img = s / CIDER_N / m * 10.0;
        if (out->cider_per_image) out->cider_per_image[i] = img;
        total += img;
    }
    free(stamp);
    free(ref_val);
    }
    free(idf);
    free(norm);
    if (failed) goto nomem;
    out->cider = total / (double)n;
    return CA_OK;
nomem:
    return ca_error(CA_ERR_NOMEM, "metrics: out of memory (CIDEr)");
}

/* Length of the longest common subsequence of a and b (classic DP, one rolling row over b). */
static uint32_t lcs_length(const uint32_t *a, size_t na, const uint32_t *b, size_t nb, uint32_t *row) {
    memset(row, 0, (nb + 1) * sizeof *row);
    for (size_t i = 0; i < na; i++) {
        uint32_t diag = 0; /* row[j] of the previous i, before it was overwritten */
        for (size_t j = 1; j <= nb; j++) {
            uint32_t up = row[j];
            row[j] = a[i] == b[j - 1] ? diag + 1 : (up > row[j - 1] ? up : row[j - 1]);
            diag = up;
        }
    }
    return row[nb];
}

/* ROUGE-L as Rouge.calc_score: P = max_j LCS(c, r_j)/|c|, R = max_j LCS(c, r_j)/|r_j| (maximised separately),
 * score = (1 + beta^2) P R / (R + beta^2 P) if P and R are non-zero, else 0; corpus = mean over images. */
static ca_status score_rouge(const corpus *c, ca_caption_scores *out) {
    const int64_t n = c->n_img;
    size_t max_len = 0;
    for (int64_t i = 0; i < n; i++) {
        size_t l = c->sp_start[i + 1] - c->sp_start[i];
        if (l > max_len) max_len = l;
    }
    const double beta2 = ROUGE_BETA * ROUGE_BETA;
    double total = 0;
    int failed = 0;
#pragma omp parallel reduction(+ : total)
    {
    uint32_t *row = malloc((max_len + 1) * sizeof *row); /* each thread's LCS row */
    if (!row) {
#pragma omp atomic write
        failed = 1;
    }
#pragma omp for schedule(static) /* a fixed split keeps the corpus sum's order deterministic */
    for (int64_t i = 0; i < n; i++) {
        if (!row) continue;
        const uint32_t *cand = c->sp.data + c->sp_start[i];
        size_t lc = c->sp_start[i + 1] - c->sp_start[i];
        double p_max = 0, r_max = 0;
        for (int64_t r = n + c->ref_off[i]; r < n + c->ref_off[i + 1]; r++) {
            const uint32_t *ref = c->sp.data + c->sp_start[r];
            size_t lr = c->sp_start[r + 1] - c->sp_start[r];
            double lcs = (double)lcs_length(ref, lr, cand, lc, row);
            double prec = lcs / (double)lc, rec = lcs / (double)lr;
            if (prec > p_max) p_max = prec;
            if (rec > r_max) r_max = rec;
        }
        double score = 0;
        if (p_max != 0 && r_max != 0) score = ((1 + beta2) * p_max * r_max) / (r_max + beta2 * p_max);
        if (out->rouge_per_image) out->rouge_per_image[i] = score;
        total += score;
    }
    free(row);
    }
    if (failed) return ca_error(CA_ERR_NOMEM, "metrics: out of memory (ROUGE-L)");
    out->rouge_l = total / (double)n;
    return CA_OK;
}

/* ------------------------------------------------------------------------------------------------------ */

ca_status ca_caption_metrics(int64_t n_images, const ca_text *cands, const int64_t *ref_offsets, const ca_text *refs,
                             unsigned metrics, ca_caption_scores *out) {
    if (n_images <= 0) return ca_error(CA_ERR_VALUE, "metrics: no images to score");
    if (!cands || !ref_offsets || !refs || !out) return ca_error(CA_ERR_VALUE, "metrics: NULL argument");
    if (metrics & ~(unsigned)CA_METRIC_ALL) return ca_error(CA_ERR_VALUE, "metrics: unknown metric mask %u", metrics);
    if (ref_offsets[0] != 0) return ca_error(CA_ERR_VALUE, "metrics: ref_offsets[0] must be 0");
    if (n_images + ref_offsets[n_images] > 1000000000) /* keeps the 32-bit epoch counters from wrapping */
        return ca_error(CA_ERR_VALUE, "metrics: more than 10^9 captions in one call");
    for (int64_t i = 0; i < n_images; i++) {
        if (ref_offsets[i + 1] <= ref_offsets[i])
            return ca_error(CA_ERR_VALUE, "metrics: image %lld has no reference caption", (long long)i);
    }

    ca_status st = CA_OK;
    interner t = {0};
    corpus c = {0};
    c.n_img = n_images;
    c.n_cap = n_images + ref_offsets[n_images];
    c.ref_off = ref_offsets;
    const int need_ngrams = (metrics & (CA_METRIC_BLEU | CA_METRIC_CIDER)) != 0;
    const int need_space = (metrics & CA_METRIC_ROUGE_L) != 0;
    c.ws_start = calloc((size_t)c.n_cap + 1, sizeof *c.ws_start);
    c.ng_start = calloc((size_t)c.n_cap + 1, sizeof *c.ng_start);
    c.sp_start = calloc((size_t)c.n_cap + 1, sizeof *c.sp_start);
    if (!c.ws_start || !c.ng_start || !c.sp_start) {
        st = ca_error(CA_ERR_NOMEM, "metrics: out of memory");
        goto done;
    }

    for (int64_t x = 0; x < c.n_cap; x++) {
        ca_text text = x < n_images ? cands[x] : refs[x - n_images];
        if (!text.ptr && text.len) {
            st = ca_error(CA_ERR_VALUE, "metrics: caption %lld has a NULL buffer", (long long)x);
            goto done;
        }
        if (!text.ptr) text.ptr = "";
        int single_spaced = 0;
        size_t w0 = c.ws.len;
        if (need_ngrams && (st = split_whitespace(&t, text, &c.ws, &single_spaced)) != CA_OK) goto done;
        if (need_space) {
            if (single_spaced) { /* the usual tokenised caption: the same tokens, no second hashing pass */
                for (size_t i = w0; i < c.ws.len; i++) {
                    if (u32_push(&c.sp, c.ws.data[i])) {
                        st = ca_error(CA_ERR_NOMEM, "metrics: out of memory (tokens)");
                        goto done;
                    }
                }
            } else if ((st = split_space(&t, text, &c.sp)) != CA_OK) {
                goto done;
            }
        }
        c.ws_start[x + 1] = c.ws.len;
        c.sp_start[x + 1] = c.sp.len;
    }
    if (need_ngrams && (st = count_all_ngrams(&t, &c)) != CA_OK) goto done;

    uint32_t max_df = 0;
    if (metrics & CA_METRIC_CIDER) { /* document frequencies, filled by the BLEU pass or by score_cider */
        if (!(t.ng_df = calloc(t.n_ng + 1, sizeof *t.ng_df))) {
            st = ca_error(CA_ERR_NOMEM, "metrics: out of memory (CIDEr)");
            goto done;
        }
    }
    if (metrics & CA_METRIC_BLEU) score_bleu(&t, &c, out, t.ng_df, &max_df);
    if ((metrics & CA_METRIC_CIDER) && (st = score_cider(&t, &c, out, (metrics & CA_METRIC_BLEU) != 0, max_df)) != CA_OK)
        goto done;
    if ((metrics & CA_METRIC_ROUGE_L) && (st = score_rouge(&c, out)) != CA_OK) goto done;

done:
    free(c.ws_start); free(c.ng_start); free(c.sp_start);
    free(c.ws.data); free(c.gid.data); free(c.cnt.data); free(c.sp.data);
    interner_free(&t);
    return st;
}
