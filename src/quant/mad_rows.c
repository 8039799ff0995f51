/* Attention's weighted sum of value rows, many rows per call:
 *     for r = 0 .. nrows-1 in order: y[i] = fmaf(a[r], x_r[i], y[i])
 * which is exactly nrows successive kv_vec_mad_fn calls (one fma per
 * element and row, rows in the given order), so every ISA gives the same
 * bits. The SIMD versions keep a chunk of y in registers across all rows
 * instead of loading and storing it once per row. Q8_0 rows are read from
 * their blocks directly: x_r[i] = d * q[i] is exact in float (an f16 scale
 * times an int8), so the result equals dequantizing the row first and
 * summing it as F32. */
#include <math.h>

#include "fp16.h"
#include "quant.h"
#include "quant_types.h"
#include "simd.h"

static void mad_rows_f32_scalar(int64_t n, int nrows, const float *a, const void *const *x, float *y) {
    for (int r = 0; r < nrows; r++) {
        const float *xr = x[r];
        for (int64_t i = 0; i < n; i++) y[i] = fmaf(a[r], xr[i], y[i]);
    }
}

static void mad_rows_f16_scalar(int64_t n, int nrows, const float *a, const void *const *x, float *y) {
    for (int r = 0; r < nrows; r++) {
        const kv_f16 *xr = x[r];
        for (int64_t i = 0; i < n; i++) y[i] = fmaf(a[r], kv_f16_to_f32(xr[i]), y[i]);
    }
}

/* Q8_0 rows of n elements (n a multiple of 32) */
static void mad_rows_q8_0_scalar(int64_t n, int nrows, const float *a, const void *const *x, float *y) {
    for (int r = 0; r < nrows; r++) {
        const kv_block_q8_0 *b = x[r];
        for (int64_t ib = 0; ib < n / KV_QK8_0; ib++) {
            const float d = kv_f16_to_f32(b[ib].d);
            float *yb = y + ib * KV_QK8_0;
            for (int j = 0; j < KV_QK8_0; j++) yb[j] = fmaf(a[r], d * (float)b[ib].qs[j], yb[j]);
        }
    }
}

#if KV_X86_SIMD
#include <immintrin.h>

#define TGT512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define TGT2 __attribute__((target("avx2,fma,f16c")))

/* 8 zmm of y (128 elements), then 4 (64), per pass over the rows, named registers (an array indexed by
 * a run-time count is kept on the stack: every fma a load and a store); the tail up to 4 zmm, masked */
#define MAD512(NAME, LOAD)                                                                                        \
    TGT512 static void NAME(int64_t n, int nrows, const float *a, const void *const *x, float *y) {               \
        const __mmask16 mf = (__mmask16)0xffff;                                                                   \
        int64_t i0 = 0;                                                                                           \
        for (; i0 + 128 <= n; i0 += 128) {                                                                        \
            __m512 c0 = _mm512_loadu_ps(y + i0), c1 = _mm512_loadu_ps(y + i0 + 16);                               \
            __m512 c2 = _mm512_loadu_ps(y + i0 + 32), c3 = _mm512_loadu_ps(y + i0 + 48);                          \
            __m512 c4 = _mm512_loadu_ps(y + i0 + 64), c5 = _mm512_loadu_ps(y + i0 + 80);                          \
            __m512 c6 = _mm512_loadu_ps(y + i0 + 96), c7 = _mm512_loadu_ps(y + i0 + 112);                         \
            for (int r = 0; r < nrows; r++) {                                                                     \
                const __m512 av = _mm512_set1_ps(a[r]);                                                           \
                const void *xr = x[r];                                                                            \
                c0 = _mm512_fmadd_ps(av, LOAD(xr, i0, mf), c0);                                                   \
                c1 = _mm512_fmadd_ps(av, LOAD(xr, i0 + 16, mf), c1);                                              \
                c2 = _mm512_fmadd_ps(av, LOAD(xr, i0 + 32, mf), c2);                                              \
                c3 = _mm512_fmadd_ps(av, LOAD(xr, i0 + 48, mf), c3);                                              \
                c4 = _mm512_fmadd_ps(av, LOAD(xr, i0 + 64, mf), c4);                                              \
                c5 = _mm512_fmadd_ps(av, LOAD(xr, i0 + 80, mf), c5);                                              \
                c6 = _mm512_fmadd_ps(av, LOAD(xr, i0 + 96, mf), c6);                                              \
                c7 = _mm512_fmadd_ps(av, LOAD(xr, i0 + 112, mf), c7);                                             \
            }                                                                                                     \
            _mm512_storeu_ps(y + i0, c0), _mm512_storeu_ps(y + i0 + 16, c1);                                      \
            _mm512_storeu_ps(y + i0 + 32, c2), _mm512_storeu_ps(y + i0 + 48, c3);                                 \
            _mm512_storeu_ps(y + i0 + 64, c4), _mm512_storeu_ps(y + i0 + 80, c5);                                 \
            _mm512_storeu_ps(y + i0 + 96, c6), _mm512_storeu_ps(y + i0 + 112, c7);                                \
        }                                                                                                         \
        for (; i0 + 64 <= n; i0 += 64) {                                                                          \
            __m512 c0 = _mm512_loadu_ps(y + i0), c1 = _mm512_loadu_ps(y + i0 + 16);                               \
            __m512 c2 = _mm512_loadu_ps(y + i0 + 32), c3 = _mm512_loadu_ps(y + i0 + 48);                          \
            for (int r = 0; r < nrows; r++) {                                                                     \
                const __m512 av = _mm512_set1_ps(a[r]);                                                           \
                const void *xr = x[r];                                                                            \
                c0 = _mm512_fmadd_ps(av, LOAD(xr, i0, mf), c0);                                                   \
                c1 = _mm512_fmadd_ps(av, LOAD(xr, i0 + 16, mf), c1);                                              \
                c2 = _mm512_fmadd_ps(av, LOAD(xr, i0 + 32, mf), c2);                                              \
                c3 = _mm512_fmadd_ps(av, LOAD(xr, i0 + 48, mf), c3);                                              \
            }                                                                                                     \
            _mm512_storeu_ps(y + i0, c0), _mm512_storeu_ps(y + i0 + 16, c1);                                      \
            _mm512_storeu_ps(y + i0 + 32, c2), _mm512_storeu_ps(y + i0 + 48, c3);                                 \
        }                                                                                                         \
        for (; i0 < n; i0 += 64) {                                                                                \
            const int64_t len = n - i0 < 64 ? n - i0 : 64;                                                        \
            const int nv = (int)((len + 15) / 16);                                                                \
            __mmask16 m[4];                                                                                       \
            __m512 acc[4];                                                                                        \
            _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) {                                                                         \
                const int64_t left = len - 16 * k;                                                                \
                m[k] = left >= 16 ? (__mmask16)0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;             \
                acc[k] = _mm512_maskz_loadu_ps(m[k], y + i0 + 16 * k);                                            \
            }                                                                                                     \
            for (int r = 0; r < nrows; r++) {                                                                     \
                const __m512 av = _mm512_set1_ps(a[r]);                                                           \
                for (int k = 0; k < nv; k++) acc[k] = _mm512_fmadd_ps(av, LOAD(x[r], i0 + 16 * k, m[k]), acc[k]); \
            }                                                                                                     \
            for (int k = 0; k < nv; k++) _mm512_mask_storeu_ps(y + i0 + 16 * k, m[k], acc[k]);                    \
        }                                                                                                         \
    }

#define LD_F32_512(p, i, mk) _mm512_maskz_loadu_ps(mk, (const float *)(p) + (i))
#define LD_F16_512(p, i, mk) _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, (const uint16_t *)(p) + (i)))
MAD512(mad_rows_f32_avx512, LD_F32_512)
MAD512(mad_rows_f16_avx512, LD_F16_512)

/* AVX2: 4 ymm (32 elements) per pass over the rows, then single ymm; a
 * tail under 8 in scalar fmaf (the same operation) */
#define MAD2(NAME, LOAD, SCALAR, ES)                                                                     \
    TGT2 static void NAME(int64_t n, int nrows, const float *a, const void *const *x, float *y) {         \
        int64_t i0 = 0;                                                                                  \
        for (; i0 + 32 <= n; i0 += 32) {                                                                 \
            __m256 acc[4];                                                                               \
            _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) acc[k] = _mm256_loadu_ps(y + i0 + 8 * k);                       \
            for (int r = 0; r < nrows; r++) {                                                            \
                const __m256 av = _mm256_set1_ps(a[r]);                                                  \
                _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) acc[k] = _mm256_fmadd_ps(av, LOAD(x[r], i0 + 8 * k), acc[k]); \
            }                                                                                            \
            _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) _mm256_storeu_ps(y + i0 + 8 * k, acc[k]);                        \
        }                                                                                                \
        for (; i0 + 8 <= n; i0 += 8) {                                                                   \
            __m256 acc = _mm256_loadu_ps(y + i0);                                                        \
            for (int r = 0; r < nrows; r++) acc = _mm256_fmadd_ps(_mm256_set1_ps(a[r]), LOAD(x[r], i0), acc); \
            _mm256_storeu_ps(y + i0, acc);                                                               \
        }                                                                                                \
        for (int r = 0; r < nrows && i0 < n; r++) {                                                      \
            const void *xs[1] = {(const char *)x[r] + i0 * ES};                                          \
            SCALAR(n - i0, 1, a + r, xs, y + i0);                                                        \
        }                                                                                                \
    }

#define LD_F32_2(p, i) _mm256_loadu_ps((const float *)(p) + (i))
#define LD_F16_2(p, i) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)(p) + (i))))
MAD2(mad_rows_f32_avx2, LD_F32_2, mad_rows_f32_scalar, 4)
MAD2(mad_rows_f16_avx2, LD_F16_2, mad_rows_f16_scalar, 2)

/* Q8_0: one block (32 elements) of y in registers per pass over the rows
   (two blocks with AVX-512); d * q is exact, then one fma as above */
TGT512 static void mad_rows_q8_0_avx512(int64_t n, int nrows, const float *a, const void *const *x, float *y) {
    const int64_t nb = n / KV_QK8_0;
    int64_t ib = 0;
    for (; ib + 2 <= nb; ib += 2) {
        __m512 acc[4];
        _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) acc[k] = _mm512_loadu_ps(y + ib * KV_QK8_0 + 16 * k);
        for (int r = 0; r < nrows; r++) {
            const kv_block_q8_0 *b = (const kv_block_q8_0 *)x[r] + ib;
            const __m512 av = _mm512_set1_ps(a[r]);
            _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) {
                const kv_block_q8_0 *bk = b + k / 2;
                const __m512 d = _mm512_set1_ps(kv_f16_to_f32(bk->d));
                const __m128i q8 = _mm_loadu_si128((const __m128i *)(bk->qs + 16 * (k % 2)));
                const __m512 v = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q8)));
                acc[k] = _mm512_fmadd_ps(av, v, acc[k]);
            }
        }
        _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) _mm512_storeu_ps(y + ib * KV_QK8_0 + 16 * k, acc[k]);
    }
    for (; ib < nb; ib++) {
        __m512 acc[2];
        _Pragma("GCC unroll 4") for (int k = 0; k < 2; k++) acc[k] = _mm512_loadu_ps(y + ib * KV_QK8_0 + 16 * k);
        for (int r = 0; r < nrows; r++) {
            const kv_block_q8_0 *b = (const kv_block_q8_0 *)x[r] + ib;
            const __m512 av = _mm512_set1_ps(a[r]), d = _mm512_set1_ps(kv_f16_to_f32(b->d));
            _Pragma("GCC unroll 4") for (int k = 0; k < 2; k++) {
                const __m128i q8 = _mm_loadu_si128((const __m128i *)(b->qs + 16 * k));
                acc[k] = _mm512_fmadd_ps(av, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q8))), acc[k]);
            }
        }
        _Pragma("GCC unroll 4") for (int k = 0; k < 2; k++) _mm512_storeu_ps(y + ib * KV_QK8_0 + 16 * k, acc[k]);
    }
}

TGT2 static void mad_rows_q8_0_avx2(int64_t n, int nrows, const float *a, const void *const *x, float *y) {
    for (int64_t ib = 0; ib < n / KV_QK8_0; ib++) {
        __m256 acc[4];
        _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) acc[k] = _mm256_loadu_ps(y + ib * KV_QK8_0 + 8 * k);
        for (int r = 0; r < nrows; r++) {
            const kv_block_q8_0 *b = (const kv_block_q8_0 *)x[r] + ib;
            const __m256 av = _mm256_set1_ps(a[r]), d = _mm256_set1_ps(kv_f16_to_f32(b->d));
            _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) {
                const __m128i q8 = _mm_loadl_epi64((const __m128i *)(b->qs + 8 * k));
                acc[k] = _mm256_fmadd_ps(av, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8))), acc[k]);
            }
        }
        _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) _mm256_storeu_ps(y + ib * KV_QK8_0 + 8 * k, acc[k]);
    }
}

static const kv_vec_mad_rows_fn t_f32[3] = {mad_rows_f32_scalar, mad_rows_f32_avx2, mad_rows_f32_avx512};
static const kv_vec_mad_rows_fn t_f16[3] = {mad_rows_f16_scalar, mad_rows_f16_avx2, mad_rows_f16_avx512};
static const kv_vec_mad_rows_fn t_q8_0[3] = {mad_rows_q8_0_scalar, mad_rows_q8_0_avx2, mad_rows_q8_0_avx512};
#elif KV_ARM_SIMD
#include <arm_neon.h>

/* 16 elements of y in 4 registers per pass over the rows (vfmaq_n_f32(y, x, a) is
   fmaf(a, x, y)); the tail element by element, rows in order as well */
#define MADN(NAME, LOAD, SCALAR)                                                                       \
    static void NAME(int64_t n, int nrows, const float *a, const void *const *x, float *y) {         \
        int64_t i0 = 0;                                                                              \
        for (; i0 + 16 <= n; i0 += 16) {                                                             \
            float32x4_t acc[4];                                                                      \
            _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) acc[k] = vld1q_f32(y + i0 + 4 * k);                          \
            for (int r = 0; r < nrows; r++)                                                          \
                _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) acc[k] = vfmaq_n_f32(acc[k], LOAD(x[r], i0 + 4 * k), a[r]); \
            _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) vst1q_f32(y + i0 + 4 * k, acc[k]);                           \
        }                                                                                            \
        for (int r = 0; r < nrows; r++)                                                              \
            for (int64_t i = i0; i < n; i++) y[i] = fmaf(a[r], SCALAR(x[r], i), y[i]);               \
    }
#define LD_F32N(p, i) vld1q_f32((const float *)(p) + (i))
#define LD_F32N_1(p, i) ((const float *)(p))[i]
#define LD_F16N(p, i) vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)(p) + (i))))
#define LD_F16N_1(p, i) kv_f16_to_f32(((const kv_f16 *)(p))[i])
MADN(mad_rows_f32_neon, LD_F32N, LD_F32N_1)
MADN(mad_rows_f16_neon, LD_F16N, LD_F16N_1)

/* a block of 32 per pass: x = d * q (exact), then the fma of each row */
static void mad_rows_q8_0_neon(int64_t n, int nrows, const float *a, const void *const *x, float *y) {
    for (int64_t ib = 0; ib < n / KV_QK8_0; ib++) {
        float32x4_t acc[8];
        float *yb = y + ib * KV_QK8_0;
        for (int k = 0; k < 8; k++) acc[k] = vld1q_f32(yb + 4 * k);
        for (int r = 0; r < nrows; r++) {
            const kv_block_q8_0 *b = (const kv_block_q8_0 *)x[r] + ib;
            const float d = kv_f16_to_f32(b->d);
            for (int h = 0; h < 2; h++) {
                const int8x16_t q = vld1q_s8(b->qs + 16 * h);
                const int16x8_t lo = vmovl_s8(vget_low_s8(q)), hi = vmovl_s8(vget_high_s8(q));
                const int32x4_t v[4] = {vmovl_s16(vget_low_s16(lo)), vmovl_s16(vget_high_s16(lo)),
                                        vmovl_s16(vget_low_s16(hi)), vmovl_s16(vget_high_s16(hi))};
                _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++)
                    acc[4 * h + k] = vfmaq_n_f32(acc[4 * h + k], vmulq_n_f32(vcvtq_f32_s32(v[k]), d), a[r]);
            }
        }
        for (int k = 0; k < 8; k++) vst1q_f32(yb + 4 * k, acc[k]);
    }
}

static const kv_vec_mad_rows_fn t_f32[3] = {mad_rows_f32_scalar, mad_rows_f32_neon, mad_rows_f32_neon};
static const kv_vec_mad_rows_fn t_f16[3] = {mad_rows_f16_scalar, mad_rows_f16_neon, mad_rows_f16_neon};
static const kv_vec_mad_rows_fn t_q8_0[3] = {mad_rows_q8_0_scalar, mad_rows_q8_0_neon, mad_rows_q8_0_neon};
#else
static const kv_vec_mad_rows_fn t_f32[3] = {mad_rows_f32_scalar, NULL, NULL};
static const kv_vec_mad_rows_fn t_f16[3] = {mad_rows_f16_scalar, NULL, NULL};
static const kv_vec_mad_rows_fn t_q8_0[3] = {mad_rows_q8_0_scalar, NULL, NULL};
#endif

kv_vec_mad_rows_fn kv_quant_get_mad_rows_isa(uint32_t type, int isa) {
    if (isa < KV_ISA_SCALAR || isa > KV_ISA_MAX || isa > kv_quant_best_isa()) return NULL;
    if (type == KV_F32) return t_f32[isa];
    if (type == KV_F16) return t_f16[isa];
    if (type == KV_Q8_0) return t_q8_0[isa];
    return NULL;
}

kv_vec_mad_rows_fn kv_quant_get_mad_rows(uint32_t type) { return kv_quant_get_mad_rows_isa(type, kv_quant_best_isa()); }
