#include "tpool.h"

#include <pthread.h>
#include <stdlib.h>

#include "error.h"

struct kv_tpool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv;
    kv_tpool_fn fn;
    void *ctx;
    unsigned long generation; /* bumped per job */
    int pending;              /* workers still running the current job */
    int stop;
};

typedef struct worker_arg {
    kv_tpool *p;
    int ith;
} worker_arg;

static void *worker(void *arg) {
    worker_arg wa = *(worker_arg *)arg;
    free(arg);
    kv_tpool *p = wa.p;
    unsigned long seen = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (!p->stop && p->generation == seen) pthread_cond_wait(&p->work_cv, &p->mu);
        if (p->stop) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        seen = p->generation;
        kv_tpool_fn fn = p->fn;
        void *ctx = p->ctx;
        pthread_mutex_unlock(&p->mu);

        fn(ctx, wa.ith, p->n);

        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->done_cv);
        pthread_mutex_unlock(&p->mu);
    }
}

kvlm_status kv_tpool_new(int n_threads, kv_tpool **out, kvlm_error *err) {
    *out = NULL;
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 256) return kv_fail(err, KVLM_ERR_INVALID_ARG, "threads: %d is more than 256", n_threads);
    kv_tpool *p = calloc(1, sizeof *p);
    if (!p) return kv_fail(err, KVLM_ERR_NOMEM, "threads: out of memory");
    p->n = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work_cv, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    if (n_threads > 1) {
        p->threads = calloc((size_t)n_threads, sizeof *p->threads);
        if (!p->threads) {
            kv_tpool_free(p);
            return kv_fail(err, KVLM_ERR_NOMEM, "threads: out of memory");
        }
        for (int i = 1; i < n_threads; i++) {
            worker_arg *wa = malloc(sizeof *wa);
            if (!wa || pthread_create(&p->threads[i], NULL, worker, (wa->p = p, wa->ith = i, wa)) != 0) {
                free(wa);
                p->n = i; /* only threads 1..i-1 exist */
                kv_tpool_free(p);
                return kv_fail(err, KVLM_ERR_INTERNAL, "threads: cannot start thread %d", i);
            }
        }
    }
    *out = p;
    return KVLM_OK;
}

void kv_tpool_free(kv_tpool *p) {
    if (!p) return;
    if (p->threads) {
        pthread_mutex_lock(&p->mu);
        p->stop = 1;
        pthread_cond_broadcast(&p->work_cv);
        pthread_mutex_unlock(&p->mu);
        for (int i = 1; i < p->n; i++) pthread_join(p->threads[i], NULL);
        free(p->threads);
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->work_cv);
    pthread_cond_destroy(&p->done_cv);
    free(p);
}

int kv_tpool_size(const kv_tpool *p) { return p->n; }

void kv_tpool_run(kv_tpool *p, kv_tpool_fn fn, void *ctx) {
    if (p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->pending = p->n - 1;
    p->generation++;
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);

    fn(ctx, 0, p->n);

    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) pthread_cond_wait(&p->done_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
