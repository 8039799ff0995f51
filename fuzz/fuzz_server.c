/* kvlm serve's request parsing on arbitrary bytes: the body of POST
 * /v1/completions or /v1/chat/completions goes through exactly what the HTTP
 * handler does with it (tools/kvlm/serve/serve_http.c): srv_parse_body (the
 * UTF-8 check, cJSON_ParseWithLengthOpts, nothing but whitespace after the
 * value, an object), then srv_parse_generation (the request -> a job).
 *
 * Byte 0: bit 0 picks the route (1: chat), bits 1-2 the --chat-template
 * (none: the model's, chatml, llama3, llama2); the rest is the body. The
 * engine is the fields the parser reads (model aidreams260K, n_ctx 256, 4
 * slots), without sessions or a scheduler thread.
 *
 * Contract: either a job whose fields are in the ranges the parser promises
 * (prompt 1..n_ctx tokens < n_vocab, max_tokens 1..room, n 1..slots,
 * sampling values in their documented intervals, stop strings non-empty,
 * logit bias ids < n_vocab), or an error with a 4xx status and a message
 * that names the field at fault; no crash, no leak (the job is freed). */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "fuzz_util.h"
#include "kvlm.h"
#include "serve/serve.h"

enum { IN_CAP = 1 << 17, N_CTX = 256, PARALLEL = 4 };

static kvlm_model *g_model;
static srv_engine g_e;
static srv_config g_cfg;
static char *g_buf;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    g_model = fuzz_load_model("llama/aidreams260K-f32.gguf", false, "fuzz_server");
    const char *path = fuzz_model_path("llama/aidreams260K-f32.gguf");
    g_cfg.model_path = path;
    g_cfg.alias = "aidreams";
    g_cfg.parallel = PARALLEL;
    g_e.cfg = &g_cfg;
    g_e.model = g_model;
    g_e.n_vocab = kvlm_n_vocab(g_model);
    g_e.n_ctx = N_CTX;
    g_e.parallel = PARALLEL;
    g_buf = malloc(IN_CAP + 1);
    if (!g_buf) abort();
    return 0;
}

static bool in(double v, double lo, double hi) { return v >= lo && v <= hi; }

static void check_job(const srv_job *j, bool chat) {
    FUZZ_CHECK(j->chat == chat, "chat %d", j->chat);
    FUZZ_CHECK(j->prompt && j->n_prompt >= 1 && j->n_prompt <= N_CTX, "n_prompt %d", (int)j->n_prompt);
    for (int32_t i = 0; i < j->n_prompt; i++)
        FUZZ_CHECK(j->prompt[i] >= 0 && j->prompt[i] < g_e.n_vocab, "prompt[%d] = %d", (int)i, (int)j->prompt[i]);
    const int32_t room = N_CTX - j->n_prompt + 1;
    /* with echo, max_tokens 0 scores the prompt alone */
    FUZZ_CHECK(j->max_tokens >= (j->echo ? 0 : 1) && j->max_tokens <= room, "max_tokens %d, room %d",
               (int)j->max_tokens, (int)room);
    FUZZ_CHECK(!j->echo || (!chat && j->echo_text && strlen(j->echo_text) == j->echo_len), "echo");
    FUZZ_CHECK(j->n >= 1 && j->n <= SRV_MAX_N && j->n <= PARALLEL, "n %d", j->n);
    const kvlm_sampling_params *s = &j->sampling;
    FUZZ_CHECK(in(s->temperature, 0, 100), "temperature %g", s->temperature);
    FUZZ_CHECK(in(s->top_p, 0, 1), "top_p %g", s->top_p);
    FUZZ_CHECK(s->top_k >= 0, "top_k %d", (int)s->top_k);
    FUZZ_CHECK(in(s->min_p, 0, 1), "min_p %g", s->min_p);
    FUZZ_CHECK(in(s->presence_penalty, -2, 2), "presence_penalty %g", s->presence_penalty);
    FUZZ_CHECK(in(s->frequency_penalty, -2, 2), "frequency_penalty %g", s->frequency_penalty);
    FUZZ_CHECK(s->repeat_penalty > 0 && s->repeat_penalty <= 10, "repeat_penalty %g", s->repeat_penalty);
    FUZZ_CHECK(j->n_bias >= 0 && (j->n_bias == 0 || j->bias), "n_bias %d", j->n_bias);
    for (int i = 0; i < j->n_bias; i++) {
        FUZZ_CHECK(j->bias[i].token >= 0 && j->bias[i].token < g_e.n_vocab, "bias token %d", (int)j->bias[i].token);
        float b = j->bias[i].bias;
        FUZZ_CHECK((b == -INFINITY) || in(b, -100, 100), "bias %g", b);
    }
    FUZZ_CHECK(j->n_stop >= 0 && j->n_stop <= SRV_MAX_STOP, "n_stop %d", j->n_stop);
    for (int i = 0; i < j->n_stop; i++) FUZZ_CHECK(j->stop[i] && j->stop[i][0], "stop[%d] empty", i);
    FUZZ_CHECK(j->logprobs >= -1 && j->logprobs <= SRV_MAX_TOP, "logprobs %d", j->logprobs);
    FUZZ_CHECK(!j->include_usage || j->include_usage == 1, "include_usage");
    FUZZ_CHECK(j->refs == 0 && j->state == JOB_QUEUED && j->err_status == 0, "state");
}

/* The field named by pe->param, up to its first '[' or '.', appears in the message. */
static void check_error(const srv_perr *pe) {
    FUZZ_CHECK(pe->status >= 400 && pe->status <= 499, "status %d: %s", pe->status, pe->msg);
    FUZZ_CHECK(pe->msg[0], "empty message (status %d, param '%s')", pe->status, pe->param);
    if (pe->param[0]) {
        char base[64];
        size_t k = strcspn(pe->param, "[.");
        memcpy(base, pe->param, k);
        base[k] = '\0';
        FUZZ_CHECK(strstr(pe->msg, base), "message '%s' does not name '%s'", pe->msg, pe->param);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1 || size - 1 > IN_CAP) return 0;
    static const char *const tmpl[4] = {NULL, "chatml", "llama3", "llama2"};
    const bool chat = data[0] & 1;
    g_cfg.chat_template = tmpl[(data[0] >> 1) & 3];
    const size_t n = size - 1;
    memcpy(g_buf, data + 1, n);
    g_buf[n] = '\0'; /* the HTTP side keeps the body NUL-terminated */

    srv_perr pe = {0};
    cJSON *root = srv_parse_body(g_buf, n, &pe);
    if (!root) {
        check_error(&pe);
        FUZZ_CHECK(pe.code && !pe.param[0], "a body error names code and no field");
        return 0;
    }
    memset(&pe, 0, sizeof pe);
    srv_job *j = srv_parse_generation(&g_e, &g_cfg, root, chat, &pe);
    if (j) {
        check_job(j, chat);
        srv_job_free(j);
    } else {
        check_error(&pe);
    }
    cJSON_Delete(root);
    return 0;
}
