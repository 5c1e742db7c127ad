/* Python glue for the CUDA launchers the backend table does not carry (ca_cuda.h): the decode kernels
 * (attention over a KV cache, the short-conv step), the bf16-weight GEMM and the federated aggregation
 * kernels, as _core.cuda_<name> on arrays in device-accessible memory (_core.cuda_array). Shapes are checked
 * like the op bindings'; every call waits for its kernels and raises the first device error. Without the
 * CUDA build the table is empty. */
#include "py_common.h"

#ifdef CA_WITH_CUDA

#include <limits.h>

#include "captionaura/ca_cuda.h"

#define F32 NPY_FLOAT32
#define F64 NPY_FLOAT64
#define SHAPE(...) ((const npy_intp[]){__VA_ARGS__})
#define DIM(a, i) ((int)PyArray_DIM(a, i))

/* An array of the expected type and shape (NULL shape: any sizes) that the kernels can read. */
static PyArrayObject *device_array(PyObject *obj, int type, int nd, const npy_intp *shape, int writable,
                                   const char *what) {
    PyArrayObject *a = shape ? ca_py_array_shape(obj, type, nd, shape, writable, what)
                             : ca_py_array(obj, type, nd, writable, what);
    if (!a) return NULL;
    for (int i = 0; i < PyArray_NDIM(a); i++)
        if (PyArray_DIM(a, i) < 1 || PyArray_DIM(a, i) > INT_MAX) {
            PyErr_Format(PyExc_ValueError, "%s has size %zd in dimension %d", what, (Py_ssize_t)PyArray_DIM(a, i), i);
            return NULL;
        }
    if (!ca_cuda_is_device_accessible(PyArray_DATA(a))) {
        PyErr_Format(PyExc_ValueError, "%s is host memory: the CUDA kernels need _core.cuda_array arrays", what);
        return NULL;
    }
    return a;
}

#define DEV(var, obj, type, nd, shape, w, what)                                                                 \
    PyArrayObject *var = device_array(obj, type, nd, shape, w, what);                                          \
    if (!var) return NULL;
#define OPT_DEV(var, obj, type, nd, shape, w, what)                                                             \
    PyArrayObject *var = NULL;                                                                                 \
    if ((obj) != Py_None && !(var = device_array(obj, type, nd, shape, w, what))) return NULL;
#define DATA(a, T) ((T *)PyArray_DATA(a))
#define ODATA(a, T) ((a) ? (T *)PyArray_DATA(a) : NULL)
#define LEN(a) ((size_t)PyArray_SIZE(a))

/* Runs `call` without the GIL, waits for it, raises the first device error. */
#define RUN(call)                                                                                              \
    do {                                                                                                       \
        ca_status run_status_;                                                                                 \
        Py_BEGIN_ALLOW_THREADS call;                                                                           \
        run_status_ = ca_cuda_check();                                                                         \
        Py_END_ALLOW_THREADS                                                                                   \
        if (run_status_ != CA_OK) return ca_py_raise(run_status_);                                              \
    } while (0)

static int started(void) { return ca_py_backend_named("cuda") != NULL; }

/* out (B, NH, HS) = softmax(q·kᵀ/√HS)·v over keys [0, Tk): one query per sequence at position Tk − 1 */
static PyObject *py_attention_decode(PyObject *self, PyObject *args) {
    PyObject *oo, *oq, *ok, *ov;
    if (!PyArg_ParseTuple(args, "OOOO:cuda_attention_decode", &oo, &oq, &ok, &ov) || !started()) return NULL;
    DEV(q, oq, F32, 3, NULL, 0, "q");
    int B = DIM(q, 0), NH = DIM(q, 1), HS = DIM(q, 2);
    DEV(k, ok, F32, 4, SHAPE(B, -1, -1, HS), 0, "k");
    int Tk = DIM(k, 1), NKV = DIM(k, 2);
    DEV(v, ov, F32, 4, SHAPE(B, Tk, NKV, HS), 0, "v");
    DEV(out, oo, F32, 3, SHAPE(B, NH, HS), 1, "out");
    if (NH % NKV) return PyErr_Format(PyExc_ValueError, "NH = %d is not a multiple of NKV = %d", NH, NKV);
    RUN(ca_cuda_attention_decode(DATA(out, float), DATA(q, float), DATA(k, float), DATA(v, float), B, Tk, NH, NKV,
                                 HS));
    Py_RETURN_NONE;
}

/* one short-conv decode step: y, u, c (B, C) from z (B, 3C), weight (C, L); state (B, L−1, C) advanced */
static PyObject *py_shortconv_step(PyObject *self, PyObject *args) {
    PyObject *oy, *ou, *oc, *ost, *oz, *ow;
    if (!PyArg_ParseTuple(args, "OOOOOO:cuda_shortconv_step", &oy, &ou, &oc, &ost, &oz, &ow) || !started())
        return NULL;
    DEV(w, ow, F32, 2, NULL, 0, "weight");
    int C = DIM(w, 0), L = DIM(w, 1);
    if (L < 2) return PyErr_Format(PyExc_ValueError, "the decode step needs L >= 2 (got %d)", L);
    DEV(z, oz, F32, 2, SHAPE(-1, 3 * (npy_intp)C), 0, "z");
    int B = DIM(z, 0);
    DEV(st, ost, F32, 3, SHAPE(B, L - 1, C), 1, "state");
    DEV(y, oy, F32, 2, SHAPE(B, C), 1, "y");
    DEV(u, ou, F32, 2, SHAPE(B, C), 1, "u");
    DEV(c, oc, F32, 2, SHAPE(B, C), 1, "c");
    RUN(ca_cuda_shortconv_step(DATA(y, float), DATA(u, float), DATA(c, float), DATA(st, float), DATA(z, float),
                               DATA(w, float), B, C, L));
    Py_RETURN_NONE;
}

/* out (N, OC) = bf16(inp) · bf16(W)ᵀ + b, fp32 accumulation; W is given in fp32 and rounded here */
static PyObject *py_linear_bf16(PyObject *self, PyObject *args) {
    PyObject *oo, *ox, *ow, *ob;
    if (!PyArg_ParseTuple(args, "OOOO:cuda_linear_bf16", &oo, &ox, &ow, &ob) || !started()) return NULL;
    DEV(x, ox, F32, 2, NULL, 0, "inp");
    int N = DIM(x, 0), C = DIM(x, 1);
    DEV(w, ow, F32, 2, SHAPE(-1, C), 0, "weight");
    int OC = DIM(w, 0);
    DEV(out, oo, F32, 2, SHAPE(N, OC), 1, "out");
    OPT_DEV(b, ob, F32, 1, SHAPE(OC), 0, "bias");
    uint16_t *wb = ca_cuda_malloc((size_t)OC * C * sizeof(uint16_t));
    if (!wb) return ca_py_raise(ca_cuda_check());
    ca_status st;
    Py_BEGIN_ALLOW_THREADS
    ca_cuda_f32_to_bf16(wb, DATA(w, float), (size_t)OC * C);
    ca_cuda_linear_forward_bf16(DATA(out, float), DATA(x, float), wb, ODATA(b, float), N, C, OC);
    st = ca_cuda_check();
    ca_cuda_free(wb);
    Py_END_ALLOW_THREADS
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

/* ---- the optimiser on device buffers (the model's parameters stay on the GPU between steps) ---- */

static PyObject *py_adamw_update(PyObject *self, PyObject *args) {
    PyObject *op, *om, *ov, *og;
    float lr, b1, b2, eps, wd, scale;
    int step;
    if (!PyArg_ParseTuple(args, "OOOOfffffif:cuda_adamw_update", &op, &om, &ov, &og, &lr, &b1, &b2, &eps, &wd, &step,
                          &scale) ||
        !started())
        return NULL;
    if (step < 1) return PyErr_Format(PyExc_ValueError, "step must be >= 1 (got %d)", step);
    DEV(p, op, F32, 1, NULL, 1, "params");
    npy_intp n = (npy_intp)LEN(p);
    DEV(m, om, F32, 1, SHAPE(n), 1, "exp_avg");
    DEV(v, ov, F32, 1, SHAPE(n), 1, "exp_avg_sq");
    DEV(g, og, F32, 1, SHAPE(n), 0, "grads");
    RUN(ca_cuda_adamw_update(DATA(p, float), DATA(m, float), DATA(v, float), DATA(g, float), (size_t)n, lr, b1, b2,
                             eps, wd, step, scale));
    Py_RETURN_NONE;
}

static PyObject *py_sum_squares(PyObject *self, PyObject *arg) {
    if (!started()) return NULL;
    DEV(x, arg, F32, -1, NULL, 0, "x");
    double total = 0.0;
    RUN(total = ca_cuda_sum_squares(DATA(x, float), LEN(x)));
    return PyFloat_FromDouble(total);
}

/* ---- federated aggregation ---- */

static PyObject *py_fed_acc_add(PyObject *self, PyObject *args) {
    PyObject *os, *ox;
    double w;
    if (!PyArg_ParseTuple(args, "OOd:cuda_fed_acc_add", &os, &ox, &w) || !started()) return NULL;
    DEV(x, ox, F32, 1, NULL, 0, "x");
    DEV(sum, os, F64, 1, SHAPE((npy_intp)LEN(x)), 1, "sum");
    RUN(ca_cuda_fed_acc_add(DATA(sum, double), DATA(x, float), w, LEN(x)));
    Py_RETURN_NONE;
}

static PyObject *py_fed_acc_mean(PyObject *self, PyObject *args) {
    PyObject *oo, *os;
    double weight;
    if (!PyArg_ParseTuple(args, "OOd:cuda_fed_acc_mean", &oo, &os, &weight) || !started()) return NULL;
    if (!(weight > 0.0)) return PyErr_Format(PyExc_ValueError, "weighted mean: total weight is %g", weight);
    DEV(sum, os, F64, 1, NULL, 0, "sum");
    DEV(out, oo, F32, 1, SHAPE((npy_intp)LEN(sum)), 1, "out");
    RUN(ca_cuda_fed_acc_mean(DATA(out, float), DATA(sum, double), weight, LEN(sum)));
    Py_RETURN_NONE;
}

static PyObject *py_fed_fedavgm_step(PyObject *self, PyObject *args) {
    PyObject *ox, *ov, *os;
    double weight, lr, mom;
    int first;
    if (!PyArg_ParseTuple(args, "OOOdddp:cuda_fed_fedavgm_step", &ox, &ov, &os, &weight, &lr, &mom, &first) ||
        !started())
        return NULL;
    if (!(weight > 0.0)) return PyErr_Format(PyExc_ValueError, "FedAvgM: total weight is %g", weight);
    DEV(x, ox, F32, 1, NULL, 1, "x");
    npy_intp n = (npy_intp)LEN(x);
    OPT_DEV(v, ov, F32, 1, SHAPE(n), 1, "v");
    DEV(sum, os, F64, 1, SHAPE(n), 0, "sum");
    if (mom != 0.0 && !v) return PyErr_Format(PyExc_ValueError, "FedAvgM: momentum buffer required");
    RUN(ca_cuda_fed_fedavgm_step(DATA(x, float), ODATA(v, float), DATA(sum, double), weight, (size_t)n, lr, mom,
                                 first));
    Py_RETURN_NONE;
}

static PyObject *py_fed_fedopt_step(PyObject *self, PyObject *args) {
    PyObject *ox, *om, *ov, *os;
    double weight, eta, b1, b2, tau;
    int kind;
    if (!PyArg_ParseTuple(args, "OOOOdidddd:cuda_fed_fedopt_step", &ox, &om, &ov, &os, &weight, &kind, &eta, &b1,
                          &b2, &tau) ||
        !started())
        return NULL;
    if (!(weight > 0.0)) return PyErr_Format(PyExc_ValueError, "FedOpt: total weight is %g", weight);
    if (kind < 0 || kind > 2) return PyErr_Format(PyExc_ValueError, "FedOpt: unknown kind %d", kind);
    DEV(x, ox, F32, 1, NULL, 1, "x");
    npy_intp n = (npy_intp)LEN(x);
    DEV(m, om, F32, 1, SHAPE(n), 1, "m");
    DEV(v, ov, F32, 1, SHAPE(n), 1, "v");
    DEV(sum, os, F64, 1, SHAPE(n), 0, "sum");
    RUN(ca_cuda_fed_fedopt_step(DATA(x, float), DATA(m, float), DATA(v, float), DATA(sum, double), weight, (size_t)n,
                                kind, eta, b1, b2, tau));
    Py_RETURN_NONE;
}

static PyObject *py_fed_l2norm(PyObject *self, PyObject *args) {
    PyObject *ox, *or;
    if (!PyArg_ParseTuple(args, "OO:cuda_fed_l2norm", &ox, &or) || !started()) return NULL;
    DEV(x, ox, F32, 1, NULL, 0, "x");
    OPT_DEV(ref, or, F32, 1, SHAPE((npy_intp)LEN(x)), 0, "ref");
    double norm = 0.0;
    RUN(norm = ca_cuda_fed_l2norm(DATA(x, float), ODATA(ref, float), LEN(x)));
    return PyFloat_FromDouble(norm);
}

static PyObject *py_fed_clip(PyObject *self, PyObject *args) {
    PyObject *oo, *ox, *or;
    double clip;
    if (!PyArg_ParseTuple(args, "OOOd:cuda_fed_clip", &oo, &ox, &or, &clip) || !started()) return NULL;
    DEV(x, ox, F32, 1, NULL, 0, "x");
    npy_intp n = (npy_intp)LEN(x);
    DEV(out, oo, F32, 1, SHAPE(n), 1, "out");
    OPT_DEV(ref, or, F32, 1, SHAPE(n), 0, "ref");
    double norm = 0.0;
    RUN(ca_cuda_fed_clip(DATA(out, float), DATA(x, float), ODATA(ref, float), (size_t)n, clip, &norm));
    return PyFloat_FromDouble(norm);
}

PyMethodDef ca_py_cuda_methods[] = {
    {"cuda_attention_decode", py_attention_decode, METH_VARARGS,
     "cuda_attention_decode(out (B,NH,HS), q (B,NH,HS), k (B,Tk,NKV,HS), v): one query per sequence, all keys"},
    {"cuda_shortconv_step", py_shortconv_step, METH_VARARGS,
     "cuda_shortconv_step(y, u, c (B,C), state (B,L-1,C) advanced, z (B,3C), weight (C,L))"},
    {"cuda_linear_bf16", py_linear_bf16, METH_VARARGS,
     "cuda_linear_bf16(out (N,OC), inp (N,C), weight (OC,C) fp32 rounded to bf16, bias (OC,) or None)"},
    {"cuda_adamw_update", py_adamw_update, METH_VARARGS,
     "cuda_adamw_update(params, exp_avg, exp_avg_sq, grads, lr, beta1, beta2, eps, weight_decay, step, grad_scale)"},
    {"cuda_sum_squares", py_sum_squares, METH_O, "sum of squares of a device float32 array, in float64"},
    {"cuda_fed_acc_add", py_fed_acc_add, METH_VARARGS, "cuda_fed_acc_add(sum_f64, x, w): sum += w*x"},
    {"cuda_fed_acc_mean", py_fed_acc_mean, METH_VARARGS, "cuda_fed_acc_mean(out, sum_f64, weight)"},
    {"cuda_fed_fedavgm_step", py_fed_fedavgm_step, METH_VARARGS,
     "cuda_fed_fedavgm_step(x, v|None, sum, weight, server_lr, momentum, first_round)"},
    {"cuda_fed_fedopt_step", py_fed_fedopt_step, METH_VARARGS,
     "cuda_fed_fedopt_step(x, m, v, sum, weight, kind, eta, beta1, beta2, tau)"},
    {"cuda_fed_l2norm", py_fed_l2norm, METH_VARARGS, "cuda_fed_l2norm(x, ref|None) -> ||x - ref||_2"},
    {"cuda_fed_clip", py_fed_clip, METH_VARARGS, "cuda_fed_clip(out, x, ref|None, C) -> norm before clipping"},
    {NULL, NULL, 0, NULL},
};

#else

PyMethodDef ca_py_cuda_methods[] = {{NULL, NULL, 0, NULL}};

#endif
