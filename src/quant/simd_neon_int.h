/* The NEON integer kernels, included twice by simd_neon.c: with NEON_DP 0
 * (ARMv8.0) and NEON_DP 1 (compiled for +dotprod), NEON_FN naming each
 * copy. Not a header of its own: no include guard on purpose.
 *
 * Every kernel forms the reference's int32 lanes exactly (lane l of a
 * 32-element run: the 4 consecutive products 4l..4l+3, dot4 below), so the
 * two copies give the same integers; the float steps are the reference's,
 * lane by lane (vfmaq_n_f32(acc, v, d) is fmaf(d, v, acc)). */

#ifndef KV_NEON_INT_COMMON
#define KV_NEON_INT_COMMON
/* an f16 scale as a float: fcvt, exact (a NaN is quieted, which a dot
 * result does not see: NaN in, NaN out) */
INL float h2f(kv_f16 h) {
    __fp16 f;
    memcpy(&f, &h, sizeof f);
    return (float)f;
}
#endif

#undef DOT4
#if NEON_DP
#define DOT4(acc, a, b) vdotq_s32((acc), (a), (b))
#else
/* lane l += a[4l..4l+3] . b[4l..4l+3]: smull to 16-bit products (|p| <= 2^14),
 * saddlp sums pairs into 32 bits, addp the pairs of pairs */
#define DOT4(acc, a, b)                                                                              \
    vaddq_s32((acc), vpaddq_s32(vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b))),                 \
                                vpaddlq_s16(vmull_high_s8((a), (b)))))
#endif

/* ---- Q8_0 x Q8_0 and Q4_0 x Q8_0: per block 8 lanes, acc = fmaf(dx * dy, isum, acc) */

void NEON_FN(vec_dot_q8_0)(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_block_q8_0 *x = vx, *y = vy;
    float32x4_t lo = vdupq_n_f32(0.0f), hi = lo;
    const int32x4_t z = vdupq_n_s32(0);
    for (int64_t i = 0; i < n / KV_QK8_0; i++) {
        const float d = h2f(x[i].d) * h2f(y[i].d);
        const int32x4_t s0 = DOT4(z, vld1q_s8(x[i].qs), vld1q_s8(y[i].qs));
        const int32x4_t s1 = DOT4(z, vld1q_s8(x[i].qs + 16), vld1q_s8(y[i].qs + 16));
        lo = vfmaq_n_f32(lo, vcvtq_f32_s32(s0), d);
        hi = vfmaq_n_f32(hi, vcvtq_f32_s32(s1), d);
    }
    *s = reduce8(lo, hi);
}

void NEON_FN(vec_dot_q4_0)(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_block_q4_0 *x = vx;
    const kv_block_q8_0 *y = vy;
    float32x4_t lo = vdupq_n_f32(0.0f), hi = lo;
    const int32x4_t z = vdupq_n_s32(0);
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    const int8x16_t e8 = vdupq_n_s8(8);
    for (int64_t i = 0; i < n / KV_QK4_0; i++) {
        const float d = h2f(x[i].d) * h2f(y[i].d);
        const uint8x16_t q = vld1q_u8(x[i].qs);
        const int8x16_t w0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, m4)), e8); /* elements 0..15 */
        const int8x16_t w1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), e8); /* 16..31 */
        const int32x4_t s0 = DOT4(z, w0, vld1q_s8(y[i].qs));
        const int32x4_t s1 = DOT4(z, w1, vld1q_s8(y[i].qs + 16));
        lo = vfmaq_n_f32(lo, vcvtq_f32_s32(s0), d);
        hi = vfmaq_n_f32(hi, vcvtq_f32_s32(s1), d);
    }
    *s = reduce8(lo, hi);
}

/* ---- the 256-element types against Q8_K (kv_qk_lane_sums): run k of 32
 * elements (k = 0..7) adds sc16[2k] * its lanes 0..3 and sc16[2k+1] * its
 * lanes 4..7 to the super-block's 8 int32 lanes (lo, hi) */

#undef KRUN
#define KRUN(lo, hi, wa, wb, y, s0, s1)                                                   \
    do {                                                                                  \
        const int32x4_t z_ = vdupq_n_s32(0);                                              \
        lo = vmlaq_n_s32(lo, DOT4(z_, (wa), vld1q_s8(y)), (s0));                          \
        hi = vmlaq_n_s32(hi, DOT4(z_, (wb), vld1q_s8((y) + 16)), (s1));                   \
    } while (0)
#undef KRUN1 /* a run with scale 1 */
#define KRUN1(lo, hi, wa, wb, y)                                                          \
    do {                                                                                  \
        lo = DOT4(lo, (wa), vld1q_s8(y));                                                 \
        hi = DOT4(hi, (wb), vld1q_s8((y) + 16));                                          \
    } while (0)

void NEON_FN(vec_dot_q8_K)(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_block_q8_K *x = vx, *y = vy;
    float32x4_t flo = vdupq_n_f32(0.0f), fhi = flo;
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        int32x4_t lo = vdupq_n_s32(0), hi = lo;
        for (int k = 0; k < 8; k++)
            KRUN1(lo, hi, vld1q_s8(x[i].qs + 32 * k), vld1q_s8(x[i].qs + 32 * k + 16), y[i].qs + 32 * k);
        const float d = x[i].d * y[i].d;
        flo = vfmaq_n_f32(flo, vcvtq_f32_s32(lo), d);
        fhi = vfmaq_n_f32(fhi, vcvtq_f32_s32(hi), d);
    }
    *s = reduce8(flo, fhi);
}

/* Q4_K: element 64c + l (l < 32) is the low nibble of qs[32c + l], 64c + 32 + l
 * its high nibble; run k (sub-block k of 32) has the 6-bit scale sc[k] and min
 * mn[k] as get_scale_min_k4 unpacks them (both halves of a run share them) */
void NEON_FN(vec_dot_q4_K)(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_block_q4_K *x = vx;
    const kv_block_q8_K *y = vy;
    float32x4_t flo = vdupq_n_f32(0.0f), fhi = flo, fm = flo;
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        const uint8_t *q = x[i].scales;
        int32_t sc[8], mn[8];
        for (int j = 0; j < 4; j++) {
            sc[j] = q[j] & 63;
            mn[j] = q[j + 4] & 63;
            sc[j + 4] = (q[j + 8] & 0xF) | ((q[j] >> 6) << 4);
            mn[j + 4] = (q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4);
        }
        int32x4_t lo = vdupq_n_s32(0), hi = lo;
        for (int c = 0; c < 4; c++) {
            const uint8x16_t q0 = vld1q_u8(x[i].qs + 32 * c), q1 = vld1q_u8(x[i].qs + 32 * c + 16);
            KRUN(lo, hi, vreinterpretq_s8_u8(vandq_u8(q0, m4)), vreinterpretq_s8_u8(vandq_u8(q1, m4)),
                 y[i].qs + 64 * c, sc[2 * c], sc[2 * c]);
            KRUN(lo, hi, vreinterpretq_s8_u8(vshrq_n_u8(q0, 4)), vreinterpretq_s8_u8(vshrq_n_u8(q1, 4)),
                 y[i].qs + 64 * c + 32, sc[2 * c + 1], sc[2 * c + 1]);
        }
        const float d = y[i].d * h2f(x[i].d);
        const float nd = -(y[i].d * h2f(x[i].dmin));
        const int16_t *bs = y[i].bsums;
        int32_t pm[4];
        for (int k = 0; k < 4; k++)
            pm[k] = mn[2 * k] * ((int32_t)bs[4 * k] + bs[4 * k + 1]) +
                    mn[2 * k + 1] * ((int32_t)bs[4 * k + 2] + bs[4 * k + 3]);
        fm = vfmaq_n_f32(fm, vcvtq_f32_s32(vld1q_s32(pm)), nd);
        flo = vfmaq_n_f32(flo, vcvtq_f32_s32(lo), d);
        fhi = vfmaq_n_f32(fhi, vcvtq_f32_s32(hi), d);
    }
    float m[4];
    vst1q_f32(m, fm);
    *s = reduce8(flo, fhi) + ((m[0] + m[2]) + (m[1] + m[3]));
}

/* Q6_K: in half h, element 128h + 32j + l is a nibble of ql (low nibbles of
 * ql[l], ql[l + 32], then their high nibbles, j = 0..3) with 2 top bits at
 * shift 2j of qh[l], minus 32; run k has scales[2k] and scales[2k + 1] */
void NEON_FN(vec_dot_q6_K)(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_block_q6_K *x = vx;
    const kv_block_q8_K *y = vy;
    float32x4_t flo = vdupq_n_f32(0.0f), fhi = flo;
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m3 = vdupq_n_u8(0x30);
    const int8x16_t e32 = vdupq_n_s8(32);
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        const int8_t *sc = x[i].scales;
        int32x4_t lo = vdupq_n_s32(0), hi = lo;
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[i].ql + 64 * h, *qh = x[i].qh + 32 * h;
            const int8_t *yq = y[i].qs + 128 * h;
            uint8x16_t L0[2], L1[2], H[2];
            for (int t = 0; t < 2; t++) {
                L0[t] = vld1q_u8(ql + 16 * t);
                L1[t] = vld1q_u8(ql + 32 + 16 * t);
                H[t] = vld1q_u8(qh + 16 * t);
            }
            uint8x16_t w[4][2];
            for (int t = 0; t < 2; t++) {
                w[0][t] = vorrq_u8(vandq_u8(L0[t], m4), vandq_u8(vshlq_n_u8(H[t], 4), m3));
                w[1][t] = vorrq_u8(vandq_u8(L1[t], m4), vandq_u8(vshlq_n_u8(H[t], 2), m3));
                w[2][t] = vorrq_u8(vshrq_n_u8(L0[t], 4), vandq_u8(H[t], m3));
                w[3][t] = vorrq_u8(vshrq_n_u8(L1[t], 4), vandq_u8(vshrq_n_u8(H[t], 2), m3));
            }
            for (int j = 0; j < 4; j++) {
                const int k = 4 * h + j;
                KRUN(lo, hi, vsubq_s8(vreinterpretq_s8_u8(w[j][0]), e32), vsubq_s8(vreinterpretq_s8_u8(w[j][1]), e32),
                     yq + 32 * j, sc[2 * k], sc[2 * k + 1]);
            }
        }
        const float d = y[i].d * h2f(x[i].d);
        flo = vfmaq_n_f32(flo, vcvtq_f32_s32(lo), d);
        fhi = vfmaq_n_f32(fhi, vcvtq_f32_s32(hi), d);
    }
    *s = reduce8(flo, fhi);
}

/* TQ2_0: element 128h + 32l + m is the 2-bit code at shift 2l of qs[32h + m]
 * (0, 1, 2); lane l's sum of codes * q, minus bsums[2l] + bsums[2l + 1] */
void NEON_FN(vec_dot_tq2_0)(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_block_tq2_0 *x = vx;
    const kv_block_q8_K *y = vy;
    float32x4_t flo = vdupq_n_f32(0.0f), fhi = flo;
    const uint8x16_t m2 = vdupq_n_u8(3);
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        int32x4_t lo = vdupq_n_s32(0), hi = lo;
        for (int h = 0; h < 2; h++) {
            const uint8x16_t q0 = vld1q_u8(x[i].qs + 32 * h), q1 = vld1q_u8(x[i].qs + 32 * h + 16);
            const int8_t *yq = y[i].qs + 128 * h;
            KRUN1(lo, hi, vreinterpretq_s8_u8(vandq_u8(q0, m2)), vreinterpretq_s8_u8(vandq_u8(q1, m2)), yq);
            KRUN1(lo, hi, vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(q0, 2), m2)),
                  vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(q1, 2), m2)), yq + 32);
            KRUN1(lo, hi, vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(q0, 4), m2)),
                  vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(q1, 4), m2)), yq + 64);
            KRUN1(lo, hi, vreinterpretq_s8_u8(vshrq_n_u8(q0, 6)), vreinterpretq_s8_u8(vshrq_n_u8(q1, 6)), yq + 96);
        }
        lo = vsubq_s32(lo, vpaddlq_s16(vld1q_s16(y[i].bsums)));
        hi = vsubq_s32(hi, vpaddlq_s16(vld1q_s16(y[i].bsums + 8)));
        const float d = y[i].d * h2f(x[i].d);
        flo = vfmaq_n_f32(flo, vcvtq_f32_s32(lo), d);
        fhi = vfmaq_n_f32(fhi, vcvtq_f32_s32(hi), d);
    }
    *s = reduce8(flo, fhi);
}

GEMM_OF_DOT(NEON_FN(gemm_q8_0), NEON_FN(vec_dot_q8_0))
GEMM_OF_DOT(NEON_FN(gemm_q4_0), NEON_FN(vec_dot_q4_0))
GEMM_OF_DOT(NEON_FN(gemm_q8_K), NEON_FN(vec_dot_q8_K))
GEMM_OF_DOT(NEON_FN(gemm_q4_K), NEON_FN(vec_dot_q4_K))
GEMM_OF_DOT(NEON_FN(gemm_q6_K), NEON_FN(vec_dot_q6_K))
GEMM_OF_DOT(NEON_FN(gemm_tq2_0), NEON_FN(vec_dot_tq2_0))
