/* AVX-512 (F/BW/DQ/VL + VNNI) kernels, bit-identical to the scalar references.
 *
 *   F32/F16/BF16: the 16 canonical lanes are exactly one zmm; a tail
 *     updates only its lanes (mask3 fma).
 *   Gemm with 4 or more columns (prefill): operands packed once per call
 *     (activations) and once per tile of rows (weights), then register
 *     tiles of 8 rows x 3 columns (float types: 16-lane fmas) or 8 rows x 4
 *     columns (Q8_0, Q4_0, Q5_0: vpdpbusd on interleaved row pairs); see
 *     "packed" below. Fewer columns (decode) take the kernels described next.
 *   Q8_0, Q4_0, Q5_0 gemm: two weight rows share a zmm (row a in lanes 0..7,
 *     row b in 8..15) against the activation block broadcast to both halves.
 *     vpdpbusd takes unsigned x signed bytes, so the weight codes go in as
 *     x + 128 (Q8_0), the raw nibble (Q4_0) or the raw 5-bit code (Q5_0),
 *     and the activation sums times 128 (or 8, or 16), formed once per
 *     column by another vpdpbusd, are subtracted: exact int32, for any
 *     input bytes.
 *   K-quants: a zmm holds two 32-element chunks; maddubs forms the int16
 *     pairs (offsets subtracted in int16 as in the AVX2 file) and vpdpwssd
 *     multiplies them by the sub-block scales and adds them up, exactly;
 *     the two chunk halves are added at the end of the super-block.
 *   TQ2_0, I2_S: the unsigned codes go straight into vpdpbusd; TQ1_0 too,
 *     once its base-3 digits are extracted (see there).
 * Float steps are the reference's (see simd_avx2.c). */
#include "simd.h"

#if KV_X86_SIMD

#include <immintrin.h>
#include <stddef.h>
#include <stdlib.h>
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

INL __m512 f_reduce16(const __m512 *v); /* below, with the packed gemm */

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
            if (NC < KV_PF_COLS && pf == 1) kv_pf_stream(W[0], NR, rs, (uint64_t)(i0 + i) * es, 16 * es);
            if (NC < KV_PF_COLS && pf == 2) kv_pf_il(W[0] + (uint64_t)(i0 + i) * (uint64_t)sm * es, (size_t)sm * 16 * es);
            UNR
            for (int r = 0; r < NR; r++) {
                const __m512 wv = ld16(W[r], (i0 + i) * sm, e);
                UNR
                for (int c = 0; c < NC; c++) a[r][c] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xp[c] + i), a[r][c]);
            }
        }
        if (rem) {
            const __mmask16 m = (__mmask16)((1u << rem) - 1);
            UNR
            for (int r = 0; r < NR; r++) {
                const __m512 wv = ld16m(W[r], (i0 + full) * sm, rem, e);
                UNR
                for (int c = 0; c < NC; c++)
                    a[r][c] = _mm512_mask3_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, xp[c] + full), a[r][c], m);
            }
        }
    }
    if (NC == 1 && NR == 8) { /* the eight trees at once (attention's short rows: the tree is most of the work) */
        __m512 v[16];
        UNR
        for (int r = 0; r < 8; r++) v[r] = v[r + 8] = a[r][0];
        _mm512_mask_storeu_ps(y, (__mmask16)((1u << nr) - 1), f_reduce16(v));
        return;
    }
    for (int r = 0; r < NR && r < nr; r++) {
        UNR
        for (int c = 0; c < NC; c++) y[c * ldy + r] = hsum16(a[r][c]);
    }
}

/* rows wr (nr of them, see ftile for rs, sm, pf) x all nc columns in tiles of four (or fewer) columns */
INL void fcols4(int64_t n, const uint8_t *wr, uint64_t rs, int64_t sm, int rr, const uint8_t *x, uint64_t xs, int nc,
                float *y, int64_t ldy, const int pf, const int e) {
    int c0 = 0;
    for (; c0 + 4 <= nc; c0 += 4) ftile(n, wr, rs, sm, rr, x + (uint64_t)c0 * xs, xs, y + c0 * ldy, ldy, 0, e, 4, 4);
    if (nc - c0 == 3) ftile(n, wr, rs, sm, rr, x + (uint64_t)c0 * xs, xs, y + c0 * ldy, ldy, pf, e, 4, 3);
    if (nc - c0 == 2) ftile(n, wr, rs, sm, rr, x + (uint64_t)c0 * xs, xs, y + c0 * ldy, ldy, pf, e, 4, 2);
    if (nc - c0 == 1) ftile(n, wr, rs, sm, rr, x + (uint64_t)c0 * xs, xs, y + c0 * ldy, ldy, pf, e, 4, 1);
}

/* nc == 1: eight rows at a time; otherwise tiles of four rows by four (or
 * fewer) columns, rows outer */
INL void fgemm(int64_t n, const void *vw, uint64_t ws, int nr, const void *vx, uint64_t xs, int nc, float *y,
               int64_t ldy, const int e) {
    const uint8_t *w = vw, *x = vx;
    const int pf = ws == (uint64_t)n * (e == E_F32 ? 4 : 2) && kv_quant_prefetch_on();
    if (pf && nc < KV_PF_COLS) kv_pf_head(w, nr, ws, nc == 1 ? 8 : 4);
    if (nc == 1) {
        for (int r0 = 0; r0 < nr; r0 += 8)
            ftile(n, w + (uint64_t)r0 * ws, ws, 1, nr - r0 < 8 ? nr - r0 : 8, x, xs, y + r0, ldy, pf, e, 8, 1);
        return;
    }
    for (int r0 = 0; r0 < nr; r0 += 4)
        fcols4(n, w + (uint64_t)r0 * ws, ws, 1, nr - r0 < 4 ? nr - r0 : 4, x, xs, nc, y + r0, ldy, pf, e);
}

/* the same over the interleaved layout of FIL rows: a tile's eight rows at
 * once (one column), or its halves of four rows (two or three) */
#define FIL KV_AVX512_IL_ROWS_FLOAT
_Static_assert(FIL == 8, "fgemm_il's tiles are the 8-row ones of fgemm, or two halves of 4");
INL void fgemm_il(int64_t n, const void *vw, uint64_t ws, int nr, const void *vx, uint64_t xs, int nc, float *y,
                  int64_t ldy, const int e) {
    const uint8_t *w = vw, *x = vx;
    const size_t U = 16 * (e == E_F32 ? 4 : 2);
    const int pf = kv_quant_prefetch_on() ? 2 : 0;
    if (pf && nc < KV_PF_COLS) kv_pf_il_head(w, (uint64_t)nr * ws);
    for (int r0 = 0; r0 < nr; r0 += FIL) {
        const int rr = nr - r0 < FIL ? nr - r0 : FIL;
        const uint8_t *t = w + (uint64_t)r0 * ws;
        if (nc == 1) {
            /* a whole tile with constant strides: the rows' addresses are fixed offsets of one pointer */
            if (rr == FIL) ftile(n, t, U, FIL, FIL, x, xs, y + r0, ldy, pf, e, 8, 1);
            else ftile(n, t, U, rr, rr, x, xs, y + r0, ldy, pf, e, 8, 1);
            continue;
        }
        for (int a = 0; a < rr; a += 4) /* the first half's rows asks for the whole tile's */
            fcols4(n, t + a * U, U, rr, rr - a < 4 ? rr - a : 4, x, xs, nc, y + r0 + a, ldy, a ? 0 : pf, e);
    }
}

/* Prefetch (into L2) rows [r0, r0 + cnt) of w, row_bytes each: the next
 * row tile's weights, fetched while the current one is being computed (a
 * tile's packing would otherwise wait on memory for each of its rows). */
INL void prefetch_rows(const uint8_t *w, uint64_t ws, int64_t r0, int cnt, size_t row_bytes) {
    for (int r = 0; r < cnt; r++) {
        const char *p = (const char *)w + (uint64_t)(r0 + r) * ws;
        for (size_t o = 0; o < row_bytes; o += 64) _mm_prefetch(p + o, _MM_HINT_T1);
    }
}

/* ---- packed float gemm (prefill): both operands converted to f32 once
 *
 * Activations are converted once per call into a chunk-major scratch
 * (16-element chunk k of column c at xa + (k * nc + c) * 16); weights once
 * per tile of FR rows and FK elements (a panel that stays in L1 while every
 * column goes past it). The register tile is FR rows x FC columns of
 * 16-lane accumulators, saved between the FK-element panels. Each lane
 * does the reference's fma in increasing i; a partial last chunk updates
 * only its lanes (mask3); the final 16-lane tree is f_reduce16. */

#define FR KV_AVX512_NR_FPK
#define FC KV_AVX512_NC_FPK
#define FK 512
#define F_MIN_COLS 4 /* fewer columns: fgemm */

/* v[0..15] -> lane m = the reduce16 tree of v[m] (j += j+8, j += j+4,
 * j += j+2, j += j+1; adds commute, so only which values meet matters) */
INL __m512 f_reduce16(const __m512 *v) {
    __m512 s[8], t[4], u[2];
    UNR
    for (int i = 0; i < 8; i++)
        s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xee));
    UNR
    for (int i = 0; i < 4; i++)
        t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], 0xdd));
    UNR
    for (int i = 0; i < 2; i++)
        u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0xee));
    /* lane 4q + j holds v[4j + q] */
    const __m512 r = _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], 0x88), _mm512_shuffle_ps(u[0], u[1], 0xdd));
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), r);
}

/* FR rows x NC columns over chunks [k0, k1) of the panel wa (chunk k0 first);
 * acc kept in ab between panels; last: reduce and store */
INL void fp_tile(const float *wa, const float *xa, int nc, int64_t k0, int64_t k1, int rem, int first, int last,
                 __m512 *ab, float *y, int64_t ldy, int nr, const int NC) {
    __m512 acc[FR][FC];
    UNR
    for (int r = 0; r < FR; r++) {
        UNR
        for (int c = 0; c < NC; c++) acc[r][c] = first ? _mm512_setzero_ps() : ab[r * FC + c];
    }
    const int64_t kf = rem ? k1 - 1 : k1; /* full chunks */
    const float *xk = xa + (size_t)k0 * (size_t)nc * 16;
    for (int64_t k = k0; k < kf; k++, wa += FR * 16, xk += (size_t)nc * 16) {
        __m512 xv[FC];
        UNR
        for (int c = 0; c < NC; c++) xv[c] = _mm512_load_ps(xk + 16 * c);
        UNR
        for (int r = 0; r < FR; r++) {
            __m512 wv = _mm512_load_ps(wa + 16 * r);
            /* one load per weight vector: keeps the compiler from folding
               it into each fma (loads are the tighter port here) */
            __asm__("" : "+v"(wv));
            UNR
            for (int c = 0; c < NC; c++) acc[r][c] = _mm512_fmadd_ps(wv, xv[c], acc[r][c]);
        }
    }
    if (rem) {
        const __mmask16 m = (__mmask16)((1u << rem) - 1);
        UNR
        for (int r = 0; r < FR; r++) {
            const __m512 wv = _mm512_load_ps(wa + 16 * r);
            UNR
            for (int c = 0; c < NC; c++)
                acc[r][c] = _mm512_mask3_fmadd_ps(wv, _mm512_load_ps(xk + 16 * c), acc[r][c], m);
        }
    }
    if (!last) {
        UNR
        for (int r = 0; r < FR; r++) {
            UNR
            for (int c = 0; c < NC; c++) ab[r * FC + c] = acc[r][c];
        }
        return;
    }
    /* columns in pairs: lanes 0..7 rows of column c, 8..15 of column c+1 */
    const __mmask16 m = (__mmask16)((1u << nr) - 1);
    UNR
    for (int c = 0; c < NC; c += 2) {
        __m512 v[16];
        UNR
        for (int r = 0; r < FR; r++) {
            v[r] = acc[r][c];
            v[FR + r] = acc[r][c + 1 < NC ? c + 1 : c];
        }
        const __m512 o = f_reduce16(v);
        _mm256_mask_storeu_ps(y + (int64_t)c * ldy, (__mmask8)m, _mm512_castps512_ps256(o));
        if (c + 1 < NC) _mm256_mask_storeu_ps(y + (int64_t)(c + 1) * ldy, (__mmask8)m, _mm512_extractf32x8_ps(o, 1));
    }
}

_Static_assert(FR == 8 && FC <= 4, "fp_tile's reduction pairs columns of 8 rows");

/* il: the weights are in the interleaved layout of FR (= FIL) rows */
INL int fp_gemm(int64_t n, const void *vw, uint64_t ws, int nr, const void *vx, uint64_t xs, int nc, float *y,
                int64_t ldy, const int e, const int il) {
    const int64_t nk = (n + 15) / 16, np = (nk + FK / 16 - 1) / (FK / 16);
    const int64_t kp = (nk + np - 1) / np; /* chunks in all, per panel (<= FK / 16, balanced) */
    const int rem = (int)(n % 16);
    const int nct = (nc + FC - 1) / FC;
    const size_t s_xa = (size_t)nk * (size_t)nc * 64, s_wa = (size_t)kp * FR * 64,
                 s_ab = nk > kp ? (size_t)nct * FR * FC * 64 : 0;
    uint8_t *buf = aligned_alloc(64, s_xa + s_wa + s_ab);
    if (!buf) return 0;
    float *xa = (float *)buf, *wa = (float *)(buf + s_xa);
    __m512 *ab = (__m512 *)(buf + s_xa + s_wa);
    prefetch_rows(vw, ws, 0, nr < FR ? nr : FR, (size_t)n * (e == E_F32 ? 4 : 2));
    for (int c = 0; c < nc; c++) {
        const uint8_t *xc = (const uint8_t *)vx + (uint64_t)c * xs;
        float *o = xa + (size_t)c * 16;
        int64_t k = 0;
        for (; k < n / 16; k++) _mm512_store_ps(o + (size_t)k * (size_t)nc * 16, ld16(xc, 16 * k, e));
        if (rem) _mm512_store_ps(o + (size_t)k * (size_t)nc * 16, ld16m(xc, 16 * k, rem, e));
    }
    for (int r0 = 0; r0 < nr; r0 += FR) {
        const int rr = nr - r0 < FR ? nr - r0 : FR;
        const uint8_t *W[FR];
        /* row r's chunk k at element 16 * k * sm of W[r] */
        const int64_t sm = il ? rr : 1;
        for (int r = 0; r < FR; r++)
            W[r] = il ? (const uint8_t *)vw + (uint64_t)r0 * ws + (uint64_t)(r < rr ? r : rr - 1) * 16 * (e == E_F32 ? 4 : 2)
                      : (const uint8_t *)vw + (uint64_t)(r0 + (r < rr ? r : rr - 1)) * ws;
        if (r0 + FR < nr)
            prefetch_rows(vw, ws, r0 + FR, nr - r0 - FR < FR ? nr - r0 - FR : FR, (size_t)n * (e == E_F32 ? 4 : 2));
        for (int64_t k0 = 0; k0 < nk; k0 += kp) {
            const int64_t k1 = nk - k0 < kp ? nk : k0 + kp;
            const int last = k1 == nk;
            for (int64_t k = k0; k < k1; k++)
                for (int r = 0; r < FR; r++) {
                    const __m512 v =
                        (rem && k == nk - 1) ? ld16m(W[r], 16 * k * sm, rem, e) : ld16(W[r], 16 * k * sm, e);
                    _mm512_store_ps(wa + ((size_t)(k - k0) * FR + (size_t)r) * 16, v);
                }
            const int rm = last ? rem : 0;
            int c0 = 0, t = 0;
            for (; c0 + FC <= nc; c0 += FC, t++)
                fp_tile(wa, xa + (size_t)c0 * 16, nc, k0, k1, rm, k0 == 0, last, ab + (size_t)t * FR * FC,
                        y + (int64_t)c0 * ldy + r0, ldy, rr, FC);
            if (nc - c0 == 2)
                fp_tile(wa, xa + (size_t)c0 * 16, nc, k0, k1, rm, k0 == 0, last, ab + (size_t)t * FR * FC,
                        y + (int64_t)c0 * ldy + r0, ldy, rr, 2);
            if (nc - c0 == 1)
                fp_tile(wa, xa + (size_t)c0 * 16, nc, k0, k1, rm, k0 == 0, last, ab + (size_t)t * FR * FC,
                        y + (int64_t)c0 * ldy + r0, ldy, rr, 1);
        }
    }
    free(buf);
    return 1;
}

/* ---- batched decode over the interleaved layout (4..8 columns)
 *
 * Too few columns for fp_gemm's packing of weight panels to pay off, and
 * each weight byte is used only nc times, so the weights stream from
 * memory while the columns are computed: the activations are converted to
 * f32 once per call (fp_gemm's chunk-major scratch), then each tile of FIL
 * rows is read straight from the weights, two rows at a time, each unit of
 * 16 elements converted once and multiplied into all nc columns (2 x nc
 * accumulators in registers). Every lane does the reference's fma in
 * increasing i and the tree is hsum16, so the bits are vec_dot's. While a
 * tile is computed its passes ask for the next tile (one line per unit and
 * pass: the passes together cover it), which is the ascending stream of
 * the layout one tile ahead. */
#define FMC_MIN_COLS 4
#define FMC_MAX_COLS 8

/* rows r, r+1 (TWO: both valid, else r only) of the tile at t (rr rows, nu units) x NC columns */
INL void fmc_rows(const uint8_t *t, int rr, int r, int64_t nu, const float *xa, int nc, float *y, int64_t ldy,
                  const uint8_t *pfp, size_t pfl, const int e, const int TWO, const int NC) {
    const size_t U = 16 * (e == E_F32 ? 4 : 2);
    __m512 a0[FMC_MAX_COLS], a1[FMC_MAX_COLS];
    UNR
    for (int c = 0; c < NC; c++) a0[c] = a1[c] = _mm512_setzero_ps();
    const uint8_t *u = t + (size_t)r * U;
    const size_t ustep = (size_t)rr * U;
    for (int64_t i = 0; i < nu; i++, u += ustep, xa += (size_t)nc * 16) {
        if (pfp)
            for (size_t o = 0; o < pfl; o += 64) _mm_prefetch((const char *)pfp + (size_t)i * pfl + o, _MM_HINT_T1);
        const __m512 w0 = ld16(u, 0, e);
        const __m512 w1 = TWO ? ld16(u + U, 0, e) : w0;
        UNR
        for (int c = 0; c < NC; c++) {
            const __m512 xv = _mm512_load_ps(xa + 16 * c);
            a0[c] = _mm512_fmadd_ps(w0, xv, a0[c]);
            if (TWO) a1[c] = _mm512_fmadd_ps(w1, xv, a1[c]);
        }
    }
    UNR
    for (int c = 0; c < NC; c++) {
        y[(int64_t)c * ldy + r] = hsum16(a0[c]);
        if (TWO) y[(int64_t)c * ldy + r + 1] = hsum16(a1[c]);
    }
}

/* FMC_MIN_COLS <= nc <= FMC_MAX_COLS, n % 16 == 0 (the layout's condition);
 * returns 0 (nothing done) when the scratch cannot be had */
INL int fmc_gemm_il(int64_t n, const void *vw, uint64_t ws, int nr, const void *vx, uint64_t xs, int nc, float *y,
                    int64_t ldy, const int e) {
    const int64_t nu = n / 16;
    const size_t U = 16 * (e == E_F32 ? 4 : 2);
    float *xa = aligned_alloc(64, (size_t)nu * (size_t)nc * 64);
    if (!xa) return 0;
    const uint8_t *w = vw;
    const int pf = kv_quant_prefetch_on();
    if (pf) kv_pf_il_head(w, (uint64_t)nr * ws);
    for (int c = 0; c < nc; c++) {
        const uint8_t *xc = (const uint8_t *)vx + (uint64_t)c * xs;
        for (int64_t k = 0; k < nu; k++) _mm512_store_ps(xa + ((size_t)k * (size_t)nc + (size_t)c) * 16, ld16(xc, 16 * k, e));
    }
    for (int r0 = 0; r0 < nr; r0 += FIL) {
        const int rr = nr - r0 < FIL ? nr - r0 : FIL;
        const uint8_t *t = w + (uint64_t)r0 * ws;
        /* the next tile, in (rr + 1) / 2 passes of nu steps of pfl bytes */
        const int np = (rr + 1) / 2;
        const size_t pfl = ((size_t)FIL * U + (size_t)np - 1) / (size_t)np;
        for (int r = 0; r < rr; r += 2) {
            const uint8_t *pfp = pf && r0 + FIL < nr ? t + (uint64_t)rr * ws + (size_t)(r / 2) * (size_t)nu * pfl : NULL;
#define FMC_CASE(NC)                                                                             \
    case NC:                                                                                     \
        if (r + 1 < rr) fmc_rows(t, rr, r, nu, xa, nc, y + r0, ldy, pfp, pfl, e, 1, NC);         \
        else fmc_rows(t, rr, r, nu, xa, nc, y + r0, ldy, pfp, pfl, e, 0, NC);                    \
        break;
            switch (nc) {
                FMC_CASE(4)
                FMC_CASE(5)
                FMC_CASE(6)
                FMC_CASE(7)
                FMC_CASE(8)
            default: break;
            }
#undef FMC_CASE
        }
    }
    free(xa);
    return 1;
}

_Static_assert(FR == FIL, "the prefill tile is the interleaved layout's tile");
#define FLOAT_GEMMS(T, E)                                                                                    \
    TGT KV_AVX512_GEMM_PROTO(T) {                                                                            \
        if (nc >= F_MIN_COLS && nr > 0 && n > 0 && fp_gemm(n, w, ws, nr, x, xs, nc, y, ldy, E, 0)) return;   \
        fgemm(n, w, ws, nr, x, xs, nc, y, ldy, E);                                                           \
    }                                                                                                        \
    TGT KV_AVX512_GEMM_IL_PROTO(T) {                                                                         \
        if (nc >= FMC_MIN_COLS && nc <= FMC_MAX_COLS && nr > 0 && n > 0 && fmc_gemm_il(n, w, ws, nr, x, xs, nc, y, ldy, E)) \
            return;                                                                                          \
        if (nc >= F_MIN_COLS && nr > 0 && n > 0 && fp_gemm(n, w, ws, nr, x, xs, nc, y, ldy, E, 1)) return;   \
        fgemm_il(n, w, ws, nr, x, xs, nc, y, ldy, E);                                                        \
    }
FLOAT_GEMMS(f32, E_F32)
FLOAT_GEMMS(f16, E_F16)
FLOAT_GEMMS(bf16, E_BF16)

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

/* any nr, nc: register tiles of NR x 4, rows outer (see simd_avx2.c).
 *
 * TILE(n, w, ws, nr, x, xs, y, ldy, NR, NC, il, pfo) computes nr <= NR rows
 * x NC columns; il: the rows are one tile of the interleaved layout of NR
 * rows (quant.h), w its start; pfo: prefetch is on (the tiles of fewer
 * than KV_PF_COLS columns then ask for their stream, kv_pf_next or
 * kv_pf_il). Over the interleaved layout the tiles are the layout's, so
 * row tiles start on its tile boundaries. */
#define TILE_AT(TILE, NR, NC, r0, rr, c0, IL) \
    TILE(n, (const uint8_t *)w + (uint64_t)(r0) * ws, ws, rr, (const uint8_t *)x + (uint64_t)(c0) * xs, xs, \
         y + (int64_t)(c0) * ldy + (r0), ldy, NR, NC, IL, pfo)

#define GEMM_BODY(TILE, NR, IL)                                                      \
    const int pfo = kv_quant_prefetch_on();                                          \
    if (nc < KV_PF_COLS && pfo) {                                                    \
        if (IL) kv_pf_il_head(w, (uint64_t)nr * ws);                                 \
        else kv_pf_head(w, nr, ws, NR);                                              \
    }                                                                                \
    for (int r0 = 0; r0 < nr; r0 += NR) {                                            \
        const int rr = nr - r0 < NR ? nr - r0 : NR;                                  \
        int c0 = 0;                                                                  \
        for (; c0 + 4 <= nc; c0 += 4) TILE_AT(TILE, NR, 4, r0, rr, c0, IL);          \
        /* decode over the interleaved layout: a whole tile with constant strides */ \
        if (IL && rr == NR && nc - c0 == 1) {                                        \
            TILE_AT(TILE, NR, 1, r0, NR, c0, IL);                                    \
            continue;                                                                \
        }                                                                            \
        switch (nc - c0) {                                                           \
        case 3: TILE_AT(TILE, NR, 3, r0, rr, c0, IL); break;                         \
        case 2: TILE_AT(TILE, NR, 2, r0, rr, c0, IL); break;                         \
        case 1: TILE_AT(TILE, NR, 1, r0, rr, c0, IL); break;                         \
        default: break;                                                              \
        }                                                                            \
    }

/* the entry points over both layouts; SC: their storage class */
#define DEF_GEMM(SC, T, TILE, NR)                                                    \
    SC TGT KV_AVX512_GEMM_PROTO(T) { GEMM_BODY(TILE, NR, 0) }                        \
    SC TGT KV_AVX512_GEMM_IL_PROTO(T) { GEMM_BODY(TILE, NR, 1) }

/* W[r]: the rows of a tile, rs bytes apart (beyond nr the last row again);
 * block i of row r at W[r] + i * bst. File layout: rs = ws, bst = BW (the
 * block bytes). Interleaved: rs = BW, bst = nr * BW. */
#define ROWS(W, NR, BW)                                                                              \
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
#define COLS(X, NC)            \
    const uint8_t *X[MC];      \
    UNR                                                                \
    for (int c_ = 0; c_ < NC; c_++) X[c_] = (const uint8_t *)x + (uint64_t)c_ * xs

/* ------------------------------------------------------------ Q8_0, Q4_0, Q5_0 (row pairs) */

/* the 32-element block weight types these kernels take (activations Q8_0) */
enum { B_Q8, B_Q4, B_Q5 };
#define B_BYTES(t) \
    ((t) == B_Q4 ? sizeof(kv_block_q4_0) : (t) == B_Q5 ? sizeof(kv_block_q5_0) : sizeof(kv_block_q8_0))

/* a Q5_0 block's qh: bit j is the high bit of element j's code */
INL uint32_t q5_qh(const uint8_t *blk) {
    uint32_t h;
    memcpy(&h, blk + offsetof(kv_block_q5_0, qh), 4);
    return h;
}

INL void tile_pair(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                   const int NR, const int NC, const int il, const int pfo, const int t) {
    const int NP = NR / 2;
    const int64_t nb = n / 32;
    const size_t BW = B_BYTES(t);
    const size_t BX = sizeof(kv_block_q8_0);
    ROWS(W, NR, BW);
    COLS(X, NC);
    __m512 acc[MR / 2][MC];
    UNR
    for (int p = 0; p < NP; p++) {
        UNR
        for (int c = 0; c < NC; c++) acc[p][c] = _mm512_setzero_ps();
    }
    const __m512i zero = _mm512_setzero_si512();
    const __m512i off = _mm512_set1_epi8(t == B_Q4 ? 8 : t == B_Q5 ? 16 : (char)0x80);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i perm = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
    for (int64_t i = 0; i < nb; i++) {
        PF_STEP(W, NR, NC, nb, i, BW);
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
            const uint8_t *a0 = W[2 * p] + i * bst, *a1 = W[2 * p + 1] + i * bst;
            __m512i u;
            if (t != B_Q8) {
                const size_t qo = t == B_Q4 ? offsetof(kv_block_q4_0, qs) : offsetof(kv_block_q5_0, qs);
                const __m256i lo = _mm256_set_m128i(ld128(a1 + qo), ld128(a0 + qo));
                const __m256i hi = _mm256_srli_epi16(lo, 4);
                u = _mm512_and_si512(
                    _mm512_permutex2var_epi64(_mm512_castsi256_si512(lo), perm, _mm512_castsi256_si512(hi)), m4);
                if (t == B_Q5) /* + 16 where the element's high bit is set: codes 0..31 */
                    u = _mm512_mask_add_epi8(u, _cvtu64_mask64(q5_qh(a0) | (uint64_t)q5_qh(a1) << 32), u,
                                             _mm512_set1_epi8(16));
            } else {
                u = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(ld256(a0 + 2)), ld256(a1 + 2), 1), off);
            }
            /* both rows' f16 scales in one conversion, then [d0 x 8 | d1 x 8] */
            uint16_t h0, h1;
            memcpy(&h0, a0, 2);
            memcpy(&h1, a1, 2);
            const __m512 dx = _mm512_permutexvar_ps(
                _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
                _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)h0 | (uint32_t)h1 << 16)))));
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

#define PAIR_TILE(T, ID)                                                                                       \
    INL void tile_##T(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y,      \
                      int64_t ldy, const int NR, const int NC, const int il, const int pfo) {                 \
        tile_pair(n, w, ws, nr, x, xs, y, ldy, NR, NC, il, pfo, ID);                                           \
    }                                                                                                         \
    DEF_GEMM(static, pair_##T, tile_##T, KV_AVX512_NR_B32)
_Static_assert(KV_AVX512_NR_B32 == KV_AVX512_IL_ROWS, "the decode tile is the interleaved layout's tile");
PAIR_TILE(q8_0, B_Q8)
PAIR_TILE(q4_0, B_Q4)
PAIR_TILE(q5_0, B_Q5)

/* ------------------------------------------------------------ Q8_0, Q4_0, Q5_0 packed (prefill)
 *
 * With several columns the work is reorganised so that the inner loop is
 * three vector instructions per (2 outputs x 1 block): vpdpbusd, cvt, fma.
 *
 *   Activations, once per call: each Q8_0 block becomes 64 bytes, its eight
 *     4-byte groups each written twice (g0 g0 g1 g1 .. g7 g7) and offset by
 *     128 (unsigned for vpdpbusd), plus its scale as a float.
 *   Weights, once per tile of 8 rows (4 row pairs): the signed values of rows
 *     2p and 2p+1 with their 4-byte groups interleaved (a0 b0 a1 b1 .. a7 b7)
 *     so that lane 2g + k of a vpdpbusd is group g of row 2p + k; next to it
 *     -128 * (the group sums) in the same lanes, the starting value of the
 *     vpdpbusd, which makes its result the exact isum; and the 8 row scales.
 *   Per block and column, one ymm multiply gives dx[r] * dy (the reference's
 *     float product) for the 8 rows; it is stored and each row pair's two
 *     products are broadcast back as a 64-bit pattern (a load, no shuffle),
 *     which matches the interleaved lanes.
 * Each lane is then acc = fma(dx * dy, (float)isum, acc), block after block,
 * and the lane-wise tree at the end is the reference's (see pk_reduce). */

#define PK_R KV_AVX512_NR_PK /* rows per packed tile (4 pairs) */
#define PK_C KV_AVX512_NC_PK /* columns per register tile */
#define PK_MIN_COLS 4 /* fewer columns: the pair kernel above */
_Static_assert(PK_R == 8, "pk_reduce takes 4 row pairs");

typedef struct {
    __m512i w[PK_R / 2];    /* interleaved signed values of the row pairs */
    __m512i corr[PK_R / 2]; /* -128 * group sums (int32), same lanes */
    float dx[PK_R];
} pk_blk;

/* 8 rows (from row pointers W, block i of row r at W[r] + i * BS[r]) into one packed block */
INL void pk_weights(const uint8_t *const *W, const uint64_t *BS, int64_t i, pk_blk *o, const int t) {
    const __m512i ilv = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    const __m512i c128 = _mm512_set1_epi8((char)0x80);
    UNR
    for (int p = 0; p < PK_R / 2; p++) {
        __m256i v[2];
        UNR
        for (int k = 0; k < 2; k++) {
            const uint8_t *b = W[2 * p + k] + (uint64_t)i * BS[2 * p + k];
            if (t == B_Q4) {
                const __m128i q = ld128(b + 2);
                const __m256i u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0f));
                v[k] = _mm256_sub_epi8(u, _mm256_set1_epi8(8));
            } else if (t == B_Q5) {
                const __m128i q = ld128(b + offsetof(kv_block_q5_0, qs));
                const __m256i u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0f));
                /* code - 16: u - 16 where the high bit is clear, u where it is set */
                v[k] = _mm256_mask_sub_epi8(u, _cvtu32_mask32(~q5_qh(b)), u, _mm256_set1_epi8(16));
            } else {
                v[k] = ld256(b + 2);
            }
            o->dx[2 * p + k] = h2f(b);
        }
        const __m512i w = _mm512_permutexvar_epi32(ilv, _mm512_inserti64x4(_mm512_castsi256_si512(v[0]), v[1], 1));
        o->w[p] = w;
        o->corr[p] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), c128, w));
    }
}

/* one activation row (nb Q8_0 blocks) into the block-major scratch: block i
 * of this column at ya + i * nc * 64 (64 bytes), its scale at dy[i * nc] */
INL void pk_acts(const uint8_t *x, int64_t nb, int nc, uint8_t *ya, float *dy) {
    const __m512i dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const __m512i c128 = _mm512_set1_epi8((char)0x80);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = x + i * sizeof(kv_block_q8_0);
        const __m512i v = _mm512_permutexvar_epi32(dup, _mm512_castsi256_si512(ld256(b + 2)));
        _mm512_store_si512(ya + (size_t)i * (size_t)nc * 64, _mm512_xor_si512(v, c128));
        dy[i * nc] = h2f(b);
    }
}

/* a[p] (p = 0..3): lanes 2g + k = lane g of output row 2p + k. Returns the 8
 * outputs, row order, each reduced as kv_dot_reduce8 does: (g + g+4), then
 * (h + h+2), then (t0 + t1); float adds are commutative, so only which
 * values meet matters. */
INL __m256 pk_reduce(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, 0x44), _mm512_shuffle_f32x4(a0, a1, 0xee));
    const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, 0x44), _mm512_shuffle_f32x4(a2, a3, 0xee));
    /* quarter p: pair p's [r h0+h2, r' h0+h2, r h1+h3, r' h1+h3] */
    const __m512 t = _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xdd));
    const __m512 u = _mm512_add_ps(t, _mm512_permute_ps(t, 0x4e));
    return _mm512_castps512_ps256(
        _mm512_permutexvar_ps(_mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 0, 1, 4, 5, 8, 9, 12, 13), u));
}

/* [p0 p1 p0 p1 ..] from memory: one load-port uop. Written as asm so that
 * the compiler does not forward the just-stored products through
 * registers with shuffles (port 5, which the inner loop needs). The operand
 * is a struct of two floats (gcc 12's -Wcast-qual misreads const float[2]). */
INL __m512 bcast_pair(const float *p) {
    __m512 r;
    __asm__("vbroadcastsd %1, %0" : "=v"(r) : "m"(*(const struct { float f[2]; } *)p));
    return r;
}

/* NC columns against one packed row tile (nr <= 8 rows valid); ya, dy: the
 * first column's block 0 in the block-major scratch of nc columns */
INL void pk_tile(const pk_blk *pk, int64_t nb, const uint8_t *ya, const float *dy, int nc, float *y, int64_t ldy,
                 int nr, const int NC) {
    __m512 acc[PK_R / 2][PK_C];
    UNR
    for (int p = 0; p < PK_R / 2; p++) {
        UNR
        for (int c = 0; c < NC; c++) acc[p][c] = _mm512_setzero_ps();
    }
    _Alignas(64) float D[PK_C][PK_R];
    const size_t ystep = (size_t)nc * 64;
    for (int64_t i = 0; i < nb; i++, ya += ystep, dy += nc) {
        const pk_blk *b = pk + i;
        const __m256 dx = _mm256_load_ps(b->dx);
        __m512i a[PK_C];
        UNR
        for (int c = 0; c < NC; c++) {
            _mm256_store_ps(D[c], _mm256_mul_ps(dx, _mm256_set1_ps(dy[c])));
            a[c] = _mm512_load_si512(ya + 64 * c);
        }
        UNR
        for (int p = 0; p < PK_R / 2; p++) {
            const __m512i w = _mm512_load_si512(&b->w[p]), cr = _mm512_load_si512(&b->corr[p]);
            UNR
            for (int c = 0; c < NC; c++) {
                const __m512i is = _mm512_dpbusd_epi32(cr, a[c], w);
                const __m512 d = bcast_pair(&D[c][2 * p]);
                acc[p][c] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(is), acc[p][c]);
            }
        }
    }
    const __mmask8 m = (__mmask8)((1u << nr) - 1);
    UNR
    for (int c = 0; c < NC; c++)
        _mm256_mask_storeu_ps(y + (int64_t)c * ldy, m, pk_reduce(acc[0][c], acc[1][c], acc[2][c], acc[3][c]));
}

/* returns 0 (nothing done) when the scratch cannot be had. il: the
 * weights are in the interleaved layout of KV_AVX512_IL_ROWS rows (the 8
 * rows of a packed tile are two of its tiles) */
_Static_assert(PK_R % KV_AVX512_IL_ROWS == 0, "a packed tile is whole interleaved tiles");
INL int pk_gemm(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, int nc, float *y,
                int64_t ldy, const int t, const int il) {
    const int64_t nb = n / 32;
    const size_t s_pk = (size_t)nb * sizeof(pk_blk), s_ya = (size_t)nc * (size_t)nb * 64,
                 s_dy = ((size_t)nc * (size_t)nb * 4 + 63) & ~(size_t)63;
    uint8_t *buf = aligned_alloc(64, s_pk + s_ya + s_dy);
    if (!buf) return 0;
    pk_blk *pk = (pk_blk *)buf;
    uint8_t *ya = buf + s_pk;
    float *dy = (float *)(buf + s_pk + s_ya);
    prefetch_rows(w, ws, 0, nr < PK_R ? nr : PK_R, (size_t)nb * B_BYTES(t));
    for (int c = 0; c < nc; c++) pk_acts((const uint8_t *)x + (uint64_t)c * xs, nb, nc, ya + (size_t)c * 64, dy + c);
    for (int r0 = 0; r0 < nr; r0 += PK_R) {
        const int rr = nr - r0 < PK_R ? nr - r0 : PK_R;
        const uint8_t *W[PK_R];
        uint64_t BS[PK_R];
        for (int r = 0; r < PK_R; r++) {
            const int q = r < rr ? r : rr - 1;
            if (il) {
                enum { L = KV_AVX512_IL_ROWS };
                const int t0 = q / L * L, tr = rr - t0 < L ? rr - t0 : L; /* q's tile and its rows */
                W[r] = (const uint8_t *)w + (uint64_t)(r0 + t0) * ws + (uint64_t)(q - t0) * B_BYTES(t);
                BS[r] = (uint64_t)tr * B_BYTES(t);
            } else {
                W[r] = (const uint8_t *)w + (uint64_t)(r0 + q) * ws;
                BS[r] = B_BYTES(t);
            }
        }
        for (int64_t i = 0; i < nb; i++) pk_weights(W, BS, i, pk + i, t);
        if (r0 + PK_R < nr)
            prefetch_rows(w, ws, r0 + PK_R, nr - r0 - PK_R < PK_R ? nr - r0 - PK_R : PK_R,
                          (size_t)nb * B_BYTES(t));
        float *yr = y + r0;
        int c0 = 0;
        for (; c0 + PK_C <= nc; c0 += PK_C)
            pk_tile(pk, nb, ya + (size_t)c0 * 64, dy + c0, nc, yr + (int64_t)c0 * ldy, ldy, rr, PK_C);
        switch (nc - c0) {
        case 3: pk_tile(pk, nb, ya + (size_t)c0 * 64, dy + c0, nc, yr + (int64_t)c0 * ldy, ldy, rr, 3); break;
        case 2: pk_tile(pk, nb, ya + (size_t)c0 * 64, dy + c0, nc, yr + (int64_t)c0 * ldy, ldy, rr, 2); break;
        case 1: pk_tile(pk, nb, ya + (size_t)c0 * 64, dy + c0, nc, yr + (int64_t)c0 * ldy, ldy, rr, 1); break;
        default: break;
        }
    }
    free(buf);
    return 1;
}

/* ------------------------------------------------------------ Q8_0, Q4_0, Q5_0 batched decode (4..8 columns)
 *
 * Several sessions decoded together (kvlm_decode_batch) call gemm with one
 * column per session: too few columns to amortise pk_gemm's packing of every
 * weight tile into a scratch, and each weight byte is still used only nc
 * times, so the weights must stream from memory while the columns are
 * computed. This kernel reads each weight block once, straight from the
 * weights, for all nc columns: a row tile of 4 rows (the interleaved
 * layout's tile, or 4 rows of the file layout) as two row pairs in pk's lane
 * order (lane 2g + k: group g of row 2p + k) and the correction term of
 * pk_weights, built in registers per block; the activations are converted
 * once per call as pk_acts does. Per block and column the inner loop is
 * pk_tile's (vpdpbusd, cvt, fma against the broadcast dx * dy pair), with
 * all 2 x nc accumulators in registers, and the weights are asked for as
 * one stream KV_PF_IL_AHEAD bytes ahead (kv_pf_il / kv_pf_next). Every lane
 * does the reference's fma(dx * dy, isum, acc) block after block and
 * pk_reduce is its tree, so the bits are those of vec_dot. */

#define MC_MIN_COLS 4
#define MC_MAX_COLS 8
#define MC_R 4 /* rows per tile: two pairs */
_Static_assert(MC_R == KV_AVX512_IL_ROWS, "a batched-decode tile is one interleaved tile");

/* rows W[0..3] (block i of row r at W[r] + i * BS[r]; nr <= 4 valid) x NC columns; block i of
 * the activations: column c at ya + (i * nc + c) * 64 (pk_acts), its scale in lane 4c .. 4c+3 of
 * dq + 32 i */
INL void mc_tile(const uint8_t *const *W, const uint64_t *BS, int64_t nb, const uint8_t *ya, const float *dq, int nc,
                 float *y, int64_t ldy, int nr, const int pf, const int il, uint64_t ws, const int t, const int NC) {
    const __m512i ilv = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    const __m512i c128 = _mm512_set1_epi8((char)0x80);
    __m512 acc[MC_R / 2][MC_MAX_COLS];
    UNR
    for (int p = 0; p < MC_R / 2; p++) {
        UNR
        for (int c = 0; c < NC; c++) acc[p][c] = _mm512_setzero_ps();
    }
    _Alignas(64) float D[MC_MAX_COLS][MC_R];
    const size_t ystep = (size_t)nc * 64;
    for (int64_t i = 0; i < nb; i++, ya += ystep, dq += 32) {
        if (pf) {
            if (il) kv_pf_il(W[0] + (uint64_t)i * BS[0], (size_t)BS[0]);
            else kv_pf_next(W, MC_R, ws, nb, (uint64_t)i * B_BYTES(t), B_BYTES(t));
        }
        __m512i wv[MC_R / 2], cr[MC_R / 2];
        uint16_t h[MC_R];
        UNR
        for (int p = 0; p < MC_R / 2; p++) {
            __m256i v[2];
            UNR
            for (int k = 0; k < 2; k++) {
                const uint8_t *b = W[2 * p + k] + (uint64_t)i * BS[2 * p + k];
                if (t == B_Q4) {
                    const __m128i q = ld128(b + offsetof(kv_block_q4_0, qs));
                    const __m256i u =
                        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0f));
                    v[k] = _mm256_sub_epi8(u, _mm256_set1_epi8(8));
                } else if (t == B_Q5) {
                    const __m128i q = ld128(b + offsetof(kv_block_q5_0, qs));
                    const __m256i u =
                        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0f));
                    v[k] = _mm256_mask_sub_epi8(u, _cvtu32_mask32(~q5_qh(b)), u, _mm256_set1_epi8(16));
                } else {
                    v[k] = ld256(b + offsetof(kv_block_q8_0, qs));
                }
                memcpy(&h[2 * p + k], b, 2);
            }
            wv[p] = _mm512_permutexvar_epi32(ilv, _mm512_inserti64x4(_mm512_castsi256_si512(v[0]), v[1], 1));
            cr[p] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), c128, wv[p]));
        }
        uint64_t h64;
        memcpy(&h64, h, 8);
        /* D[c][r] = dx[r] * dy[c], four columns per multiply (dq: dy[c] in lanes 4c..4c+3) */
        const __m512 dx = _mm512_broadcast_f32x4(_mm_cvtph_ps(_mm_cvtsi64_si128((long long)h64)));
        _mm512_store_ps(D[0], _mm512_mul_ps(dx, _mm512_load_ps(dq)));
        if (NC > 4) _mm512_store_ps(D[4], _mm512_mul_ps(dx, _mm512_load_ps(dq + 16)));
        UNR
        for (int c = 0; c < NC; c++) {
            const __m512i a = _mm512_load_si512(ya + 64 * c);
            UNR
            for (int p = 0; p < MC_R / 2; p++) {
                const __m512i is = _mm512_dpbusd_epi32(cr[p], a, wv[p]);
                acc[p][c] = _mm512_fmadd_ps(bcast_pair(&D[c][2 * p]), _mm512_cvtepi32_ps(is), acc[p][c]);
            }
        }
    }
    const __mmask8 m = (__mmask8)((1u << nr) - 1);
    UNR
    for (int c = 0; c < NC; c++)
        _mm256_mask_storeu_ps(y + (int64_t)c * ldy, m, pk_reduce(acc[0][c], acc[1][c], acc[0][c], acc[1][c]));
}

/* MC_MIN_COLS <= nc <= MC_MAX_COLS; returns 0 (nothing done) when the scratch cannot be had */
INL int mc_gemm(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, int nc, float *y,
                int64_t ldy, const int t, const int il) {
    const int64_t nb = n / 32;
    const size_t BW = B_BYTES(t);
    const size_t s_ya = (size_t)nc * (size_t)nb * 64, s_dy = ((size_t)nc * (size_t)nb * 4 + 63) & ~(size_t)63,
                 s_dq = (size_t)nb * 128;
    uint8_t *buf = aligned_alloc(64, s_ya + s_dy + s_dq);
    if (!buf) return 0;
    uint8_t *ya = buf;
    float *dy = (float *)(buf + s_ya), *dq = (float *)(buf + s_ya + s_dy);
    const int pfo = kv_quant_prefetch_on();
    /* file layout: the stream prefetch needs contiguous rows */
    const int pf = pfo && (il || ws == (uint64_t)nb * BW);
    if (pf) {
        if (il) kv_pf_il_head(w, (uint64_t)nr * ws);
        else kv_pf_head(w, nr, ws, MC_R);
    }
    for (int c = 0; c < nc; c++) pk_acts((const uint8_t *)x + (uint64_t)c * xs, nb, nc, ya + (size_t)c * 64, dy + c);
    for (int64_t i = 0; i < nb; i++)
        for (int l = 0; l < 32; l++) dq[i * 32 + l] = l / 4 < nc ? dy[i * nc + l / 4] : 0.0f;
    for (int r0 = 0; r0 < nr; r0 += MC_R) {
        const int rr = nr - r0 < MC_R ? nr - r0 : MC_R;
        const uint8_t *W[MC_R];
        uint64_t BS[MC_R];
        for (int r = 0; r < MC_R; r++) {
            const int q = r < rr ? r : rr - 1;
            if (il) {
                W[r] = (const uint8_t *)w + (uint64_t)r0 * ws + (uint64_t)q * BW;
                BS[r] = (uint64_t)rr * BW;
            } else {
                W[r] = (const uint8_t *)w + (uint64_t)(r0 + q) * ws;
                BS[r] = BW;
            }
        }
        float *yr = y + r0;
#define MC_CASE(NC)                                                                                         \
    case NC: mc_tile(W, BS, nb, ya, dq, nc, yr, ldy, rr, pf, il, ws, t, NC); break;
        switch (nc) {
            MC_CASE(4)
            MC_CASE(5)
            MC_CASE(6)
            MC_CASE(7)
            MC_CASE(8)
        default: break;
        }
#undef MC_CASE
    }
    free(buf);
    return 1;
}

#define B32_GEMMS(T, ID)                                                                                 \
    TGT KV_AVX512_GEMM_PROTO(T) {                                                                        \
        if (nc >= MC_MIN_COLS && nc <= MC_MAX_COLS && nr > 0 && mc_gemm(n, w, ws, nr, x, xs, nc, y, ldy, ID, 0)) \
            return;                                                                                      \
        if (nc >= PK_MIN_COLS && nr > 0 && pk_gemm(n, w, ws, nr, x, xs, nc, y, ldy, ID, 0)) return;      \
        kv_avx512_gemm_pair_##T(n, w, ws, nr, x, xs, nc, y, ldy);                                        \
    }                                                                                                    \
    TGT KV_AVX512_GEMM_IL_PROTO(T) {                                                                     \
        if (nc >= MC_MIN_COLS && nc <= MC_MAX_COLS && nr > 0 && mc_gemm(n, w, ws, nr, x, xs, nc, y, ldy, ID, 1)) \
            return;                                                                                      \
        if (nc >= PK_MIN_COLS && nr > 0 && pk_gemm(n, w, ws, nr, x, xs, nc, y, ldy, ID, 1)) return;      \
        kv_avx512_gemm_il_pair_##T(n, w, ws, nr, x, xs, nc, y, ldy);                                     \
    }
B32_GEMMS(q8_0, B_Q8)
B32_GEMMS(q4_0, B_Q4)
B32_GEMMS(q5_0, B_Q5)
/* a single row: the pair kernel would do its integer work twice */
TGT KV_AVX512_DOT_PROTO(q8_0) { kv_avx2_vec_dot_q8_0(n, s, x, y); }
TGT KV_AVX512_DOT_PROTO(q4_0) { kv_avx2_vec_dot_q4_0(n, s, x, y); }
TGT KV_AVX512_DOT_PROTO(q5_0) { kv_avx2_vec_dot_q5_0(n, s, x, y); }

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
                const int NR, const int NC, const int il, const int pfo, const int t) {
    const int64_t nb = n / KV_QK_K;
    const size_t BW = t == K_Q4 ? sizeof(kv_block_q4_K) : t == K_Q5 ? sizeof(kv_block_q5_K) : sizeof(kv_block_q6_K);
    ROWS(W, NR, BW);
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
        PF_STEP(W, NR, NC, nb, i, BW);
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
            const uint8_t *blk = W[r] + i * bst;
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
                      int64_t ldy, const int NR, const int NC, const int il, const int pfo) {                  \
        tile_k(n, w, ws, nr, x, xs, y, ldy, NR, NC, il, pfo, ID);                                               \
    }                                                                                                          \
    DEF_GEMM(, T, tile_##T, KV_AVX512_NR_K)                                                                     \
    TGT KV_AVX512_DOT_PROTO(T) { tile_##T(n, x, 0, 1, y, 0, s, 1, 1, 1, 0, 0); }
_Static_assert(KV_AVX512_NR_K == KV_AVX512_IL_ROWS && KV_AVX512_NR_I2S == KV_AVX512_IL_ROWS,
               "the decode tiles are the interleaved layout's tiles");
K_TILE(q4_K, K_Q4)
K_TILE(q5_K, K_Q5)
K_TILE(q6_K, K_Q6)

INL void tile_tq2_0(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                    const int NR, const int NC, const int il, const int pfo) {
    const int64_t nb = n / KV_QK_K;
    ROWS(W, NR, sizeof(kv_block_tq2_0));
    COLS(X, NC);
    const __m512i m3 = _mm512_set1_epi8(3);
    __m256 acc[MR][MC];
    UNR
    for (int r = 0; r < NR; r++) {
        UNR
        for (int c = 0; c < NC; c++) acc[r][c] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        PF_STEP(W, NR, NC, nb, i, sizeof(kv_block_tq2_0));
        const kv_block_q8_K *A[MC];
        __m256i bs[MC];
        UNR
        for (int c = 0; c < NC; c++) {
            A[c] = (const kv_block_q8_K *)X[c] + i;
            bs[c] = _mm256_madd_epi16(ld256(A[c]->bsums), _mm256_set1_epi16(1)); /* bsums[2l] + bsums[2l+1] */
        }
        UNR
        for (int r = 0; r < NR; r++) {
            const kv_block_tq2_0 *b = (const kv_block_tq2_0 *)(W[r] + i * bst);
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
DEF_GEMM(, tq2_0, tile_tq2_0, KV_AVX512_NR_K)
TGT KV_AVX512_DOT_PROTO(tq2_0) { tile_tq2_0(n, x, 0, 1, y, 0, s, 1, 1, 1, 0, 0); }

/* ------------------------------------------------------------ TQ1_0
 *
 * A byte b holds trits k = 0..4 as t = ((uint8_t)(b * 3^k) * 3) >> 8. The
 * byte products come from byte adds and shifts (3x = x + 2x, 9x = (8x &
 * 0xf8..) + x) or, where a vector mixes multipliers, two 16-bit multiplies
 * (even bytes from x * m, odd bytes from (x & 0xff00) * m). The trit of a
 * product p without multiplies: with q = max(p - 1, 0), avg(q, avg(q, 0))
 * = ceil((q + ceil(q / 2)) / 2) has it in its top two bits, so masking them
 * gives 64 * t exactly (every byte value is checked in tests/test_simd.c).
 * Those go into vpdpbusd like TQ2_0's codes; the int32 sums are 64 times
 * the exact ones, shifted back (exactly) before the bsums come off.
 *
 * Decode (fewer than TQ1_PK_COLS columns) decodes each block as it goes;
 * prefill decodes a tile of rows once into a scratch of 64 * t bytes, in
 * the activations' order, and runs every column tile over it. Two outputs
 * share a zmm for the float steps (8 lanes each): columns c, c+1 of a row,
 * or rows r, r+1 when there is one column. */

#define TQ1_PK_COLS 4 /* this many columns or more: rows decoded once per call */
#define HI256 0xffffffff00000000ull

INL __m512i tq1_t64(__m512i p) {
    const __m512i q = _mm512_subs_epu8(p, _mm512_set1_epi8(1));
    const __m512i t = _mm512_avg_epu8(q, _mm512_avg_epu8(q, _mm512_setzero_si512()));
    return _mm512_and_si512(t, _mm512_set1_epi8((char)0xc0));
}

/* (uint8_t)(x * m) for each byte, m the 16-bit lane's multiplier */
INL __m512i mul8(__m512i x, __m512i m) {
    const __m512i lo = _mm512_mullo_epi16(x, m);
    const __m512i hi = _mm512_mullo_epi16(_mm512_and_si512(x, _mm512_set1_epi16((short)0xff00)), m);
    return _mm512_mask_blend_epi8(0xaaaaaaaaaaaaaaaaull, lo, hi);
}

INL __m512i mul9(__m512i x) {
    return _mm512_add_epi8(_mm512_and_si512(_mm512_slli_epi16(x, 3), _mm512_set1_epi8((char)0xf8)), x);
}

#define W2(m) ((int)(0x10001u * (m))) /* a 32-bit lane of two 16-bit multipliers m */

/* 64 * the trits of one block in element order: U[h] is elements 64h .. 64h + 63 */
INL void prep_tq1_0(const kv_block_tq1_0 *b, __m512i U[4]) {
    const __m512i B = bcast256(b->qs);
    const __m512i p0 = _mm512_add_epi8(B, _mm512_maskz_add_epi8(HI256, B, B)); /* [b | 3b]: trits 0, 1 of qs[0..31] */
    const __m512i p1 = mul9(p0);                                                 /* [9b | 27b] */
    const __m128i c = ld128(b->qs + 32);
    uint32_t qh;
    memcpy(&qh, b->qh, 4);
    /* [81b | c 3c]: trit 4 of qs[0..31]; trits 0, 1 of qs[32..47] (elements 160 + 16k + m) */
    const __m512i x2 = _mm512_mask_broadcast_i32x4(B, 0xff00, c);
    const __m512i p2 = mul8(x2, _mm512_setr_epi32(W2(81), W2(81), W2(81), W2(81), W2(81), W2(81), W2(81), W2(81),
                                                  W2(1), W2(1), W2(1), W2(1), W2(3), W2(3), W2(3), W2(3)));
    /* [9c 27c | 81c q]: trits 2..4 of qs[32..47]; then trit k of qh[m] at 4k + m */
    const __m512i x3 = _mm512_mask_set1_epi32(_mm512_broadcast_i32x4(c), 0xf000, (int)qh);
    const __m512i p3 = mul8(x3, _mm512_setr_epi32(W2(9), W2(9), W2(9), W2(9), W2(27), W2(27), W2(27), W2(27), W2(81),
                                                  W2(81), W2(81), W2(81), W2(1), W2(3), W2(9), W2(27)));
    U[0] = tq1_t64(p0);
    U[1] = tq1_t64(p1);
    U[2] = tq1_t64(p2);
    U[3] = tq1_t64(p3);
}

/* acc += d2 * (float)([fold(a) | fold(b)] / 64 - bs2), lane by lane (the
 * reference's fma for two outputs: 8 lanes of a, then 8 of b) */
INL __m512 tq1_pair(__m512i a, __m512i b, __m512i bs2, __m512 d2, __m512 acc) {
    const __m512i f = _mm512_add_epi32(_mm512_shuffle_i32x4(a, b, 0x44), _mm512_shuffle_i32x4(a, b, 0xee));
    const __m512i s = _mm512_sub_epi32(_mm512_srai_epi32(f, 6), bs2);
    return _mm512_fmadd_ps(d2, _mm512_cvtepi32_ps(s), acc);
}

/* [x x8 | y x8] */
INL __m512 f2(float a, float b) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(a)), _mm256_set1_ps(b), 1);
}

/* NR rows x NC columns. pk == NULL: decode the blocks of w; else (w is not
 * read) the 64 * t of block i of row r are at pk + (i * NR + r) * 4 (zmm)
 * and its scale at pd[i * NR + r]. */
INL void tile_tq1(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                  const __m512i *pk, const float *pd, const int NR, const int NC, const int il, const int pfo) {
    const int64_t nb = n / KV_QK_K;
    const int NCP = (NC + 1) / 2;                /* column pairs (the last may repeat its column) */
    const int NP = NC == 1 ? (NR + 1) / 2 : NR * NCP; /* accumulators */
    ROWS(W, NR, sizeof(kv_block_tq1_0));
    COLS(X, NC);
    __m512 acc[MR * (MC / 2)];
    UNR
    for (int p = 0; p < NP; p++) acc[p] = _mm512_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        if (!pk) PF_STEP(W, NR, NC, nb, i, sizeof(kv_block_tq1_0));
        const kv_block_q8_K *A[MC];
        __m256i bs[MC];
        UNR
        for (int c = 0; c < NC; c++) {
            A[c] = (const kv_block_q8_K *)X[c] + i;
            bs[c] = _mm256_madd_epi16(ld256(A[c]->bsums), _mm256_set1_epi16(1)); /* bsums[2l] + bsums[2l+1] */
        }
        __m512i bs2[MC / 2];
        __m512 da2[MC / 2];
        UNR
        for (int p = 0; p < NCP; p++) {
            const int c0 = 2 * p, c1 = 2 * p + 1 < NC ? 2 * p + 1 : 2 * p;
            bs2[p] = _mm512_inserti64x4(_mm512_castsi256_si512(bs[c0]), bs[c1], 1);
            da2[p] = f2(A[c0]->d, A[c1]->d);
        }
        __m512i is1[MR]; /* one column: each row's sums, paired up after the rows */
        float dx[MR];
        UNR
        for (int r = 0; r < NR; r++) {
            __m512i U[4];
            if (pk) {
                const __m512i *u = pk + (i * NR + r) * 4;
                UNR
                for (int h = 0; h < 4; h++) U[h] = _mm512_load_si512(u + h);
                dx[r] = pd[i * NR + r];
            } else {
                const kv_block_tq1_0 *b = (const kv_block_tq1_0 *)(W[r] + i * bst);
                prep_tq1_0(b, U);
                dx[r] = h2f(&b->d);
            }
            __m512i is[MC];
            UNR
            for (int c = 0; c < NC; c++) {
                __m512i s = _mm512_setzero_si512();
                UNR
                for (int h = 0; h < 4; h++) s = _mm512_dpbusd_epi32(s, U[h], ld512(A[c]->qs + 64 * h));
                is[c] = s;
            }
            if (NC == 1) {
                is1[r] = is[0];
                continue;
            }
            const __m512 dxv = _mm512_set1_ps(dx[r]);
            UNR
            for (int p = 0; p < NCP; p++) {
                const int c0 = 2 * p, c1 = 2 * p + 1 < NC ? 2 * p + 1 : 2 * p;
                /* the reference's d = y.d * (float)x.d, as a vector multiply */
                acc[r * NCP + p] = tq1_pair(is[c0], is[c1], bs2[p], _mm512_mul_ps(da2[p], dxv), acc[r * NCP + p]);
            }
        }
        if (NC == 1) {
            UNR
            for (int p = 0; p < NP; p++) {
                const int r0 = 2 * p, r1 = 2 * p + 1 < NR ? 2 * p + 1 : 2 * p;
                acc[p] = tq1_pair(is1[r0], is1[r1], bs2[0], _mm512_mul_ps(da2[0], f2(dx[r0], dx[r1])), acc[p]);
            }
        }
    }
    UNR
    for (int p = 0; p < NP; p++) {
        const float lo = hsum8(_mm512_castps512_ps256(acc[p])), hi = hsum8(_mm512_extractf32x8_ps(acc[p], 1));
        if (NC == 1) {
            if (2 * p < nr) y[2 * p] = lo;
            if (2 * p + 1 < nr && 2 * p + 1 < NR) y[2 * p + 1] = hi;
        } else {
            const int r = p / NCP, c0 = 2 * (p % NCP);
            if (r < nr) {
                y[c0 * ldy + r] = lo;
                if (c0 + 1 < NC) y[(c0 + 1) * ldy + r] = hi;
            }
        }
    }
}

INL void tile_tq1_0(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                    const int NR, const int NC, const int il, const int pfo) {
    tile_tq1(n, w, ws, nr, x, xs, y, ldy, NULL, NULL, NR, NC, il, pfo);
}
DEF_GEMM(static, dec_tq1_0, tile_tq1_0, KV_AVX512_NR_K)

/* returns 0 (nothing done) when the scratch cannot be had */
INL int tq1_pk_gemm(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, int nc, float *y,
                    int64_t ldy, const int il) {
    enum { NR = KV_AVX512_NR_K, NC = KV_AVX512_NC_K };
    const int64_t nb = n / KV_QK_K;
    const size_t s_u = (size_t)nb * NR * 256, s_d = ((size_t)nb * NR * 4 + 63) & ~(size_t)63;
    uint8_t *buf = aligned_alloc(64, s_u + s_d + 64);
    if (!buf) return 0;
    __m512i *pk = (__m512i *)buf;
    float *pd = (float *)(buf + s_u);
    const size_t row_b = (size_t)nb * sizeof(kv_block_tq1_0);
    prefetch_rows(w, ws, 0, nr < NR ? nr : NR, row_b);
    for (int r0 = 0; r0 < nr; r0 += NR) {
        const int rr = nr - r0 < NR ? nr - r0 : NR;
        /* block i of row r at R[r] + i * bst (one interleaved tile: NR is its rows) */
        const uint8_t *R[NR];
        const uint64_t bst = il ? (uint64_t)rr * sizeof(kv_block_tq1_0) : sizeof(kv_block_tq1_0);
        for (int r = 0; r < NR; r++)
            R[r] = (const uint8_t *)w + (il ? (uint64_t)r0 * ws + (uint64_t)(r < rr ? r : rr - 1) * sizeof(kv_block_tq1_0)
                                            : (uint64_t)(r0 + (r < rr ? r : rr - 1)) * ws);
        for (int64_t i = 0; i < nb; i++)
            for (int r = 0; r < NR; r++) {
                const kv_block_tq1_0 *b = (const kv_block_tq1_0 *)(R[r] + (uint64_t)i * bst);
                __m512i U[4];
                prep_tq1_0(b, U);
                for (int h = 0; h < 4; h++) _mm512_store_si512(pk + (i * NR + r) * 4 + h, U[h]);
                pd[i * NR + r] = h2f(&b->d);
            }
        if (r0 + NR < nr) prefetch_rows(w, ws, r0 + NR, nr - r0 - NR < NR ? nr - r0 - NR : NR, row_b);
        float *yr = y + r0;
        int c0 = 0;
        for (; c0 + NC <= nc; c0 += NC)
            tile_tq1(n, x, 0, rr, (const uint8_t *)x + (uint64_t)c0 * xs, xs, yr + (int64_t)c0 * ldy, ldy, pk, pd, NR,
                     NC, 0, 0);
        const uint8_t *xc = (const uint8_t *)x + (uint64_t)c0 * xs;
        switch (nc - c0) {
        case 3: tile_tq1(n, x, 0, rr, xc, xs, yr + (int64_t)c0 * ldy, ldy, pk, pd, NR, 3, 0, 0); break;
        case 2: tile_tq1(n, x, 0, rr, xc, xs, yr + (int64_t)c0 * ldy, ldy, pk, pd, NR, 2, 0, 0); break;
        case 1: tile_tq1(n, x, 0, rr, xc, xs, yr + (int64_t)c0 * ldy, ldy, pk, pd, NR, 1, 0, 0); break;
        default: break;
        }
    }
    free(buf);
    return 1;
}

TGT KV_AVX512_GEMM_PROTO(tq1_0) {
    if (nc >= TQ1_PK_COLS && nr > 0 && n >= KV_QK_K && tq1_pk_gemm(n, w, ws, nr, x, xs, nc, y, ldy, 0)) return;
    kv_avx512_gemm_dec_tq1_0(n, w, ws, nr, x, xs, nc, y, ldy);
}
TGT KV_AVX512_GEMM_IL_PROTO(tq1_0) {
    if (nc >= TQ1_PK_COLS && nr > 0 && n >= KV_QK_K && tq1_pk_gemm(n, w, ws, nr, x, xs, nc, y, ldy, 1)) return;
    kv_avx512_gemm_il_dec_tq1_0(n, w, ws, nr, x, xs, nc, y, ldy);
}
TGT KV_AVX512_DOT_PROTO(tq1_0) { tile_tq1_0(n, x, 0, 1, y, 0, s, 1, 1, 1, 0, 0); }

/* ------------------------------------------------------------ I2_S x I8_S */

INL void tile_i2_s(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, float *y, int64_t ldy,
                   const int NR, const int NC, const int il, const int pfo) {
    const int64_t nb = n / KV_QK_I2_S;
    ROWS(W, NR, 32);
    COLS(X, NC);
    const __m512i m3 = _mm512_set1_epi8(3), s0 = sh2(6, 4), s1 = sh2(2, 0);
    __m512i acc[MR][MC];
    UNR
    for (int r = 0; r < NR; r++) {
        UNR
        for (int c = 0; c < NC; c++) acc[r][c] = _mm512_setzero_si512();
    }
    for (int64_t i = 0; i < nb; i++) {
        PF_STEP(W, NR, NC, nb, i, 32);
        UNR
        for (int r = 0; r < NR; r++) {
            const __m512i b = bcast256(W[r] + i * bst);
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
DEF_GEMM(, i2_s, tile_i2_s, KV_AVX512_NR_I2S)
TGT KV_AVX512_DOT_PROTO(i2_s) { tile_i2_s(n, x, 0, 1, y, 0, s, 1, 1, 1, 0, 0); }

#endif /* KV_X86_SIMD */
