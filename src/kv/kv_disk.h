/* The disk tier of the prefix cache (kv_disk.c): full pages evicted from a pool's memory are written
 * to a directory zstd-compressed by a background thread, keyed by their prefix hash chain and their
 * storage types, and read back on a memory miss. Private to src/kv/ (kv_pool.c is its only user).
 *
 * A page file (NAME = 16 hex digits of the key, '-', 2 hex digits each of type_k and type_v,
 * ".kvpage") is, little-endian: a kv_disk_header, page_tokens int32 token ids, comp_bytes of zstd
 * data (raw_bytes once decompressed), then the XXH3-64 of everything before it. "index" lists the
 * files in LRU order (oldest first) when the tier was last closed; "lock" holds the flock that
 * keeps a second process out; "tmp.*" are writes in progress (garbage after a crash). */
#ifndef KV_KV_DISK_H
#define KV_KV_DISK_H

#include <stdbool.h>
#include <stdint.h>

#include "kv_cache.h"
#include "kvlm.h"

#define KV_DISK_MAGIC "KVLMPAGE"
#define KV_DISK_VERSION 1u
#define KV_DISK_INDEX_MAGIC "KVLMDIDX"

typedef struct kv_disk_header {
    char magic[8];
    uint32_t version;
    uint32_t header_bytes; /* sizeof(kv_disk_header) */
    uint64_t fingerprint[2]; /* the model's (XXH3-128 of its GGUF file) */
    uint32_t page_tokens, n_layer, kv_dim, type_k, type_v;
    uint32_t zstd_level;   /* informational */
    uint64_t key, parent_key;
    uint64_t raw_bytes, comp_bytes;
} kv_disk_header;

typedef struct kv_disk kv_disk;

/* What a tier is for: the model and the page geometry every file must carry. */
typedef struct kv_disk_geom {
    uint64_t fingerprint[2];
    int32_t page_tokens, n_layer, kv_dim;
} kv_disk_geom;

/* A page handed to the tier (copied: the caller keeps its memory). */
typedef struct kv_disk_page {
    uint64_t key, parent_key;
    uint32_t type_k, type_v;
    const int32_t *tokens; /* page_tokens ids */
    const uint8_t *data;
    uint64_t bytes;
} kv_disk_page;

/* Opens (creating it if missing) the directory: takes its lock (another holder: KVLM_ERR_BUSY with a
 * message naming the directory), removes temporaries, re-indexes the page files (the index file for
 * their order, each file's header checked; a file that does not verify is removed and counted in
 * disk_rejected), trims to the budget and starts the spilling thread. level: zstd level (1..19). */
kvlm_status kv_disk_open(const char *dir, int64_t budget, int level, const kv_disk_geom *g, kv_disk **out,
                         kvlm_error *err);
/* Writes what is queued, the index file, releases the lock and frees d. */
void kv_disk_close(kv_disk *d);
/* Whether the tier holds (or is writing) that page; a hit counts as a use for its LRU. */
bool kv_disk_contains(kv_disk *d, uint64_t key, uint32_t type_k, uint32_t type_v);
/* Queues a copy of the page for writing (nothing if the tier already holds it). Never does I/O: with
 * wait false a full queue drops the page (disk_dropped); with wait true it waits for room. */
void kv_disk_spill(kv_disk *d, const kv_disk_page *pg, bool wait);
/* Reads the page back into dst (bytes: the page's size in memory) after verifying everything (a file
 * that does not verify is removed and counted); true on a hit (disk_hits). */
bool kv_disk_load(kv_disk *d, uint64_t key, uint64_t parent_key, const int32_t *tokens, uint32_t type_k,
                  uint32_t type_v, uint8_t *dst, uint64_t bytes);
/* Waits until everything queued is written (or dropped after an I/O error). */
void kv_disk_drain(kv_disk *d);
/* Adds the tier's counters to st (disk_*). */
void kv_disk_stats(kv_disk *d, kvlm_kv_stats *st);

/* The pool's side (kv_pool.c). With params->disk_tier, opens the pool's tier for the model of that
 * fingerprint (the pool's page geometry); else nothing. */
kvlm_status kv_pool_open_disk(kv_page_pool *p, const uint64_t fingerprint[2], kvlm_error *err);
/* Hands every indexed page still in memory to the tier and waits until all is written. */
void kv_pool_disk_flush(kv_page_pool *p);
/* Waits until the pages already handed to the tier are written (tests). */
void kv_pool_disk_drain(kv_page_pool *p);

#endif
