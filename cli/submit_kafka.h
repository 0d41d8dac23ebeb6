/* submit_kafka.h - the Kafka side of `perflow submit`: an idempotent producer
 * of jobs and, for --wait, a reader of the status topic.
 *
 * The reader is not a group member: it is assigned every partition of the
 * status topic at its end offset, taken before the first job is produced, so
 * it sees every status of the batch and nothing older, whoever else reads the
 * topic. The clients get the same settings as the workers (brokers and
 * kafka.* properties from pf_worker_config: security, timeouts).
 *
 * Every call that waits on the network is bounded: a broker that does not
 * answer is an error after the timeout given, never a hang. Used by one thread. */
#ifndef PF_SUBMIT_KAFKA_H
#define PF_SUBMIT_KAFKA_H

#include <jansson.h>
#include <stddef.h>

#include "error.h"
#include "worker_config.h"

typedef struct pf_submit_kafka pf_submit_kafka;

/* Connects to cfg's brokers (waiting up to timeout_ms for metadata) and
 * checks that jobs_topic exists; with status_topic (NULL: no reading) also
 * assigns the reader to every partition of it at its end. Error naming the
 * brokers or the topic when they cannot be reached or do not exist. */
int pf_submit_kafka_open(pf_submit_kafka **out, const pf_worker_config *cfg, const char *jobs_topic,
                         const char *status_topic, int timeout_ms, pf_error *err);
/* Waits up to flush_ms for messages still in flight, then frees everything. NULL is fine. */
void pf_submit_kafka_close(pf_submit_kafka *k, int flush_ms);

/* The jobs topic's partition count (read at open). */
int pf_submit_kafka_partitions(const pf_submit_kafka *k);
/* Queues one job (header perflow-batch-id) with key (NULL: job_id) to
 * partition (-1: the partitioner's choice by key; protocol/model_route.h
 * says how submit routes), waiting while the local queue is full. Error
 * when librdkafka refuses it for good. */
int pf_submit_kafka_send(pf_submit_kafka *k, const char *job_id, const char *batch_id, const char *json,
                         const char *key, int partition, pf_error *err);
/* Serves delivery reports for up to ms. */
void pf_submit_kafka_poll(pf_submit_kafka *k, int ms);
/* Waits until every queued job is acknowledged or failed (bounded by the
 * delivery timeout): 0 when all were written, else -1 with err saying how
 * many failed and the first reason. */
int pf_submit_kafka_flush(pf_submit_kafka *k, pf_error *err);
/* Jobs acknowledged so far. */
long pf_submit_kafka_delivered(const pf_submit_kafka *k);

/* The next status event (a JSON object with a string job_id), waiting up to
 * ms; NULL when none came. Malformed messages on the topic are skipped. The
 * caller owns the reference. */
json_t *pf_submit_kafka_status(pf_submit_kafka *k, int ms);

#endif
