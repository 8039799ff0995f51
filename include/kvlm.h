/* kvlm — LLM inference on CPUs around a first-class KV cache.
 * The one public header. All handles are opaque; every call that can fail
 * returns a kvlm_status and, when err is not NULL, fills it with a message.
 * The library never prints, never exits and keeps no global mutable state. */
#ifndef KVLM_H
#define KVLM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum kvlm_status {
    KVLM_OK = 0,
    KVLM_ERR_INVALID_ARG = -1, /* a bad argument from the caller */
    KVLM_ERR_IO = -2,          /* open/read/write/mmap failed */
    KVLM_ERR_FORMAT = -3,      /* malformed or inconsistent file */
    KVLM_ERR_UNSUPPORTED = -4, /* valid but not supported (type, architecture) */
    KVLM_ERR_NOMEM = -5,       /* allocation failed or size overflow */
    KVLM_ERR_CONTEXT_FULL = -6,/* the evaluation would exceed the context */
    KVLM_ERR_BUSY = -7,        /* the object is in use by another call */
    KVLM_ERR_INTERNAL = -8,
} kvlm_status;

typedef struct kvlm_error {
    kvlm_status code;
    char msg[512];
} kvlm_error;

/* A short, static name for a status ("ok", "format", ...). */
const char *kvlm_status_name(kvlm_status s);

typedef int32_t kvlm_token;

/* ---------------------------------------------------------------- model */
typedef struct kvlm_model kvlm_model;

typedef struct kvlm_model_params {
    int n_threads;      /* threads for evaluation; <= 0 means 1 */
    bool vocab_only;    /* load only the tokenizer (no weights, no sessions) */
} kvlm_model_params;

kvlm_model_params kvlm_model_default_params(void);

kvlm_status kvlm_model_load(const char *path, const kvlm_model_params *params,
                            kvlm_model **out, kvlm_error *err);
void kvlm_model_free(kvlm_model *model);

typedef struct kvlm_model_info {
    char arch[32];
    int32_t n_vocab;
    int32_t n_ctx_train;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t n_ff;
    int32_t n_rot;
    float rope_freq_base;
    float rope_freq_scale;
    float norm_eps;
    bool tied_output;
    uint64_t n_params;
    uint64_t weight_bytes;
} kvlm_model_info;

void kvlm_model_get_info(const kvlm_model *model, kvlm_model_info *info);

/* ------------------------------------------------------------ tokenizer */
kvlm_token kvlm_token_bos(const kvlm_model *model); /* -1 if none */
kvlm_token kvlm_token_eos(const kvlm_model *model); /* -1 if none */
bool kvlm_token_is_eog(const kvlm_model *model, kvlm_token t);
/* Whether the model's vocabulary asks for BOS at the start of a prompt. */
bool kvlm_add_bos(const kvlm_model *model);

/* Tokenizes text[0..len). add_special: add BOS (and EOS) as the vocab asks.
 * parse_special: text spelling a special/control token maps to that token.
 * Returns the number of tokens, written to out when it fits in n_max; when it
 * does not fit, returns minus the number needed and writes nothing useful. */
int32_t kvlm_tokenize(const kvlm_model *model, const char *text, size_t len,
                      kvlm_token *out, int32_t n_max, bool add_special,
                      bool parse_special);

/* Writes the bytes of one token to buf (not NUL-terminated). special: render
 * control tokens' text too. Returns bytes written, or minus the size needed. */
int32_t kvlm_token_to_piece(const kvlm_model *model, kvlm_token t, char *buf,
                            int32_t size, bool special);

/* ------------------------------------------------------------ sessions */
typedef struct kvlm_session kvlm_session;

typedef struct kvlm_session_params {
    int32_t n_ctx;      /* context length in tokens; <= 0: the model's */
    int n_threads;      /* <= 0: the model's */
} kvlm_session_params;

kvlm_session_params kvlm_session_default_params(void);

kvlm_status kvlm_session_new(kvlm_model *model, const kvlm_session_params *params,
                             kvlm_session **out, kvlm_error *err);
void kvlm_session_free(kvlm_session *s);

/* Tokens the session holds in its cache. */
int32_t kvlm_session_n_past(const kvlm_session *s);
int32_t kvlm_session_n_ctx(const kvlm_session *s);

/* Evaluates tokens[n_past..n_tokens) on top of the n_past tokens the session
 * holds (n_past must equal what it holds). Writes the logits of the last
 * position to logits (n_vocab floats), or of every evaluated position when
 * all_logits is true ((n_tokens - n_past) * n_vocab floats). logits may be
 * NULL. On error the session is unchanged. */
kvlm_status kvlm_eval(kvlm_session *s, const kvlm_token *tokens, int32_t n_tokens,
                      int32_t n_past, float *logits, bool all_logits,
                      kvlm_error *err);

/* Drops everything after the first n tokens. */
kvlm_status kvlm_session_truncate(kvlm_session *s, int32_t n, kvlm_error *err);

int32_t kvlm_n_vocab(const kvlm_model *model);

#ifdef __cplusplus
}
#endif
#endif
