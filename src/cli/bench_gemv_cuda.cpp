// `glq bench gemv --device cuda`: one quantized product (transforms included) against dense
// bf16 cuBLAS on the same shape, both timed in the same run.
//
// Method (as ../docs/cuda.md states): each variant is captured in a CUDA graph of `iters`
// calls; the graph is replayed 7 times, each replay timed with CUDA events, and the median
// replay time over iters is the time per call. Weights and inputs rotate over enough copies
// that together they exceed 4x the L2 cache, so every call reads its weights from HBM.
#include "cli/bench_common.hpp"

#include "glq/error.hpp"

#ifdef GLQ_HAVE_CUDA
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>
#include <functional>
#include <random>
#include <vector>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/kernels/cuda.hpp"
#include "glq/transform/hadamard.hpp"
#include "kernels/cuda/launch.hpp"
#endif

namespace glq::cli {

#ifndef GLQ_HAVE_CUDA

nlohmann::json run_cuda_gemv_bench(const GemvBenchArgs&) {
  throw Error(ErrorKind::Unsupported, "this glq was built without CUDA; rebuild with GLQ_CUDA=1");
}

#else

namespace {

using cuda::DeviceMemory;

// Median time of one call, in microseconds: `record` enqueues `iters` calls on `stream`.
double time_graph_us(cudaStream_t stream, int iters, const std::function<void(int)>& record) {
  record(0);  // warm-up outside the graph: module load, handle set-up, scratch growth
  GLQ_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaGraph_t graph;
  GLQ_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  try {
    for (int i = 0; i < iters; ++i) record(i);
  } catch (...) {
    cudaStreamEndCapture(stream, &graph);
    throw;
  }
  GLQ_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec;
  GLQ_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t start, stop;
  GLQ_CUDA_CHECK(cudaEventCreate(&start));
  GLQ_CUDA_CHECK(cudaEventCreate(&stop));
  GLQ_CUDA_CHECK(cudaGraphLaunch(exec, stream));  // warm replay
  std::vector<double> times;
  for (int rep = 0; rep < 7; ++rep) {
    GLQ_CUDA_CHECK(cudaEventRecord(start, stream));
    GLQ_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    GLQ_CUDA_CHECK(cudaEventRecord(stop, stream));
    GLQ_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    GLQ_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(1000.0 * ms / iters);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Random bits from a fast generator (the weights only need to be arbitrary, not Gaussian).
void fill_random(std::vector<uint8_t>& v, uint64_t seed) {
  std::mt19937_64 rng(seed);
  size_t i = 0;
  for (; i + 8 <= v.size(); i += 8) {
    const uint64_t r = rng();
    std::memcpy(&v[i], &r, 8);
  }
  for (; i < v.size(); ++i) v[i] = static_cast<uint8_t>(rng());
}


DeviceMemory clone(const DeviceMemory& m) {
  DeviceMemory c(m.bytes());
  if (m.bytes()) GLQ_CUDA_CHECK(cudaMemcpy(c.data(), m.data(), m.bytes(), cudaMemcpyDeviceToDevice));
  return c;
}

cuda::DeviceQuantizedMatrix clone(const cuda::DeviceQuantizedMatrix& w) {
  cuda::DeviceQuantizedMatrix c;
  c.rows = w.rows;
  c.cols = w.cols;
  c.bits = w.bits;
  c.groups = w.groups;
  c.codebooks = w.codebooks;
  for (const auto& m : w.codes) c.codes.push_back(clone(m));
  for (const auto& m : w.scales) c.scales.push_back(clone(m));
  c.sign_in = clone(w.sign_in);
  c.sign_out = clone(w.sign_out);
  c.plan_in.n = w.plan_in.n; c.plan_in.a = w.plan_in.a; c.plan_in.b = w.plan_in.b;
  c.plan_in.q = clone(w.plan_in.q);
  c.plan_out.n = w.plan_out.n; c.plan_out.a = w.plan_out.a; c.plan_out.b = w.plan_out.b;
  c.plan_out.q = clone(w.plan_out.q);
  return c;
}

int copies_for(size_t bytes_per_copy, size_t l2_bytes, int max_copies) {
  const size_t want = 4 * l2_bytes;
  return int(std::clamp<size_t>((want + bytes_per_copy - 1) / std::max<size_t>(bytes_per_copy, 1), 2, size_t(max_copies)));
}

std::string today_utc() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", std::gmtime(&t));
  return buf;
}

}  // namespace

nlohmann::json run_cuda_gemv_bench(const GemvBenchArgs& a) {
  const int bits = static_cast<int>(a.bits);
  if (bits != 2 && bits != 3 && bits != 4 && bits != 16)
    throw_invalid("bench gemv --device cuda: --bits must be 2, 3, 4 or 16, got " + std::to_string(a.bits));
  if (a.rows <= 0 || a.cols <= 0 || a.rows % 8 || a.cols % 8)
    throw_invalid("bench gemv: rows and cols must be positive multiples of 8");
  if (a.batch <= 0) throw_invalid("bench gemv: batch must be positive");
  cuda::Context ctx;
  const auto& info = ctx.info();
  cudaStream_t stream = ctx.stream();
  auto handle = static_cast<cublasHandle_t>(ctx.cublas_handle());
  const int rows = a.rows, cols = a.cols, batch = a.batch;
  const double flops = 2.0 * rows * cols * batch;
  const int iters = a.iters > 0 ? a.iters : (batch <= 64 ? 200 : 20);

  // ---- baseline: dense bf16 through cuBLAS, bf16 in and out, fp32 accumulation ----
  const size_t dense_bytes = size_t(rows) * cols * 2;
  const int n_dense = copies_for(dense_bytes + size_t(batch) * cols * 2, info.l2_bytes, 64);
  std::vector<DeviceMemory> dw, dxb;
  {
    std::vector<uint8_t> host(dense_bytes);
    fill_random(host, a.seed);
    // Random bf16 bit patterns would include NaNs and huge values; keep the sign and low
    // mantissa bits, force the exponent to that of [0.5, 1).
    auto* h16 = reinterpret_cast<uint16_t*>(host.data());
    for (size_t i = 0; i < dense_bytes / 2; ++i) h16[i] = uint16_t((h16[i] & 0x807F) | 0x3F00);
    DeviceMemory first(dense_bytes);
    first.upload(host.data(), dense_bytes);
    for (int i = 1; i < n_dense; ++i) dw.push_back(clone(first));
    dw.push_back(std::move(first));
    std::vector<uint8_t> xh(size_t(batch) * cols * 2);
    fill_random(xh, a.seed + 5);
    auto* x16 = reinterpret_cast<uint16_t*>(xh.data());
    for (size_t i = 0; i < xh.size() / 2; ++i) x16[i] = uint16_t((x16[i] & 0x807F) | 0x3F00);
    for (int i = 0; i < n_dense; ++i) {
      DeviceMemory m(xh.size());
      m.upload(xh.data(), xh.size());
      dxb.push_back(std::move(m));
    }
  }
  DeviceMemory dyb(size_t(batch) * rows * 2);
  const float alpha = 1.0f, beta = 0.0f;
  const double baseline_us = time_graph_us(stream, iters, [&](int i) {
    const int k = i % n_dense;
    const cublasStatus_t st = cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, rows, batch, cols, &alpha,
                                           dw[k].data(), CUDA_R_16BF, cols, dxb[k].data(), CUDA_R_16BF, cols,
                                           &beta, dyb.data(), CUDA_R_16BF, rows, CUBLAS_COMPUTE_32F,
                                           CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS)
      throw Error(ErrorKind::Cuda, std::string("cublasGemmEx (bf16 baseline): ") + cublasGetStatusString(st));
  });
  dw.clear();
  dxb.clear();
  const double baseline_gbps = dense_bytes / (baseline_us * 1e3);

  // ---- GLQ ----
  double us = 0, kernel_us = 0, transforms_us = 0, dequant_us = 0, cores_us = 0, mma_us = 0, dequant_gemm_us = 0;
  std::string plan;
  size_t weight_bytes = dense_bytes;
  std::string path;
  int n_sets = 0;
  {
    std::vector<DeviceMemory> xs;
    DeviceMemory y(size_t(batch) * rows * 4);
    if (bits == 16) {
      path = "dense bf16 (glq engine: fp32 → bf16, cuBLAS)";
      std::vector<float> w(size_t(rows) * cols);
      std::mt19937_64 rng(a.seed);
      std::uniform_real_distribution<float> d(-1.0f, 1.0f);
      for (auto& v : w) v = d(rng);
      std::vector<cuda::DeviceDenseMatrix> mats;
      mats.push_back(cuda::upload_dense_bf16(w.data(), rows, cols));
      n_sets = copies_for(dense_bytes, info.l2_bytes, 64);
      for (int i = 1; i < n_sets; ++i) {
        cuda::DeviceDenseMatrix c;
        c.rows = rows;
        c.cols = cols;
        c.w = clone(mats[0].w);
        mats.push_back(std::move(c));
      }
      std::vector<float> xh(size_t(batch) * cols);
      for (auto& v : xh) v = d(rng);
      for (int i = 0; i < n_sets; ++i) xs.push_back(cuda::to_device(xh));
      ctx.reserve(batch, rows, cols);
      us = time_graph_us(stream, iters, [&](int i) {
        cuda::dense_matmul(ctx, mats[i % n_sets], xs[i % n_sets].as<const float>(), y.as<float>(), batch);
      });
    } else {
      std::vector<cuda::DeviceQuantizedMatrix> mats;
      mats.push_back(cuda::upload(random_quantized_matrix(rows, cols, bits, a.seed)));
      weight_bytes = mats[0].weight_bytes();
      n_sets = copies_for(weight_bytes, info.l2_bytes, 256);
      for (int i = 1; i < n_sets; ++i) mats.push_back(clone(mats[0]));
      std::vector<float> xh(size_t(batch) * cols);
      std::mt19937_64 rng(a.seed + 9);
      std::normal_distribution<float> d(0.0f, 1.0f);
      for (auto& v : xh) v = d(rng);
      for (int i = 0; i < n_sets; ++i) xs.push_back(cuda::to_device(xh));
      ctx.reserve(batch, rows, cols);
      // The path qmatmul takes by itself (QPath::Auto), named.
      const cuda::QPath qp = batch <= cuda::kCoresMaxBatch ? cuda::QPath::Gemv
                             : batch <= cuda::kMmaMaxBatch ? cuda::QPath::Mma : cuda::QPath::DequantGemm;
      const bool qgemm = qp == cuda::QPath::DequantGemm && cuda::detail::qgemm_supported(info, mats[0], batch);
      path = qgemm ? "input transform, decode into the tensor cores' register operands (128 vectors a block), output "
                     "transform"
             : qp == cuda::QPath::DequantGemm ? "dequantize to fp16 + cuBLAS fp16 GEMM"
             : qp == cuda::QPath::Gemv        ? "input transform, decode on CUDA cores, output transform"
                                              : "input transform, decode into tensor-core fragments (mma.sync), output transform";
      us = time_graph_us(stream, iters, [&](int i) {
        cuda::qmatmul(ctx, mats[i % n_sets], xs[i % n_sets].as<const float>(), y.as<float>(), batch, qp);
      });
      const bool tiles = qp == cuda::QPath::Mma && cuda::detail::qmma_tiles_supported(info, mats[0], batch);
      const int tile_parts = tiles ? cuda::detail::qmma_tiles_parts(info, rows, cols) : 0;
      if (tiles) {
        path = cuda::detail::tiles_registers(info)
                   ? "input transform, decode into the tensor cores' register operands (wgmma on sm_90a, else mma.sync), "
                     "output transform"
                   : "input transform, decode into shared-memory tiles for the tensor cores (wgmma on sm_90a, else "
                     "mma.sync), output transform";
        plan = "256-row blocks x " + std::to_string(tile_parts) + " column ranges";
      } else if (qp == cuda::QPath::Mma) {  // as qmatmul launches it (the fused input transform is opt-in)
        plan = cuda::detail::qmma_plan(info, mats[0], batch, false, batch > cuda::kGemvMaxBatch);
      }
      // The parts alone, to see where the time goes: the decode kernel (or the dequantization),
      // and the two transforms.
      DeviceMemory xt(size_t(batch) * cols * 2), yt(size_t(batch) * rows * 4);
      if (tiles) {
        DeviceMemory yp(size_t(tile_parts) * batch * rows * 4);
        kernel_us = time_graph_us(stream, iters, [&](int i) {
          cuda::detail::launch_qmma_tiles(info, mats[i % n_sets], ctx.tables(), xt.as<const uint16_t>(), yp.as<float>(),
                                          batch, tile_parts, stream);
        });
      } else if (qgemm) {
        kernel_us = time_graph_us(stream, iters, [&](int i) {
          cuda::detail::launch_qgemm(info, mats[i % n_sets], ctx.tables(), xt.as<const uint16_t>(), yt.as<uint16_t>(),
                                     batch, stream);
        });
        // The path it replaces, in the same run: the dequantization to fp16 and cuBLAS.
        cuda::detail::set_qgemm(0);
        try {
          dequant_gemm_us = time_graph_us(stream, iters, [&](int i) {
            cuda::qmatmul(ctx, mats[i % n_sets], xs[i % n_sets].as<const float>(), y.as<float>(), batch, qp);
          });
        } catch (...) {
          cuda::detail::set_qgemm(-1);
          throw;
        }
        cuda::detail::set_qgemm(-1);
      } else if (qp != cuda::QPath::DequantGemm) {
        kernel_us = time_graph_us(stream, iters, [&](int i) {
          cuda::qgemv_hadamard_domain(ctx, mats[i % n_sets], xt.as<const uint16_t>(), yt.as<float>(), batch);
        });
      } else {
        DeviceMemory wt(size_t(rows) * cols * 2);
        dequant_us = time_graph_us(stream, std::max(1, iters / 4), [&](int i) {
          cuda::dequantize_hadamard_domain(ctx, mats[i % n_sets], wt.as<uint16_t>());
        });
      }
      transforms_us = time_graph_us(stream, iters, [&](int i) {
        const auto& m = mats[i % n_sets];
        cuda::hadamard_input(ctx, m.plan_in, m.sign_in.as<const float>(), xs[i % n_sets].as<const float>(),
                             xt.as<uint16_t>(), batch);
        cuda::hadamard_output(ctx, m.plan_out, m.sign_out.as<const float>(), yt.as<const float>(), y.as<float>(), batch);
      });
      // The other decode kernel, for comparison: the CUDA-core one (batch ≤ 16) and the
      // tensor-core one (batch ≤ 64), each in a whole product with the same transforms.
      if (batch <= 2 * cuda::kGemvMaxBatch && qp != cuda::QPath::Gemv)
        cores_us = time_graph_us(stream, iters, [&](int i) {
          cuda::qmatmul(ctx, mats[i % n_sets], xs[i % n_sets].as<const float>(), y.as<float>(), batch,
                        cuda::QPath::Gemv);
        });
      if (batch <= cuda::kMmaMaxBatch && qp != cuda::QPath::Mma)
        mma_us = time_graph_us(stream, iters, [&](int i) {
          cuda::qmatmul(ctx, mats[i % n_sets], xs[i % n_sets].as<const float>(), y.as<float>(), batch,
                        cuda::QPath::Mma);
        });
    }
  }
  const double gbps = weight_bytes / (us * 1e3);
  nlohmann::json j;
  j["device"] = "cuda";
  j["card"] = info.name;
  j["date"] = today_utc();
  j["rows"] = rows;
  j["cols"] = cols;
  j["batch"] = batch;
  j["bits"] = bits;
  j["path"] = path;
  j["us"] = us;
  j["baseline"] = "cublas bf16 gemv/gemm";
  j["baseline_us"] = baseline_us;
  j["speedup"] = baseline_us / us;
  j["weight_bytes"] = weight_bytes;
  j["gbps"] = gbps;
  j["baseline_gbps"] = baseline_gbps;
  j["bw_fraction_of_bf16"] = gbps / baseline_gbps;
  j["limit_us_at_bf16_rate"] = weight_bytes / (baseline_gbps * 1e3);
  j["tflops"] = flops / (us * 1e6);
  j["baseline_tflops"] = flops / (baseline_us * 1e6);
  if (kernel_us > 0) {
    j["kernel_us"] = kernel_us;          // the decode kernel alone (x̃ → ỹ)
    j["kernel_bw_fraction_of_bf16"] = (weight_bytes / (kernel_us * 1e3)) / baseline_gbps;
  }
  if (transforms_us > 0) j["transforms_us"] = transforms_us;  // input and output transforms alone
  if (dequant_us > 0) j["dequant_us"] = dequant_us;           // W̃ decoded to fp16 alone
  if (cores_us > 0) j["cuda_cores_path_us"] = cores_us;       // whole product, CUDA-core decode kernel
  if (mma_us > 0) j["tensor_core_path_us"] = mma_us;          // whole product, tensor-core decode kernel
  if (dequant_gemm_us > 0) j["dequant_gemm_path_us"] = dequant_gemm_us;  // whole product, dequantize + cuBLAS
  if (!plan.empty()) j["kernel_plan"] = plan;
  j["iters"] = iters;
  j["weight_sets"] = n_sets;
  fmt::print(stderr,
             "{} | {}x{} batch {} {} bpw | {}\n  glq {:.2f} us ({:.0f} GB/s of compressed weights, {:.1f}% of bf16 "
             "cuBLAS bandwidth) | cuBLAS bf16 {:.2f} us ({:.0f} GB/s) | speedup {:.2f}x\n",
             info.name, rows, cols, batch, bits, path, us, gbps, 100.0 * gbps / baseline_gbps, baseline_us,
             baseline_gbps, baseline_us / us);
  if (kernel_us > 0)
    fmt::print(stderr, "  parts: decode kernel {:.2f} us ({:.1f}% of bf16 bandwidth), transforms {:.2f} us\n", kernel_us,
               100.0 * (weight_bytes / (kernel_us * 1e3)) / baseline_gbps, transforms_us);
  if (dequant_us > 0)
    fmt::print(stderr, "  parts: dequantize {:.2f} us, transforms {:.2f} us\n", dequant_us, transforms_us);
  if (cores_us > 0) fmt::print(stderr, "  CUDA-core decode kernel path: {:.2f} us\n", cores_us);
  if (mma_us > 0) fmt::print(stderr, "  tensor-core decode kernel path: {:.2f} us\n", mma_us);
  if (dequant_gemm_us > 0)
    fmt::print(stderr, "  dequantize + cuBLAS fp16 GEMM path: {:.2f} us ({:.2f}x of bf16)\n", dequant_gemm_us,
               baseline_us / dequant_gemm_us);
  return j;
}

#endif

}  // namespace glq::cli
