/* Helpers the kernel benchmarks share: a monotonic clock, a fixed-seed
 * xorshift stream, a row's size in bytes, and random weight bytes made
 * into numbers (finite scale fields in every block). */
#ifndef KVLM_BENCH_UTIL_H
#define KVLM_BENCH_UTIL_H

#include <stdint.h>
#include <string.h>
#include <time.h>

#include "core/dtype.h"
#include "quant/fp16.h"
#include "quant/quant.h"
#include "quant/quant_types.h"

static inline double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t g_rng = 88172645463325252ull;
static inline uint32_t rnd(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}

static inline size_t row_bytes(uint32_t t, int64_t n) {
    if (t == KV_I8_S) return (size_t)kv_i8_s_row_bytes(n);
    if (t == KV_I2_S) return (size_t)(n / 4);
    uint64_t b = 0;
    kv_dtype_row_bytes(t, (uint64_t)n, &b);
    return (size_t)b;
}

/* scale fields (f16 at these offsets of each block) set to small finite values */
static inline void fix_scales(uint32_t t, uint8_t *p, size_t bytes) {
    size_t bs = 0, off[2] = {0, 0};
    int nf = 0;
    switch (t) {
    case KV_F16:
    case KV_BF16:
        for (size_t i = 0; i + 1 < bytes; i += 2) {
            const float f = (float)(int)(rnd() % 2001 - 1000) / 1000.0f;
            const uint16_t h = t == KV_F16 ? kv_f32_to_f16(f) : kv_f32_to_bf16(f);
            memcpy(p + i, &h, 2);
        }
        return;
    case KV_F32:
        for (size_t i = 0; i + 3 < bytes; i += 4) {
            const float f = (float)(int)(rnd() % 2001 - 1000) / 1000.0f;
            memcpy(p + i, &f, 4);
        }
        return;
    case KV_Q8_0: bs = 34, nf = 1; break;
    case KV_Q4_0: bs = 18, nf = 1; break;
    case KV_Q4_1: bs = 20, nf = 2, off[1] = 2; break;
    case KV_Q5_0: bs = 22, nf = 1; break;
    case KV_Q5_1: bs = 24, nf = 2, off[1] = 2; break;
    case KV_Q2_K: bs = 84, nf = 2, off[0] = 80, off[1] = 82; break;
    case KV_Q3_K: bs = 110, nf = 1, off[0] = 108; break;
    case KV_Q4_K: bs = 144, nf = 2, off[1] = 2; break;
    case KV_Q5_K: bs = 176, nf = 2, off[1] = 2; break;
    case KV_Q6_K: bs = 210, nf = 1, off[0] = 208; break;
    case KV_TQ1_0: bs = 54, nf = 1, off[0] = 52; break;
    case KV_TQ2_0: bs = 66, nf = 1, off[0] = 64; break;
    default: return;
    }
    for (size_t b = 0; b + bs <= bytes; b += bs)
        for (int f = 0; f < nf; f++) {
            const kv_f16 h = kv_f32_to_f16(0.001f * (float)(1 + rnd() % 100));
            memcpy(p + b + off[f], &h, 2);
        }
}

#endif
