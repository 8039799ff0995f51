/* kvlm chat: an interactive multi-turn REPL that keeps the KV cache across turns, and with
 * --session FILE across invocations (the cache in FILE, the conversation in FILE.chat). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <editline/readline.h>

#include "api/session_impl.h"
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

/* ------------------------------------------------------------ the conversation file (FILE.chat)
 *
 * One JSON object: {"format": "kvlm-chat", "version": 1, "template": NAME or null (--chat-template),
 * "system": TEXT or null, "messages": [{"role": "user" | "assistant", "content": TEXT}, ...],
 * "held": the text the cache holds (null: not known), "n_past": the tokens the session held when it
 * was saved}. Written and read with the session file's rules (kv_session_write_file, _read_file):
 * a regular file or nothing, never through a link, a FIFO or a device, replaced atomically. */

typedef struct chat_saved {
    char *tmpl, *system, *held;
    history conv; /* user and assistant messages */
    int32_t n_past;
} chat_saved;

static void saved_free(chat_saved *c) {
    free(c->tmpl);
    free(c->system);
    free(c->held);
    clear(&c->conv);
    free(c->conv.msgs);
    free(c->conv.owned);
    memset(c, 0, sizeof *c);
}

/* A string member or null; false when it is something else. */
static bool opt_string(const cJSON *o, const char *name, char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) return true;
    if (!cJSON_IsString(v) || !v->valuestring) return false;
    return (*out = strdup(v->valuestring)) != NULL;
}

/* Parses a conversation file; on failure *why says what is wrong. */
static bool saved_parse(const char *text, size_t len, chat_saved *c, const char **why) {
    memset(c, 0, sizeof *c);
    cJSON *o = cJSON_ParseWithLength(text, len);
    bool ok = false;
    *why = "it is not JSON";
    if (!o) return false;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(o, "format");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(o, "version");
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(o, "messages");
    const cJSON *np = cJSON_GetObjectItemCaseSensitive(o, "n_past");
    *why = "it is not a kvlm chat conversation";
    if (!cJSON_IsObject(o) || !cJSON_IsString(fmt) || strcmp(fmt->valuestring, "kvlm-chat") != 0) goto out;
    *why = "it has another version (this build reads 1)";
    if (!cJSON_IsNumber(ver) || ver->valuedouble != 1) goto out;
    *why = "a field is missing or of the wrong type";
    if (!cJSON_IsArray(msgs) || !cJSON_IsNumber(np) || np->valuedouble < 0 || np->valuedouble > (1 << 30) ||
        np->valuedouble != (double)(int32_t)np->valuedouble)
        goto out;
    if (!opt_string(o, "template", &c->tmpl) || !opt_string(o, "system", &c->system) ||
        !opt_string(o, "held", &c->held))
        goto out;
    c->n_past = (int32_t)np->valuedouble;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        *why = "a message is not {\"role\": \"user\" or \"assistant\", \"content\": TEXT}";
        if (!cJSON_IsObject(m) || !cJSON_IsString(role) || !cJSON_IsString(content)) goto out;
        const char *r = strcmp(role->valuestring, "user") == 0        ? "user"
                        : strcmp(role->valuestring, "assistant") == 0 ? "assistant"
                                                                      : NULL;
        if (!r) goto out;
        *why = "out of memory";
        if (!add(&c->conv, r, content->valuestring)) goto out;
    }
    ok = true;
out:
    cJSON_Delete(o);
    if (!ok) saved_free(c);
    return ok;
}

static bool add_opt(cJSON *o, const char *name, const char *v) {
    return (v ? cJSON_AddStringToObject(o, name, v) : cJSON_AddNullToObject(o, name)) != NULL;
}

/* Writes the conversation (h, whose first message is the system prompt when there is one). */
static bool saved_write(const char *path, const char *tmpl, const char *system, const history *h, const char *held,
                        int32_t n_past) {
    cJSON *o = cJSON_CreateObject(), *msgs = NULL;
    bool ok = o && cJSON_AddStringToObject(o, "format", "kvlm-chat") && cJSON_AddNumberToObject(o, "version", 1) &&
              add_opt(o, "template", tmpl) && add_opt(o, "system", system) &&
              (msgs = cJSON_AddArrayToObject(o, "messages")) != NULL;
    for (int i = system ? 1 : 0; ok && i < h->n; i++) {
        cJSON *m = cJSON_CreateObject();
        ok = m && cJSON_AddItemToArray(msgs, m) && cJSON_AddStringToObject(m, "role", h->msgs[i].role) &&
             cJSON_AddStringToObject(m, "content", h->msgs[i].content);
    }
    ok = ok && add_opt(o, "held", held) && cJSON_AddNumberToObject(o, "n_past", n_past);
    char *text = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!text) {
        fprintf(stderr, "error: --session: out of memory writing the conversation\n");
        return false;
    }
    kvlm_error err;
    const size_t n = strlen(text);
    text[n] = '\n'; /* the terminator becomes the file's last line end */
    ok = kv_session_write_file(path, text, n + 1, "chat", &err) == KVLM_OK;
    free(text);
    if (!ok) fprintf(stderr, "error: %s\n", err.msg);
    return ok;
}

/* Whether something is at path (any kind); false with errno ENOENT when nothing is. */
static bool exists(const char *path, bool *other_error) {
    struct stat st;
    *other_error = false;
    if (lstat(path, &st) == 0) return true;
    *other_error = errno != ENOENT;
    return false;
}

/* What --session FILE starts from: 1 a saved conversation (in *c; FILE is loaded later), 0 a new
 * one (nothing there, or --session-overwrite starting over), -1 stop (after a message). */
static int saved_open(const cli_args *a, const char *side, chat_saved *c) {
    bool err_ses, err_side;
    const bool has_ses = exists(a->session, &err_ses), has_side = exists(side, &err_side);
    if (err_ses || err_side) {
        fprintf(stderr, "error: --session '%s': %s\n", err_ses ? a->session : side, strerror(errno));
        return -1;
    }
    kvlm_error err;
    /* anything but a regular file is refused either way (saving would refuse it too) */
    if ((has_ses && kv_session_check_path(a->session, false, "chat", &err) != KVLM_OK) ||
        (has_side && kv_session_check_path(side, false, "chat", &err) != KVLM_OK)) {
        fprintf(stderr, "error: %s\n", err.msg);
        return -1;
    }
    if (!has_ses && !has_side) return 0;
    char problem[512];
    if (has_side) {
        uint8_t *text = NULL;
        size_t len = 0;
        const char *why = NULL;
        if (kv_session_read_file(side, "chat", &text, &len, &err) != KVLM_OK) {
            snprintf(problem, sizeof problem, "%s", err.msg);
        } else if (!saved_parse((const char *)text, len, c, &why)) {
            snprintf(problem, sizeof problem, "'%s' does not load: %s", side, why);
        } else if (!has_ses) {
            saved_free(c);
            snprintf(problem, sizeof problem, "'%s' has no session file '%s' beside it", side, a->session);
        } else {
            free(text);
            return 1;
        }
        free(text);
    } else {
        snprintf(problem, sizeof problem, "'%s' has no conversation file '%s' beside it (was it saved by kvlm run?)",
                 a->session, side);
    }
    if (!a->session_overwrite) {
        fprintf(stderr,
                "error: %s\nerror: the chat in '%s' cannot be continued, so nothing is overwritten; pass "
                "--session-overwrite to start over (both files are replaced at the end)\n",
                problem, a->session);
        return -1;
    }
    fprintf(stderr, "warning: %s; starting over (--session-overwrite): both files are replaced at the end\n", problem);
    return 0;
}

static bool same_text(const char *x, const char *y) { return x == y || (x && y && strcmp(x, y) == 0); }

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
    /* --session FILE: the conversation beside it decides the system prompt and the template (what the
       cache holds was made with them) */
    chat_saved saved = {0};
    char *side = NULL;
    int resume = 0;
    if (a.session) {
        const size_t sl = strlen(a.session) + 6;
        side = malloc(sl);
        if (side) snprintf(side, sl, "%s.chat", a.session);
        resume = side ? saved_open(&a, side, &saved) : -1;
        const char *bad = resume == 1 && a.system && !same_text(a.system, saved.system)           ? "--system"
                          : resume == 1 && a.chat_template && !same_text(a.chat_template, saved.tmpl) ? "--chat-template"
                                                                                                   : NULL;
        if (bad) {
            fprintf(stderr,
                    "error: the chat in '%s' was started with another %s; leave %s out to continue it, or start "
                    "another with a new --session FILE\n",
                    side, bad, bad);
            resume = -1;
        }
        if (resume < 0) {
            saved_free(&saved);
            free(side);
            kvlm_model_free(m);
            return 1;
        }
        if (resume == 1) {
            a.system = saved.system;
            a.chat_template = saved.tmpl;
        }
    }
    const char *tmpl = a.chat_template;
    /* a chat keeps going at a full context: shift, keeping the system prompt (at most half the context) */
    kvlm_model_info mi;
    kvlm_model_get_info(m, &mi);
    /* (gemma3 refuses shift: its sliding-window layers rotate with their own RoPE; it stops at a full context) */
    if (!a.overflow_set) sp.overflow = strcmp(mi.arch, "gemma3") == 0 ? KVLM_OVERFLOW_ERROR : KVLM_OVERFLOW_SHIFT;
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
    kvlm_grammar *grammar = NULL;
    if (!cli_check_bias(&a, m) || !cli_grammar(&a, m, &grammar)) {
        kvlm_session_free(s);
        kvlm_grammar_free(grammar);
        kvlm_model_free(m);
        saved_free(&saved);
        free(side);
        return 2;
    }
    if (resume == 1 && kvlm_session_load(s, a.session, &err) != KVLM_OK) {
        if (!a.session_overwrite) {
            fprintf(stderr,
                    "error: %s\nerror: the chat in '%s' cannot be continued, so nothing is overwritten; pass "
                    "--session-overwrite to start over (both files are replaced at the end)\n",
                    err.msg, a.session);
            kvlm_session_free(s);
            kvlm_grammar_free(grammar);
            kvlm_model_free(m);
            saved_free(&saved);
            free(side);
            return 1;
        }
        fprintf(stderr, "warning: %s; starting over (--session-overwrite): both files are replaced at the end\n",
                err.msg);
        resume = 0;
        clear(&saved.conv);
        free(saved.held);
        saved.held = NULL;
    }
    if (resume == 1 && a.verbose)
        fprintf(stderr, "continuing the chat in %s: %d messages, %d tokens cached\n", side, saved.conv.n,
                kvlm_session_n_past(s));
    fprintf(stderr, "chat format: %s (/reset, /quit, Ctrl-C stops an answer)\n",
            tmpl ? tmpl : kvlm_chat_template(m));
    if (a.sampling.temperature > 0)
        fprintf(stderr, "sampling at temperature %g%s, seed %llu\n", a.sampling.temperature,
                a.temp_defaulted ? " (llama.cpp's default with sampling flags; --temp 0: greedy)" : "",
                (unsigned long long)a.sampling.seed);
    history h = {0};
    if (a.system) add(&h, "system", a.system);
    for (int i = 0; i < saved.conv.n; i++) add(&h, saved.conv.msgs[i].role, saved.conv.msgs[i].content);
    kvlm_generate_params gp = kvlm_generate_default_params();
    gp.sampling = a.sampling;
    gp.sampling.grammar = grammar; /* each answer is a string of the grammar */
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
    /* a continued chat: the text its cache holds, if the files agree on what that is */
    if (resume == 1 && saved.held && saved.n_past == kvlm_session_n_past(s)) {
        held = strdup(saved.held);
        held_len = held ? strlen(held) : 0;
    }
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
    /* --session: the cache, then the conversation (a conversation whose n_past does not match its
       cache is continued without the held text: the whole conversation is sent and compared) */
    if (rc == 0 && a.session) {
        if (kvlm_session_save(s, a.session, &err) != KVLM_OK) {
            fprintf(stderr, "error: %s\n", err.msg);
            rc = 1;
        } else if (!saved_write(side, a.chat_template, a.system, &h, held, kvlm_session_n_past(s))) {
            rc = 1;
        }
    }
    saved_free(&saved);
    free(side);
    free(prompt);
    free(held);
    clear(&h);
    free(h.msgs);
    free(h.owned);
    kvlm_session_free(s);
    kvlm_grammar_free(grammar);
    kvlm_model_free(m);
    return rc;
}
