/* kvlm.h: grammars. A kvlm_grammar is a compiled GBNF grammar with the trie of
 * its model's vocabulary (the tokens' pieces as kvlm_token_to_piece gives them
 * without special rendering: control and unknown tokens have none, so they are
 * never allowed; end-of-generation tokens are allowed where the grammar is
 * complete). Samplers made with it in their parameters each keep a state. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/error.h"
#include "grammar/grammar.h"
#include "model/model.h"
#include "tokenizer/vocab.h"

/* binds a compiled grammar to model's vocabulary (g is taken, freed on failure) */
static kvlm_status bind_vocab(const kvlm_model *model, kv_grammar *g, kvlm_grammar **out, kvlm_error *err) {
    kvlm_status st = KVLM_OK;
    const kv_vocab *v = model->vocab;
    const int32_t nv = kvlm_n_vocab(model), nt = kv_vocab_n_tokens(v);
    const char **piece = calloc((size_t)nv, sizeof *piece);
    uint32_t *len = calloc((size_t)nv, sizeof *len);
    bool *eog = calloc((size_t)nv, sizeof *eog);
    kv_buf pool = {0};
    size_t *off = calloc((size_t)nv, sizeof *off);
    if (!piece || !len || !eog || !off) st = kv_fail(err, KVLM_ERR_NOMEM, "grammar: out of memory");
    for (int32_t t = 0; !st && t < nv && t < nt; t++) {
        char buf[256];
        int32_t n = kv_vocab_token_to_piece(v, t, buf, (int32_t)sizeof buf, false);
        char *big = NULL;
        if (n < 0) {
            big = malloc((size_t)-n);
            n = big ? kv_vocab_token_to_piece(v, t, big, -n, false) : 0;
        }
        off[t] = pool.n;
        len[t] = n > 0 ? (uint32_t)n : 0;
        if (n > 0) kv_buf_add(&pool, big ? big : buf, (size_t)n);
        free(big);
        eog[t] = kv_vocab_is_eog(v, t);
    }
    if (!st && pool.oom) st = kv_fail(err, KVLM_ERR_NOMEM, "grammar: out of memory");
    if (!st)
        for (int32_t t = 0; t < nv; t++) piece[t] = pool.data ? pool.data + off[t] : "";
    kv_gvocab *gv = NULL;
    if (!st) st = kv_gvocab_new(nv, piece, len, eog, &gv, err);
    free(piece);
    free(len);
    free(eog);
    free(off);
    free(pool.data);
    kvlm_grammar *h = NULL;
    if (!st && !(h = calloc(1, sizeof *h))) st = kv_fail(err, KVLM_ERR_NOMEM, "grammar: out of memory");
    if (st) {
        kv_grammar_free(g);
        kv_gvocab_free(gv);
        return st;
    }
    h->g = g;
    h->v = gv;
    *out = h;
    return KVLM_OK;
}

kvlm_status kvlm_grammar_new_gbnf(const kvlm_model *model, const char *text, const char *root, kvlm_grammar **out,
                                  kvlm_error *err) {
    kv_error_clear(err);
    if (!out) return kv_fail(err, KVLM_ERR_INVALID_ARG, "grammar_new_gbnf: NULL argument");
    *out = NULL;
    if (!model || !text) return kv_fail(err, KVLM_ERR_INVALID_ARG, "grammar_new_gbnf: NULL argument");
    kv_grammar *g = NULL;
    kvlm_status st = kv_grammar_parse(text, strlen(text), root, &g, err);
    if (st) return st;
    return bind_vocab(model, g, out, err);
}

kvlm_status kvlm_json_schema_to_gbnf(const char *schema, char **gbnf, kvlm_error *err) {
    kv_error_clear(err);
    if (!gbnf) return kv_fail(err, KVLM_ERR_INVALID_ARG, "json_schema_to_gbnf: NULL argument");
    *gbnf = NULL;
    if (!schema) return kv_fail(err, KVLM_ERR_INVALID_ARG, "json_schema_to_gbnf: NULL argument");
    return kv_json_schema_to_gbnf(schema, strlen(schema), gbnf, err);
}

void kvlm_string_free(char *s) { free(s); }

kvlm_status kvlm_grammar_new_json_schema(const kvlm_model *model, const char *schema, kvlm_grammar **out,
                                         kvlm_error *err) {
    kv_error_clear(err);
    if (!out) return kv_fail(err, KVLM_ERR_INVALID_ARG, "grammar_new_json_schema: NULL argument");
    *out = NULL;
    if (!model || !schema) return kv_fail(err, KVLM_ERR_INVALID_ARG, "grammar_new_json_schema: NULL argument");
    char *text = NULL;
    kvlm_status st = kv_json_schema_to_gbnf(schema, strlen(schema), &text, err);
    if (st) return st;
    kv_grammar *g = NULL;
    st = kv_grammar_parse(text, strlen(text), NULL, &g, err);
    free(text);
    if (st) { /* a schema whose grammar does not compile (left recursion through $ref) */
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err ? err->msg : "");
        return kv_fail(err, st, "json schema: its grammar does not compile: %s", msg);
    }
    return bind_vocab(model, g, out, err);
}

void kvlm_grammar_free(kvlm_grammar *g) {
    if (!g) return;
    kv_grammar_free(g->g);
    kv_gvocab_free(g->v);
    free(g);
}
