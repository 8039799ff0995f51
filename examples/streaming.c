/* Streaming: a callback receives each token's text as it is generated and
 * stops generation after a sentence ends. */
#include <stdio.h>
#include <string.h>

#include "kvlm.h"

typedef struct state {
    int tokens;
} state;

static int on_token(const char *text, size_t len, kvlm_token token, void *user_data) {
    state *st = user_data;
    (void)token;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    st->tokens++;
    return memchr(text, '.', len) != NULL; /* non-zero: stop here */
}

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
    kvlm_generate_params gp = kvlm_generate_default_params();
    gp.sampling.seed = 1234; /* seeded sampling: the same text every run */
    gp.max_tokens = 64;
    state st = {0};
    kvlm_generate_result r;
    printf("Once upon a time");
    kvlm_status rc = kvlm_generate(s, "Once upon a time", &gp, on_token, &st, &r, &err);
    if (rc == KVLM_OK) {
        printf("\n[%d callbacks, finish: %s]\n", st.tokens, kvlm_finish_reason_name(r.finish));
        kvlm_generate_result_free(&r);
    }
    kvlm_session_free(s);
    kvlm_model_free(model);
    return rc == KVLM_OK ? 0 : 1;
}
