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

#include "golden.h"
#include "kvlm.h"

#define GOLDENS KVLM_SOURCE_DIR "/tests/goldens/"

typedef struct model_spec {
    const char *arch; /* also the goldens' folder */
    int head_dim;
    const char *file;
    const char *synth; /* kvlm synth arguments after OUT */
    const char *sha256;
} model_spec;

#define Q3 "--arch qwen3 --dim 256 --layers 2 --heads 8 --kv-heads 2 --ff 512 --vocab 512"
#define G3 "--arch gemma3 --dim 256 --layers 6 --heads 4 --ff 512 --vocab 512"
static const model_spec k_models[] = {
    {"qwen3", 48, "q3-f16.gguf", Q3 " --head-dim 48 --type f16",
     "3df948570004b97ae8ef7c56d1a15b36284b00dc5169a7f594bf68db7edf11de"},
    {"qwen3", 48, "q3-q8_0.gguf", Q3 " --head-dim 48 --type q8_0",
     "d8064b7348797485de674ce504aa5ac7fec54dc87963d90d6d5d7c97b2b87db5"},
    {"qwen3", 32, "q3t-f16.gguf", Q3 " --type f16 --tied",
     "f0d7c50b3dec09dfcc51d8140e72aafb3d7a2365fdc7f17094c42b56cbb37b37"},
    {"gemma3", 64, "g3-f16.gguf",
     G3 " --kv-heads 2 --head-dim 64 --type f16 --tied --sliding-window 8 --rope-scaling linear --rope-factor 8",
     "896875a00612d122e63b9b911ed71274a919621c7d1cc6717e982ce353ae24b0"},
    {"gemma3", 64, "g3-q8_0.gguf", G3 " --kv-heads 1 --type q8_0 --sliding-window 5",
     "7826d61c19d3fdee9dc26c34c6b40c0f06a591fcaf4bce545c9cc3588c61daa5"},
};
enum { Q3_F16, Q3_Q8, Q3T_F16, G3_F16, G3_Q8, N_MODELS };

typedef enum { M_PLAIN, M_SHIFT, M_SLIDING, M_RING } run_mode;

typedef struct parity_case {
    int model;
    const char *golden;
    run_mode mode;
    int32_t n_ctx, keep; /* SHIFT: n_ctx, n_keep; SLIDING: n_ctx, n_sink (pages of 16); RING: window */
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
    {G3_F16, "g3-f16.ring20", M_RING, 20, 0, 0, TOL_F16},
    {G3_F16, "g3-f16.ring20", M_RING, 20, 0, 27, TOL_F16},
    {G3_Q8, "g3-q8_0.batch", M_PLAIN, 0, 0, 0, TOL_Q8},
};

static char g_dir[64];
static char g_path[N_MODELS][256];

/* Makes each model with kvlm synth and checks its sha256. */
static int setup(void **state) {
    (void)state;
    strcpy(g_dir, "/tmp/kvlm-parity-ik-XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    for (int i = 0; i < N_MODELS; i++) {
        snprintf(g_path[i], sizeof g_path[i], "%s/%s", g_dir, k_models[i].file);
        char cmd[2048];
        snprintf(cmd, sizeof cmd, "%s/kvlm synth %s %s >/dev/null", KVLM_BIN_DIR, g_path[i], k_models[i].synth);
        if (system(cmd) != 0) {
            fprintf(stderr, "synth failed: %s\n", cmd);
            return -1;
        }
        snprintf(cmd, sizeof cmd, "sha256sum %s", g_path[i]);
        FILE *fp = popen(cmd, "r");
        char sum[65] = "";
        if (!fp || fscanf(fp, "%64s", sum) != 1) sum[0] = '\0';
        if (fp) pclose(fp);
        if (strcmp(sum, k_models[i].sha256) != 0) {
            fprintf(stderr, "%s: sha256 %s, the goldens were made from %s (kvlm synth changed its output)\n",
                    k_models[i].file, sum, k_models[i].sha256);
            return -1;
        }
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    for (int i = 0; i < N_MODELS; i++) unlink(g_path[i]);
    rmdir(g_dir);
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

/* Teacher-forces toks (prompt as one batch, then one token per eval); returns all rows of logits. */
static float *teacher_force(kvlm_model *m, const parity_case *c, const int32_t *toks, int n, int n_prompt) {
    const int32_t V = kvlm_n_vocab(m);
    const kvlm_session_params sp = session_params(c, n);
    kvlm_session *s = NULL;
    kvlm_error err;
    if (kvlm_session_new(m, &sp, &s, &err) != KVLM_OK) fail_msg("session: %s", err.msg);
    float *out = malloc((size_t)n * (size_t)V * sizeof(float));
    assert_non_null(out);
    if (kvlm_eval(s, toks, n_prompt, 0, out, true, &err) != KVLM_OK) fail_msg("prompt: %s", err.msg);
    for (int i = n_prompt; i < n; i++) {
        if (i == c->save_at) {
            char path[128];
            snprintf(path, sizeof path, "%s/session.kvs", g_dir);
            if (kvlm_session_save(s, path, &err) != KVLM_OK) fail_msg("save: %s", err.msg);
            const int32_t held = kvlm_session_n_past(s);
            kvlm_session_free(s);
            assert_int_equal(kvlm_session_new(m, &sp, &s, &err), KVLM_OK);
            if (kvlm_session_load(s, path, &err) != KVLM_OK) fail_msg("load: %s", err.msg);
            unlink(path);
            assert_int_equal(kvlm_session_n_past(s), held);
        }
        if (kvlm_eval(s, toks, i + 1, i, out + (size_t)i * (size_t)V, false, &err) != KVLM_OK)
            fail_msg("token %d: %s", i, err.msg);
    }
    kvlm_session_free(s);
    return out;
}

static void run_case(void **state) {
    const parity_case *c = *state;
    char txt[512], lg[512];
    snprintf(txt, sizeof txt, GOLDENS "%s/%s.txt", k_models[c->model].arch, c->golden);
    snprintf(lg, sizeof lg, GOLDENS "%s/%s.lgts", k_models[c->model].arch, c->golden);
    lgts gold;
    if (!lgts_load(lg, &gold)) fail_msg("golden %s is missing or malformed", lg);
    int32_t toks[256];
    const int n_prompt = golden_ids(txt, "# prompt tokens:", toks, 256);
    const int n_gen = golden_ids(txt, "# generated tokens:", toks + n_prompt, 256 - n_prompt);
    assert_true(n_prompt > 0 && n_gen > 0);
    const int n = n_prompt + n_gen;

    kvlm_model *m = NULL;
    kvlm_error err;
    if (kvlm_model_load(g_path[c->model], NULL, &m, &err) != KVLM_OK) fail_msg("%s: %s", g_path[c->model], err.msg);
    const int32_t V = kvlm_n_vocab(m);
    assert_int_equal(V, gold.n_vocab);
    kvlm_model_info mi;
    kvlm_model_get_info(m, &mi);
    /* --head-dim sets attention.key_length (q3: 8 x 48 = 384 wide); else n_embd / n_head */
    assert_int_equal(mi.head_dim, k_models[c->model].head_dim);
    assert_string_equal(mi.arch, k_models[c->model].arch);
    float *ours = teacher_force(m, c, toks, n, n_prompt);

    float worst = 0.0f;
    double sum = 0.0;
    int checked = 0;
    for (int32_t r = 0; r < gold.n_rows; r++) {
        const lgts_row *row = &gold.rows[r];
        assert_true(row->pos >= 0 && row->pos < n);
        assert_int_equal(row->token, toks[row->pos]);
        const float *o = ours + (size_t)row->pos * (size_t)V;
        if (getenv("KVLM_PARITY_ROWS")) {
            float rw = 0.0f;
            for (int32_t i = 0; i < V; i++) rw = fmaxf(rw, fabsf(o[i] - row->logits[i]));
            printf("#   pos %2d max|diff| %.3g\n", row->pos, rw);
        }
        for (int32_t i = 0; i < V; i++) {
            const float d = fabsf(o[i] - row->logits[i]);
            if (!(d <= c->tol))
                fail_msg("%s pos %d token %d: |%g - %g| = %g > %g", c->golden, row->pos, i, o[i], row->logits[i], d,
                         c->tol);
            worst = d > worst ? d : worst;
            sum += d;
        }
        int32_t gb, ob;
        float gg, og;
        top2(row->logits, V, &gb, &gg);
        top2(o, V, &ob, &og);
        if (gg > c->tol) {
            checked++;
            if (gb != ob) fail_msg("%s pos %d: argmax %d, ik_llama.cpp %d (gap %g)", c->golden, row->pos, ob, gb, gg);
        }
    }
    const double mean = sum / ((double)gold.n_rows * V);
    printf("# %-24s %-8s save@%-3d rows %2d  max|diff| %.3g (tol %.0e)  mean|diff| %.2g  argmax on %d rows\n",
           c->golden, c->mode == M_PLAIN ? "plain" : c->mode == M_SHIFT ? "shift" : c->mode == M_SLIDING ? "sliding" : "ring",
           c->save_at, gold.n_rows, worst, c->tol, mean, checked);
    assert_true(mean <= c->tol / 10);
    free(ours);
    lgts_free(&gold);
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
        char txt[512];
        snprintf(txt, sizeof txt, GOLDENS "%s/%s.txt", k_models[c->model].arch, c->golden);
        int32_t seq[256], want[256];
        float gaps[256];
        const int np = golden_ids(txt, "# prompt tokens:", seq, 256);
        const int ng = golden_ids(txt, "# generated tokens:", want, 256);
        /* gaps: floats on the "# top2 gaps:" line, one per row (row np - 1 + i chooses generated token i) */
        FILE *fp = fopen(txt, "r");
        assert_non_null(fp);
        char line[1 << 14];
        int n_gaps = 0;
        while (fgets(line, sizeof line, fp))
            if (strncmp(line, "# top2 gaps:", 12) == 0)
                for (char *p = line + 12, *e;; p = e) {
                    const float v = strtof(p, &e);
                    if (e == p || n_gaps >= 256) break;
                    gaps[n_gaps++] = v;
                }
        fclose(fp);
        assert_true(np > 0 && ng > 0 && n_gaps == np + ng);
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
    return _cmocka_run_group_tests("parity_ik", tests, n, setup, teardown);
}
