/* Beam search (kvlm_generate with n_beams > 1): the beams are copy-on-write forks of the session's
 * page table in its own pool, so they share the prompt's pages and every full page they have in
 * common; each step evaluates every live beam's new token in one batched pass. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "beam.h"
#include "core/clock.h"
#include "core/error.h"
#include "session_impl.h"
#include "tokenizer/vocab.h"

typedef struct beam {
    kv_seq seq;         /* the prompt and the beam's tokens but the last (fed this step) */
    kvlm_token *tokens; /* generated */
    int32_t n;
    char *text; /* the generated tokens' pieces, for stop strings */
    size_t text_len;
    double logprob;
} beam;

typedef struct cand {
    double logprob; /* the beam's and the token's */
    int32_t beam;   /* -1: the session itself (the first step) */
    kvlm_token token;
} cand;

typedef struct search {
    kvlm_session *s;
    const kvlm_generate_params *gp;
    const kv_vocab *v;
    int32_t N, n_vocab;
    beam live[KV_BEAM_MAX], next[KV_BEAM_MAX];
    int32_t n_live;
    kv_hyp hyps[KV_BEAM_MAX];
    int32_t n_hyps;
    int64_t order;
    size_t max_stop;
} search;

static int cand_cmp(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->logprob != y->logprob) return x->logprob > y->logprob ? -1 : 1;
    if (x->beam != y->beam) return x->beam < y->beam ? -1 : 1;
    return x->token < y->token ? -1 : x->token > y->token;
}

static int hyp_cmp(const void *a, const void *b) {
    const kv_hyp *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

static double beam_score(double logprob, int32_t n_tokens, float length_penalty) {
    return logprob / pow(n_tokens > 1 ? (double)n_tokens : 1.0, (double)length_penalty);
}

/* The k most probable tokens of a row of logits (ties: the lower token), with their
   log-probabilities (natural log, the log-sum-exp taken in double), appended to c as
   continuations of beam b whose summed log-probability is base. */
static int32_t top_tokens(const float *row, int32_t n_vocab, int32_t k, int32_t b, double base, cand *c) {
    int32_t n = 0;
    for (int32_t t = 0; t < n_vocab; t++) {
        const float x = row[t];
        if (n == k && !(x > row[c[n - 1].token])) continue;
        int32_t i = n < k ? n++ : k - 1;
        while (i > 0 && x > row[c[i - 1].token]) {
            c[i] = c[i - 1];
            i--;
        }
        c[i].token = t;
    }
    float mx = row[0];
    for (int32_t t = 1; t < n_vocab; t++)
        if (row[t] > mx) mx = row[t];
    double sum = 0.0;
    for (int32_t t = 0; t < n_vocab; t++) sum += exp((double)row[t] - (double)mx);
    const double lse = (double)mx + log(sum);
    for (int32_t i = 0; i < n; i++) {
        c[i].logprob = base + ((double)row[c[i].token] - lse);
        c[i].beam = b;
    }
    return n;
}

static void beam_clear(beam *b, bool seq) {
    if (seq) kv_seq_destroy(&b->seq);
    free(b->tokens);
    free(b->text);
    memset(b, 0, sizeof *b);
}

/* A beam's tokens and text with one more token (its piece). */
static bool extend(beam *dst, const beam *src, kvlm_token t, const char *piece, int32_t pl) {
    dst->tokens = malloc(((size_t)(src ? src->n : 0) + 1) * sizeof *dst->tokens);
    dst->text = malloc((src ? src->text_len : 0) + (size_t)pl + 1);
    if (!dst->tokens || !dst->text) return false;
    dst->n = 0;
    dst->text_len = 0;
    if (src && src->n) memcpy(dst->tokens, src->tokens, (size_t)src->n * sizeof *src->tokens);
    if (src && src->text_len) memcpy(dst->text, src->text, src->text_len);
    dst->n = src ? src->n : 0;
    dst->text_len = src ? src->text_len : 0;
    dst->tokens[dst->n++] = t;
    memcpy(dst->text + dst->text_len, piece, (size_t)pl);
    dst->text_len += (size_t)pl;
    dst->text[dst->text_len] = 0;
    return true;
}

/* Whether the text's last pl bytes complete a stop string (one that ends inside them). */
static bool hits_stop(const search *S, const char *text, size_t len, int32_t pl) {
    if (pl <= 0) return false;
    const size_t from = len - (size_t)pl;
    for (int32_t i = 0; i < S->gp->n_stop; i++) {
        const char *st = S->gp->stop[i];
        const size_t sl = strlen(st);
        size_t start = from + 1 > sl ? from + 1 - sl : 0;
        for (size_t p = start; p + sl <= len; p++)
            if (memcmp(text + p, st, sl) == 0) return true;
    }
    return false;
}

/* Keeps a finished hypothesis if it is among the N best so far. */
static bool add_hyp(search *S, const kvlm_token *toks, int32_t n, kvlm_token last, double logprob, bool eos,
                    kvlm_finish_reason fin) {
    const int32_t len = n + 1; /* the ending token counts (an end-of-generation token too) */
    const double score = beam_score(logprob, len, S->gp->length_penalty);
    int32_t slot = S->n_hyps;
    if (S->n_hyps == S->N) { /* full: replace the worst if this one is better */
        slot = 0;
        for (int32_t i = 1; i < S->n_hyps; i++)
            if (hyp_cmp(&S->hyps[i], &S->hyps[slot]) > 0) slot = i;
        if (!(score > S->hyps[slot].score)) return true;
    }
    const int32_t nt = eos ? n : n + 1;
    kvlm_token *copy = malloc(((size_t)nt + 1) * sizeof *copy);
    if (!copy) return false;
    if (n) memcpy(copy, toks, (size_t)n * sizeof *toks);
    if (!eos) copy[n] = last;
    kv_hyp *h = &S->hyps[slot];
    if (slot < S->n_hyps) free(h->tokens);
    else S->n_hyps++;
    *h = (kv_hyp){.tokens = copy, .n = nt, .logprob = logprob, .score = score, .finish = fin, .eos = eos,
                  .order = S->order++};
    return true;
}

static int ptr_cmp(const void *a, const void *b) {
    const uintptr_t x = (uintptr_t)*(const kv_page *const *)a, y = (uintptr_t)*(const kv_page *const *)b;
    return x < y ? -1 : x > y;
}

/* Distinct bytes of the pages the session and its live beams hold, and the bytes without sharing. */
static void measure(search *S, int64_t *distinct, int64_t *unshared) {
    int64_t total = kv_seq_n_pages(&S->s->seq);
    for (int32_t b = 0; b < S->n_live; b++) total += kv_seq_n_pages(&S->live[b].seq);
    const kv_page **pg = malloc((size_t)(total ? total : 1) * sizeof *pg);
    if (!pg) return; /* statistics only */
    int64_t k = 0, all = 0;
    for (int32_t b = -1; b < S->n_live; b++) {
        const kv_seq *q = b < 0 ? &S->s->seq : &S->live[b].seq;
        for (int32_t j = 0; j < kv_seq_n_pages(q); j++) pg[k++] = kv_seq_page(q, j);
    }
    for (int64_t i = 0; i < k; i++) all += (int64_t)pg[i]->layout->page_bytes;
    qsort(pg, (size_t)k, sizeof *pg, ptr_cmp);
    int64_t d = 0;
    for (int64_t i = 0; i < k; i++)
        if (i == 0 || pg[i] != pg[i - 1]) d += (int64_t)pg[i]->layout->page_bytes;
    free(pg);
    if (d > *distinct) {
        *distinct = d;
        *unshared = all;
    }
}

kvlm_status kv_beam_search(kvlm_session *s, const float *root_logits, int32_t max_gen, double deadline,
                           const kvlm_generate_params *gp, kvlm_generate_result *res, kv_hyp **hyps_out,
                           int32_t *n_hyps_out, kvlm_finish_reason *fin_out, kvlm_error *err) {
    *hyps_out = NULL;
    *n_hyps_out = 0;
    *fin_out = KVLM_FINISH_LENGTH;
    search *S = calloc(1, sizeof *S);
    if (!S) return kv_fail(err, KVLM_ERR_NOMEM, "generate: out of memory");
    S->s = s;
    S->gp = gp;
    S->v = s->model->vocab;
    S->N = gp->n_beams;
    S->n_vocab = s->model->hp.n_vocab;
    const int32_t N = S->N, K = 2 * N, n_vocab = S->n_vocab;
    kvlm_status st = KVLM_OK;
    /* a session's own pool holds one context: room for the beams while they live */
    kv_page_pool *pool = s->cache->pool;
    const int64_t widen =
        s->own_cache ? 2 * (int64_t)N * kv_seq_pages_needed(&s->seq_config, kv_seq_page_tokens(&s->seq)) : 0;
    cand *c = malloc((size_t)N * (size_t)K * sizeof *c);
    float *logits = malloc((size_t)N * (size_t)n_vocab * sizeof *logits);
    kv_seq *seqs[KV_BEAM_MAX];
    kvlm_token feed[KV_BEAM_MAX];
    if (!c || !logits) {
        st = kv_fail(err, KVLM_ERR_NOMEM, "generate: out of memory");
        goto done;
    }
    if (widen) kv_pool_widen(pool, widen);
    bool done_early = false;
    for (int32_t step = 0; step < max_gen; step++) {
        if (atomic_load(&s->cancel)) {
            *fin_out = KVLM_FINISH_CANCELLED;
            break;
        }
        if (deadline && kv_now_s() > deadline) {
            *fin_out = KVLM_FINISH_DEADLINE;
            break;
        }
        /* the candidates: each beam's 2N most probable tokens */
        int32_t nc = 0;
        if (step == 0) {
            nc = top_tokens(root_logits, n_vocab, K, -1, 0.0, c);
        } else {
            for (int32_t b = 0; b < S->n_live; b++)
                nc += top_tokens(logits + (size_t)b * (size_t)n_vocab, n_vocab, K, b, S->live[b].logprob, c + nc);
        }
        qsort(c, (size_t)nc, sizeof *c, cand_cmp);
        int32_t n_next = 0, parent[KV_BEAM_MAX];
        for (int32_t r = 0; r < nc && r < K && n_next < N; r++) { /* the 2N best: some may end */
            const beam *par = c[r].beam < 0 ? NULL : &S->live[c[r].beam];
            const kvlm_token t = c[r].token;
            const kvlm_token *pt = par ? par->tokens : NULL;
            const int32_t pn = par ? par->n : 0;
            if (!gp->ignore_eos && kv_vocab_is_eog(S->v, t)) {
                if (r < N && !add_hyp(S, pt, pn, t, c[r].logprob, true, KVLM_FINISH_STOP)) goto nomem;
                continue;
            }
            char piece[256];
            int32_t pl = kv_vocab_token_to_piece(S->v, t, piece, sizeof piece, false);
            if (pl < 0) pl = 0;
            beam *nb = &S->next[n_next];
            if (!extend(nb, par, t, piece, pl)) {
                beam_clear(nb, false);
                goto nomem;
            }
            nb->logprob = c[r].logprob;
            if (hits_stop(S, nb->text, nb->text_len, pl)) {
                bool ok = r >= N || add_hyp(S, pt, pn, t, c[r].logprob, false, KVLM_FINISH_STOP);
                beam_clear(nb, false);
                if (!ok) goto nomem;
                continue;
            }
            parent[n_next++] = c[r].beam;
        }
        /* the page tables: the first child of a beam takes its parent's over, the others fork it (the
           first step's beams all fork the session); a beam with no child is dropped */
        int32_t first[KV_BEAM_MAX];
        for (int32_t b = 0; b < S->n_live; b++) first[b] = -1;
        for (int32_t j = 0; j < n_next; j++)
            if (parent[j] >= 0 && first[parent[j]] < 0) first[parent[j]] = j;
        for (int32_t j = 0; j < n_next; j++) {
            const int32_t p = parent[j];
            if (p >= 0 && first[p] == j) continue;
            beam *nb = &S->next[j];
            st = kv_seq_init(&nb->seq, pool, &s->seq_config, err);
            if (!st && (st = kv_seq_fork(&nb->seq, p < 0 ? &s->seq : &S->live[p].seq, err))) kv_seq_destroy(&nb->seq);
            if (st) {
                for (int32_t i = 0; i < n_next; i++) beam_clear(&S->next[i], i < j && (parent[i] < 0 || first[parent[i]] != i));
                goto fail;
            }
        }
        for (int32_t b = 0; b < S->n_live; b++) {
            if (first[b] >= 0) S->next[first[b]].seq = S->live[b].seq; /* moved */
            beam_clear(&S->live[b], first[b] < 0);
        }
        memcpy(S->live, S->next, (size_t)n_next * sizeof *S->live);
        memset(S->next, 0, sizeof S->next);
        S->n_live = n_next;
        if (n_next == 0) break;
        /* the end? */
        const int32_t n_gen = step + 1;
        if (S->n_hyps == N) {
            double worst = S->hyps[0].score;
            for (int32_t i = 1; i < S->n_hyps; i++)
                if (S->hyps[i].score < worst) worst = S->hyps[i].score;
            if (!(beam_score(S->live[0].logprob, n_gen, gp->length_penalty) > worst)) {
                done_early = true;
                break;
            }
        }
        if (n_gen == max_gen) break;
        /* the context is full (whatever the overflow policy: a beam never shifts or drops a token) */
        const kv_seq *q0 = &S->live[0].seq;
        if (kv_seq_n(q0) >= kv_seq_n_ctx(q0) || !kv_seq_fits(q0, (int64_t)kv_seq_n(q0) + 1)) break;
        for (int32_t b = 0; b < S->n_live; b++) {
            seqs[b] = &S->live[b].seq;
            feed[b] = S->live[b].tokens[S->live[b].n - 1];
        }
        measure(S, &res->beam_kv_bytes_peak, &res->beam_kv_bytes_unshared);
        if ((st = kv_forward_eval_multi(s->fwd, seqs, feed, S->n_live, logits, err))) goto fail;
        res->n_passes++;
    }
    if (!done_early)
        for (int32_t b = 0; b < S->n_live; b++) {
            beam *lb = &S->live[b];
            if (!add_hyp(S, lb->tokens, lb->n - 1, lb->tokens[lb->n - 1], lb->logprob, false, *fin_out))
                goto nomem;
        }
    qsort(S->hyps, (size_t)S->n_hyps, sizeof *S->hyps, hyp_cmp);
    kv_hyp *out = malloc((size_t)(S->n_hyps ? S->n_hyps : 1) * sizeof *out);
    if (!out) goto nomem;
    memcpy(out, S->hyps, (size_t)S->n_hyps * sizeof *out);
    *hyps_out = out;
    *n_hyps_out = S->n_hyps;
    S->n_hyps = 0;
    goto fail;
nomem:
    st = kv_fail(err, KVLM_ERR_NOMEM, "generate: out of memory");
fail:
    for (int32_t b = 0; b < S->n_live; b++) beam_clear(&S->live[b], true);
    for (int32_t b = 0; b < KV_BEAM_MAX; b++) beam_clear(&S->next[b], false); /* no tables yet */
    if (widen) kv_pool_widen(pool, -widen);
done:
    kv_hyps_free(S->hyps, S->n_hyps);
    free(c);
    free(logits);
    free(S);
    return st;
}

kvlm_status kv_beam_adopt(kvlm_session *s, const kv_hyp *h, kvlm_error *err) {
    const int32_t fed = h->eos ? h->n : h->n - 1;
    if (fed <= 0) return KVLM_OK;
    float *row = malloc((size_t)s->model->hp.n_vocab * sizeof *row);
    if (!row) return kv_fail(err, KVLM_ERR_NOMEM, "generate: out of memory");
    kvlm_status st = kv_session_append_locked(s, h->tokens, fed, row, false, err);
    free(row);
    return st;
}

void kv_hyps_free(kv_hyp *h, int32_t n) {
    for (int32_t i = 0; h && i < n; i++) free(h[i].tokens);
}
