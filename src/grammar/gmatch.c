/* The grammar matcher: stacks of grammar positions advanced over bytes, run
 * as a lazily built DFA whose states are sets of stacks, walked against a
 * byte trie of the vocabulary to make token masks.
 *
 * Stacks (as llama.cpp's grammar sampler): a stack is a chain of frames; the
 * top frame is at a character class, the frames below it at the element to go
 * on with once the rule above returns. Frames are hash-consed (one id per
 * (position, parent) pair), so equal stacks have equal ids and a set of stacks
 * is a sorted array of top-frame ids (id 0, the bottom, is the empty stack:
 * the grammar is complete there). A reference whose continuation is the end
 * of its alternative pushes nothing (a tail call), so right recursion
 * (x ::= "a" x | ...) does not grow the stack.
 *
 * DFA: a state is a set of stacks plus a partial UTF-8 character (the bits so
 * far, bytes left). Its transition on a byte is computed once, when first
 * needed, and kept in a dense table (256 entries per state): -2 not yet
 * computed, -1 dead. Accepting a token, checking one, and the trie walk of a
 * mask all go through these transitions, so after warm-up a byte costs one
 * table lookup. A partial character survives only when some stack's class
 * holds a code point starting with those bytes (so no token is allowed that
 * no later token could complete).
 *
 * Masks: the trie lists the vocabulary's pieces in byte order, in preorder
 * with each node's subtree end, so a dead transition skips the whole subtree.
 * The mask of a state is kept (up to KV_MASKS_MAX states, slots allocated 16 at a time): a state the
 * generation comes back to (inside a JSON string, between list items) costs a
 * lookup. End-of-generation tokens are set when the state is complete.
 *
 * Memory: frames, states and masks grow with what the walks visit; between
 * tokens, past the limits below, everything is dropped and the current state
 * rebuilt (kv_gstate_flush). */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "grammar/grammar_impl.h"

#define KV_STATES_SOFT 4096
#define KV_FRAMES_SOFT (1u << 20)
#define KV_MASKS_MAX 512
#define KV_NORM_DEPTH 4096
#define T_UNKNOWN (-2)
#define T_DEAD (-1)

/* ------------------------------------------------------------ vocabulary trie */

/* One trie node, 12 bytes, read in order by the walk. A node without a
 * token names the spare bit past the vocabulary (the mask's extra word), so
 * setting a node's bit needs no branch. */
typedef struct tnode {
    uint32_t skip;  /* the node after this node's subtree */
    uint32_t tok;   /* the first token whose piece ends here, or the spare bit */
    uint16_t depth; /* 1-based (the root, the state itself, is not a node) */
    uint8_t byte;
    uint8_t more;   /* more tokens end here: tok_off[node] .. + tok_n[node] in sorted */
} tnode;

struct kv_gvocab {
    int32_t n_vocab;
    uint32_t n_nodes, max_depth, spare;
    tnode *node;
    uint32_t *tok_off; /* per node: its tokens in sorted (read when `more`) */
    uint16_t *tok_n;
    int32_t *sorted;   /* token ids in trie order */
    char *pool;        /* pieces */
    uint64_t *poff;
    uint32_t *plen;
    bool *eog;
    int32_t *eog_list;
    int32_t n_eog;
};

typedef struct sort_item {
    const char *p;
    uint32_t len;
    int32_t id;
} sort_item;

static int cmp_piece(const void *a, const void *b) {
    const sort_item *x = a, *y = b;
    const int c = memcmp(x->p, y->p, x->len < y->len ? x->len : y->len);
    if (c) return c;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

void kv_gvocab_free(kv_gvocab *v) {
    if (!v) return;
    free(v->node);
    free(v->tok_off);
    free(v->tok_n);
    free(v->sorted);
    free(v->pool);
    free(v->poff);
    free(v->plen);
    free(v->eog);
    free(v->eog_list);
    free(v);
}

int32_t kv_gvocab_n_vocab(const kv_gvocab *v) { return v ? v->n_vocab : 0; }
int32_t kv_gvocab_n_nodes(const kv_gvocab *v) { return v ? (int32_t)v->n_nodes : 0; }

kvlm_status kv_gvocab_new(int32_t n_vocab, const char *const *piece, const uint32_t *len, const bool *eog,
                          kv_gvocab **out, kvlm_error *err) {
    if (!out || n_vocab <= 0 || !piece || !len) return kv_fail(err, KVLM_ERR_INVALID_ARG, "grammar: bad vocabulary");
    *out = NULL;
    const size_t nv = (size_t)n_vocab;
    kv_gvocab *v = calloc(1, sizeof *v);
    if (!v) return kv_fail(err, KVLM_ERR_NOMEM, "grammar: out of memory");
    v->n_vocab = n_vocab;
    uint64_t total = 0, n_nodes_max = 0;
    int32_t n_tok = 0;
    for (size_t i = 0; i < nv; i++) {
        if (len[i] > 65535) {
            kv_gvocab_free(v);
            return kv_fail(err, KVLM_ERR_INVALID_ARG, "grammar: token %zu is longer than 65535 bytes", i);
        }
        total += len[i];
        if (len[i] && !(eog && eog[i])) n_tok++;
    }
    n_nodes_max = total;
    v->pool = malloc(total ? total : 1);
    v->poff = malloc(nv * sizeof *v->poff);
    v->plen = malloc(nv * sizeof *v->plen);
    v->eog = calloc(nv, sizeof *v->eog);
    v->eog_list = malloc(nv * sizeof *v->eog_list);
    v->sorted = malloc((size_t)(n_tok ? n_tok : 1) * sizeof *v->sorted);
    v->node = calloc((size_t)(n_nodes_max ? n_nodes_max : 1), sizeof *v->node);
    v->tok_off = calloc((size_t)(n_nodes_max ? n_nodes_max : 1), sizeof *v->tok_off);
    v->tok_n = calloc((size_t)(n_nodes_max ? n_nodes_max : 1), sizeof *v->tok_n);
    v->spare = ((uint32_t)n_vocab + 63) / 64 * 64; /* the first bit of the mask's extra word */
    uint32_t *open = malloc((65536 + 1) * sizeof *open);
    if (!v->pool || !v->poff || !v->plen || !v->eog || !v->eog_list || !v->sorted || !v->node || !v->tok_off ||
        !v->tok_n || !open) {
        free(open);
        kv_gvocab_free(v);
        return kv_fail(err, KVLM_ERR_NOMEM, "grammar: out of memory (vocabulary trie)");
    }
    uint64_t off = 0;
    int32_t k = 0;
    for (size_t i = 0; i < nv; i++) {
        v->poff[i] = off;
        v->plen[i] = len[i];
        if (len[i]) memcpy(v->pool + off, piece[i], len[i]);
        off += len[i];
        if (eog && eog[i]) {
            v->eog[i] = true;
            v->eog_list[v->n_eog++] = (int32_t)i;
        } else if (len[i]) {
            v->sorted[k++] = (int32_t)i;
        }
    }
    sort_item *items = malloc((size_t)(n_tok ? n_tok : 1) * sizeof *items);
    if (!items) {
        free(open);
        kv_gvocab_free(v);
        return kv_fail(err, KVLM_ERR_NOMEM, "grammar: out of memory (vocabulary trie)");
    }
    for (int32_t i = 0; i < n_tok; i++) items[i] = (sort_item){piece[v->sorted[i]], len[v->sorted[i]], v->sorted[i]};
    qsort(items, (size_t)n_tok, sizeof *items, cmp_piece);
    for (int32_t i = 0; i < n_tok; i++) v->sorted[i] = items[i].id;
    free(items);
    /* preorder nodes: each token adds the bytes past its common prefix with the previous one */
    uint32_t nn = 0, n_open = 0, maxd = 0;
    const char *prev = NULL;
    uint32_t prev_len = 0;
    for (int32_t i = 0; i < n_tok; i++) {
        const int32_t t = v->sorted[i];
        const char *p = piece[t];
        const uint32_t l = len[t];
        uint32_t c = 0;
        while (prev && c < l && c < prev_len && p[c] == prev[c]) c++;
        if (prev && c == l && l == prev_len && v->tok_n[open[n_open - 1]] < UINT16_MAX) {
            const uint32_t o = open[n_open - 1]; /* same piece: the same node */
            v->tok_n[o]++;
            v->node[o].more = 1;
            continue;
        }
        if (prev && c == l && l == prev_len) c--; /* 65535 tokens with one piece: a sibling node */
        while (n_open > c) v->node[open[--n_open]].skip = nn; /* close nodes deeper than the common prefix */
        for (uint32_t d = c; d < l; d++) {
            v->node[nn].byte = (uint8_t)p[d];
            v->node[nn].depth = (uint16_t)(d + 1);
            v->node[nn].tok = v->spare;
            v->node[nn].more = 0;
            v->tok_off[nn] = (uint32_t)i;
            v->tok_n[nn] = 0;
            open[n_open++] = nn;
            nn++;
        }
        v->node[open[n_open - 1]].tok = (uint32_t)t;
        v->tok_n[open[n_open - 1]] = 1;
        if (l > maxd) maxd = l;
        prev = p;
        prev_len = l;
    }
    while (n_open) v->node[open[--n_open]].skip = nn;
    free(open);
    v->n_nodes = nn;
    v->max_depth = maxd;
    *out = v;
    return KVLM_OK;
}

/* ------------------------------------------------------------ state */

typedef struct gframe {
    uint32_t pos, parent;
} gframe;

typedef struct dstate {
    uint32_t off, n;   /* its stacks: sets[off .. off + n), sorted top-frame ids */
    uint32_t cp;       /* partial character: bits so far */
    uint8_t remain;    /* continuation bytes still expected (0: none) */
    uint8_t len;       /* the character's length in bytes */
    bool complete, more;
    int32_t mask_slot;
    int32_t n_allowed;
    uint32_t hash;
} dstate;

struct kv_gstate {
    const kv_grammar *g;
    const kv_gvocab *v;
    gframe *fr;
    uint32_t n_fr, cap_fr;
    uint32_t *fr_tab; /* open addressing, frame ids (0: empty) */
    uint32_t fr_mask;
    dstate *ds;
    uint32_t n_ds, cap_ds;
    uint32_t *ds_tab; /* state id + 1 (0: empty) */
    uint32_t ds_mask;
    int32_t *trans;   /* cap_ds * 256 */
    uint32_t *sets;
    uint32_t n_sets, cap_sets;
    uint64_t *masks;  /* KV_MASKS_MAX * words, allocated on first use */
    uint32_t n_masks, words;
    uint64_t *mask_out;
    uint32_t *walk;   /* max_depth + 1 */
    /* scratch of one advance */
    uint32_t *out;
    uint32_t n_out, cap_out;
    uint64_t *vis_key;
    uint32_t *vis_stamp;
    uint32_t vis_mask, vis_n, stamp;
    uint32_t start, cur;
    uint32_t cap_masks; /* mask slots allocated */
    bool oom;
    bool broken; /* a collection ran out of memory: the position is lost, every call fails */
};

static inline uint32_t mix32(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return (uint32_t)x;
}

static bool grow(void **p, uint32_t *cap, uint32_t need, size_t elem) {
    if (need <= *cap) return true;
    uint64_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    if (c > UINT32_MAX / 2) return false;
    void *q = realloc(*p, (size_t)c * elem);
    if (!q) return false;
    *p = q;
    *cap = (uint32_t)c;
    return true;
}

/* ------------------------------------------------ frames */

static bool fr_rehash(kv_gstate *s, uint32_t size) {
    uint32_t *t = calloc(size, sizeof *t);
    if (!t) return false;
    free(s->fr_tab);
    s->fr_tab = t;
    s->fr_mask = size - 1;
    for (uint32_t id = 1; id < s->n_fr; id++) {
        uint32_t h = mix32((uint64_t)s->fr[id].pos << 32 | s->fr[id].parent) & s->fr_mask;
        while (t[h]) h = (h + 1) & s->fr_mask;
        t[h] = id;
    }
    return true;
}

/* The id of frame (pos, parent); 0 when out of memory (s->oom set). */
static uint32_t fr_intern(kv_gstate *s, uint32_t pos, uint32_t parent) {
    uint32_t h = mix32((uint64_t)pos << 32 | parent) & s->fr_mask;
    for (;;) {
        const uint32_t id = s->fr_tab[h];
        if (!id) break;
        if (s->fr[id].pos == pos && s->fr[id].parent == parent) return id;
        h = (h + 1) & s->fr_mask;
    }
    if (!grow((void **)&s->fr, &s->cap_fr, s->n_fr + 1, sizeof *s->fr)) {
        s->oom = true;
        return 0;
    }
    const uint32_t id = s->n_fr++;
    s->fr[id] = (gframe){pos, parent};
    s->fr_tab[h] = id;
    if ((uint64_t)s->n_fr * 2 > (uint64_t)s->fr_mask + 1 && !fr_rehash(s, (s->fr_mask + 1) * 2)) s->oom = true;
    return id;
}

/* ------------------------------------------------ normalizing stacks */

static void out_add(kv_gstate *s, uint32_t f) {
    if (!grow((void **)&s->out, &s->cap_out, s->n_out + 1, sizeof *s->out)) {
        s->oom = true;
        return;
    }
    s->out[s->n_out++] = f;
}

static bool vis_rehash(kv_gstate *s, uint32_t size) {
    uint64_t *k = malloc((size_t)size * sizeof *k);
    uint32_t *st = calloc(size, sizeof *st);
    if (!k || !st) {
        free(k);
        free(st);
        return false;
    }
    const uint32_t om = s->vis_mask;
    for (uint32_t i = 0; s->vis_key && i <= om; i++) {
        if (s->vis_stamp[i] != s->stamp) continue;
        uint32_t h = mix32(s->vis_key[i]) & (size - 1);
        while (st[h] == s->stamp) h = (h + 1) & (size - 1);
        k[h] = s->vis_key[i];
        st[h] = s->stamp;
    }
    free(s->vis_key);
    free(s->vis_stamp);
    s->vis_key = k;
    s->vis_stamp = st;
    s->vis_mask = size - 1;
    return true;
}

/* true the first time (pos, parent) is seen in this advance */
static bool vis_first(kv_gstate *s, uint32_t pos, uint32_t parent) {
    const uint64_t key = (uint64_t)pos << 32 | parent;
    uint32_t h = mix32(key) & s->vis_mask;
    while (s->vis_stamp[h] == s->stamp) {
        if (s->vis_key[h] == key) return false;
        h = (h + 1) & s->vis_mask;
    }
    s->vis_key[h] = key;
    s->vis_stamp[h] = s->stamp;
    if (++s->vis_n * 2 > s->vis_mask + 1 && !vis_rehash(s, (s->vis_mask + 1) * 2)) s->oom = true;
    return true;
}

static void vis_clear(kv_gstate *s) {
    s->vis_n = 0;
    if (++s->stamp == 0) { /* wrapped: clear for real */
        memset(s->vis_stamp, 0, ((size_t)s->vis_mask + 1) * sizeof *s->vis_stamp);
        s->stamp = 1;
    }
}

/* Adds to s->out the top frames of every stack that continues at element pos
 * with `parent` below: pops at the end of an alternative, expands references. */
static void normalize(kv_gstate *s, uint32_t pos, uint32_t parent, int depth) {
    const kv_grammar *g = s->g;
    for (;;) {
        if (s->oom || depth > KV_NORM_DEPTH) return;
        const uint32_t e = g->el[pos];
        const uint32_t t = KV_GE_TYPE(e);
        if (t == KV_GE_END || t == KV_GE_ALT) {
            if (parent == 0) {
                out_add(s, 0);
                return;
            }
            pos = s->fr[parent].pos;
            parent = s->fr[parent].parent;
            continue;
        }
        if (t == KV_GE_CLASS) {
            const uint32_t f = fr_intern(s, pos, parent);
            if (f) out_add(s, f);
            return;
        }
        /* a reference */
        if (!vis_first(s, pos, parent)) return;
        const uint32_t cont = pos + 1, ct = KV_GE_TYPE(g->el[cont]);
        uint32_t np = parent;
        if (ct != KV_GE_END && ct != KV_GE_ALT) {
            np = fr_intern(s, cont, parent);
            if (!np) return;
        }
        uint32_t a = g->rule_start[KV_GE_VAL(e)];
        for (;;) {
            normalize(s, a, np, depth + 1);
            while (KV_GE_TYPE(g->el[a]) != KV_GE_ALT && KV_GE_TYPE(g->el[a]) != KV_GE_END) a++;
            if (KV_GE_TYPE(g->el[a]) == KV_GE_END) break;
            a++;
        }
        return;
    }
}

static int cmp_u32(const void *a, const void *b) {
    const uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void out_sort_unique(kv_gstate *s) {
    if (s->n_out > 1) qsort(s->out, s->n_out, sizeof *s->out, cmp_u32);
    uint32_t m = 0;
    for (uint32_t i = 0; i < s->n_out; i++)
        if (!m || s->out[m - 1] != s->out[i]) s->out[m++] = s->out[i];
    s->n_out = m;
}

/* ------------------------------------------------ DFA states */

static bool ds_rehash(kv_gstate *s, uint32_t size) {
    uint32_t *t = calloc(size, sizeof *t);
    if (!t) return false;
    free(s->ds_tab);
    s->ds_tab = t;
    s->ds_mask = size - 1;
    for (uint32_t id = 0; id < s->n_ds; id++) {
        uint32_t h = s->ds[id].hash & s->ds_mask;
        while (t[h]) h = (h + 1) & s->ds_mask;
        t[h] = id + 1;
    }
    return true;
}

/* The state of stacks s->out[0..n_out) (sorted, unique) with a partial
 * character; T_DEAD when there is no stack, or out of memory. */
static int32_t ds_intern(kv_gstate *s, uint32_t cp, uint8_t remain, uint8_t len) {
    if (s->oom || s->n_out == 0) return T_DEAD;
    uint64_t hv = (uint64_t)cp << 16 | (uint64_t)remain << 8 | len;
    for (uint32_t i = 0; i < s->n_out; i++) hv = (hv ^ s->out[i]) * 0x100000001b3ull + i;
    const uint32_t hash = mix32(hv);
    uint32_t h = hash & s->ds_mask;
    for (;;) {
        const uint32_t id1 = s->ds_tab[h];
        if (!id1) break;
        const dstate *d = &s->ds[id1 - 1];
        if (d->hash == hash && d->n == s->n_out && d->cp == cp && d->remain == remain && d->len == len &&
            memcmp(s->sets + d->off, s->out, (size_t)s->n_out * sizeof *s->out) == 0)
            return (int32_t)(id1 - 1);
        h = (h + 1) & s->ds_mask;
    }
    const uint32_t old_cap = s->cap_ds;
    if (s->n_ds >= INT32_MAX / 512 || !grow((void **)&s->ds, &s->cap_ds, s->n_ds + 1, sizeof *s->ds) ||
        !grow((void **)&s->sets, &s->cap_sets, s->n_sets + s->n_out, sizeof *s->sets)) {
        s->oom = true;
        return T_DEAD;
    }
    if (s->cap_ds != old_cap) {
        int32_t *t = realloc(s->trans, (size_t)s->cap_ds * 256 * sizeof *t);
        if (!t) {
            s->oom = true;
            return T_DEAD;
        }
        s->trans = t;
    }
    const uint32_t id = s->n_ds++;
    dstate *d = &s->ds[id];
    d->off = s->n_sets;
    d->n = s->n_out;
    memcpy(s->sets + s->n_sets, s->out, (size_t)s->n_out * sizeof *s->out);
    s->n_sets += s->n_out;
    d->cp = cp;
    d->remain = remain;
    d->len = len;
    d->complete = remain == 0 && s->out[0] == 0;
    d->more = remain > 0 || s->out[s->n_out - 1] != 0;
    d->mask_slot = -1;
    d->n_allowed = -1;
    d->hash = hash;
    for (int b = 0; b < 256; b++) s->trans[(size_t)id * 256 + (size_t)b] = T_UNKNOWN;
    s->ds_tab[h] = id + 1;
    if ((uint64_t)s->n_ds * 2 > (uint64_t)s->ds_mask + 1 && !ds_rehash(s, (s->ds_mask + 1) * 2)) s->oom = true;
    return (int32_t)id;
}

static inline bool class_has(const kv_grammar *g, uint32_t c, uint32_t cp) {
    const kv_gclass *cl = &g->cls[c];
    if (cp < 128) return (cl->ascii[cp >> 6] >> (cp & 63)) & 1;
    const uint32_t *r = g->rng + 2 * (size_t)cl->off;
    uint32_t lo = 0, hi = cl->n;
    while (lo < hi) { /* first range whose end is >= cp */
        const uint32_t mid = (lo + hi) / 2;
        if (r[2 * mid + 1] < cp) lo = mid + 1;
        else hi = mid;
    }
    return lo < cl->n && r[2 * lo] <= cp;
}

static inline bool class_meets(const kv_grammar *g, uint32_t c, uint32_t lo, uint32_t hi) {
    const kv_gclass *cl = &g->cls[c];
    const uint32_t *r = g->rng + 2 * (size_t)cl->off;
    for (uint32_t i = 0; i < cl->n; i++)
        if (r[2 * i] <= hi && r[2 * i + 1] >= lo) return true;
    return false;
}

/* The state after stacks[0..n) read code point cp. */
static int32_t advance_cp(kv_gstate *s, uint32_t off, uint32_t n, uint32_t cp) {
    s->n_out = 0;
    vis_clear(s);
    for (uint32_t i = 0; i < n; i++) {
        const uint32_t f = s->sets[off + i];
        if (!f) continue;
        const uint32_t pos = s->fr[f].pos;
        if (class_has(s->g, KV_GE_VAL(s->g->el[pos]), cp)) normalize(s, pos + 1, s->fr[f].parent, 0);
    }
    out_sort_unique(s);
    return ds_intern(s, 0, 0, 0);
}

/* The state holding the stacks whose class has a character starting with the
 * partial bytes (cp so far, remain to come, len in all). */
static int32_t partial(kv_gstate *s, uint32_t off, uint32_t n, uint32_t cp, uint8_t remain, uint8_t len) {
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    uint32_t lo = cp << (6 * remain), hi = lo | ((1u << (6 * remain)) - 1);
    if (lo < min_cp[len]) lo = min_cp[len];
    if (hi > KV_MAX_CP) hi = KV_MAX_CP;
    if (lo > hi || (lo >= 0xD800 && hi <= 0xDFFF)) return T_DEAD;
    s->n_out = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint32_t f = s->sets[off + i];
        if (f && class_meets(s->g, KV_GE_VAL(s->g->el[s->fr[f].pos]), lo, hi)) out_add(s, f);
    }
    return ds_intern(s, cp, remain, len); /* the subset of a sorted set is sorted */
}

static int32_t compute_trans(kv_gstate *s, uint32_t d, uint8_t b) {
    const dstate D = s->ds[d];
    int32_t r;
    if (D.remain == 0) {
        if (b < 0x80) {
            r = advance_cp(s, D.off, D.n, b);
        } else if (b >= 0xC2 && b <= 0xDF) {
            r = partial(s, D.off, D.n, b & 0x1Fu, 1, 2);
        } else if (b >= 0xE0 && b <= 0xEF) {
            r = partial(s, D.off, D.n, b & 0x0Fu, 2, 3);
        } else if (b >= 0xF0 && b <= 0xF4) {
            r = partial(s, D.off, D.n, b & 0x07u, 3, 4);
        } else {
            r = T_DEAD;
        }
    } else if ((b & 0xC0) != 0x80) {
        r = T_DEAD;
    } else {
        const uint32_t cp = D.cp << 6 | (b & 0x3Fu);
        if (D.remain > 1) {
            r = partial(s, D.off, D.n, cp, (uint8_t)(D.remain - 1), D.len);
        } else {
            static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
            if (cp < min_cp[D.len] || cp > KV_MAX_CP || (cp >= 0xD800 && cp <= 0xDFFF)) r = T_DEAD;
            else r = advance_cp(s, D.off, D.n, cp);
        }
    }
    if (s->oom) return T_DEAD; /* not recorded: a later call may succeed */
    s->trans[(size_t)d * 256 + b] = r;
    return r;
}

static inline int32_t step(kv_gstate *s, uint32_t d, uint8_t b) {
    const int32_t t = s->trans[(size_t)d * 256 + b];
    return t != T_UNKNOWN ? t : compute_trans(s, d, b);
}

static int32_t walk_bytes(kv_gstate *s, uint32_t d, const char *bytes, size_t n) {
    int32_t cur = (int32_t)d;
    for (size_t i = 0; i < n && cur >= 0; i++) cur = step(s, (uint32_t)cur, (uint8_t)bytes[i]);
    return cur;
}

/* ------------------------------------------------ life cycle */

static void drop_all(kv_gstate *s) {
    s->n_fr = 1; /* frame 0: the bottom */
    s->n_ds = 0;
    s->n_sets = 0;
    s->n_masks = 0;
    memset(s->fr_tab, 0, ((size_t)s->fr_mask + 1) * sizeof *s->fr_tab);
    memset(s->ds_tab, 0, ((size_t)s->ds_mask + 1) * sizeof *s->ds_tab);
}

static int32_t make_start(kv_gstate *s) {
    s->n_out = 0;
    vis_clear(s);
    const kv_grammar *g = s->g;
    uint32_t a = g->rule_start[g->root];
    for (;;) {
        normalize(s, a, 0, 0);
        while (KV_GE_TYPE(g->el[a]) != KV_GE_ALT && KV_GE_TYPE(g->el[a]) != KV_GE_END) a++;
        if (KV_GE_TYPE(g->el[a]) == KV_GE_END) break;
        a++;
    }
    out_sort_unique(s);
    return ds_intern(s, 0, 0, 0);
}

void kv_gstate_free(kv_gstate *s) {
    if (!s) return;
    free(s->fr);
    free(s->fr_tab);
    free(s->ds);
    free(s->ds_tab);
    free(s->trans);
    free(s->sets);
    free(s->masks);
    free(s->mask_out);
    free(s->walk);
    free(s->out);
    free(s->vis_key);
    free(s->vis_stamp);
    free(s);
}

kvlm_status kv_gstate_new(const kv_grammar *g, const kv_gvocab *v, kv_gstate **out, kvlm_error *err) {
    if (!g || !out) return kv_fail(err, KVLM_ERR_INVALID_ARG, "grammar: NULL argument");
    *out = NULL;
    kv_gstate *s = calloc(1, sizeof *s);
    if (!s) return kv_fail(err, KVLM_ERR_NOMEM, "grammar: out of memory");
    s->g = g;
    s->v = v;
    s->fr_mask = 1023;
    s->ds_mask = 255;
    s->vis_mask = 255;
    s->stamp = 1;
    s->fr_tab = calloc(s->fr_mask + 1, sizeof *s->fr_tab);
    s->ds_tab = calloc(s->ds_mask + 1, sizeof *s->ds_tab);
    s->vis_key = malloc(((size_t)s->vis_mask + 1) * sizeof *s->vis_key);
    s->vis_stamp = calloc(s->vis_mask + 1, sizeof *s->vis_stamp);
    bool ok = s->fr_tab && s->ds_tab && s->vis_key && s->vis_stamp &&
              grow((void **)&s->fr, &s->cap_fr, 1, sizeof *s->fr);
    if (ok && v) {
        s->words = ((uint32_t)v->n_vocab + 63) / 64;
        s->mask_out = malloc((size_t)(s->words + 1) * sizeof *s->mask_out); /* + the spare word */
        s->walk = malloc(((size_t)v->max_depth + 1) * sizeof *s->walk);
        ok = s->mask_out && s->walk;
    }
    if (ok) {
        s->fr[0] = (gframe){0, 0};
        s->n_fr = 1;
        const int32_t st = make_start(s);
        ok = st >= 0;
        s->start = s->cur = (uint32_t)(st >= 0 ? st : 0);
    }
    if (!ok || s->oom) {
        kv_gstate_free(s);
        return kv_fail(err, KVLM_ERR_NOMEM, "grammar: out of memory");
    }
    *out = s;
    return KVLM_OK;
}

void kv_gstate_reset(kv_gstate *s) {
    if (s && !s->broken) s->cur = s->start;
}

kvlm_status kv_gstate_flush(kv_gstate *s, kvlm_error *err) {
    if (!s) return kv_fail(err, KVLM_ERR_INVALID_ARG, "grammar: NULL state");
    /* the current state's stacks as position lists, bottom last */
    const dstate cur = s->ds[s->cur];
    uint32_t total = 0;
    for (uint32_t i = 0; i < cur.n; i++)
        for (uint32_t f = s->sets[cur.off + i]; f; f = s->fr[f].parent) total++;
    uint32_t *pos = malloc(((size_t)total + 1) * sizeof *pos);
    uint32_t *cnt = malloc(((size_t)cur.n + 1) * sizeof *cnt);
    if (s->broken) return kv_fail(err, KVLM_ERR_NOMEM, "grammar: the state was lost (out of memory)");
    if (!pos || !cnt) {
        free(pos);
        free(cnt);
        return kv_fail(err, KVLM_ERR_NOMEM, "grammar: out of memory");
    }
    uint32_t k = 0;
    for (uint32_t i = 0; i < cur.n; i++) {
        cnt[i] = 0;
        for (uint32_t f = s->sets[cur.off + i]; f; f = s->fr[f].parent) {
            pos[k++] = s->fr[f].pos;
            cnt[i]++;
        }
    }
    drop_all(s);
    s->oom = false;
    const int32_t st = make_start(s);
    s->n_out = 0;
    k = 0;
    uint32_t *tops = malloc(((size_t)cur.n + 1) * sizeof *tops);
    if (!tops) s->oom = true;
    for (uint32_t i = 0; i < cur.n && !s->oom; i++) {
        uint32_t f = 0;
        for (uint32_t j = cnt[i]; j > 0; j--) f = fr_intern(s, pos[k + j - 1], f);
        k += cnt[i];
        tops[i] = f;
    }
    free(pos);
    free(cnt);
    if (!s->oom) {
        s->n_out = 0;
        for (uint32_t i = 0; i < cur.n; i++) out_add(s, tops[i]);
        out_sort_unique(s);
    }
    free(tops);
    const int32_t c = ds_intern(s, cur.cp, cur.remain, cur.len);
    if (s->oom || st < 0 || c < 0) {
        s->oom = false;
        s->broken = true;
        return kv_fail(err, KVLM_ERR_NOMEM, "grammar: out of memory");
    }
    s->start = (uint32_t)st;
    s->cur = (uint32_t)c;
    return KVLM_OK;
}

static void maybe_collect(kv_gstate *s) {
    if (s->n_ds > KV_STATES_SOFT || s->n_fr > KV_FRAMES_SOFT) kv_gstate_flush(s, NULL);
}

/* ------------------------------------------------ queries */

bool kv_gstate_allows_bytes(kv_gstate *s, const char *bytes, size_t n) {
    if (!s || s->broken || (!bytes && n)) return false;
    const int32_t r = walk_bytes(s, s->cur, bytes, n);
    s->oom = false;
    return r >= 0;
}

bool kv_gstate_accept_bytes(kv_gstate *s, const char *bytes, size_t n) {
    if (!s || s->broken || (!bytes && n)) return false;
    const int32_t r = walk_bytes(s, s->cur, bytes, n);
    s->oom = false;
    if (r < 0) return false;
    s->cur = (uint32_t)r;
    maybe_collect(s);
    return true;
}

bool kv_gstate_complete(const kv_gstate *s) { return s && !s->broken && s->ds[s->cur].complete; }
bool kv_gstate_can_continue(const kv_gstate *s) { return s && !s->broken && s->ds[s->cur].more; }

bool kv_gstate_allows_token(kv_gstate *s, int32_t t) {
    if (!s || !s->v || s->broken || t < 0 || t >= s->v->n_vocab) return false;
    const kv_gvocab *v = s->v;
    if (v->eog[t]) return s->ds[s->cur].complete;
    if (!v->plen[t]) return false;
    return kv_gstate_allows_bytes(s, v->pool + v->poff[t], v->plen[t]);
}

kvlm_status kv_gstate_accept_token(kv_gstate *s, int32_t t, kvlm_error *err) {
    if (!s || !s->v) return kv_fail(err, KVLM_ERR_INVALID_ARG, "grammar: no vocabulary");
    if (s->broken) return kv_fail(err, KVLM_ERR_NOMEM, "grammar: the state was lost (out of memory)");
    const kv_gvocab *v = s->v;
    if (t < 0 || t >= v->n_vocab) return kv_fail(err, KVLM_ERR_INVALID_ARG, "grammar: token %d outside the vocabulary", t);
    if (v->eog[t]) {
        if (s->ds[s->cur].complete) return KVLM_OK;
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "grammar: end of generation (token %d) before the grammar is complete", t);
    }
    const int32_t r = v->plen[t] ? walk_bytes(s, s->cur, v->pool + v->poff[t], v->plen[t]) : T_DEAD;
    const bool oom = s->oom;
    s->oom = false;
    if (r < 0) {
        if (oom) return kv_fail(err, KVLM_ERR_NOMEM, "grammar: out of memory");
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "grammar: token %d does not continue the grammar", t);
    }
    s->cur = (uint32_t)r;
    maybe_collect(s);
    return KVLM_OK;
}

static const uint64_t *compute_mask(kv_gstate *s, bool cached, int32_t *n_allowed, kvlm_error *err) {
    if (!s || !s->v) {
        kv_fail(err, KVLM_ERR_INVALID_ARG, "grammar: no vocabulary");
        return NULL;
    }
    if (s->broken) {
        kv_fail(err, KVLM_ERR_NOMEM, "grammar: the state was lost (out of memory)");
        return NULL;
    }
    const kv_gvocab *v = s->v;
    const uint32_t d0 = s->cur;
    if (cached && s->ds[d0].mask_slot >= 0) {
        if (n_allowed) *n_allowed = s->ds[d0].n_allowed;
        return s->masks + (size_t)s->ds[d0].mask_slot * s->words;
    }
    uint64_t *m = s->mask_out;
    memset(m, 0, (size_t)(s->words + 1) * sizeof *m);
    uint32_t *stk = s->walk;
    stk[0] = d0;
    const uint32_t nn = v->n_nodes;
    const tnode *node = v->node;
    const int32_t *sorted = v->sorted;
    int32_t count = 0;
    const int32_t *trans = s->trans;
    for (uint32_t i = 0; i < nn;) {
        const tnode nd = node[i];
        const uint32_t from = stk[nd.depth - 1];
        int32_t t = trans[(size_t)from * 256 + nd.byte];
        if (__builtin_expect(t == T_UNKNOWN, 0)) {
            t = compute_trans(s, from, nd.byte);
            trans = s->trans; /* may have moved */
            if (s->oom) break;
        }
        if (t < 0) {
            i = nd.skip;
            continue;
        }
        stk[nd.depth] = (uint32_t)t;
        m[nd.tok >> 6] |= 1ull << (nd.tok & 63); /* the spare bit when no token ends here */
        if (__builtin_expect(nd.more, 0)) {
            const int32_t *tk = sorted + v->tok_off[i];
            for (uint32_t j = 1; j < v->tok_n[i]; j++) m[tk[j] >> 6] |= 1ull << (tk[j] & 63);
        }
        i++;
    }
    m[s->words] = 0; /* the spare word */
    for (uint32_t w = 0; w < s->words; w++) count += __builtin_popcountll(m[w]);
    if (s->oom) {
        s->oom = false;
        kv_fail(err, KVLM_ERR_NOMEM, "grammar: out of memory");
        return NULL;
    }
    if (s->ds[d0].complete)
        for (int32_t j = 0; j < v->n_eog; j++) {
            const int32_t id = v->eog_list[j];
            count += !((m[id >> 6] >> (id & 63)) & 1);
            m[id >> 6] |= 1ull << (id & 63);
        }
    s->ds[d0].n_allowed = count;
    if (n_allowed) *n_allowed = count;
    if (!cached) return m;
    if (s->n_masks >= KV_MASKS_MAX) return m;
    if (s->n_masks == s->cap_masks) { /* slots in steps of 16 */
        uint64_t *nm = realloc(s->masks, (size_t)(s->cap_masks + 16) * s->words * sizeof *nm);
        if (!nm) return m;
        s->masks = nm;
        s->cap_masks += 16;
    }
    const uint32_t slot = s->n_masks++;
    uint64_t *dst = s->masks + (size_t)slot * s->words;
    memcpy(dst, m, (size_t)s->words * sizeof *m);
    s->ds[d0].mask_slot = (int32_t)slot;
    return dst;
}

const uint64_t *kv_gstate_cached_mask(const kv_gstate *s) {
    if (!s || !s->v || s->broken || s->ds[s->cur].mask_slot < 0) return NULL;
    return s->masks + (size_t)s->ds[s->cur].mask_slot * s->words;
}

const uint64_t *kv_gstate_mask(kv_gstate *s, int32_t *n_allowed, kvlm_error *err) {
    return compute_mask(s, true, n_allowed, err);
}

const uint64_t *kv_gstate_mask_uncached(kv_gstate *s, int32_t *n_allowed, kvlm_error *err) {
    return compute_mask(s, false, n_allowed, err);
}
