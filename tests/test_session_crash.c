/* Crash safety of session saves: a process saving two sessions in turn to
 * one file is killed with SIGKILL at random moments, again and again. After
 * every kill the file must be byte for byte one of the two sessions and load
 * into a session that continues exactly; the killed saves' temporaries must
 * not pile up (each save removes the orphans of dead savers), and after a
 * last save none is left. */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/clock.h"
#include "kvlm.h"
#include "test_util.h"

#define MODEL KVLM_MODELS_DIR "/llama/synth15M-q8_0.gguf"
#define SAVER KVLM_BIN_DIR "/kvlm_session_saver"
#define KILLS 25

static bool same(const img *a, const img *b) { return a->n == b->n && memcmp(a->p, b->p, a->n) == 0; }

/* Temporaries of `base` in dir (any name starting with base.tmp.). */
static int temporaries(const char *dir, const char *base) {
    char prefix[128];
    snprintf(prefix, sizeof prefix, "%s.tmp.", base);
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

static void test_kill_during_saves(void **state) {
    (void)state;
    kvlm_error err;
    kvlm_model *m = load(MODEL);
    const int V = kvlm_n_vocab(m);
    enum { NA = 48, NB = 80 };
    kvlm_token t[NB + 1];
    seq(t, NB + 1, V, 99);
    /* references: the logits after each state, from a full evaluation */
    float *ref = malloc((size_t)(NB + 1) * V * 4), *got = malloc((size_t)V * 4);
    assert_int_equal(kvlm_eval_full(m, t, NB + 1, ref, true, &err), KVLM_OK);

    char dir[128], pa[192], pb[192], target[192];
    snprintf(dir, sizeof dir, "/tmp/kvlm-test-crash-%d", (int)getpid());
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(pa, sizeof pa, "%s/a.ses", dir);
    snprintf(pb, sizeof pb, "%s/b.ses", dir);
    snprintf(target, sizeof target, "%s/s.ses", dir);
    kvlm_session_params p = kvlm_session_default_params();
    p.n_ctx = 128;
    kvlm_session *s = NULL;
    assert_int_equal(kvlm_session_new(m, &p, &s, &err), KVLM_OK);
    assert_int_equal(kvlm_eval(s, t, NA, 0, NULL, false, &err), KVLM_OK);
    assert_int_equal(kvlm_session_save(s, pa, &err), KVLM_OK);
    assert_int_equal(kvlm_eval(s, t, NB, NA, NULL, false, &err), KVLM_OK);
    const double t0 = kv_now_s();
    assert_int_equal(kvlm_session_save(s, pb, &err), KVLM_OK);
    const double save_s = kv_now_s() - t0; /* to spread the kills over a few saves */
    assert_int_equal(kvlm_session_save(s, target, &err), KVLM_OK);
    const img A = slurp_if(pa), B = slurp_if(pb);
    assert_true(A.n > 0 && B.n > 0 && !same(&A, &B));

    unsigned lcg = (unsigned)getpid();
    int seen_a = 0, seen_b = 0, max_temps = 0, orphans = 0;
    alarm(300); /* a hung helper or wait fails the test instead of blocking the suite */
    for (int k = 0; k < KILLS; k++) {
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            dup2(fds[1], STDOUT_FILENO);
            close(fds[0]);
            close(fds[1]);
            execl(SAVER, SAVER, MODEL, pa, pb, target, (char *)NULL);
            _exit(127);
        }
        close(fds[1]);
        lcg = lcg * 1103515245u + 12345u;
        if ((lcg >> 16) % 5 != 0) { /* mostly in the save loop, sometimes while it starts */
            struct pollfd pfd = {fds[0], POLLIN, 0};
            char line[16] = {0};
            if (poll(&pfd, 1, 60000) != 1 || read(fds[0], line, sizeof line - 1) <= 0 || strncmp(line, "ready", 5))
                fail_msg("kill %d: the saver did not start", k);
            lcg = lcg * 1103515245u + 12345u;
            const double d = ((lcg >> 8) % 10000u) / 10000.0 * 3.0 * save_s; /* within the next few saves */
            struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
            nanosleep(&ts, NULL);
        }
        kill(pid, SIGKILL);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        close(fds[0]);
        if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
            fail_msg("kill %d: the saver ended by itself (status %d)", k, status);

        /* the file is one of the two sessions, exactly */
        img now = slurp_if(target);
        const bool is_a = same(&now, &A), is_b = same(&now, &B);
        free(now.p);
        if (!is_a && !is_b) fail_msg("kill %d: the file is neither session (%zu bytes)", k, now.n);
        seen_a += is_a;
        seen_b += is_b;
        /* and it loads and continues exactly */
        kvlm_session *v = NULL;
        assert_int_equal(kvlm_session_new(m, &p, &v, &err), KVLM_OK);
        if (kvlm_session_load(v, target, &err) != KVLM_OK) fail_msg("kill %d: %s", k, err.msg);
        const int n = kvlm_session_n_past(v);
        assert_int_equal(n, is_a ? NA : NB);
        assert_int_equal(kvlm_eval(v, t, n + 1, n, got, false, &err), KVLM_OK);
        assert_memory_equal(got, ref + (size_t)n * V, (size_t)V * 4);
        kvlm_session_free(v);
        /* at most the temporary of the save just killed: earlier ones were removed by later saves */
        const int tmps = temporaries(dir, "s.ses");
        if (tmps > 1) fail_msg("kill %d: %d temporaries beside the file", k, tmps);
        max_temps = tmps > max_temps ? tmps : max_temps;
        orphans += tmps;
    }
    alarm(0);
    /* one more save removes the last orphan */
    assert_int_equal(kvlm_session_save(s, target, &err), KVLM_OK);
    assert_int_equal(temporaries(dir, "s.ses"), 0);
    printf("# %d kills: file was the first session %d times, the second %d times; %d kills left an orphan "
           "temporary (each removed by the next save)\n",
           KILLS, seen_a, seen_b, orphans);

    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    free(A.p);
    free(B.p);
    free(ref);
    free(got);
    kvlm_session_free(s);
    kvlm_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_kill_during_saves)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
