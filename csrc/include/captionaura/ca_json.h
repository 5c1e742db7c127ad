/* A small strict JSON parser (RFC 8259) for safetensors headers and config.json files.
 *
 * Strict means: exactly one value surrounded by optional whitespace; UTF-8 input validated; no comments, no
 * trailing commas, no NaN/Infinity, no leading zeros or '+' in numbers; control characters must be escaped;
 * \uXXXX escapes (surrogate pairs combined) decode to UTF-8 and lone surrogates are rejected; numbers whose
 * magnitude overflows a double are rejected; duplicate keys in one object are rejected (safetensors names
 * and config keys must be unique, and silently keeping one of two values hides broken files).
 *
 * Nesting depth is limited (CA_JSON_MAX_DEPTH) so deep inputs fail cleanly instead of exhausting the stack.
 * All values of one document live in an arena owned by ca_json_doc and are freed together. */
#ifndef CA_JSON_H
#define CA_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "captionaura/ca_status.h"

#define CA_JSON_MAX_DEPTH 64
/* Largest text accepted (the parsed form takes a small multiple of the text in memory). */
#define CA_JSON_MAX_BYTES ((size_t)256 * 1024 * 1024)

typedef enum {
    CA_JSON_NULL, CA_JSON_BOOL, CA_JSON_NUMBER, CA_JSON_STRING, CA_JSON_ARRAY, CA_JSON_OBJECT,
} ca_json_type;

typedef struct ca_json ca_json;
typedef struct ca_json_member ca_json_member;

struct ca_json {
    ca_json_type type;
    int boolean;          /* CA_JSON_BOOL */
    int is_int;           /* CA_JSON_NUMBER written without fraction/exponent and fitting in int64 */
    int64_t integer;      /* valid when is_int */
    double number;        /* CA_JSON_NUMBER (always set, rounded for big integers) */
    const char *str;      /* CA_JSON_STRING: UTF-8, NUL-terminated (may also contain NUL from \u0000) */
    size_t len;           /* string length in bytes, or member/item count of an array or object */
    ca_json_member *items; /* CA_JSON_ARRAY (key NULL) and CA_JSON_OBJECT, in document order */
};

struct ca_json_member {
    const char *key;      /* NUL-terminated; NULL for array items */
    size_t key_len;
    ca_json value;
};

typedef struct ca_json_block ca_json_block;

typedef struct {
    ca_json root;
    ca_json_block *blocks; /* arena */
} ca_json_doc;

/* Parses `len` bytes of `text` (need not be NUL-terminated). On failure returns CA_ERR_FORMAT (or
 * CA_ERR_NOMEM) with a message giving the byte offset, and `doc` holds nothing to free (freeing is harmless). */
ca_status ca_json_parse(ca_json_doc *doc, const char *text, size_t len);
void ca_json_free(ca_json_doc *doc);

const char *ca_json_type_name(ca_json_type type);
/* 1 when s[0..n) is valid UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF). */
int ca_json_valid_utf8(const char *s, size_t n);

/* Object member by key (NULL when `obj` is not an object or the key is absent). */
const ca_json *ca_json_get(const ca_json *obj, const char *key);
/* Array item `i` (NULL when `arr` is not an array or `i` is out of range). */
const ca_json *ca_json_at(const ca_json *arr, size_t i);

/* Typed reads of a present value. `what` names the value (a key) in the error message: a wrong type is
 * CA_ERR_VALUE "what: expected an integer, got string". An integer may be written as an integral number
 * (4.0, 1e3) as Python's json would accept for int fields after int(); the value must lie in [lo, hi]. */
ca_status ca_json_as_int(const ca_json *v, const char *what, int64_t lo, int64_t hi, int64_t *out);
ca_status ca_json_as_double(const ca_json *v, const char *what, double *out);
ca_status ca_json_as_bool(const ca_json *v, const char *what, int *out);
ca_status ca_json_as_string(const ca_json *v, const char *what, const char **out);

#endif
