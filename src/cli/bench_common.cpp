#include "cli/bench_common.hpp"

#include <random>

namespace glq::cli {

codec::QuantizedMatrix random_quantized_matrix(int rows, int cols, int bits, uint64_t seed) {
  std::mt19937_64 rng(seed);
  codec::QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.bits = bits;
  const size_t groups = size_t(rows) * (cols / 8);
  std::uniform_real_distribution<float> scale(0.01f, 0.05f);
  for (codec::Codebook cb : codec::stages_for_bits(bits)) {
    codec::CodeStage st;
    st.codebook = cb;
    st.codes.resize(groups * codec::code_bytes(cb));
    for (size_t i = 0; i < st.codes.size(); i += 8) {
      const uint64_t r = rng();
      for (size_t k = 0; k < 8 && i + k < st.codes.size(); ++k) st.codes[i + k] = uint8_t(r >> (8 * k));
    }
    st.scales.resize(rows);
    for (auto& s : st.scales) s = scale(rng);
    q.stages.push_back(std::move(st));
  }
  q.sign_in = transform::random_signs(cols, seed + 1);
  q.sign_out = transform::random_signs(rows, seed + 2);
  q.plan_in = transform::make_hadamard_plan(cols);
  q.plan_out = transform::make_hadamard_plan(rows);
  return q;
}

}  // namespace glq::cli
