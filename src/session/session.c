/* kvlm.h: sessions — a KV cache, scratch and a thread pool over a shared model. */
#include <stdatomic.h>
#include <stdlib.h>

#include "core/dtype.h"
#include "core/error.h"
#include "core/pool.h"
#include "forward/forward.h"
#include "kv/kv_cache.h"
#include "kvlm.h"
#include "model/model.h"

#define KV_UBATCH 256

struct kvlm_session {
    kvlm_model *model;
    kv_cache *cache;
    kv_pool *pool;
    kv_forward *fwd;
    atomic_int busy; /* one call at a time */
};

kvlm_session_params kvlm_session_default_params(void) {
    kvlm_session_params p = {.n_ctx = 0, .n_threads = 0};
    return p;
}

kvlm_status kvlm_session_new(kvlm_model *model, const kvlm_session_params *params, kvlm_session **out,
                             kvlm_error *err) {
    kv_error_clear(err);
    if (!model || !out) return kv_fail(err, KVLM_ERR_INVALID_ARG, "session_new: NULL argument");
    *out = NULL;
    if (model->vocab_only) return kv_fail(err, KVLM_ERR_INVALID_ARG, "session_new: the model was loaded vocab-only");
    kvlm_session_params p = params ? *params : kvlm_session_default_params();
    const kv_hparams *hp = &model->hp;
    int32_t n_ctx = p.n_ctx > 0 ? p.n_ctx : hp->n_ctx_train;
    if (n_ctx > (1 << 24)) return kv_fail(err, KVLM_ERR_INVALID_ARG, "session_new: n_ctx %d is too large", n_ctx);
    int nth = p.n_threads > 0 ? p.n_threads : model->n_threads;
    kvlm_session *s = calloc(1, sizeof *s);
    if (!s) return kv_fail(err, KVLM_ERR_NOMEM, "session_new: out of memory");
    s->model = model;
    kvlm_status st = kv_cache_new(hp->n_layer, n_ctx, hp->n_head_kv, hp->head_dim, KV_F16, KV_F16, &s->cache, err);
    if (!st) st = kv_pool_new(nth, &s->pool, err);
    if (!st) st = kv_forward_new(model, s->cache, s->pool, n_ctx < KV_UBATCH ? n_ctx : KV_UBATCH, &s->fwd, err);
    if (st) {
        kvlm_session_free(s);
        return st;
    }
    *out = s;
    return KVLM_OK;
}

void kvlm_session_free(kvlm_session *s) {
    if (!s) return;
    kv_forward_free(s->fwd);
    kv_pool_free(s->pool);
    kv_cache_free(s->cache);
    free(s);
}

int32_t kvlm_session_n_past(const kvlm_session *s) { return s->cache->n; }
int32_t kvlm_session_n_ctx(const kvlm_session *s) { return s->cache->n_ctx; }

static bool acquire(kvlm_session *s) {
    int expected = 0;
    return atomic_compare_exchange_strong(&s->busy, &expected, 1);
}
static void release(kvlm_session *s) { atomic_store(&s->busy, 0); }

kvlm_status kvlm_eval(kvlm_session *s, const kvlm_token *tokens, int32_t n_tokens, int32_t n_past, float *logits,
                      bool all_logits, kvlm_error *err) {
    kv_error_clear(err);
    if (!s || (!tokens && n_tokens > 0)) return kv_fail(err, KVLM_ERR_INVALID_ARG, "eval: NULL argument");
    if (!acquire(s)) return kv_fail(err, KVLM_ERR_BUSY, "eval: the session is in use by another call");
    kvlm_status st = KVLM_OK;
    const int32_t n_vocab = s->model->hp.n_vocab;
    if (n_past < 0 || n_past > n_tokens) {
        st = kv_fail(err, KVLM_ERR_INVALID_ARG, "eval: n_past %d is outside 0..%d", n_past, n_tokens);
    } else if (n_past != s->cache->n) {
        st = kv_fail(err, KVLM_ERR_INVALID_ARG, "eval: n_past %d differs from the %d tokens the session holds", n_past,
                     s->cache->n);
    } else if (n_tokens == n_past) {
        st = kv_fail(err, KVLM_ERR_INVALID_ARG, "eval: no new tokens to evaluate");
    } else if (n_tokens > s->cache->n_ctx) {
        st = kv_fail(err, KVLM_ERR_CONTEXT_FULL, "eval: %d tokens exceed the context of %d", n_tokens,
                     s->cache->n_ctx);
    } else {
        for (int32_t i = n_past; i < n_tokens; i++)
            if (tokens[i] < 0 || tokens[i] >= n_vocab) {
                st = kv_fail(err, KVLM_ERR_INVALID_ARG, "eval: token %d at index %d is outside the vocabulary (0..%d)",
                             tokens[i], i, n_vocab - 1);
                break;
            }
    }
    if (st == KVLM_OK) kv_forward_eval(s->fwd, tokens + n_past, n_tokens - n_past, logits, all_logits);
    release(s);
    return st;
}

kvlm_status kvlm_session_truncate(kvlm_session *s, int32_t n, kvlm_error *err) {
    kv_error_clear(err);
    if (!s) return kv_fail(err, KVLM_ERR_INVALID_ARG, "truncate: NULL session");
    if (!acquire(s)) return kv_fail(err, KVLM_ERR_BUSY, "truncate: the session is in use by another call");
    kvlm_status st = KVLM_OK;
    if (n < 0 || n > s->cache->n)
        st = kv_fail(err, KVLM_ERR_INVALID_ARG, "truncate: %d is outside 0..%d", n, s->cache->n);
    else
        s->cache->n = n;
    release(s);
    return st;
}
