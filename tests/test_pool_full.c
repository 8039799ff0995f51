/* A shared page pool at its limit (issue 22: pool exhaustion at every step that takes a page):
 * a pass that needs a new page, a context shift whose pages are shared, a rollback that must copy
 * a shared page, a fork, a load, a batched decode. The pool is filled by a filler session that
 * takes a page at a time until the pool refuses. Each refused step returns KVLM_ERR_NOMEM with a
 * message, leaves the session as it was, and once the filler gives its pages back the same step
 * succeeds and the session's logits are bit-identical to a from-scratch evaluation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "kvlm.h"
#include "test_util.h"

#define AIDREAMS KVLM_MODELS_DIR "/llama/aidreams260K-f32.gguf"
#define P 16
#define N_TOK 200

static kvlm_model *g_model;
static int32_t g_vocab;
static kvlm_token g_toks[N_TOK];

static int setup(void **state) {
    (void)state;
    g_model = load(AIDREAMS);
    kvlm_model_info mi;
    kvlm_model_get_info(g_model, &mi);
    g_vocab = mi.n_vocab;
    seq(g_toks, N_TOK, g_vocab, 2207);
    return 0;
}
static int teardown(void **state) {
    (void)state;
    kvlm_model_free(g_model);
    return 0;
}

/* A cache of `pages` pages of P tokens, no growth past them, no prefix index (nothing to evict). */
static kvlm_cache *small_cache(int pages) {
    kvlm_cache_params cp = kvlm_cache_default_params();
    cp.page_tokens = P;
    cp.initial_tokens = pages * P;
    cp.max_tokens = pages * P;
    cp.prefix_sharing = false;
    kvlm_cache *c = NULL;
    kvlm_error err;
    if (kvlm_cache_new(g_model, &cp, &c, &err) != KVLM_OK) fail_msg("cache: %s", err.msg);
    return c;
}

static kvlm_session *on(kvlm_cache *c, int32_t n_ctx, kvlm_overflow pol) {
    kvlm_session_params p = kvlm_session_default_params();
    p.cache = c;
    p.n_ctx = n_ctx;
    p.overflow = pol;
    return session_with(g_model, &p);
}

static void feed(kvlm_session *s, const kvlm_token *t, int32_t n) {
    kvlm_error err;
    if (kvlm_eval(s, t, n, 0, NULL, false, &err) != KVLM_OK) fail_msg("eval of %d: %s", n, err.msg);
}

/* Takes pages until the pool refuses: the filler then holds every free page. */
static kvlm_session *fill(kvlm_cache *c) {
    kvlm_session *f = on(c, 4096, KVLM_OVERFLOW_ERROR);
    static kvlm_token all[4096];
    for (int32_t i = 0; i < 4096; i++) all[i] = g_toks[i % N_TOK];
    kvlm_error err;
    for (int32_t n = 0; n + P <= 4096; n += P) {
        const kvlm_status st = kvlm_eval(f, all, n + P, n, NULL, false, &err);
        if (st == KVLM_ERR_NOMEM) {
            /* the refused pass left the filler as it was */
            assert_int_equal(kvlm_session_n_past(f), n);
            assert_non_null(strstr(err.msg, "page pool is full"));
            return f;
        }
        if (st != KVLM_OK) fail_msg("filler: %s", err.msg);
    }
    fail_msg("the pool never filled");
    return NULL;
}

static void refused(kvlm_status st, const kvlm_error *err, const char *words) {
    if (st != KVLM_ERR_NOMEM) fail_msg("status %d (want NOMEM): %s", (int)st, err->msg);
    if (!strstr(err->msg, words)) fail_msg("'%s' does not say '%s'", err->msg, words);
}

/* The session holds g_toks[0..n) (checked) and its logits after g_toks[n] equal eval_full's. */
static void continues(kvlm_session *s, int32_t n) {
    assert_int_equal(kvlm_session_n_past(s), n);
    kvlm_token h[N_TOK];
    assert_int_equal(kvlm_session_tokens(s, h, N_TOK), n);
    assert_memory_equal(h, g_toks, (size_t)n * sizeof *h);
    float *a = malloc((size_t)g_vocab * sizeof *a), *b = malloc((size_t)g_vocab * sizeof *b);
    kvlm_error err;
    if (kvlm_eval(s, g_toks, n + 1, n, a, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
    if (kvlm_eval_full(g_model, g_toks, n + 1, b, false, &err) != KVLM_OK) fail_msg("eval_full: %s", err.msg);
    assert_memory_equal(a, b, (size_t)g_vocab * sizeof *a);
    free(a);
    free(b);
}

static void test_pass_needs_a_page(void **state) {
    (void)state;
    kvlm_cache *c = small_cache(8);
    kvlm_session *a = on(c, 128, KVLM_OVERFLOW_ERROR);
    feed(a, g_toks, 20);
    kvlm_session *f = fill(c);
    kvlm_error err;
    /* 20 -> 40 tokens needs a third page */
    refused(kvlm_eval(a, g_toks, 40, 20, NULL, false, &err), &err, "page pool is full");
    assert_int_equal(kvlm_session_n_past(a), 20);
    /* what still fits in the partial page goes */
    feed(a, g_toks, 30);
    kvlm_session_free(f);
    continues(a, 30);
    kvlm_session_free(a);
    kvlm_cache_free(c);
}

static void test_shift_of_shared_pages(void **state) {
    (void)state;
    kvlm_cache *c = small_cache(12);
    kvlm_session *a = on(c, 64, KVLM_OVERFLOW_SHIFT);
    feed(a, g_toks, 64);
    kvlm_session *b = NULL;
    kvlm_error err;
    if (kvlm_session_fork(a, &b, &err) != KVLM_OK) fail_msg("fork: %s", err.msg); /* shares a's full pages */
    kvlm_session *f = fill(c);
    /* a's next token needs a shift, and its pages are b's too: the pass cannot get its pages */
    refused(kvlm_eval(a, g_toks, 65, 64, NULL, false, &err), &err, "pool");
    assert_int_equal(kvlm_session_n_past(a), 64);
    kvlm_kv_stats st;
    kvlm_session_get_stats(a, &st);
    assert_int_equal(st.shifts, 0);
    kvlm_session_free(f);
    /* now the shift goes; its result equals a session that never met a full pool */
    float *x = malloc((size_t)g_vocab * sizeof *x), *y = malloc((size_t)g_vocab * sizeof *y);
    if (kvlm_eval(a, g_toks, 65, 64, x, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 64;
    p.overflow = KVLM_OVERFLOW_SHIFT;
    kvlm_session *ref = session_with(g_model, &p);
    feed(ref, g_toks, 64);
    if (kvlm_eval(ref, g_toks, 65, 64, y, false, &err) != KVLM_OK) fail_msg("ref: %s", err.msg);
    assert_memory_equal(x, y, (size_t)g_vocab * sizeof *x);
    kvlm_session_get_stats(a, &st);
    assert_int_equal(st.shifts, 1);
    /* b still holds the unshifted 64 */
    kvlm_token h[64];
    assert_int_equal(kvlm_session_tokens(b, h, 64), 64);
    assert_memory_equal(h, g_toks, sizeof h);
    free(x);
    free(y);
    kvlm_session_free(ref);
    kvlm_session_free(b);
    kvlm_session_free(a);
    kvlm_cache_free(c);
}

static void test_rollback_copies_a_shared_page(void **state) {
    (void)state;
    kvlm_cache *c = small_cache(12);
    kvlm_session *a = on(c, 128, KVLM_OVERFLOW_ERROR);
    feed(a, g_toks, 40);
    kvlm_session *b = NULL;
    kvlm_error err;
    if (kvlm_session_fork(a, &b, &err) != KVLM_OK) fail_msg("fork: %s", err.msg);
    kvlm_session *f = fill(c);
    /* back to 20: page 1 (tokens 16..31) is b's too, so its first 4 tokens go to a copy */
    refused(kvlm_session_truncate(a, 20, &err), &err, "no room to copy a shared page");
    /* at a page boundary nothing is copied: that works on a full pool */
    if (kvlm_session_truncate(b, 32, &err) != KVLM_OK) fail_msg("truncate b: %s", err.msg);
    continues(a, 40);
    kvlm_session_free(f);
    if (kvlm_session_truncate(a, 20, &err) != KVLM_OK) fail_msg("truncate: %s", err.msg);
    continues(a, 20);
    continues(b, 32);
    kvlm_session_free(b);
    kvlm_session_free(a);
    kvlm_cache_free(c);
}

static void test_fork_and_load(void **state) {
    (void)state;
    kvlm_cache *c = small_cache(12);
    kvlm_session *a = on(c, 128, KVLM_OVERFLOW_ERROR);
    kvlm_session *r = on(c, 128, KVLM_OVERFLOW_ERROR);
    feed(a, g_toks, 40);
    char path[128];
    tmp_path(path, sizeof path, "poolfull", ".kvs");
    kvlm_error err;
    if (kvlm_session_save(a, path, &err) != KVLM_OK) fail_msg("save: %s", err.msg);
    kvlm_session *f = fill(c);
    kvlm_session *b = (kvlm_session *)&b;
    refused(kvlm_session_fork(a, &b, &err), &err, "no room");
    assert_null(b);
    refused(kvlm_session_load(r, path, &err), &err, "no room");
    assert_int_equal(kvlm_session_n_past(r), 0);
    continues(a, 40);
    kvlm_session_free(f);
    if (kvlm_session_fork(a, &b, &err) != KVLM_OK) fail_msg("fork: %s", err.msg);
    if (kvlm_session_load(r, path, &err) != KVLM_OK) fail_msg("load: %s", err.msg);
    unlink(path);
    continues(b, 41);
    continues(r, 40); /* the file holds 40 */
    kvlm_session_free(b);
    kvlm_session_free(r);
    kvlm_session_free(a);
    kvlm_cache_free(c);
}

static void test_batch_needs_pages(void **state) {
    (void)state;
    kvlm_cache *c = small_cache(10);
    kvlm_session *a = on(c, 128, KVLM_OVERFLOW_ERROR), *b = on(c, 128, KVLM_OVERFLOW_ERROR);
    feed(a, g_toks, 32); /* both at a page boundary: their next token takes a page */
    feed(b, g_toks, 16);
    kvlm_session *f = fill(c);
    kvlm_session *both[2] = {a, b};
    const kvlm_token next[2] = {g_toks[32], g_toks[16]};
    float *logits = malloc((size_t)2 * g_vocab * sizeof *logits);
    kvlm_error err;
    refused(kvlm_decode_batch(both, next, 2, logits, &err), &err, "page pool is full");
    assert_int_equal(kvlm_session_n_past(a), 32);
    assert_int_equal(kvlm_session_n_past(b), 16);
    kvlm_session_free(f);
    if (kvlm_decode_batch(both, next, 2, logits, &err) != KVLM_OK) fail_msg("batch: %s", err.msg);
    float *ref = malloc((size_t)g_vocab * sizeof *ref);
    if (kvlm_eval_full(g_model, g_toks, 33, ref, false, &err) != KVLM_OK) fail_msg("eval_full: %s", err.msg);
    assert_memory_equal(logits, ref, (size_t)g_vocab * sizeof *ref);
    if (kvlm_eval_full(g_model, g_toks, 17, ref, false, &err) != KVLM_OK) fail_msg("eval_full: %s", err.msg);
    assert_memory_equal(logits + g_vocab, ref, (size_t)g_vocab * sizeof *ref);
    continues(a, 33);
    continues(b, 17);
    free(ref);
    free(logits);
    kvlm_session_free(b);
    kvlm_session_free(a);
    kvlm_cache_free(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pass_needs_a_page), cmocka_unit_test(test_shift_of_shared_pages),
        cmocka_unit_test(test_rollback_copies_a_shared_page), cmocka_unit_test(test_fork_and_load),
        cmocka_unit_test(test_batch_needs_pages),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
