/* kvlm serve: the cache of compiled grammars (serve.h). Entries are keyed by
 * their kind (GBNF or JSON Schema) and text; the cache keeps the most recently
 * used ones (LRU). An entry is reference-counted: a job holds one from its
 * parsing until it is freed, so an entry evicted (or a cache freed) while a
 * job still samples with it lives until that job lets it go. One mutex (for
 * every cache, so a release needs no cache) guards the lists and counts;
 * compiling happens outside it. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve/serve.h"

struct srv_gentry {
    char *key; /* kind byte, then the text */
    size_t key_len;
    kvlm_grammar *g;
    int refs;      /* jobs holding it, plus one while it is in a cache */
    bool in_cache;
    struct srv_gentry *prev, *next; /* LRU list, most recent first */
};

struct srv_gcache {
    int cap, n;
    struct srv_gentry *head, *tail;
    uint64_t hits, misses;
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

srv_gcache *srv_gcache_new(int cap) {
    srv_gcache *c = calloc(1, sizeof *c);
    if (c) c->cap = cap > 0 ? cap : 1;
    return c;
}

static void entry_free(struct srv_gentry *x) {
    kvlm_grammar_free(x->g);
    free(x->key);
    free(x);
}

/* under g_mu */
static void unlink_entry(srv_gcache *c, struct srv_gentry *x) {
    if (x->prev) x->prev->next = x->next;
    else c->head = x->next;
    if (x->next) x->next->prev = x->prev;
    else c->tail = x->prev;
    x->prev = x->next = NULL;
    c->n--;
}

/* under g_mu: drops the cache's reference; returns the entry when it is to be freed */
static struct srv_gentry *evict(srv_gcache *c, struct srv_gentry *x) {
    unlink_entry(c, x);
    x->in_cache = false;
    return --x->refs == 0 ? x : NULL;
}

void srv_gcache_free(srv_gcache *c) {
    if (!c) return;
    pthread_mutex_lock(&g_mu);
    struct srv_gentry *dead = NULL;
    while (c->head) {
        struct srv_gentry *x = evict(c, c->head);
        if (x) {
            x->next = dead;
            dead = x;
        }
    }
    pthread_mutex_unlock(&g_mu);
    while (dead) {
        struct srv_gentry *n = dead->next;
        entry_free(dead);
        dead = n;
    }
    free(c);
}

void srv_gcache_stats(srv_gcache *c, int *n, uint64_t *hits, uint64_t *misses) {
    pthread_mutex_lock(&g_mu);
    *n = c ? c->n : 0;
    *hits = c ? c->hits : 0;
    *misses = c ? c->misses : 0;
    pthread_mutex_unlock(&g_mu);
}

static struct srv_gentry *find(srv_gcache *c, const char *key, size_t len) {
    for (struct srv_gentry *x = c->head; x; x = x->next)
        if (x->key_len == len && !memcmp(x->key, key, len)) return x;
    return NULL;
}

static void push_front(srv_gcache *c, struct srv_gentry *x) {
    x->prev = NULL;
    x->next = c->head;
    if (c->head) c->head->prev = x;
    c->head = x;
    if (!c->tail) c->tail = x;
    c->n++;
}

srv_gentry *srv_gcache_get(srv_gcache *c, const kvlm_model *m, bool schema, const char *text, kvlm_error *err) {
    const size_t tl = strlen(text), len = tl + 1;
    char *key = malloc(len + 1);
    if (!key) {
        snprintf(err->msg, sizeof err->msg, "out of memory");
        err->code = KVLM_ERR_NOMEM;
        return NULL;
    }
    key[0] = schema ? 'S' : 'G';
    memcpy(key + 1, text, tl + 1);
    if (c) {
        pthread_mutex_lock(&g_mu);
        struct srv_gentry *x = find(c, key, len);
        if (x) {
            unlink_entry(c, x);
            push_front(c, x);
            x->refs++;
            c->hits++;
            pthread_mutex_unlock(&g_mu);
            free(key);
            return x;
        }
        c->misses++;
        pthread_mutex_unlock(&g_mu);
    }
    /* compile, unlocked */
    kvlm_grammar *g = NULL;
    kvlm_status st = schema ? kvlm_grammar_new_json_schema(m, text, &g, err) : kvlm_grammar_new_gbnf(m, text, NULL, &g, err);
    struct srv_gentry *x = st == KVLM_OK ? calloc(1, sizeof *x) : NULL;
    if (!x) {
        if (st == KVLM_OK) {
            snprintf(err->msg, sizeof err->msg, "out of memory");
            err->code = KVLM_ERR_NOMEM;
        }
        kvlm_grammar_free(g);
        free(key);
        return NULL;
    }
    x->key = key;
    x->key_len = len;
    x->g = g;
    x->refs = 1;
    if (!c) return x;
    pthread_mutex_lock(&g_mu);
    struct srv_gentry *other = find(c, key, len), *dead = NULL;
    if (other) { /* another request compiled it meanwhile: take that one */
        other->refs++;
        pthread_mutex_unlock(&g_mu);
        entry_free(x);
        return other;
    }
    x->refs++; /* the cache's */
    x->in_cache = true;
    push_front(c, x);
    if (c->n > c->cap) dead = evict(c, c->tail);
    pthread_mutex_unlock(&g_mu);
    if (dead) entry_free(dead);
    return x;
}

const kvlm_grammar *srv_gentry_grammar(const srv_gentry *x) { return x->g; }

void srv_gentry_release(srv_gentry *x) {
    if (!x) return;
    pthread_mutex_lock(&g_mu);
    const bool last = --x->refs == 0;
    pthread_mutex_unlock(&g_mu);
    if (last) entry_free(x);
}
