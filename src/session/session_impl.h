/* Session internals shared by session.c and persist.c. */
#ifndef KV_SESSION_IMPL_H
#define KV_SESSION_IMPL_H

#include <stdatomic.h>
#include <stdbool.h>

#include "core/tpool.h"
#include "forward/forward.h"
#include "kv/kv_cache.h"
#include "kvlm.h"
#include "model/model.h"

struct kvlm_cache {
    const kvlm_model *model;
    kv_page_pool *pool;
};

struct kvlm_session {
    kvlm_model *model;
    kvlm_cache *cache;
    bool own_cache;
    kv_seq seq;
    kv_seq_config seq_config;
    kv_tpool *tpool;
    kv_forward *fwd;
    int32_t n_consumed; /* tokens evaluated since the start (differs from seq.n after a shift) */
    atomic_int busy;    /* one call at a time */
    atomic_int cancel;  /* set by kvlm_session_cancel */
};

bool kv_session_acquire(kvlm_session *s);
void kv_session_release(kvlm_session *s);
/* kvlm_eval's body (the caller holds the session). */
kvlm_status kv_session_eval_locked(kvlm_session *s, const kvlm_token *tokens, int32_t n_tokens, int32_t n_past,
                                   float *logits, bool all_logits, kvlm_error *err);
/* Evaluates n new tokens after everything the session consumed. */
kvlm_status kv_session_append_locked(kvlm_session *s, const kvlm_token *toks, int32_t n, float *logits,
                                     bool all_logits, kvlm_error *err);
/* Whether the session may roll back (its slots are still the token history). */
bool kv_session_rewindable(const kvlm_session *s);

#endif
