/* Helpers shared by the cmocka tests (include after <cmocka.h>). Everything is static inline, so a
 * test uses what it needs and the rest costs nothing. */
#ifndef KVLM_TEST_UTIL_H
#define KVLM_TEST_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kvlm.h"

/* ------------------------------------------------------------ commands */

/* Runs a shell command made from fmt (stderr merged unless the command redirects it), captures
 * up to cap - 1 bytes of its output in out, and returns its exit status (-1 if it did not exit).
 * A test file wraps it as `#define run(...) run_into(g_out, sizeof g_out, __VA_ARGS__)`. */
static inline int run_into(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static inline int run_into(char *out, size_t cap, const char *fmt, ...) {
    char cmd[1 << 14];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd - 8, fmt, ap);
    va_end(ap);
    if (!strstr(cmd, "2>")) strcat(cmd, " 2>&1");
    FILE *fp = popen(cmd, "r");
    assert_non_null(fp);
    size_t n = fread(out, 1, cap - 1, fp);
    out[n] = '\0';
    int st = pclose(fp);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ------------------------------------------------------------ models and sessions */

/* Loads a model with default parameters; fails the test with the error otherwise. */
static inline kvlm_model *load(const char *path) {
    kvlm_model *m = NULL;
    kvlm_error err;
    if (kvlm_model_load(path, NULL, &m, &err) != KVLM_OK) fail_msg("%s: %s", path, err.msg);
    return m;
}

/* A session with parameters p; fails the test with the error otherwise. */
static inline kvlm_session *session_with(kvlm_model *m, const kvlm_session_params *p) {
    kvlm_session *s = NULL;
    kvlm_error err;
    if (kvlm_session_new(m, p, &s, &err) != KVLM_OK) fail_msg("session: %s", err.msg);
    return s;
}

/* A session with default parameters and a context of n_ctx tokens. */
static inline kvlm_session *session(kvlm_model *m, int32_t n_ctx) {
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = n_ctx;
    return session_with(m, &p);
}

/* A reproducible token sequence: BOS (1), then ids in [3, vocab) from an LCG. */
static inline void seq(kvlm_token *t, int n, int vocab, uint32_t seed) {
    t[0] = 1;
    for (int i = 1; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        t[i] = (kvlm_token)(3 + (seed >> 8) % (uint32_t)(vocab - 3));
    }
}

/* ------------------------------------------------------------ random data */

/* xorshift64*; uniform floats are exact multiples of 2^-24 and the "normal" is an Irwin-Hall sum
 * (sigma 1, |x| < 3.47), so inputs do not depend on libm. */
typedef struct rng {
    uint64_t s;
} rng;
static inline uint32_t rng_u32(rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return (uint32_t)((r->s * 0x2545F4914F6CDD1DULL) >> 32);
}
static inline float rng_unif(rng *r) { return (float)(rng_u32(r) >> 8) * (1.0f / 16777216.0f); }
static inline float rng_normal(rng *r) {
    const float s = rng_unif(r) + rng_unif(r) + rng_unif(r) + rng_unif(r);
    return (s - 2.0f) * 1.7320508f;
}
static inline void fill_normal(rng *r, float *x, int64_t n, float sigma) {
    for (int64_t i = 0; i < n; i++) x[i] = sigma * rng_normal(r);
}
/* Activations: normal with a few large outliers (one in 64 times 8). */
static inline void fill_act(rng *r, float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        x[i] = rng_normal(r);
        if ((rng_u32(r) & 63) == 0) x[i] *= 8.0f;
    }
}

/* The bits of a float. */
static inline uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* ------------------------------------------------------------ files */

/* A path of this process under /tmp: "/tmp/kvlm-test-<name>-<pid><ext>" (ext may be ""). */
static inline const char *tmp_path(char *buf, size_t cap, const char *name, const char *ext) {
    snprintf(buf, cap, "/tmp/kvlm-test-%s-%d%s", name, (int)getpid(), ext);
    return buf;
}

static inline bool file_exists(const char *path) { return access(path, R_OK) == 0; }

/* Whether two files exist and hold the same bytes. */
static inline bool files_equal(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    bool eq = fa && fb;
    while (eq) {
        int ca = fgetc(fa), cb = fgetc(fb);
        if (ca != cb) eq = false;
        if (ca == EOF || cb == EOF) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return eq;
}

/* A file's bytes in memory. */
typedef struct img {
    uint8_t *p;
    size_t n;
} img;

/* The file's bytes, or {NULL, 0} when it cannot be opened or read whole. */
static inline img slurp_if(const char *path) {
    img m = {NULL, 0};
    FILE *f = fopen(path, "rb");
    if (!f) return m;
    long len = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (len >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        m.p = malloc(len ? (size_t)len : 1);
        if (m.p && fread(m.p, 1, (size_t)len, f) == (size_t)len) {
            m.n = (size_t)len;
        } else {
            free(m.p);
            m.p = NULL;
        }
    }
    fclose(f);
    return m;
}

/* The file's bytes; fails the test when it cannot be read. */
static inline img slurp(const char *path) {
    img m = slurp_if(path);
    if (!m.p) fail_msg("cannot read %s", path);
    return m;
}

/* Writes m to path (replacing it); fails the test on an error. */
static inline void spit(const char *path, const img *m) {
    FILE *f = fopen(path, "wb");
    if (!f) fail_msg("cannot write %s", path);
    if (fwrite(m->p, 1, m->n, f) != m->n) fail_msg("short write to %s", path);
    if (fclose(f) != 0) fail_msg("cannot write %s", path);
}

#endif
