// Tables derived from the codec's 1 KiB tables for the SIMD decoders (see kernel_common.hpp).
#include <bit>

#include "kernels/cpu/kernel_common.hpp"

namespace glq::cpu::detail {

namespace {

// Quarter-unit value of an E8P16 nibble after the sign/shift merge.
int e8p_nibble_value(int n) {
  if ((n & 6) == 6) return 0;                 // 2·p = 7 never occurs
  const int two_p = (n & 6) | 1;              // 2·p ∈ {1, 3, 5} (7 never occurs)
  const int mag = (n & 8) ? -2 * two_p : 2 * two_p;  // 4·σ·p
  return mag + ((n & 1) ? 1 : -1);            // + 4·t, t = ±¼
}

// Quarter-unit value of an E8R8 nibble (signed 2·c).
int e8r8_nibble_value(int n) {
  const int two_c = n >= 8 ? n - 16 : n;
  return (two_c < -4 || two_c > 4) ? 0 : 2 * two_c;  // |2·c| ≤ 4 on every codeword
}

// Row of a GF(2) affine matrix: output bit i of vgf2p8affineqb is parity(x & byte[7 - i]).
uint64_t gf_row(int out_bit, uint8_t in_mask) {
  return static_cast<uint64_t>(in_mask) << (8 * (7 - out_bit));
}

KernelTables build() {
  KernelTables t{};
  const auto& abs = codec::e8p_abs_table();
  const auto& r8 = codec::e8r8_table();
  for (int i = 0; i < 256; ++i) {
    t.e8p_entry[i] = abs[i] & 0xF7777777u;  // nibble magnitudes + parity bit
    t.e8r8_entry[i] = r8[i];
    for (int k = 0; k < 4; ++k) {
      t.e8p_plane[k][i] = static_cast<uint8_t>(t.e8p_entry[i] >> (8 * k));
      t.e8r8_plane[k][i] = static_cast<uint8_t>(t.e8r8_entry[i] >> (8 * k));
    }
  }
  for (int j = 0; j < 64; ++j) {
    t.e8p_lut[j] = static_cast<uint8_t>(e8p_nibble_value(j & 15) + kWeightOffset);
    t.e8r8_lut[j] = static_cast<uint8_t>(e8r8_nibble_value(j & 15) + kWeightOffset);
  }
  for (int k = 0; k < 4; ++k) {
    const uint8_t sign_hi_src = k < 3 ? static_cast<uint8_t>(1u << (2 * k + 1)) : 0x7F;
    t.e8p_gf[k] = gf_row(0, 0x80) | gf_row(3, static_cast<uint8_t>(1u << (2 * k))) |
                  gf_row(4, 0x80) | gf_row(7, sign_hi_src);
  }
  // Nibble form (see kernel_common.hpp).
  for (int i = 0; i < 256; ++i) {
    const uint32_t entry = abs[i];
    const bool parity = entry >> 31;
    for (int k = 0; k < 4; ++k) {
      uint8_t b = 0;
      for (int h = 0; h < 2; ++h) {
        const int coord = 2 * k + h;
        const uint32_t two_p = (entry >> (4 * coord)) & 7;  // 1, 3 or 5
        uint32_t n = 8u | (two_p - 1) | 1u;                  // 8 | 2m | 1
        if (coord == 7 && parity) n ^= 0xEu;
        b |= static_cast<uint8_t>(n << (4 * h));
      }
      t.e8p_nplane[k][i] = b;
      t.e8r8_nplane[k][i] = static_cast<uint8_t>(t.e8r8_plane[k][i] ^ 0x88u);
    }
  }
  for (int k = 0; k < 4; ++k) {
    const uint8_t lo_sign = static_cast<uint8_t>(1u << (2 * k));
    const uint8_t hi_sign = k < 3 ? static_cast<uint8_t>(1u << (2 * k + 1)) : 0x7F;
    uint64_t m = gf_row(0, 0x80) | gf_row(4, 0x80);
    for (int bit = 1; bit <= 3; ++bit) m |= gf_row(bit, lo_sign) | gf_row(bit + 4, hi_sign);
    t.e8p_ngf[k] = m;
  }
  // Nibble form as dwords.
  for (int i = 0; i < 256; ++i)
    for (int k = 0; k < 4; ++k) {
      t.e8p_nentry[i] |= static_cast<uint32_t>(t.e8p_nplane[k][i]) << (8 * k);
      t.e8r8_nentry[i] |= static_cast<uint32_t>(t.e8r8_nplane[k][i]) << (8 * k);
    }
  for (uint32_t n = 0; n < 8; ++n) {
    uint32_t lo = 0, mid = 0;
    for (int j = 0; j < 3; ++j) {
      if (n >> j & 1) {
        lo |= 0xEu << (4 * j);
        mid |= 0xEu << (4 * (j + 3));
      }
    }
    const uint32_t par = (std::popcount(n) & 1) ? 0xEu << 28 : 0u;  // sign of coordinate 7
    t.nsign_lo[n] = lo ^ par;
    t.nsign_mid[n] = mid ^ par;
    uint32_t hi = 0;
    if (n & 1) hi ^= (0xEu << 24) ^ (0xEu << 28);  // sign of coordinate 6
    if (n & 2) hi ^= 0x11111111u;                 // shift −¼: bit 0 of every nibble
    t.nsign_hi[n] = hi;
  }
  // Dword form: sign j of coordinate j goes to bit 4j+3; bit 31 collects the parity of the
  // seven signs (XORed with the entry's parity bit it becomes the sign of coordinate 7).
  for (uint32_t n = 0; n < 8; ++n) {
    uint32_t lo = 0, mid = 0;
    for (int j = 0; j < 3; ++j) {
      if (n >> j & 1) {
        lo |= 1u << (4 * j + 3);
        mid |= 1u << (4 * (j + 3) + 3);
      }
    }
    const uint32_t par = static_cast<uint32_t>(std::popcount(n) & 1) << 31;
    t.sign_lo[n] = lo ^ par;
    t.sign_mid[n] = mid ^ par;
    uint32_t hi = 0;
    if (n & 1) hi ^= (1u << 27) ^ (1u << 31);  // sign of coordinate 6
    if (n & 2) hi ^= 0x11111111u;             // shift −¼: clear bit 0 of every nibble
    t.sign_hi[n] = hi;
  }
  return t;
}

}  // namespace

const KernelTables& kernel_tables() {
  static const KernelTables tables = build();
  return tables;
}

}  // namespace glq::cpu::detail
