/* consumer.h - the job consumer: one member of the consumer group per jobs
 * topic, polled in priority order.
 *
 * Kafka hands a consumer its partitions' messages in fetch order whatever
 * their topic, so priority by topic needs a client per topic: the worker asks
 * the highest-priority client first and a lower one only when the higher ones
 * have nothing (a higher-priority topic is drained first). Each client fetches
 * on its own, so after a pause a lower one may have data first: while a higher
 * topic is known to hold messages not yet handed out (its last fetched high
 * watermark is past its position), a lower topic's message waits for up to 10 s,
 * with fetching resumed so that the higher topic's messages can arrive.
 * All clients are in
 * the one consumer group, use cooperative-sticky assignment (a rebalance moves
 * only the partitions that change hands), and with instance_id set are static
 * members ("<instance_id>" for one topic, "<instance_id>-<i>" for several).
 *
 * At-least-once: enable.auto.offset.store=false, so an offset is committed
 * only after pf_consumer_store, which the worker calls once the job's terminal
 * status is acknowledged, followed at once by pf_consumer_commit (an
 * asynchronous commit of that offset: waiting for the next auto-commit left a
 * second in which a killed worker's finished jobs were delivered again). The
 * stored offsets are also committed every second (auto-commit, which catches
 * up after a failed commit), when partitions are revoked, and by
 * pf_consumer_close, which gives up after PF_CONSUMER_CLOSE_MS when the group
 * does not answer (brokers gone).
 *
 * While a job runs every partition is paused and the loop keeps calling
 * pf_consumer_serve, so max.poll.interval.ms never expires however long the
 * job; partitions assigned meanwhile are paused as they arrive.
 *
 * Messages polled but not yet started can be pushed back (pf_consumer_unread)
 * and come out of pf_consumer_poll first; those of a partition that is
 * revoked are dropped, as the partition's new owner will read them.
 *
 * Ownership: a message returned by pf_consumer_poll belongs to the caller,
 * who destroys it (rd_kafka_message_destroy) or hands it back with unread.
 * Used by one thread. */
#ifndef PF_CONSUMER_H
#define PF_CONSUMER_H

#include <librdkafka/rdkafka.h>

#include "worker_config.h"
#include "error.h"

typedef struct pf_consumer pf_consumer;

/* How long pf_consumer_close waits for the group (the final commit, leaving). */
#define PF_CONSUMER_CLOSE_MS 5000

/* Creates one client per topic (topics[0] is the highest priority) and subscribes. */
int pf_consumer_open(pf_consumer **out, const pf_worker_config *cfg, const char *const *topics, int n,
                     pf_error *err);
/* Leaves the group cleanly (commits the stored offsets) and frees everything,
 * pushed-back messages included; bounded by PF_CONSUMER_CLOSE_MS, after which
 * the clients are destroyed without the group's answer. */
void pf_consumer_close(pf_consumer *c);

/* The next message: a pushed-back one, else the highest-priority client's,
 * waiting up to timeout_ms. NULL when none. Consumer errors are logged and
 * skipped. */
rd_kafka_message_t *pf_consumer_poll(pf_consumer *c, int timeout_ms);
/* Sets the warm-model preference among pushed-back messages (worker/prefer.h:
 * within a topic a message whose warm(m, ctx) is 1 may go before the head, if
 * it is the first held of its partition and the head has been passed over
 * fewer than max_pass times in a row). warm NULL or max_pass 0: strict FIFO. */
void pf_consumer_prefer(pf_consumer *c, int (*warm)(const rd_kafka_message_t *m, void *ctx), void *ctx, int max_pass);
/* Returns m, the message the last pf_consumer_poll handed out, to where it
 * was: the front when it came from librdkafka, its place in the pushed-back
 * list otherwise (so a preferred message does not become the head), never
 * behind a held message of its own partition. */
void pf_consumer_unread(pf_consumer *c, rd_kafka_message_t *m);
/* Takes up to max messages that have arrived (waiting up to timeout_ms for
 * them), in priority order, onto the back of the pushed-back queue; returns
 * how many. For gathering jobs that arrive together into one batch. */
int pf_consumer_fill(pf_consumer *c, int max, int timeout_ms);
/* Number of pushed-back messages waiting. */
int pf_consumer_pending(const pf_consumer *c);
/* While paused: serves group events (rebalances, errors) on every client
 * without taking new work; messages that arrive anyway are queued as pushed
 * back. Unpaused it does nothing (pf_consumer_poll serves the group then). */
void pf_consumer_serve(pf_consumer *c);

/* Pauses / resumes fetching on every assigned partition (and on partitions
 * assigned while paused). */
void pf_consumer_pause(pf_consumer *c);
void pf_consumer_resume(pf_consumer *c);

/* 1 when m's partition is still assigned to this worker. */
int pf_consumer_owns(pf_consumer *c, const rd_kafka_message_t *m);
/* Stores m's offset + 1 for the next commit. Error when the partition is no
 * longer assigned (its new owner will see the message again) or librdkafka
 * refuses. */
int pf_consumer_store(pf_consumer *c, const rd_kafka_message_t *m, pf_error *err);
/* Commits m's offset + 1 now, asynchronously (failures are logged by the
 * commit callback and made good by the next auto-commit). Call it after
 * pf_consumer_store succeeded; nothing happens when the partition is gone. */
void pf_consumer_commit(pf_consumer *c, const rd_kafka_message_t *m);

#endif
