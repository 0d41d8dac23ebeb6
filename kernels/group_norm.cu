// group_norm.cu - GroupNorm in three launches: partial statistics, their merge
// into each group's mean and rstd, then normalise.
//
// A group (n, g) is one contiguous run of (C / G) * S values. SD's VAE at 512px
// has runs of a million values but only N * 32 groups: one block per group
// would leave most of the GPU idle, so each run is cut into `parts` chunks.
// Each chunk's block computes its mean and M2 = sum (x - mean)^2 in two passes
// (the second pass reads the chunk again, mostly from L2); the normalising
// kernel merges a group's chunks with Chan's parallel formula in double, once
// per group (the normalising blocks used to merge them each, a serial chain of
// up to 64 double divisions ahead of every block: 5x the memory-bound time on
// the VAE's 512 px planes). This keeps the two-pass accuracy of the CPU
// reference (E[x^2] - E[x]^2 in float would lose the digits that activations
// with |mean| >> std need).
#include "group_norm.cuh"

#define STATS_THREADS 256
#define APPLY_THREADS 256
#define APPLY_PER_THREAD 8 // a multiple of 8: the vectorised kernel takes groups of 8
#define CHUNK_TARGET 16384 // values per statistics block
#define MAX_PARTS 64

static int64_t parts_of(int64_t len) {
    int64_t p = (len + CHUNK_TARGET - 1) / CHUNK_TARGET;
    return p < 1 ? 1 : (p > MAX_PARTS ? MAX_PARTS : p);
}

// Chunk p of `parts` of a run of len values: [lo, hi), both multiples of
// UNIT (UNIT divides len): the vectorised kernels (UNIT 8) read whole groups
// of 8, and the normalising kernel must count the chunks as the statistics
// kernel cut them.
template <int UNIT>
static __device__ void chunk_of(int64_t len, int64_t parts, int64_t p, int64_t *lo, int64_t *hi) {
    *lo = len / UNIT * p / parts * UNIT;
    *hi = len / UNIT * (p + 1) / parts * UNIT;
}

// Scratch: the chunks' (mean, M2), then each group's (mean, rstd).
size_t pf_cuda_group_norm_scratch(int64_t n, int64_t c, int64_t s, int groups) {
    int64_t len = c / groups * s;
    return (size_t)(n * groups * (parts_of(len) + 1)) * 2 * sizeof(float);
}

// One thread a group ng < count: Chan et al.'s merge of (count, mean, M2) of its
// chunks in order, into norm[ng * 2 + {0, 1}] = mean, 1 / sqrt(var + eps).
template <int UNIT>
static __global__ void gn_merge(float *norm, const float *stats, int64_t count, int64_t len, int64_t parts,
                                float eps) {
    const int64_t ng = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (ng >= count) return;
    double cnt = 0, mean = 0, m2 = 0;
    for (int64_t p = 0; p < parts; p++) {
        int64_t lo, hi;
        chunk_of<UNIT>(len, parts, p, &lo, &hi);
        double nb = (double)(hi - lo);
        if (nb == 0) continue;
        double mb = stats[(ng * parts + p) * 2], m2b = stats[(ng * parts + p) * 2 + 1];
        double tot = cnt + nb, delta = mb - mean;
        mean += delta * nb / tot;
        m2 += m2b + delta * delta * cnt * nb / tot;
        cnt = tot;
    }
    norm[ng * 2] = (float)mean;
    norm[ng * 2 + 1] = (float)(1.0 / sqrt(m2 / (cnt > 0 ? cnt : 1.0) + (double)eps));
}

// grid (N * G, parts): stats[(ng * parts + p) * 2 + {0, 1}] = chunk mean, M2.
// UNIT 8: 16-byte loads (len % 8 == 0, x 16-byte aligned).
template <int UNIT, typename T>
static __global__ void gn_stats(float *stats, const T *x, int64_t len, int64_t parts) {
    __shared__ float red[32];
    const int64_t ng = blockIdx.x, p = blockIdx.y;
    int64_t lo, hi;
    chunk_of<UNIT>(len, parts, p, &lo, &hi);
    const T *xg = x + ng * len;
    float sum = 0.0f;
    if (UNIT == 8) {
        for (int64_t i = lo + 8 * threadIdx.x; i < hi; i += 8 * blockDim.x) {
            float f[8];
            pf_load8(f, xg + i);
#pragma unroll
            for (int t = 0; t < 8; t++) sum += f[t];
        }
    } else {
        for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) sum += pf_to_float(xg[i]);
    }
    sum = pf_block_sum(sum, red);
    const float cnt = (float)(hi - lo);
    const float mean = hi > lo ? sum / cnt : 0.0f;
    float m2 = 0.0f;
    if (UNIT == 8) {
        for (int64_t i = lo + 8 * threadIdx.x; i < hi; i += 8 * blockDim.x) {
            float f[8];
            pf_load8(f, xg + i);
#pragma unroll
            for (int t = 0; t < 8; t++) m2 += (f[t] - mean) * (f[t] - mean);
        }
    } else {
        for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
            float d = pf_to_float(xg[i]) - mean;
            m2 += d * d;
        }
    }
    m2 = pf_block_sum(m2, red);
    if (threadIdx.x == 0) {
        stats[(ng * parts + p) * 2] = mean;
        stats[(ng * parts + p) * 2 + 1] = m2;
    }
}

// grid (N * C, chunks of S): y = (x - mean) * (rstd * gamma[c]) + beta[c] on one channel plane.
// UNIT 8: 16-byte accesses (s % 8 == 0, x and y 16-byte aligned).
template <int UNIT, typename T>
static __global__ void gn_apply(T *y, const T *x, const T *gamma, const T *beta, const float *norm,
                                int fuse_silu, int64_t c, int64_t s, int64_t cpg) {
    const int64_t row = blockIdx.x; // n * C + ch
    const int64_t ch = row % c, n = row / c;
    const int64_t ng = n * (c / cpg) + ch / cpg;
    const float mean = norm[ng * 2], scale = norm[ng * 2 + 1] * pf_to_float(gamma[ch]), shift = pf_to_float(beta[ch]);
    const T *xr = x + row * s;
    T *yr = y + row * s;
    const int64_t per_block = (int64_t)blockDim.x * APPLY_PER_THREAD;
    for (int64_t base = blockIdx.y * per_block; base < s; base += (int64_t)gridDim.y * per_block) {
        if (UNIT == 8) { // thread t takes the groups of 8 at base + 8 (k * blockDim + t)
            for (int k = 0; k < APPLY_PER_THREAD / 8; k++) {
                const int64_t j = base + 8 * ((int64_t)k * blockDim.x + threadIdx.x);
                if (j >= s) break;
                float f[8];
                pf_load8(f, xr + j);
#pragma unroll
                for (int t = 0; t < 8; t++) {
                    f[t] = (f[t] - mean) * scale + shift;
                    if (fuse_silu) f[t] = f[t] / (1.0f + __expf(-f[t]));
                }
                pf_store8(yr + j, f);
            }
        } else {
            for (int k = 0; k < APPLY_PER_THREAD; k++) { // coalesced: thread t takes base + k * blockDim + t
                const int64_t j = base + (int64_t)k * blockDim.x + threadIdx.x;
                if (j >= s) break;
                float v = (pf_to_float(xr[j]) - mean) * scale + shift;
                if (fuse_silu) v = v / (1.0f + __expf(-v));
                yr[j] = pf_from_float<T>(v);
            }
        }
    }
}

template <typename T>
cudaError_t pf_cuda_group_norm(T *y, const T *x, const T *gamma, const T *beta, float *scratch,
                               float eps, int fuse_silu, int vec, int64_t n, int64_t c, int64_t s, int groups,
                               cudaStream_t stream) {
    const int64_t cpg = c / groups, len = cpg * s, parts = parts_of(len), count = n * groups;
    if (n * c * s == 0) return cudaSuccess;
    int64_t chunks = (s + APPLY_THREADS * APPLY_PER_THREAD - 1) / (APPLY_THREADS * APPLY_PER_THREAD);
    if (chunks > 65535) chunks = 65535;
    const dim3 sgrid((unsigned)count, (unsigned)parts), agrid((unsigned)(n * c), (unsigned)chunks);
    float *norm = scratch + count * parts * 2; // (mean, rstd) per group
    const unsigned mgrid = (unsigned)((count + 127) / 128);
    if (vec && pf_vec8(s, x, y)) { // planes of s % 8 == 0 values: groups and planes start 16-byte aligned
        gn_stats<8, T><<<sgrid, STATS_THREADS, 0, stream>>>(scratch, x, len, parts);
        gn_merge<8><<<mgrid, 128, 0, stream>>>(norm, scratch, count, len, parts, eps);
        gn_apply<8, T><<<agrid, APPLY_THREADS, 0, stream>>>(y, x, gamma, beta, norm, fuse_silu, c, s, cpg);
    } else {
        gn_stats<1, T><<<sgrid, STATS_THREADS, 0, stream>>>(scratch, x, len, parts);
        gn_merge<1><<<mgrid, 128, 0, stream>>>(norm, scratch, count, len, parts, eps);
        gn_apply<1, T><<<agrid, APPLY_THREADS, 0, stream>>>(y, x, gamma, beta, norm, fuse_silu, c, s, cpg);
    }
    return cudaGetLastError();
}

template cudaError_t pf_cuda_group_norm(__half *, const __half *, const __half *, const __half *, float *, float, int,
                                        int, int64_t, int64_t, int64_t, int, cudaStream_t);
template cudaError_t pf_cuda_group_norm(float *, const float *, const float *, const float *, float *, float, int,
                                        int, int64_t, int64_t, int64_t, int, cudaStream_t);
