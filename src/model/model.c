#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/dtype.h"
#include "core/error.h"
#include "quant/quant.h"
#include "quant/quant_types.h"

/* What each architecture reads. A tensor the file holds that its
 * architecture does not read is an error (llama.cpp refuses such files too):
 * ignoring it would compute another model without a word. */
enum { T_NO = 0, T_OPTIONAL, T_REQUIRED };

typedef struct arch_desc {
    const char *name;
    kv_arch arch;
    kv_rope_type rope;
    kv_ffn_act act;
    uint8_t qkv_bias;   /* blk.N.attn_{q,k,v}.bias */
    uint8_t sub_norms;  /* blk.N.attn_sub_norm, blk.N.ffn_sub_norm (bitnet) */
    bool weight_scales; /* blk.N.<matrix>.scale: one f32 multiplying the matrix (bitnet) */
    bool rope_freqs;    /* rope_freqs.weight: per-pair divisors of the RoPE angle (Llama 3.x) */
    uint8_t qk_norm;    /* blk.N.attn_{q,k}_norm.weight: per-head RMSNorm of q and k before RoPE (qwen3) */
    uint8_t post_norms; /* blk.N.post_attention_norm, blk.N.post_ffw_norm (gemma3) */
} arch_desc;

static const arch_desc k_archs[] = {
    {"llama", KV_ARCH_LLAMA, KV_ROPE_NORM, KV_FFN_SILU, T_OPTIONAL, T_NO, false, true, T_NO, T_NO},
    {"qwen2", KV_ARCH_QWEN2, KV_ROPE_NEOX, KV_FFN_SILU, T_REQUIRED, T_NO, false, false, T_NO, T_NO},
    {"bitnet", KV_ARCH_BITNET, KV_ROPE_NEOX, KV_FFN_SILU, T_NO, T_REQUIRED, true, false, T_NO, T_NO},
    {"bitnet-b1.58", KV_ARCH_BITNET_B158, KV_ROPE_NEOX, KV_FFN_RELU2, T_NO, T_REQUIRED, true, false, T_NO, T_NO},
    /* qwen3: NEOX RoPE (llama_rope_type), no biases, q/k norms */
    {"qwen3", KV_ARCH_QWEN3, KV_ROPE_NEOX, KV_FFN_SILU, T_NO, T_NO, false, false, T_REQUIRED, T_NO},
    /* gemma3: NEOX RoPE, GELU(tanh) gated FFN, q/k norms, post-attention and post-FFN norms (hyperparameters
       in read_gemma3) */
    {"gemma3", KV_ARCH_GEMMA3, KV_ROPE_NEOX, KV_FFN_GELU, T_NO, T_NO, false, false, T_REQUIRED, T_REQUIRED},
    /* phi3 binds its own layout (bind_phi3): fused blk.N.attn_qkv (q, k, v rows) and blk.N.ffn_up (gate
       rows, then up rows), output.weight required, rope_factors_long/short (LongRoPE); read_phi3 */
    {"phi3", KV_ARCH_PHI3, KV_ROPE_NEOX, KV_FFN_SILU, T_NO, T_NO, false, false, T_NO, T_NO},
};

static const arch_desc *arch_of(const kv_hparams *hp) {
    for (size_t i = 0; i < sizeof k_archs / sizeof k_archs[0]; i++)
        if (k_archs[i].arch == hp->arch) return &k_archs[i];
    return NULL;
}

/* "<arch>.<suffix>" */
static const char *akey(const kv_hparams *hp, const char *suffix, char *buf, size_t n) {
    snprintf(buf, n, "%s.%s", hp->arch_name, suffix);
    return buf;
}

static kvlm_status get_u32_req(const gguf_ctx *g, const kv_hparams *hp, const char *suffix, int32_t *out,
                               kvlm_error *err) {
    char k[128];
    uint32_t v;
    akey(hp, suffix, k, sizeof k);
    if (!kv_gguf_find(g, k)) return kv_fail(err, KVLM_ERR_FORMAT, "model: missing metadata key '%s'", k);
    if (!kv_gguf_get_u32(g, k, &v) || v == 0 || v > (1u << 30))
        return kv_fail(err, KVLM_ERR_FORMAT, "model: metadata '%s' is not a positive integer in range", k);
    *out = (int32_t)v;
    return KVLM_OK;
}

static bool get_u32_opt(const gguf_ctx *g, const kv_hparams *hp, const char *suffix, int32_t *out, kvlm_error *err,
                        kvlm_status *st) {
    char k[128];
    uint32_t v;
    akey(hp, suffix, k, sizeof k);
    *st = KVLM_OK;
    if (!kv_gguf_find(g, k)) return false;
    if (!kv_gguf_get_u32(g, k, &v) || v > (1u << 30)) {
        *st = kv_fail(err, KVLM_ERR_FORMAT, "model: metadata '%s' is not an integer in range", k);
        return false;
    }
    *out = (int32_t)v;
    return true;
}

static kvlm_status get_f32_opt(const gguf_ctx *g, const kv_hparams *hp, const char *suffix, float *out,
                               kvlm_error *err) {
    char k[128];
    akey(hp, suffix, k, sizeof k);
    if (!kv_gguf_find(g, k)) return KVLM_OK;
    if (!kv_gguf_get_f32(g, k, out)) return kv_fail(err, KVLM_ERR_FORMAT, "model: metadata '%s' is not a float", k);
    if (!isfinite(*out)) return kv_fail(err, KVLM_ERR_FORMAT, "model: metadata '%s' is not finite", k);
    return KVLM_OK;
}

/* A float that must lie in [lo, hi] when present. */
static kvlm_status get_f32_range(const gguf_ctx *g, const kv_hparams *hp, const char *suffix, float *out, float lo,
                                 float hi, kvlm_error *err) {
    kvlm_status st = get_f32_opt(g, hp, suffix, out, err);
    if (st) return st;
    if (!(*out >= lo && *out <= hi))
        return kv_fail(err, KVLM_ERR_FORMAT, "model: metadata '%s.%s' = %g is out of range [%g, %g]", hp->arch_name,
                       suffix, *out, lo, hi);
    return KVLM_OK;
}

/* Keys that would change the model if honoured and that kvlm does not run: refused, never ignored. */
static kvlm_status refuse_experts(const gguf_ctx *g, const kv_hparams *hp, kvlm_error *err) {
    static const char *const keys[] = {"expert_count", "expert_used_count"};
    for (size_t i = 0; i < 2; i++) {
        int32_t n = 0;
        kvlm_status st;
        if (get_u32_opt(g, hp, keys[i], &n, err, &st) && n != 0)
            return kv_fail(err, KVLM_ERR_UNSUPPORTED,
                           "model: %s.%s is %d: mixture-of-experts models are not supported (it must be 0 or absent)",
                           hp->arch_name, keys[i], n);
        if (st) return st;
    }
    return KVLM_OK;
}

/* An integer key that the file gives as an array (per-layer values): a clear refusal. */
static kvlm_status refuse_array(const gguf_ctx *g, const kv_hparams *hp, const char *suffix, kvlm_error *err) {
    char k[128];
    const gguf_kv *kv = kv_gguf_find(g, akey(hp, suffix, k, sizeof k));
    if (kv && kv->type == GGUF_ARRAY)
        return kv_fail(err, KVLM_ERR_UNSUPPORTED, "model: '%s' is an array (per-layer values are not supported)", k);
    return KVLM_OK;
}

/* RoPE keys, read as llama.cpp reads them (llama_model::load_hparams, llama_init_from_model). */
static kvlm_status read_rope(const gguf_ctx *g, kv_hparams *hp, kvlm_error *err) {
    kvlm_status st;
    char k[128];
    hp->rope_freq_base = 10000.0f;
    if ((st = get_f32_opt(g, hp, "rope.freq_base", &hp->rope_freq_base, err))) return st;
    if (!(hp->rope_freq_base > 1.0f))
        return kv_fail(err, KVLM_ERR_FORMAT, "model: %s.rope.freq_base %g must be greater than 1", hp->arch_name,
                       hp->rope_freq_base);
    /* absent type: linear (with no factor, the identity) */
    hp->rope_scaling = KV_ROPE_SCALING_LINEAR;
    const gguf_kv *tk = kv_gguf_find(g, akey(hp, "rope.scaling.type", k, sizeof k));
    if (tk) {
        gguf_str stype;
        if (!kv_gguf_get_str(g, k, &stype)) return kv_fail(err, KVLM_ERR_FORMAT, "model: metadata '%s' is not a string", k);
        const int shown = (int)(stype.len > 40 ? 40 : stype.len);
        if (kv_gguf_str_eq(stype, "none")) hp->rope_scaling = KV_ROPE_SCALING_NONE;
        else if (kv_gguf_str_eq(stype, "linear")) hp->rope_scaling = KV_ROPE_SCALING_LINEAR;
        else if (kv_gguf_str_eq(stype, "yarn")) hp->rope_scaling = KV_ROPE_SCALING_YARN;
        else if (kv_gguf_str_eq(stype, "longrope") && hp->arch == KV_ARCH_PHI3)
            hp->rope_scaling = KV_ROPE_SCALING_LONGROPE; /* the factors are tensors (bind_phi3) */
        else if (kv_gguf_str_eq(stype, "longrope"))
            return kv_fail(err, KVLM_ERR_UNSUPPORTED, "model: rope scaling type 'longrope' is not supported for %s",
                           hp->arch_name);
        else
            return kv_fail(err, KVLM_ERR_UNSUPPORTED,
                           "model: unknown rope scaling type '%.*s' in %s (kvlm knows none, linear, yarn)", shown,
                           stype.data, k);
    }
    /* the factor: rope.scaling.factor, else the older rope.scale_linear; 0 means none */
    float factor = 0.0f;
    if (kv_gguf_find(g, akey(hp, "rope.scaling.factor", k, sizeof k))) {
        if ((st = get_f32_range(g, hp, "rope.scaling.factor", &factor, 0.0f, 1e6f, err))) return st;
    } else if ((st = get_f32_range(g, hp, "rope.scale_linear", &factor, 0.0f, 1e6f, err))) {
        return st;
    }
    if (factor != 0.0f && !(factor >= 1e-6f))
        return kv_fail(err, KVLM_ERR_FORMAT, "model: rope scaling factor %g is out of range", factor);
    hp->rope_freq_scale = factor == 0.0f || hp->rope_scaling == KV_ROPE_SCALING_NONE ? 1.0f : 1.0f / factor;
    hp->rope_attn_factor = 1.0f;
    if ((st = get_f32_range(g, hp, "rope.scaling.attn_factor", &hp->rope_attn_factor, 1e-6f, 1e6f, err))) return st;
    hp->n_ctx_orig = hp->n_ctx_train;
    int32_t orig = 0;
    if (get_u32_opt(g, hp, "rope.scaling.original_context_length", &orig, err, &st)) {
        if (orig <= 0)
            return kv_fail(err, KVLM_ERR_FORMAT, "model: %s.rope.scaling.original_context_length must be positive",
                           hp->arch_name);
        hp->n_ctx_orig = orig;
    }
    if (st) return st;
    const gguf_kv *ft = kv_gguf_find(g, akey(hp, "rope.scaling.finetuned", k, sizeof k));
    bool b;
    if (ft && !kv_gguf_get_bool(g, k, &b)) return kv_fail(err, KVLM_ERR_FORMAT, "model: metadata '%s' is not a bool", k);
    return KVLM_OK;
}

/* phi3's own keys, as llama.cpp's load_hparams reads them: the sliding window (with its defaults for
 * the Phi-3 files converted before the key existed; 0 written means none, as for Phi-4), a head of
 * n_embd / n_head (the fused attn_qkv is split at n_embd), q scaled before the cache. */
static kvlm_status read_phi3(const gguf_ctx *g, kv_hparams *hp, kvlm_error *err) {
    if ((int64_t)hp->n_head * hp->head_dim != hp->n_embd)
        return kv_fail(err, KVLM_ERR_UNSUPPORTED,
                       "model: phi3 needs head_count x head size = embedding_length (%d x %d != %d)", hp->n_head,
                       hp->head_dim, hp->n_embd);
    hp->q_prescaled = true;
    hp->n_swa = 0;
    if ((hp->n_layer == 32 || hp->n_layer == 40) && hp->n_ctx_train == 4096) hp->n_swa = 2047;
    else if (hp->n_layer == 32 && hp->n_head_kv == 32 && hp->n_ctx_train == 131072) hp->n_swa = 262144;
    else if (hp->n_layer == 40 && hp->n_ctx_train == 131072) hp->n_swa = 131072;
    kvlm_status st;
    const bool found = get_u32_opt(g, hp, "attention.sliding_window", &hp->n_swa, err, &st);
    if (st) return st;
    if (!found && hp->n_swa == 0)
        return kv_fail(err, KVLM_ERR_FORMAT,
                       "model: phi3.attention.sliding_window is missing (llama.cpp refuses such a phi3 file too)");
    return KVLM_OK;
}

/* gemma3's keys, as ik_llama.cpp reads them: attention.sliding_window is required; the pattern (5 local
 * layers, then a global one), the local RoPE base (10000, scale 1) and the embedding scale (sqrt(n_embd))
 * are fixed by the architecture. The query scale 1/sqrt(attention.key_length) is the head size's. */
static kvlm_status read_gemma3(const gguf_ctx *g, kv_hparams *hp, kvlm_error *err) {
    kvlm_status st;
    char k[128];
    if (!kv_gguf_find(g, akey(hp, "attention.sliding_window", k, sizeof k)))
        return kv_fail(err, KVLM_ERR_FORMAT, "model: missing metadata key '%s'", k);
    if ((st = get_u32_req(g, hp, "attention.sliding_window", &hp->n_swa, err))) return st;
    hp->swa_pattern = 6;
    hp->rope_freq_base_swa = 10000.0f;
    hp->embd_scale = sqrtf((float)hp->n_embd);
    return KVLM_OK;
}

static kvlm_status read_hparams(const gguf_ctx *g, kv_hparams *hp, kvlm_error *err) {
    gguf_str arch;
    if (!kv_gguf_get_str(g, "general.architecture", &arch))
        return kv_fail(err, KVLM_ERR_FORMAT, "model: missing general.architecture");
    const arch_desc *ad = NULL;
    for (size_t i = 0; i < sizeof k_archs / sizeof k_archs[0]; i++)
        if (kv_gguf_str_eq(arch, k_archs[i].name)) ad = &k_archs[i];
    if (!ad)
        return kv_fail(err, KVLM_ERR_UNSUPPORTED,
                       "model: unsupported architecture '%.*s' (kvlm runs llama, qwen2, qwen3, gemma3, phi3, bitnet, bitnet-b1.58)",
                       (int)(arch.len > 40 ? 40 : arch.len), arch.data);
    memset(hp, 0, sizeof *hp);
    hp->arch = ad->arch;
    hp->rope_type = ad->rope;
    hp->ffn_act = ad->act;
    snprintf(hp->arch_name, sizeof hp->arch_name, "%s", ad->name);

    kvlm_status st;
    static const char *const maybe_arrays[] = {"feed_forward_length", "attention.head_count",
                                               "attention.head_count_kv"};
    for (size_t i = 0; i < 3; i++)
        if ((st = refuse_array(g, hp, maybe_arrays[i], err))) return st;
    if ((st = get_u32_req(g, hp, "context_length", &hp->n_ctx_train, err))) return st;
    if ((st = get_u32_req(g, hp, "embedding_length", &hp->n_embd, err))) return st;
    if ((st = get_u32_req(g, hp, "block_count", &hp->n_layer, err))) return st;
    /* each layer has at least 9 tensors (phi3's fused ones: 6): a count the file cannot hold is refused before
       anything is sized by it */
    const uint64_t per_layer = ad->arch == KV_ARCH_PHI3 ? 6 : 9;
    if ((uint64_t)hp->n_layer > g->n_tensors / per_layer)
        return kv_fail(err, KVLM_ERR_FORMAT, "model: %s.block_count %d needs at least %llu tensors; the file has %llu",
                       hp->arch_name, hp->n_layer, per_layer * (unsigned long long)hp->n_layer,
                       (unsigned long long)g->n_tensors);
    if ((st = refuse_experts(g, hp, err))) return st;
    if ((st = get_u32_req(g, hp, "feed_forward_length", &hp->n_ff, err))) return st;
    if ((st = get_u32_req(g, hp, "attention.head_count", &hp->n_head, err))) return st;
    hp->n_head_kv = hp->n_head;
    get_u32_opt(g, hp, "attention.head_count_kv", &hp->n_head_kv, err, &st);
    if (st) return st;
    if (hp->n_head_kv <= 0 || hp->n_head % hp->n_head_kv != 0)
        return kv_fail(err, KVLM_ERR_FORMAT, "model: head_count %d is not a multiple of head_count_kv %d", hp->n_head,
                       hp->n_head_kv);
    /* the head size: attention.key_length, else n_embd / n_head (as llama.cpp) */
    int32_t kl = 0, vl = 0;
    const bool has_kl = get_u32_opt(g, hp, "attention.key_length", &kl, err, &st);
    if (st) return st;
    const bool has_vl = get_u32_opt(g, hp, "attention.value_length", &vl, err, &st);
    if (st) return st;
    if (!has_kl || !has_vl) {
        if (hp->n_embd % hp->n_head != 0)
            return kv_fail(err, KVLM_ERR_FORMAT, "model: embedding_length %d is not a multiple of head_count %d",
                           hp->n_embd, hp->n_head);
        if (!has_kl) kl = hp->n_embd / hp->n_head;
        if (!has_vl) vl = hp->n_embd / hp->n_head;
    }
    if (kl != vl)
        return kv_fail(err, KVLM_ERR_UNSUPPORTED,
                       "model: %s.attention.key_length %d differs from value_length %d (not supported)", hp->arch_name,
                       kl, vl);
    if (kl <= 0 || kl % 2 != 0 || kl > 4096)
        return kv_fail(err, KVLM_ERR_FORMAT, "model: head size %d (attention.key_length) must be even and in 2..4096",
                       kl);
    hp->head_dim = kl;
    hp->n_rot = hp->head_dim;
    get_u32_opt(g, hp, "rope.dimension_count", &hp->n_rot, err, &st);
    if (st) return st;
    if (hp->n_rot <= 0 || hp->n_rot > hp->head_dim || hp->n_rot % 2 != 0)
        return kv_fail(err, KVLM_ERR_FORMAT, "model: rope.dimension_count %d must be even and in 2..%d", hp->n_rot,
                       hp->head_dim);
    if (hp->arch == KV_ARCH_QWEN3 && hp->n_rot != hp->head_dim)
        return kv_fail(err, KVLM_ERR_UNSUPPORTED,
                       "model: qwen3 rotates the whole head: rope.dimension_count %d must equal the head size %d",
                       hp->n_rot, hp->head_dim);
    if ((st = read_rope(g, hp, err))) return st;
    hp->norm_eps = -1.0f;
    char k[128];
    if (!kv_gguf_find(g, akey(hp, "attention.layer_norm_rms_epsilon", k, sizeof k)))
        return kv_fail(err, KVLM_ERR_FORMAT, "model: missing %s", k);
    if ((st = get_f32_range(g, hp, "attention.layer_norm_rms_epsilon", &hp->norm_eps, 0.0f, 1.0f, err))) return st;
    hp->embd_scale = 1.0f;
    if (ad->arch == KV_ARCH_PHI3 && (st = read_phi3(g, hp, err))) return st;
    if (hp->arch == KV_ARCH_GEMMA3 && (st = read_gemma3(g, hp, err))) return st;
    return KVLM_OK;
}

/* Binding: every tensor looked up is marked, so that those left over can be named. */
typedef struct binder {
    const gguf_ctx *g;
    uint8_t *used; /* one per tensor of the file */
} binder;

/* Looks up a tensor and checks its shape: ne0 x ne1 (ne1 = 1 for vectors). */
static kvlm_status find_shaped(binder *b, const char *name, int64_t ne0, int64_t ne1, bool required,
                               const gguf_tensor **out, kvlm_error *err) {
    const gguf_tensor *t = kv_gguf_find_tensor(b->g, name);
    *out = t;
    if (!t) return required ? kv_fail(err, KVLM_ERR_FORMAT, "model: missing tensor '%s'", name) : KVLM_OK;
    b->used[t - b->g->tensors] = 1;
    if (t->n_dims > 2 || (int64_t)t->ne[0] != ne0 || (int64_t)t->ne[1] != ne1)
        return kv_fail(err, KVLM_ERR_FORMAT, "model: tensor '%s' has shape [%llu, %llu], expected [%lld, %lld]", name,
                       (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], (long long)ne0, (long long)ne1);
    return KVLM_OK;
}

static kvlm_status bind_vec(binder *b, const char *name, int64_t n, bool required, kv_vec *v, kvlm_error *err) {
    const gguf_tensor *t;
    kvlm_status st = find_shaped(b, name, n, 1, required, &t, err);
    if (st || !t) return st;
    if (t->type != KV_F32)
        return kv_fail(err, KVLM_ERR_UNSUPPORTED, "model: tensor '%s' has type %s, expected f32", name,
                       kv_dtype_name(t->type));
    v->data = t->data;
    v->n = n;
    return KVLM_OK;
}

static kvlm_status bind_weight(binder *b, const char *name, int64_t ne0, int64_t ne1, bool required, kv_weight *w,
                               kvlm_error *err) {
    const gguf_tensor *t;
    kvlm_status st = find_shaped(b, name, ne0, ne1, required, &t, err);
    if (st || !t) return st;
    const kv_quant_traits *q = kv_quant_get(t->type);
    if (!q || !q->vec_dot)
        return kv_fail(err, KVLM_ERR_UNSUPPORTED, "model: tensor '%s' has type %s, which has no compute support", name,
                       kv_dtype_name(t->type));
    const kv_dtype_info *adt = kv_dtype_get(q->vec_dot_type); /* NULL for activation-only types */
    if (adt && ne0 % adt->block_size != 0)
        return kv_fail(err, KVLM_ERR_UNSUPPORTED, "model: tensor '%s': row length %lld is not a multiple of %d", name,
                       (long long)ne0, adt->block_size);
    w->data = t->data;
    w->type = t->type;
    w->ne0 = ne0;
    w->ne1 = ne1;
    w->scale = 1.0f;
    if (!kv_dtype_row_bytes(t->type, (uint64_t)ne0, &w->row_bytes))
        return kv_fail(err, KVLM_ERR_FORMAT, "model: tensor '%s': bad row size", name);
    if (t->type == KV_I2_S) {
        /* one f32 scale per tensor, after the packed values */
        w->scale = kv_i2_s_scale(t->data, (int64_t)t->n_elements);
        if (!isfinite(w->scale))
            return kv_fail(err, KVLM_ERR_FORMAT, "model: tensor '%s': its I2_S scale is not finite", name);
    }
    return KVLM_OK;
}

/* An optional "<name>.scale" tensor (one f32) multiplies a weight (the "bitnet" layout). */
static kvlm_status bind_scale(binder *b, const char *wname, kv_weight *w, kvlm_error *err) {
    char name[96];
    size_t n = strlen(wname);
    if (n < 7 || n + 1 > sizeof name) return KVLM_OK;
    snprintf(name, sizeof name, "%.*sscale", (int)(n - 6), wname); /* "x.weight" -> "x.scale" */
    const gguf_tensor *t = kv_gguf_find_tensor(b->g, name);
    if (!t) return KVLM_OK;
    b->used[t - b->g->tensors] = 1;
    if (t->type != KV_F32 || t->n_elements != 1)
        return kv_fail(err, KVLM_ERR_FORMAT, "model: tensor '%s' must be one f32", name);
    float v;
    memcpy(&v, t->data, 4);
    if (!isfinite(v)) return kv_fail(err, KVLM_ERR_FORMAT, "model: tensor '%s' is not finite", name);
    w->scale *= v;
    return KVLM_OK;
}

static void count(kvlm_model *m, const kv_weight *w) {
    if (!w->data) return;
    m->n_params += (uint64_t)(w->ne0 * w->ne1);
    m->weight_bytes += w->row_bytes * (uint64_t)w->ne1;
}

/* rope_freqs.weight: n_rot/2 f32 divisors of the RoPE angles, each finite and positive. */
static kvlm_status bind_rope_freqs(binder *b, kvlm_model *m, kvlm_error *err) {
    const char *name = "rope_freqs.weight";
    kvlm_status st = bind_vec(b, name, m->hp.n_rot / 2, false, &m->rope_freqs, err);
    if (st || !m->rope_freqs.data) return st;
    for (int64_t i = 0; i < m->rope_freqs.n; i++) {
        const float v = m->rope_freqs.data[i];
        if (!isfinite(v) || !(v > 0.0f))
            return kv_fail(err, KVLM_ERR_FORMAT, "model: tensor '%s': factor %lld is %g (must be positive and finite)",
                           name, (long long)i, v);
    }
    return KVLM_OK;
}

/* What every architecture binds around its layers: the token embedding, the output norm and the output
 * matrix (optional: without it the output is tied to the embedding, as llama.cpp does; phi3 requires
 * it), counted in n_params. */
static kvlm_status bind_ends(binder *b, kvlm_model *m, bool output_required, kvlm_error *err) {
    const int64_t E = m->hp.n_embd, V = m->hp.n_vocab;
    kvlm_status st;
    if ((st = bind_weight(b, "token_embd.weight", E, V, true, &m->tok_embd, err))) return st;
    if ((st = bind_vec(b, "output_norm.weight", E, true, &m->output_norm, err))) return st;
    if ((st = bind_weight(b, "output.weight", E, V, output_required, &m->output, err))) return st;
    m->tied_output = m->output.data == NULL;
    if (m->tied_output) m->output = m->tok_embd;
    count(m, &m->tok_embd);
    if (!m->tied_output) count(m, &m->output);
    m->n_params += (uint64_t)E;
    return KVLM_OK;
}

/* Counts a bound layer's matrices and its two norms in n_params. */
static void count_layer(kvlm_model *m, const kv_layer *L) {
    const kv_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
    for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) count(m, ws[i]);
    m->n_params += (uint64_t)(2 * m->hp.n_embd);
}

static kvlm_status bind_llama(binder *b, kvlm_model *m, const arch_desc *ad, kvlm_error *err) {
    const kv_hparams *hp = &m->hp;
    const int64_t E = hp->n_embd, Q = (int64_t)hp->n_head * hp->head_dim, KV = (int64_t)hp->n_head_kv * hp->head_dim;
    const int64_t F = hp->n_ff;
    kvlm_status st;
    if ((st = bind_ends(b, m, false, err))) return st;
    if (ad->rope_freqs && (st = bind_rope_freqs(b, m, err))) return st;

    for (int l = 0; l < hp->n_layer; l++) {
        kv_layer *L = &m->layers[l];
        char n[96];
#define NM(s) (snprintf(n, sizeof n, "blk.%d." s, l), n)
        if ((st = bind_vec(b, NM("attn_norm.weight"), E, true, &L->attn_norm, err))) return st;
        if ((st = bind_weight(b, NM("attn_q.weight"), E, Q, true, &L->wq, err))) return st;
        if ((st = bind_weight(b, NM("attn_k.weight"), E, KV, true, &L->wk, err))) return st;
        if ((st = bind_weight(b, NM("attn_v.weight"), E, KV, true, &L->wv, err))) return st;
        if ((st = bind_weight(b, NM("attn_output.weight"), Q, E, true, &L->wo, err))) return st;
        if ((st = bind_vec(b, NM("ffn_norm.weight"), E, true, &L->ffn_norm, err))) return st;
        if ((st = bind_weight(b, NM("ffn_gate.weight"), E, F, true, &L->w_gate, err))) return st;
        if ((st = bind_weight(b, NM("ffn_up.weight"), E, F, true, &L->w_up, err))) return st;
        if ((st = bind_weight(b, NM("ffn_down.weight"), F, E, true, &L->w_down, err))) return st;
        if (ad->qkv_bias != T_NO) {
            const bool req = ad->qkv_bias == T_REQUIRED;
            if ((st = bind_vec(b, NM("attn_q.bias"), Q, req, &L->bq, err))) return st;
            if ((st = bind_vec(b, NM("attn_k.bias"), KV, req, &L->bk, err))) return st;
            if ((st = bind_vec(b, NM("attn_v.bias"), KV, req, &L->bv, err))) return st;
        }
        if (ad->qk_norm != T_NO) {
            const bool req = ad->qk_norm == T_REQUIRED;
            if ((st = bind_vec(b, NM("attn_q_norm.weight"), hp->head_dim, req, &L->attn_q_norm, err))) return st;
            if ((st = bind_vec(b, NM("attn_k_norm.weight"), hp->head_dim, req, &L->attn_k_norm, err))) return st;
        }
        if (ad->post_norms != T_NO) {
            const bool req = ad->post_norms == T_REQUIRED;
            if ((st = bind_vec(b, NM("post_attention_norm.weight"), E, req, &L->attn_post_norm, err))) return st;
            if ((st = bind_vec(b, NM("post_ffw_norm.weight"), E, req, &L->ffn_post_norm, err))) return st;
        }
        if (ad->sub_norms != T_NO) {
            const bool req = ad->sub_norms == T_REQUIRED;
            if ((st = bind_vec(b, NM("attn_sub_norm.weight"), Q, req, &L->attn_sub_norm, err))) return st;
            if ((st = bind_vec(b, NM("ffn_sub_norm.weight"), F, req, &L->ffn_sub_norm, err))) return st;
        }
        if (ad->weight_scales) {
            const char *wn[7] = {"attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                                 "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"};
            kv_weight *wp[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
            for (int i = 0; i < 7; i++) {
                snprintf(n, sizeof n, "blk.%d.%s", l, wn[i]);
                if ((st = bind_scale(b, n, wp[i], err))) return st;
            }
        }
#undef NM
        count_layer(m, L);
        if (L->attn_q_norm.data) m->n_params += (uint64_t)(2 * hp->head_dim);
        if (L->attn_post_norm.data) m->n_params += (uint64_t)(2 * E);
    }
    return KVLM_OK;
}

/* Rows [r0, r0 + n) of a bound weight, as a weight of their own (a part of a fused matrix). */
static kv_weight weight_rows(const kv_weight *full, int64_t r0, int64_t n) {
    kv_weight w = *full;
    w.data = (const uint8_t *)full->data + (uint64_t)r0 * full->row_bytes;
    w.ne1 = n;
    return w;
}

/* A LongRoPE factor tensor (head_dim/2 f32, as llama.cpp's phi3 reads it), positive and finite. */
static kvlm_status bind_rope_factors(binder *b, const char *name, int64_t n, kv_vec *v, kvlm_error *err) {
    kvlm_status st = bind_vec(b, name, n, false, v, err);
    if (st || !v->data) return st;
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v->data[i]) || !(v->data[i] > 0.0f))
            return kv_fail(err, KVLM_ERR_FORMAT, "model: tensor '%s': factor %lld is %g (must be positive and finite)",
                           name, (long long)i, v->data[i]);
    return KVLM_OK;
}

/* phi3 (llama.cpp's LLM_ARCH_PHI3 tensors): blk.N.attn_qkv holds the q rows, then k, then v;
 * blk.N.ffn_up holds 2 x n_ff rows, the gate's (SiLU) then the up projection's, as its SWIGLU
 * splits them. They are bound as views of their rows, so the forward pass multiplies them as
 * separate matrices: every output row is the same dot product either way. */
static kvlm_status bind_phi3(binder *b, kvlm_model *m, kvlm_error *err) {
    const kv_hparams *hp = &m->hp;
    const int64_t E = hp->n_embd, Q = (int64_t)hp->n_head * hp->head_dim, KV = (int64_t)hp->n_head_kv * hp->head_dim;
    const int64_t F = hp->n_ff;
    kvlm_status st;
    if ((st = bind_ends(b, m, true, err))) return st;
    if ((st = bind_rope_factors(b, "rope_factors_long.weight", hp->head_dim / 2, &m->rope_long, err))) return st;
    if ((st = bind_rope_factors(b, "rope_factors_short.weight", hp->head_dim / 2, &m->rope_short, err))) return st;
    for (int l = 0; l < hp->n_layer; l++) {
        kv_layer *L = &m->layers[l];
        char n[96];
        kv_weight qkv, gate_up;
#define NM(s) (snprintf(n, sizeof n, "blk.%d." s, l), n)
        if ((st = bind_vec(b, NM("attn_norm.weight"), E, true, &L->attn_norm, err))) return st;
        if ((st = bind_weight(b, NM("attn_qkv.weight"), E, Q + 2 * KV, true, &qkv, err))) return st;
        if ((st = bind_weight(b, NM("attn_output.weight"), Q, E, true, &L->wo, err))) return st;
        if ((st = bind_vec(b, NM("ffn_norm.weight"), E, true, &L->ffn_norm, err))) return st;
        if ((st = bind_weight(b, NM("ffn_up.weight"), E, 2 * F, true, &gate_up, err))) return st;
        if ((st = bind_weight(b, NM("ffn_down.weight"), F, E, true, &L->w_down, err))) return st;
#undef NM
        L->wq = weight_rows(&qkv, 0, Q);
        L->wk = weight_rows(&qkv, Q, KV);
        L->wv = weight_rows(&qkv, Q + KV, KV);
        L->w_gate = weight_rows(&gate_up, 0, F);
        L->w_up = weight_rows(&gate_up, F, F);
        count_layer(m, L);
    }
    return KVLM_OK;
}

/* Binds the tensors of m's architecture, then refuses the file if it holds any other. */
static kvlm_status bind_tensors(kvlm_model *m, kvlm_error *err) {
    const gguf_ctx *g = m->gguf;
    const arch_desc *ad = arch_of(&m->hp);
    binder b = {g, calloc(g->n_tensors ? (size_t)g->n_tensors : 1, 1)};
    if (!b.used) return kv_fail(err, KVLM_ERR_NOMEM, "model: out of memory");
    kvlm_status st = ad->arch == KV_ARCH_PHI3 ? bind_phi3(&b, m, err) : bind_llama(&b, m, ad, err);
    uint64_t n_unused = 0, first = 0;
    for (uint64_t i = 0; !st && i < g->n_tensors; i++)
        if (!b.used[i] && n_unused++ == 0) first = i;
    if (!st && n_unused) {
        char more[64] = "";
        if (n_unused > 1) snprintf(more, sizeof more, " (nor are %llu more)", (unsigned long long)(n_unused - 1));
        st = kv_fail(err, KVLM_ERR_UNSUPPORTED,
                     "model: tensor '%s' is not part of the %s architecture as kvlm runs it%s; refusing the file "
                     "rather than ignoring it",
                     g->tensors[first].name, ad->name, more);
    }
    free(b.used);
    return st;
}

void kv_model_rope(const kvlm_model *m, int32_t n_ctx, kv_rope *r) {
    const kv_hparams *hp = &m->hp;
    memset(r, 0, sizeof *r);
    r->type = hp->rope_type;
    r->n_rot = hp->n_rot;
    r->base = hp->rope_freq_base;
    r->freq_scale = hp->rope_freq_scale;
    /* llama_init_from_model's defaults: YaRN extrapolation on for yarn models, ramp 32..1 turns */
    r->ext_factor = hp->rope_scaling == KV_ROPE_SCALING_YARN ? 1.0f : 0.0f;
    r->attn_factor = hp->rope_attn_factor;
    r->beta_fast = 32.0f;
    r->beta_slow = 1.0f;
    r->n_ctx_orig = hp->n_ctx_orig;
    r->freq_factors = m->rope_freqs.data;
    if (m->rope_long.data || m->rope_short.data) {
        /* LongRoPE, as llama.cpp's build_rope_factors: the long factors when the context (per sequence)
           exceeds the original one. (llama.cpp first rounds n_ctx up to a multiple of 32, 256 with flash
           attention; the choice is the same whenever the original context is such a multiple.) */
        const bool long_ctx = n_ctx > hp->n_ctx_orig;
        r->freq_factors = long_ctx ? m->rope_long.data : m->rope_short.data;
        r->variant = long_ctx ? 1u : 0u;
    }
    kv_rope_init(r);
}

kvlm_status kv_model_check_session(const kvlm_model *m, int32_t n_ctx, int overflow, int32_t window, kvlm_error *err) {
    const kv_hparams *hp = &m->hp;
    /* no window, or gemma3's: its local layers mask in attention (kv_layer_is_swa) */
    if (hp->n_swa <= 0 || hp->swa_pattern > 0) return KVLM_OK;
    if (overflow == KVLM_OVERFLOW_RING) {
        const int32_t w = window > 0 ? window : n_ctx;
        if (w <= hp->n_swa) return KVLM_OK; /* the ring hides at least what the model's window does */
        return kv_fail(err, KVLM_ERR_UNSUPPORTED,
                       "session: this %s model attends to the last %d positions (attention.sliding_window); a "
                       "ring window of %d would show it more: use a window of at most %d",
                       hp->arch_name, hp->n_swa, w, hp->n_swa);
    }
    if (n_ctx <= hp->n_swa) return KVLM_OK; /* no key is ever n_swa positions back */
    return kv_fail(err, KVLM_ERR_UNSUPPORTED,
                   "session: this %s model attends to the last %d positions only (attention.sliding_window); kvlm "
                   "runs that window as the ring policy: use a context of at most %d, or the ring policy with a "
                   "window of %d (-c %d, or --overflow ring --window %d)",
                   hp->arch_name, hp->n_swa, hp->n_swa, hp->n_swa, hp->n_swa, hp->n_swa);
}

void kv_model_rope_swa(const kvlm_model *m, int32_t n_ctx, kv_rope *r) {
    kv_model_rope(m, n_ctx, r);
    /* ik_llama.cpp's gemma3 graph: freq_base 10000 and freq_scale 1 on local layers, the rest as global */
    r->base = m->hp.rope_freq_base_swa;
    r->freq_scale = 1.0f;
    r->freq_factors = NULL;
    kv_rope_init(r);
}

kvlm_status kv_model_from_gguf(gguf_ctx *g, bool vocab_only, kvlm_model **out, kvlm_error *err) {
    *out = NULL;
    kvlm_model *m = calloc(1, sizeof *m);
    if (!m) {
        kv_gguf_close(g);
        return kv_fail(err, KVLM_ERR_NOMEM, "model: out of memory");
    }
    m->gguf = g;
    m->n_threads = 1;
    m->vocab_only = vocab_only;
    kvlm_status st;
    if (vocab_only) {
        gguf_str arch = {0, ""};
        kv_gguf_get_str(g, "general.architecture", &arch);
        snprintf(m->hp.arch_name, sizeof m->hp.arch_name, "%.*s", (int)(arch.len > 31 ? 31 : arch.len), arch.data);
        if ((st = kv_vocab_load(g, &m->vocab, err))) goto fail;
        m->hp.n_vocab = kv_vocab_n_tokens(m->vocab);
        *out = m;
        return KVLM_OK;
    }
    st = read_hparams(g, &m->hp, err);
    if (st) goto fail;
    if ((st = kv_vocab_load(g, &m->vocab, err))) goto fail;
    m->hp.n_vocab = kv_vocab_n_tokens(m->vocab);
    /* vocab_size, when present, must agree with the tokenizer */
    {
        int32_t vs = 0;
        kvlm_status s2;
        if (get_u32_opt(g, &m->hp, "vocab_size", &vs, err, &s2) && vs != m->hp.n_vocab) {
            st = kv_fail(err, KVLM_ERR_FORMAT, "model: %s.vocab_size %d differs from the tokenizer's %d tokens",
                         m->hp.arch_name, vs, m->hp.n_vocab);
            goto fail;
        }
        if (s2) {
            st = s2;
            goto fail;
        }
    }
    m->layers = calloc((size_t)m->hp.n_layer, sizeof *m->layers);
    if (!m->layers) {
        st = kv_fail(err, KVLM_ERR_NOMEM, "model: out of memory");
        goto fail;
    }
    if ((st = bind_tensors(m, err))) goto fail;
    *out = m;
    return KVLM_OK;
fail:
    kv_vocab_free(m->vocab);
    free(m->layers);
    kv_gguf_close(g);
    free(m);
    return st;
}

/* ------------------------------------------------------------ interleaved weights */

static bool env_off(const char *name) {
    const char *v = getenv(name);
    return v && (strcmp(v, "0") == 0 || strcmp(v, "off") == 0 || strcmp(v, "no") == 0);
}

/* the gemm whose interleaved layout w gets, or NULL to keep the file's */
static const kv_quant_gemm *il_gemm(const kvlm_model *m, const kv_weight *w) {
    if (!w->data || (w->type == KV_I2_S && m->ternary_f32)) return NULL;
    const kv_quant_gemm *g = kv_quant_get_gemm(w->type);
    if (!g || !g->gemm_il || g->il_rows < 2) return NULL;
    const size_t u = kv_il_unit(w->type, w->ne0);
    if (!u || w->row_bytes % u) return NULL;
    return g;
}

/* Drops our mapping's pages of [p, p + n) (whole pages inside it): a
 * private file mapping that was never written reads them back from the
 * file if they are touched again. */
static void release_file_pages(const kvlm_model *m, const void *p, uint64_t n) {
    const gguf_ctx *g = m->gguf;
    if (!g->map) return; /* not a file mapping */
    const long ps = sysconf(_SC_PAGESIZE);
    if (ps <= 0) return;
    const uintptr_t a = ((uintptr_t)p + (uintptr_t)ps - 1) & ~((uintptr_t)ps - 1);
    const uintptr_t e = ((uintptr_t)p + (uintptr_t)n) & ~((uintptr_t)ps - 1);
    const uintptr_t lo = (uintptr_t)g->map, hi = lo + g->map_size;
    if (e <= a || a < lo || e > hi) return;
    madvise((void *)a, e - a, MADV_DONTNEED);
}

void kv_model_interleave(kvlm_model *m) {
    if (!m || m->vocab_only || m->il_map || env_off("KVLM_INTERLEAVE")) return;
    /* KVLM_INTERLEAVE=copy: the same copy in the file's row order (to tell the layout from the pages in A/B runs) */
    const char *mode = getenv("KVLM_INTERLEAVE");
    const bool copy_only = mode && strcmp(mode, "copy") == 0;
    const int nw = 7 * m->hp.n_layer + 1;
    kv_weight **ws = malloc(sizeof *ws * (size_t)nw);
    if (!ws) return;
    int k = 0;
    for (int l = 0; l < m->hp.n_layer; l++) {
        kv_layer *L = &m->layers[l];
        kv_weight *lw[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 7; i++) ws[k++] = lw[i];
    }
    ws[k++] = &m->output;
    size_t total = 0;
    for (int i = 0; i < nw; i++)
        if (il_gemm(m, ws[i])) total += ((size_t)(ws[i]->row_bytes * (uint64_t)ws[i]->ne1) + 63) & ~(size_t)63;
    if (!total) {
        free(ws);
        return;
    }
    void *map = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) {
        free(ws);
        return; /* the file's layout works too */
    }
#ifdef MADV_HUGEPAGE
    if (!env_off("KVLM_HUGEPAGES")) madvise(map, total, MADV_HUGEPAGE);
#endif
    uint8_t *dst = map;
    for (int i = 0; i < nw; i++) {
        kv_weight *w = ws[i];
        const kv_quant_gemm *g = il_gemm(m, w);
        if (!g) continue;
        const uint64_t bytes = w->row_bytes * (uint64_t)w->ne1;
        if (copy_only) memcpy(dst, w->data, bytes);
        else kv_il_pack(w->type, w->ne0, w->ne1, g->il_rows, w->data, w->row_bytes, dst);
        release_file_pages(m, w->data, bytes);
        w->data = dst;
        w->il = copy_only ? NULL : g;
        m->il_bytes += bytes;
        dst += (bytes + 63) & ~(uint64_t)63;
    }
    mprotect(map, total, PROT_READ);
    m->il_map = map;
    m->il_map_size = total;
    free(ws);
}

void kv_model_release_interleaved(kvlm_model *m) {
    if (!m || !m->il_map) return;
    munmap(m->il_map, m->il_map_size);
    m->il_map = NULL;
    m->il_map_size = 0;
}
