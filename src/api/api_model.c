/* kvlm.h, section "model": loading, freeing, describing a model. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "kvlm.h"
#include "model/model.h"
#include "tokenizer/vocab.h" /* the model owns its vocabulary */

kvlm_model_params kvlm_model_default_params(void) {
    kvlm_model_params p = {.n_threads = 1, .vocab_only = false, .ternary_float_activations = false};
    return p;
}

kvlm_status kvlm_model_load(const char *path, const kvlm_model_params *params, kvlm_model **out, kvlm_error *err) {
    kv_error_clear(err);
    if (!path || !out) return kv_fail(err, KVLM_ERR_INVALID_ARG, "model_load: NULL argument");
    *out = NULL;
    gguf_ctx *g;
    kvlm_status st = gguf_open(path, &g, err);
    if (st) return st;
    kvlm_model_params p = params ? *params : kvlm_model_default_params();
    kvlm_model *m;
    st = kv_model_from_gguf(g, p.vocab_only, &m, err);
    if (st) return st;
    m->n_threads = p.n_threads > 0 ? p.n_threads : 1;
    m->ternary_f32 = p.ternary_float_activations;
    kv_model_interleave(m); /* the gemm kernels' layout (src/model/model.h) */
    *out = m;
    return KVLM_OK;
}

void kvlm_model_free(kvlm_model *m) {
    if (!m) return;
    kv_vocab_free(m->vocab);
    kv_model_release_interleaved(m);
    free(m->layers);
    gguf_close(m->gguf);
    free(m);
}

void kvlm_model_get_info(const kvlm_model *m, kvlm_model_info *info) {
    const kv_hparams *hp = &m->hp;
    memset(info, 0, sizeof *info);
    snprintf(info->arch, sizeof info->arch, "%s", hp->arch_name);
    info->n_vocab = hp->n_vocab;
    info->n_ctx_train = hp->n_ctx_train;
    info->n_embd = hp->n_embd;
    info->n_layer = hp->n_layer;
    info->n_head = hp->n_head;
    info->n_head_kv = hp->n_head_kv;
    info->n_ff = hp->n_ff;
    info->n_rot = hp->n_rot;
    info->head_dim = hp->head_dim;
    info->rope_freq_base = hp->rope_freq_base;
    info->rope_freq_scale = hp->rope_freq_scale;
    info->norm_eps = hp->norm_eps;
    info->tied_output = m->tied_output;
    info->n_params = m->n_params;
    info->weight_bytes = m->weight_bytes;
}

int32_t kvlm_n_vocab(const kvlm_model *m) { return m->hp.n_vocab; }
