/* Chat template rendering: the model's tokenizer.chat_template string and the
 * messages both come from the input.
 *
 * Input: fields separated by NUL bytes: the template string (put in a minimal
 * GGUF as tokenizer.chat_template and recognized as kvlm_chat_apply(model,
 * NULL, ...) does), one byte choosing the format name (NULL or one of the
 * names or an unknown name) and add_assistant, then role, content, role,
 * content, ... Contracts (a violation aborts):
 * - the size protocol: size 0 returns minus the size needed; that size fits and
 *   gives that length minus one, NUL-terminated, the same bytes as a large buffer;
 * - NULL renders exactly as the name kvlm_chat_template reports;
 * - an unknown name returns 0; every message's content (trimmed for llama3)
 *   appears in the prompt. */
#include <stdbool.h>
#include <string.h>

#include "fuzz_util.h"
#include "kvlm.h"
#include "model/model.h"

enum { IN_CAP = 1 << 16, MAX_MSGS = 16 };

static kvlm_model *g_model;
static uint8_t *g_gguf;
static char *g_out, *g_out2;
static const char *const k_names[] = {"plain", "chatml", "llama2", "llama2-sys", "llama3", "phi3", "bitnet"};
enum { N_NAMES = sizeof k_names / sizeof k_names[0], OUT_CAP = 4 * IN_CAP + 4096 };

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    g_model = fuzz_load_model("llama/aidreams260K-f32.gguf", true, "fuzz_chat");
    g_gguf = malloc(IN_CAP + 128);
    g_out = malloc(OUT_CAP);
    g_out2 = malloc(OUT_CAP);
    if (!g_gguf || !g_out || !g_out2) abort();
    return 0;
}

static void put_u32(uint8_t **p, uint32_t v) { memcpy(*p, &v, 4); *p += 4; }
static void put_u64(uint8_t **p, uint64_t v) { memcpy(*p, &v, 8); *p += 8; }

/* A GGUF v3 file with no tensors and one key, tokenizer.chat_template = tmpl. */
static size_t make_gguf(const char *tmpl, size_t n) {
    static const char key[] = "tokenizer.chat_template";
    uint8_t *p = g_gguf;
    memcpy(p, "GGUF", 4);
    p += 4;
    put_u32(&p, 3);
    put_u64(&p, 0); /* tensors */
    put_u64(&p, 1); /* keys */
    put_u64(&p, sizeof key - 1);
    memcpy(p, key, sizeof key - 1);
    p += sizeof key - 1;
    put_u32(&p, 8); /* string */
    put_u64(&p, n);
    memcpy(p, tmpl, n);
    p += n;
    return (size_t)(p - g_gguf);
}

static bool contains(const char *hay, size_t hn, const char *s, size_t n) {
    if (n == 0) return true;
    for (size_t i = 0; i + n <= hn; i++)
        if (memcmp(hay + i, s, n) == 0) return true;
    return false;
}

static int32_t apply(const char *name, const kvlm_chat_message *msgs, int32_t nm, bool add, char *out) {
    int32_t need = kvlm_chat_apply(g_model, name, msgs, nm, add, NULL, 0);
    if (need == 0) return 0;
    FUZZ_CHECK(need < 0 && -need <= OUT_CAP, "size 0 gave %d", need);
    int32_t len = kvlm_chat_apply(g_model, name, msgs, nm, add, out, -need);
    FUZZ_CHECK(len == -need - 1, "size %d gave %d", -need, len);
    FUZZ_CHECK(out[len] == '\0', "not NUL-terminated");
    if (len > 0) {
        FUZZ_CHECK(kvlm_chat_apply(g_model, name, msgs, nm, add, out, len) == need, "size %d one short", len);
    }
    return len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > IN_CAP) return 0;
    /* NUL-separated fields, copied so each is a C string */
    char *copy = malloc(size + 1);
    if (!copy) return 0;
    memcpy(copy, data, size);
    copy[size] = '\0';
    const char *field[2 + 2 * MAX_MSGS];
    int nf = 0;
    for (size_t i = 0; i <= size && nf < (int)(sizeof field / sizeof field[0]);) {
        field[nf++] = copy + i;
        i += strlen(copy + i) + 1;
    }
    const size_t tn = strlen(field[0]);
    const uint8_t mode = nf > 1 ? (uint8_t)field[1][0] : 0;
    const bool add = mode & 0x80;
    const int pick = (mode & 0x7f) % (N_NAMES + 2); /* 0: NULL, 1..N: a name, N+1: unknown */
    kvlm_chat_message msgs[MAX_MSGS];
    int32_t nm = 0;
    for (int f = 2; f + 1 < nf && nm < MAX_MSGS; f += 2) {
        msgs[nm].role = field[f][0] == '\x01' ? NULL : field[f];
        msgs[nm].content = field[f + 1][0] == '\x01' ? NULL : field[f + 1];
        nm++;
    }

    /* the model's template from the input */
    size_t gn = make_gguf(field[0], tn);
    gguf_ctx *g = NULL;
    kvlm_error err;
    if (kv_gguf_open_buffer(g_gguf, gn, &g, &err) != KVLM_OK) {
        fprintf(stderr, "fuzz_chat: the harness's GGUF did not open: %s\n", err.msg);
        abort();
    }
    gguf_ctx *saved = g_model->gguf;
    g_model->gguf = g;

    const char *name = pick == 0 ? NULL : pick <= N_NAMES ? k_names[pick - 1] : "no-such-format";
    int32_t len = apply(name, msgs, nm, add, g_out);
    if (pick == N_NAMES + 1) {
        FUZZ_CHECK(len == 0, "an unknown name rendered %d bytes", len);
    } else {
        const char *used = name ? name : kvlm_chat_template(g_model);
        FUZZ_CHECK(used != NULL, "no template name");
        if (!name) {
            int32_t len2 = apply(used, msgs, nm, add, g_out2);
            FUZZ_CHECK(len2 == len && memcmp(g_out, g_out2, (size_t)len) == 0, "NULL and '%s' differ", used);
        }
        for (int32_t i = 0; i < nm; i++) {
            const char *c = msgs[i].content ? msgs[i].content : "";
            size_t cn = strlen(c);
            if (strcmp(used, "llama3") == 0) {
                while (cn && strchr(" \n\t\r", *c)) c++, cn--;
                while (cn && strchr(" \n\t\r", c[cn - 1])) cn--;
            }
            FUZZ_CHECK(contains(g_out, (size_t)len, c, cn), "message %d's content is missing", i);
        }
    }

    g_model->gguf = saved;
    kv_gguf_close(g);
    free(copy);
    return 0;
}
