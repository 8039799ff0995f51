/* The core module's small pieces that no model run reaches fully (issue 22): every status's name,
 * UTF-8 decoding and encoding over the whole code space against a reference written from the
 * standard's table (and malformed input: lone continuation bytes, cut and broken sequences), and the
 * thread pool's creation with each allocation and each thread start failing (this test is linked with
 * -Wl,--wrap=malloc,--wrap=calloc,--wrap=pthread_create): NOMEM or INTERNAL with a message and no
 * pool, or a pool that runs every share of a job exactly once. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/tpool.h"
#include "core/utf8.h"
#include "kvlm.h"

/* ------------------------------------------------------------ failure injection */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
int __real_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg);

static _Thread_local bool g_armed;
static long g_count, g_fail_at, g_failed;
static bool inject(void) {
    if (!g_armed || ++g_count != g_fail_at) return false;
    g_failed++;
    return true;
}
void *__wrap_malloc(size_t n) { return inject() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t size) { return inject() ? NULL : __real_calloc(n, size); }
int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg) {
    return inject() ? 11 /* EAGAIN */ : __real_pthread_create(t, a, fn, arg);
}

/* ------------------------------------------------------------ status names */

static void test_status_names(void **state) {
    (void)state;
    static const struct {
        kvlm_status s;
        const char *name;
    } k[] = {{KVLM_OK, "ok"},
             {KVLM_ERR_INVALID_ARG, "invalid argument"},
             {KVLM_ERR_IO, "i/o error"},
             {KVLM_ERR_FORMAT, "format error"},
             {KVLM_ERR_UNSUPPORTED, "unsupported"},
             {KVLM_ERR_NOMEM, "out of memory"},
             {KVLM_ERR_CONTEXT_FULL, "context full"},
             {KVLM_ERR_BUSY, "busy"},
             {KVLM_ERR_INTERNAL, "internal error"}};
    for (size_t i = 0; i < sizeof k / sizeof *k; i++) assert_string_equal(kvlm_status_name(k[i].s), k[i].name);
    assert_string_equal(kvlm_status_name((kvlm_status)12345), "unknown");
}

/* ------------------------------------------------------------ UTF-8 */

/* The standard's encoding (RFC 3629 table), written out independently. */
static size_t ref_encode(uint32_t cp, unsigned char *o) {
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 + cp / 64);
        o[1] = (unsigned char)(0x80 + cp % 64);
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 + cp / 4096);
        o[1] = (unsigned char)(0x80 + cp / 64 % 64);
        o[2] = (unsigned char)(0x80 + cp % 64);
        return 3;
    }
    o[0] = (unsigned char)(0xF0 + cp / 262144);
    o[1] = (unsigned char)(0x80 + cp / 4096 % 64);
    o[2] = (unsigned char)(0x80 + cp / 64 % 64);
    o[3] = (unsigned char)(0x80 + cp % 64);
    return 4;
}

static void test_utf8(void **state) {
    (void)state;
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp += cp < 0x1000 ? 1 : 37) {
        unsigned char want[4];
        char got[8] = {0};
        const size_t n = ref_encode(cp, want);
        assert_int_equal(kv_utf8_encode(cp, got), n);
        assert_memory_equal(got, want, n);
        assert_int_equal(kv_utf8_len((unsigned char)got[0]), n);
        /* decoded back, at an offset, with a byte after it */
        char buf[8] = {'x'};
        memcpy(buf + 1, got, n);
        buf[1 + n] = 'y';
        size_t off = 1;
        assert_int_equal(kv_utf8_decode(buf, n + 2, &off), cp);
        assert_int_equal(off, 1 + n);
        /* cut short by one byte: a replacement character, one byte consumed */
        if (n > 1) {
            off = 1;
            assert_int_equal(kv_utf8_decode(buf, n, &off), 0xFFFD);
            assert_int_equal(off, 2);
            /* its last continuation byte replaced by ASCII: the same */
            buf[n] = 'z';
            off = 1;
            assert_int_equal(kv_utf8_decode(buf, n + 2, &off), 0xFFFD);
            assert_int_equal(off, 2);
        }
    }
    static const char *const bad[] = {"\x80", "\xbf", "\xf8\x80\x80\x80\x80", "\xff"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t off = 0;
        assert_int_equal(kv_utf8_decode(bad[i], strlen(bad[i]), &off), 0xFFFD);
        assert_int_equal(off, 1);
    }
}

/* ------------------------------------------------------------ the thread pool */

typedef struct job {
    atomic_int runs[8];
} job;
static void share(void *ctx, int ith, int nth) {
    job *j = ctx;
    assert_true(ith >= 0 && ith < nth && nth <= 8);
    atomic_fetch_add(&j->runs[ith], 1);
}

static void test_tpool_failures(void **state) {
    (void)state;
    kvlm_error err;
    kv_tpool *p = (kv_tpool *)&p;
    assert_int_equal(kv_tpool_new(257, &p, &err), KVLM_ERR_INVALID_ARG);
    assert_null(p);
    assert_non_null(strstr(err.msg, "257 is more than 256"));
    long k = 1;
    int failures = 0;
    for (;; k++) {
        g_count = 0;
        g_fail_at = k;
        g_failed = 0;
        g_armed = true;
        const kvlm_status st = kv_tpool_new(4, &p, &err);
        g_armed = false;
        if (st != KVLM_OK) {
            failures++;
            assert_int_equal(g_failed, 1);
            assert_null(p);
            if (st == KVLM_ERR_INTERNAL) assert_non_null(strstr(err.msg, "cannot start thread"));
            else if (st == KVLM_ERR_NOMEM) assert_non_null(strstr(err.msg, "threads: out of memory"));
            else fail_msg("status %d: %s", (int)st, err.msg);
            continue;
        }
        assert_int_equal(kv_tpool_size(p), 4);
        job j;
        for (int i = 0; i < 8; i++) atomic_init(&j.runs[i], 0);
        kv_tpool_run(p, share, &j);
        kv_tpool_run(p, share, &j);
        for (int i = 0; i < 4; i++) assert_int_equal(atomic_load(&j.runs[i]), 2);
        kv_tpool_free(p);
        if (g_count < k) break;
    }
    assert_true(failures >= 5); /* the pool, the thread table, three workers' arguments and starts */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_names),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_tpool_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
