/* SIMD kernels (src/quant only): AVX2 + FMA + F16C in simd_avx2.c, AVX-512
 * (F/BW/DQ/VL/VNNI) in simd_avx512.c, ARM64 NEON in simd_neon.c (its integer
 * kernels twice, from simd_neon_int.h: plain ARMv8.0 NEON and with the dot
 * product instructions), the per-ISA tables in quant_dispatch.c. Each file
 * compiles its functions with a target attribute (pragma), so the library
 * is built for baseline x86-64 / ARMv8.0-A and picks a kernel at run time;
 * on other architectures only the scalar code exists.
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
/* aarch64 Linux with GCC: the dispatch reads getauxval(AT_HWCAP), and the
 * dotprod copy is compiled under GCC's target pragma (clang and macOS get
 * the scalar code for now) */
#if defined(__aarch64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && !defined(KV_NO_SIMD)
#define KV_ARM_SIMD 1
#else
#define KV_ARM_SIMD 0
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

/* Decode (fewer than KV_PF_COLS columns) is bound by reading the weights
 * from memory once, and a register tile reads NR contiguous rows chunk by
 * chunk: in address order that is NR short interleaved streams (one per
 * row), which hardware prefetchers follow unevenly (some CPUs stream one
 * sequential run at twice the rate of several interleaved ones, others
 * need several runs in flight to reach their bandwidth). So the tiles do not
 * rely on them: a thread's rows are one contiguous range of the matrix, and
 * at each block step a tile asks for the next bytes of that range in
 * ascending order, as one sequential stream running KV_PF_AHEAD bytes past
 * the end of the current tile (NR rows further on). That stream advances
 * NR * len bytes per step, exactly the tile's consumption, so every weight
 * line is requested once, in linear order, about one tile plus
 * KV_PF_AHEAD bytes before its first use, whatever NR and the row length.
 * It goes to L2 (prefetcht1): a tile ahead of rows of up to 16 KB is well
 * inside any L2, and L1 is left to the demand loads. The distance must cover
 * memory latency times bandwidth (~100 ns x 30 GB/s = 3 KB per thread); the
 * tile plus 4 KB covers it on any current x86 memory system. When the rows
 * are not contiguous (ws larger than the row), the same bytes of the next
 * tile's rows are asked for instead. Past the last row this touches nothing
 * that matters: a prefetch never faults. */
#define KV_PF_COLS 4
#define KV_PF_AHEAD 4096
/* the linear stream: lines of [w0 + NR * ws + KV_PF_AHEAD + NR * off, ... + NR * len) */
static inline void kv_pf_stream(const uint8_t *w0, int NR, uint64_t ws, uint64_t off, size_t len) {
    const uintptr_t a = (uintptr_t)w0 + (uint64_t)NR * ws + KV_PF_AHEAD + (uint64_t)NR * off;
    const uintptr_t e = a + (uintptr_t)NR * len;
    for (uintptr_t p = a & ~(uintptr_t)63; p < e; p += 64) __builtin_prefetch((const void *)p, 0, 2);
}
/* The start of a decode call's rows, which no earlier tile asked for: the
 * first tile and KV_PF_AHEAD bytes beyond, at most 2 * KV_PF_AHEAD bytes (a
 * longer burst would only queue up behind the fill buffers), within the
 * nr rows of the call. */
static inline void kv_pf_head(const void *w, int nr, uint64_t ws, int NR) {
    uint64_t len = (uint64_t)(nr < NR ? nr : NR) * ws + KV_PF_AHEAD;
    if (len > (uint64_t)nr * ws) len = (uint64_t)nr * ws;
    if (len > 2 * KV_PF_AHEAD) len = 2 * KV_PF_AHEAD;
    const uintptr_t a = (uintptr_t)w;
    for (uintptr_t p = a & ~(uintptr_t)63; p < a + len; p += 64) __builtin_prefetch((const void *)p, 0, 2);
}
/* block step off (len bytes of each of the tile's rows, rows of nb blocks) */
static inline void kv_pf_next(const uint8_t *const *W, int NR, uint64_t ws, int64_t nb, uint64_t off, size_t len) {
    if (ws == (uint64_t)nb * len) {
        kv_pf_stream(W[0], NR, ws, off, len);
        return;
    }
    for (int r = 0; r < NR; r++) {
        const char *p = (const char *)W[r] + (uint64_t)NR * ws + off;
        for (size_t o = 0; o < len; o += 64) __builtin_prefetch(p + o, 0, 3);
    }
}

/* Over the row-interleaved layout (quant.h) a call's rows are already one
 * ascending stream, read unit group after unit group; the prefetch is the
 * same stream KV_PF_IL_AHEAD bytes ahead of the group being read (the
 * latency x bandwidth argument above), plus the start of the call. */
#ifndef KV_PF_IL_AHEAD
#define KV_PF_IL_AHEAD 4096
#endif
#ifndef KV_PF_IL_LOC
#define KV_PF_IL_LOC 2 /* __builtin_prefetch locality: 3 prefetcht0, 2 prefetcht1 */
#endif
static inline void kv_pf_il(const uint8_t *p, size_t len) {
    const uintptr_t a = (uintptr_t)p + KV_PF_IL_AHEAD, e = a + len;
    for (uintptr_t q = a & ~(uintptr_t)63; q < e; q += 64) __builtin_prefetch((const void *)q, 0, KV_PF_IL_LOC);
}
static inline void kv_pf_il_head(const void *w, uint64_t bytes) {
    const uintptr_t a = (uintptr_t)w;
    const uint64_t len = bytes < KV_PF_IL_AHEAD ? bytes : KV_PF_IL_AHEAD;
    for (uintptr_t p = a & ~(uintptr_t)63; p < a + len; p += 64) __builtin_prefetch((const void *)p, 0, KV_PF_IL_LOC);
}

/* whether the decode kernels prefetch (kv_quant_set_prefetch; read once per gemm call) */
int kv_quant_prefetch_on(void);

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

/* gemm over the row-interleaved layout (quant.h), for the weight types */
#define KV_AVX2_GEMM_IL_PROTO(T) \
    void kv_avx2_gemm_il_##T(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, int nc, \
                             float *y, int64_t ldy)
KV_AVX2_GEMM_IL_PROTO(f32);
KV_AVX2_GEMM_IL_PROTO(f16);
KV_AVX2_GEMM_IL_PROTO(bf16);
KV_AVX2_GEMM_IL_PROTO(q8_0);
KV_AVX2_GEMM_IL_PROTO(q4_0);
KV_AVX2_GEMM_IL_PROTO(q4_1);
KV_AVX2_GEMM_IL_PROTO(q5_0);
KV_AVX2_GEMM_IL_PROTO(q5_1);
KV_AVX2_GEMM_IL_PROTO(q2_K);
KV_AVX2_GEMM_IL_PROTO(q3_K);
KV_AVX2_GEMM_IL_PROTO(q4_K);
KV_AVX2_GEMM_IL_PROTO(q5_K);
KV_AVX2_GEMM_IL_PROTO(q6_K);
KV_AVX2_GEMM_IL_PROTO(tq1_0);
KV_AVX2_GEMM_IL_PROTO(tq2_0);
KV_AVX2_GEMM_IL_PROTO(i2_s);
/* rows per tile of their layout: the decode tile of every AVX2 kernel */
#define KV_AVX2_IL_ROWS 4

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

#define KV_AVX512_GEMM_IL_PROTO(T) \
    void kv_avx512_gemm_il_##T(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs, int nc, \
                               float *y, int64_t ldy)
KV_AVX512_GEMM_IL_PROTO(f32);
KV_AVX512_GEMM_IL_PROTO(f16);
KV_AVX512_GEMM_IL_PROTO(bf16);
KV_AVX512_GEMM_IL_PROTO(q8_0);
KV_AVX512_GEMM_IL_PROTO(q4_0);
KV_AVX512_GEMM_IL_PROTO(q5_0);
KV_AVX512_GEMM_IL_PROTO(q4_K);
KV_AVX512_GEMM_IL_PROTO(q5_K);
KV_AVX512_GEMM_IL_PROTO(q6_K);
KV_AVX512_GEMM_IL_PROTO(tq1_0);
KV_AVX512_GEMM_IL_PROTO(tq2_0);
KV_AVX512_GEMM_IL_PROTO(i2_s);
/* rows per tile of their layouts: each kernel's decode tile */
#define KV_AVX512_IL_ROWS_FLOAT 8
#define KV_AVX512_IL_ROWS 4 /* the block types */

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

#if KV_ARM_SIMD

/* ---- simd_neon.c: kv_neon_* (ARMv8.0 NEON) and kv_neondp_* (+ dotprod) */
#define KV_NEON_PROTOS(P, T)                                                           \
    void kv_##P##_vec_dot_##T(int64_t n, float *s, const void *x, const void *y);      \
    void kv_##P##_gemm_##T(int64_t n, const void *w, uint64_t ws, int nr, const void *x, \
                           uint64_t xs, int nc, float *y, int64_t ldy)
/* float types: one version (no integer dot products in them) */
KV_NEON_PROTOS(neon, f32);
KV_NEON_PROTOS(neon, f16);
KV_NEON_PROTOS(neon, bf16);
/* integer types: both levels */
#define KV_NEON_INT(T)         \
    KV_NEON_PROTOS(neon, T);   \
    KV_NEON_PROTOS(neondp, T)
KV_NEON_INT(q8_0);
KV_NEON_INT(q4_0);
KV_NEON_INT(q8_K);
KV_NEON_INT(q4_K);
KV_NEON_INT(q6_K);
KV_NEON_INT(tq2_0);
/* register tile of the gemm kernels (rows x columns) */
#define KV_NEON_NR 4
#define KV_NEON_NC 1

void kv_neon_to_float_f16(const void *src, float *dst, int64_t n);
void kv_neon_to_float_bf16(const void *src, float *dst, int64_t n);
void kv_neon_to_float_q8_0(const void *src, float *dst, int64_t n);
void kv_neon_from_float_f16(const float *src, void *dst, int64_t n);
void kv_neon_from_float_bf16(const float *src, void *dst, int64_t n);
void kv_neon_from_float_q8_0(const float *src, void *dst, int64_t n);
void kv_neon_from_float_q8_K(const float *src, void *dst, int64_t n);
void kv_neon_mad_f32(int64_t n, float a, const void *x, float *y);
void kv_neon_mad_f16(int64_t n, float a, const void *x, float *y);

#endif /* KV_ARM_SIMD */

#endif
