/* worker_config.h - the worker's settings: defaults, then a config file, then the
 * environment (PERFLOW_<NAME>), then the command line; later sources win.
 *
 * The file holds "name = value" lines ('#' starts a comment line), with the
 * names of the table in worker_config.c (brokers, group, jobs_topics, ...), plus
 * "kafka.<property> = value" lines passed to librdkafka as they are (security
 * settings, timeouts). In the environment the same names are upper case with
 * the PERFLOW_ prefix (PERFLOW_BROKERS, PERFLOW_MAX_BATCH), and
 * PERFLOW_KAFKA_<PROPERTY> is kafka.<property> with '_' read as '.'
 * (PERFLOW_KAFKA_SESSION_TIMEOUT_MS=6000). Storage settings (cache, fetch
 * policy, S3) are read by the storage layer from its own PERFLOW_* variables.
 * Kafka values whose name says password, secret or key are registered as
 * secrets (credentials.h) so they never reach a log line; the secret ones
 * are best given as $CREDENTIALS_DIRECTORY files (pf_worker_config_kafka_credentials),
 * never on a command line (there is no option for them). */
#ifndef PF_WORKER_CONFIG_H
#define PF_WORKER_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "error.h"

#define PF_WORKER_MAX_TOPICS 8
#define PF_WORKER_MAX_KAFKA 48

typedef struct pf_worker_config {
    char brokers[1024];           /* bootstrap.servers */
    char group[256];              /* consumer group id */
    char instance_id[256];        /* group.instance.id (static membership); "" for none */
    char jobs_topics[1024];       /* comma-separated, highest priority first */
    char status_topic[256];
    char dead_letter_topic[256];
    char redis[256];              /* "host:port" or "unix:/path" (shared with the cache's PERFLOW_REDIS) */
    char job_prefix[64];          /* Redis key prefix of leases, results, cancel flags */
    char worker_id[256];          /* in statuses and logs; default <host>-<pid> */
    char device[32];              /* pf_backend_open: "" (auto), cpu, cuda, cuda:N */
    char work_dir[1024];          /* where result files are written before upload */
    char file_output_root[1024];  /* file:// outputs allowed under this folder only ("": refused) */
    char hub_token_hosts[1024];   /* hosts the hub token may be sent to (required with a token) */
    char s3_output_prefixes[1024];/* s3:// outputs allowed under these bucket/prefix entries only ("": refused) */
    char metrics_listen[128];     /* HOST:PORT of /metrics, /healthz, /readyz ("": no HTTP server) */
    char result_store_url[1024];  /* the result store's objects, s3://bucket/prefix or file:///folder ("": off) */
    char result_store_prefix[64]; /* its Redis index key prefix */
    int result_store;             /* 0: the store is off even with a url */
    long result_store_retention_s; /* an identity's index entry lives this long after its last hit */
    long max_pixels;              /* width x height of a job's images (and of refined ones) */
    long max_input_pixels;        /* a condition image's pixels (also at most 16 x the output's) */
    int max_steps;                /* steps of either stage */
    int max_images;               /* images of one job */
    int max_crashes;              /* workers a job may take down before it is dead-lettered as poison */
    long max_job_seconds;         /* from acceptance to the end; 0: no limit */
    int threads;                  /* CPU backend threads (0: all cores) */
    int max_batch;                /* images per engine call */
    long batch_wait_ms;           /* how long to wait for more jobs to join a batch */
    int prefer_warm;              /* held jobs of a loaded model may pass the oldest this often in a row; 0: off */
    uint64_t model_memory;        /* bytes of model weights kept loaded (warm LRU) */
    int max_attempts;             /* attempts of a job before it goes to the dead-letter topic */
    int retries;                  /* tries of a transient step (download, upload) within one attempt */
    long retry_base_ms, retry_max_ms;
    long lease_ttl_ms;            /* a running job's Redis lease; renewed every third of it */
    long result_ttl_s;            /* how long a terminal result is remembered for redeliveries */
    long cancel_poll_ms;          /* how often the cancel flag of a running job is read */
    long status_interval_ms;      /* least time between two "running" events of a job */
    long drain_grace_s;           /* how long SIGTERM waits for the running job */
    long delivery_timeout_ms;     /* librdkafka message.timeout.ms for statuses */
    int log_level;                /* PF_LOG_* */
    int once;                     /* exit after one job */
    int n_kafka;
    char kafka_key[PF_WORKER_MAX_KAFKA][128];
    char kafka_val[PF_WORKER_MAX_KAFKA][512];
} pf_worker_config;

/* The defaults (see the table in worker_config.c). Never fails. */
void pf_worker_config_defaults(pf_worker_config *c);
/* Sets one setting by its file name ("max_batch", "kafka.session.timeout.ms").
 * Error, naming it, for an unknown name or a malformed or out-of-range value. */
int pf_worker_config_set(pf_worker_config *c, const char *name, const char *value, pf_error *err);
/* Reads a config file (error names the file and line). */
int pf_worker_config_load_file(pf_worker_config *c, const char *path, pf_error *err);
/* Applies PERFLOW_<NAME> and PERFLOW_KAFKA_<PROPERTY> variables. */
int pf_worker_config_from_env(pf_worker_config *c, pf_error *err);
/* Sets librdkafka's secret properties from $CREDENTIALS_DIRECTORY files
 * named after them: kafka.sasl.password, kafka.ssl.key.password,
 * kafka.ssl.keystore.password, kafka.sasl.oauthbearer.client.secret (one line
 * each; a file wins over the same property from the file or environment).
 * The values are registered as secrets. Error names the file, never the value. */
int pf_worker_config_kafka_credentials(pf_worker_config *c, pf_error *err);
/* Splits jobs_topics into at most max names (pointers into buf, n bytes);
 * error when there is none, too many, or an empty or overlong name. */
int pf_worker_config_topics(const pf_worker_config *c, char *buf, size_t n, const char **topics, int max, int *count,
                            pf_error *err);
/* Prints the settings table (names, defaults, meaning) for --help. */
void pf_worker_config_help(FILE *f);

#endif
