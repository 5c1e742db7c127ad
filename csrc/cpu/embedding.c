/* Token embedding lookup (lfm2.md §2.1): out[n, :] = wte[ids[n], :]. No scaling, no norm. */
#include <string.h>

#include "captionaura/ca_ops.h"
#include "cpu_internal.h"

/* out (N, C) = wte[ids] ; ids validated by the caller to lie in [0, V). */
void ca_cpu_embedding_forward(float *restrict out, const int32_t *restrict ids, const float *restrict wte,
                              int N, int C) {
    if (N <= 0 || C <= 0) return;
#pragma omp parallel for schedule(static) if ((size_t)N * C > CA_PAR_MIN)
    for (int n = 0; n < N; n++) {
        memcpy(out + (size_t)n * C, wte + (size_t)ids[n] * C, (size_t)C * sizeof(float));
    }
}

/* dwte[v, :] += Σ_{n: ids[n] = v} dout[n, :]  (the lookup is a one-hot matmul, its transpose scatters).
 * Several rows can hit the same token, so threads split the CHANNELS, not the rows: each thread owns a
 * column slice of dwte and walks all rows in order, which is race-free and deterministic. */
void ca_cpu_embedding_backward(float *restrict dwte, const float *restrict dout, const int32_t *restrict ids,
                               int N, int C) {
    if (N <= 0 || C <= 0) return;
#pragma omp parallel if ((size_t)N * C > CA_PAR_MIN)
    {
        int c0, c1;
        ca_col_slice(C, CA_OMP_IT(), CA_OMP_NT(), &c0, &c1);
        for (int n = 0; n < N && c0 < c1; n++) {
            float *restrict dst = dwte + (size_t)ids[n] * C;
            const float *restrict src = dout + (size_t)n * C;
            for (int c = c0; c < c1; c++) dst[c] += src[c];
        }
    }
}
