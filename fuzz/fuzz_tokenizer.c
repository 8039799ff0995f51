/* Tokenizer: arbitrary text through real SentencePiece and byte-level BPE
 * vocabularies (loaded once from ../shared/models), with and without special
 * parsing, then rendered back piece by piece.
 *
 * Input: byte 0 picks the vocabulary (bits 0-1) and parse_special (bit 2);
 * the rest is the text. Contracts (a violation aborts):
 * - the size protocol: too small an n_max returns minus the count, which then fits;
 * - every id is in [0, n_vocab); add_special only adds BOS in front (and at
 *   most EOS at the end) of the same tokens;
 * - round trip, byte-level BPE: on valid UTF-8 the pieces concatenate to the
 *   text exactly, with or without special parsing;
 * - round trip, SPM without special parsing, on valid UTF-8 without U+2581
 *   (the character SPM uses for a space): the pieces concatenate to the text,
 *   preceded by one space when the vocab adds a space prefix (non-empty text);
 * - SPM with special parsing: the same with every space removed from both sides
 *   (a space prefix is added after each special token).
 * SPM cuts text into characters by their lead byte, as llama.cpp does, so in
 * invalid UTF-8 a lead byte can swallow the U+2581 that stands for a space and
 * byte fallback then renders U+2581: no round trip there (llama.cpp's too). */
#include <stdbool.h>
#include <string.h>

#include "fuzz_util.h"
#include "kvlm.h"

enum { MAX_TEXT = 4096, NV = 4, RCAP = 8 * MAX_TEXT };

typedef struct vocab {
    const char *file;
    bool bpe;
    kvlm_model *m;
    bool space_prefix;
} vocab;

static vocab g_vocabs[NV] = {
    {"llama/aidreams260K-f32.gguf", false, NULL, false}, /* llama2.c SPM vocab, 512 tokens */
    {"vocab/ggml-vocab-llama-spm.gguf", false, NULL, false},
    {"vocab/ggml-vocab-gpt-2.gguf", true, NULL, false},
    {"vocab/ggml-vocab-deepseek-coder.gguf", true, NULL, false},
};

static kvlm_token *g_tok, *g_tok2;
static char *g_buf;

static int32_t render(const kvlm_model *m, const kvlm_token *t, int32_t n, char *out, size_t cap) {
    size_t len = 0;
    for (int32_t i = 0; i < n; i++) {
        char piece[512];
        int32_t k = kvlm_token_to_piece(m, t[i], piece, (int32_t)sizeof piece, true);
        FUZZ_CHECK(k >= 0, "token %d has a piece longer than %zu bytes", t[i], sizeof piece);
        FUZZ_CHECK(len + (size_t)k <= cap, "rendered text too long");
        memcpy(out + len, piece, (size_t)k);
        len += (size_t)k;
    }
    return (int32_t)len;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    for (int i = 0; i < NV; i++) {
        g_vocabs[i].m = fuzz_load_model(g_vocabs[i].file, true, "fuzz_tokenizer");
        kvlm_token t[4];
        char piece[64];
        int32_t n = kvlm_tokenize(g_vocabs[i].m, "a", 1, t, 4, false, false);
        int32_t k = n > 0 ? kvlm_token_to_piece(g_vocabs[i].m, t[0], piece, (int32_t)sizeof piece, true) : 0;
        g_vocabs[i].space_prefix = k > 0 && piece[0] == ' ';
    }
    /* every byte can become several tokens: at most 4 * MAX_TEXT + specials */
    g_tok = malloc(sizeof *g_tok * (4 * MAX_TEXT + 8));
    g_tok2 = malloc(sizeof *g_tok2 * (4 * MAX_TEXT + 8));
    g_buf = malloc(RCAP + 2 * MAX_TEXT); /* the rendering, then two space-stripped copies */
    if (!g_tok || !g_tok2 || !g_buf) abort();
    return 0;
}

static bool valid_utf8(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t l = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (!l || i + l > n) return false;
        uint32_t cp = l == 1 ? c : l == 2 ? c & 0x1F : l == 3 ? c & 0x0F : c & 0x07;
        for (size_t k = 1; k < l; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return false;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if ((l == 2 && cp < 0x80) || (l == 3 && cp < 0x800) || (l == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += l;
    }
    return true;
}

static bool has_sub(const uint8_t *s, size_t n, const char *sub) {
    size_t k = strlen(sub);
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(s + i, sub, k) == 0) return true;
    return false;
}

/* Copies s without spaces; returns the new length. */
static size_t strip_spaces(const char *s, size_t n, char *out) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ') out[k++] = s[i];
    return k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1 || size - 1 > MAX_TEXT) return 0;
    const vocab *v = &g_vocabs[data[0] & 3];
    const bool parse_special = data[0] & 4;
    const char *text = (const char *)data + 1;
    const size_t len = size - 1;
    const kvlm_model *m = v->m;
    const int32_t nv = kvlm_n_vocab(m);
    const int32_t cap = 4 * MAX_TEXT + 8;

    const int32_t n = kvlm_tokenize(m, text, len, g_tok, cap, false, parse_special);
    FUZZ_CHECK(n >= 0, "tokenize returned %d for %zu bytes", n, len);
    for (int32_t i = 0; i < n; i++) FUZZ_CHECK(g_tok[i] >= 0 && g_tok[i] < nv, "token %d out of range", g_tok[i]);
    if (n > 0) {
        const int32_t need = kvlm_tokenize(m, text, len, g_tok2, n - 1, false, parse_special);
        FUZZ_CHECK(need == -n, "n_max %d gave %d, expected %d", n - 1, need, -n);
    }
    /* add_special: BOS in front (when the vocab asks), at most EOS at the end, the same tokens between */
    const int32_t ns = kvlm_tokenize(m, text, len, g_tok2, cap, true, parse_special);
    FUZZ_CHECK(ns >= n, "add_special gave fewer tokens (%d < %d)", ns, n);
    const int32_t lead = kvlm_add_bos(m) ? 1 : 0;
    if (lead) FUZZ_CHECK(ns >= 1 && g_tok2[0] == kvlm_token_bos(m), "no BOS in front");
    FUZZ_CHECK(ns - lead - n <= 1, "add_special added %d tokens", ns - n);
    FUZZ_CHECK(memcmp(g_tok2 + lead, g_tok, (size_t)n * sizeof *g_tok) == 0, "add_special changed the tokens");
    if (ns - lead - n == 1) FUZZ_CHECK(g_tok2[ns - 1] == kvlm_token_eos(m), "the token added at the end is not EOS");

    const int32_t rl = render(m, g_tok, n, g_buf, RCAP);
    if (v->bpe) {
        if (valid_utf8((const uint8_t *)text, len))
            FUZZ_CHECK((size_t)rl == len && memcmp(g_buf, text, len) == 0,
                       "byte-level BPE round trip: %zu bytes in, %d bytes out", len, rl);
    } else if (valid_utf8((const uint8_t *)text, len) && !has_sub((const uint8_t *)text, len, "\xe2\x96\x81")) {
        if (!parse_special) {
            const size_t pre = v->space_prefix && len > 0 ? 1 : 0;
            FUZZ_CHECK((size_t)rl == len + pre && (!pre || g_buf[0] == ' ') && memcmp(g_buf + pre, text, len) == 0,
                       "SPM round trip: %zu bytes in, %d bytes out", len, rl);
        } else {
            char *a = g_buf + rl, *b = a + len;
            size_t la = strip_spaces(text, len, a);
            size_t lb = strip_spaces(g_buf, (size_t)rl, b);
            FUZZ_CHECK(la == lb && memcmp(a, b, la) == 0, "SPM round trip (special, spaces aside): %zu vs %zu", la, lb);
        }
    }
    return 0;
}
