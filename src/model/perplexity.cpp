// Perplexity over non-overlapping windows (protocol in glq/model/perplexity.hpp).
#include "glq/model/perplexity.hpp"

#include <chrono>
#include <cmath>

#include <fmt/format.h>

#include "glq/error.hpp"

namespace glq::model {

PerplexityResult evaluate_perplexity(const Model& model, std::span<const int32_t> tokens, int ctx,
                                     const std::function<void(int, int)>& progress) {
  if (ctx < 2) throw_invalid(fmt::format("perplexity context {} must be at least 2", ctx));
  if (tokens.size() < 2) throw_invalid(fmt::format("perplexity needs at least 2 tokens, got {}", tokens.size()));
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t n = static_cast<int64_t>(tokens.size());
  int windows = static_cast<int>(n / ctx);
  const bool single_short = windows == 0;
  if (single_short) windows = 1;
  const int vocab = model.vocab_size();
  PerplexityResult r;
  r.ctx = ctx;
  KVCache cache = model.make_cache(single_short ? static_cast<int>(n) : ctx);
  std::vector<float> logits;
  for (int w = 0; w < windows; ++w) {
    const int64_t begin = static_cast<int64_t>(w) * ctx;
    const int len = single_short ? static_cast<int>(n) : ctx;
    cache.clear();
    logits.resize(static_cast<size_t>(len) * vocab);
    model.forward(tokens.subspan(static_cast<size_t>(begin), static_cast<size_t>(len)), cache, logits.data(), true);
    for (int t = 0; t + 1 < len; ++t) {
      const float* row = logits.data() + static_cast<size_t>(t) * vocab;
      float mx = row[0];
      for (int j = 1; j < vocab; ++j) mx = std::max(mx, row[j]);
      double sum = 0;
      for (int j = 0; j < vocab; ++j) sum += std::exp(static_cast<double>(row[j] - mx));
      const int32_t next = tokens[static_cast<size_t>(begin + t + 1)];
      r.nll_sum += std::log(sum) + mx - row[next];
      ++r.tokens_scored;
    }
    r.tokens_used += len;
    ++r.windows;
    if (progress) progress(w + 1, windows);
  }
  r.ppl = std::exp(r.nll_sum / static_cast<double>(r.tokens_scored));
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace glq::model
