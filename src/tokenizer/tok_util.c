/* Shared helpers of the tokenizer: string hashing, the hash map storage,
 * growable vectors and the GPT-2 byte mapping. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_impl.h"

uint32_t kv_tok_hash(const char *s, size_t n, uint32_t seed) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ ((uint64_t)n * 0xFF51AFD7ED558CCDull) ^ seed;
    while (n >= 8) {
        uint64_t k;
        memcpy(&k, s, 8);
        h = (h ^ k) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    if (n > 0) {
        uint64_t k = 0;
        memcpy(&k, s, n);
        h = (h ^ k) * 0x94D049BB133111EBull;
    }
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return (uint32_t)h;
}

bool kv_hmap_init(kv_hmap *m, size_t n_keys) {
    m->val = NULL;
    m->hash = NULL;
    m->mask = 0;
    size_t cap = 16;
    while (cap < n_keys * 2) {
        if (cap > SIZE_MAX / 2 / sizeof(uint32_t)) return false;
        cap *= 2;
    }
    m->val = malloc(cap * sizeof(uint32_t));
    m->hash = malloc(cap * sizeof(uint32_t));
    if (!m->val || !m->hash) {
        kv_hmap_free(m);
        return false;
    }
    memset(m->val, 0xFF, cap * sizeof(uint32_t));
    m->mask = cap - 1;
    return true;
}

void kv_hmap_free(kv_hmap *m) {
    free(m->val);
    free(m->hash);
    m->val = NULL;
    m->hash = NULL;
    m->mask = 0;
}

bool kv_ivec_push(kv_ivec *v, int32_t x) {
    if (v->oom) return false;
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        if (cap > SIZE_MAX / sizeof(int32_t)) {
            v->oom = true;
            return false;
        }
        int32_t *d = realloc(v->data, cap * sizeof(int32_t));
        if (!d) {
            v->oom = true;
            return false;
        }
        v->data = d;
        v->cap = cap;
    }
    v->data[v->n++] = x;
    return true;
}

/* GPT-2's printable bytes stand for themselves; the other 68 bytes are
 * given the codepoints 256, 257, ... in byte order. */
static bool bpe_byte_is_printable(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

void kv_bpe_byte_map(uint8_t enc[256][2], uint8_t enc_len[256]) {
    uint32_t next = 256;
    for (unsigned b = 0; b < 256; b++) {
        uint32_t cp = bpe_byte_is_printable(b) ? b : next++;
        char tmp[4];
        size_t n = kv_utf8_encode(cp, tmp);
        memcpy(enc[b], tmp, n);
        enc_len[b] = (uint8_t)n;
    }
}

int kv_bpe_cp_to_byte(uint32_t cp) {
    if (cp < 256) return bpe_byte_is_printable(cp) ? (int)cp : -1;
    uint32_t next = 256;
    for (unsigned b = 0; b < 256; b++) {
        if (bpe_byte_is_printable(b)) continue;
        if (next == cp) return (int)b;
        next++;
    }
    return -1;
}
