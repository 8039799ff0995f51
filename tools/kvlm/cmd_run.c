/* kvlm run: generate text, streaming to stdout, timings to stderr. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

/* Loads --session FILE if something is there. A file that does not load is
 * not overwritten at the end unless --session-overwrite says so; what is not
 * a regular file is refused either way (saving would refuse it too). */
static bool use_session_file(kvlm_session *s, const cli_args *a) {
    struct stat stt;
    if (lstat(a->session, &stt) != 0) {
        if (errno == ENOENT) return true; /* created at the end */
        fprintf(stderr, "error: --session '%s': %s\n", a->session, strerror(errno));
        return false;
    }
    kvlm_error err;
    if (kvlm_session_load(s, a->session, &err) == KVLM_OK) {
        if (a->verbose) fprintf(stderr, "loaded %d tokens from %s\n", kvlm_session_n_past(s), a->session);
        return true;
    }
    if (!S_ISREG(stt.st_mode)) {
        fprintf(stderr, "error: %s\n", err.msg);
        return false;
    }
    if (!a->session_overwrite) {
        fprintf(stderr,
                "error: %s\nerror: '%s' could not be loaded, so it is not overwritten; pass --session-overwrite to "
                "replace it with this run's session\n",
                err.msg, a->session);
        return false;
    }
    fprintf(stderr, "warning: not using the session file (%s); it will be replaced (--session-overwrite)\n", err.msg);
    return true;
}

int cmd_run(int argc, char **argv) {
    cli_args a;
    if (!cli_parse(argc, argv, 2, &a)) return 2;
    if (a.help) {
        printf("usage: kvlm run -m MODEL -p PROMPT [-n N] [-t THREADS] [-c CTX] [--session FILE [--session-overwrite]]\n"
               "  [--kv-stats]\n"
               "  --session FILE: load FILE if it exists (reusing its common prefix with the prompt) and save the\n"
               "  session there at the end. FILE must be a regular file or absent (links, FIFOs, devices and\n"
               "  directories are refused). A FILE that does not load (corrupted, another model or other cache\n"
               "  settings) stops the run unless --session-overwrite allows replacing it.\n"
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
    if (a.session && !use_session_file(s, &a)) goto out;
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
    /* end the streamed line before anything goes to stderr */
    printf("\n");
    fflush(stdout);
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
