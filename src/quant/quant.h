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

/* NULL when the type has no compute support. */
const kv_quant_traits *kv_quant_get(uint32_t type);

#endif
