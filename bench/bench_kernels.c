/* Kernel micro-benchmark, one thread: for each weight type and each ISA the
 * CPU runs, a 4096 x 4096 mat-vec (decode: one vec_dot per row, and gemm
 * with nc = 1) and a 4096 x 4096 x 64-token gemm (prefill, tiled as
 * forward would tile it), reported as GB/s of weight bytes streamed per
 * matmul (and Gop/s, 2 ops per multiply-add, for prefill).
 *
 *   bench_kernels [-r rows] [-k cols] [-t tokens] [-s seconds] [-S slice] [-i isa] [type...]
 *
 * -i: only that ISA (scalar, avx2, avx512) instead of every one the CPU runs.
 * For decode from memory rather than cache, give a matrix well above the L3
 * size (e.g. -r 131072 -k 4096: 1 GiB of F16).
 *
 * -S: rows per timed prefill call (default 64; 0 = the whole matrix in one
 * call, as one forward thread makes it). Types whose block does not divide
 * the row length are skipped.
 *
 * Weights are random bytes with sane scales (the speed of the kernels does
 * not depend on the values); activations come from the type's own
 * from_float. The scalar ISA runs on a slice of the rows (it is slow); GB/s
 * is a rate, so the numbers compare. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/dtype.h"
#include "quant/fp16.h"
#include "quant/quant.h"
#include "quant/quant_types.h"
#include "bench_util.h"





typedef struct {
    double dot_gbs, gemv_gbs, gemm_gbs, gemm_gops;
} result;

static volatile float g_sink;

typedef struct {
    uint32_t t;
    int isa;
    const uint8_t *w, *x;
    int64_t rows, K;
    size_t wb, xb;
    int T;
    float *y;
    int64_t slice; /* rows per timed prefill call (0: all) */
} job;

static void run_dot(const job *j) {
    const kv_quant_traits *q = kv_quant_get_isa(j->t, j->isa);
    for (int64_t r = 0; r < j->rows; r++) q->vec_dot(j->K, &j->y[r], j->w + (size_t)r * j->wb, j->x);
}

/* one call for all rows and tokens, as forward's workers would make it */
static void run_gemm(const job *j, int T) {
    kv_quant_get_gemm_isa(j->t, j->isa)->gemm(j->K, j->w, j->wb, (int)j->rows, j->x, j->xb, T, j->y, j->rows);
}

/* The fastest of repeated runs (robust against other load on the machine).
 * Prefill (kind 2) is timed per slice of 64 rows x T tokens, the slices
 * walking through the matrix, and scaled to the whole. */
static double best_time(const job *j, int kind, double secs) {
    double best = 1e30, start = now();
    int reps = 0;
    job s = *j;
    const int64_t slice = j->slice > 0 ? j->slice : j->rows;
    do {
        double scale = 1.0;
        if (kind == 2 && j->rows > slice) {
            const int64_t r0 = (reps * slice) % (j->rows - slice + 1);
            s.w = j->w + (size_t)r0 * j->wb;
            s.rows = slice;
            scale = (double)j->rows / (double)slice;
        }
        const double t0 = now();
        if (kind == 0) run_dot(&s);
        else run_gemm(&s, kind == 1 ? 1 : j->T);
        const double dt = (now() - t0) * scale;
        if (dt < best) best = dt;
        reps++;
    } while (now() - start < secs || reps < 3);
    return best;
}

static result bench(uint32_t t, int isa, const uint8_t *w, int64_t R, int64_t K, const uint8_t *x, int T,
                    double secs, float *y, int64_t slice) {
    const kv_quant_traits *q = kv_quant_get_isa(t, isa);
    job j = {t, isa, w, x, R, K, row_bytes(t, K), row_bytes(q->vec_dot_type, K), T, y, slice};
    result res;
    /* the scalar references only get a slice of the rows (they are slow) */
    if (isa == KV_ISA_SCALAR) j.rows = R < 256 ? R : 256;
    double dt = best_time(&j, 0, secs);
    res.dot_gbs = (double)j.rows * (double)j.wb / dt * 1e-9;
    dt = best_time(&j, 1, secs);
    res.gemv_gbs = (double)j.rows * (double)j.wb / dt * 1e-9;
    if (isa == KV_ISA_SCALAR) j.rows = R < 16 ? R : 16;
    dt = best_time(&j, 2, secs);
    res.gemm_gbs = (double)j.rows * (double)j.wb / dt * 1e-9;
    res.gemm_gops = 2.0 * (double)j.rows * (double)K * (double)T / dt * 1e-9;
    g_sink = y[0];
    return res;
}

int main(int argc, char **argv) {
    int64_t R = 4096, K = 4096;
    int T = 64;
    int64_t slice = 64;
    double secs = 0.5;
    uint32_t types[32];
    int nt = 0, only_isa = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-r") && i + 1 < argc) R = atoll(argv[++i]);
        else if (!strcmp(argv[i], "-k") && i + 1 < argc) K = atoll(argv[++i]);
        else if (!strcmp(argv[i], "-t") && i + 1 < argc) T = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-s") && i + 1 < argc) secs = atof(argv[++i]);
        else if (!strcmp(argv[i], "-S") && i + 1 < argc) slice = atoll(argv[++i]);
        else if (!strcmp(argv[i], "-i") && i + 1 < argc) {
            const char *name = argv[++i];
            for (int k = 0; k <= kv_quant_best_isa(); k++)
                if (!strcmp(kv_quant_isa_name(k), name)) only_isa = k;
            if (only_isa < 0) {
                fprintf(stderr, "ISA %s is not one this CPU runs\n", name);
                return 2;
            }
        }
        else {
            uint32_t id = UINT32_MAX;
            for (uint32_t k = 0; k < KV_DTYPE_COUNT; k++)
                if (kv_dtype_get(k) && kv_dtype_get(k)->name && !strcmp(kv_dtype_name(k), argv[i])) id = k;
            if (id == UINT32_MAX || !kv_quant_get(id) || nt == 32) {
                fprintf(stderr, "unknown type %s\n", argv[i]);
                return 2;
            }
            types[nt++] = id;
        }
    }
    if (!nt) {
        static const uint32_t def[] = {KV_F32,  KV_F16,  KV_BF16, KV_Q8_0, KV_Q4_0, KV_Q4_1,  KV_Q5_0,  KV_Q5_1,
                                       KV_Q2_K, KV_Q3_K, KV_Q4_K, KV_Q5_K, KV_Q6_K, KV_TQ1_0, KV_TQ2_0, KV_I2_S};
        for (size_t k = 0; k < sizeof def / sizeof def[0]; k++) types[nt++] = def[k];
    }
    const int best = kv_quant_best_isa();
    printf("%lld x %lld weights, %d tokens, best ISA %s; GB/s of weight bytes (prefill also Gop/s)\n",
           (long long)R, (long long)K, T, kv_quant_isa_name(best));
    printf("%-6s %-7s %10s %10s %10s %10s\n", "type", "isa", "dot GB/s", "gemv GB/s", "gemm GB/s", "gemm Gop/s");
    float *xf = malloc(sizeof(float) * (size_t)K * (size_t)T);
    float *y = malloc(sizeof(float) * (size_t)R * (size_t)T);
    for (int64_t i = 0; i < K * T; i++) xf[i] = (float)(int)(rnd() % 2001 - 1000) / 500.0f;
    for (int k = 0; k < nt; k++) {
        const uint32_t t = types[k];
        const kv_quant_traits *q0 = kv_quant_get_isa(t, 0);
        const size_t wb = row_bytes(t, K), xb = row_bytes(q0->vec_dot_type, K);
        if (!wb || !xb || K % kv_dtype_get(t)->block_size) {
            printf("%-6s (row length %lld is not a multiple of its block)\n", kv_dtype_name(t), (long long)K);
            continue;
        }
        uint8_t *w = aligned_alloc(64, (wb * (size_t)R + 64 + 63) & ~(size_t)63);
        uint8_t *x = aligned_alloc(64, (xb * (size_t)T + 64 + 63) & ~(size_t)63);
        if (!w || !x || !xf || !y) return 1;
        for (size_t i = 0; i < wb * (size_t)R; i++) w[i] = (uint8_t)rnd();
        fix_scales(t, w, wb * (size_t)R);
        for (int c = 0; c < T; c++) kv_quant_get(q0->vec_dot_type)->from_float(xf + (size_t)c * K, x + (size_t)c * xb, K);
        double base[3] = {0, 0, 0};
        for (int isa = 0; isa <= best; isa++) {
            if (only_isa >= 0 && isa != only_isa) continue;
            const result r = bench(t, isa, w, R, K, x, T, secs, y, slice);
            if (isa == 0) base[0] = r.dot_gbs, base[1] = r.gemv_gbs, base[2] = r.gemm_gbs;
            printf("%-6s %-7s %10.2f %10.2f %10.2f %10.1f", kv_dtype_name(t), kv_quant_isa_name(isa), r.dot_gbs,
                   r.gemv_gbs, r.gemm_gbs, r.gemm_gops);
            if (isa && base[0] > 0) printf("   x%.0f x%.0f x%.0f", r.dot_gbs / base[0], r.gemv_gbs / base[1], r.gemm_gbs / base[2]);
            printf("\n");
            fflush(stdout);
        }
        free(w);
        free(x);
    }
    free(xf);
    free(y);
    return 0;
}
