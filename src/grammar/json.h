/* A small JSON reader for the grammar module (JSON Schemas): RFC 8259 text to a
 * tree of nodes, strings decoded to UTF-8, numbers kept both as the text
 * written and as a double (converted without the C locale). The library links
 * no JSON library, so a static program needs nothing more. */
#ifndef KV_GRAMMAR_JSON_H
#define KV_GRAMMAR_JSON_H

#include <stdbool.h>
#include <stddef.h>

typedef enum kv_json_type {
    KV_JSON_NULL,
    KV_JSON_FALSE,
    KV_JSON_TRUE,
    KV_JSON_NUMBER,
    KV_JSON_STRING,
    KV_JSON_ARRAY,
    KV_JSON_OBJECT,
} kv_json_type;

typedef struct kv_json {
    kv_json_type type;
    char *key;          /* a member of an object: its name (UTF-8, NUL-terminated; may hold no NUL) */
    char *str;          /* a string (decoded) or a number (the text as written) */
    double num;         /* a number */
    struct kv_json *child, *next; /* an array's items or an object's members, in order */
} kv_json;

/* Parses text[0..len) (white space around the value allowed). NULL on malformed
 * text or out of memory (*oom set), with *err_at the byte offset of the error. */
kv_json *kv_json_parse(const char *text, size_t len, size_t *err_at, bool *oom);
void kv_json_free(kv_json *j);
/* An object's member by name (the first one), or NULL. */
const kv_json *kv_json_get(const kv_json *obj, const char *key);
int kv_json_count(const kv_json *j);
/* Compact JSON text of j (malloc'd), or NULL when out of memory. Numbers as written. */
char *kv_json_print(const kv_json *j);

#endif
