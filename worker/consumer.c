/* consumer.c - the job consumer (consumer.h). */
#include "consumer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker_config.h"
#include "log.h"
#include "metrics.h"
#include "prefer.h"

/* How long a lower-priority message waits while a higher-priority topic is
 * known to have a backlog: long enough for that client to fetch again after a
 * resume (librdkafka 2.0 may take up to a second to resume fetching, several on a
 * loaded machine). */
#define PRIORITY_HOLD_MS 10000

struct pf_consumer {
    int n;
    rd_kafka_t *rk[PF_WORKER_MAX_TOPICS];
    char topic[PF_WORKER_MAX_TOPICS][256];
    int paused;
    rd_kafka_message_t **pending; /* pushed back, oldest first; never dropped (see push_back) */
    int npending, cap;
    /* warm-model preference (pf_consumer_prefer): NULL, none */
    int (*warm)(const rd_kafka_message_t *m, void *ctx);
    void *warm_ctx;
    int max_pass;
    int passed;      /* picks in a row that passed over the head (prefer.h) */
    int passed_before; /* passed before the last message handed out, restored when it comes back */
    int taken_at;      /* where in the pending list the last message handed out was (0: not from it) */
};

static const char *client_name(rd_kafka_t *rk) {
    return rd_kafka_name(rk);
}

/* {"topic[partition]", ...} of a list, for log lines. */
static json_t *partitions_json(const rd_kafka_topic_partition_list_t *l) {
    json_t *a = json_array();
    for (int i = 0; l && i < l->cnt; i++) {
        char s[300];
        snprintf(s, sizeof s, "%s[%d]", l->elems[i].topic, (int)l->elems[i].partition);
        json_array_append_new(a, json_string(s));
    }
    return a;
}

static void log_assignment(rd_kafka_t *rk, const char *event, const rd_kafka_topic_partition_list_t *changed) {
    rd_kafka_topic_partition_list_t *now = NULL;
    rd_kafka_assignment(rk, &now);
    pf_wlog(PF_LOG_INFO, event, NULL,
            json_pack("{s:s, s:o, s:o}", "client", client_name(rk), "partitions", partitions_json(changed),
                      "assignment", partitions_json(now)),
            NULL);
    if (now) rd_kafka_topic_partition_list_destroy(now);
}

/* Drops pushed-back messages of the revoked partitions: the new owner reads
 * them from the committed offset, which is before them. */
static void drop_pending(pf_consumer *c, const rd_kafka_topic_partition_list_t *revoked) {
    int k = 0;
    for (int i = 0; i < c->npending; i++) {
        rd_kafka_message_t *m = c->pending[i];
        int drop = 0;
        for (int j = 0; j < revoked->cnt && !drop; j++)
            drop = m->partition == revoked->elems[j].partition &&
                   !strcmp(rd_kafka_topic_name(m->rkt), revoked->elems[j].topic);
        if (drop) rd_kafka_message_destroy(m);
        else c->pending[k++] = m;
    }
    c->npending = k;
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e, rd_kafka_topic_partition_list_t *parts,
                         void *opaque) {
    pf_consumer *c = opaque;
    rd_kafka_error_t *error = NULL;
    if (e == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        error = rd_kafka_incremental_assign(rk, parts);
        /* A partition keeps its pause flag in librdkafka across a revoke and a
         * new assignment: set it to what the loop wants now. */
        if (!error) c->paused ? rd_kafka_pause_partitions(rk, parts) : rd_kafka_resume_partitions(rk, parts);
        log_assignment(rk, "kafka.assigned", parts);
    } else if (e == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        /* Commit what is stored before the partitions change hands, so the new
         * owner does not see finished jobs again. Asynchronous: a synchronous
         * commit here waits for the group coordinator, which made a worker
         * whose broker was already gone hang for the whole session timeout
         * in its shutdown; every job's offset is committed as it ends anyway
         * (pf_consumer_commit), so this only catches up. Not when the
         * partitions were lost: the group has moved on and would refuse it. */
        if (!rd_kafka_assignment_lost(rk)) {
            rd_kafka_resp_err_t ce = rd_kafka_commit(rk, NULL, 1);
            if (ce && ce != RD_KAFKA_RESP_ERR__NO_OFFSET)
                pf_wlog(PF_LOG_WARN, "kafka.commit_failed", NULL, NULL, "commit on revoke: %s", rd_kafka_err2str(ce));
        }
        drop_pending(c, parts);
        error = rd_kafka_incremental_unassign(rk, parts);
        log_assignment(rk, "kafka.revoked", parts);
    } else {
        pf_wlog(PF_LOG_ERROR, "kafka.rebalance_failed", NULL, NULL, "%s", rd_kafka_err2str(e));
        error = rd_kafka_incremental_unassign(rk, parts);
    }
    if (error) {
        pf_wlog(PF_LOG_ERROR, "kafka.rebalance_failed", NULL, NULL, "%s", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    }
}

static void on_commit(rd_kafka_t *rk, rd_kafka_resp_err_t e, rd_kafka_topic_partition_list_t *offsets, void *opaque) {
    (void)opaque;
    if (e && e != RD_KAFKA_RESP_ERR__NO_OFFSET)
        pf_wlog(PF_LOG_WARN, "kafka.commit_failed", NULL, json_pack("{s:s}", "client", client_name(rk)), "%s",
                rd_kafka_err2str(e));
    else if (!e)
        pf_wlog(PF_LOG_DEBUG, "kafka.committed", NULL,
                json_pack("{s:s, s:o}", "client", client_name(rk), "partitions", partitions_json(offsets)), NULL);
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    (void)opaque;
    pf_wlog(err == RD_KAFKA_RESP_ERR__FATAL ? PF_LOG_ERROR : PF_LOG_WARN, "kafka.error", NULL,
            json_pack("{s:s}", "client", client_name(rk)), "%s: %s", rd_kafka_err2name(err), reason);
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    /* CONFWARN: a kafka.* setting meant for the producer; expected, as both clients get them all. */
    int l = !strcmp(fac, "CONFWARN") ? PF_LOG_DEBUG : level <= 3 ? PF_LOG_ERROR : level <= 4 ? PF_LOG_WARN : PF_LOG_DEBUG;
    pf_wlog(l, "kafka.log", NULL, json_pack("{s:s, s:s}", "client", rd_kafka_name(rk), "facility", fac), "%s", buf);
}

/* librdkafka's statistics (every statistics.interval.ms, from the consumer poll):
 * the lag of each assigned partition of the client's one topic, for
 * perflow_consumer_lag. consumer_lag is the high watermark minus the group's
 * committed offset; before the first commit (-1) the backlog is counted from the
 * log start, as auto.offset.reset is earliest. Returns 0: librdkafka frees json. */
static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque) {
    (void)rk;
    (void)opaque;
    json_t *root = json_loadb(json, len, 0, NULL);
    json_t *topics = json_object_get(root, "topics");
    const char *name;
    json_t *topic;
    json_object_foreach(topics, name, topic) {
        int parts[256];
        long long lags[256];
        int n = 0;
        const char *key;
        json_t *p;
        json_object_foreach(json_object_get(topic, "partitions"), key, p) {
            json_int_t id = json_integer_value(json_object_get(p, "partition"));
            if (id < 0 || n == 256 || !json_is_true(json_object_get(p, "desired"))) continue;
            json_int_t lag = json_integer_value(json_object_get(p, "consumer_lag"));
            json_int_t hi = json_integer_value(json_object_get(p, "hi_offset"));
            json_int_t lo = json_integer_value(json_object_get(p, "lo_offset"));
            if (lag < 0 && hi >= 0) lag = hi - (lo > 0 ? lo : 0);
            if (lag < 0) continue; /* nothing fetched yet: unknown, not 0 */
            parts[n] = (int)id;
            lags[n++] = lag;
        }
        pf_metrics_consumer_lag(name, parts, lags, n);
    }
    json_decref(root);
    return 0;
}

static int set(rd_kafka_conf_t *conf, const char *k, const char *v, pf_error *err) {
    char es[512];
    if (rd_kafka_conf_set(conf, k, v, es, sizeof es) != RD_KAFKA_CONF_OK) return pf_fail(err, "kafka %s: %s", k, es);
    return 0;
}

static int open_one(pf_consumer *c, int i, const pf_worker_config *cfg, const char *topic, int n, pf_error *err) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char client_id[300];
    snprintf(client_id, sizeof client_id, "perflow-worker-%d", i);
    if (set(conf, "bootstrap.servers", cfg->brokers, err) || set(conf, "group.id", cfg->group, err) ||
        set(conf, "client.id", client_id, err) ||
        set(conf, "partition.assignment.strategy", "cooperative-sticky", err) ||
        set(conf, "enable.auto.offset.store", "false", err) || set(conf, "enable.auto.commit", "true", err) ||
        set(conf, "auto.commit.interval.ms", "1000", err) || set(conf, "auto.offset.reset", "earliest", err) ||
        set(conf, "enable.partition.eof", "false", err) ||
        /* A resumed partition is fetched again only after the fetch in flight
         * returns: a short long-poll keeps the pause between jobs short. */
        set(conf, "fetch.wait.max.ms", "100", err) ||
        /* perflow_consumer_lag (kafka.statistics.interval.ms changes it; 0: off) */
        set(conf, "statistics.interval.ms", "5000", err))
        goto fail;
    if (cfg->instance_id[0]) {
        char iid[300];
        if (n > 1) snprintf(iid, sizeof iid, "%s-%d", cfg->instance_id, i);
        else snprintf(iid, sizeof iid, "%s", cfg->instance_id);
        if (set(conf, "group.instance.id", iid, err)) goto fail;
    }
    for (int k = 0; k < cfg->n_kafka; k++) {
        char es[512];
        rd_kafka_conf_res_t r = rd_kafka_conf_set(conf, cfg->kafka_key[k], cfg->kafka_val[k], es, sizeof es);
        if (r == RD_KAFKA_CONF_INVALID || (r == RD_KAFKA_CONF_UNKNOWN && !strstr(es, "producer"))) {
            pf_fail(err, "kafka.%s: %s", cfg->kafka_key[k], es);
            goto fail;
        }
    }
    rd_kafka_conf_set_opaque(conf, c);
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    rd_kafka_conf_set_offset_commit_cb(conf, on_commit);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_log_cb(conf, on_log);
    rd_kafka_conf_set_stats_cb(conf, on_stats);
    char es[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, es, sizeof es);
    if (!rk) {
        pf_fail(err, "kafka consumer: %s", es);
        goto fail;
    }
    c->rk[i] = rk; /* conf now belongs to rk */
    snprintf(c->topic[i], sizeof c->topic[i], "%s", topic);
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(rk, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    if (e) return pf_fail(err, "kafka: subscribing to %s: %s", topic, rd_kafka_err2str(e));
    return 0;
fail:
    rd_kafka_conf_destroy(conf);
    return -1;
}

int pf_consumer_open(pf_consumer **out, const pf_worker_config *cfg, const char *const *topics, int n,
                     pf_error *err) {
    *out = NULL;
    PF_CHECK(n >= 1 && n <= PF_WORKER_MAX_TOPICS);
    pf_consumer *c = PF_CALLOC(1, sizeof *c);
    for (int i = 0; i < n; i++) {
        if (open_one(c, i, cfg, topics[i], n, err)) {
            pf_consumer_close(c);
            return -1;
        }
        c->n = i + 1;
    }
    *out = c;
    return 0;
}

static long long mono_ms(void);

/* Closes client rk (commits, leaves the group) within deadline (monotonic
 * ms): rd_kafka_consumer_close blocks for up to the session timeout when
 * the brokers are gone, so the close runs in librdkafka's background and
 * is given up at the deadline (the group then notices the member is gone
 * by itself; nothing is lost, the offsets not committed are redelivered). */
static void close_client(pf_consumer *c, rd_kafka_t *rk, long long deadline) {
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_error_t *error = rd_kafka_consumer_close_queue(rk, q);
    int closed = 0;
    if (error) {
        pf_wlog(PF_LOG_WARN, "kafka.close_failed", NULL, json_pack("{s:s}", "client", client_name(rk)), "%s",
                rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    } else {
        while (!(closed = rd_kafka_consumer_closed(rk)) && mono_ms() < deadline) {
            rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 50);
            if (!ev) continue;
            if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE)
                on_rebalance(rk, rd_kafka_event_error(ev), rd_kafka_event_topic_partition_list(ev), c);
            rd_kafka_event_destroy(ev);
        }
        if (!closed)
            pf_wlog(PF_LOG_WARN, "kafka.close_timeout", NULL, json_pack("{s:s}", "client", client_name(rk)),
                    "the group did not answer within %d ms; leaving without it (uncommitted jobs are delivered again)",
                    PF_CONSUMER_CLOSE_MS);
    }
    rd_kafka_queue_destroy(q);
    rd_kafka_destroy_flags(rk, closed ? 0 : RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
}

void pf_consumer_close(pf_consumer *c) {
    if (!c) return;
    for (int i = 0; i < c->npending; i++) rd_kafka_message_destroy(c->pending[i]);
    free(c->pending);
    c->npending = 0;
    long long deadline = mono_ms() + PF_CONSUMER_CLOSE_MS;
    for (int i = 0; i < PF_WORKER_MAX_TOPICS; i++)
        if (c->rk[i]) close_client(c, c->rk[i], deadline);
    free(c);
}

/* One message of client i without waiting: NULL when none. Errors are logged. */
static rd_kafka_message_t *take(pf_consumer *c, int i, int timeout_ms) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(c->rk[i], timeout_ms);
    if (!m) return NULL;
    if (m->err) {
        pf_wlog(m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF ? PF_LOG_DEBUG : PF_LOG_WARN, "kafka.consumer_error",
                NULL, json_pack("{s:s}", "client", client_name(c->rk[i])), "%s", rd_kafka_message_errstr(m));
        rd_kafka_message_destroy(m);
        return NULL;
    }
    return m;
}

/* Pending messages are never dropped: a message taken from librdkafka and not
 * processed must not let a later message's offset be stored past it. The list
 * stays short, since messages only arrive here while the partitions are being
 * paused or when the loop gathers a batch. */
static void push_back(pf_consumer *c, rd_kafka_message_t *m) {
    if (c->npending == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 16;
        rd_kafka_message_t **p = realloc(c->pending, (size_t)c->cap * sizeof *p);
        PF_CHECK(p);
        c->pending = p;
    }
    c->pending[c->npending++] = m;
}

/* The priority of m: the index of its topic. */
static int priority_of(const pf_consumer *c, const rd_kafka_message_t *m) {
    const char *t = rd_kafka_topic_name(m->rkt);
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->topic[i], t)) return i;
    return c->n;
}

/* 1 when a client of higher priority than i is known to have messages it has
 * not handed out: a partition whose last fetched high watermark is past the
 * position. Each client fetches on its own, so after a pause one with less
 * urgent work may be first to have data. */
static int higher_has_backlog(pf_consumer *c, int i) {
    for (int j = 0; j < i; j++) {
        rd_kafka_topic_partition_list_t *a = NULL;
        if (rd_kafka_assignment(c->rk[j], &a) || !a) continue;
        int backlog = 0;
        if (a->cnt && !rd_kafka_position(c->rk[j], a))
            for (int k = 0; k < a->cnt && !backlog; k++) {
                int64_t lo, hi;
                if (a->elems[k].offset >= 0 &&
                    !rd_kafka_get_watermark_offsets(c->rk[j], a->elems[k].topic, a->elems[k].partition, &lo, &hi))
                    backlog = hi > a->elems[k].offset;
            }
        rd_kafka_topic_partition_list_destroy(a);
        if (backlog) return 1;
    }
    return 0;
}

static long long mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

typedef struct warm_ctx {
    pf_consumer *c;
} warm_ctx;

static int warm_at(int i, void *ctx) {
    pf_consumer *c = ((warm_ctx *)ctx)->c;
    return c->warm(c->pending[i], c->warm_ctx);
}

/* The pending message to hand out next (prefer.h): FIFO within a topic,
 * the highest priority first, and with a preference set a message for a
 * warm model ahead of the head within the rules (*pass: it passes the head). */
static int pick_pending(pf_consumer *c, int *pass) {
    pf_prefer_item *items = malloc((size_t)c->npending * sizeof *items);
    PF_CHECK(items);
    for (int k = 0; k < c->npending; k++)
        items[k] = (pf_prefer_item){priority_of(c, c->pending[k]), rd_kafka_topic_name(c->pending[k]->rkt),
                                    (int)c->pending[k]->partition};
    int k = pf_prefer_pick(pass, items, c->npending, c->passed, c->max_pass, c->warm ? warm_at : NULL,
                           &(warm_ctx){c});
    free(items);
    return k;
}

void pf_consumer_prefer(pf_consumer *c, int (*warm)(const rd_kafka_message_t *m, void *ctx), void *ctx, int max_pass) {
    c->warm = max_pass > 0 ? warm : NULL;
    c->max_pass = max_pass;
    c->warm_ctx = ctx;
}

rd_kafka_message_t *pf_consumer_poll(pf_consumer *c, int timeout_ms) {
    long long until = mono_ms() + (timeout_ms > 0 ? timeout_ms : 0), hold_until = 0;
    for (;;) {
        /* Pushed-back messages first, the highest priority first (FIFO within
         * a topic, so each partition stays in order). */
        if (c->npending) {
            int pass = 0;
            int best = pick_pending(c, &pass);
            int p = priority_of(c, c->pending[best]);
            /* A lower-priority message waits (up to PRIORITY_HOLD_MS) while a higher topic has a backlog. */
            if (p > 0 && !hold_until && higher_has_backlog(c, p)) hold_until = mono_ms() + PRIORITY_HOLD_MS;
            /* Holding: the higher topic's messages must be able to arrive. The
             * loop keeps the partitions paused while messages are pending, so a
             * held message would otherwise wait out the whole hold and then go
             * first after all (seen as a low-priority job among the high ones). */
            if (hold_until > 1) pf_consumer_resume(c);
            if (p == 0 || !hold_until || mono_ms() >= hold_until) {
                rd_kafka_message_t *m = c->pending[best];
                c->passed_before = c->passed;
                c->passed = pass ? c->passed + 1 : 0;
                c->taken_at = best;
                memmove(c->pending + best, c->pending + best + 1, (size_t)(c->npending - best - 1) * sizeof *c->pending);
                c->npending--;
                return m;
            }
        }
        c->passed_before = c->passed; /* from librdkafka: no pick made */
        c->taken_at = 0;
        rd_kafka_message_t *m = NULL;
        int i;
        for (i = 0; i < c->n && !m; i++) m = take(c, i, 0);
        i--;
        if (m) {
            if (i == 0) return m;
            if (!hold_until && higher_has_backlog(c, i)) {
                hold_until = mono_ms() + PRIORITY_HOLD_MS;
                pf_consumer_resume(c);
                push_back(c, m);
                continue;
            }
            if (!hold_until) return m;
            push_back(c, m);
            continue;
        }
        long long now = mono_ms();
        if (now >= until && (!hold_until || now >= hold_until)) {
            if (c->npending) {
                hold_until = 1; /* expired: hand out what is pending */
                continue;
            }
            return NULL;
        }
        /* Wait on the highest priority in short slices so lower ones are seen too. */
        long long left = (hold_until > until ? hold_until : until) - now;
        m = take(c, 0, c->n == 1 ? (int)left : left < 20 ? (int)left : 20);
        if (m) return m;
    }
}

void pf_consumer_unread(pf_consumer *c, rd_kafka_message_t *m) {
    /* A message that comes back was not taken (a batch it did not fit): it
     * goes back to its place (a preferred one must not become the head), and
     * the count of passes is what it was before it was handed out (a pass
     * does not count towards the head's bound, and a head that comes back is
     * still owed its turn). */
    c->passed = c->passed_before;
    int at = c->taken_at <= c->npending ? c->taken_at : 0;
    c->taken_at = 0;
    for (int k = 0; k < at; k++) /* never behind its own partition (a revoke may have shifted the list) */
        if (c->pending[k]->partition == m->partition && !strcmp(rd_kafka_topic_name(c->pending[k]->rkt), rd_kafka_topic_name(m->rkt))) at = k;
    push_back(c, m); /* makes room */
    memmove(c->pending + at + 1, c->pending + at, (size_t)(c->npending - 1 - at) * sizeof *c->pending);
    c->pending[at] = m;
}

int pf_consumer_fill(pf_consumer *c, int max, int timeout_ms) {
    int got = 0;
    long long until = 0;
    if (timeout_ms > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        until = ts.tv_sec * 1000LL + ts.tv_nsec / 1000000 + timeout_ms;
    }
    while (got < max) {
        rd_kafka_message_t *m = NULL;
        for (int i = 0; i < c->n && !m; i++) m = take(c, i, 0);
        if (!m && until) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            long long left = until - (ts.tv_sec * 1000LL + ts.tv_nsec / 1000000);
            if (left > 0) m = take(c, 0, left < 20 ? (int)left : 20);
            else break;
            if (!m) continue;
        }
        if (!m) break;
        push_back(c, m);
        got++;
    }
    return got;
}

int pf_consumer_pending(const pf_consumer *c) {
    return c->npending;
}

void pf_consumer_serve(pf_consumer *c) {
    /* Unpaused, the loop's own polls serve the group; taking messages here
     * would empty librdkafka's whole prefetch queue into the pending list. */
    if (!c->paused) return;
    for (int i = 0; i < c->n; i++) {
        rd_kafka_message_t *m;
        while ((m = take(c, i, 0))) push_back(c, m);
    }
}

static void pause_resume(pf_consumer *c, int pause) {
    c->paused = pause;
    for (int i = 0; i < c->n; i++) {
        rd_kafka_topic_partition_list_t *a = NULL;
        if (rd_kafka_assignment(c->rk[i], &a) || !a) continue;
        if (a->cnt) {
            rd_kafka_resp_err_t e = pause ? rd_kafka_pause_partitions(c->rk[i], a) : rd_kafka_resume_partitions(c->rk[i], a);
            if (e)
                pf_wlog(PF_LOG_WARN, "kafka.pause_failed", NULL, NULL, "%s: %s", pause ? "pause" : "resume",
                        rd_kafka_err2str(e));
        }
        rd_kafka_topic_partition_list_destroy(a);
    }
}

void pf_consumer_pause(pf_consumer *c) {
    if (!c->paused) pause_resume(c, 1);
}

void pf_consumer_resume(pf_consumer *c) {
    if (c->paused) pause_resume(c, 0);
}

/* The client whose message m is, or NULL. */
static rd_kafka_t *client_of(pf_consumer *c, const rd_kafka_message_t *m) {
    for (int i = 0; i < c->n; i++) {
        rd_kafka_topic_partition_list_t *a = NULL;
        if (rd_kafka_assignment(c->rk[i], &a) || !a) continue;
        int found = rd_kafka_topic_partition_list_find(a, rd_kafka_topic_name(m->rkt), m->partition) != NULL;
        rd_kafka_topic_partition_list_destroy(a);
        if (found) return c->rk[i];
    }
    return NULL;
}

int pf_consumer_owns(pf_consumer *c, const rd_kafka_message_t *m) {
    return client_of(c, m) != NULL;
}

void pf_consumer_commit(pf_consumer *c, const rd_kafka_message_t *m) {
    rd_kafka_t *rk = client_of(c, m);
    if (!rk) return;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, rd_kafka_topic_name(m->rkt), m->partition)->offset = m->offset + 1;
    rd_kafka_resp_err_t e = rd_kafka_commit(rk, l, 1); /* the outcome comes to on_commit */
    rd_kafka_topic_partition_list_destroy(l);
    if (e) pf_wlog(PF_LOG_WARN, "kafka.commit_failed", NULL, NULL, "committing offset %lld of %s[%d]: %s",
                   (long long)m->offset + 1, rd_kafka_topic_name(m->rkt), (int)m->partition, rd_kafka_err2str(e));
}

int pf_consumer_store(pf_consumer *c, const rd_kafka_message_t *m, pf_error *err) {
    rd_kafka_t *rk = client_of(c, m);
    if (!rk)
        return pf_fail(err, "%s[%d] is no longer assigned to this worker; its new owner will see offset %lld again",
                       rd_kafka_topic_name(m->rkt), (int)m->partition, (long long)m->offset);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, rd_kafka_topic_name(m->rkt), m->partition)->offset = m->offset + 1;
    rd_kafka_resp_err_t e = rd_kafka_offsets_store(rk, l);
    if (!e && l->elems[0].err) e = l->elems[0].err;
    rd_kafka_topic_partition_list_destroy(l);
    if (e) return pf_fail(err, "storing offset %lld of %s[%d]: %s", (long long)m->offset + 1,
                          rd_kafka_topic_name(m->rkt), (int)m->partition, rd_kafka_err2str(e));
    return 0;
}
