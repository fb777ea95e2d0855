// The randomized-Hadamard transforms of the activations, written once and compiled into each
// ISA's file (kernel_scalar.cpp, kernel_avx2.cpp, kernel_avx512.cpp) so that the compiler
// vectorises the long butterfly stages and the mixing product with that file's flags. The
// butterfly stages shorter than a vector use explicit in-register permutes when the file is
// compiled for AVX2 / AVX-512. Everything here has internal linkage: each ISA's copy stays apart.
//
// T_n = Q_a ⊗ H_b / sqrt(b): x viewed as a×b row-major X; T x = Q_a · (X H_b) / sqrt(b) and
// T^T x = Q_a^T · (X H_b) / sqrt(b). Every butterfly is one exact-order add or subtract, the
// same in every ISA, so only the mixing sums can round differently from the reference.
#pragma once

#include <cmath>
#include <cstring>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "glq/transform/hadamard.hpp"

namespace glq::cpu::detail {
namespace {

// Butterfly stage of half-width h over a length-b row (h ≥ vector width, or scalar).
inline void fwht_stage(float* __restrict x, int b, int h) {
  for (int i = 0; i < b; i += 2 * h) {
    float* __restrict lo = x + i;
    float* __restrict hi = x + i + h;
    for (int j = 0; j < h; ++j) {
      const float u = lo[j], v = hi[j];
      lo[j] = u + v;
      hi[j] = u - v;
    }
  }
}

// Unnormalised Walsh-Hadamard transform (Sylvester order) of one row of length b.
inline void fwht(float* x, int b) {
  int h = 1;
#if defined(__AVX512F__)
  if (b >= 16) {
    // Stages h = 1, 2, 4, 8 inside each 16-float vector: partner lane = lane ^ h, and
    // lane gets partner ± itself (sign − where lane & h), computed as one exact fma by ±1.
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512i perm[4];
    __m512 sgn[4];
    for (int s = 0; s < 4; ++s) {
      const __m512i hv = _mm512_set1_epi32(1 << s);
      perm[s] = _mm512_xor_si512(lane, hv);
      const __mmask16 neg = _mm512_test_epi32_mask(lane, hv);
      sgn[s] = _mm512_mask_blend_ps(neg, _mm512_set1_ps(1.0f), _mm512_set1_ps(-1.0f));
    }
    for (int i = 0; i < b; i += 16) {
      __m512 v = _mm512_loadu_ps(x + i);
      for (int s = 0; s < 4; ++s) {
        const __m512 p = _mm512_permutexvar_ps(perm[s], v);
        v = _mm512_fmadd_ps(v, sgn[s], p);
      }
      _mm512_storeu_ps(x + i, v);
    }
    h = 16;
  }
#elif defined(__AVX2__)
  if (b >= 8) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i perm[3];
    __m256 sgn[3];
    for (int s = 0; s < 3; ++s) {
      const __m256i hv = _mm256_set1_epi32(1 << s);
      perm[s] = _mm256_xor_si256(lane, hv);
      const __m256i neg = _mm256_cmpeq_epi32(_mm256_and_si256(lane, hv), hv);
      sgn[s] = _mm256_blendv_ps(_mm256_set1_ps(1.0f), _mm256_set1_ps(-1.0f),
                                _mm256_castsi256_ps(neg));
    }
    for (int i = 0; i < b; i += 8) {
      __m256 v = _mm256_loadu_ps(x + i);
      for (int s = 0; s < 3; ++s) {
        const __m256 p = _mm256_permutevar8x32_ps(v, perm[s]);
        v = _mm256_fmadd_ps(v, sgn[s], p);
      }
      _mm256_storeu_ps(x + i, v);
    }
    h = 8;
  }
#endif
  for (; h < b; h *= 2) fwht_stage(x, b, h);
}

// x ← T x (transpose = false) or T^T x (true). tmp: n floats, used only when a > 1.
inline void hadamard_apply(const transform::HadamardPlan& plan, bool transpose, float* x,
                           float* tmp) {
  const int a = plan.a, b = plan.b;
  for (int i = 0; i < a; ++i) fwht(x + static_cast<size_t>(i) * b, b);
  const float norm = 1.0f / std::sqrt(static_cast<float>(b));
  if (a == 1) {
    for (int j = 0; j < b; ++j) x[j] *= norm;
    return;
  }
  // out row i = Σ_j Q[i][j] · X row j   (Q^T for the transpose), then the 1/sqrt(b) norm.
  const float* q = plan.q.data();
  for (int i = 0; i < a; ++i) {
    float* __restrict out = tmp + static_cast<size_t>(i) * b;
    for (int j = 0; j < b; ++j) out[j] = 0.0f;
    for (int k = 0; k < a; ++k) {
      const float c = (transpose ? q[static_cast<size_t>(k) * a + i]
                                 : q[static_cast<size_t>(i) * a + k]) * norm;
      const float* __restrict row = x + static_cast<size_t>(k) * b;
      for (int j = 0; j < b; ++j) out[j] += c * row[j];
    }
  }
  std::memcpy(x, tmp, sizeof(float) * static_cast<size_t>(plan.n));
}

}  // namespace
}  // namespace glq::cpu::detail
