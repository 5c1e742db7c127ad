#include <omp.h>
#include <stdatomic.h>

#include "captionaura/ca_backend.h"
#include "captionaura/ca_blas.h"

/* One thread pool for the whole core: OpenMP. OpenBLAS stays single-threaded and linear.c splits each GEMM
 * over the OpenMP threads. With OpenBLAS's own pthreads pool next to OpenMP's, the idle threads of one pool
 * spin while the other works, and every switch between a GEMM and an OpenMP op cost ~9 ms on 2 cores
 * (measured: a 256x1024 sgemm then an rmsnorm, 12-28 ms instead of 3 ms). */
__attribute__((constructor)) static void ca_threads_init(void) { ca_openblas_set_num_threads(1); }

/* OpenMP's nthreads-var is per thread: omp_set_num_threads from one thread leaves the others (a server's
 * worker threads) at the default of every core. The requested count lives here, process-wide, and each
 * compute entry applies it to the thread it runs on (ca_threads_apply). 0: never set. */
static atomic_int requested_threads = 0;

void ca_set_num_threads(int n) {
    if (n <= 0) return;
    atomic_store(&requested_threads, n);
    omp_set_num_threads(n);
    ca_openblas_set_num_threads(1);
}

int ca_get_num_threads(void) {
    const int n = atomic_load(&requested_threads);
    return n > 0 ? n : omp_get_max_threads();
}

void ca_threads_apply(void) {
    const int n = atomic_load(&requested_threads);
    if (n > 0 && omp_get_max_threads() != n) omp_set_num_threads(n);
}

int ca_threads_team_size(void) {
    int size = 1;
#pragma omp parallel
    {
#pragma omp single
        size = omp_get_num_threads();
    }
    return size;
}
