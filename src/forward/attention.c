/* Attention over the paged KV cache (see attention.h). */
#include "attention.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"
#include "quant/fp16.h"
#include "forward/vmath.h"
#include "quant/quant.h"

/* Tokens of one sequence an item walks the pages with (prefill): their
   query rows meet a page while it is in cache. */
#define ATT_TB 8
/* Key and value rows per kernel call (see att_tokens): the most, and the
   run length picked at run time (att_run_rows) */
#define ATT_RB 32
/* The vec_dot types q is converted to for the K types the cache stores:
   F32 (q itself), F16, Q8_0 (for Q8_0 and Q4_0 keys). */
enum { VD_F16, VD_Q8_0, VD_N };

struct kv_attention {
    int nth;
    int32_t n_head, n_head_kv, head_dim;
    bool prefetch;
    /* per thread */
    float *sc;         /* sc_cap floats: the scores of an item's query heads over their slots */
    int64_t sc_cap;    /* at least n_head * (the longest span reserved) */
    uint8_t *qc;       /* VD_N * ATT_TB * n_head * qrow: q converted to each vec_dot type */
    float *rowtmp;     /* kv_dim: a dequantized K or V row (heads straddling blocks) */
    int32_t rb;        /* rows per run, <= ATT_RB (att_run_rows) */
    uint64_t qrow;     /* bytes of one converted head (the largest of the types) */
};

static void *xalloc(size_t n) { return aligned_alloc(64, (n + 63) & ~(size_t)63); }

/* The rows of a page one kernel call takes for a kv head. Every choice gives the same bits (each
 * score is one vec_dot, each output element meets its slots in order); only the memory order
 * differs. Runs of 8 tokens with every kv head of a run before the next keep reads close to the
 * stored order, which Zen 1's prefetchers need (s110-q8_0 tg32 @ d2048: 24 -> 29 t/s there against
 * whole pages per head). On a Xeon (family 6 model 207) whole pages per head looked 17% faster by
 * CPU time on a loaded machine, but on the quiet machine (wall time, 3 interleaved rounds) neither
 * was ahead, so 8 is the default everywhere. KVLM_ATT_RUN=N (1..ATT_RB) sets it, for measuring. */
static int32_t att_run_rows(void) {
    const char *v = getenv("KVLM_ATT_RUN");
    if (v) {
        char *e;
        const long n = strtol(v, &e, 10);
        if (e != v && !*e && n >= 1 && n <= ATT_RB) return (int32_t)n;
    }
    return 8;
}

kvlm_status kv_attention_new(int nth, int32_t n_head, int32_t n_head_kv, int32_t head_dim, bool prefetch,
                             kv_attention **out, kvlm_error *err) {
    *out = NULL;
    kv_attention *a = calloc(1, sizeof *a);
    if (!a) return kv_fail(err, KVLM_ERR_NOMEM, "forward: out of memory");
    a->nth = nth;
    a->n_head = n_head;
    a->n_head_kv = n_head_kv;
    a->head_dim = head_dim;
    a->prefetch = prefetch;
    a->rb = att_run_rows();
    const size_t N = (size_t)nth, TH = (size_t)ATT_TB * (size_t)n_head, hd = (size_t)head_dim;
    uint64_t b16 = 0, b8 = 0;
    kv_dtype_row_bytes(KV_F16, (uint64_t)hd, &b16);
    if (!kv_dtype_row_bytes(KV_Q8_0, (uint64_t)hd, &b8)) b8 = 0; /* hd not whole blocks: keys decoded instead */
    a->qrow = ((b16 > b8 ? b16 : b8) + 63) & ~(uint64_t)63;
    a->sc_cap = (int64_t)TH * 256;
    a->sc = xalloc(N * (size_t)a->sc_cap * 4);
    a->qc = xalloc(N * VD_N * TH * a->qrow);
    a->rowtmp = xalloc(N * (size_t)n_head_kv * hd * 4);
    if (!a->sc || !a->qc || !a->rowtmp) {
        kv_attention_free(a);
        return kv_fail(err, KVLM_ERR_NOMEM, "forward: out of memory for activations");
    }
    *out = a;
    return KVLM_OK;
}

void kv_attention_free(kv_attention *a) {
    if (!a) return;
    free(a->sc);
    free(a->qc);
    free(a->rowtmp);
    free(a);
}

bool kv_attention_reserve(kv_attention *a, int64_t n) {
    if ((int64_t)a->n_head * n <= a->sc_cap) return true;
    int64_t cap = a->sc_cap;
    while (cap < (int64_t)a->n_head * n) cap *= 2;
    float *sc = xalloc((size_t)a->nth * (size_t)cap * 4);
    if (!sc) return false;
    free(a->sc);
    a->sc = sc;
    a->sc_cap = cap;
    return true;
}

typedef struct att_job {
    const kv_attention *a;
    const kv_att_batch *b;
    int32_t tb;        /* tokens per block (up to ATT_TB, as many as the scores' room holds) */
    int32_t n_blocks;  /* blocks of tb tokens */
    int32_t run;       /* kv heads per item */
    int32_t n_runs;
    atomic_long next;  /* the next (block, run of kv heads) item to take */
} att_job;

/* Prefetches heads [h0, h1) of the K and V rows of page j, if it exists. */
static void prefetch_page(const kv_seq *sq, int layer, int32_t j, int h0, int h1, int n_head_kv) {
    if (!kv_seq_layer_in_ring(sq, layer) && j >= kv_seq_n_pages(sq)) return;
    const int32_t P = kv_seq_page_tokens(sq);
    const kv_rows r = kv_seq_rows(sq, layer, j);
    const uint64_t kh = r.k_stride / (uint64_t)n_head_kv, vh = r.v_stride / (uint64_t)n_head_kv;
    for (int32_t t = 0; t < P; t++)
        for (uint64_t o = (uint64_t)h0 * kh; o < (uint64_t)h1 * kh; o += 64) __builtin_prefetch(kv_rows_k(&r, t) + o, 0, 1);
    for (int32_t t = 0; t < P; t++)
        for (uint64_t o = (uint64_t)h0 * vh; o < (uint64_t)h1 * vh; o += 64) __builtin_prefetch(kv_rows_v(&r, t) + o, 0, 1);
}

/* The kernels one item uses, looked up once per call. */
typedef struct att_fns {
    const kv_quant_traits *t32, *t16, *t8;
    kv_gemm_fn gemm32, gemm16, gemm8, gemm4;
    kv_vec_mad_fn mad32;
    kv_vec_mad_rows_fn madr32, madr16, madr8;
    kv_softmax_fn softmax;
} att_fns;

/* Tokens [t0, t1) of one sequence, kv heads [h0, h1), in three steps with
 * the reduction of every query head (t, h) fixed by its position alone:
 *  1. pages outer, kv heads inner: the gqa query heads of each token scored
 *     against a page's keys of a kv head in one gemm call (each score one
 *     vec_dot's bits; q converted once to the keys' vec_dot type, keys read
 *     in place), scaled, masked (ring);
 *  2. per query head, the softmax over all its slots (the max, then the
 *     softmax kernel's fixed order), weights normalized (and rounded to f16
 *     for F16 values, as llama.cpp's kq x v does: 0 stays 0);
 *  3. pages outer again: the weighted sum of each page's value rows into
 *     out, slots in order, one fma per element and slot, weight-0 slots
 *     skipped (F32, F16 and Q8_0 rows read in place). */
static void att_tokens(const kv_attention *a, const kv_att_batch *b, const att_fns *fn, int ith, int32_t t0,
                       int32_t t1, int h0, int h1) {
    const int layer = b->layer;
    const int hd = a->head_dim, gqa = a->n_head / a->n_head_kv, kv_dim = a->n_head_kv * hd;
    const int64_t Q = (int64_t)a->n_head * hd;
    const int64_t TH = (int64_t)ATT_TB * a->n_head;
    const float scale = b->q_scaled ? 1.0f : 1.0f / sqrtf((float)hd);
    uint8_t *qc = a->qc + (uint64_t)ith * VD_N * (uint64_t)TH * a->qrow;
    float *tmp = a->rowtmp + (int64_t)ith * kv_dim;
    const kv_seq *sq = b->seqs[t0];
    const int32_t P = kv_seq_page_tokens(sq);
    const bool ring = kv_seq_is_ring(sq);
    const int32_t window = ring ? kv_seq_window(sq) : 0;
    /* the positions a query at p sees: (p - win, p]; win 0: all up to p (a sliding-window layer narrows it) */
    const int32_t win = b->swa > 0 && (!ring || b->swa < window) ? b->swa : window;
    const int32_t nt = t1 - t0;
    int32_t pos[ATT_TB] = {0}, n_read[ATT_TB] = {0};
    for (int32_t i = 0; i < nt; i++) pos[i] = kv_seq_pos(sq, b->slots[t0 + i]);
    /* score 0 is position lo's: 0, or for a layer kept in the sequence's sliding-window ring (which holds
       only the last positions) the first visible one rounded down to a page, and to 8 so that every
       position keeps the softmax lane (i mod 8) and page run it has in a full cache: the slots before lo
       are masked there (exp gives 0, their values are skipped), so the results are the same bits */
    int32_t lo = 0;
    if (!ring && win > 0 && kv_seq_layer_in_ring(sq, layer)) {
        int32_t first = pos[0] - win + 1;
        for (int32_t i = 1; i < nt; i++) first = pos[i] - win + 1 < first ? pos[i] - win + 1 : first;
        int32_t g = P, m8 = 8; /* lcm(P, 8) = P / gcd(P, 8) * 8 */
        while (m8) {
            const int32_t t = g % m8;
            g = m8;
            m8 = t;
        }
        const int32_t L = P / g * 8;
        lo = first > 0 ? first / L * L : 0;
    }
    int32_t most = 0;
    for (int32_t i = 0; i < nt; i++) {
        /* non-ring slots hold positions 0..n in order: read those from lo up to p */
        n_read[i] = ring ? b->n_read[t0 + i] : pos[i] + 1 - lo;
        most = n_read[i] > most ? n_read[i] : most;
    }
    const int32_t j0 = lo / P; /* the page of position lo */
    /* the scores of (token t0 + i, head h) at sc + (i * n_head + h) * most */
    float *sc = a->sc + (int64_t)ith * a->sc_cap;
#define SC(i, h) (sc + ((int64_t)(i) * a->n_head + (h)) * most)
    bool conv[VD_N] = {false, false};

    for (int32_t start = 0, j = 0; start < most; start += P, j++) {
        const int32_t cnt = most - start < P ? most - start : P;
        if (a->prefetch) prefetch_page(sq, layer, j0 + j + 1, h0, h1, a->n_head_kv);
        const kv_rows r = kv_seq_rows(sq, layer, j0 + j);
        const uint32_t tk = r.layout->type_k;
        /* how this page's keys meet q: a gemm against q converted to their vec_dot type, or (heads not whole
           blocks, no kernel) each key's head dequantized and dotted in f32 */
        kv_gemm_fn gemm = NULL;
        int vd = -1;
        uint64_t khoff = 0;
        if (kv_dtype_row_bytes(tk, (uint64_t)hd, &khoff)) {
            if (tk == KV_F32) gemm = fn->gemm32;
            else if (tk == KV_F16) gemm = fn->gemm16, vd = VD_F16;
            else if (tk == KV_Q8_0) gemm = fn->gemm8, vd = VD_Q8_0;
            else if (tk == KV_Q4_0) gemm = fn->gemm4, vd = VD_Q8_0;
        }
        if (!gemm) vd = -1;
        if (vd >= 0 && !conv[vd]) { /* q of the item's heads, converted once */
            const kv_quant_traits *tq = vd == VD_F16 ? fn->t16 : fn->t8;
            for (int32_t i = 0; i < nt; i++)
                for (int h = h0 * gqa; h < h1 * gqa; h++)
                    tq->from_float(b->q + (t0 + i) * Q + (int64_t)h * hd,
                                   qc + ((uint64_t)vd * (uint64_t)TH + (uint64_t)(i * a->n_head + h)) * a->qrow, hd);
            conv[vd] = true;
        }
        /* the page's key rows in runs of a->rb tokens (att_run_rows), every kv head of a run
           before the next run: the rows' bytes are read in the order they are
           stored (a kv head's keys alone are a stride of short pieces, which
           the prefetchers of some cores follow badly); each score is still
           one vec_dot's bits */
        if (gemm)
            for (int32_t o0 = 0; o0 < cnt; o0 += a->rb)
                for (int kvh = h0; kvh < h1; kvh++) {
                    const int hq = kvh * gqa;
                    for (int32_t i = 0; i < nt; i++) {
                        const int32_t c = ring ? cnt : (n_read[i] - start < cnt ? n_read[i] - start : cnt);
                        const int32_t nrow = c - o0 < a->rb ? c - o0 : a->rb;
                        if (nrow <= 0) continue;
                        const float *q32 = b->q + (t0 + i) * Q + (int64_t)hq * hd;
                        const void *x = vd < 0 ? (const void *)q32
                                               : qc + ((uint64_t)vd * (uint64_t)TH + (uint64_t)(i * a->n_head + hq)) * a->qrow;
                        const uint64_t xs = vd < 0 ? (uint64_t)hd * 4 : a->qrow;
                        gemm(hd, kv_rows_k(&r, o0) + (uint64_t)kvh * khoff, r.k_stride, nrow, x, xs, gqa,
                             SC(i, hq) + start + o0, most);
                    }
                }
        for (int kvh = h0; kvh < h1; kvh++) {
            const int hq = kvh * gqa; /* the first query head of kvh */
            for (int32_t i = 0; i < nt; i++) {
                const int32_t c = ring ? cnt : (n_read[i] - start < cnt ? n_read[i] - start : cnt);
                if (c <= 0) continue;
                float *s = SC(i, hq) + start;
                const float *q32 = b->q + (t0 + i) * Q + (int64_t)hq * hd;
                if (!gemm) /* keys decoded one at a time (no kernel for their type) */
                    for (int32_t o = 0; o < c; o++) {
                        const float *kf = kv_codec_head(&r.layout->k, kv_rows_k(&r, o), kvh, hd, kv_dim, tmp);
                        for (int g = 0; g < gqa; g++) fn->t32->vec_dot(hd, &s[g * most + o], kf, q32 + (int64_t)g * hd);
                    }
                for (int g = 0; g < gqa; g++)
                    for (int32_t o = 0; o < c; o++) s[g * most + o] *= scale;
                if (ring) /* a ring's slots hold positions out of order: those outside (p - win, p] masked */
                    for (int32_t o = 0; o < c; o++) {
                        const int32_t ps = kv_seq_pos(sq, start + o);
                        if (ps > pos[i] || ps <= pos[i] - win)
                            for (int g = 0; g < gqa; g++) s[g * most + o] = -INFINITY;
                    }
                else if (win > 0) /* score o is position lo + o: those up to p - win masked (exp gives 0) */
                    for (int32_t o = 0; o < c && lo + start + o <= pos[i] - win; o++)
                        for (int g = 0; g < gqa; g++) s[g * most + o] = -INFINITY;
            }
        }
    }

    for (int32_t i = 0; i < nt; i++)
        for (int h = h0 * gqa; h < h1 * gqa; h++) {
            float *s = SC(i, h);
            float mx = -INFINITY;
            for (int32_t o = 0; o < n_read[i]; o++) mx = s[o] > mx ? s[o] : mx;
            const double sum = fn->softmax(n_read[i], s, mx); /* exp(-inf) = 0 for masked slots */
            const float inv = (float)(1.0 / sum);
            for (int32_t o = 0; o < n_read[i]; o++) s[o] *= inv;
            float *out = b->out + (t0 + i) * Q + (int64_t)h * hd;
            for (int d = 0; d < hd; d++) out[d] = 0.0f;
        }

    for (int32_t start = 0, j = 0; start < most; start += P, j++) {
        const int32_t cnt = most - start < P ? most - start : P;
        const kv_rows r = kv_seq_rows(sq, layer, j0 + j);
        const uint32_t tv = r.layout->type_v;
        const kv_vec_mad_rows_fn mr = tv == KV_F16 ? fn->madr16
                                      : tv == KV_F32 ? fn->madr32
                                      : tv == KV_Q8_0 && hd % 32 == 0 ? fn->madr8
                                      : NULL;
        uint64_t vhoff = 0;
        if (mr) kv_dtype_row_bytes(tv, (uint64_t)hd, &vhoff);
        if (tv == KV_F16)
            for (int kvh = h0; kvh < h1; kvh++)
                for (int32_t i = 0; i < nt; i++) {
                    const int32_t c = ring ? cnt : (n_read[i] - start < cnt ? n_read[i] - start : cnt);
                    for (int g = 0; c > 0 && g < gqa; g++) {
                        float *pw = SC(i, kvh * gqa + g) + start;
                        kv_f16 wh[KV_PAGE_TOKENS_MAX];
                        fn->t16->from_float(pw, wh, c);
                        fn->t16->to_float(wh, pw, c);
                    }
                }
        /* rows read in place from the page in runs of a->rb tokens, every kv
           head of a run before the next (stored order, as for the keys); each
           output element still meets its slots in order */
        if (mr)
            for (int32_t o0 = 0; o0 < cnt; o0 += a->rb)
                for (int kvh = h0; kvh < h1; kvh++)
                    for (int32_t i = 0; i < nt; i++) {
                        const int32_t c = ring ? cnt : (n_read[i] - start < cnt ? n_read[i] - start : cnt);
                        const int32_t o1 = c < o0 + a->rb ? c : o0 + a->rb;
                        for (int g = 0; o1 > o0 && g < gqa; g++) {
                            const int h = kvh * gqa + g;
                            const float *pw = SC(i, h) + start;
                            float w[ATT_RB];
                            const void *rows[ATT_RB];
                            int nr = 0;
                            for (int32_t o = o0; o < o1; o++) {
                                if (pw[o] == 0.0f) continue;
                                w[nr] = pw[o];
                                rows[nr++] = kv_rows_v(&r, o) + (uint64_t)kvh * vhoff;
                            }
                            if (nr) mr(hd, nr, w, rows, b->out + (t0 + i) * Q + (int64_t)h * hd);
                        }
                    }
        if (!mr)
            for (int kvh = h0; kvh < h1; kvh++)
                for (int32_t i = 0; i < nt; i++) {
                const int32_t c = ring ? cnt : (n_read[i] - start < cnt ? n_read[i] - start : cnt);
                for (int g = 0; c > 0 && g < gqa; g++) {
                    const int h = kvh * gqa + g;
                    float *pw = SC(i, h) + start;
                    float *out = b->out + (t0 + i) * Q + (int64_t)h * hd;
                    /* other types: the head dequantized, one row at a time */
                    for (int32_t o = 0; o < c; o++)
                        if (pw[o] != 0.0f)
                            fn->mad32(hd, pw[o], kv_codec_head(&r.layout->v, kv_rows_v(&r, o), kvh, hd, kv_dim, tmp),
                                      out);
                }
            }
    }
#undef SC
}

static void att_worker(void *ctx, int ith, int nth) {
    att_job *j = ctx;
    const kv_attention *a = j->a;
    const kv_att_batch *b = j->b;
    (void)nth;
    att_fns fn = {0};
    fn.t32 = kv_quant_get(KV_F32);
    fn.t16 = kv_quant_get(KV_F16);
    fn.t8 = kv_quant_get(KV_Q8_0);
    const kv_quant_gemm *g;
    if ((g = kv_quant_get_gemm(KV_F32))) fn.gemm32 = g->gemm;
    if ((g = kv_quant_get_gemm(KV_F16))) fn.gemm16 = g->gemm;
    if ((g = kv_quant_get_gemm(KV_Q8_0))) fn.gemm8 = g->gemm;
    if ((g = kv_quant_get_gemm(KV_Q4_0))) fn.gemm4 = g->gemm;
    fn.mad32 = kv_quant_get_mad(KV_F32);
    fn.madr32 = kv_quant_get_mad_rows(KV_F32);
    fn.madr16 = kv_quant_get_mad_rows(KV_F16);
    fn.madr8 = kv_quant_get_mad_rows(KV_Q8_0);
    fn.softmax = kv_quant_get_softmax();

    /* items are taken one at a time: causal prefill makes later tokens
       dearer, and a thread of a shared machine may be slowed at any time */
    const int64_t n_items = (int64_t)j->n_blocks * j->n_runs;
    for (int64_t it; (it = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < n_items;) {
        const int32_t blk = (int32_t)(it / j->n_runs), run = (int32_t)(it % j->n_runs);
        const int h0 = run * j->run, h1 = h0 + j->run < a->n_head_kv ? h0 + j->run : a->n_head_kv;
        const int32_t end = (blk + 1) * j->tb < b->T ? (blk + 1) * j->tb : b->T;
        /* the block's tokens in runs of one sequence (batched sessions: one token each) */
        for (int32_t t0 = blk * j->tb; t0 < end;) {
            int32_t t1 = t0 + 1;
            while (t1 < end && b->seqs[t1] == b->seqs[t0]) t1++;
            att_tokens(a, b, &fn, ith, t0, t1, h0, h1);
            t0 = t1;
        }
    }
}

void kv_attention_run(kv_attention *a, kv_tpool *pool, const kv_att_batch *b) {
    att_job j = {.a = a, .b = b};
    int32_t most = 1;
    for (int32_t t = 0; t < b->T; t++) {
        const int32_t n = kv_seq_is_ring(b->seqs[t]) ? b->n_read[t] : kv_seq_pos(b->seqs[t], b->slots[t]) + 1;
        most = n > most ? n : most;
    }
    const int64_t fit = a->sc_cap / ((int64_t)a->n_head * most); /* >= 1: kv_attention_reserve */
    j.tb = fit < ATT_TB ? (int32_t)(fit > 1 ? fit : 1) : ATT_TB;
    j.n_blocks = (b->T + j.tb - 1) / j.tb;
    /* enough items for the threads to share: whole kv-head ranges when there are blocks to spare, else runs
       of kv heads (one thread walks all heads page by page) */
    int32_t want = j.n_blocks >= 4 * a->nth || a->nth == 1 ? 1 : (4 * a->nth + j.n_blocks - 1) / j.n_blocks;
    if (want > a->n_head_kv) want = a->n_head_kv;
    j.run = (a->n_head_kv + want - 1) / want;
    j.n_runs = (a->n_head_kv + j.run - 1) / j.run;
    atomic_init(&j.next, 0);
    kv_tpool_run(pool, att_worker, &j);
}
