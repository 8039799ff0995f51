/* Sampler chain: every stage against hand-computed distributions, the PRNG
 * and draw rule against an independent implementation, the fast paths
 * (block-maxima top-k, radix sort, min-p prefilter) against a brute-force
 * reference of the documented rules, and draw frequencies by chi-square. */
#include <math.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sampler/sampler.h"
#include "sampler_bench.h" /* tools/kvlm: the bench of kvlm bench, compiled in */

#define NV_MAX 32000

/* ------------------------------------------------------------- helpers */

static kvlm_sampling_params plain_params(void) {
    kvlm_sampling_params p = kv_sampler_default_params();
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repeat_penalty = 1.0f;
    p.frequency_penalty = 0.0f;
    p.presence_penalty = 0.0f;
    p.penalty_last_n = 0;
    p.seed = 42;
    return p;
}

static kv_sampler *make(const kvlm_sampling_params *p, int32_t nv) {
    kv_sampler *s = NULL;
    kvlm_error err;
    kvlm_status st = kv_sampler_new(p, nv, &s, &err);
    if (st != KVLM_OK) print_error("kv_sampler_new: %s\n", err.msg);
    assert_int_equal(st, KVLM_OK);
    assert_non_null(s);
    return s;
}

/* Candidates of the chain; returns their number. */
static int32_t cands(kv_sampler *s, const float *logits, kv_sampler_candidate *out, int32_t cap) {
    int32_t n = -1;
    kvlm_error err;
    kvlm_status st = kv_sampler_candidates(s, logits, out, cap, &n, &err);
    if (st != KVLM_OK) print_error("kv_sampler_candidates: %s\n", err.msg);
    assert_int_equal(st, KVLM_OK);
    assert_true(n >= 0);
    return n;
}

static kvlm_token sample1(kv_sampler *s, const float *logits) {
    kvlm_token t = -1;
    kvlm_error err;
    assert_int_equal(kv_sampler_sample(s, logits, &t, &err), KVLM_OK);
    return t;
}

/* Candidates of a one-off sampler. */
static int32_t run_once(const kvlm_sampling_params *p, const float *logits, int32_t nv,
                        kv_sampler_candidate *out, int32_t cap) {
    kv_sampler *s = make(p, nv);
    int32_t n = cands(s, logits, out, cap);
    kv_sampler_free(s);
    return n;
}

static void expect_ids(const kv_sampler_candidate *c, int32_t n, const int32_t *ids, int32_t n_ids) {
    assert_int_equal(n, n_ids);
    for (int32_t i = 0; i < n; i++) assert_int_equal(c[i].id, ids[i]);
}

static void expect_probs(const kv_sampler_candidate *c, int32_t n, const double *p, double tol) {
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        if (fabs(c[i].p - p[i]) > tol)
            fail_msg("candidate %d (id %d): p %.9g, expected %.9g", (int)i, (int)c[i].id, (double)c[i].p, p[i]);
        sum += c[i].p;
    }
    assert_true(fabs(sum - 1.0) < 1e-5);
}

/* Independent PRNG, from the definitions (splitmix64 seeding xoshiro256**). */
typedef struct { uint64_t s[4]; } t_rng;

static uint64_t t_splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static uint64_t t_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static void t_seed(t_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = t_splitmix(&seed);
}
static uint64_t t_next(t_rng *r) {
    uint64_t *s = r->s;
    const uint64_t out = t_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = t_rotl(s[3], 45);
    return out;
}
static double t_uniform(t_rng *r) { return (double)(t_next(r) >> 11) * 0x1.0p-53; }

/* ---------------------------------------------- brute-force reference */

typedef struct { float logit; int32_t id; } r_cand;

static int r_cmp(const void *a, const void *b) {
    const r_cand *x = a, *y = b;
    if (x->logit > y->logit) return -1;
    if (x->logit < y->logit) return 1;
    return (x->id > y->id) - (x->id < y->id);
}

static double r_rel(float l, float lmax) { return l == lmax ? 0.0 : (double)l - (double)lmax; }

/* The documented rules, written plainly (full sort, counts recomputed from
 * the whole history). Fills c (sorted) and w; returns n, or -1 when no
 * candidate. */
static int32_t reference_chain(const kvlm_sampling_params *p, int32_t nv, const float *logits,
                               const int32_t *hist, int32_t n_hist, r_cand *c, double *w) {
    float *work = malloc((size_t)nv * sizeof *work);
    int32_t *count = calloc((size_t)nv, sizeof *count);
    assert_non_null(work);
    assert_non_null(count);
    memcpy(work, logits, (size_t)nv * sizeof *work);
    for (int32_t i = 0; i < p->n_logit_bias; i++) work[p->logit_bias[i].token] += p->logit_bias[i].bias;
    if (p->penalty_last_n != 0) {
        int32_t from = 0;
        if (p->penalty_last_n > 0 && n_hist > p->penalty_last_n) from = n_hist - p->penalty_last_n;
        for (int32_t i = from; i < n_hist; i++) count[hist[i]]++;
        if (p->repeat_penalty != 1.0f || p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f)
            for (int32_t t = 0; t < nv; t++) {
                if (count[t] == 0) continue;
                const double l = work[t], rp = p->repeat_penalty;
                const double x = l <= 0.0 ? l * rp : l / rp;
                work[t] = (float)(x - ((double)count[t] * p->frequency_penalty + p->presence_penalty));
            }
    }
    int32_t n = 0;
    for (int32_t i = 0; i < nv; i++)
        if (work[i] > -INFINITY) c[n++] = (r_cand){work[i], i};
    qsort(c, (size_t)n, sizeof *c, r_cmp);
    if (n > 0) {
        const float lmax = c[0].logit;
        double z_ids = 0.0; /* T = 1 mass in id order */
        for (int32_t i = 0; i < nv; i++)
            if (work[i] > -INFINITY) z_ids += exp(r_rel(work[i], lmax));
        if (p->temperature <= 0.0f) {
            n = 1;
        } else {
            const bool k_on = p->top_k > 0 && p->top_k < nv;
            if (k_on && n > p->top_k) n = p->top_k;
            if (p->top_p < 1.0f) {
                double z = 0.0;
                if (k_on) {
                    for (int32_t i = 0; i < n; i++) z += exp(r_rel(c[i].logit, lmax));
                } else {
                    z = z_ids;
                }
                double cum = 0.0;
                int32_t m = n;
                for (int32_t i = 0; i < n; i++) {
                    cum += exp(r_rel(c[i].logit, lmax));
                    if (cum >= (double)p->top_p * z) {
                        m = i + 1;
                        break;
                    }
                }
                n = m;
            }
            if (p->min_p > 0.0f) {
                const double thr = log((double)(p->min_p > 1.0f ? 1.0f : p->min_p));
                int32_t m = 1;
                while (m < n && r_rel(c[m].logit, lmax) >= thr) m++;
                n = m;
            }
        }
        for (int32_t i = 0; i < n; i++)
            w[i] = p->temperature <= 0.0f ? 1.0 : exp(r_rel(c[i].logit, lmax) / (double)p->temperature);
    } else {
        n = -1;
    }
    free(work);
    free(count);
    return n;
}

/* ------------------------------------------------------------- tests */

static void test_defaults(void **state) {
    (void)state;
    kvlm_sampling_params p = kv_sampler_default_params();
    assert_true(p.temperature == 0.8f);
    assert_int_equal(p.top_k, 40);
    assert_true(p.top_p == 0.95f);
    assert_true(p.min_p == 0.05f);
    assert_true(p.repeat_penalty == 1.0f);
    assert_true(p.frequency_penalty == 0.0f);
    assert_true(p.presence_penalty == 0.0f);
    assert_int_equal(p.penalty_last_n, 64);
    assert_null(p.logit_bias);
    assert_int_equal(p.n_logit_bias, 0);
    kv_sampler *s = make(&p, 100);
    assert_int_equal(kv_sampler_n_vocab(s), 100);
    assert_true(kv_sampler_params_of(s)->top_p == 0.95f);
    kv_sampler_free(s);
    kv_sampler_free(NULL);
}

static void expect_invalid(const kvlm_sampling_params *p, int32_t nv) {
    kv_sampler *s = (kv_sampler *)&s; /* must be reset to NULL */
    kvlm_error err = {KVLM_OK, ""};
    assert_int_equal(kv_sampler_new(p, nv, &s, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(err.code, KVLM_ERR_INVALID_ARG);
    assert_true(strlen(err.msg) > 0);
    assert_null(s);
}

static void test_invalid_params(void **state) {
    (void)state;
    kvlm_sampling_params p = plain_params();
    expect_invalid(&p, 0);
    expect_invalid(&p, -5);
    p.temperature = NAN;
    expect_invalid(&p, 10);
    p.temperature = INFINITY;
    expect_invalid(&p, 10);
    p = plain_params();
    p.top_p = NAN;
    expect_invalid(&p, 10);
    p = plain_params();
    p.min_p = NAN;
    expect_invalid(&p, 10);
    p = plain_params();
    p.repeat_penalty = 0.0f;
    expect_invalid(&p, 10);
    p.repeat_penalty = -1.0f;
    expect_invalid(&p, 10);
    p = plain_params();
    p.frequency_penalty = INFINITY;
    expect_invalid(&p, 10);
    p = plain_params();
    p.penalty_last_n = -2;
    expect_invalid(&p, 10);
    p = plain_params();
    kvlm_logit_bias b[2] = {{3, 1.0f}, {10, 1.0f}};
    p.logit_bias = b;
    p.n_logit_bias = 2;
    expect_invalid(&p, 10); /* token 10 outside [0, 10) */
    b[1] = (kvlm_logit_bias){-1, 1.0f};
    expect_invalid(&p, 10);
    b[1] = (kvlm_logit_bias){4, NAN};
    expect_invalid(&p, 10);
    p.logit_bias = NULL;
    expect_invalid(&p, 10);
    assert_int_equal(kv_sampler_new(NULL, 10, &(kv_sampler *){NULL}, NULL), KVLM_ERR_INVALID_ARG);
}

static void test_greedy(void **state) {
    (void)state;
    kvlm_sampling_params p = plain_params();
    p.temperature = 0.0f;
    const float l[7] = {NAN, 1.0f, 5.0f, 3.0f, 5.0f, -INFINITY, 4.0f};
    kv_sampler *s = make(&p, 7);
    for (int i = 0; i < 10; i++) assert_int_equal(sample1(s, l), 2); /* tie 2/4: lower id */
    kv_sampler_candidate c[7];
    assert_int_equal(cands(s, l, c, 7), 1);
    assert_int_equal(c[0].id, 2);
    assert_true(c[0].logit == 5.0f);
    assert_true(c[0].p == 1.0f);
    kv_sampler_free(s);

    /* negative temperature is greedy too; top-k/top-p/min-p cannot change it */
    p.temperature = -1.0f;
    p.top_k = 3;
    p.top_p = 0.1f;
    p.min_p = 0.9f;
    s = make(&p, 7);
    assert_int_equal(sample1(s, l), 2);
    kv_sampler_free(s);
}

static void test_all_masked(void **state) {
    (void)state;
    const float l[4] = {-INFINITY, NAN, -INFINITY, NAN};
    const float temps[2] = {0.0f, 0.7f};
    const int32_t ks[3] = {0, 2, 1};
    for (int ti = 0; ti < 2; ti++)
        for (int ki = 0; ki < 3; ki++) {
            kvlm_sampling_params p = plain_params();
            p.temperature = temps[ti];
            p.top_k = ks[ki];
            p.min_p = 0.1f;
            p.top_p = 0.9f;
            kv_sampler *s = make(&p, 4);
            kvlm_token t = 77;
            kvlm_error err;
            assert_int_equal(kv_sampler_sample(s, l, &t, &err), KVLM_ERR_INVALID_ARG);
            assert_true(strstr(err.msg, "-inf") != NULL);
            int32_t n = 5;
            assert_int_equal(kv_sampler_candidates(s, l, NULL, 0, &n, NULL), KVLM_ERR_INVALID_ARG);
            assert_int_equal(n, 0);
            kv_sampler_free(s);
        }
    /* a logit bias of -inf on the only finite token has the same effect */
    kvlm_sampling_params p = plain_params();
    const kvlm_logit_bias b = {1, -INFINITY};
    p.logit_bias = &b;
    p.n_logit_bias = 1;
    const float l2[3] = {-INFINITY, 2.0f, NAN};
    kv_sampler *s = make(&p, 3);
    kvlm_token t;
    assert_int_equal(kv_sampler_sample(s, l2, &t, NULL), KVLM_ERR_INVALID_ARG);
    kv_sampler_free(s);
}

static void test_bad_calls(void **state) {
    (void)state;
    kvlm_sampling_params p = plain_params();
    kv_sampler *s = make(&p, 4);
    const float l[4] = {0, 1, 2, 3};
    kvlm_token t;
    int32_t n;
    kv_sampler_candidate c[4];
    assert_int_equal(kv_sampler_sample(s, NULL, &t, NULL), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kv_sampler_sample(s, l, NULL, NULL), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kv_sampler_sample(NULL, l, &t, NULL), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kv_sampler_candidates(s, l, NULL, 2, &n, NULL), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kv_sampler_candidates(s, l, c, -1, &n, NULL), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kv_sampler_candidates(s, l, c, 4, NULL, NULL), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kv_sampler_accept(s, -1, NULL), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kv_sampler_accept(s, 4, NULL), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kv_sampler_accept(s, 3, NULL), KVLM_OK);
    assert_int_equal(kv_sampler_accept(NULL, 3, NULL), KVLM_ERR_INVALID_ARG);
    kv_sampler_free(s);
}

static void test_temperature_softmax(void **state) {
    (void)state;
    kv_sampler_candidate c[3];
    const int32_t ids[3] = {2, 1, 0};
    const float l[3] = {1.0f, 2.0f, 3.0f};
    kvlm_sampling_params p = plain_params();
    /* softmax([1,2,3]) */
    const double t1[3] = {0.6652409557748218, 0.24472847105479764, 0.09003057317038046};
    int32_t n = run_once(&p, l, 3, c, 3);
    expect_ids(c, n, ids, 3);
    expect_probs(c, n, t1, 1e-6);
    /* T = 0.5: softmax([2,4,6]) */
    p.temperature = 0.5f;
    const double t05[3] = {0.8668133321973349, 0.11731042782619838, 0.015876239976466765};
    n = run_once(&p, l, 3, c, 3);
    expect_ids(c, n, ids, 3);
    expect_probs(c, n, t05, 1e-6);
    /* T = 2: softmax([0.5,1,1.5]) */
    p.temperature = 2.0f;
    const double t2[3] = {0.506480391055654, 0.3071958857184984, 0.1863237232258476};
    n = run_once(&p, l, 3, c, 3);
    expect_ids(c, n, ids, 3);
    expect_probs(c, n, t2, 1e-6);
    /* logits reported before temperature */
    assert_true(c[0].logit == 3.0f && c[2].logit == 1.0f);

    /* the max is subtracted: huge logits neither overflow nor underflow */
    p.temperature = 1.0f;
    const float big[3] = {1000.0f, 1001.0f, 1002.0f};
    n = run_once(&p, big, 3, c, 3);
    expect_ids(c, n, ids, 3);
    expect_probs(c, n, t1, 1e-6);
    const float small[3] = {-1002.0f, -1001.0f, -1000.0f};
    const int32_t rids[3] = {2, 1, 0};
    n = run_once(&p, small, 3, c, 3);
    expect_ids(c, n, rids, 3);
    expect_probs(c, n, t1, 1e-6);

    /* a tiny temperature concentrates everything on the top token */
    p.temperature = 1e-6f;
    n = run_once(&p, l, 3, c, 3);
    assert_int_equal(n, 3);
    assert_true(c[0].id == 2 && c[0].p == 1.0f && c[1].p == 0.0f);
}

static void test_top_k(void **state) {
    (void)state;
    const float l[10] = {0.3f, 0.9f, 0.1f, 0.7f, 0.5f, 0.0f, 0.8f, 0.2f, 0.6f, 0.4f};
    kv_sampler_candidate c[16];
    kvlm_sampling_params p = plain_params();
    p.top_k = 3;
    int32_t n = run_once(&p, l, 10, c, 16);
    const int32_t ids3[3] = {1, 6, 3};
    expect_ids(c, n, ids3, 3);
    const double e0 = exp(0.0), e1 = exp(-0.1), e2 = exp(-0.2), z = e0 + e1 + e2;
    const double p3[3] = {e0 / z, e1 / z, e2 / z};
    expect_probs(c, n, p3, 1e-6);

    /* off, equal to the vocabulary, larger than it: everything, sorted */
    const int32_t all[10] = {1, 6, 3, 8, 4, 9, 0, 7, 2, 5};
    const int32_t ks[4] = {0, -3, 10, 1000};
    for (int i = 0; i < 4; i++) {
        p.top_k = ks[i];
        n = run_once(&p, l, 10, c, 16);
        expect_ids(c, n, all, 10);
    }

    /* k = 1: one candidate with p = 1, the greedy token, for any seed */
    p.top_k = 1;
    n = run_once(&p, l, 10, c, 16);
    assert_int_equal(n, 1);
    assert_int_equal(c[0].id, 1);
    assert_true(c[0].p == 1.0f);
    for (uint64_t seed = 0; seed < 20; seed++) {
        p.seed = seed;
        kv_sampler *s = make(&p, 10);
        assert_int_equal(sample1(s, l), 1);
        kv_sampler_free(s);
    }

    /* ties: lower ids first; -inf/NaN do not count towards k */
    const float tie[6] = {1.0f, NAN, 1.0f, -INFINITY, 1.0f, 1.0f};
    p.top_k = 2;
    n = run_once(&p, tie, 6, c, 16);
    const int32_t tie2[2] = {0, 2};
    expect_ids(c, n, tie2, 2);
    const double half[2] = {0.5, 0.5};
    expect_probs(c, n, half, 1e-7);
    p.top_k = 5; /* only 4 finite */
    n = run_once(&p, tie, 6, c, 16);
    const int32_t tie4[4] = {0, 2, 4, 5};
    expect_ids(c, n, tie4, 4);
}

/* Large k (radix-sorted candidates, with and without a block-maxima
 * threshold), against a full sort. */
static void test_top_k_large(void **state) {
    (void)state;
    static float l[32000];
    static kv_sampler_candidate c[32000];
    static r_cand r[32000];
    t_rng g;
    t_seed(&g, 7);
    const int32_t nvs[2] = {3000, 32000}; /* fewer / more blocks than k */
    for (int vi = 0; vi < 2; vi++) {
        const int32_t nv = nvs[vi];
        for (int i = 0; i < nv; i++) l[i] = (float)((int)(t_uniform(&g) * 400.0) - 200) * 0.05f; /* ties */
        for (int i = 0; i < nv; i++) r[i] = (r_cand){l[i], i};
        qsort(r, (size_t)nv, sizeof *r, r_cmp);
        const int32_t ks[6] = {129, 200, 1000, 2999, 40, 128};
        for (int ki = 0; ki < 6; ki++) {
            kvlm_sampling_params p = plain_params();
            p.top_k = ks[ki];
            int32_t n = run_once(&p, l, nv, c, nv);
            assert_int_equal(n, ks[ki]);
            for (int32_t i = 0; i < n; i++) {
                assert_int_equal(c[i].id, r[i].id);
                assert_true(c[i].logit == r[i].logit);
            }
        }
    }
}

/* Probabilities 1/2, 1/4, 1/8, 1/16, 1/16 (from float logits, so nearly). */
static void pow2_logits(float *l) {
    l[0] = logf(0.5f);
    l[1] = logf(0.25f);
    l[2] = logf(0.125f);
    l[3] = logf(0.0625f);
    l[4] = logf(0.0625f);
}

static void test_top_p(void **state) {
    (void)state;
    float l[8];
    pow2_logits(l);
    l[5] = l[6] = l[7] = -INFINITY;
    const struct { float top_p; int32_t n; } cases[] = {
        {0.45f, 1}, {0.55f, 2}, {0.7f, 2}, {0.8f, 3}, {0.9f, 4}, {0.99f, 5}, {1.0f, 5}, {2.0f, 5}, {0.0f, 1}, {-1.0f, 1},
    };
    const double full[5] = {0.5, 0.25, 0.125, 0.0625, 0.0625};
    kv_sampler_candidate c[8];
    /* top_k 0: the slow path; top_k 7 with 3 tokens at -inf: the block-maxima path
     * with the same result; min-p tiny: the prefilter path */
    const int32_t ks[3] = {0, 7, 0};
    const float mps[3] = {0.0f, 0.0f, 1e-3f};
    for (int path = 0; path < 3; path++)
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            kvlm_sampling_params p = plain_params();
            p.top_p = cases[i].top_p;
            p.top_k = ks[path];
            p.min_p = mps[path];
            int32_t n = run_once(&p, l, 8, c, 8);
            assert_int_equal(n, cases[i].n);
            double mass = 0.0, expect[5];
            for (int32_t j = 0; j < n; j++) mass += full[j];
            for (int32_t j = 0; j < n; j++) {
                assert_int_equal(c[j].id, j);
                expect[j] = full[j] / mass;
            }
            expect_probs(c, n, expect, 1e-6);
        }

    /* top-p looks at the distribution before temperature: at T = 2 the
     * tempered mass of the top two is only 0.63, still two are kept, then
     * reweighted as sqrt(1/2) : sqrt(1/4) */
    kvlm_sampling_params p = plain_params();
    p.top_p = 0.7f;
    p.temperature = 2.0f;
    int32_t n = run_once(&p, l, 5, c, 8);
    const double t2[2] = {0.5857864376269051, 0.4142135623730951};
    assert_int_equal(n, 2);
    expect_probs(c, n, t2, 1e-6);

    /* top-p renormalizes over the top-k survivors: with k = 2, the first
     * token alone has 2/3 >= 0.6; without top-k it has 1/2 < 0.6 */
    p = plain_params();
    p.top_p = 0.6f;
    p.top_k = 2;
    assert_int_equal(run_once(&p, l, 5, c, 8), 1);
    p.top_k = 0;
    assert_int_equal(run_once(&p, l, 5, c, 8), 2);
}

static void test_min_p(void **state) {
    (void)state;
    float l[5];
    pow2_logits(l);
    /* keep p >= min_p * 0.5 */
    const struct { float min_p; int32_t n; } cases[] = {
        {0.3f, 2}, {0.2f, 3}, {0.1f, 5}, {0.6f, 1}, {1.0f, 1}, {5.0f, 1}, {0.0f, 5}, {-1.0f, 5},
    };
    const double full[5] = {0.5, 0.25, 0.125, 0.0625, 0.0625};
    kv_sampler_candidate c[5];
    const int32_t ks[3] = {0, 4, 0};
    const float tps[3] = {1.0f, 1.0f, 0.999f};
    for (int path = 0; path < 3; path++) /* prefilter, block maxima, prefilter + top-p */
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            kvlm_sampling_params p = plain_params();
            p.min_p = cases[i].min_p;
            p.top_k = ks[path];
            p.top_p = tps[path];
            int32_t n = run_once(&p, l, 5, c, 5);
            int32_t expect_n = cases[i].n;
            if (path == 1 && expect_n > 4) expect_n = 4;
            assert_int_equal(n, expect_n);
            double mass = 0.0, expect[5];
            for (int32_t j = 0; j < n; j++) mass += full[j];
            for (int32_t j = 0; j < n; j++) {
                assert_int_equal(c[j].id, j);
                expect[j] = full[j] / mass;
            }
            expect_probs(c, n, expect, 1e-6);
        }

    /* min-p combined with top-p: whichever cuts more wins */
    kvlm_sampling_params p = plain_params();
    p.top_p = 0.8f; /* 3 */
    p.min_p = 0.01f;
    assert_int_equal(run_once(&p, l, 5, c, 5), 3);
    p.top_p = 0.99f; /* 5 */
    p.min_p = 0.2f;  /* 3 */
    assert_int_equal(run_once(&p, l, 5, c, 5), 3);

    /* min_p = 1 keeps every token tied at the max */
    const float tie[4] = {1.0f, 2.0f, 2.0f, 0.5f};
    p = plain_params();
    p.min_p = 1.0f;
    int32_t n = run_once(&p, tie, 4, c, 4);
    const int32_t tids[2] = {1, 2};
    expect_ids(c, n, tids, 2);
    p.top_k = 3;
    n = run_once(&p, tie, 4, c, 4);
    expect_ids(c, n, tids, 2);
}

static void test_penalties(void **state) {
    (void)state;
    const float l[6] = {1.0f, 4.0f, -1.0f, 2.0f, 0.0f, 3.0f};
    kvlm_sampling_params p = plain_params();
    p.repeat_penalty = 2.0f;
    p.frequency_penalty = 0.5f;
    p.presence_penalty = 0.25f;
    p.penalty_last_n = -1;
    kv_sampler *s = make(&p, 6);
    const int32_t hist[4] = {1, 1, 2, 4};
    for (int i = 0; i < 4; i++) assert_int_equal(kv_sampler_accept(s, hist[i], NULL), KVLM_OK);
    kv_sampler_candidate c[6];
    float got[6];
    /* token 1: 4 / 2 - (2 * 0.5 + 0.25) = 0.75
     * token 2: -1 * 2 - (0.5 + 0.25) = -2.75
     * token 4: 0 * 2 - 0.75 = -0.75; others untouched */
    const float want[6] = {1.0f, 0.75f, -2.75f, 2.0f, -0.75f, 3.0f};
    assert_int_equal(cands(s, l, c, 6), 6);
    for (int i = 0; i < 6; i++) got[c[i].id] = c[i].logit;
    for (int i = 0; i < 6; i++) assert_true(got[i] == want[i]);
    /* the distribution follows the penalized logits */
    double z = 0.0;
    for (int i = 0; i < 6; i++) z += exp(want[i] - 3.0);
    for (int i = 0; i < 6; i++) assert_true(fabs(c[i].p - exp(c[i].logit - 3.0) / z) < 1e-6);

    /* reset forgets the history */
    kv_sampler_reset(s);
    assert_int_equal(cands(s, l, c, 6), 6);
    for (int i = 0; i < 6; i++) assert_true(c[i].logit == l[c[i].id]);
    kv_sampler_free(s);

    /* a window of 2 sees {2, 4}; of 3 sees {1, 2, 4} once each */
    const int32_t wins[2] = {2, 3};
    const float want2[2][6] = {{1.0f, 4.0f, -2.75f, 2.0f, -0.75f, 3.0f},
                               {1.0f, 1.25f, -2.75f, 2.0f, -0.75f, 3.0f}};
    for (int wi = 0; wi < 2; wi++) {
        p.penalty_last_n = wins[wi];
        s = make(&p, 6);
        for (int i = 0; i < 4; i++) assert_int_equal(kv_sampler_accept(s, hist[i], NULL), KVLM_OK);
        assert_int_equal(cands(s, l, c, 6), 6);
        for (int i = 0; i < 6; i++) got[c[i].id] = c[i].logit;
        for (int i = 0; i < 6; i++) assert_true(got[i] == want2[wi][i]);
        kv_sampler_free(s);
    }

    /* repeat penalty alone; and last_n = 0 turns everything off */
    p.frequency_penalty = p.presence_penalty = 0.0f;
    p.penalty_last_n = 64;
    s = make(&p, 6);
    for (int i = 0; i < 4; i++) kv_sampler_accept(s, hist[i], NULL);
    cands(s, l, c, 6);
    for (int i = 0; i < 6; i++) got[c[i].id] = c[i].logit;
    const float want3[6] = {1.0f, 2.0f, -2.0f, 2.0f, 0.0f, 3.0f};
    for (int i = 0; i < 6; i++) assert_true(got[i] == want3[i]);
    kv_sampler_free(s);
    p.frequency_penalty = 1.0f;
    p.penalty_last_n = 0;
    s = make(&p, 6);
    for (int i = 0; i < 4; i++) kv_sampler_accept(s, hist[i], NULL);
    cands(s, l, c, 6);
    for (int i = 0; i < 6; i++) assert_true(c[i].logit == l[c[i].id]);
    kv_sampler_free(s);
}

/* The ring, over many accepts and wrap-arounds, against counts recomputed
 * from the history. */
static void test_penalty_window(void **state) {
    (void)state;
    enum { NV = 50, NH = 500 };
    float l[NV];
    int32_t hist[NH];
    t_rng g;
    t_seed(&g, 99);
    for (int i = 0; i < NV; i++) l[i] = (float)(t_uniform(&g) * 6.0 - 3.0);
    const int32_t wins[4] = {1, 7, 64, -1};
    static r_cand r[NV];
    static double rw[NV];
    kv_sampler_candidate c[NV];
    for (int wi = 0; wi < 4; wi++) {
        kvlm_sampling_params p = plain_params();
        p.repeat_penalty = 1.3f;
        p.frequency_penalty = 0.1f;
        p.presence_penalty = 0.2f;
        p.penalty_last_n = wins[wi];
        kv_sampler *s = make(&p, NV);
        for (int32_t h = 0; h < NH; h++) {
            hist[h] = (int32_t)(t_next(&g) % 12); /* few distinct tokens: repeats */
            assert_int_equal(kv_sampler_accept(s, hist[h], NULL), KVLM_OK);
            if (h % 37 != 0 && h != NH - 1) continue;
            int32_t n = cands(s, l, c, NV);
            int32_t rn = reference_chain(&p, NV, l, hist, h + 1, r, rw);
            assert_int_equal(n, rn);
            for (int32_t i = 0; i < n; i++) {
                assert_int_equal(c[i].id, r[i].id);
                assert_true(c[i].logit == r[i].logit);
            }
        }
        kv_sampler_free(s);
    }
}

/* The block-maxima machinery at 32k tokens: NaN in every lane start, a bias
 * or a penalty moving a block's maximum, ties across blocks and the partial
 * last block. */
static void test_block_paths(void **state) {
    (void)state;
    enum { NV = 32000 + 40 }; /* a partial last block */
    static float l[NV];
    static kv_sampler_candidate c[NV];
    static r_cand r[NV];
    static double w[NV];
    t_rng g;
    t_seed(&g, 555);
    for (int i = 0; i < NV; i++) l[i] = (float)(t_uniform(&g) * 2.0);
    for (int i = 0; i < NV; i += 4) l[i] = NAN; /* every lane start */
    for (int i = 2; i < NV; i += 64) l[i] = -INFINITY;

    /* greedy and top-k against the reference */
    const int32_t ks[6] = {1, 2, 40, 128, 129, 700};
    for (int ki = 0; ki < 6; ki++) {
        kvlm_sampling_params p = plain_params();
        p.top_k = ks[ki];
        int32_t n = run_once(&p, l, NV, c, NV);
        int32_t rn = reference_chain(&p, NV, l, NULL, 0, r, w);
        assert_int_equal(n, rn);
        assert_int_equal(n, ks[ki]);
        for (int32_t i = 0; i < n; i++) assert_int_equal(c[i].id, r[i].id);
    }

    /* a bias lifts a token into first place; a penalty knocks the maximum of
     * its block (and of everything) down: the block maxima follow */
    int32_t top = 0;
    for (int i = 1; i < NV; i++)
        if (l[i] > l[top] || isnan(l[top])) top = i;
    const kvlm_logit_bias b = {12345, 5.0f};
    kvlm_sampling_params p = plain_params();
    p.logit_bias = &b;
    p.n_logit_bias = 1;
    p.temperature = 0.0f;
    kv_sampler *s = make(&p, NV);
    assert_int_equal(sample1(s, l), 12345);
    kv_sampler_free(s);
    p = plain_params();
    p.repeat_penalty = 1000.0f;
    p.penalty_last_n = 4;
    p.top_k = 3;
    s = make(&p, NV);
    int32_t n = cands(s, l, c, NV);
    assert_int_equal(c[0].id, top);
    assert_int_equal(kv_sampler_accept(s, top, NULL), KVLM_OK);
    n = cands(s, l, c, NV);
    static int32_t hist1[1];
    hist1[0] = top;
    const int32_t rn = reference_chain(&p, NV, l, hist1, 1, r, w);
    assert_int_equal(n, rn);
    for (int32_t i = 0; i < n; i++) assert_int_equal(c[i].id, r[i].id);
    assert_int_not_equal(c[0].id, top);
    kv_sampler_free(s);

    /* ties across blocks and in the partial last block: lowest ids first */
    for (int i = 0; i < NV; i++) l[i] = 0.5f;
    l[70] = l[130] = l[NV - 3] = l[NV - 1] = 3.0f;
    p = plain_params();
    p.temperature = 0.0f;
    s = make(&p, NV);
    assert_int_equal(sample1(s, l), 70);
    kv_sampler_free(s);
    p = plain_params();
    p.top_k = 6;
    n = run_once(&p, l, NV, c, NV);
    const int32_t tie_ids[6] = {70, 130, NV - 3, NV - 1, 0, 1};
    expect_ids(c, n, tie_ids, 6);
    l[70] = l[130] = -INFINITY;
    p.top_k = 0;
    p.temperature = 0.0f;
    s = make(&p, NV);
    assert_int_equal(sample1(s, l), NV - 3); /* the partial block */
    kv_sampler_free(s);
}

static void test_logit_bias(void **state) {
    (void)state;
    const float l[5] = {1.0f, 3.0f, 2.0f, 0.5f, -1.0f};
    kvlm_logit_bias b[4] = {{1, -INFINITY}, {0, 1.5f}, {4, 0.25f}, {4, 0.5f}};
    kvlm_sampling_params p = plain_params();
    p.logit_bias = b;
    p.n_logit_bias = 4;
    kv_sampler *s = make(&p, 5);
    b[0].bias = 123.0f; /* the sampler has its own copy */
    kv_sampler_candidate c[5];
    int32_t n = cands(s, l, c, 5);
    const int32_t ids[4] = {0, 2, 3, 4};
    expect_ids(c, n, ids, 4); /* token 1 banned */
    assert_true(c[0].logit == 2.5f);   /* 1 + 1.5 */
    assert_true(c[3].logit == -0.25f); /* -1 + 0.25 + 0.5: entries add up */
    for (int i = 0; i < 2000; i++) assert_int_not_equal(sample1(s, l), 1);
    kv_sampler_free(s);

    p.temperature = 0.0f; /* greedy sees the bias too */
    b[0].bias = -INFINITY;
    s = make(&p, 5);
    assert_int_equal(sample1(s, l), 0);
    kv_sampler_free(s);

    /* +inf forces a token (uniformly among several) */
    kvlm_logit_bias f[2] = {{3, INFINITY}, {4, INFINITY}};
    p = plain_params();
    p.logit_bias = f;
    p.n_logit_bias = 2;
    p.top_k = 3;
    s = make(&p, 5);
    n = cands(s, l, c, 5);
    const int32_t fids[3] = {3, 4, 1};
    expect_ids(c, n, fids, 3);
    const double fp[3] = {0.5, 0.5, 0.0};
    expect_probs(c, n, fp, 0.0);
    int hits[5] = {0};
    for (int i = 0; i < 1000; i++) hits[sample1(s, l)]++;
    assert_int_equal(hits[3] + hits[4], 1000);
    assert_true(hits[3] > 400 && hits[4] > 400);
    kv_sampler_free(s);
}

static void test_nan_inf_logits(void **state) {
    (void)state;
    const float l[6] = {NAN, -INFINITY, 1.0f, INFINITY, 0.0f, INFINITY};
    const int32_t ks[3] = {0, 4, 200};
    for (int ki = 0; ki < 3; ki++) {
        kvlm_sampling_params p = plain_params();
        p.top_k = ks[ki];
        kv_sampler *s = make(&p, 6);
        kv_sampler_candidate c[6];
        int32_t n = cands(s, l, c, 6);
        const int32_t ids[4] = {3, 5, 2, 4};
        expect_ids(c, n, ids, 4);
        const double pr[4] = {0.5, 0.5, 0.0, 0.0};
        expect_probs(c, n, pr, 0.0);
        for (int i = 0; i < 500; i++) {
            const kvlm_token t = sample1(s, l);
            assert_true(t == 3 || t == 5);
        }
        kv_sampler_free(s);
    }
    /* NaN and -inf are never drawn among finite logits */
    const float m[5] = {NAN, 0.0f, -INFINITY, 0.1f, NAN};
    kvlm_sampling_params p = plain_params();
    kv_sampler *s = make(&p, 5);
    for (int i = 0; i < 2000; i++) {
        const kvlm_token t = sample1(s, m);
        assert_true(t == 1 || t == 3);
    }
    kv_sampler_free(s);
}

static void test_candidates_cap(void **state) {
    (void)state;
    const float l[6] = {0.0f, 5.0f, 1.0f, 4.0f, 2.0f, 3.0f};
    kvlm_sampling_params p = plain_params();
    kv_sampler *s = make(&p, 6);
    kv_sampler_candidate c[4];
    memset(c, 0x5a, sizeof c);
    int32_t n = -1;
    assert_int_equal(kv_sampler_candidates(s, l, c, 2, &n, NULL), KVLM_OK);
    assert_int_equal(n, 6);
    assert_int_equal(c[0].id, 1);
    assert_int_equal(c[1].id, 3);
    kv_sampler_candidate guard;
    memset(&guard, 0x5a, sizeof guard);
    assert_memory_equal(&c[2], &guard, sizeof guard);
    assert_int_equal(kv_sampler_candidates(s, l, NULL, 0, &n, NULL), KVLM_OK);
    assert_int_equal(n, 6);
    kv_sampler_free(s);
}

/* The PRNG and the draw rule, against the independent implementation and
 * against values pinned from a third one (Python). */
static void test_pinned_sequence(void **state) {
    (void)state;
    uint64_t x = 0;
    assert_true(t_splitmix(&x) == 0xe220a8397b1dcdafull); /* splitmix64's published first output */
    t_rng g;
    t_seed(&g, 42);
    const uint64_t first[4] = {0x15780b2e0c2ec716ull, 0x6104d9866d113a7eull, 0xae17533239e499a1ull,
                               0xecb8ad4703b360a1ull};
    for (int i = 0; i < 4; i++) assert_true(t_next(&g) == first[i]);

    /* ten equal logits: token = floor(u * 10) */
    float flat[10];
    for (int i = 0; i < 10; i++) flat[i] = 0.25f;
    const int32_t pinned[20] = {0, 3, 6, 9, 9, 7, 7, 8, 7, 5, 6, 2, 8, 3, 7, 8, 6, 8, 7, 7};
    kvlm_sampling_params p = plain_params();
    p.seed = 42;
    kv_sampler *s = make(&p, 10);
    for (int i = 0; i < 20; i++) assert_int_equal(sample1(s, flat), pinned[i]);
    t_seed(&g, 42);
    kv_sampler_reset(s); /* replays from the seed */
    for (int i = 0; i < 1000; i++) assert_int_equal(sample1(s, flat), (int32_t)(t_uniform(&g) * 10.0));
    kv_sampler_free(s);

    /* a skewed distribution with temperature, top-k, top-p and min-p: the
     * draw walks the descending order with a double running sum */
    const float l[8] = {0.5f, 2.0f, -1.0f, 1.25f, 3.0f, -0.5f, 2.5f, 0.0f};
    p = plain_params();
    p.seed = 0xdeadbeefull;
    p.temperature = 0.7f;
    p.top_k = 6;
    p.top_p = 0.97f;
    p.min_p = 0.05f;
    s = make(&p, 8);
    static r_cand r[8];
    static double w[8];
    const int32_t n = reference_chain(&p, 8, l, NULL, 0, r, w);
    assert_true(n >= 3);
    double wsum = 0.0;
    for (int32_t i = 0; i < n; i++) wsum += w[i];
    t_seed(&g, 0xdeadbeefull);
    for (int it = 0; it < 5000; it++) {
        const double target = t_uniform(&g) * wsum;
        double cum = 0.0;
        int32_t pick = n - 1;
        for (int32_t i = 0; i < n; i++) {
            cum += w[i];
            if (target < cum) {
                pick = i;
                break;
            }
        }
        assert_int_equal(sample1(s, l), r[pick].id);
    }
    /* set_seed restarts the stream */
    kv_sampler_set_seed(s, 5);
    const kvlm_token a = sample1(s, l), b = sample1(s, l);
    kv_sampler_set_seed(s, 5);
    assert_int_equal(sample1(s, l), a);
    assert_int_equal(sample1(s, l), b);
    kv_sampler_free(s);
}

/* Two samplers with one seed agree over a long run with penalties and
 * accept; another seed gives another sequence. */
static void test_reproducible(void **state) {
    (void)state;
    enum { NV = 2000, STEPS = 500 };
    static float l[NV];
    t_rng g;
    t_seed(&g, 3);
    kvlm_sampling_params p = kv_sampler_default_params();
    p.repeat_penalty = 1.1f;
    p.frequency_penalty = 0.05f;
    p.seed = 2024;
    kv_sampler *a = make(&p, NV), *b = make(&p, NV);
    p.seed = 2025;
    kv_sampler *c = make(&p, NV);
    int diff = 0;
    for (int step = 0; step < STEPS; step++) {
        for (int i = 0; i < NV; i++) l[i] = (float)(t_uniform(&g) * 4.0);
        const kvlm_token ta = sample1(a, l), tb = sample1(b, l), tc = sample1(c, l);
        assert_int_equal(ta, tb);
        diff += ta != tc;
        kv_sampler_accept(a, ta, NULL);
        kv_sampler_accept(b, tb, NULL);
        kv_sampler_accept(c, tc, NULL);
    }
    assert_true(diff > STEPS / 2);
    kv_sampler_free(a);
    kv_sampler_free(b);
    kv_sampler_free(c);
}

/* Draw frequencies against the reported and the hand-computed distribution. */
static void test_chi_square(void **state) {
    (void)state;
    const float l[7] = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f, -3.0f, -INFINITY};
    kvlm_sampling_params p = plain_params();
    p.temperature = 0.9f;
    p.seed = 77;
    kv_sampler *s = make(&p, 7);
    kv_sampler_candidate c[7];
    const int32_t n = cands(s, l, c, 7);
    assert_int_equal(n, 6);
    double z = 0.0, q[7] = {0};
    for (int i = 0; i < 6; i++) z += exp((l[i] - 2.0) / 0.9);
    for (int i = 0; i < 6; i++) q[i] = exp((l[i] - 2.0) / 0.9) / z;
    for (int i = 0; i < n; i++) assert_true(fabs(c[i].p - q[c[i].id]) < 1e-6);
    enum { DRAWS = 200000 };
    long hits[7] = {0};
    for (int i = 0; i < DRAWS; i++) hits[sample1(s, l)]++;
    assert_int_equal(hits[6], 0);
    double chi2 = 0.0;
    for (int i = 0; i < 6; i++) {
        const double e = q[i] * DRAWS;
        chi2 += (hits[i] - e) * (hits[i] - e) / e;
    }
    /* 5 degrees of freedom: P(chi2 > 30) ~ 1.5e-5 */
    if (chi2 > 30.0) fail_msg("chi-square %.2f too large", chi2);
    kv_sampler_free(s);

    /* the full chain: frequencies follow the reported candidates */
    p = kv_sampler_default_params();
    p.top_k = 5;
    p.top_p = 0.9f;
    p.min_p = 0.02f;
    p.seed = 11;
    s = make(&p, 7);
    const int32_t m = cands(s, l, c, 7);
    assert_true(m >= 3);
    long h2[7] = {0};
    for (int i = 0; i < DRAWS; i++) h2[sample1(s, l)]++;
    double chi = 0.0;
    long in = 0;
    for (int i = 0; i < m; i++) {
        const double e = c[i].p * (double)DRAWS;
        chi += (h2[c[i].id] - e) * (h2[c[i].id] - e) / e;
        in += h2[c[i].id];
    }
    assert_int_equal(in, DRAWS); /* nothing outside the candidates */
    if (chi > 30.0) fail_msg("chain chi-square %.2f too large (%d candidates)", chi, (int)m);
    kv_sampler_free(s);
}

/* Random configurations: the fast paths against the reference. */
static void test_against_reference(void **state) {
    (void)state;
    static float l[NV_MAX];
    static kv_sampler_candidate c[NV_MAX];
    static r_cand r[NV_MAX];
    static double w[NV_MAX];
    int32_t hist[200];
    t_rng g;
    t_seed(&g, 12345);
    const int32_t nvs[5] = {7, 60, 300, 3000, 32000};
    const int32_t topks[10] = {0, 1, 2, 5, 40, 128, 129, 500, -1, 1 << 30};
    const float topps[5] = {1.0f, 0.95f, 0.5f, 0.1f, 0.0f};
    const float minps[4] = {0.0f, 0.05f, 0.3f, 1.0f};
    const float temps[5] = {0.0f, 0.3f, 0.8f, 1.0f, 1.7f};
    int trials = 0;
    for (int ni = 0; ni < 5; ni++) {
        const int32_t nv = nvs[ni];
        const int n_trials = nv >= 32000 ? 12 : 120;
        for (int t = 0; t < n_trials; t++, trials++) {
            const int style = (int)(t_next(&g) % 4);
            for (int32_t i = 0; i < nv; i++) {
                const double u = t_uniform(&g);
                switch (style) {
                case 0: l[i] = (float)(u * 20.0 - 10.0); break;                   /* spread */
                case 1: l[i] = (float)((int)(u * 8.0)) * 0.5f - 2.0f; break;      /* many ties */
                case 2: l[i] = (float)(u * 2.0); if (i % 17 == 3) l[i] = 9.0f; break; /* peaks */
                default:
                    l[i] = (float)(u * 6.0 - 3.0);
                    if (i % 11 == 2) l[i] = -INFINITY;
                    if (i % 13 == 5) l[i] = NAN;
                    if (i % 9 == 0) l[i] = -0.0f;
                    if (i % 9 == 1) l[i] = 0.0f;
                    break;
                }
            }
            kvlm_sampling_params p = plain_params();
            p.top_k = topks[t_next(&g) % 10];
            p.top_p = topps[t_next(&g) % 5];
            p.min_p = minps[t_next(&g) % 4];
            p.temperature = temps[t_next(&g) % 5];
            if (t_next(&g) % 2) {
                p.repeat_penalty = 1.25f;
                p.frequency_penalty = (t_next(&g) % 2) ? 0.1f : 0.0f;
                p.presence_penalty = (t_next(&g) % 2) ? 0.3f : 0.0f;
                p.penalty_last_n = (t_next(&g) % 3) == 0 ? -1 : 16;
            }
            kvlm_logit_bias b[3] = {{(int32_t)(t_next(&g) % (uint64_t)nv), -INFINITY},
                                  {(int32_t)(t_next(&g) % (uint64_t)nv), 2.5f},
                                  {(int32_t)(t_next(&g) % (uint64_t)nv), -0.75f}};
            if (t_next(&g) % 2) {
                p.logit_bias = b;
                p.n_logit_bias = 3;
            }
            p.seed = t_next(&g);
            kv_sampler *s = make(&p, nv);
            const int32_t n_hist = (int32_t)(t_next(&g) % 100);
            for (int32_t h = 0; h < n_hist; h++) {
                hist[h] = (int32_t)(t_next(&g) % (uint64_t)(nv < 40 ? nv : 40));
                assert_int_equal(kv_sampler_accept(s, hist[h], NULL), KVLM_OK);
            }
            const int32_t rn = reference_chain(&p, nv, l, hist, n_hist, r, w);
            int32_t n = -1;
            kvlm_status st = kv_sampler_candidates(s, l, c, nv, &n, NULL);
            if (rn < 0) {
                assert_int_equal(st, KVLM_ERR_INVALID_ARG);
                kv_sampler_free(s);
                continue;
            }
            assert_int_equal(st, KVLM_OK);
            if (n != rn)
                fail_msg("trial %d nv %d k %d p %g minp %g T %g: n %d, reference %d", trials, (int)nv,
                         (int)p.top_k, (double)p.top_p, (double)p.min_p, (double)p.temperature, (int)n, (int)rn);
            double wsum = 0.0;
            for (int32_t i = 0; i < rn; i++) wsum += w[i];
            for (int32_t i = 0; i < n; i++) {
                assert_int_equal(c[i].id, r[i].id);
                assert_true(c[i].logit == r[i].logit);
                if (fabs((double)c[i].p - w[i] / wsum) >= 1e-6)
                    fail_msg("trial %d nv %d k %d T %g: candidate %d p %.9g, reference %.9g", trials, (int)nv,
                             (int)p.top_k, (double)p.temperature, (int)i, (double)c[i].p, w[i] / wsum);
            }
            kv_sampler_free(s);
        }
    }
}

/* The sampler benchmark of kvlm bench (tools/kvlm/sampler_bench.c, on kvlm.h's sampler). */
static void test_bench_fn(void **state) {
    (void)state;
    const double us = cli_sampler_bench_us(32000, 20);
    assert_true(us > 0.0);
    print_message("sampler: %.2f us per sample at n_vocab 32000 (debug build, 20 iterations)\n", us);
    assert_true(cli_sampler_bench_us(100, 5) > 0.0);
    assert_true(cli_sampler_bench_us(0, 5) < 0.0);
    assert_true(cli_sampler_bench_us(100, 0) < 0.0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_invalid_params),
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_all_masked),
        cmocka_unit_test(test_bad_calls),
        cmocka_unit_test(test_temperature_softmax),
        cmocka_unit_test(test_top_k),
        cmocka_unit_test(test_top_k_large),
        cmocka_unit_test(test_top_p),
        cmocka_unit_test(test_min_p),
        cmocka_unit_test(test_penalties),
        cmocka_unit_test(test_penalty_window),
        cmocka_unit_test(test_block_paths),
        cmocka_unit_test(test_logit_bias),
        cmocka_unit_test(test_nan_inf_logits),
        cmocka_unit_test(test_candidates_cap),
        cmocka_unit_test(test_pinned_sequence),
        cmocka_unit_test(test_reproducible),
        cmocka_unit_test(test_chi_square),
        cmocka_unit_test(test_against_reference),
        cmocka_unit_test(test_bench_fn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
