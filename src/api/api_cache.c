/* kvlm.h, section "KV cache": a page pool that sessions of one model can share
 * (src/kv/kv_pool.c). */
#include <stdlib.h>

#include "core/error.h"
#include "kv/kv_cache.h"
#include "kv/kv_disk.h"
#include "kvlm.h"
#include "model/model.h"
#include "session_impl.h"

kvlm_cache_params kvlm_cache_default_params(void) {
    kvlm_cache_params p = {
        .type_k = KVLM_KV_F16,
        .type_v = KVLM_KV_F16,
        .page_tokens = 32,
        .initial_tokens = 256,
        .max_tokens = 1 << 20,
        .growth = KVLM_GROWTH_FACTOR,
        .growth_factor = 1.5f,
        .growth_tokens = 1024,
        .cached_bytes_budget = 256ll << 20,
        .prefix_sharing = true,
        .prefetch = false,
        .disk_tier = false,
        .disk_dir = NULL,
        .disk_bytes_budget = 1ll << 30,
        .disk_zstd_level = 1,
    };
    return p;
}

kvlm_status kvlm_cache_new(const kvlm_model *model, const kvlm_cache_params *params, kvlm_cache **out,
                           kvlm_error *err) {
    kv_error_clear(err);
    if (!model || !out) return kv_fail(err, KVLM_ERR_INVALID_ARG, "cache_new: NULL argument");
    *out = NULL;
    if (model->vocab_only) return kv_fail(err, KVLM_ERR_INVALID_ARG, "cache_new: the model was loaded vocab-only");
    kvlm_cache_params p = params ? *params : kvlm_cache_default_params();
    kvlm_cache *c = calloc(1, sizeof *c);
    if (!c) return kv_fail(err, KVLM_ERR_NOMEM, "cache_new: out of memory");
    c->model = model;
    kvlm_status st = kv_pool_create(model->hp.n_layer, model->hp.n_head_kv * model->hp.head_dim, &p, &c->pool, err);
    if (st) {
        free(c);
        return st;
    }
    if (p.disk_tier) {
        uint64_t fp[2];
        kv_model_fingerprint(model, fp);
        st = kv_pool_open_disk(c->pool, fp, err);
        if (st) {
            kv_pool_destroy(c->pool);
            free(c);
            return st;
        }
    }
    *out = c;
    return KVLM_OK;
}

void kvlm_cache_free(kvlm_cache *c) {
    if (!c) return;
    kv_pool_destroy(c->pool);
    free(c);
}

void kvlm_cache_get_stats(const kvlm_cache *c, kvlm_kv_stats *st) { kv_pool_stats(c->pool, st); }
