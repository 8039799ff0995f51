/* The disk tier of the prefix cache: page files, their index and LRU, the spilling thread. */
#define _GNU_SOURCE
#include "kv_disk.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>
#include <zstd.h>

#include "core/dtype.h"
#include "core/error.h"
#include "kv_cache.h"

_Static_assert(sizeof(kv_disk_header) == 88, "kv_disk_header has no padding");

#define QUEUE_MIN_PAGES 8
#define QUEUE_BYTES (64ll << 20) /* pages waiting to be written, at most (or QUEUE_MIN_PAGES) */

typedef struct disk_item disk_item;

typedef struct disk_entry {
    uint64_t key;
    uint32_t type_k, type_v;
    uint64_t file_bytes; /* 0 while pending */
    uint64_t gen;        /* distinguishes an entry from a later one of the same page */
    disk_item *pending;  /* queued, not written yet (not in the LRU) */
    struct disk_entry *hnext, *lru_prev, *lru_next;
    /* re-indexing */
    int64_t order;
} disk_entry;

struct disk_item {
    disk_entry *e;
    uint64_t parent_key;
    int32_t *tokens;
    uint8_t *data;
    uint64_t bytes;
    disk_item *next;
};

struct kv_disk {
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_room;
    pthread_t thread;
    bool thread_started, stop;
    int dirfd, lockfd;
    char *dir;
    kv_disk_geom g;
    int level;
    int64_t budget;
    disk_entry **buckets;
    uint64_t n_buckets, n_entries, next_gen;
    disk_entry *lru_head, *lru_tail; /* head: least recently used */
    disk_item *q_head, *q_tail;
    int64_t q_pages, q_bytes;
    bool writing; /* the thread holds an item */
    uint64_t tmp_counter;
    /* statistics (under mu) */
    int64_t bytes, pages, hits, writes, evictions, rejected, dropped;
};

static void page_name(char *buf, size_t n, uint64_t key, uint32_t tk, uint32_t tv) {
    snprintf(buf, n, "%016" PRIx64 "-%02x%02x.kvpage", key, tk & 0xff, tv & 0xff);
}

/* Parses a page file's name; false for any other name. */
static bool parse_name(const char *s, uint64_t *key, uint32_t *tk, uint32_t *tv) {
    if (strlen(s) != 16 + 1 + 4 + 7 || s[16] != '-' || strcmp(s + 21, ".kvpage") != 0) return false;
    uint64_t k = 0;
    for (int i = 0; i < 16; i++) {
        const char c = s[i];
        const int d = c >= '0' && c <= '9' ? c - '0' : (c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1);
        if (d < 0) return false;
        k = k << 4 | (uint64_t)d;
    }
    uint32_t t[2] = {0, 0};
    for (int i = 0; i < 4; i++) {
        const char c = s[17 + i];
        const int d = c >= '0' && c <= '9' ? c - '0' : (c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1);
        if (d < 0) return false;
        t[i / 2] = t[i / 2] << 4 | (uint32_t)d;
    }
    *key = k;
    *tk = t[0];
    *tv = t[1];
    return true;
}

/* The size of a page in memory for those types; 0 for a type the cache does not store. */
static uint64_t page_bytes(const kv_disk *d, uint32_t tk, uint32_t tv) {
    uint64_t kr = 0, vr = 0;
    if (kv_type_slot(tk) < 0 || kv_type_slot(tv) < 0) return 0;
    if (!kv_dtype_row_bytes(tk, (uint64_t)d->g.kv_dim, &kr) || !kv_dtype_row_bytes(tv, (uint64_t)d->g.kv_dim, &vr))
        return 0;
    return (uint64_t)d->g.page_tokens * (kr + vr) * (uint64_t)d->g.n_layer;
}

static uint64_t bucket_of(const kv_disk *d, uint64_t key, uint32_t tk, uint32_t tv) {
    return (key ^ ((uint64_t)tk << 7) ^ ((uint64_t)tv << 13)) & (d->n_buckets - 1);
}

/* mu held */
static disk_entry *find(const kv_disk *d, uint64_t key, uint32_t tk, uint32_t tv) {
    disk_entry *e = d->buckets[bucket_of(d, key, tk, tv)];
    while (e && !(e->key == key && e->type_k == tk && e->type_v == tv)) e = e->hnext;
    return e;
}

/* mu held */
static void table_grow(kv_disk *d) {
    const uint64_t nb = d->n_buckets * 2;
    disk_entry **b = calloc(nb, sizeof *b);
    if (!b) return;
    const uint64_t old = d->n_buckets;
    disk_entry **ob = d->buckets;
    d->buckets = b;
    d->n_buckets = nb;
    for (uint64_t i = 0; i < old; i++)
        while (ob[i]) {
            disk_entry *e = ob[i];
            ob[i] = e->hnext;
            const uint64_t j = bucket_of(d, e->key, e->type_k, e->type_v);
            e->hnext = b[j];
            b[j] = e;
        }
    free(ob);
}

/* mu held */
static disk_entry *insert(kv_disk *d, uint64_t key, uint32_t tk, uint32_t tv) {
    disk_entry *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    if (d->n_entries >= d->n_buckets) table_grow(d);
    e->key = key;
    e->type_k = tk;
    e->type_v = tv;
    e->gen = ++d->next_gen;
    const uint64_t j = bucket_of(d, key, tk, tv);
    e->hnext = d->buckets[j];
    d->buckets[j] = e;
    d->n_entries++;
    return e;
}

/* mu held */
static void lru_unlink(kv_disk *d, disk_entry *e) {
    if (e->lru_prev) e->lru_prev->lru_next = e->lru_next;
    else if (d->lru_head == e) d->lru_head = e->lru_next;
    if (e->lru_next) e->lru_next->lru_prev = e->lru_prev;
    else if (d->lru_tail == e) d->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

/* mu held */
static void lru_push(kv_disk *d, disk_entry *e) {
    e->lru_prev = d->lru_tail;
    e->lru_next = NULL;
    if (d->lru_tail) d->lru_tail->lru_next = e;
    else d->lru_head = e;
    d->lru_tail = e;
}

/* mu held: takes a written entry out of the table and the LRU, and removes its file. */
static void drop_entry(kv_disk *d, disk_entry *e) {
    disk_entry **pp = &d->buckets[bucket_of(d, e->key, e->type_k, e->type_v)];
    while (*pp && *pp != e) pp = &(*pp)->hnext;
    if (*pp) *pp = e->hnext;
    d->n_entries--;
    if (e->file_bytes) {
        lru_unlink(d, e);
        d->bytes -= (int64_t)e->file_bytes;
        d->pages--;
        char name[64];
        page_name(name, sizeof name, e->key, e->type_k, e->type_v);
        unlinkat(d->dirfd, name, 0);
    }
    free(e);
}

/* mu held: evicts least recently used files until the tier is within its budget. */
static void trim(kv_disk *d) {
    while (d->bytes > d->budget && d->lru_head) {
        drop_entry(d, d->lru_head);
        d->evictions++;
    }
}

/* Reads exactly n bytes at offset 0.. of fd; false on a short read or an error. */
static bool read_all(int fd, void *buf, size_t n) {
    uint8_t *p = buf;
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        p += r;
        n -= (size_t)r;
    }
    return true;
}

static bool write_all(int fd, const void *buf, size_t n) {
    const uint8_t *p = buf;
    while (n) {
        ssize_t r = write(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        p += r;
        n -= (size_t)r;
    }
    return true;
}

/* Opens a regular file of the directory for reading, never through a link and never blocking on a
 * FIFO; -1 otherwise. *size: its size. */
static int open_regular(int dirfd, const char *name, uint64_t *size) {
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        errno = EINVAL;
        return -1;
    }
    *size = (uint64_t)st.st_size;
    return fd;
}

typedef enum { CHECK_OK, CHECK_GONE, CHECK_BAD } check_result;

/* Checks a header against the tier and the name (key, types); fills the expected file size. */
static bool header_ok(const kv_disk *d, const kv_disk_header *h, uint64_t key, uint32_t tk, uint32_t tv,
                      uint64_t size) {
    if (memcmp(h->magic, KV_DISK_MAGIC, 8) != 0 || h->version != KV_DISK_VERSION ||
        h->header_bytes != sizeof *h)
        return false;
    if (h->fingerprint[0] != d->g.fingerprint[0] || h->fingerprint[1] != d->g.fingerprint[1]) return false;
    if (h->page_tokens != (uint32_t)d->g.page_tokens || h->n_layer != (uint32_t)d->g.n_layer ||
        h->kv_dim != (uint32_t)d->g.kv_dim)
        return false;
    if (h->key != key || h->type_k != tk || h->type_v != tv) return false;
    const uint64_t raw = page_bytes(d, tk, tv);
    if (raw == 0 || h->raw_bytes != raw) return false;
    if (h->comp_bytes == 0 || h->comp_bytes > ZSTD_compressBound((size_t)raw)) return false;
    const uint64_t want = sizeof *h + (uint64_t)d->g.page_tokens * 4 + h->comp_bytes + 8;
    return size == want;
}

/* Re-indexing: the header and tokens of one file (the cheap check: no checksum, no decompression). */
static check_result check_header(const kv_disk *d, const char *name, uint64_t key, uint32_t tk, uint32_t tv,
                                 uint64_t *file_bytes) {
    uint64_t size = 0;
    int fd = open_regular(d->dirfd, name, &size);
    if (fd < 0) return errno == ENOENT ? CHECK_GONE : CHECK_BAD;
    kv_disk_header h;
    const size_t nt = (size_t)d->g.page_tokens;
    int32_t *tokens = malloc(nt * sizeof *tokens);
    bool ok = tokens && size >= sizeof h + nt * 4 && read_all(fd, &h, sizeof h) && header_ok(d, &h, key, tk, tv, size) &&
              read_all(fd, tokens, nt * 4) && kv_page_key(h.parent_key, tokens, (int32_t)nt) == key;
    close(fd);
    free(tokens);
    *file_bytes = size;
    return ok ? CHECK_OK : CHECK_BAD;
}

/* ------------------------------------------------------------ writing */

/* Writes one page file: temporary name, fsync, rename. Returns the file's size, 0 on failure. */
static uint64_t write_page(kv_disk *d, const disk_item *it, uint64_t key, uint32_t tk, uint32_t tv,
                           ZSTD_CCtx *cctx, uint64_t tmp_id) {
    const size_t nt = (size_t)d->g.page_tokens;
    const size_t bound = ZSTD_compressBound((size_t)it->bytes);
    const size_t head = sizeof(kv_disk_header) + nt * 4;
    uint8_t *buf = malloc(head + bound + 8);
    if (!buf) return 0;
    const size_t cn = ZSTD_compressCCtx(cctx, buf + head, bound, it->data, (size_t)it->bytes, d->level);
    if (ZSTD_isError(cn)) {
        free(buf);
        return 0;
    }
    kv_disk_header h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, KV_DISK_MAGIC, 8);
    h.version = KV_DISK_VERSION;
    h.header_bytes = sizeof h;
    h.fingerprint[0] = d->g.fingerprint[0];
    h.fingerprint[1] = d->g.fingerprint[1];
    h.page_tokens = (uint32_t)d->g.page_tokens;
    h.n_layer = (uint32_t)d->g.n_layer;
    h.kv_dim = (uint32_t)d->g.kv_dim;
    h.type_k = tk;
    h.type_v = tv;
    h.zstd_level = (uint32_t)d->level;
    h.key = key;
    h.parent_key = it->parent_key;
    h.raw_bytes = it->bytes;
    h.comp_bytes = cn;
    memcpy(buf, &h, sizeof h);
    memcpy(buf + sizeof h, it->tokens, nt * 4);
    const uint64_t sum = XXH3_64bits(buf, head + cn);
    memcpy(buf + head + cn, &sum, 8);
    const size_t total = head + cn + 8;

    char tmp[64], name[64];
    snprintf(tmp, sizeof tmp, "tmp.%ld.%" PRIu64, (long)getpid(), tmp_id);
    page_name(name, sizeof name, key, tk, tv);
    int fd = openat(d->dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    bool ok = fd >= 0;
    if (ok) ok = write_all(fd, buf, total) && fsync(fd) == 0;
    if (fd >= 0) close(fd);
    /* rename replaces whatever is at the name (a link itself, never what it points to) */
    if (ok) ok = renameat(d->dirfd, tmp, d->dirfd, name) == 0;
    if (!ok && fd >= 0) unlinkat(d->dirfd, tmp, 0);
    free(buf);
    return ok ? total : 0;
}

static void item_free(disk_item *it) {
    if (!it) return;
    free(it->tokens);
    free(it->data);
    free(it);
}

static void *spill_thread(void *arg) {
    kv_disk *d = arg;
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    pthread_mutex_lock(&d->mu);
    for (;;) {
        while (!d->q_head && !d->stop) pthread_cond_wait(&d->cv_work, &d->mu);
        if (!d->q_head) break; /* stop, and nothing left */
        disk_item *it = d->q_head;
        d->q_head = it->next;
        if (!d->q_head) d->q_tail = NULL;
        disk_entry *e = it->e;
        const uint64_t key = e->key;
        const uint32_t tk = e->type_k, tv = e->type_v;
        const uint64_t id = ++d->tmp_counter;
        d->writing = true;
        pthread_mutex_unlock(&d->mu);
        const uint64_t n = cctx ? write_page(d, it, key, tk, tv, cctx, id) : 0;
        pthread_mutex_lock(&d->mu);
        d->writing = false;
        /* the entry stays in the table while pending (nothing else removes a pending entry) */
        e->pending = NULL;
        d->q_pages--;
        d->q_bytes -= (int64_t)it->bytes;
        if (n) {
            e->file_bytes = n;
            lru_push(d, e);
            d->bytes += (int64_t)n;
            d->pages++;
            d->writes++;
            trim(d);
        } else {
            d->dropped++;
            drop_entry(d, e);
        }
        pthread_cond_broadcast(&d->cv_room);
        /* the item is freed outside the lock */
        pthread_mutex_unlock(&d->mu);
        item_free(it);
        pthread_mutex_lock(&d->mu);
    }
    pthread_mutex_unlock(&d->mu);
    ZSTD_freeCCtx(cctx);
    return NULL;
}

void kv_disk_spill(kv_disk *d, const kv_disk_page *pg, bool wait) {
    if (!d) return;
    const uint64_t want = page_bytes(d, pg->type_k, pg->type_v);
    if (want == 0 || want != pg->bytes || (int64_t)want > d->budget) return;
    pthread_mutex_lock(&d->mu);
    disk_entry *e = find(d, pg->key, pg->type_k, pg->type_v);
    if (e) {
        if (!e->pending) { /* already on disk: a use */
            lru_unlink(d, e);
            lru_push(d, e);
        }
        pthread_mutex_unlock(&d->mu);
        return;
    }
    while (wait && !d->stop && d->q_pages >= QUEUE_MIN_PAGES && d->q_bytes + (int64_t)pg->bytes > QUEUE_BYTES)
        pthread_cond_wait(&d->cv_room, &d->mu);
    if (d->stop || (d->q_pages >= QUEUE_MIN_PAGES && d->q_bytes + (int64_t)pg->bytes > QUEUE_BYTES)) {
        d->dropped++;
        pthread_mutex_unlock(&d->mu);
        return;
    }
    disk_item *it = calloc(1, sizeof *it);
    if (it) {
        it->tokens = malloc((size_t)d->g.page_tokens * sizeof *it->tokens);
        it->data = malloc((size_t)pg->bytes);
    }
    e = it && it->tokens && it->data ? insert(d, pg->key, pg->type_k, pg->type_v) : NULL;
    if (!e) {
        item_free(it);
        d->dropped++;
        pthread_mutex_unlock(&d->mu);
        return;
    }
    memcpy(it->tokens, pg->tokens, (size_t)d->g.page_tokens * sizeof *it->tokens);
    memcpy(it->data, pg->data, (size_t)pg->bytes);
    it->parent_key = pg->parent_key;
    it->bytes = pg->bytes;
    it->e = e;
    e->pending = it;
    if (d->q_tail) d->q_tail->next = it;
    else d->q_head = it;
    d->q_tail = it;
    d->q_pages++;
    d->q_bytes += (int64_t)pg->bytes;
    pthread_cond_signal(&d->cv_work);
    pthread_mutex_unlock(&d->mu);
}

void kv_disk_drain(kv_disk *d) {
    if (!d) return;
    pthread_mutex_lock(&d->mu);
    while (d->q_head || d->writing) pthread_cond_wait(&d->cv_room, &d->mu);
    pthread_mutex_unlock(&d->mu);
}

/* ------------------------------------------------------------ reading */

bool kv_disk_contains(kv_disk *d, uint64_t key, uint32_t type_k, uint32_t type_v) {
    if (!d) return false;
    pthread_mutex_lock(&d->mu);
    const bool found = find(d, key, type_k, type_v) != NULL;
    pthread_mutex_unlock(&d->mu);
    return found;
}

/* mu held: removes the entry of that generation if it is still there (a file that failed to verify). */
static void reject(kv_disk *d, uint64_t key, uint32_t tk, uint32_t tv, uint64_t gen) {
    disk_entry *e = find(d, key, tk, tv);
    if (e && e->gen == gen && !e->pending) {
        drop_entry(d, e);
        d->rejected++;
    }
}

bool kv_disk_load(kv_disk *d, uint64_t key, uint64_t parent_key, const int32_t *tokens, uint32_t type_k,
                  uint32_t type_v, uint8_t *dst, uint64_t bytes) {
    if (!d) return false;
    const size_t nt = (size_t)d->g.page_tokens;
    pthread_mutex_lock(&d->mu);
    disk_entry *e = find(d, key, type_k, type_v);
    if (!e || page_bytes(d, type_k, type_v) != bytes) {
        pthread_mutex_unlock(&d->mu);
        return false;
    }
    if (e->pending) {
        /* still queued: the copy in memory is the page */
        const disk_item *it = e->pending;
        const bool same = it->parent_key == parent_key && memcmp(it->tokens, tokens, nt * sizeof *tokens) == 0;
        if (same) {
            memcpy(dst, it->data, (size_t)bytes);
            d->hits++;
        }
        pthread_mutex_unlock(&d->mu);
        return same;
    }
    const uint64_t gen = e->gen;
    lru_unlink(d, e);
    lru_push(d, e);
    pthread_mutex_unlock(&d->mu);

    char name[64];
    page_name(name, sizeof name, key, type_k, type_v);
    uint64_t size = 0;
    int fd = open_regular(d->dirfd, name, &size);
    if (fd < 0) {
        pthread_mutex_lock(&d->mu);
        if (errno != ENOENT) reject(d, key, type_k, type_v, gen);
        pthread_mutex_unlock(&d->mu);
        return false;
    }
    bool ok = false, bad = true;
    uint8_t *buf = size <= (1ull << 34) ? malloc((size_t)size) : NULL;
    if (!buf) bad = false; /* no memory: a miss, the file may be fine */
    if (buf && read_all(fd, buf, (size_t)size)) {
        kv_disk_header h;
        const size_t head = sizeof h + nt * 4;
        if (size >= head + 8) {
            memcpy(&h, buf, sizeof h);
            uint64_t sum;
            memcpy(&sum, buf + size - 8, 8);
            if (header_ok(d, &h, key, type_k, type_v, size) && XXH3_64bits(buf, (size_t)size - 8) == sum &&
                kv_page_key(h.parent_key, (const int32_t *)(const void *)(buf + sizeof h), (int32_t)nt) == key) {
                bad = false; /* a valid page file; whether it is the page asked for: */
                if (h.parent_key == parent_key && memcmp(buf + sizeof h, tokens, nt * 4) == 0) {
                    const size_t dn = ZSTD_decompress(dst, (size_t)bytes, buf + head, (size_t)h.comp_bytes);
                    ok = !ZSTD_isError(dn) && dn == bytes;
                    bad = !ok;
                }
            }
        }
    }
    close(fd);
    free(buf);
    pthread_mutex_lock(&d->mu);
    if (ok) d->hits++;
    if (bad) reject(d, key, type_k, type_v, gen);
    pthread_mutex_unlock(&d->mu);
    return ok;
}

/* ------------------------------------------------------------ opening, re-indexing, closing */

typedef struct index_rec {
    uint64_t key;
    uint32_t type_k, type_v;
} index_rec;

/* Reads the index file (the LRU order at the last close); NULL if absent or not valid. */
static index_rec *read_index(const kv_disk *d, uint64_t *n_out) {
    *n_out = 0;
    uint64_t size = 0;
    int fd = open_regular(d->dirfd, "index", &size);
    if (fd < 0) return NULL;
    const uint64_t head = 8 + 8 + 16 + 8;
    uint8_t *buf = size >= head + 8 && size <= (1ull << 32) ? malloc((size_t)size) : NULL;
    bool ok = buf && read_all(fd, buf, (size_t)size);
    close(fd);
    index_rec *recs = NULL;
    if (ok) {
        uint64_t sum, n, fp[2];
        memcpy(&sum, buf + size - 8, 8);
        memcpy(&n, buf + 8, 8);
        memcpy(fp, buf + 16, 16);
        ok = memcmp(buf, KV_DISK_INDEX_MAGIC, 8) == 0 && XXH3_64bits(buf, (size_t)size - 8) == sum &&
             fp[0] == d->g.fingerprint[0] && fp[1] == d->g.fingerprint[1] && n <= (size - head - 8) / 16 &&
             size == head + n * 16 + 8;
        if (ok && n && (recs = malloc((size_t)n * sizeof *recs))) {
            for (uint64_t i = 0; i < n; i++) {
                const uint8_t *r = buf + head + i * 16;
                memcpy(&recs[i].key, r, 8);
                memcpy(&recs[i].type_k, r + 8, 4);
                memcpy(&recs[i].type_v, r + 12, 4);
            }
            *n_out = n;
        }
    }
    free(buf);
    return recs;
}

/* Writes the index file (temporary, fsync, rename) with the LRU order. */
static void write_index(kv_disk *d) {
    const uint64_t head = 8 + 8 + 16 + 8;
    const uint64_t n = (uint64_t)d->pages;
    uint8_t *buf = malloc((size_t)(head + n * 16 + 8));
    if (!buf) return;
    memset(buf, 0, (size_t)head);
    memcpy(buf, KV_DISK_INDEX_MAGIC, 8);
    memcpy(buf + 16, d->g.fingerprint, 16);
    uint64_t i = 0;
    for (const disk_entry *e = d->lru_head; e && i < n; e = e->lru_next, i++) {
        uint8_t *r = buf + head + i * 16;
        memcpy(r, &e->key, 8);
        memcpy(r + 8, &e->type_k, 4);
        memcpy(r + 12, &e->type_v, 4);
    }
    memcpy(buf + 8, &i, 8);
    const uint64_t sum = XXH3_64bits(buf, (size_t)(head + i * 16));
    memcpy(buf + head + i * 16, &sum, 8);
    char tmp[64];
    snprintf(tmp, sizeof tmp, "tmp.%ld.index", (long)getpid());
    int fd = openat(d->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    bool ok = fd >= 0 && write_all(fd, buf, (size_t)(head + i * 16 + 8)) && fsync(fd) == 0;
    if (fd >= 0) close(fd);
    if (ok) ok = renameat(d->dirfd, tmp, d->dirfd, "index") == 0;
    if (!ok) unlinkat(d->dirfd, tmp, 0);
    free(buf);
}

static int cmp_order(const void *a, const void *b) {
    const disk_entry *x = *(disk_entry *const *)a, *y = *(disk_entry *const *)b;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* Scans the directory: removes temporaries and page files that do not verify, indexes the others in
 * the LRU (the index file's order, then files it does not list by modification time). */
static kvlm_status reindex(kv_disk *d, kvlm_error *err) {
    int fd2 = dup(d->dirfd);
    DIR *dir = fd2 >= 0 ? fdopendir(fd2) : NULL;
    if (!dir) {
        if (fd2 >= 0) close(fd2);
        return kv_fail(err, KVLM_ERR_IO, "kv disk tier: cannot read the directory %s: %s", d->dir, strerror(errno));
    }
    uint64_t n_idx = 0;
    index_rec *idx = read_index(d, &n_idx);
    disk_entry **found = NULL;
    size_t n_found = 0, cap = 0;
    kvlm_status st = KVLM_OK;
    struct dirent *de;
    while ((de = readdir(dir))) {
        const char *nm = de->d_name;
        struct stat sb;
        if (fstatat(d->dirfd, nm, &sb, AT_SYMLINK_NOFOLLOW) != 0) continue;
        if (!S_ISREG(sb.st_mode)) continue; /* links, FIFOs, devices, directories: never followed */
        if (strncmp(nm, "tmp.", 4) == 0) { /* a write that never finished (we hold the lock) */
            unlinkat(d->dirfd, nm, 0);
            continue;
        }
        uint64_t key;
        uint32_t tk, tv;
        if (!parse_name(nm, &key, &tk, &tv)) continue; /* not ours */
        uint64_t fb = 0;
        const check_result cr = check_header(d, nm, key, tk, tv, &fb);
        if (cr == CHECK_GONE) continue;
        if (cr == CHECK_BAD) {
            unlinkat(d->dirfd, nm, 0);
            d->rejected++;
            continue;
        }
        if (find(d, key, tk, tv)) continue;
        disk_entry *e = insert(d, key, tk, tv);
        if (n_found == cap) {
            cap = cap ? cap * 2 : 64;
            disk_entry **f = realloc(found, cap * sizeof *f);
            if (!f) e = NULL;
            else found = f;
        }
        if (!e) {
            st = kv_fail(err, KVLM_ERR_NOMEM, "kv disk tier: out of memory indexing %s", d->dir);
            break;
        }
        e->file_bytes = fb;
        /* files the index does not list come after those it does, oldest first */
        e->order = (int64_t)n_idx + (int64_t)sb.st_mtim.tv_sec * 1000000000ll + sb.st_mtim.tv_nsec;
        for (uint64_t i = 0; i < n_idx; i++)
            if (idx[i].key == key && idx[i].type_k == tk && idx[i].type_v == tv) {
                e->order = (int64_t)i - (int64_t)n_idx; /* listed: before every unlisted file */
                break;
            }
        found[n_found++] = e;
        d->bytes += (int64_t)fb;
        d->pages++;
    }
    closedir(dir);
    free(idx);
    if (n_found) qsort(found, n_found, sizeof *found, cmp_order);
    for (size_t i = 0; i < n_found; i++) lru_push(d, found[i]);
    free(found);
    unlinkat(d->dirfd, "index", 0); /* rewritten at close; until then the files are the truth */
    trim(d);
    return st;
}

kvlm_status kv_disk_open(const char *dir, int64_t budget, int level, const kv_disk_geom *g, kv_disk **out,
                         kvlm_error *err) {
    *out = NULL;
    if (!dir || !dir[0]) return kv_fail(err, KVLM_ERR_INVALID_ARG, "kv disk tier: no directory given");
    if (budget <= 0) return kv_fail(err, KVLM_ERR_INVALID_ARG, "kv disk tier: the budget must be > 0 bytes");
    if (level < 1 || level > 19)
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "kv disk tier: zstd level %d is outside 1..19", level);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return kv_fail(err, KVLM_ERR_IO, "kv disk tier: cannot create %s: %s", dir, strerror(errno));
    kv_disk *d = calloc(1, sizeof *d);
    if (!d) return kv_fail(err, KVLM_ERR_NOMEM, "kv disk tier: out of memory");
    d->dirfd = d->lockfd = -1;
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv_work, NULL);
    pthread_cond_init(&d->cv_room, NULL);
    d->g = *g;
    d->level = level;
    d->budget = budget;
    d->dir = strdup(dir);
    d->n_buckets = 256;
    d->buckets = calloc(d->n_buckets, sizeof *d->buckets);
    kvlm_status st = KVLM_OK;
    if (!d->dir || !d->buckets) st = kv_fail(err, KVLM_ERR_NOMEM, "kv disk tier: out of memory");
    if (!st) {
        d->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (d->dirfd < 0)
            st = kv_fail(err, KVLM_ERR_IO, "kv disk tier: %s is not a directory one can open (%s)", dir,
                         errno == ELOOP ? "a symbolic link" : strerror(errno));
    }
    if (!st) {
        d->lockfd = openat(d->dirfd, "lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
        struct stat sb;
        if (d->lockfd < 0 || fstat(d->lockfd, &sb) != 0 || !S_ISREG(sb.st_mode))
            st = kv_fail(err, KVLM_ERR_IO, "kv disk tier: cannot open the lock file %s/lock (it must be a regular file)",
                         dir);
        else if (flock(d->lockfd, LOCK_EX | LOCK_NB) != 0)
            st = kv_fail(err, errno == EWOULDBLOCK ? KVLM_ERR_BUSY : KVLM_ERR_IO,
                         "kv disk tier: %s is in use by another cache (its lock file is held); give each process "
                         "its own directory",
                         dir);
    }
    if (!st) st = reindex(d, err);
    if (!st) {
        if (pthread_create(&d->thread, NULL, spill_thread, d) != 0)
            st = kv_fail(err, KVLM_ERR_INTERNAL, "kv disk tier: cannot start the spilling thread");
        else d->thread_started = true;
    }
    if (st) {
        kv_disk_close(d);
        return st;
    }
    *out = d;
    return KVLM_OK;
}

void kv_disk_close(kv_disk *d) {
    if (!d) return;
    if (d->thread_started) {
        pthread_mutex_lock(&d->mu);
        d->stop = true;
        pthread_cond_broadcast(&d->cv_work);
        pthread_cond_broadcast(&d->cv_room);
        pthread_mutex_unlock(&d->mu);
        pthread_join(d->thread, NULL); /* it writes what is queued first */
        write_index(d);
        fsync(d->dirfd);
    }
    for (uint64_t b = 0; d->buckets && b < d->n_buckets; b++)
        while (d->buckets[b]) {
            disk_entry *e = d->buckets[b];
            d->buckets[b] = e->hnext;
            item_free(e->pending);
            free(e);
        }
    free(d->buckets);
    if (d->lockfd >= 0) close(d->lockfd); /* releases the flock */
    if (d->dirfd >= 0) close(d->dirfd);
    free(d->dir);
    pthread_cond_destroy(&d->cv_work);
    pthread_cond_destroy(&d->cv_room);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

void kv_disk_stats(kv_disk *d, kvlm_kv_stats *st) {
    if (!d) return;
    pthread_mutex_lock(&d->mu);
    st->disk_hits = d->hits;
    st->disk_bytes = d->bytes;
    st->disk_pages = d->pages;
    st->disk_writes = d->writes;
    st->disk_evictions = d->evictions;
    st->disk_rejected = d->rejected;
    st->disk_dropped = d->dropped;
    pthread_mutex_unlock(&d->mu);
}
