/* UTF-8 helpers shared by the tokenizer and the text stream. */
#ifndef KV_CORE_UTF8_H
#define KV_CORE_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Length of the sequence a byte starts, by its high nibble (llama.cpp's lenient rule:
 * 1 for ASCII and for a continuation byte, 2 for 0xC0-0xDF, 3 for 0xE0-0xEF, 4 for
 * 0xF0-0xFF); never 0, so a scan always advances. kv_utf8_lead_len is the strict form. */
size_t kv_utf8_len(unsigned char lead);
/* Length of the sequence a valid lead byte starts (1-4), 0 for a byte that cannot start
 * one (a continuation byte, 0xC0, 0xC1, 0xF5-0xFF). */
static inline size_t kv_utf8_lead_len(unsigned char lead) {
    return lead < 0x80 ? 1 : lead < 0xC2 || lead > 0xF4 ? 0 : kv_utf8_len(lead);
}
/* Decodes one codepoint at s[*off] (*off < n) the lenient way; invalid
 * sequences give 0xFFFD and advance one byte. */
uint32_t kv_utf8_decode(const char *s, size_t n, size_t *off);
/* Encodes cp (<= 0x10FFFF) into out (4 bytes), returns the length. */
size_t kv_utf8_encode(uint32_t cp, char *out);

#endif
