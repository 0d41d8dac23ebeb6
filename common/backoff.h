/* backoff.h - retry delays: exponential backoff with full jitter, so that a
 * fleet of workers retrying the same failed server spreads out instead of
 * returning in step. */
#ifndef PF_BACKOFF_H
#define PF_BACKOFF_H

/* The delay before retry number `retry` (1 for the first retry): a uniform
 * random value in [base/2, min(max, base * 2^(retry-1))] milliseconds. The
 * floor keeps a retry from being immediate. Thread-safe. */
long pf_backoff_ms(int retry, long base_ms, long max_ms);
/* Sleeps ms milliseconds (restarting after signals). */
void pf_sleep_ms(long ms);
/* Milliseconds of the monotonic clock, for timeouts and rate limits. */
long long pf_now_ms(void);
/* Milliseconds since the epoch, for timestamps shared between processes. */
long long pf_wall_ms(void);

#endif
