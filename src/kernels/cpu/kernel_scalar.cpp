// The scalar reference kernel: plain loops over the integer model of kernel_common.hpp. It is
// the yardstick of the SIMD kernels and is never optimised. Each code is decoded with the
// codec's own reference decoders (glq/codec/codebook.hpp); a decoded coordinate is a multiple of
// ¼, so 4× it is an exact integer.
#include <cmath>

#include "kernels/cpu/kernel_common.hpp"
#include "kernels/cpu/transform_impl.hpp"

namespace glq::cpu::detail {

namespace {

// The 8 coordinates of one code in quarter lattice units.
void decode_quarter_units(codec::Codebook cb, const uint8_t* codes, int64_t index, int v[8]) {
  float f[8];
  if (cb == codec::Codebook::E8P16) {
    const uint16_t code = static_cast<uint16_t>(codes[2 * index] | (codes[2 * index + 1] << 8));
    codec::decode_e8p(code, codec::e8p_abs_table(), f);
  } else {
    codec::decode_e8r8(codes[index], codec::e8r8_table(), f);
  }
  for (int i = 0; i < 8; ++i) v[i] = static_cast<int>(std::lround(4.0f * f[i]));
}

}  // namespace

void dots_scalar(const DotArgs& a, int r0, int r1) {
  const int batch = a.act.batch;
  for (int s = 0; s < a.n_stages; ++s) {
    const StageView& st = a.stages[s];
    for (int b = 0; b < batch; ++b) {
      const int16_t* X = a.act.x16 + static_cast<int64_t>(b) * a.cols;  // (cols)
      for (int r = r0; r < r1; ++r) {
        int64_t dot = 0;
        for (int g = 0; g < a.groups; ++g) {
          int v[8];
          decode_quarter_units(st.codebook, st.codes, static_cast<int64_t>(r) * a.groups + g, v);
          for (int i = 0; i < 8; ++i) dot += static_cast<int64_t>(v[i]) * X[8 * g + i];
        }
        a.dots[(static_cast<int64_t>(s) * batch + b) * a.rows + r] = dot;
      }
    }
  }
}

void prepare_input_scalar(const InputRow& in) {
  const float inv = transform_and_scale(in);
  int64_t sum = 0;
  for (int i = 0; i < in.cols; ++i) {
    int v = static_cast<int>(std::nearbyint(in.xt[i] * inv));  // round half to even
    v = v > kActMax ? kActMax : (v < -kActMax ? -kActMax : v);
    in.x16[i] = static_cast<int16_t>(v);
    sum += v;
  }
  *in.sum = sum;
}

void hadamard_scalar(const transform::HadamardPlan& plan, bool transpose, float* x, float* tmp) {
  hadamard_apply(plan, transpose, x, tmp);
}

}  // namespace glq::cpu::detail
