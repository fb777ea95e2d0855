// CUDA kernels over GLQ's packed layout (see glq/codec/quantized_matrix.hpp), and the device
// memory they work on. Built only with -DGLQ_CUDA=ON.
//
// A QuantizedMatrix is uploaded once into a GPU layout (upload()): each stage's codes are tiled
// so that one 16-byte load holds the codes of 8 consecutive rows for one group of 8 columns
// (E8P16; 8 bytes for E8R8), which lets a warp stream a row tile with 512-byte coalesced loads
// while every lane keeps its 8 columns of the input in registers (docs/cuda.md says why). The
// on-disk layout is unchanged.
//
// y = W x is computed in three steps, as in matvec_reference():
//   x̃ = T_in (sign_in ∘ x)           hadamard kernel, fp32 in, fp16 out      (batch, cols)
//   ỹ = Σ_s scale_s ∘ (C_s x̃)         decode kernel (batch ≤ 8) or dequantize + cuBLAS
//   y = sign_out ∘ (T_out^T ỹ)       hadamard kernel, fp32 in and out        (batch, rows)
// Every CUDA call and launch is checked: failures throw glq::Error(ErrorKind::Cuda) naming the
// call, the file and line, and CUDA's message. Nothing here calls abort() or exit().
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "glq/codec/quantized_matrix.hpp"

namespace glq::cuda {

// Throws glq::Error(Cuda) when err != cudaSuccess; `what` names the call.
void check(cudaError_t err, const char* what, const char* file, int line);
#define GLQ_CUDA_CHECK(call) ::glq::cuda::check((call), #call, __FILE__, __LINE__)
// After a kernel launch: reports launch-configuration errors at once.
#define GLQ_CUDA_CHECK_LAUNCH(name) ::glq::cuda::check(cudaGetLastError(), name, __FILE__, __LINE__)

// Number of usable CUDA devices; 0 (never an exception) when there is no driver or device.
int device_count();

struct DeviceInfo {
  std::string name;         // "NVIDIA H100 80GB HBM3"
  int sm_count = 0;
  int cc_major = 0, cc_minor = 0;
  size_t global_bytes = 0;
  size_t l2_bytes = 0;
  size_t smem_optin = 0;    // largest dynamic shared memory a block may opt into
};
DeviceInfo device_info(int device = 0);

// Owning device allocation (cudaMalloc / cudaFree). Moveable, not copyable.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  explicit DeviceMemory(size_t bytes);
  ~DeviceMemory();
  DeviceMemory(DeviceMemory&& o) noexcept;
  DeviceMemory& operator=(DeviceMemory&& o) noexcept;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  void* data() const { return ptr_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }
  // Synchronous copies; sizes are checked against bytes().
  void upload(const void* host, size_t bytes, size_t offset = 0);
  void download(void* host, size_t bytes, size_t offset = 0) const;

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

template <typename T>
DeviceMemory to_device(const std::vector<T>& v) {
  DeviceMemory m(v.size() * sizeof(T));
  if (!v.empty()) m.upload(v.data(), v.size() * sizeof(T));
  return m;
}

// A Hadamard plan on the device: T_n = Q_a ⊗ H_b / sqrt(b).
struct DeviceHadamard {
  int n = 0, a = 1, b = 0;
  DeviceMemory q;  // (a, a) float32 row-major; empty when a == 1
};

// The GPU layout of a QuantizedMatrix.
struct DeviceQuantizedMatrix {
  int rows = 0, cols = 0, bits = 0;
  int groups = 0;  // cols / 8
  std::vector<codec::Codebook> codebooks;  // per stage
  std::vector<DeviceMemory> codes;   // per stage: (rows/8, groups, 8) codes (tiled, see above)
  std::vector<DeviceMemory> scales;  // per stage: (rows) float32
  DeviceMemory sign_in;              // (cols) float32 ±1
  DeviceMemory sign_in_bits;         // (cols/32 rounded up) uint32: bit k of word j set where sign_in[32j + k] < 0
  DeviceMemory sign_out;             // (rows) float32 ±1
  DeviceMemory sign_out_bits;        // (rows/32 rounded up) uint32, as sign_in_bits
  DeviceHadamard plan_in, plan_out;

  // Bytes one product reads from the weight: codes and scales of every stage, sign vectors.
  size_t weight_bytes() const;
};

DeviceQuantizedMatrix upload(const codec::QuantizedMatrix& q);

// Dense weights in bf16 (rows, cols) row-major, for the --bits 16 baseline.
struct DeviceDenseMatrix {
  int rows = 0, cols = 0;
  DeviceMemory w;  // (rows, cols) bf16
  size_t weight_bytes() const { return size_t(rows) * size_t(cols) * 2; }
};
DeviceDenseMatrix upload_dense_bf16(const float* w, int rows, int cols);

// Stream, cuBLAS handle and scratch buffers of one thread of work. Scratch grows on demand,
// but never while the stream is being captured into a graph (reserve() first, then capture).
class Context {
 public:
  explicit Context(int device = 0);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  cudaStream_t stream() const;
  void* cublas_handle() const;  // cublasHandle_t
  const DeviceInfo& info() const;
  // Scratch slot `slot` of at least `bytes` bytes (contents undefined). Throws if it must grow
  // while the stream is capturing.
  void* scratch(int slot, size_t bytes);
  // Makes later products of up to (batch, rows, cols) run without allocating.
  void reserve(int batch, int rows, int cols);
  // Device copies of the decode tables (see e8_decode.cuh).
  const uint32_t* tables() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

enum class QPath {
  Auto,          // Gemv for ≤ kCoresMaxBatch vectors, Mma up to kMmaMaxBatch, else DequantGemm
  Gemv,          // fused decode + dot products on CUDA cores, in chunks of ≤ 8 vectors
  DequantGemm,   // W̃ decoded to fp16 in scratch, then a cuBLAS fp16 GEMM (tensor cores)
  Mma,           // fused decode into tensor-core fragments (mma.sync), ≤ kMmaMaxBatch vectors a launch
};
inline constexpr int kGemvMaxBatch = 8;
inline constexpr int kMmaMaxBatch = 64;
inline constexpr int kCoresMaxBatch = 4;

// y (batch, rows) = x (batch, cols) · W^T, fp32 device pointers, transforms included. Runs on
// ctx.stream(), asynchronously.
void qmatmul(Context& ctx, const DeviceQuantizedMatrix& w, const float* x, float* y, int batch,
             QPath path = QPath::Auto);

// y (batch, rows) = x (batch, cols) · W^T through cuBLAS with bf16 operands, fp32 accumulation
// and output (x is converted to bf16 in scratch).
void dense_matmul(Context& ctx, const DeviceDenseMatrix& w, const float* x, float* y, int batch);

// ---- the pieces, for fused callers and tests ------------------------------------------------
// xt (batch, n) fp16 = T (sign ∘ x) for each row of x (batch, n) fp32.
void hadamard_input(Context& ctx, const DeviceHadamard& plan, const float* sign, const float* x,
                    uint16_t* xt_half, int batch);
// y (batch, n) fp32 = sign ∘ (T^T yt); yt and y may be the same buffer.
void hadamard_output(Context& ctx, const DeviceHadamard& plan, const float* sign, const float* yt,
                     float* y, int batch);
// yt (batch, rows) fp32 = Σ_s scale_s ∘ (C_s xt): the decode kernel (batch ≤ kMmaMaxBatch).
void qgemv_hadamard_domain(Context& ctx, const DeviceQuantizedMatrix& w, const uint16_t* xt_half,
                           float* yt, int batch);
// wt (rows, cols) fp16 = Σ_s diag(scale_s) C_s, the Hadamard-domain weight.
void dequantize_hadamard_domain(Context& ctx, const DeviceQuantizedMatrix& w, uint16_t* wt_half);

}  // namespace glq::cuda
