/* Model loading: hyperparameters from metadata, tensor binding, and a clear
 * error for every missing or inconsistent piece. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "gguf_builder.h"
#include "kvlm.h"

/* What to break in the tiny model. */
typedef struct breakage {
    const char *skip_key;     /* metadata key left out */
    const char *skip_tensor;  /* tensor left out */
    const char *arch;         /* architecture name */
    uint32_t n_head, n_head_kv;
    uint64_t q_rows;          /* rows of attn_q */
    uint32_t wq_type;
    uint32_t block_count;     /* 0: 1 (the layers the file holds) */
    const char *extra_tensor; /* an f32 tensor added to the file */
    uint64_t extra_n;         /* its length (0: E) */
    float extra_value;        /* its values (0: 1.0) */
    const char *str_key, *str_val;  /* an extra string key */
    const char *u32_key;            /* an extra u32 key */
    uint32_t u32_val;
    const char *f32_key;            /* an extra f32 key */
    float f32_val;
} breakage;

#define E 32
#define FF 64
#define NV 8

static breakage defaults(void) {
    breakage b = {NULL, NULL, "llama", 4, 2, E, 0, 0, NULL, 0, 0.0f, NULL, NULL, NULL, 0, NULL, 0.0f};
    return b;
}

/* Writes a 1-layer llama model with an 8-token SPM vocab to a temp file. */
static void write_model(const breakage *br, char *path) {
    gb b = {0};
    typedef struct { const char *name; uint64_t ne0, ne1; uint32_t type; } tdesc;
    const uint64_t kv_rows = (uint64_t)E / br->n_head * br->n_head_kv;
    tdesc ts[] = {
        {"token_embd.weight", E, NV, 0},      {"output_norm.weight", E, 1, 0},
        {"blk.0.attn_norm.weight", E, 1, 0},  {"blk.0.attn_q.weight", E, br->q_rows, br->wq_type},
        {"blk.0.attn_k.weight", E, kv_rows, 0}, {"blk.0.attn_v.weight", E, kv_rows, 0},
        {"blk.0.attn_output.weight", E, E, 0}, {"blk.0.ffn_norm.weight", E, 1, 0},
        {"blk.0.ffn_gate.weight", E, FF, 0},  {"blk.0.ffn_up.weight", E, FF, 0},
        {"blk.0.ffn_down.weight", FF, E, 0},
        {br->extra_tensor ? br->extra_tensor : "", br->extra_n ? br->extra_n : E, 1, 0},
    };
    const int n_t = (int)(sizeof ts / sizeof ts[0]) - (br->extra_tensor ? 0 : 1);
    int n_tensors = 0;
    for (int i = 0; i < n_t; i++) n_tensors += !(br->skip_tensor && strcmp(br->skip_tensor, ts[i].name) == 0);
    const char *keys[] = {"llama.context_length", "llama.embedding_length", "llama.block_count",
                          "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
                          "llama.attention.layer_norm_rms_epsilon"};
    const uint32_t vals[] = {64, E, br->block_count ? br->block_count : 1, FF, br->n_head, br->n_head_kv, 0};
    int n_kv = 5 + !!br->str_key + !!br->u32_key + !!br->f32_key; /* arch, tokenizer model, tokens, scores, types */
    for (size_t i = 0; i < 7; i++) n_kv += !(br->skip_key && strcmp(br->skip_key, keys[i]) == 0);
    gb_header(&b, 3, (uint64_t)n_tensors, (uint64_t)n_kv);
    gb_kv_str(&b, "general.architecture", br->arch);
    for (size_t i = 0; i < 7; i++) {
        if (br->skip_key && strcmp(br->skip_key, keys[i]) == 0) continue;
        char k[128];
        snprintf(k, sizeof k, "%s%s", br->arch, strchr(keys[i], '.'));
        if (i == 6) gb_kv_f32(&b, k, 1e-5f);
        else gb_kv_u32(&b, k, vals[i]);
    }
    if (br->str_key) gb_kv_str(&b, br->str_key, br->str_val);
    if (br->u32_key) gb_kv_u32(&b, br->u32_key, br->u32_val);
    if (br->f32_key) gb_kv_f32(&b, br->f32_key, br->f32_val);
    gb_kv_str(&b, "tokenizer.ggml.model", "llama");
    const char *toks[NV] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81", "a", "b", ("\xe2\x96\x81" "a"), "ab"};
    gb_key(&b, "tokenizer.ggml.tokens", 9); gb_u32(&b, 8); gb_u64(&b, NV);
    for (int i = 0; i < NV; i++) gb_str(&b, toks[i]);
    gb_key(&b, "tokenizer.ggml.scores", 9); gb_u32(&b, 6); gb_u64(&b, NV);
    for (int i = 0; i < NV; i++) gb_f32(&b, (float)-i);
    gb_key(&b, "tokenizer.ggml.token_type", 9); gb_u32(&b, 5); gb_u64(&b, NV);
    for (int i = 0; i < NV; i++) gb_u32(&b, i == 0 ? 2 : (i < 3 ? 3 : 1));
    uint64_t off = 0, offs[16];
    for (int i = 0; i < n_t; i++) {
        if (br->skip_tensor && strcmp(br->skip_tensor, ts[i].name) == 0) continue;
        uint64_t ne[2] = {ts[i].ne0, ts[i].ne1};
        uint64_t bytes = ts[i].type == 8 ? ts[i].ne0 / 32 * 34 * ts[i].ne1 : ts[i].ne0 * ts[i].ne1 * 4;
        offs[i] = off;
        gb_tensor(&b, ts[i].name, ts[i].ne1 == 1 ? 1 : 2, ne, ts[i].type, off);
        off += (bytes + 31) / 32 * 32;
    }
    gb_align(&b, 32);
    size_t data0 = b.n;
    for (uint64_t i = 0; i < off; i++) gb_u8(&b, 0);
    /* small deterministic weights: norms 1, everything else a pattern */
    for (int i = 0; i < n_t; i++) {
        if (br->skip_tensor && strcmp(br->skip_tensor, ts[i].name) == 0) continue;
        if (ts[i].type != 0) continue;
        float *w = (float *)(b.p + data0 + offs[i]);
        for (uint64_t j = 0; j < ts[i].ne0 * ts[i].ne1; j++)
            w[j] = ts[i].ne1 == 1 ? (br->extra_tensor && strcmp(ts[i].name, br->extra_tensor) == 0 && br->extra_value != 0.0f
                                          ? br->extra_value
                                          : 1.0f)
                                  : 0.05f * (float)((int)((j * 7 + (uint64_t)i * 13) % 17) - 8);
    }
    strcpy(path, "/tmp/kvlm-test-model-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, b.p, b.n), (ssize_t)b.n);
    close(fd);
    free(b.p);
}

static void expect_load(const breakage *br, kvlm_status code, const char *needle) {
    char path[64];
    write_model(br, path);
    kvlm_model *m = NULL;
    kvlm_error err = {0};
    kvlm_status st = kvlm_model_load(path, NULL, &m, &err);
    unlink(path);
    if (st != code) fail_msg("expected %d, got %d: %s", code, st, err.msg);
    if (code != KVLM_OK) {
        assert_null(m);
        if (!strstr(err.msg, needle)) fail_msg("message '%s' lacks '%s'", err.msg, needle);
    } else {
        kvlm_model_free(m);
    }
}

static void test_valid_tiny_model(void **state) {
    (void)state;
    breakage br = defaults();
    char path[64];
    write_model(&br, path);
    kvlm_model *m = NULL;
    kvlm_error err;
    assert_int_equal(kvlm_model_load(path, NULL, &m, &err), KVLM_OK);
    unlink(path);
    kvlm_model_info mi;
    kvlm_model_get_info(m, &mi);
    assert_string_equal(mi.arch, "llama");
    assert_int_equal(mi.n_vocab, NV);
    assert_int_equal(mi.n_head, 4);
    assert_int_equal(mi.n_head_kv, 2);
    assert_int_equal(mi.n_rot, E / 4); /* defaults to the head size */
    assert_true(mi.rope_freq_base == 10000.0f);
    assert_true(mi.tied_output);
    kvlm_session *s;
    assert_int_equal(kvlm_session_new(m, NULL, &s, &err), KVLM_OK);
    kvlm_token toks[4] = {1, 4, 5, 7};
    float logits[NV];
    assert_int_equal(kvlm_eval(s, toks, 4, 0, logits, false, &err), KVLM_OK);
    for (int i = 0; i < NV; i++) assert_true(isfinite(logits[i]));
    /* n_past beyond what the session holds and bad tokens are errors that leave the session as it was */
    kvlm_token more[6] = {1, 4, 5, 7, 4, 4};
    assert_int_equal(kvlm_eval(s, more, 6, 5, logits, false, &err), KVLM_ERR_INVALID_ARG);
    kvlm_token bad[5] = {1, 4, 5, 7, NV};
    assert_int_equal(kvlm_eval(s, bad, 5, 4, logits, false, &err), KVLM_ERR_INVALID_ARG);
    kvlm_token neg[5] = {1, 4, 5, 7, -3};
    assert_int_equal(kvlm_eval(s, neg, 5, 4, logits, false, &err), KVLM_ERR_INVALID_ARG);
    assert_int_equal(kvlm_session_n_past(s), 4);
    kvlm_session_free(s);
    kvlm_model_free(m);
}

static void test_missing_and_inconsistent(void **state) {
    (void)state;
    breakage br = defaults();
    br.skip_key = "llama.block_count";
    expect_load(&br, KVLM_ERR_FORMAT, "llama.block_count");
    br = defaults();
    br.skip_key = "llama.attention.layer_norm_rms_epsilon";
    expect_load(&br, KVLM_ERR_FORMAT, "layer_norm_rms_epsilon");
    br = defaults();
    br.skip_key = "llama.embedding_length";
    expect_load(&br, KVLM_ERR_FORMAT, "embedding_length");
    br = defaults();
    br.n_head = 3; /* 32 is not a multiple of 3 */
    br.n_head_kv = 3;
    expect_load(&br, KVLM_ERR_FORMAT, "multiple of head_count");
    br = defaults();
    br.n_head_kv = 3; /* 4 heads, 3 kv heads */
    expect_load(&br, KVLM_ERR_FORMAT, "head_count_kv");
    br = defaults();
    br.skip_tensor = "blk.0.ffn_up.weight";
    expect_load(&br, KVLM_ERR_FORMAT, "missing tensor 'blk.0.ffn_up.weight'");
    br = defaults();
    br.q_rows = 16;
    expect_load(&br, KVLM_ERR_FORMAT, "blk.0.attn_q.weight' has shape");
    br = defaults();
    br.block_count = 2; /* a second layer the file does not hold */
    expect_load(&br, KVLM_ERR_FORMAT, "block_count 2 needs at least 18 tensors");
    br = defaults();
    br.block_count = 1u << 30; /* found by fuzz_gguf: layers were allocated for it before any check */
    expect_load(&br, KVLM_ERR_FORMAT, "block_count 1073741824 needs");
    br = defaults();
    br.arch = "mamba";
    expect_load(&br, KVLM_ERR_UNSUPPORTED, "unsupported architecture 'mamba'");
    br = defaults();
    expect_load(&br, KVLM_OK, "");
}

/* No silent misreads: whatever the loader would not honour is refused, naming it. */
static void test_refused_not_ignored(void **state) {
    (void)state;
    breakage br = defaults();
    /* a tensor the architecture does not read */
    br.extra_tensor = "blk.0.attn_output.bias";
    expect_load(&br, KVLM_ERR_UNSUPPORTED, "tensor 'blk.0.attn_output.bias' is not part of the llama architecture");
    br = defaults();
    br.extra_tensor = "blk.0.attn_sub_norm.weight"; /* a bitnet tensor in a llama file */
    expect_load(&br, KVLM_ERR_UNSUPPORTED, "'blk.0.attn_sub_norm.weight' is not part of the llama architecture");
    br = defaults();
    br.extra_tensor = "blk.0.attn_q_norm.weight"; /* a qwen3 tensor in a llama file */
    expect_load(&br, KVLM_ERR_UNSUPPORTED, "'blk.0.attn_q_norm.weight' is not part of the llama architecture");
    br = defaults();
    br.arch = "qwen3"; /* the same layers, without the q/k norms qwen3 requires */
    expect_load(&br, KVLM_ERR_FORMAT, "missing tensor 'blk.0.attn_q_norm.weight'");
    br = defaults();
    br.extra_tensor = "rope_freqs.weight"; /* llama reads it: n_rot / 2 = 4 positive factors */
    br.extra_n = E / 4 / 2;
    expect_load(&br, KVLM_OK, "");
    br.extra_n = E / 4;
    expect_load(&br, KVLM_ERR_FORMAT, "tensor 'rope_freqs.weight' has shape [8, 1], expected [4, 1]");
    br.extra_n = E / 4 / 2;
    br.extra_value = -2.0f;
    expect_load(&br, KVLM_ERR_FORMAT, "'rope_freqs.weight': factor 0 is -2");
    /* architectures and RoPE scaling types kvlm does not know */
    br = defaults();
    br.arch = "falcon";
    expect_load(&br, KVLM_ERR_UNSUPPORTED, "unsupported architecture 'falcon'");
    br = defaults();
    br.arch = "gemma3"; /* no attention.sliding_window (checked before its tensors) */
    expect_load(&br, KVLM_ERR_FORMAT, "missing metadata key 'gemma3.attention.sliding_window'");
    br = defaults();
    br.str_key = "llama.rope.scaling.type";
    br.str_val = "dynamic-ntk";
    expect_load(&br, KVLM_ERR_UNSUPPORTED, "unknown rope scaling type 'dynamic-ntk'");
    br.str_val = "longrope";
    expect_load(&br, KVLM_ERR_UNSUPPORTED, "rope scaling type 'longrope' is not supported");
    br.str_val = "yarn";
    expect_load(&br, KVLM_OK, "");
    /* values out of range */
    br = defaults();
    br.f32_key = "llama.rope.scaling.factor";
    br.f32_val = -4.0f;
    expect_load(&br, KVLM_ERR_FORMAT, "llama.rope.scaling.factor' = -4 is out of range");
    br.f32_key = "llama.rope.freq_base";
    br.f32_val = 0.5f;
    expect_load(&br, KVLM_ERR_FORMAT, "rope.freq_base 0.5 must be greater than 1");
    br.f32_val = 1.0f / 0.0f;
    expect_load(&br, KVLM_ERR_FORMAT, "'llama.rope.freq_base' is not finite");
    br = defaults();
    br.skip_key = "llama.attention.layer_norm_rms_epsilon";
    br.f32_key = "llama.attention.layer_norm_rms_epsilon";
    br.f32_val = 2.0f;
    expect_load(&br, KVLM_ERR_FORMAT, "layer_norm_rms_epsilon' = 2 is out of range");
    br = defaults();
    br.u32_key = "llama.rope.scaling.original_context_length";
    br.u32_val = 0;
    expect_load(&br, KVLM_ERR_FORMAT, "original_context_length must be positive");
    /* mixture of experts */
    br = defaults();
    br.u32_key = "llama.expert_count";
    br.u32_val = 8;
    expect_load(&br, KVLM_ERR_UNSUPPORTED, "llama.expert_count is 8: mixture-of-experts models are not supported");
    br.u32_val = 0;
    expect_load(&br, KVLM_OK, "");
    /* head sizes */
    br = defaults();
    br.u32_key = "llama.attention.value_length";
    br.u32_val = 16;
    expect_load(&br, KVLM_ERR_UNSUPPORTED, "key_length 8 differs from value_length 16");
    br.u32_key = "llama.attention.key_length";
    br.u32_val = 16; /* value_length defaults to n_embd / n_head = 8, as in llama.cpp */
    expect_load(&br, KVLM_ERR_UNSUPPORTED, "key_length 16 differs from value_length 8");
}

/* A vocabulary-only GGUF loads with vocab_only and tokenizes, but has no sessions. */
static void test_vocab_only(void **state) {
    (void)state;
    kvlm_model_params mp = kvlm_model_default_params();
    kvlm_model *m = NULL;
    kvlm_error err;
    const char *path = KVLM_MODELS_DIR "/vocab/ggml-vocab-llama-spm.gguf";
    assert_int_not_equal(kvlm_model_load(path, &mp, &m, &err), KVLM_OK); /* no weights */
    assert_null(m);
    mp.vocab_only = true;
    assert_int_equal(kvlm_model_load(path, &mp, &m, &err), KVLM_OK);
    assert_int_equal(kvlm_n_vocab(m), 32000);
    kvlm_token t[8];
    assert_int_equal(kvlm_tokenize(m, "Hello", 5, t, 8, true, false), 2);
    assert_int_equal(t[0], 1);
    assert_int_equal(t[1], 15043); /* "\u2581Hello" */
    kvlm_session *s = NULL;
    assert_int_equal(kvlm_session_new(m, NULL, &s, &err), KVLM_ERR_INVALID_ARG);
    assert_non_null(strstr(err.msg, "vocab-only"));
    kvlm_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_tiny_model),
        cmocka_unit_test(test_missing_and_inconsistent),
        cmocka_unit_test(test_refused_not_ignored),
        cmocka_unit_test(test_vocab_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
