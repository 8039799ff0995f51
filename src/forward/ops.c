#include "ops.h"

#include <math.h>

static void axpy_scalar(int64_t n, float a, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

__attribute__((target("avx2,fma"))) static void axpy_avx2(int64_t n, float a, const float *x, float *y) {
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}

void kv_axpy(int64_t n, float a, const float *x, float *y) {
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) axpy_avx2(n, a, x, y);
    else axpy_scalar(n, a, x, y);
}
#else
void kv_axpy(int64_t n, float a, const float *x, float *y) { axpy_scalar(n, a, x, y); }
#endif
