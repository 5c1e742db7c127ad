/* safetensors reader (mmap, fully validated header) and atomic writer.
 * Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets:[b,e]},
 * "__metadata__": {str: str}}, then the byte buffer; offsets are relative to the buffer start. */
#ifndef CA_SAFETENSORS_H
#define CA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "captionaura/ca_status.h"

#define CA_ST_MAX_DIMS 8

typedef enum {
    CA_DT_F32, CA_DT_F16, CA_DT_BF16, CA_DT_F64,
    CA_DT_I64, CA_DT_I32, CA_DT_I16, CA_DT_I8, CA_DT_U8, CA_DT_BOOL,
} ca_dtype;

typedef struct {
    char *name;
    ca_dtype dtype;
    int ndim;
    int64_t shape[CA_ST_MAX_DIMS];
    uint64_t begin, end; /* byte offsets into the data buffer */
} ca_st_tensor;

typedef struct {
    void *map;            /* mmap base (NULL when parsed from memory) */
    size_t map_size;
    const uint8_t *data;  /* start of the data buffer */
    size_t data_size;
    ca_st_tensor *tensors;
    int num_tensors;
    char *path;           /* for error messages */
    /* Added by the io area (appended, existing fields unchanged): the "__metadata__" string pairs,
     * metadata[2*i] = key, metadata[2*i+1] = value, in file order. */
    char **metadata;
    int num_metadata;
} ca_safetensors;

size_t ca_dtype_size(ca_dtype dt);
const char *ca_dtype_name(ca_dtype dt);
/* "F32", "BF16", ... -> dtype; CA_ERR_VALUE for a name this core does not know. */
ca_status ca_dtype_from_name(const char *name, ca_dtype *out);
/* Product of the tensor's dims (validated not to overflow when the file was parsed). */
size_t ca_st_tensor_numel(const ca_st_tensor *t);
/* The tensor's raw bytes inside the mapped buffer (end − begin bytes, possibly unaligned). */
const void *ca_safetensors_tensor_data(const ca_safetensors *st, const ca_st_tensor *t);
/* Value of a "__metadata__" key, NULL when absent. */
const char *ca_safetensors_metadata(const ca_safetensors *st, const char *key);

/* Opens and validates: header length within the file, JSON well-formed, known dtypes, shape × dtype size ==
 * end − begin, offsets in range, no overlaps, no duplicate names. Errors name the tensor and the file. */
ca_status ca_safetensors_open(ca_safetensors *st, const char *path);
/* Same validation over a memory buffer (the fuzz entry point); `buf` must outlive `st`. */
ca_status ca_safetensors_parse(ca_safetensors *st, const uint8_t *buf, size_t size);
void ca_safetensors_close(ca_safetensors *st);

const ca_st_tensor *ca_safetensors_find(const ca_safetensors *st, const char *name);
/* Converts a float tensor (F32, F16, BF16, F64) into float32 `out` of `numel` elements. */
ca_status ca_safetensors_read_f32(const ca_safetensors *st, const ca_st_tensor *t, float *out, size_t numel);
/* Elements [first, first + count) of the tensor (row-major), converted into out (count floats). */
ca_status ca_safetensors_read_f32_range(const ca_safetensors *st, const ca_st_tensor *t, float *out, size_t first,
                                        size_t count);

typedef struct {
    const char *name;
    ca_dtype dtype;       /* dtype of `data` as stored */
    int ndim;
    const int64_t *shape;
    const void *data;
} ca_st_item;

/* Writes the items (in the order given) with optional string metadata pairs, to `path`.tmp, fsync, then
 * rename over `path`: a crash never leaves a half-written file under the final name. */
ca_status ca_safetensors_write(const char *path, const ca_st_item *items, int num_items,
                               const char *const *metadata_kv, int num_metadata_pairs);

/* ---- sharded checkpoints (io area addition) ----
 * model.safetensors.index.json: {"metadata": {...}, "weight_map": {tensor name: shard file name}}.
 * Shard names must be plain relative names inside the checkpoint folder (no '/', no "..", non-empty). */
typedef struct {
    char **names;        /* tensor names, in file order */
    int *file_of;        /* index into files for each name */
    int num_names;
    char **files;        /* distinct shard file names, in order of first appearance */
    int num_files;
} ca_st_index;

/* Parses an index JSON text of `len` bytes; `what` names it in messages (e.g. the path). */
ca_status ca_safetensors_index_parse(ca_st_index *idx, const char *json, size_t len, const char *what);
/* Reads and parses the index file at `path`. */
ca_status ca_safetensors_index_read(ca_st_index *idx, const char *path);
/* Shard file of a tensor (NULL when the index does not list it). */
const char *ca_safetensors_index_file(const ca_st_index *idx, const char *name);
void ca_safetensors_index_free(ca_st_index *idx);

#endif
