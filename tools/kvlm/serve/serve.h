/* kvlm serve: an OpenAI-compatible HTTP server over the public API
 * (include/kvlm.h only). The engine (serve_engine.c) is one scheduler thread
 * that owns every session; the HTTP side (serve_http.c) runs one thread per
 * connection (libmicrohttpd) and talks to the engine through jobs. */
#ifndef KVLM_SERVE_H
#define KVLM_SERVE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvlm.h"

#define SRV_MAX_N 8       /* choices per request */
#define SRV_MAX_STOP 16   /* stop strings per request */
#define SRV_MAX_TOP 20    /* top_logprobs */
#define SRV_ATTACH_CHUNKS 8 /* prompt chunks taken from the shared pool per scheduler step */
#define SRV_LP_CHUNK 32   /* prompt tokens per step when their logprobs are wanted (echo) */
#define SRV_GRAMMAR_CACHE 32 /* compiled grammars kept (LRU) */

/* The cache of compiled grammars (serve_grammar.c; thread-safe): an entry per kind (GBNF or JSON
 * Schema) and text, the SRV_GRAMMAR_CACHE most recently used kept. */
typedef struct srv_gcache srv_gcache;
typedef struct srv_gentry srv_gentry;
srv_gcache *srv_gcache_new(int cap);
/* Entries still held by jobs live until they are released. */
void srv_gcache_free(srv_gcache *c);
/* The compiled grammar of text (schema: a JSON Schema, else GBNF) for m, held until
 * srv_gentry_release; NULL with err set when it does not compile. c NULL: compiled, not cached. */
srv_gentry *srv_gcache_get(srv_gcache *c, const kvlm_model *m, bool schema, const char *text, kvlm_error *err);
const kvlm_grammar *srv_gentry_grammar(const srv_gentry *x);
void srv_gentry_release(srv_gentry *x);
void srv_gcache_stats(srv_gcache *c, int *n, uint64_t *hits, uint64_t *misses);

typedef struct srv_config {
    const char *model_path;
    const char *host;
    int port;
    int parallel;          /* running sequences */
    int queue;             /* waiting requests before 503 */
    size_t max_body;       /* bytes */
    const char *api_key;   /* NULL: open */
    const char *alias;     /* the model id in /v1/models */
    const char *cors_origin;
    double timeout_s;      /* per request; 0: none */
    int prefill_chunk;     /* prompt tokens per scheduler step */
    int max_conn_per_ip;
    double shutdown_grace_s;
    const char *chat_template;
    const char *replica_id; /* X-Kvlm-Replica on every response (NULL: "HOST:PORT") */
    double drain_delay_s;   /* on SIGTERM: /health says 503 "draining" this long, still serving,
                               before the listening socket closes (a balancer's health checks
                               move new work away meanwhile) */
    bool no_webui;          /* --no-webui: GET / and the page's files are 404 */
    kvlm_session_params sp; /* n_ctx, threads, KV settings */
    /* Embedded (fuzz/fuzz_http.c): no listening socket and no threads of the HTTP side's own; the
       caller hands it connections (MHD_add_connection on srv_http_daemon) and runs it (MHD_run,
       external select); nothing is logged on stderr. */
    bool embedded;
} srv_config;

/* One generated token, kept for logprobs. */
typedef struct srv_tok {
    kvlm_token id;
    bool in_prompt; /* echo: a prompt token */
    bool no_lp;     /* the prompt's first token: nothing predicted it */
    float logprob;
    int n_top;
    kvlm_token top_id[SRV_MAX_TOP];
    float top_lp[SRV_MAX_TOP];
} srv_tok;

typedef struct srv_choice {
    /* owned by the scheduler thread */
    kvlm_sampler *smp;
    kvlm_text_stream *ts;
    /* published under the engine mutex */
    char *text;
    size_t text_len, text_cap;
    srv_tok *toks;
    int n_toks, cap_toks;
    int n_gen;
    bool done;
    const char *finish; /* "stop", "length", "cancelled", "timeout", "error" */
    /* read by the HTTP side only (streaming progress) */
    size_t text_sent;
    int toks_sent;
    bool role_sent, finish_sent;
} srv_choice;

typedef enum srv_job_state { JOB_QUEUED, JOB_ACTIVE, JOB_DONE } srv_job_state;

typedef struct srv_job {
    int refs; /* under the engine mutex: the HTTP side and the engine */
    uint64_t id;
    /* the request (read-only once submitted) */
    bool chat, stream, include_usage;
    kvlm_token *prompt;
    int32_t n_prompt;
    kvlm_sampling_params sampling; /* sampling.grammar: grammar's, or NULL */
    srv_gentry *grammar;           /* response_format json_object/json_schema, json_schema, grammar */
    bool seed_set;
    kvlm_logit_bias *bias;
    int n_bias;
    char *stop[SRV_MAX_STOP];
    int n_stop;
    int32_t max_tokens; /* already capped by the context */
    int n;
    int logprobs;       /* -1: none; else top alternatives per token (0..20) */
    bool echo;          /* completions: the prompt comes first in the text (and its logprobs) */
    char *echo_text;    /* the prompt as text (NUL-terminated) */
    size_t echo_len;
    srv_tok *plp;       /* echo with logprobs: one entry per prompt token, filled by the
                           prefill of choice 0 (scheduler) and copied into every choice */
    /* state, under the engine mutex */
    srv_job_state state;
    bool cancel;        /* the client went away */
    int n_cached;
    int n_running;      /* choices not yet done */
    double t_arrive, t_first, t_done, deadline;
    int err_status;     /* 0, or the HTTP status of a failure */
    char err_msg[512];
    srv_choice ch[SRV_MAX_N];
    struct srv_job *next; /* wait queue */
} srv_job;

/* Histogram with fixed buckets (seconds). */
#define SRV_NBUCKETS 12
#define SRV_RATE_SLOTS 8 /* 2 s of tokens/s history */
typedef struct srv_hist {
    uint64_t count[SRV_NBUCKETS + 1]; /* the last: +Inf */
    double sum;
    uint64_t n;
} srv_hist;

typedef struct srv_metrics {
    uint64_t finished[6]; /* stop, length, cancelled, timeout, error, rejected */
    uint64_t prompt_tokens, prompt_cached, gen_tokens;
    uint64_t prefix_queries, prefix_hits;
    uint64_t cancelled;
    uint64_t decode_steps, decode_seqs;
    srv_hist ttft, duration;
    kvlm_kv_stats kv; /* snapshot after the last step */
    /* generated tokens per quarter second, the last SRV_RATE_SLOTS quarters (tokens/s in /v1/kv) */
    uint64_t rate_n[SRV_RATE_SLOTS];
    int64_t rate_q[SRV_RATE_SLOTS]; /* which quarter second (floor(srv_now() * 4)) rate_n[i] counts */
} srv_metrics;

typedef struct srv_slot {
    kvlm_session *s;
    srv_job *job; /* NULL: free */
    int choice;
    bool prefilling;
    int32_t done;      /* prompt tokens evaluated */
    int64_t misses0;
    int32_t wasted;    /* tokens computed and dropped again at chunk ends (page alignment) */
    bool has_pending;
    kvlm_token pending; /* sampled, to be fed at the next decode step */
    uint64_t order;    /* admission order (prefill goes oldest first) */
} srv_slot;

typedef struct srv_engine {
    const srv_config *cfg;
    kvlm_model *model;
    kvlm_cache *cache;
    int32_t n_vocab, n_ctx;
    int n_threads;       /* each slot session's (-t, default the physical cores) */
    int32_t page_tokens; /* the pool's page size (0: no prefix sharing) */
    int parallel;
    srv_slot *slots;
    float *logits;      /* parallel * n_vocab */
    float *rows;        /* SRV_LP_CHUNK * n_vocab: a prompt chunk's rows (echo with logprobs) */
    kvlm_token *scratch; /* n_ctx */
    pthread_mutex_t mu;
    pthread_cond_t wake; /* the scheduler waits for work */
    pthread_cond_t ev;   /* HTTP threads wait for output */
    pthread_t thr;
    bool thr_started;
    srv_job *q_head, *q_tail;
    int n_waiting, n_active_jobs;
    bool stop, draining;
    double drain_deadline;
    uint64_t next_id, next_order, seed_counter;
    srv_metrics m;
    srv_gcache *gcache; /* NULL: grammars are compiled per request */
} srv_engine;

double srv_now(void);

/* engine */
int srv_engine_start(srv_engine *e, const srv_config *cfg, kvlm_model *model, char *msg, size_t msg_size);
/* Queues a job (refs becomes 2). false: the queue is full or the server is draining. */
bool srv_engine_submit(srv_engine *e, srv_job *j);
void srv_job_release(srv_engine *e, srv_job *j); /* under e->mu */
void srv_job_free(srv_job *j);
/* Stop admitting; running requests get until grace, then they are cancelled. Returns when idle. */
void srv_engine_drain(srv_engine *e, double grace_s);
void srv_engine_stop(srv_engine *e);
/* Prometheus text (malloc'd). */
char *srv_metrics_text(srv_engine *e);
/* GET /v1/kv: the KV cache and scheduler state as one JSON object (malloc'd). */
char *srv_kv_json(srv_engine *e);

/* The web page's files (generated at build time from web/ by cmake/embed_web.cmake). */
typedef struct srv_asset {
    const char *path;         /* "/index.html", "/app.js", ... */
    const char *content_type;
    const unsigned char *data;
    size_t size;
} srv_asset;
extern const srv_asset srv_web_assets[];
extern const size_t srv_n_web_assets;

/* http */
typedef struct srv_http srv_http;
/* Listens (before the model is loaded: e is read only after srv_http_set_ready). */
srv_http *srv_http_start(srv_engine *e, const srv_config *cfg, char *msg, size_t msg_size);
/* The model is loaded and the engine started: requests are served (before, 503 "loading"). */
void srv_http_set_ready(srv_http *h);
/* /health answers 503 "draining" from now on; requests are still served. */
void srv_http_set_draining(srv_http *h);
/* Stops accepting connections and new generation requests (503). */
void srv_http_quiesce(srv_http *h);
/* Waits (at most timeout_s) until every generation request has been answered. */
void srv_http_wait_idle(srv_http *h, double timeout_s);
void srv_http_stop(srv_http *h);
/* The libmicrohttpd daemon (an embedded server's caller runs it). */
struct MHD_Daemon *srv_http_daemon(srv_http *h);

/* request parsing (serve_http.c; also driven by fuzz/fuzz_server.c) */
struct cJSON;
typedef struct srv_perr {
    int status;        /* HTTP status */
    char param[64];    /* the field at fault, "" for the body as a whole */
    const char *code;  /* NULL or an OpenAI-style code */
    char msg[256];
} srv_perr;
/* The body of a POST (body[n] is NUL, as the HTTP side stores it): valid UTF-8,
 * one JSON value with nothing but whitespace after it, an object. NULL: *pe
 * says why (400, code invalid_utf8 or invalid_json). */
struct cJSON *srv_parse_body(const char *body, size_t n, srv_perr *pe);
/* A /v1/completions (chat false) or /v1/chat/completions request -> a job, not
 * submitted (free with srv_job_free), or NULL with *pe set. Reads e->model,
 * n_vocab, n_ctx, parallel and cfg->alias, model_path, chat_template only. */
srv_job *srv_parse_generation(const srv_engine *e, const srv_config *cfg, const struct cJSON *root, bool chat,
                              srv_perr *pe);

/* util */
bool srv_utf8_valid(const char *s, size_t n);
/* Appends s[0..n) to a NUL-terminated malloc'd copy with invalid UTF-8 replaced by U+FFFD. */
char *srv_utf8_clean(const char *s, size_t n);

int cmd_serve(int argc, char **argv);

#endif
