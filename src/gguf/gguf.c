/* GGUF v2/v3 reader. Every read goes through a bounds-checked cursor; every
 * count and size is checked against the bytes left before anything is
 * allocated, so a hostile file cannot make us allocate or read past its end. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/dtype.h"
#include "core/error.h"

#define GGUF_DEFAULT_ALIGNMENT 32

typedef struct cursor {
    const uint8_t *p;
    size_t size;
    size_t off;
    kvlm_error *err;
} cursor;

static size_t left(const cursor *c) { return c->size - c->off; }

static bool rd(cursor *c, void *dst, size_t n, const char *what) {
    if (n > left(c)) {
        kv_fail(c->err, KVLM_ERR_FORMAT, "gguf: truncated file: %s needs %zu bytes at offset %zu, %zu left",
                what, n, c->off, left(c));
        return false;
    }
    memcpy(dst, c->p + c->off, n);
    c->off += n;
    return true;
}

static bool rd_u32(cursor *c, uint32_t *v, const char *what) { return rd(c, v, 4, what); }
static bool rd_u64(cursor *c, uint64_t *v, const char *what) { return rd(c, v, 8, what); }

static bool rd_str(cursor *c, gguf_str *s, const char *what) {
    uint64_t len;
    if (!rd_u64(c, &len, what)) return false;
    if (len > left(c)) {
        kv_fail(c->err, KVLM_ERR_FORMAT, "gguf: %s: string length %llu at offset %zu exceeds the %zu bytes left",
                what, (unsigned long long)len, c->off - 8, left(c));
        return false;
    }
    s->len = len;
    s->data = (const char *)c->p + c->off;
    c->off += (size_t)len;
    return true;
}

static size_t vtype_size(gguf_vtype t) {
    switch (t) {
    case GGUF_UINT8: case GGUF_INT8: case GGUF_BOOL: return 1;
    case GGUF_UINT16: case GGUF_INT16: return 2;
    case GGUF_UINT32: case GGUF_INT32: case GGUF_FLOAT32: return 4;
    case GGUF_UINT64: case GGUF_INT64: case GGUF_FLOAT64: return 8;
    default: return 0; /* string, array: variable */
    }
}

const char *kv_gguf_vtype_name(gguf_vtype t) {
    static const char *const names[GGUF_VTYPE_COUNT] = {
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};
    return (unsigned)t < GGUF_VTYPE_COUNT ? names[t] : "?";
}

/* Reads one scalar of type t into kv->v. */
static bool rd_scalar(cursor *c, gguf_vtype t, gguf_kv *kv, const char *key) {
    uint8_t b[8];
    size_t n = vtype_size(t);
    if (!rd(c, b, n, key)) return false;
    switch (t) {
    case GGUF_UINT8: kv->v.u64 = b[0]; break;
    case GGUF_INT8: { int8_t x; memcpy(&x, b, 1); kv->v.i64 = x; } break;
    case GGUF_BOOL:
        if (b[0] > 1) {
            kv_fail(c->err, KVLM_ERR_FORMAT, "gguf: key '%s': bool value %u is not 0 or 1", key, b[0]);
            return false;
        }
        kv->v.u64 = b[0];
        break;
    case GGUF_UINT16: { uint16_t x; memcpy(&x, b, 2); kv->v.u64 = x; } break;
    case GGUF_INT16: { int16_t x; memcpy(&x, b, 2); kv->v.i64 = x; } break;
    case GGUF_UINT32: { uint32_t x; memcpy(&x, b, 4); kv->v.u64 = x; } break;
    case GGUF_INT32: { int32_t x; memcpy(&x, b, 4); kv->v.i64 = x; } break;
    case GGUF_FLOAT32: { float x; memcpy(&x, b, 4); kv->v.f64 = x; } break;
    case GGUF_UINT64: memcpy(&kv->v.u64, b, 8); break;
    case GGUF_INT64: memcpy(&kv->v.i64, b, 8); break;
    case GGUF_FLOAT64: memcpy(&kv->v.f64, b, 8); break;
    default: return false;
    }
    return true;
}

static bool rd_value(cursor *c, gguf_kv *kv) {
    uint32_t t;
    if (!rd_u32(c, &t, kv->key)) return false;
    if (t >= GGUF_VTYPE_COUNT) {
        kv_fail(c->err, KVLM_ERR_FORMAT, "gguf: key '%s': unknown value type %u", kv->key, t);
        return false;
    }
    kv->type = (gguf_vtype)t;
    if (t == GGUF_STRING) return rd_str(c, &kv->v.str, kv->key);
    if (t != GGUF_ARRAY) return rd_scalar(c, kv->type, kv, kv->key);

    uint32_t at;
    uint64_t n;
    if (!rd_u32(c, &at, kv->key) || !rd_u64(c, &n, kv->key)) return false;
    if (at >= GGUF_VTYPE_COUNT || at == GGUF_ARRAY) {
        kv_fail(c->err, KVLM_ERR_FORMAT, "gguf: key '%s': unsupported array element type %u", kv->key, at);
        return false;
    }
    kv->arr_type = (gguf_vtype)at;
    kv->arr_n = n;
    if (at == GGUF_STRING) {
        /* each string takes at least its 8-byte length: bound n before allocating */
        if (n > left(c) / 8) {
            kv_fail(c->err, KVLM_ERR_FORMAT, "gguf: key '%s': %llu strings cannot fit in the %zu bytes left",
                    kv->key, (unsigned long long)n, left(c));
            return false;
        }
        kv->arr_str = n ? malloc((size_t)n * sizeof(gguf_str)) : NULL;
        if (n && !kv->arr_str) {
            kv_fail(c->err, KVLM_ERR_NOMEM, "gguf: key '%s': out of memory for %llu strings", kv->key,
                    (unsigned long long)n);
            return false;
        }
        for (uint64_t i = 0; i < n; i++)
            if (!rd_str(c, &kv->arr_str[i], kv->key)) return false;
        return true;
    }
    uint64_t bytes;
    if (!kv_mul_u64(n, vtype_size(kv->arr_type), &bytes) || bytes > left(c)) {
        kv_fail(c->err, KVLM_ERR_FORMAT, "gguf: key '%s': array of %llu %s exceeds the %zu bytes left", kv->key,
                (unsigned long long)n, kv_gguf_vtype_name(kv->arr_type), left(c));
        return false;
    }
    if (at == GGUF_BOOL) {
        for (uint64_t i = 0; i < n; i++)
            if (c->p[c->off + i] > 1) {
                kv_fail(c->err, KVLM_ERR_FORMAT, "gguf: key '%s': bool element %llu is not 0 or 1", kv->key,
                        (unsigned long long)i);
                return false;
            }
    }
    kv->arr_data = c->p + c->off;
    c->off += (size_t)bytes;
    return true;
}

/* Copies s into the name pool, NUL-terminated. */
static const char *pool_add(char **pool, size_t *used, gguf_str s) {
    char *dst = *pool + *used;
    memcpy(dst, s.data, (size_t)s.len);
    dst[s.len] = '\0';
    *used += (size_t)s.len + 1;
    return dst;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int cmp_tensor_name(const void *a, const void *b) {
    const gguf_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

void kv_gguf_close(gguf_ctx *g) {
    if (!g) return;
    if (g->kv)
        for (uint64_t i = 0; i < g->n_kv; i++) free(g->kv[i].arr_str);
    free(g->kv);
    free(g->tensors);
    free(g->names);
    if (g->map) munmap(g->map, g->map_size);
    free(g);
}

/* Parses the header, metadata and tensor infos of buf[0..size). */
static kvlm_status parse(gguf_ctx *g, kvlm_error *err) {
    cursor c = {g->base, g->size, 0, err};
    char magic[4];
    if (!rd(&c, magic, 4, "magic")) return err ? err->code : KVLM_ERR_FORMAT;
    if (memcmp(magic, "GGUF", 4) != 0) return kv_fail(err, KVLM_ERR_FORMAT, "gguf: bad magic (not a GGUF file)");
    if (!rd_u32(&c, &g->version, "version")) return KVLM_ERR_FORMAT;
    if (g->version == 1) return kv_fail(err, KVLM_ERR_UNSUPPORTED, "gguf: version 1 is not supported (need 2 or 3)");
    if (g->version != 2 && g->version != 3)
        return kv_fail(err, KVLM_ERR_FORMAT, "gguf: unknown version %u (byte-swapped file?)", g->version);
    if (!rd_u64(&c, &g->n_tensors, "tensor count") || !rd_u64(&c, &g->n_kv, "metadata count"))
        return KVLM_ERR_FORMAT;
    /* a kv takes at least 8 (key len) + 4 (type) + 1 bytes; a tensor info at least 8+4+8+4+8 */
    if (g->n_kv > left(&c) / 13)
        return kv_fail(err, KVLM_ERR_FORMAT, "gguf: metadata count %llu cannot fit in the file",
                       (unsigned long long)g->n_kv);
    if (g->n_tensors > left(&c) / 32)
        return kv_fail(err, KVLM_ERR_FORMAT, "gguf: tensor count %llu cannot fit in the file",
                       (unsigned long long)g->n_tensors);
    /* every key and name is a substring of the file: the pool never needs more than the file plus NULs */
    size_t pool_cap = g->size + (size_t)(g->n_kv + g->n_tensors) + 1;
    g->names = malloc(pool_cap);
    g->kv = calloc(g->n_kv ? (size_t)g->n_kv : 1, sizeof(gguf_kv));
    g->tensors = calloc(g->n_tensors ? (size_t)g->n_tensors : 1, sizeof(gguf_tensor));
    if (!g->names || !g->kv || !g->tensors) return kv_fail(err, KVLM_ERR_NOMEM, "gguf: out of memory");
    size_t pool_used = 0;

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        gguf_str key;
        if (!rd_str(&c, &key, "metadata key")) return KVLM_ERR_FORMAT;
        if (key.len == 0) return kv_fail(err, KVLM_ERR_FORMAT, "gguf: metadata key %llu is empty", (unsigned long long)i);
        g->kv[i].key = pool_add(&g->names, &pool_used, key);
        if (strlen(g->kv[i].key) != key.len)
            return kv_fail(err, KVLM_ERR_FORMAT, "gguf: metadata key %llu contains a NUL byte", (unsigned long long)i);
        if (!rd_value(&c, &g->kv[i])) return err ? err->code : KVLM_ERR_FORMAT;
    }
    if (g->n_kv > 1) {
        const char **keys = malloc((size_t)g->n_kv * sizeof *keys);
        if (!keys) return kv_fail(err, KVLM_ERR_NOMEM, "gguf: out of memory");
        for (uint64_t i = 0; i < g->n_kv; i++) keys[i] = g->kv[i].key;
        qsort(keys, (size_t)g->n_kv, sizeof *keys, cmp_str);
        for (uint64_t i = 1; i < g->n_kv; i++)
            if (strcmp(keys[i - 1], keys[i]) == 0) {
                kvlm_status st = kv_fail(err, KVLM_ERR_FORMAT, "gguf: duplicate metadata key '%s'", keys[i]);
                free(keys);
                return st;
            }
        free(keys);
    }
    const gguf_kv *al = kv_gguf_find(g, "general.alignment");
    if (al) {
        if (al->type != GGUF_UINT32)
            return kv_fail(err, KVLM_ERR_FORMAT, "gguf: general.alignment has type %s, expected u32",
                           kv_gguf_vtype_name(al->type));
        uint64_t a = al->v.u64;
        if (a == 0 || (a & (a - 1)) != 0)
            return kv_fail(err, KVLM_ERR_FORMAT, "gguf: general.alignment %llu is not a power of two",
                           (unsigned long long)a);
        g->alignment = (uint32_t)a;
    }

    for (uint64_t i = 0; i < g->n_tensors; i++) {
        gguf_tensor *t = &g->tensors[i];
        gguf_str name;
        if (!rd_str(&c, &name, "tensor name")) return KVLM_ERR_FORMAT;
        if (name.len == 0 || name.len >= 64)
            return kv_fail(err, KVLM_ERR_FORMAT, "gguf: tensor %llu: name length %llu not in 1..63",
                           (unsigned long long)i, (unsigned long long)name.len);
        t->name = pool_add(&g->names, &pool_used, name);
        if (strlen(t->name) != name.len)
            return kv_fail(err, KVLM_ERR_FORMAT, "gguf: tensor %llu: name contains a NUL byte", (unsigned long long)i);
        if (!rd_u32(&c, &t->n_dims, t->name)) return KVLM_ERR_FORMAT;
        if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS)
            return kv_fail(err, KVLM_ERR_FORMAT, "gguf: tensor '%s': %u dimensions (1..%d allowed)", t->name,
                           t->n_dims, GGUF_MAX_DIMS);
        t->n_elements = 1;
        for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
            t->ne[d] = 1;
            if (d < t->n_dims && !rd_u64(&c, &t->ne[d], t->name)) return KVLM_ERR_FORMAT;
            if (t->ne[d] == 0 || t->ne[d] > (uint64_t)INT64_MAX)
                return kv_fail(err, KVLM_ERR_FORMAT, "gguf: tensor '%s': dimension %u is %llu", t->name, d,
                               (unsigned long long)t->ne[d]);
            if (!kv_mul_u64(t->n_elements, t->ne[d], &t->n_elements) || t->n_elements > (uint64_t)INT64_MAX)
                return kv_fail(err, KVLM_ERR_FORMAT, "gguf: tensor '%s': element count overflows", t->name);
        }
        if (!rd_u32(&c, &t->type, t->name) || !rd_u64(&c, &t->offset, t->name)) return KVLM_ERR_FORMAT;
        const kv_dtype_info *ti = kv_dtype_get(t->type);
        if (!ti) return kv_fail(err, KVLM_ERR_UNSUPPORTED, "gguf: tensor '%s': unknown tensor type %u", t->name, t->type);
        if (t->ne[0] % (uint64_t)ti->block_size != 0)
            return kv_fail(err, KVLM_ERR_FORMAT, "gguf: tensor '%s': row length %llu is not a multiple of %s's block of %d",
                           t->name, (unsigned long long)t->ne[0], ti->name, ti->block_size);
        if (!kv_dtype_tensor_bytes(t->type, t->ne[0], t->n_elements, &t->n_bytes))
            return kv_fail(err, KVLM_ERR_FORMAT, "gguf: tensor '%s': size of %llu %s elements is invalid", t->name,
                           (unsigned long long)t->n_elements, ti->name);
        if (t->offset % g->alignment != 0)
            return kv_fail(err, KVLM_ERR_FORMAT, "gguf: tensor '%s': offset %llu is not a multiple of the alignment %u",
                           t->name, (unsigned long long)t->offset, g->alignment);
    }

    /* the data section starts at the next multiple of the alignment */
    uint64_t data = c.off;
    uint64_t rem = data % g->alignment;
    if (rem && !kv_add_u64(data, g->alignment - rem, &data))
        return kv_fail(err, KVLM_ERR_FORMAT, "gguf: data offset overflows");
    if (g->n_tensors > 0 && data > g->size)
        return kv_fail(err, KVLM_ERR_FORMAT, "gguf: data section starts at %llu, past the end of the file (%zu bytes)",
                       (unsigned long long)data, g->size);
    g->data_offset = data;

    for (uint64_t i = 0; i < g->n_tensors; i++) {
        gguf_tensor *t = &g->tensors[i];
        uint64_t start, end;
        if (!kv_add_u64(data, t->offset, &start) || !kv_add_u64(start, t->n_bytes, &end) || end > g->size)
            return kv_fail(err, KVLM_ERR_FORMAT,
                           "gguf: tensor '%s': data [%llu, +%llu) lies past the end of the file (%zu bytes)", t->name,
                           (unsigned long long)t->offset, (unsigned long long)t->n_bytes, g->size);
        t->data = g->base + start;
    }

    if (g->n_tensors > 1) {
        /* names must be unique; tensors must not overlap */
        gguf_tensor **idx = malloc((size_t)g->n_tensors * sizeof *idx);
        if (!idx) return kv_fail(err, KVLM_ERR_NOMEM, "gguf: out of memory");
        for (uint64_t i = 0; i < g->n_tensors; i++) idx[i] = &g->tensors[i];
        qsort(idx, (size_t)g->n_tensors, sizeof *idx, cmp_tensor_name);
        for (uint64_t i = 1; i < g->n_tensors; i++)
            if (strcmp(idx[i - 1]->name, idx[i]->name) == 0) {
                kvlm_status st = kv_fail(err, KVLM_ERR_FORMAT, "gguf: duplicate tensor name '%s'", idx[i]->name);
                free(idx);
                return st;
            }
        free(idx);
    }
    return KVLM_OK;
}

kvlm_status kv_gguf_open_buffer(const void *buf, size_t size, gguf_ctx **out, kvlm_error *err) {
    if (!out || (!buf && size)) return kv_fail(err, KVLM_ERR_INVALID_ARG, "gguf: NULL argument");
    *out = NULL;
    gguf_ctx *g = calloc(1, sizeof *g);
    if (!g) return kv_fail(err, KVLM_ERR_NOMEM, "gguf: out of memory");
    g->base = buf;
    g->size = size;
    kvlm_status st = parse(g, err);
    if (st != KVLM_OK) {
        kv_gguf_close(g);
        return st;
    }
    *out = g;
    return KVLM_OK;
}

kvlm_status kv_gguf_open(const char *path, gguf_ctx **out, kvlm_error *err) {
    if (!path || !out) return kv_fail(err, KVLM_ERR_INVALID_ARG, "gguf: NULL argument");
    *out = NULL;
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return kv_fail(err, KVLM_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return kv_fail(err, KVLM_ERR_IO, "cannot stat '%s': %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        const char *kind = S_ISDIR(st.st_mode)   ? "a directory"
                           : S_ISFIFO(st.st_mode) ? "a FIFO"
                           : S_ISCHR(st.st_mode)  ? "a character device"
                           : S_ISBLK(st.st_mode)  ? "a block device"
                           : S_ISSOCK(st.st_mode) ? "a socket"
                                                  : "not a regular file";
        return kv_fail(err, KVLM_ERR_IO, "'%s' is %s; a model must be a regular file", path, kind);
    }
    size_t size = (size_t)st.st_size;
    if (size == 0) {
        close(fd);
        return kv_fail(err, KVLM_ERR_FORMAT, "gguf: '%s' is empty", path);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) return kv_fail(err, KVLM_ERR_IO, "cannot mmap '%s': %s", path, strerror(e));
    gguf_ctx *g = calloc(1, sizeof *g);
    if (!g) {
        munmap(map, size);
        return kv_fail(err, KVLM_ERR_NOMEM, "gguf: out of memory");
    }
    g->map = map;
    g->map_size = size;
    g->base = map;
    g->size = size;
    kvlm_status s = parse(g, err);
    if (s != KVLM_OK) {
        kv_gguf_close(g);
        return s;
    }
    *out = g;
    return KVLM_OK;
}

const gguf_kv *kv_gguf_find(const gguf_ctx *g, const char *key) {
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key && strcmp(g->kv[i].key, key) == 0) return &g->kv[i];
    return NULL;
}

const gguf_tensor *kv_gguf_find_tensor(const gguf_ctx *g, const char *name) {
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0) return &g->tensors[i];
    return NULL;
}

static bool is_unsigned(gguf_vtype t) {
    return t == GGUF_UINT8 || t == GGUF_UINT16 || t == GGUF_UINT32 || t == GGUF_UINT64 || t == GGUF_BOOL;
}
static bool is_signed(gguf_vtype t) {
    return t == GGUF_INT8 || t == GGUF_INT16 || t == GGUF_INT32 || t == GGUF_INT64;
}

static bool kv_as_i64(const gguf_kv *kv, int64_t *out) {
    if (is_unsigned(kv->type)) {
        if (kv->v.u64 > (uint64_t)INT64_MAX) return false;
        *out = (int64_t)kv->v.u64;
        return true;
    }
    if (is_signed(kv->type)) {
        *out = kv->v.i64;
        return true;
    }
    return false;
}

bool kv_gguf_get_u32(const gguf_ctx *g, const char *key, uint32_t *out) {
    const gguf_kv *kv = kv_gguf_find(g, key);
    int64_t v;
    if (!kv || kv->type == GGUF_BOOL || !kv_as_i64(kv, &v) || v < 0 || v > (int64_t)UINT32_MAX) return false;
    *out = (uint32_t)v;
    return true;
}

bool kv_gguf_get_i32(const gguf_ctx *g, const char *key, int32_t *out) {
    const gguf_kv *kv = kv_gguf_find(g, key);
    int64_t v;
    if (!kv || kv->type == GGUF_BOOL || !kv_as_i64(kv, &v) || v < INT32_MIN || v > INT32_MAX) return false;
    *out = (int32_t)v;
    return true;
}

bool kv_gguf_get_f32(const gguf_ctx *g, const char *key, float *out) {
    const gguf_kv *kv = kv_gguf_find(g, key);
    if (!kv || (kv->type != GGUF_FLOAT32 && kv->type != GGUF_FLOAT64)) return false;
    *out = (float)kv->v.f64;
    return true;
}

bool kv_gguf_get_bool(const gguf_ctx *g, const char *key, bool *out) {
    const gguf_kv *kv = kv_gguf_find(g, key);
    if (!kv || kv->type != GGUF_BOOL) return false;
    *out = kv->v.u64 != 0;
    return true;
}

bool kv_gguf_get_str(const gguf_ctx *g, const char *key, gguf_str *out) {
    const gguf_kv *kv = kv_gguf_find(g, key);
    if (!kv || kv->type != GGUF_STRING) return false;
    *out = kv->v.str;
    return true;
}

bool kv_gguf_str_eq(gguf_str s, const char *c) {
    size_t n = strlen(c);
    return s.len == n && memcmp(s.data, c, n) == 0;
}

bool kv_gguf_arr_i64(const gguf_kv *kv, uint64_t i, int64_t *out) {
    if (!kv || kv->type != GGUF_ARRAY || i >= kv->arr_n || !kv->arr_data) return false;
    const uint8_t *p = kv->arr_data + i * vtype_size(kv->arr_type);
    switch (kv->arr_type) {
    case GGUF_UINT8: case GGUF_BOOL: *out = p[0]; return true;
    case GGUF_INT8: { int8_t x; memcpy(&x, p, 1); *out = x; return true; }
    case GGUF_UINT16: { uint16_t x; memcpy(&x, p, 2); *out = x; return true; }
    case GGUF_INT16: { int16_t x; memcpy(&x, p, 2); *out = x; return true; }
    case GGUF_UINT32: { uint32_t x; memcpy(&x, p, 4); *out = x; return true; }
    case GGUF_INT32: { int32_t x; memcpy(&x, p, 4); *out = x; return true; }
    case GGUF_UINT64: { uint64_t x; memcpy(&x, p, 8); if (x > (uint64_t)INT64_MAX) return false; *out = (int64_t)x; return true; }
    case GGUF_INT64: { int64_t x; memcpy(&x, p, 8); *out = x; return true; }
    default: return false;
    }
}

bool kv_gguf_arr_f64(const gguf_kv *kv, uint64_t i, double *out) {
    if (!kv || kv->type != GGUF_ARRAY || i >= kv->arr_n || !kv->arr_data) return false;
    const uint8_t *p = kv->arr_data + i * vtype_size(kv->arr_type);
    if (kv->arr_type == GGUF_FLOAT32) { float x; memcpy(&x, p, 4); *out = x; return true; }
    if (kv->arr_type == GGUF_FLOAT64) { memcpy(out, p, 8); return true; }
    int64_t v;
    if (!kv_gguf_arr_i64(kv, i, &v)) return false;
    *out = (double)v;
    return true;
}
