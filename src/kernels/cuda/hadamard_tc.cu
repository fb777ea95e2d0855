// Transforms of many vectors on the tensor cores (prefill): the input side x̃ = T (sign ∘ pre(x))
// in fp16, and the output side y (+)= sign ∘ (T^T ỹ) from the fp16 ỹ of the dequantize + GEMM path.
//
// T = Q_a ⊗ H_b/√b. With b = 16·bh the vector is a 3-tensor X[i][jh][jl] (a × bh × 16) and
// H_b/√b = (H_bh/√bh) ⊗ (H_16/4) (Sylvester), so T is three small products, one per axis:
//   1. jl (16 contiguous elements): each thread loads a row of 16 values (fp32 x with its sign and
//      pre-operation, or fp16 ỹ), runs their 16-point FWHT in fp32 registers and stores them as
//      fp16 in shared memory: the whole vector is staged once, at half the bytes of fp32;
//   2. jh: per i, X_i ← (H_bh/4) X_i, mma.m16n8k16 with H_16/4 (±1/4, exact in fp16) as the A
//      fragments of every 16×16 block of H_bh = H_{bh/16} ⊗ H_16 (negated where the Sylvester
//      sign of the block is −1) and X_i as B (ldmatrix.trans), fp32 accumulators rounded to fp16
//      in place;
//   3. i: per 16 columns, X ← M X with M = Q (input side) or Q^T (output side), zero-padded to 16
//      or 32 and rounded to fp16, as A; the factor 4/√bh (and RMSNorm's 1/rms) multiplies the
//      fp32 accumulators;
// then x̃ leaves shared memory in 16-byte coalesced stores, or y (sign, residual add) is written
// from the accumulators. A vector with a = 1 and b = 256·bh is the same computation with a' = 16
// and M = H_16/4 (H_b = H_16 ⊗ H_bh ⊗ H_16). The signs come as bits where the caller has them
// (TransformShape::sign_bits): as floats they doubled the bytes a block reads from L2 (the input
// side of 2048 vectors of 14336 took 87 against 75 us without signs, H100).
//
// The CUDA-core whole-vector kernels (hadamard.cu) keep the vector in fp32 (61 KB for 14336:
// three blocks per SM) and spend ~28 multiply-adds per element on the mixing and ~5 shuffles on
// the FWHT, in sequence with their loads; here a block holds 34 KB and 48 registers per thread
// (five blocks per SM) and the arithmetic is a few hundred mma per vector, so the load phases of
// the blocks cover each other. H100, 2048 vectors: input side of 14336 77 against 118 us, of 4096
// 25 against 29 us; output side of 14336 80 against 119 us, of 4096 22 against 30 us.
// Rounding: three fp16 roundings (after steps 1, 2 and 3) instead of one, and M in fp16: a
// relative error of ~5e-4 against ~3e-4 (the tests hold both under 1e-3); on the output side the
// fp16 ỹ it reads already carries an error of that size.
//
// Clusters (sm_90): with fewer vectors than blocks to fill the SMs (17-132), a vector is split
// over C = 2-8 blocks of a thread-block cluster (TcPart): block q runs steps 1-2 on its rows i,
// sends the chunks of its rows in the other blocks' columns into their shared memory, and after
// one cluster barrier runs step 3 and the output on its columns jh. 4096x14336 at 64 vectors,
// 2 bpw: the product 49.2 against 53.3 us with one block per vector (H100).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>

#include "glq/error.hpp"
#include "kernels/cuda/launch.hpp"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/transform_kernels.cuh"

namespace glq::cuda::detail {

namespace {

constexpr int kTcThreads = 256;
constexpr int kTcWarps = kTcThreads / 32;

// The view of a shape (host and device): `rows` real rows of b' = 16·bh, padded to A rows.
struct TcView {
  int rows = 0;
  int A = 0;   // 16 or 32
  int bh = 0;  // 16, 32 or 64
  int sylvester = 0;
};

// Physical 16-byte chunk of element (i, jh, 8h..8h+7): the logical chunk 2·(i·bh + jh) + h with
// its low 3 bits XORed by (i & 7) ^ bit 2 of jh, so that the eight rows of every ldmatrix matrix
// (8 consecutive jh, or 8 consecutive i) and the row stores of step 1 fall in distinct banks.
__device__ __forceinline__ int tc_chunk(int i, int jh, int h, int bh) {
  return (2 * (i * bh + jh) + h) ^ ((i & 7) ^ ((jh >> 2) & 1));
}

__device__ __forceinline__ void ldsm4t(uint32_t r[4], const uint4* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

// Thread-block clusters (sm_90): a vector split over the C blocks of a cluster. Elsewhere (and
// in a launch without clusters) every block is a cluster of one.
struct ClusterPos {
  int rank = 0, size = 1;
};

__device__ __forceinline__ ClusterPos cluster_pos() {
  ClusterPos c;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  unsigned r, n;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(n));
  c.rank = int(r);
  c.size = int(n);
#endif
  return c;
}

// Split barrier of the cluster (every thread of every block): arrive, then wait for all.
__device__ __forceinline__ void cluster_arrive_relaxed() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_arrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

// The shared::cluster address of `local`'s offset in the shared memory of block `rank`.
[[maybe_unused]] __device__ __forceinline__ unsigned cluster_addr(const void* local, int rank) {
  unsigned ra = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(local));
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(a), "r"(rank));
#endif
  return ra;
}

// Stores into the shared memory of block `rank` of the cluster, at the offset of `local`.
__device__ __forceinline__ void st_cluster(const void* local, int rank, uint4 v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("st.shared::cluster.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(cluster_addr(local, rank)), "r"(v.x), "r"(v.y),
               "r"(v.z), "r"(v.w)
               : "memory");
#endif
}
__device__ __forceinline__ void st_cluster(const float* local, int rank, float v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(cluster_addr(local, rank)), "f"(v) : "memory");
#endif
}

// This block's share of a vector split over a cluster: rows [i0, i1) of the a × bh view for
// steps 1 and 2, columns [j0, j1) (jh) for step 3 and the output. After step 2 every block
// sends the columns it does not own to their owners (exchange below), so step 3 finds whole
// columns in its own shared memory.
struct TcPart {
  int rank, size, i0, i1, j0, j1;
};

__device__ __forceinline__ TcPart tc_part(const ClusterPos& c, int rows, int bh) {
  return {c.rank, c.size, c.rank * rows / c.size, (c.rank + 1) * rows / c.size, c.rank * bh / c.size,
          (c.rank + 1) * bh / c.size};
}

// The exchange: chunks of rows [i0, i1) in columns other blocks own go to those blocks (same
// offsets); then one cluster barrier. The caller has synchronised its block after step 2 and has
// waited for the first barrier (every block of the cluster running).
__device__ __forceinline__ void tc_exchange(uint4* sm, const TcPart& part, int bh) {
  const int per = bh / part.size, cols = 2 * bh;  // chunks per row i: 2 per jh
  for (int e = threadIdx.x; e < (part.i1 - part.i0) * cols; e += blockDim.x) {
    const int i = part.i0 + e / cols, rem = e - (e / cols) * cols, jh = rem >> 1, owner = jh / per;
    if (owner == part.rank) continue;
    const int c = tc_chunk(i, jh, rem & 1, bh);
    st_cluster(sm + c, owner, sm[c]);
  }
}

__device__ __forceinline__ float h16(int m, int k) { return (__popc(m & k) & 1) ? -0.25f : 0.25f; }

// A fragment of m16n8k16 in lane (g, t): rows g, g+8; columns 2t, 2t+1, 2t+8, 2t+9.
template <typename F>
__device__ __forceinline__ void a_frag(uint32_t a[4], F entry) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  a[0] = pack_half2(entry(g, 2 * t), entry(g, 2 * t + 1));
  a[1] = pack_half2(entry(g + 8, 2 * t), entry(g + 8, 2 * t + 1));
  a[2] = pack_half2(entry(g, 2 * t + 8), entry(g, 2 * t + 9));
  a[3] = pack_half2(entry(g + 8, 2 * t + 8), entry(g + 8, 2 * t + 9));
}

__device__ __forceinline__ void fwht16(float v[16]) {
#pragma unroll
  for (int h = 1; h < 16; h <<= 1)
#pragma unroll
    for (int i = 0; i < 16; ++i)
      if ((i & h) == 0) {
        const float u = v[i], w = v[i + h];
        v[i] = u + w;
        v[i + h] = u - w;
      }
}

__device__ __forceinline__ void load16(float v[16], const float* p) {
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const float4 f = *reinterpret_cast<const float4*>(p + 4 * c);
    v[4 * c] = f.x;
    v[4 * c + 1] = f.y;
    v[4 * c + 2] = f.z;
    v[4 * c + 3] = f.w;
  }
}

__device__ __forceinline__ void ldg16(float v[16], const float* p) {
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const float4 f = __ldg(reinterpret_cast<const float4*>(p + 4 * c));
    v[4 * c] = f.x;
    v[4 * c + 1] = f.y;
    v[4 * c + 2] = f.z;
    v[4 * c + 3] = f.w;
  }
}

// acc (two n8 tiles: rows g and g+8 of an m16 tile, columns 2t, 2t+1) times f, as fp16 into
// shared memory at chunk(row, n-tile) (a negative chunk: row dropped).
template <typename Chunk>
__device__ __forceinline__ void store_acc(uint4* sm, const float acc[2][4], float f, Chunk chunk) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int half = 0; half < 2; ++half)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const int c = chunk(g + 8 * half, nt);
      if (c >= 0) reinterpret_cast<uint32_t*>(sm + c)[t] = pack_half2(acc[nt][2 * half] * f, acc[nt][2 * half + 1] * f);
    }
}

// Step 1's result for row r (16 values along jl, H_16/4 applied) as fp16 into shared memory.
__device__ __forceinline__ void stage_row(uint4* sm, const float v[16], int r, int bh) {
  const int i = r / bh, jh = r - i * bh;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    uint4 u;
    u.x = pack_half2(0.25f * v[8 * h], 0.25f * v[8 * h + 1]);
    u.y = pack_half2(0.25f * v[8 * h + 2], 0.25f * v[8 * h + 3]);
    u.z = pack_half2(0.25f * v[8 * h + 4], 0.25f * v[8 * h + 5]);
    u.w = pack_half2(0.25f * v[8 * h + 6], 0.25f * v[8 * h + 7]);
    sm[tc_chunk(i, jh, h, bh)] = u;
  }
}

// The zero rows of step 3's padding, and M (Q, or Q^T with `transpose`) zero-padded to 32 × 32
// in fp16 (unused for the Sylvester view).
__device__ __forceinline__ void stage_padding_and_q(uint4* sm, __half* qs, const TransformShape& t, const TcView& v,
                                                    bool transpose) {
  for (int c = v.rows * v.bh * 2 + threadIdx.x; c < v.A * v.bh * 2; c += kTcThreads) sm[c] = make_uint4(0, 0, 0, 0);
  if (v.sylvester) return;
  for (int e = threadIdx.x; e < 32 * 32; e += kTcThreads) {
    const int i = e >> 5, k = e & 31, a = t.a;
    qs[e] = __float2half_rn(i < a && k < a ? __ldg(t.q + (transpose ? k * a + i : i * a + k)) : 0.0f);
  }
}

// ldmatrix.x4.trans address of this lane: matrix q = lane >> 3 covers k rows 8(q & 1).. and n
// columns 8(q >> 1)..: registers 0/1 are the B fragment of n-tile 0, 2/3 of n-tile 1.
__device__ __forceinline__ int ld_k() { return (((threadIdx.x & 31) >> 3) & 1) * 8 + (threadIdx.x & 7); }
__device__ __forceinline__ int ld_h() { return (threadIdx.x & 31) >> 4; }

// acc (two n8 tiles) += A · B for one k16 step: B from ldsm4t (registers 0/1 n-tile 0, 2/3 n-tile 1).
__device__ __forceinline__ void mma_n16(float acc[2][4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                        const uint32_t b[4]) {
  mma16816(acc[0], a0, a1, a2, a3, b[0], b[1]);
  mma16816(acc[1], a0, a1, a2, a3, b[2], b[3]);
}

// Step 2, in place: X_i ← (H_bh/4) X_i for the rows i0 ≤ i < i1, one warp per i. hp: H_16/4.
__device__ __forceinline__ void tc_step2(uint4* sm, const TcView& v, const uint32_t hp[4], int i0, int i1) {
  const int bh = v.bh, KT = bh >> 4, kr = ld_k(), hh = ld_h();
  for (int i = i0 + (threadIdx.x >> 5); i < i1; i += kTcWarps) {
    uint32_t bf[4][4];
#pragma unroll
    for (int kt = 0; kt < 4; ++kt)
      if (kt < KT) ldsm4t(bf[kt], sm + tc_chunk(i, kt * 16 + kr, hh, bh));
#pragma unroll
    for (int mt = 0; mt < 4; ++mt) {
      if (mt >= KT) break;
      float acc[2][4] = {};
#pragma unroll
      for (int kt = 0; kt < 4; ++kt) {
        if (kt >= KT) break;
        const uint32_t neg = (__popc(mt & kt) & 1) ? 0x80008000u : 0u;  // Sylvester sign of the block
        mma_n16(acc, hp[0] ^ neg, hp[1] ^ neg, hp[2] ^ neg, hp[3] ^ neg, bf[kt]);
      }
      store_acc(sm, acc, 1.0f, [&](int r, int nt) { return tc_chunk(i, mt * 16 + r, nt, bh); });
    }
  }
}

// Step 3: for each 16 columns jh0 ≤ jh < jh1 (one warp each) and m-tile mt, acc = (M X)[mt·16..,
// jh·16..] goes to emit(mt, jh, acc) (which may write those columns of sm in place: every B
// fragment of the columns is loaded first). M from qs, or H_16/4 (hp) for the Sylvester view.
template <typename Emit>
__device__ __forceinline__ void tc_step3(const uint4* sm, const __half* qs, const TcView& v, const uint32_t hp[4],
                                         int jh0, int jh1, Emit emit) {
  const int KA = v.A >> 4, kr = ld_k(), hh = ld_h();
  uint32_t qf[2][2][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int kt = 0; kt < 2; ++kt) {
      if (v.sylvester) {
#pragma unroll
        for (int r = 0; r < 4; ++r) qf[mt][kt][r] = hp[r];
      } else {
        a_frag(qf[mt][kt], [&](int m, int k) { return __half2float(qs[(mt * 16 + m) * 32 + kt * 16 + k]); });
      }
    }
  for (int jh = jh0 + (threadIdx.x >> 5); jh < jh1; jh += kTcWarps) {
    uint32_t bf[2][4];
#pragma unroll
    for (int kt = 0; kt < 2; ++kt)
      if (kt < KA) ldsm4t(bf[kt], sm + tc_chunk(kt * 16 + kr, jh, hh, v.bh));
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      if (mt >= KA) break;
      float acc[2][4] = {};
#pragma unroll
      for (int kt = 0; kt < 2; ++kt) {
        if (kt >= KA) break;
        mma_n16(acc, qf[mt][kt][0], qf[mt][kt][1], qf[mt][kt][2], qf[mt][kt][3], bf[kt]);
      }
      emit(mt, jh, acc);
    }
  }
}

// Input side. Five blocks of 256 threads per SM (48 registers, 34 KB of shared memory each; 79
// against 81 us at four for 2048 vectors of 14336, H100). In a cluster of C blocks (grid
// batch·C), block `rank` takes its share of the vector (TcPart).
template <PreOp kPre, bool kCluster>
__global__ void __launch_bounds__(kTcThreads, kCluster ? 2 : 5) prepare_tc_kernel(const PrepareParams p, const TcView view) {
  extern __shared__ __align__(16) uint4 tsm[];  // A·bh·2 chunks of 8 halves
  __shared__ float red[kTcWarps];
  __shared__ float cred[8];  // the cluster's partial sums of squares, by rank
  __shared__ __half qs[32 * 32];
  pdl_trigger();
  const int n = p.t.n, rows = view.rows, bh = view.bh;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const TcPart part = tc_part(kCluster ? cluster_pos() : ClusterPos{}, rows, bh);
  if (kCluster) cluster_arrive_relaxed();  // this block runs (waited for before the exchange)
  const size_t vec = blockIdx.x / part.size;
  stage_padding_and_q(tsm, qs, p.t, view, false);  // (constants: before the wait for x)
  pdl_wait();

  // Step 1: rows of 16 elements (row r = i·bh + jh), one per thread at a time: 77 against 95 us
  // for 2048 vectors of 14336 with coalesced float4 loads and the last two FWHT stages by
  // shuffles, and 79 against 89 us with two rows in flight per thread (H100).
  const float* xv = p.x + vec * p.ld_x;
  const float* sign = p.t.sign;
  const uint32_t* sign_bits = p.t.sign_bits;
  float ss = 0.0f;
#pragma unroll 1
  for (int r = part.i0 * bh + threadIdx.x; r < part.i1 * bh; r += kTcThreads) {
    float v[16];
    load16(v, xv + 16 * r);
    if (kPre == PreOp::RmsNorm) {
      float w[16];
      ldg16(w, p.norm_w + 16 * r);
#pragma unroll
      for (int e = 0; e < 16; ++e) {
        ss = fmaf(v[e], v[e], ss);
        v[e] *= w[e];
      }
    } else if (kPre == PreOp::SwiGlu) {
      float u[16];
      load16(u, xv + n + 16 * r);
#pragma unroll
      for (int e = 0; e < 16; ++e) v[e] = v[e] / (1.0f + __expf(-v[e])) * u[e];
    }
    if (sign_bits) {  // negate where the bit is set: XOR into the float's sign bit
      const uint32_t m = __ldg(sign_bits + (r >> 1)) >> (16 * (r & 1));
#pragma unroll
      for (int e = 0; e < 16; ++e) v[e] = __int_as_float(__float_as_int(v[e]) ^ int(((m >> e) & 1u) << 31));
    } else if (sign) {
      float s[16];
      ldg16(s, sign + 16 * r);
#pragma unroll
      for (int e = 0; e < 16; ++e) v[e] *= s[e];
    }
    fwht16(v);
    stage_row(tsm, v, r, bh);
  }
  if (p.zero_ptr) {
    const int z0 = part.rank * p.zero_count / part.size, z1 = (part.rank + 1) * p.zero_count / part.size;
    for (int i = z0 + threadIdx.x; i < z1; i += kTcThreads) p.zero_ptr[vec * p.zero_count + i] = 0.0f;
  }
  uint32_t hp[4];  // H_16/4
  a_frag(hp, [](int m, int k) { return h16(m, k); });
  float f = 4.0f * rsqrtf(float(bh));
  if (kPre == PreOp::RmsNorm) {
    for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xFFFFFFFFu, ss, off);
    if (lane == 0) red[warp] = ss;
  }
  __syncthreads();
  tc_step2(tsm, view, hp, part.i0, part.i1);
  __syncthreads();
  float s = 0.0f;
  if (kPre == PreOp::RmsNorm)
#pragma unroll
    for (int w = 0; w < kTcWarps; ++w) s += red[w];
  if (kCluster) {
    cluster_wait();  // every block of the cluster runs
    tc_exchange(tsm, part, bh);
    if (kPre == PreOp::RmsNorm && threadIdx.x < part.size) st_cluster(&cred[part.rank], int(threadIdx.x), s);
    cluster_arrive();
    cluster_wait();  // every block's rows and partial sum arrived
    if (kPre == PreOp::RmsNorm) {
      s = 0.0f;
      for (int q = 0; q < part.size; ++q) s += cred[q];
    }
  }
  if (kPre == PreOp::RmsNorm) f *= rsqrtf(s / float(n) + p.eps);
  tc_step3(tsm, qs, view, hp, part.j0, part.j1, [&](int mt, int jh, const float acc[2][4]) {
    store_acc(tsm, acc, f, [&](int r, int nt) {
      const int i = mt * 16 + r;
      return i < rows ? tc_chunk(i, jh, nt, bh) : -1;
    });
  });
  __syncthreads();

  // Out: logical chunks (16 bytes) of x̃ in columns [j0, j1) of every row i.
  uint4* out = reinterpret_cast<uint4*>(static_cast<__half*>(p.out) + vec * p.ld_out);
  if (p.permute) {
    // Per block of 32 columns (jh, jh + 1; j0 and j1 are even): chunk q holds pair q of the
    // block's four chunks.
    const int bw = (part.j1 - part.j0) / 2;
    for (int e = threadIdx.x; e < rows * bw; e += kTcThreads) {
      const int i = e / bw, jb = part.j0 + 2 * (e - i * bw);
      const uint4 s0 = tsm[tc_chunk(i, jb, 0, bh)], s1 = tsm[tc_chunk(i, jb, 1, bh)];
      const uint4 s2 = tsm[tc_chunk(i, jb + 1, 0, bh)], s3 = tsm[tc_chunk(i, jb + 1, 1, bh)];
      uint4* o = out + i * 2 * bh + 2 * jb;
      o[0] = make_uint4(s0.x, s1.x, s2.x, s3.x);
      o[1] = make_uint4(s0.y, s1.y, s2.y, s3.y);
      o[2] = make_uint4(s0.z, s1.z, s2.z, s3.z);
      o[3] = make_uint4(s0.w, s1.w, s2.w, s3.w);
    }
    return;
  }
  const int cw = 2 * (part.j1 - part.j0);
  for (int e = threadIdx.x; e < rows * cw; e += kTcThreads) {
    const int i = e / cw, rem = e - i * cw, c = i * 2 * bh + 2 * part.j0 + rem;
    out[c] = tsm[tc_chunk(i, part.j0 + (rem >> 1), rem & 1, bh)];
  }
}

// Output side, from fp16 ỹ or from fp32 ỹ in `parts` slices (summed on load): steps 1-3 with
// Q^T, then y (+)= sign ∘ result straight from step 3's fp32 accumulators (8-byte stores, whole
// 32-byte sectors per warp). In a cluster, as the input side.
template <bool kCluster>
__global__ void __launch_bounds__(kTcThreads, kCluster ? 2 : 5) finish_tc_kernel(const FinishParams p, const TcView view) {
  extern __shared__ __align__(16) uint4 tsm[];
  __shared__ __half qs[32 * 32];
  const int rows = view.rows, bh = view.bh, b = 16 * bh;
  pdl_trigger();
  const TcPart part = tc_part(kCluster ? cluster_pos() : ClusterPos{}, rows, bh);
  if (kCluster) cluster_arrive_relaxed();
  const size_t vec = blockIdx.x / part.size;
  stage_padding_and_q(tsm, qs, p.t, view, true);  // (constants: before the wait for ỹ)
  uint32_t hp[4];
  a_frag(hp, [](int m, int k) { return h16(m, k); });
  pdl_wait();
  // Step 1: one row of 16 values per thread at a time (22 against 27 us for 2048 vectors of 4096
  // with the rows' halves in two lanes and one shuffle stage, H100).
  if (p.yt_half && p.parts == 1) {
    const uint4* yv = reinterpret_cast<const uint4*>(p.yt_half + vec * p.ld_in);
#pragma unroll 1
    for (int r = part.i0 * bh + threadIdx.x; r < part.i1 * bh; r += kTcThreads) {
      float v[16];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint4 u = __ldg(yv + 2 * r + h);
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float2 f2 = __half22float2(*reinterpret_cast<const __half2*>(&w[k]));
          v[8 * h + 2 * k] = f2.x;
          v[8 * h + 2 * k + 1] = f2.y;
        }
      }
      fwht16(v);
      stage_row(tsm, v, r, bh);
    }
  } else {
    // Slices (fp32, or fp16 from the tile kernel): a quarter row (4 values: one float4 or 8
    // bytes per slice) per thread, so that a thread has 8 slices' loads in flight in few
    // registers; the 16-point FWHT's last two stages by shuffles between the row's 4 lanes.
    const int q = threadIdx.x & 3, r_end = part.i1 * bh;
#pragma unroll 1
    for (int r0 = part.i0 * bh; r0 < r_end; r0 += kTcThreads / 4) {
      const int r = r0 + (threadIdx.x >> 2);
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (r < r_end && p.yt_half) {
        const uint2* src = reinterpret_cast<const uint2*>(p.yt_half + vec * p.ld_in + 16 * r + 4 * q);
        const size_t stride = p.part_stride / 4;  // in uint2
#pragma unroll 8
        for (int k = 0; k < p.parts; ++k) {
          const uint2 u = __ldg(src + k * stride);
          const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
          const float2 b2 = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
          v.x += a.x;
          v.y += a.y;
          v.z += b2.x;
          v.w += b2.y;
        }
      } else if (r < r_end) {
        const float* src = p.yt + vec * p.ld_in + 16 * r + 4 * q;
        v = __ldg(reinterpret_cast<const float4*>(src));
#pragma unroll 8
        for (int k = 1; k < p.parts; ++k) {
          const float4 u = __ldg(reinterpret_cast<const float4*>(src + k * p.part_stride));
          v.x += u.x;
          v.y += u.y;
          v.z += u.z;
          v.w += u.w;
        }
      }
      float e[4] = {v.x + v.y, v.x - v.y, v.z + v.w, v.z - v.w};
      float o[4] = {e[0] + e[2], e[1] + e[3], e[0] - e[2], e[1] - e[3]};
#pragma unroll
      for (int h = 1; h <= 2; h <<= 1)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float partner = __shfl_xor_sync(0xFFFFFFFFu, o[j], h);
          o[j] = (q & h) ? partner - o[j] : o[j] + partner;
        }
      if (r < r_end) {
        const int i = r / bh, jh = r - i * bh;
        uint2 u;
        u.x = pack_half2(0.25f * o[0], 0.25f * o[1]);
        u.y = pack_half2(0.25f * o[2], 0.25f * o[3]);
        reinterpret_cast<uint2*>(tsm + tc_chunk(i, jh, q >> 1, bh))[q & 1] = u;
      }
    }
  }
  __syncthreads();
  tc_step2(tsm, view, hp, part.i0, part.i1);
  __syncthreads();
  if (kCluster) {
    cluster_wait();
    tc_exchange(tsm, part, bh);
    cluster_arrive();
    cluster_wait();
  }
  const float f = 4.0f * rsqrtf(float(bh));
  float* y = p.y + vec * p.ld_out;
  const float* sign = p.t.sign;
  const uint32_t* sign_bits = p.t.sign_bits;
  const int accumulate = p.accumulate;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  tc_step3(tsm, qs, view, hp, part.j0, part.j1, [&](int mt, int jh, const float acc[2][4]) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = mt * 16 + g + 8 * half;
      if (i >= rows) continue;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const int e = i * b + jh * 16 + nt * 8 + 2 * t;
        float2 o = make_float2(acc[nt][2 * half] * f, acc[nt][2 * half + 1] * f);
        if (sign_bits) {
          const uint32_t m = __ldg(sign_bits + (e >> 5)) >> (e & 31);
          o.x = __int_as_float(__float_as_int(o.x) ^ int((m & 1u) << 31));
          o.y = __int_as_float(__float_as_int(o.y) ^ int(((m >> 1) & 1u) << 31));
        } else if (sign) {
          const float2 s = __ldg(reinterpret_cast<const float2*>(sign + e));
          o.x *= s.x;
          o.y *= s.y;
        }
        float2* dst = reinterpret_cast<float2*>(y + e);
        if (accumulate) {
          const float2 old = *dst;
          o.x += old.x;
          o.y += old.y;
        }
        *dst = o;
      }
    }
  });
}

int tc_min_batch() {
  static const int v = env_min_batch("GLQ_CUDA_TRANSFORM_TC", "GLQ_CUDA_TRANSFORM_TC_MIN", kTransformTcMinBatch);
  return v;
}

TcView tc_view(const TransformShape& t) {
  TcView v;
  if (t.a == 1) {
    v.rows = v.A = 16;
    v.bh = 1 << (t.log2b - 8);
    v.sylvester = 1;
  } else {
    v.rows = t.a;
    v.A = t.a <= 16 ? 16 : 32;
    v.bh = 1 << (t.log2b - 4);
  }
  return v;
}

size_t tc_smem(const TcView& v) { return size_t(v.A) * v.bh * 16 * 2; }

// Opts every kernel of this file into the largest shared memory a shape needs (A = 32, bh = 64).
void set_smem_attributes() {
  static const bool done = [] {
    const int lim = 32 * 64 * 16 * 2;
    for (auto* k : {prepare_tc_kernel<PreOp::Plain, false>, prepare_tc_kernel<PreOp::RmsNorm, false>,
                    prepare_tc_kernel<PreOp::SwiGlu, false>, prepare_tc_kernel<PreOp::Plain, true>,
                    prepare_tc_kernel<PreOp::RmsNorm, true>, prepare_tc_kernel<PreOp::SwiGlu, true>})
      GLQ_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, lim));
    for (auto* k : {finish_tc_kernel<false>, finish_tc_kernel<true>})
      GLQ_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, lim));
    return true;
  }();
  (void)done;
}

// Blocks per vector: a cluster of C blocks where one block per vector would leave SMs idle
// (batch·C ≤ 2 blocks per SM, C ≤ 8), on sm_90 only. GLQ_CUDA_TRANSFORM_CLUSTER=N caps C (1:
// one block per vector, as before).
int tc_cluster_cap() {
  static const int v = std::clamp(env_int("GLQ_CUDA_TRANSFORM_CLUSTER", 8), 1, 8);
  return v;
}

}  // namespace

bool tc_clusters_available(const DeviceInfo& info) {
  static const bool sm90_code =
      compiled_for_sm90(prepare_tc_kernel<PreOp::Plain, true>) && compiled_for_sm90(finish_tc_kernel<true>);
  return info.cc_major >= 9 && sm90_code;
}

int tc_cluster(const DeviceInfo& info, int batch) {
  static const int per_sm = std::clamp(env_int("GLQ_CUDA_TRANSFORM_CLUSTER_PER_SM", 2), 1, 8);
  if (!tc_clusters_available(info) || batch <= 0) return 1;
  int c = 1;
  while (2 * c <= tc_cluster_cap() && size_t(batch) * 2 * c <= size_t(per_sm * info.sm_count)) c *= 2;
  return c;
}

namespace {

// Blocks per vector of a launch: `cluster` (0: tc_cluster's choice), or 0 where the device or the
// size cannot take it (clusters of 2, 4 or 8 on sm_90).
int launch_cluster(const DeviceInfo& info, int batch, int cluster) {
  const int c = cluster > 0 ? cluster : tc_cluster(info, batch);
  return c > 1 && (!tc_clusters_available(info) || c > 8 || (c & (c - 1)) != 0) ? 0 : c;
}

}  // namespace

bool tc_transform_shape(const TransformShape& t) {
  if (t.a == 1) return t.n == (1 << t.log2b) && t.log2b >= 12 && t.log2b <= 14;
  return t.q && t.a > 1 && t.a <= 32 && t.log2b >= 8 && t.log2b <= 10 && (t.a << t.log2b) == t.n;
}

bool use_transform_tc(const DeviceInfo& info, int batch) {
  return batch >= tc_min_batch() || (batch >= kTilesMinBatch && tc_cluster(info, batch) > 1);
}

namespace {

// The blocks per vector launch_prepare_tc runs p with (`cluster` as there), or 0 where it refuses p.
int prepare_tc_cluster(const DeviceInfo& info, const PrepareParams& p, int batch, int cluster) {
  if (batch <= 0 || info.cc_major < 8 || p.out_type != OutType::Half || !tc_transform_shape(p.t)) return 0;
  if (!aligned_to(p.x, 16) || p.ld_x % 4 != 0 || !aligned_to(p.out, 16) || p.ld_out % 8 != 0) return 0;
  if ((p.t.sign && !aligned_to(p.t.sign, 16)) || (p.pre == PreOp::RmsNorm && !aligned_to(p.norm_w, 16))) return 0;
  const int c = launch_cluster(info, batch, cluster);
  if (c == 0) return 0;
  // The input must not overlap x̃ (a block of a cluster writes its columns while others read).
  const size_t row_in = p.pre == PreOp::SwiGlu ? 2 * size_t(p.t.n) : size_t(p.t.n);
  if (c > 1 && overlaps(p.x, ((batch - 1) * size_t(p.ld_x) + row_in) * 4, p.out, ((batch - 1) * size_t(p.ld_out) + p.t.n) * 2))
    return 0;
  return c;
}

}  // namespace

bool prepare_permutes(const DeviceInfo& info, const PrepareParams& p, int batch) {
  return use_transform_tc(info, batch) && prepare_tc_cluster(info, p, batch, 0) > 0;
}

bool launch_prepare_tc(const DeviceInfo& info, const PrepareParams& p, int batch, cudaStream_t stream, int cluster) {
  const int c = prepare_tc_cluster(info, p, batch, cluster);
  if (c == 0) return false;
  const TcView v = tc_view(p.t);
  set_smem_attributes();
  const bool pdl = pdl_enabled(info);
  const dim3 grid(unsigned(batch) * c), block(kTcThreads), cl(c, 1, 1);
  const auto kernel = [&]() -> void (*)(PrepareParams, TcView) {
    switch (p.pre) {
      case PreOp::RmsNorm: return c > 1 ? prepare_tc_kernel<PreOp::RmsNorm, true> : prepare_tc_kernel<PreOp::RmsNorm, false>;
      case PreOp::SwiGlu: return c > 1 ? prepare_tc_kernel<PreOp::SwiGlu, true> : prepare_tc_kernel<PreOp::SwiGlu, false>;
      default: return c > 1 ? prepare_tc_kernel<PreOp::Plain, true> : prepare_tc_kernel<PreOp::Plain, false>;
    }
  }();
  launch_checked_cluster(kernel, grid, block, tc_smem(v), stream, pdl, cl, "prepare_tc_kernel", p, v);
  return true;
}

namespace {

// The blocks per vector launch_finish_tc runs p with (`cluster` as there), or 0 where it refuses p.
int finish_tc_cluster(const DeviceInfo& info, const FinishParams& p, int batch, int cluster) {
  if (batch <= 0 || info.cc_major < 8 || !tc_transform_shape(p.t)) return 0;
  size_t in_bytes;
  if (p.yt_half) {
    if (p.parts < 1 || !aligned_to(p.yt_half, 16) || p.ld_in % 8 != 0 || (p.parts > 1 && p.part_stride % 8 != 0))
      return 0;
    in_bytes = (size_t(p.parts - 1) * p.part_stride + size_t(batch - 1) * p.ld_in + p.t.n) * 2;
  } else {
    // fp32 ỹ (in slices) only where the caller accepts fp16 intermediates.
    if (!p.half_ok || !p.yt || p.parts < 1 || !aligned_to(p.yt, 16) || p.ld_in % 4 != 0 ||
        (p.parts > 1 && p.part_stride % 4 != 0))
      return 0;
    in_bytes = (size_t(p.parts - 1) * p.part_stride + size_t(batch - 1) * p.ld_in + p.t.n) * 4;
  }
  if (!aligned_to(p.y, 8) || p.ld_out % 2 != 0) return 0;
  if (p.t.sign && !aligned_to(p.t.sign, 8)) return 0;
  // Every block reads its whole ỹ before it writes y, but not before other blocks write theirs.
  const void* in = p.yt_half ? static_cast<const void*>(p.yt_half) : static_cast<const void*>(p.yt);
  if (overlaps(in, in_bytes, p.y, (size_t(batch - 1) * p.ld_out + p.t.n) * 4)) return 0;
  return launch_cluster(info, batch, cluster);
}

}  // namespace

bool launch_finish_tc(const DeviceInfo& info, const FinishParams& p, int batch, cudaStream_t stream, int cluster) {
  const int c = finish_tc_cluster(info, p, batch, cluster);
  if (c == 0) return false;
  const TcView v = tc_view(p.t);
  set_smem_attributes();
  launch_checked_cluster(c > 1 ? finish_tc_kernel<true> : finish_tc_kernel<false>, dim3(unsigned(batch) * c), dim3(kTcThreads), tc_smem(v), stream,
                         pdl_enabled(info), dim3(c, 1, 1), "finish_tc_kernel", p, v);
  return true;
}

bool tc_finish_half_parts(const DeviceInfo& info, const FinishParams& f, int batch) {
  static const bool on = !env_is("GLQ_CUDA_HALF_PARTS", "0");
  if (!on || batch < kTilesMinBatch) return false;
  FinishParams h = f;  // the same slices, in fp16
  h.yt_half = reinterpret_cast<const uint16_t*>(f.yt);
  h.yt = nullptr;
  return finish_tc_cluster(info, h, batch, 0) > 1;
}

}  // namespace glq::cuda::detail
