/* intake.h - from a message of the worker's loop to a job admitted to the
 * batch: parsed, checked (answered before, supported, within the limits),
 * its recorded result replayed if it has one, its cancel flag and deadline
 * read, its lease taken (waiting for another worker's), its crash count
 * checked; a message that cannot run is ended here (answers.h). Jobs
 * admitted after the first join its batch only if they are ready at once
 * and run on the same model. */
#ifndef PF_INTAKE_H
#define PF_INTAKE_H

#include "job.h"
#include "worker_state.h"

typedef enum {
    PF_INTAKE_DONE,  /* the message was ended (or left for redelivery when draining) */
    PF_INTAKE_RUN,   /* the job may run: lease taken, *job filled */
    PF_INTAKE_LATER  /* not now: a batch candidate that is not ready, or Redis away */
} pf_intake_result;

/* Parses m; ends it at once when it is not a runnable job. Returns
 * PF_INTAKE_RUN with *job filled (the caller frees it) when it may run.
 * first: m heads a new batch; otherwise it is a candidate to join the batch
 * headed by batch_head, never ended here (storing its offset while the jobs
 * before it are still running could commit past them). */
pf_intake_result pf_intake_take(pf_worker *w, const rd_kafka_message_t *m, pf_job *job, int first,
                                const pf_job *batch_head);
/* Adds a prepared job (taken up at t_received) to the batch and says so
 * ("accepted"); m is owned by the batch from here on. */
void pf_intake_admit(pf_worker *w, rd_kafka_message_t *m, pf_job *job, long long t_received);

#endif
