/* Cost of the sampler chain, for kvlm bench: only kvlm.h's sampler. */
#include "sampler_bench.h"

#include <math.h>
#include <stdlib.h>

#include "core/clock.h"
#include "core/rng.h"
#include "kvlm.h"

#define BENCH_ROWS 8 /* distinct logit rows, cycled */

static double unit_open0(uint64_t *x) { /* (0, 1] */
    return ((double)(kv_splitmix64(x) >> 11) + 1.0) * 0x1.0p-53;
}

double cli_sampler_bench_us(int32_t n_vocab, int iters) {
    if (n_vocab <= 0 || iters <= 0) return -1.0;
    const size_t n = (size_t)n_vocab * BENCH_ROWS;
    float *logits = malloc(n * sizeof *logits);
    if (!logits) return -1.0;
    uint64_t x = 0x6b766c6dull; /* fixed: the bench is reproducible */
    for (size_t i = 0; i < n; i += 2) {
        /* Box-Muller, sigma 2 */
        const double r = sqrt(-2.0 * log(unit_open0(&x))) * 2.0;
        const double a = 6.283185307179586 * unit_open0(&x);
        logits[i] = (float)(r * cos(a));
        if (i + 1 < n) logits[i + 1] = (float)(r * sin(a));
    }

    kvlm_sampling_params p = kvlm_sampling_default_params();
    p.temperature = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.05f;
    p.repeat_penalty = 1.1f;
    p.penalty_last_n = 64;
    p.seed = 1234;
    kvlm_sampler *s = NULL;
    double result = -1.0;
    if (kvlm_sampler_new(&p, n_vocab, &s, NULL) != KVLM_OK) goto done;
    for (int i = 0; i < 64; i++) /* a full penalty window */
        if (kvlm_sampler_accept(s, (kvlm_token)(kv_splitmix64(&x) % (uint64_t)n_vocab), NULL) != KVLM_OK) goto done;

    kvlm_token tok;
    for (int i = 0; i < 16; i++) /* warm-up */
        if (kvlm_sampler_sample(s, logits + (size_t)(i % BENCH_ROWS) * n_vocab, &tok, NULL) != KVLM_OK) goto done;
    const double t0 = kv_now_s();
    for (int i = 0; i < iters; i++) {
        if (kvlm_sampler_sample(s, logits + (size_t)(i % BENCH_ROWS) * n_vocab, &tok, NULL) != KVLM_OK ||
            kvlm_sampler_accept(s, tok, NULL) != KVLM_OK)
            goto done;
    }
    result = (kv_now_s() - t0) * 1e6 / iters;
done:
    kvlm_sampler_free(s);
    free(logits);
    return result;
}
