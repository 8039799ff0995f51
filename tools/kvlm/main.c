/* kvlm: the command-line tool. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "kvlm.h"

#if defined(__clang__)
#define KVLM_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define KVLM_COMPILER "gcc " __VERSION__
#else
#define KVLM_COMPILER "unknown"
#endif

/* kvlm --version: the version, the commit it was configured from, the compiler and the kernels
 * the dispatch picks on this CPU. */
static int print_version(void) {
    printf("kvlm %s\n", kvlm_version());
    printf("commit: %s (%d)\n", KVLM_BUILD_COMMIT, KVLM_BUILD_NUMBER);
    printf("compiler: %s\n", KVLM_COMPILER);
    printf("cpu: %s\n", kvlm_cpu_features());
    return 0;
}

int cmd_serve(int argc, char **argv); /* serve/cmd_serve.c */

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: kvlm COMMAND [options]\n"
            "commands:\n"
            "  run         -m MODEL -p PROMPT [-n N]      generate text (greedy unless --temp or a sampling flag)\n"
            "  chat        -m MODEL [--system TEXT]       interactive multi-turn chat\n"
            "  eval        -m MODEL (-p TEXT | -f FILE | --tokens \"1 2 3\") [--greedy N] [--dump-logits OUT]\n"
            "              evaluate a prompt as one batch, then N greedy tokens one at a time\n"
            "  tokenize    -m MODEL (-p TEXT | -f FILE | --stdin) [--ids] [--show-count]\n"
            "  inspect     -m MODEL                       GGUF metadata and hyperparameters\n"
            "  perplexity  -m MODEL -f TEXT [-c CTX]      perplexity of a text\n"
            "  bench       -m MODEL [-p 128] [-n 64] [-t T] [-o md|csv|json|jsonl]   llama-bench's tests\n"
            "  synth       OUT --arch A --dim D --layers L --heads H --ff F --vocab V --type T   random-weight model\n"
            "  serve       -m MODEL [--host 127.0.0.1] [--port 8080] [--parallel N]   OpenAI-compatible HTTP server\n"
            "  quantize    IN OUT TYPE [options]          quantize a GGUF as llama-quantize does (Q4_K_M, Q8_0, 7, ...)\n"
            "Every command takes -h for exactly its options and their defaults; kvlm --version prints the\n"
            "version, commit, compiler and the CPU kernels in use.\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--version") == 0) return print_version();
    if (strcmp(cmd, "run") == 0) return cmd_run(argc, argv);
    if (strcmp(cmd, "eval") == 0) return cmd_eval(argc, argv);
    if (strcmp(cmd, "tokenize") == 0) return cmd_tokenize(argc, argv);
    if (strcmp(cmd, "inspect") == 0) return cmd_inspect(argc, argv);
    if (strcmp(cmd, "chat") == 0) return cmd_chat(argc, argv);
    if (strcmp(cmd, "perplexity") == 0) return cmd_perplexity(argc, argv);
    if (strcmp(cmd, "bench") == 0) return cmd_bench(argc, argv);
    if (strcmp(cmd, "synth") == 0) return cmd_synth(argc, argv);
    if (strcmp(cmd, "quantize") == 0) return cmd_quantize(argc, argv);
    if (strcmp(cmd, "serve") == 0) return cmd_serve(argc, argv);
    fprintf(stderr, "error: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
