/* The KV cache: a pool of fixed-size pages (kv_pool.c) shared by the
 * sequences of one model, and per-sequence page tables (kv_seq.c).
 *
 * A page holds `page_tokens` consecutive token slots for every layer: for
 * layer l, K rows then V rows, each row one token's K (or V) over all kv heads
 * in the page's storage type. Pages are allocated one by one and never move,
 * so growing the pool copies nothing. Full pages are content-addressed by a
 * hash chain over their tokens (key_j = H(key_{j-1}, tokens of page j)) so
 * sequences with a common prefix share them read-only, with reference
 * counts; unreferenced pages stay cached and are evicted LRU.
 *
 * This module owns its state. Outside src/kv/, nothing computes a page
 * offset or reads a field of the pool (private to kv_pool.c) or of a
 * sequence: the page layout is written once below (kv_layout_k_off and the
 * row accessors built on it), the K/V codec lives on the layout, and the
 * session layer asks for what it needs (kv_seq_sync for the n_past contract,
 * kv_seq_export / kv_seq_import for session files, small accessors for the
 * forward pass and attention). */
#ifndef KV_KV_CACHE_H
#define KV_KV_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/rope.h"
#include "kvlm.h"
#include "quant/quant.h"

/* page sizes the pool accepts (tokens per page); attention sizes per-page buffers by the maximum */
#define KV_PAGE_TOKENS_MIN 16
#define KV_PAGE_TOKENS_MAX 256

typedef struct kv_page kv_page;
typedef struct kv_page_pool kv_page_pool;

typedef struct kv_layout kv_layout;

struct kv_page {
    uint8_t *data;
    const kv_layout *layout;
    /* the pool's own (under its lock) */
    int32_t refs;          /* sequences holding it (pool mutex) */
    bool indexed;          /* in the prefix index */
    bool superseded;       /* replaced by its compressed copy: freed when the last holder releases it */
    uint64_t key, parent_key;
    int32_t *tokens;       /* page_tokens ids, for verifying index hits */
    kv_page *hnext;        /* index bucket chain */
    kv_page *lru_prev, *lru_next; /* unreferenced indexed pages */
    kv_page *free_next;
};

/* How rows of one storage type are written and read, looked up once when a
 * layout is registered (not per row). encode/decode are NULL for a type the
 * quant module cannot convert (kv_seq_init refuses such a layout). */
typedef struct kv_codec {
    kv_from_float_fn encode; /* quantize-on-write: f32 -> the type */
    kv_to_float_fn decode;   /* dequantize (attention, re-rotation, conversion) */
    int32_t block;           /* values per block */
    uint32_t block_bytes;
} kv_codec;

/* Byte geometry of a page for one (type_k, type_v) pair, and its codecs. */
struct kv_layout {
    uint32_t type_k, type_v;
    uint64_t k_row, v_row;   /* bytes of one token's K / V row (the row strides in a page) */
    uint64_t v_offset;       /* P * k_row: where a layer's V rows start after its K rows */
    uint64_t layer_bytes;    /* P * (k_row + v_row) */
    uint64_t page_bytes;
    kv_codec k, v;
    int index;               /* class number in the pool */
};

/* The page layout, written once: layer l of a page is P K rows, then P V
 * rows; these give the byte offset of slot i's K / V row of layer l. */
static inline uint64_t kv_layout_k_off(const kv_layout *l, int layer, int32_t i) {
    return (uint64_t)layer * l->layer_bytes + (uint64_t)i * l->k_row;
}
static inline uint64_t kv_layout_v_off(const kv_layout *l, int layer, int32_t i) {
    return (uint64_t)layer * l->layer_bytes + l->v_offset + (uint64_t)i * l->v_row;
}
/* Row i (slot i of the page) of layer l, and a layer's first K / V row. */
static inline uint8_t *kv_page_k_row(const kv_page *pg, int layer, int32_t i) {
    return pg->data + kv_layout_k_off(pg->layout, layer, i);
}
static inline uint8_t *kv_page_v_row(const kv_page *pg, int layer, int32_t i) {
    return pg->data + kv_layout_v_off(pg->layout, layer, i);
}
static inline uint8_t *kv_page_k(const kv_page *pg, int layer) { return kv_page_k_row(pg, layer, 0); }
static inline uint8_t *kv_page_v(const kv_page *pg, int layer) { return kv_page_v_row(pg, layer, 0); }
/* The rows of one layer of one page, for reading a run of slots: slot i's K
 * row at k + i * k_stride, its V row at v + i * v_stride. */
typedef struct kv_rows {
    const uint8_t *k, *v;
    uint64_t k_stride, v_stride;
    const kv_layout *layout; /* types and codecs */
} kv_rows;
static inline kv_rows kv_page_rows(const kv_page *pg, int layer) {
    kv_rows r = {kv_page_k(pg, layer), kv_page_v(pg, layer), pg->layout->k_row, pg->layout->v_row, pg->layout};
    return r;
}
static inline const uint8_t *kv_rows_k(const kv_rows *r, int32_t i) { return r->k + (uint64_t)i * r->k_stride; }
static inline const uint8_t *kv_rows_v(const kv_rows *r, int32_t i) { return r->v + (uint64_t)i * r->v_stride; }
/* Head h (hd values) of a stored K or V row as floats: the head's own blocks
 * when heads are whole blocks, else the whole row (kv_dim values) decoded
 * into tmp (kv_dim floats) and a pointer into it. */
static inline const float *kv_codec_head(const kv_codec *c, const uint8_t *row, int h, int hd, int kv_dim,
                                         float *tmp) {
    if (hd % c->block == 0) {
        c->decode(row + (uint64_t)(h * hd / c->block) * (uint64_t)c->block_bytes, tmp, hd);
        return tmp;
    }
    c->decode(row, tmp, kv_dim); /* heads straddle blocks: the whole row */
    return tmp + (int64_t)h * hd;
}

/* Counters the sequences keep in their pool (kvlm_kv_stats). */
typedef enum kv_pool_stat {
    KV_STAT_TOKENS,       /* slots held by the pool's sequences */
    KV_STAT_HITS,         /* tokens reused */
    KV_STAT_MISSES,       /* tokens computed */
    KV_STAT_RECOMPUTED,   /* tokens dropped because a request's history differed */
    KV_STAT_SHIFTS,
    KV_STAT_COMPRESSIONS,
    KV_STAT_BYTES_SAVED,
    KV_STAT_COUNT
} kv_pool_stat;

/* The pool itself is private to kv_pool.c; everything goes through these. It is internally locked:
   sequences of several sessions may use one pool from several threads. */
kvlm_status kv_pool_create(int32_t n_layer, int32_t kv_dim, const kvlm_cache_params *params, kv_page_pool **out,
                           kvlm_error *err);
void kv_pool_destroy(kv_page_pool *p);
/* The class of (type_k, type_v), registering it if new; NULL if the types do
 * not divide kv_dim into whole blocks. */
const kv_layout *kv_pool_layout(kv_page_pool *p, uint32_t type_k, uint32_t type_v);
/* A private page of that layout (refs = 1), growing the pool or evicting a
 * cached page when needed; NULL when the pool is at its maximum. */
kv_page *kv_pool_alloc(kv_page_pool *p, const kv_layout *l);
/* Takes one more reference to a page the caller holds (a forked sequence shares it). */
void kv_pool_retain(kv_page_pool *p, kv_page *pg);
/* Drops one reference; an unreferenced indexed page is kept in the LRU,
 * anything else goes back to the free list. */
void kv_pool_release(kv_page_pool *p, kv_page *pg);
/* Looks up a full page by key and verifies its tokens and parent; on a hit
 * takes a reference and returns it. */
kv_page *kv_pool_lookup(kv_page_pool *p, uint64_t key, uint64_t parent_key, const int32_t *tokens,
                        uint32_t type_k, uint32_t type_v);
/* Puts a full page in the index (no-op if an entry with the key exists). */
void kv_pool_index(kv_page_pool *p, kv_page *pg, uint64_t key, uint64_t parent_key, const int32_t *tokens);
/* Tiered compression: cpg (old's contents in the compression layout, held by the caller) takes old's
   place in the prefix index (unless a compressed copy is indexed already), and old is superseded: out
   of the index, never kept cached, its memory freed as soon as no sequence holds it, and then counted
   in bytes_saved. Drops the caller's reference to old. */
void kv_pool_supersede(kv_page_pool *p, kv_page *old, kv_page *cpg);
uint64_t kv_page_key(uint64_t parent_key, const int32_t *tokens, int32_t n);
void kv_pool_stats(kv_page_pool *p, kvlm_kv_stats *st);
/* Sets the pages the owner needs (0: none), and frees what is held past them. With a target, growth
   never goes past it while a cached page can be evicted instead, and pages past it are freed when
   released (a session with a fixed context owning its pool holds no more than its context and
   policy need). */
void kv_pool_set_target(kv_page_pool *p, int64_t pages);
/* Whether pg is held by its caller alone and may be written in place; an indexed page is taken out of the
   index first when unindex is true, else refused. */
bool kv_pool_claim(kv_page_pool *p, kv_page *pg, bool unindex);
int kv_type_slot(uint32_t type); /* index into bytes_by_type, -1 if none */
/* Tokens per page. */
int32_t kv_pool_page_tokens(const kv_page_pool *p);
/* The parameters the pool was made with (fixed for its life). */
const kvlm_cache_params *kv_pool_params(const kv_page_pool *p);
/* Whether the pool has a target (kv_pool_set_target). */
bool kv_pool_has_target(kv_page_pool *p);
/* Adds delta to one of the pool's counters. */
void kv_pool_count(kv_page_pool *p, kv_pool_stat which, int64_t delta);

/* ------------------------------------------------------------ sequences */

/* A sequence's page table. Declared here so that a session can hold one by value and the module's
   own tests can look inside; everything else goes through the functions that follow. */
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
/* Most tokens one forward pass may write: a ring's slack (a pass must not overwrite slots its own
   queries still read), else no limit (INT32_MAX). */
int32_t kv_seq_pass_cap(const kv_seq *s);
/* The slots attention may read once n_new reserved tokens are written (a ring: its fill). */
int32_t kv_seq_span(const kv_seq *s, int32_t n_new);
/* Marks the reserved tokens as stored; indexes newly full pages; compresses. */
void kv_seq_commit(kv_seq *s, int32_t n_new);
/* Counts n tokens as reused (a request's common prefix with what the sequence held). */
void kv_seq_count_hits(kv_seq *s, int32_t n);
/* Recomputes the hash chain of the full pages and indexes them (after a load). */
void kv_seq_reindex(kv_seq *s);
/* Makes dst (just initialized with src's configuration, empty) hold what src holds, token for token:
   on the same pool the full pages are shared (a reference each: copy-on-write, since every write into
   a held page — a rollback or a shift into it — first claims it, and a shared page is copied), and only
   the partly filled last page is copied, so a fork costs the page table and one page; on another pool,
   or for a ring (which overwrites its pages in place), every page is copied. On error dst is left
   empty. */
kvlm_status kv_seq_fork(kv_seq *dst, const kv_seq *src, kvlm_error *err);
/* Drops slots past n (non-ring sequences). */
kvlm_status kv_seq_truncate(kv_seq *s, int32_t n, kvlm_error *err);

/* ---- what the session layer asks of a sequence. h_len is always the length of the history the
   owner consumed (more than the slots held once a shift dropped some, or in a ring). */

/* The leading slots a shift never moves: n_keep (shift), n_sink (sliding), else 0. After a shift
   they are the history's first tokens, and the dropped tokens follow them. */
int32_t kv_seq_head(const kv_seq *s);
/* Whether the slots are still the whole history of h_len tokens, in order (not a ring, nothing
   dropped): then any point of it can be rolled back to. */
bool kv_seq_holds_history(const kv_seq *s, int64_t h_len);
/* The n_past contract of kvlm_eval, for a request of tokens[0, n) (n >= 1; n_past KVLM_AUTO or in
   0..min(h_len, n - 1)): rolls the sequence back to the longest part of its history it can keep
   and the request repeats, up to n_past, or (KVLM_AUTO) as far as they agree leaving one token to
   compute, the dropped part compared by its hash. Counts the kept part as reused (KVLM_AUTO) or
   what an explicit n_past claimed but was not kept as recomputed. With attach (and a sequence
   that holds its history) cached pages of what follows are attached too. *kept: the history
   length now held, the first token to compute. On error the sequence is unchanged. */
kvlm_status kv_seq_sync(kv_seq *s, int64_t h_len, const int32_t *tokens, int32_t n, int32_t n_past, bool attach,
                        int32_t *kept, kvlm_error *err);
/* kvlm_session_truncate: cuts the history back to its first h tokens (a plain cut while the slots
   are the history, else to a point still held: kv_seq_can_rewind). */
kvlm_status kv_seq_rollback(kv_seq *s, int64_t h_len, int64_t h, kvlm_error *err);
/* The longest common prefix of the held slots (in slot order) and tokens[0, limit). */
int32_t kv_seq_common_prefix(const kv_seq *s, const int32_t *tokens, int32_t limit);
/* Whether a history of n_total tokens fits: always, unless the overflow policy is error and it is
   longer than the context. */
bool kv_seq_fits(const kv_seq *s, int64_t n_total);
/* How many of the n tokens still to append the next forward pass should take: a policy that moves
   slots (shift, sliding) fills what is free, or when little is, what one shift can always make room
   for (kv_seq_max_pass); else all n. */
int32_t kv_seq_next_pass(const kv_seq *s, int32_t n);
/* The held tokens, oldest first (a ring's in position order); returns how many there are. */
int32_t kv_seq_tokens(const kv_seq *s, int32_t *out, int32_t n_max);
/* The pool's statistics with the sequence's own counts (tokens, hits, misses, recomputed). */
void kv_seq_stats(const kv_seq *s, kvlm_kv_stats *st);
/* Slots held, and the context (the most slots). */
static inline int32_t kv_seq_n(const kv_seq *s) { return s->n; }
static inline int32_t kv_seq_n_ctx(const kv_seq *s) { return s->n_ctx; }
/* Tokens computed so far (the sequence's misses). */
static inline int64_t kv_seq_misses(const kv_seq *s) { return s->misses; }
/* Attaches cached pages for tokens[s->n .. n_tokens - 1) (leaving at least one
 * token to compute); returns how many tokens were attached. */
int32_t kv_seq_attach_prefix(kv_seq *s, const int32_t *tokens, int32_t n_tokens);

/* Read access for the forward pass and attention (the fields themselves are this module's). */
static inline int32_t kv_seq_page_tokens(const kv_seq *s) { return s->P; }
static inline int32_t kv_seq_n_pages(const kv_seq *s) { return s->n_pages; }
static inline const kv_page *kv_seq_page(const kv_seq *s, int32_t j) { return s->pages[j]; }
/* The position slot's K was rotated for. */
static inline int32_t kv_seq_pos(const kv_seq *s, int32_t slot) { return s->pos[slot]; }
/* The rotation keys and queries get (the model's RoPE for this sequence's context). */
static inline const kv_rope *kv_seq_rope(const kv_seq *s) { return &s->rope; }
static inline bool kv_seq_is_ring(const kv_seq *s) { return s->overflow == KVLM_OVERFLOW_RING; }
/* A ring's attention window (positions (p - window, p] are visible from p). */
static inline int32_t kv_seq_window(const kv_seq *s) { return s->window; }

/* Row pointers for one slot, in the page's types. */
typedef struct kv_row {
    const uint8_t *k, *v;
    const kv_layout *layout;
} kv_row;

static inline kv_row kv_seq_row(const kv_seq *s, int layer, int32_t slot) {
    const kv_page *pg = s->pages[slot / s->P];
    const int32_t i = slot % s->P;
    kv_row r = {kv_page_k_row(pg, layer, i), kv_page_v_row(pg, layer, i), pg->layout};
    return r;
}
/* Quantizes one token's K and V (f32, kv_dim each) into a slot (the page's types). */
void kv_seq_write(kv_seq *s, int layer, int32_t slot, const float *k, const float *v);
/* Bytes held by the sequence's pages. */
uint64_t kv_seq_bytes(const kv_seq *s);

/* ------------------------------------------------------------ export and import (session files) */

/* A sequence's contents as a serializable description: the settings they were made under, the
 * counts, and the per-slot arrays of slots [0, n). The pages go separately, one by one
 * (kv_seq_export_page, kv_seq_import_page), each as its types, its size and its bytes. The field
 * types are those of the session file's header. */
typedef struct kv_seq_desc {
    uint32_t page_tokens, n_layer, kv_dim;
    uint32_t type_k, type_v;     /* of newly written pages */
    uint32_t overflow;
    uint32_t shareable;          /* the contents are a function of the token prefix (0 or 1) */
    uint32_t n_pages;            /* pages holding slots [0, n) (a ring: all of its pages) */
    int32_t n, next_pos;         /* slots held, position of the next token */
    int32_t n_hist;              /* history length (tokens consumed; more than n after a shift) */
    int32_t n_ctx;
    /* the dropped-token record (kv_seq's): the kept head (n_keep for shift, n_sink for sliding, else
       0), history tokens no longer held and their chained hash */
    int32_t n_head;
    int64_t n_dropped;
    uint64_t drop_hash;
    const int32_t *tokens, *pos; /* n each; NULL while an import has not read them yet */
} kv_seq_desc;

typedef struct kv_page_desc {
    uint32_t type_k, type_v;
    uint64_t bytes;
} kv_page_desc;

/* Describes s, whose owner consumed a history of n_hist tokens, and checks the description is one
 * an import accepts (kv_seq_check_desc, every page held and of a layout s writes);
 * KVLM_ERR_INTERNAL with a phrase about s ("holds ...") otherwise. d points into s. */
kvlm_status kv_seq_export(const kv_seq *s, int32_t n_hist, kv_seq_desc *d, kvlm_error *err);
/* Page j of an export: its types and size, and (dst not NULL) its bytes copied to dst with the
 * rows past the last stored token zeroed (they were never written: files are deterministic). */
kv_page_desc kv_seq_export_page(const kv_seq *s, int32_t j, uint8_t *dst);
/* Import, in three steps, into s, a sequence fresh from kv_seq_init with the settings the contents
 * will run under, d checked against it (kv_seq_check_desc, tokens and pos read):
 *  - kv_seq_import takes the slot arrays;
 *  - kv_seq_import_page, for each page j in order, gives the memory its pd->bytes bytes go to,
 *    the page allocated (or a ring's own reused); NULL with KVLM_ERR_FORMAT and a phrase ("page
 *    ...") when pd is not a layout s writes, with KVLM_ERR_NOMEM when the pool has no room;
 *  - kv_seq_import_commit puts s in place of dst: dst's old contents are released, s moves in
 *    (and is left empty), the counts of d apply and full pages enter the prefix index.
 * Until the commit, kv_seq_destroy(s) undoes everything. */
kvlm_status kv_seq_import(kv_seq *s, const kv_seq_desc *d, kvlm_error *err);
uint8_t *kv_seq_import_page(kv_seq *s, const kv_seq_desc *d, uint32_t j, const kv_page_desc *pd, kvlm_error *err);
void kv_seq_import_commit(kv_seq *dst, kv_seq *s, const kv_seq_desc *d);

/* ------------------------------------------------------------ checks (kv_check.c) */

/* Largest position counter a checked state may hold (room to continue without int32 overflow). */
#define KV_POS_LIMIT (1 << 30)
/* Whether d was made under the settings of s (page size, layers, row size, K/V types, overflow
 * policy); KVLM_ERR_INVALID_ARG with a phrase ("has other cache settings ...") otherwise. */
kvlm_status kv_seq_check_settings(const kv_seq *s, const kv_seq_desc *d, kvlm_error *err);
/* Whether the contents d describes (from outside: a session file) are a state the overflow policy
 * of s can produce, s being a sequence with the settings they will run under: slot and position
 * counts, per-slot positions (if d->pos), history length, the dropped-token record (its count
 * matches the history and the slots, its head is the policy's, a ring's dropped positions are
 * exactly those its slots no longer hold), shareable flag, pages and context.
 * KVLM_ERR_FORMAT with the reason (a phrase such as "holds 9 slots ...") otherwise. */
kvlm_status kv_seq_check_desc(const kv_seq *s, const kv_seq_desc *d, kvlm_error *err);
/* The position slot `slot` holds in a valid state with that next position
 * (a ring's slot may also hold that plus the capacity: see kv_check.c). */
int32_t kv_seq_state_pos(const kv_seq *s, int32_t next_pos, int32_t slot);
/* Pages a valid state of n slots occupies (a ring: all of its pages). */
int64_t kv_seq_state_pages(const kv_seq *s, int32_t n);
/* The layout pages of s may have for those types (its own, or its
 * compression layout), NULL for any other. */
const kv_layout *kv_seq_page_layout(const kv_seq *s, uint32_t type_k, uint32_t type_v);

#endif
