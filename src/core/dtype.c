#include "dtype.h"

#include <stddef.h>

static const kv_dtype_info k_types[KV_DTYPE_COUNT] = {
    [KV_F32] = {"f32", 1, 4},
    [KV_F16] = {"f16", 1, 2},
    [KV_Q4_0] = {"q4_0", 32, 18},
    [KV_Q4_1] = {"q4_1", 32, 20},
    [KV_Q5_0] = {"q5_0", 32, 22},
    [KV_Q5_1] = {"q5_1", 32, 24},
    [KV_Q8_0] = {"q8_0", 32, 34},
    [KV_Q8_1] = {"q8_1", 32, 36},
    [KV_Q2_K] = {"q2_K", 256, 84},
    [KV_Q3_K] = {"q3_K", 256, 110},
    [KV_Q4_K] = {"q4_K", 256, 144},
    [KV_Q5_K] = {"q5_K", 256, 176},
    [KV_Q6_K] = {"q6_K", 256, 210},
    [KV_Q8_K] = {"q8_K", 256, 292},
    [KV_IQ2_XXS] = {"iq2_xxs", 256, 66},
    [KV_IQ2_XS] = {"iq2_xs", 256, 74},
    [KV_IQ3_XXS] = {"iq3_xxs", 256, 98},
    [KV_IQ1_S] = {"iq1_s", 256, 50},
    [KV_IQ4_NL] = {"iq4_nl", 32, 18},
    [KV_IQ3_S] = {"iq3_s", 256, 110},
    [KV_IQ2_S] = {"iq2_s", 256, 82},
    [KV_IQ4_XS] = {"iq4_xs", 256, 136},
    [KV_I8] = {"i8", 1, 1},
    [KV_I16] = {"i16", 1, 2},
    [KV_I32] = {"i32", 1, 4},
    [KV_I64] = {"i64", 1, 8},
    [KV_F64] = {"f64", 1, 8},
    [KV_IQ1_M] = {"iq1_m", 256, 56},
    [KV_BF16] = {"bf16", 1, 2},
    [KV_TQ1_0] = {"tq1_0", 256, 54},
    [KV_TQ2_0] = {"tq2_0", 256, 66},
    [KV_I2_S] = {"i2_s", 4, 1},
};

const kv_dtype_info *kv_dtype_get(uint32_t t) {
    if (t >= KV_DTYPE_COUNT || k_types[t].name == NULL) return NULL;
    return &k_types[t];
}

const char *kv_dtype_name(uint32_t t) {
    const kv_dtype_info *i = kv_dtype_get(t);
    return i ? i->name : "?";
}

bool kv_dtype_row_bytes(uint32_t t, uint64_t n, uint64_t *bytes) {
    const kv_dtype_info *i = kv_dtype_get(t);
    if (!i || n % (uint64_t)i->block_size != 0) return false;
    return kv_mul_u64(n / (uint64_t)i->block_size, (uint64_t)i->type_size, bytes);
}

bool kv_dtype_tensor_bytes(uint32_t t, uint64_t row_len, uint64_t n_elements, uint64_t *bytes) {
    const kv_dtype_info *i = kv_dtype_get(t);
    if (!i || row_len == 0 || n_elements % row_len != 0) return false;
    if (t == KV_I2_S) {
        /* packed 4 values a byte over the flattened tensor, in 128-value
         * blocks, then a 32-byte tail holding the f32 scale */
        if (n_elements % 128 != 0) return false;
        return kv_add_u64(n_elements / 4, 32, bytes);
    }
    uint64_t rb;
    if (!kv_dtype_row_bytes(t, row_len, &rb)) return false;
    return kv_mul_u64(rb, n_elements / row_len, bytes);
}
