/* Attention over the paged KV cache (see attention.h). */
#include "attention.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "quant/fp16.h"
#include "forward/vmath.h"
#include "quant/quant.h"

struct kv_attention {
    int nth;
    int32_t n_head, n_head_kv, head_dim;
    bool prefetch;
    float *scores;  /* per thread: scores_cap */
    int64_t scores_cap;
    float *rowtmp;  /* per thread: kv_dim (dequantized K or V rows) */
    kv_f16 *q16;    /* per thread: one head of q in f16 */
};

static void *xalloc(size_t n) { return aligned_alloc(64, (n + 63) & ~(size_t)63); }

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
    a->scores_cap = 4096;
    a->scores = xalloc((size_t)nth * (size_t)a->scores_cap * 4);
    a->rowtmp = xalloc((size_t)nth * (size_t)n_head_kv * (size_t)head_dim * 4);
    a->q16 = xalloc((size_t)nth * (size_t)head_dim * 2);
    if (!a->scores || !a->rowtmp || !a->q16) {
        kv_attention_free(a);
        return kv_fail(err, KVLM_ERR_NOMEM, "forward: out of memory for activations");
    }
    *out = a;
    return KVLM_OK;
}

void kv_attention_free(kv_attention *a) {
    if (!a) return;
    free(a->scores);
    free(a->rowtmp);
    free(a->q16);
    free(a);
}

bool kv_attention_reserve(kv_attention *a, int64_t n) {
    if (n <= a->scores_cap) return true;
    int64_t cap = a->scores_cap;
    while (cap < n) cap *= 2;
    float *sc = xalloc((size_t)a->nth * (size_t)cap * 4);
    if (!sc) return false;
    free(a->scores);
    a->scores = sc;
    a->scores_cap = cap;
    return true;
}

typedef struct att_job {
    const kv_attention *a;
    const kv_att_batch *b;
    atomic_long next; /* the next (token, head) item to take: threads take items until none is left */
} att_job;

/* Prefetches head kvh of the K and V rows of the page starting at slot (a page boundary), if it exists. */
static void prefetch_page(const kv_seq *sq, int layer, int32_t slot, int kvh, int n_head_kv) {
    const int32_t P = kv_seq_page_tokens(sq);
    if (slot >= kv_seq_n_pages(sq) * P) return;
    const kv_rows r = kv_page_rows(kv_seq_page(sq, slot / P), layer);
    const uint64_t ko = (uint64_t)kvh * (r.k_stride / (uint64_t)n_head_kv);
    const uint64_t vo = (uint64_t)kvh * (r.v_stride / (uint64_t)n_head_kv);
    for (int32_t t = 0; t < P; t++) {
        __builtin_prefetch(kv_rows_k(&r, t) + ko, 0, 1);
        __builtin_prefetch(kv_rows_v(&r, t) + vo, 0, 1);
    }
}

static void att_worker(void *ctx, int ith, int nth) {
    att_job *j = ctx;
    const kv_attention *a = j->a;
    const kv_att_batch *b = j->b;
    const int layer = b->layer;
    const int hd = a->head_dim, gqa = a->n_head / a->n_head_kv, kv_dim = a->n_head_kv * hd;
    const int64_t Q = (int64_t)a->n_head * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    float *sc = a->scores + (int64_t)ith * a->scores_cap;
    float *tmp = a->rowtmp + (int64_t)ith * kv_dim;
    kv_f16 *q16 = a->q16 + (int64_t)ith * hd;
    const kv_quant_traits *tf16 = kv_quant_get(KV_F16), *tf32 = kv_quant_get(KV_F32);
    const kv_vec_mad_fn mad32 = kv_quant_get_mad(KV_F32);
    const kv_vec_mad_rows_fn madr16 = kv_quant_get_mad_rows(KV_F16), madr32 = kv_quant_get_mad_rows(KV_F32);
    const kv_softmax_fn softmax = kv_quant_get_softmax();
    const kv_quant_gemm *g16 = kv_quant_get_gemm(KV_F16), *g32 = kv_quant_get_gemm(KV_F32);
    const kv_gemm_fn gemm16 = g16 ? g16->gemm : NULL, gemm32 = g32 ? g32->gemm : NULL;

    (void)nth;
    /* items are taken one at a time: causal prefill makes later tokens
       dearer, and a thread of a shared machine may be slowed at any time */
    const int64_t n_items = (int64_t)b->T * a->n_head;
    for (int64_t it; (it = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < n_items;) {
        const int32_t t = (int32_t)(it / a->n_head);
        const int h = (int)(it % a->n_head), kvh = h / gqa;
        const kv_seq *sq = b->seqs[t];
        const int32_t P = kv_seq_page_tokens(sq);
        const bool ring = kv_seq_is_ring(sq);
        const int32_t p = kv_seq_pos(sq, b->slots[t]);
        /* non-ring slots hold positions 0..n in order: read those up to p */
        const int32_t n_read = ring ? b->n_read[t] : p + 1;
        const float *qh = b->q + (int64_t)t * Q + (int64_t)h * hd;
        tf16->from_float(qh, q16, hd);

        float mx = -INFINITY;
        if (!ring) {
            /* page by page: one gemm call scores a page's keys (each score is still one vec_dot's bits) */
            for (int32_t start = 0; start < n_read; start += P) {
                const int32_t cnt = n_read - start < P ? n_read - start : P;
                if (a->prefetch) prefetch_page(sq, layer, start + P, kvh, a->n_head_kv);
                const kv_rows r = kv_page_rows(kv_seq_page(sq, start / P), layer);
                const uint32_t tk = r.layout->type_k;
                if (tk == KV_F16 && gemm16) {
                    gemm16(hd, r.k + (uint64_t)kvh * hd * 2, r.k_stride, cnt, q16, 0, 1, sc + start, cnt);
                } else if (tk == KV_F32 && gemm32) {
                    gemm32(hd, r.k + (uint64_t)kvh * hd * 4, r.k_stride, cnt, qh, 0, 1, sc + start, cnt);
                } else {
                    for (int32_t o = 0; o < cnt; o++) {
                        const uint8_t *kr = kv_rows_k(&r, o);
                        if (tk == KV_F16) tf16->vec_dot(hd, &sc[start + o], kr + (uint64_t)kvh * hd * 2, q16);
                        else if (tk == KV_F32) tf32->vec_dot(hd, &sc[start + o], kr + (uint64_t)kvh * hd * 4, qh);
                        else tf32->vec_dot(hd, &sc[start + o], kv_codec_head(&r.layout->k, kr, kvh, hd, kv_dim, tmp), qh);
                    }
                }
                for (int32_t o = start; o < start + cnt; o++) {
                    sc[o] *= scale;
                    mx = sc[o] > mx ? sc[o] : mx;
                }
            }
        } else {
            const int32_t window = kv_seq_window(sq);
            for (int32_t sl = 0; sl < n_read; sl++) {
                const int32_t ps = kv_seq_pos(sq, sl);
                if (ps > p || ps <= p - window) {
                    sc[sl] = -INFINITY;
                    continue;
                }
                const kv_row r = kv_seq_row(sq, layer, sl);
                const uint32_t tk = r.layout->type_k;
                float d;
                if (tk == KV_F16) {
                    tf16->vec_dot(hd, &d, r.k + (uint64_t)kvh * hd * 2, q16);
                } else if (tk == KV_F32) {
                    tf32->vec_dot(hd, &d, r.k + (uint64_t)kvh * hd * 4, qh);
                } else {
                    tf32->vec_dot(hd, &d, kv_codec_head(&r.layout->k, r.k, kvh, hd, kv_dim, tmp), qh);
                }
                d *= scale;
                sc[sl] = d;
                mx = d > mx ? d : mx;
            }
        }
        const double sum = softmax(n_read, sc, mx); /* exp(-inf) = 0 for masked slots */
        const float inv = (float)(1.0 / sum);

        float *out = b->out + (int64_t)t * Q + (int64_t)h * hd;
        for (int d = 0; d < hd; d++) out[d] = 0.0f;
        /* slots in order, one fma per element and slot; F32/F16 values a
           page at a time (same bits as slot by slot), slots of weight 0 skipped */
        float wbuf[KV_PAGE_TOKENS_MAX];
        kv_f16 wh16[KV_PAGE_TOKENS_MAX];
        const void *rows[KV_PAGE_TOKENS_MAX];
        for (int32_t start = 0; start < n_read; start += P) {
            const int32_t cnt = n_read - start < P ? n_read - start : P;
            const kv_rows r = kv_page_rows(kv_seq_page(sq, start / P), layer);
            const uint32_t tv = r.layout->type_v;
            const kv_vec_mad_rows_fn mr = tv == KV_F16 ? madr16 : tv == KV_F32 ? madr32 : NULL;
            int nr = 0;
            float *pw = sc + start;
            for (int32_t o = 0; o < cnt; o++) pw[o] *= inv;
            if (tv == KV_F16) { /* the weights meet V in f16, as llama.cpp's kq x v does (0 stays 0) */
                tf16->from_float(pw, wh16, cnt);
                tf16->to_float(wh16, pw, cnt);
            }
            for (int32_t o = 0; o < cnt; o++) {
                if (pw[o] == 0.0f) continue;
                const float w = pw[o];
                const uint8_t *vr = kv_rows_v(&r, o);
                if (mr) { /* F32/F16 rows: collected, summed in one call below */
                    wbuf[nr] = w;
                    rows[nr++] = vr + (uint64_t)kvh * hd * (tv == KV_F16 ? 2 : 4);
                } else { /* quantized V: dequantized head, one row at a time */
                    mad32(hd, w, kv_codec_head(&r.layout->v, vr, kvh, hd, kv_dim, tmp), out);
                }
            }
            if (nr) mr(hd, nr, wbuf, rows, out);
        }
    }
}

void kv_attention_run(kv_attention *a, kv_tpool *pool, const kv_att_batch *b) {
    att_job j = {a, b, 0};
    kv_tpool_run(pool, att_worker, &j);
}
