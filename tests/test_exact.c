/* The exactness contract: logits are a pure function of the token sequence.
 * The reference path (kvlm_eval_full), one batch, one token at a time, chunks
 * of 3, 7 and 64, 1 and 2 threads, and rollback + re-evaluation must all give
 * memcmp-equal logits, on every llama model in the shared models folder, with
 * F32 and with Q8_0 KV storage. The architectures with no shared model
 * (qwen3, gemma3, phi3) run on small models made by `kvlm synth` at test time, and also
 * check batched decoding (kvlm_decode_batch) against each session alone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "kvlm.h"
#include "test_filter.h"

static const char *k_models[] = {
    "aidreams260K-f32.gguf", "aidreams260K-f16.gguf", "aidreams260K-q8_0-ffndown-f16.gguf",
    "llama-2-tiny-random.gguf", "synth15M-f16.gguf", "synth15M-q8_0.gguf", "synth15M-gqa-q8_0.gguf",
    "synth15M-q4_0.gguf", "synth15M-q4_k_m.gguf", "synth15M-tq1_0.gguf", "synth15M-tq2_0.gguf",
};

/* Synthetic models (made in setup_synth), by the architecture paths they cover. */
typedef struct synth_model {
    const char *file, *args;
} synth_model;
static const synth_model k_synth[] = {
    /* qwen3: q/k norms, GQA 8/2, a head (48) wider than n_embd / n_head, separate output */
    {"qwen3-hd48-f16.gguf", "--arch qwen3 --dim 256 --layers 2 --heads 8 --kv-heads 2 --head-dim 48 --ff 512 "
                            "--vocab 512 --type f16"},
    {"qwen3-q8_0.gguf", "--arch qwen3 --dim 256 --layers 2 --heads 8 --kv-heads 2 --ff 512 --vocab 512 --type q8_0 "
                        "--tied"},
    /* gemma3: 6 layers = 5 local (window 8, their own RoPE base) + 1 global, post norms, GELU, scaled embedding */
    {"gemma3-f16.gguf", "--arch gemma3 --dim 256 --layers 6 --heads 4 --kv-heads 2 --head-dim 64 --ff 512 --vocab 512 "
                        "--type f16 --tied --sliding-window 8"},
    {"gemma3-q8_0.gguf", "--arch gemma3 --dim 256 --layers 6 --heads 4 --kv-heads 1 --ff 512 --vocab 512 --type q8_0 "
                         "--sliding-window 5"},
    /* phi3: fused qkv and gate/up, partial rotary, LongRoPE long factors (ctx 512 > original 64) */
    {"phi3-lr-f16.gguf", "--arch phi3 --dim 256 --layers 2 --heads 8 --kv-heads 2 --ff 512 --vocab 512 --ctx 512 "
                         "--rope-orig-ctx 64 --rope-scaling longrope --rope-dims 24 --type f16"},
    {"phi3-lr-q8_0.gguf", "--arch phi3 --dim 256 --layers 2 --heads 8 --kv-heads 2 --ff 512 --vocab 512 --ctx 512 "
                          "--rope-orig-ctx 64 --rope-scaling longrope --rope-dims 24 --type q8_0"},
};
enum { N_SYNTH = sizeof k_synth / sizeof k_synth[0] };
static char g_synth_dir[64];
static char g_synth_path[N_SYNTH][256];

static int setup_synth(void **state) {
    (void)state;
    strcpy(g_synth_dir, "/tmp/kvlm-exact-XXXXXX");
    if (!mkdtemp(g_synth_dir)) return -1;
    for (int i = 0; i < N_SYNTH; i++) {
        snprintf(g_synth_path[i], sizeof g_synth_path[i], "%s/%s", g_synth_dir, k_synth[i].file);
        char cmd[2048];
        snprintf(cmd, sizeof cmd, "%s/kvlm synth %s %s >/dev/null", KVLM_BIN_DIR, g_synth_path[i], k_synth[i].args);
        if (system(cmd) != 0) {
            fprintf(stderr, "synth failed: %s\n", cmd);
            return -1;
        }
    }
    return 0;
}

static int teardown_synth(void **state) {
    (void)state;
    for (int i = 0; i < N_SYNTH; i++) unlink(g_synth_path[i]);
    rmdir(g_synth_dir);
    return 0;
}

typedef struct fixture {
    kvlm_model *m;
    int32_t V, n;
    kvlm_token toks[80];
    float *ref;
    kvlm_kv_type kv;
} fixture;

static kvlm_session *new_session(fixture *fx, int threads) {
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 128;
    p.n_threads = threads;
    p.cache_params.type_k = fx->kv;
    p.cache_params.type_v = fx->kv;
    kvlm_session *s = NULL;
    kvlm_error err;
    if (kvlm_session_new(fx->m, &p, &s, &err) != KVLM_OK) fail_msg("session: %s", err.msg);
    return s;
}

/* Evaluates the sequence in chunks of `chunk`, collecting every row. */
static void eval_chunked(fixture *fx, int chunk, int threads, float *out) {
    kvlm_session *s = new_session(fx, threads);
    kvlm_error err;
    for (int i = 0; i < fx->n; i += chunk) {
        int end = i + chunk < fx->n ? i + chunk : fx->n;
        if (kvlm_eval(s, fx->toks, end, i, out + (size_t)i * fx->V, true, &err) != KVLM_OK)
            fail_msg("eval: %s", err.msg);
    }
    kvlm_session_free(s);
}

static void expect_same(const fixture *fx, const float *got, const char *what, const char *model) {
    for (int r = 0; r < fx->n; r++)
        if (memcmp(got + (size_t)r * fx->V, fx->ref + (size_t)r * fx->V, (size_t)fx->V * sizeof(float)) != 0)
            fail_msg("%s (%s KV %d): row %d differs from the reference", model, what, fx->kv, r);
}

/* kvlm_decode_batch over 3 sessions with different histories (and lengths) gives each the bits
 * kvlm_eval gives it alone. */
static void check_batched(fixture *fx, const char *name) {
    enum { NS = 3 };
    kvlm_session *bs[NS], *ref[NS];
    kvlm_token hist[NS][80];
    int pos[NS];
    kvlm_error err;
    float *lb = malloc((size_t)NS * (size_t)fx->V * sizeof(float)), *lr = malloc((size_t)fx->V * sizeof(float));
    assert_non_null(lb);
    assert_non_null(lr);
    for (int i = 0; i < NS; i++) {
        for (int t = 0; t < fx->n; t++) hist[i][t] = (kvlm_token)((fx->toks[t] + 11 * i) % fx->V);
        hist[i][0] = 1;
        pos[i] = 5 + 7 * i; /* prompt lengths 5, 12, 19 */
        bs[i] = new_session(fx, 2);
        ref[i] = new_session(fx, 1);
        assert_int_equal(kvlm_eval(bs[i], hist[i], pos[i], 0, NULL, false, &err), KVLM_OK);
        assert_int_equal(kvlm_eval(ref[i], hist[i], pos[i], 0, NULL, false, &err), KVLM_OK);
    }
    for (int step = 0; step < 12; step++) {
        kvlm_token t[NS];
        for (int i = 0; i < NS; i++) t[i] = hist[i][pos[i]];
        assert_int_equal(kvlm_decode_batch(bs, t, NS, lb, &err), KVLM_OK);
        for (int i = 0; i < NS; i++) {
            assert_int_equal(kvlm_eval(ref[i], hist[i], pos[i] + 1, pos[i], lr, false, &err), KVLM_OK);
            if (memcmp(lb + (size_t)i * fx->V, lr, (size_t)fx->V * sizeof(float)) != 0)
                fail_msg("%s (KV %d): batched decode of session %d at %d differs from its own eval", name, fx->kv, i,
                         pos[i]);
            pos[i]++;
        }
    }
    for (int i = 0; i < NS; i++) {
        kvlm_session_free(bs[i]);
        kvlm_session_free(ref[i]);
    }
    free(lb);
    free(lr);
}

static void run_model(const char *name, kvlm_kv_type kv) {
    char path[512];
    /* an absolute path: a synthetic model (batched decoding is checked too) */
    const bool synth = name[0] == '/';
    if (synth) snprintf(path, sizeof path, "%s", name);
    else snprintf(path, sizeof path, "%s/llama/%s", KVLM_MODELS_DIR, name);
    fixture fx = {.kv = kv};
    kvlm_error err;
    if (kvlm_model_load(path, NULL, &fx.m, &err) != KVLM_OK) fail_msg("%s: %s", path, err.msg);
    fx.V = kvlm_n_vocab(fx.m);
    /* a fixed pseudo-random sequence starting with BOS */
    fx.n = fx.V > 1000 ? 40 : 72;
    uint32_t x = 12345;
    fx.toks[0] = 1;
    for (int i = 1; i < fx.n; i++) {
        x = x * 1103515245u + 12345u;
        fx.toks[i] = (kvlm_token)(3 + (x >> 8) % (uint32_t)(fx.V - 3));
    }
    const size_t bytes = (size_t)fx.n * (size_t)fx.V * sizeof(float);
    fx.ref = malloc(bytes);
    float *got = malloc(bytes);
    assert_non_null(fx.ref);
    assert_non_null(got);

    /* storage types that cannot hold a row of this model are refused cleanly */
    kvlm_session_params p = kvlm_session_default_params();
    p.cache_params.type_k = p.cache_params.type_v = kv;
    kvlm_session *probe = NULL;
    kvlm_status st = kvlm_session_new(fx.m, &p, &probe, &err);
    kvlm_model_info mi;
    kvlm_model_get_info(fx.m, &mi);
    const int kv_dim = mi.n_head_kv * mi.head_dim;
    if (kv == KVLM_KV_Q8_0 && kv_dim % 32 != 0) {
        assert_int_equal(st, KVLM_ERR_UNSUPPORTED);
        printf("# %-36s Q8_0 KV: kv_dim %d is not a multiple of 32, refused as expected\n", name, kv_dim);
        goto out;
    }
    assert_int_equal(st, KVLM_OK);
    kvlm_session_free(probe);

    /* the reference path */
    if (kv == KVLM_KV_F16) {
        assert_int_equal(kvlm_eval_full(fx.m, fx.toks, fx.n, fx.ref, true, &err), KVLM_OK);
    } else {
        /* eval_full uses the default (F16) storage; for other types the reference is one batch */
        eval_chunked(&fx, fx.n, 1, fx.ref);
    }
    const int chunks[] = {fx.n, 1, 3, 7, 64};
    for (int threads = 1; threads <= 2; threads++)
        for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
            memset(got, 0xff, bytes);
            eval_chunked(&fx, chunks[c], threads, got);
            char what[64];
            snprintf(what, sizeof what, "chunk %d, %d threads", chunks[c], threads);
            expect_same(&fx, got, what, name);
        }
    /* only the last row's logits from a many-token prompt at 2 threads (the final stage then normalises
     * one row while the other rows still take their residual add; ThreadSanitizer watches this path) */
    {
        kvlm_session *s = new_session(&fx, 2);
        float *last = malloc((size_t)fx.V * sizeof(float));
        assert_non_null(last);
        assert_int_equal(kvlm_eval(s, fx.toks, fx.n, 0, last, false, &err), KVLM_OK);
        assert_memory_equal(last, fx.ref + (size_t)(fx.n - 1) * fx.V, (size_t)fx.V * sizeof(float));
        free(last);
        kvlm_session_free(s);
    }
    /* rollback and re-evaluation: evaluate a different tail, roll back, redo */
    {
        kvlm_session *s = new_session(&fx, 2);
        kvlm_token alt[80];
        memcpy(alt, fx.toks, sizeof alt);
        for (int i = fx.n / 2; i < fx.n; i++) alt[i] = (kvlm_token)((alt[i] + 7) % fx.V);
        float *tmp = malloc(bytes);
        assert_int_equal(kvlm_eval(s, alt, fx.n, 0, tmp, true, &err), KVLM_OK);
        assert_int_equal(kvlm_session_truncate(s, fx.n / 3, &err), KVLM_OK);
        memcpy(got, fx.ref, (size_t)(fx.n / 3) * (size_t)fx.V * sizeof(float));
        assert_int_equal(kvlm_eval(s, fx.toks, fx.n, fx.n / 3, got + (size_t)(fx.n / 3) * fx.V, true, &err), KVLM_OK);
        expect_same(&fx, got, "truncate + re-eval", name);
        /* and through the n_past contract: a differing history rolls back by itself */
        assert_int_equal(kvlm_eval(s, alt, fx.n, fx.n - 1, tmp, false, &err), KVLM_OK);
        float last[32000];
        assert_int_equal(kvlm_eval(s, fx.toks, fx.n, fx.n - 1, last, false, &err), KVLM_OK);
        assert_memory_equal(last, fx.ref + (size_t)(fx.n - 1) * fx.V, (size_t)fx.V * sizeof(float));
        kvlm_kv_stats ks;
        kvlm_session_get_stats(s, &ks);
        assert_true(ks.recomputed > 0);
        free(tmp);
        kvlm_session_free(s);
    }
    if (synth) check_batched(&fx, name);
    printf("# %-36s %s KV: %d rows memcmp-equal over 5 chunkings x 2 thread counts, rollback, n_past rollback%s\n",
           synth ? strrchr(name, '/') + 1 : name, kv == KVLM_KV_F32 ? "F32" : (kv == KVLM_KV_F16 ? "F16" : "Q8_0"), fx.n,
           synth ? ", batched decode" : "");
out:
    free(fx.ref);
    free(got);
    kvlm_model_free(fx.m);
}

/* gemma3: every overflow policy is accepted (shift and sliding re-rotate each layer's keys with its own
   RoPE: tests/test_swa_ring.c); ring holds. */
static void test_gemma3_policies(void **state) {
    (void)state;
    kvlm_model *m = NULL;
    kvlm_error err;
    assert_int_equal(kvlm_model_load(g_synth_path[2], NULL, &m, &err), KVLM_OK);
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 32;
    kvlm_session *s = NULL;
    p.overflow = KVLM_OVERFLOW_SHIFT;
    assert_int_equal(kvlm_session_new(m, &p, &s, &err), KVLM_OK);
    kvlm_session_free(s);
    p.overflow = KVLM_OVERFLOW_SLIDING;
    p.cache_params.page_tokens = 16;
    assert_int_equal(kvlm_session_new(m, &p, &s, &err), KVLM_OK);
    kvlm_session_free(s);
    p.overflow = KVLM_OVERFLOW_RING;
    p.window = 16;
    assert_int_equal(kvlm_session_new(m, &p, &s, &err), KVLM_OK);
    kvlm_session_free(s);
    kvlm_model_free(m);
}

static void test_f32(void **state) { run_model((const char *)*state, KVLM_KV_F32); }
static void test_q8_0(void **state) { run_model((const char *)*state, KVLM_KV_Q8_0); }
static void test_f16(void **state) { run_model((const char *)*state, KVLM_KV_F16); }

int main(void) {
    const char *f16_second = k_models[6];
#if defined(KVLM_TSAN_BUILD) || defined(KVLM_EMULATED_BUILD)
    /* Under ThreadSanitizer (5-15x slower) what is hunted is the threads: every chunking at 1 and 2
     * threads on the small models (F32, F16 and Q8_0 weights, tiny heads) gives the pool, the stages
     * and attention all their splits. A cross build runs under qemu (make test-arm64, about as slow):
     * the same models put the F32, F16 and Q8_0 kernels of each dispatch level through every chunking. */
    enum { N = 3 };
    static const char *subset[N] = {"aidreams260K-f32.gguf", "aidreams260K-q8_0-ffndown-f16.gguf",
                                    "llama-2-tiny-random.gguf"};
    const char *const *models = subset;
    f16_second = k_models[3];
#elif defined(KVLM_SANITIZE_BUILD)
    /* Under ASan/UBSan (about 20x slower) the sanitizers hunt memory and UB errors, which the code paths
     * of these models cover (F32/F16/Q8_0 weights, GQA, k-quants, tiny heads); the normal build runs
     * the whole matrix. */
    enum { N = 5 };
    static const char *subset[N] = {"aidreams260K-f32.gguf", "aidreams260K-q8_0-ffndown-f16.gguf",
                                    "llama-2-tiny-random.gguf", "synth15M-gqa-q8_0.gguf", "synth15M-q4_k_m.gguf"};
    const char *const *models = subset;
#else
    enum { N = sizeof k_models / sizeof k_models[0] };
    const char *const *models = k_models;
#endif
    struct CMUnitTest tests[2 * N + 2 + 3 * N_SYNTH + 1];
    int n = 0;
    for (int i = 0; i < N; i++) {
        struct CMUnitTest a = {models[i], test_f32, NULL, NULL, (void *)(uintptr_t)models[i]};
        struct CMUnitTest b = {models[i], test_q8_0, NULL, NULL, (void *)(uintptr_t)models[i]};
        tests[n++] = a;
        tests[n++] = b;
    }
    /* the default F16 storage, against kvlm_eval_full, on two models */
    struct CMUnitTest c = {k_models[0], test_f16, NULL, NULL, (void *)(uintptr_t)k_models[0]};
    struct CMUnitTest d = {f16_second, test_f16, NULL, NULL, (void *)(uintptr_t)f16_second};
    tests[n++] = c;
    tests[n++] = d;
    /* the synthetic models: every KV storage type (under the sanitizers, F16 only: the paths are the same) */
#if defined(KVLM_TSAN_BUILD) || defined(KVLM_SANITIZE_BUILD) || defined(KVLM_EMULATED_BUILD)
    for (int i = 0; i < N_SYNTH; i++) {
        struct CMUnitTest e = {k_synth[i].file, test_f16, NULL, NULL, (void *)(uintptr_t)g_synth_path[i]};
        tests[n++] = e;
    }
#else
    for (int i = 0; i < N_SYNTH; i++) {
        struct CMUnitTest a = {k_synth[i].file, test_f32, NULL, NULL, (void *)(uintptr_t)g_synth_path[i]};
        struct CMUnitTest b = {k_synth[i].file, test_q8_0, NULL, NULL, (void *)(uintptr_t)g_synth_path[i]};
        struct CMUnitTest e = {k_synth[i].file, test_f16, NULL, NULL, (void *)(uintptr_t)g_synth_path[i]};
        tests[n++] = a;
        tests[n++] = b;
        tests[n++] = e;
    }
#endif
    struct CMUnitTest gp = cmocka_unit_test(test_gemma3_policies);
    tests[n++] = gp;
    /* KVLM_TEST_FILTER (make test-arm64-ci): the synthetic models are made only if a kept test uses them */
    const size_t kept = kv_test_filter(tests, (size_t)n);
    if (kept == 0) return 1;
    bool synth = false;
    for (size_t i = 0; i < kept; i++) {
        if (tests[i].test_func == test_gemma3_policies) synth = true;
        for (int j = 0; j < N_SYNTH; j++)
            if (tests[i].initial_state == (void *)g_synth_path[j]) synth = true;
    }
    return _cmocka_run_group_tests("exactness", tests, kept, synth ? setup_synth : NULL,
                                   synth ? teardown_synth : NULL);
}
