/* kvlm bench: prompt-processing and generation tokens/s as llama-bench
 * reports them (table or llama-bench's JSON), and --incremental: one new
 * token with the KV cache vs recomputing the whole sequence. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "sampler_bench.h"

typedef struct stats {
    double avg, sd;
} stats;

static stats summarize(const double *x, int n) {
    stats s = {0, 0};
    for (int i = 0; i < n; i++) s.avg += x[i];
    s.avg /= n;
    for (int i = 0; i < n; i++) s.sd += (x[i] - s.avg) * (x[i] - s.avg);
    s.sd = n > 1 ? sqrt(s.sd / (n - 1)) : 0.0;
    return s;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *x, int n) {
    qsort(x, (size_t)n, sizeof *x, cmp_d);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

static void random_tokens(kvlm_token *t, int n, int V, uint32_t seed) {
    for (int i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        t[i] = (kvlm_token)((seed >> 8) % (uint32_t)V);
    }
}

/* --cpu-time: the process's CPU seconds instead of wall seconds, so that a
 * 1-thread run on a shared machine measures the kernels, not the time slices
 * other processes took (with more threads it counts every thread's time,
 * waiting included). */
static bool g_cpu_time;

static double bench_clock(void) {
    if (!g_cpu_time) return cli_now_s();
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Seconds for one pp (n_prompt tokens as one batch) or tg (n_gen single-token steps) run. */
static double run_once(kvlm_model *m, const kvlm_session_params *sp, int depth, int n_prompt, int n_gen, uint32_t seed,
                       kvlm_error *err, bool *ok) {
    const int V = kvlm_n_vocab(m);
    const int n = depth + n_prompt + n_gen;
    kvlm_token *t = malloc((size_t)(n > 0 ? n : 1) * sizeof *t);
    float *logits = malloc((size_t)V * sizeof *logits);
    kvlm_session *s = NULL;
    kvlm_session_params p = *sp;
    p.n_ctx = n;
    double dt = 0;
    *ok = false;
    if (t && logits && kvlm_session_new(m, &p, &s, err) == KVLM_OK) {
        random_tokens(t, n, V, seed);
        bool good = true;
        if (depth > 0) good = kvlm_eval(s, t, depth, 0, NULL, false, err) == KVLM_OK; /* untimed context */
        double t0 = bench_clock();
        if (good && n_prompt > 0) good = kvlm_eval(s, t, depth + n_prompt, depth, logits, false, err) == KVLM_OK;
        for (int i = depth + n_prompt; good && i < n; i++)
            good = kvlm_eval(s, t, i + 1, i, logits, false, err) == KVLM_OK;
        dt = bench_clock() - t0;
        *ok = good;
    }
    kvlm_session_free(s);
    free(t);
    free(logits);
    return dt;
}

static const char *basename_of(const char *p) {
    const char *b = strrchr(p, '/');
    return b ? b + 1 : p;
}

static int bench_incremental(kvlm_model *m, const cli_args *a) {
    const int V = kvlm_n_vocab(m);
    const int sizes[3] = {64, 256, 1024};
    (void)sizes;
    const int reps = a->reps > 0 ? a->reps : 5;
    kvlm_error err;
    printf("| case | tokens | with cache (ms) | recompute (ms) | speedup |\n|---|---:|---:|---:|---:|\n");
    const double shared[4] = {0.5, 0.75, 0.9, 0.97};
    for (int k = 0; k < 7; k++) {
        const bool overlap = k >= 3;
        const int n = overlap ? 1024 : sizes[k];
        const int keep = overlap ? (int)((n + 1) * shared[k - 3]) : n;
        kvlm_token *t = malloc((size_t)(n + 1) * sizeof *t), *u = malloc((size_t)(n + 1) * sizeof *u);
        float *logits = malloc((size_t)V * sizeof *logits);
        double *cached = malloc((size_t)reps * sizeof(double)), *full = malloc((size_t)reps * sizeof(double));
        random_tokens(t, n + 1, V, 99);
        memcpy(u, t, (size_t)(n + 1) * sizeof *t);
        if (overlap) random_tokens(u + keep, n + 1 - keep, V, 7); /* the tail differs */
        kvlm_session_params sp = cli_session_params(a);
        sp.n_ctx = n + 1;
        sp.cache_params.prefix_sharing = false; /* measure the session's own reuse, not the page cache */
        for (int r = 0; r < reps; r++) {
            kvlm_session *s = NULL;
            if (kvlm_session_new(m, &sp, &s, &err) != KVLM_OK) {
                fprintf(stderr, "error: %s\n", err.msg);
                return 1;
            }
            kvlm_eval(s, t, n, 0, logits, false, &err);
            double t0 = cli_now_s();
            kvlm_status st = overlap ? kvlm_eval(s, u, n + 1, KVLM_AUTO, logits, false, &err)
                                     : kvlm_eval(s, t, n + 1, n, logits, false, &err);
            cached[r] = cli_now_s() - t0;
            t0 = cli_now_s();
            kvlm_status st2 = kvlm_eval_full(m, overlap ? u : t, n + 1, logits, false, &err);
            full[r] = cli_now_s() - t0;
            kvlm_session_free(s);
            if (st || st2) {
                fprintf(stderr, "error: %s\n", err.msg);
                return 1;
            }
        }
        double mc = median(cached, reps) * 1e3, mf = median(full, reps) * 1e3;
        if (overlap)
            printf("| %.0f%% of the sequence shared, %d new tokens | %d | %.3f | %.3f | %.1fx |\n",
                   100.0 * keep / (n + 1), n + 1 - keep, n + 1, mc, mf, mf / mc);
        else
            printf("| one new token after %d | %d | %.3f | %.3f | %.1fx |\n", n, n + 1, mc, mf, mf / mc);
        free(t);
        free(u);
        free(logits);
        free(cached);
        free(full);
    }
    /* sampling cost against a decode step */
    double us = cli_sampler_bench_us(V, 200);
    bool ok;
    kvlm_session_params sp = cli_session_params(a);
    double tg = run_once(m, &sp, 0, 0, 32, 5, &err, &ok) / 32 * 1e6;
    printf("\nsampling (temp 0.8, top-k 40, top-p 0.95, min-p 0.05, repeat 1.1/64) over %d tokens: %.1f us per token"
           " = %.2f%% of a %.0f us decode step\n",
           V, us, 100.0 * us / tg, tg);
    return 0;
}

/* Aggregate decode throughput for 1, 2, 4, 8 sessions decoded together. */
static int bench_batch(kvlm_model *m, const cli_args *a) {
    const int V = kvlm_n_vocab(m);
    const int steps = a->n_predict == 32 ? 32 : a->n_predict, reps = a->reps > 0 ? a->reps : 3;
    kvlm_error err;
    double base = 0;
    printf("| sessions | decode steps | tokens/s (median of %d) | per session | vs 1 session |\n"
           "|---:|---:|---:|---:|---:|\n", reps);
    for (int B = 1; B <= 8; B *= 2) {
        double *tps = malloc((size_t)reps * sizeof(double));
        for (int r = 0; r < reps; r++) {
            kvlm_session *ss[8];
            kvlm_session_params sp = cli_session_params(a);
            sp.n_ctx = 16 + steps + 1;
            kvlm_token prompt[16];
            for (int i = 0; i < B; i++) {
                if (kvlm_session_new(m, &sp, &ss[i], &err) != KVLM_OK) {
                    fprintf(stderr, "error: %s\n", err.msg);
                    return 1;
                }
                random_tokens(prompt, 16, V, 31 + (uint32_t)i);
                kvlm_eval(ss[i], prompt, 16, 0, NULL, false, &err);
            }
            float *logits = malloc((size_t)B * V * sizeof(float));
            kvlm_token t[8];
            double t0 = cli_now_s();
            for (int k = 0; k < steps; k++) {
                random_tokens(t, B, V, 1000 + (uint32_t)k);
                if (kvlm_decode_batch(ss, t, B, logits, &err) != KVLM_OK) {
                    fprintf(stderr, "error: %s\n", err.msg);
                    return 1;
                }
            }
            tps[r] = B * steps / (cli_now_s() - t0);
            free(logits);
            for (int i = 0; i < B; i++) kvlm_session_free(ss[i]);
        }
        double med = median(tps, reps);
        if (B == 1) base = med;
        printf("| %d | %d | %.1f | %.1f | %.2fx |\n", B, steps, med, med / B, med / base);
        free(tps);
    }
    return 0;
}

/* Tokenization throughput on 1 MB of text (-f FILE repeated, or a built-in mix). */
static int bench_tokenize(kvlm_model *m, const cli_args *a) {
    size_t slen = 0;
    char *sample = a->file ? cli_read_file(a->file, &slen) : NULL;
    static const char mix[] = "The quick brown fox jumps over the lazy dog. 1234 5678, don't stop!\n"
                              "Ünïcödé, 日本語のテキスト, emojis \xf0\x9f\x98\x80 and   spaces\t\ttabs.\n";
    if (!sample) {
        slen = sizeof mix - 1;
        sample = malloc(slen + 1);
        memcpy(sample, mix, slen + 1);
    }
    const size_t size = 1 << 20;
    char *text = malloc(size + 1);
    for (size_t i = 0; i < size; i++) text[i] = sample[i % slen];
    text[size] = '\0';
    const int reps = a->reps > 0 ? a->reps : 5;
    double *t = malloc((size_t)reps * sizeof(double));
    int32_t n = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = cli_now_s();
        kvlm_token *toks = cli_tokenize(m, text, size, false, false, &n);
        t[r] = cli_now_s() - t0;
        free(toks);
    }
    double med = median(t, reps);
    printf("tokenize %s: 1 MiB -> %d tokens in %.1f ms (median of %d) = %.2f MB/s\n", basename_of(a->model), n,
           med * 1e3, reps, size / 1e6 / med);
    free(t);
    free(text);
    free(sample);
    return 0;
}

int cmd_bench(int argc, char **argv) {
    cli_args a;
    if (!cli_parse(argc, argv, 2, &a)) return 2;
    if (a.help) {
        printf("usage: kvlm bench -m MODEL [-p N_PROMPT (128)] [-n N_GEN (64)] [-d DEPTH] [-t T] [-r REPS (5)] [--json | -o json]\n"
               "                  [--cpu-time]   t/s from the process's CPU time instead of wall time\n"
               "       kvlm bench -m MODEL --incremental [-r REPS]   one new token with the cache vs recompute\n"
               "       kvlm bench -m MODEL --batch [-n STEPS] [-r REPS]   decode throughput for 1, 2, 4, 8 sessions\n"
               "       kvlm bench -m MODEL --tokenize [-f FILE]   tokenization MB/s on 1 MiB of text\n");
        return 0;
    }
    /* -p is the prompt length here, as in llama-bench */
    int n_prompt = a.prompt ? atoi(a.prompt) : 128;
    int n_gen = a.n_predict == 32 ? 64 : a.n_predict;
    kvlm_model *m = a.tokenize ? cli_load_vocab(&a) : cli_load_model(&a);
    if (!m) return 1;
    int rc = 0;
    if (a.tokenize) {
        rc = bench_tokenize(m, &a);
        kvlm_model_free(m);
        return rc;
    }
    if (a.incremental || a.batch) {
        rc = a.batch ? bench_batch(m, &a) : bench_incremental(m, &a);
        kvlm_model_free(m);
        return rc;
    }
    g_cpu_time = a.cpu_time;
    kvlm_model_info mi;
    kvlm_model_get_info(m, &mi);
    const int reps = a.reps > 0 ? a.reps : 5;
    kvlm_session_params sp = cli_session_params(&a);
    int n_threads = a.n_threads; /* the count the sessions really use */
    {
        kvlm_session_params probe = sp;
        probe.n_ctx = 16;
        kvlm_session *s = NULL;
        kvlm_error err;
        if (kvlm_session_new(m, &probe, &s, &err) == KVLM_OK) n_threads = cli_note_threads(&a, s);
        kvlm_session_free(s);
    }
    const int tests[2][2] = {{n_prompt, 0}, {0, n_gen}};
    if (a.json) printf("[\n");
    else
        printf("| model | size | params | backend | threads | test | t/s |\n"
               "| ----- | ---: | -----: | ------- | ------: | ---: | --: |\n");
    bool first = true;
    for (int k = 0; k < 2; k++) {
        const int np = tests[k][0], ng = tests[k][1];
        if (np + ng == 0) continue;
        double *ts = malloc((size_t)reps * sizeof(double)), *ns = malloc((size_t)reps * sizeof(double));
        kvlm_error err;
        bool ok = true;
        run_once(m, &sp, a.depth, np, ng, 1, &err, &ok); /* warm-up */
        for (int r = 0; r < reps && ok; r++) {
            double dt = run_once(m, &sp, a.depth, np, ng, 2 + (uint32_t)r, &err, &ok);
            ns[r] = dt * 1e9;
            ts[r] = (np + ng) / dt;
        }
        if (!ok) {
            fprintf(stderr, "error: %s\n", err.msg);
            rc = 1;
            free(ts);
            free(ns);
            break;
        }
        stats st = summarize(ts, reps), sn = summarize(ns, reps);
        char test[32];
        if (a.depth > 0) snprintf(test, sizeof test, np ? "pp%d @ d%d" : "tg%d @ d%d", np ? np : ng, a.depth);
        else snprintf(test, sizeof test, np ? "pp%d" : "tg%d", np ? np : ng);
        if (a.json) {
            printf("%s  {\"build_commit\": \"kvlm\", \"model_filename\": \"%s\", \"model_type\": \"%s\", "
                   "\"model_size\": %llu, \"model_n_params\": %llu, \"n_batch\": 256, \"n_threads\": %d, "
                   "\"type_k\": \"f16\", \"type_v\": \"f16\", \"n_prompt\": %d, \"n_gen\": %d, "
                   "\"avg_ns\": %.0f, \"stddev_ns\": %.0f, \"avg_ts\": %.6f, \"stddev_ts\": %.6f, \"samples_ts\": [",
                   first ? "" : ",\n", a.model, mi.arch, (unsigned long long)mi.weight_bytes,
                   (unsigned long long)mi.n_params, n_threads, np, ng, sn.avg, sn.sd, st.avg, st.sd);
            for (int r = 0; r < reps; r++) printf("%s%.6f", r ? ", " : "", ts[r]);
            printf("]}");
        } else {
            printf("| %s | %.2f MiB | %.2f M | CPU | %d | %s | %.2f ± %.2f |\n", basename_of(a.model),
                   mi.weight_bytes / 1048576.0, mi.n_params / 1e6, n_threads, test, st.avg, st.sd);
        }
        first = false;
        free(ts);
        free(ns);
    }
    if (a.json) printf("\n]\n");
    kvlm_model_free(m);
    return rc;
}
