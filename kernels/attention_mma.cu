// attention_mma.cu - the default fp16 attention kernel: FlashAttention-2's
// forward pass on mma.sync (m16n8k16, fp16 in, fp32 accumulate), with the
// scores, the probabilities and the output rows all in registers.
//
// A block of NW warps owns BQ = 16 NW queries of one (batch, head); warp w owns
// query rows [16 w, 16 w + 16). The block walks the keys in tiles of BK: each
// tile of K is staged in shared memory as rows [key][dim], each tile of V
// transposed, [dim][key], so that both products read their B fragments as
// aligned pairs of halves. Per tile a warp computes S = Q K^T (16 x BK, float),
// its online softmax (running max m and partial sum l per row, as attention.cu's
// kernels), rounds P to fp16 and adds P V into its output fragments. Scores are
// kept in base 2 (scale * log2 e folded in, exp2f) as FlashAttention does.
//
// Why a second tensor-core kernel: attn_wmma (attention.cu) keeps S and O in
// shared memory because wmma's fragment layout is opaque, and walks the 16 rows
// of a warp one at a time for the softmax; at SD-1.5's 4096 tokens and batch 16
// that ran at ~21 TFLOP/s on an H200, half of a whole image's time
// (tests/device/results). Here the layout is PTX's documented one
// (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with g = lane / 4, t = lane % 4:
//   A (16x16, row major), four 32-bit registers of two halves each:
//     a0 (row g, cols 2t, 2t+1), a1 (row g+8, same cols),
//     a2 (row g, cols 2t+8, 2t+9), a3 (row g+8, cols 2t+8, 2t+9)
//   B (16x8, k x n): b0 (k 2t, 2t+1; n g), b1 (k 2t+8, 2t+9; n g)
//   C (16x8, float): c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8, same cols)
// so the C fragments of two neighbouring 8-key tiles of S are, rounded to fp16,
// exactly the A fragment of P for those 16 keys: P never leaves registers.
//
// Limits: not causal (CLIP's causal attention stays on attn_wmma), head dims up
// to 160 (SD's 40/64/80/160), zero-padded to DP, a multiple of 16.
#include "attention_mma.cuh"

namespace {

constexpr int NW = 4;       // warps per block
constexpr int BQ = 16 * NW; // queries per block
constexpr int BK = 64;      // keys per tile

__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded to fp16 in one register, lo in the low half (the element
// with the smaller index, as the fragments want).
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t *>(&h);
}

// Two halves at p (4-byte aligned) as one register.
__device__ __forceinline__ uint32_t ld2(const __half *p) { return *reinterpret_cast<const uint32_t *>(p); }

// Element (row, col) of one head's rows (src: the head's first channel of row 0,
// rows c apart), zero past the sequence end len or the head dim d.
__device__ __forceinline__ __half at(const __half *src, int64_t c, int64_t row, int64_t len, int col, int d) {
    return row < len && col < d ? src[row * c + col] : __float2half_rn(0.0f);
}

// grid (ceil(lq / BQ), batch * heads), NW * 32 threads, static shared memory.
// vec: K and V rows load as 16-byte vectors (d, c multiples of 8, pointers aligned).
template <int DP>
__global__ void __launch_bounds__(NW * 32)
    attn_mma(__half *out, const __half *q, const __half *k, const __half *v, int64_t lq, int64_t lk, int64_t c,
             int heads, int d, float scale_log2, int vec) {
    constexpr int LDK = DP + 8; // K tile row stride (halves): 16-byte rows, rows 4 banks apart
    constexpr int LDV = BK + 8; // V^T tile row stride
    __shared__ __align__(16) __half Ks[BK * LDK];
    __shared__ __align__(16) __half Vt[DP * LDV];

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int64_t b = blockIdx.y / heads, h = blockIdx.y % heads, q0 = (int64_t)blockIdx.x * BQ;
    const __half *qh = q + b * lq * c + h * d, *kh = k + b * lk * c + h * d, *vh = v + b * lk * c + h * d;

    // This warp's Q rows as A fragments, one per 16 dims, straight from global
    // memory (once per block; element loads, so any d and alignment do).
    const int64_t r0 = q0 + warp * 16 + g, r1 = r0 + 8;
    uint32_t qa[DP / 16][4];
#pragma unroll
    for (int kc = 0; kc < DP / 16; kc++) {
        const int c0 = kc * 16 + 2 * t, c1 = c0 + 8;
        __half2 x;
        x = __halves2half2(at(qh, c, r0, lq, c0, d), at(qh, c, r0, lq, c0 + 1, d));
        qa[kc][0] = *reinterpret_cast<uint32_t *>(&x);
        x = __halves2half2(at(qh, c, r1, lq, c0, d), at(qh, c, r1, lq, c0 + 1, d));
        qa[kc][1] = *reinterpret_cast<uint32_t *>(&x);
        x = __halves2half2(at(qh, c, r0, lq, c1, d), at(qh, c, r0, lq, c1 + 1, d));
        qa[kc][2] = *reinterpret_cast<uint32_t *>(&x);
        x = __halves2half2(at(qh, c, r1, lq, c1, d), at(qh, c, r1, lq, c1 + 1, d));
        qa[kc][3] = *reinterpret_cast<uint32_t *>(&x);
    }

    float o[DP / 8][4]; // output fragments: dims [8 j, 8 j + 8) of rows g, g + 8
#pragma unroll
    for (int j = 0; j < DP / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f; // rows g, g + 8 (l: this lane's part)

    for (int64_t k0 = 0; k0 < lk; k0 += BK) {
        __syncthreads(); // every warp is done with the previous tile
        // K tile [key][dim], V tile transposed [dim][key]; zero past lk and d, so
        // masked keys (p = 0) meet zeros, never stale values.
        if (vec) {
            for (int i = threadIdx.x; i < BK * (DP / 8); i += NW * 32) {
                const int r = i / (DP / 8), col = (i - r * (DP / 8)) * 8;
                uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
                if (k0 + r < lk && col < d) {
                    kv = *reinterpret_cast<const uint4 *>(kh + (k0 + r) * c + col);
                    vv = *reinterpret_cast<const uint4 *>(vh + (k0 + r) * c + col);
                }
                *reinterpret_cast<uint4 *>(Ks + r * LDK + col) = kv;
                const __half *ve = reinterpret_cast<const __half *>(&vv);
#pragma unroll
                for (int e = 0; e < 8; e++) Vt[(col + e) * LDV + r] = ve[e];
            }
        } else {
            for (int i = threadIdx.x; i < BK * DP; i += NW * 32) {
                const int r = i / DP, col = i - r * DP;
                Ks[r * LDK + col] = at(kh, c, k0 + r, lk, col, d);
                Vt[col * LDV + r] = at(vh, c, k0 + r, lk, col, d);
            }
        }
        __syncthreads();

        // S = Q K^T for this warp's 16 rows: BK / 8 fragments of 16 x 8 keys.
        float s[BK / 8][4];
#pragma unroll
        for (int n = 0; n < BK / 8; n++) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            const __half *krow = Ks + (n * 8 + g) * LDK + 2 * t;
#pragma unroll
            for (int kc = 0; kc < DP / 16; kc++) mma16816(s[n], qa[kc], ld2(krow + kc * 16), ld2(krow + kc * 16 + 8));
        }
        // base-2 scores, keys past lk masked; the tile's row maxima (a quad holds a row)
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int n = 0; n < BK / 8; n++) {
            const int64_t j = k0 + n * 8 + 2 * t;
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const bool in = j + e < lk;
                s[n][e] = in ? s[n][e] * scale_log2 : -INFINITY;
                s[n][2 + e] = in ? s[n][2 + e] * scale_log2 : -INFINITY;
                mx0 = fmaxf(mx0, s[n][e]);
                mx1 = fmaxf(mx1, s[n][2 + e]);
            }
        }
#pragma unroll
        for (int off = 1; off < 4; off <<= 1) {
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
        }
        // k0 < lk: every tile has a key in range, so the new maxima are finite
        // and alpha = exp2(-inf) = 0 on the first tile.
        const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
        const float a0 = exp2f(m0 - n0), a1 = exp2f(m1 - n1);
        m0 = n0, m1 = n1;
        float p0 = 0.0f, p1 = 0.0f;
#pragma unroll
        for (int n = 0; n < BK / 8; n++) {
            s[n][0] = exp2f(s[n][0] - n0);
            s[n][1] = exp2f(s[n][1] - n0);
            s[n][2] = exp2f(s[n][2] - n1);
            s[n][3] = exp2f(s[n][3] - n1);
            p0 += s[n][0] + s[n][1];
            p1 += s[n][2] + s[n][3];
        }
        l0 = l0 * a0 + p0;
        l1 = l1 * a1 + p1;
#pragma unroll
        for (int j = 0; j < DP / 8; j++) {
            o[j][0] *= a0, o[j][1] *= a0;
            o[j][2] *= a1, o[j][3] *= a1;
        }
        // O += P V: P's A fragment for keys [16 kk, 16 kk + 16) is the C fragments
        // of key tiles 2 kk and 2 kk + 1, rounded to fp16 (l summed the unrounded p).
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            const uint32_t pa[4] = {pack2(s[2 * kk][0], s[2 * kk][1]), pack2(s[2 * kk][2], s[2 * kk][3]),
                                    pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    pack2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int j = 0; j < DP / 8; j++) {
                const __half *vrow = Vt + (j * 8 + g) * LDV + kk * 16 + 2 * t;
                mma16816(o[j], pa, ld2(vrow), ld2(vrow + 8));
            }
        }
    }

    // the quad's partial sums make each row's l; out = O / l
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    const float i0 = 1.0f / l0, i1 = 1.0f / l1;
    __half *out0 = out + (b * lq + r0) * c + h * d, *out1 = out + (b * lq + r1) * c + h * d;
#pragma unroll
    for (int j = 0; j < DP / 8; j++) {
        const int col = j * 8 + 2 * t;
#pragma unroll
        for (int e = 0; e < 2; e++) {
            if (col + e >= d) continue;
            if (r0 < lq) out0[col + e] = __float2half_rn(o[j][e] * i0);
            if (r1 < lq) out1[col + e] = __float2half_rn(o[j][2 + e] * i1);
        }
    }
}

template <int DP>
cudaError_t launch(__half *out, const __half *q, const __half *k, const __half *v, int64_t bh, int64_t lq,
                   int64_t lk, int64_t c, int heads, int d, float scale, cudaStream_t stream) {
    const int vec = d % 8 == 0 && c % 8 == 0 && ((uintptr_t)k | (uintptr_t)v) % 16 == 0;
    const float log2e = 1.4426950408889634f;
    attn_mma<DP><<<dim3((unsigned)((lq + BQ - 1) / BQ), (unsigned)bh), NW * 32, 0, stream>>>(
        out, q, k, v, lq, lk, c, heads, d, scale * log2e, vec);
    return cudaGetLastError();
}

} // namespace

bool pf_cuda_attention_mma_fits(int d, int causal) { return !causal && d >= 1 && d <= PF_ATTN_MMA_MAX_HEAD_DIM; }

cudaError_t pf_cuda_attention_mma(__half *out, const __half *q, const __half *k, const __half *v, int64_t bh,
                                  int64_t lq, int64_t lk, int64_t c, int heads, int d, float scale,
                                  cudaStream_t stream) {
    if (lq == 0 || bh == 0) return cudaSuccess;
    if (lk < 1 || bh > 65535 || (lq + BQ - 1) / BQ > 0x7fffffff) return cudaErrorInvalidValue;
    switch ((d + 15) / 16) {
    case 1: return launch<16>(out, q, k, v, bh, lq, lk, c, heads, d, scale, stream);
    case 2: return launch<32>(out, q, k, v, bh, lq, lk, c, heads, d, scale, stream);
    case 3: return launch<48>(out, q, k, v, bh, lq, lk, c, heads, d, scale, stream);
    case 4: return launch<64>(out, q, k, v, bh, lq, lk, c, heads, d, scale, stream);
    case 5: return launch<80>(out, q, k, v, bh, lq, lk, c, heads, d, scale, stream);
    case 6: return launch<96>(out, q, k, v, bh, lq, lk, c, heads, d, scale, stream);
    case 7: return launch<112>(out, q, k, v, bh, lq, lk, c, heads, d, scale, stream);
    case 8: return launch<128>(out, q, k, v, bh, lq, lk, c, heads, d, scale, stream);
    case 9: return launch<144>(out, q, k, v, bh, lq, lk, c, heads, d, scale, stream);
    case 10: return launch<160>(out, q, k, v, bh, lq, lk, c, heads, d, scale, stream);
    default: return cudaErrorInvalidValue;
    }
}
