/* Tokenize / token_to_piece entry points, the token and merge lookups and the
 * accessors of a loaded vocab (loading is in vocab_load.c). The special tokens
 * are split out first, longest first; the algorithms for the two tokenizer kinds
 * are in spm.c and bpe.c, the pre-tokenizers in pretok.c. The rules follow
 * llama.cpp (src/llama-vocab.cpp at c392e5094) so that token ids match it
 * exactly.
 *
 * kv_vocab_tokenize returns INT32_MIN when it cannot work at all (bad
 * arguments, out of memory, a regex engine failure, or more than INT32_MAX
 * tokens); the contract of kvlm_tokenize has no other error channel.
 *
 * Where llama.cpp aborts or throws, we do something defined instead:
 *  - SPM, a byte with neither a <0xNN> nor a one-byte token: the UNK token
 *    (llama.cpp throws);
 *  - BPE input with a 4-byte sequence above U+10FFFF: read as U+FFFD
 *    (llama.cpp throws). */
#define _GNU_SOURCE /* memmem */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_impl.h"

/* ------------------------------------------------------------ lookups */

int32_t kv_vocab_find(const kv_vocab *v, const char *text, size_t n) {
    uint32_t h = kv_tok_hash(text, n, 0);
    size_t i = h & v->tok_map.mask;
    for (;;) {
        uint32_t id = v->tok_map.val[i];
        if (id == UINT32_MAX) return -1;
        if (v->tok_map.hash[i] == h && v->text_len[id] == n &&
            memcmp(v->text_pool + v->text_off[id], text, n) == 0)
            return (int32_t)id;
        i = (i + 1) & v->tok_map.mask;
    }
}

int32_t kv_bpe_rank(const kv_vocab *v, const char *a, size_t na, size_t nb) {
    size_t n = na + nb;
    uint32_t h = kv_tok_hash(a, n, (uint32_t)na * 0x9E3779B1u + 1u);
    size_t i = h & v->merge_map.mask;
    for (;;) {
        uint32_t r = v->merge_map.val[i];
        if (r == UINT32_MAX) return -1;
        if (v->merge_map.hash[i] == h && v->merge_len[r] == n && v->merge_left[r] == na &&
            memcmp(v->merge_pool + v->merge_off[r], a, n) == 0)
            return (int32_t)r;
        i = (i + 1) & v->merge_map.mask;
    }
}

/* ------------------------------------------------------------ accessors */

kv_vocab_kind kv_vocab_type(const kv_vocab *v) { return v->kind; }
int32_t kv_vocab_n_tokens(const kv_vocab *v) { return v->n_tokens; }
int32_t kv_vocab_bos(const kv_vocab *v) { return v->bos; }
int32_t kv_vocab_eos(const kv_vocab *v) { return v->eos; }
bool kv_vocab_add_bos(const kv_vocab *v) { return v->add_bos && v->bos >= 0; }
bool kv_vocab_add_eos(const kv_vocab *v) { return v->add_eos && v->eos >= 0; }

bool kv_vocab_is_eog(const kv_vocab *v, int32_t tok) {
    return v && tok >= 0 && tok < v->n_tokens && v->eog[tok];
}

const char *kv_vocab_token_text(const kv_vocab *v, int32_t tok, size_t *len) {
    if (!v || tok < 0 || tok >= v->n_tokens) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = v->text_len[tok];
    return kv_tok_text(v, tok);
}

/* ------------------------------------------------------------ special split */

typedef struct frag {
    size_t off, len;
    int32_t tok; /* -1: raw text */
} frag;

typedef struct fragvec {
    frag *d;
    size_t n, cap;
} fragvec;

static bool frag_push(fragvec *f, size_t off, size_t len, int32_t tok) {
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        if (cap > SIZE_MAX / sizeof(frag)) return false;
        frag *d = realloc(f->d, cap * sizeof(frag));
        if (!d) return false;
        f->d = d;
        f->cap = cap;
    }
    f->d[f->n].off = off;
    f->d[f->n].len = len;
    f->d[f->n].tok = tok;
    f->n++;
    return true;
}

static bool is_space_c(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* llama.cpp's tokenizer_st_partition: every special token, longest first,
 * splits every raw fragment at each of its (non-overlapping, leftmost)
 * occurrences. Control and unknown tokens take part only with
 * parse_special; user-defined tokens always do. */
static bool partition(const kv_vocab *v, const char *text, size_t len, bool parse_special, fragvec *cur) {
    cur->n = 0;
    if (len == 0) return true;
    if (!frag_push(cur, 0, len, -1)) return false;
    if (v->n_special == 0) return true;

    /* which special tokens occur at all */
    uint8_t *present = calloc((size_t)v->n_special, 1);
    if (!present) return false;
    bool any = false;
    const unsigned char *u = (const unsigned char *)text;
    for (size_t i = 0; i < len; i++) {
        int32_t node = v->trie_root[u[i]];
        size_t j = i;
        while (node >= 0) {
            int32_t s = v->trie[node].special;
            if (s >= 0) {
                present[s] = 1;
                any = true;
            }
            if (++j >= len) break;
            int32_t c = v->trie[node].child;
            while (c >= 0 && v->trie[c].byte != u[j]) c = v->trie[c].sibling;
            node = c;
        }
    }
    if (!any) {
        free(present);
        return true;
    }

    fragvec next = {0};
    bool ok = true;
    for (int32_t s = 0; s < v->n_special && ok; s++) {
        if (!present[s]) continue;
        int32_t id = v->special_ids[s];
        uint16_t a = v->attr[id];
        if (!parse_special && (a & (KV_ATTR_CONTROL | KV_ATTR_UNKNOWN))) continue;
        const char *t = kv_tok_text(v, id);
        size_t tl = v->text_len[id];
        next.n = 0;
        for (size_t f = 0; f < cur->n && ok; f++) {
            frag fr = cur->d[f];
            if (fr.tok >= 0) {
                ok = frag_push(&next, fr.off, fr.len, fr.tok);
                continue;
            }
            size_t off = fr.off, flen = fr.len;
            for (;;) {
                const char *m = flen >= tl ? memmem(text + off, flen, t, tl) : NULL;
                if (!m) {
                    if (flen > 0) ok = frag_push(&next, off, flen, -1);
                    break;
                }
                size_t mo = (size_t)(m - text);
                if (mo > off) {
                    size_t ll = mo - off;
                    if (a & KV_ATTR_LSTRIP)
                        while (ll > 0 && is_space_c(text[off + ll - 1])) ll--;
                    if (ll > 0 && !(ok = frag_push(&next, off, ll, -1))) break;
                }
                if (!(ok = frag_push(&next, 0, 0, id))) break;
                size_t end = off + flen;
                if (mo + tl >= end) break;
                size_t ro = mo + tl, rl = end - ro;
                if (a & KV_ATTR_RSTRIP)
                    while (rl > 0 && is_space_c(text[ro])) {
                        ro++;
                        rl--;
                    }
                off = ro;
                flen = rl;
            }
        }
        fragvec tmp = *cur;
        *cur = next;
        next = tmp;
    }
    free(next.d);
    free(present);
    return ok;
}

/* ------------------------------------------------------------ tokenize */

int32_t kv_vocab_tokenize(const kv_vocab *v, const char *text, size_t len, int32_t *out, int32_t n_max,
                          bool add_special, bool parse_special) {
    if (!v || (!text && len) || n_max < 0 || (!out && n_max > 0)) return INT32_MIN;
    kv_ivec res = {0};
    fragvec frags = {0};
    bool ok = partition(v, text, len, parse_special, &frags);
    if (ok && add_special && v->add_bos && v->bos >= 0) ok = kv_ivec_push(&res, v->bos);
    bool prev_special = true; /* SPM: the first fragment gets the space prefix */
    for (size_t i = 0; ok && i < frags.n; i++) {
        const frag *f = &frags.d[i];
        if (f->tok >= 0) {
            ok = kv_ivec_push(&res, f->tok);
            prev_special = true;
        } else if (v->kind == KV_VOCAB_SPM) {
            ok = kv_spm_tokenize(v, text + f->off, f->len, v->add_space_prefix && prev_special, &res);
            prev_special = false;
        } else {
            ok = kv_bpe_tokenize(v, text + f->off, f->len, &res);
        }
    }
    if (ok && add_special && v->add_eos && v->eos >= 0) ok = kv_ivec_push(&res, v->eos);
    free(frags.d);
    if (!ok || res.oom || res.n > (size_t)INT32_MAX) {
        free(res.data);
        return INT32_MIN;
    }
    int32_t n = (int32_t)res.n;
    if (n > n_max) {
        free(res.data);
        return -n;
    }
    if (n) memcpy(out, res.data, (size_t)n * sizeof(int32_t));
    free(res.data);
    return n;
}

int32_t kv_vocab_token_to_piece(const kv_vocab *v, int32_t tok, char *buf, int32_t size, bool special) {
    if (!v || tok < 0 || tok >= v->n_tokens) return 0;
    if (!special && (v->attr[tok] & (KV_ATTR_UNKNOWN | KV_ATTR_CONTROL))) return 0;
    int32_t n = (int32_t)v->piece_len[tok];
    if (n == 0) return 0;
    if (!buf || size < n) return -n;
    memcpy(buf, v->piece_pool + v->piece_off[tok], (size_t)n);
    return n;
}
