/* kvlm.h: the public sampler, a thin wrapper over src/sampler (which takes kvlm_sampling_params as is). */
#include "core/error.h"
#include "kvlm.h"
#include "sampler/sampler.h"

kvlm_sampling_params kvlm_sampling_default_params(void) { return kv_sampler_default_params(); }

kvlm_status kvlm_sampler_new(const kvlm_sampling_params *params, int32_t n_vocab, kvlm_sampler **out,
                             kvlm_error *err) {
    kv_error_clear(err);
    if (!out) return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler_new: NULL argument");
    const kvlm_sampling_params d = kv_sampler_default_params();
    return kv_sampler_new(params ? params : &d, n_vocab, (kv_sampler **)out, err);
}

void kvlm_sampler_free(kvlm_sampler *s) { kv_sampler_free((kv_sampler *)s); }

kvlm_status kvlm_sampler_sample(kvlm_sampler *s, const float *logits, kvlm_token *out, kvlm_error *err) {
    kv_error_clear(err);
    return kv_sampler_sample((kv_sampler *)s, logits, out, err);
}

kvlm_status kvlm_sampler_accept(kvlm_sampler *s, kvlm_token t, kvlm_error *err) {
    kv_error_clear(err);
    if (!s) return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: NULL argument");
    kv_sampler *k = (kv_sampler *)s;
    if (t < 0 || t >= kv_sampler_n_vocab(k))
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "sampler: token %d outside [0, %d)", (int)t, (int)kv_sampler_n_vocab(k));
    kvlm_status st = kv_sampler_accept_grammar(k, t, err);
    if (st != KVLM_OK) return st;
    return kv_sampler_accept(k, t, err);
}

kvlm_status kvlm_sampler_accept_history(kvlm_sampler *s, kvlm_token t, kvlm_error *err) {
    kv_error_clear(err);
    return kv_sampler_accept((kv_sampler *)s, t, err);
}

bool kvlm_sampler_grammar_complete(const kvlm_sampler *s) { return kv_sampler_grammar_complete((const kv_sampler *)s); }
bool kvlm_sampler_grammar_can_continue(const kvlm_sampler *s) {
    return kv_sampler_grammar_can_continue((const kv_sampler *)s);
}

void kvlm_sampler_reset(kvlm_sampler *s) { kv_sampler_reset((kv_sampler *)s); }
