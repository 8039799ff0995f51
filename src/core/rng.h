/* splitmix64 (Steele, Lea, Flood 2014): the sampler seeds xoshiro256** with it; kvlm synth's
 * random weights and the sampler benchmark's logits come from it. */
#ifndef KV_CORE_RNG_H
#define KV_CORE_RNG_H

#include <stdint.h>

/* Advances *x by the golden-ratio increment and returns the mixed value. */
static inline uint64_t kv_splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#endif
