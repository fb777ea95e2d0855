// Helpers of the CPU kernel tests: random quantized matrices and an independent double-precision
// reference of y = W x built straight from the definitions in quantized_matrix.hpp and
// hadamard.hpp (decode every code with the codec's reference decoder, apply T_n = Q_a ⊗ H_b/√b
// by its definition).
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/transform/hadamard.hpp"

namespace glq::test {

// A Hadamard plan for n with mixing order a (n % a == 0, n / a a power of two) and a random
// orthonormal Q_a (Gram-Schmidt of a Gaussian matrix). The kernels accept any orthonormal Q_a,
// so this does not depend on the codec's choice of Q_a.
inline transform::HadamardPlan random_plan(int n, int a, std::mt19937_64& rng) {
  transform::HadamardPlan p;
  p.n = n;
  p.a = a;
  p.b = n / a;
  if (a > 1) {
    std::normal_distribution<double> normal;
    std::vector<double> q(static_cast<size_t>(a) * a);
    for (auto& v : q) v = normal(rng);
    for (int i = 0; i < a; ++i) {
      for (int j = 0; j < i; ++j) {
        double d = 0;
        for (int k = 0; k < a; ++k) d += q[i * a + k] * q[j * a + k];
        for (int k = 0; k < a; ++k) q[i * a + k] -= d * q[j * a + k];
      }
      double nn = 0;
      for (int k = 0; k < a; ++k) nn += q[i * a + k] * q[i * a + k];
      nn = std::sqrt(nn);
      for (int k = 0; k < a; ++k) q[i * a + k] /= nn;
    }
    p.q.assign(q.begin(), q.end());
  }
  return p;
}

// Largest power-of-two factor split: a = n / 2^k with the odd part times 4 when possible.
inline int mixing_order_for(int n) {
  int b = 1;
  while (n % (2 * b) == 0) b *= 2;
  const int odd = n / b;
  if (odd == 1) return 1;
  return (b >= 4) ? 4 * odd : 2 * odd;  // like a Paley order 4m (any a with n/a a power of 2)
}

inline codec::QuantizedMatrix random_qmatrix(int rows, int cols, int bits, uint64_t seed) {
  std::mt19937_64 rng(seed);
  codec::QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.bits = bits;
  const size_t groups = static_cast<size_t>(rows) * (cols / 8);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(0.01f, 0.2f);
  for (codec::Codebook cb : codec::stages_for_bits(bits)) {
    codec::CodeStage st;
    st.codebook = cb;
    st.codes.resize(groups * codec::code_bytes(cb));
    for (auto& c : st.codes) c = static_cast<uint8_t>(byte(rng));
    st.scales.resize(rows);
    for (auto& s : st.scales) s = scale(rng);
    q.stages.push_back(std::move(st));
  }
  q.sign_in.resize(cols);
  q.sign_out.resize(rows);
  for (auto& s : q.sign_in) s = (rng() & 1) ? 1.0f : -1.0f;
  for (auto& s : q.sign_out) s = (rng() & 1) ? 1.0f : -1.0f;
  q.plan_in = random_plan(cols, mixing_order_for(cols), rng);
  q.plan_out = random_plan(rows, mixing_order_for(rows), rng);
  return q;
}

inline std::vector<float> random_input(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(n);
  for (auto& v : x) v = normal(rng);
  return x;
}

// T x (or T^T x) in double, by the definition: rows of X (a × b) times H_b, then Q_a mixing.
inline void apply_t_double(const transform::HadamardPlan& p, bool transpose, std::vector<double>& x) {
  const int a = p.a, b = p.b;
  for (int i = 0; i < a; ++i) {
    double* r = x.data() + static_cast<size_t>(i) * b;
    for (int h = 1; h < b; h *= 2)
      for (int s = 0; s < b; s += 2 * h)
        for (int j = s; j < s + h; ++j) {
          const double u = r[j], v = r[j + h];
          r[j] = u + v;
          r[j + h] = u - v;
        }
  }
  std::vector<double> out(x.size(), 0.0);
  for (int i = 0; i < a; ++i)
    for (int k = 0; k < a; ++k) {
      const double c = a == 1 ? 1.0 : (transpose ? p.q[k * a + i] : p.q[i * a + k]);
      for (int j = 0; j < b; ++j) out[static_cast<size_t>(i) * b + j] += c * x[static_cast<size_t>(k) * b + j];
    }
  const double norm = 1.0 / std::sqrt(static_cast<double>(b));
  for (size_t j = 0; j < x.size(); ++j) x[j] = out[j] * norm;
}

// y (batch, rows) in double.
inline std::vector<double> reference_product(const codec::QuantizedMatrix& q, const float* x, int batch) {
  const int rows = q.rows, cols = q.cols, groups = cols / 8;
  std::vector<double> y(static_cast<size_t>(batch) * rows);
  for (int b = 0; b < batch; ++b) {
    std::vector<double> xt(cols);
    for (int i = 0; i < cols; ++i) xt[i] = static_cast<double>(x[b * cols + i]) * q.sign_in[i];
    apply_t_double(q.plan_in, false, xt);
    std::vector<double> yt(rows, 0.0);
    for (int r = 0; r < rows; ++r) {
      for (const auto& st : q.stages) {
        double dot = 0;
        for (int g = 0; g < groups; ++g) {
          float v[8];
          const size_t at = static_cast<size_t>(r) * groups + g;
          if (st.codebook == codec::Codebook::E8P16)
            codec::decode_e8p(st.codes16()[at], codec::e8p_abs_table(), v);
          else
            codec::decode_e8r8(st.codes8()[at], codec::e8r8_table(), v);
          for (int i = 0; i < 8; ++i) dot += v[i] * xt[8 * g + i];
        }
        yt[r] += st.scales[r] * dot;
      }
    }
    apply_t_double(q.plan_out, true, yt);
    for (int r = 0; r < rows; ++r) y[static_cast<size_t>(b) * rows + r] = yt[r] * q.sign_out[r];
  }
  return y;
}

// max |a − b| / rms(b)
template <class A, class B>
double max_error_over_rms(const A& a, const B& b) {
  double ss = 0, m = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    ss += static_cast<double>(b[i]) * b[i];
    m = std::max(m, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  }
  const double rms = std::sqrt(ss / static_cast<double>(b.size()));
  return rms > 0 ? m / rms : m;
}

}  // namespace glq::test
