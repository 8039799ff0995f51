/* SentencePiece-style tokenization (tokenizer.ggml.model = "llama"), as
 * llama.cpp does it: spaces become U+2581, the text is cut into UTF-8
 * characters, and the adjacent pair whose concatenation is the token with the
 * highest score is merged again and again (ties: the leftmost pair). What is
 * left is either a token or falls back to byte tokens <0xNN>. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_impl.h"

typedef struct spm_sym {
    size_t start;
    uint32_t n; /* 0 once merged into its left neighbour */
    int32_t prev, next;
} spm_sym;

typedef struct spm_bigram {
    float score;
    int32_t left, right;
    uint32_t size;
} spm_bigram;


/* true when a must come out of the queue before b */
static bool spm_before(const spm_bigram *a, const spm_bigram *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static bool spm_before_any(const void *a, const void *b) { return spm_before(a, b); }

typedef struct spm_ctx {
    const kv_vocab *v;
    const char *s;
    spm_sym *sym;
    kv_heap heap;
} spm_ctx;

static void try_add(spm_ctx *c, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    uint32_t size = c->sym[l].n + c->sym[r].n;
    int32_t id = kv_vocab_find(c->v, c->s + c->sym[l].start, size);
    if (id < 0) return;
    spm_bigram b = {c->v->scores[id], l, r, size};
    kv_heap_push(&c->heap, &b, sizeof b, spm_before_any);
}

bool kv_spm_tokenize(const kv_vocab *v, const char *text, size_t len, bool prefix_space, kv_ivec *out) {
    /* escape: optional leading space, every ' ' -> U+2581 */
    kv_buf b = {0};
    if (len > (SIZE_MAX - 3) / 3 || !kv_buf_reserve(&b, len * 3 + 3)) return false;
    if (prefix_space) kv_buf_add(&b, "\xe2\x96\x81", 3);
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ')
            kv_buf_add(&b, "\xe2\x96\x81", 3);
        else
            b.data[b.n++] = text[i];
    }
    if (b.n == 0) {
        free(b.data);
        return true;
    }

    size_t n_sym = 0;
    for (size_t off = 0; off < b.n; n_sym++) {
        size_t l = kv_utf8_len((unsigned char)b.data[off]);
        off += l < b.n - off ? l : b.n - off;
    }
    if (n_sym > (size_t)INT32_MAX || n_sym > SIZE_MAX / sizeof(spm_sym)) {
        free(b.data);
        return false;
    }
    spm_ctx c = {v, b.data, malloc(n_sym * sizeof(spm_sym)), {0}};
    if (!c.sym) {
        free(b.data);
        return false;
    }
    /* symbols; with spm_chunks the chain is cut before every run of U+2581
     * that follows another character, and each piece is merged alone */
    size_t off = 0;
    bool prev_space = true;
    for (size_t i = 0; i < n_sym; i++) {
        size_t l = kv_utf8_len((unsigned char)b.data[off]);
        if (l > b.n - off) l = b.n - off;
        bool sp = l == 3 && memcmp(b.data + off, "\xe2\x96\x81", 3) == 0;
        bool cut = v->spm_chunks && i > 0 && sp && !prev_space;
        prev_space = sp;
        c.sym[i].start = off;
        c.sym[i].n = (uint32_t)l;
        c.sym[i].prev = cut ? -1 : (int32_t)i - 1;
        c.sym[i].next = i + 1 < n_sym ? (int32_t)i + 1 : -1;
        if (cut) c.sym[i - 1].next = -1;
        off += l;
    }

    bool ok = true;
    for (size_t first = 0; ok && first < n_sym;) {
        size_t last = first; /* the piece is sym[first..last] */
        while (c.sym[last].next >= 0) last++;
        c.heap.n = 0;
        for (size_t i = first + 1; i <= last; i++) try_add(&c, (int32_t)i - 1, (int32_t)i);
        while (c.heap.n > 0 && !c.heap.oom) {
            spm_bigram bg;
            kv_heap_pop(&c.heap, &bg, sizeof bg, spm_before_any);
            spm_sym *l = &c.sym[bg.left], *r = &c.sym[bg.right];
            if (l->n == 0 || r->n == 0 || l->n + r->n != bg.size) continue; /* stale */
            l->n += r->n;
            r->n = 0;
            l->next = r->next;
            if (r->next >= 0) c.sym[r->next].prev = bg.left;
            try_add(&c, l->prev, bg.left);
            try_add(&c, bg.left, l->next);
        }
        ok = !c.heap.oom;
        for (int32_t i = (int32_t)first; ok && i != -1; i = c.sym[i].next) {
            const spm_sym *s = &c.sym[i];
            int32_t id = kv_vocab_find(v, b.data + s->start, s->n);
            if (id >= 0) {
                ok = kv_ivec_push(out, id);
                continue;
            }
            /* no token: one byte token per byte (llama.cpp would throw when
             * the vocab has no token for a byte; we fall back to UNK) */
            for (uint32_t j = 0; ok && j < s->n; j++) {
                int32_t t = v->byte_tok[(unsigned char)b.data[s->start + j]];
                if (t < 0) t = v->unk;
                if (t >= 0) ok = kv_ivec_push(out, t);
            }
        }
        first = last + 1;
    }
    free(c.heap.d);
    free(c.sym);
    free(b.data);
    return ok;
}
