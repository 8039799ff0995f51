/* GGUF reader: maps a file and validates every count, length and offset
 * before anything is used. Strings point into the mapping (not NUL-terminated);
 * keys and tensor names are copied NUL-terminated. */
#ifndef KV_GGUF_H
#define KV_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvlm.h"

typedef enum gguf_vtype {
    GGUF_UINT8 = 0, GGUF_INT8 = 1, GGUF_UINT16 = 2, GGUF_INT16 = 3,
    GGUF_UINT32 = 4, GGUF_INT32 = 5, GGUF_FLOAT32 = 6, GGUF_BOOL = 7,
    GGUF_STRING = 8, GGUF_ARRAY = 9, GGUF_UINT64 = 10, GGUF_INT64 = 11,
    GGUF_FLOAT64 = 12, GGUF_VTYPE_COUNT = 13,
} gguf_vtype;

typedef struct gguf_str {
    uint64_t len;
    const char *data;
} gguf_str;

typedef struct gguf_kv {
    const char *key;    /* NUL-terminated copy */
    gguf_vtype type;
    union {
        uint64_t u64;   /* every unsigned integer type and bool */
        int64_t i64;    /* every signed integer type */
        double f64;     /* FLOAT32 and FLOAT64 */
        gguf_str str;
    } v;
    /* arrays */
    gguf_vtype arr_type;
    uint64_t arr_n;
    const uint8_t *arr_data;  /* packed elements in the file (non-string) */
    gguf_str *arr_str;        /* string arrays: one entry per element */
} gguf_kv;

#define GGUF_MAX_DIMS 4

typedef struct gguf_tensor {
    const char *name;   /* NUL-terminated copy */
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the row length; unused dims are 1 */
    uint32_t type;      /* kv_dtype */
    uint64_t offset;    /* relative to the data section */
    uint64_t n_elements;
    uint64_t n_bytes;
    const void *data;   /* inside the mapping */
} gguf_tensor;

typedef struct gguf_ctx {
    uint32_t version;
    uint64_t n_kv;
    gguf_kv *kv;
    uint64_t n_tensors;
    gguf_tensor *tensors;
    uint32_t alignment;
    uint64_t data_offset;
    const uint8_t *base;  /* start of the file's bytes */
    size_t size;
    /* ownership */
    void *map;
    size_t map_size;
    char *names;          /* pool of NUL-terminated keys and names */
} gguf_ctx;

/* Opens and validates path through mmap. */
kvlm_status kv_gguf_open(const char *path, gguf_ctx **out, kvlm_error *err);
/* Same over a caller-owned buffer that must outlive the context. */
kvlm_status kv_gguf_open_buffer(const void *buf, size_t size, gguf_ctx **out, kvlm_error *err);
void kv_gguf_close(gguf_ctx *g);

const gguf_kv *kv_gguf_find(const gguf_ctx *g, const char *key);
const gguf_tensor *kv_gguf_find_tensor(const gguf_ctx *g, const char *name);
const char *kv_gguf_vtype_name(gguf_vtype t);

/* Typed getters: false when the key is missing or does not convert exactly
 * (an integer of any width that fits; a float from FLOAT32/FLOAT64). */
bool kv_gguf_get_u32(const gguf_ctx *g, const char *key, uint32_t *out);
bool kv_gguf_get_i32(const gguf_ctx *g, const char *key, int32_t *out);
bool kv_gguf_get_f32(const gguf_ctx *g, const char *key, float *out);
bool kv_gguf_get_bool(const gguf_ctx *g, const char *key, bool *out);
bool kv_gguf_get_str(const gguf_ctx *g, const char *key, gguf_str *out);
/* true when s equals the NUL-terminated c */
bool kv_gguf_str_eq(gguf_str s, const char *c);
/* Element i of a numeric array as double/int64; false if out of range. */
bool kv_gguf_arr_f64(const gguf_kv *kv, uint64_t i, double *out);
bool kv_gguf_arr_i64(const gguf_kv *kv, uint64_t i, int64_t *out);

#endif
