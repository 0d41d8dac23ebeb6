/* backoff.c - jittered exponential backoff and the clocks it needs. */
#include "backoff.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

/* A per-thread xorshift generator seeded from the clock, pid and thread:
 * jitter needs spread between workers, not cryptographic quality. */
static uint64_t next_random(void) {
    static _Thread_local uint64_t s;
    if (!s) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40) ^ (uint64_t)(uintptr_t)&s;
        if (!s) s = 0x9e3779b97f4a7c15ull;
    }
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
}

long pf_backoff_ms(int retry, long base_ms, long max_ms) {
    if (base_ms < 1) base_ms = 1;
    if (max_ms < base_ms) max_ms = base_ms;
    long cap = base_ms;
    for (int i = 1; i < retry && cap < max_ms; i++) cap *= 2;
    if (cap > max_ms) cap = max_ms;
    long lo = base_ms / 2;
    return lo + (long)(next_random() % (uint64_t)(cap - lo + 1));
}

void pf_sleep_ms(long ms) {
    if (ms <= 0) return;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR) {
    }
}

long long pf_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

long long pf_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
