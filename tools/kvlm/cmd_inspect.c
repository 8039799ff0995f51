/* kvlm inspect: GGUF metadata, hyperparameters and tensor types. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "core/dtype.h"
#include "gguf/gguf.h"

static void print_value(const gguf_kv *kv) {
    switch (kv->type) {
    case GGUF_STRING:
        if (kv->v.str.len > 80) printf("'%.*s...' (%llu bytes)", 80, kv->v.str.data, (unsigned long long)kv->v.str.len);
        else printf("'%.*s'", (int)kv->v.str.len, kv->v.str.data);
        break;
    case GGUF_ARRAY: printf("[%s x %llu]", kv_gguf_vtype_name(kv->arr_type), (unsigned long long)kv->arr_n); break;
    case GGUF_FLOAT32: case GGUF_FLOAT64: printf("%g", kv->v.f64); break;
    case GGUF_BOOL: printf("%s", kv->v.u64 ? "true" : "false"); break;
    case GGUF_INT8: case GGUF_INT16: case GGUF_INT32: case GGUF_INT64: printf("%lld", (long long)kv->v.i64); break;
    default: printf("%llu", (unsigned long long)kv->v.u64); break;
    }
}

int cmd_inspect(int argc, char **argv) {
    cli_args a;
    if (!cli_parse(argc, argv, 2, &a)) return 2;
    if (a.help || !a.model) {
        cli_usage("inspect", a.help ? stdout : stderr);
        return a.help ? 0 : 2;
    }
    gguf_ctx *g;
    kvlm_error err;
    if (kv_gguf_open(a.model, &g, &err) != KVLM_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        return 1;
    }
    printf("file: %s\nGGUF version %u, %llu metadata keys, %llu tensors, alignment %u, data at %llu\n", a.model,
           g->version, (unsigned long long)g->n_kv, (unsigned long long)g->n_tensors, g->alignment,
           (unsigned long long)g->data_offset);
    printf("\nmetadata:\n");
    for (uint64_t i = 0; i < g->n_kv; i++) {
        printf("  %-44s %-7s ", g->kv[i].key, kv_gguf_vtype_name(g->kv[i].type));
        print_value(&g->kv[i]);
        printf("\n");
    }
    uint64_t count[KV_DTYPE_COUNT] = {0}, bytes[KV_DTYPE_COUNT] = {0};
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        count[g->tensors[i].type]++;
        bytes[g->tensors[i].type] += g->tensors[i].n_bytes;
    }
    printf("\ntensor types:\n");
    for (int t = 0; t < KV_DTYPE_COUNT; t++)
        if (count[t]) printf("  %-8s %5llu tensors %12llu bytes\n", kv_dtype_name((uint32_t)t),
                             (unsigned long long)count[t], (unsigned long long)bytes[t]);
    kv_gguf_close(g);

    kvlm_model *m = cli_load_model(&a);
    if (!m) return 1;
    kvlm_model_info mi;
    kvlm_model_get_info(m, &mi);
    printf("\nmodel:\n  architecture   %s\n  vocabulary     %d tokens (bos %d, eos %d)\n  context        %d\n"
           "  embedding      %d\n  layers         %d\n  heads          %d (kv %d, head dim %d)\n  ffn            %d\n"
           "  rope           %d dims, base %g, scale %g\n  rms eps        %g\n  output         %s\n"
           "  parameters     %llu (%.2f M)\n  weight bytes   %llu\n",
           mi.arch, mi.n_vocab, kvlm_token_bos(m), kvlm_token_eos(m), mi.n_ctx_train, mi.n_embd, mi.n_layer, mi.n_head,
           mi.n_head_kv, mi.head_dim, mi.n_ff, mi.n_rot, mi.rope_freq_base, mi.rope_freq_scale, mi.norm_eps,
           mi.tied_output ? "tied to token embedding" : "separate", (unsigned long long)mi.n_params,
           mi.n_params / 1e6, (unsigned long long)mi.weight_bytes);
    kvlm_model_free(m);
    return 0;
}
