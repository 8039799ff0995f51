/* The compiled form of a grammar, shared by the parser (gbnf.c) and the
 * matcher (gmatch.c). Private to src/grammar/. */
#ifndef KV_GRAMMAR_IMPL_H
#define KV_GRAMMAR_IMPL_H

#include <stdint.h>

#include "grammar/grammar.h"

/* An element is one uint32: type in the low 2 bits, value above. A rule is its
 * alternatives one after the other, each ended by ALT, the last by END. */
enum { KV_GE_END = 0, KV_GE_ALT = 1, KV_GE_CLASS = 2, KV_GE_REF = 3 };
#define KV_GE(type, value) (((uint32_t)(value) << 2) | (uint32_t)(type))
#define KV_GE_TYPE(e) ((e) & 3u)
#define KV_GE_VAL(e) ((e) >> 2)

#define KV_MAX_CP 0x10FFFFu

/* A character class: sorted, disjoint, non-adjacent ranges of code points
 * (negation and '.' are resolved at compile time), and the ASCII ones as bits. */
typedef struct kv_gclass {
    uint32_t off, n; /* ranges rng[2*off .. 2*(off+n)) as (lo, hi) pairs */
    uint64_t ascii[2];
} kv_gclass;

struct kv_grammar {
    uint32_t *el;
    uint32_t n_el;
    uint32_t *rule_start; /* n_rules: index of the rule's first element */
    uint32_t n_rules;
    kv_gclass *cls;
    uint32_t n_cls;
    uint32_t *rng;
    uint32_t root;
};

#endif
