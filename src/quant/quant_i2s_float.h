/* I2_S weights dotted with float activations (see quant_i2s_float.c). */
#ifndef KV_QUANT_I2S_FLOAT_H
#define KV_QUANT_I2S_FLOAT_H

#include <stdint.h>

void kv_vec_dot_i2_s_f32(int64_t n, float *s, const void *x, const void *y);

#endif
