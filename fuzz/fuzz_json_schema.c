/* JSON Schema to GBNF (kvlm_json_schema_to_gbnf; src/grammar/jschema.c and
 * its JSON reader src/grammar/json.c): the schema text comes from the input,
 * as a server request's response_format does.
 *
 * Contracts (a violation aborts):
 * - either KVLM_OK with a NUL-terminated GBNF text, or an error status
 *   (invalid_arg, unsupported, nomem) with a message starting "json schema: "
 *   and no text;
 * - the GBNF text compiles (kv_grammar_parse), except for left recursion (a
 *   $ref cycle that reads nothing), and its start rule accepts at least one
 *   byte sequence prefix: the empty prefix is allowed;
 * - the conversion is deterministic: a second run gives the same text. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "grammar/grammar.h"
#include "kvlm.h"

enum { IN_CAP = 1 << 16 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > IN_CAP) return 0;
    char *text = malloc(size + 1);
    if (!text) abort();
    memcpy(text, data, size);
    text[size] = 0;
    if (strlen(text) != size) { /* the API takes a C string: cut at the first NUL */
        size = strlen(text);
    }
    char *g = NULL;
    kvlm_error err;
    kvlm_status st = kvlm_json_schema_to_gbnf(text, &g, &err);
    if (st != KVLM_OK) {
        FUZZ_CHECK(!g, "an error with a text");
        FUZZ_CHECK(st == KVLM_ERR_INVALID_ARG || st == KVLM_ERR_UNSUPPORTED || st == KVLM_ERR_NOMEM, "status %d", st);
        FUZZ_CHECK(err.code == st, "err.code %d, status %d", err.code, st);
        FUZZ_CHECK(!strncmp(err.msg, "json schema: ", 13), "message '%s'", err.msg);
        free(text);
        return 0;
    }
    FUZZ_CHECK(g && strstr(g, "root ::= "), "no root rule in '%s'", g ? g : "(null)");
    char *g2 = NULL;
    FUZZ_CHECK(kvlm_json_schema_to_gbnf(text, &g2, &err) == KVLM_OK && g2 && !strcmp(g, g2), "not deterministic");
    kvlm_string_free(g2);
    kv_grammar *gr = NULL;
    st = kv_grammar_parse(g, strlen(g), NULL, &gr, &err);
    FUZZ_CHECK(st == KVLM_OK || (st == KVLM_ERR_INVALID_ARG && strstr(err.msg, "left recursion")) || st == KVLM_ERR_NOMEM,
               "the GBNF does not compile: %s\n%s", err.msg, g);
    if (gr) {
        kv_gstate *s = NULL;
        FUZZ_CHECK(kv_gstate_new(gr, NULL, &s, &err) == KVLM_OK, "state: %s", err.msg);
        FUZZ_CHECK(kv_gstate_allows_bytes(s, "", 0), "the empty prefix is refused");
        kv_gstate_free(s);
        kv_grammar_free(gr);
    }
    kvlm_string_free(g);
    free(text);
    return 0;
}
