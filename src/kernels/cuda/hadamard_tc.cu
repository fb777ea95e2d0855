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
#include <cuda_fp16.h>
#include <cuda_runtime.h>

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

// Step 2, in place: X_i ← (H_bh/4) X_i for every real row i, one warp per i. hp: H_16/4.
__device__ __forceinline__ void tc_step2(uint4* sm, const TcView& v, const uint32_t hp[4]) {
  const int bh = v.bh, KT = bh >> 4, kr = ld_k(), hh = ld_h();
  for (int i = threadIdx.x >> 5; i < v.rows; i += kTcWarps) {
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

// Step 3: for each 16 columns (jh, one warp each) and m-tile mt, acc = (M X)[mt·16.., jh·16..]
// goes to emit(mt, jh, acc) (which may write those columns of sm in place: every B fragment of
// the columns is loaded first). M from qs, or H_16/4 (hp) for the Sylvester view.
template <typename Emit>
__device__ __forceinline__ void tc_step3(const uint4* sm, const __half* qs, const TcView& v, const uint32_t hp[4],
                                         Emit emit) {
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
  for (int jh = threadIdx.x >> 5; jh < v.bh; jh += kTcWarps) {
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
// against 81 us at four for 2048 vectors of 14336, H100).
template <PreOp kPre>
__global__ void __launch_bounds__(kTcThreads, 5) prepare_tc_kernel(const PrepareParams p, const TcView view) {
  extern __shared__ __align__(16) uint4 tsm[];  // A·bh·2 chunks of 8 halves
  __shared__ float red[kTcWarps];
  __shared__ __half qs[32 * 32];
  pdl_trigger();
  const int n = p.t.n, rows = view.rows, bh = view.bh;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const size_t vec = blockIdx.x;

  // Step 1: rows of 16 elements (row r = i·bh + jh), one per thread at a time: 77 against 95 us
  // for 2048 vectors of 14336 with coalesced float4 loads and the last two FWHT stages by
  // shuffles, and 79 against 89 us with two rows in flight per thread (H100).
  const float* xv = p.x + vec * p.ld_x;
  const float* sign = p.t.sign;
  const uint32_t* sign_bits = p.t.sign_bits;
  float ss = 0.0f;
#pragma unroll 1
  for (int r = threadIdx.x; r < rows * bh; r += kTcThreads) {
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
  stage_padding_and_q(tsm, qs, p.t, view, false);
  if (p.zero_ptr)
    for (int i = threadIdx.x; i < p.zero_count; i += kTcThreads) p.zero_ptr[vec * p.zero_count + i] = 0.0f;
  uint32_t hp[4];  // H_16/4
  a_frag(hp, [](int m, int k) { return h16(m, k); });
  float f = 4.0f * rsqrtf(float(bh));
  if (kPre == PreOp::RmsNorm) {
    for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xFFFFFFFFu, ss, off);
    if (lane == 0) red[warp] = ss;
  }
  __syncthreads();
  if (kPre == PreOp::RmsNorm) {
    float s = 0.0f;
#pragma unroll
    for (int w = 0; w < kTcWarps; ++w) s += red[w];
    f *= rsqrtf(s / float(n) + p.eps);
  }
  tc_step2(tsm, view, hp);
  __syncthreads();
  tc_step3(tsm, qs, view, hp, [&](int mt, int jh, const float acc[2][4]) {
    store_acc(tsm, acc, f, [&](int r, int nt) {
      const int i = mt * 16 + r;
      return i < rows ? tc_chunk(i, jh, nt, bh) : -1;
    });
  });
  __syncthreads();

  // Out: logical chunk c (16 bytes) of x̃.
  uint4* out = reinterpret_cast<uint4*>(static_cast<__half*>(p.out) + vec * p.ld_out);
  for (int c = threadIdx.x; c < rows * bh * 2; c += kTcThreads) {
    const int i = c / (2 * bh), rem = c - i * 2 * bh;
    out[c] = tsm[tc_chunk(i, rem >> 1, rem & 1, bh)];
  }
}

// Output side, from fp16 ỹ: steps 1-3 with Q^T, then y (+)= sign ∘ result straight from step 3's
// fp32 accumulators (8-byte stores, whole 32-byte sectors per warp).
__global__ void __launch_bounds__(kTcThreads, 5) finish_tc_kernel(const FinishParams p, const TcView view) {
  extern __shared__ __align__(16) uint4 tsm[];
  __shared__ __half qs[32 * 32];
  const int rows = view.rows, bh = view.bh, b = 16 * bh;
  const size_t vec = blockIdx.x;
  // Step 1: one row of 16 values per thread at a time (22 against 27 us for 2048 vectors of 4096
  // with the rows' halves in two lanes and one shuffle stage, H100).
  const uint4* yv = reinterpret_cast<const uint4*>(p.yt_half + vec * p.ld_in);
#pragma unroll 1
  for (int r = threadIdx.x; r < rows * bh; r += kTcThreads) {
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
  stage_padding_and_q(tsm, qs, p.t, view, true);
  uint32_t hp[4];
  a_frag(hp, [](int m, int k) { return h16(m, k); });
  __syncthreads();
  tc_step2(tsm, view, hp);
  __syncthreads();
  const float f = 4.0f * rsqrtf(float(bh));
  float* y = p.y + vec * p.ld_out;
  const float* sign = p.t.sign;
  const uint32_t* sign_bits = p.t.sign_bits;
  const int accumulate = p.accumulate;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  tc_step3(tsm, qs, view, hp, [&](int mt, int jh, const float acc[2][4]) {
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
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(prepare_tc_kernel<PreOp::Plain>, cudaFuncAttributeMaxDynamicSharedMemorySize, lim));
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(prepare_tc_kernel<PreOp::RmsNorm>, cudaFuncAttributeMaxDynamicSharedMemorySize, lim));
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(prepare_tc_kernel<PreOp::SwiGlu>, cudaFuncAttributeMaxDynamicSharedMemorySize, lim));
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(finish_tc_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, lim));
    return true;
  }();
  (void)done;
}

}  // namespace

bool tc_transform_shape(const TransformShape& t) {
  if (t.a == 1) return t.n == (1 << t.log2b) && t.log2b >= 12 && t.log2b <= 14;
  return t.q && t.a > 1 && t.a <= 32 && t.log2b >= 8 && t.log2b <= 10 && (t.a << t.log2b) == t.n;
}

bool use_transform_tc(int batch) { return batch >= tc_min_batch(); }

bool launch_prepare_tc(const DeviceInfo& info, const PrepareParams& p, int batch, cudaStream_t stream) {
  if (batch <= 0 || info.cc_major < 8 || p.out_type != OutType::Half || !tc_transform_shape(p.t)) return false;
  if (!aligned_to(p.x, 16) || p.ld_x % 4 != 0 || !aligned_to(p.out, 16) || p.ld_out % 8 != 0) return false;
  if ((p.t.sign && !aligned_to(p.t.sign, 16)) || (p.pre == PreOp::RmsNorm && !aligned_to(p.norm_w, 16))) return false;
  const TcView v = tc_view(p.t);
  set_smem_attributes();
  switch (p.pre) {
    case PreOp::Plain: prepare_tc_kernel<PreOp::Plain><<<batch, kTcThreads, tc_smem(v), stream>>>(p, v); break;
    case PreOp::RmsNorm: prepare_tc_kernel<PreOp::RmsNorm><<<batch, kTcThreads, tc_smem(v), stream>>>(p, v); break;
    case PreOp::SwiGlu: prepare_tc_kernel<PreOp::SwiGlu><<<batch, kTcThreads, tc_smem(v), stream>>>(p, v); break;
  }
  GLQ_CUDA_CHECK_LAUNCH("prepare_tc_kernel");
  return true;
}

bool launch_finish_tc(const DeviceInfo& info, const FinishParams& p, int batch, cudaStream_t stream) {
  if (batch <= 0 || info.cc_major < 8 || !p.yt_half || p.parts != 1 || !tc_transform_shape(p.t)) return false;
  if (!aligned_to(p.yt_half, 16) || p.ld_in % 8 != 0 || !aligned_to(p.y, 8) || p.ld_out % 2 != 0) return false;
  if (p.t.sign && !aligned_to(p.t.sign, 8)) return false;
  // Every block reads its whole ỹ before it writes y, but not before other blocks write theirs.
  if (overlaps(p.yt_half, (size_t(batch - 1) * p.ld_in + p.t.n) * 2, p.y, (size_t(batch - 1) * p.ld_out + p.t.n) * 4))
    return false;
  const TcView v = tc_view(p.t);
  set_smem_attributes();
  finish_tc_kernel<<<batch, kTcThreads, tc_smem(v), stream>>>(p, v);
  GLQ_CUDA_CHECK_LAUNCH("finish_tc_kernel");
  return true;
}

}  // namespace glq::cuda::detail
