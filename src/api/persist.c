/* Saving and restoring a session: header, token history, zstd-compressed
 * pages, checksum; written to a temporary file, flushed and renamed.
 *
 * Version 2 files also hold the dropped-token record of a shifted or wrapped
 * cache (kept head, count, hash), so a loaded session checks a request
 * against its whole history as the live one did; version 1 files load only
 * when nothing was dropped. Version 3 adds the sliding-window ring of gemma3's
 * local layers (its slots and first position held; its pages after the
 * others); version 2 files, which have none, load as they are.
 *
 * Loading trusts nothing the checksum covers (anyone can recompute it): every
 * count, position, type and size is checked against what the loading
 * session's settings can produce (kv_check.c for the page table) before
 * anything is swapped in.
 *
 * Paths: a session file is a regular file. Load and save refuse anything else
 * at the path (symbolic link, FIFO, device, directory, socket) without
 * following or opening it for writing; save may also create the file.
 *
 * Temporaries: a save writes PATH.tmp.<pid>.XXXXXX, holds an exclusive
 * flock on it while writing, and renames it over PATH. A save killed midway
 * leaves its temporary behind; the next save of the same PATH removes such
 * orphans: names of exactly that pattern, regular files (not followed through
 * symbolic links), whose pid is not a live process, and whose lock is free.
 * The pid rule never removes the file of a live saver in the same pid
 * namespace (pid reuse can only keep an orphan longer); the lock covers
 * savers the pid cannot see (another pid namespace) except in the instant
 * between mkstemp and flock. Names of the older PATH.tmp.XXXXXX form (no pid)
 * are removed when their lock is free and they are over an hour old. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>
#include <zstd.h>

#include "core/buf.h"
#include "core/dtype.h"
#include "core/error.h"
#include "session_impl.h"

#define SES_MAX_FILE (1ull << 40)
#define SES_LEGACY_TEMP_AGE 3600 /* seconds before a temporary without a pid counts as orphaned */

typedef kv_ses_header ses_header;

/* A 128-bit hash of the whole GGUF file: metadata, tensor infos and data. */
void kv_model_fingerprint(const kvlm_model *m, uint64_t out[2]) {
    XXH128_hash_t h = XXH3_128bits(m->gguf->base, m->gguf->size);
    out[0] = h.low64;
    out[1] = h.high64;
}

/* The model's fingerprint, marked with the session's RoPE variant when the model has context-dependent
 * rotations (phi3's LongRoPE long factors: variant 1), so that keys rotated one way are never continued
 * by a session that rotates the other (variant 0 leaves it as it was). */
static void session_fingerprint(const kvlm_model *m, uint32_t variant, uint64_t out[2]) {
    kv_model_fingerprint(m, out);
    out[0] ^= 0x4c6f6e67526f5045ull * variant;
}

uint64_t kv_session_checksum(const void *data, size_t n) { return XXH3_64bits(data, n); }

void kv_session_seal(uint8_t *file, size_t n) {
    if (n < 8) return;
    const uint64_t sum = kv_session_checksum(file, n - 8);
    memcpy(file + n - 8, &sum, 8);
}

/* ------------------------------------------------------------ paths */

/* What a file type is, for messages; NULL for a regular file. */
static const char *kind_of(mode_t m) {
    if (S_ISREG(m)) return NULL;
    if (S_ISLNK(m)) return "a symbolic link";
    if (S_ISDIR(m)) return "a directory";
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    return "not a regular file";
}

static kvlm_status refuse_kind(const char *who, const char *path, const char *kind, bool absent_ok,
                               kvlm_error *err) {
    return kv_fail(err, KVLM_ERR_INVALID_ARG, "%s: '%s' is %s; refused (a session file must be a regular file%s)", who,
                   path, kind, absent_ok ? " or not exist yet" : "");
}

kvlm_status kv_session_check_path(const char *path, bool absent_ok, const char *who, kvlm_error *err) {
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT && absent_ok) return KVLM_OK;
        return kv_fail(err, KVLM_ERR_IO, "%s: cannot use '%s': %s", who, path, strerror(errno));
    }
    const char *k = kind_of(st.st_mode);
    return k ? refuse_kind(who, path, k, absent_ok, err) : KVLM_OK;
}

static bool temp_suffix(const char *r) { /* the six characters mkstemp puts in place of XXXXXX */
    for (int i = 0; i < 6; i++)
        if (!((r[i] >= '0' && r[i] <= '9') || (r[i] >= 'a' && r[i] <= 'z') || (r[i] >= 'A' && r[i] <= 'Z')))
            return false;
    return r[6] == '\0';
}

int kv_session_clean_temps(const char *path) {
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir) return 0;
    DIR *d = opendir(dir);
    free(dir);
    if (!d) return 0;
    const int dfd = dirfd(d);
    const size_t bl = strlen(base);
    const time_t now = time(NULL);
    int removed = 0;
    for (struct dirent *e; (e = readdir(d));) {
        const char *nm = e->d_name;
        if (strncmp(nm, base, bl) != 0 || strncmp(nm + bl, ".tmp.", 5) != 0) continue;
        const char *r = nm + bl + 5;
        const size_t nd = strspn(r, "0123456789");
        bool legacy;
        if (nd >= 1 && nd <= 10 && r[0] != '0' && r[nd] == '.' && temp_suffix(r + nd + 1)) {
            const long long pid = strtoll(r, NULL, 10);
            if (pid > INT_MAX || (pid_t)pid == getpid()) continue;
            if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive, or cannot tell */
            legacy = false;
        } else if (temp_suffix(r)) {
            legacy = true;
        } else {
            continue;
        }
        struct stat st, st2;
        if (fstatat(dfd, nm, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) continue;
        if (legacy && now - st.st_mtime < SES_LEGACY_TEMP_AGE) continue;
        const int fd = openat(dfd, nm, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) continue;
        if (fstat(fd, &st2) == 0 && S_ISREG(st2.st_mode) && st2.st_ino == st.st_ino && st2.st_dev == st.st_dev &&
            flock(fd, LOCK_EX | LOCK_NB) == 0 && unlinkat(dfd, nm, 0) == 0)
            removed++;
        close(fd);
    }
    closedir(d);
    return removed;
}

/* ------------------------------------------------------------ writing */

static void sync_dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir) return;
    const int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(dir);
    if (fd < 0) return;
    (void)fsync(fd); /* durability of the rename; some file systems refuse it, which is harmless */
    close(fd);
}

kvlm_status kv_session_write_file(const char *path, const void *bytes, size_t n, const char *who, kvlm_error *err) {
    const uint8_t *data = bytes;
    kvlm_status st = kv_session_check_path(path, true, who, err);
    if (st) return st;
    kv_session_clean_temps(path);
    const size_t cap = strlen(path) + 40;
    char *tmp = malloc(cap);
    if (!tmp) return kv_fail(err, KVLM_ERR_NOMEM, "%s: out of memory", who);
    snprintf(tmp, cap, "%s.tmp.%ld.XXXXXX", path, (long)getpid());
    const int fd = mkstemp(tmp);
    if (fd < 0) {
        st = kv_fail(err, KVLM_ERR_IO, "%s: cannot create a temporary file beside '%s': %s", who, path,
                     strerror(errno));
        free(tmp);
        return st;
    }
    (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
    (void)flock(fd, LOCK_EX); /* tells the cleaners of other processes the file is being written */
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
    /* what is at the path may have changed while writing: check again just before replacing it */
    if (ok && (st = kv_session_check_path(path, true, who, err)) != KVLM_OK) {
        unlink(tmp);
        close(fd);
        free(tmp);
        return st;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = false;
        e = errno;
    }
    if (!ok) unlink(tmp);
    close(fd); /* after the rename: the lock is held until the file has its name; the data is fsync'd */
    free(tmp);
    if (!ok) return kv_fail(err, KVLM_ERR_IO, "%s: writing '%s' failed: %s", who, path, strerror(e));
    sync_dir_of(path);
    return KVLM_OK;
}

static kvlm_status save_locked(kvlm_session *s, const char *path, kvlm_error *err) {
    const kv_seq *q = &s->seq;
    /* only states a load accepts are written */
    kv_seq_desc d;
    kvlm_error why;
    if (kv_seq_export(q, s->n_consumed, &d, &why) != KVLM_OK)
        return kv_fail(err, KVLM_ERR_INTERNAL, "session_save: the session cannot be saved: it %s", why.msg);
    ses_header h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, KV_SES_MAGIC, 8);
    h.version = KV_SES_VERSION;
    h.header_bytes = sizeof h;
    session_fingerprint(s->model, kv_seq_rope(&s->seq)->variant, h.fingerprint);
    h.page_tokens = d.page_tokens;
    h.n_layer = d.n_layer;
    h.kv_dim = d.kv_dim;
    h.type_k = d.type_k;
    h.type_v = d.type_v;
    h.overflow = d.overflow;
    h.shareable = d.shareable;
    h.n_pages = d.n_pages;
    h.n = d.n;
    h.next_pos = d.next_pos;
    h.n_consumed = d.n_hist;
    h.n_ctx = d.n_ctx;
    h.n_head = d.n_head;
    h.n_dropped = d.n_dropped;
    h.drop_hash = d.drop_hash;
    h.swa_cap = d.swa_cap;
    h.swa_lo = d.swa_lo;
    kv_buf b = {0};
    kv_buf_add(&b, &h, sizeof h);
    kv_buf_add(&b, d.tokens, (size_t)d.n * sizeof *d.tokens);
    kv_buf_add(&b, d.pos, (size_t)d.n * sizeof *d.pos);
    uint8_t *raw = NULL, *comp = NULL;
    size_t comp_cap = 0;
    kvlm_status st = KVLM_OK;
    for (int32_t j = 0; j < (int32_t)d.n_pages && !b.oom; j++) {
        const kv_page_desc pd = kv_seq_export_page(q, j, NULL);
        uint8_t *nr = realloc(raw, pd.bytes);
        if (!nr) {
            b.oom = true;
            break;
        }
        raw = nr;
        kv_seq_export_page(q, j, raw);
        size_t bound = ZSTD_compressBound(pd.bytes);
        if (bound > comp_cap) {
            uint8_t *nc = realloc(comp, bound);
            if (!nc) {
                b.oom = true;
                break;
            }
            comp = nc;
            comp_cap = bound;
        }
        size_t cn = ZSTD_compress(comp, comp_cap, raw, pd.bytes, 1);
        if (ZSTD_isError(cn)) {
            st = kv_fail(err, KVLM_ERR_INTERNAL, "session_save: zstd: %s", ZSTD_getErrorName(cn));
            break;
        }
        const uint32_t types[2] = {pd.type_k, pd.type_v};
        const uint64_t sizes[2] = {pd.bytes, cn};
        kv_buf_add(&b, types, sizeof types);
        kv_buf_add(&b, sizes, sizeof sizes);
        kv_buf_add(&b, comp, cn);
    }
    free(raw);
    free(comp);
    if (!st && b.oom) st = kv_fail(err, KVLM_ERR_NOMEM, "session_save: out of memory");
    if (!st) {
        const uint64_t sum = kv_session_checksum(b.data, b.n);
        kv_buf_add(&b, &sum, sizeof sum);
        st = b.oom ? kv_fail(err, KVLM_ERR_NOMEM, "session_save: out of memory")
                   : kv_session_write_file(path, b.data, b.n, "session_save", err);
    }
    free(b.data);
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

kvlm_status kv_session_read_file(const char *path, const char *who, uint8_t **out, size_t *n, kvlm_error *err) {
    /* lstat first, so a device or FIFO is refused without being opened; then
       open without following or blocking and check what was opened */
    kvlm_status st = kv_session_check_path(path, false, who, err);
    if (st) return st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ELOOP) return refuse_kind(who, path, "a symbolic link", false, err);
        return kv_fail(err, KVLM_ERR_IO, "%s: cannot open '%s': %s", who, path, strerror(errno));
    }
    struct stat stt;
    if (fstat(fd, &stt) != 0) {
        st = kv_fail(err, KVLM_ERR_IO, "%s: cannot stat '%s': %s", who, path, strerror(errno));
        close(fd);
        return st;
    }
    const char *kind = kind_of(stt.st_mode);
    if (kind || (uint64_t)stt.st_size > SES_MAX_FILE) {
        st = kind ? refuse_kind(who, path, kind, false, err)
                  : kv_fail(err, KVLM_ERR_FORMAT, "%s: '%s' is too large for a session file", who, path);
        close(fd);
        return st;
    }
    size_t size = (size_t)stt.st_size;
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        return kv_fail(err, KVLM_ERR_NOMEM, "%s: out of memory for %zu bytes", who, size);
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
        return kv_fail(err, KVLM_ERR_IO, "%s: reading '%s' failed", who, path);
    }
    *out = buf;
    *n = size;
    return KVLM_OK;
}

/* The description a header gives (the slot arrays come after it). */
static kv_seq_desc desc_of(const ses_header *h) {
    kv_seq_desc d = {
        .page_tokens = h->page_tokens, .n_layer = h->n_layer, .kv_dim = h->kv_dim, .type_k = h->type_k,
        .type_v = h->type_v, .overflow = h->overflow, .shareable = h->shareable, .n_pages = h->n_pages,
        .n = h->n, .next_pos = h->next_pos, .n_hist = h->n_consumed, .n_ctx = h->n_ctx,
        .n_head = h->n_head, .n_dropped = h->n_dropped, .drop_hash = h->drop_hash,
        .swa_cap = h->swa_cap, .swa_lo = h->swa_lo,
    };
    return d;
}

static kvlm_status load_bytes_locked(kvlm_session *s, const uint8_t *buf, size_t size, const char *path,
                                     kvlm_error *err) {
    kvlm_status st = KVLM_OK;
    kv_seq fresh;
    memset(&fresh, 0, sizeof fresh);
    bool fresh_init = false;
    int32_t *slots = NULL;
    ses_header h;
    kvlm_error why;
    rcur c = {buf, size, 0};
    memset(&h, 0, sizeof h);
    if (size < KV_SES_V1_HEADER + 8 || !take(&c, &h, KV_SES_V1_HEADER) || memcmp(h.magic, KV_SES_MAGIC, 8) != 0) {
        st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s' is not a kvlm session file", path);
        goto out;
    }
    const bool v1 = h.version == KV_SES_VERSION_V1 && h.header_bytes == KV_SES_V1_HEADER;
    const bool v2 = h.version == KV_SES_VERSION_V2 && h.header_bytes == KV_SES_V2_HEADER;
    if (!v1 && !v2 && (h.version != KV_SES_VERSION || h.header_bytes != sizeof h)) {
        st = kv_fail(err, KVLM_ERR_UNSUPPORTED, "session_load: '%s' has version %u (this build reads %u to %u)", path,
                     h.version, KV_SES_VERSION_V1, KV_SES_VERSION);
        goto out;
    }
    if (!v1 && (size < h.header_bytes + 8 || !take(&c, (uint8_t *)&h + KV_SES_V1_HEADER, h.header_bytes - KV_SES_V1_HEADER))) {
        st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s' is truncated", path);
        goto out;
    }
    uint64_t sum;
    memcpy(&sum, buf + size - 8, 8);
    if (kv_session_checksum(buf, size - 8) != sum) {
        st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s' is corrupted (checksum mismatch)", path);
        goto out;
    }
    c.n = size - 8;
    if ((v2 && h.swa_cap != 0) || h.reserved != 0) { /* version 2 reserved the ring's field as 0 */
        st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s' has a non-zero reserved header field", path);
        goto out;
    }
    uint64_t fp[2];
    const uint32_t variant = kv_seq_rope(&s->seq)->variant;
    session_fingerprint(s->model, variant, fp);
    if (fp[0] != h.fingerprint[0] || fp[1] != h.fingerprint[1]) {
        session_fingerprint(s->model, variant ^ 1u, fp);
        if (fp[0] == h.fingerprint[0] && fp[1] == h.fingerprint[1]) {
            st = kv_fail(err, KVLM_ERR_INVALID_ARG,
                         "session_load: '%s' was saved from a session that rotates keys with the model's LongRoPE %s "
                         "factors; this one (context %d) uses the %s ones (the choice follows the context length)",
                         path, variant ? "short" : "long", (int)kvlm_session_n_ctx(s), variant ? "long" : "short");
            goto out;
        }
        st = kv_fail(err, KVLM_ERR_INVALID_ARG, "session_load: '%s' was saved with another model", path);
        goto out;
    }
    kv_seq_desc d = desc_of(&h);
    if (kv_seq_check_settings(&s->seq, &d, &why) != KVLM_OK) {
        st = kv_fail(err, KVLM_ERR_INVALID_ARG, "session_load: '%s' %s", path, why.msg);
        goto out;
    }
    if (v1) {
        /* version 1 has no dropped-token record: it loads when nothing was dropped (never shifted, a ring
           that never wrapped), with this session's head and an empty record; the checks below refuse a
           ring slot that was overwritten */
        const bool ring = h.overflow == KVLM_OVERFLOW_RING;
        if (ring ? h.next_pos > h.n_ctx : h.n_consumed != h.n) {
            st = kv_fail(err, KVLM_ERR_UNSUPPORTED,
                         "session_load: '%s' is a version 1 file of a cache that was %s (%d tokens consumed, %d "
                         "held); version 1 has no record of the dropped tokens: start over (--session-overwrite "
                         "in the CLI)",
                         path, ring ? "wrapped" : "shifted", h.n_consumed, h.n);
            goto out;
        }
        d.n_head = h.overflow == KVLM_OVERFLOW_RING || h.overflow == KVLM_OVERFLOW_ERROR ? 0 : kv_seq_head(&s->seq);
    }
    /* the counts, against a sequence with the session's settings (a ring's capacity comes from them) */
    st = kv_seq_init(&fresh, s->cache->pool, &s->seq_config, err);
    if (st) goto out;
    fresh_init = true;
    if (kv_seq_check_desc(&fresh, &d, &why) != KVLM_OK) {
        st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s' %s", path, why.msg);
        goto out;
    }
    const int32_t n_vocab = s->model->hp.n_vocab;
    if ((int64_t)h.n * 8 > (int64_t)(c.n - c.off)) {
        st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s' is truncated", path);
        goto out;
    }
    /* the slot arrays: token ids, then positions */
    slots = malloc((size_t)(h.n > 0 ? h.n : 1) * 2 * sizeof *slots);
    if (!slots) {
        st = kv_fail(err, KVLM_ERR_NOMEM, "session_load: out of memory");
        goto out;
    }
    take(&c, slots, (size_t)h.n * 4);
    take(&c, slots + h.n, (size_t)h.n * 4);
    d.tokens = slots;
    d.pos = slots + h.n;
    for (int32_t i = 0; i < h.n; i++)
        if (d.tokens[i] < 0 || d.tokens[i] >= n_vocab) {
            st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s': slot %d holds token %d, outside the vocabulary (0..%d)",
                         path, i, d.tokens[i], n_vocab - 1);
            goto out;
        }
    if (kv_seq_check_desc(&fresh, &d, &why) != KVLM_OK) {
        st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s' %s", path, why.msg);
        goto out;
    }
    if (kv_seq_import(&fresh, &d, &why) != KVLM_OK) {
        st = kv_fail(err, KVLM_ERR_NOMEM, "session_load: %s", why.msg);
        goto out;
    }
    for (uint32_t j = 0; j < h.n_pages; j++) {
        uint32_t types[2];
        uint64_t sizes[2];
        if (!take(&c, types, sizeof types) || !take(&c, sizes, sizeof sizes) || sizes[1] > c.n - c.off) {
            st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s' is truncated at page %u", path, j);
            goto out;
        }
        const kv_page_desc pd = {types[0], types[1], sizes[0]};
        uint8_t *dst = kv_seq_import_page(&fresh, &d, j, &pd, &why);
        if (!dst) {
            st = why.code == KVLM_ERR_FORMAT ? kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s': %s", path, why.msg)
                                             : kv_fail(err, why.code, "session_load: %s", why.msg);
            goto out;
        }
        size_t dn = ZSTD_decompress(dst, (size_t)pd.bytes, c.p + c.off, (size_t)sizes[1]);
        if (ZSTD_isError(dn) || dn != pd.bytes) {
            st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s': page %u does not decompress", path, j);
            goto out;
        }
        c.off += (size_t)sizes[1];
    }
    if (c.off != c.n) {
        st = kv_fail(err, KVLM_ERR_FORMAT, "session_load: '%s' has %zu unexpected trailing bytes", path, c.n - c.off);
        goto out;
    }
    /* swap in: the old contents go, the forward pass keeps pointing at s->seq */
    kv_seq_import_commit(&s->seq, &fresh, &d);
    fresh_init = false;
    s->n_consumed = h.n_consumed;
out:
    free(slots);
    if (fresh_init) kv_seq_destroy(&fresh);
    return st;
}

kvlm_status kv_session_load_buffer(kvlm_session *s, const uint8_t *buf, size_t n, const char *name,
                                   kvlm_error *err) {
    kv_error_clear(err);
    if (!s || (!buf && n) || !name) return kv_fail(err, KVLM_ERR_INVALID_ARG, "session_load: NULL argument");
    if (!kv_session_acquire(s)) return kv_fail(err, KVLM_ERR_BUSY, "session_load: the session is in use");
    kvlm_status st = load_bytes_locked(s, buf, n, name, err);
    kv_session_release(s);
    return st;
}

static kvlm_status load_locked(kvlm_session *s, const char *path, kvlm_error *err) {
    uint8_t *buf = NULL;
    size_t size = 0;
    kvlm_status st = kv_session_read_file(path, "session_load", &buf, &size, err);
    if (st) return st;
    st = load_bytes_locked(s, buf, size, path, err);
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
    return kv_seq_tokens(&s->seq, out, n_max);
}
