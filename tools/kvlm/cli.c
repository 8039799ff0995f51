/* Helpers of the kvlm command-line tool (the flags are in cli_flags.c). */
#define _GNU_SOURCE /* sched_getaffinity */
#include "cli.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__APPLE__)
#include <sys/sysctl.h>
#endif

#include "core/clock.h"

/* The lowest CPU number in a sysfs CPU list ("0-1", "2,6"), or -1. */
static int first_cpu_of(const char *path) {
    FILE *fp = fopen(path, "r");
    if (!fp) return -1;
    int c = -1;
    if (fscanf(fp, "%d", &c) != 1) c = -1;
    fclose(fp);
    return c;
}

int cli_default_threads(void) {
    static int cached = 0;
    if (cached > 0) return cached;
    int n = 0;
    /* KVLM_THREADS, like llama.cpp's LLAMA_ARG_THREADS, sets the default (the test suite runs with 1) */
    const char *env = getenv("KVLM_THREADS");
    if (env && *env) {
        char *end;
        const long v = strtol(env, &end, 10);
        if (!*end && v >= 1 && v <= 256) return cached = (int)v;
        fprintf(stderr, "warning: KVLM_THREADS='%s' is not a thread count in 1..256; ignored\n", env);
    }
#if defined(__linux__) && defined(CPU_COUNT)
    /* cores among the CPUs this process may run on: each core is named by the lowest
       CPU of its thread siblings, as llama.cpp counts distinct sibling sets */
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        static unsigned char core_seen[CPU_SETSIZE];
        memset(core_seen, 0, sizeof core_seen);
        int allowed = 0;
        bool topo = true;
        for (int c = 0; c < CPU_SETSIZE; c++) {
            if (!CPU_ISSET(c, &set)) continue;
            allowed++;
            char path[96];
            snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/thread_siblings_list", c);
            const int core = first_cpu_of(path);
            if (core < 0 || core >= CPU_SETSIZE) {
                topo = false;
                continue;
            }
            if (!core_seen[core]) n++;
            core_seen[core] = 1;
        }
        if (!topo) n = allowed;
    }
#elif defined(__APPLE__)
    int v = 0;
    size_t len = sizeof v;
    if (sysctlbyname("hw.perflevel0.physicalcpu", &v, &len, NULL, 0) == 0 ||
        sysctlbyname("hw.physicalcpu", &v, &len, NULL, 0) == 0)
        n = v;
#endif
    if (n < 1) {
        long on = sysconf(_SC_NPROCESSORS_ONLN);
        n = on < 1 ? 1 : (int)on;
    }
    cached = n > 256 ? 256 : n;
    return cached;
}

void cli_process_escapes(char *s) {
    char *o = s;
    for (const char *p = s; *p; p++) {
        if (*p != '\\' || !p[1]) {
            *o++ = *p;
            continue;
        }
        switch (*++p) {
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case '\'': *o++ = '\''; break;
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case 'x':
            if (p[1] && p[2]) {
                const char h[3] = {p[1], p[2], '\0'};
                char *end;
                const long v = strtol(h, &end, 16);
                if (end == h + 2 && v > 0) {
                    *o++ = (char)v;
                    p += 2;
                    break;
                }
            }
            /* fall through */
        default: /* kept as it is */
            *o++ = '\\';
            *o++ = *p;
            break;
        }
    }
    *o = '\0';
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
    const bool is_stdin = strcmp(path, "-") == 0;
    FILE *fp = is_stdin ? stdin : fopen(path, "rb");
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
    if (!is_stdin) fclose(fp);
    if (!buf || bad) {
        free(buf);
        fprintf(stderr, "error: cannot read '%s'\n", is_stdin ? "standard input" : path);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

char *cli_prompt_text(const cli_args *a, size_t *len) {
    const int given = (a->prompt != NULL) + (a->file != NULL) + a->use_stdin;
    if (given > 1) {
        fprintf(stderr, "error: give one of -p TEXT, -f FILE%s\n", strcmp(a->cmd, "tokenize") == 0 ? " and --stdin" : "");
        return NULL;
    }
    if (a->prompt) {
        *len = strlen(a->prompt);
        char *s = malloc(*len + 1);
        if (s) memcpy(s, a->prompt, *len + 1);
        return s;
    }
    if (a->file || a->use_stdin) return cli_read_file(a->file ? a->file : "-", len);
    fprintf(stderr, "error: give a prompt with -p TEXT or -f FILE%s\n",
            strcmp(a->cmd, "tokenize") == 0 ? " (or --stdin)" : "");
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

double cli_now_s(void) { return kv_now_s(); }

void cli_print_kv_stats(const kvlm_session *s) { cli_print_kv_stats_with(s, NULL); }

void cli_print_kv_stats_with(const kvlm_session *s, const char *extra) {
    kvlm_kv_stats st;
    kvlm_session_get_stats(s, &st);
    char buf[2048];
    int32_t n = kvlm_kv_stats_json(&st, buf, sizeof buf);
    if (n <= 0) return;
    if (extra && n > 1 && buf[n - 1] == '}') fprintf(stderr, "%.*s,%s}\n", (int)(n - 1), buf, extra);
    else fprintf(stderr, "%s\n", buf);
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

bool cli_grammar(const cli_args *a, const kvlm_model *m, kvlm_grammar **out) {
    *out = NULL;
    const bool schema = a->json_schema || a->json_schema_file || a->json_object;
    const char *file = schema ? a->json_schema_file : a->grammar_file;
    const char *inline_text = schema ? (a->json_object ? "{\"type\": \"object\"}" : a->json_schema) : a->grammar;
    const char *flag = schema ? (file ? "--json-schema-file " : a->json_object ? "-j" : "--json-schema")
                              : (file ? "--grammar-file " : "--grammar");
    if (!file && !inline_text) return true;
    size_t len = 0;
    char *text = file ? cli_read_file(file, &len) : NULL;
    if (file && !text) return false; /* cli_read_file said why */
    if (text && strlen(text) != len) {
        fprintf(stderr, "error: %s%s: the file holds a NUL byte\n", flag, file);
        free(text);
        return false;
    }
    kvlm_error err;
    kvlm_status st = schema ? kvlm_grammar_new_json_schema(m, text ? text : inline_text, out, &err)
                            : kvlm_grammar_new_gbnf(m, text ? text : inline_text, NULL, out, &err);
    if (st != KVLM_OK) fprintf(stderr, "error: %s%s: %s\n", flag, file ? file : "", err.msg);
    free(text);
    return st == KVLM_OK;
}

bool cli_check_bias(const cli_args *a, const kvlm_model *m) {
    const int32_t nv = kvlm_n_vocab(m);
    for (int i = 0; i < a->n_bias; i++)
        if (a->bias[i].token >= nv) {
            fprintf(stderr, "error: --logit-bias: token %d is outside the vocabulary (%d tokens)\n", a->bias[i].token, nv);
            return false;
        }
    return true;
}

void cli_progress_start(cli_progress *p, const char *what) {
    p->on = isatty(STDERR_FILENO) == 1;
    p->t0 = cli_now_s();
    p->last = 0;
    p->what = what;
}

static void fmt_secs(char *buf, size_t cap, double s) {
    if (!(s >= 0)) s = 0;
    if (s > 359999) s = 359999;
    const int t = (int)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%dh%02dm", t / 3600, t / 60 % 60);
    else if (t >= 60) snprintf(buf, cap, "%dm%02ds", t / 60, t % 60);
    else snprintf(buf, cap, "%ds", t);
}

void cli_progress_update(cli_progress *p, double done, double total, const char *detail) {
    if (!p->on) return;
    const double now = cli_now_s();
    if (done < total && now - p->last < 0.1) return;
    p->last = now;
    const double el = now - p->t0;
    char e[24], left[24] = "?";
    fmt_secs(e, sizeof e, el);
    if (done > 0 && total > 0) fmt_secs(left, sizeof left, el * (total - done) / done);
    fprintf(stderr, "\r\033[K%s: %3.0f%% (%.0f/%.0f) %s elapsed, %s left%s%s", p->what,
            total > 0 ? 100.0 * done / total : 0.0, done, total, e, left, detail ? "  " : "", detail ? detail : "");
    fflush(stderr);
}

void cli_progress_end(cli_progress *p) {
    if (!p->on) return;
    fprintf(stderr, "\r\033[K");
    fflush(stderr);
}

/* Loads --session FILE if something is there. A file that does not load is
 * not overwritten at the end unless --session-overwrite says so; what is not
 * a regular file is refused either way (saving would refuse it too). */
bool cli_use_session_file(kvlm_session *s, const cli_args *a) {
    struct stat stt;
    if (lstat(a->session, &stt) != 0) {
        if (errno == ENOENT) return true; /* created at the end */
        fprintf(stderr, "error: --session '%s': %s\n", a->session, strerror(errno));
        return false;
    }
    kvlm_error err;
    if (kvlm_session_load(s, a->session, &err) == KVLM_OK) {
        if (a->verbose) fprintf(stderr, "loaded %d tokens from %s\n", kvlm_session_n_past(s), a->session);
        return true;
    }
    if (!S_ISREG(stt.st_mode)) {
        fprintf(stderr, "error: %s\n", err.msg);
        return false;
    }
    if (!a->session_overwrite) {
        fprintf(stderr,
                "error: %s\nerror: '%s' could not be loaded, so it is not overwritten; pass --session-overwrite to "
                "replace it with this run's session\n",
                err.msg, a->session);
        return false;
    }
    fprintf(stderr, "warning: not using the session file (%s); it will be replaced (--session-overwrite)\n", err.msg);
    return true;
}
