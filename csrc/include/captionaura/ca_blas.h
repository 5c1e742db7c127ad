/* The one place that knows which CBLAS we link: the scipy-openblas32 wheel prefixes its symbols. */
#ifndef CA_BLAS_H
#define CA_BLAS_H

#include <cblas.h>

#ifdef CA_BLAS_SCIPY_PREFIX
#define ca_cblas_sgemm scipy_cblas_sgemm
#define ca_cblas_sgemv scipy_cblas_sgemv
#define ca_openblas_set_num_threads scipy_openblas_set_num_threads
#define ca_openblas_get_num_threads scipy_openblas_get_num_threads
#else
#define ca_cblas_sgemm cblas_sgemm
#define ca_cblas_sgemv cblas_sgemv
#define ca_openblas_set_num_threads openblas_set_num_threads
#define ca_openblas_get_num_threads openblas_get_num_threads
#endif

#endif
