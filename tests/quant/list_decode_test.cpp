// List decoding of the first stage (QuantizeOptions::list_decode): the K nearest E8P16 codewords,
// each followed by the residual stages, the group keeping the least error.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/error.hpp"
#include "quant/quant_test_util.hpp"

namespace glq::codec {
namespace {

using quant_test::gaussian;

// Squared error of every group of 8 of W − Q.
std::vector<double> group_errors(const std::vector<float>& W, const std::vector<float>& Q) {
  std::vector<double> out(W.size() / 8, 0.0);
  for (size_t i = 0; i < W.size(); ++i) {
    const double d = static_cast<double>(W[i]) - Q[i];
    out[i / 8] += d * d;
  }
  return out;
}

TEST(ListDecode, NearestRoundingKeepsTheNearestCodewordAtTwoBits) {
  // One stage and the Euclidean metric: the best of the K nearest is the nearest, so the
  // exhaustive search must agree with the codec's encoder on every group.
  const int rows = 24, cols = 152;
  const auto W = gaussian(static_cast<size_t>(rows) * cols, 21, 0.05f);
  QuantizeOptions o;
  o.bits = 2;
  o.use_ldlq = false;
  const auto plain = dequantize(quantize_matrix(W, rows, cols, {}, o));
  o.list_decode = 9;
  EXPECT_EQ(dequantize(quantize_matrix(W, rows, cols, {}, o)), plain);
}

TEST(ListDecode, EveryGroupIsNoWorseAndFourBitsGain) {
  const int rows = 32, cols = 120;
  for (int bits : {3, 4}) {
    const auto W = gaussian(static_cast<size_t>(rows) * cols, 30 + bits, 0.04f);
    QuantizeOptions o;
    o.bits = bits;
    o.use_ldlq = false;
    o.use_rht = false;  // groups of W itself, so that each one can be compared
    const auto e1 = group_errors(W, dequantize(quantize_matrix(W, rows, cols, {}, o)));
    o.list_decode = 8;
    const auto e8 = group_errors(W, dequantize(quantize_matrix(W, rows, cols, {}, o)));
    int better = 0;
    double s1 = 0, s8 = 0;
    for (size_t g = 0; g < e1.size(); ++g) {
      EXPECT_LE(e8[g], e1[g] * (1 + 1e-5) + 1e-12) << bits << " bits, group " << g;
      better += e8[g] < e1[g] * (1 - 1e-4);
      s1 += e1[g];
      s8 += e8[g];
    }
    // At 4 bits (two E8P16 stages) a fifth of the groups gain, 8 % less squared error in all;
    // at 3 bits the coarse E8R8 residual stage seldom changes the choice.
    if (bits == 4) {
      EXPECT_LT(s8, 0.95 * s1) << "4 bits: list decoding saves under 5 %";
      EXPECT_GT(better, static_cast<int>(e1.size()) / 10);
    }
    std::printf("%d bits: squared error %.6g -> %.6g with 8 candidates (%d of %zu groups better)\n", bits, s1, s8,
                better, e1.size());
  }
}

TEST(ListDecode, LdlqReportsTheRealProxyLossAndChecksK) {
  const int rows = 40, cols = 96;
  const auto W = gaussian(static_cast<size_t>(rows) * cols, 8, 0.03f);
  std::vector<float> H(static_cast<size_t>(cols) * cols, 0.0f);
  std::mt19937_64 rng(9);
  std::normal_distribution<double> g;
  std::vector<double> x(cols);
  for (int s = 0; s < 3 * cols; ++s) {
    double prev = g(rng);
    for (int i = 0; i < cols; ++i) x[i] = prev = 0.7 * prev + 0.7 * g(rng);
    for (int i = 0; i < cols; ++i)
      for (int j = 0; j < cols; ++j) H[static_cast<size_t>(i) * cols + j] += static_cast<float>(x[i] * x[j] / (3 * cols));
  }
  for (int bits : {2, 3, 4}) {
    QuantizeOptions o;
    o.bits = bits;
    o.refit_scales = false;
    o.list_decode = 6;
    QuantizeReport rep;
    const auto Q = dequantize(quantize_matrix(W, rows, cols, H, o, &rep));
    double num = 0, den = 0;
    for (int r = 0; r < rows; ++r) {
      for (int i = 0; i < cols; ++i) {
        for (int j = 0; j < cols; ++j) {
          const size_t a = static_cast<size_t>(r) * cols + i, b = static_cast<size_t>(r) * cols + j;
          const double h = H[static_cast<size_t>(i) * cols + j];
          num += (static_cast<double>(W[a]) - Q[a]) * h * (static_cast<double>(W[b]) - Q[b]);
          den += static_cast<double>(W[a]) * h * W[b];
        }
      }
    }
    EXPECT_NEAR(rep.proxy_loss, num / den, 0.02 * num / den) << bits << " bits";
  }
  QuantizeOptions o;
  o.list_decode = 0;
  EXPECT_THROW(quantize_matrix(W, rows, cols, H, o), Error);
  o.list_decode = 65;
  EXPECT_THROW(quantize_matrix(W, rows, cols, H, o), Error);
}

}  // namespace
}  // namespace glq::codec
