/* Streaming text for generation: token bytes go in, text that is valid UTF-8
 * and cannot be the start of a stop string comes out. */
#ifndef KV_TEXTSTREAM_H
#define KV_TEXTSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"


typedef struct kv_stream {
    kv_buf pending;   /* decoded, not yet emitted */
    kv_buf emitted;   /* everything emitted so far */
    kv_buf chunk;     /* what the last push emitted */
    const char *const *stop;
    int32_t n_stop;
} kv_stream;

/* The three buffers are C strings (kv_buf_add_z) once written.
 * Adds a token's bytes and fills st->chunk with what can be emitted now
 * (final: everything left, an incomplete character becoming U+FFFD).
 * Returns 1 when a stop string matched (the text before it was emitted and
 * the rest dropped from view), 0 otherwise, -1 when out of memory. */
int kv_stream_push(kv_stream *st, const char *piece, size_t n, bool final);

/* Bytes at the end of s[0..n) that start a not yet complete UTF-8 sequence. */
size_t kv_utf8_incomplete_tail(const char *s, size_t n);
/* Appends s[0..n) with every invalid sequence replaced by U+FFFD. */
bool kv_utf8_sanitize(kv_buf *out, const char *s, size_t n);

#endif
