/* GGUF open + model load + a 2-token eval, on arbitrary bytes.
 *
 * Contract: kvlm_model_load either fails with an error or gives a model that
 * can be tokenized with and evaluated; neither may crash, leak or hit
 * undefined behaviour. The eval is skipped for models whose size would make one
 * input take long (the caps below), which a fuzzed header can claim. */
#include <string.h>

#include "fuzz_util.h"
#include "kvlm.h"

enum {
    CAP_PARAMS = 1 << 22, /* weights evaluated per token */
    CAP_VOCAB = 1 << 17,
    CAP_LAYERS = 16,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_memfile(data, size);
    kvlm_model_params mp = kvlm_model_default_params();
    mp.n_threads = 1;
    kvlm_model *m = NULL;
    kvlm_error err;
    if (kvlm_model_load(path, &mp, &m, &err) != KVLM_OK) {
        FUZZ_CHECK(m == NULL, "a failed load returned a model");
        FUZZ_CHECK(err.msg[0] != '\0', "a failed load has no message");
        return 0;
    }
    kvlm_model_info info;
    kvlm_model_get_info(m, &info);
    FUZZ_CHECK(info.n_vocab > 0, "n_vocab %d", info.n_vocab);
    FUZZ_CHECK(kvlm_n_vocab(m) == info.n_vocab, "n_vocab disagrees");

    /* the fuzzed vocabulary: tokenize and render */
    kvlm_token toks[64];
    const char *text = "Hello, world! <s> 12 \xc3\xa9t\xc3\xa9";
    int32_t nt = kvlm_tokenize(m, text, strlen(text), toks, 64, true, true);
    if (nt > 0) {
        char piece[256];
        for (int32_t i = 0; i < nt; i++) {
            FUZZ_CHECK(toks[i] >= 0 && toks[i] < info.n_vocab, "token %d out of range", toks[i]);
            (void)kvlm_token_to_piece(m, toks[i], piece, (int32_t)sizeof piece, true);
        }
    }
    char tmpl[512];
    kvlm_chat_message msg = {"user", "hi"};
    (void)kvlm_chat_apply(m, NULL, &msg, 1, true, tmpl, (int32_t)sizeof tmpl);

    if (info.n_params <= CAP_PARAMS && info.n_vocab <= CAP_VOCAB && info.n_layer <= CAP_LAYERS) {
        kvlm_session_params sp = kvlm_session_default_params();
        sp.n_ctx = 16;
        sp.n_threads = 1;
        sp.cache_params.page_tokens = 16;
        sp.cache_params.initial_tokens = 16;
        sp.cache_params.max_tokens = 64;
        kvlm_session *s = NULL;
        if (kvlm_session_new(m, &sp, &s, &err) == KVLM_OK) {
            float *logits = malloc((size_t)info.n_vocab * 2 * sizeof *logits);
            if (logits) {
                const kvlm_token bos = kvlm_token_bos(m);
                kvlm_token in[3] = {bos >= 0 && bos < info.n_vocab ? bos : 0, 1 % info.n_vocab, 2 % info.n_vocab};
                /* two tokens as one batch (all rows), then one decode step */
                if (kvlm_eval(s, in, 2, 0, logits, true, &err) == KVLM_OK)
                    (void)kvlm_eval(s, in, 3, 2, logits, false, &err);
                free(logits);
            }
            kvlm_session_free(s);
        }
    }
    kvlm_model_free(m);
    return 0;
}
