// Choosing the next token from logits: greedy, or temperature / top-k / top-p sampling with a
// repetition penalty, reproducible from a seed.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace glq::model {

struct SamplingOptions {
  float temperature = 0.0f;        // <= 0: greedy (argmax, lowest id on ties)
  int top_k = 0;                   // 0: off
  float top_p = 1.0f;              // 1: off
  float repetition_penalty = 1.0f; // 1: off; CTRL-style: logit/p if >0 else logit*p
  int repetition_window = 64;      // last N tokens of the history are penalised
  uint64_t seed = 0x5eed;
};

class Sampler {
 public:
  explicit Sampler(SamplingOptions options = {});
  const SamplingOptions& options() const { return options_; }
  // logits (vocab) are not modified. history: tokens so far (prompt + generated).
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history = {});

 private:
  SamplingOptions options_;
  std::mt19937_64 rng_;
  std::vector<float> work_;
  std::vector<int32_t> order_;
};

int32_t argmax(std::span<const float> logits);

}  // namespace glq::model
