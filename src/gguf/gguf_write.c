/* GGUF writer (see gguf_write.h). Each key/value pair is kept serialized:
 * its key and the bytes that follow the key in the file (type tag, then the
 * value), so writing is a copy and the size of the header is known before
 * anything is written. */
#include "gguf_write.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/dtype.h"
#include "core/error.h"

typedef struct wkv {
    char *key;
    size_t key_len;
    uint8_t *val; /* type tag + value, as in the file */
    size_t val_len;
} wkv;

typedef struct wtensor {
    char *name;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    uint32_t type;
    uint64_t size;
    const void *data;
    gguf_fill_fn fill;
    void *user;
} wtensor;

struct gguf_writer {
    wkv *kv;
    size_t n_kv, cap_kv;
    wtensor *t;
    size_t n_t, cap_t;
    kvlm_status first; /* the first failure, KVLM_OK when none */
    char first_msg[sizeof(((kvlm_error *)0)->msg)];
};

/* Fails a call: fills err and remembers the first failure in w. */
KV_PRINTF(4, 5)
static kvlm_status wfail(gguf_writer *w, kvlm_error *err, kvlm_status code, const char *fmt, ...) {
    char msg[sizeof(((kvlm_error *)0)->msg)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (w && w->first == KVLM_OK) {
        w->first = code;
        snprintf(w->first_msg, sizeof w->first_msg, "%s", msg);
    }
    return kv_fail(err, code, "%s", msg);
}

kvlm_status kv_gguf_writer_new(gguf_writer **out, kvlm_error *err) {
    if (!out) return kv_fail(err, KVLM_ERR_INVALID_ARG, "gguf_write: out is NULL");
    *out = calloc(1, sizeof **out);
    if (!*out) return kv_fail(err, KVLM_ERR_NOMEM, "gguf_write: out of memory");
    return KVLM_OK;
}

void kv_gguf_writer_free(gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].val);
    }
    for (size_t i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->kv);
    free(w->t);
    free(w);
}

/* ------------------------------------------------------------ metadata */

static size_t vtype_size(gguf_vtype t) {
    switch (t) {
    case GGUF_UINT8: case GGUF_INT8: case GGUF_BOOL: return 1;
    case GGUF_UINT16: case GGUF_INT16: return 2;
    case GGUF_UINT32: case GGUF_INT32: case GGUF_FLOAT32: return 4;
    case GGUF_UINT64: case GGUF_INT64: case GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

static ssize_t find_kv(const gguf_writer *w, const char *key) {
    for (size_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->kv[i].key, key) == 0) return (ssize_t)i;
    return -1;
}

bool kv_gguf_writer_has(const gguf_writer *w, const char *key) { return w && key && find_kv(w, key) >= 0; }
uint64_t kv_gguf_writer_n_kv(const gguf_writer *w) { return w ? w->n_kv : 0; }

bool kv_gguf_writer_remove(gguf_writer *w, const char *key) {
    if (!w || !key) return false;
    ssize_t i = find_kv(w, key);
    if (i < 0) return false;
    free(w->kv[i].key);
    free(w->kv[i].val);
    memmove(&w->kv[i], &w->kv[i + 1], (w->n_kv - (size_t)i - 1) * sizeof *w->kv);
    w->n_kv--;
    return true;
}

static kvlm_status check_key(gguf_writer *w, const char *key, kvlm_error *err) {
    if (!w) return kv_fail(err, KVLM_ERR_INVALID_ARG, "gguf_write: writer is NULL");
    if (!key || !*key) return wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: empty metadata key");
    return KVLM_OK;
}

/* Takes ownership of val (val_len bytes: type tag + value) and stores it under
 * key, replacing (remove + append) an existing entry. */
static kvlm_status put(gguf_writer *w, const char *key, uint8_t *val, size_t val_len, kvlm_error *err) {
    kvlm_status st = check_key(w, key, err);
    if (st) {
        free(val);
        return st;
    }
    uint32_t tag;
    memcpy(&tag, val, 4);
    if (strcmp(key, "general.alignment") == 0) {
        uint32_t a = 0;
        if (tag == GGUF_UINT32) memcpy(&a, val + 4, 4);
        if (tag != GGUF_UINT32 || a == 0 || (a & (a - 1)) != 0) {
            free(val);
            return wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: general.alignment must be a u32 power of two");
        }
    }
    size_t klen = strlen(key);
    char *k = malloc(klen + 1);
    if (!k || (w->n_kv == w->cap_kv && w->cap_kv > SIZE_MAX / 2 / sizeof *w->kv)) {
        free(k);
        free(val);
        return wfail(w, err, KVLM_ERR_NOMEM, "gguf_write: out of memory for key '%s'", key);
    }
    if (w->n_kv == w->cap_kv) {
        size_t cap = w->cap_kv ? w->cap_kv * 2 : 16;
        wkv *nk = realloc(w->kv, cap * sizeof *nk);
        if (!nk) {
            free(k);
            free(val);
            return wfail(w, err, KVLM_ERR_NOMEM, "gguf_write: out of memory for key '%s'", key);
        }
        w->kv = nk;
        w->cap_kv = cap;
    }
    memcpy(k, key, klen + 1);
    kv_gguf_writer_remove(w, key);
    w->kv[w->n_kv++] = (wkv){k, klen, val, val_len};
    return KVLM_OK;
}

/* A scalar: tag + size bytes of v. */
static kvlm_status put_scalar(gguf_writer *w, const char *key, gguf_vtype t, const void *v, kvlm_error *err) {
    size_t n = vtype_size(t);
    uint8_t *val = malloc(4 + n);
    if (!val) return wfail(w, err, KVLM_ERR_NOMEM, "gguf_write: out of memory");
    uint32_t tag = (uint32_t)t;
    memcpy(val, &tag, 4);
    memcpy(val + 4, v, n);
    return put(w, key, val, 4 + n, err);
}

kvlm_status kv_gguf_writer_set_u8(gguf_writer *w, const char *key, uint8_t v, kvlm_error *err) {
    return put_scalar(w, key, GGUF_UINT8, &v, err);
}
kvlm_status kv_gguf_writer_set_i8(gguf_writer *w, const char *key, int8_t v, kvlm_error *err) {
    return put_scalar(w, key, GGUF_INT8, &v, err);
}
kvlm_status kv_gguf_writer_set_u16(gguf_writer *w, const char *key, uint16_t v, kvlm_error *err) {
    return put_scalar(w, key, GGUF_UINT16, &v, err);
}
kvlm_status kv_gguf_writer_set_i16(gguf_writer *w, const char *key, int16_t v, kvlm_error *err) {
    return put_scalar(w, key, GGUF_INT16, &v, err);
}
kvlm_status kv_gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v, kvlm_error *err) {
    return put_scalar(w, key, GGUF_UINT32, &v, err);
}
kvlm_status kv_gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v, kvlm_error *err) {
    return put_scalar(w, key, GGUF_INT32, &v, err);
}
kvlm_status kv_gguf_writer_set_u64(gguf_writer *w, const char *key, uint64_t v, kvlm_error *err) {
    return put_scalar(w, key, GGUF_UINT64, &v, err);
}
kvlm_status kv_gguf_writer_set_i64(gguf_writer *w, const char *key, int64_t v, kvlm_error *err) {
    return put_scalar(w, key, GGUF_INT64, &v, err);
}
kvlm_status kv_gguf_writer_set_f32(gguf_writer *w, const char *key, float v, kvlm_error *err) {
    return put_scalar(w, key, GGUF_FLOAT32, &v, err);
}
kvlm_status kv_gguf_writer_set_f64(gguf_writer *w, const char *key, double v, kvlm_error *err) {
    return put_scalar(w, key, GGUF_FLOAT64, &v, err);
}
kvlm_status kv_gguf_writer_set_bool(gguf_writer *w, const char *key, bool v, kvlm_error *err) {
    uint8_t b = v ? 1 : 0;
    return put_scalar(w, key, GGUF_BOOL, &b, err);
}

kvlm_status kv_gguf_writer_set_alignment(gguf_writer *w, uint32_t alignment, kvlm_error *err) {
    return kv_gguf_writer_set_u32(w, "general.alignment", alignment, err);
}

kvlm_status kv_gguf_writer_set_strn(gguf_writer *w, const char *key, const char *v, uint64_t len, kvlm_error *err) {
    kvlm_status st = check_key(w, key, err);
    if (st) return st;
    if (!v && len) return wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: '%s': NULL string", key);
    if (len > SIZE_MAX - 12) return wfail(w, err, KVLM_ERR_NOMEM, "gguf_write: '%s': string too long", key);
    uint8_t *val = malloc((size_t)len + 12);
    if (!val) return wfail(w, err, KVLM_ERR_NOMEM, "gguf_write: out of memory for '%s'", key);
    uint32_t tag = GGUF_STRING;
    memcpy(val, &tag, 4);
    memcpy(val + 4, &len, 8);
    if (len) memcpy(val + 12, v, (size_t)len);
    return put(w, key, val, (size_t)len + 12, err);
}

kvlm_status kv_gguf_writer_set_str(gguf_writer *w, const char *key, const char *v, kvlm_error *err) {
    if (!v) {
        kvlm_status st = check_key(w, key, err);
        return st ? st : wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: '%s': NULL string", key);
    }
    return kv_gguf_writer_set_strn(w, key, v, strlen(v), err);
}

/* array header: tag ARRAY, element type, count */
static void arr_head(uint8_t *val, gguf_vtype t, uint64_t n) {
    uint32_t tag = GGUF_ARRAY, et = (uint32_t)t;
    memcpy(val, &tag, 4);
    memcpy(val + 4, &et, 4);
    memcpy(val + 8, &n, 8);
}

kvlm_status kv_gguf_writer_set_arr(gguf_writer *w, const char *key, gguf_vtype type, const void *data, uint64_t n,
                                kvlm_error *err) {
    kvlm_status st = check_key(w, key, err);
    if (st) return st;
    size_t es = vtype_size(type);
    if (es == 0)
        return wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: '%s': arrays of type %d need another setter", key,
                     (int)type);
    if (!data && n) return wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: '%s': NULL array data", key);
    uint64_t bytes;
    if (!kv_mul_u64(n, es, &bytes) || bytes > SIZE_MAX - 16)
        return wfail(w, err, KVLM_ERR_NOMEM, "gguf_write: '%s': array of %llu elements is too large", key,
                     (unsigned long long)n);
    uint8_t *val = malloc((size_t)bytes + 16);
    if (!val) return wfail(w, err, KVLM_ERR_NOMEM, "gguf_write: out of memory for '%s'", key);
    arr_head(val, type, n);
    if (bytes) memcpy(val + 16, data, (size_t)bytes);
    if (type == GGUF_BOOL)
        for (uint64_t i = 0; i < n; i++) val[16 + i] = val[16 + i] ? 1 : 0;
    return put(w, key, val, (size_t)bytes + 16, err);
}

/* strings given either as NUL-terminated (cs) or as gguf_str (gs) */
static kvlm_status set_arr_strings(gguf_writer *w, const char *key, const char *const *cs, const gguf_str *gs,
                                   uint64_t n, kvlm_error *err) {
    kvlm_status st = check_key(w, key, err);
    if (st) return st;
    if (!cs && !gs && n) return wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: '%s': NULL array", key);
    uint64_t total = 16;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len;
        if (cs) {
            if (!cs[i]) return wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: '%s': string %llu is NULL", key,
                                     (unsigned long long)i);
            len = strlen(cs[i]);
        } else {
            if (!gs[i].data && gs[i].len)
                return wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: '%s': string %llu is NULL", key,
                             (unsigned long long)i);
            len = gs[i].len;
        }
        if (!kv_add_u64(total, 8, &total) || !kv_add_u64(total, len, &total) || total > SIZE_MAX)
            return wfail(w, err, KVLM_ERR_NOMEM, "gguf_write: '%s': string array too large", key);
    }
    uint8_t *val = malloc((size_t)total);
    if (!val) return wfail(w, err, KVLM_ERR_NOMEM, "gguf_write: out of memory for '%s'", key);
    arr_head(val, GGUF_STRING, n);
    size_t o = 16;
    for (uint64_t i = 0; i < n; i++) {
        const char *p = cs ? cs[i] : gs[i].data;
        uint64_t len = cs ? strlen(cs[i]) : gs[i].len;
        memcpy(val + o, &len, 8);
        o += 8;
        if (len) memcpy(val + o, p, (size_t)len);
        o += (size_t)len;
    }
    return put(w, key, val, (size_t)total, err);
}

kvlm_status kv_gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *strs, uint64_t n,
                                    kvlm_error *err) {
    return set_arr_strings(w, key, strs, NULL, n, err);
}

kvlm_status kv_gguf_writer_set_arr_gstr(gguf_writer *w, const char *key, const gguf_str *strs, uint64_t n,
                                     kvlm_error *err) {
    if (!strs && n) {
        kvlm_status st = check_key(w, key, err);
        return st ? st : wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: '%s': NULL array", key);
    }
    static const gguf_str none = {0, ""};
    return set_arr_strings(w, key, NULL, strs ? strs : &none, n, err);
}

kvlm_status kv_gguf_writer_set_kv(gguf_writer *w, const gguf_kv *kv, kvlm_error *err) {
    if (!kv) return check_key(w, NULL, err);
    const char *key = kv->key;
    switch (kv->type) {
    case GGUF_UINT8: return kv_gguf_writer_set_u8(w, key, (uint8_t)kv->v.u64, err);
    case GGUF_INT8: return kv_gguf_writer_set_i8(w, key, (int8_t)kv->v.i64, err);
    case GGUF_UINT16: return kv_gguf_writer_set_u16(w, key, (uint16_t)kv->v.u64, err);
    case GGUF_INT16: return kv_gguf_writer_set_i16(w, key, (int16_t)kv->v.i64, err);
    case GGUF_UINT32: return kv_gguf_writer_set_u32(w, key, (uint32_t)kv->v.u64, err);
    case GGUF_INT32: return kv_gguf_writer_set_i32(w, key, (int32_t)kv->v.i64, err);
    case GGUF_UINT64: return kv_gguf_writer_set_u64(w, key, kv->v.u64, err);
    case GGUF_INT64: return kv_gguf_writer_set_i64(w, key, kv->v.i64, err);
    case GGUF_FLOAT32: return kv_gguf_writer_set_f32(w, key, (float)kv->v.f64, err);
    case GGUF_FLOAT64: return kv_gguf_writer_set_f64(w, key, kv->v.f64, err);
    case GGUF_BOOL: return kv_gguf_writer_set_bool(w, key, kv->v.u64 != 0, err);
    case GGUF_STRING: return kv_gguf_writer_set_strn(w, key, kv->v.str.data, kv->v.str.len, err);
    case GGUF_ARRAY:
        if (kv->arr_type == GGUF_STRING) return kv_gguf_writer_set_arr_gstr(w, key, kv->arr_str, kv->arr_n, err);
        return kv_gguf_writer_set_arr(w, key, kv->arr_type, kv->arr_data, kv->arr_n, err);
    default: break;
    }
    kvlm_status st = check_key(w, key, err);
    return st ? st : wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: '%s': unknown value type %d", key, (int)kv->type);
}

/* ------------------------------------------------------------ tensors */

static kvlm_status add_tensor(gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                              const void *data, uint64_t size, bool check_size, gguf_fill_fn fill, void *user,
                              kvlm_error *err) {
    if (!w) return kv_fail(err, KVLM_ERR_INVALID_ARG, "gguf_write: writer is NULL");
    if (!name || !*name || strlen(name) > GGUF_WRITE_MAX_NAME)
        return wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: tensor name '%.80s' must have 1..%d bytes",
                     name ? name : "", GGUF_WRITE_MAX_NAME);
    for (size_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: duplicate tensor name '%s'", name);
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS || !ne)
        return wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: tensor '%s': %u dimensions (1..%d allowed)", name,
                     n_dims, GGUF_MAX_DIMS);
    const kv_dtype_info *ti = kv_dtype_get(type);
    if (!ti) return wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: tensor '%s': unknown type %u", name, type);
    uint64_t n = 1;
    for (uint32_t d = 0; d < n_dims; d++)
        if (ne[d] == 0 || ne[d] > (uint64_t)INT64_MAX || !kv_mul_u64(n, ne[d], &n) || n > (uint64_t)INT64_MAX)
            return wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: tensor '%s': bad dimension %u (%llu)", name, d,
                         (unsigned long long)ne[d]);
    if (ne[0] % (uint64_t)ti->block_size != 0)
        return wfail(w, err, KVLM_ERR_INVALID_ARG,
                     "gguf_write: tensor '%s': row length %llu is not a multiple of %s's block of %d", name,
                     (unsigned long long)ne[0], ti->name, ti->block_size);
    uint64_t bytes;
    if (!kv_dtype_tensor_bytes(type, ne[0], n, &bytes))
        return wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: tensor '%s': %llu elements do not make a %s tensor",
                     name, (unsigned long long)n, ti->name);
    if (check_size && size != bytes)
        return wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: tensor '%s': %llu bytes given, %s [%llu x %llu] takes %llu",
                     name, (unsigned long long)size, ti->name, (unsigned long long)ne[0],
                     (unsigned long long)(n / ne[0]), (unsigned long long)bytes);
    if (check_size && !data && bytes)
        return wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: tensor '%s': NULL data", name);
    if (!check_size && !fill)
        return wfail(w, err, KVLM_ERR_INVALID_ARG, "gguf_write: tensor '%s': NULL fill function", name);
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? w->cap_t * 2 : 32;
        wtensor *nt = cap > SIZE_MAX / sizeof *nt ? NULL : realloc(w->t, cap * sizeof *nt);
        if (!nt) return wfail(w, err, KVLM_ERR_NOMEM, "gguf_write: out of memory for tensor '%s'", name);
        w->t = nt;
        w->cap_t = cap;
    }
    size_t nl = strlen(name);
    char *nm = malloc(nl + 1);
    if (!nm) return wfail(w, err, KVLM_ERR_NOMEM, "gguf_write: out of memory for tensor '%s'", name);
    memcpy(nm, name, nl + 1);
    wtensor *t = &w->t[w->n_t++];
    memset(t, 0, sizeof *t);
    t->name = nm;
    t->n_dims = n_dims;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    t->type = type;
    t->size = bytes;
    t->data = data;
    t->fill = fill;
    t->user = user;
    return KVLM_OK;
}

kvlm_status kv_gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *ne,
                                   uint32_t type, const void *data, uint64_t size, kvlm_error *err) {
    return add_tensor(w, name, n_dims, ne, type, data, size, true, NULL, NULL, err);
}

kvlm_status kv_gguf_writer_add_tensor_fill(gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *ne,
                                        uint32_t type, gguf_fill_fn fill, void *user, kvlm_error *err) {
    return add_tensor(w, name, n_dims, ne, type, NULL, 0, false, fill, user, err);
}

uint64_t kv_gguf_writer_n_tensors(const gguf_writer *w) { return w ? w->n_t : 0; }

/* ------------------------------------------------------------ layout */

static uint32_t alignment_of(const gguf_writer *w) {
    ssize_t i = find_kv(w, "general.alignment");
    uint32_t a = GGUF_WRITE_DEFAULT_ALIGNMENT;
    if (i >= 0) memcpy(&a, w->kv[i].val + 4, 4); /* validated by put() */
    return a;
}

/* pad(x) = x rounded up to a multiple of a (a power of two) */
static bool pad_up(uint64_t x, uint32_t a, uint64_t *r) {
    uint64_t rem = x & (uint64_t)(a - 1);
    if (!rem) {
        *r = x;
        return true;
    }
    return kv_add_u64(x, a - rem, r);
}

/* Bytes before the data section (unpadded), the padded data section start and the file size. */
static bool layout(const gguf_writer *w, uint64_t *meta, uint64_t *data_start, uint64_t *file_size) {
    uint64_t n = 4 + 4 + 8 + 8;
    for (size_t i = 0; i < w->n_kv; i++)
        if (!kv_add_u64(n, 8 + (uint64_t)w->kv[i].key_len, &n) || !kv_add_u64(n, w->kv[i].val_len, &n)) return false;
    for (size_t i = 0; i < w->n_t; i++)
        if (!kv_add_u64(n, 8 + (uint64_t)strlen(w->t[i].name) + 4 + 8ull * w->t[i].n_dims + 4 + 8, &n)) return false;
    const uint32_t a = alignment_of(w);
    uint64_t ds, end;
    if (!pad_up(n, a, &ds)) return false;
    end = ds;
    for (size_t i = 0; i < w->n_t; i++) {
        uint64_t p;
        if (!pad_up(w->t[i].size, a, &p) || !kv_add_u64(end, p, &end)) return false;
    }
    *meta = n;
    *data_start = ds;
    *file_size = end;
    return true;
}

bool kv_gguf_writer_file_size(const gguf_writer *w, uint64_t *size) {
    uint64_t m, d;
    return w && size && layout(w, &m, &d, size);
}

/* ------------------------------------------------------------ output */

typedef struct bw {
    int fd;
    uint8_t *buf;
    size_t n, cap;
    int err; /* errno of the first failure, 0 when none */
} bw;

static void bw_flush(bw *b) {
    size_t o = 0;
    while (!b->err && o < b->n) {
        ssize_t r = write(b->fd, b->buf + o, b->n - o);
        if (r < 0) {
            if (errno == EINTR) continue;
            b->err = errno ? errno : EIO;
        } else if (r == 0) {
            b->err = EIO;
        } else {
            o += (size_t)r;
        }
    }
    b->n = 0;
}

static void bw_put(bw *b, const void *p, uint64_t n) {
    const uint8_t *s = p;
    while (n && !b->err) {
        if (b->n == b->cap) bw_flush(b);
        size_t k = b->cap - b->n;
        if (k > n) k = (size_t)n;
        memcpy(b->buf + b->n, s, k);
        b->n += k;
        s += k;
        n -= k;
    }
}

static void bw_zeros(bw *b, uint64_t n) {
    while (n && !b->err) {
        if (b->n == b->cap) bw_flush(b);
        size_t k = b->cap - b->n;
        if (k > n) k = (size_t)n;
        memset(b->buf + b->n, 0, k);
        b->n += k;
        n -= k;
    }
}

static void bw_u32(bw *b, uint32_t v) { bw_put(b, &v, 4); }
static void bw_u64(bw *b, uint64_t v) { bw_put(b, &v, 8); }

/* Creates path.tmp.<pid>.<k> exclusively (mode 0666 less the umask). */
static int open_temp(const char *path, char **tmp_out) {
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 48);
    if (!tmp) {
        errno = ENOMEM;
        return -1;
    }
    for (unsigned k = 0; k < 1000; k++) {
        snprintf(tmp, pl + 48, "%s.tmp.%ld.%u", path, (long)getpid(), k);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0) {
            *tmp_out = tmp;
            return fd;
        }
        if (errno != EEXIST) break;
    }
    int e = errno;
    free(tmp);
    errno = e;
    return -1;
}

/* fsync of the folder holding path, so the rename is durable (best effort). */
static void sync_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir;
    if (!slash) {
        dir = malloc(2);
        if (dir) memcpy(dir, ".", 2);
    } else {
        size_t n = slash == path ? 1 : (size_t)(slash - path);
        dir = malloc(n + 1);
        if (dir) {
            memcpy(dir, path, n);
            dir[n] = '\0';
        }
    }
    if (!dir) return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dir);
}

kvlm_status kv_gguf_writer_write(gguf_writer *w, const char *path, kvlm_error *err) {
    if (!w || !path || !*path) return kv_fail(err, KVLM_ERR_INVALID_ARG, "gguf_write: NULL writer or path");
    if (w->first != KVLM_OK) return kv_fail(err, w->first, "%s", w->first_msg);
    uint64_t meta, data_start, file_size;
    if (!layout(w, &meta, &data_start, &file_size))
        return kv_fail(err, KVLM_ERR_NOMEM, "gguf_write: file size overflows");
    const uint32_t align = alignment_of(w);

    /* one buffer for the fill functions, as large as the largest such tensor */
    uint64_t fill_max = 0;
    for (size_t i = 0; i < w->n_t; i++)
        if (w->t[i].fill && w->t[i].size > fill_max) fill_max = w->t[i].size;
    if (fill_max > SIZE_MAX) return kv_fail(err, KVLM_ERR_NOMEM, "gguf_write: a tensor is too large for memory");
    uint8_t *fillbuf = NULL;
    if (fill_max) {
        fillbuf = malloc((size_t)fill_max);
        if (!fillbuf)
            return kv_fail(err, KVLM_ERR_NOMEM, "gguf_write: out of memory for a %llu-byte tensor",
                           (unsigned long long)fill_max);
    }
    bw b = {-1, NULL, 0, (size_t)1 << 20, 0};
    b.buf = malloc(b.cap);
    if (!b.buf) {
        free(fillbuf);
        return kv_fail(err, KVLM_ERR_NOMEM, "gguf_write: out of memory");
    }
    char *tmp = NULL;
    b.fd = open_temp(path, &tmp);
    if (b.fd < 0) {
        int e = errno;
        free(fillbuf);
        free(b.buf);
        return kv_fail(err, KVLM_ERR_IO, "gguf_write: cannot create a temporary file beside '%s': %s", path,
                       strerror(e));
    }

    kvlm_status st = KVLM_OK;
    /* header */
    bw_put(&b, "GGUF", 4);
    bw_u32(&b, 3);
    bw_u64(&b, (uint64_t)w->n_t);
    bw_u64(&b, (uint64_t)w->n_kv);
    for (size_t i = 0; i < w->n_kv; i++) {
        bw_u64(&b, (uint64_t)w->kv[i].key_len);
        bw_put(&b, w->kv[i].key, w->kv[i].key_len);
        bw_put(&b, w->kv[i].val, w->kv[i].val_len);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        size_t nl = strlen(t->name);
        bw_u64(&b, (uint64_t)nl);
        bw_put(&b, t->name, nl);
        bw_u32(&b, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) bw_u64(&b, t->ne[d]);
        bw_u32(&b, t->type);
        bw_u64(&b, off);
        uint64_t p;
        pad_up(t->size, align, &p); /* cannot overflow: layout() succeeded */
        off += p;
    }
    bw_zeros(&b, data_start - meta);
    /* data */
    for (size_t i = 0; i < w->n_t && !b.err && !st; i++) {
        const wtensor *t = &w->t[i];
        const void *src = t->data;
        if (t->fill) {
            memset(fillbuf, 0, (size_t)t->size);
            st = t->fill(t->user, t->name, fillbuf, t->size, err);
            if (st) break;
            src = fillbuf;
        }
        bw_put(&b, src, t->size);
        uint64_t p;
        pad_up(t->size, align, &p);
        bw_zeros(&b, p - t->size);
    }
    if (!st) bw_flush(&b);
    if (!st && !b.err && fsync(b.fd) != 0) b.err = errno ? errno : EIO;
    if (close(b.fd) != 0 && !b.err && !st) b.err = errno ? errno : EIO;
    if (!st && b.err) st = kv_fail(err, KVLM_ERR_IO, "gguf_write: writing '%s' failed: %s", tmp, strerror(b.err));
    if (!st && rename(tmp, path) != 0)
        st = kv_fail(err, KVLM_ERR_IO, "gguf_write: cannot rename '%s' to '%s': %s", tmp, path, strerror(errno));
    if (st)
        unlink(tmp);
    else
        sync_dir(path);
    free(tmp);
    free(fillbuf);
    free(b.buf);
    return st;
}
