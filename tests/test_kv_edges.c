/* The KV cache's edges that no model run reaches (issue 22): the refusals of kv_seq_init that the
 * session layer never asks for (a ring window past 2^24, a storage type without an encoder, a
 * compression type that does not fit the rows, a pool out of page layouts or too small for a
 * sliding-window ring), each policy's pass limits, a context shift that runs out of pages midway,
 * the pool's limit raised and lowered again, the consistency checks of export, import and fork on
 * sequences corrupted or driven out of order on purpose, the whole-block head decoder and the
 * sliding-window ring's row accessor, and allocation failures of kv_pool_create / kv_seq_init
 * (this test is linked with --wrap=malloc,calloc,realloc,aligned_alloc,strdup like
 * test_alloc_fail). Every refusal is checked for its status and message and for leaving the
 * sequence as it was (its rows still those written), and each step then succeeds once its cause
 * is gone. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/dtype.h"
#include "core/rope.h"
#include "kv/kv_cache.h"
#include "kv/kv_disk.h"
#include "quant/quant.h"

/* ------------------------------------------------------------ allocation failures */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void *__real_aligned_alloc(size_t align, size_t n);
char *__real_strdup(const char *s);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
void *__wrap_aligned_alloc(size_t align, size_t n);
char *__wrap_strdup(const char *s);

static _Thread_local bool g_armed;
static atomic_bool g_armed_all; /* every thread's allocations (the disk tier's spilling thread) */
static atomic_long g_count, g_fail_at, g_failed;
static bool inject(void) {
    if (!g_armed && !atomic_load(&g_armed_all)) return false;
    if (++g_count != g_fail_at) return false;
    g_failed++;
    return true;
}
void *__wrap_malloc(size_t n) { return inject() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t size) { return inject() ? NULL : __real_calloc(n, size); }
void *__wrap_realloc(void *p, size_t n) { return inject() ? NULL : __real_realloc(p, n); }
void *__wrap_aligned_alloc(size_t align, size_t n) { return inject() ? NULL : __real_aligned_alloc(align, n); }
char *__wrap_strdup(const char *s) { return inject() ? NULL : __real_strdup(s); }
/* the disk tier's spilling thread: its start refused (once), its compression held back or failing */
#include <pthread.h>
#include <zstd.h>
int __real_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg);
int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg);
size_t __real_ZSTD_compressCCtx(ZSTD_CCtx *c, void *dst, size_t cap, const void *src, size_t n, int level);
size_t __wrap_ZSTD_compressCCtx(ZSTD_CCtx *c, void *dst, size_t cap, const void *src, size_t n, int level);
/* the directory scan at open: dup of the directory's descriptor refused (once) */
#include <unistd.h>
int __real_dup(int fd);
int __wrap_dup(int fd);
static atomic_bool g_no_thread, g_zstd_fail, g_no_dup;
int __wrap_dup(int fd) {
    if (atomic_exchange(&g_no_dup, false)) {
        errno = EMFILE;
        return -1;
    }
    return __real_dup(fd);
}
static pthread_mutex_t g_zmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_zcv = PTHREAD_COND_INITIALIZER;
static bool g_zstd_hold;
int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg) {
    if (atomic_exchange(&g_no_thread, false)) return 11; /* EAGAIN */
    return __real_pthread_create(t, a, fn, arg);
}
size_t __wrap_ZSTD_compressCCtx(ZSTD_CCtx *c, void *dst, size_t cap, const void *src, size_t n, int level) {
    pthread_mutex_lock(&g_zmu);
    while (g_zstd_hold) pthread_cond_wait(&g_zcv, &g_zmu);
    pthread_mutex_unlock(&g_zmu);
    if (atomic_exchange(&g_zstd_fail, false)) return (size_t)-1; /* ZSTD_error_GENERIC */
    return __real_ZSTD_compressCCtx(c, dst, cap, src, n, level);
}
static void zstd_hold(bool on) {
    pthread_mutex_lock(&g_zmu);
    g_zstd_hold = on;
    pthread_cond_broadcast(&g_zcv);
    pthread_mutex_unlock(&g_zmu);
}

static void arm(long k) {
    g_count = 0;
    g_fail_at = k;
    g_failed = 0;
    g_armed = true;
}
static void disarm(void) { g_armed = false; }

/* ------------------------------------------------------------ fixtures */

enum { NL = 3, HD = 16, NKV = 2, KVD = HD * NKV, P = 16 };
static const bool k_swa_layers[NL] = {true, true, false}; /* layers 0, 1 local (in the ring), 2 global */

static kv_rope rope_of(float base) {
    kv_rope r = {.type = KV_ROPE_NORM, .n_rot = HD, .base = base, .freq_scale = 1.0f, .attn_factor = 1.0f,
                 .beta_fast = 32.0f, .beta_slow = 1.0f, .n_ctx_orig = 4096};
    kv_rope_init(&r);
    return r;
}

static kvlm_cache_params pool_params(int64_t max_tokens) {
    kvlm_cache_params p = kvlm_cache_default_params();
    p.type_k = p.type_v = KVLM_KV_F32;
    p.page_tokens = P;
    p.initial_tokens = P;
    p.max_tokens = max_tokens;
    p.prefix_sharing = true;
    return p;
}

static kv_page_pool *new_pool(int64_t max_tokens) {
    const kvlm_cache_params pp = pool_params(max_tokens);
    kv_page_pool *pool = NULL;
    kvlm_error err;
    if (kv_pool_create(NL, KVD, &pp, &pool, &err) != KVLM_OK) fail_msg("pool: %s", err.msg);
    return pool;
}

static kv_seq_config config(kvlm_overflow pol, int32_t n_ctx) {
    kv_seq_config c = {.n_ctx = n_ctx, .n_layer = NL, .n_head_kv = NKV, .head_dim = HD, .type_k = KV_F32,
                       .type_v = KV_F32, .overflow = pol, .n_keep = 4, .n_sink = 4, .window = 24,
                       .rope = rope_of(10000.0f), .max_batch = 8};
    return c;
}
static kv_seq_config swa_config(int32_t n_ctx) {
    kv_seq_config c = config(KVLM_OVERFLOW_ERROR, n_ctx);
    c.swa_layer = k_swa_layers;
    c.swa = 8; /* ring of 8 + 8 slots rounded to pages: one page */
    c.rope_swa = rope_of(500.0f);
    return c;
}

static void expect(kvlm_status got, kvlm_status want, const kvlm_error *err, const char *words) {
    if (got != want) fail_msg("status %d (want %d): %s", (int)got, (int)want, err->msg);
    if (!strstr(err->msg, words)) fail_msg("'%s' does not say '%s'", err->msg, words);
}

/* token i's K (rotated to pos with the layer's RoPE) and V rows */
static void make_row(int32_t token, int32_t pos, int layer, const kv_seq *s, float *k, float *v) {
    for (int i = 0; i < KVD; i++) {
        k[i] = sinf(0.37f * (float)token + 0.11f * (float)i + (float)layer);
        v[i] = cosf(0.23f * (float)token - 0.07f * (float)i + 0.5f * (float)layer);
    }
    const kv_rope *r = s->swa_layer && s->swa_layer[layer] ? &s->rope_swa : &s->rope;
    kv_rope_apply(r, k, NKV, HD, pos);
}

static int32_t tok_of(int32_t i) { return i * 7 + 1; }

/* Appends tokens [from, to) in passes of `step` (the pass refused: its status). */
static kvlm_status append(kv_seq *s, int32_t from, int32_t to, int32_t step, kvlm_error *err) {
    float k[KVD], v[KVD];
    int32_t toks[64];
    for (int32_t i = from; i < to; i += step) {
        const int32_t T = to - i < step ? to - i : step;
        for (int32_t t = 0; t < T; t++) toks[t] = tok_of(i + t);
        kvlm_status st = kv_seq_prepare(s, T, err);
        if (st) return st;
        if ((st = kv_seq_reserve(s, toks, T, err))) return st;
        for (int32_t t = 0; t < T; t++) {
            const int32_t slot = kv_seq_slot(s, t);
            for (int l = 0; l < NL; l++) {
                make_row(toks[t], s->pos[slot], l, s, k, v);
                kv_seq_write(s, l, slot, k, v);
            }
        }
        kv_seq_commit(s, T);
    }
    return KVLM_OK;
}

/* Every held slot (the ring's layers: the last `recent` positions) holds its token's rows at its
 * position, read through kv_seq_row; K within tol (a shift re-rotates it), V exactly. */
static void check_rows(const kv_seq *s, int32_t recent, float tol) {
    float k[KVD], v[KVD];
    for (int32_t sl = 0; sl < s->n; sl++)
        for (int l = 0; l < NL; l++) {
            if (kv_seq_layer_in_ring(s, l) && s->pos[sl] < s->next_pos - recent) continue;
            make_row(s->tokens[sl], s->pos[sl], l, s, k, v);
            const kv_row r = kv_seq_row(s, l, sl);
            assert_int_equal(r.layout->type_k, KV_F32);
            const float *kr = (const float *)r.k, *vr = (const float *)r.v;
            for (int i = 0; i < KVD; i++)
                if (!(fabsf(kr[i] - k[i]) <= tol && vr[i] == v[i]))
                    fail_msg("slot %d layer %d elem %d: k %g (want %g), v %g (want %g)", sl, l, i, kr[i], k[i], vr[i],
                             v[i]);
        }
}

/* ------------------------------------------------------------ kv_seq_init */

static void test_init_refusals(void **state) {
    (void)state;
    kv_page_pool *pool = new_pool(1024);
    kv_seq s;
    kvlm_error err;

    kv_seq_config c = config(KVLM_OVERFLOW_RING, 64);
    c.window = (1 << 24) + 1;
    expect(kv_seq_init(&s, pool, &c, &err), KVLM_ERR_INVALID_ARG, &err, "ring window 16777217 is too large");
    c.window = 1 << 24; /* the largest window is accepted (its ring: 2^24 + 8 slots in pages of 16) and too large for the pool */
    expect(kv_seq_init(&s, pool, &c, &err), KVLM_ERR_NOMEM, &err, "cannot hold a ring of 16777232 tokens");

    /* a storage type with rows the pool can lay out but no encoder (a weight-only type) */
    int32_t found = -1;
    for (uint32_t t = 0; t < 64 && found < 0; t++) {
        uint64_t rb;
        const kv_quant_traits *tr = kv_quant_get(t);
        if (kv_dtype_get(t) && kv_dtype_row_bytes(t, KVD, &rb) && (!tr || !tr->from_float)) found = (int32_t)t;
    }
    assert_true(found >= 0);
    c = config(KVLM_OVERFLOW_ERROR, 64);
    c.type_k = (uint32_t)found;
    expect(kv_seq_init(&s, pool, &c, &err), KVLM_ERR_UNSUPPORTED, &err, "unsupported storage type");

    /* a compression type whose blocks do not divide the rows: heads of 8 values, rows of 16 */
    kv_page_pool *small = NULL;
    const kvlm_cache_params pp = pool_params(1024);
    assert_int_equal(kv_pool_create(NL, 16, &pp, &small, &err), KVLM_OK);
    c = config(KVLM_OVERFLOW_ERROR, 64);
    c.head_dim = 8;
    c.compress_after = 32;
    c.compress_type = KV_Q8_0;
    expect(kv_seq_init(&s, small, &c, &err), KVLM_ERR_UNSUPPORTED, &err, "compression type q8_0 does not fit rows of 16");
    c.compress_type = KV_F16; /* one that does */
    assert_int_equal(kv_seq_init(&s, small, &c, &err), KVLM_OK);
    kv_seq_destroy(&s);
    kv_pool_destroy(small);

    /* the sliding-window ring's pages need a layout of their own: none is left in the pool */
    kv_page_pool *full = new_pool(1024);
    const uint32_t types[4] = {KV_F32, KV_F16, KV_Q8_0, KV_Q4_0};
    int made = 0;
    assert_non_null(kv_pool_layout_layers(full, KV_F32, KV_F32, 1)); /* the one beside the ring: kept */
    made++;
    for (int a = 0; a < 4; a++)
        for (int32_t n = 1; n <= NL; n++)
            if (a > 0 && made < 12) {
                assert_non_null(kv_pool_layout_layers(full, types[a], types[a], n));
                made++;
            }
    assert_non_null(kv_pool_layout_layers(full, KV_F16, KV_F32, 1));
    assert_non_null(kv_pool_layout_layers(full, KV_F32, KV_F32, 3));
    made += 2;
    assert_int_equal(made, 12);
    assert_null(kv_pool_layout_layers(full, KV_F32, KV_F32, 2)); /* 12 classes: no more */
    c = swa_config(64);
    expect(kv_seq_init(&s, full, &c, &err), KVLM_ERR_UNSUPPORTED, &err, "too many page layouts");
    c.swa_full = true; /* every layer in the pages: a layout the pool has */
    assert_int_equal(kv_seq_init(&s, full, &c, &err), KVLM_OK);
    assert_int_equal(s.swa, 0);
    kv_seq_destroy(&s);
    kv_pool_destroy(full);

    /* a pool too small for the ring: nothing is left allocated */
    kv_page_pool *tiny = new_pool(P);
    c = swa_config(64);
    c.swa = 20; /* 20 + 8 slots: two pages */
    expect(kv_seq_init(&s, tiny, &c, &err), KVLM_ERR_NOMEM, &err, "cannot hold a ring of 32 tokens");
    kvlm_kv_stats st;
    kv_pool_stats(tiny, &st);
    assert_int_equal(st.tokens, 0);
    c.swa = 8; /* one page fits: the page the failed ring took is back */
    assert_int_equal(kv_seq_init(&s, tiny, &c, &err), KVLM_OK);
    assert_int_equal(s.swa_cap, P);
    kv_seq_destroy(&s);
    kv_pool_destroy(tiny);

    /* a disk tier's zstd level outside 0..19 (0: the default, 1) */
    kvlm_cache_params dp = pool_params(1024);
    dp.disk_tier = true;
    dp.disk_dir = "/tmp/kvlm-kvedges-never-made";
    dp.disk_bytes_budget = 1 << 20;
    kv_page_pool *none = (kv_page_pool *)&none;
    for (int lv = -1; lv <= 20; lv += 21) {
        dp.disk_zstd_level = lv;
        char want[64];
        snprintf(want, sizeof want, "disk zstd level %d is outside 1..19", lv);
        expect(kv_pool_create(NL, KVD, &dp, &none, &err), KVLM_ERR_INVALID_ARG, &err, want);
        assert_null(none);
    }
    dp.disk_zstd_level = 0;
    assert_int_equal(kv_pool_create(NL, KVD, &dp, &none, &err), KVLM_OK);
    assert_int_equal(kv_pool_params(none)->disk_zstd_level, 1);
    kv_pool_destroy(none);

    assert_int_equal(kv_type_slot(KV_F32), 0);
    assert_int_equal(kv_type_slot(KV_Q4_0), 3);
    assert_int_equal(kv_type_slot(KV_Q4_1), -1); /* not a K/V storage type */
    kv_pool_destroy(pool);
}

/* kv_pool_create and kv_seq_init (ring, sliding-window ring, disk tier) with each allocation failing in
   turn: NOMEM with a message, nothing left behind (ASan), and success once allocations work. */
static void test_init_alloc_failures(void **state) {
    (void)state;
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/kvlm-kvedges-%ld", (long)getpid());
    for (int which = 0; which < 3; which++) {
        long k = 1;
        for (;; k++) {
            kvlm_cache_params pp = pool_params(1024);
            if (which == 2) {
                pp.disk_tier = true;
                pp.disk_dir = dir;
                pp.disk_bytes_budget = 1 << 20;
            }
            kv_seq_config c = which == 0 ? config(KVLM_OVERFLOW_RING, 64) : swa_config(64);
            kv_page_pool *pool = NULL;
            kv_seq s;
            kvlm_error err;
            arm(k);
            kvlm_status st = kv_pool_create(NL, KVD, &pp, &pool, &err);
            if (st == KVLM_OK) st = kv_seq_init(&s, pool, &c, &err);
            disarm();
            const long made = g_count;
            if (st != KVLM_OK) {
                assert_int_equal(g_failed, 1);
                /* a page of the ring that cannot be had says which ring */
                char ring[64];
                snprintf(ring, sizeof ring, "cannot hold a ring of %d tokens", which == 0 ? 32 : 16);
                expect(st, KVLM_ERR_NOMEM, &err, strstr(err.msg, "ring") ? ring : "out of memory");
                if (pool) { /* the pool still works */
                    assert_int_equal(kv_seq_init(&s, pool, &c, &err), KVLM_OK);
                    assert_int_equal(append(&s, 0, 12, 4, &err), KVLM_OK);
                    check_rows(&s, 8, 0.0f);
                    kv_seq_destroy(&s);
                }
                kv_pool_destroy(pool);
                continue;
            }
            assert_int_equal(append(&s, 0, 12, 4, &err), KVLM_OK);
            check_rows(&s, 8, 0.0f);
            kv_seq_destroy(&s);
            kv_pool_destroy(pool);
            if (made < k) break; /* every allocation has failed once */
        }
        assert_true(k > 3);
    }
    assert_int_equal(access(dir, F_OK), -1); /* the disk tier opens its directory later (kv_pool_open_disk) */
}

/* ------------------------------------------------------------ pass limits */

static void test_pass_limits(void **state) {
    (void)state;
    kv_page_pool *pool = new_pool(4096);
    kv_seq s;
    kvlm_error err;

    /* a ring's pass may take its slack (n_ctx - window) and no more */
    kv_seq_config c = config(KVLM_OVERFLOW_RING, 64);
    assert_int_equal(kv_seq_init(&s, pool, &c, &err), KVLM_OK);
    assert_int_equal(s.n_ctx, 32); /* window 24 + max_batch 8 */
    assert_int_equal(kv_seq_max_pass(&s), 8);
    assert_int_equal(kv_seq_pass_cap(&s), 8);
    assert_int_equal(append(&s, 0, 40, 8, &err), KVLM_OK);
    expect(kv_seq_prepare(&s, 9, &err), KVLM_ERR_INTERNAL, &err, "a ring pass of 9 tokens exceeds its slack");
    assert_int_equal(s.next_pos, 40);
    check_rows(&s, 32, 0.0f);
    kv_seq_destroy(&s);

    /* a pass longer than the sliding-window ring's slack (16 slots, window 8) */
    c = swa_config(64);
    assert_int_equal(kv_seq_init(&s, pool, &c, &err), KVLM_OK);
    assert_int_equal(s.swa_cap, 16);
    assert_int_equal(append(&s, 0, 20, 8, &err), KVLM_OK);
    expect(kv_seq_prepare(&s, 9, &err), KVLM_ERR_INTERNAL, &err, "exceeds the sliding-window ring's slack");
    assert_int_equal(kv_seq_prepare(&s, 8, &err), KVLM_OK);
    assert_int_equal(s.n, 20);
    check_rows(&s, 8, 0.0f);
    kv_seq_destroy(&s);

    /* shift: a pass that cannot fit beside the kept head even after a shift */
    c = config(KVLM_OVERFLOW_SHIFT, 64);
    c.n_keep = 40;
    assert_int_equal(kv_seq_init(&s, pool, &c, &err), KVLM_OK);
    assert_int_equal(append(&s, 0, 64, 16, &err), KVLM_OK);
    expect(kv_seq_prepare(&s, 30, &err), KVLM_ERR_CONTEXT_FULL, &err, "do not fit in the context of 64 even after a shift");
    assert_int_equal(s.n, 64);
    assert_int_equal(s.n_dropped, 0);
    check_rows(&s, 0, 0.0f);
    assert_int_equal(kv_seq_prepare(&s, 12, &err), KVLM_OK); /* (64 - 40) / 2 slots go */
    assert_int_equal(s.n, 52);
    check_rows(&s, 0, 1e-4f);
    kv_seq_destroy(&s);

    /* sliding: more than the context holds beside its sinks */
    c = config(KVLM_OVERFLOW_SLIDING, 64);
    assert_int_equal(kv_seq_init(&s, pool, &c, &err), KVLM_OK);
    assert_int_equal(append(&s, 0, 64, 16, &err), KVLM_OK);
    expect(kv_seq_prepare(&s, 61, &err), KVLM_ERR_CONTEXT_FULL, &err, "do not fit next to 4 sink tokens in 64");
    assert_int_equal(s.n, 64);
    check_rows(&s, 0, 0.0f);
    assert_int_equal(kv_seq_prepare(&s, 60, &err), KVLM_OK);
    assert_int_equal(s.n, 4);
    kv_seq_destroy(&s);
    kv_pool_destroy(pool);
}

/* A shift that must copy every page (they are in the prefix index, shared with whoever looks them up)
   finds room for its first new page but not its second: NOMEM, the fresh page given back, the
   sequence as it was. With the pool's limit raised it shifts; lowered again, the pool's capacity
   comes back down to what it holds. */
static void test_shift_runs_out(void **state) {
    (void)state;
    kv_page_pool *pool = new_pool(5 * P);
    kv_seq s;
    kvlm_error err;
    kv_seq_config c = config(KVLM_OVERFLOW_SHIFT, 64);
    assert_int_equal(kv_seq_init(&s, pool, &c, &err), KVLM_OK);
    assert_int_equal(append(&s, 0, 64, 16, &err), KVLM_OK);
    assert_int_equal(s.n_pages, 4);
    kvlm_kv_stats before, after;
    kv_pool_stats(pool, &before);
    /* n_keep 4: 30 slots go, the 34 left need three new pages (none can be rewritten in place) */
    expect(kv_seq_prepare(&s, 1, &err), KVLM_ERR_NOMEM, &err, "no room for a context shift");
    kv_pool_stats(pool, &after);
    assert_int_equal(after.shifts, before.shifts);
    assert_int_equal(after.tokens, 64);
    /* the page the shift took first is back: the pool has room for exactly one more */
    kv_page *spare = kv_pool_alloc(pool, s.layout);
    assert_non_null(spare);
    assert_null(kv_pool_alloc(pool, s.layout));
    kv_pool_release(pool, spare);
    assert_int_equal(s.n, 64);
    assert_int_equal(s.n_dropped, 0);
    check_rows(&s, 0, 0.0f);

    kv_pool_widen(pool, 2);
    assert_int_equal(kv_seq_prepare(&s, 1, &err), KVLM_OK);
    assert_int_equal(s.n, 34);
    assert_int_equal(s.n_dropped, 30);
    check_rows(&s, 0, 1e-4f);
    assert_int_equal(append(&s, 64, 70, 6, &err), KVLM_OK);
    kv_pool_stats(pool, &after);
    assert_int_equal(after.shifts, before.shifts + 1);
    assert_true(after.capacity >= 7 * P);
    /* lowered again: the capacity is no more than the limit or what is allocated */
    kv_pool_widen(pool, -2);
    kv_pool_stats(pool, &after);
    const int64_t allocated = after.bytes / ((int64_t)P * KVD * 4 * 2 * NL);
    assert_true(allocated > 5);
    assert_int_equal(after.capacity, allocated * P);
    kv_seq_destroy(&s);
    kv_pool_destroy(pool);
}

/* ------------------------------------------------------------ export, import, fork */

static void test_export_checks(void **state) {
    (void)state;
    kv_page_pool *pool = new_pool(1024);
    kv_seq s;
    kvlm_error err;
    kv_seq_config c = config(KVLM_OVERFLOW_ERROR, 64);
    assert_int_equal(kv_seq_init(&s, pool, &c, &err), KVLM_OK);
    assert_int_equal(append(&s, 0, 20, 10, &err), KVLM_OK);
    kv_seq_desc d;
    assert_int_equal(kv_seq_export(&s, 20, &d, &err), KVLM_OK);
    assert_int_equal(d.n_pages, 2);

    /* a page table shorter than its tokens */
    s.n_pages = 1;
    expect(kv_seq_export(&s, 20, &d, &err), KVLM_ERR_INTERNAL, &err, "holds 1 pages for 20 tokens");
    s.n_pages = 2;
    /* a page in a layout the sequence does not write */
    kv_page *own = s.pages[1];
    kv_page *f16 = kv_pool_alloc(pool, kv_pool_layout(pool, KV_F16, KV_F16));
    assert_non_null(f16);
    s.pages[1] = f16;
    expect(kv_seq_export(&s, 20, &d, &err), KVLM_ERR_INTERNAL, &err, "has page 1 in types f16/f16 it does not use");
    s.pages[1] = own;
    kv_pool_release(pool, f16);
    assert_int_equal(kv_seq_export(&s, 20, &d, &err), KVLM_OK);
    check_rows(&s, 0, 0.0f);

    /* fork into a sequence that is not empty, or of another configuration */
    kv_seq t;
    assert_int_equal(kv_seq_init(&t, pool, &c, &err), KVLM_OK);
    assert_int_equal(append(&t, 0, 3, 3, &err), KVLM_OK);
    expect(kv_seq_fork(&t, &s, &err), KVLM_ERR_INTERNAL, &err, "differ in configuration");
    assert_int_equal(t.n, 3);
    kv_seq_destroy(&t);
    kv_seq_config c2 = c;
    c2.n_ctx = 128;
    assert_int_equal(kv_seq_init(&t, pool, &c2, &err), KVLM_OK);
    expect(kv_seq_fork(&t, &s, &err), KVLM_ERR_INTERNAL, &err, "differ in configuration");
    kv_seq_destroy(&t);
    assert_int_equal(kv_seq_init(&t, pool, &c, &err), KVLM_OK);
    assert_int_equal(kv_seq_fork(&t, &s, &err), KVLM_OK);
    check_rows(&t, 0, 0.0f);
    kv_seq_destroy(&t);
    kv_seq_destroy(&s);
    kv_pool_destroy(pool);
}

/* Importing pages out of order, or a sliding-window ring's page in other types: refused, and the
   import then goes through in order with the right types to the same rows. */
static void test_import_checks(void **state) {
    (void)state;
    kv_page_pool *pool = new_pool(1024);
    kv_seq src, dst, fresh;
    kvlm_error err;
    for (int ring = 0; ring < 2; ring++) {
        kv_seq_config c = ring ? swa_config(64) : config(KVLM_OVERFLOW_ERROR, 64);
        assert_int_equal(kv_seq_init(&src, pool, &c, &err), KVLM_OK);
        assert_int_equal(append(&src, 0, 20, 4, &err), KVLM_OK);
        kv_seq_desc d;
        assert_int_equal(kv_seq_export(&src, 20, &d, &err), KVLM_OK);
        const uint32_t n_glob = 2, n_pages = d.n_pages;
        assert_int_equal(n_pages, n_glob + (ring ? 1 : 0));
        assert_int_equal(kv_seq_init(&dst, pool, &c, &err), KVLM_OK);
        assert_int_equal(kv_seq_init(&fresh, pool, &c, &err), KVLM_OK);
        assert_int_equal(kv_seq_import(&fresh, &d, &err), KVLM_OK);
        kv_page_desc pd[4];
        for (uint32_t j = 0; j < n_pages; j++) pd[j] = kv_seq_export_page(&src, (int32_t)j, NULL);
        /* the second page before the first; a page past the description */
        expect(kv_seq_import_page(&fresh, &d, 1, &pd[1], &err) ? KVLM_OK : err.code, KVLM_ERR_INTERNAL, &err,
               "page 1 imported out of order");
        expect(kv_seq_import_page(&fresh, &d, n_pages, &pd[0], &err) ? KVLM_OK : err.code, KVLM_ERR_INTERNAL, &err,
               "imported out of order");
        if (ring) {
            /* the ring's page before the pages beside it; the ring's page in other types */
            expect(kv_seq_import_page(&fresh, &d, n_glob, &pd[n_glob], &err) ? KVLM_OK : err.code, KVLM_ERR_INTERNAL,
                   &err, "page 2 imported out of order");
            kv_page_desc bad = pd[n_glob];
            bad.type_k = KV_F16;
            expect(kv_seq_import_page(&fresh, &d, n_glob, &bad, &err) ? KVLM_OK : err.code, KVLM_ERR_FORMAT, &err,
                   "(of the sliding-window ring) is stored as f16/f32");
            bad = pd[n_glob];
            bad.bytes++;
            expect(kv_seq_import_page(&fresh, &d, n_glob, &bad, &err) ? KVLM_OK : err.code, KVLM_ERR_FORMAT, &err,
                   "the ring's pages are f32/f32");
        }
        /* in order, as a load does: the same rows */
        for (uint32_t j = 0; j < n_pages; j++) {
            uint8_t *p = kv_seq_import_page(&fresh, &d, j, &pd[j], &err);
            if (!p) fail_msg("page %u: %s", j, err.msg);
            kv_seq_export_page(&src, (int32_t)j, p);
        }
        kv_seq_import_commit(&dst, &fresh, &d);
        assert_int_equal(dst.n, 20);
        check_rows(&dst, 8, 0.0f);
        kv_seq_destroy(&dst);
        kv_seq_destroy(&src);
    }
    kv_pool_destroy(pool);
}

/* ------------------------------------------------------------ the page layout's accessors */

/* kv_codec_head on heads that are whole blocks (32-value heads of Q8_0) decodes just the head's
   blocks, the same values as the head's part of the whole row; heads straddling blocks (16 values)
   decode the whole row. */
static void test_codec_head(void **state) {
    (void)state;
    kv_page_pool *pool = NULL;
    kvlm_error err;
    const kvlm_cache_params pp = pool_params(1024);
    enum { D = 128 };
    assert_int_equal(kv_pool_create(1, D, &pp, &pool, &err), KVLM_OK);
    const kv_layout *l = kv_pool_layout(pool, KV_Q8_0, KV_Q8_0);
    assert_non_null(l);
    float x[D], all[D], tmp[D];
    for (int i = 0; i < D; i++) x[i] = sinf(0.3f * (float)i) * (1.0f + (float)(i / 32));
    uint8_t row[D * 2];
    assert_true(l->k_row <= sizeof row);
    l->k.encode(x, row, D);
    l->k.decode(row, all, D);
    for (int hd = 16; hd <= 64; hd *= 2)
        for (int h = 0; h < D / hd; h++) {
            memset(tmp, 0, sizeof tmp);
            const float *got = kv_codec_head(&l->k, row, h, hd, D, tmp);
            assert_memory_equal(got, all + h * hd, (size_t)hd * sizeof *got);
            if (hd % 32 == 0) assert_ptr_equal(got, tmp); /* just the head's blocks, at tmp */
            else assert_ptr_equal(got, tmp + h * hd);
        }
    kv_pool_destroy(pool);
}

/* ------------------------------------------------------------ the disk tier */

enum { DP = 16, DKVD = 32, DPAGE = DP * DKVD * 4 * 2, DN = 3 };
static const kv_disk_geom k_geom = {{0x1234, 0x5678}, DP, 1, DKVD};

/* Page i of a prefix chain: its tokens, key (chained on the one before) and contents. */
typedef struct dpage {
    int32_t tokens[DP];
    uint64_t key, parent;
    uint8_t data[DPAGE];
} dpage;
static void make_pages(dpage *pg) {
    uint64_t parent = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < DN; i++) {
        for (int t = 0; t < DP; t++) pg[i].tokens[t] = tok_of(i * DP + t);
        pg[i].parent = parent;
        pg[i].key = parent = kv_page_key(parent, pg[i].tokens, DP);
        for (int b = 0; b < DPAGE; b++) pg[i].data[b] = (uint8_t)(b * 31 + i * 7 + (b >> 9));
    }
}
static kv_disk_page as_disk(const dpage *p) {
    const kv_disk_page d = {p->key, p->parent, KV_F32, KV_F32, p->tokens, p->data, DPAGE};
    return d;
}

static int files_named(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

/* Spills the pages, waiting until each is written (or dropped). */
static void spill_all(kv_disk *d, const dpage *pg) {
    for (int i = 0; i < DN; i++) {
        const kv_disk_page dp = as_disk(&pg[i]);
        kv_disk_spill(d, &dp, true);
        kv_disk_drain(d);
    }
}
/* Reads the pages back; returns how many were, each one checked byte for byte. */
static int load_all(kv_disk *d, const dpage *pg) {
    static uint8_t got[DPAGE];
    int hits = 0;
    for (int i = 0; i < DN; i++) {
        memset(got, 0xee, sizeof got);
        if (!kv_disk_load(d, pg[i].key, pg[i].parent, pg[i].tokens, KV_F32, KV_F32, got, DPAGE)) continue;
        assert_memory_equal(got, pg[i].data, DPAGE);
        hits++;
    }
    return hits;
}

/* Each allocation of the tier (open, re-index, the queue, the spilling thread's buffer, a read back,
   the index at close) failing in turn: opening says NOMEM, a spill is dropped, a read back misses,
   nothing read back is wrong; reopened with allocations working, the tier reads back what it wrote. */
static void test_disk_alloc_failures(void **state) {
    (void)state;
    static dpage pg[DN];
    make_pages(pg);
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/kvlm-kvedges-disk-%ld", (long)getpid());
    kvlm_error err;
    /* a directory holding the pages and an index, for the re-indexing runs */
    kv_disk *d = NULL;
    assert_int_equal(kv_disk_open(dir, 1 << 20, 1, &k_geom, &d, &err), KVLM_OK);
    spill_all(d, pg);
    assert_int_equal(load_all(d, pg), DN);
    kv_disk_close(d);
    long k = 1;
    for (;; k++) {
        atomic_store(&g_count, 0);
        atomic_store(&g_fail_at, k);
        atomic_store(&g_failed, 0);
        atomic_store(&g_armed_all, true);
        d = NULL;
        kvlm_status st = kv_disk_open(dir, 1 << 20, 1, &k_geom, &d, &err);
        int hits = -1;
        static dpage fresh; /* a page never spilled before: the queue's and the writer's allocations */
        fresh = pg[1];
        fresh.tokens[0] = 500000 + (int32_t)k;
        fresh.key = kv_page_key(fresh.parent, fresh.tokens, DP);
        if (st == KVLM_OK) {
            hits = load_all(d, pg); /* what the re-index found */
            spill_all(d, pg);
            const kv_disk_page fp = as_disk(&fresh);
            kv_disk_spill(d, &fp, true);
            kv_disk_drain(d);
            static uint8_t back[DPAGE];
            if (kv_disk_load(d, fresh.key, fresh.parent, fresh.tokens, KV_F32, KV_F32, back, DPAGE))
                assert_memory_equal(back, fresh.data, DPAGE);
            kv_disk_close(d); /* writes the index */
        }
        atomic_store(&g_armed_all, false);
        const long made = atomic_load(&g_count);
        if (st != KVLM_OK) {
            expect(st, KVLM_ERR_NOMEM, &err, "out of memory");
            assert_null(d);
        } else if (atomic_load(&g_failed) == 0) {
            assert_int_equal(hits, DN);
        }
        /* allocations working: everything that is there reads back right, and what is not is written again */
        assert_int_equal(kv_disk_open(dir, 1 << 20, 1, &k_geom, &d, &err), KVLM_OK);
        load_all(d, pg);
        spill_all(d, pg);
        assert_int_equal(load_all(d, pg), DN);
        kv_disk_close(d);
        assert_int_equal(files_named(dir, "tmp."), 0);
        /* the fresh page goes again, so that every round re-indexes the same files */
        char fname[160];
        snprintf(fname, sizeof fname, "%s/%016llx-%02x%02x.kvpage", dir, (unsigned long long)fresh.key, KV_F32, KV_F32);
        assert_true(unlink(fname) == 0 || errno == ENOENT); /* (not written when that allocation failed) */
        if (made < k) break;
    }
    assert_true(k > 4);

    /* writes cut short (the file size limit): the spills are dropped, no temporary is left, and the
       pages are not found; with the limit lifted they are written */
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(kv_disk_open(dir, 1 << 20, 1, &k_geom, &d, &err), KVLM_OK);
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = old;
    lim.rlim_cur = 100;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    spill_all(d, pg);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    kvlm_kv_stats ds;
    memset(&ds, 0, sizeof ds);
    kv_disk_stats(d, &ds);
    assert_int_equal(ds.disk_dropped, DN);
    assert_int_equal(ds.disk_pages, 0);
    assert_int_equal(load_all(d, pg), 0);
    assert_int_equal(files_named(dir, "tmp."), 0);
    spill_all(d, pg);
    assert_int_equal(load_all(d, pg), DN);
    kv_disk_close(d);
    assert_int_equal(system(cmd), 0);
}

/* kv_disk_open's refusals: a zstd level outside 1..19, a directory that cannot be made, a lock file
   that is not a regular file, a spilling thread that cannot start; each leaves nothing open (the
   directory opens right after). */
static void test_disk_refusals(void **state) {
    (void)state;
    char dir[96], path[128];
    snprintf(dir, sizeof dir, "/tmp/kvlm-kvedges-dref-%ld", (long)getpid());
    kv_disk *d = (kv_disk *)&d;
    kvlm_error err;
    expect(kv_disk_open(dir, 1 << 20, 20, &k_geom, &d, &err), KVLM_ERR_INVALID_ARG, &err, "zstd level 20 is outside 1..19");
    assert_null(d);
    /* under a regular file */
    FILE *f = fopen(dir, "w");
    assert_non_null(f);
    fclose(f);
    snprintf(path, sizeof path, "%s/tier", dir);
    expect(kv_disk_open(path, 1 << 20, 1, &k_geom, &d, &err), KVLM_ERR_IO, &err, "cannot create");
    assert_int_equal(unlink(dir), 0);
    /* the lock file is a directory */
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(path, sizeof path, "%s/lock", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    expect(kv_disk_open(dir, 1 << 20, 1, &k_geom, &d, &err), KVLM_ERR_IO, &err, "cannot open the lock file");
    assert_int_equal(rmdir(path), 0);
    /* no thread */
    atomic_store(&g_no_thread, true);
    expect(kv_disk_open(dir, 1 << 20, 1, &k_geom, &d, &err), KVLM_ERR_INTERNAL, &err, "cannot start the spilling thread");
    assert_null(d);
    assert_int_equal(kv_disk_open(dir, 1 << 20, 1, &k_geom, &d, &err), KVLM_OK); /* the lock was released */
    kv_disk_close(d);
    /* the directory cannot be scanned (no descriptor left for it) */
    atomic_store(&g_no_dup, true);
    expect(kv_disk_open(dir, 1 << 20, 1, &k_geom, &d, &err), KVLM_ERR_IO, &err, "cannot read the directory");
    assert_null(d);
    assert_false(atomic_load(&g_no_dup)); /* the scan asked for it */
    assert_int_equal(kv_disk_open(dir, 1 << 20, 1, &k_geom, &d, &err), KVLM_OK); /* nothing was left held */
    kv_disk_close(d);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* Pages still queued (the spilling thread held back in zstd): a read back gets the queued copy (and
   not for another prefix); enough queued pages grow the tier's table; a compression that fails drops
   its page; a page whose types do not fit the tier's rows is not taken; a page file replaced by a FIFO,
   or whose header names another version or geometry, is refused and removed. */
static void test_disk_pending_and_bad(void **state) {
    (void)state;
    enum { MANY = 300 };
    static dpage pg[DN];
    make_pages(pg);
    char dir[96];
    snprintf(dir, sizeof dir, "/tmp/kvlm-kvedges-dpend-%ld", (long)getpid());
    kv_disk *d = NULL;
    kvlm_error err;
    assert_int_equal(kv_disk_open(dir, 16 << 20, 1, &k_geom, &d, &err), KVLM_OK);
    zstd_hold(true);
    kv_disk_page dp = as_disk(&pg[0]);
    kv_disk_spill(d, &dp, false);
    uint8_t got[DPAGE];
    assert_true(kv_disk_contains(d, pg[0].key, KV_F32, KV_F32));
    assert_true(kv_disk_load(d, pg[0].key, pg[0].parent, pg[0].tokens, KV_F32, KV_F32, got, DPAGE));
    assert_memory_equal(got, pg[0].data, DPAGE);
    assert_false(kv_disk_load(d, pg[0].key, pg[0].parent ^ 1, pg[0].tokens, KV_F32, KV_F32, got, DPAGE));
    /* many more queued pages: more entries than the table's first buckets */
    static dpage extra;
    extra = pg[1];
    for (int i = 0; i < MANY; i++) {
        extra.tokens[0] = 100000 + i;
        extra.key = kv_page_key(extra.parent, extra.tokens, DP);
        dp = as_disk(&extra);
        kv_disk_spill(d, &dp, false);
    }
    zstd_hold(false);
    kv_disk_drain(d);
    kvlm_kv_stats st;
    memset(&st, 0, sizeof st);
    kv_disk_stats(d, &st);
    assert_int_equal(st.disk_writes, MANY + 1);
    assert_int_equal(st.disk_dropped, 0);
    for (int i = 0; i < MANY; i += 37) {
        extra.tokens[0] = 100000 + i;
        extra.key = kv_page_key(extra.parent, extra.tokens, DP);
        assert_true(kv_disk_load(d, extra.key, extra.parent, extra.tokens, KV_F32, KV_F32, got, DPAGE));
        assert_memory_equal(got, extra.data, DPAGE);
    }
    /* a compression that fails: the page is dropped */
    atomic_store(&g_zstd_fail, true);
    dp = as_disk(&pg[1]);
    kv_disk_spill(d, &dp, true);
    kv_disk_drain(d);
    kv_disk_stats(d, &st);
    assert_int_equal(st.disk_dropped, 1);
    assert_false(kv_disk_contains(d, pg[1].key, KV_F32, KV_F32));
    /* Q8_0 rows of a page claiming the F32 size: not the tier's geometry, not taken */
    kv_disk_page q8 = as_disk(&pg[2]);
    q8.type_k = q8.type_v = KV_Q8_0;
    kv_disk_spill(d, &q8, true);
    kv_disk_drain(d);
    assert_false(kv_disk_contains(d, pg[2].key, KV_Q8_0, KV_Q8_0));
    /* on a tier of rows of 16 values Q8_0 rows (blocks of 32) do not exist: not taken */
    char dir16[112];
    snprintf(dir16, sizeof dir16, "%s-16", dir);
    const kv_disk_geom g16 = {{0x1234, 0x5678}, DP, 1, 16};
    kv_disk *d16 = NULL;
    assert_int_equal(kv_disk_open(dir16, 16 << 20, 1, &g16, &d16, &err), KVLM_OK);
    q8.bytes = DP * 16 * 4 * 2;
    kv_disk_spill(d16, &q8, true);
    kv_disk_drain(d16);
    assert_false(kv_disk_contains(d16, pg[2].key, KV_Q8_0, KV_Q8_0));
    kv_disk_close(d16);
    char rm16[160];
    snprintf(rm16, sizeof rm16, "rm -rf %s", dir16);
    assert_int_equal(system(rm16), 0);
    /* page 0's file replaced by a FIFO: the read back refuses it and forgets the page */
    char name[160];
    snprintf(name, sizeof name, "%s/%016llx-%02x%02x.kvpage", dir, (unsigned long long)pg[0].key, KV_F32, KV_F32);
    assert_int_equal(unlink(name), 0);
    assert_int_equal(mkfifo(name, 0600), 0);
    assert_false(kv_disk_load(d, pg[0].key, pg[0].parent, pg[0].tokens, KV_F32, KV_F32, got, DPAGE));
    const int64_t rejected = st.disk_rejected;
    kv_disk_stats(d, &st);
    assert_int_equal(st.disk_rejected, rejected + 1);
    assert_false(kv_disk_contains(d, pg[0].key, KV_F32, KV_F32));
    assert_int_equal(access(name, F_OK), -1); /* and removes what was at its name */
    kv_disk_close(d);
    /* two files edited: another version, another page size; the re-index removes both */
    char f1[160], f2[160];
    extra.tokens[0] = 100000;
    extra.key = kv_page_key(extra.parent, extra.tokens, DP);
    snprintf(f1, sizeof f1, "%s/%016llx-%02x%02x.kvpage", dir, (unsigned long long)extra.key, KV_F32, KV_F32);
    extra.tokens[0] = 100001;
    extra.key = kv_page_key(extra.parent, extra.tokens, DP);
    snprintf(f2, sizeof f2, "%s/%016llx-%02x%02x.kvpage", dir, (unsigned long long)extra.key, KV_F32, KV_F32);
    FILE *fp = fopen(f1, "r+b");
    assert_non_null(fp);
    kv_disk_header h;
    assert_int_equal(fread(&h, sizeof h, 1, fp), 1);
    h.version++;
    rewind(fp);
    assert_int_equal(fwrite(&h, sizeof h, 1, fp), 1);
    fclose(fp);
    fp = fopen(f2, "r+b");
    assert_non_null(fp);
    assert_int_equal(fread(&h, sizeof h, 1, fp), 1);
    h.page_tokens *= 2;
    rewind(fp);
    assert_int_equal(fwrite(&h, sizeof h, 1, fp), 1);
    fclose(fp);
    assert_int_equal(kv_disk_open(dir, 16 << 20, 1, &k_geom, &d, &err), KVLM_OK);
    memset(&st, 0, sizeof st);
    kv_disk_stats(d, &st);
    assert_int_equal(st.disk_rejected, 2);
    assert_int_equal(st.disk_pages, MANY - 2);
    assert_int_equal(access(f1, F_OK), -1);
    assert_int_equal(access(f2, F_OK), -1);
    kv_disk_close(d);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* A full write queue (at least 8 pages and 64 MiB waiting: the spilling thread held back): a spill
   that may not wait is dropped, one that may waits for room and is then written. Pages of 8 MiB. */
enum { BP = 256, BKVD = 4096 };
static const kv_disk_geom k_big = {{0x1234, 0x5678}, BP, 1, BKVD};
typedef struct big_spill {
    kv_disk *d;
    kv_disk_page pg;
} big_spill;
static void *spill_waiting(void *arg) {
    big_spill *b = arg;
    kv_disk_spill(b->d, &b->pg, true);
    return NULL;
}
static void test_disk_queue_full(void **state) {
    (void)state;
    const uint64_t bytes = (uint64_t)BP * BKVD * 4 * 2;
    uint8_t *data = malloc(bytes);
    assert_non_null(data);
    for (uint64_t i = 0; i < bytes; i++) data[i] = (uint8_t)(i * 13 + (i >> 12));
    static int32_t toks[10][BP];
    uint64_t keys[10];
    for (int p = 0; p < 10; p++) {
        for (int t = 0; t < BP; t++) toks[p][t] = p * 1000 + t;
        keys[p] = kv_page_key(77, toks[p], BP);
    }
    char dir[96];
    snprintf(dir, sizeof dir, "/tmp/kvlm-kvedges-dfull-%ld", (long)getpid());
    kv_disk *d = NULL;
    kvlm_error err;
    assert_int_equal(kv_disk_open(dir, 1ll << 30, 1, &k_big, &d, &err), KVLM_OK);
    zstd_hold(true);
    for (int p = 0; p < 8; p++) {
        const kv_disk_page pg = {keys[p], 77, KV_F32, KV_F32, toks[p], data, bytes};
        kv_disk_spill(d, &pg, false);
    }
    kvlm_kv_stats st;
    memset(&st, 0, sizeof st);
    kv_disk_stats(d, &st);
    assert_int_equal(st.disk_dropped, 0);
    const kv_disk_page ninth = {keys[8], 77, KV_F32, KV_F32, toks[8], data, bytes};
    kv_disk_spill(d, &ninth, false); /* the queue is full: dropped */
    kv_disk_stats(d, &st);
    assert_int_equal(st.disk_dropped, 1);
    assert_false(kv_disk_contains(d, keys[8], KV_F32, KV_F32));
    big_spill b = {d, {keys[9], 77, KV_F32, KV_F32, toks[9], data, bytes}};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, spill_waiting, &b), 0);
    usleep(300 * 1000); /* it waits for room */
    assert_false(kv_disk_contains(d, keys[9], KV_F32, KV_F32));
    zstd_hold(false);
    assert_int_equal(pthread_join(th, NULL), 0);
    kv_disk_drain(d);
    kv_disk_stats(d, &st);
    assert_int_equal(st.disk_writes, 9);
    assert_int_equal(st.disk_dropped, 1);
    assert_true(kv_disk_contains(d, keys[9], KV_F32, KV_F32));
    kv_disk_close(d);
    free(data);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_refusals),  cmocka_unit_test(test_init_alloc_failures),
        cmocka_unit_test(test_pass_limits),    cmocka_unit_test(test_shift_runs_out),
        cmocka_unit_test(test_export_checks),  cmocka_unit_test(test_import_checks),
        cmocka_unit_test(test_codec_head),     cmocka_unit_test(test_disk_alloc_failures),
        cmocka_unit_test(test_disk_refusals),  cmocka_unit_test(test_disk_pending_and_bad),
        cmocka_unit_test(test_disk_queue_full),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
