// Host side of glq_cuda: error checks, device memory, the context, uploads and the dispatch of
// a quantized product to its kernels.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <string>

#include "glq/error.hpp"
#include "glq/kernels/cuda.hpp"
#include "kernels/cuda/e8_decode.cuh"
#include "kernels/cuda/launch.hpp"
#include "kernels/cuda/qgemv_ring.cuh"

namespace glq::cuda {

void check(cudaError_t err, const char* what, const char* file, int line) {
  if (err == cudaSuccess) return;
  throw Error(ErrorKind::Cuda, std::string(what) + " failed at " + file + ":" +
                                   std::to_string(line) + ": " + cudaGetErrorName(err) + " (" +
                                   cudaGetErrorString(err) + ")");
}

namespace {

void check_cublas(cublasStatus_t st, const char* what, int line) {
  if (st == CUBLAS_STATUS_SUCCESS) return;
  throw Error(ErrorKind::Cuda, std::string(what) + " failed at context.cpp:" +
                                   std::to_string(line) + ": " + cublasGetStatusString(st));
}
#define GLQ_CUBLAS_CHECK(call) check_cublas((call), #call, __LINE__)

uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7F800000u) == 0x7F800000u) return static_cast<uint16_t>(u >> 16 | ((u & 0xFFFF) ? 0x40 : 0));
  const uint32_t rounding = 0x7FFFu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>((u + rounding) >> 16);
}

DeviceHadamard upload_plan(const transform::HadamardPlan& p, const std::string& what) {
  if (p.n <= 0 || p.a <= 0 || p.b <= 0 || p.a * p.b != p.n || !std::has_single_bit(unsigned(p.b)))
    throw_invalid(what + ": Hadamard plan n=" + std::to_string(p.n) + " a=" + std::to_string(p.a) +
                  " b=" + std::to_string(p.b) + " is not n = a·b with b a power of two");
  if (p.a > 1 && p.q.size() != size_t(p.a) * p.a)
    throw_mismatch(what + ": mixing matrix size", std::to_string(p.a * p.a), std::to_string(p.q.size()));
  DeviceHadamard d;
  d.n = p.n;
  d.a = p.a;
  d.b = p.b;
  if (p.a > 1) d.q = to_device(p.q);
  return d;
}

}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

DeviceInfo device_info(int device) {
  cudaDeviceProp prop{};
  GLQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  DeviceInfo info;
  info.name = prop.name;
  info.sm_count = prop.multiProcessorCount;
  info.cc_major = prop.major;
  info.cc_minor = prop.minor;
  info.global_bytes = prop.totalGlobalMem;
  info.l2_bytes = static_cast<size_t>(prop.l2CacheSize);
  info.smem_optin = prop.sharedMemPerBlockOptin;
  return info;
}

// ---- DeviceMemory ---------------------------------------------------------------------------

DeviceMemory::DeviceMemory(size_t bytes) : bytes_(bytes) {
  if (bytes > 0) GLQ_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
}
DeviceMemory::~DeviceMemory() {
  if (ptr_) cudaFree(ptr_);  // no throw from a destructor; a failing free is reported by the next call
}
DeviceMemory::DeviceMemory(DeviceMemory&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
  o.ptr_ = nullptr;
  o.bytes_ = 0;
}
DeviceMemory& DeviceMemory::operator=(DeviceMemory&& o) noexcept {
  if (this != &o) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}
void DeviceMemory::upload(const void* host, size_t bytes, size_t offset) {
  if (offset + bytes > bytes_)
    throw_mismatch("DeviceMemory::upload", "at most " + std::to_string(bytes_) + " bytes",
                   std::to_string(offset + bytes));
  GLQ_CUDA_CHECK(cudaMemcpy(static_cast<char*>(ptr_) + offset, host, bytes, cudaMemcpyHostToDevice));
  // From pageable memory cudaMemcpy may return before the DMA has landed, and the contexts'
  // streams do not wait for the default stream: wait here, so that the copy is complete.
  GLQ_CUDA_CHECK(cudaStreamSynchronize(nullptr));
}
void DeviceMemory::download(void* host, size_t bytes, size_t offset) const {
  if (offset + bytes > bytes_)
    throw_mismatch("DeviceMemory::download", "at most " + std::to_string(bytes_) + " bytes",
                   std::to_string(offset + bytes));
  GLQ_CUDA_CHECK(cudaMemcpy(host, static_cast<const char*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost));
}

// ---- uploads --------------------------------------------------------------------------------

size_t DeviceQuantizedMatrix::weight_bytes() const {
  size_t total = sign_in.bytes() + sign_out.bytes();
  for (const auto& c : codes) total += c.bytes();
  for (const auto& s : scales) total += s.bytes();
  return total;
}

DeviceMemory detail::sign_bits_to_device(const std::vector<float>& sign) {
  std::vector<uint32_t> bits((sign.size() + 31) / 32, 0u);
  for (size_t i = 0; i < sign.size(); ++i)
    if (sign[i] < 0.0f) bits[i / 32] |= 1u << (i % 32);
  return to_device(bits);
}

DeviceQuantizedMatrix upload(const codec::QuantizedMatrix& q) {
  const std::string what = "QuantizedMatrix " + std::to_string(q.rows) + "x" + std::to_string(q.cols);
  if (q.rows <= 0 || q.cols <= 0 || q.rows % 8 || q.cols % 8)
    throw_invalid(what + ": rows and cols must be positive multiples of 8");
  if (q.stages.empty() || q.stages.size() > 4)
    throw_invalid(what + ": expected 1 to 4 stages, got " + std::to_string(q.stages.size()));
  if (q.sign_in.size() != size_t(q.cols)) throw_mismatch(what + " sign_in", std::to_string(q.cols), std::to_string(q.sign_in.size()));
  if (q.sign_out.size() != size_t(q.rows)) throw_mismatch(what + " sign_out", std::to_string(q.rows), std::to_string(q.sign_out.size()));
  if (q.rht && q.plan_in.n != q.cols) throw_mismatch(what + " plan_in.n", std::to_string(q.cols), std::to_string(q.plan_in.n));
  if (q.rht && q.plan_out.n != q.rows) throw_mismatch(what + " plan_out.n", std::to_string(q.rows), std::to_string(q.plan_out.n));

  DeviceQuantizedMatrix d;
  d.rows = q.rows;
  d.cols = q.cols;
  d.bits = q.bits;
  d.groups = q.cols / 8;
  const size_t G = size_t(d.groups);
  const int tiles = q.rows / 8;
  for (size_t s = 0; s < q.stages.size(); ++s) {
    const auto& st = q.stages[s];
    const int cb = codec::code_bytes(st.codebook);
    const size_t n_codes = size_t(q.rows) * G;
    if (st.codes.size() != n_codes * cb)
      throw_mismatch(what + " stage " + std::to_string(s) + " codes (bytes)", std::to_string(n_codes * cb), std::to_string(st.codes.size()));
    if (st.scales.size() != size_t(q.rows))
      throw_mismatch(what + " stage " + std::to_string(s) + " scales", std::to_string(q.rows), std::to_string(st.scales.size()));
    // Tile: (rows, G) row-major → (rows/8, G, 8), so that the 8 codes of one group for 8
    // consecutive rows are one 16-byte (E8P16) or 8-byte (E8R8) word.
    std::vector<uint8_t> tiled(st.codes.size());
    for (int t = 0; t < tiles; ++t)
      for (size_t g = 0; g < G; ++g)
        for (int r = 0; r < 8; ++r) {
          const size_t src = (size_t(t * 8 + r) * G + g) * cb;
          const size_t dst = ((size_t(t) * G + g) * 8 + r) * cb;
          std::memcpy(&tiled[dst], &st.codes[src], cb);
        }
    d.codebooks.push_back(st.codebook);
    d.codes.push_back(to_device(tiled));
    d.scales.push_back(to_device(st.scales));
  }
  d.sign_in = to_device(q.sign_in);
  d.sign_in_bits = detail::sign_bits_to_device(q.sign_in);
  d.sign_out_bits = detail::sign_bits_to_device(q.sign_out);
  d.sign_out = to_device(q.sign_out);
  if (q.rht) {
    d.plan_in = upload_plan(q.plan_in, what + " plan_in");
    d.plan_out = upload_plan(q.plan_out, what + " plan_out");
  } else {  // no transform: the identity shape (a = b = 1), which the per-vector kernels handle
    d.plan_in.n = q.cols;
    d.plan_out.n = q.rows;
    d.plan_in.b = d.plan_out.b = 1;
  }
  return d;
}

DeviceDenseMatrix upload_dense_bf16(const float* w, int rows, int cols) {
  if (rows <= 0 || cols <= 0) throw_invalid("upload_dense_bf16: empty matrix");
  std::vector<uint16_t> h(size_t(rows) * cols);
  for (size_t i = 0; i < h.size(); ++i) h[i] = float_to_bf16(w[i]);
  DeviceDenseMatrix d;
  d.rows = rows;
  d.cols = cols;
  d.w = to_device(h);
  return d;
}

// ---- Context --------------------------------------------------------------------------------

struct Context::Impl {
  int device = 0;
  DeviceInfo info;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  DeviceMemory cublas_workspace;
  DeviceMemory tables;
  std::vector<DeviceMemory> scratch;
};

Context::Context(int device) : impl_(std::make_unique<Impl>()) {
  if (device_count() <= device)
    throw Error(ErrorKind::Cuda, "no CUDA device " + std::to_string(device) + " (found " +
                                     std::to_string(device_count()) + ")");
  impl_->device = device;
  GLQ_CUDA_CHECK(cudaSetDevice(device));
  impl_->info = device_info(device);
  GLQ_CUDA_CHECK(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking));
  GLQ_CUBLAS_CHECK(cublasCreate(&impl_->cublas));
  GLQ_CUBLAS_CHECK(cublasSetStream(impl_->cublas, impl_->stream));
  // A fixed workspace keeps cuBLAS from allocating while a graph is captured.
  constexpr size_t kCublasWorkspace = size_t(32) << 20;
  impl_->cublas_workspace = DeviceMemory(kCublasWorkspace);
  GLQ_CUBLAS_CHECK(cublasSetWorkspace(impl_->cublas, impl_->cublas_workspace.data(), kCublasWorkspace));
  uint32_t tables[detail::kTableWords];
  detail::build_decode_tables(tables);
  impl_->tables = DeviceMemory(sizeof(tables));
  impl_->tables.upload(tables, sizeof(tables));
}

Context::~Context() {
  if (impl_->cublas) cublasDestroy(impl_->cublas);
  if (impl_->stream) cudaStreamDestroy(impl_->stream);
}

cudaStream_t Context::stream() const { return impl_->stream; }
void* Context::cublas_handle() const { return impl_->cublas; }
const DeviceInfo& Context::info() const { return impl_->info; }
const uint32_t* Context::tables() const { return impl_->tables.as<const uint32_t>(); }

void* Context::scratch(int slot, size_t bytes) {
  if (slot < 0 || slot > 15) throw_invalid("Context::scratch: slot " + std::to_string(slot));
  auto& s = impl_->scratch;
  if (s.size() <= size_t(slot)) s.resize(slot + 1);
  if (s[slot].bytes() < bytes) {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    GLQ_CUDA_CHECK(cudaStreamIsCapturing(impl_->stream, &status));
    if (status != cudaStreamCaptureStatusNone)
      throw Error(ErrorKind::Internal, "Context::scratch: slot " + std::to_string(slot) +
                                           " must grow to " + std::to_string(bytes) +
                                           " bytes during graph capture; call reserve() first");
    GLQ_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
    s[slot] = DeviceMemory(bytes);
  }
  return s[slot].data();
}

void Context::reserve(int batch, int rows, int cols) {
  scratch(0, size_t(batch) * cols * 2);
  // ỹ: several parts for the tensor-core decode kernel
  scratch(1, size_t(batch) * rows * 4 *
                 (batch <= kMmaMaxBatch ? std::max(detail::qmma_max_parts(batch), detail::qmma_tiles_parts(info(), rows, cols))
                                        : 1));
  scratch(3, size_t(batch) * cols * 2);
  if (batch > kMmaMaxBatch) scratch(2, size_t(rows) * cols * 2);
}

// ---- products -------------------------------------------------------------------------------

namespace {

// GLQ_CUDA_FUSED_INPUT=1: batch 1 runs the input transform inside the decode kernel.
bool fused_batch1() {
  static const bool on = detail::env_is("GLQ_CUDA_FUSED_INPUT", "1");
  return on;
}

void check_product(const char* what, int rows, int cols, const float* x, const float* y, int batch) {
  if (batch <= 0) throw_invalid(std::string(what) + ": batch must be positive, got " + std::to_string(batch));
  if (!x || !y) throw_invalid(std::string(what) + ": null input or output");
  if (rows <= 0 || cols <= 0) throw_invalid(std::string(what) + ": empty matrix");
}

}  // namespace

void hadamard_input(Context& ctx, const DeviceHadamard& plan, const float* sign, const float* x,
                    uint16_t* xt_half, int batch) {
  detail::launch_hadamard(ctx.info(), plan, true, sign, x, xt_half, batch, nullptr, 0, ctx.stream());
}

void hadamard_output(Context& ctx, const DeviceHadamard& plan, const float* sign, const float* yt,
                     float* y, int batch) {
  detail::launch_hadamard(ctx.info(), plan, false, sign, yt, y, batch, nullptr, 0, ctx.stream());
}

void qgemv_hadamard_domain(Context& ctx, const DeviceQuantizedMatrix& w, const uint16_t* xt_half,
                           float* yt, int batch) {
  if (batch <= 0 || batch > kMmaMaxBatch)
    throw_invalid("qgemv: batch must be 1.." + std::to_string(kMmaMaxBatch) + ", got " + std::to_string(batch));
  if (batch <= kGemvMaxBatch) {
    if (detail::qgemv_needs_zeroed_output(ctx.info(), w, batch))
      GLQ_CUDA_CHECK(cudaMemsetAsync(yt, 0, size_t(batch) * w.rows * 4, ctx.stream()));
    detail::launch_qgemv(ctx.info(), w, ctx.tables(), xt_half, w.cols, yt, w.rows, batch, ctx.stream());
  } else {
    if (detail::qmma_needs_zeroed_output(ctx.info(), w, batch))
      GLQ_CUDA_CHECK(cudaMemsetAsync(yt, 0, size_t(batch) * w.rows * 4, ctx.stream()));
    detail::launch_qmma(ctx.info(), w, ctx.tables(), xt_half, w.cols, yt, w.rows, batch, ctx.stream());
  }
}

void dequantize_hadamard_domain(Context& ctx, const DeviceQuantizedMatrix& w, uint16_t* wt_half) {
  detail::launch_dequantize(ctx.info(), w, ctx.tables(), wt_half, false, ctx.stream());
}

bool detail::gemm_half_out() {
  static const bool on = !detail::env_is("GLQ_CUDA_GEMM_HALF_OUT", "0");
  return on;
}

void qmatmul(Context& ctx, const DeviceQuantizedMatrix& w, const float* x, float* y, int batch,
             QPath path) {
  check_product("qmatmul", w.rows, w.cols, x, y, batch);
  // Up to 4 vectors the CUDA-core kernel was measured faster than the tensor-core one (H100,
  // docs/cuda.md).
  if (path == QPath::Auto)
    path = batch <= kCoresMaxBatch ? QPath::Gemv : batch <= kMmaMaxBatch ? QPath::Mma : QPath::DequantGemm;
  auto* xt = static_cast<uint16_t*>(ctx.scratch(0, size_t(batch) * w.cols * 2));
  auto* yt = static_cast<float*>(ctx.scratch(1, size_t(batch) * w.rows * 4));
  bool yt_half = false;  // ỹ in fp16 (the dequantize + GEMM path)
  cudaStream_t stream = ctx.stream();
  const bool tiles = path == QPath::Mma && detail::qmma_tiles_supported(ctx.info(), w, batch);
  if (tiles || (path == QPath::Mma && batch > kGemvMaxBatch && batch <= kMmaMaxBatch)) {
    // One launch; column ranges write their own slices of ỹ, which the output transform sums
    // (atomics would cost more than the product at these batch sizes). From kTilesMinBatch
    // vectors the tile kernel decodes the weights once for all of them.
    const int parts = tiles ? detail::qmma_tiles_parts(ctx.info(), w.rows, w.cols)
                            : detail::qmma_parts(ctx.info(), w, batch, false);
    auto* yp = static_cast<float*>(ctx.scratch(1, size_t(parts) * batch * w.rows * 4));
    detail::launch_hadamard(ctx.info(), w.plan_in, true, w.sign_in.as<const float>(), x, xt, batch, nullptr, 0,
                            stream, w.sign_in_bits.as<const uint32_t>());
    detail::FinishParams f;
    f.t = detail::transform_out(w);
    f.yt = yp;
    f.ld_in = w.rows;
    f.y = y;
    f.ld_out = w.rows;
    f.parts = parts;
    f.part_stride = size_t(batch) * w.rows;
    f.half_ok = 1;
    if (tiles) detail::launch_qmma_tiles_for_finish(ctx.info(), w, ctx.tables(), xt, yp, parts, f, batch, stream);
    else detail::launch_qmma_parts(ctx.info(), w, ctx.tables(), xt, nullptr, yp, batch, stream);
    detail::launch_finish(ctx.info(), f, batch, stream);
    return;
  }
  if (path == QPath::Mma && batch == 1 && fused_batch1() && detail::qmma_fused_supported(ctx.info(), w)) {
    // One vector, input transform inside the decode kernel (GLQ_CUDA_FUSED_INPUT=1; measured
    // slower than the separate transform on an H100: each block's share of the transform is
    // latency-bound and delays its streaming).
    const int parts = detail::qmma_parts(ctx.info(), w, 1, true);
    auto* yp = static_cast<float*>(ctx.scratch(1, size_t(parts) * w.rows * 4));
    detail::launch_qmma_parts(ctx.info(), w, ctx.tables(), nullptr, x, yp, 1, stream);
    detail::FinishParams f;
    f.t = detail::transform_out(w);
    f.yt = yp;
    f.ld_in = w.rows;
    f.y = y;
    f.ld_out = w.rows;
    f.parts = parts;
    f.part_stride = size_t(w.rows);
    detail::launch_finish(ctx.info(), f, 1, stream);
    return;
  }
  if (path == QPath::Gemv && batch <= detail::kRingMaxBatch && detail::qgemv_ring_fused_enabled() &&
      detail::qgemv_ring_fused_supported(ctx.info(), w, batch)) {
    // 1-2 vectors, GLQ_FUSED_FINISH=1: the ring kernel's last block runs the output transform;
    // ỹ and the kernel's done counter behind it are zeroed by the input transform.
    const int ld = detail::qgemv_ring_fused_ld(w.rows);
    auto* yf = static_cast<float*>(ctx.scratch(1, size_t(batch) * ld * 4));
    detail::launch_hadamard(ctx.info(), w.plan_in, true, w.sign_in.as<const float>(), x, xt, batch, yf, ld,
                            stream, w.sign_in_bits.as<const uint32_t>());
    detail::FinishParams f;
    f.t = detail::transform_out(w);
    f.y = y;
    f.ld_out = w.rows;
    detail::launch_qgemv_ring_fused(ctx.info(), w, ctx.tables(), xt, w.cols, yf, batch, f, stream);
    return;
  }
  if (path == QPath::Gemv || path == QPath::Mma) {
    const bool mma = path == QPath::Mma;
    const int chunk = mma ? kMmaMaxBatch : kGemvMaxBatch;
    bool zero = false;
    for (int c0 = 0; c0 < batch; c0 += chunk) {
      const int n = std::min(chunk, batch - c0);
      zero = zero || (mma ? detail::qmma_needs_zeroed_output(ctx.info(), w, n)
                          : detail::qgemv_cores_needs_zeroed_output(ctx.info(), w, n));
    }
    detail::launch_hadamard(ctx.info(), w.plan_in, true, w.sign_in.as<const float>(), x, xt, batch,
                            zero ? yt : nullptr, zero ? w.rows : 0, stream, w.sign_in_bits.as<const uint32_t>());
    for (int c0 = 0; c0 < batch; c0 += chunk) {
      const int n = std::min(chunk, batch - c0);
      if (mma)
        detail::launch_qmma(ctx.info(), w, ctx.tables(), xt + size_t(c0) * w.cols, w.cols,
                            yt + size_t(c0) * w.rows, w.rows, n, stream);
      else
        detail::launch_qgemv_cores(ctx.info(), w, ctx.tables(), xt + size_t(c0) * w.cols, w.cols,
                                   yt + size_t(c0) * w.rows, w.rows, n, stream);
    }
  } else if (auto pp = detail::hadamard_input_params(w.plan_in, w.sign_in.as<const float>(), x, xt,
                                                     w.sign_in_bits.as<const uint32_t>());
             detail::qgemm_supported(ctx.info(), w, batch) && detail::prepare_permutes(ctx.info(), pp, batch)) {
    // Straight from the codes on the tensor cores (x̃ permuted for them), ỹ in fp16.
    yt_half = true;
    pp.permute = 1;
    detail::launch_prepare(ctx.info(), pp, batch, stream);
    detail::launch_qgemm(ctx.info(), w, ctx.tables(), xt, reinterpret_cast<uint16_t*>(yt), batch, stream);
  } else {
    auto* wt = static_cast<uint16_t*>(ctx.scratch(2, size_t(w.rows) * w.cols * 2));
    yt_half = detail::gemm_half_out();
    detail::launch_hadamard(ctx.info(), w.plan_in, true, w.sign_in.as<const float>(), x, xt, batch,
                            nullptr, 0, stream, w.sign_in_bits.as<const uint32_t>());
    detail::launch_dequantize(ctx.info(), w, ctx.tables(), wt, true, stream);
    // Column-major view: ỹ^T (rows, batch) = W̃^T' (rows, cols) · x̃^T (cols, batch), where the
    // row-major W̃ (rows, cols) is the column-major (cols, rows) matrix, used transposed. ỹ in
    // fp16 (fp32 accumulation): half the bytes written and read back by the output transform.
    const float alpha = 1.0f, beta = 0.0f;
    GLQ_CUBLAS_CHECK(cublasGemmEx(static_cast<cublasHandle_t>(ctx.cublas_handle()), CUBLAS_OP_T,
                                  CUBLAS_OP_N, w.rows, batch, w.cols, &alpha, wt, CUDA_R_16F, w.cols,
                                  xt, CUDA_R_16F, w.cols, &beta, yt, yt_half ? CUDA_R_16F : CUDA_R_32F,
                                  w.rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
  detail::FinishParams f;
  f.t = detail::transform_out(w);
  if (yt_half) f.yt_half = reinterpret_cast<const uint16_t*>(yt);
  else f.yt = yt;
  f.ld_in = w.rows;
  f.y = y;
  f.ld_out = w.rows;
  detail::launch_finish(ctx.info(), f, batch, stream);
}

void dense_matmul(Context& ctx, const DeviceDenseMatrix& w, const float* x, float* y, int batch) {
  check_product("dense_matmul", w.rows, w.cols, x, y, batch);
  auto* xb = static_cast<uint16_t*>(ctx.scratch(3, size_t(batch) * w.cols * 2));
  detail::launch_f32_to_bf16(x, xb, size_t(batch) * w.cols, ctx.stream());
  const float alpha = 1.0f, beta = 0.0f;
  GLQ_CUBLAS_CHECK(cublasGemmEx(static_cast<cublasHandle_t>(ctx.cublas_handle()), CUBLAS_OP_T,
                                CUBLAS_OP_N, w.rows, batch, w.cols, &alpha, w.w.data(), CUDA_R_16BF,
                                w.cols, xb, CUDA_R_16BF, w.cols, &beta, y, CUDA_R_32F, w.rows,
                                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace glq::cuda
