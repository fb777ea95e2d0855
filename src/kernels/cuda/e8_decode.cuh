// Decoding E8P16 and E8R8 codes to fp16 in registers, shared by host (tests) and device.
//
// Why this shape. At 2 bpw a batch-1 product must decode ~6 codes per clock per SM to keep up
// with HBM, i.e. a budget of ~20 instructions per code of 8 weights. Building each fp16 from
// its bits costs too much, and a 16 B-per-code table in shared memory costs too much shared
// bandwidth. Instead every decoded coordinate is one byte-permute (PRMT, __byte_perm) away:
//
//   All magnitudes of a codebook have an fp16 pattern whose low byte is 0x00
//   (E8P16: ±0.5 = 0x?800, ±1.5 = 0x?E00, ±2.5 = 0x?100; E8R8: 0, ±0.5, ±1, ±2). The high bytes
//   of the three magnitudes, their negatives and 0x00 fit in the 8 bytes of two registers
//   (kE8pBytesLo/Hi). A 3-bit selector m | neg<<2 picks one of them as a PRMT selector
//   nibble; the high byte is then placed over a zero low byte.
//
// A per-code 32-bit "selector word" E holds the 8 selectors, nibble c for coordinate c (bit 3
// of every nibble zero). One PRMT with E's low half as the selector yields the high bytes of
// coordinates 0..3, one with E >> 16 those of 4..7 (PRMT reads only the low 16 bits of its
// selector), and a PRMT against zero spreads two high bytes into a half2: 7 instructions for 8
// coordinates, where masking a selector per pair out of E took 11.
//
// E8P16: E = sel_table[code & 0xFF] ^ sign_table[code >> 8]; the shift bit (bit 15 of the code,
// 1: t = −¼) is read from the code itself. sel_table holds the magnitudes of
// the abs pattern plus its parity bit q as the sign of coordinate 7; sign_table holds the 7
// explicit sign bits spread to their nibbles plus their parity as the sign of coordinate 7, so
// the XOR yields coordinate 7's sign = parity(signs) ^ q, as glq/codec/codebook.hpp defines it.
// The ±¼ shift is not decoded: ⟨c, x⟩ = ⟨σ∘p, x⟩ ± ¼·Σx, and Σx of a group is shared by all
// rows, so it is computed once per group (see qgemv.cu).
// E8R8: E = r8_table[code].
#pragma once

#include <cuda_runtime_api.h>  // __host__ / __device__ for host compilers too

#include <cstdint>

namespace glq::cuda::detail {

// Coordinate c of a group lives in nibble kNibbleOfCoord[c] of a selector word.
inline constexpr int kNibbleOfCoord[8] = {0, 1, 2, 3, 4, 5, 6, 7};

// High bytes of fp16 values, bytes 0..3 positive (0, m1, m2, m3), bytes 4..7 negative.
// E8P16 magnitudes 0.5, 1.5, 2.5 (selector m = 1, 2, 3).
inline constexpr uint32_t kE8pBytesLo = 0x413E3800u;
inline constexpr uint32_t kE8pBytesHi = 0xC1BEB800u;
// E8R8 magnitudes 0.5, 1, 2 (m = 1, 2, 3; m = 0 is zero).
inline constexpr uint32_t kE8rBytesLo = 0x403C3800u;
inline constexpr uint32_t kE8rBytesHi = 0xC0BCB800u;

// The three 256-entry tables, in this order, in one array of kTableWords words, then
// kE8pBytesLo and kE8rBytesLo. A kernel that reads these two from memory holds them in vector
// registers: as immediates, ptxas keeps them in a uniform register and copies that into a vector
// register before every PRMT reading it as its first operand (~2 instructions per code in the
// batch-1 kernel's loop; a shuffle of the constant is folded back into the immediate).
inline constexpr int kTableE8pSel = 0;
inline constexpr int kTableE8pSign = 256;
inline constexpr int kTableE8r8Sel = 512;
inline constexpr int kTableBytesLo = 768;  // kE8pBytesLo, then kE8rBytesLo
inline constexpr int kTableWords = 770;

#if defined(__CUDA_ARCH__)
// PRMT through inline assembly: __byte_perm() masks the selector with 0x7777 first (its
// definition ignores PRMT's sign-replicate bit), one extra instruction per call; our selectors
// have bit 3 of every nibble clear, so the raw PRMT is the same function.
__device__ __forceinline__ uint32_t byte_perm(uint32_t lo, uint32_t hi, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(lo), "r"(hi), "r"(sel));
  return r;
}
#else
inline uint32_t byte_perm(uint32_t lo, uint32_t hi, uint32_t sel) {
  const uint64_t bytes = (uint64_t(hi) << 32) | lo;
  uint32_t out = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t s = (sel >> (4 * i)) & 7u;
    out |= uint32_t((bytes >> (8 * s)) & 0xFF) << (8 * i);
  }
  return out;
}
#endif


#if defined(__CUDACC__)  // nvcc, both passes
__device__ __forceinline__ uint32_t lds32(const unsigned char* base, uint32_t off) {
  return *reinterpret_cast<const uint32_t*>(base + off);
}

// Selector words of the two E8P16 codes of a 32-bit word w (e0: low half, e1: high half) from
// bank-private tables in shared memory: entry e of lane l at e·256 + 4l, its sign entry 128
// bytes on (lane4 = 4·lane), so that 32 random lookups are one conflict-free pass. The byte
// offset [lane4, code byte, 0, 0] is one PRMT.
__device__ __forceinline__ void e8p_private_selectors(const unsigned char* tab, uint32_t lane4, uint32_t w,
                                                      uint32_t& e0, uint32_t& e1) {
  e0 = lds32(tab, __byte_perm(lane4, w, 0x1140u)) ^ lds32(tab + 128, __byte_perm(lane4, w, 0x1150u));
  e1 = lds32(tab, __byte_perm(lane4, w, 0x1160u)) ^ lds32(tab + 128, __byte_perm(lane4, w, 0x1170u));
}
#endif

// Decoded coordinates as 4 half2 bit patterns: (c0,c1), (c2,c3), (c4,c5), (c6,c7).
// Every nibble of e must have bit 3 clear (PRMT's sign-replicate mode).
__host__ __device__ __forceinline__ void decode_pairs(uint32_t e, uint32_t bytes_lo,
                                                      uint32_t bytes_hi, uint32_t out[4]) {
  const uint32_t lo = byte_perm(bytes_lo, bytes_hi, e);  // high bytes of c0..c3 (PRMT ignores e >> 16)
  const uint32_t hi = byte_perm(bytes_lo, bytes_hi, e >> 16);  // high bytes of c4..c7
  out[0] = byte_perm(lo, 0u, 0x1404u);  // [0, c0, 0, c1]
  out[1] = byte_perm(lo, 0u, 0x3424u);  // [0, c2, 0, c3]
  out[2] = byte_perm(hi, 0u, 0x1404u);
  out[3] = byte_perm(hi, 0u, 0x3424u);
}

// Selector word of an E8P16 code from the tables (sel_table, sign_table point at 256 words).
__host__ __device__ __forceinline__ uint32_t e8p_selector_word(uint32_t code,
                                                               const uint32_t* sel_table,
                                                               const uint32_t* sign_table) {
  return sel_table[code & 0xFFu] ^ sign_table[(code >> 8) & 0xFFu];
}

// Builds the kTableWords-word table array from the codec's tables (abs patterns, E8R8).
void build_decode_tables(uint32_t out[kTableWords]);

}  // namespace glq::cuda::detail
