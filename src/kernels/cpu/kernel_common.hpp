// Shared pieces of the CPU kernels: the integer model of the product, the derived tables and the
// per-ISA entry points. Internal to glq_cpu.
//
// Integer model (identical in every ISA, so the SIMD kernels agree with the scalar one exactly
// up to the float transforms):
//   1. x̃ = T_in (sign_in ∘ x) in float (per batch row b).
//   2. x̃ is quantized to 16-bit fixed point with one scale per batch row:
//        X = round(x̃ / xs_b),  xs_b = max|x̃_b| / kActMax,  |X| ≤ kActMax = 32639,
//      and split into two signed bytes X = 256·Xh + Xl (Xh, Xl ∈ [−128, 127]) so that the
//      SIMD kernels can use u8×s8 dot-product instructions (vpdpbusd, vpmaddubsw).
//   3. Every decoded weight is an integer in quarter lattice units: E8P16 coordinates are
//      4·(σ·p + t) ∈ [−11, 11], E8R8 coordinates are 4·c ∈ [−8, 8]. The AVX2 kernel feeds them
//      as unsigned bytes v + kWeightOffset and removes the offset with Σ X afterwards; the
//      AVX-512 kernel feeds the merged nibbles n of the nibble form below (v = 2n − bias) and
//      maps its sums back the same way: Σ v·X = 2·Σ n·X − bias·Σ X.
//   4. dot_s[b][r] = Σ_g ⟨v(C_s[r, g]), X_b[8g .. 8g+8)⟩ exactly, in 64-bit integers.
//   5. ỹ[b][r] = Σ_s scale_s[r] · xs_b / 4 · dot_s[b][r], then y = sign_out ∘ (T_out^T ỹ).
// The only approximation against the float reference is step 2: a relative error of about
// 2^-15 of max|x̃| per element, far below the quantization error of the weights.
#pragma once

#include <cstdint>

#include "glq/codec/codebook.hpp"
#include "glq/transform/hadamard.hpp"

namespace glq::cpu::detail {

inline constexpr int kActMax = 32639;       // 127·256 + 127: Xh and Xl both fit int8
inline constexpr int kWeightOffset = 11;    // makes every quarter-unit weight a u8 in [0, 22]
inline constexpr int kMaxStages = 2;        // 4 bpw = two E8P16 stages

// Byte-planar and nibble tables derived once from the codec's tables (see tables.cpp).
struct KernelTables {
  // E8P16: abs-table entries with only the documented bits kept (nibble i = 2·p_i, bit 31 = q).
  alignas(64) uint32_t e8p_entry[256];
  // E8R8: codeword entries (nibble i = 2·c_i, signed).
  alignas(64) uint32_t e8r8_entry[256];
  // Byte k of every entry, as four 256-byte planes (AVX-512 looks them up with vpermi2b).
  alignas(64) uint8_t e8p_plane[4][256];
  alignas(64) uint8_t e8r8_plane[4][256];
  // Nibble → v + kWeightOffset. E8P16 nibble (after the sign/shift merge): bit 3 sign, bits 1-2
  // (2p−1)/2, bit 0 shift (1 → +¼). E8R8 nibble: signed 2·c. 64 entries = 16 repeated 4 times,
  // so vpermb (6 index bits) ignores bits 4-5 of its index.
  alignas(64) uint8_t e8p_lut[64];
  alignas(64) uint8_t e8r8_lut[64];
  // GF(2) affine matrices (vgf2p8affineqb) mapping the code's high byte S (bits 0-6 signs of
  // coordinates 0-6, bit 7 shift) to the bits XORed into byte k of the entry: sign of 2k → bit 3,
  // sign of 2k+1 → bit 7 (for k = 3: parity of the seven signs), shift → bits 0 and 4.
  uint64_t e8p_gf[4];
  // The same merge for dword lanes (AVX2, vpermd on 3-bit slices of S):
  //   entry ^ sign_lo[S & 7] ^ sign_mid[(S >> 3) & 7] ^ sign_hi[(S >> 6) & 3].
  alignas(32) uint32_t sign_lo[8];
  alignas(32) uint32_t sign_mid[8];
  alignas(32) uint32_t sign_hi[8];

  // Nibble form (the AVX-512 integer kernel): after the merge every nibble n ∈ [0, 15] is itself
  // the u8 weight, with v = 2·(n − 8) + 1 for E8P16 and v = 2·(n − 8) for E8R8, so
  //   Σ v·X = 2·Σ n·X − kNibbleBias·Σ X    (kNibbleBias = 15 for E8P16, 16 for E8R8)
  // and no nibble → weight look-up is needed (a mask and a shift split a byte's two nibbles).
  // E8P16 nibble before the merge: 8 | 2·m | 1 with m = (2p − 1)/2 ∈ {0, 1, 2}; the merge XORs
  // a coordinate's sign into bits 1-3 (8 + 2m + 1 − 8 = 2m + 1 becomes its ones' complement,
  // −2m − 2) and the −¼ shift into bit 0. Coordinate 7's nibble is stored pre-complemented when
  // the pattern's parity bit is set, and the merge XORs the parity of the seven stored signs.
  // E8R8: the signed nibble 2·c XOR 8 (= 2·c + 8); no merge.
  alignas(64) uint8_t e8p_nplane[4][256];
  alignas(64) uint8_t e8r8_nplane[4][256];
  // GF(2) affine matrices of the nibble merge for byte k: sign of 2k → bits 1-3, sign of 2k+1
  // (k = 3: parity of the seven signs) → bits 5-7, shift → bits 0 and 4.
  uint64_t e8p_ngf[4];
  // The nibble form as dword entries (AVX2 float tiles): nibble i of e8p_nentry[idx] ^
  // nsign_lo[S & 7] ^ nsign_mid[(S >> 3) & 7] ^ nsign_hi[(S >> 6) & 3] is the merged nibble of
  // coordinate i; e8r8_nentry needs no merge.
  alignas(32) uint32_t e8p_nentry[256];
  alignas(32) uint32_t e8r8_nentry[256];
  alignas(32) uint32_t nsign_lo[8];
  alignas(32) uint32_t nsign_mid[8];
  alignas(32) uint32_t nsign_hi[8];
};
inline constexpr int kNibbleBiasE8P = 15;
inline constexpr int kNibbleBiasE8R8 = 16;
const KernelTables& kernel_tables();

// One stage of a matrix as the kernels see it.
struct StageView {
  codec::Codebook codebook;
  const uint8_t* codes;  // (rows, groups) codes of code_bytes(codebook) bytes, row-major
};

// Quantized activations of the whole batch, in the layout of one ISA (see each kernel file).
struct ActView {
  const int16_t* x16 = nullptr;  // (batch, cols) X, natural order (scalar kernel)
  const int8_t* planes = nullptr;  // (batch, 2 planes (Xh, Xl), plane_bytes) SIMD layouts
  int64_t plane_bytes = 0;
  const int64_t* xsum = nullptr;  // (batch) Σ X
  int batch = 0;
  int groups_padded = 0;  // coordinate-row length of the planes (≥ groups; padding holds X = 0)
};

// dots (stages, batch, rows) int64: exact Σ v·X for rows [r0, r1).
struct DotArgs {
  int rows = 0, cols = 0, groups = 0;
  int n_stages = 0;
  StageView stages[kMaxStages];
  ActView act;
  int64_t* dots = nullptr;
};

void dots_scalar(const DotArgs& a, int r0, int r1);
void dots_avx2(const DotArgs& a, int r0, int r1);
void dots_avx512(const DotArgs& a, int r0, int r1);

// Step 1 of the model for one batch row: xt = T_in (sign_in ∘ x), then X = round-half-even(xt ·
// kActMax / max|xt|) written in the ISA's layout (x16 for the scalar kernel, Xh/Xl planes for
// the SIMD ones; padding groups are zero). Throws Numerical for NaN/Inf. The rounding is the
// same in every ISA (one float multiply, then round to nearest even), so X is too.
struct InputRow {
  const float* x = nullptr;        // (cols)
  const float* sign_in = nullptr;  // (cols)
  const transform::HadamardPlan* plan = nullptr;  // nullptr: no transform (QuantizedMatrix::rht off)
  int cols = 0, groups = 0, groups_padded = 0;
  float* xt = nullptr;   // (cols) scratch
  float* tmp = nullptr;  // (cols) scratch
  int16_t* x16 = nullptr;  // (cols) scalar layout
  int8_t* hi = nullptr;    // (8 · groups_padded) SIMD layout
  int8_t* lo = nullptr;
  int64_t* sum = nullptr;  // Σ X
  double* scale = nullptr;  // xs = max|xt| / kActMax (0 for a zero row)
};
int avx2_chunk_groups();    // groups per SIMD chunk (padding unit)
int avx512_plane_groups(int groups);  // coordinate-row length of the AVX-512 planes
void prepare_input_scalar(const InputRow& in);
void prepare_input_avx2(const InputRow& in);
void prepare_input_avx512(const InputRow& in);

// Float-tile product (AVX-512, large batches; see qgemm_avx512.cpp). A tile of 32 rows × 128
// columns is decoded once into float32 weights (all stages, scales folded in) and multiplied by
// every batch row with fp32 FMAs, the activations x̃ unrounded. The batch is cut into
// panel_tiles(batch) tiles of at most kPanelLanes rows; tile t holds batch rows
// [panel_tile_start(t), panel_tile_start(t + 1)) as panel[t][column][lane] (stride kPanelLanes).
inline constexpr int kPanelLanes = 12;
inline constexpr int kFloatTileRows = 32;  // rows per tile: the row split's grain
inline int panel_tiles(int batch) { return (batch + kPanelLanes - 1) / kPanelLanes; }
inline int panel_tile_start(int t, int batch) { return static_cast<int>(int64_t{t} * batch / panel_tiles(batch)); }
struct FloatTileArgs {
  int rows = 0, cols = 0, groups = 0, n_stages = 0;
  StageView stages[kMaxStages];
  const float* scales[kMaxStages] = {};  // (rows) per stage
  const float* panel = nullptr;          // (panel_tiles(batch), cols, kPanelLanes)
  int batch = 0;
  float* y = nullptr;  // (batch, rows) ← ỹ = Σ_s scale_s · (decoded codes) · x̃
};
// Rows [r0, r1) (r0 a multiple of kFloatTileRows) of every batch row.
void gemm_tiles_avx512(const FloatTileArgs& a, int r0, int r1);
void gemm_tiles_avx2(const FloatTileArgs& a, int r0, int r1);

// 16-bit dense products (hmatmul): y[b][r] for rows [r0, r1) and every batch row b.
struct HalfArgs {
  const uint16_t* w = nullptr;  // (rows, cols) row-major
  bool bf16 = false;            // false: IEEE half
  int rows = 0, cols = 0, batch = 0;
  const float* x = nullptr;  // (batch, cols)
  float* y = nullptr;        // (batch, rows)
};
void hgemm_scalar(const HalfArgs& a, int r0, int r1);
void hgemm_avx2(const HalfArgs& a, int r0, int r1);
void hgemm_avx512(const HalfArgs& a, int r0, int r1);

// Float transforms (see transform_impl.hpp), compiled once per ISA. tmp: (plan.n) floats.
// transpose = false: x ← T x; true: x ← T^T x.
void hadamard_scalar(const transform::HadamardPlan& plan, bool transpose, float* x, float* tmp);
void hadamard_avx2(const transform::HadamardPlan& plan, bool transpose, float* x, float* tmp);
void hadamard_avx512(const transform::HadamardPlan& plan, bool transpose, float* x, float* tmp);

}  // namespace glq::cpu::detail
