/* kvlm.h, section "sessions": a page table over a (possibly shared) page
 * pool, scratch and a thread pool, over a shared read-only model. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "core/error.h"
#include "core/tpool.h"
#include "forward/forward.h"
#include "kv/kv_cache.h"
#include "kvlm.h"
#include "model/model.h"

#define KV_UBATCH 256

#include "session_impl.h"

kvlm_session_params kvlm_session_default_params(void) {
    kvlm_session_params p;
    memset(&p, 0, sizeof p);
    p.cache_params = kvlm_cache_default_params();
    p.overflow = KVLM_OVERFLOW_ERROR;
    p.n_sink = 4;
    p.compress_type = KVLM_KV_Q8_0;
    return p;
}

kvlm_status kvlm_session_new(const kvlm_model *model, const kvlm_session_params *params, kvlm_session **out,
                             kvlm_error *err) {
    kv_error_clear(err);
    if (!model || !out) return kv_fail(err, KVLM_ERR_INVALID_ARG, "session_new: NULL argument");
    *out = NULL;
    if (model->vocab_only) return kv_fail(err, KVLM_ERR_INVALID_ARG, "session_new: the model was loaded vocab-only");
    kvlm_session_params p = params ? *params : kvlm_session_default_params();
    const kv_hparams *hp = &model->hp;
    const int32_t n_ctx = p.n_ctx > 0 ? p.n_ctx : hp->n_ctx_train;
    if (n_ctx > (1 << 24)) return kv_fail(err, KVLM_ERR_INVALID_ARG, "session_new: n_ctx %d is too large", n_ctx);
    kvlm_status cst = kv_model_check_session(model, n_ctx, (int)p.overflow, p.window, err);
    if (cst) return cst;
    if (p.cache && p.cache->model != model)
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "session_new: the cache belongs to another model");
    int nth = p.n_threads > 0 ? p.n_threads : model->n_threads;
    /* more threads than CPUs never helps (logits do not depend on the count) */
    if (nth > kv_cpu_count()) nth = kv_cpu_count();
    kvlm_session *s = calloc(1, sizeof *s);
    if (!s) return kv_fail(err, KVLM_ERR_NOMEM, "session_new: out of memory");
    s->model = model;
    kvlm_status st = KVLM_OK;
    const int32_t ubatch = n_ctx < KV_UBATCH ? n_ctx : KV_UBATCH;
    kvlm_cache_params cp = p.cache ? *kv_pool_params(p.cache->pool) : p.cache_params;
    if (!p.cache && cp.page_tokens == 0) cp = kvlm_cache_default_params();
    kv_seq_config sc = {
        .n_ctx = n_ctx, .n_layer = hp->n_layer, .n_head_kv = hp->n_head_kv, .head_dim = hp->head_dim,
        .type_k = (uint32_t)cp.type_k, .type_v = (uint32_t)cp.type_v, .overflow = p.overflow,
        .n_keep = p.n_keep, .n_sink = p.n_sink, .window = p.window, .compress_after = p.compress_after,
        .compress_type = (uint32_t)p.compress_type,
        .max_batch = ubatch < 32 ? ubatch : 32,
    };
    kv_model_rope(model, n_ctx, &sc.rope);
    /* gemma3's sliding-window layers: a ring of their own (kv_seq.swa), except on a shared cache with
       prefix sharing, whose index holds pages of every layer */
    if (hp->n_swa > 0 && hp->swa_pattern > 0) {
        s->swa_layer = malloc((size_t)hp->n_layer * sizeof *s->swa_layer);
        if (!s->swa_layer) {
            free(s);
            return kv_fail(err, KVLM_ERR_NOMEM, "session_new: out of memory");
        }
        for (int32_t l = 0; l < hp->n_layer; l++) s->swa_layer[l] = kv_layer_is_swa(hp, l);
        sc.swa_layer = s->swa_layer;
        sc.swa = hp->n_swa;
        sc.swa_full = p.cache && kv_pool_params(p.cache->pool)->prefix_sharing;
        kv_model_rope_swa(model, hp->n_ctx_train, &sc.rope_swa); /* as the forward pass rotates them */
    }
    if (p.cache) {
        s->cache = p.cache;
    } else if (cp.page_tokens < 1 || cp.page_tokens > (1 << 20)) {
        st = kvlm_cache_new(model, &cp, &s->cache, err); /* reports the bad page size */
    } else {
        /* a pool of its own holds what the context and the policy need, no more: growth stops there,
           and cached pages are evicted rather than grown past it */
        const int64_t need = kv_seq_pages_needed(&sc, cp.page_tokens);
        const int64_t need_tokens = need * cp.page_tokens;
        if (cp.max_tokens < need_tokens + cp.page_tokens) cp.max_tokens = need_tokens + cp.page_tokens;
        if (cp.initial_tokens > need_tokens) cp.initial_tokens = need_tokens;
        st = kvlm_cache_new(model, &cp, &s->cache, err);
        s->own_cache = st == KVLM_OK;
        if (!st) kv_pool_set_target(s->cache->pool, need);
    }
    if (!st) {
        s->seq_config = sc;
        s->params = p;
        st = kv_seq_init(&s->seq, s->cache->pool, &sc, err);
    }
    if (!st) st = kv_tpool_new(nth, &s->tpool, err);
    if (!st) st = kv_forward_new(model, &s->seq, s->tpool, ubatch, kv_pool_params(s->cache->pool)->prefetch, &s->fwd, err);
    if (st) {
        kvlm_session_free(s);
        return st;
    }
    *out = s;
    return KVLM_OK;
}

kvlm_status kvlm_session_fork(kvlm_session *src, kvlm_session **out, kvlm_error *err) {
    kv_error_clear(err);
    if (!src || !out) return kv_fail(err, KVLM_ERR_INVALID_ARG, "fork: NULL argument");
    *out = NULL;
    if (!kv_session_acquire(src)) return kv_fail(err, KVLM_ERR_BUSY, "fork: the session is in use by another call");
    /* the same settings; on a shared cache the same pool (pages shared), else a pool of its own */
    kvlm_session *d = NULL;
    kvlm_session_params fp = src->params;
    fp.cache_params.disk_tier = false; /* a pool of its own: the source's pool holds the disk directory */
    kvlm_status st = kvlm_session_new(src->model, &fp, &d, err);
    if (!st) st = kv_seq_fork(&d->seq, &src->seq, err);
    if (!st) d->n_consumed = src->n_consumed;
    kv_session_release(src);
    if (st) {
        kvlm_session_free(d);
        return st;
    }
    *out = d;
    return KVLM_OK;
}

void kvlm_session_free(kvlm_session *s) {
    if (!s) return;
    kv_forward_free(s->fwd);
    kv_tpool_free(s->tpool);
    kv_seq_destroy(&s->seq);
    if (s->own_cache) kvlm_cache_free(s->cache);
    free(s->swa_layer);
    free(s);
}

int32_t kvlm_session_n_past(const kvlm_session *s) { return s->n_consumed; }
int32_t kvlm_session_n_ctx(const kvlm_session *s) { return kv_seq_n_ctx(&s->seq); }

int kvlm_session_n_threads(const kvlm_session *s) { return kv_tpool_size(s->tpool); }

bool kv_session_acquire(kvlm_session *s) {
    int expected = 0;
    return atomic_compare_exchange_strong(&s->busy, &expected, 1);
}
void kv_session_release(kvlm_session *s) { atomic_store(&s->busy, 0); }
#define acquire kv_session_acquire
#define release kv_session_release

/* Whether the session may roll back (its slots are still the token history). */
bool kv_session_rewindable(const kvlm_session *s) { return kv_seq_holds_history(&s->seq, s->n_consumed); }

/* The forward pass over toks in passes the overflow policy can always make room for
 * (kv_seq_next_pass: a pass of a whole context could never fit after one shift). */
static kvlm_status forward_pieces(kvlm_session *s, const kvlm_token *toks, int32_t n, float *logits, bool all_logits,
                                  int32_t *done, kvlm_error *err) {
    *done = 0;
    const int64_t V = s->model->hp.n_vocab;
    while (*done < n) {
        const int32_t T = kv_seq_next_pass(&s->seq, n - *done);
        const bool last = *done + T == n;
        float *out = NULL;
        if (logits && all_logits) out = logits + (int64_t)*done * V;
        else if (logits && last) out = logits;
        int32_t d = 0;
        kvlm_status st = kv_forward_eval(s->fwd, toks + *done, T, out, all_logits, &d, err);
        *done += d;
        if (st) return st;
    }
    return KVLM_OK;
}

kvlm_status kv_session_append_locked(kvlm_session *s, const kvlm_token *toks, int32_t n, float *logits,
                                     bool all_logits, kvlm_error *err) {
    const int32_t n_vocab = s->model->hp.n_vocab;
    for (int32_t i = 0; i < n; i++)
        if (toks[i] < 0 || toks[i] >= n_vocab)
            return kv_fail(err, KVLM_ERR_INVALID_ARG, "eval: token %d is outside the vocabulary (0..%d)", toks[i],
                           n_vocab - 1);
    if (!kv_seq_fits(&s->seq, (int64_t)kv_seq_n(&s->seq) + n))
        return kv_fail(err, KVLM_ERR_CONTEXT_FULL, "eval: %d tokens exceed the context of %d", kv_seq_n(&s->seq) + n,
                       kv_seq_n_ctx(&s->seq));
    int32_t done = 0;
    kvlm_status st = forward_pieces(s, toks, n, logits, all_logits, &done, err);
    s->n_consumed += done;
    return st;
}

kvlm_status kv_session_eval_locked(kvlm_session *s, const kvlm_token *tokens, int32_t n_tokens, int32_t n_past,
                                   float *logits, bool all_logits, kvlm_error *err) {
    const int32_t n_vocab = s->model->hp.n_vocab;
    if (n_tokens <= 0) return kv_fail(err, KVLM_ERR_INVALID_ARG, "eval: no tokens");
    if (n_past != KVLM_AUTO && (n_past < 0 || n_past > s->n_consumed))
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "eval: n_past %d is outside 0..%d (the tokens the session holds)",
                       n_past, s->n_consumed);
    if (n_past != KVLM_AUTO && n_past >= n_tokens)
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "eval: n_past %d leaves no token to evaluate out of %d", n_past,
                       n_tokens);
    for (int32_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= n_vocab)
            return kv_fail(err, KVLM_ERR_INVALID_ARG, "eval: token %d at index %d is outside the vocabulary (0..%d)",
                           tokens[i], i, n_vocab - 1);

    /* roll back to what the request repeats, and (unless every row's logits are wanted) pick up cached pages */
    int32_t start; /* first token to compute */
    kvlm_status st = kv_seq_sync(&s->seq, s->n_consumed, tokens, n_tokens, n_past, !all_logits, &start, err);
    if (st) return st;
    s->n_consumed = start;
    const int32_t first_row = n_past == KVLM_AUTO ? start : n_past;
    float *out = logits;
    float *tmp = NULL;
    if (logits && all_logits && first_row != start) {
        /* the history differed from tokens[0, n_past): rows from `start` are computed, the caller's
           buffer holds those from n_past on */
        tmp = malloc((size_t)(n_tokens - start) * (size_t)n_vocab * sizeof *tmp);
        if (!tmp) return kv_fail(err, KVLM_ERR_NOMEM, "eval: out of memory");
        out = tmp;
    }
    int32_t done = 0;
    st = forward_pieces(s, tokens + start, n_tokens - start, out, all_logits, &done, err);
    s->n_consumed = start + done;
    if (tmp) {
        if (st == KVLM_OK)
            memcpy(logits, tmp + (size_t)(first_row - start) * (size_t)n_vocab,
                   (size_t)(n_tokens - first_row) * (size_t)n_vocab * sizeof *tmp);
        free(tmp);
    }
    return st;
}

kvlm_status kvlm_eval(kvlm_session *s, const kvlm_token *tokens, int32_t n_tokens, int32_t n_past, float *logits,
                      bool all_logits, kvlm_error *err) {
    kv_error_clear(err);
    if (!s || (!tokens && n_tokens > 0)) return kv_fail(err, KVLM_ERR_INVALID_ARG, "eval: NULL argument");
    if (!acquire(s)) return kv_fail(err, KVLM_ERR_BUSY, "eval: the session is in use by another call");
    kvlm_status st = kv_session_eval_locked(s, tokens, n_tokens, n_past, logits, all_logits, err);
    release(s);
    return st;
}

kvlm_status kvlm_decode_batch(kvlm_session *const *sessions, const kvlm_token *tokens, int32_t n, float *logits,
                              kvlm_error *err) {
    kv_error_clear(err);
    if (!sessions || !tokens || n <= 0) return kv_fail(err, KVLM_ERR_INVALID_ARG, "decode_batch: bad arguments");
    if (n > KV_UBATCH) return kv_fail(err, KVLM_ERR_INVALID_ARG, "decode_batch: at most %d sessions", KV_UBATCH);
    const kvlm_model *m = sessions[0] ? sessions[0]->model : NULL;
    for (int32_t i = 0; i < n; i++) {
        if (!sessions[i] || sessions[i]->model != m)
            return kv_fail(err, KVLM_ERR_INVALID_ARG, "decode_batch: session %d is NULL or of another model", i);
        for (int32_t j = 0; j < i; j++)
            if (sessions[j] == sessions[i])
                return kv_fail(err, KVLM_ERR_INVALID_ARG, "decode_batch: session %d appears twice", i);
        if (tokens[i] < 0 || tokens[i] >= m->hp.n_vocab)
            return kv_fail(err, KVLM_ERR_INVALID_ARG, "decode_batch: token %d is outside the vocabulary", tokens[i]);
    }
    int32_t got = 0;
    while (got < n && acquire(sessions[got])) got++;
    kvlm_status st = KVLM_OK;
    if (got < n) {
        st = kv_fail(err, KVLM_ERR_BUSY, "decode_batch: session %d is in use by another call", got);
    } else {
        kv_seq *seqs[KV_UBATCH];
        for (int32_t i = 0; i < n && !st; i++) {
            seqs[i] = &sessions[i]->seq;
            if (!kv_seq_fits(seqs[i], (int64_t)kv_seq_n(seqs[i]) + 1))
                st = kv_fail(err, KVLM_ERR_CONTEXT_FULL, "decode_batch: session %d's context of %d is full", i,
                             kv_seq_n_ctx(seqs[i]));
        }
        /* the first session's scratch and threads serve the batch */
        if (!st) st = kv_forward_eval_multi(sessions[0]->fwd, seqs, tokens, n, logits, err);
        if (!st)
            for (int32_t i = 0; i < n; i++) sessions[i]->n_consumed++;
    }
    for (int32_t i = 0; i < got; i++) release(sessions[i]);
    return st;
}

kvlm_status kvlm_eval_full(const kvlm_model *model, const kvlm_token *tokens, int32_t n_tokens, float *logits,
                           bool all_logits, kvlm_error *err) {
    kv_error_clear(err);
    if (!model) return kv_fail(err, KVLM_ERR_INVALID_ARG, "eval_full: NULL model");
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = n_tokens > 0 ? n_tokens : 1;
    p.cache_params.prefix_sharing = false;
    p.cache_params.initial_tokens = p.n_ctx;
    kvlm_session *s;
    kvlm_status st = kvlm_session_new(model, &p, &s, err);
    if (st) return st;
    st = kvlm_eval(s, tokens, n_tokens, 0, logits, all_logits, err);
    kvlm_session_free(s);
    return st;
}

kvlm_status kvlm_session_truncate(kvlm_session *s, int32_t n, kvlm_error *err) {
    kv_error_clear(err);
    if (!s) return kv_fail(err, KVLM_ERR_INVALID_ARG, "truncate: NULL session");
    if (!acquire(s)) return kv_fail(err, KVLM_ERR_BUSY, "truncate: the session is in use by another call");
    kvlm_status st = kv_seq_rollback(&s->seq, s->n_consumed, n, err);
    if (st == KVLM_OK) s->n_consumed = n;
    release(s);
    return st;
}

void kvlm_session_get_stats(const kvlm_session *s, kvlm_kv_stats *st) { kv_seq_stats(&s->seq, st); }

int32_t kvlm_kv_stats_json(const kvlm_kv_stats *st, char *buf, int32_t size) {
    int n = snprintf(buf, size > 0 ? (size_t)size : 0,
                     "{\"tokens\":%lld,\"capacity\":%lld,\"utilization\":%.4f,\"bytes\":%lld,"
                     "\"bytes_f32_equivalent\":%lld,\"bytes_f32\":%lld,\"bytes_f16\":%lld,\"bytes_q8_0\":%lld,"
                     "\"bytes_q4_0\":%lld,\"hits\":%lld,\"misses\":%lld,\"hit_rate\":%.4f,\"recomputed\":%lld,"
                     "\"pages_shared\":%lld,\"pages_cached\":%lld,\"evictions\":%lld,\"compressions\":%lld,"
                     "\"bytes_saved\":%lld,\"shifts\":%lld,\"growth_events\":%lld,\"growth_ms_total\":%.3f,"
                     "\"growth_ms_max\":%.3f,\"disk_hits\":%lld,\"disk_bytes\":%lld,\"disk_pages\":%lld,"
                     "\"disk_writes\":%lld,\"disk_evictions\":%lld,\"disk_rejected\":%lld,\"disk_dropped\":%lld}",
                     (long long)st->tokens, (long long)st->capacity, st->utilization, (long long)st->bytes,
                     (long long)st->bytes_f32_equivalent, (long long)st->bytes_by_type[0],
                     (long long)st->bytes_by_type[1], (long long)st->bytes_by_type[2], (long long)st->bytes_by_type[3],
                     (long long)st->hits, (long long)st->misses, st->hit_rate, (long long)st->recomputed,
                     (long long)st->pages_shared, (long long)st->pages_cached, (long long)st->evictions,
                     (long long)st->compressions, (long long)st->bytes_saved, (long long)st->shifts,
                     (long long)st->growth_events, st->growth_ms_total, st->growth_ms_max, (long long)st->disk_hits,
                     (long long)st->disk_bytes, (long long)st->disk_pages, (long long)st->disk_writes,
                     (long long)st->disk_evictions, (long long)st->disk_rejected, (long long)st->disk_dropped);
    if (n < 0) return 0;
    return n < size ? n : -(n + 1);
}
