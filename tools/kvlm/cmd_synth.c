/* kvlm synth OUT ...: a model with random weights (deterministic from --seed)
 * in any architecture and weight type kvlm loads, for tests and benchmarks.
 * Weights as ../shared/models/CONVERTED.md describes the synth files: token
 * embedding N(0, 0.02), matrices N(0, 1/sqrt(fan_in)), norms 1.0; the bitnet
 * architectures get ternary matrices ({-1, 0, +1} times a per-tensor scale
 * sqrt(1.5 / fan_in), so the variance is 1/fan_in as well) and norms 1 +/- 0.1;
 * qwen2 gets N(0, 0.02) q/k/v biases; qwen3 q/k norms 1 +/- 0.1 (so that a
 * norm weight left out changes the logits), gemma3 also its post-attention and
 * post-FFN norms 1 +/- 0.1. Each tensor is generated and quantized
 * when the writer reaches it, so only one f32 tensor is held at a time. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/tpool.h"
#include "gguf/gguf.h"
#include "gguf/gguf_write.h"
#include "qz.h"


/* ------------------------------------------------------------ random numbers */

typedef struct rng {
    uint64_t s;
    bool has_spare;
    double spare;
} rng;

/* uniform in (0, 1] */
static double rng_unit(rng *r) { return ((double)(kv_splitmix64(&r->s) >> 11) + 1.0) * (1.0 / 9007199254740992.0); }

/* standard normal (Marsaglia's polar method) */
static double rng_gauss(rng *r) {
    if (r->has_spare) {
        r->has_spare = false;
        return r->spare;
    }
    double u, v, q;
    do {
        u = 2.0 * rng_unit(r) - 1.0;
        v = 2.0 * rng_unit(r) - 1.0;
        q = u * u + v * v;
    } while (q >= 1.0 || q == 0.0);
    const double m = sqrt(-2.0 * log(q) / q);
    r->spare = v * m;
    r->has_spare = true;
    return u * m;
}

/* 0, 1 or 2, uniformly */
static unsigned rng_3(rng *r) { return (unsigned)(((kv_splitmix64(&r->s) >> 32) * 3) >> 32); }

/* The stream of one row of one tensor: from the seed, the tensor's name and
 * the row, so that values depend neither on the other tensors, nor on the
 * weight type, nor on the number of threads. */
static uint64_t name_hash(const char *name) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (const char *p = name; *p; p++) h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
    return h;
}
static rng rng_for(uint64_t seed, uint64_t name_h, uint64_t row) {
    uint64_t s = seed ^ name_h;
    s = kv_splitmix64(&s) ^ (row * 0xD1B54A32D192ED03ull);
    rng r = {kv_splitmix64(&s), false, 0.0};
    return r;
}

/* ------------------------------------------------------------ tensors */

typedef enum { K_EMBD, K_GAUSS, K_TERNARY, K_NORM, K_NORM_JITTER, K_BIAS, K_VALUES } gen_kind;

typedef struct stensor {
    char name[64];
    gen_kind kind;
    uint64_t ne0, ne1; /* ne1 = 1: a vector */
    uint32_t type, want;
    uint64_t seed;
    kv_tpool *pool;
    const float *values; /* K_VALUES: the tensor's contents */
} stensor;

/* rows [r0, r1) of t into x (x points at row r0) */
static void generate_rows(const stensor *t, uint64_t r0, uint64_t r1, float *x) {
    const uint64_t h = name_hash(t->name), n = t->ne0;
    for (uint64_t row = r0; row < r1; row++, x += n) {
        rng r = rng_for(t->seed, h, row);
        switch (t->kind) {
        case K_EMBD:
        case K_BIAS:
            for (uint64_t i = 0; i < n; i++) x[i] = (float)(0.02 * rng_gauss(&r));
            break;
        case K_GAUSS: {
            const double sd = 1.0 / sqrt((double)n);
            for (uint64_t i = 0; i < n; i++) x[i] = (float)(sd * rng_gauss(&r));
            break;
        }
        case K_TERNARY: {
            const float s = (float)sqrt(1.5 / (double)n);
            for (uint64_t i = 0; i < n; i++) x[i] = s * (float)((int)rng_3(&r) - 1);
            break;
        }
        case K_NORM:
            for (uint64_t i = 0; i < n; i++) x[i] = 1.0f;
            break;
        case K_NORM_JITTER:
            for (uint64_t i = 0; i < n; i++) x[i] = (float)(0.9 + 0.2 * rng_unit(&r));
            break;
        case K_VALUES:
            memcpy(x, t->values + row * n, (size_t)n * sizeof *x);
            break;
        }
    }
}

typedef struct gen_job {
    const stensor *t;
    float *x;
} gen_job;

static void gen_worker(void *ctx, int ith, int nth) {
    const gen_job *j = ctx;
    int64_t b, e;
    kv_split((int64_t)j->t->ne1, ith, nth, &b, &e);
    if (e > b) generate_rows(j->t, (uint64_t)b, (uint64_t)e, j->x + (uint64_t)b * j->t->ne0);
}

static void generate(const stensor *t, float *x) {
    gen_job j = {t, x};
    if (t->pool && t->ne1 > 1) kv_tpool_run(t->pool, gen_worker, &j);
    else generate_rows(t, 0, t->ne1, x);
}

/* The progress line (on a terminal only): tensors written so far, as kvlm quantize counts them,
 * and the one being generated. */
typedef struct synth_progress {
    cli_progress p;
    size_t done, total;
} synth_progress;
static synth_progress g_progress;

static void progress_tensor(const char *name) {
    cli_progress_update(&g_progress.p, (double)g_progress.done, (double)g_progress.total, name);
    g_progress.done++;
}

static kvlm_status fill_synth(void *user, const char *name, void *dst, uint64_t size, kvlm_error *err) {
    const stensor *t = user;
    const uint64_t n = t->ne0 * t->ne1;
    (void)size;
    progress_tensor(name);
    if (t->type == KV_F32) {
        generate(t, dst);
        return KVLM_OK;
    }
    float *x = n <= SIZE_MAX / sizeof(float) ? malloc((size_t)n * sizeof(float)) : NULL;
    if (!x) return kv_fail(err, KVLM_ERR_NOMEM, "synth: out of memory for '%s'", name);
    generate(t, x);
    bool ok = qz_convert_mt(t->pool, x, t->type, t->ne0, t->ne1, dst);
    free(x);
    if (!ok) return kv_fail(err, KVLM_ERR_UNSUPPORTED, "synth: cannot quantize '%s' to %s", name, kv_dtype_name(t->type));
    return KVLM_OK;
}

/* ------------------------------------------------------------ vocabulary */

/* A SentencePiece ("llama") vocabulary of n tokens: <unk>, <s>, </s>, the 256
 * byte tokens, then pieces ("\u2581", single characters, "\u2581" + a
 * character, then lowercase strings of 2, 3, ... letters with and without the
 * leading "\u2581") with decreasing scores. */
typedef struct synth_vocab {
    char **tok;
    float *score;
    int32_t *type;
    char *pool;
    uint64_t n;
} synth_vocab;

static void vocab_free(synth_vocab *v) {
    free(v->tok);
    free(v->score);
    free(v->type);
    free(v->pool);
    memset(v, 0, sizeof *v);
}

#define SPACE "\xe2\x96\x81"

static bool vocab_make(synth_vocab *v, uint64_t n) {
    memset(v, 0, sizeof *v);
    /* every piece has at most 3 + len bytes and len <= 8 for n < 2^31 */
    v->tok = malloc((size_t)n * sizeof *v->tok);
    v->score = malloc((size_t)n * sizeof *v->score);
    v->type = malloc((size_t)n * sizeof *v->type);
    v->pool = malloc((size_t)n * 16);
    if (!v->tok || !v->score || !v->type || !v->pool) {
        vocab_free(v);
        return false;
    }
    size_t used = 0;
    uint64_t k = 0;
#define ADD(str, ty, sc)                                             \
    do {                                                             \
        if (k < n) {                                                 \
            size_t l_ = strlen(str);                                 \
            memcpy(v->pool + used, str, l_ + 1);                     \
            v->tok[k] = v->pool + used;                              \
            used += l_ + 1;                                          \
            v->type[k] = (ty);                                       \
            v->score[k] = (sc);                                      \
            k++;                                                     \
        }                                                            \
    } while (0)
    ADD("<unk>", 2, 0.0f);
    ADD("<s>", 3, 0.0f);
    ADD("</s>", 3, 0.0f);
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", (unsigned)b);
        ADD(s, 6, 0.0f);
    }
    static const char singles[] = "etaoinshrdlucmfwypvbgkjqxzETAOINSHRDLUCMFWYPVBGKJQXZ0123456789.,!?'\"-:;()";
    float sc = 0.0f;
    char s[32];
    ADD(SPACE, 1, sc--);
    for (const char *c = singles; *c; c++) {
        snprintf(s, sizeof s, SPACE "%c", *c);
        ADD(s, 1, sc--);
        snprintf(s, sizeof s, "%c", *c);
        ADD(s, 1, sc--);
    }
    for (int len = 2; k < n && len <= 8; len++) {
        uint64_t count = 1;
        for (int i = 0; i < len; i++) count *= 26;
        for (uint64_t idx = 0; idx < count && k < n; idx++) {
            char w[16];
            uint64_t x = idx;
            for (int i = len - 1; i >= 0; i--, x /= 26) w[i] = (char)('a' + x % 26);
            w[len] = '\0';
            snprintf(s, sizeof s, SPACE "%s", w);
            ADD(s, 1, sc--);
            ADD(w, 1, sc--);
        }
    }
#undef ADD
    v->n = k;
    return k == n;
}

/* ------------------------------------------------------------ command */

typedef struct synth_cfg {
    const char *out, *arch, *vocab_from, *name;
    long long dim, layers, heads, kv_heads, ff, vocab, ctx;
    uint64_t seed;
    uint32_t type;
    int embd_type, output_type, tied; /* -1: default */
    long long threads;
    float rope_base, eps;
    /* RoPE beyond the base (self-contained: rope_opts) */
    long long head_dim;                                    /* attention.key_length/value_length; 0: dim / heads */
    const char *rope_scaling;                              /* rope.scaling.type, or NULL */
    float rope_factor;                                     /* rope.scaling.factor (0: none written) */
    long long rope_orig_ctx;                               /* rope.scaling.original_context_length (0: none) */
    bool rope_freqs;                                       /* write rope_freqs.weight (Llama 3.x) */
    double l3_factor, l3_low, l3_high, l3_orig;            /* its parameters */
    /* phi3 (phi3_opts) */
    long long rope_dims;                                   /* rope.dimension_count (0: the head size) */
    long long swa;                                         /* attention.sliding_window (phi3: written, 0 = none; gemma3: 0 = 512) */
    bool longrope;                                         /* rope_factors_long/short + rope.scaling.attn_factor */
} synth_cfg;

/* phi3's options; 1: handled, 0: not one of them, -1: bad value. */
static int phi3_opts(const char *a, const char *v, synth_cfg *c) {
    char *end;
    long long *dst = strcmp(a, "--rope-dims") == 0 ? &c->rope_dims : strcmp(a, "--sliding-window") == 0 ? &c->swa : NULL;
    if (!dst) return 0;
    errno = 0;
    *dst = strtoll(v, &end, 10);
    if (errno || end == v || *end || *dst < 0 || *dst > (1 << 30) || (dst == &c->rope_dims && (*dst < 2 || *dst % 2))) {
        fprintf(stderr, "error: %s expects %s, got '%s'\n", a,
                dst == &c->rope_dims ? "an even integer >= 2" : "an integer >= 0", v);
        return -1;
    }
    return 1;
}

/* LongRoPE factors for head size hd (hd/2 of each, as phi3's rope_factors_{long,short} hold): short
 * ones from 1 to 1.5, long ones from 1 to 2 x ctx/orig, rising linearly over the pairs. */
static void longrope_factors(const synth_cfg *c, uint64_t hd, float *lng, float *shrt) {
    const uint64_t n = hd / 2;
    const double scale = (double)c->ctx / (double)c->rope_orig_ctx;
    for (uint64_t i = 0; i < n; i++) {
        const double x = n > 1 ? (double)i / (double)(n - 1) : 0.0;
        shrt[i] = (float)(1.0 + 0.5 * x);
        lng[i] = (float)(1.0 + (2.0 * scale - 1.0) * x);
    }
}

/* --rope-freqs llama3[:FACTOR:LOW:HIGH:ORIG_CTX] (defaults 32:1:4:8192, Llama 3.2's). */
static bool parse_rope_freqs(const char *v, synth_cfg *c) {
    c->l3_factor = 32.0;
    c->l3_low = 1.0;
    c->l3_high = 4.0;
    c->l3_orig = 8192.0;
    if (strncmp(v, "llama3", 6) != 0 || (v[6] != '\0' && v[6] != ':')) {
        fprintf(stderr, "error: --rope-freqs expects llama3[:FACTOR:LOW:HIGH:ORIG_CTX], got '%s'\n", v);
        return false;
    }
    if (v[6] == ':') {
        double p[4];
        char tail;
        if (sscanf(v + 7, "%lf:%lf:%lf:%lf%c", &p[0], &p[1], &p[2], &p[3], &tail) != 4 || !(p[0] >= 1.0) ||
            !(p[1] > 0.0) || !(p[2] > p[1]) || !(p[3] >= 1.0) || p[0] > 1e6 || p[3] > 1e9) {
            fprintf(stderr, "error: --rope-freqs llama3:FACTOR:LOW:HIGH:ORIG_CTX needs FACTOR >= 1, 0 < LOW < HIGH, "
                            "ORIG_CTX >= 1; got '%s'\n", v);
            return false;
        }
        c->l3_factor = p[0];
        c->l3_low = p[1];
        c->l3_high = p[2];
        c->l3_orig = p[3];
    }
    c->rope_freqs = true;
    return true;
}

/* The factors convert_hf_to_gguf.py derives from a Llama 3.x rope_scaling block: pairs
 * whose wavelength is short keep 1, long ones get FACTOR, those between a smooth mix. */
static void llama3_factors(const synth_cfg *c, double base, int n_rot, float *out) {
    const double low_wl = c->l3_orig / c->l3_low, high_wl = c->l3_orig / c->l3_high;
    for (int i = 0; i < n_rot / 2; i++) {
        const double freq = 1.0 / pow(base, (double)(2 * i) / (double)n_rot);
        const double wl = 2.0 * 3.14159265358979323846 / freq;
        double f;
        if (wl < high_wl) {
            f = 1.0;
        } else if (wl > low_wl) {
            f = c->l3_factor;
        } else {
            const double smooth = (c->l3_orig / wl - c->l3_low) / (c->l3_high - c->l3_low);
            f = 1.0 / ((1.0 - smooth) / c->l3_factor + smooth);
        }
        out[i] = (float)f;
    }
}

/* The RoPE options; 1: handled, 0: not one of them, -1: bad value. */
static int rope_opts(const char *a, const char *v, synth_cfg *c) {
    char *end;
    if (strcmp(a, "--head-dim") == 0) {
        errno = 0;
        c->head_dim = strtoll(v, &end, 10);
        if (errno || end == v || *end || c->head_dim < 2 || c->head_dim > 4096 || c->head_dim % 2) {
            fprintf(stderr, "error: --head-dim expects an even integer in 2..4096, got '%s'\n", v);
            return -1;
        }
    } else if (strcmp(a, "--rope-scaling") == 0) {
        if (strcmp(v, "longrope") == 0) { /* phi3: tensors and attn_factor, no type key (as the converter) */
            c->longrope = true;
            return 1;
        }
        if (strcmp(v, "none") && strcmp(v, "linear") && strcmp(v, "yarn")) {
            fprintf(stderr, "error: --rope-scaling expects none, linear, yarn or longrope, got '%s'\n", v);
            return -1;
        }
        c->rope_scaling = v;
    } else if (strcmp(a, "--rope-factor") == 0) {
        errno = 0;
        c->rope_factor = strtof(v, &end);
        if (errno || end == v || *end || !(c->rope_factor > 0.0f) || isinf(c->rope_factor)) {
            fprintf(stderr, "error: --rope-factor expects a positive number, got '%s'\n", v);
            return -1;
        }
    } else if (strcmp(a, "--rope-orig-ctx") == 0) {
        errno = 0;
        c->rope_orig_ctx = strtoll(v, &end, 10);
        if (errno || end == v || *end || c->rope_orig_ctx < 1 || c->rope_orig_ctx > (1 << 30)) {
            fprintf(stderr, "error: --rope-orig-ctx expects a positive integer, got '%s'\n", v);
            return -1;
        }
    } else if (strcmp(a, "--rope-freqs") == 0) {
        return parse_rope_freqs(v, c) ? 1 : -1;
    } else {
        return 0;
    }
    return 1;
}

static void synth_usage(FILE *fp) {
    fprintf(fp,
            "usage: kvlm synth OUT.gguf --arch llama|qwen2|qwen3|gemma3|phi3|bitnet|bitnet-b1.58\n"
            "                  --dim D --layers L --heads H [--kv-heads N] --ff F --vocab V [--ctx 2048]\n"
            "                  --type T [--seed S]\n"
            "                  [--vocab-from FILE.gguf] [--embd-type T] [--output-type T] [--tied|--untied]\n"
            "                  [--rope-base F] [--eps E] [--name NAME] [-t THREADS]\n"
            "                  [--head-dim N] [--rope-scaling none|linear|yarn] [--rope-factor F]\n"
            "                  [--rope-orig-ctx N] [--rope-freqs llama3[:FACTOR:LOW:HIGH:ORIG_CTX]]\n"
            "                  [--rope-dims N] [--sliding-window N]\n"
            "  Writes a model with random weights (deterministic from --seed, default 1): token\n"
            "  embedding N(0,0.02), matrices N(0,1/sqrt(fan_in)) (bitnet archs: ternary x scale), norms 1.\n"
            "  -t N            threads (default: %d, the physical cores); --kv-heads default: --heads;\n"
            "                  --name default: kvlm-synth-ARCH. A progress line per tensor on a terminal.\n"
            "  --type T        weight type: %s\n"
            "                  (rows that do not fit fall back as llama-quantize does; embedding and output\n"
            "                  types are chosen as kvlm quantize does, or set with --embd-type / --output-type)\n"
            "  --vocab-from F  copy the tokenizer (every tokenizer.* key) of a GGUF; its size sets --vocab.\n"
            "                  Without it: a generated SentencePiece vocabulary of --vocab tokens.\n"
            "  --tied/--untied output.weight shares the embedding (default: tied for bitnet archs)\n"
            "  --rope-base F   default 10000 (qwen2, qwen3, gemma3: 1000000); --eps default 1e-5 (those: 1e-6)\n"
            "  --sliding-window N  gemma3: attention.sliding_window of the local layers (default 512)\n"
            "  --head-dim N    attention.key_length/value_length (default dim / heads; q is heads x N)\n"
            "  --rope-scaling T, --rope-factor F, --rope-orig-ctx N: rope.scaling.type, .factor,\n"
            "                  .original_context_length\n"
            "  --rope-freqs llama3[:FACTOR:LOW:HIGH:ORIG_CTX]  a rope_freqs.weight tensor (llama only) with the\n"
            "                  factors Llama 3.x's converter derives (defaults 32:1:4:8192, as Llama 3.2)\n"
            "  phi3: fused attn_qkv and ffn_up (gate | up), untied output; --rope-dims N (rope.dimension_count,\n"
            "                  partial rotary), --sliding-window N (attention.sliding_window, default 0: none),\n"
            "                  --rope-scaling longrope with --rope-orig-ctx N < --ctx: rope_factors_long/short\n"
            "                  and rope.scaling.attn_factor sqrt(1 + ln(ctx/N) / ln N), as convert_hf_to_gguf.py\n",
            cli_default_threads(), qz_type_list());
}

static bool parse_ll(const char *flag, const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "error: %s expects an integer in %lld..%lld, got '%s'\n", flag, lo, hi, s);
        return false;
    }
    *out = v;
    return true;
}

static bool parse_f(const char *flag, const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !(v > 0.0f) || isinf(v)) {
        fprintf(stderr, "error: %s expects a positive number, got '%s'\n", flag, s);
        return false;
    }
    *out = v;
    return true;
}

static bool parse_args(int argc, char **argv, synth_cfg *c, bool *help) {
    memset(c, 0, sizeof *c);
    c->kv_heads = -1;
    c->vocab = -1;
    c->ctx = 2048;
    c->seed = 1;
    c->type = UINT32_MAX;
    c->embd_type = c->output_type = c->tied = -1;
    *help = false;
    const long long MAXD = 1 << 20;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = true;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            *help = true;
            return true;
        } else if (strcmp(a, "--tied") == 0) {
            c->tied = 1;
            takes = false;
        } else if (strcmp(a, "--untied") == 0) {
            c->tied = 0;
            takes = false;
        } else if (a[0] != '-' || a[1] == '\0') {
            if (c->out) {
                fprintf(stderr, "error: unexpected argument '%s'\n", a);
                return false;
            }
            c->out = a;
            takes = false;
        } else if (!v) {
            fprintf(stderr, "error: %s needs a value (or is unknown)\n", a);
            return false;
        }
        if (!takes) continue;
        bool ok = true;
        int ro = rope_opts(a, v, c);
        if (ro == 0) ro = phi3_opts(a, v, c);
        if (ro < 0) return false;
        if (ro > 0) {
            i++;
            continue;
        }
        if (strcmp(a, "--arch") == 0) c->arch = v;
        else if (strcmp(a, "--dim") == 0) ok = parse_ll(a, v, 1, MAXD, &c->dim);
        else if (strcmp(a, "--layers") == 0) ok = parse_ll(a, v, 1, 4096, &c->layers);
        else if (strcmp(a, "--heads") == 0) ok = parse_ll(a, v, 1, 4096, &c->heads);
        else if (strcmp(a, "--kv-heads") == 0) ok = parse_ll(a, v, 1, 4096, &c->kv_heads);
        else if (strcmp(a, "--ff") == 0) ok = parse_ll(a, v, 1, MAXD, &c->ff);
        else if (strcmp(a, "--vocab") == 0) ok = parse_ll(a, v, 1, 1 << 24, &c->vocab);
        else if (strcmp(a, "--ctx") == 0) ok = parse_ll(a, v, 1, 1 << 30, &c->ctx);
        else if (strcmp(a, "--seed") == 0) {
            long long s = 0;
            ok = parse_ll(a, v, 0, INT64_MAX, &s);
            c->seed = (uint64_t)s;
        } else if (strcmp(a, "--type") == 0 || strcmp(a, "--embd-type") == 0 || strcmp(a, "--output-type") == 0) {
            uint32_t t;
            if (!qz_parse_type(v, &t)) {
                fprintf(stderr, "error: %s: unknown type '%s' (one of: %s)\n", a, v, qz_type_list());
                return false;
            }
            if (strcmp(a, "--type") == 0) {
                c->type = t;
            } else if (t == KV_I2_S) {
                fprintf(stderr, "error: %s: i2_s cannot hold an embedding or output matrix\n", a);
                return false;
            } else if (strcmp(a, "--embd-type") == 0) {
                c->embd_type = (int)t;
            } else {
                c->output_type = (int)t;
            }
        } else if (strcmp(a, "--vocab-from") == 0) c->vocab_from = v;
        else if (strcmp(a, "--rope-base") == 0) ok = parse_f(a, v, &c->rope_base);
        else if (strcmp(a, "--eps") == 0) ok = parse_f(a, v, &c->eps);
        else if (strcmp(a, "--name") == 0) c->name = v;
        else if (strcmp(a, "-t") == 0 || strcmp(a, "--threads") == 0) ok = parse_ll(a, v, 1, 256, &c->threads);
        else {
            fprintf(stderr, "error: unknown option '%s'\n", a);
            return false;
        }
        if (!ok) return false;
        i++;
    }
    const char *missing = !c->out ? "OUT" : !c->arch ? "--arch" : !c->dim ? "--dim" : !c->layers ? "--layers"
                          : !c->heads ? "--heads" : !c->ff ? "--ff" : (c->vocab < 0 && !c->vocab_from) ? "--vocab"
                          : c->type == UINT32_MAX ? "--type" : NULL;
    if (missing) {
        fprintf(stderr, "error: synth needs %s\n", missing);
        return false;
    }
    return true;
}

int cmd_synth(int argc, char **argv) {
    synth_cfg c;
    bool help;
    if (!parse_args(argc, argv, &c, &help)) {
        fprintf(stderr, "(kvlm synth -h for the options)\n");
        return 2;
    }
    if (help) {
        synth_usage(stdout);
        return 0;
    }
    const bool bitnet = strcmp(c.arch, "bitnet") == 0 || strcmp(c.arch, "bitnet-b1.58") == 0;
    const bool qwen2 = strcmp(c.arch, "qwen2") == 0;
    const bool phi3 = strcmp(c.arch, "phi3") == 0;
    const bool qwen3 = strcmp(c.arch, "qwen3") == 0;
    const bool gemma3 = strcmp(c.arch, "gemma3") == 0;
    if (!bitnet && !qwen2 && !qwen3 && !gemma3 && !phi3 && strcmp(c.arch, "llama") != 0) {
        fprintf(stderr, "error: --arch '%s' is not one of llama, qwen2, qwen3, gemma3, phi3, bitnet, bitnet-b1.58\n", c.arch);
        return 2;
    }
    if (!phi3 && (c.longrope || c.rope_dims)) {
        fprintf(stderr, "error: --rope-scaling longrope and --rope-dims are for --arch phi3\n");
        return 2;
    }
    if (phi3) {
        if (c.tied == 1 || (c.head_dim && c.head_dim * c.heads != c.dim)) {
            fprintf(stderr, "error: phi3 has an untied output and a head of --dim / --heads\n");
            return 2;
        }
        c.tied = 0;
        if (c.longrope && !(c.rope_orig_ctx > 0 && c.rope_orig_ctx < c.ctx)) {
            fprintf(stderr, "error: --rope-scaling longrope needs --rope-orig-ctx N below --ctx\n");
            return 2;
        }
        if (c.rope_dims && (c.dim % c.heads || c.rope_dims > c.dim / c.heads)) {
            fprintf(stderr, "error: --rope-dims %lld exceeds the head size\n", c.rope_dims);
            return 2;
        }
    }
    if (c.kv_heads < 0) c.kv_heads = c.heads;
    if (c.rope_freqs && strcmp(c.arch, "llama") != 0) {
        fprintf(stderr, "error: --rope-freqs is for --arch llama (the others do not read rope_freqs.weight)\n");
        return 2;
    }
    if (!c.head_dim && (c.dim % c.heads != 0 || (c.dim / c.heads) % 2 != 0)) {
        fprintf(stderr, "error: --dim %lld must be a multiple of --heads %lld with an even head size\n", c.dim, c.heads);
        return 2;
    }
    if (c.heads % c.kv_heads != 0) {
        fprintf(stderr, "error: --heads %lld must be a multiple of --kv-heads %lld\n", c.heads, c.kv_heads);
        return 2;
    }
    if (c.tied < 0) c.tied = bitnet ? 1 : 0;
    /* BitNet b1.58 2B4T as published (ggml-model-i2_s.gguf, docs/PARITY.md): microsoft/BitNet's converter
       keeps the token embedding in F16 beside the I2_S matrices and writes no quantization version */
    const bool b158_i2s = strcmp(c.arch, "bitnet-b1.58") == 0 && c.type == KV_I2_S;
    if (b158_i2s && c.embd_type < 0) c.embd_type = KV_F16;
    if (c.swa && !gemma3 && !phi3) {
        fprintf(stderr, "error: --sliding-window is for --arch phi3 and gemma3\n");
        return 2;
    }
    if (gemma3 && !c.swa) c.swa = 512;
    if (c.rope_base == 0.0f) c.rope_base = qwen2 || qwen3 || gemma3 ? 1000000.0f : 10000.0f;
    if (c.eps == 0.0f) c.eps = qwen2 || qwen3 || gemma3 ? 1e-6f : 1e-5f;

    const double t0 = cli_now_s();
    int rc = 1;
    kvlm_error err;
    gguf_ctx *vg = NULL;
    gguf_writer *w = NULL;
    synth_vocab sv = {0};
    stensor *ts = NULL;
    float *rope_factors = NULL;
    kv_tpool *pool = NULL;

    /* the tokenizer */
    if (c.vocab_from) {
        if (kv_gguf_open(c.vocab_from, &vg, &err) != KVLM_OK) {
            fprintf(stderr, "error: --vocab-from '%s': %s\n", c.vocab_from, err.msg);
            goto done;
        }
        const gguf_kv *tk = kv_gguf_find(vg, "tokenizer.ggml.tokens");
        if (!tk || tk->type != GGUF_ARRAY || tk->arr_type != GGUF_STRING || tk->arr_n == 0) {
            fprintf(stderr, "error: --vocab-from '%s' has no tokenizer.ggml.tokens\n", c.vocab_from);
            goto done;
        }
        if (c.vocab >= 0 && (uint64_t)c.vocab != tk->arr_n) {
            fprintf(stderr, "error: --vocab %lld differs from the %llu tokens of '%s'\n", c.vocab,
                    (unsigned long long)tk->arr_n, c.vocab_from);
            goto done;
        }
        if (tk->arr_n > (1 << 24)) {
            fprintf(stderr, "error: '%s' has too many tokens\n", c.vocab_from);
            goto done;
        }
        c.vocab = (long long)tk->arr_n;
    } else {
        if (c.vocab < 260) {
            fprintf(stderr, "error: a generated vocabulary needs --vocab >= 260 (3 special + 256 byte tokens + 1)\n");
            goto done;
        }
        if (!vocab_make(&sv, (uint64_t)c.vocab)) {
            fprintf(stderr, "error: cannot generate a vocabulary of %lld tokens\n", c.vocab);
            goto done;
        }
    }

    const uint64_t E = (uint64_t)c.dim, HD = c.head_dim ? (uint64_t)c.head_dim : E / (uint64_t)c.heads;
    const uint64_t Q = HD * (uint64_t)c.heads, KV = HD * (uint64_t)c.kv_heads;
    const uint64_t F = (uint64_t)c.ff, V = (uint64_t)c.vocab, L = (uint64_t)c.layers;
    const size_t per_layer = 14;
    ts = calloc(6 + per_layer * (size_t)L, sizeof *ts);
    if (!ts || kv_gguf_writer_new(&w, &err) != KVLM_OK) {
        fprintf(stderr, "error: out of memory\n");
        goto done;
    }
    const int n_threads = qz_threads((int)c.threads);
    if (n_threads > 1 && kv_tpool_new(n_threads, &pool, &err) != KVLM_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        goto done;
    }

    /* metadata */
    char k[128], name[128];
#define AK(s) (snprintf(k, sizeof k, "%s." s, c.arch), k)
    if (c.name) snprintf(name, sizeof name, "%s", c.name);
    else snprintf(name, sizeof name, "kvlm-synth-%s", c.arch);
    kv_gguf_writer_set_str(w, "general.architecture", c.arch, NULL);
    kv_gguf_writer_set_str(w, "general.name", name, NULL);
    kv_gguf_writer_set_u32(w, AK("vocab_size"), (uint32_t)V, NULL);
    kv_gguf_writer_set_u32(w, AK("context_length"), (uint32_t)c.ctx, NULL);
    kv_gguf_writer_set_u32(w, AK("embedding_length"), (uint32_t)E, NULL);
    kv_gguf_writer_set_u32(w, AK("block_count"), (uint32_t)L, NULL);
    kv_gguf_writer_set_u32(w, AK("feed_forward_length"), (uint32_t)F, NULL);
    kv_gguf_writer_set_u32(w, AK("attention.head_count"), (uint32_t)c.heads, NULL);
    kv_gguf_writer_set_u32(w, AK("attention.head_count_kv"), (uint32_t)c.kv_heads, NULL);
    kv_gguf_writer_set_f32(w, AK("attention.layer_norm_rms_epsilon"), c.eps, NULL);
    kv_gguf_writer_set_u32(w, AK("rope.dimension_count"), (uint32_t)(c.rope_dims ? c.rope_dims : (long long)HD), NULL);
    kv_gguf_writer_set_f32(w, AK("rope.freq_base"), c.rope_base, NULL);
    if (c.head_dim) {
        kv_gguf_writer_set_u32(w, AK("attention.key_length"), (uint32_t)HD, NULL);
        kv_gguf_writer_set_u32(w, AK("attention.value_length"), (uint32_t)HD, NULL);
    }
    if (c.rope_scaling) kv_gguf_writer_set_str(w, AK("rope.scaling.type"), c.rope_scaling, NULL);
    if (c.rope_factor > 0.0f) kv_gguf_writer_set_f32(w, AK("rope.scaling.factor"), c.rope_factor, NULL);
    if (c.rope_orig_ctx) kv_gguf_writer_set_u32(w, AK("rope.scaling.original_context_length"), (uint32_t)c.rope_orig_ctx, NULL);
    if (phi3 || gemma3) kv_gguf_writer_set_u32(w, AK("attention.sliding_window"), (uint32_t)c.swa, NULL);
    if (c.longrope) { /* convert_hf_to_gguf.py's Phi3MiniModel: sqrt(1 + ln(scale) / ln(orig)) for scale > 1 */
        const double scale = (double)c.ctx / (double)c.rope_orig_ctx;
        const double af = scale > 1.0 ? sqrt(1.0 + log(scale) / log((double)c.rope_orig_ctx)) : 1.0;
        kv_gguf_writer_set_f32(w, AK("rope.scaling.attn_factor"), (float)af, NULL);
    }
#undef AK
    kv_gguf_writer_set_u32(w, "general.file_type", (uint32_t)qz_ftype(c.type), NULL);
    if (!b158_i2s) kv_gguf_writer_set_u32(w, "general.quantization_version", 2, NULL);
    if (vg) {
        for (uint64_t i = 0; i < vg->n_kv; i++)
            if (strncmp(vg->kv[i].key, "tokenizer.", 10) == 0) kv_gguf_writer_set_kv(w, &vg->kv[i], NULL);
    } else {
        kv_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama", NULL);
        kv_gguf_writer_set_str(w, "tokenizer.ggml.pre", "default", NULL);
        kv_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)sv.tok, sv.n, NULL);
        kv_gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_FLOAT32, sv.score, sv.n, NULL);
        kv_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_INT32, sv.type, sv.n, NULL);
        kv_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1, NULL);
        kv_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2, NULL);
        kv_gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0, NULL);
        kv_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", true, NULL);
        kv_gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", false, NULL);
    }

    /* tensors */
    size_t nt = 0;
    uint64_t n_params = 0;
    int n_fallback = 0;
    const stensor *first_fb = NULL;
#define T(kind_, ne0_, ne1_, ...)                                                                         \
    do {                                                                                                  \
        stensor *t_ = &ts[nt++];                                                                          \
        snprintf(t_->name, sizeof t_->name, __VA_ARGS__);                                                 \
        t_->kind = (kind_);                                                                               \
        t_->ne0 = (ne0_);                                                                                 \
        t_->ne1 = (ne1_);                                                                                 \
        t_->seed = c.seed;                                                                                \
        t_->pool = pool;                                                                                  \
        bool mat_ = (kind_) == K_EMBD || (kind_) == K_GAUSS || (kind_) == K_TERNARY;                      \
        t_->want = mat_ ? qz_pick(c.type, qz_role(t_->name), !c.tied, t_->ne0, c.embd_type, c.output_type) \
                        : KV_F32;                                                                         \
        bool fell_ = false;                                                                               \
        t_->type = qz_fallback(t_->want, t_->ne0, &fell_);                                                \
        if (fell_ && !first_fb) first_fb = t_;                                                              \
        n_fallback += fell_;                                                                              \
        n_params += t_->ne0 * t_->ne1;                                                                    \
        uint64_t ne_[2] = {t_->ne0, t_->ne1};                                                             \
        kv_gguf_writer_add_tensor_fill(w, t_->name, mat_ ? 2 : 1, ne_, t_->type, fill_synth, t_, NULL);      \
    } while (0)
    const gen_kind MAT = bitnet ? K_TERNARY : K_GAUSS, NORM = bitnet ? K_NORM_JITTER : K_NORM;
    if (c.rope_freqs) { /* first, where convert_hf_to_gguf.py puts it */
        rope_factors = malloc((size_t)(HD / 2) * sizeof *rope_factors);
        if (!rope_factors) {
            fprintf(stderr, "error: out of memory\n");
            goto done;
        }
        llama3_factors(&c, c.rope_base, (int)HD, rope_factors);
        ts[nt].values = rope_factors;
        T(K_VALUES, HD / 2, 1, "rope_freqs.weight");
    }
    size_t e0 = nt; /* the embedding's entry */
    if (c.longrope) { /* first, as the converter's extra tensors */
        rope_factors = malloc((size_t)HD * sizeof *rope_factors);
        if (!rope_factors) {
            fprintf(stderr, "error: out of memory\n");
            goto done;
        }
        longrope_factors(&c, HD, rope_factors, rope_factors + HD / 2);
        ts[nt].values = rope_factors;
        T(K_VALUES, HD / 2, 1, "rope_factors_long.weight");
        ts[nt].values = rope_factors + HD / 2;
        T(K_VALUES, HD / 2, 1, "rope_factors_short.weight");
        e0 = nt;
    }
    T(K_EMBD, E, V, "token_embd.weight");
    T(NORM, E, 1, "output_norm.weight");
    if (!c.tied) T(K_GAUSS, E, V, "output.weight");
    for (uint64_t l = 0; phi3 && l < L; l++) { /* llama.cpp's LLM_ARCH_PHI3 tensors */
        unsigned long long li = (unsigned long long)l;
        T(NORM, E, 1, "blk.%llu.attn_norm.weight", li);
        T(MAT, E, Q + 2 * KV, "blk.%llu.attn_qkv.weight", li);
        T(MAT, Q, E, "blk.%llu.attn_output.weight", li);
        T(NORM, E, 1, "blk.%llu.ffn_norm.weight", li);
        T(MAT, E, 2 * F, "blk.%llu.ffn_up.weight", li);
        T(MAT, F, E, "blk.%llu.ffn_down.weight", li);
    }
    for (uint64_t l = 0; !phi3 && l < L; l++) {
        unsigned long long li = (unsigned long long)l;
        T(NORM, E, 1, "blk.%llu.attn_norm.weight", li);
        T(MAT, E, Q, "blk.%llu.attn_q.weight", li);
        T(MAT, E, KV, "blk.%llu.attn_k.weight", li);
        T(MAT, E, KV, "blk.%llu.attn_v.weight", li);
        if (qwen2) {
            T(K_BIAS, Q, 1, "blk.%llu.attn_q.bias", li);
            T(K_BIAS, KV, 1, "blk.%llu.attn_k.bias", li);
            T(K_BIAS, KV, 1, "blk.%llu.attn_v.bias", li);
        }
        if (qwen3 || gemma3) {
            T(K_NORM_JITTER, HD, 1, "blk.%llu.attn_q_norm.weight", li);
            T(K_NORM_JITTER, HD, 1, "blk.%llu.attn_k_norm.weight", li);
        }
        if (bitnet) T(K_NORM_JITTER, Q, 1, "blk.%llu.attn_sub_norm.weight", li);
        T(MAT, Q, E, "blk.%llu.attn_output.weight", li);
        if (gemma3) T(K_NORM_JITTER, E, 1, "blk.%llu.post_attention_norm.weight", li);
        T(NORM, E, 1, "blk.%llu.ffn_norm.weight", li);
        T(MAT, E, F, "blk.%llu.ffn_gate.weight", li);
        T(MAT, E, F, "blk.%llu.ffn_up.weight", li);
        if (bitnet) T(K_NORM_JITTER, F, 1, "blk.%llu.ffn_sub_norm.weight", li);
        T(MAT, F, E, "blk.%llu.ffn_down.weight", li);
        if (gemma3) T(K_NORM_JITTER, E, 1, "blk.%llu.post_ffw_norm.weight", li);
    }
#undef T
    if (n_fallback)
        fprintf(stderr, "warning: %d tensors do not fit their type's blocks and fall back (e.g. %s: %llu columns, %s -> %s)\n",
                n_fallback, first_fb->name, (unsigned long long)first_fb->ne0, qz_type_name(first_fb->want),
                qz_type_name(first_fb->type));

    g_progress = (synth_progress){.total = nt};
    cli_progress_start(&g_progress.p, "synth");
    const kvlm_status wst = kv_gguf_writer_write(w, c.out, &err);
    cli_progress_end(&g_progress.p);
    if (wst != KVLM_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        goto done;
    }
    uint64_t fsize = 0;
    kv_gguf_writer_file_size(w, &fsize);
    const uint32_t et = ts[e0].type, ot = c.tied ? et : ts[e0 + 2].type;
    printf("synth: %s: %s, dim %lld, %lld layers, %lld heads (%lld kv), ff %lld, vocab %lld, ctx %lld; %.2fM params; "
           "%s (embedding %s, output %s%s); %llu bytes; %.2f s\n",
           c.out, c.arch, c.dim, c.layers, c.heads, c.kv_heads, c.ff, c.vocab, c.ctx, n_params / 1e6,
           qz_type_name(c.type), qz_type_name(et), qz_type_name(ot), c.tied ? ", tied" : "", (unsigned long long)fsize,
           cli_now_s() - t0);
    rc = 0;
done:
    kv_gguf_writer_free(w);
    kv_tpool_free(pool);
    free(ts);
    free(rope_factors);
    vocab_free(&sv);
    kv_gguf_close(vg);
    return rc;
}
