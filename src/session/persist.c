/* Saving and restoring a session: header, token history, zstd-compressed
 * pages, checksum; written to a temporary file, flushed and renamed. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>
#include <zstd.h>

#include "core/dtype.h"
#include "core/error.h"
#include "session_impl.h"

#define SES_MAGIC "KVLMSES1"
#define SES_VERSION 1u
#define SES_MAX_FILE (1ull << 40)

/* The fixed part of the header, little-endian. */
typedef struct ses_header {
    char magic[8];
    uint32_t version;
    uint32_t header_bytes;
    uint64_t fingerprint[2];
    uint32_t page_tokens, n_layer, kv_dim, type_k, type_v;
    uint32_t overflow, shareable, n_pages;
    int32_t n, next_pos, n_consumed, n_ctx;
} ses_header;

/* A 128-bit hash of the whole GGUF file: metadata, tensor infos and data. */
static void model_fingerprint(const kvlm_model *m, uint64_t out[2]) {
    XXH128_hash_t h = XXH3_128bits(m->gguf->base, m->gguf->size);
    out[0] = h.low64;
    out[1] = h.high64;
}

/* ------------------------------------------------------------ writing */

typedef struct wbuf {
    uint8_t *p;
    size_t n, cap;
    bool oom;
} wbuf;

static void put(wbuf *b, const void *src, size_t n) {
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1 << 16;
        while (cap < b->n + n) cap *= 2;
        uint8_t *np = realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static kvlm_status write_atomically(const char *path, const uint8_t *data, size_t n, kvlm_error *err) {
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 16);
    if (!tmp) return kv_fail(err, KVLM_ERR_NOMEM, "session_save: out of memory");
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".tmp.XXXXXX", 12);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        kvlm_status st = kv_fail(err, KVLM_ERR_IO, "session_save: cannot create a temporary file beside '%s': %s", path,
                                 strerror(errno));
        free(tmp);
        return st;
    }
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, data + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (size_t)w;
    }
    int e = errno;
    bool ok = off == n && fsync(fd) == 0;
    if (!ok && off == n) e = errno;
    if (close(fd) != 0 && ok) {
        ok = false;
        e = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = false;
        e = errno;
    }
    if (!ok) unlink(tmp);
    free(tmp);
    if (!ok) return kv_fail(err, KVLM_ERR_IO, "session_save: writing '%s' failed: %s", path, strerror(e));
    return KVLM_OK;
}

static kvlm_status save_locked(kvlm_session *s, const char *path, kvlm_error *err) {
    const kv_seq *q = &s->seq;
    ses_header h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, SES_MAGIC, 8);
    h.version = SES_VERSION;
    h.header_bytes = sizeof h;
    model_fingerprint(s->model, h.fingerprint);
    h.page_tokens = (uint32_t)q->P;
    h.n_layer = (uint32_t)q->n_layer;
    h.kv_dim = (uint32_t)q->kv_dim;
    h.type_k = q->layout->type_k;
    h.type_v = q->layout->type_v;
    h.overflow = (uint32_t)q->overflow;
    h.shareable = q->shareable;
    h.n_pages = (uint32_t)q->n_pages;
    h.n = q->n;
    h.next_pos = q->next_pos;
    h.n_consumed = s->n_consumed;
    h.n_ctx = q->n_ctx;
    wbuf b = {0};
    put(&b, &h, sizeof h);
    /* slots in use: [0, n) (a ring fills its slots in order before wrapping) */
    put(&b, q->tokens, (size_t)q->n * sizeof *q->tokens);
    put(&b, q->pos, (size_t)q->n * sizeof *q->pos);
    uint8_t *raw = NULL, *comp = NULL;
    size_t comp_cap = 0;
    kvlm_status st = KVLM_OK;
    for (int32_t j = 0; j < q->n_pages && !b.oom; j++) {
        const kv_page *pg = q->pages[j];
        const kv_layout *l = pg->layout;
        uint8_t *nr = realloc(raw, l->page_bytes);
        if (!nr) {
            b.oom = true;
            break;
        }
        raw = nr;
        memcpy(raw, pg->data, l->page_bytes);
        /* rows past the last stored token are unwritten: zero them so files are deterministic */
        const int32_t used = q->n - j * q->P;
        if (used < q->P) {
            const uint64_t m = (uint64_t)(used > 0 ? used : 0);
            for (int li = 0; li < q->n_layer; li++) {
                uint8_t *base = raw + (uint64_t)li * l->layer_bytes;
                memset(base + m * l->k_row, 0, ((uint64_t)q->P - m) * l->k_row);
                memset(base + (uint64_t)q->P * l->k_row + m * l->v_row, 0, ((uint64_t)q->P - m) * l->v_row);
            }
        }
        size_t bound = ZSTD_compressBound(l->page_bytes);
        if (bound > comp_cap) {
            uint8_t *nc = realloc(comp, bound);
            if (!nc) {
                b.oom = true;
                break;
            }
            comp = nc;
            comp_cap = bound;
        }
        size_t cn = ZSTD_compress(comp, comp_cap, raw, l->page_bytes, 1);
        if (ZSTD_isError(cn)) {
            st = kv_fail(err, KVLM_ERR_INTERNAL, "session_save: zstd: %s", ZSTD_getErrorName(cn));
            break;
        }
        const uint32_t types[2] = {l->type_k, l->type_v};
        const uint64_t sizes[2] = {l->page_bytes, cn};
        put(&b, types, sizeof types);
        put(&b, sizes, sizeof sizes);
        put(&b, comp, cn);
    }
    free(raw);
    free(comp);
    if (!st && b.oom) st = kv_fail(err, KVLM_ERR_NOMEM, "session_save: out of memory");
    if (!st) {
        const uint64_t sum = XXH3_64bits(b.p, b.n);
        put(&b, &sum, sizeof sum);
        st = b.oom ? kv_fail(err, KVLM_ERR_NOMEM, "session_save: out of memory") : write_atomically(path, b.p, b.n, err);
    }
    free(b.p);
    return st;
}

kvlm_status kvlm_session_save(kvlm_session *s, const char *path, kvlm_error *err) {
    kv_error_clear(err);
    if (!s || !path) return kv_fail(err, KVLM_ERR_INVALID_ARG, "session_save: NULL argument");
    if (!kv_session_acquire(s)) return kv_fail(err, KVLM_ERR_BUSY, "session_save: the session is in use");
    kvlm_status st = save_locked(s, path, err);
    kv_session_release(s);
    return st;
}

/* ------------------------------------------------------------ reading */

typedef struct rcur {
    const uint8_t *p;
    size_t n, off;
} rcur;

static bool take(rcur *c, void *dst, size_t n) {
    if (n > c->n - c->off) return false;
    memcpy(dst, c->p + c->off, n);
    c->off += n;
    return true;
}

static kvlm_status read_file(const char *path, uint8_t **out, size_t *n, kvlm_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return kv_fail(err, KVLM_ERR_IO, "session_load: cannot open '%s': %s", path, strerror(errno));
    struct stat stt;
    if (fstat(fd, &stt) != 0 || !S_ISREG(stt.st_mode) || (uint64_t)stt.st_size > SES_MAX_FILE) {
        close(fd);
        return kv_fail(err, KVLM_ERR_IO, "session_load: '%s' is not a readable session file", path);
    }
    size_t size = (size_t)stt.st_size;
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        return kv_fail(err, KVLM_ERR_NOMEM, "session_load: out of memory for %zu bytes", size);
    }
    size_t off = 0;
    while (off < size) {
        ssize_t r = read(fd, buf + off, size - off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        off += (size_t)r;
    }
    close(fd);
    if (off != size) {
        free(buf);
        return kv_fail(err, KVLM_ERR_IO, "session_load: reading '%s' failed", path);
    }
    *out = buf;
    *n = size;
    return KVLM_OK;
}

static kvlm_status load_locked(kvlm_session *s, const char *path, kvlm_error *err) {
    uint8_t *buf = NULL;
    size_t size = 0;
    kvlm_status st = read_file(path, &buf, &size, err);
    if (st) return st;
    kv_seq fresh;
    memset(&fresh, 0, sizeof fresh);
    bool fresh_init = false;
    ses_header h;
    rcur c = {buf, size, 0};
    if (size < sizeof h + 8 || !take(&c, &h, sizeof h) || memcmp(h.magic, SES_MAGIC, 8) != 0) {
        st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s' is not a kvlm session file", path);
        goto out;
    }
    if (h.version != SES_VERSION || h.header_bytes != sizeof h) {
        st = kv_fail(err, KVLM_ERR_UNSUPPORTED, "session_load: '%s' has version %u (this build reads %u)", path,
                     h.version, SES_VERSION);
        goto out;
    }
    uint64_t sum;
    memcpy(&sum, buf + size - 8, 8);
    if (XXH3_64bits(buf, size - 8) != sum) {
        st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s' is corrupted (checksum mismatch)", path);
        goto out;
    }
    c.n = size - 8;
    uint64_t fp[2];
    model_fingerprint(s->model, fp);
    if (fp[0] != h.fingerprint[0] || fp[1] != h.fingerprint[1]) {
        st = kv_fail(err, KVLM_ERR_INVALID_ARG, "session_load: '%s' was saved with another model", path);
        goto out;
    }
    const kv_seq *q = &s->seq;
    if ((int32_t)h.page_tokens != q->P || (int32_t)h.n_layer != q->n_layer || (int32_t)h.kv_dim != q->kv_dim ||
        h.type_k != q->layout->type_k || h.type_v != q->layout->type_v || h.overflow != (uint32_t)q->overflow) {
        st = kv_fail(err, KVLM_ERR_INVALID_ARG,
                     "session_load: '%s' has other cache settings (page %u, K %s, V %s, overflow %u) than the session "
                     "(page %d, K %s, V %s, overflow %d)",
                     path, h.page_tokens, kv_dtype_name(h.type_k), kv_dtype_name(h.type_v), h.overflow, q->P,
                     kv_dtype_name(q->layout->type_k), kv_dtype_name(q->layout->type_v), (int)q->overflow);
        goto out;
    }
    const bool ring = q->overflow == KVLM_OVERFLOW_RING;
    const int64_t want_pages = ring ? q->n_ctx / q->P : ((int64_t)h.n + q->P - 1) / q->P;
    if (h.n < 0 || h.n > q->n_ctx || h.next_pos < h.n || h.n_consumed < 0 || (int64_t)h.n_pages != want_pages) {
        st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s' holds %d tokens in %u pages, which does not fit", path,
                     h.n, h.n_pages);
        goto out;
    }
    st = kv_seq_init(&fresh, q->pool, &s->seq_config, err);
    if (st) goto out;
    fresh_init = true;
    const int32_t n_vocab = s->model->hp.n_vocab;
    if ((int64_t)h.n * 8 > (int64_t)(c.n - c.off)) {
        st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s' is truncated", path);
        goto out;
    }
    /* slot arrays (a ring has them already) */
    {
        int32_t cap_pages = fresh.cap_pages;
        int32_t need = (int32_t)h.n_pages;
        if (need > cap_pages) {
            int32_t *t = realloc(fresh.tokens, (size_t)need * (size_t)q->P * sizeof *t);
            if (t) fresh.tokens = t;
            int32_t *p = realloc(fresh.pos, (size_t)need * (size_t)q->P * sizeof *p);
            if (p) fresh.pos = p;
            kv_page **pg = realloc(fresh.pages, (size_t)need * sizeof *pg);
            if (pg) fresh.pages = pg;
            uint64_t *k = realloc(fresh.keys, (size_t)need * sizeof *k);
            if (k) fresh.keys = k;
            if (!t || !p || !pg || !k) {
                st = kv_fail(err, KVLM_ERR_NOMEM, "session_load: out of memory");
                goto out;
            }
            fresh.cap_pages = need;
        }
    }
    take(&c, fresh.tokens, (size_t)h.n * 4);
    take(&c, fresh.pos, (size_t)h.n * 4);
    for (int32_t i = 0; i < h.n; i++)
        if (fresh.tokens[i] < 0 || fresh.tokens[i] >= n_vocab || fresh.pos[i] < 0 || fresh.pos[i] >= h.next_pos) {
            st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s': slot %d holds an invalid token or position", path, i);
            goto out;
        }
    /* pages: a ring already has its own; otherwise allocate */
    for (uint32_t j = 0; j < h.n_pages; j++) {
        uint32_t types[2];
        uint64_t sizes[2];
        if (!take(&c, types, sizeof types) || !take(&c, sizes, sizeof sizes) || sizes[1] > c.n - c.off) {
            st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s' is truncated at page %u", path, j);
            goto out;
        }
        const kv_layout *l = kv_dtype_get(types[0]) && kv_dtype_get(types[1])
                                 ? kv_pool_layout(q->pool, types[0], types[1])
                                 : NULL;
        if (!l || l->page_bytes != sizes[0]) {
            st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s': page %u has an invalid type or size", path, j);
            goto out;
        }
        kv_page *pg;
        if ((int32_t)j < fresh.n_pages && fresh.pages[j]->layout == l) {
            pg = fresh.pages[j];
        } else {
            pg = kv_pool_alloc(q->pool, l);
            if (!pg) {
                st = kv_fail(err, KVLM_ERR_NOMEM, "session_load: the page pool has no room for %u pages", h.n_pages);
                goto out;
            }
            if ((int32_t)j < fresh.n_pages) kv_pool_release(q->pool, fresh.pages[j]);
            fresh.pages[j] = pg;
            if ((int32_t)j >= fresh.n_pages) fresh.n_pages = (int32_t)j + 1;
        }
        size_t dn = ZSTD_decompress(pg->data, l->page_bytes, c.p + c.off, (size_t)sizes[1]);
        if (ZSTD_isError(dn) || dn != l->page_bytes) {
            st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s': page %u does not decompress", path, j);
            goto out;
        }
        c.off += (size_t)sizes[1];
    }
    if (c.off != c.n) {
        st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s' has %zu unexpected trailing bytes", path, c.n - c.off);
        goto out;
    }
    fresh.n = h.n;
    fresh.next_pos = h.next_pos;
    fresh.shareable = fresh.shareable && h.shareable;
    atomic_fetch_add(&q->pool->st_tokens, (long long)h.n);
    /* swap in: the old contents go, the forward pass keeps pointing at s->seq */
    kv_seq_destroy(&s->seq);
    s->seq = fresh;
    fresh_init = false;
    kv_seq_reindex(&s->seq);
    s->n_consumed = h.n_consumed;
out:
    if (fresh_init) kv_seq_destroy(&fresh);
    free(buf);
    return st;
}

kvlm_status kvlm_session_load(kvlm_session *s, const char *path, kvlm_error *err) {
    kv_error_clear(err);
    if (!s || !path) return kv_fail(err, KVLM_ERR_INVALID_ARG, "session_load: NULL argument");
    if (!kv_session_acquire(s)) return kv_fail(err, KVLM_ERR_BUSY, "session_load: the session is in use");
    kvlm_status st = load_locked(s, path, err);
    kv_session_release(s);
    return st;
}

int32_t kvlm_session_tokens(const kvlm_session *s, kvlm_token *out, int32_t n_max) {
    const kv_seq *q = &s->seq;
    if (q->overflow == KVLM_OVERFLOW_RING) {
        /* oldest first */
        int32_t n = 0;
        for (int32_t p = q->next_pos - q->n; p < q->next_pos; p++, n++)
            if (n < n_max) out[n] = q->tokens[p % q->n_ctx];
        return n;
    }
    for (int32_t i = 0; i < q->n && i < n_max; i++) out[i] = q->tokens[i];
    return q->n;
}
