/* Gemma 3's sliding-window layers in a ring of their own (kv_seq.swa, docs/KV_CACHE.md): a session
 * with its own pool keeps the local layers' K/V for the last window (plus one pass of slack) only,
 * while a session on a shared cache with prefix sharing keeps every layer for the whole history.
 * The two give the same bits for every row (the window mask already hides what the ring drops,
 * and attention reads the ring in the full cache's order), whatever the chunking; the ring's
 * memory is what docs/KV_CACHE.md states; rollback goes back as far as the ring still holds a
 * window and refuses the rest; a ring session saved and restored (and forked) goes on with the
 * same bits; crafted files with a wrong ring record are refused. The models come from
 * `kvlm synth` (deterministic). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <math.h>

#include "api/session_impl.h"
#include "core/rope.h"
#include "kv/kv_cache.h"
#include "kvlm.h"
#include "test_util.h"

typedef struct synth_model {
    const char *file, *args;
    int32_t window, n_local, n_layer, kv_dim;
} synth_model;
/* gemma3's layer l is global when (l + 1) % 6 == 0: 6 layers are 5 local + 1, 8 layers 7 local + 1 */
static const synth_model k_models[] = {
    {"g3-f16.gguf", "--arch gemma3 --dim 256 --layers 6 --heads 4 --kv-heads 2 --head-dim 64 --ff 512 --vocab 512 "
                    "--type f16 --tied --sliding-window 8", 8, 5, 6, 128},
    {"g3-q8_0.gguf", "--arch gemma3 --dim 256 --layers 8 --heads 4 --kv-heads 1 --ff 512 --vocab 512 --type q8_0 "
                     "--sliding-window 37", 37, 7, 8, 64},
};
enum { N_MODELS = sizeof k_models / sizeof k_models[0] };
static char g_dir[64];
static char g_path[N_MODELS][256];

static int setup(void **state) {
    (void)state;
    strcpy(g_dir, "/tmp/kvlm-swa-XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    for (int i = 0; i < N_MODELS; i++) {
        snprintf(g_path[i], sizeof g_path[i], "%s/%s", g_dir, k_models[i].file);
        char cmd[2048];
        snprintf(cmd, sizeof cmd, "%s/kvlm synth %s %s >/dev/null", KVLM_BIN_DIR, g_path[i], k_models[i].args);
        if (system(cmd) != 0) {
            fprintf(stderr, "synth failed: %s\n", cmd);
            return -1;
        }
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    for (int i = 0; i < N_MODELS; i++) unlink(g_path[i]);
    rmdir(g_dir);
    return 0;
}

enum { N_TOK = 230, N_CTX = 256 };

typedef struct fixture {
    const synth_model *spec;
    kvlm_model *m;
    int32_t V, P;
    kvlm_kv_type kv;
    kvlm_cache *shared; /* prefix sharing on: full K/V */
    kvlm_token toks[N_TOK];
    float *ref;         /* every row, full K/V, one batch */
} fixture;

static kvlm_session_params params(const fixture *fx, bool shared) {
    kvlm_session_params p = kvlm_session_default_params();
    p.n_threads = 1;
    p.n_ctx = N_CTX;
    p.cache_params.page_tokens = fx->P;
    p.cache_params.type_k = p.cache_params.type_v = fx->kv;
    /* a pool of its own then starts at what the session needs (pages allocated one by one, no growth) */
    p.cache_params.initial_tokens = p.cache_params.max_tokens;
    if (shared) p.cache = fx->shared;
    return p;
}

static kvlm_session *ring_session(const fixture *fx) {
    const kvlm_session_params p = params(fx, false);
    return session_with(fx->m, &p);
}

static kvlm_session *full_session(const fixture *fx) {
    const kvlm_session_params p = params(fx, true);
    return session_with(fx->m, &p);
}

static void fixture_init(fixture *fx, int model, kvlm_kv_type kv, int32_t P) {
    memset(fx, 0, sizeof *fx);
    fx->spec = &k_models[model];
    fx->m = load(g_path[model]);
    fx->V = kvlm_n_vocab(fx->m);
    fx->P = P;
    fx->kv = kv;
    kvlm_cache_params cp = kvlm_cache_default_params();
    cp.page_tokens = P;
    cp.type_k = cp.type_v = kv;
    kvlm_error err;
    assert_int_equal(kvlm_cache_new(fx->m, &cp, &fx->shared, &err), KVLM_OK);
    seq(fx->toks, N_TOK, fx->V, 77u + (uint32_t)model);
    fx->ref = malloc((size_t)N_TOK * (size_t)fx->V * sizeof(float));
    assert_non_null(fx->ref);
    kvlm_session *s = full_session(fx);
    if (kvlm_eval(s, fx->toks, N_TOK, 0, fx->ref, true, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
    kvlm_session_free(s);
}

static void fixture_free(fixture *fx) {
    free(fx->ref);
    kvlm_cache_free(fx->shared);
    kvlm_model_free(fx->m);
}

static void expect_rows(const fixture *fx, const float *got, int from, int to, const char *what) {
    for (int r = from; r < to; r++)
        if (memcmp(got + (size_t)r * (size_t)fx->V, fx->ref + (size_t)r * (size_t)fx->V, (size_t)fx->V * sizeof(float)))
            fail_msg("%s (%s, page %d, KV %d): row %d differs from full K/V", what, fx->spec->file, fx->P, fx->kv, r);
}

/* Feeds toks[from, to) in chunks of `chunk` after what s holds, every row into out. */
static void feed(const fixture *fx, kvlm_session *s, int from, int to, int chunk, float *out) {
    kvlm_error err;
    for (int i = from; i < to; i += chunk) {
        const int end = i + chunk < to ? i + chunk : to;
        if (kvlm_eval(s, fx->toks, end, i, out + (size_t)i * (size_t)fx->V, true, &err) != KVLM_OK)
            fail_msg("eval at %d: %s", i, err.msg);
    }
}

/* The bytes one page of n layers holds (F16 and Q8_0 rows of kv_dim values). */
static int64_t page_bytes(const fixture *fx, int n_layers) {
    const int64_t row = fx->kv == KVLM_KV_F16 ? 2 * fx->spec->kv_dim : fx->spec->kv_dim / 32 * 34;
    return (int64_t)fx->P * 2 * row * n_layers;
}

static void check_config(int model, kvlm_kv_type kv, int32_t P) {
    fixture fx;
    fixture_init(&fx, model, kv, P);
    const int V = fx.V;
    float *got = malloc((size_t)N_TOK * (size_t)V * sizeof(float));
    assert_non_null(got);
    kvlm_error err;

    /* one batch, token by token, chunks of 7: every row the bits of full K/V */
    static const int chunks[] = {N_TOK, 1, 7};
    for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
        memset(got, 0, (size_t)N_TOK * (size_t)V * sizeof(float));
        kvlm_session *s = ring_session(&fx);
        feed(&fx, s, 0, N_TOK, chunks[c], got);
        expect_rows(&fx, got, 0, N_TOK, chunks[c] == N_TOK ? "one batch" : "chunked");
        if (c == 0) {
            /* memory: the global layers' pages for every token, the ring's pages of the local layers */
            kvlm_kv_stats rs, fs;
            kvlm_session_get_stats(s, &rs);
            /* full K/V on a cache of its own sized for the context (no growth: pages come one by one) */
            kvlm_cache_params cp = kvlm_cache_default_params();
            cp.page_tokens = P;
            cp.type_k = cp.type_v = kv;
            cp.initial_tokens = N_CTX;
            kvlm_cache *fc = NULL;
            assert_int_equal(kvlm_cache_new(fx.m, &cp, &fc, &err), KVLM_OK);
            kvlm_session_params fp = params(&fx, false);
            fp.cache = fc;
            kvlm_session *f = session_with(fx.m, &fp);
            feed(&fx, f, 0, N_TOK, N_TOK, got);
            kvlm_session_get_stats(f, &fs);
            const int n_local = fx.spec->n_local, n_global = fx.spec->n_layer - n_local;
            const int32_t cap = (fx.spec->window + 32 + P - 1) / P * P; /* window + one pass of 32, in pages */
            const int64_t pages = (N_TOK + P - 1) / P;
            const int64_t want_ring = pages * page_bytes(&fx, n_global) + cap / P * page_bytes(&fx, n_local);
            const int64_t want_full = pages * page_bytes(&fx, fx.spec->n_layer);
            printf("# %s page %d KV %s: %d tokens, ring %lld bytes (%d-slot ring for %d local layers), full K/V "
                   "%lld bytes\n",
                   fx.spec->file, P, kv == KVLM_KV_F16 ? "f16" : "q8_0", N_TOK, (long long)rs.bytes, cap, n_local,
                   (long long)fs.bytes);
            assert_int_equal(rs.bytes, want_ring);
            assert_int_equal(fs.bytes, want_full);
            assert_true(rs.bytes < fs.bytes / 2);
            assert_int_equal(rs.tokens, N_TOK);
            kvlm_session_free(f);
            kvlm_cache_free(fc);
        }
        kvlm_session_free(s);
    }
    /* kvlm_eval_full (a session of its own for the whole sequence: the ring) */
    kvlm_session_params dp = kvlm_session_default_params();
    if (P == dp.cache_params.page_tokens && kv == KVLM_KV_F16) {
        assert_int_equal(kvlm_eval_full(fx.m, fx.toks, N_TOK, got, true, &err), KVLM_OK);
        expect_rows(&fx, got, 0, N_TOK, "eval_full");
    }
    free(got);
    fixture_free(&fx);
}

static void test_bits_and_memory(void **state) {
    (void)state;
    check_config(0, KVLM_KV_F16, 32);
    check_config(0, KVLM_KV_Q8_0, 16);
    check_config(1, KVLM_KV_Q8_0, 32);
    check_config(1, KVLM_KV_F16, 16);
    check_config(1, KVLM_KV_F16, 20); /* pages not a multiple of 8 (the softmax's lanes) */
}

/* Rollback: as far back as the ring still holds a window before the cut; beyond that truncation is
 * refused (the session unchanged) and a request that differs there starts over, with the same bits. */
static void test_rollback(void **state) {
    (void)state;
    fixture fx;
    fixture_init(&fx, 0, KVLM_KV_F16, 32);
    const int V = fx.V, W = fx.spec->window;
    float *got = malloc((size_t)N_TOK * (size_t)V * sizeof(float));
    kvlm_error err;
    kvlm_session *s = ring_session(&fx);
    feed(&fx, s, 0, 200, 200, got);
    /* held: positions from 200 - 64 = 136; a cut at h needs (h - W, h) */
    const int32_t lo = 200 - (W + 32 + 31) / 32 * 32;
    assert_int_equal(kvlm_session_truncate(s, lo + W - 2, &err), KVLM_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "sliding-window layers"));
    assert_int_equal(kvlm_session_n_past(s), 200);
    assert_int_equal(kvlm_session_truncate(s, lo + W - 1, &err), KVLM_OK);
    /* saved there (the ring holds exactly the window before the cut) and restored, it goes on too */
    char path[256];
    tmp_path(path, sizeof path, "swa-cut", ".kvs");
    assert_int_equal(kvlm_session_save(s, path, &err), KVLM_OK);
    kvlm_session *r = ring_session(&fx);
    if (kvlm_session_load(r, path, &err) != KVLM_OK) fail_msg("load after a cut: %s", err.msg);
    unlink(path);
    feed(&fx, r, lo + W - 1, N_TOK, 13, got);
    expect_rows(&fx, got, lo + W - 1, N_TOK, "restored after a truncation");
    kvlm_session_free(r);
    feed(&fx, s, lo + W - 1, N_TOK, 5, got);
    expect_rows(&fx, got, lo + W - 1, N_TOK, "after a truncation");
    /* a request differing before what the ring can go back to: recomputed from 0 */
    kvlm_token other[N_TOK];
    memcpy(other, fx.toks, sizeof other);
    other[100] = fx.toks[100] == 5 ? 6 : 5;
    assert_int_equal(kvlm_eval(s, other, 120, KVLM_AUTO, got, false, &err), KVLM_OK);
    kvlm_kv_stats st;
    kvlm_session_get_stats(s, &st);
    assert_int_equal(kvlm_session_n_past(s), 120);
    /* back to the reference tokens: all recomputed again (the first 100 are the same but cannot be kept) */
    feed(&fx, s, 0, N_TOK, 50, got);
    expect_rows(&fx, got, 0, N_TOK, "after starting over");
    /* in auto mode, a request that repeats the history up to a point the ring holds keeps it */
    const int64_t misses = (kvlm_session_get_stats(s, &st), st.misses);
    assert_int_equal(kvlm_eval(s, fx.toks, N_TOK - 3, KVLM_AUTO, got, false, &err), KVLM_OK);
    kvlm_session_get_stats(s, &st);
    assert_int_equal(st.misses - misses, 1); /* only the last token is computed */
    assert_memory_equal(got, fx.ref + (size_t)(N_TOK - 4) * V, (size_t)V * sizeof(float));
    kvlm_session_free(s);
    free(got);
    fixture_free(&fx);
}

/* Save and restore, fork: a ring session goes on with the same bits; the file records the ring. */
static void test_save_fork(void **state) {
    (void)state;
    fixture fx;
    fixture_init(&fx, 1, KVLM_KV_Q8_0, 16);
    const int V = fx.V;
    float *got = malloc((size_t)N_TOK * (size_t)V * sizeof(float));
    kvlm_error err;
    char path[256], path2[256];
    tmp_path(path, sizeof path, "swa", ".kvs");
    tmp_path(path2, sizeof path2, "swa-full", ".kvs");
    static const int at[] = {30, 150, 229};
    for (size_t k = 0; k < sizeof at / sizeof at[0]; k++) {
        kvlm_session *s = ring_session(&fx);
        feed(&fx, s, 0, at[k], 64, got);
        assert_int_equal(kvlm_session_save(s, path, &err), KVLM_OK);
        kvlm_session *f = NULL;
        assert_int_equal(kvlm_session_fork(s, &f, &err), KVLM_OK);
        kvlm_session_free(s);
        kvlm_session *r = ring_session(&fx);
        if (kvlm_session_load(r, path, &err) != KVLM_OK) fail_msg("load: %s", err.msg);
        assert_int_equal(kvlm_session_n_past(r), at[k]);
        /* the loaded session saves the same bytes (a file is a function of the state) */
        assert_int_equal(kvlm_session_save(r, path2, &err), KVLM_OK);
        assert_true(files_equal(path, path2));
        feed(&fx, r, at[k], N_TOK, 3, got);
        expect_rows(&fx, got, at[k], N_TOK, "restored");
        memset(got, 0, (size_t)N_TOK * (size_t)V * sizeof(float));
        feed(&fx, f, at[k], N_TOK, 11, got);
        expect_rows(&fx, got, at[k], N_TOK, "forked");
        kvlm_session_free(r);
        kvlm_session_free(f);
        /* a session keeping full K/V refuses the ring's file, and the ring session a full one */
        kvlm_session *full = full_session(&fx);
        assert_int_equal(kvlm_session_load(full, path, &err), KVLM_ERR_INVALID_ARG);
        assert_non_null(strstr(err.msg, "sliding-window layers in a ring of"));
        assert_int_equal(kvlm_session_n_past(full), 0);
        feed(&fx, full, 0, 20, 20, got);
        assert_int_equal(kvlm_session_save(full, path2, &err), KVLM_OK);
        kvlm_session_free(full);
        kvlm_session *r2 = ring_session(&fx);
        assert_int_equal(kvlm_session_load(r2, path2, &err), KVLM_ERR_INVALID_ARG);
        assert_non_null(strstr(err.msg, "whole"));
        kvlm_session_free(r2);
    }
    unlink(path);
    unlink(path2);
    free(got);
    fixture_free(&fx);
}

/* Crafted files: the ring's first position is checked against the next position (the ring's
 * capacity and the window), the ring's pages against its layout; each refused with the session
 * untouched, which then still gives the reference's bits. */
static void test_crafted(void **state) {
    (void)state;
    fixture fx;
    fixture_init(&fx, 0, KVLM_KV_F16, 32);
    const int V = fx.V, W = fx.spec->window;
    float *got = malloc((size_t)N_TOK * (size_t)V * sizeof(float));
    kvlm_error err;
    char path[256];
    tmp_path(path, sizeof path, "swa-crafted", ".kvs");
    kvlm_session *s = ring_session(&fx);
    feed(&fx, s, 0, 180, 180, got);
    assert_int_equal(kvlm_session_save(s, path, &err), KVLM_OK);
    kvlm_session_free(s);
    uint8_t *file = NULL;
    size_t n = 0;
    assert_int_equal(kv_session_read_file(path, "test", &file, &n, &err), KVLM_OK);
    kv_ses_header h;
    memcpy(&h, file, sizeof h);
    assert_int_equal(h.version, KV_SES_VERSION);
    assert_int_equal(h.swa_cap, 64);
    assert_int_equal(h.swa_lo, 180 - 64);
    assert_int_equal(h.n_pages, (180 + 31) / 32 + 2);
    const struct {
        int32_t swa_lo;
        uint32_t swa_cap;
        const char *why;
    } bad[] = {
        {180 - 65, 64, "sliding-window layers from position"}, /* more than the ring's slots */
        {180 - W + 2, 64, "sliding-window layers from position"}, /* less than a window before 180 */
        {0, 64, "sliding-window layers from position"},          /* nothing dropped, yet 180 > 64 */
        {181, 64, "sliding-window layers from position"},
        {-1, 64, "sliding-window layers from position"},
        {180 - 64, 96, "ring of 96"},
        {180 - 64, 0, "whole"},
    };
    uint8_t *e = malloc(n);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memcpy(e, file, n);
        kv_ses_header *eh = (kv_ses_header *)(void *)e;
        eh->swa_lo = bad[i].swa_lo;
        eh->swa_cap = bad[i].swa_cap;
        kv_session_seal(e, n);
        kvlm_session *t = ring_session(&fx);
        feed(&fx, t, 0, 10, 10, got);
        const kvlm_status st = kv_session_load_buffer(t, e, n, "crafted", &err);
        assert_true(st == KVLM_ERR_FORMAT || st == KVLM_ERR_INVALID_ARG);
        if (!strstr(err.msg, bad[i].why)) fail_msg("case %zu: '%s' lacks '%s'", i, err.msg, bad[i].why);
        assert_int_equal(kvlm_session_n_past(t), 10);
        feed(&fx, t, 10, 40, 30, got);
        expect_rows(&fx, got, 10, 40, "after a refused file");
        kvlm_session_free(t);
    }
    /* a ring page stored in another type, or truncated by one byte: refused */
    {
        memcpy(e, file, n);
        kvlm_session *t = ring_session(&fx);
        assert_int_equal(kv_session_load_buffer(t, e, n - 9, "short", &err), KVLM_ERR_FORMAT);
        kvlm_session_free(t);
    }
    /* the file as saved loads and continues exactly */
    kvlm_session *t = ring_session(&fx);
    assert_int_equal(kv_session_load_buffer(t, file, n, "saved", &err), KVLM_OK);
    feed(&fx, t, 180, N_TOK, 9, got);
    expect_rows(&fx, got, 180, N_TOK, "loaded from memory");
    kvlm_session_free(t);
    free(e);
    free(file);
    unlink(path);
    free(got);
    fixture_free(&fx);
}

/* ------------------------------------------------------------ shift and sliding (full K/V) */

/* The cache alone: 3 layers, 0 and 1 local (their own RoPE: base 10000, scale 1), 2 global (base 1e6,
 * linear factor 8), F32 rows. After shifts, every held key equals the key rotated directly to its new
 * position with its layer's RoPE (the "from-scratch" rows of the kept tokens); one RoPE for all layers
 * would fail this on the local ones. */
enum { S_NL = 3, S_HD = 16, S_NKV = 2, S_KVD = S_HD * S_NKV };
static const bool k_swa_layers[S_NL] = {true, true, false};

static kv_rope rope_of(float base, float scale) {
    kv_rope r = {.type = KV_ROPE_NEOX, .n_rot = S_HD, .base = base, .freq_scale = scale, .attn_factor = 1.0f,
                 .beta_fast = 32.0f, .beta_slow = 1.0f, .n_ctx_orig = 4096};
    kv_rope_init(&r);
    return r;
}

static void key_row(int32_t token, int32_t pos, int layer, float *k, float *v) {
    for (int i = 0; i < S_KVD; i++) {
        k[i] = sinf(0.37f * (float)token + 0.11f * (float)i + (float)layer);
        v[i] = cosf(0.23f * (float)token - 0.07f * (float)i + 0.5f * (float)layer);
    }
    const kv_rope r = k_swa_layers[layer] ? rope_of(10000.0f, 1.0f) : rope_of(1e6f, 0.125f);
    kv_rope_apply(&r, k, S_NKV, S_HD, pos);
}

static void check_policy(kvlm_overflow pol) {
    kvlm_cache_params pp = kvlm_cache_default_params();
    pp.type_k = pp.type_v = KVLM_KV_F32;
    pp.page_tokens = 16;
    kv_page_pool *pool;
    kvlm_error err;
    assert_int_equal(kv_pool_create(S_NL, S_KVD, &pp, &pool, &err), KVLM_OK);
    kv_seq_config c = {.n_ctx = 64, .n_layer = S_NL, .n_head_kv = S_NKV, .head_dim = S_HD, .type_k = KV_F32,
                       .type_v = KV_F32, .overflow = pol, .n_keep = 4, .n_sink = 4, .rope = rope_of(1e6f, 0.125f),
                       .max_batch = 32, .swa_layer = k_swa_layers, .swa = 8, .rope_swa = rope_of(10000.0f, 1.0f)};
    kv_seq s;
    assert_int_equal(kv_seq_init(&s, pool, &c, &err), KVLM_OK);
    assert_int_equal(s.swa, 0); /* a policy that shifts keeps every layer in its pages */
    float k[S_KVD], v[S_KVD], kr[S_KVD], vr[S_KVD];
    for (int32_t i = 0; i < 300; i++) {
        const int32_t tok = i * 7 + 1;
        assert_int_equal(kv_seq_prepare(&s, 1, &err), KVLM_OK);
        assert_int_equal(kv_seq_reserve(&s, &tok, 1, &err), KVLM_OK);
        const int32_t slot = kv_seq_slot(&s, 0);
        for (int l = 0; l < S_NL; l++) {
            key_row(tok, s.pos[slot], l, k, v);
            kv_seq_write(&s, l, slot, k, v);
        }
        kv_seq_commit(&s, 1);
    }
    kvlm_kv_stats st;
    kv_pool_stats(pool, &st);
    assert_true(st.shifts > 3);
    for (int32_t sl = 0; sl < s.n; sl++)
        for (int l = 0; l < S_NL; l++) {
            key_row(s.tokens[sl], s.pos[sl], l, k, v);
            const kv_row r = kv_seq_row(&s, l, sl);
            memcpy(kr, r.k, sizeof kr);
            memcpy(vr, r.v, sizeof vr);
            for (int i = 0; i < S_KVD; i++)
                if (!(fabsf(kr[i] - k[i]) <= 1e-4f && vr[i] == v[i]))
                    fail_msg("policy %d slot %d layer %d elem %d: k %g, rotated directly %g", (int)pol, sl, l, i,
                             kr[i], k[i]);
        }
    kv_seq_destroy(&s);
    kv_pool_destroy(pool);
}

static void test_shift_rope_per_layer(void **state) {
    (void)state;
    check_policy(KVLM_OVERFLOW_SHIFT);
    check_policy(KVLM_OVERFLOW_SLIDING);
}

/* Through the model: a gemma3 session shifting (or sliding) its context gives the same bits whether a
 * long sequence is fed in one call (the session cuts it into passes where the shifts fall) or one token
 * at a time, saved and restored midway too. */
static void test_shift_sessions(void **state) {
    (void)state;
    kvlm_model *m = load(g_path[0]);
    const int32_t V = kvlm_n_vocab(m);
    enum { N = 150 };
    kvlm_token toks[N];
    seq(toks, N, V, 5);
    float *a = malloc((size_t)V * sizeof(float)), *b = malloc((size_t)V * sizeof(float));
    kvlm_error err;
    char path[256];
    tmp_path(path, sizeof path, "swa-shift", ".kvs");
    for (int k = 0; k < 2; k++) {
        kvlm_session_params p = kvlm_session_default_params();
        p.n_threads = 1;
        p.n_ctx = 48;
        p.cache_params.page_tokens = 16;
        p.overflow = k == 0 ? KVLM_OVERFLOW_SHIFT : KVLM_OVERFLOW_SLIDING;
        p.n_keep = 4;
        p.n_sink = 4;
        kvlm_session *one = session_with(m, &p), *tbt = session_with(m, &p);
        if (kvlm_eval(one, toks, N, 0, a, false, &err) != KVLM_OK) fail_msg("one call: %s", err.msg);
        for (int i = 0; i < N; i++) {
            if (i == 90) {
                assert_int_equal(kvlm_session_save(tbt, path, &err), KVLM_OK);
                kvlm_session_free(tbt);
                tbt = session_with(m, &p);
                if (kvlm_session_load(tbt, path, &err) != KVLM_OK) fail_msg("load: %s", err.msg);
            }
            if (kvlm_session_n_past(tbt) != i) fail_msg("n_past %d at %d", kvlm_session_n_past(tbt), i);
            if (kvlm_eval(tbt, toks, i + 1, i, b, false, &err) != KVLM_OK) fail_msg("token %d: %s", i, err.msg);
        }
        kvlm_kv_stats st;
        kvlm_session_get_stats(one, &st);
        assert_true(st.shifts > 2);
        if (memcmp(a, b, (size_t)V * sizeof(float)) != 0) fail_msg("policy %d: one call and token by token differ", k);
        kvlm_session_free(one);
        kvlm_session_free(tbt);
    }
    unlink(path);
    free(a);
    free(b);
    kvlm_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bits_and_memory),
        cmocka_unit_test(test_rollback),
        cmocka_unit_test(test_save_fork),
        cmocka_unit_test(test_crafted),
        cmocka_unit_test(test_shift_rope_per_layer),
        cmocka_unit_test(test_shift_sessions),
    };
    return cmocka_run_group_tests_name("swa_ring", tests, setup, teardown);
}
