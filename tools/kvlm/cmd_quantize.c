/* kvlm quantize IN OUT TYPE: converts an F32/F16/BF16 GGUF to TYPE the way
 * llama-quantize does (same tensor choices, same reference quantizers, same
 * tensor order and metadata), so that for the same choices the output is
 * byte-identical to llama-quantize's.
 * The type helpers it shares with `kvlm synth` are in qz.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cli.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/tpool.h"
#include "gguf/gguf.h"
#include "gguf/gguf_write.h"
#include "qz.h"
#include "quant/quant.h"

/* ------------------------------------------------------------ quantize */

typedef struct qjob {
    const gguf_tensor *src;
    uint32_t type;
    kv_tpool *pool;
} qjob;

/* fill callback: source tensor -> f32 -> the new type */
static kvlm_status fill_quant(void *user, const char *name, void *dst, uint64_t size, kvlm_error *err) {
    const qjob *j = user;
    const gguf_tensor *s = j->src;
    const uint64_t n = s->n_elements, ne0 = s->ne[0];
    const float *f = s->data;
    float *tmp = NULL;
    (void)size;
    if (s->type != KV_F32) {
        const kv_quant_traits *q = kv_quant_get(s->type);
        if (!q || !q->to_float)
            return kv_fail(err, KVLM_ERR_UNSUPPORTED, "%s: cannot convert %s to f32", name, kv_dtype_name(s->type));
        tmp = n <= SIZE_MAX / sizeof(float) ? malloc((size_t)n * sizeof(float)) : NULL;
        if (!tmp) return kv_fail(err, KVLM_ERR_NOMEM, "%s: out of memory for %llu floats", name, (unsigned long long)n);
        q->to_float(s->data, tmp, (int64_t)n);
        f = tmp;
    }
    bool ok = qz_convert_mt(j->pool, f, j->type, ne0, n / ne0, dst);
    free(tmp);
    if (!ok) return kv_fail(err, KVLM_ERR_UNSUPPORTED, "%s: cannot quantize to %s", name, kv_dtype_name(j->type));
    return KVLM_OK;
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

static bool ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

/* ggml_n_dims: the dimensions up to the last one that is not 1 */
static uint32_t n_dims_eff(const gguf_tensor *t) {
    uint32_t d = GGUF_MAX_DIMS;
    while (d > 1 && t->ne[d - 1] == 1) d--;
    return d;
}

/* llama-quantize's rule for which tensors are quantized at all. */
static bool quantizable(const gguf_tensor *t) {
    const char *n = t->name;
    static const char *const never[] = {"_norm.weight",          "ffn_gate_inp.weight",      "ssm_conv1d.weight",
                                        "time_mix_first.weight", "time_mix_w1.weight",       "time_mix_w2.weight",
                                        "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
                                        "time_mix_lerp_fused.weight", "attn_rel_b.weight"};
    if (!ends_with(n, "weight") || n_dims_eff(t) < 2) return false;
    for (size_t i = 0; i < sizeof never / sizeof never[0]; i++)
        if (strstr(n, never[i])) return false;
    return strcmp(n, "position_embd.weight") != 0 && strcmp(n, "token_types.weight") != 0;
}

static void quantize_usage(FILE *fp) {
    fprintf(fp,
            "usage: kvlm quantize IN.gguf OUT.gguf TYPE [--embd-type T] [--output-type T] [-v]\n"
            "  Quantizes an F32/F16/BF16 GGUF as llama-quantize does: 2-D weights become TYPE\n"
            "  (rows that do not fit its blocks fall back: q4_k->q5_0, q5_k->q5_1, q6_k->q8_0,\n"
            "  q2_k/q3_k/tq*/i2_s->q4_0, otherwise f16), output.weight q6_k (q8_0 when its rows\n"
            "  do not fit, or for q8_0 and ternary targets), norms and biases f32.\n"
            "  TYPE: %s\n"
            "  --embd-type T / --output-type T   override token_embd.weight / output.weight\n"
            "  -t N                               threads (default: the CPUs, at most 8)\n"
            "  -v                                 print every tensor's conversion\n",
            qz_type_list());
}

static bool parse_type_flag(const char *flag, const char *s, int *out) {
    uint32_t t;
    if (!qz_parse_type(s, &t)) {
        fprintf(stderr, "error: %s: unknown type '%s' (one of: %s)\n", flag, s, qz_type_list());
        return false;
    }
    if (t == KV_I2_S) {
        fprintf(stderr, "error: %s: i2_s cannot hold an embedding or output matrix (one scale per tensor)\n", flag);
        return false;
    }
    *out = (int)t;
    return true;
}

int cmd_quantize(int argc, char **argv) {
    const char *pos[3] = {0};
    int npos = 0, embd_type = -1, output_type = -1, n_threads = 0;
    bool verbose = false;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            quantize_usage(stdout);
            return 0;
        } else if (strcmp(a, "--embd-type") == 0 || strcmp(a, "--token-embedding-type") == 0 ||
                   strcmp(a, "--output-type") == 0 || strcmp(a, "--output-tensor-type") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "error: %s needs a value\n", a);
                return 2;
            }
            bool embd = strstr(a, "emb") != NULL;
            if (!parse_type_flag(a, argv[++i], embd ? &embd_type : &output_type)) return 2;
        } else if (strcmp(a, "-t") == 0 || strcmp(a, "--threads") == 0) {
            char *end;
            long v = i + 1 < argc ? strtol(argv[i + 1], &end, 10) : 0;
            if (i + 1 >= argc || *end || v < 1 || v > 256) {
                fprintf(stderr, "error: %s expects a thread count in 1..256\n", a);
                return 2;
            }
            n_threads = (int)v;
            i++;
        } else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
            verbose = true;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "error: unknown option '%s'\n", a);
            quantize_usage(stderr);
            return 2;
        } else if (npos < 3) {
            pos[npos++] = a;
        } else {
            fprintf(stderr, "error: unexpected argument '%s'\n", a);
            return 2;
        }
    }
    if (npos != 3) {
        quantize_usage(stderr);
        return 2;
    }
    const char *in = pos[0], *out = pos[1];
    uint32_t target;
    if (!qz_parse_type(pos[2], &target)) {
        fprintf(stderr, "error: unknown type '%s' (one of: %s)\n", pos[2], qz_type_list());
        return 2;
    }

    double t0 = cli_now_s();
    kvlm_error err;
    gguf_ctx *g = NULL;
    if (gguf_open(in, &g, &err) != KVLM_OK) {
        fprintf(stderr, "error: cannot read '%s': %s\n", in, err.msg);
        return 1;
    }
    int rc = 1;
    gguf_writer *w = NULL;
    kv_tpool *pool = NULL;
    const gguf_tensor **order = NULL;
    qjob *jobs = NULL;
    bool has_output = false;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const gguf_tensor *t = &g->tensors[i];
        if (!qz_is_float(t->type)) {
            fprintf(stderr,
                    "error: '%s' is already quantized (tensor '%s' is %s); quantize needs an F32, F16 or BF16 model\n",
                    in, t->name, kv_dtype_name(t->type));
            goto done;
        }
        if (strcmp(t->name, "output.weight") == 0) has_output = true;
    }
    if (g->n_tensors == 0) {
        fprintf(stderr, "error: '%s' has no tensors\n", in);
        goto done;
    }
    if (gguf_writer_new(&w, &err) != KVLM_OK) goto fail;
    if (qz_threads(n_threads) > 1 && kv_tpool_new(qz_threads(n_threads), &pool, &err) != KVLM_OK) goto fail;
    /* metadata: everything, then (moved to the end, as llama-quantize does)
     * the quantization version and the file type; no split keys */
    for (uint64_t i = 0; i < g->n_kv; i++) gguf_writer_set_kv(w, &g->kv[i], NULL);
    gguf_writer_remove(w, "split.no");
    gguf_writer_remove(w, "split.count");
    gguf_writer_remove(w, "split.tensors.count");
    gguf_writer_set_u32(w, "general.quantization_version", 2, NULL);
    if (qz_ftype(target) >= 0) gguf_writer_set_u32(w, "general.file_type", (uint32_t)qz_ftype(target), NULL);

    order = malloc((size_t)g->n_tensors * sizeof *order);
    jobs = calloc((size_t)g->n_tensors, sizeof *jobs);
    if (!order || !jobs) {
        fprintf(stderr, "error: out of memory\n");
        goto done;
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) order[i] = &g->tensors[i];
    qsort(order, (size_t)g->n_tensors, sizeof *order, cmp_weights);

    uint64_t bytes_in = 0, bytes_out = 0;
    int n_quant = 0, n_fallback = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const gguf_tensor *t = order[i];
        uint32_t nt = t->type;
        bool fell = false;
        if (quantizable(t)) {
            uint32_t want = qz_pick(target, qz_role(t->name), has_output, t->ne[0], embd_type, output_type);
            nt = qz_fallback(want, t->ne[0], &fell);
            if (fell && (verbose || n_fallback == 0))
                fprintf(stderr, "warning: %s: %llu columns do not fit %s blocks, using %s%s\n", t->name,
                        (unsigned long long)t->ne[0], qz_type_name(want), qz_type_name(nt),
                        verbose ? "" : " (-v lists every fallback)");
            n_fallback += fell;
        } else if (n_dims_eff(t) == 1) {
            nt = KV_F32; /* norms and biases stay (or become) f32 */
        }
        uint64_t ne[GGUF_MAX_DIMS];
        for (uint32_t d = 0; d < t->n_dims; d++) ne[d] = t->ne[d];
        if (nt == t->type) {
            gguf_writer_add_tensor(w, t->name, t->n_dims, ne, t->type, t->data, t->n_bytes, NULL);
        } else {
            jobs[i] = (qjob){t, nt, pool};
            gguf_writer_add_tensor_fill(w, t->name, t->n_dims, ne, nt, fill_quant, &jobs[i], NULL);
            n_quant++;
        }
        uint64_t nb = 0;
        kv_dtype_tensor_bytes(nt, t->ne[0], t->n_elements, &nb);
        bytes_in += t->n_bytes;
        bytes_out += nb;
        if (verbose)
            printf("[%3llu/%3llu] %-32s [%6llu x %6llu] %-5s -> %-5s %10llu bytes\n", (unsigned long long)i + 1,
                   (unsigned long long)g->n_tensors, t->name, (unsigned long long)t->ne[0],
                   (unsigned long long)(t->n_elements / t->ne[0]), kv_dtype_name(t->type), kv_dtype_name(nt),
                   (unsigned long long)nb);
    }
    if (gguf_writer_write(w, out, &err) != KVLM_OK) goto fail;
    uint64_t fsize = 0;
    gguf_writer_file_size(w, &fsize);
    printf("quantize: %s -> %s (%s): %llu tensors, %d converted, %d fallbacks, %.2f MiB -> %.2f MiB, %llu bytes, "
           "%.2f s\n",
           in, out, qz_type_name(target), (unsigned long long)g->n_tensors, n_quant, n_fallback, bytes_in / 1048576.0,
           bytes_out / 1048576.0, (unsigned long long)fsize, cli_now_s() - t0);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "error: %s\n", err.msg);
done:
    gguf_writer_free(w);
    kv_tpool_free(pool);
    free(order);
    free(jobs);
    gguf_close(g);
    return rc;
}
