/* fuzz_storage_parsers.c - libFuzzer target for what the storage layer parses
 * from hostile sources: URLs (jobs, redirects), model_index.json and weights
 * indexes of sharded files (a model server) and cache manifests. The first byte picks the parser. Invariants:
 * errors are one line; a parsed URL formats to a URL that parses back the same;
 * planned and manifest paths are safe relative paths.
 *
 *   make fuzz && mkdir -p /tmp/sp_corpus &&
 *   UBSAN_OPTIONS=halt_on_error=1 build/fuzz/fuzz_storage_parsers -max_total_time=60 \
 *       /tmp/sp_corpus tests/fuzz/corpus_storage_parsers */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "model_index.h"
#include "url_policy.h"

static void check_msg(const pf_error *err) {
    if (!err->msg[0] || strchr(err->msg, '\n')) abort();
}

static void fuzz_url(const char *s) {
    pf_url u, v;
    pf_error err = {0};
    if (pf_url_parse(&u, s, &err)) {
        check_msg(&err);
        return;
    }
    char out[PF_URL_MAX], log[600];
    pf_url_for_log(log, sizeof log, &u);
    if (pf_url_format(out, sizeof out, &u, &err)) return;
    if (pf_url_parse(&v, out, &err) || strcmp(u.scheme, v.scheme) || strcmp(u.host, v.host) || u.port != v.port ||
        strcmp(u.path, v.path))
        abort();
    pf_url_policy strict = {0, 0, NULL}, listed = {1, 0, "example.com,.hf.co"};
    (void)pf_url_check(&u, &strict, &err);
    (void)pf_url_check(&u, &listed, &err);
    /* hub_token_hosts: a match is the named host or a subdomain of the .domain entry, nothing else */
    if (pf_url_host_listed(u.host, "hub.example.com, .hf.co")) {
        size_t hl = strlen(u.host);
        if (strcasecmp(u.host, "hub.example.com") && strcasecmp(u.host, "hf.co") &&
            !(hl > 6 && !strcasecmp(u.host + hl - 6, ".hf.co")))
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    char *s = malloc(size);
    memcpy(s, data + 1, size - 1);
    s[size - 1] = '\0';
    pf_error err = {0};
    switch (data[0] % 3) {
    case 0:
        fuzz_url(s);
        break;
    case 1: {
        pf_model_file files[PF_MODEL_MAX_FILES];
        int n;
        for (int fp16 = 0; fp16 < 2; fp16++) {
            if (pf_model_index_plan(files, &n, PF_MODEL_MAX_FILES, (const char *)data + 1, size - 1, fp16, &err)) {
                check_msg(&err);
                continue;
            }
            for (int i = 0; i < n; i++)
                if (!pf_relpath_valid(files[i].path) || (files[i].fallback[0] && !pf_relpath_valid(files[i].fallback)))
                    abort();
        }
        if (pf_model_index_plan_configs(files, &n, PF_MODEL_MAX_FILES, (const char *)data + 1, size - 1, &err))
            check_msg(&err);
        /* the same bytes as a sharded weights index (also JSON from a model server) */
        static const char *const index[] = {"unet/diffusion_pytorch_model.safetensors.index.json",
                                            "model.safetensors.index.fp16.json"};
        for (int k = 0; k < 2; k++) {
            n = 1;
            snprintf(files[0].path, sizeof files[0].path, "%s", index[k]);
            if (pf_model_shard_plan(files, &n, PF_MODEL_MAX_FILES, index[k], (const char *)data + 1, size - 1, &err)) {
                check_msg(&err);
                if (n != 1) abort();
                continue;
            }
            for (int i = 1; i < n; i++)
                if (!pf_relpath_valid(files[i].path) || (k == 0 && strncmp(files[i].path, "unet/", 5)) ||
                    (k == 1 && strchr(files[i].path, '/')) || files[i].fallback[0])
                    abort();
        }
        break;
    }
    default: {
        pf_manifest_file files[8];
        int n;
        if (pf_manifest_parse(files, &n, 8, (const char *)data + 1, size - 1, &err)) {
            check_msg(&err);
            break;
        }
        for (int i = 0; i < n; i++)
            if (!pf_relpath_valid(files[i].path) || strlen(files[i].sha256) != 64) abort();
    }
    }
    free(s);
    return 0;
}
