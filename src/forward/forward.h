/* The forward pass of the llama-family graph over a KV cache. Every output
 * is computed by one fixed sequence of float operations whatever the batch
 * size, chunking or thread count (see quant.h), so logits are a pure
 * function of the token sequence. */
#ifndef KV_FORWARD_H
#define KV_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "core/tpool.h"
#include "kv/kv_cache.h"
#include "model/model.h"

typedef struct kv_forward kv_forward;

/* ubatch: most tokens per internal pass (memory for activations). */
kvlm_status kv_forward_new(const kvlm_model *m, kv_seq *seq, kv_tpool *pool, int32_t ubatch, bool prefetch,
                           kv_forward **out, kvlm_error *err);
void kv_forward_free(kv_forward *f);

/* Evaluates tokens[0..n) after what the sequence holds and appends them
 * (applying its overflow policy). Tokens must be valid ids. logits: NULL, the
 * last row (n_vocab floats), or every row (n * n_vocab) when all_logits. On
 * error the sequence keeps the tokens of the passes that completed (*n_done). */
kvlm_status kv_forward_eval(kv_forward *f, const int32_t *tokens, int32_t n, float *logits, bool all_logits,
                            int32_t *n_done, kvlm_error *err);

/* One new token for each of n distinct sequences, in one pass: the weights
 * are read once for all. logits: n rows. Each row equals the single-sequence
 * result bit for bit (every output has its own fixed reduction). */
kvlm_status kv_forward_eval_multi(kv_forward *f, kv_seq *const *seqs, const int32_t *tokens, int32_t n, float *logits,
                                  kvlm_error *err);

#endif
