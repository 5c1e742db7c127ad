#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "captionaura/ca_backend.h"

/* Buffers of 4 MiB and more (weights, large activations) are 2 MiB-aligned and asked for transparent huge
 * pages (as NumPy does): streaming the weights once per decoded token then runs at twice the speed, because
 * the hardware prefetchers stop at every 4 KiB page boundary and each small page costs a TLB walk. */
#define CA_HUGE_PAGE ((size_t)2 << 20)

static size_t rounded_size(size_t bytes) {
    const size_t align = bytes >= 2 * CA_HUGE_PAGE ? CA_HUGE_PAGE : 64;
    return bytes ? (bytes + align - 1) & ~(align - 1) : 64;
}

/* Every buffer is carved from calloc (malloc when unzeroed) with room to align it, the pointer calloc returned
 * kept just below the aligned one for free. calloc's large blocks are fresh pages from the kernel, which it does
 * not clear: a big zeroed buffer then costs memory only as it is written (a memset would touch every page, so
 * that building a model to load a checkpoint into would cost its fp32 size whatever it is loaded as). */
static void *carve(size_t bytes, int zeroed) {
    const size_t rounded = rounded_size(bytes);
    const int huge = rounded >= 2 * CA_HUGE_PAGE;
    const size_t align = huge ? CA_HUGE_PAGE : 64, total = rounded + align + sizeof(void *);
    void *raw = zeroed ? calloc(1, total) : malloc(total);
    if (!raw) return NULL;
    void **p = (void **)(((uintptr_t)raw + sizeof(void *) + align - 1) & ~(uintptr_t)(align - 1));
    p[-1] = raw;
#ifdef MADV_HUGEPAGE
    if (huge) madvise(p, rounded, MADV_HUGEPAGE); /* advice only: a refusal changes nothing else */
#endif
    return p;
}

void *ca_cpu_alloc_uninit(size_t bytes) { return carve(bytes, 0); }

static void *cpu_alloc(size_t bytes) { return carve(bytes, 1); }

static void cpu_free(void *p) {
    if (p) free(((void **)p)[-1]);
}

static void cpu_copy(void *dst, const void *src, size_t bytes) {
    if (bytes) memmove(dst, src, bytes);
}

const ca_backend ca_cpu_backend = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy = cpu_copy,
    .embedding_forward = ca_cpu_embedding_forward,
    .embedding_backward = ca_cpu_embedding_backward,
    .rmsnorm_forward = ca_cpu_rmsnorm_forward,
    .rmsnorm_backward = ca_cpu_rmsnorm_backward,
    .linear_forward = ca_cpu_linear_forward,
    .linear_backward = ca_cpu_linear_backward,
    .shortconv_forward = ca_cpu_shortconv_forward,
    .shortconv_backward = ca_cpu_shortconv_backward,
    .rope_forward = ca_cpu_rope_forward,
    .rope_backward = ca_cpu_rope_backward,
    .attention_forward = ca_cpu_attention_forward,
    .attention_backward = ca_cpu_attention_backward,
    .swiglu_forward = ca_cpu_swiglu_forward,
    .swiglu_backward = ca_cpu_swiglu_backward,
    .crossentropy_forward = ca_cpu_crossentropy_forward,
    .crossentropy_backward = ca_cpu_crossentropy_backward,
    .add_inplace = ca_cpu_add_inplace,
    .scale_inplace = ca_cpu_scale_inplace,
    .zero = ca_cpu_zero,
    .scatter_rows = ca_cpu_scatter_rows,
    .gather_rows = ca_cpu_gather_rows,
    .lora_forward = ca_cpu_lora_forward,
    .lora_backward = ca_cpu_lora_backward,
    .lora_merge = ca_cpu_lora_merge,
    .dropout_forward = ca_cpu_dropout_forward,
    .dropout_backward = ca_cpu_dropout_backward,
    .adamw_update = ca_cpu_adamw_update,
    .sum_squares = ca_cpu_sum_squares,
    .layernorm_forward = ca_cpu_layernorm_forward,
    .layernorm_backward = ca_cpu_layernorm_backward,
    .gelu_forward = ca_cpu_gelu_forward,
    .gelu_backward = ca_cpu_gelu_backward,
    .posresize_forward = ca_cpu_posresize_forward,
    .posresize_backward = ca_cpu_posresize_backward,
    .unshuffle_forward = ca_cpu_unshuffle_forward,
    .unshuffle_backward = ca_cpu_unshuffle_backward,
    .mha_forward = ca_cpu_mha_forward,
    .mha_backward = ca_cpu_mha_backward,
};
