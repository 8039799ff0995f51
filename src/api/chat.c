/* Chat templates: recognizing tokenizer.chat_template and formatting messages. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvlm.h"
#include "model/model.h"
#include "api/textstream.h"

typedef enum { T_PLAIN, T_CHATML, T_LLAMA2, T_LLAMA2_SYS, T_LLAMA3, T_PHI3, T_BITNET } tmpl_kind;

static const char *const k_names[] = {"plain", "chatml", "llama2", "llama2-sys", "llama3", "phi3", "bitnet"};

static bool has(gguf_str t, const char *needle) {
    size_t n = strlen(needle);
    if (n > t.len) return false;
    for (uint64_t i = 0; i + n <= t.len; i++)
        if (memcmp(t.data + i, needle, n) == 0) return true;
    return false;
}

static tmpl_kind detect(const kvlm_model *m) {
    gguf_str t;
    if (!m->gguf || !gguf_get_str(m->gguf, "tokenizer.chat_template", &t)) return T_PLAIN;
    if (has(t, "<|im_start|>")) return T_CHATML;
    if (has(t, "'Assistant: ' + message['content'] + '<|eot_id|>'") || has(t, "Assistant: ' + message['content']"))
        return T_BITNET;
    if (has(t, "<|start_header_id|>") && has(t, "<|end_header_id|>")) return T_LLAMA3;
    if (has(t, "<|assistant|>") && has(t, "<|end|>")) return T_PHI3;
    if (has(t, "[INST]")) return has(t, "<<SYS>>") ? T_LLAMA2_SYS : T_LLAMA2;
    return T_PLAIN;
}

const char *kvlm_chat_template(const kvlm_model *m) { return k_names[detect(m)]; }

static void trim(const char *s, const char **b, size_t *n) {
    size_t len = strlen(s), i = 0;
    while (i < len && (s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r')) i++;
    while (len > i && (s[len - 1] == ' ' || s[len - 1] == '\n' || s[len - 1] == '\t' || s[len - 1] == '\r')) len--;
    *b = s + i;
    *n = len - i;
}

static void put(kv_buf *b, const char *s) { kv_buf_add_z(b, s, strlen(s)); }

int32_t kvlm_chat_apply(const kvlm_model *m, const char *tmpl, const kvlm_chat_message *msgs, int32_t n,
                        bool add_assistant, char *buf, int32_t size) {
    tmpl_kind k;
    if (!tmpl) {
        k = detect(m);
    } else {
        int found = -1;
        for (int i = 0; i < (int)(sizeof k_names / sizeof k_names[0]); i++)
            if (strcmp(tmpl, k_names[i]) == 0) found = i;
        if (found < 0) return 0;
        k = (tmpl_kind)found;
    }
    kv_buf b = {0};
    bool inside_turn = true;
    if (k == T_LLAMA2 || k == T_LLAMA2_SYS) put(&b, "[INST] ");
    for (int32_t i = 0; i < n; i++) {
        const char *role = msgs[i].role ? msgs[i].role : "user";
        const char *content = msgs[i].content ? msgs[i].content : "";
        switch (k) {
        case T_CHATML:
            put(&b, "<|im_start|>"); put(&b, role); put(&b, "\n"); put(&b, content); put(&b, "<|im_end|>\n");
            break;
        case T_LLAMA3: {
            const char *c;
            size_t cn;
            trim(content, &c, &cn);
            put(&b, "<|start_header_id|>"); put(&b, role); put(&b, "<|end_header_id|>\n\n");
            kv_buf_add_z(&b, c, cn);
            put(&b, "<|eot_id|>");
            break;
        }
        case T_PHI3:
            put(&b, "<|"); put(&b, role); put(&b, "|>\n"); put(&b, content); put(&b, "<|end|>\n");
            break;
        case T_LLAMA2:
        case T_LLAMA2_SYS:
            if (!inside_turn) {
                inside_turn = true;
                put(&b, "[INST] ");
            }
            if (strcmp(role, "system") == 0) {
                if (k == T_LLAMA2_SYS) { put(&b, "<<SYS>>\n"); put(&b, content); put(&b, "\n<</SYS>>\n\n"); }
                else { put(&b, content); put(&b, "\n"); }
            } else if (strcmp(role, "user") == 0) {
                put(&b, content); put(&b, " [/INST]");
            } else {
                put(&b, content); put(&b, "</s>");
                inside_turn = false;
            }
            break;
        case T_BITNET: {
            const char *label = strcmp(role, "system") == 0 ? "System: "
                                : strcmp(role, "assistant") == 0 ? "Assistant: " : "User: ";
            put(&b, label); put(&b, content); put(&b, "<|eot_id|>");
            break;
        }
        default: {
            const char *label = strcmp(role, "system") == 0 ? "System: "
                                : strcmp(role, "assistant") == 0 ? "Assistant: " : "User: ";
            put(&b, label); put(&b, content); put(&b, "\n");
            break;
        }
        }
    }
    if (add_assistant) {
        switch (k) {
        case T_CHATML: put(&b, "<|im_start|>assistant\n"); break;
        case T_LLAMA3: put(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n"); break;
        case T_PHI3: put(&b, "<|assistant|>\n"); break;
        case T_BITNET: put(&b, "Assistant: "); break;
        case T_LLAMA2: case T_LLAMA2_SYS: break;
        default: put(&b, "Assistant:"); break;
        }
    }
    if (b.oom || b.n >= INT32_MAX) { /* out of memory, or more than the return type can say */
        free(b.data);
        return 0;
    }
    int32_t len = (int32_t)b.n;
    int32_t ret;
    if (len + 1 > size) {
        ret = -(len + 1);
    } else {
        if (len) memcpy(buf, b.data, (size_t)len);
        buf[len] = '\0';
        ret = len;
    }
    free(b.data);
    return ret;
}
