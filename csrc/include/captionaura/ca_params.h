/* Parameter tables and seeded initialisation shared by every model of the core (LFM2, the vision tower):
 * a table lists each tensor's Hugging Face name, shape and offset in ONE flat buffer; views into that
 * buffer are bound once it is allocated. */
#ifndef CA_PARAMS_H
#define CA_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "captionaura/ca_backend.h"
#include "captionaura/ca_safetensors.h"
#include "captionaura/ca_status.h"

#define CA_PARAM_NAME_MAX 96

/* One tensor of a flat parameter buffer. */
typedef struct {
    char name[CA_PARAM_NAME_MAX];
    int ndim;
    int64_t shape[3];
    size_t offset; /* in floats, into params / grads */
    size_t numel;
} ca_param_info;

/* Collects tensors and the view pointers that must point at them. */
typedef struct {
    ca_param_info *info;
    float ***views;
    int count, capacity;
    size_t offset; /* floats so far; every tensor starts 64-byte aligned */
} ca_param_table;

/* Adds a tensor of `ndim` dims (d0, d1, d2; unused dims ignored) named by the printf format. */
ca_status ca_param_table_add(ca_param_table *tb, float **view, int ndim, int64_t d0, int64_t d1, int64_t d2,
                             const char *fmt, ...) __attribute__((format(printf, 7, 8)));
/* Allocates the flat buffer (zeros) with `be`, points every view into it, and hands over the table:
 * *params, *info (count entries) and *floats; the builder is emptied either way. */
ca_status ca_param_table_bind(ca_param_table *tb, const ca_backend *be, float **params, ca_param_info **info,
                              int *count, size_t *floats);
void ca_param_table_discard(ca_param_table *tb);
int ca_param_find(const ca_param_info *info, int count, const char *name);

/* What a model moves between backends along with its parameters; a NULL buffer stays NULL. */
typedef struct {
    float *grads;       /* (P) */
    float *lora_params; /* (L) flat LoRA buffer */
    float *lora_grads;  /* (L) */
} ca_train_buffers;

/* Moves a model's parameters (P floats at *params) and `bufs` (LoRA buffers of L floats) from backend `from` to
 * `to`: `tb` is the model's table built again (the same layout), bound to a fresh buffer so every view is
 * re-pointed; copies are plain memcpy, so both backends' memory must be host-addressable. The builder is
 * emptied either way; on failure (CA_ERR_NOMEM naming `what`) nothing else changes. */
ca_status ca_params_move(ca_param_table *tb, const ca_backend *from, const ca_backend *to, float **params, size_t P,
                         ca_train_buffers *bufs, size_t L, const char *what);

/* ---- weights without their fp32 copy (bf16 models with keep_fp32 = 0) ---- */
/* The memory of x[0, n) goes back to the system: every whole page inside (reading them again gives zeros). */
void ca_params_give_back(float *x, size_t n);
/* x_bf16 (n) = bf16(x); then x is rounded to those values in place, or given back (give_back). */
void ca_params_pack_bf16(uint16_t *x_bf16, float *x, size_t n, int give_back);
/* A matrix read from a checkpoint straight into its bf16 copy: in 4 MB chunks, each converted through x (its
 * fp32 slot) and given back at once, so that not even the one matrix is held in fp32. */
ca_status ca_params_load_bf16(uint16_t *x_bf16, float *x, size_t numel, const ca_safetensors *file,
                              const ca_st_tensor *t);

/* xoshiro256** seeded through splitmix64: reproducible across platforms. */
typedef struct {
    uint64_t s[4];
} ca_rng;

void ca_rng_seed(ca_rng *rng, uint64_t seed);
double ca_rng_uniform(ca_rng *rng); /* in (0, 1) */
/* x[i] ~ N(0, std²) by Box–Muller, two values per pair of uniforms. */
void ca_rng_fill_normal(ca_rng *rng, float *x, size_t n, double std);

#endif
