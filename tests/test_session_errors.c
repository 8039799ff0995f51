/* The error returns of sessions and their files (src/api/session.c, src/api/persist.c; issue 22):
 * each bad call gets its status and a message naming what was wrong, returns no object, and leaves
 * the session as it was — the session then goes on to logits bit-identical to kvlm_eval_full's.
 * The I/O failures are real ones: a directory that does not exist, a path through a regular file,
 * a write cut short by RLIMIT_FSIZE, a (sparse) file larger than any session file. */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "kvlm.h"
#include "test_util.h"
#include "api/session_impl.h"

#define AIDREAMS KVLM_MODELS_DIR "/llama/aidreams260K-f32.gguf"
#define TINY KVLM_MODELS_DIR "/llama/llama-2-tiny-random.gguf"

static kvlm_model *g_model;
static int32_t g_vocab;

static int setup(void **state) {
    (void)state;
    g_model = load(AIDREAMS);
    kvlm_model_info mi;
    kvlm_model_get_info(g_model, &mi);
    g_vocab = mi.n_vocab;
    return 0;
}
static int teardown(void **state) {
    (void)state;
    kvlm_model_free(g_model);
    return 0;
}

static void expect(kvlm_status got, kvlm_status want, const kvlm_error *err, const char *words) {
    if (got != want) fail_msg("status %d (want %d): %s", (int)got, (int)want, err->msg);
    if (!strstr(err->msg, words)) fail_msg("'%s' does not say '%s'", err->msg, words);
}

/* The session's next logits after `hist` equal a fresh evaluation of hist + next. */
static void assert_continues(kvlm_session *s, const kvlm_token *hist, int32_t n, kvlm_token next) {
    assert_int_equal(kvlm_session_n_past(s), n);
    kvlm_token all[64];
    assert_true(n + 1 <= 64);
    memcpy(all, hist, (size_t)n * sizeof *all);
    all[n] = next;
    float *a = malloc((size_t)g_vocab * sizeof *a), *b = malloc((size_t)g_vocab * sizeof *b);
    kvlm_error err;
    if (kvlm_eval(s, all, n + 1, n, a, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
    if (kvlm_eval_full(g_model, all, n + 1, b, false, &err) != KVLM_OK) fail_msg("eval_full: %s", err.msg);
    assert_memory_equal(a, b, (size_t)g_vocab * sizeof *a);
    free(a);
    free(b);
}

static void test_session_new_refusals(void **state) {
    (void)state;
    kvlm_session *s = (kvlm_session *)&s;
    kvlm_error err;
    expect(kvlm_session_new(NULL, NULL, &s, &err), KVLM_ERR_INVALID_ARG, &err, "NULL argument");
    expect(kvlm_session_new(g_model, NULL, NULL, &err), KVLM_ERR_INVALID_ARG, &err, "NULL argument");

    kvlm_model_params mp = kvlm_model_default_params();
    mp.vocab_only = true;
    kvlm_model *vocab = NULL;
    if (kvlm_model_load(AIDREAMS, &mp, &vocab, &err) != KVLM_OK) fail_msg("vocab-only: %s", err.msg);
    s = (kvlm_session *)&s;
    expect(kvlm_session_new(vocab, NULL, &s, &err), KVLM_ERR_INVALID_ARG, &err, "vocab-only");
    assert_null(s);
    kvlm_model_free(vocab);

    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = (1 << 24) + 1;
    s = (kvlm_session *)&s;
    expect(kvlm_session_new(g_model, &p, &s, &err), KVLM_ERR_INVALID_ARG, &err, "n_ctx 16777217 is too large");
    assert_null(s);

    /* a cache of another model */
    kvlm_model *tiny = load(TINY);
    kvlm_cache *c = NULL;
    kvlm_cache_params cp = kvlm_cache_default_params();
    if (kvlm_cache_new(tiny, &cp, &c, &err) != KVLM_OK) fail_msg("cache: %s", err.msg);
    p = kvlm_session_default_params();
    p.n_ctx = 64;
    p.cache = c;
    s = (kvlm_session *)&s;
    expect(kvlm_session_new(g_model, &p, &s, &err), KVLM_ERR_INVALID_ARG, &err, "belongs to another model");
    assert_null(s);
    kvlm_cache_free(c);

    /* a session's own pool with a bad page size: the cache's own check reports it */
    p = kvlm_session_default_params();
    p.n_ctx = 64;
    p.cache_params.page_tokens = (1 << 20) + 1;
    s = (kvlm_session *)&s;
    expect(kvlm_session_new(g_model, &p, &s, &err), KVLM_ERR_INVALID_ARG, &err, "page_tokens");
    assert_null(s);

    /* a session of each model in one batch */
    kvlm_session *a = session(g_model, 32), *b = session(tiny, 32);
    kvlm_session *pair[2] = {a, b};
    const kvlm_token toks[2] = {1, 1};
    expect(kvlm_decode_batch(pair, toks, 2, NULL, &err), KVLM_ERR_INVALID_ARG, &err, "session 1 is NULL or of another model");
    assert_int_equal(kvlm_session_n_past(a), 0);
    assert_int_equal(kvlm_session_n_past(b), 0);
    kvlm_session_free(a);
    kvlm_session_free(b);
    kvlm_model_free(tiny);
}

static void test_eval_refusals(void **state) {
    (void)state;
    kvlm_session *s = session(g_model, 32);
    kvlm_token t[8];
    seq(t, 8, g_vocab, 7);
    kvlm_error err;
    if (kvlm_eval(s, t, 4, 0, NULL, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
    expect(kvlm_eval(NULL, t, 4, 0, NULL, false, &err), KVLM_ERR_INVALID_ARG, &err, "NULL argument");
    expect(kvlm_eval(s, NULL, 4, 0, NULL, false, &err), KVLM_ERR_INVALID_ARG, &err, "NULL argument");
    expect(kvlm_eval(s, t, 0, KVLM_AUTO, NULL, false, &err), KVLM_ERR_INVALID_ARG, &err, "no tokens");
    expect(kvlm_eval(s, t, 6, 5, NULL, false, &err), KVLM_ERR_INVALID_ARG, &err, "n_past 5 is outside 0..4");
    expect(kvlm_eval(s, t, 6, -2, NULL, false, &err), KVLM_ERR_INVALID_ARG, &err, "n_past -2 is outside 0..4");
    expect(kvlm_eval(s, t, 4, 4, NULL, false, &err), KVLM_ERR_INVALID_ARG, &err, "n_past 4 leaves no token");
    kvlm_token bad[6];
    memcpy(bad, t, sizeof bad);
    bad[5] = g_vocab;
    expect(kvlm_eval(s, bad, 6, 4, NULL, false, &err), KVLM_ERR_INVALID_ARG, &err, "at index 5 is outside the vocabulary");
    bad[5] = -1;
    expect(kvlm_eval(s, bad, 6, KVLM_AUTO, NULL, false, &err), KVLM_ERR_INVALID_ARG, &err, "token -1 at index 5");
    expect(kvlm_session_truncate(NULL, 0, &err), KVLM_ERR_INVALID_ARG, &err, "NULL session");
    kvlm_session *f = (kvlm_session *)&f;
    expect(kvlm_session_fork(NULL, &f, &err), KVLM_ERR_INVALID_ARG, &err, "NULL argument");
    expect(kvlm_session_fork(s, NULL, &err), KVLM_ERR_INVALID_ARG, &err, "NULL argument");

    /* a session in use (another call holds it): every entry point says BUSY and leaves it alone */
    assert_true(kv_session_acquire(s));
    expect(kvlm_eval(s, t, 5, 4, NULL, false, &err), KVLM_ERR_BUSY, &err, "in use");
    expect(kvlm_session_truncate(s, 2, &err), KVLM_ERR_BUSY, &err, "in use");
    f = (kvlm_session *)&f;
    expect(kvlm_session_fork(s, &f, &err), KVLM_ERR_BUSY, &err, "in use");
    assert_null(f);
    char path[128];
    tmp_path(path, sizeof path, "seserr-busy", ".kvs");
    expect(kvlm_session_save(s, path, &err), KVLM_ERR_BUSY, &err, "in use");
    assert_false(file_exists(path));
    expect(kvlm_session_load(s, path, &err), KVLM_ERR_BUSY, &err, "in use");
    expect(kv_session_load_buffer(s, (const uint8_t *)"x", 1, "buf", &err), KVLM_ERR_BUSY, &err, "in use");
    kvlm_session *other = session(g_model, 32);
    kvlm_session *pair[2] = {other, s};
    const kvlm_token two[2] = {1, 1};
    expect(kvlm_decode_batch(pair, two, 2, NULL, &err), KVLM_ERR_BUSY, &err, "session 1 is in use");
    kv_session_release(s);
    /* the batch released the session it had taken: it is usable */
    if (kvlm_eval(other, t, 2, 0, NULL, false, &err) != KVLM_OK) fail_msg("other: %s", err.msg);
    kvlm_session_free(other);
    assert_continues(s, t, 4, t[4]);
    kvlm_session_free(s);
}

static void test_decode_batch_refusals(void **state) {
    (void)state;
    kvlm_session *a = session(g_model, 4), *b = session(g_model, 8);
    kvlm_error err;
    kvlm_token t[4];
    seq(t, 4, g_vocab, 3);
    kvlm_session *pair[2] = {a, b};
    const kvlm_token two[2] = {t[0], t[0]};
    expect(kvlm_decode_batch(NULL, two, 2, NULL, &err), KVLM_ERR_INVALID_ARG, &err, "bad arguments");
    expect(kvlm_decode_batch(pair, NULL, 2, NULL, &err), KVLM_ERR_INVALID_ARG, &err, "bad arguments");
    expect(kvlm_decode_batch(pair, two, 0, NULL, &err), KVLM_ERR_INVALID_ARG, &err, "bad arguments");
    kvlm_session *many[257];
    kvlm_token many_t[257];
    for (int i = 0; i < 257; i++) {
        many[i] = a;
        many_t[i] = 1;
    }
    expect(kvlm_decode_batch(many, many_t, 257, NULL, &err), KVLM_ERR_INVALID_ARG, &err, "at most 256 sessions");
    kvlm_session *nul[2] = {a, NULL};
    expect(kvlm_decode_batch(nul, two, 2, NULL, &err), KVLM_ERR_INVALID_ARG, &err, "session 1 is NULL");
    kvlm_session *twice[2] = {a, a};
    expect(kvlm_decode_batch(twice, two, 2, NULL, &err), KVLM_ERR_INVALID_ARG, &err, "session 1 appears twice");
    const kvlm_token badt[2] = {t[0], (kvlm_token)g_vocab};
    expect(kvlm_decode_batch(pair, badt, 2, NULL, &err), KVLM_ERR_INVALID_ARG, &err, "outside the vocabulary");
    /* a full: the batch refuses before any pass, b keeps its history */
    if (kvlm_eval(a, t, 4, 0, NULL, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
    if (kvlm_eval(b, t, 3, 0, NULL, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
    expect(kvlm_decode_batch(pair, two, 2, NULL, &err), KVLM_ERR_CONTEXT_FULL, &err, "session 0's context of 4 is full");
    assert_int_equal(kvlm_session_n_past(a), 4);
    assert_continues(b, t, 3, t[3]);
    kvlm_session_free(a);
    kvlm_session_free(b);
}

static void test_stats_json(void **state) {
    (void)state;
    kvlm_session *s = session(g_model, 32);
    kvlm_token t[5];
    seq(t, 5, g_vocab, 11);
    kvlm_error err;
    if (kvlm_eval(s, t, 5, 0, NULL, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
    kvlm_kv_stats st;
    kvlm_session_get_stats(s, &st);
    assert_int_equal(st.tokens, 5);
    char big[4096];
    const int32_t n = kvlm_kv_stats_json(&st, big, sizeof big);
    assert_true(n > 0 && (size_t)n == strlen(big));
    assert_non_null(strstr(big, "{\"tokens\":5,"));
    /* too small: minus (the length needed + 1), and what fits is a prefix of the whole */
    char small[16];
    assert_int_equal(kvlm_kv_stats_json(&st, small, sizeof small), -(n + 1));
    assert_int_equal(strlen(small), sizeof small - 1);
    assert_memory_equal(small, big, sizeof small - 1);
    assert_int_equal(kvlm_kv_stats_json(&st, NULL, 0), -(n + 1));
    kvlm_session_free(s);
}

/* The n_past contract with all_logits when the history differs from tokens[0..n_past): the session
 * recomputes from the common prefix, and logits gets exactly the rows n_past..n_tokens-1 (the buffer
 * holds no more), equal to kvlm_eval_full's rows; the recomputed tokens are counted. */
static void test_all_logits_recompute(void **state) {
    (void)state;
    kvlm_session *s = session(g_model, 32);
    kvlm_token t[12];
    seq(t, 12, g_vocab, 9);
    kvlm_error err;
    if (kvlm_eval(s, t, 8, 0, NULL, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
    kvlm_token u[12];
    memcpy(u, t, sizeof u);
    u[3] = t[3] == 5 ? 6 : 5; /* differs from the history at 3 */
    const size_t V = (size_t)g_vocab;
    float *rows = malloc(4 * V * sizeof *rows), *ref = malloc(12 * V * sizeof *ref);
    if (kvlm_eval(s, u, 12, 8, rows, true, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
    if (kvlm_eval_full(g_model, u, 12, ref, true, &err) != KVLM_OK) fail_msg("eval_full: %s", err.msg);
    assert_memory_equal(rows, ref + 8 * V, 4 * V * sizeof *rows);
    kvlm_kv_stats st;
    kvlm_session_get_stats(s, &st);
    assert_int_equal(st.recomputed, 5); /* positions 3..7 */
    assert_int_equal(kvlm_session_n_past(s), 12);
    free(rows);
    free(ref);
    kvlm_session_free(s);
}

/* Files that are not regular files (a socket, a block device) are refused by name, and session files
 * cut inside the header or right after it (resealed, so only the length is wrong) are truncated. */
static void test_odd_files(void **state) {
    (void)state;
    kvlm_session *s = session(g_model, 32);
    kvlm_token t[6];
    seq(t, 6, g_vocab, 13);
    kvlm_error err;
    if (kvlm_eval(s, t, 5, 0, NULL, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);

    char path[128];
    tmp_path(path, sizeof path, "seserr-sock", ".kvs");
    unlink(path);
    const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    assert_true(strlen(path) < sizeof a.sun_path);
    strcpy(a.sun_path, path);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    expect(kvlm_session_load(s, path, &err), KVLM_ERR_INVALID_ARG, &err, "is a socket; refused");
    expect(kvlm_session_save(s, path, &err), KVLM_ERR_INVALID_ARG, &err, "is a socket; refused");
    close(fd);
    unlink(path);
    /* a block device, where the machine has one (lstat: refused without being opened) */
    static const char *const blk[] = {"/dev/loop0", "/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/xvda"};
    for (size_t i = 0; i < sizeof blk / sizeof *blk; i++) {
        struct stat st;
        if (lstat(blk[i], &st) != 0 || !S_ISBLK(st.st_mode)) continue;
        expect(kvlm_session_load(s, blk[i], &err), KVLM_ERR_INVALID_ARG, &err, "is a block device; refused");
        break;
    }

    /* cut in the header (its first 80 bytes are a version 1 header's length) and right after it */
    char good[128];
    tmp_path(good, sizeof good, "seserr-cut", ".kvs");
    if (kvlm_session_save(s, good, &err) != KVLM_OK) fail_msg("save: %s", err.msg);
    img m = slurp(good);
    assert_true(m.n > sizeof(kv_ses_header) + 8);
    const size_t cuts[2] = {KV_SES_V1_HEADER, sizeof(kv_ses_header)};
    for (int i = 0; i < 2; i++) {
        img c = {malloc(cuts[i] + 8), cuts[i] + 8};
        memcpy(c.p, m.p, cuts[i]);
        const uint64_t sum = kv_session_checksum(c.p, cuts[i]);
        memcpy(c.p + cuts[i], &sum, 8);
        spit(path, &c);
        expect(kvlm_session_load(s, path, &err), KVLM_ERR_FORMAT, &err, "is truncated");
        free(c.p);
    }
    unlink(path);
    free(m.p);
    unlink(good);
    assert_continues(s, t, 5, t[5]);
    kvlm_session_free(s);
}

/* kv_session_append_locked (the draft and beam sessions' feed, session_impl.h): tokens outside the
 * vocabulary and a history past the context are refused before anything is computed; then it appends
 * and the session continues as eval_full. */
static void test_append_locked(void **state) {
    (void)state;
    kvlm_session *s = session(g_model, 8);
    kvlm_token t[9];
    seq(t, 9, g_vocab, 17);
    kvlm_error err;
    if (kvlm_eval(s, t, 4, 0, NULL, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
    assert_true(kv_session_acquire(s));
    const kvlm_token bad[2] = {t[4], (kvlm_token)g_vocab};
    expect(kv_session_append_locked(s, bad, 2, NULL, false, &err), KVLM_ERR_INVALID_ARG, &err,
           "is outside the vocabulary");
    expect(kv_session_append_locked(s, t + 4, 5, NULL, false, &err), KVLM_ERR_CONTEXT_FULL, &err,
           "9 tokens exceed the context of 8");
    assert_int_equal(kvlm_session_n_past(s), 4);
    assert_int_equal(kv_session_append_locked(s, t + 4, 2, NULL, false, &err), KVLM_OK);
    kv_session_release(s);
    assert_continues(s, t, 6, t[6]);
    kvlm_session_free(s);
}

/* ------------------------------------------------------------ files */

/* How many of the saver's temporaries ("<path>.tmp.*") sit beside path. */
static int no_temps(const char *path) {
    char pat[300];
    snprintf(pat, sizeof pat, "%s.tmp.*", path);
    glob_t g;
    const int n = glob(pat, 0, NULL, &g) == 0 ? (int)g.gl_pathc : 0;
    if (n) globfree(&g);
    return n;
}

static void test_save_io_failures(void **state) {
    (void)state;
    kvlm_session *s = session(g_model, 32);
    kvlm_token t[6];
    seq(t, 6, g_vocab, 5);
    kvlm_error err;
    if (kvlm_eval(s, t, 5, 0, NULL, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
    expect(kvlm_session_save(NULL, "x", &err), KVLM_ERR_INVALID_ARG, &err, "NULL argument");
    expect(kvlm_session_save(s, NULL, &err), KVLM_ERR_INVALID_ARG, &err, "NULL argument");
    expect(kvlm_session_load(NULL, "x", &err), KVLM_ERR_INVALID_ARG, &err, "NULL argument");
    expect(kvlm_session_load(s, NULL, &err), KVLM_ERR_INVALID_ARG, &err, "NULL argument");
    expect(kv_session_load_buffer(s, NULL, 4, "buf", &err), KVLM_ERR_INVALID_ARG, &err, "NULL argument");
    expect(kv_session_load_buffer(s, (const uint8_t *)"x", 1, NULL, &err), KVLM_ERR_INVALID_ARG, &err, "NULL argument");

    /* a directory that does not exist: no temporary can be made beside the path */
    char dir[128], path[256];
    tmp_path(dir, sizeof dir, "seserr-nodir", "");
    snprintf(path, sizeof path, "%s/s.kvs", dir);
    expect(kvlm_session_save(s, path, &err), KVLM_ERR_IO, &err, "cannot create a temporary file");
    expect(kvlm_session_load(s, path, &err), KVLM_ERR_IO, &err, "cannot use");

    /* a path through a regular file (ENOTDIR, not "absent") */
    char file[128];
    tmp_path(file, sizeof file, "seserr-file", "");
    img one = {(uint8_t *)"x", 1};
    spit(file, &one);
    snprintf(path, sizeof path, "%s/s.kvs", file);
    expect(kvlm_session_save(s, path, &err), KVLM_ERR_IO, &err, "cannot use");

    /* a write cut short (the file size limit; EFBIG instead of SIGXFSZ): no file, no temporary */
    char good[128];
    tmp_path(good, sizeof good, "seserr-fsize", ".kvs");
    struct rlimit old;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = old;
    lim.rlim_cur = 64;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    const kvlm_status st = kvlm_session_save(s, good, &err);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    expect(st, KVLM_ERR_IO, &err, "writing");
    assert_non_null(strstr(err.msg, strerror(EFBIG)));
    assert_false(file_exists(good));
    assert_int_equal(no_temps(good), 0);

    /* a file larger than any session file (sparse): refused before it is read */
    tmp_path(path, sizeof path, "seserr-huge", ".kvs");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    const int huge_ok = ftruncate(fd, (off_t)((1ll << 40) + 1)) == 0;
    close(fd);
    if (huge_ok) expect(kvlm_session_load(s, path, &err), KVLM_ERR_FORMAT, &err, "too large for a session file");
    unlink(path);

    /* an empty file, a buffer too short to be a session */
    spit(path, &(img){(uint8_t *)"", 0});
    expect(kvlm_session_load(s, path, &err), KVLM_ERR_FORMAT, &err, "is not a kvlm session file");
    unlink(path);
    expect(kv_session_load_buffer(s, (const uint8_t *)"KVLMSESS", 8, "buf", &err), KVLM_ERR_FORMAT, &err,
           "'buf' is not a kvlm session file");
    unlink(file);

    /* after all that the session saves, loads into another and both continue as eval_full */
    if (kvlm_session_save(s, good, &err) != KVLM_OK) fail_msg("save: %s", err.msg);
    kvlm_session *r = session(g_model, 32);
    if (kvlm_session_load(r, good, &err) != KVLM_OK) fail_msg("load: %s", err.msg);
    assert_continues(r, t, 5, t[5]);
    assert_continues(s, t, 5, t[5]);
    unlink(good);
    kvlm_session_free(r);
    kvlm_session_free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_session_new_refusals), cmocka_unit_test(test_eval_refusals),
        cmocka_unit_test(test_decode_batch_refusals), cmocka_unit_test(test_stats_json),
        cmocka_unit_test(test_save_io_failures), cmocka_unit_test(test_all_logits_recompute), cmocka_unit_test(test_odd_files), cmocka_unit_test(test_append_locked),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
