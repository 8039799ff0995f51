/* The flags of kvlm's subcommands: one table says which subcommands take
 * each flag, what it accepts and its default, so that parsing refuses a flag
 * a subcommand does not take and --help lists exactly the ones it does. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

enum {
    C_RUN = 1u << 0,
    C_CHAT = 1u << 1,
    C_EVAL = 1u << 2,
    C_TOKENIZE = 1u << 3,
    C_INSPECT = 1u << 4,
    C_PPL = 1u << 5,
    C_BENCH = 1u << 6,
    C_SERVE = 1u << 7,
    C_ALL = 0xff,
    C_GEN = C_RUN | C_CHAT,                         /* sampling */
    C_KV = C_RUN | C_CHAT | C_EVAL | C_PPL | C_SERVE, /* KV cache settings (bench: a subset) */
    C_POLICY = C_RUN | C_CHAT | C_EVAL,             /* what happens at a full context (serve: requests are capped) */
};

static const struct {
    const char *name;
    unsigned bit;
    const char *synopsis;
} k_cmds[] = {
    {"run", C_RUN,
     "usage: kvlm run -m MODEL (-p PROMPT | -f FILE) [options]\n"
     "  Generates text from the prompt, streaming it to stdout; timings on stderr. Greedy unless --temp\n"
     "  (or a sampling flag: --top-k, --top-p, --min-p, the penalties, --seed) is given.\n"
     "  --session FILE: load FILE if it exists (reusing its common prefix with the prompt) and save the\n"
     "  session there at the end. FILE must be a regular file or absent (links, FIFOs, devices and\n"
     "  directories are refused). A FILE that does not load (corrupted, another model or other cache\n"
     "  settings) stops the run unless --session-overwrite allows replacing it.\n"},
    {"chat", C_CHAT,
     "usage: kvlm chat -m MODEL [options]\n"
     "  An interactive multi-turn chat that keeps the KV cache across turns. Type a message and Enter;\n"
     "  /reset starts over, /quit (or end of input) leaves; Ctrl-C stops the current answer. On a terminal\n"
     "  the line has history and editing (libedit); from a pipe each line is one turn, however long.\n"
     "  An answer runs until the end of the turn. When the context is full the chat shifts it, keeping\n"
     "  the system prompt, so every turn goes on.\n"
     "  --session FILE: the chat goes on across invocations: the KV cache is kept in FILE, the\n"
     "  conversation (system prompt, messages) in FILE.chat (JSON), both loaded at the start when there\n"
     "  and saved when the chat ends. Both must be regular files or absent; when only one is there or\n"
     "  one does not load, the chat stops (nothing is overwritten) unless --session-overwrite starts over.\n"},
    {"eval", C_EVAL,
     "usage: kvlm eval -m MODEL (-p TEXT | -f FILE | --tokens \"1 2 3\") [options]\n"
     "  Evaluates a prompt as one batch, then --greedy N tokens one at a time; prints the greedy ids and\n"
     "  writes every position's logits (LGTS0001) with --dump-logits.\n"},
    {"tokenize", C_TOKENIZE,
     "usage: kvlm tokenize -m MODEL (-p TEXT | -f FILE | --stdin) [options]\n"
     "  Prints each token as 'id -> piece', or with --ids the ids as a list: [1, 15043, ...].\n"},
    {"inspect", C_INSPECT, "usage: kvlm inspect -m MODEL\n  GGUF metadata, tensor types and hyperparameters.\n"},
    {"perplexity", C_PPL,
     "usage: kvlm perplexity -m MODEL -f TEXT [options]\n"
     "  Perplexity of a text in chunks of -c tokens, scoring the second half of each chunk as\n"
     "  llama.cpp's perplexity does. A progress line with the time left on a terminal.\n"},
    {"bench", C_BENCH,
     "usage: kvlm bench -m MODEL [options]\n"
     "  Prompt processing (pp) and generation (tg) speed as llama-bench measures and prints it; -p, -n,\n"
     "  -t, -d, -ctk and -ctv take comma-separated lists (or repeat) and every combination is run.\n"
     "       kvlm bench -m MODEL --incremental [-r REPS]   one new token with the cache vs recompute\n"
     "       kvlm bench -m MODEL --batch [-n STEPS] [-r REPS]   decode throughput for 1, 2, 4, 8 sessions\n"
     "       kvlm bench -m MODEL --tokenize [-f FILE] [-r REPS]   tokenization MB/s on 1 MiB of text\n"
     "       kvlm bench -m MODEL --grammar FILE [-f TEXT] [-n STEPS] [-r WALKS]   token-mask time of a GBNF grammar\n"
     "       kvlm bench -m MODEL --json-schema FILE [-f TEXT] [-n STEPS] [-r WALKS]   the same for a JSON Schema\n"},
    {"serve", C_SERVE,
     "usage: kvlm serve -m MODEL [options]\n"
     "  An OpenAI-compatible HTTP server: /v1/completions, /v1/chat/completions, /v1/models, /health,\n"
     "  /metrics. Up to --parallel sequences are decoded together, one token each per step, with -t\n"
     "  threads; a request is capped by the context (no overflow policy).\n"},
};

enum {
    F_HELP, F_MODEL, F_PROMPT, F_FILE, F_STDIN, F_NO_ESCAPE, F_TOKENS, F_DUMP, F_GREEDY, F_CHUNK, F_CHUNKS,
    F_SESSION, F_SESSION_OVERWRITE, F_TEMPLATE, F_SYSTEM, F_NPRED, F_THREADS, F_CTX, F_TEMP, F_TOPK, F_TOPP,
    F_MINP, F_REPPEN, F_LASTN, F_FREQ, F_PRES, F_SEED, F_BIAS, F_STOP, F_IGNORE_EOS, F_NPROBS, F_TIMEOUT,
    F_NO_BOS, F_NO_PARSE_SPECIAL, F_IDS, F_SHOW_COUNT, F_OUTPUT, F_JSON, F_REPS, F_DEPTH, F_INCREMENTAL,
    F_BATCH, F_TOKENIZE, F_CPU_TIME, F_KV_STATS, F_VERBOSE, F_CTK, F_CTV, F_OVERFLOW, F_KEEP, F_SINK,
    F_WINDOW, F_COMPRESS_AFTER, F_COMPRESS_TYPE, F_PAGE_TOKENS, F_GROWTH, F_GROWTH_FACTOR, F_KV_INITIAL,
    F_KV_MAX, F_NO_PREFIX, F_PREFETCH, F_MODEL_DRAFT, F_DRAFT_MAX, F_DRAFT_NGRAM, F_BEAMS, F_LENGTH_PENALTY, F_BEAMS_ALL,
    F_GRAMMAR, F_GRAMMAR_FILE, F_JSON_SCHEMA, F_JSON_SCHEMA_FILE, F_JSON_OBJECT,
    F_KV_DISK, F_KV_DISK_BUDGET,
};

/* kinds of value */
enum { V_NONE, V_STR, V_INT, V_FLOAT, V_LIST, V_TYPES };

typedef struct flag_spec {
    const char *s, *l;  /* short and long name (either may be NULL) */
    const char *meta;   /* the value's name in --help; NULL for a switch */
    unsigned cmds;
    int id, kind;
    long long lo, hi;   /* V_INT / V_LIST */
    const char *help;   /* "{threads}" is replaced by the default thread count */
} flag_spec;

#define N24 (1 << 24)
static const flag_spec k_flags[] = {
    {"-h", "--help", NULL, C_ALL, F_HELP, V_NONE, 0, 0, "this help"},
    {"-m", "--model", "FILE", C_ALL, F_MODEL, V_STR, 0, 0, "the GGUF model (required)"},
    {"-p", "--prompt", "TEXT", C_RUN | C_EVAL | C_TOKENIZE, F_PROMPT, V_STR, 0, 0,
     "the prompt; \\n \\t \\\\ \\\" \\xHH are processed unless --no-escape"},
    {"-p", "--n-prompt", "LIST", C_BENCH, F_PROMPT, V_LIST, 0, N24, "prompt lengths of the pp tests (default: 128)"},
    {"-f", "--file", "FILE", C_RUN | C_EVAL | C_TOKENIZE, F_FILE, V_STR, 0, 0,
     "read the prompt from FILE, as it is ('-': standard input)"},
    {"-f", "--file", "FILE", C_PPL, F_FILE, V_STR, 0, 0, "the text to score (required; '-': standard input)"},
    {"-f", "--file", "FILE", C_BENCH, F_FILE, V_STR, 0, 0,
     "--tokenize: the text sample (default: a built-in mix); --grammar: a text of the grammar, whose tokens are "
     "walked (default: random allowed tokens)"},
    {NULL, "--stdin", NULL, C_TOKENIZE, F_STDIN, V_NONE, 0, 0, "read the prompt from standard input"},
    {NULL, "--no-escape", NULL, C_RUN | C_CHAT | C_EVAL | C_TOKENIZE, F_NO_ESCAPE, V_NONE, 0, 0,
     "take -p, --system and --stop literally (no \\n, \\t, ... processing)"},
    {NULL, "--tokens", "IDS", C_EVAL, F_TOKENS, V_STR, 0, 0, "the prompt as token ids (\"1 2 3\" or \"1,2,3\")"},
    {NULL, "--greedy", "N", C_EVAL, F_GREEDY, V_INT, 0, N24, "greedy tokens after the prompt, one at a time (default: 0)"},
    {NULL, "--dump-logits", "OUT", C_EVAL, F_DUMP, V_STR, 0, 0, "write every position's logits to OUT (LGTS0001)"},
    {NULL, "--chunk", "K", C_EVAL, F_CHUNK, V_INT, 0, N24, "evaluate the prompt K tokens at a time (default: 0, all at once)"},
    {NULL, "--chunk", "K", C_PPL, F_CHUNK, V_INT, 0, N24,
     "feed each chunk K tokens at a time, so tiered KV compression acts between steps (default: 0, all at once)"},
    {NULL, "--chunks", "N", C_PPL, F_CHUNKS, V_INT, 0, N24, "score at most N chunks (default: 0, all)"},
    {NULL, "--session", "FILE", C_RUN, F_SESSION, V_STR, 0, 0, "load the session from FILE and save it there (see above)"},
    {NULL, "--session", "FILE", C_CHAT, F_SESSION, V_STR, 0, 0,
     "continue the chat kept in FILE and FILE.chat, and keep it there (see above)"},
    {NULL, "--session-overwrite", NULL, C_RUN, F_SESSION_OVERWRITE, V_NONE, 0, 0,
     "replace a --session FILE that does not load"},
    {NULL, "--session-overwrite", NULL, C_CHAT, F_SESSION_OVERWRITE, V_NONE, 0, 0,
     "start over when the --session files do not load (they are replaced at the end)"},
    {NULL, "--chat-template", "NAME", C_CHAT | C_SERVE, F_TEMPLATE, V_STR, 0, 0,
     "chatml, llama2, llama2-sys, llama3, phi3, bitnet or plain (default: from the model)"},
    {NULL, "--system", "TEXT", C_CHAT, F_SYSTEM, V_STR, 0, 0, "the system prompt (default: none)"},
    {"-n", "--n-predict", "N", C_RUN, F_NPRED, V_INT, -1, N24,
     "tokens to generate; -1: until the end or a full context (default: 32)"},
    {"-n", "--n-predict", "N", C_CHAT, F_NPRED, V_INT, -1, N24,
     "most tokens per answer (default: -1, until the end of the turn; at most a context's worth)"},
    {"-n", "--n-gen", "LIST", C_BENCH, F_NPRED, V_LIST, 0, N24,
     "generation lengths of the tg tests (default: 64; --batch: decode steps, default 32)"},
    {"-t", "--threads", "N", C_RUN | C_CHAT | C_EVAL | C_PPL | C_SERVE, F_THREADS, V_INT, 1, 256,
     "threads (default: {threads}: the physical cores this process may run on, or KVLM_THREADS)"},
    {"-t", "--threads", "LIST", C_BENCH, F_THREADS, V_LIST, 1, 256, "thread counts (default: {threads}: the physical cores, or KVLM_THREADS)"},
    {"-c", "--ctx-size", "N", C_RUN | C_CHAT | C_SERVE, F_CTX, V_INT, 0, N24,
     "context size in tokens (default: 0, the model's training context)"},
    {"-c", "--ctx-size", "N", C_EVAL, F_CTX, V_INT, 0, N24, "context size in tokens (default: 0, the tokens evaluated)"},
    {"-c", "--ctx-size", "N", C_PPL, F_CTX, V_INT, 0, N24, "tokens per chunk (default: 128)"},
    {"--temp", "--temperature", "TEMP", C_GEN, F_TEMP, V_FLOAT, 0, 0,
     "temperature, 0: greedy (default: 0; 0.8, llama.cpp's, when a sampling flag is given)"},
    {NULL, "--top-k", "N", C_GEN, F_TOPK, V_INT, -1, N24, "keep the N most probable tokens, <= 0: off (default: 40)"},
    {NULL, "--top-p", "P", C_GEN, F_TOPP, V_FLOAT, 0, 0, "nucleus sampling, 1: off (default: 0.95)"},
    {NULL, "--min-p", "P", C_GEN, F_MINP, V_FLOAT, 0, 0, "drop tokens under P times the best one's probability (default: 0.05)"},
    {NULL, "--repeat-penalty", "R", C_GEN, F_REPPEN, V_FLOAT, 0, 0, "penalize repeated tokens, 1: off (default: 1)"},
    {NULL, "--repeat-last-n", "N", C_GEN, F_LASTN, V_INT, -1, N24, "tokens the penalties look back at, -1: all (default: 64)"},
    {NULL, "--frequency-penalty", "F", C_GEN, F_FREQ, V_FLOAT, 0, 0, "frequency penalty, 0: off (default: 0)"},
    {NULL, "--presence-penalty", "F", C_GEN, F_PRES, V_FLOAT, 0, 0, "presence penalty, 0: off (default: 0)"},
    {"-s", "--seed", "N", C_GEN, F_SEED, V_INT, -1, 4294967295LL,
     "sampling seed; -1: a random one, printed so the run can be repeated (default: -1)"},
    {"-l", "--logit-bias", "TOKEN(+|-)BIAS", C_GEN, F_BIAS, V_STR, 0, 0,
     "add BIAS to TOKEN's logit: 15043+1, 15043-1, 2-inf bans token 2 (repeatable)"},
    {NULL, "--stop", "STR", C_GEN, F_STOP, V_STR, 0, 0, "stop when STR is generated; it is not printed (repeatable)"},
    {NULL, "--ignore-eos", NULL, C_GEN, F_IGNORE_EOS, V_NONE, 0, 0, "go on past end-of-generation tokens"},
    {NULL, "--grammar", "TEXT", C_GEN, F_GRAMMAR, V_STR, 0, 0,
     "constrain the output to a GBNF grammar (llama.cpp's syntax, start rule root; docs/GRAMMAR.md)"},
    {NULL, "--grammar-file", "FILE", C_GEN, F_GRAMMAR_FILE, V_STR, 0, 0, "the same, the grammar read from FILE"},
    {NULL, "--json-schema", "TEXT", C_GEN, F_JSON_SCHEMA, V_STR, 0, 0,
     "constrain the output to JSON valid against a JSON Schema (docs/GRAMMAR.md, \"JSON Schema\")"},
    {NULL, "--json-schema-file", "FILE", C_GEN, F_JSON_SCHEMA_FILE, V_STR, 0, 0, "the same, the schema read from FILE"},
    {"-j", "--json-object", NULL, C_GEN, F_JSON_OBJECT, V_NONE, 0, 0,
     "constrain the output to a JSON object (the schema {\"type\": \"object\"})"},
    {NULL, "--grammar", "FILE", C_BENCH, F_GRAMMAR_FILE, V_STR, 0, 0,
     "token-mask time of the GBNF grammar in FILE on -m's vocabulary (a vocab-only GGUF will do)"},
    {NULL, "--json-schema", "FILE", C_BENCH, F_JSON_SCHEMA_FILE, V_STR, 0, 0,
     "the same for the grammar of the JSON Schema in FILE"},
    {NULL, "--n-probs", "N", C_RUN, F_NPROBS, V_INT, 0, CLI_MAX_PROBS,
     "after the text, each generated token's probability and the N most probable tokens (default: 0)"},
    {"-md", "--model-draft", "FILE", C_RUN, F_MODEL_DRAFT, V_STR, 0, 0,
     "speculative decoding: a small model with the same vocabulary drafts tokens the model verifies (default: none)"},
    {NULL, "--draft-ngram", "N", C_RUN, F_DRAFT_NGRAM, V_INT, 1, 64,
     "speculative decoding by prompt lookup: drafts what followed the last N (down to 1) tokens earlier (default: off)"},
    {NULL, "--draft-max", "N", C_RUN, F_DRAFT_MAX, V_INT, 1, 64,
     "tokens drafted per step, with -md or --draft-ngram (default: 8); the text is the same as without"},
    {NULL, "--beams", "N", C_RUN, F_BEAMS, V_INT, 1, 64,
     "beam search: N hypotheses decoded together on copy-on-write forks, the most probable wins (default: 1, off)"},
    {NULL, "--length-penalty", "F", C_RUN, F_LENGTH_PENALTY, V_FLOAT, 0, 0,
     "with --beams: a hypothesis scores logprob / tokens^F (default: 1; 0: summed log-probability)"},
    {NULL, "--beams-all", NULL, C_RUN, F_BEAMS_ALL, V_NONE, 0, 0,
     "with --beams: print every final hypothesis with its scores to stderr (default: off, the best only)"},
    {NULL, "--timeout", "SEC", C_GEN | C_SERVE, F_TIMEOUT, V_FLOAT, 0, 0, "stop generating after SEC seconds (default: 0, none)"},
    {NULL, "--no-bos", NULL, C_EVAL | C_TOKENIZE, F_NO_BOS, V_NONE, 0, 0, "do not add BOS"},
    {NULL, "--no-parse-special", NULL, C_RUN | C_EVAL | C_TOKENIZE, F_NO_PARSE_SPECIAL, V_NONE, 0, 0,
     "special-token text in the prompt stays text"},
    {NULL, "--ids", NULL, C_TOKENIZE, F_IDS, V_NONE, 0, 0, "only the ids, as a list: [1, 15043, ...]"},
    {NULL, "--show-count", NULL, C_TOKENIZE, F_SHOW_COUNT, V_NONE, 0, 0, "then print the number of tokens"},
    {"-o", "--output", "md|csv|json|jsonl", C_BENCH, F_OUTPUT, V_STR, 0, 0, "output format (default: md)"},
    {NULL, "--json", NULL, C_BENCH, F_JSON, V_NONE, 0, 0, "the same as -o json"},
    {"-r", "--repetitions", "N", C_BENCH, F_REPS, V_INT, 1, 1000000, "runs of each test (default: 5)"},
    {"-d", "--depth", "LIST", C_BENCH, F_DEPTH, V_LIST, 0, N24,
     "tokens already in the context before each test, untimed (default: 0)"},
    {NULL, "--cpu-time", NULL, C_BENCH, F_CPU_TIME, V_NONE, 0, 0, "t/s from the process's CPU time instead of wall time"},
    {NULL, "--incremental", NULL, C_BENCH, F_INCREMENTAL, V_NONE, 0, 0, "one new token with the cache vs recomputing"},
    {NULL, "--batch", NULL, C_BENCH, F_BATCH, V_NONE, 0, 0, "decode throughput for 1, 2, 4 and 8 sessions together"},
    {NULL, "--tokenize", NULL, C_BENCH, F_TOKENIZE, V_NONE, 0, 0, "tokenization MB/s on 1 MiB of text"},
    {NULL, "--kv-stats", NULL, C_RUN | C_CHAT | C_PPL, F_KV_STATS, V_NONE, 0, 0, "print the KV cache statistics (JSON, stderr)"},
    {"-v", "--verbose", NULL, C_RUN | C_CHAT, F_VERBOSE, V_NONE, 0, 0, "say more on stderr"},
    {"-ctk", "--cache-type-k", "T", C_KV, F_CTK, V_STR, 0, 0, "K cache type: f32, f16, q8_0, q4_0 (default: f16)"},
    {"-ctk", "--cache-type-k", "TYPES", C_BENCH, F_CTK, V_TYPES, 0, 0, "K cache types: f32, f16, q8_0, q4_0 (default: f16)"},
    {"-ctv", "--cache-type-v", "T", C_KV, F_CTV, V_STR, 0, 0, "V cache type: f32, f16, q8_0, q4_0 (default: f16)"},
    {"-ctv", "--cache-type-v", "TYPES", C_BENCH, F_CTV, V_TYPES, 0, 0, "V cache types: f32, f16, q8_0, q4_0 (default: f16)"},
    {NULL, "--overflow", "error|shift|sliding|ring", C_CHAT, F_OVERFLOW, V_STR, 0, 0,
     "at a full context (default: shift, keeping the system prompt)"},
    {NULL, "--overflow", "error|shift|sliding|ring", C_POLICY & ~C_CHAT, F_OVERFLOW, V_STR, 0, 0,
     "at a full context: fail, shift out the older half, keep sinks + recent, or a ring (default: error)"},
    {NULL, "--keep", "N", C_CHAT, F_KEEP, V_INT, 0, N24, "shift: tokens kept at the start (default: the system prompt)"},
    {NULL, "--keep", "N", C_POLICY & ~C_CHAT, F_KEEP, V_INT, 0, N24, "shift: tokens kept at the start (default: 0)"},
    {NULL, "--sink", "N", C_POLICY, F_SINK, V_INT, 0, N24, "sliding: attention-sink tokens kept (default: 4)"},
    {NULL, "--window", "N", C_POLICY, F_WINDOW, V_INT, 0, N24, "ring: attention window in tokens (default: 0, the context)"},
    {NULL, "--kv-compress-after", "N", C_KV | C_BENCH, F_COMPRESS_AFTER, V_INT, 0, N24,
     "re-quantize pages older than N tokens (default: 0, off)"},
    {NULL, "--kv-compress-type", "T", C_KV | C_BENCH, F_COMPRESS_TYPE, V_STR, 0, 0,
     "what they become: q8_0 or q4_0 (default: q8_0)"},
    {NULL, "--page-tokens", "N", C_KV | C_BENCH, F_PAGE_TOKENS, V_INT, 16, 256, "tokens per KV page (default: 32)"},
    {NULL, "--kv-growth", "factor|linear|adaptive", C_KV | C_BENCH, F_GROWTH, V_STR, 0, 0,
     "how the page pool grows (default: factor)"},
    {NULL, "--kv-growth-factor", "F", C_KV | C_BENCH, F_GROWTH_FACTOR, V_FLOAT, 0, 0, "growth factor (default: 1.5)"},
    {NULL, "--kv-initial", "N", C_KV | C_BENCH, F_KV_INITIAL, V_INT, 0, 1LL << 30, "tokens allocated up front (default: 256)"},
    {NULL, "--kv-max", "N", C_KV | C_BENCH, F_KV_MAX, V_INT, 16, 1LL << 30, "most tokens the pool holds (default: 1048576)"},
    {NULL, "--no-prefix-sharing", NULL, C_KV | C_BENCH, F_NO_PREFIX, V_NONE, 0, 0,
     "do not share full pages between sequences with a common prefix"},
    {NULL, "--kv-prefetch", NULL, C_KV | C_BENCH, F_PREFETCH, V_NONE, 0, 0, "prefetch the next page during attention"},
    {NULL, "--kv-disk", "DIR", C_RUN | C_CHAT | C_SERVE, F_KV_DISK, V_STR, 0, 0,
     "disk tier: evicted prefix pages go to DIR (zstd) and come back on a hit; kept across runs (default: none)"},
    {NULL, "--kv-disk-budget", "BYTES", C_RUN | C_CHAT | C_SERVE, F_KV_DISK_BUDGET, V_INT, 1, 1LL << 50,
     "most bytes of page files in the --kv-disk directory (default: 1073741824)"},
};
#define N_FLAGS (sizeof k_flags / sizeof k_flags[0])

static unsigned cmd_bit(const char *cmd) {
    for (size_t i = 0; i < sizeof k_cmds / sizeof k_cmds[0]; i++)
        if (cmd && strcmp(cmd, k_cmds[i].name) == 0) return k_cmds[i].bit;
    return 0;
}

static bool named(const flag_spec *f, const char *arg) {
    return (f->s && strcmp(f->s, arg) == 0) || (f->l && strcmp(f->l, arg) == 0);
}

static const flag_spec *find_flag(const char *arg, unsigned bit, bool *exists) {
    *exists = false;
    for (size_t i = 0; i < N_FLAGS; i++)
        if (named(&k_flags[i], arg)) {
            *exists = true;
            if (k_flags[i].cmds & bit) return &k_flags[i];
        }
    return NULL;
}

void cli_usage(const char *cmd, FILE *fp) { cli_usage_with(cmd, NULL, fp); }

void cli_usage_line(const char *names, const char *help, FILE *fp) { fprintf(fp, "  %-34s %s\n", names, help); }

void cli_usage_with(const char *cmd, void (*own)(FILE *fp), FILE *fp) {
    const unsigned bit = cmd_bit(cmd);
    for (size_t i = 0; i < sizeof k_cmds / sizeof k_cmds[0]; i++)
        if (k_cmds[i].bit == bit) fputs(k_cmds[i].synopsis, fp);
    fprintf(fp, "options:\n");
    if (own) own(fp);
    char threads[16];
    snprintf(threads, sizeof threads, "%d", cli_default_threads());
    for (size_t i = 0; i < N_FLAGS; i++) {
        const flag_spec *f = &k_flags[i];
        if (!(f->cmds & bit)) continue;
        char names[96];
        snprintf(names, sizeof names, "%s%s%s%s%s", f->s ? f->s : "", f->s && f->l ? ", " : "", f->l ? f->l : "",
                 f->meta ? " " : "", f->meta ? f->meta : "");
        fprintf(fp, "  %-34s ", names);
        const char *h = f->help, *at = strstr(h, "{threads}");
        if (at) fprintf(fp, "%.*s%s%s\n", (int)(at - h), h, threads, at + strlen("{threads}"));
        else fprintf(fp, "%s\n", h);
    }
    if (bit & C_BENCH)
        fprintf(fp, "A list is comma-separated (-p 128,512) or the flag is repeated; the table is llama-bench's,\n"
                    "ending with its build: line.\n");
}

static bool parse_ll(const char *flag, const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "error: %s takes an integer in %lld..%lld, got '%s'\n", flag, lo, hi, s);
        return false;
    }
    *out = v;
    return true;
}

static bool parse_float(const char *flag, const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || *end || end == s || !isfinite(v)) {
        fprintf(stderr, "error: %s expects a number, got '%s'\n", flag, s);
        return false;
    }
    *out = v;
    return true;
}

static bool kv_type_of(const char *s, int *out) {
    static const struct {
        const char *name;
        kvlm_kv_type t;
    } k[] = {{"f32", KVLM_KV_F32}, {"f16", KVLM_KV_F16}, {"q8_0", KVLM_KV_Q8_0}, {"q4_0", KVLM_KV_Q4_0}};
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        if (strcmp(s, k[i].name) == 0) {
            *out = (int)k[i].t;
            return true;
        }
    return false;
}

static bool parse_kv_type(const char *flag, const char *s, kvlm_kv_type *out) {
    int t;
    if (!kv_type_of(s, &t)) {
        fprintf(stderr, "error: %s: unknown cache type '%s' (f32, f16, q8_0, q4_0)\n", flag, s);
        return false;
    }
    *out = (kvlm_kv_type)t;
    return true;
}

/* "128,512" appended to l (integers in lo..hi, or cache types) */
static bool parse_list(const char *flag, const char *s, bool types, long long lo, long long hi, cli_list *l) {
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        char item[64];
        bool ok = n > 0 && n < sizeof item;
        if (ok) {
            memcpy(item, p, n);
            item[n] = '\0';
        }
        int v = 0;
        if (ok && types) {
            ok = kv_type_of(item, &v);
        } else if (ok) {
            char *end;
            errno = 0;
            long long x = strtoll(item, &end, 10);
            ok = !errno && !*end && x >= lo && x <= hi;
            v = (int)x;
        }
        if (!ok) {
            if (types) fprintf(stderr, "error: %s takes a comma-separated list of f32, f16, q8_0, q4_0, got '%s'\n", flag, s);
            else fprintf(stderr, "error: %s takes a comma-separated list of integers in %lld..%lld, got '%s'\n", flag, lo, hi, s);
            return false;
        }
        if (l->n == CLI_MAX_LIST) {
            fprintf(stderr, "error: %s: at most %d values\n", flag, CLI_MAX_LIST);
            return false;
        }
        l->v[l->n++] = v;
        if (!comma) return true;
        p = comma + 1;
    }
}

/* llama.cpp's TOKEN_ID(+/-)BIAS: 15043+1, 15043-0.5, 2-inf */
static bool parse_bias(const char *flag, const char *s, cli_args *a) {
    char *end;
    errno = 0;
    long tok = strtol(s, &end, 10);
    const char sign = *end;
    float bias = 0;
    bool ok = end != s && !errno && tok >= 0 && tok <= INT32_MAX && (sign == '+' || sign == '-') && end[1];
    if (ok) {
        const char *v = end + 1;
        if (strcmp(v, "inf") == 0 || strcmp(v, "infinity") == 0) {
            bias = INFINITY;
        } else {
            char *e2;
            errno = 0;
            bias = strtof(v, &e2);
            ok = !errno && !*e2 && isfinite(bias) && !(v[0] == '+' || v[0] == '-');
        }
        if (sign == '-') bias = -bias;
    }
    if (!ok) {
        fprintf(stderr, "error: %s takes TOKEN_ID(+|-)BIAS (15043+1, 15043-1, 2-inf), got '%s'\n", flag, s);
        return false;
    }
    if (a->n_bias == CLI_MAX_BIAS) {
        fprintf(stderr, "error: at most %d %s values\n", CLI_MAX_BIAS, flag);
        return false;
    }
    a->bias[a->n_bias++] = (kvlm_logit_bias){(kvlm_token)tok, bias};
    return true;
}

static uint32_t random_seed(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
    x ^= (uint64_t)clock() << 17;
    /* splitmix64's finalizer */
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    return (uint32_t)(x % 0xFFFFFFFFull); /* never 4294967295, which means "random" */
}

bool cli_parse(int argc, char **argv, int first, cli_args *a) {
    memset(a, 0, sizeof *a);
    a->cmd = first >= 2 ? argv[first - 1] : "";
    const unsigned bit = cmd_bit(a->cmd);
    a->reps = 5;
    a->sampling = kvlm_sampling_default_params();
    a->sampling.temperature = 0.0f; /* greedy unless --temp or a sampling flag */
    a->sp = kvlm_session_default_params();
    /* sentinels, resolved after the loop: whether -n, --overflow and --keep were given */
    a->n_predict = INT32_MIN;
    a->sp.overflow = (kvlm_overflow)-1;
    a->sp.n_keep = -1;
    kvlm_cache_params *cp = &a->sp.cache_params;
    bool sampling_flag = false;
    /* the argv strings that escapes are processed in (-p, --system, --stop) */
    char *esc[CLI_MAX_STOP + 2];
    int n_esc = 0;
    for (int i = first; i < argc; i++) {
        const char *arg = argv[i];
        bool exists = false;
        const flag_spec *f = arg[0] == '-' && arg[1] ? find_flag(arg, bit, &exists) : NULL;
        if (!f) {
            if (arg[0] == '-' && arg[1]) {
                if (exists) fprintf(stderr, "error: kvlm %s does not take %s (kvlm %s --help lists its flags)\n", a->cmd, arg, a->cmd);
                else fprintf(stderr, "error: unknown flag '%s'\n", arg);
                return false;
            }
            fprintf(stderr, "error: unexpected argument '%s' (kvlm %s --help lists the flags)\n", arg, a->cmd);
            return false;
        }
        char *v = NULL;
        long long iv = 0;
        float fv = 0;
        if (f->kind != V_NONE) {
            if (i + 1 >= argc) {
                fprintf(stderr, "error: %s needs a value\n", arg);
                return false;
            }
            v = argv[++i];
            if (f->kind == V_INT && !parse_ll(arg, v, f->lo, f->hi, &iv)) return false;
            if (f->kind == V_FLOAT && !parse_float(arg, v, &fv)) return false;
        }
        switch (f->id) {
        case F_HELP: a->help = true; break;
        case F_MODEL: a->model = v; break;
        case F_PROMPT:
            if (f->kind == V_LIST) {
                if (!parse_list(arg, v, false, f->lo, f->hi, &a->b_prompt)) return false;
            } else {
                a->prompt = v;
                esc[n_esc++] = v;
            }
            break;
        case F_FILE: a->file = v; break;
        case F_STDIN: a->use_stdin = true; break;
        case F_NO_ESCAPE: a->no_escape = true; break;
        case F_TOKENS: a->tokens = v; break;
        case F_DUMP: a->dump_logits = v; break;
        case F_GREEDY: a->greedy = (int)iv; break;
        case F_CHUNK: a->chunk = (int)iv; break;
        case F_CHUNKS: a->n_chunks = (int)iv; break;
        case F_SESSION: a->session = v; break;
        case F_SESSION_OVERWRITE: a->session_overwrite = true; break;
        case F_TEMPLATE: a->chat_template = v; break;
        case F_SYSTEM:
            a->system = v;
            esc[n_esc++] = v;
            break;
        case F_NPRED:
            if (f->kind == V_LIST) {
                if (!parse_list(arg, v, false, f->lo, f->hi, &a->b_gen)) return false;
            } else {
                a->n_predict = (int)iv;
            }
            break;
        case F_THREADS:
            if (f->kind == V_LIST) {
                if (!parse_list(arg, v, false, f->lo, f->hi, &a->b_threads)) return false;
                a->n_threads = a->b_threads.v[0];
            } else {
                a->n_threads = (int)iv;
            }
            a->threads_set = true;
            break;
        case F_CTX: a->n_ctx = (int)iv; break;
        case F_TEMP:
            a->sampling.temperature = fv;
            a->temp_set = true;
            break;
        case F_TOPK: a->sampling.top_k = (int32_t)iv; sampling_flag = true; break;
        case F_TOPP: a->sampling.top_p = fv; sampling_flag = true; break;
        case F_MINP: a->sampling.min_p = fv; sampling_flag = true; break;
        case F_REPPEN: a->sampling.repeat_penalty = fv; sampling_flag = true; break;
        case F_LASTN: a->sampling.penalty_last_n = (int32_t)iv; sampling_flag = true; break;
        case F_FREQ: a->sampling.frequency_penalty = fv; sampling_flag = true; break;
        case F_PRES: a->sampling.presence_penalty = fv; sampling_flag = true; break;
        case F_SEED:
            sampling_flag = true;
            if (iv == -1 || iv == 4294967295LL) {
                a->seed_set = false; /* llama.cpp's LLAMA_DEFAULT_SEED: random */
            } else {
                a->sampling.seed = (uint64_t)iv;
                a->seed_set = true;
            }
            break;
        case F_BIAS:
            if (!parse_bias(arg, v, a)) return false;
            break;
        case F_STOP:
            if (a->n_stop == CLI_MAX_STOP) {
                fprintf(stderr, "error: at most %d --stop strings\n", CLI_MAX_STOP);
                return false;
            }
            a->stop[a->n_stop++] = v;
            esc[n_esc++] = v;
            break;
        case F_IGNORE_EOS: a->ignore_eos = true; break;
        case F_GRAMMAR: a->grammar = v; break;
        case F_GRAMMAR_FILE: a->grammar_file = v; break;
        case F_JSON_SCHEMA: a->json_schema = v; break;
        case F_JSON_SCHEMA_FILE: a->json_schema_file = v; break;
        case F_JSON_OBJECT: a->json_object = true; break;
        case F_NPROBS: a->n_probs = (int)iv; break;
        case F_TIMEOUT: a->timeout_s = fv; break;
        case F_NO_BOS: a->no_bos = true; break;
        case F_NO_PARSE_SPECIAL: a->no_parse_special = true; break;
        case F_IDS: a->ids = true; break;
        case F_SHOW_COUNT: a->show_count = true; break;
        case F_OUTPUT:
            if (strcmp(v, "md") == 0) a->output = CLI_OUT_MD;
            else if (strcmp(v, "csv") == 0) a->output = CLI_OUT_CSV;
            else if (strcmp(v, "json") == 0) a->output = CLI_OUT_JSON;
            else if (strcmp(v, "jsonl") == 0) a->output = CLI_OUT_JSONL;
            else {
                fprintf(stderr, "error: %s: '%s' is not md, csv, json or jsonl\n", arg, v);
                return false;
            }
            break;
        case F_JSON: a->output = CLI_OUT_JSON; break;
        case F_REPS: a->reps = (int)iv; break;
        case F_DEPTH:
            if (!parse_list(arg, v, false, f->lo, f->hi, &a->b_depth)) return false;
            break;
        case F_CPU_TIME: a->cpu_time = true; break;
        case F_INCREMENTAL: a->incremental = true; break;
        case F_BATCH: a->batch = true; break;
        case F_TOKENIZE: a->tokenize = true; break;
        case F_KV_STATS: a->kv_stats = true; break;
        case F_VERBOSE: a->verbose = true; break;
        case F_CTK:
        case F_CTV:
            if (f->kind == V_TYPES) {
                if (!parse_list(arg, v, true, 0, 0, f->id == F_CTK ? &a->b_type_k : &a->b_type_v)) return false;
            } else if (!parse_kv_type(arg, v, f->id == F_CTK ? &cp->type_k : &cp->type_v)) {
                return false;
            }
            break;
        case F_COMPRESS_TYPE:
            if (!parse_kv_type(arg, v, &a->sp.compress_type)) return false;
            break;
        case F_OVERFLOW:
            if (strcmp(v, "error") == 0) a->sp.overflow = KVLM_OVERFLOW_ERROR;
            else if (strcmp(v, "shift") == 0) a->sp.overflow = KVLM_OVERFLOW_SHIFT;
            else if (strcmp(v, "sliding") == 0) a->sp.overflow = KVLM_OVERFLOW_SLIDING;
            else if (strcmp(v, "ring") == 0) a->sp.overflow = KVLM_OVERFLOW_RING;
            else {
                fprintf(stderr, "error: --overflow: '%s' is not error, shift, sliding or ring\n", v);
                return false;
            }
            break;
        case F_GROWTH:
            if (strcmp(v, "factor") == 0) cp->growth = KVLM_GROWTH_FACTOR;
            else if (strcmp(v, "linear") == 0) cp->growth = KVLM_GROWTH_LINEAR;
            else if (strcmp(v, "adaptive") == 0) cp->growth = KVLM_GROWTH_ADAPTIVE;
            else {
                fprintf(stderr, "error: --kv-growth: '%s' is not factor, linear or adaptive\n", v);
                return false;
            }
            break;
        case F_KEEP: a->sp.n_keep = (int32_t)iv; break;
        case F_SINK: a->sp.n_sink = (int32_t)iv; break;
        case F_WINDOW: a->sp.window = (int32_t)iv; break;
        case F_COMPRESS_AFTER: a->sp.compress_after = (int32_t)iv; break;
        case F_PAGE_TOKENS: cp->page_tokens = (int32_t)iv; break;
        case F_GROWTH_FACTOR: cp->growth_factor = fv; break;
        case F_KV_INITIAL: cp->initial_tokens = iv; break;
        case F_KV_MAX: cp->max_tokens = iv; break;
        case F_NO_PREFIX: cp->prefix_sharing = false; break;
        case F_PREFETCH: cp->prefetch = true; break;
        case F_KV_DISK:
            cp->disk_tier = true;
            cp->disk_dir = v;
            break;
        case F_KV_DISK_BUDGET: cp->disk_bytes_budget = iv; break;
        case F_MODEL_DRAFT: a->model_draft = v; break;
        case F_DRAFT_MAX: a->draft_max = (int)iv; break;
        case F_DRAFT_NGRAM: a->draft_ngram = (int)iv; break;
        case F_BEAMS: a->beams = (int)iv; break;
        case F_LENGTH_PENALTY:
            if (!(fv >= -16.0f && fv <= 16.0f)) {
                fprintf(stderr, "error: --length-penalty must be between -16 and 16\n");
                return false;
            }
            a->length_penalty = fv;
            a->length_penalty_set = true;
            break;
        case F_BEAMS_ALL: a->beams_all = true; break;
        }
    }
    a->n_predict_set = a->n_predict != INT32_MIN;
    if (!a->n_predict_set) a->n_predict = 32;
    a->overflow_set = (int)a->sp.overflow != -1;
    if (!a->overflow_set) a->sp.overflow = KVLM_OVERFLOW_ERROR;
    a->keep_set = a->sp.n_keep >= 0;
    if (!a->keep_set) a->sp.n_keep = 0;
    if (!a->threads_set) a->n_threads = cli_default_threads();
    if (a->draft_max && !a->model_draft && !a->draft_ngram && !a->help) {
        fprintf(stderr, "error: --draft-max needs a draft source: -md FILE or --draft-ngram N\n");
        return false;
    }
    if ((a->grammar != NULL) + (a->grammar_file != NULL) + (a->json_schema != NULL) + (a->json_schema_file != NULL) +
            a->json_object > 1) {
        fprintf(stderr, "error: --grammar, --grammar-file, --json-schema, --json-schema-file and -j are each a "
                        "grammar; give one (two grammars were given)\n");
        return false;
    }
    if (a->model_draft && a->draft_ngram) {
        fprintf(stderr, "error: -md and --draft-ngram are two draft sources; give one\n");
        return false;
    }
    if ((a->model_draft || a->draft_ngram) && !a->draft_max) a->draft_max = 8;
    if (a->beams > 1 && a->draft_max && !a->help) {
        fprintf(stderr, "error: --beams and speculative decoding (-md, --draft-ngram) do not combine\n");
        return false;
    }
    if ((a->length_penalty_set || a->beams_all) && a->beams < 2 && !a->help) {
        fprintf(stderr, "error: %s needs --beams N (N >= 2)\n", a->beams_all ? "--beams-all" : "--length-penalty");
        return false;
    }
    if (a->beams > 1 && (a->grammar || a->grammar_file || a->json_schema || a->json_schema_file || a->json_object) &&
        !a->help) {
        fprintf(stderr, "error: --beams does not take a grammar (--grammar, --grammar-file, --json-schema, "
                        "--json-schema-file, -j) yet\n");
        return false;
    }
    if (a->beams > 1 && sampling_flag && !a->help) {
        fprintf(stderr, "error: --beams searches by log-probability; sampling flags (--temp, --top-k, ...) do not apply\n");
        return false;
    }
    if (!a->length_penalty_set) a->length_penalty = 1.0f;
    if (!a->no_escape)
        for (int i = 0; i < n_esc; i++) cli_process_escapes(esc[i]);
    for (int i = 0; i < a->n_stop; i++)
        if (!a->stop[i][0]) {
            fprintf(stderr, "error: --stop needs a non-empty string\n");
            return false;
        }
    if (a->n_bias) {
        a->sampling.logit_bias = a->bias;
        a->sampling.n_logit_bias = a->n_bias;
    }
    /* as llama.cpp: sampling flags sample at its default temperature unless --temp says otherwise */
    if (sampling_flag && !a->temp_set) {
        a->sampling.temperature = 0.8f;
        a->temp_defaulted = true;
    }
    if (!a->seed_set) {
        a->sampling.seed = random_seed();
        a->seed_random = true;
    }
    return true;
}
