// The few-vector decode kernel with a cp.async ring (qgemv_ring.cu), internal to glq_cuda.
// Same contract as launch_qgemv_cores (launch.hpp): yt (batch, rows) (+)= Σ_s scale_s ∘ (C_s xt);
// when qgemv_ring_needs_zeroed_output() the launch accumulates with atomics into a zeroed yt.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "glq/kernels/cuda.hpp"
#include "kernels/cuda/transform_kernels.cuh"

namespace glq::cuda::detail {

// Vectors the ring kernel takes (launch_qgemv_cores uses it for 1..kRingMaxBatch).
inline constexpr int kRingMaxBatch = 2;

// Whether the ring kernel runs this product: 1 ≤ batch ≤ kRingMaxBatch, the stage layout of 2,
// 3 or 4 bpw (E8P16; E8P16 + E8R8; E8P16 + E8P16), sm_80 or newer, and GLQ_QGEMV_RING is not 0.
bool qgemv_ring_supported(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch);
bool qgemv_ring_needs_zeroed_output(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch);
void launch_qgemv_ring(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                       const uint16_t* xt_half, int ld_x, float* yt, int ld_y, int batch, cudaStream_t stream);

// The same kernel with the output transform fused behind it: each block adds its part of ỹ,
// counts itself done, and the last block runs fin (y (+)= sign ∘ T_out^T ỹ, fin.yt unused) over
// the whole of ỹ. yt is (batch, qgemv_ring_fused_ld(rows)) and must be zero before the launch,
// its counter word (yt + rows) included: the input transform zeroes it (PrepareParams::zero_ptr
// = yt, zero_count = qgemv_ring_fused_ld(rows)), so a captured graph replays. Supported for the
// ring kernel's shapes whose output transform has a mixing order a ≤ GLQ_FUSED_FINISH_MAX_A
// (default kFusedFinishMaxA). qmatmul and the engine take it only where
// qgemv_ring_fused_enabled(): GLQ_FUSED_FINISH=1 (off by default: not faster on an H100, and
// slower in the engine; docs/cuda.md).
inline constexpr int kFusedFinishMaxA = 128;
inline int qgemv_ring_fused_ld(int rows) { return rows + 4; }
bool qgemv_ring_fused_enabled();
bool qgemv_ring_fused_supported(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch);
void launch_qgemv_ring_fused(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                             const uint16_t* xt_half, int ld_x, float* yt, int batch, const FinishParams& fin,
                             cudaStream_t stream);

}  // namespace glq::cuda::detail
