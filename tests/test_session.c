/* Sessions over a shared model: save/restore, corrupted and foreign files,
 * one call at a time, concurrent sessions, shared prefix pages, overflow
 * policies and tiered compression through the public API; more threads than
 * CPUs. */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "kvlm.h"
#include "test_util.h"
#include "core/tpool.h"
#include <sched.h>

#define AIDREAMS KVLM_MODELS_DIR "/llama/aidreams260K-f32.gguf"
#define AIDREAMS16 KVLM_MODELS_DIR "/llama/aidreams260K-f16.gguf"
#define SYNTH KVLM_MODELS_DIR "/llama/synth15M-q8_0.gguf"

static void test_save_restore(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    const int V = kvlm_n_vocab(m);
    kvlm_token t[100];
    seq(t, 100, V, 7);
    float *ref = malloc((size_t)100 * V * sizeof(float)), *got = malloc((size_t)V * sizeof(float));
    kvlm_error err;
    assert_int_equal(kvlm_eval_full(m, t, 100, ref, true, &err), KVLM_OK);

    kvlm_session *a = session(m, 128);
    assert_int_equal(kvlm_eval(a, t, 70, 0, NULL, false, &err), KVLM_OK);
    char path[128];
    tmp_path(path, sizeof path, "save", ".ses");
    assert_int_equal(kvlm_session_save(a, path, &err), KVLM_OK);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    /* no temporary file left beside it */
    char tmp[160];
    snprintf(tmp, sizeof tmp, "ls %s.tmp.* 2>/dev/null | wc -l", path);
    FILE *fp = popen(tmp, "r");
    int left = -1;
    assert_int_equal(fscanf(fp, "%d", &left), 1);
    pclose(fp);
    assert_int_equal(left, 0);

    /* a restored session continues exactly */
    kvlm_session *b = session(m, 128);
    assert_int_equal(kvlm_session_load(b, path, &err), KVLM_OK);
    assert_int_equal(kvlm_session_n_past(b), 70);
    kvlm_token hist[128];
    assert_int_equal(kvlm_session_tokens(b, hist, 128), 70);
    assert_memory_equal(hist, t, 70 * sizeof(kvlm_token));
    for (int i = 70; i < 100; i++) {
        assert_int_equal(kvlm_eval(b, t, i + 1, i, got, false, &err), KVLM_OK);
        assert_memory_equal(got, ref + (size_t)i * V, (size_t)V * sizeof(float));
    }
    /* loading replaces what a session held */
    assert_int_equal(kvlm_session_load(b, path, &err), KVLM_OK);
    assert_int_equal(kvlm_session_n_past(b), 70);
    assert_int_equal(kvlm_eval(b, t, 71, 70, got, false, &err), KVLM_OK);
    assert_memory_equal(got, ref + (size_t)70 * V, (size_t)V * sizeof(float));

    /* corrupted files: every flipped byte (sampled) and every truncation is rejected, b untouched */
    FILE *f = fopen(path, "rb");
    size_t size = (size_t)st.st_size;
    unsigned char *bytes = malloc(size);
    assert_int_equal(fread(bytes, 1, size, f), size);
    fclose(f);
    char bad[128];
    tmp_path(bad, sizeof bad, "bad", ".ses");
    const int32_t before = kvlm_session_n_past(b);
    for (size_t off = 0; off < size; off += size / 97 + 1) {
        bytes[off] ^= 0x20;
        f = fopen(bad, "wb");
        fwrite(bytes, 1, size, f);
        fclose(f);
        bytes[off] ^= 0x20;
        kvlm_status s2 = kvlm_session_load(b, bad, &err);
        if (s2 == KVLM_OK) fail_msg("a flipped byte at %zu was accepted", off);
        assert_int_equal(kvlm_session_n_past(b), before);
    }
    for (size_t cut = 0; cut < size; cut += size / 31 + 1) {
        f = fopen(bad, "wb");
        fwrite(bytes, 1, cut, f);
        fclose(f);
        assert_int_not_equal(kvlm_session_load(b, bad, &err), KVLM_OK);
        assert_int_equal(kvlm_session_n_past(b), before);
    }
    assert_int_equal(kvlm_session_load(b, "/nonexistent/x.ses", &err), KVLM_ERR_IO);
    /* b still works */
    assert_int_equal(kvlm_eval(b, t, 72, 71, got, false, &err), KVLM_OK);
    assert_memory_equal(got, ref + (size_t)71 * V, (size_t)V * sizeof(float));

    /* a file made for another model */
    kvlm_model *m16 = load(AIDREAMS16);
    kvlm_session *c = session(m16, 128);
    assert_int_equal(kvlm_session_load(c, path, &err), KVLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "another model"));
    assert_int_equal(kvlm_session_n_past(c), 0);
    /* other KV settings */
    kvlm_session_params p = kvlm_session_default_params();
    p.cache_params.type_k = KVLM_KV_F32;
    kvlm_session *d = NULL;
    assert_int_equal(kvlm_session_new(m, &p, &d, &err), KVLM_OK);
    assert_int_equal(kvlm_session_load(d, path, &err), KVLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "cache settings"));

    unlink(path);
    unlink(bad);
    free(bytes);
    free(ref);
    free(got);
    kvlm_session_free(a);
    kvlm_session_free(b);
    kvlm_session_free(c);
    kvlm_session_free(d);
    kvlm_model_free(m16);
    kvlm_model_free(m);
}

typedef struct job {
    kvlm_session *s;
    const kvlm_token *t;
    int n;
    float *out;
    kvlm_status st;
} job;

static void *run_job(void *arg) {
    job *j = arg;
    kvlm_error err;
    do j->st = kvlm_eval(j->s, j->t, j->n, 0, j->out, false, &err);
    while (j->st == KVLM_ERR_BUSY); /* the main thread may hold it for a moment */
    return NULL;
}

/* A second call on a busy session is refused; the first completes correctly. */
typedef struct busy_job {
    kvlm_session *s;
    const kvlm_token *t;
    float *out;
    kvlm_status st;
    atomic_int seen_busy; /* set by the main thread once it got KVLM_ERR_BUSY */
} busy_job;

static void *busy_worker(void *arg) {
    busy_job *j = arg;
    kvlm_error err;
    /* keep the session busy with long evaluations until the main thread has seen it refuse a call */
    for (int round = 0; round < 200 && !atomic_load(&j->seen_busy); round++) {
        do j->st = kvlm_eval(j->s, j->t, 200, 0, j->out, false, &err);
        while (j->st == KVLM_ERR_BUSY);
        if (j->st != KVLM_OK) break;
    }
    return NULL;
}

static void test_busy(void **state) {
    (void)state;
    kvlm_model *m = load(SYNTH);
    const int V = kvlm_n_vocab(m);
    kvlm_token t[200];
    seq(t, 200, V, 3);
    kvlm_session *s = session(m, 256);
    float *out = malloc((size_t)V * sizeof(float)), *ref = malloc((size_t)V * sizeof(float));
    busy_job j = {s, t, out, KVLM_ERR_INTERNAL, 0};
    pthread_t th;
    pthread_create(&th, NULL, busy_worker, &j);
    kvlm_error err;
    for (int i = 0; i < 200000 && !atomic_load(&j.seen_busy); i++) {
        if (kvlm_eval(s, t, 2, 0, NULL, false, &err) == KVLM_ERR_BUSY) atomic_store(&j.seen_busy, 1);
        else usleep(50);
    }
    pthread_join(th, NULL);
    assert_true(atomic_load(&j.seen_busy));
    assert_int_equal(j.st, KVLM_OK);
    /* the worker's last evaluation was not disturbed by the refused calls */
    assert_int_equal(kvlm_eval_full(m, t, 200, ref, false, &err), KVLM_OK);
    assert_memory_equal(out, ref, (size_t)V * sizeof(float));
    free(out);
    free(ref);
    kvlm_session_free(s);
    kvlm_model_free(m);
}

/* Sessions on one model run in parallel and match sequential references. */
static void test_concurrent_sessions(void **state) {
    (void)state;
    kvlm_model *m = load(SYNTH);
    const int V = kvlm_n_vocab(m);
    enum { NS = 3 };
    kvlm_token t[NS][60];
    job jobs[NS];
    pthread_t th[NS];
    for (int i = 0; i < NS; i++) {
        seq(t[i], 60, V, 100 + (uint32_t)i);
        jobs[i] = (job){session(m, 64), t[i], 60, malloc((size_t)V * sizeof(float)), KVLM_ERR_INTERNAL};
        pthread_create(&th[i], NULL, run_job, &jobs[i]);
    }
    float *ref = malloc((size_t)V * sizeof(float));
    kvlm_error err;
    for (int i = 0; i < NS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(jobs[i].st, KVLM_OK);
        assert_int_equal(kvlm_eval_full(m, t[i], 60, ref, false, &err), KVLM_OK);
        assert_memory_equal(jobs[i].out, ref, (size_t)V * sizeof(float));
        free(jobs[i].out);
        kvlm_session_free(jobs[i].s);
    }
    free(ref);
    kvlm_model_free(m);
}

/* Sessions on a shared cache reuse each other's prefix pages, bit-exactly. */
static void test_shared_prefix(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    const int V = kvlm_n_vocab(m);
    kvlm_error err;
    kvlm_cache *cache = NULL;
    assert_int_equal(kvlm_cache_new(m, NULL, &cache, &err), KVLM_OK);
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 128;
    p.cache = cache;
    kvlm_session *a = NULL, *b = NULL;
    assert_int_equal(kvlm_session_new(m, &p, &a, &err), KVLM_OK);
    assert_int_equal(kvlm_session_new(m, &p, &b, &err), KVLM_OK);
    kvlm_token ta[110], tb[110];
    seq(ta, 110, V, 9);
    memcpy(tb, ta, sizeof tb);
    tb[100] = (tb[100] + 1) % V; /* diverges at 100 */
    float *la = malloc((size_t)V * 4), *lb = malloc((size_t)V * 4), *ref = malloc((size_t)V * 4);
    assert_int_equal(kvlm_eval(a, ta, 110, 0, la, false, &err), KVLM_OK);
    assert_int_equal(kvlm_eval(b, tb, 110, 0, lb, false, &err), KVLM_OK);
    kvlm_kv_stats sb, sc;
    kvlm_session_get_stats(b, &sb);
    assert_int_equal(sb.hits, 96); /* three full pages of 32 */
    assert_int_equal(sb.misses, 14);
    assert_true(sb.hit_rate > 0.87 && sb.hit_rate < 0.88);
    assert_int_equal(sb.pages_shared, 3);
    kvlm_cache_get_stats(cache, &sc);
    assert_int_equal(sc.hits, 96);
    assert_int_equal(sc.misses, 110 + 14);
    assert_int_equal(kvlm_eval_full(m, tb, 110, ref, false, &err), KVLM_OK);
    assert_memory_equal(lb, ref, (size_t)V * 4);
    /* a session's own rollback also finds its pages again */
    assert_int_equal(kvlm_session_truncate(a, 0, &err), KVLM_OK);
    assert_int_equal(kvlm_eval(a, ta, 110, 0, la, false, &err), KVLM_OK);
    kvlm_kv_stats sa;
    kvlm_session_get_stats(a, &sa);
    assert_int_equal(sa.hits, 96);
    assert_int_equal(kvlm_eval_full(m, ta, 110, ref, false, &err), KVLM_OK);
    assert_memory_equal(la, ref, (size_t)V * 4);
    kvlm_session_free(a);
    kvlm_session_free(b);
    kvlm_cache_free(cache);
    free(la);
    free(lb);
    free(ref);
    kvlm_model_free(m);
}

static void test_policies(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    const int V = kvlm_n_vocab(m);
    kvlm_error err;
    kvlm_token t[600];
    seq(t, 600, V, 11);
    float *l = malloc((size_t)600 * V * 4), *l2 = malloc((size_t)600 * V * 4);

    /* error: the eval that would overflow fails and leaves the session as it was */
    kvlm_session *s = session(m, 64);
    assert_int_equal(kvlm_eval(s, t, 60, 0, l, false, &err), KVLM_OK);
    assert_int_equal(kvlm_eval(s, t, 70, 60, l, false, &err), KVLM_ERR_CONTEXT_FULL);
    assert_int_equal(kvlm_session_n_past(s), 60);
    assert_int_equal(kvlm_eval(s, t, 64, 60, l, false, &err), KVLM_OK);
    kvlm_session_free(s);

    /* shift and sliding: generation continues past n_ctx, append-only */
    const kvlm_overflow pols[2] = {KVLM_OVERFLOW_SHIFT, KVLM_OVERFLOW_SLIDING};
    for (int k = 0; k < 2; k++) {
        kvlm_session_params p = kvlm_session_default_params();
        p.n_ctx = 96;
        p.overflow = pols[k];
        p.n_keep = 8;
        assert_int_equal(kvlm_session_new(m, &p, &s, &err), KVLM_OK);
        for (int i = 0; i < 300; i += 10) {
            assert_int_equal(kvlm_eval(s, t, i + 10, i, l, false, &err), KVLM_OK);
            for (int v = 0; v < V; v++) assert_true(isfinite(l[v]));
        }
        assert_int_equal(kvlm_session_n_past(s), 300);
        kvlm_kv_stats st;
        kvlm_session_get_stats(s, &st);
        assert_true(st.tokens <= 96);
        assert_true(st.shifts > 0);
        /* rolling back after a shift is refused (the cache no longer mirrors the history) */
        assert_int_equal(kvlm_eval(s, t, 301, 200, l, false, &err), KVLM_ERR_UNSUPPORTED);
        assert_int_equal(kvlm_session_n_past(s), 300);
        kvlm_session_free(s);
    }

    /* ring: one batch and one token at a time give identical logits, memory is constant */
    for (int pass = 0; pass < 2; pass++) {
        kvlm_session_params p = kvlm_session_default_params();
        p.n_ctx = 600;
        p.overflow = KVLM_OVERFLOW_RING;
        p.window = 48;
        assert_int_equal(kvlm_session_new(m, &p, &s, &err), KVLM_OK);
        float *out = pass ? l2 : l;
        if (pass == 0) {
            assert_int_equal(kvlm_eval(s, t, 400, 0, out, true, &err), KVLM_OK);
        } else {
            for (int i = 0; i < 400; i++)
                assert_int_equal(kvlm_eval(s, t, i + 1, i, out + (size_t)i * V, true, &err), KVLM_OK);
        }
        kvlm_kv_stats st;
        kvlm_session_get_stats(s, &st);
        assert_true(st.tokens <= 48 + 64);
        kvlm_session_free(s);
    }
    assert_memory_equal(l, l2, (size_t)400 * V * 4);
    /* while the window holds every token, a ring equals an ordinary cache */
    float *ref = malloc((size_t)101 * V * 4);
    assert_int_equal(kvlm_eval_full(m, t, 101, ref, true, &err), KVLM_OK);
    assert_memory_equal(l, ref, (size_t)48 * V * 4);
    /* after, it differs: the oldest tokens are out of the window */
    assert_true(memcmp(l + (size_t)100 * V, ref + (size_t)100 * V, (size_t)V * 4) != 0);
    free(ref);
    free(l);
    free(l2);
    kvlm_model_free(m);
}

/* Tiered compression through a session: old pages become Q8_0, logits stay close. */
static void test_tiered_session(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    const int V = kvlm_n_vocab(m);
    kvlm_error err;
    kvlm_token t[120];
    seq(t, 120, V, 5);
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 128;
    p.compress_after = 32;
    kvlm_session *s = NULL;
    assert_int_equal(kvlm_session_new(m, &p, &s, &err), KVLM_OK);
    float *a = malloc((size_t)V * 4), *ref = malloc((size_t)V * 4);
    for (int i = 0; i < 120; i += 8)
        assert_int_equal(kvlm_eval(s, t, i + 8, i, a, false, &err), KVLM_OK);
    kvlm_kv_stats st;
    kvlm_session_get_stats(s, &st);
    assert_int_equal(st.compressions, 2); /* pages 0 and 1 are older than 32 tokens at n = 120 */
    assert_true(st.bytes_saved > 0);
    assert_int_equal(kvlm_eval_full(m, t, 120, ref, false, &err), KVLM_OK);
    float worst = 0;
    for (int v = 0; v < V; v++) worst = fmaxf(worst, fabsf(a[v] - ref[v]));
    printf("# tiered compression (aidreams, 120 tokens, Q8_0 after 32): max |logit diff| %.4f\n", worst);
    assert_true(worst > 0.0f && worst < 0.5f);
    free(a);
    free(ref);
    kvlm_session_free(s);
    kvlm_model_free(m);
}

/* The case through the public statistics: prefix sharing on (the default) and a context
 * much larger than the tokens, so that uncompressed originals used to stay cached for their prefix
 * and compression raised the bytes held. Now the bytes fall by exactly bytes_saved, nothing is
 * cached, and bytes_saved is the compressed pages' worth of F16 minus Q8_0 (computed here). */
static void test_tiered_session_frees(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    kvlm_model_info mi;
    kvlm_model_get_info(m, &mi);
    const int V = kvlm_n_vocab(m);
    kvlm_error err;
    kvlm_token t[250];
    seq(t, 250, V, 9);
    kvlm_kv_stats st[2];
    for (int c = 0; c < 2; c++) {
        kvlm_session_params p = kvlm_session_default_params();
        p.n_ctx = 1024;
        /* capacity for the whole context up front (pages are still allocated one by one): no growth
           step reserves spare pages, so the bytes are exactly the pages held */
        p.cache_params.initial_tokens = 1024;
        p.compress_after = c ? 32 : 0;
        kvlm_session *s = session_with(m, &p);
        for (int i = 0; i < 250; i += 10) assert_int_equal(kvlm_eval(s, t, i + 10, i, NULL, false, &err), KVLM_OK);
        kvlm_session_get_stats(s, &st[c]);
        kvlm_session_free(s);
    }
    const int64_t row = (int64_t)mi.n_head_kv * mi.head_dim; /* values per K (or V) row */
    const int64_t f16_page = 32 * 2 * mi.n_layer * row * 2, q8_page = 32 * 2 * mi.n_layer * (row / 32) * 34;
    assert_int_equal(st[1].compressions, 6); /* pages 0..5: 6 * 32 <= 250 - 32 */
    assert_int_equal(st[1].bytes_saved, 6 * (f16_page - q8_page));
    assert_int_equal(st[1].pages_cached, 0);
    assert_true(st[1].bytes < st[0].bytes);
    assert_int_equal(st[1].bytes, st[0].bytes - st[1].bytes_saved);
    printf("# tiered, prefix sharing on, n_ctx 1024: %lld -> %lld bytes (%lld saved)\n", (long long)st[0].bytes,
           (long long)st[1].bytes, (long long)st[1].bytes_saved);
    kvlm_model_free(m);
}

static int cpus_available(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return (int)sysconf(_SC_NPROCESSORS_ONLN);
    return CPU_COUNT(&set);
}

/* A session asked for far more threads than there are CPUs runs with as many
 * threads as CPUs, says so, and gives the 1-thread logits bit for bit. */
static void test_threads_oversubscribed(void **state) {
    (void)state;
    kvlm_model *m = load(SYNTH);
    const int V = kvlm_n_vocab(m);
    kvlm_error err;
    kvlm_token t[24];
    seq(t, 24, V, 31);
    float *ref = malloc((size_t)V * 4), *got = malloc((size_t)V * 4);
    kvlm_session *s1 = NULL, *sn = NULL;
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 32;
    p.n_threads = 1;
    assert_int_equal(kvlm_session_new(m, &p, &s1, &err), KVLM_OK);
    p.n_threads = 200;
    assert_int_equal(kvlm_session_new(m, &p, &sn, &err), KVLM_OK);
    const int cpus = cpus_available();
    assert_int_equal(kvlm_session_n_threads(s1), 1);
    assert_int_equal(kvlm_session_n_threads(sn), cpus < 200 ? cpus : 200);
    assert_int_equal(kvlm_eval(s1, t, 16, 0, ref, false, &err), KVLM_OK);
    assert_int_equal(kvlm_eval(sn, t, 16, 0, got, false, &err), KVLM_OK);
    assert_memory_equal(ref, got, (size_t)V * 4);
    for (int i = 16; i < 24; i++) {
        assert_int_equal(kvlm_eval(s1, t, i + 1, i, ref, false, &err), KVLM_OK);
        assert_int_equal(kvlm_eval(sn, t, i + 1, i, got, false, &err), KVLM_OK);
        assert_memory_equal(ref, got, (size_t)V * 4);
    }
    kvlm_session_free(s1);
    kvlm_session_free(sn);
    free(ref);
    free(got);
    kvlm_model_free(m);
}

/* The pool itself with more threads than CPUs (it then sleeps instead of
 * spinning): every job runs on every thread exactly once, and run() returns
 * only after all of them finished. */
typedef struct pool_job {
    int round;
    int *seen; /* per thread: the last round it ran */
    atomic_int calls;
    atomic_int bad; /* set by a worker (cmocka asserts only on the main thread) */
} pool_job;

static void pool_fn(void *ctx, int ith, int nth) {
    pool_job *j = ctx;
    if (nth != 64 || ith < 0 || ith >= nth || j->seen[ith] != j->round - 1) {
        atomic_store(&j->bad, 1);
        return;
    }
    j->seen[ith] = j->round;
    atomic_fetch_add(&j->calls, 1);
}

static void test_pool_oversubscribed(void **state) {
    (void)state;
    kv_tpool *pool = NULL;
    kvlm_error err;
    assert_int_equal(kv_tpool_new(64, &pool, &err), KVLM_OK);
    assert_int_equal(kv_tpool_size(pool), 64);
    assert_int_equal(kv_tpool_spins(pool), cpus_available() >= 64);
    int seen[64];
    for (int i = 0; i < 64; i++) seen[i] = 0;
    pool_job j = {.seen = seen};
    atomic_init(&j.calls, 0);
    atomic_init(&j.bad, 0);
    for (int r = 1; r <= 300; r++) {
        j.round = r;
        kv_tpool_run(pool, pool_fn, &j);
        assert_int_equal(atomic_load(&j.bad), 0);
        assert_int_equal(atomic_load(&j.calls), 64 * r);
        for (int i = 0; i < 64; i++) assert_int_equal(seen[i], r);
    }
    kv_tpool_free(pool);
}

/* Decoding several sessions in one pass equals decoding each alone, bit for
 * bit, for every batch size the kernels distinguish (1..3 columns: the
 * decode tiles; 4..8: the batched-decode kernels): each step decodes the
 * first nb sessions together, the others wait. */
static void test_decode_batch(void **state) {
    (void)state;
    kvlm_model *m = load(SYNTH);
    const int V = kvlm_n_vocab(m);
    kvlm_error err;
    enum { NS = 8, STEPS = 8 };
    static const int sizes[STEPS] = {8, 4, 5, 2, 6, 7, 3, 8};
    kvlm_session *bs[NS], *ref[NS];
    kvlm_token hist[NS][64];
    int pos[NS];
    float *lb = malloc((size_t)NS * V * 4), *lr = malloc((size_t)V * 4);
    for (int i = 0; i < NS; i++) {
        seq(hist[i], 64, V, 200 + (uint32_t)i);
        kvlm_session_params p = kvlm_session_default_params();
        p.n_ctx = 64;
        p.n_threads = 1 + i % 2;
        if (i == 3) p.cache_params.type_k = p.cache_params.type_v = KVLM_KV_Q8_0; /* mixed storage types */
        assert_int_equal(kvlm_session_new(m, &p, &bs[i], &err), KVLM_OK);
        assert_int_equal(kvlm_session_new(m, &p, &ref[i], &err), KVLM_OK);
        pos[i] = 10 + 5 * i; /* different lengths */
        assert_int_equal(kvlm_eval(bs[i], hist[i], pos[i], 0, NULL, false, &err), KVLM_OK);
        assert_int_equal(kvlm_eval(ref[i], hist[i], pos[i], 0, NULL, false, &err), KVLM_OK);
    }
    for (int step = 0; step < STEPS; step++) {
        const int nb = sizes[step];
        kvlm_token t[NS];
        for (int i = 0; i < nb; i++) t[i] = hist[i][pos[i]];
        assert_int_equal(kvlm_decode_batch(bs, t, nb, lb, &err), KVLM_OK);
        for (int i = 0; i < nb; i++) {
            const int n = pos[i];
            assert_int_equal(kvlm_eval(ref[i], hist[i], n + 1, n, lr, false, &err), KVLM_OK);
            assert_memory_equal(lb + (size_t)i * V, lr, (size_t)V * 4);
            assert_int_equal(kvlm_session_n_past(bs[i]), n + 1);
            pos[i]++;
        }
    }
    /* the same session twice, or a busy one, is refused */
    kvlm_session *dup[2] = {bs[0], bs[0]};
    kvlm_token t2[2] = {5, 6};
    assert_int_equal(kvlm_decode_batch(dup, t2, 2, lb, &err), KVLM_ERR_INVALID_ARG);
    for (int i = 0; i < NS; i++) {
        kvlm_session_free(bs[i]);
        kvlm_session_free(ref[i]);
    }
    free(lb);
    free(lr);
    kvlm_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_save_restore),    cmocka_unit_test(test_busy),
        cmocka_unit_test(test_concurrent_sessions), cmocka_unit_test(test_shared_prefix),
        cmocka_unit_test(test_policies),        cmocka_unit_test(test_tiered_session), cmocka_unit_test(test_tiered_session_frees),
        cmocka_unit_test(test_decode_batch),    cmocka_unit_test(test_threads_oversubscribed),
        cmocka_unit_test(test_pool_oversubscribed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
