/* Session file load on arbitrary bytes, reaching the validation: the harness
 * writes the fingerprint of the loaded model into the header and recomputes
 * the checksum (fix_up below, with the loader's own kv_session_seal), so that a mutated file is not simply refused as
 * corrupted, then evaluates one more token on what was loaded.
 *
 * The session is created with the cache settings the header claims (when they
 * are ones a session can have), so the fuzzer explores every page size, K/V
 * type and overflow policy from the seeds. Contract: load fails cleanly or
 * gives a session that can be evaluated, read and saved; no crash, no
 * out-of-bounds or uninitialised read, no leak.
 *
 * Also checked: n_past >= the tokens held, and one token evaluated after the
 * load, whose attention reads every loaded position (issue 12, defect 1; the
 * reproducers found before the loader was hardened are in fuzz/known/). */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "fuzz_util.h"
#include "kvlm.h"
#include "api/session_impl.h"

/* The header layout is the loader's own (kv_ses_header, session_impl.h). */
typedef kv_ses_header ses_header;

enum { IN_CAP = 1 << 18 };

static kvlm_model *g_model;
static uint64_t g_fp[2];
static uint8_t *g_buf;
static float *g_logits;

/* Seals a mutated image as a save would: this model's fingerprint (XXH3-128
 * of the model file) in the header, then the loader's checksum. */
static void fix_up(uint8_t *p, size_t n) {
    if (n < sizeof(ses_header) + 8) return;
    memcpy(p + offsetof(ses_header, fingerprint), g_fp, sizeof g_fp);
    kv_session_seal(p, n);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    g_model = fuzz_load_model("llama/aidreams260K-f32.gguf", false, "fuzz_session");
    const char *path = fuzz_model_path("llama/aidreams260K-f32.gguf");
    FILE *f = fopen(path, "rb");
    if (!f) abort();
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *file = malloc((size_t)sz);
    if (!file || fread(file, 1, (size_t)sz, f) != (size_t)sz) abort();
    fclose(f);
    XXH128_hash_t h = XXH3_128bits(file, (size_t)sz);
    g_fp[0] = h.low64;
    g_fp[1] = h.high64;
    free(file);
    g_buf = malloc(IN_CAP);
    g_logits = malloc(sizeof *g_logits * (size_t)kvlm_n_vocab(g_model));
    if (!g_buf || !g_logits) abort();
    return 0;
}

static kvlm_kv_type kv_type(uint32_t t) {
    return t == KVLM_KV_F32 || t == KVLM_KV_Q4_0 || t == KVLM_KV_Q8_0 ? (kvlm_kv_type)t : KVLM_KV_F16;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > IN_CAP) return 0;
    memcpy(g_buf, data, size);
    fix_up(g_buf, size);

    kvlm_session_params sp = kvlm_session_default_params();
    sp.n_threads = 1;
    sp.n_ctx = 64;
    sp.cache_params.page_tokens = 16;
    if (size >= sizeof(ses_header)) {
        ses_header h;
        memcpy(&h, g_buf, sizeof h);
        if (h.page_tokens >= 16 && h.page_tokens <= 64) sp.cache_params.page_tokens = (int32_t)h.page_tokens;
        sp.cache_params.type_k = kv_type(h.type_k);
        sp.cache_params.type_v = kv_type(h.type_v);
        sp.overflow = (kvlm_overflow)(h.overflow % 4);
        if (h.n_ctx >= 16 && h.n_ctx <= 256) sp.n_ctx = h.n_ctx;
        /* the kept head the file claims (format v2), when a session can have it, so that shifted files
           reach the dropped-record checks and their whole-history reuse */
        if (h.version >= 2 && h.n_head >= 0 && h.n_head < sp.n_ctx - 1) {
            if (sp.overflow == KVLM_OVERFLOW_SHIFT) sp.n_keep = h.n_head;
            if (sp.overflow == KVLM_OVERFLOW_SLIDING && h.n_head + sp.cache_params.page_tokens < sp.n_ctx)
                sp.n_sink = h.n_head;
        }
    }
    sp.cache_params.initial_tokens = sp.n_ctx;
    sp.cache_params.max_tokens = 4 * sp.n_ctx + 4 * sp.cache_params.page_tokens;
    kvlm_session *s = NULL;
    kvlm_error err;
    if (kvlm_session_new(g_model, &sp, &s, &err) != KVLM_OK) return 0;

    const char *path = fuzz_memfile(g_buf, size);
    if (kvlm_session_load(s, path, &err) == KVLM_OK) {
        kvlm_token toks[512];
        const int32_t nt = kvlm_session_tokens(s, toks, 512);
        FUZZ_CHECK(nt >= 0 && nt <= kvlm_session_n_ctx(s), "loaded %d tokens into a context of %d", nt,
                   kvlm_session_n_ctx(s));
        FUZZ_CHECK(kvlm_session_n_past(s) >= nt, "n_past %d < %d tokens held", kvlm_session_n_past(s), nt);
        for (int32_t i = 0; i < nt && i < 512; i++)
            FUZZ_CHECK(toks[i] >= 0 && toks[i] < kvlm_n_vocab(g_model), "loaded token %d", toks[i]);
        /* one more token after what was loaded: attention reads every loaded position */
        const kvlm_token next = 1;
        FUZZ_CHECK(kv_session_acquire(s), "the session is busy");
        (void)kv_session_append_locked(s, &next, 1, g_logits, false, &err);
        kv_session_release(s);
        /* then a whole-history request that differs in its last token: the dropped-token record decides
           how far back it goes (the held tail, the kept head or the start) */
        const int32_t np = kvlm_session_n_past(s);
        if (np >= 2 && np <= 4096) {
            kvlm_token *all = calloc((size_t)np, sizeof *all);
            FUZZ_CHECK(all != NULL, "out of memory");
            const int32_t nh = kvlm_session_tokens(s, NULL, 0);
            /* the held tokens at the end, zeros before (where a shifted history's dropped part was) */
            if (nh <= np && nh <= 512) kvlm_session_tokens(s, all + (np - nh), nh);
            all[np - 1] = 2;
            (void)kvlm_eval(s, all, np, KVLM_AUTO, g_logits, false, &err);
            free(all);
        }
    }
    kvlm_session_free(s);
    return 0;
}
