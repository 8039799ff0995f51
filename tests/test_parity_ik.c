/* Parity with ik_llama.cpp on the architectures mainline llama.cpp's snapshot
 * (Feb 2025) predates: qwen3 (per-head RMSNorm of q and k before NEOX RoPE,
 * GQA, no biases, tied or separate output, a head wider than n_embd / n_head)
 * and gemma3 (embeddings x sqrt(n_embd), GELU(tanh) gated FFN, post-attention
 * and post-FFN norms, q/k norms, 5 sliding-window layers with RoPE base 10000
 * then a global one, linear RoPE scaling on the global layers only). The
 * reference is ik_llama.cpp 8337e4cd3. The models are made at test time by
 * `kvlm synth` (deterministic; each file's sha256 is checked, so the goldens are
 * known to belong to it); the goldens under tests/goldens/{qwen3,gemma3}/ were
 * dumped from ik_llama.cpp's library (their .txt says how). Each golden's tokens
 * are teacher-forced (prompt as one batch, then one token per eval) in a plain
 * session, in sessions whose context overflows (shift, ring: the reference was
 * driven through the same evictions with llama_kv_cache_seq_rm/seq_add), and in
 * sessions saved and restored midway; every stored row must match. Greedy
 * generation must give the reference's tokens while its top-2 gap is clear. */
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

#define GOLDENS KVLM_SOURCE_DIR "/tests/goldens/"

/* the models (kvlm synth, sha256 checked), and per model the goldens' folder (its architecture) and the
   head size its metadata must give */
typedef struct model_spec {
    const char *arch;
    int head_dim;
} model_spec;

#define Q3 "--arch qwen3 --dim 256 --layers 2 --heads 8 --kv-heads 2 --ff 512 --vocab 512"
#define G3 "--arch gemma3 --dim 256 --layers 6 --heads 4 --ff 512 --vocab 512"
static const parity_model k_files[] = {
    {"q3-f16.gguf", Q3 " --head-dim 48 --type f16", "3df948570004b97ae8ef7c56d1a15b36284b00dc5169a7f594bf68db7edf11de"},
    {"q3-q8_0.gguf", Q3 " --head-dim 48 --type q8_0", "d8064b7348797485de674ce504aa5ac7fec54dc87963d90d6d5d7c97b2b87db5"},
    {"q3t-f16.gguf", Q3 " --type f16 --tied", "f0d7c50b3dec09dfcc51d8140e72aafb3d7a2365fdc7f17094c42b56cbb37b37"},
    {"g3-f16.gguf",
     G3 " --kv-heads 2 --head-dim 64 --type f16 --tied --sliding-window 8 --rope-scaling linear --rope-factor 8",
     "896875a00612d122e63b9b911ed71274a919621c7d1cc6717e982ce353ae24b0"},
    {"g3-q8_0.gguf", G3 " --kv-heads 1 --type q8_0 --sliding-window 5",
     "7826d61c19d3fdee9dc26c34c6b40c0f06a591fcaf4bce545c9cc3588c61daa5"},
};
static const model_spec k_models[] = {{"qwen3", 48}, {"qwen3", 48}, {"qwen3", 32}, {"gemma3", 64}, {"gemma3", 64}};
enum { Q3_F16, Q3_Q8, Q3T_F16, G3_F16, G3_Q8, N_MODELS };

typedef enum { M_PLAIN, M_SHIFT, M_SLIDING, M_RING } run_mode;

typedef struct parity_case {
    int model;
    const char *golden;
    run_mode mode;
    int32_t n_ctx, keep; /* SHIFT: n_ctx, n_keep; SLIDING: n_ctx, n_sink (pages of 16); RING: window;
                            PLAIN: n_ctx > 0 a context of n_ctx in pages of 16 (else the tokens') */
    int32_t save_at;     /* > 0: save before feeding this token, continue in a restored session */
    float tol;
} parity_case;

/* Bounds (docs/PARITY.md). ik_llama.cpp's own batch and sequential runs agree bit for bit on these
 * models (0 over all 48 rows of every batch golden), so what remains is the two engines' rounding.
 * F16: both round activations to F16 before the F16 weights and the F16 cache; kvlm differs by at
 * most 4.8e-3 (qwen3) and 1.4e-3 (gemma3), the size of the llama3 goldens' f16 flips against
 * mainline (2.3e-3); the F16 bound of the other goldens, 1e-2, holds them with room, and the
 * mistakes it is there for move the first row out of bound by 0.08 (q/k norm weights ignored) to
 * 0.2 (no sliding window, or the global RoPE base on local layers). Q8_0: on AVX2, ik_llama.cpp
 * quantizes the activations of Q8_0 matmuls to its Q8_2_X4 blocks, whose scale is rounded to bf16
 * (quantize_row_q8_2_x4), where kvlm (like ggml mainline) uses Q8_0 blocks with an f16 scale: the
 * int8 activations differ in many blocks, not in a rare flip, and kvlm differs by up to 0.12
 * (mean 0.023); the bound is twice that, 2.5e-1. */
#define TOL_F16 1e-2f
#define TOL_Q8 2.5e-1f
static const parity_case k_cases[] = {
    {Q3_F16, "q3-f16.batch", M_PLAIN, 0, 0, 0, TOL_F16},
    {Q3_F16, "q3-f16.batch", M_PLAIN, 0, 0, 26, TOL_F16},
    {Q3_F16, "q3-f16.shift24k4", M_SHIFT, 24, 4, 0, TOL_F16},
    {Q3_F16, "q3-f16.shift24k4", M_SHIFT, 24, 4, 30, TOL_F16},
    {Q3_F16, "q3-f16.ring20", M_RING, 20, 0, 0, TOL_F16},
    {Q3_F16, "q3-f16.ring20", M_RING, 20, 0, 27, TOL_F16},
    {Q3_Q8, "q3-q8_0.batch", M_PLAIN, 0, 0, 0, TOL_Q8},
    {Q3_Q8, "q3-q8_0.shift24k4", M_SHIFT, 24, 4, 0, TOL_Q8},
    {Q3T_F16, "q3t-f16.batch", M_PLAIN, 0, 0, 0, TOL_F16},
    {Q3T_F16, "q3t-f16.batch", M_PLAIN, 0, 0, 20, TOL_F16},
    {G3_F16, "g3-f16.batch", M_PLAIN, 0, 0, 0, TOL_F16},
    {G3_F16, "g3-f16.batch", M_PLAIN, 0, 0, 26, TOL_F16},
    /* a context of 256 in pages of 16: the local layers in their own ring of 48 (window 8 + 32) */
    {G3_F16, "g3-f16.batch", M_PLAIN, 256, 0, 0, TOL_F16},
    {G3_Q8, "g3-q8_0.batch", M_PLAIN, 256, 0, 30, TOL_Q8},
    {G3_F16, "g3-f16.ring20", M_RING, 20, 0, 0, TOL_F16},
    {G3_F16, "g3-f16.ring20", M_RING, 20, 0, 27, TOL_F16},
    {G3_Q8, "g3-q8_0.batch", M_PLAIN, 0, 0, 0, TOL_Q8},
};

static char g_dir[64];
static char g_path[N_MODELS][256];

/* Makes each model with kvlm synth and checks its sha256. */
static int setup(void **state) {
    (void)state;
    return parity_make_models("/tmp/kvlm-parity-ik-XXXXXX", g_dir, k_files, N_MODELS, g_path);
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
    if (c->mode == M_PLAIN && c->n_ctx > 0) { /* a larger context in pages of 16 */
        sp.n_ctx = c->n_ctx;
        sp.cache_params.page_tokens = 16;
    }
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
    char folder[512];
    snprintf(folder, sizeof folder, GOLDENS "%s/", k_models[c->model].arch);
    parity_golden g;
    parity_load_golden(folder, c->golden, &g);
    const int n = g.n_prompt + g.n_gen;
    kvlm_model *m = NULL;
    kvlm_error err;
    if (kvlm_model_load(g_path[c->model], NULL, &m, &err) != KVLM_OK) fail_msg("%s: %s", g_path[c->model], err.msg);
    kvlm_model_info mi;
    kvlm_model_get_info(m, &mi);
    /* --head-dim sets attention.key_length (q3: 8 x 48 = 384 wide); else n_embd / n_head */
    assert_int_equal(mi.head_dim, k_models[c->model].head_dim);
    assert_string_equal(mi.arch, k_models[c->model].arch);
    const kvlm_session_params sp = session_params(c, n);
    float *ours = parity_teacher_force(m, &sp, g.toks, n, g.n_prompt, c->save_at, g_dir);
    static const char *const modes[] = {"plain", "shift", "sliding", "ring"};
    parity_check_rows(&g, ours, kvlm_n_vocab(m), 0, c->tol, c->golden, modes[c->mode], c->save_at, "ik_llama.cpp");
    free(ours);
    parity_golden_free(&g);
    kvlm_model_free(m);
}

/* Greedy decoding gives the reference's token at every step where the reference's top-2 gap exceeds
 * twice the bound (the goldens record every step's gap). The reference's own tokens are fed back, so a
 * near tie early on (these random models have many) does not end the comparison: every later step
 * with a clear gap is checked too. */
static void test_greedy(void **state) {
    (void)state;
    static const parity_case plain[] = {{Q3_F16, "q3-f16.batch", M_PLAIN, 0, 0, 0, TOL_F16},
                                        {Q3_Q8, "q3-q8_0.batch", M_PLAIN, 0, 0, 0, TOL_Q8},
                                        {Q3_F16, "q3-f16.shift24k4", M_SHIFT, 24, 4, 0, TOL_F16},
                                        {Q3T_F16, "q3t-f16.batch", M_PLAIN, 0, 0, 0, TOL_F16},
                                        {G3_F16, "g3-f16.batch", M_PLAIN, 0, 0, 0, TOL_F16},
                                        {G3_F16, "g3-f16.ring20", M_RING, 20, 0, 0, TOL_F16},
                                        {G3_Q8, "g3-q8_0.batch", M_PLAIN, 0, 0, 0, TOL_Q8}};
    for (size_t k = 0; k < sizeof plain / sizeof plain[0]; k++) {
        const parity_case *c = &plain[k];
        parity_golden g;
        char folder[512];
        snprintf(folder, sizeof folder, GOLDENS "%s/", k_models[c->model].arch);
        parity_load_golden(folder, c->golden, &g);
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
            if (gaps[np - 1 + i] > 2 * c->tol) { /* else a near tie: either token is right */
                if (b != want[i]) fail_msg("%s: greedy step %d gives %d, ik_llama.cpp %d", c->golden, i, b, want[i]);
                matched++;
            }
            seq[np + i] = want[i];
            if (i + 1 < ng) assert_int_equal(kvlm_eval(s, seq, np + i + 1, np + i, logits, false, &err), KVLM_OK);
        }
        printf("# %-24s greedy: %d of %d steps have a clear gap; kvlm's argmax is ik_llama.cpp's token on each\n",
               c->golden, matched, ng);
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
        snprintf(names[i], sizeof names[i], "%s%s%s", k_cases[i].golden, k_cases[i].save_at ? " (saved, restored)" : "",
                 k_cases[i].mode == M_PLAIN && k_cases[i].n_ctx ? " (context 256)" : "");
        struct CMUnitTest t = {names[i], run_case, NULL, NULL, (void *)(uintptr_t)&k_cases[i]};
        tests[n++] = t;
    }
    struct CMUnitTest g = cmocka_unit_test(test_greedy);
    tests[n++] = g;
    return _cmocka_run_group_tests("parity_ik", tests, n, setup, teardown);
}
