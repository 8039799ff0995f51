#include "quant.h"

#include <stddef.h>

#include "quant_types.h"

/* The registry of types with compute support. */
static const kv_quant_traits *const k_registry[] = {
    &kv_traits_f32,
    &kv_traits_f16,
    &kv_traits_bf16,
    &kv_traits_q8_0,
    &kv_traits_q4_0,
    &kv_traits_q4_1,
    &kv_traits_q5_0,
    &kv_traits_q5_1,
    &kv_traits_q8_1,
    &kv_traits_q2_K,
    &kv_traits_q3_K,
    &kv_traits_q4_K,
    &kv_traits_q5_K,
    &kv_traits_q6_K,
    &kv_traits_q8_K,
    &kv_traits_tq1_0,
    &kv_traits_tq2_0,
    &kv_traits_i2_s,
    &kv_traits_i8_s, /* KV_I8_S (40): I2_S activations, not a file type */
};

const kv_quant_traits *kv_quant_get(uint32_t type) {
    for (size_t i = 0; i < sizeof k_registry / sizeof k_registry[0]; i++)
        if (k_registry[i]->type == type) return k_registry[i];
    return NULL;
}
