#include "quant.h"

#include <stddef.h>

#include "quant_types.h"
#include "simd.h"

/* The registry (kv_quant_entries) lives in quant_dispatch.c, next to the
 * per-ISA tables. */
static const kv_quant_entry *find(uint32_t type) {
    for (size_t i = 0; i < kv_quant_n_entries; i++)
        if (kv_quant_entries[i].type == type) return &kv_quant_entries[i];
    return NULL;
}

const kv_quant_traits *kv_quant_get_isa(uint32_t type, int isa) {
    if (isa < KV_ISA_SCALAR || isa > KV_ISA_MAX || isa > kv_quant_best_isa()) return NULL;
    const kv_quant_entry *e = find(type);
    return e ? e->t[isa] : NULL;
}

const kv_quant_traits *kv_quant_get(uint32_t type) { return kv_quant_get_isa(type, kv_quant_best_isa()); }

const kv_quant_gemm *kv_quant_get_gemm_isa(uint32_t type, int isa) {
    if (isa < KV_ISA_SCALAR || isa > KV_ISA_MAX || isa > kv_quant_best_isa()) return NULL;
    const kv_quant_entry *e = find(type);
    return e ? e->g[isa] : NULL;
}

const kv_quant_gemm *kv_quant_get_gemm(uint32_t type) { return kv_quant_get_gemm_isa(type, kv_quant_best_isa()); }

kv_vec_mad_fn kv_quant_get_mad_isa(uint32_t type, int isa) {
    if (isa < KV_ISA_SCALAR || isa > KV_ISA_MAX || isa > kv_quant_best_isa()) return NULL;
    if (type == KV_F32) return kv_quant_mad_f32[isa];
    if (type == KV_F16) return kv_quant_mad_f16[isa];
    return NULL;
}

kv_vec_mad_fn kv_quant_get_mad(uint32_t type) { return kv_quant_get_mad_isa(type, kv_quant_best_isa()); }
