// Scale search of block LDLQ (QuantizeOptions::scale_multipliers): one LDLQ pass per multiplier
// of the RMS-based stage scales, each row keeping the pass with its least proxy loss.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/error.hpp"
#include "glq/model/quantize.hpp"
#include "quant/quant_test_util.hpp"

namespace glq::codec {
namespace {

using quant_test::gaussian;

// H = XᵀX / N of AR(1) inputs (ρ = 0.8) with every 13th channel five times louder.
std::vector<float> correlated_hessian(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g;
  const int samples = 3 * n;
  std::vector<double> H(static_cast<size_t>(n) * n, 0.0), x(n);
  for (int s = 0; s < samples; ++s) {
    double prev = g(rng);
    for (int i = 0; i < n; ++i) {
      prev = 0.8 * prev + 0.6 * g(rng);
      x[i] = prev * (i % 13 == 0 ? 5.0 : 1.0);
    }
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) H[static_cast<size_t>(i) * n + j] += x[i] * x[j];
  }
  std::vector<float> out(H.size());
  for (size_t i = 0; i < H.size(); ++i) out[i] = static_cast<float>(H[i] / samples);
  return out;
}

// (w_r − q_r) H (w_r − q_r)ᵀ of every row, in double.
std::vector<double> row_losses(const std::vector<float>& W, const std::vector<float>& Q, const std::vector<float>& H,
                               int rows, int cols) {
  std::vector<double> out(rows, 0.0), e(cols);
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < cols; ++i) e[i] = static_cast<double>(W[static_cast<size_t>(r) * cols + i]) - Q[static_cast<size_t>(r) * cols + i];
    for (int i = 0; i < cols; ++i) {
      double s = 0;
      for (int j = 0; j < cols; ++j) s += H[static_cast<size_t>(i) * cols + j] * e[j];
      out[r] += e[i] * s;
    }
  }
  return out;
}

double sum(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s;
}

TEST(ScaleSearch, EachRowKeepsTheBestPassWithoutTransform) {
  // Without the transform a row of the result is a row of W: its loss under H can be checked
  // against the single-multiplier runs one row at a time.
  const int rows = 40, cols = 104;
  const std::vector<float> mults = {0.8f, 1.0f, 1.25f};
  const auto H = correlated_hessian(cols, 11);
  for (int bits : {2, 3, 4}) {
    const auto W = gaussian(static_cast<size_t>(rows) * cols, 100 + bits, 0.03f);
    QuantizeOptions o;
    o.bits = bits;
    o.use_rht = false;
    o.refit_scales = false;
    std::vector<std::vector<float>> single_q;
    std::vector<std::vector<double>> single_loss;
    for (float m : mults) {
      o.scale_multipliers = {m};
      single_q.push_back(dequantize(quantize_matrix(W, rows, cols, H, o)));
      single_loss.push_back(row_losses(W, single_q.back(), H, rows, cols));
    }
    o.scale_multipliers = mults;
    QuantizeReport rep;
    const auto qs = dequantize(quantize_matrix(W, rows, cols, H, o, &rep));
    const auto loss = row_losses(W, qs, H, rows, cols);
    int rows_not_at_one = 0;
    for (int r = 0; r < rows; ++r) {
      size_t best = 0;
      for (size_t m = 1; m < mults.size(); ++m)
        if (single_loss[m][r] < single_loss[best][r]) best = m;
      EXPECT_NEAR(loss[r], single_loss[best][r], 1e-4 * single_loss[best][r]) << bits << " bits, row " << r;
      for (int i = 0; i < cols; ++i) {
        const size_t at = static_cast<size_t>(r) * cols + i;
        ASSERT_EQ(qs[at], single_q[best][at]) << bits << " bits, row " << r << ", column " << i;
      }
      rows_not_at_one += best != 1;
    }
    // The grid matters: some rows prefer another scale than the RMS rule's.
    EXPECT_GT(rows_not_at_one, 0) << bits << " bits";
    // The report's proxy loss is that of the rows kept.
    double den = 0;
    {
      const std::vector<float> zero(W.size(), 0.0f);
      den = sum(row_losses(W, zero, H, rows, cols));
    }
    EXPECT_NEAR(rep.proxy_loss, sum(loss) / den, 1e-3 * rep.proxy_loss) << bits << " bits";
  }
}

TEST(ScaleSearch, NeverWorseThanTheBestSinglePassWithTransform) {
  const int rows = 48, cols = 88;
  const auto H = correlated_hessian(cols, 5);
  for (int bits : {2, 3, 4}) {
    const auto W = gaussian(static_cast<size_t>(rows) * cols, 7 + bits, 0.02f);
    for (bool refit : {false, true}) {
      QuantizeOptions o;
      o.bits = bits;
      o.refit_scales = refit;
      double best_single = std::numeric_limits<double>::infinity(), at_one = 0;
      for (float m : {0.9f, 1.0f, 1.1f}) {
        o.scale_multipliers = {m};
        const double l = sum(row_losses(W, dequantize(quantize_matrix(W, rows, cols, H, o)), H, rows, cols));
        best_single = std::min(best_single, l);
        if (m == 1.0f) at_one = l;
      }
      o.scale_multipliers = {0.9f, 1.0f, 1.1f};
      const double searched = sum(row_losses(W, dequantize(quantize_matrix(W, rows, cols, H, o)), H, rows, cols));
      if (!refit) {
        // Rows are chosen in the transformed space, where each one's loss is minimal.
        EXPECT_LE(searched, best_single * (1 + 1e-4)) << bits << " bits";
      } else {
        // The refit lowers each row from its chosen codes; the search starts no worse than m = 1.
        EXPECT_LE(searched, at_one * (1 + 1e-4)) << bits << " bits";
      }
    }
  }
}

TEST(ScaleSearch, RejectsBadMultipliersAndOneIsTheDefault) {
  const int rows = 16, cols = 24;
  const auto W = gaussian(static_cast<size_t>(rows) * cols, 3, 0.1f);
  const auto H = correlated_hessian(cols, 4);
  QuantizeOptions o;
  o.bits = 2;
  const auto plain = dequantize(quantize_matrix(W, rows, cols, H, o));
  o.scale_multipliers = {1.0f};
  EXPECT_EQ(dequantize(quantize_matrix(W, rows, cols, H, o)), plain);
  for (float bad : {0.0f, -1.0f, std::numeric_limits<float>::quiet_NaN()}) {
    o.scale_multipliers = {1.0f, bad};
    try {
      quantize_matrix(W, rows, cols, H, o);
      ADD_FAILURE() << "multiplier " << bad << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
    }
  }
  for (int bits : {2, 3, 4}) {
    const auto grid = model::default_scale_search(bits);
    ASSERT_FALSE(grid.empty());
    for (double m : grid) EXPECT_GT(m, 0.0);
  }
  EXPECT_THROW(model::default_scale_search(5), Error);
}

}  // namespace
}  // namespace glq::codec
