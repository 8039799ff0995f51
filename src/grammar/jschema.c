/* JSON Schema to GBNF, following the rules of llama.cpp's
 * common/json-schema-to-grammar (the same primitive rules, the same object
 * layout: required properties first in the order of "properties", then the
 * optional ones in that order, each at most once), with the differences
 * docs/GRAMMAR.md lists ({} is any value, not any object; string escapes and
 * property-name exclusions are exact; patterns are converted by a regex
 * parser; integer bounds; unsupported keywords are errors).
 *
 * The converter keeps every string it makes in a pool freed at the end, and
 * the first error it meets (later steps do nothing once one is set). The schema is read
 * with grammar/json.h. */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/error.h"
#include "grammar/grammar.h"
#include "grammar/json.h"

#define JS_MAX_DEPTH 64
#define JS_MAX_REPEAT 2000 /* the GBNF parser's limit for a count */

#define J_IS_STRING(j) ((j) && (j)->type == KV_JSON_STRING)
#define J_IS_NUMBER(j) ((j) && (j)->type == KV_JSON_NUMBER)
#define J_IS_OBJECT(j) ((j) && (j)->type == KV_JSON_OBJECT)
#define J_IS_ARRAY(j) ((j) && (j)->type == KV_JSON_ARRAY)
#define J_IS_TRUE(j) ((j) && (j)->type == KV_JSON_TRUE)
#define J_IS_FALSE(j) ((j) && (j)->type == KV_JSON_FALSE)
#define J_IS_BOOL(j) (J_IS_TRUE(j) || J_IS_FALSE(j))

typedef struct js_rule {
    char *name, *body; /* body NULL: reserved for a $ref being resolved */
} js_rule;

typedef struct js_ref {
    const char *ref, *name;
} js_ref;

typedef struct jconv {
    js_rule *rules;
    size_t n_rules, cap_rules;
    char **pool;
    size_t n_pool, cap_pool;
    js_ref *refs;
    size_t n_refs, cap_refs;
    const kv_json *root;
    int depth;
    kvlm_status st;
    kvlm_error *err;
} jconv;

/* ------------------------------------------------------------ strings */

static void js_oom(jconv *c) {
    if (!c->st) c->st = kv_fail(c->err, KVLM_ERR_NOMEM, "json schema: out of memory");
}

static bool js_grow(jconv *c, void **p, size_t *cap, size_t n, size_t size) {
    if (n < *cap) return true;
    size_t nc = *cap ? *cap * 2 : 16;
    void *q = realloc(*p, nc * size);
    if (!q) {
        js_oom(c);
        return false;
    }
    *p = q;
    *cap = nc;
    return true;
}

/* keeps s (malloc'd) in the pool; "" when out of memory */
static const char *js_keep(jconv *c, char *s) {
    if (!s || !js_grow(c, (void **)&c->pool, &c->cap_pool, c->n_pool, sizeof *c->pool)) {
        free(s);
        js_oom(c);
        return "";
    }
    c->pool[c->n_pool++] = s;
    return s;
}

static const char *js_fmt(jconv *c, const char *fmt, ...) KV_PRINTF(2, 3);
static const char *js_fmt(jconv *c, const char *fmt, ...) {
    if (c->st) return "";
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        js_oom(c);
        return "";
    }
    char *s = malloc((size_t)n + 1);
    if (s) {
        va_start(ap, fmt);
        vsnprintf(s, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    return js_keep(c, s);
}

/* the buffer's text, kept in the pool (the buffer is freed) */
static const char *js_take(jconv *c, kv_buf *b) {
    if (b->oom || !kv_buf_add_z(b, "", 0)) {
        free(b->data);
        js_oom(c);
        return "";
    }
    return js_keep(c, b->data);
}

static void js_err(jconv *c, kvlm_status code, const char *path, const char *fmt, ...) KV_PRINTF(4, 5);
static void js_err(jconv *c, kvlm_status code, const char *path, const char *fmt, ...) {
    if (c->st) return;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    c->st = kv_fail(c->err, code, "json schema: at %s: %s", *path ? path : "/", msg);
}

static void bputs(kv_buf *b, const char *s) {
    if (s) kv_buf_add(b, s, strlen(s));
}

/* A code point of a GBNF literal or class: printable ASCII as itself (with \ " ] - ^ [ escaped
 * as \xHH), everything else as \xHH, \uHHHH or \UHHHHHHHH. */
static void gbnf_char(kv_buf *b, uint32_t cp) {
    char t[16];
    if (cp >= 0x20 && cp < 0x7F && !strchr("\\\"[]-^", (int)cp)) {
        t[0] = (char)cp;
        t[1] = 0;
    } else if (cp < 0x80) {
        snprintf(t, sizeof t, "\\x%02X", (unsigned)cp);
    } else if (cp <= 0xFFFF) {
        snprintf(t, sizeof t, "\\u%04X", (unsigned)cp);
    } else {
        snprintf(t, sizeof t, "\\U%08X", (unsigned)cp);
    }
    bputs(b, t);
}

/* decodes one UTF-8 character of s[*i..n) (invalid bytes, overlong forms, surrogates and code
 * points over U+10FFFF: taken one byte at a time as U+FFFD) */
static uint32_t utf8_next(const char *s, size_t n, size_t *i) {
    const unsigned char *u = (const unsigned char *)s;
    uint32_t c = u[*i];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || *i + (size_t)len > n) {
        (*i)++;
        return 0xFFFD;
    }
    if (len == 1) {
        (*i)++;
        return c;
    }
    c &= 0x7Fu >> len;
    for (int k = 1; k < len; k++) {
        if ((u[*i + (size_t)k] & 0xC0) != 0x80) {
            (*i)++;
            return 0xFFFD;
        }
        c = c << 6 | (u[*i + (size_t)k] & 0x3F);
    }
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (c < min[len] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) { /* overlong, too large, surrogate */
        (*i)++;
        return 0xFFFD;
    }
    *i += (size_t)len;
    return c;
}

/* A GBNF literal matching bytes s[0..n) exactly. */
static void gbnf_literal(kv_buf *b, const char *s, size_t n) {
    bputs(b, "\"");
    for (size_t i = 0; i < n;) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch < 0x7F) {
            if (ch == '"' || ch == '\\') kv_buf_add(b, "\\", 1);
            kv_buf_add(b, s + i, 1);
            i++;
        } else {
            gbnf_char(b, utf8_next(s, n, &i));
        }
    }
    bputs(b, "\"");
}

/* The JSON text of a string value (quotes and escapes, UTF-8 as it is). */
static void json_quote(kv_buf *b, const char *s) {
    bputs(b, "\"");
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        char t[8];
        if (ch == '"' || ch == '\\') {
            t[0] = '\\';
            t[1] = (char)ch;
            t[2] = 0;
        } else if (ch == '\n') {
            strcpy(t, "\\n");
        } else if (ch == '\r') {
            strcpy(t, "\\r");
        } else if (ch == '\t') {
            strcpy(t, "\\t");
        } else if (ch < 0x20) {
            snprintf(t, sizeof t, "\\u%04x", ch);
        } else {
            t[0] = (char)ch;
            t[1] = 0;
        }
        bputs(b, t);
    }
    bputs(b, "\"");
}

/* ------------------------------------------------------------ rules */

/* llama.cpp's primitive rules: the same languages, except that a \u escape in a string is never
 * a surrogate (a lone one is not valid JSON for most parsers) and \/ is allowed. */
typedef struct js_prim {
    const char *name, *body, *deps[6];
} js_prim;

#define JS_ESCAPE "[\\\\] ([\"\\\\/bfnrt] | \"u\" ([0-9a-cA-C] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2} | [eEfF] [0-9a-fA-F]{3}))"

static const js_prim k_prims[] = {
    {"boolean", "(\"true\" | \"false\") space", {0}},
    {"decimal-part", "[0-9]{1,16}", {0}},
    {"integral-part", "[0] | [1-9] [0-9]{0,15}", {0}},
    {"number", "(\"-\"? integral-part) (\".\" decimal-part)? ([eE] [-+]? integral-part)? space",
     {"integral-part", "decimal-part"}},
    {"integer", "(\"-\"? integral-part) space", {"integral-part"}},
    {"value", "object | array | string | number | boolean | null",
     {"object", "array", "string", "number", "boolean", "null"}},
    {"object", "\"{\" space ( string \":\" space value (\",\" space string \":\" space value)* )? \"}\" space",
     {"string", "value"}},
    {"array", "\"[\" space ( value (\",\" space value)* )? \"]\" space", {"value"}},
    {"uuid",
     "\"\\\"\" [0-9a-fA-F]{8} \"-\" [0-9a-fA-F]{4} \"-\" [0-9a-fA-F]{4} \"-\" [0-9a-fA-F]{4} \"-\" "
     "[0-9a-fA-F]{12} \"\\\"\" space",
     {0}},
    {"char", "[^\"\\\\\\x7F\\x00-\\x1F] | " JS_ESCAPE, {0}},
    {"string", "\"\\\"\" char* \"\\\"\" space", {"char"}},
    {"null", "\"null\" space", {0}},
    {"date", "[0-9]{4} \"-\" ( \"0\" [1-9] | \"1\" [0-2] ) \"-\" ( \"0\" [1-9] | [1-2] [0-9] | \"3\" [0-1] )", {0}},
    {"time",
     "([01] [0-9] | \"2\" [0-3]) \":\" [0-5] [0-9] \":\" [0-5] [0-9] ( \".\" [0-9]{3} )? ( \"Z\" | ( \"+\" | "
     "\"-\" ) ( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] )",
     {0}},
    {"date-time", "date \"T\" time", {"date", "time"}},
    {"date-string", "\"\\\"\" date \"\\\"\" space", {"date"}},
    {"time-string", "\"\\\"\" time \"\\\"\" space", {"time"}},
    {"date-time-string", "\"\\\"\" date-time \"\\\"\" space", {"date-time"}},
};

static const js_prim *prim(const char *name) {
    for (size_t i = 0; i < sizeof k_prims / sizeof k_prims[0]; i++)
        if (!strcmp(k_prims[i].name, name)) return &k_prims[i];
    return NULL;
}

static bool is_reserved(const char *name) { return !strcmp(name, "root") || !strcmp(name, "space") || prim(name); }

static js_rule *find_rule(jconv *c, const char *name) {
    for (size_t i = 0; i < c->n_rules; i++)
        if (!strcmp(c->rules[i].name, name)) return &c->rules[i];
    return NULL;
}

static js_rule *new_rule(jconv *c, const char *name, const char *body) {
    if (!js_grow(c, (void **)&c->rules, &c->cap_rules, c->n_rules, sizeof *c->rules)) return NULL;
    char *n = strdup(name), *b = body ? strdup(body) : NULL;
    if (!n || (body && !b)) {
        free(n);
        free(b);
        js_oom(c);
        return NULL;
    }
    js_rule *r = &c->rules[c->n_rules++];
    r->name = n;
    r->body = b;
    return r;
}

/* A rule name from any text: runs of characters outside [a-zA-Z0-9-] become "-". */
static const char *rule_name_of(jconv *c, const char *name) {
    kv_buf b = {0};
    bool run = false;
    for (const char *p = name; *p; p++) {
        const bool ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-';
        if (ok) {
            kv_buf_add(&b, p, 1);
            run = false;
        } else if (!run) {
            kv_buf_add(&b, "-", 1);
            run = true;
        }
    }
    if (!b.n) bputs(&b, "r");
    return js_take(c, &b);
}

/* Defines name ::= body, or name0, name1, ... when name has another body; returns the name
 * used. A name reserved for a $ref gets its body here. */
static const char *add_rule(jconv *c, const char *name, const char *body) {
    if (c->st) return "";
    const char *esc = rule_name_of(c, name);
    js_rule *r = find_rule(c, esc);
    if (!r) {
        r = new_rule(c, esc, body);
        return r ? r->name : "";
    }
    if (!r->body) {
        if (!(r->body = strdup(body))) js_oom(c);
        return r->name;
    }
    if (!strcmp(r->body, body)) return r->name;
    for (int i = 0;; i++) {
        const char *k = js_fmt(c, "%s%d", esc, i);
        if (c->st) return "";
        r = find_rule(c, k);
        if (!r) {
            r = new_rule(c, k, body);
            return r ? r->name : "";
        }
        if (r->body && !strcmp(r->body, body)) return r->name;
    }
}

static const char *add_prim(jconv *c, const char *name) {
    const js_prim *p = prim(name);
    const char *n = add_rule(c, name, p->body);
    for (int i = 0; i < 6 && p->deps[i]; i++)
        if (!find_rule(c, p->deps[i])) add_prim(c, p->deps[i]);
    return n;
}

/* ------------------------------------------------------------ integers in a range */

/* digits of v >= 0 */
static int n_digits(int64_t v) {
    int n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

/* The digit strings from a to b (same length n, a <= b), as a GBNF sequence. */
static void digits_range(kv_buf *o, const char *a, const char *b, int n) {
    if (n == 0) return;
    if (a[0] == b[0]) {
        kv_buf_add(o, "[", 1);
        kv_buf_add(o, a, 1);
        kv_buf_add(o, "]", 1);
        if (n > 1) {
            bputs(o, " ");
            digits_range(o, a + 1, b + 1, n - 1);
        }
        return;
    }
    bool lo_zero = true, hi_nine = true;
    for (int i = 1; i < n; i++) {
        lo_zero = lo_zero && a[i] == '0';
        hi_nine = hi_nine && b[i] == '9';
    }
    char t[64];
    if (lo_zero && hi_nine) { /* [a0-b0][0-9]{n-1} */
        snprintf(t, sizeof t, "[%c-%c]", a[0], b[0]);
        bputs(o, t);
        if (n > 1) {
            snprintf(t, sizeof t, " [0-9]{%d}", n - 1);
            bputs(o, t);
        }
        return;
    }
    char nines[20], zeros[20];
    memset(nines, '9', sizeof nines);
    memset(zeros, '0', sizeof zeros);
    bputs(o, "(");
    /* a0 followed by a[1..] .. 99..9 */
    snprintf(t, sizeof t, "[%c] ", a[0]);
    bputs(o, t);
    digits_range(o, a + 1, nines, n - 1);
    if (a[0] + 1 <= b[0] - 1) {
        snprintf(t, sizeof t, " | [%c-%c] [0-9]{%d}", a[0] + 1, b[0] - 1, n - 1);
        bputs(o, t);
    }
    snprintf(t, sizeof t, " | [%c] ", b[0]);
    bputs(o, t);
    digits_range(o, zeros, b + 1, n - 1);
    bputs(o, ")");
}

/* " | "-joined alternatives for the integers lo..hi (0 <= lo; hi < 0: no upper bound), with at
 * most 16 digits as integral-part has. */
static void nonneg_range(kv_buf *o, int64_t lo, int64_t hi, bool *first) {
    const int dlo = n_digits(lo), dhi = hi < 0 ? 16 : n_digits(hi);
    int64_t p = 1;
    for (int i = 1; i < dlo; i++) p *= 10;
    for (int d = dlo; d <= dhi; d++, p *= 10) {
        const int64_t a = d == dlo ? lo : p, top = p * 10 - 1;
        if (hi < 0 && d > dlo) { /* every number of d or more digits */
            char t[64];
            snprintf(t, sizeof t, "%s[1-9] [0-9]{%d,15}", *first ? "" : " | ", d - 1);
            bputs(o, t);
            *first = false;
            return;
        }
        const int64_t b = hi < 0 || hi > top ? top : hi;
        char sa[24], sb[24];
        snprintf(sa, sizeof sa, "%" PRId64, a);
        snprintf(sb, sizeof sb, "%" PRId64, b);
        if (!*first) bputs(o, " | ");
        *first = false;
        digits_range(o, sa, sb, d);
    }
}

/* Integers in [lo, hi] (has_lo/has_hi: bounded on that side), as a GBNF sequence. */
static const char *int_range_rule(jconv *c, bool has_lo, int64_t lo, bool has_hi, int64_t hi) {
    kv_buf o = {0};
    bool first = true;
    bputs(&o, "(");
    /* negative part: -(max(1,-hi) .. -lo) */
    if (!has_lo || lo < 0) {
        const int64_t nlo = has_hi && hi < 0 ? -hi : 1, nhi = has_lo ? -lo : -1;
        bputs(&o, "\"-\" (");
        bool f2 = true;
        nonneg_range(&o, nlo, nhi, &f2);
        bputs(&o, ")");
        first = false;
    }
    if (!has_hi || hi >= 0) {
        const int64_t plo = has_lo && lo > 0 ? lo : 0;
        nonneg_range(&o, plo, has_hi ? hi : -1, &first);
    }
    bputs(&o, ") space");
    return js_take(c, &o);
}

/* ------------------------------------------------------------ patterns (regular expressions) */

typedef struct rx_set {
    uint32_t lo[256], hi[256];
    int n;
} rx_set;

typedef struct rx {
    jconv *c;
    const char *p;
    size_t i, n;
    const char *path;
} rx;

static void rx_fail(rx *r, const char *what) {
    js_err(r->c, KVLM_ERR_UNSUPPORTED, r->path, "pattern at offset %zu: %s", r->i, what);
}

static void set_add(rx *r, rx_set *s, uint32_t lo, uint32_t hi) {
    if (s->n == 256) {
        rx_fail(r, "character class too complex");
        return;
    }
    s->lo[s->n] = lo;
    s->hi[s->n] = hi;
    s->n++;
}

static int cmp_u32pair(const void *a, const void *b) {
    const uint32_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* sorted, disjoint, merged */
static void set_norm(rx_set *s) {
    uint32_t pr[256][2];
    for (int i = 0; i < s->n; i++) {
        pr[i][0] = s->lo[i];
        pr[i][1] = s->hi[i];
    }
    qsort(pr, (size_t)s->n, sizeof pr[0], cmp_u32pair);
    int m = 0;
    for (int i = 0; i < s->n; i++) {
        if (m && pr[i][0] <= s->hi[m - 1] + 1) {
            if (pr[i][1] > s->hi[m - 1]) s->hi[m - 1] = pr[i][1];
        } else {
            s->lo[m] = pr[i][0];
            s->hi[m] = pr[i][1];
            m++;
        }
    }
    s->n = m;
}

static void set_negate(rx_set *s) {
    set_norm(s);
    rx_set t = {.n = 0};
    uint32_t next = 0;
    for (int i = 0; i < s->n; i++) {
        if (s->lo[i] > next) {
            t.lo[t.n] = next;
            t.hi[t.n] = s->lo[i] - 1;
            t.n++;
        }
        next = s->hi[i] + 1;
    }
    if (next <= 0x10FFFF) {
        t.lo[t.n] = next;
        t.hi[t.n] = 0x10FFFF;
        t.n++;
    }
    *s = t;
}

static bool set_has(const rx_set *s, uint32_t cp) {
    for (int i = 0; i < s->n; i++)
        if (cp >= s->lo[i] && cp <= s->hi[i]) return true;
    return false;
}

/* \d \w \s and their negations into s; false when e is not one of them */
static bool class_escape(rx *r, rx_set *s, char e) {
    rx_set t = {.n = 0};
    switch (e | 0x20) {
    case 'd': set_add(r, &t, '0', '9'); break;
    case 'w':
        set_add(r, &t, '0', '9');
        set_add(r, &t, 'A', 'Z');
        set_add(r, &t, '_', '_');
        set_add(r, &t, 'a', 'z');
        break;
    case 's':
        set_add(r, &t, '\t', '\r');
        set_add(r, &t, ' ', ' ');
        break;
    default: return false;
    }
    if (e >= 'A' && e <= 'Z') set_negate(&t);
    for (int i = 0; i < t.n; i++) set_add(r, s, t.lo[i], t.hi[i]);
    return true;
}

static uint32_t hexval(rx *r, int digits) {
    uint32_t v = 0;
    for (int k = 0; k < digits; k++) {
        char h = r->i < r->n ? r->p[r->i] : 0;
        int d = h >= '0' && h <= '9' ? h - '0' : (h | 0x20) >= 'a' && (h | 0x20) <= 'f' ? (h | 0x20) - 'a' + 10 : -1;
        if (d < 0) {
            rx_fail(r, "bad hexadecimal escape");
            return 0;
        }
        v = v * 16 + (uint32_t)d;
        r->i++;
    }
    return v;
}

/* A single-character escape after the backslash (r->i at the character after it). */
static uint32_t char_escape(rx *r) {
    char e = r->p[r->i++];
    switch (e) {
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    case 'f': return '\f';
    case 'v': return '\v';
    case '0': return 0;
    case 'x': return hexval(r, 2);
    case 'u': return hexval(r, 4);
    default: break;
    }
    if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || (e >= '1' && e <= '9')) {
        char m[64];
        snprintf(m, sizeof m, "unsupported escape \\%c", e);
        r->i--;
        rx_fail(r, m);
        return 0;
    }
    r->i--;
    return utf8_next(r->p, r->n, &r->i); /* punctuation: itself */
}

/* A set as GBNF matching the JSON text of its characters: the plain ones in a class, " and \ and
 * the common control characters by their escapes; other control characters are left out. */
static void emit_set(rx *r, kv_buf *o, rx_set *s) {
    set_norm(s);
    rx_set plain = *s;
    rx_set ex = {.n = 0};
    set_add(r, &ex, 0, 0x1F);
    set_add(r, &ex, '"', '"');
    set_add(r, &ex, '\\', '\\');
    set_negate(&ex); /* what may appear as it is */
    rx_set in = {.n = 0};
    for (int i = 0; i < plain.n; i++)
        for (int j = 0; j < ex.n; j++) {
            uint32_t lo = plain.lo[i] > ex.lo[j] ? plain.lo[i] : ex.lo[j];
            uint32_t hi = plain.hi[i] < ex.hi[j] ? plain.hi[i] : ex.hi[j];
            if (lo <= hi) set_add(r, &in, lo, hi);
        }
    static const struct {
        uint32_t cp;
        const char *gbnf;
    } esc[] = {{'"', "\"\\\\\\\"\""}, {'\\', "\"\\\\\\\\\""}, {'\n', "\"\\\\n\""}, {'\r', "\"\\\\r\""},
               {'\t', "\"\\\\t\""},   {'\b', "\"\\\\b\""},   {'\f', "\"\\\\f\""}};
    int n_alt = in.n > 0;
    for (size_t k = 0; k < sizeof esc / sizeof esc[0]; k++) n_alt += set_has(s, esc[k].cp);
    if (n_alt == 0) {
        rx_fail(r, "a character class that no JSON string character matches");
        return;
    }
    if (n_alt > 1) bputs(o, "(");
    bool first = true;
    if (in.n) {
        bputs(o, "[");
        for (int i = 0; i < in.n; i++) {
            gbnf_char(o, in.lo[i]);
            if (in.hi[i] != in.lo[i]) {
                bputs(o, "-");
                gbnf_char(o, in.hi[i]);
            }
        }
        bputs(o, "]");
        first = false;
    }
    for (size_t k = 0; k < sizeof esc / sizeof esc[0]; k++)
        if (set_has(s, esc[k].cp)) {
            if (!first) bputs(o, " | ");
            bputs(o, esc[k].gbnf);
            first = false;
        }
    if (n_alt > 1) bputs(o, ")");
}

static void emit_char(rx *r, kv_buf *o, uint32_t cp) {
    rx_set s = {.n = 0};
    set_add(r, &s, cp, cp);
    if (cp >= 0x20 && cp != '"' && cp != '\\') {
        bputs(o, "\"");
        if (cp < 0x80) {
            char ch = (char)cp;
            kv_buf_add(o, &ch, 1);
        } else {
            gbnf_char(o, cp);
        }
        bputs(o, "\"");
        return;
    }
    emit_set(r, o, &s);
}

static void rx_alt(rx *r, kv_buf *o);

static void rx_class(rx *r, kv_buf *o) {
    rx_set s = {.n = 0};
    bool neg = false;
    if (r->i < r->n && r->p[r->i] == '^') {
        neg = true;
        r->i++;
    }
    bool first = true;
    while (!r->c->st) {
        if (r->i >= r->n) {
            rx_fail(r, "unterminated character class");
            return;
        }
        if (r->p[r->i] == ']' && !first) break;
        first = false;
        uint32_t lo;
        if (r->p[r->i] == '\\') {
            r->i++;
            if (r->i >= r->n) {
                rx_fail(r, "unterminated escape");
                return;
            }
            if (class_escape(r, &s, r->p[r->i])) {
                r->i++;
                continue;
            }
            lo = r->p[r->i] == 'b' ? (r->i++, '\b') : char_escape(r);
        } else {
            lo = utf8_next(r->p, r->n, &r->i);
        }
        uint32_t hi = lo;
        if (r->i + 1 < r->n && r->p[r->i] == '-' && r->p[r->i + 1] != ']') {
            r->i++;
            if (r->p[r->i] == '\\') {
                r->i++;
                if (r->i >= r->n) {
                    rx_fail(r, "unterminated escape");
                    return;
                }
                hi = char_escape(r);
            } else {
                hi = utf8_next(r->p, r->n, &r->i);
            }
            if (hi < lo) {
                rx_fail(r, "a range out of order in a character class");
                return;
            }
        }
        set_add(r, &s, lo, hi);
    }
    r->i++; /* ] */
    if (neg) set_negate(&s);
    emit_set(r, o, &s);
}

/* one atom into o; false at the end of a sequence (| or ) or the end) */
static bool rx_atom(rx *r, kv_buf *o) {
    char ch = r->p[r->i];
    if (ch == '|' || ch == ')') return false;
    if (ch == '(') {
        r->i++;
        if (r->i < r->n && r->p[r->i] == '?') {
            if (r->i + 1 < r->n && r->p[r->i + 1] == ':') {
                r->i += 2;
            } else if (r->i + 2 < r->n && (r->p[r->i + 1] == '<' || r->p[r->i + 1] == 'P') && r->p[r->i + 2] != '=' &&
                       r->p[r->i + 2] != '!') { /* a named group: a group */
                while (r->i < r->n && r->p[r->i] != '>') r->i++;
                if (r->i >= r->n) {
                    rx_fail(r, "unterminated group name");
                    return false;
                }
                r->i++;
            } else {
                rx_fail(r, "lookaround and other (? groups are not supported");
                return false;
            }
        }
        rx_alt(r, o);
        if (r->i >= r->n || r->p[r->i] != ')') {
            rx_fail(r, "unbalanced parenthesis");
            return false;
        }
        r->i++;
        return true;
    }
    if (ch == '[') {
        r->i++;
        rx_class(r, o);
        return true;
    }
    if (ch == '.') {
        r->i++;
        rx_set s = {.n = 0};
        set_add(r, &s, '\n', '\n');
        set_add(r, &s, '\r', '\r');
        set_negate(&s);
        emit_set(r, o, &s);
        return true;
    }
    if (ch == '*' || ch == '+' || ch == '?' || ch == '{') {
        rx_fail(r, "nothing to repeat");
        return false;
    }
    if (ch == '^' || ch == '$') {
        rx_fail(r, "anchors are supported only at the start and end");
        return false;
    }
    if (ch == '\\') {
        r->i++;
        if (r->i >= r->n) {
            rx_fail(r, "unterminated escape");
            return false;
        }
        rx_set s = {.n = 0};
        if (class_escape(r, &s, r->p[r->i])) {
            r->i++;
            emit_set(r, o, &s);
            return true;
        }
        emit_char(r, o, char_escape(r));
        return true;
    }
    emit_char(r, o, utf8_next(r->p, r->n, &r->i));
    return true;
}

static bool rx_number(rx *r, long *v) {
    if (r->i >= r->n || r->p[r->i] < '0' || r->p[r->i] > '9') return false;
    long x = 0;
    while (r->i < r->n && r->p[r->i] >= '0' && r->p[r->i] <= '9') {
        x = x * 10 + (r->p[r->i] - '0');
        if (x > 1000000) x = 1000000;
        r->i++;
    }
    *v = x;
    return true;
}

/* a sequence of atoms, each with its quantifier */
static void rx_seq(rx *r, kv_buf *o) {
    bool any = false;
    while (!r->c->st && r->i < r->n) {
        kv_buf a = {0};
        if (!rx_atom(r, &a)) {
            free(a.data);
            break;
        }
        char q[64] = "";
        if (r->i < r->n) {
            char ch = r->p[r->i];
            if (ch == '*' || ch == '+' || ch == '?') {
                q[0] = ch;
                q[1] = 0;
                r->i++;
            } else if (ch == '{') {
                const size_t at = r->i++;
                long m = 0, n = -1;
                bool ok = rx_number(r, &m);
                if (ok && r->i < r->n && r->p[r->i] == ',') {
                    r->i++;
                    if (!rx_number(r, &n)) n = -2; /* {m,} */
                } else {
                    n = m;
                }
                if (!ok || r->i >= r->n || r->p[r->i] != '}') {
                    r->i = at;
                    rx_fail(r, "bad repetition {m,n}");
                    free(a.data);
                    return;
                }
                r->i++;
                if (m > JS_MAX_REPEAT || n > JS_MAX_REPEAT || (n >= 0 && n < m)) {
                    r->i = at;
                    rx_fail(r, "repetition count out of order or over 2000");
                    free(a.data);
                    return;
                }
                if (n == -2)
                    snprintf(q, sizeof q, "{%ld,}", m);
                else
                    snprintf(q, sizeof q, "{%ld,%ld}", m, n);
            }
            if (q[0] && r->i < r->n && r->p[r->i] == '?') r->i++; /* lazy: the same language */
            if (q[0] && r->i < r->n && r->p[r->i] == '+') {
                rx_fail(r, "possessive quantifiers are not supported");
                free(a.data);
                return;
            }
        }
        if (any) bputs(o, " ");
        any = true;
        if (q[0]) bputs(o, "(");
        if (a.data) kv_buf_add(o, a.data, a.n);
        free(a.data);
        if (q[0]) {
            bputs(o, ")");
            bputs(o, q);
        }
    }
    if (!any) bputs(o, "\"\"");
}

static void rx_alt(rx *r, kv_buf *o) {
    bputs(o, "(");
    rx_seq(r, o);
    while (!r->c->st && r->i < r->n && r->p[r->i] == '|') {
        r->i++;
        bputs(o, " | ");
        rx_seq(r, o);
    }
    bputs(o, ")");
}

static const char *visit_pattern(jconv *c, const char *pat, const char *name, const char *path) {
    size_t n = strlen(pat), start = 0;
    const bool anch_start = n > 0 && pat[0] == '^';
    if (anch_start) start = 1;
    bool anch_end = false;
    if (n > start && pat[n - 1] == '$') {
        size_t bs = 0; /* an escaped \$ is a literal */
        for (size_t k = n - 1; k > start && pat[k - 1] == '\\'; k--) bs++;
        if (bs % 2 == 0) {
            anch_end = true;
            n--;
        }
    }
    rx r = {c, pat + start, 0, n - start, path};
    kv_buf o = {0};
    bputs(&o, "\"\\\"\" ");
    const char *ch = NULL;
    if (!anch_start || !anch_end) ch = add_prim(c, "char");
    if (!anch_start) {
        bputs(&o, ch);
        bputs(&o, "* ");
    }
    rx_alt(&r, &o);
    if (!c->st && r.i < r.n) rx_fail(&r, "unbalanced parenthesis");
    if (!anch_end) {
        bputs(&o, " ");
        bputs(&o, ch);
        bputs(&o, "*");
    }
    bputs(&o, " \"\\\"\" space");
    const char *body = js_take(c, &o);
    return add_rule(c, name, body);
}

/* ------------------------------------------------------------ schemas */

static const char *visit(jconv *c, const kv_json *s, const char *name, const char *path);

static const char *sub_name(jconv *c, const char *name, const char *part) {
    return *name ? js_fmt(c, "%s-%s", name, part) : js_fmt(c, "%s", part);
}

static const char *sub_path(jconv *c, const char *path, const char *key) {
    kv_buf b = {0};
    bputs(&b, path);
    bputs(&b, "/");
    for (const char *p = key; *p; p++) /* JSON pointer escapes */
        bputs(&b, *p == '~' ? "~0" : *p == '/' ? "~1" : (char[2]){*p, 0});
    return js_take(c, &b);
}

static const char *sub_path_i(jconv *c, const char *path, const char *key, int i) {
    return js_fmt(c, "%s/%s/%d", path, key, i);
}

static const char *const k_known[] = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
    "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions", "pattern", "minLength",
    "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "format",
    /* annotations: no effect on what is valid */
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "$anchor", "deprecated",
    "readOnly", "writeOnly", "contentMediaType", "contentEncoding"};

static const char *const k_types[] = {"string", "number", "integer", "boolean", "null", "object", "array"};

static bool check_keywords(jconv *c, const kv_json *s, const char *path) {
    for (const kv_json *k = s->child; k; k = k->next) {
        bool ok = false;
        for (size_t i = 0; i < sizeof k_known / sizeof k_known[0] && !ok; i++) ok = !strcmp(k->key, k_known[i]);
        if (!ok) {
            js_err(c, KVLM_ERR_UNSUPPORTED, path, "unsupported keyword \"%s\"", k->key);
            return false;
        }
    }
    const kv_json *t = kv_json_get(s, "type");
    if (t) {
        const kv_json *one = J_IS_ARRAY(t) ? t->child : t;
        if (J_IS_ARRAY(t) && !one) {
            js_err(c, KVLM_ERR_INVALID_ARG, path, "\"type\" is an empty list");
            return false;
        }
        for (; one; one = J_IS_ARRAY(t) ? one->next : NULL) {
            bool ok = false;
            for (size_t i = 0; J_IS_STRING(one) && i < sizeof k_types / sizeof k_types[0] && !ok; i++)
                ok = !strcmp(one->str, k_types[i]);
            if (!ok) {
                js_err(c, KVLM_ERR_INVALID_ARG, path, "\"type\" must be one of string, number, integer, boolean, null, object, array (or a list of them)");
                return false;
            }
        }
    }
    return true;
}

/* a non-negative integer keyword (absent: def) */
static bool get_count(jconv *c, const kv_json *s, const char *key, long def, long *out, const char *path) {
    const kv_json *v = kv_json_get(s, key);
    *out = def;
    if (!v) return true;
    if (!J_IS_NUMBER(v) || v->num < 0 || v->num != floor(v->num)) {
        js_err(c, KVLM_ERR_INVALID_ARG, path, "\"%s\" must be a non-negative integer", key);
        return false;
    }
    if (v->num > JS_MAX_REPEAT) {
        js_err(c, KVLM_ERR_UNSUPPORTED, path, "\"%s\" over %d", key, JS_MAX_REPEAT);
        return false;
    }
    *out = (long)v->num;
    return true;
}

/* llama.cpp's build_repetition: item {min,max} with an optional separator between items
 * (max < 0: no maximum) */
static const char *repetition(jconv *c, const char *item, long min, long max, const char *sep) {
    if (max == 0) return "";
    if (min == 0 && max == 1) return js_fmt(c, "%s?", item);
    if (!*sep) {
        if (min == 1 && max < 0) return js_fmt(c, "%s+", item);
        if (min == 0 && max < 0) return js_fmt(c, "%s*", item);
        if (max < 0) return js_fmt(c, "%s{%ld,}", item, min);
        return js_fmt(c, "%s{%ld,%ld}", item, min, max);
    }
    const char *rest = repetition(c, js_fmt(c, "(%s %s)", sep, item), min == 0 ? 0 : min - 1, max < 0 ? -1 : max - 1, "");
    const char *r = js_fmt(c, "%s %s", item, rest);
    return min == 0 ? js_fmt(c, "(%s)?", r) : r;
}

/* The GBNF of a constant's JSON text. */
static const char *const_literal(jconv *c, const kv_json *v) {
    char *t = kv_json_print(v);
    if (!t) {
        js_oom(c);
        return "";
    }
    kv_buf b = {0};
    gbnf_literal(&b, t, strlen(t));
    free(t);
    return js_take(c, &b);
}

/* ---- property names other than the object's own (llama.cpp's _not_strings, over code points,
 * also for a name that is a prefix of another) */

#define JS_MAX_KEY 128 /* code points of a property name when additional ones are allowed */

typedef struct cpstr {
    uint32_t cp[JS_MAX_KEY];
    int n;
} cpstr;

/* keys[0..nk) share their first d code points; the GBNF of the rest of a key (JSON string chars)
 * that makes it none of them */
static void not_keys(jconv *c, kv_buf *o, const cpstr *keys, const int *idx, int nk, int d, const char *ch) {
    bool is_end = false;
    uint32_t *seen = malloc((size_t)nk * sizeof *seen);
    int *sub = malloc((size_t)nk * sizeof *sub);
    int n_seen = 0;
    if (!seen || !sub) {
        free(seen);
        free(sub);
        js_oom(c);
        return;
    }
    bputs(o, "(");
    bool first = true;
    for (int i = 0; i < nk; i++) {
        const cpstr *k = &keys[idx[i]];
        if (k->n == d) {
            is_end = true;
            continue;
        }
        uint32_t x = k->cp[d];
        bool dup = false;
        for (int j = 0; j < n_seen && !dup; j++) dup = seen[j] == x;
        if (dup) continue;
        seen[n_seen++] = x;
        int ns = 0;
        for (int j = 0; j < nk; j++)
            if (keys[idx[j]].n > d && keys[idx[j]].cp[d] == x) sub[ns++] = idx[j];
        if (!first) bputs(o, " | ");
        first = false;
        rx r0 = {c, "", 0, 0, ""};
        kv_buf a = {0};
        emit_char(&r0, &a, x);
        if (a.data) kv_buf_add(o, a.data, a.n);
        free(a.data);
        bputs(o, " ");
        int *mine = malloc((size_t)ns * sizeof *mine);
        if (!mine) {
            js_oom(c);
            break;
        }
        memcpy(mine, sub, (size_t)ns * sizeof *mine);
        not_keys(c, o, keys, mine, ns, d + 1, ch);
        free(mine);
    }
    /* a first character none of the keys has here (or an escape), then anything */
    if (!first) bputs(o, " | ");
    bputs(o, "[^\"\\\\\\x7F\\x00-\\x1F");
    for (int j = 0; j < n_seen; j++) gbnf_char(o, seen[j]);
    bputs(o, "] ");
    bputs(o, ch);
    bputs(o, "* | " JS_ESCAPE " ");
    bputs(o, ch);
    bputs(o, "*");
    if (!is_end) bputs(o, " | \"\""); /* the key may end here: it is a proper prefix */
    bputs(o, ")");
    free(seen);
    free(sub);
}

typedef struct prop {
    const char *key;
    const kv_json *schema;
    bool required;
} prop;

/* llama.cpp's object rule: required properties in order, then the optional ones in order
 * (each at most once), then additional ones ("*") */
static const char *object_rule(jconv *c, const prop *props, int np, const kv_json *additional, const char *name,
                               const char *path) {
    const char **kv = calloc((size_t)np + 1, sizeof *kv);
    int *opt = calloc((size_t)np + 1, sizeof *opt);
    if (!kv || !opt) {
        free(kv);
        free(opt);
        js_oom(c);
        return "";
    }
    int n_opt = 0;
    for (int i = 0; i < np && !c->st; i++) {
        const char *pn = sub_name(c, name, props[i].key);
        const char *vr = visit(c, props[i].schema, pn, sub_path(c, sub_path(c, path, "properties"), props[i].key));
        kv_buf b = {0}, q = {0};
        json_quote(&q, props[i].key);
        kv_buf_add_z(&q, "", 0);
        gbnf_literal(&b, q.data ? q.data : "", q.n);
        free(q.data);
        bputs(&b, " space \":\" space ");
        bputs(&b, vr);
        kv[i] = add_rule(c, js_fmt(c, "%s-kv", pn), js_take(c, &b));
        if (!props[i].required) opt[n_opt++] = i;
    }
    const bool add = additional && (J_IS_TRUE(additional) || J_IS_OBJECT(additional));
    if (add && !c->st) {
        const char *an = sub_name(c, name, "additional");
        const char *vr = J_IS_OBJECT(additional)
                             ? visit(c, additional, js_fmt(c, "%s-value", an), sub_path(c, path, "additionalProperties"))
                             : add_prim(c, "value");
        const char *key;
        if (np == 0) {
            key = add_prim(c, "string");
        } else {
            cpstr *keys = calloc((size_t)np, sizeof *keys);
            int *idx = calloc((size_t)np, sizeof *idx);
            if (!keys || !idx) {
                js_oom(c);
            } else {
                for (int i = 0; i < np; i++) {
                    size_t L = strlen(props[i].key), j = 0;
                    while (j < L && keys[i].n < JS_MAX_KEY) keys[i].cp[keys[i].n++] = utf8_next(props[i].key, L, &j);
                    if (j < L)
                        js_err(c, KVLM_ERR_UNSUPPORTED, path,
                               "property name over %d characters with additional properties allowed", JS_MAX_KEY);
                    idx[i] = i;
                }
            }
            kv_buf b = {0};
            bputs(&b, "\"\\\"\" ");
            if (!c->st) not_keys(c, &b, keys, idx, np, 0, add_prim(c, "char"));
            bputs(&b, " \"\\\"\" space");
            free(keys);
            free(idx);
            key = add_rule(c, js_fmt(c, "%s-k", an), js_take(c, &b));
        }
        kv[np] = add_rule(c, js_fmt(c, "%s-kv", an), js_fmt(c, "%s \":\" space %s", key, vr));
        opt[n_opt++] = np; /* np: the additional ones */
    }
    if (c->st) { /* a property's schema failed: kv[] is not complete */
        free(kv);
        free(opt);
        return "";
    }
    kv_buf b = {0};
    bputs(&b, "\"{\" space ");
    int n_req = 0;
    for (int i = 0; i < np; i++)
        if (props[i].required) {
            if (n_req++) bputs(&b, " \",\" space ");
            bputs(&b, kv[i]);
        }
    if (n_opt && !c->st) {
        bputs(&b, " (");
        if (n_req) bputs(&b, " \",\" space ( ");
        /* alternative i: opt[i] first, then optionally the ones after it (rules name-K-rest) */
        const char **rest = calloc((size_t)n_opt + 1, sizeof *rest);
        if (!rest) {
            js_oom(c);
        } else {
            rest[n_opt] = NULL;
            for (int i = n_opt - 1; i >= 1 && !c->st; i--) { /* rest[i]: opt[i..] each optional */
                const int k = opt[i];
                const char *comma = js_fmt(c, "( \",\" space %s )%s", kv[k], k == np ? "*" : "?");
                const char *body = rest[i + 1] ? js_fmt(c, "%s %s", comma, rest[i + 1]) : comma;
                const char *pk = k == np ? "additional" : props[k].key;
                rest[i] = add_rule(c, js_fmt(c, "%s-rest", sub_name(c, name, pk)), body);
            }
            for (int i = 0; i < n_opt && !c->st; i++) {
                const int k = opt[i];
                if (i) bputs(&b, " | ");
                bputs(&b, kv[k]);
                if (k == np) {
                    bputs(&b, " ( \",\" space ");
                    bputs(&b, kv[k]);
                    bputs(&b, " )*");
                }
                if (rest[i + 1]) {
                    bputs(&b, " ");
                    bputs(&b, rest[i + 1]);
                }
            }
            free(rest);
        }
        if (n_req) bputs(&b, " )");
        bputs(&b, " )?");
    }
    bputs(&b, " \"}\" space");
    free(kv);
    free(opt);
    return js_take(c, &b);
}

/* The target of a local $ref ("#", "#/a/b" with ~0 ~1 escapes). */
static const kv_json *resolve_pointer(jconv *c, const char *ref, const char *path) {
    if (ref[0] != '#' || (ref[1] && ref[1] != '/')) {
        js_err(c, KVLM_ERR_UNSUPPORTED, path, "$ref \"%s\": only local references (#/$defs/..., #/definitions/...) are supported", ref);
        return NULL;
    }
    const kv_json *t = c->root;
    const char *p = ref + 1;
    while (*p == '/') {
        p++;
        char tok[256];
        size_t n = 0;
        for (; *p && *p != '/'; p++) {
            char ch = *p;
            if (ch == '~' && (p[1] == '0' || p[1] == '1')) ch = *++p == '0' ? '~' : '/';
            if (n + 1 < sizeof tok) tok[n++] = ch;
        }
        tok[n] = 0;
        const kv_json *next = NULL;
        if (J_IS_OBJECT(t)) {
            next = kv_json_get(t, tok);
        } else if (J_IS_ARRAY(t)) {
            char *e;
            long i = strtol(tok, &e, 10);
            if (*tok && !*e && i >= 0)
                for (next = t->child; next && i > 0; i--) next = next->next;
        }
        if (!next) {
            js_err(c, KVLM_ERR_INVALID_ARG, path, "$ref \"%s\": \"%s\" not found", ref, tok);
            return NULL;
        }
        t = next;
    }
    return t;
}

static const char *resolve_ref(jconv *c, const char *ref, const char *path) {
    for (size_t i = 0; i < c->n_refs; i++)
        if (!strcmp(c->refs[i].ref, ref)) return c->refs[i].name;
    const kv_json *t = resolve_pointer(c, ref, path);
    if (!t) return "";
    const char *last = strrchr(ref, '/');
    const char *base = rule_name_of(c, last && last[1] ? last + 1 : "ref");
    if (is_reserved(base)) base = js_fmt(c, "%s-", base);
    const char *u = base;
    for (int i = 0; find_rule(c, u) && !c->st; i++) u = js_fmt(c, "%s%d", base, i);
    if (c->st || !new_rule(c, u, NULL)) return "";
    if (!js_grow(c, (void **)&c->refs, &c->cap_refs, c->n_refs, sizeof *c->refs)) return "";
    const char *uname = find_rule(c, u)->name;
    c->refs[c->n_refs].ref = js_fmt(c, "%s", ref);
    c->refs[c->n_refs].name = uname;
    c->n_refs++;
    const char *r = visit(c, t, uname, ref);
    if (c->st) return "";
    js_rule *rr = find_rule(c, uname);
    if (!rr->body && !(rr->body = strdup(r))) js_oom(c);
    return uname;
}

/* properties of an object schema (and of allOf's object parts) into props */
static bool collect_props(jconv *c, const kv_json *s, prop **props, int *np, int *cap, const char *path, int depth) {
    if (depth > JS_MAX_DEPTH) {
        js_err(c, KVLM_ERR_INVALID_ARG, path, "schema nested too deeply");
        return false;
    }
    const kv_json *ref = kv_json_get(s, "$ref");
    if (J_IS_STRING(ref)) {
        const kv_json *t = resolve_pointer(c, ref->str, path);
        return t && collect_props(c, t, props, np, cap, ref->str, depth + 1);
    }
    if (!J_IS_OBJECT(s)) {
        js_err(c, KVLM_ERR_UNSUPPORTED, path, "allOf: only object schemas can be combined");
        return false;
    }
    for (const kv_json *k = s->child; k; k = k->next)
        if (strcmp(k->key, "properties") && strcmp(k->key, "required") && strcmp(k->key, "type") &&
            strcmp(k->key, "allOf") && strcmp(k->key, "title") && strcmp(k->key, "description") &&
            strcmp(k->key, "additionalProperties") && strcmp(k->key, "$defs") && strcmp(k->key, "definitions")) {
            js_err(c, KVLM_ERR_UNSUPPORTED, path, "allOf: keyword \"%s\" in a combined schema is not supported", k->key);
            return false;
        }
    const kv_json *t = kv_json_get(s, "type");
    if (t && !(J_IS_STRING(t) && !strcmp(t->str, "object"))) {
        js_err(c, KVLM_ERR_UNSUPPORTED, path, "allOf: only object schemas can be combined");
        return false;
    }
    const kv_json *all = kv_json_get(s, "allOf");
    if (all) {
        if (!J_IS_ARRAY(all)) {
            js_err(c, KVLM_ERR_INVALID_ARG, path, "\"allOf\" must be a list of schemas");
            return false;
        }
        int i = 0;
        for (const kv_json *a = all->child; a; a = a->next, i++)
            if (!collect_props(c, a, props, np, cap, sub_path_i(c, path, "allOf", i), depth + 1)) return false;
    }
    const kv_json *ps = kv_json_get(s, "properties");
    if (ps && !J_IS_OBJECT(ps)) {
        js_err(c, KVLM_ERR_INVALID_ARG, path, "\"properties\" must be an object");
        return false;
    }
    for (const kv_json *p = ps ? ps->child : NULL; p; p = p->next) {
        int at = -1;
        for (int i = 0; i < *np && at < 0; i++)
            if (!strcmp((*props)[i].key, p->key)) at = i;
        if (at >= 0) {
            js_err(c, KVLM_ERR_UNSUPPORTED, path, "allOf: property \"%s\" defined twice", p->key);
            return false;
        }
        if (*np == *cap) {
            int nc = *cap ? *cap * 2 : 8;
            prop *q = realloc(*props, (size_t)nc * sizeof *q);
            if (!q) {
                js_oom(c);
                return false;
            }
            *props = q;
            *cap = nc;
        }
        (*props)[(*np)++] = (prop){p->key, p, false};
    }
    const kv_json *req = kv_json_get(s, "required");
    if (req && !J_IS_ARRAY(req)) {
        js_err(c, KVLM_ERR_INVALID_ARG, path, "\"required\" must be a list of property names");
        return false;
    }
    for (const kv_json *r = req ? req->child : NULL; r; r = r->next) {
        if (!J_IS_STRING(r)) {
            js_err(c, KVLM_ERR_INVALID_ARG, path, "\"required\" must be a list of property names");
            return false;
        }
        int at = -1;
        for (int i = 0; i < *np && at < 0; i++)
            if (!strcmp((*props)[i].key, r->str)) at = i;
        if (at < 0) {
            js_err(c, KVLM_ERR_UNSUPPORTED, path, "required property \"%s\" is not in \"properties\"", r->str);
            return false;
        }
        (*props)[at].required = true;
    }
    return true;
}

static bool get_int_bound(jconv *c, const kv_json *s, const char *key, int64_t *out, const char *path) {
    const kv_json *v = kv_json_get(s, key);
    if (!v) return false;
    if (!J_IS_NUMBER(v) || fabs(v->num) > 1e15) {
        js_err(c, KVLM_ERR_UNSUPPORTED, path, "\"%s\" must be a number of at most 15 digits", key);
        return false;
    }
    *out = (int64_t)v->num; /* toward zero; fixed by the caller for fractions */
    return true;
}

static const char *visit_integer(jconv *c, const kv_json *s, const char *rule_name, const char *path) {
    int64_t lo = 0, hi = 0, x;
    bool has_lo = false, has_hi = false;
    const kv_json *v;
    if (get_int_bound(c, s, "minimum", &x, path)) {
        v = kv_json_get(s, "minimum");
        lo = (double)x < v->num ? x + 1 : x; /* ceil */
        has_lo = true;
    }
    if (get_int_bound(c, s, "exclusiveMinimum", &x, path)) {
        v = kv_json_get(s, "exclusiveMinimum");
        int64_t e = (double)x <= v->num ? x + 1 : x; /* smallest integer > value */
        if (!has_lo || e > lo) lo = e;
        has_lo = true;
    }
    if (get_int_bound(c, s, "maximum", &x, path)) {
        v = kv_json_get(s, "maximum");
        hi = (double)x > v->num ? x - 1 : x; /* floor */
        has_hi = true;
    }
    if (get_int_bound(c, s, "exclusiveMaximum", &x, path)) {
        v = kv_json_get(s, "exclusiveMaximum");
        int64_t e = (double)x >= v->num ? x - 1 : x;
        if (!has_hi || e < hi) hi = e;
        has_hi = true;
    }
    if (c->st) return "";
    if (!has_lo && !has_hi) {
        const char *p = add_prim(c, "integer");
        return strcmp(rule_name, "root") ? p : add_rule(c, "root", p);
    }
    if (has_lo && has_hi && lo > hi) {
        js_err(c, KVLM_ERR_INVALID_ARG, path, "no integer between the minimum and the maximum");
        return "";
    }
    return add_rule(c, rule_name, int_range_rule(c, has_lo, lo, has_hi, hi));
}

static const char *visit(jconv *c, const kv_json *s, const char *name, const char *path) {
    if (c->st) return "";
    if (c->depth >= JS_MAX_DEPTH) {
        js_err(c, KVLM_ERR_INVALID_ARG, path, "schema nested too deeply (over %d levels)", JS_MAX_DEPTH);
        return "";
    }
    c->depth++;
    const char *rule_name = is_reserved(name) ? js_fmt(c, "%s-", name) : *name ? name : "root";
    const char *out = "";
    const kv_json *type = NULL, *ref, *alts, *v;
    const char *tname = NULL;
    if (J_IS_BOOL(s)) {
        if (J_IS_TRUE(s))
            out = add_rule(c, rule_name, add_prim(c, "value"));
        else
            js_err(c, KVLM_ERR_UNSUPPORTED, path, "the schema false matches nothing");
        goto done;
    }
    if (!J_IS_OBJECT(s)) {
        js_err(c, KVLM_ERR_INVALID_ARG, path, "a schema must be an object or a boolean");
        goto done;
    }
    if (!check_keywords(c, s, path)) goto done;
    type = kv_json_get(s, "type");
    tname = J_IS_STRING(type) ? type->str : NULL;
    ref = kv_json_get(s, "$ref");
    alts = kv_json_get(s, "anyOf");
    if (!alts) alts = kv_json_get(s, "oneOf");
    if (ref) {
        if (!J_IS_STRING(ref)) {
            js_err(c, KVLM_ERR_INVALID_ARG, path, "\"$ref\" must be a string");
            goto done;
        }
        out = add_rule(c, rule_name, resolve_ref(c, ref->str, path));
    } else if (alts) {
        const char *kw = kv_json_get(s, "anyOf") ? "anyOf" : "oneOf";
        if (!J_IS_ARRAY(alts) || !alts->child) {
            js_err(c, KVLM_ERR_INVALID_ARG, path, "\"%s\" must be a non-empty list of schemas", kw);
            goto done;
        }
        kv_buf b = {0};
        int i = 0;
        for (const kv_json *a = alts->child; a && !c->st; a = a->next, i++) {
            const char *an = *name ? js_fmt(c, "%s-%d", name, i) : js_fmt(c, "alternative-%d", i);
            const char *r = visit(c, a, an, sub_path_i(c, path, kw, i));
            if (i) bputs(&b, " | ");
            bputs(&b, r);
        }
        out = add_rule(c, rule_name, js_take(c, &b));
    } else if (J_IS_ARRAY(type)) { /* each type with the other keywords */
        kv_buf b = {0};
        int i = 0;
        const int nm = kv_json_count(s);
        kv_json *copy = calloc((size_t)nm + 1, sizeof *copy); /* shallow: the same members, one type */
        if (!copy) {
            js_oom(c);
            goto done;
        }
        for (const kv_json *t = type->child; t && !c->st; t = t->next, i++) {
            copy[0] = *s;
            copy[0].child = NULL;
            kv_json **tail = &copy[0].child;
            int k = 1;
            for (const kv_json *m = s->child; m; m = m->next, k++) {
                copy[k] = strcmp(m->key, "type") ? *m : *t;
                copy[k].key = m->key;
                copy[k].next = NULL;
                *tail = &copy[k];
                tail = &copy[k].next;
            }
            const char *an = *name ? js_fmt(c, "%s-%d", name, i) : js_fmt(c, "alternative-%d", i);
            const char *r = visit(c, copy, an, sub_path_i(c, path, "type", i));
            if (i) bputs(&b, " | ");
            bputs(&b, r);
        }
        free(copy);
        out = add_rule(c, rule_name, js_take(c, &b));
    } else if ((v = kv_json_get(s, "const"))) {
        out = add_rule(c, rule_name, js_fmt(c, "%s space", const_literal(c, v)));
    } else if ((v = kv_json_get(s, "enum"))) {
        if (!J_IS_ARRAY(v) || !v->child) {
            js_err(c, KVLM_ERR_INVALID_ARG, path, "\"enum\" must be a non-empty list");
            goto done;
        }
        kv_buf b = {0};
        bputs(&b, "(");
        for (const kv_json *e = v->child; e; e = e->next) {
            if (e != v->child) bputs(&b, " | ");
            bputs(&b, const_literal(c, e));
        }
        bputs(&b, ") space");
        out = add_rule(c, rule_name, js_take(c, &b));
    } else if ((!type || (tname && !strcmp(tname, "object"))) &&
               (kv_json_get(s, "properties") || kv_json_get(s, "allOf") ||
                kv_json_get(s, "required") ||
                ((v = kv_json_get(s, "additionalProperties")) && !J_IS_TRUE(v)))) {
        prop *props = NULL;
        int np = 0, cap = 0;
        const kv_json *add = kv_json_get(s, "additionalProperties");
        if (add && !J_IS_BOOL(add) && !J_IS_OBJECT(add)) {
            js_err(c, KVLM_ERR_INVALID_ARG, path, "\"additionalProperties\" must be a boolean or a schema");
        } else if (collect_props(c, s, &props, &np, &cap, path, 0)) {
            out = add_rule(c, rule_name, object_rule(c, props, np, add, name, path));
        }
        free(props);
    } else if ((!type || (tname && !strcmp(tname, "array"))) &&
               (kv_json_get(s, "items") || kv_json_get(s, "prefixItems") ||
                (tname && (kv_json_get(s, "minItems") ||
                           kv_json_get(s, "maxItems"))))) {
        const kv_json *items = kv_json_get(s, "items");
        const kv_json *prefix = kv_json_get(s, "prefixItems");
        if (J_IS_ARRAY(items) && !prefix) { /* draft 4-2019 tuples */
            prefix = items;
            items = NULL;
        }
        long min, max;
        if (!get_count(c, s, "minItems", 0, &min, path) || !get_count(c, s, "maxItems", -1, &max, path)) goto done;
        if (max >= 0 && min > max) {
            js_err(c, KVLM_ERR_INVALID_ARG, path, "\"minItems\" over \"maxItems\"");
            goto done;
        }
        if (prefix) {
            if (!J_IS_ARRAY(prefix)) {
                js_err(c, KVLM_ERR_INVALID_ARG, path, "\"prefixItems\" must be a list of schemas");
                goto done;
            }
            if (kv_json_get(s, "minItems") || kv_json_get(s, "maxItems")) {
                js_err(c, KVLM_ERR_UNSUPPORTED, path, "\"minItems\"/\"maxItems\" with \"prefixItems\"");
                goto done;
            }
            kv_buf b = {0};
            bputs(&b, "\"[\" space ");
            int i = 0;
            for (const kv_json *it = prefix->child; it && !c->st; it = it->next, i++) {
                if (i) bputs(&b, " \",\" space ");
                bputs(&b, visit(c, it, sub_name(c, name, js_fmt(c, "tuple-%d", i)), sub_path_i(c, path, "prefixItems", i)));
            }
            if (items && !J_IS_FALSE(items)) { /* more items after the tuple */
                const char *ir = visit(c, items, sub_name(c, name, "item"), sub_path(c, path, "items"));
                if (i)
                    bputs(&b, js_fmt(c, " ( \",\" space %s )*", ir));
                else
                    bputs(&b, js_fmt(c, " ( %s ( \",\" space %s )* )?", ir, ir));
            }
            bputs(&b, " \"]\" space");
            out = add_rule(c, rule_name, js_take(c, &b));
        } else {
            const char *ir = items ? visit(c, items, sub_name(c, name, "item"), sub_path(c, path, "items"))
                                   : add_prim(c, "value");
            const char *rep = repetition(c, ir, min, max, "\",\" space");
            out = add_rule(c, rule_name, js_fmt(c, "\"[\" space %s%s\"]\" space", rep, *rep ? " " : ""));
        }
    } else if ((!type || (tname && !strcmp(tname, "string"))) && (v = kv_json_get(s, "pattern"))) {
        if (!J_IS_STRING(v)) {
            js_err(c, KVLM_ERR_INVALID_ARG, path, "\"pattern\" must be a string");
            goto done;
        }
        if (kv_json_get(s, "minLength") || kv_json_get(s, "maxLength") ||
            kv_json_get(s, "format")) {
            js_err(c, KVLM_ERR_UNSUPPORTED, path, "\"pattern\" with \"minLength\", \"maxLength\" or \"format\"");
            goto done;
        }
        out = visit_pattern(c, v->str, rule_name, sub_path(c, path, "pattern"));
    } else if ((!type || (tname && !strcmp(tname, "string"))) && (v = kv_json_get(s, "format"))) {
        const char *f = J_IS_STRING(v) ? v->str : "";
        const char *pn = NULL;
        if (!strcmp(f, "uuid")) pn = "uuid";
        else if (!strcmp(f, "date")) pn = "date-string";
        else if (!strcmp(f, "time")) pn = "time-string";
        else if (!strcmp(f, "date-time")) pn = "date-time-string";
        if (!pn) {
            js_err(c, KVLM_ERR_UNSUPPORTED, path, "unsupported \"format\" \"%s\" (date, time, date-time, uuid are)", f);
            goto done;
        }
        if (kv_json_get(s, "minLength") || kv_json_get(s, "maxLength")) {
            js_err(c, KVLM_ERR_UNSUPPORTED, path, "\"format\" with \"minLength\" or \"maxLength\"");
            goto done;
        }
        out = add_rule(c, rule_name, add_prim(c, pn));
    } else if (tname && !strcmp(tname, "string") &&
               (kv_json_get(s, "minLength") || kv_json_get(s, "maxLength"))) {
        long min, max;
        if (!get_count(c, s, "minLength", 0, &min, path) || !get_count(c, s, "maxLength", -1, &max, path)) goto done;
        if (max >= 0 && min > max) {
            js_err(c, KVLM_ERR_INVALID_ARG, path, "\"minLength\" over \"maxLength\"");
            goto done;
        }
        const char *ch = add_prim(c, "char");
        out = add_rule(c, rule_name, js_fmt(c, "\"\\\"\" %s \"\\\"\" space", repetition(c, ch, min, max, "")));
    } else if (tname && !strcmp(tname, "integer")) {
        out = visit_integer(c, s, rule_name, path);
    } else if (tname && !strcmp(tname, "number") &&
               (kv_json_get(s, "minimum") || kv_json_get(s, "maximum") ||
                kv_json_get(s, "exclusiveMinimum") ||
                kv_json_get(s, "exclusiveMaximum"))) {
        v = kv_json_get(s, "minimum");
        if (!J_IS_NUMBER(v) || v->num != 0 || kv_json_get(s, "maximum") ||
            kv_json_get(s, "exclusiveMinimum") ||
            kv_json_get(s, "exclusiveMaximum")) {
            js_err(c, KVLM_ERR_UNSUPPORTED, path, "bounds on a number: only \"minimum\": 0 is supported (bounds on integers are)");
            goto done;
        }
        add_prim(c, "number");
        out = add_rule(c, rule_name, "integral-part (\".\" decimal-part)? ([eE] [-+]? integral-part)? space");
    } else if (!type) {
        out = add_rule(c, rule_name, add_prim(c, "value")); /* {}: any JSON value */
    } else {
        const char *pn = tname;
        out = add_prim(c, pn);
        if (!strcmp(rule_name, "root")) out = add_rule(c, "root", out);
    }
done:
    c->depth--;
    return c->st ? "" : out;
}

/* ------------------------------------------------------------ entry */

static int cmp_rule(const void *a, const void *b) {
    return strcmp(((const js_rule *)a)->name, ((const js_rule *)b)->name);
}

kvlm_status kv_json_schema_to_gbnf(const char *text, size_t len, char **out, kvlm_error *err) {
    kv_error_clear(err);
    if (!out) return kv_fail(err, KVLM_ERR_INVALID_ARG, "json schema: NULL argument");
    *out = NULL;
    if (!text) return kv_fail(err, KVLM_ERR_INVALID_ARG, "json schema: NULL argument");
    size_t at = 0;
    bool oom = false;
    kv_json *root = kv_json_parse(text, len, &at, &oom);
    if (!root) {
        if (oom) return kv_fail(err, KVLM_ERR_NOMEM, "json schema: out of memory");
        int line = 1, col = 1;
        for (size_t i = 0; i < at && i < len; i++) {
            if (text[i] == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "json schema: malformed JSON at line %d, column %d (byte %zu)", line,
                       col, at);
    }
    jconv c = {.root = root, .err = err};
    new_rule(&c, "space", "| \" \" | \"\\n\" [ \\t]{0,20}");
    const char *r = visit(&c, root, "", "");
    if (!c.st && !find_rule(&c, "root")) add_rule(&c, "root", r);
    for (size_t i = 0; !c.st && i < c.n_rules; i++)
        if (!c.rules[i].body) c.st = kv_fail(err, KVLM_ERR_INTERNAL, "json schema: rule %s left undefined", c.rules[i].name);
    kv_buf b = {0};
    if (!c.st) {
        qsort(c.rules, c.n_rules, sizeof *c.rules, cmp_rule);
        for (size_t i = 0; i < c.n_rules; i++) {
            bputs(&b, c.rules[i].name);
            bputs(&b, " ::= ");
            bputs(&b, c.rules[i].body);
            bputs(&b, "\n");
        }
        if (!kv_buf_add_z(&b, "", 0) || b.oom) js_oom(&c);
    }
    for (size_t i = 0; i < c.n_rules; i++) {
        free(c.rules[i].name);
        free(c.rules[i].body);
    }
    free(c.rules);
    for (size_t i = 0; i < c.n_pool; i++) free(c.pool[i]);
    free(c.pool);
    free(c.refs);
    kv_json_free(root);
    if (c.st) {
        free(b.data);
        return c.st;
    }
    *out = b.data;
    return KVLM_OK;
}
