/* Python glue for the vision side: the _core.Vision type owns a ca_vision_model (SigLIP2 tower + projector);
 * parameters and gradients are NumPy views kept alive by the Vision instance. Compute runs with the GIL
 * released and the instance's lock held (the activation arena is shared between calls). */
#include "py_common.h"

#include <limits.h>
#include <pythread.h>

#include "captionaura/ca_vision.h"

typedef struct {
    PyObject_HEAD
    ca_vision_model *model;
    PyThread_type_lock lock;
} VisionObject;


static void Vision_dealloc(VisionObject *self) {
    ca_vision_free(self->model);
    if (self->lock) PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Vision_init(VisionObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"config_json", "seed", "init_std", NULL};
    const char *json;
    Py_ssize_t json_len;
    PyObject *seed_obj = Py_None;
    double init_std = 0.02;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "s#|Od", kwlist, &json, &json_len, &seed_obj, &init_std)) return -1;
    if (self->model) {
        PyErr_SetString(PyExc_RuntimeError, "Vision is already initialised");
        return -1;
    }
    ca_vision_config cfg;
    ca_status st = ca_vision_config_from_json(&cfg, json, (size_t)json_len);
    if (st == CA_OK) st = ca_vision_create(&self->model, &cfg, &ca_cpu_backend);
    if (st != CA_OK) return ca_py_raise(st), -1;
    if (seed_obj != Py_None) {
        unsigned long long seed = PyLong_AsUnsignedLongLongMask(seed_obj);
        if (PyErr_Occurred()) return -1;
        ca_vision_init_random(self->model, seed, (float)init_std);
    }
    self->lock = PyThread_allocate_lock();
    if (!self->lock) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int ready(VisionObject *self) {
    if (!self->model) {
        PyErr_SetString(PyExc_RuntimeError, "Vision was not initialised");
        return 0;
    }
    return 1;
}

static PyObject *Vision_param_table(VisionObject *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    return ca_py_param_table(self->model->param_info, self->model->num_param_tensors);
}

static PyObject *Vision_params(VisionObject *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    return ca_py_float_view((PyObject *)self, self->model->params, self->model->num_parameters);
}

static PyObject *Vision_grads(VisionObject *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    ca_vision_model *m = self->model;
    if (!m->grads) {
        m->grads = m->be->alloc(m->num_parameters * sizeof(float));
        if (!m->grads) return PyErr_NoMemory();
    }
    return ca_py_float_view((PyObject *)self, m->grads, m->num_parameters);
}

/* pixel_values (T, P, K) f32, spatial_shapes (T, 2) i32, mask (T, P) i32 or None. */
static int tile_args(VisionObject *self, PyObject *pv_obj, PyObject *ss_obj, PyObject *mask_obj, PyArrayObject **pv,
                     PyArrayObject **ss, PyArrayObject **mask, int *T, int *P) {
    const ca_vision_config *c = &self->model->cfg;
    *pv = ca_py_array(pv_obj, NPY_FLOAT32, 3, 0, "pixel_values");
    if (!*pv) return 0;
    npy_intp t = PyArray_DIM(*pv, 0), p = PyArray_DIM(*pv, 1), k = PyArray_DIM(*pv, 2);
    npy_intp K = (npy_intp)c->num_channels * c->patch_size * c->patch_size;
    if (t < 1 || p < 1 || t > INT_MAX / 4 || p > INT_MAX / 4) {
        PyErr_Format(PyExc_ValueError, "pixel_values has shape (%zd, %zd, %zd); expected at least one tile and patch",
                     (Py_ssize_t)t, (Py_ssize_t)p, (Py_ssize_t)k);
        return 0;
    }
    if (k != K) {
        PyErr_Format(PyExc_ValueError, "pixel_values has %zd values per patch, expected %zd (num_channels * patch_size^2)",
                     (Py_ssize_t)k, (Py_ssize_t)K);
        return 0;
    }
    npy_intp sshape[2] = {t, 2};
    *ss = ca_py_array_shape(ss_obj, NPY_INT32, 2, sshape, 0, "spatial_shapes");
    if (!*ss) return 0;
    *mask = NULL;
    if (mask_obj != Py_None) {
        npy_intp mshape[2] = {t, p};
        *mask = ca_py_array_shape(mask_obj, NPY_INT32, 2, mshape, 0, "pixel_attention_mask");
        if (!*mask) return 0;
    }
    *T = (int)t;
    *P = (int)p;
    return 1;
}

static PyObject *Vision_forward(VisionObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"pixel_values", "spatial_shapes", "pixel_attention_mask", "hidden_states", "train", NULL};
    PyObject *pv_obj, *ss_obj, *mask_obj = Py_None;
    int want_hidden = 0, train = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|Opp", kwlist, &pv_obj, &ss_obj, &mask_obj, &want_hidden, &train))
        return NULL;
    if (!ready(self)) return NULL;
    ca_vision_model *m = self->model;
    PyArrayObject *pv, *ss, *mask;
    int T, P;
    if (!tile_args(self, pv_obj, ss_obj, mask_obj, &pv, &ss, &mask, &T, &P)) return NULL;
    const int32_t *ss_p = PyArray_DATA(ss), *mask_p = mask ? PyArray_DATA(mask) : NULL;
    int64_t M, N;
    ca_status st = ca_vision_num_tokens(m, &M, &N, ss_p, mask_p, T, P);
    if (st != CA_OK) return ca_py_raise(st);
    npy_intp fdims[2] = {(npy_intp)M, m->cfg.text_hidden_size};
    PyObject *features = PyArray_SimpleNew(2, fdims, NPY_FLOAT32);
    if (!features) return NULL;
    PyObject *hidden = NULL;
    if (want_hidden) {
        npy_intp hdims[3] = {m->cfg.num_layers_run + 1, (npy_intp)N, m->cfg.hidden_size};
        hidden = PyArray_SimpleNew(3, hdims, NPY_FLOAT32);
        if (!hidden) return Py_DECREF(features), NULL;
    }
    float *fp = PyArray_DATA((PyArrayObject *)features);
    float *hp = hidden ? PyArray_DATA((PyArrayObject *)hidden) : NULL;
    const float *pv_p = PyArray_DATA(pv);
    CA_COMPUTE(self, st = ca_vision_forward(m, fp, hp, pv_p, ss_p, mask_p, T, P, train));
    if (st != CA_OK) {
        Py_DECREF(features);
        Py_XDECREF(hidden);
        return ca_py_raise(st);
    }
    if (!hidden) return features;
    return Py_BuildValue("(NN)", features, hidden);
}

static PyObject *Vision_backward(VisionObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"d_features", "accumulate", NULL};
    PyObject *d_obj;
    int accumulate = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|p", kwlist, &d_obj, &accumulate)) return NULL;
    if (!ready(self)) return NULL;
    ca_vision_model *m = self->model;
    if (!m->have_train_acts) {
        PyErr_SetString(PyExc_ValueError, "backward needs a preceding forward(..., train=True)");
        return NULL;
    }
    npy_intp shape[2] = {(npy_intp)m->tile_tok[m->num_tiles], m->cfg.text_hidden_size};
    PyArrayObject *d = ca_py_array_shape(d_obj, NPY_FLOAT32, 2, shape, 0, "d_features");
    if (!d) return NULL;
    const float *dp = PyArray_DATA(d);
    ca_status st;
    CA_COMPUTE(self, st = ca_vision_backward(m, dp, accumulate));
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Vision_load_safetensors(VisionObject *self, PyObject *args) {
    PyObject *paths_obj;
    if (!PyArg_ParseTuple(args, "O", &paths_obj)) return NULL;
    if (!ready(self)) return NULL;
    PyObject *seq = PySequence_Fast(paths_obj, "paths must be a sequence of file paths");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    const char **paths = PyMem_Calloc((size_t)n + 1, sizeof *paths);
    PyObject **encoded = PyMem_Calloc((size_t)n + 1, sizeof *encoded);
    PyObject *result = NULL;
    if (!paths || !encoded) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(seq, i), &encoded[i])) goto done;
        paths[i] = PyBytes_AS_STRING(encoded[i]);
    }
    ca_status st;
    CA_COMPUTE(self, st = ca_vision_load_safetensors(self->model, paths, (int)n));
    if (st != CA_OK) {
        ca_py_raise(st);
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    if (encoded)
        for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(encoded[i]);
    PyMem_Free(encoded);
    PyMem_Free(paths);
    Py_DECREF(seq);
    return result;
}

static PyObject *Vision_save_safetensors(VisionObject *self, PyObject *args) {
    PyObject *path_obj;
    if (!PyArg_ParseTuple(args, "O&", PyUnicode_FSConverter, &path_obj)) return NULL;
    if (!ready(self)) {
        Py_DECREF(path_obj);
        return NULL;
    }
    const char *path = PyBytes_AS_STRING(path_obj);
    ca_status st;
    CA_COMPUTE(self, st = ca_vision_save_safetensors(self->model, path));
    Py_DECREF(path_obj);
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Vision_set_profiling(VisionObject *self, PyObject *arg) {
    if (!ready(self)) return NULL;
    return ca_py_set_profiling(&self->model->be, self->lock, arg);
}

/* to_device(name): moves the model's buffers to the "cpu" or "cuda" backend. Earlier parameter/gradient
 * views (and caches) refer to the old buffers: callers take new ones. */
static PyObject *Vision_to_device(VisionObject *self, PyObject *arg) {
    if (!ready(self)) return NULL;
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    const ca_backend *be = ca_py_backend_named(name);
    if (!be) return NULL;
    ca_status st;
    CA_COMPUTE(self, st = ca_vision_set_backend(self->model, be));
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Vision_set_dtype(VisionObject *self, PyObject *args) {
    if (!ready(self)) return NULL;
    const char *dtype;
    int keep_fp32 = 1;
    if (!PyArg_ParseTuple(args, "s|p", &dtype, &keep_fp32)) return NULL;
    ca_status st;
    CA_COMPUTE(self, st = ca_vision_set_dtype(self->model, dtype, keep_fp32));
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Vision_fp32_dropped(VisionObject *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    return PyBool_FromLong(self->model->fp32_dropped);
}

static PyObject *Vision_dtype(VisionObject *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    return PyUnicode_FromString(ca_vision_dtype(self->model));
}

static PyObject *Vision_get_backend(VisionObject *self, void *closure) {
    if (!ready(self)) return NULL;
    return PyUnicode_FromString(self->model->be->name);
}

static PyObject *Vision_get_resolved(VisionObject *self, void *closure) {
    if (!ready(self)) return NULL;
    const ca_vision_config *c = &self->model->cfg;
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:i,s:i}", "num_layers_run", c->num_layers_run, "hidden_size",
                         c->hidden_size, "text_hidden_size", c->text_hidden_size, "downsample_factor",
                         c->downsample_factor, "patch_dim", c->num_channels * c->patch_size * c->patch_size,
                         "projector_use_layernorm", c->projector_use_layernorm, "num_parameters",
                         (int)self->model->num_parameters);
}

/* ---- LoRA (the same surface as _core.Lfm2's) ---- */
static PyObject *Vision_lora_add(VisionObject *self, PyObject *args, PyObject *kwds) {
    ca_py_lora_spec spec;
    if (!ca_py_lora_spec_parse(&spec, args, kwds) || !ready(self)) return NULL;
    ca_status st;
    CA_COMPUTE(self, st = ca_vision_lora_add(self->model, spec.layers, spec.projections, spec.count, spec.r,
                                             spec.scaling, spec.dropout));
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Vision_lora_clear(VisionObject *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    CA_COMPUTE(self, ca_vision_lora_clear(self->model));
    Py_RETURN_NONE;
}

static PyObject *Vision_lora_init(VisionObject *self, PyObject *args) {
    unsigned long long seed;
    int gaussian;
    if (!PyArg_ParseTuple(args, "Kp", &seed, &gaussian) || !ready(self)) return NULL;
    ca_status st;
    CA_COMPUTE(self, st = ca_vision_lora_init(self->model, seed, gaussian));
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Vision_lora_params(VisionObject *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    return ca_py_lora_buffer((PyObject *)self, self->model->num_lora, self->model->lora_params, self->model->lora_size);
}

static PyObject *Vision_lora_grads(VisionObject *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    return ca_py_lora_buffer((PyObject *)self, self->model->num_lora, self->model->lora_grads, self->model->lora_size);
}

static PyObject *Vision_lora_table(VisionObject *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    const ca_vision_model *m = self->model;
    PyObject *list = PyList_New(m->num_lora);
    for (int i = 0; list && i < m->num_lora; i++) {
        const ca_vision_lora_adapter *a = &m->lora[i];
        PyObject *row = ca_py_lora_row(a->layer, ca_vision_proj_name(a->proj), a->r, a->in, a->out, a->a_offset,
                                       a->b_offset, a->scaling, a->dropout);
        if (!row) return Py_DECREF(list), NULL;
        PyList_SET_ITEM(list, i, row);
    }
    return list;
}

static PyObject *Vision_set_lora_enabled(VisionObject *self, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0 || !ready(self)) return NULL;
    CA_COMPUTE(self, self->model->lora_enabled = on);
    Py_RETURN_NONE;
}

static PyObject *Vision_set_base_frozen(VisionObject *self, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0 || !ready(self)) return NULL;
    CA_COMPUTE(self, self->model->base_frozen = on);
    Py_RETURN_NONE;
}

static PyObject *Vision_set_lora_freeze_A(VisionObject *self, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0 || !ready(self)) return NULL;
    CA_COMPUTE(self, self->model->lora_freeze_A = on);
    Py_RETURN_NONE;
}

static PyObject *Vision_set_dropout_seed(VisionObject *self, PyObject *arg) {
    unsigned long long seed = PyLong_AsUnsignedLongLongMask(arg);
    if (PyErr_Occurred() || !ready(self)) return NULL;
    CA_COMPUTE(self, self->model->dropout_seed = seed);
    Py_RETURN_NONE;
}

static PyObject *Vision_lora_merge(VisionObject *self, PyObject *arg) {
    double sign = PyFloat_AsDouble(arg);
    if (PyErr_Occurred() || !ready(self)) return NULL;
    ca_status st;
    CA_COMPUTE(self, st = ca_vision_lora_merge(self->model, (float)sign));
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyMethodDef Vision_methods[] = {
    {"param_table", (PyCFunction)Vision_param_table, METH_NOARGS,
     "[(name, shape, offset, numel)] of every vision/projector tensor, in buffer order."},
    {"params", (PyCFunction)Vision_params, METH_NOARGS, "The flat float32 parameter buffer (a view)."},
    {"grads", (PyCFunction)Vision_grads, METH_NOARGS, "The flat float32 gradient buffer (a view)."},
    {"forward", (PyCFunction)(void (*)(void))Vision_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(pixel_values (T,P,K), spatial_shapes (T,2) int32, pixel_attention_mask (T,P) int32 or None, "
     "hidden_states=False, train=False) -> features (M, text_hidden) [, hidden (L+1, N, D)]"},
    {"backward", (PyCFunction)(void (*)(void))Vision_backward, METH_VARARGS | METH_KEYWORDS,
     "backward(d_features (M, text_hidden), accumulate=False): gradients of the last train forward."},
    {"load_safetensors", (PyCFunction)Vision_load_safetensors, METH_VARARGS,
     "load_safetensors(paths): reads every vision and projector tensor."},
    {"save_safetensors", (PyCFunction)Vision_save_safetensors, METH_VARARGS,
     "save_safetensors(path): writes the vision and projector tensors as float32, atomically."},
    {"to_device", (PyCFunction)Vision_to_device, METH_O,
     "to_device(name): move parameters, gradients and adapters to the 'cpu' or 'cuda' backend."},
    {"set_dtype", (PyCFunction)Vision_set_dtype, METH_VARARGS,
     "set_dtype('fp32' | 'bf16', keep_fp32=True): the weights' dtype (bf16 rounds them in place; bf16 GEMMs, CPU; "
     "keep_fp32=False gives back the linear weights' fp32 values)."},
    {"dtype", (PyCFunction)Vision_dtype, METH_NOARGS, "'fp32' or 'bf16'."},
    {"fp32_dropped", (PyCFunction)Vision_fp32_dropped, METH_NOARGS,
     "Whether the linear weights' fp32 values are given back (keep_fp32=False)."},
    {"set_profiling", (PyCFunction)Vision_set_profiling, METH_O,
     "set_profiling(on): route compute through the timing backend (see _core.profile_report)."},
    {"lora_add", (PyCFunction)(void (*)(void))Vision_lora_add, METH_VARARGS | METH_KEYWORDS,
     "lora_add(layers, projections, r, scaling, dropout=0): adapters on (layer, projection) pairs (int32 arrays; "
     "layer -1 for the patch embedding and the projector)."},
    {"lora_clear", (PyCFunction)Vision_lora_clear, METH_NOARGS, "Remove every LoRA adapter."},
    {"lora_init", (PyCFunction)Vision_lora_init, METH_VARARGS, "lora_init(seed, gaussian): PEFT's A init, B = 0."},
    {"lora_params", (PyCFunction)Vision_lora_params, METH_NOARGS, "The flat LoRA buffer (a view), or None."},
    {"lora_grads", (PyCFunction)Vision_lora_grads, METH_NOARGS, "The flat LoRA gradient buffer (a view), or None."},
    {"lora_table", (PyCFunction)Vision_lora_table, METH_NOARGS,
     "[(layer, projection, r, in, out, a_offset, b_offset, scaling, dropout)] of every adapter."},
    {"set_lora_enabled", (PyCFunction)Vision_set_lora_enabled, METH_O, "Run with (True) or without (False) adapters."},
    {"set_dropout_seed", (PyCFunction)Vision_set_dropout_seed, METH_O, "Seed of the LoRA dropout masks."},
    {"set_lora_freeze_A", (PyCFunction)Vision_set_lora_freeze_A, METH_O, "Keep A fixed (FFA-LoRA): no A gradients."},
    {"set_base_frozen", (PyCFunction)Vision_set_base_frozen, METH_O,
     "set_base_frozen(on): backward fills only the adapters' gradients (LoRA training)."},
    {"lora_merge", (PyCFunction)Vision_lora_merge, METH_O, "lora_merge(sign): W += sign*scaling*B@A for every adapter."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Vision_getset[] = {
    {"resolved", (getter)Vision_get_resolved, NULL, "Resolved sizes (num_layers_run, ...).", NULL},
    {"backend", (getter)Vision_get_backend, NULL, "Name of the compute backend ('cpu', 'cpu-profiled', 'cuda').", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject VisionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "captionaura._core.Vision",
    .tp_basicsize = sizeof(VisionObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Vision(config_json, seed=None, init_std=0.02): the LFM2-VL SigLIP2 tower + projector of the C core.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Vision_init,
    .tp_dealloc = (destructor)Vision_dealloc,
    .tp_methods = Vision_methods,
    .tp_getset = Vision_getset,
};

static PyObject *py_vision_config_resolve(PyObject *self, PyObject *arg) {
    Py_ssize_t len;
    const char *json = PyUnicode_AsUTF8AndSize(arg, &len);
    if (!json) return NULL;
    ca_vision_config c;
    ca_status st = ca_vision_config_from_json(&c, json, (size_t)len);
    if (st != CA_OK) return ca_py_raise(st);
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:i}", "num_layers_run", c.num_layers_run, "hidden_size", c.hidden_size,
                         "text_hidden_size", c.text_hidden_size, "downsample_factor", c.downsample_factor, "patch_dim",
                         c.num_channels * c.patch_size * c.patch_size, "projector_use_layernorm",
                         c.projector_use_layernorm);
}

PyMethodDef ca_py_vision_methods[] = {
    {"vision_config_resolve", py_vision_config_resolve, METH_O,
     "vision_config_resolve(lfm2_vl_config_json) -> resolved vision sizes (validates; raises naming the key)."},
    {NULL, NULL, 0, NULL},
};

int ca_py_vision_init(PyObject *module) {
    if (PyType_Ready(&VisionType) < 0) return -1;
    PyObject *names = PyTuple_New(CA_NUM_VPROJ);
    if (!names) return -1;
    for (int i = 0; i < CA_NUM_VPROJ; i++) PyTuple_SET_ITEM(names, i, PyUnicode_FromString(ca_vision_proj_name(i)));
    if (PyModule_AddObject(module, "VISION_PROJECTIONS", names) < 0) {
        Py_DECREF(names);
        return -1;
    }
    Py_INCREF(&VisionType);
    if (PyModule_AddObject(module, "Vision", (PyObject *)&VisionType) < 0) {
        Py_DECREF(&VisionType);
        return -1;
    }
    return 0;
}
