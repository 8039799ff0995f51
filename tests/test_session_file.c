/* Session files under attack: crafted files whose checksum is recomputed
 * (so only the loader's validation stands between them and the engine),
 * special files and links as paths, and the orphaned temporaries of killed
 * saves. Every refused load must leave the session as it was and usable. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "kvlm.h"
#include "test_util.h"
#include "api/session_impl.h"

#define AIDREAMS KVLM_MODELS_DIR "/llama/aidreams260K-f32.gguf"

/* ------------------------------------------------------------ file images */

/* img, slurp, spit: test_util.h */

static img copy(const img *m) {
    img c = {malloc(m->n + 64), m->n};
    memcpy(c.p, m->p, m->n);
    return c;
}

/* The checksum as the format documents it (XXH3-64 of all bytes before the
 * last 8), computed here independently of the library. */
static void seal(img *m) {
    const uint64_t sum = XXH3_64bits(m->p, m->n - 8);
    memcpy(m->p + m->n - 8, &sum, 8);
}

static kv_ses_header *hdr(img *m) { return (kv_ses_header *)m->p; }
static int32_t n_of(img *m) { return hdr(m)->n; }
static int32_t *tokens_of(img *m) { return (int32_t *)(m->p + sizeof(kv_ses_header)); }
static int32_t *pos_of(img *m) { return tokens_of(m) + n_of(m); }

/* Offset of page j's record ({types[2], sizes[2]} then the zstd bytes). */
static size_t page_off(img *m, uint32_t j) {
    size_t off = sizeof(kv_ses_header) + (size_t)n_of(m) * 8;
    for (uint32_t i = 0; i < j; i++) {
        uint64_t sizes[2];
        memcpy(sizes, m->p + off + 8, 16);
        off += 24 + (size_t)sizes[1];
    }
    return off;
}

static char bad_path[128];

/* What a session holds, to check a refused load left it alone. */
typedef struct snapshot {
    int32_t n_past, n_hist;
    kvlm_token hist[1024];
} snapshot;

static snapshot snap(kvlm_session *s) {
    snapshot z;
    memset(&z, 0, sizeof z);
    z.n_past = kvlm_session_n_past(s);
    z.n_hist = kvlm_session_tokens(s, z.hist, 1024);
    return z;
}

static void assert_same(kvlm_session *s, const snapshot *z) {
    snapshot now = snap(s);
    assert_int_equal(now.n_past, z->n_past);
    assert_int_equal(now.n_hist, z->n_hist);
    assert_memory_equal(now.hist, z->hist, sizeof now.hist);
}

/* Writes the edited, resealed image and expects the load to fail with `code`
 * (and a message containing `what`, if given) with the session untouched. */
static void expect_refused(kvlm_session *s, img *m, kvlm_status code, const char *what, const char *label) {
    seal(m);
    spit(bad_path, m);
    const snapshot before = snap(s);
    kvlm_error err;
    const kvlm_status st = kvlm_session_load(s, bad_path, &err);
    if (st == KVLM_OK) fail_msg("%s: a crafted file was accepted", label);
    if (st != code) fail_msg("%s: status %d (want %d): %s", label, (int)st, (int)code, err.msg);
    if (what && !strstr(err.msg, what)) fail_msg("%s: message lacks '%s': %s", label, what, err.msg);
    assert_same(s, &before);
}

/* A copy of good with the header field at off set to value (bytes: 4 or 8 wide), resealed: refused
 * as expect_refused says. */
static void expect_field_refused(kvlm_session *s, const img *good, size_t off, int64_t value, int bytes,
                                 kvlm_status code, const char *what, const char *label) {
    img e = copy(good);
    if (bytes == 8) {
        memcpy(e.p + off, &value, 8);
    } else {
        const int32_t v = (int32_t)value;
        memcpy(e.p + off, &v, 4);
    }
    char full[128];
    snprintf(full, sizeof full, "%s: header field at %zu = %lld", label, off, (long long)value);
    expect_refused(s, &e, code, what, full);
    free(e.p);
}

/* ------------------------------------------------------------ crafted counts (append-only cache) */

static void test_crafted_error_policy(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    const int V = kvlm_n_vocab(m);
    kvlm_token t[100];
    seq(t, 100, V, 21);
    float *ref = malloc((size_t)100 * V * 4), *got = malloc((size_t)V * 4);
    kvlm_error err;
    assert_int_equal(kvlm_eval_full(m, t, 100, ref, true, &err), KVLM_OK);
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 128;
    kvlm_session *a = session_with(m, &p), *b = session_with(m, &p);
    assert_int_equal(kvlm_eval(a, t, 70, 0, NULL, false, &err), KVLM_OK);
    char path[128];
    tmp_path(path, sizeof path, "craft", ".ses");
    tmp_path(bad_path, sizeof bad_path, "craft-bad", ".ses");
    assert_int_equal(kvlm_session_save(a, path, &err), KVLM_OK);
    img good = slurp(path);
    /* the library's checksum is the documented one */
    uint64_t stored;
    memcpy(&stored, good.p + good.n - 8, 8);
    assert_true(stored == kv_session_checksum(good.p, good.n - 8));
    assert_true(stored == XXH3_64bits(good.p, good.n - 8));
    assert_int_equal(n_of(&good), 70);
    assert_int_equal(hdr(&good)->next_pos, 70);
    assert_int_equal(hdr(&good)->n_pages, 3); /* 70 tokens in pages of 32 */

    /* control: the image resealed without edits loads (so the test's checksum is right) */
    img c = copy(&good);
    seal(&c);
    spit(bad_path, &c);
    free(c.p);
    assert_int_equal(kvlm_session_load(b, bad_path, &err), KVLM_OK);
    assert_int_equal(kvlm_session_n_past(b), 70);

    const int32_t n = 70, P = 32;
    struct {
        size_t off;
        int32_t value;
        const char *what;
    } fields[] = {
        {offsetof(kv_ses_header, next_pos), n + 40, "position"},      /* the SIGSEGV of issue 12 */
        {offsetof(kv_ses_header, next_pos), 2752512, "position"},
        {offsetof(kv_ses_header, next_pos), n + 1, "position"},       /* one uninitialised slot */
        {offsetof(kv_ses_header, next_pos), n - 1, "position"},
        {offsetof(kv_ses_header, next_pos), -1, "position"},
        {offsetof(kv_ses_header, next_pos), INT32_MAX, "position"},
        {offsetof(kv_ses_header, n), -1, "slots"},
        {offsetof(kv_ses_header, n), 129, "slots"},                   /* past the context */
        {offsetof(kv_ses_header, n), INT32_MAX, "slots"},
        {offsetof(kv_ses_header, n_pages), 2, "pages"},
        {offsetof(kv_ses_header, n_pages), 4, "pages"},
        {offsetof(kv_ses_header, n_pages), 0, "pages"},
        {offsetof(kv_ses_header, n_pages), -1, "pages"},
        {offsetof(kv_ses_header, n_consumed), n + 1, "consumed"},
        {offsetof(kv_ses_header, n_consumed), n - 1, "consumed"},
        {offsetof(kv_ses_header, n_consumed), -1, "consumed"},
        {offsetof(kv_ses_header, shareable), 2, "shareable"},
        {offsetof(kv_ses_header, n_ctx), 0, "context"},
        {offsetof(kv_ses_header, n_ctx), n - 1, "context"},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        expect_field_refused(b, &good, fields[i].off, fields[i].value, 4, KVLM_ERR_FORMAT, fields[i].what, "append");
    /* n and next_pos moved together: the arrays no longer line up with the pages */
    {
        img e = copy(&good);
        hdr(&e)->n = n + 1;
        hdr(&e)->next_pos = n + 1;
        hdr(&e)->n_consumed = n + 1;
        expect_refused(b, &e, KVLM_ERR_FORMAT, NULL, "n = next_pos = n + 1");
        free(e.p);
        e = copy(&good);
        hdr(&e)->n = n - P;
        hdr(&e)->next_pos = n - P;
        hdr(&e)->n_consumed = n - P;
        expect_refused(b, &e, KVLM_ERR_FORMAT, NULL, "n = next_pos = n - P");
        free(e.p);
    }
    /* positions: every one must be its slot */
    const int32_t pos_edits[][2] = {{5, 6}, {0, -1}, {69, 70}, {69, 200}, {40, 39}, {0, INT32_MIN}};
    for (size_t i = 0; i < sizeof pos_edits / sizeof pos_edits[0]; i++) {
        img e = copy(&good);
        pos_of(&e)[pos_edits[i][0]] = pos_edits[i][1];
        expect_refused(b, &e, KVLM_ERR_FORMAT, "position", "position edit");
        free(e.p);
    }
    {
        img e = copy(&good); /* two positions swapped */
        int32_t *ps = pos_of(&e), tmp = ps[10];
        ps[10] = ps[11];
        ps[11] = tmp;
        expect_refused(b, &e, KVLM_ERR_FORMAT, "position", "swapped positions");
        free(e.p);
    }
    /* token ids */
    const int32_t tok_edits[][2] = {{3, V}, {0, -1}, {69, INT32_MAX}, {30, V + 1000}};
    for (size_t i = 0; i < sizeof tok_edits / sizeof tok_edits[0]; i++) {
        img e = copy(&good);
        tokens_of(&e)[tok_edits[i][0]] = tok_edits[i][1];
        expect_refused(b, &e, KVLM_ERR_FORMAT, "vocabulary", "token edit");
        free(e.p);
    }
    /* page records: types the session does not use, sizes that are not the layout's */
    for (uint32_t j = 0; j < 3; j++) {
        const size_t off = page_off(&good, j);
        const uint32_t other_types[][2] = {{KVLM_KV_Q8_0, KVLM_KV_Q8_0}, {KVLM_KV_F32, KVLM_KV_F16},
                                           {KVLM_KV_F16, KVLM_KV_Q4_0}, {12345, 1}, {1, UINT32_MAX}};
        for (size_t k = 0; k < sizeof other_types / sizeof other_types[0]; k++) {
            img e = copy(&good);
            memcpy(e.p + off, other_types[k], 8);
            expect_refused(b, &e, KVLM_ERR_FORMAT, "does not use", "page type");
            free(e.p);
        }
        uint64_t sizes[2];
        memcpy(sizes, good.p + off + 8, 16);
        const uint64_t raw_edits[] = {sizes[0] - 1, sizes[0] + 1, sizes[0] / 2, 0, UINT64_MAX};
        for (size_t k = 0; k < sizeof raw_edits / sizeof raw_edits[0]; k++) {
            img e = copy(&good);
            memcpy(e.p + off + 8, &raw_edits[k], 8);
            expect_refused(b, &e, KVLM_ERR_FORMAT, "bytes", "page raw size");
            free(e.p);
        }
        const uint64_t comp_edits[] = {sizes[1] - 1, sizes[1] + 1, 0, UINT64_MAX, (uint64_t)good.n};
        for (size_t k = 0; k < sizeof comp_edits / sizeof comp_edits[0]; k++) {
            img e = copy(&good);
            memcpy(e.p + off + 16, &comp_edits[k], 8);
            expect_refused(b, &e, KVLM_ERR_FORMAT, NULL, "page compressed size");
            free(e.p);
        }
    }
    /* header size, trailing bytes */
    {
        img e = copy(&good);
        hdr(&e)->header_bytes = 84;
        expect_refused(b, &e, KVLM_ERR_UNSUPPORTED, "version", "header_bytes");
        free(e.p);
        e = copy(&good);
        memmove(e.p + e.n - 7, e.p + e.n - 8, 8); /* one byte before the checksum */
        e.p[e.n - 8] = 0;
        e.n += 1;
        expect_refused(b, &e, KVLM_ERR_FORMAT, "trailing", "trailing byte");
        free(e.p);
    }

    /* b was refused every time and still continues bit-exactly */
    for (int i = 70; i < 75; i++) {
        assert_int_equal(kvlm_eval(b, t, i + 1, i, got, false, &err), KVLM_OK);
        assert_memory_equal(got, ref + (size_t)i * V, (size_t)V * 4);
    }
    free(good.p);
    unlink(path);
    unlink(bad_path);
    free(ref);
    free(got);
    kvlm_session_free(a);
    kvlm_session_free(b);
    kvlm_model_free(m);
}

/* ------------------------------------------------------------ rings, shifts, compression */

/* Saves a, loads into b, and checks both continue with identical logits for k tokens. */
static img save_load_continue(kvlm_session *a, kvlm_session *b, const kvlm_token *t, int from, int k, int V,
                              const char *path) {
    kvlm_error err;
    assert_int_equal(kvlm_session_save(a, path, &err), KVLM_OK);
    if (kvlm_session_load(b, path, &err) != KVLM_OK) fail_msg("load: %s", err.msg);
    assert_int_equal(kvlm_session_n_past(b), kvlm_session_n_past(a));
    img good = slurp(path);
    float *la = malloc((size_t)V * 4), *lb = malloc((size_t)V * 4);
    for (int i = from; i < from + k; i++) {
        assert_int_equal(kvlm_eval(a, t, i + 1, i, la, false, &err), KVLM_OK);
        assert_int_equal(kvlm_eval(b, t, i + 1, i, lb, false, &err), KVLM_OK);
        assert_memory_equal(la, lb, (size_t)V * 4);
    }
    free(la);
    free(lb);
    /* b back at the saved state for the refusals that follow */
    assert_int_equal(kvlm_session_load(b, path, &err), KVLM_OK);
    return good;
}

static void test_crafted_ring(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    const int V = kvlm_n_vocab(m);
    kvlm_token t[200];
    seq(t, 200, V, 31);
    kvlm_error err;
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 600;
    p.overflow = KVLM_OVERFLOW_RING;
    p.window = 48;
    p.compress_after = 32; /* ignored by a ring: its pages are never compressed */
    char path[128];
    tmp_path(path, sizeof path, "ring", ".ses");
    tmp_path(bad_path, sizeof bad_path, "ring-bad", ".ses");
    /* not wrapped yet (40 < capacity), then wrapped (150 > capacity) */
    const int lens[2] = {40, 150};
    for (int w = 0; w < 2; w++) {
        kvlm_session *a = session_with(m, &p), *b = session_with(m, &p);
        assert_int_equal(kvlm_eval(a, t, lens[w], 0, NULL, false, &err), KVLM_OK);
        img good = save_load_continue(a, b, t, lens[w], 4, V, path);
        const int32_t cap = hdr(&good)->n_ctx; /* the ring's capacity: window + one pass, in pages */
        assert_int_equal(cap % 32, 0);
        assert_true(cap >= 48 && cap < 150);
        assert_int_equal(hdr(&good)->next_pos, lens[w]);
        assert_int_equal(n_of(&good), lens[w] < cap ? lens[w] : cap);
        assert_int_equal(hdr(&good)->n_pages, cap / 32);
        if (w == 1) assert_int_equal(pos_of(&good)[0], lens[w] - lens[w] % cap); /* slot 0 was overwritten */

        const int32_t np = hdr(&good)->next_pos;
        struct {
            size_t off;
            int32_t value;
        } fields[] = {
            {offsetof(kv_ses_header, next_pos), np + 1},
            {offsetof(kv_ses_header, next_pos), np - 1},
            {offsetof(kv_ses_header, next_pos), np + cap},   /* same slots mod cap, other positions */
            {offsetof(kv_ses_header, next_pos), INT32_MAX - 5},
            {offsetof(kv_ses_header, next_pos), -1},
            {offsetof(kv_ses_header, n), n_of(&good) - 1},
            {offsetof(kv_ses_header, n), cap + 1},
            {offsetof(kv_ses_header, n_consumed), np + 1},
            {offsetof(kv_ses_header, n_consumed), np - 1},
            {offsetof(kv_ses_header, shareable), 1},          /* a ring is never shared */
            {offsetof(kv_ses_header, n_ctx), cap + 32},
            {offsetof(kv_ses_header, n_ctx), 600},
            {offsetof(kv_ses_header, n_pages), cap / 32 - 1},
            {offsetof(kv_ses_header, n_pages), cap / 32 + 1},
        };
        for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
            expect_field_refused(b, &good, fields[i].off, fields[i].value, 4, KVLM_ERR_FORMAT, NULL, "ring");
        /* a slot's position off by one, a lap back, two laps ahead */
        const int32_t slot = n_of(&good) / 2;
        const int32_t deltas[] = {1, -1, -cap, 2 * cap, cap + 1};
        for (size_t i = 0; i < sizeof deltas / sizeof deltas[0]; i++) {
            img e = copy(&good);
            pos_of(&e)[slot] += deltas[i];
            expect_refused(b, &e, KVLM_ERR_FORMAT, "position", "ring position");
            free(e.p);
        }
        /* compressed-type pages never exist in a ring, even in a session that compresses */
        {
            img e = copy(&good);
            const uint32_t q8[2] = {KVLM_KV_Q8_0, KVLM_KV_Q8_0};
            memcpy(e.p + page_off(&e, 0), q8, 8);
            expect_refused(b, &e, KVLM_ERR_FORMAT, "does not use", "ring page type");
            free(e.p);
        }
        /* one lap ahead is what a slot of a dropped position holds after a rollback of the ring (attention
           masks it until it is overwritten); a held position's slot cannot (format v2 records which
           positions were dropped): refused. The state of a rollback by a few tokens is accepted */
        {
            img e = copy(&good);
            pos_of(&e)[slot] += cap;
            expect_refused(b, &e, KVLM_ERR_FORMAT, "position", "ring slot a lap ahead");
            free(e.p);
            float *lg = malloc((size_t)V * 4);
            if (w == 1) { /* wrapped: n stays the capacity, the last 3 slots are a lap ahead */
                e = copy(&good);
                const int32_t back = np - 3;
                hdr(&e)->next_pos = back;
                hdr(&e)->n_consumed = back;
                seal(&e);
                spit(bad_path, &e);
                free(e.p);
                assert_int_equal(kvlm_session_load(b, bad_path, &err), KVLM_OK);
                assert_int_equal(kvlm_session_n_past(b), back);
                for (int i = back; i < back + 3; i++)
                    assert_int_equal(kvlm_eval(b, t, i + 1, i, lg, false, &err), KVLM_OK);
            }
            free(lg);
            assert_int_equal(kvlm_session_load(b, path, &err), KVLM_OK);
        }
        /* b still continues like a */
        float *la = malloc((size_t)V * 4), *lb = malloc((size_t)V * 4);
        assert_int_equal(kvlm_eval(a, t, lens[w] + 5, lens[w] + 4, la, false, &err), KVLM_OK);
        assert_int_equal(kvlm_session_load(b, path, &err), KVLM_OK);
        for (int i = lens[w]; i < lens[w] + 5; i++) assert_int_equal(kvlm_eval(b, t, i + 1, i, lb, false, &err), KVLM_OK);
        assert_memory_equal(la, lb, (size_t)V * 4);
        free(la);
        free(lb);
        free(good.p);
        kvlm_session_free(a);
        kvlm_session_free(b);
    }
    unlink(path);
    unlink(bad_path);
    kvlm_model_free(m);
}

static void test_crafted_shift_and_compression(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    const int V = kvlm_n_vocab(m);
    kvlm_token t[200];
    seq(t, 200, V, 41);
    kvlm_error err;
    char path[128];
    tmp_path(path, sizeof path, "shift", ".ses");
    tmp_path(bad_path, sizeof bad_path, "shift-bad", ".ses");

    /* shift and sliding: after a shift n < n_consumed, positions are still 0..n-1 */
    const kvlm_overflow pols[2] = {KVLM_OVERFLOW_SHIFT, KVLM_OVERFLOW_SLIDING};
    for (int k = 0; k < 2; k++) {
        kvlm_session_params p = kvlm_session_default_params();
        p.n_ctx = 64;
        p.overflow = pols[k];
        p.n_keep = 8;
        kvlm_session *a = session_with(m, &p), *b = session_with(m, &p);
        for (int i = 0; i < 100; i += 10) assert_int_equal(kvlm_eval(a, t, i + 10, i, NULL, false, &err), KVLM_OK);
        img good = save_load_continue(a, b, t, 100, 3, V, path);
        assert_int_equal(hdr(&good)->n_consumed, 100);
        assert_true(n_of(&good) < 100 && n_of(&good) <= 64);
        assert_int_equal(hdr(&good)->next_pos, n_of(&good));
        assert_int_equal(hdr(&good)->shareable, 0);
        const int32_t n = n_of(&good);
        struct {
            size_t off;
            int32_t value;
        } fields[] = {
            {offsetof(kv_ses_header, n_consumed), n - 1},
            {offsetof(kv_ses_header, n_consumed), KV_POS_LIMIT + 1},
            {offsetof(kv_ses_header, shareable), 1}, /* shifted pages must not enter the prefix index */
            {offsetof(kv_ses_header, next_pos), n + 1},
            {offsetof(kv_ses_header, next_pos), 100},
            {offsetof(kv_ses_header, n), 65},
        };
        for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
            expect_field_refused(b, &good, fields[i].off, fields[i].value, 4, KVLM_ERR_FORMAT, NULL, "shift");
        img e = copy(&good);
        pos_of(&e)[n - 1] = 99; /* the position it had before the shift */
        expect_refused(b, &e, KVLM_ERR_FORMAT, "position", "shift position");
        free(e.p);
        free(good.p);
        kvlm_session_free(a);
        kvlm_session_free(b);
    }

    /* tiered compression: old pages are Q8_0; only a session that compresses to Q8_0 takes them */
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 128;
    p.compress_after = 32;
    kvlm_session *a = session_with(m, &p), *b = session_with(m, &p);
    for (int i = 0; i < 120; i += 8) assert_int_equal(kvlm_eval(a, t, i + 8, i, NULL, false, &err), KVLM_OK);
    img good = save_load_continue(a, b, t, 120, 2, V, path);
    uint32_t types[2];
    memcpy(types, good.p + page_off(&good, 0), 8);
    assert_int_equal(types[0], KVLM_KV_Q8_0);
    memcpy(types, good.p + page_off(&good, 3), 8);
    assert_int_equal(types[0], KVLM_KV_F16);
    kvlm_session_params p4 = p;
    p4.compress_type = KVLM_KV_Q4_0;
    kvlm_session_params p0 = p;
    p0.compress_after = 0;
    kvlm_session *c4 = session_with(m, &p4), *c0 = session_with(m, &p0);
    img e = copy(&good);
    expect_refused(c4, &e, KVLM_ERR_FORMAT, "does not use", "q8_0 pages into a q4_0-compressing session");
    expect_refused(c0, &e, KVLM_ERR_FORMAT, "does not use", "q8_0 pages into a session without compression");
    free(e.p);
    /* a compressed page relabelled as the session's own type: the size no longer matches */
    e = copy(&good);
    const uint32_t f16[2] = {KVLM_KV_F16, KVLM_KV_F16};
    memcpy(e.p + page_off(&e, 0), f16, 8);
    expect_refused(b, &e, KVLM_ERR_FORMAT, "bytes", "relabelled page");
    free(e.p);
    free(good.p);
    kvlm_session_free(a);
    kvlm_session_free(b);
    kvlm_session_free(c4);
    kvlm_session_free(c0);
    unlink(path);
    unlink(bad_path);
    kvlm_model_free(m);
}

/* Random edits of the counts, positions, tokens and page records, resealed:
 * each load either fails, leaving the session as it was, or gives a session
 * that evaluates (under the sanitizers any out-of-bounds read aborts). */
static void test_crafted_random(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    const int V = kvlm_n_vocab(m);
    kvlm_token t[100];
    seq(t, 100, V, 51);
    kvlm_error err;
    char path[128];
    tmp_path(path, sizeof path, "rand", ".ses");
    tmp_path(bad_path, sizeof bad_path, "rand-bad", ".ses");
    const kvlm_overflow pols[3] = {KVLM_OVERFLOW_ERROR, KVLM_OVERFLOW_SHIFT, KVLM_OVERFLOW_RING};
    float *l = malloc((size_t)V * 4);
    uint32_t lcg = 12345;
    int accepted = 0, refused = 0;
    for (int k = 0; k < 3; k++) {
        kvlm_session_params p = kvlm_session_default_params();
        p.n_ctx = k == 0 ? 128 : k == 2 ? 400 : 64;
        p.overflow = pols[k];
        p.window = 40;
        kvlm_session *a = session_with(m, &p), *b = session_with(m, &p);
        for (int i = 0; i < 90; i += 15) assert_int_equal(kvlm_eval(a, t, i + 15, i, NULL, false, &err), KVLM_OK);
        assert_int_equal(kvlm_session_save(a, path, &err), KVLM_OK);
        img good = slurp(path);
        /* the structured words: header counts (after magic, version and fingerprint), the
           token and position arrays, and each page record's types and sizes */
        const uint32_t n_pages = hdr(&good)->n_pages;
        size_t *rec = malloc(n_pages * sizeof *rec);
        for (uint32_t j = 0; j < n_pages; j++) rec[j] = page_off(&good, j);
        const size_t arrays = (size_t)n_of(&good) * 2;
        for (int it = 0; it < 150; it++) {
            img e = copy(&good);
            const int edits = 1 + (int)((lcg = lcg * 1664525u + 1013904223u) >> 30);
            for (int x = 0; x < edits; x++) {
                lcg = lcg * 1664525u + 1013904223u;
                const uint32_t r = (lcg >> 8) % 3u, u = lcg >> 12;
                const size_t off = r == 0   ? 32 + (size_t)(u % 18u) * 4
                                   : r == 1 ? sizeof(kv_ses_header) + (size_t)(u % arrays) * 4
                                            : rec[(u / 6u) % n_pages] + (size_t)(u % 6u) * 4;
                int32_t v;
                memcpy(&v, e.p + off, 4);
                lcg = lcg * 1664525u + 1013904223u;
                switch (lcg >> 29) {
                case 0: v += 1; break;
                case 1: v -= 1; break;
                case 2: v += 32; break;
                case 3: v = -v; break;
                case 4: v = (int32_t)(lcg & 0xffff); break;
                case 5: v = INT32_MAX; break;
                default: v ^= (int32_t)(1u << (lcg & 31)); break;
                }
                memcpy(e.p + off, &v, 4);
            }
            seal(&e);
            spit(bad_path, &e);
            free(e.p);
            assert_int_equal(kvlm_session_load(b, path, &err), KVLM_OK);
            const snapshot before = snap(b);
            if (kvlm_session_load(b, bad_path, &err) != KVLM_OK) {
                refused++;
                assert_same(b, &before);
                continue;
            }
            accepted++; /* an edit the rules allow (a token id, page bytes): the session must run */
            const int32_t np = kvlm_session_n_past(b);
            kvlm_token *all = calloc((size_t)np + 1, sizeof *all);
            /* the history then one token (append-only sessions do not look at the prefix) */
            if (kvlm_session_tokens(b, all, np) != np) memset(all, 0, (size_t)np * sizeof *all);
            all[np] = 5;
            if (kvlm_eval(b, all, np + 1, np, l, false, &err) != KVLM_OK) fail_msg("accepted file: %s", err.msg);
            free(all);
        }
        free(rec);
        free(good.p);
        kvlm_session_free(a);
        kvlm_session_free(b);
    }
    printf("# random edits of resealed files: %d refused, %d accepted and evaluated\n", refused, accepted);
    assert_true(refused > 300);
    free(l);
    unlink(path);
    unlink(bad_path);
    kvlm_model_free(m);
}

/* ------------------------------------------------------------ the dropped-token record (format v2) */

static void stats_of(kvlm_session *s, int64_t out[3]) {
    kvlm_kv_stats st;
    kvlm_session_get_stats(s, &st);
    out[0] = st.hits;
    out[1] = st.misses;
    out[2] = st.recomputed;
}

/* The whole-history request r[0, n) (KVLM_AUTO) on the live session a and the loaded b: identical
 * logits, identical reuse counts; returns the tokens reused. */
static int64_t same_request(kvlm_session *a, kvlm_session *b, const kvlm_token *r, int n, int V) {
    kvlm_error err;
    float *la = malloc((size_t)V * 4), *lb = malloc((size_t)V * 4);
    int64_t sa0[3], sb0[3], sa1[3], sb1[3];
    stats_of(a, sa0);
    stats_of(b, sb0);
    if (kvlm_eval(a, r, n, KVLM_AUTO, la, false, &err) != KVLM_OK) fail_msg("live: %s", err.msg);
    if (kvlm_eval(b, r, n, KVLM_AUTO, lb, false, &err) != KVLM_OK) fail_msg("loaded: %s", err.msg);
    stats_of(a, sa1);
    stats_of(b, sb1);
    for (int i = 0; i < 3; i++) assert_int_equal(sa1[i] - sa0[i], sb1[i] - sb0[i]);
    assert_memory_equal(la, lb, (size_t)V * 4);
    assert_int_equal(kvlm_session_n_past(a), n);
    assert_int_equal(kvlm_session_n_past(b), n);
    free(la);
    free(lb);
    return sa1[0] - sa0[0];
}

/* A version 1 image of a version 2 file: the header without the dropped-token record. */
static img to_v1(const img *m) {
    const size_t extra = sizeof(kv_ses_header) - KV_SES_V1_HEADER;
    img c = {malloc(m->n), m->n - extra};
    memcpy(c.p, m->p, KV_SES_V1_HEADER);
    memcpy(c.p + KV_SES_V1_HEADER, m->p + sizeof(kv_ses_header), m->n - sizeof(kv_ses_header));
    kv_ses_header *h = (kv_ses_header *)c.p;
    h->version = 1;
    h->header_bytes = KV_SES_V1_HEADER;
    seal(&c);
    return c;
}

/* A version 2 image of a version 3 file: the header without the sliding-window ring's first position. */
static img to_v2(const img *m) {
    const size_t extra = sizeof(kv_ses_header) - KV_SES_V2_HEADER;
    img c = {malloc(m->n), m->n - extra};
    memcpy(c.p, m->p, KV_SES_V2_HEADER);
    memcpy(c.p + KV_SES_V2_HEADER, m->p + sizeof(kv_ses_header), m->n - sizeof(kv_ses_header));
    kv_ses_header *h = (kv_ses_header *)c.p;
    h->version = 2;
    h->header_bytes = KV_SES_V2_HEADER;
    seal(&c);
    return c;
}

/* A shifted (shift, sliding) or wrapped (ring) session saved and loaded checks a request against its
 * whole history as the live session does: the whole history reuses the held tail, a difference
 * inside the dropped part goes back to the kept head. Crafted records are refused. */
static void test_shifted_history(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    const int V = kvlm_n_vocab(m);
    kvlm_token t[220], r[220];
    seq(t, 220, V, 61);
    kvlm_error err;
    char path[128];
    tmp_path(path, sizeof path, "hist", ".ses");
    tmp_path(bad_path, sizeof bad_path, "hist-bad", ".ses");
    const kvlm_overflow pols[3] = {KVLM_OVERFLOW_SHIFT, KVLM_OVERFLOW_SLIDING, KVLM_OVERFLOW_RING};
    for (int k = 0; k < 3; k++) {
        const bool ring = pols[k] == KVLM_OVERFLOW_RING;
        kvlm_session_params p = kvlm_session_default_params();
        p.n_ctx = ring ? 400 : 64;
        p.overflow = pols[k];
        p.n_keep = 8;
        p.n_sink = 4;
        p.window = 48;
        const int head = pols[k] == KVLM_OVERFLOW_SHIFT ? 8 : pols[k] == KVLM_OVERFLOW_SLIDING ? 4 : 0;
        const int L = ring ? 150 : 100;
        kvlm_session *a = session_with(m, &p), *b = session_with(m, &p);
        for (int i = 0; i < L; i += 10) assert_int_equal(kvlm_eval(a, t, i + 10, i, NULL, false, &err), KVLM_OK);
        assert_int_equal(kvlm_session_save(a, path, &err), KVLM_OK);
        img good = slurp(path);
        const kv_ses_header *h = hdr(&good);
        assert_int_equal(h->version, KV_SES_VERSION);
        assert_int_equal(h->n_head, head);
        assert_true(h->n_dropped > 3);
        if (ring) {
            assert_int_equal(h->n_dropped, L - h->n_ctx);
        } else {
            assert_int_equal(h->n_dropped, L - h->n);
        }
        /* the hash is the chain of the dropped tokens, in order (the format's definition) */
        uint64_t hh = 0;
        for (int64_t i = head; i < head + h->n_dropped; i++) hh = kv_hist_hash(hh, t[i]);
        assert_true(hh == h->drop_hash);

        /* the whole history and 5 more tokens: the loaded session reuses the held tail like the live one */
        assert_int_equal(kvlm_session_load(b, path, &err), KVLM_OK);
        assert_int_equal(same_request(a, b, t, L + 5, V), L);
        /* one differing inside the dropped part goes back to the kept head, on both */
        assert_int_equal(kvlm_session_save(a, path, &err), KVLM_OK);
        assert_int_equal(kvlm_session_load(b, path, &err), KVLM_OK);
        memcpy(r, t, sizeof r);
        r[head + 2] = (r[head + 2] + 1) % V;
        assert_int_equal(same_request(a, b, r, L + 8, V), head);
        /* and back to the original history: computed again on both, still in step */
        same_request(a, b, t, L + 12, V);

        /* a record that was edited and resealed */
        const int64_t nd = h->n_dropped;
        const int32_t np = h->next_pos, cap = h->n_ctx;
        struct {
            size_t off;
            int64_t value;
            int bytes;
            const char *what;
        } fields[] = {
            {offsetof(kv_ses_header, n_dropped), nd + 1, 8, NULL},
            {offsetof(kv_ses_header, n_dropped), nd - 1, 8, NULL},
            {offsetof(kv_ses_header, n_dropped), 0, 8, ring ? NULL : "dropped"},
            {offsetof(kv_ses_header, n_dropped), -1, 8, NULL},
            {offsetof(kv_ses_header, n_dropped), (int64_t)1 << 40, 8, NULL},
            {offsetof(kv_ses_header, n_dropped), ring ? np + 1 : L, 8, NULL},
            {offsetof(kv_ses_header, n_dropped), ring ? np - cap - 1 : nd + 64, 8, NULL},
            {offsetof(kv_ses_header, n_head), head + 1, 4, "head"},
            {offsetof(kv_ses_header, n_head), ring ? 1 : head - 1, 4, "head"},
            {offsetof(kv_ses_header, n_head), -1, 4, "head"},
            {offsetof(kv_ses_header, reserved), 1, 4, "reserved"},
            {offsetof(kv_ses_header, swa_lo), 1, 4, "sliding-window ring position"},
            {offsetof(kv_ses_header, n_consumed), ring ? np + 1 : L + 1, 4, NULL},
        };
        char label[32];
        snprintf(label, sizeof label, "policy %d record", (int)pols[k]);
        for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
            expect_field_refused(b, &good, fields[i].off, fields[i].value, fields[i].bytes, KVLM_ERR_FORMAT,
                                 fields[i].what, label);
        /* a hash with nothing dropped */
        {
            img e = copy(&good);
            hdr(&e)->n_dropped = 0;
            if (!ring) hdr(&e)->n_consumed = hdr(&e)->n;
            expect_refused(b, &e, KVLM_ERR_FORMAT, NULL, "hash without dropped tokens");
            free(e.p);
        }
        /* a shifted version 1 file has no record: refused, not loaded as something else */
        {
            img e = to_v1(&good);
            expect_refused(b, &e, KVLM_ERR_UNSUPPORTED, "version 1", "shifted version 1 file");
            free(e.p);
        }
        /* a session whose head differs cannot take a shifted file (its history splits elsewhere) */
        if (!ring) {
            kvlm_session_params q = p;
            q.n_keep = 6;
            q.n_sink = 2;
            kvlm_session *c = session_with(m, &q);
            img e = copy(&good);
            expect_refused(c, &e, KVLM_ERR_FORMAT, "head", "another head");
            free(e.p);
            kvlm_session_free(c);
        }
        /* another hash cannot be told from the file: it loads, and the whole history then goes back to
           the kept head (the dropped part no longer matches) */
        {
            img e = copy(&good);
            hdr(&e)->drop_hash ^= 1;
            seal(&e);
            spit(bad_path, &e);
            assert_int_equal(kvlm_session_load(b, bad_path, &err), KVLM_OK);
            int64_t s0[3], s1[3];
            stats_of(b, s0);
            assert_int_equal(kvlm_eval(b, t, L + 1, KVLM_AUTO, NULL, false, &err), KVLM_OK);
            stats_of(b, s1);
            assert_int_equal(s1[0] - s0[0], head);
            free(e.p);
        }
        free(good.p);
        kvlm_session_free(a);
        kvlm_session_free(b);
    }
    unlink(path);
    unlink(bad_path);
    kvlm_model_free(m);
}

/* Version 1 files (no record) of caches that never dropped anything load with the old rules and
 * continue exactly; a v1 header with a v2 size, or an unknown version, is refused. */
static void test_version1(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    const int V = kvlm_n_vocab(m);
    kvlm_token t[100];
    seq(t, 100, V, 71);
    kvlm_error err;
    char path[128];
    tmp_path(path, sizeof path, "v1", ".ses");
    tmp_path(bad_path, sizeof bad_path, "v1-bad", ".ses");
    const kvlm_overflow pols[3] = {KVLM_OVERFLOW_ERROR, KVLM_OVERFLOW_SHIFT, KVLM_OVERFLOW_RING};
    float *la = malloc((size_t)V * 4), *lb = malloc((size_t)V * 4);
    for (int k = 0; k < 3; k++) {
        kvlm_session_params p = kvlm_session_default_params();
        p.n_ctx = 128;
        p.overflow = pols[k];
        p.window = 48;
        kvlm_session *a = session_with(m, &p), *b = session_with(m, &p);
        assert_int_equal(kvlm_eval(a, t, 40, 0, NULL, false, &err), KVLM_OK);
        assert_int_equal(kvlm_session_save(a, path, &err), KVLM_OK);
        img good = slurp(path);
        img v1 = to_v1(&good);
        spit(bad_path, &v1);
        if (kvlm_session_load(b, bad_path, &err) != KVLM_OK) fail_msg("v1 load: %s", err.msg);
        assert_int_equal(kvlm_session_n_past(b), 40);
        /* the whole history: reused on both */
        assert_int_equal(kvlm_eval(a, t, 45, KVLM_AUTO, la, false, &err), KVLM_OK);
        assert_int_equal(kvlm_eval(b, t, 45, KVLM_AUTO, lb, false, &err), KVLM_OK);
        assert_memory_equal(la, lb, (size_t)V * 4);
        /* a version 2 image (no sliding-window ring record) loads as it is; with its reserved word set
           (the ring's slots in version 3) it is refused */
        img v2 = to_v2(&good);
        spit(bad_path, &v2);
        if (kvlm_session_load(b, bad_path, &err) != KVLM_OK) fail_msg("v2 load: %s", err.msg);
        assert_int_equal(kvlm_session_n_past(b), 40);
        hdr(&v2)->swa_cap = 64;
        seal(&v2);
        expect_refused(b, &v2, KVLM_ERR_FORMAT, "reserved", "v2 reserved");
        free(v2.p);
        /* a v1 version with a later header size, a v2 with a v1 or v3 size, a v3 with a v2 size, version 4 */
        const uint32_t bad[6][2] = {{1, sizeof(kv_ses_header)}, {2, KV_SES_V1_HEADER}, {4, sizeof(kv_ses_header)},
                                    {2, sizeof(kv_ses_header)}, {3, KV_SES_V2_HEADER}, {1, KV_SES_V2_HEADER}};
        for (int i = 0; i < 6; i++) {
            img e = copy(i == 1 ? &v1 : &good);
            hdr(&e)->version = bad[i][0];
            hdr(&e)->header_bytes = bad[i][1];
            expect_refused(b, &e, KVLM_ERR_UNSUPPORTED, "version", "version/size");
            free(e.p);
        }
        free(v1.p);
        free(good.p);
        kvlm_session_free(a);
        kvlm_session_free(b);
    }
    free(la);
    free(lb);
    unlink(path);
    unlink(bad_path);
    kvlm_model_free(m);
}

/* ------------------------------------------------------------ paths */

static void test_paths(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    const int V = kvlm_n_vocab(m);
    kvlm_token t[40];
    seq(t, 40, V, 61);
    kvlm_error err;
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 64;
    kvlm_session *a = session_with(m, &p), *b = session_with(m, &p);
    assert_int_equal(kvlm_eval(a, t, 30, 0, NULL, false, &err), KVLM_OK);
    char dir[128], good[160], fifo[160], link[160], sub[160];
    snprintf(dir, sizeof dir, "/tmp/kvlm-test-paths-%d", (int)getpid());
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(good, sizeof good, "%s/good.ses", dir);
    snprintf(fifo, sizeof fifo, "%s/fifo.ses", dir);
    snprintf(link, sizeof link, "%s/link.ses", dir);
    snprintf(sub, sizeof sub, "%s/sub.ses", dir);
    assert_int_equal(kvlm_session_save(a, good, &err), KVLM_OK);
    img before = slurp(good);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    assert_int_equal(symlink("good.ses", link), 0);
    assert_int_equal(mkdir(sub, 0700), 0);
    alarm(60); /* a load or save that blocks on the FIFO fails the test instead of hanging it */
    struct {
        const char *path, *kind;
        mode_t type;
    } cases[] = {{fifo, "FIFO", S_IFIFO}, {link, "symbolic link", S_IFLNK}, {sub, "directory", S_IFDIR}};
    for (size_t i = 0; i < 3; i++) {
        const snapshot z = snap(b);
        kvlm_status st = kvlm_session_load(b, cases[i].path, &err);
        assert_int_equal(st, KVLM_ERR_INVALID_ARG);
        if (!strstr(err.msg, cases[i].kind) || !strstr(err.msg, "refused")) fail_msg("load message: %s", err.msg);
        assert_same(b, &z);
        st = kvlm_session_save(a, cases[i].path, &err);
        assert_int_equal(st, KVLM_ERR_INVALID_ARG);
        if (!strstr(err.msg, cases[i].kind) || !strstr(err.msg, "refused")) fail_msg("save message: %s", err.msg);
        struct stat sb;
        assert_int_equal(lstat(cases[i].path, &sb), 0);
        assert_int_equal(sb.st_mode & S_IFMT, cases[i].type); /* still what it was */
        assert_int_equal(kv_session_check_path(cases[i].path, true, "check", &err), KVLM_ERR_INVALID_ARG);
    }
    alarm(0);
    /* the symlink's target was not touched, and no temporary is left in the directory */
    img after = slurp(good);
    assert_int_equal(after.n, before.n);
    assert_memory_equal(after.p, before.p, before.n);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "ls %s | grep -c tmp", dir);
    FILE *fp = popen(cmd, "r");
    int left = -1;
    assert_int_equal(fscanf(fp, "%d", &left), 1);
    pclose(fp);
    assert_int_equal(left, 0);
    /* a character device: the path check refuses it (never saved to), and so does a load */
    assert_int_equal(kv_session_check_path("/dev/null", true, "check", &err), KVLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "character device"));
    assert_int_equal(kvlm_session_load(b, "/dev/null", &err), KVLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "character device"));
    /* absent: fine to save to, an I/O error to load; a regular file: fine */
    char absent[200];
    snprintf(absent, sizeof absent, "%s/absent.ses", dir);
    assert_int_equal(kv_session_check_path(absent, true, "check", &err), KVLM_OK);
    assert_int_equal(kv_session_check_path(absent, false, "check", &err), KVLM_ERR_IO);
    assert_int_equal(kv_session_check_path(good, false, "check", &err), KVLM_OK);
    assert_int_equal(kvlm_session_load(b, absent, &err), KVLM_ERR_IO);
    /* through the symlink's target it all works */
    assert_int_equal(kvlm_session_load(b, good, &err), KVLM_OK);
    assert_int_equal(kvlm_session_n_past(b), 30);
    assert_int_equal(kvlm_session_save(b, good, &err), KVLM_OK);

    unlink(good);
    unlink(fifo);
    unlink(link);
    rmdir(sub);
    rmdir(dir);
    free(before.p);
    free(after.p);
    kvlm_session_free(a);
    kvlm_session_free(b);
    kvlm_model_free(m);
}

/* ------------------------------------------------------------ orphaned temporaries */

static void touch(const char *dir, const char *name) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fputs("partial", f);
    fclose(f);
}

static bool exists(const char *dir, const char *name) {
    char p[1024];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return lstat(p, &st) == 0;
}

static pid_t dead_pid(void) {
    pid_t c = fork();
    assert_true(c >= 0);
    if (c == 0) _exit(0);
    assert_int_equal(waitpid(c, NULL, 0), c);
    return c;
}

static void test_temporaries(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    const int V = kvlm_n_vocab(m);
    kvlm_token t[20];
    seq(t, 20, V, 71);
    kvlm_error err;
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 64;
    kvlm_session *a = session_with(m, &p);
    assert_int_equal(kvlm_eval(a, t, 20, 0, NULL, false, &err), KVLM_OK);
    char dir[128], target[160], other[160];
    snprintf(dir, sizeof dir, "/tmp/kvlm-test-temps-%d", (int)getpid());
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(target, sizeof target, "%s/s.ses", dir);
    snprintf(other, sizeof other, "%s/elsewhere", dir);
    const pid_t dead = dead_pid();
    pid_t live = fork(); /* a process that stays alive until killed */
    assert_true(live >= 0);
    if (live == 0) {
        for (;;) pause();
    }
    char n_dead[64], n_own[64], n_live[64], n_locked[64], n_link[64], n_dir[64], n_old[64], n_new[64];
    snprintf(n_dead, sizeof n_dead, "s.ses.tmp.%d.aB3xYz", (int)dead);
    snprintf(n_own, sizeof n_own, "s.ses.tmp.%d.aB3xY1", (int)getpid());
    snprintf(n_live, sizeof n_live, "s.ses.tmp.%d.aB3xY2", (int)live);
    snprintf(n_locked, sizeof n_locked, "s.ses.tmp.%d.aB3xY3", (int)dead);
    snprintf(n_link, sizeof n_link, "s.ses.tmp.%d.aB3xY4", (int)dead);
    snprintf(n_dir, sizeof n_dir, "s.ses.tmp.%d.aB3xY5", (int)dead);
    snprintf(n_old, sizeof n_old, "s.ses.tmp.Qw12er");  /* the older form without a pid, two hours old */
    snprintf(n_new, sizeof n_new, "s.ses.tmp.Qw12e2");  /* the older form, just written */
    const char *keep_names[] = {"s.ses.tmp.%d.abc12", "s.ses.tmp.%d.abc1234", "t.ses.tmp.%d.abcdef",
                                "s.sesx.tmp.%d.abcdef", "s.ses.tmp.%d.abc-ef", "xs.ses.tmp.%d.abcdef",
                                "s.ses.tmp.0%d.abcdef", "s.ses.tmpx"};
    char keeps[8][64];
    for (int i = 0; i < 8; i++) {
        snprintf(keeps[i], sizeof keeps[i], keep_names[i], (int)dead);
        touch(dir, keeps[i]);
    }
    touch(dir, n_dead);
    touch(dir, n_own);
    touch(dir, n_live);
    touch(dir, n_locked);
    touch(dir, n_old);
    touch(dir, n_new);
    FILE *f = fopen(other, "wb");
    fputs("not a temporary", f);
    fclose(f);
    char p2[512];
    snprintf(p2, sizeof p2, "%s/%s", dir, n_link);
    assert_int_equal(symlink(other, p2), 0);
    snprintf(p2, sizeof p2, "%s/%s", dir, n_dir);
    assert_int_equal(mkdir(p2, 0700), 0);
    snprintf(p2, sizeof p2, "%s/%s", dir, n_old);
    struct timespec old[2] = {{time(NULL) - 7200, 0}, {time(NULL) - 7200, 0}};
    assert_int_equal(utimensat(AT_FDCWD, p2, old, 0), 0);
    /* a saver the pid cannot see (another pid namespace) holds its lock */
    snprintf(p2, sizeof p2, "%s/%s", dir, n_locked);
    int lfd = open(p2, O_RDONLY);
    assert_true(lfd >= 0);
    assert_int_equal(flock(lfd, LOCK_EX), 0);

    assert_int_equal(kvlm_session_save(a, target, &err), KVLM_OK);
    assert_false(exists(dir, n_dead)); /* the orphan of a dead saver */
    assert_false(exists(dir, n_old));  /* an old-form orphan */
    assert_true(exists(dir, n_own));   /* this process may be saving in another thread */
    assert_true(exists(dir, n_live));  /* a live saver's */
    assert_true(exists(dir, n_locked));
    assert_true(exists(dir, n_link)); /* not a regular file: not touched, nor its target */
    assert_true(exists(dir, "elsewhere"));
    assert_true(exists(dir, n_dir));
    assert_true(exists(dir, n_new));
    for (int i = 0; i < 8; i++)
        if (!exists(dir, keeps[i])) fail_msg("%s (not of the pattern) was removed", keeps[i]);
    /* the live saver dies, the lock is released: the next save removes both */
    kill(live, SIGKILL);
    assert_int_equal(waitpid(live, NULL, 0), live);
    close(lfd);
    assert_int_equal(kvlm_session_save(a, target, &err), KVLM_OK);
    assert_false(exists(dir, n_live));
    assert_false(exists(dir, n_locked));
    assert_true(exists(dir, n_own));
    /* and the file is the session */
    kvlm_session *b = session_with(m, &p);
    assert_int_equal(kvlm_session_load(b, target, &err), KVLM_OK);
    assert_int_equal(kvlm_session_n_past(b), 20);

    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    kvlm_session_free(a);
    kvlm_session_free(b);
    kvlm_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crafted_error_policy), cmocka_unit_test(test_crafted_ring),
        cmocka_unit_test(test_crafted_shift_and_compression), cmocka_unit_test(test_crafted_random),
        cmocka_unit_test(test_shifted_history), cmocka_unit_test(test_version1),
        cmocka_unit_test(test_paths), cmocka_unit_test(test_temporaries),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
