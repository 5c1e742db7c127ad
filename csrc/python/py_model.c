/* Python glue for the model area. */
#include "py_common.h"

PyMethodDef ca_py_model_methods[] = {
    {NULL, NULL, 0, NULL},
};

int ca_py_model_init(PyObject *module) { return 0; }
