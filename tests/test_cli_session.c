/* kvlm run --session and kvlm chat --session through the binary: a file that does not load is not
 * overwritten without --session-overwrite, crafted files are refused instead
 * of crashing the engine, special files and links are refused (without
 * hanging on a FIFO). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "api/session_impl.h"
#include "test_util.h"

#define KVLM KVLM_BIN_DIR "/kvlm"
#define MODEL KVLM_MODELS_DIR "/llama/aidreams260K-f32.gguf"
#define MODEL16 KVLM_MODELS_DIR "/llama/aidreams260K-f16.gguf"

static char out[1 << 16];
static char dir[128];

/* Runs `kvlm run` on the model with the extra flags (stdout and stderr
 * captured together), bounded by timeout(1); returns the exit status (124:
 * timed out, 128+N: killed by signal N). */
static int run_kvlm(const char *model, const char *prompt, const char *flags) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "timeout -s KILL 60 %s run -m %s -p '%s' -n 6 %s 2>&1", KVLM, model, prompt, flags);
    FILE *fp = popen(cmd, "r");
    assert_non_null(fp);
    size_t n = fread(out, 1, sizeof out - 1, fp);
    out[n] = '\0';
    int st = pclose(fp);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void path_in_dir(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", dir, name); }

static void assert_file_is(const char *path, const img *m) {
    img now = slurp(path);
    assert_int_equal(now.n, m->n);
    assert_memory_equal(now.p, m->p, m->n);
    free(now.p);
}

static int setup(void **state) {
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/kvlm-test-cli-session-%d", (int)getpid());
    return mkdir(dir, 0700);
}

static int teardown(void **state) {
    (void)state;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

/* A file that does not load stops the run and stays as it was; --session-overwrite replaces it. */
static void test_unreadable_not_overwritten(void **state) {
    (void)state;
    char ses[256], flags[512];
    path_in_dir(ses, sizeof ses, "notes.ses");
    img garbage = {(uint8_t *)strdup("my notes, not a session\n"), 24};
    spit(ses, &garbage);
    snprintf(flags, sizeof flags, "--session %s", ses);
    assert_int_equal(run_kvlm(MODEL, "Once upon", flags), 1);
    if (!strstr(out, "not a kvlm session file") || !strstr(out, "--session-overwrite"))
        fail_msg("no clear refusal: %s", out);
    assert_file_is(ses, &garbage);
    /* told to: the run goes ahead and the file becomes this run's session */
    snprintf(flags, sizeof flags, "--session %s --session-overwrite", ses);
    assert_int_equal(run_kvlm(MODEL, "Once upon", flags), 0);
    assert_non_null(strstr(out, "warning"));
    img now = slurp(ses);
    assert_true(now.n > 8 && memcmp(now.p, KV_SES_MAGIC, 8) == 0);
    free(now.p);
    /* which then loads: the next run reuses it */
    snprintf(flags, sizeof flags, "--session %s", ses);
    assert_int_equal(run_kvlm(MODEL, "Once upon a time", flags), 0);
    assert_null(strstr(out, "warning"));
    const char *pr = strstr(out, "prompt: ");
    int n_prompt = 0, n_cached = 0;
    assert_non_null(pr);
    assert_int_equal(sscanf(pr, "prompt: %d tokens (%d cached", &n_prompt, &n_cached), 2);
    assert_true(n_cached >= 2 && n_cached < n_prompt); /* "Once upon" came from the file */

    /* a session of another model is not overwritten either */
    img mine = slurp(ses);
    assert_int_equal(run_kvlm(MODEL16, "Once upon", flags), 1);
    assert_non_null(strstr(out, "another model"));
    assert_file_is(ses, &mine);
    free(mine.p);
    free(garbage.p);
}

/* Crafted files with a recomputed checksum (issue 12: next_pos = n + 40 made
 * `kvlm run` die of SIGSEGV) are refused with a message, the file kept. */
static void test_crafted_file_refused(void **state) {
    (void)state;
    char ses[256], flags[512];
    path_in_dir(ses, sizeof ses, "crafted.ses");
    snprintf(flags, sizeof flags, "--session %s", ses);
    assert_int_equal(run_kvlm(MODEL, "Once upon a time", flags), 0);
    img good = slurp(ses);
    kv_ses_header h;
    memcpy(&h, good.p, sizeof h);
    assert_true(h.n > 0 && h.next_pos == h.n);
    const int32_t next[] = {h.n + 40, 2752512, h.n + 1};
    for (size_t i = 0; i < 3; i++) {
        img e = {malloc(good.n), good.n};
        memcpy(e.p, good.p, good.n);
        memcpy(e.p + offsetof(kv_ses_header, next_pos), &next[i], 4);
        const uint64_t sum = XXH3_64bits(e.p, e.n - 8);
        memcpy(e.p + e.n - 8, &sum, 8);
        spit(ses, &e);
        const int rc = run_kvlm(MODEL, "Once upon a time", flags);
        if (rc != 1) fail_msg("next_pos %d: exit %d: %s", next[i], rc, out);
        if (!strstr(out, "position")) fail_msg("next_pos %d: no clear message: %s", next[i], out);
        assert_file_is(ses, &e);
        free(e.p);
    }
    free(good.p);
}

/* FIFOs, symbolic links and directories are refused, promptly, and left as they were. */
static void test_special_paths(void **state) {
    (void)state;
    char fifo[256], link[256], sub[256], target[256], flags[512];
    path_in_dir(fifo, sizeof fifo, "fifo.ses");
    path_in_dir(link, sizeof link, "link.ses");
    path_in_dir(sub, sizeof sub, "sub.ses");
    path_in_dir(target, sizeof target, "target.ses");
    assert_int_equal(mkfifo(fifo, 0600), 0);
    assert_int_equal(mkdir(sub, 0700), 0);
    snprintf(flags, sizeof flags, "--session %s", target);
    assert_int_equal(run_kvlm(MODEL, "Once upon", flags), 0);
    img tgt = slurp(target);
    assert_int_equal(symlink("target.ses", link), 0);
    const struct {
        const char *path, *kind;
        mode_t type;
    } cases[] = {{fifo, "FIFO", S_IFIFO}, {link, "symbolic link", S_IFLNK}, {sub, "directory", S_IFDIR}};
    for (size_t i = 0; i < 3; i++)
        for (int ow = 0; ow < 2; ow++) {
            snprintf(flags, sizeof flags, "--session %s%s", cases[i].path, ow ? " --session-overwrite" : "");
            const int rc = run_kvlm(MODEL, "Once upon", flags);
            if (rc != 1) fail_msg("%s: exit %d (124 or 137: it hung): %s", cases[i].kind, rc, out);
            if (!strstr(out, cases[i].kind) || !strstr(out, "refused")) fail_msg("%s: %s", cases[i].kind, out);
            struct stat st;
            assert_int_equal(lstat(cases[i].path, &st), 0);
            assert_int_equal(st.st_mode & S_IFMT, cases[i].type);
        }
    assert_file_is(target, &tgt); /* the link's target is untouched */
    free(tgt.p);
}

/* ------------------------------------------------------------ kvlm chat --session */

static char chat_out[1 << 16];

/* `kvlm chat` on the lines of `input` (printf-escaped) with the flags; stdout only into chat_out
 * (stderr to errfile when given, else merged). Returns the exit status (124/137: it hung). */
static int chat_kvlm(const char *input, const char *flags, const char *errfile) {
    char redir[400];
    if (errfile) snprintf(redir, sizeof redir, "2>%s", errfile);
    else snprintf(redir, sizeof redir, "2>&1");
    return run_into(chat_out, sizeof chat_out, "printf '%s' | timeout -s KILL 60 %s chat -m %s -n 12 -c 64 -v %s %s",
                    input, KVLM, MODEL, flags, redir);
}

/* The per-turn lines of -v ("[N prompt tokens, M cached, ...]") of a stderr file, concatenated. */
static void turn_lines(const char *errfile, char *dst, size_t cap) {
    img e = slurp(errfile);
    char *text = malloc(e.n + 1);
    memcpy(text, e.p, e.n);
    text[e.n] = '\0';
    size_t n = strlen(dst);
    for (char *l = strchr(text, '['); l; l = strchr(l + 1, '[')) {
        if (!strstr(l, "prompt tokens")) break;
        const char *end = strchr(l, ']');
        if (!end) break;
        const size_t len = (size_t)(end - l + 1);
        if (n + len + 2 < cap) {
            memcpy(dst + n, l, len);
            n += len;
            dst[n++] = '\n';
            dst[n] = '\0';
        }
    }
    free(text);
    free(e.p);
}

/* A chat continued over four invocations answers exactly as one long chat (greedy, a 64-token
 * context that shifts on the way, so the loaded cache carries its dropped-token record), reusing the
 * same part of the cache each turn. */
static void test_chat_continues(void **state) {
    (void)state;
    char ses[256], side[300], errf[300], flags[700], one_turns[4096] = "", many_turns[4096] = "";
    static char one[1 << 16], many[1 << 16];
    many[0] = '\0';
    path_in_dir(ses, sizeof ses, "chat.ses");
    snprintf(side, sizeof side, "%s.chat", ses);
    path_in_dir(errf, sizeof errf, "chat.err");
    const char *lines[4] = {"Hello there", "How are you", "Tell me a story", "And then"};
    assert_int_equal(chat_kvlm("Hello there\\nHow are you\\nTell me a story\\nAnd then\\n", "--system 'Be kind.'", errf),
                     0);
    snprintf(one, sizeof one, "%s", chat_out);
    turn_lines(errf, one_turns, sizeof one_turns);
    for (int i = 0; i < 4; i++) {
        char in[64];
        snprintf(in, sizeof in, "%s\\n", lines[i]);
        /* the system prompt is given once; the conversation file keeps it */
        snprintf(flags, sizeof flags, "--session %s %s", ses, i == 0 ? "--system 'Be kind.'" : "");
        if (chat_kvlm(in, flags, errf) != 0) fail_msg("invocation %d failed", i);
        strncat(many, chat_out, sizeof many - strlen(many) - 1);
        turn_lines(errf, many_turns, sizeof many_turns);
        char cont[4096] = "";
        img e = slurp(errf);
        memcpy(cont, e.p, e.n < sizeof cont - 1 ? e.n : sizeof cont - 1);
        if (i > 0 && !strstr(cont, "continuing the chat")) fail_msg("invocation %d did not continue: %s", i, cont);
        free(e.p);
    }
    assert_string_equal(many, one);
    assert_string_equal(many_turns, one_turns);
    assert_non_null(strstr(one_turns, "cached")); /* four turns were compared */
    /* the conversation file: the system prompt and the 8 messages */
    img c = slurp(side);
    char *text = calloc(1, c.n + 1);
    memcpy(text, c.p, c.n);
    assert_non_null(strstr(text, "\"system\":\"Be kind.\""));
    int users = 0;
    for (char *p = text; (p = strstr(p, "\"role\":\"user\"")); p++) users++;
    assert_int_equal(users, 4);
    free(text);
    free(c.p);
    /* a different --system does not continue it (nothing is written) */
    img ses_before = slurp(ses), side_before = slurp(side);
    snprintf(flags, sizeof flags, "--session %s --system 'Be rude.'", ses);
    assert_int_equal(chat_kvlm("Hi\\n", flags, NULL), 1);
    assert_non_null(strstr(chat_out, "another --system"));
    assert_file_is(ses, &ses_before);
    assert_file_is(side, &side_before);
    free(ses_before.p);
    free(side_before.p);
    unlink(ses);
    unlink(side);
    unlink(errf);
}

/* What cannot be continued stops the chat and is left alone (a corrupt or missing conversation file, a
 * session file that does not load); --session-overwrite starts over and replaces both. FIFOs, links
 * and directories as either file are refused either way, promptly. */
static void test_chat_refusals(void **state) {
    (void)state;
    char ses[256], side[300], flags[700];
    path_in_dir(ses, sizeof ses, "refuse.ses");
    snprintf(side, sizeof side, "%s.chat", ses);
    snprintf(flags, sizeof flags, "--session %s", ses);
    assert_int_equal(chat_kvlm("Hello\\n", flags, NULL), 0);
    img good_ses = slurp(ses), good_side = slurp(side);
    const char *broken[] = {"not json", "{\"format\":\"kvlm-chat\",\"version\":1}",
                            "{\"format\":\"kvlm-chat\",\"version\":2,\"messages\":[],\"n_past\":0}",
                            "{\"format\":\"kvlm-chat\",\"version\":1,\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}],"
                            "\"n_past\":0}",
                            "{\"format\":\"kvlm-chat\",\"version\":1,\"messages\":[],\"n_past\":-3}"};
    for (size_t i = 0; i < sizeof broken / sizeof broken[0]; i++) {
        img b = {(uint8_t *)strdup(broken[i]), strlen(broken[i])};
        spit(side, &b);
        snprintf(flags, sizeof flags, "--session %s", ses);
        if (chat_kvlm("Hi\\n", flags, NULL) != 1) fail_msg("'%s' accepted: %s", broken[i], chat_out);
        assert_non_null(strstr(chat_out, "does not load"));
        assert_non_null(strstr(chat_out, "--session-overwrite"));
        assert_file_is(side, &b);
        assert_file_is(ses, &good_ses);
        free(b.p);
    }
    /* --session-overwrite: starts over, both replaced by a valid pair that continues */
    snprintf(flags, sizeof flags, "--session %s --session-overwrite", ses);
    assert_int_equal(chat_kvlm("Hi\\n", flags, NULL), 0);
    assert_non_null(strstr(chat_out, "starting over"));
    snprintf(flags, sizeof flags, "--session %s", ses);
    assert_int_equal(chat_kvlm("Again\\n", flags, NULL), 0);
    assert_non_null(strstr(chat_out, "continuing the chat"));
    /* only one of the pair */
    spit(side, &good_side);
    unlink(ses);
    assert_int_equal(chat_kvlm("Hi\\n", flags, NULL), 1);
    assert_non_null(strstr(chat_out, "no session file"));
    assert_file_is(side, &good_side);
    spit(ses, &good_ses);
    unlink(side);
    assert_int_equal(chat_kvlm("Hi\\n", flags, NULL), 1);
    assert_non_null(strstr(chat_out, "no conversation file"));
    assert_file_is(ses, &good_ses);
    /* a session file that does not load (truncated) beside a good conversation */
    spit(side, &good_side);
    img cut = {good_ses.p, good_ses.n / 2};
    spit(ses, &cut);
    assert_int_equal(chat_kvlm("Hi\\n", flags, NULL), 1);
    assert_non_null(strstr(chat_out, "cannot be continued"));
    assert_file_is(ses, &cut);
    assert_file_is(side, &good_side);
    /* special files as the conversation file, with and without --session-overwrite */
    spit(ses, &good_ses);
    char target[300];
    path_in_dir(target, sizeof target, "target.chat");
    spit(target, &good_side);
    const struct {
        const char *kind;
        mode_t type;
    } cases[] = {{"FIFO", S_IFIFO}, {"symbolic link", S_IFLNK}, {"directory", S_IFDIR}};
    for (size_t i = 0; i < 3; i++)
        for (int ow = 0; ow < 2; ow++) {
            unlink(side);
            rmdir(side);
            if (i == 0) assert_int_equal(mkfifo(side, 0600), 0);
            if (i == 1) assert_int_equal(symlink("target.chat", side), 0);
            if (i == 2) assert_int_equal(mkdir(side, 0700), 0);
            snprintf(flags, sizeof flags, "--session %s%s", ses, ow ? " --session-overwrite" : "");
            const int rc = chat_kvlm("Hi\\n", flags, NULL);
            if (rc != 1) fail_msg("%s: exit %d (124 or 137: it hung): %s", cases[i].kind, rc, chat_out);
            if (!strstr(chat_out, cases[i].kind) || !strstr(chat_out, "refused"))
                fail_msg("%s: %s", cases[i].kind, chat_out);
            struct stat st;
            assert_int_equal(lstat(side, &st), 0);
            assert_int_equal(st.st_mode & S_IFMT, cases[i].type);
            assert_file_is(ses, &good_ses);
        }
    assert_file_is(target, &good_side);
    rmdir(side);
    free(good_ses.p);
    free(good_side.p);
    unlink(ses);
    unlink(target);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unreadable_not_overwritten),
        cmocka_unit_test(test_crafted_file_refused),
        cmocka_unit_test(test_special_paths),
        cmocka_unit_test(test_chat_continues),
        cmocka_unit_test(test_chat_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
