// The few-vector decode kernel with a cp.async ring (qgemv_ring.cu), internal to glq_cuda.
// Same contract as launch_qgemv_cores (launch.hpp): yt (batch, rows) (+)= Σ_s scale_s ∘ (C_s xt);
// when qgemv_ring_needs_zeroed_output() the launch accumulates with atomics into a zeroed yt.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "glq/kernels/cuda.hpp"

namespace glq::cuda::detail {

// Vectors the ring kernel takes (launch_qgemv_cores uses it for 1..kRingMaxBatch).
inline constexpr int kRingMaxBatch = 2;

// Whether the ring kernel runs this product: 1 ≤ batch ≤ kRingMaxBatch, the stage layout of 2,
// 3 or 4 bpw (E8P16; E8P16 + E8R8; E8P16 + E8P16), sm_80 or newer, and GLQ_QGEMV_RING is not 0.
bool qgemv_ring_supported(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch);
bool qgemv_ring_needs_zeroed_output(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch);
void launch_qgemv_ring(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                       const uint16_t* xt_half, int ld_x, float* yt, int ld_y, int batch, cudaStream_t stream);

}  // namespace glq::cuda::detail
