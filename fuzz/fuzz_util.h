/* Helpers shared by the libFuzzer targets: a memory file that public APIs
 * taking a path can read, and the models the targets load once. */
#ifndef KVLM_FUZZ_UTIL_H
#define KVLM_FUZZ_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Replaces the contents of one in-memory file (memfd) with data[0..size) and
 * returns a path that open() reads it through ("/proc/self/fd/N"). */
const char *fuzz_memfile(const void *data, size_t size);

/* A model path under ../shared/models (KVLM_MODELS_DIR), e.g. "llama/aidreams260K-f32.gguf". */
const char *fuzz_model_path(const char *rel);

/* Loads that model once per target (one thread; vocab_only for the tokenizer
 * targets); prints the error and aborts when it cannot. */
struct kvlm_model;
struct kvlm_model *fuzz_load_model(const char *rel, bool vocab_only, const char *target);

/* libFuzzer's entry points, which each target defines (Initialize is optional). */
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reports a broken contract and aborts, so that libFuzzer records the input. */
#define FUZZ_CHECK(cond, ...)                                                     \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "fuzz contract broken at %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                         \
            fputc('\n', stderr);                                                  \
            abort();                                                              \
        }                                                                         \
    } while (0)

#endif
