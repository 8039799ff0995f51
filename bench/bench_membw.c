/* Memory read bandwidth: streams a buffer much larger than the caches with
 * 1 or more threads (each summing its share), median of several passes.
 * Usage: bench_membw [MiB (1024)] [threads (1)] [passes (7)] */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct part {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
} part;

static void *reader(void *arg) {
    part *pt = arg;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= pt->n; i += 4) {
        s0 += pt->p[i];
        s1 += pt->p[i + 1];
        s2 += pt->p[i + 2];
        s3 += pt->p[i + 3];
    }
    pt->sum = s0 + s1 + s2 + s3;
    return NULL;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? (size_t)atol(argv[1]) : 1024;
    int nt = argc > 2 ? atoi(argv[2]) : 1, passes = argc > 3 ? atoi(argv[3]) : 7;
    if (nt < 1 || nt > 64 || passes < 1 || mib < 1) return 2;
    size_t n = mib << 17; /* 8-byte words */
    uint64_t *buf = malloc(n * sizeof *buf);
    if (!buf) return 1;
    for (size_t i = 0; i < n; i++) buf[i] = i;
    double *gbs = malloc((size_t)passes * sizeof *gbs);
    uint64_t check = 0;
    for (int r = 0; r < passes; r++) {
        pthread_t th[64];
        part parts[64];
        double t0 = now();
        for (int t = 0; t < nt; t++) {
            parts[t].p = buf + n / nt * t;
            parts[t].n = n / nt;
            pthread_create(&th[t], NULL, reader, &parts[t]);
        }
        for (int t = 0; t < nt; t++) {
            pthread_join(th[t], NULL);
            check += parts[t].sum;
        }
        gbs[r] = (double)(n * 8) / (now() - t0) / 1e9;
    }
    qsort(gbs, (size_t)passes, sizeof *gbs, cmp);
    printf("read bandwidth, %zu MiB, %d thread(s): median %.2f GB/s (min %.2f, max %.2f) [%llu]\n", mib, nt,
           gbs[passes / 2], gbs[0], gbs[passes - 1], (unsigned long long)(check & 1));
    free(gbs);
    free(buf);
    return 0;
}
