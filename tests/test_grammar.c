/* Grammars (src/grammar/, kvlm_grammar_* of kvlm.h): the GBNF parser on every
 * syntax feature and on malformed grammars (errors with a position), the
 * matcher at the byte level on hand-written valid and invalid strings, token
 * masks on a small hand-made vocabulary against hand-written answers and on
 * the 32k vocabulary against token-by-token checks, and constrained generation
 * on a random-weight model: over many seeds every output is accepted by its
 * grammar (and the JSON ones parse with cJSON), the same seed gives the same
 * text, alone and batched. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "grammar/grammar.h"
#include "kvlm.h"
#include "test_util.h"

#define SYNTH KVLM_MODELS_DIR "/llama/synth15M-q8_0.gguf"

/* ------------------------------------------------------------ grammars */

static const char *G_JSON =
    "# JSON (RFC 8259)\n"
    "root   ::= ws value ws\n"
    "value  ::= object | array | string | number | \"true\" | \"false\" | \"null\"\n"
    "object ::= \"{\" ws ( member ( ws \",\" ws member )* ws )? \"}\"\n"
    "member ::= string ws \":\" ws value\n"
    "array  ::= \"[\" ws ( value ( ws \",\" ws value )* ws )? \"]\"\n"
    "string ::= \"\\\"\" char* \"\\\"\"\n"
    "char   ::= [^\"\\\\\\x00-\\x1F] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" hex{4} )\n"
    "hex    ::= [0-9a-fA-F]\n"
    "number ::= \"-\"? int frac? exp?\n"
    "int    ::= \"0\" | [1-9] [0-9]*\n"
    "frac   ::= \".\" [0-9]+\n"
    "exp    ::= [eE] [-+]? [0-9]+\n"
    "ws     ::= [ \\t\\n]{0,3}\n";

/* JSON with everything bounded (a finite language, so generation always finishes) */
static const char *G_JSON_SMALL =
    "root   ::= \"{\" ( member ( \", \" member ){0,2} )? \"}\"\n"
    "member ::= key \": \" value\n"
    "key    ::= \"\\\"\" [a-z]{1,6} \"\\\"\"\n"
    "value  ::= key | num | \"true\" | \"false\" | \"null\" | \"[\" ( num ( \",\" num ){0,3} )? \"]\"\n"
    "num    ::= \"-\"? [0-9]{1,4} ( \".\" [0-9]{1,2} )?\n";

static const char *G_ARITH =
    "root   ::= expr\n"
    "expr   ::= term ( ws [-+] ws term )*\n"
    "term   ::= factor ( ws [*/] ws factor )*\n"
    "factor ::= num | \"(\" ws expr ws \")\" | \"-\" factor\n"
    "num    ::= [0-9]+ ( \".\" [0-9]+ )?\n"
    "ws     ::= \" \"?\n";

static const char *G_LIST =
    "root ::= item{1,5}\n"
    "item ::= ( \"- \" | \"* \" ) [^\\n\\r]{1,30} \"\\n\"\n";

static const char *G_CHESS =
    "root  ::= turn ( \" \" turn ){0,3}\n"
    "turn  ::= [1-9] [0-9]? \". \" move \" \" move\n"
    "move  ::= ( castle | piece | pawn ) [+#]?\n"
    "piece ::= [KQRBN] [a-h]? [1-8]? \"x\"? square\n"
    "pawn  ::= ( [a-h] \"x\" )? square ( \"=\" [QRBN] )?\n"
    "castle ::= \"O-O\" ( \"-O\" )?\n"
    "square ::= [a-h] [1-8]\n";

static const char *G_CLIKE =
    "root  ::= func+\n"
    "func  ::= type \" \" ident \"(\" params? \") {\" nl stmt* \"}\" nl\n"
    "type  ::= \"int\" | \"void\" | \"char*\"\n"
    "params ::= type \" \" ident ( \", \" type \" \" ident )*\n"
    "ident ::= [a-zA-Z_] [a-zA-Z0-9_]{0,7}\n"
    "stmt  ::= \"  \" ( decl | ret | call ) \";\" nl\n"
    "decl  ::= type \" \" ident \" = \" expr\n"
    "ret   ::= \"return\" ( \" \" expr )?\n"
    "call  ::= ident \"(\" ( expr ( \", \" expr )* )? \")\"\n"
    "expr  ::= atom ( \" \" [-+*/<>] \" \" atom )*\n"
    "atom  ::= [0-9]{1,3} | ident | \"(\" expr \")\"\n"
    "nl    ::= \"\\n\"\n";

/* every syntax feature at least once */
static const char *G_SYNTAX =
    "# comments, then a start rule that is not called root\n"
    "start ::= greet sep ( count | escapes | uni | any | alts ) # trailing comment\n"
    "greet ::= \"hi\" | \"hello\"   # alternation of literals\n"
    "sep   ::= [ ,;]+\n"
    "count ::= \"a\"{3} \"b\"{2,} \"c\"{1,2} \"d\"? \"e\"* \"f\"*\n"
    "escapes ::= \"\\n\\t\\\\\\\"\\r\" \"\\x41\\u00e9\\U0001F600\" [\\[\\]]\n"
    "uni   ::= [\\u03b1-\\u03c9]+ \"\\u20ac\"\n"
    "any   ::= \"<\" . . \">\"\n"
    "alts  ::= ( ( \"x\" | \"y\" ( \"1\" | \"2\" ) )  # newlines inside parentheses\n"
    "        [^a-z0-9]\n"
    "        ( \"p\"\n"
    "        | \"q\" ) )\n";

typedef struct gcase {
    const char *name;
    const char **text;
    const char *root;
    const char *valid[12];
    const char *invalid[12];
} gcase;

static const gcase k_cases[] = {
    {"json", &G_JSON, NULL,
     {"{}", " [ ] ", "{\"a\": 1, \"b\": [true, false, null], \"c\": {\"d\": \"x\\\"y\\u00e9\"}}", "-0.5e+10", "\"\"",
      "[1,2,[3,{}]]", "{\"k\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}", "0", "\"\\/\\b\\f\\n\\r\\t\"", "12.25E-3"},
     {"{", "[1,]", "{\"a\" 1}", "01", "\"\\x\"", "tru", "{'a': 1}", "\"a\nb\"", "[1 2]", "\"\\u12G4\"", "1.", "--1"}},
    {"json-small", &G_JSON_SMALL, NULL,
     {"{}", "{\"ab\": 12}", "{\"a\": [1,2,3,4], \"b\": -5.25, \"c\": null}", "{\"x\": \"y\"}", "{\"z\": []}"},
     {"{\"a\": [1,2,3,4,5]}", "{\"abcdefg\": 1}", "{\"a\": 1, \"b\": 2, \"c\": 3, \"d\": 4}", "{\"a\":1}", "{\"a\": 12345}"}},
    {"arithmetic", &G_ARITH, NULL,
     {"1", "1+2", "3 * (4 - 5.5)", "-(2)/--3", "((1))", "10 / 2 + 3 * 4"},
     {"", "1+", "(1", "1 ++ 2", "1  + 2", "a", "1.", "()"}},
    {"list", &G_LIST, NULL,
     {"- one\n", "* two\n- three\n", "- a\n- b\n- c\n- d\n- e\n", "- caf\xc3\xa9 \xe2\x82\xac\n"},
     {"", "- \n", "-one\n", "- one", "- a\n- b\n- c\n- d\n- e\n- f\n", "+ one\n", "- 0123456789012345678901234567890\n"}},
    {"chess", &G_CHESS, NULL,
     {"1. e4 e5", "1. e4 e5 2. Nf3 Nc6", "12. O-O O-O-O+", "3. exd5 Qxd5#", "4. e8=Q Kh7 5. Rae1 a1=N"},
     {"1. e4", "1.e4 e5", "1. e9 e5", "1. Pe4 e5", "0. e4 e5", "1. e4 e5 2. a3 a6 3. b3 b6 4. c3 c6 5. d3 d6", "1. O-O-O-O e5"}},
    {"c-like", &G_CLIKE, NULL,
     {"int main() {\n}\n", "void f(int a, char* b) {\n  int x = a + 1;\n  g(x, 2);\n  return;\n}\n",
      "int g() {\n  return (1 * 2) - x;\n}\nvoid h() {\n}\n"},
     {"", "int main() {}\n", "int 9x() {\n}\n", "int f() {\n  return 1\n}\n", "float f() {\n}\n",
      "int f(int) {\n}\n", "int abcdefghi() {\n}\n"}},
    {"syntax", &G_SYNTAX, "start",
     {"hi aaabbc", "hello,;aaabbbbccdeeef", "hi \n\t\\\"\rA\xc3\xa9\xf0\x9f\x98\x80[", "hi ;\n\t\\\"\rA\xc3\xa9\xf0\x9f\x98\x80]", "hi \xce\xb1\xcf\x89\xe2\x82\xac",
      "hi <ab>", "hi <\xc3\xa9\xf0\x9f\x98\x80>", "hi x\xc3\xa9p", "hi y2 q", "hello  aaabbcf"},
     {"hi aabbc", "hi aaabc", "hi aaabbcccf", "hiaaabbc", "hi \xce\xb1", "hi <a>", "hi xap", "hi y3 p", "hi x9p",
      "hey aaabbc", "hi \n\t\\\"\rA\xc3\xa9\xf0\x9f\x98\x81["}},
};

static kv_grammar *compile(const char *text, const char *root) {
    kv_grammar *g = NULL;
    kvlm_error err;
    if (kv_grammar_parse(text, strlen(text), root, &g, &err) != KVLM_OK) fail_msg("grammar: %s", err.msg);
    return g;
}

/* the whole string is a string of the grammar */
static bool accepts(kv_grammar *g, const char *str) {
    kv_gstate *s = NULL;
    assert_int_equal(kv_gstate_new(g, NULL, &s, NULL), KVLM_OK);
    bool ok = kv_gstate_accept_bytes(s, str, strlen(str)) && kv_gstate_complete(s);
    kv_gstate_free(s);
    return ok;
}

/* the same, one byte at a time, and every prefix of a valid string is allowed */
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
    for (size_t c = 0; c < sizeof k_cases / sizeof k_cases[0]; c++) {
        const gcase *k = &k_cases[c];
        kv_grammar *g = compile(*k->text, k->root);
        for (int i = 0; i < 12 && k->valid[i]; i++) {
            if (!accepts(g, k->valid[i])) fail_msg("%s: rejects valid \"%s\"", k->name, k->valid[i]);
            if (!accepts_bytewise(g, k->valid[i])) fail_msg("%s: rejects valid \"%s\" byte by byte", k->name, k->valid[i]);
        }
        for (int i = 0; i < 12 && k->invalid[i]; i++)
            if (accepts(g, k->invalid[i])) fail_msg("%s: accepts invalid \"%s\"", k->name, k->invalid[i]);
        kv_grammar_free(g);
    }
}

/* prefixes, partial characters, completion and continuation */
static void test_prefixes_and_utf8(void **state) {
    (void)state;
    kv_grammar *g = compile("root ::= [\\u03b1-\\u03c9]+ \"!\"? | \"\\U0001F600\" [a]*\n", NULL);
    kv_gstate *s = NULL;
    assert_int_equal(kv_gstate_new(g, NULL, &s, NULL), KVLM_OK);
    assert_false(kv_gstate_complete(s));
    assert_true(kv_gstate_can_continue(s));
    assert_true(kv_gstate_allows_bytes(s, "\xce", 1));      /* the start of U+03B1..U+03BF */
    assert_true(kv_gstate_allows_bytes(s, "\xcf", 1));      /* U+03C0..U+03C9 */
    assert_false(kv_gstate_allows_bytes(s, "\xd0", 1));     /* U+0400.. : none allowed */
    assert_false(kv_gstate_allows_bytes(s, "\xce\x41", 2)); /* not a continuation byte */
    assert_false(kv_gstate_allows_bytes(s, "\xce\x80", 2)); /* U+0380: outside the range */
    assert_false(kv_gstate_allows_bytes(s, "\xc1\xb1", 2)); /* overlong */
    assert_false(kv_gstate_allows_bytes(s, "\xff", 1));
    assert_true(kv_gstate_allows_bytes(s, "\xf0\x9f", 2));
    assert_false(kv_gstate_allows_bytes(s, "\xf0\x9f\x98\x81", 4)); /* U+1F601 */
    /* an accepted partial character: not complete, and only its completions go on */
    assert_true(kv_gstate_accept_bytes(s, "\xce", 1));
    assert_false(kv_gstate_complete(s));
    assert_false(kv_gstate_accept_bytes(s, "!", 1));
    assert_true(kv_gstate_accept_bytes(s, "\xb1", 1));
    assert_true(kv_gstate_complete(s));
    assert_true(kv_gstate_can_continue(s));
    assert_true(kv_gstate_accept_bytes(s, "!", 1));
    assert_true(kv_gstate_complete(s));
    assert_false(kv_gstate_can_continue(s)); /* finished */
    assert_false(kv_gstate_allows_bytes(s, "!", 1));
    /* a rejected advance changes nothing */
    kv_gstate_reset(s);
    assert_false(kv_gstate_accept_bytes(s, "\xce\xb1x", 3));
    assert_false(kv_gstate_complete(s));
    assert_true(kv_gstate_accept_bytes(s, "\xf0\x9f\x98\x80" "aaa", 7));
    assert_true(kv_gstate_complete(s));
    /* the caches can be dropped anywhere: the position stays */
    assert_true(kv_gstate_accept_bytes(s, "a\xce", 0));
    assert_int_equal(kv_gstate_flush(s, NULL), KVLM_OK);
    assert_true(kv_gstate_complete(s));
    assert_true(kv_gstate_accept_bytes(s, "a", 1));
    assert_false(kv_gstate_accept_bytes(s, "\xce", 1));
    kv_gstate_free(s);
    kv_grammar_free(g);
}

/* an empty class matches nothing, its negation any character (fuzz_server reached the parser's
 * sort of no ranges through the server's grammar field) */
static void test_empty_class(void **state) {
    (void)state;
    kv_grammar *g = compile("root ::= \"a\" | []\n", NULL);
    assert_true(accepts(g, "a"));
    assert_false(accepts(g, "b"));
    assert_false(accepts(g, ""));
    kv_grammar_free(g);
    g = compile("root ::= [^] \"!\"\n", NULL);
    assert_true(accepts(g, "x!"));
    assert_true(accepts(g, "\xc3\xa9!"));
    assert_false(accepts(g, "!"));
    kv_grammar_free(g);
}

/* right recursion does not grow the stacks; deep nesting (1000 levels) works */
static void test_recursion(void **state) {
    (void)state;
    kv_grammar *g = compile("root ::= x\nx ::= \"a\" x | \"b\"\n", NULL);
    char buf[20001];
    memset(buf, 'a', 20000);
    buf[20000] = 0;
    kv_gstate *s = NULL;
    assert_int_equal(kv_gstate_new(g, NULL, &s, NULL), KVLM_OK);
    assert_true(kv_gstate_accept_bytes(s, buf, 20000));
    assert_true(kv_gstate_accept_bytes(s, "b", 1));
    assert_true(kv_gstate_complete(s));
    kv_gstate_free(s);
    kv_grammar_free(g);
    g = compile(G_JSON, NULL);
    for (int i = 0; i < 1000; i++) buf[i] = '[';
    for (int i = 0; i < 1000; i++) buf[1000 + i] = ']';
    buf[2000] = 0;
    assert_true(accepts(g, buf));
    buf[1999] = 0;
    assert_false(accepts(g, buf));
    kv_grammar_free(g);
}

/* ------------------------------------------------------------ malformed grammars */

static void test_errors(void **state) {
    (void)state;
    static const struct {
        const char *text;
        const char *msg; /* a part of the message, with the position */
    } bad[] = {
        {"root ::= \"abc", "line 1, column 10: unterminated string"},
        {"root ::= foo\n", "line 1, column 10: undefined rule 'foo'"},
        {"root ::= \"a\" root2\nroot2 ::= bar", "line 2, column 11: undefined rule 'bar'"},
        {"root ::= root \"a\"\n", "left recursion in rule 'root'"},
        {"root ::= x\nx ::= y? x \"a\"\ny ::= \"b\"\n", "left recursion"},
        {"root ::= (\"a\" | \"\")* \n", "left recursion"},
        {"root := \"a\"\n", "line 1, column 6: expecting '::='"},
        {"root ::= (\"a\" \"b\"\n", "line 2, column 1: expecting ')'"},
        {"root ::= \"a\" {2,1}\n", "line 1, column 14: repetition {2,1}"},
        {"root ::= \"\\q\"\n", "line 1, column 11: unknown escape '\\q'"},
        {"root ::= \"\\x4\"\n", "line 1, column 11: expecting 2 hex digits"},
        {"root ::= \"\\U00110000\"\n", "beyond U+10FFFF"},
        {"root ::= * \"a\"\n", "line 1, column 10: nothing before the repetition"},
        {"a ::= \"x\"\n", "no rule named 'root'"},
        {"root ::= \"a\"\nroot ::= \"b\"\n", "line 2, column 1: rule 'root' is defined twice"},
        {"", "no rules"},
        {"# only a comment\n", "no rules"},
        {"root ::= \"a\" )\n", "line 1, column 14: ')' without a matching '('"},
        {"root ::= [z-a]\n", "line 1, column 12: range with its end"},
        {"root ::= [abc\n", "line 1, column 10: unterminated character class"},
        {"root ::= \"\xff\"\n", "line 1, column 11: invalid UTF-8"},
        {"root ::= \"a\"{3\n", "line 1, column 15: expecting ',' or '}'"},
        {"root ::= \"a\"{x}\n", "line 1, column 14: expecting an integer"},
        {"root ::= \"a\"{99999}\n", "repetition count above"},
        {"\n\n  ::= \"a\"\n", "line 3, column 3: expecting a rule name"},
        {"root ::= \"a\" ; \"b\"\n", "line 1, column 14: expecting a newline"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kv_grammar *g = (kv_grammar *)1;
        kvlm_error err;
        kvlm_status st = kv_grammar_parse(bad[i].text, strlen(bad[i].text), NULL, &g, &err);
        if (st != KVLM_ERR_INVALID_ARG) fail_msg("\"%s\": status %d", bad[i].text, st);
        assert_null(g);
        if (!strstr(err.msg, bad[i].msg)) fail_msg("\"%s\": message \"%s\", expected \"%s\"", bad[i].text, err.msg, bad[i].msg);
        assert_non_null(strstr(err.msg, "grammar: "));
    }
    /* the public entry points */
    kvlm_model *m = load(SYNTH);
    kvlm_grammar *h = (kvlm_grammar *)1;
    kvlm_error err;
    assert_int_equal(kvlm_grammar_new_gbnf(m, "root ::= [", NULL, &h, &err), KVLM_ERR_INVALID_ARG);
    assert_null(h);
    assert_non_null(strstr(err.msg, "line 1, column 10"));
    assert_int_equal(kvlm_grammar_new_gbnf(m, "r ::= \"a\"", "nope", &h, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kvlm_grammar_new_gbnf(NULL, "root ::= \"a\"", NULL, &h, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kvlm_grammar_new_gbnf(m, NULL, NULL, &h, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kvlm_grammar_new_gbnf(m, "r ::= \"a\"", "r", NULL, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kvlm_grammar_new_gbnf(m, "r ::= \"a\"", "r", &h, &err), KVLM_OK);
    /* a grammar for another vocabulary size */
    kvlm_sampling_params sp = kvlm_sampling_default_params();
    sp.grammar = h;
    kvlm_sampler *smp = (kvlm_sampler *)1;
    assert_int_equal(kvlm_sampler_new(&sp, 100, &smp, &err), KVLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "vocabulary of 32000"));
    kvlm_grammar_free(h);
    kvlm_grammar_free(NULL);
    kvlm_model_free(m);
}

/* ------------------------------------------------------------ masks on a hand-made vocabulary */

enum { V_A, V_AB, V_B, V_C, V_X, V_0, V_12, V_EOS, V_CTRL, V_C3, V_A9, V_E_ACUTE, V_Q, V_AB0, N_V };
static const char *const k_vpieces[N_V] = {"a", "ab", "b", "c", "x", "0", "12", "", "", "\xc3", "\xa9", "\xc3\xa9", "\"", "ab0"};

static kv_gvocab *small_vocab(void) {
    uint32_t len[N_V];
    bool eog[N_V] = {0};
    for (int i = 0; i < N_V; i++) len[i] = (uint32_t)strlen(k_vpieces[i]);
    len[V_C3] = len[V_A9] = 1;
    eog[V_EOS] = true;
    kv_gvocab *v = NULL;
    assert_int_equal(kv_gvocab_new(N_V, k_vpieces, len, eog, &v, NULL), KVLM_OK);
    return v;
}

/* the mask as a bit string of N_V tokens, e.g. "1100..." */
static void mask_str(kv_gstate *s, char *out) {
    int32_t n = -1;
    const uint64_t *m = kv_gstate_mask(s, &n, NULL);
    assert_non_null(m);
    int32_t cnt = 0;
    for (int t = 0; t < N_V; t++) {
        const bool on = (m[0] >> t) & 1;
        out[t] = on ? '1' : '0';
        cnt += on;
        assert_int_equal(on, kv_gstate_allows_token(s, t)); /* the mask and the one-token check agree */
    }
    out[N_V] = 0;
    assert_int_equal(cnt, n);
}

static void test_mask_small_vocab(void **state) {
    (void)state;
    kv_gvocab *v = small_vocab();
    assert_int_equal(kv_gvocab_n_vocab(v), N_V);
    kv_grammar *g = compile("root ::= \"ab\" | \"ac\" [0-9]* | [\\u00e9] \"x\"?\n", NULL);
    kv_gstate *s = NULL;
    assert_int_equal(kv_gstate_new(g, v, &s, NULL), KVLM_OK);
    char m[N_V + 1];
    /*                    a ab b c x 0 12 eos ctrl c3 a9 é " ab0 */
    mask_str(s, m);
    assert_string_equal(m, "11000000010100");
    assert_int_equal(kv_gstate_accept_token(s, V_A, NULL), KVLM_OK);
    mask_str(s, m);
    assert_string_equal(m, "00110000000000");
    assert_int_equal(kv_gstate_accept_token(s, V_X, NULL), KVLM_ERR_INVALID_ARG); /* refused, nothing changes */
    assert_int_equal(kv_gstate_accept_token(s, V_EOS, NULL), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kv_gstate_accept_token(s, V_C, NULL), KVLM_OK);
    mask_str(s, m); /* "ac": complete, digits may follow; EOS allowed */
    assert_string_equal(m, "00000111000000");
    assert_int_equal(kv_gstate_accept_token(s, V_12, NULL), KVLM_OK);
    mask_str(s, m);
    assert_string_equal(m, "00000111000000");
    assert_int_equal(kv_gstate_accept_token(s, V_EOS, NULL), KVLM_OK); /* allowed when complete; no change */
    assert_true(kv_gstate_complete(s));
    /* a character split over two byte tokens */
    kv_gstate_reset(s);
    assert_int_equal(kv_gstate_accept_token(s, V_C3, NULL), KVLM_OK);
    mask_str(s, m);
    assert_string_equal(m, "00000000001000"); /* only the continuation byte */
    assert_int_equal(kv_gstate_accept_token(s, V_A9, NULL), KVLM_OK);
    mask_str(s, m);
    assert_string_equal(m, "00001001000000"); /* "x" or the end */
    assert_int_equal(kv_gstate_accept_token(s, V_X, NULL), KVLM_OK);
    mask_str(s, m);
    assert_string_equal(m, "00000001000000"); /* finished: only EOS */
    assert_false(kv_gstate_can_continue(s));
    /* "ab" as one token or two; "ab0" is not allowed (nothing follows "ab") */
    kv_gstate_reset(s);
    assert_false(kv_gstate_allows_token(s, V_AB0));
    assert_int_equal(kv_gstate_accept_token(s, V_AB, NULL), KVLM_OK);
    assert_true(kv_gstate_complete(s));
    /* the control token is never allowed, not even where everything is */
    kv_gstate_free(s);
    kv_grammar_free(g);
    g = compile("root ::= .*\n", NULL);
    assert_int_equal(kv_gstate_new(g, v, &s, NULL), KVLM_OK);
    mask_str(s, m);
    assert_string_equal(m, "11111111010111");
    kv_gstate_free(s);
    kv_grammar_free(g);
    kv_gvocab_free(v);
}

/* ------------------------------------------------------------ masks on the 32k vocabulary */

static char g_piece[64];

static int32_t piece_of(const kvlm_model *m, kvlm_token t, char *buf, int32_t cap) {
    int32_t n = kvlm_token_to_piece(m, t, buf, cap, false);
    return n < 0 ? 0 : n;
}

/* Along a string of the grammar, the mask equals the token-by-token check made on a fresh
 * state (no cache, the whole prefix replayed with the token's bytes after it). */
static void check_masks_along(kvlm_model *m, const char *gtext, const char *text) {
    kvlm_grammar *h = NULL;
    kvlm_error err;
    if (kvlm_grammar_new_gbnf(m, gtext, NULL, &h, &err) != KVLM_OK) fail_msg("%s", err.msg);
    kv_gstate *s = NULL;
    assert_int_equal(kv_gstate_new(h->g, h->v, &s, NULL), KVLM_OK);
    const int32_t nv = kvlm_n_vocab(m);
    const size_t tl = strlen(text);
    char *buf = malloc(tl + 256);
    for (size_t pos = 0; pos <= tl; pos += 4) {
        kv_gstate_reset(s);
        assert_true(kv_gstate_accept_bytes(s, text, pos));
        int32_t n_allowed = 0;
        const uint64_t *mask = kv_gstate_mask_uncached(s, &n_allowed, NULL);
        assert_non_null(mask);
        int32_t cnt = 0;
        kv_gstate *f = NULL;
        assert_int_equal(kv_gstate_new(h->g, NULL, &f, NULL), KVLM_OK);
        for (kvlm_token t = 0; t < nv; t++) {
            bool expect;
            if (kvlm_token_is_eog(m, t)) {
                expect = kv_gstate_complete(s);
            } else {
                int32_t n = piece_of(m, t, g_piece, sizeof g_piece);
                memcpy(buf, text, pos);
                memcpy(buf + pos, g_piece, (size_t)n);
                kv_gstate_reset(f);
                expect = n > 0 && kv_gstate_allows_bytes(f, buf, pos + (size_t)n);
            }
            const bool got = (mask[t >> 6] >> (t & 63)) & 1;
            if (got != expect) fail_msg("at %zu of \"%s\": token %d mask %d, check %d", pos, text, t, got, expect);
            cnt += got;
        }
        assert_int_equal(cnt, n_allowed);
        assert_true(n_allowed > 0);
        kv_gstate_free(f);
        /* the cached mask is the same */
        const uint64_t *c1 = kv_gstate_mask(s, NULL, NULL);
        assert_memory_equal(c1, mask, (size_t)(nv + 63) / 64 * 8);
    }
    free(buf);
    kv_gstate_free(s);
    kvlm_grammar_free(h);
}

static void test_mask_32k(void **state) {
    (void)state;
    kvlm_model *m = load(SYNTH);
    check_masks_along(m, G_JSON, "{\"name\": \"caf\xc3\xa9 \\u00e9\", \"n\": [1, -2.5e3, true], \"o\": {}}");
    check_masks_along(m, G_CLIKE, "int f(int a) {\n  return a + 1;\n}\n");
    check_masks_along(m, G_LIST, "- one\n* two \xe2\x82\xac\n");
    kvlm_model_free(m);
}

/* ------------------------------------------------------------ generation */

static kvlm_grammar *grammar_for(kvlm_model *m, const char *text, const char *root) {
    kvlm_grammar *h = NULL;
    kvlm_error err;
    if (kvlm_grammar_new_gbnf(m, text, root, &h, &err) != KVLM_OK) fail_msg("%s", err.msg);
    return h;
}

/* The completion's bytes (from its tokens: the text turns a cut-off character into U+FFFD). */
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

static void test_generate_under_grammars(void **state) {
    (void)state;
    kvlm_model *m = load(SYNTH);
    kvlm_session *s = session(m, 512);
    int n_complete_json = 0;
    for (size_t c = 0; c < sizeof k_cases / sizeof k_cases[0]; c++) {
        const gcase *k = &k_cases[c];
        kvlm_grammar *h = grammar_for(m, *k->text, k->root);
        kv_grammar *g = compile(*k->text, k->root);
        int n_stop = 0;
        /* the finite languages get room to finish; the others are checked on a prefix */
        const bool finite = !strcmp(k->name, "json-small") || !strcmp(k->name, "chess");
        const int32_t max_tokens = finite ? 96 : 40;
        for (int seed = 1; seed <= 8; seed++) {
            kvlm_generate_params gp = kvlm_generate_default_params();
            gp.sampling.grammar = h;
            gp.sampling.seed = (uint64_t)seed * 7919u;
            gp.sampling.temperature = seed % 3 == 0 ? 0.0f : 1.0f;
            if (seed % 4 == 1) gp.sampling.top_k = 0; /* no top-k: the full mask every step */
            gp.max_tokens = max_tokens;
            kvlm_generate_result r;
            kvlm_error err;
            if (kvlm_generate(s, "Once upon a time", &gp, NULL, NULL, &r, &err) != KVLM_OK)
                fail_msg("%s seed %d: %s", k->name, seed, err.msg);
            char out[8192];
            size_t n = completion_bytes(m, &r, out, sizeof out);
            kv_gstate *st = NULL;
            assert_int_equal(kv_gstate_new(g, NULL, &st, NULL), KVLM_OK);
            if (!kv_gstate_accept_bytes(st, out, n)) fail_msg("%s seed %d: output not allowed: \"%s\"", k->name, seed, out);
            if (r.finish == KVLM_FINISH_STOP) {
                if (!kv_gstate_complete(st)) fail_msg("%s seed %d: stopped before complete: \"%s\"", k->name, seed, out);
                n_stop++;
                assert_string_equal(r.text, out);
                if (strncmp(k->name, "json", 4) == 0) {
                    cJSON *j = cJSON_Parse(out);
                    if (!j) fail_msg("%s seed %d: cJSON cannot parse \"%s\"", k->name, seed, out);
                    cJSON_Delete(j);
                    n_complete_json++;
                }
            } else {
                assert_int_equal(r.finish, KVLM_FINISH_LENGTH);
                assert_int_equal(r.n_completion, max_tokens);
            }
            kv_gstate_free(st);
            kvlm_generate_result_free(&r);
        }
        /* the finite languages always finish */
        if (finite) assert_int_equal(n_stop, 8);
        kv_grammar_free(g);
        kvlm_grammar_free(h);
    }
    assert_true(n_complete_json >= 8);
    kvlm_session_free(s);
    kvlm_model_free(m);
}

/* Same seed, same constrained text: twice alone, with drafts, and batched with kvlm_decode_batch
 * and one sampler per sequence. */
static void test_generate_reproducible_batched(void **state) {
    (void)state;
    kvlm_model *m = load(SYNTH);
    kvlm_grammar *h = grammar_for(m, G_JSON_SMALL, NULL);
    enum { B = 4, MAXT = 48 };
    kvlm_token alone[B][MAXT];
    int32_t n_alone[B];
    kvlm_session *s = session(m, 256);
    for (int b = 0; b < B; b++) {
        for (int rep = 0; rep < 3; rep++) {
            kvlm_generate_params gp = kvlm_generate_default_params();
            gp.sampling.grammar = h;
            if (rep == 2) gp.draft_max = 4; /* speculative decoding (prompt lookup): the same text */
            gp.sampling.seed = 100 + (uint64_t)b;
            gp.sampling.temperature = 1.0f;
            gp.max_tokens = MAXT;
            kvlm_generate_result r;
            kvlm_error err;
            if (kvlm_generate(s, "Once upon a time", &gp, NULL, NULL, &r, &err) != KVLM_OK) fail_msg("%s", err.msg);
            assert_int_equal(r.finish, KVLM_FINISH_STOP);
            if (rep == 0) {
                n_alone[b] = r.n_completion;
                memcpy(alone[b], r.tokens, (size_t)r.n_completion * sizeof *r.tokens);
            } else {
                assert_int_equal(r.n_completion, n_alone[b]);
                assert_memory_equal(r.tokens, alone[b], (size_t)r.n_completion * sizeof *r.tokens);
            }
            kvlm_generate_result_free(&r);
        }
    }
    /* the seeds give different texts (the test would be weak otherwise) */
    assert_true(n_alone[0] != n_alone[1] || memcmp(alone[0], alone[1], (size_t)n_alone[0] * sizeof(kvlm_token)));
    kvlm_session_free(s);

    /* batched: the prompt, then one token of every live sequence per kvlm_decode_batch */
    const int32_t nv = kvlm_n_vocab(m);
    kvlm_token prompt[64];
    const char *ptext = "Once upon a time";
    int32_t np = kvlm_tokenize(m, ptext, strlen(ptext), prompt, 64, true, true);
    assert_true(np > 0);
    kvlm_session *ss[B];
    kvlm_sampler *smp[B];
    float *logits = malloc((size_t)B * (size_t)nv * sizeof *logits);
    kvlm_token got[B][MAXT];
    int32_t n_got[B] = {0};
    bool done[B] = {0};
    for (int b = 0; b < B; b++) {
        ss[b] = session(m, 256);
        kvlm_sampling_params sp = kvlm_sampling_default_params();
        sp.grammar = h;
        sp.seed = 100 + (uint64_t)b;
        sp.temperature = 1.0f;
        assert_int_equal(kvlm_sampler_new(&sp, nv, &smp[b], NULL), KVLM_OK);
        for (int32_t i = 0; i < np; i++) assert_int_equal(kvlm_sampler_accept_history(smp[b], prompt[i], NULL), KVLM_OK);
        assert_int_equal(kvlm_eval(ss[b], prompt, np, 0, logits + (size_t)b * (size_t)nv, false, NULL), KVLM_OK);
    }
    for (int step = 0; step < MAXT; step++) {
        kvlm_session *bs[B];
        kvlm_token bt[B];
        int idx[B], nb = 0;
        for (int b = 0; b < B; b++) {
            if (done[b]) continue;
            kvlm_token t;
            kvlm_error err;
            if (kvlm_sampler_sample(smp[b], logits + (size_t)b * (size_t)nv, &t, &err) != KVLM_OK) fail_msg("%s", err.msg);
            assert_int_equal(kvlm_sampler_accept(smp[b], t, NULL), KVLM_OK);
            if (kvlm_token_is_eog(m, t)) {
                done[b] = true;
                continue;
            }
            got[b][n_got[b]++] = t;
            if (!kvlm_sampler_grammar_can_continue(smp[b])) {
                done[b] = true;
                continue;
            }
            bs[nb] = ss[b];
            bt[nb] = t;
            idx[nb++] = b;
        }
        if (!nb) break;
        float *bl = malloc((size_t)nb * (size_t)nv * sizeof *bl);
        assert_int_equal(kvlm_decode_batch(bs, bt, nb, bl, NULL), KVLM_OK);
        for (int i = 0; i < nb; i++) memcpy(logits + (size_t)idx[i] * (size_t)nv, bl + (size_t)i * (size_t)nv, (size_t)nv * sizeof *bl);
        free(bl);
    }
    for (int b = 0; b < B; b++) {
        assert_true(done[b]);
        assert_true(kvlm_sampler_grammar_complete(smp[b]));
        assert_int_equal(n_got[b], n_alone[b]);
        assert_memory_equal(got[b], alone[b], (size_t)n_got[b] * sizeof(kvlm_token));
        kvlm_sampler_free(smp[b]);
        kvlm_session_free(ss[b]);
    }
    free(logits);
    kvlm_grammar_free(h);
    kvlm_model_free(m);
}

static kvlm_token find_piece(kvlm_model *m, const char *want) {
    for (kvlm_token t = 0; t < kvlm_n_vocab(m); t++) {
        char p[64];
        int32_t n = kvlm_token_to_piece(m, t, p, sizeof p, false);
        if (n == (int32_t)strlen(want) && !memcmp(p, want, (size_t)n)) return t;
    }
    fail_msg("no token \"%s\"", want);
    return -1;
}

/* kvlm_sampler_accept refuses a token the grammar does not allow and changes nothing; reset
 * goes back to the start; greedy with a grammar picks the best allowed token. */
static void test_sampler_api(void **state) {
    (void)state;
    kvlm_model *m = load(SYNTH);
    kvlm_grammar *h = grammar_for(m, "root ::= \"yes\" | \"no\"\n", NULL);
    const int32_t nv = kvlm_n_vocab(m);
    kvlm_sampling_params sp = kvlm_sampling_default_params();
    sp.grammar = h;
    sp.temperature = 0.0f;
    kvlm_sampler *smp = NULL;
    assert_int_equal(kvlm_sampler_new(&sp, nv, &smp, NULL), KVLM_OK);
    float *logits = calloc((size_t)nv, sizeof *logits);
    /* the tokens spelled exactly "yes", "no", "hello" (the tokenizer would give "\u2581no") */
    kvlm_token yes[1] = {find_piece(m, "yes")}, no[1] = {find_piece(m, "no")}, hello[1] = {find_piece(m, "hello")};
    logits[hello[0]] = 10.0f; /* the best token is not allowed */
    logits[no[0]] = 5.0f;
    logits[yes[0]] = 4.0f;
    kvlm_token t = -1;
    kvlm_error err;
    assert_int_equal(kvlm_sampler_sample(smp, logits, &t, &err), KVLM_OK);
    assert_int_equal(t, no[0]);
    assert_int_equal(kvlm_sampler_accept(smp, hello[0], &err), KVLM_ERR_INVALID_ARG);
    assert_false(kvlm_sampler_grammar_complete(smp));
    assert_int_equal(kvlm_sampler_accept(smp, yes[0], &err), KVLM_OK);
    assert_true(kvlm_sampler_grammar_complete(smp));
    assert_false(kvlm_sampler_grammar_can_continue(smp));
    /* now only end-of-generation is allowed */
    assert_int_equal(kvlm_sampler_sample(smp, logits, &t, &err), KVLM_OK);
    assert_true(kvlm_token_is_eog(m, t));
    kvlm_sampler_reset(smp);
    assert_false(kvlm_sampler_grammar_complete(smp));
    assert_int_equal(kvlm_sampler_sample(smp, logits, &t, &err), KVLM_OK);
    assert_int_equal(t, no[0]);
    kvlm_sampler_free(smp);
    /* without a grammar: complete and continuable */
    sp.grammar = NULL;
    assert_int_equal(kvlm_sampler_new(&sp, nv, &smp, NULL), KVLM_OK);
    assert_true(kvlm_sampler_grammar_complete(smp));
    assert_true(kvlm_sampler_grammar_can_continue(smp));
    kvlm_sampler_free(smp);
    /* a grammar no token can follow (a character no piece starts with): a clear error */
    kvlm_grammar h2 = {compile("root ::= \"z\"\n", NULL), small_vocab()};
    sp.grammar = &h2;
    assert_int_equal(kvlm_sampler_new(&sp, N_V, &smp, NULL), KVLM_OK);
    assert_int_equal(kvlm_sampler_sample(smp, logits, &t, &err), KVLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "grammar allows no token"));
    kvlm_sampler_free(smp);
    kv_grammar_free(h2.g);
    kv_gvocab_free(h2.v);
    /* generation ends with "stop" when the grammar is finished */
    kvlm_session *s = session(m, 128);
    kvlm_generate_params gp = kvlm_generate_default_params();
    gp.sampling.grammar = h;
    gp.sampling.temperature = 0.0f;
    gp.max_tokens = 20;
    kvlm_generate_result r;
    if (kvlm_generate(s, "Hello", &gp, NULL, NULL, &r, &err) != KVLM_OK) fail_msg("%s", err.msg);
    assert_int_equal(r.finish, KVLM_FINISH_STOP);
    assert_true(!strcmp(r.text, "yes") || !strcmp(r.text, "no"));
    kvlm_generate_result_free(&r);
    kvlm_session_free(s);
    free(logits);
    kvlm_grammar_free(h);
    kvlm_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_byte_level),
        cmocka_unit_test(test_prefixes_and_utf8),
        cmocka_unit_test(test_recursion),
        cmocka_unit_test(test_empty_class),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_mask_small_vocab),
        cmocka_unit_test(test_mask_32k),
        cmocka_unit_test(test_sampler_api),
        cmocka_unit_test(test_generate_under_grammars),
        cmocka_unit_test(test_generate_reproducible_batched),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
