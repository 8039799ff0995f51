/* kvlm tokenize: the tokens of a text, printed as llama-tokenize prints them. */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"

int cmd_tokenize(int argc, char **argv) {
    cli_args a;
    if (!cli_parse(argc, argv, 2, &a)) return 2;
    if (a.help) {
        cli_usage("tokenize", stdout);
        return 0;
    }
    size_t len;
    char *text = cli_prompt_text(&a, &len);
    if (!text) return 2;
    kvlm_model *m = cli_load_vocab(&a);
    if (!m) {
        free(text);
        return 1;
    }
    int32_t n = 0;
    kvlm_token *t = cli_tokenize(m, text, len, !a.no_bos, !a.no_parse_special, &n);
    int rc = 0;
    if (!t) {
        fprintf(stderr, "error: tokenization failed\n");
        rc = 1;
    } else if (a.ids) {
        /* [1, 15043, ...]: a Python list */
        printf("[");
        for (int32_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", t[i]);
        printf("]\n");
    } else {
        char piece[256];
        for (int32_t i = 0; i < n; i++) {
            int32_t pl = kvlm_token_to_piece(m, t[i], piece, sizeof piece, true);
            printf("%6d -> '%.*s'\n", t[i], pl > 0 ? pl : 0, piece);
        }
    }
    if (t && a.show_count) printf("Total number of tokens: %d\n", n);
    free(t);
    free(text);
    kvlm_model_free(m);
    return rc;
}
