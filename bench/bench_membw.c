/* Memory read bandwidth, the roofline for decode (which reads every weight
 * byte once per token). Streams a buffer much larger than the caches with T
 * threads, each reading its contiguous share, in several ways:
 *   scalar     64-bit loads, 4 accumulators (what the first version measured)
 *   vec        256-bit (AVX2) or 512-bit (AVX-512) loads, one sequential stream
 *   vec xK     the thread's share cut into K contiguous parts read in turn, one
 *              vector of each (K = 2, 4, 8: several streams in flight)
 *   vec+pf     one stream with a software prefetch 2 KiB ahead
 *   nt         non-temporal loads (movntdqa) with prefetchnta 2 KiB ahead
 * and prints, per thread count, the median of each (several passes) and the
 * fastest, which is the number to divide decode's bytes/s by. The buffer is
 * anonymous memory; `4k` (default) asks for small pages, as a file mapping of
 * the weights has, `thp` for transparent huge pages (MADV_HUGEPAGE).
 * `cpu` as the last argument times each thread by its own CPU time instead
 * of the wall clock (the sum of the threads' bytes / CPU seconds): on a
 * machine shared with other processes that is the rate a thread reads at
 * while it runs, which the time slices others take do not lower.
 * Usage: bench_membw [MiB (1024)] [threads (1; a list: 1,2)] [passes (7)] [4k|thp] [wall|cpu] */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

enum { M_SCALAR, M_VEC, M_VEC2, M_VEC4, M_VEC8, M_VECPF, M_NT, M_COUNT };
static const char *const method_name[M_COUNT] = {"scalar", "vec", "vec x2", "vec x4", "vec x8", "vec+pf", "nt"};

#define PF_AHEAD 2048 /* bytes */

typedef struct part {
    const uint8_t *p;
    size_t n; /* bytes, a multiple of 64 * 8 */
    int method;
    uint64_t sum;
    double cpu; /* the thread's CPU seconds for its read */
    pthread_barrier_t *start;
} part;

static uint64_t read_scalar(const uint8_t *b, size_t n) {
    const uint64_t *p = (const uint64_t *)b;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= n / 8; i += 4) {
        s0 += p[i];
        s1 += p[i + 1];
        s2 += p[i + 2];
        s3 += p[i + 3];
    }
    return s0 + s1 + s2 + s3;
}

#if HAVE_X86
static int use_512;

__attribute__((target("avx2"))) static uint64_t fold256(__m256i a) {
    uint64_t t[4];
    _mm256_storeu_si256((__m256i *)t, a);
    return t[0] ^ t[1] ^ t[2] ^ t[3];
}

/* k streams of n/k bytes each, 128 bytes of each in turn; pf: prefetch ahead */
__attribute__((target("avx2"))) static uint64_t read_avx2(const uint8_t *b, size_t n, int k, int pf, int nt) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    const size_t len = n / (size_t)k;
    for (size_t off = 0; off < len; off += 128) {
        for (int s = 0; s < k; s++) {
            const uint8_t *q = b + (size_t)s * len + off;
            if (pf == 1) _mm_prefetch((const char *)q + PF_AHEAD, _MM_HINT_T0);
            if (pf == 2) _mm_prefetch((const char *)q + PF_AHEAD, _MM_HINT_NTA);
            if (nt) {
                a0 = _mm256_xor_si256(a0, _mm256_stream_load_si256((const __m256i *)q));
                a1 = _mm256_xor_si256(a1, _mm256_stream_load_si256((const __m256i *)(q + 32)));
                a2 = _mm256_xor_si256(a2, _mm256_stream_load_si256((const __m256i *)(q + 64)));
                a3 = _mm256_xor_si256(a3, _mm256_stream_load_si256((const __m256i *)(q + 96)));
            } else {
                a0 = _mm256_xor_si256(a0, _mm256_load_si256((const __m256i *)q));
                a1 = _mm256_xor_si256(a1, _mm256_load_si256((const __m256i *)(q + 32)));
                a2 = _mm256_xor_si256(a2, _mm256_load_si256((const __m256i *)(q + 64)));
                a3 = _mm256_xor_si256(a3, _mm256_load_si256((const __m256i *)(q + 96)));
            }
        }
    }
    return fold256(_mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3)));
}

__attribute__((target("avx512f"))) static uint64_t read_avx512(const uint8_t *b, size_t n, int k, int pf, int nt) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0;
    const size_t len = n / (size_t)k;
    for (size_t off = 0; off < len; off += 128) {
        for (int s = 0; s < k; s++) {
            const uint8_t *q = b + (size_t)s * len + off;
            if (pf == 1) _mm_prefetch((const char *)q + PF_AHEAD, _MM_HINT_T0);
            if (pf == 2) _mm_prefetch((const char *)q + PF_AHEAD, _MM_HINT_NTA);
            if (nt) {
                /* gcc 12 declares the operand void *, clang const void * */
                a0 = _mm512_xor_si512(a0, _mm512_stream_load_si512((void *)(uintptr_t)q));
                a1 = _mm512_xor_si512(a1, _mm512_stream_load_si512((void *)(uintptr_t)(q + 64)));
            } else {
                a0 = _mm512_xor_si512(a0, _mm512_load_si512((const void *)q));
                a1 = _mm512_xor_si512(a1, _mm512_load_si512((const void *)(q + 64)));
            }
        }
    }
    uint64_t t[8];
    _mm512_storeu_si512((void *)t, _mm512_xor_si512(a0, a1));
    return t[0] ^ t[1] ^ t[2] ^ t[3] ^ t[4] ^ t[5] ^ t[6] ^ t[7];
}
#endif

static uint64_t read_part(const uint8_t *b, size_t n, int method) {
    if (method == M_SCALAR || !HAVE_X86) return read_scalar(b, n);
#if HAVE_X86
    const int k = method == M_VEC2 ? 2 : method == M_VEC4 ? 4 : method == M_VEC8 ? 8 : 1;
    const int pf = method == M_VECPF ? 1 : method == M_NT ? 2 : 0;
    const int nt = method == M_NT;
    return use_512 ? read_avx512(b, n, k, pf, nt) : read_avx2(b, n, k, pf, nt);
#else
    return 0;
#endif
}

static double thread_cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *reader(void *arg) {
    part *pt = arg;
    pthread_barrier_wait(pt->start);
    const double c0 = thread_cpu();
    pt->sum = read_part(pt->p, pt->n, pt->method);
    pt->cpu = thread_cpu() - c0;
    return NULL;
}

static int g_cpu_clock;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* GB/s of one pass: threads start together at a barrier; the clock runs from
 * the barrier to the last join. */
static double one_pass(const uint8_t *buf, size_t n, int nt, int method, uint64_t *check) {
    pthread_t th[64];
    part parts[64];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)nt + 1);
    const size_t share = n / (size_t)nt / 1024 * 1024;
    for (int t = 0; t < nt; t++) {
        parts[t] = (part){.p = buf + share * (size_t)t, .n = share, .method = method, .start = &start};
        pthread_create(&th[t], NULL, reader, &parts[t]);
    }
    pthread_barrier_wait(&start);
    double t0 = now();
    for (int t = 0; t < nt; t++) {
        pthread_join(th[t], NULL);
        *check += parts[t].sum;
    }
    double dt = now() - t0;
    pthread_barrier_destroy(&start);
    if (g_cpu_clock) {
        double r = 0;
        for (int t = 0; t < nt; t++) r += (double)share / parts[t].cpu / 1e9;
        return r;
    }
    return (double)(share * (size_t)nt) / dt / 1e9;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? (size_t)atol(argv[1]) : 1024;
    const char *tlist = argc > 2 ? argv[2] : "1";
    int passes = argc > 3 ? atoi(argv[3]) : 7;
    const char *pages = argc > 4 ? argv[4] : "4k";
    const char *clock = argc > 5 ? argv[5] : "wall";
    if (passes < 1 || mib < 1 || (strcmp(pages, "4k") && strcmp(pages, "thp")) ||
        (strcmp(clock, "wall") && strcmp(clock, "cpu"))) {
        fprintf(stderr, "usage: bench_membw [MiB] [threads, e.g. 1,2] [passes] [4k|thp] [wall|cpu]\n");
        return 2;
    }
    g_cpu_clock = !strcmp(clock, "cpu");
#if HAVE_X86
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2")) {
        fprintf(stderr, "bench_membw: needs AVX2\n");
        return 2;
    }
    use_512 = __builtin_cpu_supports("avx512f");
#endif
    const size_t n = mib << 20;
    uint8_t *buf = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) return 1;
    madvise(buf, n, strcmp(pages, "thp") ? MADV_NOHUGEPAGE : MADV_HUGEPAGE);
    for (size_t i = 0; i < n / 8; i++) ((uint64_t *)buf)[i] = i * 0x9e3779b97f4a7c15ull;
    double *gbs = malloc((size_t)passes * sizeof *gbs);
    uint64_t check = 0;
    printf("read bandwidth, %zu MiB, %s pages, %s loads, median of %d passes (GB/s, %s time):\n", mib, pages,
           HAVE_X86 && use_512 ? "512-bit" : "256-bit", passes, g_cpu_clock ? "thread CPU" : "wall");
    for (const char *c = tlist; *c;) {
        int nt = atoi(c);
        if (nt < 1 || nt > 64) {
            fprintf(stderr, "bench_membw: threads must be 1..64\n");
            return 2;
        }
        double best = 0;
        int best_m = 0;
        printf("  %d thread(s):", nt);
        for (int m = 0; m < M_COUNT; m++) {
            for (int r = 0; r < passes; r++) gbs[r] = one_pass(buf, n, nt, m, &check);
            qsort(gbs, (size_t)passes, sizeof *gbs, cmp);
            const double med = gbs[passes / 2];
            printf(" %s %.2f%s", method_name[m], med, m + 1 < M_COUNT ? "," : "\n");
            if (med > best) best = med, best_m = m;
        }
        printf("read bandwidth, %zu MiB, %d thread(s): best median %.2f GB/s (%s) [%llu]\n", mib, nt, best,
               method_name[best_m], (unsigned long long)(check & 1));
        fflush(stdout);
        while (*c && *c != ',') c++;
        if (*c == ',') c++;
    }
    free(gbs);
    munmap(buf, n);
    return 0;
}
