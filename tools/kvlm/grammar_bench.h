/* kvlm bench --grammar FILE: the cost of a grammar's token masks on a vocabulary. */
#ifndef KVLM_TOOL_GRAMMAR_BENCH_H
#define KVLM_TOOL_GRAMMAR_BENCH_H

#include "cli.h"

/* Compiles a->grammar_file for m's vocabulary and walks -r random token
 * sequences of -n tokens (each token drawn uniformly among those the grammar
 * allows, fixed seeds), timing at each step the mask as generation computes
 * it (per-state cache), without the mask cache, cold (every cache dropped),
 * and the one-token check of the lazy path; prints median and p99. Returns
 * the exit code. */
int cli_grammar_bench(kvlm_model *m, const cli_args *a);

#endif
