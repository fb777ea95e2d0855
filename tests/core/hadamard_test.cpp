// The randomized Hadamard transform: the construction rule, orthogonality, invertibility and
// incoherence for many dimensions (powers of two, Paley orders, DCT fallbacks).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "glq/error.hpp"
#include "glq/transform/hadamard.hpp"

namespace glq::transform {
namespace {

std::vector<float> gaussian(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> v(n);
  for (float& x : v) x = g(rng);
  return v;
}

double norm(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += double(x) * x;
  return std::sqrt(s);
}

double dist(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return std::sqrt(s);
}

class HadamardSizes : public ::testing::TestWithParam<int> {};

TEST_P(HadamardSizes, OrthogonalAndInvertible) {
  const int n = GetParam();
  const HadamardPlan plan = make_hadamard_plan(n);
  ASSERT_EQ(plan.a * plan.b, n);
  ASSERT_EQ(plan.b & (plan.b - 1), 0) << "b must be a power of two";
  for (uint64_t seed : {1u, 2u, 3u}) {
    const auto x = gaussian(n, seed), y = gaussian(n, seed + 100);
    auto tx = x, ty = y;
    hadamard_forward(plan, tx.data());
    hadamard_forward(plan, ty.data());
    // Norm and inner products preserved (orthogonality on random pairs).
    EXPECT_NEAR(norm(tx) / norm(x), 1.0, 1e-6) << "n=" << n;
    double dxy = 0, dtt = 0;
    for (int i = 0; i < n; ++i) {
      dxy += double(x[i]) * y[i];
      dtt += double(tx[i]) * ty[i];
    }
    EXPECT_NEAR(dtt, dxy, 1e-6 * norm(x) * norm(y)) << "n=" << n;
    // Tᵀ T x = x and T Tᵀ x = x.
    auto back = tx;
    hadamard_transpose(plan, back.data());
    EXPECT_LE(dist(back, x) / norm(x), 1e-6) << "n=" << n;
    auto fwd = x;
    hadamard_transpose(plan, fwd.data());
    hadamard_forward(plan, fwd.data());
    EXPECT_LE(dist(fwd, x) / norm(x), 1e-6) << "n=" << n;
  }
}

TEST_P(HadamardSizes, MatchesDenseKroneckerDefinition) {
  const int n = GetParam();
  const HadamardPlan plan = make_hadamard_plan(n);
  // Every output for n <= 3000; 64 random outputs (rows i of the a×b view) above that.
  std::vector<int> check_rows;
  std::mt19937 pick(5);
  for (int i = 0; i < plan.a; ++i) check_rows.push_back(i);
  if (n > 3000 && plan.a > 4) {
    std::shuffle(check_rows.begin(), check_rows.end(), pick);
    check_rows.resize(4);
  }
  // T = Q_a ⊗ H_b / sqrt(b): (T x)[i·b + j] = Σ_k Σ_l Q[i][k] · H_b[j][l] · x[k·b + l] / sqrt(b),
  // H_b[j][l] = (−1)^popcount(j & l).
  const auto x = gaussian(n, 7);
  auto tx = x;
  hadamard_forward(plan, tx.data());
  std::vector<double> hx(n);  // H_b applied to each row of X (a, b)
  std::vector<int> cols_checked;
  for (int j = 0; j < plan.b; ++j) cols_checked.push_back(j);
  if (n > 3000) {
    std::shuffle(cols_checked.begin(), cols_checked.end(), pick);
    cols_checked.resize(16);
  }
  for (int k = 0; k < plan.a; ++k) {
    for (int j : cols_checked) {
      double s = 0;
      for (int l = 0; l < plan.b; ++l) {
        s += ((__builtin_popcount(unsigned(j & l)) & 1) ? -1.0 : 1.0) * x[k * plan.b + l];
      }
      hx[k * plan.b + j] = s / std::sqrt(double(plan.b));
    }
  }
  double err = 0, ref_norm = 0;
  for (int i : check_rows) {
    for (int j : cols_checked) {
      double s = 0;
      for (int k = 0; k < plan.a; ++k) {
        s += (plan.a == 1 ? 1.0 : double(plan.q[i * plan.a + k])) * hx[k * plan.b + j];
      }
      err += (s - tx[i * plan.b + j]) * (s - tx[i * plan.b + j]);
      ref_norm += s * s;
    }
  }
  EXPECT_LE(std::sqrt(err / ref_norm), 1e-6);
}

TEST_P(HadamardSizes, SpreadsASpike) {
  // Incoherence: a unit spike becomes a column of T, whose entries are all ±1/sqrt(n) for a
  // Hadamard plan and at most sqrt(2/n) for a DCT plan.
  const int n = GetParam();
  const HadamardPlan plan = make_hadamard_plan(n);
  for (int pos : {0, n / 3, n - 1}) {
    std::vector<float> e(n, 0.f);
    e[pos] = 1.f;
    hadamard_forward(plan, e.data());
    float mx = 0;
    for (float v : e) mx = std::max(mx, std::fabs(v));
    EXPECT_LE(mx * std::sqrt(float(n)), std::sqrt(2.0f) + 1e-4f) << "n=" << n << " pos=" << pos;
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, HadamardSizes,
                         ::testing::Values(8, 24, 72, 192, 576, 1008, 1536, 2688, 4096, 11008,
                                           14336, 8 * 13, 8 * 23));

TEST(HadamardPlan, ConstructionRule) {
  struct Case {
    int n, a, b;
  };
  for (Case c : {Case{4096, 1, 4096}, Case{8, 1, 8}, Case{576, 36, 16}, Case{1536, 12, 128},
                 Case{2688, 84, 32}, Case{14336, 28, 512}, Case{11008, 43, 256},
                 Case{1008, 63, 16}, Case{24, 12, 2}, Case{8 * 13, 13, 8}}) {
    const HadamardPlan p = make_hadamard_plan(c.n);
    EXPECT_EQ(p.a, c.a) << "n=" << c.n;
    EXPECT_EQ(p.b, c.b) << "n=" << c.n;
    EXPECT_EQ(p.q.size(), p.a == 1 ? 0u : size_t(p.a) * p.a);
  }
}

TEST(HadamardPlan, PaleyMatricesAreHadamard) {
  for (int n : {24, 576, 1536, 2688, 14336, 8 * 5, 8 * 31}) {
    const HadamardPlan p = make_hadamard_plan(n);
    ASSERT_GT(p.a, 1);
    ASSERT_EQ(p.a % 4, 0) << "n=" << n << " should use a Paley matrix";
    const float e = 1.0f / std::sqrt(float(p.a));
    for (float v : p.q) ASSERT_NEAR(std::fabs(v), e, 1e-6f);
  }
}

TEST(HadamardPlan, RejectsBadDimensions) {
  for (int n : {0, -8, 4, 12, 100}) {
    try {
      make_hadamard_plan(n);
      FAIL() << "n=" << n << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
    }
  }
}

TEST(RandomSigns, DeterministicBalancedAndSeeded) {
  const auto a = random_signs(989, 42), b = random_signs(989, 42), c = random_signs(989, 43);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  int plus = 0;
  for (float v : a) {
    ASSERT_TRUE(v == 1.f || v == -1.f);
    plus += v > 0;
  }
  EXPECT_GT(plus, 989 / 2 - 80);
  EXPECT_LT(plus, 989 / 2 + 80);
  // splitmix64 from state 0: first output 0xE220A8397B1DCDAF (top bit set) → −1.
  EXPECT_EQ(random_signs(1, 0)[0], -1.f);
}

TEST(HadamardBatch, SameAsOneByOne) {
  for (int n : {72, 4096, 1008, 14336}) {
  const HadamardPlan plan = make_hadamard_plan(n);
  auto x = gaussian(size_t(n) * 5, 9);
  auto y = x;
  hadamard_forward_batch(plan, x.data(), 5);
  for (int v = 0; v < 5; ++v) hadamard_forward(plan, y.data() + size_t(n) * v);
  EXPECT_LE(dist(x, y) / norm(y), 1e-6);
  hadamard_transpose_batch(plan, x.data(), 5);
  for (int v = 0; v < 5; ++v) hadamard_transpose(plan, y.data() + size_t(n) * v);
  EXPECT_LE(dist(x, y) / norm(y), 1e-6);
  }
}

}  // namespace
}  // namespace glq::transform
