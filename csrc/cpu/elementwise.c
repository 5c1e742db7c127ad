/* Flat elementwise helpers (residual adds, gradient scaling, clearing). Memory-bound: threads only pay
 * beyond a few hundred KB. */
#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

void ca_cpu_add_inplace(float *restrict y, const float *restrict x, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > 4 * CA_PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

void ca_cpu_scale_inplace(float *restrict y, float s, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > 4 * CA_PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] *= s;
}

void ca_cpu_zero(float *restrict y, size_t n) {
    if (n) memset(y, 0, n * sizeof(float));
}

/* Row scatter/gather for LFM2-VL's masked_scatter of image features into <image> positions:
 * forward dst[idx[p]] = src[p]; its backward reads the same rows back (gather) and clears them in the
 * embedding gradient, since the replaced token embeddings took no part in the output. */
void ca_cpu_scatter_rows(float *restrict dst, const float *restrict src, const int32_t *idx, int P, int C) {
#pragma omp parallel for schedule(static) if ((size_t)P * C > 4 * CA_PAR_MIN)
    for (int p = 0; p < P; p++) memcpy(dst + (size_t)idx[p] * C, src + (size_t)p * C, (size_t)C * sizeof(float));
}

void ca_cpu_gather_rows(float *restrict dst, const float *restrict src, const int32_t *idx, int P, int C) {
#pragma omp parallel for schedule(static) if ((size_t)P * C > 4 * CA_PAR_MIN)
    for (int p = 0; p < P; p++) memcpy(dst + (size_t)p * C, src + (size_t)idx[p] * C, (size_t)C * sizeof(float));
}
