/* Architectures: hyperparameters from GGUF metadata and tensor binding. */
#ifndef KV_MODEL_H
#define KV_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "gguf/gguf.h"
#include "kvlm.h"
#include "tokenizer/vocab.h"

typedef enum kv_arch { KV_ARCH_LLAMA = 1, KV_ARCH_QWEN2, KV_ARCH_BITNET, KV_ARCH_BITNET_B158,
               KV_ARCH_QWEN3, KV_ARCH_GEMMA3, KV_ARCH_PHI3 = 32 } kv_arch;
#include "core/rope.h"

typedef int kv_rope_type; /* KV_ROPE_NORM or KV_ROPE_NEOX (core/rope.h) */
/* <arch>.rope.scaling.type (absent: linear, as llama.cpp reads it) */
typedef enum kv_rope_scaling {
    KV_ROPE_SCALING_NONE = 0,
    KV_ROPE_SCALING_LINEAR,
    KV_ROPE_SCALING_YARN,
    KV_ROPE_SCALING_LONGROPE = 16 /* phi3: rope_factors_long/short chosen by the context (kv_model_rope) */
} kv_rope_scaling;
typedef enum kv_ffn_act { KV_FFN_SILU = 0, KV_FFN_RELU2 = 1, KV_FFN_GELU = 2 /* tanh form (gemma3) */ } kv_ffn_act;

struct kv_quant_gemm;

/* A weight matrix: ne0 columns (the reduction length), ne1 rows. */
typedef struct kv_weight {
    const void *data;
    uint32_t type;
    int64_t ne0, ne1;
    uint64_t row_bytes;
    float scale; /* per-tensor scale (I2_S); 1 otherwise */
    /* NULL: data is the file's rows. Else data is in the row-interleaved
     * layout of il->il_rows rows (quant.h), to be multiplied with
     * il->gemm_il, in row ranges that start on a multiple of il_rows. */
    const struct kv_quant_gemm *il;
} kv_weight;

/* A 1-D f32 tensor (norm weights, biases); NULL data when absent. */
typedef struct kv_vec {
    const float *data;
    int64_t n;
} kv_vec;

typedef struct kv_layer {
    kv_vec attn_norm, attn_sub_norm, ffn_norm, ffn_sub_norm;
    kv_weight wq, wk, wv, wo;
    kv_vec bq, bk, bv;
    kv_weight w_gate, w_up, w_down;
    kv_vec attn_q_norm, attn_k_norm; /* qwen3: RMSNorm weights (head_dim) of each head of q and k, before RoPE */
    kv_vec attn_post_norm, ffn_post_norm; /* gemma3: RMSNorm of the attention and FFN outputs before their residual adds */
} kv_layer;

typedef struct kv_hparams {
    kv_arch arch;
    char arch_name[32];
    int32_t n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_rot;
    float rope_freq_base, rope_freq_scale, norm_eps;
    kv_rope_type rope_type;
    kv_rope_scaling rope_scaling;
    float rope_attn_factor;  /* rope.scaling.attn_factor (1 if absent) */
    int32_t n_ctx_orig;      /* rope.scaling.original_context_length (n_ctx_train if absent) */
    kv_ffn_act ffn_act;
    /* phi3 */
    bool q_prescaled;        /* q is multiplied by 1/sqrt(head_dim) after RoPE, before the cache (phi3's graph) */
    /* phi3 and gemma3: attention.sliding_window. phi3: every layer sees the last n_swa positions
       (swa_pattern 0; run as the ring policy, kv_model_check_session); gemma3: the local layers do */
    int32_t n_swa;             /* 0: none */
    /* gemma3 */
    float embd_scale;          /* token embeddings multiplied by it (sqrt(n_embd) for gemma3; 1 otherwise) */
    int32_t swa_pattern;       /* layer l is global when (l + 1) % swa_pattern == 0, local otherwise */
    float rope_freq_base_swa;  /* the local layers' RoPE base (their scale is 1) */
} kv_hparams;

/* Whether layer l attends over a sliding window (gemma3's local layers). */
static inline bool kv_layer_is_swa(const kv_hparams *hp, int l) {
    return hp->n_swa > 0 && hp->swa_pattern > 0 && (l + 1) % hp->swa_pattern != 0;
}

struct kvlm_model {
    gguf_ctx *gguf;
    kv_hparams hp;
    kv_weight tok_embd, output;
    kv_vec output_norm;
    kv_vec rope_freqs; /* rope_freqs.weight: n_rot/2 divisors of the RoPE angles (Llama 3.x), or none */
    kv_vec rope_long, rope_short; /* phi3 LongRoPE: rope_factors_{long,short}.weight (head_dim/2 each), or none */
    bool tied_output;
    kv_layer *layers;
    kv_vocab *vocab;
    int n_threads;
    bool vocab_only;
    bool ternary_f32; /* I2_S x float activations */
    uint64_t n_params, weight_bytes;
    void *il_map;       /* the interleaved weights (anonymous memory), or NULL */
    size_t il_map_size;
    uint64_t il_bytes;  /* bytes of weights interleaved */
};

/* Binds an opened GGUF (takes ownership on success and on failure). With
 * vocab_only, only the tokenizer is loaded. */
kvlm_status kv_model_from_gguf(gguf_ctx *g, bool vocab_only, kvlm_model **out, kvlm_error *err);

/* Repacks the matrices the forward pass multiplies (not the token
 * embeddings' lookups, not I2_S with ternary_f32) into the row-interleaved
 * layout of the running CPU's gemm kernels, once, into one anonymous
 * mapping (transparent huge pages asked for), and gives the file
 * mapping's pages of those tensors back to the kernel, so that resident
 * memory holds one copy (the file stays mapped: whatever reads tensors
 * through m->gguf, e.g. the session fingerprint, still reads the file's
 * bytes). Every output keeps its bits. Nothing to do on a CPU without
 * interleaved kernels; if the memory cannot be had, the weights stay in
 * the file's layout. The environment can turn it off for A/B benchmarks:
 * KVLM_INTERLEAVE=0 keeps the file layout (in the file's mapping),
 * KVLM_INTERLEAVE=copy makes the same anonymous copy but in the file's row
 * order, KVLM_HUGEPAGES=0 leaves the copy to the system's default page
 * size. Call once, after the
 * model's parameters are set. */
void kv_model_interleave(kvlm_model *m);
/* Frees what kv_model_interleave allocated (kvlm_model_free calls it). */
void kv_model_release_interleaved(kvlm_model *m);
/* The RoPE a session of n_ctx tokens uses (scaling, YaRN terms, frequency
 * factors), as llama.cpp derives it from the model's metadata and tensors. */
void kv_model_rope(const kvlm_model *m, int32_t n_ctx, kv_rope *out);
/* Refuses a session the model's attention would not run as the reference
 * does: phi3's sliding window masks keys n_swa or more positions back, which
 * kvlm's attention does only as the ring policy's window; any other session
 * must have n_ctx <= n_swa (then no key is ever that far back). */
kvlm_status kv_model_check_session(const kvlm_model *m, int32_t n_ctx, int overflow, int32_t window, kvlm_error *err);
/* The RoPE of the sliding-window layers (gemma3: base rope_freq_base_swa, scale 1, no factors). */
void kv_model_rope_swa(const kvlm_model *m, int32_t n_ctx, kv_rope *out);

#endif
