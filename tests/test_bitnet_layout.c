/* BitNet b1.58 2B4T as published: the layout of microsoft/BitNet's official
 * ggml-model-i2_s.gguf (docs/PARITY.md, "BitNet b1.58 2B4T: the published
 * layout", says where each item comes from) written down here as a list of
 * metadata keys and of tensors (name, type, shape) for given hyperparameters.
 * `kvlm synth --arch bitnet-b1.58 --type i2_s` must write exactly that list
 * (tokenizer keys aside: the real file carries the Llama 3 BPE vocabulary),
 * and so must the shared synthetic file, which an independent writer made
 * from the same description; kvlm loads both as the architecture it is. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/dtype.h"
#include "gguf/gguf.h"
#include "kvlm.h"

/* The hyperparameters the list is made for (2B4T: 2560, 30, 20, 5, 6912, 128256, 4096). */
typedef struct shape {
    uint32_t embd, layers, heads, heads_kv, ff, vocab, ctx;
} shape;

typedef struct key_spec {
    const char *key; /* after "bitnet-b1.58." unless it starts with "general." */
    gguf_vtype type;
} key_spec;

/* What the converter (BitnetModel -> MODEL_ARCH.BITNET_B158) writes besides the tokenizer. */
static const key_spec k_keys[] = {
    {"general.architecture", GGUF_STRING},
    {"general.name", GGUF_STRING},
    {"general.file_type", GGUF_UINT32}, /* 40: LLAMA_FTYPE_MOSTLY_I2_S in the fork */
    {"vocab_size", GGUF_UINT32},
    {"context_length", GGUF_UINT32},
    {"embedding_length", GGUF_UINT32},
    {"block_count", GGUF_UINT32},
    {"feed_forward_length", GGUF_UINT32},
    {"attention.head_count", GGUF_UINT32},
    {"attention.head_count_kv", GGUF_UINT32},
    {"attention.layer_norm_rms_epsilon", GGUF_FLOAT32},
    {"rope.dimension_count", GGUF_UINT32},
    {"rope.freq_base", GGUF_FLOAT32},
};
enum { N_KEYS = sizeof k_keys / sizeof k_keys[0] };

typedef struct tensor_spec {
    char name[64];
    uint32_t type;
    uint64_t ne0, ne1; /* ne1 = 1: a vector */
} tensor_spec;

/* token_embd F16 (tied output: no output.weight), output_norm F32, and per layer 7 I2_S matrices
 * and 4 F32 norms (attn_sub_norm over the attention output, ffn_sub_norm over n_ff). */
static int documented_tensors(const shape *s, tensor_spec *out) {
    int n = 0;
    const uint64_t E = s->embd, KV = (uint64_t)s->embd / s->heads * s->heads_kv, F = s->ff;
#define ADD(ty, a, b, ...) (snprintf(out[n].name, sizeof out[n].name, __VA_ARGS__), out[n].type = (ty), \
                            out[n].ne0 = (a), out[n].ne1 = (b), n++)
    ADD(KV_F16, E, s->vocab, "token_embd.weight");
    ADD(KV_F32, E, 1, "output_norm.weight");
    for (uint32_t l = 0; l < s->layers; l++) {
        ADD(KV_F32, E, 1, "blk.%u.attn_norm.weight", l);
        ADD(KV_I2_S, E, E, "blk.%u.attn_q.weight", l);
        ADD(KV_I2_S, E, KV, "blk.%u.attn_k.weight", l);
        ADD(KV_I2_S, E, KV, "blk.%u.attn_v.weight", l);
        ADD(KV_I2_S, E, E, "blk.%u.attn_output.weight", l);
        ADD(KV_F32, E, 1, "blk.%u.attn_sub_norm.weight", l);
        ADD(KV_F32, E, 1, "blk.%u.ffn_norm.weight", l);
        ADD(KV_I2_S, E, F, "blk.%u.ffn_gate.weight", l);
        ADD(KV_I2_S, E, F, "blk.%u.ffn_up.weight", l);
        ADD(KV_I2_S, F, E, "blk.%u.ffn_down.weight", l);
        ADD(KV_F32, F, 1, "blk.%u.ffn_sub_norm.weight", l);
    }
#undef ADD
    return n;
}

/* The file's keys (tokenizer.* aside) and tensors must be exactly the documented ones. */
static void check_layout(const char *path, const shape *s) {
    gguf_ctx *g = NULL;
    kvlm_error err;
    if (kv_gguf_open(path, &g, &err) != KVLM_OK) fail_msg("%s: %s", path, err.msg);
    gguf_str arch;
    assert_true(kv_gguf_get_str(g, "general.architecture", &arch));
    assert_true(kv_gguf_str_eq(arch, "bitnet-b1.58"));
    uint32_t ft = 0;
    assert_true(kv_gguf_get_u32(g, "general.file_type", &ft));
    assert_int_equal(ft, 40);
    const uint32_t want_u32[] = {s->vocab, s->ctx, s->embd, s->layers, s->ff, s->heads, s->heads_kv,
                                 s->embd / s->heads};
    const char *const u32_keys[] = {"vocab_size", "context_length", "embedding_length", "block_count",
                                    "feed_forward_length", "attention.head_count", "attention.head_count_kv",
                                    "rope.dimension_count"};
    for (size_t i = 0; i < sizeof u32_keys / sizeof u32_keys[0]; i++) {
        char k[96];
        uint32_t v = 0;
        snprintf(k, sizeof k, "bitnet-b1.58.%s", u32_keys[i]);
        if (!kv_gguf_get_u32(g, k, &v)) fail_msg("%s: no u32 '%s'", path, k);
        if (v != want_u32[i]) fail_msg("%s: %s = %u, expected %u", path, k, v, want_u32[i]);
    }
    float base = 0.0f;
    assert_true(kv_gguf_get_f32(g, "bitnet-b1.58.rope.freq_base", &base));
    assert_true(base == 500000.0f);
    /* every key of the file is documented, every documented key is in the file, with its type */
    int seen = 0;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const gguf_kv *kv = &g->kv[i];
        if (strncmp(kv->key, "tokenizer.", 10) == 0) continue;
        int found = -1;
        for (int j = 0; j < N_KEYS; j++) {
            char full[96];
            snprintf(full, sizeof full, "%s%s", strncmp(k_keys[j].key, "general.", 8) ? "bitnet-b1.58." : "",
                     k_keys[j].key);
            if (strcmp(full, kv->key) == 0) found = j;
        }
        if (found < 0) fail_msg("%s: key '%s' is not in the published layout", path, kv->key);
        if (kv->type != k_keys[found].type)
            fail_msg("%s: key '%s' has type %d, expected %d", path, kv->key, kv->type, k_keys[found].type);
        seen++;
    }
    if (seen != N_KEYS) fail_msg("%s: %d of the %d documented keys", path, seen, N_KEYS);
    /* the tensors */
    tensor_spec *want = calloc(2 + 11 * (size_t)s->layers, sizeof *want);
    assert_non_null(want);
    const int n = documented_tensors(s, want);
    if ((int)g->n_tensors != n) fail_msg("%s: %llu tensors, the layout has %d", path, (unsigned long long)g->n_tensors, n);
    for (int i = 0; i < n; i++) {
        const gguf_tensor *t = kv_gguf_find_tensor(g, want[i].name);
        if (!t) fail_msg("%s: no tensor '%s'", path, want[i].name);
        if (t->type != want[i].type)
            fail_msg("%s: '%s' is %s, expected %s", path, want[i].name, kv_dtype_name(t->type),
                     kv_dtype_name(want[i].type));
        const uint32_t dims = want[i].ne1 == 1 ? 1 : 2;
        if (t->n_dims != dims || t->ne[0] != want[i].ne0 || t->ne[1] != want[i].ne1)
            fail_msg("%s: '%s' has %u dims [%llu, %llu], expected %u [%llu, %llu]", path, want[i].name, t->n_dims,
                     (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], dims,
                     (unsigned long long)want[i].ne0, (unsigned long long)want[i].ne1);
    }
    free(want);
    kv_gguf_close(g);

    /* and kvlm runs it as the architecture it is: tied output, the head of 2B4T's shape */
    kvlm_model *m = NULL;
    if (kvlm_model_load(path, NULL, &m, &err) != KVLM_OK) fail_msg("%s: %s", path, err.msg);
    kvlm_model_info mi;
    kvlm_model_get_info(m, &mi);
    assert_string_equal(mi.arch, "bitnet-b1.58");
    assert_int_equal(mi.head_dim, (int)(s->embd / s->heads));
    assert_int_equal(mi.n_head_kv, (int)s->heads_kv);
    kvlm_model_free(m);
}

/* The shared file's shape (GQA 4:1 and head size 128, as 2B4T; 2 layers). */
static const shape k_small = {512, 2, 4, 1, 1408, 512, 512};

static void test_synth(void **state) {
    (void)state;
    char dir[] = "/tmp/kvlm-bitnet-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128], cmd[1024];
    snprintf(path, sizeof path, "%s/b158.gguf", dir);
    snprintf(cmd, sizeof cmd,
             "%s/kvlm synth %s --arch bitnet-b1.58 --dim %u --layers %u --heads %u --kv-heads %u --ff %u "
             "--vocab-from %s/llama/aidreams260K-f32.gguf --ctx %u --type i2_s --rope-base 500000 >/dev/null",
             KVLM_BIN_DIR, path, k_small.embd, k_small.layers, k_small.heads, k_small.heads_kv, k_small.ff,
             KVLM_MODELS_DIR, k_small.ctx);
    assert_int_equal(system(cmd), 0);
    check_layout(path, &k_small);
    unlink(path);
    rmdir(dir);
}

static void test_shared_file(void **state) {
    (void)state;
    check_layout(KVLM_MODELS_DIR "/bitnet/synth-bitnet-b158-v512-i2_s.gguf", &k_small);
}

/* The list itself at 2B4T's hyperparameters: 332 tensors, 210 I2_S, 121 F32, 1 F16. */
static void test_list_2b4t(void **state) {
    (void)state;
    const shape b2 = {2560, 30, 20, 5, 6912, 128256, 4096};
    tensor_spec *t = calloc(2 + 11 * 30, sizeof *t);
    assert_non_null(t);
    const int n = documented_tensors(&b2, t);
    int i2 = 0, f32 = 0, f16 = 0;
    for (int i = 0; i < n; i++) {
        i2 += t[i].type == KV_I2_S;
        f32 += t[i].type == KV_F32;
        f16 += t[i].type == KV_F16;
    }
    assert_int_equal(n, 332);
    assert_int_equal(i2, 210);
    assert_int_equal(f32, 121);
    assert_int_equal(f16, 1);
    free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_list_2b4t),
        cmocka_unit_test(test_synth),
        cmocka_unit_test(test_shared_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
