/* Quantized types: bit layouts (hand-built blocks), quantizer round-trip
 * error, vec_dot against the float dot of the dequantized operands, pinned
 * vec_dot results (the canonical reduction order), activation rounding, and
 * checks on the real GGUF files in KVLM_MODELS_DIR. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/dtype.h"
#include "gguf/gguf.h"
#include "quant/fp16.h"
#include "quant/quant.h"
#include "quant/quant_types.h"
#include "test_util.h"

/* ------------------------------------------------------------ helpers */

/* random data (rng, fill_normal, fill_act), fbits, file_exists: test_util.h */

/* Bytes of n elements of type t (for I2_S: a whole tensor, tail included). */
static size_t qbytes(uint32_t t, int64_t n) {
    if (t == KV_I8_S) return (size_t)kv_i8_s_row_bytes(n);
    if (t == KV_I2_S) return (size_t)(n / 4 + KV_I2_S_TAIL);
    uint64_t b = 0;
    assert_true(kv_dtype_row_bytes(t, (uint64_t)n, &b));
    return (size_t)b;
}

static const kv_quant_traits *traits(uint32_t t) {
    const kv_quant_traits *q = kv_quant_get(t);
    assert_non_null(q);
    assert_int_equal(q->type, t);
    return q;
}

static const char *tname(uint32_t t) { return t == KV_I8_S ? "i8_s" : kv_dtype_name(t); }

static const uint32_t k_weight_types[] = {KV_Q4_0, KV_Q4_1, KV_Q5_0, KV_Q5_1, KV_Q8_0, KV_Q2_K, KV_Q3_K,
                                          KV_Q4_K, KV_Q5_K, KV_Q6_K, KV_TQ1_0, KV_TQ2_0, KV_I2_S};
#define N_WEIGHT_TYPES (sizeof k_weight_types / sizeof k_weight_types[0])

/* ------------------------------------------------------------ registry */

static void test_registry(void **state) {
    (void)state;
    static const struct { uint32_t t, dot; } pairs[] = {
        {KV_Q4_0, KV_Q8_0}, {KV_Q4_1, KV_Q8_1}, {KV_Q5_0, KV_Q8_0}, {KV_Q5_1, KV_Q8_1}, {KV_Q8_0, KV_Q8_0},
        {KV_Q8_1, KV_Q8_1}, {KV_Q2_K, KV_Q8_K}, {KV_Q3_K, KV_Q8_K}, {KV_Q4_K, KV_Q8_K}, {KV_Q5_K, KV_Q8_K},
        {KV_Q6_K, KV_Q8_K}, {KV_Q8_K, KV_Q8_K}, {KV_TQ1_0, KV_Q8_K}, {KV_TQ2_0, KV_Q8_K}, {KV_I2_S, KV_I8_S},
        {KV_I8_S, KV_I8_S},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        const kv_quant_traits *q = traits(pairs[i].t);
        assert_non_null(q->to_float);
        assert_non_null(q->from_float);
        assert_non_null(q->from_float_ref);
        assert_non_null(q->vec_dot);
        assert_int_equal(q->vec_dot_type, pairs[i].dot);
        assert_non_null(kv_quant_get(q->vec_dot_type));
    }
    assert_null(kv_quant_get(KV_IQ2_XXS));
    /* the block structs agree with the dtype table the GGUF reader uses */
    static const struct { uint32_t t; size_t size; int block; } geo[] = {
        {KV_Q4_0, sizeof(kv_block_q4_0), 32}, {KV_Q4_1, sizeof(kv_block_q4_1), 32},
        {KV_Q5_0, sizeof(kv_block_q5_0), 32}, {KV_Q5_1, sizeof(kv_block_q5_1), 32},
        {KV_Q8_1, sizeof(kv_block_q8_1), 32}, {KV_Q2_K, sizeof(kv_block_q2_K), 256},
        {KV_Q3_K, sizeof(kv_block_q3_K), 256}, {KV_Q4_K, sizeof(kv_block_q4_K), 256},
        {KV_Q5_K, sizeof(kv_block_q5_K), 256}, {KV_Q6_K, sizeof(kv_block_q6_K), 256},
        {KV_Q8_K, sizeof(kv_block_q8_K), 256}, {KV_TQ1_0, sizeof(kv_block_tq1_0), 256},
        {KV_TQ2_0, sizeof(kv_block_tq2_0), 256},
    };
    for (size_t i = 0; i < sizeof geo / sizeof geo[0]; i++) {
        const kv_dtype_info *d = kv_dtype_get(geo[i].t);
        assert_non_null(d);
        assert_int_equal(d->type_size, (int)geo[i].size);
        assert_int_equal(d->block_size, geo[i].block);
    }
}

/* ------------------------------------------------------------ layouts */

static void dequant(uint32_t t, const void *src, float *dst, int64_t n) { traits(t)->to_float(src, dst, n); }

static void test_layout_q4_0(void **state) {
    (void)state;
    kv_block_q4_0 b;
    b.d = 0x3C00; /* 1.0 */
    for (int j = 0; j < 16; j++) b.qs[j] = (uint8_t)(j | (15 - j) << 4);
    float y[32];
    dequant(KV_Q4_0, &b, y, 32);
    for (int j = 0; j < 16; j++) {
        assert_true(y[j] == (float)(j - 8));
        assert_true(y[16 + j] == (float)(7 - j));
    }
    /* and the reference quantizer writes exactly these bytes back */
    kv_block_q4_0 r;
    traits(KV_Q4_0)->from_float_ref(y, &r, 32);
    assert_memory_equal(&r, &b, sizeof b);
}

static void test_layout_q4_1(void **state) {
    (void)state;
    kv_block_q4_1 b;
    b.d = 0x3800; /* 0.5 */
    b.m = 0xBC00; /* -1.0 */
    for (int j = 0; j < 16; j++) b.qs[j] = (uint8_t)((j * 7) % 16 | j << 4);
    float y[32];
    dequant(KV_Q4_1, &b, y, 32);
    for (int j = 0; j < 16; j++) {
        assert_true(y[j] == 0.5f * (float)((j * 7) % 16) - 1.0f);
        assert_true(y[16 + j] == 0.5f * (float)j - 1.0f);
    }
}

static void test_layout_q5_0(void **state) {
    (void)state;
    kv_block_q5_0 b;
    b.d = 0x4000; /* 2.0 */
    const uint32_t qh = 0xA5C3F00Fu;
    for (int k = 0; k < 4; k++) b.qh[k] = (uint8_t)(qh >> (8 * k)); /* little endian */
    for (int j = 0; j < 16; j++) b.qs[j] = (uint8_t)(j | (15 - j) << 4);
    float y[32];
    dequant(KV_Q5_0, &b, y, 32);
    for (int j = 0; j < 32; j++) {
        const int lo = j < 16 ? j : 15 - (j - 16);
        const int q = lo | (int)((qh >> j) & 1) << 4;
        assert_true(y[j] == 2.0f * (float)(q - 16));
    }
    /* element 0: nibble 0, bit 0 set -> q = 16 -> 0; element 4: nibble 4, bit 4 clear -> -24 */
    assert_true(y[0] == 0.0f);
    assert_true(y[4] == -24.0f);
}

static void test_layout_q5_1(void **state) {
    (void)state;
    kv_block_q5_1 b;
    b.d = 0x3400; /* 0.25 */
    b.m = 0x4000; /* 2.0 */
    const uint32_t qh = 0x0F0F3355u;
    for (int k = 0; k < 4; k++) b.qh[k] = (uint8_t)(qh >> (8 * k));
    for (int j = 0; j < 16; j++) b.qs[j] = (uint8_t)((15 - j) | j << 4);
    float y[32];
    dequant(KV_Q5_1, &b, y, 32);
    for (int j = 0; j < 32; j++) {
        const int lo = j < 16 ? 15 - j : j - 16;
        const int q = lo | (int)((qh >> j) & 1) << 4;
        assert_true(y[j] == 0.25f * (float)q + 2.0f);
    }
}

static void test_layout_q8_1_q8_k(void **state) {
    (void)state;
    kv_block_q8_1 b;
    b.d = 0x3800;
    b.s = 0;
    for (int j = 0; j < 32; j++) b.qs[j] = (int8_t)(j * 8 - 128);
    float y[256];
    dequant(KV_Q8_1, &b, y, 32);
    for (int j = 0; j < 32; j++) assert_true(y[j] == 0.5f * (float)(j * 8 - 128));
    kv_block_q8_K k;
    memset(&k, 0, sizeof k);
    k.d = 0.125f;
    for (int j = 0; j < 256; j++) k.qs[j] = (int8_t)(j - 128);
    dequant(KV_Q8_K, &k, y, 256);
    for (int j = 0; j < 256; j++) assert_true(y[j] == 0.125f * (float)(j - 128));
}

/* The 6-bit scale/min packing of Q4_K/Q5_K, written from the format
 * description: sub-blocks 0..3 in the low 6 bits of bytes j (scale) and
 * j + 4 (min); sub-blocks 4..7: low 4 bits in byte j + 4 (scale low nibble,
 * min high nibble), top 2 bits in the top 2 bits of byte j - 4 (scale) and
 * byte j (min). */
static void pack_k4(uint8_t out[12], const int sc[8], const int mn[8]) {
    memset(out, 0, 12);
    for (int j = 0; j < 4; j++) {
        out[j] = (uint8_t)sc[j];
        out[j + 4] = (uint8_t)mn[j];
    }
    for (int j = 4; j < 8; j++) {
        out[j + 4] = (uint8_t)((sc[j] & 15) | (mn[j] & 15) << 4);
        out[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
        out[j] |= (uint8_t)((mn[j] >> 4) << 6);
    }
}

static void test_layout_q4_k(void **state) {
    (void)state;
    static const int sc[8] = {1, 63, 17, 32, 45, 5, 60, 33};
    static const int mn[8] = {0, 2, 63, 31, 16, 48, 7, 62};
    kv_block_q4_K b;
    b.d = 0x3C00;    /* 1.0 */
    b.dmin = 0x3800; /* 0.5 */
    pack_k4(b.scales, sc, mn);
    for (int i = 0; i < 128; i++) b.qs[i] = (uint8_t)(i * 29 + 3);
    float y[256];
    dequant(KV_Q4_K, &b, y, 256);
    for (int e = 0; e < 256; e++) {
        /* element e: 64-chunk c = e / 64; low nibble for the first 32 of the chunk */
        const int c = e / 64, l = e % 32;
        const uint8_t byte = b.qs[32 * c + l];
        const int q = (e % 64) < 32 ? byte & 15 : byte >> 4;
        const int j = e / 32;
        assert_true(y[e] == (float)sc[j] * (float)q - 0.5f * (float)mn[j]);
    }
    /* element 255: sub-block 7 (sc 33, min 62), high nibble of qs[127] */
    assert_true(y[255] == 33.0f * (float)((uint8_t)(127 * 29 + 3) >> 4) - 31.0f);
}

static void test_layout_q5_k(void **state) {
    (void)state;
    static const int sc[8] = {9, 1, 63, 40, 2, 50, 31, 16};
    static const int mn[8] = {63, 0, 1, 2, 33, 17, 60, 8};
    kv_block_q5_K b;
    b.d = 0x3800;    /* 0.5 */
    b.dmin = 0x3C00; /* 1.0 */
    pack_k4(b.scales, sc, mn);
    for (int i = 0; i < 128; i++) b.qs[i] = (uint8_t)(i * 53 + 11);
    for (int i = 0; i < 32; i++) b.qh[i] = (uint8_t)(i * 97 + 5);
    float y[256];
    dequant(KV_Q5_K, &b, y, 256);
    for (int e = 0; e < 256; e++) {
        const int c = e / 64, l = e % 32, hi = (e % 64) >= 32;
        const uint8_t byte = b.qs[32 * c + l];
        const int q = (hi ? byte >> 4 : byte & 15) | ((b.qh[l] >> (2 * c + hi)) & 1) << 4;
        const int j = e / 32;
        assert_true(y[e] == 0.5f * (float)sc[j] * (float)q - (float)mn[j]);
    }
}

static void test_layout_q6_k(void **state) {
    (void)state;
    kv_block_q6_K b;
    b.d = 0x3800; /* 0.5 */
    for (int i = 0; i < 16; i++) b.scales[i] = (int8_t)(i * 17 - 128);
    for (int i = 0; i < 128; i++) b.ql[i] = (uint8_t)(i * 71 + 1);
    for (int i = 0; i < 64; i++) b.qh[i] = (uint8_t)(i * 37 + 19);
    float y[256];
    dequant(KV_Q6_K, &b, y, 256);
    for (int e = 0; e < 256; e++) {
        /* 128-halves h; within one, quarter k = 0..3 of 32 values l */
        const int h = e / 128, k = (e % 128) / 32, l = e % 32;
        const uint8_t lbyte = b.ql[64 * h + l + (k & 1) * 32];
        const int low = k < 2 ? lbyte & 15 : lbyte >> 4;
        const int high = (b.qh[32 * h + l] >> (2 * k)) & 3;
        const int q = (low | high << 4) - 32;
        assert_true(y[e] == 0.5f * (float)b.scales[e / 16] * (float)q);
    }
}

static void test_layout_q2_k(void **state) {
    (void)state;
    kv_block_q2_K b;
    b.d = 0x3C00;
    b.dmin = 0x3400; /* 0.25 */
    for (int j = 0; j < 16; j++) b.scales[j] = (uint8_t)((j * 5) % 16 | ((15 - j) << 4));
    for (int i = 0; i < 64; i++) b.qs[i] = (uint8_t)(i * 41 + 7);
    float y[256];
    dequant(KV_Q2_K, &b, y, 256);
    for (int e = 0; e < 256; e++) {
        const int h = e / 128, k = (e % 128) / 32, l = e % 32;
        const int q = (b.qs[32 * h + l] >> (2 * k)) & 3;
        const int s = e / 16;
        assert_true(y[e] == (float)(b.scales[s] & 15) * (float)q - 0.25f * (float)(b.scales[s] >> 4));
    }
}

static void test_layout_q3_k(void **state) {
    (void)state;
    /* 6-bit scales (stored +32): low nibbles of j < 8 in scales[j] low,
     * j >= 8 in scales[j - 8] high; top 2 bits at shift 2 * (j / 4) of
     * scales[8 + j % 4] */
    static const int s6[16] = {0, 63, 32, 31, 1, 62, 16, 47, 33, 5, 58, 20, 40, 9, 63, 0};
    kv_block_q3_K b;
    memset(&b, 0, sizeof b);
    b.d = 0x3800; /* 0.5 */
    for (int j = 0; j < 16; j++) {
        if (j < 8)
            b.scales[j] |= (uint8_t)(s6[j] & 15);
        else
            b.scales[j - 8] |= (uint8_t)((s6[j] & 15) << 4);
        b.scales[8 + j % 4] |= (uint8_t)((s6[j] >> 4) << (2 * (j / 4)));
    }
    for (int i = 0; i < 64; i++) b.qs[i] = (uint8_t)(i * 13 + 100);
    for (int i = 0; i < 32; i++) b.hmask[i] = (uint8_t)(i * 59 + 3);
    float y[256];
    dequant(KV_Q3_K, &b, y, 256);
    for (int e = 0; e < 256; e++) {
        const int h = e / 128, k = (e % 128) / 32, l = e % 32;
        const int low = (b.qs[32 * h + l] >> (2 * k)) & 3;
        const int hbit = (b.hmask[l] >> (e / 32)) & 1; /* bit 4h + k */
        const int q = low - (hbit ? 0 : 4);
        assert_true(y[e] == 0.5f * (float)(s6[e / 16] - 32) * (float)q);
    }
}

static void test_layout_tq2_0(void **state) {
    (void)state;
    kv_block_tq2_0 b;
    b.d = 0x4000; /* 2.0 */
    for (int i = 0; i < 64; i++) {
        /* four 2-bit codes from 0..2, low bits first */
        const int c0 = i % 3, c1 = (i / 3) % 3, c2 = (i + 1) % 3, c3 = (i * 7) % 3;
        b.qs[i] = (uint8_t)(c0 | c1 << 2 | c2 << 4 | c3 << 6);
    }
    float y[256];
    dequant(KV_TQ2_0, &b, y, 256);
    for (int e = 0; e < 256; e++) {
        const int h = e / 128, k = (e % 128) / 32, m = e % 32;
        const int code = (b.qs[32 * h + m] >> (2 * k)) & 3;
        assert_true(y[e] == 2.0f * (float)(code - 1));
    }
    /* byte 0 = codes (0, 0, 1, 0): elements 0, 32, 64, 96 are -2, -2, 0, -2 */
    assert_true(y[0] == -2.0f && y[32] == -2.0f && y[64] == 0.0f && y[96] == -2.0f);
    kv_block_tq2_0 r;
    traits(KV_TQ2_0)->from_float_ref(y, &r, 256);
    assert_memory_equal(&r, &b, sizeof b);
}

/* TQ1_0 bytes from the format description: base-3 number of the trits
 * (first trit most significant), stored as ceil(v * 256 / 243). */
static uint8_t tq1_byte(const int *t, int count) {
    int v = 0;
    for (int k = 0; k < count; k++) v = v * 3 + t[k];
    if (count == 4) v *= 3;
    return (uint8_t)((v * 256 + 242) / 243);
}

static void test_layout_tq1_0(void **state) {
    (void)state;
    int trit[256];
    for (int e = 0; e < 256; e++) trit[e] = (e * e + e / 7) % 3;
    kv_block_tq1_0 b;
    b.d = 0x3C00;
    int t[5];
    for (int m = 0; m < 32; m++) {
        for (int k = 0; k < 5; k++) t[k] = trit[32 * k + m];
        b.qs[m] = tq1_byte(t, 5);
    }
    for (int m = 0; m < 16; m++) {
        for (int k = 0; k < 5; k++) t[k] = trit[160 + 16 * k + m];
        b.qs[32 + m] = tq1_byte(t, 5);
    }
    for (int m = 0; m < 4; m++) {
        for (int k = 0; k < 4; k++) t[k] = trit[240 + 4 * k + m];
        b.qh[m] = tq1_byte(t, 4);
    }
    float y[256];
    dequant(KV_TQ1_0, &b, y, 256);
    for (int e = 0; e < 256; e++) assert_true(y[e] == (float)(trit[e] - 1));
    /* known bytes: trits (1,0,2,1,1) = 103 -> ceil(103 * 256 / 243) = 109; all 2s -> 255 */
    const int a[5] = {1, 0, 2, 1, 1}, twos[5] = {2, 2, 2, 2, 2};
    assert_int_equal(tq1_byte(a, 5), 109);
    assert_int_equal(tq1_byte(twos, 5), 255);
    memset(&b, 0, sizeof b);
    b.d = 0x3C00;
    b.qs[0] = 109;
    b.qs[47] = 255;
    dequant(KV_TQ1_0, &b, y, 256);
    assert_true(y[0] == 0.0f && y[32] == -1.0f && y[64] == 1.0f && y[96] == 0.0f && y[128] == 0.0f);
    assert_true(y[175] == 1.0f && y[239] == 1.0f && y[1] == -1.0f);
    kv_block_tq1_0 r;
    traits(KV_TQ1_0)->from_float_ref(y, &r, 256);
    assert_memory_equal(&r, &b, sizeof b);
}

static void test_layout_i2_s(void **state) {
    (void)state;
    /* two 128-value blocks; value 32g + j of a block is at shift 6 - 2g of byte j */
    enum { N = 256 };
    uint8_t buf[N / 4 + KV_I2_S_TAIL];
    memset(buf, 0, sizeof buf);
    int code[N];
    for (int i = 0; i < N; i++) code[i] = (i * 5 + i / 32) % 3;
    for (int i = 0; i < N; i++) {
        const int blk = i / 128, g = (i % 128) / 32, j = i % 32;
        buf[32 * blk + j] |= (uint8_t)(code[i] << (6 - 2 * g));
    }
    const float scale = 0.75f;
    memcpy(buf + N / 4, &scale, 4);
    /* spot values: byte 0 = codes of values 0, 32, 64, 96 in its bit pairs 7-6, 5-4, 3-2, 1-0 */
    assert_int_equal(buf[0], (code[0] << 6) | (code[32] << 4) | (code[64] << 2) | code[96]);
    float y[N];
    dequant(KV_I2_S, buf, y, N);
    for (int i = 0; i < N; i++) assert_true(y[i] == (float)(code[i] - 1));
    assert_true(kv_i2_s_scale(buf, N) == 0.75f);
    /* a hand-made byte: 0x24 = 00 10 01 00: values 0, 32, 64, 96 -> -1, +1, 0, -1 */
    uint8_t one[32 + KV_I2_S_TAIL];
    memset(one, 0x55, sizeof one); /* all code 1 = 0 */
    one[5] = 0x24;
    float z[128];
    dequant(KV_I2_S, one, z, 128);
    assert_true(z[5] == -1.0f && z[37] == 1.0f && z[69] == 0.0f && z[101] == -1.0f);
    assert_true(z[0] == 0.0f && z[127] == 0.0f);
    /* quantizing the scaled values writes the same codes and the scale */
    float x[N];
    for (int i = 0; i < N; i++) x[i] = y[i] * scale;
    uint8_t q[N / 4 + KV_I2_S_TAIL];
    traits(KV_I2_S)->from_float_ref(x, q, N);
    assert_memory_equal(q, buf, N / 4 + 4);
}

static void test_i8_s_quantize(void **state) {
    (void)state;
    /* max |x| = 2 -> scale 63.5; 1/127 * 2 * 63.5 = 1 exactly etc. */
    float x[128];
    for (int i = 0; i < 128; i++) x[i] = 0.0f;
    x[0] = 2.0f;
    x[1] = -2.0f;
    x[3] = 1.0f;                 /* 63.5 -> half away from zero: 64 */
    x[4] = -1.0f;                /* -63.5 -> -64 */
    uint8_t buf[8 + 128];
    traits(KV_I8_S)->from_float(x, buf, 128);
    kv_i8_s_head h;
    memcpy(&h, buf, sizeof h);
    assert_true(h.scale == 63.5f);
    const int8_t *q = (const int8_t *)(buf + 8);
    assert_int_equal(q[0], 127);
    assert_int_equal(q[1], -127);
    assert_int_equal(q[3], 64);
    assert_int_equal(q[4], -64);
    int sum = 0;
    for (int i = 0; i < 128; i++) sum += q[i];
    assert_int_equal(h.sum, sum);
    /* the empty row keeps bitnet.cpp's floor of 1e-5 on max|x| */
    memset(x, 0, sizeof x);
    traits(KV_I8_S)->from_float(x, buf, 128);
    memcpy(&h, buf, sizeof h);
    assert_true(h.scale == (float)(127 / 0.00001));
    assert_int_equal(h.sum, 0);
}

/* ------------------------------------------------------------ activation rounding */

static void test_activation_rounding(void **state) {
    (void)state;
    /* amax = 127 makes the multiplier 1 for both quantizers: x = k + 0.5
     * rounds to even in from_float (llama.cpp's x86 activations) and away
     * from zero in from_float_ref (llama-quantize). */
    float x[256];
    for (int i = 0; i < 256; i++) x[i] = 0.0f;
    x[0] = 127.0f;
    x[1] = 2.5f;
    x[2] = -2.5f;
    x[3] = 3.5f;
    x[4] = 0.5f;
    kv_block_q8_1 a, r;
    traits(KV_Q8_1)->from_float(x, &a, 32);
    traits(KV_Q8_1)->from_float_ref(x, &r, 32);
    assert_int_equal(a.qs[1], 2);
    assert_int_equal(a.qs[2], -2);
    assert_int_equal(a.qs[3], 4);
    assert_int_equal(a.qs[4], 0);
    assert_int_equal(r.qs[1], 3);
    assert_int_equal(r.qs[2], -3);
    assert_int_equal(r.qs[3], 4);
    assert_int_equal(r.qs[4], 1);
    assert_int_equal(a.d, 0x3C00);
    /* s = d * sum(q) */
    assert_true(kv_f16_to_f32(a.s) == 127.0f + 2 - 2 + 4);
    assert_true(kv_f16_to_f32(r.s) == 127.0f + 3 - 3 + 4 + 1);
    /* Q8_K: multiplier -127/max, ties to even, bsums */
    kv_block_q8_K k;
    x[0] = -127.0f;
    traits(KV_Q8_K)->from_float(x, &k, 256);
    assert_true(k.d == 1.0f);
    assert_int_equal(k.qs[0], -127);
    assert_int_equal(k.qs[1], 2);
    assert_int_equal(k.qs[2], -2);
    assert_int_equal(k.qs[3], 4);
    assert_int_equal(k.qs[4], 0);
    assert_int_equal(k.bsums[0], -127 + 2 - 2 + 4);
    for (int j = 1; j < 16; j++) assert_int_equal(k.bsums[j], 0);
    /* a zero block: everything zero (bsums included) */
    memset(x, 0, sizeof x);
    memset(&k, 0x5A, sizeof k);
    traits(KV_Q8_K)->from_float(x, &k, 256);
    kv_block_q8_K zero;
    memset(&zero, 0, sizeof zero);
    assert_memory_equal(&k, &zero, sizeof k);
}

/* llama-quantize's rounding of the 32-blocks: level = trunc(x / d + offset),
 * i.e. exact halves go up. Blocks built so that d is exactly 1. */
static void test_ref_rounding(void **state) {
    (void)state;
    float x[32];
    /* Q4_0: the largest magnitude is -8, so d = -8 / -8 = 1, level = x + 8 rounded half up */
    x[0] = -8.0f;
    for (int j = 1; j < 32; j++) x[j] = -8.0f + 0.5f * (float)j; /* -7.5 .. 7.5 */
    kv_block_q4_0 q4;
    traits(KV_Q4_0)->from_float_ref(x, &q4, 32);
    assert_int_equal(q4.d, 0x3C00);
    for (int j = 0; j < 32; j++) {
        const int level = j < 16 ? q4.qs[j] & 15 : q4.qs[j - 16] >> 4;
        const int want = j == 31 ? 15 : (j + 1) / 2; /* -7.5 -> 1, -7 -> 1, -6.5 -> 2, ...; 7.5 -> 16 capped */
        assert_int_equal(level, want);
    }
    /* Q5_0: -16 .. 15.5 by halves from index 0 (d = 1) */
    x[0] = -16.0f;
    for (int j = 1; j < 32; j++) x[j] = -16.0f + (float)j + (j % 2 ? 0.5f : 0.0f);
    kv_block_q5_0 q5;
    traits(KV_Q5_0)->from_float_ref(x, &q5, 32);
    assert_int_equal(q5.d, 0x3C00);
    const uint32_t qh = (uint32_t)q5.qh[0] | (uint32_t)q5.qh[1] << 8 | (uint32_t)q5.qh[2] << 16 | (uint32_t)q5.qh[3] << 24;
    for (int j = 0; j < 32; j++) {
        const int level = (j < 16 ? q5.qs[j] & 15 : q5.qs[j - 16] >> 4) | (int)((qh >> j) & 1) << 4;
        const int want = j + (j % 2); /* x + 16 = j (+ .5 rounded up), capped at 31 */
        assert_int_equal(level, want > 31 ? 31 : want);
    }
    /* Q4_1: min 0, max 15 -> d = 1, m = 0 */
    for (int j = 0; j < 32; j++) x[j] = (float)(j % 15) + (j % 3 == 1 ? 0.5f : 0.0f);
    x[31] = 15.0f;
    x[30] = 0.0f;
    kv_block_q4_1 q41;
    traits(KV_Q4_1)->from_float_ref(x, &q41, 32);
    assert_int_equal(q41.d, 0x3C00);
    assert_int_equal(q41.m, 0);
    for (int j = 0; j < 32; j++) {
        const int level = j < 16 ? q41.qs[j] & 15 : q41.qs[j - 16] >> 4;
        int want = (int)x[j] + (j % 3 == 1 && j < 30 ? 1 : 0);
        assert_int_equal(level, want > 15 ? 15 : want);
    }
}

/* Garbage in (NaN, infinities, huge and subnormal values) must not be
 * undefined behaviour anywhere (run under the sanitizers); values are not
 * checked except that all-zero blocks stay zero. Q8_0 (quant_basic.c) is
 * left out: its activation cast of NaN is undefined (UBSan's
 * float-cast-overflow, which GCC's -fsanitize=undefined does not enable). */
static void test_nonfinite_inputs(void **state) {
    (void)state;
    static const uint32_t types[] = {KV_Q4_0, KV_Q4_1, KV_Q5_0, KV_Q5_1, KV_Q8_1, KV_Q2_K, KV_Q3_K, KV_Q4_K,
                                     KV_Q5_K, KV_Q6_K, KV_Q8_K, KV_TQ1_0, KV_TQ2_0, KV_I2_S, KV_I8_S};
    enum { N = 1024 };
    static float x[N], y[N], a[N];
    static uint8_t q[2 * N + 64], qa[2 * N + 64];
    const float specials[] = {NAN, INFINITY, -INFINITY, 1e38f, -1e38f, 1e-40f, -3e-39f, 0.0f, -0.0f, 65504.0f, 1e5f};
    rng r = {77};
    for (int i = 0; i < N; i++) x[i] = rng_normal(&r);
    for (int i = 0; i < N; i += 3) x[i] = specials[(i / 3) % 11];
    for (int i = 256; i < 512; i++) x[i] = 0.0f; /* one all-zero super-block */
    fill_act(&r, a, N);
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        const kv_quant_traits *t = traits(types[k]);
        for (int ref = 0; ref < 2; ref++) {
            (ref ? t->from_float_ref : t->from_float)(x, q, N);
            t->to_float(q, y, N);
            if (types[k] != KV_I2_S && types[k] != KV_I8_S)
                for (int i = 256; i < 512; i++) assert_true(y[i] == 0.0f);
            traits(t->vec_dot_type)->from_float(a, qa, N);
            float s;
            t->vec_dot(N, &s, q, qa);
            (void)s;
        }
        /* and garbage activations against sane weights */
        t->from_float_ref(a, q, N);
        traits(t->vec_dot_type)->from_float(x, qa, N);
        float s;
        t->vec_dot(N, &s, q, qa);
        (void)s;
    }
}

/* ------------------------------------------------------------ round trip */

typedef struct {
    uint32_t t;
    double rmse;   /* bound on RMS error / sigma */
    double maxerr; /* bound on max |error| / sigma */
} rt_bound;

static void test_roundtrip(void **state) {
    (void)state;
    /* Normal-like data (Irwin-Hall, sigma 1, |x| < 3.47), 65536 values, seed 1.
     * Measured rmse / max error, in units of sigma (from_float_ref):
     *   q4_0 .0819/.322  q4_1 .0757/.193  q5_0 .0406/.153  q5_1 .0365/.0933
     *   q8_0 .0051/.0126 q8_1 .0051/.0126 q2_K .2880/1.098 q3_K .1456/.529
     *   q4_K .0690/.246  q5_K .0348/.126  q6_K .0170/.0508 q8_K .0063/.0127
     * The bounds leave ~10% room; the data are deterministic. */
    static const rt_bound bounds[] = {
        {KV_Q4_0, 0.090, 0.36},   {KV_Q4_1, 0.083, 0.22},   {KV_Q5_0, 0.045, 0.17},  {KV_Q5_1, 0.040, 0.105},
        {KV_Q8_0, 0.0057, 0.014}, {KV_Q8_1, 0.0057, 0.014}, {KV_Q2_K, 0.32, 1.21},   {KV_Q3_K, 0.16, 0.59},
        {KV_Q4_K, 0.076, 0.275},  {KV_Q5_K, 0.039, 0.14},   {KV_Q6_K, 0.019, 0.057}, {KV_Q8_K, 0.007, 0.014},
    };
    enum { N = 65536 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    void *q = malloc(N * 2);
    assert_true(x && y && q);
    rng r = {1};
    fill_normal(&r, x, N, 1.0f);
    for (size_t b = 0; b < sizeof bounds / sizeof bounds[0]; b++) {
        const kv_quant_traits *t = traits(bounds[b].t);
        t->from_float_ref(x, q, N);
        t->to_float(q, y, N);
        double se = 0, mx = 0;
        for (int i = 0; i < N; i++) {
            const double e = fabs((double)y[i] - x[i]);
            se += e * e;
            if (e > mx) mx = e;
        }
        const double rmse = sqrt(se / N);
        print_message("roundtrip %-5s rmse %.4f max %.4f (bounds %.4f %.4f)\n", tname(bounds[b].t), rmse, mx,
                      bounds[b].rmse, bounds[b].maxerr);
        assert_true(rmse <= bounds[b].rmse);
        assert_true(mx <= bounds[b].maxerr);
        /* activation quantizer: same bounds */
        t->from_float(x, q, N);
        t->to_float(q, y, N);
        se = 0;
        for (int i = 0; i < N; i++) se += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
        assert_true(sqrt(se / N) <= bounds[b].rmse);
    }
    /* ternary types reproduce ternary data exactly: d * {-1, 0, 1} with d an
     * f16 value (per 256 block for TQ, per tensor for I2_S) */
    static const uint32_t tern[] = {KV_TQ1_0, KV_TQ2_0, KV_I2_S};
    for (size_t k = 0; k < 3; k++) {
        for (int i = 0; i < N; i++) {
            const float d = tern[k] == KV_I2_S ? 0.375f : 0.0625f * (float)(1 + (i / 256) % 5);
            x[i] = d * (float)((int)(rng_u32(&r) % 3) - 1);
        }
        for (int i = 0; i < N; i += 256) x[i] = tern[k] == KV_I2_S ? 0.375f : 0.0625f * (float)(1 + (i / 256) % 5);
        const kv_quant_traits *t = traits(tern[k]);
        t->from_float_ref(x, q, N);
        t->to_float(q, y, N);
        const float s = tern[k] == KV_I2_S ? kv_i2_s_scale(q, N) : 1.0f;
        for (int i = 0; i < N; i++) assert_true(y[i] * s == x[i]);
    }
    /* normal data through the ternary types: values are in {-d, 0, d} */
    fill_normal(&r, x, N, 1.0f);
    {
        const kv_quant_traits *t = traits(KV_TQ2_0);
        t->from_float_ref(x, q, N);
        t->to_float(q, y, N);
        for (int i = 0; i < N; i += 256) {
            float amax = 0;
            for (int j = 0; j < 256; j++) amax = fmaxf(amax, fabsf(x[i + j]));
            const float d = kv_f16_to_f32(kv_f32_to_f16(amax));
            for (int j = 0; j < 256; j++) {
                assert_true(y[i + j] == 0.0f || y[i + j] == d || y[i + j] == -d);
                /* the trit is the rounded x / amax */
                const float v = x[i + j] / amax;
                const float want = v >= 0.5f ? d : v <= -0.5f ? -d : 0.0f;
                assert_true(y[i + j] == want);
            }
        }
    }
    free(x);
    free(y);
    free(q);
}

/* ------------------------------------------------------------ vec_dot */

/* Reference: the double dot of the dequantized operands (plus, for the
 * Q8_1 pairs, the difference between the stored s = f16(d * sum q) that the
 * kernel uses and d * sum q). The kernel must be within 2e-6 * sum |x_i y_i| (measured: below 3e-8). */
static void check_dot(uint32_t wt, int64_t n, uint64_t seed, double *rel_out) {
    const kv_quant_traits *t = traits(wt);
    const kv_quant_traits *ta = traits(t->vec_dot_type);
    float *w = malloc((size_t)n * sizeof *w), *a = malloc((size_t)n * sizeof *a);
    float *wd = malloc((size_t)n * sizeof *wd), *ad = malloc((size_t)n * sizeof *ad);
    void *qw = malloc(qbytes(wt, n)), *qa = malloc(qbytes(t->vec_dot_type, n));
    assert_true(w && a && wd && ad && qw && qa);
    rng r = {seed};
    fill_normal(&r, w, n, 0.05f);
    fill_act(&r, a, n);
    t->from_float_ref(w, qw, n);
    ta->from_float(a, qa, n);
    t->to_float(qw, wd, n);
    ta->to_float(qa, ad, n);
    double ref = 0, mag = 0;
    for (int64_t i = 0; i < n; i++) {
        ref += (double)wd[i] * ad[i];
        mag += fabs((double)wd[i] * ad[i]);
    }
    if (wt == KV_Q4_1 || wt == KV_Q5_1) {
        const kv_block_q8_1 *y = qa;
        for (int64_t b = 0; b < n / 32; b++) {
            const double m = wt == KV_Q4_1 ? kv_f16_to_f32(((const kv_block_q4_1 *)qw)[b].m)
                                           : kv_f16_to_f32(((const kv_block_q5_1 *)qw)[b].m);
            int sum = 0;
            for (int j = 0; j < 32; j++) sum += y[b].qs[j];
            ref += m * ((double)kv_f16_to_f32(y[b].s) - (double)kv_f16_to_f32(y[b].d) * sum);
        }
    }
    float s = NAN;
    t->vec_dot(n, &s, qw, qa);
    const double rel = fabs((double)s - ref) / mag;
    if (rel_out) *rel_out = rel;
    if (!(rel <= 2e-6))
        fail_msg("vec_dot %s n=%lld: %.9g vs reference %.9g (rel %.3g of sum|xy| %.6g)", tname(wt), (long long)n, s,
                 ref, rel, mag);
    free(w);
    free(a);
    free(wd);
    free(ad);
    free(qw);
    free(qa);
}

static void test_vec_dot(void **state) {
    (void)state;
    for (size_t k = 0; k < N_WEIGHT_TYPES; k++) {
        double worst = 0, rel;
        for (uint64_t seed = 1; seed <= 4; seed++) {
            check_dot(k_weight_types[k], 4096, seed * 7919, &rel);
            if (rel > worst) worst = rel;
        }
        check_dot(k_weight_types[k], 256, 99, &rel);
        if (rel > worst) worst = rel;
        print_message("vec_dot %-5s worst rel error %.3g\n", tname(k_weight_types[k]), worst);
    }
    /* the activation types against themselves */
    check_dot(KV_Q8_1, 1024, 5, NULL);
    check_dot(KV_Q8_K, 1024, 5, NULL);
    check_dot(KV_I8_S, 1024, 5, NULL);
}

/* The canonical reduction order, pinned: vec_dot results (float bits) for
 * fixed inputs. They were checked equal, bit for bit, to llama.cpp c392e5094's
 * AVX2 kernels (GCC, -march=haswell) on the same quantized bytes; a change of
 * the order (or of a quantizer) shows up here. */
static void test_dot_pinned(void **state) {
    (void)state;
    static const struct { uint32_t t; uint32_t bits; } pinned[] = {
        {KV_Q4_0, 0x3fd2c28du}, {KV_Q4_1, 0x3fa43298u}, {KV_Q5_0, 0x3f83a9ffu}, {KV_Q5_1, 0x3f9443c6u},
        {KV_Q8_0, 0x3f9c8df7u}, {KV_Q2_K, 0x3e0992f0u}, {KV_Q3_K, 0x3fb2f657u}, {KV_Q4_K, 0x3fa8117eu},
        {KV_Q5_K, 0x3f96b948u}, {KV_Q6_K, 0x3fa40196u}, {KV_TQ1_0, 0x40e0597eu}, {KV_TQ2_0, 0x40e0597eu},
        {KV_I2_S, 0xc1a32c1du},
    };
    enum { N = 2048 };
    float w[N], a[N];
    static uint8_t qw[N * 2], qa[N * 2];
    int bad = 0;
    for (size_t k = 0; k < sizeof pinned / sizeof pinned[0]; k++) {
        const kv_quant_traits *t = traits(pinned[k].t);
        rng r = {12345};
        fill_normal(&r, w, N, 0.05f);
        fill_act(&r, a, N);
        t->from_float_ref(w, qw, N);
        traits(t->vec_dot_type)->from_float(a, qa, N);
        float s;
        t->vec_dot(N, &s, qw, qa);
        if (fbits(s) != pinned[k].bits) {
            print_message("pinned %-5s got 0x%08xu (%.9g), want 0x%08xu\n", tname(pinned[k].t), fbits(s), s,
                          pinned[k].bits);
            bad++;
        }
    }
    assert_int_equal(bad, 0);
}

/* ------------------------------------------------------------ real files */

static gguf_ctx *open_model(const char *rel) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", KVLM_MODELS_DIR, rel);
    if (!file_exists(path)) {
        fail_msg("%s is missing: the shared models must be present", path);
    }
    gguf_ctx *g = NULL;
    kvlm_error err;
    const kvlm_status st = kv_gguf_open(path, &g, &err);
    if (st != KVLM_OK) fail_msg("kv_gguf_open %s: %s", path, err.msg);
    return g;
}

/* whole tensor to float (I2_S scaled by its tensor scale) */
static float *tensor_floats(const gguf_tensor *t) {
    const kv_quant_traits *q = kv_quant_get(t->type);
    if (!q) fail_msg("%s: type %s has no compute support", t->name, kv_dtype_name(t->type));
    float *y = malloc((size_t)t->n_elements * sizeof *y);
    assert_non_null(y);
    q->to_float(t->data, y, (int64_t)t->n_elements);
    if (t->type == KV_I2_S) {
        const float s = kv_i2_s_scale(t->data, (int64_t)t->n_elements);
        for (uint64_t i = 0; i < t->n_elements; i++) y[i] *= s;
    }
    return y;
}

typedef struct {
    int n_checked;
    int n_requant_exact;
    double lo, hi; /* range of sd / expected sd over the weight matrices */
} file_stats;

/* Finite, mean ~ 0 and std as generated: N(0, 1/sqrt(fan_in)) matrices,
 * N(0, 0.02) embedding, norms 1.0. Ternary types keep max-magnitude levels,
 * so their std is larger (~1.09 sigma). */
static void check_tensor_stats(const gguf_tensor *t, const float *y, file_stats *fs) {
    double sum = 0, sum2 = 0;
    for (uint64_t i = 0; i < t->n_elements; i++) {
        if (!isfinite(y[i])) fail_msg("%s: element %llu is not finite", t->name, (unsigned long long)i);
        sum += y[i];
        sum2 += (double)y[i] * y[i];
    }
    const double n = (double)t->n_elements;
    const double mean = sum / n, sd = sqrt(sum2 / n - mean * mean);
    if (strstr(t->name, "norm")) {
        if (!(fabs(mean - 1.0) < 1e-6 && sd < 1e-6)) fail_msg("%s: norm mean %g sd %g", t->name, mean, sd);
        return;
    }
    double want;
    if (strcmp(t->name, "token_embd.weight") == 0)
        want = 0.02;
    else
        want = 1.0 / sqrt((double)t->ne[0]);
    /* measured: 0.996 .. 1.005 of the expected sd, ternary 1.09 */
    double lo = 0.97, hi = 1.03;
    if (t->type == KV_TQ1_0 || t->type == KV_TQ2_0) lo = 1.0, hi = 1.2;
    if (sd / want < fs->lo) fs->lo = sd / want;
    if (sd / want > fs->hi) fs->hi = sd / want;
    if (!(sd > lo * want && sd < hi * want && fabs(mean) < 0.02 * want))
        fail_msg("%s (%s): mean %g sd %g, want sd ~ %g", t->name, kv_dtype_name(t->type), mean, sd, want);
}

static void check_model_file(const char *rel, file_stats *fs) {
    gguf_ctx *g = open_model(rel);
    if (!g) return;
    for (uint64_t k = 0; k < g->n_tensors; k++) {
        const gguf_tensor *t = &g->tensors[k];
        float *y = tensor_floats(t);
        check_tensor_stats(t, y, fs);
        fs->n_checked++;
        /* llama-quantize is deterministic: re-quantizing what we decoded must
         * give its bytes back for the types whose levels survive decoding */
        const uint32_t ty = t->type;
        if (ty == KV_Q4_0 || ty == KV_Q8_0 || ty == KV_Q5_0 || ty == KV_TQ1_0 || ty == KV_TQ2_0) {
            uint8_t *q = malloc((size_t)t->n_bytes);
            assert_non_null(q);
            kv_quant_get(ty)->from_float_ref(y, q, (int64_t)t->n_elements);
            if (memcmp(q, t->data, (size_t)t->n_bytes) != 0) {
                size_t i = 0;
                while (q[i] == ((const uint8_t *)t->data)[i]) i++;
                fail_msg("%s/%s (%s): re-quantized bytes differ at %zu", rel, t->name, kv_dtype_name(ty), i);
            }
            free(q);
            fs->n_requant_exact++;
        }
        /* vec_dot of a row against random activations vs the float dot */
        if (ty != KV_F32 && ty != KV_F16 && t->ne[1] > 1) {
            const kv_quant_traits *qt = kv_quant_get(ty);
            const int64_t len = (int64_t)t->ne[0];
            const uint64_t row = t->ne[1] / 2;
            uint64_t rb = 0;
            assert_true(kv_dtype_row_bytes(ty, (uint64_t)len, &rb));
            const uint8_t *xr = (const uint8_t *)t->data + row * rb;
            float *act = malloc((size_t)len * sizeof *act), *ad = malloc((size_t)len * sizeof *ad);
            void *qa = malloc(qbytes(qt->vec_dot_type, len));
            assert_true(act && ad && qa);
            rng r = {row + 1};
            fill_act(&r, act, len);
            traits(qt->vec_dot_type)->from_float(act, qa, len);
            traits(qt->vec_dot_type)->to_float(qa, ad, len);
            const float *wr = y + row * (uint64_t)len;
            double ref = 0, mag = 0;
            for (int64_t i = 0; i < len; i++) {
                ref += (double)wr[i] * ad[i];
                mag += fabs((double)wr[i] * ad[i]);
            }
            float s;
            qt->vec_dot(len, &s, xr, qa);
            if (!(fabs((double)s - ref) <= 2e-6 * mag))
                fail_msg("%s row %llu: vec_dot %.9g vs %.9g", t->name, (unsigned long long)row, s, ref);
            free(act);
            free(ad);
            free(qa);
        }
        free(y);
    }
    kv_gguf_close(g);
}

static void test_files_synth15m(void **state) {
    (void)state;
    static const char *files[] = {"llama/synth15M-q4_0.gguf", "llama/synth15M-q4_k_m.gguf",
                                  "llama/synth15M-tq1_0.gguf", "llama/synth15M-tq2_0.gguf",
                                  "llama/synth15M-q8_0.gguf"};
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        file_stats fs = {0, 0, 1e9, 0};
        check_model_file(files[f], &fs);
        print_message("%s: %d tensors checked, %d re-quantized exactly, sd/expected %.3f .. %.3f\n", files[f],
                      fs.n_checked, fs.n_requant_exact, fs.lo, fs.hi);
    }
}

/* The q4_k_m file holds the type mix CONVERTED.md describes. */
static void test_file_q4_k_m_types(void **state) {
    (void)state;
    gguf_ctx *g = open_model("llama/synth15M-q4_k_m.gguf");
    assert_non_null(g);
    int count[KV_DTYPE_COUNT] = {0};
    for (uint64_t k = 0; k < g->n_tensors; k++) count[g->tensors[k].type]++;
    assert_int_equal(count[KV_Q4_K], 4);
    assert_int_equal(count[KV_Q6_K], 2);
    assert_true(count[KV_Q5_0] > 0);
    assert_true(count[KV_Q8_0] > 0);
    kv_gguf_close(g);
}

static void test_files_tq_same_values(void **state) {
    (void)state;
    gguf_ctx *g1 = open_model("llama/synth15M-tq1_0.gguf");
    gguf_ctx *g2 = open_model("llama/synth15M-tq2_0.gguf");
    assert_non_null(g1);
    assert_non_null(g2);
    int n = 0;
    for (int layer = 0; layer < 64; layer++) {
        char name[64];
        snprintf(name, sizeof name, "blk.%d.ffn_down.weight", layer);
        const gguf_tensor *a = kv_gguf_find_tensor(g1, name), *b = kv_gguf_find_tensor(g2, name);
        if (!a && !b) break;
        assert_true(a && b);
        assert_int_equal(a->type, KV_TQ1_0);
        assert_int_equal(b->type, KV_TQ2_0);
        assert_true(a->n_elements == b->n_elements);
        float *ya = tensor_floats(a), *yb = tensor_floats(b);
        assert_memory_equal(ya, yb, (size_t)a->n_elements * sizeof *ya);
        /* and both are ternary per 256 block */
        for (uint64_t i = 0; i < a->n_elements; i += 256) {
            float d = 0;
            for (int j = 0; j < 256; j++) d = fmaxf(d, fabsf(ya[i + j]));
            for (int j = 0; j < 256; j++) assert_true(ya[i + j] == 0.0f || fabsf(ya[i + j]) == d);
        }
        free(ya);
        free(yb);
        n++;
    }
    assert_int_equal(n, 6);
    kv_gguf_close(g1);
    kv_gguf_close(g2);
}

static void test_file_bitnet_i2_s(void **state) {
    (void)state;
    gguf_ctx *g = open_model("bitnet/synth-bitnet-b158-v512-i2_s.gguf");
    assert_non_null(g);
    int n_i2s = 0;
    for (uint64_t k = 0; k < g->n_tensors; k++) {
        const gguf_tensor *t = &g->tensors[k];
        if (t->type != KV_I2_S) continue;
        n_i2s++;
        const int64_t n = (int64_t)t->n_elements;
        assert_true(t->n_bytes == (uint64_t)(n / 4 + KV_I2_S_TAIL));
        const float s = kv_i2_s_scale(t->data, n);
        assert_true(isfinite(s) && s > 0.0f);
        const uint8_t *b = t->data;
        for (int64_t i = 0; i < n / 4; i++)
            for (int sh = 0; sh < 8; sh += 2)
                if (((b[i] >> sh) & 3) == 3) fail_msg("%s: code 3 in byte %lld", t->name, (long long)i);
        float *y = tensor_floats(t);
        int64_t zeros = 0, pos = 0, neg = 0;
        for (int64_t i = 0; i < n; i++) {
            if (y[i] == 0.0f)
                zeros++;
            else if (y[i] == s)
                pos++;
            else if (y[i] == -s)
                neg++;
            else
                fail_msg("%s: value %g is not in {-s, 0, s}, s = %g", t->name, y[i], s);
        }
        const double fz = (double)zeros / (double)n;
        print_message("%s: scale %g, zeros %.3f, +%.3f, -%.3f\n", t->name, s, fz, (double)pos / n, (double)neg / n);
        assert_true(fz > 0.15 && fz < 0.6);
        assert_true(pos > n / 10 && neg > n / 10);
        /* bitnet.cpp's quantizer gives the same codes and scale back */
        uint8_t *q = malloc((size_t)(n / 4 + KV_I2_S_TAIL));
        assert_non_null(q);
        kv_quant_get(KV_I2_S)->from_float_ref(y, q, n);
        assert_memory_equal(q, t->data, (size_t)(n / 4 + 4));
        free(q);
        /* row dot with I8_S activations vs the float dot of the decoded values */
        const int64_t len = (int64_t)t->ne[0];
        const uint64_t row = t->ne[1] / 3;
        float *act = malloc((size_t)len * sizeof *act), *ad = malloc((size_t)len * sizeof *ad);
        void *qa = malloc(qbytes(KV_I8_S, len));
        assert_true(act && ad && qa);
        rng r = {k + 3};
        fill_act(&r, act, len);
        traits(KV_I8_S)->from_float(act, qa, len);
        traits(KV_I8_S)->to_float(qa, ad, len);
        double ref = 0, mag = 0;
        for (int64_t i = 0; i < len; i++) {
            const double wv = y[row * (uint64_t)len + (uint64_t)i] / s;
            ref += wv * ad[i];
            mag += fabs(wv * ad[i]);
        }
        float dot;
        kv_quant_get(KV_I2_S)->vec_dot(len, &dot, b + row * (uint64_t)len / 4, qa);
        if (!(fabs((double)dot - ref) <= 2e-6 * mag)) fail_msg("%s: vec_dot %.9g vs %.9g", t->name, dot, ref);
        free(act);
        free(ad);
        free(qa);
        free(y);
    }
    assert_int_equal(n_i2s, 2 * 7);
    kv_gguf_close(g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_layout_q4_0),
        cmocka_unit_test(test_layout_q4_1),
        cmocka_unit_test(test_layout_q5_0),
        cmocka_unit_test(test_layout_q5_1),
        cmocka_unit_test(test_layout_q8_1_q8_k),
        cmocka_unit_test(test_layout_q2_k),
        cmocka_unit_test(test_layout_q3_k),
        cmocka_unit_test(test_layout_q4_k),
        cmocka_unit_test(test_layout_q5_k),
        cmocka_unit_test(test_layout_q6_k),
        cmocka_unit_test(test_layout_tq1_0),
        cmocka_unit_test(test_layout_tq2_0),
        cmocka_unit_test(test_layout_i2_s),
        cmocka_unit_test(test_i8_s_quantize),
        cmocka_unit_test(test_activation_rounding),
        cmocka_unit_test(test_ref_rounding),
        cmocka_unit_test(test_nonfinite_inputs),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_vec_dot),
        cmocka_unit_test(test_dot_pinned),
        cmocka_unit_test(test_file_q4_k_m_types),
        cmocka_unit_test(test_files_synth15m),
        cmocka_unit_test(test_files_tq_same_values),
        cmocka_unit_test(test_file_bitnet_i2_s),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
