/* notify.c - sd_notify for the worker (notify.h). */
#include "notify.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <systemd/sd-daemon.h>

#include "backoff.h"

static long long watchdog_ms = -1; /* -1: not asked yet; 0: no watchdog */
static long long last_ping;

void pf_notify_ready(const char *status) {
    sd_notifyf(0, "READY=1\nSTATUS=%s", status);
}

void pf_notify_status(const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    sd_notifyf(0, "STATUS=%s", line);
}

void pf_notify_stopping(void) {
    sd_notify(0, "STOPPING=1\nSTATUS=draining");
}

void pf_notify_watchdog(void) {
    if (watchdog_ms < 0) {
        uint64_t usec = 0;
        watchdog_ms = sd_watchdog_enabled(0, &usec) > 0 ? (long long)(usec / 1000) : 0;
    }
    if (!watchdog_ms) return;
    long long now = pf_now_ms();
    if (now - last_ping < watchdog_ms / 2) return;
    last_ping = now;
    sd_notify(0, "WATCHDOG=1");
}
