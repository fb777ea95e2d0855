// The SIMD decoders' tables against the codec's reference decoders, for every code.
#include <gtest/gtest.h>

#include <cmath>

#include "glq/codec/codebook.hpp"
#include "kernels/cpu/kernel_common.hpp"

namespace glq::cpu::detail {
namespace {

// vgf2p8affineqb on one byte: output bit i = parity(x & byte (7 − i) of the matrix).
uint8_t gf2_affine(uint8_t x, uint64_t m) {
  uint8_t out = 0;
  for (int i = 0; i < 8; ++i) {
    const uint8_t row = static_cast<uint8_t>(m >> (8 * (7 - i)));
    out |= static_cast<uint8_t>((__builtin_popcount(x & row) & 1) << i);
  }
  return out;
}

int quarter_units(float v) { return static_cast<int>(std::lround(4.0f * v)); }

// The byte-planar path (AVX-512): B_k = plane_k[idx] ^ affine(S, M_k); nibbles through the LUT.
TEST(KernelTables, E8pBytePlanesMatchReferenceDecoderForAllCodes) {
  const KernelTables& t = kernel_tables();
  for (int code = 0; code < 65536; ++code) {
    float ref[8];
    codec::decode_e8p(static_cast<uint16_t>(code), codec::e8p_abs_table(), ref);
    const uint8_t idx = static_cast<uint8_t>(code), s = static_cast<uint8_t>(code >> 8);
    for (int k = 0; k < 4; ++k) {
      const uint8_t b = t.e8p_plane[k][idx] ^ gf2_affine(s, t.e8p_gf[k]);
      ASSERT_EQ(t.e8p_lut[b & 15] - kWeightOffset, quarter_units(ref[2 * k])) << "code " << code;
      ASSERT_EQ(t.e8p_lut[b >> 4] - kWeightOffset, quarter_units(ref[2 * k + 1]))
          << "code " << code;
    }
  }
}

// The dword path (AVX2): W = entry ^ sign_lo[S&7] ^ sign_mid[S>>3&7] ^ sign_hi[S>>6].
TEST(KernelTables, E8pDwordMergeMatchesReferenceDecoderForAllCodes) {
  const KernelTables& t = kernel_tables();
  for (int code = 0; code < 65536; ++code) {
    float ref[8];
    codec::decode_e8p(static_cast<uint16_t>(code), codec::e8p_abs_table(), ref);
    const uint32_t s = static_cast<uint32_t>(code) >> 8;
    const uint32_t w = t.e8p_entry[code & 0xFF] ^ t.sign_lo[s & 7] ^ t.sign_mid[(s >> 3) & 7] ^
                       t.sign_hi[s >> 6];
    for (int i = 0; i < 8; ++i)
      ASSERT_EQ(t.e8p_lut[(w >> (4 * i)) & 15] - kWeightOffset, quarter_units(ref[i]))
          << "code " << code << " coordinate " << i;
  }
}

TEST(KernelTables, E8r8PlanesMatchReferenceDecoderForAllCodes) {
  const KernelTables& t = kernel_tables();
  for (int code = 0; code < 256; ++code) {
    float ref[8];
    codec::decode_e8r8(static_cast<uint8_t>(code), codec::e8r8_table(), ref);
    for (int k = 0; k < 4; ++k) {
      const uint8_t b = t.e8r8_plane[k][code];
      EXPECT_EQ(t.e8r8_lut[b & 15] - kWeightOffset, quarter_units(ref[2 * k]));
      EXPECT_EQ(t.e8r8_lut[b >> 4] - kWeightOffset, quarter_units(ref[2 * k + 1]));
    }
  }
}

// The nibble form (AVX-512 integer kernel): B_k = nplane_k[idx] ^ affine(S, N_k); each nibble n
// is the u8 weight itself, v = 2·(n − 8) + 1 in quarter units.
TEST(KernelTables, E8pNibblePlanesMatchReferenceDecoderForAllCodes) {
  const KernelTables& t = kernel_tables();
  for (int code = 0; code < 65536; ++code) {
    float ref[8];
    codec::decode_e8p(static_cast<uint16_t>(code), codec::e8p_abs_table(), ref);
    const uint8_t idx = static_cast<uint8_t>(code), s = static_cast<uint8_t>(code >> 8);
    for (int k = 0; k < 4; ++k) {
      const uint8_t b = t.e8p_nplane[k][idx] ^ gf2_affine(s, t.e8p_ngf[k]);
      ASSERT_EQ(2 * ((b & 15) - 8) + 1, quarter_units(ref[2 * k])) << "code " << code;
      ASSERT_EQ(2 * ((b >> 4) - 8) + 1, quarter_units(ref[2 * k + 1])) << "code " << code;
    }
  }
}

// The nibble form as dwords (AVX2 float tiles): W = nentry ^ nsign_lo[S&7] ^ nsign_mid[S>>3&7] ^
// nsign_hi[S>>6]; nibble i of W is coordinate i, v = 2·(n − 8) + 1 (E8R8: 2·(n − 8), no merge).
TEST(KernelTables, NibbleDwordMergeMatchesReferenceDecoderForAllCodes) {
  const KernelTables& t = kernel_tables();
  for (int code = 0; code < 65536; ++code) {
    float ref[8];
    codec::decode_e8p(static_cast<uint16_t>(code), codec::e8p_abs_table(), ref);
    const uint32_t s = static_cast<uint32_t>(code) >> 8;
    const uint32_t w = t.e8p_nentry[code & 0xFF] ^ t.nsign_lo[s & 7] ^ t.nsign_mid[(s >> 3) & 7] ^
                       t.nsign_hi[s >> 6];
    for (int i = 0; i < 8; ++i)
      ASSERT_EQ(2 * (static_cast<int>((w >> (4 * i)) & 15) - 8) + 1, quarter_units(ref[i]))
          << "code " << code << " coordinate " << i;
  }
  for (int code = 0; code < 256; ++code) {
    float ref[8];
    codec::decode_e8r8(static_cast<uint8_t>(code), codec::e8r8_table(), ref);
    for (int i = 0; i < 8; ++i)
      EXPECT_EQ(2 * (static_cast<int>((t.e8r8_nentry[code] >> (4 * i)) & 15) - 8), quarter_units(ref[i]))
          << "code " << code << " coordinate " << i;
  }
}

// E8R8 nibble form: v = 2·(n − 8).
TEST(KernelTables, E8r8NibblePlanesMatchReferenceDecoderForAllCodes) {
  const KernelTables& t = kernel_tables();
  for (int code = 0; code < 256; ++code) {
    float ref[8];
    codec::decode_e8r8(static_cast<uint8_t>(code), codec::e8r8_table(), ref);
    for (int k = 0; k < 4; ++k) {
      const uint8_t b = t.e8r8_nplane[k][code];
      EXPECT_EQ(2 * ((b & 15) - 8), quarter_units(ref[2 * k])) << "code " << code;
      EXPECT_EQ(2 * ((b >> 4) - 8), quarter_units(ref[2 * k + 1])) << "code " << code;
    }
  }
}

// The sums Σ v·X = 2·Σ n·X − bias·Σ X: the biases follow from the nibble values above.
TEST(KernelTables, NibbleBiasesMatchTheNibbleValues) {
  // E8P16: v = 2n − 15; E8R8: v = 2n − 16.
  for (int n = 0; n < 16; ++n) {
    EXPECT_EQ(2 * (n - 8) + 1, 2 * n - kNibbleBiasE8P);
    EXPECT_EQ(2 * (n - 8), 2 * n - kNibbleBiasE8R8);
  }
}

TEST(KernelTables, WeightsFitUnsignedBytesWithRoomForProducts) {
  const KernelTables& t = kernel_tables();
  for (int j = 0; j < 64; ++j) {
    EXPECT_LE(t.e8p_lut[j], 2 * kWeightOffset);
    EXPECT_LE(t.e8r8_lut[j], 2 * kWeightOffset);
    // vpermb reads 6 index bits; bits 4-5 (the neighbouring nibble) must not matter.
    EXPECT_EQ(t.e8p_lut[j], t.e8p_lut[j & 15]);
    EXPECT_EQ(t.e8r8_lut[j], t.e8r8_lut[j & 15]);
  }
}

}  // namespace
}  // namespace glq::cpu::detail
