/* Tokenizer tests: llama.cpp's tokenizer test vectors (models/ggml-vocab-*.gguf
 * with .inp/.out, run the way tests/test-tokenizer-0.cpp runs them: no BOS,
 * add_special = false, parse_special = false), round trips, special tokens,
 * byte fallback, malformed metadata and hand-made vocabs. */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "gguf/gguf.h"
#include "tokenizer/vocab.h"
#include "test_util.h"

#define VOCAB_DIR KVLM_MODELS_DIR "/vocab"

/* ------------------------------------------------------------ helpers */

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
        }
        size_t k = fread(buf + n, 1, cap - n, f);
        if (k == 0) break;
        n += k;
    }
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

typedef struct vocab_file {
    gguf_ctx *g;
    kv_vocab *v;
} vocab_file;

static kvlm_status open_vocab(const char *path, vocab_file *vf, kvlm_error *err) {
    vf->g = NULL;
    vf->v = NULL;
    kvlm_status st = kv_gguf_open(path, &vf->g, err);
    if (st) return st;
    st = kv_vocab_load(vf->g, &vf->v, err);
    /* the vocab must not need the GGUF after loading */
    kv_gguf_close(vf->g);
    vf->g = NULL;
    return st;
}

/* Tokenizes into a malloc'ed array (the size query first, like common_tokenize). */
static int32_t *tokenize(const kv_vocab *v, const char *s, size_t len, bool add_special, bool parse_special,
                         int32_t *n_out) {
    int32_t n = kv_vocab_tokenize(v, s, len, NULL, 0, add_special, parse_special);
    assert_true(n != INT32_MIN);
    if (n < 0) n = -n;
    int32_t *ids = malloc(((size_t)n + 1) * sizeof(int32_t));
    int32_t m = kv_vocab_tokenize(v, s, len, ids, n, add_special, parse_special);
    assert_int_equal(m, n);
    *n_out = n;
    return ids;
}

/* Concatenated pieces; SPM drops one leading space of the first piece, as
 * llama.cpp's detokenize does for vocabs with add_space_prefix. */
static char *detokenize(const kv_vocab *v, const int32_t *ids, int32_t n, bool special, size_t *len) {
    size_t cap = 64, used = 0;
    char *out = malloc(cap);
    for (int32_t i = 0; i < n; i++) {
        char tmp[8];
        int32_t k = kv_vocab_token_to_piece(v, ids[i], tmp, (int32_t)sizeof tmp, special);
        if (k < 0) {
            char *big = malloc((size_t)-k);
            int32_t k2 = kv_vocab_token_to_piece(v, ids[i], big, -k, special);
            assert_int_equal(k2, -k);
            while (used + (size_t)k2 + 1 > cap) cap *= 2;
            out = realloc(out, cap);
            memcpy(out + used, big, (size_t)k2);
            used += (size_t)k2;
            free(big);
            continue;
        }
        while (used + (size_t)k + 1 > cap) cap *= 2;
        out = realloc(out, cap);
        memcpy(out + used, tmp, (size_t)k);
        used += (size_t)k;
    }
    out[used] = '\0';
    size_t skip = 0;
    if (kv_vocab_type(v) == KV_VOCAB_SPM && used > 0 && out[0] == ' ') skip = 1;
    memmove(out, out + skip, used - skip + 1);
    *len = used - skip;
    return out;
}

static void print_ids(const char *label, const int32_t *ids, size_t n) {
    printf("    %s:", label);
    for (size_t i = 0; i < n; i++) printf(" %d", ids[i]);
    printf("\n");
}

static void print_escaped(const char *label, const char *s, size_t n) {
    printf("    %s: '", label);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            printf("\\n");
        else if (c == '\t')
            printf("\\t");
        else if (c < 0x20)
            printf("\\x%02x", c);
        else
            putchar(c);
    }
    printf("'\n");
}

/* ------------------------------------------------------------ vectors */

typedef struct vec_result {
    int n_tests;
    int n_pass;
    int n_fail;
    int n_rt_fail;
    bool loaded;
    kvlm_status load_status;
    char msg[512];
} vec_result;

/* Runs X.gguf against X.gguf.inp / X.gguf.out. */
static void run_vectors(const char *gguf_path, vec_result *r) {
    memset(r, 0, sizeof *r);
    char inp_path[1024], out_path[1024];
    snprintf(inp_path, sizeof inp_path, "%s.inp", gguf_path);
    snprintf(out_path, sizeof out_path, "%s.out", gguf_path);
    vocab_file vf;
    kvlm_error err = {0};
    r->load_status = open_vocab(gguf_path, &vf, &err);
    if (r->load_status) {
        snprintf(r->msg, sizeof r->msg, "%s", err.msg);
        return;
    }
    r->loaded = true;
    const kv_vocab *v = vf.v;

    size_t inp_len, out_len;
    char *inp = read_file(inp_path, &inp_len);
    char *outs = read_file(out_path, &out_len);
    assert_non_null(inp);
    assert_non_null(outs);

    /* .out: one line per test */
    size_t n_lines = 0, cap_lines = 64;
    char **lines = malloc(cap_lines * sizeof *lines);
    for (char *p = outs; p < outs + out_len;) {
        char *nl = memchr(p, '\n', (size_t)(outs + out_len - p));
        char *end = nl ? nl : outs + out_len;
        *end = '\0';
        if (n_lines == cap_lines) lines = realloc(lines, (cap_lines *= 2) * sizeof *lines);
        lines[n_lines++] = p;
        p = end + 1;
    }

    /* .inp: tests separated by "\n__ggml_vocab_test__\n" */
    const char *sep = "\n__ggml_vocab_test__\n";
    size_t sep_len = strlen(sep);
    size_t pos = 0, idx = 0;
    while (pos < inp_len) {
        const char *next = memmem(inp + pos, inp_len - pos, sep, sep_len);
        size_t tl = next ? (size_t)(next - (inp + pos)) : inp_len - pos;
        const char *text = inp + pos;
        pos = next ? pos + tl + sep_len : inp_len;
        assert_true(idx < n_lines);

        int32_t expect[1024];
        size_t n_expect = 0;
        for (char *p = lines[idx]; *p;) {
            while (*p == ' ' || *p == '\r' || *p == '\t') p++;
            if (!*p) break;
            expect[n_expect++] = (int32_t)strtol(p, &p, 10);
            assert_true(n_expect < 1024);
        }
        idx++;
        r->n_tests++;

        int32_t n;
        int32_t *ids = tokenize(v, text, tl, false, false, &n);
        bool ok = (size_t)n == n_expect && memcmp(ids, expect, n_expect * sizeof(int32_t)) == 0;
        if (ok) {
            r->n_pass++;
        } else {
            r->n_fail++;
            printf("  FAIL %s test %zu\n", gguf_path, idx);
            print_escaped("text", text, tl);
            print_ids("expected", expect, n_expect);
            print_ids("got     ", ids, (size_t)n);
        }
        /* round trip: the pieces give back the text */
        size_t dl;
        char *d = detokenize(v, ids, n, true, &dl);
        if (dl != tl || memcmp(d, text, tl) != 0) {
            r->n_rt_fail++;
            printf("  ROUND TRIP FAIL %s test %zu\n", gguf_path, idx);
            print_escaped("text", text, tl);
            print_escaped("back", d, dl);
        }
        free(d);
        free(ids);
    }
    assert_int_equal(idx, n_lines - (n_lines > 0 && lines[n_lines - 1][0] == '\0' ? 1 : 0));
    free(lines);
    free(inp);
    free(outs);
    kv_vocab_free(vf.v);
}

static void required_vectors(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", VOCAB_DIR, name);
    if (!file_exists(path)) fail_msg("required vocab %s is missing", path);
    vec_result r;
    run_vectors(path, &r);
    if (!r.loaded) fail_msg("%s: load failed (%s): %s", name, kvlm_status_name(r.load_status), r.msg);
    printf("%s: %d/%d vectors pass, %d round-trip failures\n", name, r.n_pass, r.n_tests, r.n_rt_fail);
    assert_true(r.n_tests > 0);
    assert_int_equal(r.n_fail, 0);
    assert_int_equal(r.n_rt_fail, 0);
}

static void test_vectors_llama_spm(void **state) {
    (void)state;
    required_vectors("ggml-vocab-llama-spm.gguf");
}

static void test_vectors_phi3(void **state) {
    (void)state;
    required_vectors("ggml-vocab-phi-3.gguf");
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Every .inp/.out pair in the vocab folder. */
static void test_vectors_all(void **state) {
    (void)state;
    DIR *d = opendir(VOCAB_DIR);
    if (!d) fail_msg("cannot open %s", VOCAB_DIR);
    char *names[256];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 256) {
        size_t l = strlen(e->d_name);
        if (l > 9 && strcmp(e->d_name + l - 9, ".gguf.inp") == 0) names[n++] = strndup(e->d_name, l - 4);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    int n_fail_files = 0, n_pass_files = 0;
    for (size_t i = 0; i < n; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", VOCAB_DIR, names[i]);
        if (!file_exists(path)) {
            printf("%-36s unavailable (no .gguf)\n", names[i]);
            free(names[i]);
            continue;
        }
        vec_result r;
        run_vectors(path, &r);
        if (!r.loaded) {
            if (r.load_status == KVLM_ERR_UNSUPPORTED) {
                printf("%-36s unsupported: %s\n", names[i], r.msg);
            } else {
                printf("%-36s LOAD FAILED (%s): %s\n", names[i], kvlm_status_name(r.load_status), r.msg);
                n_fail_files++;
            }
        } else {
            bool ok = r.n_fail == 0 && r.n_rt_fail == 0;
            printf("%-36s %s: %d/%d vectors, %d round-trip failures\n", names[i], ok ? "pass" : "FAIL", r.n_pass,
                   r.n_tests, r.n_rt_fail);
            if (ok)
                n_pass_files++;
            else
                n_fail_files++;
        }
        free(names[i]);
    }
    printf("vocab vectors: %d files pass, %d fail\n", n_pass_files, n_fail_files);
    assert_int_equal(n_fail_files, 0);
    assert_true(n_pass_files >= 2);
}

/* ------------------------------------------------------------ SPM behaviour */

static kv_vocab *load_named(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", VOCAB_DIR, name);
    vocab_file vf;
    kvlm_error err = {0};
    kvlm_status st = open_vocab(path, &vf, &err);
    if (st) fail_msg("%s: %s", name, err.msg);
    return vf.v;
}

static void expect_ids(const kv_vocab *v, const char *s, bool add_special, bool parse_special, const int32_t *want,
                       int32_t n_want) {
    int32_t n;
    int32_t *ids = tokenize(v, s, strlen(s), add_special, parse_special, &n);
    if (n != n_want || (n > 0 && memcmp(ids, want, (size_t)n * sizeof(int32_t)) != 0)) {
        print_escaped("text", s, strlen(s));
        print_ids("expected", want, (size_t)n_want);
        print_ids("got     ", ids, (size_t)n);
        free(ids);
        fail_msg("tokenization differs");
    }
    free(ids);
}

static bool contains_id(const int32_t *ids, int32_t n, int32_t id) {
    for (int32_t i = 0; i < n; i++)
        if (ids[i] == id) return true;
    return false;
}

static void test_spm_basics(void **state) {
    (void)state;
    kv_vocab *v = load_named("ggml-vocab-llama-spm.gguf");
    assert_int_equal(kv_vocab_type(v), KV_VOCAB_SPM);
    assert_int_equal(kv_vocab_n_tokens(v), 32000);
    assert_int_equal(kv_vocab_bos(v), 1);
    assert_int_equal(kv_vocab_eos(v), 2);
    assert_true(kv_vocab_add_bos(v));
    assert_false(kv_vocab_add_eos(v));
    assert_true(kv_vocab_is_eog(v, 2));
    assert_false(kv_vocab_is_eog(v, 1));
    assert_false(kv_vocab_is_eog(v, -1));
    assert_false(kv_vocab_is_eog(v, 32000));
    size_t len;
    const char *t = kv_vocab_token_text(v, 1, &len);
    assert_int_equal(len, 3);
    assert_memory_equal(t, "<s>", 3);

    /* BOS with add_special; the first text gets the U+2581 prefix */
    const int32_t hello_bos[] = {1, 15043, 3186};
    expect_ids(v, "Hello world", true, false, hello_bos, 3);
    const int32_t hello[] = {15043, 3186};
    expect_ids(v, "Hello world", false, false, hello, 2);
    expect_ids(v, "", false, false, NULL, 0);
    const int32_t only_bos[] = {1};
    expect_ids(v, "", true, false, only_bos, 1);

    /* special tokens: "<s>" is BOS only with parse_special */
    const int32_t s_special[] = {1};
    expect_ids(v, "<s>", false, true, s_special, 1);
    int32_t n;
    int32_t *ids = tokenize(v, "<s>", 3, false, false, &n);
    assert_true(n > 1);
    assert_false(contains_id(ids, n, 1));
    free(ids);
    /* the text after a special token gets the space prefix again */
    const int32_t mixed[] = {1, 15043, 2, 15043};
    expect_ids(v, "<s>Hello</s>Hello", false, true, mixed, 4);
    ids = tokenize(v, "<s>Hello</s>Hello", 17, false, false, &n);
    assert_false(contains_id(ids, n, 1));
    assert_false(contains_id(ids, n, 2));
    free(ids);

    /* byte fallback: U+1F999 is no token -> <0xF0> <0x9F> <0xA6> <0x99> (ids byte + 3) */
    const int32_t llama_emoji[] = {29871, 0xF0 + 3, 0x9F + 3, 0xA6 + 3, 0x99 + 3};
    expect_ids(v, "\xf0\x9f\xa6\x99", false, false, llama_emoji, 5);
    /* invalid UTF-8 bytes fall back to byte tokens too */
    const int32_t bad[] = {29871, 0xFF + 3};
    expect_ids(v, "\xff", false, false, bad, 2);
    char piece[8];
    assert_int_equal(kv_vocab_token_to_piece(v, 0xFF + 3, piece, 8, false), 1);
    assert_int_equal((unsigned char)piece[0], 0xFF);
    assert_int_equal(kv_vocab_token_to_piece(v, 0x0A + 3, piece, 8, false), 1);
    assert_int_equal(piece[0], '\n');

    /* pieces: U+2581 -> space, control tokens only with special */
    assert_int_equal(kv_vocab_token_to_piece(v, 15043, piece, 8, false), 6);
    assert_memory_equal(piece, " Hello", 6);
    assert_int_equal(kv_vocab_token_to_piece(v, 1, piece, 8, false), 0);
    assert_int_equal(kv_vocab_token_to_piece(v, 1, piece, 8, true), 3);
    assert_memory_equal(piece, "<s>", 3);
    assert_int_equal(kv_vocab_token_to_piece(v, 0, piece, 8, false), 0);
    assert_int_equal(kv_vocab_token_to_piece(v, 0, piece, 8, true), 5);
    /* too small: minus the size needed; bad ids: nothing */
    assert_int_equal(kv_vocab_token_to_piece(v, 15043, piece, 3, false), -6);
    assert_int_equal(kv_vocab_token_to_piece(v, 15043, NULL, 0, false), -6);
    assert_int_equal(kv_vocab_token_to_piece(v, -1, piece, 8, true), 0);
    assert_int_equal(kv_vocab_token_to_piece(v, 32000, piece, 8, true), 0);

    /* tokenize contract: too small -> minus the count */
    int32_t few[1];
    assert_int_equal(kv_vocab_tokenize(v, "Hello world", 11, few, 1, false, false), -2);
    assert_int_equal(kv_vocab_tokenize(v, "Hello world", 11, NULL, 0, true, false), -3);
    assert_int_equal(kv_vocab_tokenize(v, NULL, 5, few, 1, false, false), INT32_MIN);
    assert_int_equal(kv_vocab_tokenize(v, "x", 1, few, -1, false, false), INT32_MIN);
    kv_vocab_free(v);
}

static void test_phi3_specials(void **state) {
    (void)state;
    kv_vocab *v = load_named("ggml-vocab-phi-3.gguf");
    assert_int_equal(kv_vocab_eos(v), 32000);
    assert_true(kv_vocab_is_eog(v, 32000)); /* <|endoftext|> */
    assert_true(kv_vocab_is_eog(v, 32007)); /* <|end|> */
    assert_false(kv_vocab_is_eog(v, 32010));
    /* <|user|> is control: parsed only with parse_special; spaces after it
     * are stripped (phi-3 rstrip) */
    int32_t n;
    int32_t *ids = tokenize(v, "<|user|>\nHi", 11, false, true, &n);
    assert_true(n >= 2);
    assert_int_equal(ids[0], 32010);
    int32_t n2;
    int32_t *ids2 = tokenize(v, "<|user|>Hi", 10, false, true, &n2);
    assert_int_equal(n, n2);
    assert_memory_equal(ids, ids2, (size_t)n * sizeof(int32_t));
    free(ids);
    free(ids2);
    ids = tokenize(v, "<|user|>", 8, false, false, &n);
    assert_false(contains_id(ids, n, 32010));
    free(ids);
    /* </s> is user-defined in this vocab: split out even without parse_special */
    ids = tokenize(v, "a</s>b", 6, false, false, &n);
    assert_true(contains_id(ids, n, 2));
    free(ids);
    kv_vocab_free(v);
}

/* ------------------------------------------------------------ BPE behaviour */

static void test_bpe_basics(void **state) {
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/ggml-vocab-gpt-2.gguf", VOCAB_DIR);
    if (!file_exists(path)) {
        printf("gpt-2 vocab unavailable\n");
        skip();
    }
    kv_vocab *v = load_named("ggml-vocab-gpt-2.gguf");
    assert_int_equal(kv_vocab_type(v), KV_VOCAB_BPE);
    assert_int_equal(kv_vocab_bos(v), 50256);
    assert_false(kv_vocab_add_bos(v));
    assert_true(kv_vocab_is_eog(v, 50256));
    const int32_t hello[] = {15496, 995};
    expect_ids(v, "Hello world", false, false, hello, 2);
    expect_ids(v, "Hello world", true, false, hello, 2); /* gpt-2 adds no BOS */
    const int32_t eot[] = {50256};
    expect_ids(v, "<|endoftext|>", false, true, eot, 1);
    int32_t n;
    int32_t *ids = tokenize(v, "<|endoftext|>", 13, false, false, &n);
    assert_true(n > 1);
    assert_false(contains_id(ids, n, 50256));
    free(ids);
    /* every byte string comes back exactly, invalid UTF-8 aside */
    const char *s = "caf\xc3\xa9 \xe2\x82\xac 100\t\n  x \xf0\x9f\xa6\x99!";
    ids = tokenize(v, s, strlen(s), false, false, &n);
    size_t dl;
    char *back = detokenize(v, ids, n, false, &dl);
    assert_int_equal(dl, strlen(s));
    assert_memory_equal(back, s, dl);
    free(back);
    free(ids);
    /* invalid UTF-8 becomes U+FFFD, as in llama.cpp */
    ids = tokenize(v, "a\xff", 2, false, false, &n);
    back = detokenize(v, ids, n, false, &dl);
    assert_int_equal(dl, 4);
    assert_memory_equal(back, "a\xef\xbf\xbd", 4);
    free(back);
    free(ids);
    char piece[16];
    assert_int_equal(kv_vocab_token_to_piece(v, 50256, piece, 16, false), 0);
    assert_int_equal(kv_vocab_token_to_piece(v, 50256, piece, 16, true), 13);
    kv_vocab_free(v);
}

/* ------------------------------------------------------------ GGUF builder */

typedef struct gb {
    unsigned char *d;
    size_t n, cap;
    uint64_t n_kv;
} gb;

static void gb_raw(gb *b, const void *p, size_t n) {
    while (b->n + n > b->cap) {
        b->cap = b->cap ? b->cap * 2 : 256;
        b->d = realloc(b->d, b->cap);
    }
    memcpy(b->d + b->n, p, n);
    b->n += n;
}
static void gb_u32(gb *b, uint32_t x) { gb_raw(b, &x, 4); }
static void gb_u64(gb *b, uint64_t x) { gb_raw(b, &x, 8); }
static void gb_s(gb *b, const char *s) {
    gb_u64(b, strlen(s));
    gb_raw(b, s, strlen(s));
}
static void gb_init(gb *b) {
    memset(b, 0, sizeof *b);
    gb_raw(b, "GGUF", 4);
    gb_u32(b, 3);
    gb_u64(b, 0); /* tensors */
    gb_u64(b, 0); /* kv count, patched in gb_finish */
}
static void gb_kv_str(gb *b, const char *key, const char *val) {
    gb_s(b, key);
    gb_u32(b, 8);
    gb_s(b, val);
    b->n_kv++;
}
static void gb_kv_u32(gb *b, const char *key, uint32_t val) {
    gb_s(b, key);
    gb_u32(b, 4);
    gb_u32(b, val);
    b->n_kv++;
}
static void gb_kv_bool(gb *b, const char *key, bool val) {
    gb_s(b, key);
    gb_u32(b, 7);
    unsigned char c = val;
    gb_raw(b, &c, 1);
    b->n_kv++;
}
static void gb_kv_strs(gb *b, const char *key, const char *const *vals, size_t n) {
    gb_s(b, key);
    gb_u32(b, 9);
    gb_u32(b, 8);
    gb_u64(b, n);
    for (size_t i = 0; i < n; i++) gb_s(b, vals[i]);
    b->n_kv++;
}
static void gb_kv_f32s(gb *b, const char *key, const float *vals, size_t n) {
    gb_s(b, key);
    gb_u32(b, 9);
    gb_u32(b, 6);
    gb_u64(b, n);
    gb_raw(b, vals, n * 4);
    b->n_kv++;
}
static void gb_kv_i32s(gb *b, const char *key, const int32_t *vals, size_t n) {
    gb_s(b, key);
    gb_u32(b, 9);
    gb_u32(b, 5);
    gb_u64(b, n);
    gb_raw(b, vals, n * 4);
    b->n_kv++;
}
static void gb_kv_gstrs(gb *b, const char *key, const gguf_str *vals, uint64_t n) {
    gb_s(b, key);
    gb_u32(b, 9);
    gb_u32(b, 8);
    gb_u64(b, n);
    for (uint64_t i = 0; i < n; i++) {
        gb_u64(b, vals[i].len);
        gb_raw(b, vals[i].data, (size_t)vals[i].len);
    }
    b->n_kv++;
}
static void gb_finish(gb *b) {
    memcpy(b->d + 16, &b->n_kv, 8);
    static const unsigned char zero[32] = {0};
    gb_raw(b, zero, (32 - b->n % 32) % 32);
}

/* Loads a vocab from the builder; returns the status, frees everything. */
static kvlm_status load_built(gb *b, kv_vocab **out, kvlm_error *err) {
    gb_finish(b);
    gguf_ctx *g = NULL;
    kvlm_status st = kv_gguf_open_buffer(b->d, b->n, &g, err);
    assert_int_equal(st, KVLM_OK);
    kv_vocab *v = NULL;
    st = kv_vocab_load(g, &v, err);
    kv_gguf_close(g);
    if (out)
        *out = v;
    else
        kv_vocab_free(v);
    if (st) assert_null(v);
    return st;
}

static const char *const tiny_spm_tokens[] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81", "a", "b",
                                              "\xe2\x96\x81\x61", "ab", "\xe2\x96\x81\x61\x62", "<0x63>"};
static const float tiny_spm_scores[] = {0, 0, 0, -1, -2, -2, -3, -4, -1, 0};
static const int32_t tiny_spm_types[] = {2, 3, 3, 1, 1, 1, 1, 1, 1, 6};

static void test_malformed(void **state) {
    (void)state;
    kvlm_error err;
    gb b;

    /* missing tokenizer.ggml.model */
    gb_init(&b);
    gb_kv_strs(&b, "tokenizer.ggml.tokens", tiny_spm_tokens, 10);
    assert_int_equal(load_built(&b, NULL, &err), KVLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "tokenizer.ggml.model"));
    free(b.d);

    /* model of the wrong type */
    gb_init(&b);
    gb_kv_u32(&b, "tokenizer.ggml.model", 1);
    gb_kv_strs(&b, "tokenizer.ggml.tokens", tiny_spm_tokens, 10);
    assert_int_equal(load_built(&b, NULL, &err), KVLM_ERR_FORMAT);
    free(b.d);

    /* missing tokens */
    gb_init(&b);
    gb_kv_str(&b, "tokenizer.ggml.model", "llama");
    assert_int_equal(load_built(&b, NULL, &err), KVLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "tokenizer.ggml.tokens"));
    free(b.d);

    /* scores count != tokens count */
    gb_init(&b);
    gb_kv_str(&b, "tokenizer.ggml.model", "llama");
    gb_kv_strs(&b, "tokenizer.ggml.tokens", tiny_spm_tokens, 10);
    gb_kv_f32s(&b, "tokenizer.ggml.scores", tiny_spm_scores, 9);
    assert_int_equal(load_built(&b, NULL, &err), KVLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "scores"));
    free(b.d);

    /* token types count != tokens count */
    gb_init(&b);
    gb_kv_str(&b, "tokenizer.ggml.model", "llama");
    gb_kv_strs(&b, "tokenizer.ggml.tokens", tiny_spm_tokens, 10);
    gb_kv_i32s(&b, "tokenizer.ggml.token_type", tiny_spm_types, 3);
    assert_int_equal(load_built(&b, NULL, &err), KVLM_ERR_FORMAT);
    free(b.d);

    /* scores that are strings */
    gb_init(&b);
    gb_kv_str(&b, "tokenizer.ggml.model", "llama");
    gb_kv_strs(&b, "tokenizer.ggml.tokens", tiny_spm_tokens, 10);
    gb_kv_strs(&b, "tokenizer.ggml.scores", tiny_spm_tokens, 10);
    assert_int_equal(load_built(&b, NULL, &err), KVLM_ERR_FORMAT);
    free(b.d);

    /* duplicate token texts */
    static const char *const dup[] = {"<unk>", "a", "a"};
    gb_init(&b);
    gb_kv_str(&b, "tokenizer.ggml.model", "llama");
    gb_kv_strs(&b, "tokenizer.ggml.tokens", dup, 3);
    assert_int_equal(load_built(&b, NULL, &err), KVLM_ERR_FORMAT);
    free(b.d);

    /* empty token list */
    gb_init(&b);
    gb_kv_str(&b, "tokenizer.ggml.model", "llama");
    gb_kv_strs(&b, "tokenizer.ggml.tokens", dup, 0);
    assert_int_equal(load_built(&b, NULL, &err), KVLM_ERR_FORMAT);
    free(b.d);

    /* add_bos_token of the wrong type */
    gb_init(&b);
    gb_kv_str(&b, "tokenizer.ggml.model", "llama");
    gb_kv_strs(&b, "tokenizer.ggml.tokens", tiny_spm_tokens, 10);
    gb_kv_u32(&b, "tokenizer.ggml.add_bos_token", 1);
    assert_int_equal(load_built(&b, NULL, &err), KVLM_ERR_FORMAT);
    free(b.d);

    /* unsupported tokenizer models */
    const char *models[] = {"bert", "t5", "rwkv", "no_vocab", "whatever"};
    for (size_t i = 0; i < 5; i++) {
        gb_init(&b);
        gb_kv_str(&b, "tokenizer.ggml.model", models[i]);
        gb_kv_strs(&b, "tokenizer.ggml.tokens", tiny_spm_tokens, 10);
        assert_int_equal(load_built(&b, NULL, &err), KVLM_ERR_UNSUPPORTED);
        free(b.d);
    }

    /* BPE: no merges -> format; unknown pre-tokenizer -> unsupported */
    static const char *const bpe_tokens[] = {"a", "b", "ab"};
    static const char *const bpe_merges[] = {"a b"};
    gb_init(&b);
    gb_kv_str(&b, "tokenizer.ggml.model", "gpt2");
    gb_kv_strs(&b, "tokenizer.ggml.tokens", bpe_tokens, 3);
    assert_int_equal(load_built(&b, NULL, &err), KVLM_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "merges"));
    free(b.d);
    gb_init(&b);
    gb_kv_str(&b, "tokenizer.ggml.model", "gpt2");
    gb_kv_str(&b, "tokenizer.ggml.pre", "no-such-pre-tokenizer");
    gb_kv_strs(&b, "tokenizer.ggml.tokens", bpe_tokens, 3);
    gb_kv_strs(&b, "tokenizer.ggml.merges", bpe_merges, 1);
    assert_int_equal(load_built(&b, NULL, &err), KVLM_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "no-such-pre-tokenizer"));
    free(b.d);

    assert_int_equal(kv_vocab_load(NULL, NULL, &err), KVLM_ERR_INVALID_ARG);
}

static void test_tiny_spm(void **state) {
    (void)state;
    gb b;
    kvlm_error err;
    kv_vocab *v;
    gb_init(&b);
    gb_kv_str(&b, "tokenizer.ggml.model", "llama");
    gb_kv_strs(&b, "tokenizer.ggml.tokens", tiny_spm_tokens, 10);
    gb_kv_f32s(&b, "tokenizer.ggml.scores", tiny_spm_scores, 10);
    gb_kv_i32s(&b, "tokenizer.ggml.token_type", tiny_spm_types, 10);
    gb_kv_u32(&b, "tokenizer.ggml.bos_token_id", 1);
    gb_kv_u32(&b, "tokenizer.ggml.eos_token_id", 99); /* out of range: default 2 stays */
    gb_kv_bool(&b, "tokenizer.ggml.add_eos_token", true);
    assert_int_equal(load_built(&b, &v, &err), KVLM_OK);
    free(b.d);
    assert_int_equal(kv_vocab_eos(v), 2);
    assert_true(kv_vocab_add_eos(v));
    /* "ab" -> U+2581 a b: the pairs "\u2581a" (-3) and "ab" (-4); "\u2581a"
     * wins, then "\u2581a"+"b" = "\u2581ab" (-1) */
    const int32_t ab[] = {1, 8, 2};
    expect_ids(v, "ab", true, false, ab, 3);
    /* "b a": "\u2581b" is no token, so U+2581 stays alone; " a" merges */
    const int32_t ba[] = {3, 5, 6};
    expect_ids(v, "b a", false, false, ba, 3);
    /* 'c' has a byte token, 'd' has none and no UNK fallback byte: -> <unk> */
    const int32_t cd[] = {3, 9, 0};
    expect_ids(v, "cd", false, false, cd, 3);
    kv_vocab_free(v);

    /* no add_space_prefix */
    gb_init(&b);
    gb_kv_str(&b, "tokenizer.ggml.model", "llama");
    gb_kv_strs(&b, "tokenizer.ggml.tokens", tiny_spm_tokens, 10);
    gb_kv_f32s(&b, "tokenizer.ggml.scores", tiny_spm_scores, 10);
    gb_kv_i32s(&b, "tokenizer.ggml.token_type", tiny_spm_types, 10);
    gb_kv_bool(&b, "tokenizer.ggml.add_space_prefix", false);
    assert_int_equal(load_built(&b, &v, &err), KVLM_OK);
    free(b.d);
    const int32_t ab2[] = {7};
    expect_ids(v, "ab", false, false, ab2, 1);
    kv_vocab_free(v);
}

static void test_tiny_bpe(void **state) {
    (void)state;
    /* byte-level: "a", "b", "c", "\u0120" (space), merges by rank */
    static const char *const toks[] = {"a", "b", "c", "\xc4\xa0", "ab", "bc", "abc", "\xc4\xa0\x61", "<|eot|>"};
    static const int32_t types[] = {1, 1, 1, 1, 1, 1, 1, 1, 3};
    static const char *const merges[] = {"b c", "a b", "ab c", "\xc4\xa0 a", "bad"};
    gb b;
    kvlm_error err;
    kv_vocab *v;
    gb_init(&b);
    gb_kv_str(&b, "tokenizer.ggml.model", "gpt2");
    gb_kv_str(&b, "tokenizer.ggml.pre", "gpt-2");
    gb_kv_strs(&b, "tokenizer.ggml.tokens", toks, 9);
    gb_kv_i32s(&b, "tokenizer.ggml.token_type", types, 9);
    gb_kv_strs(&b, "tokenizer.ggml.merges", merges, 5);
    gb_kv_u32(&b, "tokenizer.ggml.eos_token_id", 8);
    assert_int_equal(load_built(&b, &v, &err), KVLM_OK);
    free(b.d);
    /* "abc": "b c" has rank 0 -> a|bc; "a bc" is no merge */
    const int32_t abc[] = {0, 5};
    expect_ids(v, "abc", false, false, abc, 2);
    const int32_t sp_a[] = {4, 7};
    expect_ids(v, "ab a", false, false, sp_a, 2);
    /* 'x' is no token and has no byte token: dropped like llama.cpp does */
    const int32_t ax[] = {0};
    expect_ids(v, "ax", false, false, ax, 1);
    const int32_t eot[] = {0, 8};
    expect_ids(v, "a<|eot|>", false, true, eot, 2);
    assert_true(kv_vocab_is_eog(v, 8));
    kv_vocab_free(v);
}

/* ------------------------------------------------------------ pre-tokenizers */

/* Expected ids from llama.cpp (c392e5094) for the GPT-2 vocab with its
 * tokenizer.ggml.pre replaced by each name ("" = key absent), tokenized with
 * add_special = parse_special = false. This covers the pre-tokenizers that no
 * vocab file here uses. */
static const char *const pre_strs[] = {
    "Hello world! It's 2024... \xc3\x84\xc3\x96\xc3\x9c \xc3\xb1 \xe4\xb8\xad\xe6\x96\x87\xe5\xad\x97 \xed\x95\x9c\xea\xb5\xad\xec\x96\xb4 \xc2\xbd \xe2\x85\xb7 \xd9\xa3\xd9\xa4",
    "   leading\x0a\x0a\x09tabs\x0d\x0a  trailing   ",
    "don'T WE'LL I'M 'S x'y 're 've 'd",
    "\xe3\x80\x80ideographic\xe2\x80\x83\x65m space\xc2\xa0nbsp ~tilde~ $+<=>^`| \xe1\xa0\x8e\xe2\x80\x8b",
    "emoji \xf0\x9f\xa6\x99\xf0\x9f\x9a\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd \xe2\x80\x8d combining \xc3\xa9 e\xcc\x81 \xf0\x9e\x80\xb0\xf0\xb1\x8d\x90",
    "code: if (x == 1) { return a->b[12345]; } // 9999999 3.14159",
    "<sentinel:3> IMGIMGABZ (IMGIMGIZ)\x09\x0a    x  y",
    "AbCdEF ghIJ klMNop \xce\x91\xce\x92\xce\x93 \xce\xb1\xce\xb2\xce\xb3 \xef\xbc\xa1\xef\xbd\x82 \xe2\x85\xa0\xe2\x85\xa1",
    "\xe2\x80\xa6\xe3\x80\x82\xef\xbc\x8c\xe3\x80\x81\xe0\xa5\xa4\xdb\x94\xd8\x8c (a|b) .,!? \xe3\x80\x81\xe3\x80\x82 \xef\xbc\x81\xef\xbc\x9f \xe2\x80\x98q\xe2\x80\x99",
    "\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7 \xe0\xa4\xa8\xe0\xa4\xae\xe0\xa4\xb8\xe0\xa5\x8d\xe0\xa4\xa4\xe0\xa5\x87 \xe3\x81\x93\xe3\x82\x93\xe3\x81\xab\xe3\x81\xa1\xe3\x81\xaf \xe3\x82\xab\xe3\x82\xbf\xe3\x82\xab\xe3\x83\x8a 1\xef\xbc\x92\xd9\xa3",
};
static const struct { const char *pre; const char *ids[10]; } pre_expect[] = {
    {"", {
        "15496 995 0 632 6 82 220 19004 19 986 6184 226 127 244 127 250 6184 109 220 40792 23877 229 27764 245 220 47991 250 166 113 255 168 244 112 220 23141 220 158 227 115 220 149 96 149 97",
        "220 220 3756 628 197 8658 82 201 198 220 25462 220 220 220",
        "9099 6 51 12887 6 3069 314 6 44 220 6 50 2124 6 88 220 6 260 220 6 303 220 6 67",
        "5099 222 485 6826 447 225 368 2272 1849 77 24145 220 93 83 44725 93 220 3 10 27 14804 61 63 91 28053 254 236 9525",
        "368 31370 12520 99 247 8582 248 222 41840 235 8582 237 121 564 235 19771 38251 304 136 223 220 172 252 222 108 172 109 235 238",
        "8189 25 611 220 7 87 220 855 220 16 8 220 90 1441 257 3784 65 58 10163 2231 11208 220 92 220 1003 220 17032 17032 24 220 18 13 23756 3270",
        "27 34086 20538 25 18 29 8959 38 3955 38 6242 57 220 7 3955 38 3955 38 14887 8 197 198 220 220 220 2124 220 331",
        "4826 34 67 25425 24997 23852 479 75 39764 404 7377 239 138 240 138 241 26367 26638 42063 27332 120 94 171 121 224 220 158 227 254 158 227 94",
        "1399 16764 171 120 234 23513 24231 97 151 242 148 234 220 7 64 91 65 8 220 1539 22857 220 23513 16764 220 171 120 223 171 120 253 220 447 246 80 447 247",
        "25405 26897 148 255 39848 12919 28225 101 11976 106 11976 116 24231 235 11976 97 24231 229 23294 241 22174 28618 2515 94 31676 17433 104 23376 21763 26229 220 16 171 120 240 149 96",
    }},
    {"llama-bpe", {
        "15496 995 0 632 338 220 19004 19 986 6184 226 127 244 127 250 6184 109 220 40792 23877 229 27764 245 220 47991 250 166 113 255 168 244 112 220 23141 220 158 227 115 220 149 96 149 97",
        "220 220 3756 628 197 8658 82 201 198 220 25462 220 220 220",
        "9099 6 51 12887 6 3069 314 6 44 705 50 2124 6 88 705 260 705 303 705 67",
        "5099 222 485 6826 447 225 368 2272 1849 77 24145 5299 83 44725 93 720 10 27 14804 61 63 91 28053 254 236 9525",
        "368 31370 12520 99 247 8582 248 222 41840 235 8582 237 121 564 235 19771 38251 304 136 223 220 172 252 222 108 172 109 235 238",
        "8189 25 611 357 87 6624 220 16 8 1391 1441 257 3784 65 58 10163 2231 11208 1782 3373 220 17032 17032 24 220 18 13 23756 3270",
        "27 34086 20538 25 18 29 8959 38 3955 38 6242 57 357 3955 38 3955 38 14887 8 197 198 220 220 220 2124 220 331",
        "4826 34 67 25425 24997 23852 479 75 39764 404 7377 239 138 240 138 241 26367 26638 42063 27332 120 94 171 121 224 220 158 227 254 158 227 94",
        "1399 16764 171 120 234 23513 24231 97 151 242 148 234 357 64 91 65 8 764 11 22857 220 23513 16764 27332 120 223 171 120 253 564 246 80 447 247",
        "25405 26897 148 255 39848 12919 28225 101 11976 106 11976 116 24231 235 11976 97 24231 229 23294 241 22174 28618 2515 94 31676 17433 104 23376 21763 26229 220 16 171 120 240 149 96",
    }},
    {"qwen2", {
        "15496 995 0 632 338 220 17 15 17 19 986 6184 226 127 244 127 250 6184 109 220 40792 23877 229 27764 245 220 47991 250 166 113 255 168 244 112 220 23141 220 158 227 115 220 149 96 149 97",
        "220 220 3756 628 197 8658 82 201 198 220 25462 220 220 220",
        "9099 6 51 12887 6 3069 314 6 44 705 50 2124 6 88 705 260 705 303 705 67",
        "5099 222 485 6826 447 225 368 2272 1849 77 24145 5299 83 44725 93 720 10 27 14804 61 63 91 28053 254 236 9525",
        "368 31370 12520 99 247 8582 248 222 41840 235 8582 237 121 564 235 19771 38251 304 136 223 220 172 252 222 108 172 109 235 238",
        "8189 25 611 357 87 6624 220 16 8 1391 1441 257 3784 65 58 16 17 18 19 20 11208 1782 3373 220 24 24 24 24 24 24 24 220 18 13 16 19 16 20 24",
        "27 34086 20538 25 18 29 8959 38 3955 38 6242 57 357 3955 38 3955 38 14887 8 197 198 220 220 220 2124 220 331",
        "4826 34 67 25425 24997 23852 479 75 39764 404 7377 239 138 240 138 241 26367 26638 42063 27332 120 94 171 121 224 220 158 227 254 158 227 94",
        "1399 16764 171 120 234 23513 24231 97 151 242 148 234 357 64 91 65 8 764 11 22857 220 23513 16764 27332 120 223 171 120 253 564 246 80 447 247",
        "25405 26897 148 255 39848 12919 28225 101 11976 106 11976 116 24231 235 11976 97 24231 229 23294 241 22174 28618 2515 94 31676 17433 104 23376 21763 26229 220 16 171 120 240 149 96",
    }},
    {"deepseek-v3", {
        "15496 995 0 632 338 220 19004 19 986 6184 226 127 244 127 250 6184 109 220 40792 23877 229 27764 245 220 47991 250 166 113 255 168 244 112 220 23141 220 158 227 115 220 149 96 149 97",
        "220 220 3756 628 197 8658 82 201 198 220 25462 220 220 220",
        "9099 6 51 12887 6 3069 314 6 44 705 50 2124 6 88 705 260 705 303 705 67",
        "5099 222 485 6826 447 225 368 2272 1849 77 24145 220 93 83 44725 93 720 10 27 14804 61 63 91 220 157 254 236 9525",
        "368 31370 12520 99 247 8582 248 222 41840 235 8582 237 121 220 447 235 19771 38251 304 136 223 220 172 252 222 108 172 109 235 238",
        "8189 25 611 357 87 6624 220 16 8 1391 1441 257 3784 65 58 10163 2231 11208 1782 3373 220 17032 17032 24 220 18 13 23756 3270",
        "27 34086 20538 25 18 29 8959 38 3955 38 6242 57 357 3955 38 3955 38 14887 8 197 198 220 220 220 2124 220 331",
        "4826 34 67 25425 24997 23852 479 75 39764 404 7377 239 138 240 138 241 26367 26638 42063 27332 120 94 171 121 224 220 158 227 254 158 227 94",
        "1399 16764 171 120 234 23513 24231 97 151 242 148 234 357 64 91 65 8 764 11 22857 220 23513 16764 27332 120 223 171 120 253 564 246 80 447 247",
        "25405 26897 148 255 39848 12919 28225 101 11976 106 11976 116 24231 235 11976 97 24231 229 220 46036 22174 28618 2515 94 31676 220 21763 23376 21763 26229 220 16 171 120 240 149 96",
    }},
    {"deepseek-llm", {
        "15496 995 0 632 6 82 220 1238 1731 986 6184 226 127 244 127 250 6184 109 220 40792 23877 229 27764 245 220 47991 250 166 113 255 168 244 112 220 23141 220 158 227 115 220 149 96 149 97",
        "220 220 3756 198 198 197 8658 82 201 198 220 25462 220 220 220",
        "9099 6 51 12887 6 3069 314 6 44 705 50 2124 6 88 705 260 705 303 705 67",
        "5099 222 485 6826 447 225 368 2272 1849 77 24145 5299 83 44725 93 720 10 27 14804 61 63 91 220 157 254 236 9525",
        "368 31370 12520 99 247 8582 248 222 41840 235 8582 237 121 220 447 235 19771 38251 304 136 223 220 172 252 222 108 172 109 235 238",
        "8189 25 611 357 87 6624 220 16 8 1391 1441 257 3784 65 58 10163 2231 11208 1782 3373 220 24214 17032 220 18 13 1415 19707",
        "27 34086 20538 25 18 29 8959 38 3955 38 6242 57 357 3955 38 3955 38 14887 8 197 198 220 220 220 2124 220 331",
        "4826 34 67 25425 24997 23852 479 75 39764 404 7377 239 138 240 138 241 26367 26638 42063 27332 120 94 171 121 224 220 158 227 254 158 227 94",
        "1399 16764 171 120 234 23513 24231 97 151 242 148 234 357 64 91 65 8 764 11 22857 220 23513 16764 27332 120 223 171 120 253 220 447 246 80 447 247",
        "25405 26897 148 255 39848 12919 220 11976 101 11976 106 11976 116 24231 235 11976 97 24231 229 220 46036 22174 28618 2515 94 31676 220 21763 23376 21763 26229 220 16 171 120 240 149 96",
    }},
    {"deepseek-coder", {
        "15496 995 0 632 6 82 220 17 15 17 19 986 6184 226 127 244 127 250 6184 109 220 40792 23877 229 27764 245 220 47991 250 166 113 255 168 244 112 220 23141 220 158 227 115 220 149 96 149 97",
        "220 220 3756 198 198 197 8658 82 201 198 220 25462 220 220 220",
        "9099 6 51 12887 6 3069 314 6 44 705 50 2124 6 88 705 260 705 303 705 67",
        "5099 222 485 6826 447 225 368 2272 1849 77 24145 5299 83 44725 93 720 10 27 14804 61 63 91 220 157 254 236 9525",
        "368 31370 12520 99 247 8582 248 222 41840 235 8582 237 121 220 447 235 19771 38251 304 136 223 220 172 252 222 108 172 109 235 238",
        "8189 25 611 357 87 6624 220 16 8 1391 1441 257 12 29 65 58 16 17 18 19 20 11208 1782 3373 220 24 24 24 24 24 24 24 220 18 13 16 19 16 20 24",
        "27 34086 20538 25 18 29 8959 38 3955 38 6242 57 357 3955 38 3955 38 14887 8 197 198 220 220 220 2124 220 331",
        "4826 34 67 25425 24997 23852 479 75 39764 404 7377 239 138 240 138 241 26367 26638 42063 27332 120 94 171 121 224 220 158 227 254 158 227 94",
        "1399 16764 171 120 234 23513 24231 97 151 242 148 234 357 64 91 65 8 764 11 22857 220 23513 16764 27332 120 223 171 120 253 220 447 246 80 447 247",
        "25405 26897 148 255 39848 12919 220 11976 101 11976 106 11976 116 24231 235 11976 97 24231 229 220 46036 22174 28618 2515 94 31676 220 21763 23376 21763 26229 220 16 171 120 240 149 96",
    }},
    {"tekken", {
        "15496 995 0 632 338 220 17 15 17 19 986 6184 226 127 244 127 250 6184 109 220 40792 23877 229 27764 245 220 47991 250 166 113 255 168 244 112 220 23141 220 158 227 115 220 149 96 149 97",
        "220 220 3756 628 197 8658 82 201 198 220 25462 220 220 220",
        "9099 6 51 12887 6 3069 314 6 44 705 50 2124 6 88 705 260 705 303 705 67",
        "5099 222 485 6826 447 225 368 2272 1849 77 24145 5299 83 44725 93 720 10 27 14804 61 63 91 28053 254 236 9525",
        "368 31370 12520 99 247 8582 248 222 41840 235 8582 237 121 564 235 19771 38251 304 136 223 220 172 252 222 108 172 109 235 238",
        "8189 25 611 357 87 6624 220 16 8 1391 1441 257 3784 65 58 16 17 18 19 20 11208 1782 3373 220 24 24 24 24 24 24 24 220 18 13 16 19 16 20 24",
        "27 34086 20538 25 18 29 8959 38 3955 38 6242 57 357 3955 38 3955 38 14887 8 197 198 220 220 220 2124 220 331",
        "4826 34 67 25425 24997 23852 479 75 39764 404 7377 239 138 240 138 241 26367 26638 42063 27332 120 94 171 121 224 220 158 227 254 158 227 94",
        "1399 16764 171 120 234 23513 24231 97 151 242 148 234 357 64 91 65 8 764 11 22857 220 23513 16764 27332 120 223 171 120 253 564 246 80 447 247",
        "25405 26897 148 255 39848 12919 28225 101 11976 106 11976 116 24231 235 11976 97 24231 229 23294 241 22174 28618 2515 94 31676 17433 104 23376 21763 26229 220 16 171 120 240 149 96",
    }},
    {"chameleon", {
        "15496 995 0 632 6 82 220 17 15 17 19 13 13 13 6184 226 127 244 127 250 6184 109 220 40792 23877 229 27764 245 220 47991 250 166 113 255 168 244 112 220 23141 220 158 227 115 220 149 96 149 97",
        "220 220 3756 198 198 197 8658 82 201 198 220 220 9535 4386 220 220 220",
        "9099 6 51 12887 6 3069 314 6 44 220 6 50 2124 6 88 220 6 260 220 6 303 220 6 67",
        "5099 222 485 6826 447 225 368 2272 1849 77 24145 220 93 83 44725 93 220 3 10 27 28 29 61 63 91 28053 254 236 9525",
        "368 31370 12520 99 247 8582 248 222 41840 235 8582 237 121 564 235 19771 38251 304 136 223 220 172 252 222 108 172 109 235 238",
        "8189 25 611 220 7 87 220 28 28 220 16 8 220 90 1441 257 12 29 65 58 16 17 18 19 20 60 26 220 92 220 14 14 220 24 24 24 24 24 24 24 220 18 13 16 19 16 20 24",
        "27 34086 20538 25 18 29 220 3955 38 3955 38 6242 57 220 7 3955 38 3955 38 14887 8 197 198 220 220 220 220 87 220 220 88",
        "4826 34 67 25425 24997 23852 479 75 39764 404 7377 239 138 240 138 241 26367 26638 42063 27332 120 94 171 121 224 220 158 227 254 158 227 94",
        "1399 16764 171 120 234 23513 24231 97 151 242 148 234 220 7 64 91 65 8 220 13 11 0 30 220 23513 16764 220 171 120 223 171 120 253 220 447 246 80 447 247",
        "25405 26897 148 255 39848 12919 28225 101 11976 106 11976 116 24231 235 11976 97 24231 229 23294 241 22174 28618 2515 94 31676 17433 104 23376 21763 26229 220 16 171 120 240 149 96",
    }},
    {"bloom", {
        "15496 995 0 632 338 48609 986 6184 226 127 244 127 250 6184 109 220 40792 23877 229 27764 245 220 47991 250 166 113 255 168 244 112 25208 2343 227 115 18923 96 149 97",
        "220 220 3756 628 197 8658 82 201 198 220 25462 220 220 220",
        "9099 6 51 12887 6 3069 314 6 44 705 50 2124 6 88 705 260 705 303 705 67",
        "5099 222 485 6826 447 225 368 2272 1849 77 24145 5299 83 44725 93 720 10 27 14804 61 63 91 28053 254 236 9525",
        "368 31370 12520 99 247 8582 248 222 41840 235 8582 237 121 564 235 19771 38251 304 136 223 220 172 252 222 108 172 109 235 238",
        "8189 25 611 357 87 6624 352 8 1391 1441 257 3784 65 58 10163 2231 11208 1782 3373 860 24214 2079 513 13 1415 19707",
        "27 34086 20538 25 18 29 8959 38 3955 38 6242 57 357 3955 38 3955 38 14887 8 197 198 220 220 220 2124 220 331",
        "4826 34 67 25425 24997 23852 479 75 39764 404 7377 239 138 240 138 241 26367 26638 42063 27332 120 94 171 121 224 2343 227 254 158 227 94",
        "1399 16764 171 120 234 23513 24231 97 151 242 148 234 357 64 91 65 8 764 11 22857 220 23513 16764 27332 120 223 171 120 253 564 246 80 447 247",
        "25405 26897 148 255 39848 12919 28225 101 11976 106 11976 116 24231 235 11976 97 24231 229 23294 241 22174 28618 2515 94 31676 17433 104 23376 21763 26229 352 171 120 240 149 96",
    }},
    {"viking", {
        "15496 995 0 632 338 220 17 15 17 19 986 6184 226 127 244 127 250 6184 109 220 40792 23877 229 27764 245 220 47991 250 166 113 255 168 244 112 220 23141 220 158 227 115 220 149 96 149 97",
        "220 220 3756 628 197 8658 82 201 198 220 25462 220 220 220",
        "9099 6 51 12887 6 3069 314 6 44 705 50 2124 6 88 705 260 705 303 705 67",
        "5099 222 485 6826 447 225 368 2272 1849 77 24145 5299 83 44725 93 720 10 27 14804 61 63 91 28053 254 236 9525",
        "368 31370 12520 99 247 8582 248 222 41840 235 8582 237 121 564 235 19771 38251 304 136 223 220 172 252 222 108 172 109 235 238",
        "8189 25 611 357 87 6624 220 16 8 1391 1441 257 3784 65 58 16 17 18 19 20 11208 1782 3373 220 24 24 24 24 24 24 24 220 18 13 16 19 16 20 24",
        "27 34086 20538 25 18 29 8959 38 3955 38 6242 57 357 3955 38 3955 38 14887 8 197 198 220 220 220 2124 220 331",
        "4826 34 67 25425 24997 23852 479 75 39764 404 7377 239 138 240 138 241 26367 26638 42063 27332 120 94 171 121 224 220 158 227 254 158 227 94",
        "1399 16764 171 120 234 23513 24231 97 151 242 148 234 357 64 91 65 8 764 11 22857 220 23513 16764 27332 120 223 171 120 253 564 246 80 447 247",
        "25405 26897 148 255 39848 12919 28225 101 11976 106 11976 116 24231 235 11976 97 24231 229 23294 241 22174 28618 2515 94 31676 17433 104 23376 21763 26229 220 16 171 120 240 149 96",
    }},
    {"falcon", {
        "15496 995 0 632 6 82 220 19004 19 986 6184 226 127 244 127 250 6184 109 220 40792 23877 229 27764 245 220 47991 250 166 113 255 168 244 112 25208 2343 227 115 18923 96 149 97",
        "220 220 3756 628 197 8658 82 201 198 220 25462 220 220 220",
        "9099 6 51 12887 6 3069 314 6 44 220 6 50 2124 6 88 220 6 260 220 6 303 220 6 67",
        "5099 222 485 6826 447 225 368 2272 1849 77 24145 220 93 83 44725 93 220 3 10 27 14804 61 63 91 28053 254 236 9525",
        "368 31370 12520 99 247 8582 248 222 41840 235 8582 237 121 564 235 19771 38251 304 136 223 220 172 252 222 108 172 109 235 238",
        "8189 25 611 220 7 87 220 855 352 8 220 90 1441 257 3784 65 58 10163 2231 11208 220 92 220 1003 220 17032 17032 24 513 13 23756 3270",
        "27 34086 20538 25 18 29 8959 38 3955 38 6242 57 220 7 3955 38 3955 38 14887 8 197 198 220 220 220 2124 220 331",
        "4826 34 67 25425 24997 23852 479 75 39764 404 7377 239 138 240 138 241 26367 26638 42063 27332 120 94 171 121 224 2343 227 254 158 227 94",
        "1399 16764 171 120 234 23513 24231 97 151 242 148 234 220 7 64 91 65 8 220 1539 22857 220 23513 16764 220 171 120 223 171 120 253 220 447 246 80 447 247",
        "25405 26897 148 255 39848 12919 28225 101 11976 106 11976 116 24231 235 11976 97 24231 229 23294 241 22174 28618 2515 94 31676 17433 104 23376 21763 26229 352 171 120 240 149 96",
    }},
    {"starcoder", {
        "15496 995 0 632 338 220 17 15 17 19 986 6184 226 127 244 127 250 6184 109 220 40792 23877 229 27764 245 220 47991 250 166 113 255 168 244 112 220 23141 220 158 227 115 220 149 96 149 97",
        "220 220 3756 628 197 8658 82 201 198 220 25462 220 220 220",
        "9099 6 51 12887 6 3069 314 6 44 705 50 2124 6 88 705 260 705 303 705 67",
        "5099 222 485 6826 447 225 368 2272 1849 77 24145 5299 83 44725 93 720 10 27 14804 61 63 91 28053 254 236 9525",
        "368 31370 12520 99 247 8582 248 222 41840 235 8582 237 121 564 235 19771 38251 304 136 223 220 172 252 222 108 172 109 235 238",
        "8189 25 611 357 87 6624 220 16 8 1391 1441 257 3784 65 58 16 17 18 19 20 11208 1782 3373 220 24 24 24 24 24 24 24 220 18 13 16 19 16 20 24",
        "27 34086 20538 25 18 29 8959 38 3955 38 6242 57 357 3955 38 3955 38 14887 8 197 198 220 220 220 2124 220 331",
        "4826 34 67 25425 24997 23852 479 75 39764 404 7377 239 138 240 138 241 26367 26638 42063 27332 120 94 171 121 224 220 158 227 254 158 227 94",
        "1399 16764 171 120 234 23513 24231 97 151 242 148 234 357 64 91 65 8 764 11 22857 220 23513 16764 27332 120 223 171 120 253 564 246 80 447 247",
        "25405 26897 148 255 39848 12919 28225 101 11976 106 11976 116 24231 235 11976 97 24231 229 23294 241 22174 28618 2515 94 31676 17433 104 23376 21763 26229 220 16 171 120 240 149 96",
    }},
    {"gpt-2", {
        "15496 995 0 632 338 48609 986 6184 226 127 244 127 250 6184 109 220 40792 23877 229 27764 245 220 47991 250 166 113 255 168 244 112 25208 2343 227 115 18923 96 149 97",
        "220 220 3756 628 197 8658 82 201 198 220 25462 220 220 220",
        "9099 6 51 12887 6 3069 314 6 44 705 50 2124 6 88 705 260 705 303 705 67",
        "5099 222 485 6826 447 225 368 2272 1849 77 24145 5299 83 44725 93 720 10 27 14804 61 63 91 28053 254 236 9525",
        "368 31370 12520 99 247 8582 248 222 41840 235 8582 237 121 564 235 19771 38251 304 136 223 220 172 252 222 108 172 109 235 238",
        "8189 25 611 357 87 6624 352 8 1391 1441 257 3784 65 58 10163 2231 11208 1782 3373 860 24214 2079 513 13 1415 19707",
        "27 34086 20538 25 18 29 8959 38 3955 38 6242 57 357 3955 38 3955 38 14887 8 197 198 220 220 220 2124 220 331",
        "4826 34 67 25425 24997 23852 479 75 39764 404 7377 239 138 240 138 241 26367 26638 42063 27332 120 94 171 121 224 2343 227 254 158 227 94",
        "1399 16764 171 120 234 23513 24231 97 151 242 148 234 357 64 91 65 8 764 11 22857 220 23513 16764 27332 120 223 171 120 253 564 246 80 447 247",
        "25405 26897 148 255 39848 12919 28225 101 11976 106 11976 116 24231 235 11976 97 24231 229 23294 241 22174 28618 2515 94 31676 17433 104 23376 21763 26229 352 171 120 240 149 96",
    }},
};

static void test_pre_tokenizers(void **state) {
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/ggml-vocab-gpt-2.gguf", VOCAB_DIR);
    if (!file_exists(path)) {
        printf("gpt-2 vocab unavailable\n");
        skip();
    }
    gguf_ctx *src = NULL;
    kvlm_error err;
    assert_int_equal(kv_gguf_open(path, &src, &err), KVLM_OK);
    const gguf_kv *tokens = kv_gguf_find(src, "tokenizer.ggml.tokens");
    const gguf_kv *merges = kv_gguf_find(src, "tokenizer.ggml.merges");
    assert_non_null(tokens);
    assert_non_null(merges);
    const size_t n_strs = sizeof pre_strs / sizeof pre_strs[0];
    int n_bad = 0;
    for (size_t k = 0; k < sizeof pre_expect / sizeof pre_expect[0]; k++) {
        gb b;
        gb_init(&b);
        gb_kv_str(&b, "tokenizer.ggml.model", "gpt2");
        if (pre_expect[k].pre[0]) gb_kv_str(&b, "tokenizer.ggml.pre", pre_expect[k].pre);
        gb_kv_gstrs(&b, "tokenizer.ggml.tokens", tokens->arr_str, tokens->arr_n);
        gb_kv_gstrs(&b, "tokenizer.ggml.merges", merges->arr_str, merges->arr_n);
        gb_kv_u32(&b, "tokenizer.ggml.bos_token_id", 50256);
        gb_kv_u32(&b, "tokenizer.ggml.eos_token_id", 50256);
        kv_vocab *v;
        assert_int_equal(load_built(&b, &v, &err), KVLM_OK);
        free(b.d);
        for (size_t i = 0; i < n_strs; i++) {
            int32_t want[256];
            int32_t n_want = 0;
            for (const char *p = pre_expect[k].ids[i]; *p;) {
                char *end;
                want[n_want++] = (int32_t)strtol(p, &end, 10);
                p = end;
                while (*p == ' ') p++;
            }
            int32_t n;
            int32_t *ids = tokenize(v, pre_strs[i], strlen(pre_strs[i]), false, false, &n);
            if (n != n_want || memcmp(ids, want, (size_t)n * sizeof(int32_t)) != 0) {
                printf("  pre '%s' string %zu differs\n", pre_expect[k].pre, i);
                print_ids("expected", want, (size_t)n_want);
                print_ids("got     ", ids, (size_t)n);
                n_bad++;
            }
            free(ids);
        }
        kv_vocab_free(v);
    }
    kv_gguf_close(src);
    assert_int_equal(n_bad, 0);
}

/* Very long pieces must not fail (PCRE2's JIT stack runs out on some
 * patterns; the matcher then retries with more room). */
static void test_long_pieces(void **state) {
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/ggml-vocab-gpt-2.gguf", VOCAB_DIR);
    if (!file_exists(path)) skip();
    gguf_ctx *src = NULL;
    kvlm_error err;
    assert_int_equal(kv_gguf_open(path, &src, &err), KVLM_OK);
    const gguf_kv *tokens = kv_gguf_find(src, "tokenizer.ggml.tokens");
    const gguf_kv *merges = kv_gguf_find(src, "tokenizer.ggml.merges");
    const char *pres[] = {"tekken", "deepseek-v3", "deepseek-llm", "llama-bpe", "default"};
    size_t len = 200000;
    char *text = malloc(len * 4);
    for (size_t p = 0; p < sizeof pres / sizeof pres[0]; p++) {
        gb b;
        gb_init(&b);
        gb_kv_str(&b, "tokenizer.ggml.model", "gpt2");
        gb_kv_str(&b, "tokenizer.ggml.pre", pres[p]);
        gb_kv_gstrs(&b, "tokenizer.ggml.tokens", tokens->arr_str, tokens->arr_n);
        gb_kv_gstrs(&b, "tokenizer.ggml.merges", merges->arr_str, merges->arr_n);
        kv_vocab *v;
        assert_int_equal(load_built(&b, &v, &err), KVLM_OK);
        free(b.d);
        const char *units[] = {"A", "a", "\xf0\x9f\xa6\x99", " ", "1", "!"};
        for (size_t u = 0; u < sizeof units / sizeof units[0]; u++) {
            size_t ul = strlen(units[u]), n = 0;
            while (n + ul <= len) {
                memcpy(text + n, units[u], ul);
                n += ul;
            }
            int32_t k = kv_vocab_tokenize(v, text, n, NULL, 0, false, false);
            if (k == INT32_MIN) fail_msg("pre %s: %zu bytes of '%s' failed", pres[p], n, units[u]);
            assert_true(k < 0);
        }
        kv_vocab_free(v);
    }
    free(text);
    kv_gguf_close(src);
}

/* ------------------------------------------------------------ other vocabs */

static void test_model_vocabs(void **state) {
    (void)state;
    const char *files[] = {KVLM_MODELS_DIR "/llama/aidreams260K-f32.gguf",
                           KVLM_MODELS_DIR "/llama/llama-2-tiny-random.gguf",
                           KVLM_MODELS_DIR "/vocab/ggml-vocab-baichuan.gguf",
                           KVLM_MODELS_DIR "/vocab/ggml-vocab-gpt-neox.gguf"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        if (!file_exists(files[i])) {
            printf("%s unavailable\n", files[i]);
            continue;
        }
        vocab_file vf;
        kvlm_error err = {0};
        kvlm_status st = open_vocab(files[i], &vf, &err);
        if (st) fail_msg("%s: %s", files[i], err.msg);
        const char *s = "Once upon a time, there was a little robot. \xf0\x9f\xa4\x96 3.14\n";
        int32_t n;
        int32_t *ids = tokenize(vf.v, s, strlen(s), true, false, &n);
        assert_true(n > 2);
        size_t dl;
        char *back = detokenize(vf.v, ids + (kv_vocab_add_bos(vf.v) ? 1 : 0), n - (kv_vocab_add_bos(vf.v) ? 1 : 0),
                                false, &dl);
        if (dl != strlen(s) || memcmp(back, s, dl) != 0) {
            print_escaped("back", back, dl);
            fail_msg("%s: round trip failed", files[i]);
        }
        printf("%s: %d tokens, round trip ok\n", files[i], n);
        free(back);
        free(ids);
        kv_vocab_free(vf.v);
    }
}

/* ------------------------------------------------------------ speed, threads */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static char *make_text(size_t target, size_t *len) {
    const char *para =
        "The quick brown fox jumps over the lazy dog. It's 3:14 pm, and we've got 1,234,567 reasons to "
        "tokenize \"quickly\"!\n\tCaf\xc3\xa9 na\xc3\xafve \xe2\x80\x94 \xe4\xbd\xa0\xe5\xa5\xbd\xe4\xb8\x96\xe7\x95\x8c "
        "\xf0\x9f\x98\x80   indented    code() { return x->y[42]; }\n\n";
    size_t pl = strlen(para);
    char *t = malloc(target + pl);
    size_t n = 0;
    while (n < target) {
        memcpy(t + n, para, pl);
        n += pl;
    }
    *len = n;
    return t;
}

static void time_one(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", VOCAB_DIR, name);
    if (!file_exists(path)) return;
    kv_vocab *v = load_named(name);
    size_t len;
    char *t = make_text(1 << 20, &len);
    double t0 = now_s();
    int32_t n = kv_vocab_tokenize(v, t, len, NULL, 0, false, false);
    double t1 = now_s();
    assert_true(n < 0 && n != INT32_MIN);
    printf("%s: %zu bytes -> %d tokens in %.3f s\n", name, len, -n, t1 - t0);
    /* generous: sanitizer builds are several times slower */
    assert_true(t1 - t0 < 20.0);
    free(t);
    kv_vocab_free(v);
}

static void test_speed_1mb(void **state) {
    (void)state;
    time_one("ggml-vocab-llama-spm.gguf");
    time_one("ggml-vocab-gpt-2.gguf");
    time_one("ggml-vocab-deepseek-llm.gguf");
    time_one("ggml-vocab-mpt.gguf");
}

typedef struct thr_arg {
    const kv_vocab *v;
    const char *text;
    size_t len;
    int32_t *ids;
    int32_t n;
} thr_arg;

static void *thr_main(void *p) {
    thr_arg *a = p;
    for (int rep = 0; rep < 5; rep++) {
        int32_t n = kv_vocab_tokenize(a->v, a->text, a->len, a->ids, a->n, false, true);
        if (n != a->n) a->n = -1;
    }
    return NULL;
}

static void test_threads(void **state) {
    (void)state;
    const char *names[] = {"ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf"};
    for (size_t k = 0; k < 2; k++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", VOCAB_DIR, names[k]);
        if (!file_exists(path)) continue;
        kv_vocab *v = load_named(names[k]);
        size_t len;
        char *t = make_text(1 << 15, &len);
        int32_t n;
        int32_t *ref = tokenize(v, t, len, false, true, &n);
        thr_arg args[4];
        pthread_t th[4];
        for (int i = 0; i < 4; i++) {
            args[i] = (thr_arg){v, t, len, malloc((size_t)n * sizeof(int32_t)), n};
            assert_int_equal(pthread_create(&th[i], NULL, thr_main, &args[i]), 0);
        }
        for (int i = 0; i < 4; i++) {
            pthread_join(th[i], NULL);
            assert_int_equal(args[i].n, n);
            assert_memory_equal(args[i].ids, ref, (size_t)n * sizeof(int32_t));
            free(args[i].ids);
        }
        free(ref);
        free(t);
        kv_vocab_free(v);
    }
}

int main(void) {
#ifdef KVLM_TSAN_BUILD
    (void)test_speed_1mb;
#endif
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors_llama_spm),
        cmocka_unit_test(test_vectors_phi3),
        cmocka_unit_test(test_vectors_all),
        cmocka_unit_test(test_spm_basics),
        cmocka_unit_test(test_phi3_specials),
        cmocka_unit_test(test_bpe_basics),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_tiny_spm),
        cmocka_unit_test(test_tiny_bpe),
        cmocka_unit_test(test_pre_tokenizers),
        cmocka_unit_test(test_long_pieces),
        cmocka_unit_test(test_model_vocabs),
#ifndef KVLM_TSAN_BUILD /* a time bound; ThreadSanitizer builds are 5-15x slower and run only for the threads */
        cmocka_unit_test(test_speed_1mb),
#endif
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
