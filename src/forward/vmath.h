/* Softmax, exp and SiLU for attention and the FFN (src/forward/vmath.c),
 * one fixed sequence of IEEE operations so every ISA gives the same bits. */
#ifndef KV_VMATH_H
#define KV_VMATH_H

#include <stdint.h>

/* exp as one fixed sequence of IEEE operations (src/forward/vmath.c), the
 * same bits on every ISA; relative error about 1e-7. */
float kv_expf_ref(float x);
/* x[i] = exp(x[i] - mx); returns their sum in double (8 lanes, i mod 8, then a tree) */
typedef double (*kv_softmax_fn)(int64_t n, float *x, float mx);
/* g[i] = g[i] / (1 + exp(-g[i])) * u[i] (SiLU(gate) * up) */
typedef void (*kv_silu_mul_fn)(int64_t n, float *g, const float *u);
kv_softmax_fn kv_quant_get_softmax(void);
kv_softmax_fn kv_quant_get_softmax_isa(int isa); /* NULL for an ISA the CPU lacks */
kv_silu_mul_fn kv_quant_get_silu_mul(void);
kv_silu_mul_fn kv_quant_get_silu_mul_isa(int isa);

#endif
