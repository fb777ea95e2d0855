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
#include <limits>
#include <string>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "glq/error.hpp"
#include "glq/transform/hadamard.hpp"
#include "kernels/cpu/kernel_common.hpp"

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
  // out row i = Σ_k Q[i][k] · X row k   (Q^T for the transpose), then the 1/sqrt(b) norm.
  // Tiles of kTile columns: the a accumulators of one tile live in registers (or L1) and each
  // X element is loaded once per output row, never the output.
  const float* q = plan.q.data();
  const size_t si = transpose ? 1 : a, sk = transpose ? a : 1;  // coef(i, k) = q[i·si + k·sk]
  constexpr int kTile = 16;
  int j0 = 0;
  for (; j0 + kTile <= b; j0 += kTile) {
#if defined(__AVX512F__)
    // Four output rows at a time: four independent FMA chains share each load of X.
    const __m512 nv = _mm512_set1_ps(norm);
    int i = 0;
    for (; i + 4 <= a; i += 4) {
      const float* qi = q + i * si;
      __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
      for (int k = 0; k < a; ++k) {
        const __m512 xv = _mm512_loadu_ps(x + static_cast<size_t>(k) * b + j0);
        const float* c = qi + k * sk;
        acc0 = _mm512_fmadd_ps(_mm512_set1_ps(c[0]), xv, acc0);
        acc1 = _mm512_fmadd_ps(_mm512_set1_ps(c[si]), xv, acc1);
        acc2 = _mm512_fmadd_ps(_mm512_set1_ps(c[2 * si]), xv, acc2);
        acc3 = _mm512_fmadd_ps(_mm512_set1_ps(c[3 * si]), xv, acc3);
      }
      float* out = tmp + static_cast<size_t>(i) * b + j0;
      _mm512_storeu_ps(out, _mm512_mul_ps(acc0, nv));
      _mm512_storeu_ps(out + b, _mm512_mul_ps(acc1, nv));
      _mm512_storeu_ps(out + 2 * static_cast<size_t>(b), _mm512_mul_ps(acc2, nv));
      _mm512_storeu_ps(out + 3 * static_cast<size_t>(b), _mm512_mul_ps(acc3, nv));
    }
    for (; i < a; ++i) {
      const float* qi = q + i * si;
      __m512 acc = _mm512_setzero_ps();
      for (int k = 0; k < a; ++k)
        acc = _mm512_fmadd_ps(_mm512_set1_ps(qi[k * sk]),
                              _mm512_loadu_ps(x + static_cast<size_t>(k) * b + j0), acc);
      _mm512_storeu_ps(tmp + static_cast<size_t>(i) * b + j0, _mm512_mul_ps(acc, nv));
    }
#elif defined(__AVX2__)
    const __m256 nv = _mm256_set1_ps(norm);
    int i = 0;
    for (; i + 2 <= a; i += 2) {
      const float* qi = q + i * si;
      __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00;
      for (int k = 0; k < a; ++k) {
        const float* row = x + static_cast<size_t>(k) * b + j0;
        const __m256 x0 = _mm256_loadu_ps(row), x1 = _mm256_loadu_ps(row + 8);
        const __m256 c0 = _mm256_set1_ps(qi[k * sk]), c1 = _mm256_set1_ps(qi[k * sk + si]);
        a00 = _mm256_fmadd_ps(c0, x0, a00);
        a01 = _mm256_fmadd_ps(c0, x1, a01);
        a10 = _mm256_fmadd_ps(c1, x0, a10);
        a11 = _mm256_fmadd_ps(c1, x1, a11);
      }
      float* out = tmp + static_cast<size_t>(i) * b + j0;
      _mm256_storeu_ps(out, _mm256_mul_ps(a00, nv));
      _mm256_storeu_ps(out + 8, _mm256_mul_ps(a01, nv));
      _mm256_storeu_ps(out + b, _mm256_mul_ps(a10, nv));
      _mm256_storeu_ps(out + b + 8, _mm256_mul_ps(a11, nv));
    }
    for (; i < a; ++i) {
      const float* qi = q + i * si;
      __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
      for (int k = 0; k < a; ++k) {
        const __m256 c = _mm256_set1_ps(qi[k * sk]);
        const float* row = x + static_cast<size_t>(k) * b + j0;
        acc0 = _mm256_fmadd_ps(c, _mm256_loadu_ps(row), acc0);
        acc1 = _mm256_fmadd_ps(c, _mm256_loadu_ps(row + 8), acc1);
      }
      _mm256_storeu_ps(tmp + static_cast<size_t>(i) * b + j0, _mm256_mul_ps(acc0, nv));
      _mm256_storeu_ps(tmp + static_cast<size_t>(i) * b + j0 + 8, _mm256_mul_ps(acc1, nv));
    }
#else
    for (int i = 0; i < a; ++i) {
      float acc[kTile] = {};
      for (int k = 0; k < a; ++k) {
        const float c = q[i * si + k * sk];
        const float* row = x + static_cast<size_t>(k) * b + j0;
        for (int t = 0; t < kTile; ++t) acc[t] += c * row[t];
      }
      for (int t = 0; t < kTile; ++t) tmp[static_cast<size_t>(i) * b + j0 + t] = acc[t] * norm;
    }
#endif
  }
  for (; j0 < b; ++j0) {  // b < 16 (n = a·b with a large mixing order): plain columns
    for (int i = 0; i < a; ++i) {
      float acc = 0.0f;
      for (int k = 0; k < a; ++k) acc += q[i * si + k * sk] * x[static_cast<size_t>(k) * b + j0];
      tmp[static_cast<size_t>(i) * b + j0] = acc * norm;
    }
  }
  std::memcpy(x, tmp, sizeof(float) * static_cast<size_t>(plan.n));
}

// Sign, transform and the activation scale of one input row (the ISA-independent part of
// prepare_input_*). Returns inv = kActMax / max|xt|, or 0 for a zero row.
inline float transform_and_scale(const InputRow& in) {
  float* xt = in.xt;
  for (int i = 0; i < in.cols; ++i) xt[i] = in.x[i] * in.sign_in[i];
  if (in.plan) hadamard_apply(*in.plan, false, xt, in.tmp);
  float maxabs = 0.0f;
  bool finite = true;
  for (int i = 0; i < in.cols; ++i) {
    const float a = std::fabs(xt[i]);
    finite &= a <= std::numeric_limits<float>::max();  // false for NaN and Inf
    maxabs = a > maxabs ? a : maxabs;
  }
  if (!finite) throw_numerical("qmatmul: input row of " + std::to_string(in.cols) + " values contains NaN or Inf");
  *in.scale = static_cast<double>(maxabs) / kActMax;
  return maxabs > 0.0f ? static_cast<float>(kActMax) / maxabs : 0.0f;
}

}  // namespace
}  // namespace glq::cpu::detail
