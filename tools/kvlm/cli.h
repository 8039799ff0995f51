/* Shared pieces of the kvlm command-line tool. */
#ifndef KVLM_CLI_H
#define KVLM_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "kvlm.h"

#define CLI_MAX_STOP 16

typedef struct cli_args {
    const char *model;
    const char *prompt;
    const char *file;
    const char *tokens;      /* --tokens "1 2 3" */
    const char *dump_logits; /* --dump-logits OUT */
    const char *session;     /* --session FILE */
    bool session_overwrite;  /* --session-overwrite: replace a session file that does not load */
    const char *chat_template;
    const char *system;      /* chat: system prompt */
    int n_predict;           /* -n */
    bool n_predict_set, overflow_set, keep_set; /* -n, --overflow, --keep given */
    int n_threads;           /* -t */
    int n_ctx;               /* -c */
    int greedy;              /* --greedy N */
    int chunk;               /* --chunk K */
    int n_prompt_bench;      /* bench -p */
    int reps;                /* bench -r */
    int n_chunks;            /* perplexity --chunks */
    int depth;               /* bench -d: context already held before the test */
    bool no_bos, no_parse_special, ids, help, json, incremental, kv_stats, ignore_eos, verbose, batch, tokenize,
        cpu_time;
    /* sampling */
    kvlm_sampling_params sampling;
    bool seed_set, temp_set;
    const char *stop[CLI_MAX_STOP];
    int n_stop;
    double timeout_s;
    /* kv cache */
    kvlm_session_params sp;
    int n_pos;
    const char *pos[8];
} cli_args;

/* Parses argv[first..argc). Returns false (after printing why) on a bad flag. */
bool cli_parse(int argc, char **argv, int first, cli_args *a);
/* Session parameters from the flags (n_ctx, threads, KV settings). */
kvlm_session_params cli_session_params(const cli_args *a);
/* The threads session s evaluates with; notes once on stderr when that is
 * fewer than -t asked for (more than the CPUs available to the process). */
int cli_note_threads(const cli_args *a, const kvlm_session *s);
/* The prompt text from -p or -f (malloc'd, NUL-terminated; *len set). NULL with a message if neither. */
char *cli_prompt_text(const cli_args *a, size_t *len);
char *cli_read_file(const char *path, size_t *len);
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
/* Prints the session's KV statistics as one JSON line on stderr. */
void cli_print_kv_stats(const kvlm_session *s);
const char *cli_kv_help(void);

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
