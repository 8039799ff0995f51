#include "rope.h"

#include <math.h>

#define KV_PI 3.14159265358979323846

/* ggml_rope_yarn_corr_dim: the pair whose wavelength makes `turns` turns in n_ctx_orig positions */
static float corr_dim(int n_dims, int32_t n_ctx_orig, float turns, float base) {
    return (float)n_dims * logf((float)n_ctx_orig / (turns * 2.0f * (float)KV_PI)) / (2.0f * logf(base));
}

void kv_rope_init(kv_rope *r) {
    const float start = floorf(corr_dim(r->n_rot, r->n_ctx_orig, r->beta_fast, r->base));
    const float end = ceilf(corr_dim(r->n_rot, r->n_ctx_orig, r->beta_slow, r->base));
    r->corr_dims[0] = start > 0.0f ? start : 0.0f;
    r->corr_dims[1] = end < (float)(r->n_rot - 1) ? end : (float)(r->n_rot - 1);
}

/* 1 below corr_dims[0], 0 above corr_dims[1], linear between (ggml's rope_yarn_ramp; i is the pair) */
static float ramp(const float dims[2], int i) {
    const float d = dims[1] - dims[0];
    const float y = ((float)i - dims[0]) / (d > 0.001f ? d : 0.001f);
    const float c = y < 0.0f ? 0.0f : y;
    return 1.0f - (c < 1.0f ? c : 1.0f);
}

static void rotate(const kv_rope *r, float *x, int n_heads, int head_dim, int32_t pos, bool magnitude) {
    const int n_rot = r->n_rot;
    const float theta_scale = powf(r->base, -2.0f / (float)n_rot);
    float mscale = 1.0f;
    if (magnitude) {
        mscale = r->attn_factor;
        if (r->ext_factor != 0.0f) mscale *= 1.0f + 0.1f * logf(1.0f / r->freq_scale);
    }
    float theta = (float)pos;
    for (int i = 0; i < n_rot / 2; i++) {
        const float extrap = r->freq_factors ? theta / r->freq_factors[i] : theta;
        const float interp = r->freq_scale * extrap;
        float th = interp;
        if (r->ext_factor != 0.0f) {
            const float mix = ramp(r->corr_dims, i) * r->ext_factor;
            th = interp * (1.0f - mix) + extrap * mix;
        }
        const float c = cosf(th) * mscale, s = sinf(th) * mscale;
        const int a = r->type == KV_ROPE_NEOX ? i : 2 * i;
        const int b = r->type == KV_ROPE_NEOX ? i + n_rot / 2 : 2 * i + 1;
        for (int h = 0; h < n_heads; h++) {
            float *xh = x + (int64_t)h * head_dim;
            const float x0 = xh[a], x1 = xh[b];
            xh[a] = x0 * c - x1 * s;
            xh[b] = x0 * s + x1 * c;
        }
        theta *= theta_scale;
    }
}

void kv_rope_apply(const kv_rope *r, float *x, int n_heads, int head_dim, int32_t pos) {
    rotate(r, x, n_heads, head_dim, pos, true);
}

void kv_rope_shift(const kv_rope *r, float *x, int n_heads, int head_dim, int32_t delta) {
    rotate(r, x, n_heads, head_dim, delta, false);
}
