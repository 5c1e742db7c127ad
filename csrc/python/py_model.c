/* Python glue for the model area: the _core.Lfm2 type owns a ca_lfm2_model; parameters and gradients
 * are exposed as NumPy views whose base object is the Lfm2 instance, so they keep it alive. */
#include "py_common.h"

#include <pythread.h>
#include <string.h>

#include "captionaura/ca_model.h"
#include "captionaura/ca_profile.h"

typedef struct {
    PyObject_HEAD
    ca_lfm2_model *model;
    PyThread_type_lock lock; /* one compute call at a time: the activation arena is shared */
} Lfm2Object;


static void Lfm2_dealloc(Lfm2Object *self) {
    ca_lfm2_free(self->model);
    if (self->lock) PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Lfm2_init(Lfm2Object *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"config_json", "seed", "init_std", NULL};
    const char *json;
    Py_ssize_t json_len;
    PyObject *seed_obj = Py_None;
    double init_std = 0.02;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "s#|Od", kwlist, &json, &json_len, &seed_obj, &init_std)) return -1;
    if (self->model) {
        PyErr_SetString(PyExc_RuntimeError, "Lfm2 is already initialised");
        return -1;
    }
    ca_lfm2_config cfg;
    ca_status st = ca_lfm2_config_from_json(&cfg, json, (size_t)json_len);
    if (st == CA_OK) st = ca_lfm2_create(&self->model, &cfg, &ca_cpu_backend);
    if (st != CA_OK) return ca_py_raise(st), -1;
    if (seed_obj != Py_None) {
        unsigned long long seed = PyLong_AsUnsignedLongLongMask(seed_obj);
        if (PyErr_Occurred()) return -1;
        ca_lfm2_init_random(self->model, seed, (float)init_std);
    }
    self->lock = PyThread_allocate_lock();
    if (!self->lock) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int ready(Lfm2Object *self) {
    if (!self->model) {
        PyErr_SetString(PyExc_RuntimeError, "Lfm2 was not initialised");
        return 0;
    }
    return 1;
}

static PyObject *Lfm2_param_table(Lfm2Object *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    return ca_py_param_table(self->model->param_info, self->model->num_param_tensors);
}

static PyObject *Lfm2_params(Lfm2Object *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    return ca_py_float_view((PyObject *)self, self->model->params, self->model->num_parameters);
}

static PyObject *Lfm2_grads(Lfm2Object *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    ca_lfm2_model *m = self->model;
    if (!m->grads) {
        m->grads = m->be->alloc(m->num_parameters * sizeof(float));
        if (!m->grads) return PyErr_NoMemory();
    }
    return ca_py_float_view((PyObject *)self, m->grads, m->num_parameters);
}

/* Checks ids (B, T) int32 and an optional mask of the same shape. */
static int token_args(PyObject *ids_obj, PyObject *mask_obj, PyArrayObject **ids, PyArrayObject **mask, int *B,
                      int *T) {
    *ids = ca_py_array(ids_obj, NPY_INT32, 2, 0, "input_ids");
    if (!*ids) return 0;
    *B = (int)PyArray_DIM(*ids, 0);
    *T = (int)PyArray_DIM(*ids, 1);
    *mask = NULL;
    if (mask_obj != Py_None) {
        npy_intp shape[2] = {*B, *T};
        *mask = ca_py_array_shape(mask_obj, NPY_INT32, 2, shape, 0, "attention_mask");
        if (!*mask) return 0;
    }
    return 1;
}

/* Optional feature rows: positions (P) int32 flat indices, values (P, C), and for backward grad (P, C). */
static int feature_args(const ca_lfm2_model *m, PyObject *pos_obj, PyObject *val_obj, PyObject *grad_obj,
                        ca_lfm2_features *f) {
    *f = (ca_lfm2_features){0};
    if (pos_obj == Py_None && val_obj == Py_None) return 1;
    PyArrayObject *pos = ca_py_array(pos_obj, NPY_INT32, 1, 0, "feature_positions");
    if (!pos) return 0;
    npy_intp P = PyArray_DIM(pos, 0);
    PyArrayObject *val = ca_py_array_shape(val_obj, NPY_FLOAT32, 2, (npy_intp[]){P, m->cfg.hidden_size}, 0, "features");
    if (!val) return 0;
    if (grad_obj && grad_obj != Py_None) {
        PyArrayObject *g = ca_py_array_shape(grad_obj, NPY_FLOAT32, 2, (npy_intp[]){P, m->cfg.hidden_size}, 1, "feature_grad");
        if (!g) return 0;
        f->grad = PyArray_DATA(g);
    }
    f->positions = PyArray_DATA(pos);
    f->values = PyArray_DATA(val);
    f->count = (int)P;
    return 1;
}

static PyObject *Lfm2_forward(Lfm2Object *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"input_ids", "attention_mask", "logits", "hidden_states", "feature_positions", "features",
                             NULL};
    PyObject *ids_obj, *mask_obj = Py_None, *logits_obj = Py_None, *hidden_obj = Py_None, *pos_obj = Py_None,
                       *val_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OOOOO", kwlist, &ids_obj, &mask_obj, &logits_obj, &hidden_obj,
                                     &pos_obj, &val_obj))
        return NULL;
    if (!ready(self)) return NULL;
    ca_lfm2_model *m = self->model;
    PyArrayObject *ids, *mask;
    int B, T;
    if (!token_args(ids_obj, mask_obj, &ids, &mask, &B, &T)) return NULL;
    float *logits = NULL, *hidden = NULL;
    if (logits_obj != Py_None) {
        npy_intp shape[3] = {B, T, m->cfg.vocab_size};
        PyArrayObject *a = ca_py_array_shape(logits_obj, NPY_FLOAT32, 3, shape, 1, "logits");
        if (!a) return NULL;
        logits = PyArray_DATA(a);
    }
    if (hidden_obj != Py_None) {
        npy_intp shape[4] = {m->cfg.num_hidden_layers + 1, B, T, m->cfg.hidden_size};
        PyArrayObject *a = ca_py_array_shape(hidden_obj, NPY_FLOAT32, 4, shape, 1, "hidden_states");
        if (!a) return NULL;
        hidden = PyArray_DATA(a);
    }
    ca_lfm2_features features;
    if (!feature_args(m, pos_obj, val_obj, NULL, &features)) return NULL;
    const int32_t *ids_p = PyArray_DATA(ids), *mask_p = mask ? PyArray_DATA(mask) : NULL;
    ca_status st;
    CA_COMPUTE(self, st = ca_lfm2_forward_ex(m, logits, hidden, ids_p, mask_p, B, T, &features));
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Lfm2_loss_and_grad(Lfm2Object *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"input_ids", "labels", "attention_mask", "accumulate", "feature_positions", "features",
                             "feature_grad", NULL};
    PyObject *ids_obj, *labels_obj, *mask_obj = Py_None, *pos_obj = Py_None, *val_obj = Py_None, *grad_obj = Py_None;
    int accumulate = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|OpOOO", kwlist, &ids_obj, &labels_obj, &mask_obj, &accumulate,
                                     &pos_obj, &val_obj, &grad_obj))
        return NULL;
    if (!ready(self)) return NULL;
    PyArrayObject *ids, *mask;
    int B, T;
    if (!token_args(ids_obj, mask_obj, &ids, &mask, &B, &T)) return NULL;
    npy_intp shape[2] = {B, T};
    PyArrayObject *labels = ca_py_array_shape(labels_obj, NPY_INT32, 2, shape, 0, "labels");
    if (!labels) return NULL;
    const int32_t *ids_p = PyArray_DATA(ids), *labels_p = PyArray_DATA(labels);
    const int32_t *mask_p = mask ? PyArray_DATA(mask) : NULL;
    ca_lfm2_features features;
    if (!feature_args(self->model, pos_obj, val_obj, grad_obj, &features)) return NULL;
    double loss = 0.0;
    ca_status st;
    CA_COMPUTE(self, st = ca_lfm2_loss_and_grad_ex(self->model, &loss, ids_p, labels_p, mask_p, B, T, accumulate,
                                                   &features));
    if (st != CA_OK) return ca_py_raise(st);
    return PyFloat_FromDouble(loss);
}

static PyObject *Lfm2_load_safetensors(Lfm2Object *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"paths", "prefix", NULL};
    PyObject *paths_obj;
    const char *prefix = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|z", kwlist, &paths_obj, &prefix)) return NULL;
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
    CA_COMPUTE(self, st = ca_lfm2_load_safetensors(self->model, paths, (int)n, prefix));
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

static PyObject *Lfm2_save_safetensors(Lfm2Object *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"path", "prefix", NULL};
    PyObject *path_obj;
    const char *prefix = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&|z", kwlist, PyUnicode_FSConverter, &path_obj, &prefix))
        return NULL;
    if (!ready(self)) {
        Py_DECREF(path_obj);
        return NULL;
    }
    const char *path = PyBytes_AS_STRING(path_obj);
    ca_status st;
    CA_COMPUTE(self, st = ca_lfm2_save_safetensors(self->model, path, prefix));
    Py_DECREF(path_obj);
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Lfm2_set_profiling(Lfm2Object *self, PyObject *arg) {
    if (!ready(self)) return NULL;
    return ca_py_set_profiling(&self->model->be, self->lock, arg);
}

/* to_device(name): moves the model's buffers to the "cpu" or "cuda" backend. Earlier parameter/gradient
 * views (and caches) refer to the old buffers: callers take new ones. */
static PyObject *Lfm2_to_device(Lfm2Object *self, PyObject *arg) {
    if (!ready(self)) return NULL;
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    const ca_backend *be = ca_py_backend_named(name);
    if (!be) return NULL;
    ca_status st;
    CA_COMPUTE(self, st = ca_lfm2_set_backend(self->model, be));
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Lfm2_get_backend(Lfm2Object *self, void *closure) {
    if (!ready(self)) return NULL;
    return PyUnicode_FromString(self->model->be->name);
}

/* ---- LoRA ---- */
static PyObject *Lfm2_lora_add(Lfm2Object *self, PyObject *args, PyObject *kwds) {
    ca_py_lora_spec spec;
    if (!ca_py_lora_spec_parse(&spec, args, kwds) || !ready(self)) return NULL;
    ca_status st;
    CA_COMPUTE(self, st = ca_lfm2_lora_add(self->model, spec.layers, spec.projections, spec.count, spec.r,
                                             spec.scaling, spec.dropout));
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Lfm2_lora_clear(Lfm2Object *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    CA_COMPUTE(self, ca_lfm2_lora_clear(self->model));
    Py_RETURN_NONE;
}

static PyObject *Lfm2_lora_init(Lfm2Object *self, PyObject *args) {
    unsigned long long seed;
    int gaussian;
    if (!PyArg_ParseTuple(args, "Kp", &seed, &gaussian) || !ready(self)) return NULL;
    ca_status st;
    CA_COMPUTE(self, st = ca_lfm2_lora_init(self->model, seed, gaussian));
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Lfm2_lora_params(Lfm2Object *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    return ca_py_lora_buffer((PyObject *)self, self->model->num_lora, self->model->lora_params, self->model->lora_size);
}

static PyObject *Lfm2_lora_grads(Lfm2Object *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    return ca_py_lora_buffer((PyObject *)self, self->model->num_lora, self->model->lora_grads, self->model->lora_size);
}

static PyObject *Lfm2_lora_table(Lfm2Object *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    const ca_lfm2_model *m = self->model;
    PyObject *list = PyList_New(m->num_lora);
    for (int i = 0; list && i < m->num_lora; i++) {
        const ca_lora_adapter *a = &m->lora[i];
        PyObject *row = ca_py_lora_row(a->layer, ca_lfm2_proj_name(a->proj), a->r, a->in, a->out, a->a_offset,
                                       a->b_offset, a->scaling, a->dropout);
        if (!row) return Py_DECREF(list), NULL;
        PyList_SET_ITEM(list, i, row);
    }
    return list;
}

static PyObject *Lfm2_set_lora_enabled(Lfm2Object *self, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0 || !ready(self)) return NULL;
    CA_COMPUTE(self, self->model->lora_enabled = on);
    Py_RETURN_NONE;
}

static PyObject *Lfm2_set_lora_freeze_A(Lfm2Object *self, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0 || !ready(self)) return NULL;
    CA_COMPUTE(self, self->model->lora_freeze_A = on);
    Py_RETURN_NONE;
}

static PyObject *Lfm2_set_dropout_seed(Lfm2Object *self, PyObject *arg) {
    unsigned long long seed = PyLong_AsUnsignedLongLongMask(arg);
    if (PyErr_Occurred() || !ready(self)) return NULL;
    CA_COMPUTE(self, self->model->dropout_seed = seed);
    Py_RETURN_NONE;
}

static PyObject *Lfm2_lora_merge(Lfm2Object *self, PyObject *arg) {
    double sign = PyFloat_AsDouble(arg);
    if (PyErr_Occurred() || !ready(self)) return NULL;
    ca_status st;
    CA_COMPUTE(self, st = ca_lfm2_lora_merge(self->model, (float)sign));
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Lfm2_set_trainable(Lfm2Object *self, PyObject *args) {
    int index, on;
    if (!PyArg_ParseTuple(args, "ip", &index, &on) || !ready(self)) return NULL;
    ca_status st;
    CA_COMPUTE(self, st = ca_lfm2_set_trainable(self->model, index, on));
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Lfm2_trainable(Lfm2Object *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    PyObject *list = PyList_New(self->model->num_param_tensors);
    for (int i = 0; list && i < self->model->num_param_tensors; i++)
        PyList_SET_ITEM(list, i, PyBool_FromLong(self->model->trainable[i]));
    return list;
}

/* ---- decoding caches ---- */
typedef struct {
    PyObject_HEAD
    Lfm2Object *owner; /* keeps the model (and its backend) alive */
    ca_lfm2_cache *cache;
} CacheObject;

static PyTypeObject CacheType;

static void Cache_dealloc(CacheObject *self) {
    ca_lfm2_cache_free(self->cache);
    Py_XDECREF(self->owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Lfm2_new_cache(Lfm2Object *self, PyObject *arg) {
    long capacity = PyLong_AsLong(arg);
    if ((capacity == -1 && PyErr_Occurred()) || !ready(self)) return NULL;
    if (capacity <= 0 || capacity > INT32_MAX) return PyErr_Format(PyExc_ValueError, "cache capacity must be in [1, 2^31), got %ld", capacity);
    CacheObject *obj = PyObject_New(CacheObject, &CacheType);
    if (!obj) return NULL;
    obj->cache = NULL;
    Py_INCREF(self);
    obj->owner = self;
    ca_status st;
    Py_BEGIN_ALLOW_THREADS st = ca_lfm2_cache_create(self->model, (int)capacity, &obj->cache);
    Py_END_ALLOW_THREADS
    if (st != CA_OK) {
        Py_DECREF(obj);
        return ca_py_raise(st);
    }
    return (PyObject *)obj;
}

static PyObject *Cache_reset(CacheObject *self, PyObject *unused) {
    ca_lfm2_cache_reset(self->cache);
    Py_RETURN_NONE;
}

static PyObject *Cache_copy_from(CacheObject *self, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &CacheType)) return PyErr_Format(PyExc_TypeError, "copy_from expects a Cache");
    CacheObject *src = (CacheObject *)arg;
    if (src->owner != self->owner) return PyErr_Format(PyExc_ValueError, "caches belong to different models");
    ca_status st;
    CA_COMPUTE(self->owner, st = ca_lfm2_cache_copy(self->cache, src->cache));
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Cache_get_length(CacheObject *self, void *closure) { return PyLong_FromLong(self->cache->length); }
static PyObject *Cache_get_capacity(CacheObject *self, void *closure) { return PyLong_FromLong(self->cache->capacity); }

static PyMethodDef Cache_methods[] = {
    {"reset", (PyCFunction)Cache_reset, METH_NOARGS, "Forget the sequence (length 0, zero conv state)."},
    {"copy_from", (PyCFunction)Cache_copy_from, METH_O, "Take another cache's contents (same model)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Cache_getset[] = {
    {"length", (getter)Cache_get_length, NULL, "Positions consumed so far.", NULL},
    {"capacity", (getter)Cache_get_capacity, NULL, "Positions it can hold.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CacheType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "captionaura._core.Cache",
    .tp_basicsize = sizeof(CacheObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The decoding state of one sequence (KV per attention layer, conv state per conv layer).",
    .tp_dealloc = (destructor)Cache_dealloc,
    .tp_methods = Cache_methods,
    .tp_getset = Cache_getset,
};

static PyObject *Lfm2_forward_cached(Lfm2Object *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"caches", "input_ids", "lengths", "logits", "all_logits", "embeds", NULL};
    PyObject *caches_obj, *ids_obj, *lengths_obj, *logits_obj, *embeds_obj = Py_None;
    int all_logits = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO|pO", kwlist, &caches_obj, &ids_obj, &lengths_obj, &logits_obj,
                                     &all_logits, &embeds_obj))
        return NULL;
    if (!ready(self)) return NULL;
    ca_lfm2_model *m = self->model;
    PyArrayObject *ids = ca_py_array(ids_obj, NPY_INT32, 2, 0, "input_ids");
    if (!ids) return NULL;
    int B = (int)PyArray_DIM(ids, 0), T = (int)PyArray_DIM(ids, 1);
    PyArrayObject *lengths = ca_py_array_shape(lengths_obj, NPY_INT32, 1, (npy_intp[]){B}, 0, "lengths");
    if (!lengths) return NULL;
    PyArrayObject *logits = all_logits
        ? ca_py_array_shape(logits_obj, NPY_FLOAT32, 3, (npy_intp[]){B, T, m->cfg.vocab_size}, 1, "logits")
        : ca_py_array_shape(logits_obj, NPY_FLOAT32, 2, (npy_intp[]){B, m->cfg.vocab_size}, 1, "logits");
    if (!logits) return NULL;
    const float *embeds = NULL;
    if (embeds_obj != Py_None) {
        PyArrayObject *e = ca_py_array_shape(embeds_obj, NPY_FLOAT32, 3, (npy_intp[]){B, T, m->cfg.hidden_size}, 0, "embeds");
        if (!e) return NULL;
        embeds = PyArray_DATA(e);
    }
    PyObject *seq = PySequence_Fast(caches_obj, "caches must be a sequence of Cache objects");
    if (!seq) return NULL;
    if (PySequence_Fast_GET_SIZE(seq) != B) {
        Py_DECREF(seq);
        return PyErr_Format(PyExc_ValueError, "%d caches for a batch of %d sequences", (int)PySequence_Fast_GET_SIZE(seq), B);
    }
    ca_lfm2_cache **caches = PyMem_Calloc((size_t)B, sizeof *caches);
    if (!caches) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (int b = 0; b < B; b++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, b);
        if (!PyObject_TypeCheck(item, &CacheType) || ((CacheObject *)item)->owner != self) {
            PyMem_Free(caches);
            Py_DECREF(seq);
            return PyErr_Format(PyExc_TypeError, "caches[%d] is not a Cache of this model", b);
        }
        caches[b] = ((CacheObject *)item)->cache;
    }
    const int32_t *ids_p = PyArray_DATA(ids), *len_p = PyArray_DATA(lengths);
    float *logits_p = PyArray_DATA(logits);
    ca_status st;
    CA_COMPUTE(self, st = ca_lfm2_forward_cached(m, caches, ids_p, embeds, len_p, B, T, logits_p, all_logits));
    PyMem_Free(caches);
    Py_DECREF(seq);
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Lfm2_get_num_parameters(Lfm2Object *self, void *closure) {
    if (!ready(self)) return NULL;
    size_t total = 0;
    for (int i = 0; i < self->model->num_param_tensors; i++) total += self->model->param_info[i].numel;
    return PyLong_FromSize_t(total);
}

static PyObject *Lfm2_set_inference_dtype(Lfm2Object *self, PyObject *args) {
    if (!ready(self)) return NULL;
    const char *dtype;
    int keep_fp32 = 1;
    if (!PyArg_ParseTuple(args, "s|p", &dtype, &keep_fp32)) return NULL;
    ca_status st;
    Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(self->lock, WAIT_LOCK);
    st = ca_lfm2_set_inference_dtype(self->model, dtype, keep_fp32);
    PyThread_release_lock(self->lock);
    Py_END_ALLOW_THREADS
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *Lfm2_fp32_dropped(Lfm2Object *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    return PyBool_FromLong(self->model->fp32_dropped);
}

static PyObject *Lfm2_inference_dtype(Lfm2Object *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    return PyUnicode_FromString(ca_lfm2_inference_dtype(self->model));
}

static PyMethodDef Lfm2_methods[] = {
    {"set_inference_dtype", (PyCFunction)Lfm2_set_inference_dtype, METH_VARARGS,
     "set_inference_dtype('fp32' | 'bf16' | 'int8', keep_fp32=True): weights used for inference (bf16 and int8 "
     "round them in place; bf16 with keep_fp32=False gives back the matrices' fp32 values)."},
    {"inference_dtype", (PyCFunction)Lfm2_inference_dtype, METH_NOARGS, "'fp32', 'bf16' or 'int8'."},
    {"fp32_dropped", (PyCFunction)Lfm2_fp32_dropped, METH_NOARGS,
     "Whether the matrices' fp32 values are given back (keep_fp32=False)."},
    {"param_table", (PyCFunction)Lfm2_param_table, METH_NOARGS,
     "[(name, shape, offset, numel)] of every parameter tensor, in buffer order."},
    {"params", (PyCFunction)Lfm2_params, METH_NOARGS, "The flat float32 parameter buffer (a view)."},
    {"grads", (PyCFunction)Lfm2_grads, METH_NOARGS, "The flat float32 gradient buffer (a view)."},
    {"forward", (PyCFunction)(void (*)(void))Lfm2_forward, METH_VARARGS | METH_KEYWORDS,
     "forward(input_ids, attention_mask=None, logits=None, hidden_states=None): fills the given outputs."},
    {"loss_and_grad", (PyCFunction)(void (*)(void))Lfm2_loss_and_grad, METH_VARARGS | METH_KEYWORDS,
     "loss_and_grad(input_ids, labels, attention_mask=None, accumulate=False) -> mean causal-LM loss."},
    {"load_safetensors", (PyCFunction)(void (*)(void))Lfm2_load_safetensors, METH_VARARGS | METH_KEYWORDS,
     "load_safetensors(paths, prefix=None): reads every parameter from the given files."},
    {"save_safetensors", (PyCFunction)(void (*)(void))Lfm2_save_safetensors, METH_VARARGS | METH_KEYWORDS,
     "save_safetensors(path, prefix=None): writes every parameter as float32, atomically."},
    {"new_cache", (PyCFunction)Lfm2_new_cache, METH_O, "new_cache(capacity) -> Cache for one sequence."},
    {"forward_cached", (PyCFunction)(void (*)(void))Lfm2_forward_cached, METH_VARARGS | METH_KEYWORDS,
     "forward_cached(caches, input_ids (B,T), lengths (B), logits (B,V) or (B,T,V), all_logits=False, embeds=None)."},
    {"lora_add", (PyCFunction)(void (*)(void))Lfm2_lora_add, METH_VARARGS | METH_KEYWORDS,
     "lora_add(layers, projections, r, scaling, dropout=0): adapters on (layer, projection) pairs (int32 arrays)."},
    {"lora_clear", (PyCFunction)Lfm2_lora_clear, METH_NOARGS, "Remove every LoRA adapter."},
    {"lora_init", (PyCFunction)Lfm2_lora_init, METH_VARARGS, "lora_init(seed, gaussian): PEFT's A init, B = 0."},
    {"lora_params", (PyCFunction)Lfm2_lora_params, METH_NOARGS, "The flat LoRA buffer (a view), or None."},
    {"lora_grads", (PyCFunction)Lfm2_lora_grads, METH_NOARGS, "The flat LoRA gradient buffer (a view), or None."},
    {"lora_table", (PyCFunction)Lfm2_lora_table, METH_NOARGS,
     "[(layer, projection, r, in, out, a_offset, b_offset, scaling, dropout)] of every adapter."},
    {"set_lora_enabled", (PyCFunction)Lfm2_set_lora_enabled, METH_O, "Run with (True) or without (False) adapters."},
    {"set_lora_freeze_A", (PyCFunction)Lfm2_set_lora_freeze_A, METH_O, "Keep A fixed (FFA-LoRA): no A gradients."},
    {"set_dropout_seed", (PyCFunction)Lfm2_set_dropout_seed, METH_O, "Seed of the LoRA dropout masks."},
    {"lora_merge", (PyCFunction)Lfm2_lora_merge, METH_O, "lora_merge(sign): W += sign*scaling*B@A for every adapter."},
    {"set_trainable", (PyCFunction)Lfm2_set_trainable, METH_VARARGS,
     "set_trainable(index, on): whether base tensor `index` (param_table order) gets gradients."},
    {"trainable", (PyCFunction)Lfm2_trainable, METH_NOARGS, "Per base tensor: whether it gets gradients."},
    {"to_device", (PyCFunction)Lfm2_to_device, METH_O,
     "to_device(name): move parameters, gradients and adapters to the 'cpu' or 'cuda' backend."},
    {"set_profiling", (PyCFunction)Lfm2_set_profiling, METH_O,
     "set_profiling(on): route compute through the timing backend (see profile_report)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Lfm2_getset[] = {
    {"num_parameters", (getter)Lfm2_get_num_parameters, NULL, "Number of parameters.", NULL},
    {"backend", (getter)Lfm2_get_backend, NULL, "Name of the compute backend ('cpu', 'cpu-profiled', 'cuda').", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Lfm2Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "captionaura._core.Lfm2",
    .tp_basicsize = sizeof(Lfm2Object),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Lfm2(config_json, seed=None, init_std=0.02): the LFM2 text model of the C core.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lfm2_init,
    .tp_dealloc = (destructor)Lfm2_dealloc,
    .tp_methods = Lfm2_methods,
    .tp_getset = Lfm2_getset,
};

static PyObject *py_profile_report(PyObject *self, PyObject *unused) {
    const ca_profile *p = ca_profile_get();
    PyObject *ops = PyDict_New(), *gemms = PyList_New(0);
    if (!ops || !gemms) goto fail;
    for (int i = 0; i < CA_PROF_NUM_OPS; i++) {
        PyObject *v = Py_BuildValue("{s:d,s:l}", "seconds", p->seconds[i], "calls", p->calls[i]);
        if (!v || PyDict_SetItemString(ops, ca_prof_op_names[i], v) < 0) {
            Py_XDECREF(v);
            goto fail;
        }
        Py_DECREF(v);
    }
    for (int i = 0; i < p->num_gemms; i++) {
        const ca_prof_gemm *g = &p->gemms[i];
        PyObject *v = Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:l,s:d}", "trans_a", g->trans_a, "trans_b", g->trans_b,
                                    "M", g->M, "N", g->N, "K", g->K, "calls", g->calls, "seconds", g->seconds);
        if (!v || PyList_Append(gemms, v) < 0) {
            Py_XDECREF(v);
            goto fail;
        }
        Py_DECREF(v);
    }
    return Py_BuildValue("{s:N,s:N}", "ops", ops, "gemms", gemms);
fail:
    Py_XDECREF(ops);
    Py_XDECREF(gemms);
    return NULL;
}

static PyObject *py_profile_reset(PyObject *self, PyObject *unused) {
    ca_profile_reset();
    Py_RETURN_NONE;
}

static PyObject *py_sgemm_seconds(PyObject *self, PyObject *args) {
    int ta, tb, M, N, K, reps;
    if (!PyArg_ParseTuple(args, "ppiiii", &ta, &tb, &M, &N, &K, &reps)) return NULL;
    double seconds = 0;
    ca_status st;
    Py_BEGIN_ALLOW_THREADS ca_threads_apply();
    st = ca_sgemm_seconds(&seconds, ta, tb, M, N, K, reps);
    Py_END_ALLOW_THREADS
    if (st != CA_OK) return ca_py_raise(st);
    return PyFloat_FromDouble(seconds);
}

static PyObject *py_fma_peak_gflops(PyObject *self, PyObject *args) {
    int bf16 = 0, reps = 3;
    if (!PyArg_ParseTuple(args, "|pi", &bf16, &reps)) return NULL;
    double gflops = 0;
    ca_status st;
    Py_BEGIN_ALLOW_THREADS ca_threads_apply();
    st = ca_fma_peak_gflops(&gflops, bf16, reps);
    Py_END_ALLOW_THREADS
    if (st != CA_OK) return ca_py_raise(st);
    return PyFloat_FromDouble(gflops);
}

static PyObject *py_read_bandwidth_gbs(PyObject *self, PyObject *args) {
    Py_ssize_t mib = 512;
    int reps = 5;
    if (!PyArg_ParseTuple(args, "|ni", &mib, &reps)) return NULL;
    if (mib <= 0) {
        PyErr_SetString(PyExc_ValueError, "mib must be positive");
        return NULL;
    }
    double gbs = 0;
    ca_status st;
    Py_BEGIN_ALLOW_THREADS ca_threads_apply();
    st = ca_read_bandwidth_gbs(&gbs, (size_t)mib << 20, reps);
    Py_END_ALLOW_THREADS
    if (st != CA_OK) return ca_py_raise(st);
    return PyFloat_FromDouble(gbs);
}

PyMethodDef ca_py_model_methods[] = {
    {"profile_report", py_profile_report, METH_NOARGS, "Per-op seconds and per-GEMM-shape seconds of profiled runs."},
    {"profile_reset", py_profile_reset, METH_NOARGS, "Clear the profile counters."},
    {"sgemm_seconds", py_sgemm_seconds, METH_VARARGS,
     "sgemm_seconds(trans_a, trans_b, M, N, K, reps): best time of one raw cblas_sgemm of that shape."},
    {"fma_peak_gflops", py_fma_peak_gflops, METH_VARARGS,
     "fma_peak_gflops(bf16=False, reps=3): GFLOP/s of register-only FMAs (fp32, or bf16 vdpbf16ps) on the "
     "current thread count: the speed of light."},
    {"read_bandwidth_gbs", py_read_bandwidth_gbs, METH_VARARGS,
     "read_bandwidth_gbs(mib=512, reps=5): GB/s of the current thread count streaming reads over a mib-MiB buffer."},
    {NULL, NULL, 0, NULL},
};

int ca_py_model_init(PyObject *module) {
    if (PyType_Ready(&Lfm2Type) < 0 || PyType_Ready(&CacheType) < 0) return -1;
    PyObject *names = PyTuple_New(CA_NUM_PROJ);
    if (!names) return -1;
    for (int i = 0; i < CA_NUM_PROJ; i++) PyTuple_SET_ITEM(names, i, PyUnicode_FromString(ca_lfm2_proj_name(i)));
    if (PyModule_AddObject(module, "LFM2_PROJECTIONS", names) < 0) {
        Py_DECREF(names);
        return -1;
    }
    Py_INCREF(&Lfm2Type);
    if (PyModule_AddObject(module, "Lfm2", (PyObject *)&Lfm2Type) < 0) {
        Py_DECREF(&Lfm2Type);
        return -1;
    }
    return 0;
}

struct ca_lfm2_model *ca_py_lfm2_unwrap(PyObject *obj, void **lock) {
    if (!PyObject_TypeCheck(obj, &Lfm2Type)) {
        PyErr_Format(PyExc_TypeError, "expected a captionaura._core.Lfm2, got %.100s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    if (!ready((Lfm2Object *)obj)) return NULL;
    *lock = ((Lfm2Object *)obj)->lock;
    return ((Lfm2Object *)obj)->model;
}
