/* Weight-type helpers shared by `kvlm quantize` and `kvlm synth` (qz.c):
 * type names and numbers as llama-quantize spells them, llama.cpp's
 * general.file_type, and llama-quantize's choice of type per tensor. */
#ifndef KVLM_QZ_H
#define KVLM_QZ_H

#include <stdbool.h>
#include <stdint.h>

#include <stddef.h>
#include <stdio.h>

#include "core/tpool.h"
#include "gguf/gguf.h"

/* The role of a tensor in llama-quantize's choices. */
enum { QZ_ROLE_OTHER = 0, QZ_ROLE_EMBD = 1, QZ_ROLE_OUTPUT = 2 };

/* The type names qz_parse_type accepts, space-separated. */
const char *qz_type_list(void);
/* Case-insensitive type name -> kv_dtype. */
bool qz_parse_type(const char *s, uint32_t *type);
const char *qz_type_name(uint32_t t);
/* llama.cpp's general.file_type for a model quantized to t; -1 when none. */
int qz_ftype(uint32_t t);
bool qz_is_float(uint32_t t);
bool qz_is_ternary(uint32_t t);
/* The type a tensor of rows of ne0 values gets when t does not fit its rows
 * (*fell set then); t when it fits. */
uint32_t qz_fallback(uint32_t t, uint64_t ne0, bool *fell);
/* The type of a quantized 2-D weight for target type `target`, before the
 * per-row fallback; embd_type / output_type (>= 0) override those tensors. */
uint32_t qz_pick(uint32_t target, int role, bool has_output, uint64_t ne0, int embd_type, int output_type);
int qz_role(const char *name);
/* n_rows rows of ne0 floats -> type t with the reference quantizer. */
bool qz_convert(const float *src, uint32_t t, uint64_t ne0, uint64_t n_rows, void *dst);
/* qz_convert with the rows split over a pool (NULL: this thread); the result
 * does not depend on the number of threads. */
bool qz_convert_mt(kv_tpool *pool, const float *src, uint32_t t, uint64_t ne0, uint64_t n_rows, void *dst);
/* Threads for -t: the given count, else the default. */
int qz_threads(int requested);
/* llama.cpp's name of a general.file_type ("Q4_K - Medium"). */
const char *qz_ftype_name(int ftype);
/* Sorts tensors as llama.cpp's model loader orders weights (by layer, then by name). */
void qz_sort_weights(const gguf_tensor **t, size_t n);
/* The file's general.file_type, or (*guessed) llama.cpp's guess from its tensor types. */
int qz_file_ftype(const gguf_ctx *g, bool *guessed);

/* A file type of llama-quantize (its name and number: Q4_K_M, 15, ...). */
typedef struct qz_ftype_opt {
    const char *name; /* as llama-quantize spells it */
    int ftype;        /* general.file_type */
    uint32_t def_type; /* the kv_dtype most weights get */
    const char *why;  /* non-NULL: kvlm cannot make it, and why */
} qz_ftype_opt;

/* A name (any case) or number as llama-quantize takes it; NULL if none. */
const qz_ftype_opt *qz_parse_ftype(const char *s);
/* The list llama-quantize's usage prints. */
void qz_print_ftypes(FILE *fp);

/* llama-quantize's per-tensor choice for one file (llama_tensor_get_type): set the fields, then ask
 * qz_mix_type for each quantized weight in the loader's order (qz_sort_weights); it counts the
 * attn_v and ffn_* tensors it has seen, as llama-quantize does. */
typedef struct qz_mix {
    int ftype;
    uint32_t def_type;
    bool pure;             /* --pure: no mixes, every weight def_type (overrides still apply) */
    bool has_output;       /* the file has output.weight (else the embedding is the output) */
    bool falcon, is_70b;
    int n_gqa, n_expert, n_layer, n_attention_wv;
    int embd_type, output_type; /* --token-embedding-type / --output-tensor-type, or -1 */
    int i_attention_wv, i_ffn_down, i_ffn_gate, i_ffn_up;
} qz_mix;

/* The type for weight `name` with rows of ne0 values, after the per-row fallback (*fell set when
 * it applied). false: a MoE tensor name without a valid layer number. */
bool qz_mix_type(qz_mix *q, const char *name, uint64_t ne0, uint32_t *type, bool *fell);

#endif
