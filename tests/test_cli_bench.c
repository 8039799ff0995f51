/* kvlm bench as llama-bench: its comma lists and their order, -o md|csv|json|jsonl, the padded
 * table with llama-bench's header, model names, size and build: line, and what it refuses. */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_util.h"

#define KVLM KVLM_BIN_DIR "/kvlm"
#define MODELS KVLM_MODELS_DIR
#define AID MODELS "/llama/aidreams260K-f32.gguf"
#define S15 MODELS "/llama/synth15M-q8_0.gguf"

static char g_out[1 << 18];

#define run(...) run_into(g_out, sizeof g_out, __VA_ARGS__)

static bool starts(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

static int count(const char *s, const char *what) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, what)) != NULL; p += strlen(what)) n++;
    return n;
}

/* the integer after "key": in line */
static long field(const char *line, const char *key) {
    char k[64];
    snprintf(k, sizeof k, "\"%s\": ", key);
    const char *p = strstr(line, k);
    if (!p) fail_msg("no %s in %s", key, line);
    return strtol(p + strlen(k), NULL, 10);
}

static const char *str_field(const char *line, const char *key, char *buf, size_t cap) {
    char k[64];
    snprintf(k, sizeof k, "\"%s\": \"", key);
    const char *p = strstr(line, k);
    if (!p) fail_msg("no %s in %s", key, line);
    p += strlen(k);
    snprintf(buf, cap, "%.*s", (int)strcspn(p, "\""), p);
    return buf;
}

/* the n-th line (0-based) of s */
static const char *line_at(const char *s, int n, char *buf, size_t cap) {
    for (int i = 0; i < n && s; i++) {
        s = strchr(s, '\n');
        if (s) s++;
    }
    if (!s) fail_msg("no line %d", n);
    snprintf(buf, cap, "%.*s", (int)strcspn(s, "\n"), s);
    return buf;
}

/* -n N runs tgN (not 64), and only the tests asked for. */
static void test_n_honoured(void **state) {
    (void)state;
    assert_int_equal(run("%s bench -m %s -p 0 -n 32 -r 1 2>/dev/null", KVLM, AID), 0);
    assert_int_equal(count(g_out, " tg32 |"), 1);
    assert_int_equal(count(g_out, " tg64 |"), 0);
    assert_int_equal(count(g_out, " pp"), 0);
}

/* Lists run every combination in llama-bench's order (cache types, threads, then the prompt tests
 * and the generation tests), and the JSON says what ran. */
static void test_lists(void **state) {
    (void)state;
    char l[4096], b[64];
    assert_int_equal(run("%s bench -m %s -p 8,16 -n 4 -r 2 -t 1 -o jsonl 2>/dev/null", KVLM, AID), 0);
    assert_int_equal(count(g_out, "\n"), 3);
    const int want[3][2] = {{8, 0}, {16, 0}, {0, 4}};
    for (int i = 0; i < 3; i++) {
        line_at(g_out, i, l, sizeof l);
        assert_true(l[0] == '{' && l[strlen(l) - 1] == '}');
        assert_int_equal(field(l, "n_prompt"), want[i][0]);
        assert_int_equal(field(l, "n_gen"), want[i][1]);
        assert_int_equal(count(l, "\"samples_ns\": [ "), 1);
        assert_int_equal(count(strstr(l, "\"samples_ts\""), ", "), 1); /* two samples */
    }
    assert_int_equal(run("%s bench -m %s -p 8 -n 0 -r 1 -t 1 -ctk f16,q8_0 -ctv q8_0 -o jsonl 2>/dev/null", KVLM, AID), 0);
    assert_int_equal(count(g_out, "\n"), 2);
    assert_string_equal(str_field(line_at(g_out, 0, l, sizeof l), "type_k", b, sizeof b), "f16");
    assert_string_equal(str_field(l, "type_v", b, sizeof b), "q8_0");
    assert_string_equal(str_field(line_at(g_out, 1, l, sizeof l), "type_k", b, sizeof b), "q8_0");
    assert_string_equal(str_field(l, "type_v", b, sizeof b), "q8_0");
    /* repeating a flag appends, as llama-bench */
    assert_int_equal(run("%s bench -m %s -p 8 -p 16 -n 0 -r 1 -t 1 -o jsonl 2>/dev/null", KVLM, AID), 0);
    assert_int_equal(count(g_out, "\n"), 2);
    assert_int_equal(field(line_at(g_out, 1, l, sizeof l), "n_prompt"), 16);
    /* threads: each count, as far as the CPUs allow */
    assert_int_equal(run("%s bench -m %s -p 8 -n 0 -r 1 -t 1,2 -o jsonl 2>/dev/null", KVLM, AID), 0);
    assert_int_equal(field(line_at(g_out, 0, l, sizeof l), "n_threads"), 1);
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    assert_int_equal(field(line_at(g_out, 1, l, sizeof l), "n_threads"), cpus >= 2 ? 2 : 1);
    /* depth */
    assert_int_equal(run("%s bench -m %s -p 0 -n 4 -d 0,16 -r 1 -t 1 2>/dev/null", KVLM, AID), 0);
    assert_int_equal(count(g_out, " tg4 |"), 1);
    assert_int_equal(count(g_out, " tg4 @ d16 |"), 1);
}

/* The table: llama-bench's header and separator, every row as wide, its model name, size and
 * parameter count (llama-bench printed "15.40 MiB | 15.19 M" for synth15M-q8_0), the build line. */
static void test_markdown(void **state) {
    (void)state;
    assert_int_equal(run("%s bench -m %s -p 8 -n 2 -r 1 -t 1 2>/dev/null", KVLM, S15), 0);
    char l[1024];
    assert_string_equal(line_at(g_out, 0, l, sizeof l),
                        "| model                          |       size |     params | backend    | threads |          "
                        "test |                  t/s |");
    const size_t w = strlen(l);
    assert_string_equal(line_at(g_out, 1, l, sizeof l),
                        "| ------------------------------ | ---------: | ---------: | ---------- | ------: | ------------: "
                        "| -------------------: |");
    for (int i = 2; i < 4; i++) {
        line_at(g_out, i, l, sizeof l);
        assert_int_equal(strlen(l), w + 1); /* the +- sign is two bytes */
        if (!starts(l, "| llama 15M Q8_0                 |  15.40 MiB |    15.19 M | CPU        |       1 |")) fail_msg("%s", l);
    }
    assert_non_null(strstr(g_out, "|           pp8 |"));
    assert_non_null(strstr(g_out, "|           tg2 |"));
    line_at(g_out, 4, l, sizeof l);
    assert_string_equal(l, "");
    line_at(g_out, 5, l, sizeof l);
    char commit[64];
    int number = -1;
    if (sscanf(l, "build: %63s (%d)", commit, &number) != 2) fail_msg("footer: %s", l);
    assert_true(number >= 0);
    assert_true(strcmp(commit, "unknown") == 0 || strspn(commit, "0123456789abcdef") == strlen(commit));
    /* non-default cache types get their columns */
    assert_int_equal(run("%s bench -m %s -p 8 -n 0 -r 1 -t 1 -ctk q8_0 2>/dev/null", KVLM, AID), 0);
    assert_non_null(strstr(g_out, "| threads | type_k |          test |"));
    assert_non_null(strstr(g_out, "|   q8_0 |"));
    assert_null(strstr(g_out, "type_v"));
    /* a file without general.file_type: llama.cpp's guess */
    assert_non_null(strstr(g_out, "| llama 264K all F32 (guessed)   |"));
}

/* CSV: llama-bench's layout (the field names, then every value quoted); JSON: one array. */
static void test_csv_json(void **state) {
    (void)state;
    char l[4096];
    assert_int_equal(run("%s bench -m %s -p 8 -n 2 -r 1 -t 1 -o csv 2>/dev/null", KVLM, AID), 0);
    assert_int_equal(count(g_out, "\n"), 3);
    line_at(g_out, 0, l, sizeof l);
    assert_true(starts(l, "build_commit,build_number,cpu_info,gpu_info,backends,model_filename,model_type,"));
    const int n_fields = count(l, ",") + 1;
    assert_int_equal(n_fields, 26);
    for (int i = 1; i < 3; i++) {
        line_at(g_out, i, l, sizeof l);
        assert_true(l[0] == '"' && l[strlen(l) - 1] == '"');
        assert_int_equal(count(l, "\",\"") + 1, n_fields);
    }
    assert_non_null(strstr(g_out, "\"llama 264K all F32 (guessed)\""));
    assert_int_equal(run("%s bench -m %s -p 8 -n 2 -r 3 -t 1 -o json 2>/dev/null", KVLM, AID), 0);
    assert_true(starts(g_out, "[\n  {\n    \"build_commit\": \""));
    assert_true(strcmp(g_out + strlen(g_out) - 6, "  }\n]\n") == 0);
    assert_int_equal(count(g_out, "  },\n  {\n"), 1);
    assert_int_equal(count(g_out, "\"flash_attn\": false,"), 2);
    assert_int_equal(count(g_out, "\"n_prompt\": 8,"), 1);
    assert_int_equal(count(g_out, "\"type_k\": \"f16\","), 2);
    /* --json is -o json */
    assert_int_equal(run("%s bench -m %s -p 8 -n 0 -r 1 -t 1 --json 2>/dev/null", KVLM, AID), 0);
    assert_true(g_out[0] == '[');
}

static void test_refusals(void **state) {
    (void)state;
    const char *bad[][2] = {
        {"-p abc", "-p takes a comma-separated list of integers in 0..16777216, got 'abc'"},
        {"-p 8,", "got '8,'"},
        {"-n 1,x", "-n takes a comma-separated list"},
        {"-t 0", "-t takes a comma-separated list of integers in 1..256, got '0'"},
        {"-ctk q5_0", "-ctk takes a comma-separated list of f32, f16, q8_0, q4_0, got 'q5_0'"},
        {"-o xml", "-o: 'xml' is not md, csv, json or jsonl"},
        {"-c 64", "kvlm bench does not take -c"},
        {"--incremental -o json", "print their own table"},
        {"--batch -t 1,2", "print their own table"},
        {"-f /dev/null", "-f is for --tokenize"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(run("%s bench -m %s %s", KVLM, AID, bad[i][0]), 2);
        if (!strstr(g_out, bad[i][1])) fail_msg("%s: %s", bad[i][0], g_out);
    }
    /* --batch takes -n as its decode steps */
    assert_int_equal(run("%s bench -m %s --batch -n 4 -r 1 -t 1 2>/dev/null", KVLM, AID), 0);
    assert_non_null(strstr(g_out, "| 1 | 4 |"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_n_honoured), cmocka_unit_test(test_lists), cmocka_unit_test(test_markdown),
        cmocka_unit_test(test_csv_json),   cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
