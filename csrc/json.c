/* Strict RFC 8259 JSON parser (see ca_json.h for what "strict" means here).
 *
 * Recursive descent over containers with an explicit depth limit; the children of the container being
 * parsed accumulate on one shared scratch stack and are copied into the arena when the container closes,
 * so every array/object is a single contiguous allocation and parsing is linear in the input size. */
#include "captionaura/ca_json.h"

#include <errno.h>
#include <locale.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- arena ---------------------------------------------------------------------------------------- */

struct ca_json_block {
    ca_json_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

#define CA_JSON_BLOCK_SIZE ((size_t)64 * 1024)

static void *arena_alloc(ca_json_doc *doc, size_t size) {
    if (size > SIZE_MAX - 16) return NULL;
    size = (size + 15) & ~(size_t)15;
    ca_json_block *b = doc->blocks;
    if (!b || b->cap - b->used < size) {
        size_t cap = size > CA_JSON_BLOCK_SIZE ? size : CA_JSON_BLOCK_SIZE;
        if (cap > SIZE_MAX - sizeof *b) return NULL;
        b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = doc->blocks;
        b->used = 0;
        b->cap = cap;
        doc->blocks = b;
    }
    void *p = b->data + b->used;
    b->used += size;
    return p;
}

void ca_json_free(ca_json_doc *doc) {
    if (!doc) return;
    ca_json_block *b = doc->blocks;
    while (b) {
        ca_json_block *next = b->next;
        free(b);
        b = next;
    }
    doc->blocks = NULL;
    memset(&doc->root, 0, sizeof doc->root);
}

/* ---- parser --------------------------------------------------------------------------------------- */

typedef struct {
    const unsigned char *s;
    size_t n, pos;
    ca_json_doc *doc;
    ca_json_member *stack; /* scratch: children of the open containers */
    size_t stack_len, stack_cap;
    int depth;
} parser;

static ca_status fail(const parser *p, const char *what) {
    return ca_error(CA_ERR_FORMAT, "invalid JSON at byte %zu: %s", p->pos, what);
}

static ca_status nomem(void) { return ca_error(CA_ERR_NOMEM, "out of memory while parsing JSON"); }

static void skip_ws(parser *p) {
    while (p->pos < p->n) {
        unsigned char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static ca_status push_member(parser *p, const ca_json_member *m) {
    if (p->stack_len == p->stack_cap) {
        size_t cap = p->stack_cap ? p->stack_cap * 2 : 64;
        if (cap > SIZE_MAX / sizeof *p->stack) return nomem();
        ca_json_member *s = realloc(p->stack, cap * sizeof *s);
        if (!s) return nomem();
        p->stack = s;
        p->stack_cap = cap;
    }
    p->stack[p->stack_len++] = *m;
    return CA_OK;
}

static int hex_value(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Reads the 4 hex digits of a \uXXXX escape starting at p->pos. */
static ca_status read_hex4(parser *p, unsigned *out) {
    if (p->n - p->pos < 4) return fail(p, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hex_value(p->s[p->pos + i]);
        if (h < 0) return fail(p, "bad hex digit in \\u escape");
        v = v * 16 + (unsigned)h;
    }
    p->pos += 4;
    *out = v;
    return CA_OK;
}

/* Length of the valid UTF-8 sequence starting at s[0] (at most `avail` bytes), or 0 when invalid:
 * overlong forms, surrogates (U+D800..DFFF) and code points above U+10FFFF are invalid (RFC 3629). */
static size_t utf8_sequence(const unsigned char *s, size_t avail) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) { len = 3; lo = 0xA0; }
    else if (c >= 0xE1 && c <= 0xEC) len = 3;
    else if (c == 0xED) { len = 3; hi = 0x9F; }
    else if (c >= 0xEE && c <= 0xEF) len = 3;
    else if (c == 0xF0) { len = 4; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) { len = 4; hi = 0x8F; }
    else return 0;
    if (avail < len) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    return len;
}

static size_t utf8_encode(unsigned cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Parses a string starting at the opening quote into arena memory. The decoded form is never longer than
 * the raw form (every escape shrinks or keeps its length), so the raw length bounds the allocation. */
static ca_status parse_string(parser *p, const char **out, size_t *out_len) {
    p->pos++; /* opening quote */
    size_t end = p->pos;
    while (end < p->n && p->s[end] != '"') end += (p->s[end] == '\\') ? 2 : 1;
    if (end >= p->n) return fail(p, "unterminated string");
    char *buf = arena_alloc(p->doc, end - p->pos + 1);
    if (!buf) return nomem();
    size_t len = 0;
    while (p->s[p->pos] != '"') {
        unsigned char c = p->s[p->pos];
        if (c < 0x20) return fail(p, "unescaped control character in string");
        if (c != '\\') {
            size_t k = utf8_sequence(p->s + p->pos, end - p->pos);
            if (k == 0) return fail(p, "invalid UTF-8 in string");
            memcpy(buf + len, p->s + p->pos, k);
            len += k;
            p->pos += k;
            continue;
        }
        p->pos++; /* backslash; the scan above guarantees a following byte */
        c = p->s[p->pos++];
        switch (c) {
        case '"': buf[len++] = '"'; break;
        case '\\': buf[len++] = '\\'; break;
        case '/': buf[len++] = '/'; break;
        case 'b': buf[len++] = '\b'; break;
        case 'f': buf[len++] = '\f'; break;
        case 'n': buf[len++] = '\n'; break;
        case 'r': buf[len++] = '\r'; break;
        case 't': buf[len++] = '\t'; break;
        case 'u': {
            unsigned cp;
            CA_TRY(read_hex4(p, &cp));
            if (cp >= 0xDC00 && cp <= 0xDFFF) return fail(p, "lone low surrogate in \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                /* A high surrogate must be followed by an escaped low surrogate (UTF-16 pair). */
                if (p->n - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
                    return fail(p, "high surrogate not followed by a low surrogate");
                p->pos += 2;
                unsigned lo;
                CA_TRY(read_hex4(p, &lo));
                if (lo < 0xDC00 || lo > 0xDFFF) return fail(p, "high surrogate not followed by a low surrogate");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            len += utf8_encode(cp, buf + len);
            break;
        }
        default: p->pos--; return fail(p, "invalid escape in string");
        }
    }
    p->pos++; /* closing quote */
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return CA_OK;
}

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static ca_status parse_number(parser *p, ca_json *v) {
    size_t start = p->pos, i = p->pos;
    int negative = 0, integral = 1;
    if (i < p->n && p->s[i] == '-') { negative = 1; i++; }
    if (i >= p->n || !is_digit(p->s[i])) { p->pos = i; return fail(p, "expected a digit"); }
    if (p->s[i] == '0') {
        i++;
        if (i < p->n && is_digit(p->s[i])) { p->pos = i; return fail(p, "leading zero in number"); }
    } else {
        while (i < p->n && is_digit(p->s[i])) i++;
    }
    size_t int_end = i;
    if (i < p->n && p->s[i] == '.') {
        integral = 0;
        i++;
        if (i >= p->n || !is_digit(p->s[i])) { p->pos = i; return fail(p, "expected a digit after '.'"); }
        while (i < p->n && is_digit(p->s[i])) i++;
    }
    if (i < p->n && (p->s[i] == 'e' || p->s[i] == 'E')) {
        integral = 0;
        i++;
        if (i < p->n && (p->s[i] == '+' || p->s[i] == '-')) i++;
        if (i >= p->n || !is_digit(p->s[i])) { p->pos = i; return fail(p, "expected a digit in exponent"); }
        while (i < p->n && is_digit(p->s[i])) i++;
    }

    v->type = CA_JSON_NUMBER;
    v->is_int = 0;
    if (integral) {
        /* Exact int64 when it fits: safetensors offsets can exceed 2^53. */
        uint64_t acc = 0, limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        int fits = 1;
        for (size_t k = start + (size_t)negative; k < int_end; k++) {
            unsigned d = p->s[k] - '0';
            if (acc > (limit - d) / 10) { fits = 0; break; }
            acc = acc * 10 + d;
        }
        if (fits) {
            v->is_int = 1;
            v->integer = negative ? (acc == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)acc) : (int64_t)acc;
        }
    }

    /* strtod needs a NUL-terminated copy, and follows LC_NUMERIC: swap '.' for the locale's point. */
    size_t len = i - start;
    char small[64];
    char *tmp = len < sizeof small ? small : malloc(len + 1);
    if (!tmp) return nomem();
    memcpy(tmp, p->s + start, len);
    tmp[len] = '\0';
    const char *point = localeconv()->decimal_point;
    if (point && point[0] && point[0] != '.' && point[1] == '\0') {
        char *dot = strchr(tmp, '.');
        if (dot) *dot = point[0];
    }
    errno = 0;
    double d = strtod(tmp, NULL);
    if (tmp != small) free(tmp);
    if (isinf(d) || isnan(d)) return fail(p, "number out of range");
    v->number = d;
    p->pos = i;
    return CA_OK;
}

static ca_status parse_literal(parser *p, const char *word, ca_json *v) {
    size_t k = strlen(word);
    if (p->n - p->pos < k || memcmp(p->s + p->pos, word, k) != 0) return fail(p, "invalid literal");
    p->pos += k;
    return CA_OK;
}

static int key_cmp(const void *a, const void *b) {
    const ca_json_member *x = *(const ca_json_member *const *)a, *y = *(const ca_json_member *const *)b;
    if (x->key_len != y->key_len) return x->key_len < y->key_len ? -1 : 1;
    return memcmp(x->key, y->key, x->key_len);
}

static ca_status duplicate_key(const parser *p, const ca_json_member *m) {
    /* The key may contain NUL (\u0000); %s stops there, which still names it recognisably. */
    return ca_error(CA_ERR_FORMAT, "invalid JSON at byte %zu: duplicate key \"%.200s\"", p->pos, m->key);
}

/* Rejects repeated keys: quadratic for small objects, sort-based (n log n) for large ones. */
static ca_status check_duplicates(parser *p, ca_json_member *items, size_t n) {
    if (n <= 16) {
        for (size_t i = 1; i < n; i++)
            for (size_t j = 0; j < i; j++)
                if (items[i].key_len == items[j].key_len && memcmp(items[i].key, items[j].key, items[i].key_len) == 0)
                    return duplicate_key(p, &items[i]);
        return CA_OK;
    }
    ca_json_member **order = malloc(n * sizeof *order);
    if (!order) return nomem();
    for (size_t i = 0; i < n; i++) order[i] = &items[i];
    qsort(order, n, sizeof *order, key_cmp);
    for (size_t i = 1; i < n; i++) {
        if (key_cmp(&order[i - 1], &order[i]) == 0) {
            ca_status st = duplicate_key(p, order[i]);
            free(order);
            return st;
        }
    }
    free(order);
    return CA_OK;
}

static ca_status parse_value(parser *p, ca_json *v);

/* Arrays and objects: children go on the scratch stack, then move into one arena block. */
static ca_status parse_container(parser *p, ca_json *v, int is_object) {
    unsigned char close = is_object ? '}' : ']';
    if (++p->depth > CA_JSON_MAX_DEPTH) return fail(p, "nesting too deep");
    p->pos++; /* '{' or '[' */
    size_t base = p->stack_len;
    skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == close) {
        p->pos++;
    } else {
        for (;;) {
            ca_json_member m;
            memset(&m, 0, sizeof m);
            skip_ws(p);
            if (is_object) {
                if (p->pos >= p->n || p->s[p->pos] != '"') return fail(p, "expected a string key");
                CA_TRY(parse_string(p, &m.key, &m.key_len));
                skip_ws(p);
                if (p->pos >= p->n || p->s[p->pos] != ':') return fail(p, "expected ':' after key");
                p->pos++;
            }
            CA_TRY(parse_value(p, &m.value));
            CA_TRY(push_member(p, &m));
            skip_ws(p);
            if (p->pos >= p->n) return fail(p, is_object ? "unterminated object" : "unterminated array");
            unsigned char c = p->s[p->pos++];
            if (c == close) break;
            if (c != ',') { p->pos--; return fail(p, is_object ? "expected ',' or '}'" : "expected ',' or ']'"); }
        }
    }
    size_t count = p->stack_len - base;
    v->type = is_object ? CA_JSON_OBJECT : CA_JSON_ARRAY;
    v->len = count;
    v->items = NULL;
    if (count) {
        if (count > SIZE_MAX / sizeof *v->items) return nomem();
        v->items = arena_alloc(p->doc, count * sizeof *v->items);
        if (!v->items) return nomem();
        memcpy(v->items, p->stack + base, count * sizeof *v->items);
    }
    p->stack_len = base;
    if (is_object) CA_TRY(check_duplicates(p, v->items, count));
    p->depth--;
    return CA_OK;
}

static ca_status parse_value(parser *p, ca_json *v) {
    memset(v, 0, sizeof *v);
    skip_ws(p);
    if (p->pos >= p->n) return fail(p, "unexpected end of input");
    unsigned char c = p->s[p->pos];
    switch (c) {
    case '{': return parse_container(p, v, 1);
    case '[': return parse_container(p, v, 0);
    case '"':
        v->type = CA_JSON_STRING;
        return parse_string(p, &v->str, &v->len);
    case 't': v->type = CA_JSON_BOOL; v->boolean = 1; return parse_literal(p, "true", v);
    case 'f': v->type = CA_JSON_BOOL; v->boolean = 0; return parse_literal(p, "false", v);
    case 'n': v->type = CA_JSON_NULL; return parse_literal(p, "null", v);
    default:
        if (c == '-' || is_digit(c)) return parse_number(p, v);
        return fail(p, "unexpected character");
    }
}

ca_status ca_json_parse(ca_json_doc *doc, const char *text, size_t len) {
    memset(doc, 0, sizeof *doc);
    if (!text && len) return ca_error(CA_ERR_VALUE, "ca_json_parse: NULL text");
    if (len > CA_JSON_MAX_BYTES)
        return ca_error(CA_ERR_FORMAT, "invalid JSON: %zu bytes exceeds the %zu-byte limit", len, CA_JSON_MAX_BYTES);
    parser p = {.s = (const unsigned char *)text, .n = len, .doc = doc};
    ca_status st = parse_value(&p, &doc->root);
    if (st == CA_OK) {
        skip_ws(&p);
        if (p.pos != p.n) st = fail(&p, "trailing characters after the JSON value");
    }
    free(p.stack);
    if (st != CA_OK) ca_json_free(doc);
    return st;
}

/* ---- lookups -------------------------------------------------------------------------------------- */

int ca_json_valid_utf8(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t k = utf8_sequence(u + i, n - i);
        if (k == 0) return 0;
        i += k;
    }
    return 1;
}

const char *ca_json_type_name(ca_json_type type) {
    switch (type) {
    case CA_JSON_NULL: return "null";
    case CA_JSON_BOOL: return "boolean";
    case CA_JSON_NUMBER: return "number";
    case CA_JSON_STRING: return "string";
    case CA_JSON_ARRAY: return "array";
    case CA_JSON_OBJECT: return "object";
    }
    return "?";
}

const ca_json *ca_json_get(const ca_json *obj, const char *key) {
    if (!obj || obj->type != CA_JSON_OBJECT || !key) return NULL;
    size_t k = strlen(key);
    for (size_t i = 0; i < obj->len; i++)
        if (obj->items[i].key_len == k && memcmp(obj->items[i].key, key, k) == 0) return &obj->items[i].value;
    return NULL;
}

const ca_json *ca_json_at(const ca_json *arr, size_t i) {
    if (!arr || arr->type != CA_JSON_ARRAY || i >= arr->len) return NULL;
    return &arr->items[i].value;
}

ca_status ca_json_as_int(const ca_json *v, const char *what, int64_t lo, int64_t hi, int64_t *out) {
    if (!v || v->type != CA_JSON_NUMBER)
        return ca_error(CA_ERR_VALUE, "%s: expected an integer, got %s", what,
                        v ? ca_json_type_name(v->type) : "nothing");
    int64_t x;
    if (v->is_int) {
        x = v->integer;
    } else {
        /* 4.0 or 1e3: accept integral values; the range test keeps the cast defined. */
        if (v->number != floor(v->number) || v->number < -9.2e18 || v->number > 9.2e18)
            return ca_error(CA_ERR_VALUE, "%s: expected an integer, got %g", what, v->number);
        x = (int64_t)v->number;
    }
    if (x < lo || x > hi)
        return ca_error(CA_ERR_VALUE, "%s: %lld is out of range [%lld, %lld]", what, (long long)x, (long long)lo,
                        (long long)hi);
    *out = x;
    return CA_OK;
}

ca_status ca_json_as_double(const ca_json *v, const char *what, double *out) {
    if (!v || v->type != CA_JSON_NUMBER)
        return ca_error(CA_ERR_VALUE, "%s: expected a number, got %s", what,
                        v ? ca_json_type_name(v->type) : "nothing");
    *out = v->number;
    return CA_OK;
}

ca_status ca_json_as_bool(const ca_json *v, const char *what, int *out) {
    if (!v || v->type != CA_JSON_BOOL)
        return ca_error(CA_ERR_VALUE, "%s: expected true or false, got %s", what,
                        v ? ca_json_type_name(v->type) : "nothing");
    *out = v->boolean;
    return CA_OK;
}

ca_status ca_json_as_string(const ca_json *v, const char *what, const char **out) {
    if (!v || v->type != CA_JSON_STRING)
        return ca_error(CA_ERR_VALUE, "%s: expected a string, got %s", what,
                        v ? ca_json_type_name(v->type) : "nothing");
    *out = v->str;
    return CA_OK;
}
