// AVX2 + FMA float-tile kernel of qmatmul for large batches (the AVX2 counterpart of
// qgemm_avx512.cpp; see there and docs/cpu-kernels.md for why a float tile beats the integer
// model once a weight serves many batch rows).
//
// How. A tile of 32 rows × 128 columns is decoded once into float32 (wt[column][32 rows], 16 KiB,
// L1) with the stage scales folded in, w = Σ_s scale_s · c_s, and a register-blocked micro-kernel
// runs every batch tile over it: per column two weight vectors (16 rows) × one broadcast
// activation per batch row, 2 × 6 accumulators (12 of the 16 ymm registers), 12 FMAs per 8 loads.
// Measured on Zen 4 (1024 × 14336, one thread) against the AVX2 integer kernel: 4 bpw batch 12
// 16.6 / 15.5 ms, 16: 18.9 / 20.7, 64: 46 / 85; 3 bpw batch 8: 11.6 / 9.9, 12: 13.0 / 14.5 —
// so the switch (qmatmul.cpp) is at batch 10 for 3 bpw and 14 for 4 bpw.
//
// Decoding needs no transpose: 8 rows of one group are one ymm of codes (a dword lane per row),
// looked up and merged in the nibble form of kernel_common.hpp (one vpgatherdd of the 1 KiB
// table, three vpermd on 3-bit slices of the sign byte), after which nibble m of lane i is
// coordinate m of row i, so each coordinate is a shift, a mask, a conversion and one FMA per
// stage away from the 8 floats of one column: w = Σ_s n_s · scale_s / 2 − bias_s · scale_s / 4.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/kernel_common.hpp"

namespace glq::cpu::detail {

namespace {

constexpr int kTileCols = 128;                // columns per decoded tile
constexpr int kTileGroups = kTileCols / 8;    // 16 groups
constexpr int kRowBlock = 8;                  // rows per decode (one dword lane each)
constexpr int kMicroLanes = 6;                // batch rows per micro-kernel pass

// wt (columns [8·g0, 8·g1), 32 rows; g1 − g0 ≤ 16) ← the float weights of rows [r, r + nrows).
// Rows past nrows decode as code 0 (their outputs are never stored).
void decode_tile(const FloatTileArgs& a, int r, int nrows, int g0, int g1, float* wt) {
  const KernelTables& T = kernel_tables();
  const __m256i sign_lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(T.nsign_lo));
  const __m256i sign_mid = _mm256_load_si256(reinterpret_cast<const __m256i*>(T.nsign_mid));
  const __m256i sign_hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(T.nsign_hi));
  const __m256i byte_mask = _mm256_set1_epi32(0xFF), nibble = _mm256_set1_epi32(0xF);
  const int ng = g1 - g0;
  for (int rb = 0; rb < kFloatTileRows; rb += kRowBlock) {
    const int nr = std::clamp(nrows - rb, 0, kRowBlock);
    // Per stage: codes[j][i] = code of row r + rb + i, group g0 + j (0 past the matrix).
    alignas(32) uint32_t codes[kMaxStages][kTileGroups][kRowBlock];
    __m256 mul[kMaxStages];
    __m256 bias = _mm256_setzero_ps();
    for (int s = 0; s < a.n_stages; ++s) {
      const StageView& st = a.stages[s];
      const bool e8p = st.codebook == codec::Codebook::E8P16;
      std::memset(codes[s], 0, sizeof(codes[s]));
      for (int i = 0; i < nr; ++i) {
        const int64_t at = static_cast<int64_t>(r + rb + i) * a.groups + g0;
        if (e8p) {
          uint16_t c[kTileGroups];
          std::memcpy(c, st.codes + 2 * at, sizeof(uint16_t) * ng);
          for (int j = 0; j < ng; ++j) codes[s][j][i] = c[j];
        } else {
          for (int j = 0; j < ng; ++j) codes[s][j][i] = st.codes[at + j];
        }
      }
      alignas(32) float scale[kRowBlock] = {};
      for (int i = 0; i < nr; ++i) scale[i] = a.scales[s][r + rb + i];
      const __m256 sc = _mm256_load_ps(scale);
      mul[s] = _mm256_mul_ps(sc, _mm256_set1_ps(0.5f));
      const float b = -0.25f * static_cast<float>(e8p ? kNibbleBiasE8P : kNibbleBiasE8R8);
      bias = _mm256_fmadd_ps(sc, _mm256_set1_ps(b), bias);
    }
    for (int j = 0; j < ng; ++j) {
      __m256i w[kMaxStages];
      for (int s = 0; s < a.n_stages; ++s) {
        const __m256i c = _mm256_load_si256(reinterpret_cast<const __m256i*>(codes[s][j]));
        if (a.stages[s].codebook == codec::Codebook::E8P16) {
          const __m256i e = _mm256_i32gather_epi32(reinterpret_cast<const int*>(T.e8p_nentry),
                                                   _mm256_and_si256(c, byte_mask), 4);
          const __m256i sg = _mm256_srli_epi32(c, 8);
          const __m256i t0 = _mm256_permutevar8x32_epi32(sign_lo, sg);
          const __m256i t1 = _mm256_permutevar8x32_epi32(sign_mid, _mm256_srli_epi32(sg, 3));
          const __m256i t2 = _mm256_permutevar8x32_epi32(sign_hi, _mm256_srli_epi32(sg, 6));
          w[s] = _mm256_xor_si256(_mm256_xor_si256(e, t0), _mm256_xor_si256(t1, t2));
        } else {
          w[s] = _mm256_i32gather_epi32(reinterpret_cast<const int*>(T.e8r8_nentry), c, 4);
        }
      }
      float* out = wt + static_cast<int64_t>(8 * j) * kFloatTileRows + rb;
      for (int m = 0; m < 8; ++m) {
        __m256 v = bias;
        for (int s = 0; s < a.n_stages; ++s) {
          const __m256i n = _mm256_and_si256(_mm256_srli_epi32(w[s], 4 * m), nibble);
          v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(n), mul[s], v);
        }
        _mm256_store_ps(out + m * kFloatTileRows, v);
      }
    }
  }
}

// y[b][0 .. 16) (+)= Σ_c wt[c][0 .. 16) · x[b][c] over n columns for B ≤ 6 batch rows (lanes of
// the panel); rows beyond the tile are masked off by m0 (rows 0-7) and m1 (rows 8-15).
// kFull: all 16 rows present, plain loads and stores (vmaskmov stores are slow on AMD cores).
template <int B, bool kFull>
void micro(const float* wt, int n, const float* xp, float* y, int64_t rows, bool first, __m256i m0, __m256i m1) {
  __m256 acc0[B], acc1[B];
#pragma GCC unroll 6
  for (int b = 0; b < B; ++b) {
    if (first) {
      acc0[b] = _mm256_setzero_ps();
      acc1[b] = _mm256_setzero_ps();
    } else if (kFull) {
      acc0[b] = _mm256_loadu_ps(y + b * rows);
      acc1[b] = _mm256_loadu_ps(y + b * rows + 8);
    } else {
      acc0[b] = _mm256_maskload_ps(y + b * rows, m0);
      acc1[b] = _mm256_maskload_ps(y + b * rows + 8, m1);
    }
  }
  for (int c = 0; c < n; ++c) {
    const __m256 w0 = _mm256_load_ps(wt + c * kFloatTileRows);
    const __m256 w1 = _mm256_load_ps(wt + c * kFloatTileRows + 8);
    const float* x = xp + c * kPanelLanes;
  #pragma GCC unroll 6
  for (int b = 0; b < B; ++b) {
      const __m256 xb = _mm256_broadcast_ss(x + b);
      acc0[b] = _mm256_fmadd_ps(w0, xb, acc0[b]);
      acc1[b] = _mm256_fmadd_ps(w1, xb, acc1[b]);
    }
  }
#pragma GCC unroll 6
  for (int b = 0; b < B; ++b) {
    if (kFull) {
      _mm256_storeu_ps(y + b * rows, acc0[b]);
      _mm256_storeu_ps(y + b * rows + 8, acc1[b]);
    } else {
      _mm256_maskstore_ps(y + b * rows, m0, acc0[b]);
      _mm256_maskstore_ps(y + b * rows + 8, m1, acc1[b]);
    }
  }
}

template <bool kFull>
void micro_rows(int nb, const float* wt, int n, const float* xp, float* y, int64_t rows, bool first, __m256i m0,
                __m256i m1) {
  switch (nb) {
    case 1: micro<1, kFull>(wt, n, xp, y, rows, first, m0, m1); break;
    case 2: micro<2, kFull>(wt, n, xp, y, rows, first, m0, m1); break;
    case 3: micro<3, kFull>(wt, n, xp, y, rows, first, m0, m1); break;
    case 4: micro<4, kFull>(wt, n, xp, y, rows, first, m0, m1); break;
    case 5: micro<5, kFull>(wt, n, xp, y, rows, first, m0, m1); break;
    default: micro<6, kFull>(wt, n, xp, y, rows, first, m0, m1); break;
  }
}

void micro_any(int nb, const float* wt, int n, const float* xp, float* y, int64_t rows, bool first, bool full,
               __m256i m0, __m256i m1) {
  if (full)
    micro_rows<true>(nb, wt, n, xp, y, rows, first, m0, m1);
  else
    micro_rows<false>(nb, wt, n, xp, y, rows, first, m0, m1);
}

// Lane mask of the rows [first, first + 8) that are below nrows.
inline __m256i row_mask(int first, int nrows) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(nrows - first), lane);
}

}  // namespace

void gemm_tiles_avx2(const FloatTileArgs& a, int r0, int r1) {
  alignas(32) static thread_local float wt[kTileCols * kFloatTileRows];  // per thread, 16 KiB
  const int tiles = panel_tiles(a.batch);
  for (int r = r0; r < r1; r += kFloatTileRows) {
    const int nrows = std::min(kFloatTileRows, r1 - r);
    for (int g0 = 0; g0 < a.groups; g0 += kTileGroups) {
      const int g1 = std::min(a.groups, g0 + kTileGroups);
      decode_tile(a, r, nrows, g0, g1, wt);
      const int n = (g1 - g0) * 8;
      for (int t = 0; t < tiles; ++t) {
        const int b0 = panel_tile_start(t, a.batch), b1 = panel_tile_start(t + 1, a.batch);
        const float* xp = a.panel + (static_cast<int64_t>(t) * a.cols + g0 * 8) * kPanelLanes;
        for (int h = 0; h * 16 < nrows; ++h)  // rows 16h .. 16h + 15 of the tile
          for (int l = 0; b0 + l < b1; l += kMicroLanes) {
            const int nb = std::min(kMicroLanes, b1 - b0 - l);
            micro_any(nb, wt + 16 * h, n, xp + l, a.y + static_cast<int64_t>(b0 + l) * a.rows + r + 16 * h, a.rows,
                      g0 == 0, nrows >= 16 * (h + 1), row_mask(16 * h, nrows), row_mask(16 * h + 8, nrows));
          }
      }
    }
  }
}

}  // namespace glq::cpu::detail
