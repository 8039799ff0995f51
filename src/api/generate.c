/* kvlm_generate: prompt evaluation, sampling loop, streaming text with
 * UTF-8 hold-back and stop strings, cancellation and deadlines. */
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/error.h"
#include "draft.h"
#include "sampler/sampler.h"
#include "session_impl.h"
#include "textstream.h"
#include "tokenizer/vocab.h"

#define PROMPT_CHUNK 256
/* The most tokens drafted per step (and the longest prompt-lookup n-gram). */
#define KV_DRAFT_MAX 64

const char *kvlm_finish_reason_name(kvlm_finish_reason r) {
    switch (r) {
    case KVLM_FINISH_STOP: return "stop";
    case KVLM_FINISH_LENGTH: return "length";
    case KVLM_FINISH_CANCELLED: return "cancelled";
    case KVLM_FINISH_DEADLINE: return "deadline";
    case KVLM_FINISH_ERROR: return "error";
    }
    return "unknown";
}

kvlm_generate_params kvlm_generate_default_params(void) {
    kvlm_generate_params p;
    memset(&p, 0, sizeof p);
    p.sampling = kvlm_sampling_default_params();
    p.max_tokens = 128;
    p.parse_special = true;
    p.draft_ngram = 3;
    return p;
}

void kvlm_generate_result_free(kvlm_generate_result *r) {
    if (!r) return;
    free(r->text);
    free(r->tokens);
    r->text = NULL;
    r->tokens = NULL;
}

void kvlm_session_cancel(kvlm_session *s) {
    if (s) atomic_store(&s->cancel, 1);
}

/* ------------------------------------------------------------ generation */

static kvlm_status fill_result(kvlm_generate_result *r, kv_stream *st, kvlm_token *gen, int32_t n_gen,
                               kvlm_finish_reason fin, kvlm_error *err) {
    r->finish = fin;
    r->n_completion = n_gen;
    if (!st->emitted.data && !kv_buf_add_z(&st->emitted, "", 0)) {
        free(gen); /* after an error the result holds nothing to free (kvlm.h) */
        return kv_fail(err, KVLM_ERR_NOMEM, "generate: out of memory");
    }
    r->tokens = gen;
    r->text = st->emitted.data;
    r->text_len = st->emitted.n;
    st->emitted.data = NULL;
    return KVLM_OK;
}

/* Rolls back the last n_unverified drafted tokens the session consumed. */
static kvlm_status drop_drafts(kvlm_session *s, int32_t n_unverified, kvlm_error *err) {
    const int32_t n = s->n_consumed - n_unverified;
    kvlm_status st = kv_seq_rollback(&s->seq, s->n_consumed, n, err);
    if (st == KVLM_OK) s->n_consumed = n;
    return st;
}

static kvlm_status generate_locked(kvlm_session *s, const char *prompt, const kvlm_generate_params *gp,
                                   kvlm_token_callback cb, void *ud, kvlm_generate_result *res, kvlm_error *err) {
    const kvlm_model *m = s->model;
    const kv_vocab *v = m->vocab;
    const int32_t n_vocab = m->hp.n_vocab, n_ctx = kv_seq_n_ctx(&s->seq);
    const double t0 = kv_now_s();
    const double deadline = gp->timeout_s > 0 ? t0 + gp->timeout_s : 0;
    kvlm_status st = KVLM_OK;
    kvlm_token *ctx = NULL, *gen = NULL;
    float *logits = NULL;
    kv_sampler *smp = NULL;
    kv_stream str = {.stop = gp->stop, .n_stop = gp->n_stop};
    for (int32_t i = 0; i < gp->n_stop; i++)
        if (!gp->stop[i] || !gp->stop[i][0])
            return kv_fail(err, KVLM_ERR_INVALID_ARG, "generate: stop string %d is empty", i);

    /* the token context: history + prompt (append) or the prompt alone */
    const size_t plen = strlen(prompt);
    const bool append = gp->append;
    int32_t n_hist = append ? kv_seq_n(&s->seq) : 0;
    if (append && !kv_session_rewindable(s)) n_hist = 0; /* shifted: continue from what it holds */
    if (plen > (size_t)INT32_MAX / 2) return kv_fail(err, KVLM_ERR_INVALID_ARG, "generate: the prompt is too long");
    const int32_t K = gp->draft_max > 0 ? gp->draft_max : 0;
    if (gp->draft_max < 0 || gp->draft_max > KV_DRAFT_MAX)
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "generate: draft_max %d is outside 0..%d", gp->draft_max,
                       KV_DRAFT_MAX);
    if (K && !gp->draft && (gp->draft_ngram < 1 || gp->draft_ngram > KV_DRAFT_MAX))
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "generate: draft_ngram %d is outside 1..%d", gp->draft_ngram,
                       KV_DRAFT_MAX);
    if (K && gp->draft == s)
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "generate: the draft session is the session itself");
    if (K && gp->draft && (st = kv_draft_check_vocab(m, gp->draft->model, err))) return st;
    int32_t cap = n_hist + (int32_t)plen + 8;
    int32_t max_gen = gp->max_tokens < 0 ? n_ctx : gp->max_tokens;
    ctx = malloc(((size_t)cap + (size_t)max_gen + 1) * sizeof *ctx);
    gen = malloc(((size_t)max_gen + 1) * sizeof *gen);
    logits = malloc((size_t)n_vocab * (size_t)(K + 1) * sizeof *logits);
    if (!ctx || !gen || !logits) {
        st = kv_fail(err, KVLM_ERR_NOMEM, "generate: out of memory");
        goto fail;
    }
    if (n_hist) kvlm_session_tokens(s, ctx, n_hist);
    int32_t np = kv_vocab_tokenize(v, prompt, plen, ctx + n_hist, cap - n_hist, !append, gp->parse_special);
    if (np < 0) {
        st = kv_fail(err, KVLM_ERR_CONTEXT_FULL, "generate: the prompt has %d tokens, more than the context of %d",
                     -np, n_ctx);
        goto fail;
    }
    int32_t n = n_hist + np;
    res->n_prompt = n;
    if (n == 0) {
        st = kv_fail(err, KVLM_ERR_INVALID_ARG, "generate: empty prompt and empty session");
        goto fail;
    }
    if (!kv_seq_fits(&s->seq, n)) {
        st = kv_fail(err, KVLM_ERR_CONTEXT_FULL, "generate: the prompt has %d tokens, more than the context of %d", n,
                     n_ctx);
        goto fail;
    }
    if ((st = kv_sampler_new(&gp->sampling, n_vocab, &smp, err))) goto fail;
    /* the penalties see the context, as llama.cpp's CLI does */
    for (int32_t i = 0; i < n; i++) kv_sampler_accept(smp, ctx[i], NULL);

    /* prompt: reuse what the session holds, evaluate the rest in chunks (cancellable) */
    kvlm_finish_reason fin = KVLM_FINISH_LENGTH;
    const int64_t misses_before = kv_seq_misses(&s->seq);
    int32_t done;
    bool counted = false;
    if (!append && !kv_session_rewindable(s)) {
        /* shifted, or a ring: go back to the longest part of the history that the new context repeats
           and the cache still holds (the whole history is compared, the dropped part by its hash);
           from there the context is appended, shifting again as needed */
        int32_t keep;
        if ((st = kv_seq_sync(&s->seq, s->n_consumed, ctx, n, KVLM_AUTO, false, &keep, err))) goto fail;
        s->n_consumed = keep;
        counted = true;
    }
    if (kv_session_rewindable(s)) {
        const int32_t lcp = kv_seq_common_prefix(&s->seq, ctx, n - 1);
        if (!counted) kv_seq_count_hits(&s->seq, lcp);
        done = lcp;
        bool first = true;
        while (!st && (first || done < n)) {
            int32_t end = done + PROMPT_CHUNK < n ? done + PROMPT_CHUNK : n;
            /* the first call rolls back to the common prefix and picks up cached pages */
            st = first ? kv_session_eval_locked(s, ctx, end, done, logits, false, err)
                       : kv_session_append_locked(s, ctx + done, end - done, logits, false, err);
            first = false;
            done = end;
            if (done < n && atomic_load(&s->cancel)) fin = KVLM_FINISH_CANCELLED;
            if (done < n && deadline && kv_now_s() > deadline) fin = KVLM_FINISH_DEADLINE;
            if (fin != KVLM_FINISH_LENGTH) break;
        }
    } else {
        done = append ? n_hist : s->n_consumed;
        while (!st && done < n) {
            int32_t end = done + PROMPT_CHUNK < n ? done + PROMPT_CHUNK : n;
            st = kv_session_append_locked(s, ctx + done, end - done, logits, false, err);
            done = end;
            if (done < n && atomic_load(&s->cancel)) fin = KVLM_FINISH_CANCELLED;
            if (done < n && deadline && kv_now_s() > deadline) fin = KVLM_FINISH_DEADLINE;
            if (fin != KVLM_FINISH_LENGTH) break;
        }
    }
    res->n_prompt_cached = n - (int32_t)(kv_seq_misses(&s->seq) - misses_before);
    if (res->n_prompt_cached < 0) res->n_prompt_cached = 0;
    if (st) goto fail;
    res->prompt_ms = (kv_now_s() - t0) * 1e3;
    const double t1 = kv_now_s();
    int32_t n_gen = 0;
    /* Speculative decoding: a pass over [t, d_1..d_k] leaves row i of `logits` predicting the token
       after d_i; while the sampled tokens equal the drafts the next row is already there. */
    kvlm_token draft[KV_DRAFT_MAX + 1];
    int32_t n_draft = 0, next_draft = 0, k_cur = K;
    const float *row = logits;
    if (done == n && fin == KVLM_FINISH_LENGTH) {
        while (n_gen < max_gen) {
            if (atomic_load(&s->cancel)) {
                fin = KVLM_FINISH_CANCELLED;
                break;
            }
            if (deadline && kv_now_s() > deadline) {
                fin = KVLM_FINISH_DEADLINE;
                break;
            }
            kvlm_token t;
            if ((st = kv_sampler_sample(smp, row, &t, err))) goto fail;
            kv_sampler_accept(smp, t, NULL);
            if (!gp->ignore_eos && kv_vocab_is_eog(v, t)) {
                fin = KVLM_FINISH_STOP;
                break;
            }
            gen[n_gen++] = t;
            char piece[256];
            int32_t pl = kv_vocab_token_to_piece(v, t, piece, sizeof piece, false);
            if (pl < 0) pl = 0;
            int r = kv_stream_push(&str, piece, (size_t)pl, false);
            if (r < 0) {
                st = kv_fail(err, KVLM_ERR_NOMEM, "generate: out of memory");
                goto fail;
            }
            if (cb && cb(str.chunk.data ? str.chunk.data : "", str.chunk.n, t, ud)) {
                fin = KVLM_FINISH_STOP;
                break;
            }
            if (r == 1) {
                fin = KVLM_FINISH_STOP;
                str.pending.n = 0;
                break;
            }
            if (n_gen == max_gen) break;
            /* feed it back */
            ctx[n] = t;
            if (next_draft < n_draft && draft[next_draft] == t) {
                /* drafted and verified: the cache holds it and the next row is computed */
                row = logits + (size_t)(++next_draft) * (size_t)n_vocab;
                res->n_accepted++;
                n++;
                continue;
            }
            if (next_draft < n_draft && (st = drop_drafts(s, n_draft - next_draft, err))) goto fail;
            /* the draft length follows how well drafts do: doubled after a step that kept them all,
               halved after one that kept none (a rejected draft costs a wider pass for nothing) */
            if (n_draft && next_draft == n_draft) k_cur = 2 * k_cur < K ? 2 * k_cur : K;
            else if (n_draft && next_draft == 0) k_cur = k_cur > 1 ? k_cur / 2 : 1;
            n_draft = next_draft = 0;
            if (!kv_seq_fits(&s->seq, (int64_t)kv_seq_n(&s->seq) + 1)) break; /* context full: length */
            /* draft only while the drafts fit without a shift or a ring dropping anything (a dropped
               token cannot be rolled back) */
            int32_t room = kv_session_rewindable(s) ? n_ctx - kv_seq_n(&s->seq) - 1 : 0;
            int32_t k = k_cur < room ? k_cur : room;
            if (k > max_gen - n_gen - 1) k = max_gen - n_gen - 1; /* the last token generated is never fed */
            if (k > 0) {
                if (gp->draft)
                    st = kv_draft_model(gp->draft, ctx, n + 1, draft + 1, k, &n_draft, err);
                else
                    n_draft = kv_draft_lookup(ctx, n + 1, gp->draft_ngram, draft + 1, k);
                if (st) goto fail;
            }
            draft[0] = t;
            st = kv_session_append_locked(s, draft, n_draft + 1, logits, n_draft > 0, err);
            if (st) goto fail;
            res->n_passes++;
            res->n_drafted += n_draft;
            /* draft[1..n_draft] are checked against the next samples */
            memmove(draft, draft + 1, (size_t)n_draft * sizeof *draft);
            row = logits;
            n++;
        }
    }
    /* the cache holds what plain decoding would have evaluated, no unverified drafts */
    if (next_draft < n_draft && (st = drop_drafts(s, n_draft - next_draft, err))) goto fail;
    /* flush what was held back (an incomplete character becomes U+FFFD) */
    if (fin != KVLM_FINISH_STOP || str.pending.n) {
        if (str.pending.n) {
            if (kv_stream_push(&str, "", 0, true) < 0) {
                st = kv_fail(err, KVLM_ERR_NOMEM, "generate: out of memory");
                goto fail;
            }
            if (cb && str.chunk.n) cb(str.chunk.data, str.chunk.n, -1, ud);
        }
    }
    res->generate_ms = (kv_now_s() - t1) * 1e3;
    st = fill_result(res, &str, gen, n_gen, fin, err);
    gen = NULL;
fail:
    free(ctx);
    free(gen);
    free(logits);
    kv_sampler_free(smp);
    free(str.pending.data);
    free(str.emitted.data);
    free(str.chunk.data);
    if (st) res->finish = KVLM_FINISH_ERROR;
    return st;
}

kvlm_status kvlm_generate(kvlm_session *s, const char *prompt, const kvlm_generate_params *params,
                          kvlm_token_callback callback, void *user_data, kvlm_generate_result *result,
                          kvlm_error *err) {
    kv_error_clear(err);
    if (!result) return kv_fail(err, KVLM_ERR_INVALID_ARG, "generate: NULL result");
    memset(result, 0, sizeof *result);
    result->finish = KVLM_FINISH_ERROR;
    if (!s || !prompt) return kv_fail(err, KVLM_ERR_INVALID_ARG, "generate: NULL argument");
    kvlm_generate_params p = params ? *params : kvlm_generate_default_params();
    if (!kv_session_acquire(s)) return kv_fail(err, KVLM_ERR_BUSY, "generate: the session is in use");
    atomic_store(&s->cancel, 0);
    kvlm_status st = generate_locked(s, prompt, &p, callback, user_data, result, err);
    kv_session_release(s);
    return st;
}
