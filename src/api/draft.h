/* Draft sources for speculative decoding (kvlm_generate with draft_max > 0). */
#ifndef KV_DRAFT_H
#define KV_DRAFT_H

#include <stdint.h>

#include "kvlm.h"

/* Prompt lookup: finds the latest earlier occurrence of the last g tokens of ctx[0, n) for g from
   ngram_max down to 1 (the longest that occurs wins) and copies up to k tokens that followed it to
   out. Returns how many (0: no occurrence). */
int32_t kv_draft_lookup(const kvlm_token *ctx, int32_t n, int32_t ngram_max, kvlm_token *out, int32_t k);

/* Whether a draft model's vocabulary is the target's: the same size, the same special tokens and
   the same text for every token (a draft that tokenizes differently would only ever be rejected). */
kvlm_status kv_draft_check_vocab(const kvlm_model *target, const kvlm_model *draft, kvlm_error *err);

/* A draft model's greedy continuation of ctx[0, n): syncs the draft session to ctx (reusing what it
   holds), then appends up to k of its own most probable tokens; *n_out says how many. Stops early,
   without an error, when the draft session's context is full. */
kvlm_status kv_draft_model(kvlm_session *ds, const kvlm_token *ctx, int32_t n, kvlm_token *out, int32_t k,
                           int32_t *n_out, kvlm_error *err);

#endif
