/* The monotonic clock (deadlines, timings in statistics and benchmarks). */
#ifndef KV_CORE_CLOCK_H
#define KV_CORE_CLOCK_H

#include <time.h>

/* Seconds on CLOCK_MONOTONIC (an arbitrary origin: only differences mean something). */
static inline double kv_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
