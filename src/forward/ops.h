/* Small vector operations of the forward pass, with AVX2+FMA versions chosen
 * at run time. Each gives the same bits as its scalar loop (elementwise fma is
 * exactly rounded either way). */
#ifndef KV_FORWARD_OPS_H
#define KV_FORWARD_OPS_H

#include <stdint.h>

/* y[i] = fmaf(a, x[i], y[i]) */
void kv_axpy(int64_t n, float a, const float *x, float *y);

#endif
