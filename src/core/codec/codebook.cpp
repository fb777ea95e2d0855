// E8P16 and E8R8: table generation and exact nearest-codeword encoders.
//
// Lattice facts used here (Conway & Sloane, "Sphere Packings, Lattices and Groups", ch. 4 and 20):
//   D8 = { x ∈ Z^8 : Σx even },  E8 = D8 ∪ (D8 + ½·1).
//   The nearest point of D8 to y: round every coordinate; if the sum is odd, round the
//   coordinate with the largest rounding error the other way. The nearest point of E8 is the
//   nearer of the nearest points of D8 and of D8 + ½·1 (decode y − ½·1 in D8, add ½·1 back).
//
// E8P16 codewords are c = σ∘p + t·1 with σ∘p ∈ D8 + ½·1 and t = ±¼ (see codebook.hpp), so the
// whole codebook is a subset of E8 + ¼·1. Its 256 abs patterns p are
//   * the 227 vectors of {½, 3/2, 5/2}^8 with Σp² ≤ 10 (all abs patterns of D8+½·1 in that ball),
//   * 29 of the 224 vectors with Σp² = 12 (five 3/2 and three ½, or one 5/2, two 3/2, five ½),
//     chosen by farthest-point selection: start from the lexicographically smallest norm-12
//     pattern (doubled coordinates, coordinate 0 most significant); repeatedly add the candidate
//     whose smallest squared distance to the already chosen ones is largest, ties going to the
//     lexicographically smallest. The rule is exact integer arithmetic, so every build produces
//     the same table. On i.i.d. Gaussian data at the best scale it gives MSE 0.09103 per weight
//     (300k-vector Monte Carlo), against 0.09104 for a greedy MSE-driven choice and 0.09137 for
//     QuIP#'s hand-picked five-3/2 patterns (docs/codec.md).
//   The 256 patterns are sorted by Σp², then lexicographically by doubled coordinates.
//
// Encoding E8P16 exactly. For a fixed shift t and pattern p, with y = x − t·1, the best signs are
// σ_i = sign(y_i), unless their parity is wrong; then flipping the coordinate with the least
// p_i·|y_i| is optimal (every flip changes the parity, one flip is the cheapest). So the nearest
// codeword is the best of 2 × 256 such candidates (the structured search). Faster: the nearest
// point e of the whole lattice E8 + ¼·1 is found with the Conway-Sloane decoder; when e belongs
// to the codebook it is the answer (the codebook is a subset of the lattice), which is the
// common case at useful scales; otherwise the structured search runs.
//
// E8R8: 240 roots of E8 and ±2·e_i. Nearest codeword: the best of (a) (±1,±1,0^6) on the two
// largest |x_i|, (b) (±½)^8 with signs of x and an even number of minus signs (parity fix-up on
// the least |x_i|), (c) ±2·e_i on the largest |x_i|.
#include "glq/codec/codebook.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "glq/error.hpp"

namespace glq::codec {
namespace {

using Doubled = std::array<int, 8>;  // doubled coordinates

int norm2(const Doubled& v) {
  int s = 0;
  for (int x : v) s += x * x;
  return s;
}
int dist2(const Doubled& a, const Doubled& b) {
  int s = 0;
  for (int i = 0; i < 8; ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
  return s;
}

// All vectors of {1,3,5}^8 (doubled abs patterns) with doubled squared norm == n4 (= 4·Σp²).
std::vector<Doubled> patterns_with_norm(bool at_most, int n4) {
  std::vector<Doubled> out;
  Doubled v;
  for (int idx = 0; idx < 6561; ++idx) {  // 3^8, coordinate 0 most significant
    int r = idx;
    for (int i = 7; i >= 0; --i) {
      v[i] = 1 + 2 * (r % 3);
      r /= 3;
    }
    const int n = norm2(v);
    if (at_most ? n <= n4 : n == n4) out.push_back(v);
  }
  return out;  // lexicographic order, since idx enumerates base-3 numbers in order
}

std::vector<Doubled> make_e8p_patterns() {
  std::vector<Doubled> base = patterns_with_norm(true, 40);   // Σp² ≤ 10
  std::vector<Doubled> cand = patterns_with_norm(false, 48);  // Σp² = 12
  if (base.size() != 227 || cand.size() != 224) {
    throw Error(ErrorKind::Internal, "E8P pattern enumeration: expected 227 + 224 patterns");
  }
  // Farthest-point selection of 29 norm-12 patterns (see the opening comment).
  std::vector<int> min_d(cand.size(), std::numeric_limits<int>::max());
  std::vector<bool> taken(cand.size(), false);
  size_t pick = 0;  // lexicographically smallest
  std::vector<Doubled> chosen;
  while (chosen.size() < 29) {
    taken[pick] = true;
    chosen.push_back(cand[pick]);
    for (size_t j = 0; j < cand.size(); ++j) min_d[j] = std::min(min_d[j], dist2(cand[j], cand[pick]));
    int best = -1;
    for (size_t j = 0; j < cand.size(); ++j) {
      if (!taken[j] && min_d[j] > best) {  // strict: ties keep the lexicographically smaller
        best = min_d[j];
        pick = j;
      }
    }
  }
  std::vector<Doubled> all = base;
  all.insert(all.end(), chosen.begin(), chosen.end());
  std::stable_sort(all.begin(), all.end(), [](const Doubled& a, const Doubled& b) {
    const int na = norm2(a), nb = norm2(b);
    return na != nb ? na < nb : a < b;
  });
  return all;
}

// A multiset of pattern magnitudes, sorted descending (see e8p_structured_search).
struct TypeInfo {
  double p[8];
  int digit[8];  // (2·p_j − 1)/2
  double half_norm;
  double parity;
};
constexpr int kNumTypes = 7;  // multisets of {½,3/2,5/2}^8 with Σp² ≤ 10

struct E8PTables {
  TypeInfo types[kNumTypes];
  TypeInfo types12[2];       // the two types of the norm-12 patterns (bounds only)
  int norm12[29];            // indices of the 29 norm-12 patterns
  double norm12_p[29][8];    // their magnitudes, contiguous
  std::array<uint32_t, 256> abs_table{};
  // Per-pattern data for scoring the norm-12 patterns one by one.
  alignas(64) double p[8][256];    // p_i of pattern k
  alignas(64) double half_norm[256];  // Σp²/2
  alignas(64) double parity[256];  // q as 0.0 / 1.0
  // Pattern index of the abs pattern with base-3 digits (2|v_i|−1)/2, or −1: the codebook
  // membership test of the lattice fast path.
  std::array<int16_t, 6561> index_of{};
};

const E8PTables& e8p_tables() {
  static const E8PTables tables = [] {
    E8PTables t;
    t.index_of.fill(-1);
    const std::vector<Doubled> pats = make_e8p_patterns();
    int n12 = 0;
    for (int k = 0; k < 256; ++k) {
      const Doubled& v = pats[k];
      uint32_t entry = 0;
      int sum = 0, key = 0;
      for (int i = 0; i < 8; ++i) {
        entry |= static_cast<uint32_t>(v[i]) << (4 * i);
        sum += v[i];
        key = key * 3 + (v[i] - 1) / 2;
        t.p[i][k] = 0.5 * v[i];
      }
      const uint32_t q = static_cast<uint32_t>((sum / 2) & 1);
      entry |= q << 31;
      t.abs_table[k] = entry;
      t.half_norm[k] = norm2(v) / 8.0;
      t.parity[k] = q;
      t.index_of[key] = static_cast<int16_t>(k);
      if (norm2(v) == 48) {
        if (n12 == 29) throw Error(ErrorKind::Internal, "E8P tables: more than 29 norm-12 patterns");
        t.norm12[n12] = k;
        for (int i = 0; i < 8; ++i) t.norm12_p[n12][i] = 0.5 * v[i];
        ++n12;
      }
    }
    // The types: the distinct sorted patterns of norm ≤ 10. Every permutation of each is in
    // the table (the ball is permutation invariant), which the structured search relies on.
    std::vector<Doubled> types;
    for (Doubled v : pats) {
      if (norm2(v) > 40) continue;
      std::sort(v.begin(), v.end(), std::greater<int>());
      if (std::find(types.begin(), types.end(), v) == types.end()) types.push_back(v);
    }
    if (types.size() != kNumTypes || n12 != 29) {
      throw Error(ErrorKind::Internal, "E8P tables: expected 7 pattern types and 29 norm-12 patterns");
    }
    auto fill = [](TypeInfo& T, const Doubled& v) {
      int sum = 0;
      for (int j = 0; j < 8; ++j) {
        T.p[j] = 0.5 * v[j];
        T.digit[j] = (v[j] - 1) / 2;
        sum += v[j];
      }
      T.half_norm = norm2(v) / 8.0;
      T.parity = (sum / 2) & 1;
    };
    for (int ty = 0; ty < kNumTypes; ++ty) fill(t.types[ty], types[ty]);
    fill(t.types12[0], Doubled{3, 3, 3, 3, 3, 1, 1, 1});
    fill(t.types12[1], Doubled{5, 3, 3, 1, 1, 1, 1, 1});
    return t;
  }();
  return tables;
}

std::vector<Doubled> make_e8r8_points() {
  std::vector<Doubled> pts;
  // Enumerate {−4,−2,−1,0,1,2,4}-valued doubled vectors is wasteful; build the three families.
  for (int i = 0; i < 8; ++i) {
    for (int j = i + 1; j < 8; ++j) {
      for (int si : {-2, 2}) {
        for (int sj : {-2, 2}) {
          Doubled v{};
          v[i] = si;
          v[j] = sj;
          pts.push_back(v);
        }
      }
    }
  }
  for (int m = 0; m < 256; ++m) {
    if (__builtin_popcount(static_cast<unsigned>(m)) % 2 != 0) continue;
    Doubled v;
    for (int i = 0; i < 8; ++i) v[i] = ((m >> i) & 1) ? -1 : 1;
    pts.push_back(v);
  }
  for (int i = 0; i < 8; ++i) {
    for (int s : {-4, 4}) {
      Doubled v{};
      v[i] = s;
      pts.push_back(v);
    }
  }
  std::sort(pts.begin(), pts.end());  // lexicographic on doubled coordinates
  if (pts.size() != 256) throw Error(ErrorKind::Internal, "E8R8: expected 256 points");
  return pts;
}

struct E8R8Tables {
  std::array<uint32_t, 256> table{};
  std::array<uint8_t, 256> code_of_half{};  // (±½)^8 by sign mask (bit i = coordinate i < 0)
  std::array<std::array<uint8_t, 4>, 64> code_of_root{};  // (i·8+j, sign pattern) → code
  std::array<std::array<uint8_t, 2>, 8> code_of_axis{};   // (i, negative) → code
};

const E8R8Tables& e8r8_tables() {
  static const E8R8Tables tables = [] {
    E8R8Tables t;
    const std::vector<Doubled> pts = make_e8r8_points();
    for (int k = 0; k < 256; ++k) {
      const Doubled& v = pts[k];
      uint32_t entry = 0;
      int nz = 0, first = -1, second = -1;
      unsigned neg = 0;
      for (int i = 0; i < 8; ++i) {
        entry |= (static_cast<uint32_t>(v[i]) & 0xFu) << (4 * i);
        if (v[i] != 0) {
          ++nz;
          (first < 0 ? first : second) = i;
        }
        if (v[i] < 0) neg |= 1u << i;
      }
      t.table[k] = entry;
      const auto code = static_cast<uint8_t>(k);
      if (nz == 8) {
        t.code_of_half[neg] = code;
      } else if (nz == 2) {
        const int signs = (v[first] < 0 ? 1 : 0) | (v[second] < 0 ? 2 : 0);
        t.code_of_root[first * 8 + second][signs] = code;
      } else {
        t.code_of_axis[first][v[first] < 0 ? 1 : 0] = code;
      }
    }
    return t;
  }();
  return tables;
}

// The structured search over 2 shifts × 256 patterns (exact; see the opening comment).
//
// The 227 patterns of norm ≤ 10 are all the permutations of 7 "types" (multisets of
// {½, 3/2, 5/2}), so they are not scored one by one: for a type with sorted magnitudes
// p_(1) ≥ … ≥ p_(8) and y's sorted magnitudes a_(1) ≥ … ≥ a_(8), the best permutation and signs
// score Σ p_(j) a_(j) (rearrangement inequality), less 2·p_(8)·a_(8) when the signs of y have
// the wrong parity: the optimum has exactly one sign against y, and by rearrangement on
// (a_1, …, −a_j, …) the smallest magnitude goes there; removing the smallest a_j leaves the
// largest remaining sum. The 29 norm-12 patterns are scored individually.
uint16_t e8p_structured_search(const float x[8]) {
  const E8PTables& t = e8p_tables();
  double best_dist = std::numeric_limits<double>::infinity();
  uint16_t best_code = 0;
  double xsum = 0;
  for (int i = 0; i < 8; ++i) xsum += static_cast<double>(x[i]);
  for (int shift = 0; shift < 2; ++shift) {
    const double tv = shift ? -0.25 : 0.25;
    double a[8];
    unsigned neg = 0;
    for (int i = 0; i < 8; ++i) {
      const double y = static_cast<double>(x[i]) - tv;
      a[i] = std::fabs(y);
      if (y < 0) neg |= 1u << i;
    }
    const double negpar = __builtin_popcount(neg) & 1;
    // order: coordinates by a descending (an optimal 19-comparator sorting network, branch
    // free; any order of equal values is optimal and the network is deterministic).
    int order[8];
    double as[8];
    for (int i = 0; i < 8; ++i) {
      as[i] = a[i];
      order[i] = i;
    }
    auto cx = [&](int i, int j) {
      const bool sw = as[j] > as[i];
      const double ai = as[i], aj = as[j];
      const int oi = order[i], oj = order[j];
      as[i] = sw ? aj : ai;
      as[j] = sw ? ai : aj;
      order[i] = sw ? oj : oi;
      order[j] = sw ? oi : oj;
    };
    cx(0, 2); cx(1, 3); cx(4, 6); cx(5, 7);
    cx(0, 4); cx(1, 5); cx(2, 6); cx(3, 7);
    cx(0, 1); cx(2, 3); cx(4, 5); cx(6, 7);
    cx(2, 4); cx(3, 5);
    cx(1, 4); cx(3, 6);
    cx(1, 2); cx(3, 4); cx(5, 6);
    double best_score = -std::numeric_limits<double>::infinity();
    int best_type = -1, best_k = -1;
    for (int ty = 0; ty < kNumTypes; ++ty) {
      const TypeInfo& T = t.types[ty];
      double s = 0;
      for (int j = 0; j < 8; ++j) s += T.p[j] * as[j];
      if (T.parity != negpar) s -= 2.0 * T.p[7] * as[7];
      s -= T.half_norm;
      if (s > best_score) {
        best_score = s;
        best_type = ty;
      }
    }
    // The norm-12 patterns are permutations of 2 types; the sorted bound of those types bounds
    // every one of them, so they are scored only when the bound beats the best so far.
    double bound12 = -std::numeric_limits<double>::infinity();
    for (const TypeInfo& T : t.types12) {
      double s = 0;
      for (int j = 0; j < 8; ++j) s += T.p[j] * as[j];
      if (T.parity != negpar) s -= 2.0 * T.p[7] * as[7];
      bound12 = std::max(bound12, s - T.half_norm);
    }
    for (int j = 0; j < 29 && !(bound12 <= best_score); ++j) {
      const int k = t.norm12[j];
      double s = 0, m = std::numeric_limits<double>::infinity();
      for (int i = 0; i < 8; ++i) {
        const double pa = t.norm12_p[j][i] * a[i];
        s += pa;
        m = std::min(m, pa);
      }
      s -= t.half_norm[k] + ((t.parity[k] != negpar) ? 2.0 * m : 0.0);
      if (s > best_score) {
        best_score = s;
        best_type = -1;
        best_k = k;
      }
    }
    if (best_type < 0 && best_k < 0) continue;  // NaN input
    // |x − c|² = |x|² − 2t·Σx + 8t² − 2·score; |x|² and 8t² are the same for both shifts and
    // are left out so that huge inputs keep the precision that tells the shifts apart.
    const double dist = -2.0 * tv * xsum - 2.0 * best_score;
    if (!(dist < best_dist)) continue;
    best_dist = dist;
    unsigned signs = neg;
    int k = best_k;
    if (best_type >= 0) {
      const TypeInfo& T = t.types[best_type];
      int key_digits[8];
      for (int j = 0; j < 8; ++j) key_digits[order[j]] = T.digit[j];
      int key = 0;
      for (int i = 0; i < 8; ++i) key = key * 3 + key_digits[i];
      k = t.index_of[key];
      if (T.parity != negpar) signs ^= 1u << order[7];
    } else if (t.parity[k] != negpar) {
      // Flip the least p_i·a_i.
      int mi = 0;
      double mv = std::numeric_limits<double>::infinity();
      for (int i = 0; i < 8; ++i) {
        const double pa = t.p[i][k] * a[i];
        if (pa < mv) {
          mv = pa;
          mi = i;
        }
      }
      signs ^= 1u << mi;
    }
    best_code = static_cast<uint16_t>(k | ((signs & 0x7F) << 8) | (shift << 15));
  }
  return best_code;
}

}  // namespace

const std::array<uint32_t, 256>& e8p_abs_table() { return e8p_tables().abs_table; }
const std::array<uint32_t, 256>& e8r8_table() { return e8r8_tables().table; }

uint16_t encode_e8p(const float x[8]) {
  const E8PTables& t = e8p_tables();
  // Nearest point of E8 + ¼·1: decode y = x − ¼·1 in E8 = D8 ∪ (D8 + ½·1). No codeword has a
  // coordinate beyond 11/4, so inputs with |x_i| ≥ 8 (or NaN) go straight to the search, and
  // below that rounding by the 1.5·2^52 trick is exact round-half-even.
  constexpr double kRound = 6755399441055744.0;  // 1.5·2^52
  double y[8];
  for (int i = 0; i < 8; ++i) {
    if (!(std::fabs(x[i]) < 8.0f)) return e8p_structured_search(x);
    y[i] = static_cast<double>(x[i]) - 0.25;
  }
  // D8 candidate (r0) and D8 + ½·1 candidate (r1 − ½), as integers.
  int r0[8], r1[8];
  int sum0 = 0, sum1 = 0, w0 = 0, w1 = 0;
  double e0max = -1, e1max = -1, d0 = 0, d1 = 0;
  for (int i = 0; i < 8; ++i) {
    const double f0 = (y[i] + kRound) - kRound;
    const double f1 = ((y[i] - 0.5) + kRound) - kRound;
    r0[i] = static_cast<int>(f0);
    r1[i] = static_cast<int>(f1);
    sum0 += r0[i];
    sum1 += r1[i];
    const double e0 = std::fabs(y[i] - f0), e1 = std::fabs(y[i] - 0.5 - f1);
    if (e0 > e0max) { e0max = e0; w0 = i; }
    if (e1 > e1max) { e1max = e1; w1 = i; }
  }
  if (sum0 & 1) r0[w0] += (y[w0] >= r0[w0]) ? 1 : -1;
  if (sum1 & 1) r1[w1] += (y[w1] - 0.5 >= r1[w1]) ? 1 : -1;
  for (int i = 0; i < 8; ++i) {
    const double a = y[i] - r0[i], b = y[i] - 0.5 - r1[i];
    d0 += a * a;
    d1 += b * b;
  }
  // e ∈ D8+½·1 → c = e + ¼·1: v = e = r1 + ½, shift +¼.
  // e ∈ D8 → c = (e + ½·1) − ¼·1: v = r0 + ½, shift −¼.
  const bool half = d1 < d0;
  const int* r = half ? r1 : r0;
  int key = 0;
  unsigned signs = 0;
  for (int i = 0; i < 8; ++i) {
    // v_i = r_i + ½: |v_i| ∈ {½, 3/2, 5/2} ⇔ r_i ∈ {−3, …, 2}; digit (|2v_i| − 1)/2.
    const int ri = r[i];
    if (ri < -3 || ri > 2) return e8p_structured_search(x);
    const int digit = ri >= 0 ? ri : -ri - 1;
    key = key * 3 + digit;
    if (ri < 0) signs |= 1u << i;
  }
  const int k = t.index_of[key];
  if (k < 0) return e8p_structured_search(x);
  return static_cast<uint16_t>(k | ((signs & 0x7F) << 8) | (half ? 0 : 0x8000));
}

uint8_t encode_e8r8(const float x[8]) {
  const E8R8Tables& t = e8r8_tables();
  // Scores ⟨x,c⟩ − |c|²/2 (maximise). Largest two |x_i|, the least |x_i|, sign mask.
  double a[8];
  unsigned neg = 0;
  int i1 = 0, i2 = -1, imin = 0;
  double sum = 0;
  for (int i = 0; i < 8; ++i) {
    a[i] = std::fabs(static_cast<double>(x[i]));
    sum += a[i];
    if (x[i] < 0) neg |= 1u << i;
  }
  for (int i = 1; i < 8; ++i) {
    if (a[i] > a[i1]) i1 = i;
    if (a[i] < a[imin]) imin = i;
  }
  for (int i = 0; i < 8; ++i) {
    if (i != i1 && (i2 < 0 || a[i] > a[i2])) i2 = i;
  }
  // (a) roots (±1,±1,0^6): score a_i1 + a_i2 − 1.
  const double s_root = a[i1] + a[i2] - 1.0;
  // (b) (±½)^8, even number of minus signs: score ½Σa − 1, minus a_min on a parity fix-up.
  unsigned half_mask = neg;
  double s_half = 0.5 * sum - 1.0;
  if (__builtin_popcount(neg) & 1) {
    half_mask ^= 1u << imin;
    s_half -= a[imin];
  }
  // (c) ±2·e_i: score 2·a_i1 − 2.
  const double s_axis = 2.0 * a[i1] - 2.0;
  if (s_root >= s_half && s_root >= s_axis) {
    const int lo = std::min(i1, i2), hi = std::max(i1, i2);
    const int signs = ((neg >> lo) & 1) | (((neg >> hi) & 1) << 1);
    return t.code_of_root[lo * 8 + hi][signs];
  }
  if (s_half >= s_axis) return t.code_of_half[half_mask];
  return t.code_of_axis[i1][(neg >> i1) & 1];
}

}  // namespace glq::codec
