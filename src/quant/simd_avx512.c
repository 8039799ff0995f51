/* AVX-512 (F/BW/DQ/VL + VNNI) kernels, bit-identical to the scalar references.
 *
 *   F32/F16/BF16: the 16 canonical lanes are exactly one zmm; a tail
 *     updates only its lanes (mask3 fma).
 *   Q8_0, Q4_0 gemm: two weight rows share a zmm (row a in lanes 0..7, row b
 *     in 8..15) against the activation block broadcast to both halves.
 *     vpdpbusd takes unsigned x signed bytes, so the weight codes go in as
 *     x + 128 (Q8_0) or the raw nibble (Q4_0), and the activation sums
 *     times 128 (or 8), formed once per column by another vpdpbusd, are
 *     subtracted: exact int32, for any input bytes.
 *   K-quants: a zmm holds two 32-element chunks; maddubs forms the int16
 *     pairs (offsets subtracted in int16 as in the AVX2 file) and vpdpwssd
 *     multiplies them by the sub-block scales and adds them up, exactly;
 *     the two chunk halves are added at the end of the super-block.
 *   TQ2_0, I2_S: the unsigned codes go straight into vpdpbusd.
 * Float steps are the reference's (see simd_avx2.c). */
#include "simd.h"

#if KV_X86_SIMD

#include <immintrin.h>
#include <stddef.h>
#include <string.h>

#include "fp16.h"
#include "quant_types.h"

#define TGT __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")))
#define INL static inline __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c"), always_inline))

/* constant-trip loops over tile rows/columns/chunks: fully unrolled so
 * that accumulators stay in registers */
#define UNR _Pragma("GCC unroll 16")

/* Largest register tile: arrays are sized by these constants (sized by the
 * tile's NR/NC parameters they would be VLAs, kept on the stack) */
#define MR 8
#define MC 4
_Static_assert(KV_AVX512_NR_FLOAT <= MR && KV_AVX512_NR_B32 <= MR && KV_AVX512_NR_K <= MR &&
                   KV_AVX512_NR_I2S <= MR && KV_AVX512_NC_FLOAT <= MC && KV_AVX512_NC_B32 <= MC &&
                   KV_AVX512_NC_K <= MC && KV_AVX512_NC_I2S <= MC,
               "tile sizes");

/* ------------------------------------------------------------ helpers */

INL float h2f(const void *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

INL float hsum8(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* the 16-lane tree: j += j+8, then the 8-lane one */
INL float hsum16(__m512 a) {
    return hsum8(_mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1)));
}

INL float hsum4(__m128 m) {
    __m128 s = _mm_add_ps(m, _mm_movehl_ps(m, m));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INL int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

INL float fma1(float a, float b, float c) {
    return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
}

INL __m256i ld256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
INL __m128i ld128(const void *p) { return _mm_loadu_si128((const __m128i *)p); }
INL __m512i ld512(const void *p) { return _mm512_loadu_si512(p); }

/* 32 bytes in both halves */
INL __m512i bcast256(const void *p) { return _mm512_broadcast_i64x4(ld256(p)); }

/* int16 vector: a in the low 256 bits, b in the high */
INL __m512i w16x2(int a, int b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)a)), _mm256_set1_epi16((short)b), 1);
}
/* per-half shift counts for srlv_epi16 */
INL __m512i sh2(int a, int b) { return w16x2(a, b); }

INL __m256i fold(__m512i v) { return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1)); }

/* ------------------------------------------------------------ float types */

enum { E_F32, E_F16, E_BF16 };

INL __m512 ld16(const void *p, int64_t i, const int e) {
    if (e == E_F32) return _mm512_loadu_ps((const float *)p + i);
    const __m256i h = ld256((const uint16_t *)p + i);
    if (e == E_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* the first rem (< 16) elements, zero beyond (masked: nothing past them is read) */
INL __m512 ld16m(const void *p, int64_t i, int rem, const int e) {
    const __mmask16 m = (__mmask16)((1u << rem) - 1);
    if (e == E_F32) return _mm512_maskz_loadu_ps(m, (const float *)p + i);
    const __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i);
    if (e == E_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

INL void dot_float(int64_t n, float *s, const void *x, const void *y, const int e) {
    __m512 a = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) a = _mm512_fmadd_ps(ld16(x, i, e), ld16(y, i, e), a);
    if (i < n) {
        const int rem = (int)(n - i);
        a = _mm512_mask3_fmadd_ps(ld16m(x, i, rem, e), ld16m(y, i, rem, e), a, (__mmask16)((1u << rem) - 1));
    }
    *s = hsum16(a);
}

TGT void kv_avx512_vec_dot_f32(int64_t n, float *s, const void *x, const void *y) { dot_float(n, s, x, y, E_F32); }
TGT void kv_avx512_vec_dot_f16(int64_t n, float *s, const void *x, const void *y) { dot_float(n, s, x, y, E_F16); }
TGT void kv_avx512_vec_dot_bf16(int64_t n, float *s, const void *x, const void *y) { dot_float(n, s, x, y, E_BF16); }

#define FCH 256

INL void ftile(int64_t n, const uint8_t *w, uint64_t ws, int nr, const uint8_t *x, uint64_t xs, float *y,
               int64_t ldy, const int e, const int NR, const int NC) {
    const size_t es = e == E_F32 ? 4 : 2;
    const uint8_t *W[MR];
    UNR
    for (int r = 0; r < NR; r++) W[r] = w + (uint64_t)(r < nr ? r : nr - 1) * ws;
    __m512 a[MR][MC];
    UNR
    for (int r = 0; r < NR; r++) {
        UNR
        for (int c = 0; c < NC; c++) a[r][c] = _mm512_setzero_ps();
    }
    _Alignas(64) float xb[MC][FCH];
    for (int64_t i0 = 0; i0 < n; i0 += FCH) {
        const int len = (int)(n - i0 < FCH ? n - i0 : FCH);
        const int full = len & ~15, rem = len - full;
        const float *xp[MC];
        UNR
        for (int c = 0; c < NC; c++) {
            const uint8_t *xc = x + (uint64_t)c * xs + (size_t)i0 * es;
            if (e == E_F32) {
                xp[c] = (const float *)xc;
                continue;
            }
            for (int i = 0; i < full; i += 16) _mm512_store_ps(xb[c] + i, ld16(xc, i, e));
            if (rem) _mm512_store_ps(xb[c] + full, ld16m(xc, full, rem, e));
            xp[c] = xb[c];
        }
        for (int i = 0; i < full; i += 16) {
            UNR
            for (int r = 0; r < NR; r++) {
                const __m512 wv = ld16(W[r], i0 + i, e);
                UNR
                for (int c = 0; c < NC; c++) a[r][c] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xp[c] + i), a[r][c]);
            }
        }
        if (rem) {
            const __mmask16 m = (__mmask16)((1u << rem) - 1);
            UNR
            for (int r = 0; r < NR; r++) {
                const __m512 wv = ld16m(W[r], i0 + full, rem, e);
                UNR
                for (int c = 0; c < NC; c++)
                    a[r][c] = _mm512_mask3_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, xp[c] + full), a[r][c], m);
            }
        }
    }
    for (int r = 0; r < NR && r < nr; r++) {
        UNR
        for (int c = 0; c < NC; c++) y[c * ldy + r] = hsum16(a[r][c]);
    }
}

/* nc == 1: eight rows at a time; otherwise tiles of four rows by four (or
 * fewer) columns, rows outer */
INL void fgemm(int64_t n, const void *vw, uint64_t ws, int nr, const void *vx, uint64_t xs, int nc, float *y,
               int64_t ldy, const int e) {
    const uint8_t *w = vw, *x = vx;
    if (nc == 1) {
        for (int r0 = 0; r0 < nr; r0 += 8)
            ftile(n, w + (uint64_t)r0 * ws, ws, nr - r0 < 8 ? nr - r0 : 8, x, xs, y + r0, ldy, e, 8, 1);
        return;
    }
    for (int r0 = 0; r0 < nr; r0 += 4) {
        const int rr = nr - r0 < 4 ? nr - r0 : 4;
        const uint8_t *wr = w + (uint64_t)r0 * ws;
        int c0 = 0;
        for (; c0 + 4 <= nc; c0 += 4) ftile(n, wr, ws, rr, x + (uint64_t)c0 * xs, xs, y + c0 * ldy + r0, ldy, e, 4, 4);
        if (nc - c0 == 3) ftile(n, wr, ws, rr, x + (uint64_t)c0 * xs, xs, y + c0 * ldy + r0, ldy, e, 4, 3);
        if (nc - c0 == 2) ftile(n, wr, ws, rr, x + (uint64_t)c0 * xs, xs, y + c0 * ldy + r0, ldy, e, 4, 2);
        if (nc - c0 == 1) ftile(n, wr, ws, rr, x + (uint64_t)c0 * xs, xs, y + c0 * ldy + r0, ldy, e, 4, 1);
    }
}

TGT KV_AVX512_GEMM_PROTO(f32) { fgemm(n, w, ws, nr, x, xs, nc, y, ldy, E_F32); }
TGT KV_AVX512_GEMM_PROTO(f16) { fgemm(n, w, ws, nr, x, xs, nc, y, ldy, E_F16); }
TGT KV_AVX512_GEMM_PROTO(bf16) { fgemm(n, w, ws, nr, x, xs, nc, y, ldy, E_BF16); }

/* ---- F16 conversions (see simd_avx2.c: the instruction matches the reference
 * except that it quiets signalling NaNs on the way to f32) */

TGT void kv_avx512_to_float_f16(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256i hv = ld256(h + i);
        __m512 f = _mm512_cvtph_ps(hv);
        const __m512i h32 = _mm512_cvtepu16_epi32(hv);
        const __mmask16 nan =
            _mm512_cmpgt_epi32_mask(_mm512_and_si512(h32, _mm512_set1_epi32(0x7fff)), _mm512_set1_epi32(0x7c00));
        if (nan) {
            const __m512i bits = _mm512_or_si512(
                _mm512_slli_epi32(_mm512_and_si512(h32, _mm512_set1_epi32(0x8000)), 16),
                _mm512_or_si512(_mm512_set1_epi32(0x7f800000),
                                _mm512_slli_epi32(_mm512_and_si512(h32, _mm512_set1_epi32(0x3ff)), 13)));
            f = _mm512_mask_mov_ps(f, nan, _mm512_castsi512_ps(bits));
        }
        _mm512_storeu_ps(dst + i, f);
    }
    for (; i < n; i++) dst[i] = kv_f16_to_f32(h[i]);
}

TGT void kv_avx512_from_float_f16(const float *src, void *dst, int64_t n) {
    uint16_t *h = dst;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(h + i), _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) h[i] = kv_f32_to_f16(src[i]);
}

/* ------------------------------------------------------------ entry points */

/* any nr, nc: register tiles of NR x 4, rows outer (see simd_avx2.c) */
#define TILE_AT(TILE, NR, NC, r0, rr, c0) \
    TILE(n, (const uint8_t *)w + (uint64_t)(r0) * ws, ws, rr, (const uint8_t *)x + (uint64_t)(c0) * xs, xs, \
         y + (int64_t)(c0) * ldy + (r0), ldy, NR, NC)

#define DEF_GEMM(T, TILE, NR)                                           \
    TGT KV_AVX512_GEMM_PROTO(T) {                                       \
        for (int r0 = 0; r0 < nr; r0 += NR) {                           \
            const int rr = nr - r0 < NR ? nr - r0 : NR;                 \
            int c0 = 0;                                                 \
            for (; c0 + 4 <= nc; c0 += 4) TILE_AT(TILE, NR, 4, r0, rr, c0); \
            switch (nc - c0) {                                          \
            case 3: TILE_AT(TILE, NR, 3, r0, rr, c0); break;            \
            case 2: TILE_AT(TILE, NR, 2, r0, rr, c0); break;            \
            case 1: TILE_AT(TILE, NR, 1, r0, rr, c0); break;            \
            default: break;                                             \
            }                                                           \
        }                                                               \
    }

#define ROWS(W, NR)                                                                                      \
    const uint8_t *W[MR];                                                                                \
    UNR                                                                                          \
    for (int r_ = 0; r_ < NR; r_++) W[r_] = (const uint8_t *)w + (uint64_t)(r_ < nr ? r_ : nr - 1) * ws
#define COLS(X, NC)            \
    const uint8_t *X[MC];      \
    UNR                                                                \
    for (int c_ = 0; c_ < NC; c_++) X[c_] = (const uint8_t *)x + (uint64_t)c_ * xs

/* ------------------------------------------------------------ Q8_0, Q4_0 (row pairs) */

/* q4: Q4_0 weights (18-byte blocks, nibbles), else Q8_0 (34-byte blocks) */
INL void tile_pair(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                   const int NR, const int NC, const int q4) {
    const int NP = NR / 2;
    const int64_t nb = n / 32;
    const size_t BW = q4 ? sizeof(kv_block_q4_0) : sizeof(kv_block_q8_0);
    const size_t BX = sizeof(kv_block_q8_0);
    ROWS(W, NR);
    COLS(X, NC);
    __m512 acc[MR / 2][MC];
    UNR
    for (int p = 0; p < NP; p++) {
        UNR
        for (int c = 0; c < NC; c++) acc[p][c] = _mm512_setzero_ps();
    }
    const __m512i zero = _mm512_setzero_si512();
    const __m512i off = _mm512_set1_epi8(q4 ? 8 : (char)0x80);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i perm = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
    for (int64_t i = 0; i < nb; i++) {
        __m512i yb[MC], nco[MC];
        __m512 dy[MC];
        UNR
        for (int c = 0; c < NC; c++) {
            const uint8_t *b = X[c] + i * BX;
            yb[c] = bcast256(b + offsetof(kv_block_q8_0, qs));
            nco[c] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, off, yb[c]));
            dy[c] = _mm512_set1_ps(h2f(b));
        }
        UNR
        for (int p = 0; p < NP; p++) {
            const uint8_t *a0 = W[2 * p] + i * BW, *a1 = W[2 * p + 1] + i * BW;
            __m512i u;
            if (q4) {
                const __m256i lo = _mm256_set_m128i(ld128(a1 + 2), ld128(a0 + 2));
                const __m256i hi = _mm256_srli_epi16(lo, 4);
                u = _mm512_and_si512(
                    _mm512_permutex2var_epi64(_mm512_castsi256_si512(lo), perm, _mm512_castsi256_si512(hi)), m4);
            } else {
                u = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(ld256(a0 + 2)), ld256(a1 + 2), 1), off);
            }
            const __m512 dx = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(h2f(a0))),
                                                 _mm256_set1_ps(h2f(a1)), 1);
            UNR
            for (int c = 0; c < NC; c++) {
                const __m512i is = _mm512_dpbusd_epi32(nco[c], u, yb[c]);
                acc[p][c] = _mm512_fmadd_ps(_mm512_mul_ps(dx, dy[c]), _mm512_cvtepi32_ps(is), acc[p][c]);
            }
        }
    }
    UNR
    for (int p = 0; p < NP; p++) {
        UNR
        for (int c = 0; c < NC; c++) {
            if (2 * p < nr) y[c * ldy + 2 * p] = hsum8(_mm512_castps512_ps256(acc[p][c]));
            if (2 * p + 1 < nr) y[c * ldy + 2 * p + 1] = hsum8(_mm512_extractf32x8_ps(acc[p][c], 1));
        }
    }
}

INL void tile_q8_0(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                   const int NR, const int NC) {
    tile_pair(n, w, ws, nr, x, xs, y, ldy, NR, NC, 0);
}
INL void tile_q4_0(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                   const int NR, const int NC) {
    tile_pair(n, w, ws, nr, x, xs, y, ldy, NR, NC, 1);
}
DEF_GEMM(q8_0, tile_q8_0, KV_AVX512_NR_B32)
DEF_GEMM(q4_0, tile_q4_0, KV_AVX512_NR_B32)
/* a single row: the pair kernel would do its integer work twice */
TGT KV_AVX512_DOT_PROTO(q8_0) { kv_avx2_vec_dot_q8_0(n, s, x, y); }
TGT KV_AVX512_DOT_PROTO(q4_0) { kv_avx2_vec_dot_q4_0(n, s, x, y); }

/* ------------------------------------------------------------ K-quants, TQ2_0 */

/* U[k]: codes of chunks 2k (low half) and 2k+1 (high half); SC[k]: their
 * int16 scales per lane group; MX: mins for madd against bsums (ymm). */
typedef struct {
    __m512i U[4], SC[4];
    __m256i MX;
    float dx, dmx;
} krow;

/* [sc0..sc7 | mn0..mn7] as int16 (see simd_avx2.c) */
INL __m256i k4_scales(const uint8_t *q) {
    uint32_t u[3];
    memcpy(u, q, 12);
    const uint32_t m6 = 0x3f3f3f3fu, m4 = 0x0f0f0f0fu, hi2 = 0xc0c0c0c0u;
    const __m128i v = _mm_setr_epi32((int)(u[0] & m6), (int)((u[2] & m4) | ((u[0] & hi2) >> 2)), (int)(u[1] & m6),
                                     (int)(((u[2] >> 4) & m4) | ((u[1] & hi2) >> 2)));
    return _mm256_cvtepu8_epi16(v);
}

/* [m0, m0, m1, m1, .., m7, m7] */
INL __m256i mins_pairs(__m256i v16) {
    const __m256i m = _mm256_permute4x64_epi64(v16, 0xee);
    return _mm256_shuffle_epi8(m, _mm256_setr_epi8(0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7, 8, 9, 8, 9, 10, 11,
                                                   10, 11, 12, 13, 12, 13, 14, 15, 14, 15));
}

/* [s[a] x 16 | s[b] x 16] from int16 s[0..15] */
INL __m512i sc_halves(__m512i s16, int a, int b) { return _mm512_permutexvar_epi16(w16x2(a, b), s16); }

INL void prep_q4_K(const kv_block_q4_K *b, krow *k) {
    const __m512i m4 = _mm512_set1_epi8(0x0f), sh = sh2(0, 4);
    const __m256i v16 = k4_scales(b->scales);
    const __m512i s16 = _mm512_castsi256_si512(v16);
    UNR
    for (int c = 0; c < 4; c++) {
        k->U[c] = _mm512_and_si512(_mm512_srlv_epi16(bcast256(b->qs + 32 * c), sh), m4);
        k->SC[c] = sc_halves(s16, 2 * c, 2 * c + 1);
    }
    k->MX = mins_pairs(v16);
    k->dx = h2f(&b->d);
    k->dmx = h2f(&b->dmin);
}

INL void prep_q5_K(const kv_block_q5_K *b, krow *k) {
    const __m512i m4 = _mm512_set1_epi8(0x0f), one = _mm512_set1_epi8(1), sh = sh2(0, 4);
    const __m256i v16 = k4_scales(b->scales);
    const __m512i s16 = _mm512_castsi256_si512(v16);
    const __m512i hb = bcast256(b->qh);
    UNR
    for (int c = 0; c < 4; c++) {
        const __m512i h = _mm512_and_si512(_mm512_srlv_epi16(hb, sh2(2 * c, 2 * c + 1)), one);
        k->U[c] = _mm512_or_si512(_mm512_and_si512(_mm512_srlv_epi16(bcast256(b->qs + 32 * c), sh), m4),
                                  _mm512_slli_epi16(h, 4));
        k->SC[c] = sc_halves(s16, 2 * c, 2 * c + 1);
    }
    k->MX = mins_pairs(v16);
    k->dx = h2f(&b->d);
    k->dmx = h2f(&b->dmin);
}

INL void prep_q6_K(const kv_block_q6_K *b, krow *k) {
    const __m512i m4 = _mm512_set1_epi8(0x0f), m3 = _mm512_set1_epi8(3);
    UNR
    for (int h = 0; h < 2; h++) {
        const __m512i l = ld512(b->ql + 64 * h); /* chunks 4h, 4h+1 in the low nibbles; 4h+2, 4h+3 in the high */
        const __m512i qh = bcast256(b->qh + 32 * h);
        const __m512i hl = _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, sh2(0, 2)), m3), 4);
        const __m512i hh = _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, sh2(4, 6)), m3), 4);
        k->U[2 * h] = _mm512_or_si512(_mm512_and_si512(l, m4), hl);
        k->U[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4), hh);
    }
    /* chunk j uses scales 2j (lanes 0..3) and 2j+1 (lanes 4..7): int16
       element e of SC[k] is scale 4k + e / 8 */
    const __m512i s16 = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(ld128(b->scales)));
    UNR
    for (int q = 0; q < 4; q++) {
        const __m512i idx = _mm512_add_epi16(_mm512_set1_epi16((short)(4 * q)),
                                             _mm512_srli_epi16(_mm512_setr_epi32(0x00010000, 0x00030002, 0x00050004,
                                                                                 0x00070006, 0x00090008, 0x000b000a,
                                                                                 0x000d000c, 0x000f000e, 0x00110010,
                                                                                 0x00130012, 0x00150014, 0x00170016,
                                                                                 0x00190018, 0x001b001a, 0x001d001c,
                                                                                 0x001f001e),
                                                               3));
        k->SC[q] = _mm512_permutexvar_epi16(idx, s16);
    }
    k->dx = h2f(&b->d);
}

enum { K_Q4, K_Q5, K_Q6 };

INL void tile_k(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                const int NR, const int NC, const int t) {
    const int64_t nb = n / KV_QK_K;
    const size_t BW = t == K_Q4 ? sizeof(kv_block_q4_K) : t == K_Q5 ? sizeof(kv_block_q5_K) : sizeof(kv_block_q6_K);
    ROWS(W, NR);
    COLS(X, NC);
    __m256 acc[MR][MC];
    __m128 accm4[MR][MC];
    float accm[MR][MC];
    UNR
    for (int r = 0; r < NR; r++) {
        UNR
        for (int c = 0; c < NC; c++) {
            acc[r][c] = _mm256_setzero_ps();
            accm4[r][c] = _mm_setzero_ps();
            accm[r][c] = 0.0f;
        }
    }
    for (int64_t i = 0; i < nb; i++) {
        const kv_block_q8_K *A[MC];
        __m512i yo[MC][4];
        UNR
        for (int c = 0; c < NC; c++) {
            A[c] = (const kv_block_q8_K *)X[c] + i;
            if (t == K_Q6)
                UNR
                for (int k = 0; k < 4; k++)
                    yo[c][k] = _mm512_maddubs_epi16(_mm512_set1_epi8(32), ld512(A[c]->qs + 64 * k));
        }
        UNR
        for (int r = 0; r < NR; r++) {
            const uint8_t *blk = W[r] + i * BW;
            krow k;
            if (t == K_Q4) prep_q4_K((const kv_block_q4_K *)blk, &k);
            if (t == K_Q5) prep_q5_K((const kv_block_q5_K *)blk, &k);
            if (t == K_Q6) prep_q6_K((const kv_block_q6_K *)blk, &k);
            UNR
            for (int c = 0; c < NC; c++) {
                const kv_block_q8_K *a = A[c];
                __m512i is = _mm512_setzero_si512();
                UNR
                for (int q = 0; q < 4; q++) {
                    __m512i p = _mm512_maddubs_epi16(k.U[q], ld512(a->qs + 64 * q));
                    if (t == K_Q6) p = _mm512_sub_epi16(p, yo[c][q]);
                    is = _mm512_dpwssd_epi32(is, p, k.SC[q]);
                }
                const float d = a->d * k.dx;
                if (t == K_Q4) {
                    const float nd = -(a->d * k.dmx);
                    const __m256i pm8 = _mm256_madd_epi16(ld256(a->bsums), k.MX);
                    const __m128i pm = _mm_hadd_epi32(_mm256_castsi256_si128(pm8), _mm256_extracti128_si256(pm8, 1));
                    accm4[r][c] = _mm_fmadd_ps(_mm_set1_ps(nd), _mm_cvtepi32_ps(pm), accm4[r][c]);
                } else if (t == K_Q5) {
                    const float nd = -(a->d * k.dmx);
                    const int32_t summ = hsum_i32(_mm256_madd_epi16(ld256(a->bsums), k.MX));
                    accm[r][c] = fma1(nd, (float)summ, accm[r][c]);
                }
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(fold(is)), acc[r][c]);
            }
        }
    }
    for (int r = 0; r < NR && r < nr; r++) {
        UNR
        for (int c = 0; c < NC; c++) {
            float v = hsum8(acc[r][c]);
            if (t == K_Q4) v += hsum4(accm4[r][c]);
            if (t == K_Q5) v += accm[r][c];
            y[c * ldy + r] = v;
        }
    }
}

#define K_TILE(T, ID)                                                                                           \
    INL void tile_##T(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y,       \
                      int64_t ldy, const int NR, const int NC) {                                               \
        tile_k(n, w, ws, nr, x, xs, y, ldy, NR, NC, ID);                                                        \
    }                                                                                                          \
    DEF_GEMM(T, tile_##T, KV_AVX512_NR_K)                                                                       \
    TGT KV_AVX512_DOT_PROTO(T) { tile_##T(n, x, 0, 1, y, 0, s, 1, 1, 1); }
K_TILE(q4_K, K_Q4)
K_TILE(q5_K, K_Q5)
K_TILE(q6_K, K_Q6)

INL void tile_tq2_0(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                    const int NR, const int NC) {
    const int64_t nb = n / KV_QK_K;
    ROWS(W, NR);
    COLS(X, NC);
    const __m512i m3 = _mm512_set1_epi8(3);
    __m256 acc[MR][MC];
    UNR
    for (int r = 0; r < NR; r++) {
        UNR
        for (int c = 0; c < NC; c++) acc[r][c] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        const kv_block_q8_K *A[MC];
        __m256i bs[MC];
        UNR
        for (int c = 0; c < NC; c++) {
            A[c] = (const kv_block_q8_K *)X[c] + i;
            bs[c] = _mm256_madd_epi16(ld256(A[c]->bsums), _mm256_set1_epi16(1)); /* bsums[2l] + bsums[2l+1] */
        }
        UNR
        for (int r = 0; r < NR; r++) {
            const kv_block_tq2_0 *b = (const kv_block_tq2_0 *)W[r] + i;
            __m512i U[4]; /* chunk 4h + l: shift 2l of qs[32h ..] */
            UNR
            for (int h = 0; h < 2; h++) {
                const __m512i q = bcast256(b->qs + 32 * h);
                U[2 * h] = _mm512_and_si512(_mm512_srlv_epi16(q, sh2(0, 2)), m3);
                U[2 * h + 1] = _mm512_and_si512(_mm512_srlv_epi16(q, sh2(4, 6)), m3);
            }
            const float dx = h2f(&b->d);
            UNR
            for (int c = 0; c < NC; c++) {
                __m512i is = _mm512_setzero_si512();
                UNR
                for (int q = 0; q < 4; q++) is = _mm512_dpbusd_epi32(is, U[q], ld512(A[c]->qs + 64 * q));
                const __m256i s8 = _mm256_sub_epi32(fold(is), bs[c]);
                const float d = A[c]->d * dx;
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(s8), acc[r][c]);
            }
        }
    }
    for (int r = 0; r < NR && r < nr; r++) {
        UNR
        for (int c = 0; c < NC; c++) y[c * ldy + r] = hsum8(acc[r][c]);
    }
}
DEF_GEMM(tq2_0, tile_tq2_0, KV_AVX512_NR_K)
TGT KV_AVX512_DOT_PROTO(tq2_0) { tile_tq2_0(n, x, 0, 1, y, 0, s, 1, 1, 1); }

/* ------------------------------------------------------------ I2_S x I8_S */

INL void tile_i2_s(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                   const int NR, const int NC) {
    const int64_t nb = n / KV_QK_I2_S;
    ROWS(W, NR);
    COLS(X, NC);
    const __m512i m3 = _mm512_set1_epi8(3), s0 = sh2(6, 4), s1 = sh2(2, 0);
    __m512i acc[MR][MC];
    UNR
    for (int r = 0; r < NR; r++) {
        UNR
        for (int c = 0; c < NC; c++) acc[r][c] = _mm512_setzero_si512();
    }
    for (int64_t i = 0; i < nb; i++) {
        UNR
        for (int r = 0; r < NR; r++) {
            const __m512i b = bcast256(W[r] + 32 * i);
            const __m512i u0 = _mm512_and_si512(_mm512_srlv_epi16(b, s0), m3); /* values 0..63 of the block */
            const __m512i u1 = _mm512_and_si512(_mm512_srlv_epi16(b, s1), m3); /* values 64..127 */
            UNR
            for (int c = 0; c < NC; c++) {
                const int8_t *q = (const int8_t *)(X[c] + sizeof(kv_i8_s_head)) + KV_QK_I2_S * i;
                /* a fresh sum per block: only the add is carried from block to block */
                const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u0, ld512(q));
                acc[r][c] = _mm512_add_epi32(acc[r][c], _mm512_dpbusd_epi32(p, u1, ld512(q + 64)));
            }
        }
    }
    UNR
    for (int c = 0; c < NC; c++) {
        kv_i8_s_head head;
        memcpy(&head, X[c], sizeof head);
        for (int r = 0; r < NR && r < nr; r++) {
            const int32_t raw = _mm512_reduce_add_epi32(acc[r][c]);
            y[c * ldy + r] = ((float)raw - (float)head.sum) / head.scale;
        }
    }
}
DEF_GEMM(i2_s, tile_i2_s, KV_AVX512_NR_I2S)
TGT KV_AVX512_DOT_PROTO(i2_s) { tile_i2_s(n, x, 0, 1, y, 0, s, 1, 1, 1); }

#endif /* KV_X86_SIMD */
