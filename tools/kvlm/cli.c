#include "cli.h"

#include <errno.h>
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

static bool parse_int(const char *flag, const char *s, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < -1000000000L || v > 1000000000L) {
        fprintf(stderr, "error: %s expects an integer, got '%s'\n", flag, s);
        return false;
    }
    *out = (int)v;
    return true;
}

bool cli_parse(int argc, char **argv, int first, cli_args *a) {
    memset(a, 0, sizeof *a);
    a->n_predict = 32;
    a->n_threads = 1;
    for (int i = first; i < argc; i++) {
        const char *f = argv[i];
#define STR(name, field) else if (strcmp(f, name) == 0) { if (!need(argc, argv, i)) return false; a->field = argv[++i]; }
#define INT(name, field) else if (strcmp(f, name) == 0) { if (!need(argc, argv, i) || !parse_int(f, argv[i + 1], &a->field)) return false; i++; }
        if (strcmp(f, "-h") == 0 || strcmp(f, "--help") == 0) a->help = true;
        STR("-m", model) STR("--model", model)
        STR("-p", prompt) STR("--prompt", prompt)
        STR("-f", file) STR("--file", file)
        STR("--tokens", tokens)
        STR("--dump-logits", dump_logits)
        INT("-n", n_predict) INT("--n-predict", n_predict)
        INT("-t", n_threads) INT("--threads", n_threads)
        INT("-c", n_ctx) INT("--ctx-size", n_ctx)
        INT("--greedy", greedy)
        else if (strcmp(f, "--no-bos") == 0) a->no_bos = true;
        else if (strcmp(f, "--no-parse-special") == 0) a->no_parse_special = true;
        else if (strcmp(f, "--ids") == 0) a->ids = true;
        else if (f[0] == '-' && f[1] != '\0') {
            fprintf(stderr, "error: unknown flag '%s'\n", f);
            return false;
        } else if (a->n_pos < 8) {
            a->pos[a->n_pos++] = f;
        } else {
            fprintf(stderr, "error: too many arguments\n");
            return false;
        }
#undef STR
#undef INT
    }
    if (a->n_threads < 1 || a->n_threads > 256) {
        fprintf(stderr, "error: -t must be in 1..256\n");
        return false;
    }
    return true;
}

static char *read_file(const char *path, size_t *len) {
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
    if (a->file) return read_file(a->file, len);
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
