/* kvlm quantize against llama-quantize: its file types by name and number, its per-tensor mixes
 * and flags, byte for byte. The goldens are the sha256 of the files llama-quantize (llama.cpp
 * c392e5094, built in the reference folder) wrote for the same input, type and flags; kvlm's output
 * must be the same file. The synth inputs are made here by kvlm synth and checked against the hash
 * of the file llama-quantize was given. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_util.h"

#include "core/dtype.h"
#include "gguf/gguf.h"
#include "kvlm.h"

#define KVLM KVLM_BIN_DIR "/kvlm"
#define MODELS KVLM_MODELS_DIR

static char g_dir[64];
static char g_out[1 << 16];

#define run(...) run_into(g_out, sizeof g_out, __VA_ARGS__)

static void sha256(const char *path, char out[65]) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "sha256sum '%s'", path);
    FILE *fp = popen(cmd, "r");
    assert_non_null(fp);
    out[0] = '\0';
    if (fscanf(fp, "%64s", out) != 1) out[0] = '\0';
    pclose(fp);
    assert_int_equal(strlen(out), 64);
}

/* The synth inputs (llama-quantize was given exactly these files). */
static const struct {
    const char *name, *args, *sha;
} k_inputs[] = {
    {"qa.gguf", "--arch llama --dim 256 --layers 8 --heads 4 --kv-heads 1 --ff 256 --vocab 512 --type f32 --untied",
     "52ceb793a63996359ec1e894e7ab630545d81bbf7087e6e8cdcdcf6c21282fa0"},
    {"qb.gguf", "--arch llama --dim 256 --layers 16 --heads 4 --ff 256 --vocab 512 --type f32 --tied",
     "613d69b91dfe0654031a6575a197001a612d4452989e053c23531a64138a86f1"},
};

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/kvlm-test-quantize-XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    for (size_t i = 0; i < sizeof k_inputs / sizeof k_inputs[0]; i++) {
        if (run("%s synth %s/%s %s", KVLM, g_dir, k_inputs[i].name, k_inputs[i].args) != 0) {
            fprintf(stderr, "synth failed: %s\n", g_out);
            return -1;
        }
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void input_path(const char *name, char *buf, size_t cap) {
    if (name[0] == 'q') snprintf(buf, cap, "%s/%s", g_dir, name);
    else snprintf(buf, cap, "%s/llama/%s", MODELS, name);
}

/* The synth inputs are the files llama-quantize saw (else every golden below would be moot). */
static void test_inputs(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof k_inputs / sizeof k_inputs[0]; i++) {
        char p[256], h[65];
        input_path(k_inputs[i].name, p, sizeof p);
        sha256(p, h);
        if (strcmp(h, k_inputs[i].sha) != 0)
            fail_msg("kvlm synth %s no longer makes the file the goldens were made from (%s): regenerate them", k_inputs[i].args, h);
    }
}

/* input, flags, type, sha256 of llama-quantize's output (`llama-quantize FLAGS IN OUT TYPE 1`) */
static const struct {
    const char *in, *flags, *type, *sha;
} k_gold[] = {
    {"qa.gguf", "", "Q4_0", "297f866521c9ca4a7631594599b3fbeb9bf8c7858c22de5ef5dbd8bf9b55e632"},
    {"qa.gguf", "", "Q4_1", "71383bb8a33740d29240a32f1c24f066023c3f569db7b839dc44ec320293ad50"},
    {"qa.gguf", "", "Q5_0", "b9f5ea252bd575e9819e08f7713de2cfa1a2ddfb48e77b52d1e7af77589fd998"},
    {"qa.gguf", "", "Q5_1", "dffaa2fe600b95a61dfda446111d4c976e62654cf12a7e5d1a0a4d3d4b7ce195"},
    {"qa.gguf", "", "Q8_0", "f3f8cce694578bc61bd15b69014a56908b5b56129f08a98d1f62c185eb7c50c9"},
    {"qa.gguf", "", "F16", "273a70fd7928271a51d921f4798aef56791114d999fad95d3c74c8b7a19fd0b9"},
    {"qa.gguf", "", "BF16", "30523340d3d207c917c3a820c57b68e2126330536dc32207af621f40020ca55f"},
    {"qa.gguf", "", "F32", "5697301e209c49f17b83b58ccd343e97e78411c5804be2f04d8b8e25d5fa8fb5"},
    {"qa.gguf", "", "COPY", "5697301e209c49f17b83b58ccd343e97e78411c5804be2f04d8b8e25d5fa8fb5"},
    {"qa.gguf", "", "Q2_K", "c57ea2fca7ad504734dfd257676625bcb34001509a269643198b8db5cd649c94"},
    {"qa.gguf", "", "Q3_K_S", "7112e0c99719173da8cf4813b9066d35fc79c0631c3f065fdb4d5b7e1eb29cf0"},
    {"qa.gguf", "", "Q3_K_M", "c09ab5559c5c907a2cc48f078492586b8e0b205e2e09b74fa1dab10189594d78"},
    {"qa.gguf", "", "Q3_K_L", "e8485689ea598530edf8bc63b19f6126a479ef3bc34c2d4f3c2b3fbe4f14f69e"},
    {"qa.gguf", "", "Q4_K_S", "bbe33be6120caf29bdec91c53171e41c390e324d73541f7cf6feb3930b552fb0"},
    {"qa.gguf", "", "Q4_K_M", "db95165009a28601094a47f3df4e934928d86d1daf7a77b2e3d2f88755574189"},
    {"qa.gguf", "", "Q5_K_S", "47df74572f066d07e3431314115a7ba5314c9214ad9f2418d14ca735d64c3d43"},
    {"qa.gguf", "", "Q5_K_M", "44807e16641d0e11e1f2b239d46b20b8c5bb25dd903d68e944a233b973b618d1"},
    {"qa.gguf", "", "Q6_K", "f676f7597839458a8d000f6dc7a4d42404deaade61a8e31e3bab077f4700f9d1"},
    {"qa.gguf", "", "TQ1_0", "9a2e9fecffc5d701a9e6db242a0d4c0b70a9783fbd53da6df952a500f7d6e6a0"},
    {"qa.gguf", "", "TQ2_0", "74a1107edf5abe425b2b93989563d966a7bf7f8b3fb48e918ebd61149da21502"},
    {"qb.gguf", "", "Q2_K", "fcf0af503a057da4e3a53cbd906979085570056894f202683c2cb703158c31f7"},
    {"qb.gguf", "", "Q3_K_M", "58141c29fcafc2d2a9f1dd94d8c7d02d97b7a6577902e721d481e920503401f9"},
    {"qb.gguf", "", "Q3_K_L", "ad7d1d2b04b3b90e4a3a7642b3241021af1ecd81d2a90c184f76e6b4cf78c4c8"},
    {"qb.gguf", "", "Q4_K_S", "1548084ad6ca7dfa71ccca02fade46f8a8bbcd42f8c7fb7f5edeecc703dd8080"},
    {"qb.gguf", "", "Q4_K_M", "d9163c67dd41a38f859eac7499cab5497815b781c7c6f2b3cea6d444e6da2576"},
    {"qb.gguf", "", "Q5_K_M", "937e8c79d5b902fb1282343680cc6eede284c2813ebd706ace7890fe3b3512c8"},
    {"synth15M-f16.gguf", "", "Q4_K_M", "5bae16b373676af73c12a9c0b1e6ad6892b0cfc68811815482cb8be39279532b"},
    {"synth15M-f16.gguf", "", "Q8_0", "2588bf293af8dcecad9f0a5e4ac4d2028e7b848492ccd5d44ffa27371e0a8342"},
    {"synth15M-f16.gguf", "", "TQ2_0", "e2a950e0e0c0b87546082673348e0cfa82cf3a6f154a0689466fee9fa54b1033"},
    {"aidreams260K-f32.gguf", "", "Q4_K_M", "55b33e4993c7db08c9a9b586d2d12f0b09f3f0c810920d8866ddb2f32461f971"},
    {"aidreams260K-f32.gguf", "", "Q6_K", "1cde087fcfd78d8a161f1a15f1cad77e79b254d55f2c040273d828ebc43a71e7"},
    {"aidreams260K-f32.gguf", "", "COPY", "c33871af952c44ca956837e51988da538cf610fa4365c07ee4a5ac2b4eb32115"},
    {"qa.gguf", "--pure", "Q4_K_M", "f34a889d79f958c7c71f01201fcbc744b06d724153abf89026209d078fdec954"},
    {"qa.gguf", "--leave-output-tensor", "Q4_K_M", "b0794e52f719b930f61d2fe8704280618334a87bcb3ed6ad4af4b823ca9d6966"},
    {"qa.gguf", "--output-tensor-type q8_0 --token-embedding-type q4_0", "Q3_K_L",
     "3a9d100dad1b3d49a50bc25bb3d77c7d2b503ee6746e86d7e9310bba8324f4ae"},
    {"qb.gguf", "--output-tensor-type q5_k", "Q4_K_S", "4f401cfba6ba9096581ecd45a0e7031e3b9f4beba0c375bb7e8397e5c1b7cc5b"},
    {"synth15M-q8_0.gguf", "--allow-requantize", "Q4_K_M", "dae911942d79001e8437ceaf4b86e54adfad85cc78ab12d921d5f1d0708dde7c"},
};

static void test_byte_identical(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof k_gold / sizeof k_gold[0]; i++) {
        char in[256], out[256], h[65];
        input_path(k_gold[i].in, in, sizeof in);
        snprintf(out, sizeof out, "%s/out.gguf", g_dir);
        int rc = run("%s quantize %s %s %s %s", KVLM, k_gold[i].flags, in, out, k_gold[i].type);
        if (rc != 0) fail_msg("%s %s %s: exit %d: %s", k_gold[i].in, k_gold[i].flags, k_gold[i].type, rc, g_out);
        sha256(out, h);
        if (strcmp(h, k_gold[i].sha) != 0)
            fail_msg("%s %s %s: not llama-quantize's file (%s)", k_gold[i].in, k_gold[i].flags, k_gold[i].type, h);
        unlink(out);
    }
}

static uint32_t count_type(const gguf_ctx *g, const char *part, uint32_t type) {
    uint32_t n = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (strstr(g->tensors[i].name, part) && g->tensors[i].type == type) n++;
    return n;
}

/* The names and numbers of llama-quantize, in any case, make the same file; general.file_type is the
 * file type's number (COPY: the input's, or llama.cpp's guess with its 1024 bit); the mix of
 * synth15M's Q4_K_M is the one ../shared/models/CONVERTED.md describes; NTHREADS does not matter. */
static void test_names_numbers_file_type(void **state) {
    (void)state;
    char in[256], a[256], b[256], ha[65], hb[65];
    snprintf(in, sizeof in, "%s/llama/synth15M-f16.gguf", MODELS);
    snprintf(a, sizeof a, "%s/a.gguf", g_dir);
    snprintf(b, sizeof b, "%s/b.gguf", g_dir);
    assert_int_equal(run("%s quantize %s %s Q4_K_M", KVLM, in, a), 0);
    assert_non_null(strstr(g_out, "(Q4_K_M)"));
    sha256(a, ha);
    const char *same[] = {"15", "q4_k_m", "Q4_K", "q4_k"};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(run("%s quantize %s %s %s %d", KVLM, in, b, same[i], 1 + (int)(i % 2)), 0);
        sha256(b, hb);
        if (strcmp(ha, hb) != 0) fail_msg("%s is not Q4_K_M's file", same[i]);
    }
    gguf_ctx *g;
    kvlm_error err;
    uint32_t ft;
    assert_int_equal(kv_gguf_open(a, &g, &err), KVLM_OK);
    assert_true(kv_gguf_get_u32(g, "general.file_type", &ft));
    assert_int_equal(ft, 15);
    /* 288 columns do not fit Q4_K's 256: Q5_0 (q, k, o, gate, up, 4 attn_v) + Q8_0 (2 attn_v, the tied
       embedding) + ffn_down (768 columns) Q4_K x4 / Q6_K x2 */
    assert_int_equal(count_type(g, "attn_v.weight", KV_Q5_0), 4);
    assert_int_equal(count_type(g, "attn_v.weight", KV_Q8_0), 2);
    assert_int_equal(count_type(g, "ffn_down.weight", KV_Q4_K), 4);
    assert_int_equal(count_type(g, "ffn_down.weight", KV_Q6_K), 2);
    assert_int_equal(count_type(g, "attn_q.weight", KV_Q5_0), 6);
    assert_int_equal(count_type(g, "token_embd.weight", KV_Q8_0), 1);
    kv_gguf_close(g);
    /* COPY of a file without general.file_type: llama.cpp's guess (all F32) marked as guessed */
    snprintf(in, sizeof in, "%s/llama/aidreams260K-f32.gguf", MODELS);
    assert_int_equal(run("%s quantize %s %s COPY", KVLM, in, a), 0);
    assert_int_equal(kv_gguf_open(a, &g, &err), KVLM_OK);
    assert_true(kv_gguf_get_u32(g, "general.file_type", &ft));
    assert_int_equal(ft, 1024);
    kv_gguf_close(g);
    unlink(a);
    unlink(b);
}

/* Where llama-quantize takes IQ4_NL (Q2_K/Q3_K rows that fit 32 but not 256), kvlm, which has no
 * IQ4_NL, takes Q4_0 (the same size): llama-quantize's Q3_K_M of synth15M has 24 IQ4_NL tensors. */
static void test_iq4_nl_substitute(void **state) {
    (void)state;
    char in[256], out[256];
    snprintf(in, sizeof in, "%s/llama/synth15M-f16.gguf", MODELS);
    snprintf(out, sizeof out, "%s/q3.gguf", g_dir);
    assert_int_equal(run("%s quantize %s %s Q3_K_M", KVLM, in, out), 0);
    gguf_ctx *g;
    kvlm_error err;
    assert_int_equal(kv_gguf_open(out, &g, &err), KVLM_OK);
    assert_int_equal(count_type(g, "blk.", KV_Q4_0), 24);
    kv_gguf_close(g);
    unlink(out);
}

/* IN TYPE writes ggml-model-TYPE.gguf beside IN, as llama-quantize; the file types kvlm cannot make
 * are refused with the reason; a quantized input needs --allow-requantize. */
static void test_paths_and_refusals(void **state) {
    (void)state;
    char in[256], out[256], h[65];
    snprintf(in, sizeof in, "%s/qa.gguf", g_dir);
    assert_int_equal(run("%s quantize %s Q8_0", KVLM, in), 0);
    snprintf(out, sizeof out, "%s/ggml-model-Q8_0.gguf", g_dir);
    sha256(out, h);
    assert_string_equal(h, "f3f8cce694578bc61bd15b69014a56908b5b56129f08a98d1f62c185eb7c50c9");
    unlink(out);
    const char *refused[] = {"IQ2_XXS", "19", "iq4_nl", "Q2_K_S", "IQ3_M"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        assert_int_equal(run("%s quantize %s %s/x.gguf %s", KVLM, in, g_dir, refused[i]), 2);
        if (!strstr(g_out, "error: cannot make")) fail_msg("%s: %s", refused[i], g_out);
    }
    assert_int_equal(run("%s quantize %s %s/x.gguf Q7_K", KVLM, in, g_dir), 2);
    assert_non_null(strstr(g_out, "unknown type 'Q7_K'"));
    assert_int_equal(run("%s quantize %s %s/x.gguf Q4_K_M 0", KVLM, in, g_dir), 2);
    assert_non_null(strstr(g_out, "NTHREADS"));
    assert_int_equal(run("%s quantize %s/llama/synth15M-q8_0.gguf %s/x.gguf Q4_K_M", KVLM, MODELS, g_dir), 1);
    assert_non_null(strstr(g_out, "--allow-requantize"));
    /* nothing was written by any of them */
    struct stat st;
    snprintf(out, sizeof out, "%s/x.gguf", g_dir);
    assert_int_not_equal(stat(out, &st), 0);
}

/* A progress line on a terminal (script(1) gives the command one), none when stderr is a pipe. */
static void test_progress(void **state) {
    (void)state;
    char in[256];
    snprintf(in, sizeof in, "%s/qb.gguf", g_dir);
    assert_int_equal(run("%s quantize %s %s/p.gguf Q4_K_M", KVLM, in, g_dir), 0);
    assert_null(strstr(g_out, "left"));
    assert_int_equal(run("script -qec \"%s quantize %s %s/p.gguf Q4_K_M\" /dev/null", KVLM, in, g_dir), 0);
    assert_non_null(strstr(g_out, "\r\033[Kquantize: "));
    assert_non_null(strstr(g_out, "left  blk."));
    assert_non_null(strstr(g_out, "f32 -> q4_K"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inputs),
        cmocka_unit_test(test_byte_identical),
        cmocka_unit_test(test_names_numbers_file_type),
        cmocka_unit_test(test_iq4_nl_substitute),
        cmocka_unit_test(test_paths_and_refusals),
        cmocka_unit_test(test_progress),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
