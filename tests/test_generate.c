/* Generation: streaming text (UTF-8 hold-back, stop strings across tokens),
 * stop conditions, cancellation, deadlines, seeded reproducibility. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "kvlm.h"
#include "api/textstream.h"
#include "test_util.h"

#define AIDREAMS KVLM_MODELS_DIR "/llama/aidreams260K-f32.gguf"
#define SYNTH KVLM_MODELS_DIR "/llama/synth15M-q8_0.gguf"

/* ------------------------------------------------------------ the text stream */

static void push(kv_stream *st, const char *bytes, int expect_stop, const char *expect_chunk) {
    int r = kv_stream_push(st, bytes, strlen(bytes), false);
    assert_int_equal(r, expect_stop);
    assert_int_equal(st->chunk.n, strlen(expect_chunk));
    if (st->chunk.n) assert_memory_equal(st->chunk.data, expect_chunk, st->chunk.n);
}

static void test_stream_utf8(void **state) {
    (void)state;
    kv_stream st = {0};
    /* "é" = C3 A9 arriving one byte per token: held back, then emitted whole */
    push(&st, "a\xc3", 0, "a");
    push(&st, "\xa9", 0, "\xc3\xa9");
    /* a 4-byte emoji split 1 + 2 + 1 */
    push(&st, "\xf0", 0, "");
    push(&st, "\x9f\x98", 0, "");
    push(&st, "\x80!", 0, "\xf0\x9f\x98\x80!");
    /* an invalid byte becomes U+FFFD; a stray continuation too */
    push(&st, "\xff" "b", 0, "\xef\xbf\xbd" "b");
    push(&st, "\x80", 0, "\xef\xbf\xbd");
    /* an incomplete character at the end is flushed as U+FFFD */
    push(&st, "\xe2\x82", 0, "");
    assert_int_equal(kv_stream_push(&st, "", 0, true), 0);
    assert_string_equal(st.chunk.data, "\xef\xbf\xbd");
    assert_string_equal(st.emitted.data, "a\xc3\xa9\xf0\x9f\x98\x80!\xef\xbf\xbd" "b\xef\xbf\xbd\xef\xbf\xbd");
    free(st.pending.data);
    free(st.emitted.data);
    free(st.chunk.data);
}

static void test_stream_stop_strings(void **state) {
    (void)state;
    const char *stops[] = {"END", "\n\n"};
    kv_stream st = {.stop = stops, .n_stop = 2};
    push(&st, "Hello E", 0, "Hello "); /* "E" may start "END": held */
    push(&st, "x", 0, "Ex");         /* it did not */
    push(&st, " E", 0, " ");
    push(&st, "N", 0, "");
    push(&st, "D and more", 1, "");   /* "END" matched across three tokens: nothing of it is emitted */
    assert_string_equal(st.emitted.data, "Hello Ex ");
    free(st.pending.data);
    free(st.emitted.data);
    free(st.chunk.data);
    kv_stream s2 = {.stop = stops, .n_stop = 2};
    push(&s2, "line\n", 0, "line");
    push(&s2, "\nnext", 1, "");
    assert_string_equal(s2.emitted.data, "line");
    free(s2.pending.data);
    free(s2.emitted.data);
    free(s2.chunk.data);
}

/* ------------------------------------------------------------ through the model */

typedef struct collect {
    char text[8192];
    size_t n;
    int calls;
    int cancel_at;
    int stop_at;
    kvlm_session *s;
} collect;

static int on_token(const char *text, size_t len, kvlm_token tok, void *ud) {
    collect *c = ud;
    (void)tok;
    if (c->n + len < sizeof c->text) {
        memcpy(c->text + c->n, text, len);
        c->n += len;
        c->text[c->n] = '\0';
    }
    c->calls++;
    if (c->cancel_at && c->calls == c->cancel_at) kvlm_session_cancel(c->s);
    return c->stop_at && c->calls == c->stop_at;
}

static kvlm_generate_params greedy(int max) {
    kvlm_generate_params p = kvlm_generate_default_params();
    p.sampling.temperature = 0;
    p.max_tokens = max;
    p.ignore_eos = true;
    return p;
}

static void test_generate_greedy_and_stop(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    kvlm_session *s = session(m, 128);
    kvlm_error err;
    const char *prompt = "Once upon a time, there was a little robot";
    kvlm_generate_params p = greedy(32);
    kvlm_generate_result r;
    collect c = {.s = s};
    assert_int_equal(kvlm_generate(s, prompt, &p, on_token, &c, &r, &err), KVLM_OK);
    assert_int_equal(r.finish, KVLM_FINISH_LENGTH);
    assert_int_equal(r.n_completion, 32);
    assert_int_equal(r.n_prompt, 29);
    assert_string_equal(r.text, c.text);
    /* llama.cpp's greedy ids for this prompt (goldens/aidreams260K-f32.robot.g32.mainline.txt) */
    const kvlm_token want[8] = {448, 429, 465, 438, 340, 431, 338, 353};
    assert_memory_equal(r.tokens, want, sizeof want);
    char full[8192];
    snprintf(full, sizeof full, "%s", r.text);
    kvlm_generate_result_free(&r);

    /* a stop string spanning several short tokens is caught and never emitted */
    const char *at = strstr(full, "ation");
    assert_non_null(at);
    const char *stops[] = {"sification"};
    assert_non_null(strstr(full, stops[0]));
    p.stop = stops;
    p.n_stop = 1;
    collect c2 = {.s = s};
    assert_int_equal(kvlm_generate(s, prompt, &p, on_token, &c2, &r, &err), KVLM_OK);
    assert_int_equal(r.finish, KVLM_FINISH_STOP);
    size_t keep = (size_t)(strstr(full, stops[0]) - full);
    assert_int_equal(r.text_len, keep);
    assert_memory_equal(r.text, full, keep);
    assert_string_equal(c2.text, r.text);
    assert_null(strstr(c2.text, "sific"));
    /* the prompt was reused from the cache the second time */
    assert_true(r.n_prompt_cached >= 28);
    kvlm_generate_result_free(&r);

    /* the callback can stop generation */
    p.n_stop = 0;
    collect c3 = {.s = s, .stop_at = 3};
    assert_int_equal(kvlm_generate(s, prompt, &p, on_token, &c3, &r, &err), KVLM_OK);
    assert_int_equal(r.finish, KVLM_FINISH_STOP);
    assert_int_equal(r.n_completion, 3);
    kvlm_generate_result_free(&r);

    /* EOS ends generation with "stop" unless ignored */
    kvlm_logit_bias force_eos = {kvlm_token_eos(m), 1000.0f};
    p.sampling.logit_bias = &force_eos;
    p.sampling.n_logit_bias = 1;
    p.ignore_eos = false;
    assert_int_equal(kvlm_generate(s, prompt, &p, NULL, NULL, &r, &err), KVLM_OK);
    assert_int_equal(r.finish, KVLM_FINISH_STOP);
    assert_int_equal(r.n_completion, 0);
    assert_string_equal(r.text, "");
    kvlm_generate_result_free(&r);
    p.ignore_eos = true;
    p.max_tokens = 4;
    assert_int_equal(kvlm_generate(s, prompt, &p, NULL, NULL, &r, &err), KVLM_OK);
    assert_int_equal(r.finish, KVLM_FINISH_LENGTH);
    assert_int_equal(r.n_completion, 4);
    kvlm_generate_result_free(&r);

    /* the context filling up ends generation with "length" */
    p = greedy(1000);
    assert_int_equal(kvlm_generate(s, prompt, &p, NULL, NULL, &r, &err), KVLM_OK);
    assert_int_equal(r.finish, KVLM_FINISH_LENGTH);
    assert_int_equal(r.n_prompt + r.n_completion, 128 + 1);
    kvlm_generate_result_free(&r);
    kvlm_session_free(s);
    kvlm_model_free(m);
}

static void test_seeded_sampling(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    kvlm_session *s = session(m, 128);
    kvlm_error err;
    kvlm_generate_params p = kvlm_generate_default_params();
    p.sampling.temperature = 1.0f;
    p.sampling.seed = 42;
    p.max_tokens = 40;
    p.ignore_eos = true;
    kvlm_generate_result a, b, c;
    assert_int_equal(kvlm_generate(s, "Echoes", &p, NULL, NULL, &a, &err), KVLM_OK);
    assert_int_equal(kvlm_generate(s, "Echoes", &p, NULL, NULL, &b, &err), KVLM_OK);
    p.sampling.seed = 43;
    assert_int_equal(kvlm_generate(s, "Echoes", &p, NULL, NULL, &c, &err), KVLM_OK);
    assert_int_equal(a.n_completion, 40);
    assert_memory_equal(a.tokens, b.tokens, 40 * sizeof(kvlm_token));
    assert_true(memcmp(a.tokens, c.tokens, 40 * sizeof(kvlm_token)) != 0);
    kvlm_generate_result_free(&a);
    kvlm_generate_result_free(&b);
    kvlm_generate_result_free(&c);
    kvlm_session_free(s);
    kvlm_model_free(m);
}

static void test_cancel_from_callback(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    kvlm_session *s = session(m, 128);
    kvlm_error err;
    kvlm_generate_params p = greedy(100);
    kvlm_generate_result r;
    collect c = {.s = s, .cancel_at = 5};
    assert_int_equal(kvlm_generate(s, "Echoes", &p, on_token, &c, &r, &err), KVLM_OK);
    assert_int_equal(r.finish, KVLM_FINISH_CANCELLED);
    assert_int_equal(r.n_completion, 5); /* ended before the next decode step */
    kvlm_generate_result_free(&r);
    /* a later call is not cancelled by the old request */
    p.max_tokens = 3;
    assert_int_equal(kvlm_generate(s, "Echoes", &p, NULL, NULL, &r, &err), KVLM_OK);
    assert_int_equal(r.finish, KVLM_FINISH_LENGTH);
    kvlm_generate_result_free(&r);
    kvlm_session_free(s);
    kvlm_model_free(m);
}

typedef struct canceller {
    kvlm_session *s;
    atomic_int *calls;
    int seen;
} canceller;

static void *cancel_thread(void *arg) {
    canceller *c = arg;
    while (atomic_load(c->calls) < 3) usleep(1000);
    c->seen = atomic_load(c->calls);
    kvlm_session_cancel(c->s);
    return NULL;
}

static int count_calls(const char *text, size_t len, kvlm_token tok, void *ud) {
    (void)text;
    (void)len;
    (void)tok;
    atomic_fetch_add((atomic_int *)ud, 1);
    return 0;
}

static void test_cancel_from_thread_and_deadline(void **state) {
    (void)state;
    kvlm_model *m = load(SYNTH);
    kvlm_session *s = session(m, 256);
    kvlm_error err;
    kvlm_generate_params p = greedy(200);
    atomic_int calls = 0;
    canceller c = {s, &calls, 0};
    pthread_t th;
    pthread_create(&th, NULL, cancel_thread, &c);
    kvlm_generate_result r;
    assert_int_equal(kvlm_generate(s, "Hello", &p, count_calls, &calls, &r, &err), KVLM_OK);
    pthread_join(th, NULL);
    assert_int_equal(r.finish, KVLM_FINISH_CANCELLED);
    /* at most the step in flight when the flag was set finished after it */
    assert_true(r.n_completion <= c.seen + 1);
    kvlm_generate_result_free(&r);

    p.timeout_s = 0.05;
    p.max_tokens = 100000;
    assert_int_equal(kvlm_generate(s, "Hello", &p, NULL, NULL, &r, &err), KVLM_OK);
    assert_int_equal(r.finish, KVLM_FINISH_DEADLINE);
    assert_true(r.n_completion < 250);
    kvlm_generate_result_free(&r);
    kvlm_session_free(s);
    kvlm_model_free(m);
}

static void test_append_mode(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    kvlm_session *s = session(m, 128);
    kvlm_error err;
    kvlm_generate_params p = greedy(5);
    kvlm_generate_result r1, r2;
    assert_int_equal(kvlm_generate(s, "Echoes of", &p, NULL, NULL, &r1, &err), KVLM_OK);
    const int32_t held = kvlm_session_n_past(s);
    p.append = true;
    assert_int_equal(kvlm_generate(s, " the", &p, NULL, NULL, &r2, &err), KVLM_OK);
    assert_int_equal(r2.n_prompt_cached, held); /* nothing recomputed */
    assert_true(r2.n_prompt > held);
    kvlm_generate_result_free(&r1);
    kvlm_generate_result_free(&r2);
    assert_int_equal(kvlm_generate(s, "x", &(kvlm_generate_params){.max_tokens = 1, .n_stop = 1,
                                                                     .stop = (const char *const[]){""}},
                                   NULL, NULL, &r1, &err),
                     KVLM_ERR_INVALID_ARG);
    kvlm_session_free(s);
    kvlm_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_utf8),        cmocka_unit_test(test_stream_stop_strings),
        cmocka_unit_test(test_generate_greedy_and_stop), cmocka_unit_test(test_seeded_sampling),
        cmocka_unit_test(test_cancel_from_callback), cmocka_unit_test(test_cancel_from_thread_and_deadline),
        cmocka_unit_test(test_append_mode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
