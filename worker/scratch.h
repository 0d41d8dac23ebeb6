/* scratch.h - the worker's scratch files (PNGs and shard tars before their
 * upload): made only by mkstemps, in a directory of the worker's own.
 *
 * The review found /tmp/perflow-<pid>-<job>-...png opened with fopen("wb"):
 * in a shared /tmp another local user could plant a symlink at that
 * predictable name and have the worker overwrite any file it can write. Now
 * the worker makes a private directory (mkdtemp, mode 0700) inside work_dir
 * at start, removes it at exit, and every file in it is created by mkstemps
 * (O_EXCL, a random name). */
#ifndef PF_SCRATCH_H
#define PF_SCRATCH_H

#include <stddef.h>

#include "error.h"

/* Makes "<parent>/perflow-worker-XXXXXX" (mode 0700) and writes its path to
 * out (n bytes). Error names parent. */
int pf_scratch_dir_create(char *out, size_t n, const char *parent, pf_error *err);
/* Removes dir and the files left in it (after an abandoned job). */
void pf_scratch_dir_remove(const char *dir);
/* Creates a new empty file "<dir>/<tag>-XXXXXX<suffix>" with mkstemps (mode
 * 0600) and writes its path to out (n bytes); the caller writes it by name and
 * unlinks it. tag is a job id (pf_job_id_ok: a safe path segment). */
int pf_scratch_file(char *out, size_t n, const char *dir, const char *tag, const char *suffix, pf_error *err);

#endif
