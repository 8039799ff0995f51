/* kvlm bench --grammar FILE (grammar_bench.h). Uses the grammar module's own
 * state (src/grammar/grammar.h) to time each kind of mask separately. */
#include "grammar_bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar/grammar.h"

static int cmp_dbl(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* median and p99 (nearest rank) of x[0..n), microseconds; sorts x */
static void pct(double *x, int n, double *med, double *p99) {
    qsort(x, (size_t)n, sizeof *x, cmp_dbl);
    *med = n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
    int k = (int)((double)n * 0.99 + 0.999999) - 1;
    if (k < 0) k = 0;
    if (k >= n) k = n - 1;
    *p99 = x[k];
}

static const char *base(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

int cli_grammar_bench(kvlm_model *m, const cli_args *a) {
    size_t len = 0;
    const bool schema = a->json_schema_file != NULL;
    const char *path = schema ? a->json_schema_file : a->grammar_file;
    char *text = cli_read_file(path, &len);
    if (!text) return 1;
    kvlm_grammar *h = NULL;
    kvlm_error err;
    const double t0 = cli_now_s();
    kvlm_status st = schema ? kvlm_grammar_new_json_schema(m, text, &h, &err) : kvlm_grammar_new_gbnf(m, text, NULL, &h, &err);
    const double compile_ms = (cli_now_s() - t0) * 1e3;
    free(text);
    if (st != KVLM_OK) {
        fprintf(stderr, "error: %s %s: %s\n", schema ? "--json-schema" : "--grammar", path, err.msg);
        return 1;
    }
    /* -f TEXT: its tokens are the walk (repeated -r times) */
    kvlm_token *sample = NULL;
    int32_t n_sample = 0;
    if (a->file) {
        size_t sl = 0;
        char *st_text = cli_read_file(a->file, &sl);
        if (!st_text) {
            kvlm_grammar_free(h);
            return 1;
        }
        sample = cli_tokenize(m, st_text, sl, false, false, &n_sample);
        free(st_text);
        if (!sample || n_sample == 0) {
            fprintf(stderr, "error: -f %s: no tokens\n", a->file);
            free(sample);
            kvlm_grammar_free(h);
            return 1;
        }
    }
    const int steps = sample ? n_sample : a->b_gen.n && a->b_gen.v[0] > 0 ? (int)a->b_gen.v[0] : 256;
    const int walks = a->reps > 0 ? a->reps : 5;
    const int n = steps * walks;
    double *t_gen = malloc((size_t)n * sizeof *t_gen), *t_warm = malloc((size_t)n * sizeof *t_warm);
    double *t_cold = malloc((size_t)n * sizeof *t_cold), *t_check = malloc((size_t)n * sizeof *t_check);
    double *n_ok = malloc((size_t)n * sizeof *n_ok);
    const int32_t nv = kvlm_n_vocab(m);
    int32_t *allowed = malloc((size_t)nv * sizeof *allowed);
    kv_gstate *gen = NULL, *cold = NULL;
    int rc = 1, k = 0, resets = 0;
    if (!t_gen || !t_warm || !t_cold || !t_check || !n_ok || !allowed ||
        kv_gstate_new(h->g, h->v, &gen, &err) != KVLM_OK || kv_gstate_new(h->g, h->v, &cold, &err) != KVLM_OK) {
        fprintf(stderr, "error: out of memory\n");
        goto out;
    }
    for (int w = 0; w < walks; w++) {
        uint64_t rng = 0x9E3779B97F4A7C15ull * (uint64_t)(w + 1);
        kv_gstate_reset(gen);
        kv_gstate_reset(cold);
        for (int i = 0; i < steps; i++) {
            int32_t na = 0;
            double c0 = cli_now_s();
            const uint64_t *mg = kv_gstate_mask(gen, &na, &err);
            double c1 = cli_now_s();
            if (!mg) {
                fprintf(stderr, "error: %s\n", err.msg);
                goto out;
            }
            int32_t tok;
            if (sample) {
                tok = sample[i];
            } else {
                /* the next token: uniform among the allowed ones that are not end-of-generation */
                int32_t nc = 0;
                for (int32_t t = 0; t < nv; t++)
                    if ((mg[t >> 6] >> (t & 63)) & 1 && !kvlm_token_is_eog(m, t)) allowed[nc++] = t;
                if (nc == 0) { /* finished (or only the end is allowed): start again */
                    kv_gstate_reset(gen);
                    kv_gstate_reset(cold);
                    resets++;
                    i--;
                    continue;
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                tok = allowed[rng % (uint64_t)nc];
            }
            kv_gstate_flush(cold, NULL);
            double c2 = cli_now_s();
            kv_gstate_mask_uncached(cold, NULL, NULL);
            double c3 = cli_now_s();
            kv_gstate_mask_uncached(cold, NULL, NULL);
            double c4 = cli_now_s();
            bool ok = kv_gstate_allows_token(gen, tok);
            double c5 = cli_now_s();
            if (!ok || kv_gstate_accept_token(gen, tok, &err) != KVLM_OK || kv_gstate_accept_token(cold, tok, &err) != KVLM_OK) {
                fprintf(stderr, "error: token %d (step %d) %s: %s\n", tok, i,
                        sample ? "of -f's text does not continue the grammar" : "from the mask was refused", err.msg);
                goto out;
            }
            t_gen[k] = (c1 - c0) * 1e6;
            t_cold[k] = (c3 - c2) * 1e6;
            t_warm[k] = (c4 - c3) * 1e6;
            t_check[k] = (c5 - c4) * 1e6;
            n_ok[k] = na;
            k++;
        }
    }
    double med, p99;
    printf("grammar %s on %s: %d tokens, trie of %d nodes; compile (grammar and trie) %.2f ms\n", base(path),
           base(a->model), nv, kv_gvocab_n_nodes(h->v), compile_ms);
    if (sample) printf("%d walks of the %d tokens of %s\n", walks, steps, base(a->file));
    else printf("%d walks of %d random allowed tokens (%d restarts at the end of the grammar)\n", walks, steps, resets);
    printf("| per token                                  | median us |    p99 us |\n");
    printf("|--------------------------------------------|----------:|----------:|\n");
    pct(t_gen, k, &med, &p99);
    printf("| mask, as generation computes it (cached)   | %9.2f | %9.2f |\n", med, p99);
    pct(t_warm, k, &med, &p99);
    printf("| mask without the mask cache (warm DFA)     | %9.2f | %9.2f |\n", med, p99);
    pct(t_cold, k, &med, &p99);
    printf("| mask cold (every cache dropped first)      | %9.2f | %9.2f |\n", med, p99);
    pct(t_check, k, &med, &p99);
    printf("| one-token check (the lazy path)            | %9.2f | %9.2f |\n", med, p99);
    pct(n_ok, k, &med, &p99);
    printf("allowed tokens per step: median %.0f, p99 %.0f\n", med, p99);
    rc = 0;
out:
    kv_gstate_free(gen);
    kv_gstate_free(cold);
    free(t_gen);
    free(t_warm);
    free(t_cold);
    free(t_check);
    free(n_ok);
    free(allowed);
    free(sample);
    kvlm_grammar_free(h);
    return rc;
}
