/* The prefix cache's disk tier (not a test): time to the first token when a shared prefix comes back
 * from disk vs when it is recomputed (and vs a memory hit), bytes per page on disk vs in memory for
 * K/V types and zstd levels, and what the spilling thread writes vs what decode at full speed needs.
 *
 *   build/bin/bench_disk -m MODEL [-d DIR] [-p 512,2048] [-t THREADS] [-r REPS] [-l 1,3,9]
 *
 * The disk hit is measured on a new cache over the directory (a restart: re-indexing included), with
 * the files in the OS page cache (this benchmark does not drop caches). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kvlm.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static kvlm_model *g_m;
static int g_threads = 2;

static kvlm_cache *cache(kvlm_kv_type t, const char *dir, int level) {
    kvlm_cache_params cp = kvlm_cache_default_params();
    cp.type_k = cp.type_v = t;
    cp.max_tokens = 1 << 16;
    if (dir) {
        cp.disk_tier = true;
        cp.disk_dir = dir;
        cp.disk_zstd_level = level;
        cp.disk_bytes_budget = 8ll << 30;
    }
    kvlm_cache *c = NULL;
    kvlm_error err;
    if (kvlm_cache_new(g_m, &cp, &c, &err) != KVLM_OK) {
        fprintf(stderr, "cache: %s\n", err.msg);
        exit(1);
    }
    return c;
}

/* Seconds for one kvlm_eval of toks[0, n) in a new session on c (the first token's logits). */
static double ttft(kvlm_cache *c, const kvlm_token *toks, int32_t n) {
    kvlm_session_params sp = kvlm_session_default_params();
    sp.n_ctx = n + 64;
    sp.n_threads = g_threads;
    sp.cache = c;
    kvlm_session *s = NULL;
    kvlm_error err;
    if (kvlm_session_new(g_m, &sp, &s, &err) != KVLM_OK) {
        fprintf(stderr, "session: %s\n", err.msg);
        exit(1);
    }
    float *logits = malloc((size_t)kvlm_n_vocab(g_m) * sizeof *logits);
    const double t0 = now_s();
    if (kvlm_eval(s, toks, n, KVLM_AUTO, logits, false, &err) != KVLM_OK) {
        fprintf(stderr, "eval: %s\n", err.msg);
        exit(1);
    }
    const double dt = now_s() - t0;
    free(logits);
    kvlm_session_free(s);
    return dt;
}

/* Decode speed: tokens per second generating one at a time after a 64-token prompt. */
static double decode_tps(kvlm_kv_type t) {
    kvlm_cache *c = cache(t, NULL, 1);
    kvlm_session_params sp = kvlm_session_default_params();
    sp.n_ctx = 512;
    sp.n_threads = g_threads;
    sp.cache = c;
    kvlm_session *s = NULL;
    kvlm_error err;
    if (kvlm_session_new(g_m, &sp, &s, &err) != KVLM_OK) exit(1);
    kvlm_token toks[256];
    for (int i = 0; i < 256; i++) toks[i] = 3 + (kvlm_token)((i * 7919u) % 30000u);
    float *logits = malloc((size_t)kvlm_n_vocab(g_m) * sizeof *logits);
    kvlm_eval(s, toks, 64, 0, logits, false, &err);
    const double t0 = now_s();
    for (int i = 64; i < 192; i++) kvlm_eval(s, toks, i + 1, i, logits, false, &err);
    const double dt = now_s() - t0;
    free(logits);
    kvlm_session_free(s);
    kvlm_cache_free(c);
    return 128.0 / dt;
}

static int parse_list(const char *s, int *out, int max) {
    int n = 0;
    while (*s && n < max) {
        out[n++] = atoi(s);
        const char *c = strchr(s, ',');
        if (!c) break;
        s = c + 1;
    }
    return n;
}

int main(int argc, char **argv) {
    const char *model = NULL, *dir = "/tmp/kvlm-bench-disk";
    int lens[8] = {512, 2048}, n_lens = 2, levels[8] = {1, 3, 9}, n_levels = 3, reps = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-m")) model = argv[i + 1];
        else if (!strcmp(argv[i], "-d")) dir = argv[i + 1];
        else if (!strcmp(argv[i], "-p")) n_lens = parse_list(argv[i + 1], lens, 8);
        else if (!strcmp(argv[i], "-l")) n_levels = parse_list(argv[i + 1], levels, 8);
        else if (!strcmp(argv[i], "-t")) g_threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-r")) reps = atoi(argv[i + 1]);
    }
    if (!model || reps < 1 || reps > 64) {
        fprintf(stderr, "usage: bench_disk -m MODEL [-d DIR] [-p 512,2048] [-t THREADS] [-r REPS] [-l 1,3,9]\n");
        return 2;
    }
    kvlm_error err;
    if (kvlm_model_load(model, NULL, &g_m, &err) != KVLM_OK) {
        fprintf(stderr, "%s: %s\n", model, err.msg);
        return 1;
    }
    kvlm_model_info mi;
    kvlm_model_get_info(g_m, &mi);
    const kvlm_kv_type types[2] = {KVLM_KV_F16, KVLM_KV_Q8_0};
    const char *tname[2] = {"f16", "q8_0"};
    const int suffix = 16;
    printf("model %s, %d threads, %d reps (median)\n\n", model, g_threads, reps);
    printf("| KV | prefix | recompute ms | disk hit ms | memory hit ms | disk vs recompute |\n");
    printf("|---|---:|---:|---:|---:|---:|\n");
    for (int ti = 0; ti < 2; ti++)
        for (int li = 0; li < n_lens; li++) {
            const int32_t n = lens[li] + suffix;
            kvlm_token *toks = malloc((size_t)n * sizeof *toks);
            toks[0] = 1;
            uint32_t x = 12345u + (uint32_t)n;
            for (int32_t i = 1; i < n; i++) {
                x = x * 1664525u + 1013904223u;
                toks[i] = 3 + (kvlm_token)((x >> 8) % (uint32_t)(mi.n_vocab - 3));
            }
            double rc[64], dk[64], mh[64];
            char cmd[600];
            snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
            if (system(cmd) != 0) return 1;
            for (int r = 0; r < reps; r++) {
                /* the first on an empty directory: its pages are written when the cache is freed */
                kvlm_cache *c = cache(types[ti], r == 0 ? dir : NULL, 1);
                rc[r] = ttft(c, toks, n);
                kvlm_cache_free(c);
            }
            kvlm_cache *c = NULL;
            for (int r = 0; r < reps; r++) {
                c = cache(types[ti], dir, 1); /* a restart */
                kvlm_kv_stats st;
                dk[r] = ttft(c, toks, n);
                kvlm_cache_get_stats(c, &st);
                if (st.disk_hits != lens[li] / 32) fprintf(stderr, "note: %lld disk hits\n", (long long)st.disk_hits);
                mh[r] = ttft(c, toks, n);
                kvlm_cache_free(c);
            }
            const double a = median(rc, reps), b = median(dk, reps), m = median(mh, reps);
            printf("| %s | %d | %.1f | %.1f | %.1f | %.1fx |\n", tname[ti], lens[li], a * 1e3, b * 1e3, m * 1e3, a / b);
            fflush(stdout);
            free(toks);
        }

    /* bytes per page and the spiller's speed: the first prefix's pages written at each level */
    printf("\n| KV | zstd level | bytes/page in memory | bytes/page on disk | ratio | spill MB/s (compressed) | pages/s |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|\n");
    double page_file[2] = {0, 0};
    for (int ti = 0; ti < 2; ti++)
        for (int li = 0; li < n_levels; li++) {
            const int32_t n = lens[0] + suffix;
            kvlm_token *toks = malloc((size_t)n * sizeof *toks);
            toks[0] = 1;
            uint32_t x = 777u;
            for (int32_t i = 1; i < n; i++) {
                x = x * 1664525u + 1013904223u;
                toks[i] = 3 + (kvlm_token)((x >> 8) % (uint32_t)(mi.n_vocab - 3));
            }
            char cmd[600];
            snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
            if (system(cmd) != 0) return 1;
            kvlm_cache *c = cache(types[ti], dir, levels[li]);
            ttft(c, toks, n);
            kvlm_kv_stats st;
            /* a page in memory: 32 slots x layers x (K row + V row), F16 2 bytes a value, Q8_0 34 per 32 */
            const double kv_dim = (double)mi.n_head_kv * (double)mi.head_dim;
            const double row = types[ti] == KVLM_KV_F16 ? kv_dim * 2 : kv_dim / 32 * 34;
            const double mem_page = 32.0 * mi.n_layer * 2 * row;
            const double t0 = now_s();
            kvlm_cache_free(c); /* the spiller writes every cached page; free waits for it */
            const double dt = now_s() - t0;
            c = cache(types[ti], dir, levels[li]);
            kvlm_cache_get_stats(c, &st);
            kvlm_cache_free(c);
            const double disk_page = (double)st.disk_bytes / (double)st.disk_pages;
            if (li == 0) page_file[ti] = disk_page;
            printf("| %s | %d | %.0f | %.0f | %.3f | %.0f | %.0f |\n", tname[ti], levels[li], mem_page, disk_page,
                   disk_page / mem_page, (double)st.disk_bytes / dt / 1e6, (double)st.disk_pages / dt);
            fflush(stdout);
            free(toks);
        }

    printf("\n| KV | decode tok/s | spill needed at that speed (level %d), MB/s |\n|---|---:|---:|\n", levels[0]);
    for (int ti = 0; ti < 2; ti++) {
        const double tps = decode_tps(types[ti]);
        printf("| %s | %.1f | %.2f |\n", tname[ti], tps, tps * page_file[ti] / 32.0 / 1e6);
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) return 1;
    kvlm_model_free(g_m);
    return 0;
}
