/* The disk tier of the prefix cache (src/kv/kv_disk.c): pages evicted from memory come back from
 * disk byte-identical (logits bit-identical to recomputing), across a new cache and a new process;
 * files that do not verify are removed and counted, links and FIFOs are never followed, the budget
 * holds, one directory has one user, concurrent sessions share a spilled prefix, and a SIGKILL while
 * spilling leaves a directory the next cache uses. */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "api/session_impl.h"
#include "core/dtype.h"
#include "kv/kv_disk.h"
#include "kvlm.h"
#include "test_util.h"

#define SYNTH KVLM_MODELS_DIR "/llama/synth15M-q8_0.gguf"
#define AIDREAMS KVLM_MODELS_DIR "/llama/aidreams260K-f32.gguf"
#define KVLM KVLM_BIN_DIR "/kvlm"

static kvlm_model *g_m;
static int32_t g_V;
static char g_out[1 << 16];
#define run(...) run_into(g_out, sizeof g_out, __VA_ARGS__)

enum { NT = 200, NPAGES = 6 }; /* a 200-token prompt: 6 full pages of 32 are attachable (one token left) */

static void copy_str(char *dst, size_t cap, const char *src) {
    size_t l = strlen(src);
    if (l >= cap) l = cap - 1;
    memcpy(dst, src, l);
    dst[l] = '\0';
}

static void tmpdir(char *buf, size_t n, const char *what) {
    snprintf(buf, n, "/tmp/kvlm-test-disk-%d-%s", (int)getpid(), what);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", buf);
    assert_int_equal(system(cmd), 0);
}

static void rmdir_all(const char *dir) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static kvlm_cache *disk_cache(const char *dir, int64_t mem_budget, int64_t disk_budget) {
    kvlm_cache_params cp = kvlm_cache_default_params();
    cp.cached_bytes_budget = mem_budget;
    cp.disk_tier = true;
    cp.disk_dir = dir;
    cp.disk_bytes_budget = disk_budget;
    kvlm_cache *c = NULL;
    kvlm_error err;
    if (kvlm_cache_new(g_m, &cp, &c, &err) != KVLM_OK) fail_msg("cache_new: %s", err.msg);
    return c;
}

static kvlm_kv_stats stats(kvlm_cache *c) {
    kvlm_kv_stats st;
    kvlm_cache_get_stats(c, &st);
    return st;
}

/* Evaluates toks[0, n) (KVLM_AUTO) in a new session on c and checks the last logits are those of a
 * from-scratch evaluation, bit for bit; returns the tokens the session reused. */
static int64_t eval_check(kvlm_cache *c, const kvlm_token *toks, int32_t n) {
    kvlm_session_params sp = kvlm_session_default_params();
    sp.n_ctx = 512;
    sp.cache = c;
    kvlm_session *s = session_with(g_m, &sp);
    float *a = malloc((size_t)g_V * sizeof *a), *b = malloc((size_t)g_V * sizeof *b);
    kvlm_error err;
    if (kvlm_eval(s, toks, n, KVLM_AUTO, a, false, &err) != KVLM_OK) fail_msg("eval: %s", err.msg);
    if (kvlm_eval_full(g_m, toks, n, b, false, &err) != KVLM_OK) fail_msg("eval_full: %s", err.msg);
    assert_memory_equal(a, b, (size_t)g_V * sizeof *a);
    kvlm_kv_stats st;
    kvlm_session_get_stats(s, &st);
    kvlm_session_free(s);
    free(a);
    free(b);
    return st.hits;
}

typedef struct dir_info {
    int pages, tmps, others;
    int64_t bytes;
} dir_info;

static dir_info scan(const char *dir) {
    dir_info di = {0, 0, 0, 0};
    DIR *d = opendir(dir);
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d));) {
        const char *nm = e->d_name;
        if (nm[0] == '.') continue;
        struct stat sb;
        assert_int_equal(fstatat(dirfd(d), nm, &sb, AT_SYMLINK_NOFOLLOW), 0);
        const size_t l = strlen(nm);
        if (l > 7 && strcmp(nm + l - 7, ".kvpage") == 0 && S_ISREG(sb.st_mode)) {
            di.pages++;
            di.bytes += sb.st_size;
        } else if (strncmp(nm, "tmp.", 4) == 0) {
            di.tmps++;
        } else if (strcmp(nm, "lock") != 0 && strcmp(nm, "index") != 0) {
            di.others++;
        }
    }
    closedir(d);
    return di;
}

typedef struct file_img {
    uint8_t *p;
    size_t n;
} file_img;

static file_img read_path(const char *path) {
    file_img f = {NULL, 0};
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    f.n = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    f.p = malloc(f.n);
    assert_int_equal(fread(f.p, 1, f.n, fp), f.n);
    fclose(fp);
    return f;
}

static void write_path(const char *path, const uint8_t *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(p, 1, n, fp), n);
    fclose(fp);
}

/* Applies edit to every page file of dir (the file's path and image; it may rewrite or rename). */
typedef void (*edit_fn)(const char *dir, const char *name, file_img *f);
static int edit_pages(const char *dir, edit_fn edit) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    char names[64][64];
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) && n < 64;) {
        const size_t l = strlen(e->d_name);
        if (l > 7 && strcmp(e->d_name + l - 7, ".kvpage") == 0) copy_str(names[n++], 64, e->d_name);
    }
    closedir(d);
    for (int i = 0; i < n; i++) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        file_img f = read_path(path);
        edit(dir, names[i], &f);
        free(f.p);
    }
    return n;
}

static void reseal(file_img *f) {
    const uint64_t sum = XXH3_64bits(f->p, f->n - 8);
    memcpy(f->p + f->n - 8, &sum, 8);
}

/* A directory holding the NPAGES pages of toks (written by a cache that is then freed). */
static void fill_dir(const char *dir, const kvlm_token *toks) {
    kvlm_cache *c = disk_cache(dir, 256 << 20, 1 << 30);
    assert_int_equal(eval_check(c, toks, NT), 0);
    kvlm_cache_free(c); /* the pages still cached are written */
    const dir_info di = scan(dir);
    assert_int_equal(di.pages, NPAGES);
    assert_int_equal(di.tmps, 0);
}

/* ------------------------------------------------------------ pool level: the bytes come back */

static void test_page_bytes_roundtrip(void **state) {
    (void)state;
    char dir[128];
    tmpdir(dir, sizeof dir, "bytes");
    kvlm_cache_params cp = kvlm_cache_default_params();
    cp.cached_bytes_budget = 0; /* a released indexed page goes straight to the tier */
    cp.disk_tier = true;
    cp.disk_dir = dir;
    const int32_t n_layer = 3, kv_dim = 64;
    const uint64_t fp[2] = {0x1234, 0x5678};
    const uint32_t types[][2] = {{KV_F16, KV_F16}, {KV_Q8_0, KV_Q8_0}, {KV_F32, KV_Q4_0}};
    for (int pass = 0; pass < 2; pass++) { /* 0: written and read by one pool; 1: read by a new pool */
        kv_page_pool *p = NULL;
        kvlm_error err;
        assert_int_equal(kv_pool_create(n_layer, kv_dim, &cp, &p, &err), KVLM_OK);
        assert_int_equal(kv_pool_open_disk(p, fp, &err), KVLM_OK);
        for (int t = 0; t < 3; t++) {
            const kv_layout *l = kv_pool_layout(p, types[t][0], types[t][1]);
            assert_non_null(l);
            rng r = {0x9e3779b97f4a7c15ull + (uint64_t)t};
            uint8_t *want = malloc(l->page_bytes);
            for (uint64_t i = 0; i < l->page_bytes; i++) want[i] = (uint8_t)rng_u32(&r);
            int32_t toks[32];
            for (int i = 0; i < 32; i++) toks[i] = 100 * t + i;
            const uint64_t parent = 77 + (uint64_t)t, key = kv_page_key(parent, toks, 32);
            if (pass == 0) {
                kv_page *pg = kv_pool_alloc(p, l);
                assert_non_null(pg);
                memcpy(pg->data, want, l->page_bytes);
                kv_pool_index(p, pg, key, parent, toks);
                kv_pool_release(p, pg); /* no memory budget: spilled, then freed */
                kv_pool_disk_drain(p);
            }
            kvlm_kv_stats st;
            kv_pool_stats(p, &st);
            assert_int_equal(st.pages_cached, 0);
            kv_page *back = kv_pool_lookup(p, key, parent, toks, types[t][0], types[t][1]);
            assert_non_null(back);
            assert_memory_equal(back->data, want, l->page_bytes);
            /* another parent or other tokens: not that page */
            assert_null(kv_pool_lookup(p, key, parent + 1, toks, types[t][0], types[t][1]));
            kv_pool_release(p, back);
            free(want);
        }
        kvlm_kv_stats st;
        kv_pool_stats(p, &st);
        assert_int_equal(st.disk_hits, 3);
        assert_int_equal(st.disk_pages, 3);
        assert_int_equal(st.disk_writes, pass == 0 ? 3 : 0);
        assert_int_equal(st.disk_rejected, 0);
        kv_pool_destroy(p);
        /* another model (fingerprint) finds nothing it may use: the files are removed and counted */
    }
    kv_page_pool *p = NULL;
    kvlm_error err;
    const uint64_t other[2] = {0x1234, 0x5679};
    assert_int_equal(kv_pool_create(n_layer, kv_dim, &cp, &p, &err), KVLM_OK);
    assert_int_equal(kv_pool_open_disk(p, other, &err), KVLM_OK);
    kvlm_kv_stats st;
    kv_pool_stats(p, &st);
    assert_int_equal(st.disk_rejected, 3);
    assert_int_equal(st.disk_pages, 0);
    kv_pool_destroy(p);
    assert_int_equal(scan(dir).pages, 0);
    rmdir_all(dir);
}

/* ------------------------------------------------------------ through the model */

static void test_evict_then_hit(void **state) {
    (void)state;
    char dir[128];
    tmpdir(dir, sizeof dir, "evict");
    kvlm_token t[NT];
    seq(t, NT, g_V, 11);
    for (int variant = 0; variant < 2; variant++) {
        /* memory budget 0 (released pages are not kept) and one page (kept, then evicted LRU) */
        kvlm_cache *c = disk_cache(dir, variant == 0 ? 0 : 1, 1 << 30);
        assert_int_equal(eval_check(c, t, NT), 0);
        kv_pool_disk_drain(c->pool);
        kvlm_kv_stats st = stats(c);
        assert_int_equal(st.pages_cached, 0);
        assert_int_equal(st.disk_writes, NPAGES);
        assert_int_equal(st.disk_pages, NPAGES);
        /* the same prompt again: every full page but the last token's comes from disk */
        assert_int_equal(eval_check(c, t, NT), NPAGES * 32);
        st = stats(c);
        assert_int_equal(st.disk_hits, NPAGES);
        assert_int_equal(st.disk_writes, NPAGES); /* already there: not written again */
        assert_int_equal(st.disk_rejected, 0);
        /* a longer request with the same prefix, and one that differs in page 3 */
        kvlm_token u[NT + 40];
        memcpy(u, t, sizeof t);
        seq(u + NT, 40, g_V, 5);
        assert_int_equal(eval_check(c, u, NT + 40), NPAGES * 32);
        u[100] = u[100] == 7 ? 8 : 7;
        assert_int_equal(eval_check(c, u, NT + 40), 3 * 32);
        kvlm_cache_free(c);
        rmdir_all(dir);
    }
}

static void test_restart_then_hit(void **state) {
    (void)state;
    char dir[128];
    tmpdir(dir, sizeof dir, "restart");
    kvlm_token t[NT];
    seq(t, NT, g_V, 12);
    fill_dir(dir, t);
    /* a new cache on the directory: re-indexed, the prefix answered from disk */
    kvlm_cache *c = disk_cache(dir, 256 << 20, 1 << 30);
    kvlm_kv_stats st = stats(c);
    assert_int_equal(st.disk_pages, NPAGES);
    assert_int_equal(st.disk_bytes, scan(dir).bytes);
    assert_int_equal(st.disk_rejected, 0);
    assert_int_equal(eval_check(c, t, NT), NPAGES * 32);
    assert_int_equal(stats(c).disk_hits, NPAGES);
    kvlm_cache_free(c);
    /* a session with a pool of its own takes the directory too */
    kvlm_session_params sp = kvlm_session_default_params();
    sp.n_ctx = 512;
    sp.cache_params.disk_tier = true;
    sp.cache_params.disk_dir = dir;
    kvlm_session *s = session_with(g_m, &sp);
    float *a = malloc((size_t)g_V * 4), *b = malloc((size_t)g_V * 4);
    kvlm_error err;
    assert_int_equal(kvlm_eval(s, t, NT, KVLM_AUTO, a, false, &err), KVLM_OK);
    assert_int_equal(kvlm_eval_full(g_m, t, NT, b, false, &err), KVLM_OK);
    assert_memory_equal(a, b, (size_t)g_V * 4);
    kvlm_session_get_stats(s, &st);
    assert_int_equal(st.disk_hits, NPAGES);
    /* its fork has a pool of its own without the directory (which the source holds) */
    kvlm_session *f = NULL;
    assert_int_equal(kvlm_session_fork(s, &f, &err), KVLM_OK);
    kvlm_session_free(f);
    kvlm_session_free(s);
    free(a);
    free(b);
    rmdir_all(dir);
}

static void edit_truncate(const char *dir, const char *name, file_img *f) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    write_path(path, f->p, f->n - 100);
}
static void edit_foreign(const char *dir, const char *name, file_img *f) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    kv_disk_header h;
    memcpy(&h, f->p, sizeof h);
    h.fingerprint[1] ^= 1; /* another model, the file otherwise sound */
    memcpy(f->p, &h, sizeof h);
    reseal(f);
    write_path(path, f->p, f->n);
}
static void edit_type(const char *dir, const char *name, file_img *f) {
    /* claims Q8_0 pages, in its name and header, sealed: not the size such a page has */
    char path[512], path2[512], name2[64];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(name2, sizeof name2, "%.16s-0808.kvpage", name);
    snprintf(path2, sizeof path2, "%s/%s", dir, name2);
    kv_disk_header h;
    memcpy(&h, f->p, sizeof h);
    h.type_k = h.type_v = KV_Q8_0;
    memcpy(f->p, &h, sizeof h);
    reseal(f);
    write_path(path2, f->p, f->n);
    unlink(path);
}
static void edit_payload(const char *dir, const char *name, file_img *f) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    f->p[f->n / 2] ^= 0x40; /* inside the compressed data: only the checksum sees it */
    write_path(path, f->p, f->n);
}
static void edit_tokens(const char *dir, const char *name, file_img *f) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int32_t tok;
    memcpy(&tok, f->p + sizeof(kv_disk_header) + 4 * 5, 4);
    tok ^= 1; /* tokens that do not hash to the key in the name, sealed */
    memcpy(f->p + sizeof(kv_disk_header) + 4 * 5, &tok, 4);
    reseal(f);
    write_path(path, f->p, f->n);
}

static void test_bad_files(void **state) {
    (void)state;
    char dir[128];
    tmpdir(dir, sizeof dir, "bad");
    kvlm_token t[NT];
    seq(t, NT, g_V, 13);
    const edit_fn at_open[] = {edit_truncate, edit_foreign, edit_type, edit_tokens};
    for (size_t k = 0; k < sizeof at_open / sizeof at_open[0]; k++) {
        fill_dir(dir, t);
        assert_int_equal(edit_pages(dir, at_open[k]), NPAGES);
        /* seen when the directory is indexed: each removed and counted, none used */
        kvlm_cache *c = disk_cache(dir, 256 << 20, 1 << 30);
        kvlm_kv_stats st = stats(c);
        assert_int_equal(st.disk_rejected, NPAGES);
        assert_int_equal(st.disk_pages, 0);
        assert_int_equal(scan(dir).pages, 0);
        assert_int_equal(eval_check(c, t, NT), 0);
        assert_int_equal(stats(c).disk_hits, 0);
        kvlm_cache_free(c);
        rmdir_all(dir);
    }
    /* a corrupted payload passes the header check; the first read of it fails the checksum: removed,
       counted, recomputed (and the prefix stops there, so only that file is read) */
    fill_dir(dir, t);
    assert_int_equal(edit_pages(dir, edit_payload), NPAGES);
    kvlm_cache *c = disk_cache(dir, 256 << 20, 1 << 30);
    assert_int_equal(stats(c).disk_pages, NPAGES);
    assert_int_equal(eval_check(c, t, NT), 0);
    kvlm_kv_stats st = stats(c);
    assert_int_equal(st.disk_rejected, 1);
    assert_int_equal(st.disk_hits, 0);
    assert_int_equal(st.disk_pages, NPAGES - 1);
    assert_int_equal(scan(dir).pages, NPAGES - 1);
    kvlm_cache_free(c);
    /* garbage of a killed write and files that are not ours */
    char path[512];
    snprintf(path, sizeof path, "%s/tmp.999999.1", dir);
    write_path(path, (const uint8_t *)"partial", 7);
    snprintf(path, sizeof path, "%s/notes.txt", dir);
    write_path(path, (const uint8_t *)"mine", 4);
    c = disk_cache(dir, 256 << 20, 1 << 30);
    const dir_info di = scan(dir);
    assert_int_equal(di.tmps, 0);
    assert_int_equal(di.others, 1); /* left alone */
    kvlm_cache_free(c);
    rmdir_all(dir);
}

static void test_special_files(void **state) {
    (void)state;
    char dir[128], outside[160], path[512], path2[512];
    tmpdir(dir, sizeof dir, "special");
    kvlm_token t[NT];
    seq(t, NT, g_V, 14);
    fill_dir(dir, t);
    /* two page files replaced: one by a link to a sound copy outside, one by a FIFO */
    snprintf(outside, sizeof outside, "%s-outside", dir);
    rmdir_all(outside);
    assert_int_equal(mkdir(outside, 0700), 0);
    DIR *d = opendir(dir);
    assert_non_null(d);
    char names[2][64];
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) && n < 2;)
        if (strstr(e->d_name, ".kvpage")) copy_str(names[n++], 64, e->d_name);
    closedir(d);
    assert_int_equal(n, 2);
    snprintf(path, sizeof path, "%s/%s", dir, names[0]);
    snprintf(path2, sizeof path2, "%s/%s", outside, names[0]);
    assert_int_equal(rename(path, path2), 0);
    assert_int_equal(symlink(path2, path), 0);
    snprintf(path, sizeof path, "%s/%s", dir, names[1]);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(mkfifo(path, 0600), 0);
    const file_img before = read_path(path2);
    kvlm_cache *c = disk_cache(dir, 256 << 20, 1 << 30); /* a FIFO opened would block here */
    kvlm_kv_stats st = stats(c);
    assert_int_equal(st.disk_pages, NPAGES - 2);
    assert_int_equal(st.disk_rejected, 0);
    eval_check(c, t, NT);
    kvlm_cache_free(c);
    /* the link was never followed (what it points to is untouched); writing those two pages at the end
       renamed regular files over the link and the FIFO (a rename replaces a name, it opens nothing) */
    const file_img after = read_path(path2);
    assert_int_equal(before.n, after.n);
    assert_memory_equal(before.p, after.p, before.n);
    free(before.p);
    free(after.p);
    struct stat sb;
    assert_int_equal(lstat(path, &sb), 0);
    assert_true(S_ISREG(sb.st_mode));
    snprintf(path, sizeof path, "%s/%s", dir, names[0]);
    assert_int_equal(lstat(path, &sb), 0);
    assert_true(S_ISREG(sb.st_mode));
    c = disk_cache(dir, 256 << 20, 1 << 30);
    assert_int_equal(stats(c).disk_pages, NPAGES);
    assert_int_equal(eval_check(c, t, NT), NPAGES * 32);
    kvlm_cache_free(c);
    /* the directory itself as a link: refused */
    char link[200];
    snprintf(link, sizeof link, "%s-link", dir);
    unlink(link);
    assert_int_equal(symlink(dir, link), 0);
    kvlm_cache_params cp = kvlm_cache_default_params();
    cp.disk_tier = true;
    cp.disk_dir = link;
    kvlm_error err;
    assert_int_equal(kvlm_cache_new(g_m, &cp, &c, &err), KVLM_ERR_IO);
    assert_non_null(strstr(err.msg, "link"));
    unlink(link);
    rmdir_all(dir);
    rmdir_all(outside);
}

static void test_budget(void **state) {
    (void)state;
    char dir[128];
    tmpdir(dir, sizeof dir, "budget");
    enum { N = 330 }; /* 10 full pages */
    kvlm_token t[N];
    seq(t, N, g_V, 15);
    kvlm_cache *c = disk_cache(dir, 0, 1 << 30);
    eval_check(c, t, N);
    kv_pool_disk_drain(c->pool);
    kvlm_kv_stats st = stats(c);
    assert_int_equal(st.disk_pages, 10);
    const int64_t per_page = st.disk_bytes / 10;
    kvlm_cache_free(c);
    rmdir_all(dir);
    /* room for 3.5 pages: never more than that on disk, the oldest removed */
    const int64_t budget = per_page * 7 / 2;
    c = disk_cache(dir, 0, budget);
    eval_check(c, t, N);
    kv_pool_disk_drain(c->pool);
    st = stats(c);
    dir_info di = scan(dir);
    assert_true(st.disk_bytes <= budget);
    assert_int_equal(st.disk_bytes, di.bytes);
    assert_int_equal(st.disk_pages, di.pages);
    assert_int_equal(st.disk_pages, 3);
    assert_int_equal(st.disk_writes, 10);
    assert_int_equal(st.disk_evictions, 7);
    /* the newest pages are kept: the prompt's first pages are gone, so nothing is attached */
    assert_int_equal(eval_check(c, t, N), 0);
    kvlm_cache_free(c);
    /* a smaller budget at the next start trims to it */
    c = disk_cache(dir, 0, per_page * 3 / 2);
    st = stats(c);
    assert_int_equal(st.disk_pages, 1);
    assert_int_equal(st.disk_evictions, 2);
    assert_int_equal(scan(dir).pages, 1);
    kvlm_cache_free(c);
    rmdir_all(dir);
}

static void test_one_user_per_dir(void **state) {
    (void)state;
    char dir[128];
    tmpdir(dir, sizeof dir, "lock");
    kvlm_cache *c = disk_cache(dir, 0, 1 << 30);
    kvlm_cache_params cp = kvlm_cache_default_params();
    cp.disk_tier = true;
    cp.disk_dir = dir;
    kvlm_cache *c2 = NULL;
    kvlm_error err;
    assert_int_equal(kvlm_cache_new(g_m, &cp, &c2, &err), KVLM_ERR_BUSY);
    assert_null(c2);
    assert_non_null(strstr(err.msg, "in use"));
    /* another process too */
    kvlm_token t[NT];
    seq(t, NT, g_V, 16);
    assert_int_not_equal(run("%s run -m %s -p 'Once upon a time' -n 2 --kv-disk %s", KVLM, SYNTH, dir), 0);
    assert_non_null(strstr(g_out, "in use"));
    kvlm_cache_free(c);
    c2 = disk_cache(dir, 0, 1 << 30); /* free again */
    kvlm_cache_free(c2);
    /* a disk tier without a directory, or with no budget: refused */
    cp.disk_dir = NULL;
    assert_int_equal(kvlm_cache_new(g_m, &cp, &c2, &err), KVLM_ERR_INVALID_ARG);
    cp.disk_dir = dir;
    cp.disk_bytes_budget = 0;
    assert_int_equal(kvlm_cache_new(g_m, &cp, &c2, &err), KVLM_ERR_INVALID_ARG);
    rmdir_all(dir);
}

/* ------------------------------------------------------------ concurrency */

typedef struct worker {
    kvlm_cache *c;
    const kvlm_token *toks;
    int32_t n;
    float *logits;
    int64_t hits;
    kvlm_status st;
} worker;

static void *work(void *arg) {
    worker *w = arg;
    kvlm_session_params sp = kvlm_session_default_params();
    sp.n_ctx = 512;
    sp.n_threads = 1;
    sp.cache = w->c;
    kvlm_session *s = NULL;
    kvlm_error err;
    w->st = kvlm_session_new(g_m, &sp, &s, &err);
    if (!w->st) w->st = kvlm_eval(s, w->toks, w->n, KVLM_AUTO, w->logits, false, &err);
    kvlm_kv_stats st;
    if (!w->st) {
        kvlm_session_get_stats(s, &st);
        w->hits = st.hits;
    }
    kvlm_session_free(s);
    return NULL;
}

static void test_concurrent_sessions(void **state) {
    (void)state;
    char dir[128];
    tmpdir(dir, sizeof dir, "concurrent");
    enum { W = 4, EXTRA = 24 };
    kvlm_token t[W][NT + EXTRA];
    seq(t[0], NT, g_V, 17);
    for (int i = 0; i < W; i++) {
        memcpy(t[i], t[0], NT * sizeof(kvlm_token));
        seq(t[i] + NT, EXTRA, g_V, 100 + (uint32_t)i);
    }
    float *ref = malloc((size_t)W * g_V * 4), *got = malloc((size_t)W * g_V * 4);
    kvlm_error err;
    for (int i = 0; i < W; i++)
        assert_int_equal(kvlm_eval_full(g_m, t[i], NT + EXTRA, ref + (size_t)i * g_V, false, &err), KVLM_OK);
    for (int round = 0; round < 2; round++) { /* the prefix on disk only; then in memory too */
        kvlm_cache *c = disk_cache(dir, round == 0 ? 0 : 256 << 20, 1 << 30);
        if (round == 0) {
            eval_check(c, t[0], NT);
            kv_pool_disk_drain(c->pool);
            assert_int_equal(stats(c).disk_pages, NPAGES);
        }
        worker w[W];
        pthread_t th[W];
        for (int i = 0; i < W; i++) {
            w[i] = (worker){c, t[i], NT + EXTRA, got + (size_t)i * g_V, 0, KVLM_OK};
            assert_int_equal(pthread_create(&th[i], NULL, work, &w[i]), 0);
        }
        for (int i = 0; i < W; i++) pthread_join(th[i], NULL);
        for (int i = 0; i < W; i++) {
            assert_int_equal(w[i].st, KVLM_OK);
            assert_memory_equal(got + (size_t)i * g_V, ref + (size_t)i * g_V, (size_t)g_V * 4);
            assert_true(w[i].hits >= NPAGES * 32); /* the whole shared prefix was reused */
        }
        kvlm_kv_stats st = stats(c);
        assert_true(st.disk_hits >= NPAGES);
        assert_int_equal(st.disk_rejected, 0);
        kvlm_cache_free(c);
    }
    free(ref);
    free(got);
    rmdir_all(dir);
}

/* ------------------------------------------------------------ SIGKILL while spilling */

/* The child: spills pages of four prompts in a loop under a small disk budget (so files are written
 * and removed all the time) until it is killed. */
static void spill_forever(const char *dir, const kvlm_token (*t)[NT]) {
    kvlm_cache_params cp = kvlm_cache_default_params();
    cp.cached_bytes_budget = 0;
    cp.disk_tier = true;
    cp.disk_dir = dir;
    kvlm_cache *c = NULL;
    kvlm_error err;
    for (int i = 0;; i++) {
        cp.disk_bytes_budget = (int64_t)(4 + i % 5) * 200000; /* 4..8 pages of about 190 KB */
        if (kvlm_cache_new(g_m, &cp, &c, &err) != KVLM_OK) _exit(3);
        kvlm_session_params sp = kvlm_session_default_params();
        sp.n_ctx = 512;
        sp.n_threads = 1;
        sp.cache = c;
        kvlm_session *s = NULL;
        if (kvlm_session_new(g_m, &sp, &s, &err) != KVLM_OK) _exit(4);
        for (int k = 0; k < 4; k++) {
            kvlm_eval(s, t[(i + k) % 4], NT, KVLM_AUTO, NULL, false, &err);
            kvlm_session_truncate(s, 0, &err); /* the pages released: spilled */
        }
        kvlm_session_free(s);
        kvlm_cache_free(c);
    }
}

static void test_sigkill_during_spill(void **state) {
    (void)state;
    char dir[128];
    tmpdir(dir, sizeof dir, "kill");
    kvlm_token t[4][NT];
    for (int k = 0; k < 4; k++) seq(t[k], NT, g_V, 200 + (uint32_t)k);
    uint64_t r = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull;
    int64_t pages_seen = 0;
    for (int kill_no = 0; kill_no < 5; kill_no++) {
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            spill_forever(dir, (const kvlm_token(*)[NT])t);
            _exit(0);
        }
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        const long ms = 300 + (long)((r >> 33) % 700);
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int wst = 0;
        assert_int_equal(waitpid(pid, &wst, 0), pid);
        assert_true(WIFSIGNALED(wst));
        /* the next cache takes the directory: garbage gone, every page file sound and exact */
        kvlm_cache *c = disk_cache(dir, 0, 1 << 30);
        kvlm_kv_stats st = stats(c);
        assert_int_equal(st.disk_rejected, 0);
        assert_int_equal(scan(dir).tmps, 0);
        pages_seen += st.disk_pages;
        for (int k = 0; k < 4; k++) eval_check(c, t[k], NT);
        st = stats(c);
        assert_int_equal(st.disk_rejected, 0);
        kvlm_cache_free(c);
    }
    assert_true(pages_seen > 0);
    rmdir_all(dir);
}

/* ------------------------------------------------------------ the CLI */

static long long json_field(const char *s, const char *name) {
    char key[64];
    snprintf(key, sizeof key, "\"%s\":", name);
    const char *p = strstr(s, key);
    if (!p) fail_msg("no %s in: %s", name, s);
    return atoll(p + strlen(key));
}

static void test_cli_twice(void **state) {
    (void)state;
    char dir[128];
    tmpdir(dir, sizeof dir, "cli");
    /* about 125 tokens: 3 pages come back */
    const char *prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. "
                         "One day, she saw a big tree with a swing. She ran to the swing and played all day long. "
                         "Her mom called her home for dinner and she told her all about the swing. "
                         "The next day, Lily went back to the tree with her friend Tom. They took turns on the swing "
                         "and laughed a lot. When the sun went down, they walked home and ate cookies with milk.";
    char out1[4096];
    assert_int_equal(run("%s run -m %s -p '%s' -n 4 -c 256 --kv-disk %s --kv-stats 2>&1 >/dev/null", KVLM, SYNTH,
                         prompt, dir),
                     0);
    copy_str(out1, sizeof out1, g_out);
    assert_int_equal(json_field(out1, "disk_hits"), 0);
    assert_int_equal(scan(dir).pages, 3); /* written at the end of the run */
    assert_int_equal(run("%s run -m %s -p '%s' -n 4 -c 256 --kv-disk %s --kv-stats 2>&1 >/dev/null", KVLM, SYNTH,
                         prompt, dir),
                     0);
    assert_int_equal(json_field(g_out, "disk_hits"), 3);
    assert_int_equal(json_field(g_out, "disk_rejected"), 0);
    /* the same text as without the tier */
    char a[4096], b[4096];
    assert_int_equal(run("%s run -m %s -p '%s' -n 16 -c 256 --kv-disk %s 2>/dev/null", KVLM, SYNTH, prompt, dir), 0);
    copy_str(a, sizeof a, g_out);
    assert_int_equal(run("%s run -m %s -p '%s' -n 16 -c 256 2>/dev/null", KVLM, SYNTH, prompt), 0);
    copy_str(b, sizeof b, g_out);
    assert_string_equal(a, b);
    /* bad values */
    assert_int_not_equal(run("%s run -m %s -p x --kv-disk %s --kv-disk-budget 0", KVLM, SYNTH, dir), 0);
    rmdir_all(dir);
}

static int setup(void **state) {
    (void)state;
    g_m = load(SYNTH);
    g_V = kvlm_n_vocab(g_m);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    kvlm_model_free(g_m);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_page_bytes_roundtrip), cmocka_unit_test(test_evict_then_hit),
        cmocka_unit_test(test_restart_then_hit),     cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_special_files),        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_one_user_per_dir),     cmocka_unit_test(test_concurrent_sessions),
        cmocka_unit_test(test_sigkill_during_spill), cmocka_unit_test(test_cli_twice),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
