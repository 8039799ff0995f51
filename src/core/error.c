#include "error.h"

#include <stdarg.h>
#include <stdio.h>

kvlm_status kv_fail(kvlm_error *err, kvlm_status code, const char *fmt, ...) {
    if (err) {
        err->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

void kv_error_clear(kvlm_error *err) {
    if (err) {
        err->code = KVLM_OK;
        err->msg[0] = '\0';
    }
}

const char *kvlm_status_name(kvlm_status s) {
    switch (s) {
    case KVLM_OK: return "ok";
    case KVLM_ERR_INVALID_ARG: return "invalid argument";
    case KVLM_ERR_IO: return "i/o error";
    case KVLM_ERR_FORMAT: return "format error";
    case KVLM_ERR_UNSUPPORTED: return "unsupported";
    case KVLM_ERR_NOMEM: return "out of memory";
    case KVLM_ERR_CONTEXT_FULL: return "context full";
    case KVLM_ERR_BUSY: return "busy";
    case KVLM_ERR_INTERNAL: return "internal error";
    }
    return "unknown";
}
