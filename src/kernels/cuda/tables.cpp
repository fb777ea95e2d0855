// Decode tables of the CUDA kernels, built from the codec's tables (see e8_decode.cuh).
#include <bit>

#include "glq/codec/codebook.hpp"
#include "kernels/cuda/e8_decode.cuh"

namespace glq::cuda::detail {

namespace {

// Nibble value of a coordinate: magnitude selector m (0..3) and sign.
uint32_t place(int coord, uint32_t m, bool negative) {
  const uint32_t sel = m | (negative ? 4u : 0u);
  return sel << (4 * kNibbleOfCoord[coord]);
}

uint32_t sign_bit(int coord) { return 4u << (4 * kNibbleOfCoord[coord]); }

}  // namespace

void build_decode_tables(uint32_t out[kTableWords]) {
  const auto& abs = codec::e8p_abs_table();
  for (int idx = 0; idx < 256; ++idx) {
    const uint32_t entry = abs[idx];
    uint32_t e = 0;
    for (int c = 0; c < 8; ++c) {
      const uint32_t twice = (entry >> (4 * c)) & 0x7u;  // 2·p ∈ {1, 3, 5}
      e |= place(c, (twice + 1) / 2, false);             // m = 1, 2, 3
    }
    if (entry >> 31) e |= sign_bit(7);  // parity bit q
    out[kTableE8pSel + idx] = e;
  }
  for (int hi = 0; hi < 256; ++hi) {
    const uint32_t signs = static_cast<uint32_t>(hi) & 0x7Fu;  // bit 7 (the shift) is not a sign
    uint32_t e = 0;
    for (int c = 0; c < 7; ++c)
      if ((signs >> c) & 1u) e |= sign_bit(c);
    if (std::popcount(signs) & 1) e |= sign_bit(7);
    // bit 7 of the byte, the shift, stays in the code: bit 3 of a nibble must stay clear.
    out[kTableE8pSign + hi] = e;
  }
  const auto& r8 = codec::e8r8_table();
  for (int code = 0; code < 256; ++code) {
    const uint32_t entry = r8[code];
    uint32_t e = 0;
    for (int c = 0; c < 8; ++c) {
      int v = static_cast<int>((entry >> (4 * c)) & 0xFu);
      if (v >= 8) v -= 16;  // 2·c ∈ {-4, -2, -1, 0, 1, 2, 4}
      const int mag = v < 0 ? -v : v;
      const uint32_t m = mag == 0 ? 0u : mag == 1 ? 1u : mag == 2 ? 2u : 3u;
      e |= place(c, m, v < 0);
    }
    out[kTableE8r8Sel + code] = e;
  }
  out[kTableBytesLo] = kE8pBytesLo;
  out[kTableBytesLo + 1] = kE8rBytesLo;
}

}  // namespace glq::cuda::detail
