#include "rope.h"

#include <math.h>

void kv_rope(float *x, int n_heads, int head_dim, int n_rot, int32_t pos, float base, float freq_scale, int type) {
    const float theta_scale = powf(base, -2.0f / (float)n_rot);
    float theta = (float)pos;
    for (int i = 0; i < n_rot / 2; i++) {
        const float th = freq_scale * theta;
        const float c = cosf(th), s = sinf(th);
        const int a = type == KV_ROPE_NEOX ? i : 2 * i;
        const int b = type == KV_ROPE_NEOX ? i + n_rot / 2 : 2 * i + 1;
        for (int h = 0; h < n_heads; h++) {
            float *xh = x + (int64_t)h * head_dim;
            const float x0 = xh[a], x1 = xh[b];
            xh[a] = x0 * c - x1 * s;
            xh[b] = x0 * s + x1 * c;
        }
        theta *= theta_scale;
    }
}
