/* The GGUF writer (src/gguf/gguf_write.h) and the tools built on it:
 * `kvlm synth` (random-weight models of every architecture and type) and
 * `kvlm quantize` (byte-identical to llama-quantize for the same choices). */
#include <math.h>
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
#include "gguf/gguf_write.h"
#include "kvlm.h"
#include "quant/quant.h"
#include "test_util.h"

#define KVLM KVLM_BIN_DIR "/kvlm"
#define MODELS KVLM_MODELS_DIR

static char g_dir[64];
static char g_out[1 << 16];

static int setup_dir(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/kvlm-test-tools-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int remove_dir(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* g_dir/name: a file in this run's temporary directory. */
static const char *work_path(const char *name, char *buf, size_t cap) {
    snprintf(buf, cap, "%s/%s", g_dir, name);
    return buf;
}

#define run(...) run_into(g_out, sizeof g_out, __VA_ARGS__)

static uint64_t file_size(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* No leftover temporary files ("*.tmp.*") in the test folder. */
static void assert_no_temp_files(void) {
    assert_int_equal(run("ls -a '%s' | grep -c '\\.tmp\\.' || true", g_dir), 0);
    assert_int_equal(atoi(g_out), 0);
}

/* ------------------------------------------------------------ writer */

static kvlm_status fill_ramp(void *user, const char *name, void *dst, uint64_t size, kvlm_error *err) {
    (void)err;
    (void)name;
    float *f = dst;
    const float step = *(const float *)user;
    for (uint64_t i = 0; i < size / 4; i++) f[i] = step * (float)i;
    return KVLM_OK;
}

static kvlm_status fill_fails(void *user, const char *name, void *dst, uint64_t size, kvlm_error *err) {
    (void)user;
    (void)dst;
    (void)size;
    if (err) {
        err->code = KVLM_ERR_INTERNAL;
        snprintf(err->msg, sizeof err->msg, "fill of %s failed on purpose", name);
    }
    return KVLM_ERR_INTERNAL;
}

typedef struct ttensor {
    const char *name;
    uint32_t n_dims;
    uint64_t ne[4];
    uint32_t type;
    bool fill;
} ttensor;

static const ttensor k_tensors[] = {
    {"a.f32", 1, {3, 1, 1, 1}, KV_F32, false},         {"b.f16", 2, {5, 3, 1, 1}, KV_F16, false},
    {"c.q8_0", 2, {64, 2, 1, 1}, KV_Q8_0, false},      {"d.four_dims", 4, {2, 3, 4, 5}, KV_F32, false},
    {"e.i2_s", 2, {128, 2, 1, 1}, KV_I2_S, false},     {"f.filled", 1, {7, 1, 1, 1}, KV_F32, true},
    {"g.q4_k", 2, {256, 1, 1, 1}, KV_Q4_K, false},     {"h.bf16", 3, {1, 1, 1, 1}, KV_BF16, false},
};
#define N_TENSORS (sizeof k_tensors / sizeof k_tensors[0])

static const uint8_t k_u8[3] = {0, 7, 255};
static const int8_t k_i8[3] = {-128, 0, 127};
static const uint16_t k_u16[3] = {1, 2, 65535};
static const int16_t k_i16[3] = {-32768, 5, 32767};
static const uint32_t k_u32[3] = {0, 123456789, 4294967295u};
static const int32_t k_i32[3] = {-2147483647 - 1, -1, 2147483647};
static const uint64_t k_u64[3] = {0, 1ull << 40, 18446744073709551615ull};
static const int64_t k_i64[3] = {INT64_MIN, -7, INT64_MAX};
static const float k_f32[3] = {-1.5f, 0.0f, 3.0e38f};
static const double k_f64[3] = {-1e300, 0.25, 1e-300};
static const uint8_t k_bool[3] = {1, 0, 1};
static const char *const k_strs[4] = {"x", "", "\xe2\x96\x81yz", "tab\there"};

/* A writer holding every metadata type and the tensors above (data in tdata). */
static gguf_writer *make_writer(uint32_t alignment, uint8_t **tdata, uint64_t *tsize, float *step) {
    gguf_writer *w;
    kvlm_error err;
    assert_int_equal(kv_gguf_writer_new(&w, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_u32(w, "t.replaced", 1, &err), KVLM_OK);
    if (alignment) assert_int_equal(kv_gguf_writer_set_alignment(w, alignment, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_u8(w, "t.u8", 250, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_i8(w, "t.i8", -100, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_u16(w, "t.u16", 65000, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_i16(w, "t.i16", -30000, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_u32(w, "t.u32", 4000000000u, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_i32(w, "t.i32", -2000000000, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_u64(w, "t.u64", (1ull << 60) + 3, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_i64(w, "t.i64", -(1ll << 60), &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_f32(w, "t.f32", 3.25f, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_f64(w, "t.f64", -1e300, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_bool(w, "t.bool", true, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_str(w, "t.str", "hello \xe2\x96\x81 world", &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_strn(w, "t.strn", "a\0b", 3, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_str(w, "t.empty", "", &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_arr(w, "a.u8", GGUF_UINT8, k_u8, 3, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_arr(w, "a.i8", GGUF_INT8, k_i8, 3, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_arr(w, "a.u16", GGUF_UINT16, k_u16, 3, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_arr(w, "a.i16", GGUF_INT16, k_i16, 3, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_arr(w, "a.u32", GGUF_UINT32, k_u32, 3, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_arr(w, "a.i32", GGUF_INT32, k_i32, 3, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_arr(w, "a.u64", GGUF_UINT64, k_u64, 3, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_arr(w, "a.i64", GGUF_INT64, k_i64, 3, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_arr(w, "a.f32", GGUF_FLOAT32, k_f32, 3, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_arr(w, "a.f64", GGUF_FLOAT64, k_f64, 3, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_arr(w, "a.bool", GGUF_BOOL, k_bool, 3, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_arr_str(w, "a.str", k_strs, 4, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_arr(w, "a.empty", GGUF_INT32, NULL, 0, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_arr_str(w, "a.empty_str", NULL, 0, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_str(w, "t.removed", "gone", &err), KVLM_OK);
    assert_true(kv_gguf_writer_remove(w, "t.removed"));
    assert_false(kv_gguf_writer_remove(w, "t.removed"));
    assert_int_equal(kv_gguf_writer_set_u32(w, "t.replaced", 2, &err), KVLM_OK); /* moves to the end */

    /* tensor bytes: a pattern per tensor */
    uint64_t total = 0, off[N_TENSORS];
    for (size_t i = 0; i < N_TENSORS; i++) {
        const ttensor *t = &k_tensors[i];
        uint64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3], b;
        assert_true(kv_dtype_tensor_bytes(t->type, t->ne[0], n, &b));
        off[i] = total;
        tsize[i] = b;
        total += b;
    }
    *tdata = malloc((size_t)total);
    assert_non_null(*tdata);
    for (uint64_t i = 0; i < total; i++) (*tdata)[i] = (uint8_t)(i * 31 + 7);
    /* q8_0 / q4_k / bf16 scales must not be NaN for nobody's sake; i2_s scale tail: a finite f32 */
    for (size_t i = 0; i < N_TENSORS; i++) {
        const ttensor *t = &k_tensors[i];
        if (t->fill) {
            assert_int_equal(kv_gguf_writer_add_tensor_fill(w, t->name, t->n_dims, t->ne, t->type, fill_ramp, step, &err),
                             KVLM_OK);
            float *f = (float *)(*tdata + off[i]);
            for (uint64_t j = 0; j < tsize[i] / 4; j++) memcpy(&f[j], &(float){*step * (float)j}, 4);
        } else {
            assert_int_equal(
                kv_gguf_writer_add_tensor(w, t->name, t->n_dims, t->ne, t->type, *tdata + off[i], tsize[i], &err),
                KVLM_OK);
        }
    }
    assert_int_equal(kv_gguf_writer_n_tensors(w), N_TENSORS);
    return w;
}

static void check_array(const gguf_ctx *g, const char *key, gguf_vtype t, const void *vals, uint64_t n, size_t es) {
    const gguf_kv *kv = kv_gguf_find(g, key);
    assert_non_null(kv);
    assert_int_equal(kv->type, GGUF_ARRAY);
    assert_int_equal(kv->arr_type, t);
    assert_int_equal(kv->arr_n, n);
    if (n) assert_memory_equal(kv->arr_data, vals, (size_t)n * es);
}

/* Writer -> reader for every metadata type, at several alignments; the
 * layout follows ggml's rules (offsets are the running sum of padded sizes). */
static void test_writer_roundtrip(void **state) {
    (void)state;
    const uint32_t aligns[] = {0, 1, 8, 64, 4096};
    for (size_t ai = 0; ai < sizeof aligns / sizeof aligns[0]; ai++) {
        const uint32_t align = aligns[ai] ? aligns[ai] : 32;
        uint8_t *tdata;
        uint64_t tsize[N_TENSORS];
        float step = 1.5f;
        gguf_writer *w = make_writer(aligns[ai], &tdata, tsize, &step);
        char path[256], name[64];
        snprintf(name, sizeof name, "rt-%u.gguf", aligns[ai]);
        work_path(name, path, sizeof path);
        kvlm_error err;
        assert_int_equal(kv_gguf_writer_write(w, path, &err), KVLM_OK);
        uint64_t expect_size;
        assert_true(kv_gguf_writer_file_size(w, &expect_size));
        assert_int_equal(file_size(path), expect_size);
        assert_int_equal(expect_size % align, 0);

        gguf_ctx *g;
        if (kv_gguf_open(path, &g, &err) != KVLM_OK) fail_msg("kv_gguf_open: %s", err.msg);
        assert_int_equal(g->version, 3);
        assert_int_equal(g->alignment, align);
        assert_int_equal(g->n_kv, kv_gguf_writer_n_kv(w));
        assert_true((kv_gguf_find(g, "general.alignment") != NULL) == (aligns[ai] != 0));
        assert_null(kv_gguf_find(g, "t.removed"));
        /* the replaced key is last, with its new value */
        assert_string_equal(g->kv[g->n_kv - 1].key, "t.replaced");
        assert_int_equal(g->kv[g->n_kv - 1].v.u64, 2);
        const gguf_kv *kv;
        assert_non_null(kv = kv_gguf_find(g, "t.u8"));
        assert_true(kv->type == GGUF_UINT8 && kv->v.u64 == 250);
        assert_non_null(kv = kv_gguf_find(g, "t.i8"));
        assert_true(kv->type == GGUF_INT8 && kv->v.i64 == -100);
        assert_non_null(kv = kv_gguf_find(g, "t.u16"));
        assert_true(kv->type == GGUF_UINT16 && kv->v.u64 == 65000);
        assert_non_null(kv = kv_gguf_find(g, "t.i16"));
        assert_true(kv->type == GGUF_INT16 && kv->v.i64 == -30000);
        assert_non_null(kv = kv_gguf_find(g, "t.u32"));
        assert_true(kv->type == GGUF_UINT32 && kv->v.u64 == 4000000000u);
        assert_non_null(kv = kv_gguf_find(g, "t.i32"));
        assert_true(kv->type == GGUF_INT32 && kv->v.i64 == -2000000000);
        assert_non_null(kv = kv_gguf_find(g, "t.u64"));
        assert_true(kv->type == GGUF_UINT64 && kv->v.u64 == (1ull << 60) + 3);
        assert_non_null(kv = kv_gguf_find(g, "t.i64"));
        assert_true(kv->type == GGUF_INT64 && kv->v.i64 == -(1ll << 60));
        assert_non_null(kv = kv_gguf_find(g, "t.f32"));
        assert_true(kv->type == GGUF_FLOAT32 && kv->v.f64 == 3.25);
        assert_non_null(kv = kv_gguf_find(g, "t.f64"));
        assert_true(kv->type == GGUF_FLOAT64 && kv->v.f64 == -1e300);
        assert_non_null(kv = kv_gguf_find(g, "t.bool"));
        assert_true(kv->type == GGUF_BOOL && kv->v.u64 == 1);
        gguf_str s;
        assert_true(kv_gguf_get_str(g, "t.str", &s) && kv_gguf_str_eq(s, "hello \xe2\x96\x81 world"));
        assert_true(kv_gguf_get_str(g, "t.strn", &s) && s.len == 3 && memcmp(s.data, "a\0b", 3) == 0);
        assert_true(kv_gguf_get_str(g, "t.empty", &s) && s.len == 0);
        check_array(g, "a.u8", GGUF_UINT8, k_u8, 3, 1);
        check_array(g, "a.i8", GGUF_INT8, k_i8, 3, 1);
        check_array(g, "a.u16", GGUF_UINT16, k_u16, 3, 2);
        check_array(g, "a.i16", GGUF_INT16, k_i16, 3, 2);
        check_array(g, "a.u32", GGUF_UINT32, k_u32, 3, 4);
        check_array(g, "a.i32", GGUF_INT32, k_i32, 3, 4);
        check_array(g, "a.u64", GGUF_UINT64, k_u64, 3, 8);
        check_array(g, "a.i64", GGUF_INT64, k_i64, 3, 8);
        check_array(g, "a.f32", GGUF_FLOAT32, k_f32, 3, 4);
        check_array(g, "a.f64", GGUF_FLOAT64, k_f64, 3, 8);
        check_array(g, "a.bool", GGUF_BOOL, k_bool, 3, 1);
        check_array(g, "a.empty", GGUF_INT32, NULL, 0, 4);
        assert_non_null(kv = kv_gguf_find(g, "a.str"));
        assert_true(kv->type == GGUF_ARRAY && kv->arr_type == GGUF_STRING && kv->arr_n == 4);
        for (int i = 0; i < 4; i++) assert_true(kv_gguf_str_eq(kv->arr_str[i], k_strs[i]));
        assert_non_null(kv = kv_gguf_find(g, "a.empty_str"));
        assert_true(kv->type == GGUF_ARRAY && kv->arr_type == GGUF_STRING && kv->arr_n == 0);

        /* tensors: order, shape, type, offsets as ggml computes them, bytes */
        assert_int_equal(g->n_tensors, N_TENSORS);
        assert_int_equal(g->data_offset % align, 0);
        uint64_t expect_off = 0, src = 0;
        for (size_t i = 0; i < N_TENSORS; i++) {
            const gguf_tensor *t = &g->tensors[i];
            assert_string_equal(t->name, k_tensors[i].name);
            assert_int_equal(t->n_dims, k_tensors[i].n_dims);
            for (int d = 0; d < 4; d++) assert_int_equal(t->ne[d], k_tensors[i].ne[d]);
            assert_int_equal(t->type, k_tensors[i].type);
            assert_int_equal(t->offset, expect_off);
            assert_int_equal(t->n_bytes, tsize[i]);
            assert_memory_equal(t->data, tdata + src, (size_t)tsize[i]);
            expect_off += (tsize[i] + align - 1) / align * align;
            src += tsize[i];
        }
        assert_int_equal(g->data_offset + expect_off, expect_size);
        /* padding is zeros */
        const uint8_t *end_of_last = (const uint8_t *)g->tensors[N_TENSORS - 1].data + tsize[N_TENSORS - 1];
        for (const uint8_t *p = end_of_last; p < g->base + g->size; p++) assert_int_equal(*p, 0);

        /* every value type copied from the reader (kv_gguf_writer_set_kv) writes the same file again */
        gguf_writer *w2;
        assert_int_equal(kv_gguf_writer_new(&w2, &err), KVLM_OK);
        for (uint64_t i = 0; i < g->n_kv; i++) assert_int_equal(kv_gguf_writer_set_kv(w2, &g->kv[i], &err), KVLM_OK);
        for (uint64_t i = 0; i < g->n_tensors; i++) {
            const gguf_tensor *t = &g->tensors[i];
            assert_int_equal(kv_gguf_writer_add_tensor(w2, t->name, t->n_dims, t->ne, t->type, t->data, t->n_bytes, &err),
                             KVLM_OK);
        }
        char path2[256];
        work_path("rt-copy.gguf", path2, sizeof path2);
        assert_int_equal(kv_gguf_writer_write(w2, path2, &err), KVLM_OK);
        assert_true(files_equal(path, path2));
        kv_gguf_writer_free(w2);
        unlink(path2);
        kv_gguf_close(g);
        kv_gguf_writer_free(w);
        free(tdata);
    }
    assert_no_temp_files();
}

/* A reader's metadata and tensors copied through the writer give back the very
 * same file (aidreams260K-f32.gguf was written by llama.cpp's converter). */
static void test_writer_copies_file(void **state) {
    (void)state;
    const char *in = MODELS "/llama/aidreams260K-f32.gguf";
    gguf_ctx *g;
    kvlm_error err;
    if (kv_gguf_open(in, &g, &err) != KVLM_OK) fail_msg("%s", err.msg);
    gguf_writer *w;
    assert_int_equal(kv_gguf_writer_new(&w, &err), KVLM_OK);
    for (uint64_t i = 0; i < g->n_kv; i++) assert_int_equal(kv_gguf_writer_set_kv(w, &g->kv[i], &err), KVLM_OK);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const gguf_tensor *t = &g->tensors[i];
        assert_int_equal(kv_gguf_writer_add_tensor(w, t->name, t->n_dims, t->ne, t->type, t->data, t->n_bytes, &err),
                         KVLM_OK);
    }
    char path[256];
    work_path("copy.gguf", path, sizeof path);
    assert_int_equal(kv_gguf_writer_write(w, path, &err), KVLM_OK);
    assert_true(files_equal(in, path));
    kv_gguf_writer_free(w);
    kv_gguf_close(g);
}

/* Bad arguments fail with a message, leave the writer unchanged and make the
 * final write fail; a failed write leaves neither the file nor a temporary. */
static void test_writer_errors(void **state) {
    (void)state;
    gguf_writer *w;
    kvlm_error err;
    float f[4] = {0};
    const uint64_t ne1[1] = {4}, ne_q8[2] = {48, 1}, ne0[1] = {0};
    char path[256];
    work_path("never.gguf", path, sizeof path);

    assert_int_equal(kv_gguf_writer_new(&w, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_add_tensor(w, "x", 1, ne1, KV_F32, f, 16, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_add_tensor(w, "x", 1, ne1, KV_F32, f, 16, &err), KVLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "duplicate"));
    assert_int_equal(kv_gguf_writer_n_tensors(w), 1);
    assert_int_equal(kv_gguf_writer_write(w, path, &err), KVLM_ERR_INVALID_ARG); /* sticky */
    assert_non_null(strstr(err.msg, "duplicate"));
    assert_int_equal(file_size(path), 0);
    kv_gguf_writer_free(w);

    struct {
        const char *name;
        uint32_t n_dims;
        const uint64_t *ne;
        uint32_t type;
        uint64_t size;
        const char *msg;
    } bad[] = {
        {"", 1, ne1, KV_F32, 16, "name"},
        {"0123456789012345678901234567890123456789012345678901234567890123", 1, ne1, KV_F32, 16, "name"},
        {"y", 0, ne1, KV_F32, 16, "dimensions"},
        {"y", 5, ne1, KV_F32, 16, "dimensions"},
        {"y", 1, ne0, KV_F32, 0, "dimension"},
        {"y", 1, ne1, 4, 16, "unknown type"},
        {"y", 2, ne_q8, KV_Q8_0, 34, "multiple"},
        {"y", 1, ne1, KV_F32, 12, "bytes"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(kv_gguf_writer_new(&w, &err), KVLM_OK);
        assert_int_equal(kv_gguf_writer_add_tensor(w, bad[i].name, bad[i].n_dims, bad[i].ne, bad[i].type, f, bad[i].size, &err),
                         KVLM_ERR_INVALID_ARG);
        if (!strstr(err.msg, bad[i].msg)) fail_msg("case %zu: '%s' lacks '%s'", i, err.msg, bad[i].msg);
        assert_int_equal(kv_gguf_writer_n_tensors(w), 0);
        assert_int_not_equal(kv_gguf_writer_write(w, path, &err), KVLM_OK);
        kv_gguf_writer_free(w);
    }

    /* metadata */
    assert_int_equal(kv_gguf_writer_new(&w, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_set_alignment(w, 24, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kv_gguf_writer_set_alignment(w, 0, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kv_gguf_writer_set_str(w, "general.alignment", "32", &err), KVLM_ERR_INVALID_ARG);
    assert_false(kv_gguf_writer_has(w, "general.alignment"));
    assert_int_equal(kv_gguf_writer_set_u32(w, "", 1, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kv_gguf_writer_set_arr(w, "k", GGUF_STRING, f, 1, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kv_gguf_writer_n_kv(w), 0);
    assert_int_equal(kv_gguf_writer_write(w, path, &err), KVLM_ERR_INVALID_ARG);
    kv_gguf_writer_free(w);

    /* a fill that fails, an unwritable folder: no file, no temporary */
    assert_int_equal(kv_gguf_writer_new(&w, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_add_tensor_fill(w, "z", 1, ne1, KV_F32, fill_fails, NULL, &err), KVLM_OK);
    assert_int_equal(kv_gguf_writer_write(w, path, &err), KVLM_ERR_INTERNAL);
    assert_non_null(strstr(err.msg, "on purpose"));
    assert_int_equal(file_size(path), 0);
    assert_int_equal(kv_gguf_writer_write(w, "/nonexistent-dir/x.gguf", &err), KVLM_ERR_IO);
    kv_gguf_writer_free(w);
    assert_no_temp_files();

    /* an existing file is replaced whole */
    assert_int_equal(kv_gguf_writer_new(&w, &err), KVLM_OK);
    kv_gguf_writer_set_str(w, "k", "first", NULL);
    assert_int_equal(kv_gguf_writer_write(w, path, &err), KVLM_OK);
    kv_gguf_writer_set_str(w, "k", "second, longer value", NULL);
    assert_int_equal(kv_gguf_writer_write(w, path, &err), KVLM_OK);
    kv_gguf_writer_free(w);
    gguf_ctx *g;
    assert_int_equal(kv_gguf_open(path, &g, &err), KVLM_OK);
    gguf_str s;
    assert_true(kv_gguf_get_str(g, "k", &s) && kv_gguf_str_eq(s, "second, longer value"));
    assert_int_equal(g->n_tensors, 0);
    kv_gguf_close(g);
    unlink(path);
    assert_no_temp_files();
}

/* ------------------------------------------------------------ model checks */

/* Loads path, evaluates a prompt through a session: finite logits that are not all equal. */
static void eval_model(const char *path, const char *arch, int32_t n_head_kv, bool tied, float *logits_out,
                       int32_t *n_vocab_out) {
    kvlm_model_params mp = kvlm_model_default_params();
    kvlm_model *m;
    kvlm_error err;
    if (kvlm_model_load(path, &mp, &m, &err) != KVLM_OK) fail_msg("%s: %s", path, err.msg);
    kvlm_model_info mi;
    kvlm_model_get_info(m, &mi);
    if (arch) assert_string_equal(mi.arch, arch);
    if (n_head_kv > 0) assert_int_equal(mi.n_head_kv, n_head_kv);
    assert_int_equal(mi.tied_output, tied);
    const int32_t nv = kvlm_n_vocab(m);
    kvlm_token toks[64];
    int32_t n = kvlm_tokenize(m, "hello world, the robot", 22, toks, 64, true, false);
    assert_true(n > 1 && n <= 64);
    kvlm_session_params sp = kvlm_session_default_params();
    sp.n_ctx = 128;
    kvlm_session *s;
    if (kvlm_session_new(m, &sp, &s, &err) != KVLM_OK) fail_msg("%s", err.msg);
    float *lg = malloc((size_t)nv * sizeof *lg);
    assert_non_null(lg);
    if (kvlm_eval(s, toks, n, 0, lg, false, &err) != KVLM_OK) fail_msg("%s: %s", path, err.msg);
    float lo = lg[0], hi = lg[0];
    for (int32_t i = 0; i < nv; i++) {
        if (!isfinite(lg[i])) fail_msg("%s: logit %d is %g", path, i, lg[i]);
        lo = fminf(lo, lg[i]);
        hi = fmaxf(hi, lg[i]);
    }
    assert_true(hi > lo);
    if (logits_out) memcpy(logits_out, lg, (size_t)nv * sizeof *lg);
    if (n_vocab_out) *n_vocab_out = nv;
    free(lg);
    kvlm_session_free(s);
    kvlm_model_free(m);
}

static uint32_t tensor_type(const gguf_ctx *g, const char *name) {
    const gguf_tensor *t = kv_gguf_find_tensor(g, name);
    if (!t) fail_msg("no tensor %s", name);
    return t->type;
}

/* Every value of a weight, dequantized (I2_S: with its scale). */
static float *dequant(const gguf_tensor *t) {
    float *x = malloc((size_t)t->n_elements * sizeof *x);
    assert_non_null(x);
    const kv_quant_traits *q = kv_quant_get(t->type);
    assert_non_null(q);
    uint64_t rb;
    assert_true(kv_dtype_row_bytes(t->type, t->ne[0], &rb));
    for (uint64_t r = 0; r < t->n_elements / t->ne[0]; r++)
        q->to_float((const uint8_t *)t->data + r * rb, x + r * t->ne[0], (int64_t)t->ne[0]);
    if (t->type == KV_I2_S) {
        float s; /* the f32 scale after the packed values */
        memcpy(&s, (const uint8_t *)t->data + t->n_elements / 4, 4);
        for (uint64_t i = 0; i < t->n_elements; i++) x[i] *= s;
    }
    return x;
}

/* Ternary weights: every value is -s, 0 or +s for one s > 0 (allowing for an f16/bf16 scale). */
static void assert_ternary(const gguf_tensor *t) {
    float *x = dequant(t);
    float s = 0.0f;
    uint64_t counts[3] = {0};
    for (uint64_t i = 0; i < t->n_elements; i++) s = fmaxf(s, fabsf(x[i]));
    assert_true(s > 0.0f);
    for (uint64_t i = 0; i < t->n_elements; i++) {
        float a = fabsf(x[i]);
        if (a == 0.0f) counts[1]++;
        else if (fabsf(a - s) <= s * 1e-3f) counts[x[i] > 0 ? 2 : 0]++;
        else fail_msg("%s: value %g is not 0 or +-%g", t->name, x[i], s);
    }
    for (int k = 0; k < 3; k++) assert_true(counts[k] > t->n_elements / 5); /* about a third each */
    free(x);
}

/* ------------------------------------------------------------ synth */

typedef struct synth_case {
    const char *arch, *type, *shape;
    int32_t kv_heads;
    bool tied;
    const char *w, *embd, *out, *down; /* expected types of attn_q, token_embd, output, ffn_down */
} synth_case;

static void test_synth_archs_and_types(void **state) {
    (void)state;
    const synth_case cases[] = {
        {"llama", "f16", "--heads 8 --kv-heads 2 --ff 768", 2, false, "f16", "f16", "f16", "f16"},
        {"llama", "q8_0", "--heads 8 --kv-heads 2 --ff 768", 2, false, "q8_0", "q8_0", "q8_0", "q8_0"},
        {"llama", "q4_0", "--heads 8 --kv-heads 4 --ff 640 --tied", 4, true, "q4_0", "q6_K", NULL, "q4_0"},
        {"llama", "q4_k", "--heads 8 --kv-heads 2 --ff 640", 2, false, "q4_K", "q4_K", "q6_K", "q5_0"},
        {"llama", "q6_k", "--heads 4 --ff 768", 4, false, "q6_K", "q6_K", "q6_K", "q6_K"},
        {"llama", "tq2_0", "--heads 4 --ff 512", 4, false, "tq2_0", "q8_0", "q8_0", "tq2_0"},
        {"qwen2", "q8_0", "--heads 4 --kv-heads 2 --ff 512", 2, false, "q8_0", "q8_0", "q8_0", "q8_0"},
        {"qwen2", "q4_k", "--heads 4 --kv-heads 1 --ff 512 --tied", 1, true, "q4_K", "q6_K", NULL, "q4_K"},
        {"bitnet", "tq2_0", "--heads 4 --ff 512", 4, true, "tq2_0", "q8_0", NULL, "tq2_0"},
        {"bitnet", "f16", "--heads 4 --kv-heads 2 --ff 640 --untied", 2, false, "f16", "f16", "f16", "f16"},
        /* 2B4T's published layout keeps the embedding in F16 (test_bitnet_layout) */
        {"bitnet-b1.58", "i2_s", "--heads 4 --kv-heads 1 --ff 640", 1, true, "i2_s", "f16", NULL, "i2_s"},
        {"bitnet-b1.58", "tq1_0", "--heads 4 --ff 640", 4, true, "tq1_0", "q8_0", NULL, "q4_0"},
        {"bitnet-b1.58", "f32", "--heads 2 --ff 384 --embd-type q4_0", 2, true, "f32", "q4_0", NULL, "f32"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const synth_case *c = &cases[i];
        char path[256], name[64];
        snprintf(name, sizeof name, "synth-%zu.gguf", i);
        work_path(name, path, sizeof path);
        int rc = run("%s synth %s --arch %s --dim 256 --layers 2 --vocab 600 --ctx 256 --seed %zu -t 2 %s --type %s",
                     KVLM, path, c->arch, i, c->shape, c->type);
        if (rc != 0) fail_msg("case %zu (%s %s): exit %d: %s", i, c->arch, c->type, rc, g_out);
        assert_non_null(strstr(g_out, "params"));

        gguf_ctx *g;
        kvlm_error err;
        if (kv_gguf_open(path, &g, &err) != KVLM_OK) fail_msg("%s", err.msg);
        assert_string_equal(kv_dtype_name(tensor_type(g, "blk.1.attn_q.weight")), c->w);
        assert_string_equal(kv_dtype_name(tensor_type(g, "token_embd.weight")), c->embd);
        if (c->out) assert_string_equal(kv_dtype_name(tensor_type(g, "output.weight")), c->out);
        else assert_null(kv_gguf_find_tensor(g, "output.weight"));
        assert_string_equal(kv_dtype_name(tensor_type(g, "blk.0.ffn_down.weight")), c->down);
        assert_int_equal(tensor_type(g, "blk.0.attn_norm.weight"), KV_F32);
        uint32_t ft;
        assert_true(kv_gguf_get_u32(g, "general.file_type", &ft));
        const bool bitnet = strncmp(c->arch, "bitnet", 6) == 0;
        if (bitnet) {
            assert_ternary(kv_gguf_find_tensor(g, "blk.0.attn_k.weight"));
            assert_ternary(kv_gguf_find_tensor(g, "blk.1.ffn_up.weight"));
            const gguf_tensor *sn = kv_gguf_find_tensor(g, "blk.0.ffn_sub_norm.weight");
            assert_non_null(sn);
            const float *v = sn->data;
            bool differ = false;
            for (uint64_t k = 0; k < sn->n_elements; k++) {
                assert_true(v[k] >= 0.9f && v[k] <= 1.1f);
                differ |= v[k] != v[0];
            }
            assert_true(differ);
            assert_non_null(kv_gguf_find_tensor(g, "blk.1.attn_sub_norm.weight"));
        }
        if (strcmp(c->arch, "qwen2") == 0) {
            const gguf_tensor *b = kv_gguf_find_tensor(g, "blk.1.attn_k.bias");
            assert_non_null(b);
            assert_int_equal(b->type, KV_F32);
            assert_true(((const float *)b->data)[0] != 0.0f);
        }
        kv_gguf_close(g);
        eval_model(path, c->arch, c->kv_heads, c->tied, NULL, NULL);
        unlink(path);
    }
}

/* Same seed: the same bytes whatever the thread count; another seed: other weights. */
static void test_synth_deterministic(void **state) {
    (void)state;
    char a[256], b[256], c[256];
    work_path("det-a.gguf", a, sizeof a);
    work_path("det-b.gguf", b, sizeof b);
    work_path("det-c.gguf", c, sizeof c);
    const char *shape = "--arch llama --dim 128 --layers 1 --heads 4 --ff 256 --vocab 400 --type q4_0";
    assert_int_equal(run("%s synth %s %s --seed 7 -t 1", KVLM, a, shape), 0);
    assert_int_equal(run("%s synth %s %s --seed 7 -t 3", KVLM, b, shape), 0);
    assert_int_equal(run("%s synth %s %s --seed 8", KVLM, c, shape), 0);
    assert_true(files_equal(a, b));
    assert_false(files_equal(a, c));
    assert_int_equal(file_size(a), file_size(c));
    /* the distributions: embedding sd 0.02, matrices sd 1/sqrt(fan_in), norms 1 */
    assert_int_equal(run("%s synth %s %s --seed 7 --type f32", KVLM, c, shape), 0);
    gguf_ctx *g;
    kvlm_error err;
    assert_int_equal(kv_gguf_open(c, &g, &err), KVLM_OK);
    const char *names[] = {"token_embd.weight", "blk.0.ffn_down.weight", "blk.0.attn_q.weight", "output.weight"};
    const double sds[] = {0.02, 1.0 / 16.0, 1.0 / sqrt(128.0), 1.0 / sqrt(128.0)};
    for (int k = 0; k < 4; k++) {
        const gguf_tensor *t = kv_gguf_find_tensor(g, names[k]);
        assert_non_null(t);
        const float *x = t->data;
        double s1 = 0, s2 = 0;
        for (uint64_t i = 0; i < t->n_elements; i++) {
            s1 += x[i];
            s2 += (double)x[i] * x[i];
        }
        double mean = s1 / (double)t->n_elements, sd = sqrt(s2 / (double)t->n_elements - mean * mean);
        if (fabs(sd / sds[k] - 1.0) > 0.05 || fabs(mean) > sds[k] * 0.05)
            fail_msg("%s: mean %g sd %g, expected sd %g", names[k], mean, sd, sds[k]);
    }
    const gguf_tensor *n = kv_gguf_find_tensor(g, "blk.0.ffn_norm.weight");
    for (uint64_t i = 0; i < n->n_elements; i++) assert_true(((const float *)n->data)[i] == 1.0f);
    kv_gguf_close(g);
    unlink(a);
    unlink(b);
    unlink(c);
}

/* --vocab-from copies every tokenizer.* key; the generated vocabulary is a
 * working SentencePiece one. */
static void test_synth_vocab(void **state) {
    (void)state;
    char path[256];
    work_path("vocab.gguf", path, sizeof path);
    const char *src = MODELS "/vocab/ggml-vocab-llama-spm.gguf";
    assert_int_equal(run("%s synth %s --arch llama --dim 64 --layers 1 --heads 2 --ff 128 --type q8_0 --vocab-from %s",
                         KVLM, path, src),
                     0);
    gguf_ctx *a, *b;
    kvlm_error err;
    assert_int_equal(kv_gguf_open(src, &a, &err), KVLM_OK);
    assert_int_equal(kv_gguf_open(path, &b, &err), KVLM_OK);
    int n_tok_keys = 0;
    for (uint64_t i = 0; i < a->n_kv; i++) {
        const gguf_kv *x = &a->kv[i];
        if (strncmp(x->key, "tokenizer.", 10) != 0) continue;
        n_tok_keys++;
        const gguf_kv *y = kv_gguf_find(b, x->key);
        if (!y) fail_msg("%s was not copied", x->key);
        assert_int_equal(x->type, y->type);
        if (x->type == GGUF_STRING) {
            assert_true(x->v.str.len == y->v.str.len && memcmp(x->v.str.data, y->v.str.data, x->v.str.len) == 0);
        } else if (x->type == GGUF_ARRAY) {
            assert_int_equal(x->arr_type, y->arr_type);
            assert_int_equal(x->arr_n, y->arr_n);
            for (uint64_t k = 0; k < x->arr_n; k++) {
                if (x->arr_type == GGUF_STRING) {
                    assert_int_equal(x->arr_str[k].len, y->arr_str[k].len);
                    assert_memory_equal(x->arr_str[k].data, y->arr_str[k].data, (size_t)x->arr_str[k].len);
                }
            }
            if (x->arr_type != GGUF_STRING) {
                uint64_t es = x->arr_type == GGUF_FLOAT32 || x->arr_type == GGUF_INT32 ? 4 : 1;
                assert_memory_equal(x->arr_data, y->arr_data, (size_t)(x->arr_n * es));
            }
        } else {
            assert_true(x->v.u64 == y->v.u64);
        }
    }
    assert_true(n_tok_keys >= 8);
    uint32_t nv;
    assert_true(kv_gguf_get_u32(b, "llama.vocab_size", &nv));
    assert_int_equal(nv, 32000);
    kv_gguf_close(a);
    kv_gguf_close(b);
    eval_model(path, "llama", 2, false, NULL, NULL);
    /* --vocab that disagrees with the file */
    assert_int_not_equal(run("%s synth %s --arch llama --dim 64 --layers 1 --heads 2 --ff 128 --type q8_0 --vocab 500 "
                             "--vocab-from %s",
                             KVLM, path, src),
                         0);
    assert_non_null(strstr(g_out, "differs"));

    /* the generated vocabulary */
    assert_int_equal(run("%s synth %s --arch llama --dim 64 --layers 1 --heads 2 --ff 128 --type f16 --vocab 3000", KVLM,
                         path),
                     0);
    kvlm_model_params mp = kvlm_model_default_params();
    mp.vocab_only = true;
    kvlm_model *m;
    assert_int_equal(kvlm_model_load(path, &mp, &m, &err), KVLM_OK);
    assert_int_equal(kvlm_n_vocab(m), 3000);
    assert_int_equal(kvlm_token_bos(m), 1);
    assert_int_equal(kvlm_token_eos(m), 2);
    const char *text = "hello world, The end! 42 \xc3\xa9";
    kvlm_token toks[64];
    int32_t n = kvlm_tokenize(m, text, strlen(text), toks, 64, true, false);
    assert_true(n > 2 && n < 40);
    assert_int_equal(toks[0], 1);
    char out[256] = "";
    size_t o = 0;
    for (int32_t i = 1; i < n; i++) {
        assert_int_not_equal(toks[i], 0); /* no <unk>: bytes fall back to <0xXX> */
        int32_t k = kvlm_token_to_piece(m, toks[i], out + o, (int32_t)(sizeof out - o - 1), false);
        assert_true(k >= 0);
        o += (size_t)k;
    }
    out[o] = '\0';
    assert_non_null(strstr(out, text));
    kvlm_model_free(m);
    unlink(path);
}

static void test_synth_errors(void **state) {
    (void)state;
    char path[256];
    work_path("bad.gguf", path, sizeof path);
    const char *ok = "--dim 64 --layers 1 --heads 2 --ff 128 --vocab 300";
    struct {
        const char *args;
        const char *msg;
    } bad[] = {
        {"--arch gpt9 --type q8_0", "not one of"},
        {"--arch llama --type q9_9", "unknown type"},
        {"--arch llama", "--type"},
        {"--arch llama --type q8_0 --kv-heads 3", "multiple of --kv-heads"},
        {"--arch llama --type q8_0 --embd-type i2_s", "i2_s"},
        {"--arch llama --type q8_0 --vocab-from /nonexistent.gguf", "/nonexistent.gguf"},
        {"--arch llama --type q8_0 --bogus 1", "unknown option"},
        {"--arch phi3 --type q8_0 --tied", "untied output"},
        {"--arch phi3 --type q8_0 --rope-scaling longrope", "needs --rope-orig-ctx"},
        {"--arch phi3 --type q8_0 --rope-dims 34", "exceeds the head size"},
        {"--arch llama --type q8_0 --sliding-window 8", "for --arch phi3"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = run("%s synth %s %s %s", KVLM, path, ok, bad[i].args);
        if (rc == 0 || !strstr(g_out, bad[i].msg)) fail_msg("case %zu: exit %d, output '%s'", i, rc, g_out);
        assert_int_equal(file_size(path), 0);
    }
    assert_int_not_equal(run("%s synth %s --arch llama --dim 66 --layers 1 --heads 2 --ff 128 --vocab 300 --type f16", KVLM,
                             path),
                         0); /* odd head size */
    assert_int_not_equal(run("%s synth %s --arch llama --dim 64 --layers 1 --heads 2 --ff 128 --vocab 100 --type f16", KVLM,
                             path),
                         0); /* vocabulary too small for the byte tokens */
    assert_int_equal(run("%s synth -h", KVLM), 0);
    assert_non_null(strstr(g_out, "--arch"));
    assert_no_temp_files();
}

/* ------------------------------------------------------------ quantize */

/* llama-quantize aidreams260K-f32.gguf ... Q6_K made every 64-column matrix
 * Q8_0 and the 172-column ffn_down F16; kvlm quantize q6_k reproduces every
 * tensor's bytes, and in fact the whole file. */
static void test_quantize_matches_llama_quantize(void **state) {
    (void)state;
    char path[256];
    work_path("q6k.gguf", path, sizeof path);
    const char *ref = MODELS "/llama/aidreams260K-q8_0-ffndown-f16.gguf";
    int rc = run("%s quantize %s/llama/aidreams260K-f32.gguf %s q6_k", KVLM, MODELS, path);
    if (rc != 0) fail_msg("exit %d: %s", rc, g_out);
    gguf_ctx *a, *b;
    kvlm_error err;
    assert_int_equal(kv_gguf_open(ref, &a, &err), KVLM_OK);
    assert_int_equal(kv_gguf_open(path, &b, &err), KVLM_OK);
    assert_int_equal(a->n_tensors, b->n_tensors);
    int n_q8 = 0, n_f16 = 0;
    for (uint64_t i = 0; i < a->n_tensors; i++) {
        const gguf_tensor *x = &a->tensors[i], *y = kv_gguf_find_tensor(b, x->name);
        if (!y) fail_msg("missing %s", x->name);
        assert_int_equal(x->type, y->type);
        assert_int_equal(x->n_dims, y->n_dims);
        for (int d = 0; d < 4; d++) assert_int_equal(x->ne[d], y->ne[d]);
        assert_int_equal(x->n_bytes, y->n_bytes);
        if (memcmp(x->data, y->data, (size_t)x->n_bytes) != 0) fail_msg("%s: bytes differ", x->name);
        n_q8 += x->type == KV_Q8_0;
        n_f16 += x->type == KV_F16;
    }
    assert_int_equal(n_q8, 2 + 4 * 6);
    assert_int_equal(n_f16, 4);
    uint32_t ft;
    assert_true(kv_gguf_get_u32(b, "general.file_type", &ft));
    assert_int_equal(ft, 18);
    kv_gguf_close(a);
    kv_gguf_close(b);
    assert_true(files_equal(ref, path)); /* metadata order and layout too */
    unlink(path);
}

static float max_abs_diff(const float *a, const float *b, int32_t n) {
    float m = 0.0f;
    for (int32_t i = 0; i < n; i++) m = fmaxf(m, fabsf(a[i] - b[i]));
    return m;
}

/* q8_0 / q4_0 / f16 / bf16 of aidreams: sensible tensor types, logits near the f32 model's. */
static void test_quantize_and_eval(void **state) {
    (void)state;
    const char *f32 = MODELS "/llama/aidreams260K-f32.gguf";
    float ref[512], lg[512];
    int32_t nv;
    eval_model(f32, "llama", 4, false, ref, &nv);
    assert_int_equal(nv, 512);
    struct {
        const char *type;
        uint32_t w, embd, out, down, ftype;
        float tol;
    } cases[] = {
        {"q8_0", KV_Q8_0, KV_Q8_0, KV_Q8_0, KV_F16, 7, 0.3f},
        {"q4_0", KV_Q4_0, KV_Q4_0, KV_Q8_0, KV_F16, 2, 3.0f},
        {"f16", KV_F16, KV_F16, KV_F16, KV_F16, 1, 0.02f},
        {"bf16", KV_BF16, KV_BF16, KV_BF16, KV_BF16, 32, 3.0f},
        {"q5_1", KV_Q5_1, KV_Q5_1, KV_Q8_0, KV_F16, 9, 1.0f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[256], name[64];
        snprintf(name, sizeof name, "aid-%s.gguf", cases[i].type);
        work_path(name, path, sizeof path);
        int rc = run("%s quantize %s %s %s", KVLM, f32, path, cases[i].type);
        if (rc != 0) fail_msg("%s: exit %d: %s", cases[i].type, rc, g_out);
        gguf_ctx *g;
        kvlm_error err;
        assert_int_equal(kv_gguf_open(path, &g, &err), KVLM_OK);
        assert_int_equal(tensor_type(g, "blk.2.attn_v.weight"), cases[i].w);
        assert_int_equal(tensor_type(g, "blk.2.ffn_up.weight"), cases[i].w);
        assert_int_equal(tensor_type(g, "token_embd.weight"), cases[i].embd);
        assert_int_equal(tensor_type(g, "output.weight"), cases[i].out);
        assert_int_equal(tensor_type(g, "blk.3.ffn_down.weight"), cases[i].down);
        assert_int_equal(tensor_type(g, "blk.3.ffn_norm.weight"), KV_F32);
        assert_int_equal(tensor_type(g, "output_norm.weight"), KV_F32);
        uint32_t ft, qv;
        assert_true(kv_gguf_get_u32(g, "general.file_type", &ft));
        assert_int_equal(ft, cases[i].ftype);
        assert_true(kv_gguf_get_u32(g, "general.quantization_version", &qv));
        assert_int_equal(qv, 2);
        gguf_str s;
        assert_true(kv_gguf_get_str(g, "tokenizer.ggml.model", &s) && kv_gguf_str_eq(s, "llama"));
        kv_gguf_close(g);
        if (cases[i].w == KV_Q8_0) {
            /* the same tensor types as llama-quantize's Q6_K attempt, so the same bytes */
            gguf_ctx *r;
            assert_int_equal(kv_gguf_open(MODELS "/llama/aidreams260K-q8_0-ffndown-f16.gguf", &r, &err), KVLM_OK);
            assert_int_equal(kv_gguf_open(path, &g, &err), KVLM_OK);
            for (uint64_t k = 0; k < r->n_tensors; k++) {
                const gguf_tensor *x = &r->tensors[k], *y = kv_gguf_find_tensor(g, x->name);
                assert_non_null(y);
                assert_int_equal(x->type, y->type);
                if (memcmp(x->data, y->data, (size_t)x->n_bytes) != 0) fail_msg("%s differs", x->name);
            }
            kv_gguf_close(r);
            kv_gguf_close(g);
        }
        eval_model(path, "llama", 4, false, lg, NULL);
        float d = max_abs_diff(ref, lg, nv);
        if (!(d <= cases[i].tol)) fail_msg("%s: logits differ from f32 by %g (tolerance %g)", cases[i].type, d, cases[i].tol);
        if (strcmp(cases[i].type, "bf16") == 0) {
            /* a BF16 (and an F16) input quantizes too */
            char p2[256];
            work_path("aid-bf16-q4_0.gguf", p2, sizeof p2);
            assert_int_equal(run("%s quantize %s %s q4_0", KVLM, path, p2), 0);
            eval_model(p2, "llama", 4, false, lg, NULL);
            assert_true(max_abs_diff(ref, lg, nv) <= 3.0f);
            unlink(p2);
        }
        unlink(path);
    }
    char path[256];
    work_path("aid-f16-q8_0.gguf", path, sizeof path);
    assert_int_equal(run("%s quantize %s/llama/aidreams260K-f16.gguf %s q8_0 --output-type f16 --embd-type q4_0", KVLM,
                         MODELS, path),
                     0);
    gguf_ctx *g;
    kvlm_error err;
    assert_int_equal(kv_gguf_open(path, &g, &err), KVLM_OK);
    assert_int_equal(tensor_type(g, "output.weight"), KV_F16);
    assert_int_equal(tensor_type(g, "token_embd.weight"), KV_Q4_0);
    assert_int_equal(tensor_type(g, "blk.0.attn_q.weight"), KV_Q8_0);
    kv_gguf_close(g);
    eval_model(path, "llama", 4, false, lg, NULL);
    assert_true(max_abs_diff(ref, lg, nv) <= 3.0f);
    unlink(path);
}

/* A synth F32 model quantized to q4_k --pure --output-tensor-type q6_k (q4_k alone is llama-quantize's
 * Q4_K_M mix): Q4_K weights, the output Q6_K, the fallbacks of llama-quantize. */
static void test_quantize_synth_kquants(void **state) {
    (void)state;
    char src[256], dst[256];
    work_path("ks-f32.gguf", src, sizeof src);
    work_path("ks-q4k.gguf", dst, sizeof dst);
    assert_int_equal(run("%s synth %s --arch qwen2 --dim 256 --layers 2 --heads 4 --kv-heads 2 --ff 640 --vocab 500 "
                         "--type f32",
                         KVLM, src),
                     0);
    int rc = run("%s quantize %s %s q4_k --pure --output-tensor-type q6_k", KVLM, src, dst);
    if (rc != 0) fail_msg("exit %d: %s", rc, g_out);
    gguf_ctx *g;
    kvlm_error err;
    assert_int_equal(kv_gguf_open(dst, &g, &err), KVLM_OK);
    assert_int_equal(tensor_type(g, "blk.0.attn_q.weight"), KV_Q4_K);
    assert_int_equal(tensor_type(g, "blk.0.ffn_down.weight"), KV_Q5_0); /* 640 columns */
    assert_int_equal(tensor_type(g, "token_embd.weight"), KV_Q4_K);
    assert_int_equal(tensor_type(g, "output.weight"), KV_Q6_K);
    assert_int_equal(tensor_type(g, "blk.0.attn_q.bias"), KV_F32);
    /* the same bytes as synth --type q4_k writes directly */
    kv_gguf_close(g);
    char direct[256];
    work_path("ks-direct.gguf", direct, sizeof direct);
    assert_int_equal(run("%s synth %s --arch qwen2 --dim 256 --layers 2 --heads 4 --kv-heads 2 --ff 640 --vocab 500 "
                         "--type q4_k",
                         KVLM, direct),
                     0);
    gguf_ctx *a, *b;
    assert_int_equal(kv_gguf_open(dst, &a, &err), KVLM_OK);
    assert_int_equal(kv_gguf_open(direct, &b, &err), KVLM_OK);
    for (uint64_t i = 0; i < a->n_tensors; i++) {
        const gguf_tensor *x = &a->tensors[i], *y = kv_gguf_find_tensor(b, x->name);
        assert_non_null(y);
        assert_int_equal(x->type, y->type);
        if (memcmp(x->data, y->data, (size_t)x->n_bytes) != 0) fail_msg("%s differs", x->name);
    }
    kv_gguf_close(a);
    kv_gguf_close(b);
    eval_model(dst, "qwen2", 2, false, NULL, NULL);
    unlink(src);
    unlink(dst);
    unlink(direct);
}

static void test_quantize_errors(void **state) {
    (void)state;
    char path[256];
    work_path("qbad.gguf", path, sizeof path);
    int rc = run("%s quantize /nonexistent/in.gguf %s q8_0", KVLM, path);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(g_out, "cannot read"));
    rc = run("%s quantize %s/llama/aidreams260K-q8_0-ffndown-f16.gguf %s q4_0", KVLM, MODELS, path);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(g_out, "already quantized"));
    rc = run("%s quantize %s/llama/aidreams260K-f32.gguf %s q7_0", KVLM, MODELS, path);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(g_out, "unknown type"));
    rc = run("%s quantize %s/llama/aidreams260K-f32.gguf %s q8_0 --embd-type nope", KVLM, MODELS, path);
    assert_int_equal(rc, 2);
    rc = run("%s quantize %s/llama/aidreams260K-f32.gguf %s", KVLM, MODELS, path);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(g_out, "usage"));
    rc = run("%s quantize %s/llama/aidreams260K-f32.gguf %s q8_0 --frobnicate", KVLM, MODELS, path);
    assert_int_equal(rc, 2);
    rc = run("%s quantize %s/llama/aidreams260K-f32.gguf /nonexistent-dir/out.gguf q8_0", KVLM, MODELS);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(g_out, "error"));
    rc = run("%s quantize %s/goldens/README.md %s q8_0", KVLM, MODELS, path);
    assert_int_equal(rc, 1);
    assert_int_equal(file_size(path), 0);
    assert_no_temp_files();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_writer_roundtrip),
        cmocka_unit_test(test_writer_copies_file),
        cmocka_unit_test(test_writer_errors),
        cmocka_unit_test(test_synth_archs_and_types),
        cmocka_unit_test(test_synth_deterministic),
        cmocka_unit_test(test_synth_vocab),
        cmocka_unit_test(test_synth_errors),
        cmocka_unit_test(test_quantize_matches_llama_quantize),
        cmocka_unit_test(test_quantize_and_eval),
        cmocka_unit_test(test_quantize_synth_kquants),
        cmocka_unit_test(test_quantize_errors),
    };
    return cmocka_run_group_tests(tests, setup_dir, remove_dir);
}
