/* SIMD kernels (src/quant only): AVX2 + FMA + F16C in simd_avx2.c, AVX-512
 * (F/BW/DQ/VL/VNNI) in simd_avx512.c, the per-ISA tables in
 * quant_dispatch.c. Each file compiles its functions with a target
 * attribute, so the library is built for baseline x86-64 and picks a
 * kernel at run time; on other architectures only the scalar code exists.
 *
 * Every kernel reproduces the canonical reduction order of its scalar
 * reference (quant.h and the top of each quant_*.c): the same per-lane
 * integer sums (exact, so they may be formed in any order), the same float
 * operations per lane (fma where the reference has fmaf) and the same final
 * tree. Results are bit-identical; the only freedom left is which payload
 * a NaN result carries when two different NaNs meet (not specified by the
 * references either). */
#ifndef KV_QUANT_SIMD_H
#define KV_QUANT_SIMD_H

#include <stddef.h>
#include <stdint.h>

#include "quant.h"

/* -DKV_NO_SIMD builds the scalar references only (as on other architectures). */
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && !defined(KV_NO_SIMD)
#define KV_X86_SIMD 1
#else
#define KV_X86_SIMD 0
#endif

/* One row of the registry (quant_dispatch.c): the traits and gemm of each
 * ISA (NULL where the build has no such kernels). */
typedef struct kv_quant_entry {
    uint32_t type;
    const kv_quant_traits *t[3];
    const kv_quant_gemm *g[3];
} kv_quant_entry;
extern const kv_quant_entry kv_quant_entries[];
extern const size_t kv_quant_n_entries;

/* the kv_vec_mad_fn kernels of each ISA for F32 and F16 values */
extern const kv_vec_mad_fn kv_quant_mad_f32[3], kv_quant_mad_f16[3];

/* Decode tiles (fewer than KV_PF_COLS columns) are bound by reading the
 * weights, and a decode step's matrices are short (a few hundred KB, rows
 * of a few hundred bytes): the hardware prefetcher alone ramps up too
 * slowly. So at block step i a tile of NR rows asks for the same bytes of
 * the next tile's rows (NR rows further on), one tile ahead of use. Past
 * the last row this touches nothing: a prefetch never faults. */
#define KV_PF_COLS 4
static inline void kv_pf_next(const uint8_t *const *W, int NR, uint64_t ws, uint64_t off, size_t len) {
    for (int r = 0; r < NR; r++) {
        const char *p = (const char *)W[r] + (uint64_t)NR * ws + off;
        for (size_t o = 0; o < len; o += 64) __builtin_prefetch(p + o, 0, 3);
    }
}

#if KV_X86_SIMD

/* ---- simd_avx2.c */
#define KV_AVX2_GEMM_PROTO(T) \
    void kv_avx2_gemm_##T(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, int nc, \
                          float *y, int64_t ldy)
#define KV_AVX2_DOT_PROTO(T) void kv_avx2_vec_dot_##T(int64_t n, float *s, const void *x, const void *y)
#define KV_AVX2_KERNELS(T) \
    KV_AVX2_DOT_PROTO(T);  \
    KV_AVX2_GEMM_PROTO(T)
KV_AVX2_KERNELS(f32);
KV_AVX2_KERNELS(f16);
KV_AVX2_KERNELS(bf16);
KV_AVX2_KERNELS(q8_0);
KV_AVX2_KERNELS(q4_0);
KV_AVX2_KERNELS(q4_1);
KV_AVX2_KERNELS(q5_0);
KV_AVX2_KERNELS(q5_1);
KV_AVX2_KERNELS(q8_1);
KV_AVX2_KERNELS(q2_K);
KV_AVX2_KERNELS(q3_K);
KV_AVX2_KERNELS(q4_K);
KV_AVX2_KERNELS(q5_K);
KV_AVX2_KERNELS(q6_K);
KV_AVX2_KERNELS(q8_K);
KV_AVX2_KERNELS(tq1_0);
KV_AVX2_KERNELS(tq2_0);
KV_AVX2_KERNELS(i2_s);
KV_AVX2_KERNELS(i8_s);

/* largest tiles of the AVX2 gemm kernels */
#define KV_AVX2_NR_FLOAT 4
#define KV_AVX2_NC_FLOAT 3
#define KV_AVX2_NR_B32 4 /* 32-element block types */
#define KV_AVX2_NC_B32 2
#define KV_AVX2_NR_K 4 /* 256-element super-block types */
#define KV_AVX2_NC_K 4
#define KV_AVX2_NR_I2S 4
#define KV_AVX2_NC_I2S 4
#define KV_AVX2_NR_I8S 4
#define KV_AVX2_NC_I8S 2

void kv_avx2_to_float_f16(const void *src, float *dst, int64_t n);
void kv_avx2_to_float_bf16(const void *src, float *dst, int64_t n);
void kv_avx2_to_float_q8_0(const void *src, float *dst, int64_t n);
void kv_avx2_from_float_f16(const float *src, void *dst, int64_t n);
void kv_avx2_from_float_bf16(const float *src, void *dst, int64_t n);
void kv_avx2_from_float_q8_0(const float *src, void *dst, int64_t n);
void kv_avx2_from_float_q8_1(const float *src, void *dst, int64_t n);
void kv_avx2_from_float_q8_K(const float *src, void *dst, int64_t n);
void kv_avx2_from_float_i8_s(const float *src, void *dst, int64_t n);
void kv_avx2_mad_f32(int64_t n, float a, const void *x, float *y);
void kv_avx2_mad_f16(int64_t n, float a, const void *x, float *y);

/* ---- simd_avx512.c */
#define KV_AVX512_GEMM_PROTO(T) \
    void kv_avx512_gemm_##T(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, int nc, \
                            float *y, int64_t ldy)
#define KV_AVX512_DOT_PROTO(T) void kv_avx512_vec_dot_##T(int64_t n, float *s, const void *x, const void *y)
#define KV_AVX512_KERNELS(T) \
    KV_AVX512_DOT_PROTO(T);  \
    KV_AVX512_GEMM_PROTO(T)
KV_AVX512_KERNELS(f32);
KV_AVX512_KERNELS(f16);
KV_AVX512_KERNELS(bf16);
KV_AVX512_KERNELS(q8_0);
KV_AVX512_KERNELS(q4_0);
KV_AVX512_KERNELS(q5_0);
KV_AVX512_KERNELS(q4_K);
KV_AVX512_KERNELS(q5_K);
KV_AVX512_KERNELS(q6_K);
KV_AVX512_KERNELS(tq1_0);
KV_AVX512_KERNELS(tq2_0);
KV_AVX512_KERNELS(i2_s);

#define KV_AVX512_NR_FLOAT 8 /* float types, fewer than 4 columns */
#define KV_AVX512_NC_FLOAT 4
#define KV_AVX512_NR_B32 4 /* Q8_0, Q4_0, Q5_0, fewer than 4 columns (row pairs) */
#define KV_AVX512_NC_B32 4
/* prefill tiles (4 or more columns, operands packed once per call / row tile) */
#define KV_AVX512_NR_FPK 8 /* float types */
#define KV_AVX512_NC_FPK 3
#define KV_AVX512_NR_PK 8 /* Q8_0, Q4_0, Q5_0 */
#define KV_AVX512_NC_PK 4
#define KV_AVX512_NR_K 4
#define KV_AVX512_NC_K 4
#define KV_AVX512_NR_I2S 4
#define KV_AVX512_NC_I2S 4

void kv_avx512_to_float_f16(const void *src, float *dst, int64_t n);
void kv_avx512_from_float_f16(const float *src, void *dst, int64_t n);

#endif /* KV_X86_SIMD */

#endif
