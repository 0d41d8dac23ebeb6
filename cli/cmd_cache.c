/* cmd_cache.c - `perflow cache ls|fetch|evict|verify`: the operator's view of
 * the model cache that the workers of this host share (storage/cache.h).
 * Configuration comes from the environment, as for the worker. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli_util.h"
#include "commands.h"
#include "storage.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: perflow cache [-v] ls\n"
            "       perflow cache [-v] fetch [--sha256 HEX] [--file | --model] [--fp16] URL [-- COMMAND [ARG...]]\n"
            "       perflow cache [-v] evict [--to SIZE]\n"
            "       perflow cache [-v] verify\n"
            "  ls      one line per cached URL: STATE PINNED SIZE LAST-USE SHA256 URL, then a '#' summary\n"
            "  fetch   makes URL local (downloading it, or waiting for the worker that is) and prints\n"
            "          the path: the file (--file; the default when the URL's last segment has an\n"
            "          extension, as x.safetensors), or a model folder (--model: a diffusers base URL).\n"
            "          --sha256 checks a file's digest; --fp16 prefers .fp16 weights. With -- COMMAND,\n"
            "          runs COMMAND (each {} replaced by the path) while the entry is pinned, and exits\n"
            "          with its status.\n"
            "  evict   evicts least recently used unpinned blobs down to SIZE (default: the budget;\n"
            "          0 evicts everything not in use)\n"
            "  verify  re-hashes every blob; damaged ones are removed and fetched again when next used\n"
            "  -v      log progress (retries, resumes, waits, evictions) on stderr, and after an\n"
            "          error whether it is transient (may work later) or permanent\n"
            "Environment: PERFLOW_CACHE_DIR (else $CACHE_DIRECTORY, else ~/.cache/perflow),\n"
            "  PERFLOW_CACHE_BUDGET (e.g. 200G), PERFLOW_REDIS (host:port or unix:/path; unset: no\n"
            "  cross-worker index), PERFLOW_CACHE_HOST_ID, PERFLOW_LOCK_TTL_MS, PERFLOW_FETCH_ALLOW_HOSTS,\n"
            "  PERFLOW_FETCH_MAX_BYTES, PERFLOW_CA_BUNDLE; for development only PERFLOW_FETCH_ALLOW_HTTP=1\n"
            "  and PERFLOW_FETCH_ALLOW_PRIVATE=1. A private hub's token: PERFLOW_HUB_TOKEN or HF_TOKEN,\n"
            "  or hub_token in $CREDENTIALS_DIRECTORY.\n"
            "Exit status: 0 ok, 1 runtime error (verify: damage found), 2 usage error.\n");
}

static int usage_error(const char *fmt, const char *arg) { return pf_cli_usage_error("cache", fmt, arg); }

static int verbose;

static int fail(pf_error *err) { return pf_cli_fail("cache", err, verbose); }

static void when_str(char *out, size_t n, long long ms) {
    if (ms <= 0) {
        snprintf(out, n, "-");
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

typedef struct ls_totals {
    int entries, blobs;
    unsigned long long bytes; /* of distinct blobs: URLs with the same content share one */
    char (*seen)[PF_SHA256_HEX];
} ls_totals;

static void print_entry(void *ctx, const pf_cache_entry *e) {
    ls_totals *t = ctx;
    char when[32];
    when_str(when, sizeof when, e->last_use_ms);
    /* URLs in the cache passed the URL parser: printable, no spaces; one may
     * still carry a secret of this process (a token in a signed URL). */
    char line[PF_URL_MAX + 256];
    snprintf(line, sizeof line, "%-11s %-6s %12llu %s %s %s", e->state, e->pinned ? "pinned" : "-",
             (unsigned long long)e->size, when, e->digest[0] ? e->digest : "-", e->url);
    pf_secret_scrub(line, sizeof line);
    puts(line);
    t->entries++;
    if (strcmp(e->state, "ready")) return;
    for (int i = 0; i < t->blobs; i++)
        if (!strcmp(t->seen[i], e->digest)) return;
    t->seen = realloc(t->seen, (size_t)(t->blobs + 1) * sizeof *t->seen);
    if (!t->seen) abort();
    memcpy(t->seen[t->blobs++], e->digest, PF_SHA256_HEX);
    t->bytes += e->size;
}

static void print_verify(void *ctx, const char *digest, uint64_t size, const char *status) {
    (void)ctx;
    printf("%s %12llu %s\n", digest, (unsigned long long)size, status);
}

/* Runs argv with every "{}" replaced by path; returns its exit status. */
static int run_pinned(char **argv, int argc, const char *path) {
    char **args = calloc((size_t)argc + 1, sizeof *args);
    if (!args) return 1;
    for (int i = 0; i < argc; i++) args[i] = strcmp(argv[i], "{}") ? argv[i] : (char *)path;
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        free(args);
        fprintf(stderr, "perflow: cache: fork: %s\n", strerror(errno));
        return 1;
    }
    if (pid == 0) {
        execvp(args[0], args);
        fprintf(stderr, "perflow: cache: %s: %s\n", args[0], strerror(errno));
        _exit(127);
    }
    free(args);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int cmd_cache(int argc, char **argv) {
    int i = 1;
    verbose = 0;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "-v")) {
            verbose = 1;
        } else {
            return usage_error("unknown option '%s'", argv[i]);
        }
    }
    if (i == argc) return usage_error("%s", "missing subcommand (ls, fetch, evict or verify)");
    const char *sub = argv[i++];
    /* subcommand options */
    const char *url = NULL, *sha = NULL, *to = NULL;
    pf_source_kind kind = PF_SOURCE_AUTO;
    int fp16 = 0, cmd_at = -1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "-v")) {
            verbose = 1;
        } else if (!strcmp(sub, "fetch") && !strcmp(a, "--sha256")) {
            if (++i == argc) return usage_error("%s needs 64 hex digits", a);
            sha = argv[i];
        } else if (!strcmp(sub, "fetch") && !strcmp(a, "--file")) {
            kind = PF_SOURCE_FILE;
        } else if (!strcmp(sub, "fetch") && !strcmp(a, "--model")) {
            kind = PF_SOURCE_DIFFUSERS;
        } else if (!strcmp(sub, "fetch") && !strcmp(a, "--fp16")) {
            fp16 = 1;
        } else if (!strcmp(sub, "evict") && !strcmp(a, "--to")) {
            if (++i == argc) return usage_error("%s needs a size", a);
            to = argv[i];
        } else if (!strcmp(sub, "fetch") && !strcmp(a, "--")) {
            cmd_at = i + 1;
            break;
        } else if (a[0] == '-') {
            return usage_error("unknown option '%s'", a);
        } else if (!strcmp(sub, "fetch") && !url) {
            url = a;
        } else {
            return usage_error("unexpected argument '%s'", a);
        }
    }
    if (strcmp(sub, "ls") && strcmp(sub, "fetch") && strcmp(sub, "evict") && strcmp(sub, "verify"))
        return usage_error("unknown subcommand '%s' (ls, fetch, evict or verify)", sub);
    if (!strcmp(sub, "fetch") && !url) return usage_error("%s", "fetch needs a URL");
    if (cmd_at >= 0 && cmd_at == argc) return usage_error("%s", "-- needs a command");
    uint64_t target = 0;
    pf_error err = {0};
    if (to && pf_parse_size(to, &target, &err)) return usage_error("--to: %s", err.msg);

    pf_credentials cred;
    if (pf_credentials_load(&cred, &err)) return fail(&err);
    pf_cache_config cfg;
    if (pf_cache_config_from_env(&cfg, &err)) {
        pf_credentials_free(&cred);
        return fail(&err);
    }
    cfg.fetch.bearer_token = cred.hub_token;
    cfg.log = (pf_log_sink){pf_cli_log_line, NULL, verbose ? PF_LOG_INFO : PF_LOG_WARN};
    pf_model_source src;
    if (url && pf_model_source_init(&src, kind, url, sha, fp16, &err)) {
        pf_credentials_free(&cred);
        return fail(&err);
    }
    pf_cache *cache;
    if (pf_cache_open(&cache, &cfg, &err)) {
        pf_credentials_free(&cred);
        return fail(&err);
    }
    int status = 0;
    if (!strcmp(sub, "ls")) {
        ls_totals t = {0, 0, 0, NULL};
        char line[512];
        if (pf_cache_list(cache, print_entry, &t, &err)) {
            status = fail(&err);
        } else {
            pf_cache_status(cache, line, sizeof line);
            printf("# %d entries, %d blobs, %llu bytes in %s", t.entries, t.blobs, t.bytes, cfg.root);
            if (cfg.budget_bytes) printf(", budget %llu", (unsigned long long)cfg.budget_bytes);
            printf("\n# %s\n", line);
        }
        free(t.seen);
    } else if (!strcmp(sub, "fetch")) {
        pf_cache_lease *lease;
        if (pf_cache_acquire(&lease, cache, &src, &err)) {
            status = fail(&err);
        } else {
            if (cmd_at >= 0) {
                status = run_pinned(argv + cmd_at, argc - cmd_at, pf_cache_lease_path(lease));
            } else {
                printf("%s\n", pf_cache_lease_path(lease));
            }
            pf_cache_release(lease);
        }
    } else if (!strcmp(sub, "evict")) {
        int evicted = 0;
        uint64_t freed = 0;
        if (!to) target = cfg.budget_bytes;
        if (!to && !target) {
            fprintf(stderr, "perflow: cache: no budget set (PERFLOW_CACHE_BUDGET): give --to SIZE\n");
            status = 2;
        } else if (pf_cache_evict(cache, target, &evicted, &freed, &err)) {
            status = fail(&err);
        } else {
            printf("evicted %d blobs, %llu bytes\n", evicted, (unsigned long long)freed);
        }
    } else {
        int bad = 0;
        if (pf_cache_verify(cache, print_verify, NULL, &bad, &err)) {
            status = fail(&err);
        } else if (bad) {
            fprintf(stderr, "perflow: cache: %d damaged blob%s found\n", bad, bad == 1 ? "" : "s");
            status = 1;
        }
    }
    pf_cache_close(cache);
    pf_credentials_free(&cred);
    if (pf_cli_flush_stdout("cache")) return 1;
    return status;
}
