// W̃ (rows, cols) fp16 = Σ_s diag(scale_s) C_s: decodes the Hadamard-domain weight for the
// tensor-core path of large batches (prefill), where one pass of decoding is amortised over
// many tokens and cuBLAS's fp16 GEMM then runs at the tensor-core rate.
//
// One thread per (row tile, group) word: it decodes the 8×8 block with the same PRMT decode as
// the decode kernel and writes 8 rows of 16 bytes.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "glq/error.hpp"
#include "kernels/cuda/e8_decode.cuh"
#include "kernels/cuda/launch.hpp"
#include "kernels/cuda/pdl.cuh"

namespace glq::cuda::detail {

namespace {

struct DequantParams : StageArgs {
  int cols;
  const uint32_t* tables;
  __half* wt;  // (rows, cols)
};

__device__ __forceinline__ void add_pairs(const uint32_t w[4], float scale, float shift, float out[8]) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[k]));
    out[2 * k] = fmaf(scale, f.x + shift, out[2 * k]);
    out[2 * k + 1] = fmaf(scale, f.y + shift, out[2 * k + 1]);
  }
}

// One thread per (row tile, group): the code words of every stage are loaded first (all in flight),
// then each of the 8 rows is decoded over the stages, scaled and stored at once: 8 live
// accumulators instead of 64, so more threads per SM keep loads and stores in flight.
__global__ void dequant_rows_kernel(const DequantParams p) {
  __shared__ uint32_t tab[kTableWords];
  for (int i = threadIdx.x; i < kTableWords; i += blockDim.x) tab[i] = __ldg(p.tables + i);
  __syncthreads();
  const size_t total = size_t(p.tiles) * p.groups;
  for (size_t idx = blockIdx.x * size_t(blockDim.x) + threadIdx.x; idx < total;
       idx += size_t(gridDim.x) * blockDim.x) {
    const int tile = int(idx / p.groups);
    const int g = int(idx - size_t(tile) * p.groups);
    uint4 c[4];
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      c[s] = make_uint4(0, 0, 0, 0);
      if (s < p.stages) {
        if (p.codebook[s] == 1) {
          c[s] = __ldcs(static_cast<const uint4*>(p.codes[s]) + idx);
        } else {
          const uint2 w = __ldcs(static_cast<const uint2*>(p.codes[s]) + idx);
          c[s].x = w.x;
          c[s].y = w.y;
        }
      }
    }
    __half* dst = p.wt + size_t(tile) * 8 * p.cols + size_t(g) * 8;
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      float w[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) w[j] = 0.0f;
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        if (s >= p.stages) break;
        const float sc = __ldg(p.scales[s] + size_t(tile) * 8 + r);
        uint32_t d[4];
        if (p.codebook[s] == 1) {
          const uint32_t word = r < 2 ? c[s].x : r < 4 ? c[s].y : r < 6 ? c[s].z : c[s].w;
          const uint32_t code = (r & 1) ? (word >> 16) : (word & 0xFFFFu);
          decode_pairs(e8p_selector_word(code, tab + kTableE8pSel, tab + kTableE8pSign), kE8pBytesLo,
                       kE8pBytesHi, d);
          add_pairs(d, sc, (code & 0x8000u) ? -0.25f : 0.25f, w);
        } else {
          const uint32_t word = r < 4 ? c[s].x : c[s].y;
          const uint32_t code = (word >> (8 * (r & 3))) & 0xFFu;
          decode_pairs(tab[kTableE8r8Sel + code], kE8rBytesLo, kE8rBytesHi, d);
          add_pairs(d, sc, 0.0f, w);
        }
      }
      uint4 out;
      __half2 h0 = __floats2half2_rn(w[0], w[1]), h1 = __floats2half2_rn(w[2], w[3]);
      __half2 h2 = __floats2half2_rn(w[4], w[5]), h3 = __floats2half2_rn(w[6], w[7]);
      out.x = *reinterpret_cast<uint32_t*>(&h0);
      out.y = *reinterpret_cast<uint32_t*>(&h1);
      out.z = *reinterpret_cast<uint32_t*>(&h2);
      out.w = *reinterpret_cast<uint32_t*>(&h3);
      *reinterpret_cast<uint4*>(dst + size_t(r) * p.cols) = out;
    }
  }
  pdl_wait();  // launched with PDL: complete only after the kernel before it
}

}  // namespace

void launch_dequantize(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                       uint16_t* wt_half, bool after_prepare, cudaStream_t stream) {
  DequantParams p{};
  static_cast<StageArgs&>(p) = stage_args(w, "dequantize");
  p.cols = w.cols;
  p.tables = tables;
  p.wt = reinterpret_cast<__half*>(wt_half);
  const size_t total = size_t(p.tiles) * p.groups;
  const int threads = 256;
  const int blocks = int(std::min<size_t>((total + threads - 1) / threads, 65535));
  launch_checked(dequant_rows_kernel, dim3(blocks), dim3(threads), 0, stream, after_prepare && pdl_enabled(info),
                 "dequant_rows_kernel", p);
}

}  // namespace glq::cuda::detail
