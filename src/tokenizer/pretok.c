/* BPE pre-tokenizers: the text is split into words by a list of regexes run
 * one after another (each one splits the pieces the previous one made; text
 * between matches becomes a piece of its own), as llama.cpp's
 * unicode_regex_split does. The regexes run on PCRE2 in UTF + UCP mode.
 *
 * llama.cpp does not run these regexes as written: it maps codepoints to
 * categories from its own Unicode 15.1 tables, treats only its whitespace set
 * as \s, and has hand-written matchers for the GPT-2 and Llama-3 patterns. The
 * patterns below are written so that PCRE2 makes the same splits:
 *  - \s is spelled out as llama.cpp's whitespace set (PCRE2's \s would also
 *    take U+180E);
 *  - the categories include the codepoints Unicode 15/15.1 added (PCRE2 10.42
 *    knows Unicode 14 and would call them unassigned);
 *  - in llama.cpp \p{S} does not take '~' (its ASCII table misses it), which
 *    matters for the deepseek-v3 pattern only;
 *  - "$" (end of the piece) is \z;
 *  - llama.cpp replaces non-ASCII whitespace by U+000B before matching, so
 *    the explicit ranges of the deepseek patterns leave those characters out.
 * With PCRE2 10.42 the classes below agree with llama.cpp's tables on every
 * codepoint; a PCRE2 built on Unicode 16 or later would also classify the
 * characters added after 15.1, which llama.cpp treats as unassigned.
 * Invalid UTF-8 is replaced by U+FFFD per bad byte before splitting, as in
 * llama.cpp; surrogates encoded in UTF-8 are kept as they are but matched as a
 * private-use character (both are "other" to every class used here).
 * Long pieces: llama.cpp's std::regex overflows its stack on some patterns
 * (e.g. 100k letters); here the JIT retries with a big stack and then the
 * interpreter, so they only cost time and memory. */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "tokenizer/tok_impl.h"

/* llama.cpp's whitespace set */
#define WS "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
/* category class contents: PCRE2's property plus what Unicode 15/15.1 added */
#define PL                                                                                               \
    "\\p{L}\\x{1123F}-\\x{11240}\\x{11F02}\\x{11F04}-\\x{11F10}\\x{11F12}-\\x{11F33}\\x{1342F}"           \
    "\\x{13441}-\\x{13446}\\x{1B132}\\x{1B155}\\x{1DF25}-\\x{1DF2A}\\x{1E030}-\\x{1E06D}"                  \
    "\\x{1E4D0}-\\x{1E4EB}\\x{2B739}\\x{2EBF0}-\\x{2EE5D}\\x{31350}-\\x{323AF}"
#define PN "\\p{N}\\x{11F50}-\\x{11F59}\\x{1D2C0}-\\x{1D2D3}\\x{1E4F0}-\\x{1E4F9}"
#define PM                                                                                               \
    "\\p{M}\\x{CF3}\\x{ECE}\\x{10EFD}-\\x{10EFF}\\x{11241}\\x{11F00}-\\x{11F01}\\x{11F03}"               \
    "\\x{11F34}-\\x{11F3A}\\x{11F3E}-\\x{11F42}\\x{13440}\\x{13447}-\\x{13455}\\x{1E08F}"                 \
    "\\x{1E4EC}-\\x{1E4EF}"
#define PP "\\p{P}\\x{11B00}-\\x{11B09}\\x{11F43}-\\x{11F4F}"
#define PS                                                                                               \
    "\\p{S}\\x{2FFC}-\\x{2FFF}\\x{31EF}\\x{1F6DC}\\x{1F774}-\\x{1F776}\\x{1F77B}-\\x{1F77F}\\x{1F7D9}"    \
    "\\x{1FA75}-\\x{1FA77}\\x{1FA87}-\\x{1FA88}\\x{1FAAD}-\\x{1FAAF}\\x{1FABB}-\\x{1FABD}\\x{1FABF}"     \
    "\\x{1FACE}-\\x{1FACF}\\x{1FADA}-\\x{1FADB}\\x{1FAE8}\\x{1FAF7}-\\x{1FAF8}"

#define S_ "[" WS "]"
/* \s+(?!\S) */
#define SPACES_NOT_BEFORE_TEXT "[" WS "]+(?![^" WS "])"

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
#define RE_GPT2                                                                                          \
    "'s|'t|'re|'ve|'m|'ll|'d| ?[" PL "]+| ?[" PN "]+| ?[^" WS PL PN "]+|" SPACES_NOT_BEFORE_TEXT "|" S_ "+"

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
 * \s*[\r\n]+|\s+(?!\S)|\s+   (Qwen2: \p{N} instead of \p{N}{1,3}) */
#define RE_LLAMA3_HEAD                                                                                   \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n" PL PN "]?[" PL "]+|[" PN "]"
#define RE_LLAMA3_TAIL                                                                                   \
    "| ?[^" WS PL PN "]+[\\r\\n]*|" S_ "*[\\r\\n]+|" SPACES_NOT_BEFORE_TEXT "|" S_ "+"
#define RE_LLAMA3 RE_LLAMA3_HEAD "{1,3}" RE_LLAMA3_TAIL
#define RE_QWEN2 RE_LLAMA3_HEAD RE_LLAMA3_TAIL

/* [一-龥ࠀ-一가-퟿]+ without the whitespace inside U+0800..U+4E00 (llama.cpp
 * turns non-ASCII whitespace into U+000B before matching, so the class never
 * sees it) */
#define RE_CJK                                                                                           \
    "[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{167F}\\x{1681}-\\x{1FFF}\\x{200B}-\\x{2027}\\x{202A}-\\x{202E}"    \
    "\\x{2030}-\\x{205E}\\x{2060}-\\x{2FFF}\\x{3001}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+"

#define RE_DEEPSEEK_LETTERS                                                                              \
    S_ "?[A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}\\x{1C4}-\\x{293}"   \
    "\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}\\x{37F}\\x{386}\\x{388}-\\x{38A}" \
    "\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}"       \
    "\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}"     \
    "\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}"     \
    "\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}"               \
    "\\x{1F5F}-\\x{1F7D}\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}"               \
    "\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}"     \
    "\\x{1FF6}-\\x{1FFC}\\x{2102}\\x{2107}\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}"       \
    "\\x{2126}\\x{2128}\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}"               \
    "\\x{2145}-\\x{2149}\\x{214E}\\x{2183}\\x{2184}\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}"               \
    "\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}"      \
    "\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}"     \
    "\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}"                   \
    "\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}"               \
    "\\x{1E900}-\\x{1E943}]+"

/* " ?[^(\s|.,!?…。，、।۔،)]+" */
#define RE_BLOOM " ?[^(" WS "|.,!?\\x{2026}\\x{3002}\\x{FF0C}\\x{3001}\\x{964}\\x{6D4}\\x{60C})]+"

static const char *const re_default[] = {"[" PP "\\$\\+<=>\\^~\\|]+", RE_GPT2, "[" PN "]+",
                                         "[0-9][0-9][0-9]", NULL};
static const char *const re_llama3[] = {RE_LLAMA3, NULL};
static const char *const re_qwen2[] = {RE_QWEN2, NULL};
static const char *const re_deepseek_llm[] = {
    "[\\r\\n]",
    RE_DEEPSEEK_LETTERS,
    /* U+3000 is whitespace to llama.cpp, never this class */
    S_ "?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3001}-\\x{3002}]+",
    S_ "++\\z",
    RE_CJK,
    "[" PN "]+",
    NULL};
static const char *const re_deepseek_coder[] = {"[\\r\\n]", S_ "?[" PL "]+", S_ "?[" PP "]+", RE_CJK,
                                                 "[" PN "]", NULL};
static const char *const re_deepseek3[] = {
    "[" PN "]{1,3}",
    "[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+"
    "|(?:~|[^\\r\\n" PL PP PS "])?[" PL PM "]+"
    "| ?(?:(?!~)[" PP PS "])++[\\r\\n]*" /* possessive: same matches, no JIT stack per char */
    "|" S_ "*[\\r\\n]+|" SPACES_NOT_BEFORE_TEXT "|" S_ "+",
    NULL};
static const char *const re_falcon[] = {"[" PP "\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]", NULL};
static const char *const re_starcoder[] = {"[" PN "]", RE_GPT2, NULL};
static const char *const re_gpt2[] = {RE_GPT2, NULL};
static const char *const re_bloom[] = {RE_BLOOM, NULL};
static const char *const re_viking[] = {RE_BLOOM, "[" PN "]", NULL};
static const char *const re_tekken[] = {
    "[^\\r\\n" PL PN "]?(?:(?=[" PL "])[^a-z])*(?:(?=[" PL "])[^A-Z])+"
    "|[^\\r\\n" PL PN "]?(?:(?=[" PL "])[^a-z])+(?:(?=[" PL "])[^A-Z])*"
    "|[" PN "]| ?[^" WS PL PN "]+[\\r\\n/]*|" S_ "*[\\r\\n]+|" SPACES_NOT_BEFORE_TEXT "|" S_ "+",
    NULL};
static const char *const re_chameleon[] = {"<sentinel:[0-9]+>",
                                           "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
                                           "([\\t\\n]|    |  )",
                                           "[" PN "]",
                                           "[" PP "!-/:-@\\[-`{-~]",
                                           RE_GPT2,
                                           NULL};

static const char *const *pre_regexes(kv_pre_type t) {
    switch (t) {
    case KV_PRE_DEFAULT: return re_default;
    case KV_PRE_LLAMA3: return re_llama3;
    case KV_PRE_DEEPSEEK_LLM: return re_deepseek_llm;
    case KV_PRE_DEEPSEEK_CODER: return re_deepseek_coder;
    case KV_PRE_DEEPSEEK3_LLM: return re_deepseek3;
    case KV_PRE_FALCON: return re_falcon;
    case KV_PRE_STARCODER: return re_starcoder;
    case KV_PRE_GPT2: return re_gpt2;
    case KV_PRE_QWEN2: return re_qwen2;
    case KV_PRE_BLOOM: return re_bloom;
    case KV_PRE_VIKING: return re_viking;
    case KV_PRE_TEKKEN: return re_tekken;
    case KV_PRE_CHAMELEON: return re_chameleon;
    }
    return re_default;
}

enum { F_IGNORE_MERGES = 1, F_ADD_BOS = 2, F_NO_CLEAN = 4, F_NO_BOS = 8 };

static const struct {
    const char *name;
    kv_pre_type type;
    unsigned flags;
} pre_names[] = {
    {"default", KV_PRE_DEFAULT, 0},
    {"llama3", KV_PRE_LLAMA3, F_IGNORE_MERGES | F_ADD_BOS},
    {"llama-v3", KV_PRE_LLAMA3, F_IGNORE_MERGES | F_ADD_BOS},
    {"llama-bpe", KV_PRE_LLAMA3, F_IGNORE_MERGES | F_ADD_BOS},
    {"falcon3", KV_PRE_LLAMA3, F_IGNORE_MERGES | F_ADD_BOS},
    {"deepseek-llm", KV_PRE_DEEPSEEK_LLM, F_NO_CLEAN},
    {"deepseek-coder", KV_PRE_DEEPSEEK_CODER, F_NO_CLEAN},
    {"deepseek-v3", KV_PRE_DEEPSEEK3_LLM, F_NO_CLEAN},
    {"falcon", KV_PRE_FALCON, 0},
    {"mpt", KV_PRE_GPT2, 0},
    {"starcoder", KV_PRE_STARCODER, 0},
    {"gpt-2", KV_PRE_GPT2, 0},
    {"phi-2", KV_PRE_GPT2, 0},
    {"jina-es", KV_PRE_GPT2, 0},
    {"jina-de", KV_PRE_GPT2, 0},
    {"gigachat", KV_PRE_GPT2, 0},
    {"jina-v1-en", KV_PRE_GPT2, 0},
    {"jina-v2-es", KV_PRE_GPT2, 0},
    {"jina-v2-de", KV_PRE_GPT2, 0},
    {"jina-v2-code", KV_PRE_GPT2, 0},
    {"roberta-bpe", KV_PRE_GPT2, 0},
    {"refact", KV_PRE_STARCODER, 0},
    {"command-r", KV_PRE_STARCODER, F_NO_CLEAN},
    {"qwen2", KV_PRE_QWEN2, F_NO_CLEAN},
    {"deepseek-r1-qwen", KV_PRE_QWEN2, F_NO_CLEAN},
    {"stablelm2", KV_PRE_QWEN2, 0},
    {"olmo", KV_PRE_GPT2, 0},
    {"dbrx", KV_PRE_LLAMA3, 0},
    {"smaug-bpe", KV_PRE_LLAMA3, 0},
    {"poro-chat", KV_PRE_BLOOM, F_NO_CLEAN},
    {"chatglm-bpe", KV_PRE_LLAMA3, F_NO_BOS},
    {"viking", KV_PRE_VIKING, F_NO_CLEAN},
    {"jais", KV_PRE_GPT2, 0},
    {"tekken", KV_PRE_TEKKEN, F_NO_CLEAN | F_IGNORE_MERGES | F_ADD_BOS},
    {"smollm", KV_PRE_STARCODER, F_NO_CLEAN},
    {"codeshell", KV_PRE_STARCODER, 0},
    {"bloom", KV_PRE_BLOOM, 0},
    {"gpt3-finnish", KV_PRE_BLOOM, 0},
    {"exaone", KV_PRE_STARCODER, 0},
    {"chameleon", KV_PRE_CHAMELEON, F_ADD_BOS | F_NO_CLEAN},
    {"minerva-7b", KV_PRE_STARCODER, 0},
    {"megrez", KV_PRE_QWEN2, 0},
};

bool kv_pre_lookup(const char *name, size_t len, kv_pre_type *type, bool *ignore_merges, bool *add_bos,
                   bool *clean_spaces, bool *no_bos) {
    for (size_t i = 0; i < sizeof pre_names / sizeof pre_names[0]; i++) {
        if (strlen(pre_names[i].name) != len || memcmp(pre_names[i].name, name, len) != 0) continue;
        unsigned f = pre_names[i].flags;
        *type = pre_names[i].type;
        if (f & F_IGNORE_MERGES) *ignore_merges = true;
        if (f & F_ADD_BOS) *add_bos = true;
        if (f & F_NO_CLEAN) *clean_spaces = false;
        if (f & F_NO_BOS) *no_bos = true;
        return true;
    }
    return false;
}

kvlm_status kv_pre_compile(kv_vocab *v, kvlm_error *err) {
    const char *const *res = pre_regexes(v->pre_type);
    for (int i = 0; res[i]; i++) {
        if (i >= KV_PRE_MAX_REGEX) return kv_fail(err, KVLM_ERR_INTERNAL, "vocab: too many pre-tokenizer regexes");
        int ec;
        PCRE2_SIZE eo;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)res[i], PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ec, &eo,
                                       NULL);
        if (!re) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(ec, msg, sizeof msg);
            return kv_fail(err, KVLM_ERR_INTERNAL, "vocab: pre-tokenizer regex %d does not compile at %zu: %s", i,
                           (size_t)eo, (const char *)msg);
        }
        /* JIT when the platform has it; the interpreter otherwise */
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
        v->re[v->n_re++] = re;
    }
    return KVLM_OK;
}

/* Valid UTF-8 in PCRE2's sense: shortest forms, no surrogates, <= U+10FFFF. */
static bool utf8_strict(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        uint32_t cp, min;
        if (c >= 0xC2 && c <= 0xDF) {
            k = 1;
            cp = c & 0x1F;
            min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 2;
            cp = c & 0x0F;
            min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3;
            cp = c & 0x07;
            min = 0x10000;
        } else {
            return false;
        }
        if (n - i <= k) return false;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += k + 1;
    }
    return true;
}

static bool spans_push(kv_spans *s, size_t off, size_t len) {
    if (s->oom) return false;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        kv_span *d = cap > SIZE_MAX / sizeof(kv_span) ? NULL : realloc(s->data, cap * sizeof(kv_span));
        if (!d) {
            s->oom = true;
            return false;
        }
        s->data = d;
        s->cap = cap;
    }
    s->data[s->n].off = off;
    s->data[s->n].len = len;
    s->n++;
    return true;
}

/* Per-call matching state. The JIT runs first with PCRE2's small default
 * stack; when a very long piece exhausts it, the match is redone with a big
 * JIT stack, and if that is not enough (or there is no JIT), by the
 * interpreter with generous limits. */
typedef struct matcher {
    pcre2_match_data *md;
    pcre2_match_context *big;  /* with big_stack; created on first need */
    pcre2_jit_stack *big_stack;
    pcre2_match_context *slow; /* interpreter limits; created on first need */
} matcher;

static bool limit_error(int rc) {
    return rc == PCRE2_ERROR_JIT_STACKLIMIT || rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT ||
           rc == PCRE2_ERROR_HEAPLIMIT;
}

static int match_at(matcher *mt, const pcre2_code *re, PCRE2_SPTR subj, size_t len, size_t pos, uint32_t opts) {
    opts |= PCRE2_NO_UTF_CHECK;
    int rc = pcre2_match(re, subj, len, pos, opts, mt->md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
        if (!mt->big) {
            mt->big = pcre2_match_context_create(NULL);
            mt->big_stack = pcre2_jit_stack_create(64 * 1024, 512 * 1024 * 1024, NULL);
            if (!mt->big || !mt->big_stack) return PCRE2_ERROR_NOMEMORY;
            pcre2_jit_stack_assign(mt->big, NULL, mt->big_stack);
        }
        rc = pcre2_match(re, subj, len, pos, opts, mt->md, mt->big);
    }
    if (!limit_error(rc)) return rc;
    if (!mt->slow) {
        mt->slow = pcre2_match_context_create(NULL);
        if (!mt->slow) return PCRE2_ERROR_NOMEMORY;
        pcre2_set_match_limit(mt->slow, 1000000000u);
        pcre2_set_depth_limit(mt->slow, 1000000000u);
        pcre2_set_heap_limit(mt->slow, 4u * 1024u * 1024u); /* KiB: 4 GiB */
    }
    return pcre2_match(re, subj, len, pos, opts | PCRE2_NO_JIT, mt->md, mt->slow);
}

/* Splits piece [off, off+len) of m with re, appending the matches and the
 * text between them to out. */
static bool split_piece(const pcre2_code *re, matcher *mt, const char *m, size_t off, size_t len, kv_spans *out) {
    PCRE2_SPTR subj = (PCRE2_SPTR)(m + off);
    size_t pos = 0, last = 0;
    uint32_t opts = 0;
    while (pos <= len) {
        int rc = match_at(mt, re, subj, len, pos, opts);
        if (rc == PCRE2_ERROR_NOMATCH) {
            if (opts == 0) break;
            /* no non-empty match where the empty one was: step one char */
            opts = 0;
            if (pos >= len) break;
            pos += kv_utf8_len(subj[pos]);
            if (pos > len) pos = len;
            continue;
        }
        if (rc < 0) return false;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(mt->md);
        size_t ms = ov[0], me = ov[1];
        if (ms > last && !spans_push(out, off + last, ms - last)) return false;
        if (me > ms && !spans_push(out, off + ms, me - ms)) return false;
        last = me;
        pos = me;
        opts = me == ms ? (PCRE2_NOTEMPTY_ATSTART | PCRE2_ANCHORED) : 0;
        if (me == ms && pos >= len) break;
    }
    if (last < len && !spans_push(out, off + last, len - last)) return false;
    return true;
}

bool kv_pre_split(const kv_vocab *v, const char *text, size_t len, kv_buf *scratch, kv_buf *scratch2,
                  const char **norm_out, kv_spans *words) {
    const char *norm = text, *m = text;
    size_t n = len;
    if (!utf8_strict((const unsigned char *)text, len)) {
        /* llama.cpp's lenient decode + re-encode; m is the same with every
         * surrogate replaced by U+E000 so that PCRE2 accepts it */
        scratch->n = scratch2->n = 0;
        if (len > SIZE_MAX / 3 || !kv_buf_reserve(scratch, len * 3) || !kv_buf_reserve(scratch2, len * 3))
            return false;
        for (size_t off = 0; off < len;) {
            uint32_t cp = kv_utf8_decode(text, len, &off);
            if (cp > 0x10FFFF) cp = 0xFFFD; /* llama.cpp throws here */
            char tmp[4];
            size_t k = kv_utf8_encode(cp, tmp);
            memcpy(scratch->data + scratch->n, tmp, k);
            if (cp >= 0xD800 && cp <= 0xDFFF) k = kv_utf8_encode(0xE000, tmp);
            memcpy(scratch2->data + scratch2->n, tmp, k);
            scratch->n += k;
            scratch2->n += k;
        }
        norm = scratch->data;
        m = scratch2->data;
        n = scratch->n;
    }
    *norm_out = norm;

    words->n = 0;
    if (n == 0) return true;
    kv_spans other = {0};
    if (!spans_push(words, 0, n)) return false;
    matcher mt = {pcre2_match_data_create(1, NULL), NULL, NULL, NULL};
    if (!mt.md) return false;
    bool ok = true;
    for (int r = 0; r < v->n_re && ok; r++) {
        other.n = 0;
        for (size_t i = 0; i < words->n && ok; i++)
            ok = split_piece(v->re[r], &mt, m, words->data[i].off, words->data[i].len, &other);
        kv_spans tmp = *words;
        *words = other;
        other = tmp;
    }
    pcre2_match_data_free(mt.md);
    pcre2_match_context_free(mt.slow);
    pcre2_match_context_free(mt.big);
    pcre2_jit_stack_free(mt.big_stack);
    free(other.data);
    return ok && !words->oom;
}
