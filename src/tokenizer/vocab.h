/* Tokenizer built from GGUF metadata (tokenizer.ggml.*): SentencePiece-style
 * ("llama") and byte-level BPE ("gpt2"). A loaded vocab is read-only and may be
 * used from many threads at once. */
#ifndef KV_VOCAB_H
#define KV_VOCAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf/gguf.h"
#include "kvlm.h"

typedef struct kv_vocab kv_vocab;

typedef enum kv_vocab_kind { KV_VOCAB_SPM = 1, KV_VOCAB_BPE = 2 } kv_vocab_kind;

/* Builds the vocab from g's metadata. The vocab copies what it needs and does
 * not keep g. Missing/inconsistent metadata -> KVLM_ERR_FORMAT; an unknown
 * tokenizer model or pre-tokenizer -> KVLM_ERR_UNSUPPORTED. */
kvlm_status kv_vocab_load(const gguf_ctx *g, kv_vocab **out, kvlm_error *err);
void kv_vocab_free(kv_vocab *v);

kv_vocab_kind kv_vocab_type(const kv_vocab *v);
int32_t kv_vocab_n_tokens(const kv_vocab *v);
int32_t kv_vocab_bos(const kv_vocab *v);   /* -1 if none */
int32_t kv_vocab_eos(const kv_vocab *v);   /* -1 if none */
bool kv_vocab_add_bos(const kv_vocab *v);
bool kv_vocab_add_eos(const kv_vocab *v);
/* End-of-generation: EOS, EOT, EOM and the like. */
bool kv_vocab_is_eog(const kv_vocab *v, int32_t tok);
/* The token's raw text as stored in the vocab (e.g. "\xe2\x96\x81the"). */
const char *kv_vocab_token_text(const kv_vocab *v, int32_t tok, size_t *len);

/* Same contract as kvlm_tokenize in kvlm.h (INT32_MIN on invalid arguments,
 * out of memory, a regex failure or more than INT32_MAX tokens). */
int32_t kv_vocab_tokenize(const kv_vocab *v, const char *text, size_t len, int32_t *out,
                          int32_t n_max, bool add_special, bool parse_special);
/* Same contract as kvlm_token_to_piece in kvlm.h. */
int32_t kv_vocab_token_to_piece(const kv_vocab *v, int32_t tok, char *buf, int32_t size,
                                bool special);

#endif
