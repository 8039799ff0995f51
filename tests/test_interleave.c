/* Weights repacked at load into the gemm kernels' row-interleaved layout
 * (src/model/model.h, kv_model_interleave) give the same logits, bit for
 * bit, as the file's layout: each shared model loaded both ways
 * (KVLM_INTERLEAVE=0 keeps the file layout) and evaluated the same way on
 * both, as one prompt, token by token, with 1 and 2 threads, and as a
 * batch of sessions decoded together. Also: which weights are repacked and
 * where they live. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kvlm.h"
#include "model/model.h"
#include "quant/quant.h"
#include "test_util.h"

static const char *k_models[] = {
    "llama/aidreams260K-f32.gguf",   "llama/aidreams260K-f16.gguf",    "llama/aidreams260K-q8_0-ffndown-f16.gguf",
    "llama/llama-2-tiny-random.gguf", "llama/synth15M-f16.gguf",       "llama/synth15M-q8_0.gguf",
    "llama/synth15M-gqa-q8_0.gguf",  "llama/synth15M-q4_0.gguf",       "llama/synth15M-q4_k_m.gguf",
    "llama/synth15M-tq1_0.gguf",     "llama/synth15M-tq2_0.gguf",      "bitnet/synth-bitnet-b158-v512-i2_s.gguf",
};

static kvlm_model *load_env(const char *path, const char *interleave) {
    if (interleave) setenv("KVLM_INTERLEAVE", interleave, 1);
    else unsetenv("KVLM_INTERLEAVE");
    kvlm_model *m = load(path);
    unsetenv("KVLM_INTERLEAVE");
    return m;
}

static kvlm_session *threaded_session(kvlm_model *m, int threads) {
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 96;
    p.n_threads = threads;
    kvlm_session *s = NULL;
    kvlm_error err;
    if (kvlm_session_new(m, &p, &s, &err) != KVLM_OK) fail_msg("session: %s", err.msg);
    return s;
}

static int in_map(const kvlm_model *m, const void *p) {
    const char *a = m->il_map, *q = p;
    return a && q >= a && q < a + m->il_map_size;
}

/* which weights are interleaved, and where */
static void check_layout(const kvlm_model *file, const kvlm_model *il) {
    assert_null(file->il_map);
    assert_int_equal(file->il_bytes, 0);
    const int simd = kv_quant_best_isa() > 0;
    if (!simd) {
        assert_null(il->il_map);
        return;
    }
    assert_non_null(il->il_map);
    assert_true(il->il_bytes > 0 && il->il_bytes <= il->weight_bytes);
    uint64_t bytes = 0;
    for (int l = 0; l < il->hp.n_layer; l++) {
        const kv_layer *L = &il->layers[l], *F = &file->layers[l];
        const kv_weight *a[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        const kv_weight *b[7] = {&F->wq, &F->wk, &F->wv, &F->wo, &F->w_gate, &F->w_up, &F->w_down};
        for (int i = 0; i < 7; i++) {
            assert_null(b[i]->il);
            if (!a[i]->il) {
                assert_false(in_map(il, a[i]->data));
                continue;
            }
            assert_true(in_map(il, a[i]->data));
            assert_ptr_equal(a[i]->il, kv_quant_get_gemm(a[i]->type));
            assert_true(a[i]->il->il_rows >= 2);
            /* every row comes back as the file's */
            uint8_t *row = malloc(a[i]->row_bytes);
            assert_non_null(row);
            for (int64_t r = 0; r < a[i]->ne1; r += 1 + a[i]->ne1 / 5) {
                kv_il_row(a[i]->type, a[i]->ne0, a[i]->ne1, a[i]->il->il_rows, a[i]->data, r, row);
                assert_memory_equal(row, (const uint8_t *)b[i]->data + (uint64_t)r * b[i]->row_bytes, a[i]->row_bytes);
            }
            free(row);
            bytes += a[i]->row_bytes * (uint64_t)a[i]->ne1;
        }
    }
    if (il->output.il) bytes += il->output.row_bytes * (uint64_t)il->output.ne1;
    assert_int_equal(bytes, il->il_bytes);
    /* the token embeddings are read row by row from the file; a tied output gets its own copy */
    assert_false(in_map(il, il->tok_embd.data));
    assert_memory_equal(il->tok_embd.data, file->tok_embd.data, il->tok_embd.row_bytes);
    if (il->tied_output && il->output.il) assert_ptr_not_equal(il->output.data, il->tok_embd.data);
}

static void test_same_logits(void **state) {
    (void)state;
    for (size_t k = 0; k < sizeof k_models / sizeof k_models[0]; k++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", KVLM_MODELS_DIR, k_models[k]);
        kvlm_model *mf = load_env(path, "0"), *mi = load_env(path, NULL);
        check_layout(mf, mi);
        const int32_t V = kvlm_n_vocab(mf);
        enum { N = 41, P = 33, B = 8 };
        kvlm_token toks[N];
        seq(toks, N, V, 0x51ed + (uint32_t)k);
        float *lf = malloc(sizeof(float) * (size_t)V * N), *li = malloc(sizeof(float) * (size_t)V * N);
        assert_non_null(lf);
        assert_non_null(li);
        kvlm_error err;
        for (int threads = 1; threads <= 2; threads++) {
            kvlm_session *sf = threaded_session(mf, threads), *si = threaded_session(mi, threads);
            /* a prompt in one batch (the prefill kernels), then token by token (decode) */
            assert_int_equal(kvlm_eval(sf, toks, P, 0, lf, true, &err), KVLM_OK);
            assert_int_equal(kvlm_eval(si, toks, P, 0, li, true, &err), KVLM_OK);
            if (memcmp(lf, li, sizeof(float) * (size_t)V * P) != 0) fail_msg("%s: prompt logits differ (%d threads)", k_models[k], threads);
            for (int32_t t = P; t < N; t++) {
                assert_int_equal(kvlm_eval(sf, toks, t + 1, t, lf, false, &err), KVLM_OK);
                assert_int_equal(kvlm_eval(si, toks, t + 1, t, li, false, &err), KVLM_OK);
                if (memcmp(lf, li, sizeof(float) * (size_t)V) != 0)
                    fail_msg("%s: decode logits differ at %d (%d threads)", k_models[k], t, threads);
            }
            kvlm_session_free(sf);
            kvlm_session_free(si);
        }
        /* B sessions decoded together (2 and 3 columns: the decode tiles; 4..8: the batched-decode kernels) */
        for (int nb = 2; nb <= B; nb += nb < 5 ? 1 : 3) {
            kvlm_session *sf[B], *si[B];
            kvlm_token next[B];
            for (int b = 0; b < nb; b++) {
                sf[b] = threaded_session(mf, 2);
                si[b] = threaded_session(mi, 2);
                assert_int_equal(kvlm_eval(sf[b], toks, 5 + b, 0, NULL, false, &err), KVLM_OK);
                assert_int_equal(kvlm_eval(si[b], toks, 5 + b, 0, NULL, false, &err), KVLM_OK);
                next[b] = toks[10 + b];
            }
            assert_int_equal(kvlm_decode_batch(sf, next, nb, lf, &err), KVLM_OK);
            assert_int_equal(kvlm_decode_batch(si, next, nb, li, &err), KVLM_OK);
            if (memcmp(lf, li, sizeof(float) * (size_t)V * (size_t)nb) != 0)
                fail_msg("%s: batched decode of %d differs", k_models[k], nb);
            for (int b = 0; b < nb; b++) {
                kvlm_session_free(sf[b]);
                kvlm_session_free(si[b]);
            }
        }
        free(lf);
        free(li);
        kvlm_model_free(mf);
        kvlm_model_free(mi);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_logits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
