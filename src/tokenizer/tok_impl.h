/* Internals of the tokenizer module: the kv_vocab layout and the helpers the
 * SPM, BPE and pre-tokenizer files share. Not part of any public interface. */
#ifndef KV_TOK_IMPL_H
#define KV_TOK_IMPL_H

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/utf8.h"
#include "tokenizer/vocab.h"

/* Token attributes (bit set), same meaning as llama.cpp's llama_token_attr. */
enum {
    KV_ATTR_UNDEFINED = 0,
    KV_ATTR_UNKNOWN = 1 << 0,
    KV_ATTR_UNUSED = 1 << 1,
    KV_ATTR_NORMAL = 1 << 2,
    KV_ATTR_CONTROL = 1 << 3,
    KV_ATTR_USER_DEFINED = 1 << 4,
    KV_ATTR_BYTE = 1 << 5,
    KV_ATTR_NORMALIZED = 1 << 6,
    KV_ATTR_LSTRIP = 1 << 7,
    KV_ATTR_RSTRIP = 1 << 8,
    KV_ATTR_SINGLE_WORD = 1 << 9,
};

/* Pre-tokenizer families (how tokenizer.ggml.pre selects the split regexes). */
typedef enum kv_pre_type {
    KV_PRE_DEFAULT = 0,
    KV_PRE_LLAMA3,
    KV_PRE_DEEPSEEK_LLM,
    KV_PRE_DEEPSEEK_CODER,
    KV_PRE_DEEPSEEK3_LLM,
    KV_PRE_FALCON,
    KV_PRE_STARCODER, /* also refact, command-r, smollm, codeshell, exaone, minerva */
    KV_PRE_GPT2,      /* also mpt, olmo, jais */
    KV_PRE_QWEN2,     /* also stablelm2, megrez */
    KV_PRE_BLOOM,     /* also poro, gpt3-finnish */
    KV_PRE_VIKING,
    KV_PRE_TEKKEN,
    KV_PRE_CHAMELEON,
} kv_pre_type;

#define KV_PRE_MAX_REGEX 8

/* ------------------------------------------------------------ hash map */
/* Open addressing map from a byte string to a uint32 value. The keys live in
 * the owner's storage; the map only keeps the value and the key's hash, and
 * the lookup functions compare against the owner's copy. */
typedef struct kv_hmap {
    uint32_t *val;  /* UINT32_MAX: empty slot */
    uint32_t *hash;
    size_t mask;    /* capacity - 1 */
} kv_hmap;

uint32_t kv_tok_hash(const char *s, size_t n, uint32_t seed);
bool kv_hmap_init(kv_hmap *m, size_t n_keys);
void kv_hmap_free(kv_hmap *m);

/* ------------------------------------------------------------ vectors */
typedef struct kv_ivec {
    int32_t *data;
    size_t n, cap;
    bool oom;
} kv_ivec;

bool kv_ivec_push(kv_ivec *v, int32_t x);

/* A binary min-heap of fixed-size elements ordered by `before` (true when a
 * must come out before b): the merge queue of both tokenizers. The functions
 * are inline so that each caller's constant element size and comparator are
 * compiled in. Out of memory sets oom and drops the element. */
typedef bool (*kv_heap_before_fn)(const void *a, const void *b);
typedef struct kv_heap {
    unsigned char *d;
    size_t n, cap;
    bool oom;
} kv_heap;

static inline __attribute__((always_inline)) void kv_heap_push(kv_heap *h, const void *x, size_t size,
                                                                kv_heap_before_fn before) {
    if (h->oom) return;
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        unsigned char *d = cap > SIZE_MAX / size ? NULL : (unsigned char *)realloc(h->d, cap * size);
        if (!d) {
            h->oom = true;
            return;
        }
        h->d = d;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!before(x, h->d + p * size)) break;
        memcpy(h->d + i * size, h->d + p * size, size);
        i = p;
    }
    memcpy(h->d + i * size, x, size);
}

/* h->n must be > 0; size at most 64. */
static inline __attribute__((always_inline)) void kv_heap_pop(kv_heap *h, void *out, size_t size,
                                                               kv_heap_before_fn before) {
    unsigned char last[64];
    memcpy(out, h->d, size);
    memcpy(last, h->d + --h->n * size, size);
    size_t i = 0, n = h->n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && before(h->d + (c + 1) * size, h->d + c * size)) c++;
        if (!before(h->d + c * size, last)) break;
        memcpy(h->d + i * size, h->d + c * size, size);
        i = c;
    }
    if (n) memcpy(h->d + i * size, last, size);
}

/* ------------------------------------------------------------ special tokens */
typedef struct kv_trie_node {
    int32_t child;    /* first child, -1 if none */
    int32_t sibling;  /* next sibling, -1 if none */
    int32_t special;  /* index into special_ids of the token ending here, -1 */
    uint8_t byte;
} kv_trie_node;

/* ------------------------------------------------------------ vocab */
struct kv_vocab {
    kv_vocab_kind kind;
    int32_t n_tokens;

    /* token i: text_pool[text_off[i] .. + text_len[i]], NUL-terminated */
    char *text_pool;
    size_t *text_off;
    uint32_t *text_len;
    float *scores;
    uint16_t *attr;
    /* token i as rendered with special=true */
    char *piece_pool;
    size_t *piece_off;
    uint32_t *piece_len;
    uint8_t *eog;  /* 1 for end-of-generation tokens */

    kv_hmap tok_map;  /* text -> id */

    int32_t bos, eos, eot, eom, unk, sep, pad, mask;
    int32_t fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep;
    bool add_bos, add_eos, add_space_prefix, ignore_merges, clean_spaces;

    /* control / user-defined / unknown tokens, longest text first */
    int32_t *special_ids;
    int32_t n_special;
    kv_trie_node *trie;
    int32_t n_trie;
    int32_t trie_root[256];

    /* SPM: token used for a byte that forms no token (<0xNN>, else the byte
     * itself as a token, else -1) */
    int32_t byte_tok[256];
    /* SPM: no token has a U+2581 right after another character, so no merge
     * can cross the start of a run of U+2581 and those runs cut the text into
     * pieces that can be merged one by one (same result, smaller queues) */
    bool spm_chunks;

    /* BPE */
    kv_pre_type pre_type;
    char *merge_pool;      /* left||right of each merge, back to back */
    size_t *merge_off;
    uint32_t *merge_len;   /* of left||right */
    uint32_t *merge_left;  /* length of left */
    uint32_t n_merges;
    kv_hmap merge_map;     /* left||right (with the split) -> rank */
    pcre2_code *re[KV_PRE_MAX_REGEX];
    int n_re;
    uint8_t bpe_enc[256][2]; /* GPT-2 byte -> UTF-8 of its stand-in codepoint */
    uint8_t bpe_enc_len[256];
    int32_t byte1_tok[256];  /* token whose text is exactly that one byte, -1 */
};

static inline const char *kv_tok_text(const kv_vocab *v, int32_t id) {
    return v->text_pool + v->text_off[id];
}

/* Token id of text[0..n), or -1. */
int32_t kv_vocab_find(const kv_vocab *v, const char *text, size_t n);
/* Merge rank of (a[0..na), a[na..na+nb)) -- the two halves are contiguous --
 * or -1. */
int32_t kv_bpe_rank(const kv_vocab *v, const char *a, size_t na, size_t nb);

/* SPM on one raw fragment (already space-prefixed and escaped by the caller
 * is NOT assumed: the caller passes the raw text and whether to prefix). */
bool kv_spm_tokenize(const kv_vocab *v, const char *text, size_t len, bool prefix_space,
                     kv_ivec *out);

/* BPE on one raw fragment: pre-tokenize, byte-encode, merge. */
bool kv_bpe_tokenize(const kv_vocab *v, const char *text, size_t len, kv_ivec *out);

/* Pre-tokenizer: maps a tokenizer.ggml.pre name to a type and the flags it
 * implies; false for an unknown name. */
bool kv_pre_lookup(const char *name, size_t len, kv_pre_type *type, bool *ignore_merges,
                   bool *add_bos, bool *clean_spaces, bool *no_bos);
/* Compiles the type's regexes into v->re (PCRE2, UTF + UCP, JIT when
 * available). */
kvlm_status kv_pre_compile(kv_vocab *v, kvlm_error *err);

/* Splitting a fragment: the words are byte ranges of *norm_out, which is
 * either text itself or a normalized copy (invalid UTF-8 replaced by U+FFFD
 * the way llama.cpp does) stored in scratch. */
typedef struct kv_span {
    size_t off, len;
} kv_span;

typedef struct kv_spans {
    kv_span *data;
    size_t n, cap;
    bool oom;
} kv_spans;

bool kv_pre_split(const kv_vocab *v, const char *text, size_t len, kv_buf *scratch,
                  kv_buf *scratch2, const char **norm_out, kv_spans *words);

/* GPT-2 byte <-> unicode mapping: fills enc/enc_len for all 256 bytes. */
void kv_bpe_byte_map(uint8_t enc[256][2], uint8_t enc_len[256]);
/* Inverse for one codepoint: the byte, or -1 if cp stands for no byte. */
int kv_bpe_cp_to_byte(uint32_t cp);

#endif
