/* Incremental evaluation with rollback: the n_past contract reuses the cache,
 * and the result equals evaluating the whole sequence from scratch. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvlm.h"

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "../shared/models/llama/aidreams260K-f32.gguf";
    kvlm_error err;
    kvlm_model *model = NULL;
    kvlm_session *s = NULL;
    if (kvlm_model_load(path, NULL, &model, &err) != KVLM_OK || kvlm_session_new(model, NULL, &s, &err) != KVLM_OK) {
        fprintf(stderr, "%s\n", err.msg);
        kvlm_model_free(model);
        return 1;
    }
    const int V = kvlm_n_vocab(model);
    kvlm_token toks[64];
    int n = kvlm_tokenize(model, "Echoes of vectors unfold, a gentle hum", 38, toks, 64, true, true);
    float *a = malloc((size_t)V * sizeof *a), *b = malloc((size_t)V * sizeof *b);

    kvlm_eval(s, toks, n - 2, 0, NULL, false, &err);     /* the prompt minus two tokens */
    kvlm_eval(s, toks, n - 1, n - 2, NULL, false, &err); /* one more, reusing the cache */
    toks[n - 1] = 3;                                     /* a different last token ... */
    kvlm_eval(s, toks, n, n - 1, a, false, &err);
    kvlm_session_truncate(s, n - 1, &err);               /* ... rolled back */
    toks[n - 1] = 4;
    kvlm_eval(s, toks, n, KVLM_AUTO, a, false, &err);    /* auto mode finds the common prefix */

    kvlm_eval_full(model, toks, n, b, false, &err);      /* the reference: no cache reuse */
    int same = memcmp(a, b, (size_t)V * sizeof *a) == 0;
    kvlm_kv_stats st;
    kvlm_session_get_stats(s, &st);
    printf("%d tokens, %lld computed, %lld reused; incremental == from scratch: %s\n", n, (long long)st.misses,
           (long long)st.hits, same ? "yes (bit-identical)" : "NO");
    free(a);
    free(b);
    kvlm_session_free(s);
    kvlm_model_free(model);
    return same ? 0 : 1;
}
