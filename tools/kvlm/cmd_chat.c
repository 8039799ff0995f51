/* kvlm chat: an interactive multi-turn REPL that keeps the KV cache across turns. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <editline/readline.h>

#include "cli.h"

/* The chat's input: on a terminal libedit's line editing and history; otherwise plain reads, one
 * line (of any length) per turn. */
typedef struct line_reader {
    bool tty;
    char *line;           /* the last line read */
    size_t cap;           /* getline's buffer size */
} line_reader;

static void reader_init(line_reader *r) {
    memset(r, 0, sizeof *r);
    r->tty = isatty(STDIN_FILENO) && isatty(STDERR_FILENO);
    if (r->tty) {
        rl_instream = stdin;
        rl_outstream = stderr; /* the prompt and the echo go where the non-terminal prompt goes */
        using_history();
    }
}

/* The next line without its end-of-line, or NULL at the end of the input. Valid until the next call. */
static char *reader_get(line_reader *r, const char *prompt) {
    if (r->tty) {
        free(r->line);
        r->line = readline(prompt);
        if (r->line && r->line[0]) add_history(r->line);
        if (!r->line) fputc('\n', stderr); /* end of input (Ctrl-D) or Ctrl-C at the prompt: leave on a new line */
        return r->line;
    }
    fputs(prompt, stderr);
    fflush(stderr);
    if (getline(&r->line, &r->cap, stdin) < 0) return NULL;
    r->line[strcspn(r->line, "\r\n")] = '\0';
    return r->line;
}

static void reader_free(line_reader *r) {
    free(r->line);
    if (r->tty) clear_history();
    r->line = NULL;
}

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

/* The conversation in the chat format (malloc'd), or NULL. */
static char *render(const kvlm_model *m, const char *tmpl, const history *h, bool add_assistant) {
    int32_t need = kvlm_chat_apply(m, tmpl, h->msgs, h->n, add_assistant, NULL, 0);
    if (need >= 0) return NULL;
    char *p = malloc((size_t)-need);
    if (p && kvlm_chat_apply(m, tmpl, h->msgs, h->n, add_assistant, p, -need) < 0) {
        free(p);
        p = NULL;
    }
    return p;
}

/* Appends the text of toks[0..n) to *buf (realloc'd). */
static bool append_pieces(const kvlm_model *m, const kvlm_token *toks, int32_t n, char **buf, size_t *len) {
    for (int32_t i = 0; i < n; i++) {
        char piece[256];
        int32_t pl = kvlm_token_to_piece(m, toks[i], piece, sizeof piece, false);
        if (pl < 0) pl = 0;
        char *nb = realloc(*buf, *len + (size_t)pl + 1);
        if (!nb) return false;
        memcpy(nb + *len, piece, (size_t)pl);
        *len += (size_t)pl;
        nb[*len] = '\0';
        *buf = nb;
    }
    return true;
}

/* Tokens at the start of every prompt of this chat (BOS and the system prompt): what a context shift
 * keeps, as llama.cpp's chat keeps its system prompt. The common prefix of the system prompt alone and
 * of the system prompt followed by a user turn, so the formats that fold the system prompt into the
 * first turn keep only what really repeats. */
static int32_t chat_keep(const kvlm_model *m, const char *tmpl, const char *system) {
    kvlm_chat_message msgs[2] = {{"system", system}, {"user", "x"}};
    const int first = system ? 0 : 1;
    char *a = NULL, *b = NULL;
    int32_t na = 0, nb = 0, keep = 0;
    kvlm_token *ta = NULL, *tb = NULL;
    int32_t need = system ? kvlm_chat_apply(m, tmpl, msgs, 1, false, NULL, 0) : -1;
    if (need < 0 && (a = malloc((size_t)-need)) != NULL) {
        if (system) kvlm_chat_apply(m, tmpl, msgs, 1, false, a, -need);
        else a[0] = '\0';
        ta = cli_tokenize(m, a, strlen(a), true, true, &na);
    }
    need = kvlm_chat_apply(m, tmpl, msgs + first, 2 - first, true, NULL, 0);
    if (need < 0 && (b = malloc((size_t)-need)) != NULL && kvlm_chat_apply(m, tmpl, msgs + first, 2 - first, true, b, -need) > 0)
        tb = cli_tokenize(m, b, strlen(b), true, true, &nb);
    if (ta && tb)
        while (keep < na && keep < nb && ta[keep] == tb[keep]) keep++;
    free(a);
    free(b);
    free(ta);
    free(tb);
    return keep;
}

int cmd_chat(int argc, char **argv) {
    cli_args a;
    if (!cli_parse(argc, argv, 2, &a)) return 2;
    if (a.help) {
        cli_usage("chat", stdout);
        return 0;
    }
    kvlm_model *m = cli_load_model(&a);
    if (!m) return 1;
    kvlm_error err;
    kvlm_session *s = NULL;
    kvlm_session_params sp = cli_session_params(&a);
    const char *tmpl = a.chat_template;
    /* a chat keeps going at a full context: shift, keeping the system prompt (at most half the context) */
    if (!a.overflow_set) sp.overflow = KVLM_OVERFLOW_SHIFT;
    kvlm_model_info mi;
    kvlm_model_get_info(m, &mi);
    if (a.n_ctx > mi.n_ctx_train)
        fprintf(stderr, "warning: -c %d is more than the %d tokens the model was trained on; past them the text may degrade\n",
                a.n_ctx, mi.n_ctx_train);
    if (sp.overflow == KVLM_OVERFLOW_SHIFT && !a.keep_set) {
        const int32_t n_ctx = sp.n_ctx > 0 ? sp.n_ctx : mi.n_ctx_train;
        sp.n_keep = chat_keep(m, tmpl, a.system);
        if (sp.n_keep > n_ctx / 2) sp.n_keep = n_ctx / 2;
        if (a.verbose) fprintf(stderr, "context shift keeps the first %d tokens\n", sp.n_keep);
    }
    if (kvlm_session_new(m, &sp, &s, &err) != KVLM_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        kvlm_model_free(m);
        return 1;
    }
    cli_note_threads(&a, s);
    if (!cli_check_bias(&a, m)) {
        kvlm_session_free(s);
        kvlm_model_free(m);
        return 2;
    }
    fprintf(stderr, "chat format: %s (/reset, /quit, Ctrl-C stops an answer)\n",
            tmpl ? tmpl : kvlm_chat_template(m));
    if (a.sampling.temperature > 0)
        fprintf(stderr, "sampling at temperature %g%s, seed %llu\n", a.sampling.temperature,
                a.temp_defaulted ? " (llama.cpp's default with sampling flags; --temp 0: greedy)" : "",
                (unsigned long long)a.sampling.seed);
    history h = {0};
    if (a.system) add(&h, "system", a.system);
    kvlm_generate_params gp = kvlm_generate_default_params();
    gp.sampling = a.sampling;
    /* until the end of the turn (at most a context's worth), as llama.cpp's chat; -n N caps it */
    gp.max_tokens = a.n_predict_set ? a.n_predict : -1;
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
    line_reader in;
    reader_init(&in);
    char *prompt = NULL;
    /* The text the cache holds for this conversation, when known: each turn then sends only what the
       chat format adds after it (the end of the last answer's turn, the new message, the opening of the
       answer) in append mode, as llama.cpp's chat does, so the answer's own tokens stay as generated
       and nothing is recomputed. Otherwise the whole conversation is sent and the session reuses what
       it can of it. */
    char *held = NULL;
    size_t held_len = 0;
    int rc = 0;
    for (;;) {
        char *line = reader_get(&in, "> ");
        if (!line) break;
        if (strcmp(line, "/quit") == 0 || strcmp(line, "/exit") == 0) break;
        if (strcmp(line, "/reset") == 0) {
            clear(&h);
            if (a.system) add(&h, "system", a.system);
            kvlm_session_truncate(s, 0, NULL);
            free(held);
            held = NULL;
            fprintf(stderr, "(reset)\n");
            continue;
        }
        if (!line[0]) continue;
        if (!add(&h, "user", line)) {
            rc = 1;
            break;
        }
        if (kvlm_chat_apply(m, tmpl, h.msgs, h.n, true, NULL, 0) == 0 && tmpl) {
            fprintf(stderr, "error: unknown chat template '%s'\n", tmpl);
            rc = 2;
            break;
        }
        free(prompt);
        prompt = render(m, tmpl, &h, true);
        if (!prompt) {
            rc = 1;
            break;
        }
        kvlm_generate_params tp = gp;
        const char *send = prompt;
        if (held && strncmp(prompt, held, held_len) == 0 && prompt[held_len]) {
            tp.append = true;
            send = prompt + held_len;
        }
        kvlm_generate_result r;
        kvlm_status st = kvlm_generate(s, send, &tp, cli_print_token, NULL, &r, &err);
        printf("\n");
        fflush(stdout);
        free(held);
        held = NULL;
        held_len = 0;
        if (st != KVLM_OK) {
            fprintf(stderr, "error: %s\n", err.msg);
            if (st == KVLM_ERR_CONTEXT_FULL) fprintf(stderr, "(the context is full: /reset starts over)\n");
            h.n--;
            free(h.owned[h.n]);
            continue;
        }
        if (r.finish == KVLM_FINISH_CANCELLED) fprintf(stderr, "(stopped)\n");
        if (a.verbose)
            fprintf(stderr, "[%d prompt tokens, %d cached, %d generated, %s]\n", r.n_prompt, r.n_prompt_cached,
                    r.n_completion, kvlm_finish_reason_name(r.finish));
        /* what the cache now holds: the prompt and the answer's tokens that were fed back (all of them
           when the turn ended on its end token or was stopped; not the last one when it ended on the
           length, a stop string or a full context) */
        bool known = r.n_completion > 0 || r.finish == KVLM_FINISH_STOP || r.finish == KVLM_FINISH_LENGTH;
        held_len = strlen(prompt);
        held = malloc(held_len + 1);
        if (held) memcpy(held, prompt, held_len + 1);
        char *all = NULL;
        size_t all_len = 0;
        known = known && held && append_pieces(m, r.tokens, r.n_completion, &all, &all_len);
        bool last_fed = r.finish == KVLM_FINISH_CANCELLED || r.finish == KVLM_FINISH_DEADLINE ||
                        (r.finish == KVLM_FINISH_STOP && all && all_len == r.text_len &&
                         memcmp(all, r.text, all_len) == 0);
        const int32_t fed = r.n_completion > 0 && !last_fed ? r.n_completion - 1 : r.n_completion;
        free(all);
        known = known && append_pieces(m, r.tokens, fed, &held, &held_len);
        /* the answer as the format will render it: the plain format writes "Assistant: " + content after
           prompting with "Assistant:", so a leading space the model produced belongs to the separator */
        const char *content = r.text;
        if (known && content[0] == ' ') {
            add(&h, "assistant", content);
            char *past = render(m, tmpl, &h, false);
            if (past && strncmp(past, held, held_len) != 0) content++;
            free(past);
            h.n--;
            free(h.owned[h.n]);
        }
        add(&h, "assistant", content);
        if (!known) {
            free(held);
            held = NULL;
        }
        kvlm_generate_result_free(&r);
        if (a.kv_stats) cli_print_kv_stats(s);
    }
    cli_cancel_on_sigint(NULL);
    reader_free(&in);
    free(prompt);
    free(held);
    clear(&h);
    free(h.msgs);
    free(h.owned);
    kvlm_session_free(s);
    kvlm_model_free(m);
    return rc;
}
