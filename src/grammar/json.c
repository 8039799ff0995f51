/* grammar/json.h: a recursive-descent JSON reader and a compact printer. */
#include "grammar/json.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"

#define JSON_MAX_DEPTH 512

typedef struct jp {
    const char *s;
    size_t i, n;
    bool oom, bad;
    int depth;
} jp;

static void ws(jp *p) {
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r')) p->i++;
}

static kv_json *node(jp *p, kv_json_type t) {
    kv_json *j = calloc(1, sizeof *j);
    if (!j) p->oom = true;
    else j->type = t;
    return j;
}

static int hex4(jp *p) {
    if (p->n - p->i < 4) return -1;
    int v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p->s[p->i + (size_t)k];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    p->i += 4;
    return v;
}

static void put_utf8(kv_buf *b, uint32_t c) {
    char t[4];
    size_t n;
    if (c < 0x80) {
        t[0] = (char)c;
        n = 1;
    } else if (c < 0x800) {
        t[0] = (char)(0xC0 | c >> 6);
        t[1] = (char)(0x80 | (c & 0x3F));
        n = 2;
    } else if (c < 0x10000) {
        t[0] = (char)(0xE0 | c >> 12);
        t[1] = (char)(0x80 | (c >> 6 & 0x3F));
        t[2] = (char)(0x80 | (c & 0x3F));
        n = 3;
    } else {
        t[0] = (char)(0xF0 | c >> 18);
        t[1] = (char)(0x80 | (c >> 12 & 0x3F));
        t[2] = (char)(0x80 | (c >> 6 & 0x3F));
        t[3] = (char)(0x80 | (c & 0x3F));
        n = 4;
    }
    kv_buf_add(b, t, n);
}

/* a string at p->i (the opening quote), decoded; NULL on error */
static char *string(jp *p) {
    kv_buf b = {0};
    p->i++;
    for (;;) {
        if (p->i >= p->n) goto bad;
        unsigned char c = (unsigned char)p->s[p->i];
        if (c == '"') {
            p->i++;
            break;
        }
        if (c < 0x20) goto bad;
        if (c != '\\') {
            kv_buf_add(&b, p->s + p->i, 1);
            p->i++;
            continue;
        }
        p->i++;
        if (p->i >= p->n) goto bad;
        char e = p->s[p->i++];
        const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
        const char *at = strchr(from, e);
        if (e && at) {
            kv_buf_add(&b, to + (at - from), 1);
            continue;
        }
        if (e != 'u') {
            p->i--;
            goto bad;
        }
        int u = hex4(p);
        if (u < 0) goto bad;
        uint32_t cp = (uint32_t)u;
        if (cp >= 0xD800 && cp <= 0xDBFF) { /* a pair */
            if (p->n - p->i < 6 || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u') goto bad;
            p->i += 2;
            int lo = hex4(p);
            if (lo < 0xDC00 || lo > 0xDFFF) goto bad;
            cp = 0x10000 + ((cp - 0xD800) << 10) + ((uint32_t)lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            goto bad;
        }
        put_utf8(&b, cp);
    }
    if (!kv_buf_add_z(&b, "", 0)) {
        free(b.data);
        p->oom = true;
        return NULL;
    }
    return b.data;
bad:
    free(b.data);
    p->bad = true;
    return NULL;
}

static bool digits(jp *p) {
    size_t at = p->i;
    while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') p->i++;
    return p->i > at;
}

/* the value of number text t (valid JSON), without strtod (locale) */
static double number_value(const char *t) {
    double v = 0, sign = 1;
    if (*t == '-') {
        sign = -1;
        t++;
    }
    for (; *t >= '0' && *t <= '9'; t++) v = v * 10 + (*t - '0');
    int scale = 0;
    if (*t == '.')
        for (t++; *t >= '0' && *t <= '9'; t++) {
            v = v * 10 + (*t - '0');
            scale--;
        }
    if (*t == 'e' || *t == 'E') {
        t++;
        int es = 1, e = 0;
        if (*t == '+' || *t == '-') es = *t++ == '-' ? -1 : 1;
        for (; *t >= '0' && *t <= '9'; t++)
            if (e < 100000) e = e * 10 + (*t - '0');
        scale += es * e;
    }
    if (scale < -400) return 0;
    if (scale > 400) return sign * HUGE_VAL;
    return sign * (scale < 0 ? v / pow(10, -scale) : v * pow(10, scale));
}

static kv_json *value(jp *p);

static kv_json *value(jp *p) {
    ws(p);
    if (p->i >= p->n) {
        p->bad = true;
        return NULL;
    }
    char c = p->s[p->i];
    static const struct {
        const char *word;
        kv_json_type t;
    } words[] = {{"null", KV_JSON_NULL}, {"false", KV_JSON_FALSE}, {"true", KV_JSON_TRUE}};
    for (size_t k = 0; k < 3; k++) {
        size_t L = strlen(words[k].word);
        if (c == words[k].word[0]) {
            if (p->n - p->i < L || memcmp(p->s + p->i, words[k].word, L)) {
                p->bad = true;
                return NULL;
            }
            p->i += L;
            return node(p, words[k].t);
        }
    }
    if (c == '"') {
        char *s = string(p);
        if (!s) return NULL;
        kv_json *j = node(p, KV_JSON_STRING);
        if (!j) free(s);
        else j->str = s;
        return j;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        size_t at = p->i;
        if (c == '-') p->i++;
        if (p->i < p->n && p->s[p->i] == '0') p->i++;
        else if (!digits(p)) goto badnum;
        if (p->i < p->n && p->s[p->i] == '.') {
            p->i++;
            if (!digits(p)) goto badnum;
        }
        if (p->i < p->n && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
            p->i++;
            if (p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-')) p->i++;
            if (!digits(p)) goto badnum;
        }
        kv_json *j = node(p, KV_JSON_NUMBER);
        if (!j) return NULL;
        if (!(j->str = malloc(p->i - at + 1))) {
            p->oom = true;
            free(j);
            return NULL;
        }
        memcpy(j->str, p->s + at, p->i - at);
        j->str[p->i - at] = 0;
        j->num = number_value(j->str);
        return j;
    badnum:
        p->bad = true;
        return NULL;
    }
    if (c != '[' && c != '{') {
        p->bad = true;
        return NULL;
    }
    if (++p->depth > JSON_MAX_DEPTH) {
        p->bad = true;
        return NULL;
    }
    const bool obj = c == '{';
    kv_json *j = node(p, obj ? KV_JSON_OBJECT : KV_JSON_ARRAY);
    if (!j) return NULL;
    p->i++;
    ws(p);
    kv_json **tail = &j->child;
    if (p->i < p->n && p->s[p->i] == (obj ? '}' : ']')) {
        p->i++;
        p->depth--;
        return j;
    }
    for (;;) {
        char *key = NULL;
        if (obj) {
            ws(p);
            if (p->i >= p->n || p->s[p->i] != '"') {
                p->bad = true;
                break;
            }
            if (!(key = string(p))) break;
            ws(p);
            if (p->i >= p->n || p->s[p->i] != ':') {
                free(key);
                p->bad = true;
                break;
            }
            p->i++;
        }
        kv_json *v = value(p);
        if (!v) {
            free(key);
            break;
        }
        v->key = key;
        *tail = v;
        tail = &v->next;
        ws(p);
        if (p->i < p->n && p->s[p->i] == ',') {
            p->i++;
            continue;
        }
        if (p->i < p->n && p->s[p->i] == (obj ? '}' : ']')) {
            p->i++;
            p->depth--;
            return j;
        }
        p->bad = true;
        break;
    }
    kv_json_free(j);
    return NULL;
}

kv_json *kv_json_parse(const char *text, size_t len, size_t *err_at, bool *oom) {
    jp p = {text, 0, len, false, false, 0};
    kv_json *j = value(&p);
    if (j) {
        ws(&p);
        if (p.i < p.n) {
            kv_json_free(j);
            j = NULL;
        }
    }
    if (err_at) *err_at = p.i;
    if (oom) *oom = p.oom;
    return j;
}

void kv_json_free(kv_json *j) {
    while (j) {
        kv_json *next = j->next;
        kv_json_free(j->child);
        free(j->key);
        free(j->str);
        free(j);
        j = next;
    }
}

const kv_json *kv_json_get(const kv_json *obj, const char *key) {
    if (!obj || obj->type != KV_JSON_OBJECT) return NULL;
    for (const kv_json *m = obj->child; m; m = m->next)
        if (!strcmp(m->key, key)) return m;
    return NULL;
}

int kv_json_count(const kv_json *j) {
    int n = 0;
    for (const kv_json *m = j ? j->child : NULL; m; m = m->next) n++;
    return n;
}

static void print_string(kv_buf *b, const char *s) {
    kv_buf_add(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        const char *e = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t"
                      : c == '\b' ? "\\b" : c == '\f' ? "\\f" : NULL;
        if (e) {
            kv_buf_add(b, e, 2);
        } else if (c < 0x20) {
            char t[8] = "\\u00";
            t[4] = "0123456789abcdef"[c >> 4];
            t[5] = "0123456789abcdef"[c & 15];
            kv_buf_add(b, t, 6);
        } else {
            kv_buf_add(b, s, 1);
        }
    }
    kv_buf_add(b, "\"", 1);
}

static void print(kv_buf *b, const kv_json *j) {
    switch (j->type) {
    case KV_JSON_NULL: kv_buf_add(b, "null", 4); break;
    case KV_JSON_FALSE: kv_buf_add(b, "false", 5); break;
    case KV_JSON_TRUE: kv_buf_add(b, "true", 4); break;
    case KV_JSON_NUMBER: kv_buf_add(b, j->str, strlen(j->str)); break;
    case KV_JSON_STRING: print_string(b, j->str); break;
    case KV_JSON_ARRAY:
    case KV_JSON_OBJECT: {
        const bool obj = j->type == KV_JSON_OBJECT;
        kv_buf_add(b, obj ? "{" : "[", 1);
        for (const kv_json *m = j->child; m; m = m->next) {
            if (m != j->child) kv_buf_add(b, ",", 1);
            if (obj) {
                print_string(b, m->key);
                kv_buf_add(b, ":", 1);
            }
            print(b, m);
        }
        kv_buf_add(b, obj ? "}" : "]", 1);
        break;
    }
    }
}

char *kv_json_print(const kv_json *j) {
    kv_buf b = {0};
    print(&b, j);
    if (!kv_buf_add_z(&b, "", 0) || b.oom) {
        free(b.data);
        return NULL;
    }
    return b.data;
}
