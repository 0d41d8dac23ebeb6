/* dev_broker.c - perflow-dev-broker: a Kafka cluster for development and tests
 * only, librdkafka's mock cluster (rdkafka_mock.h) in a process of its own.
 *
 * It is not Kafka: nothing is persisted, there is no replication and no
 * security, and its group coordinator implements only what librdkafka's own
 * tests need. It stands in for a cluster so that `make test` and local runs of
 * perflow-worker need no JVM. It listens on 127.0.0.1 only.
 *
 * On start it creates the topics asked for and prints one line,
 * "bootstrap.servers=HOST:PORT[,...]", on stdout. Then it reads commands on
 * stdin, one per line, and answers each with "ok" or "error: ...": the fault
 * injection the worker tests need (the mock cluster's API):
 *   topic NAME PARTITIONS              create a topic
 *   errors API COUNT ERROR [ERROR...]  the next COUNT requests of API (a name such
 *                                      as Produce, OffsetCommit, or a number) fail
 *                                      with the ERRORs in turn (names without the
 *                                      RD_KAFKA_RESP_ERR_ prefix, e.g.
 *                                      NOT_ENOUGH_REPLICAS, or numbers)
 *   clear API                          drop the errors still pending for API (so a
 *                                      test can heal a fault it set up to last)
 *   down BROKER | up BROKER            refuse / accept connections (-1: all brokers)
 *   rtt BROKER MS                      add round-trip latency
 *   leader TOPIC PARTITION BROKER      move a partition's leadership (with --brokers
 *                                      N > 1; clients see NOT_LEADER and follow)
 *   coordinator GROUP BROKER           make BROKER the coordinator of consumer group
 *                                      GROUP (so that faults can spare it: the mock's
 *                                      coordinator asserts when a member whose join is
 *                                      pending joins again after its connection broke)
 * End of stdin only stops the reading; SIGTERM or SIGINT end the process. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

static volatile sig_atomic_t run = 1;

static void on_signal(int sig) {
    (void)sig;
    run = 0;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: perflow-dev-broker [--brokers N] [--topic NAME[:PARTITIONS]]...\n\n"
            "Runs librdkafka's mock Kafka cluster on 127.0.0.1 for development and tests (not a\n"
            "Kafka cluster: nothing is persisted), creates the topics (default 1 partition each),\n"
            "prints \"bootstrap.servers=ADDRESSES\" and then takes fault-injection commands on\n"
            "stdin (see worker/dev_broker.c). SIGTERM or SIGINT stop it.\n");
}

/* The Kafka API keys the tests use, by name. */
static const struct { const char *name; int key; } api_names[] = {
    {"Produce", 0},        {"Fetch", 1},           {"ListOffsets", 2},  {"Metadata", 3},
    {"OffsetCommit", 8},   {"OffsetFetch", 9},     {"FindCoordinator", 10}, {"JoinGroup", 11},
    {"Heartbeat", 12},     {"LeaveGroup", 13},     {"SyncGroup", 14},   {"ApiVersions", 18},
    {"InitProducerId", 22}, {"AddPartitionsToTxn", 24}, {"EndTxn", 26},
};

static int parse_api(const char *s) {
    for (size_t i = 0; i < sizeof api_names / sizeof api_names[0]; i++)
        if (!strcasecmp(s, api_names[i].name)) return api_names[i].key;
    char *end;
    long v = strtol(s, &end, 10);
    return (*s && !*end && v >= 0 && v < 100) ? (int)v : -1;
}

/* An error code by its name (with or without RD_KAFKA_RESP_ERR_) or number; 1 if found. */
static int parse_err(const char *s, rd_kafka_resp_err_t *out) {
    if (!strncasecmp(s, "RD_KAFKA_RESP_ERR_", 18)) s += 18;
    const struct rd_kafka_err_desc *descs;
    size_t n;
    rd_kafka_get_err_descs(&descs, &n);
    for (size_t i = 0; i < n; i++)
        if (descs[i].name && !strcasecmp(descs[i].name, s)) {
            *out = descs[i].code;
            return 1;
        }
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end) return 0;
    *out = (rd_kafka_resp_err_t)v;
    return 1;
}

/* Runs one command line; writes the answer into ans. */
static void command(rd_kafka_mock_cluster_t *mc, char *line, char *ans, size_t n) {
    char *argv[40];
    int argc = 0;
    for (char *tok = strtok(line, " \t\r\n"); tok && argc < 40; tok = strtok(NULL, " \t\r\n")) argv[argc++] = tok;
    snprintf(ans, n, "ok");
    if (argc == 0) return;
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (!strcmp(argv[0], "topic") && argc == 3) {
        e = rd_kafka_mock_topic_create(mc, argv[1], atoi(argv[2]), 1);
    } else if (!strcmp(argv[0], "errors") && argc >= 4) {
        int api = parse_api(argv[1]), cnt = atoi(argv[2]);
        if (api < 0 || cnt < 1 || cnt > 1000) {
            snprintf(ans, n, "error: usage: errors API COUNT ERROR...");
            return;
        }
        rd_kafka_resp_err_t *errs = calloc((size_t)cnt, sizeof *errs);
        if (!errs) {
            snprintf(ans, n, "error: out of memory");
            return;
        }
        for (int i = 0; i < cnt; i++)
            if (!parse_err(argv[3 + i % (argc - 3)], &errs[i])) {
                snprintf(ans, n, "error: unknown error code '%s'", argv[3 + i % (argc - 3)]);
                free(errs);
                return;
            }
        rd_kafka_mock_push_request_errors_array(mc, (int16_t)api, (size_t)cnt, errs);
        free(errs);
    } else if (!strcmp(argv[0], "clear") && argc == 2) {
        int api = parse_api(argv[1]);
        if (api < 0) {
            snprintf(ans, n, "error: usage: clear API");
            return;
        }
        rd_kafka_mock_clear_request_errors(mc, (int16_t)api);
    } else if (!strcmp(argv[0], "down") && argc == 2) {
        e = rd_kafka_mock_broker_set_down(mc, atoi(argv[1]));
    } else if (!strcmp(argv[0], "up") && argc == 2) {
        e = rd_kafka_mock_broker_set_up(mc, atoi(argv[1]));
    } else if (!strcmp(argv[0], "rtt") && argc == 3) {
        e = rd_kafka_mock_broker_set_rtt(mc, atoi(argv[1]), atoi(argv[2]));
    } else if (!strcmp(argv[0], "leader") && argc == 4) {
        e = rd_kafka_mock_partition_set_leader(mc, argv[1], atoi(argv[2]), atoi(argv[3]));
    } else if (!strcmp(argv[0], "coordinator") && argc == 3) {
        e = rd_kafka_mock_coordinator_set(mc, "group", argv[1], atoi(argv[2]));
    } else {
        snprintf(ans, n, "error: unknown command '%s' (topic, errors, clear, down, up, rtt, leader, coordinator)", argv[0]);
        return;
    }
    if (e) snprintf(ans, n, "error: %s", rd_kafka_err2str(e));
}

int main(int argc, char **argv) {
    static const struct option opts[] = {
        {"brokers", required_argument, 0, 'b'},
        {"topic", required_argument, 0, 't'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int brokers = 1, c;
    char *topics[64];
    int ntopics = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'b':
            brokers = atoi(optarg);
            if (brokers < 1 || brokers > 16) {
                fprintf(stderr, "perflow-dev-broker: --brokers must be 1 to 16\n");
                return 2;
            }
            break;
        case 't':
            if (ntopics == 64) {
                fprintf(stderr, "perflow-dev-broker: at most 64 topics\n");
                return 2;
            }
            topics[ntopics++] = optarg;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* The host handle only carries the cluster; it never connects anywhere. */
    if (rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "perflow-dev-broker: %s\n", errstr);
        return 1;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) { /* conf is freed by rd_kafka_new only on success */
        rd_kafka_conf_destroy(conf);
        fprintf(stderr, "perflow-dev-broker: %s\n", errstr);
        return 1;
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
    if (!mc) {
        fprintf(stderr, "perflow-dev-broker: could not start the mock cluster\n");
        rd_kafka_destroy(rk);
        return 1;
    }
    int rc = 0;
    for (int i = 0; i < ntopics; i++) {
        char name[256];
        int parts = 1;
        snprintf(name, sizeof name, "%s", topics[i]);
        char *colon = strchr(name, ':');
        if (colon) {
            *colon = '\0';
            parts = atoi(colon + 1);
        }
        rd_kafka_resp_err_t e = parts >= 1 ? rd_kafka_mock_topic_create(mc, name, parts, 1)
                                           : RD_KAFKA_RESP_ERR__INVALID_ARG;
        if (e) {
            fprintf(stderr, "perflow-dev-broker: topic '%s': %s\n", topics[i], rd_kafka_err2str(e));
            rc = 1;
            goto out;
        }
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal; /* no SA_RESTART: a blocked read returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    printf("bootstrap.servers=%s\n", rd_kafka_mock_cluster_bootstraps(mc));
    fflush(stdout);

    char line[4096], ans[512];
    int reading = 1;
    while (run) {
        if (!reading) {
            sleep(1); /* not pause(): a signal just before it would be missed */
            continue;
        }
        if (!fgets(line, sizeof line, stdin)) {
            if (ferror(stdin) && errno == EINTR) {
                clearerr(stdin);
                continue;
            }
            reading = 0; /* end of input: keep serving until a signal */
            continue;
        }
        command(mc, line, ans, sizeof ans);
        printf("%s\n", ans);
        fflush(stdout);
    }
out:
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return rc;
}
