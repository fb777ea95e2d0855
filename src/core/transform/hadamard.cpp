// Randomized Hadamard transforms for every dimension that is a multiple of 8.
//
// Rule of make_hadamard_plan(n), n = 2^k·m with m odd (k ≥ 3 since 8 | n):
//   * m = 1: a = 1, b = n (a plain Walsh-Hadamard transform).
//   * otherwise, when a = 4m ≤ 128 and a Paley construction with a PRIME q exists:
//       Paley I  (q = 4m − 1 prime, q ≡ 3 mod 4): H = I + S, S = [[0, 1ᵀ], [−1, J]] with the
//                Jacobsthal matrix J_ij = χ(j − i) (χ the Legendre symbol mod q); order q + 1.
//       Paley II (q = 2m − 1 prime, q ≡ 1 mod 4): C = [[0, 1ᵀ], [1, J]] (symmetric conference
//                matrix), H = C ⊗ [[1, 1], [1, −1]] + I ⊗ [[1, −1], [−1, −1]]; order 2(q + 1).
//     Paley I is tried first. Q_a = H / sqrt(a), b = n / a = 2^(k−2). Every entry of T_n is then
//     ±1/sqrt(n): the transform is a true Hadamard matrix of order n.
//   * otherwise (4m > 128, or only a prime power q would do): Q_a is the orthonormal DCT-II of
//     order a = m, Q[i][j] = c_i·cos(π·(2j+1)·i / (2m)), c_0 = sqrt(1/m), c_i = sqrt(2/m);
//     b = 2^k. Its entries are at most sqrt(2/m), so max |T_n| · sqrt(n) ≤ sqrt(2).
// Examples: 4096 → a=1; 576 = 64·9 → Paley II (q=17), a=36; 1536 = 512·3 → Paley I (q=11),
// a=12; 2688 = 128·21 → Paley I (q=83), a=84; 14336 = 2048·7 → Paley II (q=13), a=28;
// 11008 = 256·43 → DCT, a=43 (172 > 128); 1008 = 16·63 → DCT, a=63.
//
// random_signs(n, seed): splitmix64 (Steele, Lea & Flood 2014) from state = seed; the i-th
// output z_i (state += 0x9E3779B97F4A7C15, then the splitmix64 finaliser) gives sign −1 when its
// top bit is set, +1 otherwise.
#include "glq/transform/hadamard.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "glq/error.hpp"

namespace glq::transform {
namespace {

constexpr int kMaxPaleyOrder = 128;

bool is_prime(int q) {
  if (q < 2) return false;
  for (int d = 2; d * d <= q; ++d) {
    if (q % d == 0) return false;
  }
  return true;
}

// Legendre symbol χ(v) mod prime q: 0, +1 (quadratic residue) or −1.
std::vector<int> legendre_table(int q) {
  std::vector<int> chi(q, -1);
  chi[0] = 0;
  for (int v = 1; v < q; ++v) chi[(static_cast<long>(v) * v) % q] = 1;
  return chi;
}

// Hadamard matrix (entries ±1), order q + 1, q ≡ 3 mod 4 prime.
std::vector<int> paley1(int q) {
  const int a = q + 1;
  const std::vector<int> chi = legendre_table(q);
  std::vector<int> h(static_cast<size_t>(a) * a, 0);
  auto S = [&](int i, int j) -> int {
    if (i == 0 && j == 0) return 0;
    if (i == 0) return 1;
    if (j == 0) return -1;
    return chi[((j - i) % q + q) % q];
  };
  for (int i = 0; i < a; ++i) {
    for (int j = 0; j < a; ++j) h[i * a + j] = S(i, j) + (i == j ? 1 : 0);
  }
  return h;
}

// Hadamard matrix (entries ±1), order 2(q + 1), q ≡ 1 mod 4 prime.
std::vector<int> paley2(int q) {
  const int c = q + 1, a = 2 * c;
  const std::vector<int> chi = legendre_table(q);
  auto C = [&](int i, int j) -> int {
    if (i == 0 && j == 0) return 0;
    if (i == 0 || j == 0) return 1;
    return chi[((j - i) % q + q) % q];
  };
  static const int kPlus[2][2] = {{1, 1}, {1, -1}};
  static const int kIdent[2][2] = {{1, -1}, {-1, -1}};
  std::vector<int> h(static_cast<size_t>(a) * a, 0);
  for (int i = 0; i < c; ++i) {
    for (int j = 0; j < c; ++j) {
      const int cij = C(i, j);
      for (int u = 0; u < 2; ++u) {
        for (int v = 0; v < 2; ++v) {
          h[(2 * i + u) * a + (2 * j + v)] = cij * kPlus[u][v] + (i == j ? kIdent[u][v] : 0);
        }
      }
    }
  }
  return h;
}

void check_hadamard(const std::vector<int>& h, int a) {
  for (int i = 0; i < a; ++i) {
    for (int j = 0; j < a; ++j) {
      long dot = 0;
      for (int k = 0; k < a; ++k) dot += h[i * a + k] * h[j * a + k];
      if (dot != (i == j ? a : 0) || (h[i * a + j] != 1 && h[i * a + j] != -1)) {
        throw Error(ErrorKind::Internal, "Paley construction of order " + std::to_string(a) +
                                             " is not a Hadamard matrix");
      }
    }
  }
}

// In-place unnormalised fast Walsh-Hadamard transform of length b (a power of two).
void fwht(float* x, int b) {
  for (int h = 1; h < b; h *= 2) {
    for (int i = 0; i < b; i += 2 * h) {
      for (int j = i; j < i + h; ++j) {
        const float u = x[j], v = x[j + h];
        x[j] = u + v;
        x[j + h] = u - v;
      }
    }
  }
}

// Y = Q X (transpose = false) or Qᵀ X, X viewed as (a, b) row-major; accumulated in double.
void mix_rows(const HadamardPlan& plan, float* x, bool transpose) {
  const int a = plan.a, b = plan.b;
  std::vector<double> acc(static_cast<size_t>(a) * b, 0.0);  // (a, b)
  for (int i = 0; i < a; ++i) {
    double* out = &acc[static_cast<size_t>(i) * b];
    for (int k = 0; k < a; ++k) {
      const double q = transpose ? plan.q[static_cast<size_t>(k) * a + i]
                                 : plan.q[static_cast<size_t>(i) * a + k];
      const float* in = x + static_cast<size_t>(k) * b;
      for (int j = 0; j < b; ++j) out[j] += q * in[j];
    }
  }
  for (size_t i = 0; i < acc.size(); ++i) x[i] = static_cast<float>(acc[i]);
}

void apply(const HadamardPlan& plan, float* x, bool transpose) {
  if (plan.n <= 0 || plan.a * plan.b != plan.n) {
    throw_invalid("Hadamard plan is not initialised (n = " + std::to_string(plan.n) + ")");
  }
  // Q_a ⊗ H_b and Q_aᵀ ⊗ H_b: the row transforms (H_b, symmetric) and the mixing across rows
  // act on different indices and commute.
  const float scale = 1.0f / std::sqrt(static_cast<float>(plan.b));
  for (int r = 0; r < plan.a; ++r) {
    float* row = x + static_cast<size_t>(r) * plan.b;
    fwht(row, plan.b);
    for (int j = 0; j < plan.b; ++j) row[j] *= scale;
  }
  if (plan.a > 1) mix_rows(plan, x, transpose);
}

}  // namespace

HadamardPlan make_hadamard_plan(int n) {
  if (n <= 0 || n % 8 != 0) {
    throw_invalid("Hadamard transform dimension must be a positive multiple of 8, got " +
                  std::to_string(n));
  }
  int m = n, pow2 = 1;
  while (m % 2 == 0) {
    m /= 2;
    pow2 *= 2;
  }
  HadamardPlan plan;
  plan.n = n;
  if (m == 1) {
    plan.a = 1;
    plan.b = n;
    return plan;
  }
  const int a4 = 4 * m;
  std::vector<int> h;
  if (a4 <= kMaxPaleyOrder && is_prime(a4 - 1)) {
    h = paley1(a4 - 1);
  } else if (a4 <= kMaxPaleyOrder && is_prime(2 * m - 1) && (2 * m - 1) % 4 == 1) {
    h = paley2(2 * m - 1);
  }
  if (!h.empty()) {
    check_hadamard(h, a4);
    plan.a = a4;
    plan.b = n / a4;
    plan.q.resize(static_cast<size_t>(a4) * a4);
    const double s = 1.0 / std::sqrt(static_cast<double>(a4));
    for (size_t i = 0; i < h.size(); ++i) plan.q[i] = static_cast<float>(h[i] * s);
    return plan;
  }
  plan.a = m;
  plan.b = pow2;
  plan.q.resize(static_cast<size_t>(m) * m);
  const double pi = 3.14159265358979323846;
  for (int i = 0; i < m; ++i) {
    const double c = std::sqrt((i == 0 ? 1.0 : 2.0) / m);
    for (int j = 0; j < m; ++j) {
      plan.q[static_cast<size_t>(i) * m + j] =
          static_cast<float>(c * std::cos(pi * (2.0 * j + 1.0) * i / (2.0 * m)));
    }
  }
  return plan;
}

void hadamard_forward(const HadamardPlan& plan, float* x) { apply(plan, x, false); }
void hadamard_transpose(const HadamardPlan& plan, float* x) { apply(plan, x, true); }

// The batch versions accumulate the mixing product in float (a ≤ 128 terms, relative error
// about 1e-7) with a reused buffer: they are the fast path of the quantizer, the single-vector
// functions above the reference.
namespace {
void apply_batch(const HadamardPlan& plan, float* x, int64_t count, bool transpose) {
  if (plan.n <= 0 || plan.a * plan.b != plan.n) {
    throw_invalid("Hadamard plan is not initialised (n = " + std::to_string(plan.n) + ")");
  }
  const int a = plan.a, b = plan.b;
  const float scale = 1.0f / std::sqrt(static_cast<float>(b));
  std::vector<float> acc(a > 1 ? static_cast<size_t>(plan.n) : 0);  // (a, b)
  for (int64_t v = 0; v < count; ++v) {
    float* xv = x + v * plan.n;
    for (int r = 0; r < a; ++r) fwht(xv + static_cast<size_t>(r) * b, b);
    if (a == 1) {
      for (int j = 0; j < b; ++j) xv[j] *= scale;
      continue;
    }
    for (int i = 0; i < a; ++i) {
      float* out = &acc[static_cast<size_t>(i) * b];
      for (int j = 0; j < b; ++j) out[j] = 0.0f;
      for (int k = 0; k < a; ++k) {
        const float q = scale * (transpose ? plan.q[static_cast<size_t>(k) * a + i]
                                           : plan.q[static_cast<size_t>(i) * a + k]);
        const float* in = xv + static_cast<size_t>(k) * b;
        for (int j = 0; j < b; ++j) out[j] += q * in[j];
      }
    }
    std::copy(acc.begin(), acc.end(), xv);
  }
}
}  // namespace

void hadamard_forward_batch(const HadamardPlan& plan, float* x, int64_t count) {
  apply_batch(plan, x, count, false);
}
void hadamard_transpose_batch(const HadamardPlan& plan, float* x, int64_t count) {
  apply_batch(plan, x, count, true);
}

std::vector<float> random_signs(int n, uint64_t seed) {
  if (n < 0) throw_invalid("random_signs: negative length " + std::to_string(n));
  std::vector<float> s(static_cast<size_t>(n));
  uint64_t state = seed;
  for (int i = 0; i < n; ++i) {
    state += 0x9E3779B97F4A7C15ull;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    s[i] = (z >> 63) ? -1.0f : 1.0f;
  }
  return s;
}

}  // namespace glq::transform
