/* Python glue for the ops area. */
#include "py_common.h"

PyMethodDef ca_py_ops_methods[] = {
    {NULL, NULL, 0, NULL},
};
