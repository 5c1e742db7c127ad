/* Glue shared by _core.Lfm2 and _core.Vision: the two core models expose the same LoRA surface (adapters,
 * flat LoRA buffer) and the same CPU/profiling backend switch, so their methods parse and view through here. */
#include "py_common.h"

#include "captionaura/ca_profile.h"

int ca_py_lora_spec_parse(ca_py_lora_spec *spec, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"layers", "projections", "r", "scaling", "dropout", NULL};
    PyObject *layers_obj, *projs_obj;
    spec->dropout = 0.0f;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOif|f", kwlist, &layers_obj, &projs_obj, &spec->r, &spec->scaling,
                                     &spec->dropout))
        return 0;
    PyArrayObject *layers = ca_py_array(layers_obj, NPY_INT32, 1, 0, "layers");
    if (!layers) return 0;
    npy_intp n = PyArray_DIM(layers, 0);
    PyArrayObject *projs = ca_py_array_shape(projs_obj, NPY_INT32, 1, (npy_intp[]){n}, 0, "projections");
    if (!projs) return 0;
    spec->layers = PyArray_DATA(layers);
    spec->projections = PyArray_DATA(projs);
    spec->count = (int)n;
    return 1;
}

PyObject *ca_py_lora_buffer(PyObject *owner, int num_lora, float *data, size_t size) {
    if (!num_lora) Py_RETURN_NONE;
    return ca_py_float_view(owner, data, size);
}

PyObject *ca_py_lora_row(int layer, const char *proj, int r, int in, int out, size_t a_offset, size_t b_offset,
                         float scaling, float dropout) {
    return Py_BuildValue("(isiiinnff)", layer, proj, r, in, out, (Py_ssize_t)a_offset, (Py_ssize_t)b_offset, scaling,
                         dropout);
}

PyObject *ca_py_set_profiling(const ca_backend **be, PyThread_type_lock lock, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    if (*be != &ca_cpu_backend && *be != &ca_cpu_profiling_backend)
        return PyErr_Format(PyExc_RuntimeError, "profiling times the CPU backend; the model is on %s (to('cpu') first)",
                            (*be)->name);
    Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(lock, WAIT_LOCK);
    *be = on ? &ca_cpu_profiling_backend : &ca_cpu_backend;
    PyThread_release_lock(lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}
