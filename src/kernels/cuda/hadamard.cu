// Hadamard transforms T_n = Q_a ⊗ H_b / sqrt(b) on the GPU (see glq/transform/hadamard.hpp).
//
// One block per vector: the vector (n floats) sits in shared memory, the fast Walsh-Hadamard
// transform runs over each of its a rows of length b (log2 b butterfly passes), and the small
// mixing product across rows (Q_a, or Q_a^T for the transpose) is applied while writing the
// result to global memory, so no second buffer is needed. A vector of n floats must fit in the
// shared memory a block may opt into (56K floats on H100/H200); longer ones throw Unsupported.
//
// prepare_kernel (the input side) also applies a fused pre-operation (RMSNorm or SwiGLU; see
// transform_kernels.cuh), writes fp16 (what the decode kernels read) or bf16 (dense linears),
// and zeroes the output buffer of a following accumulating product, which saves a memset node
// per product. finish_kernel (the output side) can add its result into y, which fuses the
// residual add.
//
// From 17 vectors on both sides run the whole-vector kernels (prepare_wide_kernel,
// finish_wide_kernel): one read, one write. Where those refuse the shape or the alignment, the
// input side of 17 to 63 vectors (a ≤ 32, b ≥ 32) runs prepare_many_kernel: row groups per
// block, mixing in registers, the FWHT in registers and warp shuffles (see the comment above it).
// From kTransformTcMinBatch (49) vectors on, and on sm_90 from kTilesMinBatch (17) where a vector
// is split over a thread-block cluster (tc_cluster), the shapes the tensor-core kernels take
// (b = 256-1024 with a ≤ 32, or a = 1 with b = 4096-16384) run there instead (hadamard_tc.cu):
// the input side, and the output side where ỹ is fp16 (the dequantize + GEMM path, the tile
// kernel's fp16 slices) or, in clusters, fp32 slices of a product (FinishParams::half_ok).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <string>

#include "glq/error.hpp"
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/launch.hpp"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/transform_kernels.cuh"

namespace glq::cuda::detail {

namespace {

__device__ __forceinline__ float block_sum(float v, float* red) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, off);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = (blockDim.x + 31) >> 5;
  __syncthreads();  // red may still be read by an earlier call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float s = 0.0f;
  for (int w = 0; w < nwarps; ++w) s += red[w];
  return s;
}

// Fast Walsh-Hadamard transform of each of the a rows of buf (length 2^log2b), in place.
__device__ __forceinline__ void fwht_rows(float* buf, int n, int log2b) {
  const int half_b = (1 << log2b) >> 1;
  for (int lh = 0; lh < log2b; ++lh) {
    const int h = 1 << lh;
    for (int p = threadIdx.x; p < n / 2; p += blockDim.x) {
      const int row = p >> (log2b - 1);
      const int k = p & (half_b - 1);
      const int i = ((k >> lh) << (lh + 1)) | (k & (h - 1));
      const int idx = (row << log2b) + i;
      const float u = buf[idx], v = buf[idx + h];
      buf[idx] = u + v;
      buf[idx + h] = u - v;
    }
    __syncthreads();
  }
}

// Padded shared-memory index: one spare word per 32 keeps the strided accesses of the fast FWHT
// free of bank conflicts.
__device__ __forceinline__ int zp(int i) { return i + (i >> 5); }

__device__ __forceinline__ float butterfly(float v, float partner, bool upper) { return upper ? partner - v : v + partner; }

// FWHT of one row of length b = 2^k held in padded shared memory (zp), in place. For
// 7 ≤ k ≤ 12 the first b/4 threads hold 4 elements each and run every stage in registers and
// warp shuffles, with one exchange through shared memory (2 barriers instead of k); otherwise a
// butterfly pass per stage. Every thread of the block must call it.
__device__ __forceinline__ void fwht_padded(float* z, int k) {
  const int b = 1 << k;
  if (k >= 7 && k <= 12) {
    const int T = b >> 2, t = threadIdx.x, l = t & 31, w = t >> 5;
    const bool active = t < T;
    float v[4];
    if (active) {
      // Layout A: element r at i = t + T·r: bits 0-4 are the lane, 5..k-3 the warp, k-2..k-1 r.
#pragma unroll
      for (int r = 0; r < 4; ++r) v[r] = z[zp(t + T * r)];
      float a0 = v[0] + v[1], a1 = v[0] - v[1], a2 = v[2] + v[3], a3 = v[2] - v[3];
      v[0] = a0 + a2; v[2] = a0 - a2; v[1] = a1 + a3; v[3] = a1 - a3;
#pragma unroll
      for (int j = 0; j < 5; ++j) {
        const bool upper = (l >> j) & 1;
#pragma unroll
        for (int r = 0; r < 4; ++r) v[r] = butterfly(v[r], __shfl_xor_sync(0xFFFFFFFFu, v[r], 1 << j), upper);
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) z[zp(t + T * r)] = v[r];
    }
    __syncthreads();
    const int nb = k - 7;  // bits 5..k-3, processed on the low nb lane bits in layout B
    if (nb > 0) {
      const int m = (1 << nb) - 1;
      const int low5 = w | (l & ~m);
      int idx[4];
      if (active) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          idx[r] = zp(low5 | ((l & m) << 5) | (r << (k - 2)));
          v[r] = z[idx[r]];
        }
        for (int j = 0; j < nb; ++j) {
          const bool upper = (l >> j) & 1;
#pragma unroll
          for (int r = 0; r < 4; ++r) v[r] = butterfly(v[r], __shfl_xor_sync(0xFFFFFFFFu, v[r], 1 << j), upper);
        }
      }
      __syncthreads();
      if (active)
#pragma unroll
        for (int r = 0; r < 4; ++r) z[idx[r]] = v[r];
      __syncthreads();
    }
    return;
  }
  for (int lh = 0; lh < k; ++lh) {
    const int h = 1 << lh;
    for (int q = threadIdx.x; q < b / 2; q += blockDim.x) {
      const int i = ((q >> lh) << (lh + 1)) | (q & (h - 1));
      const float u = z[zp(i)], x = z[zp(i + h)];
      z[zp(i)] = u + x;
      z[zp(i + h)] = u - x;
    }
    __syncthreads();
  }
}

// Mixing of a whole vector in shared memory for the per-vector kernels: out(o) for every o of
// (Q ⊗ I) buf (transpose: Q^T ⊗ I), times 1/sqrt(b). Q is staged in shared memory (qs, a·a) and
// each thread computes 4 rows i of one column j at once: 4 independent accumulator chains and
// one shared load of buf per 4 multiply-adds, instead of one dependent chain of global loads.
template <typename Store>
__device__ __forceinline__ void mix_block(const TransformShape& t, const float* buf, float* qs, bool transpose,
                                          Store store) {
  const int a = t.a, b = 1 << t.log2b, n = t.n;
  if (a == 1) {
    for (int o = threadIdx.x; o < n; o += blockDim.x) store(o, buf[o] * t.inv_sqrt_b);
    return;
  }
  if (a <= 32) {
    // Small a (the common case, e.g. 28 for 14336): each thread takes one column j and all a
    // rows in registers; the rows of Q (padded to a multiple of 4) come from shared memory as
    // broadcast float4 loads, so a multiply-add costs ~1.25 instructions instead of ~2.5.
    const int ap = (a + 3) & ~3;
    for (int k = threadIdx.x; k < a * ap; k += blockDim.x) {
      const int r = k / ap, c = k - r * ap;
      qs[k] = c >= a ? 0.0f : transpose ? __ldg(t.q + c * a + r) : __ldg(t.q + r * a + c);
    }
    __syncthreads();
    for (int j = threadIdx.x; j < b; j += blockDim.x) {
      float y[32];
#pragma unroll
      for (int k = 0; k < 32; ++k) y[k] = k < a ? buf[(k << t.log2b) + j] : 0.0f;
      for (int i = 0; i < a; ++i) {
        const float4* qr = reinterpret_cast<const float4*>(qs + i * ap);
        float acc0 = 0.0f, acc1 = 0.0f;
#pragma unroll
        for (int k4 = 0; k4 < 8; ++k4)
          if (4 * k4 < a) {
            const float4 qv = qr[k4];
            acc0 = fmaf(qv.x, y[4 * k4], acc0);
            acc1 = fmaf(qv.y, y[4 * k4 + 1], acc1);
            acc0 = fmaf(qv.z, y[4 * k4 + 2], acc0);
            acc1 = fmaf(qv.w, y[4 * k4 + 3], acc1);
          }
        store((i << t.log2b) + j, (acc0 + acc1) * t.inv_sqrt_b);
      }
    }
    return;
  }
  for (int k = threadIdx.x; k < a * a; k += blockDim.x) {
    const int r = k / a, c = k - r * a;
    qs[k] = transpose ? __ldg(t.q + c * a + r) : __ldg(t.q + k);  // qs = Q or Q^T, row-major
  }
  __syncthreads();
  const int chunks = (a + 3) / 4;
  for (int idx = threadIdx.x; idx < b * chunks; idx += blockDim.x) {
    const int ic = idx >> t.log2b, j = idx & (b - 1), i0 = ic * 4;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int rows = min(4, a - i0);
#pragma unroll 4
    for (int k = 0; k < a; ++k) {
      const float y = buf[(k << t.log2b) + j];
#pragma unroll
      for (int ii = 0; ii < 4; ++ii)
        if (ii < rows) acc[ii] = fmaf(qs[(i0 + ii) * a + k], y, acc[ii]);
    }
#pragma unroll
    for (int ii = 0; ii < 4; ++ii)
      if (ii < rows) store(((i0 + ii) << t.log2b) + j, acc[ii] * t.inv_sqrt_b);
  }
}

__global__ void prepare_kernel(const PrepareParams p) {
  extern __shared__ float buf[];  // (n) one vector, then Q (a, a)
  __shared__ float red[32];
  const int n = p.t.n;
  const size_t vec = blockIdx.x;
  const float* xv = p.x ? p.x + vec * p.ld_x : nullptr;
  float ss = 0.0f;
  const bool plain = p.pre == PreOp::Plain;
  if (plain) {
    // All loads of a thread in flight at once (a loop with the pre-operations below is not
    // unrolled: one HBM round trip per element, which made this kernel ~5x slower).
#pragma unroll 8
    for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = xv[i] * (p.t.sign ? __ldg(p.t.sign + i) : 1.0f);
  } else {
#pragma unroll 4
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    float v;
    if (p.pre == PreOp::SwiGlu) {
      const float g = xv[i], u = xv[n + i];
      v = g / (1.0f + __expf(-g)) * u;
    } else {
      v = xv[i];
    }
    ss += v * v;
    buf[i] = v;
  }
  }
  if (p.zero_ptr)
    for (int i = threadIdx.x; i < p.zero_count; i += blockDim.x) p.zero_ptr[vec * p.zero_count + i] = 0.0f;
  if (p.pre == PreOp::RmsNorm) {
    const float r = rsqrtf(block_sum(ss, red) / float(n) + p.eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
      buf[i] *= r * __ldg(p.norm_w + i) * (p.t.sign ? __ldg(p.t.sign + i) : 1.0f);
  } else if (p.t.sign && !plain) {
#pragma unroll 8
    for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] *= __ldg(p.t.sign + i);
  }
  __syncthreads();
  fwht_rows(buf, n, p.t.log2b);
  mix_block(p.t, buf, buf + n, false, [&](int o, float v) {
    if (p.out_type == OutType::Half)
      static_cast<__half*>(p.out)[vec * p.ld_out + o] = __float2half_rn(v);
    else
      static_cast<__nv_bfloat16*>(p.out)[vec * p.ld_out + o] = __float2bfloat16_rn(v);
  });
}

// Element i of ỹ of vector vec: the sum of its parts.
__device__ __forceinline__ float yt_value(const FinishParams& p, size_t vec, int i) {
  if (p.yt_half) return __half2float(reinterpret_cast<const __half*>(p.yt_half)[vec * p.ld_in + i]);
  const float* y = p.yt + vec * p.ld_in + i;
  if (p.parts == 1) return y[0];
  // Independent loads (unrolled, predicated): one round trip for all parts, not one each.
  float v[16];
#pragma unroll
  for (int k = 0; k < 16; ++k) v[k] = k < p.parts ? y[k * p.part_stride] : 0.0f;
#pragma unroll
  for (int k = 8; k > 0; k >>= 1)
#pragma unroll
    for (int q = 0; q < k; ++q) v[q] += v[q + k];
  return v[0];
}

// Elements 4·k4 .. 4·k4 + 3 of ỹ of vector vec (the sums of its ≤ 4 parts); ld_in, part_stride
// and the base 16-byte aligned.
__device__ __forceinline__ float4 yt_value4(const FinishParams& p, size_t vec, int k4) {
  if (p.yt_half) {
    const uint2 u = reinterpret_cast<const uint2*>(p.yt_half + vec * p.ld_in)[k4];
    const float2 lo = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
    const float2 hi = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
    return make_float4(lo.x, lo.y, hi.x, hi.y);
  }
  const float4* y = reinterpret_cast<const float4*>(p.yt + vec * p.ld_in) + k4;
  if (p.parts == 1) return y[0];
  float4 v[4];  // parts ≤ 4 here (registers: the row kernels run 1024 threads)
#pragma unroll
  for (int k = 0; k < 4; ++k) v[k] = k < p.parts ? y[k * (p.part_stride / 4)] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  return make_float4((v[0].x + v[1].x) + (v[2].x + v[3].x), (v[0].y + v[1].y) + (v[2].y + v[3].y),
                     (v[0].z + v[1].z) + (v[2].z + v[3].z), (v[0].w + v[1].w) + (v[2].w + v[3].w));
}

__global__ void finish_kernel(const FinishParams p) {
  extern __shared__ float buf[];  // (n) one vector, then Q (a, a)
  const int n = p.t.n;
  const size_t vec = blockIdx.x;
#pragma unroll 8
  for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = yt_value(p, vec, i);
  __syncthreads();
  fwht_rows(buf, n, p.t.log2b);
  float* yv = p.y + vec * p.ld_out;
  mix_block(p.t, buf, buf + n, true, [&](int o, float v) {
    if (p.t.sign) v *= __ldg(p.t.sign + o);
    yv[o] = p.accumulate ? yv[o] + v : v;
  });
}

// Value i of pre(x) of vector vec, for the row kernels. scale: 1/rms for RmsNorm.
template <PreOp kPre>
__device__ __forceinline__ float pre_value(const PrepareParams& p, size_t vec, int i, float scale) {
  const int n = p.t.n;
  switch (kPre) {
    case PreOp::SwiGlu: {
      const float* xv = p.x + vec * p.ld_x;
      const float g = xv[i], u = xv[n + i];
      return g / (1.0f + __expf(-g)) * u;
    }
    case PreOp::RmsNorm:
      return p.x[vec * p.ld_x + i] * scale * __ldg(p.norm_w + i);
    default:
      return p.x[vec * p.ld_x + i];
  }
}

// Q[i, k] of a row kernel's shape.
__device__ __forceinline__ float q_entry(const TransformShape& t, int i, int k) {
  if (t.sylvester) return (__popc(i & k) & 1 ? -1.0f : 1.0f) * rsqrtf(float(t.a));
  return __ldg(t.q + i * t.a + k);
}

// dst[k] = (norm_w ∘ sign)[4k .. 4k+3] for k < n/4, thread k mod blockDim writing k (RMSNorm's
// constant factors, staged before the wait on the kernel that writes x). 16-byte aligned inputs.
__device__ __forceinline__ void stage_norm_sign(float4* dst, const float* norm_w, const float* sign, int n) {
  const float4* w4 = reinterpret_cast<const float4*>(norm_w);
  const float4* sg4 = reinterpret_cast<const float4*>(sign);
#pragma unroll 4
  for (int k = threadIdx.x; k < n / 4; k += blockDim.x) {
    float4 w = __ldg(w4 + k);
    if (sg4) {
      const float4 sg = __ldg(sg4 + k);
      w.x *= sg.x; w.y *= sg.y; w.z *= sg.z; w.w *= sg.w;
    }
    dst[k] = w;
  }
}

// Row-parallel input transform, for few vectors: block (i, vec) computes row i of the a×b view
// of T (sign ∘ pre(x)) = (Q ⊗ H/√b)(...): first its row of the mixing, z = Σ_k Q[i,k] x_k
// (the mixing and the FWHT commute), then the FWHT of z in shared memory. The a blocks of a
// vector run in parallel instead of one block doing a·n mixing work alone. With a > 1 the whole
// vector is first staged in shared memory (when it fits: `staged`), so that its global loads
// are all in flight at once rather than one dependent load per mixing term.
template <PreOp kPre>
__global__ void prepare_rows_kernel(const PrepareParams p, int staged) {
  extern __shared__ float sm[];  // z (padded b), then the staged vector (n), then row i of Q (a)
  __shared__ float red[32];
  const int i = blockIdx.x;
  const size_t vec = blockIdx.y;
  const int n = p.t.n, a = p.t.a, b = 1 << p.t.log2b;
  float* z = sm;
  float* xs = sm + zp(b);
  float* qrow = xs + (staged ? n : 0);
  // Q is a constant of the weight: fetched before waiting on the kernel that writes x, so that
  // the mixing below reads shared memory instead of making its first global round trips then.
  if (a > 1)
    for (int k = threadIdx.x; k < a; k += blockDim.x) qrow[k] = q_entry(p.t, i, k);
  // Staged with 16-byte loads (every pre-operation): one round trip for the whole vector after
  // the wait. For RMSNorm the weight's factors (norm weight ∘ sign) are staged first, before the
  // wait, x is multiplied in as it arrives and the 1/rms factor is applied to the mixed row.
  const float* xv = p.x + vec * p.ld_x;
  const bool vec4 = staged && !(n & 3) &&
                    !((reinterpret_cast<uintptr_t>(xv) | reinterpret_cast<uintptr_t>(p.t.sign) |
                       reinterpret_cast<uintptr_t>(p.norm_w) | reinterpret_cast<uintptr_t>(xs)) & 15) &&
                    (kPre != PreOp::SwiGlu || !((reinterpret_cast<uintptr_t>(xv + n)) & 15));
  float4* x4 = reinterpret_cast<float4*>(xs);
  const float4* sg4 = reinterpret_cast<const float4*>(p.t.sign);
  if (vec4 && kPre == PreOp::RmsNorm) stage_norm_sign(x4, p.norm_w, p.t.sign, n);  // read back by the same thread below
  pdl_trigger();
  pdl_wait();
  float scale = 1.0f;      // RMSNorm's 1/rms as pre_value() reads x
  float row_scale = 1.0f;  // ... or, staged with 16-byte loads, on the mixed row
  if (vec4) {
    float ss = 0.0f;
    const float4* xv4 = reinterpret_cast<const float4*>(xv);
#pragma unroll 4
    for (int k = threadIdx.x; k < n / 4; k += blockDim.x) {
      float4 v = xv4[k];
      if (kPre == PreOp::SwiGlu) {
        const float4 u = xv4[n / 4 + k];
        v.x = v.x / (1.0f + __expf(-v.x)) * u.x;
        v.y = v.y / (1.0f + __expf(-v.y)) * u.y;
        v.z = v.z / (1.0f + __expf(-v.z)) * u.z;
        v.w = v.w / (1.0f + __expf(-v.w)) * u.w;
      }
      if (kPre == PreOp::RmsNorm) {
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        const float4 w = x4[k];
        v.x *= w.x; v.y *= w.y; v.z *= w.z; v.w *= w.w;
      } else if (sg4) {
        const float4 sg = __ldg(sg4 + k);
        v.x *= sg.x; v.y *= sg.y; v.z *= sg.z; v.w *= sg.w;
      }
      x4[k] = v;
    }
    if (kPre == PreOp::RmsNorm) row_scale = rsqrtf(block_sum(ss, red) / float(n) + p.eps);
  } else if (kPre == PreOp::RmsNorm) {
    float ss = 0.0f;
#pragma unroll 8
    for (int k = threadIdx.x; k < n; k += blockDim.x) ss += xv[k] * xv[k];
    scale = rsqrtf(block_sum(ss, red) / float(n) + p.eps);
  }
  if (p.zero_ptr) {
    const int per = (p.zero_count + a - 1) / a;
    const int end = min(p.zero_count, (i + 1) * per);
    for (int k = i * per + threadIdx.x; k < end; k += blockDim.x) p.zero_ptr[vec * p.zero_count + k] = 0.0f;
  }
  if (a == 1) {
#pragma unroll 4
    for (int j = threadIdx.x; j < b; j += blockDim.x)
      z[zp(j)] = pre_value<kPre>(p, vec, j, scale) * (p.t.sign ? __ldg(p.t.sign + j) : 1.0f);
  } else if (staged) {
    if (!vec4) {
#pragma unroll 8
      for (int k = threadIdx.x; k < n; k += blockDim.x)
        xs[k] = pre_value<kPre>(p, vec, k, scale) * (p.t.sign ? __ldg(p.t.sign + k) : 1.0f);
    }
    __syncthreads();
    for (int j = threadIdx.x; j < b; j += blockDim.x) {
      float v = 0.0f;
#pragma unroll 4
      for (int k = 0; k < a; ++k) v = fmaf(qrow[k], xs[k * b + j], v);
      z[zp(j)] = v * row_scale;
    }
  } else {
    __syncthreads();
    for (int j = threadIdx.x; j < b; j += blockDim.x) {
      float v = 0.0f;
#pragma unroll 4
      for (int k = 0; k < a; ++k) {
        const int idx = k * b + j;
        v = fmaf(qrow[k], pre_value<kPre>(p, vec, idx, scale) * (p.t.sign ? __ldg(p.t.sign + idx) : 1.0f), v);
      }
      z[zp(j)] = v;
    }
  }
  __syncthreads();
  fwht_padded(z, p.t.log2b);
  for (int j = threadIdx.x; j < b; j += blockDim.x) {
    const float v = z[zp(j)] * p.t.inv_sqrt_b;
    const size_t o = vec * p.ld_out + size_t(i) * b + j;
    if (p.out_type == OutType::Half)
      static_cast<__half*>(p.out)[o] = __float2half_rn(v);
    else
      static_cast<__nv_bfloat16*>(p.out)[o] = __float2bfloat16_rn(v);
  }
}

// Row-parallel output transform: block (i, vec) writes row i of sign ∘ (Q^T ⊗ H/√b) ỹ.
__global__ void finish_rows_kernel(const FinishParams p, int staged) {
  // z (padded b), then the staged vector (n), column i of Q (a), the signs of row i (b)
  extern __shared__ float sm[];
  const int i = blockIdx.x;
  const size_t vec = blockIdx.y;
  const int n = p.t.n, a = p.t.a, b = 1 << p.t.log2b;
  float* z = sm;
  float* ys = sm + zp(b);
  float* qcol = ys + (staged ? n : 0);
  float* sg = qcol + (a > 1 ? a : 0);
  // Constants of the weight, fetched before waiting on the decode kernel that writes ỹ: the
  // last step then reads its signs from shared memory instead of making one more round trip.
  if (a > 1)
    for (int k = threadIdx.x; k < a; k += blockDim.x) qcol[k] = q_entry(p.t, k, i);
  if (p.t.sign)
    for (int j = threadIdx.x; j < b; j += blockDim.x) sg[j] = __ldg(p.t.sign + i * b + j);
  pdl_trigger();
  pdl_wait();
  const float* yv = p.yt + vec * p.ld_in;
  if (a == 1) {
#pragma unroll 4
    for (int j = threadIdx.x; j < b; j += blockDim.x) z[zp(j)] = yt_value(p, vec, j);
  } else if (staged) {
    const bool vec4 = !(n & 3) && !(p.ld_in & 3) && !(p.part_stride & 3) && p.parts <= 4 &&
                      !((reinterpret_cast<uintptr_t>(p.yt_half ? static_cast<const void*>(p.yt_half) : p.yt) |
                         reinterpret_cast<uintptr_t>(ys)) & 15);
    if (vec4) {
      // 4 elements per load (16 bytes, 8 in fp16): the whole of ỹ in one round trip.
#pragma unroll 4
      for (int k = threadIdx.x; k < n / 4; k += blockDim.x) reinterpret_cast<float4*>(ys)[k] = yt_value4(p, vec, k);
    } else {
#pragma unroll 8
      for (int k = threadIdx.x; k < n; k += blockDim.x) ys[k] = yt_value(p, vec, k);
    }
    __syncthreads();
    for (int j = threadIdx.x; j < b; j += blockDim.x) {
      float v = 0.0f;
#pragma unroll 4
      for (int k = 0; k < a; ++k) v = fmaf(qcol[k], ys[k * b + j], v);
      z[zp(j)] = v;
    }
  } else {
    __syncthreads();
    for (int j = threadIdx.x; j < b; j += blockDim.x) {
      float v = 0.0f;
#pragma unroll 4
      for (int k = 0; k < a; ++k) v = fmaf(qcol[k], p.parts > 1 || p.yt_half ? yt_value(p, vec, k * b + j) : yv[k * b + j], v);
      z[zp(j)] = v;
    }
  }
  __syncthreads();
  fwht_padded(z, p.t.log2b);
  float* out = p.y + vec * p.ld_out + size_t(i) * b;
  for (int j = threadIdx.x; j < b; j += blockDim.x) {
    float v = z[zp(j)] * p.t.inv_sqrt_b;
    if (p.t.sign) v *= sg[j];
    out[j] = p.accumulate ? out[j] + v : v;
  }
}

// ---- One product's output side and the next one's input side in one kernel ------------------
//
// Block (i, vec) of bridge_rows_kernel: h_out = h_in + sign_out ∘ (T_outᵀ ỹ) (+ bias), then row i
// (of the row kernels' view p.t) of T_in (sign_in ∘ RMSNorm(h_out)), the work of finish_rows_kernel
// and prepare_rows_kernel<RmsNorm> with one kernel boundary and one round trip fewer. RMSNorm needs
// the whole of h_out, so every block computes all of it (the whole output transform; it reads ỹ
// and h_in from L2) and writes only its own slice, the elements of its input row. h_out must not
// be h_in: the blocks read h_in while others write.
__global__ void __launch_bounds__(1024) bridge_rows_kernel(const FinishParams f, const PrepareParams p,
                                                          float* __restrict__ h_out, const float* __restrict__ bias) {
  extern __shared__ __align__(16) float sm[];
  __shared__ float red[32];
  const int i = blockIdx.x;
  const size_t vec = blockIdx.y;
  const int n = f.t.n, ao = f.t.a, lbo = f.t.log2b, bo = 1 << lbo, rpo = bo + bo / 32;
  const int ai = p.t.a, lbi = p.t.log2b, bi = 1 << lbi;
  const int ys_len = (ao * rpo + 3) & ~3;
  float* ys = sm;          // ỹ, its a_out rows padded (zp)
  float* ws = ys + ys_len;  // norm weight ∘ sign_in, then h_out ∘ those
  float* hs = ws + n;      // h_in
  float* z = hs + n;       // row i of the input side (padded)
  float* qrow = z + ((bi + bi / 32 + 3) & ~3);  // row i of Q_in (a_in)
  float* qs = qrow + ai;   // Q_outᵀ (a_out × a_out): qs[r·a_out + k] = Q_out[k, r]
  float2* sb = reinterpret_cast<float2*>(qrow + ((ai + ao * ao + 1) & ~1));  // (sign_out, bias) per element
  // Constants of the weights first, before waiting on the decode kernel that writes ỹ: the
  // steps after the wait read shared memory only, besides ỹ and h_in.
  for (int o = threadIdx.x; o < n; o += blockDim.x)
    sb[o] = make_float2(f.t.sign ? __ldg(f.t.sign + o) : 1.0f, bias ? __ldg(bias + o) : 0.0f);
  if (ai > 1)
    for (int k = threadIdx.x; k < ai; k += blockDim.x) qrow[k] = q_entry(p.t, i, k);
  if (ao > 1)
    for (int e = threadIdx.x; e < ao * ao; e += blockDim.x) qs[e] = q_entry(f.t, e % ao, e / ao);
  stage_norm_sign(reinterpret_cast<float4*>(ws), p.norm_w, p.t.sign, n);
  pdl_trigger();
  pdl_wait();
  // ỹ (the sum of its slices) and h_in: every load in flight at once.
  const float4* h4 = reinterpret_cast<const float4*>(f.y + vec * f.ld_out);
#pragma unroll 4
  for (int k = threadIdx.x; k < n / 4; k += blockDim.x) {
    const float4 v = yt_value4(f, vec, k);
    reinterpret_cast<float4*>(hs)[k] = h4[k];
    const int o = 4 * k, r = o >> lbo, j = o & (bo - 1);
    float* row = ys + r * rpo;
    row[zp(j)] = v.x;
    row[zp(j + 1)] = v.y;
    row[zp(j + 2)] = v.z;
    row[zp(j + 3)] = v.w;
  }
  __syncthreads();
  for (int r = 0; r < ao; ++r) fwht_padded(ys + r * rpo, lbo);
  // h_out, its slice written; RMSNorm's sum of squares; h_out ∘ norm weight ∘ sign_in into ws.
  float ss = 0.0f;
  float* ho = h_out + vec * f.ld_out;
  for (int o = threadIdx.x; o < n; o += blockDim.x) {
    const int r = o >> lbo, j = o & (bo - 1);
    float v;
    if (ao == 1) {
      v = ys[zp(j)];
    } else {
      v = 0.0f;
      for (int k = 0; k < ao; ++k) v = fmaf(qs[r * ao + k], ys[k * rpo + zp(j)], v);
    }
    const float2 c = sb[o];
    const float h = hs[o] + fmaf(v * f.t.inv_sqrt_b, c.x, c.y);
    if ((o >> lbi) == i) ho[o] = h;
    ss += h * h;
    ws[o] *= h;
  }
  const float rs = rsqrtf(block_sum(ss, red) / float(n) + p.eps);  // (its barriers publish ws)
  if (p.zero_ptr) {
    const int per = (p.zero_count + ai - 1) / ai;
    const int end = min(p.zero_count, (i + 1) * per);
    for (int k = i * per + threadIdx.x; k < end; k += blockDim.x) p.zero_ptr[vec * p.zero_count + k] = 0.0f;
  }
  for (int j = threadIdx.x; j < bi; j += blockDim.x) {
    float v;
    if (ai == 1) {
      v = ws[j];
    } else {
      v = 0.0f;
#pragma unroll 4
      for (int k = 0; k < ai; ++k) v = fmaf(qrow[k], ws[k * bi + j], v);
    }
    z[zp(j)] = v * rs;
  }
  __syncthreads();
  fwht_padded(z, lbi);
  __half* out = static_cast<__half*>(p.out) + vec * p.ld_out + size_t(i) * bi;
  for (int j = threadIdx.x; j < bi; j += blockDim.x) out[j] = __float2half_rn(z[zp(j)] * p.t.inv_sqrt_b);
}

// ---- Many vectors, input side: row groups of a vector per block, every step coalesced -------
//
// Block (g, vec) computes rows [g·R, g·R + R) (R ≤ 8) of the a×b view of the result, in three
// steps that read and write shared memory without bank conflicts:
//   1. mixing (it commutes with the FWHT): thread j walks column j of X (coalesced loads, with
//      sign and pre() applied) and accumulates its R mixed values in registers, with the R
//      coefficients of each term one broadcast float4 pair from shared memory; the R rows go
//      to z (R·b floats in shared memory);
//   2. low FWHT bits: each warp takes chunks of C = min(b, 1024) contiguous elements, lane l
//      holding elements c·32 + l (c < C/32) in registers: the bits above the lane are
//      butterflies in registers, the 5 lane bits warp shuffles;
//   3. high FWHT bits (b > 1024): thread (row, lo) holds elements lo + h·C of a row in
//      registers, runs the remaining stages there and writes the result straight to global
//      memory (consecutive threads, consecutive elements).
// Below 256 vectors a vector is split into G = ceil(a/8) blocks (the grid stays full at batch
// 64; the G blocks read it G times, mostly from L2); from 256 on one block takes all G groups.
// Used for a ≤ 32 and 32 ≤ b ≤ 32768. (The same structure for the output side measured slower
// than finish_rows_kernel / finish_kernel on an H100 at batch 64 and 2048, so it is not used
// there; see docs/cuda.md.)
constexpr int kManyThreads = 512;
constexpr int kManyMaxA = 32;
constexpr int kManyRows = 8;

struct ManySplit {
  int groups = 1, rows = 1;  // G blocks per vector, R rows each (the last may have fewer)
};

__host__ __device__ inline ManySplit many_split(int a) {
  ManySplit s;
  s.groups = (a + kManyRows - 1) / kManyRows;
  s.rows = (a + s.groups - 1) / s.groups;
  return s;
}

// qs[k·8 + r] = M[i0 + r, k] for r < rows (zero beyond), M = Q or Q^T.
__device__ __forceinline__ void stage_q_rows(const TransformShape& t, float* qs, bool transpose, int i0, int rows) {
  const int a = t.a;
  for (int e = threadIdx.x; e < a * kManyRows; e += blockDim.x) {
    const int k = e / kManyRows, r = e - k * kManyRows;
    const int i = i0 + r;
    qs[e] = r >= rows ? 0.0f : transpose ? __ldg(t.q + k * a + i) : __ldg(t.q + i * a + k);
  }
}

// Step 1 for column j: z[r·b + j] = Σ_k qs[k·8 + r] · load(k·b + j), r < rows.
template <typename Load>
__device__ __forceinline__ void mix_rows(const float* qs, int a, int log2b, int j, int rows, float* z, Load load) {
  float acc[kManyRows];
#pragma unroll
  for (int r = 0; r < kManyRows; ++r) acc[r] = 0.0f;
  const float4* q4 = reinterpret_cast<const float4*>(qs);
#pragma unroll 8
  for (int k = 0; k < a; ++k) {
    const float y = load((k << log2b) + j);
    const float4 qa = q4[2 * k], qb = q4[2 * k + 1];
    acc[0] = fmaf(qa.x, y, acc[0]);
    acc[1] = fmaf(qa.y, y, acc[1]);
    acc[2] = fmaf(qa.z, y, acc[2]);
    acc[3] = fmaf(qa.w, y, acc[3]);
    acc[4] = fmaf(qb.x, y, acc[4]);
    acc[5] = fmaf(qb.y, y, acc[5]);
    acc[6] = fmaf(qb.z, y, acc[6]);
    acc[7] = fmaf(qb.w, y, acc[7]);
  }
#pragma unroll
  for (int r = 0; r < kManyRows; ++r)
    if (r < rows) z[(r << log2b) + j] = acc[r];
}

// In-place Walsh-Hadamard butterflies over the first n registers of v (n a power of two ≤ N).
template <int N>
__device__ __forceinline__ void fwht_registers(float (&v)[N], int n) {
#pragma unroll
  for (int h = 1; h < N; h <<= 1) {
    if (h < n) {
#pragma unroll
      for (int c = 0; c < N; ++c)
        if (!(c & h) && c + h < n) {
          const float u = v[c], w = v[c + h];
          v[c] = u + w;
          v[c + h] = u - w;
        }
    }
  }
}

// Steps 2 and 3 on z (n = a·b floats); store(o, v) receives every element once, unscaled.
template <typename Store>
__device__ __forceinline__ void fwht_many(float* z, int n, int log2b, Store store) {
  const int lc = min(log2b, 10), C = 1 << lc, E = C >> 5;
  const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  for (int ch = threadIdx.x >> 5; ch < (n >> lc); ch += nw) {
    float* base = z + (size_t(ch) << lc) + lane;
    float v[32];
#pragma unroll
    for (int c = 0; c < 32; ++c)
      if (c < E) v[c] = base[c * 32];
    fwht_registers(v, E);
#pragma unroll
    for (int s = 0; s < 5; ++s) {
      const bool upper = (lane >> s) & 1;
#pragma unroll
      for (int c = 0; c < 32; ++c)
        if (c < E) v[c] = butterfly(v[c], __shfl_xor_sync(0xFFFFFFFFu, v[c], 1 << s), upper);
    }
    if (lc == log2b) {
      // No high bits: this chunk is one row (or part of one) and goes out from here.
#pragma unroll
      for (int c = 0; c < 32; ++c)
        if (c < E) store((ch << lc) + c * 32 + lane, v[c]);
    } else {
#pragma unroll
      for (int c = 0; c < 32; ++c)
        if (c < E) base[c * 32] = v[c];
    }
  }
  if (lc == log2b) return;
  __syncthreads();
  const int H = 1 << (log2b - lc);
  for (int it = threadIdx.x; it < (n >> (log2b - lc)); it += blockDim.x) {
    const int row = it >> lc, lo = it & (C - 1);
    const int o0 = (row << log2b) + lo;
    float v[32];
#pragma unroll
    for (int h = 0; h < 32; ++h)
      if (h < H) v[h] = z[o0 + h * C];
    fwht_registers(v, H);
#pragma unroll
    for (int h = 0; h < 32; ++h)
      if (h < H) store(o0 + h * C, v[h]);
  }
}

template <PreOp kPre>
__global__ void __launch_bounds__(kManyThreads, 2) prepare_many_kernel(const PrepareParams p, int per_block) {
  extern __shared__ float sm[];  // z (R·b), then the R coefficients per term (a, 8)
  __shared__ float red[32];
  const int n = p.t.n, a = p.t.a, log2b = p.t.log2b, b = 1 << log2b;
  const ManySplit sp = many_split(a);
  const int g = blockIdx.x, i0 = g * per_block * sp.rows, rows = min(per_block * sp.rows, a - i0);
  const size_t vec = blockIdx.y;
  float* z = sm;
  float* qs = sm + (size_t(per_block * sp.rows) << log2b);
  if (a > 1)
    for (int lg = 0; lg * sp.rows < rows; ++lg)
      stage_q_rows(p.t, qs + lg * a * kManyRows, false, i0 + lg * sp.rows, min(sp.rows, rows - lg * sp.rows));
  float scale = 1.0f;
  if (kPre == PreOp::RmsNorm) {
    const float* xv = p.x + vec * p.ld_x;
    float ss = 0.0f;
#pragma unroll 8
    for (int k = threadIdx.x; k < n; k += blockDim.x) ss += xv[k] * xv[k];
    scale = rsqrtf(block_sum(ss, red) / float(n) + p.eps);
  }
  if (p.zero_ptr) {
    const int per = (p.zero_count + sp.groups - 1) / sp.groups;
    const int end = min(p.zero_count, (g + 1) * per);
    for (int k = g * per + threadIdx.x; k < end; k += blockDim.x) p.zero_ptr[vec * p.zero_count + k] = 0.0f;
  }
  __syncthreads();
  auto load = [&](int idx) { return pre_value<kPre>(p, vec, idx, scale) * (p.t.sign ? __ldg(p.t.sign + idx) : 1.0f); };
  if (a == 1) {
#pragma unroll 8
    for (int j = threadIdx.x; j < b; j += blockDim.x) z[j] = load(j);
  } else {
    for (int lg = 0; lg * sp.rows < rows; ++lg)
      for (int j = threadIdx.x; j < b; j += blockDim.x)
        mix_rows(qs + lg * a * kManyRows, a, log2b, j, min(sp.rows, rows - lg * sp.rows),
                 z + (size_t(lg * sp.rows) << log2b), load);
  }
  __syncthreads();
  const float s = p.t.inv_sqrt_b;
  const size_t base = vec * p.ld_out + (size_t(i0) << log2b);
  if (p.out_type == OutType::Half) {
    __half* out = static_cast<__half*>(p.out) + base;
    fwht_many(z, rows << log2b, log2b, [&](int o, float v) { out[o] = __float2half_rn(v * s); });
  } else {
    __nv_bfloat16* out = static_cast<__nv_bfloat16*>(p.out) + base;
    fwht_many(z, rows << log2b, log2b, [&](int o, float v) { out[o] = __float2bfloat16_rn(v * s); });
  }
}

// ---- Many vectors, whole vector per block ("wide"): one read, one write, nothing else ---------
//
// Block vec transforms vector vec in three steps, every global access 16 bytes (8 for fp16
// output) and coalesced, every element of x read once and of the result written once:
//   1. the vector goes to shared memory: plain fp32 rows by 16-byte cp.async copies (all of a
//      block's loads in flight at once, no registers held), fused pre-operations through
//      pre_value() (SwiGLU, attention merge), else plain loads;
//   2. the FWHT of its a rows, in place (it commutes with the mixing, so it runs first): chunks
//      of C = min(b, 1024) per warp, lane l holding elements l + 32c in registers (the bits
//      above the lane: butterflies in registers; the lane bits: shuffles, one FFMA each), the
//      sign / RMSNorm factors and 1/√b applied as the chunk is read; for b > 1024 a second pass
//      over the high bits, thread (row, lo) holding elements lo + 1024h;
//   3. thread (g, c) mixes rows [g·R, g·R + R) of columns 4c..4c+3 (R ≤ 8: a float4 of z per
//      term, the R coefficients one broadcast float4 pair) and stores them at once: fp16/bf16
//      x̃, or sign ∘ y in fp32 (added into y for the fused residual).
// 256 threads; a block holds n + 8·a·ceil(a/8) floats of shared memory (61 KB for 14336, 3
// blocks per SM), so other blocks' loads overlap a block's arithmetic. Used for a ≤ 64,
// 32 ≤ b ≤ 32768 and rows aligned to 16 bytes (GLQ_CUDA_TRANSFORM_WIDE=0: never;
// GLQ_CUDA_TRANSFORM_WIDE_MIN=N: from N vectors on). Measured and not kept (H100, docs/cuda.md):
// the mixing on the tensor cores (mma.m16n8k16, operands split into fp16 hi + lo parts) was as
// fast on the input side and slower on the output side; persistent blocks of 512 threads with
// two buffers (the next vector's copies in flight during the current one's arithmetic) were
// 5-10% slower than three independent blocks per SM.
constexpr int kWideThreads = 256;
constexpr int kWideMaxA = 64;

__device__ __forceinline__ void wide_cp_wait() {
  cp_async_commit();
  cp_async_wait<0>();
}

__host__ __device__ constexpr int b_of(int log2b) { return 1 << log2b; }

__host__ __device__ inline int wide_rows(int a) {
  const int groups = (a + 7) / 8;
  return (a + groups - 1) / groups;  // R: rows per group, a = groups·R or less in the last
}

// Position of element i of the a×b view in shared memory (rows of ld floats).
__device__ __forceinline__ int wide_at(int i, int log2b, int ld) { return (i >> log2b) * ld + (i & ((1 << log2b) - 1)); }

// qs[(g·a + k)·8 + r] = M[g·R + r, k] for g·R + r < min(a, g·R + R) (zero beyond), M = Q or Q^T.
__device__ __forceinline__ void wide_stage_q(const TransformShape& t, float* qs, bool transpose) {
  const int a = t.a, R = wide_rows(a), G = (a + R - 1) / R;
  for (int e = threadIdx.x; e < G * a * 8; e += blockDim.x) {
    const int r = e & 7, k = (e >> 3) % a, g = (e >> 3) / a;
    const int i = g * R + r;
    qs[e] = (r >= R || i >= a) ? 0.0f : transpose ? __ldg(t.q + k * a + i) : __ldg(t.q + i * a + k);
  }
}

// Step 2, low bits: E = C/32 elements per lane; mul(i, v) gives the value of element i.
template <int E, typename Mul>
__device__ __forceinline__ void wide_fwht_low(float* z, int n, int log2b, int ld, Mul mul) {
  constexpr int C = 32 * E;
  const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  float sgn[5];
#pragma unroll
  for (int s = 0; s < 5; ++s) sgn[s] = ((lane >> s) & 1) ? -1.0f : 1.0f;
  for (int ch = threadIdx.x >> 5; ch < n / C; ch += nw) {
    float* base = z + wide_at(ch * C, log2b, ld) + lane;
    float v[E];
#pragma unroll
    for (int c = 0; c < E; ++c) v[c] = mul(ch * C + c * 32 + lane, base[c * 32]);
    fwht_registers(v, E);
#pragma unroll
    for (int s = 0; s < 5; ++s)
#pragma unroll
      for (int c = 0; c < E; ++c) v[c] = fmaf(sgn[s], v[c], __shfl_xor_sync(0xFFFFFFFFu, v[c], 1 << s));
#pragma unroll
    for (int c = 0; c < E; ++c) base[c * 32] = v[c];
  }
}

// Step 2, high bits of b = 1024·H.
template <int H>
__device__ __forceinline__ void wide_fwht_high(float* z, int n, int ld) {
  for (int it = threadIdx.x; it < n / H; it += blockDim.x) {
    float* base = z + (it >> 10) * ld + (it & 1023);
    float v[H];
#pragma unroll
    for (int h = 0; h < H; ++h) v[h] = base[h * 1024];
    fwht_registers(v, H);
#pragma unroll
    for (int h = 0; h < H; ++h) base[h * 1024] = v[h];
  }
}

// Step 2 over all a rows of z (n = a·b), ending with a barrier.
template <typename Mul>
__device__ __forceinline__ void wide_fwht(float* z, int n, int log2b, int ld, Mul mul) {
  switch (min(log2b, 10)) {
    case 5: wide_fwht_low<1>(z, n, log2b, ld, mul); break;
    case 6: wide_fwht_low<2>(z, n, log2b, ld, mul); break;
    case 7: wide_fwht_low<4>(z, n, log2b, ld, mul); break;
    case 8: wide_fwht_low<8>(z, n, log2b, ld, mul); break;
    case 9: wide_fwht_low<16>(z, n, log2b, ld, mul); break;
    default: wide_fwht_low<32>(z, n, log2b, ld, mul); break;
  }
  __syncthreads();
  if (log2b <= 10) return;
  switch (log2b) {
    case 11: wide_fwht_high<2>(z, n, ld); break;
    case 12: wide_fwht_high<4>(z, n, ld); break;
    case 13: wide_fwht_high<8>(z, n, ld); break;
    case 14: wide_fwht_high<16>(z, n, ld); break;
    default: wide_fwht_high<32>(z, n, ld); break;
  }
  __syncthreads();
}

// Step 3 on the CUDA cores, R = wide_rows(a) rows per group (RT ≥ R accumulator rows;
// coefficients beyond R are zero): store4(o, v) receives elements o..o+3 (o a multiple of 4).
template <int RT, typename Store4>
__device__ __forceinline__ void wide_mix_rows(const float* z, const float* qs, int a, int R, int log2b, int g0, int g1,
                                              Store4 store4) {
  const int lq = log2b - 2, quads = 1 << lq;
  const float4* z4 = reinterpret_cast<const float4*>(z);
  for (int it = threadIdx.x; it < ((g1 - g0) << lq); it += blockDim.x) {
    const int g = g0 + (it >> lq), c = it & (quads - 1);
    const float4* q4 = reinterpret_cast<const float4*>(qs) + size_t(g) * a * 2;
    float acc[RT][4];
#pragma unroll
    for (int r = 0; r < RT; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = 0.0f;
#pragma unroll 4
    for (int k = 0; k < a; ++k) {
      const float4 y = z4[(k << lq) + c];
      const float4 qa = q4[2 * k];
      const float4 qb = RT > 4 ? q4[2 * k + 1] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      const float q[8] = {qa.x, qa.y, qa.z, qa.w, qb.x, qb.y, qb.z, qb.w};
#pragma unroll
      for (int r = 0; r < RT; ++r) {
        acc[r][0] = fmaf(q[r], y.x, acc[r][0]);
        acc[r][1] = fmaf(q[r], y.y, acc[r][1]);
        acc[r][2] = fmaf(q[r], y.z, acc[r][2]);
        acc[r][3] = fmaf(q[r], y.w, acc[r][3]);
      }
    }
    const int i0 = g * R;
#pragma unroll
    for (int r = 0; r < RT; ++r)
      if (r < R && i0 + r < a) store4(((i0 + r) << log2b) + 4 * c, make_float4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
  }
}

// Step 3: store4(o, v) receives elements o..o+3 of the result (o a multiple of 4). With
// gridDim.y > 1 the row groups are split over the blocks of a vector (few vectors: each block
// transforms the whole vector, then mixes and stores only its share of the rows).
template <typename Store4>
__device__ __forceinline__ void wide_mix(const float* z, const float* qs, int a, int log2b, Store4 store4) {
  if (a == 1) {
    const float4* z4 = reinterpret_cast<const float4*>(z);
    for (int c = threadIdx.x; c < (1 << (log2b - 2)); c += blockDim.x) store4(4 * c, z4[c]);
    return;
  }
  const int R = wide_rows(a), G = (a + R - 1) / R;
  const int per = (G + gridDim.y - 1) / gridDim.y;
  const int g0 = min(G, int(blockIdx.y) * per), g1 = min(G, g0 + per);
  if (R <= 4) wide_mix_rows<4>(z, qs, a, R, log2b, g0, g1, store4);
  else if (R <= 6) wide_mix_rows<6>(z, qs, a, R, log2b, g0, g1, store4);
  else if (R == 7) wide_mix_rows<7>(z, qs, a, R, log2b, g0, g1, store4);
  else wide_mix_rows<8>(z, qs, a, R, log2b, g0, g1, store4);
}

// vec_load: x rows are 16-byte aligned (cp.async copies); else plain loads.
template <PreOp kPre>
__global__ void __launch_bounds__(kWideThreads, 3) prepare_wide_kernel(const PrepareParams p, int vec_load) {
  extern __shared__ __align__(16) float wsm[];  // z (n), then the mixing coefficients
  __shared__ float red[32];
  const int n = p.t.n, a = p.t.a, log2b = p.t.log2b;
  const size_t vec = blockIdx.x;
  float* z = wsm;
  float* qs = wsm + n;
  constexpr bool kRaw = kPre == PreOp::Plain || kPre == PreOp::RmsNorm;  // factors applied in step 2
  pdl_trigger();  // a decode kernel launched with PDL may stage its tables meanwhile
  if (kRaw) {
    const float* xv = p.x + vec * p.ld_x;
    if (vec_load) {
      for (int i = 4 * threadIdx.x; i < n; i += 4 * kWideThreads) cp_async16(z + i, xv + i);
    } else {
#pragma unroll 8
      for (int i = threadIdx.x; i < n; i += kWideThreads) z[i] = xv[i];
    }
  } else {
#pragma unroll 4
    for (int i = threadIdx.x; i < n; i += kWideThreads)
      z[i] = pre_value<kPre>(p, vec, i, 1.0f) * (p.t.sign ? __ldg(p.t.sign + i) : 1.0f);
  }
  if (a > 1) wide_stage_q(p.t, qs, false);
  if (p.zero_ptr && blockIdx.y == 0)
    for (int i = threadIdx.x; i < p.zero_count; i += kWideThreads) p.zero_ptr[vec * p.zero_count + i] = 0.0f;
  if (kRaw && vec_load) wide_cp_wait();
  __syncthreads();
  float scale = p.t.inv_sqrt_b;
  if (kPre == PreOp::RmsNorm) {
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += kWideThreads) ss += z[i] * z[i];
    scale *= rsqrtf(block_sum(ss, red) / float(n) + p.eps);
  }
  const float* sign = p.t.sign;
  const float* norm_w = p.norm_w;
  wide_fwht(z, n, log2b, b_of(log2b), [&](int i, float v) {
    v *= scale;
    if (kPre == PreOp::RmsNorm) v *= __ldg(norm_w + i);
    if (kRaw && sign) v *= __ldg(sign + i);
    return v;
  });
  if (p.out_type == OutType::Half) {
    __half* out = static_cast<__half*>(p.out) + vec * p.ld_out;
    wide_mix(z, qs, a, log2b, [&](int o, float4 v) {
      const __half2 h0 = __floats2half2_rn(v.x, v.y), h1 = __floats2half2_rn(v.z, v.w);
      uint2 u;
      u.x = *reinterpret_cast<const uint32_t*>(&h0);
      u.y = *reinterpret_cast<const uint32_t*>(&h1);
      *reinterpret_cast<uint2*>(out + o) = u;
    });
  } else {
    __nv_bfloat16* out = static_cast<__nv_bfloat16*>(p.out) + vec * p.ld_out;
    wide_mix(z, qs, a, log2b, [&](int o, float4 v) {
      const __nv_bfloat162 h0 = __floats2bfloat162_rn(v.x, v.y), h1 = __floats2bfloat162_rn(v.z, v.w);
      uint2 u;
      u.x = *reinterpret_cast<const uint32_t*>(&h0);
      u.y = *reinterpret_cast<const uint32_t*>(&h1);
      *reinterpret_cast<uint2*>(out + o) = u;
    });
  }
}

// vec_load: ỹ rows (and part slices) are 16-byte aligned.
__global__ void __launch_bounds__(kWideThreads, 3) finish_wide_kernel(const FinishParams p, int vec_load) {
  extern __shared__ __align__(16) float wsm[];
  const int n = p.t.n, a = p.t.a, log2b = p.t.log2b;
  const size_t vec = blockIdx.x;
  float* z = wsm;
  float* qs = wsm + n;
  const float* yv = p.yt + vec * p.ld_in;
  if (vec_load && p.yt_half) {  // fp16 ỹ: 16-byte loads of 8 values
    const uint4* h = reinterpret_cast<const uint4*>(p.yt_half + vec * p.ld_in);
#pragma unroll 4
    for (int i = threadIdx.x; i < n / 8; i += kWideThreads) {
      const uint4 u = __ldg(h + i);
      const float2 f0 = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
      const float2 f1 = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
      const float2 f2 = __half22float2(*reinterpret_cast<const __half2*>(&u.z));
      const float2 f3 = __half22float2(*reinterpret_cast<const __half2*>(&u.w));
      reinterpret_cast<float4*>(z)[2 * i] = make_float4(f0.x, f0.y, f1.x, f1.y);
      reinterpret_cast<float4*>(z)[2 * i + 1] = make_float4(f2.x, f2.y, f3.x, f3.y);
    }
  } else if (vec_load && p.parts == 1) {
    for (int i = 4 * threadIdx.x; i < n; i += 4 * kWideThreads) cp_async16(z + i, yv + i);
  } else if (vec_load) {
#pragma unroll 2
    for (int i = 4 * threadIdx.x; i < n; i += 4 * kWideThreads) {
      float4 v = *reinterpret_cast<const float4*>(yv + i);
#pragma unroll 4
      for (int k = 1; k < p.parts; ++k) {
        const float4 u = *reinterpret_cast<const float4*>(yv + k * p.part_stride + i);
        v.x += u.x;
        v.y += u.y;
        v.z += u.z;
        v.w += u.w;
      }
      *reinterpret_cast<float4*>(z + i) = v;
    }
  } else {
#pragma unroll 8
    for (int i = threadIdx.x; i < n; i += kWideThreads) z[i] = yt_value(p, vec, i);
  }
  if (a > 1) wide_stage_q(p.t, qs, true);
  if (vec_load && p.parts == 1 && !p.yt_half) wide_cp_wait();
  __syncthreads();
  const float s = p.t.inv_sqrt_b;
  wide_fwht(z, n, log2b, b_of(log2b), [s](int, float v) { return v * s; });
  float* y = p.y + vec * p.ld_out;
  const float* sign = p.t.sign;
  const int accumulate = p.accumulate;
  wide_mix(z, qs, a, log2b, [&](int o, float4 v) {
    if (sign) {
      const float4 sg = __ldg(reinterpret_cast<const float4*>(sign + o));
      v.x *= sg.x;
      v.y *= sg.y;
      v.z *= sg.z;
      v.w *= sg.w;
    }
    float4* dst = reinterpret_cast<float4*>(y + o);
    if (accumulate) {
      const float4 old = *dst;
      v.x += old.x;
      v.y += old.y;
      v.z += old.z;
      v.w += old.w;
    }
    *dst = v;
  });
}

__global__ void f32_to_bf16_kernel(const float* __restrict__ x, uint16_t* __restrict__ y, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const __nv_bfloat16 b = __float2bfloat16_rn(x[i]);
    y[i] = *reinterpret_cast<const uint16_t*>(&b);
  }
}

int threads_for(int n) { return std::min(1024, std::max(64, ((n / 2 + 31) / 32) * 32)); }

// Dynamic shared memory a transform block may use: the opt-in limit less the kernels' static
// shared memory (the reduction scratch).
size_t dynamic_limit(const DeviceInfo& info) {
  static size_t limit = [&] {
    cudaFuncAttributes a{}, b{};
    GLQ_CUDA_CHECK(cudaFuncGetAttributes(&a, prepare_kernel));
    GLQ_CUDA_CHECK(cudaFuncGetAttributes(&b, finish_kernel));
    const size_t lim = info.smem_optin - std::max(a.sharedSizeBytes, b.sharedSizeBytes);
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(prepare_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(lim)));
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(finish_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(lim)));
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(prepare_rows_kernel<PreOp::Plain>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(lim)));
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(prepare_rows_kernel<PreOp::RmsNorm>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(lim)));
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(prepare_rows_kernel<PreOp::SwiGlu>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(lim)));
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(finish_rows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(lim)));
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(bridge_rows_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(lim)));
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(prepare_many_kernel<PreOp::Plain>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(lim)));
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(prepare_many_kernel<PreOp::RmsNorm>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(lim)));
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(prepare_many_kernel<PreOp::SwiGlu>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(lim)));
    return lim;
  }();
  return limit;
}

size_t smem_for(const DeviceInfo& info, int n) {
  const size_t smem = size_t(n) * sizeof(float);
  const size_t limit = dynamic_limit(info);
  if (smem > limit)
    throw_unsupported("Hadamard transform of length " + std::to_string(n) + " needs " +
                      std::to_string(smem) + " bytes of shared memory; this device allows " +
                      std::to_string(limit));
  return smem;
}

}  // namespace

TransformShape transform_shape(const DeviceHadamard& plan, const float* sign, const uint32_t* sign_bits) {
  TransformShape t;
  t.n = plan.n;
  t.a = plan.a;
  t.log2b = std::countr_zero(unsigned(plan.b));
  t.q = plan.a > 1 ? plan.q.as<const float>() : nullptr;
  t.sign = sign;
  t.sign_bits = sign_bits;
  t.inv_sqrt_b = 1.0f / std::sqrt(float(plan.b));
  return t;
}

// Few vectors: the row kernels (a blocks per vector). Many vectors with a mixing matrix: the
// row-group kernel on the input side where it applies, else one block per vector, whose mixing
// reads shared memory instead of re-reading the vector a times.
constexpr int kRowKernelMaxBatch = 16;

// Threads of a row block: b/4 (the fast FWHT's layout), at least 128; staged blocks use 1024
// so that the whole vector's loads are in flight at once.
int row_threads(int b, bool staged) {
  // GLQ_CUDA_STAGED_ROW_THREADS (default 1024): threads of a staged row block, for tuning runs.
  static const int staged_threads = std::clamp(env_int("GLQ_CUDA_STAGED_ROW_THREADS", 1024) / 32 * 32, 128, 1024);
  if (staged) return std::max(staged_threads, b / 4);  // fwht_padded needs b/4 threads
  return std::min(1024, std::max(128, b / 4));
}

// The row kernels' shape for t: a = 1 with b ≥ 2^11 becomes a' = 2^k rows mixed by the Sylvester
// matrix (the same transform, H_b = H_a' ⊗ H_b/a'), so that a' blocks share a vector instead of
// one block running the whole FWHT alone. Each of the a' blocks reads the whole vector, so a'
// shrinks as vectors grow: about kSplitFwhtBlocks blocks in all (a' = 32 for one vector of
// 4096), a' ≤ √b; at 2 to 8 vectors about 4× as many blocks in all, with a' ≤ 16 (16 for
// vectors of 4096); from 9 on about 32 again (a' = 2 at 16). GLQ_CUDA_SPLIT_FWHT=N: about N
// blocks (4N at 2-8 vectors) instead; 0: never. On an H100 (docs/cuda.md) 32 blocks beat 4-16
// and 64-128 at one vector (4096x4096, 2 bpw: 9.6 us for the product against 12.4 with 64 and
// 12.8 unsplit); at 8 vectors a' = 16 beat 4, 8 and 32 (4096x14336: 21.6 against 21.7-21.9,
// 21.8 and 23.4 us); at 2 vectors (an earlier build) a' = 16 beat 32 and 64 (19.9 against 20.4
// and 21.7 us).
constexpr int kSplitFwhtBlocks = 32;
constexpr int kSplitFwhtMaxLogFewVectors = 4;

TransformShape row_shape(const TransformShape& t, int batch) {
  static const int blocks = std::max(0, env_int("GLQ_CUDA_SPLIT_FWHT", kSplitFwhtBlocks));
  if (t.a != 1 || t.log2b < 11 || (1 << t.log2b) != t.n || batch <= 0) return t;
  const bool few = batch >= 2 && batch <= 8;  // measured there (9-16 vectors were not)
  const int cap = few ? 4 * blocks : blocks;
  const int max_la = few ? std::min(t.log2b / 2, kSplitFwhtMaxLogFewVectors) : t.log2b / 2;
  int la = 0;
  while (la < max_la && (batch << (la + 1)) <= cap) ++la;
  if (la == 0) return t;
  TransformShape r = t;
  r.a = 1 << la;
  r.log2b = t.log2b - la;
  r.q = nullptr;
  r.sylvester = 1;
  r.inv_sqrt_b = 1.0f / std::sqrt(float(1 << r.log2b));
  return r;
}

template <PreOp kPre>
void launch_prepare_rows(const DeviceInfo& info, const PrepareParams& params, int batch, cudaStream_t stream) {
  PrepareParams p = params;
  p.t = row_shape(params.t, batch);
  const int b = 1 << p.t.log2b;
  const int extra = p.t.a > 1 ? p.t.a : 0;  // row i of Q
  const int staged = p.t.a > 1 && size_t(b + b / 32 + p.t.n + extra) * 4 <= dynamic_limit(info);
  const size_t smem = smem_for(info, (staged ? b + b / 32 + p.t.n : b + b / 32) + extra);
  launch_checked(prepare_rows_kernel<kPre>, dim3(p.t.a, batch), dim3(row_threads(b, staged)), smem, stream,
                 pdl_enabled(info), "prepare_rows_kernel", p, staged);
}

// Row groups per block: all of them (one block per vector) for large batches, where the grid
// is full anyway and the G blocks of a split vector would read it G times; one otherwise.
int many_per_block(const TransformShape& t, int batch) {
  static const int split_below = env_int("GLQ_CUDA_TRANSFORM_SPLIT_BELOW", 256);
  return batch < split_below ? 1 : many_split(t.a).groups;
}

size_t many_smem(const TransformShape& t, int per_block) {
  const ManySplit sp = many_split(t.a);
  return (size_t(per_block * sp.rows << t.log2b) + size_t(per_block) * t.a * kManyRows) * 4;
}

// Many vectors, input side: the row-group kernel of steps 1-3 where the shape allows
// (GLQ_CUDA_TRANSFORM_MANY=0 turns it off, for comparison).
bool many_shape(const DeviceInfo& info, const TransformShape& t, int batch) {
  static const bool enabled = !env_is("GLQ_CUDA_TRANSFORM_MANY", "0");
  if (!enabled || batch <= kRowKernelMaxBatch) return false;
  if ((t.a << t.log2b) != t.n || t.a > kManyMaxA || t.log2b < 5 || t.log2b > 15) return false;
  return many_smem(t, many_per_block(t, batch)) <= dynamic_limit(info);
}

// Many vectors, whole vector per block (prepare_wide_kernel / finish_wide_kernel): from
// kWideMinBatch vectors on (measured faster than the row-group and per-vector kernels at 17, 24,
// 32, 40, 48, 64, 130 and 2048 vectors on an H100, docs/cuda.md; below 17 the kernels that
// spread a vector over more blocks are faster).
constexpr int kWideMinBatch = 17;

int wide_min_batch() {
  static const int v = env_min_batch("GLQ_CUDA_TRANSFORM_WIDE", "GLQ_CUDA_TRANSFORM_WIDE_MIN", kWideMinBatch);
  return v;
}

size_t wide_smem(const TransformShape& t) {
  const int R = wide_rows(t.a), G = (t.a + R - 1) / R;
  return (size_t(t.n) + (t.a > 1 ? size_t(G) * t.a * 8 : 0)) * 4;
}

// Shape the wide kernels take, within the shared memory they may opt into.
bool wide_shape(const DeviceInfo& info, const TransformShape& t) {
  if ((t.a << t.log2b) != t.n || t.a > kWideMaxA || t.log2b < 5 || t.log2b > 15) return false;
  if (t.a > 1 && !t.q) return false;
  static const size_t limit = [&] {
    const size_t lim = dynamic_limit(info);
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(prepare_wide_kernel<PreOp::Plain>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(lim)));
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(prepare_wide_kernel<PreOp::RmsNorm>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(lim)));
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(prepare_wide_kernel<PreOp::SwiGlu>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(lim)));
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(finish_wide_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(lim)));
    return lim;
  }();
  return wide_smem(t) <= limit;
}

// Blocks per vector of the wide kernels: with few vectors the mixing's row groups are split over
// blocks (each block repeats the vector's load and FWHT, cheap beside the a multiply-adds per
// element of the mixing). Measured on an H100 (docs/cuda.md): the input side gains while its
// blocks fill part of the SMs (17 vectors of 14336: 11.1 against 13.2 us for both
// transforms), and loses beyond, where its blocks hold back the decode kernel's; the output side
// gains up to the SM count (14336x4096 at 17 / 40 / 64 vectors: 72.2 / 63.1 / 68.3 against
// 76.0 / 66.3 / 70.4 us for the product). The output side reads all of ỹ in every block, so it
// is not split when y and ỹ overlap (in place), nor the input side when x and x̃ do.
// GLQ_CUDA_WIDE_SPLIT=0: one block per vector.
int wide_splits(const DeviceInfo& info, const TransformShape& t, int batch, bool input) {
  static const bool on = !env_is("GLQ_CUDA_WIDE_SPLIT", "0");
  if (!on || t.a == 1) return 1;
  const int R = wide_rows(t.a), G = (t.a + R - 1) / R;
  if (!input) return batch < info.sm_count ? G : 1;
  // Input side: up to 3/4 of the SMs' worth of blocks at once (more holds back the decode
  // kernel launched early by PDL: at 64 vectors of 14336, 2 blocks each, 61.3 against 60.5 us;
  // at 40, 55.3 against 56.6), in equal shares of the G groups.
  const int s = std::clamp(info.sm_count * 3 / 4 / std::max(1, batch), 1, G);
  const int per = (G + s - 1) / s;
  return (G + per - 1) / per;
}

bool launch_prepare_wide(const DeviceInfo& info, const PrepareParams& p, int batch, cudaStream_t stream) {
  if (batch <= 0 || !wide_shape(info, p.t)) return false;
  // 8-byte stores of 4 outputs.
  if ((reinterpret_cast<uintptr_t>(p.out) & 7) != 0 || p.ld_out % 4 != 0) return false;
  const int vec_load = aligned_to(p.x, 16) && p.ld_x % 4 == 0;
  const size_t smem = wide_smem(p.t);
  const size_t row_in = p.pre == PreOp::SwiGlu ? 2 * size_t(p.t.n) : size_t(p.t.n);  // [gate | up]
  const bool in_place = overlaps(p.x, ((batch - 1) * size_t(p.ld_x) + row_in) * 4, p.out,
                                 ((batch - 1) * size_t(p.ld_out) + p.t.n) * 2);  // fp16 or bf16
  const dim3 grid(batch, in_place ? 1 : wide_splits(info, p.t, batch, true));
  switch (p.pre) {
    case PreOp::Plain: prepare_wide_kernel<PreOp::Plain><<<grid, kWideThreads, smem, stream>>>(p, vec_load); break;
    case PreOp::RmsNorm: prepare_wide_kernel<PreOp::RmsNorm><<<grid, kWideThreads, smem, stream>>>(p, vec_load); break;
    case PreOp::SwiGlu: prepare_wide_kernel<PreOp::SwiGlu><<<grid, kWideThreads, smem, stream>>>(p, vec_load); break;
  }
  GLQ_CUDA_CHECK_LAUNCH("prepare_wide_kernel");
  return true;
}

bool launch_finish_wide(const DeviceInfo& info, const FinishParams& p, int batch, cudaStream_t stream) {
  if (batch <= 0 || !wide_shape(info, p.t)) return false;
  if (!aligned_to(p.y, 16) || p.ld_out % 4 != 0 || (p.t.sign && !aligned_to(p.t.sign, 16))) return false;
  const int vec_load = p.yt_half ? aligned_to(p.yt_half, 16) && p.ld_in % 8 == 0 && p.t.n % 8 == 0
                                 : aligned_to(p.yt, 16) && p.ld_in % 4 == 0 && (p.parts == 1 || p.part_stride % 4 == 0);
  const size_t in_bytes = p.yt_half ? (size_t(batch - 1) * p.ld_in + p.t.n) * 2
                                    : (size_t(p.parts - 1) * p.part_stride + size_t(batch - 1) * p.ld_in + p.t.n) * 4;
  const bool in_place = overlaps(p.yt_half ? static_cast<const void*>(p.yt_half) : p.yt, in_bytes, p.y,
                                 (size_t(batch - 1) * p.ld_out + p.t.n) * 4);
  const int splits = in_place ? 1 : wide_splits(info, p.t, batch, false);
  finish_wide_kernel<<<dim3(batch, splits), kWideThreads, wide_smem(p.t), stream>>>(p, vec_load);
  GLQ_CUDA_CHECK_LAUNCH("finish_wide_kernel");
  return true;
}

void launch_prepare(const DeviceInfo& info, const PrepareParams& p, int batch, cudaStream_t stream) {
  if (batch <= 0) return;
  if (use_transform_tc(info, batch) && launch_prepare_tc(info, p, batch, stream)) return;
  if (p.permute) throw_invalid("launch_prepare: permuted x̃ is written by the tensor-core transform only (prepare_permutes)");
  if (batch >= wide_min_batch() && launch_prepare_wide(info, p, batch, stream)) return;
  if (many_shape(info, p.t, batch)) {
    const int per_block = many_per_block(p.t, batch);
    const size_t smem = many_smem(p.t, per_block);
    const dim3 grid(many_split(p.t.a).groups / per_block, batch);
    switch (p.pre) {
      case PreOp::Plain: prepare_many_kernel<PreOp::Plain><<<grid, kManyThreads, smem, stream>>>(p, per_block); break;
      case PreOp::RmsNorm: prepare_many_kernel<PreOp::RmsNorm><<<grid, kManyThreads, smem, stream>>>(p, per_block); break;
      case PreOp::SwiGlu: prepare_many_kernel<PreOp::SwiGlu><<<grid, kManyThreads, smem, stream>>>(p, per_block); break;
    }
    GLQ_CUDA_CHECK_LAUNCH("prepare_many_kernel");
    return;
  }
  // (a·b != n: the identity shape of dense linears, which the vector kernel handles.)
  if ((p.t.a << p.t.log2b) == p.t.n && (p.t.a == 1 || batch <= kRowKernelMaxBatch)) {
    switch (p.pre) {
      case PreOp::Plain: launch_prepare_rows<PreOp::Plain>(info, p, batch, stream); return;
      case PreOp::RmsNorm: launch_prepare_rows<PreOp::RmsNorm>(info, p, batch, stream); return;
      case PreOp::SwiGlu: launch_prepare_rows<PreOp::SwiGlu>(info, p, batch, stream); return;
    }
  }
  const size_t smem = smem_for(info, p.t.n + p.t.a * ((p.t.a + 3) & ~3));
  prepare_kernel<<<batch, threads_for(p.t.n), smem, stream>>>(p);
  GLQ_CUDA_CHECK_LAUNCH("prepare_kernel");
}

// Slices of ỹ to sum (the tile kernel's column ranges) go to the row kernels, which spread each
// vector over many blocks, instead of the whole-vector one where the shape allows: 60.1 against
// 61.9 us for 4096x14336 at 64 vectors and 16 slices, 28.5 against 29.6 for 4096x4096 (H100).
// GLQ_CUDA_FINISH_PARTS_ROWS=0: the whole-vector kernel, for comparisons.
bool finish_parts_rows() {
  static const bool on = !env_is("GLQ_CUDA_FINISH_PARTS_ROWS", "0");
  return on;
}

void launch_finish(const DeviceInfo& info, const FinishParams& params, int batch, cudaStream_t stream) {
  if (batch <= 0) return;
  if (params.yt_half && params.parts > 1) {  // fp16 slices: only the tensor-core kernel reads them
    if (!launch_finish_tc(info, params, batch, stream))
      throw_invalid("launch_finish: ỹ in fp16 slices needs the tensor-core output transform (tc_finish_half_parts)");
    return;
  }
  // fp16 ỹ from the tensor-core transforms' batches on; fp32 ỹ (slices) only where a vector is
  // split over a cluster (one block per vector reading 16 slices of fp32 ỹ: 67 against 53 us at
  // 64 vectors of 4096x14336, H100).
  const bool tc = params.yt_half ? use_transform_tc(info, batch)
                                 : params.half_ok && batch >= kTilesMinBatch && tc_cluster(info, batch) > 1;
  if (tc && launch_finish_tc(info, params, batch, stream)) return;
  const bool rows_ok = (params.t.a << params.t.log2b) == params.t.n && (params.t.a == 1 || batch <= kRowKernelMaxBatch);
  const bool parts_rows = params.parts > 1 && rows_ok && finish_parts_rows();
  if (!parts_rows && batch >= wide_min_batch() && launch_finish_wide(info, params, batch, stream)) return;
  if (rows_ok) {
    FinishParams p = params;
    p.t = row_shape(params.t, batch);
    const int b = 1 << p.t.log2b;
    const int extra = (p.t.a > 1 ? p.t.a : 0) + (p.t.sign ? b : 0);  // column i of Q, signs of row i
    const int staged = p.t.a > 1 && size_t(b + b / 32 + p.t.n + extra) * 4 <= dynamic_limit(info);
    const size_t smem = smem_for(info, (staged ? b + b / 32 + p.t.n : b + b / 32) + extra);
    launch_checked(finish_rows_kernel, dim3(p.t.a, batch), dim3(row_threads(b, staged)), smem, stream,
                   pdl_enabled(info), "finish_rows_kernel", p, staged);
    return;
  }
  const size_t smem = smem_for(info, params.t.n + params.t.a * ((params.t.a + 3) & ~3));
  finish_kernel<<<batch, threads_for(params.t.n), smem, stream>>>(params);
  GLQ_CUDA_CHECK_LAUNCH("finish_kernel");
}

// The output side of one product and the input side of the next (bridge_rows_kernel): the
// engine's residual add followed by RMSNorm. GLQ_CUDA_BRIDGE=0 keeps the two kernels.
namespace {

TransformShape bridge_in_shape(const PrepareParams& p, int batch) { return row_shape(p.t, batch); }

size_t bridge_smem(const FinishParams& f, const TransformShape& ti) {
  const int bo = 1 << f.t.log2b, bi = 1 << ti.log2b;
  const size_t ys = size_t(f.t.a * (bo + bo / 32) + 3) & ~size_t(3);
  const size_t z = size_t(bi + bi / 32 + 3) & ~size_t(3);
  const size_t q = (size_t(ti.a) + size_t(f.t.a) * f.t.a + 1) & ~size_t(1);  // Q_in's row and Q_outᵀ
  return (ys + 2 * size_t(f.t.n) + z + q + 2 * size_t(f.t.n)) * sizeof(float);
}

}  // namespace

bool bridge_enabled() {
  static const bool on = env_switch("GLQ_CUDA_BRIDGE") != 0;
  return on;
}

bool bridge_supported(const DeviceInfo& info, const FinishParams& f, const PrepareParams& p, const float* h_out,
                      int batch) {
  if (!bridge_enabled() || batch < 1 || batch > kRowKernelMaxBatch || batch >= wide_min_batch() ||
      use_transform_tc(info, batch))
    return false;
  const int n = f.t.n;
  if (n <= 0 || n != p.t.n || (n & 3) || (f.t.a << f.t.log2b) != n || (p.t.a << p.t.log2b) != n) return false;
  if (p.pre != PreOp::RmsNorm || p.out_type != OutType::Half || p.permute || !p.norm_w || !p.out) return false;
  if (!f.yt || f.yt_half || f.parts < 1 || f.parts > 4 || !f.accumulate || !f.y || !h_out || h_out == f.y) return false;
  if ((f.ld_in & 3) || (f.ld_out & 3) || (f.parts > 1 && (f.part_stride & 3))) return false;
  if (!aligned_to(f.yt, 16) || !aligned_to(f.y, 16) || !aligned_to(h_out, 16) || !aligned_to(p.norm_w, 16) ||
      (p.t.sign && !aligned_to(p.t.sign, 16)))
    return false;
  // ỹ's slices and h_in are read while other blocks write h_out and zero p.zero_ptr.
  const size_t yt_bytes = (size_t(batch - 1) * f.ld_in + n + size_t(f.parts - 1) * f.part_stride) * 4;
  const size_t h_bytes = (size_t(batch - 1) * f.ld_out + n) * 4;
  if (overlaps(h_out, h_bytes, f.yt, yt_bytes) || overlaps(h_out, h_bytes, f.y, h_bytes)) return false;
  if (p.zero_ptr) {
    const size_t zb = size_t(batch) * p.zero_count * 4;
    if (overlaps(p.zero_ptr, zb, f.yt, yt_bytes) || overlaps(p.zero_ptr, zb, f.y, h_bytes)) return false;
  }
  const TransformShape ti = bridge_in_shape(p, batch);
  return bridge_smem(f, ti) <= dynamic_limit(info);
}

void launch_bridge(const DeviceInfo& info, const FinishParams& f, const PrepareParams& params, float* h_out,
                   const float* bias, int batch, cudaStream_t stream) {
  if (!bridge_supported(info, f, params, h_out, batch))
    throw_invalid("launch_bridge: the shapes, buffers or alignment do not allow the fused transforms (bridge_supported)");
  PrepareParams p = params;
  p.t = bridge_in_shape(params, batch);
  launch_checked(bridge_rows_kernel, dim3(p.t.a, batch), dim3(1024), bridge_smem(f, p.t), stream, pdl_enabled(info),
                 "bridge_rows_kernel", f, p, h_out, bias);
}

PrepareParams hadamard_input_params(const DeviceHadamard& plan, const float* sign, const float* x, void* out,
                                    const uint32_t* sign_bits) {
  PrepareParams p;
  p.t = transform_shape(plan, sign, sign_bits);
  p.x = x;
  p.ld_x = plan.n;
  p.out = out;
  p.ld_out = plan.n;
  return p;
}

void launch_hadamard(const DeviceInfo& info, const DeviceHadamard& plan, bool input,
                     const float* sign, const float* x, void* out, int batch, float* zero_ptr,
                     int zero_count, cudaStream_t stream, const uint32_t* sign_bits) {
  if (input) {
    PrepareParams p = hadamard_input_params(plan, sign, x, out, sign_bits);
    p.zero_ptr = zero_ptr;
    p.zero_count = zero_count;
    launch_prepare(info, p, batch, stream);
  } else {
    FinishParams p;
    p.t = transform_shape(plan, sign);
    p.yt = x;
    p.ld_in = plan.n;
    p.y = static_cast<float*>(out);
    p.ld_out = plan.n;
    launch_finish(info, p, batch, stream);
  }
}

void launch_f32_to_bf16(const float* x, uint16_t* y, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  const int threads = 256;
  const int blocks = int(std::min<size_t>((n + threads - 1) / threads, 4096));
  f32_to_bf16_kernel<<<blocks, threads, 0, stream>>>(x, y, n);
  GLQ_CUDA_CHECK_LAUNCH("f32_to_bf16_kernel");
}

}  // namespace glq::cuda::detail
