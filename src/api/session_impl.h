/* Session internals shared by session.c and persist.c. */
#ifndef KV_SESSION_IMPL_H
#define KV_SESSION_IMPL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tpool.h"
#include "forward/forward.h"
#include "kv/kv_cache.h"
#include "kvlm.h"
#include "model/model.h"

struct kvlm_cache {
    const kvlm_model *model;
    kv_page_pool *pool;
};

struct kvlm_session {
    const kvlm_model *model;
    kvlm_cache *cache;
    bool own_cache;
    kv_seq seq;
    kv_seq_config seq_config;
    kvlm_session_params params; /* as created (kvlm_session_fork makes another with them) */
    kv_tpool *tpool;
    kv_forward *fwd;
    int32_t n_consumed; /* tokens evaluated since the start (differs from seq.n after a shift) */
    atomic_int busy;    /* one call at a time */
    atomic_int cancel;  /* set by kvlm_session_cancel */
};

bool kv_session_acquire(kvlm_session *s);
void kv_session_release(kvlm_session *s);
/* kvlm_eval's body (the caller holds the session). */
kvlm_status kv_session_eval_locked(kvlm_session *s, const kvlm_token *tokens, int32_t n_tokens, int32_t n_past,
                                   float *logits, bool all_logits, kvlm_error *err);
/* Evaluates n new tokens after everything the session consumed. */
kvlm_status kv_session_append_locked(kvlm_session *s, const kvlm_token *toks, int32_t n, float *logits,
                                     bool all_logits, kvlm_error *err);
/* Whether the session may roll back (its slots are still the token history). */
bool kv_session_rewindable(const kvlm_session *s);

/* ------------------------------------------------------------ session files (persist.c) */

#define KV_SES_MAGIC "KVLMSES1"
#define KV_SES_VERSION 2u
/* Version 1 files (no dropped-token record; header_bytes KV_SES_V1_HEADER) still load when their
 * cache was never shifted (see persist.c). */
#define KV_SES_VERSION_V1 1u

/* The fixed part of a session file's header (little-endian, no padding).
 * After it: n token ids, n positions (int32), then each page as
 * {uint32 type_k, type_v; uint64 raw bytes, compressed bytes; zstd data},
 * then the checksum (kv_session_checksum of everything before it).
 * Version 2 adds the record a shifted or wrapped cache needs to check a request against its whole
 * history: the kept head (n_keep for shift, n_sink for sliding, else 0), how many history tokens
 * were dropped and their chained hash (kv_seq's n_dropped / drop_hash). */
typedef struct kv_ses_header {
    char magic[8];
    uint32_t version;
    uint32_t header_bytes;
    uint64_t fingerprint[2];
    uint32_t page_tokens, n_layer, kv_dim, type_k, type_v;
    uint32_t overflow, shareable, n_pages;
    int32_t n, next_pos, n_consumed, n_ctx;
    /* version 2 */
    int32_t n_head;   /* the kept head of the history */
    uint32_t reserved; /* 0 */
    int64_t n_dropped;
    uint64_t drop_hash;
} kv_ses_header;
/* The size of a version 1 header: the fields before n_head. */
#define KV_SES_V1_HEADER 80u

/* The checksum the loader verifies: XXH3-64 of the file's bytes before the
 * last 8 (which hold it). A plain hash, not a MAC: it catches corruption;
 * the loader's validation is what makes a crafted file harmless. */
uint64_t kv_session_checksum(const void *data, size_t n);
/* Rewrites the last 8 bytes of a session file image of n >= 8 bytes with the
 * checksum of the rest (for tests and fuzz harnesses that edit files). */
void kv_session_seal(uint8_t *file, size_t n);
/* kvlm_session_load from a file image in memory (name is used in messages).
 * Takes the session like kvlm_session_load; on error it is untouched. */
kvlm_status kv_session_load_buffer(kvlm_session *s, const uint8_t *buf, size_t n, const char *name,
                                   kvlm_error *err);
/* The path rule for session files: what `path` names must be a regular file
 * (not followed if it is a symbolic link) or, when absent_ok, nothing.
 * Checks with lstat only (never opens the path). `who` prefixes the message. */
kvlm_status kv_session_check_path(const char *path, bool absent_ok, const char *who, kvlm_error *err);
/* How session files are written and read, for the session's own files and the files that go with
 * them (the chat's conversation beside its session): writes n bytes to path through a temporary
 * beside it (cleaning the orphans of killed saves first), fsync'd and renamed over it, refusing
 * anything at path that is not a regular file; reads a regular file whole (never following a link
 * or blocking on a FIFO; *out malloc'd). `who` prefixes the messages. */
kvlm_status kv_session_write_file(const char *path, const void *data, size_t n, const char *who, kvlm_error *err);
kvlm_status kv_session_read_file(const char *path, const char *who, uint8_t **out, size_t *n, kvlm_error *err);
/* Removes the temporaries that killed saves of `path` left behind (see persist.c);
 * returns how many it removed. */
int kv_session_clean_temps(const char *path);

#endif
