#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/dtype.h"
#include "core/error.h"
#include "quant/quant.h"
#include "quant/quant_types.h"

typedef struct arch_desc {
    const char *name;
    kv_arch arch;
    kv_rope_type rope;
    kv_ffn_act act;
} arch_desc;

static const arch_desc k_archs[] = {
    {"llama", KV_ARCH_LLAMA, KV_ROPE_NORM, KV_FFN_SILU},
    {"qwen2", KV_ARCH_QWEN2, KV_ROPE_NEOX, KV_FFN_SILU},
    {"bitnet", KV_ARCH_BITNET, KV_ROPE_NEOX, KV_FFN_SILU},
    {"bitnet-b1.58", KV_ARCH_BITNET_B158, KV_ROPE_NEOX, KV_FFN_RELU2},
};

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
    if (!gguf_find(g, k)) return kv_fail(err, KVLM_ERR_FORMAT, "model: missing metadata key '%s'", k);
    if (!gguf_get_u32(g, k, &v) || v == 0 || v > (1u << 30))
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
    if (!gguf_find(g, k)) return false;
    if (!gguf_get_u32(g, k, &v) || v > (1u << 30)) {
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
    if (!gguf_find(g, k)) return KVLM_OK;
    if (!gguf_get_f32(g, k, out)) return kv_fail(err, KVLM_ERR_FORMAT, "model: metadata '%s' is not a float", k);
    return KVLM_OK;
}

static kvlm_status read_hparams(const gguf_ctx *g, kv_hparams *hp, kvlm_error *err) {
    gguf_str arch;
    if (!gguf_get_str(g, "general.architecture", &arch))
        return kv_fail(err, KVLM_ERR_FORMAT, "model: missing general.architecture");
    const arch_desc *ad = NULL;
    for (size_t i = 0; i < sizeof k_archs / sizeof k_archs[0]; i++)
        if (gguf_str_eq(arch, k_archs[i].name)) ad = &k_archs[i];
    if (!ad)
        return kv_fail(err, KVLM_ERR_UNSUPPORTED, "model: unsupported architecture '%.*s'",
                       (int)(arch.len > 40 ? 40 : arch.len), arch.data);
    memset(hp, 0, sizeof *hp);
    hp->arch = ad->arch;
    hp->rope_type = ad->rope;
    hp->ffn_act = ad->act;
    snprintf(hp->arch_name, sizeof hp->arch_name, "%s", ad->name);

    kvlm_status st;
    if ((st = get_u32_req(g, hp, "context_length", &hp->n_ctx_train, err))) return st;
    if ((st = get_u32_req(g, hp, "embedding_length", &hp->n_embd, err))) return st;
    if ((st = get_u32_req(g, hp, "block_count", &hp->n_layer, err))) return st;
    /* each layer has at least 9 tensors: a count the file cannot hold is refused before anything is sized by it */
    if ((uint64_t)hp->n_layer > g->n_tensors / 9)
        return kv_fail(err, KVLM_ERR_FORMAT, "model: %s.block_count %d needs at least %llu tensors; the file has %llu",
                       hp->arch_name, hp->n_layer, 9ull * (unsigned long long)hp->n_layer,
                       (unsigned long long)g->n_tensors);
    if ((st = get_u32_req(g, hp, "feed_forward_length", &hp->n_ff, err))) return st;
    if ((st = get_u32_req(g, hp, "attention.head_count", &hp->n_head, err))) return st;
    hp->n_head_kv = hp->n_head;
    get_u32_opt(g, hp, "attention.head_count_kv", &hp->n_head_kv, err, &st);
    if (st) return st;
    if (hp->n_head_kv <= 0 || hp->n_head % hp->n_head_kv != 0)
        return kv_fail(err, KVLM_ERR_FORMAT, "model: head_count %d is not a multiple of head_count_kv %d", hp->n_head,
                       hp->n_head_kv);
    if (hp->n_embd % hp->n_head != 0)
        return kv_fail(err, KVLM_ERR_FORMAT, "model: embedding_length %d is not a multiple of head_count %d",
                       hp->n_embd, hp->n_head);
    hp->head_dim = hp->n_embd / hp->n_head;
    int32_t kl = hp->head_dim, vl = hp->head_dim;
    get_u32_opt(g, hp, "attention.key_length", &kl, err, &st);
    if (st) return st;
    get_u32_opt(g, hp, "attention.value_length", &vl, err, &st);
    if (st) return st;
    if (kl != hp->head_dim || vl != hp->head_dim)
        return kv_fail(err, KVLM_ERR_UNSUPPORTED, "model: key/value length %d/%d differ from n_embd/n_head = %d", kl, vl,
                       hp->head_dim);
    hp->n_rot = hp->head_dim;
    get_u32_opt(g, hp, "rope.dimension_count", &hp->n_rot, err, &st);
    if (st) return st;
    if (hp->n_rot <= 0 || hp->n_rot > hp->head_dim || hp->n_rot % 2 != 0)
        return kv_fail(err, KVLM_ERR_FORMAT, "model: rope.dimension_count %d must be even and in 2..%d", hp->n_rot,
                       hp->head_dim);

    hp->rope_freq_base = 10000.0f;
    hp->rope_freq_scale = 1.0f;
    if ((st = get_f32_opt(g, hp, "rope.freq_base", &hp->rope_freq_base, err))) return st;
    float factor = 0.0f;
    char k[128];
    gguf_str stype;
    if (gguf_get_str(g, akey(hp, "rope.scaling.type", k, sizeof k), &stype)) {
        if (gguf_str_eq(stype, "linear")) {
            if ((st = get_f32_opt(g, hp, "rope.scaling.factor", &factor, err))) return st;
        } else if (!gguf_str_eq(stype, "none")) {
            return kv_fail(err, KVLM_ERR_UNSUPPORTED, "model: rope scaling type '%.*s' is not supported",
                           (int)(stype.len > 20 ? 20 : stype.len), stype.data);
        }
    } else {
        if ((st = get_f32_opt(g, hp, "rope.scale_linear", &factor, err))) return st;
    }
    if (factor != 0.0f) hp->rope_freq_scale = 1.0f / factor;
    if (!(hp->rope_freq_base > 0.0f) || !(hp->rope_freq_scale > 0.0f))
        return kv_fail(err, KVLM_ERR_FORMAT, "model: rope freq base %g / scale %g must be positive",
                       hp->rope_freq_base, hp->rope_freq_scale);
    hp->norm_eps = -1.0f;
    if ((st = get_f32_opt(g, hp, "attention.layer_norm_rms_epsilon", &hp->norm_eps, err))) return st;
    if (hp->norm_eps < 0.0f)
        return kv_fail(err, KVLM_ERR_FORMAT, "model: missing or negative %s.attention.layer_norm_rms_epsilon",
                       hp->arch_name);
    return KVLM_OK;
}

/* Looks up a tensor and checks its shape: ne0 x ne1 (ne1 = 1 for vectors). */
static kvlm_status find_shaped(const gguf_ctx *g, const char *name, int64_t ne0, int64_t ne1, bool required,
                               const gguf_tensor **out, kvlm_error *err) {
    const gguf_tensor *t = gguf_find_tensor(g, name);
    *out = t;
    if (!t) return required ? kv_fail(err, KVLM_ERR_FORMAT, "model: missing tensor '%s'", name) : KVLM_OK;
    if (t->n_dims > 2 || (int64_t)t->ne[0] != ne0 || (int64_t)t->ne[1] != ne1)
        return kv_fail(err, KVLM_ERR_FORMAT, "model: tensor '%s' has shape [%llu, %llu], expected [%lld, %lld]", name,
                       (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], (long long)ne0, (long long)ne1);
    return KVLM_OK;
}

static kvlm_status bind_vec(const gguf_ctx *g, const char *name, int64_t n, bool required, kv_vec *v,
                            kvlm_error *err) {
    const gguf_tensor *t;
    kvlm_status st = find_shaped(g, name, n, 1, required, &t, err);
    if (st || !t) return st;
    if (t->type != KV_F32)
        return kv_fail(err, KVLM_ERR_UNSUPPORTED, "model: tensor '%s' has type %s, expected f32", name,
                       kv_dtype_name(t->type));
    v->data = t->data;
    v->n = n;
    return KVLM_OK;
}

static kvlm_status bind_weight(const gguf_ctx *g, const char *name, int64_t ne0, int64_t ne1, bool required,
                               kv_weight *w, kvlm_error *err) {
    const gguf_tensor *t;
    kvlm_status st = find_shaped(g, name, ne0, ne1, required, &t, err);
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
        if (!(w->scale == w->scale) || w->scale == 1.0f / 0.0f || w->scale == -1.0f / 0.0f)
            return kv_fail(err, KVLM_ERR_FORMAT, "model: tensor '%s': its I2_S scale is not finite", name);
    }
    return KVLM_OK;
}

/* An optional "<name>.scale" tensor (one f32) multiplies a weight (the "bitnet" layout). */
static kvlm_status bind_scale(const gguf_ctx *g, const char *wname, kv_weight *w, kvlm_error *err) {
    char name[96];
    size_t n = strlen(wname);
    if (n < 7 || n + 1 > sizeof name) return KVLM_OK;
    snprintf(name, sizeof name, "%.*sscale", (int)(n - 6), wname); /* "x.weight" -> "x.scale" */
    const gguf_tensor *t = gguf_find_tensor(g, name);
    if (!t) return KVLM_OK;
    if (t->type != KV_F32 || t->n_elements != 1)
        return kv_fail(err, KVLM_ERR_FORMAT, "model: tensor '%s' must be one f32", name);
    float v;
    memcpy(&v, t->data, 4);
    w->scale *= v;
    return KVLM_OK;
}

static void count(kvlm_model *m, const kv_weight *w) {
    if (!w->data) return;
    m->n_params += (uint64_t)(w->ne0 * w->ne1);
    m->weight_bytes += w->row_bytes * (uint64_t)w->ne1;
}

static kvlm_status bind_llama(kvlm_model *m, kvlm_error *err) {
    const gguf_ctx *g = m->gguf;
    const kv_hparams *hp = &m->hp;
    const int64_t E = hp->n_embd, Q = (int64_t)hp->n_head * hp->head_dim, KV = (int64_t)hp->n_head_kv * hp->head_dim;
    const int64_t F = hp->n_ff, V = hp->n_vocab;
    kvlm_status st;
    if ((st = bind_weight(g, "token_embd.weight", E, V, true, &m->tok_embd, err))) return st;
    if ((st = bind_vec(g, "output_norm.weight", E, true, &m->output_norm, err))) return st;
    if ((st = bind_weight(g, "output.weight", E, V, false, &m->output, err))) return st;
    m->tied_output = m->output.data == NULL;
    if (m->tied_output) m->output = m->tok_embd;
    count(m, &m->tok_embd);
    if (!m->tied_output) count(m, &m->output);
    m->n_params += (uint64_t)E;

    for (int l = 0; l < hp->n_layer; l++) {
        kv_layer *L = &m->layers[l];
        char n[96];
#define NM(s) (snprintf(n, sizeof n, "blk.%d." s, l), n)
        if ((st = bind_vec(g, NM("attn_norm.weight"), E, true, &L->attn_norm, err))) return st;
        if ((st = bind_weight(g, NM("attn_q.weight"), E, Q, true, &L->wq, err))) return st;
        if ((st = bind_weight(g, NM("attn_k.weight"), E, KV, true, &L->wk, err))) return st;
        if ((st = bind_weight(g, NM("attn_v.weight"), E, KV, true, &L->wv, err))) return st;
        if ((st = bind_weight(g, NM("attn_output.weight"), Q, E, true, &L->wo, err))) return st;
        if ((st = bind_vec(g, NM("ffn_norm.weight"), E, true, &L->ffn_norm, err))) return st;
        if ((st = bind_weight(g, NM("ffn_gate.weight"), E, F, true, &L->w_gate, err))) return st;
        if ((st = bind_weight(g, NM("ffn_up.weight"), E, F, true, &L->w_up, err))) return st;
        if ((st = bind_weight(g, NM("ffn_down.weight"), F, E, true, &L->w_down, err))) return st;
        if ((st = bind_vec(g, NM("attn_q.bias"), Q, false, &L->bq, err))) return st;
        if ((st = bind_vec(g, NM("attn_k.bias"), KV, false, &L->bk, err))) return st;
        if ((st = bind_vec(g, NM("attn_v.bias"), KV, false, &L->bv, err))) return st;
        const bool bitnet = hp->arch == KV_ARCH_BITNET || hp->arch == KV_ARCH_BITNET_B158;
        if ((st = bind_vec(g, NM("attn_sub_norm.weight"), Q, bitnet, &L->attn_sub_norm, err))) return st;
        if ((st = bind_vec(g, NM("ffn_sub_norm.weight"), F, bitnet, &L->ffn_sub_norm, err))) return st;
        if (hp->arch == KV_ARCH_QWEN2 && (!L->bq.data || !L->bk.data || !L->bv.data))
            return kv_fail(err, KVLM_ERR_FORMAT, "model: qwen2 layer %d lacks its q/k/v biases", l);
        const char *wn[7] = {"attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                             "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"};
        kv_weight *wp[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 7; i++) {
            snprintf(n, sizeof n, "blk.%d.%s", l, wn[i]);
            if ((st = bind_scale(g, n, wp[i], err))) return st;
        }
#undef NM
        const kv_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) count(m, ws[i]);
        m->n_params += (uint64_t)(2 * E);
    }
    return KVLM_OK;
}

kvlm_status kv_model_from_gguf(gguf_ctx *g, bool vocab_only, kvlm_model **out, kvlm_error *err) {
    *out = NULL;
    kvlm_model *m = calloc(1, sizeof *m);
    if (!m) {
        gguf_close(g);
        return kv_fail(err, KVLM_ERR_NOMEM, "model: out of memory");
    }
    m->gguf = g;
    m->n_threads = 1;
    m->vocab_only = vocab_only;
    kvlm_status st;
    if (vocab_only) {
        gguf_str arch = {0, ""};
        gguf_get_str(g, "general.architecture", &arch);
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
    if ((st = bind_llama(m, err))) goto fail;
    *out = m;
    return KVLM_OK;
fail:
    kv_vocab_free(m->vocab);
    free(m->layers);
    gguf_close(g);
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
