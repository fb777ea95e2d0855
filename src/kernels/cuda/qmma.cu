// The tensor-core decode kernel: ỹ (B, rows) = Σ_s scale_s ∘ (C_s x̃) for 1 ≤ B ≤ kMmaMaxBatch,
// with the codes decoded straight into the A fragments of mma.sync.m16n8k16 (fp16 in, fp32
// accumulation) and x̃ as the B fragments. The dot products leave the CUDA cores: what remains
// per code is the table decode (as in qgemv.cu) and four HFMA2 that apply the row's scale and
// the ±¼ shift, so one kernel serves batch 1 to 64 at nearly the cost of batch 1.
//
// Fragment mapping (no data movement between lanes). mma.m16n8k16 wants, in lane (g, t) =
// (lane / 4, lane % 4), the A elements of rows g and g + 8 at k = 2t, 2t+1, 2t+8, 2t+9, and the
// B elements of column n = g at the same k. Rows and k may be permuted freely as long as A and
// B agree and the output rows are mapped back, so:
//   - lane (g, t) loads ONE 16-byte code word, tile T + g and group G + t (8 rows × 8 columns,
//     the upload() layout); the warp's 32 words cover 8 tiles (64 rows) × 4 groups;
//   - for m = 0..3, the codes of rows 2m and 2m+1 of that word (its 32-bit component m) play
//     rows g and g + 8 of the m-th pair of mma: the first mma takes coordinate pairs 0 and 1 of
//     the group as k = (2t, 2t+1) and (2t+8, 2t+9), the second pairs 2 and 3;
//   - so the B fragment of lane (g, t) is x̃ of vector g, group G + t: one 16-byte shared-memory
//     load, the same for all four m.
// The C fragment of pair m holds rows 8(T+g) + 2m (c0, c1) and + 2m+1 (c2, c3) for vectors
// 2t, 2t+1 of each 8-vector tile.
//
// Scales. A is built in fp16 as c·r with r = scale / ref, ref = the largest |scale| of the row
// tile over all stages (so 0 ≤ r ≤ 1 and every stage accumulates into the same C); the output is
// ref·C. The shift: c = σ∘p ± ¼, so A = (σ∘p)·r ± ¼r is one HFMA2 per coordinate pair, with
// ±¼r obtained by flipping the sign bits of ¼r with the code's shift bit.
//
// Work split. A block has 16 warps: SR row slabs (64 rows each) × KS warps per slab, each warp
// of a slab walking its own part of the block's range of groups; the KS partial results of a
// slab are summed in shared memory, and column ranges (blockIdx.y) are summed with atomics into
// a zeroed ỹ. Vectors come in chunks of 8·NT (blockIdx.z).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <string>
#include <type_traits>

#include "glq/error.hpp"
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/e8_decode.cuh"
#include "kernels/cuda/launch.hpp"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/pdl.cuh"

namespace glq::cuda::detail {

namespace {

constexpr int kWarps = 16;
constexpr int kThreads = kWarps * 32;
constexpr int kTabE8pBytes = 256 * 256;  // selector and sign tables, interleaved, bank-private
constexpr int kTabR8Bytes = 256 * 128;   // E8R8 selector table, bank-private
constexpr int kXBudget = 160 * 1024;     // shared memory for x̃ of a block

struct QmmaParams : StageArgs {
  int sr, ks;        // row slabs per block, warps per slab
  int kb_groups;     // groups per block (column range blockIdx.y)
  int kw_groups;     // groups per warp, a multiple of 4
  int x_stride;      // 16-byte units between vectors of x̃ in shared memory
  int batch;
  const __half* xt;
  int ld_x;
  float* yt;
  int ld_y;
  const uint32_t* tables;
  int has_r8;
  int atomic;
  // Fused input transform (batch 1): x̃ of the block's columns computed from x here.
  const float* x;        // (cols) fp32
  const float* sign_in;  // (cols)
  const float* q_in;     // (a, a) or null
  int a_in, log2b_in, n_in;
  float inv_sqrt_b_in;
  int depth;             // ring slots per lane: 1, 2, 4 or 8
  int xvec;              // vectors of x̃ the shared-memory layout holds
  size_t part_stride;    // > 0: column range y writes yt + y·part_stride (no atomics)
};

__device__ __forceinline__ uint32_t opaque(uint32_t v) {
  uint32_t r;
  asm volatile("mov.b32 %0, %1;" : "=r"(r) : "r"(v));
  return r;
}

__device__ __forceinline__ uint32_t hfma2u(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

__device__ __forceinline__ uint32_t hmul2u(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

// One E8P16 word (8 rows × one group) into 4 pairs of mma per vector tile.
template <int NT>
__device__ __forceinline__ void e8p_mma(const uint4 c, const unsigned char* tab, uint32_t lane4, uint32_t blo,
                                        uint32_t bhi, const uint32_t s2[8], const uint32_t q2[8],
                                        const uint4 xb[NT], float acc[NT][4][4]) {
  const uint32_t words[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
  for (int m = 0; m < 4; ++m) {
    const uint32_t w = words[m];
    uint32_t e0, e1;
    e8p_private_selectors(tab, lane4, w, e0, e1);
    uint32_t d0[4], d1[4];
    decode_pairs(e0, blo, bhi, d0);
    decode_pairs(e1, blo, bhi, d1);
    // ±¼r: the shift bit (bit 15 of each code) copied onto both sign bits of ¼r.
    const uint32_t t0 = (__byte_perm(w, 0u, 0x1010u) & 0x80008000u) ^ q2[2 * m];
    const uint32_t t1 = (__byte_perm(w, 0u, 0x3232u) & 0x80008000u) ^ q2[2 * m + 1];
    uint32_t a0[4], a1[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      a0[k] = hfma2u(d0[k], s2[2 * m], t0);
      a1[k] = hfma2u(d1[k], s2[2 * m + 1], t1);
    }
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      mma16816(acc[j][m], a0[0], a1[0], a0[1], a1[1], xb[j].x, xb[j].y);
      mma16816(acc[j][m], a0[2], a1[2], a0[3], a1[3], xb[j].z, xb[j].w);
    }
  }
}

// One E8R8 word (8 rows × one group, one byte each; in c.x and c.y).
template <int NT>
__device__ __forceinline__ void e8r_mma(const uint4 c, const unsigned char* tab_r8, uint32_t lane8, uint32_t blo,
                                        uint32_t bhi, const uint32_t s2[8], const uint4 xb[NT],
                                        float acc[NT][4][4]) {
#pragma unroll
  for (int m = 0; m < 4; ++m) {
    const uint32_t w = m < 2 ? c.x : c.y;
    const uint32_t b0 = (2 * m) & 3, b1 = (2 * m + 1) & 3;
    // bytes [lane·8, code, 0, 0] >> 1 = code·128 + lane·4: entry `code` of this lane's copy.
    const uint32_t e0 = lds32(tab_r8, __byte_perm(lane8, w, 0x1140u + (b0 << 4)) >> 1);
    const uint32_t e1 = lds32(tab_r8, __byte_perm(lane8, w, 0x1140u + (b1 << 4)) >> 1);
    uint32_t d0[4], d1[4];
    decode_pairs(e0, blo, bhi, d0);
    decode_pairs(e1, blo, bhi, d1);
    uint32_t a0[4], a1[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      a0[k] = hmul2u(d0[k], s2[2 * m]);
      a1[k] = hmul2u(d1[k], s2[2 * m + 1]);
    }
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      mma16816(acc[j][m], a0[0], a1[0], a0[1], a1[1], xb[j].x, xb[j].y);
      mma16816(acc[j][m], a0[2], a1[2], a0[3], a1[3], xb[j].z, xb[j].w);
    }
  }
}

// The same without scales or shift (A = σ∘p, or the E8R8 codeword): the row scales multiply C
// once per stage, and the ±¼ shift of all codes enters through shift_mma.
template <int NT>
__device__ __forceinline__ void e8p_mma_plain(const uint4 c, const unsigned char* tab, uint32_t lane4, uint32_t blo,
                                              uint32_t bhi, const uint4 xb[NT], float acc[NT][4][4]) {
  const uint32_t words[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
  for (int m = 0; m < 4; ++m) {
    const uint32_t w = words[m];
    uint32_t e0, e1;
    e8p_private_selectors(tab, lane4, w, e0, e1);
    uint32_t d0[4], d1[4];
    decode_pairs(e0, blo, bhi, d0);
    decode_pairs(e1, blo, bhi, d1);
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      mma16816(acc[j][m], d0[0], d1[0], d0[1], d1[1], xb[j].x, xb[j].y);
      mma16816(acc[j][m], d0[2], d1[2], d0[3], d1[3], xb[j].z, xb[j].w);
    }
  }
}

template <int NT>
__device__ __forceinline__ void e8r_mma_plain(const uint4 c, const unsigned char* tab_r8, uint32_t lane8, uint32_t blo,
                                              uint32_t bhi, const uint4 xb[NT], float acc[NT][4][4]) {
#pragma unroll
  for (int m = 0; m < 4; ++m) {
    const uint32_t w = m < 2 ? c.x : c.y;
    const uint32_t b0 = (2 * m) & 3, b1 = (2 * m + 1) & 3;
    const uint32_t e0 = lds32(tab_r8, __byte_perm(lane8, w, 0x1140u + (b0 << 4)) >> 1);
    const uint32_t e1 = lds32(tab_r8, __byte_perm(lane8, w, 0x1140u + (b1 << 4)) >> 1);
    uint32_t d0[4], d1[4];
    decode_pairs(e0, blo, bhi, d0);
    decode_pairs(e1, blo, bhi, d1);
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      mma16816(acc[j][m], d0[0], d1[0], d0[1], d1[1], xb[j].x, xb[j].y);
      mma16816(acc[j][m], d0[2], d1[2], d0[3], d1[3], xb[j].z, xb[j].w);
    }
  }
}

// The ±¼ shifts of four consecutive k-steps (words c[0..3] of this lane: groups G+t, G+4+t,
// G+8+t, G+12+t) as one more mma per pair m: A(row, k) = ±¼ from the code's bit 15, with the
// four groups as k = 2t, 2t+1, 2t+8, 2t+9; B(k, n) = Σ x̃ of that group for vector n (sb, as
// two half2: groups u = 0,1 and u = 2,3).
template <int NT>
__device__ __forceinline__ void shift_mma(const uint4 c[4], const uint32_t sb[NT][2], float acc[NT][4][4]) {
  const uint32_t w0[4] = {c[0].x, c[0].y, c[0].z, c[0].w}, w1[4] = {c[1].x, c[1].y, c[1].z, c[1].w};
  const uint32_t w2[4] = {c[2].x, c[2].y, c[2].z, c[2].w}, w3[4] = {c[3].x, c[3].y, c[3].z, c[3].w};
#pragma unroll
  for (int m = 0; m < 4; ++m) {
    // bit 15 of the half = the code's shift bit; 0x3400 = ¼.
    const uint32_t a0 = (__byte_perm(w0[m], w1[m], 0x5010u) & 0x80008000u) | 0x34003400u;  // row 2m, u 0/1
    const uint32_t a1 = (__byte_perm(w0[m], w1[m], 0x7030u) & 0x80008000u) | 0x34003400u;  // row 2m+1
    const uint32_t a2 = (__byte_perm(w2[m], w3[m], 0x5010u) & 0x80008000u) | 0x34003400u;  // row 2m, u 2/3
    const uint32_t a3 = (__byte_perm(w2[m], w3[m], 0x7030u) & 0x80008000u) | 0x34003400u;
#pragma unroll
    for (int j = 0; j < NT; ++j) mma16816(acc[j][m], a0, a1, a2, a3, sb[j][0], sb[j][1]);
  }
}

// Entry s (< 4) of a parameter array, by selects: indexing the kernel's parameters with a runtime
// index makes the compiler copy them to local memory.
template <typename T>
__device__ __forceinline__ T pick(const T (&a)[4], int s) {
  return s == 0 ? a[0] : s == 1 ? a[1] : s == 2 ? a[2] : a[3];
}

__device__ __forceinline__ uint32_t half2_bits(float v) {
  const __half2 h = __float2half2_rn(v);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// x̃ = T_in (sign_in ∘ x) for the columns [8·g0, 8·(g0 + gn)) of one vector, as fp16 into xh.
// T = Q_a ⊗ H_b/√b: row i of the a×b view of x̃ is H_b (Σ_k Q[i,k] (sign∘x)_k) / √b (the mixing
// and the FWHT commute), so only the b-rows that overlap the columns are computed. fx: n floats
// of scratch (a > 1), zb: the rows (R·b floats).
__device__ __forceinline__ void fused_input_transform(const QmmaParams& p, int g0, int gn, __half* xh, float* fx,
                                                      float* zb) {
  const int lb = p.log2b_in, b = 1 << lb, n = p.n_in, a = p.a_in;
  const int c_lo = 8 * g0, c_hi = 8 * (g0 + gn);
  const int i_lo = c_lo >> lb, i_hi = (c_hi - 1) >> lb;
  const int R = i_hi - i_lo + 1;
  if (a > 1) {
#pragma unroll 8
    for (int k = threadIdx.x; k < n; k += blockDim.x) fx[k] = __ldg(p.x + k) * __ldg(p.sign_in + k);
    __syncthreads();
    for (int idx = threadIdx.x; idx < R * b; idx += blockDim.x) {
      const int i = i_lo + (idx >> lb), j = idx & (b - 1);
      const float* qi = p.q_in + i * a;
      float v0 = 0.0f, v1 = 0.0f;
      int k = 0;
#pragma unroll 4
      for (; k + 1 < a; k += 2) {
        v0 = fmaf(__ldg(qi + k), fx[(k << lb) + j], v0);
        v1 = fmaf(__ldg(qi + k + 1), fx[((k + 1) << lb) + j], v1);
      }
      if (k < a) v0 = fmaf(__ldg(qi + k), fx[(k << lb) + j], v0);
      zb[idx] = v0 + v1;
    }
  } else {
#pragma unroll 8
    for (int j = threadIdx.x; j < b; j += blockDim.x) zb[j] = __ldg(p.x + j) * __ldg(p.sign_in + j);
  }
  __syncthreads();
  for (int lh = 0; lh < lb; ++lh) {
    const int h = 1 << lh;
    for (int q = threadIdx.x; q < (R << lb) / 2; q += blockDim.x) {
      const int row = q >> (lb - 1), k = q & (b / 2 - 1);
      const int i = (row << lb) + (((k >> lh) << (lh + 1)) | (k & (h - 1)));
      const float u = zb[i], w = zb[i + h];
      zb[i] = u + w;
      zb[i + h] = u - w;
    }
    __syncthreads();
  }
  const int off = c_lo - (i_lo << lb);
  for (int col = threadIdx.x; col < c_hi - c_lo; col += blockDim.x)
    xh[col] = __float2half_rn(zb[col + off] * p.inv_sqrt_b_in);
}

// Code words come by cp.async (cp_async.cuh): 16 (E8P16) or 8 (E8R8) bytes, zero-filled when
// !ok; one commit group per k-step, waited for D steps later. The count must be an immediate.
__device__ __forceinline__ void cp_async_wait_n(int pending) {
  switch (pending) {
    case 0: cp_async_wait<0>(); break;
    case 1: cp_async_wait<1>(); break;
    case 3: cp_async_wait<3>(); break;
    case 7: cp_async_wait<7>(); break;
    default: cp_async_wait<15>(); break;
  }
}

// The kernel. Every lane streams its own code words through a ring of D 16-byte slots in
// shared memory (cp.async, D steps ahead), so that a block has D·8 KiB in flight from its first
// instruction on, while it fills the tables and stages x̃; no warp ever waits on a chain of
// dependent loads. kPlain (batch ≤ 8): A is the decoded codeword, the shift enters through
// shift_mma and the row scales multiply C once per stage; otherwise A = c·scale/ref (HFMA2).
//
// kXr (the plain kernel without the fused transform, batch ≤ 8): x̃ is not staged in shared
// memory. Each lane's B word (x̃ of vector g, group G + t: 16 bytes) travels with its code word
// through a second ring, requested in the same commit group, and Σx̃ of the group (the shift
// term) is summed from it. No staging pass, no barrier, and the ring fits 8 slots; the staged
// layout cost the block its first microseconds (115 KB of x̃ at batch 8 before the first code).
template <int NT, bool kFuse, bool kPlain>
__global__ void __launch_bounds__(kThreads, 1) qmma_kernel(const QmmaParams p) {
  constexpr bool kXr = kPlain && !kFuse && NT == 1;
  extern __shared__ uint4 smem4[];
  unsigned char* tab = reinterpret_cast<unsigned char*>(smem4);
  unsigned char* tab_r8 = tab + kTabE8pBytes;
  const int D = p.depth, dmask = p.depth - 1;
  uint4* ring = reinterpret_cast<uint4*>(tab + kTabE8pBytes + (p.has_r8 ? kTabR8Bytes : 0));
  uint4* xs = ring + D * kThreads;  // (xvec, x_stride), or kXr: the x̃ ring (D, kThreads)
  __half* sx = reinterpret_cast<__half*>(xs + p.xvec * p.x_stride);    // (xvec, x_stride)
  float* fx = reinterpret_cast<float*>(xs + p.xvec * p.x_stride + (p.xvec * p.x_stride + 7) / 8);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int slab_local = warp / p.ks, ksub = warp - slab_local * p.ks;
  const int tile = (blockIdx.x * p.sr + slab_local) * 8 + g;
  const bool tile_ok = tile < p.tiles;
  const int g0 = blockIdx.y * p.kb_groups;
  const int gn = min(p.kb_groups, p.groups - g0);
  const int w0 = ksub * p.kw_groups;
  const int w1 = min(gn, w0 + p.kw_groups);
  const int steps = w1 > w0 ? (w1 - w0 + 3) / 4 : 0;  // warp-uniform
  const int total = steps * p.stages;
  const int v0 = blockIdx.z * 8 * NT;
  const int nvec = min(8 * NT, p.batch - v0);

  uint4* my_ring = ring + threadIdx.x;
  // issue() requests k-steps in order: step q = (stage is, step ist), with a running source
  // pointer (this lane's word of the step) instead of recomputing the address.
  int iq = 0, is = 0, ist = 0;
  const int lane_steps = tile_ok && w0 + t < w1 ? (w1 - w0 - t + 3) / 4 : 0;  // steps with a word
  const size_t lane_word0 = tile_ok ? size_t(tile) * p.groups + g0 + w0 + t : 0;
  int bytes = p.codebook[0] == 1 ? 16 : 8;
  const char* src = static_cast<const char*>(p.codes[0]) + lane_word0 * bytes;
  // kXr: this lane's x̃ word of step ist: vector g, group g0 + w0 + t + 4·ist.
  const int lane_xsteps = w0 + t < w1 && g < nvec ? (w1 - w0 - t + 3) / 4 : 0;
  const __half* xsrc0 = kXr ? p.xt + size_t(v0 + min(g, nvec - 1)) * p.ld_x + size_t(g0 + w0 + t) * 8 : nullptr;
  auto issue_x = [&](int slot, int step) {
    cp_async_zfill(xs + slot * kThreads + threadIdx.x, xsrc0 + size_t(step) * 32, 16, step < lane_xsteps);
  };
  auto issue = [&](int q) {
    if (q < total) {
      cp_async_zfill(my_ring + (iq & dmask) * kThreads, src, bytes, ist < lane_steps);
      if constexpr (kXr) {
        if (q >= D) issue_x(iq & dmask, ist);  // the first D come after the wait on x̃'s kernel
      }
      src += 4 * bytes;
      if (++ist == steps) {
        ist = 0;
        ++is;
        if (is < p.stages) {
          bytes = pick(p.codebook, is) == 1 ? 16 : 8;
          src = static_cast<const char*>(pick(p.codes, is)) + lane_word0 * bytes;
        }
      }
    }
    ++iq;
    cp_async_commit();
  };
  // issue() for one stage of E8P16 words (2 bpw), called with q = iq: the same requests from a
  // pointer and q alone, without the stage bookkeeping (the loop's control flow at batch 8).
  // Used where D = 8 (take8: the same wait as take()'s, without its dispatch on D).
  const char* src_one = src;
  auto issue_one = [&](int q) {
    if (q < total) {
      cp_async_zfill(my_ring + (q & 7) * kThreads, src_one + size_t(q) * 64, 16, q < lane_steps);
      if constexpr (kXr) issue_x(q & 7, q);  // q ≥ D here
    }
    cp_async_commit();
  };
  auto take8 = [&](int q) -> uint4 {
    cp_async_wait_n(7);
    return my_ring[(q & 7) * kThreads];
  };
  auto take = [&](int q) -> uint4 {
    if (D == 8) cp_async_wait_n(7); else if (D == 4) cp_async_wait_n(3); else cp_async_wait_n(D - 1);
    return my_ring[(q & dmask) * kThreads];
  };
  // The decode tables' loads go out first (3 KB, all blocks read the same words: L2 hits), then
  // the first D code words; the tables are stored once both are on their way. Issued after the
  // code words' 64 KB per SM, the table loads waited behind them: 18% of the stall samples at
  // batch 8 (H100).
  constexpr int kPerP = kTabE8pBytes / 16 / kThreads, kPerR = kTabR8Bytes / 16 / kThreads;
  uint32_t tv[kPerP], tr[kPerR];
#pragma unroll
  for (int k = 0; k < kPerP; ++k) {
    const int i = threadIdx.x + k * kThreads, e = i >> 4, which = (i >> 3) & 1;
    tv[k] = __ldg(p.tables + (which ? kTableE8pSign : kTableE8pSel) + e);
  }
  if (p.has_r8)
#pragma unroll
    for (int k = 0; k < kPerR; ++k) tr[k] = __ldg(p.tables + kTableE8r8Sel + ((threadIdx.x + k * kThreads) >> 3));
  for (int q = 0; q < D; ++q) issue(q);

  // Scales (HFMA2 path): ref = largest |scale| of this lane's tile over all stages.
  float ref = 0.0f;
  if (!kPlain && tile_ok)
    for (int s = 0; s < p.stages; ++s) {
      const float4* sp = reinterpret_cast<const float4*>(pick(p.scales, s) + size_t(tile) * 8);
      const float4 a = __ldg(sp), b = __ldg(sp + 1);
      ref = fmaxf(ref, fmaxf(fmaxf(fmaxf(fabsf(a.x), fabsf(a.y)), fmaxf(fabsf(a.z), fabsf(a.w))),
                             fmaxf(fmaxf(fabsf(b.x), fabsf(b.y)), fmaxf(fabsf(b.z), fabsf(b.w)))));
    }
  const float inv_ref = ref > 0.0f ? 1.0f / ref : 0.0f;

  // Tables, bank-private: entry e of lane l at e·256 + l·4 (selector) and e·256 + 128 + l·4
  // (sign); E8R8 entry e of lane l at e·128 + l·4.
#pragma unroll
  for (int k = 0; k < kPerP; ++k) smem4[threadIdx.x + k * kThreads] = make_uint4(tv[k], tv[k], tv[k], tv[k]);
  if (p.has_r8)
#pragma unroll
    for (int k = 0; k < kPerR; ++k)
      reinterpret_cast<uint4*>(tab_r8)[threadIdx.x + k * kThreads] = make_uint4(tr[k], tr[k], tr[k], tr[k]);
  // Everything above touches only constant data; x (x̃) comes from the kernel before this one.
  pdl_trigger();
  pdl_wait();
  if constexpr (kXr) {  // x̃ words of the first D steps (step q of stage s is step q mod steps)
    for (int q = 0; q < min(D, total); ++q) issue_x(q, q % steps);
    cp_async_commit();
  } else if constexpr (kFuse) {  // one vector
    fused_input_transform(p, g0, gn, reinterpret_cast<__half*>(xs), fx, fx + (p.a_in > 1 ? p.n_in : 0));
  } else {
#pragma unroll 8
    for (int i = threadIdx.x; i < nvec * gn; i += kThreads) {
      const int v = i / gn, gl = i - v * gn;
      xs[v * p.x_stride + gl] = __ldg(reinterpret_cast<const uint4*>(p.xt + size_t(v0 + v) * p.ld_x) + g0 + gl);
    }
  }
  __syncthreads();  // the tables (and the staged x̃)
  if constexpr (kPlain && !kXr) {  // Σ x̃ of each group (fp16), for the shift
    for (int i = threadIdx.x; i < nvec * gn; i += kThreads) {
      const int v = i / gn, gl = i - v * gn;
      const uint4 q = xs[v * p.x_stride + gl];
      const float2 f0 = __half22float2(*reinterpret_cast<const __half2*>(&q.x));
      const float2 f1 = __half22float2(*reinterpret_cast<const __half2*>(&q.y));
      const float2 f2 = __half22float2(*reinterpret_cast<const __half2*>(&q.z));
      const float2 f3 = __half22float2(*reinterpret_cast<const __half2*>(&q.w));
      sx[v * p.x_stride + gl] = __float2half_rn(((f0.x + f0.y) + (f1.x + f1.y)) + ((f2.x + f2.y) + (f3.x + f3.y)));
    }
    __syncthreads();
  }

  const uint32_t lane4 = opaque(uint32_t(lane) * 4), lane8 = opaque(uint32_t(lane) * 8);
  const uint32_t p_lo = opaque(kE8pBytesLo), p_hi = opaque(kE8pBytesHi);
  const uint32_t r_lo = opaque(kE8rBytesLo), r_hi = opaque(kE8rBytesHi);
  float acc[NT][4][4];
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int m = 0; m < 4; ++m)
#pragma unroll
      for (int k = 0; k < 4; ++k) acc[j][m][k] = 0.0f;

  if constexpr (kPlain) {
    if constexpr (kXr) cp_async_wait_n(0);  // the first x̃ words were committed last, in one group
    for (int s = 0; s < p.stages; ++s) {
      const int cb = pick(p.codebook, s);
      // This stage's row scales, requested now so their latency hides behind the stage's steps.
      float4 sa = make_float4(0.0f, 0.0f, 0.0f, 0.0f), sb4 = sa;
      if (tile_ok) {
        const float4* sp = reinterpret_cast<const float4*>(pick(p.scales, s) + size_t(tile) * 8);
        sa = __ldg(sp);
        sb4 = __ldg(sp + 1);
      }
      float cst[NT][4][4];  // this stage's C
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int m = 0; m < 4; ++m)
#pragma unroll
          for (int k = 0; k < 4; ++k) cst[j][m][k] = 0.0f;
      // Four steps, one shift mma. kFull: all four steps are live (every quad but the last), so
      // the body has no per-step branches; the codebook is a template choice per stage.
      auto quad = [&](int st, auto full_c, auto e8p_c, auto one_c) {
        constexpr bool kFull = decltype(full_c)::value, kE8p = decltype(e8p_c)::value;
        constexpr bool kOne = decltype(one_c)::value;  // issue_one, and a ring of 8 slots
        uint4 c[4];
        [[maybe_unused]] uint16_t sh[NT][4];  // x̃ group sums, staged x̃ (!kXr)
        // kXr: per step, the pairwise fp16 sums (x0+x1+x4+x5... as HADD2 lanes) of the lane's x̃
        // word; two steps' totals come out of one more HADD2 below. (Summing in fp32 cost 8
        // conversions, 7 FADD and a rounding per step: ~10% of the loop's instructions at batch 8.)
        [[maybe_unused]] __half2 hp[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const bool live = kFull || st + u < steps;  // warp-uniform
          uint4 xb[NT];
          if constexpr (!kXr) {
            const int gl = w0 + 4 * (st + u) + t;
            const bool ok = live && gl < w1;
#pragma unroll
            for (int j = 0; j < NT; ++j) {
              const bool v_ok = ok && 8 * j + g < nvec;
              xb[j] = v_ok ? xs[(8 * j + g) * p.x_stride + gl] : make_uint4(0, 0, 0, 0);
              sh[j][u] = v_ok ? reinterpret_cast<const uint16_t*>(sx)[(8 * j + g) * p.x_stride + gl] : uint16_t(0);
            }
          }
          if (live) {
            const int q = s * steps + st + u;
            c[u] = kOne ? take8(q) : take(q);
            if constexpr (kXr) {  // zero-filled where the lane has no word
              const uint4 xw = xs[(q & (kOne ? 7 : dmask)) * kThreads + threadIdx.x];
              xb[0] = xw;
              hp[u] = __hadd2(__hadd2(*reinterpret_cast<const __half2*>(&xw.x), *reinterpret_cast<const __half2*>(&xw.y)),
                              __hadd2(*reinterpret_cast<const __half2*>(&xw.z), *reinterpret_cast<const __half2*>(&xw.w)));
            }
            if constexpr (kE8p)
              e8p_mma_plain<NT>(c[u], tab, lane4, p_lo, p_hi, xb, cst);
            else
              e8r_mma_plain<NT>(c[u], tab_r8, lane8, r_lo, r_hi, xb, cst);
            if constexpr (kOne) issue_one(q + 8); else issue(q + D);
          } else {
            c[u] = make_uint4(0, 0, 0, 0);
            if constexpr (kXr) hp[u] = __float2half2_rn(0.0f);
          }
        }
        if constexpr (kE8p) {
          uint32_t sb[NT][2];
#pragma unroll
          for (int j = 0; j < NT; ++j) {
            if constexpr (kXr) {
              const __half2 s01 = __hadd2(__lows2half2(hp[0], hp[1]), __highs2half2(hp[0], hp[1]));
              const __half2 s23 = __hadd2(__lows2half2(hp[2], hp[3]), __highs2half2(hp[2], hp[3]));
              sb[j][0] = *reinterpret_cast<const uint32_t*>(&s01);
              sb[j][1] = *reinterpret_cast<const uint32_t*>(&s23);
            } else {
              sb[j][0] = uint32_t(sh[j][0]) | (uint32_t(sh[j][1]) << 16);
              sb[j][1] = uint32_t(sh[j][2]) | (uint32_t(sh[j][3]) << 16);
            }
          }
          shift_mma<NT>(c, sb, cst);
        }
      };
      auto run = [&](auto e8p_c, auto one_c) {
        int st = 0;
        for (; st + 4 <= steps; st += 4) quad(st, std::true_type{}, e8p_c, one_c);
        if (st < steps) quad(st, std::false_type{}, e8p_c, one_c);
      };
      if (cb == 1 && p.stages == 1 && D == 8) run(std::true_type{}, std::true_type{});
      else if (cb == 1) run(std::true_type{}, std::false_type{});
      else run(std::false_type{}, std::false_type{});
      const float sc[8] = {sa.x, sa.y, sa.z, sa.w, sb4.x, sb4.y, sb4.z, sb4.w};
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int m = 0; m < 4; ++m)
#pragma unroll
          for (int k = 0; k < 4; ++k) acc[j][m][k] = fmaf(cst[j][m][k], sc[2 * m + (k >> 1)], acc[j][m][k]);
    }
    ref = 1.0f;
  } else {
    for (int s = 0; s < p.stages; ++s) {
      const int cb = pick(p.codebook, s);
      uint32_t s2[8], q2[8];
      {
        float sc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (tile_ok) {
          const float4* sp = reinterpret_cast<const float4*>(pick(p.scales, s) + size_t(tile) * 8);
          const float4 a = __ldg(sp), b = __ldg(sp + 1);
          sc[0] = a.x; sc[1] = a.y; sc[2] = a.z; sc[3] = a.w;
          sc[4] = b.x; sc[5] = b.y; sc[6] = b.z; sc[7] = b.w;
        }
#pragma unroll
        for (int r = 0; r < 8; ++r) {
          s2[r] = half2_bits(sc[r] * inv_ref);
          q2[r] = half2_bits(0.25f * sc[r] * inv_ref);
        }
      }
      for (int st = 0; st < steps; ++st) {
        const int gl = w0 + 4 * st + t;
        const bool ok = gl < w1;
        uint4 xb[NT];
#pragma unroll
        for (int j = 0; j < NT; ++j)
          xb[j] = ok && 8 * j + g < nvec ? xs[(8 * j + g) * p.x_stride + gl] : make_uint4(0, 0, 0, 0);
        const int q = s * steps + st;
        const uint4 c = take(q);
        if (cb == 1)
          e8p_mma<NT>(c, tab, lane4, p_lo, p_hi, s2, q2, xb, acc);
        else
          e8r_mma<NT>(c, tab_r8, lane8, r_lo, r_hi, s2, xb, acc);
        issue(q + D);
      }
    }
  }
  cp_async_wait_n(0);

  // Output: lane (g, t) holds rows 8·tile + 2m (+1) for vectors 8j + 2t (+1). With parts,
  // column range y writes its own slice (no atomics); else atomics into a zeroed ỹ when the
  // columns are split, plain stores when not.
  float* ybase = p.yt + (p.part_stride ? size_t(blockIdx.y) * p.part_stride : 0);
  const bool use_atomic = p.atomic && !p.part_stride;
  if (p.ks == 1) {
    if (tile_ok)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int m = 0; m < 4; ++m)
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const int v = 8 * j + 2 * t + (k & 1);
            const int row = tile * 8 + 2 * m + (k >> 1);
            if (v < nvec) {
              float* dst = ybase + size_t(v0 + v) * p.ld_y + row;
              const float val = acc[j][m][k] * ref;
              if (use_atomic) atomicAdd(dst, val); else *dst = val;
            }
          }
    return;
  }
  // KS warps per slab: every warp stores its partial tile in its own slice of shared memory
  // (free now), then each thread sums the KS slices of its outputs. (Float atomics on shared
  // memory compile to compare-and-swap loops: with 16 warps on the same 64 rows they took a
  // third of the kernel's time at batch 8.) Row stride nvec + 1: 2-way bank conflicts at most.
  float* red = reinterpret_cast<float*>(smem4);  // (warp, 64 rows, nvec + 1)
  const int rs = nvec + 1, slice = 64 * rs;
  __syncthreads();
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int m = 0; m < 4; ++m)
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int v = 8 * j + 2 * t + (k & 1);
        const int rl = g * 8 + 2 * m + (k >> 1);
        if (v < nvec) red[warp * slice + rl * rs + v] = acc[j][m][k] * ref;
      }
  __syncthreads();
  const int red_n = p.sr * 64 * nvec;
  for (int i = threadIdx.x; i < red_n; i += kThreads) {
    const int v = i % nvec, rr = i / nvec;  // rr = slab_local·64 + row in slab
    const int sl = rr >> 6, rl = rr & 63;
    const float* src = red + (sl * p.ks) * slice + rl * rs + v;
    float sum = 0.0f;
    for (int k = 0; k < p.ks; ++k) sum += src[k * slice];
    const int row = (blockIdx.x * p.sr) * 64 + rr;
    if (row < p.tiles * 8) {
      float* dst = ybase + size_t(v0 + v) * p.ld_y + row;
      if (use_atomic) atomicAdd(dst, sum); else *dst = sum;
    }
  }
}

struct QmmaPlan {
  int nt = 1, nz = 1, sr = 1, ks = 16, kb = 0, kw = 0, n_kb = 1, bx = 1, x_stride = 0, depth = 8, xvec = 1;
  size_t smem = 0;
  bool has_r8 = false;
};

// GLQ_QMMA_SHIFT=hfma: at batch ≤ 8, apply scales and shifts to A with HFMA2 (the path of larger
// batches) instead of the shift mma and per-stage scaling of C. For comparisons.
bool plain_for(int nt) {
  static const bool hfma = env_is("GLQ_QMMA_SHIFT", "hfma");
  return nt == 1 && !hfma;
}

template <int NT, bool kFuse, bool kPlain>
void* kernel_ptr() { return reinterpret_cast<void*>(qmma_kernel<NT, kFuse, kPlain>); }

void* kernel_for(int nt, bool fuse) {
  const bool plain = plain_for(nt);
  if (nt == 1) {
    if (fuse) return plain ? kernel_ptr<1, true, true>() : kernel_ptr<1, true, false>();
    return plain ? kernel_ptr<1, false, true>() : kernel_ptr<1, false, false>();
  }
  if (!fuse && nt == 2) return kernel_ptr<2, false, false>();
  if (!fuse && nt == 4) return kernel_ptr<4, false, false>();
  throw_invalid("qmma: no kernel for " + std::to_string(nt) + " vector tiles" + (fuse ? " (fused)" : ""));
}

void allow_smem(const DeviceInfo& info, int nt, bool fuse) {
  static std::once_flag flags[2][2][5];
  std::call_once(flags[fuse][plain_for(nt)][nt], [&] {
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(kernel_for(nt, fuse), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(info.smem_optin)));
  });
}

// Most parts (column ranges written to separate slices) a product may use, by batch.
int max_parts(int) { return 16; }

// Launch shape: the one with the least estimated time, in warp instructions per SM: waves × the
// work of one block (~5.5 + NT/2 per 16-byte code word, the staging, the fused transform), plus
// the output: a global atomic ~0.15 unit (at batch 8, 4096x14336, two column ranges by atomics
// took 18.5 us against 24.3 for one range on half the SMs; H100), parts cost the output
// transform's extra reads. A rough model; shapes whose shared
// memory does not fit are skipped. One block per SM (512 threads, up to 128 registers).
QmmaPlan plan_qmma(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch, bool fuse, bool parts) {
  QmmaPlan plan;
  for (auto cb : w.codebooks) plan.has_r8 = plan.has_r8 || cb == codec::Codebook::E8R8;
  // At most 16 vectors per chunk (blockIdx.z): at batch 64, chunks of 32 (NT = 4, 64 fp32
  // accumulators per lane) took 178 us against 110 us with chunks of 16 (H100, same run).
  // GLQ_QMMA_MAX_NT=4 allows chunks of 32, for comparisons.
  static const int max_nt = env_int("GLQ_QMMA_MAX_NT", 2) == 4 ? 4 : 2;
  plan.nt = batch <= 8 ? 1 : batch <= 16 || max_nt == 2 ? 2 : 4;
  plan.nz = (batch + 8 * plan.nt - 1) / (8 * plan.nt);
  const int nvec = std::min(batch, 8 * plan.nt);
  plan.xvec = nvec;
  const size_t tables = kTabE8pBytes + (plan.has_r8 ? kTabR8Bytes : 0);
  const int G = w.groups, tiles = w.rows / 8, slabs = (tiles + 7) / 8;
  const int stages = int(w.codes.size());
  const int a = w.plan_in.a, b = w.plan_in.b, n = w.cols;
  int lb = 0;
  while ((1 << lb) < b) ++lb;
  const int cap = info.sm_count;
  const bool xr = plain_for(plan.nt) && !fuse;  // the kernel's kXr
  // GLQ_QMMA_SPLIT=N: N column ranges (or the most the shape allows) where it fits;
  // GLQ_QMMA_SLABS=S: S row slabs of 64 rows per block. For tuning.
  static const int force_split = env_int("GLQ_QMMA_SPLIT", 0);
  static const int force_sr = env_int("GLQ_QMMA_SLABS", 0);
  const int split_cap = parts ? max_parts(batch) : 64;
  double best = -1;
  for (int sr : {1, 2, 4, 8, 16}) {
    if (force_sr > 0 && sr != force_sr) continue;
    const int ks = kWarps / sr;
    const int bx = (slabs + sr - 1) / sr;
    const int max_split = std::max(1, std::min(split_cap, (G + 4 * ks - 1) / (4 * ks)));
    for (int split = 1; split <= max_split; ++split) {
      if (force_split > 0 && split != std::min(force_split, max_split)) continue;
      const int kw = ((G + split * ks - 1) / (split * ks) + 3) / 4 * 4;
      const int kb = kw * ks;
      const int n_kb = (G + kb - 1) / kb;
      if (n_kb != split) continue;
      const int kbe = std::min(kb, G);
      const int stride = (kbe + 3) / 8 * 8 + 4;  // ≡ 4 (mod 8): conflict-free B loads
      // x̃ staged (nvec rows of stride words, their sums), or in a ring beside the codes' (xr)
      size_t fixed = xr ? tables : tables + size_t(nvec) * stride * 16 + (size_t(nvec) * stride * 2 + 15) / 16 * 16;
      const int rings = xr ? 2 : 1;
      double xform = 0;
      if (fuse) {
        const int rows_b = std::min(a, (8 * kbe + b - 1) / b + 1);
        fixed += (size_t(a > 1 ? n : 0) + size_t(rows_b) * b) * 4;
        // (×4: measured, the transform is latency-bound: barriers, L2 round trips)
        xform = 4 * ((a > 1 ? (double(rows_b) * b * a * 3 + n * 3) / 32 : b * 2.0 / 32) +
                     double(rows_b) * b / 2 * lb * 6 / 32 + lb * 100.0);
      }
      if (!xr && size_t(nvec) * stride * 16 > kXBudget) continue;
      int depth = 8;
      while (depth > 1 && fixed + size_t(rings * depth) * kThreads * 16 > info.smem_optin) depth /= 2;
      // (ks > 1: the partial tiles of all warps are summed in shared memory at the end)
      const size_t red = ks > 1 ? size_t(kWarps) * 64 * (nvec + 1) * 4 : 0;
      const size_t smem = std::max(fixed + size_t(rings * depth) * kThreads * 16, red);
      if (smem > info.smem_optin) continue;
      const long blocks = long(bx) * n_kb * plan.nz;
      const long waves = (blocks + cap - 1) / cap;
      const double words = double(sr) * 8 * kbe * stages;
      const double block = words * (5.5 + 0.5 * plan.nt) + xform + 600 + (xr ? 0.0 : nvec * kbe / 32.0) + (8 - depth) * 300.0;
      double out = 0;
      // parts: the output transform reads them; with a_out = 1 one block per vector does it all
      if (n_kb > 1)
        out = parts ? 1.0 * n_kb * double(w.rows) / std::max(1, w.plan_out.a) : 0.15 * double(blocks) * sr * 64 * nvec;
      const double cost = double(waves) * block + out;
      if (best < 0 || cost < best * 0.98) {
        best = cost;
        plan.sr = sr;
        plan.ks = ks;
        plan.kw = kw;
        plan.kb = kb;
        plan.n_kb = n_kb;
        plan.bx = bx;
        plan.x_stride = stride;
        plan.depth = depth;
        plan.smem = smem;
      }
    }
  }
  if (best < 0)
    throw_unsupported("qmma: no launch shape fits " + std::to_string(w.rows) + "x" + std::to_string(w.cols) +
                      " in this device's shared memory");
  return plan;
}

QmmaParams make_params(const DeviceQuantizedMatrix& w, const QmmaPlan& plan, const uint32_t* tables, int batch,
                       float* yt, int ld_y) {
  QmmaParams p{};
  static_cast<StageArgs&>(p) = stage_args(w, "qmma");
  p.sr = plan.sr;
  p.ks = plan.ks;
  p.kb_groups = plan.kb;
  p.kw_groups = plan.kw;
  p.x_stride = plan.x_stride;
  p.batch = batch;
  p.yt = yt;
  p.ld_y = ld_y;
  p.tables = tables;
  p.has_r8 = plan.has_r8;
  p.atomic = plan.n_kb > 1;
  p.depth = plan.depth;
  p.xvec = plan.xvec;
  return p;
}

void check_matrix(const DeviceQuantizedMatrix& w) {
  if (w.codes.empty() || w.codes.size() > 4) throw_invalid("qmma: matrix has no stages");
  for (auto cb : w.codebooks)
    if (cb != codec::Codebook::E8P16 && cb != codec::Codebook::E8R8) throw_unsupported("qmma: unknown codebook");
}

void check_batch(int batch) {
  if (batch < 1 || batch > kMmaMaxBatch)
    throw_invalid("qmma: batch " + std::to_string(batch) + " outside 1.." + std::to_string(kMmaMaxBatch));
}

bool fusable(const DeviceQuantizedMatrix& w) { return w.plan_in.a * w.plan_in.b == w.cols && w.plan_in.b >= 2; }

}  // namespace

bool qmma_needs_zeroed_output(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch) {
  return plan_qmma(info, w, batch, false, false).n_kb > 1;
}

void launch_qmma(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                 const uint16_t* xt_half, int ld_x, float* yt, int ld_y, int batch, cudaStream_t stream) {
  check_batch(batch);
  check_matrix(w);
  if ((reinterpret_cast<uintptr_t>(xt_half) & 15) || (ld_x % 8))
    throw_invalid("qmma: x̃ must be 16-byte aligned with a row stride that is a multiple of 8");
  const QmmaPlan plan = plan_qmma(info, w, batch, false, false);
  QmmaParams p = make_params(w, plan, tables, batch, yt, ld_y);
  p.xt = reinterpret_cast<const __half*>(xt_half);
  p.ld_x = ld_x;
  allow_smem(info, plan.nt, false);
  const dim3 grid(plan.bx, plan.n_kb, plan.nz);
  launch_checked(reinterpret_cast<void (*)(QmmaParams)>(kernel_for(plan.nt, false)), grid, dim3(kThreads),
                 plan.smem, stream, pdl_enabled(info), "qmma_kernel", p);
}

bool qmma_fused_supported(const DeviceInfo& info, const DeviceQuantizedMatrix& w) {
  if (!fusable(w)) return false;
  try {
    plan_qmma(info, w, 1, true, true);
  } catch (const Error&) {
    return false;
  }
  return true;
}

int qmma_max_parts(int batch) { return max_parts(batch); }

std::string qmma_plan(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch, bool fused, bool parts) {
  const QmmaPlan q = plan_qmma(info, w, batch, fused, parts);
  return "grid " + std::to_string(q.bx) + "x" + std::to_string(q.n_kb) + "x" + std::to_string(q.nz) + ", " +
         std::to_string(q.sr) + " slabs x " + std::to_string(q.ks) + " warps, " + std::to_string(q.kw) +
         " groups/warp, ring " + std::to_string(q.depth) + ", smem " + std::to_string(q.smem / 1024) + " KiB" +
         (fused ? ", input transform fused" : "") + (q.n_kb > 1 ? (parts ? ", ranges in parts" : ", ranges by atomics") : "");
}

int qmma_parts(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch, bool fused) {
  return plan_qmma(info, w, batch, fused, true).n_kb;
}

void launch_qmma_parts(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                       const uint16_t* xt_half, const float* x, float* yt_parts, int batch, cudaStream_t stream) {
  check_batch(batch);
  check_matrix(w);
  const bool fused = x != nullptr;
  if (fused && (batch != 1 || !fusable(w)))
    throw_invalid("qmma: the fused input transform needs one vector and an input transform n = a·b");
  if (!fused && (reinterpret_cast<uintptr_t>(xt_half) & 15))
    throw_invalid("qmma: x̃ must be 16-byte aligned");
  const QmmaPlan plan = plan_qmma(info, w, batch, fused, true);
  QmmaParams p = make_params(w, plan, tables, batch, yt_parts, w.rows);
  p.part_stride = size_t(batch) * w.rows;
  if (fused) {
    p.x = x;
    p.sign_in = w.sign_in.as<const float>();
    p.q_in = w.plan_in.a > 1 ? w.plan_in.q.as<const float>() : nullptr;
    p.a_in = w.plan_in.a;
    int lb = 0;
    while ((1 << lb) < w.plan_in.b) ++lb;
    p.log2b_in = lb;
    p.n_in = w.cols;
    p.inv_sqrt_b_in = 1.0f / std::sqrt(float(w.plan_in.b));
  } else {
    p.xt = reinterpret_cast<const __half*>(xt_half);
    p.ld_x = w.cols;
  }
  allow_smem(info, plan.nt, fused);
  const dim3 grid(plan.bx, plan.n_kb, plan.nz);
  launch_checked(reinterpret_cast<void (*)(QmmaParams)>(kernel_for(plan.nt, fused)), grid, dim3(kThreads), plan.smem,
                 stream, pdl_enabled(info), fused ? "qmma_kernel (fused input transform)" : "qmma_kernel", p);
}

}  // namespace glq::cuda::detail
