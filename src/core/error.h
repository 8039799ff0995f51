/* Internal error helpers: fill a caller-owned kvlm_error and return the code. */
#ifndef KV_CORE_ERROR_H
#define KV_CORE_ERROR_H

#include "kvlm.h"

#if defined(__GNUC__)
#define KV_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define KV_PRINTF(a, b)
#endif

/* Sets err (if not NULL) and returns code, so callers can `return kv_fail(...)`. */
kvlm_status kv_fail(kvlm_error *err, kvlm_status code, const char *fmt, ...) KV_PRINTF(3, 4);
/* Resets err to KVLM_OK with an empty message. */
void kv_error_clear(kvlm_error *err);

#endif
