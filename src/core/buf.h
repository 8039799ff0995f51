/* A growable byte buffer, the one the library's modules share (tokenizer
 * scratch and piece pools, session file images, streamed and chat text). Out of memory, or a size
 * that would overflow, sets oom and makes every later call fail, so a writer
 * can append a run of pieces and check once at the end. */
#ifndef KV_CORE_BUF_H
#define KV_CORE_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct kv_buf {
    char *data;
    size_t n, cap;
    bool oom;
} kv_buf;

/* Room for `extra` more bytes (capacity doubles from 256); false once oom. */
static inline bool kv_buf_reserve(kv_buf *b, size_t extra) {
    if (b->oom) return false;
    if (extra > SIZE_MAX - b->n) {
        b->oom = true;
        return false;
    }
    size_t need = b->n + extra;
    if (need <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    char *d = (char *)realloc(b->data, cap);
    if (!d) {
        b->oom = true;
        return false;
    }
    b->data = d;
    b->cap = cap;
    return true;
}

/* Appends p[0..n); false (nothing appended) once oom. */
static inline bool kv_buf_add(kv_buf *b, const void *p, size_t n) {
    if (!kv_buf_reserve(b, n)) return false;
    if (n) memcpy(b->data + b->n, p, n);
    b->n += n;
    return true;
}

/* Appends p[0..n) and keeps a NUL after the bytes (not counted in n), so
 * data is a C string; false (nothing appended) once oom. */
static inline bool kv_buf_add_z(kv_buf *b, const void *p, size_t n) {
    if (n == SIZE_MAX || !kv_buf_reserve(b, n + 1)) {
        b->oom = true;
        return false;
    }
    if (n) memcpy(b->data + b->n, p, n);
    b->n += n;
    b->data[b->n] = '\0';
    return true;
}

#endif
