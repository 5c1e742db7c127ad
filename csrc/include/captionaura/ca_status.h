/* Status codes and the thread-local error message of the C core.
 * Every fallible core function returns ca_status; on failure it has called ca_error(), which records a
 * message the Python glue turns into an exception. The core never exits, aborts or prints. */
#ifndef CA_STATUS_H
#define CA_STATUS_H

typedef enum {
    CA_OK = 0,
    CA_ERR_VALUE,       /* a bad argument value: ValueError */
    CA_ERR_SHAPE,       /* mismatched sizes: ValueError */
    CA_ERR_INDEX,       /* an index out of range (token id, offset): IndexError */
    CA_ERR_KEY,         /* a missing or unexpected name (tensor, config key): KeyError */
    CA_ERR_FORMAT,      /* a malformed file (safetensors, JSON): ValueError */
    CA_ERR_IO,          /* open/read/write/rename failed: OSError */
    CA_ERR_NOMEM,       /* allocation failed: MemoryError */
    CA_ERR_UNSUPPORTED, /* a valid but unsupported feature: NotImplementedError */
    CA_ERR_NUMERIC,     /* NaN/Inf where finite values are required: FloatingPointError */
    CA_ERR_DEVICE,      /* CUDA/cuBLAS failure: RuntimeError */
} ca_status;

/* Records a printf-style message for this thread and returns `code`, so callers write
 * `return ca_error(CA_ERR_SHAPE, "...", ...);`. */
ca_status ca_error(ca_status code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The last message recorded on this thread ("" if none). */
const char *ca_last_error(void);
void ca_clear_error(void);

#define CA_TRY(expr)                                                                               \
    do {                                                                                           \
        ca_status ca_try_status_ = (expr);                                                         \
        if (ca_try_status_ != CA_OK) return ca_try_status_;                                        \
    } while (0)

#endif
