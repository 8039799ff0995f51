/* Allocation failures in the KV cache and the session layer (issue 22).
 *
 * This test is linked with -Wl,--wrap=malloc,--wrap=calloc,... (tests/CMakeLists.txt), so every
 * allocation the library makes goes through the wrappers below; nothing in the library changes
 * for it. A scenario (create a session, evaluate in chunks, truncate, save, load, share pages
 * with a second session, overflow policies, compression) runs once per k = 1, 2, ... with the
 * k-th allocation failing and every other one succeeding, until a run makes fewer than k
 * allocations. Whatever step the failure hits must report KVLM_ERR_NOMEM with a message (or
 * succeed, where the library has a fallback), leave nothing broken (the session holds a prefix of
 * what it was given) and, once allocations work again, continue to logits bit-identical to
 * kvlm_eval_full's. ASan (make sanitize) checks that nothing leaks or is freed twice on the way.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test_util.h"
#include "api/session_impl.h"

#define AIDREAMS KVLM_MODELS_DIR "/llama/aidreams260K-f32.gguf"

/* ------------------------------------------------------------ the failure injection */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void *__real_aligned_alloc(size_t align, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
void *__wrap_aligned_alloc(size_t align, size_t n);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);

/* armed: allocations are counted and the one numbered fail_at (from 1) returns NULL */
static _Thread_local bool g_armed;
static long g_count, g_fail_at, g_failed;

static bool inject(void) {
    if (!g_armed) return false;
    if (++g_count != g_fail_at) return false;
    g_failed++;
    return true;
}
void *__wrap_malloc(size_t n) { return inject() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t size) { return inject() ? NULL : __real_calloc(n, size); }
void *__wrap_realloc(void *p, size_t n) { return inject() ? NULL : __real_realloc(p, n); }
void *__wrap_aligned_alloc(size_t align, size_t n) { return inject() ? NULL : __real_aligned_alloc(align, n); }
char *__wrap_strdup(const char *s) { return inject() ? NULL : __real_strdup(s); }
char *__wrap_strndup(const char *s, size_t n) { return inject() ? NULL : __real_strndup(s, n); }

static void arm(long k) {
    g_count = 0;
    g_fail_at = k;
    g_failed = 0;
    g_armed = true;
}
static void disarm(void) { g_armed = false; }

/* ------------------------------------------------------------ checks */

static kvlm_model *g_model;
static int32_t g_vocab;
#define NT 100
static kvlm_token g_tok[NT];
static float *g_ref; /* kvlm_eval_full's logits of g_tok, all rows */

static int setup(void **state) {
    (void)state;
    g_model = load(AIDREAMS);
    g_vocab = kvlm_n_vocab(g_model);
    seq(g_tok, NT, g_vocab, 22);
    g_ref = malloc((size_t)NT * (size_t)g_vocab * sizeof(float));
    kvlm_error err;
    if (kvlm_eval_full(g_model, g_tok, NT, g_ref, true, &err) != KVLM_OK) fail_msg("eval_full: %s", err.msg);
    return 0;
}
static int teardown(void **state) {
    (void)state;
    free(g_ref);
    kvlm_model_free(g_model);
    return 0;
}

/* A call made while armed either worked or failed for want of memory, saying so. */
static bool ok_or_nomem(kvlm_status st, const kvlm_error *err, const char *what) {
    if (st == KVLM_OK) return true;
    if (st != KVLM_ERR_NOMEM) fail_msg("%s: status %s (%s), expected NOMEM", what, kvlm_status_name(st), err->msg);
    if (!err->msg[0]) fail_msg("%s: NOMEM without a message", what);
    return false;
}

/* The session holds a prefix of g_tok (or nothing); with allocations working it evaluates
 * g_tok[0..n) (n <= its context for the error policy) and the last row matches the reference bits,
 * which for the policies that drop tokens is compared against a fresh session fed the same way. */
static void check_continues(kvlm_session *s, int32_t n, const float *want) {
    kvlm_token held[NT];
    const int32_t h = kvlm_session_tokens(s, held, NT);
    assert_true(h >= 0 && h <= NT);
    assert_int_equal(h, kvlm_session_n_past(s));
    float *got = malloc((size_t)g_vocab * sizeof(float));
    kvlm_error err;
    if (kvlm_eval(s, g_tok, n, KVLM_AUTO, got, false, &err) != KVLM_OK) fail_msg("continue: %s", err.msg);
    assert_memory_equal(got, want, (size_t)g_vocab * sizeof(float));
    free(got);
}

static const float *ref_row(int32_t i) { return g_ref + (size_t)i * (size_t)g_vocab; }

/* ------------------------------------------------------------ scenarios */

/* Runs fn(k) for k = 1, 2, ... until a run injects nothing; returns how many runs failed an
 * allocation (the scenario's allocation count). */
static long every_allocation(void (*fn)(long k)) {
    long k = 1;
    for (;; k++) {
        fn(k);
        disarm();
        if (g_failed == 0) break;
    }
    return k - 1;
}

/* One session of its own: create, evaluate 30 tokens at once, 1, then 9 in a pass, truncate to
 * 20 (a page boundary is crossed back), evaluate on to 50, save, load into a new session. */
static const char *g_file;
static void plain(long k) {
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 64;
    p.n_threads = 1;
    p.cache_params.page_tokens = 16;
    p.cache_params.initial_tokens = 16; /* growth during the evals */
    kvlm_session *s = NULL, *t = NULL;
    kvlm_error err;
    remove(g_file);
    arm(k);
    kvlm_status st = kvlm_session_new(g_model, &p, &s, &err);
    if (!ok_or_nomem(st, &err, "session_new")) {
        disarm();
        assert_null(s);
        return;
    }
    static const int32_t steps[] = {30, 31, 40};
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        st = kvlm_eval(s, g_tok, steps[i], KVLM_AUTO, NULL, false, &err);
        if (!ok_or_nomem(st, &err, "eval")) goto recover;
    }
    st = kvlm_session_truncate(s, 20, &err);
    if (!ok_or_nomem(st, &err, "truncate")) goto recover;
    st = kvlm_eval(s, g_tok, 50, 20, NULL, false, &err);
    if (!ok_or_nomem(st, &err, "eval after truncate")) goto recover;
    st = kvlm_session_save(s, g_file, &err);
    if (!ok_or_nomem(st, &err, "save")) {
        disarm();
        assert_false(file_exists(g_file)); /* nothing half-written at the path */
        goto recover;
    }
    st = kvlm_session_new(g_model, &p, &t, &err);
    if (!ok_or_nomem(st, &err, "second session_new")) goto recover;
    st = kvlm_session_load(t, g_file, &err);
    disarm();
    if (st != KVLM_OK) {
        assert_false(ok_or_nomem(st, &err, "load"));
        assert_int_equal(kvlm_session_n_past(t), 0); /* untouched: still empty */
    } else {
        assert_int_equal(kvlm_session_n_past(t), 50);
    }
    check_continues(t, 60, ref_row(59));
recover:
    disarm();
    check_continues(s, 64, ref_row(63));
    kvlm_session_free(t);
    kvlm_session_free(s);
}

/* Two sessions on one shared cache: the second reuses the first's full pages (prefix index),
 * the first then diverges (copy-on-write of a shared page), both go on. */
static void shared(long k) {
    kvlm_cache_params cp = kvlm_cache_default_params();
    cp.page_tokens = 16;
    cp.initial_tokens = 32;
    kvlm_cache *c = NULL;
    kvlm_session *a = NULL, *b = NULL;
    kvlm_error err;
    arm(k);
    kvlm_status st = kvlm_cache_new(g_model, &cp, &c, &err);
    if (!ok_or_nomem(st, &err, "cache_new")) {
        disarm();
        assert_null(c);
        return;
    }
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 96;
    p.n_threads = 1;
    p.cache = c;
    st = kvlm_session_new(g_model, &p, &a, &err);
    if (!ok_or_nomem(st, &err, "session a")) goto out;
    st = kvlm_session_new(g_model, &p, &b, &err);
    if (!ok_or_nomem(st, &err, "session b")) goto out;
    st = kvlm_eval(a, g_tok, 70, 0, NULL, false, &err);
    if (!ok_or_nomem(st, &err, "eval a")) goto out;
    st = kvlm_eval(b, g_tok, 80, KVLM_AUTO, NULL, false, &err);
    if (!ok_or_nomem(st, &err, "eval b")) goto out;
    st = kvlm_session_truncate(a, 40, &err);
    if (!ok_or_nomem(st, &err, "truncate a")) goto out;
    st = kvlm_eval(a, g_tok, 90, 40, NULL, false, &err);
    if (!ok_or_nomem(st, &err, "eval a again")) goto out;
out:
    disarm();
    if (a) check_continues(a, 96, ref_row(95));
    if (b) check_continues(b, 90, ref_row(89));
    kvlm_session_free(a);
    kvlm_session_free(b);
    kvlm_cache_free(c);
}

/* The policies that drop tokens and tiered compression, past the context: the continuation is
 * compared with a session that ran the same steps without a failure. */
static kvlm_overflow g_policy;
static bool g_compress; /* tiered compression on */
static float *g_policy_ref;
static void policy_steps(long k, float *out) {
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 48;
    p.n_threads = 1;
    p.overflow = g_policy;
    p.n_keep = 4;
    p.n_sink = 4;
    p.window = 32;
    p.compress_after = g_compress ? 16 : 0;
    p.cache_params.page_tokens = 16;
    p.cache_params.initial_tokens = 16;
    const int32_t end = g_policy == KVLM_OVERFLOW_ERROR ? 48 : NT;
    kvlm_session *s = NULL;
    kvlm_error err;
    if (k) arm(k);
    kvlm_status st = kvlm_session_new(g_model, &p, &s, &err);
    if (!ok_or_nomem(st, &err, "session_new")) {
        disarm();
        assert_null(s);
        return;
    }
    static const int32_t steps[] = {20, 21, 45, 70, 71, NT};
    for (size_t i = 0; i < sizeof steps / sizeof *steps && steps[i] <= end; i++) {
        st = kvlm_eval(s, g_tok, steps[i], KVLM_AUTO, NULL, false, &err);
        if (!ok_or_nomem(st, &err, "eval")) break;
    }
    disarm();
    /* a dropping policy keeps going from whatever it holds; the reference did the same steps */
    kvlm_token held[NT];
    const int32_t h = kvlm_session_tokens(s, held, NT);
    assert_true(h >= 0 && h <= NT); /* the history (a dropping policy holds less of it) */
    if (k == 0) {
        if (kvlm_eval(s, g_tok, end, KVLM_AUTO, out, false, &err) != KVLM_OK) fail_msg("ref: %s", err.msg);
    } else if (st == KVLM_OK && !g_compress) {
        /* nothing failed (a fallback took it): the same state as the reference */
        float *got = malloc((size_t)g_vocab * sizeof(float));
        if (kvlm_eval(s, g_tok, end, KVLM_AUTO, got, false, &err) != KVLM_OK) fail_msg("continue: %s", err.msg);
        assert_memory_equal(got, out, (size_t)g_vocab * sizeof(float));
        free(got);
    } else if (g_policy == KVLM_OVERFLOW_ERROR && !g_compress) {
        check_continues(s, end, ref_row(end - 1));
    } else {
        /* after a failed pass (or a compression put off to the next eval, which changes what later
           tokens attend to) the session still takes more tokens */
        float *got = malloc((size_t)g_vocab * sizeof(float));
        if (kvlm_eval(s, g_tok, end, KVLM_AUTO, got, false, &err) != KVLM_OK) fail_msg("continue: %s", err.msg);
        for (int32_t i = 0; i < g_vocab; i++) assert_true(got[i] == got[i]); /* no NaN */
        free(got);
    }
    kvlm_session_free(s);
}
static void policy(long k) { policy_steps(k, g_policy_ref); }

/* The n_past contract with all logits over a history that differs from tokens[0, n_past): the rows
 * from the common prefix are computed into a temporary, the caller gets those from n_past on. */
static kvlm_token g_alt[12];
static float *g_alt_ref; /* kvlm_eval_full's rows of g_alt */
static void recompute(long k) {
    kvlm_session *s = session(g_model, 32);
    kvlm_error err;
    if (kvlm_eval(s, g_tok, 8, 0, NULL, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
    float *rows = malloc(4 * (size_t)g_vocab * sizeof *rows);
    arm(k);
    const kvlm_status st = kvlm_eval(s, g_alt, 12, 8, rows, true, &err);
    disarm();
    if (ok_or_nomem(st, &err, "eval with all logits"))
        assert_memory_equal(rows, g_alt_ref + 8 * (size_t)g_vocab, 4 * (size_t)g_vocab * sizeof *rows);
    else
        assert_true(kvlm_session_n_past(s) <= 12);
    free(rows);
    check_continues(s, 30, ref_row(29));
    kvlm_session_free(s);
}

/* A text stream's stop strings are copied: each copy's allocation failing gives NOMEM and no stream. */
static void text_stream(long k) {
    static const char *const stops[3] = {"</s>", "\n\n", "User:"};
    kvlm_text_stream *ts = (kvlm_text_stream *)&ts;
    kvlm_error err;
    arm(k);
    const kvlm_status st = kvlm_text_stream_new(g_model, stops, 3, &ts, &err);
    disarm();
    if (!ok_or_nomem(st, &err, "text_stream_new")) {
        assert_null(ts);
        return;
    }
    const char *text;
    size_t len;
    bool stopped;
    if (kvlm_text_stream_push(ts, g_tok[1], true, &text, &len, &stopped, &err) != KVLM_OK) fail_msg("push: %s", err.msg);
    char piece[256];
    const int32_t pl = kvlm_token_to_piece(g_model, g_tok[1], piece, (int32_t)sizeof piece, false);
    assert_true(pl >= 0 && (size_t)pl == len);
    assert_memory_equal(text, piece, len);
    kvlm_text_stream_free(ts);
}

/* A gemma3 session (its sliding-window layers in a ring of their own: the per-layer flags, the ring's
 * pages and tables) created with each allocation failing in turn: NOMEM and no session, or a session
 * that evaluates to kvlm_eval_full's logits. The model comes from `kvlm synth`. */
static char g_g3_dir[64], g_g3_path[128];
static kvlm_model *g_g3;
static float g_g3_ref[512];
static kvlm_token g_g3_tok[20];
static void gemma3_session(long k) {
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 256; /* a ring of 8 + a pass holds fewer pages than the context: the ring is used */
    p.n_threads = 1;
    kvlm_session *s = (kvlm_session *)&s;
    kvlm_error err;
    arm(k);
    const kvlm_status st = kvlm_session_new(g_g3, &p, &s, &err);
    disarm();
    if (!ok_or_nomem(st, &err, "gemma3 session_new")) {
        assert_null(s);
        return;
    }
    assert_int_equal(s->seq.swa_cap, 64); /* the ring: 8 + 32 slots in pages of 32 */
    float got[512];
    if (kvlm_eval(s, g_g3_tok, 20, 0, got, false, &err) != KVLM_OK) fail_msg("gemma3 eval: %s", err.msg);
    assert_memory_equal(got, g_g3_ref, sizeof got);
    kvlm_session_free(s);
}

/* Loading a file of more pages than a fresh session's slot arrays hold (150 tokens in pages of 16:
 * the arrays grow), with each allocation failing in turn: NOMEM, the session left empty, or loaded;
 * then it continues to kvlm_eval_full's logits. */
enum { NL_TOK = 151 };
static kvlm_token g_long[NL_TOK];
static float *g_long_ref; /* the last row of eval_full(g_long) */
static const char *g_long_file;
static void long_load(long k) {
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 192;
    p.n_threads = 1;
    p.cache_params.page_tokens = 16;
    kvlm_session *t = session_with(g_model, &p);
    kvlm_error err;
    arm(k);
    const kvlm_status st = kvlm_session_load(t, g_long_file, &err);
    disarm();
    assert_int_equal(kvlm_session_n_past(t), ok_or_nomem(st, &err, "load") ? NL_TOK - 1 : 0);
    float *got = malloc((size_t)g_vocab * sizeof *got);
    if (kvlm_eval(t, g_long, NL_TOK, KVLM_AUTO, got, false, &err) != KVLM_OK) fail_msg("continue: %s", err.msg);
    assert_memory_equal(got, g_long_ref, (size_t)g_vocab * sizeof *got);
    free(got);
    kvlm_session_free(t);
}

static void test_plain(void **state) {
    (void)state;
    char path[256];
    g_file = tmp_path(path, sizeof path, "allocfail", ".kvs");
    const long n = every_allocation(plain);
    remove(g_file);
    assert_true(n > 20); /* the wrappers saw the library's allocations */
}

static void test_shared(void **state) {
    (void)state;
    assert_true(every_allocation(shared) > 10);
}

static void test_policies(void **state) {
    (void)state;
    static const kvlm_overflow pols[] = {KVLM_OVERFLOW_ERROR, KVLM_OVERFLOW_SHIFT, KVLM_OVERFLOW_SLIDING,
                                         KVLM_OVERFLOW_RING, KVLM_OVERFLOW_ERROR};
    g_policy_ref = malloc((size_t)g_vocab * sizeof(float));
    for (size_t i = 0; i < sizeof pols / sizeof *pols; i++) {
        g_policy = pols[i];
        g_compress = i == 4;
        policy_steps(0, g_policy_ref);
        assert_true(every_allocation(policy) > 5);
    }
    free(g_policy_ref);
}

static void test_recompute(void **state) {
    (void)state;
    memcpy(g_alt, g_tok, sizeof g_alt);
    g_alt[3] = g_tok[3] == 5 ? 6 : 5;
    g_alt_ref = malloc(12 * (size_t)g_vocab * sizeof(float));
    kvlm_error err;
    if (kvlm_eval_full(g_model, g_alt, 12, g_alt_ref, true, &err) != KVLM_OK) fail_msg("eval_full: %s", err.msg);
    assert_true(every_allocation(recompute) > 1);
    free(g_alt_ref);
}

static void test_text_stream(void **state) {
    (void)state;
    assert_true(every_allocation(text_stream) >= 4); /* the stream and its three stop strings */
}

static void test_gemma3_session(void **state) {
    (void)state;
    strcpy(g_g3_dir, "/tmp/kvlm-allocfail-XXXXXX");
    assert_non_null(mkdtemp(g_g3_dir));
    snprintf(g_g3_path, sizeof g_g3_path, "%s/g3.gguf", g_g3_dir);
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "%s/kvlm synth %s --arch gemma3 --dim 128 --layers 6 --heads 2 --kv-heads 1 --head-dim 64 --ff 256 "
             "--vocab 512 --type f32 --sliding-window 8 >/dev/null",
             KVLM_BIN_DIR, g_g3_path);
    assert_int_equal(system(cmd), 0);
    g_g3 = load(g_g3_path);
    assert_int_equal(kvlm_n_vocab(g_g3), 512);
    seq(g_g3_tok, 20, 512, 5);
    kvlm_error err;
    if (kvlm_eval_full(g_g3, g_g3_tok, 20, g_g3_ref, false, &err) != KVLM_OK) fail_msg("eval_full: %s", err.msg);
    assert_true(every_allocation(gemma3_session) > 5);
    kvlm_model_free(g_g3);
    unlink(g_g3_path);
    rmdir(g_g3_dir);
}

static void test_long_load(void **state) {
    (void)state;
    char path[256];
    g_long_file = tmp_path(path, sizeof path, "allocfail-long", ".kvs");
    seq(g_long, NL_TOK, g_vocab, 77);
    g_long_ref = malloc((size_t)g_vocab * sizeof(float));
    kvlm_error err;
    if (kvlm_eval_full(g_model, g_long, NL_TOK, g_long_ref, false, &err) != KVLM_OK) fail_msg("eval_full: %s", err.msg);
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 192;
    p.n_threads = 1;
    p.cache_params.page_tokens = 16;
    kvlm_session *s = session_with(g_model, &p);
    if (kvlm_eval(s, g_long, NL_TOK - 1, 0, NULL, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
    if (kvlm_session_save(s, g_long_file, &err) != KVLM_OK) fail_msg("save: %s", err.msg);
    kvlm_session_free(s);
    assert_true(every_allocation(long_load) > 3);
    remove(g_long_file);
    free(g_long_ref);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_shared),
        cmocka_unit_test(test_policies),
        cmocka_unit_test(test_recompute),
        cmocka_unit_test(test_text_stream),
        cmocka_unit_test(test_gemma3_session),
        cmocka_unit_test(test_long_load),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
