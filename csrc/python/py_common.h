/* The only header in the project that includes Python.h and NumPy: every csrc/python/py_*.c includes it,
 * nothing in the core does. */
#ifndef CA_PY_COMMON_H
#define CA_PY_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>

#define PY_ARRAY_UNIQUE_SYMBOL captionaura_ARRAY_API
#ifndef CA_PY_MODULE_MAIN
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "captionaura/ca_backend.h"
#include "captionaura/ca_status.h"

/* Raises the Python exception matching `status` with the core's thread-local message; returns NULL. */
PyObject *ca_py_raise(ca_status status);
/* The backend for a device name ("cpu", "cuda"); NULL with RuntimeError (no CUDA build or device, naming
 * the reason) or ValueError (unknown name). */
struct ca_backend;
const struct ca_backend *ca_py_backend_named(const char *device);

/* Checks that `obj` is a NumPy array of `typenum`, C-contiguous and aligned, with `ndim` dimensions (-1: any),
 * writable when asked; raises TypeError/ValueError naming `what` and returns NULL otherwise.
 * Returns `obj` cast (borrowed reference). */
PyArrayObject *ca_py_array(PyObject *obj, int typenum, int ndim, int writable, const char *what);

/* Same check, then every dimension must equal the expected ones (-1: any); raises ValueError naming `what`. */
PyArrayObject *ca_py_array_shape(PyObject *obj, int typenum, int ndim, const npy_intp *shape, int writable,
                                 const char *what);

/* Runs `stmt` with the GIL released and `obj->lock` (a PyThread_type_lock) held: one compute call at a
 * time per core object, whose activation arena is shared between calls. The calling thread first takes the
 * process-wide thread count (ca_threads_apply). */
#define CA_COMPUTE(obj, stmt)                                                                      \
    do {                                                                                           \
        Py_BEGIN_ALLOW_THREADS ca_threads_apply();                                                 \
        PyThread_acquire_lock((obj)->lock, WAIT_LOCK);                                             \
        stmt;                                                                                      \
        PyThread_release_lock((obj)->lock);                                                        \
        Py_END_ALLOW_THREADS                                                                       \
    } while (0)

/* A 1-D float32 NumPy view of `count` floats at `data`, keeping `owner` alive. */
PyObject *ca_py_float_view(PyObject *owner, float *data, size_t count);
/* [(name, shape, offset, numel)] of a parameter table (ca_param_info array). */
PyObject *ca_py_param_table(const void *info, int count);

/* LoRA and backend glue shared by _core.Lfm2 and _core.Vision (py_lora.c). */
typedef struct {
    const int *layers, *projections; /* (count) int32, borrowed from the caller's arrays */
    int count, r;
    float scaling, dropout;
} ca_py_lora_spec;
/* Parses lora_add(layers, projections, r, scaling, dropout=0); 0 with an exception set. */
int ca_py_lora_spec_parse(ca_py_lora_spec *spec, PyObject *args, PyObject *kwds);
/* The flat LoRA buffer as a float32 view kept alive by `owner`, or None when there is no adapter. */
PyObject *ca_py_lora_buffer(PyObject *owner, int num_lora, float *data, size_t size);
/* One lora_table() row: (layer, projection, r, in, out, a_offset, b_offset, scaling, dropout). */
PyObject *ca_py_lora_row(int layer, const char *proj, int r, int in, int out, size_t a_offset, size_t b_offset,
                         float scaling, float dropout);
/* set_profiling(on): swaps a CPU model's backend `*be` for the timing one (or back) under `lock`;
 * RuntimeError when the model is on another device. */
PyObject *ca_py_set_profiling(const ca_backend **be, PyThread_type_lock lock, PyObject *arg);

/* Each area registers its functions and types here; module.c gathers them into captionaura._core. */
extern PyMethodDef ca_py_ops_methods[];
extern PyMethodDef ca_py_io_methods[];
extern PyMethodDef ca_py_metrics_methods[];
extern PyMethodDef ca_py_model_methods[];
extern PyMethodDef ca_py_fed_methods[];
extern PyMethodDef ca_py_vision_methods[];
extern PyMethodDef ca_py_generate_methods[];
extern PyMethodDef ca_py_cuda_methods[]; /* empty without the CUDA build */
int ca_py_model_init(PyObject *module);  /* adds types; 0 on success, -1 with an exception set */
int ca_py_vision_init(PyObject *module); /* adds _core.Vision */
int ca_py_generate_init(PyObject *module); /* adds _core.TokenChannel */
/* For other glue areas: the core model behind a _core.Lfm2 and its compute lock (a PyThread_type_lock),
 * or NULL with TypeError/RuntimeError set. */
struct ca_lfm2_model *ca_py_lfm2_unwrap(PyObject *obj, void **lock);

#endif
