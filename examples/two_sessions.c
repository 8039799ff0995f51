/* Two sessions sharing one model, generating in parallel threads. */
#include <pthread.h>
#include <stdio.h>

#include "kvlm.h"

typedef struct job {
    kvlm_model *model;
    const char *prompt;
    char out[1024];
    kvlm_status st;
} job;

static void *run(void *arg) {
    job *j = arg;
    kvlm_error err;
    kvlm_session *s = NULL;
    j->st = kvlm_session_new(j->model, NULL, &s, &err);
    if (j->st) return NULL;
    kvlm_generate_params gp = kvlm_generate_default_params();
    gp.sampling.temperature = 0.0f;
    gp.max_tokens = 16;
    kvlm_generate_result r;
    j->st = kvlm_generate(s, j->prompt, &gp, NULL, NULL, &r, &err);
    if (j->st == KVLM_OK) {
        snprintf(j->out, sizeof j->out, "%s%s", j->prompt, r.text);
        kvlm_generate_result_free(&r);
    }
    kvlm_session_free(s);
    return NULL;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "../shared/models/llama/aidreams260K-f32.gguf";
    kvlm_error err;
    kvlm_model *model = NULL;
    if (kvlm_model_load(path, NULL, &model, &err) != KVLM_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    job jobs[2] = {{model, "Echoes of", "", KVLM_OK}, {model, "The quick brown fox", "", KVLM_OK}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, run, &jobs[i]);
    int rc = 0;
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        if (jobs[i].st != KVLM_OK) rc = 1;
        printf("session %d: %s\n", i + 1, jobs[i].out);
    }
    kvlm_model_free(model);
    return rc;
}
