/* Shared pieces of the kvlm command-line tool. */
#ifndef KVLM_CLI_H
#define KVLM_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "kvlm.h"

typedef struct cli_args {
    const char *model;
    const char *prompt;
    const char *file;
    const char *tokens;      /* --tokens "1 2 3" */
    const char *dump_logits; /* --dump-logits OUT */
    int n_predict;           /* -n */
    int n_threads;           /* -t */
    int n_ctx;               /* -c */
    int greedy;              /* --greedy N */
    bool no_bos;
    bool no_parse_special;
    bool ids;
    bool help;
    int n_pos;               /* positional arguments */
    const char *pos[8];
} cli_args;

/* Parses argv[first..argc). Returns false (after printing why) on a bad flag. */
bool cli_parse(int argc, char **argv, int first, cli_args *a);
/* The prompt text from -p or -f (malloc'd, NUL-terminated; *len set). NULL with a message if neither. */
char *cli_prompt_text(const cli_args *a, size_t *len);
/* Loads the model named by -m, printing the error on failure. */
kvlm_model *cli_load_model(const cli_args *a);
kvlm_model *cli_load_vocab(const cli_args *a);
/* Tokenizes text; returns a malloc'd array and its length, or NULL. */
kvlm_token *cli_tokenize(const kvlm_model *m, const char *text, size_t len, bool add_special, bool parse_special,
                         int32_t *n_out);
/* Index of the largest logit (the first on ties). */
int32_t cli_argmax(const float *logits, int32_t n);
double cli_now_s(void);

int cmd_run(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_inspect(int argc, char **argv);

#endif
