/* The KV cache of one sequence: per layer, one K row and one V row per token
 * position, stored in the cache's types (quantize-on-write). This simple
 * contiguous layout is the foundation's; the paged cache replaces it. */
#ifndef KV_KV_CACHE_H
#define KV_KV_CACHE_H

#include <stdint.h>

#include "kvlm.h"

typedef struct kv_cache {
    int32_t n_layer, n_ctx, kv_dim, head_dim;
    uint32_t type_k, type_v;
    uint64_t k_row_bytes, v_row_bytes;     /* one token, all kv heads */
    uint64_t k_head_bytes, v_head_bytes;   /* one token, one kv head */
    uint8_t **k, **v;                      /* [n_layer] -> n_ctx rows */
    int32_t n;                             /* tokens stored */
    int32_t *tokens;                       /* the token at each position */
} kv_cache;

kvlm_status kv_cache_new(int32_t n_layer, int32_t n_ctx, int32_t n_head_kv, int32_t head_dim, uint32_t type_k,
                         uint32_t type_v, kv_cache **out, kvlm_error *err);
void kv_cache_free(kv_cache *c);

static inline uint8_t *kv_cache_k_row(const kv_cache *c, int layer, int32_t pos) {
    return c->k[layer] + (uint64_t)pos * c->k_row_bytes;
}
static inline uint8_t *kv_cache_v_row(const kv_cache *c, int layer, int32_t pos) {
    return c->v[layer] + (uint64_t)pos * c->v_row_bytes;
}

/* Bytes allocated for K and V. */
uint64_t kv_cache_bytes(const kv_cache *c);

#endif
