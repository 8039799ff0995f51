/* Block structs and per-type entry points inside src/quant (not public). */
#ifndef KV_QUANT_TYPES_H
#define KV_QUANT_TYPES_H

#include <stdint.h>

#include "fp16.h"
#include "quant.h"

#define KV_QK8_0 32
typedef struct {
    kv_f16 d;
    int8_t qs[KV_QK8_0];
} kv_block_q8_0;
_Static_assert(sizeof(kv_block_q8_0) == 34, "q8_0 block");

void kv_vec_dot_f32_ref(int64_t n, float *s, const void *x, const void *y);
void kv_vec_dot_f16_ref(int64_t n, float *s, const void *x, const void *y);
void kv_vec_dot_bf16_ref(int64_t n, float *s, const void *x, const void *y);
void kv_dequantize_q8_0(const void *src, float *dst, int64_t n);
void kv_quantize_q8_0(const float *src, void *dst, int64_t n);
void kv_quantize_q8_0_ref(const float *src, void *dst, int64_t n);
void kv_vec_dot_q8_0_q8_0_ref(int64_t n, float *s, const void *x, const void *y);

extern const kv_quant_traits kv_traits_f32;
extern const kv_quant_traits kv_traits_f16;
extern const kv_quant_traits kv_traits_bf16;
extern const kv_quant_traits kv_traits_q8_0;
/* Other types are declared by their own files below this line. */

/* ---- shared helpers for the quantizers below */

/* Round to nearest, ties to even, through the 1.5*2^23 magic number, exactly
 * as ggml's reference quantizers do (valid for |v| < 2^22; larger inputs give
 * a deterministic but meaningless result). No UB for any input, NaN included. */
static inline int kv_nearest_int(float v) {
    float t = v + 12582912.0f;
    int32_t i;
    memcpy(&i, &t, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

/* ---- quant_q4_5.c: 32-element blocks Q4_0, Q4_1, Q5_0, Q5_1 and Q8_1 */
#define KV_QK4_0 32
typedef struct {
    kv_f16 d;
    uint8_t qs[KV_QK4_0 / 2]; /* element j in the low nibble of qs[j], j+16 in the high one */
} kv_block_q4_0;
_Static_assert(sizeof(kv_block_q4_0) == 18, "q4_0 block");

#define KV_QK4_1 32
typedef struct {
    kv_f16 d, m;
    uint8_t qs[KV_QK4_1 / 2];
} kv_block_q4_1;
_Static_assert(sizeof(kv_block_q4_1) == 20, "q4_1 block");

#define KV_QK5_0 32
typedef struct {
    kv_f16 d;
    uint8_t qh[4]; /* bit j of the little-endian u32: 5th bit of element j */
    uint8_t qs[KV_QK5_0 / 2];
} kv_block_q5_0;
_Static_assert(sizeof(kv_block_q5_0) == 22, "q5_0 block");

#define KV_QK5_1 32
typedef struct {
    kv_f16 d, m;
    uint8_t qh[4];
    uint8_t qs[KV_QK5_1 / 2];
} kv_block_q5_1;
_Static_assert(sizeof(kv_block_q5_1) == 24, "q5_1 block");

#define KV_QK8_1 32
typedef struct {
    kv_f16 d;
    kv_f16 s; /* d * sum(qs) */
    int8_t qs[KV_QK8_1];
} kv_block_q8_1;
_Static_assert(sizeof(kv_block_q8_1) == 36, "q8_1 block");

extern const kv_quant_traits kv_traits_q4_0;
extern const kv_quant_traits kv_traits_q4_1;
extern const kv_quant_traits kv_traits_q5_0;
extern const kv_quant_traits kv_traits_q5_1;
extern const kv_quant_traits kv_traits_q8_1;

/* ---- quant_kquants.c: 256-element super-blocks */
#define KV_K_SCALE_SIZE 12
typedef struct {
    uint8_t scales[KV_QK_K / 16]; /* low nibble scale, high nibble min, per 16 */
    uint8_t qs[KV_QK_K / 4];
    kv_f16 d, dmin;
} kv_block_q2_K;
_Static_assert(sizeof(kv_block_q2_K) == 84, "q2_K block");

typedef struct {
    uint8_t hmask[KV_QK_K / 8];
    uint8_t qs[KV_QK_K / 4];
    uint8_t scales[12]; /* 16 6-bit scales */
    kv_f16 d;
} kv_block_q3_K;
_Static_assert(sizeof(kv_block_q3_K) == 110, "q3_K block");

typedef struct {
    kv_f16 d, dmin;
    uint8_t scales[KV_K_SCALE_SIZE]; /* 8 6-bit scales and 8 6-bit mins */
    uint8_t qs[KV_QK_K / 2];
} kv_block_q4_K;
_Static_assert(sizeof(kv_block_q4_K) == 144, "q4_K block");

typedef struct {
    kv_f16 d, dmin;
    uint8_t scales[KV_K_SCALE_SIZE];
    uint8_t qh[KV_QK_K / 8];
    uint8_t qs[KV_QK_K / 2];
} kv_block_q5_K;
_Static_assert(sizeof(kv_block_q5_K) == 176, "q5_K block");

typedef struct {
    uint8_t ql[KV_QK_K / 2];
    uint8_t qh[KV_QK_K / 4];
    int8_t scales[KV_QK_K / 16];
    kv_f16 d;
} kv_block_q6_K;
_Static_assert(sizeof(kv_block_q6_K) == 210, "q6_K block");

typedef struct {
    float d;
    int8_t qs[KV_QK_K];
    int16_t bsums[KV_QK_K / 16]; /* sum of qs over each run of 16 */
} kv_block_q8_K;
_Static_assert(sizeof(kv_block_q8_K) == 292, "q8_K block");

/* The lane split shared by every 256-element type against Q8_K: 8 lanes;
 * element i of the super-block belongs to lane (i % 32) / 4, i.e. lane l
 * holds elements 32c + 4l + k (c = 0..7, k = 0..3). isum[l] is the exact
 * int32 sum over its 32 elements of sc16[i / 16] * w[i] * y[i]. */
void kv_qk_lane_sums(const int8_t *w, const int8_t *y, const int32_t sc16[16], int32_t isum[8]);

extern const kv_quant_traits kv_traits_q2_K;
extern const kv_quant_traits kv_traits_q3_K;
extern const kv_quant_traits kv_traits_q4_K;
extern const kv_quant_traits kv_traits_q5_K;
extern const kv_quant_traits kv_traits_q6_K;
extern const kv_quant_traits kv_traits_q8_K;

/* ---- quant_ternary.c: TQ1_0, TQ2_0 (ggml) and I2_S (bitnet.cpp) */
typedef struct {
    uint8_t qs[(KV_QK_K - 4 * KV_QK_K / 64) / 5]; /* 5 trits a byte, 240 elements */
    uint8_t qh[KV_QK_K / 64];                     /* 4 trits a byte, 16 elements */
    kv_f16 d;
} kv_block_tq1_0;
_Static_assert(sizeof(kv_block_tq1_0) == 54, "tq1_0 block");

typedef struct {
    uint8_t qs[KV_QK_K / 4]; /* 2-bit codes 0,1,2 = -1,0,+1 */
    kv_f16 d;
} kv_block_tq2_0;
_Static_assert(sizeof(kv_block_tq2_0) == 66, "tq2_0 block");

/* I2_S (ggml id 36, bitnet.cpp x86 layout): the whole tensor is flattened and
 * cut into 128-value blocks of 32 bytes; value 32g + j of a block (g = 0..3,
 * j = 0..31) is the 2-bit code at bit shift 6 - 2g of byte j; codes 0, 1, 2
 * mean -1, 0, +1 (3 never occurs; to_float reads it as 0). After the n/4
 * packed bytes comes a 32-byte tail whose first 4 bytes are the f32 scale
 * of the whole tensor.
 *   to_float(src, dst, n): the UNSCALED values -1/0/+1 of n elements starting
 *     at src (any whole number of 128-blocks, e.g. one row); multiply by
 *     kv_i2_s_scale() of the tensor.
 *   from_float_ref(src, dst, n): quantizes a WHOLE tensor of n values as
 *     bitnet.cpp's quantize_i2_s does (scale = max|x|, code = sign of x, 0
 *     where |x| < 1e-6) and writes n/4 + 32 bytes: the codes and the tail.
 *   vec_dot(n, s, x, y): x is n/4 packed bytes (a row; n a multiple of
 *     128), y a KV_I8_S row of n; as bitnet.cpp computes it,
 *     *s = ((float)raw - (float)y.sum) / y.scale with raw = sum code * y.qs
 *     (so sum (code - 1) * y.qs / y.scale; a code 3 would count as +2 here);
 *     the caller multiplies by the tensor scale.
 * Row addressing: row r of a tensor with rows of n is at data + r * n / 4;
 * kv_dtype_row_bytes(KV_I2_S, n) gives n / 4, which excludes the tail. */
#define KV_QK_I2_S 128
#define KV_I2_S_TAIL 32
float kv_i2_s_scale(const void *tensor_data, int64_t n_elements);

/* KV_I8_S: the activation type I2_S is dotted with (never in files, so not in
 * core/dtype.h). bitnet.cpp's quantize_row_i8_s: one scale per row,
 * scale = 127 / max(1e-5, max|x|) (kept as the float multiplier, not its
 * inverse), q = round-half-away(x * scale) clamped to [-128, 127], plus the
 * int32 sum of q. A row of n values is laid out as the header below followed
 * by n int8 values: kv_i8_s_row_bytes(n) bytes. dequantized x = q / scale. */
#define KV_I8_S 40
typedef struct {
    float scale;
    int32_t sum;
} kv_i8_s_head;
_Static_assert(sizeof(kv_i8_s_head) == 8, "i8_s head");
static inline int64_t kv_i8_s_row_bytes(int64_t n) { return (int64_t)sizeof(kv_i8_s_head) + n; }

extern const kv_quant_traits kv_traits_tq1_0;
extern const kv_quant_traits kv_traits_tq2_0;
extern const kv_quant_traits kv_traits_i2_s;
extern const kv_quant_traits kv_traits_i8_s;

#endif
