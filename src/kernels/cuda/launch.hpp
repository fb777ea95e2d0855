// Kernel launchers shared by the .cu files and the host code of glq_cuda (internal).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>

#include "glq/error.hpp"
#include "glq/kernels/cuda.hpp"
#include "kernels/cuda/env.hpp"
#include "kernels/cuda/transform_kernels.cuh"

namespace glq::cuda::detail {

// The code stages of one quantized matrix as the decode kernels take them (the first members of
// their parameter structs).
struct StageArgs {
  const void* codes[4];    // per stage, tiled (tiles, groups, 8)
  const float* scales[4];  // per stage (rows)
  int codebook[4];         // codec::Codebook values
  int stages;
  int groups;              // cols / 8
  int tiles;               // rows / 8
};

// `who` names the kernel in the error for a matrix without stages or with more than 4.
inline StageArgs stage_args(const DeviceQuantizedMatrix& w, const char* who) {
  if (w.codes.empty() || w.codes.size() > 4) throw_invalid(std::string(who) + ": matrix has no stages");
  StageArgs a{};
  for (size_t s = 0; s < w.codes.size(); ++s) {
    a.codes[s] = w.codes[s].data();
    a.scales[s] = w.scales[s].as<const float>();
    a.codebook[s] = static_cast<int>(w.codebooks[s]);
  }
  a.stages = static_cast<int>(w.codes.size());
  a.groups = w.groups;
  a.tiles = w.rows / 8;
  return a;
}

// The per-vector transform kernels with their fused pre- and post-operations (hadamard.cu).
TransformShape transform_shape(const DeviceHadamard& plan, const float* sign, const uint32_t* sign_bits = nullptr);
// The input side's shape of w (its signs also as bits).
inline TransformShape transform_in(const DeviceQuantizedMatrix& w) {
  return transform_shape(w.plan_in, w.sign_in.as<const float>(), w.sign_in_bits.as<const uint32_t>());
}
// The output side's shape of w.
inline TransformShape transform_out(const DeviceQuantizedMatrix& w) {
  return transform_shape(w.plan_out, w.sign_out.as<const float>(), w.sign_out_bits.as<const uint32_t>());
}
// Whether ptr is a multiple of `bytes` (a power of two), and whether two byte ranges overlap:
// the launchers' checks before vector loads and before kernels that must not run in place.
inline bool aligned_to(const void* ptr, uintptr_t bytes) { return (reinterpret_cast<uintptr_t>(ptr) & (bytes - 1)) == 0; }
inline bool overlaps(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  const auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + b_bytes && pb < pa + a_bytes;
}
// Signs (±1) as the bits of TransformShape::sign_bits, on the device.
DeviceMemory sign_bits_to_device(const std::vector<float>& sign);
void launch_prepare(const DeviceInfo& info, const PrepareParams& p, int batch, cudaStream_t stream);
void launch_finish(const DeviceInfo& info, const FinishParams& p, int batch, cudaStream_t stream);
// The whole-vector-per-block kernels that launch_prepare / launch_finish use for many vectors,
// at any batch (for tests and comparisons): false, with nothing launched, where the shape or the
// alignment of the rows does not allow them.
bool launch_prepare_wide(const DeviceInfo& info, const PrepareParams& p, int batch, cudaStream_t stream);
bool launch_finish_wide(const DeviceInfo& info, const FinishParams& p, int batch, cudaStream_t stream);
// The transforms on the tensor cores (hadamard_tc.cu), which launch_prepare and launch_finish
// (for fp16 ỹ) use from kTransformTcMinBatch vectors on (GLQ_CUDA_TRANSFORM_TC=0: never;
// GLQ_CUDA_TRANSFORM_TC_MIN=N: from N on): shapes with b = 256, 512 or 1024 and 1 < a ≤ 32, or
// a = 1 and b = 4096, 8192 or 16384; fp16 intermediates (relative error ~5e-4). false, with
// nothing launched, where the shape, the types or the alignment do not allow them.
// From 49 vectors: at 64 the input side of 4096x14336 takes the product from 60.4 to 58.2 us and
// of 14336x4096 from 68.4 to 64.9 (56 vectors: 59.8 / 66.2 to 57.7 / 64.2), equal at 48, slower
// at 24 and 40 (53.3 against 54.7 us), H100, 2 bpw.
constexpr int kTransformTcMinBatch = 49;
bool tc_transform_shape(const TransformShape& t);
// On sm_90 they also take 17 to 132 vectors (kTilesMinBatch on), where a vector is split over a
// thread-block cluster of C = 2-8 blocks (tc_cluster: batch·C ≤ 2 blocks per SM;
// GLQ_CUDA_TRANSFORM_CLUSTER=N caps C, 1 turns this off), and the output side then also reads
// fp32 ỹ in slices where FinishParams::half_ok allows fp16 intermediates (the products).
int tc_cluster(const DeviceInfo& info, int batch);
// Clusters need an sm_90 device and device code compiled for it: a build without sm_90 code run
// on an H100 runs the PTX of an older architecture, compiled by the driver, without them.
bool tc_clusters_available(const DeviceInfo& info);
bool use_transform_tc(const DeviceInfo& info, int batch);
// cluster: blocks per vector (0: tc_cluster's choice; 1: one block per vector).
bool launch_prepare_tc(const DeviceInfo& info, const PrepareParams& p, int batch, cudaStream_t stream, int cluster = 0);
bool launch_finish_tc(const DeviceInfo& info, const FinishParams& p, int batch, cudaStream_t stream, int cluster = 0);
// Whether launch_prepare writes p's x̃ in the permuted order (PrepareParams::permute): it takes
// the tensor-core transform for p and batch.
bool prepare_permutes(const DeviceInfo& info, const PrepareParams& p, int batch);
// Whether launch_finish takes the fp32 slices of f (yt, parts) as fp16 instead (yt_half, same
// layout): the tensor-core output transform in clusters (sm_90) accepts f's shape, alignment and
// buffers. The tile kernel then writes its slices in fp16: half the bytes to store and to read
// (GLQ_CUDA_HALF_PARTS=0: fp32).
bool tc_finish_half_parts(const DeviceInfo& info, const FinishParams& f, int batch);

// One product's output side and the next one's input side in one kernel (bridge_rows_kernel,
// batch ≤ 16): h_out = f.y + f's result (+ bias, nullable; f.accumulate must be set), then p's
// input transform of RMSNorm(h_out) (p.pre RmsNorm; p.x is not read), with p.zero_ptr zeroed.
// h_out must be a second buffer, not f.y. bridge_supported: whether the shapes, buffers and
// alignment allow it (GLQ_CUDA_BRIDGE=0: never); launch_bridge throws where they do not.
bool bridge_enabled();
bool bridge_supported(const DeviceInfo& info, const FinishParams& f, const PrepareParams& p, const float* h_out,
                      int batch);
void launch_bridge(const DeviceInfo& info, const FinishParams& f, const PrepareParams& p, float* h_out,
                   const float* bias, int batch, cudaStream_t stream);

// Hadamard transform of `batch` vectors of length plan.n (one block each; see hadamard.cu).
//   input:  out_half (batch, n) = T (sign ∘ x);  also zeroes zero_ptr (batch, zero_count).
//   output: out_float (batch, n) = sign ∘ (T^T x).
void launch_hadamard(const DeviceInfo& info, const DeviceHadamard& plan, bool input,
                     const float* sign, const float* x, void* out, int batch, float* zero_ptr,
                     int zero_count, cudaStream_t stream, const uint32_t* sign_bits = nullptr);
// The input side's parameters of launch_hadamard (x (batch, n) → out (batch, n) fp16), for callers
// that set more of them before launch_prepare.
PrepareParams hadamard_input_params(const DeviceHadamard& plan, const float* sign, const float* x, void* out,
                                    const uint32_t* sign_bits = nullptr);

// Decode kernel: yt (batch, rows) (+)= Σ_s scale_s ∘ (C_s xt), batch ≤ kGemvMaxBatch.
// With accumulate, yt must be zero (or hold a partial sum) before the launch.
// Returns whether the launch accumulates with atomics (yt must then be zeroed first).
bool qgemv_needs_zeroed_output(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch);
void launch_qgemv(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                  const uint16_t* xt_half, int ld_x, float* yt, int ld_y, int batch,
                  cudaStream_t stream);

// The tensor-core decode kernel (qmma.cu), same contract as launch_qgemv for 1 ≤ batch ≤
// kMmaMaxBatch vectors. launch_qgemv uses it for every batch unless GLQ_QGEMV_KERNEL=cores;
// launch_qgemv_cores is the CUDA-core kernel (qgemv.cu), batch ≤ kGemvMaxBatch.
bool qmma_needs_zeroed_output(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch);
void launch_qmma(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                 const uint16_t* xt_half, int ld_x, float* yt, int ld_y, int batch, cudaStream_t stream);
// The same kernel writing column range k of the product to its own slice, yt_parts + k·batch·rows
// (each (batch, rows)), with plain stores: no zeroing, no atomics; the output transform sums
// the qmma_parts() slices (FinishParams::parts). With x (fp32, batch 1) instead of x̃, the input
// transform runs inside the kernel: each block computes x̃ of its own columns.
bool qmma_fused_supported(const DeviceInfo& info, const DeviceQuantizedMatrix& w);
int qmma_max_parts(int batch);
int qmma_parts(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch, bool fused);
// The launch shape, for reports (parts: as launch_qmma_parts, else as launch_qmma).
std::string qmma_plan(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch, bool fused, bool parts);
void launch_qmma_parts(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                       const uint16_t* xt_half, const float* x, float* yt_parts, int batch, cudaStream_t stream);
// The shared-memory tensor-core kernel (qmma_tiles.cu) for kTilesMinBatch ≤ batch ≤ kMmaMaxBatch
// vectors of 2-4 bpw matrices: each weight decoded once for all vectors; slice k of ỹ is
// yt_parts + k·batch·rows (parts = qmma_tiles_parts slices: on sm_90 the column ranges of a
// thread-block cluster sum their tiles in distributed shared memory and write one slice),
// summed by the output transform. GLQ_CUDA_QMMA_TILES=0: never; GLQ_CUDA_QMMA_TILES_MIN=N: from
// N vectors on; GLQ_CUDA_TILES_CLUSTER=N: clusters of at most N column ranges (1: none).
// 17 since the tile kernel runs on wgmma (sm_90a): from 17 vectors on qmma.cu decodes the
// weights twice (chunks of 16), and the tile kernel was faster at 17-32 on 14336x4096 and
// 4096x14336 at 2 and 4 bpw (H100, docs/cuda.md), slower only on 4096x4096 at 2 bpw.
inline constexpr int kTilesMinBatch = 17;
bool qmma_tiles_supported(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch);
// Which of its two kernels runs: the decoded weights in registers as the multiply's A operand
// (true; the default on sm_90), or through a shared-memory tile (GLQ_CUDA_TILES_RS=0/1 chooses;
// set_tiles_registers(0/1) overrides both for tests and benchmarks, -1 restores them).
bool tiles_registers(const DeviceInfo& info);
void set_tiles_registers(int on);
int qmma_tiles_parts(const DeviceInfo& info, int rows, int cols);
// half_parts: the slices in fp16 (yt_parts then holds __half), for an output transform that
// reads them (tc_finish_half_parts).
void launch_qmma_tiles(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                       const uint16_t* xt_half, float* yt_parts, int batch, int parts, cudaStream_t stream,
                       bool half_parts = false);
// The tile kernel into `parts` slices of ỹ at yt_parts (qmma_tiles_parts), and f (the output
// transform's parameters) set to read them: f.parts, f.part_stride = batch · rows, and f.yt, or
// f.yt_half where the output transform takes them in fp16 (tc_finish_half_parts; the kernel then
// writes fp16). The caller then launches launch_finish(info, f, batch, stream).
void launch_qmma_tiles_for_finish(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                                  const uint16_t* xt_half, float* yt_parts, int parts, FinishParams& f, int batch,
                                  cudaStream_t stream);
// More than kMmaMaxBatch vectors on Hopper: ỹ (batch, rows) in fp16 = Σ_s scale_s ∘ (C_s x̃)
// straight from the codes (the register tile kernel's decode, 256 vectors a block), instead of
// the dequantization to fp16 and a cuBLAS GEMM (qmma_tiles.cu), without their rows·cols·2-byte
// scratch. x̃ must be in the permuted order (PrepareParams::permute, where prepare_permutes).
// Opt-in, GLQ_CUDA_QGEMM=1 (slower than the dequantization + cuBLAS on an H100, docs/cuda.md);
// set_qgemm(0/1) overrides that for tests and benchmarks (-1 restores it).
bool qgemm_supported(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch);
void set_qgemm(int on);
void launch_qgemm(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                  const uint16_t* xt_half, uint16_t* yt_half, int batch, cudaStream_t stream);
// The engine's decode attention (engine.cu): threads per block (128 or 256, with key chunks of
// at most 64, or 512; 0 restores GLQ_CUDA_ATTN_THREADS or the default, 512), RoPE with the cache
// write inside the attention kernel for one-token steps (0/1; -1 restores
// GLQ_CUDA_ROPE_IN_ATTENTION or the default, on) and the keys per chunk (32, 64, 128 or 256 for
// every context length; 0 restores GLQ_CUDA_ATTN_CHUNK or the default, by the context length),
// for tests and benchmarks. Read when a step is enqueued (a captured graph keeps its choice).
void set_attention_threads(int threads);
void set_rope_in_attention(int on);
void set_attention_chunk(int keys);
bool qgemv_cores_needs_zeroed_output(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch);
void launch_qgemv_cores(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                        const uint16_t* xt_half, int ld_x, float* yt, int ld_y, int batch,
                        cudaStream_t stream);

// wt (rows, cols) fp16 = Σ_s diag(scale_s) C_s. With after_prepare (where the kernel before it
// in the stream is an input transform, which does not touch wt), it is launched with programmatic
// dependent launch and runs beside that kernel's last blocks, then waits for it before it
// completes: the GEMM after it sees both.
void launch_dequantize(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                       uint16_t* wt_half, bool after_prepare, cudaStream_t stream);

// Element-wise conversions.
// Whether the dequantize + GEMM path (more vectors than kMmaMaxBatch) has the GEMM write ỹ in
// fp16 (fp32 accumulation): half the bytes of fp32 for the output transform to read. On unless
// GLQ_CUDA_GEMM_HALF_OUT=0 (fp32, for comparisons).
bool gemm_half_out();

void launch_f32_to_bf16(const float* x, uint16_t* y, size_t n, cudaStream_t stream);

}  // namespace glq::cuda::detail
