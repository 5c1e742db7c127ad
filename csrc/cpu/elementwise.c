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
