/* Python glue for the ops area: every CPU op, forward and backward, as _core.<op>_forward/_backward on
 * preallocated NumPy arrays, outputs first like the C (used by tests/test_ops.py and, later, to compare the
 * CUDA backend against the CPU one). Sizes come from the input arrays' shapes; every other array's shape is
 * checked against them, dtypes are float32 (int32 for ids/positions/targets/masks), C-contiguous. Index
 * arrays are range-checked here because the ops themselves never fail. The GIL is released around compute. */
#include "py_common.h"

#include <limits.h>

#include "captionaura/ca_backend.h"
#include "captionaura/ca_ops.h"

/* The backend these bindings call (set_ops_backend): the CPU one, or the CUDA table to compare the two on
 * the same inputs (its ops then need device-accessible arrays: _core.cuda_array). */
static const ca_backend *ops_be = &ca_cpu_backend;

#define F32 NPY_FLOAT32
#define I32 NPY_INT32
#define SHAPE(...) ((const npy_intp[]){__VA_ARGS__})
#define FP(a) ((float *)PyArray_DATA(a))
#define CFP(a) ((const float *)PyArray_DATA(a))
#define IP(a) ((const int32_t *)PyArray_DATA(a))
#define OFP(a) ((a) ? (float *)PyArray_DATA(a) : NULL)
#define OIP(a) ((a) ? (const int32_t *)PyArray_DATA(a) : NULL)

/* An array whose shape defines the sizes: `ndim` dimensions, each in [1, INT_MAX]. */
#define DRIVER(var, obj, type, nd, name)                                                                      \
    PyArrayObject *var = ca_py_array(obj, type, nd, 0, name);                                                 \
    if (!var || !dims_ok(var, name)) return NULL;
/* An array whose shape must equal `shp`. */
#define ARR(var, obj, type, nd, shp, w, name)                                                                 \
    PyArrayObject *var = ca_py_array_shape(obj, type, nd, shp, w, name);                                      \
    if (!var) return NULL;
/* Same, or None (NULL). */
#define OPT(var, obj, type, nd, shp, w, name)                                                                 \
    PyArrayObject *var = NULL;                                                                                \
    if ((obj) != Py_None) {                                                                                   \
        var = ca_py_array_shape(obj, type, nd, shp, w, name);                                                 \
        if (!var) return NULL;                                                                                \
    }

static int dims_ok(PyArrayObject *a, const char *what) {
    for (int i = 0; i < PyArray_NDIM(a); i++) {
        npy_intp d = PyArray_DIM(a, i);
        if (d < 1 || d > INT_MAX) {
            PyErr_Format(PyExc_ValueError, "%s has size %zd in dimension %d, expected 1..%d", what, (Py_ssize_t)d,
                         i, INT_MAX);
            return 0;
        }
    }
    return 1;
}

#define DIM(a, i) ((int)PyArray_DIM(a, i))

/* Every entry in [0, hi), or equal to `allowed` (pass 0 when none is allowed besides the range). */
static int check_range(PyArrayObject *a, int hi, int has_allowed, int allowed, const char *what) {
    const int32_t *p = IP(a);
    npy_intp n = PyArray_SIZE(a);
    for (npy_intp i = 0; i < n; i++) {
        if ((p[i] < 0 || p[i] >= hi) && !(has_allowed && p[i] == allowed)) {
            if (has_allowed)
                PyErr_Format(PyExc_IndexError, "%s[%zd] = %d is outside [0, %d) and is not %d", what, (Py_ssize_t)i,
                             p[i], hi, allowed);
            else
                PyErr_Format(PyExc_IndexError, "%s[%zd] = %d is outside [0, %d)", what, (Py_ssize_t)i, p[i], hi);
            return 0;
        }
    }
    return 1;
}

/* Runs an op without the GIL, then raises a device backend's failure (the CPU's status is NULL). */
#define NOGIL(call)                                                                                           \
    do {                                                                                                      \
        Py_BEGIN_ALLOW_THREADS ca_threads_apply(); call;                                                      \
        Py_END_ALLOW_THREADS                                                                                  \
        ca_status nogil_status_ = ca_backend_status(ops_be);                                                  \
        if (nogil_status_ != CA_OK) return ca_py_raise(nogil_status_);                                        \
    } while (0)

static PyObject *py_set_ops_backend(PyObject *self, PyObject *arg) {
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    const ca_backend *be = ca_py_backend_named(name);
    if (!be) return NULL;
    const char *previous = ops_be->name;
    ops_be = be;
    return PyUnicode_FromString(previous);
}

/* ---- embedding ---- */
static PyObject *py_embedding_forward(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_ids, *o_wte;
    if (!PyArg_ParseTuple(args, "OOO:embedding_forward", &o_out, &o_ids, &o_wte)) return NULL;
    DRIVER(wte, o_wte, F32, 2, "wte");
    DRIVER(ids, o_ids, I32, 1, "ids");
    int V = DIM(wte, 0), C = DIM(wte, 1), N = DIM(ids, 0);
    ARR(out, o_out, F32, 2, SHAPE(N, C), 1, "out");
    if (!check_range(ids, V, 0, 0, "ids")) return NULL;
    NOGIL(ops_be->embedding_forward(FP(out), IP(ids), CFP(wte), N, C));
    Py_RETURN_NONE;
}

static PyObject *py_embedding_backward(PyObject *self, PyObject *args) {
    PyObject *o_dwte, *o_dout, *o_ids;
    if (!PyArg_ParseTuple(args, "OOO:embedding_backward", &o_dwte, &o_dout, &o_ids)) return NULL;
    DRIVER(dwte, o_dwte, F32, 2, "dwte");
    DRIVER(ids, o_ids, I32, 1, "ids");
    int V = DIM(dwte, 0), C = DIM(dwte, 1), N = DIM(ids, 0);
    if (!PyArray_ISWRITEABLE(dwte)) return PyErr_Format(PyExc_ValueError, "dwte must be writable");
    ARR(dout, o_dout, F32, 2, SHAPE(N, C), 0, "dout");
    if (!check_range(ids, V, 0, 0, "ids")) return NULL;
    NOGIL(ops_be->embedding_backward(FP(dwte), CFP(dout), IP(ids), N, C));
    Py_RETURN_NONE;
}

/* ---- rmsnorm ---- */
static PyObject *py_rmsnorm_forward(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_rstd, *o_inp, *o_w;
    float eps;
    if (!PyArg_ParseTuple(args, "OOOOf:rmsnorm_forward", &o_out, &o_rstd, &o_inp, &o_w, &eps)) return NULL;
    DRIVER(inp, o_inp, F32, 2, "inp");
    int N = DIM(inp, 0), C = DIM(inp, 1);
    ARR(w, o_w, F32, 1, SHAPE(C), 0, "weight");
    ARR(out, o_out, F32, 2, SHAPE(N, C), 1, "out");
    ARR(rstd, o_rstd, F32, 1, SHAPE(N), 1, "rstd");
    NOGIL(ops_be->rmsnorm_forward(FP(out), FP(rstd), CFP(inp), CFP(w), N, C, eps));
    Py_RETURN_NONE;
}

static PyObject *py_rmsnorm_backward(PyObject *self, PyObject *args) {
    PyObject *o_dinp, *o_dw, *o_dout, *o_inp, *o_w, *o_rstd;
    if (!PyArg_ParseTuple(args, "OOOOOO:rmsnorm_backward", &o_dinp, &o_dw, &o_dout, &o_inp, &o_w, &o_rstd))
        return NULL;
    DRIVER(inp, o_inp, F32, 2, "inp");
    int N = DIM(inp, 0), C = DIM(inp, 1);
    ARR(dinp, o_dinp, F32, 2, SHAPE(N, C), 1, "dinp");
    OPT(dw, o_dw, F32, 1, SHAPE(C), 1, "dweight");
    ARR(dout, o_dout, F32, 2, SHAPE(N, C), 0, "dout");
    ARR(w, o_w, F32, 1, SHAPE(C), 0, "weight");
    ARR(rstd, o_rstd, F32, 1, SHAPE(N), 0, "rstd");
    NOGIL(ops_be->rmsnorm_backward(FP(dinp), OFP(dw), CFP(dout), CFP(inp), CFP(w), CFP(rstd), N, C));
    Py_RETURN_NONE;
}

/* ---- linear ---- */
static PyObject *py_linear_forward(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_inp, *o_w, *o_b = Py_None;
    if (!PyArg_ParseTuple(args, "OOO|O:linear_forward", &o_out, &o_inp, &o_w, &o_b)) return NULL;
    DRIVER(inp, o_inp, F32, 2, "inp");
    DRIVER(w, o_w, F32, 2, "weight");
    int N = DIM(inp, 0), C = DIM(inp, 1), OC = DIM(w, 0);
    if (DIM(w, 1) != C)
        return PyErr_Format(PyExc_ValueError, "weight has %d input features, inp has %d", DIM(w, 1), C);
    OPT(b, o_b, F32, 1, SHAPE(OC), 0, "bias");
    ARR(out, o_out, F32, 2, SHAPE(N, OC), 1, "out");
    NOGIL(ops_be->linear_forward(FP(out), CFP(inp), CFP(w), OFP(b), N, C, OC));
    Py_RETURN_NONE;
}

static PyObject *py_linear_backward(PyObject *self, PyObject *args) {
    PyObject *o_dinp, *o_dw, *o_db, *o_dout, *o_inp, *o_w;
    int accumulate = 0;
    if (!PyArg_ParseTuple(args, "OOOOOO|p:linear_backward", &o_dinp, &o_dw, &o_db, &o_dout, &o_inp, &o_w,
                          &accumulate))
        return NULL;
    DRIVER(inp, o_inp, F32, 2, "inp");
    DRIVER(w, o_w, F32, 2, "weight");
    int N = DIM(inp, 0), C = DIM(inp, 1), OC = DIM(w, 0);
    if (DIM(w, 1) != C)
        return PyErr_Format(PyExc_ValueError, "weight has %d input features, inp has %d", DIM(w, 1), C);
    OPT(dinp, o_dinp, F32, 2, SHAPE(N, C), 1, "dinp");
    OPT(dw, o_dw, F32, 2, SHAPE(OC, C), 1, "dweight");
    OPT(db, o_db, F32, 1, SHAPE(OC), 1, "dbias");
    ARR(dout, o_dout, F32, 2, SHAPE(N, OC), 0, "dout");
    NOGIL(ops_be->linear_backward(OFP(dinp), OFP(dw), OFP(db), CFP(dout), CFP(inp), CFP(w), N, C, OC, accumulate));
    Py_RETURN_NONE;
}

/* ---- low-precision decoding GEMVs (linear_lowp.c), CPU only ---- */
static PyObject *py_linear_q8_forward(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_inp, *o_q, *o_scale;
    if (!PyArg_ParseTuple(args, "OOOO:linear_q8_forward", &o_out, &o_inp, &o_q, &o_scale)) return NULL;
    DRIVER(inp, o_inp, F32, 2, "inp");
    DRIVER(q, o_q, NPY_INT8, 2, "weight");
    int N = DIM(inp, 0), C = DIM(inp, 1), OC = DIM(q, 0);
    if (DIM(q, 1) != C) return PyErr_Format(PyExc_ValueError, "weight has %d input features, inp has %d", DIM(q, 1), C);
    ARR(scale, o_scale, F32, 1, SHAPE(OC), 0, "scale");
    ARR(out, o_out, F32, 2, SHAPE(N, OC), 1, "out");
    NOGIL(ca_cpu_linear_q8_forward(FP(out), CFP(inp), (const int8_t *)PyArray_DATA(q), CFP(scale), N, C, OC));
    Py_RETURN_NONE;
}

/* The decoding GEMVs: weight (OC, C) as bf16 bits (uint16) or fp32, the dtype the named op takes. */
static PyObject *linear_gemv(PyObject *args, const char *format, int weight_type) {
    PyObject *o_out, *o_inp, *o_w;
    if (!PyArg_ParseTuple(args, format, &o_out, &o_inp, &o_w)) return NULL;
    DRIVER(inp, o_inp, F32, 2, "inp");
    DRIVER(w, o_w, weight_type, 2, "weight");
    int N = DIM(inp, 0), C = DIM(inp, 1), OC = DIM(w, 0);
    if (DIM(w, 1) != C) return PyErr_Format(PyExc_ValueError, "weight has %d input features, inp has %d", DIM(w, 1), C);
    ARR(out, o_out, F32, 2, SHAPE(N, OC), 1, "out");
    if (weight_type == F32) NOGIL(ca_cpu_linear_f32_gemv_forward(FP(out), CFP(inp), CFP(w), N, C, OC));
    else NOGIL(ca_cpu_linear_bf16_forward(FP(out), CFP(inp), (const uint16_t *)PyArray_DATA(w), N, C, OC));
    Py_RETURN_NONE;
}

static PyObject *py_linear_bf16_forward(PyObject *self, PyObject *args) {
    return linear_gemv(args, "OOO:linear_bf16_forward", NPY_UINT16);
}

static PyObject *py_linear_f32_gemv_forward(PyObject *self, PyObject *args) {
    return linear_gemv(args, "OOO:linear_f32_gemv_forward", F32);
}

static PyObject *py_linear_bf16_gemm_forward(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_inp, *o_w, *o_wf;
    if (!PyArg_ParseTuple(args, "OOOO:linear_bf16_gemm_forward", &o_out, &o_inp, &o_w, &o_wf)) return NULL;
    DRIVER(inp, o_inp, F32, 2, "inp");
    DRIVER(w, o_w, NPY_UINT16, 2, "weight");
    int N = DIM(inp, 0), C = DIM(inp, 1), OC = DIM(w, 0);
    if (DIM(w, 1) != C) return PyErr_Format(PyExc_ValueError, "weight has %d input features, inp has %d", DIM(w, 1), C);
    ARR(wf, o_wf, F32, 2, SHAPE(OC, C), 0, "weight_f32");
    ARR(out, o_out, F32, 2, SHAPE(N, OC), 1, "out");
    int rc = 0;
    NOGIL(rc = ca_cpu_linear_bf16_gemm_forward(FP(out), CFP(inp), (const uint16_t *)PyArray_DATA(w), CFP(wf), N, C, OC));
    if (rc != 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_linear_q8_gemm_forward(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_inp, *o_q, *o_scale, *o_wf;
    if (!PyArg_ParseTuple(args, "OOOOO:linear_q8_gemm_forward", &o_out, &o_inp, &o_q, &o_scale, &o_wf)) return NULL;
    DRIVER(inp, o_inp, F32, 2, "inp");
    DRIVER(q, o_q, NPY_INT8, 2, "q");
    int N = DIM(inp, 0), C = DIM(inp, 1), OC = DIM(q, 0);
    if (DIM(q, 1) != C) return PyErr_Format(PyExc_ValueError, "q has %d input features, inp has %d", DIM(q, 1), C);
    ARR(scale, o_scale, F32, 1, SHAPE(OC), 0, "scale");
    ARR(wf, o_wf, F32, 2, SHAPE(OC, C), 0, "weight_f32");
    ARR(out, o_out, F32, 2, SHAPE(N, OC), 1, "out");
    int rc = 0;
    NOGIL(rc = ca_cpu_linear_q8_gemm_forward(FP(out), CFP(inp), (const int8_t *)PyArray_DATA(q), CFP(scale), CFP(wf), N,
                                             C, OC));
    if (rc != 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_linear_bf16_gemm_weight_grad(PyObject *self, PyObject *args) {
    PyObject *o_dw, *o_dout, *o_inp;
    if (!PyArg_ParseTuple(args, "OOO:linear_bf16_gemm_weight_grad", &o_dw, &o_dout, &o_inp)) return NULL;
    DRIVER(dout, o_dout, F32, 2, "dout");
    DRIVER(inp, o_inp, F32, 2, "inp");
    int N = DIM(dout, 0), OC = DIM(dout, 1), C = DIM(inp, 1);
    if (DIM(inp, 0) != N) return PyErr_Format(PyExc_ValueError, "inp has %d rows, dout has %d", DIM(inp, 0), N);
    ARR(dw, o_dw, F32, 2, SHAPE(OC, C), 1, "dweight");
    int rc = 0;
    NOGIL(rc = ca_cpu_linear_bf16_gemm_weight_grad(FP(dw), CFP(dout), CFP(inp), N, C, OC));
    if (rc != 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_linear_bf16_gemm_backward(PyObject *self, PyObject *args) {
    PyObject *o_dinp, *o_dout, *o_w, *o_wf;
    int accumulate = 0;
    if (!PyArg_ParseTuple(args, "OOOO|p:linear_bf16_gemm_backward", &o_dinp, &o_dout, &o_w, &o_wf, &accumulate))
        return NULL;
    DRIVER(dout, o_dout, F32, 2, "dout");
    DRIVER(w, o_w, NPY_UINT16, 2, "weight");
    int N = DIM(dout, 0), OC = DIM(dout, 1), C = DIM(w, 1);
    if (DIM(w, 0) != OC) return PyErr_Format(PyExc_ValueError, "weight has %d output features, dout has %d", DIM(w, 0), OC);
    ARR(wf, o_wf, F32, 2, SHAPE(OC, C), 0, "weight_f32");
    ARR(dinp, o_dinp, F32, 2, SHAPE(N, C), 1, "dinp");
    int rc = 0;
    NOGIL(rc = ca_cpu_linear_bf16_gemm_backward(FP(dinp), CFP(dout), (const uint16_t *)PyArray_DATA(w), CFP(wf), N, C,
                                                OC, accumulate));
    if (rc != 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* ---- shortconv ---- */
static PyObject *py_shortconv_forward(PyObject *self, PyObject *args) {
    PyObject *o_y, *o_u, *o_c, *o_z, *o_w, *o_state = Py_None;
    if (!PyArg_ParseTuple(args, "OOOOO|O:shortconv_forward", &o_y, &o_u, &o_c, &o_z, &o_w, &o_state)) return NULL;
    DRIVER(w, o_w, F32, 2, "weight");
    int C = DIM(w, 0), L = DIM(w, 1);
    DRIVER(z, o_z, F32, 3, "z");
    int B = DIM(z, 0), T = DIM(z, 1);
    if ((long long)DIM(z, 2) != 3LL * C)
        return PyErr_Format(PyExc_ValueError, "z has %d channels, expected 3*C = %lld", DIM(z, 2), 3LL * C);
    ARR(y, o_y, F32, 3, SHAPE(B, T, C), 1, "y");
    ARR(u, o_u, F32, 3, SHAPE(B, T, C), 1, "u");
    ARR(c, o_c, F32, 3, SHAPE(B, T, C), 1, "c");
    OPT(state, o_state, F32, 3, SHAPE(B, L - 1, C), 0, "state");
    NOGIL(ops_be->shortconv_forward(FP(y), FP(u), FP(c), CFP(z), CFP(w), OFP(state), B, T, C, L));
    Py_RETURN_NONE;
}

static PyObject *py_shortconv_backward(PyObject *self, PyObject *args) {
    PyObject *o_dz, *o_dw, *o_dy, *o_z, *o_u, *o_c, *o_w;
    if (!PyArg_ParseTuple(args, "OOOOOOO:shortconv_backward", &o_dz, &o_dw, &o_dy, &o_z, &o_u, &o_c, &o_w))
        return NULL;
    DRIVER(w, o_w, F32, 2, "weight");
    int C = DIM(w, 0), L = DIM(w, 1);
    DRIVER(z, o_z, F32, 3, "z");
    int B = DIM(z, 0), T = DIM(z, 1);
    if ((long long)DIM(z, 2) != 3LL * C)
        return PyErr_Format(PyExc_ValueError, "z has %d channels, expected 3*C = %lld", DIM(z, 2), 3LL * C);
    ARR(dz, o_dz, F32, 3, SHAPE(B, T, 3 * (npy_intp)C), 1, "dz");
    OPT(dw, o_dw, F32, 2, SHAPE(C, L), 1, "dweight");
    ARR(dy, o_dy, F32, 3, SHAPE(B, T, C), 0, "dy");
    ARR(u, o_u, F32, 3, SHAPE(B, T, C), 0, "u");
    ARR(c, o_c, F32, 3, SHAPE(B, T, C), 0, "c");
    NOGIL(ops_be->shortconv_backward(FP(dz), OFP(dw), CFP(dy), CFP(z), CFP(u), CFP(c), CFP(w), B, T, C, L));
    Py_RETURN_NONE;
}

/* ---- rope ---- */
static PyObject *rope_common(PyObject *args, int backward) {
    PyObject *o_out, *o_inp, *o_pos;
    float theta;
    if (!PyArg_ParseTuple(args, backward ? "OOOf:rope_backward" : "OOOf:rope_forward", &o_out, &o_inp, &o_pos,
                          &theta))
        return NULL;
    const char *in_name = backward ? "dout" : "inp", *out_name = backward ? "dinp" : "out";
    DRIVER(inp, o_inp, F32, 3, in_name);
    int N = DIM(inp, 0), NH = DIM(inp, 1), HS = DIM(inp, 2);
    if (HS % 2) return PyErr_Format(PyExc_ValueError, "%s head size %d must be even for NEOX RoPE", in_name, HS);
    ARR(out, o_out, F32, 3, SHAPE(N, NH, HS), 1, out_name);
    ARR(pos, o_pos, I32, 1, SHAPE(N), 0, "pos");
    if (backward)
        NOGIL(ops_be->rope_backward(FP(out), CFP(inp), IP(pos), N, NH, HS, theta));
    else
        NOGIL(ops_be->rope_forward(FP(out), CFP(inp), IP(pos), N, NH, HS, theta));
    Py_RETURN_NONE;
}
static PyObject *py_rope_forward(PyObject *self, PyObject *args) { return rope_common(args, 0); }
static PyObject *py_rope_backward(PyObject *self, PyObject *args) { return rope_common(args, 1); }

/* ---- attention ---- */
static PyObject *py_attention_forward(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_att, *o_q, *o_k, *o_v, *o_mask = Py_None;
    int causal = 1, q_offset = 0;
    if (!PyArg_ParseTuple(args, "OOOOO|Opi:attention_forward", &o_out, &o_att, &o_q, &o_k, &o_v, &o_mask, &causal,
                          &q_offset))
        return NULL;
    DRIVER(q, o_q, F32, 4, "q");
    DRIVER(k, o_k, F32, 4, "k");
    int B = DIM(q, 0), Tq = DIM(q, 1), NH = DIM(q, 2), HS = DIM(q, 3), Tk = DIM(k, 1), NKV = DIM(k, 2);
    ARR(k2, o_k, F32, 4, SHAPE(B, Tk, NKV, HS), 0, "k");
    (void)k2;
    if (NH % NKV)
        return PyErr_Format(PyExc_ValueError, "query heads (%d) must be a multiple of KV heads (%d)", NH, NKV);
    ARR(v, o_v, F32, 4, SHAPE(B, Tk, NKV, HS), 0, "v");
    OPT(mask, o_mask, I32, 2, SHAPE(B, Tk), 0, "key_mask");
    ARR(out, o_out, F32, 4, SHAPE(B, Tq, NH, HS), 1, "out");
    ARR(att, o_att, F32, 4, SHAPE(B, NH, Tq, Tk), 1, "att");
    NOGIL(ops_be->attention_forward(FP(out), FP(att), CFP(q), CFP(k), CFP(v), OIP(mask), B, Tq, Tk, NH, NKV, HS,
                                   causal, q_offset));
    Py_RETURN_NONE;
}

static PyObject *py_attention_backward(PyObject *self, PyObject *args) {
    PyObject *o_dq, *o_dk, *o_dv, *o_dout, *o_q, *o_k, *o_v, *o_att;
    if (!PyArg_ParseTuple(args, "OOOOOOOO:attention_backward", &o_dq, &o_dk, &o_dv, &o_dout, &o_q, &o_k, &o_v,
                          &o_att))
        return NULL;
    DRIVER(q, o_q, F32, 4, "q");
    DRIVER(k, o_k, F32, 4, "k");
    int B = DIM(q, 0), Tq = DIM(q, 1), NH = DIM(q, 2), HS = DIM(q, 3), Tk = DIM(k, 1), NKV = DIM(k, 2);
    ARR(k2, o_k, F32, 4, SHAPE(B, Tk, NKV, HS), 0, "k");
    (void)k2;
    if (NH % NKV)
        return PyErr_Format(PyExc_ValueError, "query heads (%d) must be a multiple of KV heads (%d)", NH, NKV);
    ARR(v, o_v, F32, 4, SHAPE(B, Tk, NKV, HS), 0, "v");
    ARR(att, o_att, F32, 4, SHAPE(B, NH, Tq, Tk), 0, "att");
    ARR(dout, o_dout, F32, 4, SHAPE(B, Tq, NH, HS), 0, "dout");
    ARR(dq, o_dq, F32, 4, SHAPE(B, Tq, NH, HS), 1, "dq");
    ARR(dk, o_dk, F32, 4, SHAPE(B, Tk, NKV, HS), 1, "dk");
    ARR(dv, o_dv, F32, 4, SHAPE(B, Tk, NKV, HS), 1, "dv");
    NOGIL(ops_be->attention_backward(FP(dq), FP(dk), FP(dv), CFP(dout), CFP(q), CFP(k), CFP(v), CFP(att), B, Tq, Tk,
                                    NH, NKV, HS));
    Py_RETURN_NONE;
}

/* ---- swiglu ---- */
static PyObject *py_swiglu_forward(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_gate, *o_up;
    if (!PyArg_ParseTuple(args, "OOO:swiglu_forward", &o_out, &o_gate, &o_up)) return NULL;
    DRIVER(gate, o_gate, F32, 2, "gate");
    int N = DIM(gate, 0), F = DIM(gate, 1);
    ARR(up, o_up, F32, 2, SHAPE(N, F), 0, "up");
    ARR(out, o_out, F32, 2, SHAPE(N, F), 1, "out");
    NOGIL(ops_be->swiglu_forward(FP(out), CFP(gate), CFP(up), N, F));
    Py_RETURN_NONE;
}

static PyObject *py_swiglu_backward(PyObject *self, PyObject *args) {
    PyObject *o_dgate, *o_dup, *o_dout, *o_gate, *o_up;
    if (!PyArg_ParseTuple(args, "OOOOO:swiglu_backward", &o_dgate, &o_dup, &o_dout, &o_gate, &o_up)) return NULL;
    DRIVER(gate, o_gate, F32, 2, "gate");
    int N = DIM(gate, 0), F = DIM(gate, 1);
    ARR(up, o_up, F32, 2, SHAPE(N, F), 0, "up");
    ARR(dout, o_dout, F32, 2, SHAPE(N, F), 0, "dout");
    ARR(dgate, o_dgate, F32, 2, SHAPE(N, F), 1, "dgate");
    ARR(dup, o_dup, F32, 2, SHAPE(N, F), 1, "dup");
    NOGIL(ops_be->swiglu_backward(FP(dgate), FP(dup), CFP(dout), CFP(gate), CFP(up), N, F));
    Py_RETURN_NONE;
}

/* ---- cross-entropy ---- */
static PyObject *py_crossentropy_forward(PyObject *self, PyObject *args) {
    PyObject *o_losses, *o_logits, *o_targets;
    if (!PyArg_ParseTuple(args, "OOO:crossentropy_forward", &o_losses, &o_logits, &o_targets)) return NULL;
    DRIVER(logits, o_logits, F32, 2, "logits");
    int N = DIM(logits, 0), V = DIM(logits, 1);
    ARR(targets, o_targets, I32, 1, SHAPE(N), 0, "targets");
    OPT(losses, o_losses, F32, 1, SHAPE(N), 1, "losses");
    if (!check_range(targets, V, 1, CA_IGNORE_INDEX, "targets")) return NULL;
    double total;
    NOGIL(total = ops_be->crossentropy_forward(OFP(losses), CFP(logits), IP(targets), N, V));
    return PyFloat_FromDouble(total);
}

static PyObject *py_crossentropy_backward(PyObject *self, PyObject *args) {
    PyObject *o_dlogits, *o_logits, *o_targets;
    float scale;
    if (!PyArg_ParseTuple(args, "OOOf:crossentropy_backward", &o_dlogits, &o_logits, &o_targets, &scale))
        return NULL;
    DRIVER(logits, o_logits, F32, 2, "logits");
    int N = DIM(logits, 0), V = DIM(logits, 1);
    ARR(dlogits, o_dlogits, F32, 2, SHAPE(N, V), 1, "dlogits");
    ARR(targets, o_targets, I32, 1, SHAPE(N), 0, "targets");
    if (!check_range(targets, V, 1, CA_IGNORE_INDEX, "targets")) return NULL;
    NOGIL(ops_be->crossentropy_backward(FP(dlogits), CFP(logits), IP(targets), scale, N, V));
    Py_RETURN_NONE;
}

/* ---- elementwise (any shape; x must match y's shape) ---- */
static PyObject *py_add_inplace(PyObject *self, PyObject *args) {
    PyObject *o_y, *o_x;
    if (!PyArg_ParseTuple(args, "OO:add_inplace", &o_y, &o_x)) return NULL;
    PyArrayObject *y = ca_py_array(o_y, F32, -1, 1, "y");
    if (!y) return NULL;
    ARR(x, o_x, F32, PyArray_NDIM(y), PyArray_DIMS(y), 0, "x");
    NOGIL(ops_be->add_inplace(FP(y), CFP(x), (size_t)PyArray_SIZE(y)));
    Py_RETURN_NONE;
}

static PyObject *py_scale_inplace(PyObject *self, PyObject *args) {
    PyObject *o_y;
    float s;
    if (!PyArg_ParseTuple(args, "Of:scale_inplace", &o_y, &s)) return NULL;
    PyArrayObject *y = ca_py_array(o_y, F32, -1, 1, "y");
    if (!y) return NULL;
    NOGIL(ops_be->scale_inplace(FP(y), s, (size_t)PyArray_SIZE(y)));
    Py_RETURN_NONE;
}

static PyObject *py_zero(PyObject *self, PyObject *args) {
    PyObject *o_y;
    if (!PyArg_ParseTuple(args, "O:zero", &o_y)) return NULL;
    PyArrayObject *y = ca_py_array(o_y, F32, -1, 1, "y");
    if (!y) return NULL;
    NOGIL(ops_be->zero(FP(y), (size_t)PyArray_SIZE(y)));
    Py_RETURN_NONE;
}

/* ---- lora ---- */
static PyObject *py_lora_forward(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_h, *o_x, *o_A, *o_B;
    float scale;
    if (!PyArg_ParseTuple(args, "OOOOOf:lora_forward", &o_out, &o_h, &o_x, &o_A, &o_B, &scale)) return NULL;
    DRIVER(x, o_x, F32, 2, "x");
    DRIVER(A, o_A, F32, 2, "A");
    int N = DIM(x, 0), C = DIM(x, 1), r = DIM(A, 0);
    DRIVER(B, o_B, F32, 2, "B");
    int OC = DIM(B, 0);
    ARR(A2, o_A, F32, 2, SHAPE(r, C), 0, "A");
    ARR(B2, o_B, F32, 2, SHAPE(OC, r), 0, "B");
    ARR(out, o_out, F32, 2, SHAPE(N, OC), 1, "out");
    ARR(h, o_h, F32, 2, SHAPE(N, r), 1, "h");
    (void)A2, (void)B2;
    NOGIL(ops_be->lora_forward(FP(out), FP(h), CFP(x), CFP(A), CFP(B), scale, N, C, OC, r));
    Py_RETURN_NONE;
}

static PyObject *py_lora_backward(PyObject *self, PyObject *args) {
    PyObject *o_dx, *o_dA, *o_dB, *o_dh, *o_dout, *o_x, *o_h, *o_A, *o_B;
    float scale;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOf:lora_backward", &o_dx, &o_dA, &o_dB, &o_dh, &o_dout, &o_x, &o_h, &o_A,
                          &o_B, &scale))
        return NULL;
    DRIVER(x, o_x, F32, 2, "x");
    DRIVER(A, o_A, F32, 2, "A");
    DRIVER(B, o_B, F32, 2, "B");
    int N = DIM(x, 0), C = DIM(x, 1), r = DIM(A, 0), OC = DIM(B, 0);
    ARR(A2, o_A, F32, 2, SHAPE(r, C), 0, "A");
    ARR(B2, o_B, F32, 2, SHAPE(OC, r), 0, "B");
    ARR(h, o_h, F32, 2, SHAPE(N, r), 0, "h");
    ARR(dout, o_dout, F32, 2, SHAPE(N, OC), 0, "dout");
    ARR(dh, o_dh, F32, 2, SHAPE(N, r), 1, "dh");
    OPT(dx, o_dx, F32, 2, SHAPE(N, C), 1, "dx");
    OPT(dA, o_dA, F32, 2, SHAPE(r, C), 1, "dA");
    OPT(dB, o_dB, F32, 2, SHAPE(OC, r), 1, "dB");
    (void)A2, (void)B2;
    NOGIL(ops_be->lora_backward(OFP(dx), OFP(dA), OFP(dB), FP(dh), CFP(dout), CFP(x), CFP(h), CFP(A), CFP(B), scale, N,
                               C, OC, r));
    Py_RETURN_NONE;
}

static PyObject *py_lora_merge(PyObject *self, PyObject *args) {
    PyObject *o_W, *o_A, *o_B;
    float scale;
    if (!PyArg_ParseTuple(args, "OOOf:lora_merge", &o_W, &o_A, &o_B, &scale)) return NULL;
    DRIVER(A, o_A, F32, 2, "A");
    DRIVER(B, o_B, F32, 2, "B");
    int r = DIM(A, 0), C = DIM(A, 1), OC = DIM(B, 0);
    ARR(B2, o_B, F32, 2, SHAPE(OC, r), 0, "B");
    ARR(W, o_W, F32, 2, SHAPE(OC, C), 1, "W");
    (void)B2;
    NOGIL(ops_be->lora_merge(FP(W), CFP(A), CFP(B), scale, C, OC, r));
    Py_RETURN_NONE;
}

/* ---- dropout ---- */
static PyObject *py_dropout_forward(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_x;
    float p;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OOfK:dropout_forward", &o_out, &o_x, &p, &seed)) return NULL;
    DRIVER(x, o_x, F32, 1, "x");
    int n = DIM(x, 0);
    ARR(out, o_out, F32, 1, SHAPE(n), 1, "out");
    if (!(p >= 0.0f && p < 1.0f)) return PyErr_Format(PyExc_ValueError, "dropout p must be in [0, 1), got %g", p);
    NOGIL(ops_be->dropout_forward(FP(out), CFP(x), (size_t)n, p, seed));
    Py_RETURN_NONE;
}

/* ---- adamw ---- */
static PyObject *py_adamw_update(PyObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"params", "exp_avg", "exp_avg_sq", "grads", "lr", "beta1", "beta2", "eps",
                             "weight_decay", "step", "grad_scale", NULL};
    PyObject *o_p, *o_m, *o_v, *o_g;
    float lr, beta1, beta2, eps, wd, grad_scale = 1.0f;
    int step;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOfffffi|f:adamw_update", kwlist, &o_p, &o_m, &o_v, &o_g, &lr,
                                     &beta1, &beta2, &eps, &wd, &step, &grad_scale))
        return NULL;
    DRIVER(p, o_p, F32, 1, "params");
    int n = DIM(p, 0);
    ARR(p2, o_p, F32, 1, SHAPE(n), 1, "params");
    ARR(m, o_m, F32, 1, SHAPE(n), 1, "exp_avg");
    ARR(v, o_v, F32, 1, SHAPE(n), 1, "exp_avg_sq");
    ARR(g, o_g, F32, 1, SHAPE(n), 0, "grads");
    (void)p2;
    if (step < 1) return PyErr_Format(PyExc_ValueError, "step must be >= 1, got %d", step);
    NOGIL(ops_be->adamw_update(FP(p), FP(m), FP(v), CFP(g), (size_t)n, lr, beta1, beta2, eps, wd, step, grad_scale));
    Py_RETURN_NONE;
}

static PyObject *py_sum_squares(PyObject *self, PyObject *arg) {
    PyArrayObject *x = ca_py_array(arg, F32, -1, 0, "x");
    if (!x) return NULL;
    double total;
    NOGIL(total = ops_be->sum_squares(CFP(x), (size_t)PyArray_SIZE(x)));
    return PyFloat_FromDouble(total);
}

/* ---- vision ops (layernorm, gelu, posresize, unshuffle) ---- */
static PyObject *py_layernorm_forward(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_mean, *o_rstd, *o_inp, *o_w, *o_b;
    float eps;
    if (!PyArg_ParseTuple(args, "OOOOOOf:layernorm_forward", &o_out, &o_mean, &o_rstd, &o_inp, &o_w, &o_b, &eps))
        return NULL;
    DRIVER(inp, o_inp, F32, 2, "inp");
    int N = DIM(inp, 0), C = DIM(inp, 1);
    ARR(w, o_w, F32, 1, SHAPE(C), 0, "weight");
    ARR(b, o_b, F32, 1, SHAPE(C), 0, "bias");
    ARR(out, o_out, F32, 2, SHAPE(N, C), 1, "out");
    ARR(mean, o_mean, F32, 1, SHAPE(N), 1, "mean");
    ARR(rstd, o_rstd, F32, 1, SHAPE(N), 1, "rstd");
    NOGIL(ops_be->layernorm_forward(FP(out), FP(mean), FP(rstd), CFP(inp), CFP(w), CFP(b), N, C, eps));
    Py_RETURN_NONE;
}

static PyObject *py_layernorm_backward(PyObject *self, PyObject *args) {
    PyObject *o_dinp, *o_dw, *o_db, *o_dout, *o_inp, *o_w, *o_mean, *o_rstd;
    if (!PyArg_ParseTuple(args, "OOOOOOOO:layernorm_backward", &o_dinp, &o_dw, &o_db, &o_dout, &o_inp, &o_w, &o_mean,
                          &o_rstd))
        return NULL;
    DRIVER(inp, o_inp, F32, 2, "inp");
    int N = DIM(inp, 0), C = DIM(inp, 1);
    ARR(dinp, o_dinp, F32, 2, SHAPE(N, C), 1, "dinp");
    OPT(dw, o_dw, F32, 1, SHAPE(C), 1, "dweight");
    OPT(db, o_db, F32, 1, SHAPE(C), 1, "dbias");
    ARR(dout, o_dout, F32, 2, SHAPE(N, C), 0, "dout");
    ARR(w, o_w, F32, 1, SHAPE(C), 0, "weight");
    ARR(mean, o_mean, F32, 1, SHAPE(N), 0, "mean");
    ARR(rstd, o_rstd, F32, 1, SHAPE(N), 0, "rstd");
    NOGIL(ops_be->layernorm_backward(FP(dinp), OFP(dw), OFP(db), CFP(dout), CFP(inp), CFP(w), CFP(mean), CFP(rstd), N,
                                    C));
    Py_RETURN_NONE;
}

static PyObject *py_gelu_forward(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_inp;
    int tanh_form;
    if (!PyArg_ParseTuple(args, "OOp:gelu_forward", &o_out, &o_inp, &tanh_form)) return NULL;
    PyArrayObject *inp = ca_py_array(o_inp, F32, -1, 0, "inp");
    if (!inp) return NULL;
    ARR(out, o_out, F32, PyArray_NDIM(inp), PyArray_DIMS(inp), 1, "out");
    NOGIL(ops_be->gelu_forward(FP(out), CFP(inp), (size_t)PyArray_SIZE(inp), tanh_form));
    Py_RETURN_NONE;
}

static PyObject *py_gelu_backward(PyObject *self, PyObject *args) {
    PyObject *o_dinp, *o_dout, *o_inp;
    int tanh_form;
    if (!PyArg_ParseTuple(args, "OOOp:gelu_backward", &o_dinp, &o_dout, &o_inp, &tanh_form)) return NULL;
    PyArrayObject *inp = ca_py_array(o_inp, F32, -1, 0, "inp");
    if (!inp) return NULL;
    ARR(dinp, o_dinp, F32, PyArray_NDIM(inp), PyArray_DIMS(inp), 1, "dinp");
    ARR(dout, o_dout, F32, PyArray_NDIM(inp), PyArray_DIMS(inp), 0, "dout");
    NOGIL(ops_be->gelu_backward(FP(dinp), CFP(dout), CFP(inp), (size_t)PyArray_SIZE(inp), tanh_form));
    Py_RETURN_NONE;
}

/* out (Ho, Wo, C) and table (Hi, Wi, C): the sizes come from both shapes */
static PyObject *py_posresize_forward(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_table;
    if (!PyArg_ParseTuple(args, "OO:posresize_forward", &o_out, &o_table)) return NULL;
    DRIVER(table, o_table, F32, 3, "table");
    PyArrayObject *out = ca_py_array(o_out, F32, 3, 1, "out");
    if (!out || !dims_ok(out, "out")) return NULL;
    int Hi = DIM(table, 0), Wi = DIM(table, 1), C = DIM(table, 2), Ho = DIM(out, 0), Wo = DIM(out, 1);
    if (DIM(out, 2) != C) return PyErr_Format(PyExc_ValueError, "out has %d channels, table has %d", DIM(out, 2), C);
    NOGIL(ops_be->posresize_forward(FP(out), CFP(table), Hi, Wi, Ho, Wo, C));
    Py_RETURN_NONE;
}

static PyObject *py_posresize_backward(PyObject *self, PyObject *args) {
    PyObject *o_dtable, *o_dout;
    if (!PyArg_ParseTuple(args, "OO:posresize_backward", &o_dtable, &o_dout)) return NULL;
    DRIVER(dout, o_dout, F32, 3, "dout");
    PyArrayObject *dtable = ca_py_array(o_dtable, F32, 3, 1, "dtable");
    if (!dtable || !dims_ok(dtable, "dtable")) return NULL;
    int Hi = DIM(dtable, 0), Wi = DIM(dtable, 1), C = DIM(dtable, 2), Ho = DIM(dout, 0), Wo = DIM(dout, 1);
    if (DIM(dout, 2) != C) return PyErr_Format(PyExc_ValueError, "dout has %d channels, dtable has %d", DIM(dout, 2), C);
    NOGIL(ops_be->posresize_backward(FP(dtable), CFP(dout), Hi, Wi, Ho, Wo, C));
    Py_RETURN_NONE;
}

/* q, k, v (T, NH, HS); att (NH, T, T). bf16: the bf16 attention of a bf16 tower (CPU, AVX512-BF16), returning
 * False when it is not available (nothing written); else the ops backend's, returning None. */
static PyObject *mha_forward(PyObject *args, const char *format, int bf16) {
    PyObject *o_out, *o_att, *o_q, *o_k, *o_v;
    if (!PyArg_ParseTuple(args, format, &o_out, &o_att, &o_q, &o_k, &o_v)) return NULL;
    DRIVER(q, o_q, F32, 3, "q");
    int T = DIM(q, 0), NH = DIM(q, 1), HS = DIM(q, 2);
    ARR(k, o_k, F32, 3, SHAPE(T, NH, HS), 0, "k");
    ARR(v, o_v, F32, 3, SHAPE(T, NH, HS), 0, "v");
    ARR(out, o_out, F32, 3, SHAPE(T, NH, HS), 1, "out");
    ARR(att, o_att, F32, 3, SHAPE(NH, T, T), 1, "att");
    if (!bf16) {
        NOGIL(ops_be->mha_forward(FP(out), FP(att), CFP(q), CFP(k), CFP(v), T, NH, HS));
        Py_RETURN_NONE;
    }
    int rc = 0;
    NOGIL(rc = ca_cpu_mha_bf16_forward(FP(out), FP(att), CFP(q), CFP(k), CFP(v), T, NH, HS));
    return PyBool_FromLong(rc == 0);
}

static PyObject *py_mha_forward(PyObject *self, PyObject *args) { return mha_forward(args, "OOOOO:mha_forward", 0); }

static PyObject *py_mha_bf16_forward(PyObject *self, PyObject *args) {
    return mha_forward(args, "OOOOO:mha_bf16_forward", 1);
}

static PyObject *py_mha_backward(PyObject *self, PyObject *args) {
    PyObject *o_dq, *o_dk, *o_dv, *o_scratch, *o_dout, *o_q, *o_k, *o_v, *o_att;
    if (!PyArg_ParseTuple(args, "OOOOOOOOO:mha_backward", &o_dq, &o_dk, &o_dv, &o_scratch, &o_dout, &o_q, &o_k, &o_v,
                          &o_att))
        return NULL;
    DRIVER(q, o_q, F32, 3, "q");
    int T = DIM(q, 0), NH = DIM(q, 1), HS = DIM(q, 2);
    ARR(k, o_k, F32, 3, SHAPE(T, NH, HS), 0, "k");
    ARR(v, o_v, F32, 3, SHAPE(T, NH, HS), 0, "v");
    ARR(dout, o_dout, F32, 3, SHAPE(T, NH, HS), 0, "dout");
    ARR(att, o_att, F32, 3, SHAPE(NH, T, T), 0, "att");
    ARR(scratch, o_scratch, F32, 3, SHAPE(NH, T, T), 1, "scratch");
    ARR(dq, o_dq, F32, 3, SHAPE(T, NH, HS), 1, "dq");
    ARR(dk, o_dk, F32, 3, SHAPE(T, NH, HS), 1, "dk");
    ARR(dv, o_dv, F32, 3, SHAPE(T, NH, HS), 1, "dv");
    NOGIL(ops_be->mha_backward(FP(dq), FP(dk), FP(dv), FP(scratch), CFP(dout), CFP(q), CFP(k), CFP(v), CFP(att), T, NH, HS));
    Py_RETURN_NONE;
}

/* inp (H, W, C) grid; out (H/f, W/f, f*f*C) */
static PyObject *py_unshuffle_forward(PyObject *self, PyObject *args) {
    PyObject *o_out, *o_inp;
    int f;
    if (!PyArg_ParseTuple(args, "OOi:unshuffle_forward", &o_out, &o_inp, &f)) return NULL;
    DRIVER(inp, o_inp, F32, 3, "inp");
    int H = DIM(inp, 0), W = DIM(inp, 1), C = DIM(inp, 2);
    if (f < 1 || H % f || W % f || (long long)f * f * C > INT_MAX)
        return PyErr_Format(PyExc_ValueError, "inp grid (%d, %d) is not divisible by the factor %d", H, W, f);
    ARR(out, o_out, F32, 3, SHAPE(H / f, W / f, f * f * C), 1, "out");
    NOGIL(ops_be->unshuffle_forward(FP(out), CFP(inp), H, W, C, f));
    Py_RETURN_NONE;
}

static PyObject *py_unshuffle_backward(PyObject *self, PyObject *args) {
    PyObject *o_dinp, *o_dout;
    int f;
    if (!PyArg_ParseTuple(args, "OOi:unshuffle_backward", &o_dinp, &o_dout, &f)) return NULL;
    DRIVER(dinp, o_dinp, F32, 3, "dinp");
    if (!PyArray_ISWRITEABLE(dinp)) return PyErr_Format(PyExc_ValueError, "dinp must be writable");
    int H = DIM(dinp, 0), W = DIM(dinp, 1), C = DIM(dinp, 2);
    if (f < 1 || H % f || W % f || (long long)f * f * C > INT_MAX)
        return PyErr_Format(PyExc_ValueError, "dinp grid (%d, %d) is not divisible by the factor %d", H, W, f);
    ARR(dout, o_dout, F32, 3, SHAPE(H / f, W / f, f * f * C), 0, "dout");
    NOGIL(ops_be->unshuffle_backward(FP(dinp), CFP(dout), H, W, C, f));
    Py_RETURN_NONE;
}

PyMethodDef ca_py_ops_methods[] = {
    {"set_ops_backend", py_set_ops_backend, METH_O,
     "set_ops_backend('cpu' | 'cuda'): the backend the op bindings call; returns the previous one's name"},
    {"embedding_forward", py_embedding_forward, METH_VARARGS, "embedding_forward(out (N,C), ids (N,) int32, wte (V,C))"},
    {"embedding_backward", py_embedding_backward, METH_VARARGS, "embedding_backward(dwte (V,C) +=, dout (N,C), ids (N,))"},
    {"rmsnorm_forward", py_rmsnorm_forward, METH_VARARGS, "rmsnorm_forward(out (N,C), rstd (N,), inp (N,C), weight (C,), eps)"},
    {"rmsnorm_backward", py_rmsnorm_backward, METH_VARARGS,
     "rmsnorm_backward(dinp (N,C) +=, dweight (C,) += or None, dout, inp, weight, rstd)"},
    {"linear_forward", py_linear_forward, METH_VARARGS, "linear_forward(out (N,OC), inp (N,C), weight (OC,C), bias (OC,) or None)"},
    {"linear_q8_forward", py_linear_q8_forward, METH_VARARGS,
     "linear_q8_forward(out (N,OC), inp (N,C), q (OC,C) int8, scale (OC,)): the int8 decoding GEMV (CPU)"},
    {"linear_f32_gemv_forward", py_linear_f32_gemv_forward, METH_VARARGS,
     "linear_f32_gemv_forward(out (N,OC), inp (N,C), weight (OC,C) fp32): the fp32 decoding GEMV (CPU)"},
    {"linear_bf16_forward", py_linear_bf16_forward, METH_VARARGS,
     "linear_bf16_forward(out (N,OC), inp (N,C), weight (OC,C) bf16 bits as uint16): the bf16 decoding GEMV (CPU)"},
    {"linear_bf16_gemm_forward", py_linear_bf16_gemm_forward, METH_VARARGS,
     "linear_bf16_gemm_forward(out (N,OC), inp (N,C), weight (OC,C) bf16 bits as uint16, weight_f32 (OC,C) the same "
     "values): the bf16 prefill GEMM (CPU)"},
    {"linear_q8_gemm_forward", py_linear_q8_gemm_forward, METH_VARARGS,
     "linear_q8_gemm_forward(out (N,OC), inp (N,C), q (OC,C) int8, scale (OC,), weight_f32 (OC,C) = scale·q): int8 "
     "weights' prompt GEMM, scale[o] · bf16(inp) · qᵀ with fp32 sums (CPU)"},
    {"linear_bf16_gemm_weight_grad", py_linear_bf16_gemm_weight_grad, METH_VARARGS,
     "linear_bf16_gemm_weight_grad(dweight (OC,C), dout (N,OC), inp (N,C)): dweight += bf16(dout)ᵀ · bf16(inp) with "
     "fp32 sums, a bf16 model's weight gradient (CPU)"},
    {"linear_bf16_gemm_backward", py_linear_bf16_gemm_backward, METH_VARARGS,
     "linear_bf16_gemm_backward(dinp (N,C), dout (N,OC), weight (OC,C) bf16 bits as uint16, weight_f32 (OC,C), "
     "accumulate=False): dinp = or += bf16(dout) · W, the input gradient through a frozen bf16 weight (CPU)"},
    {"linear_backward", py_linear_backward, METH_VARARGS,
     "linear_backward(dinp (N,C) or None, dweight (OC,C) += or None, dbias (OC,) += or None, dout (N,OC), inp, weight, "
     "accumulate=False)"},
    {"shortconv_forward", py_shortconv_forward, METH_VARARGS,
     "shortconv_forward(y, u, c (B,T,C), z (B,T,3C), weight (C,L), state (B,L-1,C) or None)"},
    {"shortconv_backward", py_shortconv_backward, METH_VARARGS,
     "shortconv_backward(dz (B,T,3C), dweight (C,L) += or None, dy (B,T,C), z, u, c, weight)"},
    {"rope_forward", py_rope_forward, METH_VARARGS, "rope_forward(out (N,NH,HS), inp (N,NH,HS), pos (N,) int32, theta); out may be inp"},
    {"rope_backward", py_rope_backward, METH_VARARGS, "rope_backward(dinp (N,NH,HS), dout (N,NH,HS), pos (N,), theta)"},
    {"attention_forward", py_attention_forward, METH_VARARGS,
     "attention_forward(out (B,Tq,NH,HS), att (B,NH,Tq,Tk), q (B,Tq,NH,HS), k, v (B,Tk,NKV,HS), key_mask (B,Tk) int32 "
     "or None, causal=True, q_offset=0)"},
    {"attention_backward", py_attention_backward, METH_VARARGS,
     "attention_backward(dq, dk, dv, dout (B,Tq,NH,HS), q, k, v, att (B,NH,Tq,Tk))"},
    {"lora_forward", py_lora_forward, METH_VARARGS,
     "lora_forward(out (N,OC) +=, h (N,r), x (N,C), A (r,C), B (OC,r), scale)"},
    {"lora_backward", py_lora_backward, METH_VARARGS,
     "lora_backward(dx|None +=, dA|None +=, dB|None +=, dh (N,r), dout, x, h, A, B, scale)"},
    {"lora_merge", py_lora_merge, METH_VARARGS, "lora_merge(W (OC,C) += scale*B@A, A (r,C), B (OC,r), scale)"},
    {"dropout_forward", py_dropout_forward, METH_VARARGS, "dropout_forward(out (n), x (n), p, seed)"},
    {"adamw_update", (PyCFunction)(void (*)(void))py_adamw_update, METH_VARARGS | METH_KEYWORDS,
     "adamw_update(params, exp_avg, exp_avg_sq, grads, lr, beta1, beta2, eps, weight_decay, step, grad_scale=1)"},
    {"sum_squares", py_sum_squares, METH_O, "sum of squares of a float32 array, in float64"},
    {"swiglu_forward", py_swiglu_forward, METH_VARARGS, "swiglu_forward(out (N,F), gate (N,F), up (N,F))"},
    {"swiglu_backward", py_swiglu_backward, METH_VARARGS, "swiglu_backward(dgate, dup, dout, gate, up)  all (N,F)"},
    {"crossentropy_forward", py_crossentropy_forward, METH_VARARGS,
     "crossentropy_forward(losses (N,) or None, logits (N,V), targets (N,) int32 with -100 ignored) -> sum of losses"},
    {"crossentropy_backward", py_crossentropy_backward, METH_VARARGS,
     "crossentropy_backward(dlogits (N,V), logits (N,V), targets (N,), scale); dlogits may be logits"},
    {"add_inplace", py_add_inplace, METH_VARARGS, "add_inplace(y, x): y += x"},
    {"scale_inplace", py_scale_inplace, METH_VARARGS, "scale_inplace(y, s): y *= s"},
    {"zero", py_zero, METH_VARARGS, "zero(y): y = 0"},
    {"layernorm_forward", py_layernorm_forward, METH_VARARGS,
     "layernorm_forward(out (N,C), mean (N,), rstd (N,), inp (N,C), weight (C,), bias (C,), eps)"},
    {"layernorm_backward", py_layernorm_backward, METH_VARARGS,
     "layernorm_backward(dinp (N,C) +=, dweight (C,) += or None, dbias (C,) += or None, dout, inp, weight, mean, rstd)"},
    {"gelu_forward", py_gelu_forward, METH_VARARGS, "gelu_forward(out, inp, tanh_form): any shape"},
    {"gelu_backward", py_gelu_backward, METH_VARARGS, "gelu_backward(dinp =, dout, inp, tanh_form): any shape"},
    {"posresize_forward", py_posresize_forward, METH_VARARGS,
     "posresize_forward(out (Ho,Wo,C), table (Hi,Wi,C)): antialiased bilinear resize"},
    {"posresize_backward", py_posresize_backward, METH_VARARGS, "posresize_backward(dtable (Hi,Wi,C) +=, dout (Ho,Wo,C))"},
    {"mha_forward", py_mha_forward, METH_VARARGS, "mha_forward(out (T,NH,HS), att (NH,T,T), q, k, v (T,NH,HS))"},
    {"mha_bf16_forward", py_mha_bf16_forward, METH_VARARGS,
     "mha_bf16_forward(out, att, q, k, v): mha_forward with bf16 GEMMs (CPU, AVX512-BF16); False when unavailable"},
    {"mha_backward", py_mha_backward, METH_VARARGS,
     "mha_backward(dq, dk, dv (T,NH,HS) =, scratch (NH,T,T), dout, q, k, v (T,NH,HS), att (NH,T,T))"},
    {"unshuffle_forward", py_unshuffle_forward, METH_VARARGS, "unshuffle_forward(out (H/f,W/f,f*f*C), inp (H,W,C), f)"},
    {"unshuffle_backward", py_unshuffle_backward, METH_VARARGS, "unshuffle_backward(dinp (H,W,C) =, dout (H/f,W/f,f*f*C), f)"},
    {NULL, NULL, 0, NULL},
};
