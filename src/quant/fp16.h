/* IEEE half and bfloat16 conversions, bit-exact with round-to-nearest-even. */
#ifndef KV_FP16_H
#define KV_FP16_H

#include <stdint.h>
#include <string.h>

typedef uint16_t kv_f16;
typedef uint16_t kv_bf16;

static inline uint32_t kv_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float kv_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline float kv_f16_to_f32(kv_f16 h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    if (exp == 0x1f) return kv_bits_f32(sign | 0x7f800000u | (man << 13)); /* inf/nan */
    if (exp == 0) {
        if (man == 0) return kv_bits_f32(sign);
        /* subnormal: man * 2^-24 */
        float v = (float)man * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    return kv_bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

static inline kv_f16 kv_f32_to_f16(float f) {
    uint32_t x = kv_f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (kv_f16)(sign | 0x7e00 | ((ax >> 13) & 0x3ff)); /* nan */
    if (ax >= 0x47800000u) return (kv_f16)(sign | 0x7c00); /* >= 65536: overflow to inf */
    if (ax < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        if (ax < 0x33000000u) return (kv_f16)sign; /* rounds to zero (< 2^-25) */
        uint32_t e = ax >> 23;
        uint32_t m = (ax & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (kv_f16)(sign | r);
    }
    uint32_t r = ax - 0x38000000u; /* rebias exponent 127 -> 15 */
    uint32_t lsb = (r >> 13) & 1;
    r += 0xfff + lsb;               /* round to nearest even on the dropped 13 bits */
    return (kv_f16)(sign | (r >> 13));
}

static inline float kv_bf16_to_f32(kv_bf16 h) { return kv_bits_f32((uint32_t)h << 16); }

static inline kv_bf16 kv_f32_to_bf16(float f) {
    uint32_t u = kv_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (kv_bf16)((u >> 16) | 64); /* quiet nan */
    return (kv_bf16)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

#endif
