/* notify.h - telling systemd how the worker is (sd_notify, libsystemd):
 * READY=1 once the worker consumes, STATUS= lines as jobs come and go,
 * WATCHDOG=1 from the main loop at half the unit's WatchdogSec (so a loop that
 * hangs is restarted), STOPPING=1 when a drain starts. Outside systemd
 * ($NOTIFY_SOCKET unset) every call does nothing. */
#ifndef PF_NOTIFY_H
#define PF_NOTIFY_H

void pf_notify_ready(const char *status);
void pf_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void pf_notify_stopping(void);
/* Pings the watchdog when half its interval has passed since the last ping. */
void pf_notify_watchdog(void);

#endif
