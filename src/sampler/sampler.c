/* Sampler chain; the rules are spelled out in sampler.h. */
#include "sampler.h"

#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"
#include "grammar/grammar.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Top-k at or below this cuts its candidates with quickselect + insertion
 * sort; above it, with a radix sort. */
#define KV_SELECT_MAX 128
/* Sorts of at most this many candidates use insertion sort. */
#define KV_SMALL_SORT 32
/* Tokens per block for the block maxima of the top-k selection. */
#define KV_BLOCK 64

typedef struct kv_cand {
    float logit;
    int32_t id;
} kv_cand;

struct kv_sampler {
    kvlm_sampling_params params; /* .logit_bias points at bias */
    int32_t n_vocab;
    kvlm_logit_bias *bias;

    /* scratch, all sized at creation */
    float *work;   /* n_vocab: logits after bias and penalties */
    kv_cand *cand; /* n_vocab: candidates */
    uint64_t *rk, *rk_tmp; /* n_vocab each: radix sort items */
    uint32_t *hist;        /* 3 * 2048: radix sort counters */
    double *w;     /* n_vocab: final weights of cand[0..n_cand) */
    float *bmax;   /* n_vocab / KV_BLOCK (rounded up): block maxima */
    float *bsel;   /* same size: selection scratch */
    unsigned char *dirty; /* same size: block touched by bias/penalties */
    int32_t *dirty_list;  /* same size */
    int32_t n_dirty;
    int32_t n_cand;
    double wsum;

    /* penalty history */
    int32_t *ring; /* ring_cap recent tokens (penalty_last_n > 0) */
    int32_t ring_cap, ring_head, ring_len;
    int32_t *count;    /* n_vocab: occurrences in the window */
    int32_t *seen;     /* distinct tokens with count > 0 */
    int32_t *seen_pos; /* n_vocab: index in seen, or -1 */
    int32_t n_seen;

    uint64_t rng[4]; /* xoshiro256** */

    kv_gstate *gram;   /* params.grammar's state, or NULL */
    int32_t n_topk;    /* candidates top-k kept (cand[0..n_topk)), before top-p and min-p */
};

/* ------------------------------------------------------------------ PRNG */

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t st[4]) {
    const uint64_t result = rotl64(st[1] * 5, 7) * 9;
    const uint64_t t = st[1] << 17;
    st[2] ^= st[0];
    st[3] ^= st[1];
    st[1] ^= st[2];
    st[0] ^= st[3];
    st[2] ^= t;
    st[3] = rotl64(st[3], 45);
    return result;
}

static void rng_seed(uint64_t st[4], uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) st[i] = kv_splitmix64(&x);
}

/* ------------------------------------------------------------ parameters */

kvlm_sampling_params kv_sampler_default_params(void) {
    kvlm_sampling_params p;
    memset(&p, 0, sizeof p);
    p.temperature = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.05f;
    p.repeat_penalty = 1.0f;
    p.frequency_penalty = 0.0f;
    p.presence_penalty = 0.0f;
    p.penalty_last_n = 64;
    p.seed = 0;
    p.logit_bias = NULL;
    p.n_logit_bias = 0;
    return p;
}

static kvlm_status check_params(const kvlm_sampling_params *p, int32_t n_vocab, kvlm_error *err) {
    if (n_vocab <= 0) return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: n_vocab %d <= 0", (int)n_vocab);
    if (!isfinite(p->temperature))
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: temperature is not finite");
    if (isnan(p->top_p) || isnan(p->min_p))
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: top_p/min_p is NaN");
    if (!(p->repeat_penalty > 0.0f) || !isfinite(p->repeat_penalty))
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: repeat_penalty must be finite and > 0");
    if (!isfinite(p->frequency_penalty) || !isfinite(p->presence_penalty))
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: frequency/presence penalty not finite");
    if (p->penalty_last_n < -1)
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: penalty_last_n %d < -1", (int)p->penalty_last_n);
    if (p->n_logit_bias < 0 || (p->n_logit_bias > 0 && !p->logit_bias))
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: bad logit bias list");
    for (int32_t i = 0; i < p->n_logit_bias; i++) {
        const kvlm_logit_bias *b = &p->logit_bias[i];
        if (b->token < 0 || b->token >= n_vocab)
            return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: logit bias token %d outside [0, %d)",
                           (int)b->token, (int)n_vocab);
        if (isnan(b->bias))
            return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: logit bias for token %d is NaN", (int)b->token);
    }
    return KVLM_OK;
}

kvlm_status kv_sampler_new(const kvlm_sampling_params *params, int32_t n_vocab,
                           kv_sampler **out, kvlm_error *err) {
    if (!params || !out) return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: NULL argument");
    *out = NULL;
    kvlm_status st = check_params(params, n_vocab, err);
    if (st != KVLM_OK) return st;

    kv_sampler *s = calloc(1, sizeof *s);
    if (!s) return kv_fail(err, KVLM_ERR_NOMEM, "sampler: out of memory");
    s->params = *params;
    if (s->params.min_p > 1.0f) s->params.min_p = 1.0f;
    s->n_vocab = n_vocab;

    const size_t nv = (size_t)n_vocab;
    bool ok = true;
    if (params->n_logit_bias > 0) {
        s->bias = malloc((size_t)params->n_logit_bias * sizeof *s->bias);
        ok = ok && s->bias;
        if (s->bias) memcpy(s->bias, params->logit_bias, (size_t)params->n_logit_bias * sizeof *s->bias);
    }
    s->params.logit_bias = s->bias;
    s->work = malloc(nv * sizeof *s->work);
    s->cand = malloc(nv * sizeof *s->cand);
    s->rk = malloc(nv * sizeof *s->rk);
    s->rk_tmp = malloc(nv * sizeof *s->rk_tmp);
    s->hist = malloc(3 * 2048 * sizeof *s->hist);
    s->w = malloc(nv * sizeof *s->w);
    const size_t nblocks = (nv + KV_BLOCK - 1) / KV_BLOCK;
    s->bmax = malloc(nblocks * sizeof *s->bmax);
    s->bsel = malloc(nblocks * sizeof *s->bsel);
    s->dirty = calloc(nblocks, 1);
    s->dirty_list = malloc(nblocks * sizeof *s->dirty_list);
    ok = ok && s->work && s->cand && s->rk && s->rk_tmp && s->hist && s->w && s->bmax && s->bsel && s->dirty && s->dirty_list;

    const int32_t last_n = params->penalty_last_n;
    if (last_n != 0) {
        s->count = calloc(nv, sizeof *s->count);
        s->seen_pos = malloc(nv * sizeof *s->seen_pos);
        size_t n_seen_max = nv;
        if (last_n > 0) {
            s->ring_cap = last_n;
            s->ring = malloc((size_t)last_n * sizeof *s->ring);
            ok = ok && s->ring;
            if ((size_t)last_n < n_seen_max) n_seen_max = (size_t)last_n;
        }
        s->seen = malloc(n_seen_max * sizeof *s->seen);
        ok = ok && s->count && s->seen_pos && s->seen;
        if (s->seen_pos)
            for (size_t i = 0; i < nv; i++) s->seen_pos[i] = -1;
    }
    if (!ok) {
        kv_sampler_free(s);
        return kv_fail(err, KVLM_ERR_NOMEM, "sampler: out of memory (n_vocab %d, penalty_last_n %d)",
                       (int)n_vocab, (int)last_n);
    }
    if (params->grammar) {
        const kvlm_grammar *g = params->grammar;
        if (!g->g || !g->v || kv_gvocab_n_vocab(g->v) != n_vocab) {
            kv_sampler_free(s);
            return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: the grammar was made for a vocabulary of %d tokens, not %d",
                           g->v ? (int)kv_gvocab_n_vocab(g->v) : 0, (int)n_vocab);
        }
        st = kv_gstate_new(g->g, g->v, &s->gram, err);
        if (st != KVLM_OK) {
            kv_sampler_free(s);
            return st;
        }
    }
    rng_seed(s->rng, params->seed);
    *out = s;
    return KVLM_OK;
}

void kv_sampler_free(kv_sampler *s) {
    if (!s) return;
    kv_gstate_free(s->gram);
    free(s->bias);
    free(s->work);
    free(s->cand);
    free(s->rk);
    free(s->rk_tmp);
    free(s->hist);
    free(s->w);
    free(s->bmax);
    free(s->bsel);
    free(s->dirty);
    free(s->dirty_list);
    free(s->ring);
    free(s->count);
    free(s->seen);
    free(s->seen_pos);
    free(s);
}

const kvlm_sampling_params *kv_sampler_params_of(const kv_sampler *s) { return &s->params; }
int32_t kv_sampler_n_vocab(const kv_sampler *s) { return s->n_vocab; }

void kv_sampler_set_seed(kv_sampler *s, uint64_t seed) {
    if (s) rng_seed(s->rng, seed);
}

void kv_sampler_reset(kv_sampler *s) {
    if (!s) return;
    for (int32_t i = 0; i < s->n_seen; i++) {
        s->count[s->seen[i]] = 0;
        s->seen_pos[s->seen[i]] = -1;
    }
    s->n_seen = 0;
    s->ring_head = s->ring_len = 0;
    rng_seed(s->rng, s->params.seed);
    kv_gstate_reset(s->gram);
}

kvlm_status kv_sampler_accept_grammar(kv_sampler *s, kvlm_token token, kvlm_error *err) {
    if (!s) return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: NULL argument");
    if (!s->gram) return KVLM_OK;
    return kv_gstate_accept_token(s->gram, token, err);
}

bool kv_sampler_grammar_complete(const kv_sampler *s) { return !s || !s->gram || kv_gstate_complete(s->gram); }
bool kv_sampler_grammar_can_continue(const kv_sampler *s) {
    return !s || !s->gram || kv_gstate_can_continue(s->gram);
}
bool kv_sampler_has_grammar(const kv_sampler *s) { return s && s->gram; }

/* ------------------------------------------------------------ penalties */

static void hist_add(kv_sampler *s, int32_t t) {
    if (s->count[t] == 0) {
        s->seen_pos[t] = s->n_seen;
        s->seen[s->n_seen++] = t;
    }
    if (s->count[t] < INT32_MAX) s->count[t]++;
}

static void hist_remove(kv_sampler *s, int32_t t) {
    if (--s->count[t] == 0) {
        const int32_t pos = s->seen_pos[t];
        const int32_t last = s->seen[--s->n_seen];
        s->seen[pos] = last;
        s->seen_pos[last] = pos;
        s->seen_pos[t] = -1;
    }
}

kvlm_status kv_sampler_accept(kv_sampler *s, kvlm_token token, kvlm_error *err) {
    if (!s) return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: NULL sampler");
    if (token < 0 || token >= s->n_vocab)
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: accepted token %d outside [0, %d)",
                       (int)token, (int)s->n_vocab);
    if (s->params.penalty_last_n == 0) return KVLM_OK;
    if (s->ring_cap > 0) {
        if (s->ring_len == s->ring_cap) {
            hist_remove(s, s->ring[s->ring_head]);
        } else {
            s->ring_len++;
        }
        s->ring[s->ring_head] = token;
        s->ring_head = s->ring_head + 1 == s->ring_cap ? 0 : s->ring_head + 1;
    }
    hist_add(s, token);
    return KVLM_OK;
}

/* Block maxima: the maximum of a block of logits, NaN ignored, -inf when
 * the block holds nothing else. max is exact, so the SSE2 and portable
 * versions agree bit for bit (up to the sign of a zero maximum, which no
 * caller can observe: zeros compare equal). */
#if defined(__SSE2__)
/* _mm_max_ps(v, m) is v > m ? v : m: a NaN v leaves m, and m never holds NaN. */
static inline float hmax_ps(__m128 m0, __m128 m1, __m128 m2, __m128 m3) {
    m0 = _mm_max_ps(_mm_max_ps(m0, m1), _mm_max_ps(m2, m3));
    m0 = _mm_max_ps(m0, _mm_movehl_ps(m0, m0));
    m0 = _mm_max_ss(m0, _mm_shuffle_ps(m0, m0, 1));
    return _mm_cvtss_f32(m0);
}

/* Copies a full block src -> dst and returns its maximum, in one pass. */
static float block_copy_max(const float *src, float *dst) {
    __m128 m0 = _mm_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
    for (int j = 0; j < KV_BLOCK; j += 16) {
        const __m128 a = _mm_loadu_ps(src + j), b = _mm_loadu_ps(src + j + 4);
        const __m128 c = _mm_loadu_ps(src + j + 8), d = _mm_loadu_ps(src + j + 12);
        _mm_storeu_ps(dst + j, a);
        _mm_storeu_ps(dst + j + 4, b);
        _mm_storeu_ps(dst + j + 8, c);
        _mm_storeu_ps(dst + j + 12, d);
        m0 = _mm_max_ps(a, m0);
        m1 = _mm_max_ps(b, m1);
        m2 = _mm_max_ps(c, m2);
        m3 = _mm_max_ps(d, m3);
    }
    return hmax_ps(m0, m1, m2, m3);
}

static float block_max_full(const float *src) {
    __m128 m0 = _mm_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
    for (int j = 0; j < KV_BLOCK; j += 16) {
        m0 = _mm_max_ps(_mm_loadu_ps(src + j), m0);
        m1 = _mm_max_ps(_mm_loadu_ps(src + j + 4), m1);
        m2 = _mm_max_ps(_mm_loadu_ps(src + j + 8), m2);
        m3 = _mm_max_ps(_mm_loadu_ps(src + j + 12), m3);
    }
    return hmax_ps(m0, m1, m2, m3);
}
#else
/* Lane-wise with a tree reduction, so compilers vectorize it without
 * fast-math; the lanes start at -inf, not at src[l], which may be NaN. */
static float block_max_full(const float *src) {
    float m[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    for (int j = 0; j < KV_BLOCK; j += 8)
        for (int l = 0; l < 8; l++) m[l] = src[j + l] > m[l] ? src[j + l] : m[l];
    for (int l = 0; l < 4; l++) m[l] = m[l + 4] > m[l] ? m[l + 4] : m[l];
    for (int l = 0; l < 2; l++) m[l] = m[l + 2] > m[l] ? m[l + 2] : m[l];
    return m[1] > m[0] ? m[1] : m[0];
}

static float block_copy_max(const float *src, float *dst) {
    memcpy(dst, src, KV_BLOCK * sizeof *dst);
    return block_max_full(dst);
}
#endif

static float block_max(const float *src, int32_t len) {
    if (len == KV_BLOCK) return block_max_full(src);
    float r = -INFINITY;
    for (int32_t i = 0; i < len; i++) r = src[i] > r ? src[i] : r;
    return r;
}

static inline int32_t block_len(int32_t nv, int32_t b) {
    const int32_t start = b * KV_BLOCK;
    return nv - start < KV_BLOCK ? nv - start : KV_BLOCK;
}

static inline void mark_block(kv_sampler *s, int32_t t) {
    const int32_t b = t / KV_BLOCK;
    if (!s->dirty[b]) {
        s->dirty[b] = 1;
        s->dirty_list[s->n_dirty++] = b;
    }
}

/* work = logits + bias, then penalties; bmax = block maxima of work (the
 * blocks that bias or penalties touch are rescanned afterwards). */
static void prepare_logits(kv_sampler *s, const float *logits) {
    const kvlm_sampling_params *p = &s->params;
    const int32_t nv = s->n_vocab, nb = (nv + KV_BLOCK - 1) / KV_BLOCK;
    float *work = s->work;
    const int32_t nfull = nv / KV_BLOCK;
    for (int32_t b = 0; b < nfull; b++) {
        const size_t off = (size_t)b * KV_BLOCK;
        s->bmax[b] = block_copy_max(logits + off, work + off);
    }
    if (nfull < nb) {
        const size_t off = (size_t)nfull * KV_BLOCK;
        memcpy(work + off, logits + off, (size_t)(nv - (int32_t)off) * sizeof *work);
        s->bmax[nfull] = block_max(work + off, nv - (int32_t)off);
    }
    s->n_dirty = 0;
    for (int32_t i = 0; i < p->n_logit_bias; i++) {
        work[s->bias[i].token] += s->bias[i].bias;
        mark_block(s, s->bias[i].token);
    }
    if (p->penalty_last_n != 0 &&
        (p->repeat_penalty != 1.0f || p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f)) {
        /* In double, where l * rp and count * fp are exact (counts < 2^29), so
         * a compiler contracting into fma cannot change the result. */
        const double rp = p->repeat_penalty, fp = p->frequency_penalty, pp = p->presence_penalty;
        for (int32_t i = 0; i < s->n_seen; i++) {
            const int32_t t = s->seen[i];
            const double l = work[t];
            const double x = l <= 0.0 ? l * rp : l / rp;
            work[t] = (float)(x - ((double)s->count[t] * fp + pp));
            mark_block(s, t);
        }
    }
    for (int32_t i = 0; i < s->n_dirty; i++) {
        const int32_t b = s->dirty_list[i];
        s->bmax[b] = block_max(work + (size_t)b * KV_BLOCK, block_len(nv, b));
        s->dirty[b] = 0;
    }
}

/* --------------------------------------------------- ordering and sorting */

/* a comes before b: larger logit, ties to the lower id. */
static inline bool cand_before(kv_cand a, kv_cand b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

static void insertion_sort(kv_cand *c, int32_t n) {
    for (int32_t i = 1; i < n; i++) {
        kv_cand x = c[i];
        int32_t j = i;
        while (j > 0 && cand_before(x, c[j - 1])) {
            c[j] = c[j - 1];
            j--;
        }
        c[j] = x;
    }
}

/* Key whose ascending unsigned order is the descending float order, -0
 * folded onto +0 (v + 0.0f is +0 for both zeros); branch-free, no NaN here. */
static inline uint32_t desc_key(float v) {
    uint32_t u;
    v = v + 0.0f;
    memcpy(&u, &v, sizeof u);
    const uint32_t asc = u ^ ((uint32_t)((int32_t)u >> 31) | 0x80000000u);
    return ~asc;
}

static inline float key_value(uint32_t key) {
    const uint32_t asc = ~key;
    const uint32_t u = (asc & 0x80000000u) ? (asc ^ 0x80000000u) : ~asc;
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* Sorts c[0..n) into candidate order: LSD radix sort (three 11-bit digits,
 * passes where every key shares the digit skipped) of 64-bit items
 * key << 32 | id on their high half, with hist (3 * 2048 counters) as
 * scratch. Stable, so ids break ties only through the input order: the
 * input must be in ascending id order (small n: any order). */
static void sort_cands(kv_cand *c, uint64_t *a, uint64_t *b, uint32_t *hist, int32_t n) {
    if (n <= KV_SMALL_SORT) {
        insertion_sort(c, n);
        return;
    }
    memset(hist, 0, 3 * 2048 * sizeof *hist);
    for (int32_t i = 0; i < n; i++) {
        const uint32_t k = desc_key(c[i].logit);
        a[i] = (uint64_t)k << 32 | (uint32_t)c[i].id;
        hist[k & 0x7ff]++;
        hist[2048 + ((k >> 11) & 0x7ff)]++;
        hist[4096 + (k >> 22)]++;
    }
    uint64_t *src = a, *dst = b;
    for (int pass = 0; pass < 3; pass++) {
        const int shift = 32 + pass * 11;
        uint32_t *h = hist + 2048 * pass;
        if (h[(src[0] >> shift) & 0x7ff] == (uint32_t)n) continue; /* one bucket */
        uint32_t sum = 0;
        for (int d = 0; d < 2048; d++) {
            const uint32_t c0 = h[d];
            h[d] = sum;
            sum += c0;
        }
        for (int32_t i = 0; i < n; i++) dst[h[(src[i] >> shift) & 0x7ff]++] = src[i];
        uint64_t *t = src;
        src = dst;
        dst = t;
    }
    for (int32_t i = 0; i < n; i++) c[i] = (kv_cand){key_value((uint32_t)(src[i] >> 32)), (int32_t)(uint32_t)src[i]};
}

static inline void cand_swap(kv_cand *a, kv_cand *b) {
    const kv_cand t = *a;
    *a = *b;
    *b = t;
}

/* Reorders a[0..n) so that a[nth] is the element that candidate order puts
 * there, with every element before it coming before it (quickselect, median
 * of three; the order is total, so the result is unique as a set). */
static void select_nth(kv_cand *a, int32_t n, int32_t nth) {
    int32_t lo = 0, hi = n - 1;
    while (hi - lo >= 16) {
        const int32_t mid = lo + (hi - lo) / 2;
        if (cand_before(a[mid], a[lo])) cand_swap(&a[mid], &a[lo]);
        if (cand_before(a[hi], a[lo])) cand_swap(&a[hi], &a[lo]);
        if (cand_before(a[hi], a[mid])) cand_swap(&a[hi], &a[mid]);
        const kv_cand pv = a[mid];
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (cand_before(a[i], pv)) i++;
            while (cand_before(pv, a[j])) j--;
            if (i <= j) {
                cand_swap(&a[i], &a[j]);
                i++;
                j--;
            }
        }
        if (nth <= j) {
            hi = j;
        } else if (nth >= i) {
            lo = i;
        } else {
            return;
        }
    }
    insertion_sort(a + lo, hi - lo + 1);
}

/* The value at descending position nth of a[0..n) (no NaN); reorders a. */
static float select_nth_float(float *a, int32_t n, int32_t nth) {
    int32_t lo = 0, hi = n - 1;
    while (hi - lo >= 16) {
        const int32_t mid = lo + (hi - lo) / 2;
        float t;
        if (a[mid] > a[lo]) { t = a[mid]; a[mid] = a[lo]; a[lo] = t; }
        if (a[hi] > a[lo]) { t = a[hi]; a[hi] = a[lo]; a[lo] = t; }
        if (a[hi] > a[mid]) { t = a[hi]; a[hi] = a[mid]; a[mid] = t; }
        const float pv = a[mid];
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] > pv) i++;
            while (pv > a[j]) j--;
            if (i <= j) {
                t = a[i]; a[i] = a[j]; a[j] = t;
                i++;
                j--;
            }
        }
        if (nth <= j) {
            hi = j;
        } else if (nth >= i) {
            lo = i;
        } else {
            return a[nth];
        }
    }
    for (int32_t i = lo + 1; i <= hi; i++) { /* insertion sort, descending */
        const float x = a[i];
        int32_t j = i;
        while (j > lo && x > a[j - 1]) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = x;
    }
    return a[nth];
}

/* The first k (1 <= k < nv) candidates of work[0..nv) into c[0..ret),
 * sorted. The k-th largest block maximum is a lower bound of the k-th
 * largest logit (k distinct tokens reach it), so only blocks whose maximum
 * reaches it are scanned, and only tokens at or above it are kept: for
 * 32k tokens and k = 40, about k blocks and a few dozen candidates. Those
 * are cut to k by quickselect and insertion sort (small k) or radix sort. */
static int32_t select_top_k(kv_sampler *s, int32_t k) {
    const float *work = s->work;
    const int32_t nv = s->n_vocab;
    const int32_t nb = (nv + KV_BLOCK - 1) / KV_BLOCK;
    kv_cand *c = s->cand;
    float thr = -INFINITY;
    if (nb >= k) {
        memcpy(s->bsel, s->bmax, (size_t)nb * sizeof *s->bsel);
        thr = select_nth_float(s->bsel, nb, k - 1);
    }
    int32_t n = 0;
    for (int32_t b = 0; b < nb; b++) {
        if (!(s->bmax[b] >= thr) || !(s->bmax[b] > -INFINITY)) continue;
        const int32_t end = b == nb - 1 ? nv : (b + 1) * KV_BLOCK;
        for (int32_t i = b * KV_BLOCK; i < end; i++) {
            const float v = work[i];
            if (v >= thr && v > -INFINITY) c[n++] = (kv_cand){v, i};
        }
    }
    if (k <= KV_SELECT_MAX) {
        if (n > k) {
            select_nth(c, n, k - 1);
            n = k;
        }
        insertion_sort(c, n);
    } else {
        sort_cands(c, s->rk, s->rk_tmp, s->hist, n); /* gathered in id order */
        if (n > k) n = k;
    }
    return n;
}

/* ---------------------------------------------------------------- chain */

static inline double rel_logit(float l, float lmax) {
    return l == lmax ? 0.0 : (double)l - (double)lmax;
}

static double sum_weights_sorted(const kv_cand *c, int32_t n) {
    const float lmax = c[0].logit;
    double z = 0.0;
    for (int32_t i = 0; i < n; i++) z += exp(rel_logit(c[i].logit, lmax));
    return z;
}

/* Smallest prefix of sorted c[0..n) whose T=1 weight reaches top_p * z. */
static int32_t cut_top_p(const kv_cand *c, int32_t n, float top_p, double z) {
    const float lmax = c[0].logit;
    const double target = (double)top_p * z;
    double cum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        cum += exp(rel_logit(c[i].logit, lmax));
        if (cum >= target) return i + 1;
    }
    return n;
}

/* Prefix of sorted c[0..n) with d_i >= thr (thr <= 0, so at least one). */
static int32_t cut_min_p(const kv_cand *c, int32_t n, double thr) {
    const float lmax = c[0].logit;
    int32_t i = 1;
    while (i < n && rel_logit(c[i].logit, lmax) >= thr) i++;
    return i;
}

/* Runs stages 3..7 on work and bmax: fills cand[0..n_cand), w, wsum. Greedy
 * leaves one candidate with weight 1. */
static kvlm_status chain_on_work(kv_sampler *s, kvlm_error *err) {
    const kvlm_sampling_params *p = &s->params;
    const int32_t nv = s->n_vocab;
    const float *work = s->work;
    s->n_topk = -1;
    kv_cand *c = s->cand;
    int32_t n;

    if (p->temperature <= 0.0f || p->top_k == 1) {
        /* greedy (top_k == 1 is the same thing, draw or not) */
        /* the first block holding the maximum, then its first token there */
        const int32_t nb = (nv + KV_BLOCK - 1) / KV_BLOCK;
        int32_t bb = -1;
        float bl = -INFINITY;
        for (int32_t b = 0; b < nb; b++)
            if (s->bmax[b] > bl) {
                bl = s->bmax[b];
                bb = b;
            }
        if (bb < 0) goto no_token;
        int32_t best = bb * KV_BLOCK;
        while (!(work[best] == bl)) best++;
        c[0] = (kv_cand){work[best], best};
        s->n_cand = 1;
        s->w[0] = 1.0;
        s->wsum = 1.0;
        return KVLM_OK;
    }

    const bool use_top_p = p->top_p < 1.0f;
    const bool use_min_p = p->min_p > 0.0f;
    const double min_p_thr = use_min_p ? log((double)p->min_p) : 0.0;
    const int32_t k = (p->top_k > 0 && p->top_k < nv) ? p->top_k : nv;

    if (k < nv) {
        n = select_top_k(s, k);
        if (n == 0) goto no_token;
        s->n_topk = n;
        if (use_top_p) n = cut_top_p(c, n, p->top_p, sum_weights_sorted(c, n));
        if (use_min_p) n = cut_min_p(c, n, min_p_thr);
    } else {
        /* top-k off: top-p needs the mass of every token (summed in id order) */
        const int32_t nb = (nv + KV_BLOCK - 1) / KV_BLOCK;
        float lmax = -INFINITY;
        for (int32_t b = 0; b < nb; b++)
            if (s->bmax[b] > lmax) lmax = s->bmax[b];
        if (!(lmax > -INFINITY)) goto no_token;
        const double thr = use_min_p ? min_p_thr : -INFINITY;
        double z = 0.0;
        n = 0;
        for (int32_t b = 0; b < nb; b++) {
            /* without top-p, a block whose maximum fails min-p fails whole */
            if (!use_top_p && !(rel_logit(s->bmax[b], lmax) >= thr)) continue;
            const int32_t end = b == nb - 1 ? nv : (b + 1) * KV_BLOCK;
            for (int32_t i = b * KV_BLOCK; i < end; i++) {
                const float v = work[i];
                if (!(v > -INFINITY)) continue;
                const double d = rel_logit(v, lmax);
                if (use_top_p) z += exp(d);
                if (d >= thr) c[n++] = (kv_cand){v, i}; /* min-p, before sorting */
            }
        }
        sort_cands(c, s->rk, s->rk_tmp, s->hist, n);
        if (use_top_p) n = cut_top_p(c, n, p->top_p, z); /* top-p first: min-p kept a prefix */
    }

    /* temperature and weights */
    const double t = (double)p->temperature;
    const float lmax = c[0].logit;
    double wsum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        const double d = rel_logit(c[i].logit, lmax);
        const double w = exp(d / t);
        s->w[i] = w;
        wsum += w;
    }
    s->n_cand = n;
    s->wsum = wsum;
    return KVLM_OK;

no_token:
    s->n_cand = 0;
    return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: every logit is -inf or NaN after bias and penalties");
}

/* The grammar's mask can be skipped when the chain on the unmasked logits
 * already saw only allowed tokens: greedy, the chosen token (the masked
 * maximum is the same token, ties included); with top-k, every top-k survivor
 * (the masked top-k is then the same set, so top-p, min-p and the weights are
 * too). Without top-k every token's weight counts: no shortcut. */
static bool lazy_ok(kv_sampler *s) {
    const kvlm_sampling_params *p = &s->params;
    const uint64_t *m = kv_gstate_cached_mask(s->gram); /* a state seen before: bit tests */
#define KV_ALLOWED(t) (m ? (m[(t) >> 6] >> ((t) & 63)) & 1 : kv_gstate_allows_token(s->gram, (t)))
    if (p->temperature <= 0.0f || p->top_k == 1) return s->n_cand == 1 && KV_ALLOWED(s->cand[0].id);
    if (s->n_topk < 0) return false;
    for (int32_t i = 0; i < s->n_topk; i++)
        if (!KV_ALLOWED(s->cand[i].id)) return false;
    return true;
#undef KV_ALLOWED
}

/* Stages 1..7 (with a grammar, its mask between 2 and 3). */
static kvlm_status run_chain(kv_sampler *s, const float *logits, kvlm_error *err) {
    prepare_logits(s, logits);
    if (!s->gram) return chain_on_work(s, err);
    if (chain_on_work(s, NULL) == KVLM_OK && lazy_ok(s)) return KVLM_OK;
    int32_t n_allowed = 0;
    const uint64_t *m = kv_gstate_mask(s->gram, &n_allowed, err);
    if (!m) return err ? err->code : KVLM_ERR_NOMEM;
    if (n_allowed == 0) {
        s->n_cand = 0;
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: the grammar allows no token here");
    }
    const int32_t nv = s->n_vocab, nb = (nv + KV_BLOCK - 1) / KV_BLOCK;
    float *work = s->work;
    for (int32_t w = 0; w < (nv + 63) / 64; w++) {
        const uint64_t bits = m[w];
        if (bits == ~0ull) continue;
        const int32_t end = (w + 1) * 64 < nv ? (w + 1) * 64 : nv;
        for (int32_t t = w * 64; t < end; t++)
            if (!((bits >> (t & 63)) & 1)) work[t] = -INFINITY;
    }
    for (int32_t b = 0; b < nb; b++) s->bmax[b] = block_max(work + (size_t)b * KV_BLOCK, block_len(nv, b));
    kvlm_status st = chain_on_work(s, err);
    if (st != KVLM_OK) {
        s->n_cand = 0;
        return kv_fail(err, KVLM_ERR_INVALID_ARG,
                       "sampler: every token the grammar allows is at -inf after bias and penalties");
    }
    return KVLM_OK;
}

kvlm_status kv_sampler_sample(kv_sampler *s, const float *logits, kvlm_token *out,
                              kvlm_error *err) {
    if (!s || !logits || !out) return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: NULL argument");
    kvlm_status st = run_chain(s, logits, err);
    if (st != KVLM_OK) return st;
    if (s->params.temperature <= 0.0f) {
        *out = s->cand[0].id;
        return KVLM_OK;
    }
    const uint64_t x = xoshiro_next(s->rng);
    const double u = (double)(x >> 11) * 0x1.0p-53;
    const double target = u * s->wsum;
    double cum = 0.0;
    int32_t pick = 0;
    for (int32_t i = 0; i < s->n_cand; i++) {
        if (s->w[i] > 0.0) pick = i;
        cum += s->w[i];
        if (target < cum) break;
    }
    *out = s->cand[pick].id;
    return KVLM_OK;
}

kvlm_status kv_sampler_candidates(kv_sampler *s, const float *logits,
                                  kv_sampler_candidate *out, int32_t cap,
                                  int32_t *n_out, kvlm_error *err) {
    if (!s || !logits || !n_out || cap < 0 || (cap > 0 && !out))
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: bad argument");
    *n_out = 0;
    kvlm_status st = run_chain(s, logits, err);
    if (st != KVLM_OK) return st;
    const int32_t n = s->n_cand < cap ? s->n_cand : cap;
    for (int32_t i = 0; i < n; i++) {
        out[i].id = s->cand[i].id;
        out[i].logit = s->cand[i].logit;
        out[i].p = (float)(s->w[i] / s->wsum);
    }
    *n_out = s->n_cand;
    return KVLM_OK;
}
