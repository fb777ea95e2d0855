// AVX-512 kernel of hmatmul: 16-bit weights (IEEE half via vcvtph2ps, bfloat16 via a 16-bit
// shift) widened to float32 in registers and multiplied with fp32 FMAs.
//
// Register block: 4 weight rows × up to 6 batch rows, 24 accumulators of 16 lanes; each step of
// 16 columns loads 4 weight vectors (converted once) and 6 activation vectors for 24 FMAs, so the
// converted weights serve the whole batch tile. The 4 row sums of one batch row come out of a
// transposing add tree as one 128-bit store (y is (batch, rows): 4 consecutive outputs). At batch
// 1 the kernel streams the weights once (memory-bound); a software prefetch one row block ahead
// keeps the next block's lines in flight.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/kernel_common.hpp"

namespace glq::cpu::detail {

namespace {

constexpr int kRows = 4;       // weight rows per block
constexpr int kBatchTile = 6;  // batch rows per block

template <bool BF16>
inline __m512 widen(__m256i h) {
  if constexpr (BF16)
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  else
    return _mm512_cvtph_ps(h);
}

// Σ of each of four vectors, as one __m128 (a, b, c, d).
inline __m128 sum4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  const __m512 u = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))),
                                 _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))));
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(u), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(u), 1)));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// y[b0 + j][r .. r + R) for j < B.
template <bool BF16, int R, int B>
void block(const HalfArgs& a, int r, int b0, bool prefetch) {
  const int cols = a.cols;
  const uint16_t* w[R];
  for (int i = 0; i < R; ++i) w[i] = a.w + static_cast<int64_t>(r + i) * cols;
  const float* x[B];
  for (int j = 0; j < B; ++j) x[j] = a.x + static_cast<int64_t>(b0 + j) * cols;
  // Next row block's bytes: its first row starts R rows further on.
  const int64_t ahead = 8 * static_cast<int64_t>(R) * cols;
  __m512 acc[R][B];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < B; ++j) acc[i][j] = _mm512_setzero_ps();
  int c = 0;
  for (; c + 16 <= cols; c += 16) {
    __m512 wv[R];
    for (int i = 0; i < R; ++i) {
      if (prefetch && (c & 31) == 0) _mm_prefetch(reinterpret_cast<const char*>(w[i] + c + ahead), _MM_HINT_T0);
      wv[i] = widen<BF16>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[i] + c)));
    }
    for (int j = 0; j < B; ++j) {
      const __m512 xv = _mm512_loadu_ps(x[j] + c);
      for (int i = 0; i < R; ++i) acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
    }
  }
  if (c < cols) {
    const __mmask16 m = static_cast<__mmask16>((1u << (cols - c)) - 1);
    __m512 wv[R];
    for (int i = 0; i < R; ++i) wv[i] = widen<BF16>(_mm256_maskz_loadu_epi16(m, w[i] + c));
    for (int j = 0; j < B; ++j) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, x[j] + c);
      for (int i = 0; i < R; ++i) acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
    }
  }
  for (int j = 0; j < B; ++j) {
    float* y = a.y + static_cast<int64_t>(b0 + j) * a.rows + r;
    if constexpr (R % 4 == 0)
      for (int i = 0; i < R; i += 4) _mm_storeu_ps(y + i, sum4(acc[i][j], acc[i + 1][j], acc[i + 2][j], acc[i + 3][j]));
    else
      for (int i = 0; i < R; ++i) y[i] = _mm512_reduce_add_ps(acc[i][j]);
  }
}

template <bool BF16, int R>
void rows_block(const HalfArgs& a, int r, bool prefetch) {
  for (int b0 = 0; b0 < a.batch; b0 += kBatchTile) {
    switch (std::min(kBatchTile, a.batch - b0)) {
      case 1: block<BF16, R, 1>(a, r, b0, prefetch); break;
      case 2: block<BF16, R, 2>(a, r, b0, prefetch); break;
      case 3: block<BF16, R, 3>(a, r, b0, prefetch); break;
      case 4: block<BF16, R, 4>(a, r, b0, prefetch); break;
      case 5: block<BF16, R, 5>(a, r, b0, prefetch); break;
      default: block<BF16, R, 6>(a, r, b0, prefetch); break;
    }
  }
}

template <bool BF16>
void run(const HalfArgs& a, int r0, int r1) {
  int r = r0;
  // Prefetching helps the single pass over the weights at batch 1; with several batch tiles the
  // block's rows are reused from cache.
  const bool prefetch = a.batch <= kBatchTile;
  if (a.batch == 1)
    for (; r + 2 * kRows <= r1; r += 2 * kRows) block<BF16, 2 * kRows, 1>(a, r, 0, true);
  for (; r + kRows <= r1; r += kRows) rows_block<BF16, kRows>(a, r, prefetch);
  for (; r < r1; ++r) rows_block<BF16, 1>(a, r, false);
}

}  // namespace

void hgemm_avx512(const HalfArgs& a, int r0, int r1) {
  if (a.bf16)
    run<true>(a, r0, r1);
  else
    run<false>(a, r0, r1);
}

}  // namespace glq::cpu::detail
