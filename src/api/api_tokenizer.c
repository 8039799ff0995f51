/* kvlm.h, section "tokenizer": the model's vocabulary (src/tokenizer/). */
#include "kvlm.h"
#include "model/model.h"
#include "tokenizer/vocab.h"

kvlm_token kvlm_token_bos(const kvlm_model *m) { return kv_vocab_bos(m->vocab); }
kvlm_token kvlm_token_eos(const kvlm_model *m) { return kv_vocab_eos(m->vocab); }
bool kvlm_token_is_eog(const kvlm_model *m, kvlm_token t) { return kv_vocab_is_eog(m->vocab, t); }
bool kvlm_add_bos(const kvlm_model *m) { return kv_vocab_add_bos(m->vocab); }

int32_t kvlm_tokenize(const kvlm_model *m, const char *text, size_t len, kvlm_token *out, int32_t n_max,
                      bool add_special, bool parse_special) {
    return kv_vocab_tokenize(m->vocab, text, len, out, n_max, add_special, parse_special);
}

int32_t kvlm_token_to_piece(const kvlm_model *m, kvlm_token t, char *buf, int32_t size, bool special) {
    return kv_vocab_token_to_piece(m->vocab, t, buf, size, special);
}
