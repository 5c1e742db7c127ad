#include <omp.h>

#include "captionaura/ca_backend.h"
#include "captionaura/ca_blas.h"

void ca_set_num_threads(int n) {
    if (n <= 0) return;
    omp_set_num_threads(n);
    ca_openblas_set_num_threads(n);
}

int ca_get_num_threads(void) { return omp_get_max_threads(); }
