/* submit_kafka.c - the producer of jobs and the reader of statuses of `perflow submit` (submit_kafka.h). */
#include "submit_kafka.h"

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct pf_submit_kafka {
    rd_kafka_t *producer;
    rd_kafka_t *reader; /* NULL without a status topic */
    const char *jobs_topic;
    int partitions; /* of the jobs topic, when opened */
    long queued, delivered, failed;
    char first_error[256];
};

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    pf_submit_kafka *k = opaque;
    if (m->err) {
        if (!k->failed++)
            snprintf(k->first_error, sizeof k->first_error, "%s", rd_kafka_err2str(m->err));
    } else {
        k->delivered++;
    }
}

/* librdkafka's own log lines would interleave with the progress line, and
 * its connection errors repeat what the one error of the failing call says
 * (a broker that does not answer is reported when the wait for it ends): keep
 * only the critical ones. */
static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    (void)rk, (void)fac;
    if (level <= 2) fprintf(stderr, "perflow: submit: kafka: %s\n", buf);
}

/* A configuration with the brokers and the kafka.* settings that apply to this
 * kind of client (the other kind's are skipped, as the worker does). */
static rd_kafka_conf_t *make_conf(const pf_worker_config *cfg, int producer, pf_error *err) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char es[512];
    const char *base[][2] = {{"bootstrap.servers", cfg->brokers}, {"client.id", "perflow-submit"}};
    for (size_t i = 0; i < sizeof base / sizeof *base; i++)
        if (rd_kafka_conf_set(conf, base[i][0], base[i][1], es, sizeof es) != RD_KAFKA_CONF_OK) {
            pf_fail(err, "kafka %s: %s", base[i][0], es);
            rd_kafka_conf_destroy(conf);
            return NULL;
        }
    for (int i = 0; i < cfg->n_kafka; i++) {
        rd_kafka_conf_res_t r = rd_kafka_conf_set(conf, cfg->kafka_key[i], cfg->kafka_val[i], es, sizeof es);
        if (r == RD_KAFKA_CONF_INVALID ||
            (r == RD_KAFKA_CONF_UNKNOWN && !strstr(es, producer ? "consumer" : "producer"))) {
            pf_fail(err, "kafka.%s: %s", cfg->kafka_key[i], es);
            rd_kafka_conf_destroy(conf);
            return NULL;
        }
    }
    rd_kafka_conf_set_log_cb(conf, on_log);
    return conf;
}

static int conf_set(rd_kafka_conf_t *conf, const char *k, const char *v, pf_error *err) {
    char es[512];
    if (rd_kafka_conf_set(conf, k, v, es, sizeof es) != RD_KAFKA_CONF_OK) return pf_fail(err, "kafka %s: %s", k, es);
    return 0;
}

/* The partition count of topic (error when the brokers do not answer or do not have it). */
static int partitions(rd_kafka_t *rk, const char *brokers, const char *topic, int timeout_ms, int *n,
                      pf_error *err) {
    rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, t, &md, timeout_ms);
    rd_kafka_topic_destroy(t);
    if (e)
        return pf_fail(err, "kafka: no broker of %s answered within %d s (%s)", brokers, timeout_ms / 1000,
                       rd_kafka_err2str(e));
    int rc = 0;
    if (md->topic_cnt != 1 || md->topics[0].err || md->topics[0].partition_cnt < 1)
        rc = pf_fail(err, "kafka: topic '%s' does not exist on %s%s%s", topic, brokers,
                     md->topic_cnt == 1 && md->topics[0].err ? ": " : "",
                     md->topic_cnt == 1 && md->topics[0].err ? rd_kafka_err2str(md->topics[0].err) : "");
    else
        *n = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    return rc;
}

static int open_reader(pf_submit_kafka *k, const pf_worker_config *cfg, const char *topic, int timeout_ms,
                       pf_error *err) {
    rd_kafka_conf_t *conf = make_conf(cfg, 0, err);
    if (!conf) return -1;
    char group[96], es[512];
    /* Never joined (the partitions are assigned), but librdkafka wants a group id. */
    snprintf(group, sizeof group, "perflow-submit-%ld-%ld", (long)getpid(), (long)time(NULL));
    if (conf_set(conf, "group.id", group, err) || conf_set(conf, "enable.auto.commit", "false", err) ||
        conf_set(conf, "enable.auto.offset.store", "false", err)) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    if (!(k->reader = rd_kafka_new(RD_KAFKA_CONSUMER, conf, es, sizeof es))) {
        rd_kafka_conf_destroy(conf);
        return pf_fail(err, "kafka consumer: %s", es);
    }
    int n;
    if (partitions(k->reader, cfg->brokers, topic, timeout_ms, &n, err)) return -1;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
    int rc = 0;
    for (int p = 0; p < n && !rc; p++) {
        int64_t lo, hi;
        rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(k->reader, topic, p, &lo, &hi, timeout_ms);
        if (e) rc = pf_fail(err, "kafka: the end of %s[%d]: %s", topic, p, rd_kafka_err2str(e));
        else rd_kafka_topic_partition_list_add(l, topic, p)->offset = hi;
    }
    if (!rc) {
        rd_kafka_resp_err_t e = rd_kafka_assign(k->reader, l);
        if (e) rc = pf_fail(err, "kafka: reading %s: %s", topic, rd_kafka_err2str(e));
    }
    rd_kafka_topic_partition_list_destroy(l);
    return rc;
}

int pf_submit_kafka_open(pf_submit_kafka **out, const pf_worker_config *cfg, const char *jobs_topic,
                         const char *status_topic, int timeout_ms, pf_error *err) {
    *out = NULL;
    pf_submit_kafka *k = PF_CALLOC(1, sizeof *k);
    k->jobs_topic = jobs_topic;
    char timeout[32], es[512];
    snprintf(timeout, sizeof timeout, "%ld", cfg->delivery_timeout_ms);
    rd_kafka_conf_t *conf = make_conf(cfg, 1, err);
    if (!conf) goto fail;
    /* Idempotent, acks=all: a retried send after a broker error never
     * duplicates or reorders a job; message.timeout.ms bounds every send. */
    if (conf_set(conf, "enable.idempotence", "true", err) || conf_set(conf, "acks", "all", err) ||
        conf_set(conf, "linger.ms", "20", err) || conf_set(conf, "message.timeout.ms", timeout, err)) {
        rd_kafka_conf_destroy(conf);
        goto fail;
    }
    rd_kafka_conf_set_opaque(conf, k);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    if (!(k->producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, es, sizeof es))) {
        rd_kafka_conf_destroy(conf);
        pf_fail(err, "kafka producer: %s", es);
        goto fail;
    }
    if (partitions(k->producer, cfg->brokers, jobs_topic, timeout_ms, &k->partitions, err)) goto fail;
    if (status_topic && open_reader(k, cfg, status_topic, timeout_ms, err)) goto fail;
    *out = k;
    return 0;
fail:
    pf_submit_kafka_close(k, 0);
    return -1;
}

void pf_submit_kafka_close(pf_submit_kafka *k, int flush_ms) {
    if (!k) return;
    if (k->reader) {
        rd_kafka_consumer_close(k->reader); /* not a member: returns at once */
        rd_kafka_destroy(k->reader);
    }
    if (k->producer) {
        if (rd_kafka_flush(k->producer, flush_ms) != RD_KAFKA_RESP_ERR_NO_ERROR)
            rd_kafka_purge(k->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_destroy(k->producer);
    }
    free(k);
}

int pf_submit_kafka_partitions(const pf_submit_kafka *k) {
    return k->partitions;
}

int pf_submit_kafka_send(pf_submit_kafka *k, const char *job_id, const char *batch_id, const char *json,
                         const char *key, int partition, pf_error *err) {
    if (!key) key = job_id;
    for (;;) {
        rd_kafka_headers_t *h = rd_kafka_headers_new(1);
        rd_kafka_header_add(h, "perflow-batch-id", -1, batch_id, -1);
        rd_kafka_resp_err_t e = rd_kafka_producev(
            k->producer, RD_KAFKA_V_TOPIC(k->jobs_topic), RD_KAFKA_V_KEY(key, strlen(key)),
            RD_KAFKA_V_PARTITION(partition >= 0 ? partition : RD_KAFKA_PARTITION_UA),
            RD_KAFKA_V_VALUE((void *)json, strlen(json)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
        if (!e) {
            k->queued++;
            return 0;
        }
        rd_kafka_headers_destroy(h); /* still ours when producev fails */
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            return pf_fail(err, "kafka: producing %s to %s: %s", job_id, k->jobs_topic, rd_kafka_err2str(e));
        rd_kafka_poll(k->producer, 100); /* the local queue drains as the broker acknowledges */
    }
}

void pf_submit_kafka_poll(pf_submit_kafka *k, int ms) {
    rd_kafka_poll(k->producer, ms);
}

int pf_submit_kafka_flush(pf_submit_kafka *k, pf_error *err) {
    /* Each message fails by itself after message.timeout.ms, so this ends. */
    while (k->delivered + k->failed < k->queued) rd_kafka_poll(k->producer, 100);
    if (k->failed)
        return pf_fail(err, "kafka: %ld of %ld jobs were not written: %s", k->failed, k->queued, k->first_error);
    return 0;
}

long pf_submit_kafka_delivered(const pf_submit_kafka *k) {
    return k->delivered;
}

json_t *pf_submit_kafka_status(pf_submit_kafka *k, int ms) {
    if (!k->reader) return NULL;
    rd_kafka_message_t *m = rd_kafka_consumer_poll(k->reader, ms);
    if (!m) return NULL;
    json_t *ev = NULL;
    if (!m->err) {
        ev = json_loadb(m->payload, m->len, 0, NULL);
        if (!json_is_object(ev) || !json_is_string(json_object_get(ev, "job_id"))) {
            json_decref(ev);
            ev = NULL;
        }
    }
    rd_kafka_message_destroy(m);
    return ev;
}
