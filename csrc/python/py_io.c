/* Python glue for the io area. */
#include "py_common.h"

PyMethodDef ca_py_io_methods[] = {
    {NULL, NULL, 0, NULL},
};
