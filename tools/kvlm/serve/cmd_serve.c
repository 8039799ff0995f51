/* kvlm serve: flags, start-up, signals, graceful shutdown. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "serve.h"

/* serve's own flags; the ones it shares with the other commands (model, threads, context, KV cache)
 * come from the CLI's flag table. */
static void serve_flags(FILE *fp) {
    cli_usage_line("--host ADDR", "IPv4 address to listen on (default: 127.0.0.1)", fp);
    cli_usage_line("--port N", "port (default: 8080; 0: any free port, printed at start)", fp);
    cli_usage_line("-np, --parallel N", "sequences decoded together (default: 4)", fp);
    cli_usage_line("--queue N", "waiting requests before 503 (default: 64)", fp);
    cli_usage_line("--api-key KEY", "require 'Authorization: Bearer KEY' (default: none)", fp);
    cli_usage_line("--api-key-file FILE", "the same, the key read from FILE", fp);
    cli_usage_line("--alias NAME", "the model id clients use (default: the file name)", fp);
    cli_usage_line("--max-body N", "request body limit in bytes (default: 4194304)", fp);
    cli_usage_line("--cors-origin ORIGIN", "Access-Control-Allow-Origin (default: *)", fp);
    cli_usage_line("--prefill-chunk N", "prompt tokens evaluated per scheduler step (default: 128)", fp);
    cli_usage_line("--max-conn-per-ip N", "concurrent connections per client address (default: 128)", fp);
    cli_usage_line("--shutdown-grace SEC", "on SIGINT/SIGTERM, time running requests get to finish (default: 3)", fp);
    cli_usage_line("--drain-delay SEC",
                   "on SIGTERM, first report 503 on /health for SEC s while still serving, so a load balancer "
                   "moves new work away (default: 0)", fp);
    cli_usage_line("--replica-id NAME", "sent as X-Kvlm-Replica on every response (default: HOST:PORT)", fp);
}

static void serve_usage(FILE *fp) { cli_usage_with("serve", serve_flags, fp); }

static bool parse_long(const char *flag, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "error: %s expects an integer in %ld..%ld, got '%s'\n", flag, lo, hi, s);
        return false;
    }
    *out = v;
    return true;
}

static char *read_key_file(const char *path) {
    size_t n = 0;
    char *s = cli_read_file(path, &n);
    if (!s) return NULL;
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ')) s[--n] = '\0';
    if (!n) {
        fprintf(stderr, "error: --api-key-file '%s' is empty\n", path);
        free(s);
        return NULL;
    }
    return s;
}

/* For the tests of the loading state: with KVLM_SERVE_HOLD_LOAD=PATH set, the
 * server listens and waits while PATH exists before it loads the model. */
static void hold_load(void) {
    const char *p = getenv("KVLM_SERVE_HOLD_LOAD");
    if (!p || !*p) return;
    struct timespec ts = {0, 20 * 1000000L};
    while (access(p, F_OK) == 0) nanosleep(&ts, NULL);
}

int cmd_serve(int argc, char **argv) {
    srv_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.host = "127.0.0.1";
    cfg.port = 8080;
    cfg.parallel = 4;
    cfg.queue = 64;
    cfg.max_body = 4u << 20;
    cfg.cors_origin = "*";
    cfg.prefill_chunk = 128;
    cfg.max_conn_per_ip = 128;
    cfg.shutdown_grace_s = 3;
    const char *key_file = NULL;
    /* our flags first; the rest (model, threads, context, KV cache) as for run */
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest) return 1;
    int nrest = 0;
    rest[nrest++] = argv[0];
    rest[nrest++] = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *f = argv[i];
        long v;
#define NEEDV()                                                        \
    if (i + 1 >= argc) {                                               \
        fprintf(stderr, "error: %s needs a value\n", f);               \
        free(rest);                                                    \
        return 2;                                                      \
    }
#define LONGV(lo, hi)                                                  \
    NEEDV();                                                           \
    if (!parse_long(f, argv[++i], lo, hi, &v)) {                       \
        free(rest);                                                    \
        return 2;                                                      \
    }
        if (!strcmp(f, "--host")) { NEEDV(); cfg.host = argv[++i]; }
        else if (!strcmp(f, "--port")) { LONGV(0, 65535); cfg.port = (int)v; }
        else if (!strcmp(f, "--parallel") || !strcmp(f, "-np")) { LONGV(1, 256); cfg.parallel = (int)v; }
        else if (!strcmp(f, "--queue")) { LONGV(0, 100000); cfg.queue = (int)v; }
        else if (!strcmp(f, "--max-body")) { LONGV(1, 1L << 30); cfg.max_body = (size_t)v; }
        else if (!strcmp(f, "--api-key")) { NEEDV(); cfg.api_key = argv[++i]; }
        else if (!strcmp(f, "--api-key-file")) { NEEDV(); key_file = argv[++i]; }
        else if (!strcmp(f, "--alias")) { NEEDV(); cfg.alias = argv[++i]; }
        else if (!strcmp(f, "--cors-origin")) { NEEDV(); cfg.cors_origin = argv[++i]; }
        else if (!strcmp(f, "--prefill-chunk")) { LONGV(1, 1 << 20); cfg.prefill_chunk = (int)v; }
        else if (!strcmp(f, "--max-conn-per-ip")) { LONGV(1, 100000); cfg.max_conn_per_ip = (int)v; }
        else if (!strcmp(f, "--shutdown-grace")) { LONGV(0, 3600); cfg.shutdown_grace_s = (double)v; }
        else if (!strcmp(f, "--drain-delay")) { LONGV(0, 3600); cfg.drain_delay_s = (double)v; }
        else if (!strcmp(f, "--replica-id")) { NEEDV(); cfg.replica_id = argv[++i]; }
        else rest[nrest++] = argv[i];
#undef NEEDV
#undef LONGV
    }
    cli_args a;
    bool ok = cli_parse(nrest, rest, 2, &a);
    free(rest);
    if (!ok) return 2;
    if (a.help) {
        serve_usage(stdout);
        return 0;
    }
    if (!a.model) {
        fprintf(stderr, "error: give a model with -m FILE\n");
        serve_usage(stderr);
        return 2;
    }
    if (a.n_pos) {
        fprintf(stderr, "error: unexpected argument '%s'\n", a.pos[0]);
        return 2;
    }
    if (cfg.api_key && key_file) {
        fprintf(stderr, "error: give --api-key or --api-key-file, not both\n");
        return 2;
    }
    char *key_owned = NULL;
    if (key_file) {
        key_owned = read_key_file(key_file);
        if (!key_owned) return 2;
        cfg.api_key = key_owned;
    }
    if (cfg.api_key && !cfg.api_key[0]) {
        fprintf(stderr, "error: --api-key is empty\n");
        return 2;
    }
    cfg.model_path = a.model;
    if (!cfg.alias) {
        const char *slash = strrchr(a.model, '/');
        cfg.alias = slash ? slash + 1 : a.model;
    }
    cfg.timeout_s = a.timeout_s > 0 ? a.timeout_s : 0;
    cfg.chat_template = a.chat_template;
    cfg.sp = cli_session_params(&a);

    /* SIGINT/SIGTERM are taken by sigwait below: block them in every thread */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* listen first: /health says "loading" (503) until the model is loaded and the engine runs */
    static srv_engine e;
    char msg[512];
    srv_http *h = srv_http_start(&e, &cfg, msg, sizeof msg);
    if (!h) {
        fprintf(stderr, "error: %s\n", msg);
        free(key_owned);
        return 1;
    }
    hold_load();
    kvlm_model *m = cli_load_model(&a);
    if (!m) {
        srv_http_stop(h);
        free(key_owned);
        return 1;
    }
    if (cfg.chat_template) {
        kvlm_chat_message probe = {"user", "x"};
        if (kvlm_chat_apply(m, cfg.chat_template, &probe, 1, true, NULL, 0) == 0) {
            fprintf(stderr, "error: unknown --chat-template '%s'\n", cfg.chat_template);
            srv_http_stop(h);
            kvlm_model_free(m);
            free(key_owned);
            return 2;
        }
    }
    if (srv_engine_start(&e, &cfg, m, msg, sizeof msg) != 0) {
        fprintf(stderr, "error: %s\n", msg);
        srv_http_stop(h);
        srv_engine_stop(&e);
        kvlm_model_free(m);
        free(key_owned);
        return 1;
    }
    srv_http_set_ready(h);
    int sig = 0;
    sigwait(&sigs, &sig);
    if (cfg.drain_delay_s > 0) {
        /* a balancer's health checks see 503 and stop sending new work; what still arrives is served.
           A second signal ends the delay. */
        fprintf(stderr, "kvlm serve: %s: draining (/health 503) for %.0f s, still serving\n",
                sig == SIGINT ? "SIGINT" : "SIGTERM", cfg.drain_delay_s);
        srv_http_set_draining(h);
        struct timespec ts = {(time_t)cfg.drain_delay_s, 0};
        if (sigtimedwait(&sigs, NULL, &ts) > 0) fprintf(stderr, "kvlm serve: second signal: not waiting longer\n");
    }
    fprintf(stderr, "kvlm serve: %s: shutting down (no new connections; running requests get %.0f s)\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM", cfg.shutdown_grace_s);
    srv_http_quiesce(h);
    srv_engine_drain(&e, cfg.shutdown_grace_s);
    srv_http_wait_idle(h, 2.0); /* the last events of the streams go out */
    srv_http_stop(h);
    srv_engine_stop(&e);
    kvlm_model_free(m);
    free(key_owned);
    fprintf(stderr, "kvlm serve: stopped\n");
    return 0;
}
