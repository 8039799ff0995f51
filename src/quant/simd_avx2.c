/* AVX2 + FMA + F16C kernels, bit-identical to the scalar references.
 *
 * How each canonical order is met:
 *   F32/F16/BF16: the 16 lanes are two ymm accumulators (lanes 0..7, 8..15);
 *     a tail of n % 16 elements updates only its lanes (blend), the tree is
 *     lo + hi, then the 8-lane tree (hsum8).
 *   Block types: the 8 int32 lanes of a 32-element chunk are formed with
 *     maddubs (u8 x s8 -> int16 pairs) and madd (pairs -> int32), which is
 *     exact whenever the pairs fit in int16:
 *     - unsigned weight codes (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K, TQ*, I2_S) go
 *       straight in (pairs <= 63 * 128 * 2);
 *     - offset codes (Q4_0 -8, Q5_0 -16, Q3_K -4, Q6_K -32) are dotted as
 *       unsigned and the offset's maddubs against the same activations is
 *       subtracted in int16 before the madd, which stays exact;
 *     - int8 x int8 (Q8_0, Q8_1, Q8_K, I8_S) uses |x| and sign(y, x); that is
 *       exact unless y holds -128 (which our activation quantizers never
 *       write), so such an activation is detected and the call falls back to
 *       the scalar reference.
 *     Sub-block scales multiply the pair sums in the madd (int16 x int16,
 *     exact). Float steps are the reference's, one fma per lane and block.
 *   gemm: the same per-output sequence, with a weight block unpacked once for
 *     all columns and an activation block (and its offset correction) once
 *     for all rows. Rows beyond nr repeat the last row and are not stored. */
#include "simd.h"

#if KV_X86_SIMD

#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "fp16.h"
#include "quant_types.h"

#define TGT __attribute__((target("avx2,fma,f16c")))
#define INL static inline __attribute__((target("avx2,fma,f16c"), always_inline))

/* constant-trip loops over tile rows/columns/chunks: fully unrolled so
 * that accumulators stay in registers */
#define UNR _Pragma("GCC unroll 16")

/* Largest register tile: arrays are sized by these constants (sized by the
 * tile's NR/NC parameters they would be VLAs, kept on the stack) */
#define MR 8
#define MC 4
_Static_assert(KV_AVX2_NR_FLOAT <= MR && KV_AVX2_NR_B32 <= MR && KV_AVX2_NR_K <= MR && KV_AVX2_NR_I2S <= MR &&
                   KV_AVX2_NR_I8S <= MR && KV_AVX2_NC_FLOAT <= MC && KV_AVX2_NC_B32 <= MC && KV_AVX2_NC_K <= MC &&
                   KV_AVX2_NC_I2S <= MC && KV_AVX2_NC_I8S <= MC,
               "tile sizes");

/* ------------------------------------------------------------ helpers */

INL float h2f(const void *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h); /* exact; a signalling NaN comes out quiet, which no
                            result can tell apart once it is multiplied */
}

/* the 8-lane tree of kv_dot_reduce8: j += j+4, j += j+2, j += j+1 */
INL float hsum8(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* (m0 + m2) + (m1 + m3) */
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

/* int16 pairs -> int32 sums of 4 consecutive products */
INL __m256i sum4(__m256i p16) { return _mm256_madd_epi16(p16, _mm256_set1_epi16(1)); }

/* byte j = 0xff where bit j of v is set */
INL __m256i bits_to_bytes(uint32_t v) {
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3,
                                          3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    const __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)v), shuf);
    return _mm256_cmpeq_epi8(_mm256_and_si256(b, bit), bit);
}

/* lanes j with j + off < rem */
INL __m256 lane_mask(int rem, int off) {
    return _mm256_castsi256_ps(
        _mm256_cmpgt_epi32(_mm256_set1_epi32(rem - off), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}

/* ------------------------------------------------------------ float types */

enum { E_F32, E_F16, E_BF16 };

INL __m256 ld8(const void *p, int64_t i, const int e) {
    if (e == E_F32) return _mm256_loadu_ps((const float *)p + i);
    const __m128i h = ld128((const uint16_t *)p + i);
    if (e == E_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* elements i .. i+rem-1 (rem < 16) as two vectors, zero beyond */
INL void ld16_tail(const void *p, int64_t i, int rem, const int e, __m256 *lo, __m256 *hi) {
    const size_t es = e == E_F32 ? 4 : 2;
    _Alignas(32) uint8_t buf[64] = {0};
    memcpy(buf, (const uint8_t *)p + (size_t)i * es, (size_t)rem * es);
    *lo = ld8(buf, 0, e);
    *hi = ld8(buf, 8, e);
}

INL void dot_float(int64_t n, float *s, const void *x, const void *y, const int e) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(ld8(x, i, e), ld8(y, i, e), a0);
        a1 = _mm256_fmadd_ps(ld8(x, i + 8, e), ld8(y, i + 8, e), a1);
    }
    if (i < n) {
        const int rem = (int)(n - i);
        __m256 xl, xh, yl, yh;
        ld16_tail(x, i, rem, e, &xl, &xh);
        ld16_tail(y, i, rem, e, &yl, &yh);
        a0 = _mm256_blendv_ps(a0, _mm256_fmadd_ps(xl, yl, a0), lane_mask(rem, 0));
        a1 = _mm256_blendv_ps(a1, _mm256_fmadd_ps(xh, yh, a1), lane_mask(rem, 8));
    }
    *s = hsum8(_mm256_add_ps(a0, a1));
}

TGT void kv_avx2_vec_dot_f32(int64_t n, float *s, const void *x, const void *y) { dot_float(n, s, x, y, E_F32); }
TGT void kv_avx2_vec_dot_f16(int64_t n, float *s, const void *x, const void *y) { dot_float(n, s, x, y, E_F16); }
TGT void kv_avx2_vec_dot_bf16(int64_t n, float *s, const void *x, const void *y) { dot_float(n, s, x, y, E_BF16); }

/* gemm for float types: x columns are converted to f32 one chunk of FCH
 * elements at a time (a multiple of 16, so the lanes are unchanged) and
 * read from there by every row. */
#define FCH 256

/* NR rows (nr valid) x NC columns. Row r starts at W[r] = w + r * rs, and
 * its elements i .. i+15 (i a multiple of 16) are at element i * sm from
 * there: rs the row bytes and sm 1 in the file layout, rs one unit and sm
 * the tile's rows in the interleaved one (quant.h; then n % 16 == 0).
 * pf: 0 no prefetch, 1 the file layout's stream (rows rs apart, see
 * kv_pf_next), 2 the interleaved layout's; only tiles of fewer than
 * KV_PF_COLS columns prefetch. */
INL void ftile(int64_t n, const uint8_t *w, uint64_t rs, int64_t sm, int nr, const uint8_t *x, uint64_t xs,
               float *y, int64_t ldy, const int pf, const int e, const int NR, const int NC) {
    const size_t es = e == E_F32 ? 4 : 2;
    const uint8_t *W[MR];
    UNR
    for (int r = 0; r < NR; r++) W[r] = w + (uint64_t)(r < nr ? r : nr - 1) * rs;
    __m256 a[MR][MC][2];
    UNR
    for (int r = 0; r < NR; r++) {
        UNR
        for (int c = 0; c < NC; c++) a[r][c][0] = a[r][c][1] = _mm256_setzero_ps();
    }
    _Alignas(32) float xb[MC][FCH];
    for (int64_t i0 = 0; i0 < n; i0 += FCH) {
        const int len = (int)(n - i0 < FCH ? n - i0 : FCH);
        const int full = len & ~15;
        const float *xp[MC];
        UNR
        for (int c = 0; c < NC; c++) {
            const uint8_t *xc = x + (uint64_t)c * xs + (size_t)i0 * es;
            if (e == E_F32 && full == len) {
                xp[c] = (const float *)xc;
                continue;
            }
            int i = 0;
            for (; i < full; i += 8) _mm256_store_ps(xb[c] + i, ld8(xc, i, e));
            if (full < len) {
                __m256 lo, hi;
                ld16_tail(xc, full, len - full, e, &lo, &hi);
                _mm256_store_ps(xb[c] + full, lo);
                _mm256_store_ps(xb[c] + full + 8, hi);
            }
            xp[c] = xb[c];
        }
        for (int i = 0; i < full; i += 16) {
            if (NC < KV_PF_COLS && pf == 1) kv_pf_stream(W[0], NR, rs, (uint64_t)(i0 + i) * es, 16 * es);
            if (NC < KV_PF_COLS && pf == 2) kv_pf_il(W[0] + (uint64_t)(i0 + i) * (uint64_t)sm * es, (size_t)sm * 16 * es);
            UNR
            for (int r = 0; r < NR; r++) {
                const int64_t o = (i0 + i) * sm;
                const __m256 wl = ld8(W[r], o, e), wh = ld8(W[r], o + 8, e);
                UNR
                for (int c = 0; c < NC; c++) {
                    a[r][c][0] = _mm256_fmadd_ps(wl, _mm256_loadu_ps(xp[c] + i), a[r][c][0]);
                    a[r][c][1] = _mm256_fmadd_ps(wh, _mm256_loadu_ps(xp[c] + i + 8), a[r][c][1]);
                }
            }
        }
        if (full < len) {
            const int rem = len - full;
            const __m256 m0 = lane_mask(rem, 0), m1 = lane_mask(rem, 8);
            UNR
            for (int r = 0; r < NR; r++) {
                __m256 wl, wh;
                ld16_tail(W[r], (i0 + full) * sm, rem, e, &wl, &wh);
                UNR
                for (int c = 0; c < NC; c++) {
                    const __m256 xl = _mm256_loadu_ps(xp[c] + full), xh = _mm256_loadu_ps(xp[c] + full + 8);
                    a[r][c][0] = _mm256_blendv_ps(a[r][c][0], _mm256_fmadd_ps(wl, xl, a[r][c][0]), m0);
                    a[r][c][1] = _mm256_blendv_ps(a[r][c][1], _mm256_fmadd_ps(wh, xh, a[r][c][1]), m1);
                }
            }
        }
    }
    for (int r = 0; r < NR && r < nr; r++) {
        UNR
        for (int c = 0; c < NC; c++) y[c * ldy + r] = hsum8(_mm256_add_ps(a[r][c][0], a[r][c][1]));
    }
}

/* rows wr (rr <= 2 of them; rs, sm, pf as for ftile) x all nc columns in tiles of three (or fewer) */
INL void fcols3(int64_t n, const uint8_t *wr, uint64_t rs, int64_t sm, int rr, const uint8_t *x, uint64_t xs, int nc,
                float *y, int64_t ldy, const int pf, const int e) {
    int c0 = 0;
    for (; c0 + 3 <= nc; c0 += 3) ftile(n, wr, rs, sm, rr, x + (uint64_t)c0 * xs, xs, y + c0 * ldy, ldy, pf, e, 2, 3);
    if (nc - c0 == 2) ftile(n, wr, rs, sm, rr, x + (uint64_t)c0 * xs, xs, y + c0 * ldy, ldy, pf, e, 2, 2);
    if (nc - c0 == 1) ftile(n, wr, rs, sm, rr, x + (uint64_t)c0 * xs, xs, y + c0 * ldy, ldy, pf, e, 2, 1);
}

/* nc == 1: four rows at a time; otherwise tiles of two rows by three (or
 * fewer) columns, rows outer */
INL void fgemm(int64_t n, const void *vw, uint64_t ws, int nr, const void *vx, uint64_t xs, int nc, float *y,
               int64_t ldy, const int e) {
    const uint8_t *w = vw, *x = vx;
    const int pf = ws == (uint64_t)n * (e == E_F32 ? 4 : 2) && kv_quant_prefetch_on();
    if (pf && nc < KV_PF_COLS) kv_pf_head(w, nr, ws, nc == 1 ? 4 : 2);
    if (nc == 1) {
        for (int r0 = 0; r0 < nr; r0 += 4)
            ftile(n, w + (uint64_t)r0 * ws, ws, 1, nr - r0 < 4 ? nr - r0 : 4, x, xs, y + r0, ldy, pf, e, 4, 1);
        return;
    }
    for (int r0 = 0; r0 < nr; r0 += 2)
        fcols3(n, w + (uint64_t)r0 * ws, ws, 1, nr - r0 < 2 ? nr - r0 : 2, x, xs, nc, y + r0, ldy, pf, e);
}

/* the same over the interleaved layout of 4 rows: a tile's rows at once
 * (one column) or in halves of two */
_Static_assert(KV_AVX2_IL_ROWS == 4, "fgemm_il's tiles are the 4-row ones of fgemm, or two halves of 2");
INL void fgemm_il(int64_t n, const void *vw, uint64_t ws, int nr, const void *vx, uint64_t xs, int nc, float *y,
                  int64_t ldy, const int e) {
    const uint8_t *w = vw, *x = vx;
    const size_t U = 16 * (e == E_F32 ? 4 : 2);
    const int pf = kv_quant_prefetch_on() ? 2 : 0;
    if (pf && nc < KV_PF_COLS) kv_pf_il_head(w, (uint64_t)nr * ws);
    for (int r0 = 0; r0 < nr; r0 += 4) {
        const int rr = nr - r0 < 4 ? nr - r0 : 4;
        const uint8_t *t = w + (uint64_t)r0 * ws;
        if (nc == 1) {
            /* a whole tile with constant strides: the rows' addresses are fixed offsets of one pointer */
            if (rr == 4) ftile(n, t, U, 4, 4, x, xs, y + r0, ldy, pf, e, 4, 1);
            else ftile(n, t, U, rr, rr, x, xs, y + r0, ldy, pf, e, 4, 1);
            continue;
        }
        for (int a = 0; a < rr; a += 2) /* the first half's rows asks for the whole tile's */
            fcols3(n, t + a * U, U, rr, rr - a < 2 ? rr - a : 2, x, xs, nc, y + r0 + a, ldy, a ? 0 : pf, e);
    }
}

/* ---- several columns (batched decode, prefill): the activations are
 * converted to f32 once per call (chunk-major: unit k of column c, 16
 * floats, at xa + (k * nc + c) * 16), then each weight row is read unit by
 * unit, each unit converted once for up to FMB_COLS columns (2 x FMB_COLS
 * accumulators in registers). A tile of the interleaved layout (or 4
 * rows of the file layout) is done a span of FMB_SPAN units at a time, and
 * in a span group of columns after group, row after row: the tile's bytes
 * come from memory once (the first group's passes, which also ask for a
 * share of the next tile) and a group's activations for the span stay in
 * L1 for the tile's rows; the accumulators wait in the scratch between
 * spans. Lanes j and j + 8 of a column are its two accumulators, each an
 * fma in increasing i whatever the spans, and hsum8(lo + hi) is the
 * reference's tree. */
#define FMB_COLS 4
#define FMB_MIN_COLS 2
#ifndef FMB_SPAN
#define FMB_SPAN 16 /* units of K per span */
#endif

/* units [k0, k1) of one weight row (unit k at wr + k * ust) x columns c0 .. c0 + NC - 1; the
 * accumulators come from and go back to sv (2 x NC vectors); last: store the outputs */
INL void fmb_row(const uint8_t *wr, uint64_t ust, int64_t k0, int64_t k1, const float *xa, int nc, int c0,
                 __m256 *sv, int last, float *y, int64_t ldy, const uint8_t *pfp, size_t pfl, const int e,
                 const int NC) {
    __m256 a0[FMB_COLS], a1[FMB_COLS];
    UNR
    for (int c = 0; c < NC; c++) {
        a0[c] = sv[2 * c];
        a1[c] = sv[2 * c + 1];
    }
    const size_t xstep = (size_t)nc * 16;
    const float *xk = xa + (size_t)k0 * xstep + (size_t)c0 * 16;
    for (int64_t k = k0; k < k1; k++, xk += xstep) {
        const uint8_t *u = wr + (uint64_t)k * ust;
        if (pfp) {
            const uintptr_t a = (uintptr_t)pfp + (size_t)k * pfl, end = a + pfl;
            for (uintptr_t q = a & ~(uintptr_t)63; q < end; q += 64) __builtin_prefetch((const void *)q, 0, KV_PF_IL_LOC);
        }
        const __m256 wl = ld8(u, 0, e), wh = ld8(u, 8, e);
        UNR
        for (int c = 0; c < NC; c++) {
            a0[c] = _mm256_fmadd_ps(wl, _mm256_load_ps(xk + 16 * c), a0[c]);
            a1[c] = _mm256_fmadd_ps(wh, _mm256_load_ps(xk + 16 * c + 8), a1[c]);
        }
    }
    UNR
    for (int c = 0; c < NC; c++) {
        sv[2 * c] = a0[c];
        sv[2 * c + 1] = a1[c];
        if (last) y[(int64_t)(c0 + c) * ldy] = hsum8(_mm256_add_ps(a0[c], a1[c]));
    }
}

/* nc >= 1, n % 16 == 0; il: w in the interleaved layout of 4 rows. Returns
 * 0 (nothing done) when the scratch cannot be had. */
INL int fmb_gemm(int64_t n, const void *vw, uint64_t ws, int nr, const void *vx, uint64_t xs, int nc, float *y,
                 int64_t ldy, const int e, const int il) {
    const int64_t nu = n / 16;
    const size_t U = 16 * (e == E_F32 ? 4 : 2);
    enum { R = KV_AVX2_IL_ROWS };
    /* the activations, then the accumulators of a tile (R rows x nc columns x 2 vectors) */
    float *xa = aligned_alloc(32, (size_t)nu * (size_t)nc * 64 + (size_t)R * (size_t)nc * 64);
    if (!xa) return 0;
    __m256 *sv = (__m256 *)(xa + (size_t)nu * (size_t)nc * 16);
    const uint8_t *w = vw, *x = vx;
    const int pf = kv_quant_prefetch_on() && (il || ws == (uint64_t)nu * U);
    if (pf) kv_pf_il_head(w, (uint64_t)nr * ws);
    for (int c = 0; c < nc; c++) {
        const uint8_t *xc = x + (uint64_t)c * xs;
        for (int64_t k = 0; k < nu; k++) {
            float *d = xa + ((size_t)k * (size_t)nc + (size_t)c) * 16;
            _mm256_store_ps(d, ld8(xc, 16 * k, e));
            _mm256_store_ps(d + 8, ld8(xc, 16 * k + 8, e));
        }
    }
    for (int r0 = 0; r0 < nr; r0 += R) {
        const int rr = nr - r0 < R ? nr - r0 : R;
        const int rn = nr - r0 - rr < R ? nr - r0 - rr : R;
        const size_t pfl = ((size_t)rn * (size_t)nu * U + (size_t)rr * (size_t)nu - 1) / ((size_t)rr * (size_t)nu);
        const uint8_t *next = w + (uint64_t)(r0 + rr) * ws;
        /* K in spans of FMB_SPAN units, then column groups, then the tile's rows: a group's
           activations over one span (FMB_SPAN * 256 bytes) stay in L1 for the tile's rows; the
           accumulators wait in sv between spans (each lane still adds in increasing i) */
        for (int c = 0; c < R * 2 * nc; c++) sv[c] = _mm256_setzero_ps();
        for (int64_t k0 = 0; k0 < nu; k0 += FMB_SPAN) {
            const int64_t k1 = nu - k0 < FMB_SPAN ? nu : k0 + FMB_SPAN;
            for (int c0 = 0; c0 < nc; c0 += FMB_COLS)
                for (int r = 0; r < rr; r++) {
                    const uint8_t *wr = il ? w + (uint64_t)r0 * ws + (uint64_t)r * U : w + (uint64_t)(r0 + r) * ws;
                    const uint64_t ust = il ? (uint64_t)rr * U : U;
                    /* the first group's passes ask for the next tile (pfp + k * pfl for unit k) */
                    const uint8_t *p = pf && rn > 0 && c0 == 0 ? next + (size_t)r * (size_t)nu * pfl : NULL;
                    float *yr = y + r0 + r;
                    __m256 *a = sv + (size_t)r * 2 * (size_t)nc + 2 * (size_t)c0;
                    const int last = k1 == nu;
                    switch (nc - c0 < FMB_COLS ? nc - c0 : FMB_COLS) {
                    case 1: fmb_row(wr, ust, k0, k1, xa, nc, c0, a, last, yr, ldy, p, pfl, e, 1); break;
                    case 2: fmb_row(wr, ust, k0, k1, xa, nc, c0, a, last, yr, ldy, p, pfl, e, 2); break;
                    case 3: fmb_row(wr, ust, k0, k1, xa, nc, c0, a, last, yr, ldy, p, pfl, e, 3); break;
                    default: fmb_row(wr, ust, k0, k1, xa, nc, c0, a, last, yr, ldy, p, pfl, e, 4); break;
                    }
                }
        }
    }
    free(xa);
    return 1;
}

#define FLOAT_GEMMS(T, E)                                                                                    \
    TGT KV_AVX2_GEMM_PROTO(T) {                                                                              \
        if (nc >= FMB_MIN_COLS && nr > 0 && n > 0 && n % 16 == 0 && fmb_gemm(n, w, ws, nr, x, xs, nc, y, ldy, E, 0)) \
            return;                                                                                          \
        fgemm(n, w, ws, nr, x, xs, nc, y, ldy, E);                                                           \
    }                                                                                                        \
    TGT KV_AVX2_GEMM_IL_PROTO(T) {                                                                           \
        if (nc >= FMB_MIN_COLS && nr > 0 && n > 0 && fmb_gemm(n, w, ws, nr, x, xs, nc, y, ldy, E, 1)) return; \
        fgemm_il(n, w, ws, nr, x, xs, nc, y, ldy, E);                                                        \
    }
FLOAT_GEMMS(f32, E_F32)
FLOAT_GEMMS(f16, E_F16)
FLOAT_GEMMS(bf16, E_BF16)

/* ---- y += a * x, one fma per element (attention's weighted sum of values) */

TGT void kv_avx2_mad_f32(int64_t n, float a, const void *vx, float *y) {
    const float *x = vx;
    const __m256 av = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] = fma1(a, x[i], y[i]);
}

TGT void kv_avx2_mad_f16(int64_t n, float a, const void *vx, float *y) {
    const uint16_t *x = vx;
    const __m256 av = _mm256_set1_ps(a);
    int64_t i = 0;
    /* vcvtph2ps quiets a signalling NaN, which the fma would do anyway */
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_cvtph_ps(ld128(x + i)), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] = fma1(a, kv_f16_to_f32(x[i]), y[i]);
}

/* ---- conversions */

TGT void kv_avx2_to_float_f16(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m128i hv = ld128(h + i);
        __m256 f = _mm256_cvtph_ps(hv);
        const __m256i h32 = _mm256_cvtepu16_epi32(hv);
        const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(h32, _mm256_set1_epi32(0x7fff)),
                                               _mm256_set1_epi32(0x7c00));
        if (!_mm256_testz_si256(nan, nan)) {
            /* the reference keeps a NaN's payload bits as they are (a
               signalling NaN stays signalling); the instruction quiets it */
            const __m256i bits = _mm256_or_si256(
                _mm256_slli_epi32(_mm256_and_si256(h32, _mm256_set1_epi32(0x8000)), 16),
                _mm256_or_si256(_mm256_set1_epi32(0x7f800000),
                                _mm256_slli_epi32(_mm256_and_si256(h32, _mm256_set1_epi32(0x3ff)), 13)));
            f = _mm256_blendv_ps(f, _mm256_castsi256_ps(bits), _mm256_castsi256_ps(nan));
        }
        _mm256_storeu_ps(dst + i, f);
    }
    for (; i < n; i++) dst[i] = kv_f16_to_f32(h[i]);
}

/* vcvtps2ph with round-to-nearest-even matches kv_f32_to_f16 for every
 * input, NaN (quiet bit set, top payload bits kept), subnormal and overflow
 * included (checked exhaustively over all 2^32 floats). */
TGT void kv_avx2_from_float_f16(const float *src, void *dst, int64_t n) {
    uint16_t *h = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(h + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) h[i] = kv_f32_to_f16(src[i]);
}

TGT void kv_avx2_to_float_bf16(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, ld8(h, i, E_BF16));
    for (; i < n; i++) dst[i] = kv_bf16_to_f32(h[i]);
}

/* the integer rounding of kv_f32_to_bf16 (no vcvtneps2bf16: it flushes subnormals) */
TGT void kv_avx2_from_float_bf16(const float *src, void *dst, int64_t n) {
    uint16_t *h = dst;
    int64_t i = 0;
    const __m256i one = _mm256_set1_epi32(1), r7 = _mm256_set1_epi32(0x7fff);
    const __m256i abs = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    for (; i + 8 <= n; i += 8) {
        const __m256i u = _mm256_loadu_si256((const __m256i *)(src + i));
        const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
        const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(r7, lsb)), 16);
        const __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(64));
        const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs), inf);
        const __m256i v = _mm256_blendv_epi8(r, q, nan);
        _mm_storeu_si128((__m128i *)(h + i),
                         _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
    }
    for (; i < n; i++) h[i] = kv_f32_to_bf16(src[i]);
}

/* ------------------------------------------------------------ Q8_0 / Q8_1 activations */

TGT void kv_avx2_to_float_q8_0(const void *src, float *dst, int64_t n) {
    const kv_block_q8_0 *b = src;
    for (int64_t i = 0; i < n / KV_QK8_0; i++, dst += KV_QK8_0) {
        const __m256 d = _mm256_set1_ps(h2f(&b[i].d));
        UNR
        for (int k = 0; k < 4; k++) {
            const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b[i].qs + 8 * k)));
            _mm256_storeu_ps(dst + 8 * k, _mm256_mul_ps(d, _mm256_cvtepi32_ps(q)));
        }
    }
}

INL float amax32(const float *x) {
    const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m = _mm256_setzero_ps();
    /* max_ps returns its second operand when the first is NaN: NaNs are skipped, as by fmaxf */
    UNR
    for (int k = 0; k < 4; k++) m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + 8 * k), abs), m);
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 4 vectors of 8 int32 (each within int8 range) -> 32 int8 in order */
INL __m256i pack32(__m256i q0, __m256i q1, __m256i q2, __m256i q3) {
    const __m256i a = _mm256_packs_epi32(q0, q1), b = _mm256_packs_epi32(q2, q3);
    return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* round(x * id) to nearest even, NaN -> 0, clamped to [lo, hi] */
INL __m256i q8_round32(const float *x, float id, float lo, float hi) {
    __m256i q[4];
    UNR
    for (int k = 0; k < 4; k++) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), _mm256_set1_ps(id));
        v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q));
        v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(lo)), _mm256_set1_ps(hi));
        q[k] = _mm256_cvtps_epi32(v);
    }
    return pack32(q[0], q[1], q[2], q[3]);
}

TGT void kv_avx2_from_float_q8_0(const float *src, void *dst, int64_t n) {
    kv_block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / KV_QK8_0; i++) {
        const float *x = src + i * KV_QK8_0;
        const float amax = amax32(x);
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        b[i].d = kv_f32_to_f16(d);
        _mm256_storeu_si256((__m256i *)b[i].qs, q8_round32(x, id, -127.0f, 127.0f));
    }
}

/* sat_i8(nearbyintf(v)) == nearbyint of v clamped to [-128, 127] first */
TGT void kv_avx2_from_float_q8_1(const float *src, void *dst, int64_t n) {
    kv_block_q8_1 *b = dst;
    for (int64_t i = 0; i < n / KV_QK8_1; i++) {
        const float *x = src + i * KV_QK8_1;
        const float amax = amax32(x);
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        b[i].d = kv_f32_to_f16(d);
        const __m256i q = q8_round32(x, id, -128.0f, 127.0f);
        _mm256_storeu_si256((__m256i *)b[i].qs, q);
        const int32_t sum = hsum_i32(sum4(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q)));
        b[i].s = kv_f32_to_f16(d * (float)sum);
    }
}

TGT void kv_avx2_from_float_q8_K(const float *src, void *dst, int64_t n) {
    kv_block_q8_K *b = dst;
    const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        const float *x = src + i * KV_QK_K;
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < 32; k++) m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + 8 * k), abs), m);
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        s = _mm_max_ss(s, _mm_movehdup_ps(s));
        const float amax = _mm_cvtss_f32(s);
        if (amax == 0.0f) {
            memset(&b[i], 0, sizeof b[i]);
            continue;
        }
        /* the first element of largest magnitude, with its sign */
        const __m256 av = _mm256_set1_ps(amax);
        int j = 0;
        for (int k = 0; k < 32; k++) {
            const int mask =
                _mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(_mm256_loadu_ps(x + 8 * k), abs), av, _CMP_EQ_OQ));
            if (mask) {
                j = 8 * k + __builtin_ctz((unsigned)mask);
                break;
            }
        }
        const float iscale = -127.f / x[j];
        const __m256 is = _mm256_set1_ps(iscale), magic = _mm256_set1_ps(12582912.0f);
        const __m256i mant = _mm256_set1_epi32(0x007fffff), half = _mm256_set1_epi32(0x00400000);
        const __m256i c127 = _mm256_set1_epi32(127), lowb = _mm256_set1_epi32(0xff);
        UNR
        for (int k = 0; k < 8; k++) {
            __m256i q[4];
            UNR
            for (int t = 0; t < 4; t++) {
                const __m256 v = _mm256_mul_ps(is, _mm256_loadu_ps(x + 32 * k + 8 * t));
                /* kv_nearest_int, then imin(127, .) and the int8_t cast (low byte) */
                const __m256i bits = _mm256_castps_si256(_mm256_add_ps(v, magic));
                __m256i r = _mm256_sub_epi32(_mm256_and_si256(bits, mant), half);
                q[t] = _mm256_and_si256(_mm256_min_epi32(r, c127), lowb);
            }
            const __m256i a = _mm256_packus_epi32(q[0], q[1]), c = _mm256_packus_epi32(q[2], q[3]);
            const __m256i v = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(a, c),
                                                          _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(b[i].qs + 32 * k), v);
        }
        for (int k = 0; k < KV_QK_K / 16; k++) {
            int sum = 0;
            UNR
            for (int t = 0; t < 16; t++) sum += b[i].qs[16 * k + t];
            b[i].bsums[k] = (int16_t)sum;
        }
        b[i].d = 1 / iscale;
    }
}

TGT void kv_avx2_from_float_i8_s(const float *src, void *dst, int64_t n) {
    const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 mv = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(src + i), abs), mv);
    __m128 s4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
    s4 = _mm_max_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_max_ss(s4, _mm_movehdup_ps(s4));
    float m = _mm_cvtss_f32(s4);
    for (; i < n; i++) {
        const float a = src[i] < 0 ? -src[i] : src[i];
        if (a > m) m = a;
    }
    /* max(1e-5, max |x|) in double, as the reference's running maximum */
    const double max = (double)m > 0.00001 ? (double)m : 0.00001;
    kv_i8_s_head head = {(float)(127 / max), 0};
    int8_t *q = (int8_t *)dst + sizeof head;
    const __m256 sc = _mm256_set1_ps(head.scale), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
    const __m256 lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
    __m256i acc = _mm256_setzero_si256();
    for (i = 0; i + 32 <= n; i += 32) {
        __m256i qv[4];
        UNR
        for (int k = 0; k < 4; k++) {
            const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(src + i + 8 * k), sc);
            /* round half away from zero: trunc, plus copysign(1, v) when |v - trunc| >= 0.5 */
            const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            const __m256 f = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
            const __m256 adj = _mm256_and_ps(_mm256_cmp_ps(f, half, _CMP_GE_OQ), _mm256_or_ps(one, _mm256_and_ps(v, sign)));
            __m256 r = _mm256_add_ps(t, adj);
            r = _mm256_and_ps(r, _mm256_cmp_ps(v, v, _CMP_ORD_Q));
            r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
            qv[k] = _mm256_cvttps_epi32(r);
            acc = _mm256_add_epi32(acc, qv[k]);
        }
        _mm256_storeu_si256((__m256i *)(q + i), pack32(qv[0], qv[1], qv[2], qv[3]));
    }
    head.sum = hsum_i32(acc);
    for (; i < n; i++) {
        double t = round((double)(src[i] * head.scale));
        if (t > 127)
            t = 127;
        else if (t < -128)
            t = -128;
        else if (t != t)
            t = 0;
        q[i] = (int8_t)t;
        head.sum += q[i];
    }
    memcpy(dst, &head, sizeof head);
}

/* ------------------------------------------------------------ gemm entry points */

/* TILE(n, w, ws, nr, x, xs, y, ldy, NR, NC, il, pfo) computes one register
 * tile of nr <= NR rows and exactly NC columns; il: the rows are one tile
 * of the interleaved layout of NR rows (quant.h), w its start; pfo:
 * prefetch is on (tiles of fewer than KV_PF_COLS columns then ask for
 * their stream). The entry points take any nr and nc: row tiles outer (a
 * weight tile stays in L1 while every column goes by), column tiles
 * inner; over the interleaved layout the row tiles are its tiles. */
#define TILE_AT(TILE, NR, NC, r0, rr, c0, IL) \
    TILE(n, (const uint8_t *)w + (uint64_t)(r0) * ws, ws, rr, (const uint8_t *)x + (uint64_t)(c0) * xs, xs, \
         y + (int64_t)(c0) * ldy + (r0), ldy, NR, NC, IL, pfo)

#define GEMM_HEAD(NR, IL)                                                            \
    const int pfo = kv_quant_prefetch_on();                                          \
    if (nc < KV_PF_COLS && pfo) {                                                    \
        if (IL) kv_pf_il_head(w, (uint64_t)nr * ws);                                 \
        else kv_pf_head(w, nr, ws, NR);                                              \
    }

#define BODY_NC2(TILE, NR, IL)                                          \
    GEMM_HEAD(NR, IL)                                                   \
    for (int r0 = 0; r0 < nr; r0 += NR) {                               \
        const int rr = nr - r0 < NR ? nr - r0 : NR;                     \
        int c0 = 0;                                                     \
        for (; c0 + 2 <= nc; c0 += 2) TILE_AT(TILE, NR, 2, r0, rr, c0, IL); \
        if (c0 < nc) {                                                  \
            /* interleaved: a whole tile with constant strides */       \
            if (IL && rr == NR) TILE_AT(TILE, NR, 1, r0, NR, c0, IL);   \
            else TILE_AT(TILE, NR, 1, r0, rr, c0, IL);                  \
        }                                                               \
    }

#define BODY_NC4(TILE, NR, IL)                                          \
    GEMM_HEAD(NR, IL)                                                   \
    for (int r0 = 0; r0 < nr; r0 += NR) {                               \
        const int rr = nr - r0 < NR ? nr - r0 : NR;                     \
        int c0 = 0;                                                     \
        for (; c0 + 4 <= nc; c0 += 4) TILE_AT(TILE, NR, 4, r0, rr, c0, IL); \
        if (IL && rr == NR && nc - c0 == 1) { /* a whole tile, constant strides */ \
            TILE_AT(TILE, NR, 1, r0, NR, c0, IL);                       \
            continue;                                                   \
        }                                                               \
        switch (nc - c0) {                                              \
        case 3: TILE_AT(TILE, NR, 3, r0, rr, c0, IL); break;            \
        case 2: TILE_AT(TILE, NR, 2, r0, rr, c0, IL); break;            \
        case 1: TILE_AT(TILE, NR, 1, r0, rr, c0, IL); break;            \
        default: break;                                                 \
        }                                                               \
    }

#define DEF_GEMM_NC2(T, TILE, NR)                       \
    TGT KV_AVX2_GEMM_PROTO(T) { BODY_NC2(TILE, NR, 0) } \
    TGT KV_AVX2_DOT_PROTO(T) { TILE(n, x, 0, 1, y, 0, s, 1, 1, 1, 0, 0); }
#define DEF_GEMM_NC4(T, TILE, NR)                       \
    TGT KV_AVX2_GEMM_PROTO(T) { BODY_NC4(TILE, NR, 0) } \
    TGT KV_AVX2_DOT_PROTO(T) { TILE(n, x, 0, 1, y, 0, s, 1, 1, 1, 0, 0); }
/* the weight types: also over the interleaved layout (tiles of NR rows) */
#define DEF_GEMM_IL_NC2(T, TILE, NR) \
    DEF_GEMM_NC2(T, TILE, NR)        \
    TGT KV_AVX2_GEMM_IL_PROTO(T) { BODY_NC2(TILE, NR, 1) }
#define DEF_GEMM_IL_NC4(T, TILE, NR) \
    DEF_GEMM_NC4(T, TILE, NR)        \
    TGT KV_AVX2_GEMM_IL_PROTO(T) { BODY_NC4(TILE, NR, 1) }
/* the same as static functions tiles_gemm_T / tiles_gemm_il_T (and the
 * public vec_dot), for types whose public entry points first try the
 * batched kernels */
#define DEF_TILES_IL_NC2(T, TILE, NR)                                                                      \
    static TGT void tiles_gemm_##T(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, \
                                   int nc, float *y, int64_t ldy) {                                        \
        BODY_NC2(TILE, NR, 0)                                                                              \
    }                                                                                                      \
    static TGT void tiles_gemm_il_##T(int64_t n, const void *w, uint64_t ws, int nr, const void *x,         \
                                      uint64_t xs, int nc, float *y, int64_t ldy) {                        \
        BODY_NC2(TILE, NR, 1)                                                                              \
    }                                                                                                      \
    TGT KV_AVX2_DOT_PROTO(T) { TILE(n, x, 0, 1, y, 0, s, 1, 1, 1, 0, 0); }
#define DEF_TILES_IL_NC4(T, TILE, NR)                                                                      \
    static TGT void tiles_gemm_##T(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, \
                                   int nc, float *y, int64_t ldy) {                                        \
        BODY_NC4(TILE, NR, 0)                                                                              \
    }                                                                                                      \
    static TGT void tiles_gemm_il_##T(int64_t n, const void *w, uint64_t ws, int nr, const void *x,         \
                                      uint64_t xs, int nc, float *y, int64_t ldy) {                        \
        BODY_NC4(TILE, NR, 1)                                                                              \
    }                                                                                                      \
    TGT KV_AVX2_DOT_PROTO(T) { TILE(n, x, 0, 1, y, 0, s, 1, 1, 1, 0, 0); }
_Static_assert(KV_AVX2_NR_B32 == KV_AVX2_IL_ROWS && KV_AVX2_NR_K == KV_AVX2_IL_ROWS && KV_AVX2_NR_I2S == KV_AVX2_IL_ROWS,
               "the decode tiles are the interleaved layout's tiles");

/* activation types (file layout only) */
#define ROWS(T, W, NR)                                                                           \
    const T *W[MR];                                                                              \
    UNR                                                                                          \
    for (int r_ = 0; r_ < NR; r_++) W[r_] = (const T *)((const uint8_t *)w + (uint64_t)(r_ < nr ? r_ : nr - 1) * ws)

/* weight types, W[r]: the rows of a tile, rs bytes apart (beyond nr the
 * last row again); block i of row r at W[r] + i * bst. File layout:
 * rs = ws, bst = BW (the block bytes). Interleaved: rs = BW, bst = nr * BW. */
#define WROWS(W, NR, BW)                                                                             \
    const uint64_t rs_ = il ? (uint64_t)(BW) : ws, bst = il ? (uint64_t)nr * (BW) : (uint64_t)(BW);  \
    const uint8_t *W[MR];                                                                            \
    UNR                                                                                              \
    for (int r_ = 0; r_ < NR; r_++) W[r_] = (const uint8_t *)w + (uint64_t)(r_ < nr ? r_ : nr - 1) * rs_

/* the prefetch of block step i (BW bytes a row) of a decode tile */
#define PF_STEP(W, NR, NC, nb, i, BW)                                                  \
    do {                                                                             \
        if ((NC) < KV_PF_COLS && pfo) {                                              \
            if (il) kv_pf_il(W[0] + (uint64_t)(i) * bst, (size_t)bst);               \
            else kv_pf_next(W, NR, ws, nb, (uint64_t)(i) * (BW), (BW));              \
        }                                                                            \
    } while (0)
#define COLS(T, X, NC)                                                     \
    const T *X[MC];                                                        \
    UNR                                                                \
    for (int c_ = 0; c_ < NC; c_++) X[c_] = (const T *)((const uint8_t *)x + (uint64_t)c_ * xs)

/* ------------------------------------------------------------ int8 x int8: Q8_0, Q8_1 */

/* BS: block bytes, QO: offset of qs in a block (same for both operands) */
/* the scalar reference of Q8_0 x Q8_0 over a row whose block i is at
 * w + i * bst (kv_vec_dot_q8_0_q8_0_ref's operations, for the interleaved
 * layout's fallback) */
static void dot_q8_0_strided(int64_t n, float *s, const uint8_t *w, uint64_t bst, const kv_block_q8_0 *y) {
    float acc[8] = {0};
    for (int64_t i = 0; i < n / KV_QK8_0; i++) {
        kv_block_q8_0 x;
        memcpy(&x, w + (uint64_t)i * bst, sizeof x);
        const float d = kv_f16_to_f32(x.d) * kv_f16_to_f32(y[i].d);
        for (int l = 0; l < 8; l++) {
            int32_t isum = 0;
            for (int k = 0; k < 4; k++) isum += (int32_t)x.qs[4 * l + k] * (int32_t)y[i].qs[4 * l + k];
            acc[l] = fmaf(d, (float)isum, acc[l]);
        }
    }
    *s = kv_dot_reduce8(acc);
}

INL void tile_q8x(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                  const int NR, const int NC, const int il, const int pfo, const int BS, const int QO,
                  kv_vec_dot_fn ref) {
    const int64_t nb = n / 32;
    WROWS(W, NR, BS);
    COLS(uint8_t, X, NC);
    __m256 acc[MR][MC];
    UNR
    for (int r = 0; r < NR; r++) {
        UNR
        for (int c = 0; c < NC; c++) acc[r][c] = _mm256_setzero_ps();
    }
    __m256i bad = _mm256_setzero_si256();
    const __m256i m128 = _mm256_set1_epi8(-128);
    for (int64_t i = 0; i < nb; i++) {
        PF_STEP(W, NR, NC, nb, i, (size_t)BS);
        __m256i qy[MC];
        __m256 dy[MC];
        UNR
        for (int c = 0; c < NC; c++) {
            const uint8_t *b = X[c] + i * BS;
            qy[c] = ld256(b + QO);
            bad = _mm256_or_si256(bad, _mm256_cmpeq_epi8(qy[c], m128));
            dy[c] = _mm256_set1_ps(h2f(b));
        }
        UNR
        for (int r = 0; r < NR; r++) {
            const uint8_t *a = W[r] + i * bst;
            const __m256i qx = ld256(a + QO);
            const __m256i ux = _mm256_sign_epi8(qx, qx);
            const __m256 dx = _mm256_set1_ps(h2f(a));
            UNR
            for (int c = 0; c < NC; c++) {
                const __m256i p = sum4(_mm256_maddubs_epi16(ux, _mm256_sign_epi8(qy[c], qx)));
                acc[r][c] = _mm256_fmadd_ps(_mm256_mul_ps(dx, dy[c]), _mm256_cvtepi32_ps(p), acc[r][c]);
            }
        }
    }
    if (!_mm256_testz_si256(bad, bad)) {
        for (int r = 0; r < NR && r < nr; r++) {
            UNR
            for (int c = 0; c < NC; c++) {
                if (il) /* only Q8_0 weights are interleaved */
                    dot_q8_0_strided(n, &y[c * ldy + r], W[r], bst, (const kv_block_q8_0 *)X[c]);
                else
                    ref(n, &y[c * ldy + r], W[r], X[c]);
            }
        }
        return;
    }
    for (int r = 0; r < NR && r < nr; r++) {
        UNR
        for (int c = 0; c < NC; c++) y[c * ldy + r] = hsum8(acc[r][c]);
    }
}

INL void tile_q8_0(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                   const int NR, const int NC, const int il, const int pfo) {
    tile_q8x(n, w, ws, nr, x, xs, y, ldy, NR, NC, il, pfo, sizeof(kv_block_q8_0), offsetof(kv_block_q8_0, qs),
             kv_vec_dot_q8_0_q8_0_ref);
}
INL void tile_q8_1(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                   const int NR, const int NC, const int il, const int pfo) {
    tile_q8x(n, w, ws, nr, x, xs, y, ldy, NR, NC, il, pfo, sizeof(kv_block_q8_1), offsetof(kv_block_q8_1, qs),
             kv_traits_q8_1.vec_dot);
}
DEF_TILES_IL_NC2(q8_0, tile_q8_0, KV_AVX2_NR_B32)
DEF_GEMM_NC2(q8_1, tile_q8_1, KV_AVX2_NR_B32)

/* ------------------------------------------------------------ Q4_0, Q4_1, Q5_0, Q5_1 */

enum { T_Q4_0, T_Q4_1, T_Q5_0, T_Q5_1 };

/* the 32 unsigned codes of a block, in element order */
INL __m256i unpack_b32(const uint8_t *blk, const int t) {
    const size_t qo = t == T_Q4_0   ? offsetof(kv_block_q4_0, qs)
                      : t == T_Q4_1 ? offsetof(kv_block_q4_1, qs)
                      : t == T_Q5_0 ? offsetof(kv_block_q5_0, qs)
                                    : offsetof(kv_block_q5_1, qs);
    const __m128i q = ld128(blk + qo);
    __m256i u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0f));
    if (t == T_Q5_0 || t == T_Q5_1) {
        uint32_t qh;
        memcpy(&qh, blk + (t == T_Q5_0 ? offsetof(kv_block_q5_0, qh) : offsetof(kv_block_q5_1, qh)), 4);
        u = _mm256_or_si256(u, _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10)));
    }
    return u;
}

INL void tile_b32(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                  const int NR, const int NC, const int il, const int pfo, const int t) {
    const int64_t nb = n / 32;
    const int with_min = t == T_Q4_1 || t == T_Q5_1;
    const int off = t == T_Q4_0 ? 8 : t == T_Q5_0 ? 16 : 0;
    const size_t BW = t == T_Q4_0   ? sizeof(kv_block_q4_0)
                      : t == T_Q4_1 ? sizeof(kv_block_q4_1)
                      : t == T_Q5_0 ? sizeof(kv_block_q5_0)
                                    : sizeof(kv_block_q5_1);
    const size_t BX = with_min ? sizeof(kv_block_q8_1) : sizeof(kv_block_q8_0);
    const size_t XO = with_min ? offsetof(kv_block_q8_1, qs) : offsetof(kv_block_q8_0, qs);
    WROWS(W, NR, BW);
    COLS(uint8_t, X, NC);
    __m256 acc[MR][MC];
    float accm[MR][MC];
    UNR
    for (int r = 0; r < NR; r++) {
        UNR
        for (int c = 0; c < NC; c++) {
            acc[r][c] = _mm256_setzero_ps();
            accm[r][c] = 0.0f;
        }
    }
    for (int64_t i = 0; i < nb; i++) {
        PF_STEP(W, NR, NC, nb, i, BW);
        __m256i qy[MC], qo[MC];
        __m256 dy[MC];
        float sy[MC];
        UNR
        for (int c = 0; c < NC; c++) {
            const uint8_t *b = X[c] + i * BX;
            qy[c] = ld256(b + XO);
            if (off) qo[c] = _mm256_maddubs_epi16(_mm256_set1_epi8((char)off), qy[c]);
            dy[c] = _mm256_set1_ps(h2f(b));
            if (with_min) sy[c] = h2f(b + offsetof(kv_block_q8_1, s));
        }
        UNR
        for (int r = 0; r < NR; r++) {
            const uint8_t *a = W[r] + i * bst;
            const __m256i u = unpack_b32(a, t);
            const __m256 dx = _mm256_set1_ps(h2f(a));
            const float mx = with_min ? h2f(a + 2) : 0.0f; /* m follows d in Q4_1 and Q5_1 */
            UNR
            for (int c = 0; c < NC; c++) {
                __m256i p = _mm256_maddubs_epi16(u, qy[c]);
                if (off) p = _mm256_sub_epi16(p, qo[c]);
                acc[r][c] = _mm256_fmadd_ps(_mm256_mul_ps(dx, dy[c]), _mm256_cvtepi32_ps(sum4(p)), acc[r][c]);
                if (with_min) accm[r][c] = fma1(mx, sy[c], accm[r][c]);
            }
        }
    }
    for (int r = 0; r < NR && r < nr; r++) {
        UNR
        for (int c = 0; c < NC; c++) y[c * ldy + r] = with_min ? hsum8(acc[r][c]) + accm[r][c] : hsum8(acc[r][c]);
    }
}

#define B32_TILE(T, ID)                                                                                         \
    INL void tile_##T(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y,       \
                      int64_t ldy, const int NR, const int NC, const int il, const int pfo) {                  \
        tile_b32(n, w, ws, nr, x, xs, y, ldy, NR, NC, il, pfo, ID);                                             \
    }                                                                                                          \
    DEF_GEMM_IL_NC2(T, tile_##T, KV_AVX2_NR_B32)
#define B32_TILE_MC(T, ID)                                                                                      \
    INL void tile_##T(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y,       \
                      int64_t ldy, const int NR, const int NC, const int il, const int pfo) {                  \
        tile_b32(n, w, ws, nr, x, xs, y, ldy, NR, NC, il, pfo, ID);                                             \
    }                                                                                                          \
    DEF_TILES_IL_NC2(T, tile_##T, KV_AVX2_NR_B32)
B32_TILE_MC(q4_0, T_Q4_0)
B32_TILE(q4_1, T_Q4_1)
B32_TILE_MC(q5_0, T_Q5_0)
B32_TILE(q5_1, T_Q5_1)


/* ------------------------------------------------------------ Q8_0, Q4_0, Q5_0 with several columns
 *
 * Several sessions decoded together (kvlm_decode_batch) call gemm with one
 * column per session, and prefill with one per token. The register tiles
 * above (4 rows x 2 columns) redo a weight block's unpacking, its scale's
 * conversion and an activation block's checks for every column tile, and
 * their 8 accumulators with the operands do not fit the 16 ymm registers.
 * Here the work is laid out so that each (row, column, block) costs the
 * reference's arithmetic and little else:
 *   - the activations are converted once per call into a block-major
 *     scratch: block i of column c's 32 int8 values at qa + (i * nc + c) *
 *     32 (aligned), for Q4_0/Q5_0 next to them the offset term
 *     maddubs(off, q) as int16 pairs, and the scales as floats, eight
 *     columns to a row (dy[i * ncp + c], zero beyond nc); for Q8_0 an
 *     activation holding -128 (which the sign trick cannot take, and our
 *     quantizers never write) sends the whole call to the tiles above;
 *   - a weight row is read one block at a time, unpacked once (Q8_0: |q|
 *     and q for the signs; Q4_0/Q5_0: the unsigned codes) and its scale
 *     converted once, for up to MB_COLS columns at a time; dx * dy for
 *     those columns is one multiply, stored, and each column's product is
 *     broadcast from memory (a load, no shuffle);
 *   - per column and block: (sign,) maddubs, (offset,) madd, convert, fma
 *     into that column's accumulator, MB_COLS of them in registers.
 * A tile of the interleaved layout (or 4 rows of the file layout) is done
 * row after row, so its bytes come from memory once (the first row's pass)
 * and from L1 for the other rows; each pass asks for a quarter of the next
 * tile (the layout's ascending stream one tile ahead). Lane l of a column's
 * accumulator does the reference's fma(dx * dy, (float)isum_l, acc) block
 * after block and hsum8 is its tree, so every output has vec_dot's bits
 * whatever nc or the grouping of the columns. */

enum { MB_Q8, MB_Q4, MB_Q5 };
#ifndef MB_DSTORE
#define MB_DSTORE 1
#endif
#define MB_COLS 8 /* columns per pass over a row (accumulators in registers) */
#define MB_ROWS 4 /* rows per tile: the interleaved layout's */
_Static_assert(MB_ROWS == KV_AVX2_IL_ROWS, "the batched kernel walks the interleaved layout's tiles");
#define MB_BYTES(t) \
    ((t) == MB_Q4 ? sizeof(kv_block_q4_0) : (t) == MB_Q5 ? sizeof(kv_block_q5_0) : sizeof(kv_block_q8_0))

/* a float from memory into every lane: one load-port uop (written as asm so
 * that the compiler does not forward a just-stored value through shuffles) */
INL __m256 bcast_mem(const float *p) {
    __m256 r;
    __asm__("vbroadcastss %1, %0" : "=x"(r) : "m"(*p));
    return r;
}

/* one weight row (block i at wr + i * bst) x columns c0 .. c0 + NC - 1 */
INL void mb_row(const uint8_t *wr, uint64_t bst, int64_t nb, const uint8_t *qa, const uint8_t *qo, const float *dy,
                int nc, int ncp, int c0, float *y, int64_t ldy, const uint8_t *pfp, size_t pfl, const int t,
                const int NC) {
    __m256 acc[MB_COLS];
    UNR
    for (int c = 0; c < NC; c++) acc[c] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
#if MB_DSTORE
    _Alignas(32) float D[MB_COLS];
#endif
    const size_t qstep = (size_t)nc * 32;
    const uint8_t *qi = qa + (size_t)c0 * 32, *oi = qo ? qo + (size_t)c0 * 32 : NULL;
    const float *di = dy + c0;
    for (int64_t i = 0; i < nb; i++, qi += qstep, oi = oi ? oi + qstep : NULL, di += ncp) {
        const uint8_t *b = wr + (uint64_t)i * bst;
        if (pfp) {
            const uintptr_t a = (uintptr_t)pfp + (size_t)i * pfl, e = a + pfl;
            for (uintptr_t q = a & ~(uintptr_t)63; q < e; q += 64) __builtin_prefetch((const void *)q, 0, KV_PF_IL_LOC);
        }
        __m256i u, sx = _mm256_setzero_si256();
        if (t == MB_Q8) {
            sx = ld256(b + offsetof(kv_block_q8_0, qs));
            u = _mm256_sign_epi8(sx, sx);
        } else {
            u = unpack_b32(b, t == MB_Q4 ? T_Q4_0 : T_Q5_0);
        }
        const __m256 dx = _mm256_set1_ps(h2f(b));
#if MB_DSTORE
        if (NC > 4) _mm256_store_ps(D, _mm256_mul_ps(dx, _mm256_load_ps(di)));
        else _mm_store_ps(D, _mm_mul_ps(_mm256_castps256_ps128(dx), _mm_load_ps(di)));
#endif
        UNR
        for (int c = 0; c < NC; c++) {
            const __m256i q = _mm256_load_si256((const __m256i *)(qi + 32 * c));
            __m256i p;
            if (t == MB_Q8) p = _mm256_maddubs_epi16(u, _mm256_sign_epi8(q, sx));
            else p = _mm256_sub_epi16(_mm256_maddubs_epi16(u, q), _mm256_load_si256((const __m256i *)(oi + 32 * c)));
#if MB_DSTORE
            acc[c] = _mm256_fmadd_ps(bcast_mem(&D[c]), _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones)), acc[c]);
#else
            acc[c] = _mm256_fmadd_ps(_mm256_mul_ps(dx, bcast_mem(di + c)), _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones)), acc[c]);
#endif
        }
    }
    UNR
    for (int c = 0; c < NC; c++) y[(int64_t)(c0 + c) * ldy] = hsum8(acc[c]);
}

/* any nr, nc >= 1; il: w is in the interleaved layout of MB_ROWS rows.
 * Returns 0 (nothing done) when the scratch cannot be had or a Q8_0
 * activation holds -128. */
INL int mb_gemm(int64_t n, const void *vw, uint64_t ws, int nr, const void *vx, uint64_t xs, int nc, float *y,
                int64_t ldy, const int t, const int il) {
    const int64_t nb = n / 32;
    const size_t BW = MB_BYTES(t);
    const int ncp = (nc + MB_COLS - 1) / MB_COLS * MB_COLS;
    const size_t s_q = (size_t)nb * (size_t)nc * 32, s_o = t == MB_Q8 ? 0 : s_q, s_d = (size_t)nb * (size_t)ncp * 4;
    uint8_t *buf = aligned_alloc(32, (s_q + s_o + s_d + 31) & ~(size_t)31);
    if (!buf) return 0;
    uint8_t *qa = buf, *qo = t == MB_Q8 ? NULL : buf + s_q;
    float *dy = (float *)(buf + s_q + s_o);
    const uint8_t *w = vw, *x = vx;
    const int pfo = kv_quant_prefetch_on();
    /* file layout: the stream prefetch needs contiguous rows */
    const int pf = pfo && (il || ws == (uint64_t)nb * BW);
    if (pf) kv_pf_il_head(w, (uint64_t)nr * ws);
    const __m256i m128 = _mm256_set1_epi8(-128), offv = _mm256_set1_epi8(t == MB_Q4 ? 8 : 16);
    __m256i bad = _mm256_setzero_si256();
    for (int64_t i = 0; i < nb; i++) {
        for (int c = 0; c < nc; c++) {
            const uint8_t *b = x + (uint64_t)c * xs + (uint64_t)i * sizeof(kv_block_q8_0);
            const __m256i q = ld256(b + offsetof(kv_block_q8_0, qs));
            const size_t o = ((size_t)i * (size_t)nc + (size_t)c) * 32;
            _mm256_store_si256((__m256i *)(qa + o), q);
            if (t == MB_Q8) bad = _mm256_or_si256(bad, _mm256_cmpeq_epi8(q, m128));
            else _mm256_store_si256((__m256i *)(qo + o), _mm256_maddubs_epi16(offv, q));
            dy[i * ncp + c] = h2f(b);
        }
        for (int c = nc; c < ncp; c++) dy[i * ncp + c] = 0.0f;
    }
    if (!_mm256_testz_si256(bad, bad)) {
        free(buf);
        return 0;
    }
    for (int r0 = 0; r0 < nr; r0 += MB_ROWS) {
        const int rr = nr - r0 < MB_ROWS ? nr - r0 : MB_ROWS;
        /* the next tile (rn rows), a share of it per pass: rr passes of nb steps of pfl bytes */
        const int rn = nr - r0 - rr < MB_ROWS ? nr - r0 - rr : MB_ROWS;
        const size_t pfl = ((size_t)rn * (size_t)nb * BW + (size_t)rr * (size_t)nb - 1) / ((size_t)rr * (size_t)nb);
        const uint8_t *next = w + (uint64_t)(r0 + rr) * ws;
        for (int r = 0; r < rr; r++) {
            const uint8_t *wr = il ? w + (uint64_t)r0 * ws + (uint64_t)r * BW : w + (uint64_t)(r0 + r) * ws;
            const uint64_t bst = il ? (uint64_t)rr * BW : BW;
            const uint8_t *pfp = pf && rn > 0 ? next + (size_t)r * (size_t)nb * pfl : NULL;
            for (int c0 = 0; c0 < nc; c0 += MB_COLS) {
                float *yr = y + r0 + r;
#define MB_CASE(NC) \
    case NC: mb_row(wr, bst, nb, qa, qo, dy, nc, ncp, c0, yr, ldy, c0 ? NULL : pfp, pfl, t, NC); break;
                switch (nc - c0 < MB_COLS ? nc - c0 : MB_COLS) {
                    MB_CASE(1)
                    MB_CASE(2)
                    MB_CASE(3)
                    MB_CASE(4)
                    MB_CASE(5)
                    MB_CASE(6)
                    MB_CASE(7)
                    MB_CASE(8)
                default: break;
                }
#undef MB_CASE
            }
        }
    }
    free(buf);
    return 1;
}

/* the public gemm entry points of the three types: the batched kernel from
 * MB_MIN_COLS columns, the register tiles below that (decode) */
#ifndef MB_MIN_COLS
#define MB_MIN_COLS 2
#endif
#define MB_GEMMS(T, ID)                                                                                    \
    TGT KV_AVX2_GEMM_PROTO(T) {                                                                            \
        if (nc >= MB_MIN_COLS && nr > 0 && n > 0 && mb_gemm(n, w, ws, nr, x, xs, nc, y, ldy, ID, 0)) return; \
        tiles_gemm_##T(n, w, ws, nr, x, xs, nc, y, ldy);                                                   \
    }                                                                                                      \
    TGT KV_AVX2_GEMM_IL_PROTO(T) {                                                                         \
        if (nc >= MB_MIN_COLS && nr > 0 && n > 0 && mb_gemm(n, w, ws, nr, x, xs, nc, y, ldy, ID, 1)) return; \
        tiles_gemm_il_##T(n, w, ws, nr, x, xs, nc, y, ldy);                                                \
    }
MB_GEMMS(q8_0, MB_Q8)
MB_GEMMS(q4_0, MB_Q4)
MB_GEMMS(q5_0, MB_Q5)

/* ------------------------------------------------------------ K-quants */

/* One weight super-block, unpacked: U[k] the 32 unsigned codes of chunk k
 * (elements 32k..32k+31), SC[k] the int16 sub-block scales for its lanes
 * 0..3 and 4..7, MX the mins as the int16 vector that madd pairs with
 * bsums. */
typedef struct {
    __m256i U[8], SC[8], MX;
    float dx, dmx;
} krow;

/* The 12-byte 6-bit scales/mins of Q4_K and Q5_K as int16
 * [sc0..sc7 | mn0..mn7] (get_scale_min_k4 on 32-bit words). */
INL __m256i k4_scales(const uint8_t *q) {
    uint32_t u[3];
    memcpy(u, q, 12);
    const uint32_t m6 = 0x3f3f3f3fu, m4 = 0x0f0f0f0fu, hi2 = 0xc0c0c0c0u;
    const __m128i v = _mm_setr_epi32((int)(u[0] & m6), (int)((u[2] & m4) | ((u[0] & hi2) >> 2)), (int)(u[1] & m6),
                                     (int)(((u[2] >> 4) & m4) | ((u[1] & hi2) >> 2)));
    return _mm256_cvtepu8_epi16(v);
}

/* Sub-block scales are spread over a chunk's lanes with in-lane byte
 * shuffles only: a lane-crossing permute per chunk (vpermd) costs several
 * uops on some cores (3 on Zen 1), far more than the multiplies it feeds.
 * The sources are the scales with a 128-bit half copied into both lanes,
 * made once per super-block. */
typedef struct {
    __m256i lo, hi; /* [s0..s7 | s0..s7], [s8..s15 | s8..s15] */
} sc16;

INL sc16 sc_src(__m256i s16) {
    sc16 v;
    v.lo = _mm256_permute2x128_si256(s16, s16, 0x00);
    v.hi = _mm256_permute2x128_si256(s16, s16, 0x11);
    return v;
}

/* from int16 [s0..s15]: the vector with s[2c] in its low lane and s[2c+1]
 * in its high lane (one scale per 16-element sub-block, as a chunk's lanes
 * 0..3 and 4..7 need) */
INL __m256i sc_pair(const sc16 *s, int c) {
    const int a = 2 * ((2 * c) & 7), b = a + 2;
    return _mm256_shuffle_epi8(c < 4 ? s->lo : s->hi,
                               _mm256_setr_epi8(a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a,
                                                a + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b,
                                                b + 1, b, b + 1));
}

/* from int16 [s0..s7 | ...] with the low half in both lanes (sc16.lo):
 * s[j] in every element */
INL __m256i sc_bcast(__m256i lo, int j) {
    const int b = 2 * j;
    return _mm256_shuffle_epi8(lo, _mm256_setr_epi8(b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b,
                                                    b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b, b + 1, b,
                                                    b + 1, b, b + 1, b, b + 1));
}

/* [m0, m0, m1, m1, .., m7, m7] from [sc | mn] */
INL __m256i mins_pairs(__m256i v16) {
    const __m256i m = _mm256_permute4x64_epi64(v16, 0xee); /* [mn | mn] */
    return _mm256_shuffle_epi8(m, _mm256_setr_epi8(0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7, 8, 9, 8, 9, 10, 11,
                                                   10, 11, 12, 13, 12, 13, 14, 15, 14, 15));
}

INL void prep_q2_K(const kv_block_q2_K *b, krow *k) {
    const __m256i m3 = _mm256_set1_epi8(3);
    UNR
    for (int h = 0; h < 2; h++) {
        const __m256i q = ld256(b->qs + 32 * h);
        UNR
        for (int j = 0; j < 4; j++) k->U[4 * h + j] = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m3);
    }
    const __m128i sb = ld128(b->scales);
    const sc16 s16 = sc_src(_mm256_cvtepu8_epi16(_mm_and_si128(sb, _mm_set1_epi8(0x0f))));
    UNR
    for (int c = 0; c < 8; c++) k->SC[c] = sc_pair(&s16, c);
    k->MX = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sb, 4), _mm_set1_epi8(0x0f)));
    k->dx = h2f(&b->d);
    k->dmx = h2f(&b->dmin);
}

INL void prep_q3_K(const kv_block_q3_K *b, krow *k) {
    const __m256i m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    const __m256i hm = ld256(b->hmask);
    UNR
    for (int h = 0; h < 2; h++) {
        const __m256i q = ld256(b->qs + 32 * h);
        UNR
        for (int j = 0; j < 4; j++) {
            const int c = 4 * h + j; /* its high bits: bit c of hmask[l] */
            const __m256i hb = _mm256_and_si256(_mm256_srli_epi16(hm, c), one);
            k->U[c] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m3), _mm256_slli_epi16(hb, 2));
        }
    }
    /* the 6-bit scales: low 4 bits in the nibbles of scales[0..7], top 2 bits
       at shift 2(j / 4) of scales[8 + j % 4]; as 32-bit words */
    uint32_t u[3];
    memcpy(u, b->scales, 12);
    const uint32_t m4 = 0x0f0f0f0fu, m2 = 0x03030303u;
    const __m128i lo = _mm_setr_epi32((int)(u[0] & m4), (int)(u[1] & m4), (int)((u[0] >> 4) & m4), (int)((u[1] >> 4) & m4));
    const __m128i hi = _mm_setr_epi32((int)(u[2] & m2), (int)((u[2] >> 2) & m2), (int)((u[2] >> 4) & m2), (int)((u[2] >> 6) & m2));
    const __m128i s8 = _mm_sub_epi8(_mm_or_si128(lo, _mm_slli_epi16(hi, 4)), _mm_set1_epi8(32));
    const sc16 s16 = sc_src(_mm256_cvtepi8_epi16(s8));
    UNR
    for (int c = 0; c < 8; c++) k->SC[c] = sc_pair(&s16, c);
    k->dx = h2f(&b->d);
}

INL void prep_q4_K(const kv_block_q4_K *b, krow *k) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i v16 = k4_scales(b->scales);
    const __m256i scl = _mm256_permute2x128_si256(v16, v16, 0x00);
    UNR
    for (int c = 0; c < 4; c++) {
        const __m256i q = ld256(b->qs + 32 * c);
        k->U[2 * c] = _mm256_and_si256(q, m4);
        k->U[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        k->SC[2 * c] = sc_bcast(scl, 2 * c);
        k->SC[2 * c + 1] = sc_bcast(scl, 2 * c + 1);
    }
    k->MX = mins_pairs(v16);
    k->dx = h2f(&b->d);
    k->dmx = h2f(&b->dmin);
}

INL void prep_q5_K(const kv_block_q5_K *b, krow *k) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
    const __m256i v16 = k4_scales(b->scales);
    const __m256i scl = _mm256_permute2x128_si256(v16, v16, 0x00);
    const __m256i hb = ld256(b->qh);
    UNR
    for (int c = 0; c < 4; c++) {
        const __m256i q = ld256(b->qs + 32 * c);
        const __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * c), one);
        const __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * c + 1), one);
        k->U[2 * c] = _mm256_or_si256(_mm256_and_si256(q, m4), _mm256_slli_epi16(h0, 4));
        k->U[2 * c + 1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), _mm256_slli_epi16(h1, 4));
        k->SC[2 * c] = sc_bcast(scl, 2 * c);
        k->SC[2 * c + 1] = sc_bcast(scl, 2 * c + 1);
    }
    k->MX = mins_pairs(v16);
    k->dx = h2f(&b->d);
    k->dmx = h2f(&b->dmin);
}

INL void prep_q6_K(const kv_block_q6_K *b, krow *k) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m3 = _mm256_set1_epi8(3);
    UNR
    for (int h = 0; h < 2; h++) {
        const __m256i l0 = ld256(b->ql + 64 * h), l1 = ld256(b->ql + 64 * h + 32), qh = ld256(b->qh + 32 * h);
        const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4);
        const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4);
        const __m256i h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4);
        const __m256i h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4);
        k->U[4 * h + 0] = _mm256_or_si256(_mm256_and_si256(l0, m4), h0);
        k->U[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4), h1);
        k->U[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), h2);
        k->U[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), h3);
    }
    const sc16 s16 = sc_src(_mm256_cvtepi8_epi16(ld128(b->scales)));
    UNR
    for (int c = 0; c < 8; c++) k->SC[c] = sc_pair(&s16, c);
    k->dx = h2f(&b->d);
}

/* exact int32 lane sums: sum_k sc * ((u - off) . y) over the 8 chunks;
 * yo[k] = maddubs(off, y_k) when off != 0 */
INL __m256i k_isum(const krow *k, const int8_t *qy, const __m256i *yo, const int has_off) {
    __m256i is = _mm256_setzero_si256();
    UNR
    for (int c = 0; c < 8; c++) {
        __m256i p = _mm256_maddubs_epi16(k->U[c], ld256(qy + 32 * c));
        if (has_off) p = _mm256_sub_epi16(p, yo[c]);
        is = _mm256_add_epi32(is, _mm256_madd_epi16(p, k->SC[c]));
    }
    return is;
}

enum { K_Q2, K_Q3, K_Q4, K_Q5, K_Q6 };

/* One column (decode): the same lane sums as k_isum, each chunk's codes and
 * scales made right where they are multiplied, so nothing of a super-block
 * is held but its scale sources (an unpacked krow of 17 vectors spills on
 * 16 registers, and GCC keeps source order on x86). */
typedef struct {
    sc16 s;      /* Q2/Q3/Q6: the 16 sub-block scales */
    __m256i scl; /* Q4/Q5: [sc0..sc7 | sc0..sc7] */
    __m256i MX;
    float dx, dmx;
} khead;

INL void k_head(const int t, const uint8_t *blk, khead *h) {
    if (t == K_Q2) {
        const kv_block_q2_K *b = (const kv_block_q2_K *)blk;
        const __m128i sb = ld128(b->scales);
        h->s = sc_src(_mm256_cvtepu8_epi16(_mm_and_si128(sb, _mm_set1_epi8(0x0f))));
        h->MX = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sb, 4), _mm_set1_epi8(0x0f)));
        h->dx = h2f(&b->d);
        h->dmx = h2f(&b->dmin);
    } else if (t == K_Q3) {
        const kv_block_q3_K *b = (const kv_block_q3_K *)blk;
        uint32_t u[3];
        memcpy(u, b->scales, 12);
        const uint32_t m4 = 0x0f0f0f0fu, m2 = 0x03030303u;
        const __m128i lo =
            _mm_setr_epi32((int)(u[0] & m4), (int)(u[1] & m4), (int)((u[0] >> 4) & m4), (int)((u[1] >> 4) & m4));
        const __m128i hi = _mm_setr_epi32((int)(u[2] & m2), (int)((u[2] >> 2) & m2), (int)((u[2] >> 4) & m2),
                                          (int)((u[2] >> 6) & m2));
        const __m128i s8 = _mm_sub_epi8(_mm_or_si128(lo, _mm_slli_epi16(hi, 4)), _mm_set1_epi8(32));
        h->s = sc_src(_mm256_cvtepi8_epi16(s8));
        h->dx = h2f(&b->d);
    } else if (t == K_Q4 || t == K_Q5) {
        const uint8_t *sc = t == K_Q4 ? ((const kv_block_q4_K *)blk)->scales : ((const kv_block_q5_K *)blk)->scales;
        const __m256i v16 = k4_scales(sc);
        h->scl = _mm256_permute2x128_si256(v16, v16, 0x00);
        h->MX = mins_pairs(v16);
        if (t == K_Q4) {
            h->dx = h2f(&((const kv_block_q4_K *)blk)->d);
            h->dmx = h2f(&((const kv_block_q4_K *)blk)->dmin);
        } else {
            h->dx = h2f(&((const kv_block_q5_K *)blk)->d);
            h->dmx = h2f(&((const kv_block_q5_K *)blk)->dmin);
        }
    } else {
        const kv_block_q6_K *b = (const kv_block_q6_K *)blk;
        h->s = sc_src(_mm256_cvtepi8_epi16(ld128(b->scales)));
        h->dx = h2f(&b->d);
    }
}

/* the unsigned codes of chunk c (elements 32c..32c+31), as prep_* makes them */
INL __m256i k_codes(const int t, const uint8_t *blk, const int c) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    if (t == K_Q2) {
        const __m256i q = ld256(((const kv_block_q2_K *)blk)->qs + 32 * (c >> 2));
        return _mm256_and_si256(_mm256_srli_epi16(q, 2 * (c & 3)), m3);
    }
    if (t == K_Q3) {
        const kv_block_q3_K *b = (const kv_block_q3_K *)blk;
        const __m256i q = ld256(b->qs + 32 * (c >> 2));
        const __m256i hb = _mm256_and_si256(_mm256_srli_epi16(ld256(b->hmask), c), one);
        return _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 2 * (c & 3)), m3), _mm256_slli_epi16(hb, 2));
    }
    if (t == K_Q4) {
        const __m256i q = ld256(((const kv_block_q4_K *)blk)->qs + 32 * (c >> 1));
        return _mm256_and_si256(c & 1 ? _mm256_srli_epi16(q, 4) : q, m4);
    }
    if (t == K_Q5) {
        const kv_block_q5_K *b = (const kv_block_q5_K *)blk;
        const __m256i q = ld256(b->qs + 32 * (c >> 1));
        const __m256i h = _mm256_and_si256(_mm256_srli_epi16(ld256(b->qh), c), one);
        return _mm256_or_si256(_mm256_and_si256(c & 1 ? _mm256_srli_epi16(q, 4) : q, m4), _mm256_slli_epi16(h, 4));
    }
    const kv_block_q6_K *b = (const kv_block_q6_K *)blk;
    const int hh = c >> 2, j = c & 3;
    const __m256i l = ld256(b->ql + 64 * hh + 32 * (j & 1)), qh = ld256(b->qh + 32 * hh);
    const __m256i hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * j), m3), 4);
    return _mm256_or_si256(_mm256_and_si256(j & 2 ? _mm256_srli_epi16(l, 4) : l, m4), hi);
}

INL __m256i k_isum1(const int t, const uint8_t *blk, const khead *h, const int8_t *qy, const __m256i *yo,
                    const int has_off) {
    __m256i is = _mm256_setzero_si256();
    UNR
    for (int c = 0; c < 8; c++) {
        __m256i p = _mm256_maddubs_epi16(k_codes(t, blk, c), ld256(qy + 32 * c));
        if (has_off) p = _mm256_sub_epi16(p, yo[c]);
        const __m256i sc = t == K_Q4 || t == K_Q5 ? sc_bcast(h->scl, c) : sc_pair(&h->s, c);
        is = _mm256_add_epi32(is, _mm256_madd_epi16(p, sc));
    }
    return is;
}

/* row r, column c's float steps for one super-block (k: its krow or khead,
 * a: the activation block, is: the lane sums) */
#define K_ACC(r, c)                                                                                              \
    do {                                                                                                         \
        const float d_ = a->d * k.dx;                                                                            \
        if (t == K_Q2) {                                                                                         \
            const float nd = -(a->d * k.dmx);                                                                    \
            const __m256i pm = _mm256_madd_epi16(ld256(a->bsums), k.MX);                                         \
            acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(nd), _mm256_cvtepi32_ps(pm), acc[r][c]);                  \
        } else if (t == K_Q4) {                                                                                  \
            const float nd = -(a->d * k.dmx);                                                                    \
            const __m256i pm8 = _mm256_madd_epi16(ld256(a->bsums), k.MX);                                        \
            const __m128i pm = _mm_hadd_epi32(_mm256_castsi256_si128(pm8), _mm256_extracti128_si256(pm8, 1));    \
            accm4[r][c] = _mm_fmadd_ps(_mm_set1_ps(nd), _mm_cvtepi32_ps(pm), accm4[r][c]);                       \
        } else if (t == K_Q5) {                                                                                  \
            const float nd = -(a->d * k.dmx);                                                                    \
            const int32_t summ = hsum_i32(_mm256_madd_epi16(ld256(a->bsums), k.MX));                             \
            accm[r][c] = fma1(nd, (float)summ, accm[r][c]);                                                      \
        }                                                                                                        \
        acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(d_), _mm256_cvtepi32_ps(is), acc[r][c]);                      \
    } while (0)

INL void tile_k(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                const int NR, const int NC, const int il, const int pfo, const int t) {
    const int64_t nb = n / KV_QK_K;
    const size_t BW = t == K_Q2   ? sizeof(kv_block_q2_K)
                      : t == K_Q3 ? sizeof(kv_block_q3_K)
                      : t == K_Q4 ? sizeof(kv_block_q4_K)
                      : t == K_Q5 ? sizeof(kv_block_q5_K)
                                  : sizeof(kv_block_q6_K);
    const int off = t == K_Q3 ? 4 : t == K_Q6 ? 32 : 0;
    WROWS(W, NR, BW);
    COLS(kv_block_q8_K, X, NC);
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
        PF_STEP(W, NR, NC, nb, i, BW);
        __m256i yo[MC][8];
        if (off)
            UNR
            for (int c = 0; c < NC; c++) {
                UNR
                for (int k = 0; k < 8; k++)
                    yo[c][k] = _mm256_maddubs_epi16(_mm256_set1_epi8((char)off), ld256(X[c][i].qs + 32 * k));
            }
        if (NC == 1) {
            const kv_block_q8_K *a = &X[0][i];
            _Pragma("GCC unroll 1")
            for (int r = 0; r < NR; r++) {
                const uint8_t *blk = W[r] + i * bst;
                khead k;
                k_head(t, blk, &k);
                const __m256i is = k_isum1(t, blk, &k, a->qs, yo[0], off != 0);
                K_ACC(r, 0);
            }
            continue;
        }
        UNR
        for (int r = 0; r < NR; r++) {
            const uint8_t *blk = W[r] + i * bst;
            krow k;
            if (t == K_Q2) prep_q2_K((const kv_block_q2_K *)blk, &k);
            if (t == K_Q3) prep_q3_K((const kv_block_q3_K *)blk, &k);
            if (t == K_Q4) prep_q4_K((const kv_block_q4_K *)blk, &k);
            if (t == K_Q5) prep_q5_K((const kv_block_q5_K *)blk, &k);
            if (t == K_Q6) prep_q6_K((const kv_block_q6_K *)blk, &k);
            UNR
            for (int c = 0; c < NC; c++) {
                const kv_block_q8_K *a = &X[c][i];
                const __m256i is = k_isum(&k, a->qs, yo[c], off != 0);
                K_ACC(r, c);
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
                      int64_t ldy, const int NR, const int NC, const int il, const int pfo) {                  \
        tile_k(n, w, ws, nr, x, xs, y, ldy, NR, NC, il, pfo, ID);                                               \
    }                                                                                                          \
    DEF_TILES_IL_NC4(T, tile_##T, KV_AVX2_NR_K)
K_TILE(q2_K, K_Q2)
K_TILE(q3_K, K_Q3)
K_TILE(q4_K, K_Q4)
K_TILE(q5_K, K_Q5)
K_TILE(q6_K, K_Q6)

/* ---- Q8_K x Q8_K (int8 both sides, the sign trick as for Q8_0) */

INL void tile_q8_K(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                   const int NR, const int NC, const int il, const int pfo) {
    (void)il, (void)pfo;
    const int64_t nb = n / KV_QK_K;
    ROWS(kv_block_q8_K, W, NR);
    COLS(kv_block_q8_K, X, NC);
    __m256 acc[MR][MC];
    UNR
    for (int r = 0; r < NR; r++) {
        UNR
        for (int c = 0; c < NC; c++) acc[r][c] = _mm256_setzero_ps();
    }
    __m256i bad = _mm256_setzero_si256();
    const __m256i m128 = _mm256_set1_epi8(-128);
    for (int64_t i = 0; i < nb; i++) {
        UNR
        for (int c = 0; c < NC; c++) {
            UNR
            for (int k = 0; k < 8; k++)
                bad = _mm256_or_si256(bad, _mm256_cmpeq_epi8(ld256(X[c][i].qs + 32 * k), m128));
        }
        UNR
        for (int r = 0; r < NR; r++) {
            UNR
            for (int c = 0; c < NC; c++) {
                __m256i is = _mm256_setzero_si256();
                UNR
                for (int k = 0; k < 8; k++) {
                    const __m256i qx = ld256(W[r][i].qs + 32 * k), qy = ld256(X[c][i].qs + 32 * k);
                    is = _mm256_add_epi32(is,
                                          sum4(_mm256_maddubs_epi16(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx))));
                }
                const float d = W[r][i].d * X[c][i].d;
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(is), acc[r][c]);
            }
        }
    }
    if (!_mm256_testz_si256(bad, bad)) {
        for (int r = 0; r < NR && r < nr; r++) {
            UNR
            for (int c = 0; c < NC; c++) kv_traits_q8_K.vec_dot(n, &y[c * ldy + r], W[r], X[c]);
        }
        return;
    }
    for (int r = 0; r < NR && r < nr; r++) {
        UNR
        for (int c = 0; c < NC; c++) y[c * ldy + r] = hsum8(acc[r][c]);
    }
}
DEF_GEMM_NC4(q8_K, tile_q8_K, KV_AVX2_NR_K)

/* ------------------------------------------------------------ TQ1_0, TQ2_0 */

/* TQ1_0: trit k of byte b is ((uint8_t)(b * 3^k) * 3) >> 8. The byte
 * products come from byte adds (3x = x + 2x; 9x = (8x & 0xf8..) + x) or,
 * where a vector mixes multipliers, two 16-bit multiplies (even bytes from
 * x * m, odd bytes from (x & 0xff00) * m). The trit of a product p without
 * multiplies: with q = max(p - 1, 0), avg(q, avg(q, 0)) has it in its top
 * two bits (every byte value is checked in tests/test_simd.c). */
INL __m256i trit8(__m256i p) {
    const __m256i q = _mm256_subs_epu8(p, _mm256_set1_epi8(1));
    const __m256i t = _mm256_avg_epu8(q, _mm256_avg_epu8(q, _mm256_setzero_si256()));
    return _mm256_and_si256(_mm256_srli_epi16(t, 6), _mm256_set1_epi8(3));
}

INL __m256i mul3(__m256i x) { return _mm256_add_epi8(x, _mm256_add_epi8(x, x)); }
INL __m256i mul9(__m256i x) {
    return _mm256_add_epi8(_mm256_and_si256(_mm256_slli_epi16(x, 3), _mm256_set1_epi8((char)0xf8)), x);
}

/* (uint8_t)(x * m) for each byte, m the 16-bit lane's multiplier */
INL __m256i mul8(__m256i x, __m256i m) {
    const __m256i mask = _mm256_set1_epi16((short)0xff00);
    const __m256i lo = _mm256_mullo_epi16(x, m);
    const __m256i hi = _mm256_mullo_epi16(_mm256_and_si256(x, mask), m);
    return _mm256_or_si256(_mm256_andnot_si256(mask, lo), hi);
}

#define W2(m) ((int)(0x10001u * (m))) /* a 32-bit lane of two 16-bit multipliers m */

INL void prep_tq1_0(const kv_block_tq1_0 *b, __m256i U[8]) {
    __m256i p = ld256(b->qs); /* elements 32k + m: trit k of qs[m] */
    U[0] = trit8(p);
    UNR
    for (int k = 1; k < 5; k++) {
        p = mul3(p);
        U[k] = trit8(p);
    }
    const __m128i c = ld128(b->qs + 32); /* elements 160 + 16k + m: trit k of qs[32 + m] */
    const __m256i cc = _mm256_set_m128i(c, c);
    const __m256i c01 = _mm256_blend_epi32(cc, mul3(cc), 0xf0); /* [c | 3c] */
    U[5] = trit8(c01);
    U[6] = trit8(mul9(c01)); /* [9c | 27c] */
    uint32_t qh;
    memcpy(&qh, b->qh, 4);
    /* elements 224..239: trit 4 of qs[32..47]; 240 + 4k + m: trit k of qh[m] */
    const __m256i x = _mm256_set_m128i(_mm_set1_epi32((int)qh), c);
    U[7] = trit8(mul8(x, _mm256_setr_epi32(W2(81), W2(81), W2(81), W2(81), W2(1), W2(3), W2(9), W2(27))));
}

INL void prep_tq2_0(const kv_block_tq2_0 *b, __m256i U[8]) {
    const __m256i m3 = _mm256_set1_epi8(3);
    UNR
    for (int h = 0; h < 2; h++) {
        const __m256i q = ld256(b->qs + 32 * h);
        for (int l = 0; l < 4; l++) U[4 * h + l] = _mm256_and_si256(_mm256_srli_epi16(q, 2 * l), m3);
    }
}

/* One column (decode): the int16 pair sums of a block against qy, each
 * chunk's trits made where they are multiplied (as prep_*, in order) */
INL __m256i tq_s16_1(const int tq1, const uint8_t *blk, const int8_t *qy) {
    if (!tq1) {
        const kv_block_tq2_0 *b = (const kv_block_tq2_0 *)blk;
        const __m256i m3 = _mm256_set1_epi8(3);
        __m256i s16 = _mm256_setzero_si256();
        UNR
        for (int h = 0; h < 2; h++) {
            const __m256i q = ld256(b->qs + 32 * h);
            UNR
            for (int l = 0; l < 4; l++)
                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 2 * l), m3),
                                                                 ld256(qy + 32 * (4 * h + l))));
        }
        return s16;
    }
    const kv_block_tq1_0 *b = (const kv_block_tq1_0 *)blk;
    __m256i p = ld256(b->qs);
    __m256i s16 = _mm256_maddubs_epi16(trit8(p), ld256(qy));
    UNR
    for (int k = 1; k < 5; k++) {
        p = mul3(p);
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(trit8(p), ld256(qy + 32 * k)));
    }
    const __m128i c = ld128(b->qs + 32);
    const __m256i cc = _mm256_set_m128i(c, c);
    const __m256i c01 = _mm256_blend_epi32(cc, mul3(cc), 0xf0);
    s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(trit8(c01), ld256(qy + 160)));
    s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(trit8(mul9(c01)), ld256(qy + 192)));
    uint32_t qh;
    memcpy(&qh, b->qh, 4);
    const __m256i x = _mm256_set_m128i(_mm_set1_epi32((int)qh), c);
    const __m256i u7 = trit8(mul8(x, _mm256_setr_epi32(W2(81), W2(81), W2(81), W2(81), W2(1), W2(3), W2(9), W2(27))));
    return _mm256_add_epi16(s16, _mm256_maddubs_epi16(u7, ld256(qy + 224)));
}

/* isum[l] = sum t * q over the lane - (bsums[2l] + bsums[2l+1]); the int16
 * sum of the 8 chunks' pairs stays below 8 * 3 * 128 * 2 in magnitude */
INL void tile_tq(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                 const int NR, const int NC, const int il, const int pfo, const int tq1) {
    const int64_t nb = n / KV_QK_K;
    const size_t BW = tq1 ? sizeof(kv_block_tq1_0) : sizeof(kv_block_tq2_0);
    WROWS(W, NR, BW);
    COLS(kv_block_q8_K, X, NC);
    __m256 acc[MR][MC];
    UNR
    for (int r = 0; r < NR; r++) {
        UNR
        for (int c = 0; c < NC; c++) acc[r][c] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        PF_STEP(W, NR, NC, nb, i, BW);
        __m256i bs[MC];
        UNR
        for (int c = 0; c < NC; c++) bs[c] = sum4(ld256(X[c][i].bsums)); /* bsums[2l] + bsums[2l+1] */
        if (NC == 1) {
            const kv_block_q8_K *a = &X[0][i];
            _Pragma("GCC unroll 1")
            for (int r = 0; r < NR; r++) {
                const uint8_t *blk = W[r] + i * bst;
                const float dx = tq1 ? h2f(&((const kv_block_tq1_0 *)blk)->d) : h2f(&((const kv_block_tq2_0 *)blk)->d);
                const __m256i is = _mm256_sub_epi32(sum4(tq_s16_1(tq1, blk, a->qs)), bs[0]);
                acc[r][0] = _mm256_fmadd_ps(_mm256_set1_ps(a->d * dx), _mm256_cvtepi32_ps(is), acc[r][0]);
            }
            continue;
        }
        UNR
        for (int r = 0; r < NR; r++) {
            const uint8_t *blk = W[r] + i * bst;
            __m256i U[8];
            float dx;
            if (tq1) {
                prep_tq1_0((const kv_block_tq1_0 *)blk, U);
                dx = h2f(&((const kv_block_tq1_0 *)blk)->d);
            } else {
                prep_tq2_0((const kv_block_tq2_0 *)blk, U);
                dx = h2f(&((const kv_block_tq2_0 *)blk)->d);
            }
            UNR
            for (int c = 0; c < NC; c++) {
                const kv_block_q8_K *a = &X[c][i];
                __m256i s16 = _mm256_maddubs_epi16(U[0], ld256(a->qs));
                for (int k = 1; k < 8; k++) s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(U[k], ld256(a->qs + 32 * k)));
                const __m256i is = _mm256_sub_epi32(sum4(s16), bs[c]);
                const float d = a->d * dx;
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(is), acc[r][c]);
            }
        }
    }
    for (int r = 0; r < NR && r < nr; r++) {
        UNR
        for (int c = 0; c < NC; c++) y[c * ldy + r] = hsum8(acc[r][c]);
    }
}

INL void tile_tq1_0(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y,
                    int64_t ldy, const int NR, const int NC, const int il, const int pfo) {
    tile_tq(n, w, ws, nr, x, xs, y, ldy, NR, NC, il, pfo, 1);
}
INL void tile_tq2_0(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y,
                    int64_t ldy, const int NR, const int NC, const int il, const int pfo) {
    tile_tq(n, w, ws, nr, x, xs, y, ldy, NR, NC, il, pfo, 0);
}
DEF_TILES_IL_NC4(tq1_0, tile_tq1_0, KV_AVX2_NR_K)
DEF_TILES_IL_NC4(tq2_0, tile_tq2_0, KV_AVX2_NR_K)

/* ------------------------------------------------------------ K-quants and TQ with several columns
 *
 * The register tiles above (4 rows x 4 columns) hold 16 accumulators and an
 * unpacked super-block of 17 vectors, far beyond the 16 ymm registers, so
 * their inner loops run out of the stack. With two or more columns the work
 * is laid out as mb_gemm's instead: a weight row is walked super-block by
 * super-block, each unpacked once (prep_*: the codes and the sub-block
 * scales of its 8 chunks, kept in L1) for up to KB_COLS columns, and chunk
 * by chunk every column's int32 lane sums (TQ: int16 pair sums) stay in
 * registers: per (row, column, chunk) one vpmaddubsw (from the activation
 * in place), for Q3_K/Q6_K the offset term (maddubs(off, q), made once per
 * call in a scratch) subtracted in int16, and one vpmaddwd by the scales
 * (TQ: an int16 add). The float steps per super-block are K_ACC's / the
 * TQ tile's, with the accumulators beside (they are touched once per 256
 * elements). A tile of the interleaved layout (or 4 rows of the file
 * layout) is done column group after group, its rows inside, so a group's
 * activations and the tile stay in L1; the first group's passes ask for a
 * share of the next tile each. The integers are the reference's lane sums
 * and the float steps its own, in its order, so every output has vec_dot's
 * bits whatever nc. */
enum { K_TQ1 = K_Q6 + 1, K_TQ2 };
#define KB_COLS 8
#define KB_BYTES(t)                                                                                           \
    ((t) == K_Q2 ? sizeof(kv_block_q2_K) : (t) == K_Q3 ? sizeof(kv_block_q3_K) : (t) == K_Q4 ? sizeof(kv_block_q4_K) \
     : (t) == K_Q5 ? sizeof(kv_block_q5_K) : (t) == K_Q6 ? sizeof(kv_block_q6_K) : (t) == K_TQ1 ? sizeof(kv_block_tq1_0) \
     : sizeof(kv_block_tq2_0))

INL void kb_row(const uint8_t *wr, uint64_t bst, int64_t nb, const uint8_t *x, uint64_t xs, const __m256i *yo,
                int nc, int c0, float *y, int64_t ldy, const uint8_t *pfp, size_t pfl, const int t, const int NC) {
    const int off = t == K_Q3 ? 4 : t == K_Q6 ? 32 : 0;
    const int tq = t == K_TQ1 || t == K_TQ2;
    __m256 acc[KB_COLS];
    __m128 accm4[KB_COLS];
    float accm[KB_COLS];
    UNR
    for (int c = 0; c < NC; c++) {
        acc[c] = _mm256_setzero_ps();
        accm4[c] = _mm_setzero_ps();
        accm[c] = 0.0f;
    }
    const uint8_t *xc = x + (uint64_t)c0 * xs;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *blk = wr + (uint64_t)i * bst;
        if (pfp) {
            const uintptr_t a = (uintptr_t)pfp + (size_t)i * pfl, e = a + pfl;
            for (uintptr_t q = a & ~(uintptr_t)63; q < e; q += 64) __builtin_prefetch((const void *)q, 0, KV_PF_IL_LOC);
        }
        khead k;
        float dx = 0.0f;
        __m256i U1[8]; /* TQ1_0: its chunks' trits, made in one chain */
        const __m256i *u1 = U1;
        if (!tq) k_head(t, blk, &k);
        if (t == K_TQ1) {
            prep_tq1_0((const kv_block_tq1_0 *)blk, U1);
            dx = h2f(&((const kv_block_tq1_0 *)blk)->d);
        }
        if (t == K_TQ2) dx = h2f(&((const kv_block_tq2_0 *)blk)->d);
        const kv_block_q8_K *X[KB_COLS];
        UNR
        for (int c = 0; c < NC; c++) X[c] = (const kv_block_q8_K *)(xc + (uint64_t)c * xs) + i;
        const __m256i *yoi = off ? yo + ((size_t)i * (size_t)nc + (size_t)c0) * 8 : NULL;
        __m256i is[KB_COLS];
        UNR
        for (int c = 0; c < NC; c++) is[c] = _mm256_setzero_si256();
        UNR
        for (int ch = 0; ch < 8; ch++) {
            /* a chunk's codes and scales are made at its turn (from the block in L1 and the
               scale sources): GCC would otherwise hoist all 8 chunks' and spill the sums */
            __asm__("" : "+r"(blk), "+r"(u1));
            if (t == K_Q4 || t == K_Q5) __asm__("" : "+x"(k.scl));
            else if (!tq) __asm__("" : "+x"(k.s.lo), "+x"(k.s.hi));
            __m256i u, sc = _mm256_setzero_si256();
            if (t == K_TQ1) u = u1[ch];
            else if (t == K_TQ2)
                u = _mm256_and_si256(_mm256_srli_epi16(ld256(((const kv_block_tq2_0 *)blk)->qs + 32 * (ch >> 2)), 2 * (ch & 3)),
                                     _mm256_set1_epi8(3));
            else u = k_codes(t, blk, ch);
            if (!tq) sc = t == K_Q4 || t == K_Q5 ? sc_bcast(k.scl, ch) : sc_pair(&k.s, ch);
            UNR
            for (int c = 0; c < NC; c++) {
                __m256i p = _mm256_maddubs_epi16(u, ld256(X[c]->qs + 32 * ch));
                if (off) p = _mm256_sub_epi16(p, _mm256_load_si256(yoi + 8 * c + ch));
                if (tq) is[c] = _mm256_add_epi16(is[c], p);
                else is[c] = _mm256_add_epi32(is[c], _mm256_madd_epi16(p, sc));
            }
            /* the sums in registers, chunk after chunk: without this GCC reassociates
               the integer adds into a tree of all 8 x NC products, spilled */
            UNR
            for (int c = 0; c < NC; c++) __asm__("" : "+x"(is[c]));
        }
        UNR
        for (int c = 0; c < NC; c++) {
            const kv_block_q8_K *a = X[c];
            if (tq) {
                const __m256i v = _mm256_sub_epi32(sum4(is[c]), sum4(ld256(a->bsums)));
                acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(a->d * dx), _mm256_cvtepi32_ps(v), acc[c]);
                continue;
            }
            const float d_ = a->d * k.dx;
            if (t == K_Q2) {
                const float nd = -(a->d * k.dmx);
                const __m256i pm = _mm256_madd_epi16(ld256(a->bsums), k.MX);
                acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(nd), _mm256_cvtepi32_ps(pm), acc[c]);
            } else if (t == K_Q4) {
                const float nd = -(a->d * k.dmx);
                const __m256i pm8 = _mm256_madd_epi16(ld256(a->bsums), k.MX);
                const __m128i pm = _mm_hadd_epi32(_mm256_castsi256_si128(pm8), _mm256_extracti128_si256(pm8, 1));
                accm4[c] = _mm_fmadd_ps(_mm_set1_ps(nd), _mm_cvtepi32_ps(pm), accm4[c]);
            } else if (t == K_Q5) {
                const float nd = -(a->d * k.dmx);
                const int32_t summ = hsum_i32(_mm256_madd_epi16(ld256(a->bsums), k.MX));
                accm[c] = fma1(nd, (float)summ, accm[c]);
            }
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d_), _mm256_cvtepi32_ps(is[c]), acc[c]);
        }
    }
    UNR
    for (int c = 0; c < NC; c++) {
        float v = hsum8(acc[c]);
        if (t == K_Q4) v += hsum4(accm4[c]);
        if (t == K_Q5) v += accm[c];
        y[(int64_t)(c0 + c) * ldy] = v;
    }
}

/* any nr, nc >= 1; il: w is in the interleaved layout of KV_AVX2_IL_ROWS
 * rows. Returns 0 (nothing done) when the scratch cannot be had. */
INL int kb_gemm(int64_t n, const void *vw, uint64_t ws, int nr, const void *vx, uint64_t xs, int nc, float *y,
                int64_t ldy, const int t, const int il) {
    enum { R = KV_AVX2_IL_ROWS };
    const int64_t nb = n / KV_QK_K;
    const size_t BW = KB_BYTES(t);
    const int off = t == K_Q3 ? 4 : t == K_Q6 ? 32 : 0;
    const uint8_t *w = vw, *x = vx;
    __m256i *yo = NULL;
    if (off) {
        yo = aligned_alloc(32, (size_t)nb * (size_t)nc * 8 * sizeof(__m256i));
        if (!yo) return 0;
        const __m256i ov = _mm256_set1_epi8((char)off);
        for (int64_t i = 0; i < nb; i++)
            for (int c = 0; c < nc; c++) {
                const kv_block_q8_K *a = (const kv_block_q8_K *)(x + (uint64_t)c * xs) + i;
                for (int ch = 0; ch < 8; ch++)
                    _mm256_store_si256(yo + ((size_t)i * (size_t)nc + (size_t)c) * 8 + ch,
                                       _mm256_maddubs_epi16(ov, ld256(a->qs + 32 * ch)));
            }
    }
    const int pf = kv_quant_prefetch_on() && (il || ws == (uint64_t)nb * BW);
    if (pf) kv_pf_il_head(w, (uint64_t)nr * ws);
    for (int r0 = 0; r0 < nr; r0 += R) {
        const int rr = nr - r0 < R ? nr - r0 : R;
        /* the next tile (rn rows), a share of it per pass of the first column group */
        const int rn = nr - r0 - rr < R ? nr - r0 - rr : R;
        const size_t pfl = ((size_t)rn * (size_t)nb * BW + (size_t)rr * (size_t)nb - 1) / ((size_t)rr * (size_t)nb);
        const uint8_t *next = w + (uint64_t)(r0 + rr) * ws;
        const uint64_t bst = il ? (uint64_t)rr * BW : BW;
        for (int c0 = 0; c0 < nc; c0 += KB_COLS)
            for (int r = 0; r < rr; r++) {
                const uint8_t *wr = il ? w + (uint64_t)r0 * ws + (uint64_t)r * BW : w + (uint64_t)(r0 + r) * ws;
                const uint8_t *pfp = pf && rn > 0 && c0 == 0 ? next + (size_t)r * (size_t)nb * pfl : NULL;
                float *yr = y + r0 + r;
#define KB_CASE(NC) \
    case NC: kb_row(wr, bst, nb, x, xs, yo, nc, c0, yr, ldy, pfp, pfl, t, NC); break;
                switch (nc - c0 < KB_COLS ? nc - c0 : KB_COLS) {
                    KB_CASE(1)
                    KB_CASE(2)
                    KB_CASE(3)
                    KB_CASE(4)
                    KB_CASE(5)
                    KB_CASE(6)
                    KB_CASE(7)
                    KB_CASE(8)
                default: break;
                }
#undef KB_CASE
            }
    }
    free(yo);
    return 1;
}

#ifndef KB_MIN_COLS
#define KB_MIN_COLS 2
#endif
#define KB_GEMMS(T, ID)                                                                                    \
    TGT KV_AVX2_GEMM_PROTO(T) {                                                                            \
        if (nc >= KB_MIN_COLS && nr > 0 && n > 0 && kb_gemm(n, w, ws, nr, x, xs, nc, y, ldy, ID, 0)) return; \
        tiles_gemm_##T(n, w, ws, nr, x, xs, nc, y, ldy);                                                   \
    }                                                                                                      \
    TGT KV_AVX2_GEMM_IL_PROTO(T) {                                                                         \
        if (nc >= KB_MIN_COLS && nr > 0 && n > 0 && kb_gemm(n, w, ws, nr, x, xs, nc, y, ldy, ID, 1)) return; \
        tiles_gemm_il_##T(n, w, ws, nr, x, xs, nc, y, ldy);                                                \
    }
KB_GEMMS(q2_K, K_Q2)
KB_GEMMS(q3_K, K_Q3)
KB_GEMMS(q4_K, K_Q4)
KB_GEMMS(q5_K, K_Q5)
KB_GEMMS(q6_K, K_Q6)
KB_GEMMS(tq1_0, K_TQ1)
KB_GEMMS(tq2_0, K_TQ2)

/* ------------------------------------------------------------ I2_S x I8_S */

INL void tile_i2_s(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                   const int NR, const int NC, const int il, const int pfo) {
    const int64_t nb = n / KV_QK_I2_S;
    WROWS(W, NR, 32);
    COLS(uint8_t, X, NC);
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256i acc[MR][MC];
    UNR
    for (int r = 0; r < NR; r++) {
        UNR
        for (int c = 0; c < NC; c++) acc[r][c] = _mm256_setzero_si256();
    }
    for (int64_t i = 0; i < nb; i++) {
        PF_STEP(W, NR, NC, nb, i, 32);
        UNR
        for (int r = 0; r < NR; r++) {
            const __m256i b = ld256(W[r] + i * bst);
            const __m256i u0 = _mm256_and_si256(_mm256_srli_epi16(b, 6), m3);
            const __m256i u1 = _mm256_and_si256(_mm256_srli_epi16(b, 4), m3);
            const __m256i u2 = _mm256_and_si256(_mm256_srli_epi16(b, 2), m3);
            const __m256i u3 = _mm256_and_si256(b, m3);
            UNR
            for (int c = 0; c < NC; c++) {
                const int8_t *q = (const int8_t *)(X[c] + sizeof(kv_i8_s_head)) + KV_QK_I2_S * i;
                __m256i s = _mm256_maddubs_epi16(u0, ld256(q));
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(u1, ld256(q + 32)));
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(u2, ld256(q + 64)));
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(u3, ld256(q + 96)));
                acc[r][c] = _mm256_add_epi32(acc[r][c], sum4(s));
            }
        }
    }
    UNR
    for (int c = 0; c < NC; c++) {
        kv_i8_s_head head;
        memcpy(&head, X[c], sizeof head);
        for (int r = 0; r < NR && r < nr; r++) {
            const int32_t raw = hsum_i32(acc[r][c]);
            y[c * ldy + r] = ((float)raw - (float)head.sum) / head.scale;
        }
    }
}
DEF_GEMM_IL_NC4(i2_s, tile_i2_s, KV_AVX2_NR_I2S)

/* ---- I8_S x I8_S: *s = (float)sum(qx * qy) / x.scale / y.scale */

INL void tile_i8_s(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                   const int NR, const int NC, const int il, const int pfo) {
    (void)il, (void)pfo;
    ROWS(uint8_t, W, NR);
    COLS(uint8_t, X, NC);
    const int64_t n32 = n & ~(int64_t)31;
    const size_t H = sizeof(kv_i8_s_head);
    __m256i acc[MR][MC];
    UNR
    for (int r = 0; r < NR; r++) {
        UNR
        for (int c = 0; c < NC; c++) acc[r][c] = _mm256_setzero_si256();
    }
    __m256i bad = _mm256_setzero_si256();
    const __m256i m128 = _mm256_set1_epi8(-128);
    for (int64_t i = 0; i < n32; i += 32) {
        __m256i qy[MC];
        UNR
        for (int c = 0; c < NC; c++) {
            qy[c] = ld256(X[c] + H + i);
            bad = _mm256_or_si256(bad, _mm256_cmpeq_epi8(qy[c], m128));
        }
        UNR
        for (int r = 0; r < NR; r++) {
            const __m256i qx = ld256(W[r] + H + i), ux = _mm256_sign_epi8(qx, qx);
            UNR
            for (int c = 0; c < NC; c++)
                acc[r][c] = _mm256_add_epi32(acc[r][c], sum4(_mm256_maddubs_epi16(ux, _mm256_sign_epi8(qy[c], qx))));
        }
    }
    if (!_mm256_testz_si256(bad, bad)) {
        for (int r = 0; r < NR && r < nr; r++) {
            UNR
            for (int c = 0; c < NC; c++) kv_traits_i8_s.vec_dot(n, &y[c * ldy + r], W[r], X[c]);
        }
        return;
    }
    for (int r = 0; r < NR && r < nr; r++) {
        UNR
        for (int c = 0; c < NC; c++) {
            kv_i8_s_head hx, hy;
            memcpy(&hx, W[r], H);
            memcpy(&hy, X[c], H);
            int32_t raw = hsum_i32(acc[r][c]);
            const int8_t *qx = (const int8_t *)(W[r] + H), *qy = (const int8_t *)(X[c] + H);
            for (int64_t i = n32; i < n; i++) raw += (int32_t)qx[i] * qy[i];
            y[c * ldy + r] = (float)raw / hx.scale / hy.scale;
        }
    }
}
DEF_GEMM_NC2(i8_s, tile_i8_s, KV_AVX2_NR_I8S)

#endif /* KV_X86_SIMD */
