/* kvlm run: generate text, streaming to stdout, timings to stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

int cmd_run(int argc, char **argv) {
    cli_args a;
    if (!cli_parse(argc, argv, 2, &a)) return 2;
    if (a.help) {
        printf("usage: kvlm run -m MODEL -p PROMPT [-n N] [-t THREADS] [-c CTX] [--session FILE] [--kv-stats]\n"
               "  sampling (greedy unless --temp > 0): --temp T --top-k K --top-p P --min-p P --repeat-penalty R\n"
               "  --repeat-last-n N --frequency-penalty F --presence-penalty P --seed S --stop STR (repeatable)\n"
               "  --ignore-eos --timeout SEC\n%s",
               cli_kv_help());
        return 0;
    }
    size_t len;
    char *text = cli_prompt_text(&a, &len);
    if (!text) return 2;
    kvlm_model *m = cli_load_model(&a);
    if (!m) {
        free(text);
        return 1;
    }
    int rc = 1;
    kvlm_session *s = NULL;
    kvlm_error err;
    kvlm_session_params sp = cli_session_params(&a);
    if (kvlm_session_new(m, &sp, &s, &err) != KVLM_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        goto out;
    }
    cli_note_threads(&a, s);
    struct stat stt;
    if (a.session && stat(a.session, &stt) == 0) {
        if (kvlm_session_load(s, a.session, &err) != KVLM_OK)
            fprintf(stderr, "warning: not using the session file: %s\n", err.msg);
        else if (a.verbose)
            fprintf(stderr, "loaded %d tokens from %s\n", kvlm_session_n_past(s), a.session);
    }
    kvlm_generate_params gp = kvlm_generate_default_params();
    gp.sampling = a.sampling;
    gp.max_tokens = a.n_predict;
    gp.stop = a.stop;
    gp.n_stop = a.n_stop;
    gp.ignore_eos = a.ignore_eos;
    gp.timeout_s = a.timeout_s;
    gp.parse_special = !a.no_parse_special;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    cli_cancel_on_sigint(s);
    kvlm_generate_result r;
    kvlm_status st = kvlm_generate(s, text, &gp, cli_print_token, NULL, &r, &err);
    cli_cancel_on_sigint(NULL);
    printf("\n");
    if (st != KVLM_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        goto out;
    }
    const int computed = r.n_prompt - r.n_prompt_cached;
    fprintf(stderr, "\nprompt: %d tokens (%d cached, %d computed) in %.2f ms (%.2f tokens/s)\n", r.n_prompt,
            r.n_prompt_cached, computed, r.prompt_ms, computed > 0 ? computed / (r.prompt_ms * 1e-3) : 0.0);
    /* the first token comes from the prompt's logits: n-1 decode steps */
    const int steps = r.n_completion > 0 ? r.n_completion - 1 : 0;
    fprintf(stderr, "generation: %d tokens in %.2f ms (%.2f tokens/s), finish: %s\n", r.n_completion, r.generate_ms,
            steps > 0 && r.generate_ms > 0 ? steps / (r.generate_ms * 1e-3) : 0.0, kvlm_finish_reason_name(r.finish));
    if (a.sampling.temperature > 0) fprintf(stderr, "seed: %llu\n", (unsigned long long)a.sampling.seed);
    kvlm_generate_result_free(&r);
    if (a.session && kvlm_session_save(s, a.session, &err) != KVLM_OK) {
        fprintf(stderr, "error: %s\n", err.msg);
        goto out;
    }
    rc = 0;
    if (a.kv_stats) cli_print_kv_stats(s);
out:
    free(text);
    kvlm_session_free(s);
    kvlm_model_free(m);
    return rc;
}
