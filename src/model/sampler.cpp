// Token sampling: repetition penalty, temperature, top-k, top-p (in that order, as Hugging
// Face's logits processors apply them), then a draw from the seeded generator.
#include "glq/model/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_set>

#include <fmt/format.h>

#include "glq/error.hpp"

namespace glq::model {

int32_t argmax(std::span<const float> logits) {
  if (logits.empty()) throw_invalid("argmax of empty logits");
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

Sampler::Sampler(SamplingOptions options) : options_(options), rng_(options.seed) {
  if (options.top_k < 0) throw_invalid(fmt::format("top_k {} must be >= 0", options.top_k));
  if (!(options.top_p > 0 && options.top_p <= 1)) throw_invalid(fmt::format("top_p {} must be in (0, 1]", options.top_p));
  if (!(options.repetition_penalty > 0)) throw_invalid(fmt::format("repetition_penalty {} must be > 0", options.repetition_penalty));
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  const int n = static_cast<int>(logits.size());
  if (n == 0) throw_invalid("sample from empty logits");
  work_.assign(logits.begin(), logits.end());
  if (options_.repetition_penalty != 1.0f && !history.empty()) {
    const size_t start = history.size() > static_cast<size_t>(std::max(options_.repetition_window, 0))
                             ? history.size() - static_cast<size_t>(options_.repetition_window) : 0;
    std::unordered_set<int32_t> seen(history.begin() + static_cast<ptrdiff_t>(start), history.end());
    for (int32_t id : seen)
      if (id >= 0 && id < n) {
        float& l = work_[static_cast<size_t>(id)];
        l = l > 0 ? l / options_.repetition_penalty : l * options_.repetition_penalty;
      }
  }
  if (options_.temperature <= 0) return argmax(work_);
  for (float& l : work_) l /= options_.temperature;
  order_.resize(static_cast<size_t>(n));
  std::iota(order_.begin(), order_.end(), 0);
  int keep = n;
  if (options_.top_k > 0 && options_.top_k < n) keep = options_.top_k;
  std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(),
                    [&](int32_t a, int32_t b) { return work_[static_cast<size_t>(a)] > work_[static_cast<size_t>(b)]; });
  const float mx = work_[static_cast<size_t>(order_[0])];
  std::vector<double> p(static_cast<size_t>(keep));
  double sum = 0;
  for (int i = 0; i < keep; ++i) sum += p[static_cast<size_t>(i)] = std::exp(static_cast<double>(work_[static_cast<size_t>(order_[i])] - mx));
  if (options_.top_p < 1.0f) {
    double cum = 0;
    int cut = keep;
    for (int i = 0; i < keep; ++i) {
      cum += p[static_cast<size_t>(i)] / sum;
      if (cum >= options_.top_p) {
        cut = i + 1;  // smallest prefix whose mass reaches top_p
        break;
      }
    }
    keep = cut;
    sum = std::accumulate(p.begin(), p.begin() + keep, 0.0);
  }
  std::uniform_real_distribution<double> uni(0.0, sum);
  const double r = uni(rng_);
  double acc = 0;
  for (int i = 0; i < keep; ++i) {
    acc += p[static_cast<size_t>(i)];
    if (r < acc) return order_[static_cast<size_t>(i)];
  }
  return order_[static_cast<size_t>(keep - 1)];
}

}  // namespace glq::model
