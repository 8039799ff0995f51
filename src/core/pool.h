/* A persistent pthread pool: kv_pool_run() calls fn(ctx, ith, nth) once on
 * each of nth threads (the caller is thread 0) and returns when all are done. */
#ifndef KV_CORE_POOL_H
#define KV_CORE_POOL_H

#include "kvlm.h"

typedef struct kv_pool kv_pool;
typedef void (*kv_pool_fn)(void *ctx, int ith, int nth);

kvlm_status kv_pool_new(int n_threads, kv_pool **out, kvlm_error *err);
void kv_pool_free(kv_pool *p);
int kv_pool_size(const kv_pool *p);
void kv_pool_run(kv_pool *p, kv_pool_fn fn, void *ctx);

/* The [begin, end) share of n items for thread ith of nth. */
static inline void kv_split(int64_t n, int ith, int nth, int64_t *begin, int64_t *end) {
    int64_t per = (n + nth - 1) / nth;
    *begin = per * ith < n ? per * ith : n;
    *end = *begin + per < n ? *begin + per : n;
}

#endif
