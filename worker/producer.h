/* producer.h - the worker's Kafka producer: status events, re-enqueued jobs and
 * dead letters, all keyed by job_id.
 *
 * Idempotent (enable.idempotence, acks=all): librdkafka's retries after broker
 * errors neither duplicate nor reorder a job's events. A send that must be
 * durable before the worker goes on (a terminal status, a re-enqueue, a dead
 * letter, all before the job's offset is stored) returns a pf_delivery that
 * the caller waits on; progress events are fire and forget.
 *
 * Threads: pf_producer_send may be called from any thread; pf_producer_poll,
 * pf_delivery_release and pf_producer_close from the main loop's thread only
 * (delivery reports run inside pf_producer_poll). */
#ifndef PF_PRODUCER_H
#define PF_PRODUCER_H

#include <stddef.h>

#include "worker_config.h"
#include "error.h"

typedef struct pf_producer pf_producer;

/* The outcome of one durable send; owned by the producer until released. */
typedef struct pf_delivery {
    int done;           /* the broker acknowledged it or it failed for good */
    int failed;         /* done, and not written */
    int fatal;          /* the failure was librdkafka's fatal idempotence error */
    char error[256];
    int orphaned;       /* released before done: freed by the delivery report */
} pf_delivery;

typedef struct pf_header {
    const char *name;
    const char *value;
} pf_header;

int pf_producer_open(pf_producer **out, const pf_worker_config *cfg, pf_error *err);
/* Flushes for at most flush_ms, then destroys; deliveries still pending fail. */
void pf_producer_close(pf_producer *p, int flush_ms);

/* Queues value (len bytes) for topic with key and headers (n of them).
 * *d (d may be NULL: fire and forget) receives a delivery to wait on with
 * pf_producer_poll and release with pf_delivery_release. Error when librdkafka
 * refuses the message at once (queue full, unknown topic, fatal state). */
int pf_producer_send(pf_producer *p, const char *topic, const char *key, const void *value, size_t len,
                     const pf_header *headers, int n, pf_delivery **d, pf_error *err);
/* Serves delivery reports for up to timeout_ms. */
void pf_producer_poll(pf_producer *p, int timeout_ms);
/* Gives d back (NULL is fine); if it is still in flight it is freed when its report comes. */
void pf_delivery_release(pf_producer *p, pf_delivery *d);
/* Asks a broker for metadata, waiting up to timeout_ms: 0 when one answered,
 * else -1 with err saying why (for the worker's readiness check). Main loop only. */
int pf_producer_reachable(pf_producer *p, int timeout_ms, pf_error *err);
/* Whether the brokers have topic and let this client see it (metadata for that topic
 * alone, waiting up to timeout_ms): 0 when they do, else -1 with err naming the topic:
 * missing (real brokers here create no topic on first use), or not authorized, naming
 * acl, the ACL operation the worker needs on it ("READ", "WRITE"). A broker that does
 * not answer is not an error here (the readiness check reports that). Main loop only. */
int pf_producer_topic_ok(pf_producer *p, const char *topic, const char *acl, int timeout_ms, pf_error *err);
/* 1 (and why, n bytes) once librdkafka reported a TLS or SASL failure
 * (a certificate that does not verify, a refused password): configuration
 * that waiting will not fix. Any thread. */
int pf_producer_security_error(pf_producer *p, char *why, size_t n);
/* 1 after librdkafka raised a fatal error: the producer must be reopened. */
int pf_producer_fatal(pf_producer *p, char *why, size_t n);

#endif
