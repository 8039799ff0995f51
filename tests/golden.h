/* Test helpers: reading LGTS logit dumps and the golden .txt files beside them. */
#ifndef KV_TEST_GOLDEN_H
#define KV_TEST_GOLDEN_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct lgts_row {
    int32_t pos, token;
    float *logits;
} lgts_row;

typedef struct lgts {
    int32_t n_vocab, n_rows;
    lgts_row *rows;
    float *data;
} lgts;

static inline void lgts_free(lgts *l) {
    free(l->rows);
    free(l->data);
    memset(l, 0, sizeof *l);
}

/* false if the file is missing or malformed */
static inline bool lgts_load(const char *path, lgts *l) {
    memset(l, 0, sizeof *l);
    FILE *fp = fopen(path, "rb");
    if (!fp) return false;
    char magic[8];
    bool ok = fread(magic, 1, 8, fp) == 8 && memcmp(magic, "LGTS0001", 8) == 0 && fread(&l->n_vocab, 4, 1, fp) == 1 &&
              fread(&l->n_rows, 4, 1, fp) == 1 && l->n_vocab > 0 && l->n_rows >= 0 && l->n_vocab < (1 << 22) &&
              l->n_rows < (1 << 20);
    if (ok) {
        l->rows = calloc((size_t)l->n_rows + 1, sizeof *l->rows);
        l->data = malloc(((size_t)l->n_rows + 1) * (size_t)l->n_vocab * sizeof(float));
        ok = l->rows && l->data;
    }
    for (int32_t i = 0; ok && i < l->n_rows; i++) {
        l->rows[i].logits = l->data + (size_t)i * (size_t)l->n_vocab;
        ok = fread(&l->rows[i].pos, 4, 1, fp) == 1 && fread(&l->rows[i].token, 4, 1, fp) == 1 &&
             fread(l->rows[i].logits, 4, (size_t)l->n_vocab, fp) == (size_t)l->n_vocab;
    }
    fclose(fp);
    if (!ok) lgts_free(l);
    return ok;
}

/* Reads the ids after `key` (e.g. "# prompt tokens:") in a golden .txt.
 * Returns the count (0 if missing); ids go to out (up to cap). */
static inline int golden_ids(const char *txt_path, const char *key, int32_t *out, int cap) {
    FILE *fp = fopen(txt_path, "r");
    if (!fp) return 0;
    char line[1 << 16];
    int n = 0;
    while (fgets(line, sizeof line, fp)) {
        if (strncmp(line, key, strlen(key)) != 0) continue;
        char *p = line + strlen(key);
        for (;;) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p || n >= cap) break;
            out[n++] = (int32_t)v;
            p = end;
        }
        break;
    }
    fclose(fp);
    return n;
}

/* Largest and second-largest logits. */
static inline void top2(const float *l, int32_t n, int32_t *best, float *gap) {
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (l[i] > l[b]) b = i;
    float second = -1e30f;
    for (int32_t i = 0; i < n; i++)
        if (i != b && l[i] > second) second = l[i];
    *best = b;
    *gap = l[b] - second;
}

#endif
