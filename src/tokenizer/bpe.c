/* Byte-level BPE (tokenizer.ggml.model = "gpt2"), as llama.cpp does it: the
 * pre-tokenizer cuts the text into words, each byte of a word is replaced by
 * its GPT-2 stand-in character, and the adjacent pair with the lowest merge
 * rank is merged until no pair has a rank (ties: the leftmost pair). The
 * resulting pieces are looked up as tokens; a piece that is not a token is
 * emitted byte by byte where single bytes are tokens (and dropped otherwise). */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_impl.h"

typedef struct bpe_sym {
    uint32_t start;
    uint32_t n; /* 0 once merged into its left neighbour */
    int32_t prev, next;
} bpe_sym;

typedef struct bpe_bigram {
    int32_t rank;
    int32_t left, right;
    uint32_t size;
} bpe_bigram;


static bool bpe_before(const bpe_bigram *a, const bpe_bigram *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static bool bpe_before_any(const void *a, const void *b) { return bpe_before(a, b); }

typedef struct bpe_ctx {
    const kv_vocab *v;
    const char *s; /* the byte-encoded word */
    bpe_sym *sym;
    size_t sym_cap;
    kv_heap heap;
    kv_buf enc;
} bpe_ctx;

static void add_bigram(bpe_ctx *c, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    int32_t rank = kv_bpe_rank(c->v, c->s + c->sym[l].start, c->sym[l].n, c->sym[r].n);
    if (rank < 0) return;
    bpe_bigram b = {rank, l, r, c->sym[l].n + c->sym[r].n};
    kv_heap_push(&c->heap, &b, sizeof b, bpe_before_any);
}

/* One pre-tokenized word (raw bytes). */
static bool bpe_word(bpe_ctx *c, const unsigned char *w, size_t wl, kv_ivec *out) {
    const kv_vocab *v = c->v;
    if (wl == 0) return true;
    c->enc.n = 0;
    if (wl > UINT32_MAX / 2 || !kv_buf_reserve(&c->enc, wl * 2)) return false;
    for (size_t i = 0; i < wl; i++) {
        memcpy(c->enc.data + c->enc.n, v->bpe_enc[w[i]], v->bpe_enc_len[w[i]]);
        c->enc.n += v->bpe_enc_len[w[i]];
    }
    c->s = c->enc.data;
    if (v->ignore_merges) {
        int32_t id = kv_vocab_find(v, c->enc.data, c->enc.n);
        if (id >= 0) return kv_ivec_push(out, id);
    }
    if (wl > (size_t)INT32_MAX) return false;
    if (wl > c->sym_cap) {
        bpe_sym *d = wl > SIZE_MAX / sizeof(bpe_sym) ? NULL : realloc(c->sym, wl * sizeof(bpe_sym));
        if (!d) return false;
        c->sym = d;
        c->sym_cap = wl;
    }
    /* one symbol per byte: each byte became exactly one character */
    uint32_t off = 0;
    for (size_t i = 0; i < wl; i++) {
        c->sym[i].start = off;
        c->sym[i].n = v->bpe_enc_len[w[i]];
        c->sym[i].prev = (int32_t)i - 1;
        c->sym[i].next = i + 1 < wl ? (int32_t)i + 1 : -1;
        off += c->sym[i].n;
    }
    c->heap.n = 0;
    for (size_t i = 1; i < wl; i++) add_bigram(c, (int32_t)i - 1, (int32_t)i);
    while (c->heap.n > 0 && !c->heap.oom) {
        bpe_bigram bg;
            kv_heap_pop(&c->heap, &bg, sizeof bg, bpe_before_any);
        bpe_sym *l = &c->sym[bg.left], *r = &c->sym[bg.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != bg.size) continue; /* stale */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) c->sym[r->next].prev = bg.left;
        add_bigram(c, l->prev, bg.left);
        add_bigram(c, bg.left, l->next);
    }
    if (c->heap.oom) return false;
    for (int32_t i = 0; i != -1; i = c->sym[i].next) {
        const bpe_sym *s = &c->sym[i];
        if (s->n == 0) continue;
        int32_t id = kv_vocab_find(v, c->s + s->start, s->n);
        if (id >= 0) {
            if (!kv_ivec_push(out, id)) return false;
            continue;
        }
        for (uint32_t j = 0; j < s->n; j++) {
            int32_t t = v->byte1_tok[(unsigned char)c->s[s->start + j]];
            if (t >= 0 && !kv_ivec_push(out, t)) return false;
        }
    }
    return true;
}

bool kv_bpe_tokenize(const kv_vocab *v, const char *text, size_t len, kv_ivec *out) {
    kv_buf s1 = {0}, s2 = {0};
    kv_spans words = {0};
    const char *norm = text;
    bool ok = kv_pre_split(v, text, len, &s1, &s2, &norm, &words);
    free(s2.data);
    bpe_ctx c = {v, NULL, NULL, 0, {0}, {0}};
    for (size_t i = 0; ok && i < words.n; i++)
        ok = bpe_word(&c, (const unsigned char *)norm + words.data[i].off, words.data[i].len, out);
    free(c.sym);
    free(c.heap.d);
    free(c.enc.data);
    free(words.data);
    free(s1.data);
    return ok;
}
