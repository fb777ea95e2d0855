// `glq bench codec`: distortion and encode speed of the 2/3/4 bpw codecs on i.i.d. Gaussian data.
//
// For each bit width, on --groups groups of 8 i.i.d. N(0,1) values:
//   * mse: mean squared error per weight at the best stage scales, found by coordinate search
//     (a grid of 0.02, then 0.005, per stage factor, two rounds), beside the MSE at the
//     library's derived factors (stage_scale_factors), the rate-distortion bound 2^(−2R) and the
//     MSE of the Lloyd-Max scalar quantizer with 2^R levels (computed here by Lloyd's iteration
//     on the exact Gaussian density, and run on the same data as the timed baseline);
//   * encode throughput in groups per second of quantize_group (all stages) at those scales, on
//     one thread and on --threads threads (glq::ThreadPool), each the best of 3 timed passes;
//     the one-thread figure is also given by the thread's CPU time (a shared machine slows the
//     wall-time figure, not that one).
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <time.h>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cli/command.hpp"
#include "glq/codec/quantized_matrix.hpp"
#include "glq/error.hpp"
#include "glq/util/thread_pool.hpp"

namespace glq::cli {
namespace {

// Bars of the codec (MSE per weight on N(0,1) data at the best scale).
double mse_bar(int bits) { return bits == 2 ? 0.092 : bits == 3 ? 0.032 : 0.0095; }

// Lloyd-Max quantizer of N(0,1) with `levels` levels: iterate thresholds = midpoints, levels =
// conditional means, until the levels move less than 1e-12. Returns the MSE.
struct Data {
  std::vector<float> x;  // (groups, 8)
  size_t groups = 0;
};

struct LloydMax {
  double mse = 0;
  std::vector<float> levels;      // (L)
  std::vector<float> thresholds;  // (L−1) interior thresholds
};

LloydMax lloyd_max_gaussian(int levels) {
  const double inv_sqrt2pi = 0.3989422804014327;
  auto pdf = [&](double t) { return std::isinf(t) ? 0.0 : inv_sqrt2pi * std::exp(-0.5 * t * t); };
  auto cdf = [](double t) { return 0.5 * std::erfc(-t / std::sqrt(2.0)); };
  std::vector<double> c(levels);
  for (int i = 0; i < levels; ++i) c[i] = -3.0 + 6.0 * (i + 0.5) / levels;
  std::vector<double> t(levels + 1);
  for (int it = 0; it < 100000; ++it) {
    t[0] = -INFINITY;
    t[levels] = INFINITY;
    for (int i = 1; i < levels; ++i) t[i] = 0.5 * (c[i - 1] + c[i]);
    double moved = 0;
    for (int i = 0; i < levels; ++i) {
      const double p = cdf(t[i + 1]) - cdf(t[i]);
      const double m = (pdf(t[i]) - pdf(t[i + 1])) / p;  // E[X | t_i < X < t_{i+1}]
      moved = std::max(moved, std::fabs(m - c[i]));
      c[i] = m;
    }
    if (moved < 1e-12) break;
  }
  // With centroid levels, D = E[X²] − Σ p_i c_i².
  double d = 1.0;
  for (int i = 0; i < levels; ++i) d -= (cdf(t[i + 1]) - cdf(t[i])) * c[i] * c[i];
  LloydMax lm;
  lm.mse = d;
  for (int i = 0; i < levels; ++i) lm.levels.push_back(static_cast<float>(c[i]));
  for (int i = 1; i < levels; ++i) lm.thresholds.push_back(static_cast<float>(t[i]));
  return lm;
}

// The Lloyd-Max scalar quantizer run on the data (the baseline timed in the same run): each
// value goes to the level of its interval, found by binary search over the thresholds.
// Returns the measured MSE per weight; *rate receives groups of 8 per second on one thread.
double lloyd_max_encode(const Data& d, const LloydMax& lm, double* rate) {
  const float* th = lm.thresholds.data();
  const int nt = static_cast<int>(lm.thresholds.size());
  double best_s = 1e30, err = 0;
  std::vector<uint8_t> idx(d.x.size());
  for (int pass = 0; pass < 3; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t i = 0; i < d.x.size(); ++i) {
      idx[i] = static_cast<uint8_t>(std::upper_bound(th, th + nt, d.x[i]) - th);
    }
    best_s = std::min(best_s, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  for (size_t i = 0; i < d.x.size(); ++i) {
    const double e = d.x[i] - lm.levels[idx[i]];
    err += e * e;
  }
  *rate = static_cast<double>(d.groups) / best_s;
  return err / d.x.size();
}


// MSE per weight of the stages at factors `f` (scale_s = f_s, data has unit variance).
double stage_mse(const Data& d, const std::vector<codec::Codebook>& stages,
                 const std::vector<float>& f, ThreadPool& pool) {
  std::vector<double> partial(pool.size(), 0.0);
  pool.parallel_for(static_cast<int64_t>(d.groups), [&](int64_t b, int64_t e, int th) {
    uint16_t codes[4];
    float rec[8];
    double s = 0;
    for (int64_t g = b; g < e; ++g) {
      const float* x = &d.x[static_cast<size_t>(g) * 8];
      codec::quantize_group(x, stages, f.data(), codes, rec);
      for (int i = 0; i < 8; ++i) s += double(x[i] - rec[i]) * (x[i] - rec[i]);
    }
    partial[th] += s;
  });
  double s = 0;
  for (double v : partial) s += v;
  return s / (8.0 * d.groups);
}

// Coordinate search of the stage factors, starting from the library's derived ones.
std::vector<float> best_factors(const Data& d, const std::vector<codec::Codebook>& stages,
                                std::vector<float> f, ThreadPool& pool, double* mse) {
  double best = stage_mse(d, stages, f, pool);
  for (int round = 0; round < 2; ++round) {
    for (size_t s = 0; s < f.size(); ++s) {
      for (float step : {0.02f, 0.005f}) {
        const float center = f[s];
        for (int k = -5; k <= 5; ++k) {
          if (k == 0) continue;
          std::vector<float> g = f;
          g[s] = center + step * k;
          if (g[s] <= 0) continue;
          const double m = stage_mse(d, stages, g, pool);
          if (m < best) {
            best = m;
            f = g;
          }
        }
      }
    }
  }
  *mse = best;
  return f;
}

double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

// Groups per second of quantize_group over the data, best of 3 passes (wall time). With a pool
// of one thread all work runs on the calling thread; *cpu_rate then receives the rate by that
// thread's CPU time, which tells how much a busy machine slowed the wall-time figure.
double encode_rate(const Data& d, const std::vector<codec::Codebook>& stages,
                   const std::vector<float>& f, ThreadPool& pool, double* cpu_rate = nullptr) {
  double best_s = 1e30, best_cpu = 1e30;
  std::vector<uint32_t> sink(pool.size(), 0);
  for (int pass = 0; pass < 3; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = thread_cpu_seconds();
    pool.parallel_for(static_cast<int64_t>(d.groups), [&](int64_t b, int64_t e, int th) {
      uint16_t codes[4];
      uint32_t acc = 0;
      for (int64_t g = b; g < e; ++g) {
        codec::quantize_group(&d.x[static_cast<size_t>(g) * 8], stages, f.data(), codes, nullptr);
        acc += codes[0];
      }
      sink[th] += acc;
    });
    best_s = std::min(best_s, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    best_cpu = std::min(best_cpu, thread_cpu_seconds() - c0);
  }
  if (cpu_rate) *cpu_rate = static_cast<double>(d.groups) / best_cpu;
  if (sink[0] == 0xFFFFFFFFu) fmt::print(stderr, " ");  // keeps the work observable
  return static_cast<double>(d.groups) / best_s;
}

std::string now_utc() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M UTC", std::gmtime(&t));
  return buf;
}

RunFn setup(CLI::App& app) {
  struct Options {
    bool json = false;
    int64_t groups = 1 << 17;
    int threads = 0;
    uint64_t seed = 1;
  };
  auto o = std::make_shared<Options>();
  app.add_flag("--json", o->json, "print one JSON object on stdout");
  app.add_option("--groups", o->groups, "groups of 8 Gaussian values per bit width")->check(CLI::Range(int64_t{1024}, int64_t{1} << 26));
  app.add_option("--threads", o->threads, "threads for the all-threads figure (0 = all)");
  app.add_option("--seed", o->seed, "random seed of the data");
  return [o]() {
    const int threads = o->threads > 0 ? o->threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    ThreadPool one(1), all(threads);
    Data d;
    d.groups = static_cast<size_t>(o->groups);
    d.x.resize(d.groups * 8);
    std::mt19937_64 rng(o->seed);
    std::normal_distribution<float> gauss;
    for (float& v : d.x) v = gauss(rng);
    auto& log = o->json ? stderr : stdout;
    fmt::print(log, "glq bench codec: {} groups of 8 i.i.d. N(0,1) values, {} threads, {}\n",
               d.groups, threads, now_utc());
    fmt::print(log, "{:>4} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>12} {:>12} {:>12}  {}\n", "bpw",
               "mse", "mse@lib", "R-D", "LloydMax", "/LM", "bar", "groups/s 1t", "(1t by CPU)",
               "groups/s all", "scales");
    nlohmann::json rows = nlohmann::json::array();
    for (int bits : {2, 3, 4}) {
      const auto stages = codec::stages_for_bits(bits);
      const auto lib = codec::stage_scale_factors(bits);
      const double mse_lib = stage_mse(d, stages, lib, all);
      double mse = 0;
      const auto f = best_factors(d, stages, lib, all, &mse);
      const double rd = std::pow(2.0, -2.0 * bits);
      const LloydMax lmq = lloyd_max_gaussian(1 << bits);
      const double lm = lmq.mse;
      double lm_rate = 0;
      const double lm_measured = lloyd_max_encode(d, lmq, &lm_rate);
      double r1_cpu = 0;
      const double r1 = encode_rate(d, stages, f, one, &r1_cpu);
      const double ra = encode_rate(d, stages, f, all);
      std::string fs;
      for (float v : f) fs += fmt::format("{}{:.3f}", fs.empty() ? "" : ",", v);
      fmt::print(log, "{:>4} {:>9.5f} {:>9.5f} {:>9.5f} {:>9.5f} {:>8.3f} {:>7} {:>12.3e} {:>12.3e} {:>12.3e}  {}\n",
                 bits, mse, mse_lib, rd, lm, mse / lm, mse <= mse_bar(bits) ? "ok" : "MISSED", r1,
                 r1_cpu, ra, fs);
      fmt::print(log, "     baseline Lloyd-Max on the same data: MSE {:.5f}, {:.3e} groups/s on 1 thread "
                 "(E8 codec at {:.2f}x its speed, {:.2f}x its MSE)\n",
                 lm_measured, lm_rate, r1 / lm_rate, mse / lm_measured);
      rows.push_back({{"bits", bits},
                      {"mse", mse},
                      {"mse_library_scales", mse_lib},
                      {"rd_bound", rd},
                      {"lloyd_max_mse", lm},
                      {"lloyd_max_mse_measured", lm_measured},
                      {"lloyd_max_encode_groups_per_s_1t", lm_rate},
                      {"mse_bar", mse_bar(bits)},
                      {"scale_factors", f},
                      {"encode_groups_per_s_1t", r1},
                      {"encode_groups_per_s_1t_cpu_time", r1_cpu},
                      {"encode_groups_per_s", ra}});
    }
    if (o->json) {
      nlohmann::json j;
      j["rows"] = rows;
      j["groups"] = d.groups;
      j["threads"] = threads;
      j["date"] = now_utc();
      fmt::print("{}\n", j.dump());
    }
    return 0;
  };
}

GLQ_COMMAND("bench codec", "codec MSE on Gaussian data vs rate-distortion and Lloyd-Max, and encode speed", setup);

}  // namespace
}  // namespace glq::cli
