/* Python glue for the io area: safetensors read/write and LFM2 config resolution.
 * File I/O and dtype conversion run with the GIL released. */
#include "py_common.h"

#include <stdlib.h>
#include <string.h>

#include "captionaura/ca_config.h"
#include "captionaura/ca_safetensors.h"

/* Opens `path` (str or os.PathLike) without the GIL. Returns 0, or -1 with an exception set. */
static int open_safetensors(PyObject *path_obj, ca_safetensors *st) {
    PyObject *bytes = NULL;
    if (!PyUnicode_FSConverter(path_obj, &bytes)) return -1;
    const char *path = PyBytes_AS_STRING(bytes);
    ca_status status;
    Py_BEGIN_ALLOW_THREADS
    status = ca_safetensors_open(st, path);
    Py_END_ALLOW_THREADS
    Py_DECREF(bytes);
    if (status != CA_OK) {
        ca_py_raise(status);
        return -1;
    }
    return 0;
}

static PyObject *shape_tuple(const ca_st_tensor *t) {
    PyObject *shape = PyTuple_New(t->ndim);
    if (!shape) return NULL;
    for (int d = 0; d < t->ndim; d++) {
        PyObject *dim = PyLong_FromLongLong((long long)t->shape[d]);
        if (!dim) {
            Py_DECREF(shape);
            return NULL;
        }
        PyTuple_SET_ITEM(shape, d, dim);
    }
    return shape;
}

static PyObject *py_safetensors_header(PyObject *self, PyObject *path_obj) {
    ca_safetensors st;
    if (open_safetensors(path_obj, &st) < 0) return NULL;
    PyObject *list = PyList_New(st.num_tensors);
    if (!list) goto fail;
    for (int i = 0; i < st.num_tensors; i++) {
        const ca_st_tensor *t = &st.tensors[i];
        PyObject *shape = shape_tuple(t);
        if (!shape) goto fail;
        PyObject *item = Py_BuildValue("(ssNKK)", t->name, ca_dtype_name(t->dtype), shape,
                                       (unsigned long long)t->begin, (unsigned long long)t->end);
        if (!item) goto fail;
        PyList_SET_ITEM(list, i, item);
    }
    ca_safetensors_close(&st);
    return list;
fail:
    Py_XDECREF(list);
    ca_safetensors_close(&st);
    return NULL;
}

static PyObject *py_safetensors_metadata(PyObject *self, PyObject *path_obj) {
    ca_safetensors st;
    if (open_safetensors(path_obj, &st) < 0) return NULL;
    PyObject *dict = PyDict_New();
    for (int i = 0; dict && i < st.num_metadata; i++) {
        PyObject *value = PyUnicode_FromString(st.metadata[2 * i + 1]);
        if (!value || PyDict_SetItemString(dict, st.metadata[2 * i], value) < 0) Py_CLEAR(dict);
        Py_XDECREF(value);
    }
    ca_safetensors_close(&st);
    return dict;
}

static int numpy_type_of(ca_dtype dt) {
    switch (dt) {
    case CA_DT_I64: return NPY_INT64;
    case CA_DT_I32: return NPY_INT32;
    case CA_DT_I16: return NPY_INT16;
    case CA_DT_I8: return NPY_INT8;
    case CA_DT_U8: return NPY_UINT8;
    case CA_DT_BOOL: return NPY_BOOL;
    default: return NPY_FLOAT32; /* F32, F16, BF16, F64 are converted */
    }
}

/* One tensor as a new NumPy array: float dtypes converted to float32, integer/bool copied as is. */
static PyObject *load_tensor(const ca_safetensors *st, const ca_st_tensor *t) {
    npy_intp dims[CA_ST_MAX_DIMS];
    for (int d = 0; d < t->ndim; d++) dims[d] = (npy_intp)t->shape[d];
    int typenum = numpy_type_of(t->dtype);
    PyObject *arr = PyArray_SimpleNew(t->ndim, dims, typenum);
    if (!arr) return NULL;
    void *out = PyArray_DATA((PyArrayObject *)arr);
    size_t numel = ca_st_tensor_numel(t);
    ca_status status = CA_OK;
    Py_BEGIN_ALLOW_THREADS
    if (typenum == NPY_FLOAT32) {
        status = ca_safetensors_read_f32(st, t, out, numel);
    } else if (t->end > t->begin) {
        memcpy(out, ca_safetensors_tensor_data(st, t), (size_t)(t->end - t->begin));
    }
    Py_END_ALLOW_THREADS
    if (status != CA_OK) {
        Py_DECREF(arr);
        return ca_py_raise(status);
    }
    return arr;
}

static PyObject *py_safetensors_load(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"path", "names", NULL};
    PyObject *path_obj, *names = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:safetensors_load", kwlist, &path_obj, &names)) return NULL;
    ca_safetensors st;
    if (open_safetensors(path_obj, &st) < 0) return NULL;
    PyObject *result = PyDict_New(), *seq = NULL;
    if (!result) goto fail;
    if (names == Py_None) {
        for (int i = 0; i < st.num_tensors; i++) {
            PyObject *arr = load_tensor(&st, &st.tensors[i]);
            if (!arr) goto fail;
            int rc = PyDict_SetItemString(result, st.tensors[i].name, arr);
            Py_DECREF(arr);
            if (rc < 0) goto fail;
        }
    } else {
        seq = PySequence_Fast(names, "names must be a sequence of str");
        if (!seq) goto fail;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *name_obj = PySequence_Fast_GET_ITEM(seq, i);
            const char *name = PyUnicode_Check(name_obj) ? PyUnicode_AsUTF8(name_obj) : NULL;
            if (!name) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "names must be a sequence of str");
                goto fail;
            }
            const ca_st_tensor *t = ca_safetensors_find(&st, name);
            if (!t) {
                PyErr_Format(PyExc_KeyError, "%s: no tensor named '%s'", st.path, name);
                goto fail;
            }
            PyObject *arr = load_tensor(&st, t);
            if (!arr) goto fail;
            int rc = PyDict_SetItem(result, name_obj, arr);
            Py_DECREF(arr);
            if (rc < 0) goto fail;
        }
    }
    Py_XDECREF(seq);
    ca_safetensors_close(&st);
    return result;
fail:
    Py_XDECREF(seq);
    Py_XDECREF(result);
    ca_safetensors_close(&st);
    return NULL;
}

static PyObject *py_safetensors_index(PyObject *self, PyObject *path_obj) {
    PyObject *bytes = NULL;
    if (!PyUnicode_FSConverter(path_obj, &bytes)) return NULL;
    ca_st_index idx;
    ca_status status;
    const char *path = PyBytes_AS_STRING(bytes);
    Py_BEGIN_ALLOW_THREADS
    status = ca_safetensors_index_read(&idx, path);
    Py_END_ALLOW_THREADS
    Py_DECREF(bytes);
    if (status != CA_OK) return ca_py_raise(status);
    PyObject *dict = PyDict_New();
    for (int i = 0; dict && i < idx.num_names; i++) {
        PyObject *file = PyUnicode_FromString(idx.files[idx.file_of[i]]);
        if (!file || PyDict_SetItemString(dict, idx.names[i], file) < 0) Py_CLEAR(dict);
        Py_XDECREF(file);
    }
    ca_safetensors_index_free(&idx);
    return dict;
}

/* NumPy type -> stored dtype; uint16 has no default (it carries bf16 bits only with an explicit override). */
static int dtype_of_numpy(int typenum, ca_dtype *out) {
    switch (typenum) {
    case NPY_FLOAT32: *out = CA_DT_F32; return 1;
    case NPY_FLOAT16: *out = CA_DT_F16; return 1;
    case NPY_FLOAT64: *out = CA_DT_F64; return 1;
    case NPY_INT64: *out = CA_DT_I64; return 1;
    case NPY_INT32: *out = CA_DT_I32; return 1;
    case NPY_INT16: *out = CA_DT_I16; return 1;
    case NPY_INT8: *out = CA_DT_I8; return 1;
    case NPY_UINT8: *out = CA_DT_U8; return 1;
    case NPY_BOOL: *out = CA_DT_BOOL; return 1;
    default: return 0;
    }
}

static PyObject *py_safetensors_save(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"path", "tensors", "metadata", "dtypes", NULL};
    PyObject *path_obj, *tensors, *metadata = Py_None, *dtypes = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO!|OO:safetensors_save", kwlist, &path_obj, &PyDict_Type,
                                     &tensors, &metadata, &dtypes))
        return NULL;
    if (metadata != Py_None && !PyDict_Check(metadata)) {
        PyErr_SetString(PyExc_TypeError, "metadata must be a dict of str to str or None");
        return NULL;
    }
    if (dtypes != Py_None && !PyDict_Check(dtypes)) {
        PyErr_SetString(PyExc_TypeError, "dtypes must be a dict of tensor name to dtype string or None");
        return NULL;
    }
    PyObject *path_bytes = NULL;
    if (!PyUnicode_FSConverter(path_obj, &path_bytes)) return NULL;

    Py_ssize_t n = PyDict_Size(tensors);
    Py_ssize_t nmeta = metadata == Py_None ? 0 : PyDict_Size(metadata);
    if (n > INT32_MAX || nmeta > INT32_MAX / 2) {
        Py_DECREF(path_bytes);
        PyErr_SetString(PyExc_ValueError, "too many tensors or metadata entries");
        return NULL;
    }
    ca_st_item *items = calloc((size_t)n + 1, sizeof *items);
    int64_t *shapes = calloc(((size_t)n + 1) * CA_ST_MAX_DIMS, sizeof *shapes);
    PyObject **arrays = calloc((size_t)n + 1, sizeof *arrays);
    const char **meta_kv = calloc(2 * (size_t)nmeta + 1, sizeof *meta_kv);
    PyObject *result = NULL;
    /* Owns every name and metadata string used while the GIL is released, so another thread mutating the
     * dicts cannot free them under the writer. */
    PyObject *keep = PyList_New(0);
    Py_ssize_t count = 0;
    if (!keep) goto done;
    if (!items || !shapes || !arrays || !meta_kv) {
        PyErr_NoMemory();
        goto done;
    }

    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(tensors, &pos, &key, &value)) {
        if (!PyUnicode_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "tensor names must be str");
            goto done;
        }
        const char *name = PyUnicode_AsUTF8(key);
        if (!name || PyList_Append(keep, key) < 0) goto done;
        if (!PyArray_Check(value)) {
            PyErr_Format(PyExc_TypeError, "tensor '%s' must be a numpy array, got %.100s", name,
                         Py_TYPE(value)->tp_name);
            goto done;
        }
        /* A native-byte-order, C-contiguous, aligned array of the same type (copied only when needed). */
        PyArray_Descr *descr = PyArray_DescrNewByteorder(PyArray_DESCR((PyArrayObject *)value), NPY_NATIVE);
        if (!descr) goto done;
        PyObject *arr = PyArray_FromAny(value, descr, 0, 0, NPY_ARRAY_CARRAY_RO | NPY_ARRAY_NOTSWAPPED, NULL);
        if (!arr) goto done;
        arrays[count] = arr;
        ca_st_item *it = &items[count];
        PyArrayObject *a = (PyArrayObject *)arr;
        int typenum = PyArray_TYPE(a);
        int have = dtype_of_numpy(typenum, &it->dtype);
        PyObject *override = dtypes == Py_None ? NULL : PyDict_GetItemWithError(dtypes, key);
        if (!override && PyErr_Occurred()) goto done;
        if (override) {
            const char *dname = PyUnicode_Check(override) ? PyUnicode_AsUTF8(override) : NULL;
            if (!dname) {
                if (!PyErr_Occurred()) PyErr_Format(PyExc_TypeError, "dtypes['%s'] must be a str", name);
                goto done;
            }
            if (ca_dtype_from_name(dname, &it->dtype) != CA_OK) {
                ca_clear_error();
                PyErr_Format(PyExc_ValueError, "dtypes['%s']: unknown dtype '%s'", name, dname);
                goto done;
            }
            if (ca_dtype_size(it->dtype) != (size_t)PyArray_ITEMSIZE(a)) {
                PyErr_Format(PyExc_ValueError, "dtypes['%s'] = %s needs %zu-byte elements, the array has %zd-byte",
                             name, dname, ca_dtype_size(it->dtype), (Py_ssize_t)PyArray_ITEMSIZE(a));
                goto done;
            }
        } else if (!have) {
            PyErr_Format(PyExc_TypeError,
                         "tensor '%s': numpy dtype %c is not supported (use float32/float16/float64/int*/uint8/bool, "
                         "or a uint16 array with dtypes={'%s': 'BF16'})",
                         name, PyArray_DESCR(a)->type, name);
            goto done;
        }
        if (PyArray_NDIM(a) > CA_ST_MAX_DIMS) {
            PyErr_Format(PyExc_ValueError, "tensor '%s' has %d dimensions, at most %d supported", name,
                         PyArray_NDIM(a), CA_ST_MAX_DIMS);
            goto done;
        }
        it->name = name; /* borrowed from the dict key, alive for the call */
        it->ndim = PyArray_NDIM(a);
        int64_t *shape = shapes + (size_t)count * CA_ST_MAX_DIMS;
        for (int d = 0; d < it->ndim; d++) shape[d] = (int64_t)PyArray_DIM(a, d);
        it->shape = shape;
        it->data = PyArray_DATA(a);
        count++;
    }
    if (dtypes != Py_None) {
        pos = 0;
        while (PyDict_Next(dtypes, &pos, &key, &value)) {
            int has = PyDict_Contains(tensors, key);
            if (has < 0) goto done;
            if (!has) {
                PyErr_Format(PyExc_KeyError, "dtypes names '%S', which is not among the tensors", key);
                goto done;
            }
        }
    }
    Py_ssize_t m = 0;
    pos = 0;
    while (metadata != Py_None && PyDict_Next(metadata, &pos, &key, &value)) {
        if (!PyUnicode_Check(key) || !PyUnicode_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "metadata must map str to str");
            goto done;
        }
        meta_kv[2 * m] = PyUnicode_AsUTF8(key);
        meta_kv[2 * m + 1] = PyUnicode_AsUTF8(value);
        if (!meta_kv[2 * m] || !meta_kv[2 * m + 1]) goto done;
        if (PyList_Append(keep, key) < 0 || PyList_Append(keep, value) < 0) goto done;
        m++;
    }

    ca_status status;
    const char *path = PyBytes_AS_STRING(path_bytes);
    Py_BEGIN_ALLOW_THREADS
    status = ca_safetensors_write(path, items, (int)count, meta_kv, (int)m);
    Py_END_ALLOW_THREADS
    if (status != CA_OK) {
        ca_py_raise(status);
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    for (Py_ssize_t i = 0; arrays && i < count + 1 && i <= n; i++) Py_XDECREF(arrays[i]);
    free(items);
    free(shapes);
    free(arrays);
    free(meta_kv);
    Py_XDECREF(keep);
    Py_DECREF(path_bytes);
    return result;
}

/* ---- config ------------------------------------------------------------------------------------------ */

static int set_item(PyObject *dict, const char *key, PyObject *value) {
    if (!value) return -1;
    int rc = PyDict_SetItemString(dict, key, value);
    Py_DECREF(value);
    return rc;
}

static PyObject *token_or_none(int id) {
    if (id < 0) Py_RETURN_NONE;
    return PyLong_FromLong(id);
}

/* Every ca_lfm2_config field by name (plus layer_types as strings). */
static PyObject *config_to_dict(const ca_lfm2_config *c) {
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    int n = c->num_hidden_layers;
    PyObject *is_attn = PyList_New(n), *types = PyList_New(n);
    if (!is_attn || !types) goto fail_lists;
    for (int i = 0; i < n; i++) {
        PyObject *b = c->layer_is_attention[i] ? Py_True : Py_False;
        Py_INCREF(b);
        PyList_SET_ITEM(is_attn, i, b);
        PyObject *s = PyUnicode_FromString(c->layer_is_attention[i] ? "full_attention" : "conv");
        if (!s) goto fail_lists;
        PyList_SET_ITEM(types, i, s);
    }
    PyObject *mult;
    if (c->has_block_ffn_dim_multiplier) mult = PyFloat_FromDouble(c->block_ffn_dim_multiplier);
    else { mult = Py_None; Py_INCREF(mult); }
    if (set_item(d, "vocab_size", PyLong_FromLong(c->vocab_size)) < 0 ||
        set_item(d, "hidden_size", PyLong_FromLong(c->hidden_size)) < 0 ||
        set_item(d, "intermediate_size", PyLong_FromLong(c->intermediate_size)) < 0 ||
        set_item(d, "ffn_dim", PyLong_FromLong(c->ffn_dim)) < 0 ||
        set_item(d, "num_hidden_layers", PyLong_FromLong(c->num_hidden_layers)) < 0 ||
        set_item(d, "num_attention_heads", PyLong_FromLong(c->num_attention_heads)) < 0 ||
        set_item(d, "num_key_value_heads", PyLong_FromLong(c->num_key_value_heads)) < 0 ||
        set_item(d, "head_dim", PyLong_FromLong(c->head_dim)) < 0 ||
        set_item(d, "conv_L_cache", PyLong_FromLong(c->conv_L_cache)) < 0 ||
        set_item(d, "conv_bias", PyBool_FromLong(c->conv_bias)) < 0 ||
        set_item(d, "block_multiple_of", PyLong_FromLong(c->block_multiple_of)) < 0 ||
        set_item(d, "block_auto_adjust_ff_dim", PyBool_FromLong(c->block_auto_adjust_ff_dim)) < 0 ||
        set_item(d, "block_ffn_dim_multiplier", mult) < 0 ||
        set_item(d, "norm_eps", PyFloat_FromDouble(c->norm_eps)) < 0 ||
        set_item(d, "rope_theta", PyFloat_FromDouble(c->rope_theta)) < 0 ||
        set_item(d, "max_position_embeddings", PyLong_FromLong(c->max_position_embeddings)) < 0 ||
        set_item(d, "tie_word_embeddings", PyBool_FromLong(c->tie_word_embeddings)) < 0 ||
        set_item(d, "pad_token_id", token_or_none(c->pad_token_id)) < 0 ||
        set_item(d, "bos_token_id", token_or_none(c->bos_token_id)) < 0 ||
        set_item(d, "eos_token_id", token_or_none(c->eos_token_id)) < 0 ||
        set_item(d, "layer_is_attention", is_attn) < 0 || set_item(d, "layer_types", types) < 0) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
fail_lists:
    Py_XDECREF(is_attn);
    Py_XDECREF(types);
    Py_DECREF(d);
    return NULL;
}

static PyObject *py_lfm2_config_resolve(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"json_text", "validate", NULL};
    PyObject *text_obj;
    int validate = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|p:lfm2_config_resolve", kwlist, &text_obj, &validate))
        return NULL;
    const char *text;
    Py_ssize_t len;
    if (PyUnicode_Check(text_obj)) {
        text = PyUnicode_AsUTF8AndSize(text_obj, &len);
        if (!text) return NULL;
    } else if (PyBytes_Check(text_obj)) {
        text = PyBytes_AS_STRING(text_obj);
        len = PyBytes_GET_SIZE(text_obj);
    } else {
        PyErr_SetString(PyExc_TypeError, "json_text must be str or bytes");
        return NULL;
    }
    ca_lfm2_config cfg;
    ca_status status = ca_lfm2_config_from_json(&cfg, text, (size_t)len);
    if (status == CA_OK && validate) status = ca_lfm2_config_validate(&cfg);
    if (status != CA_OK) return ca_py_raise(status);
    return config_to_dict(&cfg);
}

PyMethodDef ca_py_io_methods[] = {
    {"safetensors_header", py_safetensors_header, METH_O,
     "safetensors_header(path) -> list of (name, dtype, shape, begin, end) in file order; validates the file."},
    {"safetensors_metadata", py_safetensors_metadata, METH_O,
     "safetensors_metadata(path) -> dict of the header's __metadata__ strings."},
    {"safetensors_index", py_safetensors_index, METH_O,
     "safetensors_index(path) -> dict tensor name -> shard file name, from a model.safetensors.index.json "
     "(shard names must be plain file names)."},
    {"safetensors_load", (PyCFunction)(void (*)(void))py_safetensors_load, METH_VARARGS | METH_KEYWORDS,
     "safetensors_load(path, names=None) -> dict name -> ndarray (F32/F16/BF16/F64 converted to float32, "
     "integer and bool tensors copied as is)."},
    {"safetensors_save", (PyCFunction)(void (*)(void))py_safetensors_save, METH_VARARGS | METH_KEYWORDS,
     "safetensors_save(path, tensors, metadata=None, dtypes=None): writes path atomically (path.tmp, fsync, "
     "rename). dtypes maps a name to a stored dtype string of the same element size, e.g. a uint16 array "
     "holding bfloat16 bits with {'name': 'BF16'}."},
    {"lfm2_config_resolve", (PyCFunction)(void (*)(void))py_lfm2_config_resolve, METH_VARARGS | METH_KEYWORDS,
     "lfm2_config_resolve(json_text, validate=True) -> dict of every resolved Lfm2 config field (aliases, "
     "layer types and the FFN auto-adjust rule applied)."},
    {NULL, NULL, 0, NULL},
};
