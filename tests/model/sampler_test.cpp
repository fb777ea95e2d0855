#include <gtest/gtest.h>

#include <cmath>

#include "glq/error.hpp"
#include "glq/model/sampler.hpp"

namespace glq::model {
namespace {

std::vector<float> logits_19() {
  std::vector<float> l(19);
  for (int i = 0; i < 19; ++i) l[i] = std::sin(1.7f * i) * 3.0f;
  return l;
}

TEST(Sampler, GreedyTopKOneAndTinyTopPAreArgmax) {
  const auto l = logits_19();
  const int32_t best = argmax(l);
  EXPECT_EQ(Sampler(SamplingOptions{}).sample(l), best);
  SamplingOptions k1;
  k1.temperature = 1.5f;
  k1.top_k = 1;
  EXPECT_EQ(Sampler(k1).sample(l), best);
  SamplingOptions p;
  p.temperature = 1.0f;
  p.top_p = 1e-6f;
  EXPECT_EQ(Sampler(p).sample(l), best);
}

TEST(Sampler, SeededAndDistributedAsSoftmax) {
  const auto l = logits_19();
  SamplingOptions o;
  o.temperature = 2.0f;
  o.seed = 989;
  Sampler a(o), b(o);
  std::vector<int> counts(19);
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const int32_t x = a.sample(l);
    EXPECT_EQ(x, b.sample(l));
    counts[static_cast<size_t>(x)]++;
  }
  double z = 0;
  for (float v : l) z += std::exp(v / 2.0);
  for (int i = 0; i < 19; ++i) {
    const double p = std::exp(l[i] / 2.0) / z;
    EXPECT_NEAR(counts[static_cast<size_t>(i)] / static_cast<double>(n), p, 4 * std::sqrt(p * (1 - p) / n) + 1e-3) << i;
  }
}

TEST(Sampler, TopKAndTopPRestrictTheSupport) {
  const auto l = logits_19();
  std::vector<int32_t> order(19);
  for (int i = 0; i < 19; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
  SamplingOptions o;
  o.temperature = 5.0f;
  o.top_k = 3;
  Sampler s(o);
  for (int i = 0; i < 500; ++i) {
    const int32_t x = s.sample(l);
    EXPECT_TRUE(x == order[0] || x == order[1] || x == order[2]) << x;
  }
}

TEST(Sampler, RepetitionPenaltyAvoidsRecentTokens) {
  std::vector<float> l = {1.0f, 2.0f, 1.9f, -1.0f};
  SamplingOptions o;
  o.repetition_penalty = 1.3f;
  const std::vector<int32_t> history = {1};
  EXPECT_EQ(Sampler(o).sample(l, history), 2);  // 2/1.3 < 1.9
  EXPECT_EQ(Sampler(SamplingOptions{}).sample(l, history), 1);
  SamplingOptions bad;
  bad.top_p = 0;
  EXPECT_THROW(Sampler{bad}, Error);
}

}  // namespace
}  // namespace glq::model
