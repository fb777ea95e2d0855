// AVX2 + FMA kernel (Haswell, Zen 1 and later).
//
// AVX2 has no byte permute across more than 16 entries, so the 1 KiB table is read with one
// vpgatherdd per 8 codes (the table sits in L1) and each code keeps one dword lane:
//   W = entry[idx] ^ sign_lo[S & 7] ^ sign_mid[S >> 3 & 7] ^ sign_hi[S >> 6]   (3 × vpermd)
// which is the merged nibble word of kernel_common.hpp (sign in nibble bit 3, shift in bit 0).
// vpshufb on its low and high nibbles gives the u8 weights of coordinates (0, 2, 4, 6) and
// (1, 3, 5, 7) of the 8 codes; the activations are stored in the same order per group
// ([even coordinates of group g][odd ...], see pack_act_avx2), so vpmaddubsw + vpmaddwd sum the
// eight products of one group inside one dword lane. No int16 saturation is possible: a pair of
// u8 × s8 products is at most 2 · 22 · 128 = 5632, two such pairs 11264 < 32767.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/kernel_common.hpp"
#include "kernels/cpu/transform_impl.hpp"

namespace glq::cpu::detail {

namespace {

constexpr int kStep = 8;        // groups per ymm step (one dword lane each)
constexpr int kBatchTile = 4;   // batch rows sharing one decoded step
// Column block (in groups) at batch 1: bounds the int32 lane sums (≤ 128 steps · 2 · 11264 ·
// 257 < 2^31).
constexpr int kBlockGroups = 1024;
// Batch > 1: 256 groups × 64 rows of codes (32 KiB) are reused by every batch tile, and a tile's
// activations (4 · 2 · 8 · 256 bytes = 16 KiB) stay in L1.
constexpr int kBlockGroupsGemm = 256;
constexpr int kRowBlockGemm = 64;

inline int64_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

template <codec::Codebook CB, int NB>
void dot_range(const uint8_t* codes, int g0, int g1, const int8_t* const* xh,
               const int8_t* const* xl, int64_t gpad, int64_t* out) {
  const KernelTables& T = kernel_tables();
  constexpr bool kE8P = CB == codec::Codebook::E8P16;
  const int* entries = reinterpret_cast<const int*>(kE8P ? T.e8p_entry : T.e8r8_entry);
  const __m256i lut = _mm256_broadcastsi128_si256(
      _mm_load_si128(reinterpret_cast<const __m128i*>(kE8P ? T.e8p_lut : T.e8r8_lut)));
  const __m256i sign_lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(T.sign_lo));
  const __m256i sign_mid = _mm256_load_si256(reinterpret_cast<const __m256i*>(T.sign_mid));
  const __m256i sign_hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(T.sign_hi));
  const __m256i low_nibbles = _mm256_set1_epi8(0x0F);
  const __m256i byte_mask = _mm256_set1_epi32(0xFF);
  const __m256i ones16 = _mm256_set1_epi16(1);
  const __m256i w256 = _mm256_set1_epi16(256);
  const int64_t odd = 4 * gpad;  // odd-coordinate half of a plane

  __m256i acc[NB];
  for (int b = 0; b < NB; ++b) acc[b] = _mm256_setzero_si256();

  for (int g = g0; g < g1; g += kStep) {
    const int n = std::min(kStep, g1 - g);
    __m256i c;
    if constexpr (kE8P) {
      const uint16_t* c16 = reinterpret_cast<const uint16_t*>(codes) + g;
      if (n == kStep) {
        c = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c16)));
      } else {
        alignas(16) uint16_t tail[kStep] = {};
        std::memcpy(tail, c16, sizeof(uint16_t) * n);
        c = _mm256_cvtepu16_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(tail)));
      }
    } else {
      uint64_t eight = 0;
      std::memcpy(&eight, codes + g, n);
      c = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(eight)));
    }
    __m256i w;
    if constexpr (kE8P) {
      const __m256i e = _mm256_i32gather_epi32(entries, _mm256_and_si256(c, byte_mask), 4);
      const __m256i s = _mm256_srli_epi32(c, 8);
      const __m256i t0 = _mm256_permutevar8x32_epi32(sign_lo, s);
      const __m256i t1 = _mm256_permutevar8x32_epi32(sign_mid, _mm256_srli_epi32(s, 3));
      const __m256i t2 = _mm256_permutevar8x32_epi32(sign_hi, _mm256_srli_epi32(s, 6));
      w = _mm256_xor_si256(_mm256_xor_si256(e, t0), _mm256_xor_si256(t1, t2));
    } else {
      w = _mm256_i32gather_epi32(entries, c, 4);
    }
    const __m256i w_even = _mm256_shuffle_epi8(lut, _mm256_and_si256(w, low_nibbles));
    const __m256i w_odd =
        _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi32(w, 4), low_nibbles));
    const int64_t off = 4 * static_cast<int64_t>(g);
    for (int b = 0; b < NB; ++b) {
      const int8_t* h = xh[b] + off;
      const int8_t* l = xl[b] + off;
      const __m256i ph = _mm256_add_epi16(
          _mm256_maddubs_epi16(w_even, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(h))),
          _mm256_maddubs_epi16(w_odd,
                               _mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + odd))));
      const __m256i pl = _mm256_add_epi16(
          _mm256_maddubs_epi16(w_even, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(l))),
          _mm256_maddubs_epi16(w_odd,
                               _mm256_loadu_si256(reinterpret_cast<const __m256i*>(l + odd))));
      acc[b] = _mm256_add_epi32(
          acc[b], _mm256_add_epi32(_mm256_madd_epi16(ph, w256), _mm256_madd_epi16(pl, ones16)));
    }
  }
  for (int b = 0; b < NB; ++b) out[b] += hsum(acc[b]);
}

template <int NB>
void dot_range_cb(codec::Codebook cb, const uint8_t* codes, int g0, int g1,
                  const int8_t* const* xh, const int8_t* const* xl, int64_t gpad, int64_t* out) {
  if (cb == codec::Codebook::E8P16)
    dot_range<codec::Codebook::E8P16, NB>(codes, g0, g1, xh, xl, gpad, out);
  else
    dot_range<codec::Codebook::E8R8, NB>(codes, g0, g1, xh, xl, gpad, out);
}

void dot_tile(const DotArgs& a, int s, int r, int b0, int nb, int g0, int g1) {
  const StageView& st = a.stages[s];
  const int64_t row_bytes = static_cast<int64_t>(a.groups) * codec::code_bytes(st.codebook);
  const uint8_t* codes = st.codes + r * row_bytes;
  const int8_t* xh[kBatchTile];
  const int8_t* xl[kBatchTile];
  int64_t out[kBatchTile] = {};
  for (int j = 0; j < nb; ++j) {
    xh[j] = a.act.planes + (2 * static_cast<int64_t>(b0 + j)) * a.act.plane_bytes;
    xl[j] = xh[j] + a.act.plane_bytes;
  }
  const int64_t gpad = a.act.groups_padded;
  switch (nb) {
    case 1: dot_range_cb<1>(st.codebook, codes, g0, g1, xh, xl, gpad, out); break;
    case 2: dot_range_cb<2>(st.codebook, codes, g0, g1, xh, xl, gpad, out); break;
    case 3: dot_range_cb<3>(st.codebook, codes, g0, g1, xh, xl, gpad, out); break;
    default: dot_range_cb<4>(st.codebook, codes, g0, g1, xh, xl, gpad, out); break;
  }
  for (int j = 0; j < nb; ++j)
    a.dots[(static_cast<int64_t>(s) * a.act.batch + b0 + j) * a.rows + r] += out[j];
}

}  // namespace

int avx2_chunk_groups() { return kStep; }

// Plane layout of one batch row: [even coordinates: group g → bytes 4g .. 4g+3 = X[8g + 0, 2,
// 4, 6]][odd coordinates: X[8g + 1, 3, 5, 7]], each half 4 · groups_padded bytes.
void prepare_input_avx2(const InputRow& in) {
  const float inv = transform_and_scale(in);
  const int64_t odd = 4 * static_cast<int64_t>(in.groups_padded);
  const size_t pad = 4 * static_cast<size_t>(in.groups_padded - in.groups);
  for (int8_t* p : {in.hi, in.lo}) {
    std::memset(p + 4 * static_cast<int64_t>(in.groups), 0, pad);
    std::memset(p + odd + 4 * static_cast<int64_t>(in.groups), 0, pad);
  }
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256i lim = _mm256_set1_epi32(kActMax), nlim = _mm256_set1_epi32(-kActMax);
  const __m256i c128 = _mm256_set1_epi32(128);
  const __m256i even_odd = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  // Byte 0 of each dword to the front of its 128-bit lane.
  const __m256i low_bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                             -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1,
                                             -1, -1, -1, -1);
  __m256i vsum = _mm256_setzero_si256();  // lanes gain ≤ 32639 per group
  auto store = [&](int8_t* plane, int64_t g, __m256i v) {
    v = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(v, even_odd), low_bytes);
    const int32_t e = _mm_cvtsi128_si32(_mm256_castsi256_si128(v));
    const int32_t o = _mm_cvtsi128_si32(_mm256_extracti128_si256(v, 1));
    std::memcpy(plane + 4 * g, &e, 4);
    std::memcpy(plane + odd + 4 * g, &o, 4);
  };
  for (int g = 0; g < in.groups; ++g) {
    __m256i X = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(in.xt + 8 * static_cast<int64_t>(g)), vinv));
    X = _mm256_min_epi32(_mm256_max_epi32(X, nlim), lim);
    vsum = _mm256_add_epi32(vsum, X);
    const __m256i h = _mm256_srai_epi32(_mm256_add_epi32(X, c128), 8);
    const __m256i l = _mm256_sub_epi32(X, _mm256_slli_epi32(h, 8));
    store(in.hi, g, h);
    store(in.lo, g, l);
  }
  *in.sum = hsum(vsum);
}

void dots_avx2(const DotArgs& a, int r0, int r1) {
  const int batch = a.act.batch;
  for (int s = 0; s < a.n_stages; ++s)
    for (int b = 0; b < batch; ++b)
      std::fill_n(a.dots + (static_cast<int64_t>(s) * batch + b) * a.rows + r0, r1 - r0, 0);
  if (batch == 1) {
    for (int r = r0; r < r1; ++r)
      for (int s = 0; s < a.n_stages; ++s)
        for (int g0 = 0; g0 < a.groups; g0 += kBlockGroups)
          dot_tile(a, s, r, 0, 1, g0, std::min(a.groups, g0 + kBlockGroups));
  } else {
    // A block of rows × a block of columns: its codes stay in L2 across every batch tile.
    for (int rb = r0; rb < r1; rb += kRowBlockGemm) {
      const int re = std::min(r1, rb + kRowBlockGemm);
      for (int g0 = 0; g0 < a.groups; g0 += kBlockGroupsGemm) {
        const int g1 = std::min(a.groups, g0 + kBlockGroupsGemm);
        for (int b0 = 0; b0 < batch; b0 += kBatchTile) {
          const int nb = std::min(kBatchTile, batch - b0);
          for (int r = rb; r < re; ++r)
            for (int s = 0; s < a.n_stages; ++s) dot_tile(a, s, r, b0, nb, g0, g1);
        }
      }
    }
  }
  for (int s = 0; s < a.n_stages; ++s)
    for (int b = 0; b < batch; ++b) {
      int64_t* d = a.dots + (static_cast<int64_t>(s) * batch + b) * a.rows;
      const int64_t corr = static_cast<int64_t>(kWeightOffset) * a.act.xsum[b];
      for (int r = r0; r < r1; ++r) d[r] -= corr;
    }
}

void hadamard_avx2(const transform::HadamardPlan& plan, bool transpose, float* x, float* tmp) {
  hadamard_apply(plan, transpose, x, tmp);
}

}  // namespace glq::cpu::detail
