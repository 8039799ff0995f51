/* Every rejection of a page pool's and a session's KV settings (src/kv/kv_pool.c kv_pool_create,
 * src/kv/kv_seq.c kv_seq_init), through kvlm.h: each bad value gets KVLM_ERR_INVALID_ARG with a
 * message naming it, nothing is returned, and the value next to it (the edge that is allowed)
 * works (issue 22). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test_util.h"

#define AIDREAMS KVLM_MODELS_DIR "/llama/aidreams260K-f32.gguf"

static kvlm_model *g_model;

static int setup(void **state) {
    (void)state;
    g_model = load(AIDREAMS);
    return 0;
}
static int teardown(void **state) {
    (void)state;
    kvlm_model_free(g_model);
    return 0;
}

static void cache_refused(const kvlm_cache_params *cp, const char *words) {
    kvlm_cache *c = (kvlm_cache *)&c; /* not NULL: the call must clear it */
    kvlm_error err;
    assert_int_equal(kvlm_cache_new(g_model, cp, &c, &err), KVLM_ERR_INVALID_ARG);
    assert_null(c);
    if (!strstr(err.msg, words)) fail_msg("'%s' does not say '%s'", err.msg, words);
}
static void cache_ok(const kvlm_cache_params *cp) {
    kvlm_cache *c = NULL;
    kvlm_error err;
    if (kvlm_cache_new(g_model, cp, &c, &err) != KVLM_OK) fail_msg("cache: %s", err.msg);
    kvlm_cache_free(c);
}

static void test_cache_params(void **state) {
    (void)state;
    kvlm_cache_params cp = kvlm_cache_default_params();
    cp.page_tokens = 15;
    cache_refused(&cp, "page_tokens 15");
    cp.page_tokens = 16;
    cache_ok(&cp);
    cp.page_tokens = 257;
    cache_refused(&cp, "page_tokens 257");
    cp.page_tokens = 256;
    cp.max_tokens = 255;
    cp.initial_tokens = 0;
    cache_refused(&cp, "page_tokens <= max_tokens");
    cp.max_tokens = 256;
    cache_ok(&cp);
    cp = kvlm_cache_default_params();
    cp.initial_tokens = -1;
    cache_refused(&cp, "0 <= initial <= max");
    cp.initial_tokens = cp.max_tokens + 1;
    cache_refused(&cp, "0 <= initial <= max");
    cp.initial_tokens = cp.max_tokens;
    cp.max_tokens = 4096;
    cp.initial_tokens = 4096;
    cache_ok(&cp);
    cp = kvlm_cache_default_params();
    cp.growth = KVLM_GROWTH_FACTOR;
    cp.growth_factor = 1.0f;
    cache_refused(&cp, "growth factor 1 must be in (1, 16]");
    cp.growth_factor = 16.5f;
    cache_refused(&cp, "growth factor");
    cp.growth_factor = 16.0f;
    cache_ok(&cp);
    cp = kvlm_cache_default_params();
    cp.growth = KVLM_GROWTH_LINEAR;
    cp.growth_tokens = 0;
    cache_refused(&cp, "linear growth needs growth_tokens > 0");
    cp.growth_tokens = 1;
    cache_ok(&cp);
    cp = kvlm_cache_default_params();
    cp.growth = (kvlm_growth)3;
    cache_refused(&cp, "unknown growth policy 3");
}

static void session_refused(const kvlm_session_params *p, kvlm_status want, const char *words) {
    kvlm_session *s = (kvlm_session *)&s;
    kvlm_error err;
    assert_int_equal(kvlm_session_new(g_model, p, &s, &err), want);
    assert_null(s);
    if (!strstr(err.msg, words)) fail_msg("'%s' does not say '%s'", err.msg, words);
}
static void session_ok(const kvlm_session_params *p) { kvlm_session_free(session_with(g_model, p)); }

static void test_session_params(void **state) {
    (void)state;
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 64;
    p.n_threads = 1;
    p.overflow = (kvlm_overflow)4;
    session_refused(&p, KVLM_ERR_INVALID_ARG, "unknown overflow policy 4");
    p.overflow = KVLM_OVERFLOW_SHIFT;
    p.n_keep = -1;
    session_refused(&p, KVLM_ERR_INVALID_ARG, "n_keep -1 must be in 0..n_ctx-2");
    p.n_keep = 63;
    session_refused(&p, KVLM_ERR_INVALID_ARG, "n_keep 63");
    p.n_keep = 62;
    session_ok(&p);
    p = kvlm_session_default_params();
    p.n_ctx = 64;
    p.n_threads = 1;
    p.overflow = KVLM_OVERFLOW_SLIDING;
    p.cache_params.page_tokens = 16;
    p.n_sink = -1;
    session_refused(&p, KVLM_ERR_INVALID_ARG, "n_sink -1 plus a page must fit in n_ctx 64");
    p.n_sink = 48;
    session_refused(&p, KVLM_ERR_INVALID_ARG, "n_sink 48");
    p.n_sink = 47;
    session_ok(&p);
    p = kvlm_session_default_params();
    p.n_ctx = 64;
    p.n_threads = 1;
    p.compress_after = -1;
    session_refused(&p, KVLM_ERR_INVALID_ARG, "compress_after is negative");
    p.compress_after = 0;
    session_ok(&p);
}

static void expect(kvlm_status got, kvlm_status want, const kvlm_error *err, const char *words) {
    assert_int_equal(got, want);
    if (!strstr(err->msg, words)) fail_msg("'%s' does not say '%s'", err->msg, words);
}

/* The n_past contract's and batched decode's refusals leave the session as it was. */
static void test_eval_refusals(void **state) {
    (void)state;
    kvlm_error err;
    kvlm_model *other = load(AIDREAMS); /* the same file, another model */
    kvlm_cache *oc = NULL;
    assert_int_equal(kvlm_cache_new(other, NULL, &oc, &err), KVLM_OK);
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 16;
    p.n_threads = 1;
    p.cache = oc;
    session_refused(&p, KVLM_ERR_INVALID_ARG, "the cache belongs to another model");
    p.cache = NULL;
    p.cache_params.page_tokens = 8;
    session_refused(&p, KVLM_ERR_INVALID_ARG, "page_tokens 8");
    p.cache_params = kvlm_cache_default_params();
    kvlm_session *s = session_with(g_model, &p), *t = session_with(g_model, &p);
    const int32_t nv = kvlm_n_vocab(g_model);
    kvlm_token tok[17];
    seq(tok, 17, nv, 5);
    assert_int_equal(kvlm_eval(s, tok, 8, 0, NULL, false, &err), KVLM_OK);
    kvlm_token bad[9];
    memcpy(bad, tok, sizeof bad);
    bad[8] = nv;
    expect(kvlm_eval(s, bad, 9, 8, NULL, false, &err), KVLM_ERR_INVALID_ARG, &err, "outside the vocabulary");
    expect(kvlm_eval(s, tok, 17, 8, NULL, false, &err), KVLM_ERR_CONTEXT_FULL, &err, "exceed the context of 16");
    expect(kvlm_eval(s, tok, 8, 8, NULL, false, &err), KVLM_ERR_INVALID_ARG, &err, "leaves no token");
    expect(kvlm_session_truncate(s, 9, &err), KVLM_ERR_INVALID_ARG, &err, "9");
    expect(kvlm_session_truncate(s, -1, &err), KVLM_ERR_INVALID_ARG, &err, "-1");
    assert_int_equal(kvlm_session_n_past(s), 8);
    kvlm_session *pair[2] = {s, NULL};
    kvlm_token two[2] = {tok[8], tok[8]};
    float *lg = malloc(2 * (size_t)nv * sizeof(float));
    expect(kvlm_decode_batch(pair, two, 2, lg, &err), KVLM_ERR_INVALID_ARG, &err, "session 1 is NULL");
    pair[1] = t;
    two[1] = nv;
    expect(kvlm_decode_batch(pair, two, 2, lg, &err), KVLM_ERR_INVALID_ARG, &err, "outside the vocabulary");
    assert_int_equal(kvlm_eval(t, tok, 16, 0, NULL, false, &err), KVLM_OK);
    two[1] = tok[8];
    expect(kvlm_decode_batch(pair, two, 2, lg, &err), KVLM_ERR_CONTEXT_FULL, &err, "session 1's context of 16 is full");
    assert_int_equal(kvlm_session_n_past(s), 8);
    assert_int_equal(kvlm_session_n_past(t), 16);
    /* after the refusals the session continues as if they had not happened */
    float *want = malloc((size_t)nv * sizeof(float)), *got = malloc((size_t)nv * sizeof(float));
    assert_int_equal(kvlm_eval_full(g_model, tok, 12, want, false, &err), KVLM_OK);
    assert_int_equal(kvlm_eval(s, tok, 12, 8, got, false, &err), KVLM_OK);
    assert_memory_equal(got, want, (size_t)nv * sizeof(float));
    free(want);
    free(got);
    free(lg);
    kvlm_session_free(s);
    kvlm_session_free(t);
    kvlm_cache_free(oc);
    kvlm_model_free(other);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cache_params),
        cmocka_unit_test(test_session_params),
        cmocka_unit_test(test_eval_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
