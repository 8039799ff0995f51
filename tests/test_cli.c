/* End-to-end tests of the kvlm command-line tool. */
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
#include "test_util.h"

#define KVLM KVLM_BIN_DIR "/kvlm"
#define MODELS KVLM_MODELS_DIR

/* Runs cmd, captures stdout (and stderr when merge), returns the exit status. */
static int run(const char *cmd, char *out, size_t cap) {
    FILE *fp = popen(cmd, "r");
    assert_non_null(fp);
    size_t n = fread(out, 1, cap - 1, fp);
    out[n] = '\0';
    int st = pclose(fp);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char buf[1 << 20];

static void join_ids(const int32_t *ids, int n, char *dst, size_t cap) {
    size_t o = 0;
    for (int i = 0; i < n && o + 16 < cap; i++) o += (size_t)snprintf(dst + o, cap - o, i ? " %d" : "%d", ids[i]);
}

/* "[1, 2, 3]", as llama-tokenize --ids prints them */
static void list_ids(const int32_t *ids, int n, char *dst, size_t cap) {
    size_t o = (size_t)snprintf(dst, cap, "[");
    for (int i = 0; i < n && o + 16 < cap; i++) o += (size_t)snprintf(dst + o, cap - o, i ? ", %d" : "%d", ids[i]);
    snprintf(dst + o, cap - o, "]");
}

/* eval --tokens teacher-forces a golden's sequence and reproduces its logits. */
static void test_eval_dump_logits(void **state) {
    (void)state;
    const char *stem = MODELS "/goldens/aidreams260K-f32.robot.g32.mainline";
    char txt[512], lg[512];
    snprintf(txt, sizeof txt, "%s.txt", stem);
    snprintf(lg, sizeof lg, "%s.lgts", stem);
    int32_t ids[256];
    int np = golden_ids(txt, "# prompt tokens:", ids, 256);
    int ng = golden_ids(txt, "# generated tokens:", ids + np, 256 - np);
    assert_true(np > 0 && ng > 0);
    char seq[4096], cmd[8192];
    join_ids(ids, np + ng, seq, sizeof seq);
    char out[] = "/tmp/kvlm-test-cli-XXXXXX";
    int fd = mkstemp(out);
    assert_true(fd >= 0);
    close(fd);
    snprintf(cmd, sizeof cmd, "%s eval -m %s/llama/aidreams260K-f32.gguf --tokens \"%s\" --dump-logits %s", KVLM,
             MODELS, seq, out);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    lgts ours, gold;
    assert_true(lgts_load(out, &ours));
    assert_true(lgts_load(lg, &gold));
    assert_int_equal(ours.n_vocab, gold.n_vocab);
    assert_int_equal(ours.n_rows, np + ng);
    for (int32_t r = 0; r < gold.n_rows; r++) {
        const lgts_row *g = &gold.rows[r], *o = &ours.rows[g->pos];
        assert_int_equal(o->pos, g->pos);
        assert_int_equal(o->token, g->token);
        for (int32_t i = 0; i < gold.n_vocab; i++)
            if (!(fabsf(o->logits[i] - g->logits[i]) <= 1e-3f))
                fail_msg("pos %d token %d: %g vs %g", g->pos, i, o->logits[i], g->logits[i]);
    }
    lgts_free(&ours);
    lgts_free(&gold);
    unlink(out);
}

/* eval from text: tokenization + free-running greedy equal llama.cpp's ids. */
static void test_eval_greedy_from_text(void **state) {
    (void)state;
    const char *cases[][3] = {
        {"aidreams260K-f32.robot.g32.mainline", "Once upon a time, there was a little robot", "f32"},
        {"aidreams260K-f16.fox.g32.mainline", "The quick brown fox jumps over the lazy dog.", "f16"},
    };
    for (size_t c = 0; c < 2; c++) {
        char txt[512], cmd[2048], want[4096];
        snprintf(txt, sizeof txt, MODELS "/goldens/%s.txt", cases[c][0]);
        int32_t ids[256];
        int ng = golden_ids(txt, "# generated tokens:", ids, 256);
        assert_int_equal(ng, 32);
        join_ids(ids, ng, want, sizeof want);
        snprintf(cmd, sizeof cmd, "%s eval -m %s/llama/aidreams260K-%s.gguf -p '%s' --greedy 32", KVLM, MODELS,
                 cases[c][2], cases[c][1]);
        assert_int_equal(run(cmd, buf, sizeof buf), 0);
        buf[strcspn(buf, "\n")] = '\0';
        assert_string_equal(buf, want);
    }
}

/* tokenize --ids reproduces the golden's prompt tokens (BOS included), as llama-tokenize prints them. */
static void test_tokenize_ids(void **state) {
    (void)state;
    char txt[512], cmd[2048], want[4096];
    snprintf(txt, sizeof txt, MODELS "/goldens/synth15M-q8_0.fox.g32.mainline.txt");
    int32_t ids[64];
    int np = golden_ids(txt, "# prompt tokens:", ids, 64);
    assert_int_equal(np, 13);
    list_ids(ids, np, want, sizeof want);
    snprintf(cmd, sizeof cmd, "%s tokenize -m %s/llama/synth15M-q8_0.gguf -p 'The quick brown fox jumps over the lazy dog.' --ids",
             KVLM, MODELS);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    buf[strcspn(buf, "\n")] = '\0';
    assert_string_equal(buf, want);
    /* special-token text: parsed by default, plain text with --no-parse-special */
    snprintf(cmd, sizeof cmd, "%s tokenize -m %s/vocab/ggml-vocab-llama-spm.gguf -p '<s>' --no-bos --ids", KVLM, MODELS);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    assert_string_equal(buf, "[1]\n");
    snprintf(cmd, sizeof cmd, "%s tokenize -m %s/vocab/ggml-vocab-llama-spm.gguf -p '<s>' --no-bos --no-parse-special --ids",
             KVLM, MODELS);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    assert_string_not_equal(buf, "[1]\n");
    assert_non_null(strchr(buf, ',')); /* several pieces */
}

static void test_run_generates(void **state) {
    (void)state;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s run -m %s/llama/aidreams260K-f32.gguf -p 'Echoes of' -n 24 2>&1", KVLM, MODELS);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    assert_true(strncmp(buf, "Echoes of", 9) == 0);
    assert_true(strlen(buf) > 40);
    assert_non_null(strstr(buf, "prompt:"));
    assert_non_null(strstr(buf, "tokens/s"));
    /* two threads give the same text */
    char one[4096];
    snprintf(cmd, sizeof cmd, "%s run -m %s/llama/synth15M-q8_0.gguf -p 'Hello' -n 16 -t 1 2>/dev/null", KVLM, MODELS);
    assert_int_equal(run(cmd, one, sizeof one), 0);
    snprintf(cmd, sizeof cmd, "%s run -m %s/llama/synth15M-q8_0.gguf -p 'Hello' -n 16 -t 2 2>/dev/null", KVLM, MODELS);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    assert_string_equal(one, buf);
}

static void test_inspect(void **state) {
    (void)state;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s inspect -m %s/llama/synth15M-gqa-q8_0.gguf", KVLM, MODELS);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    assert_non_null(strstr(buf, "architecture   llama"));
    assert_non_null(strstr(buf, "vocabulary     32000"));
    assert_non_null(strstr(buf, "layers         6"));
    assert_non_null(strstr(buf, "heads          6 (kv 2, head dim 48)"));
    assert_non_null(strstr(buf, "q8_0"));
    assert_non_null(strstr(buf, "tied to token embedding"));
}

static void test_errors(void **state) {
    (void)state;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s run -m /nonexistent.gguf -p hi 2>&1", KVLM);
    assert_int_not_equal(run(cmd, buf, sizeof buf), 0);
    assert_non_null(strstr(buf, "error: cannot open '/nonexistent.gguf'"));
    snprintf(cmd, sizeof cmd, "%s eval -m %s/llama/aidreams260K-f32.gguf --tokens '1 99999' 2>&1", KVLM, MODELS);
    assert_int_not_equal(run(cmd, buf, sizeof buf), 0);
    assert_non_null(strstr(buf, "outside the vocabulary"));
    snprintf(cmd, sizeof cmd, "%s eval -m %s/llama/aidreams260K-f32.gguf --tokens '1 2 3' -c 2 2>&1", KVLM, MODELS);
    assert_int_not_equal(run(cmd, buf, sizeof buf), 0);
    assert_non_null(strstr(buf, "exceed the context"));
    snprintf(cmd, sizeof cmd, "%s run --bogus 2>&1", KVLM);
    assert_int_equal(run(cmd, buf, sizeof buf), 2);
    assert_non_null(strstr(buf, "unknown flag '--bogus'"));
    /* a vocabulary-only GGUF is not a model */
    snprintf(cmd, sizeof cmd, "%s run -m %s/vocab/ggml-vocab-llama-spm.gguf -p hi 2>&1", KVLM, MODELS);
    assert_int_not_equal(run(cmd, buf, sizeof buf), 0);
    assert_non_null(strstr(buf, "error: "));
}

/* eval --chunk K writes byte-identical logit files for K = 1, 7 and the whole prompt, at 1 and 2 threads. */
static void test_eval_chunk_identical(void **state) {
    (void)state;
    const char *models[] = {"aidreams260K-f32.gguf", "synth15M-q8_0.gguf"};
    for (int mi = 0; mi < 2; mi++) {
        char first[64] = "", cmd[1024], out[64];
        const int chunks[3] = {0, 1, 7};
        for (int t = 1; t <= 2; t++)
            for (int c = 0; c < 3; c++) {
                snprintf(out, sizeof out, "/tmp/kvlm-chunk-%d-%d-%d-%d.lgts", (int)getpid(), mi, t, chunks[c]);
                snprintf(cmd, sizeof cmd,
                         "%s eval -m %s/llama/%s -p 'Once upon a time, there was a little robot who' --greedy 8 "
                         "--chunk %d -t %d --dump-logits %s",
                         KVLM, MODELS, models[mi], chunks[c], t, out);
                assert_int_equal(run(cmd, buf, sizeof buf), 0);
                if (!first[0]) snprintf(first, sizeof first, "%s", out);
                else if (!files_equal(first, out)) fail_msg("%s differs from %s", out, first);
            }
        for (int t = 1; t <= 2; t++)
            for (int c = 0; c < 3; c++) {
                snprintf(out, sizeof out, "/tmp/kvlm-chunk-%d-%d-%d-%d.lgts", (int)getpid(), mi, t, chunks[c]);
                unlink(out);
            }
    }
}

/* The last line of stderr is one JSON object with the statistics. */
static const char *last_line(char *s) {
    size_t n = strlen(s);
    while (n && s[n - 1] == '\n') s[--n] = '\0';
    char *nl = strrchr(s, '\n');
    return nl ? nl + 1 : s;
}

static long json_int(const char *json, const char *key) {
    char k[64];
    snprintf(k, sizeof k, "\"%s\":", key);
    const char *p = strstr(json, k);
    if (!p) fail_msg("no key %s in %s", key, json);
    return strtol(p + strlen(k), NULL, 10);
}

static void test_run_session_and_stats(void **state) {
    (void)state;
    char cmd[1024], ses[64];
    tmp_path(ses, sizeof ses, "run", ".ses");
    unlink(ses);
    snprintf(cmd, sizeof cmd, "%s run -m %s/llama/aidreams260K-f32.gguf -p 'Echoes of vectors' -n 8 --session %s --kv-stats 2>&1 >/dev/null",
             KVLM, MODELS, ses);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    const char *js = last_line(buf);
    assert_true(js[0] == '{');
    const char *keys[] = {"tokens", "capacity", "bytes", "bytes_f32_equivalent", "hits", "misses", "hit_rate",
                          "pages_shared", "evictions", "compressions", "bytes_saved", "growth_events", "growth_ms_max"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        char k[64];
        snprintf(k, sizeof k, "\"%s\":", keys[i]);
        if (!strstr(js, k)) fail_msg("--kv-stats lacks %s: %s", keys[i], js);
    }
    assert_int_equal(json_int(js, "hits"), 0);
    /* the second run loads the session and reuses the common prefix */
    snprintf(cmd, sizeof cmd, "%s run -m %s/llama/aidreams260K-f32.gguf -p 'Echoes of vectors unfold' -n 8 --session %s --kv-stats 2>&1 >/dev/null",
             KVLM, MODELS, ses);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    assert_non_null(strstr(buf, "cached"));
    js = last_line(buf);
    assert_true(json_int(js, "hits") >= 5);
    unlink(ses);
}

/* Seeded sampling is reproducible across processes; stop strings are never printed. */
static void test_run_sampling(void **state) {
    (void)state;
    char cmd[1024], a[4096];
    snprintf(cmd, sizeof cmd, "%s run -m %s/llama/aidreams260K-f32.gguf -p 'Echoes' -n 40 --temp 0.9 --top-k 40 --top-p 0.95 --seed 7 2>/dev/null",
             KVLM, MODELS);
    assert_int_equal(run(cmd, a, sizeof a), 0);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    assert_string_equal(a, buf);
    snprintf(cmd, sizeof cmd, "%s run -m %s/llama/aidreams260K-f32.gguf -p 'Echoes' -n 40 --temp 0.9 --seed 8 2>/dev/null",
             KVLM, MODELS);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    assert_string_not_equal(a, buf);
    /* greedy text, then the same with a stop string taken from its middle */
    char full[4096];
    snprintf(cmd, sizeof cmd, "%s run -m %s/llama/aidreams260K-f32.gguf -p 'Once upon a time, there was a little robot' -n 32 2>/dev/null",
             KVLM, MODELS);
    assert_int_equal(run(cmd, full, sizeof full), 0);
    const char *at = strstr(full, "sification");
    assert_non_null(at);
    snprintf(cmd, sizeof cmd, "%s run -m %s/llama/aidreams260K-f32.gguf -p 'Once upon a time, there was a little robot' -n 32 --stop sification 2>&1",
             KVLM, MODELS);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    assert_true(strncmp(buf, full, (size_t)(at - full)) == 0);
    assert_null(strstr(buf, "sific"));
    assert_non_null(strstr(buf, "finish: stop"));
}

/* kvlm chat through a pipe: two turns, the second reuses the first turn's cache. */
static void test_chat_pipe(void **state) {
    (void)state;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "printf 'Hello there\\nHow are you\\n/quit\\n' | %s chat -m %s/llama/aidreams260K-f32.gguf -n 16 --kv-stats 2>&1",
             KVLM, MODELS);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    /* two stats lines, one per turn */
    char *first = strstr(buf, "{\"tokens\"");
    assert_non_null(first);
    char *second = strstr(first + 1, "{\"tokens\"");
    assert_non_null(second);
    assert_int_equal(json_int(first, "hits"), 0);
    assert_true(json_int(second, "hits") > 10); /* the first turn's prompt and answer were reused */
}

/* Every overflow policy through run: a short prompt past a tiny context, and a prompt (1402 tokens)
 * many times longer than the context; --overflow error refuses the long one clearly. */
static void test_run_overflow_policies(void **state) {
    (void)state;
    char cmd[2048], path[128];
    tmp_path(path, sizeof path, "long", ".txt");
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    for (int i = 0; i < 40; i++) fputs("Once upon a time there was a little girl named Lily. ", fp);
    fclose(fp);
    const char *pols[] = {"shift", "sliding", "ring"};
    for (int p = 0; p < 3; p++) {
        snprintf(cmd, sizeof cmd, "%s run -m %s/llama/aidreams260K-f32.gguf -p 'Once upon' -n 40 -c %d --overflow %s "
                 "--ignore-eos --kv-stats 2>&1", KVLM, MODELS, p == 1 ? 64 : 32, pols[p]);
        if (run(cmd, buf, sizeof buf) != 0) fail_msg("%s: %s", cmd, buf);
        assert_non_null(strstr(buf, "generation: 40 tokens"));
        const int ctxs[] = {32, 64, 100};
        for (int c = 0; c < 3; c++) {
            if (p == 1 && ctxs[c] == 32) continue; /* 4 sinks and a page do not fit in 32 */
            snprintf(cmd, sizeof cmd, "%s run -m %s/llama/aidreams260K-f32.gguf -f %s -n 10 -c %d --overflow %s "
                     "--ignore-eos --kv-stats 2>&1", KVLM, MODELS, path, ctxs[c], pols[p]);
            if (run(cmd, buf, sizeof buf) != 0) fail_msg("%s: %s", cmd, buf);
            const char *pr = strstr(buf, "prompt: ");
            assert_non_null(pr);
            assert_int_equal(atoi(pr + 8), 1402);
            assert_non_null(strstr(buf, "generation: 10 tokens"));
            const char *js = strstr(buf, "{\"tokens\"");
            assert_non_null(js);
            /* the pool holds the context (a ring: its window plus a page of slack), no more */
            const long long cap = json_int(js, "capacity");
            const long long want = p == 2 ? (ctxs[c] + 32 + 31) / 32 * 32 : (ctxs[c] + 31) / 32 * 32;
            if (cap > want) fail_msg("%s: capacity %lld > %lld", cmd, cap, want);
            if (p < 2) assert_true(json_int(js, "shifts") > 0);
        }
    }
    snprintf(cmd, sizeof cmd, "%s run -m %s/llama/aidreams260K-f32.gguf -f %s -n 10 -c 64 2>&1", KVLM, MODELS, path);
    assert_int_equal(run(cmd, buf, sizeof buf), 1);
    assert_non_null(strstr(buf, "the prompt has 1402 tokens, more than the context of 64"));
    unlink(path);
}

/* Integer flags say what they accept; an error ends the echoed prompt's line first. */
static void test_cli_numbers_and_errors(void **state) {
    (void)state;
    char cmd[1024];
    const char *cases[][3] = {
        {"-n", "2147483647", "-n takes an integer in -1..16777216, got '2147483647'"},
        {"-n", "-2", "-n takes an integer in -1..16777216, got '-2'"},
        {"-c", "99999999999", "-c takes an integer in 0..16777216, got '99999999999'"},
        {"-t", "0", "-t takes an integer in 1..256, got '0'"},
        {"--page-tokens", "8", "--page-tokens takes an integer in 16..256, got '8'"},
        {"--keep", "x", "--keep takes an integer in 0..16777216, got 'x'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s run -m %s/llama/aidreams260K-f32.gguf -p Once %s %s 2>&1", KVLM, MODELS,
                 cases[i][0], cases[i][1]);
        assert_int_equal(run(cmd, buf, sizeof buf), 2);
        if (!strstr(buf, cases[i][2])) fail_msg("%s: %s", cmd, buf);
    }
    /* the largest -n is taken */
    snprintf(cmd, sizeof cmd, "%s run -m %s/llama/aidreams260K-f32.gguf -p Once -n 16777216 -c 16 2>&1", KVLM, MODELS);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    /* an error after the echoed prompt starts on a line of its own */
    snprintf(cmd, sizeof cmd, "%s run -m %s/llama/aidreams260K-f32.gguf -p 'Once upon' -c 2 2>&1", KVLM, MODELS);
    assert_int_equal(run(cmd, buf, sizeof buf), 1);
    assert_null(strstr(buf, "uponerror"));
    assert_non_null(strstr(buf, "Once upon\nerror: "));
}

/* A chat keeps working turn after turn at a full context: by default it shifts, keeping the system
 * prompt; later turns send only what they add; /reset after shifts starts over. Other policies too. */
static void test_chat_full_context(void **state) {
    (void)state;
    char cmd[2048];
    const char *turns = "Hello there\\nHow are you\\nTell me a story about a cat\\nWhat happened next\\n/reset\\n"
                        "And then\\nThe end\\n/quit\\n";
    const char *flags[] = {"", "--overflow sliding", "--overflow ring", "--overflow shift --keep 2"};
    for (int f = 0; f < 4; f++) {
        snprintf(cmd, sizeof cmd, "printf '%s' | %s chat -m %s/llama/aidreams260K-f32.gguf -c 64 %s -v --kv-stats "
                 "--system 'You are a storyteller.' 2>&1", turns, KVLM, MODELS, flags[f]);
        if (run(cmd, buf, sizeof buf) != 0) fail_msg("%s: %s", cmd, buf);
        if (strstr(buf, "error:")) fail_msg("%s: %s", cmd, buf);
        int answers = 0;
        for (const char *p = buf; (p = strstr(p, " generated, ")) != NULL; p++) answers++;
        if (answers != 6) fail_msg("%s: %d answers: %s", cmd, answers, buf);
        assert_non_null(strstr(buf, "(reset)"));
        /* the context was full and shifted (the first answer alone fills it) */
        const char *js = strstr(buf, "{\"tokens\"");
        assert_non_null(js);
        if (f != 2) {
            const char *last = js;
            while ((js = strstr(last + 1, "{\"tokens\"")) != NULL) last = js;
            assert_true(json_int(last, "shifts") > 0);
            assert_true(json_int(last, "capacity") <= 64);
        }
    }
    /* the system prompt is what a shift keeps by default */
    snprintf(cmd, sizeof cmd, "printf 'Hi\\n/quit\\n' | %s chat -m %s/llama/aidreams260K-f32.gguf -c 64 -v "
             "--system 'You are a storyteller.' 2>&1", KVLM, MODELS);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    const char *k = strstr(buf, "context shift keeps the first ");
    assert_non_null(k);
    /* BOS + "System: You are a storyteller.\n" */
    kvlm_model *m = NULL;
    kvlm_error err;
    assert_int_equal(kvlm_model_load(MODELS "/llama/aidreams260K-f32.gguf", NULL, &m, &err), KVLM_OK);
    kvlm_token toks[64];
    const char *sys = "System: You are a storyteller.\n";
    const int32_t nt = kvlm_tokenize(m, sys, strlen(sys), toks, 64, true, true);
    kvlm_model_free(m);
    assert_int_equal(atoi(k + strlen("context shift keeps the first ")), nt);
    /* answers are not cut at 32 tokens by default: until the end of the turn or a context's worth */
    snprintf(cmd, sizeof cmd, "printf 'Hi\\n/quit\\n' | %s chat -m %s/llama/aidreams260K-f32.gguf -c 128 -v "
             "--ignore-eos 2>&1", KVLM, MODELS);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    assert_non_null(strstr(buf, ", 128 generated, length]"));
    snprintf(cmd, sizeof cmd, "printf 'Hi\\n/quit\\n' | %s chat -m %s/llama/aidreams260K-f32.gguf -c 128 -v -n 7 "
             "--ignore-eos 2>&1", KVLM, MODELS);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    assert_non_null(strstr(buf, ", 7 generated, length]"));
}

static void test_perplexity_and_bench(void **state) {
    (void)state;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s perplexity -m %s/llama/aidreams260K-f32.gguf -f %s/bench/data/aidreams-sample.txt -c 128 --chunks 4 2>/dev/null",
             KVLM, MODELS, KVLM_SOURCE_DIR);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    const char *p = strstr(buf, "PPL = ");
    assert_non_null(p);
    double ppl = strtod(p + 6, NULL);
    assert_true(ppl > 1.5 && ppl < 20.0); /* a trained model on its own samples */
    snprintf(cmd, sizeof cmd, "%s bench -m %s/llama/aidreams260K-f32.gguf -p 32 -n 8 -r 2 -o json", KVLM, MODELS);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    assert_true(buf[0] == '[');
    const char *keys[] = {"\"n_prompt\": 32", "\"n_gen\": 8", "\"n_threads\": 1", "\"avg_ts\":", "\"stddev_ts\":"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!strstr(buf, keys[i])) fail_msg("bench json lacks %s: %s", keys[i], buf);
    snprintf(cmd, sizeof cmd, "%s bench -m %s/llama/aidreams260K-f32.gguf -p 32 -n 8 -r 2", KVLM, MODELS);
    assert_int_equal(run(cmd, buf, sizeof buf), 0);
    assert_non_null(strstr(buf, " pp32 |"));
    assert_non_null(strstr(buf, " tg8 |"));
}

/* Whether /proc/cpuinfo's first "flags" line lists every flag of want (space-separated). */
static bool cpu_has_flags(const char *want) {
    FILE *fp = fopen("/proc/cpuinfo", "r");
    if (!fp) return false;
    static char line[1 << 14];
    bool found = false, all = false;
    while (!found && fgets(line, sizeof line, fp))
        if (strncmp(line, "flags", 5) == 0) found = true;
    fclose(fp);
    if (!found) return false;
    char w[256];
    snprintf(w, sizeof w, "%s", want);
    all = true;
    for (char *tok = strtok(w, " "); tok; tok = strtok(NULL, " ")) {
        char pat[64];
        snprintf(pat, sizeof pat, " %s", tok);
        const char *p = line;
        bool hit = false;
        while ((p = strstr(p, pat)) != NULL) {
            char next = p[strlen(pat)];
            if (next == ' ' || next == '\n' || next == '\0') { hit = true; break; }
            p++;
        }
        all = all && hit;
    }
    return all;
}

/* The header's version macros, kvlm_version() and kvlm --version (version, commit, compiler, and
 * the kernels for this CPU, checked against /proc/cpuinfo's flags). */
static void test_version(void **state) {
    (void)state;
    char want[64];
    snprintf(want, sizeof want, "%d.%d.%d", KVLM_VERSION_MAJOR, KVLM_VERSION_MINOR, KVLM_VERSION_PATCH);
    assert_string_equal(want, KVLM_VERSION_STRING);
    assert_string_equal(kvlm_version(), KVLM_VERSION_STRING);
    assert_int_equal(run(KVLM " --version 2>&1", buf, sizeof buf), 0);
    char line[128];
    snprintf(line, sizeof line, "kvlm %s\n", KVLM_VERSION_STRING);
    assert_true(strncmp(buf, line, strlen(line)) == 0);
    const char *c = strstr(buf, "\ncommit: ");
    assert_non_null(c);
    c += strlen("\ncommit: ");
    size_t hex = strspn(c, "0123456789abcdef");
    assert_true((hex >= 7 && c[hex] == ' ') || strncmp(c, "unknown", 7) == 0);
    assert_true(strstr(buf, "\ncompiler: gcc ") || strstr(buf, "\ncompiler: clang "));
    const char *cpu = strstr(buf, "\ncpu: ");
    assert_non_null(cpu);
    cpu += strlen("\ncpu: ");
    assert_true(strncmp(cpu, kvlm_cpu_features(), strlen(kvlm_cpu_features())) == 0);
#if defined(__x86_64__)
    const char *isa = cpu_has_flags("avx512f avx512bw avx512dq avx512vl avx512_vnni avx2 fma f16c") ? "avx512 "
                      : cpu_has_flags("avx2 fma f16c")                                             ? "avx2 "
                                                                                                   : "scalar ";
    assert_true(strncmp(cpu, isa, strlen(isa)) == 0);
#endif
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_eval_dump_logits), cmocka_unit_test(test_eval_greedy_from_text),
        cmocka_unit_test(test_tokenize_ids),     cmocka_unit_test(test_run_generates),
        cmocka_unit_test(test_inspect),          cmocka_unit_test(test_errors),
        cmocka_unit_test(test_eval_chunk_identical), cmocka_unit_test(test_run_session_and_stats),
        cmocka_unit_test(test_run_sampling),     cmocka_unit_test(test_chat_pipe),
        cmocka_unit_test(test_perplexity_and_bench), cmocka_unit_test(test_run_overflow_policies),
        cmocka_unit_test(test_cli_numbers_and_errors), cmocka_unit_test(test_chat_full_context),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
