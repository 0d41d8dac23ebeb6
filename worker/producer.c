/* producer.c - the idempotent producer of statuses, re-enqueues and dead letters (producer.h). */
#include "producer.h"

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

struct pf_producer {
    rd_kafka_t *rk;
    /* The last TLS or SASL failure librdkafka reported (error callback, on
     * librdkafka's thread), for the start-up check: such a failure is a
     * configuration error, not a broker being away. */
    pthread_mutex_t lock;
    char security_error[512];
};

/* Delivery reports: called inside rd_kafka_poll on the main thread. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)opaque;
    pf_delivery *d = m->_private;
    if (!d) {
        if (m->err)
            pf_wlog(PF_LOG_WARN, "kafka.delivery_failed", NULL, NULL, "an event for %s was lost: %s",
                    rd_kafka_topic_name(m->rkt), rd_kafka_err2str(m->err));
        return;
    }
    if (d->orphaned) {
        free(d);
        return;
    }
    d->done = 1;
    if (m->err) {
        d->failed = 1;
        d->fatal = m->err == RD_KAFKA_RESP_ERR__FATAL;
        if (m->err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED)
            /* Seeing a topic needs only DESCRIBE (which READ implies): a worker whose user
             * can read the status topic starts, and learns here that it may not write. */
            snprintf(d->error, sizeof d->error, "not authorized for topic '%s': the worker's user needs the WRITE "
                     "ACL on it (%s)", rd_kafka_topic_name(m->rkt), rd_kafka_err2str(m->err));
        else
            snprintf(d->error, sizeof d->error, "%s", rd_kafka_err2str(m->err));
    } else if (m->offset < 0) {
        /* With acks=all a stored message has an offset. librdkafka's mock
         * cluster (the dev broker) acknowledges without storing the first
         * batch of a partition retried after an injected error; a durable
         * send must not take that for delivery: it is sent again (at worst a
         * duplicate event, never a lost one). */
        d->failed = 1;
        snprintf(d->error, sizeof d->error, "the broker acknowledged %s without an offset: sending it again",
                 rd_kafka_topic_name(m->rkt));
    }
}

/* A TLS alert from the broker (it refused our certificate or protocol)
 * comes as a transport error whose reason is OpenSSL's. */
static int is_security_error(int err, const char *reason) {
    return err == RD_KAFKA_RESP_ERR__AUTHENTICATION || err == RD_KAFKA_RESP_ERR__SSL ||
           err == RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED ||
           err == RD_KAFKA_RESP_ERR_UNSUPPORTED_SASL_MECHANISM || err == RD_KAFKA_RESP_ERR_ILLEGAL_SASL_STATE ||
           (err == RD_KAFKA_RESP_ERR__TRANSPORT && reason && strstr(reason, "SSL routines") && strstr(reason, "alert"));
}

/* librdkafka before 2.6.1 sends the server's nonce twice in its SCRAM client-final
 * message; Kafka 4.x checks the nonce strictly (RFC 5802) and refuses every SCRAM login
 * of such a client as "invalid credentials", right password or not (librdkafka#4895;
 * found by tests/worker/test_sasl.py against Kafka 4.1). Debian 12 ships 2.0.2: the
 * refusal then says so, as no password will help. */
static const char *scram_hint(int err, const char *reason) {
    if (err != RD_KAFKA_RESP_ERR__AUTHENTICATION || !reason || !strstr(reason, "SCRAM") ||
        rd_kafka_version() >= 0x020601ff)
        return "";
    return "; note: this librdkafka (before 2.6.1) fails every SCRAM login to Kafka 4.x brokers, "
           "even with the right password (librdkafka#4895): run the worker with librdkafka 2.6.1 or later";
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    pf_producer *p = opaque;
    (void)rk;
    int security = is_security_error(err, reason);
    if (security && p) {
        pthread_mutex_lock(&p->lock);
        snprintf(p->security_error, sizeof p->security_error, "%s: %s%s", rd_kafka_err2name(err), reason,
                 scram_hint(err, reason));
        pthread_mutex_unlock(&p->lock);
    }
    pf_wlog(err == RD_KAFKA_RESP_ERR__FATAL || security ? PF_LOG_ERROR : PF_LOG_WARN, "kafka.error", NULL,
            json_pack("{s:s}", "client", "producer"), "%s: %s", rd_kafka_err2name(err), reason);
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    (void)rk;
    /* CONFWARN: a kafka.* setting meant for the consumer; expected, as both clients get them all. */
    int l = !strcmp(fac, "CONFWARN") ? PF_LOG_DEBUG : level <= 3 ? PF_LOG_ERROR : level <= 4 ? PF_LOG_WARN : PF_LOG_DEBUG;
    pf_wlog(l, "kafka.log", NULL, json_pack("{s:s, s:s}", "client", "producer", "facility", fac), "%s", buf);
}

static int set(rd_kafka_conf_t *conf, const char *k, const char *v, pf_error *err) {
    char es[512];
    if (rd_kafka_conf_set(conf, k, v, es, sizeof es) != RD_KAFKA_CONF_OK) return pf_fail(err, "kafka %s: %s", k, es);
    return 0;
}

int pf_producer_open(pf_producer **out, const pf_worker_config *cfg, pf_error *err) {
    *out = NULL;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char timeout[32];
    snprintf(timeout, sizeof timeout, "%ld", cfg->delivery_timeout_ms);
    if (set(conf, "bootstrap.servers", cfg->brokers, err) || set(conf, "client.id", "perflow-worker", err) ||
        set(conf, "enable.idempotence", "true", err) || set(conf, "acks", "all", err) ||
        set(conf, "linger.ms", "0", err) || set(conf, "message.timeout.ms", timeout, err))
        goto fail;
    /* kafka.* settings apply to both clients; consumer-only ones are skipped here. */
    for (int i = 0; i < cfg->n_kafka; i++) {
        char es[512];
        rd_kafka_conf_res_t r = rd_kafka_conf_set(conf, cfg->kafka_key[i], cfg->kafka_val[i], es, sizeof es);
        if (r == RD_KAFKA_CONF_INVALID || (r == RD_KAFKA_CONF_UNKNOWN && !strstr(es, "consumer"))) {
            pf_fail(err, "kafka.%s: %s", cfg->kafka_key[i], es);
            goto fail;
        }
    }
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_log_cb(conf, on_log);
    pf_producer *p = PF_CALLOC(1, sizeof *p);
    pthread_mutex_init(&p->lock, NULL);
    rd_kafka_conf_set_opaque(conf, p);
    char es[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, es, sizeof es);
    if (!rk) {
        pf_fail(err, "kafka producer: %s", es);
        pthread_mutex_destroy(&p->lock);
        free(p);
        goto fail;
    }
    /* conf now belongs to rk */
    p->rk = rk;
    *out = p;
    return 0;
fail:
    rd_kafka_conf_destroy(conf);
    return -1;
}

int pf_producer_security_error(pf_producer *p, char *why, size_t n) {
    pthread_mutex_lock(&p->lock);
    int seen = p->security_error[0] != '\0';
    if (seen) snprintf(why, n, "%s", p->security_error);
    pthread_mutex_unlock(&p->lock);
    return seen;
}

void pf_producer_close(pf_producer *p, int flush_ms) {
    if (!p) return;
    if (rd_kafka_flush(p->rk, flush_ms) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_flush(p->rk, 1000); /* serves the purged messages' reports */
    }
    rd_kafka_destroy(p->rk);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

int pf_producer_send(pf_producer *p, const char *topic, const char *key, const void *value, size_t len,
                     const pf_header *headers, int n, pf_delivery **d, pf_error *err) {
    pf_delivery *dl = d ? PF_CALLOC(1, sizeof *dl) : NULL;
    rd_kafka_headers_t *hdrs = n ? rd_kafka_headers_new((size_t)n) : NULL;
    for (int i = 0; i < n; i++) rd_kafka_header_add(hdrs, headers[i].name, -1, headers[i].value, -1);
    rd_kafka_resp_err_t e =
        rd_kafka_producev(p->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
                          RD_KAFKA_V_VALUE((void *)value, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                          RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(dl), RD_KAFKA_V_END);
    if (e) { /* on failure the headers are still ours */
        if (hdrs) rd_kafka_headers_destroy(hdrs);
        free(dl);
        if (d) *d = NULL;
        return pf_fail(err, "kafka: producing to %s: %s", topic, rd_kafka_err2str(e));
    }
    if (d) *d = dl;
    return 0;
}

void pf_producer_poll(pf_producer *p, int timeout_ms) {
    rd_kafka_poll(p->rk, timeout_ms);
}

void pf_delivery_release(pf_producer *p, pf_delivery *d) {
    (void)p;
    if (!d) return;
    if (d->done) free(d);
    else d->orphaned = 1;
}

int pf_producer_fatal(pf_producer *p, char *why, size_t n) {
    char es[256];
    rd_kafka_resp_err_t e = rd_kafka_fatal_error(p->rk, es, sizeof es);
    if (!e) return 0;
    snprintf(why, n, "%s: %s", rd_kafka_err2name(e), es);
    return 1;
}

int pf_producer_reachable(pf_producer *p, int timeout_ms, pf_error *err) {
    const struct rd_kafka_metadata *md = NULL;
    /* all_topics 0: only the topics this client knows, so the answer is small */
    rd_kafka_resp_err_t e = rd_kafka_metadata(p->rk, 0, NULL, &md, timeout_ms);
    if (md) rd_kafka_metadata_destroy(md);
    if (e) return pf_fail(err, "kafka: no broker answered within %d ms: %s", timeout_ms, rd_kafka_err2str(e));
    return 0;
}

int pf_producer_topic_ok(pf_producer *p, const char *topic, const char *acl, int timeout_ms, pf_error *err) {
    rd_kafka_topic_t *t = rd_kafka_topic_new(p->rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(p->rk, 0, t, &md, timeout_ms);
    rd_kafka_topic_destroy(t);
    int rc = 0;
    if (!e && md->topic_cnt == 1) {
        rd_kafka_resp_err_t te = md->topics[0].err;
        if (te == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED)
            rc = pf_fail(err, "kafka: not authorized for topic '%s': the worker's user needs the %s ACL on it "
                              "(Broker: Topic authorization failed)", topic, acl);
        else if (te == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || (!te && md->topics[0].partition_cnt < 1))
            rc = pf_fail(err, "kafka: topic '%s' does not exist (topics are not created on first use: "
                              "create it with its partitions before starting workers)", topic);
        else if (te)
            rc = pf_fail(err, "kafka: topic '%s': %s", topic, rd_kafka_err2str(te));
    }
    if (md) rd_kafka_metadata_destroy(md);
    return rc;
}
