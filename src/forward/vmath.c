/* exp for softmax and SiLU, defined by one fixed sequence of IEEE operations
 * (basic operations and fma), so the scalar reference and the SIMD versions
 * give the same bits on every input:
 *
 *   x NaN: x; x <= -104: 0; x > 88.7228: +inf; otherwise
 *   k  = (fma(x, log2(e), 1.5 * 2^23) - 1.5 * 2^23)     x / ln 2 rounded to an integer
 *   r  = fma(k, -ln2_hi, x); r = fma(k, -ln2_lo, r)      |r| <= ln(2) / 2
 *   p  = Taylor polynomial of degree 7 in r, Horner with fma (relative error ~1e-8)
 *   e  = (p * 2^(k >> 1)) * 2^(k - (k >> 1))             two normal scalings: no overflow of the bias
 *
 * The softmax sum is taken in double over 8 lanes (lane i mod 8, in order),
 * then the tree (l + l+4, l + l+2, l + l+1). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "forward/vmath.h"
#include "quant/quant.h"
#include "quant/simd.h"

#define EXP_LO (-104.0f)
#define EXP_HI 88.7228f
#define MAGIC 12582912.0f /* 1.5 * 2^23 */
#define LOG2E 1.44269504f
#define LN2_HI 0.693145751953125f
#define LN2_LO 1.42860677e-06f
#define C7 (1.0f / 5040.0f)
#define C6 (1.0f / 720.0f)
#define C5 (1.0f / 120.0f)
#define C4 (1.0f / 24.0f)
#define C3 (1.0f / 6.0f)

static inline float pow2i(int32_t k) {
    const uint32_t u = (uint32_t)(k + 127) << 23;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float kv_expf_ref(float x) {
    if (x != x) return x;
    if (!(x > EXP_LO)) return 0.0f;
    if (x > EXP_HI) return INFINITY;
    const float kf = fmaf(x, LOG2E, MAGIC) - MAGIC;
    float r = fmaf(kf, -LN2_HI, x);
    r = fmaf(kf, -LN2_LO, r);
    float p = C7;
    p = fmaf(p, r, C6);
    p = fmaf(p, r, C5);
    p = fmaf(p, r, C4);
    p = fmaf(p, r, C3);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    const int32_t k = (int32_t)kf, k1 = k >> 1;
    return (p * pow2i(k1)) * pow2i(k - k1);
}

static double softmax_scalar(int64_t n, float *x, float mx) {
    double acc[8] = {0};
    for (int64_t i = 0; i < n; i++) {
        x[i] = kv_expf_ref(x[i] - mx);
        acc[i & 7] += (double)x[i];
    }
    for (int l = 0; l < 4; l++) acc[l] += acc[l + 4];
    acc[0] += acc[2];
    acc[1] += acc[3];
    return acc[0] + acc[1];
}

static void silu_mul_scalar(int64_t n, float *g, const float *u) {
    for (int64_t i = 0; i < n; i++) g[i] = (g[i] / (1.0f + kv_expf_ref(-g[i]))) * u[i];
}

#if KV_X86_SIMD
#include <immintrin.h>

#define TGT512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
#define TGT2 __attribute__((target("avx2,fma")))
#define INL512 static inline __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma"), always_inline))
#define INL2 static inline __attribute__((target("avx2,fma"), always_inline))

INL512 __m512 exp16(__m512 x) {
    const __m512 kf = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(LOG2E), _mm512_set1_ps(MAGIC)), _mm512_set1_ps(MAGIC));
    __m512 r = _mm512_fmadd_ps(kf, _mm512_set1_ps(-LN2_HI), x);
    r = _mm512_fmadd_ps(kf, _mm512_set1_ps(-LN2_LO), r);
    __m512 p = _mm512_set1_ps(C7);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(C6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(C5));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(C4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(C3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    /* in range |k| <= 150, so the conversion is exact; out of range lanes are replaced below */
    const __mmask16 in = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_LO), _CMP_GT_OQ) &
                         _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_HI), _CMP_LE_OQ);
    const __m512i k = _mm512_maskz_cvtps_epi32(in, kf), k1 = _mm512_srai_epi32(k, 1), k2 = _mm512_sub_epi32(k, k1);
    const __m512i b = _mm512_set1_epi32(127);
    const __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(k1, b), 23));
    const __m512 s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(k2, b), 23));
    __m512 e = _mm512_maskz_mul_ps(in, _mm512_mul_ps(p, s1), s2); /* 0 where out of range */
    e = _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_HI), _CMP_GT_OQ), _mm512_set1_ps(INFINITY));
    return _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}

TGT512 static double softmax_avx512(int64_t n, float *x, float mx) {
    __m512d acc = _mm512_setzero_pd();
    const __m512 m = _mm512_set1_ps(mx);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), m));
        _mm512_storeu_ps(x + i, e);
        acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
    }
    if (i < n) {
        const int64_t rem = n - i;
        const __mmask16 mk = (__mmask16)((1u << rem) - 1);
        const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + i), m));
        _mm512_mask_storeu_ps(x + i, mk, e);
        acc = _mm512_mask_add_pd(acc, (__mmask8)(mk & 0xff), acc, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        acc = _mm512_mask_add_pd(acc, (__mmask8)(mk >> 8), acc, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
    }
    __m256d s = _mm256_add_pd(_mm512_castpd512_pd256(acc), _mm512_extractf64x4_pd(acc, 1));
    __m128d t = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    return _mm_cvtsd_f64(_mm_add_sd(t, _mm_unpackhi_pd(t, t)));
}

TGT512 static void silu_mul_avx512(int64_t n, float *g, const float *u) {
    const __m512 one = _mm512_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 gv = _mm512_loadu_ps(g + i);
        const __m512 e = exp16(_mm512_xor_ps(gv, _mm512_set1_ps(-0.0f)));
        _mm512_storeu_ps(g + i, _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(one, e)), _mm512_loadu_ps(u + i)));
    }
    silu_mul_scalar(n - i, g + i, u + i);
}

INL2 __m256 exp8(__m256 x) {
    const __m256 kf = _mm256_sub_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(LOG2E), _mm256_set1_ps(MAGIC)), _mm256_set1_ps(MAGIC));
    __m256 r = _mm256_fmadd_ps(kf, _mm256_set1_ps(-LN2_HI), x);
    r = _mm256_fmadd_ps(kf, _mm256_set1_ps(-LN2_LO), r);
    __m256 p = _mm256_set1_ps(C7);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(C6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(C5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(C4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(C3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256 in = _mm256_and_ps(_mm256_cmp_ps(x, _mm256_set1_ps(EXP_LO), _CMP_GT_OQ),
                                    _mm256_cmp_ps(x, _mm256_set1_ps(EXP_HI), _CMP_LE_OQ));
    const __m256i k = _mm256_cvtps_epi32(_mm256_and_ps(kf, in)), k1 = _mm256_srai_epi32(k, 1),
                  k2 = _mm256_sub_epi32(k, k1);
    const __m256i b = _mm256_set1_epi32(127);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, b), 23));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k2, b), 23));
    __m256 e = _mm256_and_ps(_mm256_mul_ps(_mm256_mul_ps(p, s1), s2), in);
    e = _mm256_blendv_ps(e, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, _mm256_set1_ps(EXP_HI), _CMP_GT_OQ));
    return _mm256_blendv_ps(e, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

TGT2 static double softmax_avx2(int64_t n, float *x, float mx) {
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd(); /* lanes 0..3, 4..7 */
    const __m256 m = _mm256_set1_ps(mx);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
        _mm256_storeu_ps(x + i, e);
        a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double acc[8];
    _mm256_storeu_pd(acc, a0);
    _mm256_storeu_pd(acc + 4, a1);
    for (int l = 0; i < n; i++, l++) {
        x[i] = kv_expf_ref(x[i] - mx);
        acc[l] += (double)x[i];
    }
    for (int l = 0; l < 4; l++) acc[l] += acc[l + 4];
    acc[0] += acc[2];
    acc[1] += acc[3];
    return acc[0] + acc[1];
}

TGT2 static void silu_mul_avx2(int64_t n, float *g, const float *u) {
    const __m256 one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i);
        const __m256 e = exp8(_mm256_xor_ps(gv, _mm256_set1_ps(-0.0f)));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    silu_mul_scalar(n - i, g + i, u + i);
}

static const kv_softmax_fn t_softmax[3] = {softmax_scalar, softmax_avx2, softmax_avx512};
static const kv_silu_mul_fn t_silu[3] = {silu_mul_scalar, silu_mul_avx2, silu_mul_avx512};
#elif KV_ARM_SIMD
#include <arm_neon.h>

#define INLN static inline __attribute__((always_inline))

/* kv_expf_ref on 4 lanes, operation for operation (vfmaq_f32(c, a, b) is fmaf(a, b, c)) */
INLN float32x4_t exp4(float32x4_t x) {
    const float32x4_t magic = vdupq_n_f32(MAGIC);
    const float32x4_t kf = vsubq_f32(vfmaq_f32(magic, x, vdupq_n_f32(LOG2E)), magic);
    float32x4_t r = vfmaq_f32(x, kf, vdupq_n_f32(-LN2_HI));
    r = vfmaq_f32(r, kf, vdupq_n_f32(-LN2_LO));
    float32x4_t p = vdupq_n_f32(C7);
    p = vfmaq_f32(vdupq_n_f32(C6), p, r);
    p = vfmaq_f32(vdupq_n_f32(C5), p, r);
    p = vfmaq_f32(vdupq_n_f32(C4), p, r);
    p = vfmaq_f32(vdupq_n_f32(C3), p, r);
    p = vfmaq_f32(vdupq_n_f32(0.5f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    const uint32x4_t in = vandq_u32(vcgtq_f32(x, vdupq_n_f32(EXP_LO)), vcleq_f32(x, vdupq_n_f32(EXP_HI)));
    /* in range kf is an integer of at most 150 in magnitude, so the conversion is exact */
    const int32x4_t k = vcvtq_s32_f32(vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(kf), in)));
    const int32x4_t k1 = vshrq_n_s32(k, 1), k2 = vsubq_s32(k, k1), b = vdupq_n_s32(127);
    const float32x4_t s1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(k1, b), 23));
    const float32x4_t s2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(k2, b), 23));
    uint32x4_t e = vandq_u32(vreinterpretq_u32_f32(vmulq_f32(vmulq_f32(p, s1), s2)), in);
    e = vbslq_u32(vcgtq_f32(x, vdupq_n_f32(EXP_HI)), vreinterpretq_u32_f32(vdupq_n_f32(INFINITY)), e);
    return vbslq_f32(vceqq_f32(x, x), vreinterpretq_f32_u32(e), x);
}

static double softmax_neon(int64_t n, float *x, float mx) {
    float64x2_t a0 = vdupq_n_f64(0.0), a1 = a0, a2 = a0, a3 = a0; /* lanes 0-1, 2-3, 4-5, 6-7 */
    const float32x4_t m = vdupq_n_f32(mx);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const float32x4_t e0 = exp4(vsubq_f32(vld1q_f32(x + i), m));
        const float32x4_t e1 = exp4(vsubq_f32(vld1q_f32(x + i + 4), m));
        vst1q_f32(x + i, e0);
        vst1q_f32(x + i + 4, e1);
        a0 = vaddq_f64(a0, vcvt_f64_f32(vget_low_f32(e0)));
        a1 = vaddq_f64(a1, vcvt_high_f64_f32(e0));
        a2 = vaddq_f64(a2, vcvt_f64_f32(vget_low_f32(e1)));
        a3 = vaddq_f64(a3, vcvt_high_f64_f32(e1));
    }
    double acc[8];
    vst1q_f64(acc, a0);
    vst1q_f64(acc + 2, a1);
    vst1q_f64(acc + 4, a2);
    vst1q_f64(acc + 6, a3);
    for (int l = 0; i < n; i++, l++) {
        x[i] = kv_expf_ref(x[i] - mx);
        acc[l] += (double)x[i];
    }
    for (int l = 0; l < 4; l++) acc[l] += acc[l + 4];
    acc[0] += acc[2];
    acc[1] += acc[3];
    return acc[0] + acc[1];
}

static void silu_mul_neon(int64_t n, float *g, const float *u) {
    const float32x4_t one = vdupq_n_f32(1.0f);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t gv = vld1q_f32(g + i);
        const float32x4_t e = exp4(vnegq_f32(gv));
        vst1q_f32(g + i, vmulq_f32(vdivq_f32(gv, vaddq_f32(one, e)), vld1q_f32(u + i)));
    }
    silu_mul_scalar(n - i, g + i, u + i);
}

static const kv_softmax_fn t_softmax[3] = {softmax_scalar, softmax_neon, softmax_neon};
static const kv_silu_mul_fn t_silu[3] = {silu_mul_scalar, silu_mul_neon, silu_mul_neon};
#else
static const kv_softmax_fn t_softmax[3] = {softmax_scalar, NULL, NULL};
static const kv_silu_mul_fn t_silu[3] = {silu_mul_scalar, NULL, NULL};
#endif

kv_softmax_fn kv_quant_get_softmax_isa(int isa) {
    return isa < KV_ISA_SCALAR || isa > KV_ISA_MAX || isa > kv_quant_best_isa() ? NULL : t_softmax[isa];
}
kv_silu_mul_fn kv_quant_get_silu_mul_isa(int isa) {
    return isa < KV_ISA_SCALAR || isa > KV_ISA_MAX || isa > kv_quant_best_isa() ? NULL : t_silu[isa];
}
kv_softmax_fn kv_quant_get_softmax(void) { return t_softmax[kv_quant_best_isa()]; }
kv_silu_mul_fn kv_quant_get_silu_mul(void) { return t_silu[kv_quant_best_isa()]; }
