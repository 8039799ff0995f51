/* kvlm.h: the public sampler, a thin wrapper over src/sampler. */
#include "core/error.h"
#include "kvlm.h"
#include "sampler/sampler.h"

_Static_assert(sizeof(kvlm_logit_bias) == sizeof(kv_logit_bias), "logit bias layouts agree");

kvlm_sampling_params kvlm_sampling_default_params(void) {
    kv_sampler_params d = kv_sampler_default_params();
    kvlm_sampling_params p = {
        .temperature = d.temperature, .top_k = d.top_k, .top_p = d.top_p, .min_p = d.min_p,
        .repeat_penalty = d.repeat_penalty, .frequency_penalty = d.frequency_penalty,
        .presence_penalty = d.presence_penalty, .penalty_last_n = d.penalty_last_n, .seed = d.seed,
        .logit_bias = NULL, .n_logit_bias = 0,
    };
    return p;
}

kv_sampler_params kv_sampler_params_from(const kvlm_sampling_params *p) {
    kv_sampler_params q = {
        .temperature = p->temperature, .top_k = p->top_k, .top_p = p->top_p, .min_p = p->min_p,
        .repeat_penalty = p->repeat_penalty, .frequency_penalty = p->frequency_penalty,
        .presence_penalty = p->presence_penalty, .penalty_last_n = p->penalty_last_n, .seed = p->seed,
        .logit_bias = (const kv_logit_bias *)p->logit_bias, .n_logit_bias = p->n_logit_bias,
    };
    return q;
}

kvlm_status kvlm_sampler_new(const kvlm_sampling_params *params, int32_t n_vocab, kvlm_sampler **out,
                             kvlm_error *err) {
    kv_error_clear(err);
    if (!out) return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler_new: NULL argument");
    kvlm_sampling_params d = kvlm_sampling_default_params();
    kv_sampler_params q = kv_sampler_params_from(params ? params : &d);
    return kv_sampler_new(&q, n_vocab, (kv_sampler **)out, err);
}

void kvlm_sampler_free(kvlm_sampler *s) { kv_sampler_free((kv_sampler *)s); }

kvlm_status kvlm_sampler_sample(kvlm_sampler *s, const float *logits, kvlm_token *out, kvlm_error *err) {
    kv_error_clear(err);
    return kv_sampler_sample((kv_sampler *)s, logits, out, err);
}

kvlm_status kvlm_sampler_accept(kvlm_sampler *s, kvlm_token t, kvlm_error *err) {
    kv_error_clear(err);
    return kv_sampler_accept((kv_sampler *)s, t, err);
}

void kvlm_sampler_reset(kvlm_sampler *s) { kv_sampler_reset((kv_sampler *)s); }
