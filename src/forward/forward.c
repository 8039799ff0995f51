#include "forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "quant/fp16.h"
#include "quant/quant.h"

struct kv_forward {
    const kvlm_model *m;
    kv_cache *cache;
    kv_pool *pool;
    int32_t ubatch;
    int nth;
    float *x, *xb, *q, *k, *v, *att, *hb, *hb2;
    uint8_t *actq;     /* activations converted to a weight's vec_dot_type */
    float *scores;     /* per thread: n_ctx */
    float *vtmp;       /* per thread: head_dim */
    uint8_t *qconv;    /* per thread: one head of q in the K cache's dot type */
    uint64_t qconv_stride;
};

static void *xalloc(size_t n) { return aligned_alloc(64, (n + 63) & ~(size_t)63); }

void kv_forward_free(kv_forward *f) {
    if (!f) return;
    free(f->x); free(f->xb); free(f->q); free(f->k); free(f->v); free(f->att);
    free(f->hb); free(f->hb2); free(f->actq); free(f->scores); free(f->vtmp); free(f->qconv);
    free(f);
}

kvlm_status kv_forward_new(const kvlm_model *m, kv_cache *cache, kv_pool *pool, int32_t ubatch, kv_forward **out,
                           kvlm_error *err) {
    *out = NULL;
    const kv_hparams *hp = &m->hp;
    kv_forward *f = calloc(1, sizeof *f);
    if (!f) return kv_fail(err, KVLM_ERR_NOMEM, "forward: out of memory");
    f->m = m;
    f->cache = cache;
    f->pool = pool;
    f->ubatch = ubatch;
    f->nth = kv_pool_size(pool);
    const size_t B = (size_t)ubatch, E = (size_t)hp->n_embd, Q = (size_t)hp->n_head * (size_t)hp->head_dim;
    const size_t KV = (size_t)hp->n_head_kv * (size_t)hp->head_dim, F = (size_t)hp->n_ff;
    size_t maxd = E > Q ? E : Q;
    if (F > maxd) maxd = F;
    const kv_quant_traits *tk = kv_quant_get(cache->type_k);
    uint64_t qb = 0;
    kv_dtype_row_bytes(tk->vec_dot_type, (uint64_t)hp->head_dim, &qb);
    f->qconv_stride = (qb + 63) & ~(uint64_t)63;
    f->x = xalloc(B * E * 4);
    f->xb = xalloc(B * maxd * 4);
    f->q = xalloc(B * Q * 4);
    f->k = xalloc(B * KV * 4);
    f->v = xalloc(B * KV * 4);
    f->att = xalloc(B * Q * 4);
    f->hb = xalloc(B * F * 4);
    f->hb2 = xalloc(B * F * 4);
    f->actq = xalloc(B * maxd * 4 + 64);
    f->scores = xalloc((size_t)f->nth * (size_t)cache->n_ctx * 4);
    f->vtmp = xalloc((size_t)f->nth * (size_t)hp->head_dim * 4);
    f->qconv = xalloc((size_t)f->nth * (size_t)f->qconv_stride);
    if (!f->x || !f->xb || !f->q || !f->k || !f->v || !f->att || !f->hb || !f->hb2 || !f->actq || !f->scores ||
        !f->vtmp || !f->qconv) {
        kv_forward_free(f);
        return kv_fail(err, KVLM_ERR_NOMEM, "forward: out of memory for activations");
    }
    *out = f;
    return KVLM_OK;
}

/* ------------------------------------------------------------ matmul */

typedef struct mm_job {
    const kv_weight *w;
    kv_vec_dot_fn dot;
    const uint8_t *xq;
    uint64_t xrow;
    int32_t T;
    float *y;
    int64_t ldy;
} mm_job;

static void mm_worker(void *ctx, int ith, int nth) {
    const mm_job *j = ctx;
    const kv_weight *w = j->w;
    int64_t r0, r1;
    kv_split(w->ne1, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = (const uint8_t *)w->data + (uint64_t)r * w->row_bytes;
        for (int32_t t = 0; t < j->T; t++) {
            float s;
            j->dot(w->ne0, &s, wr, j->xq + (uint64_t)t * j->xrow);
            j->y[t * j->ldy + r] = s * w->scale;
        }
    }
}

/* Converts T rows of K floats to type (the vec_dot_type of a weight). */
static const uint8_t *convert_rows(kv_forward *f, const float *x, int32_t T, int64_t K, uint32_t type,
                                   uint64_t *row_bytes) {
    if (type == KV_F32) {
        *row_bytes = (uint64_t)K * 4;
        return (const uint8_t *)x;
    }
    const kv_quant_traits *tr = kv_quant_get(type);
    kv_dtype_row_bytes(type, (uint64_t)K, row_bytes);
    for (int32_t t = 0; t < T; t++) tr->from_float(x + (int64_t)t * K, f->actq + (uint64_t)t * *row_bytes, K);
    return f->actq;
}

/* y[t][0..N) = W x[t] for T rows of x (each w->ne0 floats). */
static void matmul(kv_forward *f, const kv_weight *w, const float *x, int32_t T, float *y) {
    const kv_quant_traits *tr = kv_quant_get(w->type);
    mm_job j = {.w = w, .dot = tr->vec_dot, .T = T, .y = y, .ldy = w->ne1};
    j.xq = convert_rows(f, x, T, w->ne0, tr->vec_dot_type, &j.xrow);
    kv_pool_run(f->pool, mm_worker, &j);
}

/* Several weights applied to the same input (q/k/v, gate/up) share one conversion. */
static void matmul_shared(kv_forward *f, const kv_weight *const *ws, float *const *ys, int nw, const float *x,
                          int32_t T) {
    uint32_t conv = UINT32_MAX;
    mm_job j = {.T = T};
    for (int i = 0; i < nw; i++) {
        const kv_quant_traits *tr = kv_quant_get(ws[i]->type);
        if (tr->vec_dot_type != conv) {
            j.xq = convert_rows(f, x, T, ws[i]->ne0, tr->vec_dot_type, &j.xrow);
            conv = tr->vec_dot_type;
        }
        j.w = ws[i];
        j.dot = tr->vec_dot;
        j.y = ys[i];
        j.ldy = ws[i]->ne1;
        kv_pool_run(f->pool, mm_worker, &j);
    }
}

/* ------------------------------------------------------------ elementwise */

/* y = x / rms(x) * w, with the sum of squares in double as ggml does. */
static void rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / (double)n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] * scale) * w[i];
}

/* Rotates n_rot dims of each head of x in place (NORM: adjacent pairs; NEOX:
 * pairs (i, i + n_rot/2)). theta_i = pos * base^(-2i/n_rot), with the power
 * built by repeated multiplication as ggml does. */
static void rope(float *x, int n_heads, int head_dim, int n_rot, int32_t pos, float base, float freq_scale,
                 kv_rope_type type) {
    const float theta_scale = powf(base, -2.0f / (float)n_rot);
    float theta = (float)pos;
    for (int i = 0; i < n_rot / 2; i++) {
        const float th = freq_scale * theta;
        const float c = cosf(th), s = sinf(th);
        for (int h = 0; h < n_heads; h++) {
            float *xh = x + (int64_t)h * head_dim;
            const int a = type == KV_ROPE_NEOX ? i : 2 * i;
            const int b = type == KV_ROPE_NEOX ? i + n_rot / 2 : 2 * i + 1;
            const float x0 = xh[a], x1 = xh[b];
            xh[a] = x0 * c - x1 * s;
            xh[b] = x0 * s + x1 * c;
        }
        theta *= theta_scale;
    }
}

/* ------------------------------------------------------------ attention */

typedef struct att_job {
    kv_forward *f;
    int layer;
    int32_t T, p0;
} att_job;

static void att_worker(void *ctx, int ith, int nth) {
    const att_job *j = ctx;
    kv_forward *f = j->f;
    const kv_hparams *hp = &f->m->hp;
    const kv_cache *c = f->cache;
    const int hd = hp->head_dim, gqa = hp->n_head / hp->n_head_kv;
    const int64_t Q = (int64_t)hp->n_head * hd;
    const kv_quant_traits *tk = kv_quant_get(c->type_k), *tv = kv_quant_get(c->type_v);
    const kv_quant_traits *tq = kv_quant_get(tk->vec_dot_type);
    const float scale = 1.0f / sqrtf((float)hd);
    float *sc = f->scores + (int64_t)ith * c->n_ctx;
    float *vt = f->vtmp + (int64_t)ith * hd;
    uint8_t *qc = f->qconv + (uint64_t)ith * f->qconv_stride;

    int64_t b, e;
    kv_split((int64_t)j->T * hp->n_head, ith, nth, &b, &e);
    for (int64_t it = b; it < e; it++) {
        const int32_t t = (int32_t)(it / hp->n_head);
        const int h = (int)(it % hp->n_head), kvh = h / gqa;
        const int32_t pos = j->p0 + t, n_kv = pos + 1;
        const float *qh = f->q + (int64_t)t * Q + (int64_t)h * hd;
        tq->from_float(qh, qc, hd);

        float mx = -INFINITY;
        for (int32_t p = 0; p < n_kv; p++) {
            float s;
            tk->vec_dot(hd, &s, kv_cache_k_row(c, j->layer, p) + (uint64_t)kvh * c->k_head_bytes, qc);
            s *= scale;
            sc[p] = s;
            mx = s > mx ? s : mx;
        }
        double sum = 0.0;
        for (int32_t p = 0; p < n_kv; p++) {
            sc[p] = expf(sc[p] - mx);
            sum += (double)sc[p];
        }
        const float inv = (float)(1.0 / sum);

        float *out = f->att + (int64_t)t * Q + (int64_t)h * hd;
        for (int d = 0; d < hd; d++) out[d] = 0.0f;
        for (int32_t p = 0; p < n_kv; p++) {
            float w = sc[p] * inv;
            /* the weights meet V in V's dot type, as llama.cpp's kq x v does */
            if (c->type_v == KV_F16) w = kv_f16_to_f32(kv_f32_to_f16(w));
            else if (c->type_v == KV_BF16) w = kv_bf16_to_f32(kv_f32_to_bf16(w));
            const uint8_t *vr = kv_cache_v_row(c, j->layer, p) + (uint64_t)kvh * c->v_head_bytes;
            if (c->type_v == KV_F32) {
                const float *vf = (const float *)vr;
                for (int d = 0; d < hd; d++) out[d] = fmaf(w, vf[d], out[d]);
            } else {
                tv->to_float(vr, vt, hd);
                for (int d = 0; d < hd; d++) out[d] = fmaf(w, vt[d], out[d]);
            }
        }
    }
}

/* ------------------------------------------------------------ the graph */

static void eval_ubatch(kv_forward *f, const int32_t *tokens, int32_t T, float *logits, bool all_logits) {
    const kvlm_model *m = f->m;
    const kv_hparams *hp = &m->hp;
    kv_cache *c = f->cache;
    const int64_t E = hp->n_embd, Q = (int64_t)hp->n_head * hp->head_dim, KV = (int64_t)hp->n_head_kv * hp->head_dim;
    const int64_t F = hp->n_ff;
    const int32_t p0 = c->n;
    const kv_quant_traits *te = kv_quant_get(m->tok_embd.type);
    const kv_quant_traits *tk = kv_quant_get(c->type_k), *tv = kv_quant_get(c->type_v);

    for (int32_t t = 0; t < T; t++)
        te->to_float((const uint8_t *)m->tok_embd.data + (uint64_t)tokens[t] * m->tok_embd.row_bytes, f->x + t * E, E);

    for (int l = 0; l < hp->n_layer; l++) {
        const kv_layer *L = &m->layers[l];
        for (int32_t t = 0; t < T; t++) rmsnorm(f->xb + t * E, f->x + t * E, L->attn_norm.data, E, hp->norm_eps);
        const kv_weight *qkv[3] = {&L->wq, &L->wk, &L->wv};
        float *const qkv_out[3] = {f->q, f->k, f->v};
        matmul_shared(f, qkv, qkv_out, 3, f->xb, T);
        for (int32_t t = 0; t < T; t++) {
            if (L->bq.data) for (int64_t i = 0; i < Q; i++) f->q[t * Q + i] += L->bq.data[i];
            if (L->bk.data) for (int64_t i = 0; i < KV; i++) f->k[t * KV + i] += L->bk.data[i];
            if (L->bv.data) for (int64_t i = 0; i < KV; i++) f->v[t * KV + i] += L->bv.data[i];
            rope(f->q + t * Q, hp->n_head, hp->head_dim, hp->n_rot, p0 + t, hp->rope_freq_base, hp->rope_freq_scale,
                 hp->rope_type);
            rope(f->k + t * KV, hp->n_head_kv, hp->head_dim, hp->n_rot, p0 + t, hp->rope_freq_base,
                 hp->rope_freq_scale, hp->rope_type);
            /* quantize-on-write: the cache holds the only copy attention reads */
            for (int h = 0; h < hp->n_head_kv; h++) {
                tk->from_float(f->k + t * KV + (int64_t)h * hp->head_dim,
                               kv_cache_k_row(c, l, p0 + t) + (uint64_t)h * c->k_head_bytes, hp->head_dim);
                tv->from_float(f->v + t * KV + (int64_t)h * hp->head_dim,
                               kv_cache_v_row(c, l, p0 + t) + (uint64_t)h * c->v_head_bytes, hp->head_dim);
            }
        }
        att_job aj = {f, l, T, p0};
        kv_pool_run(f->pool, att_worker, &aj);
        matmul(f, &L->wo, f->att, T, f->xb);
        for (int64_t i = 0; i < T * E; i++) f->x[i] += f->xb[i];

        for (int32_t t = 0; t < T; t++) rmsnorm(f->xb + t * E, f->x + t * E, L->ffn_norm.data, E, hp->norm_eps);
        const kv_weight *gu[2] = {&L->w_gate, &L->w_up};
        float *const gu_out[2] = {f->hb, f->hb2};
        matmul_shared(f, gu, gu_out, 2, f->xb, T);
        for (int64_t i = 0; i < T * F; i++) {
            const float g = f->hb[i];
            f->hb[i] = (g / (1.0f + expf(-g))) * f->hb2[i];
        }
        matmul(f, &L->w_down, f->hb, T, f->xb);
        for (int64_t i = 0; i < T * E; i++) f->x[i] += f->xb[i];
    }

    for (int32_t t = 0; t < T; t++) c->tokens[p0 + t] = tokens[t];
    c->n = p0 + T;

    if (!logits) return;
    const int32_t first = all_logits ? 0 : T - 1;
    for (int32_t t = first; t < T; t++)
        rmsnorm(f->xb + (t - first) * E, f->x + t * E, m->output_norm.data, E, hp->norm_eps);
    matmul(f, &m->output, f->xb, T - first, logits);
}

void kv_forward_eval(kv_forward *f, const int32_t *tokens, int32_t n, float *logits, bool all_logits) {
    const int64_t V = f->m->hp.n_vocab;
    for (int32_t i = 0; i < n; i += f->ubatch) {
        const int32_t T = n - i < f->ubatch ? n - i : f->ubatch;
        const bool last = i + T == n;
        float *out = NULL;
        if (logits && all_logits) out = logits + (int64_t)i * V;
        else if (logits && last) out = logits;
        eval_ubatch(f, tokens + i, T, out, all_logits);
    }
}
