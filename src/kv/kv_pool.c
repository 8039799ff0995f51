/* The page pool: allocation by class, growth, the prefix index and LRU. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "core/clock.h"
#include "core/dtype.h"
#include "core/error.h"
#include "kv_cache.h"

#define KV_MAX_CLASSES 8

struct kv_page_pool {
    pthread_mutex_t mu;
    int32_t P, n_layer, kv_dim;
    kvlm_cache_params params;
    kv_layout classes[KV_MAX_CLASSES];
    kv_page *free_list[KV_MAX_CLASSES];
    int n_classes;
    int64_t pages_allocated, pages_free, capacity_pages, max_pages;
    /* prefix index */
    kv_page **buckets;
    uint64_t n_buckets, n_indexed;
    kv_page *lru_head, *lru_tail; /* head = least recently used */
    int64_t lru_pages, lru_bytes;
    /* statistics */
    atomic_llong st_bytes, st_evictions, st_growth_events;
    atomic_llong st_bytes_by_type[4];
    atomic_llong counts[KV_STAT_COUNT]; /* kept by the sequences (kv_pool_count) */
    double growth_ms_total, growth_ms_max; /* under mu */
    /* pages the owner needs (0: no target). With a target, growth never goes past it while a cached page
       can be evicted instead, and pages past it are freed when released (a session with a fixed context
       owning its pool holds no more than its context and policy need). */
    int64_t target_pages;
};

int kv_type_slot(uint32_t type) {
    switch (type) {
    case KV_F32: return 0;
    case KV_F16: return 1;
    case KV_Q8_0: return 2;
    case KV_Q4_0: return 3;
    default: return -1;
    }
}

int32_t kv_pool_page_tokens(const kv_page_pool *p) { return p->P; }

const kvlm_cache_params *kv_pool_params(const kv_page_pool *p) { return &p->params; }

bool kv_pool_has_target(kv_page_pool *p) {
    pthread_mutex_lock(&p->mu);
    const bool t = p->target_pages > 0;
    pthread_mutex_unlock(&p->mu);
    return t;
}

void kv_pool_count(kv_page_pool *p, kv_pool_stat which, int64_t delta) {
    atomic_fetch_add(&p->counts[which], (long long)delta);
}

kvlm_status kv_pool_create(int32_t n_layer, int32_t kv_dim, const kvlm_cache_params *params, kv_page_pool **out,
                           kvlm_error *err) {
    *out = NULL;
    const kvlm_cache_params *cp = params;
    if (cp->page_tokens < KV_PAGE_TOKENS_MIN || cp->page_tokens > KV_PAGE_TOKENS_MAX)
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "kv cache: page_tokens %d is outside %d..%d", cp->page_tokens,
                      KV_PAGE_TOKENS_MIN, KV_PAGE_TOKENS_MAX);
    if (cp->max_tokens < cp->page_tokens || cp->initial_tokens < 0 || cp->initial_tokens > cp->max_tokens)
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "kv cache: need page_tokens <= max_tokens and 0 <= initial <= max");
    if (cp->growth == KVLM_GROWTH_FACTOR && !(cp->growth_factor > 1.0f && cp->growth_factor <= 16.0f))
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "kv cache: growth factor %g must be in (1, 16]", cp->growth_factor);
    if (cp->growth == KVLM_GROWTH_LINEAR && cp->growth_tokens <= 0)
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "kv cache: linear growth needs growth_tokens > 0");
    if ((unsigned)cp->growth > KVLM_GROWTH_ADAPTIVE)
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "kv cache: unknown growth policy %d", (int)cp->growth);
    kv_page_pool *p = calloc(1, sizeof *p);
    if (!p) return kv_fail(err, KVLM_ERR_NOMEM, "kv cache: out of memory");
    pthread_mutex_init(&p->mu, NULL);
    p->P = cp->page_tokens;
    p->n_layer = n_layer;
    p->kv_dim = kv_dim;
    p->params = *cp;
    p->max_pages = cp->max_tokens / cp->page_tokens;
    p->capacity_pages = (cp->initial_tokens + cp->page_tokens - 1) / cp->page_tokens;
    if (p->capacity_pages < 1) p->capacity_pages = 1;
    if (p->capacity_pages > p->max_pages) p->capacity_pages = p->max_pages;
    p->n_buckets = 256;
    p->buckets = calloc(p->n_buckets, sizeof *p->buckets);
    if (!p->buckets) {
        kv_pool_destroy(p);
        return kv_fail(err, KVLM_ERR_NOMEM, "kv cache: out of memory");
    }
    *out = p;
    return KVLM_OK;
}

static void page_free_memory(kv_page_pool *p, kv_page *pg) {
    atomic_fetch_sub(&p->st_bytes, (long long)pg->layout->page_bytes);
    int ts = kv_type_slot(pg->layout->type_k);
    if (ts >= 0) atomic_fetch_sub(&p->st_bytes_by_type[ts], (long long)pg->layout->page_bytes);
    free(pg->data);
    free(pg->tokens);
    free(pg);
    p->pages_allocated--;
}

void kv_pool_destroy(kv_page_pool *p) {
    if (!p) return;
    for (int c = 0; c < p->n_classes; c++)
        while (p->free_list[c]) {
            kv_page *pg = p->free_list[c];
            p->free_list[c] = pg->free_next;
            page_free_memory(p, pg);
        }
    /* cached pages are in the index */
    for (uint64_t b = 0; p->buckets && b < p->n_buckets; b++)
        while (p->buckets[b]) {
            kv_page *pg = p->buckets[b];
            p->buckets[b] = pg->hnext;
            page_free_memory(p, pg);
        }
    free(p->buckets);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

static kv_codec codec_of(uint32_t type) {
    const kv_quant_traits *tr = kv_quant_get(type);
    const kv_dtype_info *di = kv_dtype_get(type);
    kv_codec c = {tr ? tr->from_float : NULL, tr ? tr->to_float : NULL, di->block_size, (uint32_t)di->type_size};
    return c;
}

const kv_layout *kv_pool_layout(kv_page_pool *p, uint32_t type_k, uint32_t type_v) {
    pthread_mutex_lock(&p->mu);
    const kv_layout *found = NULL;
    for (int c = 0; c < p->n_classes && !found; c++)
        if (p->classes[c].type_k == type_k && p->classes[c].type_v == type_v) found = &p->classes[c];
    if (!found && p->n_classes < KV_MAX_CLASSES) {
        kv_layout l = {.type_k = type_k, .type_v = type_v, .index = p->n_classes};
        if (kv_dtype_row_bytes(type_k, (uint64_t)p->kv_dim, &l.k_row) &&
            kv_dtype_row_bytes(type_v, (uint64_t)p->kv_dim, &l.v_row)) {
            l.v_offset = (uint64_t)p->P * l.k_row;
            l.layer_bytes = (uint64_t)p->P * (l.k_row + l.v_row);
            l.page_bytes = l.layer_bytes * (uint64_t)p->n_layer;
            l.k = codec_of(type_k);
            l.v = codec_of(type_v);
            p->classes[p->n_classes] = l;
            found = &p->classes[p->n_classes++];
        }
    }
    pthread_mutex_unlock(&p->mu);
    return found;
}

/* mu held */
static kv_page *page_new(kv_page_pool *p, const kv_layout *l) {
    kv_page *pg = calloc(1, sizeof *pg);
    if (!pg) return NULL;
    pg->data = aligned_alloc(64, (l->page_bytes + 63) & ~(uint64_t)63);
    pg->tokens = malloc((size_t)p->P * sizeof *pg->tokens);
    if (!pg->data || !pg->tokens) {
        free(pg->data);
        free(pg->tokens);
        free(pg);
        return NULL;
    }
    pg->layout = l;
    p->pages_allocated++;
    atomic_fetch_add(&p->st_bytes, (long long)l->page_bytes);
    int ts = kv_type_slot(l->type_k);
    if (ts >= 0) atomic_fetch_add(&p->st_bytes_by_type[ts], (long long)l->page_bytes);
    return pg;
}

/* mu held */
static void lru_remove(kv_page_pool *p, kv_page *pg) {
    if (pg->lru_prev) pg->lru_prev->lru_next = pg->lru_next;
    else p->lru_head = pg->lru_next;
    if (pg->lru_next) pg->lru_next->lru_prev = pg->lru_prev;
    else p->lru_tail = pg->lru_prev;
    pg->lru_prev = pg->lru_next = NULL;
    p->lru_pages--;
    p->lru_bytes -= (int64_t)pg->layout->page_bytes;
}

/* mu held */
static void lru_push(kv_page_pool *p, kv_page *pg) {
    pg->lru_prev = p->lru_tail;
    pg->lru_next = NULL;
    if (p->lru_tail) p->lru_tail->lru_next = pg;
    else p->lru_head = pg;
    p->lru_tail = pg;
    p->lru_pages++;
    p->lru_bytes += (int64_t)pg->layout->page_bytes;
}

/* mu held */
static void index_remove(kv_page_pool *p, kv_page *pg) {
    kv_page **pp = &p->buckets[pg->key & (p->n_buckets - 1)];
    while (*pp && *pp != pg) pp = &(*pp)->hnext;
    if (*pp) *pp = pg->hnext;
    pg->hnext = NULL;
    pg->indexed = false;
    p->n_indexed--;
}

/* mu held: removes the least recently used cached page from the index and LRU */
static kv_page *evict_one(kv_page_pool *p) {
    kv_page *pg = p->lru_head;
    if (!pg) return NULL;
    lru_remove(p, pg);
    index_remove(p, pg);
    atomic_fetch_add(&p->st_evictions, 1);
    return pg;
}

/* mu held */
static void to_free_list(kv_page_pool *p, kv_page *pg) {
    pg->refs = 0;
    pg->free_next = p->free_list[pg->layout->index];
    p->free_list[pg->layout->index] = pg;
    p->pages_free++;
}

/* mu held: the next capacity under the growth policy */
static int64_t next_capacity(const kv_page_pool *p) {
    const int64_t cap = p->capacity_pages, max = p->max_pages;
    int64_t next;
    switch (p->params.growth) {
    case KVLM_GROWTH_LINEAR: next = cap + (p->params.growth_tokens + p->P - 1) / p->P; break;
    case KVLM_GROWTH_ADAPTIVE: {
        double f = cap < max / 4 ? 2.0 : (cap < max / 2 ? 1.5 : 1.25);
        next = (int64_t)((double)cap * f);
        break;
    }
    default: next = (int64_t)((double)cap * (double)p->params.growth_factor); break;
    }
    if (next <= cap) next = cap + 1;
    return next > max ? max : next;
}

/* mu held: a free page of any class, or the least recently used cached page; NULL if none */
static kv_page *take_spare(kv_page_pool *p) {
    for (int c = 0; c < p->n_classes; c++)
        if (p->free_list[c]) {
            kv_page *v = p->free_list[c];
            p->free_list[c] = v->free_next;
            p->pages_free--;
            return v;
        }
    return evict_one(p);
}

/* mu held: frees what the pool holds past its target (headroom, free pages, cached pages) */
static void trim_to_target(kv_page_pool *p) {
    while (p->target_pages > 0 && p->capacity_pages > p->target_pages) {
        if (p->pages_allocated < p->capacity_pages) {
            p->capacity_pages--;
            continue;
        }
        kv_page *v = take_spare(p);
        if (!v) break;
        page_free_memory(p, v);
        p->capacity_pages--;
    }
}

kv_page *kv_pool_alloc(kv_page_pool *p, const kv_layout *l) {
    pthread_mutex_lock(&p->mu);
    kv_page *pg = p->free_list[l->index];
    const int64_t target = p->target_pages;
    if (pg) {
        p->free_list[l->index] = pg->free_next;
        p->pages_free--;
    } else if (p->pages_allocated < p->capacity_pages) {
        pg = page_new(p, l);
    } else if (p->capacity_pages < p->max_pages && (target <= 0 || p->capacity_pages < target)) {
        /* grow: reserve the new pages up front; nothing stored moves */
        double t0 = kv_now_s();
        int64_t next = next_capacity(p);
        if (target > 0 && next > target) next = target; /* no overshoot past what the owner needs */
        int64_t want = next - p->pages_allocated;
        p->capacity_pages = next;
        pg = page_new(p, l);
        for (int64_t i = 1; pg && i < want; i++) {
            kv_page *extra = page_new(p, l);
            if (!extra) break;
            to_free_list(p, extra);
        }
        double ms = (kv_now_s() - t0) * 1e3;
        atomic_fetch_add(&p->st_growth_events, 1);
        p->growth_ms_total += ms;
        if (ms > p->growth_ms_max) p->growth_ms_max = ms;
    } else {
        /* at the maximum (or the target): reuse a free page of another class, or evict a cached one */
        kv_page *victim = take_spare(p);
        if (victim) {
            if (victim->layout == l) {
                pg = victim;
            } else {
                page_free_memory(p, victim);
                pg = page_new(p, l);
            }
        } else if (p->capacity_pages < p->max_pages) {
            /* past the target (a transient need, e.g. a session load building its new table): one page,
               freed again when released */
            double t0 = kv_now_s();
            p->capacity_pages++;
            pg = page_new(p, l);
            if (!pg) p->capacity_pages--;
            double ms = (kv_now_s() - t0) * 1e3;
            atomic_fetch_add(&p->st_growth_events, 1);
            p->growth_ms_total += ms;
            if (ms > p->growth_ms_max) p->growth_ms_max = ms;
        }
    }
    if (pg) {
        pg->refs = 1;
        pg->indexed = false;
        pg->free_next = NULL;
    }
    pthread_mutex_unlock(&p->mu);
    return pg;
}

/* mu held: a superseded page nobody holds any more gives its memory back */
static void free_superseded(kv_page_pool *p, kv_page *pg) {
    atomic_fetch_add(&p->counts[KV_STAT_BYTES_SAVED], (long long)pg->layout->page_bytes);
    page_free_memory(p, pg);
    trim_to_target(p);
}

void kv_pool_retain(kv_page_pool *p, kv_page *pg) {
    pthread_mutex_lock(&p->mu);
    pg->refs++;
    pthread_mutex_unlock(&p->mu);
}

void kv_pool_release(kv_page_pool *p, kv_page *pg) {
    if (!pg) return;
    pthread_mutex_lock(&p->mu);
    if (--pg->refs <= 0) {
        pg->refs = 0;
        if (pg->superseded) {
            free_superseded(p, pg);
        } else if (pg->indexed && p->params.cached_bytes_budget != 0) {
            lru_push(p, pg);
            while (p->params.cached_bytes_budget > 0 && p->lru_bytes > p->params.cached_bytes_budget) {
                kv_page *v = evict_one(p);
                if (!v) break;
                to_free_list(p, v);
            }
        } else {
            if (pg->indexed) index_remove(p, pg);
            to_free_list(p, pg);
        }
        trim_to_target(p);
    }
    pthread_mutex_unlock(&p->mu);
}

void kv_pool_set_target(kv_page_pool *p, int64_t pages) {
    pthread_mutex_lock(&p->mu);
    p->target_pages = pages > 0 ? pages : 0;
    trim_to_target(p);
    pthread_mutex_unlock(&p->mu);
}

bool kv_pool_claim(kv_page_pool *p, kv_page *pg, bool unindex) {
    pthread_mutex_lock(&p->mu);
    bool ok = pg->refs == 1 && (!pg->indexed || unindex);
    if (ok && pg->indexed) index_remove(p, pg);
    pthread_mutex_unlock(&p->mu);
    return ok;
}

uint64_t kv_page_key(uint64_t parent_key, const int32_t *tokens, int32_t n) {
    return XXH3_64bits_withSeed(tokens, (size_t)n * sizeof *tokens, parent_key);
}

kv_page *kv_pool_lookup(kv_page_pool *p, uint64_t key, uint64_t parent_key, const int32_t *tokens, uint32_t type_k,
                        uint32_t type_v) {
    pthread_mutex_lock(&p->mu);
    kv_page *pg = p->buckets[key & (p->n_buckets - 1)];
    while (pg && !(pg->key == key && pg->parent_key == parent_key && pg->layout->type_k == type_k &&
                   pg->layout->type_v == type_v && memcmp(pg->tokens, tokens, (size_t)p->P * sizeof *tokens) == 0))
        pg = pg->hnext;
    if (pg) {
        if (pg->refs == 0) lru_remove(p, pg);
        pg->refs++;
    }
    pthread_mutex_unlock(&p->mu);
    return pg;
}

/* mu held */
static void index_grow(kv_page_pool *p) {
    uint64_t nb = p->n_buckets * 2;
    kv_page **b = calloc(nb, sizeof *b);
    if (!b) return; /* keep the old table: longer chains, still correct */
    for (uint64_t i = 0; i < p->n_buckets; i++)
        while (p->buckets[i]) {
            kv_page *pg = p->buckets[i];
            p->buckets[i] = pg->hnext;
            pg->hnext = b[pg->key & (nb - 1)];
            b[pg->key & (nb - 1)] = pg;
        }
    free(p->buckets);
    p->buckets = b;
    p->n_buckets = nb;
}

/* mu held */
static void index_insert(kv_page_pool *p, kv_page *pg, uint64_t key, uint64_t parent_key, const int32_t *tokens) {
    if (pg->indexed || pg->superseded) return;
    kv_page *q = p->buckets[key & (p->n_buckets - 1)];
    while (q && q->key != key) q = q->hnext;
    if (q) return;
    if (p->n_indexed >= p->n_buckets) index_grow(p);
    pg->key = key;
    pg->parent_key = parent_key;
    if (pg->tokens != tokens) memcpy(pg->tokens, tokens, (size_t)p->P * sizeof *tokens);
    pg->hnext = p->buckets[key & (p->n_buckets - 1)];
    p->buckets[key & (p->n_buckets - 1)] = pg;
    pg->indexed = true;
    p->n_indexed++;
}

void kv_pool_index(kv_page_pool *p, kv_page *pg, uint64_t key, uint64_t parent_key, const int32_t *tokens) {
    pthread_mutex_lock(&p->mu);
    index_insert(p, pg, key, parent_key, tokens);
    pthread_mutex_unlock(&p->mu);
}

void kv_pool_supersede(kv_page_pool *p, kv_page *old, kv_page *cpg) {
    pthread_mutex_lock(&p->mu);
    if (old->indexed) {
        index_remove(p, old); /* held by the caller, so not in the LRU */
        index_insert(p, cpg, old->key, old->parent_key, old->tokens);
    }
    old->superseded = true;
    if (--old->refs <= 0) {
        old->refs = 0;
        free_superseded(p, old);
    }
    pthread_mutex_unlock(&p->mu);
}

void kv_pool_stats(kv_page_pool *p, kvlm_kv_stats *st) {
    memset(st, 0, sizeof *st);
    pthread_mutex_lock(&p->mu);
    const int64_t in_use = p->pages_allocated - p->pages_free - p->lru_pages;
    st->capacity = p->capacity_pages * p->P;
    st->utilization = p->pages_allocated > 0 ? (double)in_use / (double)p->capacity_pages : 0.0;
    st->pages_cached = p->lru_pages;
    int64_t shared = 0;
    for (uint64_t b = 0; b < p->n_buckets; b++)
        for (kv_page *pg = p->buckets[b]; pg; pg = pg->hnext) shared += pg->refs > 1;
    st->pages_shared = shared;
    st->growth_ms_total = p->growth_ms_total;
    st->growth_ms_max = p->growth_ms_max;
    pthread_mutex_unlock(&p->mu);
    st->bytes = atomic_load(&p->st_bytes);
    for (int i = 0; i < 4; i++) st->bytes_by_type[i] = atomic_load(&p->st_bytes_by_type[i]);
    st->tokens = atomic_load(&p->counts[KV_STAT_TOKENS]);
    st->bytes_f32_equivalent = st->tokens * (int64_t)p->kv_dim * 2 * 4 * p->n_layer;
    st->hits = atomic_load(&p->counts[KV_STAT_HITS]);
    st->misses = atomic_load(&p->counts[KV_STAT_MISSES]);
    st->recomputed = atomic_load(&p->counts[KV_STAT_RECOMPUTED]);
    st->hit_rate = st->hits + st->misses > 0 ? (double)st->hits / (double)(st->hits + st->misses) : 0.0;
    st->evictions = atomic_load(&p->st_evictions);
    st->compressions = atomic_load(&p->counts[KV_STAT_COMPRESSIONS]);
    st->bytes_saved = atomic_load(&p->counts[KV_STAT_BYTES_SAVED]);
    st->shifts = atomic_load(&p->counts[KV_STAT_SHIFTS]);
    st->growth_events = atomic_load(&p->st_growth_events);
}
