/* device.c - choosing a backend by name (--device, $PERFLOW_DEVICE), and the
 * CUDA entry points of backend.h for binaries built without CUDA.
 *
 * The CUDA backend itself is kernels/backend_cuda.cu, compiled only where the
 * Makefile finds nvcc (which then defines PF_HAVE_CUDA for this file). The
 * stand-ins below keep every caller free of #ifdefs: asking for CUDA in a
 * CPU-only build is an ordinary error with a message, never a link failure. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

#ifndef PF_HAVE_CUDA
pf_backend *pf_backend_cuda_new(int device, pf_error *err) {
    (void)device;
    pf_fail(err, "this perflow was built without CUDA (nvcc was not found when it was compiled)");
    return NULL;
}

pf_backend *pf_backend_cuda_new_f32(int device, pf_error *err) {
    (void)device;
    pf_fail(err, "this perflow was built without CUDA (nvcc was not found when it was compiled): "
                 "no float32 CUDA backend");
    return NULL;
}

int pf_cuda_device_count(void) { return 0; }

void pf_backend_cuda_mem_stats(const pf_backend *be, pf_mem_stats *out) {
    (void)be;
    memset(out, 0, sizeof *out);
}

void pf_backend_cuda_reset_peak(pf_backend *be) { (void)be; }
#endif

/* "cuda" -> 0, "cuda:N" -> N; -1 when name is not a CUDA device name. */
static int cuda_index(const char *name) {
    if (strncmp(name, "cuda", 4)) return -1;
    if (name[4] == '\0') return 0;
    if (name[4] != ':' || name[5] < '0' || name[5] > '9') return -1;
    char *end;
    errno = 0;
    long v = strtol(name + 5, &end, 10);
    if (errno || *end || v > 1024) return -1;
    return (int)v;
}

pf_backend *pf_backend_f32_twin(pf_backend *be, int *owned, pf_error *err) {
    *owned = 0;
    if (be->compute_dtype == PF_F32) return be;
    pf_backend *twin = pf_backend_cuda_new_f32(be->device, err);
    if (!twin) {
        pf_error_prefix(err, "a float32 backend beside %s:%d", be->name, be->device);
        return NULL;
    }
    *owned = 1;
    return twin;
}

pf_backend *pf_backend_open(const char *device, int threads, pf_error *err) {
    const char *from = "--device";
    if (!device || !*device || !strcmp(device, "auto")) {
        const char *env = getenv("PERFLOW_DEVICE");
        device = env && *env ? env : "auto";
        from = "PERFLOW_DEVICE";
    }
    if (!strcmp(device, "auto")) return pf_cuda_device_count() > 0 ? pf_backend_cuda_new(0, err) : pf_backend_cpu_new(threads);
    if (!strcmp(device, "cpu")) return pf_backend_cpu_new(threads);
    int idx = cuda_index(device);
    if (idx < 0) {
        pf_fail(err, "%s: unknown device '%s' (expected cpu, cuda, cuda:N or auto)", from, device);
        return NULL;
    }
    pf_backend *be = pf_backend_cuda_new(idx, err);
    if (!be) pf_error_prefix(err, "%s %s", from, device);
    return be;
}
