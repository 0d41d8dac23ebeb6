// attention.cu - flash-style attention: a block owns a tile of queries of one
// (batch, head), walks the keys in tiles and keeps a running max m, running sum
// l and unnormalised output O per query row (online softmax):
//     m' = max(m, max_j s_j); p_j = exp(s_j - m'); l' = l e^(m - m') + sum_j p_j;
//     O' = O e^(m - m') + sum_j p_j v_j;      out = O / l at the end.
// Memory is O(tile), whatever the sequence length (4096 tokens at 512px, 16384
// at 1024px; the score matrix would be 64 MiB / 1 GiB per head in float).
//
// Two kernels here compute the same function (and a third, attention_mma.cu,
// is the default where it applies: fp16, not causal, head dims up to 160):
//  - attn_wmma: tensor cores through nvcuda::wmma (fp16 in, fp32 accumulate).
//    NW warps of 16 query rows each, BK keys per step: 4 x 64 for head dims up
//    to 256 (SD's UNet), 2 x 32 up to 512 (the VAE's single 512-wide head)
//    where shared memory allows (Hopper: 227 KB a block). The head dim is
//    zero-padded to Dp = a multiple of 16 in shared memory (SD-1.5's 40 -> 48,
//    the tiny test models' 4 and 8 -> 16), which changes no dot product. The
//    warp's O rows live in shared memory in float, where the per-row rescale
//    is plain indexing (wmma's register layout is opaque) and wmma reloads them
//    as the accumulator of P V. P is rounded to fp16 for the tensor cores, as
//    in FlashAttention; l sums the unrounded p.
//  - attn_generic: CUDA cores, any D <= 512 (lanes hold COLS = 2..16 output
//    columns each), a small shared-memory footprint. Used when attn_wmma's
//    shared memory exceeds what the device grants one block (large D on GPUs
//    with less than Hopper's 227 KB), and by the parity tests.
#include <mma.h>

#include "attention.cuh"
#include "attention_mma.cuh"

using namespace nvcuda;

// ---- tensor-core kernel ----

// Template parameters: NW warps per block (warp w owns query rows
// [16 w, 16 w + 16), so 16 NW queries a block), BK keys per step (a multiple of 32).

// Shared-memory layout of attn_wmma for padded head dim dp, in bytes from the
// base. Row strides are padded (+8 halves, +4 floats) against bank conflicts
// and stay multiples of 16 bytes, as wmma's ldm requires; every region starts
// on 128 bytes, and every fragment origin (rows multiple of 16, columns
// multiple of 16) lands on 32 bytes, as load/store_matrix_sync require.
struct wmma_layout {
    int ldq, lds, ldp, ldo; // element strides: Q/K/V rows (half), S (float), P (half), O (float)
    size_t q, k, v, s, p, o, m, l, total;
};

static __host__ __device__ size_t align128(size_t x) { return (x + 127) & ~(size_t)127; }

template <int NW, int BK>
static __host__ __device__ wmma_layout layout_of(int dp) {
    const int BQ = 16 * NW;
    wmma_layout L;
    L.ldq = dp + 8;
    L.lds = BK + 4;
    L.ldp = BK + 8;
    L.ldo = dp + 4;
    L.q = 0;
    L.k = align128(L.q + (size_t)BQ * L.ldq * 2);
    L.v = align128(L.k + (size_t)BK * L.ldq * 2);
    L.s = align128(L.v + (size_t)BK * L.ldq * 2);
    L.p = align128(L.s + (size_t)NW * 16 * L.lds * 4);
    L.o = align128(L.p + (size_t)NW * 16 * L.ldp * 2);
    L.m = align128(L.o + (size_t)NW * 16 * L.ldo * 4);
    L.l = align128(L.m + (size_t)NW * 16 * 4);
    L.total = align128(L.l + (size_t)NW * 16 * 4);
    return L;
}

// Block-wide copy of `rows` rows [row0, row0 + rows) of one head (src = the
// head's first channel of sequence row 0; rows `c` apart) into dst[rows][ld],
// columns [0, dp): zero past the sequence end (len) and past the head dim d.
// vec: 16-byte loads (d and c multiples of 8, src 16-byte aligned; __half only).
template <typename T>
static __device__ __forceinline__ void load_rows(T *dst, int ld, const T *src, int64_t c, int64_t row0, int64_t len,
                                                 int d, int dp, int rows, int vec) {
    if (std::is_same<T, __half>::value && vec) {
        const int per_row = dp / 8;
        for (int i = threadIdx.x; i < rows * per_row; i += blockDim.x) {
            const int r = i / per_row, col = (i - r * per_row) * 8;
            uint4 val = make_uint4(0, 0, 0, 0);
            if (row0 + r < len && col < d) val = *reinterpret_cast<const uint4 *>(src + (row0 + r) * c + col);
            *reinterpret_cast<uint4 *>(dst + r * ld + col) = val;
        }
    } else {
        for (int i = threadIdx.x; i < rows * dp; i += blockDim.x) {
            const int r = i / dp, col = i - r * dp;
            T val = pf_from_float<T>(0.0f);
            if (row0 + r < len && col < d) val = src[(row0 + r) * c + col];
            dst[r * ld + col] = val;
        }
    }
}

// grid (ceil(lq / (16 NW)), batch * heads), NW * 32 threads, layout_of<NW, BK>(dp).total
// bytes of shared memory.
template <int NW, int BK>
static __global__ void __launch_bounds__(NW * 32)
    attn_wmma(__half *out, const __half *q, const __half *k, const __half *v, int64_t lq, int64_t lk, int64_t c,
              int heads, int d, int dp, float scale, int causal, int vec) {
    constexpr int BQ = 16 * NW, KC = BK / 32; // KC: key columns per lane in the softmax
    extern __shared__ __align__(128) unsigned char smem[];
    const wmma_layout L = layout_of<NW, BK>(dp);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __half *Qs = reinterpret_cast<__half *>(smem + L.q);
    __half *Ks = reinterpret_cast<__half *>(smem + L.k);
    __half *Vs = reinterpret_cast<__half *>(smem + L.v);
    float *Sw = reinterpret_cast<float *>(smem + L.s) + warp * 16 * L.lds;  // this warp's scores [16][BK]
    __half *Pw = reinterpret_cast<__half *>(smem + L.p) + warp * 16 * L.ldp; // its probabilities [16][BK]
    float *Ow = reinterpret_cast<float *>(smem + L.o) + warp * 16 * L.ldo;  // its output rows [16][dp]
    float *Mw = reinterpret_cast<float *>(smem + L.m) + warp * 16;         // running max per row
    float *Lw = reinterpret_cast<float *>(smem + L.l) + warp * 16;         // running sum per row

    const int64_t b = blockIdx.y / heads, h = blockIdx.y % heads, q0 = (int64_t)blockIdx.x * BQ;
    const __half *qh = q + b * lq * c + h * d, *kh = k + b * lk * c + h * d, *vh = v + b * lk * c + h * d;

    load_rows(Qs, L.ldq, qh, c, q0, lq, d, dp, BQ, vec);
    for (int i = lane; i < 16 * dp; i += 32) Ow[(i / dp) * L.ldo + i % dp] = 0.0f;
    if (lane < 16) {
        Mw[lane] = -INFINITY;
        Lw[lane] = 0.0f;
    }

    // causal: keys past the block's last query are masked for all its rows
    const int64_t kend = causal ? min(lk, q0 + BQ) : lk;
    for (int64_t k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads(); // the previous step's readers of Ks/Vs are done; Q, O, m, l are written
        load_rows(Ks, L.ldq, kh, c, k0, lk, d, dp, BK, vec);
        load_rows(Vs, L.ldq, vh, c, k0, lk, d, dp, BK, vec);
        __syncthreads();

        // S[16, BK] = Q_w[16, dp] K^T[dp, BK]; K stored [key][dim] is K^T in column-major.
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> sacc[BK / 16];
#pragma unroll
        for (int n = 0; n < BK / 16; n++) wmma::fill_fragment(sacc[n], 0.0f);
        for (int d0 = 0; d0 < dp; d0 += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> qa;
            wmma::load_matrix_sync(qa, Qs + warp * 16 * L.ldq + d0, L.ldq);
#pragma unroll
            for (int n = 0; n < BK / 16; n++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> kb;
                wmma::load_matrix_sync(kb, Ks + n * 16 * L.ldq + d0, L.ldq);
                wmma::mma_sync(sacc[n], qa, kb, sacc[n]);
            }
        }
#pragma unroll
        for (int n = 0; n < BK / 16; n++) wmma::store_matrix_sync(Sw + n * 16, sacc[n], L.lds, wmma::mem_row_major);
        __syncwarp();

        // Online softmax, row by row: lane owns key columns lane + 32 t, t < KC.
        for (int r = 0; r < 16; r++) {
            const int64_t qi = q0 + warp * 16 + r;
            float sv[KC], mx = -INFINITY;
#pragma unroll
            for (int t = 0; t < KC; t++) {
                const int64_t j = k0 + lane + 32 * t;
                sv[t] = Sw[r * L.lds + lane + 32 * t] * scale;
                if (j >= lk || (causal && j > qi)) sv[t] = -INFINITY;
                mx = fmaxf(mx, sv[t]);
            }
            const float m_old = Mw[r], l_old = Lw[r];
            const float m_new = fmaxf(m_old, pf_warp_max(mx));
            float psum = 0.0f, alpha = 1.0f;
#pragma unroll
            for (int t = 0; t < KC; t++) {
                // m_new == -inf: every key so far is masked, nothing to add
                const float p = m_new == -INFINITY ? 0.0f : __expf(sv[t] - m_new);
                psum += p;
                Pw[r * L.ldp + lane + 32 * t] = __float2half_rn(p);
            }
            if (m_new != -INFINITY) alpha = __expf(m_old - m_new);
            psum = pf_warp_sum(psum);
            for (int j = lane; j < dp; j += 32) Ow[r * L.ldo + j] *= alpha;
            __syncwarp(); // every lane has read Mw[r], Lw[r]
            if (lane == 0) {
                Mw[r] = m_new;
                Lw[r] = l_old * alpha + psum;
            }
        }
        __syncwarp();

        // O_w[16, dp] += P_w[16, BK] V[BK, dp]
        for (int d0 = 0; d0 < dp; d0 += 16) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> o;
            wmma::load_matrix_sync(o, Ow + d0, L.ldo, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < BK / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> pa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> vb;
                wmma::load_matrix_sync(pa, Pw + kk * 16, L.ldp);
                wmma::load_matrix_sync(vb, Vs + kk * 16 * L.ldq + d0, L.ldq);
                wmma::mma_sync(o, pa, vb, o);
            }
            wmma::store_matrix_sync(Ow + d0, o, L.ldo, wmma::mem_row_major);
        }
        __syncwarp();
    }

    for (int r = 0; r < 16; r++) {
        const int64_t qi = q0 + warp * 16 + r;
        if (qi >= lq) break; // the same for the whole warp
        const float inv = 1.0f / Lw[r];
        __half *orow = out + (b * lq + qi) * c + h * d;
        for (int j = lane; j < d; j += 32) orow[j] = __float2half_rn(Ow[r * L.ldo + j] * inv);
    }
}

// Launches attn_wmma<NW, BK> when its shared memory fits the device's per-block
// limit; returns false (nothing launched) when it does not.
template <int NW, int BK>
static bool launch_wmma(cudaError_t *e, int smem_optin, __half *out, const __half *q, const __half *k, const __half *v,
                        int64_t bh, int64_t lq, int64_t lk, int64_t c, int heads, int d, float scale, int causal,
                        cudaStream_t stream) {
    const int dp = (d + 15) / 16 * 16;
    const size_t bytes = layout_of<NW, BK>(dp).total;
    if (bytes > (size_t)smem_optin) return false;
    *e = cudaFuncSetAttribute(attn_wmma<NW, BK>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (*e != cudaSuccess) return true;
    const int vec = d % 8 == 0 && c % 8 == 0 && ((uintptr_t)q | (uintptr_t)k | (uintptr_t)v) % 16 == 0;
    const int64_t bq = 16 * NW;
    attn_wmma<NW, BK><<<dim3((unsigned)((lq + bq - 1) / bq), (unsigned)bh), NW * 32, bytes, stream>>>(
        out, q, k, v, lq, lk, c, heads, d, dp, scale, causal, vec);
    *e = cudaGetLastError();
    return true;
}

// ---- generic kernel ----

#define G_ROWS 4                 // query rows per warp
#define G_WARPS 4                // warps per block
#define G_BQ (G_ROWS * G_WARPS)  // queries per block
#define G_BK 32                  // keys per step: lane j scores key j

template <typename T>
static size_t generic_smem(int d) { return (size_t)(G_BQ * d + G_BK * (d | 1) + G_BK * d) * sizeof(T); }

// grid (ceil(lq / G_BQ), batch * heads), G_WARPS * 32 threads, generic_smem<T>(d) bytes;
// lane owns output columns lane + 32 t, t < COLS: d <= 32 COLS.
template <int COLS, typename T>
static __global__ void __launch_bounds__(G_WARPS * 32)
    attn_generic(T *out, const T *q, const T *k, const T *v, int64_t lq, int64_t lk, int64_t c,
                 int heads, int d, float scale, int causal) {
    extern __shared__ __align__(128) unsigned char smem[];
    const int ldk = d | 1; // odd stride: lane j reading K[j][t] hits distinct banks
    T *Qs = reinterpret_cast<T *>(smem);       // [G_BQ][d]
    T *Ks = Qs + G_BQ * d;                           // [G_BK][ldk]
    T *Vs = Ks + G_BK * ldk;                         // [G_BK][d]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t b = blockIdx.y / heads, h = blockIdx.y % heads, q0 = (int64_t)blockIdx.x * G_BQ;
    const T *qh = q + b * lq * c + h * d, *kh = k + b * lk * c + h * d, *vh = v + b * lk * c + h * d;

    load_rows(Qs, d, qh, c, q0, lq, d, d, G_BQ, 0);
    float o[G_ROWS][COLS], m[G_ROWS], l[G_ROWS];
#pragma unroll
    for (int rr = 0; rr < G_ROWS; rr++) {
        m[rr] = -INFINITY;
        l[rr] = 0.0f;
#pragma unroll
        for (int t = 0; t < COLS; t++) o[rr][t] = 0.0f;
    }
    const int64_t kend = causal ? min(lk, q0 + G_BQ) : lk;
    for (int64_t k0 = 0; k0 < kend; k0 += G_BK) {
        __syncthreads();
        load_rows(Ks, ldk, kh, c, k0, lk, d, d, G_BK, 0);
        load_rows(Vs, d, vh, c, k0, lk, d, d, G_BK, 0); // zero past lk: p = 0 must not meet garbage
        __syncthreads();
        const int64_t j = k0 + lane;
#pragma unroll
        for (int rr = 0; rr < G_ROWS; rr++) {
            const int row = warp * G_ROWS + rr;
            const int64_t qi = q0 + row;
            float s = 0.0f;
            for (int t = 0; t < d; t++) s += pf_to_float(Qs[row * d + t]) * pf_to_float(Ks[lane * ldk + t]);
            s *= scale;
            if (j >= lk || (causal && j > qi)) s = -INFINITY;
            const float m_new = fmaxf(m[rr], pf_warp_max(s));
            float p = 0.0f, alpha = 1.0f;
            if (m_new != -INFINITY) {
                p = __expf(s - m_new);
                alpha = __expf(m[rr] - m_new);
            }
            l[rr] = l[rr] * alpha + pf_warp_sum(p);
            m[rr] = m_new;
#pragma unroll
            for (int t = 0; t < COLS; t++) o[rr][t] *= alpha;
            for (int jj = 0; jj < G_BK; jj++) {
                const float pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
                for (int t = 0; t < COLS; t++) {
                    const int col = lane + 32 * t;
                    if (col < d) o[rr][t] += pj * pf_to_float(Vs[jj * d + col]);
                }
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < G_ROWS; rr++) {
        const int64_t qi = q0 + warp * G_ROWS + rr;
        if (qi >= lq) continue;
        const float inv = 1.0f / l[rr];
        T *orow = out + (b * lq + qi) * c + h * d;
#pragma unroll
        for (int t = 0; t < COLS; t++) {
            const int col = lane + 32 * t;
            if (col < d) orow[col] = pf_from_float<T>(o[rr][t] * inv);
        }
    }
}

template <typename T>
static __global__ void fill_nan(T *y, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = pf_from_float<T>(NAN);
}

template <int COLS, typename T>
static cudaError_t launch_generic(T *out, const T *q, const T *k, const T *v, int64_t bh,
                                  int64_t lq, int64_t lk, int64_t c, int heads, int d, float scale, int causal,
                                  cudaStream_t stream) {
    const size_t bytes = generic_smem<T>(d);
    cudaError_t e =
        cudaFuncSetAttribute(attn_generic<COLS, T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (e != cudaSuccess) return e;
    attn_generic<COLS, T><<<dim3((unsigned)((lq + G_BQ - 1) / G_BQ), (unsigned)bh), G_WARPS * 32, bytes, stream>>>(
        out, q, k, v, lq, lk, c, heads, d, scale, causal);
    return cudaGetLastError();
}

template <typename T>
cudaError_t pf_cuda_attention(T *out, const T *q, const T *k, const T *v, int64_t batch,
                              int64_t lq, int64_t lk, int64_t c, int heads, int causal, int kernel,
                              cudaStream_t stream) {
    const int64_t n = batch * lq * c;
    if (n == 0) return cudaSuccess;
    if (lk == 0) { // no keys: torch returns NaN rows
        fill_nan<<<pf_grid(n), PF_THREADS, 0, stream>>>(out, n);
        return cudaGetLastError();
    }
    const int d = (int)(c / heads);
    const int64_t bh = batch * heads;
    if (d > PF_ATTN_MAX_HEAD_DIM || bh > 65535) return cudaErrorInvalidValue;
    const float scale = 1.0f / sqrtf((float)d);

    int dev = 0, smem_optin = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (e != cudaSuccess) return e;
    if constexpr (std::is_same<T, __half>::value) { // tensor cores: fp16 only
        if (kernel == PF_ATTN_DEFAULT && pf_cuda_attention_mma_fits(d, causal))
            return pf_cuda_attention_mma(out, q, k, v, bh, lq, lk, c, heads, d, scale, stream);
        if (kernel != PF_ATTN_GENERIC &&
            (launch_wmma<4, 64>(&e, smem_optin, out, q, k, v, bh, lq, lk, c, heads, d, scale, causal, stream) ||
             launch_wmma<2, 32>(&e, smem_optin, out, q, k, v, bh, lq, lk, c, heads, d, scale, causal, stream)))
            return e;
    }
    if (d <= 64) return launch_generic<2>(out, q, k, v, bh, lq, lk, c, heads, d, scale, causal, stream);
    if (d <= 128) return launch_generic<4>(out, q, k, v, bh, lq, lk, c, heads, d, scale, causal, stream);
    if (d <= 256) return launch_generic<8>(out, q, k, v, bh, lq, lk, c, heads, d, scale, causal, stream);
    return launch_generic<16>(out, q, k, v, bh, lq, lk, c, heads, d, scale, causal, stream);
}

template cudaError_t pf_cuda_attention(__half *, const __half *, const __half *, const __half *, int64_t, int64_t,
                                       int64_t, int64_t, int, int, int, cudaStream_t);
template cudaError_t pf_cuda_attention(float *, const float *, const float *, const float *, int64_t, int64_t,
                                       int64_t, int64_t, int, int, int, cudaStream_t);
