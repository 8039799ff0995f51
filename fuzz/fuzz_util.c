#define _GNU_SOURCE /* memfd_create */
#include "fuzz_util.h"

#include "kvlm.h"

#include <sys/mman.h>
#include <unistd.h>

const char *fuzz_memfile(const void *data, size_t size) {
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("kvlm-fuzz", MFD_CLOEXEC);
        if (fd < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0) abort();
    size_t off = 0;
    while (off < size) {
        ssize_t w = pwrite(fd, (const char *)data + off, size - off, (off_t)off);
        if (w <= 0) abort();
        off += (size_t)w;
    }
    return path;
}

const char *fuzz_model_path(const char *rel) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", KVLM_MODELS_DIR, rel);
    return buf;
}

kvlm_model *fuzz_load_model(const char *rel, bool vocab_only, const char *target) {
    kvlm_model_params mp = kvlm_model_default_params();
    mp.n_threads = 1;
    mp.vocab_only = vocab_only;
    kvlm_model *m = NULL;
    kvlm_error err;
    if (kvlm_model_load(fuzz_model_path(rel), &mp, &m, &err) != KVLM_OK) {
        fprintf(stderr, "%s: %s: %s\n", target, rel, err.msg);
        abort();
    }
    return m;
}
