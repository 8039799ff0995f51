/* Shared pieces of the kvlm command-line tool. */
#ifndef KVLM_CLI_H
#define KVLM_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "kvlm.h"

/* The commit the build was configured from and its number (git rev-list --count), as CMake defines
 * them; kvlm --version and bench's build: line print them. */
#ifndef KVLM_BUILD_COMMIT
#define KVLM_BUILD_COMMIT "unknown"
#endif
#ifndef KVLM_BUILD_NUMBER
#define KVLM_BUILD_NUMBER 0
#endif

#define CLI_MAX_STOP 16
#define CLI_MAX_BIAS 64
#define CLI_MAX_LIST 16
#define CLI_MAX_PROBS 100

/* bench: the values of a comma-separated (or repeated) flag */
typedef struct cli_list {
    int v[CLI_MAX_LIST];
    int n;
} cli_list;

/* bench -o */
typedef enum cli_output { CLI_OUT_MD = 0, CLI_OUT_CSV, CLI_OUT_JSON, CLI_OUT_JSONL } cli_output;

typedef struct cli_args {
    const char *cmd;         /* the subcommand (argv[1]) */
    const char *model;
    const char *prompt;      /* -p, escapes processed unless --no-escape */
    const char *file;        /* -f; "-" is standard input */
    bool use_stdin;          /* tokenize --stdin */
    const char *tokens;      /* --tokens "1 2 3" */
    const char *dump_logits; /* --dump-logits OUT */
    const char *session;     /* --session FILE */
    bool session_overwrite;  /* --session-overwrite: replace a session file that does not load */
    const char *chat_template;
    const char *system;      /* chat: system prompt */
    int n_predict;           /* -n */
    bool n_predict_set, overflow_set, keep_set, threads_set; /* -n, --overflow, --keep, -t given */
    int n_threads;           /* -t (default: the physical cores this process may run on) */
    int n_ctx;               /* -c */
    int greedy;              /* --greedy N */
    int chunk;               /* --chunk K */
    int reps;                /* bench -r */
    int n_chunks;            /* perplexity --chunks */
    int n_probs;             /* --n-probs N */
    bool no_bos, no_parse_special, no_escape, ids, show_count, help, incremental, kv_stats, ignore_eos, verbose,
        batch, tokenize, cpu_time;
    /* bench: llama-bench's lists (-p, -n, -t, -d, -ctk, -ctv) and -o */
    cli_list b_prompt, b_gen, b_threads, b_depth, b_type_k, b_type_v;
    cli_output output;
    /* sampling */
    kvlm_sampling_params sampling;
    bool seed_set, temp_set, seed_random, temp_defaulted;
    kvlm_logit_bias bias[CLI_MAX_BIAS];
    int n_bias;
    const char *grammar;      /* --grammar TEXT */
    const char *grammar_file; /* --grammar-file FILE (bench: --grammar FILE) */
    const char *json_schema;      /* --json-schema TEXT */
    const char *json_schema_file; /* --json-schema-file FILE (bench: --json-schema FILE) */
    bool json_object;             /* -j: any JSON object */
    const char *stop[CLI_MAX_STOP];
    int n_stop;
    double timeout_s;
    /* speculative decoding (run): -md, --draft-max, --draft-ngram */
    const char *model_draft;
    int draft_max, draft_ngram;
    /* beam search (run): --beams, --length-penalty, --beams-all */
    int beams;
    float length_penalty;
    bool length_penalty_set, beams_all;
    /* kv cache */
    kvlm_session_params sp;
    int n_pos;
    const char *pos[8];
} cli_args;

/* Parses argv[first..argc) for the subcommand argv[first - 1]: a flag that
 * this subcommand does not take is an error, as are positional arguments.
 * Returns false (after printing why) on a bad flag. */
bool cli_parse(int argc, char **argv, int first, cli_args *a);
/* The subcommand's --help: its synopsis and exactly the flags it takes, with
 * their defaults. */
void cli_usage(const char *cmd, FILE *fp);
/* The same, with a subcommand's own flags (printed by own with cli_usage_line) listed first. */
void cli_usage_with(const char *cmd, void (*own)(FILE *fp), FILE *fp);
/* One line of an options list: the flag names and value, then the help text. */
void cli_usage_line(const char *names, const char *help, FILE *fp);
/* Session parameters from the flags (n_ctx, threads, KV settings). */
kvlm_session_params cli_session_params(const cli_args *a);
/* The threads session s evaluates with; notes once on stderr when that is
 * fewer than -t asked for (more than the CPUs available to the process). */
int cli_note_threads(const cli_args *a, const kvlm_session *s);
/* The default thread count, as llama.cpp's: the physical cores among the
 * CPUs this process may run on (sched_getaffinity); at least 1. */
int cli_default_threads(void);
/* The prompt text from -p, -f (- for standard input) or --stdin (malloc'd,
 * NUL-terminated; *len set). NULL with a message if none or more than one. */
char *cli_prompt_text(const cli_args *a, size_t *len);
/* A whole file ("-": standard input), malloc'd and NUL-terminated. */
char *cli_read_file(const char *path, size_t *len);
/* llama.cpp's escapes in place: \n \r \t \' \" \\ and \xHH. */
void cli_process_escapes(char *s);
/* Loads the model named by -m, printing the error on failure. */
kvlm_model *cli_load_model(const cli_args *a);
kvlm_model *cli_load_vocab(const cli_args *a);
/* Tokenizes text; returns a malloc'd array and its length, or NULL. */
kvlm_token *cli_tokenize(const kvlm_model *m, const char *text, size_t len, bool add_special, bool parse_special,
                         int32_t *n_out);
/* Index of the largest logit (the first on ties). */
int32_t cli_argmax(const float *logits, int32_t n);
double cli_now_s(void);
/* kvlm_generate callback that writes each token's text to stdout as it comes. */
int cli_print_token(const char *text, size_t len, kvlm_token tok, void *user_data);
/* Ctrl-C cancels generation on s (NULL: back to the default action). */
void cli_cancel_on_sigint(kvlm_session *s);
/* Loads --session FILE into s if something is there (run, chat); false (after a message) when the
 * command must stop: FILE is not a regular file, or it does not load and --session-overwrite was not
 * given. */
bool cli_use_session_file(kvlm_session *s, const cli_args *a);
/* Prints the session's KV statistics as one JSON line on stderr. */
void cli_print_kv_stats(const kvlm_session *s);
/* The same with more "key":value members (JSON text) before the closing brace. */
void cli_print_kv_stats_with(const kvlm_session *s, const char *extra);
/* Checks that logit-bias tokens are in the model's vocabulary. */
bool cli_check_bias(const cli_args *a, const kvlm_model *m);
/* --grammar TEXT / --grammar-file FILE, or --json-schema TEXT / --json-schema-file FILE / -j (a JSON
 * Schema; -j: {"type": "object"}), compiled for m into *out (NULL when none is given).
 * false, after printing the error (with its line and column), when it does not compile. */
bool cli_grammar(const cli_args *a, const kvlm_model *m, kvlm_grammar **out);

/* A progress line on stderr for long work, redrawn at most ~10 times a
 * second, with the elapsed time and an estimate of the time left; nothing at
 * all when stderr is not a terminal. */
typedef struct cli_progress {
    bool on;
    double t0, last;
    const char *what;
} cli_progress;
void cli_progress_start(cli_progress *p, const char *what);
/* done of total units; detail (may be NULL) is shown after the counts. */
void cli_progress_update(cli_progress *p, double done, double total, const char *detail);
/* Clears the line. */
void cli_progress_end(cli_progress *p);

int cmd_run(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_synth(int, char **);
int cmd_quantize(int, char **);

#endif
