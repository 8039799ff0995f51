/* Helpers shared by the cmocka tests (include after <cmocka.h> and "kvlm.h"). */
#ifndef KVLM_TEST_UTIL_H
#define KVLM_TEST_UTIL_H

#include <stdint.h>

/* Loads a model with default parameters; fails the test with the error otherwise. */
static inline kvlm_model *load(const char *path) {
    kvlm_model *m = NULL;
    kvlm_error err;
    if (kvlm_model_load(path, NULL, &m, &err) != KVLM_OK) fail_msg("%s: %s", path, err.msg);
    return m;
}

/* A reproducible token sequence: BOS (1), then ids in [3, vocab) from an LCG. */
static inline void seq(kvlm_token *t, int n, int vocab, uint32_t seed) {
    t[0] = 1;
    for (int i = 1; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        t[i] = (kvlm_token)(3 + (seed >> 8) % (uint32_t)(vocab - 3));
    }
}

#endif
