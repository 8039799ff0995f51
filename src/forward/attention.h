/* Attention over the paged KV cache, the one kernel between a layer's q/k/v
 * and its output projection. For each query token t (each with its own
 * sequence, so sessions can be batched) and each head h:
 *     out[t][h] = softmax(q[t][h] . K / sqrt(head_dim)) V
 * over the slots the token may see: a non-ring sequence's slots 0..p (p the
 * token's position; slots hold positions in order), a ring's slots whose
 * positions lie in (p - window, p]. Keys and values are read from the cache
 * only (through kv_cache.h's page accessors and codecs), so a token sees the
 * same bytes whether it was evaluated in a batch, alone or with other
 * sessions.
 *
 * Work items are (up to 8 tokens of one sequence, a run of kv heads), taken
 * one at a time by the threads; an item walks the pages with the kv heads
 * inner, so a page's K (then V) rows are read once per item while they are
 * in cache. Keys are dotted in place: q is converted once to the keys'
 * vec_dot type (F16, or Q8_0 for Q8_0/Q4_0 keys) and a gemm per kv head and
 * page scores all its query heads (GQA); F32, F16 and Q8_0 value rows are
 * summed in place. Each query head's reduction (scores, softmax over all its
 * slots, values in slot order) is fixed by its position and the page
 * boundaries alone, so results do not depend on the batch, the items or the
 * thread count. */
#ifndef KV_ATTENTION_H
#define KV_ATTENTION_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/tpool.h"
#include "kv/kv_cache.h"

typedef struct kv_attention kv_attention;

/* Per-thread scratch for nth threads and the head geometry. prefetch: issue
 * prefetches for the next page's rows while walking one (--kv-prefetch). */
kvlm_status kv_attention_new(int nth, int32_t n_head, int32_t n_head_kv, int32_t head_dim, bool prefetch,
                             kv_attention **out, kvlm_error *err);
void kv_attention_free(kv_attention *a);
/* Room for the scores of every head over n slots per thread (an item of several tokens uses more when
   it fits); false when out of memory (the old room is kept). */
bool kv_attention_reserve(kv_attention *a, int64_t n);

/* One layer's attention for T query tokens. */
typedef struct kv_att_batch {
    int layer;
    int32_t T;
    const float *q;         /* T rows of n_head * head_dim, rotated */
    float *out;             /* T rows of n_head * head_dim */
    kv_seq *const *seqs;    /* per token: its sequence (K/V of this layer already written) */
    const int32_t *slots;   /* per token: the slot it was written to */
    const int32_t *n_read;  /* per token: the slots a ring sequence may read (unused otherwise) */
    bool q_scaled;          /* q already carries 1/sqrt(head_dim) (phi3): scores are not scaled again */
    int32_t swa;            /* > 0: the layer sees only positions in (p - swa, p] (gemma3's local layers) */
} kv_att_batch;

/* Runs the batch on the thread pool (kv_attention_reserve must cover every n_read and position + 1). */
void kv_attention_run(kv_attention *a, kv_tpool *pool, const kv_att_batch *b);

#endif
