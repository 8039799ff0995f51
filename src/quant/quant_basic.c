/* F32, F16, BF16 and Q8_0: scalar references in the canonical order. */
#include <math.h>

#include "fp16.h"
#include "quant.h"
#include "quant_types.h"

float kv_dot_reduce16(float acc[16]) {
    for (int w = 8; w >= 1; w >>= 1)
        for (int j = 0; j < w; j++) acc[j] += acc[j + w];
    return acc[0];
}

float kv_dot_reduce8(float acc[8]) {
    for (int w = 4; w >= 1; w >>= 1)
        for (int j = 0; j < w; j++) acc[j] += acc[j + w];
    return acc[0];
}

/* ---- F32 */
static void f32_to_float(const void *src, float *dst, int64_t n) {
    const float *x = src;
    for (int64_t i = 0; i < n; i++) dst[i] = x[i];
}
static void f32_from_float(const float *src, void *dst, int64_t n) {
    float *y = dst;
    for (int64_t i = 0; i < n; i++) y[i] = src[i];
}
void kv_vec_dot_f32_ref(int64_t n, float *s, const void *vx, const void *vy) {
    const float *x = vx, *y = vy;
    float acc[16] = {0};
    for (int64_t i = 0; i < n; i++) acc[i & 15] = fmaf(x[i], y[i], acc[i & 15]);
    *s = kv_dot_reduce16(acc);
}

/* ---- F16 */
static void f16_to_float(const void *src, float *dst, int64_t n) {
    const kv_f16 *x = src;
    for (int64_t i = 0; i < n; i++) dst[i] = kv_f16_to_f32(x[i]);
}
static void f16_from_float(const float *src, void *dst, int64_t n) {
    kv_f16 *y = dst;
    for (int64_t i = 0; i < n; i++) y[i] = kv_f32_to_f16(src[i]);
}
void kv_vec_dot_f16_ref(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_f16 *x = vx, *y = vy;
    float acc[16] = {0};
    for (int64_t i = 0; i < n; i++)
        acc[i & 15] = fmaf(kv_f16_to_f32(x[i]), kv_f16_to_f32(y[i]), acc[i & 15]);
    *s = kv_dot_reduce16(acc);
}

/* ---- BF16 */
static void bf16_to_float(const void *src, float *dst, int64_t n) {
    const kv_bf16 *x = src;
    for (int64_t i = 0; i < n; i++) dst[i] = kv_bf16_to_f32(x[i]);
}
static void bf16_from_float(const float *src, void *dst, int64_t n) {
    kv_bf16 *y = dst;
    for (int64_t i = 0; i < n; i++) y[i] = kv_f32_to_bf16(src[i]);
}
void kv_vec_dot_bf16_ref(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_bf16 *x = vx, *y = vy;
    float acc[16] = {0};
    for (int64_t i = 0; i < n; i++)
        acc[i & 15] = fmaf(kv_bf16_to_f32(x[i]), kv_bf16_to_f32(y[i]), acc[i & 15]);
    *s = kv_dot_reduce16(acc);
}

/* ---- Q8_0: blocks of 32 int8 with an f16 scale */

/* Rounded and clamped to int8 without undefined behaviour for NaN or huge values. */
static inline int8_t q8_even(float v) {
    if (!(v == v)) return 0;
    v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
    return (int8_t)nearbyintf(v);
}
static inline int8_t q8_away(float v) {
    if (!(v == v)) return 0;
    v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
    return (int8_t)roundf(v);
}
void kv_dequantize_q8_0(const void *src, float *dst, int64_t n) {
    const kv_block_q8_0 *b = src;
    for (int64_t i = 0; i < n / KV_QK8_0; i++) {
        const float d = kv_f16_to_f32(b[i].d);
        for (int j = 0; j < KV_QK8_0; j++) dst[i * KV_QK8_0 + j] = d * (float)b[i].qs[j];
    }
}

/* Activations, as the x86 CPU backend does it: id = 127/amax and
 * round-to-nearest-even. */
void kv_quantize_q8_0(const float *src, void *dst, int64_t n) {
    kv_block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / KV_QK8_0; i++) {
        const float *x = src + i * KV_QK8_0;
        float amax = 0.0f;
        for (int j = 0; j < KV_QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        b[i].d = kv_f32_to_f16(d);
        for (int j = 0; j < KV_QK8_0; j++) b[i].qs[j] = q8_even(x[j] * id);
    }
}

/* Weights, as llama-quantize does it: id = 1/d and round half away from zero. */
void kv_quantize_q8_0_ref(const float *src, void *dst, int64_t n) {
    kv_block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / KV_QK8_0; i++) {
        const float *x = src + i * KV_QK8_0;
        float amax = 0.0f;
        for (int j = 0; j < KV_QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = kv_f32_to_f16(d);
        for (int j = 0; j < KV_QK8_0; j++) b[i].qs[j] = q8_away(x[j] * id);
    }
}

void kv_vec_dot_q8_0_q8_0_ref(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_block_q8_0 *x = vx, *y = vy;
    float acc[8] = {0};
    for (int64_t i = 0; i < n / KV_QK8_0; i++) {
        const float d = kv_f16_to_f32(x[i].d) * kv_f16_to_f32(y[i].d);
        for (int l = 0; l < 8; l++) {
            int32_t isum = 0;
            for (int k = 0; k < 4; k++) isum += (int32_t)x[i].qs[4 * l + k] * (int32_t)y[i].qs[4 * l + k];
            acc[l] = fmaf(d, (float)isum, acc[l]);
        }
    }
    *s = kv_dot_reduce8(acc);
}

const kv_quant_traits kv_traits_f32 = {KV_F32, f32_to_float, f32_from_float, f32_from_float, KV_F32, kv_vec_dot_f32_ref};
const kv_quant_traits kv_traits_f16 = {KV_F16, f16_to_float, f16_from_float, f16_from_float, KV_F16, kv_vec_dot_f16_ref};
const kv_quant_traits kv_traits_bf16 = {KV_BF16, bf16_to_float, bf16_from_float, bf16_from_float, KV_BF16, kv_vec_dot_bf16_ref};
const kv_quant_traits kv_traits_q8_0 = {KV_Q8_0, kv_dequantize_q8_0, kv_quantize_q8_0, kv_quantize_q8_0_ref, KV_Q8_0, kv_vec_dot_q8_0_q8_0_ref};
