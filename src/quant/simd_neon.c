/* ARM64 NEON kernels (aarch64 builds; see simd.h). Same contract as the x86
 * files: every result has the bits of the scalar reference (quant.h, the top
 * of each quant_*.c).
 *
 * Float dots (F32/F16/BF16): four float32x4 accumulators are the 16 lanes of
 * the canonical order (lane j: elements i = j mod 16, vfmaq_f32 = fmaf in
 * increasing i), the tail of n mod 16 elements goes to lanes 0.. with
 * scalar fmaf, then kv_dot_reduce16. Conversions: fcvtl / fcvtn are exact
 * IEEE conversions with round to nearest even (Linux runs with FPCR's
 * default: no flush to zero, no default NaN); F16 to float restores a
 * signalling NaN's bits as the reference keeps them.
 *
 * The integer kernels (Q8_0, Q4_0, Q8_K, Q4_K, Q6_K, TQ2_0) are in
 * simd_neon_int.h, compiled twice below: kv_neon_* for ARMv8.0 (products
 * by smull, summed in pairs by saddlp / addp) and kv_neondp_* with the dot
 * product instructions (sdot sums exactly the 4 consecutive products a lane
 * of the canonical order holds). Integer sums are exact, so both give the
 * same int32 lanes; the float steps after them are the reference's. */
#include "simd.h"

#if KV_ARM_SIMD

#include <arm_neon.h>
#include <math.h>
#include <string.h>

#include "fp16.h"
#include "quant_types.h"

#define INL static inline __attribute__((always_inline))

/* 8 lanes of floats in two registers -> kv_dot_reduce8's tree */
INL float reduce8(float32x4_t lo, float32x4_t hi) {
    const float32x4_t s = vaddq_f32(lo, hi);                              /* j += j + 4 */
    const float32x2_t t = vadd_f32(vget_low_f32(s), vget_high_f32(s));    /* j += j + 2 */
    return vget_lane_f32(t, 0) + vget_lane_f32(t, 1);                     /* j += j + 1 */
}

/* ------------------------------------------------------------ float types */

enum { E_F32, E_F16, E_BF16 };

/* 4 elements from p + i as floats (F16: exact; a NaN's quieting is not seen
 * by the dots, whose NaN results only have to be NaN) */
INL float32x4_t ld4(const void *p, int64_t i, const int e) {
    if (e == E_F32) return vld1q_f32((const float *)p + i);
    if (e == E_F16) return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)p + i)));
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const uint16_t *)p + i), 16));
}
INL float ld1(const void *p, int64_t i, const int e) {
    if (e == E_F32) return ((const float *)p)[i];
    if (e == E_F16) return kv_f16_to_f32(((const uint16_t *)p)[i]);
    return kv_bf16_to_f32(((const uint16_t *)p)[i]);
}

INL void dot_float(int64_t n, float *s, const void *x, const void *y, const int e) {
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = vfmaq_f32(a0, ld4(x, i, e), ld4(y, i, e));
        a1 = vfmaq_f32(a1, ld4(x, i + 4, e), ld4(y, i + 4, e));
        a2 = vfmaq_f32(a2, ld4(x, i + 8, e), ld4(y, i + 8, e));
        a3 = vfmaq_f32(a3, ld4(x, i + 12, e), ld4(y, i + 12, e));
    }
    float acc[16];
    vst1q_f32(acc, a0);
    vst1q_f32(acc + 4, a1);
    vst1q_f32(acc + 8, a2);
    vst1q_f32(acc + 12, a3);
    for (int j = 0; i < n; i++, j++) acc[j] = fmaf(ld1(x, i, e), ld1(y, i, e), acc[j]);
    *s = kv_dot_reduce16(acc);
}

/* the gemm of a vec_dot: y[c * ldy + r] = dot(row r, column c), rows outer */
#define GEMM_OF_DOT(NAME, DOT)                                                                                 \
    void NAME(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, int nc, float *y,     \
              int64_t ldy) {                                                                                   \
        for (int r = 0; r < nr; r++)                                                                           \
            for (int c = 0; c < nc; c++)                                                                       \
                DOT(n, &y[(int64_t)c * ldy + r], (const uint8_t *)w + (uint64_t)r * ws,                       \
                    (const uint8_t *)x + (uint64_t)c * xs);                                                    \
    }

void kv_neon_vec_dot_f32(int64_t n, float *s, const void *x, const void *y) { dot_float(n, s, x, y, E_F32); }
void kv_neon_vec_dot_f16(int64_t n, float *s, const void *x, const void *y) { dot_float(n, s, x, y, E_F16); }
void kv_neon_vec_dot_bf16(int64_t n, float *s, const void *x, const void *y) { dot_float(n, s, x, y, E_BF16); }
GEMM_OF_DOT(kv_neon_gemm_f32, kv_neon_vec_dot_f32)
GEMM_OF_DOT(kv_neon_gemm_f16, kv_neon_vec_dot_f16)
GEMM_OF_DOT(kv_neon_gemm_bf16, kv_neon_vec_dot_bf16)

/* ---- y[i] = fmaf(a, x[i], y[i]) */
void kv_neon_mad_f32(int64_t n, float a, const void *vx, float *y) {
    const float *x = vx;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
    for (; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}
void kv_neon_mad_f16(int64_t n, float a, const void *vx, float *y) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), ld4(vx, i, E_F16), a));
    for (; i < n; i++) y[i] = fmaf(a, kv_f16_to_f32(((const kv_f16 *)vx)[i]), y[i]);
}

/* ---- conversions */

void kv_neon_to_float_f16(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const uint16x4_t hv = vld1_u16(h + i);
        const uint32x4_t h32 = vmovl_u16(hv);
        uint32x4_t f = vreinterpretq_u32_f32(vcvt_f32_f16(vreinterpret_f16_u16(hv)));
        /* a NaN keeps its payload bits as in the reference (fcvtl quiets a signalling one) */
        const uint32x4_t nan = vcgtq_u32(vandq_u32(h32, vdupq_n_u32(0x7fff)), vdupq_n_u32(0x7c00));
        const uint32x4_t bits = vorrq_u32(vshlq_n_u32(vandq_u32(h32, vdupq_n_u32(0x8000)), 16),
                                          vorrq_u32(vdupq_n_u32(0x7f800000),
                                                    vshlq_n_u32(vandq_u32(h32, vdupq_n_u32(0x3ff)), 13)));
        f = vbslq_u32(nan, bits, f);
        vst1q_f32(dst + i, vreinterpretq_f32_u32(f));
    }
    for (; i < n; i++) dst[i] = kv_f16_to_f32(h[i]);
}

/* fcvtn rounds to nearest even, overflows to infinity, keeps subnormals and
 * turns a NaN into a quiet one with its top payload bits: kv_f32_to_f16 */
void kv_neon_from_float_f16(const float *src, void *dst, int64_t n) {
    uint16_t *h = dst;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1_u16(h + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(src + i))));
    for (; i < n; i++) h[i] = kv_f32_to_f16(src[i]);
}

void kv_neon_to_float_bf16(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, ld4(h, i, E_BF16));
    for (; i < n; i++) dst[i] = kv_bf16_to_f32(h[i]);
}

/* kv_f32_to_bf16's integer rounding (bfcvt, where there is one, is not used:
 * it is ARMv8.6 and its NaN differs) */
void kv_neon_from_float_bf16(const float *src, void *dst, int64_t n) {
    uint16_t *h = dst;
    int64_t i = 0;
    const uint32x4_t one = vdupq_n_u32(1), r7 = vdupq_n_u32(0x7fff);
    const uint32x4_t abs = vdupq_n_u32(0x7fffffff), inf = vdupq_n_u32(0x7f800000), q = vdupq_n_u32(64);
    for (; i + 4 <= n; i += 4) {
        const uint32x4_t u = vreinterpretq_u32_f32(vld1q_f32(src + i));
        const uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), one);
        const uint32x4_t r = vshrq_n_u32(vaddq_u32(u, vaddq_u32(r7, lsb)), 16);
        const uint32x4_t qn = vorrq_u32(vshrq_n_u32(u, 16), q);
        const uint32x4_t nan = vcgtq_u32(vandq_u32(u, abs), inf);
        vst1_u16(h + i, vmovn_u32(vbslq_u32(nan, qn, r)));
    }
    for (; i < n; i++) h[i] = kv_f32_to_bf16(src[i]);
}

/* ---- Q8_0 / Q8_K activations */

void kv_neon_to_float_q8_0(const void *src, float *dst, int64_t n) {
    const kv_block_q8_0 *b = src;
    for (int64_t i = 0; i < n / KV_QK8_0; i++, dst += KV_QK8_0) {
        const float d = kv_f16_to_f32(b[i].d);
        for (int k = 0; k < 2; k++) {
            const int8x16_t q = vld1q_s8(b[i].qs + 16 * k);
            const int16x8_t lo = vmovl_s8(vget_low_s8(q)), hi = vmovl_s8(vget_high_s8(q));
            vst1q_f32(dst + 16 * k, vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), d));
            vst1q_f32(dst + 16 * k + 4, vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo))), d));
            vst1q_f32(dst + 16 * k + 8, vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), d));
            vst1q_f32(dst + 16 * k + 12, vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi))), d));
        }
    }
}

/* |x| of 4 floats, by clearing the sign bit (exactly fabsf, NaNs included) */
INL float32x4_t abs4(float32x4_t v) {
    return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(v), vdupq_n_u32(0x7fffffff)));
}

/* Q8_0 activations: amax = fmaxf(amax, |x|) over the block (a max is exact in
 * any order; fmaxnm, like fmaxf, lets a number win over a quiet NaN), d =
 * amax / 127, id = 127 / amax, q = nearbyint(clamp(x * id, -127, 127)) with
 * NaN as 0: frintn is nearbyint under the default rounding mode. */
void kv_neon_from_float_q8_0(const float *src, void *dst, int64_t n) {
    kv_block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / KV_QK8_0; i++) {
        const float *x = src + i * KV_QK8_0;
        float32x4_t v[8];
        for (int k = 0; k < 8; k++) v[k] = vld1q_f32(x + 4 * k);
        /* lane-wise in element order, as the reference's chain, then across the lanes */
        float amax = 0.0f;
        for (int k = 0; k < 8; k++) {
            float t[4];
            vst1q_f32(t, abs4(v[k]));
            for (int l = 0; l < 4; l++) amax = fmaxf(amax, t[l]);
        }
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        b[i].d = kv_f32_to_f16(d);
        int32x4_t q[8];
        for (int k = 0; k < 8; k++) {
            float32x4_t s = vmulq_n_f32(v[k], id);
            s = vbslq_f32(vceqq_f32(s, s), s, vdupq_n_f32(0.0f)); /* NaN -> 0 */
            s = vmaxq_f32(vminq_f32(s, vdupq_n_f32(127.0f)), vdupq_n_f32(-127.0f));
            q[k] = vcvtq_s32_f32(vrndnq_f32(s));
        }
        for (int k = 0; k < 2; k++) {
            const int16x8_t lo = vcombine_s16(vmovn_s32(q[4 * k]), vmovn_s32(q[4 * k + 1]));
            const int16x8_t hi = vcombine_s16(vmovn_s32(q[4 * k + 2]), vmovn_s32(q[4 * k + 3]));
            vst1q_s8(b[i].qs + 16 * k, vcombine_s8(vmovn_s16(lo), vmovn_s16(hi)));
        }
    }
}

/* Q8_K (quantize_q8_K): max = the first x of largest |x| (NaNs never win),
 * iscale = -127 / max, q = min(127, kv_nearest_int(iscale * x)) with its
 * magic-number rounding done the same way, bsums, d = 1 / iscale. */
void kv_neon_from_float_q8_K(const float *src, void *dst, int64_t n) {
    kv_block_q8_K *b = dst;
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        const float *x = src + i * KV_QK_K;
        float32x4_t m = vdupq_n_f32(0.0f);
        for (int j = 0; j < KV_QK_K; j += 4) {
            const float32x4_t a = abs4(vld1q_f32(x + j));
            m = vbslq_f32(vcgtq_f32(a, m), a, m); /* if (ax > amax) amax = ax */
        }
        const float amax = vmaxvq_f32(m); /* no NaN is left in m */
        if (amax == 0.0f) {
            memset(&b[i], 0, sizeof b[i]);
            continue;
        }
        float max = 0.0f;
        for (int j = 0; j < KV_QK_K; j++)
            if (fabsf(x[j]) == amax) {
                max = x[j];
                break;
            }
        const float iscale = -127.f / max;
        const float32x4_t magic = vdupq_n_f32(12582912.0f);
        for (int j = 0; j < KV_QK_K; j += 16) {
            int32x4_t q[4];
            for (int k = 0; k < 4; k++) {
                const float32x4_t t = vaddq_f32(vmulq_n_f32(vld1q_f32(x + j + 4 * k), iscale), magic);
                const int32x4_t u = vreinterpretq_s32_f32(t);
                q[k] = vminq_s32(vsubq_s32(vandq_s32(u, vdupq_n_s32(0x007fffff)), vdupq_n_s32(0x00400000)),
                                 vdupq_n_s32(127));
            }
            const int16x8_t lo = vcombine_s16(vmovn_s32(q[0]), vmovn_s32(q[1]));
            const int16x8_t hi = vcombine_s16(vmovn_s32(q[2]), vmovn_s32(q[3]));
            const int8x16_t q8 = vcombine_s8(vmovn_s16(lo), vmovn_s16(hi));
            vst1q_s8(b[i].qs + j, q8);
            b[i].bsums[j / 16] = (int16_t)vaddlvq_s8(q8);
        }
        b[i].d = 1 / iscale;
    }
}

/* ------------------------------------------------------------ the integer kernels, twice */

#define NEON_DP 0
#define NEON_FN(name) kv_neon_##name
#include "simd_neon_int.h"
#undef NEON_DP
#undef NEON_FN

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
#define NEON_DP 1
#define NEON_FN(name) kv_neondp_##name
#include "simd_neon_int.h"
#undef NEON_DP
#undef NEON_FN
#pragma GCC pop_options

#endif /* KV_ARM_SIMD */
