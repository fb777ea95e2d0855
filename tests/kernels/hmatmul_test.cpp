// hmatmul (16-bit dense weights) on every ISA against a double-precision product of the widened
// weights, on awkward shapes, both 16-bit formats and batch sizes 1, 3, 17, 64.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "glq/error.hpp"
#include "glq/kernels/cpu.hpp"

namespace glq::cpu {
namespace {

struct Case {
  int rows, cols, batch;
};

using Param = std::tuple<Isa, Half, Case>;

std::string case_name(const testing::TestParamInfo<Param>& info) {
  const auto& [isa, type, c] = info.param;
  return std::string(isa_name(isa)) + "_" + half_name(type) + "_rows" + std::to_string(c.rows) + "_cols" +
         std::to_string(c.cols) + "_batch" + std::to_string(c.batch);
}

std::vector<uint16_t> random_weights(size_t n, Half type, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<uint16_t> w(n);
  for (auto& v : w) v = float_to_half(normal(rng), type);
  return w;
}

std::vector<float> random_input(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(n);
  for (auto& v : x) v = normal(rng);
  return x;
}

// Every output within 1e-6 of Σ|w·x| of the double product: float32 summation of up to 14336
// terms stays far inside it, while one wrong weight moves an output by about Σ|w·x| / cols
// (≥ 7e-5 of it here).
void expect_matches_reference(const std::vector<uint16_t>& w, Half type, int rows, int cols, const std::vector<float>& x,
                              int batch, const std::vector<float>& y) {
  int bad = 0;
  for (int b = 0; b < batch && bad < 5; ++b)
    for (int r = 0; r < rows && bad < 5; ++r) {
      double ref = 0, mag = 0;
      for (int c = 0; c < cols; ++c) {
        const double p = static_cast<double>(half_to_float(w[static_cast<size_t>(r) * cols + c], type)) *
                         x[static_cast<size_t>(b) * cols + c];
        ref += p;
        mag += std::fabs(p);
      }
      const double got = y[static_cast<size_t>(b) * rows + r];
      if (!(std::fabs(got - ref) <= 1e-6 * mag + 1e-30)) {
        ADD_FAILURE() << "batch row " << b << ", output " << r << ": " << got << " vs " << ref << " (Σ|w·x| " << mag
                      << ")";
        ++bad;
      }
    }
}

class HmatmulTest : public testing::TestWithParam<Param> {};

TEST_P(HmatmulTest, MatchesDoubleReference) {
  const auto& [isa, type, c] = GetParam();
  if (!isa_supported(isa)) GTEST_SKIP() << "this CPU cannot run " << isa_name(isa);
  const uint64_t seed = 1000003ull * c.rows + 7919ull * c.cols + c.batch + (type == Half::BF16 ? 17 : 0);
  const auto w = random_weights(static_cast<size_t>(c.rows) * c.cols, type, seed);
  const auto x = random_input(static_cast<size_t>(c.batch) * c.cols, seed + 1);
  ThreadPool pool(2);
  std::vector<float> y(static_cast<size_t>(c.batch) * c.rows, -7.0f);
  hmatmul(w.data(), type, c.rows, c.cols, x.data(), y.data(), c.batch, pool, isa);
  expect_matches_reference(w, type, c.rows, c.cols, x, c.batch, y);
}

const Case kCases[] = {
    {1, 1, 1},       {3, 7, 3},        {19, 15, 17},     {5, 16, 64},     {111, 17, 1},   {8, 72, 3},
    {13, 576, 1},    {576, 576, 17},   {989, 111, 64},   {1000 + 8, 576, 1}, {37, 1000 + 8, 3},
    {4, 14336, 1},   {7, 14336, 17},   {64, 33, 64},     {2048, 19, 1},   {515, 24, 3},
};

INSTANTIATE_TEST_SUITE_P(AllIsas, HmatmulTest,
                         testing::Combine(testing::Values(Isa::Scalar, Isa::Avx2, Isa::Avx512),
                                          testing::Values(Half::F16, Half::BF16), testing::ValuesIn(kCases)),
                         case_name);

TEST(Hmatmul, ThreadCountDoesNotChangeTheResult) {
  const int rows = 1000 + 8, cols = 576, batch = 3;
  const auto w = random_weights(static_cast<size_t>(rows) * cols, Half::F16, 5);
  const auto x = random_input(static_cast<size_t>(batch) * cols, 6);
  std::vector<float> y1(static_cast<size_t>(batch) * rows), y3(y1.size());
  ThreadPool one(1), three(3);
  hmatmul(w.data(), Half::F16, rows, cols, x.data(), y1.data(), batch, one);
  hmatmul(w.data(), Half::F16, rows, cols, x.data(), y3.data(), batch, three);
  EXPECT_EQ(y1, y3);
}

TEST(Hmatmul, ExtremeWeightsWidenExactly) {
  // Largest finite halves, subnormals and signed zeros in one row; x picks each out.
  const std::vector<uint16_t> f16 = {0x7BFF, 0xFBFF, 0x0001, 0x8001, 0x03FF, 0x0000, 0x8000, 0x3C00,
                                     0x0400, 0xC000, 0x5640, 0x1234, 0x0200, 0x7000, 0x8400, 0x3555, 0x2E66};
  const std::vector<uint16_t> bf16 = {0x7F7F, 0xFF7F, 0x0001, 0x8001, 0x0080, 0x0000, 0x8000, 0x3F80,
                                      0x4049, 0xC000, 0x1234, 0x5678, 0x3C23, 0x7000, 0x8400, 0x3EAA, 0x0F0F};
  const int cols = static_cast<int>(f16.size());
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (!isa_supported(isa)) continue;
    for (Half type : {Half::F16, Half::BF16}) {
      const auto& w = type == Half::F16 ? f16 : bf16;
      std::vector<float> x(static_cast<size_t>(cols) * cols, 0.0f), y(cols);
      for (int i = 0; i < cols; ++i) x[static_cast<size_t>(i) * cols + i] = 1.0f;  // batch row i selects weight i
      hmatmul(w.data(), type, 1, cols, x.data(), y.data(), cols, ThreadPool::global(), isa);
      for (int i = 0; i < cols; ++i)
        EXPECT_EQ(y[i], half_to_float(w[i], type)) << isa_name(isa) << " " << half_name(type) << " weight " << i;
    }
  }
}

TEST(Hmatmul, ConversionsRoundTripEveryFiniteValue) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t v = static_cast<uint16_t>(h);
    const bool f16_nan = (v & 0x7C00) == 0x7C00 && (v & 0x3FF);
    const bool bf16_nan = (v & 0x7F80) == 0x7F80 && (v & 0x7F);
    if (!f16_nan) {
      ASSERT_EQ(float_to_half(half_to_float(v, Half::F16), Half::F16), v) << h;
    }
    if (!bf16_nan) {
      ASSERT_EQ(float_to_half(half_to_float(v, Half::BF16), Half::BF16), v) << h;
    }
  }
  EXPECT_EQ(half_to_float(float_to_half(1.0f + 1.0f / 4096, Half::F16), Half::F16), 1.0f);  // ties to even
  EXPECT_TRUE(std::isinf(half_to_float(float_to_half(1e6f, Half::F16), Half::F16)));
}

TEST(Hmatmul, RejectsBadShapesAndIsas) {
  std::vector<uint16_t> w(8);
  std::vector<float> x(8), y(8);
  EXPECT_THROW(hmatmul(w.data(), Half::F16, 0, 8, x.data(), y.data(), 1, ThreadPool::global()), Error);
  EXPECT_THROW(hmatmul(w.data(), Half::F16, 1, 8, x.data(), y.data(), -1, ThreadPool::global()), Error);
  EXPECT_THROW(hmatmul(nullptr, Half::F16, 1, 8, x.data(), y.data(), 1, ThreadPool::global()), Error);
  hmatmul(w.data(), Half::F16, 1, 8, x.data(), y.data(), 0, ThreadPool::global());  // batch 0: nothing
}

}  // namespace
}  // namespace glq::cpu
