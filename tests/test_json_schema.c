/* JSON Schema to grammar (kvlm_json_schema_to_gbnf, kvlm_grammar_new_json_schema;
 * src/grammar/jschema.c): for a few dozen schemas (function-call arguments,
 * nested objects, bounded arrays, enums, const, anyOf/oneOf, $ref, patterns,
 * formats, integer ranges), hand-written valid instances are accepted and
 * invalid ones rejected by the compiled grammar at the byte level, and text
 * generated under the grammar by a random-weight model over many seeds parses
 * with cJSON and is valid against the schema, checked by a small validator
 * written here (independent of the converter: it reads the schema, and uses
 * PCRE2 for patterns). Malformed and unsupported schemas give clear errors.
 *
 * Schemas and instances are written with ' for " (q() turns them back). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <cmocka.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "grammar/grammar.h"
#include "kvlm.h"
#include "test_util.h"

#define SYNTH KVLM_MODELS_DIR "/llama/synth15M-q8_0.gguf"

/* ' -> " (in one of 8 static buffers used in turn: copy what must live longer) */
static const char *q(const char *s) {
    static char bufs[8][8192];
    static int k;
    char *b = bufs[k++ & 7];
    size_t n = strlen(s);
    assert_true(n < sizeof bufs[0]);
    for (size_t i = 0; i <= n; i++) b[i] = s[i] == '\'' ? '"' : s[i];
    return b;
}

/* ------------------------------------------------------------ an independent validator */

static char g_why[512];

static bool why(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static bool why(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_why, sizeof g_why, fmt, ap);
    va_end(ap);
    return false;
}

static const cJSON *pointer(const cJSON *root, const char *ref) {
    if (ref[0] != '#') return NULL;
    const cJSON *t = root;
    const char *p = ref + 1;
    while (*p == '/') {
        p++;
        char tok[256];
        size_t n = 0;
        while (*p && *p != '/' && n + 1 < sizeof tok) tok[n++] = *p++;
        tok[n] = 0;
        t = cJSON_IsArray(t) ? cJSON_GetArrayItem(t, atoi(tok)) : cJSON_GetObjectItemCaseSensitive(t, tok);
        if (!t) return NULL;
    }
    return t;
}

static size_t utf8_len(const char *s) {
    size_t n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

static bool re_search(const char *pattern, const char *subject, bool anchored) {
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_ALT_BSUX | (anchored ? PCRE2_ANCHORED : 0),
                                   &ec, &eo, NULL);
    if (!re) fail_msg("validator: pcre2 cannot compile %s", pattern);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    int rc = pcre2_match(re, (PCRE2_SPTR)subject, PCRE2_ZERO_TERMINATED, 0, 0, md, NULL);
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return rc >= 0;
}

static bool in_range(const char *s, int at, int len, int lo, int hi) {
    int v = 0;
    for (int i = at; i < at + len; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        v = v * 10 + (s[i] - '0');
    }
    return v >= lo && v <= hi;
}

static bool is_date(const char *s) {
    return strlen(s) >= 10 && in_range(s, 0, 4, 0, 9999) && s[4] == '-' && in_range(s, 5, 2, 1, 12) && s[7] == '-' &&
           in_range(s, 8, 2, 1, 31);
}

/* HH:MM:SS[.mmm](Z|+HH:MM|-HH:MM), from s; the length used, 0 if not one */
static size_t time_len(const char *s) {
    if (strlen(s) < 9 || !in_range(s, 0, 2, 0, 23) || s[2] != ':' || !in_range(s, 3, 2, 0, 59) || s[5] != ':' ||
        !in_range(s, 6, 2, 0, 59))
        return 0;
    size_t i = 8;
    if (s[i] == '.') {
        if (!in_range(s, (int)i + 1, 3, 0, 999)) return 0;
        i += 4;
    }
    if (s[i] == 'Z') return i + 1;
    if ((s[i] == '+' || s[i] == '-') && in_range(s, (int)i + 1, 2, 0, 23) && s[i + 3] == ':' &&
        in_range(s, (int)i + 4, 2, 0, 59))
        return i + 6;
    return 0;
}

static bool is_uuid(const char *s) {
    if (strlen(s) != 36) return false;
    for (int i = 0; i < 36; i++) {
        const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !strchr("0123456789abcdefABCDEF", s[i]) || !s[i]) return false;
    }
    return true;
}

static bool type_ok(const char *t, const cJSON *x) {
    if (!strcmp(t, "string")) return cJSON_IsString(x);
    if (!strcmp(t, "number")) return cJSON_IsNumber(x);
    if (!strcmp(t, "integer")) return cJSON_IsNumber(x) && x->valuedouble == (double)(long long)x->valuedouble;
    if (!strcmp(t, "boolean")) return cJSON_IsBool(x);
    if (!strcmp(t, "null")) return cJSON_IsNull(x);
    if (!strcmp(t, "object")) return cJSON_IsObject(x);
    if (!strcmp(t, "array")) return cJSON_IsArray(x);
    fail_msg("validator: type %s", t);
    return false;
}

static bool valid(const cJSON *root, const cJSON *s, const cJSON *x);

static bool valid(const cJSON *root, const cJSON *s, const cJSON *x) {
    if (cJSON_IsBool(s)) return cJSON_IsTrue(s) ? true : why("false schema");
    const cJSON *k;
    if ((k = cJSON_GetObjectItemCaseSensitive(s, "$ref"))) {
        const cJSON *t = pointer(root, k->valuestring);
        if (!t) fail_msg("validator: ref %s", k->valuestring);
        if (!valid(root, t, x)) return false;
    }
    if ((k = cJSON_GetObjectItemCaseSensitive(s, "type"))) {
        bool ok = false;
        if (cJSON_IsString(k)) ok = type_ok(k->valuestring, x);
        for (const cJSON *t = cJSON_IsArray(k) ? k->child : NULL; t; t = t->next) ok = ok || type_ok(t->valuestring, x);
        if (!ok) return why("wrong type");
    }
    if ((k = cJSON_GetObjectItemCaseSensitive(s, "enum"))) {
        bool ok = false;
        for (const cJSON *e = k->child; e && !ok; e = e->next) ok = cJSON_Compare(e, x, true);
        if (!ok) return why("not in enum");
    }
    if ((k = cJSON_GetObjectItemCaseSensitive(s, "const")) && !cJSON_Compare(k, x, true)) return why("not the const");
    if ((k = cJSON_GetObjectItemCaseSensitive(s, "anyOf"))) {
        bool ok = false;
        for (const cJSON *a = k->child; a && !ok; a = a->next) ok = valid(root, a, x);
        if (!ok) return why("no anyOf alternative");
    }
    if ((k = cJSON_GetObjectItemCaseSensitive(s, "oneOf"))) {
        int n = 0;
        for (const cJSON *a = k->child; a; a = a->next) n += valid(root, a, x);
        if (n != 1) return why("%d oneOf alternatives", n);
    }
    if ((k = cJSON_GetObjectItemCaseSensitive(s, "allOf")))
        for (const cJSON *a = k->child; a; a = a->next)
            if (!valid(root, a, x)) return false;
    if (cJSON_IsObject(x)) {
        const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
        const cJSON *add = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
        for (const cJSON *m = x->child; m; m = m->next) {
            const cJSON *ps = props ? cJSON_GetObjectItemCaseSensitive(props, m->string) : NULL;
            if (ps) {
                if (!valid(root, ps, m)) return false;
                for (const cJSON *m2 = m->next; m2; m2 = m2->next)
                    if (!strcmp(m2->string, m->string)) return why("property %s twice", m->string);
            } else if (add && !valid(root, add, m)) {
                return why("additional property %s", m->string);
            }
        }
        if ((k = cJSON_GetObjectItemCaseSensitive(s, "required")))
            for (const cJSON *r = k->child; r; r = r->next)
                if (!cJSON_GetObjectItemCaseSensitive(x, r->valuestring)) return why("missing %s", r->valuestring);
    }
    if (cJSON_IsArray(x)) {
        const int n = cJSON_GetArraySize(x);
        const cJSON *pre = cJSON_GetObjectItemCaseSensitive(s, "prefixItems");
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
        int np = 0;
        if (pre) {
            np = cJSON_GetArraySize(pre);
            for (int i = 0; i < np && i < n; i++)
                if (!valid(root, cJSON_GetArrayItem(pre, i), cJSON_GetArrayItem(x, i))) return false;
        }
        if (items)
            for (int i = np; i < n; i++)
                if (!valid(root, items, cJSON_GetArrayItem(x, i))) return false;
        if ((k = cJSON_GetObjectItemCaseSensitive(s, "minItems")) && n < k->valueint) return why("too few items");
        if ((k = cJSON_GetObjectItemCaseSensitive(s, "maxItems")) && n > k->valueint) return why("too many items");
    }
    if (cJSON_IsString(x)) {
        const char *v = x->valuestring;
        if ((k = cJSON_GetObjectItemCaseSensitive(s, "minLength")) && utf8_len(v) < (size_t)k->valueint) return why("short");
        if ((k = cJSON_GetObjectItemCaseSensitive(s, "maxLength")) && utf8_len(v) > (size_t)k->valueint) return why("long");
        if ((k = cJSON_GetObjectItemCaseSensitive(s, "pattern")) && !re_search(k->valuestring, v, false))
            return why("pattern %s", k->valuestring);
        if ((k = cJSON_GetObjectItemCaseSensitive(s, "format"))) {
            const char *f = k->valuestring;
            bool ok = false;
            if (!strcmp(f, "date"))
                ok = is_date(v) && strlen(v) == 10;
            else if (!strcmp(f, "time"))
                ok = time_len(v) && time_len(v) == strlen(v);
            else if (!strcmp(f, "date-time"))
                ok = is_date(v) && v[10] == 'T' && time_len(v + 11) && time_len(v + 11) == strlen(v + 11);
            else if (!strcmp(f, "uuid"))
                ok = is_uuid(v);
            else
                fail_msg("validator: format %s", f);
            if (!ok) return why("format %s", f);
        }
    }
    if (cJSON_IsNumber(x)) {
        const double v = x->valuedouble;
        if ((k = cJSON_GetObjectItemCaseSensitive(s, "minimum")) && v < k->valuedouble) return why("under minimum");
        if ((k = cJSON_GetObjectItemCaseSensitive(s, "maximum")) && v > k->valuedouble) return why("over maximum");
        if ((k = cJSON_GetObjectItemCaseSensitive(s, "exclusiveMinimum")) && v <= k->valuedouble) return why("<= exclusiveMinimum");
        if ((k = cJSON_GetObjectItemCaseSensitive(s, "exclusiveMaximum")) && v >= k->valuedouble) return why(">= exclusiveMaximum");
    }
    return true;
}

/* text is valid JSON and valid against schema */
static bool valid_text(const char *schema, const char *text) {
    cJSON *s = cJSON_Parse(schema);
    if (!s) fail_msg("validator: schema does not parse: %s", schema);
    cJSON *x = cJSON_Parse(text);
    bool ok = x ? valid(s, s, x) : why("not JSON");
    cJSON_Delete(x);
    cJSON_Delete(s);
    return ok;
}

/* ------------------------------------------------------------ schemas */

typedef struct scase {
    const char *name;
    const char *schema;
    bool bounded; /* a finite language: generation always finishes */
    const char *valid[10];
    const char *invalid[10]; /* invalid against the schema: the grammar and the validator reject them */
    const char *layout[4];   /* valid against the schema, but not in the grammar's layout (order of properties,
                                additional properties when the schema does not say), or that cJSON takes
                                though JSON does not (leading zeros) */
} scase;

static const scase k_cases[] = {
    {"weather-call",
     "{'type':'object','properties':{'location':{'type':'string','maxLength':12},'unit':{'enum':['celsius','fahrenheit']}},"
     "'required':['location','unit'],'additionalProperties':false}",
     true,
     {"{'location':'Paris','unit':'celsius'}", "{ 'location' : '' , 'unit' :'fahrenheit' }",
      "{\n  'location': 'S\\u00e3o Paulo',\n  'unit': 'celsius'\n}", "{'location':'a\\'b\\\\c','unit':'celsius'}"},
     {"{'location':'Paris'}", "{'location':'Paris','unit':'kelvin'}", "{'location':'Paris','unit':'celsius','x':1}",
      "{'location':'Paris Paris Paris','unit':'celsius'}", "{'location':5,'unit':'celsius'}", "[]", "{'location':'a\\qb','unit':'celsius'}"},
     {"{'unit':'celsius','location':'Paris'}"}},
    {"search-call",
     "{'type':'object','properties':{'query':{'type':'string','minLength':1,'maxLength':16},'limit':{'type':'integer','minimum':1,'maximum':50},"
     "'safe':{'type':'boolean'},'lang':{'enum':['en','fr','de']}},'required':['query']}",
     true,
     {"{'query':'cats'}", "{'query':'cats','limit':50}", "{'query':'x','safe':false,'lang':'fr'}",
      "{'query':'x','limit':1,'safe':true,'lang':'de'}", "{'query':'x','lang':'en'}"},
     {"{'query':''}", "{'query':'x','limit':0}", "{'query':'x','limit':51}", "{'limit':3}", "{'query':'x','limit':1.5}",
      "{'query':'x','safe':'yes'}"},
     /* no additionalProperties: none (as llama.cpp), though JSON Schema would allow them */
     {"{'query':'x','lang':'en','safe':true}", "{'query':'x','other':1}"}},
    {"nested",
     "{'type':'object','properties':{'name':{'type':'string','maxLength':8},'address':{'type':'object','properties':{"
     "'street':{'type':'string','maxLength':10},'zip':{'type':'string','pattern':'^[0-9]{5}$'}},'required':['street','zip']},"
     "'phones':{'type':'array','items':{'type':'string','pattern':'^\\\\+?[0-9]{3,6}$'},'maxItems':2}},'required':['name','address']}",
     true,
     {"{'name':'Ann','address':{'street':'Main St','zip':'12345'}}",
      "{'name':'Ann','address':{'street':'','zip':'00000'},'phones':['+123','4567']}",
      "{'name':'Ann','address':{'street':'x','zip':'99999'},'phones':[]}"},
     {"{'name':'Ann','address':{'street':'Main St','zip':'1234'}}", "{'name':'Ann','address':{'zip':'12345'}}",
      "{'name':'Ann','address':{'street':'x','zip':'12345'},'phones':['12']}",
      "{'name':'Ann','address':{'street':'x','zip':'12345'},'phones':['123','456','789']}",
      "{'name':'Ann','address':{'street':'x','zip':'1234a'}}"},
     {0}},
    {"array-bounds", "{'type':'array','items':{'type':'integer','minimum':-5,'maximum':5},'minItems':1,'maxItems':3}", true,
     {"[0]", "[-5, 5, 1]", "[ 3 ]", "[-1,-2]"},
     {"[]", "[6]", "[-6]", "[1,2,3,4]", "[1.5]", "[1,]"},
     {"[01]", "[-0]"}},
    {"array-exact", "{'type':'array','items':{'type':'boolean'},'minItems':2,'maxItems':2}", true,
     {"[true,false]", "[false, false]"}, {"[true]", "[true,true,true]", "[1,2]"}, {0}},
    {"array-min", "{'type':'array','items':{'type':'null'},'minItems':2}", false,
     {"[null,null]", "[null,null,null,null,null]"}, {"[null]", "[]", "[null,1]"}, {0}},
    {"array-any", "{'type':'array','maxItems':2}", false,
     {"[]", "[1,'a']", "[{'a':[]}]"}, {"[1,2,3]", "{}"}, {0}},
    {"enum-mixed", "{'enum':['red',1,null,true,{'a':[1,2]}]}", true,
     {"'red'", "1", "null", "true", "{'a':[1,2]}"}, {"'blue'", "2", "false", "'Red'", "{'a':[1]}"}, {0}},
    {"const", "{'const':{'k':'v','n':[1,2.5]}}", true, {"{'k':'v','n':[1,2.5]}"}, {"{'k':'v'}", "{'k':'w','n':[1,2.5]}"},
     {0}},
    {"const-string", "{'type':'object','properties':{'kind':{'const':'tool'},'v':{'type':'integer','minimum':0,'maximum':9}},'required':['kind','v']}",
     true, {"{'kind':'tool','v':7}"}, {"{'kind':'tools','v':7}", "{'kind':'tool','v':10}"}, {0}},
    {"anyOf", "{'anyOf':[{'type':'integer','minimum':0,'maximum':9},{'type':'string','maxLength':3},{'type':'null'}]}", true,
     {"0", "9", "'abc'", "''", "null"}, {"10", "'abcd'", "true", "-1"}, {0}},
    {"oneOf-objects",
     "{'oneOf':[{'type':'object','properties':{'circle':{'type':'integer','minimum':1,'maximum':99}},'required':['circle'],'additionalProperties':false},"
     "{'type':'object','properties':{'square':{'type':'integer','minimum':1,'maximum':99}},'required':['square'],'additionalProperties':false}]}",
     true, {"{'circle':5}", "{'square':99}"}, {"{'circle':5,'square':5}", "{}", "{'circle':0}", "{'triangle':3}"}, {0}},
    {"ref-defs",
     "{'$defs':{'pt':{'type':'object','properties':{'x':{'type':'integer','minimum':0,'maximum':99},'y':{'type':'integer','minimum':0,'maximum':99}},"
     "'required':['x','y']}},'type':'array','items':{'$ref':'#/$defs/pt'},'maxItems':3}",
     true, {"[]", "[{'x':1,'y':2}]", "[{'x':0,'y':99},{'x':5,'y':5}]"}, {"[{'x':1}]", "[{'x':100,'y':1}]", "[{'x':1,'y':'2'}]"},
     {"[{'y':2,'x':1}]"}},
    {"ref-definitions-recursive",
     "{'definitions':{'node':{'type':'object','properties':{'v':{'type':'integer','minimum':0,'maximum':9},"
     "'kids':{'type':'array','items':{'$ref':'#/definitions/node'},'maxItems':2}},'required':['v'],'additionalProperties':false}},"
     "'$ref':'#/definitions/node'}",
     false, {"{'v':1}", "{'v':1,'kids':[]}", "{'v':1,'kids':[{'v':2,'kids':[{'v':3}]},{'v':4}]}"},
     {"{'v':1,'kids':[{'v':10}]}", "{'v':1,'kids':[{},{'v':1}]}", "{'kids':[]}", "{'v':1,'kids':[{'v':1},{'v':1},{'v':1}]}"},
     {0}},
    {"pattern-code", "{'type':'string','pattern':'^[A-Z]{2}-\\\\d{3}$'}", true, {"'AB-123'", "'ZZ-000'"},
     {"'Ab-123'", "'AB-12'", "'AB-1234'", "'AB_123'", "'xAB-123'"}, {0}},
    {"pattern-groups", "{'type':'string','pattern':'^(ab|cd){1,3}x?(?:[.]z)*?$'}", false, {"'ab'", "'abcdab'", "'cdx'", "'ab.z.z'", "'abx.z'"},
     {"''", "'abcdabcd'", "'x'", "'ac'", "'ab.'"}, {0}},
    {"pattern-escapes", "{'type':'string','pattern':'^\\\\$\\\\.\\\\(a\\\\)[^0-9]\\\\s\\\\w+$'}", false,
     {"'$.(a)x a'", "'$.(a)\\\\ b_9'", "'$.(a)\\' Q'", "'$.(a)\xc3\xa9\\tz'", "'$.(a)-\\nz'"},
     {"'$.(a)1 a'", "'$x(a)x a'", "'$.(a)x  a'", "'$.(a)x a-'"}, {0}},
    {"pattern-unanchored", "{'type':'string','pattern':'ab+c'}", false, {"'abc'", "'xxabbbcyy'", "'-abc'"},
     {"'ac'", "'abx'", "''"}, {0}},
    {"pattern-utf8", "{'type':'string','pattern':'^[\\u03b1-\\u03c9]{2}\\u20ac?$'}", true,
     {"'\xce\xb1\xcf\x89'", "'\xce\xb2\xce\xb3\xe2\x82\xac'"}, {"'\xce\xb1'", "'ab'", "'\xce\xb1\xcf\x89\xcf\x89'"}, {0}},
    {"pattern-misc", "{'type':'string','pattern':'^(?<y>\\\\x41|\\\\u00e9).{2,}?[\\\\d\\\\-]{1,}\\\\.\\\\t?$'}", false,
     {"'A12-.'", "'\u00e9\u20ac\u20ac5.'", "'Axy9.\\t'", "'A\\\\\\\"-.'"}, {"'Ax-.'", "'B12-.'", "'A12-'", "'A1\\n2.'"}, {0}},
    {"allOf-ref",
     "{'$defs':{'base':{'type':'object','properties':{'id':{'type':'integer'}},'required':['id']},'list':[{'type':'null'},{'type':'boolean'}]},"
     "'allOf':[{'$ref':'#/$defs/base'},{'properties':{'flag':{'$ref':'#/$defs/list/1'},'a~b/c':{'type':'null'}}}]}",
     true, {"{'id':-12}", "{'id':0,'flag':true,'a~b/c':null}"}, {"{'flag':true}", "{'id':1,'flag':null}", "{'id':1.5}"}, {0}},
    {"format-date", "{'type':'string','format':'date'}", true, {"'2024-02-29'", "'1999-12-31'"},
     {"'2024-13-01'", "'2024-00-10'", "'2024-1-1'", "'2024-02-32'"}, {0}},
    {"format-time", "{'type':'string','format':'time'}", true, {"'23:59:59Z'", "'00:00:00.123+05:30'"},
     {"'24:00:00Z'", "'12:60:00Z'", "'12:00:00'", "'12:00Z'"}, {0}},
    {"format-date-time", "{'type':'string','format':'date-time'}", true, {"'2024-05-01T12:30:00Z'", "'2000-01-01T00:00:00.000-01:00'"},
     {"'2024-05-01 12:30:00Z'", "'2024-05-01T12:30:00'"}, {0}},
    {"format-uuid", "{'type':'string','format':'uuid'}", true, {"'123e4567-e89b-12d3-a456-426614174000'", "'ABCDEF00-0000-0000-0000-000000000000'"},
     {"'123e4567e89b12d3a456426614174000'", "'123e4567-e89b-12d3-a456-42661417400g'"}, {0}},
    {"string-length", "{'type':'string','minLength':2,'maxLength':4}", true, {"'ab'", "'abcd'", "'\\u00e9\\n'", "'\xe2\x82\xac\xe2\x82\xac'"},
     {"'a'", "'abcde'", "''", "'\\ud800a'"}, {0}},
    {"int-min", "{'type':'integer','minimum':42}", false, {"42", "99", "100", "123456789"}, {"41", "0", "-42", "4"}, {"042"}},
    {"int-exclusive", "{'type':'integer','exclusiveMinimum':-3,'exclusiveMaximum':3}", true, {"-2", "0", "2"},
     {"-3", "3", "-10", "10"}, {0}},
    {"int-max-negative", "{'type':'integer','maximum':-10}", false, {"-10", "-11", "-100", "-999999"}, {"-9", "0", "10", "-1"}, {0}},
    {"int-range-wide", "{'type':'integer','minimum':-1234,'maximum':5678}", true, {"-1234", "-999", "0", "5678", "5000", "999"},
     {"-1235", "5679", "6000", "-2000", "10000"}, {0}},
    {"type-list", "{'type':['string','null'],'maxLength':2}", true, {"'ab'", "null", "''"}, {"'abc'", "1", "true"}, {0}},
    {"additional-schema", "{'type':'object','properties':{'a':{'type':'integer','minimum':0,'maximum':9}},'additionalProperties':{'type':'boolean'}}", false,
     {"{}", "{'a':1}", "{'b':true}", "{'a':1,'b':false,'c':true}", "{'ab':true}", "{'':false}"},
     {"{'a':true}", "{'b':1}", "{'a':1,'b':2}"}, {"{'b':true,'a':1}"}},
    {"additional-prefix-keys",
     "{'type':'object','properties':{'a':{'const':1},'ab':{'const':2}},'additionalProperties':{'type':'null'}}", false,
     {"{'a':1}", "{'ab':2}", "{'abc':null}", "{'b':null}", "{'a':1,'ab':2,'x':null}"},
     {"{'a':null}", "{'ab':null}", "{'a':1,'a':1}"}, {0}},
    {"additional-true", "{'type':'object','properties':{'id':{'type':'integer','minimum':0,'maximum':9}},'required':['id'],'additionalProperties':true}",
     false, {"{'id':1}", "{'id':1,'x':[1,{'y':null}]}"}, {"{}", "{'id':'1'}"}, {0}},
    {"prefix-items", "{'type':'array','prefixItems':[{'type':'boolean'},{'enum':['x','y']}]}", true,
     {"[true,'x']", "[false, 'y']"}, {"['x',true]", "[true,'z']"}, {"[true,'x',1]", "[true]"}}, /* the whole tuple */
    {"prefix-items-more", "{'type':'array','prefixItems':[{'type':'null'}],'items':{'type':'integer','minimum':0,'maximum':3}}", false,
     {"[null]", "[null,0,3,2]"}, {"[null,4]", "[1]"}, {"[]"}},
    {"allOf",
     "{'allOf':[{'type':'object','properties':{'a':{'type':'null'}},'required':['a']},{'properties':{'b':{'type':'boolean'}}}]}", true,
     {"{'a':null}", "{'a':null,'b':true}"}, {"{'b':true}", "{'a':1}", "{'a':null,'b':1}"}, {0}},
    {"any-value", "{}", false, {"1", "'s'", "null", "[1,{'a':{}}]", "{'x':[true]}", "-2.5e-3"}, {0}, {0}},
    {"any-object", "{'type':'object'}", false, {"{}", "{'a':[1,2]}", "{'a':{'b':null}}"}, {"[]", "1", "'{}'"}, {0}},
    {"number", "{'type':'number'}", false, {"0", "-1.5", "3e10", "2.25E-3"}, {"'1'", ".5", "--1"}, {"1."}},
    {"number-nonneg", "{'type':'number','minimum':0}", false, {"0", "1.5", "3e-10"}, {"-1", "-0.5"}, {0}},
    {"booleans-nulls", "{'type':'object','properties':{'t':{'type':'boolean'},'n':{'type':'null'}},'required':['t','n']}", true,
     {"{'t':true,'n':null}"}, {"{'t':1,'n':null}", "{'t':true,'n':0}"}, {0}},
    {"odd-keys", "{'type':'object','properties':{'we\\'ird key':{'const':'\\u00e9\\\\'},'a/b~c':{'type':'null'}},'required':['we\\'ird key','a/b~c']}",
     true, {"{'we\\'ird key':'\xc3\xa9\\\\','a/b~c':null}"}, {"{'we\\'ird key':'\xc3\xa9','a/b~c':null}"}, {0}},
    {"optional-order", "{'type':'object','properties':{'a':{'const':1},'b':{'const':2},'c':{'const':3}}}", true,
     {"{}", "{'a':1}", "{'b':2}", "{'c':3}", "{'a':1,'c':3}", "{'a':1,'b':2,'c':3}", "{'b':2,'c':3}"},
     {"{'a':1,'a':1}", "{'a':2}"}, {"{'c':3,'a':1}", "{'b':2,'a':1}", "{'d':4}"}},
};
#define N_CASES (sizeof k_cases / sizeof k_cases[0])

static char *to_gbnf(const char *schema) {
    char *g = NULL;
    kvlm_error err;
    if (kvlm_json_schema_to_gbnf(schema, &g, &err) != KVLM_OK) fail_msg("%s: %s", schema, err.msg);
    assert_non_null(g);
    return g;
}

static kv_grammar *compile_schema(const char *schema) {
    char *g = to_gbnf(schema);
    kv_grammar *gr = NULL;
    kvlm_error err;
    if (kv_grammar_parse(g, strlen(g), NULL, &gr, &err) != KVLM_OK) fail_msg("GBNF of %s: %s\n%s", schema, err.msg, g);
    kvlm_string_free(g);
    return gr;
}

static bool accepts(kv_grammar *g, const char *str) {
    kv_gstate *s = NULL;
    assert_int_equal(kv_gstate_new(g, NULL, &s, NULL), KVLM_OK);
    bool ok = kv_gstate_accept_bytes(s, str, strlen(str)) && kv_gstate_complete(s);
    kv_gstate_free(s);
    return ok;
}

/* every prefix is allowed, byte by byte */
static bool accepts_bytewise(kv_grammar *g, const char *str) {
    kv_gstate *s = NULL;
    assert_int_equal(kv_gstate_new(g, NULL, &s, NULL), KVLM_OK);
    bool ok = true;
    for (size_t i = 0; str[i] && ok; i++) ok = kv_gstate_accept_bytes(s, str + i, 1);
    ok = ok && kv_gstate_complete(s);
    kv_gstate_free(s);
    return ok;
}

static void test_byte_level(void **state) {
    (void)state;
    for (size_t c = 0; c < N_CASES; c++) {
        const scase *k = &k_cases[c];
        char *schema = strdup(q(k->schema));
        kv_grammar *g = compile_schema(schema);
        for (int i = 0; i < 10 && k->valid[i]; i++) {
            const char *v = q(k->valid[i]);
            if (!accepts(g, v)) fail_msg("%s: rejects valid %s", k->name, v);
            if (!accepts_bytewise(g, v)) fail_msg("%s: rejects valid %s byte by byte", k->name, v);
            if (!valid_text(schema, v)) fail_msg("%s: the validator rejects %s: %s", k->name, v, g_why);
        }
        for (int i = 0; i < 10 && k->invalid[i]; i++) {
            const char *v = q(k->invalid[i]);
            if (accepts(g, v)) fail_msg("%s: accepts invalid %s", k->name, v);
            if (valid_text(schema, v))
                fail_msg("%s: the validator accepts invalid %s", k->name, v);
        }
        for (int i = 0; i < 4 && k->layout[i]; i++) {
            const char *v = q(k->layout[i]);
            if (accepts(g, v)) fail_msg("%s: accepts out-of-layout %s", k->name, v);
            if (!valid_text(schema, v)) fail_msg("%s: the validator rejects %s: %s", k->name, v, g_why);
        }
        kv_grammar_free(g);
        free(schema);
    }
}

/* The GBNF itself, for two schemas, against text written by hand (llama.cpp's rules). */
static void test_gbnf_text(void **state) {
    (void)state;
    char *g = to_gbnf(q("{'type':'object','properties':{'city':{'type':'string'},'days':{'type':'integer','minimum':1,'maximum':14},"
                        "'units':{'enum':['c','f']}},'required':['city']}"));
    const char *want =
        "char ::= [^\"\\\\\\x7F\\x00-\\x1F] | [\\\\] ([\"\\\\/bfnrt] | \"u\" ([0-9a-cA-C] [0-9a-fA-F]{3} | [dD] [0-7] "
        "[0-9a-fA-F]{2} | [eEfF] [0-9a-fA-F]{3}))\n"
        "city-kv ::= \"\\\"city\\\"\" space \":\" space string\n"
        "days ::= ([1-9] | [1] [0-4]) space\n"
        "days-kv ::= \"\\\"days\\\"\" space \":\" space days\n"
        "root ::= \"{\" space city-kv ( \",\" space ( days-kv units-rest | units-kv ) )? \"}\" space\n"
        "space ::= | \" \" | \"\\n\" [ \\t]{0,20}\n"
        "string ::= \"\\\"\" char* \"\\\"\" space\n"
        "units ::= (\"\\\"c\\\"\" | \"\\\"f\\\"\") space\n"
        "units-kv ::= \"\\\"units\\\"\" space \":\" space units\n"
        "units-rest ::= ( \",\" space units-kv )?\n";
    assert_string_equal(g, want);
    kvlm_string_free(g);
    g = to_gbnf(q("{'type':'array','items':{'type':'number'},'minItems':1,'maxItems':3}"));
    const char *want2 =
        "decimal-part ::= [0-9]{1,16}\n"
        "integral-part ::= [0] | [1-9] [0-9]{0,15}\n"
        "number ::= (\"-\"? integral-part) (\".\" decimal-part)? ([eE] [-+]? integral-part)? space\n"
        "root ::= \"[\" space number (\",\" space number){0,2} \"]\" space\n"
        "space ::= | \" \" | \"\\n\" [ \\t]{0,20}\n";
    assert_string_equal(g, want2);
    kvlm_string_free(g);
}

/* ------------------------------------------------------------ errors */

static void test_errors(void **state) {
    (void)state;
    static const struct {
        const char *schema;
        kvlm_status code;
        const char *msg;
    } bad[] = {
        {"{'type': 'string',}", KVLM_ERR_INVALID_ARG, "malformed JSON at line 1, column 19"},
        {"{\n  'type': 'object',\n  'properties': {'a' 1}\n}", KVLM_ERR_INVALID_ARG, "malformed JSON at line 3, column 22"},
        {"{} x", KVLM_ERR_INVALID_ARG, "malformed JSON at line 1, column 4"},
        {"", KVLM_ERR_INVALID_ARG, "malformed JSON at line 1, column 1"},
        {"{'const':'\\ud800'}", KVLM_ERR_INVALID_ARG, "malformed JSON at line 1, column 17"}, /* a lone surrogate */
        {"{'const':'\\udc00'}", KVLM_ERR_INVALID_ARG, "malformed JSON at line 1, column 17"},
        {"{'const':'\\q'}", KVLM_ERR_INVALID_ARG, "malformed JSON at line 1, column 12"},
        {"{'const':'a\tb'}", KVLM_ERR_INVALID_ARG, "malformed JSON at line 1, column 12"}, /* a raw tab */
        {"{'const':01}", KVLM_ERR_INVALID_ARG, "malformed JSON at line 1, column 11"},
        {"{'const':1.}", KVLM_ERR_INVALID_ARG, "malformed JSON at line 1, column 12"},
        {"{'const':tru}", KVLM_ERR_INVALID_ARG, "malformed JSON at line 1, column 10"},
        {"{'const':[1 2]}", KVLM_ERR_INVALID_ARG, "malformed JSON at line 1, column 13"},
        {"{'a' 'b'}", KVLM_ERR_INVALID_ARG, "malformed JSON at line 1, column 6"},
        {"{'type':'string','not':{}}", KVLM_ERR_UNSUPPORTED, "at /: unsupported keyword \"not\""},
        {"{'properties':{'a':{'type':'array','uniqueItems':true}}}", KVLM_ERR_UNSUPPORTED,
         "at /properties/a: unsupported keyword \"uniqueItems\""},
        {"{'anyOf':[{'type':'null'},{'if':{}}]}", KVLM_ERR_UNSUPPORTED, "at /anyOf/1: unsupported keyword \"if\""},
        {"{'type':'strin'}", KVLM_ERR_INVALID_ARG, "\"type\" must be one of"},
        {"{'type':[]}", KVLM_ERR_INVALID_ARG, "\"type\" is an empty list"},
        {"{'$ref':'#/$defs/missing','$defs':{}}", KVLM_ERR_INVALID_ARG, "$ref \"#/$defs/missing\": \"missing\" not found"},
        {"{'$ref':'https://example.com/s.json'}", KVLM_ERR_UNSUPPORTED, "only local references"},
        {"{'type':'string','pattern':'^(?=a)b$'}", KVLM_ERR_UNSUPPORTED, "at /pattern: pattern at offset 1: lookaround"},
        {"{'type':'string','pattern':'^a\\\\1$'}", KVLM_ERR_UNSUPPORTED, "unsupported escape \\1"},
        {"{'type':'string','pattern':'^a\\\\bc$'}", KVLM_ERR_UNSUPPORTED, "unsupported escape \\b"},
        {"{'type':'string','pattern':'^(ab$'}", KVLM_ERR_UNSUPPORTED, "unbalanced parenthesis"},
        {"{'type':'string','pattern':'^a)$'}", KVLM_ERR_UNSUPPORTED, "unbalanced parenthesis"},
        {"{'type':'string','pattern':'^[a-$'}", KVLM_ERR_UNSUPPORTED, "unterminated character class"},
        {"{'type':'string','pattern':'^*a$'}", KVLM_ERR_UNSUPPORTED, "nothing to repeat"},
        {"{'type':'string','pattern':'^a{3,2}$'}", KVLM_ERR_UNSUPPORTED, "repetition count"},
        {"{'type':'string','pattern':'^a^b$'}", KVLM_ERR_UNSUPPORTED, "anchors"},
        {"{'type':'string','pattern':'^[z-a]$'}", KVLM_ERR_UNSUPPORTED, "out of order"},
        {"{'type':'string','format':'email'}", KVLM_ERR_UNSUPPORTED, "unsupported \"format\" \"email\""},
        {"{'type':'array','minItems':3,'maxItems':2}", KVLM_ERR_INVALID_ARG, "\"minItems\" over \"maxItems\""},
        {"{'type':'array','maxItems':-1}", KVLM_ERR_INVALID_ARG, "\"maxItems\" must be a non-negative integer"},
        {"{'type':'string','maxLength':5000}", KVLM_ERR_UNSUPPORTED, "\"maxLength\" over 2000"},
        {"{'enum':[]}", KVLM_ERR_INVALID_ARG, "\"enum\" must be a non-empty list"},
        {"{'anyOf':{}}", KVLM_ERR_INVALID_ARG, "\"anyOf\" must be a non-empty list"},
        {"{'type':'object','properties':{'a':{}},'required':['b']}", KVLM_ERR_UNSUPPORTED,
         "required property \"b\" is not in \"properties\""},
        {"{'type':'integer','minimum':5,'maximum':4}", KVLM_ERR_INVALID_ARG, "no integer between"},
        {"{'type':'number','maximum':4}", KVLM_ERR_UNSUPPORTED, "bounds on a number"},
        {"{'type':'integer','minimum':1e20}", KVLM_ERR_UNSUPPORTED, "at most 15 digits"},
        {"{'properties':{'a':false}}", KVLM_ERR_UNSUPPORTED, "at /properties/a: the schema false matches nothing"},
        {"[1]", KVLM_ERR_INVALID_ARG, "a schema must be an object or a boolean"},
        {"{'allOf':[{'type':'string'}]}", KVLM_ERR_UNSUPPORTED, "allOf: only object schemas"},
        {"{'allOf':[{'properties':{'a':{}},'minProperties':1}]}", KVLM_ERR_UNSUPPORTED, "allOf: keyword \"minProperties\""},
        {"{'allOf':[{'properties':{'a':{}}},{'properties':{'a':{}}}]}", KVLM_ERR_UNSUPPORTED, "property \"a\" defined twice"},
        {"{'allOf':{}}", KVLM_ERR_INVALID_ARG, "\"allOf\" must be a list"},
        {"{'allOf':[{'$ref':'#/nothing'}]}", KVLM_ERR_INVALID_ARG, "\"nothing\" not found"},
        {"{'properties':[]}", KVLM_ERR_INVALID_ARG, "\"properties\" must be an object"},
        {"{'properties':{},'required':'a'}", KVLM_ERR_INVALID_ARG, "\"required\" must be a list"},
        {"{'properties':{},'required':[1]}", KVLM_ERR_INVALID_ARG, "\"required\" must be a list"},
        {"{'properties':{},'additionalProperties':1}", KVLM_ERR_INVALID_ARG, "\"additionalProperties\" must be"},
        {"{'$ref':5}", KVLM_ERR_INVALID_ARG, "\"$ref\" must be a string"},
        {"{'type':'array','prefixItems':{}}", KVLM_ERR_INVALID_ARG, "\"prefixItems\" must be a list"},
        {"{'type':'string','pattern':5}", KVLM_ERR_INVALID_ARG, "\"pattern\" must be a string"},
        {"{'type':'string','pattern':'^a$','maxLength':3}", KVLM_ERR_UNSUPPORTED, "\"pattern\" with"},
        {"{'type':'string','format':'date','maxLength':3}", KVLM_ERR_UNSUPPORTED, "\"format\" with"},
        {"{'type':'string','minLength':3,'maxLength':2}", KVLM_ERR_INVALID_ARG, "\"minLength\" over \"maxLength\""},
        {"{'type':'integer','maximum':'3'}", KVLM_ERR_UNSUPPORTED, "\"maximum\" must be a number"},
        {"{'type':'string','pattern':'^\\\\xZZ$'}", KVLM_ERR_UNSUPPORTED, "bad hexadecimal escape"},
        {"{'type':'string','pattern':'^a\\\\'}", KVLM_ERR_UNSUPPORTED, "unterminated escape"},
        {"{'type':'string','pattern':'^[a\\\\'}", KVLM_ERR_UNSUPPORTED, "unterminated escape"},
        {"{'type':'string','pattern':'^(?<n'}", KVLM_ERR_UNSUPPORTED, "unterminated group name"},
        {"{'type':'string','pattern':'^a{x}$'}", KVLM_ERR_UNSUPPORTED, "bad repetition"},
        {"{'type':'string','pattern':'^a++$'}", KVLM_ERR_UNSUPPORTED, "possessive"},
        {"{'type':'string','pattern':'^[\\\\x00-\\\\x07]$'}", KVLM_ERR_UNSUPPORTED, "no JSON string character"},
        /* a property that fails before others (fuzz_json_schema found the half-built object rule) */
        {"{'properties':{'x':{'type':'integer','minx':0},'y':{}}}", KVLM_ERR_UNSUPPORTED,
         "at /properties/x: unsupported keyword \"minx\""},
        {"{'type':'array','prefixItems':[{}],'maxItems':1}", KVLM_ERR_UNSUPPORTED, "with \"prefixItems\""},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *g = (char *)1;
        kvlm_error err;
        const char *s = q(bad[i].schema);
        kvlm_status st = kvlm_json_schema_to_gbnf(s, &g, &err);
        if (st != bad[i].code) fail_msg("%s: status %d (%s), want %d", s, st, err.msg, bad[i].code);
        assert_null(g);
        assert_int_equal(err.code, st);
        if (!strstr(err.msg, bad[i].msg)) fail_msg("%s: message \"%s\" lacks \"%s\"", s, err.msg, bad[i].msg);
        assert_non_null(strstr(err.msg, "json schema"));
    }
    /* nested too deeply */
    char deep[4096] = "";
    for (int i = 0; i < 100; i++) strcat(deep, "{\"items\":");
    strcat(deep, "{}");
    for (int i = 0; i < 100; i++) strcat(deep, "}");
    char *g = NULL;
    kvlm_error err;
    assert_int_equal(kvlm_json_schema_to_gbnf(deep, &g, &err), KVLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "nested too deeply"));
    /* JSON nested deeper than the reader takes */
    static char deeper[2048];
    memset(deeper, '[', 1000);
    assert_int_equal(kvlm_json_schema_to_gbnf(deeper, &g, &err), KVLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "malformed JSON at line 1, column 513"));
    /* a const is matched as written (numbers too), its strings escaped as JSON writes them */
    kv_grammar *cg = compile_schema(q("{'const':[1.50,'\\u00e9\\n\\u0001',{}]}"));
    assert_true(accepts(cg, "[1.50,\"\xc3\xa9\\n\\u0001\",{}]"));
    assert_false(accepts(cg, "[1.5,\"\xc3\xa9\\n\\u0001\",{}]"));
    kv_grammar_free(cg);
    /* invalid UTF-8 in a pattern (bytes over U+10FFFF, overlong, a surrogate): each byte is U+FFFD,
     * and the grammar compiles (fuzz_json_schema found one beyond U+10FFFF reaching the GBNF) */
    cg = compile_schema("{\"type\":\"string\",\"pattern\":\"^\xf7\xbf\xbf\xbf\xc0\xaf\xed\xa0\x80$\"}");
    assert_true(accepts(cg, "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\""));
    kv_grammar_free(cg);
    /* NULL arguments */
    assert_int_equal(kvlm_json_schema_to_gbnf(NULL, &g, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kvlm_json_schema_to_gbnf("{}", NULL, &err), KVLM_ERR_INVALID_ARG);
    /* a reference cycle that reads nothing: the grammar does not compile (left recursion) */
    kvlm_model *m = load(SYNTH);
    kvlm_grammar *h = (kvlm_grammar *)1;
    assert_int_equal(kvlm_grammar_new_json_schema(m, q("{'$ref':'#'}"), &h, &err), KVLM_ERR_INVALID_ARG);
    assert_null(h);
    if (!strstr(err.msg, "json schema: its grammar does not compile") || !strstr(err.msg, "left recursion"))
        fail_msg("%s", err.msg);
    assert_int_equal(kvlm_grammar_new_json_schema(m, q("{'type':'strin'}"), &h, &err), KVLM_ERR_INVALID_ARG);
    assert_null(h);
    assert_int_equal(kvlm_grammar_new_json_schema(NULL, "{}", &h, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kvlm_grammar_new_json_schema(m, NULL, &h, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kvlm_grammar_new_json_schema(m, "{}", NULL, &err), KVLM_ERR_INVALID_ARG);
    kvlm_model_free(m);
}

/* ------------------------------------------------------------ generation */

/* the completion's bytes, from its tokens */
static size_t completion_bytes(kvlm_model *m, const kvlm_generate_result *r, char *out, size_t cap) {
    size_t n = 0;
    for (int32_t i = 0; i < r->n_completion; i++) {
        char p[256];
        int32_t l = kvlm_token_to_piece(m, r->tokens[i], p, sizeof p, false);
        if (l <= 0) fail_msg("generated token %d has no text", r->tokens[i]);
        assert_true(n + (size_t)l < cap);
        memcpy(out + n, p, (size_t)l);
        n += (size_t)l;
    }
    out[n] = 0;
    return n;
}

static void test_generate(void **state) {
    (void)state;
    kvlm_model *m = load(SYNTH);
    kvlm_session *s = session(m, 512);
#ifdef KVLM_SANITIZE_BUILD
    enum { SEEDS = 2, MAXT = 160 }; /* the 15M model is slow under ASan: what is checked is the same */
#else
    enum { SEEDS = 4, MAXT = 160 };
#endif
    int n_valid = 0;
    for (size_t c = 0; c < N_CASES; c++) {
        const scase *k = &k_cases[c];
        char *schema = strdup(q(k->schema));
        kvlm_grammar *h = NULL;
        kvlm_error err;
        if (kvlm_grammar_new_json_schema(m, schema, &h, &err) != KVLM_OK) fail_msg("%s: %s", k->name, err.msg);
        kv_grammar *g = compile_schema(schema);
        int n_stop = 0;
        for (int seed = 1; seed <= SEEDS; seed++) {
            kvlm_generate_params gp = kvlm_generate_default_params();
            gp.sampling.grammar = h;
            gp.sampling.seed = (uint64_t)seed * 104729u + c;
            gp.sampling.temperature = seed == SEEDS ? 0.0f : 1.0f;
            if (seed % 2) gp.sampling.top_k = 0; /* the full mask every step */
            gp.max_tokens = MAXT;
            kvlm_generate_result r;
            if (kvlm_generate(s, "JSON:", &gp, NULL, NULL, &r, &err) != KVLM_OK) fail_msg("%s seed %d: %s", k->name, seed, err.msg);
            char out[8192];
            size_t n = completion_bytes(m, &r, out, sizeof out);
            kv_gstate *st = NULL;
            assert_int_equal(kv_gstate_new(g, NULL, &st, NULL), KVLM_OK);
            if (!kv_gstate_accept_bytes(st, out, n)) fail_msg("%s seed %d: output not allowed: %s", k->name, seed, out);
            if (r.finish == KVLM_FINISH_STOP) {
                if (!kv_gstate_complete(st)) fail_msg("%s seed %d: stopped before complete: %s", k->name, seed, out);
                n_stop++;
                if (strlen(out) != n) fail_msg("%s seed %d: a NUL byte in the output", k->name, seed);
                if (!valid_text(schema, out)) fail_msg("%s seed %d: invalid (%s): %s", k->name, seed, g_why, out);
                n_valid++;
            } else {
                assert_int_equal(r.finish, KVLM_FINISH_LENGTH);
            }
            kv_gstate_free(st);
            kvlm_generate_result_free(&r);
        }
        if (k->bounded && n_stop != SEEDS) fail_msg("%s: %d of %d runs finished", k->name, n_stop, SEEDS);
        kv_grammar_free(g);
        kvlm_grammar_free(h);
        free(schema);
    }
    /* most runs finish (the unbounded ones too, mostly) */
    printf("json schema generation: %d of %zu runs finished, all valid\n", n_valid, N_CASES * SEEDS);
    assert_true(n_valid >= (int)(N_CASES * SEEDS) * 3 / 4);
    kvlm_session_free(s);
    kvlm_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gbnf_text),
        cmocka_unit_test(test_byte_level),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_generate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
