/* Weight-type helpers shared by `kvlm quantize` and `kvlm synth`: type names,
 * llama.cpp's file types, and llama-quantize's per-tensor choices. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "qz.h"
#include "core/dtype.h"
#include "quant/quant.h"

typedef struct qz_name {
    const char *name;
    uint32_t type;
    int ftype; /* llama.cpp's general.file_type for a model mostly of this type */
} qz_name;

/* llama_ftype numbers (llama.h); i2_s: bitnet.cpp's MOSTLY_I2_S. q3_k and q5_k
 * make exactly llama-quantize's Q3_K_S and Q5_K_S (those mixes are uniform);
 * q2_k and q4_k are uniform Q2_K / Q4_K, which llama-quantize's Q2_K / Q4_K_S
 * mixes are not quite (they bump some attn_v / ffn_down tensors). */
static const qz_name k_names[] = {
    {"f32", KV_F32, 0},     {"f16", KV_F16, 1},     {"bf16", KV_BF16, 32},  {"q8_0", KV_Q8_0, 7},
    {"q4_0", KV_Q4_0, 2},   {"q4_1", KV_Q4_1, 3},   {"q5_0", KV_Q5_0, 8},   {"q5_1", KV_Q5_1, 9},
    {"q2_k", KV_Q2_K, 10},  {"q3_k", KV_Q3_K, 11},  {"q4_k", KV_Q4_K, 14},  {"q5_k", KV_Q5_K, 16},
    {"q6_k", KV_Q6_K, 18},  {"tq1_0", KV_TQ1_0, 36}, {"tq2_0", KV_TQ2_0, 37}, {"i2_s", KV_I2_S, 40},
};
#define QZ_N_NAMES (sizeof k_names / sizeof k_names[0])

const char *qz_type_list(void) {
    return "f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q3_k q4_k q5_k q6_k tq1_0 tq2_0 i2_s";
}

/* Case-insensitive type name -> kv_dtype. */
bool qz_parse_type(const char *s, uint32_t *type) {
    for (size_t i = 0; i < QZ_N_NAMES; i++)
        if (strcasecmp(s, k_names[i].name) == 0) {
            *type = k_names[i].type;
            return true;
        }
    return false;
}

const char *qz_type_name(uint32_t t) {
    for (size_t i = 0; i < QZ_N_NAMES; i++)
        if (k_names[i].type == t) return k_names[i].name;
    return kv_dtype_name(t);
}

/* llama.cpp's general.file_type for a model quantized to t; -1 when none. */
int qz_ftype(uint32_t t) {
    for (size_t i = 0; i < QZ_N_NAMES; i++)
        if (k_names[i].type == t) return k_names[i].ftype;
    return -1;
}

bool qz_is_float(uint32_t t) { return t == KV_F32 || t == KV_F16 || t == KV_BF16; }
bool qz_is_ternary(uint32_t t) { return t == KV_TQ1_0 || t == KV_TQ2_0 || t == KV_I2_S; }

/* What a row length must be a multiple of (I2_S: its 128-value blocks). */
static uint64_t qz_block(uint32_t t) {
    if (t == KV_I2_S) return 128;
    const kv_dtype_info *i = kv_dtype_get(t);
    return i ? (uint64_t)i->block_size : 1;
}

/* llama-quantize's fallback for rows that are not a whole number of blocks:
 * TQ1_0/TQ2_0 -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0; Q2_K/Q3_K
 * go to IQ4_NL there, which kvlm cannot compute, so Q4_0 (the same size)
 * here; I2_S -> Q4_0 as TQ*; then F16 when the fallback does not fit either.
 * The 32-block types (where llama-quantize gives up) go to F16 directly. */
uint32_t qz_fallback(uint32_t t, uint64_t ne0, bool *fell) {
    if (fell) *fell = false;
    if (ne0 % qz_block(t) == 0) return t;
    if (fell) *fell = true;
    uint32_t f;
    switch (t) {
    case KV_TQ1_0: case KV_TQ2_0: case KV_I2_S: case KV_Q2_K: case KV_Q3_K: f = KV_Q4_0; break;
    case KV_Q4_K: f = KV_Q5_0; break;
    case KV_Q5_K: f = KV_Q5_1; break;
    case KV_Q6_K: f = KV_Q8_0; break;
    default: f = KV_F16; break;
    }
    if (ne0 % qz_block(f) != 0) f = KV_F16;
    return f;
}

/* The type of a tensor that is quantized (a 2-D weight) for target type
 * `target`, before the per-row fallback, as llama_tensor_get_type chooses it
 * (without the mixes of the _M/_L/IQ ftypes):
 * - the output (or, with no output.weight, the token embedding that stands in
 *   for it): Q8_0 when its rows do not fit the target's blocks, else Q6_K
 *   unless the target is Q8_0;
 * - the token embedding: the target type;
 * - ternary targets (TQ1_0, TQ2_0, I2_S): embedding and output Q8_0 (these are
 *   not ternary; llama-quantize would take Q4_K / Q6_K);
 * - float targets: the target everywhere.
 * embd_type / output_type (>= 0) override the choice for those tensors. */
uint32_t qz_pick(uint32_t target, int role, bool has_output, uint64_t ne0, int embd_type, int output_type) {
    uint32_t t = target;
    const bool as_output = role == QZ_ROLE_OUTPUT || (role == QZ_ROLE_EMBD && !has_output);
    if (!qz_is_float(target)) {
        if (as_output) {
            if (qz_is_ternary(target) || ne0 % qz_block(target) != 0) t = KV_Q8_0;
            else if (target != KV_Q8_0) t = KV_Q6_K;
        } else if (role == QZ_ROLE_EMBD && qz_is_ternary(target)) {
            t = KV_Q8_0;
        }
    }
    if (as_output && output_type >= 0) t = (uint32_t)output_type;
    if (role == QZ_ROLE_EMBD && embd_type >= 0) t = (uint32_t)embd_type;
    return t;
}

int qz_role(const char *name) {
    if (strcmp(name, "token_embd.weight") == 0) return QZ_ROLE_EMBD;
    if (strcmp(name, "output.weight") == 0) return QZ_ROLE_OUTPUT;
    return QZ_ROLE_OTHER;
}

/* Converts n_rows rows of ne0 floats to type t (row by row with the reference
 * quantizer; I2_S over the whole tensor). dst holds the whole tensor. */
bool qz_convert(const float *src, uint32_t t, uint64_t ne0, uint64_t n_rows, void *dst) {
    const kv_quant_traits *q = kv_quant_get(t);
    uint64_t rb;
    if (!q || !q->from_float_ref) return false;
    if (t == KV_I2_S) {
        q->from_float_ref(src, dst, (int64_t)(ne0 * n_rows));
        return true;
    }
    if (!kv_dtype_row_bytes(t, ne0, &rb)) return false;
    for (uint64_t r = 0; r < n_rows; r++) q->from_float_ref(src + r * ne0, (uint8_t *)dst + r * rb, (int64_t)ne0);
    return true;
}

typedef struct qz_conv_job {
    const float *src;
    uint32_t t;
    uint64_t ne0, n_rows, rb;
    void *dst;
} qz_conv_job;

static void qz_conv_worker(void *ctx, int ith, int nth) {
    const qz_conv_job *j = ctx;
    int64_t b, e;
    kv_split((int64_t)j->n_rows, ith, nth, &b, &e);
    if (e > b)
        qz_convert(j->src + (uint64_t)b * j->ne0, j->t, j->ne0, (uint64_t)(e - b), (uint8_t *)j->dst + (uint64_t)b * j->rb);
}

/* qz_convert with the rows split over a pool (NULL: this thread). The result
 * does not depend on the number of threads. */
bool qz_convert_mt(kv_tpool *pool, const float *src, uint32_t t, uint64_t ne0, uint64_t n_rows, void *dst) {
    const kv_quant_traits *q = kv_quant_get(t);
    uint64_t rb;
    if (!q || !q->from_float_ref) return false;
    if (!pool || t == KV_I2_S || n_rows < 2) return qz_convert(src, t, ne0, n_rows, dst);
    if (!kv_dtype_row_bytes(t, ne0, &rb)) return false;
    qz_conv_job j = {src, t, ne0, n_rows, rb, dst};
    kv_tpool_run(pool, qz_conv_worker, &j);
    return true;
}

/* Threads for -t: the given count, else the online CPUs (at most 8). */
int qz_threads(int requested) {
    if (requested > 0) return requested;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 8 ? 8 : (int)n;
}

