/* Attention and FFN helpers (src/forward/vmath.c, src/quant/mad_rows.c):
 * every ISA against the scalar reference, bit for bit (Q8_0 value rows also
 * against dequantize-then-F32), and the exp
 * reference against libm's expf for accuracy and special values. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/dtype.h"
#include "quant/fp16.h"
#include "forward/vmath.h"
#include "quant/quant.h"

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}
static float unif(float lo, float hi) { return lo + (hi - lo) * (float)(rnd() & 0xffffff) / 16777216.0f; }

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* equal bits, or both NaN */
static int same(float a, float b) { return bits(a) == bits(b) || (a != a && b != b); }

static void test_exp_accuracy(void **state) {
    (void)state;
    double worst = 0.0;
    for (int i = 0; i < 2000000; i++) {
        const float x = unif(-103.0f, 88.7f);
        const double want = exp((double)x);
        const double got = kv_expf_ref(x);
        const double rel = fabs(got - want) / want;
        if (want > 1.2e-38 && rel > worst) worst = rel; /* normal results */
    }
    print_message("# exp: worst relative error %.3g over 2e6 normal results\n", worst);
    assert_true(worst < 4e-7);
    assert_true(kv_expf_ref(0.0f) == 1.0f);
    assert_true(kv_expf_ref(-INFINITY) == 0.0f);
    assert_true(kv_expf_ref(-104.0f) == 0.0f);
    assert_true(isinf(kv_expf_ref(INFINITY)) && kv_expf_ref(INFINITY) > 0);
    assert_true(isinf(kv_expf_ref(89.0f)));
    assert_true(isnan(kv_expf_ref(NAN)));
    assert_true(kv_expf_ref(-100.0f) > 0.0f); /* subnormal range still nonzero */
    assert_true(fabs(kv_expf_ref(1.0f) - 2.7182817f) <= 2.4e-7f);
}

/* inputs that reach every branch: NaN, infinities, the cut-offs, subnormal results, random */
static void fill_special(float *x, int n) {
    const float sp[] = {NAN, -NAN, INFINITY, -INFINITY, 0.0f, -0.0f, -104.0f, -103.99f, 88.7228f, 88.7229f,
                        -87.0f, -100.0f, 1e-30f, -1e-30f, 0.5f * 0.6931472f, -0.3465736f, from_bits(0x7fc00123u)};
    const int ns = (int)(sizeof sp / sizeof sp[0]);
    for (int i = 0; i < n; i++) {
        const uint32_t k = rnd() % 8;
        x[i] = k == 0 ? sp[rnd() % (uint32_t)ns] : k == 1 ? unif(-120.0f, 100.0f) : unif(-12.0f, 4.0f);
    }
}

static void test_softmax_isas(void **state) {
    (void)state;
    enum { N = 301 };
    float x0[N], xa[N], xb[N];
    int bad = 0, checked = 0;
    for (int rep = 0; rep < 200; rep++) {
        fill_special(x0, N);
        if (rep & 1) /* softmax as attention calls it: finite scores, max subtracted */
            for (int i = 0; i < N; i++) x0[i] = unif(-30.0f, 0.0f);
        const int n = (int)(rnd() % N) + 1;
        const float mx = rep & 1 ? 0.0f : unif(-2.0f, 2.0f);
        memcpy(xa, x0, sizeof xa);
        const double ref = kv_quant_get_softmax_isa(0)(n, xa, mx);
        for (int i = 0; i < n; i++) {
            if (!same(xa[i], kv_expf_ref(x0[i] - mx))) bad++;
        }
        for (int isa = 1; isa <= 2; isa++) {
            kv_softmax_fn fn = kv_quant_get_softmax_isa(isa);
            if (!fn) continue;
            memcpy(xb, x0, sizeof xb);
            const double s = fn(n, xb, mx);
            if (memcmp(&s, &ref, sizeof s) != 0 && !(s != s && ref != ref)) bad++;
            for (int i = 0; i < N; i++)
                if (!same(xa[i], xb[i])) bad++;
            checked++;
        }
    }
    /* the sum is the 8-lane order: compare with it spelled out */
    float y[19];
    double lane[8] = {0};
    for (int i = 0; i < 19; i++) y[i] = unif(-5.0f, 0.0f);
    for (int i = 0; i < 19; i++) lane[i % 8] += (double)kv_expf_ref(y[i]);
    const double want = ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
    const double got = kv_quant_get_softmax()(19, y, 0.0f);
    assert_true(memcmp(&want, &got, sizeof got) == 0);
    print_message("# softmax: %d ISA comparisons\n", checked);
    assert_int_equal(bad, 0);
}

static void test_silu_isas(void **state) {
    (void)state;
    enum { N = 300 };
    float g0[N], u[N], ga[N], gb[N];
    int bad = 0;
    for (int rep = 0; rep < 200; rep++) {
        fill_special(g0, N);
        for (int i = 0; i < N; i++) u[i] = unif(-3.0f, 3.0f);
        const int n = (int)(rnd() % N) + 1;
        memcpy(ga, g0, sizeof ga);
        kv_quant_get_silu_mul_isa(0)(n, ga, u);
        for (int i = 0; i < n; i++)
            if (!same(ga[i], (g0[i] / (1.0f + kv_expf_ref(-g0[i]))) * u[i])) bad++;
        for (int isa = 1; isa <= 2; isa++) {
            kv_silu_mul_fn fn = kv_quant_get_silu_mul_isa(isa);
            if (!fn) continue;
            memcpy(gb, g0, sizeof gb);
            fn(n, gb, u);
            for (int i = 0; i < N; i++)
                if (!same(ga[i], gb[i])) bad++;
        }
    }
    /* close to libm's SiLU where it is well conditioned */
    double worst = 0.0;
    for (int i = 0; i < 100000; i++) {
        const float xin = unif(0.1f, 20.0f);
        float g = xin, one = 1.0f;
        kv_quant_get_silu_mul()(1, &g, &one);
        const double want = (double)xin / (1.0 + exp(-(double)xin));
        const double rel = fabs((double)g - want) / want;
        if (rel > worst) worst = rel;
    }
    assert_true(worst < 5e-7);
    assert_int_equal(bad, 0);
}

/* mad_rows == nrows successive single-row steps, every ISA, F32 and F16 rows */
static void test_mad_rows(void **state) {
    (void)state;
    enum { N = 200, R = 40 };
    static float xf[R][N], y0[N], ya[N], yb[N], a[R];
    static kv_f16 xh[R][N];
    int bad = 0;
    for (int rep = 0; rep < 60; rep++) {
        for (int r = 0; r < R; r++)
            for (int i = 0; i < N; i++) {
                xf[r][i] = unif(-2.0f, 2.0f);
                xh[r][i] = kv_f32_to_f16(unif(-2.0f, 2.0f));
            }
        for (int i = 0; i < N; i++) y0[i] = unif(-1.0f, 1.0f);
        for (int r = 0; r < R; r++) a[r] = rep == 7 ? (r % 3 ? -0.0f : INFINITY) : unif(0.0f, 0.1f);
        const int64_t n = (int64_t)(rnd() % N) + 1;
        const int nr = (int)(rnd() % R) + 1;
        for (int t = 0; t < 2; t++) {
            const uint32_t ty = t ? KV_F16 : KV_F32;
            const void *rows[R];
            for (int r = 0; r < R; r++) rows[r] = t ? (const void *)xh[(r * 7) % R] : (const void *)xf[(r * 7) % R];
            memcpy(ya, y0, sizeof ya);
            for (int r = 0; r < nr; r++) kv_quant_get_mad_isa(ty, 0)(n, a[r], rows[r], ya);
            for (int isa = 0; isa <= 2; isa++) {
                kv_vec_mad_rows_fn fn = kv_quant_get_mad_rows_isa(ty, isa);
                if (!fn) continue;
                memcpy(yb, y0, sizeof yb);
                fn(n, nr, a, rows, yb);
                for (int i = 0; i < N; i++)
                    if (!same(ya[i], yb[i])) bad++;
            }
        }
    }
    assert_null(kv_quant_get_mad_rows(KV_Q4_0));
    assert_non_null(kv_quant_get_mad_rows(KV_F16));
    assert_int_equal(bad, 0);
}

/* Q8_0 value rows read from their blocks: every ISA equals dequantizing each
   row (the type's own to_float) and summing it with the scalar F32 step */
static void test_mad_rows_q8_0(void **state) {
    (void)state;
    enum { NB = 6, N = NB * 32, R = 40 };
    static float xf[N], y0[N], ya[N], yb[N], a[R], deq[N];
    static uint8_t xq[R][NB * 34];
    const kv_quant_traits *t8 = kv_quant_get_isa(KV_Q8_0, 0);
    assert_non_null(t8);
    int bad = 0, checked = 0;
    for (int rep = 0; rep < 60; rep++) {
        for (int r = 0; r < R; r++) {
            const float sc = rep == 3 ? 1e-6f : unif(0.1f, 30.0f);
            for (int i = 0; i < N; i++) xf[i] = unif(-sc, sc);
            t8->from_float_ref(xf, xq[r], N);
        }
        for (int i = 0; i < N; i++) y0[i] = unif(-1.0f, 1.0f);
        for (int r = 0; r < R; r++) a[r] = rep == 7 ? (r % 3 ? -0.0f : INFINITY) : unif(0.0f, 0.1f);
        const int64_t n = 32 * ((int64_t)(rnd() % NB) + 1);
        const int nr = (int)(rnd() % R) + 1;
        const void *rows[R];
        for (int r = 0; r < R; r++) rows[r] = xq[(r * 7) % R];
        memcpy(ya, y0, sizeof ya);
        for (int r = 0; r < nr; r++) {
            t8->to_float(rows[r], deq, n);
            kv_quant_get_mad_isa(KV_F32, 0)(n, a[r], deq, ya);
        }
        for (int isa = 0; isa <= 2; isa++) {
            kv_vec_mad_rows_fn fn = kv_quant_get_mad_rows_isa(KV_Q8_0, isa);
            if (!fn) continue;
            memcpy(yb, y0, sizeof yb);
            fn(n, nr, a, rows, yb);
            checked++;
            for (int i = 0; i < N; i++)
                if (!same(ya[i], yb[i])) bad++;
        }
    }
    assert_non_null(kv_quant_get_mad_rows_isa(KV_Q8_0, 0));
    assert_true(checked >= 60);
    assert_int_equal(bad, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exp_accuracy),
        cmocka_unit_test(test_softmax_isas),
        cmocka_unit_test(test_silu_isas),
        cmocka_unit_test(test_mad_rows),
        cmocka_unit_test(test_mad_rows_q8_0),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
