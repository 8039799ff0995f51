/* Overflow policies through the public API: prompts longer than the context,
 * whole-context requests on shifted and ring sessions (reuse of what the cache
 * still holds, checked against the whole history), rollback and reset after a
 * shift, and the size of a session's own page pool for each policy. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kvlm.h"
#include "test_util.h"

#define AIDREAMS KVLM_MODELS_DIR "/llama/aidreams260K-f32.gguf"

static kvlm_model *g_model;

static int setup(void **state) {
    (void)state;
    kvlm_error err;
    if (kvlm_model_load(AIDREAMS, NULL, &g_model, &err) != KVLM_OK) {
        fprintf(stderr, "%s: %s\n", AIDREAMS, err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    kvlm_model_free(g_model);
    return 0;
}

static kvlm_session *policy_session(kvlm_overflow pol, int32_t n_ctx, int32_t n_keep) {
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = n_ctx;
    p.overflow = pol;
    p.n_keep = n_keep;
    kvlm_session *s = NULL;
    kvlm_error err;
    if (kvlm_session_new(g_model, &p, &s, &err) != KVLM_OK) fail_msg("session: %s", err.msg);
    return s;
}

static const char *pol_name(kvlm_overflow p) {
    static const char *names[] = {"error", "shift", "sliding", "ring"};
    return names[p];
}

/* A prompt several contexts long in one call: shift and sliding keep going and give the logits of
 * feeding it one token at a time (the passes are cut so the shifts fall where they would then); a
 * ring gives them too (test_session checks that part); error refuses and leaves the session as it was. */
static void test_long_prompt_eval(void **state) {
    (void)state;
    const int V = kvlm_n_vocab(g_model);
    enum { N = 400 };
    kvlm_token t[N];
    seq(t, N, V, 21);
    float *a = malloc((size_t)V * 4), *b = malloc((size_t)V * 4);
    kvlm_error err;
    const struct {
        kvlm_overflow pol;
        int32_t n_ctx, n_keep;
    } cases[] = {{KVLM_OVERFLOW_SHIFT, 32, 0}, {KVLM_OVERFLOW_SHIFT, 64, 5}, {KVLM_OVERFLOW_SHIFT, 100, 1},
                 {KVLM_OVERFLOW_SLIDING, 96, 0}, {KVLM_OVERFLOW_RING, 64, 0}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        kvlm_session *one = policy_session(cases[c].pol, cases[c].n_ctx, cases[c].n_keep);
        kvlm_session *tok = policy_session(cases[c].pol, cases[c].n_ctx, cases[c].n_keep);
        if (kvlm_eval(one, t, N, 0, a, false, &err) != KVLM_OK)
            fail_msg("%s n_ctx %d: %s", pol_name(cases[c].pol), cases[c].n_ctx, err.msg);
        assert_int_equal(kvlm_session_n_past(one), N);
        for (int i = 0; i < N; i++) assert_int_equal(kvlm_eval(tok, t, i + 1, i, b, false, &err), KVLM_OK);
        for (int v = 0; v < V; v++) assert_true(isfinite(a[v]));
        if (memcmp(a, b, (size_t)V * 4) != 0)
            fail_msg("%s n_ctx %d: one call and token by token differ", pol_name(cases[c].pol), cases[c].n_ctx);
        kvlm_kv_stats st;
        kvlm_session_get_stats(one, &st);
        if (cases[c].pol != KVLM_OVERFLOW_RING) {
            assert_true(st.tokens <= cases[c].n_ctx);
            assert_true(st.shifts > 0);
        }
        kvlm_session_free(one);
        kvlm_session_free(tok);
    }
    /* error: a prompt longer than the context is a clear error and nothing changes */
    kvlm_session *s = policy_session(KVLM_OVERFLOW_ERROR, 64, 0);
    assert_int_equal(kvlm_eval(s, t, 100, 0, a, false, &err), KVLM_ERR_CONTEXT_FULL);
    assert_non_null(strstr(err.msg, "context of 64"));
    assert_int_equal(kvlm_session_n_past(s), 0);
    assert_int_equal(kvlm_eval(s, t, 64, 0, a, false, &err), KVLM_OK);
    kvlm_session_free(s);
    free(a);
    free(b);
}

/* A text prompt (1402 tokens) much longer than the context through kvlm_generate, each policy. */
static void test_long_prompt_generate(void **state) {
    (void)state;
    const char *sentence = "Once upon a time there was a little girl named Lily. ";
    char *text = malloc(strlen(sentence) * 40 + 1);
    text[0] = '\0';
    for (int i = 0; i < 40; i++) strcat(text, sentence);
    kvlm_token probe[4096];
    const int32_t n_tok = kvlm_tokenize(g_model, text, strlen(text), probe, 4096, true, true);
    assert_true(n_tok > 1000);
    const kvlm_overflow pols[] = {KVLM_OVERFLOW_SHIFT, KVLM_OVERFLOW_SLIDING, KVLM_OVERFLOW_RING, KVLM_OVERFLOW_ERROR};
    const int32_t ctxs[] = {32, 64, 100};
    for (size_t p = 0; p < 4; p++)
        for (size_t c = 0; c < 3; c++) {
            if (pols[p] == KVLM_OVERFLOW_SLIDING && ctxs[c] <= 36) continue; /* n_sink + a page must fit */
            kvlm_session *s = policy_session(pols[p], ctxs[c], 0);
            kvlm_generate_params gp = kvlm_generate_default_params();
            gp.sampling.temperature = 0;
            gp.max_tokens = 20;
            gp.ignore_eos = true;
            kvlm_generate_result r;
            kvlm_error err;
            kvlm_status st = kvlm_generate(s, text, &gp, NULL, NULL, &r, &err);
            if (pols[p] == KVLM_OVERFLOW_ERROR) {
                assert_int_equal(st, KVLM_ERR_CONTEXT_FULL);
                assert_non_null(strstr(err.msg, "more than the context"));
                assert_int_equal(kvlm_session_n_past(s), 0);
            } else {
                if (st != KVLM_OK) fail_msg("%s -c %d: %s", pol_name(pols[p]), ctxs[c], err.msg);
                assert_int_equal(r.n_prompt, n_tok);
                assert_int_equal(r.n_completion, 20);
                assert_int_equal(kvlm_session_n_past(s), n_tok + 19);
                kvlm_generate_result_free(&r);
            }
            kvlm_session_free(s);
        }
    free(text);
}

/* Whole-context requests on a shifted session: a context that extends the history reuses the held tail
 * (bit-identical to appending), one that differs in the dropped part goes back to the kept head, and
 * rollback, explicit n_past and reset behave. */
static void test_whole_context_after_shift(void **state) {
    (void)state;
    const int V = kvlm_n_vocab(g_model);
    enum { N = 400 };
    kvlm_token t[N + 20];
    seq(t, N + 20, V, 33);
    float *a = malloc((size_t)V * 4), *b = malloc((size_t)V * 4);
    kvlm_error err;
    const kvlm_overflow pols[] = {KVLM_OVERFLOW_SHIFT, KVLM_OVERFLOW_SLIDING};
    for (int k = 0; k < 2; k++) {
        kvlm_session *s = policy_session(pols[k], 96, 8), *ref = policy_session(pols[k], 96, 8);
        assert_int_equal(kvlm_eval(s, t, N, 0, NULL, false, &err), KVLM_OK);
        assert_int_equal(kvlm_eval(ref, t, N, 0, NULL, false, &err), KVLM_OK);
        kvlm_kv_stats st0, st1;
        kvlm_session_get_stats(s, &st0);
        /* the whole context again, 10 more tokens: only those are computed */
        assert_int_equal(kvlm_eval(s, t, N + 10, KVLM_AUTO, a, false, &err), KVLM_OK);
        assert_int_equal(kvlm_eval(ref, t, N + 10, N, b, false, &err), KVLM_OK);
        assert_memory_equal(a, b, (size_t)V * 4);
        kvlm_session_get_stats(s, &st1);
        assert_int_equal(st1.misses - st0.misses, 10);
        assert_int_equal(st1.hits - st0.hits, N);
        /* a context ending differently inside the held tail: back to the divergence only */
        kvlm_token u[N + 10];
        memcpy(u, t, sizeof u);
        u[N + 5] = (kvlm_token)(3 + (u[N + 5] + 1) % (V - 3));
        kvlm_session_get_stats(s, &st0);
        assert_int_equal(kvlm_eval(s, u, N + 10, KVLM_AUTO, NULL, false, &err), KVLM_OK);
        kvlm_session_get_stats(s, &st1);
        assert_int_equal(st1.misses - st0.misses, 5);
        /* a context differing in the dropped part: only the kept head is reused */
        u[N + 5] = t[N + 5];
        u[50] = (kvlm_token)(3 + (u[50] + 1) % (V - 3));
        kvlm_session_get_stats(s, &st0);
        assert_int_equal(kvlm_eval(s, u, N + 10, KVLM_AUTO, NULL, false, &err), KVLM_OK);
        kvlm_session_get_stats(s, &st1);
        const int head = pols[k] == KVLM_OVERFLOW_SHIFT ? 8 : 4; /* n_keep, or the default 4 sinks */
        assert_int_equal(st1.misses - st0.misses, N + 10 - head);
        assert_int_equal(kvlm_session_n_past(s), N + 10);
        /* explicit n_past: the held tail is reachable, the dropped part is not */
        assert_int_equal(kvlm_eval(s, u, N + 5, N + 2, NULL, false, &err), KVLM_OK);
        assert_int_equal(kvlm_session_n_past(s), N + 5);
        assert_int_equal(kvlm_eval(s, u, N + 6, 100, NULL, false, &err), KVLM_ERR_UNSUPPORTED);
        assert_int_equal(kvlm_session_n_past(s), N + 5);
        /* truncate: into the held tail and the kept head; 0 resets */
        assert_int_equal(kvlm_session_truncate(s, N + 1, &err), KVLM_OK);
        assert_int_equal(kvlm_session_n_past(s), N + 1);
        assert_int_equal(kvlm_session_truncate(s, 200, &err), KVLM_ERR_UNSUPPORTED);
        assert_int_equal(kvlm_session_truncate(s, 3, &err), KVLM_OK);
        assert_int_equal(kvlm_session_n_past(s), 3);
        /* back at the head the session is an ordinary one again: it equals a fresh computation */
        assert_int_equal(kvlm_eval(s, t, 40, 3, a, false, &err), KVLM_OK);
        float *full = malloc((size_t)40 * V * 4);
        assert_int_equal(kvlm_eval_full(g_model, t, 40, full, true, &err), KVLM_OK);
        assert_memory_equal(a, full + (size_t)39 * V, (size_t)V * 4);
        assert_int_equal(kvlm_session_truncate(s, 0, &err), KVLM_OK);
        assert_int_equal(kvlm_session_n_past(s), 0);
        assert_int_equal(kvlm_eval(s, t, 40, 0, a, false, &err), KVLM_OK);
        assert_memory_equal(a, full + (size_t)39 * V, (size_t)V * 4);
        free(full);
        kvlm_session_free(s);
        kvlm_session_free(ref);
    }
    free(a);
    free(b);
}

/* Rings through whole-context requests: a fresh ring works, an extended context reuses the ring and
 * equals appending, a reset starts over. */
static void test_ring_whole_context(void **state) {
    (void)state;
    const int V = kvlm_n_vocab(g_model);
    enum { N = 300 };
    kvlm_token t[N + 10];
    seq(t, N + 10, V, 44);
    float *a = malloc((size_t)V * 4), *b = malloc((size_t)V * 4);
    kvlm_error err;
    kvlm_session *s = policy_session(KVLM_OVERFLOW_RING, 48, 0), *ref = policy_session(KVLM_OVERFLOW_RING, 48, 0);
    assert_int_equal(kvlm_eval(s, t, N, KVLM_AUTO, NULL, false, &err), KVLM_OK);
    assert_int_equal(kvlm_eval(ref, t, N, 0, NULL, false, &err), KVLM_OK);
    kvlm_kv_stats st0, st1;
    kvlm_session_get_stats(s, &st0);
    assert_int_equal(kvlm_eval(s, t, N + 10, KVLM_AUTO, a, false, &err), KVLM_OK);
    assert_int_equal(kvlm_eval(ref, t, N + 10, N, b, false, &err), KVLM_OK);
    assert_memory_equal(a, b, (size_t)V * 4);
    kvlm_session_get_stats(s, &st1);
    assert_int_equal(st1.misses - st0.misses, 10);
    /* a step back within the ring's slack: same logits as computing that way */
    assert_int_equal(kvlm_session_truncate(s, N + 5, &err), KVLM_OK);
    assert_int_equal(kvlm_eval(s, t, N + 10, N + 5, a, false, &err), KVLM_OK);
    assert_memory_equal(a, b, (size_t)V * 4);
    /* too far back: the window before that point is gone */
    assert_int_equal(kvlm_session_truncate(s, 100, &err), KVLM_ERR_UNSUPPORTED);
    /* reset: a ring that starts over equals a fresh one */
    assert_int_equal(kvlm_session_truncate(s, 0, &err), KVLM_OK);
    assert_int_equal(kvlm_eval(s, t, 40, 0, a, false, &err), KVLM_OK);
    float *full = malloc((size_t)40 * V * 4);
    assert_int_equal(kvlm_eval_full(g_model, t, 40, full, true, &err), KVLM_OK);
    assert_memory_equal(a, full + (size_t)39 * V, (size_t)V * 4);
    free(full);
    /* kvlm_generate on a fresh ring (it used to refuse every call) */
    kvlm_session *g = policy_session(KVLM_OVERFLOW_RING, 32, 0);
    kvlm_generate_params gp = kvlm_generate_default_params();
    gp.sampling.temperature = 0;
    gp.max_tokens = 40;
    gp.ignore_eos = true;
    kvlm_generate_result r;
    if (kvlm_generate(g, "Once upon", &gp, NULL, NULL, &r, &err) != KVLM_OK) fail_msg("%s", err.msg);
    assert_int_equal(r.n_completion, 40);
    kvlm_generate_result_free(&r);
    /* and a second whole-context call continuing the first */
    if (kvlm_generate(g, "Once upon a time", &gp, NULL, NULL, &r, &err) != KVLM_OK) fail_msg("%s", err.msg);
    assert_int_equal(r.n_completion, 40);
    kvlm_generate_result_free(&r);
    kvlm_session_free(g);
    kvlm_session_free(s);
    kvlm_session_free(ref);
    free(a);
    free(b);
}

/* A session's own pool holds what its context and policy need: capacity never passes the context
 * (non-ring) or the ring, however long the stream, and growth does not overshoot it. */
static void test_pool_capacity(void **state) {
    (void)state;
    const int V = kvlm_n_vocab(g_model);
    enum { N = 1500 };
    kvlm_token *t = malloc(N * sizeof *t);
    seq(t, N, V, 55);
    kvlm_error err;
    const kvlm_overflow pols[] = {KVLM_OVERFLOW_ERROR, KVLM_OVERFLOW_SHIFT, KVLM_OVERFLOW_SLIDING,
                                  KVLM_OVERFLOW_RING};
    const int32_t ctxs[] = {256, 100};
    for (size_t c = 0; c < 2; c++)
        for (size_t p = 0; p < 4; p++) {
            const int32_t n_ctx = ctxs[c];
            kvlm_session *s = policy_session(pols[p], n_ctx, 4);
            const int64_t ctx_pages = (n_ctx + 31) / 32;
            /* ring: the window (n_ctx) plus one pass of slack (32), in pages */
            const int64_t want = pols[p] == KVLM_OVERFLOW_RING ? (n_ctx + 32 + 31) / 32 * 32 : ctx_pages * 32;
            const int n = pols[p] == KVLM_OVERFLOW_ERROR ? n_ctx : N;
            const int first = n < 400 ? n / 2 : n - 200;
            /* a long prompt, then token by token */
            if (kvlm_eval(s, t, first, 0, NULL, false, &err) != KVLM_OK) fail_msg("%s", err.msg);
            int64_t most = 0;
            kvlm_kv_stats st;
            for (int i = first; i < n; i++) {
                assert_int_equal(kvlm_eval(s, t, i + 1, i, NULL, false, &err), KVLM_OK);
                kvlm_session_get_stats(s, &st);
                if (st.capacity > most) most = st.capacity;
                assert_true(st.bytes <= st.capacity * 1024); /* allocated within it (1024 bytes per F16 token) */
            }
            if (most > want)
                fail_msg("%s -c %d: capacity %lld > %lld", pol_name(pols[p]), n_ctx, (long long)most, (long long)want);
            kvlm_session_get_stats(s, &st);
            assert_true(st.capacity >= (pols[p] == KVLM_OVERFLOW_RING ? want : st.tokens));
            printf("# %-7s -c %d: %d tokens, capacity %lld (%lld bytes), %lld growth events\n", pol_name(pols[p]),
                   n_ctx, n, (long long)st.capacity, (long long)st.bytes, (long long)st.growth_events);
            kvlm_session_free(s);
        }
    free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_long_prompt_eval),        cmocka_unit_test(test_long_prompt_generate),
        cmocka_unit_test(test_whole_context_after_shift), cmocka_unit_test(test_ring_whole_context),
        cmocka_unit_test(test_pool_capacity),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
