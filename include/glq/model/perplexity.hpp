// Perplexity of a model on a token stream.
//
// Protocol: the tokens are cut into consecutive non-overlapping windows of `ctx` tokens (the
// last, shorter window is dropped unless it is the only one); each window is evaluated from an
// empty cache, and every token of a window except its first is scored by the logits at the
// position before it. ppl = exp(Σ −log p(token) / scored tokens). A window of ctx tokens thus
// scores ctx−1 tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "glq/model/model.hpp"

namespace glq::model {

struct PerplexityResult {
  double ppl = 0;
  double nll_sum = 0;        // Σ −log p (natural log)
  int64_t tokens_scored = 0;
  int64_t tokens_used = 0;   // tokens in the evaluated windows
  int windows = 0;
  int ctx = 0;
  double seconds = 0;
};

// progress(windows_done, windows_total) is called after every window (optional).
PerplexityResult evaluate_perplexity(const Model& model, std::span<const int32_t> tokens, int ctx,
                                     const std::function<void(int, int)>& progress = {});

}  // namespace glq::model
