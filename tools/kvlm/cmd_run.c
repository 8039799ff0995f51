/* kvlm run: generate text, streaming to stdout, timings to stderr. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* A token's text for the probability table: quoted, control bytes escaped. */
static void print_piece(const kvlm_model *m, kvlm_token t, int width) {
    char piece[128], out[300];
    int32_t n = kvlm_token_to_piece(m, t, piece, sizeof piece, true);
    if (n < 0) n = 0;
    size_t o = 0;
    out[o++] = '\'';
    for (int32_t i = 0; i < n && o + 6 < sizeof out; i++) {
        const unsigned char c = (unsigned char)piece[i];
        if (c == '\n') o += (size_t)snprintf(out + o, sizeof out - o, "\\n");
        else if (c == '\t') o += (size_t)snprintf(out + o, sizeof out - o, "\\t");
        else if (c == '\'' || c == '\\') o += (size_t)snprintf(out + o, sizeof out - o, "\\%c", c);
        else if (c < 0x20 || c == 0x7f) o += (size_t)snprintf(out + o, sizeof out - o, "\\x%02x", c);
        else out[o++] = (char)c;
    }
    out[o++] = '\'';
    out[o] = '\0';
    printf("%-*s", width, out);
}

/* --n-probs: the probability of each generated token under the model's distribution (softmax of the
 * logits, before the sampling transforms) and the N most probable tokens. The logits are those the
 * generation saw: the same tokens evaluated again in a new session (the prompt as one batch, then one
 * token at a time), which the n_past contract makes bit-identical. */
static bool print_probs(kvlm_model *m, const kvlm_session_params *sp, const char *text, size_t len,
                        const cli_args *a, const kvlm_generate_result *r) {
    const int32_t V = kvlm_n_vocab(m);
    const int n = a->n_probs < V ? a->n_probs : V;
    int32_t np = 0;
    kvlm_token *toks = cli_tokenize(m, text, len, true, !a->no_parse_special, &np);
    kvlm_token *all = toks ? malloc(((size_t)np + (size_t)r->n_completion) * sizeof *all) : NULL;
    float *logits = malloc((size_t)V * sizeof *logits);
    kvlm_token *top = malloc((size_t)n * sizeof *top);
    float *top_lp = malloc((size_t)n * sizeof *top_lp);
    kvlm_session *s = NULL;
    kvlm_error err = {0};
    bool ok = all && logits && top && top_lp && np == r->n_prompt && kvlm_session_new(m, sp, &s, &err) == KVLM_OK;
    if (ok) {
        memcpy(all, toks, (size_t)np * sizeof *all);
        memcpy(all + np, r->tokens, (size_t)r->n_completion * sizeof *all);
        printf("token probabilities (the model's, before sampling); top %d:\n", n);
    }
    for (int32_t i = 0; ok && i < r->n_completion; i++) {
        const int32_t end = np + i;
        ok = kvlm_eval(s, all, end, i == 0 ? 0 : end - 1, logits, false, &err) == KVLM_OK;
        float lp = 0;
        ok = ok && kvlm_logprobs(logits, V, r->tokens[i], &lp, n, top, top_lp, &err) == KVLM_OK;
        if (!ok) break;
        printf("%5d ", i);
        print_piece(m, r->tokens[i], 14);
        printf(" %.6f |", exp((double)lp));
        for (int k = 0; k < n; k++) {
            printf(k ? ", " : " ");
            print_piece(m, top[k], 0);
            printf(" %.6f", exp((double)top_lp[k]));
        }
        printf("\n");
    }
    if (!ok) fprintf(stderr, "error: --n-probs: %s\n", err.msg[0] ? err.msg : "the prompt did not tokenize the same");
    kvlm_session_free(s);
    free(toks);
    free(all);
    free(logits);
    free(top);
    free(top_lp);
    return ok;
}

int cmd_run(int argc, char **argv) {
    const double t_start = cli_now_s();
    cli_args a;
    if (!cli_parse(argc, argv, 2, &a)) return 2;
    if (a.help) {
        cli_usage("run", stdout);
        return 0;
    }
    if (a.n_probs > 0 && a.sp.overflow != KVLM_OVERFLOW_ERROR) {
        fprintf(stderr, "error: --n-probs replays the generation, which a context policy (--overflow) would not repeat\n");
        return 2;
    }
    size_t len;
    char *text = cli_prompt_text(&a, &len);
    if (!text) return 2;
    const double t_load = cli_now_s();
    kvlm_model *m = cli_load_model(&a);
    if (!m) {
        free(text);
        return 1;
    }
    const double load_ms = (cli_now_s() - t_load) * 1e3;
    int rc = 1;
    kvlm_session *s = NULL, *ds = NULL;
    kvlm_model *md = NULL;
    kvlm_error err;
    kvlm_model_info mi;
    kvlm_model_get_info(m, &mi);
    if (!cli_check_bias(&a, m)) goto out;
    if (a.n_ctx > mi.n_ctx_train)
        fprintf(stderr, "warning: -c %d is more than the %d tokens the model was trained on; past them the text may degrade\n",
                a.n_ctx, mi.n_ctx_train);
    kvlm_session_params sp = cli_session_params(&a);
    if (kvlm_session_new(m, &sp, &s, &err) != KVLM_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        goto out;
    }
    cli_note_threads(&a, s);
    if (a.session && !cli_use_session_file(s, &a)) goto out;
    if (a.temp_defaulted)
        fprintf(stderr, "note: sampling at temperature 0.8, llama.cpp's default with sampling flags (--temp 0: greedy)\n");
    if (a.model_draft) {
        /* the draft model: its own session over the same context, same threads */
        cli_args da = a;
        da.model = a.model_draft;
        if (!(md = cli_load_model(&da))) goto out;
        kvlm_session_params dsp = sp;
        dsp.n_ctx = kvlm_session_n_ctx(s);
        dsp.overflow = KVLM_OVERFLOW_ERROR;
        dsp.cache = NULL;
        if (kvlm_session_new(md, &dsp, &ds, &err) != KVLM_OK) {
            fprintf(stderr, "error: -md: %s\n", err.msg);
            goto out;
        }
    }
    kvlm_generate_params gp = kvlm_generate_default_params();
    gp.draft_max = a.draft_max;
    if (a.draft_ngram) gp.draft_ngram = a.draft_ngram;
    gp.draft = ds;
    gp.sampling = a.sampling;
    gp.max_tokens = a.n_predict;
    gp.stop = a.stop;
    gp.n_stop = a.n_stop;
    gp.ignore_eos = a.ignore_eos;
    gp.timeout_s = a.timeout_s;
    gp.parse_special = !a.no_parse_special;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    cli_cancel_on_sigint(s);
    kvlm_generate_result r;
    kvlm_status st = kvlm_generate(s, text, &gp, cli_print_token, NULL, &r, &err);
    cli_cancel_on_sigint(NULL);
    /* end the streamed line before anything goes to stderr */
    printf("\n");
    fflush(stdout);
    if (st != KVLM_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        goto out;
    }
    if (a.n_probs > 0 && !print_probs(m, &sp, text, len, &a, &r)) {
        kvlm_generate_result_free(&r);
        goto out;
    }
    const int n_ctx = kvlm_session_n_ctx(s);
    const bool ctx_full = r.finish == KVLM_FINISH_LENGTH && sp.overflow == KVLM_OVERFLOW_ERROR &&
                          r.n_prompt + r.n_completion > n_ctx && (a.n_predict < 0 || r.n_completion < a.n_predict);
    const int computed = r.n_prompt - r.n_prompt_cached;
    fprintf(stderr, "\nload time: %.2f ms\n", load_ms);
    fprintf(stderr, "prompt: %d tokens (%d cached, %d computed) in %.2f ms (%.2f tokens/s)\n", r.n_prompt,
            r.n_prompt_cached, computed, r.prompt_ms, computed > 0 ? computed / (r.prompt_ms * 1e-3) : 0.0);
    /* the first token comes from the prompt's logits: n-1 decode steps */
    const int steps = r.n_completion > 0 ? r.n_completion - 1 : 0;
    fprintf(stderr, "generation: %d tokens in %.2f ms (%.2f tokens/s), finish: %s%s\n", r.n_completion, r.generate_ms,
            steps > 0 && r.generate_ms > 0 ? steps / (r.generate_ms * 1e-3) : 0.0, kvlm_finish_reason_name(r.finish),
            ctx_full ? " (the context is full)" : "");
    if (ctx_full)
        fprintf(stderr, "generation stopped because the context of %d tokens is full (-c N up to the model's %d, or "
                        "--overflow shift, goes on)\n", n_ctx, mi.n_ctx_train);
    if (gp.draft_max)
        fprintf(stderr, "draft: %d tokens drafted, %d accepted (%.1f%%); %d forward passes for %d tokens (%.2f per pass)\n",
                r.n_drafted, r.n_accepted, r.n_drafted ? 100.0 * r.n_accepted / r.n_drafted : 0.0, r.n_passes, steps,
                r.n_passes ? (double)steps / r.n_passes : 0.0);
    if (a.sampling.temperature > 0) fprintf(stderr, "seed: %llu\n", (unsigned long long)a.sampling.seed);
    kvlm_generate_result_free(&r);
    if (a.session && kvlm_session_save(s, a.session, &err) != KVLM_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        goto out;
    }
    rc = 0;
    fprintf(stderr, "total time: %.2f ms\n", (cli_now_s() - t_start) * 1e3);
    if (a.kv_stats) cli_print_kv_stats(s); /* the last line: one JSON object */
out:
    free(text);
    kvlm_session_free(s);
    kvlm_session_free(ds);
    kvlm_model_free(md);
    kvlm_model_free(m);
    return rc;
}
