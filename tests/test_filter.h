/* KVLM_TEST_FILTER: run only some of a cmocka test program's tests (include after <cmocka.h>).
 * The variable holds comma-separated fnmatch patterns; a test runs when its name matches one.
 * Unset (or empty), every test runs. make test-arm64-ci sets it for the end-to-end tests under
 * qemu, where one of them costs minutes: the test program says what it kept, and a filter that
 * keeps nothing is an error (exit status 1), never a silent pass. */
#ifndef KVLM_TEST_FILTER_H
#define KVLM_TEST_FILTER_H

#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* name matches one of the patterns of list (comma-separated) */
static inline int kv_test_name_matches(const char *list, const char *name) {
    char pat[256];
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        const size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len > 0 && len < sizeof pat) {
            memcpy(pat, p, len);
            pat[len] = '\0';
            if (fnmatch(pat, name, 0) == 0) return 1;
        }
        if (!e) break;
        p = e + 1;
    }
    return 0;
}

/* Keeps, in order, the tests of t[0..n) that KVLM_TEST_FILTER selects; returns how many.
 * Returns 0 (after saying so on stderr) when a filter is set and selects none. */
static inline size_t kv_test_filter(struct CMUnitTest *t, size_t n) {
    const char *f = getenv("KVLM_TEST_FILTER");
    if (!f || !*f) return n;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (kv_test_name_matches(f, t[i].name)) t[k++] = t[i];
    if (k == 0) fprintf(stderr, "KVLM_TEST_FILTER=%s selects none of the %zu tests\n", f, n);
    else printf("# KVLM_TEST_FILTER=%s: %zu of %zu tests\n", f, k, n);
    fflush(stdout);
    return k;
}

#endif
