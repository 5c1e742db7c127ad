#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "captionaura/ca_ops.h"
#include "captionaura/ca_params.h"

ca_status ca_param_table_add(ca_param_table *tb, float **view, int ndim, int64_t d0, int64_t d1, int64_t d2,
                             const char *fmt, ...) {
    if (tb->count == tb->capacity) {
        int cap = tb->capacity ? 2 * tb->capacity : 64;
        ca_param_info *info = realloc(tb->info, (size_t)cap * sizeof *info);
        if (!info) return ca_error(CA_ERR_NOMEM, "out of memory building a parameter table");
        tb->info = info;
        float ***views = realloc(tb->views, (size_t)cap * sizeof *views);
        if (!views) return ca_error(CA_ERR_NOMEM, "out of memory building a parameter table");
        tb->views = views;
        tb->capacity = cap;
    }
    ca_param_info *p = &tb->info[tb->count];
    memset(p, 0, sizeof *p);
    va_list args;
    va_start(args, fmt);
    vsnprintf(p->name, sizeof p->name, fmt, args);
    va_end(args);
    const int64_t dims[3] = {d0, d1, d2};
    p->ndim = ndim;
    p->numel = 1;
    for (int i = 0; i < ndim; i++) {
        p->shape[i] = dims[i];
        p->numel *= (size_t)dims[i];
    }
    p->offset = tb->offset;
    tb->offset += (p->numel + 15) & ~(size_t)15; /* 64-byte aligned tensors for vector loads */
    tb->views[tb->count++] = view;
    return CA_OK;
}

void ca_param_table_discard(ca_param_table *tb) {
    free(tb->info);
    free(tb->views);
    *tb = (ca_param_table){0};
}

ca_status ca_param_table_bind(ca_param_table *tb, const ca_backend *be, float **params, ca_param_info **info,
                              int *count, size_t *floats) {
    float *buffer = be->alloc(tb->offset * sizeof(float));
    if (!buffer) {
        size_t n = tb->offset;
        ca_param_table_discard(tb);
        return ca_error(CA_ERR_NOMEM, "out of memory allocating %zu parameters (%.1f MB)", n, n * 4.0 / 1e6);
    }
    for (int i = 0; i < tb->count; i++) *tb->views[i] = buffer + tb->info[i].offset;
    *params = buffer;
    *info = tb->info;
    *count = tb->count;
    *floats = tb->offset;
    free(tb->views);
    *tb = (ca_param_table){0};
    return CA_OK;
}

void ca_params_give_back(float *x, size_t n) {
#ifdef MADV_DONTNEED /* (not declared in strict ISO C builds, the C tests': there nothing is given back) */
    const uintptr_t page = 4096, a = ((uintptr_t)x + page - 1) & ~(page - 1), b = (uintptr_t)(x + n) & ~(page - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED); /* advice: where refused, nothing is lost */
#else
    (void)x, (void)n;
#endif
}

void ca_params_pack_bf16(uint16_t *x_bf16, float *x, size_t n, int give_back) {
    ca_cpu_bf16_from_f32(x_bf16, x, n);
    if (give_back)
        ca_params_give_back(x, n);
    else
        ca_cpu_f32_from_bf16(x, x_bf16, n);
}

ca_status ca_params_load_bf16(uint16_t *x_bf16, float *x, size_t numel, const ca_safetensors *file,
                              const ca_st_tensor *t) {
    const size_t chunk = (size_t)1 << 20;
    for (size_t first = 0; first < numel; first += chunk) {
        const size_t count = numel - first < chunk ? numel - first : chunk;
        CA_TRY(ca_safetensors_read_f32_range(file, t, x + first, first, count));
        ca_params_pack_bf16(x_bf16 + first, x + first, count, 1);
    }
    return CA_OK;
}

int ca_param_find(const ca_param_info *info, int count, const char *name) {
    for (int i = 0; i < count; i++)
        if (strcmp(info[i].name, name) == 0) return i;
    return -1;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void ca_rng_seed(ca_rng *rng, uint64_t seed) {
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&seed);
}

static uint64_t rng_next(ca_rng *r) {
    uint64_t result = rotl(r->s[1] * 5, 7) * 9, t = r->s[1] << 17;
    r->s[2] ^= r->s[0];
    r->s[3] ^= r->s[1];
    r->s[1] ^= r->s[2];
    r->s[0] ^= r->s[3];
    r->s[2] ^= t;
    r->s[3] = rotl(r->s[3], 45);
    return result;
}

double ca_rng_uniform(ca_rng *rng) { return ((rng_next(rng) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

void ca_rng_fill_normal(ca_rng *rng, float *x, size_t n, double std) {
    for (size_t j = 0; j < n; j += 2) {
        double u1 = ca_rng_uniform(rng), u2 = ca_rng_uniform(rng);
        double radius = sqrt(-2.0 * log(u1)), angle = 6.283185307179586 * u2;
        x[j] = (float)(std * radius * cos(angle));
        if (j + 1 < n) x[j + 1] = (float)(std * radius * sin(angle));
    }
}

static void train_buffers_free(const ca_train_buffers *b, const ca_backend *be) {
    if (b->grads) be->free(b->grads);
    if (b->lora_params) be->free(b->lora_params);
    if (b->lora_grads) be->free(b->lora_grads);
}

ca_status ca_params_move(ca_param_table *tb, const ca_backend *from, const ca_backend *to, float **params, size_t P,
                         ca_train_buffers *bufs, size_t L, const char *what) {
    ca_train_buffers moved = {NULL, NULL, NULL};
    if ((bufs->grads && !(moved.grads = to->alloc(P * sizeof(float)))) ||
        (bufs->lora_params && !(moved.lora_params = to->alloc(L * sizeof(float)))) ||
        (bufs->lora_grads && !(moved.lora_grads = to->alloc(L * sizeof(float))))) {
        train_buffers_free(&moved, to);
        ca_param_table_discard(tb);
        return ca_error(CA_ERR_NOMEM, "out of memory moving the %s to the %s backend", what, to->name);
    }
    float *moved_params = NULL;
    ca_param_info *info = NULL;
    int count = 0;
    size_t floats = 0;
    ca_status st = ca_param_table_bind(tb, to, &moved_params, &info, &count, &floats);
    if (st != CA_OK) {
        ca_param_table_discard(tb);
        train_buffers_free(&moved, to);
        return st;
    }
    free(info); /* identical to the model's own table */
    memcpy(moved_params, *params, P * sizeof(float));
    if (moved.grads) memcpy(moved.grads, bufs->grads, P * sizeof(float));
    if (moved.lora_params) memcpy(moved.lora_params, bufs->lora_params, L * sizeof(float));
    if (moved.lora_grads) memcpy(moved.lora_grads, bufs->lora_grads, L * sizeof(float));
    from->free(*params);
    train_buffers_free(bufs, from);
    *params = moved_params;
    *bufs = moved;
    return CA_OK;
}
