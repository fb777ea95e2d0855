// The batch-1/2 decode kernel: ỹ (B, rows) (+)= Σ_s scale_s ∘ (C_s x̃), B ≤ 2, for the stage
// layouts of 2, 3 and 4 bpw (E8P16; E8P16 + E8R8; E8P16 + E8P16). Same decode as qgemv.cu (see
// there and e8_decode.cuh); what differs is how the codes arrive and how the sums are kept.
//
// Why. At batch 1 a product is three short kernels (input transform, decode, output transform)
// and each warp of the decode kernel has only ~14 16-byte words per lane to decode on the
// large shapes: the previous kernel spent most of its time waiting — on the input transform
// before its first code load, then on one load round trip per few words.
//   - Codes go through a ring of D slots per lane in shared memory (cp.async, L1 bypassed),
//     and the first D words of every lane are requested at the kernel's first instruction,
//     before the tables are filled and before griddepcontrol.wait: with programmatic dependent
//     launch the weights stream in while the input transform still runs (they do not depend on
//     it). Each lane reads back only its own slots, so the ring needs no barrier.
//   - One block of 16 warps per SM (one copy of the 64-96 KiB bank-private tables per SM, not
//     two), one wave: block (x, y) covers row tiles 16x..16x+15 (one per warp) over column
//     range y; the ranges are chosen so that the blocks fit one wave with the fewest words per
//     lane (plan_ring).
//   - Fewer instructions per code: both stages of a group are decoded against one staged x̃;
//     the ±¼ shift of E8P16 enters the fp16 chain as its initial value, one LOP3 that flips the
//     sign of the group's ¼Σx̃ (kept in fp16 beside x̃) by the code's shift bit; a row's fp16
//     chain runs over kChain consecutive words (16 products) before it is converted and added
//     to its fp32 sum; the row scales multiply once at the end; a reduce-scatter over the warp
//     (9 shuffles per vector instead of 40) leaves row r in lanes 4r'.., one store each.
// x̃ is staged in shared memory once per block, padded with zeros to whole chains, so lanes
// past the range decode whatever their slot holds (always a finite codeword) against zeros and
// never branch.
#include "kernels/cuda/qgemv_ring.cuh"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>

#include "glq/error.hpp"
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/e8_decode.cuh"
#include "kernels/cuda/launch.hpp"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/pdl.cuh"

namespace glq::cuda::detail {

namespace {

// Warps per block, one row tile each. (32 warps of 64 registers with a ring of 4 slots, for
// one vector of 2 bpw, measured slower on an H100: 22.5 against 21.8 us for 4096x14336.)
constexpr int kRingWarps = 16;
constexpr int kRingThreads = kRingWarps * 32;
constexpr int kTabE8pBytes = 2 * 256 * 32 * 4;  // E8P16 selector + sign tables, bank-private
constexpr int kTabR8Bytes = 256 * 32 * 4;       // E8R8 table, bank-private
// Words per fp16 chain: a row's products are summed in fp16 over this many consecutive words
// (8·kChain products and kChain shift terms) before going to fp32.
constexpr int kChain = 2;
// Estimated fixed cost of a block (table fill, x̃ staging, reduction) in words per lane, for
// choosing the launch shape: it makes a second wave cost what it does.
constexpr int kBlockFixedWords = 6;

enum class Layout : int { P = 0, PR = 1, PP = 2 };

// Per layout: stages, bytes of a second-stage word, ring depth D (slots per lane). D keeps a
// block under ~160 KiB of shared memory (a row block of the input transform, up to ~60 KiB,
// still fits beside it on the same SM) with 48-64 KiB of codes in flight per SM.
template <Layout L>
struct LayoutTraits;
template <>
struct LayoutTraits<Layout::P> {
  static constexpr int stages = 1, bytes1 = 0, depth = 8;
  static constexpr bool r8 = false;
};
template <>
struct LayoutTraits<Layout::PR> {
  static constexpr int stages = 2, bytes1 = 8, depth = 4;
  static constexpr bool r8 = true;
};
template <>
struct LayoutTraits<Layout::PP> {
  static constexpr int stages = 2, bytes1 = 16, depth = 4;
  static constexpr bool r8 = false;
};

struct RingParams {
  const uint4* codes0;          // (tiles, groups) E8P16 words of stage 0
  const unsigned char* codes1;  // (tiles, groups) words of stage 1 (E8R8: 8 bytes, E8P16: 16)
  const float* scales0;         // (rows)
  const float* scales1;         // (rows) or null
  int groups;                   // cols / 8
  int tiles;                    // rows / 8
  int kb_groups;                // groups per column range (blockIdx.y)
  int words;                    // words per lane of a range, rounded up to whole chains
  int xs_words;                 // 16-byte words of x̃ staged per vector (zero past the range)
  // Segments (the kernel's F): warp w of block x takes the seg_words consecutive words from
  // (16x + w)·seg_words of the row-major (tiles, groups) array (total_words in all), the rows of
  // one tile after another; the whole of x̃ staged, atomics into a zeroed yt.
  int seg_words;
  long long total_words;
  const __half* xt;             // (B, ld_x)
  int ld_x;
  float* yt;                    // (B, ld_y)
  int ld_y;
  const uint32_t* tables;       // kTableWords words
  int atomic;                   // several column ranges: atomics into a zeroed yt
  int early;                    // request the first D words before griddepcontrol.wait (else after)
  // Fused output transform (null: none): every block counts itself done here (zeroed before
  // the launch) and the last one runs fin over the whole of yt (fin.yt is not used).
  unsigned* done;
  FinishParams fin;
};

__device__ __forceinline__ __half2 as_half2(uint32_t u) { return *reinterpret_cast<const __half2*>(&u); }

__device__ __forceinline__ uint32_t opaque(uint32_t v) {
  uint32_t r;
  asm volatile("mov.b32 %0, %1;" : "=r"(r) : "r"(v));
  return r;
}

__device__ __forceinline__ uint32_t lds32(const unsigned char* p) { return *reinterpret_cast<const uint32_t*>(p); }

// Selector word of the E8P16 code in half `hi` of w from the bank-private tables: bytes
// [lane·4, code byte, 0, 0] address the selector entry, the sign entry is 128 bytes on.
__device__ __forceinline__ uint32_t e8p_selector(const unsigned char* tab, uint32_t lane4, uint32_t w, bool hi) {
  const uint32_t off_sel = byte_perm(lane4, w, hi ? 0x1160u : 0x1140u);
  const uint32_t off_sign = byte_perm(lane4, w, hi ? 0x1170u : 0x1150u);
  return lds32(tab + off_sel) ^ lds32(tab + off_sign + 128);
}

// One E8P16 word (8 rows × one group) into the rows' fp16 chains h. sxl/sxh: ¼Σx̃ of the group
// in the low / high half (other half zero); the shift bit (bit 15 of a code) flips its sign.
template <int B>
__device__ __forceinline__ void e8p_chain(const uint4 c, bool first, const __half2 (&xv)[B][4],
                                          const uint32_t (&sxl)[B], const uint32_t (&sxh)[B],
                                          const unsigned char* tab, uint32_t lane4, uint32_t blo, uint32_t bhi,
                                          __half2 (&h)[8][B]) {
  const uint32_t words[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
  for (int r = 0; r < 8; ++r) {
    const uint32_t w = words[r >> 1];
    const uint32_t e = e8p_selector(tab, lane4, w, r & 1);
    uint32_t wv[4];
    decode_pairs(e, blo, bhi, wv);
#pragma unroll
    for (int b = 0; b < B; ++b) {
      const uint32_t s = (r & 1) ? ((w & 0x80000000u) ^ sxh[b]) : ((w & 0x8000u) ^ sxl[b]);
      __half2 a = first ? as_half2(s) : __hadd2(h[r][b], as_half2(s));
      a = __hfma2(as_half2(wv[0]), xv[b][0], a);
      a = __hfma2(as_half2(wv[1]), xv[b][1], a);
      a = __hfma2(as_half2(wv[2]), xv[b][2], a);
      h[r][b] = __hfma2(as_half2(wv[3]), xv[b][3], a);
    }
  }
}

// One E8R8 word (8 rows × one group, a byte each). The table entry e of lane l is at byte
// e·128 + l·4: PRMT puts the code in byte 1 over lane·8 in byte 0, one shift halves it.
template <int B>
__device__ __forceinline__ void e8r_chain(const uint2 c, bool first, const __half2 (&xv)[B][4],
                                          const unsigned char* tab_r8, uint32_t lane8, uint32_t blo,
                                          uint32_t bhi, __half2 (&h)[8][B]) {
  const uint32_t words[2] = {c.x, c.y};
#pragma unroll
  for (int r = 0; r < 8; ++r) {
    const uint32_t off = byte_perm(lane8, words[r >> 2], 0x1140u + ((r & 3) << 4)) >> 1;
    uint32_t wv[4];
    decode_pairs(lds32(tab_r8 + off), blo, bhi, wv);
#pragma unroll
    for (int b = 0; b < B; ++b) {
      __half2 a = first ? __hmul2(as_half2(wv[0]), xv[b][0]) : __hfma2(as_half2(wv[0]), xv[b][0], h[r][b]);
      a = __hfma2(as_half2(wv[1]), xv[b][1], a);
      a = __hfma2(as_half2(wv[2]), xv[b][2], a);
      h[r][b] = __hfma2(as_half2(wv[3]), xv[b][3], a);
    }
  }
}

// ---- byte dot products (the I8 variant) -------------------------------------------------------
// x̃ of a block's column range as 16-bit integers, x = round(x̃ · q) with q = 32767 / max|x̃| over
// the range, each split into a signed high byte and an unsigned low byte (x = 256·h + l); a
// codeword times 4 is a vector of small integers (E8P16: ±2, ±6, ±10 plus the shift ±1; E8R8:
// 0, ±2, ±4, ±8), so one PRMT gives 4 of its coordinates as bytes and DP4A multiplies them by 4
// high or low bytes of x exactly, summed in int32. Per code: 4 DP4A and 2 PRMT where the fp16
// path has 4 HFMA2 and 6 PRMT, and no fp16 chain to convert: the sums stay integers to the end.
// The shift: ⟨c, x⟩·4 = ⟨4σ∘p, x⟩ + Σx when its bit is clear, − Σx when set; each lane adds
// Σx of its groups once (S) and, per code, −2Σx where the bit is set (a sign-replicating PRMT
// gives −1 or 0, one IMAD).
__device__ __forceinline__ int dp4a_ss(uint32_t a, uint32_t b, int c) {
  int d;
  asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}
__device__ __forceinline__ int dp4a_su(uint32_t a, uint32_t b, int c) {
  int d;
  asm("dp4a.s32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}
// 4·(E8P16 magnitudes 0.5, 1.5, 2.5) as bytes (0, 2, 6, 10) and their negatives; E8R8's
// (0.5, 1, 2) as (0, 2, 4, 8).
__device__ __forceinline__ float max_nan(float a, float b) { return (a != a || b != b) ? a + b : fmaxf(a, b); }
constexpr uint32_t kI8E8pLo = 0x0A060200u, kI8E8pHi = 0xF6FAFE00u;
constexpr uint32_t kI8E8rLo = 0x08040200u, kI8E8rHi = 0xF8FCFE00u;

// One E8P16 word (8 rows × one group) into the rows' integer sums: ah (high bytes of x), al (low
// bytes, and the shift terms). xh/xl: coordinates 0..3 and 4..7 of the group; sx2: 2·Σx.
template <int B>
__device__ __forceinline__ void e8p_i8(const uint4 c, const uint32_t (&xh)[B][2], const uint32_t (&xl)[B][2],
                                       const int (&sx2)[B], const unsigned char* tab, uint32_t lane4, uint32_t blo,
                                       uint32_t bhi, int (&ah)[8][B], int (&al)[8][B]) {
  const uint32_t words[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
  for (int r = 0; r < 8; ++r) {
    const uint32_t w = words[r >> 1];
    const uint32_t e = e8p_selector(tab, lane4, w, r & 1);
    const uint32_t b03 = byte_perm(blo, bhi, e), b47 = byte_perm(blo, bhi, e >> 16);
    // −1 where the code's shift bit (bit 15 of its half of w: the top bit of byte 1 or 3) is set.
    const int m = int(byte_perm(w, 0u, (r & 1) ? 0xBBBBu : 0x9999u));
#pragma unroll
    for (int b = 0; b < B; ++b) {
      ah[r][b] = dp4a_ss(b03, xh[b][0], ah[r][b]);
      ah[r][b] = dp4a_ss(b47, xh[b][1], ah[r][b]);
      int l = dp4a_su(b03, xl[b][0], al[r][b]);
      l = dp4a_su(b47, xl[b][1], l);
      al[r][b] = l + m * sx2[b];
    }
  }
}

// One E8R8 word (8 rows × one group, a byte each) into integer sums, as e8r_chain's lookups.
template <int B>
__device__ __forceinline__ void e8r_i8(const uint2 c, const uint32_t (&xh)[B][2], const uint32_t (&xl)[B][2],
                                       const unsigned char* tab_r8, uint32_t lane8, uint32_t blo, uint32_t bhi,
                                       int (&ah)[8][B], int (&al)[8][B]) {
  const uint32_t words[2] = {c.x, c.y};
#pragma unroll
  for (int r = 0; r < 8; ++r) {
    const uint32_t off = byte_perm(lane8, words[r >> 2], 0x1140u + ((r & 3) << 4)) >> 1;
    const uint32_t e = lds32(tab_r8 + off);
    const uint32_t b03 = byte_perm(blo, bhi, e), b47 = byte_perm(blo, bhi, e >> 16);
#pragma unroll
    for (int b = 0; b < B; ++b) {
      ah[r][b] = dp4a_ss(b03, xh[b][0], ah[r][b]);
      ah[r][b] = dp4a_ss(b47, xh[b][1], ah[r][b]);
      al[r][b] = dp4a_su(b03, xl[b][0], al[r][b]);
      al[r][b] = dp4a_su(b47, xl[b][1], al[r][b]);
    }
  }
}

__device__ __forceinline__ float hsum(__half2 h) { return __half2float(__hadd(__low2half(h), __high2half(h))); }

// Sum of v[r] over the warp, scattered: returns the sum of row 4·b4 + 2·b3 + b2 (bits of the
// lane), in every lane. 9 shuffles instead of 8 × 5.
__device__ __forceinline__ float reduce_scatter8(const float (&v)[8], int lane) {
  const bool u16 = lane & 16, u8 = lane & 8, u4 = lane & 4;
  float a[4], c[2];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float send = u16 ? v[j] : v[j + 4], keep = u16 ? v[j + 4] : v[j];
    a[j] = keep + __shfl_xor_sync(0xFFFFFFFFu, send, 16);
  }
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const float send = u8 ? a[j] : a[j + 2], keep = u8 ? a[j + 2] : a[j];
    c[j] = keep + __shfl_xor_sync(0xFFFFFFFFu, send, 8);
  }
  const float send = u4 ? c[0] : c[1], keep = u4 ? c[1] : c[0];
  float s = keep + __shfl_xor_sync(0xFFFFFFFFu, send, 4);
  s += __shfl_xor_sync(0xFFFFFFFFu, s, 2);
  s += __shfl_xor_sync(0xFFFFFFFFu, s, 1);
  return s;
}

// Padded shared-memory index of the fused output transform: one spare word per 32 keeps its
// strided butterflies free of bank conflicts.
__device__ __forceinline__ int zpad(int i) { return i + (i >> 5); }

// The output transform of the whole of ỹ, run by the last block of a fused launch:
// y (+)= sign ∘ (Q^T ⊗ H_b/√b) ỹ for each of the B vectors, in shared memory sm (reused: the
// tables, ring and x̃ are dead by now). The FWHT runs in passes of up to 3 butterfly stages
// in registers (radix 8, one barrier per pass); the mixing reads Q from shared memory while
// writing y. yt was written by other blocks (atomics or stores that reached L2): read with
// ld.global.cg.
template <int B>
__device__ __forceinline__ void ring_finish(const RingParams& p, float* sm) {
  const FinishParams& f = p.fin;
  const int n = f.t.n, a = f.t.a, lb = f.t.log2b, b = 1 << lb;
  float* z = sm;
  float* qs = sm + zpad(n);
  if (a > 1)
    for (int k = threadIdx.x; k < a * a; k += blockDim.x) qs[k] = __ldg(f.t.q + k);
  for (int v = 0; v < B; ++v) {
    const float* src = p.yt + size_t(v) * p.ld_y;
#pragma unroll 4
    for (int i = threadIdx.x; i < n; i += blockDim.x) z[zpad(i)] = __ldcg(src + i);
    __syncthreads();
    for (int s = 0; s < lb; s += 3) {
      const int r = min(3, lb - s), R = 1 << r;
      for (int q = threadIdx.x; q < (n >> r); q += blockDim.x) {
        const int low = q & ((1 << s) - 1);
        const int base = ((q >> s) << (s + r)) | low;
        float e[8];
#pragma unroll
        for (int m = 0; m < 8; ++m) e[m] = m < R ? z[zpad(base + (m << s))] : 0.0f;
#pragma unroll
        for (int st = 0; st < 3; ++st) {
          const int h = 1 << st;
          if (st < r)
#pragma unroll
            for (int m = 0; m < 8; ++m)
              if (!(m & h)) {
                const float u = e[m], w = e[m + h];
                e[m] = u + w;
                e[m + h] = u - w;
              }
        }
#pragma unroll
        for (int m = 0; m < 8; ++m)
          if (m < R) z[zpad(base + (m << s))] = e[m];
      }
      __syncthreads();
    }
    float* yv = f.y + size_t(v) * f.ld_out;
    for (int o = threadIdx.x; o < n; o += blockDim.x) {
      const int i = o >> lb, j = o & (b - 1);
      float s;
      if (a == 1) {
        s = z[zpad(o)];
      } else {
        s = 0.0f;
#pragma unroll 4
        for (int k = 0; k < a; ++k) s = fmaf(qs[k * a + i], z[zpad((k << lb) + j)], s);
      }
      s *= f.t.inv_sqrt_b;
      if (f.t.sign) s *= __ldg(f.t.sign + o);
      yv[o] = f.accumulate ? yv[o] + s : s;
    }
    __syncthreads();  // z is refilled for the next vector
  }
}

// Not held to 64 registers (which would let a 1024-thread block of the input transform fit
// beside the block on one SM): at 64, ptxas rematerialises constants and addresses inside the
// loop (394 instructions per 16 codes at one vector of 2 bpw against 363 with 72 registers), and
// the whole product measured slower on an H100.
template <int B, Layout L, bool I8, bool F>
__global__ void __launch_bounds__(kRingThreads, 1)
    qgemv_ring_kernel(const RingParams p) {
  using T = LayoutTraits<L>;
  static_assert(!F || (B == 1 && I8), "segments: one vector, byte dot products");
  constexpr int kWarps = kRingWarps;
  constexpr int D = T::depth;
  static_assert(D % kChain == 0, "the ring holds whole chains");
  extern __shared__ uint4 smem4[];
  unsigned char* tab = reinterpret_cast<unsigned char*>(smem4);         // (256, [sel, sign], 32 lanes)
  unsigned char* tab_r8 = tab + kTabE8pBytes;                           // (256, 32 lanes), PR only
  unsigned char* ring_base = tab + kTabE8pBytes + (T::r8 ? kTabR8Bytes : 0);
  uint4* ring0 = reinterpret_cast<uint4*>(ring_base);                   // (D, warps, 32) stage 0
  unsigned char* ring1 = ring_base + D * kRingThreads * 16;             // (D, warps, 32) stage 1
  const int W = p.words, nx = p.xs_words;
  uint4* xs = reinterpret_cast<uint4*>(ring1 + D * kRingThreads * T::bytes1);  // (B, nx) x̃
  uint2* sxs = reinterpret_cast<uint2*>(xs + B * nx);                           // (B, nx) ¼Σx̃ lo/hi

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  // Column ranges: row tile 16x + warp over range y. Segments: flat words [seg0, seg0 + seg_n).
  const long long seg0 = (long long)(blockIdx.x * kWarps + warp) * p.seg_words;
  const int seg_n = F ? int(max(0LL, min((long long)p.seg_words, p.total_words - seg0))) : 0;
  int tile = F ? int(seg0 / p.groups) : blockIdx.x * kWarps + warp;
  const bool valid = F ? seg_n > 0 : tile < p.tiles;
  const int g0 = F ? 0 : blockIdx.y * p.kb_groups;
  const int gn = F ? p.groups : min(p.kb_groups, p.groups - g0);
  const size_t word0 = !valid ? 0 : F ? size_t(seg0) : size_t(tile) * p.groups + g0;

  // 1. The table entries (one word per thread, all loads in one round trip: a loop of load +
  //    store per entry costs one round trip each), then the first D words of this lane.
  const int t = threadIdx.x;
  const uint32_t tab_v = __ldg(p.tables + ((t & 1) ? kTableE8pSign : kTableE8pSel) + (t >> 1));
  uint32_t tab_r8_v = 0;
  if constexpr (T::r8)
    if (t < 256) tab_r8_v = __ldg(p.tables + kTableE8r8Sel + t);
  // Word i of this lane is word0 + 32·i + lane: a running source pointer and a bound computed
  // once, so that a request is an add and a compare (recomputed from the parameters, the
  // addresses cost ~1.5 instructions per code).
  const int lane_words = valid ? (F ? seg_n : gn) - lane : 0;  // word i exists while 32·i < lane_words
  const uint4* src0 = p.codes0 + word0 + lane;
  const unsigned char* src1 = T::stages > 1 ? p.codes1 + (word0 + lane) * T::bytes1 : nullptr;
  uint4* dst0 = ring0 + warp * 32 + lane;
  auto issue = [&](int i, int slot) {
    if (i * 32 < lane_words) {
      const int at = slot * kRingThreads;
      cp_async16(dst0 + at, src0 + size_t(i) * 32);
      if constexpr (T::bytes1 == 16)
        cp_async16(ring1 + (size_t(at) + warp * 32 + lane) * 16, src1 + size_t(i) * 32 * 16);
      if constexpr (T::bytes1 == 8)
        cp_async8(ring1 + (size_t(at) + warp * 32 + lane) * 8, src1 + size_t(i) * 32 * 8);
    }
    cp_async_commit();
  };
  if (p.early) {
#pragma unroll
    for (int d = 0; d < D; ++d) issue(d, d);
  }
  float sc0[8], sc1[8];
#pragma unroll
  for (int r = 0; r < 8; ++r) sc0[r] = sc1[r] = 0.0f;
  // The row scales of the current tile (a segment loads the next tile's when it gets there).
  auto load_scales = [&]() {
    const float4* s0 = reinterpret_cast<const float4*>(p.scales0 + size_t(tile) * 8);
    const float4 a = __ldg(s0), b = __ldg(s0 + 1);
    sc0[0] = a.x; sc0[1] = a.y; sc0[2] = a.z; sc0[3] = a.w; sc0[4] = b.x; sc0[5] = b.y; sc0[6] = b.z; sc0[7] = b.w;
    if constexpr (T::stages > 1) {
      const float4* s1 = reinterpret_cast<const float4*>(p.scales1 + size_t(tile) * 8);
      const float4 c = __ldg(s1), e = __ldg(s1 + 1);
      sc1[0] = c.x; sc1[1] = c.y; sc1[2] = c.z; sc1[3] = c.w; sc1[4] = e.x; sc1[5] = e.y; sc1[6] = e.z; sc1[7] = e.w;
    }
  };
  if (valid) load_scales();

  // 2. Tables: thread t writes the 32 lane copies of its entry (8 16-byte stores at byte
  //    (t >> 1)·256 + (t & 1)·128, the selector or sign half of entry t >> 1); the store order
  //    is rotated by t so that the 8 threads of a store phase hit 8 different bank groups.
  static_assert(kRingThreads == 2 * 256, "one thread per E8P16 table entry");
#pragma unroll
  for (int k = 0; k < 8; ++k) smem4[t * 8 + ((k + t) & 7)] = make_uint4(tab_v, tab_v, tab_v, tab_v);
  if constexpr (T::r8)
    if (t < 256)
#pragma unroll
      for (int k = 0; k < 8; ++k)
        reinterpret_cast<uint4*>(tab_r8)[t * 8 + ((k + t) & 7)] = make_uint4(tab_r8_v, tab_r8_v, tab_r8_v, tab_r8_v);

  // 3. x̃ comes from the kernel before this one.
  pdl_trigger();
  pdl_wait();
  if (!p.early) {
#pragma unroll
    for (int d = 0; d < D; ++d) issue(d, d);
  }
  float xscale[B];  // I8: the factor from integer sums to products, max|x̃| / (4 · 32767)
  // Word gl of vector b's x̃ in this block's range; zeros past it (the padding to whole chains).
  auto load_x = [&](int b, int gl) {
    return gl < gn ? __ldg(reinterpret_cast<const uint4*>(p.xt + size_t(b) * p.ld_x) + g0 + gl) : make_uint4(0, 0, 0, 0);
  };
  if constexpr (!I8) {
    for (int i = threadIdx.x; i < B * nx; i += kRingThreads) {
      const int b = i / nx, gl = i - b * nx;
      const uint4 v = load_x(b, gl);
      xs[i] = v;
      const float2 f0 = __half22float2(as_half2(v.x)), f1 = __half22float2(as_half2(v.y));
      const float2 f2 = __half22float2(as_half2(v.z)), f3 = __half22float2(as_half2(v.w));
      const float s = 0.25f * ((f0.x + f0.y) + (f1.x + f1.y) + (f2.x + f2.y) + (f3.x + f3.y));
      const uint32_t hs = __half_as_ushort(__float2half_rn(s));
      sxs[i] = make_uint2(hs, hs << 16);
    }
  } else {
    // max|x̃| of the range per vector (block-wide, through the not yet written sxs), then x̃ as
    // 16-bit integers split into high and low bytes, and 2·Σx per group. A thread's first
    // kStageRegs words of each vector stay in registers between the two passes, so that on the
    // usual shapes (≤ kStageRegs·512 groups per range) x̃ is read from global memory once.
    constexpr int kStageRegs = 2;
    float* red = reinterpret_cast<float*>(sxs);
    float q[B];
    uint4 xr[B][kStageRegs];
    // NaN-propagating maxima: a NaN in x̃ makes the products NaN, as the fp16 path's do.
    auto abs_max = [](__half2 m2, const uint4 v) {
      return __hmax2_nan(m2, __hmax2_nan(__hmax2_nan(__habs2(as_half2(v.x)), __habs2(as_half2(v.y))),
                                         __hmax2_nan(__habs2(as_half2(v.z)), __habs2(as_half2(v.w)))));
    };
#pragma unroll
    for (int b = 0; b < B; ++b)
#pragma unroll
      for (int k = 0; k < kStageRegs; ++k) xr[b][k] = load_x(b, int(threadIdx.x) + k * kRingThreads);
#pragma unroll
    for (int b = 0; b < B; ++b) {
      __half2 m2 = __float2half2_rn(0.0f);
#pragma unroll
      for (int k = 0; k < kStageRegs; ++k) m2 = abs_max(m2, xr[b][k]);
      for (int gl = threadIdx.x + kStageRegs * kRingThreads; gl < gn; gl += kRingThreads) m2 = abs_max(m2, load_x(b, gl));
      float m = max_nan(__low2float(m2), __high2float(m2));
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) m = max_nan(m, __shfl_xor_sync(0xFFFFFFFFu, m, o));
      if (lane == 0) red[warp * B + b] = m;
    }
    __syncthreads();
#pragma unroll
    for (int b = 0; b < B; ++b) {
      float m = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) m = max_nan(m, red[w * B + b]);
      const bool finite = isfinite(m);
      q[b] = finite && m > 0.0f ? 32767.0f / m : 1.0f;
      xscale[b] = finite ? 0.25f / q[b] : __int_as_float(0x7FC00000);  // a non-finite x̃: NaN out
    }
    __syncthreads();  // red is overwritten below
    auto stage = [&](int b, int gl, const uint4 v) {
      const uint32_t hv[4] = {v.x, v.y, v.z, v.w};
      uint32_t h[2] = {0, 0}, l[2] = {0, 0};
      int sum = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 f = __half22float2(as_half2(hv[j]));
        const int x0 = __float2int_rn(f.x * q[b]), x1 = __float2int_rn(f.y * q[b]);
        sum += x0 + x1;
        const int sh = (j & 1) * 16;
        h[j >> 1] |= ((uint32_t(x0 >> 8) & 0xFFu) | ((uint32_t(x1 >> 8) & 0xFFu) << 8)) << sh;
        l[j >> 1] |= ((uint32_t(x0) & 0xFFu) | ((uint32_t(x1) & 0xFFu) << 8)) << sh;
      }
      xs[b * nx + gl] = make_uint4(h[0], h[1], l[0], l[1]);
      sxs[b * nx + gl] = make_uint2(uint32_t(2 * sum), 0u);
    };
#pragma unroll
    for (int b = 0; b < B; ++b) {
#pragma unroll
      for (int k = 0; k < kStageRegs; ++k) {
        const int gl = int(threadIdx.x) + k * kRingThreads;
        if (gl < nx) stage(b, gl, xr[b][k]);
      }
      for (int gl = threadIdx.x + kStageRegs * kRingThreads; gl < nx; gl += kRingThreads) stage(b, gl, load_x(b, gl));
    }
  }
  __syncthreads();

  // 4. The stream: wait for the oldest kChain words, read them, refill their slots D words on.
  const uint32_t lane4 = opaque(uint32_t(lane) * 4), lane8 = opaque(uint32_t(lane) * 8);
  const uint32_t p_lo = __ldg(p.tables + kTableBytesLo), p_hi = kE8pBytesHi;  // see kTableBytesLo
  const uint32_t r_lo = __ldg(p.tables + kTableBytesLo + 1), r_hi = kE8rBytesHi;
  const uint32_t i8p_lo = I8 ? opaque(kI8E8pLo) : 0u, i8r_lo = I8 && T::r8 ? opaque(kI8E8rLo) : 0u;
  float acc0[8][B], acc1[8][B];
  int ah0[8][B], al0[8][B], ah1[8][B], al1[8][B];  // I8: integer sums of the two stages
  int s2[B];                                         // I8: 2·Σx over this lane's groups
#pragma unroll
  for (int r = 0; r < 8; ++r)
#pragma unroll
    for (int b = 0; b < B; ++b) {
      acc0[r][b] = acc1[r][b] = 0.0f;
      ah0[r][b] = al0[r][b] = ah1[r][b] = al1[r][b] = 0;
    }
#pragma unroll
  for (int b = 0; b < B; ++b) s2[b] = 0;
  // Scales, warp sums, one store (or atomic) per row of the current tile; the sums restart.
  const int row = ((lane >> 4) & 1) * 4 + ((lane >> 3) & 1) * 2 + ((lane >> 2) & 1);
  auto flush = [&]() {
#pragma unroll
    for (int b = 0; b < B; ++b) {
      float v[8];
#pragma unroll
      for (int r = 0; r < 8; ++r) {
        if constexpr (I8) {
          const int sh = s2[b] / 2;  // Σx of the lane's groups: the shift terms of the clear bits
          acc0[r][b] = float(ah0[r][b]) * 256.0f + float(al0[r][b] + sh);
          if constexpr (L == Layout::PP) acc1[r][b] = float(ah1[r][b]) * 256.0f + float(al1[r][b] + sh);
          if constexpr (L == Layout::PR) acc1[r][b] = float(ah1[r][b]) * 256.0f + float(al1[r][b]);
          acc0[r][b] *= xscale[b];
          acc1[r][b] *= xscale[b];
        }
        v[r] = T::stages > 1 ? sc0[r] * acc0[r][b] + sc1[r] * acc1[r][b] : sc0[r] * acc0[r][b];
        acc0[r][b] = acc1[r][b] = 0.0f;
        ah0[r][b] = al0[r][b] = ah1[r][b] = al1[r][b] = 0;
      }
      s2[b] = 0;
      const float s = reduce_scatter8(v, lane);
      if (valid && (lane & 3) == 0) {
        float* dst = p.yt + size_t(b) * p.ld_y + size_t(tile) * 8 + row;
        if (p.atomic) atomicAdd(dst, s); else *dst = s;
      }
    }
  };
  // Segments: the group of this iteration's first word within its tile, and the iterations
  // left in the tile (segments and tiles are whole iterations of kChain words of 32 lanes).
  int gofs = F ? int(seg0 % p.groups) : 0;
  int left = F ? (p.groups - gofs) / (32 * kChain) : 0;
  int slot = 0;
  for (int i = 0; i < W; i += kChain) {
    const bool seg_live = F && i * 32 < seg_n;
    if (seg_live && left == 0) {  // the segment moves on to the next tile (uniform in the warp)
      flush();
      ++tile;
      load_scales();
      gofs = 0;
      left = p.groups / (32 * kChain);
    }
    cp_async_wait<D - kChain>();
    uint4 c0[kChain];
    uint4 c1[kChain];
#pragma unroll
    for (int k = 0; k < kChain; ++k) {
      const int at = ((slot + k) * kWarps + warp) * 32 + lane;
      c0[k] = ring0[at];
      if constexpr (T::bytes1 == 16) c1[k] = reinterpret_cast<const uint4*>(ring1)[at];
      if constexpr (T::bytes1 == 8) {
        const uint2 v = reinterpret_cast<const uint2*>(ring1)[at];
        c1[k] = make_uint4(v.x, v.y, 0, 0);
      }
    }
#pragma unroll
    for (int k = 0; k < kChain; ++k) issue(i + D + k, slot + k);
    if constexpr (I8) {
#pragma unroll
      for (int k = 0; k < kChain; ++k) {
        const int gl = !F ? (i + k) * 32 + lane : seg_live ? gofs + k * 32 + lane : p.groups;
        uint32_t xh[B][2], xl[B][2];
        int sx2[B];
#pragma unroll
        for (int b = 0; b < B; ++b) {
          const uint4 t = xs[b * nx + gl];
          xh[b][0] = t.x;
          xh[b][1] = t.y;
          xl[b][0] = t.z;
          xl[b][1] = t.w;
          sx2[b] = int(sxs[b * nx + gl].x);
          s2[b] += sx2[b];
        }
        e8p_i8<B>(c0[k], xh, xl, sx2, tab, lane4, i8p_lo, kI8E8pHi, ah0, al0);
        if constexpr (L == Layout::PP) e8p_i8<B>(c1[k], xh, xl, sx2, tab, lane4, i8p_lo, kI8E8pHi, ah1, al1);
        if constexpr (L == Layout::PR)
          e8r_i8<B>(make_uint2(c1[k].x, c1[k].y), xh, xl, tab_r8, lane8, i8r_lo, kI8E8rHi, ah1, al1);
      }
    } else {
      __half2 h0[8][B], h1[8][B];
#pragma unroll
      for (int k = 0; k < kChain; ++k) {
        const int gl = (i + k) * 32 + lane;
        __half2 xv[B][4];
        uint32_t sxl[B], sxh[B];
#pragma unroll
        for (int b = 0; b < B; ++b) {
          const uint4 t = xs[b * nx + gl];
          xv[b][0] = as_half2(t.x);
          xv[b][1] = as_half2(t.y);
          xv[b][2] = as_half2(t.z);
          xv[b][3] = as_half2(t.w);
          const uint2 s = sxs[b * nx + gl];
          sxl[b] = s.x;
          sxh[b] = s.y;
        }
        e8p_chain<B>(c0[k], k == 0, xv, sxl, sxh, tab, lane4, p_lo, p_hi, h0);
        if constexpr (L == Layout::PP) e8p_chain<B>(c1[k], k == 0, xv, sxl, sxh, tab, lane4, p_lo, p_hi, h1);
        if constexpr (L == Layout::PR) e8r_chain<B>(make_uint2(c1[k].x, c1[k].y), k == 0, xv, tab_r8, lane8, r_lo, r_hi, h1);
      }
#pragma unroll
      for (int r = 0; r < 8; ++r)
#pragma unroll
        for (int b = 0; b < B; ++b) {
          acc0[r][b] += hsum(h0[r][b]);
          if constexpr (T::stages > 1) acc1[r][b] += hsum(h1[r][b]);
        }
    }
    slot += kChain;
    if (slot == D) slot = 0;
    gofs += 32 * kChain;
    --left;
  }
  cp_async_wait<0>();  // nothing may be in flight into shared memory when the block exits

  // 5. The last tile's rows.
  flush();

  // 6. Fused output transform: the last block to finish runs it over the whole of ỹ.
  if (p.done && last_block_done(p.done, gridDim.x * gridDim.y)) ring_finish<B>(p, reinterpret_cast<float*>(smem4));
}

struct RingPlan {
  Layout layout = Layout::P;
  int kb_groups = 0, n_kb = 0, blocks_x = 0, words = 0, xs_words = 0;
  bool flat = false;  // segments of seg_words flat words per warp, blocks_x blocks
  int seg_words = 0;
  size_t smem = 0;
};

bool ring_layout(const DeviceQuantizedMatrix& w, Layout* out) {
  using codec::Codebook;
  const auto& c = w.codebooks;
  if (c.size() == 1 && c[0] == Codebook::E8P16) *out = Layout::P;
  else if (c.size() == 2 && c[0] == Codebook::E8P16 && c[1] == Codebook::E8R8) *out = Layout::PR;
  else if (c.size() == 2 && c[0] == Codebook::E8P16 && c[1] == Codebook::E8P16) *out = Layout::PP;
  else return false;
  return true;
}

size_t ring_smem(Layout l, int batch, int xs_words) {
  const int depth = l == Layout::P    ? LayoutTraits<Layout::P>::depth
                    : l == Layout::PR ? LayoutTraits<Layout::PR>::depth
                                      : LayoutTraits<Layout::PP>::depth;
  const int bytes1 = l == Layout::P    ? LayoutTraits<Layout::P>::bytes1
                     : l == Layout::PR ? LayoutTraits<Layout::PR>::bytes1
                                       : LayoutTraits<Layout::PP>::bytes1;
  return size_t(kTabE8pBytes) + (l == Layout::PR ? kTabR8Bytes : 0) + size_t(depth) * kRingThreads * (16 + bytes1) +
         size_t(batch) * xs_words * (16 + 8);
}

// Byte dot products or fp16 products. The byte path stages x̃ in two passes (its range's max
// first), a fixed cost that only pays on enough words per lane (H200, 2026-11-28: at one vector
// 5-16% faster with 14-16 words per lane, 0-5% with 4, 4% slower with 2; at two vectors 5%
// faster with 16 words, equal with 14, 9-14% slower with 2-4). GLQ_QGEMV_RING_I8=0 or 1 forces
// one of them (comparisons, tests).
bool ring_i8(int batch, int words) {
  static const int forced = env_switch("GLQ_QGEMV_RING_I8");
  if (forced >= 0) return forced == 1;
  return words >= (batch == 1 ? 4 : 8);
}

// GLQ_QGEMV_RING_FLAT: 1 plans segments wherever the shape allows them, 0 never (comparisons,
// tests); default: where they cost less than the column ranges.
int ring_flat_forced() {
  static const int forced = env_switch("GLQ_QGEMV_RING_FLAT");
  return forced;
}

// Column ranges: the count that gives the fewest (waves × (words per lane + fixed cost)), one
// block per SM; ties go to fewer blocks (fewer atomics, fewer table fills). Segments (one
// vector, byte dot products, groups per row a multiple of 32·kChain so that no iteration of a
// warp straddles two tiles): one wave whose warps share the words evenly, to within an
// iteration, whatever the row count; they stage the whole of x̃ and flush a tile's rows with
// atomics when they leave it. Taken only where the column ranges need more than one wave and
// segments cost less (28672 rows are 224 row blocks of 16 tiles: 1.7 waves on 132 SMs): on the
// one-wave shapes they measured slower (H200, 2026-11-28, forced: 6144x4096 and 14336x4096 at 2
// bpw, 11.62 against 11.58 us and 15.92 against 14.81; the whole decode step 358-359 against
// 374 tok/s).
RingPlan plan_ring(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch, Layout layout) {
  RingPlan plan;
  plan.layout = layout;
  const int G = w.groups, tiles = w.rows / 8;
  plan.blocks_x = (tiles + kRingWarps - 1) / kRingWarps;
  // GLQ_QGEMV_RING_SMS: SMs the shape is planned for (default: all), for tuning runs.
  static const int sms_env = env_int("GLQ_QGEMV_RING_SMS", 0);
  const int sms = std::max(1, sms_env > 0 ? std::min(sms_env, info.sm_count) : info.sm_count);
  long best = std::numeric_limits<long>::max();
  for (int n = 1; n <= std::max(1, std::min(64, G / 32)); ++n) {
    const int kb = std::min(G, ((G + n - 1) / n + 31) / 32 * 32);
    const int n_kb = (G + kb - 1) / kb;
    const int words = ((kb + 31) / 32 + kChain - 1) / kChain * kChain;
    const size_t smem = ring_smem(layout, batch, words * 32);
    if (smem > info.smem_optin) continue;
    const long blocks = long(plan.blocks_x) * n_kb;
    const long cost = ((blocks + sms - 1) / sms) * (words + kBlockFixedWords);
    if (cost < best || (cost == best && n_kb < plan.n_kb)) {
      best = cost;
      plan.kb_groups = kb;
      plan.n_kb = n_kb;
      plan.words = words;
      plan.xs_words = words * 32;
      plan.smem = smem;
    }
  }
  const int forced = ring_flat_forced();
  constexpr int kIter = 32 * kChain;  // words of a warp's iteration
  const long waves = (long(plan.blocks_x) * plan.n_kb + sms - 1) / sms;
  if (forced != 0 && batch == 1 && G % kIter == 0) {
    const long long total = (long long)tiles * G;
    const long long warps = (long long)sms * kRingWarps;
    const int seg = int(((total + warps - 1) / warps + kIter - 1) / kIter * kIter);
    const int words = seg / 32;
    const int xs_words = (G + 1 + 31) / 32 * 32;  // the whole of x̃ and a zero word
    const size_t smem = ring_smem(layout, batch, xs_words);
    const long cost = words + kBlockFixedWords;
    if (smem <= info.smem_optin && ring_i8(1, words) &&
        (forced == 1 || plan.n_kb == 0 || (waves > 1 && cost < best))) {
      plan.flat = true;
      plan.seg_words = seg;
      plan.blocks_x = int(((total + seg - 1) / seg + kRingWarps - 1) / kRingWarps);
      plan.n_kb = 1;
      plan.kb_groups = G;
      plan.words = words;
      plan.xs_words = xs_words;
      plan.smem = smem;
    }
  }
  return plan;  // n_kb == 0: no shape fits the device's shared memory
}

template <int B, Layout L, bool I8, bool F = false>
void* ring_kernel_ptr() { return reinterpret_cast<void*>(qgemv_ring_kernel<B, L, I8, F>); }

// The compiled configurations: (1 or 2 vectors) × (P, PR, PP) × (fp16 products, byte dot products).
void* ring_kernel_for(int batch, Layout l, bool i8, bool flat) {
  if (flat) {  // segments: one vector, byte dot products
    if (batch == 1 && i8) switch (l) {
        case Layout::P: return ring_kernel_ptr<1, Layout::P, true, true>();
        case Layout::PR: return ring_kernel_ptr<1, Layout::PR, true, true>();
        case Layout::PP: return ring_kernel_ptr<1, Layout::PP, true, true>();
      }
    throw_invalid("qgemv_ring: segments take one vector with byte dot products");
  }
  switch ((batch * 3 + int(l)) * 2 + int(i8)) {
    case 6: return ring_kernel_ptr<1, Layout::P, false>();
    case 7: return ring_kernel_ptr<1, Layout::P, true>();
    case 8: return ring_kernel_ptr<1, Layout::PR, false>();
    case 9: return ring_kernel_ptr<1, Layout::PR, true>();
    case 10: return ring_kernel_ptr<1, Layout::PP, false>();
    case 11: return ring_kernel_ptr<1, Layout::PP, true>();
    case 12: return ring_kernel_ptr<2, Layout::P, false>();
    case 13: return ring_kernel_ptr<2, Layout::P, true>();
    case 14: return ring_kernel_ptr<2, Layout::PR, false>();
    case 15: return ring_kernel_ptr<2, Layout::PR, true>();
    case 16: return ring_kernel_ptr<2, Layout::PP, false>();
    case 17: return ring_kernel_ptr<2, Layout::PP, true>();
  }
  throw_invalid("qgemv_ring: batch " + std::to_string(batch) + " outside 1.." + std::to_string(kRingMaxBatch));
}

void allow_ring_smem(const DeviceInfo& info, int batch, Layout l, bool i8, bool flat) {
  static std::once_flag flags[kRingMaxBatch + 1][3][2][2];
  std::call_once(flags[batch][int(l)][int(i8)][int(flat)], [&] {
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(ring_kernel_for(batch, l, i8, flat), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(info.smem_optin)));
  });
}

// GLQ_QGEMV_RING_EARLY=0: request the first words after griddepcontrol.wait, for comparisons.
bool ring_early() {
  static const bool on = env_switch("GLQ_QGEMV_RING_EARLY") != 0;
  return on;
}

bool ring_enabled() {
  static const bool on = env_switch("GLQ_QGEMV_RING") != 0;
  return on;
}

}  // namespace

bool qgemv_ring_supported(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch) {
  Layout l;
  if (!ring_enabled() || batch < 1 || batch > kRingMaxBatch || info.cc_major < 8 || !ring_layout(w, &l)) return false;
  return plan_ring(info, w, batch, l).n_kb > 0;
}

bool qgemv_ring_needs_zeroed_output(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch) {
  Layout l;
  if (!ring_layout(w, &l)) return false;
  const RingPlan plan = plan_ring(info, w, batch, l);
  return plan.flat || plan.n_kb > 1;
}

namespace {

// Largest mixing order the fused output transform takes (GLQ_FUSED_FINISH_MAX_A, default
// kFusedFinishMaxA): its one block does all a·n mixing terms alone.
int fused_finish_max_a() {
  static const int v = env_int("GLQ_FUSED_FINISH_MAX_A", kFusedFinishMaxA);
  return v;
}

size_t fused_finish_smem(const TransformShape& t) {
  return (size_t(t.n) + size_t(t.n) / 32 + 1 + (t.a > 1 ? size_t(t.a) * t.a : 0)) * sizeof(float);
}

void launch_ring(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                 const uint16_t* xt_half, int ld_x, float* yt, int ld_y, int batch, const FinishParams* fin,
                 unsigned* done, cudaStream_t stream) {
  Layout l;
  if (batch < 1 || batch > kRingMaxBatch || !ring_layout(w, &l))
    throw_invalid("qgemv_ring: batch " + std::to_string(batch) + " or stage layout not supported");
  if ((reinterpret_cast<uintptr_t>(xt_half) & 15) || (ld_x % 8))
    throw_invalid("qgemv_ring: x̃ must be 16-byte aligned with a row stride that is a multiple of 8");
  const RingPlan plan = plan_ring(info, w, batch, l);
  if (plan.n_kb == 0)
    throw_unsupported("qgemv_ring: no launch shape fits " + std::to_string(info.smem_optin) +
                      " bytes of shared memory for " + std::to_string(w.groups) + " groups");
  RingParams p{};
  p.codes0 = static_cast<const uint4*>(w.codes[0].data());
  p.codes1 = w.codes.size() > 1 ? static_cast<const unsigned char*>(w.codes[1].data()) : nullptr;
  p.scales0 = w.scales[0].as<const float>();
  p.scales1 = w.scales.size() > 1 ? w.scales[1].as<const float>() : nullptr;
  p.groups = w.groups;
  p.tiles = w.rows / 8;
  p.kb_groups = plan.kb_groups;
  p.words = plan.words;
  p.xs_words = plan.xs_words;
  p.seg_words = plan.seg_words;
  p.total_words = (long long)(w.rows / 8) * w.groups;
  p.xt = reinterpret_cast<const __half*>(xt_half);
  p.ld_x = ld_x;
  p.yt = yt;
  p.ld_y = ld_y;
  p.tables = tables;
  p.atomic = plan.flat || plan.n_kb > 1;
  p.early = ring_early();
  p.done = done;
  size_t smem = plan.smem;
  if (fin) {
    p.fin = *fin;
    smem = std::max(smem, fused_finish_smem(fin->t));
  }
  const bool i8 = ring_i8(batch, plan.words);
  allow_ring_smem(info, batch, l, i8, plan.flat);
  launch_checked(reinterpret_cast<void (*)(RingParams)>(ring_kernel_for(batch, l, i8, plan.flat)), dim3(plan.blocks_x, plan.n_kb),
                 dim3(kRingThreads), smem, stream, pdl_enabled(info), "qgemv_ring_kernel", p);
}

}  // namespace

void launch_qgemv_ring(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                       const uint16_t* xt_half, int ld_x, float* yt, int ld_y, int batch, cudaStream_t stream) {
  launch_ring(info, w, tables, xt_half, ld_x, yt, ld_y, batch, nullptr, nullptr, stream);
}

bool qgemv_ring_fused_enabled() {
  // GLQ_FUSED_FINISH=1 turns it on; GLQ_QGEMV_KERNEL=mma sends launch_qgemv's few vectors to the
  // tensor-core kernel instead.
  static const bool on = env_is("GLQ_FUSED_FINISH", "1") && !env_is("GLQ_QGEMV_KERNEL", "mma");
  return on;
}

bool qgemv_ring_fused_supported(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch) {
  if (!qgemv_ring_supported(info, w, batch)) return false;
  if (w.plan_out.n != w.rows || size_t(w.plan_out.a) * w.plan_out.b != size_t(w.rows)) return false;
  if (w.plan_out.a > fused_finish_max_a()) return false;
  TransformShape t;
  t.n = w.rows;
  t.a = w.plan_out.a;
  return fused_finish_smem(t) <= info.smem_optin;
}

void launch_qgemv_ring_fused(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                             const uint16_t* xt_half, int ld_x, float* yt, int batch, const FinishParams& fin,
                             cudaStream_t stream) {
  if (!qgemv_ring_fused_supported(info, w, batch))
    throw_invalid("qgemv_ring: fused output transform not supported for this shape");
  if (fin.t.n != w.rows || (fin.t.a << fin.t.log2b) != fin.t.n)
    throw_invalid("qgemv_ring: output transform of length " + std::to_string(fin.t.n) + " for " +
                  std::to_string(w.rows) + " rows");
  unsigned* done = reinterpret_cast<unsigned*>(yt + w.rows);
  launch_ring(info, w, tables, xt_half, ld_x, yt, qgemv_ring_fused_ld(w.rows), batch, &fin, done, stream);
}

}  // namespace glq::cuda::detail
