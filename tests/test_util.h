/* test_util.h - shared helpers for the cmocka tests.
 *
 * Tests find the repository root by the PERFLOW_ROOT environment variable
 * (tests/run_tests.sh sets it) or the current directory, and shared/ at
 * $PERFLOW_SHARED or ../shared from the root. */
#ifndef PF_TEST_UTIL_H
#define PF_TEST_UTIL_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* Path under the repository root (static buffer, rotated 4 deep). */
static inline const char *pf_test_path(const char *rel) {
    static char bufs[4][4096];
    static int which;
    char *b = bufs[which++ & 3];
    const char *root = getenv("PERFLOW_ROOT");
    snprintf(b, 4096, "%s/%s", root && *root ? root : ".", rel);
    return b;
}

/* Path under shared/. */
static inline const char *pf_shared_path(const char *rel) {
    static char bufs[4][4096];
    static int which;
    char *b = bufs[which++ & 3];
    const char *sh = getenv("PERFLOW_SHARED");
    if (sh && *sh)
        snprintf(b, 4096, "%s/%s", sh, rel);
    else
        snprintf(b, 4096, "%s", pf_test_path(""));
    if (!(sh && *sh)) snprintf(b + strlen(b), 4096 - strlen(b), "../shared/%s", rel);
    return b;
}

/* Compares got against want elementwise with |got - want| <= atol + rtol |want|.
 * Prints the first mismatches and the max abs error; fails the test on mismatch. */
static inline void pf_assert_close(const char *what, const float *got, const float *want, size_t n,
                                   double atol, double rtol) {
    size_t bad = 0;
    double maxerr = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - (double)want[i]);
        if (!(e <= maxerr)) maxerr = e; /* NaN-propagating */
        if (!(e <= atol + rtol * fabs((double)want[i]))) {
            if (bad < 5)
                print_error("%s: mismatch at %zu: got %.9g want %.9g (err %.3g)\n", what, i,
                            (double)got[i], (double)want[i], e);
            bad++;
        }
    }
    if (bad) {
        print_error("%s: %zu of %zu elements out of tolerance (atol %g rtol %g), max abs err %.3g\n",
                    what, bad, n, atol, rtol, maxerr);
        fail();
    }
}

#endif
