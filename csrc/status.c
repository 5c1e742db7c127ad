#include <stdarg.h>
#include <stdio.h>

#include "captionaura/ca_status.h"

static _Thread_local char ca_message[1024];

ca_status ca_error(ca_status code, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(ca_message, sizeof ca_message, fmt, args);
    va_end(args);
    return code;
}

const char *ca_last_error(void) { return ca_message; }

void ca_clear_error(void) { ca_message[0] = '\0'; }
