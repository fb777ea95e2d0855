// Helpers of the GPU engine tests: random GLQ-quantized matrices and a relative error that
// treats any non-finite output as a failure.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/transform/hadamard.hpp"

namespace glq::test {

// A rows x cols matrix at `bits` with uniformly random codes (every byte pattern is a valid
// code), per-row scales of stage s around 0.8·0.2^s/√cols, and its own transforms.
inline codec::QuantizedMatrix random_quantized(int rows, int cols, int bits, uint64_t seed) {
  std::mt19937_64 rng(seed);
  codec::QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.bits = bits;
  float scale = 0.8f / std::sqrt(float(cols));
  for (auto cb : codec::stages_for_bits(bits)) {
    codec::CodeStage st;
    st.codebook = cb;
    st.codes.resize(size_t(rows) * (cols / 8) * codec::code_bytes(cb));
    for (auto& c : st.codes) c = uint8_t(rng());
    std::uniform_real_distribution<float> d(0.7f * scale, 1.3f * scale);
    st.scales.resize(rows);
    for (auto& s : st.scales) s = d(rng);
    q.stages.push_back(std::move(st));
    scale *= 0.2f;
  }
  q.sign_in = transform::random_signs(cols, seed + 1);
  q.sign_out = transform::random_signs(rows, seed + 2);
  q.plan_in = transform::make_hadamard_plan(cols);
  q.plan_out = transform::make_hadamard_plan(rows);
  return q;
}

// ‖got − ref‖ / ‖ref‖ over n values; 1e30 if any value of got is not finite.
template <class Ref>
double rel_err(const float* got, const Ref* ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(got[i])) return 1e30;
    const double d = double(got[i]) - double(ref[i]);
    num += d * d;
    den += double(ref[i]) * double(ref[i]);
  }
  return std::sqrt(num / den);
}

}  // namespace glq::test
