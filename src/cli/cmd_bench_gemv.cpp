// `glq bench gemv`: one quantized product y = x W^T (transforms included) against the dense
// fp32 product of OpenBLAS (cblas_sgemv at batch 1, cblas_sgemm above) on the same shape, both
// timed in the same run with the same thread count. On the CPU, --bits 16 times the dense 16-bit
// kernel (cpu::hmatmul, fp16 or bf16 weights) the same way: e.g. an output head kept in 16 bits.
//
// Method: each variant runs `iters` times after a warm-up; the reported time is the median of
// the per-call wall times. Weights and inputs rotate over enough copies that together they
// exceed twice the last-level cache (64 MiB here), so every call reads its weights from memory
// as it would inside a model (a 2-bit 4096 x 14336 matrix alone, 14.7 MB, would otherwise stay
// in a 32 MiB L3 and measure the cache instead of the kernel).
#include <cblas.h>
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "cli/bench_common.hpp"
#include "cli/command.hpp"
#include "glq/codec/quantized_matrix.hpp"
#include "glq/error.hpp"
#include "glq/kernels/cpu.hpp"
#include "glq/transform/hadamard.hpp"
#include "glq/util/thread_pool.hpp"

namespace glq::cli {

namespace {

constexpr size_t kRotateBytes = size_t{128} << 20;  // 2 × a 64 MiB cache: weights come from DRAM
constexpr int kMaxCopies = 64;
constexpr double kTargetSeconds = 1.5;  // time budget per variant when --iters is not given

std::string today_utc() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M UTC", std::gmtime(&t));
  return buf;
}

int copies_for(size_t bytes) {
  return static_cast<int>(std::clamp<size_t>((kRotateBytes + bytes - 1) / bytes, 1, kMaxCopies));
}


struct Timing {
  double wall_us = 0;  // median wall time of one call
  double cpu_us = 0;   // median CPU time of the calling thread in one call
};

double thread_cpu_us() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3;
}

// Median wall and thread-CPU times of one call in microseconds; call(i) runs iteration i. With one
// thread the CPU time is what the call cost the core, whatever else shares the machine (other
// processes stretch wall time but not it); with several it counts only the calling thread.
Timing median_us(int iters, const std::function<void(int)>& call) {
  call(0);  // warm-up: scratch growth, page faults, thread wake-up
  std::vector<double> t(iters), c(iters);
  for (int i = 0; i < iters; ++i) {
    const double c0 = thread_cpu_us();
    const auto t0 = std::chrono::steady_clock::now();
    call(i + 1);
    t[i] = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    c[i] = thread_cpu_us() - c0;
  }
  std::nth_element(t.begin(), t.begin() + iters / 2, t.end());
  std::nth_element(c.begin(), c.begin() + iters / 2, c.end());
  return {t[iters / 2], c[iters / 2]};
}

// Enough iterations for about kTargetSeconds, judged from one timed call.
int auto_iters(int requested, const std::function<void(int)>& call) {
  if (requested > 0) return requested;
  const auto t0 = std::chrono::steady_clock::now();
  call(0);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return std::clamp(static_cast<int>(kTargetSeconds / std::max(s, 1e-6)), 5, 2000);
}

nlohmann::json run_cpu_gemv_bench(const GemvBenchArgs& a, const std::string& isa_arg, cpu::Half half_type) {
  const int bits = static_cast<int>(a.bits);
  if (a.bits != bits || (bits != 2 && bits != 3 && bits != 4 && bits != 16))
    throw_invalid("bench gemv --device cpu: --bits must be 2, 3, 4 or 16, got " + fmt::format("{}", a.bits));
  const bool dense16 = bits == 16;
  if (a.rows <= 0 || a.cols <= 0 || (!dense16 && (a.rows % 8 || a.cols % 8)))
    throw_invalid(fmt::format("bench gemv: rows and cols must be positive (multiples of 8 when quantized), got {} x {}",
                              a.rows, a.cols));
  if (a.batch <= 0) throw_invalid(fmt::format("bench gemv: batch must be positive, got {}", a.batch));
  const int rows = a.rows, cols = a.cols, batch = a.batch;
  const cpu::Isa isa = isa_arg.empty() ? cpu::detect_isa() : cpu::parse_isa(isa_arg);
  ThreadPool pool(a.threads);
  const int threads = pool.size();
  openblas_set_num_threads(threads);

  std::mt19937_64 rng(a.seed + 3);
  std::normal_distribution<float> normal;

  // ---- baseline: dense fp32 through OpenBLAS ----
  const size_t dense_bytes = size_t(rows) * cols * sizeof(float);
  Timing baseline;
  int dense_copies = 0;
  {
    dense_copies = copies_for(dense_bytes);
    std::vector<std::vector<float>> w(dense_copies), x(dense_copies);
    std::uniform_real_distribution<float> u(-0.05f, 0.05f);
    for (int c = 0; c < dense_copies; ++c) {
      w[c].resize(size_t(rows) * cols);
      if (c == 0)
        for (auto& v : w[c]) v = u(rng);
      else
        w[c] = w[0];
      x[c].resize(size_t(batch) * cols);
      for (auto& v : x[c]) v = normal(rng);
    }
    std::vector<float> y(size_t(batch) * rows);
    auto call = [&](int i) {
      const int c = i % dense_copies;
      if (batch == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, rows, cols, 1.0f, w[c].data(), cols, x[c].data(), 1, 0.0f,
                    y.data(), 1);
      else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, batch, rows, cols, 1.0f, x[c].data(), cols,
                    w[c].data(), cols, 0.0f, y.data(), rows);
    };
    baseline = median_us(auto_iters(a.iters, call), call);
  }

  // ---- GLQ (or, with --bits 16, the same matrix in 16-bit floats) ----
  std::vector<codec::QuantizedMatrix> mats;
  std::vector<std::vector<uint16_t>> halves;
  size_t weight_bytes = 0;
  if (dense16) {
    std::uniform_real_distribution<float> u(-0.05f, 0.05f);
    halves.emplace_back(size_t(rows) * cols);
    for (auto& v : halves[0]) v = cpu::float_to_half(u(rng), half_type);
    weight_bytes = halves[0].size() * sizeof(uint16_t);
  } else {
    mats.push_back(random_quantized_matrix(rows, cols, bits, a.seed));
    weight_bytes = mats[0].storage_bytes();
  }
  const int copies = copies_for(weight_bytes);
  for (int c = 1; c < copies; ++c) {
    if (dense16)
      halves.push_back(halves[0]);
    else
      mats.push_back(mats[0]);
  }
  std::vector<std::vector<float>> xs(copies);
  for (auto& x : xs) {
    x.resize(size_t(batch) * cols);
    for (auto& v : x) v = normal(rng);
  }
  std::vector<float> y(size_t(batch) * rows);
  auto call = [&](int i) {
    const int c = i % copies;
    if (dense16)
      cpu::hmatmul(halves[c].data(), half_type, rows, cols, xs[c].data(), y.data(), batch, pool, isa);
    else
      cpu::qmatmul(mats[c], xs[c].data(), y.data(), batch, pool, isa);
  };
  const int iters = auto_iters(a.iters, call);
  const Timing glq = median_us(iters, call);
  const double us = glq.wall_us, baseline_us = baseline.wall_us;

  const double gbps = weight_bytes / (us * 1e3);
  const double baseline_gbps = dense_bytes / (baseline_us * 1e3);
  const double flops = 2.0 * rows * cols * batch;
  nlohmann::json j;
  j["device"] = "cpu";
  j["date"] = today_utc();
  j["isa"] = cpu::isa_name(isa);
  j["threads"] = threads;
  j["rows"] = rows;
  j["cols"] = cols;
  j["batch"] = batch;
  j["bits"] = bits;
  if (dense16) j["weights"] = cpu::half_name(half_type);
  j["us"] = us;
  j["baseline"] = batch == 1 ? "cblas_sgemv fp32" : "cblas_sgemm fp32";
  j["baseline_blas"] = std::string(openblas_get_config()) + " core " + openblas_get_corename();
  j["baseline_us"] = baseline_us;
  j["speedup"] = baseline_us / us;
  j["weight_bytes"] = weight_bytes;
  j["baseline_weight_bytes"] = dense_bytes;
  j["gbps"] = gbps;
  j["baseline_gbps"] = baseline_gbps;
  j["gbps_fraction_of_fp32"] = gbps / baseline_gbps;
  j["gflops"] = flops / (us * 1e3);
  j["baseline_gflops"] = flops / (baseline_us * 1e3);
  if (threads == 1) {
    // Thread CPU time: the steadier comparison on a shared machine (docs/cpu-kernels.md).
    j["cpu_us"] = glq.cpu_us;
    j["baseline_cpu_us"] = baseline.cpu_us;
    j["cpu_speedup"] = baseline.cpu_us / glq.cpu_us;
    j["cpu_gbps"] = weight_bytes / (glq.cpu_us * 1e3);
    j["baseline_cpu_gbps"] = dense_bytes / (baseline.cpu_us * 1e3);
    j["cpu_gbps_fraction_of_fp32"] = j["cpu_gbps"].get<double>() / j["baseline_cpu_gbps"].get<double>();
  }
  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) == 3) j["load_average_1min"] = load[0];
  j["iters"] = iters;
  j["weight_copies"] = copies;
  j["baseline_weight_copies"] = dense_copies;
  return j;
}

RunFn setup(CLI::App& app) {
  struct Options {
    GemvBenchArgs args;
    std::string device = "cpu";
    std::string isa;
    std::string half = "fp16";
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  app.add_option("--device", o->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--rows", o->args.rows, "output features");
  app.add_option("--cols", o->args.cols, "input features");
  app.add_option("--batch", o->args.batch, "rows of x");
  app.add_option("--bits", o->args.bits, "bits per weight: 2, 3 or 4 (CPU: 16 = dense 16-bit weights, see --half)");
  app.add_option("--half", o->half, "CPU, --bits 16: fp16 or bf16")->check(CLI::IsMember({"fp16", "bf16"}));
  app.add_option("--threads", o->args.threads, "CPU threads (0 = all)");
  app.add_option("--iters", o->args.iters, "timed iterations (0 = about 1.5 s per variant)");
  app.add_option("--seed", o->args.seed, "random seed");
  app.add_option("--isa", o->isa, "CPU kernel: scalar, avx2 or avx512 (default: best, or GLQ_CPU_ISA)");
  app.add_flag("--json", o->json, "print one JSON object on stdout");
  return [o]() {
    const nlohmann::json j = o->device == "cuda" ? run_cuda_gemv_bench(o->args) : run_cpu_gemv_bench(o->args, o->isa, o->half == "bf16" ? cpu::Half::BF16 : cpu::Half::F16);
    if (j.value("device", "") == "cpu")
      fmt::print(stderr,
                 "glq {}-bit {} x {} batch {} ({}, {} threads): {:.1f} us, {:.2f} GB/s of {} weight bytes "
                 "({:.0f}% of fp32's GB/s)\n{} on the fp32 matrix: {:.1f} us, {:.2f} GB/s\nspeedup {:.2f}x\n",
                 j["bits"].get<int>(), j["rows"].get<int>(), j["cols"].get<int>(), j["batch"].get<int>(),
                 j["isa"].get<std::string>(), j["threads"].get<int>(), j["us"].get<double>(),
                 j["gbps"].get<double>(), j["weight_bytes"].get<size_t>(),
                 100 * j["gbps_fraction_of_fp32"].get<double>(), j["baseline"].get<std::string>(),
                 j["baseline_us"].get<double>(), j["baseline_gbps"].get<double>(), j["speedup"].get<double>());
    if (j.contains("cpu_us"))
      fmt::print(stderr, "thread CPU time: glq {:.1f} us ({:.2f} GB/s, {:.0f}% of fp32's), baseline {:.1f} us: {:.2f}x "
                 "(load average {:.2f})\n",
                 j["cpu_us"].get<double>(), j["cpu_gbps"].get<double>(), 100 * j["cpu_gbps_fraction_of_fp32"].get<double>(),
                 j["baseline_cpu_us"].get<double>(), j["cpu_speedup"].get<double>(), j.value("load_average_1min", 0.0));
    if (o->json)
      fmt::print("{}\n", j.dump());
    else if (j.value("device", "") != "cpu")
      fmt::print(stderr, "{}\n", j.dump(2));
    return 0;
  };
}

GLQ_COMMAND("bench gemv", "time one quantized matrix product against dense fp32 (CPU) or bf16 (CUDA)", setup);

}  // namespace

}  // namespace glq::cli
