/* Python glue for the metrics area. */
#include "py_common.h"

PyMethodDef ca_py_metrics_methods[] = {
    {NULL, NULL, 0, NULL},
};
