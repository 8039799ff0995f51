/* Per-ISA kernel tables. Everything here is const: the running CPU is asked
 * (__builtin_cpu_supports, a few loads from libgcc's cpu model; on aarch64
 * getauxval(AT_HWCAP), a load from the loader's copy of the auxiliary
 * vector) on every lookup, and the answer only selects one of these tables.
 *
 * The scalar column is the reference traits of quant_basic.c,
 * quant_q4_5.c, quant_kquants.c and quant_ternary.c themselves. The SIMD
 * columns take a SIMD kernel where there is one and otherwise forward to
 * the scalar one (the reference functions are static in their files, so a
 * constant table reaches them through one-line forwarders). */
#include <math.h>
#include <stdatomic.h>
#include <stddef.h>

#include "fp16.h"
#include "quant.h"
#include "quant_types.h"
#include "simd.h"

#if KV_ARM_SIMD
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1UL << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#endif

int kv_quant_best_isa(void) {
#if KV_X86_SIMD
    /* Only __builtin_cpu_supports (loads from the runtime's cpu model, filled
       in once by its constructor): no CPUID here, which traps to the
       hypervisor in a VM and costs tens of microseconds. Clang has no
       "f16c" name; every CPU with AVX2 has F16C. */
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
        return KV_ISA_SCALAR;
#if !defined(__clang__)
    if (!__builtin_cpu_supports("f16c")) return KV_ISA_SCALAR;
#endif
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vnni"))
        return KV_ISA_AVX512;
    return KV_ISA_AVX2;
#elif KV_ARM_SIMD
    /* Advanced SIMD is part of every ARMv8-A Linux system, but the kernel says so */
    const unsigned long hw = getauxval(AT_HWCAP);
    if (!(hw & HWCAP_ASIMD)) return KV_ISA_SCALAR;
    return (hw & HWCAP_ASIMDDP) ? KV_ISA_NEON_DOT : KV_ISA_NEON;
#else
    return KV_ISA_SCALAR;
#endif
}

const char *kv_quant_isa_name(int isa) {
#if defined(__aarch64__)
    switch (isa) {
    case KV_ISA_SCALAR: return "scalar";
    case KV_ISA_NEON: return "neon";
    case KV_ISA_NEON_DOT: return "neon-dotprod";
    default: return "?";
    }
#else
    switch (isa) {
    case KV_ISA_SCALAR: return "scalar";
    case KV_ISA_AVX2: return "avx2";
    case KV_ISA_AVX512: return "avx512";
    default: return "?";
    }
#endif
}

static atomic_int g_prefetch = 1;
void kv_quant_set_prefetch(int on) { atomic_store_explicit(&g_prefetch, on != 0, memory_order_relaxed); }
int kv_quant_prefetch_on(void) { return atomic_load_explicit(&g_prefetch, memory_order_relaxed); }

/* y[c * ldy + r] = dot(row r, column c), columns outer */
static inline void gemm_loop(kv_vec_dot_fn dot, int64_t n, const void *w, uint64_t ws, int nr, const void *x,
                             uint64_t xs, int nc, float *y, int64_t ldy) {
    for (int c = 0; c < nc; c++)
        for (int r = 0; r < nr; r++)
            dot(n, &y[(int64_t)c * ldy + r], (const uint8_t *)w + (uint64_t)r * ws, (const uint8_t *)x + (uint64_t)c * xs);
}

/* ---- y[i] = fmaf(a, x[i], y[i]) */
static void mad_f32_scalar(int64_t n, float a, const void *vx, float *y) {
    const float *x = vx;
    for (int64_t i = 0; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}
static void mad_f16_scalar(int64_t n, float a, const void *vx, float *y) {
    const kv_f16 *x = vx;
    for (int64_t i = 0; i < n; i++) y[i] = fmaf(a, kv_f16_to_f32(x[i]), y[i]);
}
#if KV_X86_SIMD
const kv_vec_mad_fn kv_quant_mad_f32[3] = {mad_f32_scalar, kv_avx2_mad_f32, kv_avx2_mad_f32};
const kv_vec_mad_fn kv_quant_mad_f16[3] = {mad_f16_scalar, kv_avx2_mad_f16, kv_avx2_mad_f16};
#elif KV_ARM_SIMD
const kv_vec_mad_fn kv_quant_mad_f32[3] = {mad_f32_scalar, kv_neon_mad_f32, kv_neon_mad_f32};
const kv_vec_mad_fn kv_quant_mad_f16[3] = {mad_f16_scalar, kv_neon_mad_f16, kv_neon_mad_f16};
#else
const kv_vec_mad_fn kv_quant_mad_f32[3] = {mad_f32_scalar, NULL, NULL};
const kv_vec_mad_fn kv_quant_mad_f16[3] = {mad_f16_scalar, NULL, NULL};
#endif

#define UNUSED __attribute__((unused))

/* forwarders to the scalar reference of type T, and its gemm (a loop) */
#define SCALAR(T, ID)                                                                                          \
    static UNUSED void fwd_to_float_##T(const void *s, float *d, int64_t n) { kv_traits_##T.to_float(s, d, n); } \
    static UNUSED void fwd_from_float_##T(const float *s, void *d, int64_t n) {                                \
        kv_traits_##T.from_float(s, d, n);                                                                     \
    }                                                                                                          \
    static UNUSED void fwd_from_float_ref_##T(const float *s, void *d, int64_t n) {                            \
        kv_traits_##T.from_float_ref(s, d, n);                                                                 \
    }                                                                                                          \
    static void gemm_scalar_##T(int64_t n, const void *w, uint64_t ws, int nr, const void *x, uint64_t xs,     \
                                int nc, float *y, int64_t ldy) {                                               \
        gemm_loop(kv_traits_##T.vec_dot, n, w, ws, nr, x, xs, nc, y, ldy);                                     \
    }                                                                                                          \
    static const kv_quant_gemm g0_##T = {ID, KV_ISA_SCALAR, gemm_scalar_##T, 4, 4, 0, NULL};

SCALAR(f32, KV_F32)
SCALAR(f16, KV_F16)
SCALAR(bf16, KV_BF16)
SCALAR(q8_0, KV_Q8_0)
SCALAR(q4_0, KV_Q4_0)
SCALAR(q4_1, KV_Q4_1)
SCALAR(q5_0, KV_Q5_0)
SCALAR(q5_1, KV_Q5_1)
SCALAR(q8_1, KV_Q8_1)
SCALAR(q2_K, KV_Q2_K)
SCALAR(q3_K, KV_Q3_K)
SCALAR(q4_K, KV_Q4_K)
SCALAR(q5_K, KV_Q5_K)
SCALAR(q6_K, KV_Q6_K)
SCALAR(q8_K, KV_Q8_K)
SCALAR(tq1_0, KV_TQ1_0)
SCALAR(tq2_0, KV_TQ2_0)
SCALAR(i2_s, KV_I2_S)
SCALAR(i8_s, KV_I8_S)

#if KV_X86_SIMD

/* TRAITS(isa, T, id, vec_dot_type, to_float, from_float, from_float_ref, vec_dot) */
#define TRAITS(P, T, ID, VT, TO, FROM, REF, DOT) \
    static const kv_quant_traits P##_##T = {     \
        .type = ID, .to_float = TO, .from_float = FROM, .from_float_ref = REF, .vec_dot_type = VT, .vec_dot = DOT};
#define GEMM(P, T, ID, ISA, FN, NR, NC) static const kv_quant_gemm g_##P##_##T = {ID, ISA, FN, NR, NC, 0, NULL};
/* and over the interleaved layout of ILR rows */
#define GEMMI(P, T, ID, ISA, FN, NR, NC, ILR, ILFN) \
    static const kv_quant_gemm g_##P##_##T = {ID, ISA, FN, NR, NC, ILR, ILFN};

/* weight types whose quantizers stay scalar */
#define W_AVX2(T, ID, VT, NR, NC)                                                                        \
    TRAITS(avx2, T, ID, VT, fwd_to_float_##T, fwd_from_float_##T, fwd_from_float_ref_##T, kv_avx2_vec_dot_##T) \
    GEMMI(avx2, T, ID, KV_ISA_AVX2, kv_avx2_gemm_##T, NR, NC, KV_AVX2_IL_ROWS, kv_avx2_gemm_il_##T)

/* ---- AVX2 */
TRAITS(avx2, f32, KV_F32, KV_F32, fwd_to_float_f32, fwd_from_float_f32, fwd_from_float_ref_f32, kv_avx2_vec_dot_f32)
TRAITS(avx2, f16, KV_F16, KV_F16, kv_avx2_to_float_f16, kv_avx2_from_float_f16, kv_avx2_from_float_f16,
       kv_avx2_vec_dot_f16)
TRAITS(avx2, bf16, KV_BF16, KV_BF16, kv_avx2_to_float_bf16, kv_avx2_from_float_bf16, kv_avx2_from_float_bf16,
       kv_avx2_vec_dot_bf16)
TRAITS(avx2, q8_0, KV_Q8_0, KV_Q8_0, kv_avx2_to_float_q8_0, kv_avx2_from_float_q8_0, fwd_from_float_ref_q8_0,
       kv_avx2_vec_dot_q8_0)
TRAITS(avx2, q8_1, KV_Q8_1, KV_Q8_1, fwd_to_float_q8_1, kv_avx2_from_float_q8_1, fwd_from_float_ref_q8_1,
       kv_avx2_vec_dot_q8_1)
TRAITS(avx2, q8_K, KV_Q8_K, KV_Q8_K, fwd_to_float_q8_K, kv_avx2_from_float_q8_K, kv_avx2_from_float_q8_K,
       kv_avx2_vec_dot_q8_K)
TRAITS(avx2, i8_s, KV_I8_S, KV_I8_S, fwd_to_float_i8_s, kv_avx2_from_float_i8_s, kv_avx2_from_float_i8_s,
       kv_avx2_vec_dot_i8_s)
GEMMI(avx2, f32, KV_F32, KV_ISA_AVX2, kv_avx2_gemm_f32, KV_AVX2_NR_FLOAT, KV_AVX2_NC_FLOAT, KV_AVX2_IL_ROWS,
      kv_avx2_gemm_il_f32)
GEMMI(avx2, f16, KV_F16, KV_ISA_AVX2, kv_avx2_gemm_f16, KV_AVX2_NR_FLOAT, KV_AVX2_NC_FLOAT, KV_AVX2_IL_ROWS,
      kv_avx2_gemm_il_f16)
GEMMI(avx2, bf16, KV_BF16, KV_ISA_AVX2, kv_avx2_gemm_bf16, KV_AVX2_NR_FLOAT, KV_AVX2_NC_FLOAT, KV_AVX2_IL_ROWS,
      kv_avx2_gemm_il_bf16)
GEMMI(avx2, q8_0, KV_Q8_0, KV_ISA_AVX2, kv_avx2_gemm_q8_0, KV_AVX2_NR_B32, KV_AVX2_NC_B32, KV_AVX2_IL_ROWS,
      kv_avx2_gemm_il_q8_0)
GEMM(avx2, q8_1, KV_Q8_1, KV_ISA_AVX2, kv_avx2_gemm_q8_1, KV_AVX2_NR_B32, KV_AVX2_NC_B32)
GEMM(avx2, q8_K, KV_Q8_K, KV_ISA_AVX2, kv_avx2_gemm_q8_K, KV_AVX2_NR_K, KV_AVX2_NC_K)
GEMM(avx2, i8_s, KV_I8_S, KV_ISA_AVX2, kv_avx2_gemm_i8_s, KV_AVX2_NR_I8S, KV_AVX2_NC_I8S)
W_AVX2(q4_0, KV_Q4_0, KV_Q8_0, KV_AVX2_NR_B32, KV_AVX2_NC_B32)
W_AVX2(q4_1, KV_Q4_1, KV_Q8_1, KV_AVX2_NR_B32, KV_AVX2_NC_B32)
W_AVX2(q5_0, KV_Q5_0, KV_Q8_0, KV_AVX2_NR_B32, KV_AVX2_NC_B32)
W_AVX2(q5_1, KV_Q5_1, KV_Q8_1, KV_AVX2_NR_B32, KV_AVX2_NC_B32)
W_AVX2(q2_K, KV_Q2_K, KV_Q8_K, KV_AVX2_NR_K, KV_AVX2_NC_K)
W_AVX2(q3_K, KV_Q3_K, KV_Q8_K, KV_AVX2_NR_K, KV_AVX2_NC_K)
W_AVX2(q4_K, KV_Q4_K, KV_Q8_K, KV_AVX2_NR_K, KV_AVX2_NC_K)
W_AVX2(q5_K, KV_Q5_K, KV_Q8_K, KV_AVX2_NR_K, KV_AVX2_NC_K)
W_AVX2(q6_K, KV_Q6_K, KV_Q8_K, KV_AVX2_NR_K, KV_AVX2_NC_K)
W_AVX2(tq1_0, KV_TQ1_0, KV_Q8_K, KV_AVX2_NR_K, KV_AVX2_NC_K)
W_AVX2(tq2_0, KV_TQ2_0, KV_Q8_K, KV_AVX2_NR_K, KV_AVX2_NC_K)
W_AVX2(i2_s, KV_I2_S, KV_I8_S, KV_AVX2_NR_I2S, KV_AVX2_NC_I2S)

/* ---- AVX-512: its own kernels where they pay, the AVX2 ones elsewhere */
#define W_AVX512(T, ID, VT, NR, NC)                                                                      \
    TRAITS(avx512, T, ID, VT, fwd_to_float_##T, fwd_from_float_##T, fwd_from_float_ref_##T,               \
           kv_avx512_vec_dot_##T)                                                                        \
    GEMMI(avx512, T, ID, KV_ISA_AVX512, kv_avx512_gemm_##T, NR, NC, KV_AVX512_IL_ROWS, kv_avx512_gemm_il_##T)

TRAITS(avx512, f32, KV_F32, KV_F32, fwd_to_float_f32, fwd_from_float_f32, fwd_from_float_ref_f32,
       kv_avx512_vec_dot_f32)
TRAITS(avx512, f16, KV_F16, KV_F16, kv_avx512_to_float_f16, kv_avx512_from_float_f16, kv_avx512_from_float_f16,
       kv_avx512_vec_dot_f16)
TRAITS(avx512, bf16, KV_BF16, KV_BF16, kv_avx2_to_float_bf16, kv_avx2_from_float_bf16, kv_avx2_from_float_bf16,
       kv_avx512_vec_dot_bf16)
TRAITS(avx512, q8_0, KV_Q8_0, KV_Q8_0, kv_avx2_to_float_q8_0, kv_avx2_from_float_q8_0, fwd_from_float_ref_q8_0,
       kv_avx512_vec_dot_q8_0)
GEMMI(avx512, f32, KV_F32, KV_ISA_AVX512, kv_avx512_gemm_f32, KV_AVX512_NR_FPK, KV_AVX512_NC_FPK,
      KV_AVX512_IL_ROWS_FLOAT, kv_avx512_gemm_il_f32)
GEMMI(avx512, f16, KV_F16, KV_ISA_AVX512, kv_avx512_gemm_f16, KV_AVX512_NR_FPK, KV_AVX512_NC_FPK,
      KV_AVX512_IL_ROWS_FLOAT, kv_avx512_gemm_il_f16)
GEMMI(avx512, bf16, KV_BF16, KV_ISA_AVX512, kv_avx512_gemm_bf16, KV_AVX512_NR_FPK, KV_AVX512_NC_FPK,
      KV_AVX512_IL_ROWS_FLOAT, kv_avx512_gemm_il_bf16)
GEMMI(avx512, q8_0, KV_Q8_0, KV_ISA_AVX512, kv_avx512_gemm_q8_0, KV_AVX512_NR_PK, KV_AVX512_NC_PK, KV_AVX512_IL_ROWS,
      kv_avx512_gemm_il_q8_0)
W_AVX512(q4_0, KV_Q4_0, KV_Q8_0, KV_AVX512_NR_PK, KV_AVX512_NC_PK)
W_AVX512(q5_0, KV_Q5_0, KV_Q8_0, KV_AVX512_NR_PK, KV_AVX512_NC_PK)
W_AVX512(q4_K, KV_Q4_K, KV_Q8_K, KV_AVX512_NR_K, KV_AVX512_NC_K)
W_AVX512(q5_K, KV_Q5_K, KV_Q8_K, KV_AVX512_NR_K, KV_AVX512_NC_K)
W_AVX512(q6_K, KV_Q6_K, KV_Q8_K, KV_AVX512_NR_K, KV_AVX512_NC_K)
W_AVX512(tq1_0, KV_TQ1_0, KV_Q8_K, KV_AVX512_NR_K, KV_AVX512_NC_K)
W_AVX512(tq2_0, KV_TQ2_0, KV_Q8_K, KV_AVX512_NR_K, KV_AVX512_NC_K)
W_AVX512(i2_s, KV_I2_S, KV_I8_S, KV_AVX512_NR_I2S, KV_AVX512_NC_I2S)

#define T3(T) {&kv_traits_##T, &avx2_##T, &avx512_##T}
#define G3(T) {&g0_##T, &g_avx2_##T, &g_avx512_##T}
#define T3_2(T) {&kv_traits_##T, &avx2_##T, &avx2_##T} /* AVX-512 runs the AVX2 kernels */
#define G3_2(T) {&g0_##T, &g_avx2_##T, &g_avx2_##T}

#elif KV_ARM_SIMD

/* TRAITS(isa, T, id, vec_dot_type, to_float, from_float, from_float_ref, vec_dot) */
#define TRAITS(P, T, ID, VT, TO, FROM, REF, DOT) \
    static const kv_quant_traits P##_##T = {     \
        .type = ID, .to_float = TO, .from_float = FROM, .from_float_ref = REF, .vec_dot_type = VT, .vec_dot = DOT};
/* The NEON gemms read the file's layout. Their interleaved layout is the one
 * of 1 row, the same bytes (a tile of one row holds its units in order), so
 * gemm_il is gemm and the model does not repack (it only does for 2 rows or
 * more). */
#define GEMM(P, T, ID, ISA, FN) static const kv_quant_gemm g_##P##_##T = {ID, ISA, FN, KV_NEON_NR, KV_NEON_NC, 1, FN};
#define GEMM_SCALAR_IL(T, ID) static const kv_quant_gemm g1_##T = {ID, KV_ISA_SCALAR, gemm_scalar_##T, 4, 4, 1, gemm_scalar_##T};
/* a type whose conversions stay scalar, with NEON dots at both levels */
#define W_NEON(T, ID, VT)                                                                                       \
    TRAITS(neon, T, ID, VT, fwd_to_float_##T, fwd_from_float_##T, fwd_from_float_ref_##T, kv_neon_vec_dot_##T)   \
    TRAITS(neondp, T, ID, VT, fwd_to_float_##T, fwd_from_float_##T, fwd_from_float_ref_##T,                      \
           kv_neondp_vec_dot_##T)                                                                               \
    GEMM(neon, T, ID, KV_ISA_NEON, kv_neon_gemm_##T)                                                           \
    GEMM(neondp, T, ID, KV_ISA_NEON_DOT, kv_neondp_gemm_##T)

/* ---- NEON (the float types have one version, which the dotprod level runs too) */
TRAITS(neon, f32, KV_F32, KV_F32, fwd_to_float_f32, fwd_from_float_f32, fwd_from_float_ref_f32, kv_neon_vec_dot_f32)
TRAITS(neon, f16, KV_F16, KV_F16, kv_neon_to_float_f16, kv_neon_from_float_f16, kv_neon_from_float_f16,
       kv_neon_vec_dot_f16)
TRAITS(neon, bf16, KV_BF16, KV_BF16, kv_neon_to_float_bf16, kv_neon_from_float_bf16, kv_neon_from_float_bf16,
       kv_neon_vec_dot_bf16)
GEMM(neon, f32, KV_F32, KV_ISA_NEON, kv_neon_gemm_f32)
GEMM(neon, f16, KV_F16, KV_ISA_NEON, kv_neon_gemm_f16)
GEMM(neon, bf16, KV_BF16, KV_ISA_NEON, kv_neon_gemm_bf16)
/* Q8_0 and Q8_K: NEON quantizers (activations), dots at both levels */
TRAITS(neon, q8_0, KV_Q8_0, KV_Q8_0, kv_neon_to_float_q8_0, kv_neon_from_float_q8_0, fwd_from_float_ref_q8_0,
       kv_neon_vec_dot_q8_0)
TRAITS(neondp, q8_0, KV_Q8_0, KV_Q8_0, kv_neon_to_float_q8_0, kv_neon_from_float_q8_0, fwd_from_float_ref_q8_0,
       kv_neondp_vec_dot_q8_0)
GEMM(neon, q8_0, KV_Q8_0, KV_ISA_NEON, kv_neon_gemm_q8_0)
GEMM(neondp, q8_0, KV_Q8_0, KV_ISA_NEON_DOT, kv_neondp_gemm_q8_0)
TRAITS(neon, q8_K, KV_Q8_K, KV_Q8_K, fwd_to_float_q8_K, kv_neon_from_float_q8_K, kv_neon_from_float_q8_K,
       kv_neon_vec_dot_q8_K)
TRAITS(neondp, q8_K, KV_Q8_K, KV_Q8_K, fwd_to_float_q8_K, kv_neon_from_float_q8_K, kv_neon_from_float_q8_K,
       kv_neondp_vec_dot_q8_K)
GEMM(neon, q8_K, KV_Q8_K, KV_ISA_NEON, kv_neon_gemm_q8_K)
GEMM(neondp, q8_K, KV_Q8_K, KV_ISA_NEON_DOT, kv_neondp_gemm_q8_K)
W_NEON(q4_0, KV_Q4_0, KV_Q8_0)
W_NEON(q4_K, KV_Q4_K, KV_Q8_K)
W_NEON(q6_K, KV_Q6_K, KV_Q8_K)
W_NEON(tq2_0, KV_TQ2_0, KV_Q8_K)

#define T3(T) {&kv_traits_##T, &neon_##T, &neondp_##T}
#define G3(T) {&g0_##T, &g_neon_##T, &g_neondp_##T}
#define T3_1(T) {&kv_traits_##T, &neon_##T, &neon_##T} /* the dotprod level runs the NEON kernels */
#define G3_1(T) {&g0_##T, &g_neon_##T, &g_neon_##T}
/* no NEON kernels yet: every level runs the scalar reference (with the 1-row layout) */
#define T3_0(T) {&kv_traits_##T, &kv_traits_##T, &kv_traits_##T}
#define G3_0(T) {&g0_##T, &g1_##T, &g1_##T}
GEMM_SCALAR_IL(q4_1, KV_Q4_1)
GEMM_SCALAR_IL(q5_0, KV_Q5_0)
GEMM_SCALAR_IL(q5_1, KV_Q5_1)
GEMM_SCALAR_IL(q8_1, KV_Q8_1)
GEMM_SCALAR_IL(q2_K, KV_Q2_K)
GEMM_SCALAR_IL(q3_K, KV_Q3_K)
GEMM_SCALAR_IL(q5_K, KV_Q5_K)
GEMM_SCALAR_IL(tq1_0, KV_TQ1_0)
GEMM_SCALAR_IL(i2_s, KV_I2_S)
GEMM_SCALAR_IL(i8_s, KV_I8_S)

#else /* no SIMD on this architecture: the scalar column only */

#define T3(T) {&kv_traits_##T, NULL, NULL}
#define T3_2(T) T3(T)
#define G3(T) {&g0_##T, NULL, NULL}
#define G3_2(T) G3(T)

#endif

/* The registry of types with compute support, one row per type. */
#if KV_ARM_SIMD
const kv_quant_entry kv_quant_entries[] = {
    {KV_F32, T3_1(f32), G3_1(f32)},       {KV_F16, T3_1(f16), G3_1(f16)},
    {KV_BF16, T3_1(bf16), G3_1(bf16)},    {KV_Q8_0, T3(q8_0), G3(q8_0)},
    {KV_Q4_0, T3(q4_0), G3(q4_0)},        {KV_Q4_1, T3_0(q4_1), G3_0(q4_1)},
    {KV_Q5_0, T3_0(q5_0), G3_0(q5_0)},    {KV_Q5_1, T3_0(q5_1), G3_0(q5_1)},
    {KV_Q8_1, T3_0(q8_1), G3_0(q8_1)},    {KV_Q2_K, T3_0(q2_K), G3_0(q2_K)},
    {KV_Q3_K, T3_0(q3_K), G3_0(q3_K)},    {KV_Q4_K, T3(q4_K), G3(q4_K)},
    {KV_Q5_K, T3_0(q5_K), G3_0(q5_K)},    {KV_Q6_K, T3(q6_K), G3(q6_K)},
    {KV_Q8_K, T3(q8_K), G3(q8_K)},        {KV_TQ1_0, T3_0(tq1_0), G3_0(tq1_0)},
    {KV_TQ2_0, T3(tq2_0), G3(tq2_0)},     {KV_I2_S, T3_0(i2_s), G3_0(i2_s)},
    {KV_I8_S, T3_0(i8_s), G3_0(i8_s)},
};
#else
const kv_quant_entry kv_quant_entries[] = {
    {KV_F32, T3(f32), G3(f32)},          {KV_F16, T3(f16), G3(f16)},
    {KV_BF16, T3(bf16), G3(bf16)},       {KV_Q8_0, T3(q8_0), G3(q8_0)},
    {KV_Q4_0, T3(q4_0), G3(q4_0)},       {KV_Q4_1, T3_2(q4_1), G3_2(q4_1)},
    {KV_Q5_0, T3(q5_0), G3(q5_0)},       {KV_Q5_1, T3_2(q5_1), G3_2(q5_1)},
    {KV_Q8_1, T3_2(q8_1), G3_2(q8_1)},   {KV_Q2_K, T3_2(q2_K), G3_2(q2_K)},
    {KV_Q3_K, T3_2(q3_K), G3_2(q3_K)},   {KV_Q4_K, T3(q4_K), G3(q4_K)},
    {KV_Q5_K, T3(q5_K), G3(q5_K)},       {KV_Q6_K, T3(q6_K), G3(q6_K)},
    {KV_Q8_K, T3_2(q8_K), G3_2(q8_K)},   {KV_TQ1_0, T3(tq1_0), G3(tq1_0)},
    {KV_TQ2_0, T3(tq2_0), G3(tq2_0)},    {KV_I2_S, T3(i2_s), G3(i2_s)},
    {KV_I8_S, T3_2(i8_s), G3_2(i8_s)},
};
#endif
const size_t kv_quant_n_entries = sizeof kv_quant_entries / sizeof kv_quant_entries[0];
