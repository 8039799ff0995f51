/* Stepwise generation helpers (kvlm.h): the public text stream against
 * kvlm_generate's own output, stop strings and UTF-8 hold-back through real
 * tokens, argument checks; kvlm_logprobs against a long-double reference. */
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

/* Decodes a sequence token by token with kvlm_eval and greedy argmax; the
 * text stream over those tokens must give kvlm_generate's text exactly. */
static void test_stream_matches_generate(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    kvlm_session *s = NULL;
    kvlm_error err;
    kvlm_session_params sp = kvlm_session_default_params();
    assert_int_equal(kvlm_session_new(m, &sp, &s, &err), KVLM_OK);
    kvlm_generate_params gp = kvlm_generate_default_params();
    gp.sampling.temperature = 0;
    gp.max_tokens = 40;
    kvlm_generate_result r;
    assert_int_equal(kvlm_generate(s, "Once upon a time", &gp, NULL, NULL, &r, &err), KVLM_OK);
    assert_true(r.n_completion > 5);

    kvlm_text_stream *ts = NULL;
    assert_int_equal(kvlm_text_stream_new(m, NULL, 0, &ts, &err), KVLM_OK);
    size_t total = 0;
    char *acc = calloc(1, r.text_len + 64);
    for (int32_t i = 0; i < r.n_completion; i++) {
        const char *t;
        size_t n;
        bool stopped;
        assert_int_equal(kvlm_text_stream_push(ts, r.tokens[i], false, &t, &n, &stopped, &err), KVLM_OK);
        assert_false(stopped);
        assert_true(total + n <= r.text_len);
        memcpy(acc + total, t, n);
        total += n;
    }
    const char *t;
    size_t n;
    assert_int_equal(kvlm_text_stream_push(ts, -1, true, &t, &n, NULL, &err), KVLM_OK);
    memcpy(acc + total, t, n);
    total += n;
    assert_int_equal(total, r.text_len);
    assert_memory_equal(acc, r.text, r.text_len);
    size_t tl;
    const char *all = kvlm_text_stream_text(ts, &tl);
    assert_int_equal(tl, r.text_len);
    assert_memory_equal(all, r.text, tl);

    /* a stop string taken from the middle of that text: the stream stops
     * where kvlm_generate with the same stop string stops */
    char stop[8];
    size_t mid = r.text_len / 2;
    memcpy(stop, r.text + mid, 3);
    stop[3] = '\0';
    const char *stops[] = {stop};
    kvlm_text_stream *ts2 = NULL;
    assert_int_equal(kvlm_text_stream_new(m, stops, 1, &ts2, &err), KVLM_OK);
    bool stopped = false;
    for (int32_t i = 0; i < r.n_completion && !stopped; i++)
        assert_int_equal(kvlm_text_stream_push(ts2, r.tokens[i], false, &t, &n, &stopped, &err), KVLM_OK);
    assert_true(stopped);
    /* after a stop nothing more comes out */
    assert_int_equal(kvlm_text_stream_push(ts2, r.tokens[0], true, &t, &n, &stopped, &err), KVLM_OK);
    assert_int_equal(n, 0);
    assert_true(stopped);
    const char *s2 = kvlm_text_stream_text(ts2, &tl);
    assert_null(strstr(s2, stop));
    assert_memory_equal(s2, r.text, tl);
    assert_memory_equal(r.text + tl, stop, 3); /* the text stopped right at the first match */
    kvlm_generate_result r2;
    gp.stop = stops;
    gp.n_stop = 1;
    assert_int_equal(kvlm_generate(s, "Once upon a time", &gp, NULL, NULL, &r2, &err), KVLM_OK);
    assert_int_equal(r2.finish, KVLM_FINISH_STOP);
    assert_int_equal(r2.text_len, tl);
    assert_memory_equal(r2.text, s2, tl);

    kvlm_generate_result_free(&r2);
    kvlm_text_stream_free(ts2);
    kvlm_text_stream_free(ts);
    free(acc);
    kvlm_generate_result_free(&r);
    kvlm_session_free(s);
    kvlm_model_free(m);
}

/* UTF-8 through real byte tokens: "é" tokenized with byte fallback arrives
 * in pieces and is emitted whole. */
static void test_stream_utf8_tokens(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    kvlm_error err;
    kvlm_token toks[64];
    const char *text = "caf\xc3\xa9 \xe2\x82\xac";
    int32_t nt = kvlm_tokenize(m, text, strlen(text), toks, 64, false, false);
    assert_true(nt > 0);
    kvlm_text_stream *ts = NULL;
    assert_int_equal(kvlm_text_stream_new(m, NULL, 0, &ts, &err), KVLM_OK);
    char acc[128];
    size_t total = 0;
    for (int32_t i = 0; i < nt; i++) {
        const char *t;
        size_t n;
        assert_int_equal(kvlm_text_stream_push(ts, toks[i], false, &t, &n, NULL, &err), KVLM_OK);
        memcpy(acc + total, t, n);
        total += n;
        acc[total] = '\0';
        /* what came out so far is a prefix of the text (SPM's leading space aside) made of whole characters */
        size_t off = acc[0] == ' ' && text[0] != ' ' ? 1 : 0;
        if (total > off) assert_memory_equal(acc + off, text, total - off);
        total -= off;
        assert_true(text[total] == '\0' || ((unsigned char)text[total] & 0xc0) != 0x80);
        total += off;
    }
    const char *t;
    size_t n;
    assert_int_equal(kvlm_text_stream_push(ts, -1, true, &t, &n, NULL, &err), KVLM_OK);
    memcpy(acc + total, t, n);
    total += n;
    /* SPM may prefix a space; the text is what the pieces spell */
    acc[total] = '\0';
    assert_non_null(strstr(acc, "caf\xc3\xa9"));
    assert_non_null(strstr(acc, "\xe2\x82\xac"));
    kvlm_text_stream_free(ts);
    kvlm_model_free(m);
}

static void test_stream_args(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    kvlm_error err;
    kvlm_text_stream *ts = (kvlm_text_stream *)1;
    const char *bad[] = {""};
    assert_int_equal(kvlm_text_stream_new(m, bad, 1, &ts, &err), KVLM_ERR_INVALID_ARG);
    assert_null(ts);
    assert_int_equal(kvlm_text_stream_new(NULL, NULL, 0, &ts, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kvlm_text_stream_new(m, NULL, 65, &ts, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kvlm_text_stream_new(m, NULL, 0, &ts, &err), KVLM_OK);
    assert_int_equal(kvlm_text_stream_push(ts, kvlm_n_vocab(m), false, NULL, NULL, NULL, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kvlm_text_stream_push(NULL, 1, false, NULL, NULL, NULL, &err), KVLM_ERR_INVALID_ARG);
    kvlm_text_stream_free(ts);
    kvlm_text_stream_free(NULL);
    kvlm_model_free(m);
}

/* A token whose text is longer than the stream's 256-byte buffer (gpt-neox's run of 512 spaces, token
 * 19979): it comes through whole, the same bytes as kvlm_token_to_piece gives, around other tokens. */
static void test_stream_long_piece(void **state) {
    (void)state;
    kvlm_model_params mp = kvlm_model_default_params();
    mp.vocab_only = true;
    kvlm_model *m = NULL;
    kvlm_error err;
    if (kvlm_model_load(KVLM_MODELS_DIR "/vocab/ggml-vocab-gpt-neox.gguf", &mp, &m, &err) != KVLM_OK)
        fail_msg("load: %s", err.msg);
    char want[2048];
    const int32_t need = -kvlm_token_to_piece(m, 19979, want, 256, false);
    assert_true(need > 256);
    assert_int_equal(kvlm_token_to_piece(m, 19979, want, need, false), need);
    const int32_t ha = kvlm_token_to_piece(m, 66, want + need, 64, false); /* a short one after it */
    assert_true(ha > 0);
    kvlm_text_stream *ts = NULL;
    assert_int_equal(kvlm_text_stream_new(m, NULL, 0, &ts, &err), KVLM_OK);
    const char *text;
    size_t len;
    bool stopped;
    assert_int_equal(kvlm_text_stream_push(ts, 19979, false, &text, &len, &stopped, &err), KVLM_OK);
    assert_int_equal(kvlm_text_stream_push(ts, 66, true, &text, &len, &stopped, &err), KVLM_OK);
    assert_false(stopped);
    size_t all_len;
    const char *all = kvlm_text_stream_text(ts, &all_len);
    assert_int_equal(all_len, (size_t)(need + ha));
    assert_memory_equal(all, want, all_len);
    kvlm_text_stream_free(ts);
    kvlm_model_free(m);
}

static void test_logprobs_reference(void **state) {
    (void)state;
    enum { N = 1000, TOP = 5 };
    float *lg = malloc(N * sizeof *lg);
    unsigned x = 12345;
    for (int i = 0; i < N; i++) {
        x = x * 1103515245u + 12345u;
        lg[i] = (float)((x >> 8) % 20000) / 1000.0f - 10.0f;
    }
    lg[17] = 15.0f;
    lg[400] = 14.0f;
    lg[401] = 14.0f; /* tie: the lower id first */
    long double mx = lg[17], sum = 0;
    for (int i = 0; i < N; i++) sum += expl((long double)lg[i] - mx);
    float lp;
    kvlm_token top[TOP];
    float toplp[TOP];
    kvlm_error err;
    assert_int_equal(kvlm_logprobs(lg, N, 3, &lp, TOP, top, toplp, &err), KVLM_OK);
    double ref3 = (double)((long double)lg[3] - mx - logl(sum));
    assert_true(fabs(lp - ref3) < 1e-5);
    assert_int_equal(top[0], 17);
    assert_int_equal(top[1], 400);
    assert_int_equal(top[2], 401);
    /* the rest of the top list: the largest remaining logits, by a plain scan */
    for (int k = 3; k < TOP; k++) {
        int best = -1;
        for (int i = 0; i < N; i++) {
            bool used = false;
            for (int j = 0; j < k; j++) used |= top[j] == i;
            if (!used && (best < 0 || lg[i] > lg[best])) best = i;
        }
        assert_int_equal(top[k], best);
    }
    double psum = 0;
    for (int k = 0; k < TOP; k++) {
        assert_true(toplp[k] <= 0);
        if (k) assert_true(toplp[k] <= toplp[k - 1]);
        double ref = (double)((long double)lg[top[k]] - mx - logl(sum));
        assert_true(fabs(toplp[k] - ref) < 1e-5);
        psum += exp(toplp[k]);
    }
    assert_true(psum <= 1.0 + 1e-6);
    /* arguments */
    assert_int_equal(kvlm_logprobs(lg, N, N, &lp, 0, NULL, NULL, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kvlm_logprobs(lg, N, 0, NULL, N + 1, top, toplp, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kvlm_logprobs(lg, N, 0, NULL, 2, NULL, NULL, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kvlm_logprobs(NULL, N, 0, &lp, 0, NULL, NULL, &err), KVLM_ERR_INVALID_ARG);
    lg[5] = NAN;
    assert_int_equal(kvlm_logprobs(lg, N, 0, &lp, 0, NULL, NULL, &err), KVLM_ERR_INVALID_ARG);
    free(lg);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_matches_generate),
        cmocka_unit_test(test_stream_utf8_tokens),
        cmocka_unit_test(test_stream_args),
        cmocka_unit_test(test_stream_long_piece),
        cmocka_unit_test(test_logprobs_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
