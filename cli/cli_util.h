/* cli_util.h - what the subcommands of bin/perflow share: the one-line usage
 * error, and for the storage commands (cache, put) the log sink on stderr, the
 * report of a failed call and the final check of stdout.
 *
 * Every message is one line on stderr starting "perflow: CMD: ", CMD being the
 * subcommand's name; the functions return the exit status to hand back
 * (commands.h: 1 runtime error, 2 usage error). */
#ifndef PF_CLI_UTIL_H
#define PF_CLI_UTIL_H

#include "error.h"

/* Prints "perflow: CMD: " fmt (its one %s replaced by arg) " (see perflow CMD
 * --help)". Returns 2. */
int pf_cli_usage_error(const char *cmd, const char *fmt, const char *arg);

/* A pf_log_sink function (storage_log.h): "perflow: [warning: ]LINE", the
 * warning tag at PF_LOG_WARN and more severe levels. ctx is unused. */
void pf_cli_log_line(void *ctx, int level, const char *line);

/* Reports the failure in err: its message, with this process's secrets
 * scrubbed out of err->msg in place, and when verbose and the last storage call
 * failed, whether the failure is transient or permanent (err->kind). Returns 1. */
int pf_cli_fail(const char *cmd, pf_error *err, int verbose);

/* Flushes stdout. Returns 0, or 1 after saying that writing it failed (a full
 * disk or a closed pipe must not pass as success). */
int pf_cli_flush_stdout(const char *cmd);

#endif
