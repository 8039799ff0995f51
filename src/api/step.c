/* kvlm.h: stepwise generation helpers — the public text stream (UTF-8
 * hold-back and stop strings, as kvlm_generate) and log-probabilities. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "kvlm.h"
#include "textstream.h"

#define TS_MAX_STOP 64

struct kvlm_text_stream {
    const kvlm_model *model;
    kv_stream st;
    char *stop_copy[TS_MAX_STOP];
    bool stopped;
};

kvlm_status kvlm_text_stream_new(const kvlm_model *model, const char *const *stop, int32_t n_stop,
                                 kvlm_text_stream **out, kvlm_error *err) {
    kv_error_clear(err);
    if (!out) return kv_fail(err, KVLM_ERR_INVALID_ARG, "text stream: NULL out");
    *out = NULL;
    if (!model) return kv_fail(err, KVLM_ERR_INVALID_ARG, "text stream: NULL model");
    if (n_stop < 0 || n_stop > TS_MAX_STOP || (n_stop > 0 && !stop))
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "text stream: %d stop strings (0..%d)", (int)n_stop, TS_MAX_STOP);
    for (int32_t i = 0; i < n_stop; i++)
        if (!stop[i] || !stop[i][0])
            return kv_fail(err, KVLM_ERR_INVALID_ARG, "text stream: stop string %d is empty", (int)i);
    kvlm_text_stream *ts = calloc(1, sizeof *ts);
    if (!ts) return kv_fail(err, KVLM_ERR_NOMEM, "text stream: out of memory");
    ts->model = model;
    for (int32_t i = 0; i < n_stop; i++) {
        size_t l = strlen(stop[i]);
        ts->stop_copy[i] = malloc(l + 1);
        if (!ts->stop_copy[i]) {
            kvlm_text_stream_free(ts);
            return kv_fail(err, KVLM_ERR_NOMEM, "text stream: out of memory");
        }
        memcpy(ts->stop_copy[i], stop[i], l + 1);
    }
    ts->st.stop = (const char *const *)ts->stop_copy;
    ts->st.n_stop = n_stop;
    *out = ts;
    return KVLM_OK;
}

void kvlm_text_stream_free(kvlm_text_stream *ts) {
    if (!ts) return;
    for (int i = 0; i < TS_MAX_STOP; i++) free(ts->stop_copy[i]);
    free(ts->st.pending.data);
    free(ts->st.emitted.data);
    free(ts->st.chunk.data);
    free(ts);
}

kvlm_status kvlm_text_stream_push(kvlm_text_stream *ts, kvlm_token t, bool final, const char **text, size_t *len,
                                  bool *stopped, kvlm_error *err) {
    kv_error_clear(err);
    if (text) *text = "";
    if (len) *len = 0;
    if (!ts) return kv_fail(err, KVLM_ERR_INVALID_ARG, "text stream: NULL stream");
    if (stopped) *stopped = ts->stopped;
    if (ts->stopped) return KVLM_OK;
    char small[256];
    char *piece = small;
    int32_t pl = 0;
    if (t >= 0) {
        if (t >= kvlm_n_vocab(ts->model))
            return kv_fail(err, KVLM_ERR_INVALID_ARG, "text stream: token %d out of range", (int)t);
        pl = kvlm_token_to_piece(ts->model, t, small, (int32_t)sizeof small, false);
        if (pl < 0) {
            piece = malloc((size_t)-pl);
            if (!piece) return kv_fail(err, KVLM_ERR_NOMEM, "text stream: out of memory");
            pl = kvlm_token_to_piece(ts->model, t, piece, -pl, false); /* the size it asked for: fits */
        }
    }
    int r = kv_stream_push(&ts->st, piece, (size_t)pl, final);
    if (piece != small) free(piece);
    if (r < 0) return kv_fail(err, KVLM_ERR_NOMEM, "text stream: out of memory");
    if (r == 1) {
        ts->stopped = true;
        ts->st.pending.n = 0;
    }
    if (text) *text = ts->st.chunk.data ? ts->st.chunk.data : "";
    if (len) *len = ts->st.chunk.n;
    if (stopped) *stopped = ts->stopped;
    return KVLM_OK;
}

const char *kvlm_text_stream_text(const kvlm_text_stream *ts, size_t *len) {
    if (len) *len = ts && ts->st.emitted.data ? ts->st.emitted.n : 0;
    return ts && ts->st.emitted.data ? ts->st.emitted.data : "";
}

kvlm_status kvlm_logprobs(const float *logits, int32_t n_vocab, kvlm_token token, float *logprob, int32_t top_n,
                          kvlm_token *top_tokens, float *top_logprobs, kvlm_error *err) {
    kv_error_clear(err);
    if (!logits || n_vocab <= 0) return kv_fail(err, KVLM_ERR_INVALID_ARG, "logprobs: no logits");
    if (logprob && (token < 0 || token >= n_vocab))
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "logprobs: token %d out of range", (int)token);
    if (top_n < 0 || top_n > n_vocab || (top_n > 0 && (!top_tokens || !top_logprobs)))
        return kv_fail(err, KVLM_ERR_INVALID_ARG, "logprobs: top_n %d (0..%d, with output arrays)", (int)top_n,
                       (int)n_vocab);
    double mx = -INFINITY;
    for (int32_t i = 0; i < n_vocab; i++)
        if (isnan(logits[i])) return kv_fail(err, KVLM_ERR_INVALID_ARG, "logprobs: logit %d is NaN", (int)i);
        else if (logits[i] > mx) mx = logits[i];
    if (!isfinite(mx)) return kv_fail(err, KVLM_ERR_INVALID_ARG, "logprobs: no finite logit");
    double sum = 0;
    for (int32_t i = 0; i < n_vocab; i++) sum += exp((double)logits[i] - mx);
    const double lse = mx + log(sum);
    if (logprob) *logprob = (float)((double)logits[token] - lse);
    /* top_n by insertion into a sorted prefix (top_n is small in practice) */
    int32_t have = 0;
    for (int32_t i = 0; i < n_vocab && top_n > 0; i++) {
        float v = logits[i];
        if (have == top_n && !(v > logits[top_tokens[have - 1]])) continue;
        int32_t j = have < top_n ? have++ : top_n - 1;
        while (j > 0 && v > logits[top_tokens[j - 1]]) {
            top_tokens[j] = top_tokens[j - 1];
            j--;
        }
        top_tokens[j] = i;
    }
    for (int32_t k = 0; k < top_n; k++) top_logprobs[k] = (float)((double)logits[top_tokens[k]] - lse);
    return KVLM_OK;
}
