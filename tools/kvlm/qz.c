/* Weight-type helpers shared by `kvlm quantize` and `kvlm synth`: type names,
 * llama.cpp's file types, and llama-quantize's per-tensor choices. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "qz.h"
#include "cli.h"
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

/* Threads for -t: the given count, else the CLI's default (the physical cores). */
int qz_threads(int requested) { return requested > 0 ? requested : cli_default_threads(); }

/* llama.cpp's names of its file types (llama_model_ftype_name); I2_S is bitnet.cpp's. */
const char *qz_ftype_name(int ftype) {
    static const struct {
        int ftype;
        const char *name;
    } k[] = {
        {0, "all F32"},        {1, "F16"},           {32, "BF16"},          {2, "Q4_0"},
        {3, "Q4_1"},           {8, "Q5_0"},          {9, "Q5_1"},           {7, "Q8_0"},
        {10, "Q2_K - Medium"}, {21, "Q2_K - Small"}, {11, "Q3_K - Small"},  {12, "Q3_K - Medium"},
        {13, "Q3_K - Large"},  {14, "Q4_K - Small"}, {15, "Q4_K - Medium"}, {16, "Q5_K - Small"},
        {17, "Q5_K - Medium"}, {18, "Q6_K"},         {36, "TQ1_0 - 1.69 bpw ternary"},
        {37, "TQ2_0 - 2.06 bpw ternary"},            {19, "IQ2_XXS - 2.0625 bpw"},
        {20, "IQ2_XS - 2.3125 bpw"},                 {28, "IQ2_S - 2.5 bpw"},
        {29, "IQ2_M - 2.7 bpw"},                     {22, "IQ3_XS - 3.3 bpw"},
        {23, "IQ3_XXS - 3.0625 bpw"},                {24, "IQ1_S - 1.5625 bpw"},
        {31, "IQ1_M - 1.75 bpw"},                    {25, "IQ4_NL - 4.5 bpw"},
        {30, "IQ4_XS - 4.25 bpw"},                   {26, "IQ3_S - 3.4375 bpw"},
        {27, "IQ3_S mix - 3.66 bpw"},                {40, "I2_S - 2 bpw ternary"},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        if (k[i].ftype == ftype) return k[i].name;
    return "unknown, may not work";
}

/* llama_model_loader's weight order: by layer ("blk.N."; others first), then by name */
static int layer_of(const char *name) {
    int l = -1;
    if (sscanf(name, "blk.%d.", &l) != 1) l = -1;
    return l;
}

static int cmp_weights(const void *a, const void *b) {
    const gguf_tensor *x = *(const gguf_tensor *const *)a, *y = *(const gguf_tensor *const *)b;
    int lx = layer_of(x->name), ly = layer_of(y->name);
    if (lx != ly) return lx < ly ? -1 : 1;
    return strcmp(x->name, y->name);
}

void qz_sort_weights(const gguf_tensor **t, size_t n) { qsort(t, n, sizeof *t, cmp_weights); }

int qz_file_ftype(const gguf_ctx *g, bool *guessed) {
    uint32_t ft;
    *guessed = false;
    if (kv_gguf_get_u32(g, "general.file_type", &ft)) return (int)ft;
    /* as llama.cpp guesses: the type of the most tensors (the first to get there in weight order) */
    *guessed = true;
    const gguf_tensor **order = malloc((size_t)(g->n_tensors ? g->n_tensors : 1) * sizeof *order);
    if (!order) return 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) order[i] = &g->tensors[i];
    qz_sort_weights(order, (size_t)g->n_tensors);
    uint32_t count[KV_DTYPE_COUNT] = {0}, best = KV_F32, n_best = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const uint32_t t = order[i]->type;
        if (t >= KV_DTYPE_COUNT) continue;
        if (++count[t] > n_best) {
            n_best = count[t];
            best = t;
        }
    }
    free(order);
    switch (best) {
    case KV_Q3_K: return 12; /* mostly Q3_K: Q3_K_M */
    case KV_Q4_K: return 15;
    case KV_Q5_K: return 17;
    default: {
        const int f = qz_ftype(best);
        return f >= 0 ? f : 0;
    }
    }
}

/* ------------------------------------------------------------ llama-quantize's file types and mixes */

/* llama-quantize's QUANT_OPTIONS, in its order (a number names the first entry with it), and
 * bitnet.cpp's I2_S. def: the type most tensors get; why: set when kvlm cannot make it. */
static const qz_ftype_opt k_ftypes[] = {
    {"Q4_0", 2, KV_Q4_0, NULL},
    {"Q4_1", 3, KV_Q4_1, NULL},
    {"Q5_0", 8, KV_Q5_0, NULL},
    {"Q5_1", 9, KV_Q5_1, NULL},
    {"IQ2_XXS", 19, 0, "kvlm has no IQ2_XXS type"},
    {"IQ2_XS", 20, 0, "kvlm has no IQ2_XS type"},
    {"IQ2_S", 28, 0, "kvlm has no IQ2_XS/IQ3_S types"},
    {"IQ2_M", 29, 0, "kvlm has no IQ2_S/IQ3_S types"},
    {"IQ1_S", 24, 0, "kvlm has no IQ1_S type"},
    {"IQ1_M", 31, 0, "kvlm has no IQ1_M type"},
    {"TQ1_0", 36, KV_TQ1_0, NULL},
    {"TQ2_0", 37, KV_TQ2_0, NULL},
    {"Q2_K", 10, KV_Q2_K, NULL},
    {"Q2_K_S", 21, 0, "Q2_K_S needs an importance matrix (llama-quantize refuses it without one), which kvlm has not"},
    {"IQ3_XXS", 23, 0, "kvlm has no IQ3_XXS/IQ3_S types"},
    {"IQ3_S", 26, 0, "kvlm has no IQ3_S type"},
    {"IQ3_M", 27, 0, "kvlm has no IQ3_S type"},
    {"Q3_K", 12, KV_Q3_K, NULL},
    {"IQ3_XS", 22, 0, "kvlm has no IQ3_S/IQ3_XXS types"},
    {"Q3_K_S", 11, KV_Q3_K, NULL},
    {"Q3_K_M", 12, KV_Q3_K, NULL},
    {"Q3_K_L", 13, KV_Q3_K, NULL},
    {"IQ4_NL", 25, 0, "kvlm has no IQ4_NL type"},
    {"IQ4_XS", 30, 0, "kvlm has no IQ4_XS type"},
    {"Q4_K", 15, KV_Q4_K, NULL},
    {"Q4_K_S", 14, KV_Q4_K, NULL},
    {"Q4_K_M", 15, KV_Q4_K, NULL},
    {"Q5_K", 17, KV_Q5_K, NULL},
    {"Q5_K_S", 16, KV_Q5_K, NULL},
    {"Q5_K_M", 17, KV_Q5_K, NULL},
    {"Q6_K", 18, KV_Q6_K, NULL},
    {"Q8_0", 7, KV_Q8_0, NULL},
    {"F16", 1, KV_F16, NULL},
    {"BF16", 32, KV_BF16, NULL},
    {"F32", 0, KV_F32, NULL},
    {"COPY", 0, KV_F32, NULL}, /* after F32, so that 0 means F32 */
    {"I2_S", 40, KV_I2_S, NULL},
};
#define QZ_N_FTYPES (sizeof k_ftypes / sizeof k_ftypes[0])

const qz_ftype_opt *qz_parse_ftype(const char *s) {
    for (size_t i = 0; i < QZ_N_FTYPES; i++)
        if (strcasecmp(s, k_ftypes[i].name) == 0) return &k_ftypes[i];
    char *end;
    const long v = strtol(s, &end, 10);
    if (end != s && !*end)
        for (size_t i = 0; i < QZ_N_FTYPES; i++)
            if (k_ftypes[i].ftype == v && strcmp(k_ftypes[i].name, "COPY") != 0) return &k_ftypes[i];
    return NULL;
}

void qz_print_ftypes(FILE *fp) {
    for (size_t i = 0; i < QZ_N_FTYPES; i++) {
        const qz_ftype_opt *o = &k_ftypes[i];
        if (strcmp(o->name, "COPY") == 0) fprintf(fp, "          %-7s : only copy the tensors, no quantizing\n", o->name);
        else fprintf(fp, "  %2d  or  %-7s : %s\n", o->ftype, o->name, o->why ? o->why : qz_ftype_name(o->ftype));
    }
}

static bool use_more_bits(int i_layer, int n_layers) {
    return i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2;
}

/* The layer of a tensor counted by *i among n (MoE models: from its name, as llama-quantize). */
static bool layer_info(const qz_mix *q, int i, int n, const char *name, int *i_layer, int *n_layer) {
    *i_layer = i;
    *n_layer = n;
    if (q->n_expert > 1) {
        if (sscanf(name, "blk.%d.", i_layer) != 1 || *i_layer < 0 || *i_layer >= n) return false;
    }
    return true;
}

#define FT(x) (q->ftype == (x))
enum {
    FT_Q2_K = 10, FT_Q3_K_S = 11, FT_Q3_K_M = 12, FT_Q3_K_L = 13, FT_Q4_K_S = 14, FT_Q4_K_M = 15,
    FT_Q5_K_S = 16, FT_Q5_K_M = 17, FT_TQ1_0 = 36, FT_TQ2_0 = 37,
};

/* llama_tensor_get_type without its IQ and importance-matrix branches (kvlm refuses those file types). */
static bool mix_type(qz_mix *q, const char *name, uint64_t ne0, uint32_t *out) {
    uint32_t t = q->def_type;
    const bool falcon = q->falcon;
    if (strcmp(name, "output.weight") == 0 || (!q->has_output && strcmp(name, "token_embd.weight") == 0)) {
        if (q->output_type >= 0) t = (uint32_t)q->output_type;
        else if (falcon || ne0 % qz_block(t) != 0) t = KV_Q8_0;
        else if (t != KV_Q8_0) t = KV_Q6_K;
    } else if (strcmp(name, "token_embd.weight") == 0) {
        if (q->embd_type >= 0) t = (uint32_t)q->embd_type;
        else if (FT(FT_TQ1_0) || FT(FT_TQ2_0)) t = KV_Q4_K;
    } else if (strstr(name, "attn_v.weight")) {
        if (FT(FT_Q2_K)) t = q->n_gqa >= 4 ? KV_Q4_K : KV_Q3_K;
        else if (FT(FT_Q3_K_M)) t = q->i_attention_wv < 2 ? KV_Q5_K : KV_Q4_K;
        else if (FT(FT_Q3_K_L)) t = KV_Q5_K;
        else if ((FT(FT_Q4_K_M) || FT(FT_Q5_K_M)) && use_more_bits(q->i_attention_wv, q->n_attention_wv)) t = KV_Q6_K;
        else if (FT(FT_Q4_K_S) && q->i_attention_wv < 4) t = KV_Q5_K;
        if (q->is_70b && (t == KV_Q3_K || t == KV_Q4_K)) t = KV_Q5_K;
        if (q->n_expert == 8) t = KV_Q8_0;
        q->i_attention_wv++;
    } else if (strstr(name, "attn_k.weight")) {
        if (q->n_expert == 8) t = KV_Q8_0;
    } else if (strstr(name, "attn_q.weight")) {
        /* only IQ file types change it */
    } else if (strstr(name, "ffn_down")) {
        int il, nl;
        if (!layer_info(q, q->i_ffn_down, q->n_layer, name, &il, &nl)) return false;
        if (FT(FT_Q2_K)) t = KV_Q3_K;
        else if (FT(FT_Q3_K_M))
            t = il < nl / 16 ? KV_Q5_K : !falcon || use_more_bits(il, nl) ? KV_Q4_K : KV_Q3_K;
        else if (FT(FT_Q3_K_L)) t = falcon ? KV_Q4_K : KV_Q5_K;
        else if (FT(FT_Q4_K_M)) {
            if (falcon) t = il < nl / 16 ? KV_Q6_K : use_more_bits(il, nl) ? KV_Q5_K : KV_Q4_K;
            else if (use_more_bits(il, nl)) t = KV_Q6_K;
        } else if (FT(FT_Q5_K_M) && use_more_bits(il, nl)) t = KV_Q6_K;
        else if (FT(FT_Q4_K_S) && !falcon && il < nl / 8) t = KV_Q5_K;
        q->i_ffn_down++;
    } else if (strstr(name, "attn_output.weight")) {
        if (!falcon) {
            if (q->n_expert == 8) {
                if (FT(FT_Q2_K) || FT(FT_Q3_K_S) || FT(FT_Q3_K_M) || FT(FT_Q4_K_S) || FT(FT_Q4_K_M)) t = KV_Q5_K;
            } else {
                if (FT(FT_Q2_K)) t = KV_Q3_K;
                else if (FT(FT_Q3_K_M)) t = KV_Q4_K;
                else if (FT(FT_Q3_K_L)) t = KV_Q5_K;
            }
        } else if (FT(FT_Q3_K_L)) {
            t = KV_Q4_K;
        }
    } else if (strstr(name, "attn_qkv.weight")) {
        if (FT(FT_Q3_K_M) || FT(FT_Q3_K_L)) t = KV_Q4_K;
        else if (FT(FT_Q4_K_M)) t = KV_Q5_K;
        else if (FT(FT_Q5_K_M)) t = KV_Q6_K;
    } else if (strstr(name, "ffn_gate")) {
        int il, nl;
        if (!layer_info(q, q->i_ffn_gate, q->n_layer, name, &il, &nl)) return false;
        q->i_ffn_gate++;
    } else if (strstr(name, "ffn_up")) {
        int il, nl;
        if (!layer_info(q, q->i_ffn_up, q->n_layer, name, &il, &nl)) return false;
        q->i_ffn_up++;
    }
    *out = t;
    return true;
}
#undef FT

bool qz_mix_type(qz_mix *q, const char *name, uint64_t ne0, uint32_t *type, bool *fell) {
    uint32_t t = q->def_type;
    if (q->def_type == KV_I2_S) {
        /* not a llama-quantize type: kvlm's choice for it (embedding and output Q8_0) */
        t = qz_pick(KV_I2_S, qz_role(name), q->has_output, ne0, q->embd_type, q->output_type);
    } else {
        if (!q->pure && !qz_is_float(q->def_type) && !mix_type(q, name, ne0, &t)) return false;
        if (q->embd_type >= 0 && strcmp(name, "token_embd.weight") == 0) t = (uint32_t)q->embd_type;
        if (q->output_type >= 0 && strcmp(name, "output.weight") == 0) t = (uint32_t)q->output_type;
    }
    *type = qz_fallback(t, ne0, fell);
    return true;
}
