/* Beam search for kvlm_generate (kvlm.h, kvlm_generate_params.n_beams). */
#ifndef KV_BEAM_H
#define KV_BEAM_H

#include <stdint.h>

#include "kvlm.h"

/* The most beams one search keeps. */
#define KV_BEAM_MAX 64

/* A final hypothesis: its tokens (the end-of-generation token that ended it is not among them) and
   how it ended. */
typedef struct kv_hyp {
    kvlm_token *tokens;
    int32_t n;
    double logprob, score;
    kvlm_finish_reason finish;
    bool eos;     /* ended by an end-of-generation token (every token was then fed) */
    int64_t order; /* when it was found (ties go to the earlier) */
} kv_hyp;

/* Runs the search from the session's state (the caller holds it; its last evaluation left
   root_logits, the row after the context) for at most max_gen tokens: *hyps gets the final
   hypotheses, best first (*n_hyps of them, at least one when max_gen > 0 and no error), and
   res's beam statistics (n_passes, beam_kv_bytes_*) are filled. The session is left as it was;
   kv_beam_adopt makes it hold a hypothesis. fin_out: KVLM_FINISH_CANCELLED / _DEADLINE when the
   search was cut short (the hypotheses are then the live beams and what had finished), else
   KVLM_FINISH_LENGTH. */
kvlm_status kv_beam_search(kvlm_session *s, const float *root_logits, int32_t max_gen, double deadline,
                           const kvlm_generate_params *gp, kvlm_generate_result *res, kv_hyp **hyps,
                           int32_t *n_hyps, kvlm_finish_reason *fin_out, kvlm_error *err);

/* Feeds the session the tokens of h that plain decoding would have fed (all of them after an
   end-of-generation token, all but the last otherwise). */
kvlm_status kv_beam_adopt(kvlm_session *s, const kv_hyp *h, kvlm_error *err);

void kv_hyps_free(kv_hyp *h, int32_t n);

#endif
