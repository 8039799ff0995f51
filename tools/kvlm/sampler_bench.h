/* Cost of the sampler chain (kvlm bench --incremental), on the public sampler API. */
#ifndef KVLM_TOOL_SAMPLER_BENCH_H
#define KVLM_TOOL_SAMPLER_BENCH_H

#include <stdint.h>

/* Mean microseconds per kvlm_sampler_sample (+ accept) over iters calls with
 * a typical chain (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, repeat
 * penalty 1.1 over the last 64 tokens) on pseudo-random N(0, 2^2) logits of
 * n_vocab entries, after a full penalty window and 16 warm-up samples.
 * Returns a negative value on failure (bad arguments, no memory). */
double cli_sampler_bench_us(int32_t n_vocab, int iters);

#endif
