/* A persistent thread pool with low dispatch latency: workers spin on an
 * atomic job counter for a while (a decode step dispatches dozens of small
 * jobs), then sleep on a condition variable; the caller runs share 0 and
 * spins until the others are done.
 *
 * Spinning only pays when every thread has a core of its own. With more
 * threads than the CPUs the process may run on (sched_getaffinity), a
 * spinning thread holds the core that the thread it waits for needs, and a
 * decode step (dozens of jobs) degrades to time-slice quanta per job. Such a
 * pool never spins: workers sleep on the condition variable between jobs and
 * the caller sleeps until the last worker signals that it is done.
 *
 * A job is nth shares (fn(ctx, ith, nth) for ith = 0..nth-1), and a share
 * goes to whichever thread claims it first (an atomic counter), the caller
 * included: when another process holds the core of a worker that has not
 * started yet, the caller runs that worker's share instead of waiting a time
 * slice for it. A share is still run exactly once per job, so what fn keeps
 * per ith (scratch rows) is used by one thread at a time, and every result is
 * the same whichever thread ran which share. */
#define _GNU_SOURCE
#include "tpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "error.h"

#define SPIN_ROUNDS 50000 /* roughly 0.1-0.5 ms of polling before a worker sleeps */

struct kv_tpool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_cond_t done_cv;  /* non-spinning pools: the last worker of a job signals it */
    int spin;                /* 1: every thread can have a CPU of its own */
    kv_tpool_fn fn;
    void *ctx;
    atomic_ulong generation; /* bumped per job; fn/ctx are published before it */
    atomic_int next;         /* the next share to claim (>= n: none left) */
    atomic_int pending;      /* shares of the current job not finished yet */
    atomic_int sleepers;
    atomic_int stop;
};

typedef struct worker_arg {
    kv_tpool *p;
    int ith;
} worker_arg;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Claims and runs shares of the current job until none is left. fn and ctx
 * are read after a successful claim: the claim reads the counter the caller
 * reset after writing them, so it sees them, and the job cannot end (and be
 * replaced) before this share's pending count is given back. */
static void run_shares(kv_tpool *p) {
    const int n = p->n;
    for (;;) {
        int k = atomic_fetch_add(&p->next, 1);
        if (k >= n) return;
        p->fn(p->ctx, k, n);
        if (atomic_fetch_sub(&p->pending, 1) == 1 && !p->spin) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_broadcast(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

static void *worker(void *arg) {
    worker_arg wa = *(worker_arg *)arg;
    free(arg);
    kv_tpool *p = wa.p;
    unsigned long seen = 0;
    for (;;) {
        unsigned long g = atomic_load(&p->generation);
        const int rounds = p->spin ? SPIN_ROUNDS : 0;
        for (int i = 0; g == seen && i < rounds && !atomic_load_explicit(&p->stop, memory_order_relaxed); i++) {
            cpu_relax();
            g = atomic_load(&p->generation);
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while ((g = atomic_load(&p->generation)) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = g;
        run_shares(p);
    }
}

int kv_cpu_count(void) {
#if defined(__linux__) && defined(CPU_COUNT)
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 1024 ? 1024 : (int)n;
}

kvlm_status kv_tpool_new(int n_threads, kv_tpool **out, kvlm_error *err) {
    *out = NULL;
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 256) return kv_fail(err, KVLM_ERR_INVALID_ARG, "threads: %d is more than 256", n_threads);
    kv_tpool *p = calloc(1, sizeof *p);
    if (!p) return kv_fail(err, KVLM_ERR_NOMEM, "threads: out of memory");
    p->n = 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    p->spin = n_threads <= kv_cpu_count();
    atomic_init(&p->next, 1 << 30); /* no job yet: nothing to claim */
    if (n_threads > 1) {
        p->threads = calloc((size_t)n_threads, sizeof *p->threads);
        if (!p->threads) {
            kv_tpool_free(p);
            return kv_fail(err, KVLM_ERR_NOMEM, "threads: out of memory");
        }
        for (int i = 1; i < n_threads; i++) {
            worker_arg *wa = malloc(sizeof *wa);
            if (!wa) {
                kv_tpool_free(p);
                return kv_fail(err, KVLM_ERR_NOMEM, "threads: out of memory");
            }
            wa->p = p;
            wa->ith = i;
            if (pthread_create(&p->threads[i], NULL, worker, wa) != 0) {
                free(wa);
                kv_tpool_free(p);
                return kv_fail(err, KVLM_ERR_INTERNAL, "threads: cannot start thread %d", i);
            }
            p->n = i + 1; /* threads 1..i exist */
        }
    }
    *out = p;
    return KVLM_OK;
}

void kv_tpool_free(kv_tpool *p) {
    if (!p) return;
    if (p->threads) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->stop, 1);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
        free(p->threads);
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    pthread_cond_destroy(&p->done_cv);
    free(p);
}

int kv_tpool_size(const kv_tpool *p) { return p->n; }

int kv_tpool_spins(const kv_tpool *p) { return p->spin; }

void kv_tpool_run(kv_tpool *p, kv_tpool_fn fn, void *ctx) {
    if (p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->pending, p->n);
    /* A worker that saw the previous job late may claim from the counter at
     * any time: before this store it finds no share left, after it a share of
     * this job (with this fn/ctx). */
    atomic_store(&p->next, 0);
    atomic_fetch_add(&p->generation, 1); /* seq_cst: pairs with the sleepers check below */
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    run_shares(p);
    if (!p->spin) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->pending) > 0) pthread_cond_wait(&p->done_cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
        return;
    }
    for (long i = 0; atomic_load(&p->pending) > 0; i++) {
        if (i < SPIN_ROUNDS) cpu_relax();
        else sched_yield();
    }
}
