/* kvlm_session_fork: a fork holds its source's history and K/V, costs one page on a shared cache,
 * and both go on bit-identically to sessions that computed the same histories from scratch —
 * isolation under appends, rollbacks into shared pages, shifts and rings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kvlm.h"
#include "test_util.h"

#define SYNTH KVLM_MODELS_DIR "/llama/synth15M-q8_0.gguf"
#define AIDREAMS KVLM_MODELS_DIR "/llama/aidreams260K-f32.gguf"

static kvlm_model *g_m;
static int32_t g_V;

/* logits of the last token of toks[0, n) computed from scratch */
static void reference(const kvlm_token *toks, int32_t n, float *out) {
    kvlm_error err;
    if (kvlm_eval_full(g_m, toks, n, out, false, &err) != KVLM_OK) fail_msg("eval_full: %s", err.msg);
}

/* appends toks[have, n) to s (whose history is toks[0, have)) and checks the last logits against a
   from-scratch evaluation of toks[0, n) */
static void extend_and_check(kvlm_session *s, const kvlm_token *toks, int32_t have, int32_t n) {
    float *a = malloc((size_t)g_V * sizeof *a), *b = malloc((size_t)g_V * sizeof *b);
    kvlm_error err;
    assert_int_equal(kvlm_session_n_past(s), have);
    if (kvlm_eval(s, toks, n, have, a, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
    reference(toks, n, b);
    assert_memory_equal(a, b, (size_t)g_V * sizeof *a);
    free(a);
    free(b);
}

static int64_t cache_bytes(kvlm_cache *c) {
    kvlm_kv_stats st;
    kvlm_cache_get_stats(c, &st);
    return st.bytes;
}

static void test_fork_shared_cache(void **state) {
    (void)state;
    kvlm_cache_params cp = kvlm_cache_default_params();
    cp.page_tokens = 32;
    kvlm_cache *c = NULL;
    kvlm_error err;
    assert_int_equal(kvlm_cache_new(g_m, &cp, &c, &err), KVLM_OK);
    kvlm_session_params sp = kvlm_session_default_params();
    sp.n_ctx = 512;
    sp.cache = c;
    kvlm_session *s = session_with(g_m, &sp);
    kvlm_token a[300], b[300];
    seq(a, 300, g_V, 7);
    memcpy(b, a, 100 * sizeof *a);
    seq(b + 100, 200, g_V, 99); /* b: the same first 100 tokens, then others */
    b[100] = a[100] == 5 ? 6 : 5;
    extend_and_check(s, a, 0, 100); /* 3 full pages + 4 tokens */

    const int64_t before = cache_bytes(c);
    kvlm_session *f = NULL;
    assert_int_equal(kvlm_session_fork(s, &f, &err), KVLM_OK);
    /* the fork cost one page (the partly filled one); the full pages are shared */
    kvlm_kv_stats st;
    kvlm_cache_get_stats(c, &st);
    const int64_t page = before / 4;
    assert_int_equal(st.bytes - before, page);
    assert_true(st.pages_shared >= 3);
    assert_int_equal(kvlm_session_n_past(f), 100);
    kvlm_token ht[128];
    assert_int_equal(kvlm_session_tokens(f, ht, 128), 100);
    assert_memory_equal(ht, a, 100 * sizeof *a);

    /* both go on, with different tokens, across new pages: each as if computed alone */
    extend_and_check(f, b, 100, 180);
    extend_and_check(s, a, 100, 170);
    /* the fork cuts back into a shared full page (copy-on-write) and goes another way */
    kvlm_token c2[300];
    memcpy(c2, a, 40 * sizeof *a);
    seq(c2 + 40, 100, g_V, 5);
    c2[40] = a[40] == 9 ? 10 : 9;
    assert_int_equal(kvlm_session_truncate(f, 40, &err), KVLM_OK);
    extend_and_check(f, c2, 40, 120);
    /* the source never saw any of it */
    extend_and_check(s, a, 170, 250);
    /* a fork of the fork, freed before its parents */
    kvlm_session *g = NULL;
    assert_int_equal(kvlm_session_fork(f, &g, &err), KVLM_OK);
    extend_and_check(g, c2, 120, 140);
    kvlm_session_free(g);
    extend_and_check(f, c2, 120, 130);
    /* the source freed first: the fork keeps the shared pages */
    kvlm_session_free(s);
    extend_and_check(f, c2, 130, 140);
    kvlm_session_free(f);
    kvlm_cache_free(c);
}

/* a session with its own pool: the fork gets a pool of its own with a copy of every page */
static void test_fork_own_pool(void **state) {
    (void)state;
    kvlm_session *s = session(g_m, 256);
    kvlm_token a[256], b[256];
    seq(a, 256, g_V, 3);
    memcpy(b, a, 70 * sizeof *a);
    seq(b + 70, 100, g_V, 4);
    b[70] = a[70] == 5 ? 6 : 5;
    extend_and_check(s, a, 0, 70);
    kvlm_session *f = NULL;
    kvlm_error err;
    assert_int_equal(kvlm_session_fork(s, &f, &err), KVLM_OK);
    kvlm_session_free(s); /* nothing of the fork depends on it */
    extend_and_check(f, b, 70, 150);
    kvlm_session_free(f);
}

/* The policies that move or overwrite slots: a fork made after a shift (or once a ring wrapped) and
   its source go on exactly as twins that did the same steps without forking. */
static void step(kvlm_session *s, const kvlm_token *t, int32_t n, float *out) {
    kvlm_error err;
    if (kvlm_eval(s, t, n, KVLM_AUTO, out, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
}

static void twin_check(kvlm_overflow ov) {
    kvlm_session_params sp = kvlm_session_default_params();
    sp.n_ctx = 96;
    sp.overflow = ov;
    sp.n_keep = 8;
    sp.window = 64;
    kvlm_session *s = session_with(g_m, &sp), *twin = session_with(g_m, &sp), *twin_f = session_with(g_m, &sp);
    kvlm_token t[220], u[220];
    seq(t, 220, g_V, 11);
    memcpy(u, t, 150 * sizeof *t);
    seq(u + 150, 70, g_V, 12);
    u[150] = t[150] == 5 ? 6 : 5;
    float *x = malloc((size_t)g_V * sizeof *x), *y = malloc((size_t)g_V * sizeof *y);
    for (int32_t i = 1; i <= 150; i++) { /* one token at a time, past the context */
        step(s, t, i, x);
        step(twin, t, i, y);
        step(twin_f, t, i, y);
    }
    kvlm_kv_stats st;
    kvlm_session_get_stats(s, &st);
    if (ov != KVLM_OVERFLOW_RING) assert_true(st.shifts > 0);
    kvlm_session *f = NULL;
    kvlm_error err;
    assert_int_equal(kvlm_session_fork(s, &f, &err), KVLM_OK);
    assert_int_equal(kvlm_session_n_past(f), kvlm_session_n_past(s));
    for (int32_t i = 151; i <= 220; i++) {
        step(f, u, i, x);
        step(twin_f, u, i, y);
        assert_memory_equal(x, y, (size_t)g_V * sizeof *x);
        step(s, t, i, x);
        step(twin, t, i, y);
        assert_memory_equal(x, y, (size_t)g_V * sizeof *x);
    }
    free(x);
    free(y);
    kvlm_session_free(f);
    kvlm_session_free(s);
    kvlm_session_free(twin);
    kvlm_session_free(twin_f);
}

static void test_fork_policies(void **state) {
    (void)state;
    twin_check(KVLM_OVERFLOW_SHIFT);
    twin_check(KVLM_OVERFLOW_SLIDING);
    twin_check(KVLM_OVERFLOW_RING);
}

static void test_fork_refusals(void **state) {
    (void)state;
    kvlm_session *f = (kvlm_session *)1;
    kvlm_error err;
    assert_int_equal(kvlm_session_fork(NULL, &f, &err), KVLM_ERR_INVALID_ARG);
    kvlm_session *s = session(g_m, 64);
    assert_int_equal(kvlm_session_fork(s, NULL, &err), KVLM_ERR_INVALID_ARG);
    /* an empty session forks into an empty one */
    assert_int_equal(kvlm_session_fork(s, &f, &err), KVLM_OK);
    assert_int_equal(kvlm_session_n_past(f), 0);
    kvlm_token a[40];
    seq(a, 40, g_V, 1);
    extend_and_check(f, a, 0, 40);
    kvlm_session_free(f);
    kvlm_session_free(s);
}

static int setup(void **state) {
    (void)state;
    g_m = load(SYNTH);
    g_V = kvlm_n_vocab(g_m);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    kvlm_model_free(g_m);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fork_shared_cache),
        cmocka_unit_test(test_fork_own_pool),
        cmocka_unit_test(test_fork_policies),
        cmocka_unit_test(test_fork_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
