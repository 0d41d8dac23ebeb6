/* worker_state.h - the state of a running worker, shared by the parts of
 * its job loop: worker.c (the loop and the batch's run), heartbeat.c (what
 * every wait keeps going), intake.c (from a message to a job admitted to the
 * batch) and answers.c (everything that ends a message). Only the main
 * thread touches it, except for what the job thread is handed (exec, jobs,
 * abandon, thread_done). */
#ifndef PF_WORKER_STATE_H
#define PF_WORKER_STATE_H

#include <stdatomic.h>

#include "consumer.h"
#include "execute.h"
#include "metrics.h"
#include "models.h"
#include "producer.h"
#include "redis_conn.h"
#include "worker.h"

#define PF_WORKER_MAX_BATCH 64

struct pf_worker {
    const pf_worker_config *cfg;
    pf_consumer *consumer;
    pf_producer *producer;
    pf_wredis *redis;
    pf_models *models;
    pf_exec exec;
    pf_backend *be;
    pf_metrics_server *metrics; /* NULL: metrics_listen not set */
    long long last_health;      /* monotonic ms of the last readiness check */
    long long last_renew;       /* monotonic ms of the batch's last lease renewal */
    atomic_int abandon;
    char token[300];           /* this process's lease token */
    int draining;
    long long drain_deadline;  /* monotonic ms */
    int abandoned;             /* a job was given up (exit status 1) */
    int handled;               /* messages brought to an end, for --once */
    /* The batch in flight: its messages (owned here until they are ended or
     * abandoned) and its jobs, contiguous for pf_exec_batch. */
    rd_kafka_message_t *msgs[PF_WORKER_MAX_BATCH];
    pf_exec_job jobs[PF_WORKER_MAX_BATCH];
    int nbatch;
    atomic_int thread_done;
};

#endif
