// Tensor-core, warp and block helpers shared by the decode kernels (qmma.cu, qgemv_ring.cu) and
// the engine's kernels (engine.cu).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace glq::cuda::detail {

// c += A·B on the tensor cores, m16n8k16, fp16 operands in the mma fragment layout, fp32
// accumulators (sm_80 and later).
__device__ __forceinline__ void mma16816(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// Two floats rounded to fp16, lo in the low half: one 32-bit mma operand register.
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

__device__ __forceinline__ float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, off));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, off);
  return v;
}

// "Last block done": every block of a grid calls it once, with all its threads, after writing
// its part; it returns true, in every thread, in the one block that arrives last (of `total`),
// which may then read all the parts (from L2: ld.global.cg). Each block's writes are made
// visible before it counts itself. The caller resets the counter (or has it zeroed) for the
// next launch.
__device__ __forceinline__ bool last_block_done(unsigned* counter, unsigned total) {
  __threadfence();
  __syncthreads();  // every thread's writes and fence come before the count
  const bool last = __syncthreads_or(threadIdx.x == 0 && atomicAdd(counter, 1u) == total - 1);
  if (last) __threadfence();
  return last;
}

}  // namespace glq::cuda::detail
