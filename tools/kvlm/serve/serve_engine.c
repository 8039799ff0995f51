/* kvlm serve: the engine. One scheduler thread owns every session (one per
 * slot, all on one shared kvlm_cache). Each step it: drops cancelled and
 * timed-out sequences, admits waiting requests into free slots, evaluates
 * one prompt chunk of the oldest sequence still prefilling, and decodes one
 * token for every running sequence in a single kvlm_decode_batch call. Each
 * sequence has its own sampler and text stream, so what it generates does not
 * depend on what else runs (the logits are batch-invariant). */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serve.h"

double srv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static const double k_buckets[SRV_NBUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

static void hist_add(srv_hist *h, double v) {
    int i = 0;
    while (i < SRV_NBUCKETS && v > k_buckets[i]) i++;
    h->count[i]++;
    h->sum += v;
    h->n++;
}

static int finish_index(const char *f) {
    static const char *names[] = {"stop", "length", "cancelled", "timeout", "error"};
    for (int i = 0; i < 5; i++)
        if (strcmp(f, names[i]) == 0) return i;
    return 4;
}

void srv_job_free(srv_job *j) {
    if (!j) return;
    for (int i = 0; i < SRV_MAX_N; i++) {
        kvlm_sampler_free(j->ch[i].smp);
        kvlm_text_stream_free(j->ch[i].ts);
        free(j->ch[i].text);
        free(j->ch[i].toks);
    }
    for (int i = 0; i < j->n_stop; i++) free(j->stop[i]);
    free(j->prompt);
    free(j->bias);
    free(j->echo_text);
    free(j->plp);
    srv_gentry_release(j->grammar);
    free(j);
}

void srv_job_release(srv_engine *e, srv_job *j) {
    (void)e;
    if (--j->refs == 0) srv_job_free(j);
}

/* ------------------------------------------------------------ output (under mu) */

static bool text_append(srv_choice *c, const char *s, size_t n) {
    if (!n) return true;
    if (c->text_len + n + 1 > c->text_cap) {
        size_t cap = c->text_cap ? c->text_cap * 2 : 256;
        while (cap < c->text_len + n + 1) cap *= 2;
        char *p = realloc(c->text, cap);
        if (!p) return false;
        c->text = p;
        c->text_cap = cap;
    }
    memcpy(c->text + c->text_len, s, n);
    c->text_len += n;
    c->text[c->text_len] = '\0';
    return true;
}

static bool tok_append(srv_choice *c, const srv_tok *t) {
    if (c->n_toks == c->cap_toks) {
        int cap = c->cap_toks ? c->cap_toks * 2 : 32;
        srv_tok *p = realloc(c->toks, (size_t)cap * sizeof *p);
        if (!p) return false;
        c->toks = p;
        c->cap_toks = cap;
    }
    c->toks[c->n_toks++] = *t;
    return true;
}

static void job_fail(srv_job *j, int status, const char *msg) {
    if (!j->err_status) {
        j->err_status = status;
        snprintf(j->err_msg, sizeof j->err_msg, "%.500s", msg);
    }
}

/* Ends a job once all its choices are done: metrics, the engine's reference. */
static void job_maybe_done(srv_engine *e, srv_job *j) {
    if (j->state == JOB_DONE || j->n_running > 0) return;
    j->state = JOB_DONE;
    j->t_done = srv_now();
    e->n_active_jobs--;
    const char *f = j->ch[0].finish ? j->ch[0].finish : "error";
    for (int i = 1; i < j->n; i++)
        if (j->ch[i].finish && strcmp(j->ch[i].finish, "stop") && strcmp(j->ch[i].finish, "length"))
            f = j->ch[i].finish;
    e->m.finished[finish_index(f)]++;
    if (strcmp(f, "cancelled") == 0) e->m.cancelled++;
    e->m.duration.sum += 0; /* (kept for symmetry) */
    hist_add(&e->m.duration, j->t_done - j->t_arrive);
    pthread_cond_broadcast(&e->ev);
    srv_job_release(e, j);
}

/* Marks choice c of the slot's job finished and frees the slot. The text
 * stream is flushed first (held-back bytes; an incomplete character becomes
 * U+FFFD) unless a stop string ended it. */
static void slot_finish(srv_engine *e, srv_slot *sl, const char *why) {
    srv_job *j = sl->job;
    srv_choice *c = &j->ch[sl->choice];
    if (!c->done) {
        const char *t;
        size_t n;
        bool stopped;
        if (kvlm_text_stream_push(c->ts, -1, true, &t, &n, &stopped, NULL) == KVLM_OK) text_append(c, t, n);
        c->done = true;
        c->finish = why;
        j->n_running--;
    }
    sl->job = NULL;
    sl->has_pending = false;
    sl->prefilling = false;
    job_maybe_done(e, j);
}

/* ------------------------------------------------------------ admission */

static int32_t lcp(const kvlm_token *a, int32_t na, const kvlm_token *b, int32_t nb) {
    int32_t n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

/* The free slot whose session holds the longest common prefix with the prompt. */
static int pick_slot(srv_engine *e, const srv_job *j) {
    int best = -1;
    int32_t best_l = -1;
    for (int i = 0; i < e->parallel; i++) {
        if (e->slots[i].job) continue;
        int32_t n = kvlm_session_tokens(e->slots[i].s, e->scratch, e->n_ctx);
        if (n > e->n_ctx) n = e->n_ctx;
        int32_t l = lcp(e->scratch, n, j->prompt, j->n_prompt);
        if (l > best_l) {
            best_l = l;
            best = i;
        }
    }
    return best;
}

static int free_slots(const srv_engine *e) {
    int n = 0;
    for (int i = 0; i < e->parallel; i++) n += e->slots[i].job == NULL;
    return n;
}

/* Samplers and text streams for every choice (scheduler thread). */
static bool job_setup(srv_engine *e, srv_job *j) {
    for (int i = 0; i < j->n; i++) {
        srv_choice *c = &j->ch[i];
        kvlm_sampling_params sp = j->sampling;
        sp.seed = j->sampling.seed + (uint64_t)i; /* choice 0 has the request's seed */
        sp.logit_bias = j->bias;
        sp.n_logit_bias = j->n_bias;
        kvlm_error err;
        if (kvlm_sampler_new(&sp, e->n_vocab, &c->smp, &err) != KVLM_OK ||
            kvlm_text_stream_new(e->model, (const char *const *)j->stop, j->n_stop, &c->ts, &err) != KVLM_OK) {
            job_fail(j, 400, err.msg);
            return false;
        }
        /* the penalties see the prompt, as kvlm_generate does */
        for (int32_t k = 0; k < j->n_prompt; k++) kvlm_sampler_accept_history(c->smp, j->prompt[k], NULL);
    }
    return true;
}

static void admit(srv_engine *e) {
    while (e->q_head && !e->draining) {
        srv_job *j = e->q_head;
        if (free_slots(e) < j->n) break;
        e->q_head = j->next;
        if (!e->q_head) e->q_tail = NULL;
        e->n_waiting--;
        j->next = NULL;
        j->state = JOB_ACTIVE;
        e->n_active_jobs++;
        j->n_running = j->n;
        if (!job_setup(e, j)) {
            for (int i = 0; i < j->n; i++) {
                j->ch[i].done = true;
                j->ch[i].finish = "error";
            }
            j->n_running = 0;
            job_maybe_done(e, j);
            continue;
        }
        for (int i = 0; i < j->n; i++) {
            int si = pick_slot(e, j);
            srv_slot *sl = &e->slots[si];
            sl->job = j;
            sl->choice = i;
            sl->prefilling = true;
            sl->done = -1; /* not started */
            sl->has_pending = false;
            sl->order = e->next_order++;
        }
    }
}

/* ------------------------------------------------------------ per-token work (scheduler, no lock) */

typedef struct step_out {
    bool have_tok;
    srv_tok tok;
    const char *text;
    size_t text_len;
    const char *finish; /* NULL: continues */
} step_out;

/* Samples the next token of the slot's sequence from one row of logits. */
static void sample_next(srv_engine *e, srv_slot *sl, const float *row, step_out *o) {
    srv_job *j = sl->job;
    srv_choice *c = &j->ch[sl->choice];
    memset(o, 0, sizeof *o);
    o->text = "";
    kvlm_token t;
    kvlm_error err;
    if (kvlm_sampler_sample(c->smp, row, &t, &err) != KVLM_OK) {
        o->finish = "error";
        return;
    }
    kvlm_sampler_accept(c->smp, t, NULL);
    if (kvlm_token_is_eog(e->model, t)) {
        o->finish = "stop";
        return;
    }
    o->have_tok = true;
    o->tok.id = t;
    if (j->logprobs >= 0) {
        o->tok.n_top = j->logprobs;
        if (kvlm_logprobs(row, e->n_vocab, t, &o->tok.logprob, j->logprobs, o->tok.top_id, o->tok.top_lp, &err))
            o->tok.n_top = 0;
    }
    bool stopped = false;
    if (kvlm_text_stream_push(c->ts, t, false, &o->text, &o->text_len, &stopped, &err) != KVLM_OK) {
        o->finish = "error";
        return;
    }
    if (stopped) {
        o->finish = "stop";
        return;
    }
    if (j->sampling.grammar && !kvlm_sampler_grammar_can_continue(c->smp)) { /* the grammar is finished */
        o->finish = "stop";
        return;
    }
    int n_gen = c->n_gen + 1;
    if (n_gen >= j->max_tokens) o->finish = "length";
    else if (kvlm_session_n_past(sl->s) + 1 > e->n_ctx) o->finish = "length";
    else {
        sl->has_pending = true;
        sl->pending = t;
    }
}

/* Counts a generated token in its quarter second (under mu). */
static void rate_add(srv_metrics *m, double now) {
    const int64_t q = (int64_t)floor(now * 4);
    const int i = (int)(q % SRV_RATE_SLOTS);
    if (m->rate_q[i] != q) {
        m->rate_q[i] = q;
        m->rate_n[i] = 0;
    }
    m->rate_n[i]++;
}

/* Tokens generated per second over the last 2 s. */
static double rate_per_s(const srv_metrics *m, double now) {
    const int64_t q = (int64_t)floor(now * 4);
    uint64_t n = 0;
    for (int i = 0; i < SRV_RATE_SLOTS; i++)
        if (m->rate_q[i] > q - SRV_RATE_SLOTS && m->rate_q[i] <= q) n += m->rate_n[i];
    return (double)n / (SRV_RATE_SLOTS / 4.0);
}

/* Publishes a step's result (under mu). */
static void publish(srv_engine *e, srv_slot *sl, const step_out *o) {
    srv_job *j = sl->job;
    srv_choice *c = &j->ch[sl->choice];
    if (o->have_tok) {
        c->n_gen++;
        e->m.gen_tokens++;
        rate_add(&e->m, srv_now());
        if (!tok_append(c, &o->tok) || !text_append(c, o->text, o->text_len)) {
            job_fail(j, 500, "out of memory");
            slot_finish(e, sl, "error");
            return;
        }
        if (j->t_first == 0) {
            j->t_first = srv_now();
            hist_add(&e->m.ttft, j->t_first - j->t_arrive);
        }
    }
    if (o->finish) {
        if (strcmp(o->finish, "error") == 0) job_fail(j, 500, "sampling failed");
        if (j->t_first == 0) {
            j->t_first = srv_now();
            hist_add(&e->m.ttft, j->t_first - j->t_arrive);
        }
        slot_finish(e, sl, o->finish);
    }
}

/* One prompt chunk of a prefilling slot. Returns with the lock NOT held. */
static void prefill_chunk(srv_engine *e, srv_slot *sl, float *row, step_out *o, int *job_cached, bool *failed,
                          char *msg, size_t msg_size, int32_t budget, int32_t *used) {
    srv_job *j = sl->job;
    kvlm_error err;
    const int32_t n = j->n_prompt;
    kvlm_kv_stats st;
    int32_t n_past;
    memset(o, 0, sizeof *o);
    *failed = false;
    *job_cached = -1;
    kvlm_session_get_stats(sl->s, &st);
    const int64_t misses_in = st.misses;
    *used = budget; /* unless measured below */
    /* echo with logprobs: choice 0 computes every prompt position (no reuse) for the prompt's logprobs */
    const bool want_rows = j->echo && j->logprobs >= 0 && sl->choice == 0;
    if (sl->done < 0) {
        /* first chunk: keep the common prefix the session holds (one token
         * always computed for the logits), the rest may come from the shared pool */
        int32_t held = kvlm_session_tokens(sl->s, e->scratch, e->n_ctx);
        if (held > e->n_ctx) held = e->n_ctx;
        int32_t l = lcp(e->scratch, held, j->prompt, n);
        if (l > n - 1) l = n - 1;
        /* less than a page in common (often just BOS): start from 0, where the pool's pages can be
         * taken; a session off a page boundary could take none in its first chunk */
        if (e->page_tokens > 1 && l < e->page_tokens) l = 0;
        kvlm_session_get_stats(sl->s, &st);
        sl->misses0 = st.misses;
        n_past = want_rows ? 0 : l;
        if (want_rows) {
            j->plp = calloc((size_t)n, sizeof *j->plp);
            if (!e->rows) e->rows = malloc((size_t)SRV_LP_CHUNK * (size_t)e->n_vocab * sizeof *e->rows);
            if (!j->plp || !e->rows) {
                *failed = true;
                snprintf(msg, msg_size, "out of memory");
                return;
            }
            j->plp[0].id = j->prompt[0];
            j->plp[0].in_prompt = j->plp[0].no_lp = true;
        }
    } else {
        n_past = sl->done;
    }
    if (sl->done < 0) sl->wasted = 0;
    const int32_t P = e->page_tokens;
    bool last = false;
    if (want_rows) {
        int32_t end = n_past + SRV_LP_CHUNK;
        if (end > n) end = n;
        last = end == n;
        if (kvlm_eval(sl->s, j->prompt, end, n_past, e->rows, true, &err) != KVLM_OK) goto eval_failed;
        /* row r (position n_past + r) predicts the prompt's next token */
        for (int32_t p = n_past; p < end; p++) {
            const float *r = e->rows + (size_t)(p - n_past) * (size_t)e->n_vocab;
            if (p + 1 < n) {
                srv_tok *t = &j->plp[p + 1];
                t->id = j->prompt[p + 1];
                t->in_prompt = true;
                t->n_top = j->logprobs;
                if (kvlm_logprobs(r, e->n_vocab, t->id, &t->logprob, j->logprobs, t->top_id, t->top_lp, &err))
                    t->n_top = 0;
            } else {
                memcpy(row, r, (size_t)e->n_vocab * sizeof *row);
            }
        }
        sl->done = end;
    } else {
        /* kvlm_eval takes full pages from the shared pool only below the last token it is given,
         * and only from a page boundary on. So a chunk that does not end the prompt is evaluated
         * one token past a page boundary (every page of the chunk may come from the pool) and
         * that token is dropped again: the session ends on the boundary, where the next chunk can
         * reuse pages too. A chunk that was all reused cost one token, so the step goes on with
         * the next one (at most SRV_ATTACH_CHUNKS of them). */
        const int32_t chunk = budget;
        for (int k = 0;; k++) {
            int32_t target = n_past + chunk;
            if (P > 1 && chunk >= P && target < n) target -= target % P;
            if (target >= n || chunk < P || P <= 1) {
                int32_t end = target < n ? target : n;
                last = end == n;
                if (kvlm_eval(sl->s, j->prompt, end, n_past, last ? row : NULL, false, &err) != KVLM_OK)
                    goto eval_failed;
                sl->done = end;
                break;
            }
            kvlm_session_get_stats(sl->s, &st);
            const int64_t before = st.misses;
            if (kvlm_eval(sl->s, j->prompt, target + 1, n_past, NULL, false, &err) != KVLM_OK ||
                kvlm_session_truncate(sl->s, target, &err) != KVLM_OK)
                goto eval_failed;
            sl->wasted++;
            sl->done = n_past = target;
            kvlm_session_get_stats(sl->s, &st);
            if (st.misses - before > 1 || k + 1 >= SRV_ATTACH_CHUNKS) break; /* real work was done */
        }
    }
    kvlm_session_get_stats(sl->s, &st);
    *used = st.misses - misses_in > 0 ? (int32_t)(st.misses - misses_in) : 1;
    if (last) {
        int64_t computed = st.misses - sl->misses0 - sl->wasted; /* the dropped tokens count once */
        int32_t cached = (int32_t)(n - computed);
        *job_cached = cached < 0 ? 0 : cached; /* >= 0: the prompt is read (the caller clears
                                                  sl->prefilling under the lock, /metrics reads it) */
        memset(o, 0, sizeof *o);
        o->text = "";
        if (j->max_tokens == 0) o->finish = "length"; /* echo of the prompt alone */
        else sample_next(e, sl, row, o);
    }
    return;
eval_failed:
    *failed = true;
    snprintf(msg, msg_size, "prompt evaluation failed: %.400s", err.msg);
}

/* Echo: the prompt's text (and its logprobs) start the choice (under mu, before its first token). */
static bool echo_into(srv_job *j, srv_choice *c) {
    if (!j->echo) return true;
    if (!text_append(c, j->echo_text, j->echo_len)) return false;
    if (j->plp)
        for (int32_t i = 0; i < j->n_prompt; i++)
            if (!tok_append(c, &j->plp[i])) return false;
    return true;
}

/* Deadlines and cancellations (under mu). */
static void reap(srv_engine *e, double now) {
    /* queued */
    srv_job **pp = &e->q_head, *prev = NULL;
    while (*pp) {
        srv_job *j = *pp;
        const bool gone = j->cancel || e->draining || (j->deadline > 0 && now > j->deadline);
        if (!gone) {
            prev = j;
            pp = &j->next;
            continue;
        }
        *pp = j->next;
        if (e->q_tail == j) e->q_tail = prev;
        e->n_waiting--;
        const char *why = j->cancel ? "cancelled" : e->draining ? "cancelled" : "timeout";
        if (e->draining && !j->cancel) job_fail(j, 503, "the server is shutting down");
        for (int i = 0; i < j->n; i++) {
            j->ch[i].done = true;
            j->ch[i].finish = why;
        }
        j->n_running = 0;
        j->state = JOB_ACTIVE;
        e->n_active_jobs++;
        job_maybe_done(e, j);
    }
    /* running */
    const bool drain_over = e->draining && now > e->drain_deadline;
    for (int i = 0; i < e->parallel; i++) {
        srv_slot *sl = &e->slots[i];
        if (!sl->job) continue;
        srv_job *j = sl->job;
        if (j->cancel || drain_over) slot_finish(e, sl, "cancelled");
        else if (j->deadline > 0 && now > j->deadline) slot_finish(e, sl, "timeout");
    }
}

static void snapshot_kv(srv_engine *e) {
    kvlm_kv_stats st;
    kvlm_cache_get_stats(e->cache, &st);
    pthread_mutex_lock(&e->mu);
    e->m.kv = st;
    pthread_mutex_unlock(&e->mu);
}

static void *scheduler(void *arg) {
    srv_engine *e = arg;
    const int P = e->parallel;
    kvlm_session **bs = calloc((size_t)P, sizeof *bs);
    kvlm_token *bt = calloc((size_t)P, sizeof *bt);
    int *bi = calloc((size_t)P, sizeof *bi);
    step_out *outs = calloc((size_t)P, sizeof *outs);
    float *prow = malloc((size_t)e->n_vocab * sizeof *prow);
    /* the prefills of a step */
    int *pfi = calloc((size_t)P, sizeof *pfi), *pf_cached = calloc((size_t)P, sizeof *pf_cached);
    bool *pf_failed = calloc((size_t)P, sizeof *pf_failed);
    step_out *pf_out = calloc((size_t)P, sizeof *pf_out);
    char *pf_msg = calloc((size_t)P, 512);
    if (!bs || !bt || !bi || !outs || !prow || !pfi || !pf_cached || !pf_failed || !pf_out || !pf_msg) {
        fprintf(stderr, "kvlm serve: scheduler out of memory\n");
        abort();
    }
    pthread_mutex_lock(&e->mu);
    for (;;) {
        const double now = srv_now();
        reap(e, now);
        admit(e);
        int active = 0;
        for (int i = 0; i < P; i++) active += e->slots[i].job != NULL;
        if (!active) {
            if (e->stop && !e->q_head) break;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 50 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&e->wake, &e->mu, &ts);
            continue;
        }
        /* the work of this step: prompt chunks of the prefilling slots, oldest first, up to
         * --prefill-chunk computed tokens in all (so several short prompts, or the uncached rest
         * of prompts whose prefix is cached, are read in one step), and one token for every slot
         * with a token to feed */
        int npf = 0, nb = 0;
        for (int i = 0; i < P; i++) {
            srv_slot *sl = &e->slots[i];
            if (!sl->job) continue;
            if (sl->prefilling) {
                int k = npf++;
                while (k > 0 && e->slots[pfi[k - 1]].order > sl->order) {
                    pfi[k] = pfi[k - 1];
                    k--;
                }
                pfi[k] = i;
            } else if (sl->has_pending) {
                bs[nb] = sl->s;
                bt[nb] = sl->pending;
                bi[nb] = i;
                nb++;
            }
        }
        pthread_mutex_unlock(&e->mu);

        /* prefill */
        int32_t budget = e->cfg->prefill_chunk;
        int done_pf = 0;
        /* a later sequence starts only with at least a page of budget left: a chunk shorter than
         * a page could reuse nothing from the pool and would leave the session off a page boundary */
        const int32_t min_start = e->page_tokens > 1 ? e->page_tokens : 1;
        while (done_pf < npf && budget > 0 && (done_pf == 0 || budget >= min_start)) {
            const int k = done_pf++;
            int32_t used = 0;
            pf_msg[(size_t)k * 512] = '\0';
            prefill_chunk(e, &e->slots[pfi[k]], prow, &pf_out[k], &pf_cached[k], &pf_failed[k],
                          pf_msg + (size_t)k * 512, 512, budget, &used);
            budget -= used;
        }
        /* decode one token for every running sequence */
        kvlm_status drc = KVLM_OK;
        kvlm_error derr;
        if (nb > 0) {
            for (int k = 0; k < nb; k++) e->slots[bi[k]].has_pending = false;
            drc = kvlm_decode_batch(bs, bt, nb, e->logits, &derr);
            if (drc == KVLM_OK)
                for (int k = 0; k < nb; k++)
                    sample_next(e, &e->slots[bi[k]], e->logits + (size_t)k * (size_t)e->n_vocab, &outs[k]);
        }
        snapshot_kv(e);

        pthread_mutex_lock(&e->mu);
        for (int k = 0; k < done_pf; k++) {
            srv_slot *sl = &e->slots[pfi[k]];
            srv_job *j = sl->job;
            if (!j) continue;
            if (pf_failed[k]) {
                job_fail(j, 500, pf_msg + (size_t)k * 512);
                slot_finish(e, sl, "error");
            } else if (pf_cached[k] >= 0) {
                sl->prefilling = false;
                if (sl->choice == 0) {
                    j->n_cached = pf_cached[k];
                    e->m.prompt_tokens += (uint64_t)j->n_prompt;
                    e->m.prompt_cached += (uint64_t)pf_cached[k];
                }
                /* every sequence looks its prompt up (the choices of n > 1 too) */
                e->m.prefix_queries += (uint64_t)j->n_prompt;
                e->m.prefix_hits += (uint64_t)pf_cached[k];
                if (!echo_into(j, &j->ch[sl->choice])) {
                    job_fail(j, 500, "out of memory");
                    slot_finish(e, sl, "error");
                } else {
                    publish(e, sl, &pf_out[k]);
                }
            }
        }
        if (nb > 0) {
            e->m.decode_steps++;
            e->m.decode_seqs += (uint64_t)nb;
            for (int k = 0; k < nb; k++) {
                srv_slot *sl = &e->slots[bi[k]];
                if (!sl->job) continue;
                if (drc != KVLM_OK) {
                    char m[512];
                    snprintf(m, sizeof m, "decoding failed: %.400s", derr.msg);
                    job_fail(sl->job, 500, m);
                    slot_finish(e, sl, "error");
                } else {
                    publish(e, sl, &outs[k]);
                }
            }
        }
        pthread_cond_broadcast(&e->ev);
    }
    pthread_mutex_unlock(&e->mu);
    free(bs);
    free(bt);
    free(bi);
    free(outs);
    free(prow);
    free(pfi);
    free(pf_cached);
    free(pf_failed);
    free(pf_out);
    free(pf_msg);
    return NULL;
}

/* ------------------------------------------------------------ lifecycle */

int srv_engine_start(srv_engine *e, const srv_config *cfg, kvlm_model *model, char *msg, size_t msg_size) {
    memset(e, 0, sizeof *e);
    e->cfg = cfg;
    e->model = model;
    e->parallel = cfg->parallel;
    e->n_vocab = kvlm_n_vocab(model);
    e->next_id = 1;
    e->seed_counter = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull;
    if (!(e->gcache = srv_gcache_new(SRV_GRAMMAR_CACHE))) {
        snprintf(msg, msg_size, "out of memory");
        return -1;
    }
    kvlm_error err;
    kvlm_session_params sp = cfg->sp;
    if (kvlm_cache_new(model, &sp.cache_params, &e->cache, &err) != KVLM_OK) {
        snprintf(msg, msg_size, "cannot create the KV cache: %s", err.msg);
        return -1;
    }
    sp.cache = e->cache;
    e->page_tokens = sp.cache_params.prefix_sharing ? sp.cache_params.page_tokens : 0;
    e->slots = calloc((size_t)e->parallel, sizeof *e->slots);
    if (!e->slots) {
        snprintf(msg, msg_size, "out of memory");
        return -1;
    }
    for (int i = 0; i < e->parallel; i++) {
        if (kvlm_session_new(model, &sp, &e->slots[i].s, &err) != KVLM_OK) {
            snprintf(msg, msg_size, "cannot create session %d: %s", i, err.msg);
            return -1;
        }
    }
    e->n_ctx = kvlm_session_n_ctx(e->slots[0].s);
    e->n_threads = kvlm_session_n_threads(e->slots[0].s);
    e->logits = malloc((size_t)e->parallel * (size_t)e->n_vocab * sizeof *e->logits);
    e->scratch = malloc(((size_t)e->n_ctx + 1) * sizeof *e->scratch);
    if (!e->logits || !e->scratch) {
        snprintf(msg, msg_size, "out of memory");
        return -1;
    }
    kvlm_cache_get_stats(e->cache, &e->m.kv);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->wake, NULL);
    pthread_cond_init(&e->ev, NULL);
    if (pthread_create(&e->thr, NULL, scheduler, e) != 0) {
        snprintf(msg, msg_size, "cannot start the scheduler thread");
        return -1;
    }
    e->thr_started = true;
    return 0;
}

bool srv_engine_submit(srv_engine *e, srv_job *j) {
    pthread_mutex_lock(&e->mu);
    /* --queue counts requests waiting beyond the free slots */
    if (e->draining || e->stop || e->n_waiting >= e->cfg->queue + free_slots(e)) {
        e->m.finished[5]++;
        pthread_mutex_unlock(&e->mu);
        return false;
    }
    j->id = e->next_id++;
    if (!j->seed_set) j->sampling.seed = (e->seed_counter += 0x9E3779B97F4A7C15ull);
    j->refs = 2;
    j->state = JOB_QUEUED;
    j->t_arrive = srv_now();
    if (e->cfg->timeout_s > 0) j->deadline = j->t_arrive + e->cfg->timeout_s;
    j->next = NULL;
    if (e->q_tail) e->q_tail->next = j;
    else e->q_head = j;
    e->q_tail = j;
    e->n_waiting++;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->mu);
    return true;
}

void srv_engine_drain(srv_engine *e, double grace_s) {
    pthread_mutex_lock(&e->mu);
    e->draining = true;
    e->drain_deadline = srv_now() + grace_s;
    pthread_cond_signal(&e->wake);
    while (e->n_active_jobs > 0 || e->q_head) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&e->ev, &e->mu, &ts);
    }
    pthread_mutex_unlock(&e->mu);
}

void srv_engine_stop(srv_engine *e) {
    if (e->thr_started) {
        pthread_mutex_lock(&e->mu);
        e->stop = true;
        e->draining = true;
        pthread_cond_signal(&e->wake);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thr, NULL);
        pthread_mutex_destroy(&e->mu);
        pthread_cond_destroy(&e->wake);
        pthread_cond_destroy(&e->ev);
    }
    if (e->slots)
        for (int i = 0; i < e->parallel; i++) kvlm_session_free(e->slots[i].s);
    free(e->slots);
    free(e->logits);
    free(e->rows);
    free(e->scratch);
    kvlm_cache_free(e->cache);
    srv_gcache_free(e->gcache);
    e->gcache = NULL;
    memset(e, 0, sizeof *e);
}

/* ------------------------------------------------------------ metrics */

typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#include <stdarg.h>
static void sb_printf(sbuf *b, const char *fmt, ...) {
    if (!b->p && b->cap == (size_t)-1) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) return;
        if (b->p && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->n + (size_t)k + 1) cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            free(b->p);
            b->p = NULL;
            b->cap = (size_t)-1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

static void hist_text(sbuf *b, const char *name, const char *help, const srv_hist *h) {
    sb_printf(b, "# HELP kvlm:%s %s\n# TYPE kvlm:%s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < SRV_NBUCKETS; i++) {
        cum += h->count[i];
        sb_printf(b, "kvlm:%s_bucket{le=\"%g\"} %llu\n", name, k_buckets[i], (unsigned long long)cum);
    }
    cum += h->count[SRV_NBUCKETS];
    sb_printf(b, "kvlm:%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    sb_printf(b, "kvlm:%s_sum %.6f\nkvlm:%s_count %llu\n", name, h->sum, name, (unsigned long long)h->n);
}

static void counter(sbuf *b, const char *name, const char *help, uint64_t v) {
    sb_printf(b, "# HELP kvlm:%s %s\n# TYPE kvlm:%s counter\nkvlm:%s %llu\n", name, help, name, name,
              (unsigned long long)v);
}

static void gauge(sbuf *b, const char *name, const char *help, double v) {
    sb_printf(b, "# HELP kvlm:%s %s\n# TYPE kvlm:%s gauge\nkvlm:%s %.17g\n", name, help, name, name, v);
}

/* The counters and the slots' state at one moment (under the engine's lock). */
static void snapshot(srv_engine *e, srv_metrics *m, int *running, int *prefilling, int *waiting) {
    pthread_mutex_lock(&e->mu);
    *m = e->m;
    *running = *prefilling = 0;
    for (int i = 0; i < e->parallel; i++) {
        *running += e->slots[i].job != NULL;
        *prefilling += e->slots[i].job != NULL && e->slots[i].prefilling;
    }
    *waiting = e->n_waiting;
    pthread_mutex_unlock(&e->mu);
}

char *srv_metrics_text(srv_engine *e) {
    srv_metrics m;
    int running, prefilling, waiting;
    snapshot(e, &m, &running, &prefilling, &waiting);
    sbuf b = {0};
    gauge(&b, "requests_running", "Sequences in a slot (prefilling or decoding).", running);
    gauge(&b, "requests_prefilling", "Sequences of those still reading their prompt.", prefilling);
    gauge(&b, "requests_waiting", "Requests in the wait queue.", waiting);
    static const char *fr[] = {"stop", "length", "cancelled", "timeout", "error", "rejected"};
    sb_printf(&b, "# HELP kvlm:requests_total Finished requests by finish reason.\n"
                  "# TYPE kvlm:requests_total counter\n");
    for (int i = 0; i < 6; i++)
        sb_printf(&b, "kvlm:requests_total{finish_reason=\"%s\"} %llu\n", fr[i], (unsigned long long)m.finished[i]);
    counter(&b, "prompt_tokens_total", "Prompt tokens of admitted requests.", m.prompt_tokens);
    counter(&b, "prompt_tokens_cached_total", "Prompt tokens reused from the prefix cache.", m.prompt_cached);
    counter(&b, "generation_tokens_total", "Tokens generated.", m.gen_tokens);
    hist_text(&b, "time_to_first_token_seconds", "Arrival to first generated token.", &m.ttft);
    hist_text(&b, "request_duration_seconds", "Arrival to the end of generation.", &m.duration);
    gauge(&b, "kv_cache_usage_ratio", "Pages in use / pages allocated.", m.kv.utilization);
    gauge(&b, "kv_cache_tokens", "Tokens stored in the KV cache.", (double)m.kv.tokens);
    gauge(&b, "kv_cache_capacity_tokens", "Tokens the pool holds without growing.", (double)m.kv.capacity);
    gauge(&b, "kv_cache_bytes", "K/V bytes allocated.", (double)m.kv.bytes);
    counter(&b, "prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache (every sequence).",
            m.prefix_queries);
    counter(&b, "prefix_cache_hits_total", "Prompt tokens found in the prefix cache (every sequence).", m.prefix_hits);
    counter(&b, "kv_evictions_total", "Cached pages evicted.", (uint64_t)m.kv.evictions);
    counter(&b, "kv_disk_hits_total", "Pages read back from the disk tier instead of computed.", (uint64_t)m.kv.disk_hits);
    gauge(&b, "kv_disk_bytes", "Bytes of page files in the disk tier.", (double)m.kv.disk_bytes);
    counter(&b, "kv_disk_writes_total", "Pages written to the disk tier.", (uint64_t)m.kv.disk_writes);
    counter(&b, "kv_disk_evictions_total", "Page files removed to stay within the disk budget.",
            (uint64_t)m.kv.disk_evictions);
    counter(&b, "kv_disk_rejected_total", "Page files that did not verify (removed).", (uint64_t)m.kv.disk_rejected);
    counter(&b, "kv_compressions_total", "Pages re-quantized by tiered compression.", (uint64_t)m.kv.compressions);
    counter(&b, "kv_growth_events_total", "Times the page pool grew.", (uint64_t)m.kv.growth_events);
    counter(&b, "cancelled_total", "Requests cancelled (client gone, or shutdown).", m.cancelled);
    counter(&b, "decode_steps_total", "Batched decode steps.", m.decode_steps);
    counter(&b, "decode_sequences_total", "Sequences decoded, summed over steps.", m.decode_seqs);
    int gn = 0;
    uint64_t gh = 0, gm = 0;
    srv_gcache_stats(e->gcache, &gn, &gh, &gm);
    gauge(&b, "grammar_cache_entries", "Compiled grammars kept (response_format, json_schema, grammar).", (double)gn);
    counter(&b, "grammar_cache_hits_total", "Requests whose grammar was already compiled.", gh);
    counter(&b, "grammar_cache_misses_total", "Requests whose grammar was compiled for them.", gm);
    return b.p;
}

char *srv_kv_json(srv_engine *e) {
    srv_metrics m;
    int running, prefilling, waiting;
    snapshot(e, &m, &running, &prefilling, &waiting);
    const kvlm_kv_stats *k = &m.kv;
    const double hit_rate = m.prefix_queries ? (double)m.prefix_hits / (double)m.prefix_queries : 0.0;
    sbuf b = {0};
    sb_printf(&b,
              "{\"tokens\":%lld,\"capacity\":%lld,\"utilization\":%.6g,\"bytes\":%lld,"
              "\"bytes_f32_equivalent\":%lld,"
              "\"bytes_by_type\":{\"f32\":%lld,\"f16\":%lld,\"q8_0\":%lld,\"q4_0\":%lld},"
              "\"page_tokens\":%d,\"n_ctx\":%d,\"parallel\":%d,",
              (long long)k->tokens, (long long)k->capacity, k->utilization, (long long)k->bytes,
              (long long)k->bytes_f32_equivalent, (long long)k->bytes_by_type[0], (long long)k->bytes_by_type[1],
              (long long)k->bytes_by_type[2], (long long)k->bytes_by_type[3], (int)e->page_tokens, (int)e->n_ctx,
              e->parallel);
    sb_printf(&b,
              "\"prefix_lookups\":%llu,\"prefix_hits\":%llu,\"prefix_hit_rate\":%.6g,"
              "\"prompt_tokens\":%llu,\"prompt_tokens_cached\":%llu,\"generation_tokens\":%llu,",
              (unsigned long long)m.prefix_queries, (unsigned long long)m.prefix_hits, hit_rate,
              (unsigned long long)m.prompt_tokens, (unsigned long long)m.prompt_cached,
              (unsigned long long)m.gen_tokens);
    sb_printf(&b,
              "\"pages_shared\":%lld,\"pages_cached\":%lld,\"evictions\":%lld,\"compressions\":%lld,"
              "\"bytes_saved\":%lld,\"growth_events\":%lld,",
              (long long)k->pages_shared, (long long)k->pages_cached, (long long)k->evictions,
              (long long)k->compressions, (long long)k->bytes_saved, (long long)k->growth_events);
    sb_printf(&b,
              "\"requests_running\":%d,\"requests_prefilling\":%d,\"requests_waiting\":%d,"
              "\"cancelled\":%llu,\"tokens_per_second\":%.6g,\"ttft_mean_s\":%.6g,\"ttft_requests\":%llu}",
              running, prefilling, waiting, (unsigned long long)m.cancelled, rate_per_s(&m, srv_now()),
              m.ttft.n ? m.ttft.sum / (double)m.ttft.n : 0.0, (unsigned long long)m.ttft.n);
    return b.p;
}
