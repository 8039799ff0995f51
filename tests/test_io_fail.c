/* I/O failures of session files that a test cannot cause from outside (issue 22): fsync and rename
 * failing, something put at the path while the file is written (a race with another process), the
 * path replaced between the check and the open (by a symbolic link, by nothing, by a FIFO), fstat
 * and read failing, zstd refusing to compress. This test is linked with
 * -Wl,--wrap=fsync,--wrap=rename,--wrap=open,--wrap=fstat,--wrap=read,--wrap=ZSTD_compress
 * (tests/CMakeLists.txt): each wrapper, when armed, does its one thing on the next call and then
 * behaves as the real function. Every failure must return its status with a message naming the path
 * and the cause, leave no file and no temporary behind (a save) or the session as it was (a load),
 * and the session must then save, load and continue bit-identical to kvlm_eval_full. */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "kvlm.h"
#include "test_util.h"
#include "api/session_impl.h"

#define AIDREAMS KVLM_MODELS_DIR "/llama/aidreams260K-f32.gguf"

/* ------------------------------------------------------------ the injection */

typedef enum mode {
    M_NONE,
    M_FSYNC_EIO,     /* the file's fsync fails */
    M_FSYNC_RACE,    /* a directory appears at the path while the file is written */
    M_RENAME_EXDEV,  /* the rename fails */
    M_OPEN_SYMLINK,  /* the path becomes a symbolic link between the check and the open */
    M_OPEN_GONE,     /* the path is removed between the check and the open */
    M_OPEN_FIFO,     /* the path becomes a FIFO between the check and the open */
    M_FSTAT_EIO,     /* fstat of the opened file fails */
    M_READ_EIO,      /* reading the file fails */
    M_ZSTD,          /* zstd returns an error */
} mode;
static mode g_mode;
static int g_hits;
static const char *g_path;

int __real_fsync(int fd);
int __real_rename(const char *a, const char *b);
int __real_open(const char *path, int flags, ...);
int __real_fstat(int fd, struct stat *st);
ssize_t __real_read(int fd, void *buf, size_t n);
size_t __real_ZSTD_compress(void *dst, size_t cap, const void *src, size_t n, int level);
int __wrap_fsync(int fd);
int __wrap_rename(const char *a, const char *b);
int __wrap_open(const char *path, int flags, ...);
int __wrap_fstat(int fd, struct stat *st);
ssize_t __wrap_read(int fd, void *buf, size_t n);
size_t __wrap_ZSTD_compress(void *dst, size_t cap, const void *src, size_t n, int level);

static bool take(mode m) {
    if (g_mode != m) return false;
    g_mode = M_NONE;
    g_hits++;
    return true;
}
int __wrap_fsync(int fd) {
    if (take(M_FSYNC_EIO)) {
        errno = EIO;
        return -1;
    }
    if (take(M_FSYNC_RACE)) assert_int_equal(mkdir(g_path, 0700), 0);
    return __real_fsync(fd);
}
int __wrap_rename(const char *a, const char *b) {
    if (take(M_RENAME_EXDEV)) {
        errno = EXDEV;
        return -1;
    }
    return __real_rename(a, b);
}
int __wrap_open(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    const int m = (flags & O_CREAT) ? va_arg(ap, int) : 0;
    va_end(ap);
    if (g_path && strcmp(path, g_path) == 0) {
        if (take(M_OPEN_SYMLINK)) {
            assert_int_equal(unlink(path), 0);
            assert_int_equal(symlink("/dev/null", path), 0);
        } else if (take(M_OPEN_GONE)) {
            assert_int_equal(unlink(path), 0);
        } else if (take(M_OPEN_FIFO)) {
            assert_int_equal(unlink(path), 0);
            assert_int_equal(mkfifo(path, 0600), 0);
        }
    }
    return __real_open(path, flags, m);
}
int __wrap_fstat(int fd, struct stat *st) {
    if (take(M_FSTAT_EIO)) {
        errno = EIO;
        return -1;
    }
    return __real_fstat(fd, st);
}
ssize_t __wrap_read(int fd, void *buf, size_t n) {
    if (take(M_READ_EIO)) {
        errno = EIO;
        return -1;
    }
    return __real_read(fd, buf, n);
}
size_t __wrap_ZSTD_compress(void *dst, size_t cap, const void *src, size_t n, int level) {
    if (take(M_ZSTD)) return (size_t)-1; /* ZSTD_error_GENERIC */
    return __real_ZSTD_compress(dst, cap, src, n, level);
}

/* ------------------------------------------------------------ checks */

static kvlm_model *g_model;
static int32_t g_vocab;
enum { N = 40 };
static kvlm_token g_tok[N + 1];

static int setup(void **state) {
    (void)state;
    g_model = load(AIDREAMS);
    g_vocab = kvlm_n_vocab(g_model);
    seq(g_tok, N + 1, g_vocab, 31);
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

static int temps_beside(const char *path) {
    char pat[300];
    snprintf(pat, sizeof pat, "%s.tmp.*", path);
    glob_t g;
    const int n = glob(pat, 0, NULL, &g) == 0 ? (int)g.gl_pathc : 0;
    if (n) globfree(&g);
    return n;
}

/* s holds g_tok[0, n): its next logits equal kvlm_eval_full's of g_tok[0, n + 1). */
static void assert_continues(kvlm_session *s, int32_t n) {
    assert_int_equal(kvlm_session_n_past(s), n);
    float *a = malloc((size_t)g_vocab * sizeof *a), *b = malloc((size_t)g_vocab * sizeof *b);
    kvlm_error err;
    if (kvlm_eval(s, g_tok, n + 1, n, a, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
    if (kvlm_eval_full(g_model, g_tok, n + 1, b, false, &err) != KVLM_OK) fail_msg("eval_full: %s", err.msg);
    assert_memory_equal(a, b, (size_t)g_vocab * sizeof *a);
    free(a);
    free(b);
    if (kvlm_session_truncate(s, n, &err) != KVLM_OK) fail_msg("truncate: %s", err.msg);
}

static kvlm_session *filled(void) {
    kvlm_session *s = session(g_model, 64);
    kvlm_error err;
    if (kvlm_eval(s, g_tok, N, 0, NULL, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
    return s;
}

/* A save with the failure armed: the status and words, the injection happened, nothing at the path
   (or what the race put there), no temporary. */
static void save_fails(kvlm_session *s, const char *path, mode m, kvlm_status want, const char *words) {
    kvlm_error err;
    g_path = path;
    g_hits = 0;
    g_mode = m;
    const kvlm_status st = kvlm_session_save(s, path, &err);
    g_mode = M_NONE;
    assert_int_equal(g_hits, 1);
    expect(st, want, &err, words);
    if (m != M_ZSTD) assert_non_null(strstr(err.msg, path)); /* zstd's refusal is not about the path */
    assert_int_equal(temps_beside(path), 0);
}

static void test_save_failures(void **state) {
    (void)state;
    kvlm_session *s = filled();
    char path[256];
    tmp_path(path, sizeof path, "iofail-save", ".kvs");
    unlink(path);

    save_fails(s, path, M_FSYNC_EIO, KVLM_ERR_IO, "writing");
    assert_false(file_exists(path));
    save_fails(s, path, M_RENAME_EXDEV, KVLM_ERR_IO, strerror(EXDEV));
    assert_false(file_exists(path));
    /* a directory put at the path while writing: refused just before the rename, left alone */
    save_fails(s, path, M_FSYNC_RACE, KVLM_ERR_INVALID_ARG, "is a directory; refused");
    struct stat st;
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(rmdir(path), 0);
    save_fails(s, path, M_ZSTD, KVLM_ERR_INTERNAL, "zstd");
    assert_false(file_exists(path));

    /* the session is as it was: it saves, loads into another and both go on as eval_full */
    kvlm_error err;
    if (kvlm_session_save(s, path, &err) != KVLM_OK) fail_msg("save: %s", err.msg);
    kvlm_session *r = session(g_model, 64);
    if (kvlm_session_load(r, path, &err) != KVLM_OK) fail_msg("load: %s", err.msg);
    assert_continues(r, N);
    assert_continues(s, N);
    unlink(path);
    kvlm_session_free(r);
    kvlm_session_free(s);
}

/* A load with the failure armed: the status and words, the target session untouched. */
static void load_fails(kvlm_session *t, const char *path, mode m, kvlm_status want, const char *words) {
    kvlm_error err;
    g_path = path;
    g_hits = 0;
    g_mode = m;
    const kvlm_status st = kvlm_session_load(t, path, &err);
    g_mode = M_NONE;
    assert_int_equal(g_hits, 1);
    expect(st, want, &err, words);
    assert_non_null(strstr(err.msg, path));
    assert_continues(t, 5);
}

static void test_load_failures(void **state) {
    (void)state;
    kvlm_session *s = filled();
    char path[256];
    tmp_path(path, sizeof path, "iofail-load", ".kvs");
    kvlm_error err;
    kvlm_session *t = session(g_model, 64);
    if (kvlm_eval(t, g_tok, 5, 0, NULL, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);

    if (kvlm_session_save(s, path, &err) != KVLM_OK) fail_msg("save: %s", err.msg);
    load_fails(t, path, M_OPEN_SYMLINK, KVLM_ERR_INVALID_ARG, "is a symbolic link; refused");
    unlink(path);
    if (kvlm_session_save(s, path, &err) != KVLM_OK) fail_msg("save: %s", err.msg);
    load_fails(t, path, M_OPEN_GONE, KVLM_ERR_IO, "cannot open");
    if (kvlm_session_save(s, path, &err) != KVLM_OK) fail_msg("save: %s", err.msg);
    load_fails(t, path, M_OPEN_FIFO, KVLM_ERR_INVALID_ARG, "is a FIFO; refused");
    unlink(path);
    if (kvlm_session_save(s, path, &err) != KVLM_OK) fail_msg("save: %s", err.msg);
    load_fails(t, path, M_FSTAT_EIO, KVLM_ERR_IO, "cannot stat");
    load_fails(t, path, M_READ_EIO, KVLM_ERR_IO, "reading");

    /* the same file loads once nothing fails */
    if (kvlm_session_load(t, path, &err) != KVLM_OK) fail_msg("load: %s", err.msg);
    assert_continues(t, N);
    unlink(path);

    /* a session whose page table was broken (an internal invariant): the save refuses and writes
       nothing */
    kvlm_session *b = filled();
    b->seq.n_pages--;
    expect(kvlm_session_save(b, path, &err), KVLM_ERR_INTERNAL, &err, "the session cannot be saved: it holds");
    assert_false(file_exists(path));
    b->seq.n_pages++;
    assert_continues(b, N);
    kvlm_session_free(b);
    kvlm_session_free(t);
    kvlm_session_free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_save_failures),
        cmocka_unit_test(test_load_failures),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
