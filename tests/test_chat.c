/* Chat templates (recognition and formatting) and BPE models end to end. */
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

static const kvlm_chat_message k_msgs[] = {
    {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Who are you?"}};

static void expect(const kvlm_model *m, const char *tmpl, const char *want) {
    char buf[1024];
    int32_t n = kvlm_chat_apply(m, tmpl, k_msgs, 4, true, buf, sizeof buf);
    assert_true(n > 0);
    assert_string_equal(buf, want);
    assert_int_equal(n, (int32_t)strlen(want));
    /* too small a buffer: minus the size needed */
    assert_int_equal(kvlm_chat_apply(m, tmpl, k_msgs, 4, true, buf, 5), -(n + 1));
}

static kvlm_model *vocab_model(void) {
    kvlm_model_params p = kvlm_model_default_params();
    p.vocab_only = true;
    kvlm_model *m = NULL;
    kvlm_error err;
    assert_int_equal(kvlm_model_load(KVLM_MODELS_DIR "/vocab/ggml-vocab-llama-spm.gguf", &p, &m, &err), KVLM_OK);
    return m;
}

static void test_formats(void **state) {
    (void)state;
    kvlm_model *m = vocab_model();
    expect(m, "chatml",
           "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!"
           "<|im_end|>\n<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n");
    expect(m, "llama3",
           "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>"
           "\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user"
           "<|end_header_id|>\n\nWho are you?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
    expect(m, "phi3",
           "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n<|user|>\nWho are you?"
           "<|end|>\n<|assistant|>\n");
    expect(m, "llama2-sys", "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]Hello!</s>[INST] Who are you? [/INST]");
    expect(m, "llama2", "[INST] Be brief.\nHi [/INST]Hello!</s>[INST] Who are you? [/INST]");
    expect(m, "bitnet",
           "System: Be brief.<|eot_id|>User: Hi<|eot_id|>Assistant: Hello!<|eot_id|>User: Who are you?<|eot_id|>"
           "Assistant: ");
    expect(m, "plain", "System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: Who are you?\nAssistant:");
    char buf[64];
    assert_int_equal(kvlm_chat_apply(m, "no-such-format", k_msgs, 4, true, buf, sizeof buf), 0);
    /* the llama-spm vocab file has no chat template: the plain format */
    assert_string_equal(kvlm_chat_template(m), "plain");
    kvlm_model_free(m);
}

/* tokenizer.chat_template strings are recognized as llama.cpp recognizes them. */
static void test_recognition(void **state) {
    (void)state;
    const char *tmpls[][2] = {
        {"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'}}",
         "chatml"},
        {"{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}", "llama3"},
        {"{{'<|user|>' + '\\n' + message['content'] + '<|end|>' + '\\n' + '<|assistant|>' + '\\n'}}", "phi3"},
        {"{{ bos_token + '[INST] ' + content + ' [/INST]' }}", "llama2"},
        {"{{ '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>' }}", "llama2-sys"},
        {"{% if message['role'] == 'assistant' %}{{'Assistant: ' + message['content'] + '<|eot_id|>'}}{% endif %}",
         "bitnet"},
        {"{{ something else }}", "plain"},
    };
    for (size_t i = 0; i < sizeof tmpls / sizeof tmpls[0]; i++) {
        gb b = {0};
        gb_header(&b, 3, 0, 6);
        gb_kv_str(&b, "general.architecture", "llama");
        gb_kv_str(&b, "tokenizer.ggml.model", "llama");
        const char *toks[4] = {"<unk>", "<s>", "</s>", "a"};
        gb_key(&b, "tokenizer.ggml.tokens", 9); gb_u32(&b, 8); gb_u64(&b, 4);
        for (int k = 0; k < 4; k++) gb_str(&b, toks[k]);
        gb_key(&b, "tokenizer.ggml.scores", 9); gb_u32(&b, 6); gb_u64(&b, 4);
        for (int k = 0; k < 4; k++) gb_f32(&b, 0.0f);
        gb_key(&b, "tokenizer.ggml.token_type", 9); gb_u32(&b, 5); gb_u64(&b, 4);
        for (int k = 0; k < 4; k++) gb_u32(&b, k == 0 ? 2 : (k < 3 ? 3 : 1));
        gb_kv_str(&b, "tokenizer.chat_template", tmpls[i][0]);
        char path[] = "/tmp/kvlm-test-chat-XXXXXX";
        int fd = mkstemp(path);
        assert_int_equal(write(fd, b.p, b.n), (ssize_t)b.n);
        close(fd);
        free(b.p);
        kvlm_model_params p = kvlm_model_default_params();
        p.vocab_only = true;
        kvlm_model *m = NULL;
        kvlm_error err;
        if (kvlm_model_load(path, &p, &m, &err) != KVLM_OK) fail_msg("%s", err.msg);
        unlink(path);
        assert_string_equal(kvlm_chat_template(m), tmpls[i][1]);
        kvlm_model_free(m);
    }
}

/* A qwen2 model and a llama model with byte-level BPE vocabularies run end to end. */
static void test_bpe_models_run(void **state) {
    (void)state;
    const char *cases[][3] = {
        {"qwen2", "ggml-vocab-gpt-2.gguf", "Hello world, this is a test"},
        {"llama", "ggml-vocab-deepseek-coder.gguf", "def main():\n    print('hi')"},
    };
    for (int c = 0; c < 2; c++) {
        char path[64], cmd[2048], out[8192];
        snprintf(path, sizeof path, "/tmp/kvlm-test-bpe-%d-%d.gguf", c, (int)getpid());
        snprintf(cmd, sizeof cmd,
                 "%s/kvlm synth %s --arch %s --dim 64 --layers 2 --heads 4 --kv-heads 2 --ff 128 --ctx 256 --type q8_0 "
                 "--vocab-from %s/vocab/%s >/dev/null 2>&1",
                 KVLM_BIN_DIR, path, cases[c][0], KVLM_MODELS_DIR, cases[c][1]);
        assert_int_equal(system(cmd), 0);
        snprintf(cmd, sizeof cmd, "%s/kvlm run -m %s -p \"%s\" -n 12 --ignore-eos 2>&1", KVLM_BIN_DIR, path,
                 cases[c][2]);
        FILE *fp = popen(cmd, "r");
        size_t n = fread(out, 1, sizeof out - 1, fp);
        out[n] = '\0';
        assert_int_equal(pclose(fp), 0);
        /* the prompt is echoed, 12 tokens are generated */
        assert_true(strncmp(out, cases[c][2], strlen(cases[c][2])) == 0);
        assert_non_null(strstr(out, "generation: 12 tokens"));
        /* the model's tokenizer round-trips the prompt */
        kvlm_model *m = NULL;
        kvlm_error err;
        assert_int_equal(kvlm_model_load(path, NULL, &m, &err), KVLM_OK);
        kvlm_token t[256];
        int32_t nt = kvlm_tokenize(m, cases[c][2], strlen(cases[c][2]), t, 256, false, false);
        assert_true(nt > 0);
        char back[1024];
        size_t bl = 0;
        for (int32_t i = 0; i < nt; i++) {
            int32_t pl = kvlm_token_to_piece(m, t[i], back + bl, (int32_t)(sizeof back - bl), false);
            assert_true(pl >= 0);
            bl += (size_t)pl;
        }
        back[bl] = '\0';
        assert_string_equal(back, cases[c][2]);
        kvlm_model_free(m);
        unlink(path);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_formats),
        cmocka_unit_test(test_recognition),
        cmocka_unit_test(test_bpe_models_run),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
