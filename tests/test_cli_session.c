/* kvlm run --session through the binary: a file that does not load is not
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unreadable_not_overwritten),
        cmocka_unit_test(test_crafted_file_refused),
        cmocka_unit_test(test_special_paths),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
