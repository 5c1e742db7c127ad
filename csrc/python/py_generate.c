/* Python glue for decoding: _core.generate(model, ...) runs ca_generate with the GIL released and the
 * model's lock held; a Python callback (stop strings, a user's hook) is called per emitted token with the GIL
 * re-acquired. The callback must not use the same model (its lock is held): it would deadlock.
 * Streaming hands tokens over through a TokenChannel instead, without the GIL. */
#include "py_common.h"

#include <pthread.h>
#include <pythread.h>

#include "captionaura/ca_generate.h"

typedef struct {
    PyObject *callable;
    PyObject *exc_type, *exc_value, *exc_tb; /* a callback's exception, re-raised after the C loop */
} callback_state;

/* Returns 0 (go on), 1 (finish this sequence: the callable returned a true value) or −1 (it raised). */
static int call_python(void *user, int seq, int32_t token) {
    callback_state *cs = user;
    PyGILState_STATE gil = PyGILState_Ensure();
    int r = 0;
    PyObject *res = PyObject_CallFunction(cs->callable, "ii", seq, (int)token);
    if (!res) {
        PyErr_Fetch(&cs->exc_type, &cs->exc_value, &cs->exc_tb);
        r = -1;
    } else {
        int truth = PyObject_IsTrue(res);
        Py_DECREF(res);
        if (truth < 0) {
            PyErr_Fetch(&cs->exc_type, &cs->exc_value, &cs->exc_tb);
            r = -1;
        } else {
            r = truth;
        }
    }
    PyGILState_Release(gil);
    return r;
}

/* TokenChannel: the decoding loop (on a worker thread, GIL released) appends (row, token) pairs under a mutex,
 * never taking the GIL; the consumer waits for them with the GIL released and takes every pair that has
 * arrived at once. A Python callback per token instead needs the GIL on the decoding thread while the
 * consumer holds it to run its own code: each hand-off then waits up to the interpreter's switch interval
 * (5 ms), and streaming ran ~5x slower than a plain call. */
typedef struct {
    PyObject_HEAD
    pthread_mutex_t mutex;
    pthread_cond_t arrived;   /* signalled on each new pair and on finish */
    int32_t *pairs;           /* (capacity, 2): row, token; written once, so readable after unlocking */
    size_t count, taken, capacity;
    int finished, closed, ready;
    callback_state hook;      /* optional Python hook per token (stop strings), called with the GIL */
} TokenChannel;

static int TokenChannel_init(TokenChannel *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"capacity", "hook", NULL};
    Py_ssize_t capacity;
    PyObject *hook = Py_None;
    if (self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "TokenChannel is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n|O", kwlist, &capacity, &hook)) return -1;
    if (capacity < 1) {
        PyErr_SetString(PyExc_ValueError, "capacity must be >= 1");
        return -1;
    }
    if (hook != Py_None && !PyCallable_Check(hook)) {
        PyErr_SetString(PyExc_TypeError, "hook must be callable or None");
        return -1;
    }
    self->pairs = malloc((size_t)capacity * 2 * sizeof(int32_t));
    if (!self->pairs) {
        PyErr_NoMemory();
        return -1;
    }
    pthread_mutex_init(&self->mutex, NULL);
    pthread_cond_init(&self->arrived, NULL);
    self->capacity = (size_t)capacity;
    self->hook.callable = hook == Py_None ? NULL : (Py_INCREF(hook), hook);
    self->ready = 1;
    return 0;
}

static void TokenChannel_dealloc(TokenChannel *self) {
    if (self->ready) {
        pthread_mutex_destroy(&self->mutex);
        pthread_cond_destroy(&self->arrived);
    }
    free(self->pairs);
    Py_XDECREF(self->hook.callable);
    Py_XDECREF(self->hook.exc_type), Py_XDECREF(self->hook.exc_value), Py_XDECREF(self->hook.exc_tb);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The decoding loop's callback: 1 (finish the row) once the consumer closed the channel. */
static int channel_push(void *user, int seq, int32_t token) {
    TokenChannel *ch = user;
    pthread_mutex_lock(&ch->mutex);
    if (ch->count == ch->capacity) {
        pthread_mutex_unlock(&ch->mutex);
        return -1; /* more tokens than the caller sized it for: generate raises */
    }
    ch->pairs[2 * ch->count] = seq;
    ch->pairs[2 * ch->count + 1] = token;
    ch->count++;
    const int closed = ch->closed;
    pthread_cond_signal(&ch->arrived);
    pthread_mutex_unlock(&ch->mutex);
    if (closed) return 1;
    return ch->hook.callable ? call_python(&ch->hook, seq, token) : 0;
}

static PyObject *TokenChannel_take(TokenChannel *self, PyObject *unused) {
    size_t from, to;
    Py_BEGIN_ALLOW_THREADS pthread_mutex_lock(&self->mutex);
    while (self->taken == self->count && !self->finished) pthread_cond_wait(&self->arrived, &self->mutex);
    from = self->taken;
    to = self->taken = self->count;
    pthread_mutex_unlock(&self->mutex);
    Py_END_ALLOW_THREADS
    PyObject *list = PyList_New((Py_ssize_t)(to - from));
    if (!list) return NULL;
    for (size_t i = from; i < to; i++) {
        PyObject *pair = Py_BuildValue("(ii)", (int)self->pairs[2 * i], (int)self->pairs[2 * i + 1]);
        if (!pair) return Py_DECREF(list), NULL;
        PyList_SET_ITEM(list, (Py_ssize_t)(i - from), pair);
    }
    return list;
}

static PyObject *channel_flag(TokenChannel *self, int finish) {
    pthread_mutex_lock(&self->mutex);
    if (finish) self->finished = 1;
    else self->closed = 1;
    pthread_cond_broadcast(&self->arrived);
    pthread_mutex_unlock(&self->mutex);
    Py_RETURN_NONE;
}

static PyObject *TokenChannel_finish(TokenChannel *self, PyObject *unused) { return channel_flag(self, 1); }
static PyObject *TokenChannel_close(TokenChannel *self, PyObject *unused) { return channel_flag(self, 0); }

static PyMethodDef TokenChannel_methods[] = {
    {"take", (PyCFunction)TokenChannel_take, METH_NOARGS,
     "take() -> [(row, token), ...]: the pairs arrived since the last take, waiting (GIL released) for at least\n"
     "one; [] once finished and drained."},
    {"finish", (PyCFunction)TokenChannel_finish, METH_NOARGS, "No more pairs will come: wakes take()."},
    {"close", (PyCFunction)TokenChannel_close, METH_NOARGS, "The consumer is gone: every row ends at its next token."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TokenChannelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "captionaura._core.TokenChannel",
    .tp_basicsize = sizeof(TokenChannel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "TokenChannel(capacity, hook=None): streams generate's tokens to another thread without the GIL;\n"
              "pass it as generate's callback. capacity: at most that many tokens (B * max_new_tokens).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)TokenChannel_init,
    .tp_dealloc = (destructor)TokenChannel_dealloc,
    .tp_methods = TokenChannel_methods,
};

int ca_py_generate_init(PyObject *module) {
    if (PyType_Ready(&TokenChannelType) < 0) return -1;
    Py_INCREF(&TokenChannelType);
    if (PyModule_AddObject(module, "TokenChannel", (PyObject *)&TokenChannelType) < 0) {
        Py_DECREF(&TokenChannelType);
        return -1;
    }
    return 0;
}

static PyObject *py_generate(PyObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"model", "prompts", "lengths", "max_new_tokens", "min_new_tokens", "do_sample",
                             "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                             "no_repeat_ngram_size", "num_beams", "length_penalty", "early_stopping",
                             "num_return_sequences", "eos_token_ids", "pad_token_id", "seed", "callback",
                             "step_scores", "feature_positions", "features", NULL};
    PyObject *model_obj, *prompts_obj, *lengths_obj, *eos_obj, *cb_obj = Py_None, *fpos_obj = Py_None,
                                                               *fval_obj = Py_None;
    ca_gen_config g = {0};
    unsigned long long seed = 0;
    int want_steps = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOiipfifffiifiiOiK|OpOO", kwlist, &model_obj, &prompts_obj,
                                     &lengths_obj, &g.max_new_tokens, &g.min_new_tokens, &g.do_sample,
                                     &g.temperature, &g.top_k, &g.top_p, &g.min_p, &g.repetition_penalty,
                                     &g.no_repeat_ngram_size, &g.num_beams, &g.length_penalty, &g.early_stopping,
                                     &g.num_return_sequences, &eos_obj, &g.pad_id, &seed, &cb_obj, &want_steps,
                                     &fpos_obj, &fval_obj))
        return NULL;
    g.seed = seed;
    void *lock = NULL;
    ca_lfm2_model *m = ca_py_lfm2_unwrap(model_obj, &lock);
    if (!m) return NULL;
    PyArrayObject *prompts = ca_py_array(prompts_obj, NPY_INT32, 1, 0, "prompts");
    PyArrayObject *lengths = prompts ? ca_py_array(lengths_obj, NPY_INT32, 1, 0, "lengths") : NULL;
    PyArrayObject *eos = lengths ? ca_py_array(eos_obj, NPY_INT32, 1, 0, "eos_token_ids") : NULL;
    if (!eos) return NULL;
    const int channel = PyObject_TypeCheck(cb_obj, &TokenChannelType);
    if (channel && !((TokenChannel *)cb_obj)->ready) return PyErr_Format(PyExc_ValueError, "uninitialised TokenChannel");
    if (cb_obj != Py_None && !channel && !PyCallable_Check(cb_obj))
        return PyErr_Format(PyExc_TypeError, "callback must be callable or a TokenChannel");
    const int B = (int)PyArray_DIM(lengths, 0);
    const int32_t *len_p = PyArray_DATA(lengths);
    npy_intp total = 0;
    for (int b = 0; b < B; b++) total += len_p[b] > 0 ? len_p[b] : 0;
    if (total != PyArray_DIM(prompts, 0))
        return PyErr_Format(PyExc_ValueError, "prompts holds %zd tokens but lengths sum to %zd",
                            (Py_ssize_t)PyArray_DIM(prompts, 0), (Py_ssize_t)total);
    if (B < 1) return PyErr_Format(PyExc_ValueError, "generate needs at least one prompt");
    if (fpos_obj != Py_None || fval_obj != Py_None) { /* image features replacing prompt embeddings */
        PyArrayObject *fpos = ca_py_array(fpos_obj, NPY_INT32, 1, 0, "feature_positions");
        if (!fpos) return NULL;
        npy_intp P = PyArray_DIM(fpos, 0);
        PyArrayObject *fval = ca_py_array_shape(fval_obj, NPY_FLOAT32, 2, (npy_intp[]){P, m->cfg.hidden_size}, 0,
                                                "features");
        if (!fval) return NULL;
        const int32_t *pos = PyArray_DATA(fpos);
        for (npy_intp p = 0; p < P; p++)
            if (pos[p] < 0 || pos[p] >= total)
                return PyErr_Format(PyExc_IndexError, "feature position %d is outside the %zd prompt tokens", pos[p],
                                    (Py_ssize_t)total);
        g.feature_positions = pos;
        g.feature_values = PyArray_DATA(fval);
        g.num_features = (int)P;
    }
    g.eos_ids = PyArray_DATA(eos);
    g.n_eos = (int)PyArray_DIM(eos, 0);
    const int R = g.num_return_sequences > 0 ? g.num_return_sequences : 1, N = g.max_new_tokens > 0 ? g.max_new_tokens : 0;
    const int V = m->cfg.vocab_size;
    npy_intp tok_dims[2] = {(npy_intp)B * R, N}, row_dims[1] = {(npy_intp)B * R}, step_dims[3] = {B, N, V};
    PyObject *tokens = PyArray_SimpleNew(2, tok_dims, NPY_INT32);
    PyObject *out_len = PyArray_SimpleNew(1, row_dims, NPY_INT32);
    PyObject *scores = PyArray_ZEROS(1, row_dims, NPY_FLOAT32, 0);
    PyObject *steps = want_steps ? PyArray_ZEROS(3, step_dims, NPY_FLOAT32, 0) : (Py_INCREF(Py_None), Py_None);
    if (!tokens || !out_len || !scores || !steps) goto fail;
    callback_state plain = {cb_obj, NULL, NULL, NULL};
    callback_state *cs = channel ? &((TokenChannel *)cb_obj)->hook : &plain;
    ca_gen_callback cb = channel ? channel_push : cb_obj != Py_None ? call_python : NULL;
    void *user = channel ? (void *)cb_obj : (void *)&plain;
    ca_status st;
    const int32_t *pr = PyArray_DATA(prompts);
    int32_t *tok_p = PyArray_DATA((PyArrayObject *)tokens), *len_out = PyArray_DATA((PyArrayObject *)out_len);
    float *score_p = PyArray_DATA((PyArrayObject *)scores);
    float *step_p = want_steps ? PyArray_DATA((PyArrayObject *)steps) : NULL;
    Py_BEGIN_ALLOW_THREADS ca_threads_apply();
    PyThread_acquire_lock(lock, WAIT_LOCK);
    st = ca_generate(m, &g, pr, len_p, B, tok_p, len_out, score_p, step_p, cb, user);
    PyThread_release_lock(lock);
    Py_END_ALLOW_THREADS
    if (cs->exc_type) {
        ca_clear_error();
        PyErr_Restore(cs->exc_type, cs->exc_value, cs->exc_tb);
        cs->exc_type = cs->exc_value = cs->exc_tb = NULL;
        goto fail;
    }
    if (st != CA_OK) {
        ca_py_raise(st);
        goto fail;
    }
    return Py_BuildValue("NNNN", tokens, out_len, scores, steps);
fail:
    Py_XDECREF(tokens), Py_XDECREF(out_len), Py_XDECREF(scores), Py_XDECREF(steps);
    return NULL;
}

PyMethodDef ca_py_generate_methods[] = {
    {"generate", (PyCFunction)(void (*)(void))py_generate, METH_VARARGS | METH_KEYWORDS,
     "generate(model, prompts, lengths, max_new_tokens, min_new_tokens, do_sample, temperature, top_k, top_p, min_p,\n"
     "repetition_penalty, no_repeat_ngram_size, num_beams, length_penalty, early_stopping, num_return_sequences,\n"
     "eos_token_ids, pad_token_id, seed, callback=None (a callable(row, token) or a TokenChannel), step_scores=False) -> (tokens (B*R, N) int32,\n"
     "lengths (B*R) int32, sequence scores (B*R) float32, step scores (B, N, V) float32 or None).\n"
     "prompts: the B prompts concatenated (int32); min_p < 0 disables min-p; early_stopping 0/1/2 = False/True/'never'."},
    {NULL, NULL, 0, NULL},
};
