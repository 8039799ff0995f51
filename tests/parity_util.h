/* What the parity tests against a reference engine share (test_parity_llama3.c, test_parity_ik.c,
 * test_parity_phi3.c; include after <cmocka.h>): making the synthetic models with `kvlm synth` and
 * checking their sha256 (the goldens belong to those bytes), reading a golden (its LGTS rows, the
 * prompt and generated ids and the top-2 gaps of its .txt), teacher-forcing a token sequence through
 * a session (saved and restored midway when asked), and comparing rows of logits with a golden's
 * within a bound. */
#ifndef KV_TEST_PARITY_UTIL_H
#define KV_TEST_PARITY_UTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "golden.h"
#include "kvlm.h"

typedef struct parity_model {
    const char *file;
    const char *synth; /* kvlm synth arguments after OUT */
    const char *sha256;
} parity_model;

/* Makes a temporary folder from tmpl ("/tmp/kvlm-NAME-XXXXXX", copied to dir, 64 bytes) and each of
 * the n models in it with kvlm synth, checking its sha256; paths[i] gets model i's path. 0, or -1
 * with the reason on stderr (a cmocka group setup's result). */
static inline int parity_make_models(const char *tmpl, char *dir, const parity_model *models, int n,
                                     char (*paths)[256]) {
    snprintf(dir, 64, "%s", tmpl);
    if (!mkdtemp(dir)) return -1;
    for (int i = 0; i < n; i++) {
        snprintf(paths[i], 256, "%s/%s", dir, models[i].file);
        char cmd[2048];
        snprintf(cmd, sizeof cmd, "%s/kvlm synth %s %s >/dev/null", KVLM_BIN_DIR, paths[i], models[i].synth);
        if (system(cmd) != 0) {
            fprintf(stderr, "synth failed: %s\n", cmd);
            return -1;
        }
        snprintf(cmd, sizeof cmd, "sha256sum %s", paths[i]);
        FILE *fp = popen(cmd, "r");
        char sum[65] = "";
        if (!fp || fscanf(fp, "%64s", sum) != 1) sum[0] = '\0';
        if (fp) pclose(fp);
        if (strcmp(sum, models[i].sha256) != 0) {
            fprintf(stderr, "%s: sha256 %s, the goldens were made from %s (kvlm synth changed its output)\n",
                    models[i].file, sum, models[i].sha256);
            return -1;
        }
    }
    return 0;
}

static inline void parity_remove_models(const char *dir, char (*paths)[256], int n) {
    for (int i = 0; i < n; i++) unlink(paths[i]);
    rmdir(dir);
}

/* A golden: NAME.lgts (rows of the reference's logits) and NAME.txt (ids and gaps). */
typedef struct parity_golden {
    lgts gold;
    int32_t toks[256]; /* prompt, then generated ids */
    int n_prompt, n_gen;
    float gaps[256];   /* the "# top2 gaps:" line: row n_prompt - 1 + i chose generated token i */
    int n_gaps;
} parity_golden;

/* Loads folder/NAME.{txt,lgts}; fails the test when either is missing or malformed. */
static inline void parity_load_golden(const char *folder, const char *name, parity_golden *g) {
    char txt[512], lg[512];
    snprintf(txt, sizeof txt, "%s%s.txt", folder, name);
    snprintf(lg, sizeof lg, "%s%s.lgts", folder, name);
    memset(g, 0, sizeof *g);
    if (!lgts_load(lg, &g->gold)) fail_msg("golden %s is missing or malformed", lg);
    g->n_prompt = golden_ids(txt, "# prompt tokens:", g->toks, 256);
    g->n_gen = golden_ids(txt, "# generated tokens:", g->toks + g->n_prompt, 256 - g->n_prompt);
    if (g->n_prompt <= 0 || g->n_gen <= 0) fail_msg("golden %s has no prompt or generated tokens", txt);
    FILE *fp = fopen(txt, "r");
    assert_non_null(fp);
    char line[1 << 14];
    while (fgets(line, sizeof line, fp))
        if (strncmp(line, "# top2 gaps:", 12) == 0)
            for (char *p = line + 12, *e;; p = e) {
                const float v = strtof(p, &e);
                if (e == p || g->n_gaps >= 256) break;
                g->gaps[g->n_gaps++] = v;
            }
    fclose(fp);
}

static inline void parity_golden_free(parity_golden *g) { lgts_free(&g->gold); }

/* Teacher-forces toks[0, n) in a new session with sp: the first n_prompt as one batch (every row),
 * then one token per eval; before feeding token save_at (> 0) the session is saved to dir/session.kvs
 * and continued in a new session that loads it. Returns all n rows of logits (malloc'd). */
static inline float *parity_teacher_force(kvlm_model *m, const kvlm_session_params *sp, const int32_t *toks, int n,
                                          int n_prompt, int save_at, const char *dir) {
    const int32_t V = kvlm_n_vocab(m);
    kvlm_session *s = NULL;
    kvlm_error err;
    if (kvlm_session_new(m, sp, &s, &err) != KVLM_OK) fail_msg("session: %s", err.msg);
    float *out = malloc((size_t)n * (size_t)V * sizeof(float));
    assert_non_null(out);
    if (kvlm_eval(s, toks, n_prompt, 0, out, true, &err) != KVLM_OK) fail_msg("prompt: %s", err.msg);
    for (int i = n_prompt; i < n; i++) {
        if (i == save_at) {
            char path[128];
            snprintf(path, sizeof path, "%s/session.kvs", dir);
            if (kvlm_session_save(s, path, &err) != KVLM_OK) fail_msg("save: %s", err.msg);
            const int32_t held = kvlm_session_n_past(s);
            kvlm_session_free(s);
            assert_int_equal(kvlm_session_new(m, sp, &s, &err), KVLM_OK);
            if (kvlm_session_load(s, path, &err) != KVLM_OK) fail_msg("load: %s", err.msg);
            unlink(path);
            assert_int_equal(kvlm_session_n_past(s), held);
        }
        if (kvlm_eval(s, toks, i + 1, i, out + (size_t)i * (size_t)V, false, &err) != KVLM_OK)
            fail_msg("token %d: %s", i, err.msg);
    }
    kvlm_session_free(s);
    return out;
}

/* Compares ours (a row of V logits per position of g's tokens) with every golden row at a position
 * >= first: each logit within tol, the argmax the reference's wherever its top-2 gap exceeds tol, the
 * mean difference within tol / 10. Prints one summary line (name, mode, save_at) and, with
 * KVLM_PARITY_ROWS set, each row's largest difference. `ref` names the reference in messages. */
static inline void parity_check_rows(const parity_golden *g, const float *ours, int32_t V, int first, float tol,
                                     const char *name, const char *mode, int save_at, const char *ref) {
    const int n = g->n_prompt + g->n_gen;
    assert_int_equal(V, g->gold.n_vocab);
    float worst = 0.0f;
    double sum = 0.0;
    int checked = 0, rows = 0;
    for (int32_t r = 0; r < g->gold.n_rows; r++) {
        const lgts_row *row = &g->gold.rows[r];
        assert_true(row->pos >= 0 && row->pos < n);
        assert_int_equal(row->token, g->toks[row->pos]);
        if (row->pos < first) continue;
        rows++;
        const float *o = ours + (size_t)row->pos * (size_t)V;
        if (getenv("KVLM_PARITY_ROWS")) {
            float rw = 0.0f;
            for (int32_t i = 0; i < V; i++) rw = fmaxf(rw, fabsf(o[i] - row->logits[i]));
            printf("#   pos %2d max|diff| %.3g\n", row->pos, rw);
        }
        for (int32_t i = 0; i < V; i++) {
            const float d = fabsf(o[i] - row->logits[i]);
            if (!(d <= tol))
                fail_msg("%s pos %d token %d: |%g - %g| = %g > %g", name, row->pos, i, o[i], row->logits[i], d, tol);
            worst = d > worst ? d : worst;
            sum += d;
        }
        int32_t gb, ob;
        float gg, og;
        top2(row->logits, V, &gb, &gg);
        top2(o, V, &ob, &og);
        if (gg > tol) {
            checked++;
            if (gb != ob) fail_msg("%s pos %d: argmax %d, %s %d (gap %g)", name, row->pos, ob, ref, gb, gg);
        }
    }
    assert_true(rows > 0);
    const double mean = sum / ((double)rows * V);
    printf("# %-24s %-8s save@%-3d rows %2d  max|diff| %.3g (tol %.0e)  mean|diff| %.2g  argmax on %d rows\n", name,
           mode, save_at, rows, worst, tol, mean, checked);
    assert_true(mean <= tol / 10);
}

#endif
