/* status.c - per-thread last-error messages and the status names. */
#include <stdarg.h>
#include <stdio.h>

#include "core/internal.h"

enum { LT_ERRBUF = 2048 };

static _Thread_local char lt_errbuf[LT_ERRBUF];
static _Thread_local int lt_errstatus;

const char *lt_last_error(void) { return lt_errbuf; }
int lt_last_status(void) { return lt_errstatus; }

void lt_clear_error(void) {
    lt_errbuf[0] = '\0';
    lt_errstatus = LT_OK;
}

int lt_fail(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(lt_errbuf, sizeof lt_errbuf, fmt, ap);
    va_end(ap);
    lt_errstatus = status;
    return status;
}

int lt_fail_internal(const char *file, int line, const char *fmt, ...) {
    int n = snprintf(lt_errbuf, sizeof lt_errbuf, "internal error at %s:%d: ", file, line);
    if (n < 0 || n >= LT_ERRBUF) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(lt_errbuf + n, sizeof lt_errbuf - (size_t)n, fmt, ap);
    va_end(ap);
    lt_errstatus = LT_ERR_INTERNAL;
    return LT_ERR_INTERNAL;
}

int lt_fail_prefix(int status, const char *fmt, ...) {
    char prev[LT_ERRBUF];
    memcpy(prev, lt_errbuf, sizeof prev);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(lt_errbuf, sizeof lt_errbuf, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if (n < LT_ERRBUF) snprintf(lt_errbuf + n, sizeof lt_errbuf - (size_t)n, "%s", prev);
    lt_errstatus = status;
    return status;
}

const char *lt_status_name(int status) {
    switch (status) {
    case LT_OK: return "ok";
    case LT_ERR_ARG: return "bad argument";
    case LT_ERR_SHAPE: return "shape mismatch";
    case LT_ERR_DTYPE: return "unsupported dtype";
    case LT_ERR_DEVICE: return "device mismatch";
    case LT_ERR_NOMEM: return "out of memory";
    case LT_ERR_IO: return "I/O error";
    case LT_ERR_FORMAT: return "malformed input";
    case LT_ERR_RANGE: return "out of range";
    case LT_ERR_UNSUPPORTED: return "unsupported";
    case LT_ERR_INTERNAL: return "internal error";
    default: return "unknown status";
    }
}

const char *lt_version(void) { return "0.1.0"; }
