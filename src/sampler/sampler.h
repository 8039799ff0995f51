/* Sampler chain: turns one row of logits into a token id.
 *
 * Order of operations (that of llama.cpp's default common sampler chain):
 *   1. logit bias      l[t] += bias (entries for the same token add up)
 *   2. penalties       for each token t seen c > 0 times in the window:
 *                        l = l <= 0 ? l * repeat : l / repeat;
 *                        l -= c * frequency + presence;
 *                      (in double, rounded to float once; see below)
 *   2b. grammar        with params.grammar: tokens it does not allow -> -inf
 *                      (computed only when the unmasked chain would see one;
 *                      the result is that of masking always)
 *   3. temperature <= 0: greedy -- the largest logit, ties to the lowest id.
 *      Otherwise:
 *   4. top-k           keep the k largest logits
 *   5. top-p           keep the smallest prefix whose probability reaches top_p
 *   6. min-p           keep tokens with p >= min_p * p_max
 *   7. temperature     divide by T, softmax
 *   8. draw            one seeded multinomial draw
 * Top-p and min-p look at the distribution at temperature 1 (as in llama.cpp);
 * temperature only shapes the final draw among the survivors.
 *
 * Exact rules (what makes results reproducible across runs and platforms):
 *  - Candidates are ordered by logit, descending, ties to the lower token id.
 *    That order is total, so every stage keeps a well-defined prefix.
 *  - NaN logits (from the input, or produced by bias/penalties) count as -inf.
 *    Tokens at -inf are never candidates: they are never picked and do not
 *    count towards top-k. If no token is left (every logit -inf or NaN),
 *    sampling fails with KVLM_ERR_INVALID_ARG and draws nothing.
 *  - Relative logits: d_i = l_i - l_max, in double; d_i = 0 when l_i == l_max
 *    (so +inf logits give d = 0 and every finite token d = -inf: when some
 *    logit is +inf the distribution is uniform over the +inf tokens).
 *  - Weights: w_i = exp(d_i / T) in double (T = 1 for top-p).
 *  - Top-k keeps the first min(k, #candidates). It is active when
 *    0 < top_k < n_vocab; top_k == 1 takes the greedy path (same token).
 *  - Top-p: Z = sum of w_i (T = 1) over the top-k survivors, summed in double
 *    in descending candidate order when top-k is active, in token-id order
 *    when it is not; keep the smallest n with w_0 + ... + w_{n-1} >= top_p * Z
 *    (running sum in double, descending order). top_p >= 1 is off; top_p <= 0
 *    keeps one token.
 *  - Penalties are computed in double (products exact, so fma contraction
 *    cannot change them) and rounded to float once: they can differ from
 *    llama.cpp's all-float arithmetic by one float ulp.
 *  - Min-p: keep tokens with d_i >= log(min_p) (log in double), i.e.
 *    p_i >= min_p * p_max. The top token is always kept; min_p > 1 counts as 1.
 *  - Draw: x = next output of xoshiro256** (state seeded from `seed` with
 *    splitmix64, 4 outputs in order); u = (x >> 11) * 2^-53 in [0, 1);
 *    target = u * W with W = sum of the final weights in descending order;
 *    pick the first candidate (descending order) whose running double sum
 *    exceeds target (if rounding leaves none, the last one with a non-zero
 *    weight). Exactly one PRNG output is consumed per sample with
 *    temperature > 0 (top_k == 1 included); temperature <= 0 consumes none.
 *  Libm's exp/log are the only platform dependence; a 1-ulp difference in a
 *  double can change a draw only when u lands within ~1e-16 of a boundary.
 *
 * Cost: with top-k on (the usual chain), one vectorized pass copies the
 * logits and takes 64-token block maxima; the k-th largest block maximum
 * bounds the k-th largest logit from below, so only ~k blocks are scanned
 * and only the ~k survivors are sorted (~14 us for 32k tokens, k = 40).
 * With top-k off, min-p alone is as cheap; top-p or a plain softmax needs
 * every token's exp and a radix sort of the survivors (~0.3-1 ms at 32k).
 *
 * A sampler is not thread-safe; use one per sequence. */
#ifndef KV_SAMPLER_SAMPLER_H
#define KV_SAMPLER_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

#include "kvlm.h"

/* The sampler takes the public parameters, kvlm_sampling_params of kvlm.h, as they are.
 * llama.cpp's defaults: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05,
 * repeat 1.0, frequency 0, presence 0, last_n 64; seed 0, no logit bias. */
kvlm_sampling_params kv_sampler_default_params(void);

typedef struct kv_sampler kv_sampler;

/* Validates params (no NaN, finite temperature, repeat_penalty > 0,
 * penalty_last_n >= -1, bias tokens in [0, n_vocab)) and allocates every
 * buffer the sampler will need; sampling never allocates. */
kvlm_status kv_sampler_new(const kvlm_sampling_params *params, int32_t n_vocab,
                           kv_sampler **out, kvlm_error *err);
void kv_sampler_free(kv_sampler *s);

/* The sampler's copy of its parameters (logit_bias points at its own copy). */
const kvlm_sampling_params *kv_sampler_params_of(const kv_sampler *s);
int32_t kv_sampler_n_vocab(const kv_sampler *s);

/* Clears the penalty history and reseeds the PRNG from params.seed, so the
 * sampler behaves exactly as a new one. */
void kv_sampler_reset(kv_sampler *s);
/* Reseeds the PRNG only (the history is kept). */
void kv_sampler_set_seed(kv_sampler *s, uint64_t seed);

/* Adds a token to the penalty history (sample does not do it: call accept
 * with the token actually used, and with the prompt tokens if they should be
 * penalized too). Fails only on a token outside [0, n_vocab). */
kvlm_status kv_sampler_accept(kv_sampler *s, kvlm_token token, kvlm_error *err);

/* With params.grammar: advances the sampler's grammar state by a generated
 * token (KVLM_ERR_INVALID_ARG, nothing changed, when not allowed); without
 * one, nothing. kv_sampler_accept does not touch the grammar. */
kvlm_status kv_sampler_accept_grammar(kv_sampler *s, kvlm_token token, kvlm_error *err);
bool kv_sampler_has_grammar(const kv_sampler *s);
/* The grammar is complete / can take more (true without a grammar). */
bool kv_sampler_grammar_complete(const kv_sampler *s);
bool kv_sampler_grammar_can_continue(const kv_sampler *s);

/* Runs the chain on logits[0..n_vocab) and draws a token. With a grammar,
 * the tokens it does not allow are set to -inf after bias and penalties
 * (computing the mask only when the unmasked chain would have seen a
 * disallowed token: the result is the same either way). */
kvlm_status kv_sampler_sample(kv_sampler *s, const float *logits, kvlm_token *out,
                              kvlm_error *err);

/* One candidate of the final distribution. */
typedef struct kv_sampler_candidate {
    kvlm_token id;
    float logit; /* after bias and penalties, before temperature */
    float p;     /* final probability (after temperature) */
} kv_sampler_candidate;

/* Runs the chain up to the final distribution without drawing (the PRNG is
 * untouched). Writes the first min(n, cap) candidates, in descending order,
 * to out (may be NULL when cap is 0) and n to *n_out. In greedy mode the
 * distribution is the single chosen token with p = 1. */
kvlm_status kv_sampler_candidates(kv_sampler *s, const float *logits,
                                  kv_sampler_candidate *out, int32_t cap,
                                  int32_t *n_out, kvlm_error *err);

#endif
