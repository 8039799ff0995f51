#include "cli.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static bool need(int argc, char **argv, int i) {
    if (i + 1 >= argc) {
        fprintf(stderr, "error: %s needs a value\n", argv[i]);
        return false;
    }
    return true;
}

/* The values each integer flag accepts. */
static void int_range(const char *flag, long *lo, long *hi) {
    static const struct {
        const char *flag;
        long lo, hi;
    } k_ranges[] = {
        {"-n", -1, 1 << 24},         {"--n-predict", -1, 1 << 24}, {"-t", 1, 256},
        {"--threads", 1, 256},       {"-c", 0, 1 << 24},           {"--ctx-size", 0, 1 << 24},
        {"--greedy", 0, 1 << 24},    {"--chunk", 0, 1 << 24},      {"-r", 1, 1000000},
        {"--repetitions", 1, 1000000}, {"--chunks", 0, 1 << 24},   {"-d", 0, 1 << 24},
        {"--depth", 0, 1 << 24},     {"--top-k", -1, 1 << 24},     {"--repeat-last-n", -1, 1 << 24},
        {"--seed", -1, 2147483647L}, {"-s", -1, 2147483647L},      {"--keep", 0, 1 << 24},
        {"--sink", 0, 1 << 24},      {"--window", 0, 1 << 24},     {"--kv-compress-after", 0, 1 << 24},
        {"--page-tokens", 16, 256},  {"--kv-initial", 0, 1L << 30}, {"--kv-max", 16, 1L << 30},
    };
    *lo = -2147483647L;
    *hi = 2147483647L;
    for (size_t i = 0; i < sizeof k_ranges / sizeof k_ranges[0]; i++)
        if (strcmp(flag, k_ranges[i].flag) == 0) {
            *lo = k_ranges[i].lo;
            *hi = k_ranges[i].hi;
        }
}

static bool parse_int(const char *flag, const char *s, int *out) {
    long lo, hi;
    int_range(flag, &lo, &hi);
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "error: %s takes an integer in %ld..%ld, got '%s'\n", flag, lo, hi, s);
        return false;
    }
    *out = (int)v;
    return true;
}

static bool parse_float(const char *flag, const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || *end || end == s) {
        fprintf(stderr, "error: %s expects a number, got '%s'\n", flag, s);
        return false;
    }
    *out = v;
    return true;
}

static bool parse_kv_type(const char *flag, const char *s, kvlm_kv_type *out) {
    if (strcmp(s, "f32") == 0) *out = KVLM_KV_F32;
    else if (strcmp(s, "f16") == 0) *out = KVLM_KV_F16;
    else if (strcmp(s, "q8_0") == 0) *out = KVLM_KV_Q8_0;
    else if (strcmp(s, "q4_0") == 0) *out = KVLM_KV_Q4_0;
    else {
        fprintf(stderr, "error: %s: unknown cache type '%s' (f32, f16, q8_0, q4_0)\n", flag, s);
        return false;
    }
    return true;
}

const char *cli_kv_help(void) {
    return "KV cache: -ctk/--cache-type-k T, -ctv/--cache-type-v T (f32 f16 q8_0 q4_0; default f16),\n"
           "  --overflow error|shift|sliding|ring, --keep N (shift), --sink N (sliding), --window N (ring),\n"
           "  --kv-compress-after N [--kv-compress-type q8_0|q4_0], --page-tokens N, --kv-growth factor|linear|adaptive,\n"
           "  --kv-growth-factor F, --kv-initial N, --kv-max N, --no-prefix-sharing, --kv-prefetch, --kv-stats\n";
}

bool cli_parse(int argc, char **argv, int first, cli_args *a) {
    memset(a, 0, sizeof *a);
    a->n_threads = 1;
    a->n_prompt_bench = 128;
    a->reps = 5;
    a->sampling = kvlm_sampling_default_params();
    a->sampling.temperature = 0.0f; /* kvlm run is greedy unless --temp is given */
    a->sp = kvlm_session_default_params();
    /* sentinels, resolved after the loop: whether -n, --overflow and --keep were given */
    a->n_predict = INT32_MIN;
    a->sp.overflow = (kvlm_overflow)-1;
    a->sp.n_keep = -1;
    kvlm_cache_params *cp = &a->sp.cache_params;
    for (int i = first; i < argc; i++) {
        const char *f = argv[i];
#define IS(name) (strcmp(f, name) == 0)
#define STR(name, field) else if (IS(name)) { if (!need(argc, argv, i)) return false; a->field = argv[++i]; }
#define INT(name, field) else if (IS(name)) { if (!need(argc, argv, i) || !parse_int(f, argv[i + 1], &a->field)) return false; i++; }
#define FLT(name, field) else if (IS(name)) { if (!need(argc, argv, i) || !parse_float(f, argv[i + 1], &a->field)) return false; i++; }
        if (IS("-h") || IS("--help")) a->help = true;
        STR("-m", model) STR("--model", model)
        STR("-p", prompt) STR("--prompt", prompt)
        STR("-f", file) STR("--file", file)
        STR("--tokens", tokens)
        STR("--dump-logits", dump_logits)
        STR("--session", session)
        STR("--chat-template", chat_template)
        STR("--system", system)
        INT("-n", n_predict) INT("--n-predict", n_predict)
        INT("-t", n_threads) INT("--threads", n_threads)
        INT("-c", n_ctx) INT("--ctx-size", n_ctx)
        INT("--greedy", greedy)
        INT("--chunk", chunk)
        INT("-r", reps) INT("--repetitions", reps)
        INT("--chunks", n_chunks)
        INT("-d", depth) INT("--depth", depth)
        FLT("--top-p", sampling.top_p)
        FLT("--min-p", sampling.min_p)
        FLT("--repeat-penalty", sampling.repeat_penalty)
        FLT("--frequency-penalty", sampling.frequency_penalty)
        FLT("--presence-penalty", sampling.presence_penalty)
        INT("--top-k", sampling.top_k)
        INT("--repeat-last-n", sampling.penalty_last_n)
        else if (IS("--temp") || IS("--temperature")) {
            if (!need(argc, argv, i) || !parse_float(f, argv[i + 1], &a->sampling.temperature)) return false;
            a->temp_set = true;
            i++;
        } else if (IS("--seed") || IS("-s")) {
            int v;
            if (!need(argc, argv, i) || !parse_int(f, argv[i + 1], &v)) return false;
            a->sampling.seed = (uint64_t)(uint32_t)v;
            a->seed_set = true;
            i++;
        } else if (IS("--stop")) {
            if (!need(argc, argv, i)) return false;
            if (a->n_stop == CLI_MAX_STOP) {
                fprintf(stderr, "error: at most %d --stop strings\n", CLI_MAX_STOP);
                return false;
            }
            a->stop[a->n_stop++] = argv[++i];
        } else if (IS("--timeout")) {
            float v;
            if (!need(argc, argv, i) || !parse_float(f, argv[i + 1], &v)) return false;
            a->timeout_s = v;
            i++;
        }
        else if (IS("--ignore-eos")) a->ignore_eos = true;
        else if (IS("--no-bos")) a->no_bos = true;
        else if (IS("--no-parse-special")) a->no_parse_special = true;
        else if (IS("--ids")) a->ids = true;
        else if (IS("--json") || (IS("-o") && i + 1 < argc && strcmp(argv[i + 1], "json") == 0 && ++i)) a->json = true;
        else if (IS("--incremental")) a->incremental = true;
        else if (IS("--batch")) a->batch = true;
        else if (IS("--cpu-time")) a->cpu_time = true;
        else if (IS("--tokenize")) a->tokenize = true;
        else if (IS("--kv-stats")) a->kv_stats = true;
        else if (IS("--session-overwrite")) a->session_overwrite = true;
        else if (IS("-v") || IS("--verbose")) a->verbose = true;
        /* KV cache */
        else if (IS("-ctk") || IS("--cache-type-k")) {
            if (!need(argc, argv, i) || !parse_kv_type(f, argv[++i], &cp->type_k)) return false;
        } else if (IS("-ctv") || IS("--cache-type-v")) {
            if (!need(argc, argv, i) || !parse_kv_type(f, argv[++i], &cp->type_v)) return false;
        } else if (IS("--kv-compress-type")) {
            if (!need(argc, argv, i) || !parse_kv_type(f, argv[++i], &a->sp.compress_type)) return false;
        } else if (IS("--overflow")) {
            if (!need(argc, argv, i)) return false;
            const char *v = argv[++i];
            if (strcmp(v, "error") == 0) a->sp.overflow = KVLM_OVERFLOW_ERROR;
            else if (strcmp(v, "shift") == 0) a->sp.overflow = KVLM_OVERFLOW_SHIFT;
            else if (strcmp(v, "sliding") == 0) a->sp.overflow = KVLM_OVERFLOW_SLIDING;
            else if (strcmp(v, "ring") == 0) a->sp.overflow = KVLM_OVERFLOW_RING;
            else {
                fprintf(stderr, "error: --overflow: '%s' is not error, shift, sliding or ring\n", v);
                return false;
            }
        } else if (IS("--kv-growth")) {
            if (!need(argc, argv, i)) return false;
            const char *v = argv[++i];
            if (strcmp(v, "factor") == 0) cp->growth = KVLM_GROWTH_FACTOR;
            else if (strcmp(v, "linear") == 0) cp->growth = KVLM_GROWTH_LINEAR;
            else if (strcmp(v, "adaptive") == 0) cp->growth = KVLM_GROWTH_ADAPTIVE;
            else {
                fprintf(stderr, "error: --kv-growth: '%s' is not factor, linear or adaptive\n", v);
                return false;
            }
        }
        INT("--keep", sp.n_keep) INT("--sink", sp.n_sink) INT("--window", sp.window)
        INT("--kv-compress-after", sp.compress_after) INT("--page-tokens", sp.cache_params.page_tokens)
        FLT("--kv-growth-factor", sp.cache_params.growth_factor)
        else if (IS("--kv-initial") || IS("--kv-max")) {
            int v;
            if (!need(argc, argv, i) || !parse_int(f, argv[i + 1], &v)) return false;
            if (IS("--kv-initial")) cp->initial_tokens = v;
            else cp->max_tokens = v;
            i++;
        }
        else if (IS("--no-prefix-sharing")) cp->prefix_sharing = false;
        else if (IS("--kv-prefetch")) cp->prefetch = true;
        else if (f[0] == '-' && f[1] != '\0') {
            fprintf(stderr, "error: unknown flag '%s'\n", f);
            return false;
        } else if (a->n_pos < 8) {
            a->pos[a->n_pos++] = f;
        } else {
            fprintf(stderr, "error: too many arguments\n");
            return false;
        }
#undef IS
#undef STR
#undef INT
#undef FLT
    }
    a->n_predict_set = a->n_predict != INT32_MIN;
    if (!a->n_predict_set) a->n_predict = 32;
    a->overflow_set = (int)a->sp.overflow != -1;
    if (!a->overflow_set) a->sp.overflow = KVLM_OVERFLOW_ERROR;
    a->keep_set = a->sp.n_keep >= 0;
    if (!a->keep_set) a->sp.n_keep = 0;
    if (a->n_threads < 1 || a->n_threads > 256) {
        fprintf(stderr, "error: -t must be in 1..256\n");
        return false;
    }
    if (a->temp_set && a->sampling.temperature > 0 && !a->seed_set)
        a->sampling.seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
    return true;
}

kvlm_session_params cli_session_params(const cli_args *a) {
    kvlm_session_params p = a->sp;
    p.n_ctx = a->n_ctx;
    p.n_threads = a->n_threads;
    return p;
}

int cli_note_threads(const cli_args *a, const kvlm_session *s) {
    static bool noted = false;
    const int n = kvlm_session_n_threads(s);
    if (n < a->n_threads && !noted) {
        fprintf(stderr, "note: -t %d is more than the %d CPU%s this process may run on; using %d thread%s\n",
                a->n_threads, n, n == 1 ? "" : "s", n, n == 1 ? "" : "s");
        noted = true;
    }
    return n;
}

char *cli_read_file(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        fprintf(stderr, "error: cannot open '%s': %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, fp);
        n += r;
        if (n < cap) break;
        char *nb = realloc(buf, cap * 2 + 1);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    int bad = ferror(fp);
    fclose(fp);
    if (!buf || bad) {
        free(buf);
        fprintf(stderr, "error: cannot read '%s'\n", path);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

char *cli_prompt_text(const cli_args *a, size_t *len) {
    if (a->prompt) {
        *len = strlen(a->prompt);
        char *s = malloc(*len + 1);
        if (s) memcpy(s, a->prompt, *len + 1);
        return s;
    }
    if (a->file) return cli_read_file(a->file, len);
    fprintf(stderr, "error: give a prompt with -p TEXT or -f FILE\n");
    return NULL;
}

static kvlm_model *load(const cli_args *a, bool vocab_only) {
    if (!a->model) {
        fprintf(stderr, "error: give a model with -m FILE\n");
        return NULL;
    }
    kvlm_model_params mp = kvlm_model_default_params();
    mp.n_threads = a->n_threads;
    mp.vocab_only = vocab_only;
    kvlm_model *m = NULL;
    kvlm_error err;
    if (kvlm_model_load(a->model, &mp, &m, &err) != KVLM_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        return NULL;
    }
    return m;
}

kvlm_model *cli_load_model(const cli_args *a) { return load(a, false); }
kvlm_model *cli_load_vocab(const cli_args *a) { return load(a, true); }

kvlm_token *cli_tokenize(const kvlm_model *m, const char *text, size_t len, bool add_special, bool parse_special,
                         int32_t *n_out) {
    int32_t cap = (int32_t)(len > 1000000000 ? 1000000000 : len) + 8;
    kvlm_token *t = malloc((size_t)cap * sizeof *t);
    if (!t) return NULL;
    int32_t n = kvlm_tokenize(m, text, len, t, cap, add_special, parse_special);
    if (n < 0) {
        cap = -n;
        kvlm_token *nt = realloc(t, (size_t)cap * sizeof *t);
        if (!nt) {
            free(t);
            return NULL;
        }
        t = nt;
        n = kvlm_tokenize(m, text, len, t, cap, add_special, parse_special);
    }
    if (n < 0) {
        free(t);
        return NULL;
    }
    *n_out = n;
    return t;
}

int32_t cli_argmax(const float *logits, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

double cli_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void cli_print_kv_stats(const kvlm_session *s) {
    kvlm_kv_stats st;
    kvlm_session_get_stats(s, &st);
    char buf[2048];
    if (kvlm_kv_stats_json(&st, buf, sizeof buf) > 0) fprintf(stderr, "%s\n", buf);
}

int cli_print_token(const char *text, size_t len, kvlm_token tok, void *user_data) {
    (void)tok;
    (void)user_data;
    if (len) {
        fwrite(text, 1, len, stdout);
        fflush(stdout);
    }
    return 0;
}

static kvlm_session *volatile g_cancel_target;

static void on_sigint(int sig) {
    (void)sig;
    kvlm_session *s = g_cancel_target;
    if (s) kvlm_session_cancel(s); /* an atomic store: safe in a handler */
}

void cli_cancel_on_sigint(kvlm_session *s) {
    g_cancel_target = s;
    signal(SIGINT, s ? on_sigint : SIG_DFL);
}
