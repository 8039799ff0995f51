/* Checks of a page-table state that comes from outside the engine (a session
 * file) against what the sequence's overflow policy can produce, so that
 * attention never reads a page or slot that does not exist or was never
 * written. The rules follow kv_seq.c:
 *  - error, shift, sliding: slots [0, n) hold positions 0..n-1 in order
 *    (a shift re-rotates the survivors so positions stay contiguous), the
 *    next position is n, pages [0, ceil(n / P)) exist;
 *  - ring (capacity C = s->n_ctx, a multiple of P): slot = position mod C,
 *    n = min(next_pos, C), slot i holds the one position c of
 *    [next_pos - n, next_pos) congruent to i, or c + C: a slot written
 *    before a rollback of the ring, which attention masks (its position is
 *    after every query) until a pass overwrites it; all C / P pages exist.
 * Position counters are bounded by KV_POS_LIMIT so continuing can never
 * overflow an int32. */
#include <stdio.h>

#include "core/error.h"
#include "kv_cache.h"

static const char *policy_name(kvlm_overflow o) {
    switch (o) {
    case KVLM_OVERFLOW_ERROR: return "error";
    case KVLM_OVERFLOW_SHIFT: return "shift";
    case KVLM_OVERFLOW_SLIDING: return "sliding";
    case KVLM_OVERFLOW_RING: return "ring";
    }
    return "unknown";
}

int32_t kv_seq_state_pos(const kv_seq *s, int32_t next_pos, int32_t slot) {
    if (s->overflow != KVLM_OVERFLOW_RING || next_pos <= s->n_ctx) return slot;
    const int64_t c = s->n_ctx, base = (int64_t)next_pos - c;
    return (int32_t)(base + (((int64_t)slot - base) % c + c) % c);
}

int64_t kv_seq_state_pages(const kv_seq *s, int32_t n) {
    if (s->overflow == KVLM_OVERFLOW_RING) return s->n_ctx / s->P;
    return ((int64_t)n + s->P - 1) / s->P;
}

kvlm_status kv_seq_check_state(const kv_seq *s, int32_t n, int32_t next_pos, const int32_t *pos, kvlm_error *err) {
    const char *pol = policy_name(s->overflow);
    if (n < 0 || n > s->n_ctx)
        return kv_fail(err, KVLM_ERR_FORMAT, "holds %d slots, outside 0..%d (the %s cache's capacity)", n, s->n_ctx,
                       pol);
    if (next_pos < 0 || next_pos > KV_POS_LIMIT)
        return kv_fail(err, KVLM_ERR_FORMAT, "has next position %d, outside 0..%d", next_pos, KV_POS_LIMIT);
    if (s->overflow == KVLM_OVERFLOW_RING) {
        const int32_t want = next_pos < s->n_ctx ? next_pos : s->n_ctx;
        if (n != want)
            return kv_fail(err, KVLM_ERR_FORMAT, "is a ring of %d slots at position %d holding %d slots (must be %d)",
                           s->n_ctx, next_pos, n, want);
    } else if (next_pos != n) {
        return kv_fail(err, KVLM_ERR_FORMAT, "holds %d slots of a %s cache but continues at position %d (must be %d)",
                       n, pol, next_pos, n);
    }
    const bool ring = s->overflow == KVLM_OVERFLOW_RING;
    if (pos)
        for (int32_t i = 0; i < n; i++) {
            const int32_t want = kv_seq_state_pos(s, next_pos, i);
            if (pos[i] != want && !(ring && (int64_t)pos[i] == (int64_t)want + s->n_ctx))
                return kv_fail(err, KVLM_ERR_FORMAT, "has position %d in slot %d (a %s cache holds %d there)", pos[i],
                               i, pol, want);
        }
    return KVLM_OK;
}

const kv_layout *kv_seq_page_layout(const kv_seq *s, uint32_t type_k, uint32_t type_v) {
    const kv_layout *l = s->layout;
    if (l && l->type_k == type_k && l->type_v == type_v) return l;
    l = s->compress_layout; /* tiered compression never runs on a ring */
    if (l && s->overflow != KVLM_OVERFLOW_RING && l->type_k == type_k && l->type_v == type_v) return l;
    return NULL;
}
