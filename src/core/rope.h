/* Rotary position embedding, shared by the forward pass and the KV cache's
 * re-rotation (context shift). */
#ifndef KV_CORE_ROPE_H
#define KV_CORE_ROPE_H

#include <stdint.h>

enum { KV_ROPE_NORM = 0, KV_ROPE_NEOX = 2 };

/* Rotates the first n_rot dims of each of n_heads heads of x (head_dim apart)
 * to position pos (NORM: adjacent pairs; NEOX: pairs (i, i + n_rot/2)).
 * theta_i = pos * freq_scale * base^(-2i/n_rot), the power built by repeated
 * multiplication as ggml does. A negative pos rotates backwards. */
void kv_rope(float *x, int n_heads, int head_dim, int n_rot, int32_t pos, float base, float freq_scale, int type);

#endif
