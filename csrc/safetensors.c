/* safetensors reader and writer.
 *
 * File layout (https://github.com/huggingface/safetensors, "Format"):
 *   u64 little-endian N | N bytes of UTF-8 JSON header | byte buffer
 * The header is an object {name: {"dtype": "F32", "shape": [d0, ...], "data_offsets": [begin, end]}, ...}
 * with an optional "__metadata__": {str: str}; offsets are relative to the start of the byte buffer and
 * tensors are stored row-major, little-endian. The reference writer pads the header with spaces so the
 * buffer starts 8-byte aligned; readers must accept any padding whitespace.
 *
 * Reading maps the file (read-only, private) and validates the whole header up front, so later accesses
 * (model loading, conversion) can trust every offset. Writing goes to `path`.tmp, is fsynced, then renamed. */
#define _GNU_SOURCE /* O_DIRECTORY, fsync, strdup on older glibc */
#include "captionaura/ca_safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "captionaura/ca_json.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this reader assumes a little-endian host"
#endif

/* The reference implementation refuses headers above 100 MB; so do we (it also bounds JSON memory). */
#define CA_ST_MAX_HEADER ((uint64_t)100000000)

/* ---- dtypes --------------------------------------------------------------------------------------- */

static const struct {
    ca_dtype dt;
    const char *name;
    size_t size;
} dtype_table[] = {
    {CA_DT_F32, "F32", 4}, {CA_DT_F16, "F16", 2}, {CA_DT_BF16, "BF16", 2}, {CA_DT_F64, "F64", 8},
    {CA_DT_I64, "I64", 8}, {CA_DT_I32, "I32", 4}, {CA_DT_I16, "I16", 2},   {CA_DT_I8, "I8", 1},
    {CA_DT_U8, "U8", 1},   {CA_DT_BOOL, "BOOL", 1},
};
#define NUM_DTYPES (sizeof dtype_table / sizeof dtype_table[0])

/* Dtypes the safetensors format defines but this core does not load. */
static const char *const other_format_dtypes[] = {"U16", "U32", "U64", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F4",
                                                  "F6_E2M3", "F6_E3M2", "C64"};

size_t ca_dtype_size(ca_dtype dt) {
    for (size_t i = 0; i < NUM_DTYPES; i++)
        if (dtype_table[i].dt == dt) return dtype_table[i].size;
    return 0;
}

const char *ca_dtype_name(ca_dtype dt) {
    for (size_t i = 0; i < NUM_DTYPES; i++)
        if (dtype_table[i].dt == dt) return dtype_table[i].name;
    return "?";
}

ca_status ca_dtype_from_name(const char *name, ca_dtype *out) {
    for (size_t i = 0; i < NUM_DTYPES; i++) {
        if (strcmp(dtype_table[i].name, name) == 0) {
            *out = dtype_table[i].dt;
            return CA_OK;
        }
    }
    return ca_error(CA_ERR_VALUE, "unknown dtype '%.40s'", name);
}

size_t ca_st_tensor_numel(const ca_st_tensor *t) {
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    return n;
}

/* ---- errors --------------------------------------------------------------------------------------- */

static const char *display_path(const ca_safetensors *st) { return st->path ? st->path : "<memory>"; }

/* Records "<path>: <message>". The message is formatted into a local buffer first because ca_error's
 * own buffer may be one of the arguments (a nested error being prefixed). */
__attribute__((format(printf, 3, 4))) static ca_status st_error(const ca_safetensors *st, ca_status code,
                                                                const char *fmt, ...) {
    char msg[768];
    va_list args;
    va_start(args, fmt);
    vsnprintf(msg, sizeof msg, fmt, args);
    va_end(args);
    return ca_error(code, "%s: %s", display_path(st), msg);
}

/* ---- parsing -------------------------------------------------------------------------------------- */

static uint64_t read_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static ca_status parse_metadata(ca_safetensors *st, const ca_json *meta) {
    if (meta->type == CA_JSON_NULL) return CA_OK;
    if (meta->type != CA_JSON_OBJECT)
        return st_error(st, CA_ERR_FORMAT, "__metadata__ must be an object of strings, got %s",
                        ca_json_type_name(meta->type));
    if (meta->len > (size_t)(INT32_MAX / 2)) return st_error(st, CA_ERR_FORMAT, "__metadata__ too large");
    if (meta->len == 0) return CA_OK;
    st->metadata = calloc(2 * meta->len, sizeof *st->metadata);
    if (!st->metadata) return ca_error(CA_ERR_NOMEM, "out of memory reading safetensors metadata");
    for (size_t i = 0; i < meta->len; i++) {
        const ca_json_member *m = &meta->items[i];
        if (m->value.type != CA_JSON_STRING)
            return st_error(st, CA_ERR_FORMAT, "__metadata__ value of '%.200s' must be a string, got %s", m->key,
                            ca_json_type_name(m->value.type));
        st->metadata[2 * i] = strdup(m->key);
        st->metadata[2 * i + 1] = strdup(m->value.str);
        st->num_metadata = (int)i + 1;
        if (!st->metadata[2 * i] || !st->metadata[2 * i + 1])
            return ca_error(CA_ERR_NOMEM, "out of memory reading safetensors metadata");
    }
    return CA_OK;
}

/* Validates one header entry into `t` (its name is already set). */
static ca_status parse_tensor_info(ca_safetensors *st, const ca_json *info, ca_st_tensor *t) {
    const char *name = t->name;
    if (info->type != CA_JSON_OBJECT)
        return st_error(st, CA_ERR_FORMAT, "tensor '%.200s': header entry must be an object, got %s", name,
                        ca_json_type_name(info->type));

    const ca_json *dtype = ca_json_get(info, "dtype");
    if (!dtype || dtype->type != CA_JSON_STRING)
        return st_error(st, CA_ERR_FORMAT, "tensor '%.200s': missing or non-string \"dtype\"", name);
    int found = 0;
    for (size_t i = 0; i < NUM_DTYPES; i++) {
        if (strcmp(dtype_table[i].name, dtype->str) == 0) {
            t->dtype = dtype_table[i].dt;
            found = 1;
        }
    }
    if (!found) {
        for (size_t i = 0; i < sizeof other_format_dtypes / sizeof other_format_dtypes[0]; i++)
            if (strcmp(other_format_dtypes[i], dtype->str) == 0)
                return st_error(st, CA_ERR_UNSUPPORTED, "tensor '%.200s': dtype %s is not supported", name,
                                dtype->str);
        return st_error(st, CA_ERR_FORMAT, "tensor '%.200s': unknown dtype '%.40s'", name, dtype->str);
    }

    const ca_json *shape = ca_json_get(info, "shape");
    if (!shape || shape->type != CA_JSON_ARRAY)
        return st_error(st, CA_ERR_FORMAT, "tensor '%.200s': missing or non-array \"shape\"", name);
    if (shape->len > CA_ST_MAX_DIMS)
        return st_error(st, CA_ERR_FORMAT, "tensor '%.200s': %zu dimensions, at most %d supported", name,
                        shape->len, CA_ST_MAX_DIMS);
    t->ndim = (int)shape->len;
    uint64_t numel = 1;
    int overflow = 0;
    for (int d = 0; d < t->ndim; d++) {
        const ca_json *dim = ca_json_at(shape, (size_t)d);
        if (dim->type != CA_JSON_NUMBER || !dim->is_int)
            return st_error(st, CA_ERR_FORMAT, "tensor '%.200s': shape[%d] is not an integer", name, d);
        if (dim->integer < 0)
            return st_error(st, CA_ERR_FORMAT, "tensor '%.200s': negative dimension %lld in shape[%d]", name,
                            (long long)dim->integer, d);
        t->shape[d] = dim->integer;
        uint64_t dd = (uint64_t)dim->integer;
        if (dd != 0 && numel > UINT64_MAX / dd) overflow = 1;
        else numel *= dd;
    }
    /* A zero dimension makes the product 0 whatever overflowed before it. */
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] == 0) overflow = 0, numel = 0;

    const ca_json *offs = ca_json_get(info, "data_offsets");
    if (!offs || offs->type != CA_JSON_ARRAY || offs->len != 2)
        return st_error(st, CA_ERR_FORMAT, "tensor '%.200s': \"data_offsets\" must be an array [begin, end]", name);
    const ca_json *b = ca_json_at(offs, 0), *e = ca_json_at(offs, 1);
    if (b->type != CA_JSON_NUMBER || !b->is_int || e->type != CA_JSON_NUMBER || !e->is_int || b->integer < 0 ||
        e->integer < 0)
        return st_error(st, CA_ERR_FORMAT, "tensor '%.200s': data_offsets must be non-negative integers", name);
    t->begin = (uint64_t)b->integer;
    t->end = (uint64_t)e->integer;
    if (t->end < t->begin)
        return st_error(st, CA_ERR_FORMAT, "tensor '%.200s': data_offsets [%llu, %llu] end before begin", name,
                        (unsigned long long)t->begin, (unsigned long long)t->end);

    size_t esize = ca_dtype_size(t->dtype);
    if (overflow || numel > UINT64_MAX / esize || numel > SIZE_MAX / esize)
        return st_error(st, CA_ERR_FORMAT, "tensor '%.200s': shape is too large", name);
    uint64_t nbytes = numel * esize;
    if (nbytes != t->end - t->begin)
        return st_error(st, CA_ERR_FORMAT,
                        "tensor '%.200s': shape and dtype %s need %llu bytes but data_offsets [%llu, %llu] hold %llu",
                        name, ca_dtype_name(t->dtype), (unsigned long long)nbytes, (unsigned long long)t->begin,
                        (unsigned long long)t->end, (unsigned long long)(t->end - t->begin));
    if (t->end > st->data_size)
        return st_error(st, CA_ERR_FORMAT,
                        "tensor '%.200s': data_offsets [%llu, %llu] out of range: the data buffer has %zu bytes "
                        "(truncated file?)",
                        name, (unsigned long long)t->begin, (unsigned long long)t->end, st->data_size);
    return CA_OK;
}

static int cmp_by_begin(const void *a, const void *b) {
    const ca_st_tensor *x = *(const ca_st_tensor *const *)a, *y = *(const ca_st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* Two tensors may not share bytes (half-open intervals; empty tensors overlap nothing). */
static ca_status check_overlaps(ca_safetensors *st) {
    int n = st->num_tensors;
    if (n < 2) return CA_OK;
    const ca_st_tensor **order = malloc((size_t)n * sizeof *order);
    if (!order) return ca_error(CA_ERR_NOMEM, "out of memory validating safetensors offsets");
    for (int i = 0; i < n; i++) order[i] = &st->tensors[i];
    qsort(order, (size_t)n, sizeof *order, cmp_by_begin);
    const ca_st_tensor *reach = NULL; /* the non-empty tensor seen so far that ends last */
    ca_status status = CA_OK;
    for (int i = 0; i < n; i++) {
        const ca_st_tensor *t = order[i];
        if (t->begin == t->end) continue;
        if (reach && t->begin < reach->end) {
            status = st_error(st, CA_ERR_FORMAT, "tensors '%.200s' [%llu, %llu) and '%.200s' [%llu, %llu) overlap",
                              reach->name, (unsigned long long)reach->begin, (unsigned long long)reach->end,
                              t->name, (unsigned long long)t->begin, (unsigned long long)t->end);
            break;
        }
        if (!reach || t->end > reach->end) reach = t;
    }
    free(order);
    return status;
}

static ca_status parse_header(ca_safetensors *st, const uint8_t *buf, size_t size) {
    if (size < 8)
        return st_error(st, CA_ERR_FORMAT, "file is %zu bytes, too small for the 8-byte header length (truncated?)",
                        size);
    uint64_t n = read_le64(buf);
    if (n > size - 8)
        return st_error(st, CA_ERR_FORMAT,
                        "header length %llu exceeds the file size %zu (truncated or not a safetensors file)",
                        (unsigned long long)n, size);
    if (n > CA_ST_MAX_HEADER)
        return st_error(st, CA_ERR_FORMAT, "header length %llu exceeds the 100 MB limit", (unsigned long long)n);
    if (n == 0 || buf[8] != '{')
        return st_error(st, CA_ERR_FORMAT, "header does not start with '{' (not a safetensors file?)");
    st->data = buf + 8 + n;
    st->data_size = size - 8 - (size_t)n;

    ca_json_doc doc;
    ca_status status = ca_json_parse(&doc, (const char *)buf + 8, (size_t)n);
    if (status != CA_OK) {
        char inner[512];
        snprintf(inner, sizeof inner, "%s", ca_last_error());
        return st_error(st, status, "invalid header: %s", inner);
    }
    const ca_json *root = &doc.root; /* an object: the text starts with '{' and parsed */
    size_t count = 0;
    for (size_t i = 0; i < root->len; i++)
        if (!(root->items[i].key_len == 12 && memcmp(root->items[i].key, "__metadata__", 12) == 0)) count++;
    if (count > (size_t)INT32_MAX) {
        status = st_error(st, CA_ERR_FORMAT, "too many tensors");
        goto done;
    }
    if (count) {
        st->tensors = calloc(count, sizeof *st->tensors);
        if (!st->tensors) {
            status = ca_error(CA_ERR_NOMEM, "out of memory reading a safetensors header");
            goto done;
        }
    }
    for (size_t i = 0; i < root->len && status == CA_OK; i++) {
        const ca_json_member *m = &root->items[i];
        if (m->key_len == 12 && memcmp(m->key, "__metadata__", 12) == 0) {
            status = parse_metadata(st, &m->value);
            continue;
        }
        if (strlen(m->key) != m->key_len) {
            status = st_error(st, CA_ERR_FORMAT, "tensor name '%.200s...' contains a NUL character", m->key);
            break;
        }
        ca_st_tensor *t = &st->tensors[st->num_tensors];
        t->name = strdup(m->key);
        if (!t->name) {
            status = ca_error(CA_ERR_NOMEM, "out of memory reading a safetensors header");
            break;
        }
        st->num_tensors++;
        status = parse_tensor_info(st, &m->value, t);
    }
    if (status == CA_OK) status = check_overlaps(st);
done:
    ca_json_free(&doc);
    return status;
}

ca_status ca_safetensors_parse(ca_safetensors *st, const uint8_t *buf, size_t size) {
    memset(st, 0, sizeof *st);
    if (!buf && size) return ca_error(CA_ERR_VALUE, "ca_safetensors_parse: NULL buffer");
    ca_status status = parse_header(st, buf, size);
    if (status != CA_OK) ca_safetensors_close(st);
    return status;
}

ca_status ca_safetensors_open(ca_safetensors *st, const char *path) {
    memset(st, 0, sizeof *st);
    st->path = strdup(path);
    if (!st->path) return ca_error(CA_ERR_NOMEM, "out of memory");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        ca_status s = st_error(st, CA_ERR_IO, "cannot open: %s", strerror(errno));
        ca_safetensors_close(st);
        return s;
    }
    struct stat sb;
    ca_status status = CA_OK;
    if (fstat(fd, &sb) != 0) {
        status = st_error(st, CA_ERR_IO, "cannot stat: %s", strerror(errno));
    } else if (!S_ISREG(sb.st_mode)) {
        status = st_error(st, CA_ERR_IO, "not a regular file");
    } else if ((uint64_t)sb.st_size < 8) {
        status = st_error(st, CA_ERR_FORMAT,
                          "file is %lld bytes, too small for the 8-byte header length (truncated?)",
                          (long long)sb.st_size);
    } else if ((uint64_t)sb.st_size > SIZE_MAX) {
        status = st_error(st, CA_ERR_IO, "file too large to map");
    } else {
        void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            status = st_error(st, CA_ERR_IO, "mmap failed: %s", strerror(errno));
        } else {
            st->map = map;
            st->map_size = (size_t)sb.st_size;
        }
    }
    close(fd);
    if (status == CA_OK) {
        status = parse_header(st, st->map, st->map_size);
        /* Weights are read front to back once; tell the kernel so it reads ahead. */
        if (status == CA_OK) madvise(st->map, st->map_size, MADV_SEQUENTIAL);
    }
    if (status != CA_OK) ca_safetensors_close(st);
    return status;
}

void ca_safetensors_close(ca_safetensors *st) {
    if (!st) return;
    for (int i = 0; i < st->num_tensors; i++) free(st->tensors[i].name);
    free(st->tensors);
    for (int i = 0; i < 2 * st->num_metadata; i++) free(st->metadata[i]);
    free(st->metadata);
    if (st->map) munmap(st->map, st->map_size);
    free(st->path);
    memset(st, 0, sizeof *st);
}

const ca_st_tensor *ca_safetensors_find(const ca_safetensors *st, const char *name) {
    for (int i = 0; i < st->num_tensors; i++)
        if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
    return NULL;
}

const void *ca_safetensors_tensor_data(const ca_safetensors *st, const ca_st_tensor *t) {
    return st->data + t->begin;
}

const char *ca_safetensors_metadata(const ca_safetensors *st, const char *key) {
    for (int i = 0; i < st->num_metadata; i++)
        if (strcmp(st->metadata[2 * i], key) == 0) return st->metadata[2 * i + 1];
    return NULL;
}

/* ---- conversion to float32 ------------------------------------------------------------------------ */

/* IEEE 754 binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. Subnormals are mant * 2^-24 (exact
 * in float32); exponent 31 is inf (mant 0) or NaN (payload kept in the top mantissa bits). */
static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0) {
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    } else if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else {
        bits = sign | ((exp + (127 - 15)) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* bfloat16 is the upper half of a float32. */
static float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* double -> float with IEEE round-to-nearest overflow to ±inf spelled out (out-of-range conversions are
 * undefined in ISO C without Annex F). */
static float f64_to_f32(double d) {
    if (isnan(d)) return (float)d;
    if (d >= 0x1.ffffffp127) return INFINITY;
    if (d <= -0x1.ffffffp127) return -INFINITY;
    if (d > FLT_MAX) return FLT_MAX;
    if (d < -FLT_MAX) return -FLT_MAX;
    return (float)d;
}

ca_status ca_safetensors_read_f32(const ca_safetensors *st, const ca_st_tensor *t, float *out, size_t numel) {
    if (!t) return ca_error(CA_ERR_VALUE, "ca_safetensors_read_f32: NULL tensor");
    size_t n = ca_st_tensor_numel(t);
    if (n != numel)
        return st_error(st, CA_ERR_SHAPE, "tensor '%.200s' has %zu elements, the destination %zu", t->name, n,
                        numel);
    return ca_safetensors_read_f32_range(st, t, out, 0, n);
}

ca_status ca_safetensors_read_f32_range(const ca_safetensors *st, const ca_st_tensor *t, float *out, size_t first,
                                        size_t count) {
    if (!t) return ca_error(CA_ERR_VALUE, "ca_safetensors_read_f32_range: NULL tensor");
    size_t n = ca_st_tensor_numel(t);
    if (first > n || count > n - first)
        return st_error(st, CA_ERR_INDEX, "elements [%zu, %zu) of tensor '%.200s', which has %zu", first,
                        first + count, t->name, n);
    const size_t elem = ca_dtype_size(t->dtype);
    const uint8_t *src = st->data + t->begin + first * elem; /* may be unaligned: memcpy every load */
    n = count;
    switch (t->dtype) {
    case CA_DT_F32:
        if (n) memcpy(out, src, n * sizeof(float));
        break;
    case CA_DT_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            out[i] = f16_to_f32(h);
        }
        break;
    case CA_DT_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            out[i] = bf16_to_f32(h);
        }
        break;
    case CA_DT_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, src + 8 * i, 8);
            out[i] = f64_to_f32(d);
        }
        break;
    default:
        return st_error(st, CA_ERR_VALUE, "tensor '%.200s' has dtype %s, not a floating-point type", t->name,
                        ca_dtype_name(t->dtype));
    }
    /* A checkpoint is read once, front to back: the range's whole pages leave the process's resident memory
     * once converted (the page cache keeps them; a second read faults them back). Loading then never holds
     * the file's size on top of the model's. */
    if (st->map) {
        const uintptr_t page = 4096, a = ((uintptr_t)src + page - 1) & ~(page - 1),
                        b = ((uintptr_t)src + n * elem) & ~(page - 1);
        if (b > a) madvise((void *)a, b - a, MADV_DONTNEED); /* advice: where refused, nothing is lost */
    }
    return CA_OK;
}

/* ---- writer --------------------------------------------------------------------------------------- */

typedef struct {
    char *buf;
    size_t len, cap;
    int oom;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->cap - b->len < n + 1) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < n + 1) {
            if (cap > SIZE_MAX / 2) { b->oom = 1; return; }
            cap *= 2;
        }
        char *nb = realloc(b->buf, cap);
        if (!nb) { b->oom = 1; return; }
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    b->buf[b->len] = '\0';
}

static void sb_puts(strbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(strbuf *b, const char *fmt, ...) {
    char tmp[64];
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, args);
    va_end(args);
    if (n < 0 || (size_t)n >= sizeof tmp) { b->oom = 1; return; }
    sb_put(b, tmp, (size_t)n);
}

/* A JSON string literal: quote, backslash and control characters escaped, other bytes (UTF-8) as is. */
static void sb_json_string(strbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"') sb_put(b, "\\\"", 2);
        else if (c == '\\') sb_put(b, "\\\\", 2);
        else if (c < 0x20) sb_printf(b, "\\u%04x", c);
        else sb_put(b, s, 1);
    }
    sb_put(b, "\"", 1);
}

static int cmp_cstr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Duplicate names among `n` strings (NULL when none). */
static const char *find_duplicate(const char **names, size_t n, ca_status *status) {
    *status = CA_OK;
    if (n < 2) return NULL;
    const char **sorted = malloc(n * sizeof *sorted);
    if (!sorted) {
        *status = ca_error(CA_ERR_NOMEM, "out of memory");
        return NULL;
    }
    memcpy(sorted, names, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, cmp_cstr);
    const char *dup = NULL;
    for (size_t i = 1; i < n && !dup; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0) dup = sorted[i];
    free(sorted);
    return dup;
}

static ca_status write_all(FILE *f, const void *data, size_t n, const char *tmp_path) {
    if (n && fwrite(data, 1, n, f) != n)
        return ca_error(CA_ERR_IO, "%s: write failed: %s", tmp_path, strerror(errno));
    return CA_OK;
}

/* Builds the header JSON (metadata first, like the reference writer) padded with spaces to a multiple of
 * 8 bytes so the data buffer starts 8-byte aligned; fills the item byte sizes. */
static ca_status build_header(strbuf *h, const ca_st_item *items, int num_items, const char *const *metadata_kv,
                              int num_pairs, uint64_t *nbytes) {
    sb_puts(h, "{");
    int first = 1;
    if (num_pairs > 0) {
        sb_puts(h, "\"__metadata__\":{");
        for (int i = 0; i < num_pairs; i++) {
            if (i) sb_puts(h, ",");
            sb_json_string(h, metadata_kv[2 * i]);
            sb_puts(h, ":");
            sb_json_string(h, metadata_kv[2 * i + 1]);
        }
        sb_puts(h, "}");
        first = 0;
    }
    uint64_t offset = 0;
    for (int i = 0; i < num_items; i++) {
        const ca_st_item *it = &items[i];
        if (!first) sb_puts(h, ",");
        first = 0;
        sb_json_string(h, it->name);
        sb_printf(h, ":{\"dtype\":\"%s\",\"shape\":[", ca_dtype_name(it->dtype));
        for (int d = 0; d < it->ndim; d++) sb_printf(h, d ? ",%lld" : "%lld", (long long)it->shape[d]);
        sb_printf(h, "],\"data_offsets\":[%llu,", (unsigned long long)offset);
        offset += nbytes[i];
        sb_printf(h, "%llu]}", (unsigned long long)offset);
    }
    sb_puts(h, "}");
    while (h->len % 8 != 0) sb_puts(h, " ");
    if (h->oom) return ca_error(CA_ERR_NOMEM, "out of memory building a safetensors header");
    return CA_OK;
}

static ca_status validate_items(const char *path, const ca_st_item *items, int num_items,
                                const char *const *metadata_kv, int num_pairs, uint64_t *nbytes) {
    if (num_items < 0 || num_pairs < 0) return ca_error(CA_ERR_VALUE, "%s: negative item count", path);
    if (num_items > 0 && !items) return ca_error(CA_ERR_VALUE, "%s: NULL items", path);
    if (num_pairs > 0 && !metadata_kv) return ca_error(CA_ERR_VALUE, "%s: NULL metadata", path);
    uint64_t total = 0;
    for (int i = 0; i < num_items; i++) {
        const ca_st_item *it = &items[i];
        if (!it->name || !it->name[0]) return ca_error(CA_ERR_VALUE, "%s: tensor %d has an empty name", path, i);
        if (strcmp(it->name, "__metadata__") == 0)
            return ca_error(CA_ERR_VALUE, "%s: '__metadata__' is reserved and cannot name a tensor", path);
        if (!ca_json_valid_utf8(it->name, strlen(it->name)))
            return ca_error(CA_ERR_VALUE, "%s: tensor name '%.200s' is not valid UTF-8", path, it->name);
        size_t esize = ca_dtype_size(it->dtype);
        if (esize == 0) return ca_error(CA_ERR_VALUE, "%s: tensor '%.200s' has an invalid dtype", path, it->name);
        if (it->ndim < 0 || it->ndim > CA_ST_MAX_DIMS || (it->ndim > 0 && !it->shape))
            return ca_error(CA_ERR_VALUE, "%s: tensor '%.200s' has %d dimensions (0..%d allowed)", path, it->name,
                            it->ndim, CA_ST_MAX_DIMS);
        uint64_t n = esize;
        for (int d = 0; d < it->ndim; d++) {
            if (it->shape[d] < 0)
                return ca_error(CA_ERR_VALUE, "%s: tensor '%.200s' has a negative dimension", path, it->name);
            uint64_t dd = (uint64_t)it->shape[d];
            if (dd && n > UINT64_MAX / dd)
                return ca_error(CA_ERR_VALUE, "%s: tensor '%.200s' is too large", path, it->name);
            n *= dd;
        }
        if (n > SIZE_MAX || total > UINT64_MAX - n)
            return ca_error(CA_ERR_VALUE, "%s: tensor '%.200s' is too large", path, it->name);
        if (n && !it->data) return ca_error(CA_ERR_VALUE, "%s: tensor '%.200s' has no data", path, it->name);
        nbytes[i] = n;
        total += n;
    }
    for (int i = 0; i < 2 * num_pairs; i++) {
        if (!metadata_kv[i]) return ca_error(CA_ERR_VALUE, "%s: NULL metadata string", path);
        if (!ca_json_valid_utf8(metadata_kv[i], strlen(metadata_kv[i])))
            return ca_error(CA_ERR_VALUE, "%s: metadata string '%.200s' is not valid UTF-8", path, metadata_kv[i]);
    }

    ca_status status;
    const char **names = malloc(((size_t)num_items + (size_t)num_pairs + 1) * sizeof *names);
    if (!names) return ca_error(CA_ERR_NOMEM, "out of memory");
    for (int i = 0; i < num_items; i++) names[i] = items[i].name;
    const char *dup = find_duplicate(names, (size_t)num_items, &status);
    if (status == CA_OK && dup) status = ca_error(CA_ERR_VALUE, "%s: duplicate tensor name '%.200s'", path, dup);
    if (status == CA_OK) {
        for (int i = 0; i < num_pairs; i++) names[i] = metadata_kv[2 * i];
        dup = find_duplicate(names, (size_t)num_pairs, &status);
        if (status == CA_OK && dup) status = ca_error(CA_ERR_VALUE, "%s: duplicate metadata key '%.200s'", path, dup);
    }
    free(names);
    return status;
}

/* Flushes the directory entry of `path` after the rename (best effort: some filesystems refuse). */
static void fsync_parent_dir(const char *path) {
    char *dir = strdup(path);
    if (!dir) return;
    char *slash = strrchr(dir, '/');
    const char *d = ".";
    if (slash == dir) d = "/";
    else if (slash) { *slash = '\0'; d = dir; }
    int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dir);
}

ca_status ca_safetensors_write(const char *path, const ca_st_item *items, int num_items,
                               const char *const *metadata_kv, int num_metadata_pairs) {
    if (!path || !path[0]) return ca_error(CA_ERR_VALUE, "ca_safetensors_write: empty path");
    uint64_t *nbytes = calloc((size_t)(num_items > 0 ? num_items : 1), sizeof *nbytes);
    if (!nbytes) return ca_error(CA_ERR_NOMEM, "out of memory");
    strbuf header = {0};
    char *tmp_path = NULL;
    FILE *f = NULL;
    ca_status status = validate_items(path, items, num_items, metadata_kv, num_metadata_pairs, nbytes);
    if (status == CA_OK) status = build_header(&header, items, num_items, metadata_kv, num_metadata_pairs, nbytes);
    if (status != CA_OK) goto done;

    size_t plen = strlen(path);
    tmp_path = malloc(plen + 5);
    if (!tmp_path) {
        status = ca_error(CA_ERR_NOMEM, "out of memory");
        goto done;
    }
    memcpy(tmp_path, path, plen);
    memcpy(tmp_path + plen, ".tmp", 5);

    f = fopen(tmp_path, "wb");
    if (!f) {
        status = ca_error(CA_ERR_IO, "%s: cannot create: %s", tmp_path, strerror(errno));
        goto done;
    }
    uint8_t len_bytes[8];
    for (int i = 0; i < 8; i++) len_bytes[i] = (uint8_t)((uint64_t)header.len >> (8 * i));
    status = write_all(f, len_bytes, 8, tmp_path);
    if (status == CA_OK) status = write_all(f, header.buf, header.len, tmp_path);
    for (int i = 0; i < num_items && status == CA_OK; i++) status = write_all(f, items[i].data, nbytes[i], tmp_path);
    if (status == CA_OK && fflush(f) != 0)
        status = ca_error(CA_ERR_IO, "%s: write failed: %s", tmp_path, strerror(errno));
    if (status == CA_OK && fsync(fileno(f)) != 0)
        status = ca_error(CA_ERR_IO, "%s: fsync failed: %s", tmp_path, strerror(errno));
    if (fclose(f) != 0 && status == CA_OK)
        status = ca_error(CA_ERR_IO, "%s: close failed: %s", tmp_path, strerror(errno));
    f = NULL;
    if (status == CA_OK && rename(tmp_path, path) != 0)
        status = ca_error(CA_ERR_IO, "%s: cannot rename %s into place: %s", path, tmp_path, strerror(errno));
    if (status == CA_OK) fsync_parent_dir(path);
    else unlink(tmp_path);

done:
    free(nbytes);
    free(header.buf);
    free(tmp_path);
    return status;
}
