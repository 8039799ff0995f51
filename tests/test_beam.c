/* Beam search (kvlm_generate with n_beams > 1) against a brute-force reference: the same search
 * written plainly here, every hypothesis evaluated from scratch (kvlm_eval_full) at every step, no
 * cache, no forks, no batching. kvlm's logits do not depend on how a sequence was evaluated, so
 * tokens, log-probabilities and scores must agree bit for bit, for every final hypothesis. Also: an
 * exhaustive search over two tokens, what the session holds afterwards, the memory the shared
 * pages save, a shared cache, stop strings, the end of the context, refusals, and the CLI. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kvlm.h"
#include "test_util.h"

#define M_DIR KVLM_MODELS_DIR "/llama/"
#define AIDREAMS M_DIR "aidreams260K-f32.gguf"
#define SYNTH M_DIR "synth15M-q8_0.gguf"
#define TINY M_DIR "llama-2-tiny-random.gguf"
#define KVLM KVLM_BIN_DIR "/kvlm"

#define MAXG 48
#define MAXB 8
#define MAXP 256

/* ------------------------------------------------------------ the reference */

typedef struct rbeam {
    kvlm_token t[MAXG];
    int n;
    double lp;
    char text[MAXG * 64];
    size_t tl;
} rbeam;

typedef struct rhyp {
    kvlm_token t[MAXG + 1];
    int n;
    double lp, score;
    kvlm_finish_reason fin;
    bool eos; /* ended by an end token: every token was fed */
    long order;
} rhyp;

typedef struct rcand {
    double lp;
    int beam;
    kvlm_token tok;
} rcand;

static int rcand_cmp(const void *a, const void *b) {
    const rcand *x = a, *y = b;
    if (x->lp != y->lp) return x->lp > y->lp ? -1 : 1;
    if (x->beam != y->beam) return x->beam < y->beam ? -1 : 1;
    return x->tok < y->tok ? -1 : x->tok > y->tok;
}

static int rhyp_cmp(const void *a, const void *b) {
    const rhyp *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

static double score_of(double lp, int len, float pen) { return lp / pow(len > 1 ? (double)len : 1.0, (double)pen); }

typedef struct ref_out {
    rhyp h[MAXB * 4 + MAXG * MAXB];
    int n;
} ref_out;

/* The last row of logits of prompt + toks, evaluated from scratch. */
static void row_of(kvlm_model *m, const kvlm_token *prompt, int np, const kvlm_token *toks, int n, float *row) {
    kvlm_token all[MAXP + MAXG];
    memcpy(all, prompt, (size_t)np * sizeof *all);
    memcpy(all + np, toks, (size_t)n * sizeof *all);
    kvlm_error err;
    if (kvlm_eval_full(m, all, np + n, row, false, &err) != KVLM_OK) fail_msg("eval_full: %s", err.msg);
}

static bool ends_with_stop(const char *text, size_t len, size_t added, const char *const *stop, int n_stop) {
    if (!added) return false;
    for (int i = 0; i < n_stop; i++) {
        const size_t sl = strlen(stop[i]);
        for (size_t p = 0; p + sl <= len; p++)
            if (p + sl > len - added && memcmp(text + p, stop[i], sl) == 0) return true;
    }
    return false;
}

static void ref_search(kvlm_model *m, const char *prompt, const kvlm_generate_params *gp, int32_t n_ctx, ref_out *out) {
    const int N = gp->n_beams, V = kvlm_n_vocab(m);
    kvlm_token pt[MAXP];
    const int np = kvlm_tokenize(m, prompt, strlen(prompt), pt, MAXP, true, true);
    assert_true(np > 0);
    static rbeam live[MAXB], next[MAXB];
    int n_live = 1;
    memset(&live[0], 0, sizeof live[0]);
    rcand *c = malloc((size_t)MAXB * (size_t)V * sizeof *c);
    float *row = malloc((size_t)V * sizeof *row);
    static rhyp all[MAXB * 4 + MAXG * MAXB];
    int n_all = 0;
    long order = 0;
    bool early = false;
    out->n = 0;
    for (int step = 0; step < gp->max_tokens; step++) {
        int nc = 0;
        for (int b = 0; b < n_live; b++) {
            row_of(m, pt, np, live[b].t, live[b].n, row);
            float mx = row[0];
            for (int t = 1; t < V; t++)
                if (row[t] > mx) mx = row[t];
            double sum = 0.0;
            for (int t = 0; t < V; t++) sum += exp((double)row[t] - (double)mx);
            const double lse = (double)mx + log(sum);
            for (int t = 0; t < V; t++)
                c[nc++] = (rcand){.lp = live[b].lp + ((double)row[t] - lse), .beam = step == 0 ? -1 : b, .tok = t};
        }
        qsort(c, (size_t)nc, sizeof *c, rcand_cmp);
        int n_next = 0;
        for (int r = 0; r < 2 * N && r < nc && n_next < N; r++) {
            const rbeam *par = c[r].beam < 0 ? &live[0] : &live[c[r].beam];
            const kvlm_token t = c[r].tok;
            if (!gp->ignore_eos && kvlm_token_is_eog(m, t)) {
                if (r < N) {
                    rhyp *h = &all[n_all++];
                    memcpy(h->t, par->t, (size_t)par->n * sizeof *h->t);
                    h->n = par->n;
                    h->lp = c[r].lp;
                    h->score = score_of(c[r].lp, par->n + 1, gp->length_penalty);
                    h->fin = KVLM_FINISH_STOP;
                    h->eos = true;
                    h->order = order++;
                }
                continue;
            }
            rbeam *nb = &next[n_next];
            *nb = *par;
            char piece[256];
            int pl = kvlm_token_to_piece(m, t, piece, sizeof piece, false);
            if (pl < 0) pl = 0;
            memcpy(nb->text + nb->tl, piece, (size_t)pl);
            nb->tl += (size_t)pl;
            nb->t[nb->n++] = t;
            nb->lp = c[r].lp;
            if (ends_with_stop(nb->text, nb->tl, (size_t)pl, gp->stop, gp->n_stop)) {
                if (r < N) {
                    rhyp *h = &all[n_all++];
                    memcpy(h->t, nb->t, (size_t)nb->n * sizeof *h->t);
                    h->n = nb->n;
                    h->lp = c[r].lp;
                    h->score = score_of(c[r].lp, nb->n, gp->length_penalty);
                    h->fin = KVLM_FINISH_STOP;
                    h->eos = false;
                    h->order = order++;
                }
                continue;
            }
            n_next++;
        }
        memcpy(live, next, (size_t)n_next * sizeof *live);
        n_live = n_next;
        if (n_live == 0) break;
        if (n_all >= N) {
            qsort(all, (size_t)n_all, sizeof *all, rhyp_cmp);
            n_all = N;
            if (!(score_of(live[0].lp, step + 1, gp->length_penalty) > all[N - 1].score)) {
                early = true;
                break;
            }
        }
        if (step + 1 == gp->max_tokens) break;
        if (np + step + 1 > n_ctx) break; /* this step's feed would make the beams hold prompt + step + 1 tokens */
    }
    if (!early)
        for (int b = 0; b < n_live; b++) {
            rhyp *h = &all[n_all++];
            memcpy(h->t, live[b].t, (size_t)live[b].n * sizeof *h->t);
            h->n = live[b].n;
            h->lp = live[b].lp;
            h->score = score_of(live[b].lp, live[b].n, gp->length_penalty);
            h->fin = KVLM_FINISH_LENGTH;
            h->eos = false;
            h->order = order++;
        }
    qsort(all, (size_t)n_all, sizeof *all, rhyp_cmp);
    out->n = n_all < N ? n_all : N;
    memcpy(out->h, all, (size_t)out->n * sizeof *all);
    free(c);
    free(row);
}

/* ------------------------------------------------------------ comparisons */

static kvlm_session *new_session(kvlm_model *m, int32_t n_ctx, int threads, kvlm_cache *cache) {
    kvlm_session_params sp = kvlm_session_default_params();
    sp.n_ctx = n_ctx;
    sp.n_threads = threads;
    sp.cache = cache;
    return session_with(m, &sp);
}

/* kvlm_generate's beams are the reference's, bit for bit; and the session holds the best as plain
   decoding of its tokens would have left it. */
static void check(kvlm_model *m, const char *prompt, const kvlm_generate_params *gp, int32_t n_ctx, int threads,
                  kvlm_cache *cache) {
    static ref_out ref;
    ref_search(m, prompt, gp, n_ctx, &ref);
    assert_true(ref.n >= 1);
    kvlm_session *s = new_session(m, n_ctx, threads, cache);
    kvlm_generate_params p = *gp;
    p.all_beams = true;
    kvlm_generate_result r;
    kvlm_error err;
    if (kvlm_generate(s, prompt, &p, NULL, NULL, &r, &err) != KVLM_OK) fail_msg("generate: %s", err.msg);
    assert_int_equal(r.n_beams, ref.n);
    for (int i = 0; i < ref.n; i++) {
        const kvlm_beam *b = &r.beams[i];
        const rhyp *h = &ref.h[i];
        if (b->n_tokens != h->n || memcmp(b->tokens, h->t, (size_t)h->n * sizeof *h->t) != 0)
            fail_msg("'%s' N=%d beam %d: %d tokens vs the reference's %d", prompt, gp->n_beams, i, b->n_tokens, h->n);
        assert_true(b->logprob == h->lp);
        assert_true(b->score == h->score);
        assert_int_equal(b->finish, h->fin);
    }
    /* the result is the best hypothesis */
    assert_int_equal(r.n_completion, ref.h[0].n);
    assert_memory_equal(r.tokens, ref.h[0].t, (size_t)ref.h[0].n * sizeof(kvlm_token));
    assert_int_equal(r.text_len, r.beams[0].text_len);
    assert_memory_equal(r.text, r.beams[0].text, r.text_len);
    assert_true(r.logprob == ref.h[0].lp);
    assert_true(r.score == ref.h[0].score);
    /* the session: the prompt and the tokens plain decoding would have fed (all after an end token,
       else all but the last); its next logits are those of that history from scratch */
    const int32_t fed = ref.h[0].eos ? ref.h[0].n : (ref.h[0].n > 0 ? ref.h[0].n - 1 : 0);
    kvlm_token hist[MAXP + MAXG + 1];
    const int32_t nh = kvlm_session_tokens(s, hist, MAXP + MAXG);
    assert_int_equal(nh, kvlm_session_n_past(s));
    assert_int_equal(nh, r.n_prompt + fed);
    assert_memory_equal(hist + r.n_prompt, r.tokens, (size_t)fed * sizeof(kvlm_token));
    if (nh < n_ctx) {
        const int V = kvlm_n_vocab(m);
        float *a = malloc((size_t)V * sizeof *a), *b = malloc((size_t)V * sizeof *b);
        const kvlm_token t = fed < r.n_completion ? r.tokens[fed] : hist[1]; /* the unfed token, or any */
        hist[nh] = t;
        if (kvlm_eval(s, hist, nh + 1, nh, a, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
        if (kvlm_eval_full(m, hist, nh + 1, b, false, &err) != KVLM_OK) fail_msg("eval_full: %s", err.msg);
        assert_memory_equal(a, b, (size_t)V * sizeof *a);
        free(a);
        free(b);
    }
    kvlm_generate_result_free(&r);
    assert_null(r.beams);
    kvlm_session_free(s);
}

static const char *k_prompts[] = {
    "Once upon a time, there was a little",
    "The cat sat on the mat. The dog",
    "one two three four",
};

static kvlm_generate_params beam_params(int N, int max_tokens, float pen) {
    kvlm_generate_params gp = kvlm_generate_default_params();
    gp.n_beams = N;
    gp.max_tokens = max_tokens;
    gp.length_penalty = pen;
    return gp;
}

static void test_reference_aidreams(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    static const int Ns[] = {2, 3, 5};
    static const float pens[] = {1.0f, 0.0f, 0.6f};
    for (int p = 0; p < 3; p++)
        for (int i = 0; i < 3; i++) {
            kvlm_generate_params gp = beam_params(Ns[i], 24, pens[(p + i) % 3]);
            check(m, k_prompts[p], &gp, 128, 1 + (i & 1), NULL);
        }
    kvlm_model_free(m);
}

static void test_reference_synth(void **state) {
    (void)state;
    static const char *models[] = {SYNTH, TINY};
    for (int k = 0; k < 2; k++) {
        kvlm_model *m = load(models[k]);
        for (int p = 0; p < 2; p++) {
            kvlm_generate_params gp = beam_params(p ? 4 : 2, 12, 1.0f);
            check(m, k_prompts[p], &gp, 256, 2, NULL);
        }
        kvlm_model_free(m);
    }
}

/* Up to the context's end: the beams stop there (length), as plain decoding does. */
static void test_context_end(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    kvlm_generate_params gp = beam_params(3, 40, 1.0f);
    gp.ignore_eos = true;
    kvlm_token pt[MAXP];
    const int np = kvlm_tokenize(m, k_prompts[0], strlen(k_prompts[0]), pt, MAXP, true, true);
    check(m, k_prompts[0], &gp, np + 9, 1, NULL);
    kvlm_session *s = new_session(m, np + 9, 1, NULL);
    kvlm_generate_result r;
    kvlm_error err;
    assert_int_equal(kvlm_generate(s, k_prompts[0], &gp, NULL, NULL, &r, &err), KVLM_OK);
    assert_int_equal(r.finish, KVLM_FINISH_LENGTH);
    assert_int_equal(r.n_completion, 10); /* the context holds prompt + 9; the 10th is never fed */
    kvlm_generate_result_free(&r);
    kvlm_session_free(s);
    kvlm_model_free(m);
}

/* Stop strings end a hypothesis like an end token; the text stops before the string. */
static void test_stop_strings(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    /* find a stop string the beams meet: a word of the plain beam result */
    kvlm_generate_params gp = beam_params(3, 24, 1.0f);
    kvlm_session *s = new_session(m, 128, 1, NULL);
    kvlm_generate_result r;
    kvlm_error err;
    assert_int_equal(kvlm_generate(s, k_prompts[0], &gp, NULL, NULL, &r, &err), KVLM_OK);
    assert_true(r.text_len > 8);
    char stop[4];
    memcpy(stop, r.text + r.text_len / 2, 3);
    stop[3] = 0;
    kvlm_generate_result_free(&r);
    kvlm_session_free(s);
    const char *stops[] = {stop};
    gp.stop = stops;
    gp.n_stop = 1;
    check(m, k_prompts[0], &gp, 128, 1, NULL);
    s = new_session(m, 128, 1, NULL);
    assert_int_equal(kvlm_generate(s, k_prompts[0], &gp, NULL, NULL, &r, &err), KVLM_OK);
    assert_null(strstr(r.text, stop));
    kvlm_generate_result_free(&r);
    kvlm_session_free(s);
    kvlm_model_free(m);
}

/* Exhaustive over two tokens (no end token, summed log-probability): the best pair over the whole
   vocabulary is what a beam search finds once its width covers the best pair's first token. */
static void test_exhaustive_two_tokens(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    const int V = kvlm_n_vocab(m);
    float *row = malloc((size_t)V * sizeof *row);
    double *lp1 = malloc((size_t)V * sizeof *lp1);
    int checked = 0;
    for (int p = 0; p < 3; p++) {
        kvlm_token pt[MAXP];
        const int np = kvlm_tokenize(m, k_prompts[p], strlen(k_prompts[p]), pt, MAXP, true, true);
        row_of(m, pt, np, NULL, 0, row);
        float mx = row[0];
        for (int t = 1; t < V; t++)
            if (row[t] > mx) mx = row[t];
        double sum = 0.0;
        for (int t = 0; t < V; t++) sum += exp((double)row[t] - (double)mx);
        double lse = (double)mx + log(sum);
        for (int t = 0; t < V; t++) lp1[t] = 0.0 + ((double)row[t] - lse);
        double best = -INFINITY;
        kvlm_token b1 = -1, b2 = -1;
        for (int t1 = 0; t1 < V; t1++) {
            row_of(m, pt, np, &t1, 1, row);
            mx = row[0];
            for (int t = 1; t < V; t++)
                if (row[t] > mx) mx = row[t];
            sum = 0.0;
            for (int t = 0; t < V; t++) sum += exp((double)row[t] - (double)mx);
            lse = (double)mx + log(sum);
            for (int t2 = 0; t2 < V; t2++) {
                const double l = lp1[t1] + ((double)row[t2] - lse);
                if (l > best) {
                    best = l;
                    b1 = t1;
                    b2 = t2;
                }
            }
        }
        /* the rank of b1 among the first tokens */
        int rank = 0;
        for (int t = 0; t < V; t++)
            if (lp1[t] > lp1[b1] || (lp1[t] == lp1[b1] && t < b1)) rank++;
        const int N = rank + 1 < 2 ? 2 : rank + 1;
        if (N > 64) continue; /* a wider search than the API allows; the next prompt */
        kvlm_generate_params gp = beam_params(N, 2, 0.0f);
        gp.ignore_eos = true;
        kvlm_session *s = new_session(m, 128, 1, NULL);
        kvlm_generate_result r;
        kvlm_error err;
        assert_int_equal(kvlm_generate(s, k_prompts[p], &gp, NULL, NULL, &r, &err), KVLM_OK);
        assert_int_equal(r.n_completion, 2);
        assert_int_equal(r.tokens[0], b1);
        assert_int_equal(r.tokens[1], b2);
        assert_true(r.logprob == best);
        /* and greedy is no better than that */
        kvlm_generate_params g = kvlm_generate_default_params();
        g.max_tokens = 2;
        g.ignore_eos = true;
        kvlm_generate_result gr;
        assert_int_equal(kvlm_generate(s, k_prompts[p], &g, NULL, NULL, &gr, &err), KVLM_OK);
        const kvlm_token gt[2] = {gr.tokens[0], gr.tokens[1]};
        row_of(m, pt, np, gt, 1, row);
        mx = row[0];
        for (int t = 1; t < V; t++)
            if (row[t] > mx) mx = row[t];
        sum = 0.0;
        for (int t = 0; t < V; t++) sum += exp((double)row[t] - (double)mx);
        lse = (double)mx + log(sum);
        assert_true(lp1[gt[0]] + ((double)row[gt[1]] - lse) <= best);
        kvlm_generate_result_free(&gr);
        kvlm_generate_result_free(&r);
        kvlm_session_free(s);
        checked++;
    }
    assert_true(checked >= 2);
    free(row);
    free(lp1);
    kvlm_model_free(m);
}

/* N beams over a long prompt hold its full pages once: the search's K/V bytes at its widest step are
   the distinct pages of the session and the beams, less than N + 1 copies would take. A shared
   cache gives the same beams. */
static void test_memory_and_shared_cache(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    char prompt[2048] = "";
    for (int i = 0; i < 3; i++) strcat(prompt, "The little robot looked at the sky and dreamed of the sea. ");
    kvlm_generate_params gp = beam_params(4, 12, 1.0f);
    gp.ignore_eos = true;
    kvlm_cache_params cp = kvlm_cache_default_params();
    kvlm_cache *cache = NULL;
    kvlm_error err;
    assert_int_equal(kvlm_cache_new(m, &cp, &cache, &err), KVLM_OK);
    check(m, prompt, &gp, 128, 1, NULL);
    check(m, prompt, &gp, 128, 1, cache);
    kvlm_session *s = new_session(m, 128, 1, NULL);
    kvlm_generate_result r;
    assert_int_equal(kvlm_generate(s, prompt, &gp, NULL, NULL, &r, &err), KVLM_OK);
    const int32_t P = cp.page_tokens, np = r.n_prompt;
    assert_true(np > 2 * P);
    assert_true(r.beam_kv_bytes_peak > 0);
    assert_true(r.beam_kv_bytes_peak < r.beam_kv_bytes_unshared);
    /* a page's bytes (F16 K and V: half the F32 equivalent) */
    kvlm_kv_stats st;
    kvlm_session_get_stats(s, &st);
    assert_true(st.tokens > 0);
    const int64_t page_bytes = st.bytes_f32_equivalent / st.tokens / 2 * P;
    /* every beam shares at least the prompt's full pages with the session: that many pages are saved */
    const int64_t saved = r.beam_kv_bytes_unshared - r.beam_kv_bytes_peak;
    assert_true(saved % page_bytes == 0);
    assert_true(saved >= (int64_t)gp.n_beams * (np / P) * page_bytes);
    /* and no more than the beams' whole tables */
    assert_true(r.beam_kv_bytes_peak >= (int64_t)((np + P - 1) / P) * page_bytes);
    kvlm_generate_result_free(&r);
    kvlm_session_free(s);
    kvlm_cache_free(cache);
    kvlm_model_free(m);
}

static void test_refusals(void **state) {
    (void)state;
    kvlm_model *m = load(AIDREAMS);
    kvlm_session *s = new_session(m, 128, 1, NULL);
    kvlm_generate_result r;
    kvlm_error err;
    kvlm_generate_params gp = beam_params(65, 8, 1.0f);
    assert_int_equal(kvlm_generate(s, "hi", &gp, NULL, NULL, &r, &err), KVLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "n_beams"));
    assert_null(r.beams);
    gp = beam_params(-1, 8, 1.0f);
    assert_int_equal(kvlm_generate(s, "hi", &gp, NULL, NULL, &r, &err), KVLM_ERR_INVALID_ARG);
    gp = beam_params(2, 8, NAN);
    assert_int_equal(kvlm_generate(s, "hi", &gp, NULL, NULL, &r, &err), KVLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "length_penalty"));
    gp = beam_params(2, 8, 1.0f);
    gp.draft_max = 4;
    assert_int_equal(kvlm_generate(s, "hi", &gp, NULL, NULL, &r, &err), KVLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "beam"));
    /* max_tokens 0: nothing generated, the session holds the prompt */
    gp = beam_params(3, 0, 1.0f);
    assert_int_equal(kvlm_generate(s, "hi", &gp, NULL, NULL, &r, &err), KVLM_OK);
    assert_int_equal(r.n_completion, 0);
    assert_int_equal(kvlm_session_n_past(s), r.n_prompt);
    kvlm_generate_result_free(&r);
    /* the session works afterwards, and one beam is plain greedy decoding */
    gp = beam_params(1, 8, 1.0f);
    kvlm_generate_result a, b;
    assert_int_equal(kvlm_generate(s, k_prompts[0], &gp, NULL, NULL, &a, &err), KVLM_OK);
    kvlm_generate_params g = kvlm_generate_default_params();
    g.max_tokens = 8;
    assert_int_equal(kvlm_generate(s, k_prompts[0], &g, NULL, NULL, &b, &err), KVLM_OK);
    assert_int_equal(a.n_completion, b.n_completion);
    assert_memory_equal(a.tokens, b.tokens, (size_t)a.n_completion * sizeof(kvlm_token));
    assert_int_equal(a.n_beams, 0);
    kvlm_generate_result_free(&a);
    kvlm_generate_result_free(&b);
    kvlm_session_free(s);
    kvlm_model_free(m);
}

/* kvlm run --beams: the text is the API's best hypothesis; --beams-all lists them; bad combinations
   are refused. */
static void test_cli(void **state) {
    (void)state;
    static char out[1 << 16];
    kvlm_model *m = load(AIDREAMS);
    kvlm_session *s = new_session(m, 128, 1, NULL);
    kvlm_generate_params gp = beam_params(3, 16, 1.0f);
    kvlm_generate_result r;
    kvlm_error err;
    assert_int_equal(kvlm_generate(s, k_prompts[0], &gp, NULL, NULL, &r, &err), KVLM_OK);
    assert_int_equal(run_into(out, sizeof out, "%s run -m %s -p '%s' -n 16 --beams 3 --beams-all --kv-stats -t 1 2>&1", KVLM,
                              AIDREAMS, k_prompts[0]),
                     0);
    char want[512];
    snprintf(want, sizeof want, "%s%.*s\n", k_prompts[0], (int)r.text_len, r.text);
    if (!strstr(out, want)) fail_msg("no '%s' in %s", want, out);
    assert_non_null(strstr(out, "beams: 3, logprob "));
    assert_non_null(strstr(out, "beam 1: score "));
    assert_non_null(strstr(out, "beam 3: score "));
    /* --kv-stats: the beams' bytes with and without sharing, as the API reports them */
    snprintf(want, sizeof want, "\"beam_kv_bytes_peak\":%lld,\"beam_kv_bytes_unshared\":%lld}",
             (long long)r.beam_kv_bytes_peak, (long long)r.beam_kv_bytes_unshared);
    if (!strstr(out, want)) fail_msg("no '%s' in %s", want, out);
    assert_int_equal(run_into(out, sizeof out, "%s run -m %s -p hi --beams 2 --draft-ngram 2 2>&1", KVLM, AIDREAMS), 2);
    assert_non_null(strstr(out, "do not combine"));
    assert_int_equal(run_into(out, sizeof out, "%s run -m %s -p hi --length-penalty 2 2>&1", KVLM, AIDREAMS), 2);
    assert_non_null(strstr(out, "needs --beams"));
    assert_int_equal(run_into(out, sizeof out, "%s run -m %s -p hi --beams 2 --top-k 4 2>&1", KVLM, AIDREAMS), 2);
    assert_non_null(strstr(out, "sampling flags"));
    kvlm_generate_result_free(&r);
    kvlm_session_free(s);
    kvlm_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_aidreams),
        cmocka_unit_test(test_reference_synth),
        cmocka_unit_test(test_context_end),
        cmocka_unit_test(test_stop_strings),
        cmocka_unit_test(test_exhaustive_two_tokens),
        cmocka_unit_test(test_memory_and_shared_cache),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
