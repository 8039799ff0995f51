/* kvlm quantize IN OUT TYPE: quantizes a GGUF the way llama-quantize does:
 * its file types (Q4_K_M, 15, ...), its per-tensor type mixes, the same
 * reference quantizers, tensor order and metadata, so that the output is
 * byte-identical to llama-quantize's wherever kvlm has the types it picks.
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

typedef struct qprogress {
    cli_progress p;
    int done, total;
} qprogress;

typedef struct qjob {
    const gguf_tensor *src;
    uint32_t type;
    kv_tpool *pool;
    qprogress *progress;
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
    if (j->progress) {
        char detail[160];
        snprintf(detail, sizeof detail, "%s %s -> %s", name, kv_dtype_name(s->type), kv_dtype_name(j->type));
        cli_progress_update(&j->progress->p, j->progress->done, j->progress->total, detail);
    }
    bool ok = qz_convert_mt(j->pool, f, j->type, ne0, n / ne0, dst);
    free(tmp);
    if (j->progress) j->progress->done++;
    if (!ok) return kv_fail(err, KVLM_ERR_UNSUPPORTED, "%s: cannot quantize to %s", name, kv_dtype_name(j->type));
    return KVLM_OK;
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
            "usage: kvlm quantize [options] IN.gguf [OUT.gguf] TYPE [NTHREADS]\n"
            "  Quantizes a GGUF as llama-quantize does: its file types and their per-tensor mixes (attn_v,\n"
            "  ffn_down, attn_output and the output get more bits in the _M/_L types), rows that do not fit a\n"
            "  type's blocks fall back (q4_K->q5_0, q5_K->q5_1, q6_K->q8_0, q2_K/q3_K->q4_0 where llama-quantize\n"
            "  takes iq4_nl, which kvlm has not, tq*->q4_0, then f16), norms and biases f32. Without OUT, writes\n"
            "  ggml-model-TYPE.gguf beside IN. A progress line per tensor on a terminal.\n"
            "options:\n"
            "  --pure                      every weight TYPE: no mixes (the overrides below still apply)\n"
            "  --allow-requantize          accept quantized inputs (dequantized, then quantized again)\n"
            "  --leave-output-tensor       leave output.weight as it is\n"
            "  --output-tensor-type T      the type of output.weight (T: %s)\n"
            "  --token-embedding-type T    the type of token_embd.weight\n"
            "  -t, --threads N             threads (default: %d, the physical cores)\n"
            "  -v, --verbose               list every tensor's type on stdout\n"
            "  -h, --help                  this help\n"
            "TYPE, by name (any case) or number:\n",
            qz_type_list(), cli_default_threads());
    qz_print_ftypes(fp);
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

static uint32_t arch_u32(const gguf_ctx *g, const char *arch, const char *key, uint32_t def) {
    char k[160];
    uint32_t v;
    snprintf(k, sizeof k, "%s.%s", arch, key);
    return kv_gguf_get_u32(g, k, &v) ? v : def;
}

int cmd_quantize(int argc, char **argv) {
    const char *pos[4] = {0};
    int npos = 0, embd_type = -1, output_type = -1, n_threads = 0;
    bool verbose = false, pure = false, requant = false, leave_output = false;
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
        } else if (strcmp(a, "--pure") == 0) {
            pure = true;
        } else if (strcmp(a, "--allow-requantize") == 0) {
            requant = true;
        } else if (strcmp(a, "--leave-output-tensor") == 0) {
            leave_output = true;
        } else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
            verbose = true;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "error: unknown option '%s'\n", a);
            quantize_usage(stderr);
            return 2;
        } else if (npos < 4) {
            pos[npos++] = a;
        } else {
            fprintf(stderr, "error: unexpected argument '%s'\n", a);
            return 2;
        }
    }
    /* IN [OUT] TYPE [NTHREADS], as llama-quantize: TYPE is the first of the second and third that is one */
    const qz_ftype_opt *ft = npos >= 2 ? qz_parse_ftype(pos[1]) : NULL;
    const char *in = pos[0], *out = NULL, *nthreads_arg = NULL;
    char out_buf[4096];
    if (ft && npos <= 3) {
        const char *slash = strrchr(in, '/');
        snprintf(out_buf, sizeof out_buf, "%.*sggml-model-%s.gguf", slash ? (int)(slash - in + 1) : 0, in, ft->name);
        out = out_buf;
        nthreads_arg = npos == 3 ? pos[2] : NULL;
    } else if (npos >= 3) {
        out = pos[1];
        ft = qz_parse_ftype(pos[2]);
        nthreads_arg = npos == 4 ? pos[3] : NULL;
        if (!ft) {
            fprintf(stderr, "error: unknown type '%s' (kvlm quantize --help lists them)\n", pos[2]);
            return 2;
        }
    } else {
        if (npos == 2) fprintf(stderr, "error: unknown type '%s' (kvlm quantize --help lists them)\n", pos[1]);
        quantize_usage(stderr);
        return 2;
    }
    if (nthreads_arg) {
        char *end;
        long v = strtol(nthreads_arg, &end, 10);
        if (*end || end == nthreads_arg || v < 1 || v > 256) {
            fprintf(stderr, "error: NTHREADS: expected a thread count in 1..256, got '%s'\n", nthreads_arg);
            return 2;
        }
        n_threads = (int)v;
    }
    if (ft->why) {
        fprintf(stderr, "error: cannot make %s: %s\n", ft->name, ft->why);
        return 2;
    }
    const bool copy = strcmp(ft->name, "COPY") == 0;

    double t0 = cli_now_s();
    kvlm_error err;
    gguf_ctx *g = NULL;
    if (kv_gguf_open(in, &g, &err) != KVLM_OK) {
        fprintf(stderr, "error: cannot read '%s': %s\n", in, err.msg);
        return 1;
    }
    int rc = 1;
    gguf_writer *w = NULL;
    kv_tpool *pool = NULL;
    const gguf_tensor **order = NULL;
    qjob *jobs = NULL;
    qprogress progress = {0};
    qz_mix mix = {.ftype = ft->ftype, .def_type = ft->def_type, .pure = pure, .embd_type = embd_type,
                  .output_type = output_type};
    gguf_str arch_s;
    char arch[64] = "";
    if (kv_gguf_get_str(g, "general.architecture", &arch_s))
        snprintf(arch, sizeof arch, "%.*s", (int)(arch_s.len < 63 ? arch_s.len : 63), arch_s.data);
    const uint32_t n_head = arch_u32(g, arch, "attention.head_count", 0);
    const uint32_t n_head_kv = arch_u32(g, arch, "attention.head_count_kv", n_head);
    mix.n_layer = (int)arch_u32(g, arch, "block_count", 0);
    mix.n_expert = (int)arch_u32(g, arch, "expert_count", 0);
    mix.n_gqa = n_head_kv ? (int)(n_head / n_head_kv) : 0;
    mix.falcon = strcmp(arch, "falcon") == 0;
    mix.is_70b = strcmp(arch, "llama") == 0 && mix.n_layer == 80 && n_head != n_head_kv;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const char *n = g->tensors[i].name;
        if (strstr(n, "attn_v.weight") || strstr(n, "attn_qkv.weight") || strstr(n, "attn_kv_b.weight"))
            mix.n_attention_wv++;
        else if (strcmp(n, "output.weight") == 0)
            mix.has_output = true;
    }
    if (g->n_tensors == 0) {
        fprintf(stderr, "error: '%s' has no tensors\n", in);
        goto done;
    }
    if (kv_gguf_writer_new(&w, &err) != KVLM_OK) goto fail;
    if (qz_threads(n_threads) > 1 && kv_tpool_new(qz_threads(n_threads), &pool, &err) != KVLM_OK) goto fail;
    /* metadata: everything, then (moved to the end, as llama-quantize does)
     * the quantization version and the file type; no split keys */
    for (uint64_t i = 0; i < g->n_kv; i++) kv_gguf_writer_set_kv(w, &g->kv[i], NULL);
    kv_gguf_writer_remove(w, "split.no");
    kv_gguf_writer_remove(w, "split.count");
    kv_gguf_writer_remove(w, "split.tensors.count");
    kv_gguf_writer_set_u32(w, "general.quantization_version", 2, NULL);
    {
        bool guessed;
        const int in_ftype = qz_file_ftype(g, &guessed);
        /* COPY keeps the input's file type (llama.cpp's guess, marked with its 1024 bit, when it has none) */
        const uint32_t out_ftype = copy ? (uint32_t)in_ftype | (guessed ? 1024u : 0u) : (uint32_t)ft->ftype;
        kv_gguf_writer_set_u32(w, "general.file_type", out_ftype, NULL);
    }

    order = malloc((size_t)g->n_tensors * sizeof *order);
    jobs = calloc((size_t)g->n_tensors, sizeof *jobs);
    if (!order || !jobs) {
        fprintf(stderr, "error: out of memory\n");
        goto done;
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) order[i] = &g->tensors[i];
    qz_sort_weights(order, (size_t)g->n_tensors);

    uint64_t bytes_in = 0, bytes_out = 0;
    int n_quant = 0, n_fallback = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const gguf_tensor *t = order[i];
        uint32_t nt = t->type;
        bool fell = false;
        const bool leave = copy || (leave_output && strcmp(t->name, "output.weight") == 0);
        if (!leave && quantizable(t)) {
            if (!qz_mix_type(&mix, t->name, t->ne[0], &nt, &fell)) {
                fprintf(stderr, "error: '%s': cannot tell the layer of %s\n", in, t->name);
                goto done;
            }
            if (fell && (verbose || n_fallback == 0))
                fprintf(stderr, "warning: %s: %llu columns do not fit the chosen type's blocks, using %s%s\n", t->name,
                        (unsigned long long)t->ne[0], qz_type_name(nt), verbose ? "" : " (-v lists every fallback)");
            n_fallback += fell;
        } else if (!leave && n_dims_eff(t) == 1) {
            nt = KV_F32; /* norms and biases stay (or become) f32 */
        }
        if (nt != t->type && !qz_is_float(t->type) && !requant) {
            fprintf(stderr,
                    "error: '%s' is already quantized (tensor '%s' is %s); requantizing needs --allow-requantize "
                    "(and loses quality: quantize from the F32, F16 or BF16 model if there is one)\n",
                    in, t->name, kv_dtype_name(t->type));
            goto done;
        }
        if (nt != t->type) {
            const kv_quant_traits *q = kv_quant_get(t->type);
            if (t->type != KV_F32 && (!q || !q->to_float)) {
                fprintf(stderr, "error: %s: kvlm cannot read %s tensors\n", t->name, kv_dtype_name(t->type));
                goto done;
            }
        }
        uint64_t ne[GGUF_MAX_DIMS];
        for (uint32_t d = 0; d < t->n_dims; d++) ne[d] = t->ne[d];
        if (nt == t->type) {
            kv_gguf_writer_add_tensor(w, t->name, t->n_dims, ne, t->type, t->data, t->n_bytes, NULL);
        } else {
            jobs[i] = (qjob){t, nt, pool, &progress};
            kv_gguf_writer_add_tensor_fill(w, t->name, t->n_dims, ne, nt, fill_quant, &jobs[i], NULL);
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
    progress.total = n_quant;
    cli_progress_start(&progress.p, "quantize");
    kvlm_status wst = kv_gguf_writer_write(w, out, &err);
    cli_progress_end(&progress.p);
    if (wst != KVLM_OK) goto fail;
    uint64_t fsize = 0;
    kv_gguf_writer_file_size(w, &fsize);
    printf("quantize: %s -> %s (%s): %llu tensors, %d converted, %d fallbacks, %.2f MiB -> %.2f MiB, %llu bytes, "
           "%.2f s\n",
           in, out, ft->name, (unsigned long long)g->n_tensors, n_quant, n_fallback, bytes_in / 1048576.0,
           bytes_out / 1048576.0, (unsigned long long)fsize, cli_now_s() - t0);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "error: %s\n", err.msg);
done:
    kv_gguf_writer_free(w);
    kv_tpool_free(pool);
    free(order);
    free(jobs);
    kv_gguf_close(g);
    return rc;
}
