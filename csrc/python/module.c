/* captionaura._core: gathers the method tables of each area (py_ops.c, py_io.c, py_metrics.c,
 * py_model.c) and holds the shared argument and error helpers. */
#define CA_PY_MODULE_MAIN
#include "py_common.h"

#include <string.h>

#include "captionaura/ca_backend.h"
#include "captionaura/ca_params.h"
#ifdef CA_WITH_CUDA
#include "captionaura/ca_cuda.h"
#endif

PyObject *ca_py_raise(ca_status status) {
    const char *msg = ca_last_error();
    if (!msg || !msg[0]) msg = "captionaura core error";
    PyObject *type;
    switch (status) {
    case CA_ERR_INDEX: type = PyExc_IndexError; break;
    case CA_ERR_KEY: type = PyExc_KeyError; break;
    case CA_ERR_IO: type = PyExc_OSError; break;
    case CA_ERR_NOMEM: type = PyExc_MemoryError; break;
    case CA_ERR_UNSUPPORTED: type = PyExc_NotImplementedError; break;
    case CA_ERR_NUMERIC: type = PyExc_FloatingPointError; break;
    case CA_ERR_DEVICE: type = PyExc_RuntimeError; break;
    default: type = PyExc_ValueError; break;
    }
    PyErr_SetString(type, msg);
    ca_clear_error();
    return NULL;
}

PyArrayObject *ca_py_array(PyObject *obj, int typenum, int ndim, int writable, const char *what) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy array, got %.100s", what, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != typenum) {
        PyArray_Descr *want = PyArray_DescrFromType(typenum);
        PyErr_Format(PyExc_TypeError, "%s must have dtype %c, got %c", what, want->type, PyArray_DESCR(a)->type);
        Py_DECREF(want);
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous and aligned", what);
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, got %d", what, ndim, PyArray_NDIM(a));
        return NULL;
    }
    if (writable && !PyArray_ISWRITEABLE(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be writable", what);
        return NULL;
    }
    return a;
}

PyArrayObject *ca_py_array_shape(PyObject *obj, int typenum, int ndim, const npy_intp *shape, int writable,
                                 const char *what) {
    PyArrayObject *a = ca_py_array(obj, typenum, ndim, writable, what);
    if (!a) return NULL;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] >= 0 && PyArray_DIM(a, i) != shape[i]) {
            PyErr_Format(PyExc_ValueError, "%s has size %zd in dimension %d, expected %zd", what,
                         (Py_ssize_t)PyArray_DIM(a, i), i, (Py_ssize_t)shape[i]);
            return NULL;
        }
    }
    return a;
}

PyObject *ca_py_float_view(PyObject *owner, float *data, size_t count) {
    npy_intp dims[1] = {(npy_intp)count};
    PyObject *arr = PyArray_SimpleNewFromData(1, dims, NPY_FLOAT32, data);
    if (!arr) return NULL;
    Py_INCREF(owner);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, owner) < 0) {
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

PyObject *ca_py_param_table(const void *table, int count) {
    const ca_param_info *info = table;
    PyObject *list = PyList_New(count);
    if (!list) return NULL;
    for (int i = 0; i < count; i++) {
        const ca_param_info *p = &info[i];
        PyObject *shape = PyTuple_New(p->ndim);
        if (!shape) return Py_DECREF(list), NULL;
        for (int d = 0; d < p->ndim; d++) PyTuple_SET_ITEM(shape, d, PyLong_FromLongLong(p->shape[d]));
        PyObject *row = Py_BuildValue("(sNnn)", p->name, shape, (Py_ssize_t)p->offset, (Py_ssize_t)p->numel);
        if (!row) return Py_DECREF(list), NULL;
        PyList_SET_ITEM(list, i, row);
    }
    return list;
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "num_threads must be >= 1");
        return NULL;
    }
    ca_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *py_lowp_isa(PyObject *self, PyObject *arg) {
    const char *isa = PyUnicode_AsUTF8(arg);
    if (!isa) return NULL;
    if (ca_cpu_lowp_set_isa(isa) != 0) {
        PyErr_Format(PyExc_ValueError, "GEMV instruction set '%s' is not one of 'auto', 'avx512', 'avx2' or this CPU "
                     "lacks it", isa);
        return NULL;
    }
    return PyUnicode_FromString(ca_cpu_lowp_isa());
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *unused) {
    return PyLong_FromLong(ca_get_num_threads());
}

static PyObject *py_thread_team_size(PyObject *self, PyObject *unused) {
    return PyLong_FromLong(ca_threads_team_size());
}

static PyObject *py_cuda_compiled(PyObject *self, PyObject *unused) {
#ifdef CA_WITH_CUDA
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

#define CA_NO_CUDA_BUILD "captionaura was built without the CUDA backend (no nvcc/cuBLAS at build time, or CAPTIONAURA_CUDA=OFF)"

/* {compiled, device_count, device, reason}: reason is "" exactly when a device can be used. */
static PyObject *py_cuda_status(PyObject *self, PyObject *unused) {
#ifdef CA_WITH_CUDA
    char name[256];
    ca_cuda_device_name(name, sizeof name);
    return Py_BuildValue("{s:O,s:i,s:s,s:s}", "compiled", Py_True, "device_count", ca_cuda_device_count(), "device",
                         name, "reason", ca_cuda_unavailable_reason());
#else
    return Py_BuildValue("{s:O,s:i,s:s,s:s}", "compiled", Py_False, "device_count", 0, "device", "", "reason",
                         CA_NO_CUDA_BUILD);
#endif
}

/* cuBLAS is opened on first use of the CUDA backend; this opens it now (no device needed) and says whether it is
 * open, so that its absence is found before a run and its lazy loading can be checked. */
static PyObject *py_cuda_load_libraries(PyObject *self, PyObject *unused) {
#ifdef CA_WITH_CUDA
    ca_status st;
    Py_BEGIN_ALLOW_THREADS st = ca_cuda_load_libraries();
    Py_END_ALLOW_THREADS
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
#else
    PyErr_SetString(PyExc_RuntimeError, CA_NO_CUDA_BUILD);
    return NULL;
#endif
}

static PyObject *py_cuda_libraries_loaded(PyObject *self, PyObject *unused) {
#ifdef CA_WITH_CUDA
    return PyBool_FromLong(ca_cuda_libraries_loaded());
#else
    Py_RETURN_FALSE;
#endif
}

const ca_backend *ca_py_cuda_backend(void) {
#ifdef CA_WITH_CUDA
    if (ca_cuda_device_count() == 0) {
        PyErr_Format(PyExc_RuntimeError, "CUDA is not available: %s", ca_cuda_unavailable_reason());
        return NULL;
    }
    ca_status st = ca_cuda_init();
    if (st != CA_OK) {
        ca_py_raise(st);
        return NULL;
    }
    return &ca_cuda_backend;
#else
    PyErr_SetString(PyExc_RuntimeError, "CUDA is not available: " CA_NO_CUDA_BUILD);
    return NULL;
#endif
}

#ifdef CA_WITH_CUDA
static void free_managed(PyObject *capsule) { ca_cuda_free(PyCapsule_GetPointer(capsule, "captionaura.cuda_array")); }
#endif

/* cuda_array(shape, dtype): a zero-filled C-contiguous NumPy array in CUDA managed memory (float32, int32 or
 * float64), readable and writable from Python and usable by the CUDA ops (tests compare backends with it). */
static PyObject *py_cuda_array(PyObject *self, PyObject *args) {
    PyObject *shape_obj;
    PyArray_Descr *descr = NULL;
    if (!PyArg_ParseTuple(args, "OO&:cuda_array", &shape_obj, PyArray_DescrConverter, &descr)) return NULL;
    PyArray_Dims dims = {NULL, 0};
    if (!PyArray_IntpConverter(shape_obj, &dims)) {
        Py_DECREF(descr);
        return NULL;
    }
    int ok = descr->type_num == NPY_FLOAT32 || descr->type_num == NPY_INT32 || descr->type_num == NPY_FLOAT64;
    size_t count = 1;
    for (int i = 0; i < dims.len; i++) {
        if (dims.ptr[i] < 0) ok = 0;
        count *= (size_t)(dims.ptr[i] > 0 ? dims.ptr[i] : 0);
    }
    if (!ok) {
        PyDimMem_FREE(dims.ptr);
        Py_DECREF(descr);
        PyErr_SetString(PyExc_ValueError, "cuda_array: dtype must be float32, int32 or float64 and sizes >= 0");
        return NULL;
    }
    if (!ca_py_backend_named("cuda")) {
        PyDimMem_FREE(dims.ptr);
        Py_DECREF(descr);
        return NULL;
    }
#ifdef CA_WITH_CUDA
    void *data = ca_cuda_malloc_managed(count * (size_t)PyDataType_ELSIZE(descr));
    if (!data) {
        PyDimMem_FREE(dims.ptr);
        Py_DECREF(descr);
        return ca_py_raise(ca_cuda_check());
    }
    PyObject *capsule = PyCapsule_New(data, "captionaura.cuda_array", free_managed);
    if (!capsule) {
        ca_cuda_free(data);
        PyDimMem_FREE(dims.ptr);
        Py_DECREF(descr);
        return NULL;
    }
    PyObject *arr = PyArray_NewFromDescr(&PyArray_Type, descr, dims.len, dims.ptr, NULL, data, NPY_ARRAY_CARRAY, NULL);
    PyDimMem_FREE(dims.ptr);
    if (!arr || PyArray_SetBaseObject((PyArrayObject *)arr, capsule) < 0) {
        Py_XDECREF(arr);
        Py_DECREF(capsule);
        return NULL;
    }
    return arr;
#else
    return NULL; /* unreachable: ca_py_backend_named("cuda") failed above */
#endif
}

const ca_backend *ca_py_backend_named(const char *device) {
    if (strcmp(device, "cpu") == 0) return &ca_cpu_backend;
    if (strcmp(device, "cuda") == 0) return ca_py_cuda_backend();
    PyErr_Format(PyExc_ValueError, "unknown device '%s' (expected 'cpu' or 'cuda')", device);
    return NULL;
}

static PyMethodDef module_methods[] = {
    {"set_num_threads", py_set_num_threads, METH_O, "Threads used by OpenMP loops and OpenBLAS."},
    {"lowp_isa", py_lowp_isa, METH_O, "lowp_isa('auto' | 'avx512' | 'avx2') -> the bf16 GEMV variant now in use."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "Threads used by OpenMP loops."},
    {"thread_team_size", py_thread_team_size, METH_NOARGS,
     "Threads an OpenMP loop started on the calling thread gets now (the count applied by its last compute call)."},
    {"cuda_compiled", py_cuda_compiled, METH_NOARGS, "Whether the CUDA backend was compiled in."},
    {"cuda_array", py_cuda_array, METH_VARARGS,
     "cuda_array(shape, dtype): zero-filled NumPy array in CUDA managed memory (needs a device)."},
    {"cuda_status", py_cuda_status, METH_NOARGS,
     "CUDA backend status: {compiled, device_count, device, reason} (reason empty when usable)."},
    {"cuda_load_libraries", py_cuda_load_libraries, METH_NOARGS,
     "Opens cuBLAS now (the CUDA backend does on first use; importing maps none of it). No device needed."},
    {"cuda_libraries_loaded", py_cuda_libraries_loaded, METH_NOARGS, "Whether cuBLAS is open in this process."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef *area_tables[] = {module_methods, ca_py_ops_methods, ca_py_io_methods,
                                     ca_py_metrics_methods, ca_py_model_methods, ca_py_fed_methods,
                                     ca_py_vision_methods, ca_py_generate_methods, ca_py_cuda_methods};

static struct PyModuleDef core_module = {PyModuleDef_HEAD_INIT, "_core",
                                         "captionaura's C core (see the captionaura package for the API).", -1,
                                         NULL};

PyMODINIT_FUNC PyInit__core(void) {
    import_array();
    PyObject *m = PyModule_Create(&core_module);
    if (!m) return NULL;
    for (size_t i = 0; i < sizeof area_tables / sizeof area_tables[0]; i++) {
        if (PyModule_AddFunctions(m, area_tables[i]) < 0) goto fail;
    }
    if (ca_py_model_init(m) < 0) goto fail;
    if (ca_py_vision_init(m) < 0) goto fail;
    if (ca_py_generate_init(m) < 0) goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
