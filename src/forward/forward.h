/* The forward pass of the llama-family graph over a KV cache. Every output
 * is computed by one fixed sequence of float operations whatever the batch
 * size, chunking or thread count (see quant.h), so logits are a pure
 * function of the token sequence. */
#ifndef KV_FORWARD_H
#define KV_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "core/pool.h"
#include "kv/kv_cache.h"
#include "model/model.h"

typedef struct kv_forward kv_forward;

/* ubatch: most tokens per internal pass (memory for activations). */
kvlm_status kv_forward_new(const kvlm_model *m, kv_cache *cache, kv_pool *pool, int32_t ubatch, kv_forward **out,
                           kvlm_error *err);
void kv_forward_free(kv_forward *f);

/* Evaluates tokens[0..n) at positions cache->n .. cache->n + n - 1 and
 * appends them to the cache. Tokens must be valid ids and must fit in the
 * cache (the caller checks). logits: NULL, the last row (n_vocab floats), or
 * every row (n * n_vocab) when all_logits. */
void kv_forward_eval(kv_forward *f, const int32_t *tokens, int32_t n, float *logits, bool all_logits);

#endif
