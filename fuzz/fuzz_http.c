/* kvlm serve's HTTP layer on raw bytes: the input is what a client sends on
 * one connection (requests, pipelined or not, headers, chunked or sized
 * bodies, garbage), fed through a socketpair to the server's own
 * libmicrohttpd daemon (tools/kvlm/serve/serve_http.c, started with
 * srv_config.embedded: no listening socket, external select) with the real
 * request handlers and the real engine behind it (serve_engine.c: its
 * scheduler thread and 2 slot sessions of aidreams260K, n_ctx 64).
 *
 * Per input: the bytes are written to the client end (then it is half-closed
 * unless byte 0 is even: a client that keeps the connection open), the
 * daemon is run until nothing more happens, the client end is closed and the
 * daemon run until the connection is gone.
 *
 * Contract: no crash, leak or sanitizer report; what the server writes is
 * HTTP/1.x responses (it starts with "HTTP/1."), none with a 5xx status other
 * than 503 (busy) and 505 (libmicrohttpd: an HTTP version it does not speak); when the connection is gone no request is left in the engine
 * (nothing queued or running); and every 64 inputs a fresh connection's
 * GET /health still answers 200. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "fuzz_util.h"
#include "kvlm.h"
#include "serve/serve.h"

enum { IN_CAP = 1 << 16, OUT_KEEP = 1 << 16, MAX_ROUNDS = 4096 };

static kvlm_model *g_model;
static srv_config g_cfg;
static srv_engine g_e;
static srv_http *g_h;
static char *g_out;
static size_t g_out_n;
static unsigned long g_runs;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    g_model = fuzz_load_model("llama/aidreams260K-f32.gguf", false, "fuzz_http");
    memset(&g_cfg, 0, sizeof g_cfg);
    g_cfg.model_path = fuzz_model_path("llama/aidreams260K-f32.gguf");
    g_cfg.host = "127.0.0.1";
    g_cfg.parallel = 2;
    g_cfg.queue = 8;
    g_cfg.max_body = 1 << 15; /* below the input cap: 413 is reachable */
    g_cfg.alias = "aidreams";
    g_cfg.cors_origin = "*";
    g_cfg.prefill_chunk = 32;
    g_cfg.max_conn_per_ip = 16;
    g_cfg.embedded = true;
    g_cfg.sp = kvlm_session_default_params();
    g_cfg.sp.n_ctx = 64;
    g_cfg.sp.n_threads = 1;
    char msg[512];
    g_h = srv_http_start(&g_e, &g_cfg, msg, sizeof msg);
    FUZZ_CHECK(g_h != NULL, "srv_http_start: %s", msg);
    FUZZ_CHECK(srv_engine_start(&g_e, &g_cfg, g_model, msg, sizeof msg) == 0, "srv_engine_start: %s", msg);
    srv_http_set_ready(g_h);
    g_out = malloc(OUT_KEEP + 1);
    if (!g_out) abort();
    return 0;
}

static void set_nonblock(int fd) { (void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

/* Reads what the server wrote (the first OUT_KEEP bytes kept); returns the bytes read, -1 at EOF. */
static long drain(int fd) {
    long got = 0;
    for (;;) {
        char buf[16384];
        ssize_t r = read(fd, buf, sizeof buf);
        if (r > 0) {
            const size_t k = g_out_n + (size_t)r <= OUT_KEEP ? (size_t)r : OUT_KEEP - g_out_n;
            memcpy(g_out + g_out_n, buf, k);
            g_out_n += k;
            got += r;
            continue;
        }
        if (r == 0) return got ? got : -1;
        if (errno == EINTR) continue;
        return got; /* EAGAIN */
    }
}

static unsigned connections(void) {
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv_http_daemon(g_h), MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    return di ? di->num_connections : 0;
}

/* One client connection that sends data[0, n) (and half-closes when asked); what the server wrote
 * ends up in g_out. */
static void exchange(const uint8_t *data, size_t n, bool half_close) {
    struct MHD_Daemon *d = srv_http_daemon(g_h);
    int sv[2];
    FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair: %s", strerror(errno));
    set_nonblock(sv[0]);
    set_nonblock(sv[1]);
    struct sockaddr_in peer;
    memset(&peer, 0, sizeof peer);
    peer.sin_family = AF_INET;
    peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    peer.sin_port = htons(40000);
    const unsigned before = connections();
    /* MHD owns sv[1] from here (it closes it, even when adding fails) */
    if (MHD_add_connection(d, sv[1], (const struct sockaddr *)&peer, sizeof peer) != MHD_YES) {
        close(sv[0]);
        return;
    }
    g_out_n = 0;
    size_t sent = 0;
    bool closed = false, shut = false;
    int idle = 0;
    for (int round = 0; round < MAX_ROUNDS && idle < 3; round++) {
        long progress = 0;
        if (sent < n) {
            ssize_t w = write(sv[0], data + sent, n - sent);
            if (w > 0) {
                sent += (size_t)w;
                progress += w;
            }
        }
        if (sent == n && half_close && !shut) {
            shutdown(sv[0], SHUT_WR);
            shut = true;
            progress++;
        }
        MHD_run(d);
        const long r = drain(sv[0]);
        if (r < 0) {
            closed = true;
            break;
        }
        progress += r;
        idle = progress ? 0 : idle + 1;
    }
    (void)closed;
    close(sv[0]);
    /* the server notices the closed connection and lets it go */
    for (int round = 0; round < MAX_ROUNDS && connections() > before; round++) MHD_run(d);
    FUZZ_CHECK(connections() <= before, "a closed connection is still open (%u, %u before)", connections(), before);
}

/* The server's bytes are HTTP/1.x responses, none a 5xx but 503. */
static void check_output(void) {
    g_out[g_out_n] = '\0';
    if (g_out_n == 0) return;
    FUZZ_CHECK(g_out_n >= 7 && memcmp(g_out, "HTTP/1.", 7) == 0, "the server wrote '%.40s'", g_out);
    for (const char *p = g_out; (p = strstr(p, "HTTP/1.")) != NULL; p += 7) {
        if (p[7] == '\0' || p[8] != ' ') continue;
        const int status = atoi(p + 9);
        /* a status line only (a body can hold the text too) */
        if (p != g_out && p[-1] != '\n') continue;
        /* 503: busy; 505: libmicrohttpd's answer to an HTTP version it does not speak */
        FUZZ_CHECK(status < 500 || status == 503 || status == 505, "status %d: %.300s", status, p);
    }
}

/* Nothing left in the engine once the connection is gone (a cancelled stream's job ends at the
 * scheduler's next step: waited for, at most about 5 s). */
static void check_idle(void) {
    pthread_mutex_lock(&g_e.mu);
    for (int i = 0; i < 500 && (g_e.n_waiting || g_e.n_active_jobs || g_e.q_head); i++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&g_e.ev, &g_e.mu, &ts);
    }
    const int waiting = g_e.n_waiting, active = g_e.n_active_jobs;
    pthread_mutex_unlock(&g_e.mu);
    FUZZ_CHECK(waiting == 0 && active == 0, "after the connection: %d requests queued, %d running", waiting, active);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1 || size - 1 > IN_CAP) return 0;
    exchange(data + 1, size - 1, data[0] & 1);
    check_output();
    check_idle();
    if (++g_runs % 64 == 0) {
        static const char health[] = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        exchange((const uint8_t *)health, sizeof health - 1, true);
        g_out[g_out_n] = '\0';
        FUZZ_CHECK(strncmp(g_out, "HTTP/1.1 200", 12) == 0, "GET /health after %lu inputs: '%.200s'", g_runs, g_out);
    }
    return 0;
}
