/* A sequence's page table: reserve/commit, overflow policies, rollback,
 * prefix attach and tiered compression. */
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rope.h"
#include "kv_cache.h"
#include "quant/quant.h"

static uint64_t root_key(const kv_seq *s) {
    /* a context-dependent RoPE (phi3's LongRoPE factors) rotates keys differently: its own prefix tree */
    const int32_t meta[4] = {(int32_t)s->layout->type_k, (int32_t)s->layout->type_v, s->P,
                             0x6b766c6d + (int32_t)s->rope.variant};
    return kv_page_key(0x9e3779b97f4a7c15ull, meta, 4);
}

static int32_t ring_capacity(int32_t window, int32_t max_batch, int32_t P) {
    int64_t c = (int64_t)window + max_batch;
    return (int32_t)((c + P - 1) / P * P);
}

/* The sliding-window ring a sequence of configuration c keeps (kv_seq.swa): its slots, 0 for none
 * (no such layers, another policy than error, swa_full, every layer local, or a ring no smaller than the
 * context);
 * *n_local: the layers it holds. */
static int32_t swa_plan(const kv_seq_config *c, int32_t P, int32_t *n_local) {
    *n_local = 0;
    if (!c->swa_layer || c->swa <= 0 || c->swa > (1 << 24) || c->swa_full || c->overflow != KVLM_OVERFLOW_ERROR)
        return 0;
    int32_t nl = 0;
    for (int32_t l = 0; l < c->n_layer; l++) nl += c->swa_layer[l] ? 1 : 0;
    const int32_t cap = ring_capacity(c->swa, c->max_batch, P);
    if (nl == 0 || nl == c->n_layer || cap / P >= ((int64_t)c->n_ctx + P - 1) / P) return 0;
    *n_local = nl;
    return cap;
}

/* Whether the sliding-window ring still holds what a query at position h reads (the positions (h - swa,
 * h)), so that the sequence can be cut back to h. */
static bool swa_can_cut(const kv_seq *s, int64_t h) {
    if (!s->swa || s->swa_lo == 0 || h == 0) return true;
    return h - s->swa + 1 >= s->swa_lo;
}

/* Grows the per-slot arrays to hold at least n slots. */
static bool ensure_slots(kv_seq *s, int32_t n) {
    int32_t need_pages = (n + s->P - 1) / s->P;
    if (need_pages <= s->cap_pages) return true;
    int32_t cap = s->cap_pages ? s->cap_pages : 8;
    while (cap < need_pages) cap = cap > (1 << 28) ? need_pages : cap * 2;
    kv_page **pages = realloc(s->pages, (size_t)cap * sizeof *pages);
    if (!pages) return false;
    s->pages = pages;
    uint64_t *keys = realloc(s->keys, (size_t)cap * sizeof *keys);
    if (!keys) return false;
    s->keys = keys;
    int32_t *tokens = realloc(s->tokens, (size_t)cap * (size_t)s->P * sizeof *tokens);
    if (!tokens) return false;
    s->tokens = tokens;
    int32_t *pos = realloc(s->pos, (size_t)cap * (size_t)s->P * sizeof *pos);
    if (!pos) return false;
    s->pos = pos;
    s->cap_pages = cap;
    return true;
}

kvlm_status kv_seq_init(kv_seq *s, kv_page_pool *pool, const kv_seq_config *c, kvlm_error *err) {
    memset(s, 0, sizeof *s);
    s->pool = pool;
    s->P = kv_pool_page_tokens(pool);
    s->n_layer = c->n_layer;
    s->n_head_kv = c->n_head_kv;
    s->head_dim = c->head_dim;
    s->kv_dim = c->n_head_kv * c->head_dim;
    s->n_ctx = c->n_ctx;
    s->overflow = c->overflow;
    s->n_keep = c->n_keep;
    s->n_sink = c->n_sink;
    s->window = c->window > 0 ? c->window : c->n_ctx;
    s->compress_after = c->compress_after;
    s->rope = c->rope;
    if ((unsigned)c->overflow > KVLM_OVERFLOW_RING)
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "kv cache: unknown overflow policy %d", (int)c->overflow);
    if (c->overflow == KVLM_OVERFLOW_SHIFT && (c->n_keep < 0 || c->n_keep >= c->n_ctx - 1))
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "kv cache: n_keep %d must be in 0..n_ctx-2", c->n_keep);
    if (c->overflow == KVLM_OVERFLOW_SLIDING && (c->n_sink < 0 || c->n_sink + s->P >= c->n_ctx))
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "kv cache: n_sink %d plus a page must fit in n_ctx %d", c->n_sink,
                       c->n_ctx);
    if (c->compress_after < 0) return kv_fail(err, KVLM_ERR_INVALID_ARG, "kv cache: compress_after is negative");
    if (c->overflow == KVLM_OVERFLOW_RING && c->window > (1 << 24))
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "kv cache: ring window %d is too large", c->window);
    /* gemma3's sliding-window layers apart, when their ring holds less than the context: the pages then
       hold the other layers (layouts of fewer layers) */
    int32_t n_local = 0;
    const int32_t swa_cap = swa_plan(c, s->P, &n_local);
    s->n_glayer = c->n_layer - n_local;
    s->layout = kv_pool_layout_layers(pool, c->type_k, c->type_v, s->n_glayer);
    if (!s->layout)
        return kv_fail(err, KVLM_ERR_UNSUPPORTED, "kv cache: K/V types %s/%s do not fit rows of %d values",
                       kv_dtype_name(c->type_k), kv_dtype_name(c->type_v), s->kv_dim);
    if (!s->layout->k.encode || !s->layout->v.encode)
        return kv_fail(err, KVLM_ERR_UNSUPPORTED, "kv cache: unsupported storage type");
    if (c->compress_after > 0) {
        s->compress_layout = kv_pool_layout_layers(pool, c->compress_type, c->compress_type, s->n_glayer);
        if (!s->compress_layout || !s->compress_layout->k.encode)
            return kv_fail(err, KVLM_ERR_UNSUPPORTED, "kv cache: compression type %s does not fit rows of %d values",
                           kv_dtype_name(c->compress_type), s->kv_dim);
    }
    if (c->swa_layer) { /* which layers a shift re-rotates with their own RoPE */
        s->rope_swa = c->rope_swa;
        s->swa_layer = malloc((size_t)c->n_layer * sizeof *s->swa_layer);
        if (!s->swa_layer) return kv_fail(err, KVLM_ERR_NOMEM, "kv cache: out of memory");
        memcpy(s->swa_layer, c->swa_layer, (size_t)c->n_layer * sizeof *s->swa_layer);
    }
    if (swa_cap) {
        s->swa_layout = kv_pool_layout_layers(pool, c->type_k, c->type_v, n_local);
        if (!s->swa_layout) {
            kv_seq_destroy(s);
            return kv_fail(err, KVLM_ERR_UNSUPPORTED, "kv cache: too many page layouts in the pool");
        }
        s->swa = c->swa;
        s->swa_cap = swa_cap;
        s->layer_at = malloc((size_t)c->n_layer * sizeof *s->layer_at);
        s->swa_pages = calloc((size_t)(swa_cap / s->P), sizeof *s->swa_pages);
        if (!s->layer_at || !s->swa_pages) {
            kv_seq_destroy(s);
            return kv_fail(err, KVLM_ERR_NOMEM, "kv cache: out of memory");
        }
        for (int32_t l = 0, g = 0, r = 0; l < c->n_layer; l++) s->layer_at[l] = c->swa_layer[l] ? ~r++ : g++;
        for (int32_t j = 0; j < swa_cap / s->P; j++)
            if (!(s->swa_pages[j] = kv_pool_alloc(pool, s->swa_layout))) {
                kv_seq_destroy(s);
                return kv_fail(err, KVLM_ERR_NOMEM, "kv cache: the pool cannot hold a ring of %d tokens", swa_cap);
            }
    }
    /* the prefix index holds pages of every layer: not a ring's, nor those beside a sliding-window ring */
    s->shareable = s->share_base = c->overflow != KVLM_OVERFLOW_RING && !s->swa && kv_pool_params(pool)->prefix_sharing;
    if (c->overflow == KVLM_OVERFLOW_RING) {
        s->n_ctx = ring_capacity(s->window, c->max_batch, s->P);
        if (!ensure_slots(s, s->n_ctx)) {
            kv_seq_destroy(s);
            return kv_fail(err, KVLM_ERR_NOMEM, "kv cache: out of memory");
        }
        for (int32_t j = 0; j < s->n_ctx / s->P; j++) {
            s->pages[j] = kv_pool_alloc(pool, s->layout);
            if (!s->pages[j]) {
                const int32_t n_ctx = s->n_ctx; /* kv_seq_destroy clears s */
                kv_seq_destroy(s);
                return kv_fail(err, KVLM_ERR_NOMEM, "kv cache: the pool cannot hold a ring of %d tokens", n_ctx);
            }
            s->n_pages = j + 1;
        }
    } else if (!ensure_slots(s, s->P)) {
        kv_seq_destroy(s);
        return kv_fail(err, KVLM_ERR_NOMEM, "kv cache: out of memory");
    }
    return KVLM_OK;
}

void kv_seq_destroy(kv_seq *s) {
    for (int32_t j = 0; j < s->n_pages; j++) kv_pool_release(s->pool, s->pages[j]);
    for (int32_t j = 0; s->swa_pages && j < s->swa_cap / s->P; j++) kv_pool_release(s->pool, s->swa_pages[j]);
    free(s->swa_pages);
    free(s->layer_at);
    free(s->swa_layer);
    if (s->pool) kv_pool_count(s->pool, KV_STAT_TOKENS, -s->n);
    free(s->pages);
    free(s->keys);
    free(s->tokens);
    free(s->pos);
    memset(s, 0, sizeof *s);
}

uint64_t kv_seq_bytes(const kv_seq *s) {
    uint64_t b = 0;
    for (int32_t j = 0; j < s->n_pages; j++) b += s->pages[j]->layout->page_bytes;
    if (s->swa) b += (uint64_t)(s->swa_cap / s->P) * s->swa_layout->page_bytes;
    return b;
}

/* ------------------------------------------------------------ row copies */

/* One token's K (or V) row of kv_dim values, converted between types. */
static void convert_row(const uint8_t *src, const kv_codec *sc, uint32_t st, uint8_t *dst, const kv_codec *dc,
                        uint32_t dt, int32_t n, uint64_t bytes, float *tmp) {
    if (st == dt) {
        memcpy(dst, src, bytes);
        return;
    }
    sc->decode(src, tmp, n);
    dc->encode(tmp, dst, n);
}

/* Copies slot `from` of page a into slot `to` of page b for every layer,
 * re-rotating K by `delta` positions when it is not 0, with the layer's RoPE (a sliding-window layer's
 * own, else the sequence's; a sequence that shifts keeps every layer in its pages, in order). */
static void copy_slot(const kv_seq *s, const kv_page *a, int32_t from, kv_page *b, int32_t to, int32_t delta,
                      float *tmp) {
    const kv_layout *la = a->layout, *lb = b->layout;
    for (int l = 0; l < la->n_layers; l++) {
        const uint8_t *ka = kv_page_k_row(a, l, from), *va = kv_page_v_row(a, l, from);
        uint8_t *kb = kv_page_k_row(b, l, to), *vb = kv_page_v_row(b, l, to);
        if (delta != 0) {
            const kv_rope *r = !s->layer_at && s->swa_layer && s->swa_layer[l] ? &s->rope_swa : &s->rope;
            la->k.decode(ka, tmp, s->kv_dim);
            kv_rope_shift(r, tmp, s->n_head_kv, s->head_dim, delta);
            lb->k.encode(tmp, kb, s->kv_dim);
        } else {
            convert_row(ka, &la->k, la->type_k, kb, &lb->k, lb->type_k, s->kv_dim, la->k_row, tmp);
        }
        convert_row(va, &la->v, la->type_v, vb, &lb->v, lb->type_v, s->kv_dim, la->v_row, tmp);
    }
}

/* ------------------------------------------------------------ policies */

/* Removes slots [k, k + d) and moves the rest down, re-rotating their keys by
 * -d so positions stay contiguous. A page held by this sequence alone (and,
 * in a pool with a target, even one in the prefix index, which it leaves) is
 * rewritten in place: every slot is read before it is overwritten, since the
 * source t + d of slot t lies ahead of it. Other pages (shared, indexed, or of
 * another storage type) are replaced by fresh private pages allocated up front,
 * and released (an indexed one stays cached for its original prefix). On error
 * nothing changed. */
static kvlm_status shift(kv_seq *s, int32_t k, int32_t d, kvlm_error *err) {
    const int32_t P = s->P, n_new = s->n - d;
    const int32_t first = k / P, last = (n_new + P - 1) / P; /* new pages [first, last) */
    const int32_t count = last - first;
    kv_page **dst = calloc((size_t)(count > 0 ? count : 1), sizeof *dst);
    bool *fresh = calloc((size_t)(count > 0 ? count : 1), sizeof *fresh);
    float *tmp = malloc((size_t)s->kv_dim * sizeof *tmp);
    if (!dst || !fresh || !tmp) {
        free(dst);
        free(fresh);
        free(tmp);
        return kv_fail(err, KVLM_ERR_NOMEM, "kv cache: out of memory for a context shift");
    }
    const bool unindex = kv_pool_has_target(s->pool);
    for (int32_t i = 0; i < count; i++) {
        kv_page *pg = s->pages[first + i];
        if (pg->layout == s->layout && kv_pool_claim(s->pool, pg, unindex)) dst[i] = pg;
    }
    for (int32_t i = 0; i < count; i++) {
        if (dst[i]) continue;
        dst[i] = kv_pool_alloc(s->pool, s->layout);
        fresh[i] = true;
        if (!dst[i]) {
            for (int32_t j = 0; j < i; j++)
                if (fresh[j]) kv_pool_release(s->pool, dst[j]);
            free(dst);
            free(fresh);
            free(tmp);
            return kv_fail(err, KVLM_ERR_NOMEM, "kv cache: the pool has no room for a context shift");
        }
    }
    for (int32_t t = first * P; t < n_new; t++) {
        const int32_t i = t / P - first;
        if (t < k && !fresh[i]) continue; /* kept in place */
        const int32_t src = t < k ? t : t + d;
        copy_slot(s, s->pages[src / P], src % P, dst[i], t % P, t < k ? 0 : -d, tmp);
    }
    for (int32_t i = 0; i < count; i++)
        if (fresh[i]) kv_pool_release(s->pool, s->pages[first + i]);
    for (int32_t j = last; j < s->n_pages; j++) kv_pool_release(s->pool, s->pages[j]);
    for (int32_t i = 0; i < count; i++) s->pages[first + i] = dst[i];
    s->n_pages = last;
    for (int32_t t = k; t < k + d; t++) s->drop_hash = kv_hist_hash(s->drop_hash, s->tokens[t]);
    s->n_dropped += d;
    memmove(s->tokens + k, s->tokens + k + d, (size_t)(s->n - k - d) * sizeof *s->tokens);
    for (int32_t t = 0; t < n_new; t++) s->pos[t] = t;
    s->n = n_new;
    s->next_pos = n_new;
    s->shareable = false;
    kv_pool_count(s->pool, KV_STAT_TOKENS, -d);
    kv_pool_count(s->pool, KV_STAT_SHIFTS, 1);
    free(dst);
    free(fresh);
    free(tmp);
    return KVLM_OK;
}

int32_t kv_seq_max_pass(const kv_seq *s) {
    switch (s->overflow) {
    case KVLM_OVERFLOW_SHIFT: {
        /* a shift of a full context frees (n_ctx - n_keep) / 2 slots */
        const int32_t m = (s->n_ctx - s->n_keep) / 2;
        return m > 0 ? m : 1;
    }
    case KVLM_OVERFLOW_SLIDING: {
        /* whole pages, at most half of what is not sink (at least a page: n_sink + P < n_ctx) */
        int32_t m = (s->n_ctx - s->n_sink) / 2 / s->P * s->P;
        return m > s->P ? m : s->P;
    }
    case KVLM_OVERFLOW_RING: return s->n_ctx - s->window;
    default: return INT32_MAX;
    }
}

int64_t kv_seq_pages_needed(const kv_seq_config *c, int32_t P) {
    int32_t n_local;
    const int32_t swa_cap = swa_plan(c, P, &n_local);
    if (swa_cap) /* the sliding-window ring's pages (of fewer layers) and those of the context */
        return swa_cap / P + ((int64_t)c->n_ctx + P - 1) / P;
    if (c->overflow == KVLM_OVERFLOW_RING) {
        const int64_t w = c->window > 0 && c->window <= (1 << 24) ? c->window : c->n_ctx;
        return (w + c->max_batch + P - 1) / P;
    }
    /* the context (a copy-on-write cut or a compression needs one more page for a moment: the pool
       lends it past its target and frees it again) */
    return ((int64_t)c->n_ctx + P - 1) / P;
}

int32_t kv_seq_head(const kv_seq *s) {
    switch (s->overflow) {
    case KVLM_OVERFLOW_SHIFT: return s->n_keep;
    case KVLM_OVERFLOW_SLIDING: return s->n_sink;
    default: return 0;
    }
}

/* Whether the dropped-token record describes a history of h_len tokens (always, for a sequence the
 * engine built or loaded from a checked file; a guard against an owner's count gone wrong). */
static bool drop_known(const kv_seq *s, int64_t h_len) {
    if (s->overflow == KVLM_OVERFLOW_RING)
        return h_len == s->next_pos && s->n_dropped >= (int64_t)s->next_pos - s->n_ctx && s->n_dropped <= s->next_pos;
    return h_len == (int64_t)s->n + s->n_dropped;
}

bool kv_seq_can_rewind(const kv_seq *s, int64_t h_len, int64_t h) {
    if (h < 0 || h > h_len) return false;
    if (h == 0 || h == h_len) return true;
    if (!drop_known(s, h_len) || !swa_can_cut(s, h)) return false;
    if (s->n_dropped == 0) return true; /* everything is held */
    if (s->overflow == KVLM_OVERFLOW_RING) return h >= s->n_dropped + s->window - 1; /* the window before h is held */
    const int32_t head = kv_seq_head(s);
    return h <= head || h >= head + s->n_dropped;
}

kvlm_status kv_seq_rewind(kv_seq *s, int64_t h_len, int64_t h, kvlm_error *err) {
    if (!kv_seq_can_rewind(s, h_len, h))
        return kv_fail(err, KVLM_ERR_UNSUPPORTED,
                       "kv cache: cannot go back to %lld of %lld tokens: that part of the history was dropped",
                       (long long)h, (long long)h_len);
    if (h == h_len) return KVLM_OK;
    if (s->overflow == KVLM_OVERFLOW_RING) {
        /* slots of positions >= h are stale: attention skips positions after the query, and a pass writes
           every position up to its last query before reading */
        const int32_t n = h < s->n_ctx ? (int32_t)h : s->n_ctx;
        kv_pool_count(s->pool, KV_STAT_TOKENS, -(int64_t)(s->n - n));
        s->n = n;
        s->next_pos = (int32_t)h;
        if (h == 0) {
            s->n_dropped = 0;
            s->drop_hash = 0;
        }
        return KVLM_OK;
    }
    const int32_t head = kv_seq_head(s);
    int64_t slots = h;
    if (s->n_dropped > 0 && h > head) slots = h - s->n_dropped; /* in the held tail */
    kvlm_status st = kv_seq_truncate(s, (int32_t)slots, err);
    if (st) return st;
    if (h <= head || s->n_dropped == 0) {
        /* only never-moved slots remain */
        s->n_dropped = 0;
        s->drop_hash = 0;
        if (h == 0) s->shareable = s->share_base;
    }
    return KVLM_OK;
}

int32_t kv_seq_reuse_point(const kv_seq *s, int64_t h_len, const int32_t *ctx, int32_t limit, bool check_dropped) {
    if (limit > h_len) limit = (int32_t)h_len;
    if (limit <= 0) return 0;
    if (!drop_known(s, h_len)) return (int32_t)(limit == h_len && !check_dropped ? limit : 0);
    const bool ring = s->overflow == KVLM_OVERFLOW_RING;
    if (s->n_dropped == 0) { /* everything is held, in order */
        int32_t i = 0;
        while (i < limit && s->tokens[i] == ctx[i]) i++;
        return i == h_len || swa_can_cut(s, i) ? i : 0;
    }
    if (ring) {
        const int64_t low = s->n_dropped + s->window - 1; /* the first point a query's window is held from */
        if (limit < low) return 0;
        if (check_dropped) {
            uint64_t hh = 0;
            for (int64_t i = 0; i < s->n_dropped; i++) hh = kv_hist_hash(hh, ctx[i]);
            if (hh != s->drop_hash) return 0;
        }
        int64_t p = s->n_dropped;
        while (p < limit && s->tokens[p % s->n_ctx] == ctx[p]) p++;
        return p >= low ? (int32_t)p : 0;
    }
    const int32_t head = kv_seq_head(s);
    const int32_t hl = limit < head ? limit : head;
    int32_t i = 0;
    while (i < hl && s->tokens[i] == ctx[i]) i++;
    if (i < head || limit < head + s->n_dropped) return i; /* diverges in the head, or ends in the dropped part */
    if (check_dropped) {
        uint64_t hh = 0;
        for (int64_t j = head; j < head + s->n_dropped; j++) hh = kv_hist_hash(hh, ctx[j]);
        if (hh != s->drop_hash) return head;
    }
    int64_t p = head + s->n_dropped;
    while (p < limit && s->tokens[p - s->n_dropped] == ctx[p]) p++;
    return (int32_t)p;
}

kvlm_status kv_seq_prepare(kv_seq *s, int32_t n_new, kvlm_error *err) {
    if (n_new <= 0) return KVLM_OK;
    if (s->overflow == KVLM_OVERFLOW_RING) {
        if (n_new > s->n_ctx - s->window)
            return kv_fail(err, KVLM_ERR_INTERNAL, "kv cache: a ring pass of %d tokens exceeds its slack", n_new);
        return KVLM_OK;
    }
    if (s->swa && n_new > s->swa_cap - s->swa)
        return kv_fail(err, KVLM_ERR_INTERNAL, "kv cache: a pass of %d tokens exceeds the sliding-window ring's slack",
                       n_new);
    if ((int64_t)s->n + n_new <= s->n_ctx) return KVLM_OK;
    switch (s->overflow) {
    case KVLM_OVERFLOW_SHIFT:
        while ((int64_t)s->n + n_new > s->n_ctx) {
            int32_t d = (s->n - s->n_keep) / 2;
            if (d < 1 || (int64_t)s->n_keep + n_new > s->n_ctx)
                return kv_fail(err, KVLM_ERR_CONTEXT_FULL,
                               "eval: %d new tokens do not fit in the context of %d even after a shift (n_keep %d)",
                               n_new, s->n_ctx, s->n_keep);
            kvlm_status st = shift(s, s->n_keep, d, err);
            if (st) return st;
        }
        return KVLM_OK;
    case KVLM_OVERFLOW_SLIDING: {
        int32_t need = (int32_t)((int64_t)s->n + n_new - s->n_ctx);
        int32_t d = (need + s->P - 1) / s->P * s->P; /* evict a page's worth at a time */
        if (d > s->n - s->n_sink) d = s->n - s->n_sink;
        if (d < need)
            return kv_fail(err, KVLM_ERR_CONTEXT_FULL, "eval: %d new tokens do not fit next to %d sink tokens in %d",
                           n_new, s->n_sink, s->n_ctx);
        return shift(s, s->n_sink, d, err);
    }
    default:
        return kv_fail(err, KVLM_ERR_CONTEXT_FULL, "eval: %d tokens would exceed the context of %d (%d held, %d new)",
                       s->n + n_new, s->n_ctx, s->n, n_new);
    }
}

int32_t kv_seq_slot(const kv_seq *s, int32_t i) {
    if (s->overflow == KVLM_OVERFLOW_RING) return (s->next_pos + i) % s->n_ctx;
    return s->n + i;
}

int32_t kv_seq_pass_cap(const kv_seq *s) {
    if (s->overflow == KVLM_OVERFLOW_RING) return s->n_ctx - s->window;
    return s->swa ? s->swa_cap - s->swa : INT32_MAX;
}

int32_t kv_seq_span(const kv_seq *s, int32_t n_new) {
    if (s->overflow == KVLM_OVERFLOW_RING) return s->next_pos + n_new < s->n_ctx ? s->next_pos + n_new : s->n_ctx;
    return s->n + n_new;
}

kvlm_status kv_seq_reserve(kv_seq *s, const int32_t *tokens, int32_t n_new, kvlm_error *err) {
    if (s->overflow != KVLM_OVERFLOW_RING) {
        const int32_t end = s->n + n_new;
        if (!ensure_slots(s, end)) return kv_fail(err, KVLM_ERR_NOMEM, "kv cache: out of memory");
        const int32_t need = (end + s->P - 1) / s->P, had = s->n_pages;
        for (int32_t j = had; j < need; j++) {
            s->pages[j] = kv_pool_alloc(s->pool, s->layout);
            if (!s->pages[j]) {
                for (int32_t i = had; i < j; i++) kv_pool_release(s->pool, s->pages[i]);
                s->n_pages = had;
                return kv_fail(err, KVLM_ERR_NOMEM,
                               "kv cache: the page pool is full (%lld tokens at most) and nothing can be evicted",
                               (long long)kv_pool_params(s->pool)->max_tokens);
            }
            s->n_pages = j + 1;
        }
    }
    for (int32_t i = 0; i < n_new; i++) {
        const int32_t slot = kv_seq_slot(s, i);
        if (s->overflow == KVLM_OVERFLOW_RING) {
            /* the slot's position one lap back leaves the ring: into the dropped record */
            const int32_t gone = s->next_pos + i - s->n_ctx;
            if (gone >= 0 && s->pos[slot] == gone) {
                s->drop_hash = kv_hist_hash(s->drop_hash, s->tokens[slot]);
                s->n_dropped++;
            }
        }
        s->tokens[slot] = tokens[i];
        s->pos[slot] = s->next_pos + i;
    }
    if (s->swa) { /* the ring slots these positions take were held by positions a lap back */
        const int64_t lo = (int64_t)s->next_pos + n_new - s->swa_cap;
        if (lo > s->swa_lo) s->swa_lo = (int32_t)lo;
    }
    return KVLM_OK;
}

void kv_seq_write(kv_seq *s, int layer, int32_t slot, const float *k, const float *v) {
    const bool ring = kv_seq_layer_in_ring(s, layer);
    const int32_t at = ring ? s->pos[slot] % s->swa_cap : slot, li = kv_seq_layer_index(s, layer);
    kv_page *pg = ring ? s->swa_pages[at / s->P] : s->pages[at / s->P];
    const int32_t i = at % s->P;
    pg->layout->k.encode(k, kv_page_k_row(pg, li, i), s->kv_dim);
    pg->layout->v.encode(v, kv_page_v_row(pg, li, i), s->kv_dim);
}

/* Re-quantizes pages older than compress_after into the compression type. The compressed page
 * replaces the original in the prefix index, and the original's memory is freed once no sequence
 * holds it (kv_pool_supersede); a sequence sharing the prefix that compresses the same page later
 * takes the indexed compressed copy (the same bytes: one conversion of the same rows) instead of
 * making its own. bytes_saved counts what this frees minus what it allocates. */
static void compress_old_pages(kv_seq *s) {
    const int32_t limit = s->n - s->compress_after; /* slots below this are old */
    const kv_layout *cl = s->compress_layout;
    float *tmp = NULL;
    for (int32_t j = 0; (j + 1) * s->P <= limit; j++) {
        kv_page *old = s->pages[j];
        if (old->layout == cl) continue;
        kv_page *pg = NULL;
        if (s->shareable) {
            const uint64_t parent = j ? s->keys[j - 1] : root_key(s);
            pg = kv_pool_lookup(s->pool, s->keys[j], parent, s->tokens + (int64_t)j * s->P, cl->type_k, cl->type_v);
        }
        if (!pg) {
            if (!tmp && !(tmp = malloc((size_t)s->kv_dim * sizeof *tmp))) return;
            pg = kv_pool_alloc(s->pool, cl);
            if (!pg) break; /* no room: try again after the next eval */
            for (int32_t t = 0; t < s->P; t++) copy_slot(s, old, t, pg, t, 0, tmp);
            kv_pool_count(s->pool, KV_STAT_BYTES_SAVED, -(int64_t)cl->page_bytes);
        }
        s->pages[j] = pg;
        kv_pool_count(s->pool, KV_STAT_COMPRESSIONS, 1);
        kv_pool_supersede(s->pool, old, pg);
    }
    free(tmp);
}

void kv_seq_commit(kv_seq *s, int32_t n_new) {
    s->misses += n_new;
    kv_pool_count(s->pool, KV_STAT_MISSES, n_new);
    if (s->overflow == KVLM_OVERFLOW_RING) {
        int32_t before = s->n;
        s->next_pos += n_new;
        s->n = s->next_pos < s->n_ctx ? s->next_pos : s->n_ctx;
        kv_pool_count(s->pool, KV_STAT_TOKENS, s->n - before);
        return;
    }
    const int32_t old_full = s->n / s->P;
    s->n += n_new;
    s->next_pos = s->n;
    kv_pool_count(s->pool, KV_STAT_TOKENS, n_new);
    if (s->shareable) {
        for (int32_t j = old_full; j < s->n / s->P; j++) {
            const uint64_t parent = j ? s->keys[j - 1] : root_key(s);
            s->keys[j] = kv_page_key(parent, s->tokens + (int64_t)j * s->P, s->P);
            kv_pool_index(s->pool, s->pages[j], s->keys[j], parent, s->tokens + (int64_t)j * s->P);
        }
    }
    if (s->compress_layout) compress_old_pages(s);
}

void kv_seq_count_hits(kv_seq *s, int32_t n) {
    if (n <= 0) return;
    s->hits += n;
    kv_pool_count(s->pool, KV_STAT_HITS, n);
}

void kv_seq_reindex(kv_seq *s) {
    if (!s->shareable) return;
    for (int32_t j = 0; j < s->n / s->P; j++) {
        const uint64_t parent = j ? s->keys[j - 1] : root_key(s);
        s->keys[j] = kv_page_key(parent, s->tokens + (int64_t)j * s->P, s->P);
        kv_pool_index(s->pool, s->pages[j], s->keys[j], parent, s->tokens + (int64_t)j * s->P);
    }
}

kvlm_status kv_seq_truncate(kv_seq *s, int32_t n, kvlm_error *err) {
    if (n < 0 || n > s->n) return kv_fail(err, KVLM_ERR_INVALID_ARG, "truncate: %d is outside 0..%d", n, s->n);
    if (n == s->n) return KVLM_OK;
    if (s->overflow == KVLM_OVERFLOW_RING)
        return kv_fail(err, KVLM_ERR_UNSUPPORTED, "truncate: a ring cache cannot roll back");
    if (!swa_can_cut(s, n))
        return kv_fail(err, KVLM_ERR_UNSUPPORTED,
                       "truncate: cannot go back to %d of %d tokens: the sliding-window layers keep only the "
                       "positions from %d (a window of %d back from the cut is needed)",
                       n, s->n, s->swa_lo, s->swa);
    const int32_t keep = (n + s->P - 1) / s->P;
    if (n % s->P != 0) {
        /* the kept part of a shared or indexed page is copied, not written over */
        kv_page *pg = s->pages[keep - 1];
        if (!kv_pool_claim(s->pool, pg, false)) { /* shared or indexed */
            kv_page *cp = kv_pool_alloc(s->pool, pg->layout);
            if (!cp) return kv_fail(err, KVLM_ERR_NOMEM, "truncate: the pool has no room to copy a shared page");
            const kv_layout *l = pg->layout;
            const uint64_t m = (uint64_t)(n % s->P);
            for (int li = 0; li < l->n_layers; li++) {
                memcpy(kv_page_k(cp, li), kv_page_k(pg, li), m * l->k_row);
                memcpy(kv_page_v(cp, li), kv_page_v(pg, li), m * l->v_row);
            }
            kv_pool_release(s->pool, pg);
            s->pages[keep - 1] = cp;
        }
    }
    for (int32_t j = keep; j < s->n_pages; j++) kv_pool_release(s->pool, s->pages[j]);
    s->n_pages = keep;
    kv_pool_count(s->pool, KV_STAT_TOKENS, -(int64_t)(s->n - n));
    s->n = n;
    s->next_pos = n;
    if (n == 0) s->swa_lo = 0; /* a reset: nothing is read before it is written again */
    return KVLM_OK;
}

int32_t kv_seq_attach_prefix(kv_seq *s, const int32_t *tokens, int32_t n_tokens) {
    if (!s->shareable || s->n % s->P != 0) return 0;
    int32_t attached = 0;
    while ((int64_t)s->n + s->P <= (int64_t)n_tokens - 1 && s->n + s->P <= s->n_ctx) {
        const int32_t j = s->n / s->P;
        const uint64_t parent = j ? s->keys[j - 1] : root_key(s);
        const int32_t *pt = tokens + s->n;
        const uint64_t key = kv_page_key(parent, pt, s->P);
        if (!ensure_slots(s, s->n + s->P)) break;
        kv_page *pg = kv_pool_lookup(s->pool, key, parent, pt, s->layout->type_k, s->layout->type_v);
        /* a compressing sequence also takes a page another one compressed (it replaced the original) */
        if (!pg && s->compress_layout)
            pg = kv_pool_lookup(s->pool, key, parent, pt, s->compress_layout->type_k, s->compress_layout->type_v);
        if (!pg) break;
        s->pages[j] = pg;
        s->n_pages = j + 1;
        s->keys[j] = key;
        for (int32_t i = 0; i < s->P; i++) {
            s->tokens[s->n + i] = pt[i];
            s->pos[s->n + i] = s->n + i;
        }
        s->n += s->P;
        s->next_pos = s->n;
        attached += s->P;
    }
    if (attached) {
        kv_seq_count_hits(s, attached);
        kv_pool_count(s->pool, KV_STAT_TOKENS, attached);
    }
    return attached;
}

/* ------------------------------------------------------------ the session's requests */

bool kv_seq_holds_history(const kv_seq *s, int64_t h_len) {
    return s->overflow != KVLM_OVERFLOW_RING && s->n == h_len;
}

static void count_recomputed(kv_seq *s, int32_t n) {
    s->recomputed += n;
    kv_pool_count(s->pool, KV_STAT_RECOMPUTED, n);
}

int32_t kv_seq_common_prefix(const kv_seq *s, const int32_t *tokens, int32_t limit) {
    if (limit > s->n) limit = s->n;
    int32_t i = 0;
    while (i < limit && s->tokens[i] == tokens[i]) i++;
    /* a sliding-window ring may no longer hold the window before i: then only a reset is possible */
    return i == s->n || swa_can_cut(s, i) ? i : 0;
}

kvlm_status kv_seq_sync(kv_seq *s, int64_t h_len, const int32_t *tokens, int32_t n, int32_t n_past, bool attach,
                        int32_t *kept, kvlm_error *err) {
    const bool autom = n_past == KVLM_AUTO;
    int32_t start; /* first token to compute */
    if (!kv_seq_holds_history(s, h_len)) {
        /* after a shift (or in a ring) the cache no longer holds the whole history: it can go back only
           to points it still holds (the kept head, the held tail, a ring's window) */
        if (autom) {
            /* the whole history is compared, the dropped part by its hash */
            start = kv_seq_reuse_point(s, h_len, tokens, n - 1, true);
        } else {
            if (!kv_seq_can_rewind(s, h_len, n_past))
                return kv_fail(err, KVLM_ERR_UNSUPPORTED,
                               "eval: this session's cache was shifted or is a ring and no longer holds the "
                               "history at n_past %d (it has consumed %lld tokens)",
                               n_past, (long long)h_len);
            start = kv_seq_reuse_point(s, h_len, tokens, n_past, false);
            if (start < n_past) count_recomputed(s, n_past - start);
        }
        kvlm_status st = kv_seq_rewind(s, h_len, start, err);
        if (st) return st;
        if (autom) kv_seq_count_hits(s, start);
    } else {
        /* the longest common prefix of the history and the new tokens */
        const int32_t lcp = kv_seq_common_prefix(s, tokens, autom ? n - 1 : n_past);
        if (s->overflow == KVLM_OVERFLOW_ERROR && n > s->n_ctx)
            return kv_fail(err, KVLM_ERR_CONTEXT_FULL, "eval: %d tokens exceed the context of %d", n, s->n_ctx);
        if (!autom && lcp < n_past) count_recomputed(s, n_past - lcp);
        kvlm_status st = kv_seq_truncate(s, lcp, err);
        if (st) return st;
        /* in auto mode the caller did not say what was cached: the common prefix counts as reuse */
        if (autom) kv_seq_count_hits(s, lcp);
        start = lcp;
        /* reuse cached pages beyond the common prefix */
        if (attach) start += kv_seq_attach_prefix(s, tokens, n);
    }
    *kept = start;
    return KVLM_OK;
}

kvlm_status kv_seq_rollback(kv_seq *s, int64_t h_len, int64_t h, kvlm_error *err) {
    if (h < 0 || h > h_len)
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "truncate: %lld is outside 0..%lld", (long long)h, (long long)h_len);
    if (kv_seq_holds_history(s, h_len)) return kv_seq_truncate(s, (int32_t)h, err);
    /* after a shift or in a ring: back to the points still held, or to 0 (a reset) */
    if (!kv_seq_can_rewind(s, h_len, h))
        return kv_fail(err, KVLM_ERR_UNSUPPORTED,
                       "truncate: the cache was shifted or is a ring and no longer holds the history at %lld",
                       (long long)h);
    return kv_seq_rewind(s, h_len, h, err);
}

bool kv_seq_fits(const kv_seq *s, int64_t n_total) {
    return s->overflow != KVLM_OVERFLOW_ERROR || n_total <= s->n_ctx;
}

int32_t kv_seq_next_pass(const kv_seq *s, int32_t n) {
    if (s->overflow != KVLM_OVERFLOW_SHIFT && s->overflow != KVLM_OVERFLOW_SLIDING) return n;
    const int32_t room = s->n_ctx - s->n, most = kv_seq_max_pass(s);
    const int32_t cap = room > most ? room : most;
    return n > cap ? cap : n;
}

int32_t kv_seq_tokens(const kv_seq *s, int32_t *out, int32_t n_max) {
    if (s->overflow == KVLM_OVERFLOW_RING) {
        /* oldest first */
        int32_t n = 0;
        for (int32_t p = s->next_pos - s->n; p < s->next_pos; p++, n++)
            if (n < n_max) out[n] = s->tokens[p % s->n_ctx];
        return n;
    }
    for (int32_t i = 0; i < s->n && i < n_max; i++) out[i] = s->tokens[i];
    return s->n;
}

void kv_seq_stats(const kv_seq *s, kvlm_kv_stats *st) {
    kv_pool_stats(s->pool, st);
    st->tokens = s->n;
    st->bytes_f32_equivalent = (int64_t)s->n * s->kv_dim * 2 * 4 * s->n_layer;
    st->hits = s->hits;
    st->misses = s->misses;
    st->recomputed = s->recomputed;
    st->hit_rate = st->hits + st->misses > 0 ? (double)st->hits / (double)(st->hits + st->misses) : 0.0;
}

/* ------------------------------------------------------------ export and import */

kvlm_status kv_seq_export(const kv_seq *s, int32_t n_hist, kv_seq_desc *d, kvlm_error *err) {
    memset(d, 0, sizeof *d);
    d->page_tokens = (uint32_t)s->P;
    d->n_layer = (uint32_t)s->n_layer;
    d->kv_dim = (uint32_t)s->kv_dim;
    d->type_k = s->layout->type_k;
    d->type_v = s->layout->type_v;
    d->overflow = (uint32_t)s->overflow;
    d->shareable = s->shareable;
    /* pages past the last token (a failed pass's reservation) are not part of the contents */
    const int64_t n_pages = kv_seq_state_pages(s, s->n);
    d->n_pages = (uint32_t)n_pages;
    d->n = s->n;
    d->next_pos = s->next_pos;
    d->n_hist = n_hist;
    d->n_ctx = s->n_ctx;
    d->n_head = kv_seq_head(s);
    d->n_dropped = s->n_dropped;
    d->drop_hash = s->drop_hash;
    d->swa_cap = (uint32_t)s->swa_cap;
    d->swa_lo = s->swa_lo;
    /* slots in use: [0, n) (a ring fills its slots in order before wrapping) */
    d->tokens = s->tokens;
    d->pos = s->pos;
    /* only contents an import accepts are described */
    kvlm_error why;
    if (kv_seq_check_desc(s, d, &why) != KVLM_OK) return kv_fail(err, KVLM_ERR_INTERNAL, "%s", why.msg);
    const int64_t n_glob = n_pages - (s->swa ? s->swa_cap / s->P : 0);
    if (n_glob > s->n_pages)
        return kv_fail(err, KVLM_ERR_INTERNAL, "holds %d pages for %d tokens", s->n_pages, s->n);
    for (int64_t j = 0; j < n_glob; j++) {
        const kv_layout *l = s->pages[j]->layout;
        if (kv_seq_page_layout(s, l->type_k, l->type_v) != l)
            return kv_fail(err, KVLM_ERR_INTERNAL, "has page %lld in types %s/%s it does not use", (long long)j,
                           kv_dtype_name(l->type_k), kv_dtype_name(l->type_v));
    }
    return KVLM_OK;
}

/* Pages of the description of n slots before the sliding-window ring's (all of them without one). */
static int32_t pages_before_ring(const kv_seq *s, int32_t n) {
    return (int32_t)(kv_seq_state_pages(s, n) - (s->swa ? s->swa_cap / s->P : 0));
}

kv_page_desc kv_seq_export_page(const kv_seq *s, int32_t j, uint8_t *dst) {
    const int32_t n_glob = pages_before_ring(s, s->n);
    const kv_page *pg = j < n_glob ? s->pages[j] : s->swa_pages[j - n_glob];
    const kv_layout *l = pg->layout;
    const kv_page_desc pd = {l->type_k, l->type_v, l->page_bytes};
    if (!dst) return pd;
    memcpy(dst, pg->data, l->page_bytes);
    if (j >= n_glob) {
        /* a ring slot not holding one of the positions [swa_lo, next_pos) (stale after a cut, or never
           written) is zeroed */
        const int64_t C = s->swa_cap, lo = s->swa_lo;
        for (int32_t i = 0; i < s->P; i++) {
            const int64_t slot = (int64_t)(j - n_glob) * s->P + i;
            const int64_t q = lo + ((slot - lo) % C + C) % C; /* the one position of [lo, lo + C) at that slot */
            if (q < s->next_pos) continue;
            for (int li = 0; li < l->n_layers; li++) {
                memset(dst + kv_layout_k_off(l, li, i), 0, l->k_row);
                memset(dst + kv_layout_v_off(l, li, i), 0, l->v_row);
            }
        }
        return pd;
    }
    /* rows past the last stored token are unwritten: zero them so files are deterministic */
    const int32_t used = s->n - j * s->P;
    if (used < s->P) {
        const int32_t m = used > 0 ? used : 0;
        for (int li = 0; li < l->n_layers; li++) {
            memset(dst + kv_layout_k_off(l, li, m), 0, (uint64_t)(s->P - m) * l->k_row);
            memset(dst + kv_layout_v_off(l, li, m), 0, (uint64_t)(s->P - m) * l->v_row);
        }
    }
    return pd;
}

kvlm_status kv_seq_import(kv_seq *s, const kv_seq_desc *d, kvlm_error *err) {
    /* slot arrays for every page (a ring has them already) */
    if (!ensure_slots(s, pages_before_ring(s, d->n) * s->P)) return kv_fail(err, KVLM_ERR_NOMEM, "out of memory");
    if (d->n > 0) {
        memcpy(s->tokens, d->tokens, (size_t)d->n * sizeof *s->tokens);
        memcpy(s->pos, d->pos, (size_t)d->n * sizeof *s->pos);
    }
    return KVLM_OK;
}

uint8_t *kv_seq_import_page(kv_seq *s, const kv_seq_desc *d, uint32_t j, const kv_page_desc *pd, kvlm_error *err) {
    const int32_t n_glob = pages_before_ring(s, d->n);
    if (s->swa && (int64_t)j >= n_glob && j < d->n_pages) {
        /* the sliding-window ring's own pages, in its one layout */
        const kv_layout *rl = s->swa_layout;
        if (pd->type_k != rl->type_k || pd->type_v != rl->type_v || pd->bytes != rl->page_bytes) {
            kv_fail(err, KVLM_ERR_FORMAT,
                    "page %u (of the sliding-window ring) is stored as %s/%s in %llu bytes (the ring's pages are "
                    "%s/%s in %llu)",
                    j, kv_dtype_name(pd->type_k), kv_dtype_name(pd->type_v), (unsigned long long)pd->bytes,
                    kv_dtype_name(rl->type_k), kv_dtype_name(rl->type_v), (unsigned long long)rl->page_bytes);
            return NULL;
        }
        if (s->n_pages < n_glob) {
            kv_fail(err, KVLM_ERR_INTERNAL, "page %u imported out of order", j);
            return NULL;
        }
        return s->swa_pages[j - (uint32_t)n_glob]->data;
    }
    /* only the layouts this sequence writes (its types, or its compression type) */
    const kv_layout *l = kv_seq_page_layout(s, pd->type_k, pd->type_v);
    const bool ring = s->overflow == KVLM_OVERFLOW_RING;
    if (!l) {
        kv_fail(err, KVLM_ERR_FORMAT, "page %u is stored as %s/%s, which this session does not use (K %s, V %s%s%s)",
                j, kv_dtype_name(pd->type_k), kv_dtype_name(pd->type_v), kv_dtype_name(s->layout->type_k),
                kv_dtype_name(s->layout->type_v), s->compress_layout && !ring ? ", compressed " : "",
                s->compress_layout && !ring ? kv_dtype_name(s->compress_layout->type_k) : "");
        return NULL;
    }
    if (l->page_bytes != pd->bytes) {
        kv_fail(err, KVLM_ERR_FORMAT, "page %u claims %llu bytes (a %s/%s page has %llu)", j,
                (unsigned long long)pd->bytes, kv_dtype_name(pd->type_k), kv_dtype_name(pd->type_v),
                (unsigned long long)l->page_bytes);
        return NULL;
    }
    if ((int64_t)j >= n_glob || (int64_t)j > s->n_pages) {
        kv_fail(err, KVLM_ERR_INTERNAL, "page %u imported out of order", j);
        return NULL;
    }
    /* a ring already has its own pages; otherwise allocate */
    if ((int32_t)j < s->n_pages && s->pages[j]->layout == l) return s->pages[j]->data;
    kv_page *pg = kv_pool_alloc(s->pool, l);
    if (!pg) {
        kv_fail(err, KVLM_ERR_NOMEM, "the page pool has no room for %u pages", d->n_pages);
        return NULL;
    }
    if ((int32_t)j < s->n_pages) kv_pool_release(s->pool, s->pages[j]);
    s->pages[j] = pg;
    if ((int32_t)j >= s->n_pages) s->n_pages = (int32_t)j + 1;
    return pg->data;
}

void kv_seq_import_commit(kv_seq *dst, kv_seq *s, const kv_seq_desc *d) {
    s->n = d->n;
    s->next_pos = d->next_pos;
    s->shareable = s->shareable && d->shareable;
    s->n_dropped = d->n_dropped;
    s->drop_hash = d->drop_hash;
    s->swa_lo = d->swa_lo;
    kv_pool_count(s->pool, KV_STAT_TOKENS, d->n);
    /* the old contents go; whoever points at dst (the forward pass) now sees the new ones */
    kv_seq_destroy(dst);
    *dst = *s;
    memset(s, 0, sizeof *s);
    kv_seq_reindex(dst);
}

kvlm_status kv_seq_fork(kv_seq *dst, const kv_seq *src, kvlm_error *err) {
    const bool ring = src->overflow == KVLM_OVERFLOW_RING;
    if (dst->n || dst->overflow != src->overflow || dst->P != src->P || dst->n_ctx != src->n_ctx ||
        dst->layout->type_k != src->layout->type_k || dst->layout->type_v != src->layout->type_v ||
        (!ring && dst->n_pages > 1) || (ring && dst->n_pages != src->n_pages) || dst->swa_cap != src->swa_cap ||
        dst->n_glayer != src->n_glayer)
        return kv_fail(err, KVLM_ERR_INTERNAL, "fork: the sequences differ in configuration");
    if (!ensure_slots(dst, src->n_pages * src->P)) return kv_fail(err, KVLM_ERR_NOMEM, "fork: out of memory");
    const bool share = dst->pool == src->pool && !ring;
    const int32_t n_full = src->n / src->P, had = dst->n_pages;
    kv_page **mine = ring ? NULL : calloc((size_t)(src->n_pages ? src->n_pages : 1), sizeof *mine);
    if (!ring && !mine) return kv_fail(err, KVLM_ERR_NOMEM, "fork: out of memory");
    for (int32_t j = 0; j < src->n_pages; j++) {
        kv_page *sp = src->pages[j];
        if (ring) { /* the ring's own pages exist already, in its one layout */
            memcpy(dst->pages[j]->data, sp->data, sp->layout->page_bytes);
            continue;
        }
        if (share && j < n_full) {
            kv_pool_retain(src->pool, sp);
            mine[j] = sp;
            continue;
        }
        const kv_layout *l = kv_seq_page_layout(dst, sp->layout->type_k, sp->layout->type_v);
        kv_page *pg = l ? kv_pool_alloc(dst->pool, l) : NULL;
        if (!pg) {
            for (int32_t i = 0; i < j; i++) kv_pool_release(dst->pool, mine[i]);
            free(mine);
            return kv_fail(err, KVLM_ERR_NOMEM, "fork: the page pool has no room for a copy of %d pages",
                           src->n_pages - (share ? n_full : 0));
        }
        memcpy(pg->data, sp->data, l->page_bytes);
        mine[j] = pg;
    }
    if (!ring) {
        for (int32_t j = 0; j < had; j++) kv_pool_release(dst->pool, dst->pages[j]);
        memcpy(dst->pages, mine, (size_t)src->n_pages * sizeof *mine);
        dst->n_pages = src->n_pages;
        free(mine);
        if (n_full) memcpy(dst->keys, src->keys, (size_t)n_full * sizeof *dst->keys);
    }
    if (src->n) {
        memcpy(dst->tokens, src->tokens, (size_t)src->n * sizeof *dst->tokens);
        memcpy(dst->pos, src->pos, (size_t)src->n * sizeof *dst->pos);
    }
    dst->n = src->n;
    dst->next_pos = src->next_pos;
    dst->shareable = src->shareable;
    dst->n_dropped = src->n_dropped;
    dst->drop_hash = src->drop_hash;
    /* a sliding-window ring is overwritten in place: copied */
    for (int32_t j = 0; src->swa && j < src->swa_cap / src->P; j++)
        memcpy(dst->swa_pages[j]->data, src->swa_pages[j]->data, src->swa_layout->page_bytes);
    dst->swa_lo = src->swa_lo;
    kv_pool_count(dst->pool, KV_STAT_TOKENS, dst->n);
    if (!share && !ring) kv_seq_reindex(dst); /* copies on another pool: indexed there */
    return KVLM_OK;
}
