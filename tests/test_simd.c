/* SIMD kernels against the scalar references, bit for bit: for every
 * registered type and every ISA this CPU runs, vec_dot, gemm (every tile
 * shape), from_float, from_float_ref and to_float on realistic data, raw
 * random bytes and special values (zeros, -0, huge, subnormal, inf, NaN).
 * Dot results must have identical bits, except that a NaN result only has
 * to be a NaN (which NaN payload survives when two meet is not specified by
 * the references). Quantizer and to_float outputs are compared with memcmp.
 * Also: the dispatch picks a SIMD implementation on a CPU that has one, and
 * the scalar reference stays reachable. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

#include "core/dtype.h"
#include "quant/fp16.h"
#include "quant/quant.h"
#include "quant/quant_types.h"
#include "test_util.h"

/* ------------------------------------------------------------ helpers */

/* rng, fill_normal, fill_act and fbits: test_util.h */
static void fill_bytes(rng *r, void *p, size_t n) {
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)rng_u32(r);
}
static float bits2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static const uint32_t k_types[] = {KV_F32,  KV_F16,  KV_BF16, KV_Q8_0, KV_Q4_0, KV_Q4_1,  KV_Q5_0,
                                   KV_Q5_1, KV_Q8_1, KV_Q2_K, KV_Q3_K, KV_Q4_K, KV_Q5_K,  KV_Q6_K,
                                   KV_Q8_K, KV_TQ1_0, KV_TQ2_0, KV_I2_S, KV_I8_S};
#define N_TYPES (sizeof k_types / sizeof k_types[0])

static const char *tname(uint32_t t) { return t == KV_I8_S ? "i8_s" : kv_dtype_name(t); }

static int64_t block_of(uint32_t t) {
    if (t == KV_I8_S) return 1;
    if (t == KV_I2_S) return KV_QK_I2_S;
    return kv_dtype_get(t)->block_size;
}

/* bytes of one row of n elements (I2_S: without the tensor tail) */
static size_t row_bytes(uint32_t t, int64_t n) {
    if (t == KV_I8_S) return (size_t)kv_i8_s_row_bytes(n);
    if (t == KV_I2_S) return (size_t)(n / 4);
    uint64_t b = 0;
    assert_true(kv_dtype_row_bytes(t, (uint64_t)(n / block_of(t) * block_of(t)), &b));
    return (size_t)b;
}

static void *xmalloc(size_t n) {
    void *p = aligned_alloc(64, (n + 64 + 63) & ~(size_t)63);
    assert_non_null(p);
    memset(p, 0, (n + 64 + 63) & ~(size_t)63);
    return p;
}

/* a finite f16 with a random sign, exponent 0..29 (subnormals included) and mantissa */
static kv_f16 rand_f16(rng *r) {
    const uint32_t u = rng_u32(r);
    return (kv_f16)((u & 0x8000) | ((u >> 16) % 30) << 10 | (u & 0x3ff));
}
static void put_f16(uint8_t *p, kv_f16 h) { memcpy(p, &h, 2); }

/* Raw random bytes made into valid-enough blocks: every f16/f32 scale field
 * finite (so that results are not mostly NaN); codes, scales, bsums and
 * sums stay random (bsums inconsistent with qs are fine: the references
 * define a result for any bytes). */
static void fix_scales(rng *r, uint32_t t, uint8_t *p, int64_t n) {
    size_t bs = 0, off[2] = {0, 0};
    int nf = 0;
    switch (t) {
    case KV_Q8_0: bs = 34, nf = 1; break;
    case KV_Q4_0: bs = 18, nf = 1; break;
    case KV_Q4_1: bs = 20, nf = 2, off[1] = 2; break;
    case KV_Q5_0: bs = 22, nf = 1; break;
    case KV_Q5_1: bs = 24, nf = 2, off[1] = 2; break;
    case KV_Q8_1: bs = 36, nf = 2, off[1] = 2; break;
    case KV_Q2_K: bs = 84, nf = 2, off[0] = 80, off[1] = 82; break;
    case KV_Q3_K: bs = 110, nf = 1, off[0] = 108; break;
    case KV_Q4_K: bs = 144, nf = 2, off[1] = 2; break;
    case KV_Q5_K: bs = 176, nf = 2, off[1] = 2; break;
    case KV_Q6_K: bs = 210, nf = 1, off[0] = 208; break;
    case KV_TQ1_0: bs = 54, nf = 1, off[0] = 52; break;
    case KV_TQ2_0: bs = 66, nf = 1, off[0] = 64; break;
    case KV_Q8_K:
        for (int64_t b = 0; b < n / KV_QK_K; b++) {
            const float d = (rng_unif(r) - 0.5f) * 0.1f;
            memcpy(p + b * 292, &d, 4);
        }
        return;
    case KV_I8_S: {
        const float s = 1.0f + 100.0f * rng_unif(r);
        memcpy(p, &s, 4);
        return;
    }
    default: return;
    }
    for (int64_t b = 0; b < n / block_of(t); b++)
        for (int f = 0; f < nf; f++) put_f16(p + (size_t)b * bs + off[f], rand_f16(r));
}

/* where the int8 codes of an activation row may hold -128, make it -127
 * (keeps the int8 x int8 kernels on their fast path) */
static void no_m128(uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] == 0x80) p[i] = 0x81;
}

/* equal bits, or both NaN */
static int same(float a, float b) { return fbits(a) == fbits(b) || (isnan(a) && isnan(b)); }

static int isa_ok(int isa) { return kv_quant_get_isa(KV_F32, isa) != NULL; }

/* Type t runs, at level isa, the very kernels (the same traits and gemm tables) of the level
 * below: the second level of a type with one SIMD version (the ARM float types, AVX2 kernels
 * that AVX-512 runs, the scalar forwarders). Those were checked on the same data at the lower
 * level, so the loops skip them (under qemu a check costs ~50x its native time). */
static int same_as_below(uint32_t t, int isa) {
    return isa >= 2 && kv_quant_get_isa(t, isa) == kv_quant_get_isa(t, isa - 1) &&
           kv_quant_get_gemm_isa(t, isa) == kv_quant_get_gemm_isa(t, isa - 1);
}
/* isa_ok, and not a repeat of the level below for t */
static int isa_new(uint32_t t, int isa) { return isa_ok(isa) && !same_as_below(t, isa); }

static const char *isa_name(int isa) { return kv_quant_isa_name(isa); }

/* ------------------------------------------------------------ dispatch */

static int cpu_isa(void) {
#if defined(__x86_64__)
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return 0;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vnni"))
        return 2;
    return 1;
#elif defined(__aarch64__) && defined(__linux__) && !defined(__clang__)
    const unsigned long hw = getauxval(AT_HWCAP);
    if (!(hw & (1UL << 1))) return 0; /* HWCAP_ASIMD */
    return (hw & (1UL << 20)) ? 2 : 1; /* HWCAP_ASIMDDP */
#else
    return 0;
#endif
}

static void test_dispatch(void **state) {
    (void)state;
    const int best = kv_quant_best_isa();
    print_message("best ISA: %s\n", isa_name(best));
#ifdef KV_NO_SIMD
    assert_int_equal(best, 0);
    (void)cpu_isa;
#else
    assert_int_equal(best, cpu_isa());
#endif
    for (size_t k = 0; k < N_TYPES; k++) {
        const uint32_t t = k_types[k];
        const kv_quant_traits *s = kv_quant_get_isa(t, KV_ISA_SCALAR);
        assert_non_null(s);
        assert_int_equal(s->type, t);
        assert_ptr_equal(kv_quant_get(t), kv_quant_get_isa(t, best));
        assert_ptr_equal(kv_quant_get_gemm(t), kv_quant_get_gemm_isa(t, best));
        for (int isa = 0; isa <= 2; isa++) {
            const kv_quant_traits *q = kv_quant_get_isa(t, isa);
            const kv_quant_gemm *g = kv_quant_get_gemm_isa(t, isa);
            if (isa > best) {
                assert_null(q);
                assert_null(g);
                continue;
            }
            assert_non_null(q);
            assert_non_null(g);
            assert_int_equal(q->type, t);
            assert_int_equal(q->vec_dot_type, s->vec_dot_type);
            assert_non_null(q->to_float);
            assert_non_null(q->from_float);
            assert_non_null(q->from_float_ref);
            assert_non_null(q->vec_dot);
            assert_int_equal(g->type, t);
            assert_true(g->isa <= isa);
            assert_true(g->nr >= 1 && g->nc >= 1 && g->nr <= 16 && g->nc <= 16);
        }
        assert_null(kv_quant_get_isa(t, 3));
        assert_null(kv_quant_get_isa(t, -1));
    }
    assert_null(kv_quant_get(KV_IQ2_XXS));
    assert_null(kv_quant_get_isa(KV_IQ2_XXS, 0));
    assert_null(kv_quant_get_gemm(KV_IQ2_XXS));
    /* the scalar column is the reference itself */
    assert_ptr_equal(kv_quant_get_isa(KV_F16, 0)->vec_dot, kv_vec_dot_f16_ref);
    assert_ptr_equal(kv_quant_get_isa(KV_Q8_0, 0)->vec_dot, kv_vec_dot_q8_0_q8_0_ref);
    assert_ptr_equal(kv_quant_get_isa(KV_Q4_0, 0), &kv_traits_q4_0);
    assert_ptr_equal(kv_quant_get_isa(KV_I2_S, 0), &kv_traits_i2_s);
    /* on a SIMD machine the main types run SIMD kernels */
#if defined(__aarch64__)
    /* NEON: the float types and the integer types with kernels at both levels */
    static const uint32_t main_types[] = {KV_F32, KV_F16, KV_BF16, KV_Q8_0, KV_Q4_0, KV_Q4_K, KV_Q6_K, KV_TQ2_0, KV_Q8_K};
    static const uint32_t main512[] = {KV_Q8_0, KV_Q4_0, KV_Q4_K, KV_Q6_K, KV_TQ2_0, KV_Q8_K};
#else
    static const uint32_t main_types[] = {KV_F32, KV_F16, KV_BF16, KV_Q8_0, KV_Q4_0, KV_Q4_K,
                                          KV_Q6_K, KV_TQ1_0, KV_TQ2_0, KV_I2_S, KV_Q8_K, KV_I8_S};
    static const uint32_t main512[] = {KV_F16,  KV_Q8_0,  KV_Q4_0,  KV_Q5_0, KV_Q4_K,
                                       KV_Q6_K, KV_TQ1_0, KV_TQ2_0, KV_I2_S};
#endif
    if (best >= 1) {
        for (size_t k = 0; k < sizeof main_types / sizeof main_types[0]; k++) {
            const uint32_t t = main_types[k];
            assert_ptr_not_equal(kv_quant_get(t)->vec_dot, kv_quant_get_isa(t, 0)->vec_dot);
            assert_true(kv_quant_get_gemm(t)->isa >= 1);
        }
        assert_ptr_not_equal(kv_quant_get(KV_Q8_0)->from_float, kv_quant_get_isa(KV_Q8_0, 0)->from_float);
        assert_ptr_not_equal(kv_quant_get(KV_Q8_K)->from_float, kv_quant_get_isa(KV_Q8_K, 0)->from_float);
        assert_ptr_not_equal(kv_quant_get(KV_F16)->to_float, kv_quant_get_isa(KV_F16, 0)->to_float);
    }
    if (best >= 2) {
        for (size_t k = 0; k < sizeof main512 / sizeof main512[0]; k++)
            assert_int_equal(kv_quant_get_gemm(main512[k])->isa, 2);
    }
}

/* ------------------------------------------------------------ vec_dot and gemm */

static const int64_t k_len_1[] = {1, 7, 15, 16, 17, 31, 33, 48, 172, 288, 768, 4096, 4099};
static const int64_t k_len_32[] = {32, 64, 96, 160, 288, 768, 4096, 300};
static const int64_t k_len_128[] = {128, 384, 768, 4096};
static const int64_t k_len_256[] = {256, 512, 768, 4096, 1000};

static void lengths(uint32_t t, const int64_t **l, size_t *nl) {
    const int64_t b = block_of(t);
    if (b == 1) *l = k_len_1, *nl = sizeof k_len_1 / sizeof k_len_1[0];
    else if (b == 32) *l = k_len_32, *nl = sizeof k_len_32 / sizeof k_len_32[0];
    else if (b == 128) *l = k_len_128, *nl = sizeof k_len_128 / sizeof k_len_128[0];
    else *l = k_len_256, *nl = sizeof k_len_256 / sizeof k_len_256[0];
}

enum { MODE_REAL, MODE_RAW, MODE_RAW_NO128, MODE_SPECIAL, N_MODES };

/* R weight rows and C activation rows of n elements, with strides */
typedef struct {
    uint32_t t, vt;
    int64_t n;
    int R, C;
    size_t ws, xs;
    uint8_t *w, *x;
} dataset;

static const float k_specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e38f, -1e38f, 3e38f, 1e-40f, -3e-39f,
                                   1.4e-45f, 65504.0f, 65520.0f, -65519.0f, 1e5f, 5.9604645e-8f, 2.9802322e-8f,
                                   6.1035156e-5f, 1e-30f, -1e-30f};
#define N_SPECIALS (sizeof k_specials / sizeof k_specials[0])

static void make_floats(rng *r, float *f, int64_t n, int special) {
    fill_act(r, f, n);
    if (!special) return;
    for (int64_t i = 0; i < n; i++)
        if (rng_u32(r) % 3 == 0) f[i] = k_specials[rng_u32(r) % N_SPECIALS];
    if (n > 4) {
        f[0] = bits2f(0x7fa00001u); /* signalling NaN */
        f[n - 1] = bits2f(0xffc12345u);
    }
}

static void make_rows(rng *r, uint32_t t, int64_t n, int mode, int act, uint8_t *dst, size_t stride, int rows) {
    const kv_quant_traits *s = kv_quant_get_isa(t, 0);
    const size_t rb = row_bytes(t, n);
    float *f = malloc(sizeof(float) * (size_t)(n + 1));
    uint8_t *tmp = xmalloc(rb + KV_I2_S_TAIL + 64);
    assert_non_null(f);
    for (int i = 0; i < rows; i++) {
        uint8_t *p = dst + (size_t)i * stride;
        const int floaty = t == KV_F32 || t == KV_F16 || t == KV_BF16;
        if (mode == MODE_REAL || (floaty && mode != MODE_SPECIAL)) {
            if (act || floaty) {
                if (act) fill_act(r, f, n);
                else fill_normal(r, f, n, 0.05f);
                (act ? s->from_float : s->from_float_ref)(f, tmp, n);
            } else {
                fill_normal(r, f, n, 0.05f);
                s->from_float_ref(f, tmp, n);
            }
            memcpy(p, tmp, rb);
            if (floaty && mode != MODE_REAL) { /* raw bit patterns for half types */
                if (t != KV_F32) {
                    fill_bytes(r, p, rb);
                    for (size_t k = 0; k + 1 < rb; k += 2)
                        if ((p[k + 1] & 0x7f) >= 0x7c && t == KV_F16) p[k + 1] &= 0xbb; /* mostly finite */
                        else if ((p[k + 1] & 0x7f) == 0x7f && t == KV_BF16) p[k + 1] &= 0xbf;
                }
            }
        } else if (mode == MODE_SPECIAL) {
            make_floats(r, f, n, 1);
            (act ? s->from_float : s->from_float_ref)(f, tmp, n);
            memcpy(p, tmp, rb);
        } else {
            fill_bytes(r, p, rb);
            if (act && mode == MODE_RAW_NO128) {
                if (t == KV_I8_S) no_m128(p + 8, rb - 8);
                else no_m128(p, rb);
            }
            fix_scales(r, t, p, n);
        }
    }
    free(f);
    free(tmp);
}

static int check_dots(const dataset *d, int isa, int mode) {
    const kv_quant_traits *s = kv_quant_get_isa(d->t, 0), *q = kv_quant_get_isa(d->t, isa);
    const kv_quant_gemm *g = kv_quant_get_gemm_isa(d->t, isa);
    int bad = 0;
    float ref[16][16];
    for (int r = 0; r < d->R; r++)
        for (int c = 0; c < d->C; c++) {
            const uint8_t *wr = d->w + (size_t)r * d->ws, *xc = d->x + (size_t)c * d->xs;
            s->vec_dot(d->n, &ref[r][c], wr, xc);
            float v = 12345.0f;
            q->vec_dot(d->n, &v, wr, xc);
            if (!same(v, ref[r][c])) {
                if (bad++ < 5)
                    print_message("%s %s vec_dot n=%lld mode %d row %d col %d: 0x%08x want 0x%08x\n", tname(d->t),
                                  isa_name(isa), (long long)d->n, mode, r, c, fbits(v), fbits(ref[r][c]));
            }
        }
    /* every tile shape up to the register tile and beyond it, at an offset
       inside a padded output */
    for (int nr = 1; nr <= g->nr + 2 && nr <= d->R; nr++)
        for (int nc = 1; nc <= g->nc + 2 && nc <= d->C; nc++) {
            const int r0 = d->R - nr, c0 = (nr + nc) % (d->C - nc + 1);
            const int64_t ldy = nr + 3;
            float y[20 * 20];
            for (int i = 0; i < 20 * 20; i++) y[i] = -7.0f;
            g->gemm(d->n, d->w + (size_t)r0 * d->ws, d->ws, nr, d->x + (size_t)c0 * d->xs, d->xs, nc, y + 1, ldy);
            for (int i = 0; i < 20 * 20; i++) {
                const int64_t k = i - 1;
                const int r = (int)(k % ldy), c = (int)(k / ldy);
                if (k >= 0 && r < nr && c < nc) {
                    if (!same(y[i], ref[r0 + r][c0 + c]) && bad++ < 5)
                        print_message("%s %s gemm %dx%d n=%lld mode %d (%d,%d): 0x%08x want 0x%08x\n", tname(d->t),
                                      isa_name(isa), nr, nc, (long long)d->n, mode, r, c, fbits(y[i]),
                                      fbits(ref[r0 + r][c0 + c]));
                } else if (fbits(y[i]) != fbits(-7.0f) && bad++ < 5) {
                    print_message("%s %s gemm %dx%d wrote outside its tile at %d\n", tname(d->t), isa_name(isa), nr,
                                  nc, i);
                }
            }
        }
    return bad;
}

static void run_dots(uint32_t t, int modes_mask) {
    const kv_quant_traits *s = kv_quant_get_isa(t, 0);
    const int64_t *lens;
    size_t nl;
    lengths(t, &lens, &nl);
    int bad = 0;
    rng r = {0x9e3779b97f4a7c15ULL ^ t};
    for (size_t li = 0; li < nl; li++) {
        dataset d = {.t = t, .vt = s->vec_dot_type, .n = lens[li], .R = 9, .C = 6};
        d.ws = row_bytes(t, d.n) + 4;
        d.xs = row_bytes(d.vt, d.n) + 4;
        d.w = xmalloc(d.ws * (size_t)d.R);
        d.x = xmalloc(d.xs * (size_t)d.C);
        for (int mode = 0; mode < N_MODES; mode++) {
            if (!(modes_mask >> mode & 1)) continue;
            make_rows(&r, t, d.n, mode, 0, d.w, d.ws, d.R);
            make_rows(&r, d.vt, d.n, mode, 1, d.x, d.xs, d.C);
            for (int isa = 1; isa <= 2; isa++)
                if (isa_new(t, isa)) bad += check_dots(&d, isa, mode);
        }
        free(d.w);
        free(d.x);
    }
    assert_int_equal(bad, 0);
}

#define ALL_MODES ((1 << N_MODES) - 1)
#define DOT_TEST(T, ID)                                \
    static void test_dot_##T(void **state) {           \
        (void)state;                                   \
        run_dots(ID, ALL_MODES);                       \
    }
DOT_TEST(f32, KV_F32)
DOT_TEST(f16, KV_F16)
DOT_TEST(bf16, KV_BF16)
DOT_TEST(q8_0, KV_Q8_0)
DOT_TEST(q4_0, KV_Q4_0)
DOT_TEST(q4_1, KV_Q4_1)
DOT_TEST(q5_0, KV_Q5_0)
DOT_TEST(q5_1, KV_Q5_1)
DOT_TEST(q8_1, KV_Q8_1)
DOT_TEST(q2_K, KV_Q2_K)
DOT_TEST(q3_K, KV_Q3_K)
DOT_TEST(q4_K, KV_Q4_K)
DOT_TEST(q5_K, KV_Q5_K)
DOT_TEST(q6_K, KV_Q6_K)
DOT_TEST(q8_K, KV_Q8_K)
DOT_TEST(tq1_0, KV_TQ1_0)
DOT_TEST(tq2_0, KV_TQ2_0)
DOT_TEST(i2_s, KV_I2_S)
DOT_TEST(i8_s, KV_I8_S)

/* Float dots whose lanes hold -0 (products that underflow): a kernel that
 * touched the lanes beyond a tail (fma(0, 0, -0) = +0) would flip the sign
 * of the result. (F16 products cannot underflow in f32.) */
static void test_dot_negative_zero_lanes(void **state) {
    (void)state;
    static const uint32_t ft[] = {KV_F32, KV_BF16};
    int bad = 0;
    for (size_t k = 0; k < 2; k++) {
        const kv_quant_traits *s = kv_quant_get_isa(ft[k], 0);
        for (int64_t n = 1; n <= 40; n++) {
            float a[40], b[40];
            uint8_t qa[160], qb[160];
            for (int i = 0; i < n; i++) {
                a[i] = -1e-30f;
                b[i] = 1e-30f;
            }
            s->from_float(a, qa, n);
            s->from_float(b, qb, n);
            float ref;
            s->vec_dot(n, &ref, qa, qb);
            if (n >= 16) assert_true(fbits(ref) == 0x80000000u);
            for (int isa = 1; isa <= 2; isa++) {
                if (!isa_ok(isa)) continue;
                float v;
                kv_quant_get_isa(ft[k], isa)->vec_dot(n, &v, qa, qb);
                if (fbits(v) != fbits(ref)) bad++;
                float y[4] = {1, 1, 1, 1};
                kv_quant_get_gemm_isa(ft[k], isa)->gemm(n, qa, 0, 1, qb, 0, 1, y, 1);
                if (fbits(y[0]) != fbits(ref)) bad++;
            }
        }
    }
    assert_int_equal(bad, 0);
}

/* ------------------------------------------------------------ quantizers and to_float */

static int check_convert(uint32_t t, int isa, const float *f, int64_t n) {
    const kv_quant_traits *s = kv_quant_get_isa(t, 0), *q = kv_quant_get_isa(t, isa);
    const size_t rb = t == KV_I2_S ? row_bytes(t, n) + KV_I2_S_TAIL : row_bytes(t, n);
    uint8_t *a = xmalloc(rb), *b = xmalloc(rb);
    float *fa = xmalloc(sizeof(float) * (size_t)n), *fb = xmalloc(sizeof(float) * (size_t)n);
    int bad = 0;
    for (int ref = 0; ref < 2; ref++) {
        memset(a, 0x5a, rb);
        memset(b, 0x5a, rb);
        (ref ? s->from_float_ref : s->from_float)(f, a, n);
        (ref ? q->from_float_ref : q->from_float)(f, b, n);
        if (memcmp(a, b, rb) != 0) {
            size_t k = 0;
            while (a[k] == b[k]) k++;
            if (bad++ < 5)
                print_message("%s %s %s n=%lld differs at byte %zu: %02x want %02x\n", tname(t), isa_name(isa),
                              ref ? "from_float_ref" : "from_float", (long long)n, k, b[k], a[k]);
        }
    }
    /* to_float of what the reference wrote */
    const int64_t m = t == KV_I2_S ? n / KV_QK_I2_S * KV_QK_I2_S : n / block_of(t) * block_of(t);
    s->to_float(a, fa, m);
    q->to_float(a, fb, m);
    if (memcmp(fa, fb, sizeof(float) * (size_t)m) != 0 && bad++ < 5)
        print_message("%s %s to_float n=%lld differs\n", tname(t), isa_name(isa), (long long)n);
    free(a);
    free(b);
    free(fa);
    free(fb);
    return bad;
}

static void test_quantizers(void **state) {
    (void)state;
    int bad = 0;
    rng r = {4242};
    for (size_t k = 0; k < N_TYPES; k++) {
        const uint32_t t = k_types[k];
        const int64_t *lens;
        size_t nl;
        lengths(t, &lens, &nl);
        for (size_t li = 0; li < nl; li++) {
            const int64_t n = lens[li];
            float *f = xmalloc(sizeof(float) * (size_t)n);
            for (int sp = 0; sp < 3; sp++) {
                make_floats(&r, f, n, sp == 1);
                if (sp == 2) /* a block of zeros and one of NaNs */
                    for (int64_t i = 0; i < n; i++) f[i] = i < n / 2 ? 0.0f : (i % 7 ? NAN : -0.0f);
                for (int isa = 1; isa <= 2; isa++)
                    if (isa_new(t, isa)) bad += check_convert(t, isa, f, n);
            }
            free(f);
        }
    }
    assert_int_equal(bad, 0);
}

/* to_float of raw bit patterns (every NaN, inf and subnormal of F16/BF16,
 * random Q8_0 blocks with any scale) */
static void test_to_float_raw(void **state) {
    (void)state;
    int bad = 0;
    enum { N = 65536 };
    uint16_t *h = xmalloc(2 * N);
    float *a = xmalloc(4 * N), *b = xmalloc(4 * N);
    for (int i = 0; i < N; i++) h[i] = (uint16_t)i;
    for (int isa = 1; isa <= 2; isa++) {
        if (!isa_ok(isa)) continue;
        static const uint32_t tt[] = {KV_F16, KV_BF16};
        for (int k = 0; k < 2; k++) {
            for (int64_t n = N - 5; n <= N; n += 5) {
                kv_quant_get_isa(tt[k], 0)->to_float(h, a, n);
                kv_quant_get_isa(tt[k], isa)->to_float(h, b, n);
                if (memcmp(a, b, 4 * (size_t)n) != 0) bad++;
            }
        }
        rng r = {99};
        uint8_t *q = xmalloc(34 * 512);
        fill_bytes(&r, q, 34 * 512);
        kv_quant_get_isa(KV_Q8_0, 0)->to_float(q, a, 32 * 512);
        kv_quant_get_isa(KV_Q8_0, isa)->to_float(q, b, 32 * 512);
        if (memcmp(a, b, 4 * 32 * 512) != 0) bad++;
        free(q);
    }
    free(h);
    free(a);
    free(b);
    assert_int_equal(bad, 0);
}

/* F16/BF16 from_float over a sweep of bit patterns: every 997th float, and
 * every float in windows around the rounding, subnormal, overflow, infinity
 * and NaN boundaries (both signs). */
static void test_half_from_float_sweep(void **state) {
    (void)state;
    static const uint32_t centers[] = {0x00000000u, 0x00800000u, 0x33000000u, 0x33400000u, 0x33800000u,
                                       0x38000000u, 0x38800000u, 0x3f800000u, 0x477fe000u, 0x47800000u,
                                       0x7f7ff000u, 0x7f800000u, 0x7fc00000u, 0x7fffe000u};
    enum { WIN = 8192, SPARSE = 997 };
    const size_t cap = (size_t)(0x100000000ull / SPARSE) + 2 * 14 * 2 * WIN + 16;
    float *f = xmalloc(4 * cap);
    size_t m = 0;
    for (uint64_t u = 0; u <= 0xffffffffull; u += SPARSE) f[m++] = bits2f((uint32_t)u);
    for (int sgn = 0; sgn < 2; sgn++)
        for (size_t c = 0; c < sizeof centers / sizeof centers[0]; c++)
            for (int64_t d = -WIN; d < WIN; d++) {
                const int64_t v = (int64_t)centers[c] + d;
                if (v < 0 || v > 0x7fffffff) continue;
                f[m++] = bits2f((uint32_t)v | (sgn ? 0x80000000u : 0));
            }
    uint16_t *a = xmalloc(2 * m), *b = xmalloc(2 * m);
    int bad = 0;
    static const uint32_t tt[] = {KV_F16, KV_BF16};
    for (int isa = 1; isa <= 2; isa++) {
        if (!isa_ok(isa)) continue;
        for (int k = 0; k < 2; k++) {
            kv_quant_get_isa(tt[k], 0)->from_float(f, a, (int64_t)m);
            kv_quant_get_isa(tt[k], isa)->from_float(f, b, (int64_t)m);
            if (memcmp(a, b, 2 * m) != 0 && bad++ < 3) {
                size_t j = 0;
                while (a[j] == b[j]) j++;
                print_message("%s %s from_float(0x%08x) = %04x want %04x\n", tname(tt[k]), isa_name(isa), fbits(f[j]),
                              b[j], a[j]);
            }
        }
    }
    free(f);
    free(a);
    free(b);
    assert_int_equal(bad, 0);
}

/* gemm on a larger problem as forward uses it: register tiles over rows and
 * tokens, and one call for everything */
static void test_gemm_tiled(void **state) {
    (void)state;
    static const uint32_t tt[] = {KV_F32, KV_F16, KV_BF16, KV_Q8_0, KV_Q4_0, KV_Q4_1, KV_Q5_0, KV_Q5_1, KV_Q2_K,
                                  KV_Q3_K, KV_Q4_K, KV_Q5_K, KV_Q6_K, KV_TQ1_0, KV_TQ2_0, KV_I2_S};
    enum { ROWS = 37, TOK = 11, N = 1024 };
    int bad = 0;
    rng r = {31337};
    for (size_t k = 0; k < sizeof tt / sizeof tt[0]; k++) {
        const uint32_t t = tt[k];
        const kv_quant_traits *s = kv_quant_get_isa(t, 0);
        const size_t ws = row_bytes(t, N), xs = row_bytes(s->vec_dot_type, N);
        uint8_t *w = xmalloc(ws * ROWS), *x = xmalloc(xs * TOK);
        make_rows(&r, t, N, MODE_REAL, 0, w, ws, ROWS);
        make_rows(&r, s->vec_dot_type, N, MODE_REAL, 1, x, xs, TOK);
        float ref[TOK][ROWS], y[TOK][ROWS];
        for (int c = 0; c < TOK; c++)
            for (int rr = 0; rr < ROWS; rr++) s->vec_dot(N, &ref[c][rr], w + rr * ws, x + c * xs);
        for (int isa = 1; isa <= 2; isa++) {
            if (!isa_new(t, isa)) continue;
            const kv_quant_gemm *g = kv_quant_get_gemm_isa(t, isa);
            memset(y, 0, sizeof y);
            for (int r0 = 0; r0 < ROWS; r0 += g->nr)
                for (int c0 = 0; c0 < TOK; c0 += g->nc) {
                    const int nr = ROWS - r0 < g->nr ? ROWS - r0 : g->nr;
                    const int nc = TOK - c0 < g->nc ? TOK - c0 : g->nc;
                    g->gemm(N, w + r0 * ws, ws, nr, x + c0 * xs, xs, nc, &y[c0][r0], ROWS);
                }
            if (memcmp(ref, y, sizeof y) != 0) {
                bad++;
                print_message("%s %s tiled gemm differs\n", tname(t), isa_name(isa));
            }
            /* one call for the whole matrix */
            memset(y, 0, sizeof y);
            g->gemm(N, w, ws, ROWS, x, xs, TOK, &y[0][0], ROWS);
            if (memcmp(ref, y, sizeof y) != 0) {
                bad++;
                print_message("%s %s whole-matrix gemm differs\n", tname(t), isa_name(isa));
            }
        }
        free(w);
        free(x);
    }
    assert_int_equal(bad, 0);
}

/* The prefill paths (several columns: packed operands, bigger tiles, panels
 * over long rows): row counts around the 8-row tile, column counts around
 * the column tiles, lengths with partial chunks and several panels, on
 * realistic, raw and special data; outputs at an offset in a padded matrix,
 * nothing written outside. */
static void test_gemm_packed(void **state) {
    (void)state;
    static const uint32_t tt[] = {KV_F32,  KV_F16,  KV_BF16, KV_Q8_0, KV_Q4_0,  KV_Q5_0, KV_Q2_K,
                                  KV_Q3_K, KV_Q4_K, KV_Q5_K, KV_Q6_K, KV_TQ1_0, KV_TQ2_0};
    static const int64_t n32[] = {32, 288, 800}, n256[] = {256, 768, 2560}, nf[] = {5, 16, 17, 300, 513, 1040};
    static const int nrs[] = {1, 3, 4, 5, 7, 8, 9, 16, 19}, ncs[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
    enum { R = 19, C = 13 };
    int bad = 0;
    rng r = {4242};
    for (size_t k = 0; k < sizeof tt / sizeof tt[0]; k++) {
        const uint32_t t = tt[k];
        const kv_quant_traits *s = kv_quant_get_isa(t, 0);
        const int64_t blk = block_of(t);
        const int64_t *ns = blk == 32 ? n32 : blk == 256 ? n256 : nf;
        const size_t nn = blk == 32 ? sizeof n32 / sizeof n32[0]
                          : blk == 256 ? sizeof n256 / sizeof n256[0]
                                       : sizeof nf / sizeof nf[0];
        for (size_t li = 0; li < nn; li++) {
            const int64_t n = ns[li];
            const size_t ws = row_bytes(t, n) + 4, xs = row_bytes(s->vec_dot_type, n) + 12; /* padded, aligned as vec_dot needs */
            uint8_t *w = xmalloc(ws * R), *x = xmalloc(xs * C);
            for (int mode = 0; mode < N_MODES; mode++) {
                make_rows(&r, t, n, mode, 0, w, ws, R);
                make_rows(&r, s->vec_dot_type, n, mode, 1, x, xs, C);
                float ref[C][R];
                for (int c = 0; c < C; c++)
                    for (int rr = 0; rr < R; rr++) s->vec_dot(n, &ref[c][rr], w + rr * ws, x + c * xs);
                for (int isa = 1; isa <= 2; isa++) {
                    if (!isa_new(t, isa)) continue;
                    const kv_quant_gemm *g = kv_quant_get_gemm_isa(t, isa);
                    for (size_t a = 0; a < sizeof nrs / sizeof nrs[0]; a++)
                        for (size_t b = 0; b < sizeof ncs / sizeof ncs[0]; b++) {
                            const int nr = nrs[a], nc = ncs[b], r0 = R - nr, c0 = C - nc;
                            const int64_t ldy = nr + 2;
                            float y[(C + 1) * (R + 2) + 2];
                            const int ny = (int)(nc * ldy + 2);
                            for (int i = 0; i < ny; i++) y[i] = -7.0f;
                            g->gemm(n, w + (size_t)r0 * ws, ws, nr, x + (size_t)c0 * xs, xs, nc, y + 1, ldy);
                            for (int i = 0; i < ny; i++) {
                                const int64_t q = i - 1;
                                const int rr = (int)(q % ldy), cc = (int)(q / ldy);
                                const int in = q >= 0 && rr < nr && cc < nc;
                                const float want = in ? ref[c0 + cc][r0 + rr] : -7.0f;
                                if (!same(y[i], want) && bad++ < 5)
                                    print_message("%s %s packed gemm %dx%d n=%lld mode %d at %d: 0x%08x want 0x%08x\n",
                                                  tname(t), isa_name(isa), nr, nc, (long long)n, mode, i, fbits(y[i]),
                                                  fbits(want));
                            }
                        }
                }
            }
            free(w);
            free(x);
        }
    }
    /* -0 lanes (see test_dot_negative_zero_lanes) through the several-column path */
    static const uint32_t ft[] = {KV_F32, KV_BF16};
    for (size_t k = 0; k < 2; k++) {
        const kv_quant_traits *s = kv_quant_get_isa(ft[k], 0);
        for (int64_t n = 1; n <= 40; n++) {
            float a[40], b[40];
            uint8_t qa[160], qb[4][160];
            for (int i = 0; i < n; i++) {
                a[i] = -1e-30f;
                b[i] = 1e-30f;
            }
            s->from_float(a, qa, n);
            for (int c = 0; c < 4; c++) s->from_float(b, qb[c], n);
            float ref;
            s->vec_dot(n, &ref, qa, qb[0]);
            for (int isa = 1; isa <= 2; isa++) {
                if (!isa_ok(isa)) continue;
                float y[4] = {1, 1, 1, 1};
                kv_quant_get_gemm_isa(ft[k], isa)->gemm(n, qa, 0, 1, qb, 160, 4, y, 1);
                for (int c = 0; c < 4; c++)
                    if (fbits(y[c]) != fbits(ref)) bad++;
            }
        }
    }
    assert_int_equal(bad, 0);
}

/* ------------------------------------------------------------ interleaved layout
 *
 * gemm_il over matrices repacked by kv_il_pack against the scalar
 * reference on the original rows, bit for bit: row counts that are not a
 * multiple of the layout's tile (and fewer rows than one tile), decode,
 * batched-decode and prefill column counts, calls over the whole matrix
 * and over ranges that start on a tile boundary (as forward's threads make
 * them), with the software prefetch on and off; nothing written outside
 * the outputs. kv_il_row gives each original row back. */
static void test_gemm_interleaved(void **state) {
    (void)state;
    static const uint32_t tt[] = {KV_F32,  KV_F16,  KV_BF16, KV_Q8_0, KV_Q4_0,  KV_Q4_1,  KV_Q5_0, KV_Q5_1,
                                  KV_Q2_K, KV_Q3_K, KV_Q4_K, KV_Q5_K, KV_Q6_K, KV_TQ1_0, KV_TQ2_0, KV_I2_S};
    static const int64_t n32[] = {32, 288, 800}, n256[] = {256, 768, 2560}, n128[] = {128, 384, 2560},
                         nf[] = {16, 304, 1040};
    static const int nrows_[] = {1, 3, 5, 8, 9, 13, 19}, ncs[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
    enum { MAXR = 19, C = 13 };
    int bad = 0, checked = 0;
    rng r = {777};
    for (size_t k = 0; k < sizeof tt / sizeof tt[0]; k++) {
        const uint32_t t = tt[k];
        const kv_quant_traits *s = kv_quant_get_isa(t, 0);
        assert_null(kv_quant_get_gemm_isa(t, 0)->gemm_il); /* the scalar ISA reads the file layout */
        assert_int_equal(kv_quant_get_gemm_isa(t, 0)->il_rows, 0);
        const int64_t blk = block_of(t);
        const int64_t *ns = blk == 32 ? n32 : blk == 256 ? n256 : blk == 128 ? n128 : nf;
        for (size_t li = 0; li < 3; li++) {
            const int64_t n = ns[li];
            const size_t rb = row_bytes(t, n), xs = row_bytes(s->vec_dot_type, n) + 12;
            assert_true(kv_il_unit(t, n) > 0);
            assert_int_equal(rb % kv_il_unit(t, n), 0);
            uint8_t *w = xmalloc(rb * MAXR), *wi = xmalloc(rb * MAXR), *x = xmalloc(xs * C), *row = xmalloc(rb);
            for (int mode = 0; mode < N_MODES; mode++) {
                make_rows(&r, t, n, mode, 0, w, rb, MAXR);
                make_rows(&r, s->vec_dot_type, n, mode, 1, x, xs, C);
                float ref[C][MAXR];
                for (int c = 0; c < C; c++)
                    for (int rr = 0; rr < MAXR; rr++) s->vec_dot(n, &ref[c][rr], w + rr * rb, x + c * xs);
                for (int isa = 1; isa <= 2; isa++) {
                    if (!isa_new(t, isa)) continue;
                    const kv_quant_gemm *g = kv_quant_get_gemm_isa(t, isa);
                    if (!g->gemm_il) {
                        print_message("%s %s has no interleaved gemm\n", tname(t), isa_name(isa));
                        bad++;
                        continue;
                    }
                    const int L = g->il_rows;
                    assert_true(L >= 1 && L <= 64);
                    for (size_t a = 0; a < sizeof nrows_ / sizeof nrows_[0]; a++) {
                        const int NR = nrows_[a];
                        memset(wi, 0xa5, rb * MAXR);
                        kv_il_pack(t, n, NR, L, w, rb, wi);
                        for (int q = 0; q < NR; q++) {
                            memset(row, 0, rb);
                            kv_il_row(t, n, NR, L, wi, q, row);
                            if (memcmp(row, w + (size_t)q * rb, rb) != 0 && bad++ < 5)
                                print_message("%s kv_il_row %d of %d (R %d) differs\n", tname(t), q, NR, L);
                        }
                        for (size_t b = 0; b < sizeof ncs / sizeof ncs[0]; b++) {
                            const int nc = ncs[b];
                            /* the 1-row layout of a kernel that reads the file's bytes (gemm_il is its
                               gemm, whose every column count test_gemm_packed checked): 1, 4 and 13 */
                            if (L == 1 && g->gemm_il == g->gemm && nc != 1 && nc != 4 && nc != 13) continue;
                            /* ranges [r0, r1): r0 on a tile boundary, r1 the end or whole tiles (with
                               the 1-row layout, where every row is a tile: one row or up to the end) */
                            for (int r0 = 0; r0 < NR; r0 += L)
                                for (int r1 = r0 + L;; r1 = L == 1 ? NR : r1 + L) {
                                    if (r1 > NR) r1 = NR;
                                    const int nr = r1 - r0;
                                    for (int pf = 1; pf >= 0; pf--) {
                                        if (!pf && ((nc > 1 && nc != 8) || r0 > 0)) continue;
                                        kv_quant_set_prefetch(pf);
                                        const int64_t ldy = nr + 2;
                                        float y[C * (MAXR + 2) + 2];
                                        const int ny = (int)(nc * ldy + 2);
                                        for (int i = 0; i < ny; i++) y[i] = -7.0f;
                                        g->gemm_il(n, wi + (size_t)r0 * rb, rb, nr, x, xs, nc, y + 1, ldy);
                                        checked++;
                                        for (int i = 0; i < ny; i++) {
                                            const int64_t q = i - 1;
                                            const int ro = (int)(q % ldy), co = (int)(q / ldy);
                                            const int in = q >= 0 && ro < nr && co < nc;
                                            const float want = in ? ref[co][r0 + ro] : -7.0f;
                                            if (!same(y[i], want) && bad++ < 5)
                                                print_message("%s %s interleaved gemm rows %d..%d of %d x %d cols n=%lld "
                                                              "mode %d pf %d at %d: 0x%08x want 0x%08x\n",
                                                              tname(t), isa_name(isa), r0, r1, NR, nc, (long long)n,
                                                              mode, pf, i, fbits(y[i]), fbits(want));
                                        }
                                    }
                                    kv_quant_set_prefetch(1);
                                    if (r1 == NR) break;
                                }
                        }
                    }
                }
            }
            free(w);
            free(wi);
            free(x);
            free(row);
        }
    }
    print_message("%d interleaved gemm calls checked\n", checked);
    assert_true(checked > 0 || kv_quant_best_isa() == 0);
    assert_int_equal(bad, 0);
    /* what is not interleaved */
    assert_int_equal(kv_il_unit(KV_F16, 17), 0);
    assert_int_equal(kv_il_unit(KV_Q8_0, 48), 0);
    assert_int_equal(kv_il_unit(KV_Q8_K, 256), 0);
    assert_int_equal(kv_il_unit(KV_IQ2_XXS, 256), 0);
    assert_int_equal(kv_il_unit(KV_Q4_K, 0), 0);
}

/* ------------------------------------------------------------ TQ1_0 trit decoding
 *
 * The SIMD kernels decode TQ1_0 without multiplies per trit; here the byte
 * operations they use are emulated on every input against the scalar
 * formula trit k of byte b = ((uint8_t)(b * 3^k) * 3) >> 8, and then every
 * byte value at every position of a block goes through the real kernels. */

static uint8_t avg_u8(uint8_t a, uint8_t b) { return (uint8_t)((a + b + 1) >> 1); }
static uint8_t subs_u8(uint8_t a, uint8_t b) { return (uint8_t)(a > b ? a - b : 0); }

static void test_tq1_0_trick(void **state) {
    (void)state;
    int bad = 0;
    for (int p = 0; p < 256; p++) {
        const int want = (p * 3) >> 8;
        /* q = max(p - 1, 0); t = avg(q, avg(q, 0)): the trit in the top two bits */
        const uint8_t q = subs_u8((uint8_t)p, 1), t = avg_u8(q, avg_u8(q, 0));
        if ((t >> 6) != want || (t & 0xc0) != 64 * want) bad++;
    }
    for (int b = 0; b < 256; b++) {
        /* 9x = ((x << 3) & 0xf8) + x in bytes (3x = x + x + x needs no check):
           the << is a 16-bit shift, whose spill into the next byte the mask
           removes */
        for (int hi = 0; hi < 256; hi += 51) {
            const uint16_t w = (uint16_t)(b | hi << 8);
            const uint16_t s3 = (uint16_t)(w << 3);
            const uint8_t x9 = (uint8_t)(((s3 & 0xff) & 0xf8) + b), y9 = (uint8_t)(((s3 >> 8) & 0xf8) + hi);
            if (x9 != (uint8_t)(b * 9) || y9 != (uint8_t)(hi * 9)) bad++;
        }
        /* per-word multiplier m: even byte from w * m, odd from (w & 0xff00) * m */
        static const int mults[] = {1, 3, 9, 27, 81};
        for (int o = 0; o < 256; o++)
            for (int k = 0; k < 5; k++) {
                const uint16_t w = (uint16_t)(b | o << 8), m = (uint16_t)mults[k];
                const uint16_t lo = (uint16_t)(w * m), hi = (uint16_t)((w & 0xff00) * m);
                if ((lo & 0xff) != (uint8_t)(b * m) || (hi >> 8) != (uint8_t)(o * m) || (hi & 0xff) != 0) bad++;
            }
    }
    assert_int_equal(bad, 0);
}

/* the stored trit of element e of a TQ1_0 block, by the scalar formula */
static int tq1_trit(const kv_block_tq1_0 *b, int e) {
    static const int pow3[5] = {1, 3, 9, 27, 81};
    int byte, k;
    if (e < 160) byte = b->qs[e % 32], k = e / 32;
    else if (e < 240) byte = b->qs[32 + (e - 160) % 16], k = (e - 160) / 16;
    else byte = b->qh[(e - 240) % 4], k = (e - 240) / 4;
    return ((uint8_t)(byte * pow3[k]) * 3) >> 8;
}

/* 256 one-block rows, row v holding byte v + 7j at position j (so every
 * position takes every value), against 256 one-hot activations (element e
 * = 1, scale 1): output (v, e) is exactly trit - 1 of element e of row v,
 * through vec_dot, the decode gemm (one column) and the prefill gemm. */
static void test_tq1_0_all_bytes(void **state) {
    (void)state;
    enum { N = 256 };
    kv_block_tq1_0 *w = xmalloc(sizeof(kv_block_tq1_0) * N);
    kv_block_q8_K *x = xmalloc(sizeof(kv_block_q8_K) * N);
    float *y = xmalloc(sizeof(float) * N * N), *want = xmalloc(sizeof(float) * N * N);
    for (int v = 0; v < N; v++) {
        for (int j = 0; j < 48; j++) w[v].qs[j] = (uint8_t)(v + 7 * j);
        for (int j = 0; j < 4; j++) w[v].qh[j] = (uint8_t)(v + 7 * (48 + j));
        w[v].d = kv_f32_to_f16(1.0f);
    }
    for (int e = 0; e < N; e++) {
        memset(&x[e], 0, sizeof x[e]);
        x[e].d = 1.0f;
        x[e].qs[e] = 1;
        x[e].bsums[e / 16] = 1;
    }
    const kv_quant_traits *s = kv_quant_get_isa(KV_TQ1_0, 0);
    int bad = 0;
    for (int v = 0; v < N; v++)
        for (int e = 0; e < N; e++) {
            want[e * N + v] = (float)(tq1_trit(&w[v], e) - 1);
            float r;
            s->vec_dot(N, &r, &w[v], &x[e]);
            if (fbits(r) != fbits(want[e * N + v])) bad++;
        }
    assert_int_equal(bad, 0);
    for (int isa = 1; isa <= 2; isa++) {
        if (!isa_new(KV_TQ1_0, isa)) continue;
        const kv_quant_traits *q = kv_quant_get_isa(KV_TQ1_0, isa);
        const kv_quant_gemm *g = kv_quant_get_gemm_isa(KV_TQ1_0, isa);
        for (int v = 0; v < N; v++)
            for (int e = 0; e < N; e++) {
                float r;
                q->vec_dot(N, &r, &w[v], &x[e]);
                if (fbits(r) != fbits(want[e * N + v]) && bad++ < 5)
                    print_message("tq1_0 %s vec_dot byte row %d element %d: %g want %g\n", isa_name(isa), v, e, r,
                                  want[e * N + v]);
            }
        for (int e = 0; e < N; e++) g->gemm(N, w, sizeof *w, N, &x[e], sizeof *x, 1, y + e * N, N);
        if (memcmp(y, want, sizeof(float) * N * N) != 0 && bad++ < 5)
            print_message("tq1_0 %s decode gemm differs\n", isa_name(isa));
        memset(y, 0, sizeof(float) * N * N);
        g->gemm(N, w, sizeof *w, N, x, sizeof *x, N, y, N);
        if (memcmp(y, want, sizeof(float) * N * N) != 0 && bad++ < 5)
            print_message("tq1_0 %s prefill gemm differs\n", isa_name(isa));
    }
    free(w);
    free(x);
    free(y);
    free(want);
    assert_int_equal(bad, 0);
}

/* the attention value update: elementwise fma, F32 and F16 values */
static void test_mad(void **state) {
    (void)state;
    int bad = 0;
    rng r = {555};
    enum { N = 300 };
    float x[N], y0[N], ya[N], yb[N];
    kv_f16 h[N];
    for (int rep = 0; rep < 20; rep++) {
        make_floats(&r, x, N, rep & 1);
        make_floats(&r, y0, N, rep & 2);
        for (int i = 0; i < N; i++) h[i] = (kv_f16)rng_u32(&r);
        const float a = rep == 3 ? INFINITY : rep == 5 ? -0.0f : rng_normal(&r);
        for (int64_t n = rep; n <= N; n += 37) {
            for (int t = 0; t < 2; t++) {
                const void *src = t ? (const void *)h : (const void *)x;
                const uint32_t ty = t ? KV_F16 : KV_F32;
                memcpy(ya, y0, sizeof ya);
                kv_quant_get_mad_isa(ty, 0)(n, a, src, ya);
                for (int isa = 1; isa <= 2; isa++) {
                    if (!isa_ok(isa)) continue;
                    memcpy(yb, y0, sizeof yb);
                    kv_quant_get_mad_isa(ty, isa)(n, a, src, yb);
                    for (int i = 0; i < N; i++)
                        if (!same(ya[i], yb[i])) bad++;
                }
            }
        }
    }
    assert_non_null(kv_quant_get_mad(KV_F16));
    assert_null(kv_quant_get_mad(KV_Q8_0));
    assert_int_equal(bad, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dispatch),
        cmocka_unit_test(test_dot_f32),
        cmocka_unit_test(test_dot_f16),
        cmocka_unit_test(test_dot_bf16),
        cmocka_unit_test(test_dot_q8_0),
        cmocka_unit_test(test_dot_q4_0),
        cmocka_unit_test(test_dot_q4_1),
        cmocka_unit_test(test_dot_q5_0),
        cmocka_unit_test(test_dot_q5_1),
        cmocka_unit_test(test_dot_q8_1),
        cmocka_unit_test(test_dot_q2_K),
        cmocka_unit_test(test_dot_q3_K),
        cmocka_unit_test(test_dot_q4_K),
        cmocka_unit_test(test_dot_q5_K),
        cmocka_unit_test(test_dot_q6_K),
        cmocka_unit_test(test_dot_q8_K),
        cmocka_unit_test(test_dot_tq1_0),
        cmocka_unit_test(test_dot_tq2_0),
        cmocka_unit_test(test_dot_i2_s),
        cmocka_unit_test(test_dot_i8_s),
        cmocka_unit_test(test_dot_negative_zero_lanes),
        cmocka_unit_test(test_quantizers),
        cmocka_unit_test(test_to_float_raw),
        cmocka_unit_test(test_half_from_float_sweep),
        cmocka_unit_test(test_gemm_tiled),
        cmocka_unit_test(test_gemm_packed),
        cmocka_unit_test(test_gemm_interleaved),
        cmocka_unit_test(test_mad),
        cmocka_unit_test(test_tq1_0_trick),
        cmocka_unit_test(test_tq1_0_all_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
