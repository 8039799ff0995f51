/* kvlm — LLM inference on CPUs around a first-class KV cache.
 * The one public header. All handles are opaque; every call that can fail
 * returns a kvlm_status and, when err is not NULL, fills it with a message.
 * The library never prints, never exits and keeps no global mutable state.
 *
 * Ownership and threads:
 * - A model is read-only once loaded: any number of threads may use it at
 *   once (tokenize, make sessions and caches, evaluate through their own
 *   sessions). It must outlive every cache, session and text stream made
 *   from it: free those first, then the model.
 * - A cache (page pool) may be shared by sessions on different threads (it
 *   locks itself); it must outlive the sessions that use it.
 * - A session is used by one call at a time. The calls that change it
 *   (kvlm_eval, kvlm_decode_batch, kvlm_generate, kvlm_session_truncate,
 *   kvlm_session_save, kvlm_session_load) refuse a concurrent call on the same
 *   session with KVLM_ERR_BUSY; kvlm_session_cancel may be called from any
 *   thread. The queries (kvlm_session_n_past, kvlm_session_tokens,
 *   kvlm_session_get_stats) and kvlm_session_free must not overlap another
 *   call on that session.
 * - A sampler and a text stream are not thread-safe: one thread at a time.
 * - Pointers passed in are borrowed for the call only unless stated: nothing
 *   keeps them afterwards. kvlm_sampler_new copies the logit_bias array;
 *   kvlm_text_stream_new copies the stop strings; kvlm_generate reads
 *   params->sampling.logit_bias and params->stop during the call only.
 *   Objects the library returns are freed with their *_free function (each
 *   accepts NULL); a failing *_new / kvlm_model_load stores NULL in *out.
 * - A NULL params pointer means the defaults (the *_default_params value).
 * - kvlm_generate always initializes *result; after an error it holds nothing
 *   to free (text and tokens are NULL), and kvlm_generate_result_free on it
 *   is harmless either way. */
#ifndef KVLM_H
#define KVLM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The library's version (CMakeLists.txt reads it from here: the package
 * version and the shared library's SONAME, libkvlm.so.MAJOR, or
 * libkvlm.so.0.MINOR while MAJOR is 0). kvlm_version() gives the version of
 * the library actually linked. */
#define KVLM_VERSION_MAJOR 0
#define KVLM_VERSION_MINOR 1
#define KVLM_VERSION_PATCH 0
#define KVLM_VERSION_STRING "0.1.0"

/* KVLM_API marks the public functions: the shared library is built with
 * -fvisibility=hidden and exports these (kvlm_*) names only. */
#ifndef KVLM_API
#if defined(__GNUC__) || defined(__clang__)
#define KVLM_API __attribute__((visibility("default")))
#else
#define KVLM_API
#endif
#endif

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

/* The version of the library linked (KVLM_VERSION_STRING when it is the
 * one this header came with), e.g. "0.1.0"; a static string. */
KVLM_API const char *kvlm_version(void);
/* The kernels the running CPU gets (the best instruction set the dispatch
 * found: "avx512 (...)", "avx2 (...)" or "scalar (...)"); a static string. */
KVLM_API const char *kvlm_cpu_features(void);

/* A short, static name for a status ("ok", "format error", ...; "unknown" for a value that is none). */
KVLM_API const char *kvlm_status_name(kvlm_status s);

typedef int32_t kvlm_token;

/* ---------------------------------------------------------------- model */
typedef struct kvlm_model kvlm_model;

typedef struct kvlm_model_params {
    int n_threads;      /* threads for evaluation; <= 0 means 1 */
    bool vocab_only;    /* load only the tokenizer (no weights, no sessions) */
    bool ternary_float_activations; /* I2_S matmuls with float activations (the reference
                                       semantics; default: 8-bit per-token activations as
                                       bitnet.cpp does) */
} kvlm_model_params;

KVLM_API kvlm_model_params kvlm_model_default_params(void);

KVLM_API kvlm_status kvlm_model_load(const char *path, const kvlm_model_params *params,
                            kvlm_model **out, kvlm_error *err);
KVLM_API void kvlm_model_free(kvlm_model *model);

typedef struct kvlm_model_info {
    char arch[32];
    int32_t n_vocab;
    int32_t n_ctx_train;  /* the context the model was trained for (<arch>.context_length) */
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
    int32_t head_dim;     /* size of one attention head (<arch>.attention.key_length, else n_embd / n_head) */
} kvlm_model_info;

KVLM_API void kvlm_model_get_info(const kvlm_model *model, kvlm_model_info *info);

/* ------------------------------------------------------------ tokenizer */
KVLM_API kvlm_token kvlm_token_bos(const kvlm_model *model); /* -1 if none */
KVLM_API kvlm_token kvlm_token_eos(const kvlm_model *model); /* -1 if none */
KVLM_API bool kvlm_token_is_eog(const kvlm_model *model, kvlm_token t);
/* Whether the model's vocabulary asks for BOS at the start of a prompt. */
KVLM_API bool kvlm_add_bos(const kvlm_model *model);

/* Tokenizes text[0..len). add_special: add BOS (and EOS) as the vocab asks.
 * parse_special: text spelling a special/control token maps to that token.
 * Returns the number of tokens, written to out when it fits in n_max; when it
 * does not fit, returns minus the number needed and writes nothing useful.
 * INT32_MIN: invalid arguments, out of memory, or more than INT32_MAX tokens. */
KVLM_API int32_t kvlm_tokenize(const kvlm_model *model, const char *text, size_t len,
                      kvlm_token *out, int32_t n_max, bool add_special,
                      bool parse_special);

/* Writes the bytes of one token to buf (not NUL-terminated). special: render
 * control tokens' text too. Returns bytes written, or minus the size needed. */
KVLM_API int32_t kvlm_token_to_piece(const kvlm_model *model, kvlm_token t, char *buf,
                            int32_t size, bool special);

/* ------------------------------------------------------------ KV cache */
/* Storage types for K and V (values are GGUF type ids). */
typedef enum kvlm_kv_type {
    KVLM_KV_F32 = 0,
    KVLM_KV_F16 = 1,
    KVLM_KV_Q4_0 = 2,
    KVLM_KV_Q8_0 = 8,
} kvlm_kv_type;

typedef enum kvlm_growth {
    KVLM_GROWTH_FACTOR = 0,   /* capacity *= growth_factor */
    KVLM_GROWTH_LINEAR = 1,   /* capacity += growth_tokens */
    KVLM_GROWTH_ADAPTIVE = 2, /* x2 while under 1/4 of the maximum, x1.5 under 1/2, then x1.25 */
} kvlm_growth;

/* A page pool: K/V storage in fixed-size pages, shared by any number of
 * sessions of one model; full pages are content-addressed so that sessions
 * with a common prefix share them. */
typedef struct kvlm_cache kvlm_cache;

typedef struct kvlm_cache_params {
    kvlm_kv_type type_k, type_v; /* default F16, F16 (as llama.cpp) */
    int32_t page_tokens;         /* tokens per page: 16..256, default 32 */
    int64_t initial_tokens;      /* capacity allocated up front; default 256 */
    int64_t max_tokens;          /* capacity limit; default 1<<20 */
    kvlm_growth growth;
    float growth_factor;         /* default 1.5 */
    int64_t growth_tokens;       /* for KVLM_GROWTH_LINEAR; default 1024 */
    int64_t cached_bytes_budget; /* most bytes kept in unreferenced cached pages; <0: no limit; default 256 MiB */
    bool prefix_sharing;         /* default true */
    bool prefetch;               /* software prefetch of the next page during attention */
    /* Disk tier (docs/KV_CACHE.md): with disk_tier and a directory, full pages evicted from memory are
       written there zstd-compressed by a background thread and read back on a later miss; the pages
       still cached are written when the cache is freed, and a new cache on the directory finds them.
       One cache (one process) uses a directory at a time: another gets KVLM_ERR_BUSY. */
    bool disk_tier;              /* default false */
    const char *disk_dir;        /* the directory (created if missing); copied by kvlm_cache_new */
    int64_t disk_bytes_budget;   /* most bytes of page files kept there; default 1 GiB */
    int32_t disk_zstd_level;     /* 1..19; default 1 */
} kvlm_cache_params;

KVLM_API kvlm_cache_params kvlm_cache_default_params(void);
KVLM_API kvlm_status kvlm_cache_new(const kvlm_model *model, const kvlm_cache_params *params, kvlm_cache **out,
                           kvlm_error *err);
/* Frees the pool; every session using it must be freed first. */
KVLM_API void kvlm_cache_free(kvlm_cache *cache);

typedef struct kvlm_kv_stats {
    int64_t tokens;               /* tokens stored (the session's, or all sessions' for a cache) */
    int64_t capacity;             /* tokens the pool can hold without growing */
    double utilization;           /* pages in use / pages allocated */
    int64_t bytes;                /* K/V bytes currently allocated */
    int64_t bytes_f32_equivalent; /* what the stored tokens would take in F32 */
    int64_t bytes_by_type[4];     /* allocated bytes in pages whose K type is F32, F16, Q8_0, Q4_0 */
    int64_t hits;                 /* tokens whose K/V were reused instead of computed */
    int64_t misses;               /* tokens computed */
    double hit_rate;              /* hits / (hits + misses) */
    int64_t recomputed;           /* tokens dropped because the history differed, then computed */
    int64_t pages_shared;         /* pages referenced by more than one session */
    int64_t pages_cached;         /* unreferenced pages kept for reuse */
    int64_t evictions;
    int64_t compressions;         /* pages re-quantized by tiered compression */
    int64_t bytes_saved;          /* bytes freed by those */
    int64_t shifts;               /* context shifts / sliding evictions */
    int64_t growth_events;
    double growth_ms_total, growth_ms_max;
    /* the disk tier (0 without one) */
    int64_t disk_hits;            /* pages read back from disk instead of computed */
    int64_t disk_bytes;           /* bytes of page files on disk */
    int64_t disk_pages;           /* page files on disk */
    int64_t disk_writes;          /* pages written */
    int64_t disk_evictions;       /* page files removed to stay within the disk budget */
    int64_t disk_rejected;        /* page files that did not verify (removed, never used) */
    int64_t disk_dropped;         /* evicted pages not written (the write queue was full, or an I/O error) */
} kvlm_kv_stats;

KVLM_API void kvlm_cache_get_stats(const kvlm_cache *cache, kvlm_kv_stats *stats);

/* ------------------------------------------------------------ sessions */
typedef struct kvlm_session kvlm_session;

typedef enum kvlm_overflow {
    KVLM_OVERFLOW_ERROR = 0,   /* the eval that would overflow fails; nothing changes */
    KVLM_OVERFLOW_SHIFT = 1,   /* keep n_keep, drop the oldest half of the rest, re-rotate keys */
    KVLM_OVERFLOW_SLIDING = 2, /* StreamingLLM: n_sink sink tokens + the most recent tokens */
    KVLM_OVERFLOW_RING = 3,    /* the last `window` tokens with absolute positions (SWA) */
} kvlm_overflow;

typedef struct kvlm_session_params {
    int32_t n_ctx;      /* most tokens held at once; <= 0: the model's context length */
    int n_threads;      /* <= 0: the model's; more than the CPUs the process may run
                           on (sched_getaffinity) is lowered to that count, see
                           kvlm_session_n_threads */
    kvlm_cache *cache;  /* a shared page pool; NULL: the session makes its own from `cache_params` */
    kvlm_cache_params cache_params;
    kvlm_overflow overflow;
    int32_t n_keep;     /* SHIFT: tokens kept at the start */
    int32_t n_sink;     /* SLIDING: attention-sink tokens kept at the start (default 4) */
    int32_t window;     /* RING: attention window in tokens (<= 0: n_ctx) */
    int32_t compress_after;     /* tiered compression: pages older than this many tokens are
                                   re-quantized; 0 = off */
    kvlm_kv_type compress_type; /* the type they become (default Q8_0) */
} kvlm_session_params;

KVLM_API kvlm_session_params kvlm_session_default_params(void);

KVLM_API kvlm_status kvlm_session_new(const kvlm_model *model, const kvlm_session_params *params,
                             kvlm_session **out, kvlm_error *err);
KVLM_API void kvlm_session_free(kvlm_session *s);

/* Tokens the session holds in its cache. */
KVLM_API int32_t kvlm_session_n_past(const kvlm_session *s);
KVLM_API int32_t kvlm_session_n_ctx(const kvlm_session *s);
/* Threads the session evaluates with: the requested count, at most the CPUs
 * available to the process. */
KVLM_API int kvlm_session_n_threads(const kvlm_session *s);

#define KVLM_AUTO (-1)

/* The n_past contract: tokens[0..n_past) are taken as already in the
 * session's cache and only tokens[n_past..n_tokens) are computed.
 * - n_past larger than what the session holds: error, nothing changes.
 * - The session holds more than n_past: it rolls back to n_past.
 * - The session's history differs from tokens[0..n_past): it rolls back to
 *   the longest common prefix and recomputes from there (counted in the
 *   statistics as `recomputed`).
 * - n_past = KVLM_AUTO: the session finds the common prefix itself.
 * Full pages of the rest that another sequence already computed (same prefix)
 * are reused from the shared cache. Results are bit-identical to evaluating
 * the whole sequence at once, whatever the chunking or thread count.
 * logits (may be NULL): the last position's n_vocab logits, or with
 * all_logits the rows of positions n_past..n_tokens-1 ((n_tokens - n_past) *
 * n_vocab floats; in auto mode, from the common prefix on).
 * Validation errors leave the session unchanged; a failure while computing
 * (pool exhausted) leaves it holding a prefix of the tokens.
 * With SHIFT, SLIDING or RING, tokens past the context are fed in passes the
 * policy makes room for. After a shift (or once a ring wraps) the session can
 * go back only to points it still holds: KVLM_AUTO finds the longest such
 * common prefix (the dropped part compared by a hash), an explicit n_past that
 * is no longer held is refused (KVLM_ERR_UNSUPPORTED, nothing changes). */
KVLM_API kvlm_status kvlm_eval(kvlm_session *s, const kvlm_token *tokens, int32_t n_tokens,
                      int32_t n_past, float *logits, bool all_logits,
                      kvlm_error *err);

/* Batched decoding: appends tokens[i] to sessions[i] for n distinct sessions
 * of one model in a single forward pass (the weights are read once for all of
 * them; this is what continuous batching builds on). logits: n * n_vocab, row
 * i for session i, bit-identical to what kvlm_eval would give that session.
 * Every session must be free (else KVLM_ERR_BUSY, nothing done). */
KVLM_API kvlm_status kvlm_decode_batch(kvlm_session *const *sessions, const kvlm_token *tokens, int32_t n, float *logits,
                              kvlm_error *err);

/* The reference path: evaluates tokens from scratch in a private cache with
 * no reuse; logits as kvlm_eval with n_past = 0. */
KVLM_API kvlm_status kvlm_eval_full(const kvlm_model *model, const kvlm_token *tokens, int32_t n_tokens,
                           float *logits, bool all_logits, kvlm_error *err);

/* Drops everything after the first n tokens, in time proportional to the pages dropped. After a
 * shift (or once a ring wraps) only points the cache still holds are accepted (the kept head, the
 * held tail, a ring's window; KVLM_ERR_UNSUPPORTED otherwise); 0 always resets. */
KVLM_API kvlm_status kvlm_session_truncate(kvlm_session *s, int32_t n, kvlm_error *err);

/* A new session holding what src holds (its history and K/V), with src's settings, that goes on
 * independently: writes to one never show in the other, and both continue bit-identically to a
 * session that computed the same history. On a shared cache (kvlm_cache_new) the two share src's
 * full pages copy-on-write and only the last, partly filled page is copied, so a fork costs the page
 * table and one page, whatever the length (beams, alternatives, "what if" branches); a session with
 * a pool of its own gets a pool of its own too, with a copy of every page. src must be free (else
 * KVLM_ERR_BUSY). Free the fork with kvlm_session_free, in any order. */
KVLM_API kvlm_status kvlm_session_fork(kvlm_session *src, kvlm_session **out, kvlm_error *err);

/* Saves the session (token history and K/V pages, zstd-compressed, with the
 * model's fingerprint and a checksum) to path, through a temporary file that
 * is flushed and renamed, so a crash never leaves a half-written file.
 * path must be a regular file or absent: a link, FIFO, device or directory
 * is refused. Orphaned temporaries of killed saves of path are removed. */
KVLM_API kvlm_status kvlm_session_save(kvlm_session *s, const char *path, kvlm_error *err);
/* Replaces the session's contents with a saved session. A file made for
 * another model or other KV settings, a truncated, corrupted or crafted file
 * (every field is checked against what the session's settings can produce),
 * a path that is not a regular file: a clear error, and the session is
 * untouched. */
KVLM_API kvlm_status kvlm_session_load(kvlm_session *s, const char *path, kvlm_error *err);
/* Copies up to n_max tokens of the session's history; returns how many it holds. */
KVLM_API int32_t kvlm_session_tokens(const kvlm_session *s, kvlm_token *out, int32_t n_max);

/* The session's view of the cache statistics (hits/misses/tokens are the
 * session's; capacity, bytes, evictions and growth are the pool's). */
KVLM_API void kvlm_session_get_stats(const kvlm_session *s, kvlm_kv_stats *stats);
/* Writes the statistics as one JSON object (no newline); returns its length
 * or minus the size needed. */
KVLM_API int32_t kvlm_kv_stats_json(const kvlm_kv_stats *stats, char *buf, int32_t size);

KVLM_API int32_t kvlm_n_vocab(const kvlm_model *model);

/* ------------------------------------------------------------ chat templates */
typedef struct kvlm_chat_message {
    const char *role;    /* "system", "user", "assistant" */
    const char *content;
} kvlm_chat_message;

/* The chat format: tmpl names one ("chatml", "llama2", "llama2-sys", "llama3",
 * "phi3", "bitnet", "plain"), or NULL to recognize the model's
 * tokenizer.chat_template the way llama.cpp does ("plain" — "User: ...\n
 * Assistant: ..." — when there is none or it is not recognized). Writes the
 * prompt (NUL-terminated) and returns its length, or minus the size needed
 * (terminator included); an unknown template name (or running out of
 * memory, or a prompt of 2 GiB or more) returns 0 and writes nothing. add_assistant: end with the opening of the assistant's turn. */
KVLM_API int32_t kvlm_chat_apply(const kvlm_model *model, const char *tmpl, const kvlm_chat_message *msgs, int32_t n,
                        bool add_assistant, char *buf, int32_t size);
/* The name of the format kvlm_chat_apply(model, NULL, ...) uses. */
KVLM_API const char *kvlm_chat_template(const kvlm_model *model);

/* ------------------------------------------------------------ sampling */
typedef struct kvlm_logit_bias {
    kvlm_token token;
    float bias; /* added to the logit; -INFINITY bans the token */
} kvlm_logit_bias;

/* A compiled grammar (see "grammars" below). */
typedef struct kvlm_grammar kvlm_grammar;

typedef struct kvlm_sampling_params {
    float temperature;       /* <= 0: greedy */
    int32_t top_k;           /* <= 0: off */
    float top_p;             /* >= 1: off */
    float min_p;             /* <= 0: off */
    float repeat_penalty;    /* 1: off */
    float frequency_penalty; /* 0: off */
    float presence_penalty;  /* 0: off */
    int32_t penalty_last_n;  /* window of recent tokens for the penalties; 0 off, -1 all */
    uint64_t seed;           /* seeded multinomial: same seed, same tokens, any platform */
    const kvlm_logit_bias *logit_bias;
    int32_t n_logit_bias;
    /* Constrained decoding: NULL (the default) or a grammar made for the model whose logits
       are sampled. Only tokens that continue the grammar can be drawn; the mask is applied
       after bias and penalties and before top-k/top-p/min-p/temperature, so the draw is that
       of the chain on the masked logits (same seed, same tokens). Control and unknown tokens
       are never allowed, end-of-generation tokens only where the grammar is complete. The
       grammar must outlive every sampler and generation that uses it. */
    const kvlm_grammar *grammar;
} kvlm_sampling_params;

/* llama.cpp's defaults: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05,
 * no penalties (window 64), seed 0. */
KVLM_API kvlm_sampling_params kvlm_sampling_default_params(void);

/* A standalone sampler chain (bias, penalties, top-k, top-p, min-p, temperature, draw). */
typedef struct kvlm_sampler kvlm_sampler;
KVLM_API kvlm_status kvlm_sampler_new(const kvlm_sampling_params *params, int32_t n_vocab, kvlm_sampler **out,
                             kvlm_error *err);
KVLM_API void kvlm_sampler_free(kvlm_sampler *s);
/* Picks a token from one row of logits (does not accept it). */
KVLM_API kvlm_status kvlm_sampler_sample(kvlm_sampler *s, const float *logits, kvlm_token *out, kvlm_error *err);
/* A generated token: adds it to the penalty history and, with a grammar, advances the
 * grammar by it (KVLM_ERR_INVALID_ARG, nothing changed, when the grammar does not allow it). */
KVLM_API kvlm_status kvlm_sampler_accept(kvlm_sampler *s, kvlm_token t, kvlm_error *err);
/* Adds a token to the penalty history only (prompt tokens; the grammar is not advanced). */
KVLM_API kvlm_status kvlm_sampler_accept_history(kvlm_sampler *s, kvlm_token t, kvlm_error *err);
/* With a grammar: the text accepted so far is complete (end-of-generation is allowed), and
 * whether more can follow (false: the grammar is finished). Without one: true, true. */
KVLM_API bool kvlm_sampler_grammar_complete(const kvlm_sampler *s);
KVLM_API bool kvlm_sampler_grammar_can_continue(const kvlm_sampler *s);
/* Clears the history, reseeds, and puts the grammar back at its start. */
KVLM_API void kvlm_sampler_reset(kvlm_sampler *s);

/* ------------------------------------------------------------ grammars
 * GBNF in llama.cpp's syntax (docs/GRAMMAR.md): rules `name ::= ...`, alternation `|`,
 * grouping, `* + ? {m} {m,} {m,n}`, "literals" and [classes] ([^negated], ranges) with the
 * escapes \n \r \t \\ \" \[ \] \xHH \uHHHH \UHHHHHHHH, `.`, comments from `#`. A grammar is
 * compiled once for a model's vocabulary; it is read-only afterwards (any number of threads
 * and samplers may use it at once). */

/* Compiles text (NUL-terminated) with start rule root (NULL: "root") for model's vocabulary
 * (a vocab_only model will do). A malformed grammar, an undefined rule, left recursion or a
 * missing start rule: KVLM_ERR_INVALID_ARG with the line and column in err. */
KVLM_API kvlm_status kvlm_grammar_new_gbnf(const kvlm_model *model, const char *text, const char *root,
                                          kvlm_grammar **out, kvlm_error *err);
/* Compiles a JSON Schema (NUL-terminated JSON text) for model's vocabulary: the grammar of the
 * JSON texts valid against it, as llama.cpp's json-schema-to-grammar builds it (docs/GRAMMAR.md,
 * "JSON Schema": type and type lists, properties/required/additionalProperties, items,
 * prefixItems, minItems/maxItems, enum, const, anyOf/oneOf, allOf of objects, local $ref,
 * pattern, minLength/maxLength, integer bounds, format date/time/date-time/uuid; {} is any
 * value). Malformed JSON: KVLM_ERR_INVALID_ARG with the line and column; a keyword or form that
 * is not supported: KVLM_ERR_UNSUPPORTED naming it and where it is (a JSON pointer). */
KVLM_API kvlm_status kvlm_grammar_new_json_schema(const kvlm_model *model, const char *schema, kvlm_grammar **out,
                                                  kvlm_error *err);
/* The GBNF text kvlm_grammar_new_json_schema compiles (start rule root), in *gbnf, to be freed
 * with kvlm_string_free; the same errors. */
KVLM_API kvlm_status kvlm_json_schema_to_gbnf(const char *schema, char **gbnf, kvlm_error *err);
KVLM_API void kvlm_string_free(char *s);
KVLM_API void kvlm_grammar_free(kvlm_grammar *g);

/* ------------------------------------------------------------ generation */
typedef enum kvlm_finish_reason {
    KVLM_FINISH_STOP = 0,      /* end-of-generation token, stop string, the callback asked, or the
                                  grammar (sampling.grammar) is finished: complete, nothing can follow */
    KVLM_FINISH_LENGTH = 1,    /* max_tokens or the context is full */
    KVLM_FINISH_CANCELLED = 2, /* kvlm_session_cancel */
    KVLM_FINISH_DEADLINE = 3,  /* timeout_s passed */
    KVLM_FINISH_ERROR = 4,
} kvlm_finish_reason;

KVLM_API const char *kvlm_finish_reason_name(kvlm_finish_reason r); /* "stop", "length", ... */

typedef struct kvlm_generate_params {
    kvlm_sampling_params sampling;
    int32_t max_tokens;       /* < 0: until the context is full (a policy that keeps going: a
                                 context's worth of tokens) */
    const char *const *stop;  /* stop strings: matched across token boundaries, never emitted */
    int32_t n_stop;
    bool ignore_eos;
    double timeout_s;         /* > 0: a deadline this many seconds after the call starts */
    bool append;              /* true: the prompt continues the session's history (no BOS);
                                 false: the prompt is the whole context (BOS as the vocab asks),
                                 reusing the longest common prefix the session holds (after a
                                 shift or in a ring: the longest it still holds, checked against
                                 the whole history) */
    bool parse_special;       /* special-token text in the prompt maps to the token (default true) */
    /* Speculative decoding. draft_max > 0: each step drafts up to draft_max tokens, which the model
       verifies in one forward pass; drafted tokens past the first mismatch are rolled back. The
       output is exactly that of decoding without drafts, token for token (greedy, and seeded
       sampling, since each position is still sampled from the model's own logits with the same
       random draw; the logits are the same whatever the chunking). Drafts come from `draft` when it
       is set — a session on a small model with the same vocabulary (checked), synced to the context
       by this call, which must not be used by another call meanwhile — else from prompt lookup:
       the latest earlier occurrence in the context of its last draft_ngram (down to 1) tokens, and
       the tokens that followed it. Drafting pauses near the end of the context and stops once a
       shift or a ring has dropped tokens (those cannot be rolled back); plain decoding goes on. */
    int32_t draft_max;        /* 0: off */
    int32_t draft_ngram;      /* prompt lookup: the longest n-gram matched (default 3) */
    kvlm_session *draft;      /* a draft model's session, or NULL for prompt lookup */
    /* Beam search. n_beams > 1: n_beams hypotheses are decoded together (one batched pass per
       step), each in its own copy-on-write fork of the session's cache, so they share the prompt's
       pages. Each step takes the 2 * n_beams best continuations by summed log-probability (ties: the
       earlier beam, then the lower token); one that ends (an end-of-generation token, a stop string)
       is kept as a finished hypothesis if it ranks among the first n_beams, the others go on until
       n_beams beams are live. Finished hypotheses are ranked by
       score = logprob / n_tokens^length_penalty (the end token counted); the search ends when
       n_beams are finished and the best live beam's score is no better than the worst of them (as
       transformers' early_stopping=False), or at max_tokens / a full context (the live beams count
       then). The best hypothesis is the result, and the session then holds it as plain decoding
       would have left it. The sampling parameters (temperature, penalties, logit bias, seed) do not
       apply; the callback sees the result's text once the search is over. Not with draft_max, nor
       with a grammar (sampling.grammar: KVLM_ERR_UNSUPPORTED). */
    int32_t n_beams;          /* 0 or 1: off; at most 64 */
    float length_penalty;     /* default 1.0; 0: plain summed log-probability */
    bool all_beams;           /* also return every final hypothesis in result->beams, best first */
} kvlm_generate_params;

KVLM_API kvlm_generate_params kvlm_generate_default_params(void);

/* Called once per generated token with the text it completes (valid UTF-8,
 * possibly empty when bytes are held back for a multi-byte character or a
 * possible stop string). Return non-zero to stop (finish reason "stop"). */
typedef int (*kvlm_token_callback)(const char *text, size_t len, kvlm_token token, void *user_data);

typedef struct kvlm_generate_result {
    int32_t n_prompt;         /* prompt tokens (the whole context in non-append mode) */
    int32_t n_prompt_cached;  /* of those, reused from the cache */
    int32_t n_completion;     /* tokens generated */
    kvlm_finish_reason finish;
    double prompt_ms, generate_ms;
    char *text;               /* the completion (valid UTF-8, NUL-terminated); free with kvlm_generate_result_free */
    size_t text_len;
    kvlm_token *tokens;       /* the completion's tokens */
    /* speculative decoding (draft_max > 0) */
    int32_t n_drafted;        /* tokens drafted */
    int32_t n_accepted;       /* of those, generated as drafted */
    int32_t n_passes;         /* the model's forward passes while generating (n_completion - 1
                                 without drafts; fewer the more drafts are accepted; with beams,
                                 one batched pass per step) */
    /* beam search (n_beams > 1) */
    double logprob;           /* the result's summed log-probability (natural log) */
    double score;             /* its score (see length_penalty) */
    int32_t n_beams;          /* hypotheses in beams (all_beams), best first */
    struct kvlm_beam *beams;
    int64_t beam_kv_bytes_peak;     /* K/V bytes the cache held at the search's widest step */
    int64_t beam_kv_bytes_unshared; /* what the beams' pages would have taken without sharing */
} kvlm_generate_result;

/* One final hypothesis of a beam search. */
typedef struct kvlm_beam {
    char *text;               /* as result->text would be for it */
    size_t text_len;
    kvlm_token *tokens;
    int32_t n_tokens;
    double logprob, score;
    kvlm_finish_reason finish;
} kvlm_beam;

KVLM_API void kvlm_generate_result_free(kvlm_generate_result *r);

KVLM_API kvlm_status kvlm_generate(kvlm_session *s, const char *prompt, const kvlm_generate_params *params,
                          kvlm_token_callback callback, void *user_data, kvlm_generate_result *result,
                          kvlm_error *err);

/* Asks the generation running on s (from any thread) to stop within one
 * decode step; it finishes with KVLM_FINISH_CANCELLED. */
KVLM_API void kvlm_session_cancel(kvlm_session *s);

/* ------------------------------------------------------------ stepwise generation helpers
 * For programs that run their own decoding loop (for example a server that
 * decodes many sequences together with kvlm_decode_batch and samples each
 * with its own kvlm_sampler): the streaming text that kvlm_generate uses, and
 * log-probabilities of a row of logits. */

/* Generated tokens in, text out: the same UTF-8 hold-back and stop-string
 * matching as kvlm_generate (text is emitted only when it is valid UTF-8 and
 * cannot be the start of a stop string; a stop string is never emitted). */
typedef struct kvlm_text_stream kvlm_text_stream;

/* The stop strings are copied (at most 64, each non-empty). */
KVLM_API kvlm_status kvlm_text_stream_new(const kvlm_model *model, const char *const *stop, int32_t n_stop,
                                 kvlm_text_stream **out, kvlm_error *err);
KVLM_API void kvlm_text_stream_free(kvlm_text_stream *ts);
/* Adds the text of token t (t < 0: no token). final: emit everything held
 * back (an incomplete character becomes U+FFFD). text and len receive what can
 * be emitted now (valid until the next call on ts; may be empty). *stopped
 * is set when a stop string matched: the text before it was emitted and
 * nothing more will be. After a stop, pushes emit nothing. */
KVLM_API kvlm_status kvlm_text_stream_push(kvlm_text_stream *ts, kvlm_token t, bool final, const char **text, size_t *len,
                                  bool *stopped, kvlm_error *err);
/* Everything emitted so far (NUL-terminated). */
KVLM_API const char *kvlm_text_stream_text(const kvlm_text_stream *ts, size_t *len);

/* The log-probability of `token` under softmax(logits) (the model's
 * distribution, before any sampling transform), and the top_n most probable
 * tokens in decreasing order (ties: the lower id first) with theirs. Computed
 * in double in index order, so the result depends only on the logits.
 * logprob, top_tokens and top_logprobs may be NULL; top_n <= n_vocab. */
KVLM_API kvlm_status kvlm_logprobs(const float *logits, int32_t n_vocab, kvlm_token token, float *logprob, int32_t top_n,
                          kvlm_token *top_tokens, float *top_logprobs, kvlm_error *err);

#ifdef __cplusplus
}
#endif
#endif
