/* Simple generation: load a model, make a session, generate greedily. */
#include <stdio.h>

#include "kvlm.h"

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "../shared/models/llama/aidreams260K-f32.gguf";
    const char *prompt = argc > 2 ? argv[2] : "Echoes of";
    kvlm_error err;
    kvlm_model *model = NULL;
    if (kvlm_model_load(path, NULL, &model, &err) != KVLM_OK) {
        fprintf(stderr, "load: %s\n", err.msg);
        return 1;
    }
    kvlm_session *s = NULL;
    if (kvlm_session_new(model, NULL, &s, &err) != KVLM_OK) {
        fprintf(stderr, "session: %s\n", err.msg);
        kvlm_model_free(model);
        return 1;
    }
    kvlm_generate_params gp = kvlm_generate_default_params();
    gp.sampling.temperature = 0.0f; /* greedy */
    gp.max_tokens = 24;
    kvlm_generate_result r;
    int rc = 0;
    if (kvlm_generate(s, prompt, &gp, NULL, NULL, &r, &err) == KVLM_OK) {
        printf("%s%s\n[%d tokens, finish: %s]\n", prompt, r.text, r.n_completion, kvlm_finish_reason_name(r.finish));
        kvlm_generate_result_free(&r);
    } else {
        fprintf(stderr, "generate: %s\n", err.msg);
        rc = 1;
    }
    kvlm_session_free(s);
    kvlm_model_free(model);
    return rc;
}
