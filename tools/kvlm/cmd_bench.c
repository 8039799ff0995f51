/* kvlm bench: prompt-processing and generation tokens/s as llama-bench
 * measures and reports them (its comma lists, its md/csv/json/jsonl output,
 * its model names and build: line), and --incremental: one new token with
 * the KV cache vs recomputing the whole sequence; --batch; --tokenize. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "gguf/gguf.h"
#include "grammar_bench.h"
#include "qz.h"
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
    const int steps = a->b_gen.n ? a->b_gen.v[0] : 32, reps = a->reps > 0 ? a->reps : 3;
    kvlm_error err;
    double base = 0;
    printf("| sessions | decode steps | tokens/s (%smedian of %d) | per session | vs 1 session |\n"
           "|---:|---:|---:|---:|---:|\n", g_cpu_time ? "CPU time, " : "", reps);
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
            double t0 = bench_clock();
            for (int k = 0; k < steps; k++) {
                random_tokens(t, B, V, 1000 + (uint32_t)k);
                if (kvlm_decode_batch(ss, t, B, logits, &err) != KVLM_OK) {
                    fprintf(stderr, "error: %s\n", err.msg);
                    return 1;
                }
            }
            tps[r] = B * steps / (bench_clock() - t0);
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

/* llama.cpp's size class of a llama model (llm_type by layer count), else the parameter count. */
static void size_label(const kvlm_model_info *mi, char *buf, size_t cap) {
    const char *t = NULL;
    if (strcmp(mi->arch, "llama") == 0) {
        switch (mi->n_layer) {
        case 16: case 22: t = "1B"; break;
        case 26: case 28: t = "3B"; break;
        case 32: t = mi->n_vocab == 49152 ? "3B" : mi->n_vocab < 40000 ? "7B" : "8B"; break;
        case 36: t = "8B"; break;
        case 40: t = "13B"; break;
        case 48: t = "34B"; break;
        case 60: t = "30B"; break;
        case 80: t = mi->n_head == mi->n_head_kv ? "65B" : "70B"; break;
        default: break;
        }
    }
    const double n = (double)mi->n_params;
    if (t) snprintf(buf, cap, "%s", t);
    else if (n >= 1e10) snprintf(buf, cap, "%.0fB", n / 1e9);
    else if (n >= 1e9) snprintf(buf, cap, "%.1fB", n / 1e9);
    else if (n >= 1e6) snprintf(buf, cap, "%.0fM", n / 1e6);
    else snprintf(buf, cap, "%.0fK", n / 1e3);
}

/* "llama 110M Q8_0": the architecture, its size and the file type, as llama-bench names a model;
 * *bytes: every tensor's bytes, as llama-bench's size. */
static void model_type(const char *path, const kvlm_model_info *mi, char *buf, size_t cap, uint64_t *bytes) {
    char size[32];
    size_label(mi, size, sizeof size);
    gguf_ctx *g = NULL;
    kvlm_error err;
    int ft = 0;
    bool guessed = false;
    if (kv_gguf_open(path, &g, &err) == KVLM_OK) {
        ft = qz_file_ftype(g, &guessed);
        *bytes = 0;
        for (uint64_t i = 0; i < g->n_tensors; i++) *bytes += g->tensors[i].n_bytes;
    }
    kv_gguf_close(g);
    snprintf(buf, cap, "%s %s %s%s", mi->arch, size, qz_ftype_name(ft), guessed ? " (guessed)" : "");
}

static void cpu_info(char *buf, size_t cap) {
    snprintf(buf, cap, "CPU");
    FILE *fp = fopen("/proc/cpuinfo", "r");
    if (!fp) return;
    char line[512];
    while (fgets(line, sizeof line, fp))
        if (strncmp(line, "model name", 10) == 0) {
            const char *c = strchr(line, ':');
            if (c) {
                c++;
                while (*c == ' ' || *c == '\t') c++;
                snprintf(buf, cap, "%.*s", (int)strcspn(c, "\n"), c);
            }
            break;
        }
    fclose(fp);
}

static const char *kv_type_name(int t) {
    switch (t) {
    case KVLM_KV_F32: return "f32";
    case KVLM_KV_F16: return "f16";
    case KVLM_KV_Q8_0: return "q8_0";
    case KVLM_KV_Q4_0: return "q4_0";
    default: return "?";
    }
}

/* One test's result, in llama-bench's fields. */
typedef struct bench_test {
    int n_threads, type_k, type_v, n_prompt, n_gen, n_depth, reps;
    double *ns; /* reps samples */
    char test_time[32];
} bench_test;

enum { T_STR, T_INT, T_BOOL, T_FLOAT };
static const struct {
    const char *name;
    int type;
} k_fields[] = {
    {"build_commit", T_STR}, {"build_number", T_INT}, {"cpu_info", T_STR},     {"gpu_info", T_STR},
    {"backends", T_STR},     {"model_filename", T_STR}, {"model_type", T_STR}, {"model_size", T_INT},
    {"model_n_params", T_INT}, {"n_batch", T_INT},    {"n_ubatch", T_INT},     {"n_threads", T_INT},
    {"type_k", T_STR},       {"type_v", T_STR},       {"n_gpu_layers", T_INT}, {"flash_attn", T_BOOL},
    {"use_mmap", T_BOOL},    {"embeddings", T_BOOL},  {"n_prompt", T_INT},     {"n_gen", T_INT},
    {"n_depth", T_INT},      {"test_time", T_STR},    {"avg_ns", T_INT},       {"stddev_ns", T_INT},
    {"avg_ts", T_FLOAT},     {"stddev_ts", T_FLOAT},
};
#define N_FIELDS (sizeof k_fields / sizeof k_fields[0])

typedef struct bench_ctx {
    const char *model_filename;
    char model_type[128], cpu[256];
    uint64_t model_size, model_n_params;
} bench_ctx;

static stats ts_stats(const bench_test *t) {
    double v[1024];
    const int n = t->reps < 1024 ? t->reps : 1024;
    for (int r = 0; r < n; r++) v[r] = 1e9 * (t->n_prompt + t->n_gen) / t->ns[r];
    return summarize(v, n);
}

/* Field i of test t as text (strings unquoted). */
static void field_value(const bench_ctx *c, const bench_test *t, size_t i, char *buf, size_t cap) {
    const char *f = k_fields[i].name;
    const stats st = ts_stats(t), sn = summarize(t->ns, t->reps);
#define IS(x) (strcmp(f, x) == 0)
    if (IS("build_commit")) snprintf(buf, cap, "%s", KVLM_BUILD_COMMIT);
    else if (IS("build_number")) snprintf(buf, cap, "%d", KVLM_BUILD_NUMBER);
    else if (IS("cpu_info")) snprintf(buf, cap, "%s", c->cpu);
    else if (IS("gpu_info")) snprintf(buf, cap, "%s", "");
    else if (IS("backends")) snprintf(buf, cap, "CPU");
    else if (IS("model_filename")) snprintf(buf, cap, "%s", c->model_filename);
    else if (IS("model_type")) snprintf(buf, cap, "%s", c->model_type);
    else if (IS("model_size")) snprintf(buf, cap, "%llu", (unsigned long long)c->model_size);
    else if (IS("model_n_params")) snprintf(buf, cap, "%llu", (unsigned long long)c->model_n_params);
    else if (IS("n_batch") || IS("n_ubatch")) snprintf(buf, cap, "256");
    else if (IS("n_threads")) snprintf(buf, cap, "%d", t->n_threads);
    else if (IS("type_k")) snprintf(buf, cap, "%s", kv_type_name(t->type_k));
    else if (IS("type_v")) snprintf(buf, cap, "%s", kv_type_name(t->type_v));
    else if (IS("n_gpu_layers")) snprintf(buf, cap, "0");
    else if (IS("flash_attn") || IS("embeddings")) snprintf(buf, cap, "0");
    else if (IS("use_mmap")) snprintf(buf, cap, "1");
    else if (IS("n_prompt")) snprintf(buf, cap, "%d", t->n_prompt);
    else if (IS("n_gen")) snprintf(buf, cap, "%d", t->n_gen);
    else if (IS("n_depth")) snprintf(buf, cap, "%d", t->n_depth);
    else if (IS("test_time")) snprintf(buf, cap, "%s", t->test_time);
    else if (IS("avg_ns")) snprintf(buf, cap, "%.0f", sn.avg);
    else if (IS("stddev_ns")) snprintf(buf, cap, "%.0f", sn.sd);
    else if (IS("avg_ts")) snprintf(buf, cap, "%.6f", st.avg);
    else if (IS("stddev_ts")) snprintf(buf, cap, "%.6f", st.sd);
    else buf[0] = '\0';
#undef IS
}

static void print_json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        const unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') printf("\\%c", ch);
        else if (ch < 0x20) printf("\\u%04x", ch);
        else putchar(ch);
    }
    putchar('"');
}

static void print_json_fields(const bench_ctx *c, const bench_test *t, bool lines) {
    char v[512];
    for (size_t i = 0; i < N_FIELDS; i++) {
        field_value(c, t, i, v, sizeof v);
        printf(lines ? "    \"%s\": " : "\"%s\": ", k_fields[i].name);
        if (k_fields[i].type == T_STR) print_json_string(v);
        else if (k_fields[i].type == T_BOOL) printf("%s", strcmp(v, "0") ? "true" : "false");
        else printf("%s", v);
        printf(lines ? ",\n" : ", ");
    }
    printf(lines ? "    \"samples_ns\": [ " : "\"samples_ns\": [ ");
    for (int r = 0; r < t->reps; r++) printf("%s%.0f", r ? ", " : "", t->ns[r]);
    printf(lines ? " ],\n    \"samples_ts\": [ " : " ],\"samples_ts\": [ ");
    for (int r = 0; r < t->reps; r++) printf("%s%g", r ? ", " : "", 1e9 * (t->n_prompt + t->n_gen) / t->ns[r]);
    printf(lines ? " ]\n" : " ]");
}

/* The markdown table's columns: llama-bench's, type_k/type_v/n_depth when not the default. */
typedef struct md_cols {
    bool type_k, type_v;
} md_cols;

static void md_header(const md_cols *mc) {
    printf("| %-30s | %10s | %10s | %-10s | %7s |", "model", "size", "params", "backend", "threads");
    if (mc->type_k) printf(" %6s |", "type_k");
    if (mc->type_v) printf(" %6s |", "type_v");
    printf(" %13s | %20s |\n", "test", "t/s");
    printf("| %s | %s: | %s: | %s- | %s: |", "------------------------------", "---------", "---------", "---------",
           "------");
    if (mc->type_k) printf(" -----: |");
    if (mc->type_v) printf(" -----: |");
    printf(" ------------: | -------------------: |\n");
}

static void md_row(const bench_ctx *c, const md_cols *mc, const bench_test *t) {
    char size[32], params[32], test[48], ts[64];
    if (c->model_size < 1024ull * 1024 * 1024) snprintf(size, sizeof size, "%.2f MiB", c->model_size / 1048576.0);
    else snprintf(size, sizeof size, "%.2f GiB", c->model_size / 1073741824.0);
    if (c->model_n_params < 1000000000ull) snprintf(params, sizeof params, "%.2f M", c->model_n_params / 1e6);
    else snprintf(params, sizeof params, "%.2f B", c->model_n_params / 1e9);
    if (t->n_prompt > 0 && t->n_gen == 0) snprintf(test, sizeof test, "pp%d", t->n_prompt);
    else if (t->n_gen > 0 && t->n_prompt == 0) snprintf(test, sizeof test, "tg%d", t->n_gen);
    else snprintf(test, sizeof test, "pp%d+tg%d", t->n_prompt, t->n_gen);
    if (t->n_depth > 0) {
        const size_t l = strlen(test);
        snprintf(test + l, sizeof test - l, " @ d%d", t->n_depth);
    }
    const stats st = ts_stats(t);
    snprintf(ts, sizeof ts, "%.2f \xc2\xb1 %.2f", st.avg, st.sd);
    printf("| %-30s | %10s | %10s | %-10s | %7d |", c->model_type, size, params, "CPU", t->n_threads);
    if (mc->type_k) printf(" %6s |", kv_type_name(t->type_k));
    if (mc->type_v) printf(" %6s |", kv_type_name(t->type_v));
    printf(" %13s | %21s |\n", test, ts); /* the UTF-8 +- takes two bytes */
}

static void csv_row(const bench_ctx *c, const bench_test *t) {
    char v[512];
    for (size_t i = 0; i < N_FIELDS; i++) {
        field_value(c, t, i, v, sizeof v);
        putchar('"');
        for (const char *p = v; *p; p++) {
            if (*p == '"') putchar('"');
            putchar(*p);
        }
        putchar('"');
        putchar(i + 1 < N_FIELDS ? ',' : '\n');
    }
}

static void print_test(cli_output o, const bench_ctx *c, const md_cols *mc, const bench_test *t, bool first) {
    switch (o) {
    case CLI_OUT_MD: md_row(c, mc, t); break;
    case CLI_OUT_CSV: csv_row(c, t); break;
    case CLI_OUT_JSON:
        printf("%s  {\n", first ? "" : ",\n");
        print_json_fields(c, t, true);
        printf("  }");
        break;
    case CLI_OUT_JSONL:
        printf("{");
        print_json_fields(c, t, false);
        printf("}\n");
        break;
    }
    fflush(stdout);
}

static int list_or(const cli_list *l, int i, int def) { return l->n ? l->v[i] : def; }

int cmd_bench(int argc, char **argv) {
    cli_args a;
    if (!cli_parse(argc, argv, 2, &a)) return 2;
    if (a.help) {
        cli_usage("bench", stdout);
        return 0;
    }
    const bool grammar = a.grammar_file != NULL || a.json_schema_file != NULL;
    const bool special = a.tokenize || a.incremental || a.batch || grammar;
    if ((int)a.tokenize + (int)a.incremental + (int)a.batch + (int)grammar > 1) {
        fprintf(stderr, "error: give one of --incremental, --batch, --tokenize and --grammar\n");
        return 2;
    }
    if (special && (a.output != CLI_OUT_MD || a.b_prompt.n || a.b_depth.n || a.b_threads.n > 1 || a.b_gen.n > 1 ||
                    a.b_type_k.n > 1 || a.b_type_v.n > 1 || (a.cpu_time && !a.batch))) {
        fprintf(stderr, "error: --incremental, --batch, --tokenize and --grammar print their own table: they take -r, -t N, "
                        "one -n (--batch, --grammar) and one -ctk/-ctv, not -p, -d, lists or -o (--cpu-time: --batch only)\n");
        return 2;
    }
    if (a.file && !a.tokenize && !grammar) {
        fprintf(stderr, "error: -f is for --tokenize and --grammar (the prompts of pp tests are random tokens)\n");
        return 2;
    }
    if (a.b_type_k.n == 1) a.sp.cache_params.type_k = (kvlm_kv_type)a.b_type_k.v[0];
    if (a.b_type_v.n == 1) a.sp.cache_params.type_v = (kvlm_kv_type)a.b_type_v.v[0];
    kvlm_model *m = a.tokenize || grammar ? cli_load_vocab(&a) : cli_load_model(&a);
    if (!m) return 1;
    int rc = 0;
    g_cpu_time = a.cpu_time;
    if (special) {
        rc = grammar      ? cli_grammar_bench(m, &a)
             : a.tokenize ? bench_tokenize(m, &a)
             : a.batch    ? bench_batch(m, &a)
                          : bench_incremental(m, &a);
        kvlm_model_free(m);
        return rc;
    }
    kvlm_model_info mi;
    kvlm_model_get_info(m, &mi);
    bench_ctx c = {.model_filename = a.model, .model_size = mi.weight_bytes, .model_n_params = mi.n_params};
    model_type(a.model, &mi, c.model_type, sizeof c.model_type, &c.model_size);
    cpu_info(c.cpu, sizeof c.cpu);
    const int reps = a.reps;
    const md_cols mc = {
        .type_k = a.b_type_k.n > 1 || list_or(&a.b_type_k, 0, KVLM_KV_F16) != KVLM_KV_F16,
        .type_v = a.b_type_v.n > 1 || list_or(&a.b_type_v, 0, KVLM_KV_F16) != KVLM_KV_F16,
    };
    const int def_threads = cli_default_threads();
    const int n_tk = a.b_type_k.n ? a.b_type_k.n : 1, n_tv = a.b_type_v.n ? a.b_type_v.n : 1;
    const int n_th = a.b_threads.n ? a.b_threads.n : 1, n_d = a.b_depth.n ? a.b_depth.n : 1;
    const int n_pp = a.b_prompt.n ? a.b_prompt.n : 1, n_tg = a.b_gen.n ? a.b_gen.n : 1;
    if (a.output == CLI_OUT_MD) md_header(&mc);
    else if (a.output == CLI_OUT_CSV)
        for (size_t i = 0; i < N_FIELDS; i++) printf("%s%c", k_fields[i].name, i + 1 < N_FIELDS ? ',' : '\n');
    else if (a.output == CLI_OUT_JSON) printf("[\n");
    bool first = true;
    double *ns = malloc((size_t)reps * sizeof *ns);
    if (!ns) {
        fprintf(stderr, "error: out of memory\n");
        kvlm_model_free(m);
        return 1;
    }
    /* llama-bench's order: cache types, then threads, then the tests (prompts, then generations) */
    for (int ik = 0; ik < n_tk && !rc; ik++)
        for (int iv = 0; iv < n_tv && !rc; iv++)
            for (int it = 0; it < n_th && !rc; it++)
                for (int id = 0; id < n_d && !rc; id++)
                    for (int k = 0; k < n_pp + n_tg && !rc; k++) {
                        bench_test t = {
                            .type_k = list_or(&a.b_type_k, ik, a.sp.cache_params.type_k),
                            .type_v = list_or(&a.b_type_v, iv, a.sp.cache_params.type_v),
                            .n_threads = list_or(&a.b_threads, it, def_threads),
                            .n_depth = list_or(&a.b_depth, id, 0),
                            .n_prompt = k < n_pp ? list_or(&a.b_prompt, k, 128) : 0,
                            .n_gen = k < n_pp ? 0 : list_or(&a.b_gen, k - n_pp, 64),
                            .reps = reps,
                            .ns = ns,
                        };
                        if (t.n_prompt + t.n_gen == 0) continue; /* -p 0 or -n 0: no such test */
                        kvlm_session_params sp = cli_session_params(&a);
                        sp.n_threads = t.n_threads;
                        sp.cache_params.type_k = (kvlm_kv_type)t.type_k;
                        sp.cache_params.type_v = (kvlm_kv_type)t.type_v;
                        {
                            /* the count the sessions really use */
                            kvlm_session_params probe = sp;
                            probe.n_ctx = 16;
                            kvlm_session *s = NULL;
                            kvlm_error err;
                            if (kvlm_session_new(m, &probe, &s, &err) == KVLM_OK) {
                                cli_args na = a;
                                na.n_threads = t.n_threads;
                                t.n_threads = cli_note_threads(&na, s);
                            }
                            kvlm_session_free(s);
                        }
                        time_t now = time(NULL);
                        strftime(t.test_time, sizeof t.test_time, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
                        kvlm_error err;
                        bool ok = true;
                        /* warm-up: the prompt test once, or one generated token */
                        run_once(m, &sp, t.n_depth, t.n_prompt, t.n_prompt ? 0 : 1, 1, &err, &ok);
                        for (int r = 0; r < reps && ok; r++)
                            ns[r] = run_once(m, &sp, t.n_depth, t.n_prompt, t.n_gen, 2 + (uint32_t)r, &err, &ok) * 1e9;
                        if (!ok) {
                            fprintf(stderr, "error: %s\n", err.msg);
                            rc = 1;
                            break;
                        }
                        print_test(a.output, &c, &mc, &t, first);
                        first = false;
                    }
    free(ns);
    if (a.output == CLI_OUT_JSON) printf("\n]\n");
    else if (a.output == CLI_OUT_MD && !rc) printf("\nbuild: %s (%d)\n", KVLM_BUILD_COMMIT, KVLM_BUILD_NUMBER);
    kvlm_model_free(m);
    return rc;
}
