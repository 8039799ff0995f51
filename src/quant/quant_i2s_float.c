/* I2_S weights against float activations: the reference semantics of a
 * ternary model with unquantized activations (what ik_llama.cpp computes on
 * weights dequantized to F32). Canonical order: 16 lanes, lane j takes
 * elements i = j (mod 16) in increasing i with fmaf, then the tree of
 * kv_dot_reduce16 — the same order as F32 x F32. */
#include <math.h>

#include "quant.h"
#include "quant_i2s_float.h"
#include "quant_types.h"

/* Value i of row (codes 0, 1, 2 mean -1, 0, +1): byte i/128*32 + i%32, shift 6 - 2*((i%128)/32). */
static inline float i2s_value(const uint8_t *row, int64_t i) {
    const uint8_t b = row[(i >> 7) * 32 + (i & 31)];
    const int code = (b >> (6 - 2 * ((i & 127) >> 5))) & 3;
    return (float)(code - 1);
}

void kv_vec_dot_i2_s_f32(int64_t n, float *s, const void *vx, const void *vy) {
    const uint8_t *x = vx;
    const float *y = vy;
    float acc[16] = {0};
    for (int64_t i = 0; i < n; i++) acc[i & 15] = fmaf(i2s_value(x, i), y[i], acc[i & 15]);
    *s = kv_dot_reduce16(acc);
}
