/* Rotary position embedding, shared by the forward pass and the KV cache's
 * re-rotation (context shift, sliding). The float operations are llama.cpp's
 * (ggml_rope_ext: ggml_rope_cache_init, rope_yarn), so that logits match. */
#ifndef KV_CORE_ROPE_H
#define KV_CORE_ROPE_H

#include <stdbool.h>
#include <stdint.h>

enum { KV_ROPE_NORM = 0, KV_ROPE_NEOX = 2 };

/* Everything that decides the rotation of one position. */
typedef struct kv_rope {
    int type;                  /* KV_ROPE_NORM (adjacent pairs) or KV_ROPE_NEOX (pairs (i, i + n_rot/2)) */
    int n_rot;                 /* rotated dims of each head (even); the rest pass through */
    float base;                /* theta_i = pos * base^(-2i/n_rot) before scaling */
    float freq_scale;          /* 1/factor of linear or YaRN scaling; 1 for none */
    float ext_factor;          /* YaRN extrapolation mix: 1 for YaRN, 0 otherwise */
    float attn_factor;         /* magnitude of cos/sin (YaRN adds 1 + 0.1 ln(1/freq_scale) on top) */
    float beta_fast, beta_slow;/* YaRN ramp: pairs rotating more than beta_fast / less than beta_slow
                                  turns in n_ctx_orig positions extrapolate / interpolate */
    int32_t n_ctx_orig;        /* the context the model was trained for before scaling */
    float corr_dims[2];        /* YaRN ramp bounds in pairs, from the above (kv_rope_init) */
    const float *freq_factors; /* n_rot/2 divisors of theta_i (Llama 3.x rope_freqs, LongRoPE), or NULL */
    uint32_t variant;          /* which of a model's context-dependent rotations this is (LongRoPE: 1 long,
                                  0 short or none): enters the prefix-cache key, so that pages rotated one
                                  way are never reused by a sequence that rotates the other */
} kv_rope;

/* Fills the derived fields (corr_dims) once the others are set. */
void kv_rope_init(kv_rope *r);

/* Rotates the first n_rot dims of each of n_heads heads of x (head_dim apart)
 * to position pos, as ggml_rope_ext does: theta = pos * base^(-2i/n_rot) (the
 * power built by repeated multiplication), divided by freq_factors[i], then
 * YaRN-mixed with freq_scale * theta, and cos/sin scaled by the magnitude. */
void kv_rope_apply(const kv_rope *r, float *x, int n_heads, int head_dim, int32_t pos);

/* Rotates by delta positions (negative: backwards) with the same angles but
 * magnitude 1: a key already rotated to p becomes the key rotated to
 * p + delta. (llama.cpp's K shift applies the magnitude again, which moves
 * YaRN keys by mscale^2 per shift; we do not.) */
void kv_rope_shift(const kv_rope *r, float *x, int n_heads, int head_dim, int32_t delta);

#endif
