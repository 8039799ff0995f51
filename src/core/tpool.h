/* A persistent pthread pool: kv_tpool_run() calls fn(ctx, ith, nth) once for
 * each ith in 0..nth-1 (nth = the pool's size), each share on whichever thread
 * claims it first (the caller takes part), and returns when all are done. Two
 * shares of one job never run on the same thread at once, and one share never
 * on two threads. */
#ifndef KV_CORE_TPOOL_H
#define KV_CORE_TPOOL_H

#include "kvlm.h"

typedef struct kv_tpool kv_tpool;
typedef void (*kv_tpool_fn)(void *ctx, int ith, int nth);

kvlm_status kv_tpool_new(int n_threads, kv_tpool **out, kvlm_error *err);
void kv_tpool_free(kv_tpool *p);
int kv_tpool_size(const kv_tpool *p);
/* 1 when the pool's threads spin between jobs (no more threads than CPUs
 * available to the process), 0 when they sleep. */
int kv_tpool_spins(const kv_tpool *p);
/* CPUs the process may run on (sched_getaffinity; the online count where that
 * is not available); at least 1. */
int kv_cpu_count(void);
void kv_tpool_run(kv_tpool *p, kv_tpool_fn fn, void *ctx);

/* The [begin, end) share of n items for thread ith of nth. */
static inline void kv_split(int64_t n, int ith, int nth, int64_t *begin, int64_t *end) {
    int64_t per = (n + nth - 1) / nth;
    *begin = per * ith < n ? per * ith : n;
    *end = *begin + per < n ? *begin + per : n;
}

#endif
