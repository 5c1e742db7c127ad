/* C-level tests of the io area (JSON parser, safetensors reader/writer, LFM2 config), run under
 * AddressSanitizer + UndefinedBehaviorSanitizer by `make c-tests`. Every parser input is copied into a
 * heap buffer of exactly its length, so a read one byte past the end is reported by ASan.
 *
 * CA_TEST_SOURCES: csrc/json.c csrc/safetensors.c csrc/safetensors_index.c csrc/config.c csrc/status.c
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "captionaura/ca_config.h"
#include "captionaura/ca_json.h"
#include "captionaura/ca_safetensors.h"

static int failures = 0;
static int checks = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__, __LINE__, #cond, \
                    ca_last_error());                                                              \
        }                                                                                          \
    } while (0)

/* The last error message contains `needle`. */
#define CHECK_MSG(needle) CHECK(strstr(ca_last_error(), (needle)) != NULL)

/* An exact-size heap copy, so over-reads are caught. */
static char *exact_copy(const void *data, size_t n) {
    char *p = malloc(n ? n : 1);
    if (!p) abort();
    if (n) memcpy(p, data, n);
    return p;
}

static ca_status parse_json_exact(ca_json_doc *doc, const char *text) {
    size_t n = strlen(text);
    char *buf = exact_copy(text, n);
    ca_status st = ca_json_parse(doc, buf, n);
    /* The document must not point into the input (strings are copied). */
    if (st == CA_OK) memset(buf, 'X', n);
    free(buf);
    return st;
}

/* ---- JSON ------------------------------------------------------------------------------------------- */

static void test_json_valid(void) {
    ca_json_doc doc;
    CHECK(parse_json_exact(&doc, " {\"a\": [1, -2.5e3, true, false, null, \"x\\u00e9\\ud83d\\ude00\\n\"],"
                                 " \"b\": {}, \"c\": [], \"\": 0} ") == CA_OK);
    const ca_json *a = ca_json_get(&doc.root, "a");
    CHECK(a && a->type == CA_JSON_ARRAY && a->len == 6);
    CHECK(ca_json_at(a, 0)->is_int && ca_json_at(a, 0)->integer == 1);
    CHECK(!ca_json_at(a, 1)->is_int && ca_json_at(a, 1)->number == -2500.0);
    CHECK(ca_json_at(a, 2)->type == CA_JSON_BOOL && ca_json_at(a, 2)->boolean == 1);
    CHECK(ca_json_at(a, 3)->type == CA_JSON_BOOL && ca_json_at(a, 3)->boolean == 0);
    CHECK(ca_json_at(a, 4)->type == CA_JSON_NULL);
    const ca_json *s = ca_json_at(a, 5);
    CHECK(s->type == CA_JSON_STRING && s->len == 8 && memcmp(s->str, "x\xc3\xa9\xf0\x9f\x98\x80\n", 8) == 0);
    CHECK(ca_json_at(a, 6) == NULL);
    CHECK(ca_json_get(&doc.root, "b")->type == CA_JSON_OBJECT && ca_json_get(&doc.root, "b")->len == 0);
    CHECK(ca_json_get(&doc.root, "") != NULL);
    CHECK(ca_json_get(&doc.root, "zz") == NULL);
    int64_t x;
    CHECK(ca_json_as_int(ca_json_at(a, 0), "k", 0, 10, &x) == CA_OK && x == 1);
    CHECK(ca_json_as_int(ca_json_at(a, 0), "k", 2, 10, &x) == CA_ERR_VALUE);
    CHECK_MSG("k: 1 is out of range");
    CHECK(ca_json_as_int(ca_json_at(a, 1), "k", INT64_MIN, INT64_MAX, &x) == CA_OK && x == -2500);
    CHECK(ca_json_as_int(s, "key", 0, 10, &x) == CA_ERR_VALUE);
    CHECK_MSG("key: expected an integer, got string");
    const char *str;
    CHECK(ca_json_as_string(ca_json_at(a, 2), "flag", &str) == CA_ERR_VALUE);
    int b;
    CHECK(ca_json_as_bool(ca_json_at(a, 2), "flag", &b) == CA_OK && b == 1);
    ca_json_free(&doc);

    /* int64 edges: exact integers up to the int64 range, doubles beyond. */
    CHECK(parse_json_exact(&doc, "[9223372036854775807, -9223372036854775808, 9223372036854775808, 0, -0]") == CA_OK);
    CHECK(ca_json_at(&doc.root, 0)->is_int && ca_json_at(&doc.root, 0)->integer == INT64_MAX);
    CHECK(ca_json_at(&doc.root, 1)->is_int && ca_json_at(&doc.root, 1)->integer == INT64_MIN);
    CHECK(!ca_json_at(&doc.root, 2)->is_int && ca_json_at(&doc.root, 2)->number == 9223372036854775808.0);
    CHECK(ca_json_as_int(ca_json_at(&doc.root, 2), "big", INT64_MIN, INT64_MAX, &x) == CA_ERR_VALUE);
    ca_json_free(&doc);

    /* Scalars at top level, underflow to zero is fine. */
    CHECK(parse_json_exact(&doc, "1e-400") == CA_OK && doc.root.number == 0.0);
    ca_json_free(&doc);
    CHECK(parse_json_exact(&doc, "\"\\u0000\"") == CA_OK && doc.root.len == 1 && doc.root.str[0] == '\0');
    ca_json_free(&doc);

    /* A large object with unique keys takes the sort-based duplicate check. */
    char *big = malloc(200000);
    size_t n = 0;
    n += (size_t)sprintf(big + n, "{");
    for (int i = 0; i < 5000; i++) n += (size_t)sprintf(big + n, "%s\"k%d\":%d", i ? "," : "", i, i);
    n += (size_t)sprintf(big + n, "}");
    CHECK(ca_json_parse(&doc, big, n) == CA_OK && doc.root.len == 5000);
    CHECK(ca_json_get(&doc.root, "k4321") && ca_json_get(&doc.root, "k4321")->integer == 4321);
    ca_json_free(&doc);
    n = (size_t)sprintf(big, "{");
    for (int i = 0; i < 5000; i++) n += (size_t)sprintf(big + n, "%s\"k%d\":%d", i ? "," : "", i == 4999 ? 17 : i, i);
    n += (size_t)sprintf(big + n, "}");
    CHECK(ca_json_parse(&doc, big, n) == CA_ERR_FORMAT);
    CHECK_MSG("duplicate key \"k17\"");
    free(big);
}

static void test_json_invalid(void) {
    static const char *bad[] = {
        "", " ", "{", "}", "[", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "{a:1}", "{'a':1}", "[1 2]", "01", "-", "1.",
        ".5", "1e", "1e+", "+1", "NaN", "Infinity", "-Infinity", "1e999", "-1e999", "tru", "nul", "falsey",
        "\"abc", "\"\\x\"", "\"\\u12\"", "\"\\u12g4\"", "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"",
        "\"\\ud800x\"", "\"\t\"", "\"\x01\"", "\"\xff\"", "\"\xc0\x80\"", "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"",
        "\"\xe2\x82\"", "[1] [2]", "{} x", "\xef\xbb\xbf{}", "{\"a\":1,\"a\":2}", "// c\n{}", "[1,,2]", "[\"a\":1]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ca_json_doc doc;
        ca_status st = parse_json_exact(&doc, bad[i]);
        if (st != CA_ERR_FORMAT) fprintf(stderr, "accepted invalid JSON #%zu: %s\n", i, bad[i]);
        CHECK(st == CA_ERR_FORMAT);
        CHECK_MSG("invalid JSON at byte");
        ca_json_free(&doc); /* harmless after a failure */
    }
    /* Deep nesting fails cleanly instead of overflowing the stack. */
    size_t depth = 100000;
    char *deep = malloc(2 * depth);
    memset(deep, '[', depth);
    memset(deep + depth, ']', depth);
    ca_json_doc doc;
    CHECK(ca_json_parse(&doc, deep, 2 * depth) == CA_ERR_FORMAT);
    CHECK_MSG("nesting too deep");
    free(deep);
    char ok_depth[2 * CA_JSON_MAX_DEPTH];
    memset(ok_depth, '[', CA_JSON_MAX_DEPTH);
    memset(ok_depth + CA_JSON_MAX_DEPTH, ']', CA_JSON_MAX_DEPTH);
    CHECK(ca_json_parse(&doc, ok_depth, sizeof ok_depth) == CA_OK);
    ca_json_free(&doc);
    CHECK(ca_json_valid_utf8("h\xc3\xa9", 3) && !ca_json_valid_utf8("\xc3", 1) && !ca_json_valid_utf8("\x80", 1));
}

/* ---- safetensors ------------------------------------------------------------------------------------ */

/* A safetensors image with a hand-written header padded to 8 bytes and `data_len` data bytes (0..n-1). */
static uint8_t *make_file(const char *header, size_t data_len, size_t *size) {
    size_t h = strlen(header), padded = (h + 7) / 8 * 8;
    *size = 8 + padded + data_len;
    uint8_t *buf = malloc(*size);
    if (!buf) abort();
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, header, h);
    memset(buf + 8 + h, ' ', padded - h);
    for (size_t i = 0; i < data_len; i++) buf[8 + padded + i] = (uint8_t)i;
    return buf;
}

static ca_status parse_header_text(const char *header, size_t data_len, ca_safetensors *st, uint8_t **keep) {
    size_t size;
    *keep = make_file(header, data_len, &size);
    return ca_safetensors_parse(st, *keep, size);
}

static void test_safetensors_malformed(void) {
    static const struct {
        const char *header;
        size_t data_len;
        ca_status want;
        const char *msg;
    } cases[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, CA_OK, ""},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 7, CA_ERR_FORMAT, "'a': data_offsets [0, 8] out of range"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, CA_ERR_FORMAT, "'a': shape and dtype F32 need 12 bytes"},
        {"{\"a\":{\"dtype\":\"X\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, CA_ERR_FORMAT, "'a': unknown dtype 'X'"},
        {"{\"a\":{\"dtype\":\"U32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, CA_ERR_UNSUPPORTED, "'a': dtype U32"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, CA_ERR_FORMAT, "'a': negative dimension"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, CA_ERR_FORMAT, "end before begin"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, CA_ERR_FORMAT, "'a' [0, 8) and 'b' [4, 12) overlap"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, CA_ERR_FORMAT, "duplicate key \"a\""},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 8, CA_ERR_FORMAT, "shape is too large"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,0],\"data_offsets\":[0,0]}}", 8, CA_OK, ""},
        {"{\"a\":{\"dtype\":\"F64\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,8]}}", 8, CA_ERR_FORMAT, "9 dimensions"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,18446744073709551615]}}", 8, CA_ERR_FORMAT, "'a'"},
        {"{\"__metadata__\":{\"k\":\"v\"}}", 0, CA_OK, ""},
        {"{\"__metadata__\":{\"k\":1}}", 0, CA_ERR_FORMAT, "__metadata__ value of 'k'"},
        {"{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, CA_ERR_FORMAT, "NUL"},
        {"{\"__metadata__\\u0000\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, CA_ERR_FORMAT, "NUL"},
        {"[]", 0, CA_ERR_FORMAT, "start with '{'"},
        {"{} x", 0, CA_ERR_FORMAT, "trailing characters"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ca_safetensors st;
        uint8_t *buf;
        ca_status got = parse_header_text(cases[i].header, cases[i].data_len, &st, &buf);
        if (got != cases[i].want) fprintf(stderr, "safetensors case %zu: status %d, want %d\n", i, got, cases[i].want);
        CHECK(got == cases[i].want);
        if (cases[i].want != CA_OK) {
            CHECK_MSG(cases[i].msg);
            CHECK_MSG("<memory>: ");
        }
        ca_safetensors_close(&st);
        free(buf);
    }
    /* Length field problems. */
    ca_safetensors st;
    uint8_t small[7] = {0};
    CHECK(ca_safetensors_parse(&st, small, sizeof small) == CA_ERR_FORMAT);
    CHECK_MSG("too small");
    uint8_t huge[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{', '}'};
    CHECK(ca_safetensors_parse(&st, huge, sizeof huge) == CA_ERR_FORMAT);
    CHECK_MSG("exceeds the file size");
    uint8_t zero[8] = {0};
    CHECK(ca_safetensors_parse(&st, zero, sizeof zero) == CA_ERR_FORMAT);
    CHECK_MSG("start with '{'");
    ca_safetensors_close(&st);
}

static int write_sample(const char *path) {
    float w[6] = {1, 2, 3, 4, 5, -6.5f};
    uint16_t h[8] = {0x3C00, 0x0001, 0x03FF, 0x7BFF, 0x7C00, 0xFC00, 0x8000, 0x7E00}; /* f16 */
    uint16_t bf[3] = {0x3F80, 0xC020, 0x0001};                                     /* bf16 */
    double d[2] = {0.1, 1e300};
    int64_t ids[3] = {1, -2, 3};
    int64_t sw[2] = {2, 3}, sh[1] = {8}, sbf[1] = {3}, sd[1] = {2}, sids[1] = {3}, sempty[2] = {0, 5};
    ca_st_item items[] = {
        {"model.w", CA_DT_F32, 2, sw, w}, {"h", CA_DT_F16, 1, sh, h},     {"bf", CA_DT_BF16, 1, sbf, bf},
        {"d", CA_DT_F64, 1, sd, d},       {"ids", CA_DT_I64, 1, sids, ids}, {"empty", CA_DT_F32, 2, sempty, NULL},
        {"scalar", CA_DT_F32, 0, NULL, w},
    };
    const char *meta[] = {"format", "pt", "quote\"key", "line\nvalue\\"};
    return ca_safetensors_write(path, items, (int)(sizeof items / sizeof items[0]), meta, 2) == CA_OK;
}

static void test_safetensors_roundtrip(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/sample.safetensors", dir);
    CHECK(write_sample(path));
    char tmp[520];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(access(tmp, F_OK) != 0);

    ca_safetensors st;
    CHECK(ca_safetensors_open(&st, path) == CA_OK);
    CHECK(st.num_tensors == 7);
    CHECK(((size_t)(st.data - (const uint8_t *)st.map)) % 8 == 0);
    CHECK(st.num_metadata == 2 && strcmp(ca_safetensors_metadata(&st, "quote\"key"), "line\nvalue\\") == 0);
    CHECK(ca_safetensors_metadata(&st, "nope") == NULL);

    const ca_st_tensor *t = ca_safetensors_find(&st, "model.w");
    CHECK(t && t->dtype == CA_DT_F32 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3);
    float out[8];
    CHECK(ca_safetensors_read_f32(&st, t, out, 6) == CA_OK && out[5] == -6.5f && out[0] == 1.0f);
    CHECK(ca_safetensors_read_f32(&st, t, out, 5) == CA_ERR_SHAPE);
    CHECK_MSG("'model.w' has 6 elements");

    t = ca_safetensors_find(&st, "h");
    CHECK(ca_safetensors_read_f32(&st, t, out, 8) == CA_OK);
    CHECK(out[0] == 1.0f && out[1] == 0x1p-24f && out[2] == 0x3FFp-24f && out[3] == 65504.0f);
    CHECK(isinf(out[4]) && out[4] > 0 && isinf(out[5]) && out[5] < 0);
    CHECK(out[6] == 0.0f && signbit(out[6]) && isnan(out[7]));

    /* a range of elements (loading a matrix chunk by chunk), and ranges past the end */
    CHECK(ca_safetensors_read_f32_range(&st, t, out, 3, 3) == CA_OK);
    CHECK(out[0] == 65504.0f && isinf(out[1]) && out[1] > 0 && isinf(out[2]) && out[2] < 0);
    CHECK(ca_safetensors_read_f32_range(&st, t, out, 6, 3) == CA_ERR_INDEX);
    CHECK_MSG("elements [6, 9) of tensor 'h', which has 8");
    CHECK(ca_safetensors_read_f32_range(&st, t, out, 9, 0) == CA_ERR_INDEX);
    CHECK(ca_safetensors_read_f32_range(&st, t, out, 8, 0) == CA_OK);
    CHECK(ca_safetensors_read_f32(&st, t, out, 8) == CA_OK && out[3] == 65504.0f); /* read again after the release */

    t = ca_safetensors_find(&st, "bf");
    CHECK(ca_safetensors_read_f32(&st, t, out, 3) == CA_OK);
    CHECK(out[0] == 1.0f && out[1] == -2.5f && out[2] == 0x1p-133f);

    t = ca_safetensors_find(&st, "d");
    CHECK(ca_safetensors_read_f32(&st, t, out, 2) == CA_OK && out[0] == 0.1f && isinf(out[1]));

    t = ca_safetensors_find(&st, "ids");
    CHECK(ca_safetensors_read_f32(&st, t, out, 3) == CA_ERR_VALUE);
    CHECK_MSG("not a floating-point type");
    int64_t ids[3];
    memcpy(ids, ca_safetensors_tensor_data(&st, t), sizeof ids);
    CHECK(ids[1] == -2);

    t = ca_safetensors_find(&st, "empty");
    CHECK(t && ca_st_tensor_numel(t) == 0 && ca_safetensors_read_f32(&st, t, out, 0) == CA_OK);
    t = ca_safetensors_find(&st, "scalar");
    CHECK(t && t->ndim == 0 && ca_st_tensor_numel(t) == 1);
    CHECK(ca_safetensors_find(&st, "missing") == NULL);
    ca_safetensors_close(&st);
    ca_safetensors_close(&st); /* idempotent */

    /* Every truncation of the file fails cleanly; every single-byte change of the length and header either
     * parses or fails, without a sanitizer report. */
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    uint8_t image[4096];
    size_t size = fread(image, 1, sizeof image, f);
    fclose(f);
    CHECK(size > 8 && size < sizeof image);
    for (size_t len = 0; len < size; len++) {
        uint8_t *copy = (uint8_t *)exact_copy(image, len);
        CHECK(ca_safetensors_parse(&st, copy, len) != CA_OK);
        ca_safetensors_close(&st);
        free(copy);
    }
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | image[i];
    static const uint8_t values[] = {0, '"', '{', '}', '[', ']', ',', ':', '1', '9', '-', 'e', '\\', 0x80, 0xff, ' '};
    int parsed = 0;
    for (size_t pos = 0; pos < 8 + header_len; pos++) {
        for (size_t v = 0; v < sizeof values; v++) {
            uint8_t *copy = (uint8_t *)exact_copy(image, size);
            copy[pos] = values[v];
            if (ca_safetensors_parse(&st, copy, size) == CA_OK) {
                parsed++;
                for (int i = 0; i < st.num_tensors; i++) {
                    const ca_st_tensor *tt = &st.tensors[i];
                    size_t n = ca_st_tensor_numel(tt);
                    float *o = malloc(n * sizeof *o + 1);
                    (void)ca_safetensors_read_f32(&st, tt, o, n);
                    free(o);
                }
            }
            ca_safetensors_close(&st);
            free(copy);
        }
    }
    CHECK(parsed > 0);

    /* Writer errors. */
    int64_t s1[1] = {1};
    float one = 1;
    ca_st_item dup[2] = {{"x", CA_DT_F32, 1, s1, &one}, {"x", CA_DT_F32, 1, s1, &one}};
    CHECK(ca_safetensors_write(path, dup, 2, NULL, 0) == CA_ERR_VALUE);
    CHECK_MSG("duplicate tensor name 'x'");
    ca_st_item nodata = {"y", CA_DT_F32, 1, s1, NULL};
    CHECK(ca_safetensors_write(path, &nodata, 1, NULL, 0) == CA_ERR_VALUE);
    int64_t neg[1] = {-1};
    ca_st_item negative = {"y", CA_DT_F32, 1, neg, &one};
    CHECK(ca_safetensors_write(path, &negative, 1, NULL, 0) == CA_ERR_VALUE);
    ca_st_item badname = {"\xff", CA_DT_F32, 1, s1, &one};
    CHECK(ca_safetensors_write(path, &badname, 1, NULL, 0) == CA_ERR_VALUE);
    const char *dupmeta[] = {"k", "1", "k", "2"};
    CHECK(ca_safetensors_write(path, dup, 1, dupmeta, 2) == CA_ERR_VALUE);
    CHECK_MSG("duplicate metadata key 'k'");
    char badpath[600];
    snprintf(badpath, sizeof badpath, "%s/no/such/dir/x.safetensors", dir);
    CHECK(ca_safetensors_write(badpath, dup, 1, NULL, 0) == CA_ERR_IO);
    CHECK(ca_safetensors_open(&st, badpath) == CA_ERR_IO);
    CHECK(ca_safetensors_open(&st, dir) == CA_ERR_IO); /* a directory */
    /* The earlier good file is still intact after the failed writes. */
    CHECK(ca_safetensors_open(&st, path) == CA_OK && st.num_tensors == 7);
    ca_safetensors_close(&st);
    unlink(path);
}

static void test_index(void) {
    const char *text = "{\"metadata\": {\"total_size\": 10}, \"weight_map\": {\"a\": \"s1.safetensors\","
                       " \"b\": \"s2.safetensors\", \"c\": \"s1.safetensors\"}}";
    size_t n = strlen(text);
    char *buf = exact_copy(text, n);
    ca_st_index idx;
    CHECK(ca_safetensors_index_parse(&idx, buf, n, "idx.json") == CA_OK);
    CHECK(idx.num_names == 3 && idx.num_files == 2);
    CHECK(strcmp(ca_safetensors_index_file(&idx, "c"), "s1.safetensors") == 0);
    CHECK(strcmp(ca_safetensors_index_file(&idx, "b"), "s2.safetensors") == 0);
    CHECK(ca_safetensors_index_file(&idx, "zz") == NULL);
    ca_safetensors_index_free(&idx);
    for (size_t len = 0; len < n; len++) {
        CHECK(ca_safetensors_index_parse(&idx, buf, len, "idx.json") != CA_OK);
        ca_safetensors_index_free(&idx);
    }
    free(buf);
    static const char *bad[] = {"[]", "{}", "{\"weight_map\": []}", "{\"weight_map\": {\"a\": 1}}",
                                "{\"weight_map\": {\"a\": \"../x\"}}", "{\"weight_map\": {\"a\": \"\"}}",
                                "{\"weight_map\": {\"a\": \"x\\u0000y\"}}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        buf = exact_copy(bad[i], strlen(bad[i]));
        CHECK(ca_safetensors_index_parse(&idx, buf, strlen(bad[i]), "idx.json") != CA_OK);
        CHECK_MSG("idx.json: ");
        ca_safetensors_index_free(&idx);
        free(buf);
    }
    CHECK(ca_safetensors_index_read(&idx, "/nonexistent/idx.json") == CA_ERR_IO);
}

/* ---- config ----------------------------------------------------------------------------------------- */

static const char *LFM2_350M_JSON =
    "{\"architectures\": [\"Lfm2ForCausalLM\"], \"block_auto_adjust_ff_dim\": true, \"block_dim\": 1024,"
    " \"block_ff_dim\": 6656, \"block_ffn_dim_multiplier\": 1.0, \"block_multiple_of\": 256,"
    " \"block_norm_eps\": 1e-05, \"bos_token_id\": 1, \"conv_L_cache\": 3, \"conv_bias\": false,"
    " \"eos_token_id\": 7, \"hidden_size\": 1024, \"intermediate_size\": 6656,"
    " \"layer_types\": [\"conv\", \"conv\", \"full_attention\", \"conv\", \"conv\", \"full_attention\", \"conv\","
    " \"conv\", \"full_attention\", \"conv\", \"full_attention\", \"conv\", \"full_attention\", \"conv\","
    " \"full_attention\", \"conv\"], \"max_position_embeddings\": 128000, \"model_type\": \"lfm2\","
    " \"norm_eps\": 1e-05, \"num_attention_heads\": 16, \"num_heads\": 16, \"num_hidden_layers\": 16,"
    " \"num_key_value_heads\": 8, \"pad_token_id\": 0, \"rope_theta\": 1000000.0, \"vocab_size\": 65536}";

static ca_status config_exact(ca_lfm2_config *cfg, const char *text) {
    size_t n = strlen(text);
    char *buf = exact_copy(text, n);
    ca_status st = ca_lfm2_config_from_json(cfg, buf, n);
    free(buf);
    return st;
}

static void test_config(const char *dir) {
    ca_lfm2_config cfg;
    CHECK(config_exact(&cfg, LFM2_350M_JSON) == CA_OK);
    CHECK(ca_lfm2_config_validate(&cfg) == CA_OK);
    CHECK(cfg.ffn_dim == 4608 && cfg.intermediate_size == 6656 && cfg.head_dim == 64);
    static const int attn[16] = {0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0};
    int same = 1;
    for (int i = 0; i < 16; i++) same &= cfg.layer_is_attention[i] == attn[i];
    CHECK(same);
    CHECK(cfg.eos_token_id == 7 && cfg.tie_word_embeddings == 1 && cfg.rope_theta == 1e6);

    /* Nested VL config and a config file on disk. */
    char *vl = malloc(strlen(LFM2_350M_JSON) + 100);
    sprintf(vl, "{\"model_type\": \"lfm2-vl\", \"text_config\": %s}", LFM2_350M_JSON);
    CHECK(config_exact(&cfg, vl) == CA_OK && cfg.ffn_dim == 4608);
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    fputs(vl, f);
    fclose(f);
    free(vl);
    CHECK(ca_lfm2_config_from_file(&cfg, path) == CA_OK && cfg.hidden_size == 1024);
    unlink(path);
    CHECK(ca_lfm2_config_from_file(&cfg, path) == CA_ERR_IO);

    CHECK(config_exact(&cfg, "{\"hidden_size\": 8}") == CA_ERR_KEY);
    CHECK_MSG("missing required key 'vocab_size'");
    CHECK(config_exact(&cfg, "{\"vocab_size\": 8, \"hidden_size\": \"8\"}") == CA_ERR_VALUE);
    CHECK_MSG("'hidden_size': expected an integer, got string");
    CHECK(config_exact(&cfg, "{\"vocab_size\": 8,") == CA_ERR_FORMAT);
    CHECK_MSG("config.json: invalid JSON at byte");
    CHECK(config_exact(&cfg, "{\"model_type\": \"lfm2_vl\"}") == CA_ERR_KEY);
    CHECK_MSG("text_config");

    /* FFN rule edge cases: rounding only with a multiplier; auto-adjust off keeps the width. */
    ca_lfm2_config c2;
    ca_lfm2_config_defaults(&c2);
    CHECK(c2.ffn_dim == 8192 && ca_lfm2_config_validate(&c2) == CA_OK);
    c2.intermediate_size = 6656;
    c2.has_block_ffn_dim_multiplier = 0;
    CHECK(ca_lfm2_config_resolve_ffn_dim(&c2) == CA_OK && c2.ffn_dim == 4437);
    c2.block_auto_adjust_ff_dim = 0;
    CHECK(ca_lfm2_config_resolve_ffn_dim(&c2) == CA_OK && c2.ffn_dim == 6656);
    c2.block_auto_adjust_ff_dim = 1;
    c2.has_block_ffn_dim_multiplier = 1;
    c2.block_ffn_dim_multiplier = 1e300;
    CHECK(ca_lfm2_config_resolve_ffn_dim(&c2) == CA_ERR_VALUE);
    c2.block_ffn_dim_multiplier = -1.0;
    CHECK(ca_lfm2_config_resolve_ffn_dim(&c2) == CA_ERR_VALUE);

    /* validate */
    ca_lfm2_config_defaults(&c2);
    c2.num_key_value_heads = 3;
    CHECK(ca_lfm2_config_validate(&c2) == CA_ERR_VALUE);
    CHECK_MSG("num_key_value_heads");
    ca_lfm2_config_defaults(&c2);
    c2.head_dim = 7;
    CHECK(ca_lfm2_config_validate(&c2) == CA_ERR_VALUE);
    ca_lfm2_config_defaults(&c2);
    c2.num_hidden_layers = CA_MAX_LAYERS + 1;
    CHECK(ca_lfm2_config_validate(&c2) == CA_ERR_VALUE);

    /* Every prefix of a valid config fails cleanly (exact-size buffers). */
    size_t n = strlen(LFM2_350M_JSON);
    for (size_t len = 0; len < n; len++) {
        char *buf = exact_copy(LFM2_350M_JSON, len);
        CHECK(ca_lfm2_config_from_json(&cfg, buf, len) != CA_OK);
        free(buf);
    }
}

int main(void) {
    char dir[] = "/tmp/ca_test_io_XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_json_valid();
    test_json_invalid();
    test_safetensors_malformed();
    test_safetensors_roundtrip(dir);
    test_index();
    test_config(dir);
    rmdir(dir);
    if (failures) {
        fprintf(stderr, "test_io: %d of %d checks FAILED\n", failures, checks);
        return 1;
    }
    printf("test_io: %d checks passed\n", checks);
    return 0;
}
