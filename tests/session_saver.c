/* Helper of test_session_crash: loads two saved sessions and saves them in
 * turn to one target, forever, until it is killed.
 *   kvlm_session_saver MODEL STATE_A STATE_B TARGET
 * Prints "ready" on stdout once both are loaded; exits 1 on any error. */
#include <stdio.h>

#include "kvlm.h"

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL STATE_A STATE_B TARGET\n", argv[0]);
        return 2;
    }
    kvlm_error err;
    kvlm_model *m = NULL;
    kvlm_session *s[2] = {NULL, NULL};
    if (kvlm_model_load(argv[1], NULL, &m, &err) != KVLM_OK) goto fail;
    for (int i = 0; i < 2; i++) {
        kvlm_session_params p = kvlm_session_default_params();
        p.n_ctx = 128;
        if (kvlm_session_new(m, &p, &s[i], &err) != KVLM_OK || kvlm_session_load(s[i], argv[2 + i], &err) != KVLM_OK)
            goto fail;
    }
    printf("ready\n");
    fflush(stdout);
    for (unsigned long k = 0;; k++)
        if (kvlm_session_save(s[k % 2], argv[4], &err) != KVLM_OK) goto fail;
fail:
    fprintf(stderr, "kvlm_session_saver: %s\n", err.msg);
    return 1;
}
