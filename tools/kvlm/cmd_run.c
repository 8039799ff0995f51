/* kvlm run: greedy generation, streaming to stdout, timings to stderr. */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"

int cmd_run(int argc, char **argv) {
    cli_args a;
    if (!cli_parse(argc, argv, 2, &a)) return 2;
    if (a.help) {
        printf("usage: kvlm run -m MODEL -p PROMPT [-n N] [-t THREADS] [-c CTX]\n");
        return 0;
    }
    size_t len;
    char *text = cli_prompt_text(&a, &len);
    if (!text) return 2;
    kvlm_model *m = cli_load_model(&a);
    if (!m) {
        free(text);
        return 1;
    }
    int rc = 1;
    int32_t n_prompt = 0;
    kvlm_token *prompt = cli_tokenize(m, text, len, !a.no_bos, true, &n_prompt);
    kvlm_session *s = NULL;
    kvlm_token *toks = NULL;
    float *logits = NULL;
    kvlm_error err;
    if (!prompt || n_prompt == 0) {
        fprintf(stderr, "error: the prompt tokenized to nothing\n");
        goto out;
    }
    kvlm_session_params sp = kvlm_session_default_params();
    sp.n_ctx = a.n_ctx;
    sp.n_threads = a.n_threads;
    if (kvlm_session_new(m, &sp, &s, &err) != KVLM_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        goto out;
    }
    const int32_t n_ctx = kvlm_session_n_ctx(s), n_vocab = kvlm_n_vocab(m);
    int n_predict = a.n_predict < 0 ? n_ctx : a.n_predict;
    toks = malloc(((size_t)n_prompt + (size_t)n_predict + 1) * sizeof *toks);
    logits = malloc((size_t)n_vocab * sizeof *logits);
    if (!toks || !logits) {
        fprintf(stderr, "error: out of memory\n");
        goto out;
    }
    for (int32_t i = 0; i < n_prompt; i++) toks[i] = prompt[i];

    fwrite(text, 1, len, stdout);
    fflush(stdout);
    double t0 = cli_now_s();
    if (kvlm_eval(s, toks, n_prompt, 0, logits, false, &err) != KVLM_OK) {
        fprintf(stderr, "\nerror: %s\n", err.msg);
        goto out;
    }
    double t1 = cli_now_s();
    int32_t n = n_prompt, n_gen = 0;
    char piece[256];
    while (n_gen < n_predict) {
        kvlm_token t = cli_argmax(logits, n_vocab);
        if (kvlm_token_is_eog(m, t)) break;
        int32_t pl = kvlm_token_to_piece(m, t, piece, sizeof piece, false);
        if (pl > 0) fwrite(piece, 1, (size_t)pl, stdout);
        fflush(stdout);
        toks[n] = t;
        n_gen++;
        if (n + 1 > n_ctx) {
            fprintf(stderr, "\n[context of %d tokens is full]\n", n_ctx);
            break;
        }
        if (n_gen == n_predict) break;
        if (kvlm_eval(s, toks, n + 1, n, logits, false, &err) != KVLM_OK) {
            fprintf(stderr, "\nerror: %s\n", err.msg);
            goto out;
        }
        n++;
    }
    double t2 = cli_now_s();
    printf("\n");
    fprintf(stderr, "\nprompt: %d tokens in %.2f ms (%.2f tokens/s)\n", n_prompt, (t1 - t0) * 1e3,
            n_prompt / (t1 - t0));
    int n_decoded = n_gen > 0 ? n_gen - 1 : 0; /* the first token came from the prompt's logits */
    fprintf(stderr, "generation: %d tokens, %d decode steps in %.2f ms (%.2f tokens/s)\n", n_gen, n_decoded,
            (t2 - t1) * 1e3, n_decoded > 0 ? n_decoded / (t2 - t1) : 0.0);
    rc = 0;
out:
    free(logits);
    free(toks);
    free(prompt);
    free(text);
    kvlm_session_free(s);
    kvlm_model_free(m);
    return rc;
}
