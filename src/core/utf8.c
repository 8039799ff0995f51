/* UTF-8 the lenient way (llama.cpp's rules), see utf8.h. */
#include "core/utf8.h"

size_t kv_utf8_len(unsigned char lead) {
    static const uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[lead >> 4];
}

uint32_t kv_utf8_decode(const char *s, size_t n, size_t *off) {
    const unsigned char *u = (const unsigned char *)s;
    size_t o = *off;
    uint32_t c = u[o];
    if (!(c & 0x80)) {
        *off = o + 1;
        return c;
    }
    if (!(c & 0x40)) goto bad; /* a lone continuation byte */
    if (!(c & 0x20)) {
        if (o + 1 >= n || (u[o + 1] & 0xC0) != 0x80) goto bad;
        *off = o + 2;
        return ((c & 0x1F) << 6) | (u[o + 1] & 0x3F);
    }
    if (!(c & 0x10)) {
        if (o + 2 >= n || (u[o + 1] & 0xC0) != 0x80 || (u[o + 2] & 0xC0) != 0x80) goto bad;
        *off = o + 3;
        return ((c & 0x0F) << 12) | ((uint32_t)(u[o + 1] & 0x3F) << 6) | (u[o + 2] & 0x3F);
    }
    if (!(c & 0x08)) {
        if (o + 3 >= n || (u[o + 1] & 0xC0) != 0x80 || (u[o + 2] & 0xC0) != 0x80 ||
            (u[o + 3] & 0xC0) != 0x80)
            goto bad;
        *off = o + 4;
        return ((c & 0x07) << 18) | ((uint32_t)(u[o + 1] & 0x3F) << 12) |
               ((uint32_t)(u[o + 2] & 0x3F) << 6) | (u[o + 3] & 0x3F);
    }
bad:
    *off = o + 1;
    return 0xFFFD;
}

size_t kv_utf8_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp <= 0x7F) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp <= 0x7FF) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp <= 0xFFFF) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | ((cp >> 18) & 0x07));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}
