/* K-quants: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (weights) and Q8_K (their
 * activation type), all on 256-element super-blocks, byte layouts as ggml's.
 *
 * Quantizers: from_float_ref reproduces ggml's reference quantizers, the ones
 * llama-quantize runs when it has no importance matrix, with their scale
 * searches (make_qx_quants, make_q3_quants, make_qkx2_quants) operation for
 * operation, so the bytes come out the same. The CPU backend quantizes these
 * weight types with the same code, and Q8_K activations with the reference
 * too on x86, so from_float == from_float_ref for every type here.
 *
 * Canonical reduction order of every vec_dot against Q8_K (super-block after
 * super-block, in increasing order):
 *   8 lanes; element i (0..255) of a super-block belongs to lane (i % 32) / 4.
 *   isum[l] is the exact int32 sum over the lane's 32 elements of
 *   sc[i / 16] * w[i] * q[i] (w: the weight's signed integer value, sc: its
 *   integer sub-block scale, q: Q8_K's int8); see kv_qk_lane_sums. With
 *   d = y.d * (float)x.d and nd = -(y.d * (float)x.dmin) (one float product):
 *     Q3_K, Q6_K:  acc[l] = fmaf(d, (float)isum[l], acc[l]);
 *                  result kv_dot_reduce8(acc).
 *     Q2_K:        first acc[l] = fmaf(nd, (float)pm[l], acc[l]) with
 *                  pm[l] = m[2l] * bsums[2l] + m[2l+1] * bsums[2l+1] (exact
 *                  int32, m the 4-bit mins), then acc[l] = fmaf(d, (float)isum[l],
 *                  acc[l]); result kv_dot_reduce8(acc).
 *     Q4_K:        acc[l] as for Q6_K, plus 4 min lanes
 *                  accm[k] = fmaf(nd, (float)pm[k], accm[k]) with
 *                  pm[k] = m[2k] * S[2k] + m[2k+1] * S[2k+1], S[j] =
 *                  bsums[2j] + bsums[2j+1] (the Q8_K sum over sub-block j);
 *                  result kv_dot_reduce8(acc) + ((accm[0] + accm[2]) +
 *                  (accm[1] + accm[3])).
 *     Q5_K:        acc[l] as for Q6_K, plus one scalar
 *                  accm = fmaf(nd, (float)summ, accm) with summ = sum_j
 *                  m[j] * S[j]; result kv_dot_reduce8(acc) + accm.
 * These are the splits of llama.cpp's AVX2 kernels (compiled with FMA), so on
 * such builds the results agree with llama.cpp bit for bit. Every int32 stays
 * far from overflow (the largest, Q6_K's isum, is below 2^24), so any SIMD
 * code that produces the same integers per super-block and then does the
 * same float steps gives the same bits. */
#include <math.h>
#include <string.h>

#include "fp16.h"
#include "quant.h"
#include "quant_types.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define GROUP_MAX_EPS 1e-15f

static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int imax(int a, int b) { return a > b ? a : b; }

void kv_qk_lane_sums(const int8_t *w, const int8_t *y, const int32_t sc16[16], int32_t isum[8]) {
    int32_t acc[8] = {0};
    for (int c = 0; c < 8; c++, w += 32, y += 32) {
        int32_t p[8];
        for (int l = 0; l < 8; l++) {
            int32_t t = 0;
            for (int k = 0; k < 4; k++) t += (int32_t)w[4 * l + k] * (int32_t)y[4 * l + k];
            p[l] = t;
        }
        /* lanes 0..3 are in sub-block 2c, lanes 4..7 in 2c + 1 */
        for (int l = 0; l < 4; l++) acc[l] += sc16[2 * c] * p[l];
        for (int l = 4; l < 8; l++) acc[l] += sc16[2 * c + 1] * p[l];
    }
    for (int l = 0; l < 8; l++) isum[l] = acc[l];
}

/* ============================================================ scale search
 * These follow ggml's reference helpers step by step: the same float
 * operations in the same order, so they pick the same scales and levels. */

/* Symmetric levels in [-nmax, nmax-1] (stored +nmax), weights x^2; tries 19
 * multipliers around -nmax/max and keeps the best weighted least-squares
 * scale (ggml's make_qx_quants with rmse_type 1 and no importance). */
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L) {
    float max = 0.0f, amax = 0.0f;
    for (int i = 0; i < n; i++) {
        const float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.0f;
    }
    float iscale = (float)-nmax / max;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
        const int l = imax(-nmax, imin(nmax - 1, kv_nearest_int(iscale * x[i])));
        L[i] = (int8_t)(l + nmax);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)l * (float)l;
    }
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -((float)nmax + 0.1f * (float)is) / max;
        sumlx = suml2 = 0.0f;
        for (int i = 0; i < n; i++) {
            const int l = imax(-nmax, imin(nmax - 1, kv_nearest_int(iscale * x[i])));
            const float w = x[i] * x[i];
            sumlx += w * x[i] * (float)l;
            suml2 += w * (float)l * (float)l;
        }
        if (suml2 > 0.0f && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++)
                L[i] = (int8_t)(nmax + imax(-nmax, imin(nmax - 1, kv_nearest_int(iscale * x[i]))));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Q3_K's symmetric search: start from -nmax/max, then up to 5 passes of
 * single-level moves that improve the weighted fit (ggml's make_q3_quants
 * with do_rmse). Levels stored +nmax. */
static float make_q3_quants(int n, int nmax, const float *x, int8_t *L) {
    float max = 0.0f, amax = 0.0f;
    for (int i = 0; i < n; i++) {
        const float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.0f;
    }
    const float iscale = (float)-nmax / max;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
        const int l = imax(-nmax, imin(nmax - 1, kv_nearest_int(iscale * x[i])));
        L[i] = (int8_t)l;
        const float w = x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)l * (float)l;
    }
    for (int itry = 0; itry < 5; itry++) {
        int n_changed = 0;
        for (int i = 0; i < n; i++) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * (float)L[i];
            if (slx > 0.0f) {
                float sl2 = suml2 - w * (float)L[i] * (float)L[i];
                const int new_l = imax(-nmax, imin(nmax - 1, kv_nearest_int(x[i] * sl2 / slx)));
                if (new_l != L[i]) {
                    slx += w * x[i] * (float)new_l;
                    sl2 += w * (float)new_l * (float)new_l;
                    if (sl2 > 0.0f && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed++;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = (int8_t)(L[i] + nmax);
    return sumlx / suml2;
}

/* Asymmetric levels 0..nmax with x ~ scale * L - the_min: a weighted
 * least-squares fit of scale and min over nstep+1 candidate multipliers
 * (ggml's make_qkx2_quants). */
static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                              float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep,
                              bool use_mad) {
    float min = x[0], max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        const float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0.0f) min = 0.0f;
    if (max == min) {
        for (int i = 0; i < n; i++) L[i] = 0;
        *the_min = -min;
        return 0.0f;
    }
    float iscale = (float)nmax / (max - min);
    float scale = 1 / iscale;
    float best_mad = 0.0f;
    for (int i = 0; i < n; i++) {
        const int l = kv_nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)imax(0, imin(nmax, l));
        float diff = scale * (float)L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best_mad += weights[i] * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * (float)is + (float)nmax) / (max - min);
        float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
        for (int i = 0; i < n; i++) {
            const int l = imax(0, imin(nmax, kv_nearest_int(iscale * (x[i] - min))));
            Laux[i] = (uint8_t)l;
            const float w = weights[i];
            sum_l += w * (float)l;
            sum_l2 += w * (float)l * (float)l;
            sum_xl += w * (float)l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0.0f) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0.0f) {
                this_min = 0.0f;
                this_scale = sum_xl / sum_l2;
            }
            float mad = 0.0f;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * (float)Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                mad += weights[i] * diff;
            }
            if (mad < best_mad) {
                memcpy(L, Laux, (size_t)n);
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* The 12-byte 6-bit scale/min packing of Q4_K and Q5_K: sub-blocks 0..3 keep
 * scale and min in the low 6 bits of bytes j and j+4; sub-blocks 4..7 keep
 * their low 4 bits in the nibbles of byte j+4 and their top 2 bits in the
 * top bits of bytes j-4 (scale) and j (min). */
static inline void get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}

static inline void put_scale_min_k4(int j, uint8_t *q, uint8_t ls, uint8_t lm) {
    if (j < 4) {
        q[j] = ls;
        q[j + 4] = lm;
    } else {
        q[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
        q[j - 4] |= (uint8_t)((ls >> 4) << 6);
        q[j - 0] |= (uint8_t)((lm >> 4) << 6);
    }
}

/* ================================================================ Q8_K */
/* x = d * q with d = max / -127 (max: the signed value of largest magnitude),
 * a float scale; bsums[j] = sum of qs[16j .. 16j+15]. */

static void dequantize_q8_K(const void *src, float *dst, int64_t n) {
    const kv_block_q8_K *b = src;
    for (int64_t i = 0; i < n / KV_QK_K; i++)
        for (int j = 0; j < KV_QK_K; j++) *dst++ = b[i].d * (float)b[i].qs[j];
}

static void quantize_q8_K(const float *src, void *dst, int64_t n) {
    kv_block_q8_K *b = dst;
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        const float *x = src + i * KV_QK_K;
        float max = 0.0f, amax = 0.0f;
        for (int j = 0; j < KV_QK_K; j++) {
            const float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (amax == 0.0f) {
            /* ggml leaves bsums as they were here; zero is what they sum to */
            memset(&b[i], 0, sizeof b[i]);
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < KV_QK_K; j++) b[i].qs[j] = (int8_t)imin(127, kv_nearest_int(iscale * x[j]));
        for (int j = 0; j < KV_QK_K / 16; j++) {
            int sum = 0;
            for (int k = 0; k < 16; k++) sum += b[i].qs[16 * j + k];
            b[i].bsums[j] = (int16_t)sum;
        }
        b[i].d = 1 / iscale;
    }
}

/* Not in llama.cpp (Q8_K has no vec_dot there); provided so that every
 * registered type can be dotted with its vec_dot_type. */
static void vec_dot_q8_K_q8_K(int64_t n, float *s, const void *vx, const void *vy) {
    static const int32_t ones[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    const kv_block_q8_K *x = vx, *y = vy;
    float acc[8] = {0};
    int32_t isum[8];
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        kv_qk_lane_sums(x[i].qs, y[i].qs, ones, isum);
        const float d = x[i].d * y[i].d;
        for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float)isum[l], acc[l]);
    }
    *s = kv_dot_reduce8(acc);
}

/* ================================================================ Q2_K */
/* 16 sub-blocks of 16: x = d * sc * q - dmin * m, q in 0..3, sc and m 4-bit
 * (low and high nibble of scales[j]). Element 128h + 32j + l (h = 0..1,
 * j = 0..3, l = 0..31) is the 2-bit field at shift 2j of qs[32h + l]. */

static void unpack_q2_K(const kv_block_q2_K *b, int8_t w[KV_QK_K]) {
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) w[128 * h + 32 * j + l] = (int8_t)((b->qs[32 * h + l] >> (2 * j)) & 3);
}

static void dequantize_q2_K(const void *src, float *dst, int64_t n) {
    const kv_block_q2_K *b = src;
    int8_t w[KV_QK_K];
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        const float d = kv_f16_to_f32(b[i].d);
        const float dmin = kv_f16_to_f32(b[i].dmin);
        unpack_q2_K(&b[i], w);
        for (int j = 0; j < 16; j++) {
            const float dl = d * (float)(b[i].scales[j] & 0xF);
            const float ml = dmin * (float)(b[i].scales[j] >> 4);
            for (int k = 0; k < 16; k++) *dst++ = dl * (float)w[16 * j + k] - ml;
        }
    }
}

static void quantize_q2_K_ref(const float *src, void *dst, int64_t n) {
    kv_block_q2_K *y = dst;
    uint8_t L[KV_QK_K], Laux[16];
    float weights[16], mins[16], scales[16];
    const float q4scale = 15.f;
    const float *x = src;
    for (int64_t i = 0; i < n / KV_QK_K; i++, x += KV_QK_K) {
        float max_scale = 0.0f, max_min = 0.0f;
        for (int j = 0; j < 16; j++) {
            for (int l = 0; l < 16; l++) weights[l] = fabsf(x[16 * j + l]);
            scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        if (max_scale > 0.0f) {
            const float iscale = q4scale / max_scale;
            for (int j = 0; j < 16; j++) y[i].scales[j] = (uint8_t)kv_nearest_int(iscale * scales[j]);
            y[i].d = kv_f32_to_f16(max_scale / q4scale);
        } else {
            for (int j = 0; j < 16; j++) y[i].scales[j] = 0;
            y[i].d = kv_f32_to_f16(0.0f);
        }
        if (max_min > 0.0f) {
            const float iscale = q4scale / max_min;
            for (int j = 0; j < 16; j++) y[i].scales[j] |= (uint8_t)((unsigned)kv_nearest_int(iscale * mins[j]) << 4);
            y[i].dmin = kv_f32_to_f16(max_min / q4scale);
        } else {
            y[i].dmin = kv_f32_to_f16(0.0f);
        }
        for (int j = 0; j < 16; j++) {
            const float d = kv_f16_to_f32(y[i].d) * (float)(y[i].scales[j] & 0xF);
            if (d == 0.0f) continue;
            const float dm = kv_f16_to_f32(y[i].dmin) * (float)(y[i].scales[j] >> 4);
            for (int k = 0; k < 16; k++) L[16 * j + k] = (uint8_t)imax(0, imin(3, kv_nearest_int((x[16 * j + k] + dm) / d)));
        }
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const uint8_t *q = L + 128 * h + l;
                y[i].qs[32 * h + l] = (uint8_t)(q[0] | q[32] << 2 | q[64] << 4 | q[96] << 6);
            }
    }
}

static void vec_dot_q2_K_q8_K(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_block_q2_K *x = vx;
    const kv_block_q8_K *y = vy;
    float acc[8] = {0};
    int8_t w[KV_QK_K];
    int32_t sc[16], isum[8];
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        unpack_q2_K(&x[i], w);
        for (int j = 0; j < 16; j++) sc[j] = x[i].scales[j] & 0xF;
        kv_qk_lane_sums(w, y[i].qs, sc, isum);
        const float d = y[i].d * kv_f16_to_f32(x[i].d);
        const float nd = -(y[i].d * kv_f16_to_f32(x[i].dmin));
        for (int l = 0; l < 8; l++) {
            const int32_t pm = (int32_t)(x[i].scales[2 * l] >> 4) * y[i].bsums[2 * l] +
                               (int32_t)(x[i].scales[2 * l + 1] >> 4) * y[i].bsums[2 * l + 1];
            acc[l] = fmaf(nd, (float)pm, acc[l]);
            acc[l] = fmaf(d, (float)isum[l], acc[l]);
        }
    }
    *s = kv_dot_reduce8(acc);
}

/* ================================================================ Q3_K */
/* 16 sub-blocks of 16: x = d * (sc - 32) * q, q in -4..3: the low 2 bits as
 * in Q2_K, and q gets -4 unless bit 4h + j of hmask[l] is set for element
 * 128h + 32j + l. The 6-bit sc of sub-block j: low 4 bits in the low (j < 8)
 * or high (j >= 8) nibble of scales[j % 8], top 2 bits at shift 2(j / 4) of
 * scales[8 + j % 4]. */

static void unpack_q3_K(const kv_block_q3_K *b, int8_t w[KV_QK_K], int32_t sc[16]) {
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 4; j++) {
            const uint8_t m = (uint8_t)(1u << (4 * h + j));
            for (int l = 0; l < 32; l++) {
                const int q = (b->qs[32 * h + l] >> (2 * j)) & 3;
                w[128 * h + 32 * j + l] = (int8_t)(q - ((b->hmask[l] & m) ? 0 : 4));
            }
        }
    for (int j = 0; j < 16; j++) {
        const int lo = j < 8 ? b->scales[j] & 0xF : b->scales[j - 8] >> 4;
        const int hi = (b->scales[8 + j % 4] >> (2 * (j / 4))) & 3;
        sc[j] = (lo | hi << 4) - 32;
    }
}

static void dequantize_q3_K(const void *src, float *dst, int64_t n) {
    const kv_block_q3_K *b = src;
    int8_t w[KV_QK_K];
    int32_t sc[16];
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        const float d_all = kv_f16_to_f32(b[i].d);
        unpack_q3_K(&b[i], w, sc);
        for (int j = 0; j < 16; j++) {
            const float dl = d_all * (float)sc[j];
            for (int k = 0; k < 16; k++) *dst++ = dl * (float)w[16 * j + k];
        }
    }
}

static void quantize_q3_K_ref(const float *src, void *dst, int64_t n) {
    kv_block_q3_K *y = dst;
    int8_t L[KV_QK_K];
    float scales[16];
    const float *x = src;
    for (int64_t i = 0; i < n / KV_QK_K; i++, x += KV_QK_K) {
        float max_scale = 0.0f, amax = 0.0f;
        for (int j = 0; j < 16; j++) {
            scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
            const float scale = fabsf(scales[j]);
            if (scale > amax) {
                amax = scale;
                max_scale = scales[j];
            }
        }
        memset(y[i].scales, 0, 12);
        if (max_scale != 0.0f) {
            const float iscale = -32.f / max_scale;
            for (int j = 0; j < 16; j++) {
                int l = (int8_t)kv_nearest_int(iscale * scales[j]);
                l = imax(-32, imin(31, l)) + 32;
                if (j < 8)
                    y[i].scales[j] = (uint8_t)(l & 0xF);
                else
                    y[i].scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
                l >>= 4;
                y[i].scales[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
            }
            y[i].d = kv_f32_to_f16(1 / iscale);
        } else {
            y[i].d = kv_f32_to_f16(0.0f);
        }
        for (int j = 0; j < 16; j++) {
            const int lo = j < 8 ? y[i].scales[j] & 0xF : y[i].scales[j - 8] >> 4;
            const int sc = (lo | (((y[i].scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
            const float d = kv_f16_to_f32(y[i].d) * (float)sc;
            if (d == 0.0f) continue;
            for (int k = 0; k < 16; k++) L[16 * j + k] = (int8_t)(imax(-4, imin(3, kv_nearest_int(x[16 * j + k] / d))) + 4);
        }
        memset(y[i].hmask, 0, sizeof y[i].hmask);
        /* element e: high bit in hmask[e % 32], bit e / 32 */
        for (int e = 0; e < KV_QK_K; e++)
            if (L[e] > 3) {
                y[i].hmask[e % 32] |= (uint8_t)(1u << (e / 32));
                L[e] = (int8_t)(L[e] - 4);
            }
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const int8_t *q = L + 128 * h + l;
                y[i].qs[32 * h + l] = (uint8_t)(q[0] | q[32] << 2 | q[64] << 4 | q[96] << 6);
            }
    }
}

static void vec_dot_q3_K_q8_K(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_block_q3_K *x = vx;
    const kv_block_q8_K *y = vy;
    float acc[8] = {0};
    int8_t w[KV_QK_K];
    int32_t sc[16], isum[8];
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        unpack_q3_K(&x[i], w, sc);
        kv_qk_lane_sums(w, y[i].qs, sc, isum);
        const float d = y[i].d * kv_f16_to_f32(x[i].d);
        for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float)isum[l], acc[l]);
    }
    *s = kv_dot_reduce8(acc);
}

/* ================================================================ Q4_K */
/* 8 sub-blocks of 32: x = d * sc * q - dmin * m, q in 0..15, sc and m 6-bit
 * (get_scale_min_k4). Element 64c + l (l < 32) is the low nibble of
 * qs[32c + l], element 64c + 32 + l its high nibble. */

static void unpack_q4_K(const kv_block_q4_K *b, int8_t w[KV_QK_K]) {
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            w[64 * c + l] = (int8_t)(b->qs[32 * c + l] & 0xF);
            w[64 * c + 32 + l] = (int8_t)(b->qs[32 * c + l] >> 4);
        }
}

static void dequantize_q4_K(const void *src, float *dst, int64_t n) {
    const kv_block_q4_K *b = src;
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        const float d = kv_f16_to_f32(b[i].d);
        const float min = kv_f16_to_f32(b[i].dmin);
        const uint8_t *q = b[i].qs;
        for (int c = 0; c < 4; c++, q += 32) {
            uint8_t sc, m;
            get_scale_min_k4(2 * c, b[i].scales, &sc, &m);
            const float d1 = d * (float)sc, m1 = min * (float)m;
            get_scale_min_k4(2 * c + 1, b[i].scales, &sc, &m);
            const float d2 = d * (float)sc, m2 = min * (float)m;
            for (int l = 0; l < 32; l++) *dst++ = d1 * (float)(q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++) *dst++ = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

/* Shared by Q4_K (nmax 15, search -1 + 0.1 * 0..20) and Q5_K (nmax 31,
 * search -0.5 + 0.1 * 0..15): per-32 scale/min search, 6-bit quantization of
 * both relative to their maxima, then the final levels. */
static void quantize_k_scales_mins(const float *x, int nmax, float rmin, int nstep, uint8_t scales_out[12],
                                   kv_f16 *d_out, kv_f16 *dmin_out, uint8_t L[KV_QK_K]) {
    uint8_t Laux[32];
    float weights[32], mins[8], scales[8];
    float max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < 8; j++) {
        float sum_x2 = 0.0f;
        for (int l = 0; l < 32; l++) sum_x2 += x[32 * j + l] * x[32 * j + l];
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++) weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = make_qkx2_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep, false);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0.0f ? 63.f / max_scale : 0.0f;
    const float inv_min = max_min > 0.0f ? 63.f / max_min : 0.0f;
    for (int j = 0; j < 8; j++) {
        uint8_t ls = (uint8_t)kv_nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)kv_nearest_int(inv_min * mins[j]);
        ls = ls < 63 ? ls : 63;
        lm = lm < 63 ? lm : 63;
        put_scale_min_k4(j, scales_out, ls, lm);
    }
    *d_out = kv_f32_to_f16(max_scale / 63.f);
    *dmin_out = kv_f32_to_f16(max_min / 63.f);
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        get_scale_min_k4(j, scales_out, &sc, &m);
        const float d = kv_f16_to_f32(*d_out) * (float)sc;
        if (d == 0.0f) continue;
        const float dm = kv_f16_to_f32(*dmin_out) * (float)m;
        for (int k = 0; k < 32; k++) L[32 * j + k] = (uint8_t)imax(0, imin(nmax, kv_nearest_int((x[32 * j + k] + dm) / d)));
    }
}

static void quantize_q4_K_ref(const float *src, void *dst, int64_t n) {
    kv_block_q4_K *y = dst;
    uint8_t L[KV_QK_K];
    const float *x = src;
    for (int64_t i = 0; i < n / KV_QK_K; i++, x += KV_QK_K) {
        memset(y[i].scales, 0, sizeof y[i].scales);
        quantize_k_scales_mins(x, 15, -1.f, 20, y[i].scales, &y[i].d, &y[i].dmin, L);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) y[i].qs[32 * c + l] = (uint8_t)(L[64 * c + l] | L[64 * c + 32 + l] << 4);
    }
}

static void k4_scales_mins(const uint8_t scales[12], int32_t sc16[16], int32_t mins[8]) {
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        get_scale_min_k4(j, scales, &sc, &m);
        sc16[2 * j] = sc16[2 * j + 1] = sc;
        mins[j] = m;
    }
}

static void vec_dot_q4_K_q8_K(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_block_q4_K *x = vx;
    const kv_block_q8_K *y = vy;
    float acc[8] = {0}, accm[4] = {0};
    int8_t w[KV_QK_K];
    int32_t sc[16], mins[8], isum[8];
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        unpack_q4_K(&x[i], w);
        k4_scales_mins(x[i].scales, sc, mins);
        kv_qk_lane_sums(w, y[i].qs, sc, isum);
        const float d = y[i].d * kv_f16_to_f32(x[i].d);
        const float nd = -(y[i].d * kv_f16_to_f32(x[i].dmin));
        for (int k = 0; k < 4; k++) {
            const int32_t pm = mins[2 * k] * ((int32_t)y[i].bsums[4 * k] + y[i].bsums[4 * k + 1]) +
                               mins[2 * k + 1] * ((int32_t)y[i].bsums[4 * k + 2] + y[i].bsums[4 * k + 3]);
            accm[k] = fmaf(nd, (float)pm, accm[k]);
        }
        for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float)isum[l], acc[l]);
    }
    *s = kv_dot_reduce8(acc) + ((accm[0] + accm[2]) + (accm[1] + accm[3]));
}

/* ================================================================ Q5_K */
/* As Q4_K with q in 0..31: the 5th bit of element 64c + l is bit 2c of
 * qh[l], of element 64c + 32 + l bit 2c + 1. */

static void unpack_q5_K(const kv_block_q5_K *b, int8_t w[KV_QK_K]) {
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            const int h = b->qh[l] >> (2 * c);
            w[64 * c + l] = (int8_t)((b->qs[32 * c + l] & 0xF) | (h & 1) << 4);
            w[64 * c + 32 + l] = (int8_t)((b->qs[32 * c + l] >> 4) | (h & 2) << 3);
        }
}

static void dequantize_q5_K(const void *src, float *dst, int64_t n) {
    const kv_block_q5_K *b = src;
    int8_t w[KV_QK_K];
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        const float d = kv_f16_to_f32(b[i].d);
        const float min = kv_f16_to_f32(b[i].dmin);
        unpack_q5_K(&b[i], w);
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            get_scale_min_k4(j, b[i].scales, &sc, &m);
            const float d1 = d * (float)sc, m1 = min * (float)m;
            for (int l = 0; l < 32; l++) *dst++ = d1 * (float)w[32 * j + l] - m1;
        }
    }
}

static void quantize_q5_K_ref(const float *src, void *dst, int64_t n) {
    kv_block_q5_K *y = dst;
    uint8_t L[KV_QK_K];
    const float *x = src;
    for (int64_t i = 0; i < n / KV_QK_K; i++, x += KV_QK_K) {
        memset(y[i].scales, 0, sizeof y[i].scales);
        quantize_k_scales_mins(x, 31, -0.5f, 15, y[i].scales, &y[i].d, &y[i].dmin, L);
        memset(y[i].qh, 0, sizeof y[i].qh);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                const int l1 = L[64 * c + l], l2 = L[64 * c + 32 + l];
                y[i].qh[l] |= (uint8_t)(((l1 >> 4) & 1) << (2 * c) | ((l2 >> 4) & 1) << (2 * c + 1));
                y[i].qs[32 * c + l] = (uint8_t)((l1 & 0xF) | (l2 & 0xF) << 4);
            }
    }
}

static void vec_dot_q5_K_q8_K(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_block_q5_K *x = vx;
    const kv_block_q8_K *y = vy;
    float acc[8] = {0}, accm = 0.0f;
    int8_t w[KV_QK_K];
    int32_t sc[16], mins[8], isum[8];
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        unpack_q5_K(&x[i], w);
        k4_scales_mins(x[i].scales, sc, mins);
        int32_t summ = 0;
        for (int j = 0; j < 8; j++) summ += mins[j] * ((int32_t)y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]);
        kv_qk_lane_sums(w, y[i].qs, sc, isum);
        const float d = y[i].d * kv_f16_to_f32(x[i].d);
        const float nd = -(y[i].d * kv_f16_to_f32(x[i].dmin));
        for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float)isum[l], acc[l]);
        accm = fmaf(nd, (float)summ, accm);
    }
    *s = kv_dot_reduce8(acc) + accm;
}

/* ================================================================ Q6_K */
/* 16 sub-blocks of 16: x = d * sc * (q - 32), q in 0..63, sc int8. For
 * h = 0..1, l = 0..31, with ql = ql + 64h and qh = qh + 32h:
 *   element 128h +      l: low nibble of ql[l],       top bits (qh[l] >> 0) & 3
 *   element 128h + 32 + l: low nibble of ql[l + 32],  top bits (qh[l] >> 2) & 3
 *   element 128h + 64 + l: high nibble of ql[l],      top bits (qh[l] >> 4) & 3
 *   element 128h + 96 + l: high nibble of ql[l + 32], top bits (qh[l] >> 6) & 3 */

static void unpack_q6_K(const kv_block_q6_K *b, int8_t w[KV_QK_K]) {
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        int8_t *o = w + 128 * h;
        for (int l = 0; l < 32; l++) {
            o[l] = (int8_t)(((ql[l] & 0xF) | ((qh[l] >> 0) & 3) << 4) - 32);
            o[l + 32] = (int8_t)(((ql[l + 32] & 0xF) | ((qh[l] >> 2) & 3) << 4) - 32);
            o[l + 64] = (int8_t)(((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32);
            o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32);
        }
    }
}

static void dequantize_q6_K(const void *src, float *dst, int64_t n) {
    const kv_block_q6_K *b = src;
    int8_t w[KV_QK_K];
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        const float d = kv_f16_to_f32(b[i].d);
        unpack_q6_K(&b[i], w);
        for (int j = 0; j < 16; j++) {
            const float dl = d * (float)b[i].scales[j]; /* (d * sc) * q, as ggml */
            for (int k = 0; k < 16; k++) *dst++ = dl * (float)w[16 * j + k];
        }
    }
}

static void quantize_q6_K_ref(const float *src, void *dst, int64_t n) {
    kv_block_q6_K *y = dst;
    int8_t L[KV_QK_K];
    float scales[16];
    const float *x = src;
    for (int64_t i = 0; i < n / KV_QK_K; i++, x += KV_QK_K) {
        float max_scale = 0.0f, max_abs_scale = 0.0f;
        for (int ib = 0; ib < 16; ib++) {
            const float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
            scales[ib] = scale;
            const float abs_scale = fabsf(scale);
            if (abs_scale > max_abs_scale) {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }
        }
        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float iscale = -128.f / max_scale;
        y[i].d = kv_f32_to_f16(1 / iscale);
        for (int ib = 0; ib < 16; ib++) y[i].scales[ib] = (int8_t)imin(127, kv_nearest_int(iscale * scales[ib]));
        for (int j = 0; j < 16; j++) {
            const float d = kv_f16_to_f32(y[i].d) * (float)y[i].scales[j];
            if (d == 0.0f) continue;
            for (int k = 0; k < 16; k++) L[16 * j + k] = (int8_t)(imax(-32, imin(31, kv_nearest_int(x[16 * j + k] / d))) + 32);
        }
        for (int h = 0; h < 2; h++) {
            uint8_t *ql = y[i].ql + 64 * h, *qh = y[i].qh + 32 * h;
            const int8_t *q = L + 128 * h;
            for (int l = 0; l < 32; l++) {
                ql[l] = (uint8_t)((q[l] & 0xF) | (q[l + 64] & 0xF) << 4);
                ql[l + 32] = (uint8_t)((q[l + 32] & 0xF) | (q[l + 96] & 0xF) << 4);
                qh[l] = (uint8_t)((q[l] >> 4) | (q[l + 32] >> 4) << 2 | (q[l + 64] >> 4) << 4 | (q[l + 96] >> 4) << 6);
            }
        }
    }
}

static void vec_dot_q6_K_q8_K(int64_t n, float *s, const void *vx, const void *vy) {
    const kv_block_q6_K *x = vx;
    const kv_block_q8_K *y = vy;
    float acc[8] = {0};
    int8_t w[KV_QK_K];
    int32_t sc[16], isum[8];
    for (int64_t i = 0; i < n / KV_QK_K; i++) {
        unpack_q6_K(&x[i], w);
        for (int j = 0; j < 16; j++) sc[j] = x[i].scales[j];
        kv_qk_lane_sums(w, y[i].qs, sc, isum);
        const float d = y[i].d * kv_f16_to_f32(x[i].d);
        for (int l = 0; l < 8; l++) acc[l] = fmaf(d, (float)isum[l], acc[l]);
    }
    *s = kv_dot_reduce8(acc);
}

const kv_quant_traits kv_traits_q2_K = {KV_Q2_K, dequantize_q2_K, quantize_q2_K_ref, quantize_q2_K_ref, KV_Q8_K, vec_dot_q2_K_q8_K};
const kv_quant_traits kv_traits_q3_K = {KV_Q3_K, dequantize_q3_K, quantize_q3_K_ref, quantize_q3_K_ref, KV_Q8_K, vec_dot_q3_K_q8_K};
const kv_quant_traits kv_traits_q4_K = {KV_Q4_K, dequantize_q4_K, quantize_q4_K_ref, quantize_q4_K_ref, KV_Q8_K, vec_dot_q4_K_q8_K};
const kv_quant_traits kv_traits_q5_K = {KV_Q5_K, dequantize_q5_K, quantize_q5_K_ref, quantize_q5_K_ref, KV_Q8_K, vec_dot_q5_K_q8_K};
const kv_quant_traits kv_traits_q6_K = {KV_Q6_K, dequantize_q6_K, quantize_q6_K_ref, quantize_q6_K_ref, KV_Q8_K, vec_dot_q6_K_q8_K};
const kv_quant_traits kv_traits_q8_K = {KV_Q8_K, dequantize_q8_K, quantize_q8_K, quantize_q8_K, KV_Q8_K, vec_dot_q8_K_q8_K};
