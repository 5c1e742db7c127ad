#include <omp.h>

#include "captionaura/ca_backend.h"
#include "captionaura/ca_blas.h"

/* One thread pool for the whole core: OpenMP. OpenBLAS stays single-threaded and linear.c splits each GEMM
 * over the OpenMP threads. With OpenBLAS's own pthreads pool next to OpenMP's, the idle threads of one pool
 * spin while the other works, and every switch between a GEMM and an OpenMP op cost ~9 ms on 2 cores
 * (measured: a 256x1024 sgemm then an rmsnorm, 12-28 ms instead of 3 ms). */
__attribute__((constructor)) static void ca_threads_init(void) { ca_openblas_set_num_threads(1); }

void ca_set_num_threads(int n) {
    if (n <= 0) return;
    omp_set_num_threads(n);
    ca_openblas_set_num_threads(1);
}

int ca_get_num_threads(void) { return omp_get_max_threads(); }
