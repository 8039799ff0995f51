/* The kvlm CLI's flags as a llama.cpp user expects them: each subcommand takes exactly the flags its
 * --help lists (with their defaults), threads default to the physical cores, seeds, sampling
 * defaults, escapes, standard input, tokenize's output, run's timings and context messages,
 * --logit-bias and --n-probs, chat's line editing and long lines, progress on a terminal. */
#define _GNU_SOURCE /* sched_getaffinity */
#include <math.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "grammar/grammar.h"
#include "test_util.h"

#include "kvlm.h"

#define KVLM KVLM_BIN_DIR "/kvlm"
#define MODELS KVLM_MODELS_DIR
#define AID MODELS "/llama/aidreams260K-f32.gguf"

static char g_out[1 << 20];

static int32_t argmax(const float *x, int32_t n) {
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

#define run(...) run_into(g_out, sizeof g_out, __VA_ARGS__)

/* ------------------------------------------------------------ --help and the flags taken */

#define MAX_FLAGS 128
typedef struct flag {
    char name[40], meta[40];
} flag;

typedef struct help {
    flag f[MAX_FLAGS];
    int n;
} help;

static bool is_meta(const char *t) {
    if (strchr(t, '|')) return true;
    for (const char *p = t; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || strchr("()+-", *p))) return false;
    return *t != '\0';
}

/* The flags of `kvlm CMD --help`: lines "  -n, --n-predict N   text"; *undocumented counts flags with a
 * value but no "(default" (paths, texts and repeatable values need none). */
static void read_help(const char *cmd, help *h, int *undocumented) {
    assert_int_equal(run("%s %s --help", KVLM, cmd), 0);
    char want[64];
    snprintf(want, sizeof want, "usage: kvlm %s", cmd);
    if (strncmp(g_out, want, strlen(want)) != 0) fail_msg("%s --help: %.80s", cmd, g_out);
    h->n = 0;
    *undocumented = 0;
    char *opts = strstr(g_out, "\noptions:\n");
    assert_non_null(opts);
    for (char *line = strtok(opts + 10, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "  -", 3) != 0) continue;
        char copy[512];
        snprintf(copy, sizeof copy, "%s", line);
        char *save, *tok = strtok_r(copy, " ", &save);
        int first = h->n;
        char meta[40] = "";
        for (; tok; tok = strtok_r(NULL, " ", &save)) {
            size_t l = strlen(tok);
            if (tok[0] == '-' && tok[1] && !is_meta(tok)) {
                if (tok[l - 1] == ',') tok[l - 1] = '\0';
                assert_true(h->n < MAX_FLAGS);
                snprintf(h->f[h->n++].name, sizeof h->f[0].name, "%s", tok);
            } else {
                if (is_meta(tok)) snprintf(meta, sizeof meta, "%s", tok);
                break;
            }
        }
        for (int i = first; i < h->n; i++) snprintf(h->f[i].meta, sizeof h->f[i].meta, "%s", meta);
        const bool free_text = strstr(line, "FILE") || strstr(line, "TEXT") || strstr(line, "OUT") ||
                               strstr(line, "IDS") || strstr(line, "STR") || strstr(line, "BIAS") ||
                               strstr(line, "NAME") || strstr(line, "the same as");
        if (meta[0] && !free_text && !strstr(line, "(default")) {
            (*undocumented)++;
            fprintf(stderr, "no default: kvlm %s: %s\n", cmd, line);
        }
    }
}

static const char *value_for(const char *meta) {
    static char alt[40];
    if (!meta[0]) return "";
    const char *bar = strchr(meta, '|');
    if (bar && meta[0] != 'T') {
        snprintf(alt, sizeof alt, "%.*s", (int)(bar - meta), meta);
        return alt;
    }
    static const char *const k[][2] = {
        {"N", "32"},     {"K", "32"},   {"LIST", "32"}, {"T", "q8_0"}, {"TYPES", "f16,q8_0"},     {"TEMP", "0.5"}, {"F", "1.5"},
        {"P", "0.5"},    {"R", "1.1"},  {"SEC", "1"},   {"FILE", "/dev/null"}, {"TEXT", "x"}, {"IDS", "1"},
        {"OUT", "/dev/null"}, {"STR", "x"}, {"NAME", "chatml"}, {"TOKEN(+|-)BIAS", "1+1"},
        {"ADDR", "127.0.0.1"}, {"KEY", "k"}, {"ORIGIN", "x"}, {"DIR", "/tmp/kvlm-test-cli-flags-disk"},
        {"BYTES", "1048576"},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        if (strcmp(meta, k[i][0]) == 0) return k[i][1];
    fail_msg("no test value for %s", meta);
    return "";
}

static const flag *find(const help *h, const char *name) {
    for (int i = 0; i < h->n; i++)
        if (strcmp(h->f[i].name, name) == 0) return &h->f[i];
    return NULL;
}

/* Every flag of every subcommand's --help, given to every subcommand: taken exactly where listed.
 * (serve's own flags, such as --port, are unknown to the others.) */
static void test_help_lists_exactly_the_flags(void **state) {
    (void)state;
    static const char *const cmds[] = {"run", "chat", "eval", "tokenize", "inspect", "perplexity", "bench", "serve"};
    enum { NC = sizeof cmds / sizeof cmds[0] };
    static help h[NC];
    help all = {.n = 0};
    for (int c = 0; c < NC; c++) {
        int undocumented;
        read_help(cmds[c], &h[c], &undocumented);
        if (undocumented) fail_msg("kvlm %s --help: %d flags with a value show no default", cmds[c], undocumented);
        assert_true(h[c].n >= 3);
        for (int i = 0; i < h[c].n; i++)
            if (!find(&all, h[c].f[i].name)) all.f[all.n++] = h[c].f[i];
    }
    assert_true(all.n > 60);
    for (int c = 0; c < NC; c++)
        for (int i = 0; i < all.n; i++) {
            const flag *mine = find(&h[c], all.f[i].name);
            const flag *f = mine ? mine : &all.f[i];
            bool serve_only = find(&h[NC - 1], f->name) != NULL;
            for (int o = 0; o < NC - 1; o++) serve_only = serve_only && !find(&h[o], f->name);
            const int rc = run("%s %s %s %s -h", KVLM, cmds[c], f->name, value_for(f->meta));
            if (mine && rc != 0) fail_msg("kvlm %s lists %s but refuses it: %s", cmds[c], f->name, g_out);
            if (!mine && rc != 2) fail_msg("kvlm %s takes %s, which its --help does not list", cmds[c], f->name);
            if (!mine && !strstr(g_out, serve_only ? "unknown flag" : "does not take"))
                fail_msg("kvlm %s %s: %s", cmds[c], f->name, g_out);
        }
    /* the two of the issue */
    assert_int_equal(run("%s run -m %s -p Once --dump-logits /tmp/x", KVLM, AID), 2);
    assert_non_null(strstr(g_out, "error: kvlm run does not take --dump-logits"));
    assert_int_equal(run("%s run -m %s -p Once --system hi", KVLM, AID), 2);
    assert_non_null(strstr(g_out, "error: kvlm run does not take --system"));
    assert_int_equal(run("%s run -m %s -p Once stray", KVLM, AID), 2);
    assert_non_null(strstr(g_out, "unexpected argument 'stray'"));
    /* serve caps requests by the context: the overflow policies are not its flags */
    assert_int_equal(run("%s serve -m %s --overflow shift", KVLM, AID), 2);
    assert_non_null(strstr(g_out, "error: kvlm serve does not take --overflow"));
}

/* ------------------------------------------------------------ threads */

/* Physical cores among the CPUs this process may run on, from /proc/cpuinfo's (physical id, core id). */
static int physical_cores(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    assert_int_equal(sched_getaffinity(0, sizeof set, &set), 0);
    FILE *fp = fopen("/proc/cpuinfo", "r");
    assert_non_null(fp);
    char line[512];
    int cpu = -1, phys = 0, n = 0, allowed = 0;
    long seen[1024];
    bool have_core_id = false;
    while (fgets(line, sizeof line, fp)) {
        int v;
        if (sscanf(line, "processor : %d", &v) == 1) cpu = v;
        else if (sscanf(line, "physical id : %d", &v) == 1) phys = v;
        else if (sscanf(line, "core id : %d", &v) == 1 && cpu >= 0 && cpu < CPU_SETSIZE && CPU_ISSET(cpu, &set)) {
            have_core_id = true;
            const long key = (long)phys * 100000 + v;
            bool dup = false;
            for (int i = 0; i < n; i++) dup = dup || seen[i] == key;
            if (!dup && n < 1024) seen[n++] = key;
        }
    }
    fclose(fp);
    for (int c = 0; c < CPU_SETSIZE; c++) allowed += CPU_ISSET(c, &set) ? 1 : 0;
    return have_core_id ? n : allowed;
}

static int default_in_help(const char *prefix) {
    assert_int_equal(run("%s %s run --help", prefix, KVLM), 0);
    const char *d = strstr(g_out, "threads (default: ");
    assert_non_null(d);
    return atoi(d + strlen("threads (default: "));
}

/* kvlm serve's start-up messages (stderr) up to its "ready" line, with the extra flags; then it is
 * stopped with SIGTERM. */
static void serve_ready_line(const char *flags, char *out, size_t cap) {
    char log[64];
    snprintf(log, sizeof log, "/tmp/kvlm-serve-%d.log", (int)getpid());
    const int rc = run_into(out, cap,
                            "env -u KVLM_THREADS %s serve -m %s --port 0 -c 64 --parallel 2 %s 2>%s & p=$!; "
                            "for i in $(seq 600); do grep -q 'ready' %s && break; sleep 0.1; done; "
                            "kill -TERM $p; wait $p; cat %s",
                            KVLM, AID, flags, log, log, log);
    unlink(log);
    if (rc != 0 || !strstr(out, "kvlm serve: ready")) fail_msg("serve %s: %s", flags, out);
}

static void test_threads_default(void **state) {
    (void)state;
    const int cores = physical_cores();
    assert_true(cores >= 1);
    assert_int_equal(default_in_help("env -u KVLM_THREADS"), cores);
    assert_int_equal(default_in_help("env KVLM_THREADS=3"), 3);
    /* one CPU allowed: one thread */
    if (system("taskset -c 0 true >/dev/null 2>&1") == 0) assert_int_equal(default_in_help("env -u KVLM_THREADS taskset -c 0"), 1);
    /* what bench really runs with: the default, and -t overrides it */
    assert_int_equal(run("env -u KVLM_THREADS %s bench -m %s -p 8 -n 0 -r 1 -o jsonl", KVLM, AID), 0);
    char want[64];
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    snprintf(want, sizeof want, "\"n_threads\": %d,", cores < cpus ? cores : (int)cpus);
    if (!strstr(g_out, want)) fail_msg("want %s: %s", want, g_out);
    assert_int_equal(run("env -u KVLM_THREADS %s bench -m %s -p 8 -n 0 -r 1 -o jsonl -t 1", KVLM, AID), 0);
    assert_non_null(strstr(g_out, "\"n_threads\": 1,"));
    /* every subcommand's --help says the same default; serve: also what its slot sessions run with */
    static const char *const cmds[] = {"chat", "eval", "perplexity", "serve", "synth", "quantize"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        assert_int_equal(run("env -u KVLM_THREADS %s %s --help", KVLM, cmds[i]), 0);
        const char *d = strstr(g_out, "threads (default: ");
        if (!d) fail_msg("kvlm %s --help: no threads default: %s", cmds[i], g_out);
        assert_int_equal(atoi(d + strlen("threads (default: ")), cores);
    }
    snprintf(want, sizeof want, "context 64, %d thread%s)", cores < cpus ? cores : (int)cpus,
             (cores < cpus ? cores : cpus) == 1 ? "" : "s");
    serve_ready_line("", g_out, sizeof g_out);
    if (!strstr(g_out, want)) fail_msg("want %s: %s", want, g_out);
    serve_ready_line("-t 1", g_out, sizeof g_out);
    assert_non_null(strstr(g_out, "context 64, 1 thread)"));
}

/* ------------------------------------------------------------ sampling */

static unsigned long long seed_of(const char *out) {
    const char *s = strstr(out, "\nseed: ");
    if (!s) fail_msg("no seed printed: %s", out);
    return strtoull(s + 7, NULL, 10);
}

/* No seed, or -1, is a random seed, printed; giving it back repeats the text. Sampling flags without
 * --temp sample at llama.cpp's 0.8. */
static void test_seed_and_default_temperature(void **state) {
    (void)state;
    static char a[1 << 20], b[1 << 20];
    assert_int_equal(run("%s run -m %s -p Once -n 24 --temp 0.9 2>&1 >/dev/null", KVLM, AID), 0);
    const unsigned long long s1 = seed_of(g_out);
    assert_int_equal(run("%s run -m %s -p Once -n 24 --temp 0.9 --seed -1 2>&1 >/dev/null", KVLM, AID), 0);
    const unsigned long long s2 = seed_of(g_out);
    assert_true(s1 != s2); /* two draws of 32 bits */
    assert_true(s1 != 4294967295ull && s2 != 4294967295ull);
    assert_int_equal(run("%s run -m %s -p Once -n 24 --temp 0.9 --seed -1 2>/dev/null", KVLM, AID), 0);
    snprintf(a, sizeof a, "%s", g_out);
    assert_int_equal(run("%s run -m %s -p Once -n 24 --temp 0.9 --seed -1 2>&1 >/dev/null", KVLM, AID), 0);
    const unsigned long long s3 = seed_of(g_out);
    assert_int_equal(run("%s run -m %s -p Once -n 24 --temp 0.9 --seed %llu 2>/dev/null", KVLM, AID, s3), 0);
    snprintf(b, sizeof b, "%s", g_out);
    assert_int_equal(run("%s run -m %s -p Once -n 24 --temp 0.9 --seed %llu 2>/dev/null", KVLM, AID, s3), 0);
    assert_string_equal(b, g_out); /* the printed seed repeats the run */
    (void)a;
    /* --top-k alone samples at 0.8: the same text as --temp 0.8, and says so */
    assert_int_equal(run("%s run -m %s -p Once -n 24 --top-k 5 --seed 11", KVLM, AID), 0);
    assert_non_null(strstr(g_out, "note: sampling at temperature 0.8"));
    assert_non_null(strstr(g_out, "\nseed: 11\n"));
    assert_int_equal(run("%s run -m %s -p Once -n 24 --top-k 5 --seed 11 2>/dev/null", KVLM, AID), 0);
    snprintf(a, sizeof a, "%s", g_out);
    assert_int_equal(run("%s run -m %s -p Once -n 24 --top-k 5 --seed 11 --temp 0.8 2>/dev/null", KVLM, AID), 0);
    assert_string_equal(a, g_out);
    /* greedy by default: no seed line; --temp 0 with a sampling flag stays greedy */
    assert_int_equal(run("%s run -m %s -p Once -n 24", KVLM, AID), 0);
    assert_null(strstr(g_out, "seed:"));
    assert_int_equal(run("%s run -m %s -p Once -n 24 2>/dev/null", KVLM, AID), 0);
    snprintf(a, sizeof a, "%s", g_out);
    assert_int_equal(run("%s run -m %s -p Once -n 24 --top-k 5 --temp 0 2>/dev/null", KVLM, AID), 0);
    assert_string_equal(a, g_out);
}

/* --logit-bias TOKEN(+|-)BIAS: banning the greedy first token changes it; bad values are refused. */
static void test_logit_bias(void **state) {
    (void)state;
    assert_int_equal(run("%s eval -m %s -p 'Once upon' --greedy 1 2>/dev/null", KVLM, AID), 0);
    const int first = atoi(g_out);
    assert_true(first > 0);
    assert_int_equal(run("%s run -m %s -p 'Once upon' -n 1 --n-probs 1 2>/dev/null", KVLM, AID), 0);
    char want[128];
    snprintf(want, sizeof want, "\n    0 ");
    const char *row = strstr(g_out, want);
    assert_non_null(row);
    char piece[64];
    assert_int_equal(sscanf(row + 7, "%63s", piece), 1);
    assert_int_equal(run("%s run -m %s -p 'Once upon' -n 1 --n-probs 1 --logit-bias %d-inf 2>/dev/null", KVLM, AID, first), 0);
    row = strstr(g_out, want);
    assert_non_null(row);
    char piece2[64];
    assert_int_equal(sscanf(row + 7, "%63s", piece2), 1);
    assert_string_not_equal(piece, piece2);
    /* +BIAS: a large enough bias makes token 300 the greedy choice (its probability before sampling stays low) */
    kvlm_model *m = NULL;
    kvlm_error err;
    assert_int_equal(kvlm_model_load(AID, NULL, &m, &err), KVLM_OK);
    char p300[64];
    const int32_t pl = kvlm_token_to_piece(m, 300, p300, sizeof p300 - 1, true);
    kvlm_model_free(m);
    assert_true(pl > 0);
    p300[pl] = '\0';
    assert_int_equal(run("%s run -m %s -p 'Once upon' -n 1 -l 300+100 --n-probs 1 2>/dev/null", KVLM, AID), 0);
    snprintf(want, sizeof want, "\n    0 '%s' ", p300);
    if (!strstr(g_out, want)) fail_msg("want %s: %s", want, g_out);
    const char *bad[] = {"5*1", "5+", "x+1", "5+-1", "5+1e99", "-3+1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(run("%s run -m %s -p Once --logit-bias '%s'", KVLM, AID, bad[i]), 2);
        if (!strstr(g_out, "takes TOKEN_ID(+|-)BIAS")) fail_msg("%s: %s", bad[i], g_out);
    }
    assert_int_equal(run("%s run -m %s -p Once --logit-bias 512+1", KVLM, AID), 1);
    assert_non_null(strstr(g_out, "token 512 is outside the vocabulary (512 tokens)"));
}

/* --n-probs N: each generated token's probability and the top N, as the library computes them from
 * the logits the generation saw. */
static void test_n_probs(void **state) {
    (void)state;
    assert_int_equal(run("%s run -m %s -p 'Once upon a time' -n 5 --n-probs 3 2>/dev/null", KVLM, AID), 0);
    const char *table = strstr(g_out, "token probabilities (the model's, before sampling); top 3:\n");
    assert_non_null(table);
    /* the reference: the prompt and the generated tokens through the library */
    kvlm_model *m = NULL;
    kvlm_error err;
    assert_int_equal(kvlm_model_load(AID, NULL, &m, &err), KVLM_OK);
    kvlm_token toks[64];
    int32_t n = kvlm_tokenize(m, "Once upon a time", 16, toks, 64, true, true);
    assert_true(n > 0);
    const int32_t V = kvlm_n_vocab(m);
    float *logits = malloc((size_t)V * sizeof *logits);
    assert_non_null(logits);
    const char *row = strchr(table, '\n') + 1;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(kvlm_eval_full(m, toks, n, logits, false, &err), KVLM_OK);
        kvlm_token top[3];
        float lp[3], tlp;
        toks[n] = argmax(logits, V);
        assert_int_equal(kvlm_logprobs(logits, V, toks[n], &tlp, 3, top, lp, &err), KVLM_OK);
        int idx;
        assert_int_equal(sscanf(row, "%d", &idx), 1);
        assert_int_equal(idx, i);
        const char *bar = strchr(row, '|');
        assert_non_null(bar);
        /* the token's probability: the number before the bar */
        const char *q = bar - 1;
        while (q > row && *q == ' ') q--;
        while (q > row && q[-1] != ' ') q--;
        const double p = strtod(q, NULL);
        if (fabs(p - exp((double)tlp)) > 1e-6) fail_msg("row %d: %g vs %g", i, p, exp((double)tlp));
        /* greedy: the token is the most probable */
        assert_int_equal(toks[n], top[0]);
        char line[512];
        snprintf(line, sizeof line, "%.*s", (int)(strchr(row, '\n') - row), row);
        const char *last = strrchr(line, ' ');
        assert_non_null(last);
        if (fabs(strtod(last + 1, NULL) - exp((double)lp[2])) > 1e-6) fail_msg("row %d: third probability", i);
        n++;
        row = strchr(row, '\n') + 1;
    }
    free(logits);
    kvlm_model_free(m);
    assert_int_equal(run("%s run -m %s -p Once -n 5 --n-probs 3 --overflow shift", KVLM, AID), 2);
    assert_int_equal(run("%s run -m %s -p Once -n 5 --n-probs 101", KVLM, AID), 2);
}

/* ------------------------------------------------------------ prompts */

static void write_file(const char *path, const char *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, n, fp), n);
    fclose(fp);
}

/* -p processes llama.cpp's escapes (\n \t \\ \" \' \xHH) unless --no-escape; -f takes the file as
 * it is, and -f - (tokenize: --stdin too) reads standard input. */
static void test_escapes_and_stdin(void **state) {
    (void)state;
    static char want[1 << 20], lit[1 << 20];
    char path[64];
    snprintf(path, sizeof path, "/tmp/kvlm-esc-%d.txt", (int)getpid());
    const char raw[] = "a\nb\tc\\d\"e'f\x41g \\q";
    write_file(path, raw, sizeof raw - 1);
    assert_int_equal(run("%s tokenize -m %s -f %s --ids", KVLM, AID, path), 0);
    snprintf(want, sizeof want, "%s", g_out);
    assert_int_equal(run("%s tokenize -m %s -p 'a\\nb\\tc\\\\d\\\"e\\'\"'\"'f\\x41g \\q' --ids", KVLM, AID), 0);
    assert_string_equal(g_out, want);
    /* --no-escape: the backslashes stay */
    const char lit_raw[] = "a\\nb";
    write_file(path, lit_raw, sizeof lit_raw - 1);
    assert_int_equal(run("%s tokenize -m %s -f %s --ids", KVLM, AID, path), 0);
    snprintf(lit, sizeof lit, "%s", g_out);
    assert_int_equal(run("%s tokenize -m %s -p 'a\\nb' --ids --no-escape", KVLM, AID), 0);
    assert_string_equal(g_out, lit);
    assert_string_not_equal(lit, want);
    /* standard input */
    write_file(path, raw, sizeof raw - 1);
    assert_int_equal(run("%s tokenize -m %s --stdin --ids < %s", KVLM, AID, path), 0);
    assert_string_equal(g_out, want);
    assert_int_equal(run("%s tokenize -m %s -f - --ids < %s", KVLM, AID, path), 0);
    assert_string_equal(g_out, want);
    assert_int_equal(run("%s run -m %s -f - -n 4 < %s 2>/dev/null", KVLM, AID, path), 0);
    assert_true(strncmp(g_out, raw, sizeof raw - 1) == 0);
    assert_int_equal(run("%s tokenize -m %s --stdin -p x", KVLM, AID), 2);
    assert_non_null(strstr(g_out, "give one of -p TEXT, -f FILE and --stdin"));
    /* --stop strings are escaped too: "\x2e" is "." (the greedy text has one) */
    assert_int_equal(run("%s run -m %s -p 'Once upon a time' -n 24 --stop '\\x2e' --no-escape 2>/dev/null", KVLM, AID), 0);
    assert_non_null(strchr(g_out, '.'));
    assert_int_equal(run("%s run -m %s -p 'Once upon a time' -n 24 --stop '\\x2e' 2>/dev/null", KVLM, AID), 0);
    assert_null(strchr(g_out, '.'));
    assert_true(strlen(g_out) > 20);
    unlink(path);
}

/* tokenize prints llama-tokenize's list and count. */
static void test_tokenize_output(void **state) {
    (void)state;
    assert_int_equal(run("%s tokenize -m %s/llama/synth15M-q8_0.gguf -p 'The quick brown fox jumps over the lazy dog.' --ids --show-count",
                         KVLM, MODELS),
                     0);
    assert_string_equal(g_out, "[1, 450, 4996, 17354, 1701, 29916, 432, 17204, 975, 278, 17366, 11203, 29889]\n"
                               "Total number of tokens: 13\n");
    assert_int_equal(run("%s tokenize -m %s/llama/synth15M-q8_0.gguf -p 'Hello world' --no-bos", KVLM, MODELS), 0);
    assert_string_equal(g_out, " 15043 -> ' Hello'\n  3186 -> ' world'\n");
}

/* ------------------------------------------------------------ run */

static void test_run_timings_and_context(void **state) {
    (void)state;
    assert_int_equal(run("%s run -m %s -p Once -n 8", KVLM, AID), 0);
    const char *load = strstr(g_out, "\nload time: ");
    const char *total = strstr(g_out, "\ntotal time: ");
    assert_non_null(load);
    assert_non_null(total);
    assert_true(strtod(load + 12, NULL) > 0);
    assert_true(strtod(total + 13, NULL) >= strtod(load + 12, NULL));
    assert_null(strstr(g_out, "warning:"));
    assert_null(strstr(g_out, "context of"));
    /* past the training context (128): a warning */
    assert_int_equal(run("%s run -m %s -p Once -n 8 -c 256", KVLM, AID), 0);
    assert_non_null(strstr(g_out, "warning: -c 256 is more than the 128 tokens the model was trained on"));
    /* the context fills: said, with the finish reason */
    assert_int_equal(run("%s run -m %s -p Once -n 100 -c 16 --ignore-eos", KVLM, AID), 0);
    assert_non_null(strstr(g_out, "finish: length (the context is full)"));
    assert_non_null(strstr(g_out, "generation stopped because the context of 16 tokens is full"));
    /* -n reached first: not the context */
    assert_int_equal(run("%s run -m %s -p Once -n 4 -c 16 --ignore-eos", KVLM, AID), 0);
    assert_null(strstr(g_out, "is full"));
    /* a policy goes on: not full either */
    assert_int_equal(run("%s run -m %s -p Once -n 40 -c 16 --overflow shift --ignore-eos", KVLM, AID), 0);
    assert_null(strstr(g_out, "is full"));
    assert_non_null(strstr(g_out, "generation: 40 tokens"));
}

/* ------------------------------------------------------------ chat */

/* On a terminal (script(1) gives chat one) the line has libedit's editing and history: "ello",
 * Ctrl-A, "H" is "Hello", and Up repeats it. From a pipe, a 20 KB line is one turn. */
static void test_chat_line_editing(void **state) {
    (void)state;
    static char piped[1 << 14];
    assert_int_equal(run("printf 'Hello\\n' | %s chat -m %s -n 8 -v 2>&1", KVLM, AID), 0);
    const char *ans = strstr(g_out, "> ");
    assert_non_null(ans);
    const char *end = strstr(ans, "\n[");
    assert_non_null(end);
    snprintf(piped, sizeof piped, "%.*s", (int)(end - ans - 2), ans + 2); /* the answer */
    assert_true(strlen(piped) > 2);
    assert_int_equal(run("(sleep 1; printf 'ello\\001H\\r'; sleep 1; printf '\\033[A\\r'; sleep 1; printf '/quit\\r') | "
                         "script -qec '%s chat -m %s -n 8 -v' /dev/null",
                         KVLM, AID),
                     0);
    /* two answers, each the piped one, and the first with the piped prompt's tokens */
    const char *a1 = strstr(g_out, piped);
    if (!a1) fail_msg("no '%s' in %s", piped, g_out);
    assert_non_null(strstr(a1 + 1, piped));
    assert_non_null(strstr(g_out, "[19 prompt tokens, 0 cached, 8 generated"));
    /* a line of 20000 bytes: one turn */
    char path[64];
    snprintf(path, sizeof path, "/tmp/kvlm-long-%d.txt", (int)getpid());
    static char longline[20002];
    for (int i = 0; i < 4000; i++) memcpy(longline + 5 * i, "word ", 5);
    longline[20000] = '\n';
    write_file(path, longline, 20001);
    /* a small context: the line is still one turn (the context shifts), without the cost of attending
     * over 8192 tokens (minutes under ASan) */
    assert_int_equal(run("%s chat -m %s -n 4 -v -c 256 < %s 2>&1", KVLM, AID, path), 0);
    int turns = 0;
    for (const char *p = g_out; (p = strstr(p, " generated, ")) != NULL; p++) turns++;
    assert_int_equal(turns, 1);
    /* all 20000 bytes in that turn (about 12000 tokens; a cut at 8 KiB would leave under 5000) */
    const char *pt = strstr(g_out, " prompt tokens, 0 cached,");
    assert_non_null(pt);
    while (pt > g_out && pt[-1] != '[') pt--;
    assert_true(atoi(pt) > 10000);
    unlink(path);
}

/* ------------------------------------------------------------ grammars */

/* run --grammar TEXT and --grammar-file FILE constrain the output and end with "stop" when the
 * grammar is finished; chat takes them too; a malformed grammar is an error with its position;
 * bench --grammar FILE times masks on a vocabulary. */
static void test_grammar_flags(void **state) {
    (void)state;
    static const char *g = "root ::= (\"yes\" | \"no\") \"!\"";
    for (int seed = 1; seed <= 4; seed++) {
        assert_int_equal(run("%s run -m %s -p Hi -n 20 --temp 1 --seed %d --grammar '%s'", KVLM, AID, seed, g), 0);
        if (!strstr(g_out, "Hiyes!\n") && !strstr(g_out, "Hino!\n")) fail_msg("seed %d: %s", seed, g_out);
        assert_non_null(strstr(g_out, "finish: stop"));
    }
    char path[64];
    snprintf(path, sizeof path, "/tmp/kvlm-grammar-%d.gbnf", (int)getpid());
    static const char file[] = "# digits, then a dot\nroot ::= [0-9]{3} \".\"\n";
    write_file(path, file, sizeof file - 1);
    assert_int_equal(run("%s run -m %s -p Hi -n 20 --grammar-file %s", KVLM, AID, path), 0);
    const char *o = strstr(g_out, "Hi");
    assert_non_null(o);
    for (int i = 0; i < 3; i++) assert_true(o[2 + i] >= '0' && o[2 + i] <= '9');
    assert_int_equal(o[5], '.');
    assert_int_equal(o[6], '\n');
    assert_non_null(strstr(g_out, "finish: stop"));
    /* chat: the answer is a string of the grammar */
    assert_int_equal(run("printf 'Hello\\n' | %s chat -m %s -n 20 --grammar-file %s 2>&1", KVLM, AID, path), 0);
    const char *ans = strstr(g_out, "> ");
    assert_non_null(ans);
    for (int i = 0; i < 3; i++) assert_true(ans[2 + i] >= '0' && ans[2 + i] <= '9');
    assert_int_equal(ans[5], '.');
    /* bench --grammar on a vocabulary */
    assert_int_equal(run("%s bench -m %s/vocab/ggml-vocab-llama-spm.gguf --grammar %s -n 8 -r 1", KVLM, MODELS, path), 0);
    assert_non_null(strstr(g_out, "| mask, as generation computes it (cached)"));
    assert_non_null(strstr(g_out, "32000 tokens"));
    /* errors */
    assert_int_equal(run("%s run -m %s -p Hi --grammar 'root ::= [a-'", KVLM, AID), 1);
    assert_non_null(strstr(g_out, "error: --grammar: grammar: line 1, column"));
    write_file(path, "root ::= \"a\"\nroot ::= x\n", 23);
    assert_int_equal(run("%s run -m %s -p Hi --grammar-file %s", KVLM, AID, path), 1);
    assert_non_null(strstr(g_out, "line 2, column 1: rule 'root' is defined twice"));
    assert_int_equal(run("%s run -m %s -p Hi --grammar x --grammar-file %s", KVLM, AID, path), 2);
    assert_non_null(strstr(g_out, "two grammars"));
    assert_int_equal(run("%s bench -m %s --grammar %s --batch", KVLM, AID, path), 2);
    unlink(path);
    assert_int_equal(run("%s run -m %s -p Hi --grammar-file %s", KVLM, AID, path), 1);
    assert_non_null(strstr(g_out, path));
}

/* run/chat --json-schema TEXT, --json-schema-file FILE and -j constrain the output to JSON of the
 * schema (checked with cJSON here), -j to any object (a prefix the object grammar allows, and the
 * same text as --json-schema '{"type":"object"}'); bench --json-schema FILE; the errors. */
static void test_json_schema_flags(void **state) {
    (void)state;
    static const char *schema =
        "{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":99},"
        "\"c\":{\"enum\":[\"x\",\"y\"]}},\"required\":[\"n\",\"c\"],\"additionalProperties\":false}";
    char path[64];
    snprintf(path, sizeof path, "/tmp/kvlm-schema-%d.json", (int)getpid());
    write_file(path, schema, strlen(schema));
    for (int seed = 1; seed <= 4; seed++) {
        assert_int_equal(run("%s run -m %s -p Hi -n 120 --temp 1 --seed %d --json-schema '%s' 2>/dev/null", KVLM, AID, seed, schema), 0);
        char first[4096];
        assert_true(strlen(g_out) < sizeof first);
        memcpy(first, g_out, strlen(g_out) + 1);
        assert_int_equal(strncmp(first, "Hi", 2), 0);
        cJSON *j = cJSON_Parse(first + 2);
        if (!j) fail_msg("seed %d: not JSON: %s", seed, first);
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(j, "n"), *c = cJSON_GetObjectItemCaseSensitive(j, "c");
        assert_true(cJSON_IsNumber(n) && n->valuedouble >= 0 && n->valuedouble <= 99 && n->valuedouble == (int)n->valuedouble);
        assert_true(cJSON_IsString(c) && (!strcmp(c->valuestring, "x") || !strcmp(c->valuestring, "y")));
        assert_int_equal(cJSON_GetArraySize(j), 2);
        cJSON_Delete(j);
        /* the file gives the same text; the run ends with stop */
        assert_int_equal(run("%s run -m %s -p Hi -n 120 --temp 1 --seed %d --json-schema-file %s 2>&1", KVLM, AID, seed, path), 0);
        assert_int_equal(strncmp(g_out, first, strlen(first)), 0);
        assert_non_null(strstr(g_out, "finish: stop"));
    }
    /* -j: any object; the same text as the schema {"type":"object"} */
    char *gbnf = NULL;
    assert_int_equal(kvlm_json_schema_to_gbnf("{\"type\":\"object\"}", &gbnf, NULL), KVLM_OK);
    kv_grammar *g = NULL;
    assert_int_equal(kv_grammar_parse(gbnf, strlen(gbnf), NULL, &g, NULL), KVLM_OK);
    kvlm_string_free(gbnf);
    for (int seed = 1; seed <= 3; seed++) {
        assert_int_equal(run("%s run -m %s -p Hi -n 40 --temp 1 --seed %d -j 2>/dev/null", KVLM, AID, seed), 0);
        char first[4096];
        assert_true(strlen(g_out) < sizeof first);
        memcpy(first, g_out, strlen(g_out) + 1);
        assert_int_equal(strncmp(first, "Hi{", 3), 0);
        size_t len = strlen(first);
        assert_true(len > 3 && first[len - 1] == '\n');
        kv_gstate *st = NULL;
        assert_int_equal(kv_gstate_new(g, NULL, &st, NULL), KVLM_OK);
        if (!kv_gstate_accept_bytes(st, first + 2, len - 3)) fail_msg("seed %d: not an object's prefix: %s", seed, first);
        kv_gstate_free(st);
        assert_int_equal(run("%s run -m %s -p Hi -n 40 --temp 1 --seed %d --json-schema '{\"type\":\"object\"}' 2>/dev/null",
                             KVLM, AID, seed), 0);
        assert_string_equal(g_out, first);
    }
    kv_grammar_free(g);
    /* chat: the answer is JSON of the schema */
    assert_int_equal(run("printf 'Hello\\n' | %s chat -m %s -n 120 --temp 1 --seed 5 --json-schema-file %s 2>/dev/null", KVLM, AID, path), 0);
    cJSON *j = cJSON_Parse(g_out);
    if (!j) fail_msg("chat: not JSON: %s", g_out);
    assert_true(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "c")));
    cJSON_Delete(j);
    /* bench --json-schema FILE on a vocabulary */
    assert_int_equal(run("%s bench -m %s/vocab/ggml-vocab-llama-spm.gguf --json-schema %s -n 8 -r 1", KVLM, MODELS, path), 0);
    assert_non_null(strstr(g_out, "| mask, as generation computes it (cached)"));
    assert_non_null(strstr(g_out, "kvlm-schema-"));
    /* errors */
    assert_int_equal(run("%s run -m %s -p Hi --json-schema '{\"type\": \"object\",}'", KVLM, AID), 1);
    assert_non_null(strstr(g_out, "error: --json-schema: json schema: malformed JSON at line 1, column 19 (byte 18)"));
    assert_int_equal(run("%s run -m %s -p Hi --json-schema '{\"type\":\"string\",\"format\":\"email\"}'", KVLM, AID), 1);
    assert_non_null(strstr(g_out, "unsupported \"format\" \"email\""));
    write_file(path, "{\"properties\": {\"a\": {\"not\": {}}}}", 34);
    assert_int_equal(run("%s run -m %s -p Hi --json-schema-file %s", KVLM, AID, path), 1);
    assert_non_null(strstr(g_out, "at /properties/a: unsupported keyword \"not\""));
    assert_int_equal(run("%s bench -m %s --json-schema %s -n 4 -r 1", KVLM, AID, path), 1);
    assert_non_null(strstr(g_out, "error: --json-schema"));
    assert_int_equal(run("%s run -m %s -p Hi -j --grammar-file %s", KVLM, AID, path), 2);
    assert_non_null(strstr(g_out, "two grammars"));
    assert_int_equal(run("%s run -m %s -p Hi --json-schema '{}' --json-schema-file %s", KVLM, AID, path), 2);
    assert_int_equal(run("%s run -m %s -p Hi -j --beams 2", KVLM, AID), 2);
    assert_non_null(strstr(g_out, "--beams does not take a grammar"));
    unlink(path);
    assert_int_equal(run("%s run -m %s -p Hi --json-schema-file %s", KVLM, AID, path), 1);
    assert_non_null(strstr(g_out, path));
    assert_int_equal(run("%s eval -m %s -p Hi -j", KVLM, AID), 2); /* not eval's */
}

/* ------------------------------------------------------------ progress */

static void test_perplexity_progress(void **state) {
    (void)state;
    assert_int_equal(run("%s perplexity -m %s -f %s/bench/data/aidreams-sample.txt -c 128 --chunks 6", KVLM, AID,
                         KVLM_SOURCE_DIR),
                     0);
    assert_null(strstr(g_out, "left"));
    assert_null(strchr(g_out, '\r'));
    const char *p = strstr(g_out, "PPL = ");
    assert_non_null(p);
    const double quiet = strtod(p + 6, NULL);
    assert_int_equal(run("script -qec '%s perplexity -m %s -f %s/bench/data/aidreams-sample.txt -c 128 --chunks 6' /dev/null",
                         KVLM, AID, KVLM_SOURCE_DIR),
                     0);
    assert_non_null(strstr(g_out, "\r\033[Kperplexity: "));
    assert_non_null(strstr(g_out, "(6/6)") ? g_out : strstr(g_out, "(1/6)"));
    assert_non_null(strstr(g_out, " left  PPL so far "));
    p = strstr(g_out, "PPL = ");
    assert_non_null(p);
    assert_true(strtod(p + 6, NULL) == quiet);
}

/* synth: a progress line per tensor on a terminal, nothing when stderr is a pipe, the same file
 * either way. */
static void test_synth_progress(void **state) {
    (void)state;
    char a[64], b[64];
    snprintf(a, sizeof a, "/tmp/kvlm-synth-a-%d.gguf", (int)getpid());
    snprintf(b, sizeof b, "/tmp/kvlm-synth-b-%d.gguf", (int)getpid());
    const char *shape = "--arch llama --dim 64 --layers 2 --heads 2 --ff 128 --vocab 300 --type q8_0 -t 1";
    assert_int_equal(run("%s synth %s %s", KVLM, a, shape), 0);
    assert_null(strstr(g_out, "left"));
    assert_null(strchr(g_out, '\r'));
    assert_null(strchr(g_out, '\033'));
    assert_non_null(strstr(g_out, "synth: "));
    assert_int_equal(run("script -qec '%s synth %s %s' /dev/null", KVLM, b, shape), 0);
    /* the first tensor's line is always drawn; the others at most ~10 times a second */
    if (!strstr(g_out, "\r\033[Ksynth:   0% (0/21) ")) fail_msg("no progress line: %s", g_out);
    assert_non_null(strstr(g_out, " left  token_embd.weight"));
    assert_non_null(strstr(g_out, "\r\033[K")); /* cleared at the end */
    img fa = slurp(a), fb = slurp(b);
    assert_true(fa.n > 0);
    assert_int_equal(fa.n, fb.n);
    assert_memory_equal(fa.p, fb.p, fa.n);
    free(fa.p);
    free(fb.p);
    unlink(a);
    unlink(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_lists_exactly_the_flags),
        cmocka_unit_test(test_threads_default),
        cmocka_unit_test(test_seed_and_default_temperature),
        cmocka_unit_test(test_logit_bias),
        cmocka_unit_test(test_n_probs),
        cmocka_unit_test(test_escapes_and_stdin),
        cmocka_unit_test(test_tokenize_output),
        cmocka_unit_test(test_run_timings_and_context),
        cmocka_unit_test(test_chat_line_editing),
        cmocka_unit_test(test_grammar_flags),
        cmocka_unit_test(test_json_schema_flags),
        cmocka_unit_test(test_perplexity_progress),
        cmocka_unit_test(test_synth_progress),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
