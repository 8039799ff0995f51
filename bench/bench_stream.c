/* Decode's weight stream from memory (not a test): a matrix well above the
 * L3 size multiplied by one activation column, the way a decode step does
 * it, read five ways, GB/s of weight bytes with 1..N threads (each thread
 * its contiguous share of the rows, as forward splits them):
 *
 *   row      one vec_dot per row: a single sequential stream per thread,
 *            no software prefetch (the hardware prefetchers alone)
 *   tile     the gemm kernel (nc = 1) over the file layout: register tiles
 *            of NR rows read block by block, i.e. NR interleaved streams,
 *            software prefetch off
 *   tile+pf  the same with the kernels' software prefetch (kv_pf_next)
 *   il       gemm_il over the matrix repacked into the row-interleaved
 *            layout: the same tiles, one sequential stream, prefetch off
 *   il+pf    the same with its software prefetch (kv_pf_il)
 *
 *   bench_stream [-m MiB] [-k row_length] [-t 1,2] [-r reps] [-i isa] [--thp] [type...]
 *
 * The ways take turns within each repetition (so that a noisy neighbour
 * hits them alike); the table gives the median of the repetitions: GB/s
 * over the wall time of the slowest thread, and in parentheses the rate of
 * one thread over its own CPU time (what a thread streams while it runs,
 * which time slices taken by other processes do not lower). Memory
 * is anonymous, 4 KiB pages, or transparent huge pages with --thp
 * (madvise(MADV_HUGEPAGE)). Weights are random bytes with sane scales. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "core/dtype.h"
#include "quant/fp16.h"
#include "quant/quant.h"
#include "quant/quant_types.h"
#include "bench_util.h"

static double clk(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}




static void *map_bytes(size_t n, int thp) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    madvise(p, n, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    return p;
}

enum { W_ROW, W_TILE, W_TILE_PF, W_IL, W_IL_PF, N_WAYS };
static const char *k_way[N_WAYS] = {"row", "tile", "tile+pf", "il", "il+pf"};

typedef struct shared {
    pthread_barrier_t start, done;
    uint32_t t;
    int isa, way, quit;
    int64_t n, rows;
    size_t wb;
    const uint8_t *w, *wi, *x;
    int L; /* rows per interleaved tile */
    int nth;
} shared;

typedef struct worker {
    shared *s;
    int ith;
    float *y;
    double secs, cpu; /* wall and thread CPU time of the last pass */
} worker;

static void range(const shared *s, int ith, int64_t *r0, int64_t *r1) {
    /* whole tiles of L rows, split as evenly as whole tiles allow */
    const int64_t nt = (s->rows + s->L - 1) / s->L;
    const int64_t a = nt * ith / s->nth, b = nt * (ith + 1) / s->nth;
    *r0 = a * s->L;
    *r1 = b * s->L < s->rows ? b * s->L : s->rows;
}

static void pass(const shared *s, int ith, float *y) {
    int64_t r0, r1;
    range(s, ith, &r0, &r1);
    const int nr = (int)(r1 - r0);
    if (nr <= 0) return;
    const kv_quant_traits *q = kv_quant_get_isa(s->t, s->isa);
    const kv_quant_gemm *g = kv_quant_get_gemm_isa(s->t, s->isa);
    switch (s->way) {
    case W_ROW:
        for (int64_t r = r0; r < r1; r++) q->vec_dot(s->n, &y[r - r0], s->w + (size_t)r * s->wb, s->x);
        break;
    case W_TILE:
    case W_TILE_PF: g->gemm(s->n, s->w + (size_t)r0 * s->wb, s->wb, nr, s->x, 0, 1, y, nr); break;
    default: g->gemm_il(s->n, s->wi + (size_t)r0 * s->wb, s->wb, nr, s->x, 0, 1, y, nr); break;
    }
}

static void *thread_main(void *arg) {
    worker *wk = arg;
    shared *s = wk->s;
    for (;;) {
        pthread_barrier_wait(&s->start);
        if (s->quit) return NULL;
        const double t0 = now(), c0 = clk(CLOCK_THREAD_CPUTIME_ID);
        pass(s, wk->ith, wk->y);
        wk->secs = now() - t0;
        wk->cpu = clk(CLOCK_THREAD_CPUTIME_ID) - c0;
        pthread_barrier_wait(&s->done);
    }
}

static int cmp_d(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    int64_t mib = 1024, K = 2048;
    int reps = 7, only_isa = -1, thp = 0;
    int threads[8] = {1, 2}, nthr = 2;
    uint32_t types[16];
    int nt = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc) mib = atoll(argv[++i]);
        else if (!strcmp(argv[i], "-k") && i + 1 < argc) K = atoll(argv[++i]);
        else if (!strcmp(argv[i], "-r") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--thp")) thp = 1;
        else if (!strcmp(argv[i], "-t") && i + 1 < argc) {
            nthr = 0;
            for (char *p = argv[++i]; *p && nthr < 8;) {
                threads[nthr++] = (int)strtol(p, &p, 10);
                if (*p == ',') p++;
            }
        } else if (!strcmp(argv[i], "-i") && i + 1 < argc) {
            const char *name = argv[++i];
            for (int k = 0; k <= kv_quant_best_isa(); k++)
                if (!strcmp(kv_quant_isa_name(k), name)) only_isa = k;
            if (only_isa < 1) {
                fprintf(stderr, "ISA %s is not a SIMD ISA this CPU runs\n", name);
                return 2;
            }
        } else {
            uint32_t id = UINT32_MAX;
            for (uint32_t k = 0; k < KV_DTYPE_COUNT; k++)
                if (kv_dtype_get(k) && kv_dtype_get(k)->name && !strcmp(kv_dtype_name(k), argv[i])) id = k;
            if (id == UINT32_MAX || !kv_quant_get(id) || nt == 16) {
                fprintf(stderr, "unknown type %s\n", argv[i]);
                return 2;
            }
            types[nt++] = id;
        }
    }
    if (reps < 1) reps = 1;
    if (reps > 64) reps = 64;
    if (!nt) types[nt++] = KV_F16, types[nt++] = KV_Q8_0, types[nt++] = KV_Q4_0;
    const int isa = only_isa >= 0 ? only_isa : kv_quant_best_isa();
    if (isa < 1) {
        fprintf(stderr, "no SIMD kernels on this CPU\n");
        return 2;
    }
    printf("%lld MiB matrix, rows of %lld, ISA %s, %s pages, median of %d; GB/s of weight bytes (one thread, "
           "over its CPU time, in parentheses)\n",
           (long long)mib, (long long)K, kv_quant_isa_name(isa), thp ? "huge (THP)" : "4 KiB", reps);
    printf("%-6s %3s", "type", "thr");
    for (int w = 0; w < N_WAYS; w++) printf(" %16s", k_way[w]);
    printf("\n");
    for (int k = 0; k < nt; k++) {
        shared s = {.t = types[k], .isa = isa, .n = K};
        const kv_quant_traits *q = kv_quant_get_isa(s.t, isa);
        const kv_quant_gemm *g = kv_quant_get_gemm_isa(s.t, isa);
        s.wb = row_bytes(s.t, K);
        if (!s.wb || !kv_il_unit(s.t, K) || !g->gemm_il) {
            printf("%-6s (no interleaved layout for rows of %lld)\n", kv_dtype_name(s.t), (long long)K);
            continue;
        }
        s.L = g->il_rows;
        s.rows = (int64_t)((uint64_t)mib << 20) / (int64_t)s.wb;
        const size_t bytes = (size_t)s.rows * s.wb;
        uint8_t *w = map_bytes(bytes, thp), *wi = map_bytes(bytes, thp);
        const size_t xb = row_bytes(q->vec_dot_type, K);
        uint8_t *x = aligned_alloc(64, (xb + 127) & ~(size_t)63);
        float *xf = malloc(sizeof(float) * (size_t)K);
        if (!w || !wi || !x || !xf) {
            fprintf(stderr, "out of memory\n");
            return 1;
        }
        for (size_t i = 0; i < bytes; i++) w[i] = (uint8_t)rnd();
        fix_scales(s.t, w, bytes);
        kv_il_pack(s.t, K, s.rows, s.L, w, s.wb, wi);
        for (int64_t i = 0; i < K; i++) xf[i] = (float)(int)(rnd() % 2001 - 1000) / 500.0f;
        kv_quant_get(q->vec_dot_type)->from_float(xf, x, K);
        s.w = w, s.wi = wi, s.x = x;
        for (int ti = 0; ti < nthr; ti++) {
            const int nth = threads[ti] < 1 ? 1 : threads[ti] > 64 ? 64 : threads[ti];
            s.nth = nth;
            s.quit = 0;
            pthread_barrier_init(&s.start, NULL, (unsigned)nth + 1);
            pthread_barrier_init(&s.done, NULL, (unsigned)nth + 1);
            worker wk[64];
            pthread_t th[64];
            for (int i = 0; i < nth; i++) {
                wk[i] = (worker){&s, i, malloc(sizeof(float) * (size_t)(s.rows / nth + s.L + 1)), 0, 0};
                pthread_create(&th[i], NULL, thread_main, &wk[i]);
            }
            double gbs[N_WAYS][64], per[N_WAYS][64];
            for (int rep = 0; rep <= reps; rep++) /* repetition 0 warms up (page faults, TLB) */
                for (int wy = 0; wy < N_WAYS; wy++) {
                    s.way = wy;
                    kv_quant_set_prefetch(wy == W_TILE_PF || wy == W_IL_PF);
                    pthread_barrier_wait(&s.start);
                    pthread_barrier_wait(&s.done);
                    double tmax = 0, tsum = 0;
                    for (int i = 0; i < nth; i++) {
                        tmax = wk[i].secs > tmax ? wk[i].secs : tmax;
                        tsum += wk[i].cpu;
                    }
                    if (rep == 0) continue;
                    gbs[wy][rep - 1] = (double)bytes / tmax * 1e-9;
                    per[wy][rep - 1] = (double)bytes / (double)nth / (tsum / nth) * 1e-9;
                }
            s.quit = 1;
            pthread_barrier_wait(&s.start);
            for (int i = 0; i < nth; i++) {
                pthread_join(th[i], NULL);
                free(wk[i].y);
            }
            pthread_barrier_destroy(&s.start);
            pthread_barrier_destroy(&s.done);
            printf("%-6s %3d", kv_dtype_name(s.t), nth);
            for (int wy = 0; wy < N_WAYS; wy++) {
                qsort(gbs[wy], (size_t)reps, sizeof(double), cmp_d);
                qsort(per[wy], (size_t)reps, sizeof(double), cmp_d);
                char cell[32];
                snprintf(cell, sizeof cell, "%.2f (%.2f)", gbs[wy][reps / 2], per[wy][reps / 2]);
                printf(" %16s", cell);
            }
            printf("\n");
            fflush(stdout);
        }
        kv_quant_set_prefetch(1);
        munmap(w, bytes);
        munmap(wi, bytes);
        free(x);
        free(xf);
    }
    return 0;
}
