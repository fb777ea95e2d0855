// AVX-512 float-tile kernel of qmatmul for large batches (prompt processing).
//
// Why. The integer kernel (kernel_avx512.cpp) multiplies every decoded weight byte with two
// activation planes (16-bit activations as two s8 halves), so a batch of 64 costs 2 vpdpbusd per
// 64 weights, per stage and batch row; at 4 bpw (two stages) that is slower than OpenBLAS's fp32
// sgemm on the dense matrix. Once a weight is used by many batch rows, decoding it is cheap
// against its uses, and the fastest use is a float32 FMA: 16 products per instruction with the
// activations unrounded and every stage folded into one weight.
//
// How. A tile of 32 rows × 128 columns is decoded once into float32 (wt[column][32 rows], 16 KiB:
// it stays in L1) with the stage scales applied, w = Σ_s scale_s · c_s, and then a register-blocked
// micro-kernel runs every batch tile over it: for each column, two weight vectors (16 rows each)
// times one broadcast activation per batch row, 2 × up to 12 accumulators, y += over the
// column blocks (the accumulators are loaded from and stored to y, which stays in L1/L2).
//
// Decoding transposes for free: 16 rows × 4 groups of codes are loaded as one row's 4 codes per
// 64-bit lane (a masked load per row and a 64-bit transpose), and the byte selector that splits
// codes into pattern and sign bytes also orders them (group, row), so after the byte-plane decode of kernel_avx512.cpp every 128-bit quarter of
// a merged-nibble register holds one column's 16 rows. One vpermb per nibble half turns 64
// nibbles into signed quarter-unit bytes; each column's 16 bytes are widened to float and
// multiplied by the rows' scales (one FMA per stage).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/kernel_common.hpp"

namespace glq::cpu::detail {

namespace {

constexpr int kTileCols = 128;            // columns per decoded tile (16 groups)
constexpr int kHalfRows = 16;             // rows per decode (one float vector)
constexpr int kGroupsPerDecode = 4;       // groups per decode: 16 rows × 4 groups = 64 codes
constexpr int kTileGroups = kTileCols / 8;

struct alignas(64) Tables {
  uint8_t sel_lo[64];  // lane 16j + i ← byte 8i + 2j of (c0 ‖ c1): pattern byte of row i, group j
  uint8_t sel_hi[64];  // its sign/shift byte
  uint8_t sel_r8[64];  // E8R8: lane 16j + i ← byte 4i + j of the gathered dwords
  int8_t e8p_quarter[64];   // merged E8P16 nibble → value in quarter lattice units (16 repeated 4×)
  int8_t e8r8_quarter[64];  // E8R8 nibble → value in quarter lattice units
};

const Tables& tables() {
  static const Tables t = [] {
    Tables s{};
    const KernelTables& k = kernel_tables();
    for (int p = 0; p < 64; ++p) {
      const int i = p % 16, j = p / 16;
      s.sel_lo[p] = static_cast<uint8_t>(8 * i + 2 * j);
      s.sel_hi[p] = static_cast<uint8_t>(8 * i + 2 * j + 1);
      s.sel_r8[p] = static_cast<uint8_t>(4 * i + j);
    }
    for (int n = 0; n < 64; ++n) {
      s.e8p_quarter[n] = static_cast<int8_t>(k.e8p_lut[n] - kWeightOffset);
      s.e8r8_quarter[n] = static_cast<int8_t>(k.e8r8_lut[n] - kWeightOffset);
    }
    return s;
  }();
  return t;
}

// The codes of 16 rows × one tile's groups [g0, g0 + n), n ≤ 16, of one stage, regrouped so that
// block j (groups g0 + 4j .. + 3) is c[j][0] ‖ c[j][1]: E8P16, 64-bit lane i of the pair = row i's
// four codes; E8R8 (c[j][0] only), 32-bit lane i = row i's four codes. Rows past `nrows` and
// groups past n read as zero (masked loads: nothing past the codes is touched). One masked load
// per row, then a 64-bit (32-bit) transpose with two-source permutes: cheaper than gathers.
template <codec::Codebook CB>
void load_blocks(const uint8_t* codes, int groups, int row0, int nrows, int g0, int n, __m512i c[4][2]) {
  if constexpr (CB == codec::Codebook::E8P16) {
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
    const uint16_t* base = reinterpret_cast<const uint16_t*>(codes) + static_cast<int64_t>(row0) * groups + g0;
    auto row = [&](int i) {
      const uint16_t* at = base + static_cast<int64_t>(i) * groups;
      if (n == 16 && i < nrows) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at));
      return _mm256_maskz_loadu_epi16(i < nrows ? m : __mmask16{0}, at);
    };
    __m512i z[8];  // z[p] = row 2p ‖ row 2p + 1 (four 64-bit lanes each)
    for (int p = 0; p < 8; ++p) z[p] = _mm512_inserti64x4(_mm512_castsi256_si512(row(2 * p)), row(2 * p + 1), 1);
    const __m512i i01 = _mm512_setr_epi64(0, 4, 8, 12, 1, 5, 9, 13);
    const __m512i i23 = _mm512_setr_epi64(2, 6, 10, 14, 3, 7, 11, 15);
    for (int h = 0; h < 2; ++h) {  // rows 8h .. 8h + 7
      const __m512i* q = z + 4 * h;
      const __m512i t01 = _mm512_permutex2var_epi64(q[0], i01, q[1]), u01 = _mm512_permutex2var_epi64(q[2], i01, q[3]);
      const __m512i t23 = _mm512_permutex2var_epi64(q[0], i23, q[1]), u23 = _mm512_permutex2var_epi64(q[2], i23, q[3]);
      c[0][h] = _mm512_shuffle_i64x2(t01, u01, _MM_SHUFFLE(1, 0, 1, 0));
      c[1][h] = _mm512_shuffle_i64x2(t01, u01, _MM_SHUFFLE(3, 2, 3, 2));
      c[2][h] = _mm512_shuffle_i64x2(t23, u23, _MM_SHUFFLE(1, 0, 1, 0));
      c[3][h] = _mm512_shuffle_i64x2(t23, u23, _MM_SHUFFLE(3, 2, 3, 2));
    }
  } else {
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
    const uint8_t* base = codes + static_cast<int64_t>(row0) * groups + g0;
    auto row = [&](int i) {
      const uint8_t* at = base + static_cast<int64_t>(i) * groups;
      if (n == 16 && i < nrows) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(at));
      return _mm_maskz_loadu_epi8(i < nrows ? m : __mmask16{0}, at);
    };
    __m512i z[4];  // z[p] = rows 4p .. 4p + 3 (four 32-bit lanes each)
    for (int p = 0; p < 4; ++p) {
      __m512i v = _mm512_castsi128_si512(row(4 * p));
      v = _mm512_inserti32x4(v, row(4 * p + 1), 1);
      v = _mm512_inserti32x4(v, row(4 * p + 2), 2);
      z[p] = _mm512_inserti32x4(v, row(4 * p + 3), 3);
    }
    const __m512i i01 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
    const __m512i i23 = _mm512_setr_epi32(2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31);
    const __m512i t01 = _mm512_permutex2var_epi32(z[0], i01, z[1]), u01 = _mm512_permutex2var_epi32(z[2], i01, z[3]);
    const __m512i t23 = _mm512_permutex2var_epi32(z[0], i23, z[1]), u23 = _mm512_permutex2var_epi32(z[2], i23, z[3]);
    c[0][0] = _mm512_shuffle_i64x2(t01, u01, _MM_SHUFFLE(1, 0, 1, 0));
    c[1][0] = _mm512_shuffle_i64x2(t01, u01, _MM_SHUFFLE(3, 2, 3, 2));
    c[2][0] = _mm512_shuffle_i64x2(t23, u23, _MM_SHUFFLE(1, 0, 1, 0));
    c[3][0] = _mm512_shuffle_i64x2(t23, u23, _MM_SHUFFLE(3, 2, 3, 2));
  }
}

// Byte k of the merged entries (nibbles 2k and 2k + 1 of each code) of one block (c from
// load_blocks): lane 16j + i is row i, group j of the block.
template <codec::Codebook CB>
void decode_block(const __m512i c[2], __m512i out[4]) {
  constexpr bool kE8P = CB == codec::Codebook::E8P16;
  const KernelTables& T = kernel_tables();
  const Tables& S = tables();
  const uint8_t(*planes)[256] = kE8P ? T.e8p_plane : T.e8r8_plane;
  __m512i idx, sgn = _mm512_setzero_si512();
  if constexpr (kE8P) {
    idx = _mm512_permutex2var_epi8(c[0], _mm512_load_si512(S.sel_lo), c[1]);
    sgn = _mm512_permutex2var_epi8(c[0], _mm512_load_si512(S.sel_hi), c[1]);
  } else {
    idx = _mm512_permutexvar_epi8(_mm512_load_si512(S.sel_r8), c[0]);
  }
  const __mmask64 top = _mm512_movepi8_mask(idx);
  for (int k = 0; k < 4; ++k) {
    const __m512i r1 = _mm512_permutex2var_epi8(_mm512_load_si512(planes[k]), idx, _mm512_load_si512(planes[k] + 64));
    const __m512i r2 =
        _mm512_permutex2var_epi8(_mm512_load_si512(planes[k] + 128), idx, _mm512_load_si512(planes[k] + 192));
    __m512i e = _mm512_mask_blend_epi8(top, r1, r2);
    if constexpr (kE8P)
      e = _mm512_xor_si512(
          e, _mm512_gf2p8affine_epi64_epi8(sgn, _mm512_set1_epi64(static_cast<long long>(T.e8p_gf[k])), 0));
    out[k] = e;
  }
}

// The 16 rows × 4 groups × 8 coordinates of one decode as signed bytes in quarter lattice units:
// q[m][16j + i] is coordinate m of row i, group j (one vpermb per nibble half of each byte plane).
inline void to_quarter_units(const __m512i merged[4], __m512i lut, int8_t (*q)[64]) {
  for (int k = 0; k < 4; ++k) {
    _mm512_store_si512(q[2 * k], _mm512_permutexvar_epi8(merged[k], lut));
    _mm512_store_si512(q[2 * k + 1], _mm512_permutexvar_epi8(_mm512_srli_epi16(merged[k], 4), lut));
  }
}

// Columns 8(g + j) + m (m = 0..7) of 16 rows for j < ng: Σ_s scale_s/4 · q_s, into wt (stride 32).
inline void emit(const int8_t (*q)[8][64], const __m512* scale, int n_stages, int ng, float* wt) {
  for (int j = 0; j < ng; ++j)
    for (int m = 0; m < 8; ++m) {
      const __m128i* src = reinterpret_cast<const __m128i*>(q[0][m] + 16 * j);
      __m512 w = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128(src))), scale[0]);
      for (int s = 1; s < n_stages; ++s) {
        src = reinterpret_cast<const __m128i*>(q[s][m] + 16 * j);
        w = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128(src))), scale[s], w);
      }
      _mm512_store_ps(wt + (8 * j + m) * kFloatTileRows, w);
    }
}

// wt (columns [g0·8, g1·8), 32 rows; g1 − g0 ≤ 16) ← the float weights of rows [r, r + nrows).
void decode_tile(const FloatTileArgs& a, int r, int nrows, int g0, int g1, float* wt) {
  const Tables& S = tables();
  alignas(64) int8_t q[kMaxStages][8][64];
  for (int h = 0; h * kHalfRows < nrows; ++h) {
    const int row0 = r + h * kHalfRows;
    const int n = std::min(kHalfRows, nrows - h * kHalfRows);
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
    __m512i lut[kMaxStages];
    __m512 scale[kMaxStages];
    __m512i blocks[kMaxStages][4][2];
    for (int s = 0; s < a.n_stages; ++s) {
      const bool e8p = a.stages[s].codebook == codec::Codebook::E8P16;
      lut[s] = _mm512_load_si512(e8p ? S.e8p_quarter : S.e8r8_quarter);
      scale[s] = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, a.scales[s] + row0), _mm512_set1_ps(0.25f));
      if (e8p)
        load_blocks<codec::Codebook::E8P16>(a.stages[s].codes, a.groups, row0, n, g0, g1 - g0, blocks[s]);
      else
        load_blocks<codec::Codebook::E8R8>(a.stages[s].codes, a.groups, row0, n, g0, g1 - g0, blocks[s]);
    }
    for (int j = 0; g0 + kGroupsPerDecode * j < g1; ++j) {
      const int g = g0 + kGroupsPerDecode * j;
      for (int s = 0; s < a.n_stages; ++s) {
        __m512i merged[4];
        if (a.stages[s].codebook == codec::Codebook::E8P16)
          decode_block<codec::Codebook::E8P16>(blocks[s][j], merged);
        else
          decode_block<codec::Codebook::E8R8>(blocks[s][j], merged);
        to_quarter_units(merged, lut[s], q[s]);
      }
      float* out = wt + static_cast<int64_t>(g - g0) * 8 * kFloatTileRows + h * kHalfRows;
      emit(q, scale, a.n_stages, std::min(kGroupsPerDecode, g1 - g), out);
    }
  }
}

// y[b][0 .. 32) (+)= Σ_c wt[c][·] · x[b][c] over `n` columns for B batch rows; rows beyond the
// tile's are masked off (m0: rows 0-15, m1: rows 16-31).
template <int B>
void micro(const float* wt, int n, const float* xp, float* y, int64_t rows, bool first, __mmask16 m0, __mmask16 m1) {
  __m512 acc0[B], acc1[B];
  for (int b = 0; b < B; ++b) {
    if (first) {
      acc0[b] = _mm512_setzero_ps();
      acc1[b] = _mm512_setzero_ps();
    } else {
      acc0[b] = _mm512_maskz_loadu_ps(m0, y + b * rows);
      acc1[b] = _mm512_maskz_loadu_ps(m1, y + b * rows + 16);
    }
  }
  for (int c = 0; c < n; ++c) {
    const __m512 w0 = _mm512_load_ps(wt + c * kFloatTileRows);
    const __m512 w1 = _mm512_load_ps(wt + c * kFloatTileRows + 16);
    const float* x = xp + c * kPanelLanes;
    for (int b = 0; b < B; ++b) {
      const __m512 xb = _mm512_set1_ps(x[b]);
      acc0[b] = _mm512_fmadd_ps(w0, xb, acc0[b]);
      acc1[b] = _mm512_fmadd_ps(w1, xb, acc1[b]);
    }
  }
  for (int b = 0; b < B; ++b) {
    _mm512_mask_storeu_ps(y + b * rows, m0, acc0[b]);
    _mm512_mask_storeu_ps(y + b * rows + 16, m1, acc1[b]);
  }
}

void micro_any(int nb, const float* wt, int n, const float* xp, float* y, int64_t rows, bool first, __mmask16 m0,
               __mmask16 m1) {
  switch (nb) {
    case 1: micro<1>(wt, n, xp, y, rows, first, m0, m1); break;
    case 2: micro<2>(wt, n, xp, y, rows, first, m0, m1); break;
    case 3: micro<3>(wt, n, xp, y, rows, first, m0, m1); break;
    case 4: micro<4>(wt, n, xp, y, rows, first, m0, m1); break;
    case 5: micro<5>(wt, n, xp, y, rows, first, m0, m1); break;
    case 6: micro<6>(wt, n, xp, y, rows, first, m0, m1); break;
    case 7: micro<7>(wt, n, xp, y, rows, first, m0, m1); break;
    case 8: micro<8>(wt, n, xp, y, rows, first, m0, m1); break;
    case 9: micro<9>(wt, n, xp, y, rows, first, m0, m1); break;
    case 10: micro<10>(wt, n, xp, y, rows, first, m0, m1); break;
    case 11: micro<11>(wt, n, xp, y, rows, first, m0, m1); break;
    default: micro<12>(wt, n, xp, y, rows, first, m0, m1); break;
  }
}

}  // namespace

void gemm_tiles_avx512(const FloatTileArgs& a, int r0, int r1) {
  // kPair row tiles share each column block: their decoded weights (2 × 16 KiB) and the batch
  // tile's activations (6 KiB) are reused from L1/L2, and the activation panel streams from
  // memory once per kPair row tiles instead of once per tile.
  constexpr int kPair = 2;
  alignas(64) static thread_local float wt[kPair][kTileCols * kFloatTileRows];  // per thread
  const int tiles = panel_tiles(a.batch);
  for (int r = r0; r < r1; r += kPair * kFloatTileRows) {
    int nrows[kPair];
    __mmask16 m0[kPair], m1[kPair];
    for (int p = 0; p < kPair; ++p) {
      nrows[p] = std::clamp(r1 - r - p * kFloatTileRows, 0, kFloatTileRows);
      m0[p] = static_cast<__mmask16>(nrows[p] >= 16 ? 0xFFFF : (1u << nrows[p]) - 1);
      m1[p] = static_cast<__mmask16>(nrows[p] >= 32 ? 0xFFFF : nrows[p] > 16 ? (1u << (nrows[p] - 16)) - 1 : 0);
    }
    for (int g0 = 0; g0 < a.groups; g0 += kTileGroups) {
      const int g1 = std::min(a.groups, g0 + kTileGroups);
      for (int p = 0; p < kPair; ++p)
        if (nrows[p] > 0) decode_tile(a, r + p * kFloatTileRows, nrows[p], g0, g1, wt[p]);
      const int n = (g1 - g0) * 8;
      for (int t = 0; t < tiles; ++t) {
        const int b0 = panel_tile_start(t, a.batch), b1 = panel_tile_start(t + 1, a.batch);
        const float* xp = a.panel + (static_cast<int64_t>(t) * a.cols + g0 * 8) * kPanelLanes;
        for (int p = 0; p < kPair; ++p)
          if (nrows[p] > 0)
            micro_any(b1 - b0, wt[p], n, xp, a.y + static_cast<int64_t>(b0) * a.rows + r + p * kFloatTileRows, a.rows,
                      g0 == 0, m0[p], m1[p]);
      }
    }
  }
}

}  // namespace glq::cpu::detail
