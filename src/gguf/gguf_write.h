/* GGUF writer: collects metadata and tensor descriptions, then writes a
 * version 3 file that kv_gguf_open (src/gguf/gguf.h) and llama.cpp's gguf
 * reader both accept:
 *   header: "GGUF", u32 version 3, u64 tensor count, u64 metadata count;
 *   the key/value pairs in order; the tensor infos (name, n_dims, ne[],
 *   type, offset) in order; zero padding up to the alignment; then every
 *   tensor's bytes, each starting at an aligned offset and followed by zero
 *   padding up to the next multiple of the alignment (so the file size is a
 *   multiple of it too, as ggml writes).
 * The alignment is the value of "general.alignment" (a u32 power of two)
 * when that key is set, 32 otherwise; no key is written unless asked for.
 * The file is written to a temporary file in the same folder, flushed
 * (fsync) and renamed over path, so a crash or an error never leaves a
 * half-written file behind.
 *
 * Errors: every call that can fail returns a kvlm_status and fills err. A
 * failed call leaves the writer as it was, and the writer remembers its first
 * failure: kv_gguf_writer_write then refuses to write and returns that error, so
 * a caller may check only the final result. */
#ifndef KV_GGUF_WRITE_H
#define KV_GGUF_WRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf/gguf.h"
#include "kvlm.h"

#define GGUF_WRITE_DEFAULT_ALIGNMENT 32u
#define GGUF_WRITE_MAX_NAME 63 /* longest tensor name (ggml's GGML_MAX_NAME - 1) */

typedef struct gguf_writer gguf_writer;

/* Produces a tensor's bytes at write time: fill dst[0..size) (the writer's
 * buffer, zeroed beforehand) for the tensor `name`. Lets a caller generate
 * or convert one tensor at a time instead of holding them all. */
typedef kvlm_status (*gguf_fill_fn)(void *user, const char *name, void *dst, uint64_t size, kvlm_error *err);

kvlm_status kv_gguf_writer_new(gguf_writer **out, kvlm_error *err);
void kv_gguf_writer_free(gguf_writer *w);

/* ---- metadata. Keys are copied (non-empty, no NUL); values are copied.
 * Setting a key that exists removes the old entry and appends the new one
 * (as ggml's gguf_set_* do), so keys are written in the order of their last
 * setting. */
kvlm_status kv_gguf_writer_set_u8(gguf_writer *w, const char *key, uint8_t v, kvlm_error *err);
kvlm_status kv_gguf_writer_set_i8(gguf_writer *w, const char *key, int8_t v, kvlm_error *err);
kvlm_status kv_gguf_writer_set_u16(gguf_writer *w, const char *key, uint16_t v, kvlm_error *err);
kvlm_status kv_gguf_writer_set_i16(gguf_writer *w, const char *key, int16_t v, kvlm_error *err);
kvlm_status kv_gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v, kvlm_error *err);
kvlm_status kv_gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v, kvlm_error *err);
kvlm_status kv_gguf_writer_set_u64(gguf_writer *w, const char *key, uint64_t v, kvlm_error *err);
kvlm_status kv_gguf_writer_set_i64(gguf_writer *w, const char *key, int64_t v, kvlm_error *err);
kvlm_status kv_gguf_writer_set_f32(gguf_writer *w, const char *key, float v, kvlm_error *err);
kvlm_status kv_gguf_writer_set_f64(gguf_writer *w, const char *key, double v, kvlm_error *err);
kvlm_status kv_gguf_writer_set_bool(gguf_writer *w, const char *key, bool v, kvlm_error *err);
/* A NUL-terminated string, or len bytes (which may contain any byte). */
kvlm_status kv_gguf_writer_set_str(gguf_writer *w, const char *key, const char *v, kvlm_error *err);
kvlm_status kv_gguf_writer_set_strn(gguf_writer *w, const char *key, const char *v, uint64_t len, kvlm_error *err);
/* An array of n elements of a numeric or bool type (not STRING or ARRAY),
 * packed little-endian in data (n * element size bytes; bool is one byte). */
kvlm_status kv_gguf_writer_set_arr(gguf_writer *w, const char *key, gguf_vtype type, const void *data, uint64_t n,
                                kvlm_error *err);
/* An array of n strings: NUL-terminated ones, or (data, len) pairs. */
kvlm_status kv_gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *strs, uint64_t n,
                                    kvlm_error *err);
kvlm_status kv_gguf_writer_set_arr_gstr(gguf_writer *w, const char *key, const gguf_str *strs, uint64_t n,
                                     kvlm_error *err);
/* Copies a key/value pair of an opened reader (any type, arrays included). */
kvlm_status kv_gguf_writer_set_kv(gguf_writer *w, const gguf_kv *kv, kvlm_error *err);
/* Sets "general.alignment" (a power of two, 1..2^30). */
kvlm_status kv_gguf_writer_set_alignment(gguf_writer *w, uint32_t alignment, kvlm_error *err);
/* Removes key; false when it was not set. */
bool kv_gguf_writer_remove(gguf_writer *w, const char *key);
bool kv_gguf_writer_has(const gguf_writer *w, const char *key);
uint64_t kv_gguf_writer_n_kv(const gguf_writer *w);

/* ---- tensors, written in the order they are added. name: 1..63 bytes,
 * unique; n_dims 1..4, ne[0] (the row length) a multiple of the type's block;
 * type a kv_dtype known to core/dtype.h. */

/* data: the tensor's bytes; size must equal the size the type and shape
 * imply (kv_dtype_tensor_bytes). data is referenced, not copied: it must
 * stay valid until kv_gguf_writer_write returns. */
kvlm_status kv_gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *ne,
                                   uint32_t type, const void *data, uint64_t size, kvlm_error *err);
/* The bytes come from fill(user, name, buf, size, err), called once by
 * kv_gguf_writer_write when the tensor's turn comes. */
kvlm_status kv_gguf_writer_add_tensor_fill(gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *ne,
                                        uint32_t type, gguf_fill_fn fill, void *user, kvlm_error *err);
uint64_t kv_gguf_writer_n_tensors(const gguf_writer *w);

/* Size of the whole file as it would be written now; false on overflow. */
bool kv_gguf_writer_file_size(const gguf_writer *w, uint64_t *size);

/* Writes the file (temporary file + fsync + rename). Refuses when an earlier
 * call failed. May be called more than once. */
kvlm_status kv_gguf_writer_write(gguf_writer *w, const char *path, kvlm_error *err);

#endif
