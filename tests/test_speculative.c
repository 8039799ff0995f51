/* Speculative decoding (kvlm_generate with draft_max > 0): the output is exactly plain decoding's —
 * same tokens, text, finish reason and cache contents — for greedy and seeded sampling, with prompt
 * lookup and with a draft model, at the end of the context and across a shift; the draft sources
 * themselves; refusals. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kvlm.h"
#include "api/draft.h"
#include "test_util.h"

#define M_DIR KVLM_MODELS_DIR "/llama/"
#define AIDREAMS M_DIR "aidreams260K-f32.gguf"
#define AIDREAMS_F16 M_DIR "aidreams260K-f16.gguf"
#define SYNTH M_DIR "synth15M-q8_0.gguf"
#define SYNTH_Q4 M_DIR "synth15M-q4_0.gguf"

static const char *k_prompts[] = {
    "Once upon a time, there was a little",
    "one two three four one two three four one two three four one two",
    "The cat sat on the mat. The dog sat on the log. The cat sat on the",
};
#define N_PROMPTS (int)(sizeof k_prompts / sizeof k_prompts[0])

typedef struct run {
    kvlm_generate_result r;
    kvlm_token hist[4096];
    int32_t n_hist, n_past;
} run;

/* Generates on a fresh session of m (threads, n_ctx, overflow as given) and records the result and
   what the session holds afterwards. */
static void gen(kvlm_model *m, const char *prompt, const kvlm_generate_params *gp, int threads, int32_t n_ctx,
                kvlm_overflow ov, run *out) {
    kvlm_session_params sp = kvlm_session_default_params();
    sp.n_ctx = n_ctx;
    sp.n_threads = threads;
    sp.overflow = ov;
    kvlm_session *s = session_with(m, &sp);
    kvlm_error err;
    if (kvlm_generate(s, prompt, gp, NULL, NULL, &out->r, &err) != KVLM_OK) fail_msg("generate: %s", err.msg);
    out->n_past = kvlm_session_n_past(s);
    out->n_hist = kvlm_session_tokens(s, out->hist, 4096);
    kvlm_session_free(s);
}

/* b (with drafts) is a: the same tokens, text, finish and cache; and b's statistics add up. */
static void assert_same(const run *a, const run *b, const kvlm_generate_params *gp) {
    assert_int_equal(a->r.n_completion, b->r.n_completion);
    assert_memory_equal(a->r.tokens, b->r.tokens, (size_t)a->r.n_completion * sizeof(kvlm_token));
    assert_int_equal(a->r.text_len, b->r.text_len);
    assert_memory_equal(a->r.text, b->r.text, a->r.text_len);
    assert_int_equal(a->r.finish, b->r.finish);
    assert_int_equal(a->r.n_prompt, b->r.n_prompt);
    assert_int_equal(a->n_past, b->n_past);
    assert_int_equal(a->n_hist, b->n_hist);
    assert_memory_equal(a->hist, b->hist, (size_t)a->n_hist * sizeof(kvlm_token));
    assert_int_equal(a->r.n_drafted, 0);
    assert_int_equal(a->r.n_accepted, 0);
    assert_true(b->r.n_accepted <= b->r.n_drafted);
    /* every generated token but the last came from a forward pass or was an accepted draft (these
       runs end by max_tokens or a full context; with ignore_eos no token ends them early) */
    if (gp->ignore_eos && b->r.n_completion > 0) {
        assert_int_equal(a->r.n_passes, a->r.n_completion - 1);
        assert_int_equal(b->r.n_passes + b->r.n_accepted, b->r.n_completion - 1);
    }
}

static void free_run(run *r) { kvlm_generate_result_free(&r->r); }

/* Plain vs drafted for each prompt, draft length and thread count; returns the drafts accepted. */
static int64_t compare_lookup(kvlm_model *m, const kvlm_generate_params *base, int32_t n_ctx, kvlm_overflow ov) {
    static const int k_max[] = {1, 4, 16};
    int64_t accepted = 0;
    for (int p = 0; p < N_PROMPTS; p++)
        for (int threads = 1; threads <= 2; threads++) {
            run plain, spec;
            gen(m, k_prompts[p], base, threads, n_ctx, ov, &plain);
            for (size_t k = 0; k < sizeof k_max / sizeof k_max[0]; k++) {
                kvlm_generate_params gp = *base;
                gp.draft_max = k_max[k];
                gp.draft_ngram = 1 + (int)k;
                gen(m, k_prompts[p], &gp, threads, n_ctx, ov, &spec);
                assert_same(&plain, &spec, &gp);
                accepted += spec.r.n_accepted;
                free_run(&spec);
            }
            free_run(&plain);
        }
    return accepted;
}

static void test_lookup_greedy(void **state) {
    (void)state;
    const char *models[] = {AIDREAMS, SYNTH, M_DIR "synth15M-gqa-q8_0.gguf", M_DIR "synth15M-q4_k_m.gguf",
                            M_DIR "llama-2-tiny-random.gguf"};
    int64_t accepted = 0;
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        kvlm_model *m = load(models[i]);
        kvlm_generate_params gp = kvlm_generate_default_params();
        gp.sampling.temperature = 0;
        gp.max_tokens = 48;
        gp.ignore_eos = true;
        accepted += compare_lookup(m, &gp, 256, KVLM_OVERFLOW_ERROR);
        kvlm_model_free(m);
    }
    assert_true(accepted > 0); /* the accept path ran */
}

static void test_lookup_sampled(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    int64_t accepted = 0;
    for (uint64_t seed = 1; seed <= 3; seed++) {
        kvlm_generate_params gp = kvlm_generate_default_params();
        gp.sampling.temperature = 0.7f;
        gp.sampling.seed = seed;
        gp.sampling.repeat_penalty = seed == 2 ? 1.1f : 1.0f; /* the penalty history too */
        gp.max_tokens = 64;
        gp.ignore_eos = true;
        accepted += compare_lookup(m, &gp, 256, KVLM_OVERFLOW_ERROR);
    }
    assert_true(accepted > 0);
    kvlm_model_free(m);
}

/* Stop strings and end-of-generation tokens end the text at the same place. */
static void test_lookup_stops(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    const char *stops[] = {" the ", "."};
    kvlm_generate_params gp = kvlm_generate_default_params();
    gp.sampling.temperature = 0;
    gp.max_tokens = 200;
    for (int i = 0; i < 3; i++) {
        gp.stop = i == 2 ? NULL : stops + i;
        gp.n_stop = i == 2 ? 0 : 1;
        compare_lookup(m, &gp, 256, KVLM_OVERFLOW_ERROR);
    }
    kvlm_model_free(m);
}

/* Drafting pauses at the end of the context (the run ends full, as plain decoding's), and a shift
   in the middle of the generation changes nothing either. */
static void test_context_edges(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    kvlm_generate_params gp = kvlm_generate_default_params();
    gp.sampling.temperature = 0;
    gp.ignore_eos = true;
    gp.max_tokens = -1; /* until the context is full */
    compare_lookup(m, &gp, 48, KVLM_OVERFLOW_ERROR);
    gp.max_tokens = 120; /* well past a 64-token context */
    compare_lookup(m, &gp, 64, KVLM_OVERFLOW_SHIFT);
    compare_lookup(m, &gp, 64, KVLM_OVERFLOW_SLIDING);
    kvlm_model_free(m);
}

/* A draft model: the f16 copy of the same tiny model drafts for the f32 one (they agree often),
   a differently quantized random model for its q8_0 sibling. */
static void test_draft_model(void **state) {
    (void)state;
    const char *pairs[][2] = {{AIDREAMS, AIDREAMS_F16}, {SYNTH, SYNTH_Q4}};
    for (int i = 0; i < 2; i++) {
        kvlm_model *m = load(pairs[i][0]), *md = load(pairs[i][1]);
        kvlm_session *ds = session(md, 256);
        int64_t accepted = 0;
        for (int p = 0; p < N_PROMPTS; p++)
            for (int sampled = 0; sampled <= 1; sampled++) {
                kvlm_generate_params gp = kvlm_generate_default_params();
                gp.sampling.temperature = sampled ? 0.8f : 0;
                gp.sampling.seed = 7;
                gp.max_tokens = 40;
                gp.ignore_eos = true;
                run plain, spec;
                gen(m, k_prompts[p], &gp, 1, 256, KVLM_OVERFLOW_ERROR, &plain);
                gp.draft_max = 6;
                gp.draft = ds; /* the same draft session goes on from whatever it held */
                gen(m, k_prompts[p], &gp, 1, 256, KVLM_OVERFLOW_ERROR, &spec);
                assert_same(&plain, &spec, &gp);
                accepted += spec.r.n_accepted;
                free_run(&plain);
                free_run(&spec);
            }
        if (i == 0) assert_true(accepted > 0);
        kvlm_session_free(ds);
        kvlm_model_free(md);
        kvlm_model_free(m);
    }
}

/* A session that generated with drafts goes on exactly as one that did not. */
static void test_continuation(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    kvlm_session *a = session(m, 256), *b = session(m, 256);
    kvlm_generate_params gp = kvlm_generate_default_params();
    gp.sampling.temperature = 0;
    gp.max_tokens = 30;
    gp.ignore_eos = true;
    kvlm_generate_params gs = gp;
    gs.draft_max = 8;
    kvlm_error err;
    kvlm_generate_result ra, rb;
    for (int turn = 0; turn < 3; turn++) {
        gp.append = gs.append = turn > 0;
        const char *prompt = turn ? " and then" : k_prompts[1];
        assert_int_equal(kvlm_generate(a, prompt, &gp, NULL, NULL, &ra, &err), KVLM_OK);
        assert_int_equal(kvlm_generate(b, prompt, &gs, NULL, NULL, &rb, &err), KVLM_OK);
        assert_int_equal(ra.n_completion, rb.n_completion);
        assert_memory_equal(ra.tokens, rb.tokens, (size_t)ra.n_completion * sizeof(kvlm_token));
        assert_int_equal(kvlm_session_n_past(a), kvlm_session_n_past(b));
        kvlm_generate_result_free(&ra);
        kvlm_generate_result_free(&rb);
    }
    /* the caches hold the same K/V: the next logits are bit-identical */
    const int32_t V = kvlm_n_vocab(m), n = kvlm_session_n_past(a);
    kvlm_token *t = malloc(((size_t)n + 1) * sizeof *t);
    float *la = malloc((size_t)V * sizeof *la), *lb = malloc((size_t)V * sizeof *lb);
    assert_int_equal(kvlm_session_tokens(a, t, n), n);
    t[n] = 42;
    assert_int_equal(kvlm_eval(a, t, n + 1, n, la, false, &err), KVLM_OK);
    assert_int_equal(kvlm_eval(b, t, n + 1, n, lb, false, &err), KVLM_OK);
    assert_memory_equal(la, lb, (size_t)V * sizeof *la);
    free(t);
    free(la);
    free(lb);
    kvlm_session_free(a);
    kvlm_session_free(b);
    kvlm_model_free(m);
}

static void test_lookup_source(void **state) {
    (void)state;
    kvlm_token out[8];
    /* the longest n-gram wins over a later shorter one: ... 5 6 7 [9] ... 6 7 [8] ... 5 6 7 */
    const kvlm_token a[] = {1, 5, 6, 7, 9, 10, 6, 7, 8, 2, 5, 6, 7};
    assert_int_equal(kv_draft_lookup(a, 13, 3, out, 4), 4);
    assert_int_equal(out[0], 9);
    assert_int_equal(out[1], 10);
    assert_int_equal(out[3], 7);
    /* with 2-grams only, the latest "6 7" is followed by 8 */
    assert_int_equal(kv_draft_lookup(a, 13, 2, out, 2), 2);
    assert_int_equal(out[0], 8);
    assert_int_equal(out[1], 2);
    /* the continuation stops at the end of the context */
    const kvlm_token b[] = {3, 4, 3, 4, 3};
    assert_int_equal(kv_draft_lookup(b, 5, 2, out, 8), 2);
    assert_int_equal(out[0], 4);
    assert_int_equal(out[1], 3);
    /* nothing repeats: no draft */
    const kvlm_token c[] = {1, 2, 3, 4};
    assert_int_equal(kv_draft_lookup(c, 4, 3, out, 8), 0);
    assert_int_equal(kv_draft_lookup(c, 1, 3, out, 8), 0);
    assert_int_equal(kv_draft_lookup(b, 5, 2, out, 0), 0);
}

static char g_out[1 << 16], g_out2[1 << 16];
#define KVLM KVLM_BIN_DIR "/kvlm"

/* kvlm run -md / --draft-ngram / --draft-max: the same text on stdout, the draft statistics on
   stderr, and the flag combinations that make no sense refused. */
static void test_cli(void **state) {
    (void)state;
    const char *common = "run -m " AIDREAMS " -p 'Once upon a time' -n 60 -t 1";
    assert_int_equal(run_into(g_out, sizeof g_out, KVLM " %s 2>/dev/null", common), 0);
    const char *variants[] = {"--draft-ngram 2", "--draft-ngram 3 --draft-max 3", "-md " AIDREAMS_F16,
                              "--model-draft " AIDREAMS_F16 " --draft-max 12"};
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        assert_int_equal(run_into(g_out2, sizeof g_out2, KVLM " %s %s 2>/dev/null", common, variants[i]), 0);
        assert_string_equal(g_out, g_out2);
        assert_int_equal(run_into(g_out2, sizeof g_out2, KVLM " %s %s 2>&1 >/dev/null", common, variants[i]), 0);
        assert_non_null(strstr(g_out2, "draft: "));
        assert_non_null(strstr(g_out2, " accepted ("));
    }
    assert_int_equal(run_into(g_out2, sizeof g_out2, KVLM " %s 2>&1 >/dev/null", common), 0);
    assert_null(strstr(g_out2, "draft: "));
    assert_int_equal(run_into(g_out2, sizeof g_out2, KVLM " %s --draft-max 4", common), 2);
    assert_non_null(strstr(g_out2, "needs a draft source"));
    assert_int_equal(run_into(g_out2, sizeof g_out2, KVLM " %s -md " AIDREAMS_F16 " --draft-ngram 2", common), 2);
    assert_non_null(strstr(g_out2, "give one"));
    assert_int_equal(run_into(g_out2, sizeof g_out2, KVLM " %s --draft-max 65 --draft-ngram 2", common), 2);
    assert_int_equal(run_into(g_out2, sizeof g_out2, KVLM " %s -md " SYNTH, common), 1);
    assert_non_null(strstr(g_out2, "draft model"));
    assert_int_equal(run_into(g_out2, sizeof g_out2, KVLM " %s -md /nonexistent.gguf", common), 1);
    /* only run takes them */
    assert_int_equal(run_into(g_out2, sizeof g_out2, KVLM " eval -m " AIDREAMS " -p x --draft-ngram 2"), 2);
}

static void test_refusals(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS), *other = load(SYNTH);
    kvlm_session *s = session(m, 128), *ds = session(other, 128);
    kvlm_generate_params gp = kvlm_generate_default_params();
    kvlm_generate_result r;
    kvlm_error err;
    gp.draft_max = 65;
    assert_int_equal(kvlm_generate(s, "Once", &gp, NULL, NULL, &r, &err), KVLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "draft_max"));
    gp.draft_max = -1;
    assert_int_equal(kvlm_generate(s, "Once", &gp, NULL, NULL, &r, &err), KVLM_ERR_INVALID_ARG);
    gp.draft_max = 4;
    gp.draft_ngram = 0;
    assert_int_equal(kvlm_generate(s, "Once", &gp, NULL, NULL, &r, &err), KVLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "draft_ngram"));
    gp.draft_ngram = 3;
    gp.draft = s;
    assert_int_equal(kvlm_generate(s, "Once", &gp, NULL, NULL, &r, &err), KVLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "itself"));
    gp.draft = ds; /* 32000 tokens against 512 */
    assert_int_equal(kvlm_generate(s, "Once", &gp, NULL, NULL, &r, &err), KVLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "draft model"));
    /* nothing was generated or cached by the refused calls */
    assert_int_equal(kvlm_session_n_past(s), 0);
    assert_int_equal(kvlm_session_n_past(ds), 0);
    kvlm_session_free(s);
    kvlm_session_free(ds);
    kvlm_model_free(m);
    kvlm_model_free(other);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lookup_source), cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_lookup_greedy), cmocka_unit_test(test_lookup_sampled),
        cmocka_unit_test(test_lookup_stops),  cmocka_unit_test(test_context_edges),
        cmocka_unit_test(test_draft_model),   cmocka_unit_test(test_continuation),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
