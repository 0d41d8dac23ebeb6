/* result_replay.h - the worker's use of the result store: images looked up by
 * identity before the engine runs and recorded after it ran.
 *
 * A job is served from the store only when every one of its images is there
 * (its images are then copied, not computed, and the job leaves the engine
 * calls); otherwise it is computed whole and every image it made is
 * recorded. What is stored is the 8-bit pixels as a PNG without text; a job
 * served from the store writes its outputs from those pixels exactly as it
 * writes computed ones (the same PNG text, the same encoder), so a replayed
 * output is byte-identical to the output of the computation that stored it.
 * Jobs that refine do not use the store (the refine stage is not part of the
 * identity yet). Store failures are logged and counted and the image is
 * computed: the store never fails a job. */
#ifndef PF_RESULT_REPLAY_H
#define PF_RESULT_REPLAY_H

#include <stddef.h>
#include <stdint.h>

#include "execute.h"

/* Computes j's image identities (j->store_ids) and looks them all up. 1 when
 * every image was found: *rgb (malloc'd, caller frees) holds the job's
 * num_images images of width x height, 8-bit RGB. 0 otherwise (*rgb NULL).
 * Counts hits and misses in the metrics. Nothing to do (0) when the store
 * is off or the job refines. */
int pf_replay_lookup(pf_exec *x, const pf_model *model, pf_exec_job *j, uint8_t **rgb);

/* Records the job's computed images (num_images of width x height, 8-bit RGB
 * at rgb) under j->store_ids. Failures are logged and counted. */
void pf_replay_record(pf_exec *x, const pf_exec_job *j, const uint8_t *rgb);

/* The stored form of one image: an 8-bit RGB PNG without text (malloc'd in
 * *png, *len bytes). tag names the scratch file. */
int pf_replay_png(const pf_exec *x, const uint8_t *rgb, int w, int h, const char *tag, uint8_t **png, size_t *len,
                  pf_error *err);

/* The identity of image index of job (a sample of a shard job, a job) on model. */
void pf_replay_identity(char hex[PF_SHA256_HEX], const pf_exec *x, const pf_model *model, const pf_exec_job *j,
                        int index);

/* Frees j->store_ids. */
void pf_replay_clear(pf_exec_job *j);

#endif
