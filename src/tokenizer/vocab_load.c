/* Vocab loading from GGUF metadata (tokenizer.ggml.*): token texts, scores,
 * types and merges, the special tokens (BOS/EOS/EOT/EOM/FIM, end-of-generation
 * set, the longest-first special-token trie), the pieces token_to_piece returns,
 * and the pre-tokenizer's regexes. Tokenizing is in vocab_tokenize.c. The rules
 * follow llama.cpp (src/llama-vocab.cpp at c392e5094) so that token ids match it
 * exactly.
 *
 * Where llama.cpp aborts or throws, we do something defined instead:
 *  - two tokens with the same text: KVLM_ERR_FORMAT at load (llama.cpp asserts);
 *  - several candidate texts for the EOT / EOM / FIM tokens: the first in our
 *    list order wins (llama.cpp: whichever its hash map yields first);
 *  - special tokens of equal length are tried in id order (llama.cpp's
 *    std::sort leaves that order unspecified). */
#define _GNU_SOURCE /* memmem */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "tokenizer/tok_impl.h"

#define KEY_MODEL "tokenizer.ggml.model"
#define KEY_PRE "tokenizer.ggml.pre"
#define KEY_TOKENS "tokenizer.ggml.tokens"
#define KEY_SCORES "tokenizer.ggml.scores"
#define KEY_TYPES "tokenizer.ggml.token_type"
#define KEY_MERGES "tokenizer.ggml.merges"

/* GGUF token types (tokenizer.ggml.token_type) */
enum { TT_UNDEFINED = 0, TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER_DEFINED = 4,
       TT_UNUSED = 5, TT_BYTE = 6 };

/* ------------------------------------------------------------ hash map inserts */

/* Inserts token id; returns the id already holding the same text, or -1. */
static int32_t tok_map_insert(kv_vocab *v, int32_t id) {
    const char *text = kv_tok_text(v, id);
    size_t n = v->text_len[id];
    uint32_t h = kv_tok_hash(text, n, 0);
    size_t i = h & v->tok_map.mask;
    for (;;) {
        uint32_t o = v->tok_map.val[i];
        if (o == UINT32_MAX) {
            v->tok_map.val[i] = (uint32_t)id;
            v->tok_map.hash[i] = h;
            return -1;
        }
        if (v->tok_map.hash[i] == h && v->text_len[o] == n && memcmp(kv_tok_text(v, (int32_t)o), text, n) == 0)
            return (int32_t)o;
        i = (i + 1) & v->tok_map.mask;
    }
}

/* Inserts merge r unless the same pair is already there (the first, lowest
 * rank wins, like llama.cpp's emplace). */
static void merge_map_insert(kv_vocab *v, uint32_t r) {
    const char *a = v->merge_pool + v->merge_off[r];
    size_t n = v->merge_len[r], na = v->merge_left[r];
    uint32_t h = kv_tok_hash(a, n, (uint32_t)na * 0x9E3779B1u + 1u);
    size_t i = h & v->merge_map.mask;
    for (;;) {
        uint32_t o = v->merge_map.val[i];
        if (o == UINT32_MAX) {
            v->merge_map.val[i] = r;
            v->merge_map.hash[i] = h;
            return;
        }
        if (v->merge_map.hash[i] == h && v->merge_len[o] == n && v->merge_left[o] == na &&
            memcmp(v->merge_pool + v->merge_off[o], a, n) == 0)
            return;
        i = (i + 1) & v->merge_map.mask;
    }
}

/* ------------------------------------------------------------ free */

void kv_vocab_free(kv_vocab *v) {
    if (!v) return;
    free(v->text_pool);
    free(v->text_off);
    free(v->text_len);
    free(v->scores);
    free(v->attr);
    free(v->piece_pool);
    free(v->piece_off);
    free(v->piece_len);
    free(v->eog);
    kv_hmap_free(&v->tok_map);
    free(v->special_ids);
    free(v->trie);
    free(v->merge_pool);
    free(v->merge_off);
    free(v->merge_len);
    free(v->merge_left);
    kv_hmap_free(&v->merge_map);
    for (int i = 0; i < v->n_re; i++) pcre2_code_free(v->re[i]);
    free(v);
}

/* ------------------------------------------------------------ loading */

static bool str_eq(gguf_str s, const char *c) { return kv_gguf_str_eq(s, c); }

static bool is_numeric(gguf_vtype t) {
    return t != GGUF_STRING && t != GGUF_ARRAY && t < GGUF_VTYPE_COUNT;
}

/* Special token id from metadata: kept only when it names a token. */
static void read_id(const gguf_ctx *g, const char *key, int32_t n_tokens, int32_t *id) {
    uint32_t x;
    if (kv_gguf_get_u32(g, key, &x) && x < (uint32_t)n_tokens) *id = (int32_t)x;
}

static kvlm_status read_flag(const gguf_ctx *g, const char *key, bool *flag, kvlm_error *err) {
    const gguf_kv *kv = kv_gguf_find(g, key);
    if (!kv) return KVLM_OK;
    if (kv->type != GGUF_BOOL)
        return kv_fail(err, KVLM_ERR_FORMAT, "vocab: %s has type %s, expected bool", key,
                       kv_gguf_vtype_name(kv->type));
    *flag = kv->v.u64 != 0;
    return KVLM_OK;
}

static kvlm_status load_tokens(kv_vocab *v, const gguf_ctx *g, kvlm_error *err) {
    const gguf_kv *tk = kv_gguf_find(g, KEY_TOKENS);
    if (!tk) return kv_fail(err, KVLM_ERR_FORMAT, "vocab: missing %s", KEY_TOKENS);
    if (tk->type != GGUF_ARRAY || tk->arr_type != GGUF_STRING || !tk->arr_str)
        return kv_fail(err, KVLM_ERR_FORMAT, "vocab: %s is not an array of strings", KEY_TOKENS);
    if (tk->arr_n == 0) return kv_fail(err, KVLM_ERR_FORMAT, "vocab: %s is empty", KEY_TOKENS);
    if (tk->arr_n > (uint64_t)INT32_MAX - 1)
        return kv_fail(err, KVLM_ERR_FORMAT, "vocab: %llu tokens is too many",
                       (unsigned long long)tk->arr_n);
    const int32_t n = (int32_t)tk->arr_n;
    v->n_tokens = n;

    const gguf_kv *sc = kv_gguf_find(g, KEY_SCORES);
    if (sc) {
        if (sc->type != GGUF_ARRAY || !is_numeric(sc->arr_type))
            return kv_fail(err, KVLM_ERR_FORMAT, "vocab: %s is not a numeric array", KEY_SCORES);
        if (sc->arr_n != tk->arr_n)
            return kv_fail(err, KVLM_ERR_FORMAT, "vocab: %s has %llu entries for %d tokens", KEY_SCORES,
                           (unsigned long long)sc->arr_n, n);
    }
    const gguf_kv *ty = kv_gguf_find(g, KEY_TYPES);
    if (ty) {
        if (ty->type != GGUF_ARRAY || !is_numeric(ty->arr_type) || ty->arr_type == GGUF_FLOAT32 ||
            ty->arr_type == GGUF_FLOAT64)
            return kv_fail(err, KVLM_ERR_FORMAT, "vocab: %s is not an integer array", KEY_TYPES);
        if (ty->arr_n != tk->arr_n)
            return kv_fail(err, KVLM_ERR_FORMAT, "vocab: %s has %llu entries for %d tokens", KEY_TYPES,
                           (unsigned long long)ty->arr_n, n);
    }

    /* text pool: empty tokens become "[EMPTY_<id>]" as in llama.cpp */
    size_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        uint64_t len = tk->arr_str[i].len;
        if (len == 0) len = 32;
        if (len > UINT32_MAX - 1)
            return kv_fail(err, KVLM_ERR_FORMAT, "vocab: token %d is too long", i);
        if (len + 1 > SIZE_MAX - total) return kv_fail(err, KVLM_ERR_NOMEM, "vocab: token texts too large");
        total += (size_t)len + 1;
    }
    v->text_pool = malloc(total);
    v->text_off = malloc((size_t)n * sizeof(size_t));
    v->text_len = malloc((size_t)n * sizeof(uint32_t));
    v->scores = malloc((size_t)n * sizeof(float));
    v->attr = malloc((size_t)n * sizeof(uint16_t));
    v->eog = calloc((size_t)n, 1);
    if (!v->text_pool || !v->text_off || !v->text_len || !v->scores || !v->attr || !v->eog)
        return kv_fail(err, KVLM_ERR_NOMEM, "vocab: out of memory for %d tokens", n);
    if (!kv_hmap_init(&v->tok_map, (size_t)n))
        return kv_fail(err, KVLM_ERR_NOMEM, "vocab: out of memory for the token map");

    size_t off = 0;
    for (int32_t i = 0; i < n; i++) {
        gguf_str s = tk->arr_str[i];
        v->text_off[i] = off;
        if (s.len == 0) {
            int k = snprintf(v->text_pool + off, 33, "[EMPTY_%d]", (int)i);
            v->text_len[i] = (uint32_t)k;
            off += (size_t)k + 1;
        } else {
            memcpy(v->text_pool + off, s.data, (size_t)s.len);
            v->text_pool[off + s.len] = '\0';
            v->text_len[i] = (uint32_t)s.len;
            off += (size_t)s.len + 1;
        }
        double d = 0.0;
        if (sc && !kv_gguf_arr_f64(sc, (uint64_t)i, &d))
            return kv_fail(err, KVLM_ERR_FORMAT, "vocab: unreadable score of token %d", i);
        v->scores[i] = (float)d;
        uint16_t a = KV_ATTR_NORMAL;
        if (ty) {
            int64_t t;
            if (!kv_gguf_arr_i64(ty, (uint64_t)i, &t))
                return kv_fail(err, KVLM_ERR_FORMAT, "vocab: unreadable type of token %d", i);
            switch (t) {
            case TT_UNKNOWN: a = KV_ATTR_UNKNOWN; break;
            case TT_UNUSED: a = KV_ATTR_UNUSED; break;
            case TT_NORMAL: a = KV_ATTR_NORMAL; break;
            case TT_CONTROL: a = KV_ATTR_CONTROL; break;
            case TT_USER_DEFINED: a = KV_ATTR_USER_DEFINED; break;
            case TT_BYTE: a = KV_ATTR_BYTE; break;
            default: a = KV_ATTR_UNDEFINED; break;
            }
        }
        v->attr[i] = a;
        int32_t dup = tok_map_insert(v, i);
        if (dup >= 0)
            return kv_fail(err, KVLM_ERR_FORMAT, "vocab: tokens %d and %d have the same text", dup, i);
    }
    return KVLM_OK;
}

static kvlm_status load_merges(kv_vocab *v, const gguf_ctx *g, kvlm_error *err) {
    const gguf_kv *mk = kv_gguf_find(g, KEY_MERGES);
    if (!mk) return kv_fail(err, KVLM_ERR_FORMAT, "vocab: BPE vocab without %s", KEY_MERGES);
    if (mk->type != GGUF_ARRAY || mk->arr_type != GGUF_STRING || (mk->arr_n && !mk->arr_str))
        return kv_fail(err, KVLM_ERR_FORMAT, "vocab: %s is not an array of strings", KEY_MERGES);
    if (mk->arr_n > (uint64_t)INT32_MAX - 1)
        return kv_fail(err, KVLM_ERR_FORMAT, "vocab: too many merges");
    uint32_t n = (uint32_t)mk->arr_n;
    size_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t len = mk->arr_str[i].len;
        if (len > UINT32_MAX) return kv_fail(err, KVLM_ERR_FORMAT, "vocab: merge %u is too long", i);
        if (len > SIZE_MAX - total) return kv_fail(err, KVLM_ERR_NOMEM, "vocab: merges too large");
        total += (size_t)len;
    }
    v->n_merges = n;
    v->merge_pool = malloc(total ? total : 1);
    v->merge_off = malloc((n ? n : 1) * sizeof(size_t));
    v->merge_len = malloc((n ? n : 1) * sizeof(uint32_t));
    v->merge_left = malloc((n ? n : 1) * sizeof(uint32_t));
    if (!v->merge_pool || !v->merge_off || !v->merge_len || !v->merge_left || !kv_hmap_init(&v->merge_map, n))
        return kv_fail(err, KVLM_ERR_NOMEM, "vocab: out of memory for %u merges", n);
    size_t off = 0;
    for (uint32_t i = 0; i < n; i++) {
        gguf_str s = mk->arr_str[i];
        /* "left right", split at the first space after the first byte */
        const char *sp = s.len > 1 ? memchr(s.data + 1, ' ', (size_t)s.len - 1) : NULL;
        v->merge_off[i] = off;
        if (!sp) { /* llama.cpp stores ("", ""), which can never match */
            v->merge_len[i] = 0;
            v->merge_left[i] = 0;
            continue;
        }
        size_t nl = (size_t)(sp - s.data), nr = (size_t)s.len - nl - 1;
        memcpy(v->merge_pool + off, s.data, nl);
        memcpy(v->merge_pool + off + nl, sp + 1, nr);
        v->merge_len[i] = (uint32_t)(nl + nr);
        v->merge_left[i] = (uint32_t)nl;
        off += nl + nr;
        merge_map_insert(v, i);
    }
    return KVLM_OK;
}

static int32_t find_cstr(const kv_vocab *v, const char *s) { return kv_vocab_find(v, s, strlen(s)); }

/* The first of names present in the vocab (llama.cpp takes whichever its
 * hash map yields first; with one candidate per vocab that is the same). */
static int32_t find_first(const kv_vocab *v, const char *const *names) {
    for (; *names; names++) {
        int32_t id = find_cstr(v, *names);
        if (id >= 0) return id;
    }
    return -1;
}

static void detect_special(kv_vocab *v) {
    static const char *const eot_names[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
                                            "<|endoftext|>", "<EOT>",
                                            "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
                                            NULL};
    static const char *const eom_names[] = {"<|eom_id|>", NULL};
    static const char *const pre_names[] = {"<|fim_prefix|>", "<fim-prefix>",
                                            "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>", "<PRE>", NULL};
    static const char *const suf_names[] = {"<|fim_suffix|>", "<fim-suffix>",
                                            "<\xef\xbd\x9c" "fim\xe2\x96\x81hole\xef\xbd\x9c>", "<SUF>", NULL};
    static const char *const mid_names[] = {"<|fim_middle|>", "<fim-middle>",
                                            "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>", "<MID>", NULL};
    static const char *const pad_names[] = {"<|fim_pad|>", "<fim-pad>", "<PAD>", NULL};
    static const char *const rep_names[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", NULL};
    static const char *const sep_names[] = {"<|file_sep|>", NULL};
    static const char *const eog_names[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
                                            "<|endoftext|>", "<|eom_id|>", "<EOT>", NULL};

    struct {
        int32_t *id;
        const char *const *names;
    } det[] = {{&v->eot, eot_names},     {&v->eom, eom_names},     {&v->fim_pre, pre_names},
               {&v->fim_suf, suf_names}, {&v->fim_mid, mid_names}, {&v->fim_pad, pad_names},
               {&v->fim_rep, rep_names}, {&v->fim_sep, sep_names}};
    for (size_t i = 0; i < sizeof det / sizeof det[0]; i++) {
        if (*det[i].id >= 0) continue;
        int32_t id = find_first(v, det[i].names);
        if (id >= 0) {
            *det[i].id = id;
            if (!(v->attr[id] & KV_ATTR_CONTROL)) v->attr[id] = KV_ATTR_CONTROL;
        }
    }

    if (v->fim_pad >= 0) v->eog[v->fim_pad] = 1;
    if (v->fim_rep >= 0) v->eog[v->fim_rep] = 1;
    if (v->fim_sep >= 0) v->eog[v->fim_sep] = 1;
    for (const char *const *p = eog_names; *p; p++) {
        int32_t id = find_cstr(v, *p);
        if (id < 0) continue;
        v->eog[id] = 1;
        if (!(v->attr[id] & KV_ATTR_CONTROL)) v->attr[id] = KV_ATTR_CONTROL;
    }
    if (v->eos >= 0) v->eog[v->eos] = 1;
    if (v->eot >= 0) v->eog[v->eot] = 1;
    if (v->eom >= 0) v->eog[v->eom] = 1;
}

typedef struct len_id {
    uint32_t len;
    int32_t id;
} len_id;

static int cmp_len_id(const void *a, const void *b) {
    const len_id *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

static kvlm_status build_specials(kv_vocab *v, kvlm_error *err) {
    int32_t n = 0;
    for (int32_t i = 0; i < v->n_tokens; i++)
        if (v->attr[i] & (KV_ATTR_CONTROL | KV_ATTR_USER_DEFINED | KV_ATTR_UNKNOWN)) n++;
    v->n_special = n;
    for (int b = 0; b < 256; b++) v->trie_root[b] = -1;
    if (n == 0) return KVLM_OK;
    len_id *tmp = malloc((size_t)n * sizeof *tmp);
    v->special_ids = malloc((size_t)n * sizeof(int32_t));
    if (!tmp || !v->special_ids) {
        free(tmp);
        return kv_fail(err, KVLM_ERR_NOMEM, "vocab: out of memory for special tokens");
    }
    size_t n_nodes = 0;
    int32_t k = 0;
    for (int32_t i = 0; i < v->n_tokens; i++) {
        if (!(v->attr[i] & (KV_ATTR_CONTROL | KV_ATTR_USER_DEFINED | KV_ATTR_UNKNOWN))) continue;
        tmp[k].len = v->text_len[i];
        tmp[k].id = i;
        if (n_nodes > SIZE_MAX - tmp[k].len) {
            free(tmp);
            return kv_fail(err, KVLM_ERR_NOMEM, "vocab: special tokens too large");
        }
        n_nodes += tmp[k].len;
        k++;
    }
    qsort(tmp, (size_t)n, sizeof *tmp, cmp_len_id);
    for (int32_t i = 0; i < n; i++) v->special_ids[i] = tmp[i].id;
    free(tmp);

    if (n_nodes > (size_t)INT32_MAX || n_nodes > SIZE_MAX / sizeof(kv_trie_node))
        return kv_fail(err, KVLM_ERR_NOMEM, "vocab: special tokens too large");
    v->trie = malloc((n_nodes ? n_nodes : 1) * sizeof(kv_trie_node));
    if (!v->trie) return kv_fail(err, KVLM_ERR_NOMEM, "vocab: out of memory for the special-token trie");
    v->n_trie = 0;
    for (int32_t s = 0; s < n; s++) {
        int32_t id = v->special_ids[s];
        const unsigned char *t = (const unsigned char *)kv_tok_text(v, id);
        uint32_t len = v->text_len[id];
        int32_t cur = -1;
        for (uint32_t j = 0; j < len; j++) {
            int32_t node;
            if (cur < 0) {
                node = v->trie_root[t[j]];
            } else {
                node = v->trie[cur].child;
                while (node >= 0 && v->trie[node].byte != t[j]) node = v->trie[node].sibling;
            }
            if (node < 0) {
                node = v->n_trie++;
                v->trie[node].child = -1;
                v->trie[node].special = -1;
                v->trie[node].byte = t[j];
                if (cur < 0) {
                    v->trie[node].sibling = -1;
                    v->trie_root[t[j]] = node;
                } else {
                    v->trie[node].sibling = v->trie[cur].child;
                    v->trie[cur].child = node;
                }
            }
            cur = node;
        }
        if (cur >= 0) v->trie[cur].special = s;
    }
    return KVLM_OK;
}

/* True when some token has a U+2581 character right after a character that
 * is not U+2581 (characters cut the way the SPM tokenizer cuts them). */
static bool spm_inner_space(const char *t, size_t len) {
    bool prev_space = true; /* the first character may be anything */
    for (size_t off = 0; off < len;) {
        size_t l = kv_utf8_len((unsigned char)t[off]);
        if (l > len - off) l = len - off;
        bool sp = l == 3 && memcmp(t + off, "\xe2\x96\x81", 3) == 0;
        if (sp && !prev_space) return true;
        prev_space = sp;
        off += l;
    }
    return false;
}

static int hex_val(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The byte of an SPM byte token "<0xNN>" (llama.cpp: strtol of chars 3..4). */
static uint8_t spm_token_byte(const kv_vocab *v, int32_t id) {
    const char *t = kv_tok_text(v, id);
    uint32_t len = v->text_len[id];
    unsigned val = 0;
    for (uint32_t i = 3; i < len && i < 5; i++) {
        int h = hex_val(t[i]);
        if (h < 0) break;
        val = val * 16 + (unsigned)h;
    }
    return (uint8_t)val;
}

static bool piece_add_spm(const kv_vocab *v, int32_t id, kv_buf *pool) {
    const char *t = kv_tok_text(v, id);
    size_t len = v->text_len[id];
    uint16_t a = v->attr[id];
    if (a & (KV_ATTR_UNKNOWN | KV_ATTR_CONTROL | KV_ATTR_USER_DEFINED)) return kv_buf_add(pool, t, len);
    if (a & KV_ATTR_NORMAL) {
        for (size_t i = 0; i < len;) {
            if (i + 3 <= len && memcmp(t + i, "\xe2\x96\x81", 3) == 0) {
                if (!kv_buf_add(pool, " ", 1)) return false;
                i += 3;
            } else {
                if (!kv_buf_add(pool, t + i, 1)) return false;
                i++;
            }
        }
        return true;
    }
    if (a & KV_ATTR_BYTE) {
        uint8_t b = spm_token_byte(v, id);
        return kv_buf_add(pool, &b, 1);
    }
    return true;
}

static bool piece_add_bpe(const kv_vocab *v, int32_t id, const int16_t *inv, kv_buf *pool) {
    const char *t = kv_tok_text(v, id);
    size_t len = v->text_len[id];
    uint16_t a = v->attr[id];
    if (a & (KV_ATTR_UNKNOWN | KV_ATTR_CONTROL | KV_ATTR_USER_DEFINED)) return kv_buf_add(pool, t, len);
    if (!(a & KV_ATTR_NORMAL)) return true;
    for (size_t off = 0; off < len;) {
        uint32_t cp = kv_utf8_decode(t, len, &off);
        int b = cp < 324 ? inv[cp] : -1;
        if (b >= 0) {
            uint8_t c = (uint8_t)b;
            if (!kv_buf_add(pool, &c, 1)) return false;
        } else {
            /* llama.cpp writes "[UNK_BYTE_0x<utf8 hex><whole token text>]" */
            char u[4], hex[16];
            size_t nu = kv_utf8_encode(cp > 0x10FFFF ? 0xFFFD : cp, u);
            if (!kv_buf_add(pool, "[UNK_BYTE_0x", 12)) return false;
            for (size_t j = 0; j < nu; j++) {
                snprintf(hex, sizeof hex, "%02x", (unsigned)(unsigned char)u[j]);
                if (!kv_buf_add(pool, hex, 2)) return false;
            }
            if (!kv_buf_add(pool, t, len) || !kv_buf_add(pool, "]", 1)) return false;
        }
    }
    return true;
}

static kvlm_status build_pieces(kv_vocab *v, kvlm_error *err) {
    int32_t n = v->n_tokens;
    v->piece_off = malloc((size_t)n * sizeof(size_t));
    v->piece_len = malloc((size_t)n * sizeof(uint32_t));
    if (!v->piece_off || !v->piece_len) return kv_fail(err, KVLM_ERR_NOMEM, "vocab: out of memory for pieces");
    int16_t inv[324];
    for (uint32_t cp = 0; cp < 324; cp++) inv[cp] = (int16_t)kv_bpe_cp_to_byte(cp);
    kv_buf pool = {0};
    for (int32_t i = 0; i < n; i++) {
        size_t start = pool.n;
        bool ok = v->kind == KV_VOCAB_SPM ? piece_add_spm(v, i, &pool) : piece_add_bpe(v, i, inv, &pool);
        if (!ok || pool.n - start > (size_t)INT32_MAX) {
            free(pool.data);
            return kv_fail(err, KVLM_ERR_NOMEM, "vocab: out of memory for pieces");
        }
        v->piece_off[i] = start;
        v->piece_len[i] = (uint32_t)(pool.n - start);
    }
    v->piece_pool = pool.data; /* may be NULL when every piece is empty */
    return KVLM_OK;
}

static bool contains(gguf_str s, const char *needle) {
    size_t n = strlen(needle);
    return s.len >= n && memmem(s.data, (size_t)s.len, needle, n) != NULL;
}

/* Per-model token attributes that llama.cpp sets by name. */
static void name_attrs(kv_vocab *v, const gguf_ctx *g) {
    gguf_str pre = {0, ""}, name = {0, ""};
    kv_gguf_get_str(g, KEY_PRE, &pre);
    kv_gguf_get_str(g, "general.name", &name);
    if (contains(pre, "jina-v2-de") || contains(pre, "jina-v2-es") || contains(pre, "jina-v2-code")) {
        int32_t id = find_cstr(v, "<mask>");
        if (id >= 0) v->attr[id] |= KV_ATTR_LSTRIP;
        return;
    }
    char lower[256];
    size_t nl = name.len < sizeof lower - 1 ? (size_t)name.len : sizeof lower - 1;
    for (size_t i = 0; i < nl; i++) {
        char c = name.data[i];
        lower[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
    }
    lower[nl] = '\0';
    gguf_str ls = {nl, lower};
    if (contains(ls, "phi-3") || contains(ls, "phi3")) {
        for (int32_t i = 0; i < v->n_special; i++) v->attr[v->special_ids[i]] |= KV_ATTR_RSTRIP;
        int32_t id = find_cstr(v, "</s>");
        if (id >= 0) v->attr[id] |= KV_ATTR_RSTRIP;
        static const char *const off[] = {"<unk>", "<s>", "<|endoftext|>"};
        for (size_t i = 0; i < 3; i++) {
            id = find_cstr(v, off[i]);
            if (id >= 0) v->attr[id] &= (uint16_t)~KV_ATTR_RSTRIP;
        }
    }
}

kvlm_status kv_vocab_load(const gguf_ctx *g, kv_vocab **out, kvlm_error *err) {
    if (!out) return kv_fail(err, KVLM_ERR_INVALID_ARG, "vocab: out is NULL");
    *out = NULL;
    if (!g) return kv_fail(err, KVLM_ERR_INVALID_ARG, "vocab: no GGUF context");

    const gguf_kv *mk = kv_gguf_find(g, KEY_MODEL);
    if (!mk) return kv_fail(err, KVLM_ERR_FORMAT, "vocab: missing %s", KEY_MODEL);
    if (mk->type != GGUF_STRING) return kv_fail(err, KVLM_ERR_FORMAT, "vocab: %s is not a string", KEY_MODEL);
    gguf_str model = mk->v.str;
    kv_vocab_kind kind;
    if (str_eq(model, "llama")) {
        kind = KV_VOCAB_SPM;
    } else if (str_eq(model, "gpt2")) {
        kind = KV_VOCAB_BPE;
    } else {
        int n = model.len > 64 ? 64 : (int)model.len;
        return kv_fail(err, KVLM_ERR_UNSUPPORTED,
                       "vocab: tokenizer model '%.*s' is not supported (only 'llama' and 'gpt2')", n,
                       model.data);
    }
    gguf_str pre = {0, ""};
    const gguf_kv *pk = kv_gguf_find(g, KEY_PRE);
    if (pk) {
        if (pk->type != GGUF_STRING) return kv_fail(err, KVLM_ERR_FORMAT, "vocab: %s is not a string", KEY_PRE);
        pre = pk->v.str;
    }

    kv_vocab *v = calloc(1, sizeof *v);
    if (!v) return kv_fail(err, KVLM_ERR_NOMEM, "vocab: out of memory");
    v->kind = kind;
    v->eot = v->eom = v->sep = v->pad = v->mask = -1;
    v->fim_pre = v->fim_suf = v->fim_mid = v->fim_pad = v->fim_rep = v->fim_sep = -1;
    kvlm_status st;
    if (kind == KV_VOCAB_SPM) {
        v->bos = 1;
        v->eos = 2;
        v->unk = 0;
        v->pre_type = KV_PRE_DEFAULT;
        v->add_space_prefix = true;
        v->add_bos = true;
        v->add_eos = false;
    } else {
        v->bos = 11;
        v->eos = 11;
        v->unk = -1;
        v->add_space_prefix = false;
        v->clean_spaces = true;
        bool no_bos = false;
        if (pre.len == 0) {
            v->pre_type = KV_PRE_DEFAULT; /* llama.cpp warns and uses 'default' */
        } else if (!kv_pre_lookup(pre.data, (size_t)pre.len, &v->pre_type, &v->ignore_merges, &v->add_bos,
                                  &v->clean_spaces, &no_bos)) {
            int n = pre.len > 64 ? 64 : (int)pre.len;
            st = kv_fail(err, KVLM_ERR_UNSUPPORTED, "vocab: unknown pre-tokenizer '%.*s'", n, pre.data);
            goto fail;
        }
        if (no_bos) v->bos = -1;
    }
    if ((st = read_flag(g, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix, err))) goto fail;

    if ((st = load_tokens(v, g, err))) goto fail;
    if (kind == KV_VOCAB_BPE && (st = load_merges(v, g, err))) goto fail;

    /* defaults that do not name a token are dropped */
    int32_t *ids[] = {&v->bos, &v->eos, &v->unk};
    for (size_t i = 0; i < 3; i++)
        if (*ids[i] >= v->n_tokens) *ids[i] = -1;

    read_id(g, "tokenizer.ggml.bos_token_id", v->n_tokens, &v->bos);
    read_id(g, "tokenizer.ggml.eos_token_id", v->n_tokens, &v->eos);
    read_id(g, "tokenizer.ggml.eot_token_id", v->n_tokens, &v->eot);
    read_id(g, "tokenizer.ggml.eom_token_id", v->n_tokens, &v->eom);
    read_id(g, "tokenizer.ggml.unknown_token_id", v->n_tokens, &v->unk);
    read_id(g, "tokenizer.ggml.seperator_token_id", v->n_tokens, &v->sep);
    read_id(g, "tokenizer.ggml.padding_token_id", v->n_tokens, &v->pad);
    read_id(g, "tokenizer.ggml.mask_token_id", v->n_tokens, &v->mask);
    read_id(g, "tokenizer.ggml.fim_pre_token_id", v->n_tokens, &v->fim_pre);
    read_id(g, "tokenizer.ggml.fim_suf_token_id", v->n_tokens, &v->fim_suf);
    read_id(g, "tokenizer.ggml.fim_mid_token_id", v->n_tokens, &v->fim_mid);
    read_id(g, "tokenizer.ggml.fim_pad_token_id", v->n_tokens, &v->fim_pad);
    read_id(g, "tokenizer.ggml.fim_rep_token_id", v->n_tokens, &v->fim_rep);
    read_id(g, "tokenizer.ggml.fim_sep_token_id", v->n_tokens, &v->fim_sep);
    read_id(g, "tokenizer.ggml.prefix_token_id", v->n_tokens, &v->fim_pre);
    read_id(g, "tokenizer.ggml.suffix_token_id", v->n_tokens, &v->fim_suf);
    read_id(g, "tokenizer.ggml.middle_token_id", v->n_tokens, &v->fim_mid);

    if ((st = read_flag(g, "tokenizer.ggml.add_bos_token", &v->add_bos, err))) goto fail;
    if ((st = read_flag(g, "tokenizer.ggml.add_eos_token", &v->add_eos, err))) goto fail;

    detect_special(v);
    if ((st = build_specials(v, err))) goto fail;
    if ((st = build_pieces(v, err))) goto fail;
    name_attrs(v, g);

    for (int b = 0; b < 256; b++) {
        char hx[8];
        snprintf(hx, sizeof hx, "<0x%02X>", (unsigned)b);
        char one = (char)b;
        v->byte1_tok[b] = kv_vocab_find(v, &one, 1);
        int32_t id = kv_vocab_find(v, hx, 6);
        v->byte_tok[b] = id >= 0 ? id : v->byte1_tok[b];
    }

    if (kind == KV_VOCAB_SPM) {
        v->spm_chunks = true;
        for (int32_t i = 0; i < v->n_tokens && v->spm_chunks; i++)
            if (spm_inner_space(kv_tok_text(v, i), v->text_len[i])) v->spm_chunks = false;
    }
    if (kind == KV_VOCAB_BPE) {
        kv_bpe_byte_map(v->bpe_enc, v->bpe_enc_len);
        if ((st = kv_pre_compile(v, err))) goto fail;
    }
    *out = v;
    return KVLM_OK;
fail:
    kv_vocab_free(v);
    return st;
}
