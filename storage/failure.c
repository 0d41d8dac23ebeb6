/* failure.c - the per-thread class of the last storage failure. */
#include "failure.h"

static _Thread_local pf_storage_failure_class last;

pf_storage_failure_class pf_storage_failure(void) { return last; }

void pf_storage_set_failure(pf_storage_failure_class c) { last = c; }

const char *pf_storage_failure_name(pf_storage_failure_class c) {
    return c == PF_STORAGE_TRANSIENT ? "transient" : c == PF_STORAGE_PERMANENT ? "permanent" : "ok";
}
