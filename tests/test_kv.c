/* The paged KV cache as a module: paging, growth, rollback, overflow
 * policies, storage types, tiered compression, prefix sharing, statistics. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/dtype.h"
#include "core/rope.h"
#include "kv/kv_cache.h"
#include "quant/quant.h"

#define NL 2
#define HD 16
#define NKV 2
#define KVD (HD * NKV)

/* Llama-3-style RoPE: base 500000 and per-pair frequency divisors, so that the
 * re-rotation of shifted keys is checked with the factors too. */
static const float k_freq_factors[HD / 2] = {1.0f, 1.0f, 1.0f, 2.5f, 7.0f, 32.0f, 32.0f, 32.0f};

static kv_rope test_rope(void) {
    kv_rope r = {.type = KV_ROPE_NORM, .n_rot = HD, .base = 500000.0f, .freq_scale = 1.0f, .attn_factor = 1.0f,
                 .beta_fast = 32.0f, .beta_slow = 1.0f, .n_ctx_orig = 4096, .freq_factors = k_freq_factors};
    kv_rope_init(&r);
    return r;
}

/* A deterministic K/V row for (token, pos, layer); V does not depend on pos. */
static void make_row(int32_t token, int32_t pos, int layer, float *k, float *v, bool rotate) {
    for (int i = 0; i < KVD; i++) {
        k[i] = sinf(0.37f * (float)token + 0.11f * (float)i + (float)layer);
        v[i] = cosf(0.23f * (float)token - 0.07f * (float)i + 0.5f * (float)layer);
    }
    if (rotate) {
        const kv_rope r = test_rope();
        kv_rope_apply(&r, k, NKV, HD, pos);
    }
}

static kvlm_cache_params pool_params(int64_t initial, int64_t max) {
    kvlm_cache_params p = {.type_k = KVLM_KV_F32, .type_v = KVLM_KV_F32, .page_tokens = 32,
                           .initial_tokens = initial, .max_tokens = max, .growth = KVLM_GROWTH_FACTOR,
                           .growth_factor = 1.5f, .growth_tokens = 64, .cached_bytes_budget = -1,
                           .prefix_sharing = true};
    return p;
}

static kv_seq_config seq_config(int32_t n_ctx) {
    kv_seq_config c = {.n_ctx = n_ctx, .n_layer = NL, .n_head_kv = NKV, .head_dim = HD, .type_k = KV_F32,
                       .type_v = KV_F32, .overflow = KVLM_OVERFLOW_ERROR, .n_sink = 4, .rope = test_rope(),
                       .max_batch = 32};
    return c;
}

/* Appends tokens [from, to) of the sequence tok(i) = i*7+1 in passes of `step`. */
static kvlm_status append(kv_seq *s, int32_t from, int32_t to, int32_t step, kvlm_error *err) {
    float k[KVD], v[KVD];
    int32_t toks[512];
    for (int32_t i = from; i < to; i += step) {
        int32_t T = to - i < step ? to - i : step;
        for (int32_t t = 0; t < T; t++) toks[t] = (i + t) * 7 + 1;
        kvlm_status st = kv_seq_prepare(s, T, err);
        if (st) return st;
        if ((st = kv_seq_reserve(s, toks, T, err))) return st;
        for (int32_t t = 0; t < T; t++) {
            int32_t slot = kv_seq_slot(s, t);
            for (int l = 0; l < NL; l++) {
                make_row(toks[t], s->pos[slot], l, k, v, true);
                kv_seq_write(s, l, slot, k, v);
            }
        }
        kv_seq_commit(s, T);
    }
    return KVLM_OK;
}

/* Every stored slot holds exactly the row of its token and position. */
static void check_rows(const kv_seq *s, float tol) {
    float k[KVD], v[KVD], kr[KVD], vr[KVD];
    for (int32_t sl = 0; sl < s->n; sl++)
        for (int l = 0; l < NL; l++) {
            make_row(s->tokens[sl], s->pos[sl], l, k, v, true);
            kv_row r = kv_seq_row(s, l, sl);
            kv_quant_get(r.layout->type_k)->to_float(r.k, kr, KVD);
            kv_quant_get(r.layout->type_v)->to_float(r.v, vr, KVD);
            for (int i = 0; i < KVD; i++)
                if (!(fabsf(kr[i] - k[i]) <= tol && fabsf(vr[i] - v[i]) <= tol))
                    fail_msg("slot %d layer %d elem %d: k %g vs %g, v %g vs %g", sl, l, i, kr[i], k[i], vr[i], v[i]);
        }
}

/* RoPE: position 0 is the identity; with frequency factors, YaRN and a magnitude, a key rotated to p
 * and then shifted by d equals the key rotated to p + d (the shift keeps the magnitude: it is applied
 * once, when the key is made); each pair rotates by pos * base^(-2i/n_rot) / factor_i. */
static void test_rope_math(void **state) {
    (void)state;
    kv_rope r = test_rope();
    r.freq_scale = 0.25f;
    r.ext_factor = 1.0f;
    r.attn_factor = 1.0f;
    r.n_ctx_orig = 64;
    kv_rope_init(&r);
    assert_true(r.corr_dims[0] >= 0.0f && r.corr_dims[1] <= (float)(HD - 1) && r.corr_dims[0] <= r.corr_dims[1]);
    float x[KVD], y[KVD], z[KVD];
    for (int i = 0; i < KVD; i++) x[i] = sinf(0.3f * (float)i + 0.1f);
    memcpy(y, x, sizeof x);
    kv_rope_apply(&r, y, NKV, HD, 0);
    const float mscale = 1.0f + 0.1f * logf(4.0f); /* YaRN's magnitude for factor 4 */
    for (int i = 0; i < KVD; i++) assert_float_equal(y[i], x[i] * mscale, 1e-6f);
    for (int32_t p = 1; p < 200; p += 37) {
        for (int32_t d = -p; d < 60; d += 29) {
            memcpy(y, x, sizeof x);
            kv_rope_apply(&r, y, NKV, HD, p);
            kv_rope_shift(&r, y, NKV, HD, d);
            memcpy(z, x, sizeof x);
            kv_rope_apply(&r, z, NKV, HD, p + d);
            for (int i = 0; i < KVD; i++) assert_float_equal(y[i], z[i], 2e-4f);
        }
    }
    /* no scaling: pair i of head h turns by pos * 500000^(-2i/HD) / factor_i (NORM: adjacent dims) */
    r = test_rope();
    memcpy(y, x, sizeof x);
    kv_rope_apply(&r, y, NKV, HD, 7);
    for (int h = 0; h < NKV; h++)
        for (int i = 0; i < HD / 2; i++) {
            const double th = 7.0 * pow(500000.0, -2.0 * i / HD) / k_freq_factors[i];
            const float *a = x + h * HD + 2 * i, *b = y + h * HD + 2 * i;
            assert_float_equal(b[0], a[0] * cos(th) - a[1] * sin(th), 1e-5f);
            assert_float_equal(b[1], a[0] * sin(th) + a[1] * cos(th), 1e-5f);
        }
}

static void test_paging_and_growth(void **state) {
    (void)state;
    kv_page_pool *pool;
    kvlm_error err;
    kvlm_cache_params pp = pool_params(64, 4096);
    assert_int_equal(kv_pool_create(NL, KVD, &pp, &pool, &err), KVLM_OK);
    kv_seq s;
    kv_seq_config c = seq_config(4096);
    assert_int_equal(kv_seq_init(&s, pool, &c, &err), KVLM_OK);
    assert_int_equal(append(&s, 0, 64, 5, &err), KVLM_OK);
    const uint8_t *first = s.pages[0]->data, *second = s.pages[1]->data;
    kvlm_kv_stats st;
    kv_pool_stats(pool, &st);
    assert_int_equal(st.capacity, 64);
    assert_int_equal(st.growth_events, 0);
    assert_int_equal(append(&s, 64, 1000, 17, &err), KVLM_OK);
    /* growth never moved a stored page */
    assert_ptr_equal(s.pages[0]->data, first);
    assert_ptr_equal(s.pages[1]->data, second);
    kv_pool_stats(pool, &st);
    /* 64 -> 96 -> 128(+) ... by 1.5x in whole pages until >= 1000 */
    int64_t cap = 2, events = 0;
    while (cap * 32 < 1000) {
        int64_t next = (int64_t)((double)cap * 1.5);
        cap = next > cap ? next : cap + 1;
        events++;
    }
    assert_int_equal(st.capacity, cap * 32);
    assert_int_equal(st.growth_events, events);
    assert_true(st.growth_ms_max >= 0.0 && st.growth_ms_total >= st.growth_ms_max);
    assert_int_equal(st.tokens, 1000);
    assert_int_equal(st.misses, 1000);
    assert_int_equal(st.bytes, (int64_t)(cap * 32) * KVD * 4 * 2 * NL);
    check_rows(&s, 0.0f);
    printf("# growth 64 -> %lld tokens: %lld events, max %.3f ms\n", (long long)st.capacity,
           (long long)st.growth_events, st.growth_ms_max);

    /* rollback: drops pages past the cut, keeps the rest untouched */
    const uint8_t *p3 = s.pages[3]->data;
    assert_int_equal(kv_seq_truncate(&s, 100, &err), KVLM_OK);
    assert_int_equal(s.n, 100);
    assert_int_equal(s.n_pages, 4);
    assert_ptr_equal(s.pages[0]->data, first);
    /* page 3 was full and indexed: cutting into it copies its head (the cached original stays intact) */
    assert_ptr_not_equal(s.pages[3]->data, p3);
    check_rows(&s, 0.0f);
    assert_int_equal(kv_seq_truncate(&s, 101, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(append(&s, 100, 300, 64, &err), KVLM_OK);
    check_rows(&s, 0.0f);
    kv_seq_destroy(&s);
    kv_pool_stats(pool, &st);
    assert_int_equal(st.tokens, 0);
    kv_pool_destroy(pool);
}

static void test_growth_policies(void **state) {
    (void)state;
    const kvlm_growth pol[3] = {KVLM_GROWTH_FACTOR, KVLM_GROWTH_LINEAR, KVLM_GROWTH_ADAPTIVE};
    int64_t caps[3];
    for (int i = 0; i < 3; i++) {
        kv_page_pool *pool;
        kvlm_error err;
        kvlm_cache_params pp = pool_params(32, 32 * 64);
        pp.growth = pol[i];
        assert_int_equal(kv_pool_create(NL, KVD, &pp, &pool, &err), KVLM_OK);
        kv_seq s;
        kv_seq_config c = seq_config(32 * 64);
        assert_int_equal(kv_seq_init(&s, pool, &c, &err), KVLM_OK);
        assert_int_equal(append(&s, 0, 33, 33, &err), KVLM_OK); /* one growth event */
        kvlm_kv_stats st;
        kv_pool_stats(pool, &st);
        assert_int_equal(st.growth_events, 1);
        caps[i] = st.capacity;
        /* the maximum is a hard limit: the eval that would exceed it fails and changes nothing */
        assert_int_equal(append(&s, 33, 32 * 64, 32, &err), KVLM_OK);
        kv_seq_destroy(&s);
        kv_pool_destroy(pool);
    }
    assert_int_equal(caps[0], 64);            /* 1 page * 1.5 -> 1 -> at least +1 page */
    assert_int_equal(caps[1], 32 + 64);       /* + growth_tokens (64) */
    assert_int_equal(caps[2], 64);            /* x2 while under a quarter of the maximum */
    /* the pool refuses to exceed max_tokens */
    kv_page_pool *pool;
    kvlm_error err;
    kvlm_cache_params pp = pool_params(32, 64);
    assert_int_equal(kv_pool_create(NL, KVD, &pp, &pool, &err), KVLM_OK);
    kv_seq s;
    kv_seq_config c = seq_config(1000);
    assert_int_equal(kv_seq_init(&s, pool, &c, &err), KVLM_OK);
    assert_int_equal(append(&s, 0, 64, 64, &err), KVLM_OK);
    assert_int_equal(append(&s, 64, 65, 1, &err), KVLM_ERR_NOMEM);
    assert_int_equal(s.n, 64);
    check_rows(&s, 0.0f);
    kv_seq_destroy(&s);
    kv_pool_destroy(pool);
}

/* 100,000 tokens in one sequence: paging, growth and rollback at scale. */
static void test_100k_tokens(void **state) {
    (void)state;
    kv_page_pool *pool;
    kvlm_error err;
    kvlm_cache_params pp = pool_params(256, 1 << 20);
    assert_int_equal(kv_pool_create(NL, KVD, &pp, &pool, &err), KVLM_OK);
    kv_seq s;
    kv_seq_config c = seq_config(100000);
    assert_int_equal(kv_seq_init(&s, pool, &c, &err), KVLM_OK);
    assert_int_equal(append(&s, 0, 100000, 500, &err), KVLM_OK);
    assert_int_equal(s.n, 100000);
    assert_int_equal(append(&s, 100000, 100001, 1, &err), KVLM_ERR_CONTEXT_FULL);
    kvlm_kv_stats st;
    kv_pool_stats(pool, &st);
    assert_true(st.capacity >= 100000);
    assert_int_equal(st.tokens, 100000);
    check_rows(&s, 0.0f);
    printf("# 100k tokens: capacity %lld, %lld growth events, max %.3f ms, total %.3f ms, %.1f MB\n",
           (long long)st.capacity, (long long)st.growth_events, st.growth_ms_max, st.growth_ms_total,
           st.bytes / 1e6);
    assert_int_equal(kv_seq_truncate(&s, 12345, &err), KVLM_OK);
    assert_int_equal(s.n_pages, (12345 + 31) / 32);
    check_rows(&s, 0.0f);
    kv_seq_destroy(&s);
    kv_pool_destroy(pool);
}

static void test_overflow_error(void **state) {
    (void)state;
    kv_page_pool *pool;
    kvlm_error err;
    kvlm_cache_params pp = pool_params(64, 4096);
    assert_int_equal(kv_pool_create(NL, KVD, &pp, &pool, &err), KVLM_OK);
    kv_seq s;
    kv_seq_config c = seq_config(100);
    assert_int_equal(kv_seq_init(&s, pool, &c, &err), KVLM_OK);
    assert_int_equal(append(&s, 0, 90, 30, &err), KVLM_OK);
    assert_int_equal(append(&s, 90, 101, 11, &err), KVLM_ERR_CONTEXT_FULL);
    assert_non_null(strstr(err.msg, "context of 100"));
    assert_int_equal(s.n, 90); /* unchanged */
    check_rows(&s, 0.0f);
    assert_int_equal(append(&s, 90, 100, 10, &err), KVLM_OK);
    kv_seq_destroy(&s);
    kv_pool_destroy(pool);
}

/* shift: keep n_keep, drop half of the rest, re-rotate keys to their new positions. */
static void test_overflow_shift(void **state) {
    (void)state;
    kv_page_pool *pool;
    kvlm_error err;
    kvlm_cache_params pp = pool_params(64, 4096);
    assert_int_equal(kv_pool_create(NL, KVD, &pp, &pool, &err), KVLM_OK);
    kv_seq s;
    kv_seq_config c = seq_config(100);
    c.overflow = KVLM_OVERFLOW_SHIFT;
    c.n_keep = 4;
    assert_int_equal(kv_seq_init(&s, pool, &c, &err), KVLM_OK);
    assert_int_equal(append(&s, 0, 100, 1, &err), KVLM_OK);
    assert_int_equal(append(&s, 100, 101, 1, &err), KVLM_OK); /* shifts: (100-4)/2 = 48 dropped */
    assert_int_equal(s.n, 53);
    for (int i = 0; i < 4; i++) assert_int_equal(s.tokens[i], i * 7 + 1);
    for (int i = 4; i < 52; i++) assert_int_equal(s.tokens[i], (i + 48) * 7 + 1);
    assert_int_equal(s.tokens[52], 100 * 7 + 1);
    for (int i = 0; i < 53; i++) assert_int_equal(s.pos[i], i);
    /* re-rotated keys equal keys computed at the new positions (F32 storage) */
    check_rows(&s, 2e-5f);
    kvlm_kv_stats st;
    kv_pool_stats(pool, &st);
    assert_int_equal(st.shifts, 1);
    assert_int_equal(st.tokens, 53);
    kv_seq_destroy(&s);
    kv_pool_destroy(pool);
}

/* sliding: sink tokens + the most recent ones, constant memory. */
static void test_overflow_sliding(void **state) {
    (void)state;
    kv_page_pool *pool;
    kvlm_error err;
    kvlm_cache_params pp = pool_params(64, 4096);
    assert_int_equal(kv_pool_create(NL, KVD, &pp, &pool, &err), KVLM_OK);
    kv_seq s;
    kv_seq_config c = seq_config(128);
    c.overflow = KVLM_OVERFLOW_SLIDING;
    c.n_sink = 4;
    assert_int_equal(kv_seq_init(&s, pool, &c, &err), KVLM_OK);
    int64_t max_bytes = 0, cap_at_500 = 0;
    kvlm_kv_stats st;
    for (int32_t i = 0; i < 2000; i++) {
        if (i == 500) {
            kv_pool_stats(pool, &st);
            cap_at_500 = st.capacity;
        }
        assert_int_equal(append(&s, i, i + 1, 1, &err), KVLM_OK);
        assert_true(s.n <= 128);
        int64_t b = (int64_t)kv_seq_bytes(&s);
        if (i > 200) assert_true(b <= max_bytes);
        if (b > max_bytes) max_bytes = b;
    }
    for (int i = 0; i < 4; i++) assert_int_equal(s.tokens[i], i * 7 + 1);
    assert_int_equal(s.tokens[s.n - 1], 1999 * 7 + 1);
    for (int i = 5; i < s.n; i++) assert_int_equal(s.tokens[i], s.tokens[i - 1] + 7); /* a contiguous recent run */
    check_rows(&s, 5e-5f);
    kv_pool_stats(pool, &st);
    assert_int_equal(st.capacity, cap_at_500); /* the pool stopped growing: memory is constant in the stream */
    printf("# sliding: 2000 tokens through 128 slots, %lld shifts, pool capacity %lld tokens\n", (long long)st.shifts,
           (long long)st.capacity);
    kv_seq_destroy(&s);
    kv_pool_destroy(pool);
}

/* ring: the last W tokens with their absolute positions. */
static void test_overflow_ring(void **state) {
    (void)state;
    kv_page_pool *pool;
    kvlm_error err;
    kvlm_cache_params pp = pool_params(64, 4096);
    assert_int_equal(kv_pool_create(NL, KVD, &pp, &pool, &err), KVLM_OK);
    kv_seq s;
    kv_seq_config c = seq_config(1000);
    c.overflow = KVLM_OVERFLOW_RING;
    c.window = 40;
    c.max_batch = 32;
    assert_int_equal(kv_seq_init(&s, pool, &c, &err), KVLM_OK);
    assert_int_equal(s.n_ctx, 96); /* 40 + 32 rounded up to pages */
    const int64_t bytes = (int64_t)kv_seq_bytes(&s);
    assert_int_equal(append(&s, 0, 500, 7, &err), KVLM_OK);
    assert_int_equal((int64_t)kv_seq_bytes(&s), bytes);
    assert_int_equal(s.next_pos, 500);
    /* the last 96 positions are present, each at slot pos % 96, keys rotated for the absolute position */
    for (int32_t p = 500 - 96; p < 500; p++) {
        assert_int_equal(s.pos[p % 96], p);
        assert_int_equal(s.tokens[p % 96], p * 7 + 1);
    }
    check_rows(&s, 0.0f);
    assert_int_equal(kv_seq_truncate(&s, 10, &err), KVLM_ERR_UNSUPPORTED);
    kv_seq_destroy(&s);
    kv_pool_destroy(pool);
}

/* K and V types chosen separately; values round-trip within the type's precision. */
static void test_storage_types(void **state) {
    (void)state;
    const uint32_t types[][2] = {{KV_F32, KV_F32}, {KV_F16, KV_F16}, {KV_Q8_0, KV_Q8_0}, {KV_Q8_0, KV_F16},
                                 {KV_F16, KV_Q8_0}, {KV_Q4_0, KV_Q4_0}};
    const float tol[] = {0.0f, 1e-3f, 1e-2f, 1e-2f, 1e-2f, 0.25f}; /* Q4_0: about amax/8 */
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        kv_page_pool *pool;
        kvlm_error err;
        kvlm_cache_params pp = pool_params(64, 4096);
        assert_int_equal(kv_pool_create(NL, KVD, &pp, &pool, &err), KVLM_OK);
        kv_seq s;
        kv_seq_config c = seq_config(256);
        c.type_k = types[i][0];
        c.type_v = types[i][1];
        assert_int_equal(kv_seq_init(&s, pool, &c, &err), KVLM_OK);
        assert_int_equal(append(&s, 0, 100, 9, &err), KVLM_OK);
        check_rows(&s, tol[i]);
        uint64_t kr, vr;
        kv_dtype_row_bytes(types[i][0], KVD, &kr);
        kv_dtype_row_bytes(types[i][1], KVD, &vr);
        assert_int_equal(kv_seq_bytes(&s), (uint64_t)4 * 32 * (kr + vr) * NL);
        kv_seq_destroy(&s);
        kv_pool_destroy(pool);
    }
}

/* Pages older than compress_after become Q8_0; the recent window stays F16. */
static void test_tiered_compression(void **state) {
    (void)state;
    kv_page_pool *pool;
    kvlm_error err;
    kvlm_cache_params pp = pool_params(64, 4096);
    pp.prefix_sharing = false;
    assert_int_equal(kv_pool_create(NL, KVD, &pp, &pool, &err), KVLM_OK);
    kv_seq s;
    kv_seq_config c = seq_config(1024);
    c.type_k = c.type_v = KV_F16;
    c.compress_after = 64;
    c.compress_type = KV_Q8_0;
    assert_int_equal(kv_seq_init(&s, pool, &c, &err), KVLM_OK);
    assert_int_equal(append(&s, 0, 300, 10, &err), KVLM_OK);
    /* pages fully older than 300 - 64 = 236 slots: 0..6 (7 * 32 = 224) */
    for (int j = 0; j < s.n_pages; j++)
        assert_int_equal(s.pages[j]->layout->type_k, j < 7 ? KV_Q8_0 : KV_F16);
    check_rows(&s, 1.5e-2f);
    kvlm_kv_stats st;
    kv_pool_stats(pool, &st);
    uint64_t f16, q8;
    kv_dtype_row_bytes(KV_F16, KVD, &f16);
    kv_dtype_row_bytes(KV_Q8_0, KVD, &q8);
    assert_int_equal(st.compressions, 7);
    assert_int_equal(st.bytes_saved, (int64_t)(7 * 32 * 2 * (f16 - q8) * NL));
    assert_true(st.bytes_by_type[2] > 0); /* Q8_0 pages are allocated */
    printf("# tiered: 300 tokens, %lld pages compressed, %lld bytes saved, F16 %lld B, Q8_0 %lld B allocated\n",
           (long long)st.compressions, (long long)st.bytes_saved, (long long)st.bytes_by_type[1],
           (long long)st.bytes_by_type[2]);
    kv_seq_destroy(&s);
    kv_pool_destroy(pool);
}

/* With prefix sharing on, tiered compression really lowers the bytes held: the compressed page
 * replaces the original in the prefix index and the original's memory is freed, not kept cached
 * (it used to stay cached for its prefix, so compression raised the bytes allocated). bytes_saved is
 * what was freed minus what was allocated, checked against page sizes computed here. A sequence
 * sharing the prefix takes the indexed compressed copy; an original that another sequence still
 * holds is freed, and counted, when that sequence lets it go. */
static void test_compression_frees_memory(void **state) {
    (void)state;
    uint64_t f16r, q8r;
    kv_dtype_row_bytes(KV_F16, KVD, &f16r);
    kv_dtype_row_bytes(KV_Q8_0, KVD, &q8r);
    const int64_t F = (int64_t)(32 * 2 * NL * f16r), Q = (int64_t)(32 * 2 * NL * q8r); /* page bytes */
    kvlm_error err;
    /* pools that grow one page at a time, so that bytes are exactly the pages held */
    kvlm_cache_params pp = pool_params(32, 4096);
    pp.growth = KVLM_GROWTH_LINEAR;
    pp.growth_tokens = 32;
    kv_seq_config c = seq_config(1024);
    c.type_k = c.type_v = KV_F16;
    kvlm_kv_stats st;

    /* the reference: 200 tokens, no compression: 7 F16 pages */
    kv_page_pool *pool;
    kv_seq a, b;
    assert_int_equal(kv_pool_create(NL, KVD, &pp, &pool, &err), KVLM_OK);
    assert_int_equal(kv_seq_init(&a, pool, &c, &err), KVLM_OK);
    assert_int_equal(append(&a, 0, 200, 10, &err), KVLM_OK);
    kv_pool_stats(pool, &st);
    const int64_t bytes_plain = st.bytes;
    assert_int_equal(bytes_plain, 7 * F);
    kv_seq_destroy(&a);
    kv_pool_destroy(pool);

    /* compressed after 32 tokens: pages 0..4 (5 * 32 <= 200 - 32) become Q8_0, nothing stays cached */
    c.compress_after = 32;
    c.compress_type = KV_Q8_0;
    assert_int_equal(kv_pool_create(NL, KVD, &pp, &pool, &err), KVLM_OK);
    assert_int_equal(kv_seq_init(&a, pool, &c, &err), KVLM_OK);
    assert_int_equal(append(&a, 0, 200, 10, &err), KVLM_OK);
    check_rows(&a, 1.5e-2f);
    kv_pool_stats(pool, &st);
    assert_int_equal(st.compressions, 5);
    assert_int_equal(st.pages_cached, 0);
    assert_int_equal(st.bytes, 2 * F + 5 * Q);
    assert_int_equal(st.bytes_saved, 5 * (F - Q));
    assert_int_equal(st.bytes, bytes_plain - st.bytes_saved);
    assert_int_equal(st.bytes_by_type[2], 5 * Q);
    /* a second sequence with the same prefix attaches the compressed pages: nothing is duplicated */
    int32_t toks[200];
    for (int i = 0; i < 200; i++) toks[i] = i * 7 + 1;
    assert_int_equal(kv_seq_init(&b, pool, &c, &err), KVLM_OK);
    assert_int_equal(kv_seq_attach_prefix(&b, toks, 200), 192);
    for (int j = 0; j < 6; j++) assert_ptr_equal(b.pages[j], a.pages[j]);
    assert_int_equal(append(&b, 192, 200, 8, &err), KVLM_OK);
    check_rows(&b, 1.5e-2f);
    kv_pool_stats(pool, &st);
    assert_int_equal(st.compressions, 5);
    assert_int_equal(st.pages_shared, 6);
    assert_int_equal(st.bytes, 3 * F + 5 * Q);
    kv_seq_destroy(&b);
    kv_seq_destroy(&a);
    kv_pool_destroy(pool);

    /* an original another sequence holds: freed when that one releases it */
    c.compress_after = 64;
    kv_seq_config plain = c;
    plain.compress_after = 0;
    assert_int_equal(kv_pool_create(NL, KVD, &pp, &pool, &err), KVLM_OK);
    assert_int_equal(kv_seq_init(&a, pool, &c, &err), KVLM_OK);
    assert_int_equal(kv_seq_init(&b, pool, &plain, &err), KVLM_OK);
    assert_int_equal(append(&a, 0, 64, 32, &err), KVLM_OK); /* pages 0, 1 indexed; nothing old yet */
    assert_int_equal(kv_seq_attach_prefix(&b, toks, 80), 64);
    kv_page *orig0 = a.pages[0];
    kvlm_kv_stats before, after;
    kv_pool_stats(pool, &before);
    assert_int_equal(before.bytes, 2 * F);
    assert_int_equal(append(&a, 64, 96, 32, &err), KVLM_OK); /* page 2 (F16) and page 0 compressed */
    kv_pool_stats(pool, &after);
    assert_int_equal(after.compressions, 1);
    assert_int_equal(a.pages[0]->layout->type_k, KV_Q8_0);
    assert_ptr_equal(b.pages[0], orig0); /* b keeps reading its F16 page */
    assert_int_equal(after.bytes - before.bytes, F + Q);
    assert_int_equal(after.bytes_saved, -Q);
    check_rows(&a, 1.5e-2f);
    check_rows(&b, 1.5e-2f);
    kv_seq_destroy(&b); /* the original goes: its bytes are freed and counted */
    kv_pool_stats(pool, &before);
    assert_int_equal(after.bytes - before.bytes, F);
    assert_int_equal(before.bytes_saved, F - Q);
    assert_int_equal(before.pages_cached, 0);
    /* the index holds the compressed page for that prefix: a compressing sequence attaches it, one
       that stores F16 only finds nothing to reuse (the F16 original is gone) */
    kv_seq d;
    assert_int_equal(kv_seq_init(&b, pool, &c, &err), KVLM_OK);
    assert_int_equal(kv_seq_attach_prefix(&b, toks, 40), 32);
    assert_ptr_equal(b.pages[0], a.pages[0]);
    assert_int_equal(kv_seq_init(&d, pool, &plain, &err), KVLM_OK);
    assert_int_equal(kv_seq_attach_prefix(&d, toks, 40), 0);
    kv_seq_destroy(&d);
    kv_seq_destroy(&b);
    kv_seq_destroy(&a);
    kv_pool_stats(pool, &st);
    assert_int_equal(st.bytes_saved, F - Q);
    kv_pool_destroy(pool);
}

/* A shift rewrites pages the sequence holds alone in place, never a page another sequence shares; in a
 * pool without a target an indexed page is left for its prefix (a fresh page takes its place), with a
 * target it leaves the index and is rewritten in place. Rows stay exact either way. */
static void test_shift_in_place(void **state) {
    (void)state;
    for (int with_target = 0; with_target < 2; with_target++) {
        kv_page_pool *pool;
        kvlm_error err;
        kvlm_cache_params pp = pool_params(64, 4096);
        assert_int_equal(kv_pool_create(NL, KVD, &pp, &pool, &err), KVLM_OK);
        if (with_target) kv_pool_set_target(pool, 4);
        kv_seq a, b;
        kv_seq_config c = seq_config(100);
        c.overflow = KVLM_OVERFLOW_SHIFT;
        c.n_keep = 4;
        assert_int_equal(kv_seq_init(&a, pool, &c, &err), KVLM_OK);
        assert_int_equal(kv_seq_init(&b, pool, &c, &err), KVLM_OK);
        assert_int_equal(append(&a, 0, 100, 100, &err), KVLM_OK); /* pages 0..2 full and indexed */
        int32_t toks[100];
        for (int i = 0; i < 100; i++) toks[i] = i * 7 + 1;
        assert_int_equal(kv_seq_attach_prefix(&b, toks, 40), 32); /* b shares page 0 */
        kv_page *p0 = a.pages[0], *p1 = a.pages[1];
        assert_int_equal(append(&a, 100, 101, 1, &err), KVLM_OK); /* shift: keep 4, drop 48 */
        assert_int_equal(a.n, 53);
        assert_ptr_not_equal(a.pages[0], p0); /* shared with b: replaced */
        assert_ptr_equal(b.pages[0], p0);
        if (with_target) assert_ptr_equal(a.pages[1], p1); /* indexed, held alone: rewritten in place */
        else assert_ptr_not_equal(a.pages[1], p1);          /* indexed: kept for its prefix */
        check_rows(&a, 2e-5f);
        check_rows(&b, 0.0f);
        /* the dropped history is recorded: 48 tokens, hashed in order */
        assert_int_equal(a.n_dropped, 48);
        uint64_t h = 0;
        for (int i = 4; i < 52; i++) h = kv_hist_hash(h, i * 7 + 1);
        assert_true(h == a.drop_hash);
        /* what the sequence can go back to: the head, the held tail, not the dropped part */
        assert_true(kv_seq_can_rewind(&a, 101, 0));
        assert_true(kv_seq_can_rewind(&a, 101, 4));
        assert_false(kv_seq_can_rewind(&a, 101, 5));
        assert_false(kv_seq_can_rewind(&a, 101, 51));
        assert_true(kv_seq_can_rewind(&a, 101, 52));
        assert_true(kv_seq_can_rewind(&a, 101, 100));
        assert_false(kv_seq_can_rewind(&a, 90, 60)); /* another history length: the record does not fit */
        int32_t ctx[101];
        for (int i = 0; i < 101; i++) ctx[i] = i * 7 + 1;
        assert_int_equal(kv_seq_reuse_point(&a, 101, ctx, 101, true), 101);
        ctx[70] = 5;
        assert_int_equal(kv_seq_reuse_point(&a, 101, ctx, 101, true), 70);
        ctx[70] = 70 * 7 + 1;
        ctx[30] = 5; /* in the dropped part: only the head can be kept */
        assert_int_equal(kv_seq_reuse_point(&a, 101, ctx, 101, true), 4);
        assert_int_equal(kv_seq_reuse_point(&a, 101, ctx, 101, false), 101);
        ctx[2] = 5;
        assert_int_equal(kv_seq_reuse_point(&a, 101, ctx, 101, false), 2);
        assert_int_equal(kv_seq_rewind(&a, 101, 30, &err), KVLM_ERR_UNSUPPORTED);
        assert_int_equal(kv_seq_rewind(&a, 101, 80, &err), KVLM_OK);
        assert_int_equal(a.n, 32);
        for (int i = 4; i < 32; i++) assert_int_equal(a.tokens[i], (i + 48) * 7 + 1);
        assert_int_equal(kv_seq_rewind(&a, 80, 3, &err), KVLM_OK);
        assert_int_equal(a.n, 3);
        assert_int_equal(a.n_dropped, 0);
        check_rows(&a, 2e-5f);
        kv_seq_destroy(&a);
        kv_seq_destroy(&b);
        kv_pool_destroy(pool);
    }
}

/* A pool with a target: growth stops at it, cached pages are evicted instead of growing past it, a page
 * needed past it is lent and freed again. */
static void test_pool_target(void **state) {
    (void)state;
    kv_page_pool *pool;
    kvlm_error err;
    kvlm_cache_params pp = pool_params(32, 4096);
    assert_int_equal(kv_pool_create(NL, KVD, &pp, &pool, &err), KVLM_OK);
    kv_pool_set_target(pool, 5);
    kv_seq a;
    kv_seq_config c = seq_config(160);
    assert_int_equal(kv_seq_init(&a, pool, &c, &err), KVLM_OK);
    assert_int_equal(append(&a, 0, 160, 10, &err), KVLM_OK);
    kvlm_kv_stats st;
    kv_pool_stats(pool, &st);
    assert_int_equal(st.capacity, 160); /* factor 1.5 from 1 page would pass 5 pages: capped */
    kv_seq_destroy(&a);                  /* 5 pages cached */
    kv_pool_stats(pool, &st);
    assert_int_equal(st.pages_cached, 5);
    kv_seq b;
    assert_int_equal(kv_seq_init(&b, pool, &c, &err), KVLM_OK);
    assert_int_equal(append(&b, 1000, 1160, 32, &err), KVLM_OK); /* other tokens: the cached pages are evicted */
    kv_pool_stats(pool, &st);
    assert_int_equal(st.capacity, 160);
    assert_int_equal(st.evictions, 5);
    /* a copy-on-write cut into an indexed page needs one page more for a moment */
    assert_int_equal(kv_seq_truncate(&b, 150, &err), KVLM_OK);
    kv_pool_stats(pool, &st);
    assert_int_equal(st.capacity, 160); /* lent and freed again (the old page was evicted from the cache) */
    check_rows(&b, 0.0f);
    kv_seq_destroy(&b);
    kv_pool_destroy(pool);
}

/* Two sequences with a common prefix share full pages copy-on-write. */
static void test_prefix_sharing(void **state) {
    (void)state;
    kv_page_pool *pool;
    kvlm_error err;
    kvlm_cache_params pp = pool_params(64, 4096);
    assert_int_equal(kv_pool_create(NL, KVD, &pp, &pool, &err), KVLM_OK);
    kv_seq a, b;
    kv_seq_config c = seq_config(1024);
    assert_int_equal(kv_seq_init(&a, pool, &c, &err), KVLM_OK);
    assert_int_equal(kv_seq_init(&b, pool, &c, &err), KVLM_OK);
    assert_int_equal(append(&a, 0, 100, 100, &err), KVLM_OK);
    int32_t toks[200];
    for (int i = 0; i < 200; i++) toks[i] = i * 7 + 1;
    /* b wants 150 tokens with the same first 100: the 3 full pages are attached */
    assert_int_equal(kv_seq_attach_prefix(&b, toks, 150), 96);
    assert_int_equal(b.n, 96);
    for (int j = 0; j < 3; j++) assert_ptr_equal(b.pages[j], a.pages[j]);
    assert_int_equal(b.hits, 96);
    kvlm_kv_stats st;
    kv_pool_stats(pool, &st);
    assert_int_equal(st.pages_shared, 3);
    assert_int_equal(st.hits, 96);
    assert_int_equal(append(&b, 96, 150, 54, &err), KVLM_OK);
    check_rows(&b, 0.0f);
    /* a different first page: nothing attached */
    kv_seq d;
    assert_int_equal(kv_seq_init(&d, pool, &c, &err), KVLM_OK);
    toks[5] = 3;
    assert_int_equal(kv_seq_attach_prefix(&d, toks, 150), 0);
    kv_seq_destroy(&d);
    toks[5] = 5 * 7 + 1;
    /* copy-on-write: truncating a into a shared page copies it; b still sees the original */
    const kv_page *shared1 = a.pages[1];
    assert_int_equal(kv_seq_truncate(&a, 40, &err), KVLM_OK);
    assert_ptr_not_equal(a.pages[1], shared1);
    assert_ptr_equal(b.pages[1], shared1);
    assert_int_equal(append(&a, 40, 90, 50, &err), KVLM_OK);
    check_rows(&a, 0.0f);
    check_rows(&b, 0.0f);
    /* released pages stay cached: a fresh sequence reuses them */
    kv_seq_destroy(&b);
    kv_pool_stats(pool, &st);
    assert_true(st.pages_cached >= 1);
    kv_seq e;
    assert_int_equal(kv_seq_init(&e, pool, &c, &err), KVLM_OK);
    assert_int_equal(kv_seq_attach_prefix(&e, toks, 200), 128);
    check_rows(&e, 0.0f);
    kv_seq_destroy(&e);
    kv_seq_destroy(&a);
    kv_pool_destroy(pool);
}

/* Unreferenced cached pages are evicted least-recently-used under a budget. */
static void test_lru_eviction(void **state) {
    (void)state;
    kv_page_pool *pool;
    kvlm_error err;
    kvlm_cache_params pp = pool_params(64, 4096);
    const int64_t page_bytes = 32 * KVD * 4 * 2 * NL;
    pp.cached_bytes_budget = 3 * page_bytes;
    assert_int_equal(kv_pool_create(NL, KVD, &pp, &pool, &err), KVLM_OK);
    kv_seq_config c = seq_config(1024);
    kv_seq a;
    assert_int_equal(kv_seq_init(&a, pool, &c, &err), KVLM_OK);
    assert_int_equal(append(&a, 0, 160, 160, &err), KVLM_OK); /* 5 full pages */
    kv_seq_destroy(&a);
    kvlm_kv_stats st;
    kv_pool_stats(pool, &st);
    assert_int_equal(st.pages_cached, 3);
    assert_int_equal(st.evictions, 2);
    /* the released pages went in order 0..4, so the oldest (0, 1) were evicted: page 0 is gone */
    int32_t toks[200];
    for (int i = 0; i < 200; i++) toks[i] = i * 7 + 1;
    kv_seq b;
    assert_int_equal(kv_seq_init(&b, pool, &c, &err), KVLM_OK);
    assert_int_equal(kv_seq_attach_prefix(&b, toks, 200), 0);
    kv_seq_destroy(&b);
    /* budget 0 keeps nothing */
    kv_pool_destroy(pool);
    pp.cached_bytes_budget = 0;
    assert_int_equal(kv_pool_create(NL, KVD, &pp, &pool, &err), KVLM_OK);
    assert_int_equal(kv_seq_init(&a, pool, &c, &err), KVLM_OK);
    assert_int_equal(append(&a, 0, 64, 64, &err), KVLM_OK);
    kv_seq_destroy(&a);
    kv_pool_stats(pool, &st);
    assert_int_equal(st.pages_cached, 0);
    kv_pool_destroy(pool);
}

static void test_stats_json(void **state) {
    (void)state;
    kvlm_kv_stats st;
    memset(&st, 0, sizeof st);
    st.tokens = 7;
    st.hits = 3;
    st.misses = 1;
    st.hit_rate = 0.75;
    st.growth_ms_max = 1.5;
    char buf[2048];
    int32_t n = kvlm_kv_stats_json(&st, buf, sizeof buf);
    assert_true(n > 0 && (size_t)n == strlen(buf));
    const char *keys[] = {"\"tokens\":7", "\"capacity\":", "\"bytes\":", "\"bytes_f32_equivalent\":", "\"hits\":3",
                          "\"misses\":1", "\"hit_rate\":0.7500", "\"pages_shared\":", "\"evictions\":",
                          "\"compressions\":", "\"bytes_saved\":", "\"growth_events\":", "\"growth_ms_max\":1.500"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!strstr(buf, keys[i])) fail_msg("%s lacks %s", buf, keys[i]);
    assert_true(kvlm_kv_stats_json(&st, buf, 10) < -10);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rope_math),
        cmocka_unit_test(test_paging_and_growth), cmocka_unit_test(test_growth_policies),
        cmocka_unit_test(test_100k_tokens),       cmocka_unit_test(test_overflow_error),
        cmocka_unit_test(test_overflow_shift),    cmocka_unit_test(test_overflow_sliding),
        cmocka_unit_test(test_overflow_ring),     cmocka_unit_test(test_storage_types),
        cmocka_unit_test(test_tiered_compression), cmocka_unit_test(test_compression_frees_memory),
        cmocka_unit_test(test_prefix_sharing),
        cmocka_unit_test(test_shift_in_place),    cmocka_unit_test(test_pool_target),
        cmocka_unit_test(test_lru_eviction),      cmocka_unit_test(test_stats_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
