/* Draft sources for speculative decoding: prompt lookup over the context and a small draft model.
 * A draft only proposes; generate.c verifies every drafted token against the target model, so
 * nothing here can change what is generated, only how many forward passes it takes. */
#include "draft.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "session_impl.h"
#include "tokenizer/vocab.h"

int32_t kv_draft_lookup(const kvlm_token *ctx, int32_t n, int32_t ngram_max, kvlm_token *out, int32_t k) {
    if (k <= 0 || n < 2) return 0;
    for (int32_t g = ngram_max < n - 1 ? ngram_max : n - 1; g >= 1; g--) {
        const kvlm_token *tail = ctx + n - g;
        /* latest start i < n - g whose g tokens equal the tail and that has a continuation */
        for (int32_t i = n - g - 1; i >= 0; i--) {
            if (ctx[i] != tail[0] || memcmp(ctx + i, tail, (size_t)g * sizeof *ctx) != 0) continue;
            int32_t from = i + g, m = n - from < k ? n - from : k;
            memcpy(out, ctx + from, (size_t)m * sizeof *out);
            return m;
        }
    }
    return 0;
}

kvlm_status kv_draft_check_vocab(const kvlm_model *target, const kvlm_model *draft, kvlm_error *err) {
    const kv_vocab *a = target->vocab, *b = draft->vocab;
    const int32_t n = kv_vocab_n_tokens(a);
    if (kv_vocab_n_tokens(b) != n || target->hp.n_vocab != draft->hp.n_vocab)
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "draft: the draft model has %d tokens, the model %d",
                       kv_vocab_n_tokens(b), n);
    if (kv_vocab_type(a) != kv_vocab_type(b) || kv_vocab_bos(a) != kv_vocab_bos(b) || kv_vocab_eos(a) != kv_vocab_eos(b))
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "draft: the draft model's tokenizer is not the model's "
                                                  "(type or BOS/EOS differ)");
    for (int32_t t = 0; t < n; t++) {
        size_t la, lb;
        const char *ta = kv_vocab_token_text(a, t, &la), *tb = kv_vocab_token_text(b, t, &lb);
        if (la != lb || (la && memcmp(ta, tb, la) != 0) || kv_vocab_is_eog(a, t) != kv_vocab_is_eog(b, t))
            return kv_fail(err, KVLM_ERR_INVALID_ARG, "draft: token %d differs between the model and the draft model",
                           t);
    }
    return KVLM_OK;
}

static kvlm_token argmax(const float *x, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

kvlm_status kv_draft_model(kvlm_session *ds, const kvlm_token *ctx, int32_t n, kvlm_token *out, int32_t k,
                           int32_t *n_out, kvlm_error *err) {
    *n_out = 0;
    const int32_t V = ds->model->hp.n_vocab, room = kvlm_session_n_ctx(ds) - n;
    if (k > room) k = room;
    if (k <= 0) return KVLM_OK;
    float *logits = malloc((size_t)V * sizeof *logits);
    if (!logits) return kv_fail(err, KVLM_ERR_NOMEM, "draft: out of memory");
    if (!kv_session_acquire(ds)) {
        free(logits);
        return kv_fail(err, KVLM_ERR_BUSY, "draft: the draft session is in use by another call");
    }
    /* the n_past contract keeps the common prefix: what was verified stays, rejected drafts roll back */
    kvlm_status st = kv_session_eval_locked(ds, ctx, n, KVLM_AUTO, logits, false, err);
    for (int32_t i = 0; !st && i < k; i++) {
        out[i] = argmax(logits, V);
        *n_out = i + 1;
        if (kv_vocab_is_eog(ds->model->vocab, out[i])) break; /* generation would end there */
        if (i + 1 < k) st = kv_session_append_locked(ds, out + i, 1, logits, false, err);
    }
    kv_session_release(ds);
    free(logits);
    return st;
}
