/* Grammar-constrained decoding: GBNF grammars (llama.cpp's syntax) compiled to
 * flat rules, and a matcher that advances over bytes and computes the set of
 * vocabulary tokens that may come next.
 *
 * Layers: this module uses core only. The vocabulary reaches it as the tokens'
 * byte strings (kv_gvocab_new); the api layer makes those from a model.
 *
 * A kv_grammar and a kv_gvocab are read-only once built (any number of
 * threads). A kv_gstate (one sequence's position in the grammar, with its
 * caches) is used by one thread at a time. docs/GRAMMAR.md has the design. */
#ifndef KV_GRAMMAR_GRAMMAR_H
#define KV_GRAMMAR_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvlm.h"

typedef struct kv_grammar kv_grammar;
typedef struct kv_gvocab kv_gvocab;
typedef struct kv_gstate kv_gstate;

/* Compiles GBNF text[0..len) with start rule `root` (NULL: "root"). A syntax
 * error, an undefined rule, left recursion or a missing root rule is
 * KVLM_ERR_INVALID_ARG with "line L, column C" in the message. */
kvlm_status kv_grammar_parse(const char *text, size_t len, const char *root, kv_grammar **out, kvlm_error *err);
void kv_grammar_free(kv_grammar *g);
/* JSON Schema text[0..len) to GBNF (start rule root), as llama.cpp's json-schema-to-grammar
 * converts (docs/GRAMMAR.md, "JSON Schema"). *out is malloc'd, NUL-terminated. Malformed JSON:
 * KVLM_ERR_INVALID_ARG with its line and column; a keyword or form not supported:
 * KVLM_ERR_UNSUPPORTED naming it, with the JSON pointer of the schema it is in. Uses cJSON. */
kvlm_status kv_json_schema_to_gbnf(const char *text, size_t len, char **out, kvlm_error *err);
/* Rules after compilation (generated rules of groups and repetitions included). */
int32_t kv_grammar_n_rules(const kv_grammar *g);

/* The vocabulary as byte strings: token i is piece[i][0..len[i]); eog[i]
 * marks end-of-generation tokens (allowed only where the grammar is
 * complete). A token with an empty piece that is not end-of-generation
 * (control, unknown) is never allowed. eog may be NULL. */
kvlm_status kv_gvocab_new(int32_t n_vocab, const char *const *piece, const uint32_t *len, const bool *eog,
                          kv_gvocab **out, kvlm_error *err);
void kv_gvocab_free(kv_gvocab *v);
int32_t kv_gvocab_n_vocab(const kv_gvocab *v);
/* Nodes of the token trie (bench and docs). */
int32_t kv_gvocab_n_nodes(const kv_gvocab *v);

/* The public handle of kvlm.h: a compiled grammar bound to a vocabulary. */
struct kvlm_grammar {
    kv_grammar *g;
    kv_gvocab *v;
};

/* A state at the start of g. v may be NULL (byte-level use only: the token
 * functions then fail). Both must outlive the state. */
kvlm_status kv_gstate_new(const kv_grammar *g, const kv_gvocab *v, kv_gstate **out, kvlm_error *err);
void kv_gstate_free(kv_gstate *s);
/* Back to the start of the grammar (caches kept). */
void kv_gstate_reset(kv_gstate *s);

/* Whether bytes[0..n) can continue the text accepted so far (a prefix of
 * some string of the grammar; an incomplete UTF-8 character at the end is
 * fine when some character the grammar allows there starts with it). */
bool kv_gstate_allows_bytes(kv_gstate *s, const char *bytes, size_t n);
/* Advances by bytes[0..n) when they are allowed (else nothing changes and
 * the result is false). */
bool kv_gstate_accept_bytes(kv_gstate *s, const char *bytes, size_t n);
/* The text accepted so far is a whole string of the grammar. */
bool kv_gstate_complete(const kv_gstate *s);
/* Some longer text could still be accepted (false: the grammar is finished). */
bool kv_gstate_can_continue(const kv_gstate *s);

/* Token t may come next: its bytes are allowed (an end-of-generation token:
 * the grammar is complete). */
bool kv_gstate_allows_token(kv_gstate *s, int32_t t);
/* Advances by token t; KVLM_ERR_INVALID_ARG when it is not allowed (nothing
 * changes). An end-of-generation token, allowed when complete, changes nothing. */
kvlm_status kv_gstate_accept_token(kv_gstate *s, int32_t t, kvlm_error *err);
/* The allowed tokens: bit t of the result ((n_vocab + 63) / 64 words) is set
 * when token t is allowed. Valid until the next call on s; NULL (err set)
 * when out of memory. *n_allowed (may be NULL) gets the count. */
const uint64_t *kv_gstate_mask(kv_gstate *s, int32_t *n_allowed, kvlm_error *err);
/* The current state's mask when it is in the cache (no work), else NULL. */
const uint64_t *kv_gstate_cached_mask(const kv_gstate *s);
/* The same mask computed without the per-state mask cache (benchmarks). */
const uint64_t *kv_gstate_mask_uncached(kv_gstate *s, int32_t *n_allowed, kvlm_error *err);
/* Drops every cache (transitions, masks), as the state's garbage collection
 * does; the position is kept (benchmarks of cold masks). */
kvlm_status kv_gstate_flush(kv_gstate *s, kvlm_error *err);

#endif
