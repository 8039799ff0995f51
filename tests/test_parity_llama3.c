/* Parity with llama.cpp on Llama-3-style models: rope_freqs.weight (per-pair
 * RoPE frequency divisors), YaRN and linear RoPE scaling, a head size that is
 * not n_embd / n_head. The models are made at test time by `kvlm synth`
 * (deterministic; the sha256 of each file is checked, so the goldens are known
 * to belong to it); the goldens under tests/goldens/llama3/ were dumped from
 * llama.cpp mainline c392e5094 (their .txt says how). Each golden's tokens are
 * teacher-forced (prompt as one batch, then one token per eval) in a plain
 * session, in sessions whose context overflows (shift, sliding, ring: llama.cpp
 * was driven through the same evictions with llama_kv_cache_seq_rm/seq_add),
 * and in sessions saved and restored midway; every stored row must match. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "parity_util.h"
#include "kvlm.h"

#define GOLDENS KVLM_SOURCE_DIR "/tests/goldens/llama3/"

typedef parity_model model_spec;

#define SHAPE "--arch llama --dim 256 --layers 2 --heads 8 --kv-heads 2 --ff 512 --vocab 512"
static const model_spec k_models[] = {
    {"l3-f16.gguf", SHAPE " --type f16 --rope-base 500000 --rope-freqs llama3:32:1:4:64",
     "b8875353a91821a2cff0b949e0fae9432fab6f70725e4a76e319d9dec9bdadfa"},
    {"l3-q8_0.gguf", SHAPE " --type q8_0 --rope-base 500000 --rope-freqs llama3:32:1:4:64",
     "795a18e1ad92f6f2680c5948105c7a0fb91861378ea165f490dace668f26c6ef"},
    {"yarn-f16.gguf", SHAPE " --type f16 --ctx 256 --rope-scaling yarn --rope-factor 4 --rope-orig-ctx 64",
     "780c0cdb279c31967ed3e9960247f477c2dc2ec625732710cf2e82f983658c3d"},
    {"hd48-f16.gguf", SHAPE " --type f16 --head-dim 48 --rope-scaling linear --rope-factor 2",
     "8e7cc31548f29d54133448d136308e5da47611e17a419bebd84b6633508bff18"},
};
enum { L3_F16, L3_Q8, YARN_F16, HD48_F16, N_MODELS };

typedef enum { M_PLAIN, M_SHIFT, M_SLIDING, M_RING } run_mode;

typedef struct parity_case {
    int model;
    const char *golden;
    run_mode mode;
    int32_t n_ctx, keep; /* SHIFT: n_ctx, n_keep; SLIDING: n_ctx, n_sink (pages of 16); RING: window */
    int32_t save_at;     /* > 0: save before feeding this token, continue in a restored session */
    float tol;
} parity_case;

/* Bounds (docs/PARITY.md). F16: kvlm differs from llama.cpp by at most 2.3e-3 here, llama.cpp's own
 * batch and sequential runs by 1.9e-3 (both are f16 rounding flips of activations); the F16 bound of
 * the other goldens, 1e-2, covers both with room. Q8_0: one int8 rounding flip of an activation of an
 * early prompt token moves every later row, by up to 3.9e-2 against llama.cpp (once that token is
 * evicted by a shift or the ring, the rows match bit for bit), and llama.cpp's own batch and
 * sequential runs differ by 3.1e-2: the bound is twice that, 8e-2 (docs/PARITY.md's 4e-2 for Q8_0
 * was measured on models with no early flip). */
#define TOL_F16 1e-2f
#define TOL_Q8 8e-2f
static const parity_case k_cases[] = {
    {L3_F16, "l3-f16.batch", M_PLAIN, 0, 0, 0, TOL_F16},
    {L3_F16, "l3-f16.batch", M_PLAIN, 0, 0, 26, TOL_F16},
    {L3_F16, "l3-f16.shift24k4", M_SHIFT, 24, 4, 0, TOL_F16},
    {L3_F16, "l3-f16.shift24k4", M_SHIFT, 24, 4, 30, TOL_F16},
    {L3_F16, "l3-f16.sliding30s4p16", M_SLIDING, 30, 4, 0, TOL_F16},
    {L3_F16, "l3-f16.ring20", M_RING, 20, 0, 0, TOL_F16},
    {L3_F16, "l3-f16.ring20", M_RING, 20, 0, 27, TOL_F16},
    {L3_Q8, "l3-q8_0.batch", M_PLAIN, 0, 0, 0, TOL_Q8},
    {L3_Q8, "l3-q8_0.shift24k4", M_SHIFT, 24, 4, 0, TOL_Q8},
    {L3_Q8, "l3-q8_0.ring20", M_RING, 20, 0, 0, TOL_Q8},
    {YARN_F16, "yarn-f16.batch", M_PLAIN, 0, 0, 0, TOL_F16},
    {YARN_F16, "yarn-f16.batch", M_PLAIN, 0, 0, 20, TOL_F16},
    {HD48_F16, "hd48-f16.batch", M_PLAIN, 0, 0, 0, TOL_F16},
};

static char g_dir[64];
static char g_path[N_MODELS][256];

/* Makes each model with kvlm synth and checks its sha256. */
static int setup(void **state) {
    (void)state;
    return parity_make_models("/tmp/kvlm-llama3-XXXXXX", g_dir, k_models, N_MODELS, g_path);
}

static int teardown(void **state) {
    (void)state;
    parity_remove_models(g_dir, g_path, N_MODELS);
    return 0;
}

static kvlm_session_params session_params(const parity_case *c, int32_t n) {
    kvlm_session_params sp = kvlm_session_default_params();
    sp.n_threads = 1;
    sp.n_ctx = n;
    if (c->mode == M_SHIFT) {
        sp.overflow = KVLM_OVERFLOW_SHIFT;
        sp.n_ctx = c->n_ctx;
        sp.n_keep = c->keep;
    } else if (c->mode == M_SLIDING) {
        sp.overflow = KVLM_OVERFLOW_SLIDING;
        sp.n_ctx = c->n_ctx;
        sp.n_sink = c->keep;
        sp.cache_params = kvlm_cache_default_params();
        sp.cache_params.page_tokens = 16;
    } else if (c->mode == M_RING) {
        sp.overflow = KVLM_OVERFLOW_RING;
        sp.window = c->n_ctx;
    }
    return sp;
}

static void run_case(void **state) {
    const parity_case *c = *state;
    parity_golden g;
    parity_load_golden(GOLDENS, c->golden, &g);
    const int n = g.n_prompt + g.n_gen;
    kvlm_model *m = NULL;
    kvlm_error err;
    if (kvlm_model_load(g_path[c->model], NULL, &m, &err) != KVLM_OK) fail_msg("%s: %s", g_path[c->model], err.msg);
    kvlm_model_info mi;
    kvlm_model_get_info(m, &mi);
    /* hd48 sets attention.key_length 48; the others' head is n_embd / n_head = 256 / 8 */
    assert_int_equal(mi.head_dim, strstr(k_models[c->model].synth, "--head-dim 48") ? 48 : 32);
    const kvlm_session_params sp = session_params(c, n);
    float *ours = parity_teacher_force(m, &sp, g.toks, n, g.n_prompt, c->save_at, g_dir);
    static const char *const modes[] = {"plain", "shift", "sliding", "ring"};
    parity_check_rows(&g, ours, kvlm_n_vocab(m), 0, c->tol, c->golden, modes[c->mode], c->save_at, "llama.cpp");
    free(ours);
    parity_golden_free(&g);
    kvlm_model_free(m);
}

/* Free-running greedy generation gives llama.cpp's tokens as long as its top-2 gap at each step
 * exceeds the bound (the goldens record every step's gap). */
static void test_greedy(void **state) {
    (void)state;
    static const parity_case plain[] = {{L3_F16, "l3-f16.batch", M_PLAIN, 0, 0, 0, TOL_F16},
                                        {L3_Q8, "l3-q8_0.batch", M_PLAIN, 0, 0, 0, TOL_Q8},
                                        {L3_F16, "l3-f16.shift24k4", M_SHIFT, 24, 4, 0, TOL_F16},
                                        {YARN_F16, "yarn-f16.batch", M_PLAIN, 0, 0, 0, TOL_F16},
                                        {HD48_F16, "hd48-f16.batch", M_PLAIN, 0, 0, 0, TOL_F16}};
    for (size_t k = 0; k < sizeof plain / sizeof plain[0]; k++) {
        const parity_case *c = &plain[k];
        parity_golden g;
        parity_load_golden(GOLDENS, c->golden, &g);
        const int np = g.n_prompt, ng = g.n_gen;
        int32_t seq[256];
        const int32_t *want = g.toks + np;
        const float *gaps = g.gaps;
        memcpy(seq, g.toks, (size_t)np * sizeof *seq);
        assert_true(g.n_gaps == np + ng);
        kvlm_model *m = NULL;
        kvlm_error err;
        assert_int_equal(kvlm_model_load(g_path[c->model], NULL, &m, &err), KVLM_OK);
        const int32_t V = kvlm_n_vocab(m);
        const kvlm_session_params sp = session_params(c, np + ng);
        kvlm_session *s = NULL;
        assert_int_equal(kvlm_session_new(m, &sp, &s, &err), KVLM_OK);
        float *logits = malloc((size_t)V * sizeof(float));
        assert_int_equal(kvlm_eval(s, seq, np, 0, logits, false, &err), KVLM_OK);
        int matched = 0;
        for (int i = 0; i < ng; i++) {
            int32_t b;
            float gap;
            top2(logits, V, &b, &gap);
            if (!(gaps[np - 1 + i] > 2 * c->tol)) break; /* a near tie: the paths may part here */
            if (b != want[i]) fail_msg("%s: greedy step %d gives %d, llama.cpp %d", c->golden, i, b, want[i]);
            matched++;
            seq[np + i] = b;
            if (i + 1 < ng) assert_int_equal(kvlm_eval(s, seq, np + i + 1, np + i, logits, false, &err), KVLM_OK);
        }
        printf("# %-24s greedy: %d of %d tokens equal llama.cpp's\n", c->golden, matched, ng);
        assert_true(matched > 0);
        free(logits);
        kvlm_session_free(s);
        kvlm_model_free(m);
        parity_golden_free(&g);
    }
}

int main(void) {
    struct CMUnitTest tests[sizeof k_cases / sizeof k_cases[0] + 1];
    static char names[sizeof k_cases / sizeof k_cases[0]][96];
    size_t n = 0;
    for (size_t i = 0; i < sizeof k_cases / sizeof k_cases[0]; i++) {
        snprintf(names[i], sizeof names[i], "%s%s", k_cases[i].golden, k_cases[i].save_at ? " (saved, restored)" : "");
        struct CMUnitTest t = {names[i], run_case, NULL, NULL, (void *)(uintptr_t)&k_cases[i]};
        tests[n++] = t;
    }
    struct CMUnitTest g = cmocka_unit_test(test_greedy);
    tests[n++] = g;
    return _cmocka_run_group_tests("parity_llama3", tests, n, setup, teardown);
}
