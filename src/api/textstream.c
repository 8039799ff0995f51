/* Streaming text: UTF-8 hold-back and sanitizing, stop strings across token boundaries. */
#include "textstream.h"

#include <stdlib.h>
#include <string.h>

#include "core/utf8.h"

/* Whether s[0..n) is a complete, valid sequence (overlongs and surrogates excluded). */
static bool utf8_ok(const unsigned char *s, int n) {
    for (int i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80) return false;
    if (n == 3 && s[0] == 0xe0 && s[1] < 0xa0) return false;
    if (n == 3 && s[0] == 0xed && s[1] >= 0xa0) return false;
    if (n == 4 && s[0] == 0xf0 && s[1] < 0x90) return false;
    if (n == 4 && s[0] == 0xf4 && s[1] >= 0x90) return false;
    return true;
}

/* Bytes at the end of s[0..n) that start a sequence still waiting for continuation bytes. */
size_t kv_utf8_incomplete_tail(const char *s, size_t n) {
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        unsigned char c = (unsigned char)s[n - k];
        if ((c & 0xc0) == 0x80) continue;
        int len = (int)kv_utf8_lead_len(c);
        if (len > (int)k) {
            /* the bytes so far must be valid continuations */
            for (size_t i = n - k + 1; i < n; i++)
                if (((unsigned char)s[i] & 0xc0) != 0x80) return 0;
            return k;
        }
        return 0;
    }
    return 0;
}

/* Appends s[0..n) to out with every invalid sequence replaced by U+FFFD. */
bool kv_utf8_sanitize(kv_buf *out, const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        const unsigned char *u = (const unsigned char *)s + i;
        int len = (int)kv_utf8_lead_len(u[0]);
        if (len > 0 && i + (size_t)len <= n && utf8_ok(u, len)) {
            if (!kv_buf_add_z(out, s + i, (size_t)len)) return false;
            i += (size_t)len;
        } else {
            /* one U+FFFD per maximal subpart: a lead byte and the continuation bytes that follow it */
            size_t k = 1;
            while (len > 1 && k < (size_t)len && i + k < n && (u[k] & 0xc0) == 0x80) k++;
            if (!kv_buf_add_z(out, "\xef\xbf\xbd", 3)) return false;
            i += k;
        }
    }
    return true;
}

/* Longest suffix of s[0..n) that is a proper prefix of some stop string. */
static size_t stop_prefix_tail(const kv_stream *st, const char *s, size_t n) {
    size_t best = 0;
    for (int32_t i = 0; i < st->n_stop; i++) {
        size_t ls = strlen(st->stop[i]);
        for (size_t k = ls - 1 < n ? ls - 1 : n; k > best; k--)
            if (memcmp(s + n - k, st->stop[i], k) == 0) {
                best = k;
                break;
            }
    }
    return best;
}

int kv_stream_push(kv_stream *st, const char *piece, size_t n, bool final) {
    st->chunk.n = 0;
    if (st->chunk.data) st->chunk.data[0] = '\0';
    if (n && !kv_buf_add_z(&st->pending, piece, n)) return -1;
    const char *p = st->pending.data ? st->pending.data : "";
    size_t pn = st->pending.n;
    /* earliest stop string occurrence */
    size_t at = (size_t)-1;
    for (int32_t i = 0; i < st->n_stop; i++) {
        size_t ls = strlen(st->stop[i]);
        if (ls == 0 || ls > pn) continue;
        for (size_t j = 0; j + ls <= pn && j < at; j++)
            if (memcmp(p + j, st->stop[i], ls) == 0) {
                at = j;
                break;
            }
    }
    size_t emit;
    int stopped = 0;
    if (at != (size_t)-1) {
        emit = at;
        stopped = 1;
    } else if (final) {
        emit = pn;
    } else {
        emit = pn - stop_prefix_tail(st, p, pn);
        emit -= kv_utf8_incomplete_tail(p, emit);
    }
    if (!kv_utf8_sanitize(&st->chunk, p, emit)) return -1;
    if (st->chunk.n && !kv_buf_add_z(&st->emitted, st->chunk.data, st->chunk.n)) return -1;
    if (pn > emit) memmove(st->pending.data, st->pending.data + emit, pn - emit);
    st->pending.n = pn - emit;
    return stopped;
}

