/* kvlm chat: an interactive multi-turn REPL that keeps the KV cache across turns. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

typedef struct history {
    kvlm_chat_message *msgs;
    char **owned;
    int n, cap;
} history;

static bool add(history *h, const char *role, const char *content) {
    if (h->n == h->cap) {
        int cap = h->cap ? h->cap * 2 : 16;
        kvlm_chat_message *nm = realloc(h->msgs, (size_t)cap * sizeof *nm);
        if (!nm) return false;
        h->msgs = nm;
        char **no = realloc(h->owned, (size_t)cap * sizeof *no);
        if (!no) return false;
        h->owned = no;
        h->cap = cap;
    }
    char *c = strdup(content);
    if (!c) return false;
    h->owned[h->n] = c;
    h->msgs[h->n].role = role;
    h->msgs[h->n].content = c;
    h->n++;
    return true;
}

static void clear(history *h) {
    for (int i = 0; i < h->n; i++) free(h->owned[i]);
    h->n = 0;
}

int cmd_chat(int argc, char **argv) {
    cli_args a;
    if (!cli_parse(argc, argv, 2, &a)) return 2;
    if (a.help) {
        printf("usage: kvlm chat -m MODEL [-n N] [-c CTX] [--system TEXT] [--chat-template NAME] [--kv-stats]\n"
               "  sampling flags as kvlm run. Type a message and Enter; /reset starts over, /quit leaves;\n"
               "  Ctrl-C stops the current answer.\n");
        return 0;
    }
    kvlm_model *m = cli_load_model(&a);
    if (!m) return 1;
    kvlm_error err;
    kvlm_session *s = NULL;
    kvlm_session_params sp = cli_session_params(&a);
    if (kvlm_session_new(m, &sp, &s, &err) != KVLM_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        kvlm_model_free(m);
        return 1;
    }
    cli_note_threads(&a, s);
    const char *tmpl = a.chat_template;
    fprintf(stderr, "chat format: %s (/reset, /quit, Ctrl-C stops an answer)\n",
            tmpl ? tmpl : kvlm_chat_template(m));
    history h = {0};
    if (a.system) add(&h, "system", a.system);
    kvlm_generate_params gp = kvlm_generate_default_params();
    gp.sampling = a.sampling;
    gp.max_tokens = a.n_predict > 0 ? a.n_predict : 256;
    gp.ignore_eos = a.ignore_eos;
    gp.timeout_s = a.timeout_s;
    /* the plain format has no end-of-turn token: a new "User:" line ends the answer */
    const char *plain_stops[CLI_MAX_STOP + 1];
    int n_stops = 0;
    for (int i = 0; i < a.n_stop; i++) plain_stops[n_stops++] = a.stop[i];
    const char *fmt = tmpl ? tmpl : kvlm_chat_template(m);
    if (strcmp(fmt, "plain") == 0) plain_stops[n_stops++] = "\nUser:";
    gp.stop = plain_stops;
    gp.n_stop = n_stops;
    cli_cancel_on_sigint(s);
    char line[8192];
    char *prompt = NULL;
    int rc = 0;
    for (;;) {
        fprintf(stderr, "> ");
        if (!fgets(line, sizeof line, stdin)) break;
        line[strcspn(line, "\r\n")] = '\0';
        if (strcmp(line, "/quit") == 0 || strcmp(line, "/exit") == 0) break;
        if (strcmp(line, "/reset") == 0) {
            clear(&h);
            if (a.system) add(&h, "system", a.system);
            kvlm_session_truncate(s, 0, NULL);
            fprintf(stderr, "(reset)\n");
            continue;
        }
        if (!line[0]) continue;
        if (!add(&h, "user", line)) {
            rc = 1;
            break;
        }
        int32_t need = kvlm_chat_apply(m, tmpl, h.msgs, h.n, true, NULL, 0);
        if (need == 0 && tmpl) {
            fprintf(stderr, "error: unknown chat template '%s'\n", tmpl);
            rc = 2;
            break;
        }
        free(prompt);
        prompt = malloc((size_t)(-need));
        if (!prompt || kvlm_chat_apply(m, tmpl, h.msgs, h.n, true, prompt, -need) < 0) {
            rc = 1;
            break;
        }
        kvlm_generate_result r;
        kvlm_status st = kvlm_generate(s, prompt, &gp, cli_print_token, NULL, &r, &err);
        printf("\n");
        fflush(stdout);
        if (st != KVLM_OK) {
            fprintf(stderr, "error: %s\n", err.msg);
            h.n--;
            free(h.owned[h.n]);
            continue;
        }
        if (r.finish == KVLM_FINISH_CANCELLED) fprintf(stderr, "(stopped)\n");
        if (a.verbose)
            fprintf(stderr, "[%d prompt tokens, %d cached, %d generated, %s]\n", r.n_prompt, r.n_prompt_cached,
                    r.n_completion, kvlm_finish_reason_name(r.finish));
        add(&h, "assistant", r.text);
        kvlm_generate_result_free(&r);
        if (a.kv_stats) cli_print_kv_stats(s);
    }
    cli_cancel_on_sigint(NULL);
    free(prompt);
    clear(&h);
    free(h.msgs);
    free(h.owned);
    kvlm_session_free(s);
    kvlm_model_free(m);
    return rc;
}
