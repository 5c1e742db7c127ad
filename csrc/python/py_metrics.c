/* Python glue for the metrics area: captionaura._core.caption_metrics (see ca_metrics.h). */
#include "py_common.h"

#include <stdlib.h>

#include "captionaura/ca_metrics.h"

/* Fills texts[0..n) with the UTF-8 views of the str items of `tup` (a tuple, so the strings stay alive and
 * in place while the GIL is released). Returns 0, or -1 with TypeError naming `what` and the index. */
static int utf8_views(PyObject *tup, ca_text *texts, const char *what) {
    Py_ssize_t n = PyTuple_GET_SIZE(tup);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = PyTuple_GET_ITEM(tup, i);
        if (!PyUnicode_Check(s)) {
            PyErr_Format(PyExc_TypeError, "%s[%zd] must be str, got %.100s", what, i, Py_TYPE(s)->tp_name);
            return -1;
        }
        Py_ssize_t len;
        const char *p = PyUnicode_AsUTF8AndSize(s, &len);
        if (!p) return -1;
        texts[i].ptr = p;
        texts[i].len = (size_t)len;
    }
    return 0;
}

static PyObject *new_vector(npy_intp n, double **data) {
    PyObject *a = PyArray_SimpleNew(1, &n, NPY_FLOAT64);
    if (a) *data = (double *)PyArray_DATA((PyArrayObject *)a);
    return a;
}

static PyObject *py_caption_metrics(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"candidates", "references", "ref_offsets", "metrics", NULL};
    PyObject *cand_obj, *ref_obj, *off_obj;
    unsigned int metrics = CA_METRIC_ALL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|I", kwlist, &cand_obj, &ref_obj, &off_obj, &metrics))
        return NULL;

    PyObject *cands = NULL, *refs = NULL, *result = NULL;
    PyObject *bleu_pi = NULL, *cider_pi = NULL, *rouge_pi = NULL;
    ca_text *texts = NULL;
    ca_caption_scores sc = {0};

    PyArrayObject *off = ca_py_array(off_obj, NPY_INT64, 1, 0, "ref_offsets");
    if (!off) return NULL;
    if (!(cands = PySequence_Tuple(cand_obj))) goto done;
    if (!(refs = PySequence_Tuple(ref_obj))) goto done;
    Py_ssize_t n = PyTuple_GET_SIZE(cands), n_refs = PyTuple_GET_SIZE(refs);
    if (PyArray_DIM(off, 0) != n + 1) {
        PyErr_Format(PyExc_ValueError, "ref_offsets must have %zd entries (images + 1), got %zd", n + 1,
                     (Py_ssize_t)PyArray_DIM(off, 0));
        goto done;
    }
    const int64_t *offsets = (const int64_t *)PyArray_DATA(off);
    if (n > 0 && offsets[n] != n_refs) {
        PyErr_Format(PyExc_ValueError, "ref_offsets[-1] = %lld but there are %zd references", (long long)offsets[n],
                     n_refs);
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (offsets[i] < 0 || offsets[i + 1] > n_refs) {
            PyErr_Format(PyExc_ValueError, "ref_offsets[%zd] is out of range", i);
            goto done;
        }
    }
    if (!(texts = PyMem_Malloc((size_t)(n + n_refs + 1) * sizeof *texts))) {
        PyErr_NoMemory();
        goto done;
    }
    if (utf8_views(cands, texts, "candidates") < 0 || utf8_views(refs, texts + n, "references") < 0) goto done;

    if (metrics & CA_METRIC_BLEU) {
        npy_intp dims[2] = {4, n};
        if (!(bleu_pi = PyArray_SimpleNew(2, dims, NPY_FLOAT64))) goto done;
        sc.bleu_per_image = (double *)PyArray_DATA((PyArrayObject *)bleu_pi);
    }
    if ((metrics & CA_METRIC_CIDER) && !(cider_pi = new_vector(n, &sc.cider_per_image))) goto done;
    if ((metrics & CA_METRIC_ROUGE_L) && !(rouge_pi = new_vector(n, &sc.rouge_per_image))) goto done;

    ca_status st;
    Py_BEGIN_ALLOW_THREADS
    ca_threads_apply();
    st = ca_caption_metrics((int64_t)n, texts, offsets, texts + n, metrics, &sc);
    Py_END_ALLOW_THREADS
    if (st != CA_OK) {
        ca_py_raise(st);
        goto done;
    }

    result = PyDict_New();
    if (!result) goto done;
    if (bleu_pi) {
        PyObject *corpus = Py_BuildValue("(dddd)", sc.bleu[0], sc.bleu[1], sc.bleu[2], sc.bleu[3]);
        PyObject *stats = Py_BuildValue("{s:d,s:d,s:(dddd),s:(dddd)}", "testlen", sc.bleu_testlen, "reflen",
                                        sc.bleu_reflen, "guess", sc.bleu_guess[0], sc.bleu_guess[1],
                                        sc.bleu_guess[2], sc.bleu_guess[3], "correct", sc.bleu_correct[0],
                                        sc.bleu_correct[1], sc.bleu_correct[2], sc.bleu_correct[3]);
        int bad = !corpus || !stats || PyDict_SetItemString(result, "bleu", corpus) < 0 ||
                  PyDict_SetItemString(result, "bleu_per_image", bleu_pi) < 0 ||
                  PyDict_SetItemString(result, "bleu_stats", stats) < 0;
        Py_XDECREF(corpus);
        Py_XDECREF(stats);
        if (bad) goto fail;
    }
    if (cider_pi) {
        PyObject *v = PyFloat_FromDouble(sc.cider);
        int bad = !v || PyDict_SetItemString(result, "cider", v) < 0 ||
                  PyDict_SetItemString(result, "cider_per_image", cider_pi) < 0;
        Py_XDECREF(v);
        if (bad) goto fail;
    }
    if (rouge_pi) {
        PyObject *v = PyFloat_FromDouble(sc.rouge_l);
        int bad = !v || PyDict_SetItemString(result, "rouge_l", v) < 0 ||
                  PyDict_SetItemString(result, "rouge_l_per_image", rouge_pi) < 0;
        Py_XDECREF(v);
        if (bad) goto fail;
    }
    goto done;
fail:
    Py_CLEAR(result);
done:
    PyMem_Free(texts);
    Py_XDECREF(cands);
    Py_XDECREF(refs);
    Py_XDECREF(bleu_pi);
    Py_XDECREF(cider_pi);
    Py_XDECREF(rouge_pi);
    return result;
}

PyMethodDef ca_py_metrics_methods[] = {
    {"caption_metrics", (PyCFunction)(void (*)(void))py_caption_metrics, METH_VARARGS | METH_KEYWORDS,
     "caption_metrics(candidates, references, ref_offsets, metrics=7) -> dict\n\n"
     "COCO caption metrics on tokenised captions (tokens separated by spaces). Image i has candidates[i] and\n"
     "references[ref_offsets[i]:ref_offsets[i+1]] (ref_offsets: int64 array of n+1 entries). metrics is a\n"
     "mask: 1 BLEU, 2 CIDEr-D, 4 ROUGE-L. Returns a dict with 'bleu' (4 corpus values), 'bleu_per_image'\n"
     "(4 x n array), 'bleu_stats', 'cider', 'cider_per_image', 'rouge_l', 'rouge_l_per_image'."},
    {NULL, NULL, 0, NULL},
};
