/* kvlm eval: logits of a prompt (one batch) and N greedy tokens (one at a
 * time), written in the LGTS0001 format the goldens use. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static kvlm_token *parse_tokens(const char *s, int32_t *n_out) {
    size_t cap = 16;
    int32_t n = 0;
    kvlm_token *t = malloc(cap * sizeof *t);
    while (t && *s) {
        char *end;
        while (*s == ' ' || *s == ',' || *s == '\t' || *s == '\n') s++;
        if (!*s) break;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > 0x7fffffff) {
            fprintf(stderr, "error: --tokens: cannot read a token id at '%.20s'\n", s);
            free(t);
            return NULL;
        }
        if ((size_t)n == cap) {
            kvlm_token *nt = realloc(t, cap * 2 * sizeof *t);
            if (!nt) {
                free(t);
                return NULL;
            }
            t = nt;
            cap *= 2;
        }
        t[n++] = (kvlm_token)v;
        s = end;
    }
    *n_out = n;
    return t;
}

static bool write_row(FILE *fp, int32_t pos, int32_t tok, const float *logits, int32_t n_vocab) {
    return fwrite(&pos, 4, 1, fp) == 1 && fwrite(&tok, 4, 1, fp) == 1 &&
           fwrite(logits, 4, (size_t)n_vocab, fp) == (size_t)n_vocab;
}

int cmd_eval(int argc, char **argv) {
    cli_args a;
    if (!cli_parse(argc, argv, 2, &a)) return 2;
    if (a.help) {
        cli_usage("eval", stdout);
        return 0;
    }
    if (a.tokens && (a.prompt || a.file)) {
        fprintf(stderr, "error: give one of -p TEXT, -f FILE and --tokens\n");
        return 2;
    }
    kvlm_model *m = cli_load_model(&a);
    if (!m) return 1;
    int rc = 1;
    int32_t n_prompt = 0;
    kvlm_token *prompt = NULL, *toks = NULL;
    float *logits = NULL;
    kvlm_session *s = NULL;
    FILE *fp = NULL;
    kvlm_error err;
    if (a.tokens) {
        prompt = parse_tokens(a.tokens, &n_prompt);
    } else {
        size_t len;
        char *text = cli_prompt_text(&a, &len);
        if (!text) goto out;
        prompt = cli_tokenize(m, text, len, !a.no_bos, !a.no_parse_special, &n_prompt);
        free(text);
    }
    if (!prompt || n_prompt == 0) {
        fprintf(stderr, "error: no prompt tokens\n");
        goto out;
    }
    const int32_t n_vocab = kvlm_n_vocab(m);
    const int32_t n_gen = a.greedy > 0 ? a.greedy : 0;
    const int32_t n_total = n_prompt + n_gen;
    kvlm_session_params sp = cli_session_params(&a);
    sp.n_ctx = a.n_ctx > 0 ? a.n_ctx : (n_total > 0 ? n_total : 1);
    if (kvlm_session_new(m, &sp, &s, &err) != KVLM_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        goto out;
    }
    cli_note_threads(&a, s);
    toks = malloc((size_t)n_total * sizeof *toks);
    logits = malloc((size_t)n_total * (size_t)n_vocab * sizeof *logits);
    if (!toks || !logits) {
        fprintf(stderr, "error: out of memory\n");
        goto out;
    }
    memcpy(toks, prompt, (size_t)n_prompt * sizeof *toks);
    /* the prompt as one batch, or in chunks of --chunk tokens: the logits are the same bits either way */
    const int32_t step = a.chunk > 0 ? a.chunk : n_prompt;
    for (int32_t i = 0; i < n_prompt; i += step) {
        const int32_t end = i + step < n_prompt ? i + step : n_prompt;
        if (kvlm_eval(s, toks, end, i, logits + (size_t)i * (size_t)n_vocab, true, &err) != KVLM_OK) {
            fprintf(stderr, "error: %s\n", err.msg);
            goto out;
        }
    }
    for (int32_t i = 0; i < n_gen; i++) {
        const int32_t n = n_prompt + i;
        toks[n] = cli_argmax(logits + (size_t)(n - 1) * (size_t)n_vocab, n_vocab);
        if (kvlm_eval(s, toks, n + 1, n, logits + (size_t)n * (size_t)n_vocab, false, &err) != KVLM_OK) {
            fprintf(stderr, "error: %s\n", err.msg);
            goto out;
        }
    }
    for (int32_t i = 0; i < n_gen; i++) printf(i ? " %d" : "%d", toks[n_prompt + i]);
    if (n_gen) printf("\n");
    if (a.dump_logits) {
        fp = fopen(a.dump_logits, "wb");
        if (!fp) {
            fprintf(stderr, "error: cannot create '%s': %s\n", a.dump_logits, strerror(errno));
            goto out;
        }
        bool ok = fwrite("LGTS0001", 1, 8, fp) == 8 && fwrite(&n_vocab, 4, 1, fp) == 1 &&
                  fwrite(&n_total, 4, 1, fp) == 1;
        for (int32_t i = 0; ok && i < n_total; i++)
            ok = write_row(fp, i, toks[i], logits + (size_t)i * (size_t)n_vocab, n_vocab);
        if (fclose(fp) != 0) ok = false;
        fp = NULL;
        if (!ok) {
            fprintf(stderr, "error: writing '%s' failed\n", a.dump_logits);
            goto out;
        }
    }
    rc = 0;
out:
    if (fp) fclose(fp);
    free(logits);
    free(toks);
    free(prompt);
    kvlm_session_free(s);
    kvlm_model_free(m);
    return rc;
}
