#include "forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/rope.h"
#include "forward/vmath.h"
#include "quant/quant.h"
#include "quant/quant_i2s_float.h"
#include "quant/quant_types.h"

struct kv_forward {
    const kvlm_model *m;
    kv_seq *seq;
    kv_tpool *pool;
    int32_t ubatch;
    int nth;
    kv_attention *attn;
    float *x, *xb, *q, *k, *v, *att, *hb, *hb2;
    uint8_t *actq;     /* activations converted to a weight's vec_dot_type */
    int32_t *slots;    /* the slot of each token of the current pass */
    kv_seq **seqs;     /* the sequence of each token (one, or several when batching sessions) */
    int32_t *n_read;   /* ring sequences: slots attention may read, per token */
    kv_rope rope_swa;  /* the sliding-window layers' RoPE (gemma3) */
};

static void *xalloc(size_t n) { return aligned_alloc(64, (n + 63) & ~(size_t)63); }

void kv_forward_free(kv_forward *f) {
    if (!f) return;
    free(f->x); free(f->xb); free(f->q); free(f->k); free(f->v); free(f->att);
    free(f->hb); free(f->hb2); free(f->actq); free(f->slots); free(f->seqs); free(f->n_read);
    kv_attention_free(f->attn);
    free(f);
}

kvlm_status kv_forward_new(const kvlm_model *m, kv_seq *seq, kv_tpool *pool, int32_t ubatch, bool prefetch,
                           kv_forward **out, kvlm_error *err) {
    *out = NULL;
    const kv_hparams *hp = &m->hp;
    kv_forward *f = calloc(1, sizeof *f);
    if (!f) return kv_fail(err, KVLM_ERR_NOMEM, "forward: out of memory");
    f->m = m;
    f->seq = seq;
    f->pool = pool;
    f->ubatch = ubatch;
    f->nth = kv_tpool_size(pool);
    const size_t B = (size_t)ubatch, E = (size_t)hp->n_embd, Q = (size_t)hp->n_head * (size_t)hp->head_dim;
    const size_t KV = (size_t)hp->n_head_kv * (size_t)hp->head_dim, F = (size_t)hp->n_ff;
    size_t maxd = E > Q ? E : Q;
    if (F > maxd) maxd = F;
    f->x = xalloc(B * E * 4);
    f->xb = xalloc(B * maxd * 4);
    f->q = xalloc(B * Q * 4);
    f->k = xalloc(B * KV * 4);
    f->v = xalloc(B * KV * 4);
    f->att = xalloc(B * Q * 4);
    f->hb = xalloc(B * F * 4);
    f->hb2 = xalloc(B * F * 4);
    f->actq = xalloc(B * maxd * 4 + 64);
    f->slots = xalloc(B * 4);
    f->seqs = calloc(B, sizeof *f->seqs);
    f->n_read = xalloc(B * 4);
    if (!f->seqs || !f->n_read || !f->x || !f->xb || !f->q || !f->k || !f->v || !f->att || !f->hb || !f->hb2 || !f->actq ||
        !f->slots) {
        kv_forward_free(f);
        return kv_fail(err, KVLM_ERR_NOMEM, "forward: out of memory for activations");
    }
    kv_model_rope_swa(m, hp->n_ctx_train, &f->rope_swa);
    kvlm_status st = kv_attention_new(f->nth, hp->n_head, hp->n_head_kv, hp->head_dim, prefetch, &f->attn, err);
    if (st) {
        kv_forward_free(f);
        return st;
    }
    *out = f;
    return KVLM_OK;
}

/* ------------------------------------------------------------ matmul */

typedef struct mm_one {
    const kv_weight *w;
    kv_vec_dot_fn dot; /* used when gemm is NULL */
    kv_gemm_fn gemm;
    float *y;
    int64_t ldy;
} mm_one;

/* Up to three weights applied to the same converted input in one dispatch
 * (q/k/v, gate/up): each thread takes its share of the rows of each. */
typedef struct mm_job {
    mm_one one[3];
    int n;
    const uint8_t *xq;
    uint64_t xrow;
    int32_t T;
} mm_job;

static void mm_rows(const mm_job *j, const mm_one *o, int ith, int nth) {
    const kv_weight *w = o->w;
    int64_t r0, r1;
    /* an interleaved weight is split in whole tiles of its layout */
    const int64_t R = w->il ? w->il->il_rows : 1;
    kv_split((w->ne1 + R - 1) / R, ith, nth, &r0, &r1);
    r0 *= R;
    r1 = r1 * R < w->ne1 ? r1 * R : w->ne1;
    if (r0 >= r1) return;
    if (o->gemm) {
        /* a register-tiled block of rows x tokens; each output equals vec_dot's bits */
        o->gemm(w->ne0, (const uint8_t *)w->data + (uint64_t)r0 * w->row_bytes, w->row_bytes, (int)(r1 - r0), j->xq,
                j->xrow, j->T, o->y + r0, o->ldy);
        if (w->scale != 1.0f)
            for (int32_t t = 0; t < j->T; t++)
                for (int64_t r = r0; r < r1; r++) o->y[t * o->ldy + r] *= w->scale;
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = (const uint8_t *)w->data + (uint64_t)r * w->row_bytes;
        for (int32_t t = 0; t < j->T; t++) {
            float s;
            o->dot(w->ne0, &s, wr, j->xq + (uint64_t)t * j->xrow);
            o->y[t * o->ldy + r] = s * w->scale;
        }
    }
}

static void mm_worker(void *ctx, int ith, int nth) {
    const mm_job *j = ctx;
    for (int i = 0; i < j->n; i++) mm_rows(j, &j->one[i], ith, nth);
}

/* Bytes of one activation row of K floats in type. */
static uint64_t act_row_bytes(uint32_t type, int64_t K) {
    if (type == KV_F32) return (uint64_t)K * 4;
    if (type == KV_I8_S) return (uint64_t)kv_i8_s_row_bytes(K);
    uint64_t rb = 0;
    kv_dtype_row_bytes(type, (uint64_t)K, &rb);
    return rb;
}

/* Converts T rows of K floats to type (the vec_dot_type of a weight). */
static const uint8_t *convert_rows(kv_forward *f, const float *x, int32_t T, int64_t K, uint32_t type,
                                   uint64_t *row_bytes) {
    *row_bytes = act_row_bytes(type, K);
    if (type == KV_F32) return (const uint8_t *)x;
    const kv_quant_traits *tr = kv_quant_get(type);
    for (int32_t t = 0; t < T; t++) tr->from_float(x + (int64_t)t * K, f->actq + (uint64_t)t * *row_bytes, K);
    return f->actq;
}

/* The dot product (or gemm kernel) and activation type a weight is used with. */
static void dot_of(const kv_forward *f, const kv_weight *w, kv_vec_dot_fn *dot, kv_gemm_fn *gemm, uint32_t *act) {
    *gemm = NULL;
    if (w->type == KV_I2_S && f->m->ternary_f32) {
        *dot = kv_vec_dot_i2_s_f32;
        *act = KV_F32;
        return;
    }
    const kv_quant_traits *tr = kv_quant_get(w->type);
    const kv_quant_gemm *g = kv_quant_get_gemm(w->type);
    *dot = tr->vec_dot;
    *gemm = w->il ? w->il->gemm_il : g ? g->gemm : NULL;
    *act = tr->vec_dot_type;
}

static void mm_set(const kv_forward *f, mm_one *o, const kv_weight *w, float *y, uint32_t *act) {
    o->w = w;
    o->y = y;
    o->ldy = w->ne1;
    dot_of(f, w, &o->dot, &o->gemm, act);
}

/* The activation type a weight's matmul converts its input to. */
static uint32_t act_type(const kv_forward *f, const kv_weight *w) {
    kv_vec_dot_fn dot;
    kv_gemm_fn gemm;
    uint32_t act;
    dot_of(f, w, &dot, &gemm, &act);
    return act;
}

/* Weights applied to the same input, ys[i][t] = ws[i] x[t] (at most 3:
 * q/k/v, gate/up): one conversion and one dispatch per run of weights that
 * take the same activation type. pre: the type f->actq already holds x in
 * (converted by the stage before), or UINT32_MAX. */
static void matmul_shared(kv_forward *f, const kv_weight *const *ws, float *const *ys, int nw, const float *x,
                          int32_t T, uint32_t pre) {
    uint32_t conv = UINT32_MAX;
    mm_job j = {.T = T};
    for (int i = 0; i < nw; i++) {
        mm_one o;
        uint32_t act;
        mm_set(f, &o, ws[i], ys[i], &act);
        if (act != conv) {
            if (j.n) kv_tpool_run(f->pool, mm_worker, &j);
            j.n = 0;
            if (act == pre && act != KV_F32) {
                j.xq = f->actq;
                j.xrow = act_row_bytes(act, ws[i]->ne0);
            } else {
                j.xq = convert_rows(f, x, T, ws[i]->ne0, act, &j.xrow);
            }
            pre = UINT32_MAX; /* actq is overwritten from here on */
            conv = act;
        }
        j.one[j.n++] = o;
    }
    if (j.n) kv_tpool_run(f->pool, mm_worker, &j);
}

/* y[t][0..N) = W x[t] for T rows of x (each w->ne0 floats). */
static void matmul(kv_forward *f, const kv_weight *w, const float *x, int32_t T, float *y, uint32_t pre) {
    matmul_shared(f, &w, &y, 1, x, T, pre);
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

/* GELU, tanh form (ggml_gelu's formula; gemma3) */
static float gelu_tanh(float x) {
    const float c = 0.79788456080286535587989211986876f; /* sqrt(2 / pi) */
    return 0.5f * x * (1.0f + tanhf(c * x * (1.0f + 0.044715f * x * x)));
}

/* Each of n_heads rows of head_dim floats, in place: rmsnorm(row) * w (the q/k norms of qwen3). */
static void qk_norm(float *x, int32_t n_heads, int32_t head_dim, const float *w, float eps) {
    for (int32_t h = 0; h < n_heads; h++) rmsnorm(x + (int64_t)h * head_dim, x + (int64_t)h * head_dim, w, head_dim, eps);
}

/* ------------------------------------------------------------ row stages
 *
 * The per-token work between two matmuls, fused into one pass over the
 * tokens and split across the threads by token when there are several
 * (prefill): the residual add, the FFN activation, a norm, and the
 * conversion of the result to the next matmul's activation type. Each
 * token's operations are the same whoever runs them, so results do not
 * depend on the split. One token (decode) runs inline. */
typedef struct stage {
    kv_forward *f;
    int32_t T, first; /* rows 0..T-1; the norm and conversion only for rows first.. (to row t - first) */
    float *x;         /* x[t] += add[t] over n_add floats (x NULL: none) */
    const float *add;
    int64_t n_add;
    float *g;         /* g[t] = act(g[t]) * u[t] over n_g floats (g NULL: none) */
    const float *u;
    int64_t n_g;
    const float *in;  /* out[t - first] = rmsnorm(in[t]) * nw over n floats (nw NULL: out = in) */
    float *out;
    const float *nw;
    int64_t n;
    uint32_t conv;    /* convert out rows into f->actq (UINT32_MAX or KV_F32: none) */
} stage;

static void stage_rows(const stage *s, int32_t t0, int32_t t1) {
    const kv_hparams *hp = &s->f->m->hp;
    const kv_quant_traits *tr = s->conv != UINT32_MAX && s->conv != KV_F32 ? kv_quant_get(s->conv) : NULL;
    const uint64_t rb = tr ? act_row_bytes(s->conv, s->n) : 0;
    const kv_silu_mul_fn silu_mul = kv_quant_get_silu_mul();
    for (int32_t t = t0; t < t1; t++) {
        if (s->x) {
            float *x = s->x + (int64_t)t * s->n_add;
            const float *a = s->add + (int64_t)t * s->n_add;
            for (int64_t i = 0; i < s->n_add; i++) x[i] += a[i];
        }
        if (s->g) {
            float *g = s->g + (int64_t)t * s->n_g;
            const float *u = s->u + (int64_t)t * s->n_g;
            if (hp->ffn_act == KV_FFN_GELU) {
                for (int64_t i = 0; i < s->n_g; i++) g[i] = gelu_tanh(g[i]) * u[i];
            } else if (hp->ffn_act == KV_FFN_RELU2) {
                for (int64_t i = 0; i < s->n_g; i++) {
                    const float v = g[i] > 0.0f ? g[i] : 0.0f;
                    g[i] = (v * v) * u[i];
                }
            } else {
                silu_mul(s->n_g, g, u);
            }
        }
        if (t < s->first || !s->in) continue;
        const float *src = s->in + (int64_t)t * s->n;
        if (s->nw) {
            float *o = s->out + (int64_t)(t - s->first) * s->n;
            rmsnorm(o, src, s->nw, s->n, hp->norm_eps);
            src = o;
        }
        if (tr) tr->from_float(src, s->f->actq + (uint64_t)(t - s->first) * rb, s->n);
    }
}

static void stage_worker(void *ctx, int ith, int nth) {
    const stage *s = ctx;
    int64_t t0, t1;
    kv_split(s->T, ith, nth, &t0, &t1);
    stage_rows(s, (int32_t)t0, (int32_t)t1);
}

/* Runs the stage; returns the type f->actq now holds (s->conv, or UINT32_MAX). */
static uint32_t stage_run(kv_forward *f, stage *s) {
    s->f = f;
    if (s->T > 1 && f->nth > 1) kv_tpool_run(f->pool, stage_worker, s);
    else stage_rows(s, 0, s->T);
    return s->in && s->conv != KV_F32 ? s->conv : UINT32_MAX;
}

/* ------------------------------------------------------------ the graph */

/* One pass of T <= ubatch tokens whose slots (f->slots, f->seqs, f->n_read) are reserved. */
static void eval_pass(kv_forward *f, const int32_t *tokens, int32_t T, float *logits, bool all_logits) {
    const kvlm_model *m = f->m;
    const kv_hparams *hp = &m->hp;
    const int64_t E = hp->n_embd, Q = (int64_t)hp->n_head * hp->head_dim, KV = (int64_t)hp->n_head_kv * hp->head_dim;
    const int64_t F = hp->n_ff;
    const kv_quant_traits *te = kv_quant_get(m->tok_embd.type);

    for (int32_t t = 0; t < T; t++) {
        te->to_float((const uint8_t *)m->tok_embd.data + (uint64_t)tokens[t] * m->tok_embd.row_bytes, f->x + t * E, E);
        if (hp->embd_scale != 1.0f) /* gemma3: x * sqrt(n_embd), as ggml_scale */
            for (int64_t i = 0; i < E; i++) f->x[t * E + i] *= hp->embd_scale;
    }

    bool pending = false; /* x still lacks the last FFN output (xb), added by the next stage */
    for (int l = 0; l < hp->n_layer; l++) {
        const kv_layer *L = &m->layers[l];
        const bool swa = kv_layer_is_swa(hp, l); /* gemma3's local layers: their RoPE and window */
        /* (x += FFN output), xb = attn_norm(x), converted for wq */
        stage sa = {.T = T, .x = pending ? f->x : NULL, .add = f->xb, .n_add = E, .in = f->x, .out = f->xb,
                    .nw = L->attn_norm.data, .n = E, .conv = act_type(f, &L->wq)};
        uint32_t pre = stage_run(f, &sa);
        const kv_weight *qkv[3] = {&L->wq, &L->wk, &L->wv};
        float *const qkv_out[3] = {f->q, f->k, f->v};
        matmul_shared(f, qkv, qkv_out, 3, f->xb, T, pre);
        for (int32_t t = 0; t < T; t++) {
            if (L->bq.data) for (int64_t i = 0; i < Q; i++) f->q[t * Q + i] += L->bq.data[i];
            if (L->bk.data) for (int64_t i = 0; i < KV; i++) f->k[t * KV + i] += L->bk.data[i];
            if (L->bv.data) for (int64_t i = 0; i < KV; i++) f->v[t * KV + i] += L->bv.data[i];
            if (L->attn_q_norm.data) /* qwen3: RMSNorm of each head of q and k, before RoPE */
                qk_norm(f->q + t * Q, hp->n_head, hp->head_dim, L->attn_q_norm.data, hp->norm_eps);
            if (L->attn_k_norm.data) qk_norm(f->k + t * KV, hp->n_head_kv, hp->head_dim, L->attn_k_norm.data, hp->norm_eps);
            kv_seq *s = f->seqs[t];
            const int32_t pos = kv_seq_pos(s, f->slots[t]);
            const kv_rope *rope = swa ? &f->rope_swa : kv_seq_rope(s);
            kv_rope_apply(rope, f->q + t * Q, hp->n_head, hp->head_dim, pos);
            if (hp->q_prescaled) { /* phi3: Qcur = ggml_scale(rope(Qcur), 1/sqrt(head_dim)), then kq unscaled */
                const float qs = 1.0f / sqrtf((float)hp->head_dim);
                for (int64_t i = 0; i < Q; i++) f->q[t * Q + i] *= qs;
            }
            kv_rope_apply(rope, f->k + t * KV, hp->n_head_kv, hp->head_dim, pos);
            /* quantize-on-write: the cache holds the only copy attention reads */
            kv_seq_write(s, l, f->slots[t], f->k + t * KV, f->v + t * KV);
        }
        const kv_att_batch ab = {.layer = l, .T = T, .q = f->q, .out = f->att, .seqs = f->seqs, .slots = f->slots,
                                 .n_read = f->n_read, .q_scaled = hp->q_prescaled, .swa = swa ? hp->n_swa : 0};
        kv_attention_run(f->attn, f->pool, &ab);
        /* (bitnet: att = sub_norm(att)), converted for wo */
        stage sb = {.T = T, .in = f->att, .out = f->att, .nw = L->attn_sub_norm.data, .n = Q, .conv = act_type(f, &L->wo)};
        pre = stage_run(f, &sb);
        matmul(f, &L->wo, f->att, T, f->xb, pre);
        if (L->attn_post_norm.data) { /* gemma3: xb = post_attention_norm(xb) */
            stage sp = {.T = T, .in = f->xb, .out = f->xb, .nw = L->attn_post_norm.data, .n = E, .conv = UINT32_MAX};
            stage_run(f, &sp);
        }

        /* x += attention output, xb = ffn_norm(x), converted for gate/up */
        stage sc = {.T = T, .x = f->x, .add = f->xb, .n_add = E, .in = f->x, .out = f->xb, .nw = L->ffn_norm.data,
                    .n = E, .conv = act_type(f, &L->w_gate)};
        pre = stage_run(f, &sc);
        const kv_weight *gu[2] = {&L->w_gate, &L->w_up};
        float *const gu_out[2] = {f->hb, f->hb2};
        matmul_shared(f, gu, gu_out, 2, f->xb, T, pre);
        /* hb = act(gate) * up, (bitnet: hb = sub_norm(hb)), converted for down */
        stage sd = {.T = T, .g = f->hb, .u = f->hb2, .n_g = F, .in = f->hb, .out = f->hb, .nw = L->ffn_sub_norm.data,
                    .n = F, .conv = act_type(f, &L->w_down)};
        pre = stage_run(f, &sd);
        matmul(f, &L->w_down, f->hb, T, f->xb, pre);
        if (L->ffn_post_norm.data) { /* gemma3: xb = post_ffw_norm(xb) */
            stage sp = {.T = T, .in = f->xb, .out = f->xb, .nw = L->ffn_post_norm.data, .n = E, .conv = UINT32_MAX};
            stage_run(f, &sp);
        }
        pending = true;
    }

    /* x += last FFN output; the rows that want logits: xb = output_norm(x), converted for the output.
     * Row t's norm goes to xb row t, the row its own residual add reads: written
     * to xb row 0 instead, it would race with the thread still adding row 0. */
    const int32_t first = all_logits ? 0 : T - 1;
    float *const normed = f->xb + (int64_t)first * E;
    stage se = {.T = T, .first = first, .x = pending ? f->x : NULL, .add = f->xb, .n_add = E, .in = logits ? f->x : NULL,
                .out = normed, .nw = m->output_norm.data, .n = E, .conv = act_type(f, &m->output)};
    const uint32_t pre = stage_run(f, &se);
    if (!logits) return;
    matmul(f, &m->output, normed, T - first, logits, pre);
}

kvlm_status kv_forward_eval(kv_forward *f, const int32_t *tokens, int32_t n, float *logits, bool all_logits,
                            int32_t *n_done, kvlm_error *err) {
    *n_done = 0;
    const int64_t V = f->m->hp.n_vocab;
    kv_seq *sq = f->seq;
    int32_t step = f->ubatch;
    /* a ring pass must not overwrite slots its own queries still read */
    const int32_t cap = kv_seq_pass_cap(sq);
    if (step > cap) step = cap;
    for (int32_t i = 0; i < n; i += step) {
        const int32_t T = n - i < step ? n - i : step;
        const bool last = i + T == n;
        float *out = NULL;
        if (logits && all_logits) out = logits + (int64_t)i * V;
        else if (logits && last) out = logits;
        kvlm_status st = kv_seq_prepare(sq, T, err);
        if (st) return st;
        if ((st = kv_seq_reserve(sq, tokens + i, T, err))) return st;
        const int32_t n_slots = kv_seq_span(sq, T);
        for (int32_t t = 0; t < T; t++) {
            f->slots[t] = kv_seq_slot(sq, t);
            f->seqs[t] = sq;
            f->n_read[t] = n_slots;
        }
        if (!kv_attention_reserve(f->attn, n_slots)) return kv_fail(err, KVLM_ERR_NOMEM, "forward: out of memory for scores");
        eval_pass(f, tokens + i, T, out, all_logits);
        kv_seq_commit(sq, T);
        *n_done += T;
    }
    return KVLM_OK;
}

kvlm_status kv_forward_eval_multi(kv_forward *f, kv_seq *const *seqs, const int32_t *tokens, int32_t n, float *logits,
                                  kvlm_error *err) {
    if (n > f->ubatch) return kv_fail(err, KVLM_ERR_INVALID_ARG, "decode_batch: %d sequences exceed the batch of %d", n,
                                      f->ubatch);
    int64_t most = 0;
    for (int32_t i = 0; i < n; i++) {
        kv_seq *sq = seqs[i];
        kvlm_status st = kv_seq_prepare(sq, 1, err);
        if (!st) st = kv_seq_reserve(sq, tokens + i, 1, err);
        if (st) return st; /* earlier sequences reserved a slot but did not commit it: harmless */
        f->slots[i] = kv_seq_slot(sq, 0);
        f->seqs[i] = sq;
        f->n_read[i] = kv_seq_span(sq, 1);
        if (f->n_read[i] > most) most = f->n_read[i];
    }
    if (!kv_attention_reserve(f->attn, most)) return kv_fail(err, KVLM_ERR_NOMEM, "forward: out of memory for scores");
    eval_pass(f, tokens, n, logits, true);
    for (int32_t i = 0; i < n; i++) kv_seq_commit(seqs[i], 1);
    return KVLM_OK;
}
