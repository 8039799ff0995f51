/* GGUF reader: valid files parse completely; every kind of malformed file
 * gets a clean error naming the problem (and no crash under ASan). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/dtype.h"
#include "gguf/gguf.h"
#include "gguf_builder.h"

/* A small valid file: metadata of every value type, two tensors. */
static void build_valid(gb *b) {
    memset(b, 0, sizeof *b);
    gb_header(b, 3, 2, 15);
    gb_key(b, "k.u8", 0); gb_u8(b, 200);
    gb_key(b, "k.i8", 1); gb_u8(b, (uint8_t)-5);
    gb_key(b, "k.u16", 2); { uint16_t v = 60000; gb_put(b, &v, 2); }
    gb_key(b, "k.i16", 3); { int16_t v = -30000; gb_put(b, &v, 2); }
    gb_kv_u32(b, "k.u32", 4000000000u);
    gb_key(b, "k.i32", 5); { int32_t v = -2000000000; gb_put(b, &v, 4); }
    gb_kv_f32(b, "k.f32", 1.5f);
    gb_key(b, "k.bool", 7); gb_u8(b, 1);
    gb_kv_str(b, "k.str", "hello");
    gb_key(b, "k.u64", 10); gb_u64(b, 1ull << 40);
    gb_key(b, "k.i64", 11); { int64_t v = -(1ll << 40); gb_put(b, &v, 8); }
    gb_key(b, "k.f64", 12); { double v = 0.25; gb_put(b, &v, 8); }
    gb_key(b, "k.arr_i32", 9); gb_u32(b, 5); gb_u64(b, 3);
    for (int32_t i = 0; i < 3; i++) gb_put(b, &(int32_t){-i}, 4);
    gb_key(b, "k.arr_str", 9); gb_u32(b, 8); gb_u64(b, 2); gb_str(b, "ab"); gb_str(b, "");
    gb_kv_u32(b, "general.alignment", 64);
    uint64_t ne_a[2] = {32, 2}, ne_b[1] = {8};
    gb_tensor(b, "a", 2, ne_a, 8 /* q8_0: 2 rows x 34 bytes */, 0);
    gb_tensor(b, "b", 1, ne_b, 0 /* f32 */, 128);
    gb_align(b, 64);
    for (int i = 0; i < 128 + 32; i++) gb_u8(b, (uint8_t)i);
}

static kvlm_status open_buf(const gb *b, gguf_ctx **g, kvlm_error *err) {
    return kv_gguf_open_buffer(b->p, b->n, g, err);
}

static void test_valid(void **state) {
    (void)state;
    gb b;
    build_valid(&b);
    gguf_ctx *g;
    kvlm_error err;
    assert_int_equal(open_buf(&b, &g, &err), KVLM_OK);
    assert_int_equal(g->version, 3);
    assert_int_equal(g->n_kv, 15);
    assert_int_equal(g->alignment, 64);
    assert_int_equal(g->data_offset % 64, 0);
    uint32_t u;
    int32_t i;
    float f;
    bool bo;
    gguf_str s;
    assert_true(kv_gguf_get_u32(g, "k.u8", &u) && u == 200);
    assert_true(kv_gguf_get_i32(g, "k.i8", &i) && i == -5);
    assert_true(kv_gguf_get_u32(g, "k.u16", &u) && u == 60000);
    assert_true(kv_gguf_get_i32(g, "k.i16", &i) && i == -30000);
    assert_true(kv_gguf_get_u32(g, "k.u32", &u) && u == 4000000000u);
    assert_false(kv_gguf_get_i32(g, "k.u32", &i)); /* does not fit */
    assert_true(kv_gguf_get_i32(g, "k.i32", &i) && i == -2000000000);
    assert_false(kv_gguf_get_u32(g, "k.i32", &u)); /* negative */
    assert_true(kv_gguf_get_f32(g, "k.f32", &f) && f == 1.5f);
    assert_true(kv_gguf_get_bool(g, "k.bool", &bo) && bo);
    assert_true(kv_gguf_get_str(g, "k.str", &s) && kv_gguf_str_eq(s, "hello"));
    assert_int_equal(kv_gguf_find(g, "k.u64")->v.u64, 1ull << 40);
    assert_int_equal(kv_gguf_find(g, "k.i64")->v.i64, -(1ll << 40));
    assert_true(kv_gguf_get_f32(g, "k.f64", &f) && f == 0.25f);
    const gguf_kv *a = kv_gguf_find(g, "k.arr_i32");
    int64_t v;
    assert_true(a && a->arr_n == 3 && kv_gguf_arr_i64(a, 2, &v) && v == -2);
    assert_false(kv_gguf_arr_i64(a, 3, &v));
    const gguf_kv *as = kv_gguf_find(g, "k.arr_str");
    assert_true(as && as->arr_n == 2 && kv_gguf_str_eq(as->arr_str[0], "ab") && as->arr_str[1].len == 0);
    assert_null(kv_gguf_find(g, "nope"));
    const gguf_tensor *ta = kv_gguf_find_tensor(g, "a"), *tb = kv_gguf_find_tensor(g, "b");
    assert_non_null(ta);
    assert_non_null(tb);
    assert_int_equal(ta->n_bytes, 68);
    assert_int_equal(ta->n_elements, 64);
    assert_ptr_equal(ta->data, b.p + g->data_offset);
    assert_ptr_equal(tb->data, b.p + g->data_offset + 128);
    kv_gguf_close(g);
    free(b.p);
}

/* Every prefix of a valid file is rejected with a format error. */
static void test_truncated_everywhere(void **state) {
    (void)state;
    gb b;
    build_valid(&b);
    for (size_t n = 0; n < b.n; n++) {
        gguf_ctx *g = NULL;
        kvlm_error err = {0};
        kvlm_status st = kv_gguf_open_buffer(b.p, n, &g, &err);
        if (st == KVLM_OK) fail_msg("prefix of %zu/%zu bytes was accepted", n, b.n);
        assert_int_equal(st, KVLM_ERR_FORMAT);
        assert_null(g);
        assert_true(strlen(err.msg) > 0);
    }
    free(b.p);
}

/* Expects a failure whose message contains `needle`. */
static void expect_error(const gb *b, kvlm_status code, const char *needle) {
    gguf_ctx *g = NULL;
    kvlm_error err = {0};
    kvlm_status st = open_buf(b, &g, &err);
    if (st != code) fail_msg("expected status %d, got %d (%s)", code, st, err.msg);
    assert_null(g);
    if (!strstr(err.msg, needle)) fail_msg("message '%s' does not mention '%s'", err.msg, needle);
}

static void test_bad_magic_and_version(void **state) {
    (void)state;
    gb b = {0};
    gb_put(&b, "GGUX", 4); gb_u32(&b, 3); gb_u64(&b, 0); gb_u64(&b, 0);
    expect_error(&b, KVLM_ERR_FORMAT, "magic");
    free(b.p);
    memset(&b, 0, sizeof b);
    gb_header(&b, 1, 0, 0);
    expect_error(&b, KVLM_ERR_UNSUPPORTED, "version 1");
    free(b.p);
    memset(&b, 0, sizeof b);
    gb_header(&b, 0x03000000, 0, 0);
    expect_error(&b, KVLM_ERR_FORMAT, "version");
    free(b.p);
    /* version 2 is accepted */
    memset(&b, 0, sizeof b);
    gb_header(&b, 2, 0, 1);
    gb_kv_u32(&b, "x", 1);
    gguf_ctx *g;
    assert_int_equal(open_buf(&b, &g, NULL), KVLM_OK);
    kv_gguf_close(g);
    free(b.p);
}

static void test_huge_counts(void **state) {
    (void)state;
    gb b = {0};
    gb_header(&b, 3, 0, 1ull << 60);
    expect_error(&b, KVLM_ERR_FORMAT, "metadata count");
    free(b.p);
    memset(&b, 0, sizeof b);
    gb_header(&b, 3, 1ull << 62, 0);
    expect_error(&b, KVLM_ERR_FORMAT, "tensor count");
    free(b.p);
}

static void test_huge_string_length(void **state) {
    (void)state;
    gb b = {0};
    gb_header(&b, 3, 0, 1);
    gb_u64(&b, 0xffffffffffffff00ull); /* key length */
    gb_put(&b, "abcdefghijklmnopqrstuvwxyz", 26);
    expect_error(&b, KVLM_ERR_FORMAT, "string length");
    free(b.p);
    /* a string value */
    memset(&b, 0, sizeof b);
    gb_header(&b, 3, 0, 1);
    gb_key(&b, "s", 8);
    gb_u64(&b, 1ull << 40);
    gb_put(&b, "abc", 3);
    expect_error(&b, KVLM_ERR_FORMAT, "string length");
    free(b.p);
    /* an array claiming 2^61 u32 elements */
    memset(&b, 0, sizeof b);
    gb_header(&b, 3, 0, 1);
    gb_key(&b, "arr", 9); gb_u32(&b, 4); gb_u64(&b, 1ull << 61);
    expect_error(&b, KVLM_ERR_FORMAT, "array");
    free(b.p);
    /* an array claiming 2^40 strings */
    memset(&b, 0, sizeof b);
    gb_header(&b, 3, 0, 1);
    gb_key(&b, "arr", 9); gb_u32(&b, 8); gb_u64(&b, 1ull << 40);
    expect_error(&b, KVLM_ERR_FORMAT, "strings");
    free(b.p);
}

static void test_bad_value_types(void **state) {
    (void)state;
    gb b = {0};
    gb_header(&b, 3, 0, 1);
    gb_key(&b, "t", 13);
    gb_u32(&b, 0);
    expect_error(&b, KVLM_ERR_FORMAT, "unknown value type");
    free(b.p);
    memset(&b, 0, sizeof b);
    gb_header(&b, 3, 0, 1);
    gb_key(&b, "nested", 9); gb_u32(&b, 9); gb_u64(&b, 1);
    expect_error(&b, KVLM_ERR_FORMAT, "array element type");
    free(b.p);
    memset(&b, 0, sizeof b);
    gb_header(&b, 3, 0, 1);
    gb_key(&b, "b", 7); gb_u8(&b, 7);
    expect_error(&b, KVLM_ERR_FORMAT, "bool");
    free(b.p);
    memset(&b, 0, sizeof b);
    gb_header(&b, 3, 0, 2);
    gb_kv_u32(&b, "dup", 1);
    gb_kv_u32(&b, "dup", 2);
    expect_error(&b, KVLM_ERR_FORMAT, "duplicate metadata key 'dup'");
    free(b.p);
    memset(&b, 0, sizeof b);
    gb_header(&b, 3, 0, 1);
    gb_kv_u32(&b, "general.alignment", 48);
    expect_error(&b, KVLM_ERR_FORMAT, "power of two");
    free(b.p);
    memset(&b, 0, sizeof b);
    gb_header(&b, 3, 0, 1);
    gb_kv_str(&b, "general.alignment", "32");
    expect_error(&b, KVLM_ERR_FORMAT, "alignment");
    free(b.p);
}

/* One tensor with the given geometry and 256 bytes of data after the header. */
static void build_tensor(gb *b, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t offset, size_t data) {
    memset(b, 0, sizeof *b);
    gb_header(b, 3, 1, 0);
    gb_tensor(b, "t", n_dims, ne, type, offset);
    gb_align(b, 32);
    for (size_t i = 0; i < data; i++) gb_u8(b, 0);
}

static void test_bad_tensors(void **state) {
    (void)state;
    gb b;
    uint64_t ne[4] = {32, 4, 1, 1};
    build_tensor(&b, 2, ne, 0, 0, 512);
    gguf_ctx *g;
    assert_int_equal(open_buf(&b, &g, NULL), KVLM_OK); /* the baseline is valid */
    kv_gguf_close(g);
    free(b.p);

    build_tensor(&b, 2, ne, 0, 0, 511); /* 32*4 f32 = 512 bytes, one short */
    expect_error(&b, KVLM_ERR_FORMAT, "past the end of the file");
    free(b.p);
    build_tensor(&b, 2, ne, 0, 1ull << 63, 512);
    expect_error(&b, KVLM_ERR_FORMAT, "past the end");
    free(b.p);
    build_tensor(&b, 2, ne, 99, 0, 512);
    expect_error(&b, KVLM_ERR_UNSUPPORTED, "unknown tensor type 99");
    free(b.p);
    build_tensor(&b, 2, ne, 4 /* removed q4_2 */, 0, 512);
    expect_error(&b, KVLM_ERR_UNSUPPORTED, "unknown tensor type 4");
    free(b.p);
    build_tensor(&b, 2, ne, 0, 16, 1024);
    expect_error(&b, KVLM_ERR_FORMAT, "not a multiple of the alignment");
    free(b.p);
    uint64_t ne5[5] = {32, 4, 1, 1, 1};
    build_tensor(&b, 5, ne5, 0, 0, 512);
    expect_error(&b, KVLM_ERR_FORMAT, "dimensions");
    free(b.p);
    build_tensor(&b, 0, ne, 0, 0, 512);
    expect_error(&b, KVLM_ERR_FORMAT, "dimensions");
    free(b.p);
    uint64_t zero[2] = {32, 0};
    build_tensor(&b, 2, zero, 0, 0, 512);
    expect_error(&b, KVLM_ERR_FORMAT, "dimension 1 is 0");
    free(b.p);
    uint64_t huge[4] = {1ull << 32, 1ull << 32, 1ull << 32, 1};
    build_tensor(&b, 3, huge, 0, 0, 512);
    expect_error(&b, KVLM_ERR_FORMAT, "overflows");
    free(b.p);
    uint64_t odd[2] = {33, 1};
    build_tensor(&b, 2, odd, 8 /* q8_0 needs multiples of 32 */, 0, 512);
    expect_error(&b, KVLM_ERR_FORMAT, "multiple of q8_0's block");
    free(b.p);

    memset(&b, 0, sizeof b);
    gb_header(&b, 3, 2, 0);
    gb_tensor(&b, "same", 1, ne, 0, 0);
    gb_tensor(&b, "same", 1, ne, 0, 128);
    gb_align(&b, 32);
    for (int i = 0; i < 256; i++) gb_u8(&b, 0);
    expect_error(&b, KVLM_ERR_FORMAT, "duplicate tensor name 'same'");
    free(b.p);

    memset(&b, 0, sizeof b);
    gb_header(&b, 3, 1, 0);
    gb_str(&b, "");
    for (int i = 0; i < 64; i++) gb_u8(&b, 0);
    expect_error(&b, KVLM_ERR_FORMAT, "name length");
    free(b.p);
}

static void test_files(void **state) {
    (void)state;
    gguf_ctx *g = NULL;
    kvlm_error err;
    assert_int_equal(kv_gguf_open("/nonexistent/model.gguf", &g, &err), KVLM_ERR_IO);
    assert_non_null(strstr(err.msg, "/nonexistent/model.gguf"));
    char path[] = "/tmp/kvlm-test-gguf-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(kv_gguf_open(path, &g, &err), KVLM_ERR_FORMAT); /* empty */
    gb b;
    build_valid(&b);
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(b.p, 1, b.n, fp), b.n);
    fclose(fp);
    assert_int_equal(kv_gguf_open(path, &g, &err), KVLM_OK);
    assert_int_equal(kv_gguf_find_tensor(g, "b")->ne[0], 8);
    kv_gguf_close(g);
    unlink(path);
    free(b.p);

    /* every shared model and vocab file opens */
    const char *files[] = {"/llama/aidreams260K-f32.gguf", "/llama/synth15M-q8_0.gguf",
                           "/llama/llama-2-tiny-random.gguf", "/bitnet/synth-bitnet-b158-v512-i2_s.gguf",
                           "/vocab/ggml-vocab-llama-spm.gguf"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char p[512];
        snprintf(p, sizeof p, "%s%s", KVLM_MODELS_DIR, files[i]);
        if (kv_gguf_open(p, &g, &err) != KVLM_OK) fail_msg("%s: %s", p, err.msg);
        kv_gguf_close(g);
    }
    /* I2_S: per-tensor size is n/4 packed bytes plus a 32-byte scale tail */
    char p[512];
    snprintf(p, sizeof p, "%s/bitnet/synth-bitnet-b158-v512-i2_s.gguf", KVLM_MODELS_DIR);
    assert_int_equal(kv_gguf_open(p, &g, &err), KVLM_OK);
    const gguf_tensor *t = kv_gguf_find_tensor(g, "blk.0.attn_q.weight");
    assert_non_null(t);
    assert_int_equal(t->type, KV_I2_S);
    assert_int_equal(t->n_bytes, 512 * 512 / 4 + 32);
    kv_gguf_close(g);
}

/* Special files as a model path are refused at once, naming what they are; a
 * FIFO must not block the open waiting for a writer (alarm turns a hang into a
 * failure). */
static void test_special_files(void **state) {
    (void)state;
    gguf_ctx *g = NULL;
    kvlm_error err;
    char dir[] = "/tmp/kvlm-test-gguf-dir-XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_int_equal(kv_gguf_open(dir, &g, &err), KVLM_ERR_IO);
    assert_non_null(strstr(err.msg, "a directory"));
    assert_null(g);
    char fifo[600];
    snprintf(fifo, sizeof fifo, "%s/fifo.gguf", dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    alarm(20);
    assert_int_equal(kv_gguf_open(fifo, &g, &err), KVLM_ERR_IO);
    alarm(0);
    assert_non_null(strstr(err.msg, "a FIFO"));
    assert_null(g);
    assert_int_equal(kv_gguf_open("/dev/null", &g, &err), KVLM_ERR_IO);
    assert_non_null(strstr(err.msg, "a character device"));
    unlink(fifo);
    rmdir(dir);
}

/* Random single-byte corruptions of a real file's header and metadata never
 * crash the reader (ASan/UBSan builds turn any overread into a failure). */
static void test_random_corruption(void **state) {
    (void)state;
    char p[512];
    snprintf(p, sizeof p, "%s/llama/aidreams260K-f32.gguf", KVLM_MODELS_DIR);
    FILE *fp = fopen(p, "rb");
    assert_non_null(fp);
    static uint8_t buf[1 << 21];
    size_t n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    assert_true(n > 100000);
    gguf_ctx *g;
    kvlm_error err;
    assert_int_equal(kv_gguf_open_buffer(buf, n, &g, &err), KVLM_OK);
    const size_t header = (size_t)g->data_offset;
    kv_gguf_close(g);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    int rejected = 0;
    for (int it = 0; it < 3000; it++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        size_t at = (size_t)(x % header);
        uint8_t old = buf[at];
        buf[at] ^= (uint8_t)(1u << (x >> 61)) | (uint8_t)((x >> 32) & 0xff);
        if (buf[at] == old) buf[at] ^= 0x80;
        kvlm_status st = kv_gguf_open_buffer(buf, n, &g, &err);
        if (st == KVLM_OK) kv_gguf_close(g);
        else rejected++;
        buf[at] = old;
    }
    assert_true(rejected > 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),          cmocka_unit_test(test_truncated_everywhere),
        cmocka_unit_test(test_bad_magic_and_version), cmocka_unit_test(test_huge_counts),
        cmocka_unit_test(test_huge_string_length),    cmocka_unit_test(test_bad_value_types),
        cmocka_unit_test(test_bad_tensors),    cmocka_unit_test(test_files),
        cmocka_unit_test(test_random_corruption), cmocka_unit_test(test_special_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
