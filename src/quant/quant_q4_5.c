/* Q4_0, Q4_1, Q5_0, Q5_1 (weights, 32-element blocks) and Q8_1 (the
 * activation type Q4_1/Q5_1 are dotted with). Byte layouts are ggml's.
 *
 * Quantizers: from_float_ref reproduces ggml's reference quantizers (what
 * llama-quantize writes when it has no importance matrix) operation for
 * operation, so re-quantizing gives the same bytes. For the four weight types
 * llama.cpp's CPU backend uses the same reference code for from_float; Q8_1
 * activations follow the x86 AVX path (multiplier 127/amax, ties to even).
 *
 * Canonical reduction order of every vec_dot here (32-element blocks, block
 * after block in increasing order):
 *   8 lanes; lane l holds the exact int32 sum isum_l of the 4 products
 *   w[4l+k] * q[4l+k], k = 0..3, of the block (w: the weight's signed integer
 *   value, q: the activation's int8), then
 *       acc[l] = fmaf(dx * dy, (float)isum_l, acc[l])
 *   with dx, dy the block scales as floats and dx * dy one float product.
 *   Types with a min (Q4_1, Q5_1 against Q8_1) also keep one scalar
 *       accm = fmaf(mx, sy, accm)
 *   (mx: the weight block's min, sy: the Q8_1 block's s, both as floats).
 *   Result: kv_dot_reduce8(acc), plus accm for the types with a min.
 * This is the same split as Q8_0 x Q8_0 in quant_basic.c. */
#include <float.h>
#include <math.h>

#include "fp16.h"
#include "quant.h"
#include "quant_types.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* ggml writes MIN(hi, (int8_t)v) for v >= 0: truncation toward zero, capped.
 * Same result for every v the quantizers can produce, without UB for
 * out-of-range or NaN inputs. */
static inline int trunc_cap(float v, int hi) {
    if (!(v > 0.0f)) return 0;
    if (v >= (float)hi) return hi;
    return (int)v;
}

/* Exact int32 lane sums of one 32-element block: lane l = elements 4l..4l+3. */
static inline void lanes32(const int8_t *w, const int8_t *q, int32_t isum[8]) {
    for (int l = 0; l < 8; l++) {
        int32_t s = 0;
        for (int k = 0; k < 4; k++) s += (int32_t)w[4 * l + k] * (int32_t)q[4 * l + k];
        isum[l] = s;
    }
}

/* (int8_t) of an already rounded value, saturating, NaN as 0: the same as a
 * plain cast for every value the quantizers produce from finite input. */
static inline int8_t sat_i8(float v) {
    if (v >= 127.0f) return 127;
    if (v <= -128.0f) return -128;
    if (!(v == v)) return 0;
    return (int8_t)v;
}

static inline uint32_t load_qh(const uint8_t qh[4]) {
    return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
}

static inline void store_qh(uint8_t qh[4], uint32_t v) {
    for (int b = 0; b < 4; b++) qh[b] = (uint8_t)(v >> (8 * b));
}

/* Largest-magnitude element, first one on ties (ggml's "amax < |v|"). */
static inline float signed_absmax(const float *x, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++) {
        const float a = fabsf(x[j]);
        if (amax < a) {
            amax = a;
            max = x[j];
        }
    }
    return max;
}

static inline void min_max(const float *x, int n, float *mn, float *mx) {
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (int j = 0; j < n; j++) {
        if (x[j] < lo) lo = x[j];
        if (x[j] > hi) hi = x[j];
    }
    *mn = lo;
    *mx = hi;
}

/* ================================================================ Q4_0 */
/* x = d * (q - 8), q in 0..15; d = max / -8 where max is the signed value of
 * largest magnitude, so that element maps to q = 0. */

static void dequantize_q4_0(const void *src, float *dst, int64_t n) {
    const kv_block_q4_0 *b = src;
    for (int64_t i = 0; i < n / KV_QK4_0; i++, dst += KV_QK4_0) {
        const float d = kv_f16_to_f32(b[i].d);
        for (int j = 0; j < 16; j++) {
            dst[j] = (float)((b[i].qs[j] & 0x0F) - 8) * d;
            dst[j + 16] = (float)((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void quantize_q4_0_ref(const float *src, void *dst, int64_t n) {
    kv_block_q4_0 *b = dst;
    for (int64_t i = 0; i < n / KV_QK4_0; i++) {
        const float *x = src + i * KV_QK4_0;
        const float d = signed_absmax(x, KV_QK4_0) / -8;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = kv_f32_to_f16(d);
        for (int j = 0; j < 16; j++) {
            const int q0 = trunc_cap(x[j] * id + 8.5f, 15);
            const int q1 = trunc_cap(x[j + 16] * id + 8.5f, 15);
            b[i].qs[j] = (uint8_t)(q0 | q1 << 4);
        }
    }
}

static void vec_dot_q4_0_q8_0(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_block_q4_0 *x = vx;
    const kv_block_q8_0 *y = vy;
    float acc[8] = {0};
    int8_t w[32];
    int32_t isum[8];
    for (int64_t i = 0; i < n / KV_QK4_0; i++) {
        for (int j = 0; j < 16; j++) {
            w[j] = (int8_t)((x[i].qs[j] & 0x0F) - 8);
            w[j + 16] = (int8_t)((x[i].qs[j] >> 4) - 8);
        }
        lanes32(w, y[i].qs, isum);
        const float d = kv_f16_to_f32(x[i].d) * kv_f16_to_f32(y[i].d);
        for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float)isum[l], acc[l]);
    }
    *s = kv_dot_reduce8(acc);
}

/* ================================================================ Q4_1 */
/* x = d * q + m, q in 0..15; m = block min, d = (max - min) / 15. */

static void dequantize_q4_1(const void *src, float *dst, int64_t n) {
    const kv_block_q4_1 *b = src;
    for (int64_t i = 0; i < n / KV_QK4_1; i++, dst += KV_QK4_1) {
        const float d = kv_f16_to_f32(b[i].d);
        const float m = kv_f16_to_f32(b[i].m);
        for (int j = 0; j < 16; j++) {
            dst[j] = (float)(b[i].qs[j] & 0x0F) * d + m;
            dst[j + 16] = (float)(b[i].qs[j] >> 4) * d + m;
        }
    }
}

static void quantize_q4_1_ref(const float *src, void *dst, int64_t n) {
    kv_block_q4_1 *b = dst;
    for (int64_t i = 0; i < n / KV_QK4_1; i++) {
        const float *x = src + i * KV_QK4_1;
        float mn, mx;
        min_max(x, KV_QK4_1, &mn, &mx);
        const float d = (mx - mn) / 15;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = kv_f32_to_f16(d);
        b[i].m = kv_f32_to_f16(mn);
        for (int j = 0; j < 16; j++) {
            const int q0 = trunc_cap((x[j] - mn) * id + 0.5f, 15);
            const int q1 = trunc_cap((x[j + 16] - mn) * id + 0.5f, 15);
            b[i].qs[j] = (uint8_t)(q0 | q1 << 4);
        }
    }
}

static void vec_dot_q4_1_q8_1(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_block_q4_1 *x = vx;
    const kv_block_q8_1 *y = vy;
    float acc[8] = {0}, accm = 0.0f;
    int8_t w[32];
    int32_t isum[8];
    for (int64_t i = 0; i < n / KV_QK4_1; i++) {
        for (int j = 0; j < 16; j++) {
            w[j] = (int8_t)(x[i].qs[j] & 0x0F);
            w[j + 16] = (int8_t)(x[i].qs[j] >> 4);
        }
        lanes32(w, y[i].qs, isum);
        const float d = kv_f16_to_f32(x[i].d) * kv_f16_to_f32(y[i].d);
        for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float)isum[l], acc[l]);
        accm = fmaf(kv_f16_to_f32(x[i].m), kv_f16_to_f32(y[i].s), accm);
    }
    *s = kv_dot_reduce8(acc) + accm;
}

/* ================================================================ Q5_0 */
/* x = d * (q - 16), q in 0..31: low 4 bits in qs as for Q4_0, bit 4 of
 * element j in bit j of qh (little-endian u32); d = max / -16. */

static void dequantize_q5_0(const void *src, float *dst, int64_t n) {
    const kv_block_q5_0 *b = src;
    for (int64_t i = 0; i < n / KV_QK5_0; i++, dst += KV_QK5_0) {
        const float d = kv_f16_to_f32(b[i].d);
        const uint32_t qh = load_qh(b[i].qh);
        for (int j = 0; j < 16; j++) {
            const int h0 = (int)((qh >> j) << 4 & 0x10);
            const int h1 = (int)((qh >> (j + 12)) & 0x10);
            dst[j] = (float)(((b[i].qs[j] & 0x0F) | h0) - 16) * d;
            dst[j + 16] = (float)(((b[i].qs[j] >> 4) | h1) - 16) * d;
        }
    }
}

static void quantize_q5_0_ref(const float *src, void *dst, int64_t n) {
    kv_block_q5_0 *b = dst;
    for (int64_t i = 0; i < n / KV_QK5_0; i++) {
        const float *x = src + i * KV_QK5_0;
        const float d = signed_absmax(x, KV_QK5_0) / -16;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = kv_f32_to_f16(d);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            const int q0 = trunc_cap(x[j] * id + 16.5f, 31);
            const int q1 = trunc_cap(x[j + 16] * id + 16.5f, 31);
            b[i].qs[j] = (uint8_t)((q0 & 0x0F) | (q1 & 0x0F) << 4);
            qh |= (uint32_t)(q0 >> 4) << j;
            qh |= (uint32_t)(q1 >> 4) << (j + 16);
        }
        store_qh(b[i].qh, qh);
    }
}

static void vec_dot_q5_0_q8_0(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_block_q5_0 *x = vx;
    const kv_block_q8_0 *y = vy;
    float acc[8] = {0};
    int8_t w[32];
    int32_t isum[8];
    for (int64_t i = 0; i < n / KV_QK5_0; i++) {
        const uint32_t qh = load_qh(x[i].qh);
        for (int j = 0; j < 16; j++) {
            w[j] = (int8_t)(((x[i].qs[j] & 0x0F) | ((qh >> j) << 4 & 0x10)) - 16);
            w[j + 16] = (int8_t)(((x[i].qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - 16);
        }
        lanes32(w, y[i].qs, isum);
        const float d = kv_f16_to_f32(x[i].d) * kv_f16_to_f32(y[i].d);
        for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float)isum[l], acc[l]);
    }
    *s = kv_dot_reduce8(acc);
}

/* ================================================================ Q5_1 */
/* x = d * q + m, q in 0..31 (bit 4 in qh as for Q5_0); d = (max - min) / 31. */

static void dequantize_q5_1(const void *src, float *dst, int64_t n) {
    const kv_block_q5_1 *b = src;
    for (int64_t i = 0; i < n / KV_QK5_1; i++, dst += KV_QK5_1) {
        const float d = kv_f16_to_f32(b[i].d);
        const float m = kv_f16_to_f32(b[i].m);
        const uint32_t qh = load_qh(b[i].qh);
        for (int j = 0; j < 16; j++) {
            const int h0 = (int)((qh >> j) << 4 & 0x10);
            const int h1 = (int)((qh >> (j + 12)) & 0x10);
            dst[j] = (float)((b[i].qs[j] & 0x0F) | h0) * d + m;
            dst[j + 16] = (float)((b[i].qs[j] >> 4) | h1) * d + m;
        }
    }
}

static void quantize_q5_1_ref(const float *src, void *dst, int64_t n) {
    kv_block_q5_1 *b = dst;
    for (int64_t i = 0; i < n / KV_QK5_1; i++) {
        const float *x = src + i * KV_QK5_1;
        float mn, mx;
        min_max(x, KV_QK5_1, &mn, &mx);
        const float d = (mx - mn) / 31;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = kv_f32_to_f16(d);
        b[i].m = kv_f32_to_f16(mn);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            const int q0 = trunc_cap((x[j] - mn) * id + 0.5f, 31);
            const int q1 = trunc_cap((x[j + 16] - mn) * id + 0.5f, 31);
            b[i].qs[j] = (uint8_t)((q0 & 0x0F) | (q1 & 0x0F) << 4);
            qh |= (uint32_t)(q0 >> 4) << j;
            qh |= (uint32_t)(q1 >> 4) << (j + 16);
        }
        store_qh(b[i].qh, qh);
    }
}

static void vec_dot_q5_1_q8_1(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_block_q5_1 *x = vx;
    const kv_block_q8_1 *y = vy;
    float acc[8] = {0}, accm = 0.0f;
    int8_t w[32];
    int32_t isum[8];
    for (int64_t i = 0; i < n / KV_QK5_1; i++) {
        const uint32_t qh = load_qh(x[i].qh);
        for (int j = 0; j < 16; j++) {
            w[j] = (int8_t)((x[i].qs[j] & 0x0F) | ((qh >> j) << 4 & 0x10));
            w[j + 16] = (int8_t)((x[i].qs[j] >> 4) | ((qh >> (j + 12)) & 0x10));
        }
        lanes32(w, y[i].qs, isum);
        const float d = kv_f16_to_f32(x[i].d) * kv_f16_to_f32(y[i].d);
        for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float)isum[l], acc[l]);
        accm = fmaf(kv_f16_to_f32(x[i].m), kv_f16_to_f32(y[i].s), accm);
    }
    *s = kv_dot_reduce8(acc) + accm;
}

/* ================================================================ Q8_1 */
/* x = d * q; s = d * sum(q) rounded to f16. */

static void dequantize_q8_1(const void *src, float *dst, int64_t n) {
    const kv_block_q8_1 *b = src;
    for (int64_t i = 0; i < n / KV_QK8_1; i++) {
        const float d = kv_f16_to_f32(b[i].d);
        for (int j = 0; j < KV_QK8_1; j++) dst[i * KV_QK8_1 + j] = (float)b[i].qs[j] * d;
    }
}

/* Activations, as the x86 CPU backend does it: multiplier 127/amax and
 * round-to-nearest-even; s from the integer sum. */
static void quantize_q8_1(const float *src, void *dst, int64_t n) {
    kv_block_q8_1 *b = dst;
    for (int64_t i = 0; i < n / KV_QK8_1; i++) {
        const float *x = src + i * KV_QK8_1;
        float amax = 0.0f;
        for (int j = 0; j < KV_QK8_1; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        b[i].d = kv_f32_to_f16(d);
        int32_t sum = 0;
        for (int j = 0; j < KV_QK8_1; j++) {
            b[i].qs[j] = sat_i8(nearbyintf(x[j] * id));
            sum += b[i].qs[j];
        }
        b[i].s = kv_f32_to_f16(d * (float)sum);
    }
}

/* As ggml's reference: multiplier 1/d and round half away from zero. */
static void quantize_q8_1_ref(const float *src, void *dst, int64_t n) {
    kv_block_q8_1 *b = dst;
    for (int64_t i = 0; i < n / KV_QK8_1; i++) {
        const float *x = src + i * KV_QK8_1;
        float amax = 0.0f;
        for (int j = 0; j < KV_QK8_1; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = kv_f32_to_f16(d);
        int32_t sum = 0;
        for (int j = 0; j < KV_QK8_1; j++) {
            b[i].qs[j] = sat_i8(roundf(x[j] * id));
            sum += b[i].qs[j];
        }
        b[i].s = kv_f32_to_f16((float)sum * d);
    }
}

/* Not used by llama.cpp (it has no Q8_1 x Q8_1 kernel); provided so that
 * every registered type can be dotted with its vec_dot_type. Same split as
 * Q8_0 x Q8_0, the s fields are not used. */
static void vec_dot_q8_1_q8_1(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_block_q8_1 *x = vx;
    const kv_block_q8_1 *y = vy;
    float acc[8] = {0};
    int32_t isum[8];
    for (int64_t i = 0; i < n / KV_QK8_1; i++) {
        lanes32(x[i].qs, y[i].qs, isum);
        const float d = kv_f16_to_f32(x[i].d) * kv_f16_to_f32(y[i].d);
        for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float)isum[l], acc[l]);
    }
    *s = kv_dot_reduce8(acc);
}

const kv_quant_traits kv_traits_q4_0 = {KV_Q4_0, dequantize_q4_0, quantize_q4_0_ref, quantize_q4_0_ref, KV_Q8_0, vec_dot_q4_0_q8_0};
const kv_quant_traits kv_traits_q4_1 = {KV_Q4_1, dequantize_q4_1, quantize_q4_1_ref, quantize_q4_1_ref, KV_Q8_1, vec_dot_q4_1_q8_1};
const kv_quant_traits kv_traits_q5_0 = {KV_Q5_0, dequantize_q5_0, quantize_q5_0_ref, quantize_q5_0_ref, KV_Q8_0, vec_dot_q5_0_q8_0};
const kv_quant_traits kv_traits_q5_1 = {KV_Q5_1, dequantize_q5_1, quantize_q5_1_ref, quantize_q5_1_ref, KV_Q8_1, vec_dot_q5_1_q8_1};
const kv_quant_traits kv_traits_q8_1 = {KV_Q8_1, dequantize_q8_1, quantize_q8_1, quantize_q8_1_ref, KV_Q8_1, vec_dot_q8_1_q8_1};
