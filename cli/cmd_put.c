/* cmd_put.c - `perflow put FILE s3://bucket/key`: uploads a file as the worker
 * uploads results (storage/s3.h), for operators and scripts. */
#include <stdio.h>
#include <string.h>

#include "cli_util.h"
#include "commands.h"
#include "storage.h"

static void usage(FILE *f) {
    fprintf(f, "usage: perflow put [--help] [-v] [--endpoint URL] [--region REGION] [--path-style | --virtual-host]\n"
               "                   FILE DEST\n"
               "  Uploads FILE to DEST, s3://BUCKET/KEY (multipart above 16 MiB, retried on 5xx and\n"
               "  throttling) or file:///ABSOLUTE/PATH, and prints what was written.\n"
               "  --endpoint URL   S3-compatible endpoint (default $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL,\n"
               "                   else AWS); --region (default $AWS_REGION, else us-east-1)\n"
               "  --path-style     BUCKET in the path (the default with a custom endpoint);\n"
               "  --virtual-host   BUCKET in the host name (the default on AWS)\n"
               "  -v               log retries on stderr, and whether an error is transient or permanent\n"
               "  Credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN), or files\n"
               "  aws_access_key_id, aws_secret_access_key in $CREDENTIALS_DIRECTORY.\n"
               "  Exit status: 0 ok, 1 runtime error, 2 usage error.\n");
}

static int usage_error(const char *fmt, const char *arg) { return pf_cli_usage_error("put", fmt, arg); }

int cmd_put(int argc, char **argv) {
    const char *file = NULL, *dest = NULL, *endpoint = NULL, *region = NULL;
    int verbose = 0, style = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "-v")) {
            verbose = 1;
        } else if (!strcmp(a, "--endpoint") || !strcmp(a, "--region")) {
            if (++i == argc) return usage_error("%s needs a value", a);
            *(a[2] == 'e' ? &endpoint : &region) = argv[i];
        } else if (!strcmp(a, "--path-style")) {
            style = 1;
        } else if (!strcmp(a, "--virtual-host")) {
            style = 0;
        } else if (a[0] == '-' && a[1]) {
            return usage_error("unknown option '%s'", a);
        } else if (!file) {
            file = a;
        } else if (!dest) {
            dest = a;
        } else {
            return usage_error("unexpected argument '%s'", a);
        }
    }
    if (!file || !dest) return usage_error("%s", "needs FILE and DEST");
    if (strncmp(dest, "s3://", 5) && strncmp(dest, "file://", 7))
        return usage_error("DEST must be s3://BUCKET/KEY or file:///PATH, not '%s'", dest);
    pf_error err = {0};
    pf_s3_config cfg;
    if (pf_s3_config_from_env(&cfg, &err)) return pf_cli_fail("put", &err, verbose);
    if (endpoint) {
        if (strlen(endpoint) >= sizeof cfg.endpoint) return usage_error("%s", "--endpoint is too long");
        snprintf(cfg.endpoint, sizeof cfg.endpoint, "%s", endpoint);
        if (style < 0) cfg.path_style = 1;
    }
    if (region) {
        if (strlen(region) >= sizeof cfg.region) return usage_error("%s", "--region is too long");
        snprintf(cfg.region, sizeof cfg.region, "%s", region);
    }
    if (style >= 0) cfg.path_style = style;
    cfg.log = (pf_log_sink){pf_cli_log_line, NULL, verbose ? PF_LOG_INFO : PF_LOG_WARN};
    pf_credentials cred;
    if (pf_credentials_load(&cred, &err)) return pf_cli_fail("put", &err, verbose);
    pf_s3_result res;
    int rc = pf_s3_put_file(&res, &cfg, &cred, dest, file, &err);
    pf_credentials_free(&cred);
    if (rc) return pf_cli_fail("put", &err, verbose);
    printf("uploaded %s: %llu bytes, sha256 %s, %d part%s, %d retr%s%s%s\n", dest, (unsigned long long)res.size,
           res.sha256, res.parts, res.parts == 1 ? "" : "s", res.retries, res.retries == 1 ? "y" : "ies",
           res.etag[0] ? ", etag " : "", res.etag);
    return pf_cli_flush_stdout("put");
}
