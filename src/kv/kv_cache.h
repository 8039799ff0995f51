/* The KV cache: a pool of fixed-size pages (kv_pool.c) shared by the
 * sequences of one model, and per-sequence page tables (kv_seq.c).
 *
 * A page holds `page_tokens` consecutive token slots for every layer: for
 * layer l, K rows then V rows, each row one token's K (or V) over all kv heads
 * in the page's storage type. Pages are allocated one by one and never move,
 * so growing the pool copies nothing. Full pages are content-addressed by a
 * hash chain over their tokens (key_j = H(key_{j-1}, tokens of page j)) so
 * sequences with a common prefix share them read-only, with reference
 * counts; unreferenced pages stay cached and are evicted LRU. */
#ifndef KV_KV_CACHE_H
#define KV_KV_CACHE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/rope.h"
#include "kvlm.h"

/* page sizes the pool accepts (tokens per page); attention sizes per-page buffers by the maximum */
#define KV_PAGE_TOKENS_MIN 16
#define KV_PAGE_TOKENS_MAX 256

typedef struct kv_page kv_page;
typedef struct kv_page_pool kv_page_pool;

typedef struct kv_layout kv_layout;

struct kv_page {
    uint8_t *data;
    const kv_layout *layout;
    int32_t refs;          /* sequences holding it (pool mutex) */
    bool indexed;          /* in the prefix index */
    uint64_t key, parent_key;
    int32_t *tokens;       /* page_tokens ids, for verifying index hits */
    kv_page *hnext;        /* index bucket chain */
    kv_page *lru_prev, *lru_next; /* unreferenced indexed pages */
    kv_page *free_next;
};

/* Byte geometry of a page for one (type_k, type_v) pair. */
struct kv_layout {
    uint32_t type_k, type_v;
    uint64_t k_row, v_row;   /* bytes of one token's K / V row */
    uint64_t layer_bytes;    /* P * (k_row + v_row) */
    uint64_t page_bytes;
    int index;               /* class number in the pool */
};

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
    atomic_llong st_bytes, st_evictions, st_growth_events, st_compressions, st_bytes_saved, st_shifts;
    atomic_llong st_hits, st_misses, st_recomputed, st_tokens;
    atomic_llong st_bytes_by_type[4];
    double growth_ms_total, growth_ms_max; /* under mu */
    /* pages the owner needs (0: no target). With a target, growth never goes past it while a cached page
       can be evicted instead, and pages past it are freed when released (a session with a fixed context
       owning its pool holds no more than its context and policy need). */
    int64_t target_pages;
};

kvlm_status kv_pool_create(int32_t n_layer, int32_t kv_dim, const kvlm_cache_params *params, kv_page_pool **out,
                           kvlm_error *err);
void kv_pool_destroy(kv_page_pool *p);
/* The class of (type_k, type_v), registering it if new; NULL if the types do
 * not divide kv_dim into whole blocks. */
const kv_layout *kv_pool_layout(kv_page_pool *p, uint32_t type_k, uint32_t type_v);
/* A private page of that layout (refs = 1), growing the pool or evicting a
 * cached page when needed; NULL when the pool is at its maximum. */
kv_page *kv_pool_alloc(kv_page_pool *p, const kv_layout *l);
/* Drops one reference; an unreferenced indexed page is kept in the LRU,
 * anything else goes back to the free list. */
void kv_pool_release(kv_page_pool *p, kv_page *pg);
/* Looks up a full page by key and verifies its tokens and parent; on a hit
 * takes a reference and returns it. */
kv_page *kv_pool_lookup(kv_page_pool *p, uint64_t key, uint64_t parent_key, const int32_t *tokens,
                        uint32_t type_k, uint32_t type_v);
/* Puts a full page in the index (no-op if an entry with the key exists). */
void kv_pool_index(kv_page_pool *p, kv_page *pg, uint64_t key, uint64_t parent_key, const int32_t *tokens);
/* Takes a page out of the index (its contents are about to change). */
void kv_pool_unindex(kv_page_pool *p, kv_page *pg);
uint64_t kv_page_key(uint64_t parent_key, const int32_t *tokens, int32_t n);
void kv_pool_stats(kv_page_pool *p, kvlm_kv_stats *st);
/* Sets the target (see target_pages) and frees what is held past it. */
void kv_pool_set_target(kv_page_pool *p, int64_t pages);
/* Whether pg is held by its caller alone and may be written in place; an indexed page is taken out of the
   index first when unindex is true, else refused. */
bool kv_pool_claim(kv_page_pool *p, kv_page *pg, bool unindex);
int kv_type_slot(uint32_t type); /* index into bytes_by_type, -1 if none */

/* ------------------------------------------------------------ sequences */

typedef struct kv_seq {
    kv_page_pool *pool;
    const kv_layout *layout; /* of newly written pages */
    int32_t P, n_layer, kv_dim, head_dim, n_head_kv;
    int32_t n_ctx;           /* most slots */
    kvlm_overflow overflow;
    int32_t n_keep, n_sink, window;
    int32_t compress_after;
    const kv_layout *compress_layout;
    kv_rope rope;            /* for re-rotating keys (shift, sliding) */
    kv_page **pages;
    int32_t n_pages, cap_pages;
    int32_t n;               /* slots in use */
    int32_t *tokens;         /* per slot */
    int32_t *pos;            /* per slot: the position its K was rotated for */
    int32_t next_pos;        /* position of the next token */
    uint64_t *keys;          /* hash-chain key of each full page */
    bool shareable;          /* contents still a pure function of the token prefix */
    bool share_base;         /* what shareable is for an empty sequence */
    /* History tokens no longer held (dropped by shifts, or overwritten in a ring), oldest first, and a
       chained hash of them, so a request can be checked against the whole history without keeping it.
       Non-ring: the history is slots [0, head) + the dropped tokens + slots [head, n), head = n_keep
       (shift) or n_sink (sliding). Ring: positions [0, n_dropped) are dropped, [n_dropped, next_pos)
       held at slot pos % n_ctx. */
    int64_t n_dropped;
    uint64_t drop_hash;
    int64_t hits, misses, recomputed;
} kv_seq;

typedef struct kv_seq_config {
    int32_t n_ctx, n_layer, n_head_kv, head_dim;
    uint32_t type_k, type_v;
    kvlm_overflow overflow;
    int32_t n_keep, n_sink, window, compress_after;
    uint32_t compress_type;
    kv_rope rope;
    int32_t max_batch; /* most tokens written in one pass (ring sizing) */
} kv_seq_config;

kvlm_status kv_seq_init(kv_seq *s, kv_page_pool *pool, const kv_seq_config *c, kvlm_error *err);
/* Pages a sequence of this configuration holds at most (pool sizing; transient copies aside). */
int64_t kv_seq_pages_needed(const kv_seq_config *c, int32_t page_tokens);
/* Most tokens one pass may add so that the overflow policy can always make room for it. */
int32_t kv_seq_max_pass(const kv_seq *s);
/* One step of the dropped-token hash chain. */
static inline uint64_t kv_hist_hash(uint64_t h, int32_t token) {
    uint64_t z = h ^ ((uint64_t)(uint32_t)token + 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
/* History-level rollback. h_len is the length of the history (the tokens the owner consumed).
   kv_seq_can_rewind: whether the sequence can be cut back to its first h history tokens (always for 0
   and h_len; otherwise within the held part: anywhere before a shift, in the kept head or the held
   tail after one, or far enough into a ring that a query's window is still held). */
bool kv_seq_can_rewind(const kv_seq *s, int64_t h_len, int64_t h);
/* Cuts back to h history tokens (kv_seq_can_rewind must hold; else KVLM_ERR_UNSUPPORTED). */
kvlm_status kv_seq_rewind(kv_seq *s, int64_t h_len, int64_t h, kvlm_error *err);
/* The largest h <= limit that kv_seq_can_rewind allows with history[0, h) == ctx[0, h). With
   check_dropped the dropped part is compared too (by its hash); else it is taken as equal. */
int32_t kv_seq_reuse_point(const kv_seq *s, int64_t h_len, const int32_t *ctx, int32_t limit, bool check_dropped);
void kv_seq_destroy(kv_seq *s);

/* Makes room for n_new tokens, applying the overflow policy; on error the
 * sequence is unchanged. */
kvlm_status kv_seq_prepare(kv_seq *s, int32_t n_new, kvlm_error *err);
/* Allocates pages for slots [n, n + n_new) and records their tokens and
 * positions (does not advance n). On error nothing changes. */
kvlm_status kv_seq_reserve(kv_seq *s, const int32_t *tokens, int32_t n_new, kvlm_error *err);
/* The slot the i-th reserved token goes to. */
int32_t kv_seq_slot(const kv_seq *s, int32_t i);
/* Marks the reserved tokens as stored; indexes newly full pages; compresses. */
void kv_seq_commit(kv_seq *s, int32_t n_new);
/* Counts n tokens as reused (a request's common prefix with what the sequence held). */
void kv_seq_count_hits(kv_seq *s, int32_t n);
/* Recomputes the hash chain of the full pages and indexes them (after a load). */
void kv_seq_reindex(kv_seq *s);
/* Drops slots past n (non-ring sequences). */
kvlm_status kv_seq_truncate(kv_seq *s, int32_t n, kvlm_error *err);
/* Attaches cached pages for tokens[s->n .. n_tokens - 1) (leaving at least one
 * token to compute); returns how many tokens were attached. */
int32_t kv_seq_attach_prefix(kv_seq *s, const int32_t *tokens, int32_t n_tokens);
/* Number of slots attention may read (n, or the ring's fill). */
static inline int32_t kv_seq_slots(const kv_seq *s) { return s->n; }

/* Row pointers for one slot, in the page's types. */
typedef struct kv_row {
    const uint8_t *k, *v;
    const kv_layout *layout;
} kv_row;

static inline kv_row kv_seq_row(const kv_seq *s, int layer, int32_t slot) {
    const kv_page *pg = s->pages[slot / s->P];
    const kv_layout *l = pg->layout;
    const uint8_t *base = pg->data + (uint64_t)layer * l->layer_bytes;
    const uint64_t off = (uint64_t)(slot % s->P);
    kv_row r = {base + off * l->k_row, base + (uint64_t)s->P * l->k_row + off * l->v_row, l};
    return r;
}
/* Quantizes one token's K and V (f32, kv_dim each) into a slot (the page's types). */
void kv_seq_write(kv_seq *s, int layer, int32_t slot, const float *k, const float *v);
/* Bytes held by the sequence's pages. */
uint64_t kv_seq_bytes(const kv_seq *s);

/* ------------------------------------------------------------ checks (kv_check.c) */

/* Largest position counter a checked state may hold (room to continue without int32 overflow). */
#define KV_POS_LIMIT (1 << 30)
/* Whether a state read from outside (n slots, next position, per-slot positions
 * or NULL) is one the overflow policy of s can produce; s is a sequence with
 * the settings the state will run under. KVLM_ERR_FORMAT with the reason
 * (a phrase such as "holds 9 slots ...") otherwise. */
kvlm_status kv_seq_check_state(const kv_seq *s, int32_t n, int32_t next_pos, const int32_t *pos, kvlm_error *err);
/* The position slot `slot` holds in a valid state with that next position
 * (a ring's slot may also hold that plus the capacity: see kv_check.c). */
int32_t kv_seq_state_pos(const kv_seq *s, int32_t next_pos, int32_t slot);
/* Pages a valid state of n slots occupies (a ring: all of its pages). */
int64_t kv_seq_state_pages(const kv_seq *s, int32_t n);
/* The layout pages of s may have for those types (its own, or its
 * compression layout), NULL for any other. */
const kv_layout *kv_seq_page_layout(const kv_seq *s, uint32_t type_k, uint32_t type_v);

#endif
