/* worker_config.c - the worker's settings table, config file and environment (config.h). */
#include "worker_config.h"

#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache.h"
#include "credentials.h"
#include "log.h"

#include <openssl/crypto.h>

typedef enum { T_STR, T_INT, T_LONG, T_SIZE, T_LEVEL } setting_type;

typedef struct setting {
    const char *name;
    setting_type type;
    size_t off, size; /* size: buffer size of strings */
    long lo, hi;      /* range of numbers */
    const char *def;
    const char *help;
} setting;

#define S(field, def, help) {#field, T_STR, offsetof(pf_worker_config, field), \
                             sizeof(((pf_worker_config *)0)->field), 0, 0, def, help}
#define I(field, lo, hi, def, help) {#field, T_INT, offsetof(pf_worker_config, field), 0, lo, hi, def, help}
#define L(field, lo, hi, def, help) {#field, T_LONG, offsetof(pf_worker_config, field), 0, lo, hi, def, help}

static const setting settings[] = {
    S(brokers, "127.0.0.1:9092", "Kafka bootstrap servers"),
    S(group, "perflow-workers", "consumer group"),
    S(instance_id, "", "group.instance.id for static membership (\"\": none)"),
    S(jobs_topics, "perflow.jobs", "job topics, comma-separated, highest priority first"),
    S(status_topic, "perflow.status", "status events (keyed by job_id)"),
    S(dead_letter_topic, "perflow.jobs.dlq", "messages that cannot be processed, with the error"),
    S(redis, "127.0.0.1:6379",
      "Redis: host:port, unix:/path, redis://user@host:port, rediss://[user@]host[:port] (TLS)"),
    S(job_prefix, "pf:job", "Redis key prefix: <prefix>:<job_id>:lease|result|state|cancel"),
    S(worker_id, "", "worker id in statuses and logs (\"\": <host>-<pid>)"),
    S(device, "", "engine device: cpu, cuda, cuda:N (\"\": auto, see PERFLOW_DEVICE)"),
    S(work_dir, "", "scratch folder for result files (\"\": $RUNTIME_DIRECTORY or /tmp)"),
    S(file_output_root, "", "file:// outputs are allowed only under this folder (\"\": refused)"),
    S(hub_token_hosts, "", "hosts the hub token is sent to, comma-separated, .domain for subdomains "
      "(required with a token)"),
    S(s3_output_prefixes, "", "s3:// outputs are allowed only under these bucket/prefix entries, comma-separated "
      "(\"\": refused)"),
    S(metrics_listen, "", "serve /metrics, /healthz, /readyz on HOST:PORT, :PORT (127.0.0.1) (\"\": off)"),
    S(result_store_url, "",
      "result store: computed images kept by identity at s3://bucket/prefix or file:///folder (\"\": off)"),
    S(result_store_prefix, "pf:rs", "result store: Redis index key prefix <prefix>:<identity>"),
    I(result_store, 0, 1, "1", "result store: 0 turns it off (computes every image)"),
    L(result_store_retention_s, 60, 315360000, "2592000", "result store: index entries live this long after the last hit"),
    L(max_pixels, 4096, 16777216, "4194304", "largest width x height of a job's images, refined ones included"),
    L(max_input_pixels, 4096, 178956970, "16777216",
      "largest condition image (pixels); also at most 16 x the job's output pixels"),
    I(max_steps, 1, 100, "100", "most steps of a job's text-to-image or refine stage"),
    I(max_images, 1, 16, "16", "most images of one job"),
    I(max_crashes, 1, 100, "2", "a job whose workers died running it this often fails with code poison"),
    L(max_job_seconds, 0, 604800, "3600", "a job running longer fails with code timeout (0: no limit)"),
    I(threads, 0, 1024, "0", "CPU threads of the engine (0: all cores)"),
    I(max_batch, 1, 64, "4", "images per engine call when consecutive jobs batch"),
    L(batch_wait_ms, 0, 10000, "0", "wait this long for more jobs to join a batch"),
    I(prefer_warm, 0, 1000, "8",
      "held jobs of a loaded model go before the oldest held job at most this many times in a row (worker/prefer.h); 0: arrival order"),
    {"model_memory", T_SIZE, offsetof(pf_worker_config, model_memory), 0, 0, 0, "8G",
     "model weights kept loaded, LRU (bytes, K/M/G/T)"},
    I(max_attempts, 1, 100, "3", "attempts of a job before the dead-letter topic"),
    I(retries, 1, 20, "3", "tries of a download or upload within one attempt"),
    L(retry_base_ms, 1, 600000, "500", "first backoff between tries (doubling, jittered)"),
    L(retry_max_ms, 1, 3600000, "10000", "longest backoff"),
    L(lease_ttl_ms, 1000, 3600000, "30000", "job lease in Redis, renewed every third"),
    L(result_ttl_s, 60, 31536000, "604800", "how long terminal results are kept for redeliveries"),
    L(cancel_poll_ms, 50, 60000, "250", "how often a running job's cancel flag is read"),
    L(status_interval_ms, 0, 60000, "500", "least time between two running events of a job"),
    L(drain_grace_s, 0, 86400, "120", "SIGTERM: time the running job has to finish"),
    L(delivery_timeout_ms, 1000, 3600000, "30000", "Kafka delivery timeout of one status send"),
    {"log_level", T_LEVEL, offsetof(pf_worker_config, log_level), 0, 0, 0, "info", "error, warn, info, debug"},
};
#define N_SETTINGS (sizeof settings / sizeof settings[0])

static int set_one(pf_worker_config *c, const setting *s, const char *v, pf_error *err) {
    char *p = (char *)c + s->off, *end;
    switch (s->type) {
    case T_STR:
        if (strlen(v) >= s->size) return pf_fail(err, "%s is longer than %zu bytes", s->name, s->size - 1);
        for (const char *q = v; *q; q++)
            if ((unsigned char)*q < 0x20) return pf_fail(err, "%s has a control character", s->name);
        memcpy(p, v, strlen(v) + 1);
        return 0;
    case T_INT:
    case T_LONG: {
        errno = 0;
        long x = strtol(v, &end, 10);
        if (errno || end == v || *end || x < s->lo || x > s->hi)
            return pf_fail(err, "%s must be an integer from %ld to %ld (got '%.40s')", s->name, s->lo, s->hi, v);
        if (s->type == T_INT) *(int *)p = (int)x;
        else *(long *)p = x;
        return 0;
    }
    case T_SIZE:
        if (pf_parse_size(v, (uint64_t *)p, err)) return pf_error_prefix(err, "%s", s->name);
        return 0;
    case T_LEVEL: {
        int l = pf_wlog_level(v);
        if (l < 0) return pf_fail(err, "%s must be error, warn, info or debug", s->name);
        *(int *)p = l;
        return 0;
    }
    }
    return 0;
}

void pf_worker_config_defaults(pf_worker_config *c) {
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < N_SETTINGS; i++) {
        pf_error e;
        PF_CHECK(set_one(c, &settings[i], settings[i].def, &e) == 0);
    }
}

static int is_secret_name(const char *k) {
    return strstr(k, "password") || strstr(k, "secret") || strstr(k, "key") || strstr(k, "token") ||
           strstr(k, "jaas");
}

static int set_kafka(pf_worker_config *c, const char *prop, const char *v, pf_error *err) {
    if (!*prop || strlen(prop) >= sizeof c->kafka_key[0]) return pf_fail(err, "kafka property name is empty or too long");
    for (const char *q = prop; *q; q++)
        if (!(islower((unsigned char)*q) || isdigit((unsigned char)*q) || *q == '.' || *q == '_'))
            return pf_fail(err, "kafka property '%.60s' must be lower-case letters, digits, '.' and '_'", prop);
    if (strlen(v) >= sizeof c->kafka_val[0]) return pf_fail(err, "kafka.%s is longer than %zu bytes", prop,
                                                           sizeof c->kafka_val[0] - 1);
    if (is_secret_name(prop)) pf_secret_register(v);
    int i;
    for (i = 0; i < c->n_kafka; i++)
        if (!strcmp(c->kafka_key[i], prop)) break;
    if (i == c->n_kafka) {
        if (c->n_kafka == PF_WORKER_MAX_KAFKA) return pf_fail(err, "more than %d kafka properties", PF_WORKER_MAX_KAFKA);
        c->n_kafka++;
    }
    snprintf(c->kafka_key[i], sizeof c->kafka_key[i], "%s", prop);
    snprintf(c->kafka_val[i], sizeof c->kafka_val[i], "%s", v);
    return 0;
}

int pf_worker_config_set(pf_worker_config *c, const char *name, const char *value, pf_error *err) {
    if (!strncmp(name, "kafka.", 6)) return set_kafka(c, name + 6, value, err);
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (!strcmp(name, settings[i].name)) return set_one(c, &settings[i], value, err);
    return pf_fail(err, "unknown setting '%.80s'", name);
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
    return s;
}

int pf_worker_config_load_file(pf_worker_config *c, const char *path, pf_error *err) {
    FILE *f = fopen(path, "r");
    if (!f) return pf_fail(err, "config %s: %s", path, strerror(errno));
    char line[2048];
    int lineno = 0, rc = 0;
    while (!rc && fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            rc = pf_fail(err, "config %s:%d: line longer than %zu bytes", path, lineno, sizeof line - 2);
            break;
        }
        char *s = trim(line);
        if (!*s || *s == '#') continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = pf_fail(err, "config %s:%d: expected 'name = value'", path, lineno);
            break;
        }
        *eq = '\0';
        char *name = trim(s), *value = trim(eq + 1);
        size_t vl = strlen(value); /* optional double quotes around the value */
        if (vl >= 2 && value[0] == '"' && value[vl - 1] == '"') {
            value[vl - 1] = '\0';
            value++;
        }
        if (pf_worker_config_set(c, name, value, err)) rc = pf_error_prefix(err, "config %s:%d", path, lineno);
    }
    if (!rc && ferror(f)) rc = pf_fail(err, "config %s: read error", path);
    fclose(f);
    return rc;
}

int pf_worker_config_from_env(pf_worker_config *c, pf_error *err) {
    char var[160];
    for (size_t i = 0; i < N_SETTINGS; i++) {
        snprintf(var, sizeof var, "PERFLOW_%s", settings[i].name);
        for (char *q = var + 8; *q; q++) *q = (char)toupper((unsigned char)*q);
        const char *v = getenv(var);
        if (v && set_one(c, &settings[i], v, err)) return pf_error_prefix(err, "%s", var);
    }
    extern char **environ;
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, "PERFLOW_KAFKA_", 14)) continue;
        const char *eq = strchr(*e, '=');
        if (!eq || eq - *e - 14 <= 0 || eq - *e - 14 >= 128) continue;
        char prop[128];
        size_t n = (size_t)(eq - *e - 14);
        for (size_t k = 0; k < n; k++) {
            char ch = (*e)[14 + k];
            prop[k] = ch == '_' ? '.' : (char)tolower((unsigned char)ch);
        }
        prop[n] = '\0';
        if (set_kafka(c, prop, eq + 1, err)) return pf_error_prefix(err, "%.*s", (int)(eq - *e), *e);
    }
    return 0;
}

int pf_worker_config_kafka_credentials(pf_worker_config *c, pf_error *err) {
    /* librdkafka's secret-valued properties; keys and certificates are files
     * already (ssl.key.location may point into $CREDENTIALS_DIRECTORY). */
    static const char *const props[] = {"sasl.password", "ssl.key.password", "ssl.keystore.password",
                                        "sasl.oauthbearer.client.secret"};
    for (size_t i = 0; i < sizeof props / sizeof *props; i++) {
        char file[64], *v = NULL;
        snprintf(file, sizeof file, "kafka.%s", props[i]);
        if (pf_credential_secret(&v, file, NULL, err)) return -1;
        if (!v) continue;
        int rc = set_kafka(c, props[i], v, err);
        OPENSSL_cleanse(v, strlen(v));
        free(v);
        if (rc) return pf_error_prefix(err, "credential %s", file);
    }
    return 0;
}

int pf_worker_config_topics(const pf_worker_config *c, char *buf, size_t n, const char **topics, int max, int *count,
                            pf_error *err) {
    snprintf(buf, n, "%s", c->jobs_topics);
    *count = 0;
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        t = trim(t);
        if (!*t || strlen(t) > 249) return pf_fail(err, "jobs_topics: empty or overlong topic name");
        for (int i = 0; i < *count; i++)
            if (!strcmp(topics[i], t)) return pf_fail(err, "jobs_topics: '%s' given twice", t);
        if (*count == max) return pf_fail(err, "jobs_topics: more than %d topics", max);
        topics[(*count)++] = t;
    }
    if (*count == 0) return pf_fail(err, "jobs_topics: no topic");
    return 0;
}

void pf_worker_config_help(FILE *f) {
    for (size_t i = 0; i < N_SETTINGS; i++) {
        char env[64];
        snprintf(env, sizeof env, "PERFLOW_%s", settings[i].name);
        for (char *q = env + 8; *q; q++) *q = (char)toupper((unsigned char)*q);
        fprintf(f, "  %-20s %-28s %-16s %s\n", settings[i].name, env, *settings[i].def ? settings[i].def : "\"\"",
                settings[i].help);
    }
    fprintf(f, "  %-20s %-28s %-16s %s\n", "kafka.<property>", "PERFLOW_KAFKA_<PROPERTY>", "", "passed to librdkafka");
}
