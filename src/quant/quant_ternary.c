/* Ternary weights: TQ1_0 and TQ2_0 (ggml, one f16 scale per 256 values,
 * dotted with Q8_K) and I2_S (bitnet.cpp, one f32 scale per tensor, dotted
 * with the per-row int8 activation type KV_I8_S defined in quant_types.h).
 *
 * Canonical reduction orders:
 *   TQ1_0 / TQ2_0 x Q8_K: 8 lanes; element i of a super-block belongs to lane
 *     (i % 32) / 4 (as for the K-quants). With t[i] in 0..2 the stored trit,
 *     isum[l] = (exact int32 sum over the lane of t[i] * q[i])
 *               - bsums[2l] - bsums[2l+1]
 *     (the lanes add up to sum (t - 1) * q, though a single lane is not
 *     its own part of that sum), acc[l] = fmaf(d, (float)isum[l], acc[l])
 *     with d = y.d * (float)x.d, super-block after super-block, then
 *     kv_dot_reduce8. That is llama.cpp's AVX2 split (with its multiply-add
 *     contracted to FMA, as GCC does with -march=native).
 *   I2_S x I8_S: one exact int32 raw = sum over the row of code * q, then
 *     *s = ((float)raw - (float)y.sum) / y.scale: bitnet.cpp's
 *     "(dot - act_sum) / act_scale" (its caller then multiplies by the
 *     tensor scale, and so does ours). Only integer work before the last
 *     two float operations, so the order inside the sum does not matter. */
#include <math.h>
#include <string.h>

#include "fp16.h"
#include "quant.h"
#include "quant_types.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

static const int32_t k_ones16[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};

/* ggml's lroundf(v) + 1 for the values its ternary quantizers produce
 * (|v| <= 1 up to rounding): 0, 1, 2 for -1, 0, +1, ties away from zero.
 * NaN reads as 0 (code 1). */
static inline int trit_of(float v) {
    if (v >= 0.5f) return 2;
    if (v <= -0.5f) return 0;
    return 1;
}

static inline float absmax(const float *x, int n) {
    float amax = 0.0f;
    for (int j = 0; j < n; j++) {
        const float a = fabsf(x[j]);
        amax = amax > a ? amax : a; /* ggml's MAX(amax, fabsf(v)) */
    }
    return amax;
}

/* ================================================================ TQ2_0 */
/* x = d * (t - 1); element 128h + 32l + m (h = 0..1, l = 0..3, m = 0..31) is
 * the 2-bit t at shift 2l of qs[32h + m]; d = max|x|. */

/* the stored trits t (0..2) in element order */
static void unpack_tq2_0(const kv_block_tq2_0 *b, int8_t t[KV_QK_K]) {
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 4; l++)
            for (int m = 0; m < 32; m++) t[128 * h + 32 * l + m] = (int8_t)((b->qs[32 * h + m] >> (2 * l)) & 3);
}

static void dequantize_tq2_0(const void *src, float *dst, int64_t n) {
    const kv_block_tq2_0 *b = src;
    int8_t w[KV_QK_K];
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        const float d = kv_f16_to_f32(b[i].d);
        unpack_tq2_0(&b[i], w);
        for (int e = 0; e < KV_QK_K; e++) *dst++ = (float)(w[e] - 1) * d;
    }
}

static void quantize_tq2_0_ref(const float *src, void *dst, int64_t n) {
    kv_block_tq2_0 *b = dst;
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        const float *x = src + i * KV_QK_K;
        const float d = absmax(x, KV_QK_K);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = kv_f32_to_f16(d);
        for (int h = 0; h < 2; h++)
            for (int m = 0; m < 32; m++) {
                unsigned q = 0;
                for (int l = 0; l < 4; l++) q |= (unsigned)trit_of(x[128 * h + 32 * l + m] * id) << (2 * l);
                b[i].qs[32 * h + m] = (uint8_t)q;
            }
    }
}

static void vec_dot_tq2_0_q8_K(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_block_tq2_0 *x = vx;
    const kv_block_q8_K *y = vy;
    float acc[8] = {0};
    int8_t w[KV_QK_K];
    int32_t isum[8];
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        unpack_tq2_0(&x[i], w);
        kv_qk_lane_sums(w, y[i].qs, k_ones16, isum);
        const float d = y[i].d * kv_f16_to_f32(x[i].d);
        for (int l = 0; l < 8; l++) {
            isum[l] -= (int32_t)y[i].bsums[2 * l] + y[i].bsums[2 * l + 1];
            acc[l] = fmaf(d, (float)isum[l], acc[l]);
        }
    }
    *s = kv_dot_reduce8(acc);
}

/* ================================================================ TQ1_0 */
/* x = d * (t - 1). A byte holds 5 trits (4 in qh bytes) as the fixed-point
 * fraction ceil(v * 256 / 243) of their base-3 number v, first trit most
 * significant; trit k of byte b is ((uint8_t)(b * 3^k) * 3) >> 8.
 *   elements       0..159: trit k of qs[m],      m = 0..31, element 32k + m
 *   elements     160..239: trit k of qs[32 + m], m = 0..15, element 160 + 16k + m
 *   elements     240..255: trit k of qh[m],      m = 0..3,  element 240 + 4k + m
 * d = max|x|. */

static const uint8_t k_pow3[6] = {1, 3, 9, 27, 81, 243};

static inline int8_t trit_at(uint8_t byte, int k) {
    const uint8_t q = (uint8_t)(byte * k_pow3[k]);
    return (int8_t)(((uint16_t)q * 3) >> 8);
}

/* the trits t (0..2) in element order */
static void unpack_tq1_0(const kv_block_tq1_0 *b, int8_t w[KV_QK_K]) {
    for (int k = 0; k < 5; k++)
        for (int m = 0; m < 32; m++) w[32 * k + m] = trit_at(b->qs[m], k);
    for (int k = 0; k < 5; k++)
        for (int m = 0; m < 16; m++) w[160 + 16 * k + m] = trit_at(b->qs[32 + m], k);
    for (int k = 0; k < 4; k++)
        for (int m = 0; m < 4; m++) w[240 + 4 * k + m] = trit_at(b->qh[m], k);
}

static void dequantize_tq1_0(const void *src, float *dst, int64_t n) {
    const kv_block_tq1_0 *b = src;
    int8_t w[KV_QK_K];
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        const float d = kv_f16_to_f32(b[i].d);
        unpack_tq1_0(&b[i], w);
        for (int e = 0; e < KV_QK_K; e++) *dst++ = (float)(w[e] - 1) * d;
    }
}

/* ceil(v * 256 / 243) of a base-3 number v < 243 */
static inline uint8_t pack_trits(unsigned v) { return (uint8_t)((v * 256 + 242) / 243); }

static void quantize_tq1_0_ref(const float *src, void *dst, int64_t n) {
    kv_block_tq1_0 *b = dst;
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        const float *x = src + i * KV_QK_K;
        const float d = absmax(x, KV_QK_K);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = kv_f32_to_f16(d);
        for (int m = 0; m < 32; m++) {
            unsigned v = 0;
            for (int k = 0; k < 5; k++) v = v * 3 + (unsigned)trit_of(x[32 * k + m] * id);
            b[i].qs[m] = pack_trits(v);
        }
        for (int m = 0; m < 16; m++) {
            unsigned v = 0;
            for (int k = 0; k < 5; k++) v = v * 3 + (unsigned)trit_of(x[160 + 16 * k + m] * id);
            b[i].qs[32 + m] = pack_trits(v);
        }
        for (int m = 0; m < 4; m++) {
            unsigned v = 0;
            for (int k = 0; k < 4; k++) v = v * 3 + (unsigned)trit_of(x[240 + 4 * k + m] * id);
            b[i].qh[m] = pack_trits(v * 3); /* the 4 trits take the top places */
        }
    }
}

static void vec_dot_tq1_0_q8_K(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_block_tq1_0 *x = vx;
    const kv_block_q8_K *y = vy;
    float acc[8] = {0};
    int8_t w[KV_QK_K];
    int32_t isum[8];
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        unpack_tq1_0(&x[i], w);
        kv_qk_lane_sums(w, y[i].qs, k_ones16, isum);
        const float d = y[i].d * kv_f16_to_f32(x[i].d);
        for (int l = 0; l < 8; l++) {
            isum[l] -= (int32_t)y[i].bsums[2 * l] + y[i].bsums[2 * l + 1];
            acc[l] = fmaf(d, (float)isum[l], acc[l]);
        }
    }
    *s = kv_dot_reduce8(acc);
}

/* ================================================================ I2_S */

float kv_i2_s_scale(const void *tensor_data, int64_t n_elements) {
    float s;
    memcpy(&s, (const uint8_t *)tensor_data + n_elements / 4, sizeof s);
    return s;
}

static void dequantize_i2_s(const void *src, float *dst, int64_t n) {
    static const float k_map[4] = {-1.0f, 0.0f, 1.0f, 0.0f};
    const uint8_t *x = src;
    for (int64_t i = 0; i < n / KV_QK_I2_S; i++, x += 32, dst += KV_QK_I2_S)
        for (int g = 0; g < 4; g++)
            for (int j = 0; j < 32; j++) dst[32 * g + j] = k_map[(x[j] >> (6 - 2 * g)) & 3];
}

/* bitnet.cpp's quantize_i2_s over a whole tensor: scale = max|x| (in double),
 * code 1 where |x| < 1e-6, else 2 for positive and 0 for negative x. */
static void quantize_i2_s(const float *src, void *dst, int64_t n) {
    uint8_t *y = dst;
    double max = 0.0;
    for (int64_t i = 0; i < n; i++) max = fmax(max, fabs((double)src[i]));
    memset(y, 0, (size_t)(n / 4) + KV_I2_S_TAIL);
    for (int64_t i = 0; i < n; i++) {
        const double v = (double)src[i];
        const unsigned code = fabs(v) < 1e-6 ? 1u : (v * max > 0.0 ? 2u : 0u);
        const int64_t blk = i / KV_QK_I2_S, j = i % KV_QK_I2_S;
        y[blk * 32 + j % 32] |= (uint8_t)(code << (6 - 2 * (j / 32)));
    }
    const float scale = (float)max;
    memcpy(y + n / 4, &scale, sizeof scale);
}

static void vec_dot_i2_s_i8_s(int64_t n, float *s, const void *vx, const void *vy) {
    const uint8_t *x = vx;
    kv_i8_s_head head;
    memcpy(&head, vy, sizeof head);
    const int8_t *q = (const int8_t *)vy + sizeof head;
    int32_t raw = 0;
    for (int64_t i = 0; i < n / KV_QK_I2_S; i++, x += 32, q += KV_QK_I2_S)
        for (int g = 0; g < 4; g++)
            for (int j = 0; j < 32; j++) raw += (int32_t)((x[j] >> (6 - 2 * g)) & 3) * q[32 * g + j];
    *s = ((float)raw - (float)head.sum) / head.scale;
}

/* ================================================================ I8_S */

static void dequantize_i8_s(const void *src, float *dst, int64_t n) {
    kv_i8_s_head head;
    memcpy(&head, src, sizeof head);
    const int8_t *q = (const int8_t *)src + sizeof head;
    for (int64_t i = 0; i < n; i++) dst[i] = (float)q[i] / head.scale;
}

/* bitnet.cpp's quantize_row_i8_s: max|x| in double from 1e-5 up,
 * scale = (float)(127 / max), q = round-half-away((double)(x * scale))
 * clamped to [-128, 127]. */
static void quantize_i8_s(const float *src, void *dst, int64_t n) {
    double max = 0.00001;
    for (int64_t i = 0; i < n; i++) {
        const double a = fabs((double)src[i]);
        if (a > max) max = a;
    }
    kv_i8_s_head head = {(float)(127 / max), 0};
    int8_t *q = (int8_t *)dst + sizeof head;
    for (int64_t i = 0; i < n; i++) {
        double t = round((double)(src[i] * head.scale));
        if (t > 127)
            t = 127;
        else if (t < -128)
            t = -128;
        else if (t != t)
            t = 0; /* NaN: bitnet.cpp's cast would be undefined; we read it as 0 */
        q[i] = (int8_t)t;
        head.sum += q[i];
    }
    memcpy(dst, &head, sizeof head);
}

/* Not in bitnet.cpp; provided so that every registered type can be dotted
 * with its vec_dot_type: (float)sum(qx * qy) / x.scale / y.scale. */
static void vec_dot_i8_s_i8_s(int64_t n, float *s, const void *vx, const void *vy) {
    kv_i8_s_head hx, hy;
    memcpy(&hx, vx, sizeof hx);
    memcpy(&hy, vy, sizeof hy);
    const int8_t *qx = (const int8_t *)vx + sizeof hx, *qy = (const int8_t *)vy + sizeof hy;
    int32_t raw = 0;
    for (int64_t i = 0; i < n; i++) raw += (int32_t)qx[i] * qy[i];
    *s = (float)raw / hx.scale / hy.scale;
}

const kv_quant_traits kv_traits_tq1_0 = {KV_TQ1_0, dequantize_tq1_0, quantize_tq1_0_ref, quantize_tq1_0_ref, KV_Q8_K, vec_dot_tq1_0_q8_K};
const kv_quant_traits kv_traits_tq2_0 = {KV_TQ2_0, dequantize_tq2_0, quantize_tq2_0_ref, quantize_tq2_0_ref, KV_Q8_K, vec_dot_tq2_0_q8_K};
const kv_quant_traits kv_traits_i2_s = {KV_I2_S, dequantize_i2_s, quantize_i2_s, quantize_i2_s, KV_I8_S, vec_dot_i2_s_i8_s};
const kv_quant_traits kv_traits_i8_s = {KV_I8_S, dequantize_i8_s, quantize_i8_s, quantize_i8_s, KV_I8_S, vec_dot_i8_s_i8_s};
