/* Tensor element types, numbered as in GGUF files (ggml's type ids), with
 * their block geometry. This table is what the GGUF reader validates sizes
 * against; compute support lives in src/quant. */
#ifndef KV_CORE_DTYPE_H
#define KV_CORE_DTYPE_H

#include <stdbool.h>
#include <stdint.h>

typedef enum kv_dtype {
    KV_F32 = 0, KV_F16 = 1, KV_Q4_0 = 2, KV_Q4_1 = 3, KV_Q5_0 = 6, KV_Q5_1 = 7,
    KV_Q8_0 = 8, KV_Q8_1 = 9, KV_Q2_K = 10, KV_Q3_K = 11, KV_Q4_K = 12,
    KV_Q5_K = 13, KV_Q6_K = 14, KV_Q8_K = 15, KV_IQ2_XXS = 16, KV_IQ2_XS = 17,
    KV_IQ3_XXS = 18, KV_IQ1_S = 19, KV_IQ4_NL = 20, KV_IQ3_S = 21, KV_IQ2_S = 22,
    KV_IQ4_XS = 23, KV_I8 = 24, KV_I16 = 25, KV_I32 = 26, KV_I64 = 27, KV_F64 = 28,
    KV_IQ1_M = 29, KV_BF16 = 30, KV_TQ1_0 = 34, KV_TQ2_0 = 35,
    KV_I2_S = 36, /* bitnet.cpp: 2-bit ternary, one f32 scale per tensor after the data */
    KV_DTYPE_COUNT = 37,
} kv_dtype;

#define KV_QK_K 256

typedef struct kv_dtype_info {
    const char *name;  /* NULL for ids that are not a type */
    int32_t block_size; /* elements per block */
    int32_t type_size;  /* bytes per block */
} kv_dtype_info;

/* NULL when t is not a known type id. */
const kv_dtype_info *kv_dtype_get(uint32_t t);
const char *kv_dtype_name(uint32_t t); /* "?" for unknown ids */

/* Bytes taken by one row of n elements; false if n is not a whole number of
 * blocks, the type is unknown, or the size overflows. I2_S rows have no
 * per-row meaning in the file layout and use n/4 bytes. */
bool kv_dtype_row_bytes(uint32_t t, uint64_t n, uint64_t *bytes);

/* Bytes taken by a whole tensor of n_elements whose rows have row_len
 * elements (I2_S adds its 32-byte scale tail). */
bool kv_dtype_tensor_bytes(uint32_t t, uint64_t row_len, uint64_t n_elements, uint64_t *bytes);

/* Overflow-checked helpers. */
static inline bool kv_mul_u64(uint64_t a, uint64_t b, uint64_t *r) {
    return !__builtin_mul_overflow(a, b, r);
}
static inline bool kv_add_u64(uint64_t a, uint64_t b, uint64_t *r) {
    return !__builtin_add_overflow(a, b, r);
}

#endif
