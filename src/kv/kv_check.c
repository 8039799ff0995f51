/* Checks of a sequence's contents that come from outside the engine (a
 * session file, as a kv_seq_desc) against what the sequence's overflow policy
 * can produce, so that attention never reads a page or slot that does not
 * exist or was never written. The rules follow kv_seq.c:
 *  - error, shift, sliding: slots [0, n) hold positions 0..n-1 in order
 *    (a shift re-rotates the survivors so positions stay contiguous), the
 *    next position is n, pages [0, ceil(n / P)) exist;
 *  - ring (capacity C = s->n_ctx, a multiple of P): slot = position mod C,
 *    n = min(next_pos, C), slot i holds the one position c of
 *    [next_pos - n, next_pos) congruent to i, or c + C when c was dropped
 *    (c < n_dropped): a slot written before a rollback of the ring, which
 *    attention masks (its position is after every query) until a pass
 *    overwrites it; all C / P pages exist.
 * Position counters are bounded by KV_POS_LIMIT so continuing can never
 * overflow an int32. The history length (tokens consumed) is n for error,
 * at least n for shift and sliding (a shift drops slots), next_pos for a
 * ring; only an unshifted, non-ring sequence may be marked shareable (its
 * pages go into the prefix index).
 * The dropped-token record (n_head, n_dropped, drop_hash; kv_seq.c):
 *  - error: nothing is dropped, no head;
 *  - shift, sliding: n_dropped = history - n (what the shifts removed); once
 *    something was dropped the head is the policy's (n_keep, n_sink: the
 *    request check splits the history there) and all of it is held (n >= head);
 *  - ring: no head; positions [n_dropped, next_pos) are held and the ones
 *    before were overwritten, so max(0, next_pos - C) <= n_dropped <= next_pos
 *    and a slot whose position c is below n_dropped holds c + C (it was
 *    overwritten by that one, which a rollback then left behind);
 *  - a hash with nothing dropped is 0. */
#include <stdio.h>

#include "core/dtype.h"
#include "core/error.h"
#include "kv_cache.h"

/* o is one of the four (kv_seq_init refuses any other) */
static const char *policy_name(kvlm_overflow o) {
    static const char *const names[] = {[KVLM_OVERFLOW_ERROR] = "error", [KVLM_OVERFLOW_SHIFT] = "shift",
                                        [KVLM_OVERFLOW_SLIDING] = "sliding", [KVLM_OVERFLOW_RING] = "ring"};
    return names[o];
}

int32_t kv_seq_state_pos(const kv_seq *s, int32_t next_pos, int32_t slot) {
    if (s->overflow != KVLM_OVERFLOW_RING || next_pos <= s->n_ctx) return slot;
    const int64_t c = s->n_ctx, base = (int64_t)next_pos - c;
    return (int32_t)(base + (((int64_t)slot - base) % c + c) % c);
}

int64_t kv_seq_state_pages(const kv_seq *s, int32_t n) {
    if (s->overflow == KVLM_OVERFLOW_RING) return s->n_ctx / s->P;
    /* then a sliding-window ring's pages (kv_seq.swa) */
    return ((int64_t)n + s->P - 1) / s->P + (s->swa ? s->swa_cap / s->P : 0);
}

/* n slots, the next position and the per-slot positions (or NULL); a ring's dropped count (checked
 * in range by the caller) says which slots were overwritten. */
static kvlm_status check_state(const kv_seq *s, int32_t n, int32_t next_pos, int64_t n_dropped, const int32_t *pos,
                               kvlm_error *err) {
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
            const int32_t c = kv_seq_state_pos(s, next_pos, i);
            /* a ring's slot of a dropped position holds the one that overwrote it */
            const int64_t want = ring && c < n_dropped ? (int64_t)c + s->n_ctx : c;
            if (pos[i] != want)
                return kv_fail(err, KVLM_ERR_FORMAT,
                               "has position %d in slot %d (a %s cache with %lld dropped tokens holds %lld there)",
                               pos[i], i, pol, (long long)n_dropped, (long long)want);
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

kvlm_status kv_seq_check_settings(const kv_seq *s, const kv_seq_desc *d, kvlm_error *err) {
    const kv_layout *l = s->layout;
    if ((int64_t)d->page_tokens != s->P || (int64_t)d->n_layer != s->n_layer || (int64_t)d->kv_dim != s->kv_dim ||
        d->type_k != l->type_k || d->type_v != l->type_v || d->overflow != (uint32_t)s->overflow)
        return kv_fail(err, KVLM_ERR_INVALID_ARG,
                       "has other cache settings (page %u, K %s, V %s, overflow %u) than the session "
                       "(page %d, K %s, V %s, overflow %d)",
                       d->page_tokens, kv_dtype_name(d->type_k), kv_dtype_name(d->type_v), d->overflow, s->P,
                       kv_dtype_name(l->type_k), kv_dtype_name(l->type_v), (int)s->overflow);
    if (d->swa_cap != (uint32_t)s->swa_cap)
        return kv_fail(err, KVLM_ERR_INVALID_ARG,
                       "keeps the sliding-window layers %s%u%s, this session %s%d%s (the ring is used when it holds "
                       "less than the context, and not on a shared cache with prefix sharing)",
                       d->swa_cap ? "in a ring of " : "whole", d->swa_cap ? d->swa_cap : 0u, d->swa_cap ? " tokens" : "",
                       s->swa_cap ? "in a ring of " : "whole", s->swa_cap, s->swa_cap ? " tokens" : "");
    return KVLM_OK;
}

kvlm_status kv_seq_check_desc(const kv_seq *s, const kv_seq_desc *d, kvlm_error *err) {
    const int32_t n = d->n, next_pos = d->next_pos, n_hist = d->n_hist;
    const int64_t dropped = d->n_dropped;
    const bool ring = s->overflow == KVLM_OVERFLOW_RING;
    /* the dropped record first: the ring's slot check depends on it */
    if (ring) {
        const int64_t low = (int64_t)next_pos - s->n_ctx;
        if (dropped < (low > 0 ? low : 0) || dropped > next_pos || d->n_head != 0)
            return kv_fail(err, KVLM_ERR_FORMAT,
                           "is a ring of %d slots at position %d that dropped %lld tokens with a head of %d "
                           "(it drops %lld..%d with no head)",
                           s->n_ctx, next_pos, (long long)dropped, d->n_head, (long long)(low > 0 ? low : 0),
                           next_pos);
    } else if (s->overflow == KVLM_OVERFLOW_ERROR) {
        if (dropped != 0 || d->n_head != 0)
            return kv_fail(err, KVLM_ERR_FORMAT, "records %lld dropped tokens and a head of %d (an error cache drops "
                           "none and has no head)", (long long)dropped, d->n_head);
    } else {
        if (dropped < 0 || dropped > KV_POS_LIMIT || dropped != (int64_t)n_hist - n)
            return kv_fail(err, KVLM_ERR_FORMAT, "records %lld dropped tokens for %d consumed tokens in %d slots "
                           "(must be %lld)", (long long)dropped, n_hist, n, (long long)n_hist - n);
        const int32_t head = kv_seq_head(s);
        if (d->n_head < 0 || d->n_head > s->n_ctx || (dropped > 0 && (d->n_head != head || n < head)))
            return kv_fail(err, KVLM_ERR_FORMAT,
                           "was shifted keeping a head of %d tokens with %d slots and %lld dropped (this session "
                           "keeps %d and must hold them)",
                           d->n_head, n, (long long)dropped, head);
    }
    if (dropped == 0 && d->drop_hash != 0)
        return kv_fail(err, KVLM_ERR_FORMAT, "has a dropped-token hash but no dropped tokens");
    kvlm_status st = check_state(s, n, next_pos, dropped, d->pos, err);
    if (st) return st;
    if (s->swa) {
        /* the ring holds [swa_lo, next_pos): no more than its slots, and (once it dropped something) at
           least the window a query at next_pos reads; 0 only while nothing was overwritten */
        const int64_t low = (int64_t)next_pos - s->swa_cap;
        if (d->swa_lo < (low > 0 ? low : 0) || d->swa_lo > next_pos ||
            (d->swa_lo > 0 && (int64_t)d->swa_lo + s->swa - 1 > next_pos))
            return kv_fail(err, KVLM_ERR_FORMAT,
                           "keeps its sliding-window layers from position %d at position %d (a ring of %d slots "
                           "holds %lld.. and a window of %d back)",
                           d->swa_lo, next_pos, s->swa_cap, (long long)(low > 0 ? low : 0), s->swa);
    } else if (d->swa_lo != 0) {
        return kv_fail(err, KVLM_ERR_FORMAT, "records a sliding-window ring position %d without a ring", d->swa_lo);
    }
    bool ok;
    switch (s->overflow) {
    case KVLM_OVERFLOW_RING: ok = n_hist == next_pos; break;               /* every token passes through */
    case KVLM_OVERFLOW_ERROR: ok = n_hist == n; break;                     /* nothing is ever dropped */
    default: ok = n_hist >= n && n_hist <= KV_POS_LIMIT; break;            /* a shift drops slots */
    }
    if (!ok)
        return kv_fail(err, KVLM_ERR_FORMAT, "counts %d consumed tokens for %d slots at position %d", n_hist, n,
                       next_pos);
    if (d->shareable > 1 || (d->shareable && (s->overflow == KVLM_OVERFLOW_RING || n_hist != n)))
        return kv_fail(err, KVLM_ERR_FORMAT, "is marked shareable (%u) though its cache was shifted or is a ring",
                       d->shareable);
    const int64_t want_pages = kv_seq_state_pages(s, n);
    if ((int64_t)d->n_pages != want_pages || (ring ? d->n_ctx != s->n_ctx : (d->n_ctx < 1 || d->n_ctx < n)))
        return kv_fail(err, KVLM_ERR_FORMAT,
                       "holds %d tokens in %u pages of a context of %d, which does not fit "
                       "(this session: %lld pages, context %d)",
                       n, d->n_pages, d->n_ctx, (long long)want_pages, s->n_ctx);
    return KVLM_OK;
}
