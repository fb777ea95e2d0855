// Linear with 16-bit dense weights (Linear::dense16): the product equals the fp32 product of the
// widened weights, the format choice of dense16_from, and the bookkeeping (bytes, dense copy).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "glq/error.hpp"
#include "glq/model/linear.hpp"

namespace glq::model {
namespace {

std::vector<float> randn(size_t n, float sd, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng);
  return v;
}

TEST(Linear16, MatchesTheDenseProductOfTheWidenedWeights) {
  const int rows = 111, cols = 77, batch = 5;
  const auto w = randn(static_cast<size_t>(rows) * cols, 0.1f, 1);
  std::vector<float> bias = randn(rows, 1.0f, 2);
  const Linear h = Linear::dense16_from(w, rows, cols, bias);
  ASSERT_TRUE(h.is_dense16());
  EXPECT_EQ(h.dense16_type(), cpu::Half::F16);
  EXPECT_EQ(h.describe(), "fp16 111x77");
  EXPECT_EQ(h.weight_bytes(), static_cast<size_t>(rows) * cols * 2 + rows * sizeof(float));
  const std::vector<float> widened = h.to_dense();
  for (size_t i = 0; i < w.size(); ++i) ASSERT_LE(std::fabs(widened[i] - w[i]), std::fabs(w[i]) * 1e-3f + 1e-7f);
  const Linear d = Linear::dense(widened, rows, cols, bias);
  const auto x = randn(static_cast<size_t>(batch) * cols, 1.0f, 3);
  std::vector<float> yh(static_cast<size_t>(batch) * rows), yd(yh.size());
  for (int b : {1, batch}) {
    h.forward(x.data(), yh.data(), b);
    d.forward(x.data(), yd.data(), b);
    for (size_t i = 0; i < static_cast<size_t>(b) * rows; ++i) EXPECT_NEAR(yh[i], yd[i], 1e-4f) << "batch " << b << " at " << i;
  }
}

TEST(Linear16, FallsBackToBfloat16BeyondTheHalfRange) {
  std::vector<float> w = randn(8 * 16, 1.0f, 4);
  w[17] = 1e5f;  // not a finite half
  const Linear h = Linear::dense16_from(w, 8, 16);
  EXPECT_EQ(h.dense16_type(), cpu::Half::BF16);
  EXPECT_EQ(h.describe(), "bf16 8x16");
  EXPECT_NEAR(h.to_dense()[17], 1e5f, 1e5f / 128);
}

TEST(Linear16, RejectsMismatchedShapes) {
  auto w = std::make_shared<const std::vector<uint16_t>>(10);
  EXPECT_THROW(Linear::dense16(w, cpu::Half::F16, 3, 4, {}), Error);
  EXPECT_THROW(Linear::dense16(w, cpu::Half::F16, 2, 5, std::vector<float>(3)), Error);
  EXPECT_THROW(Linear::dense16(nullptr, cpu::Half::F16, 2, 5, {}), Error);
  EXPECT_NO_THROW(Linear::dense16(w, cpu::Half::BF16, 2, 5, {}));
}

}  // namespace
}  // namespace glq::model
