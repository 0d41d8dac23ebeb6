/* answers.h - everything that ends a message of the worker's loop: durable
 * sends (the broker acknowledged every one, retried while it is away),
 * terminal results recorded in Redis before their status goes out (with the
 * dead letter sent with them, result.h), dead letters and their headers,
 * rejections, replays of recorded results, and the end of each job of a
 * finished batch; then the answered note and the offset, stored and
 * committed at once (the order worker.h describes). Each returns early,
 * leaving the message unended (no note, no offset), when the job is
 * abandoned meanwhile. */
#ifndef PF_ANSWERS_H
#define PF_ANSWERS_H

#include "job.h"
#include "worker_state.h"

/* Notes a job's latest state for `perflow status` (result.h): best effort,
 * once, as nothing depends on it. */
void pf_ans_note_state(pf_worker *w, const char *job_id, const json_t *st);
/* 1 when m itself was answered before (its offset was not committed in
 * time): nothing is sent again. first: m heads the batch, and is ended here
 * (offset stored and committed); otherwise it is only reported. Redis being
 * away counts as "not answered": the usual checks follow and wait for it. */
int pf_ans_already_answered(pf_worker *w, const rd_kafka_message_t *m, const char *job_id, int first);
/* A message that is not a job at all: dead letter only (there is no job id to
 * address a status to). */
void pf_ans_dead_letter_only(pf_worker *w, const rd_kafka_message_t *m, const char *message);
/* "rejected" + dead letter for a job that is invalid or that this worker
 * cannot run. dlq_code: the dead letter's code, which differs from the
 * status's code only for a message that is no job at all but whose key names
 * one (invalid_message there, invalid_job in the status). */
void pf_ans_reject(pf_worker *w, const rd_kafka_message_t *m, const char *job_id, int attempt, const char *code,
                   const char *dlq_code, const char *field, const char *message);
/* A terminal status that needs no run: recorded, sent, offset stored. */
void pf_ans_end_without_run(pf_worker *w, const rd_kafka_message_t *m, json_t *st, const char *job_id);
/* Re-posts a recorded terminal status, with the dead letter recorded with
 * it (result.h); 1 if there was one. *stop = 1 (and 0 returned) when Redis
 * could not be read and the worker must stop waiting for it. */
int pf_ans_replay(pf_worker *w, const rd_kafka_message_t *m, const pf_job *job, int *stop);
/* Ends a job that took down crashes workers (crash_count.h) without running
 * it: "failed" with code poison, recorded, and a dead letter. */
void pf_ans_poison(pf_worker *w, const rd_kafka_message_t *m, const pf_job *job, long long crashes);
/* Ends one job of a finished batch: status, record, re-enqueue or dead
 * letter as its outcome says, then its offset. Returns -1 when abandoned. */
int pf_ans_finish(pf_worker *w, rd_kafka_message_t *m, pf_exec_job *j);

#endif
