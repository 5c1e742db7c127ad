/* Python glue for the federated area (ca_fed.h): thin wrappers on preallocated NumPy arrays, outputs first
 * like the C. The streaming accumulator's float64 sum is a NumPy array owned by Python
 * (captionaura.federated.WeightedAccumulator), wrapped here in a ca_fed_acc on the stack, so no extension
 * type is needed. Vectors are 1-D, float32 (float64 for the accumulator and noise, uint32 for secure
 * aggregation), C-contiguous; lengths are checked against the first vector. The GIL is released around
 * compute. */
#include "py_common.h"

#include "captionaura/ca_fed.h"

#define F32 NPY_FLOAT32
#define F64 NPY_FLOAT64
#define U32 NPY_UINT32
#define SHAPE1(n) ((const npy_intp[]){(npy_intp)(n)})
#define LEN(a) ((size_t)PyArray_DIM(a, 0))

#define NOGIL(call)                                                                                           \
    do {                                                                                                      \
        Py_BEGIN_ALLOW_THREADS ca_threads_apply(); call;                                                      \
        Py_END_ALLOW_THREADS                                                                                  \
    } while (0)

#define VEC(var, obj, type, w, name)                                                                          \
    PyArrayObject *var = ca_py_array(obj, type, 1, w, name);                                                  \
    if (!var) return NULL;
#define VECN(var, obj, type, n, w, name)                                                                      \
    PyArrayObject *var = ca_py_array_shape(obj, type, 1, SHAPE1(n), w, name);                                 \
    if (!var) return NULL;
#define OPTN(var, obj, type, n, w, name)                                                                      \
    PyArrayObject *var = NULL;                                                                                \
    if ((obj) != Py_None) {                                                                                   \
        var = ca_py_array_shape(obj, type, 1, SHAPE1(n), w, name);                                            \
        if (!var) return NULL;                                                                                \
    }
#define DATA(a, T) ((T *)PyArray_DATA(a))
#define ODATA(a, T) ((a) ? (T *)PyArray_DATA(a) : NULL)

static ca_fed_acc wrap_acc(PyArrayObject *sum, double weight) {
    ca_fed_acc acc = {DATA(sum, double), weight, LEN(sum), 0};
    return acc;
}

/* A sequence of K equal-length float32 vectors → a malloc'ed pointer table; `seq` keeps them alive. */
static const float **vector_table(PyObject *seq, size_t n_expected, int K) {
    const float **xs = PyMem_Malloc((size_t)(K ? K : 1) * sizeof *xs);
    if (!xs) {
        PyErr_NoMemory();
        return NULL;
    }
    for (int k = 0; k < K; k++) {
        PyArrayObject *a = ca_py_array_shape(PySequence_Fast_GET_ITEM(seq, k), F32, 1, SHAPE1(n_expected), 0,
                                             "client vector");
        if (!a) {
            PyMem_Free(xs);
            return NULL;
        }
        xs[k] = DATA(a, const float);
    }
    return xs;
}

static PyObject *py_first_nonfinite(PyObject *self, PyObject *arg) {
    VEC(x, arg, F32, 0, "x");
    size_t r;
    NOGIL(r = ca_fed_first_nonfinite(DATA(x, const float), LEN(x)));
    return PyLong_FromSsize_t(r == LEN(x) ? -1 : (Py_ssize_t)r);
}

static PyObject *py_l2norm(PyObject *self, PyObject *args) {
    PyObject *ox, *oref;
    if (!PyArg_ParseTuple(args, "OO:l2norm", &ox, &oref)) return NULL;
    VEC(x, ox, F32, 0, "x");
    OPTN(ref, oref, F32, LEN(x), 0, "ref");
    double r;
    NOGIL(r = ca_fed_l2norm(DATA(x, const float), ODATA(ref, const float), LEN(x)));
    return PyFloat_FromDouble(r);
}

static PyObject *py_acc_add(PyObject *self, PyObject *args) {
    PyObject *osum, *ox;
    double w;
    if (!PyArg_ParseTuple(args, "OOd:acc_add", &osum, &ox, &w)) return NULL;
    VEC(sum, osum, F64, 1, "sum");
    VECN(x, ox, F32, LEN(sum), 0, "x");
    ca_fed_acc acc = wrap_acc(sum, 0.0);
    NOGIL(ca_fed_acc_add(&acc, DATA(x, const float), w));
    Py_RETURN_NONE;
}

static PyObject *py_acc_add_many(PyObject *self, PyObject *args) {
    PyObject *osum, *olist, *ow;
    if (!PyArg_ParseTuple(args, "OOO:acc_add_many", &osum, &olist, &ow)) return NULL;
    VEC(sum, osum, F64, 1, "sum");
    PyObject *seq = PySequence_Fast(olist, "vectors must be a sequence of arrays");
    if (!seq) return NULL;
    int G = (int)PySequence_Fast_GET_SIZE(seq);
    PyArrayObject *w = ca_py_array_shape(ow, F64, 1, SHAPE1(G), 0, "weights");
    const float **xs = w ? vector_table(seq, LEN(sum), G) : NULL;
    if (!xs) {
        Py_DECREF(seq);
        return NULL;
    }
    ca_fed_acc acc = wrap_acc(sum, 0.0);
    NOGIL(ca_fed_acc_add_many(&acc, xs, DATA(w, const double), G));
    PyMem_Free(xs);
    Py_DECREF(seq);
    Py_RETURN_NONE;
}

static PyObject *py_acc_add_checked(PyObject *self, PyObject *args) {
    PyObject *osum, *ox;
    double w;
    if (!PyArg_ParseTuple(args, "OOd:acc_add_checked", &osum, &ox, &w)) return NULL;
    VEC(sum, osum, F64, 1, "sum");
    VECN(x, ox, F32, LEN(sum), 0, "x");
    ca_fed_acc acc = wrap_acc(sum, 0.0);
    size_t r;
    NOGIL(r = ca_fed_acc_add_checked(&acc, DATA(x, const float), w));
    return PyLong_FromSsize_t(r == LEN(sum) ? -1 : (Py_ssize_t)r);
}

static PyObject *py_acc_mean(PyObject *self, PyObject *args) {
    PyObject *oout, *osum;
    double weight;
    if (!PyArg_ParseTuple(args, "OOd:acc_mean", &oout, &osum, &weight)) return NULL;
    VEC(sum, osum, F64, 0, "sum");
    VECN(out, oout, F32, LEN(sum), 1, "out");
    ca_fed_acc acc = wrap_acc(sum, weight);
    ca_status st;
    NOGIL(st = ca_fed_acc_mean(DATA(out, float), &acc));
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_fedopt_step(PyObject *self, PyObject *args) {
    PyObject *ox, *om, *ov, *osum;
    double weight, eta, b1, b2, tau;
    int kind;
    if (!PyArg_ParseTuple(args, "OOOOdidddd:fedopt_step", &ox, &om, &ov, &osum, &weight, &kind, &eta, &b1, &b2,
                          &tau))
        return NULL;
    VEC(x, ox, F32, 1, "x");
    size_t n = LEN(x);
    VECN(m, om, F32, n, 1, "m");
    VECN(v, ov, F32, n, 1, "v");
    VECN(sum, osum, F64, n, 0, "sum");
    ca_fed_acc acc = wrap_acc(sum, weight);
    ca_status st;
    NOGIL(st = ca_fed_fedopt_step(DATA(x, float), DATA(m, float), DATA(v, float), &acc, (ca_fedopt_kind)kind, eta,
                                  b1, b2, tau));
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_fedavgm_step(PyObject *self, PyObject *args) {
    PyObject *ox, *ov, *osum;
    double weight, lr, mom;
    int first;
    if (!PyArg_ParseTuple(args, "OOOdddp:fedavgm_step", &ox, &ov, &osum, &weight, &lr, &mom, &first)) return NULL;
    VEC(x, ox, F32, 1, "x");
    size_t n = LEN(x);
    OPTN(v, ov, F32, n, 1, "v");
    VECN(sum, osum, F64, n, 0, "sum");
    ca_fed_acc acc = wrap_acc(sum, weight);
    ca_status st;
    NOGIL(st = ca_fed_fedavgm_step(DATA(x, float), ODATA(v, float), &acc, lr, mom, first));
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_proximal(PyObject *self, PyObject *args) {
    PyObject *og, *ow, *owt;
    double mu;
    if (!PyArg_ParseTuple(args, "OOOd:proximal", &og, &ow, &owt, &mu)) return NULL;
    VEC(w, ow, F32, 0, "w");
    size_t n = LEN(w);
    VECN(wt, owt, F32, n, 0, "w_t");
    OPTN(g, og, F32, n, 1, "grad");
    double r;
    NOGIL(r = ca_fed_proximal(ODATA(g, float), DATA(w, const float), DATA(wt, const float), n, mu));
    return PyFloat_FromDouble(r);
}

static PyObject *py_coordinate_rule(PyObject *self, PyObject *args) {
    PyObject *oout, *olist;
    int rule, param;
    if (!PyArg_ParseTuple(args, "OOii:coordinate_rule", &oout, &olist, &rule, &param)) return NULL;
    VEC(out, oout, F32, 1, "out");
    PyObject *seq = PySequence_Fast(olist, "vectors must be a sequence of arrays");
    if (!seq) return NULL;
    int K = (int)PySequence_Fast_GET_SIZE(seq);
    const float **xs = vector_table(seq, LEN(out), K);
    if (!xs) {
        Py_DECREF(seq);
        return NULL;
    }
    ca_status st;
    NOGIL(st = ca_fed_coordinate_rule(DATA(out, float), xs, K, LEN(out), (ca_fed_coord_rule)rule, param));
    PyMem_Free(xs);
    Py_DECREF(seq);
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_pairwise_sqdist(PyObject *self, PyObject *args) {
    PyObject *oD, *olist;
    if (!PyArg_ParseTuple(args, "OO:pairwise_sqdist", &oD, &olist)) return NULL;
    PyObject *seq = PySequence_Fast(olist, "vectors must be a sequence of arrays");
    if (!seq) return NULL;
    int K = (int)PySequence_Fast_GET_SIZE(seq);
    if (K < 1) {
        Py_DECREF(seq);
        return PyErr_Format(PyExc_ValueError, "pairwise_sqdist: need at least one vector");
    }
    PyArrayObject *first = ca_py_array(PySequence_Fast_GET_ITEM(seq, 0), F32, 1, 0, "client vector");
    PyArrayObject *D = first ? ca_py_array_shape(oD, F64, 2, ((const npy_intp[]){K, K}), 1, "D") : NULL;
    const float **xs = D ? vector_table(seq, LEN(first), K) : NULL;
    if (!xs) {
        Py_DECREF(seq);
        return NULL;
    }
    ca_status st;
    size_t n = LEN(first);
    NOGIL(st = ca_fed_pairwise_sqdist(DATA(D, double), xs, K, n));
    PyMem_Free(xs);
    Py_DECREF(seq);
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_clip(PyObject *self, PyObject *args) {
    PyObject *oout, *ox, *oref;
    double c;
    if (!PyArg_ParseTuple(args, "OOOd:clip", &oout, &ox, &oref, &c)) return NULL;
    VEC(x, ox, F32, 0, "x");
    size_t n = LEN(x);
    VECN(out, oout, F32, n, 1, "out");
    OPTN(ref, oref, F32, n, 0, "ref");
    double norm = 0.0;
    NOGIL(ca_fed_clip(DATA(out, float), DATA(x, const float), ODATA(ref, const float), n, c, &norm));
    return PyFloat_FromDouble(norm);
}

static PyObject *py_add_noise(PyObject *self, PyObject *args) {
    PyObject *oout, *onoise;
    if (!PyArg_ParseTuple(args, "OO:add_noise", &oout, &onoise)) return NULL;
    VEC(out, oout, F32, 1, "out");
    VECN(noise, onoise, F64, LEN(out), 0, "noise");
    NOGIL(ca_fed_add_noise(DATA(out, float), DATA(noise, const double), LEN(out)));
    Py_RETURN_NONE;
}

static PyObject *py_secagg_quantize(PyObject *self, PyObject *args) {
    PyObject *oq, *ox, *ornd;
    double scale, clip;
    unsigned long long levels;
    int bits;
    if (!PyArg_ParseTuple(args, "OOOddKi:secagg_quantize", &oq, &ox, &ornd, &scale, &clip, &levels, &bits))
        return NULL;
    VEC(x, ox, F32, 0, "x");
    size_t n = LEN(x);
    VECN(q, oq, U32, n, 1, "q");
    OPTN(rnd, ornd, U32, n, 0, "rnd");
    ca_status st;
    NOGIL(st = ca_secagg_quantize(DATA(q, uint32_t), DATA(x, const float), ODATA(rnd, const uint32_t), n, scale,
                                  clip, (uint64_t)levels, bits));
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_secagg_add_mod(PyObject *self, PyObject *args) {
    PyObject *oy, *omask;
    int sign, bits;
    if (!PyArg_ParseTuple(args, "OOii:secagg_add_mod", &oy, &omask, &sign, &bits)) return NULL;
    VEC(y, oy, U32, 1, "y");
    VECN(mask, omask, U32, LEN(y), 0, "mask");
    ca_status st;
    NOGIL(st = ca_secagg_add_mod(DATA(y, uint32_t), DATA(mask, const uint32_t), LEN(y), sign, bits));
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_secagg_dequantize(PyObject *self, PyObject *args) {
    PyObject *oout, *osum;
    int K, bits;
    double clip;
    unsigned long long levels;
    if (!PyArg_ParseTuple(args, "OOidKi:secagg_dequantize", &oout, &osum, &K, &clip, &levels, &bits)) return NULL;
    VEC(sum, osum, U32, 0, "sum");
    VECN(out, oout, F32, LEN(sum), 1, "out");
    ca_status st;
    NOGIL(st = ca_secagg_dequantize(DATA(out, float), DATA(sum, const uint32_t), LEN(sum), K, clip,
                                    (uint64_t)levels, bits));
    if (st != CA_OK) return ca_py_raise(st);
    Py_RETURN_NONE;
}

static PyObject *py_stream_triad(PyObject *self, PyObject *args) {
    PyObject *oa, *ob, *oc;
    double s;
    if (!PyArg_ParseTuple(args, "OOOd:stream_triad", &oa, &ob, &oc, &s)) return NULL;
    VEC(a, oa, F64, 1, "a");
    VECN(b, ob, F64, LEN(a), 0, "b");
    VECN(c, oc, F64, LEN(a), 0, "c");
    NOGIL(ca_fed_stream_triad(DATA(a, double), DATA(b, const double), DATA(c, const double), s, LEN(a)));
    Py_RETURN_NONE;
}

PyMethodDef ca_py_fed_methods[] = {
    {"fed_stream_triad", py_stream_triad, METH_VARARGS, "fed_stream_triad(a, b, c, s): a = b + s*c (STREAM)."},
    {"fed_first_nonfinite", py_first_nonfinite, METH_O, "Index of the first NaN/Inf of a float32 vector, or -1."},
    {"fed_l2norm", py_l2norm, METH_VARARGS, "fed_l2norm(x, ref|None) -> ||x - ref||_2 (float64 accumulation)."},
    {"fed_acc_add", py_acc_add, METH_VARARGS, "fed_acc_add(sum_f64, x, w): sum += w*x."},
    {"fed_acc_add_many", py_acc_add_many, METH_VARARGS,
     "fed_acc_add_many(sum_f64, vectors, weights_f64): sum += sum_k w_k*x_k in one pass."},
    {"fed_acc_add_checked", py_acc_add_checked, METH_VARARGS,
     "fed_acc_add_checked(sum_f64, x, w) -> -1 after sum += w*x, or the first NaN/Inf index (sum unchanged)."},
    {"fed_acc_mean", py_acc_mean, METH_VARARGS, "fed_acc_mean(out, sum_f64, weight): out = sum/weight."},
    {"fed_fedopt_step", py_fedopt_step, METH_VARARGS,
     "fed_fedopt_step(x, m, v, sum, weight, kind, eta, beta1, beta2, tau): FedAdam(0)/FedYogi(1)/FedAdagrad(2)."},
    {"fed_fedavgm_step", py_fedavgm_step, METH_VARARGS,
     "fed_fedavgm_step(x, v|None, sum, weight, server_lr, momentum, first_round)."},
    {"fed_proximal", py_proximal, METH_VARARGS,
     "fed_proximal(grad|None, w, w_t, mu) -> mu/2*||w - w_t||^2; grad += mu*(w - w_t)."},
    {"fed_coordinate_rule", py_coordinate_rule, METH_VARARGS,
     "fed_coordinate_rule(out, vectors, rule, param): median(0), trimmed mean(1), closest-to-median mean(2)."},
    {"fed_pairwise_sqdist", py_pairwise_sqdist, METH_VARARGS, "fed_pairwise_sqdist(D (K,K) f64, vectors)."},
    {"fed_clip", py_clip, METH_VARARGS, "fed_clip(out, x, ref|None, C) -> norm before clipping (FlatClip)."},
    {"fed_add_noise", py_add_noise, METH_VARARGS, "fed_add_noise(out, noise_f64): out += noise."},
    {"secagg_quantize", py_secagg_quantize, METH_VARARGS,
     "secagg_quantize(q_u32, x, rnd_u32|None, scale, clip, levels, bits)."},
    {"secagg_add_mod", py_secagg_add_mod, METH_VARARGS, "secagg_add_mod(y_u32, mask_u32, sign, bits)."},
    {"secagg_dequantize", py_secagg_dequantize, METH_VARARGS,
     "secagg_dequantize(out, sum_u32, num_clients, clip, levels, bits)."},
    {NULL, NULL, 0, NULL},
};
