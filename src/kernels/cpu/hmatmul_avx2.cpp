// AVX2 + FMA + F16C kernel of hmatmul: 16-bit weights widened to float32 in registers (vcvtph2ps
// for IEEE half, a 16-bit shift for bfloat16) and multiplied with fp32 FMAs.
//
// Register block: 4 weight rows × up to 2 batch rows (8 accumulators of 8 lanes, 4 converted
// weight vectors, one activation vector: 13 of the 16 ymm registers). Columns past the last
// multiple of 8 are added in scalar code after the reduction.
#include <immintrin.h>

#include <algorithm>

#include "glq/format/half.hpp"
#include "kernels/cpu/kernel_common.hpp"

namespace glq::cpu::detail {

namespace {

constexpr int kRows = 4;
constexpr int kBatchTile = 2;

template <bool BF16>
inline __m256 widen(__m128i h) {
  if constexpr (BF16)
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  else
    return _mm256_cvtph_ps(h);
}

template <bool BF16>
inline float widen1(uint16_t h) {
  if constexpr (BF16)
    return format::bf16_to_f32(h);
  else
    return format::f16_to_f32(h);
}

// Σ of each of four vectors, as one __m128 (a, b, c, d).
inline __m128 sum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b);  // a01 a23 b01 b23 | a45 a67 b45 b67
  const __m256 cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);  // a0123 b0123 c0123 d0123 | a4567 ...
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

inline float sum1(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

template <bool BF16, int R, int B>
void block(const HalfArgs& a, int r, int b0) {
  const int cols = a.cols;
  const uint16_t* w[R];
  for (int i = 0; i < R; ++i) w[i] = a.w + static_cast<int64_t>(r + i) * cols;
  const float* x[B];
  for (int j = 0; j < B; ++j) x[j] = a.x + static_cast<int64_t>(b0 + j) * cols;
  __m256 acc[R][B];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < B; ++j) acc[i][j] = _mm256_setzero_ps();
  const int main = cols / 8 * 8;
  for (int c = 0; c < main; c += 8) {
    __m256 wv[R];
    for (int i = 0; i < R; ++i) wv[i] = widen<BF16>(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[i] + c)));
    for (int j = 0; j < B; ++j) {
      const __m256 xv = _mm256_loadu_ps(x[j] + c);
      for (int i = 0; i < R; ++i) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
    }
  }
  for (int j = 0; j < B; ++j) {
    float* y = a.y + static_cast<int64_t>(b0 + j) * a.rows + r;
    float out[R];
    if constexpr (R == 4)
      _mm_storeu_ps(out, sum4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]));
    else
      for (int i = 0; i < R; ++i) out[i] = sum1(acc[i][j]);
    for (int i = 0; i < R; ++i) {
      float t = 0.0f;
      for (int c = main; c < cols; ++c) t += widen1<BF16>(w[i][c]) * x[j][c];
      y[i] = out[i] + t;
    }
  }
}

template <bool BF16, int R>
void rows_block(const HalfArgs& a, int r) {
  int b0 = 0;
  for (; b0 + kBatchTile <= a.batch; b0 += kBatchTile) block<BF16, R, kBatchTile>(a, r, b0);
  if (b0 < a.batch) block<BF16, R, 1>(a, r, b0);
}

template <bool BF16>
void run(const HalfArgs& a, int r0, int r1) {
  int r = r0;
  for (; r + kRows <= r1; r += kRows) rows_block<BF16, kRows>(a, r);
  for (; r < r1; ++r) rows_block<BF16, 1>(a, r);
}

}  // namespace

void hgemm_avx2(const HalfArgs& a, int r0, int r1) {
  if (a.bf16)
    run<true>(a, r0, r1);
  else
    run<false>(a, r0, r1);
}

}  // namespace glq::cpu::detail
