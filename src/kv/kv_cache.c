#include "kv_cache.h"

#include <stdlib.h>

#include "core/dtype.h"
#include "core/error.h"
#include "quant/quant.h"

kvlm_status kv_cache_new(int32_t n_layer, int32_t n_ctx, int32_t n_head_kv, int32_t head_dim, uint32_t type_k,
                         uint32_t type_v, kv_cache **out, kvlm_error *err) {
    *out = NULL;
    if (n_layer <= 0 || n_ctx <= 0 || n_head_kv <= 0 || head_dim <= 0)
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "kv cache: bad geometry");
    const kv_quant_traits *tk = kv_quant_get(type_k), *tv = kv_quant_get(type_v);
    if (!tk || !tv) return kv_fail(err, KVLM_ERR_UNSUPPORTED, "kv cache: unsupported storage type");
    kv_cache *c = calloc(1, sizeof *c);
    if (!c) return kv_fail(err, KVLM_ERR_NOMEM, "kv cache: out of memory");
    c->n_layer = n_layer;
    c->n_ctx = n_ctx;
    c->kv_dim = n_head_kv * head_dim;
    c->head_dim = head_dim;
    c->type_k = type_k;
    c->type_v = type_v;
    if (!kv_dtype_row_bytes(type_k, (uint64_t)head_dim, &c->k_head_bytes) ||
        !kv_dtype_row_bytes(type_v, (uint64_t)head_dim, &c->v_head_bytes)) {
        kv_cache_free(c);
        return kv_fail(err, KVLM_ERR_UNSUPPORTED, "kv cache: head size %d is not a whole number of %s/%s blocks",
                       head_dim, kv_dtype_name(type_k), kv_dtype_name(type_v));
    }
    c->k_row_bytes = c->k_head_bytes * (uint64_t)n_head_kv;
    c->v_row_bytes = c->v_head_bytes * (uint64_t)n_head_kv;
    c->k = calloc((size_t)n_layer, sizeof *c->k);
    c->v = calloc((size_t)n_layer, sizeof *c->v);
    c->tokens = calloc((size_t)n_ctx, sizeof *c->tokens);
    if (!c->k || !c->v || !c->tokens) {
        kv_cache_free(c);
        return kv_fail(err, KVLM_ERR_NOMEM, "kv cache: out of memory");
    }
    for (int l = 0; l < n_layer; l++) {
        c->k[l] = malloc(c->k_row_bytes * (uint64_t)n_ctx);
        c->v[l] = malloc(c->v_row_bytes * (uint64_t)n_ctx);
        if (!c->k[l] || !c->v[l]) {
            kv_cache_free(c);
            return kv_fail(err, KVLM_ERR_NOMEM, "kv cache: out of memory for %d tokens", n_ctx);
        }
    }
    *out = c;
    return KVLM_OK;
}

void kv_cache_free(kv_cache *c) {
    if (!c) return;
    for (int l = 0; l < c->n_layer; l++) {
        if (c->k) free(c->k[l]);
        if (c->v) free(c->v[l]);
    }
    free(c->k);
    free(c->v);
    free(c->tokens);
    free(c);
}

uint64_t kv_cache_bytes(const kv_cache *c) {
    return (c->k_row_bytes + c->v_row_bytes) * (uint64_t)c->n_ctx * (uint64_t)c->n_layer;
}
