/* Weight-type helpers shared by `kvlm quantize` and `kvlm synth` (qz.c):
 * type names and numbers as llama-quantize spells them, llama.cpp's
 * general.file_type, and llama-quantize's choice of type per tensor. */
#ifndef KVLM_QZ_H
#define KVLM_QZ_H

#include <stdbool.h>
#include <stdint.h>

#include "core/tpool.h"

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

#endif
