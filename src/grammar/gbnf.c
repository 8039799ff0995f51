/* GBNF parser: llama.cpp's grammar syntax (src/llama-grammar.cpp at
 * c392e5094) compiled to the flat rules of grammar_impl.h.
 *
 *   rule     ::= name "::=" alternates (newline | end)
 *   alternates: sequence ("|" sequence)*      newlines allowed after "|"
 *   sequence : item*, an item being "literal", [class], [^class], ., name,
 *              ( alternates ) (newlines allowed inside), followed by any of
 *              * + ? {m} {m,} {m,n}
 *   names    : [a-zA-Z0-9-]+; comments from # to the end of the line
 *   escapes  : \n \r \t \\ \" \[ \] \xHH \uHHHH \UHHHHHHHH
 *
 * Repetitions become generated rules as in llama.cpp: S{m,n} is S m times then
 * n - m nested optional rules (S'(k) ::= S S'(k-1) |), S{m,} is S m times then
 * S' ::= S S' |. Groups become generated rules. Classes are normalized to
 * sorted disjoint ranges, negation resolved against U+0000..U+10FFFF.
 *
 * Checks after parsing, each an error naming the rule and a position: a rule
 * defined twice, a rule used but never defined, left recursion (a rule that
 * can reach itself without consuming a character, through nullable
 * prefixes too: the matcher would never terminate on it), no root rule. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "grammar/grammar_impl.h"

#define KV_GBNF_MAX_REPEAT 2000
#define KV_GBNF_MAX_ELEMENTS (1u << 24)

typedef struct vec32 {
    uint32_t *a;
    uint32_t n, cap;
} vec32;

typedef struct prule {
    const char *name; /* into the text (generated rules: their parent's name) */
    uint32_t name_len;
    uint32_t gen;     /* 0: named; k > 0: the k-th rule generated from `name` */
    vec32 el;
    bool defined;
    size_t ref_off, def_off; /* first reference, definition (offsets in the text) */
} prule;

typedef struct parser {
    const char *text, *p, *end;
    prule *rules;
    uint32_t n_rules, cap_rules;
    vec32 rng;     /* class ranges of every class, pairs */
    vec32 cls;     /* per class: off, n (into rng pairs) */
    vec32 tmp;     /* raw ranges of the class being parsed */
    kvlm_error *err;
    kvlm_status st;
} parser;

static bool v_push(parser *P, vec32 *v, uint32_t x) {
    if (P->st) return false;
    if (v->n == v->cap) {
        uint32_t cap = v->cap ? v->cap * 2 : 16;
        uint32_t *a = cap > v->cap ? realloc(v->a, (size_t)cap * sizeof *a) : NULL;
        if (!a) {
            P->st = kv_fail(P->err, KVLM_ERR_NOMEM, "grammar: out of memory");
            return false;
        }
        v->a = a;
        v->cap = cap;
    }
    v->a[v->n++] = x;
    return true;
}

static void where(const parser *P, const char *at, int *line, int *col) {
    int l = 1, c = 1;
    for (const char *q = P->text; q < at && q < P->end; q++) {
        if (*q == '\n') {
            l++;
            c = 1;
        } else {
            c++;
        }
    }
    *line = l;
    *col = c;
}

static bool perr(parser *P, const char *at, const char *fmt, ...) KV_PRINTF(3, 4);
static bool perr(parser *P, const char *at, const char *fmt, ...) {
    if (P->st) return false;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int line, col;
    where(P, at, &line, &col);
    P->st = kv_fail(P->err, KVLM_ERR_INVALID_ARG, "grammar: line %d, column %d: %s", line, col, msg);
    return false;
}

static inline int peek(const parser *P, size_t k) {
    return P->p + k < P->end ? (unsigned char)P->p[k] : -1;
}

static bool is_word(int c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

static void skip_space(parser *P, bool newline_ok) {
    while (P->p < P->end) {
        const char c = *P->p;
        if (c == '#') {
            while (P->p < P->end && *P->p != '\r' && *P->p != '\n') P->p++;
        } else if (c == ' ' || c == '\t' || (newline_ok && (c == '\r' || c == '\n'))) {
            P->p++;
        } else {
            break;
        }
    }
}

/* The rule for a name (created on first use). */
static bool rule_named(parser *P, const char *name, uint32_t len, uint32_t *id) {
    for (uint32_t i = 0; i < P->n_rules; i++) {
        const prule *r = &P->rules[i];
        if (!r->gen && r->name_len == len && memcmp(r->name, name, len) == 0) {
            *id = i;
            return true;
        }
    }
    if (P->n_rules == P->cap_rules) {
        uint32_t cap = P->cap_rules ? P->cap_rules * 2 : 32;
        prule *r = realloc(P->rules, (size_t)cap * sizeof *r);
        if (!r) {
            P->st = kv_fail(P->err, KVLM_ERR_NOMEM, "grammar: out of memory");
            return false;
        }
        P->rules = r;
        P->cap_rules = cap;
    }
    prule *r = &P->rules[P->n_rules];
    memset(r, 0, sizeof *r);
    r->name = name;
    r->name_len = len;
    r->ref_off = (size_t)(name - P->text);
    *id = P->n_rules++;
    return true;
}

static bool rule_generated(parser *P, uint32_t parent, uint32_t *id) {
    const prule par = P->rules[parent];
    uint32_t n_gen = 0;
    for (uint32_t i = 0; i < P->n_rules; i++)
        if (P->rules[i].gen && P->rules[i].name == par.name && P->rules[i].name_len == par.name_len) n_gen++;
    /* a name no user rule can have: the empty-length lookup never matches generated rules */
    if (!rule_named(P, "", 0, id)) return false;
    prule *r = &P->rules[*id];
    r->name = par.name;
    r->name_len = par.name_len;
    r->gen = n_gen + 1;
    r->defined = true;
    r->def_off = r->ref_off = (size_t)(P->p - P->text);
    return true;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* One character of a literal or class (an escape or one UTF-8 character). */
static bool parse_char(parser *P, uint32_t *cp) {
    const char *at = P->p;
    int c = peek(P, 0);
    if (c < 0) return perr(P, at, "unexpected end of input");
    if (c == '\\') {
        int e = peek(P, 1);
        int nhex = 0;
        switch (e) {
        case 'x': nhex = 2; break;
        case 'u': nhex = 4; break;
        case 'U': nhex = 8; break;
        case 't': *cp = '\t'; P->p += 2; return true;
        case 'r': *cp = '\r'; P->p += 2; return true;
        case 'n': *cp = '\n'; P->p += 2; return true;
        case '\\': case '"': case '[': case ']': *cp = (uint32_t)e; P->p += 2; return true;
        case -1: return perr(P, at, "unexpected end of input after '\\'");
        default:
            if (e >= 0x20 && e < 0x7f) return perr(P, at, "unknown escape '\\%c'", e);
            return perr(P, at, "unknown escape");
        }
        uint32_t v = 0;
        for (int i = 0; i < nhex; i++) {
            int h = hexval(peek(P, 2 + (size_t)i));
            if (h < 0) return perr(P, at, "expecting %d hex digits after '\\%c'", nhex, e);
            v = v << 4 | (uint32_t)h;
        }
        if (v > KV_MAX_CP) return perr(P, at, "code point U+%X is beyond U+10FFFF", v);
        *cp = v;
        P->p += 2 + nhex;
        return true;
    }
    /* UTF-8 */
    const unsigned char b0 = (unsigned char)c;
    int n = b0 < 0x80 ? 1 : (b0 >> 5) == 6 ? 2 : (b0 >> 4) == 14 ? 3 : (b0 >> 3) == 30 ? 4 : 0;
    if (!n) return perr(P, at, "invalid UTF-8");
    uint32_t v = n == 1 ? b0 : n == 2 ? (b0 & 0x1f) : n == 3 ? (b0 & 0x0f) : (b0 & 0x07);
    for (int i = 1; i < n; i++) {
        int b = peek(P, (size_t)i);
        if (b < 0 || (b & 0xc0) != 0x80) return perr(P, at, "invalid UTF-8");
        v = v << 6 | ((uint32_t)b & 0x3f);
    }
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (v < min_cp[n] || v > KV_MAX_CP || (v >= 0xD800 && v <= 0xDFFF)) return perr(P, at, "invalid UTF-8");
    *cp = v;
    P->p += n;
    return true;
}

static int cmp_pair(const void *a, const void *b) {
    const uint32_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : (x[1] < y[1] ? -1 : x[1] > y[1]);
}

/* Makes a class of the raw ranges in P->tmp (pairs); returns its id. */
static bool make_class(parser *P, bool negate, uint32_t *id) {
    uint32_t n = P->tmp.n / 2;
    if (n) qsort(P->tmp.a, n, 2 * sizeof(uint32_t), cmp_pair); /* [] has no ranges (and tmp may have no array) */
    /* merge into tmp itself */
    uint32_t m = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t lo = P->tmp.a[2 * i], hi = P->tmp.a[2 * i + 1];
        if (m && lo <= P->tmp.a[2 * m - 1] + 1) {
            if (hi > P->tmp.a[2 * m - 1]) P->tmp.a[2 * m - 1] = hi;
        } else {
            P->tmp.a[2 * m] = lo;
            P->tmp.a[2 * m + 1] = hi;
            m++;
        }
    }
    const uint32_t off = P->rng.n / 2;
    if (negate) {
        uint32_t next = 0; /* first code point not yet covered */
        bool done = false;
        for (uint32_t i = 0; i < m && !done; i++) {
            uint32_t lo = P->tmp.a[2 * i], hi = P->tmp.a[2 * i + 1];
            if (lo > next) {
                v_push(P, &P->rng, next);
                v_push(P, &P->rng, lo - 1);
            }
            if (hi >= KV_MAX_CP) done = true;
            else next = hi + 1;
        }
        if (!done) {
            v_push(P, &P->rng, next);
            v_push(P, &P->rng, KV_MAX_CP);
        }
    } else {
        for (uint32_t i = 0; i < 2 * m; i++) v_push(P, &P->rng, P->tmp.a[i]);
    }
    *id = P->cls.n / 2;
    v_push(P, &P->cls, off);
    v_push(P, &P->cls, P->rng.n / 2 - off);
    P->tmp.n = 0;
    return !P->st;
}

static bool push_el(parser *P, uint32_t rule, uint32_t e) {
    if (P->rules[rule].el.n >= KV_GBNF_MAX_ELEMENTS) return perr(P, P->p, "grammar too large");
    return v_push(P, &P->rules[rule].el, e);
}

static bool char_class(parser *P, uint32_t lo, uint32_t hi, uint32_t *e) {
    P->tmp.n = 0;
    if (lo <= hi) {
        v_push(P, &P->tmp, lo);
        v_push(P, &P->tmp, hi);
    }
    uint32_t id;
    if (!make_class(P, false, &id)) return false;
    *e = KV_GE(KV_GE_CLASS, id);
    return true;
}

static bool parse_alternates(parser *P, uint32_t rule, bool nested);

static bool parse_uint(parser *P, uint32_t *v) {
    const char *at = P->p;
    if (!(peek(P, 0) >= '0' && peek(P, 0) <= '9')) return perr(P, at, "expecting an integer");
    uint64_t x = 0;
    while (peek(P, 0) >= '0' && peek(P, 0) <= '9') {
        x = x * 10 + (uint64_t)(peek(P, 0) - '0');
        if (x > KV_GBNF_MAX_REPEAT) return perr(P, at, "repetition count above %d", KV_GBNF_MAX_REPEAT);
        P->p++;
    }
    *v = (uint32_t)x;
    return true;
}

/* Applies {min,max} (max < 0: unbounded) to the elements from `start` on. */
static bool repeat(parser *P, uint32_t rule, uint32_t start, int min, int max, const char *at) {
    if (start == P->rules[rule].el.n) return perr(P, at, "nothing before the repetition operator");
    const uint32_t n_prev = P->rules[rule].el.n - start;
    uint32_t *prev = malloc((size_t)n_prev * sizeof *prev);
    if (!prev) {
        P->st = kv_fail(P->err, KVLM_ERR_NOMEM, "grammar: out of memory");
        return false;
    }
    memcpy(prev, P->rules[rule].el.a + start, (size_t)n_prev * sizeof *prev);
    if ((uint64_t)n_prev * (uint64_t)(min > 0 ? min : 1) > KV_GBNF_MAX_ELEMENTS) {
        free(prev);
        return perr(P, at, "grammar too large");
    }
    if (min == 0) P->rules[rule].el.n = start;
    for (int i = 1; i < min; i++)
        for (uint32_t k = 0; k < n_prev; k++) push_el(P, rule, prev[k]);
    const int n_opt = max < 0 ? 1 : max - min;
    uint32_t last = 0;
    for (int i = 0; i < n_opt && !P->st; i++) {
        uint32_t rec;
        if (!rule_generated(P, rule, &rec)) break;
        for (uint32_t k = 0; k < n_prev; k++) push_el(P, rec, prev[k]);
        if (i > 0 || max < 0) push_el(P, rec, KV_GE(KV_GE_REF, max < 0 ? rec : last));
        push_el(P, rec, KV_GE(KV_GE_ALT, 0));
        push_el(P, rec, KV_GE(KV_GE_END, 0));
        last = rec;
    }
    if (n_opt > 0) push_el(P, rule, KV_GE(KV_GE_REF, last));
    free(prev);
    return !P->st;
}

static bool parse_sequence(parser *P, uint32_t rule, bool nested) {
    uint32_t last = P->rules[rule].el.n;
    while (!P->st && P->p < P->end) {
        const char *at = P->p;
        const int c = peek(P, 0);
        if (c == '"') {
            P->p++;
            last = P->rules[rule].el.n;
            for (;;) {
                if (P->p >= P->end) return perr(P, at, "unterminated string literal");
                if (*P->p == '"') break;
                uint32_t cp, e;
                if (!parse_char(P, &cp) || !char_class(P, cp, cp, &e) || !push_el(P, rule, e)) return false;
            }
            P->p++;
            skip_space(P, nested);
        } else if (c == '[') {
            P->p++;
            bool neg = false;
            if (peek(P, 0) == '^') {
                neg = true;
                P->p++;
            }
            last = P->rules[rule].el.n;
            P->tmp.n = 0;
            for (;;) {
                if (P->p >= P->end) return perr(P, at, "unterminated character class");
                if (*P->p == ']') break;
                uint32_t lo, hi;
                if (!parse_char(P, &lo)) return false;
                hi = lo;
                if (peek(P, 0) == '-' && peek(P, 1) != ']') {
                    if (peek(P, 1) < 0) return perr(P, P->p, "unexpected end of input in a range");
                    const char *rat = P->p;
                    P->p++;
                    if (!parse_char(P, &hi)) return false;
                    if (hi < lo) return perr(P, rat, "range with its end (U+%04X) before its start (U+%04X)", hi, lo);
                }
                v_push(P, &P->tmp, lo);
                v_push(P, &P->tmp, hi);
            }
            P->p++;
            uint32_t id;
            if (!make_class(P, neg, &id) || !push_el(P, rule, KV_GE(KV_GE_CLASS, id))) return false;
            skip_space(P, nested);
        } else if (is_word(c)) {
            const char *name = P->p;
            while (is_word(peek(P, 0))) P->p++;
            uint32_t id;
            if (!rule_named(P, name, (uint32_t)(P->p - name), &id)) return false;
            last = P->rules[rule].el.n;
            if (!push_el(P, rule, KV_GE(KV_GE_REF, id))) return false;
            skip_space(P, nested);
        } else if (c == '(') {
            P->p++;
            skip_space(P, true);
            uint32_t sub;
            if (!rule_generated(P, rule, &sub) || !parse_alternates(P, sub, true)) return false;
            if (peek(P, 0) != ')') {
                int l, col;
                where(P, at, &l, &col);
                return perr(P, P->p, "expecting ')' to close the '(' of line %d, column %d", l, col);
            }
            P->p++;
            last = P->rules[rule].el.n;
            if (!push_el(P, rule, KV_GE(KV_GE_REF, sub))) return false;
            skip_space(P, nested);
        } else if (c == '.') {
            P->p++;
            uint32_t e;
            last = P->rules[rule].el.n;
            if (!char_class(P, 0, KV_MAX_CP, &e) || !push_el(P, rule, e)) return false;
            skip_space(P, nested);
        } else if (c == '*' || c == '+' || c == '?') {
            P->p++;
            skip_space(P, nested);
            if (!repeat(P, rule, last, c == '+' ? 1 : 0, c == '?' ? 1 : -1, at)) return false;
        } else if (c == '{') {
            P->p++;
            skip_space(P, nested);
            uint32_t mn, mx;
            int max;
            if (!parse_uint(P, &mn)) return false;
            skip_space(P, nested);
            if (peek(P, 0) == '}') {
                max = (int)mn;
                P->p++;
            } else if (peek(P, 0) == ',') {
                P->p++;
                skip_space(P, nested);
                max = -1;
                if (peek(P, 0) >= '0' && peek(P, 0) <= '9') {
                    if (!parse_uint(P, &mx)) return false;
                    if (mx < mn) return perr(P, at, "repetition {%u,%u} with its maximum below its minimum", mn, mx);
                    max = (int)mx;
                    skip_space(P, nested);
                }
                if (peek(P, 0) != '}') return perr(P, P->p, "expecting '}'");
                P->p++;
            } else {
                return perr(P, P->p, "expecting ',' or '}'");
            }
            skip_space(P, nested);
            if (!repeat(P, rule, last, (int)mn, max, at)) return false;
        } else {
            break;
        }
    }
    return !P->st;
}

static bool parse_alternates(parser *P, uint32_t rule, bool nested) {
    if (!parse_sequence(P, rule, nested)) return false;
    while (peek(P, 0) == '|') {
        if (!push_el(P, rule, KV_GE(KV_GE_ALT, 0))) return false;
        P->p++;
        skip_space(P, true);
        if (!parse_sequence(P, rule, nested)) return false;
    }
    return push_el(P, rule, KV_GE(KV_GE_END, 0));
}

static bool parse_rule(parser *P) {
    const char *name = P->p;
    if (!is_word(peek(P, 0))) {
        if (peek(P, 0) >= 0x20 && peek(P, 0) < 0x7f)
            return perr(P, P->p, "expecting a rule name, found '%c'", peek(P, 0));
        return perr(P, P->p, "expecting a rule name");
    }
    while (is_word(peek(P, 0))) P->p++;
    const uint32_t len = (uint32_t)(P->p - name);
    uint32_t id;
    if (!rule_named(P, name, len, &id)) return false;
    if (P->rules[id].defined) return perr(P, name, "rule '%.*s' is defined twice", (int)len, name);
    P->rules[id].defined = true;
    P->rules[id].def_off = (size_t)(name - P->text);
    skip_space(P, false);
    if (!(peek(P, 0) == ':' && peek(P, 1) == ':' && peek(P, 2) == '=')) return perr(P, P->p, "expecting '::='");
    P->p += 3;
    skip_space(P, true);
    if (!parse_alternates(P, id, false)) return false;
    if (peek(P, 0) == '\r') {
        P->p += peek(P, 1) == '\n' ? 2 : 1;
    } else if (peek(P, 0) == '\n') {
        P->p++;
    } else if (P->p < P->end) {
        if (peek(P, 0) == ')') return perr(P, P->p, "')' without a matching '('");
        return perr(P, P->p, "expecting a newline or the end of the rule");
    }
    skip_space(P, true);
    return true;
}

/* ------------------------------------------------------------ checks */

static bool rule_error(parser *P, uint32_t r, size_t off, const char *what) {
    const prule *x = &P->rules[r];
    if (x->gen) return perr(P, P->text + off, "%s in a group or repetition of rule '%.*s'", what, (int)x->name_len, x->name);
    return perr(P, P->text + off, "%s in rule '%.*s'", what, (int)x->name_len, x->name);
}

/* DFS over "r can start with s" edges; color 1 on the path, 2 done. */
static bool left_dfs(parser *P, const bool *nullable, uint8_t *color, uint32_t r) {
    color[r] = 1;
    const vec32 *el = &P->rules[r].el;
    bool at_start = true;
    for (uint32_t i = 0; i < el->n; i++) {
        const uint32_t e = el->a[i];
        const uint32_t t = KV_GE_TYPE(e);
        if (t == KV_GE_ALT || t == KV_GE_END) {
            at_start = true;
            continue;
        }
        if (!at_start) continue;
        if (t == KV_GE_CLASS) {
            at_start = false;
            continue;
        }
        const uint32_t s = KV_GE_VAL(e);
        if (color[s] == 1) return rule_error(P, s, P->rules[s].def_off, "left recursion");
        if (color[s] == 0 && !left_dfs(P, nullable, color, s)) return false;
        if (!nullable[s]) at_start = false;
    }
    color[r] = 2;
    return true;
}

static bool check_rules(parser *P) {
    const uint32_t n = P->n_rules;
    for (uint32_t r = 0; r < n; r++)
        if (!P->rules[r].defined) {
            const prule *x = &P->rules[r];
            return perr(P, P->text + x->ref_off, "undefined rule '%.*s'", (int)x->name_len, x->name);
        }
    bool *nullable = calloc(n, sizeof *nullable);
    uint8_t *color = calloc(n, 1);
    if (!nullable || !color) {
        free(nullable);
        free(color);
        P->st = kv_fail(P->err, KVLM_ERR_NOMEM, "grammar: out of memory");
        return false;
    }
    for (bool changed = true; changed;) {
        changed = false;
        for (uint32_t r = 0; r < n; r++) {
            if (nullable[r]) continue;
            const vec32 *el = &P->rules[r].el;
            bool ok = true;
            for (uint32_t i = 0; i < el->n && !nullable[r]; i++) {
                const uint32_t e = el->a[i], t = KV_GE_TYPE(e);
                if (t == KV_GE_ALT || t == KV_GE_END) {
                    if (ok) nullable[r] = changed = true;
                    ok = true;
                } else if (t == KV_GE_CLASS || !nullable[KV_GE_VAL(e)]) {
                    ok = false;
                }
            }
        }
    }
    bool good = true;
    for (uint32_t r = 0; r < n && good; r++)
        if (!color[r]) good = left_dfs(P, nullable, color, r);
    free(nullable);
    free(color);
    return good;
}

/* ------------------------------------------------------------ entry */

kvlm_status kv_grammar_parse(const char *text, size_t len, const char *root, kv_grammar **out, kvlm_error *err) {
    if (!out || (!text && len)) return kv_fail(err, KVLM_ERR_INVALID_ARG, "grammar: NULL argument");
    *out = NULL;
    if (!root) root = "root";
    parser P = {.text = text ? text : "", .err = err};
    P.p = P.text;
    P.end = P.text + len;
    skip_space(&P, true);
    while (!P.st && P.p < P.end) parse_rule(&P);
    if (!P.st && P.n_rules == 0) P.st = kv_fail(err, KVLM_ERR_INVALID_ARG, "grammar: no rules (empty grammar)");
    if (!P.st) check_rules(&P);
    uint32_t root_id = UINT32_MAX;
    if (!P.st) {
        const size_t rl = strlen(root);
        for (uint32_t i = 0; i < P.n_rules; i++)
            if (!P.rules[i].gen && P.rules[i].name_len == rl && memcmp(P.rules[i].name, root, rl) == 0) root_id = i;
        if (root_id == UINT32_MAX)
            P.st = kv_fail(err, KVLM_ERR_INVALID_ARG, "grammar: no rule named '%s' (the start rule)", root);
    }
    kv_grammar *g = NULL;
    if (!P.st) {
        g = calloc(1, sizeof *g);
        uint64_t n_el = 0;
        for (uint32_t i = 0; i < P.n_rules; i++) n_el += P.rules[i].el.n;
        if (g) {
            g->n_rules = P.n_rules;
            g->n_el = (uint32_t)n_el;
            g->el = malloc((size_t)(n_el ? n_el : 1) * sizeof *g->el);
            g->rule_start = malloc((size_t)P.n_rules * sizeof *g->rule_start);
            g->n_cls = P.cls.n / 2;
            g->cls = calloc(g->n_cls ? g->n_cls : 1, sizeof *g->cls);
            g->rng = malloc((size_t)(P.rng.n ? P.rng.n : 1) * sizeof *g->rng);
        }
        if (!g || !g->el || !g->rule_start || !g->cls || !g->rng || n_el > KV_GBNF_MAX_ELEMENTS) {
            kv_grammar_free(g);
            g = NULL;
            P.st = n_el > KV_GBNF_MAX_ELEMENTS ? kv_fail(err, KVLM_ERR_INVALID_ARG, "grammar: too large")
                                               : kv_fail(err, KVLM_ERR_NOMEM, "grammar: out of memory");
        } else {
            uint32_t k = 0;
            for (uint32_t i = 0; i < P.n_rules; i++) {
                g->rule_start[i] = k;
                memcpy(g->el + k, P.rules[i].el.a, (size_t)P.rules[i].el.n * sizeof *g->el);
                k += P.rules[i].el.n;
            }
            if (P.rng.n) memcpy(g->rng, P.rng.a, (size_t)P.rng.n * sizeof *g->rng);
            for (uint32_t c = 0; c < g->n_cls; c++) {
                kv_gclass *cl = &g->cls[c];
                cl->off = P.cls.a[2 * c];
                cl->n = P.cls.a[2 * c + 1];
                for (uint32_t j = 0; j < cl->n; j++) {
                    uint32_t lo = g->rng[2 * (cl->off + j)], hi = g->rng[2 * (cl->off + j) + 1];
                    for (uint32_t x = lo; x <= hi && x < 128; x++) cl->ascii[x >> 6] |= 1ull << (x & 63);
                }
            }
            g->root = root_id;
        }
    }
    for (uint32_t i = 0; i < P.n_rules; i++) free(P.rules[i].el.a);
    free(P.rules);
    free(P.rng.a);
    free(P.cls.a);
    free(P.tmp.a);
    if (P.st) return P.st;
    *out = g;
    return KVLM_OK;
}

void kv_grammar_free(kv_grammar *g) {
    if (!g) return;
    free(g->el);
    free(g->rule_start);
    free(g->cls);
    free(g->rng);
    free(g);
}

int32_t kv_grammar_n_rules(const kv_grammar *g) { return g ? (int32_t)g->n_rules : 0; }
