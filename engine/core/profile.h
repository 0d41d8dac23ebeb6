/* profile.h - time per backend op, for finding where a forward pass spends it.
 *
 * Off unless PERFLOW_PROFILE=1 is in the environment when the first op runs.
 * When on, every op wrapper of backend.c waits for the backend before and after
 * the op (pf_synchronize) and adds the wall time between to the op's bucket,
 * so the sum is exact per op at the price of the overlap a GPU would otherwise
 * get between launches: a breakdown, not a benchmark. Buckets are op names,
 * some split by shape class ("conv2d 3x3", "attention self"). Meant for one
 * thread driving the backends (the benches); the counters are not locked. */
#ifndef PF_PROFILE_H
#define PF_PROFILE_H

#include <stdio.h>

#include "backend.h"

/* 1 when PERFLOW_PROFILE=1 (read once). */
int pf_profile_enabled(void);
/* Starts timing an op on be: returns the start time, or 0 when profiling is off. */
double pf_profile_begin(pf_backend *be);
/* Ends the op begun at t0 (a pf_profile_begin result) under bucket `op` (a string literal). */
void pf_profile_end(pf_backend *be, const char *op, double t0);
/* Clears every bucket. */
void pf_profile_reset(void);
/* Writes {"op": {"seconds": s, "calls": n}, ...} sorted by time, largest first ("{}" when off). */
void pf_profile_json(FILE *f);

#endif
