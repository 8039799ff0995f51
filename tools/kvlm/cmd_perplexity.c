/* kvlm perplexity: perplexity over a text, in chunks of -c tokens, scoring
 * the second half of each chunk as llama.cpp's perplexity tool does. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int cmd_perplexity(int argc, char **argv) {
    cli_args a;
    if (!cli_parse(argc, argv, 2, &a)) return 2;
    if (a.help || !a.file) {
        if (!a.help) fprintf(stderr, "error: give the text with -f FILE\n");
        cli_usage("perplexity", a.help ? stdout : stderr);
        return a.help ? 0 : 2;
    }
    size_t len;
    char *text = cli_read_file(a.file, &len);
    if (!text) return 1;
    kvlm_model *m = cli_load_model(&a);
    if (!m) {
        free(text);
        return 1;
    }
    int rc = 1;
    int32_t n_tok = 0;
    kvlm_token *toks = cli_tokenize(m, text, len, true, false, &n_tok);
    free(text);
    const int32_t n_ctx = a.n_ctx > 0 ? a.n_ctx : 128;
    const int32_t V = kvlm_n_vocab(m);
    int32_t n_chunks = toks ? n_tok / n_ctx : 0;
    if (a.n_chunks > 0 && a.n_chunks < n_chunks) n_chunks = a.n_chunks;
    float *logits = malloc((size_t)n_ctx * (size_t)V * sizeof *logits);
    kvlm_token *chunk = malloc((size_t)n_ctx * sizeof *chunk);
    kvlm_session *s = NULL;
    kvlm_error err;
    cli_progress pr = {0};
    if (n_chunks < 1) {
        fprintf(stderr, "error: the text has %d tokens, fewer than one chunk of %d\n", n_tok, n_ctx);
        goto out;
    }
    kvlm_session_params sp = cli_session_params(&a);
    sp.n_ctx = n_ctx;
    if (!logits || !chunk || kvlm_session_new(m, &sp, &s, &err) != KVLM_OK) {
        fprintf(stderr, "error: %s\n", logits && chunk ? err.msg : "out of memory");
        goto out;
    }
    cli_note_threads(&a, s);
    fprintf(stderr, "perplexity: %d tokens, %d chunks of %d, scoring the second half of each\n", n_tok, n_chunks,
            n_ctx);
    double nll = 0.0, nll2 = 0.0;
    int64_t count = 0;
    const int32_t first = n_ctx / 2;
    const int32_t bos = kvlm_token_bos(m);
    const double t0 = cli_now_s();
    cli_progress_start(&pr, "perplexity");
    for (int32_t c = 0; c < n_chunks; c++) {
        memcpy(chunk, toks + (size_t)c * (size_t)n_ctx, (size_t)n_ctx * sizeof *chunk);
        if (bos >= 0 && kvlm_add_bos(m)) chunk[0] = bos;
        if (kvlm_session_truncate(s, 0, &err) != KVLM_OK) goto fail;
        const int32_t step = a.chunk > 0 ? a.chunk : n_ctx;
        for (int32_t i = 0; i < n_ctx; i += step) {
            const int32_t end = i + step < n_ctx ? i + step : n_ctx;
            if (kvlm_eval(s, chunk, end, i, logits + (size_t)i * (size_t)V, true, &err) != KVLM_OK) goto fail;
        }
        for (int32_t j = first; j < n_ctx - 1; j++) {
            const float *l = logits + (size_t)j * (size_t)V;
            float mx = l[0];
            for (int32_t v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
            double sum = 0.0;
            for (int32_t v = 0; v < V; v++) sum += exp((double)(l[v] - mx));
            const double lp = (double)(l[toks[(size_t)c * (size_t)n_ctx + j + 1]] - mx) - log(sum);
            nll -= lp;
            nll2 += lp * lp;
            count++;
        }
        char detail[48];
        snprintf(detail, sizeof detail, "PPL so far %.4f", exp(nll / (double)count));
        cli_progress_update(&pr, c + 1, n_chunks, detail);
    }
    cli_progress_end(&pr);
    {
        const double mean = nll / (double)count;
        const double var = nll2 / (double)count - mean * mean;
        const double ppl = exp(mean);
        const double err_ppl = ppl * sqrt(var > 0 ? var / (double)(count - 1 > 0 ? count - 1 : 1) : 0.0);
        printf("Final estimate: PPL = %.4f +/- %.5f  (%lld tokens scored, %.2f s)\n", ppl, err_ppl, (long long)count,
               cli_now_s() - t0);
    }
    if (a.kv_stats) cli_print_kv_stats(s);
    rc = 0;
    goto out;
fail:
    cli_progress_end(&pr);
    fprintf(stderr, "error: %s\n", err.msg);
out:
    free(toks);
    free(logits);
    free(chunk);
    kvlm_session_free(s);
    kvlm_model_free(m);
    return rc;
}
