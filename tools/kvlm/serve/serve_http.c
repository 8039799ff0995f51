/* kvlm serve: HTTP (libmicrohttpd, one thread per connection) and JSON
 * (cJSON). Routes, request validation, OpenAI response shapes, SSE.
 * A connection thread waits for its job in short steps and polls its socket
 * for hang-up, so a client that goes away cancels its request. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "serve.h"

struct srv_http {
    struct MHD_Daemon *d;
    srv_engine *e;
    const srv_config *cfg;
    atomic_int draining; /* quiesced: no new generation requests */
    atomic_int unhealthy; /* /health says 503 "draining" (SIGTERM, before quiescing) */
    char replica[128];   /* X-Kvlm-Replica */
    atomic_int ready; /* the model is loaded and the engine runs (set once) */
    int inflight; /* generation requests not yet answered (under e->mu) */
};

/* ------------------------------------------------------------ utf-8 */

bool srv_utf8_valid(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = u[i];
        int len = c < 0x80 ? 1 : (c >= 0xc2 && c <= 0xdf) ? 2 : (c >= 0xe0 && c <= 0xef) ? 3 : (c >= 0xf0 && c <= 0xf4) ? 4 : 0;
        if (!len || i + (size_t)len > n) return false;
        for (int k = 1; k < len; k++)
            if ((u[i + k] & 0xc0) != 0x80) return false;
        if (len == 3 && c == 0xe0 && u[i + 1] < 0xa0) return false;
        if (len == 3 && c == 0xed && u[i + 1] >= 0xa0) return false;
        if (len == 4 && c == 0xf0 && u[i + 1] < 0x90) return false;
        if (len == 4 && c == 0xf4 && u[i + 1] >= 0x90) return false;
        i += (size_t)len;
    }
    return true;
}

char *srv_utf8_clean(const char *s, size_t n) {
    char *out = malloc(n * 3 + 1);
    if (!out) return NULL;
    size_t o = 0, i = 0;
    while (i < n) {
        size_t k = 1;
        while (k <= 4 && i + k <= n && !srv_utf8_valid(s + i, k)) k++;
        if (k <= 4 && i + k <= n) {
            memcpy(out + o, s + i, k);
            o += k;
            i += k;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    out[o] = '\0';
    return out;
}

/* ------------------------------------------------------------ request state */

typedef struct req {
    char *body;
    size_t n, cap;
    bool too_big;
    int status;
    char method[16], path[160];
    double t0;
    int n_prompt, n_cached, n_completion;
    double ttft_ms;
    bool is_stream;
    char session[65]; /* X-Session-Id (the routing key a balancer hashes), for the log line */
} req;

/* The headers of every response: CORS, and which replica answered (behind a load balancer). */
static void add_cors(const srv_http *h, struct MHD_Response *r) {
    MHD_add_response_header(r, "Access-Control-Allow-Origin", h->cfg->cors_origin);
    if (strcmp(h->cfg->cors_origin, "*") != 0) MHD_add_response_header(r, "Vary", "Origin");
    if (h->replica[0]) MHD_add_response_header(r, "X-Kvlm-Replica", h->replica);
}

static enum MHD_Result send_text(srv_http *h, struct MHD_Connection *c, req *rq, int status, const char *ctype,
                                 char *body, size_t n, const char *extra_name, const char *extra_value) {
    struct MHD_Response *r = MHD_create_response_from_buffer(n, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", ctype);
    add_cors(h, r);
    if (extra_name) MHD_add_response_header(r, extra_name, extra_value);
    rq->status = status;
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_json(srv_http *h, struct MHD_Connection *c, req *rq, int status, cJSON *j) {
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!s) return MHD_NO;
    return send_text(h, c, rq, status, "application/json", s, strlen(s), NULL, NULL);
}

static const char *error_type(int status) {
    switch (status) {
    case 400: case 405: case 413: return "invalid_request_error";
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 429: case 503: return "unavailable_error";
    default: return "server_error";
    }
}

static cJSON *error_obj(int status, const char *param, const char *code, const char *msg) {
    cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", error_type(status));
    if (param) cJSON_AddStringToObject(e, "param", param);
    else cJSON_AddNullToObject(e, "param");
    if (code) cJSON_AddStringToObject(e, "code", code);
    else cJSON_AddNullToObject(e, "code");
    return o;
}

static enum MHD_Result send_error(srv_http *h, struct MHD_Connection *c, req *rq, int status, const char *param,
                                  const char *code, const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static enum MHD_Result send_error(srv_http *h, struct MHD_Connection *c, req *rq, int status, const char *param,
                                  const char *code, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cJSON *o = error_obj(status, param, code, msg);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) return MHD_NO;
    if (status == 503 || status == 429)
        return send_text(h, c, rq, status, "application/json", s, strlen(s), "Retry-After", "1");
    if (status == 405)
        return send_text(h, c, rq, status, "application/json", s, strlen(s), "Allow", "GET, POST, OPTIONS");
    return send_text(h, c, rq, status, "application/json", s, strlen(s), NULL, NULL);
}

/* ------------------------------------------------------------ field validation */

typedef srv_perr perr;

static bool fail(perr *pe, int status, const char *param, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static bool fail(perr *pe, int status, const char *param, const char *fmt, ...) {
    pe->status = status;
    snprintf(pe->param, sizeof pe->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pe->msg, sizeof pe->msg, fmt, ap);
    va_end(ap);
    return false;
}

/* The field, or NULL when absent or null. */
static cJSON *field(const cJSON *o, const char *name) {
    cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static bool get_num(const cJSON *o, const char *name, double lo, double hi, bool integer, double *out, perr *pe) {
    cJSON *v = field(o, name);
    if (!v) return true;
    if (!cJSON_IsNumber(v))
        return fail(pe, 400, name, "'%s' must be %s", name, integer ? "an integer" : "a number");
    double d = v->valuedouble;
    if (!isfinite(d) || (integer && d != floor(d)))
        return fail(pe, 400, name, "'%s' must be %s", name, integer ? "an integer" : "a finite number");
    if (d < lo || d > hi) return fail(pe, 400, name, "'%s' must be in [%g, %g]", name, lo, hi);
    *out = d;
    return true;
}

static bool get_bool(const cJSON *o, const char *name, bool *out, perr *pe) {
    cJSON *v = field(o, name);
    if (!v) return true;
    if (!cJSON_IsBool(v)) return fail(pe, 400, name, "'%s' must be a boolean", name);
    *out = cJSON_IsTrue(v);
    return true;
}

static bool get_str(const cJSON *o, const char *name, const char **out, perr *pe) {
    cJSON *v = field(o, name);
    if (!v) return true;
    if (!cJSON_IsString(v)) return fail(pe, 400, name, "'%s' must be a string", name);
    *out = v->valuestring;
    return true;
}

static bool model_ok(const srv_config *cfg, const char *name) {
    const char *slash = strrchr(cfg->model_path, '/');
    return !name || strcmp(name, cfg->alias) == 0 || strcmp(name, cfg->model_path) == 0 ||
           strcmp(name, slash ? slash + 1 : cfg->model_path) == 0;
}

static kvlm_token *tokenize(const kvlm_model *m, const char *s, size_t n, bool add_special, int32_t *nt) {
    size_t cap = n + 8;
    if (cap > (size_t)INT32_MAX) return NULL;
    kvlm_token *t = malloc(cap * sizeof *t);
    if (!t) return NULL;
    int32_t k = kvlm_tokenize(m, s, n, t, (int32_t)cap, add_special, true);
    if (k < 0) {
        free(t);
        return NULL;
    }
    *nt = k;
    return t;
}

static char *piece_of(const kvlm_model *m, kvlm_token t, int32_t *len);

/* The text of tokens (their pieces; invalid UTF-8 becomes U+FFFD), malloc'd. */
static char *detokenize(const kvlm_model *m, const kvlm_token *t, int32_t n) {
    size_t cap = 256, len = 0;
    char *buf = malloc(cap);
    for (int32_t i = 0; i < n && buf; i++) {
        int32_t pl = 0;
        char *p = piece_of(m, t[i], &pl);
        if (!p) {
            free(buf);
            return NULL;
        }
        if (len + (size_t)pl + 1 > cap) {
            while (len + (size_t)pl + 1 > cap) cap *= 2;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(p);
                free(buf);
                return NULL;
            }
            buf = nb;
        }
        memcpy(buf + len, p, (size_t)pl);
        len += (size_t)pl;
        free(p);
    }
    if (!buf) return NULL;
    char *clean = srv_utf8_clean(buf, len);
    free(buf);
    return clean;
}

/* Fields of OpenAI's API that kvlm cannot honour: a clear 400 instead of an
 * answer that silently ignores them. Their neutral values are accepted. */
static bool check_unsupported(const cJSON *root, bool chat, perr *pe) {
    static const char *const lists[] = {"tools", "functions"};
    for (int i = 0; i < 2; i++) {
        cJSON *v = field(root, lists[i]);
        if (!v) continue;
        if (!cJSON_IsArray(v)) return fail(pe, 400, lists[i], "'%s' must be an array", lists[i]);
        if (cJSON_GetArraySize(v) > 0)
            return fail(pe, 400, lists[i], "'%s' (tool / function calling) is not supported yet", lists[i]);
    }
    static const char *const choices[] = {"tool_choice", "function_call"};
    for (int i = 0; i < 2; i++) {
        cJSON *v = field(root, choices[i]);
        if (!v) continue;
        if (!cJSON_IsString(v) || (strcmp(v->valuestring, "none") && strcmp(v->valuestring, "auto")))
            return fail(pe, 400, choices[i], "'%s' other than \"none\" or \"auto\" is not supported yet (no "
                        "tool calling)", choices[i]);
    }
    if (chat) return true;
    cJSON *suffix = field(root, "suffix");
    if (suffix) {
        if (!cJSON_IsString(suffix)) return fail(pe, 400, "suffix", "'suffix' must be a string");
        if (suffix->valuestring[0])
            return fail(pe, 400, "suffix",
                        "'suffix' (text inserted after the completion, fill-in-the-middle) is not supported");
    }
    double d = 0;
    if (!get_num(root, "best_of", 1, SRV_MAX_N, true, &d, pe)) return false;
    if (field(root, "best_of")) {
        double n = 1;
        if (!get_num(root, "n", 1, SRV_MAX_N, true, &n, pe)) return false;
        if (d != n)
            return fail(pe, 400, "best_of", "'best_of' other than 'n' (ranking candidates on the server) is not "
                        "supported");
    }
    return true;
}

/* Parses and validates a completion or chat request into a job (serve.h). */
/* Constrained output: response_format {"type": "json_object"} (any object; llama.cpp's "schema" in
 * it a schema), {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}, and
 * llama.cpp's fields json_schema (a schema) and grammar (GBNF text). At most one. The grammar comes
 * from the engine's cache. */
static bool parse_constraint(const srv_engine *e, const cJSON *root, srv_job *j, perr *pe) {
    const char *param = NULL, *gbnf = NULL;
    const cJSON *schema = NULL;
    char *owned = NULL;
    int n = 0;
    cJSON *rf = field(root, "response_format");
    if (rf) {
        cJSON *ty = cJSON_IsObject(rf) ? field(rf, "type") : NULL;
        if (!ty || !cJSON_IsString(ty))
            return fail(pe, 400, "response_format", "'response_format' must be an object with a string 'type'");
        if (strcmp(ty->valuestring, "json_object") == 0) {
            param = "response_format";
            schema = field(rf, "schema"); /* llama.cpp's extension */
            if (!schema) gbnf = "";         /* any object */
            n++;
        } else if (strcmp(ty->valuestring, "json_schema") == 0) {
            cJSON *js = field(rf, "json_schema");
            if (!js || !cJSON_IsObject(js))
                return fail(pe, 400, "response_format",
                            "'response_format' of type json_schema needs 'json_schema': {\"name\": ..., \"schema\": {...}}");
            cJSON *name = field(js, "name"), *strict = field(js, "strict");
            if (name && !cJSON_IsString(name))
                return fail(pe, 400, "response_format.json_schema.name", "'response_format.json_schema.name' must be a string");
            if (strict && !cJSON_IsBool(strict))
                return fail(pe, 400, "response_format.json_schema.strict",
                            "'response_format.json_schema.strict' must be a boolean");
            schema = field(js, "schema");
            if (!schema)
                return fail(pe, 400, "response_format.json_schema.schema", "'response_format.json_schema.schema' is required");
            param = "response_format.json_schema.schema";
            n++;
        } else if (strcmp(ty->valuestring, "text") != 0) {
            return fail(pe, 400, "response_format",
                        "'response_format' type must be \"text\", \"json_object\" or \"json_schema\" (got '%.64s')",
                        ty->valuestring);
        }
    }
    cJSON *js = field(root, "json_schema");
    if (js) {
        if (!param) param = "json_schema";
        schema = js;
        n++;
    }
    cJSON *gr = field(root, "grammar");
    if (gr) {
        if (!cJSON_IsString(gr)) return fail(pe, 400, "grammar", "'grammar' must be a string (GBNF)");
        if (!param) param = "grammar";
        gbnf = gr->valuestring;
        n++;
    }
    if (n > 1)
        return fail(pe, 400, param, "'%s': give one of 'response_format' (json_object, json_schema), 'json_schema' and "
                    "'grammar'", param);
    if (!n) return true;
    const bool is_schema = !gbnf;
    const char *text = gbnf;
    if (is_schema) {
        if (!cJSON_IsObject(schema) && !cJSON_IsBool(schema))
            return fail(pe, 400, param, "'%s' must be a JSON Schema (an object)", param);
        if (!(owned = cJSON_PrintUnformatted(schema))) return fail(pe, 500, NULL, "out of memory");
        text = owned;
    } else if (!*gbnf) { /* json_object */
        text = "{\"type\":\"object\"}";
    }
    kvlm_error err = {0};
    j->grammar = srv_gcache_get(e->gcache, e->model, is_schema || !*gbnf, text, &err);
    free(owned);
    if (!j->grammar) {
        if (err.code == KVLM_ERR_NOMEM) return fail(pe, 500, NULL, "out of memory");
        fail(pe, 400, param, "'%s': %s", param, err.msg);
        pe->code = is_schema || !*gbnf ? "invalid_json_schema" : "invalid_grammar";
        return false;
    }
    j->sampling.grammar = srv_gentry_grammar(j->grammar);
    return true;
}

srv_job *srv_parse_generation(const srv_engine *e, const srv_config *cfg, const cJSON *root, bool chat, perr *pe) {
    srv_job *j = calloc(1, sizeof *j);
    if (!j) {
        fail(pe, 500, NULL, "out of memory");
        return NULL;
    }
    j->chat = chat;
    j->sampling = kvlm_sampling_default_params();
    j->n = 1;
    j->logprobs = -1;
    double d;
    const char *model = NULL;
    if (!get_str(root, "model", &model, pe)) goto bad;
    if (!model_ok(cfg, model)) {
        fail(pe, 404, "model", "the model '%s' does not exist (this server has '%s')", model, cfg->alias);
        pe->code = "model_not_found";
        goto bad;
    }
    const char *user = NULL;
    if (!get_str(root, "user", &user, pe)) goto bad;
    if (!check_unsupported(root, chat, pe)) goto bad;
    if (!chat && !get_bool(root, "echo", &j->echo, pe)) goto bad;

    /* the prompt */
    if (chat) {
        cJSON *msgs = field(root, "messages");
        if (!msgs) {
            fail(pe, 400, "messages", "'messages' is required");
            goto bad;
        }
        if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) {
            fail(pe, 400, "messages", "'messages' must be a non-empty array");
            goto bad;
        }
        int nm = cJSON_GetArraySize(msgs);
        kvlm_chat_message *cm = calloc((size_t)nm, sizeof *cm);
        char **owned = calloc((size_t)nm, sizeof *owned);
        if (!cm || !owned) {
            free(cm);
            free(owned);
            fail(pe, 500, NULL, "out of memory");
            goto bad;
        }
        bool ok = true;
        for (int i = 0; i < nm && ok; i++) {
            cJSON *m = cJSON_GetArrayItem(msgs, i);
            char pname[64];
            snprintf(pname, sizeof pname, "messages[%d]", i);
            if (!cJSON_IsObject(m)) {
                ok = fail(pe, 400, pname, "'%s' must be an object", pname);
                break;
            }
            cJSON *role = field(m, "role"), *content = field(m, "content");
            if (!role || !cJSON_IsString(role)) {
                snprintf(pname, sizeof pname, "messages[%d].role", i);
                ok = fail(pe, 400, pname, "'%s' must be a string", pname);
                break;
            }
            const char *r = role->valuestring;
            if (strcmp(r, "developer") == 0) r = "system";
            if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")) {
                snprintf(pname, sizeof pname, "messages[%d].role", i);
                ok = fail(pe, 400, pname, "'%s' must be system, developer, user or assistant", pname);
                break;
            }
            cm[i].role = r;
            snprintf(pname, sizeof pname, "messages[%d].content", i);
            if (content && cJSON_IsString(content)) {
                cm[i].content = content->valuestring;
            } else if (content && cJSON_IsArray(content)) {
                /* text parts, concatenated */
                size_t len = 0;
                cJSON *p;
                cJSON_ArrayForEach(p, content) {
                    cJSON *ty = field(p, "type"), *tx = field(p, "text");
                    if (!cJSON_IsObject(p) || !ty || !cJSON_IsString(ty) || strcmp(ty->valuestring, "text") ||
                        !tx || !cJSON_IsString(tx)) {
                        ok = fail(pe, 400, pname, "'%s' parts must be {\"type\":\"text\",\"text\":...}", pname);
                        break;
                    }
                    len += strlen(tx->valuestring);
                }
                if (!ok) break;
                owned[i] = malloc(len + 1);
                if (!owned[i]) {
                    ok = fail(pe, 500, NULL, "out of memory");
                    break;
                }
                owned[i][0] = '\0';
                cJSON_ArrayForEach(p, content) strcat(owned[i], field(p, "text")->valuestring);
                cm[i].content = owned[i];
            } else if (!content && strcmp(r, "assistant") == 0) {
                cm[i].content = "";
            } else {
                ok = fail(pe, 400, pname, "'%s' must be a string or an array of text parts", pname);
            }
        }
        char *prompt = NULL;
        int32_t plen = 0;
        if (ok) {
            int32_t need = kvlm_chat_apply(e->model, cfg->chat_template, cm, nm, true, NULL, 0);
            if (need < 0) need = -need;
            prompt = malloc((size_t)need + 1);
            if (!prompt) ok = fail(pe, 500, NULL, "out of memory");
            else if ((plen = kvlm_chat_apply(e->model, cfg->chat_template, cm, nm, true, prompt, need + 1)) < 0)
                ok = fail(pe, 500, NULL, "the chat template failed");
        }
        if (ok) {
            j->prompt = tokenize(e->model, prompt, (size_t)plen, true, &j->n_prompt);
            if (!j->prompt) ok = fail(pe, 400, "messages", "the messages cannot be tokenized");
        }
        free(prompt);
        for (int i = 0; i < nm; i++) free(owned[i]);
        free(owned);
        free(cm);
        if (!ok) goto bad;
    } else {
        cJSON *p = field(root, "prompt");
        if (!p) {
            fail(pe, 400, "prompt", "'prompt' is required");
            goto bad;
        }
        if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && cJSON_IsString(cJSON_GetArrayItem(p, 0)))
            p = cJSON_GetArrayItem(p, 0);
        if (cJSON_IsString(p)) {
            j->prompt = tokenize(e->model, p->valuestring, strlen(p->valuestring), true, &j->n_prompt);
            if (!j->prompt) {
                fail(pe, 400, "prompt", "the prompt cannot be tokenized");
                goto bad;
            }
        } else if (cJSON_IsArray(p)) {
            int np = cJSON_GetArraySize(p);
            j->prompt = malloc(((size_t)np + 1) * sizeof *j->prompt);
            if (!j->prompt) {
                fail(pe, 500, NULL, "out of memory");
                goto bad;
            }
            for (int i = 0; i < np; i++) {
                cJSON *t = cJSON_GetArrayItem(p, i);
                if (!cJSON_IsNumber(t) || t->valuedouble != floor(t->valuedouble) || t->valuedouble < 0 ||
                    t->valuedouble >= e->n_vocab) {
                    fail(pe, 400, "prompt",
                         "'prompt' must be a string or an array of token ids in [0, %d) (item %d is not)",
                         (int)e->n_vocab, i);
                    goto bad;
                }
                j->prompt[i] = (kvlm_token)t->valuedouble;
            }
            j->n_prompt = np;
        } else {
            fail(pe, 400, "prompt", "'prompt' must be a string or an array of token ids");
            goto bad;
        }
    }
    if (j->n_prompt == 0) {
        fail(pe, 400, chat ? "messages" : "prompt", "the prompt%s is empty", chat ? " rendered from 'messages'" : "");
        goto bad;
    }
    if (j->n_prompt > e->n_ctx) {
        fail(pe, 400, chat ? "messages" : "prompt", "the prompt%s has %d tokens, more than the context of %d",
             chat ? " rendered from 'messages'" : "", (int)j->n_prompt, (int)e->n_ctx);
        pe->code = "context_length_exceeded";
        goto bad;
    }

    if (j->echo) {
        cJSON *p = field(root, "prompt");
        if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && cJSON_IsString(cJSON_GetArrayItem(p, 0)))
            p = cJSON_GetArrayItem(p, 0);
        j->echo_text = cJSON_IsString(p) ? strdup(p->valuestring) : detokenize(e->model, j->prompt, j->n_prompt);
        if (!j->echo_text) {
            fail(pe, 500, NULL, "out of memory");
            goto bad;
        }
        j->echo_len = strlen(j->echo_text);
    }

    /* generation limits (with echo, max_tokens 0 asks for the prompt alone, as OpenAI's API allows) */
    int32_t room = e->n_ctx - j->n_prompt + 1; /* the last token need not be fed back */
    double mt = chat ? room : 16;
    if (!get_num(root, "max_tokens", j->echo ? 0 : 1, 1e9, true, &mt, pe)) goto bad;
    if (!get_num(root, "max_completion_tokens", j->echo ? 0 : 1, 1e9, true, &mt, pe)) goto bad;
    j->max_tokens = mt > room ? room : (int32_t)mt;
    if (!get_num(root, "n", 1, SRV_MAX_N, true, &d, pe)) goto bad;
    else if (field(root, "n")) j->n = (int)d;
    if (j->n > e->parallel) {
        fail(pe, 400, "n", "'n' is %d, more than the server's %d slots (--parallel)", j->n, e->parallel);
        goto bad;
    }

    /* sampling */
    kvlm_sampling_params *sp = &j->sampling;
    d = sp->temperature;
    if (!get_num(root, "temperature", 0, 100, false, &d, pe)) goto bad;
    sp->temperature = (float)d;
    d = sp->top_p;
    if (!get_num(root, "top_p", 0, 1, false, &d, pe)) goto bad;
    sp->top_p = (float)d;
    d = sp->top_k;
    if (!get_num(root, "top_k", 0, 1e9, true, &d, pe)) goto bad;
    sp->top_k = (int32_t)d;
    d = sp->min_p;
    if (!get_num(root, "min_p", 0, 1, false, &d, pe)) goto bad;
    sp->min_p = (float)d;
    d = sp->presence_penalty;
    if (!get_num(root, "presence_penalty", -2, 2, false, &d, pe)) goto bad;
    sp->presence_penalty = (float)d;
    d = sp->frequency_penalty;
    if (!get_num(root, "frequency_penalty", -2, 2, false, &d, pe)) goto bad;
    sp->frequency_penalty = (float)d;
    d = sp->repeat_penalty;
    if (!get_num(root, "repeat_penalty", 0, 10, false, &d, pe)) goto bad;
    if (d <= 0) {
        fail(pe, 400, "repeat_penalty", "'repeat_penalty' must be > 0");
        goto bad;
    }
    sp->repeat_penalty = (float)d;
    if (field(root, "seed")) {
        if (!get_num(root, "seed", -9007199254740991.0, 9007199254740991.0, true, &d, pe)) goto bad;
        sp->seed = (uint64_t)(int64_t)d;
        j->seed_set = true;
    }
    cJSON *lb = field(root, "logit_bias");
    if (lb) {
        if (!cJSON_IsObject(lb)) {
            fail(pe, 400, "logit_bias", "'logit_bias' must be an object of token id -> bias");
            goto bad;
        }
        int nb = cJSON_GetArraySize(lb);
        j->bias = calloc((size_t)nb + 1, sizeof *j->bias);
        if (!j->bias) {
            fail(pe, 500, NULL, "out of memory");
            goto bad;
        }
        cJSON *it;
        cJSON_ArrayForEach(it, lb) {
            char *end;
            errno = 0;
            long id = strtol(it->string, &end, 10);
            if (errno || end == it->string || *end || id < 0 || id >= e->n_vocab) {
                fail(pe, 400, "logit_bias", "'logit_bias' key '%s' is not a token id in [0, %d)", it->string,
                     (int)e->n_vocab);
                goto bad;
            }
            if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || it->valuedouble < -100 ||
                it->valuedouble > 100) {
                fail(pe, 400, "logit_bias", "'logit_bias' values must be numbers in [-100, 100]");
                goto bad;
            }
            j->bias[j->n_bias].token = (kvlm_token)id;
            j->bias[j->n_bias].bias = it->valuedouble <= -100 ? -INFINITY : (float)it->valuedouble;
            j->n_bias++;
        }
    }
    cJSON *stop = field(root, "stop");
    if (stop) {
        if (cJSON_IsString(stop)) {
            if (!stop->valuestring[0]) {
                fail(pe, 400, "stop", "'stop' strings must not be empty");
                goto bad;
            }
            j->stop[j->n_stop++] = strdup(stop->valuestring);
        } else if (cJSON_IsArray(stop) && cJSON_GetArraySize(stop) <= SRV_MAX_STOP) {
            cJSON *it;
            cJSON_ArrayForEach(it, stop) {
                if (!cJSON_IsString(it) || !it->valuestring[0]) {
                    fail(pe, 400, "stop", "'stop' must be a string or an array of non-empty strings");
                    goto bad;
                }
                j->stop[j->n_stop++] = strdup(it->valuestring);
            }
        } else {
            fail(pe, 400, "stop", "'stop' must be a string or an array of at most %d strings", SRV_MAX_STOP);
            goto bad;
        }
        for (int i = 0; i < j->n_stop; i++)
            if (!j->stop[i]) {
                fail(pe, 500, NULL, "out of memory");
                goto bad;
            }
    }
    /* logprobs */
    if (chat) {
        bool lp = false;
        if (!get_bool(root, "logprobs", &lp, pe)) goto bad;
        double top = 0;
        if (!get_num(root, "top_logprobs", 0, SRV_MAX_TOP, true, &top, pe)) goto bad;
        if (field(root, "top_logprobs") && !lp) {
            fail(pe, 400, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
            goto bad;
        }
        if (lp) j->logprobs = (int)top;
    } else {
        double lp = -1;
        if (!get_num(root, "logprobs", 0, SRV_MAX_TOP, true, &lp, pe)) goto bad;
        j->logprobs = (int)lp;
    }
    if (!parse_constraint(e, root, j, pe)) goto bad;
    /* streaming */
    if (!get_bool(root, "stream", &j->stream, pe)) goto bad;
    cJSON *so = field(root, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so)) {
            fail(pe, 400, "stream_options", "'stream_options' must be an object");
            goto bad;
        }
        if (!get_bool(so, "include_usage", &j->include_usage, pe)) goto bad;
    }
    return j;
bad:
    srv_job_free(j);
    return NULL;
}

/* A POST body (serve.h): valid UTF-8, one JSON value with nothing but
 * whitespace after it, an object. */
cJSON *srv_parse_body(const char *body, size_t n, perr *pe) {
    const char *b = body ? body : "";
    if (!srv_utf8_valid(b, n)) {
        fail(pe, 400, NULL, "the request body is not valid UTF-8");
        pe->code = "invalid_utf8";
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(b, n, &end, false);
    if (root && end) {
        while (end < b + n && (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t')) end++;
        if (end != b + n) {
            cJSON_Delete(root);
            root = NULL;
        }
    }
    if (!root || !cJSON_IsObject(root)) {
        fail(pe, 400, NULL, root ? "the request body must be a JSON object" : "the request body is not valid JSON");
        pe->code = "invalid_json";
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* ------------------------------------------------------------ response building */

static cJSON *usage_obj(const srv_job *j) {
    int completion = 0;
    for (int i = 0; i < j->n; i++) completion += j->ch[i].n_gen;
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", j->n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", completion);
    cJSON_AddNumberToObject(u, "total_tokens", j->n_prompt + completion);
    cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
    cJSON_AddNumberToObject(d, "cached_tokens", j->n_cached > 0 ? j->n_cached : 0);
    return u;
}

static char *piece_of(const kvlm_model *m, kvlm_token t, int32_t *len) {
    char small[256];
    int32_t n = kvlm_token_to_piece(m, t, small, sizeof small, false);
    char *buf;
    if (n < 0) {
        buf = malloc((size_t)-n);
        if (!buf) return NULL;
        n = kvlm_token_to_piece(m, t, buf, -n, false);
        if (n < 0) n = 0;
    } else {
        buf = malloc((size_t)n + 1);
        if (!buf) return NULL;
        memcpy(buf, small, (size_t)n);
    }
    *len = n;
    return buf;
}

static cJSON *bytes_arr(const char *p, int32_t n) {
    cJSON *a = cJSON_CreateArray();
    for (int32_t i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber((unsigned char)p[i]));
    return a;
}

/* Chat: {"content":[{token, logprob, bytes, top_logprobs}]} for toks[from..to). */
static cJSON *chat_logprobs(const kvlm_model *m, const srv_choice *c, int from, int to) {
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "content");
    for (int i = from; i < to; i++) {
        const srv_tok *t = &c->toks[i];
        cJSON *it = cJSON_CreateObject();
        int32_t pl = 0;
        char *p = piece_of(m, t->id, &pl);
        char *clean = p ? srv_utf8_clean(p, (size_t)pl) : NULL;
        cJSON_AddStringToObject(it, "token", clean ? clean : "");
        cJSON_AddNumberToObject(it, "logprob", t->logprob);
        cJSON_AddItemToObject(it, "bytes", bytes_arr(p ? p : "", p ? pl : 0));
        free(clean);
        free(p);
        cJSON *top = cJSON_AddArrayToObject(it, "top_logprobs");
        for (int k = 0; k < t->n_top; k++) {
            cJSON *x = cJSON_CreateObject();
            p = piece_of(m, t->top_id[k], &pl);
            clean = p ? srv_utf8_clean(p, (size_t)pl) : NULL;
            cJSON_AddStringToObject(x, "token", clean ? clean : "");
            cJSON_AddNumberToObject(x, "logprob", t->top_lp[k]);
            cJSON_AddItemToObject(x, "bytes", bytes_arr(p ? p : "", p ? pl : 0));
            free(clean);
            free(p);
            cJSON_AddItemToArray(top, x);
        }
        cJSON_AddItemToArray(arr, it);
    }
    return o;
}

/* Completions: {tokens, token_logprobs, top_logprobs, text_offset} for toks[from..to). With echo
 * the prompt's tokens come first (the first with null logprobs, as OpenAI's API); text_offset
 * counts the bytes of the pieces before a token, and the generated tokens' offsets start after
 * the echoed prompt text (echo_len). */
static cJSON *completion_logprobs(const kvlm_model *m, const srv_choice *c, int from, int to, size_t *offset,
                                  size_t echo_len) {
    cJSON *o = cJSON_CreateObject();
    cJSON *toks = cJSON_AddArrayToObject(o, "tokens"), *lps = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(o, "top_logprobs"), *offs = cJSON_AddArrayToObject(o, "text_offset");
    for (int i = from; i < to; i++) {
        const srv_tok *t = &c->toks[i];
        if (!t->in_prompt && (i == 0 || c->toks[i - 1].in_prompt)) *offset = echo_len; /* the first generated */
        int32_t pl = 0;
        char *p = piece_of(m, t->id, &pl);
        char *clean = p ? srv_utf8_clean(p, (size_t)pl) : NULL;
        cJSON_AddItemToArray(toks, cJSON_CreateString(clean ? clean : ""));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)*offset));
        *offset += (size_t)pl;
        free(clean);
        free(p);
        if (t->no_lp) {
            cJSON_AddItemToArray(lps, cJSON_CreateNull());
            cJSON_AddItemToArray(tops, cJSON_CreateNull());
            continue;
        }
        cJSON_AddItemToArray(lps, cJSON_CreateNumber(t->logprob));
        cJSON *top = cJSON_CreateObject();
        for (int k = 0; k < t->n_top; k++) {
            p = piece_of(m, t->top_id[k], &pl);
            clean = p ? srv_utf8_clean(p, (size_t)pl) : NULL;
            if (clean && !cJSON_GetObjectItemCaseSensitive(top, clean))
                cJSON_AddNumberToObject(top, clean, t->top_lp[k]);
            free(clean);
            free(p);
        }
        cJSON_AddItemToArray(tops, top);
    }
    return o;
}

static void id_str(const srv_job *j, char *buf, size_t n) {
    snprintf(buf, n, "%s-%llx%08llx", j->chat ? "chatcmpl" : "cmpl", (unsigned long long)time(NULL),
             (unsigned long long)j->id);
}

static cJSON *response_head(const srv_http *h, const srv_job *j, const char *object, const char *id, long created) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)created);
    cJSON_AddStringToObject(o, "model", h->cfg->alias);
    return o;
}

static cJSON *full_response(const srv_http *h, const srv_job *j) {
    char id[64];
    id_str(j, id, sizeof id);
    cJSON *o = response_head(h, j, j->chat ? "chat.completion" : "text_completion", id, (long)time(NULL));
    cJSON *ch = cJSON_AddArrayToObject(o, "choices");
    for (int i = 0; i < j->n; i++) {
        const srv_choice *c = &j->ch[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "index", i);
        if (j->chat) {
            cJSON *msg = cJSON_AddObjectToObject(x, "message");
            cJSON_AddStringToObject(msg, "role", "assistant");
            cJSON_AddStringToObject(msg, "content", c->text ? c->text : "");
            if (j->logprobs >= 0) cJSON_AddItemToObject(x, "logprobs", chat_logprobs(h->e->model, c, 0, c->n_toks));
            else cJSON_AddNullToObject(x, "logprobs");
        } else {
            cJSON_AddStringToObject(x, "text", c->text ? c->text : "");
            size_t off = 0;
            if (j->logprobs >= 0)
                cJSON_AddItemToObject(x, "logprobs", completion_logprobs(h->e->model, c, 0, c->n_toks, &off, j->echo_len));
            else cJSON_AddNullToObject(x, "logprobs");
        }
        cJSON_AddStringToObject(x, "finish_reason", c->finish ? c->finish : "error");
        cJSON_AddItemToArray(ch, x);
    }
    cJSON_AddItemToObject(o, "usage", usage_obj(j));
    return o;
}

/* ------------------------------------------------------------ waiting */

static bool client_gone(int fd) {
    if (fd < 0) return false;
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
    if (p.revents & POLLIN) {
        char c;
        ssize_t r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        if (r == 0) return true;
    }
    return false;
}

static void wait_ev(srv_engine *e, int ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)ms * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&e->ev, &e->mu, &ts);
}

static void note_job(req *rq, const srv_job *j) {
    rq->n_prompt = j->n_prompt;
    rq->n_cached = j->n_cached > 0 ? j->n_cached : 0;
    rq->n_completion = 0;
    for (int i = 0; i < j->n; i++) rq->n_completion += j->ch[i].n_gen;
    rq->ttft_ms = j->t_first > 0 ? (j->t_first - j->t_arrive) * 1e3 : -1;
}

/* ------------------------------------------------------------ SSE */

typedef struct sse {
    srv_http *h;
    srv_job *j;
    req *rq;
    int fd;
    char *ev;
    size_t ev_n, ev_off;
    bool usage_sent, done_sent, error_sent, ended;
    char id[64];
    long created;
    size_t lp_off[SRV_MAX_N];
} sse;

static char *event_of(cJSON *o, size_t *n) {
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) return NULL;
    size_t l = strlen(s);
    char *ev = malloc(l + 9);
    if (!ev) {
        free(s);
        return NULL;
    }
    memcpy(ev, "data: ", 6);
    memcpy(ev + 6, s, l);
    memcpy(ev + 6 + l, "\n\n", 3);
    free(s);
    *n = l + 8;
    return ev;
}

static cJSON *chunk_head(sse *st, cJSON **choices) {
    const srv_job *j = st->j;
    cJSON *o = response_head(st->h, j, j->chat ? "chat.completion.chunk" : "text_completion", st->id, st->created);
    *choices = cJSON_AddArrayToObject(o, "choices");
    return o;
}

/* The next event, if one is ready (under e->mu). */
static char *next_event(sse *st, size_t *n) {
    srv_job *j = st->j;
    const kvlm_model *m = st->h->e->model;
    if (j->state == JOB_DONE && j->err_status) {
        if (!st->error_sent) {
            st->error_sent = true;
            return event_of(error_obj(j->err_status, NULL, NULL, j->err_msg), n);
        }
    } else {
        for (int i = 0; i < j->n; i++) {
            srv_choice *c = &j->ch[i];
            bool role = j->chat && !c->role_sent;
            bool text = c->text_len > c->text_sent || c->n_toks > c->toks_sent;
            if (!role && !text) continue;
            cJSON *choices, *o = chunk_head(st, &choices), *x = cJSON_CreateObject();
            cJSON_AddNumberToObject(x, "index", i);
            const char *t = c->text ? c->text + c->text_sent : "";
            char *tcopy = strndup(t, c->text_len - c->text_sent);
            if (j->chat) {
                cJSON *delta = cJSON_AddObjectToObject(x, "delta");
                if (role) cJSON_AddStringToObject(delta, "role", "assistant");
                cJSON_AddStringToObject(delta, "content", tcopy ? tcopy : "");
            } else {
                cJSON_AddStringToObject(x, "text", tcopy ? tcopy : "");
            }
            free(tcopy);
            if (j->logprobs >= 0 && c->n_toks > c->toks_sent) {
                cJSON_AddItemToObject(x, "logprobs", j->chat ? chat_logprobs(m, c, c->toks_sent, c->n_toks)
                                                             : completion_logprobs(m, c, c->toks_sent, c->n_toks,
                                                                                   &st->lp_off[i], j->echo_len));
            } else {
                cJSON_AddNullToObject(x, "logprobs");
            }
            cJSON_AddNullToObject(x, "finish_reason");
            cJSON_AddItemToArray(choices, x);
            c->role_sent = true;
            c->text_sent = c->text_len;
            c->toks_sent = c->n_toks;
            return event_of(o, n);
        }
        for (int i = 0; i < j->n; i++) {
            srv_choice *c = &j->ch[i];
            if (!c->done || c->finish_sent) continue;
            cJSON *choices, *o = chunk_head(st, &choices), *x = cJSON_CreateObject();
            cJSON_AddNumberToObject(x, "index", i);
            if (j->chat) cJSON_AddObjectToObject(x, "delta");
            else cJSON_AddStringToObject(x, "text", "");
            cJSON_AddNullToObject(x, "logprobs");
            cJSON_AddStringToObject(x, "finish_reason", c->finish ? c->finish : "error");
            cJSON_AddItemToArray(choices, x);
            c->finish_sent = true;
            return event_of(o, n);
        }
        if (j->state != JOB_DONE) return NULL;
        if (j->include_usage && !st->usage_sent) {
            st->usage_sent = true;
            cJSON *choices, *o = chunk_head(st, &choices);
            (void)choices;
            cJSON_AddItemToObject(o, "usage", usage_obj(j));
            return event_of(o, n);
        }
    }
    if (j->state == JOB_DONE && !st->done_sent) {
        st->done_sent = true;
        char *ev = strdup("data: [DONE]\n\n");
        if (ev) *n = strlen(ev);
        return ev;
    }
    return NULL;
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    sse *st = cls;
    srv_engine *e = st->h->e;
    if (st->ev && st->ev_off < st->ev_n) {
        size_t k = st->ev_n - st->ev_off < max ? st->ev_n - st->ev_off : max;
        memcpy(buf, st->ev + st->ev_off, k);
        st->ev_off += k;
        return (ssize_t)k;
    }
    free(st->ev);
    st->ev = NULL;
    if (st->ended) return MHD_CONTENT_READER_END_OF_STREAM;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        size_t n = 0;
        char *ev = next_event(st, &n);
        if (ev) {
            if (st->done_sent) {
                st->ended = true;
                note_job(st->rq, st->j);
            }
            pthread_mutex_unlock(&e->mu);
            st->ev = ev;
            st->ev_n = n;
            size_t k = n < max ? n : max;
            memcpy(buf, ev, k);
            st->ev_off = k;
            return (ssize_t)k;
        }
        if (st->done_sent) {
            pthread_mutex_unlock(&e->mu);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        wait_ev(e, 50);
        if (st->j->state != JOB_DONE && client_gone(st->fd)) {
            st->j->cancel = true;
            note_job(st->rq, st->j);
            pthread_cond_signal(&e->wake);
            pthread_mutex_unlock(&e->mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
}

static void sse_free(void *cls) {
    sse *st = cls;
    srv_engine *e = st->h->e;
    pthread_mutex_lock(&e->mu);
    if (st->j->state != JOB_DONE) {
        st->j->cancel = true;
        pthread_cond_signal(&e->wake);
    }
    srv_job_release(e, st->j);
    st->h->inflight--;
    pthread_cond_broadcast(&e->ev);
    pthread_mutex_unlock(&e->mu);
    free(st->ev);
    free(st);
}

/* A header value for the log line: printable ASCII only (others become '?'), at most size - 1 bytes. */
static void log_safe(char *out, size_t size, const char *v) {
    size_t i = 0;
    for (; v[i] && i + 1 < size; i++) out[i] = v[i] > 0x20 && v[i] < 0x7f ? v[i] : '?';
    out[i] = '\0';
}

/* ------------------------------------------------------------ routes */

static enum MHD_Result run_generation(srv_http *h, struct MHD_Connection *c, req *rq, const cJSON *root, bool chat) {
    srv_engine *e = h->e;
    perr pe = {0};
    srv_job *j = srv_parse_generation(h->e, h->cfg, root, chat, &pe);
    if (!j) return send_error(h, c, rq, pe.status, pe.param[0] ? pe.param : NULL, pe.code, "%s", pe.msg);
    rq->n_prompt = j->n_prompt;
    const bool stream = j->stream;
    if (h->draining || !srv_engine_submit(e, j)) {
        srv_job_free(j);
        return send_error(h, c, rq, 503, NULL, "queue_full", "the server is busy or shutting down; retry later");
    }
    pthread_mutex_lock(&e->mu);
    h->inflight++;
    pthread_mutex_unlock(&e->mu);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    int fd = ci ? ci->connect_fd : -1;
    if (stream) {
        sse *st = calloc(1, sizeof *st);
        if (!st) {
            pthread_mutex_lock(&e->mu);
            j->cancel = true;
            srv_job_release(e, j);
            h->inflight--;
            pthread_mutex_unlock(&e->mu);
            return MHD_NO;
        }
        st->h = h;
        st->j = j;
        st->rq = rq;
        st->fd = fd;
        st->created = (long)time(NULL);
        id_str(j, st->id, sizeof st->id);
        rq->is_stream = true;
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 * 1024, sse_read, st, sse_free);
        if (!r) {
            sse_free(st);
            return MHD_NO;
        }
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        add_cors(h, r);
        rq->status = 200;
        enum MHD_Result ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ret;
    }
    pthread_mutex_lock(&e->mu);
    while (j->state != JOB_DONE) {
        wait_ev(e, 50);
        if (j->state != JOB_DONE && !j->cancel && client_gone(fd)) {
            j->cancel = true;
            pthread_cond_signal(&e->wake);
        }
    }
    note_job(rq, j);
    const bool cancelled = j->cancel;
    cJSON *out = NULL;
    int status = 200;
    if (j->err_status) {
        status = j->err_status;
        out = error_obj(status, NULL, NULL, j->err_msg);
    } else if (!cancelled) {
        out = full_response(h, j);
    }
    srv_job_release(e, j);
    h->inflight--;
    pthread_cond_broadcast(&e->ev);
    pthread_mutex_unlock(&e->mu);
    if (cancelled && !out) {
        rq->status = 499; /* client closed the request (logged only) */
        return MHD_NO;
    }
    if (status == 503) {
        char *s = cJSON_PrintUnformatted(out);
        cJSON_Delete(out);
        return s ? send_text(h, c, rq, 503, "application/json", s, strlen(s), "Retry-After", "1") : MHD_NO;
    }
    return send_json(h, c, rq, status, out);
}

static enum MHD_Result route_tokenize(srv_http *h, struct MHD_Connection *c, req *rq, const cJSON *root) {
    perr pe = {0};
    const char *content = NULL;
    bool add_special = false, with_pieces = false;
    if (!get_str(root, "content", &content, &pe) || !get_bool(root, "add_special", &add_special, &pe) ||
        !get_bool(root, "with_pieces", &with_pieces, &pe))
        return send_error(h, c, rq, pe.status, pe.param, NULL, "%s", pe.msg);
    if (!content) return send_error(h, c, rq, 400, "content", NULL, "'content' is required");
    int32_t n = 0;
    kvlm_token *t = tokenize(h->e->model, content, strlen(content), add_special, &n);
    if (!t) return send_error(h, c, rq, 400, "content", NULL, "the content cannot be tokenized");
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "tokens");
    for (int32_t i = 0; i < n; i++) {
        if (!with_pieces) {
            cJSON_AddItemToArray(arr, cJSON_CreateNumber(t[i]));
            continue;
        }
        cJSON *x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "id", t[i]);
        int32_t pl = 0;
        char *p = piece_of(h->e->model, t[i], &pl);
        if (p && srv_utf8_valid(p, (size_t)pl)) {
            char *z = strndup(p, (size_t)pl);
            cJSON_AddStringToObject(x, "piece", z ? z : "");
            free(z);
        } else {
            cJSON_AddItemToObject(x, "piece", bytes_arr(p ? p : "", p ? pl : 0));
        }
        free(p);
        cJSON_AddItemToArray(arr, x);
    }
    free(t);
    return send_json(h, c, rq, 200, o);
}

static enum MHD_Result route_detokenize(srv_http *h, struct MHD_Connection *c, req *rq, const cJSON *root) {
    cJSON *toks = field(root, "tokens");
    if (!toks) return send_error(h, c, rq, 400, "tokens", NULL, "'tokens' is required");
    if (!cJSON_IsArray(toks)) return send_error(h, c, rq, 400, "tokens", NULL, "'tokens' must be an array of token ids");
    size_t cap = 256, n = 0;
    char *buf = malloc(cap);
    cJSON *it;
    cJSON_ArrayForEach(it, toks) {
        if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || it->valuedouble < 0 ||
            it->valuedouble >= h->e->n_vocab) {
            free(buf);
            return send_error(h, c, rq, 400, "tokens", NULL, "'tokens' must be token ids in [0, %d)",
                              (int)h->e->n_vocab);
        }
        int32_t pl = 0;
        char *p = piece_of(h->e->model, (kvlm_token)it->valuedouble, &pl);
        if (!p || !buf) {
            free(p);
            free(buf);
            return send_error(h, c, rq, 500, NULL, NULL, "out of memory");
        }
        while (n + (size_t)pl + 1 > cap) {
            cap *= 2;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(p);
                free(buf);
                return send_error(h, c, rq, 500, NULL, NULL, "out of memory");
            }
            buf = nb;
        }
        memcpy(buf + n, p, (size_t)pl);
        n += (size_t)pl;
        free(p);
    }
    char *clean = buf ? srv_utf8_clean(buf, n) : NULL;
    free(buf);
    if (!clean) return send_error(h, c, rq, 500, NULL, NULL, "out of memory");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "content", clean);
    free(clean);
    return send_json(h, c, rq, 200, o);
}

static cJSON *model_obj(const srv_http *h) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", h->cfg->alias);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", 0);
    cJSON_AddStringToObject(m, "owned_by", "kvlm");
    cJSON *meta = cJSON_AddObjectToObject(m, "meta");
    cJSON_AddNumberToObject(meta, "n_ctx", h->e->n_ctx);
    cJSON_AddNumberToObject(meta, "n_vocab", h->e->n_vocab);
    return m;
}

static bool auth_ok(const srv_http *h, struct MHD_Connection *c) {
    if (!h->cfg->api_key) return true;
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!a || strncasecmp(a, "Bearer ", 7) != 0) return false;
    a += 7;
    size_t la = strlen(a), lk = strlen(h->cfg->api_key);
    unsigned diff = (unsigned)(la ^ lk);
    for (size_t i = 0; i < la; i++) diff |= (unsigned char)a[i] ^ (unsigned char)h->cfg->api_key[i % (lk ? lk : 1)];
    return diff == 0;
}

typedef enum route {
    R_NONE, R_HEALTH, R_MODELS, R_MODEL_ONE, R_METRICS, R_KV, R_WEB, R_COMPLETIONS, R_CHAT, R_TOKENIZE, R_DETOKENIZE
} route;

/* The web page's file for a path ("/" is the page), or NULL. */
static const srv_asset *web_asset(const char *url) {
    if (!strcmp(url, "/")) url = "/index.html";
    for (size_t i = 0; i < srv_n_web_assets; i++)
        if (!strcmp(url, srv_web_assets[i].path)) return &srv_web_assets[i];
    return NULL;
}

/* The page and its files: open (the page holds no secrets; what it fetches asks for the key), never
 * cached without asking again, and a Content-Security-Policy that allows nothing but this server:
 * no inline script, no other origin (the page is its own files and fetches to its own server). */
static enum MHD_Result send_asset(srv_http *h, struct MHD_Connection *c, req *rq, const srv_asset *a) {
    struct MHD_Response *r = MHD_create_response_from_buffer(a->size, (void *)(uintptr_t)a->data,
                                                             MHD_RESPMEM_PERSISTENT); /* only read */
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", a->content_type);
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    MHD_add_response_header(r, "Content-Security-Policy",
                            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
                            "frame-ancestors 'none'");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
    if (h->replica[0]) MHD_add_response_header(r, "X-Kvlm-Replica", h->replica);
    rq->status = 200;
    enum MHD_Result ret = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return ret;
}

static route find_route(const char *url, bool *is_post) {
    *is_post = true;
    if (!strcmp(url, "/v1/completions") || !strcmp(url, "/completions")) return R_COMPLETIONS;
    if (!strcmp(url, "/v1/chat/completions") || !strcmp(url, "/chat/completions")) return R_CHAT;
    if (!strcmp(url, "/tokenize")) return R_TOKENIZE;
    if (!strcmp(url, "/detokenize")) return R_DETOKENIZE;
    *is_post = false;
    if (!strcmp(url, "/health")) return R_HEALTH;
    if (!strcmp(url, "/v1/models") || !strcmp(url, "/models")) return R_MODELS;
    if (!strncmp(url, "/v1/models/", 11)) return R_MODEL_ONE;
    if (!strcmp(url, "/metrics")) return R_METRICS;
    if (!strcmp(url, "/v1/kv")) return R_KV;
    if (web_asset(url)) return R_WEB;
    return R_NONE;
}

static enum MHD_Result handle(srv_http *h, struct MHD_Connection *c, req *rq, const char *url, const char *method) {
    if (!strcmp(method, "OPTIONS")) {
        struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        add_cors(h, r);
        MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
        const char *rh = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Access-Control-Request-Headers");
        MHD_add_response_header(r, "Access-Control-Allow-Headers", rh ? rh : "Authorization, Content-Type, X-Session-Id");
        MHD_add_response_header(r, "Access-Control-Expose-Headers", "X-Kvlm-Replica");
        MHD_add_response_header(r, "Access-Control-Max-Age", "86400");
        rq->status = 204;
        enum MHD_Result ret = MHD_queue_response(c, 204, r);
        MHD_destroy_response(r);
        return ret;
    }
    bool want_post;
    route rt = find_route(url, &want_post);
    if (rt == R_WEB && h->cfg->no_webui) rt = R_NONE;
    if (rt == R_NONE) return send_error(h, c, rq, 404, NULL, "not_found", "no route %s %s", method, url);
    bool is_get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    if ((want_post && strcmp(method, "POST")) || (!want_post && !is_get))
        return send_error(h, c, rq, 405, NULL, "method_not_allowed", "%s is not allowed on %s", method, url);
    if (rt == R_WEB) return send_asset(h, c, rq, web_asset(url)); /* also while loading: the page says so */
    if (!atomic_load(&h->ready)) {
        /* the model is still loading: nothing but this answer (llama-server's behaviour) */
        if (rt == R_HEALTH) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "status", "loading");
            char *s = cJSON_PrintUnformatted(o);
            cJSON_Delete(o);
            return s ? send_text(h, c, rq, 503, "application/json", s, strlen(s), "Retry-After", "1") : MHD_NO;
        }
        return send_error(h, c, rq, 503, NULL, "model_loading", "the model is loading; retry later");
    }
    if (rt == R_HEALTH) {
        cJSON *o = cJSON_CreateObject();
        const bool down = h->draining || h->unhealthy;
        cJSON_AddStringToObject(o, "status", h->draining ? "shutting down" : h->unhealthy ? "draining" : "ok");
        return send_json(h, c, rq, down ? 503 : 200, o);
    }
    if (rt == R_MODELS) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "object", "list");
        cJSON *d = cJSON_AddArrayToObject(o, "data");
        cJSON_AddItemToArray(d, model_obj(h));
        return send_json(h, c, rq, 200, o);
    }
    if (rt == R_MODEL_ONE) {
        if (!model_ok(h->cfg, url + 11) || !url[11])
            return send_error(h, c, rq, 404, "model", "model_not_found", "the model '%s' does not exist", url + 11);
        return send_json(h, c, rq, 200, model_obj(h));
    }
    if (!auth_ok(h, c)) return send_error(h, c, rq, 401, NULL, "invalid_api_key", "missing or wrong API key");
    if (rt == R_METRICS) {
        char *s = srv_metrics_text(h->e);
        if (!s) return send_error(h, c, rq, 500, NULL, NULL, "out of memory");
        return send_text(h, c, rq, 200, "text/plain; version=0.0.4", s, strlen(s), NULL, NULL);
    }
    if (rt == R_KV) {
        char *s = srv_kv_json(h->e);
        if (!s) return send_error(h, c, rq, 500, NULL, NULL, "out of memory");
        return send_text(h, c, rq, 200, "application/json", s, strlen(s), "Cache-Control", "no-store");
    }
    /* POST with a JSON body */
    perr pe = {0};
    cJSON *root = srv_parse_body(rq->body, rq->n, &pe);
    if (!root) return send_error(h, c, rq, pe.status, NULL, pe.code, "%s", pe.msg);
    enum MHD_Result ret;
    switch (rt) {
    case R_COMPLETIONS: ret = run_generation(h, c, rq, root, false); break;
    case R_CHAT: ret = run_generation(h, c, rq, root, true); break;
    case R_TOKENIZE: ret = route_tokenize(h, c, rq, root); break;
    default: ret = route_detokenize(h, c, rq, root); break;
    }
    cJSON_Delete(root);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    srv_http *h = cls;
    req *rq = *con_cls;
    if (!rq) {
        rq = calloc(1, sizeof *rq);
        if (!rq) return MHD_NO;
        rq->t0 = srv_now();
        snprintf(rq->method, sizeof rq->method, "%s", method);
        snprintf(rq->path, sizeof rq->path, "%s", url);
        *con_cls = rq;
        const char *sid = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Session-Id");
        if (sid) log_safe(rq->session, sizeof rq->session, sid);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > h->cfg->max_body) {
            rq->too_big = true;
            return send_error(h, c, rq, 413, NULL, "body_too_large", "the request body is over %zu bytes",
                              h->cfg->max_body);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (!rq->too_big) {
            if (rq->n + *upload_size > h->cfg->max_body) {
                rq->too_big = true;
                free(rq->body);
                rq->body = NULL;
                rq->n = 0;
            } else {
                if (rq->n + *upload_size + 1 > rq->cap) {
                    size_t cap = rq->cap ? rq->cap : 4096;
                    while (cap < rq->n + *upload_size + 1) cap *= 2;
                    char *nb = realloc(rq->body, cap);
                    if (!nb) return MHD_NO;
                    rq->body = nb;
                    rq->cap = cap;
                }
                memcpy(rq->body + rq->n, upload, *upload_size);
                rq->n += *upload_size;
                rq->body[rq->n] = '\0';
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (rq->status) return MHD_YES; /* a response was queued already (413 at the first call) */
    if (rq->too_big)
        return send_error(h, c, rq, 413, NULL, "body_too_large", "the request body is over %zu bytes",
                          h->cfg->max_body);
    return handle(h, c, rq, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    const srv_http *h = cls;
    (void)c;
    req *rq = *con_cls;
    if (!rq) return;
    double ms = (srv_now() - rq->t0) * 1e3;
    int status = rq->status;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && status == 200 && rq->is_stream) status = 499;
    if (strcmp(rq->path, "/health") && strcmp(rq->path, "/metrics") && strcmp(rq->path, "/v1/kv") &&
        !h->cfg->embedded) {
        char ttft[48] = "";
        if (rq->ttft_ms >= 0 && (rq->n_prompt || rq->n_completion)) snprintf(ttft, sizeof ttft, " ttft_ms=%.1f", rq->ttft_ms);
        fprintf(stderr, "%s %s %d prompt=%d cached=%d completion=%d%s total_ms=%.1f%s%s\n", rq->method, rq->path,
                status, rq->n_prompt, rq->n_cached, rq->n_completion, ttft, ms, rq->session[0] ? " session=" : "",
                rq->session);
    }
    free(rq->body);
    free(rq);
    *con_cls = NULL;
}

srv_http *srv_http_start(srv_engine *e, const srv_config *cfg, char *msg, size_t msg_size) {
    srv_http *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(msg, msg_size, "out of memory");
        return NULL;
    }
    h->e = e;
    h->cfg = cfg;
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)cfg->port);
    const char *host = strcmp(cfg->host, "localhost") == 0 ? "127.0.0.1" : cfg->host;
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        snprintf(msg, msg_size, "--host '%s' is not an IPv4 address", cfg->host);
        free(h);
        return NULL;
    }
    if (cfg->embedded) {
        /* external select, connections added by the caller */
        h->d = MHD_start_daemon(MHD_USE_NO_LISTEN_SOCKET, 0, NULL, NULL, on_request, h,
                                MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                                (unsigned)cfg->max_conn_per_ip, MHD_OPTION_CONNECTION_LIMIT, (unsigned)1000,
                                MHD_OPTION_END);
        if (!h->d) {
            snprintf(msg, msg_size, "cannot start an embedded HTTP daemon");
            free(h);
            return NULL;
        }
        return h;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_POLL |
                     MHD_USE_ERROR_LOG;
    h->d = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, &addr,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                            (unsigned)cfg->max_conn_per_ip, MHD_OPTION_CONNECTION_LIMIT, (unsigned)1000,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)300, MHD_OPTION_END);
    if (!h->d) {
        snprintf(msg, msg_size, "cannot listen on %s:%d: %s", cfg->host, cfg->port, strerror(errno));
        free(h);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    const unsigned port = di ? (unsigned)di->port : (unsigned)cfg->port;
    if (cfg->replica_id) log_safe(h->replica, sizeof h->replica, cfg->replica_id);
    else snprintf(h->replica, sizeof h->replica, "%s:%u", host, port);
    fprintf(stderr, "kvlm serve: listening on http://%s:%u (loading model '%s'; replica %s)\n", host, port, cfg->alias,
            h->replica);
    return h;
}

void srv_http_set_ready(srv_http *h) {
    atomic_store(&h->ready, 1);
    if (!h->cfg->embedded)
        fprintf(stderr, "kvlm serve: ready (model '%s', %d slots, context %d, %d thread%s)\n", h->cfg->alias,
                h->cfg->parallel, (int)h->e->n_ctx, h->e->n_threads, h->e->n_threads == 1 ? "" : "s");
}

void srv_http_set_draining(srv_http *h) { atomic_store(&h->unhealthy, 1); }

void srv_http_quiesce(srv_http *h) {
    atomic_store(&h->draining, 1);
    MHD_socket s = MHD_quiesce_daemon(h->d);
    if (s != MHD_INVALID_SOCKET) close(s);
}

void srv_http_wait_idle(srv_http *h, double timeout_s) {
    srv_engine *e = h->e;
    const double until = srv_now() + timeout_s;
    pthread_mutex_lock(&e->mu);
    while (h->inflight > 0 && srv_now() < until) wait_ev(e, 20);
    pthread_mutex_unlock(&e->mu);
}

void srv_http_stop(srv_http *h) {
    if (!h) return;
    MHD_stop_daemon(h->d);
    free(h);
}

struct MHD_Daemon *srv_http_daemon(srv_http *h) { return h->d; }
