/* cli_util.c - the shared messages of bin/perflow's subcommands (cli_util.h). */
#include "cli_util.h"

#include <stdio.h>

#include "storage.h"

int pf_cli_usage_error(const char *cmd, const char *fmt, const char *arg) {
    fprintf(stderr, "perflow: %s: ", cmd);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see perflow %s --help)\n", cmd);
    return 2;
}

void pf_cli_log_line(void *ctx, int level, const char *line) {
    (void)ctx;
    fprintf(stderr, "perflow: %s%s\n", level <= PF_LOG_WARN ? "warning: " : "", line);
}

int pf_cli_fail(const char *cmd, pf_error *err, int verbose) {
    pf_secret_scrub(err->msg, sizeof err->msg);
    fprintf(stderr, "perflow: %s: %s\n", cmd, err->msg);
    if (verbose && (err->kind == PF_ERROR_TRANSIENT || err->kind == PF_ERROR_PERMANENT))
        fprintf(stderr, "perflow: this failure is %s\n", pf_error_kind_name(err->kind));
    return 1;
}

int pf_cli_flush_stdout(const char *cmd) {
    if (fflush(stdout) || ferror(stdout)) {
        fprintf(stderr, "perflow: %s: error writing to stdout\n", cmd);
        return 1;
    }
    return 0;
}
