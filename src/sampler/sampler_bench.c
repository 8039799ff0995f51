/* Cost of the sampler chain, for the bench tool. */
#define _POSIX_C_SOURCE 199309L /* clock_gettime, also under -std=c11 */

#include <math.h>
#include <stdlib.h>
#include <time.h>

#include "sampler.h"

#define KV_BENCH_ROWS 8 /* distinct logit rows, cycled */

static uint64_t bench_next(uint64_t *x) { /* splitmix64 */
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double bench_uniform(uint64_t *x) { /* (0, 1] */
    return ((double)(bench_next(x) >> 11) + 1.0) * 0x1.0p-53;
}

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

double kv_sampler_bench_us(int32_t n_vocab, int iters) {
    if (n_vocab <= 0 || iters <= 0) return -1.0;
    float *logits = malloc((size_t)n_vocab * KV_BENCH_ROWS * sizeof *logits);
    if (!logits) return -1.0;
    uint64_t x = 0x6b766c6dull; /* fixed: the bench is reproducible */
    for (size_t i = 0; i < (size_t)n_vocab * KV_BENCH_ROWS; i += 2) {
        /* Box-Muller, sigma 2 */
        const double r = sqrt(-2.0 * log(bench_uniform(&x))) * 2.0;
        const double a = 6.283185307179586 * bench_uniform(&x);
        logits[i] = (float)(r * cos(a));
        if (i + 1 < (size_t)n_vocab * KV_BENCH_ROWS) logits[i + 1] = (float)(r * sin(a));
    }

    kvlm_sampling_params p = kv_sampler_default_params();
    p.temperature = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.05f;
    p.repeat_penalty = 1.1f;
    p.penalty_last_n = 64;
    p.seed = 1234;
    kv_sampler *s = NULL;
    double result = -1.0;
    if (kv_sampler_new(&p, n_vocab, &s, NULL) != KVLM_OK) goto done;
    for (int i = 0; i < 64; i++) /* a full penalty window */
        if (kv_sampler_accept(s, (kvlm_token)(bench_next(&x) % (uint64_t)n_vocab), NULL) != KVLM_OK) goto done;

    kvlm_token tok;
    for (int i = 0; i < 16; i++) /* warm-up */
        if (kv_sampler_sample(s, logits + (size_t)(i % KV_BENCH_ROWS) * n_vocab, &tok, NULL) != KVLM_OK)
            goto done;
    const double t0 = now_us();
    for (int i = 0; i < iters; i++) {
        if (kv_sampler_sample(s, logits + (size_t)(i % KV_BENCH_ROWS) * n_vocab, &tok, NULL) != KVLM_OK ||
            kv_sampler_accept(s, tok, NULL) != KVLM_OK)
            goto done;
    }
    result = (now_us() - t0) / iters;
done:
    kv_sampler_free(s);
    free(logits);
    return result;
}
