// Codebook properties and exactness of the structured encoders against exhaustive search.
//
// Two independent references:
//   * naive: the score ⟨x,c⟩ − |c|²/2 of every one of the 65,536 (256) decoded codewords;
//   * meet-in-the-middle (E8P16 only, fast enough for a million vectors): for each shift and
//     each half (coordinates 0..3, 4..7) the best half-score of every (half abs pattern, sign
//     parity) over all 16 sign choices, then every one of the 256 patterns × the 2 parity splits
//     that make the total parity right. This evaluates the maximum over all 65,536 codewords
//     without the sign-flip argument or the lattice decoder that the encoder relies on; it is
//     itself checked against the naive scan.
// A mismatch in code is accepted only as a tie: the two codewords' scores, recomputed in long
// double, agree within rounding of the magnitudes involved.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "glq/codec/codebook.hpp"

namespace glq::codec {
namespace {

using Vec8 = std::array<float, 8>;

std::array<double, 8> e8p_point(uint16_t code) {
  float out[8];
  decode_e8p(code, e8p_abs_table(), out);
  std::array<double, 8> r;
  for (int i = 0; i < 8; ++i) r[i] = out[i];
  return r;
}
std::array<double, 8> e8r8_point(uint8_t code) {
  float out[8];
  decode_e8r8(code, e8r8_table(), out);
  std::array<double, 8> r;
  for (int i = 0; i < 8; ++i) r[i] = out[i];
  return r;
}

// True when codeword a is at least as near to x as b, up to rounding of the magnitudes.
bool no_worse(const Vec8& x, const std::array<double, 8>& a, const std::array<double, 8>& b) {
  long double diff = 0, mag = 0;  // score(b) − score(a)
  for (int i = 0; i < 8; ++i) {
    const long double xi = x[i];
    diff += xi * (b[i] - a[i]) - (b[i] * b[i] - a[i] * a[i]) / 2;
    mag += std::fabs(xi) * (std::fabs(b[i]) + std::fabs(a[i])) + b[i] * b[i] + a[i] * a[i];
  }
  return diff <= 1e-12L * mag;
}

// Naive exhaustive searches. Ties: the first best in code order.
struct AllE8P {
  std::vector<std::array<double, 8>> pts = [] {
    std::vector<std::array<double, 8>> p(65536);
    for (int c = 0; c < 65536; ++c) p[c] = e8p_point(static_cast<uint16_t>(c));
    return p;
  }();
};
const AllE8P& all_e8p() {
  static const AllE8P a;
  return a;
}

uint16_t naive_e8p(const Vec8& x) {
  const auto& pts = all_e8p().pts;
  double best = -std::numeric_limits<double>::infinity();
  int bc = 0;
  for (int c = 0; c < 65536; ++c) {
    double s = 0;
    for (int i = 0; i < 8; ++i) s += x[i] * pts[c][i] - 0.5 * pts[c][i] * pts[c][i];
    if (s > best) {
      best = s;
      bc = c;
    }
  }
  return static_cast<uint16_t>(bc);
}

uint8_t naive_e8r8(const Vec8& x) {
  double best = -std::numeric_limits<double>::infinity();
  int bc = 0;
  for (int c = 0; c < 256; ++c) {
    const auto p = e8r8_point(static_cast<uint8_t>(c));
    double s = 0;
    for (int i = 0; i < 8; ++i) s += x[i] * p[i] - 0.5 * p[i] * p[i];
    if (s > best) {
      best = s;
      bc = c;
    }
  }
  return static_cast<uint8_t>(bc);
}

// Meet-in-the-middle exhaustive search over the E8P16 codebook (see the opening comment).
class MitmE8P {
 public:
  MitmE8P() {
    const auto& tab = e8p_abs_table();
    for (int k = 0; k < 256; ++k) {
      int lo = 0, hi = 0;
      for (int i = 0; i < 4; ++i) lo = lo * 3 + (((tab[k] >> (4 * i)) & 7) - 1) / 2;
      for (int i = 4; i < 8; ++i) hi = hi * 3 + (((tab[k] >> (4 * i)) & 7) - 1) / 2;
      half_[k][0] = lo;
      half_[k][1] = hi;
      parity_[k] = tab[k] >> 31;
    }
  }

  uint16_t operator()(const Vec8& x) const {
    double best = -std::numeric_limits<double>::infinity();
    uint16_t best_code = 0;
    for (int shift = 0; shift < 2; ++shift) {
      const double t = shift ? -0.25 : 0.25;
      // g[i][d][s]: term of coordinate i with doubled magnitude 1+2d and sign s.
      double g[8][3][2];
      for (int i = 0; i < 8; ++i) {
        for (int d = 0; d < 3; ++d) {
          for (int s = 0; s < 2; ++s) {
            const double c = (s ? -1.0 : 1.0) * (0.5 + d) + t;
            g[i][d][s] = x[i] * c - 0.5 * c * c;
          }
        }
      }
      // best[h][pattern81][parity] and the sign mask achieving it.
      double hb[2][81][2];
      int hs[2][81][2];
      for (int h = 0; h < 2; ++h) {
        for (int pat = 0; pat < 81; ++pat) {
          int d[4];
          for (int i = 3, r = pat; i >= 0; --i, r /= 3) d[i] = r % 3;
          hb[h][pat][0] = hb[h][pat][1] = -std::numeric_limits<double>::infinity();
          for (int m = 0; m < 16; ++m) {
            double s = 0;
            for (int i = 0; i < 4; ++i) s += g[4 * h + i][d[i]][(m >> i) & 1];
            const int par = __builtin_popcount(static_cast<unsigned>(m)) & 1;
            if (s > hb[h][pat][par]) {
              hb[h][pat][par] = s;
              hs[h][pat][par] = m;
            }
          }
        }
      }
      for (int k = 0; k < 256; ++k) {
        for (int pl = 0; pl < 2; ++pl) {
          const int pr = pl ^ static_cast<int>(parity_[k]);
          const double s = hb[0][half_[k][0]][pl] + hb[1][half_[k][1]][pr];
          if (s > best) {
            best = s;
            const int signs = hs[0][half_[k][0]][pl] | (hs[1][half_[k][1]][pr] << 4);
            best_code = static_cast<uint16_t>(k | ((signs & 0x7F) << 8) | (shift << 15));
          }
        }
      }
    }
    return best_code;
  }

 private:
  int half_[256][2];
  uint32_t parity_[256];
};

// The million test vectors: random Gaussian at many scales and adversarial families.
std::vector<Vec8> test_vectors(size_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> gauss(0.f, 1.f);
  std::uniform_int_distribution<int> family(0, 11), small_int(-12, 12), coord(0, 7);
  std::uniform_int_distribution<int> code16(0, 65535);
  const float scales[] = {0.05f, 0.3f, 0.7f, 0.9f, 1.0f, 1.1f, 1.3f, 1.6f, 2.0f, 3.0f, 5.0f};
  const float extreme[] = {1e-40f, 1e-30f, 1e-10f, 1e-3f, 1e3f, 1e6f, 1e15f, 1e30f, 1e37f};
  std::vector<Vec8> out(count);
  for (size_t n = 0; n < count; ++n) {
    Vec8& x = out[n];
    const int f = n < count / 2 ? 0 : family(rng);  // half plain Gaussian
    switch (f) {
      case 0:
      case 1: {  // Gaussian at a useful scale
        const float s = scales[rng() % std::size(scales)];
        for (float& v : x) v = s * gauss(rng);
        break;
      }
      case 2: {  // huge or tiny norm
        const float s = extreme[rng() % std::size(extreme)];
        for (float& v : x) v = s * gauss(rng);
        break;
      }
      case 3:  // zeros, signed zeros
        for (float& v : x) v = (rng() & 1) ? 0.f : -0.f;
        break;
      case 4:  // quarter-integer grid: exact codewords, midpoints, many ties
        for (float& v : x) v = 0.25f * static_cast<float>(small_int(rng));
        break;
      case 5:  // half-integer grid
        for (float& v : x) v = 0.5f * static_cast<float>(small_int(rng));
        break;
      case 6: {  // midpoint of two codewords: a tie
        const auto a = e8p_point(static_cast<uint16_t>(code16(rng)));
        const auto b = e8p_point(static_cast<uint16_t>(code16(rng)));
        for (int i = 0; i < 8; ++i) x[i] = static_cast<float>(0.5 * (a[i] + b[i]));
        break;
      }
      case 7: {  // a codeword plus tiny noise
        const auto a = e8p_point(static_cast<uint16_t>(code16(rng)));
        for (int i = 0; i < 8; ++i) x[i] = static_cast<float>(a[i]) + 1e-4f * gauss(rng);
        break;
      }
      case 8: {  // a spike
        x.fill(0.f);
        x[coord(rng)] = scales[rng() % std::size(scales)] * 3.f * gauss(rng);
        break;
      }
      case 9:  // mixed magnitudes in one vector
        for (float& v : x) v = extreme[rng() % std::size(extreme)] * gauss(rng);
        break;
      case 10:  // all coordinates equal (symmetric ties)
        x.fill(0.25f * static_cast<float>(small_int(rng)));
        break;
      default:  // E8R8-relevant grid: integers and half-integers near the roots
        for (float& v : x) v = 0.5f * static_cast<float>(small_int(rng) / 3);
        break;
    }
  }
  return out;
}

TEST(E8PTable, CountsNormsAndOrder) {
  const auto& tab = e8p_abs_table();
  EXPECT_LE(sizeof(tab), 4096u);
  int n10 = 0, n12 = 0, prev_norm = 0;
  std::set<uint32_t> patterns;
  for (int k = 0; k < 256; ++k) {
    int norm4 = 0, sum = 0;
    for (int i = 0; i < 8; ++i) {
      const int d = (tab[k] >> (4 * i)) & 0x7;
      ASSERT_TRUE(d == 1 || d == 3 || d == 5) << "pattern " << k << " coordinate " << i;
      norm4 += d * d;
      sum += d;
    }
    EXPECT_EQ((tab[k] >> 31) & 1, static_cast<uint32_t>((sum / 2) & 1)) << "parity bit of " << k;
    EXPECT_GE(norm4, prev_norm) << "patterns sorted by norm";
    prev_norm = norm4;
    n10 += norm4 <= 40;
    n12 += norm4 == 48;
    patterns.insert(tab[k] & 0x7FFFFFFF);
  }
  EXPECT_EQ(n10, 227);
  EXPECT_EQ(n12, 29);
  EXPECT_EQ(patterns.size(), 256u);
}

TEST(E8PTable, AllCodewordsDistinctAndInTheShiftedLattice) {
  std::set<std::array<int, 8>> seen;
  for (int c = 0; c < 65536; ++c) {
    const auto p = e8p_point(static_cast<uint16_t>(c));
    // 4c is an integer vector; c − ¼·1 must be in E8: all integer or all half-integer, Σ even.
    std::array<int, 8> q4;
    int sum2 = 0;
    bool all_int = true, all_half = true;
    for (int i = 0; i < 8; ++i) {
      const double v4 = 4.0 * p[i];
      ASSERT_EQ(v4, std::round(v4));
      q4[i] = static_cast<int>(v4);
      const int e2 = (q4[i] - 1) / 2;  // 2·(c_i − ¼), exact since q4 is odd
      ASSERT_EQ((q4[i] - 1) % 2, 0) << "code " << c;
      all_int = all_int && (e2 % 2 == 0);
      all_half = all_half && (e2 % 2 != 0);
      sum2 += e2;
    }
    ASSERT_TRUE(all_int || all_half) << "code " << c << " not in E8 + 1/4";
    ASSERT_EQ(((sum2 / 2) % 2 + 2) % 2, 0) << "code " << c << ": coordinate sum of c - 1/4 odd";
    seen.insert(q4);
  }
  EXPECT_EQ(seen.size(), 65536u);
}

TEST(E8R8Table, RootsAndAxisPoints) {
  const auto& tab = e8r8_table();
  EXPECT_LE(sizeof(tab), 4096u);
  std::set<std::array<int, 8>> seen;
  int roots = 0, axis = 0;
  for (int c = 0; c < 256; ++c) {
    const auto p = e8r8_point(static_cast<uint8_t>(c));
    std::array<int, 8> d;
    double n2 = 0, sum = 0;
    bool all_int = true, all_half = true;
    for (int i = 0; i < 8; ++i) {
      d[i] = static_cast<int>(2 * p[i]);
      n2 += p[i] * p[i];
      sum += p[i];
      all_int = all_int && d[i] % 2 == 0;
      all_half = all_half && d[i] % 2 != 0;
    }
    EXPECT_TRUE(all_int || all_half);
    EXPECT_EQ(std::fmod(sum, 2.0), 0.0) << "code " << c;
    roots += n2 == 2.0;
    axis += n2 == 4.0 && all_int;
    seen.insert(d);
  }
  EXPECT_EQ(roots, 240);
  EXPECT_EQ(axis, 16);
  EXPECT_EQ(seen.size(), 256u);
}

TEST(E8PEncode, RoundTripsEveryCodeword) {
  for (int c = 0; c < 65536; ++c) {
    float p[8];
    decode_e8p(static_cast<uint16_t>(c), e8p_abs_table(), p);
    ASSERT_EQ(encode_e8p(p), c);
  }
}

TEST(E8R8Encode, RoundTripsEveryCodeword) {
  for (int c = 0; c < 256; ++c) {
    float p[8];
    decode_e8r8(static_cast<uint8_t>(c), e8r8_table(), p);
    ASSERT_EQ(encode_e8r8(p), c);
  }
}

TEST(E8PEncode, MitmReferenceAgreesWithNaiveScan) {
  const MitmE8P mitm;
  const auto xs = test_vectors(3000, 11);
  for (const auto& x : xs) {
    const uint16_t a = mitm(x), b = naive_e8p(x);
    if (a != b) {
      ASSERT_TRUE(no_worse(x, e8p_point(a), e8p_point(b)) && no_worse(x, e8p_point(b), e8p_point(a)))
          << "mitm " << a << ", naive " << b << " x=" << ::testing::PrintToString(x);
    }
  }
}

TEST(E8PEncode, EqualsExhaustiveSearchOnAMillionVectors) {
  const MitmE8P mitm;
  const size_t n = 1'000'000;
  const auto xs = test_vectors(n, 12345);
  size_t ties = 0;
  for (size_t j = 0; j < n; ++j) {
    const Vec8& x = xs[j];
    const uint16_t e = encode_e8p(x.data()), r = mitm(x);
    if (e == r) continue;
    const bool ok = no_worse(x, e8p_point(e), e8p_point(r));
    ASSERT_TRUE(ok) << "vector " << j << ": encoder code " << e << ", exhaustive " << r
                    << " x=" << ::testing::PrintToString(x);
    // Plain Gaussian vectors (the first half) have no ties.
    ASSERT_GE(j, n / 2) << "unexpected tie on Gaussian vector " << j;
    ++ties;
  }
  RecordProperty("ties", static_cast<int>(ties));
}

TEST(E8PEncode, DeterministicOnTies) {
  const float zero[8] = {};
  const uint16_t a = encode_e8p(zero);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(encode_e8p(zero), a);
}

TEST(E8R8Encode, EqualsExhaustiveSearchOnAMillionVectors) {
  const size_t n = 1'000'000;
  const auto xs = test_vectors(n, 777);
  for (size_t j = 0; j < n; ++j) {
    const Vec8& x = xs[j];
    const uint8_t e = encode_e8r8(x.data()), r = naive_e8r8(x);
    if (e == r) continue;
    ASSERT_TRUE(no_worse(x, e8r8_point(e), e8r8_point(r)))
        << "vector " << j << ": encoder code " << int(e) << ", exhaustive " << int(r)
        << " x=" << ::testing::PrintToString(x);
    ASSERT_GE(j, n / 2) << "unexpected tie on Gaussian vector " << j;
  }
}

TEST(E8PEncode, NonFiniteInputDoesNotCrash) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const float a[8] = {nan, 0, 0, 0, 0, 0, 0, 0};
  const float b[8] = {inf, -inf, 1, 2, 3, 4, 5, 6};
  EXPECT_EQ(encode_e8p(a), encode_e8p(a));
  EXPECT_EQ(encode_e8p(b), encode_e8p(b));
  EXPECT_EQ(encode_e8r8(a), encode_e8r8(a));
}

}  // namespace
}  // namespace glq::codec
