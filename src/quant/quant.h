/* Compute support per tensor type: dequantize a row, quantize a row, and the
 * scalar reference dot product against the type activations are converted to
 * (vec_dot_type), as llama.cpp pairs them. Layouts are byte-identical to
 * ggml / bitnet.cpp so that real files load. */
#ifndef KV_QUANT_H
#define KV_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"

typedef void (*kv_to_float_fn)(const void *src, float *dst, int64_t n);
typedef void (*kv_from_float_fn)(const float *src, void *dst, int64_t n);
/* *s = dot(x[0..n), y[0..n)) with x in the weight type and y in vec_dot_type. */
typedef void (*kv_vec_dot_fn)(int64_t n, float *s, const void *x, const void *y);

typedef struct kv_quant_traits {
    uint32_t type;
    kv_to_float_fn to_float;     /* dequantize n elements (n a multiple of the block) */
    kv_from_float_fn from_float; /* quantize n elements as llama.cpp's CPU backend does
                                    for activations (may round differently from _ref) */
    kv_from_float_fn from_float_ref; /* quantize as llama-quantize does (reference rounding) */
    uint32_t vec_dot_type;       /* what the other operand is converted to */
    kv_vec_dot_fn vec_dot;       /* scalar reference */
} kv_quant_traits;

/* Canonical reduction order. Every vec_dot defines one fixed order of
 * floating-point operations, independent of who calls it, so results are
 * batch-invariant; SIMD versions must reproduce the scalar reference bit for
 * bit. Float types (F32/F16/BF16): 16 lanes, lane j accumulates elements
 * i = j (mod 16) with fmaf in increasing i, then a tree reduction
 * (lanes j += j+8, j += j+4, j += j+2, j += j+1). Q8_0 x Q8_0: per block, 8
 * lanes of exact int32 sums of 4 consecutive products; lane l does
 * acc[l] = fmaf(dx*dy, (float)isum_l, acc[l]) block after block; then the
 * tree reduction over 8 lanes. */
float kv_dot_reduce16(float acc[16]);
float kv_dot_reduce8(float acc[8]);

/* NULL when the type has no compute support. The function pointers are the
 * fastest implementation the running CPU supports (see kv_quant_best_isa);
 * every one of them gives the same bits as the scalar reference. */
const kv_quant_traits *kv_quant_get(uint32_t type);

/* ---- instruction-set dispatch (src/quant/quant_dispatch.c) */

/* Levels 1 and 2 are the x86 ISAs on x86-64 builds and the ARM ones on
 * aarch64 builds (a build has one or the other, so they share the slots). */
enum {
    KV_ISA_SCALAR = 0,   /* the scalar references (any CPU) */
    KV_ISA_AVX2 = 1,     /* x86-64 with AVX2, FMA and F16C */
    KV_ISA_AVX512 = 2,   /* + AVX-512 F/BW/DQ/VL/VNNI */
    KV_ISA_NEON = 1,     /* aarch64 with Advanced SIMD (every ARMv8-A CPU) */
    KV_ISA_NEON_DOT = 2, /* + the dot product instructions (hwcap asimddp: sdot) */
    KV_ISA_MAX = 2,      /* the highest level */
};

/* The best ISA this CPU (and OS) supports; KV_ISA_SCALAR on builds for
 * other architectures (or -DKV_NO_SIMD). Cheap (a few loads, no system
 * call): it is evaluated on every call, nothing is cached. */
int kv_quant_best_isa(void);
/* "scalar", "avx2", "avx512" (x86-64), "neon", "neon-dotprod" (aarch64) or "?" */
const char *kv_quant_isa_name(int isa);

/* The traits of one ISA, for tests and benchmarks: NULL when the type has no
 * compute support or the CPU cannot run that ISA. Kernels an ISA has no
 * special version of fall back to the next lower ISA's (ultimately the
 * scalar reference), so every table is complete. isa 0 is the scalar
 * reference itself. */
const kv_quant_traits *kv_quant_get_isa(uint32_t type, int isa);

/* Matrix-matrix kernel, for prefill (several tokens) and for decode
 * (nc = 1, several rows at a time):
 *     y[c * ldy + r] = vec_dot(n, w + r * w_stride, x + c * x_stride)
 * for 0 <= r < nr, 0 <= c < nc (w: rows of the weight type, x: rows of its
 * vec_dot_type; strides in bytes, rows aligned as vec_dot needs them; ldy
 * in floats). Each output is bit-identical to vec_dot (hence to the scalar
 * reference): the shape of the call never changes a result. Any nr, nc >= 0
 * is accepted; the kernel walks register tiles of up to gemm->nr rows by
 * gemm->nc columns, row tiles outer, so a weight tile is loaded once for all
 * nc columns (it stays in L1) and an activation block once per row tile.
 * Passing a thread's whole row range and all tokens in one call is the
 * intended use. */
typedef void (*kv_gemm_fn)(int64_t n, const void *w, uint64_t w_stride, int nr, const void *x, uint64_t x_stride,
                           int nc, float *y, int64_t ldy);

typedef struct kv_quant_gemm {
    uint32_t type;  /* the weight type */
    int32_t isa;    /* the ISA of this kernel (a fallback reports its own) */
    kv_gemm_fn gemm;
    int32_t nr, nc; /* its register tile (rows x columns), for information */
    /* The same kernel over weights in the row-interleaved layout of il_rows
     * rows (below); il_rows 0 and gemm_il NULL where there is none (the
     * scalar ISA: it reads the file's layout only). */
    int32_t il_rows;
    kv_gemm_fn gemm_il;
} kv_quant_gemm;

/* Best for the running CPU / for one ISA (NULL as for kv_quant_get_isa).
 * The scalar ISA's gemm is a loop over the scalar vec_dot. */
const kv_quant_gemm *kv_quant_get_gemm(uint32_t type);
const kv_quant_gemm *kv_quant_get_gemm_isa(uint32_t type, int isa);

/* ---- Row-interleaved weight layout (src/quant/interleave.c)
 *
 * A register tile of a gemm kernel reads R rows one unit at a time: a block
 * of each row in turn (16 elements for F32/F16/BF16). With the rows one
 * after the other, as files store them, that is R short streams at a row's
 * distance from each other, which hardware prefetchers follow unevenly. In
 * the interleaved layout of R rows the same reads are one ascending stream:
 * the matrix is cut into tiles of R rows (the last may have fewer, rr), a
 * tile starts where its first row started (row r0 at r0 * row bytes), and
 * inside a tile of rr rows unit i of row r is at (i * rr + r) * unit bytes.
 * The bytes of each unit are unchanged and the kernels do the same
 * arithmetic in the same order, so every output keeps its bits; a model
 * repacks its matrices once at load (src/model).
 *
 * gemm_il(n, w, ws, nr, x, xs, nc, y, ldy) is gemm over such a matrix with
 * ws its row bytes: w must be the start of a tile (a row index that is a
 * multiple of il_rows), and nr either reaches the last row of the matrix or
 * is a multiple of il_rows (tiles are whole). */

/* Bytes of the unit the layout moves for rows of n elements of type; 0 when
 * rows of that type and length are not interleaved (types without
 * kernels for it, float rows whose length is not a multiple of 16). */
size_t kv_il_unit(uint32_t type, int64_t n);
/* nrows rows of src (row stride src_stride bytes, n elements each) into
 * dst in the layout of R rows (1 <= R <= 64; nrows * row bytes; dst must
 * not overlap src). Does nothing when kv_il_unit(type, n) is 0. */
void kv_il_pack(uint32_t type, int64_t n, int64_t nrows, int R, const void *src, uint64_t src_stride, void *dst);
/* Row `row` of such a matrix of nrows rows back into its file layout
 * (row bytes at dst). */
void kv_il_row(uint32_t type, int64_t n, int64_t nrows, int R, const void *il, int64_t row, void *dst);

/* For benchmarks: 0 turns the software prefetch of the gemm kernels off
 * (both layouts), anything else back on (the default). Process-wide; calls
 * already running keep what they read at their start. Results do not
 * change, only speed. */
void kv_quant_set_prefetch(int on);

/* y[i] = fmaf(a, x[i], y[i]) for 0 <= i < n, x of type KV_F32 or KV_F16
 * (converted exactly first): attention's weighted sum of values. Each
 * element is one fma, so every ISA gives the same bits. NULL for other
 * types or an ISA the CPU lacks. Look it up once, outside the loops. */
typedef void (*kv_vec_mad_fn)(int64_t n, float a, const void *x, float *y);
kv_vec_mad_fn kv_quant_get_mad(uint32_t type);
kv_vec_mad_fn kv_quant_get_mad_isa(uint32_t type, int isa);

/* nrows kv_vec_mad_fn steps in one call (src/quant/mad_rows.c): for r in
 * order, y[i] = fmaf(a[r], x[r][i], y[i]), x[r] rows of KV_F32, KV_F16 or
 * KV_Q8_0 (n a multiple of 32; x[r][i] = d * q[i], exact, so the bits of
 * dequantizing first). The same bits as nrows separate calls, on every ISA;
 * y stays in registers across the rows. NULL for other types or an ISA the
 * CPU lacks. */
typedef void (*kv_vec_mad_rows_fn)(int64_t n, int nrows, const float *a, const void *const *x, float *y);
kv_vec_mad_rows_fn kv_quant_get_mad_rows(uint32_t type);
kv_vec_mad_rows_fn kv_quant_get_mad_rows_isa(uint32_t type, int isa);

#endif
