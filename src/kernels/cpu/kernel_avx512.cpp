// AVX-512 kernel (F, BW, VL, DQ + VNNI, VBMI, GFNI: Ice Lake, Sapphire Rapids, Zen 4 and later).
//
// Why this shape. At batch 1 every code is used once, so the kernel must decode faster than
// memory delivers codes; an fp32 decode-then-FMA needs 8 FMAs per code and is compute-bound at
// about the speed of the dense fp32 product. Instead the weights stay small unsigned integers
// and meet the 16-bit activations split into two s8 planes in vpdpbusd (64 byte products per
// instruction). Decoding works on 64 consecutive groups of one row at a time, in byte planes
// rather than per code, in the nibble form of kernel_common.hpp:
//   codes (64 × u16)  --vpermt2b-->  idx (64 pattern bytes), S (64 sign/shift bytes)
//   B_k = plane_k[idx] ^ gf2p8affine(S, N_k)      k = 0..3, byte k of the merged entry:
//         plane_k is byte k of the 256 nibble-form entries, looked up with one vpermt2b over
//         entries 0..127 and one zero-masked by idx bit 7 over (128..255) XOR (0..127); the
//         three-way XOR is one vpternlog. N_k XORs the sign of each coordinate into its nibble's
//         bits 1-3 (for coordinate 7 the parity of the seven stored signs) and the shift into
//         bit 0, after which each nibble n is the u8 weight itself: v = 2·(n − 8) + 1.
//   B_k & 0x0F, B_k & 0xF0     64 weights of coordinate 2k (n), resp. 2k+1 (16·n), of the 64
//         groups; dword lane l holds groups 4l .. 4l+3 of that coordinate.
// The activations are stored coordinate-major ([coordinate][group], see prepare_input_avx512), so
// the matching bytes are one contiguous 64-byte load per coordinate, and dword lane l of
// vpdpbusd sums exactly the four products of lane l. The sums are mapped back to quarter units
// once per row: Σ v·X = 2·Σ n·X − bias·Σ X. At batch 1 all stages of a matrix run in one pass
// (dot_rows_fused); at batch > 1 the decoded registers feed up to kBatchTile rows of the batch
// before the next chunk (dot_rows).
// GCC 12 reports its own intrinsics (_mm512_undefined_* inside masked loads and reductions) as
// uninitialised; the values are never read.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/kernel_common.hpp"
#include "kernels/cpu/transform_impl.hpp"

namespace glq::cpu::detail {

namespace {

constexpr int kChunk = 64;                 // groups per decoded chunk (one zmm of bytes)
constexpr int kBatchTile = 4;              // batch rows sharing one decoded chunk
// Column block (in chunks) at batch > 1: 4 chunks, so a tile's activations (4 rows · 2 planes ·
// 8 · 256 bytes = 16 KiB) stay in L1 while every row of the thread passes.
constexpr int kBlockChunksGemm = 4;
constexpr int kRowBlockGemm = 64;

struct alignas(64) Selectors {
  uint8_t lo[64];  // byte 2p of (c0 ‖ c1): the pattern byte of code p
  uint8_t hi[64];  // byte 2p + 1: the sign/shift byte
};
const Selectors& selectors() {
  static const Selectors s = [] {
    Selectors t{};
    for (int p = 0; p < 64; ++p) {
      t.lo[p] = static_cast<uint8_t>(2 * p);
      t.hi[p] = static_cast<uint8_t>(2 * p + 1);
    }
    return t;
  }();
  return s;
}

inline int64_t hsum(__m512i v) { return _mm512_reduce_add_epi32(v); }

// Software prefetch distance in bytes of codes. The hardware prefetcher alone left the kernel
// at about half of the sgemv bandwidth on Zen 4 (decode and loads did not overlap); 2 KiB ahead
// is about 16 chunks of E8P16 work (measured: docs/cpu-kernels.md).
constexpr int kPrefetchBytes = 2048;

// For rows [r0, r1) of one stage: Σ over groups [g0, g1) (g0 a multiple of kChunk) of NB
// batch rows, accumulated into dots[b · rows_stride + r]. codes: the stage's codes (row-major,
// `groups` per row); xh[b], xl[b]: plane bases of batch row b ([8][gpad] bytes each).
// prefetch: byte distance of the software prefetch (kPrefetchBytes when whole rows stream
// through; one row's bytes when the caller walks a column block down the rows).
// Look-up constants of one codebook in nibble form (kernel_common.hpp): plane k of the 256
// entries as lo = entries 0..127 and hi = entries 128..255 XOR entries 0..127, so that
// plane[idx] = vpermi2b(lo, idx) ^ (idx ≥ 128 ? vpermi2b(hi, idx) : 0) — the second look-up
// zero-masked by idx bit 7 — and the XOR with the sign merge joins it in one vpternlog.
struct PlaneTables {
  __m512i lo[4][2], hi[4][2];
  __m512i sel_lo, sel_hi;  // code bytes → pattern bytes, sign/shift bytes (E8P16)
  long long gf[4];          // nibble merge matrices (E8P16)
};

template <codec::Codebook CB>
inline PlaneTables plane_tables() {
  const KernelTables& T = kernel_tables();
  const uint8_t(*planes)[256] = CB == codec::Codebook::E8P16 ? T.e8p_nplane : T.e8r8_nplane;
  PlaneTables p;
  for (int k = 0; k < 4; ++k)
    for (int j = 0; j < 2; ++j) {
      p.lo[k][j] = _mm512_load_si512(planes[k] + 64 * j);
      p.hi[k][j] = _mm512_xor_si512(_mm512_load_si512(planes[k] + 128 + 64 * j), p.lo[k][j]);
    }
  p.sel_lo = _mm512_load_si512(selectors().lo);
  p.sel_hi = _mm512_load_si512(selectors().hi);
  for (int k = 0; k < 4; ++k) p.gf[k] = static_cast<long long>(T.e8p_ngf[k]);
  return p;
}

// One chunk of 64 codes (n valid, the rest read as zero) of one stage as (idx, S): pattern and
// sign/shift bytes (E8R8: S unused).
template <codec::Codebook CB>
__attribute__((always_inline)) inline void load_chunk(const PlaneTables& t, const uint8_t* at, int n, __m512i& idx,
                                                      __m512i& sgn) {
  if constexpr (CB == codec::Codebook::E8P16) {
    const uint16_t* c16 = reinterpret_cast<const uint16_t*>(at);
    __m512i c0, c1;
    if (n == kChunk) {
      c0 = _mm512_loadu_si512(c16);
      c1 = _mm512_loadu_si512(c16 + 32);
    } else {
      const __mmask32 m0 = n >= 32 ? ~__mmask32{0} : ((__mmask32{1} << n) - 1);
      const __mmask32 m1 = n > 32 ? ((__mmask32{1} << (n - 32)) - 1) : 0;
      c0 = _mm512_maskz_loadu_epi16(m0, c16);
      c1 = _mm512_maskz_loadu_epi16(m1, c16 + 32);
    }
    idx = _mm512_permutex2var_epi8(c0, t.sel_lo, c1);
    sgn = _mm512_permutex2var_epi8(c0, t.sel_hi, c1);
  } else {
    idx = n == kChunk ? _mm512_loadu_si512(at) : _mm512_maskz_loadu_epi8((__mmask64{1} << n) - 1, at);
    sgn = _mm512_setzero_si512();
  }
}

// Byte plane k of the merged nibbles of a chunk: nibble 2k (low) and 2k + 1 (high) of each of
// the 64 groups.
template <codec::Codebook CB>
__attribute__((always_inline)) inline __m512i merged_plane(const PlaneTables& t, int k, __m512i idx, __mmask64 top,
                                                           __m512i sgn) {
  const __m512i r1 = _mm512_permutex2var_epi8(t.lo[k][0], idx, t.lo[k][1]);
  const __m512i r2 = _mm512_maskz_permutex2var_epi8(top, t.hi[k][0], idx, t.hi[k][1]);
  if constexpr (CB == codec::Codebook::E8P16) {
    const __m512i m = _mm512_gf2p8affine_epi64_epi8(sgn, _mm512_set1_epi64(t.gf[k]), 0);
    return _mm512_ternarylogic_epi64(r1, r2, m, 0x96);  // r1 ^ r2 ^ m
  } else {
    return _mm512_xor_si512(r1, r2);
  }
}

// For rows [r0, r1) of one stage: Σ n·X over groups [g0, g1) (g0 a multiple of kChunk) of NB
// batch rows, accumulated into dots[b · rows_stride + r] (n: the merged nibbles; the caller maps
// the sums to Σ v·X). codes: the stage's codes (row-major, `groups` per row); xh[b], xl[b]:
// plane bases of batch row b ([8][gpad] bytes each). prefetch: byte distance of the software
// prefetch (kPrefetchBytes when whole rows stream through; one row's bytes when the caller walks
// a column block down the rows).
template <codec::Codebook CB, int NB>
void dot_rows(const uint8_t* codes, int groups, int r0, int r1, int g0, int g1,
              const int8_t* const* xh, const int8_t* const* xl, int64_t gpad, int64_t* dots,
              int64_t rows_stride, int64_t prefetch) {
  constexpr bool kE8P = CB == codec::Codebook::E8P16;
  constexpr int kCodeBytes = kE8P ? 2 : 1;
  const PlaneTables tab = plane_tables<CB>();
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  // Independent accumulators per batch row and plane so that vpdpbusd latency is hidden.
  // Lane bound: each accumulator gains at most 8/A · 4 · 15 · 128 per chunk, so int32 holds
  // well over a million groups per row.
  constexpr int A = NB == 1 ? 4 : (NB == 2 ? 2 : 1);

  // Decodes one chunk (idx, S) and accumulates its products with the activation bytes at
  // column offset `col` of every coordinate row (stride gpad) of each batch row.
  __m512i acc_h[NB][A], acc_l[NB][A];
  auto chunk = [&](__m512i idx, __m512i sgn, int64_t col) __attribute__((always_inline)) {
    const __mmask64 top = _mm512_movepi8_mask(idx);
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      const __m512i e = merged_plane<CB>(tab, k, idx, top, sgn);
      const __m512i w_even = _mm512_and_si512(e, low4);
      const __m512i w_odd = _mm512_and_si512(_mm512_srli_epi16(e, 4), low4);
      const int64_t off_even = (2 * k) * gpad + col, off_odd = (2 * k + 1) * gpad + col;
#pragma GCC unroll 4
      for (int b = 0; b < NB; ++b) {
        __m512i& h = acc_h[b][k % A];
        __m512i& l = acc_l[b][k % A];
        h = _mm512_dpbusd_epi32(h, w_even, _mm512_loadu_si512(xh[b] + off_even));
        l = _mm512_dpbusd_epi32(l, w_even, _mm512_loadu_si512(xl[b] + off_even));
        h = _mm512_dpbusd_epi32(h, w_odd, _mm512_loadu_si512(xh[b] + off_odd));
        l = _mm512_dpbusd_epi32(l, w_odd, _mm512_loadu_si512(xl[b] + off_odd));
      }
    }
  };
  auto clear = [&] {
    for (int b = 0; b < NB; ++b)
      for (int j = 0; j < A; ++j) acc_h[b][j] = acc_l[b][j] = _mm512_setzero_si512();
  };
  // Adds Σ over the dword lanes in `lanes` of each batch row's accumulators (256·Xh part +
  // Xl part) to out[b · rows_stride]. Within one call a lane holds at most 4 chunks' worth per
  // accumulator at batch > 1 (≤ 4 · 8 · 4 · 15 · 128 · 257 < 2^31), so the planes are combined
  // in int32 first and the batch rows are reduced together (a transposing add tree) instead of
  // one horizontal sum each, which dominated small matrices (576 columns: one chunk per row).
  auto add_totals = [&](__mmask16 lanes, int64_t* out) {
    __m512i v[4];
    for (int b = 0; b < NB; ++b) {
      __m512i h = acc_h[b][0], l = acc_l[b][0];
      for (int j = 1; j < A; ++j) {
        h = _mm512_add_epi32(h, acc_h[b][j]);
        l = _mm512_add_epi32(l, acc_l[b][j]);
      }
      if constexpr (NB == 1) {
        out[0] += 256 * static_cast<int64_t>(_mm512_mask_reduce_add_epi32(lanes, h)) +
                  _mm512_mask_reduce_add_epi32(lanes, l);
        return;
      }
      v[b] = _mm512_maskz_add_epi32(lanes, _mm512_slli_epi32(h, 8), l);
    }
    for (int b = NB; b < 4; ++b) v[b] = _mm512_setzero_si512();
    const __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(v[0], v[1]), _mm512_unpackhi_epi32(v[0], v[1]));
    const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2], v[3]), _mm512_unpackhi_epi32(v[2], v[3]));
    const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
    const __m256i w = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
    const __m128i x = _mm_add_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    alignas(16) int32_t sums[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(sums), x);
    for (int b = 0; b < NB; ++b) out[b * rows_stride] += sums[b];
  };

  // A short last chunk (≤ 32 groups, e.g. 8 of 72 groups at 576 columns) would cost as much as a
  // full one; instead the tails of several rows share one chunk (see pack_tail_avx512).
  const int tail = groups % kChunk;
  const bool packed_tails = g1 == groups && tail > 0 && tail <= kChunk / 2;
  const int g_main = packed_tails ? groups - tail : g1;

  for (int r = r0; r < r1; ++r) {
    const uint8_t* row = codes + static_cast<int64_t>(r) * groups * kCodeBytes;
    clear();
    for (int g = g0; g < g_main; g += kChunk) {
      const int n = std::min(kChunk, g_main - g);
      const uint8_t* at = row + g * kCodeBytes;
      // Codes are contiguous across rows, so a fixed distance ahead also covers the next row.
      _mm_prefetch(reinterpret_cast<const char*>(at) + prefetch, _MM_HINT_T0);
      if constexpr (kE8P) _mm_prefetch(reinterpret_cast<const char*>(at) + prefetch + 64, _MM_HINT_T0);
      __m512i idx, sgn;
      load_chunk<CB>(tab, at, n, idx, sgn);
      chunk(idx, sgn, g);
    }
    if (g0 < g_main) add_totals(0xFFFF, dots + r);
  }

  if (packed_tails) {
    // Row j of a pack owns groups [j·span, j·span + tail) of the chunk (span = tail rounded up
    // to whole dword lanes); the activations of the tail sit replicated at the same places in
    // the planes' extra chunk at column gpad − kChunk.
    const int span = (tail + 3) / 4 * 4;
    const int per_pack = kChunk / span;
    const int64_t tail_col = gpad - kChunk;
    for (int rp = r0; rp < r1; rp += per_pack) {
      const int np = std::min(per_pack, r1 - rp);
      __m512i c0 = _mm512_setzero_si512(), c1 = _mm512_setzero_si512();
      for (int j = 0; j < np; ++j) {
        const uint8_t* at = codes + (static_cast<int64_t>(rp + j) * groups + groups - tail) * kCodeBytes;
        const int first = j * span;  // first group position of row j in the chunk
        if constexpr (kE8P) {
          // Word lanes [first, first + tail) of the 64 come from `at`: a masked load at a base
          // shifted back by `first` touches only those lanes.
          const uint64_t m = ((uint64_t{1} << tail) - 1) << first;
          const uint16_t* base = reinterpret_cast<const uint16_t*>(at) - first;
          if (static_cast<uint32_t>(m)) c0 = _mm512_mask_loadu_epi16(c0, static_cast<__mmask32>(m), base);
          if (m >> 32) c1 = _mm512_mask_loadu_epi16(c1, static_cast<__mmask32>(m >> 32), base + 32);
        } else {
          const __mmask64 m = ((__mmask64{1} << tail) - 1) << first;
          c0 = _mm512_mask_loadu_epi8(c0, m, at - first);
        }
      }
      clear();
      if constexpr (kE8P)
        chunk(_mm512_permutex2var_epi8(c0, tab.sel_lo, c1), _mm512_permutex2var_epi8(c0, tab.sel_hi, c1), tail_col);
      else
        chunk(c0, _mm512_setzero_si512(), tail_col);
      for (int j = 0; j < np; ++j) {
        add_totals(static_cast<__mmask16>(((1u << (span / 4)) - 1) << (j * span / 4)), dots + rp + j);
      }
    }
  }
}

// Batch 1, whole rows, all stages of a matrix in one pass (2 bpw: E8P16; 3 bpw: E8P16 + E8R8;
// 4 bpw: E8P16 + E8P16). Zen 4 runs a 512-bit op in two halves, so the kernel is bound by its
// count of vector ops (vpdpbusd and the two-source byte permutes above all); against running
// dot_rows once per stage this version saves every op it can:
//  - each coordinate's activation bytes are loaded once for all stages;
//  - the code streams are read side by side; two E8P16 stages share the look-up tables;
//  - the high nibble is used in place, as 16·n (one AND, no shift), with its own accumulators;
//  - the first table operand of each permute (which the instruction overwrites) is loaded from
//    memory instead of copied from a register, so load ports do the work of register moves.
// Rows [r0, r1), groups [0, g_end) (g_end: all groups, or the groups before the packed tails,
// which the caller runs per stage). Σ n·X of stage s goes to dots[s · rows + r].
constexpr int kMaxFusedGroups = 1 << 17;
struct alignas(64) PlaneMemory {
  uint8_t lo[4][2][64], hi[4][2][64];  // PlaneTables::lo / hi in memory
  long long gf[4];                     // nibble merge matrices (E8P16)
};
template <codec::Codebook CB>
const PlaneMemory& plane_memory() {
  static const PlaneMemory m = [] {
    const KernelTables& T = kernel_tables();
    const uint8_t(*planes)[256] = CB == codec::Codebook::E8P16 ? T.e8p_nplane : T.e8r8_nplane;
    PlaneMemory p{};
    for (int k = 0; k < 4; ++k) {
      for (int j = 0; j < 2; ++j)
        for (int i = 0; i < 64; ++i) {
          p.lo[k][j][i] = planes[k][64 * j + i];
          p.hi[k][j][i] = planes[k][128 + 64 * j + i] ^ planes[k][64 * j + i];
        }
      p.gf[k] = static_cast<long long>(T.e8p_ngf[k]);
    }
    return p;
  }();
  return m;
}

// NS stages; stage 0 is E8P16, stage 1 (if any) is CB1.
template <int NS, codec::Codebook CB1>
void dot_rows_fused(const uint8_t* const* codes, int groups, int g_end, int rows, int r0, int r1, const int8_t* xh,
                    const int8_t* xl, int64_t gpad, int64_t* dots) {
  constexpr codec::Codebook kCB[2] = {codec::Codebook::E8P16, CB1};
  constexpr int kBytes[2] = {2, CB1 == codec::Codebook::E8P16 ? 2 : 1};
  // Stage 0's second table halves live in registers (shared with stage 1 when it is E8P16);
  // an E8R8 stage reads both halves from memory (permute memory operands).
  const PlaneTables tab = plane_tables<codec::Codebook::E8P16>();
  const PlaneMemory* const mem[2] = {&plane_memory<codec::Codebook::E8P16>(), &plane_memory<CB1>()};
  const __m512i low4 = _mm512_set1_epi8(0x0F), high4 = _mm512_set1_epi8(static_cast<char>(0xF0));
  // acc[s][p][h]: stage s, activation plane p (Xh, Xl), low (h = 0) or high (h = 1, 16·n)
  // nibbles. Lane bound: a high accumulator gains ≤ 4 · 4 · 240 · 128 per chunk and a low one
  // a sixteenth of it, so the lanes and their 16-lane sums stay in int32 up to 4369 chunks per
  // row (kMaxFusedGroups, 1M columns, keeps a margin; longer rows run per stage).
  // One stage alone runs two copies of each accumulator (A), so that each vpdpbusd chain is short.
  constexpr int A = NS == 1 ? 2 : 1;
  __m512i acc[NS][2][2][A];
  for (int r = r0; r < r1; ++r) {
    const uint8_t* row[NS];
    for (int s = 0; s < NS; ++s) row[s] = codes[s] + static_cast<int64_t>(r) * groups * kBytes[s];
    for (auto& a : acc)
      for (auto& b : a)
        for (auto& c : b)
          for (auto& d : c) d = _mm512_setzero_si512();
    for (int g = 0; g < g_end; g += kChunk) {
      const int n = std::min(kChunk, g_end - g);
      // The compiler must not keep the tables' first halves in registers (they would be copied
      // before every permute): hide that the pointers are loop-invariant.
      const PlaneMemory* t[2] = {mem[0], mem[1]};
      asm("" : "+r"(t[0]), "+r"(t[1]));
      __m512i idx[NS], sgn[NS];
      __mmask64 top[NS];
#pragma GCC unroll 2
      for (int s = 0; s < NS; ++s) {
        const uint8_t* at = row[s] + static_cast<int64_t>(g) * kBytes[s];
        _mm_prefetch(reinterpret_cast<const char*>(at) + kPrefetchBytes, _MM_HINT_T0);
        if (kBytes[s] == 2) _mm_prefetch(reinterpret_cast<const char*>(at) + kPrefetchBytes + 64, _MM_HINT_T0);
        if (kCB[s] == codec::Codebook::E8P16)
          load_chunk<codec::Codebook::E8P16>(tab, at, n, idx[s], sgn[s]);
        else
          load_chunk<codec::Codebook::E8R8>(tab, at, n, idx[s], sgn[s]);
        top[s] = _mm512_movepi8_mask(idx[s]);
      }
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        const int64_t off_even = (2 * k) * gpad + g, off_odd = (2 * k + 1) * gpad + g;
        __m512i xeh = _mm512_loadu_si512(xh + off_even), xel = _mm512_loadu_si512(xl + off_even);
        __m512i xoh = _mm512_loadu_si512(xh + off_odd), xol = _mm512_loadu_si512(xl + off_odd);
        asm("" : "+v"(xeh), "+v"(xel), "+v"(xoh), "+v"(xol));  // one load each, for all stages
#pragma GCC unroll 2
        for (int s = 0; s < NS; ++s) {
          __m512i e;
          if (kCB[s] == codec::Codebook::E8P16) {
            const __m512i r1 = _mm512_permutex2var_epi8(_mm512_load_si512(t[0]->lo[k][0]), idx[s], tab.lo[k][1]);
            const __m512i r2 =
                _mm512_maskz_permutex2var_epi8(top[s], _mm512_load_si512(t[0]->hi[k][0]), idx[s], tab.hi[k][1]);
            const __m512i m = _mm512_gf2p8affine_epi64_epi8(sgn[s], _mm512_set1_epi64(t[0]->gf[k]), 0);
            e = _mm512_ternarylogic_epi64(r1, r2, m, 0x96);  // r1 ^ r2 ^ m
          } else {
            const __m512i r1 = _mm512_permutex2var_epi8(_mm512_load_si512(t[1]->lo[k][0]), idx[s],
                                                        _mm512_load_si512(t[1]->lo[k][1]));
            const __m512i r2 = _mm512_maskz_permutex2var_epi8(top[s], _mm512_load_si512(t[1]->hi[k][0]), idx[s],
                                                              _mm512_load_si512(t[1]->hi[k][1]));
            e = _mm512_xor_si512(r1, r2);
          }
          const __m512i w_lo = _mm512_and_si512(e, low4), w_hi = _mm512_and_si512(e, high4);
          const int a = k % A;
          acc[s][0][0][a] = _mm512_dpbusd_epi32(acc[s][0][0][a], w_lo, xeh);
          acc[s][1][0][a] = _mm512_dpbusd_epi32(acc[s][1][0][a], w_lo, xel);
          acc[s][0][1][a] = _mm512_dpbusd_epi32(acc[s][0][1][a], w_hi, xoh);
          acc[s][1][1][a] = _mm512_dpbusd_epi32(acc[s][1][1][a], w_hi, xol);
        }
      }
    }
    for (int s = 0; s < NS; ++s) {
      // Every high-nibble product is a multiple of 16: shift the lanes exactly, then reduce.
      int64_t h = 0, l = 0;
      for (int a = 0; a < A; ++a) {
        h += static_cast<int64_t>(_mm512_reduce_add_epi32(acc[s][0][0][a])) +
             _mm512_reduce_add_epi32(_mm512_srai_epi32(acc[s][0][1][a], 4));
        l += static_cast<int64_t>(_mm512_reduce_add_epi32(acc[s][1][0][a])) +
             _mm512_reduce_add_epi32(_mm512_srai_epi32(acc[s][1][1][a], 4));
      }
      dots[static_cast<int64_t>(s) * rows + r] += 256 * h + l;
    }
  }
}

template <int NB>
void dot_rows_cb(codec::Codebook cb, const uint8_t* codes, int groups, int r0, int r1, int g0,
                 int g1, const int8_t* const* xh, const int8_t* const* xl, int64_t gpad,
                 int64_t* dots, int64_t rows_stride, int64_t prefetch) {
  if (cb == codec::Codebook::E8P16)
    dot_rows<codec::Codebook::E8P16, NB>(codes, groups, r0, r1, g0, g1, xh, xl, gpad, dots,
                                         rows_stride, prefetch);
  else
    dot_rows<codec::Codebook::E8R8, NB>(codes, groups, r0, r1, g0, g1, xh, xl, gpad, dots,
                                        rows_stride, prefetch);
}

// Rows [r0, r1) of stage s for batch rows [b0, b0 + nb), groups [g0, g1).
void dot_tile(const DotArgs& a, int s, int r0, int r1, int b0, int nb, int g0, int g1) {
  const StageView& st = a.stages[s];
  const int8_t* xh[kBatchTile];
  const int8_t* xl[kBatchTile];
  for (int j = 0; j < nb; ++j) {
    xh[j] = a.act.planes + (2 * static_cast<int64_t>(b0 + j)) * a.act.plane_bytes;
    xl[j] = xh[j] + a.act.plane_bytes;
  }
  const int64_t gpad = a.act.groups_padded;
  int64_t* dots = a.dots + (static_cast<int64_t>(s) * a.act.batch + b0) * a.rows;
  const bool whole_rows = g0 == 0 && g1 == a.groups;
  const int64_t pf = whole_rows ? kPrefetchBytes
                                : static_cast<int64_t>(a.groups) * codec::code_bytes(st.codebook);
  switch (nb) {
    case 1: dot_rows_cb<1>(st.codebook, st.codes, a.groups, r0, r1, g0, g1, xh, xl, gpad, dots, a.rows, pf); break;
    case 2: dot_rows_cb<2>(st.codebook, st.codes, a.groups, r0, r1, g0, g1, xh, xl, gpad, dots, a.rows, pf); break;
    case 3: dot_rows_cb<3>(st.codebook, st.codes, a.groups, r0, r1, g0, g1, xh, xl, gpad, dots, a.rows, pf); break;
    default: dot_rows_cb<4>(st.codebook, st.codes, a.groups, r0, r1, g0, g1, xh, xl, gpad, dots, a.rows, pf); break;
  }
}

}  // namespace

// Groups per coordinate row of the activation planes: the groups rounded up to whole chunks,
// plus one chunk holding the row tail replicated for packed tails (see dot_rows).
int avx512_plane_groups(int groups) { return (groups + kChunk - 1) / kChunk * kChunk + kChunk; }

// Plane layout of one batch row: [coordinate i (8)][group (groups_padded)] bytes. Each
// coordinate's 16 groups are one stride-8 gather of xt.
void prepare_input_avx512(const InputRow& in) {
  const float inv = transform_and_scale(in);
  const int gp = in.groups_padded;
  for (int i = 0; i < 8; ++i) {
    std::memset(in.hi + static_cast<int64_t>(i) * gp + in.groups, 0, gp - in.groups);
    std::memset(in.lo + static_cast<int64_t>(i) * gp + in.groups, 0, gp - in.groups);
  }
  const __m512 vinv = _mm512_set1_ps(inv);
  const __m512i stride8 = _mm512_setr_epi32(0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96,
                                            104, 112, 120);
  const __m512i lim = _mm512_set1_epi32(kActMax), nlim = _mm512_set1_epi32(-kActMax);
  const __m512i c128 = _mm512_set1_epi32(128);
  int64_t sum = 0;
  __m512i vsum = _mm512_setzero_si512();
  for (int g0 = 0, blocks = 0; g0 < in.groups; g0 += 16, ++blocks) {
    const int n = std::min(16, in.groups - g0);
    const __mmask16 m = n == 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
    for (int i = 0; i < 8; ++i) {
      const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, stride8,
                                                in.xt + 8 * static_cast<int64_t>(g0) + i, 4);
      __m512i X = _mm512_cvtps_epi32(_mm512_mul_ps(v, vinv));  // round half to even
      X = _mm512_min_epi32(_mm512_max_epi32(X, nlim), lim);
      vsum = _mm512_add_epi32(vsum, X);
      const __m512i h = _mm512_srai_epi32(_mm512_add_epi32(X, c128), 8);
      const __m512i l = _mm512_sub_epi32(X, _mm512_slli_epi32(h, 8));
      _mm512_mask_cvtepi32_storeu_epi8(in.hi + static_cast<int64_t>(i) * gp + g0, m, h);
      _mm512_mask_cvtepi32_storeu_epi8(in.lo + static_cast<int64_t>(i) * gp + g0, m, l);
    }
    if ((blocks & 1023) == 1023) {  // lanes gain ≤ 8 · 32639 per block: flush long before 2^31
      sum += _mm512_reduce_add_epi32(vsum);
      vsum = _mm512_setzero_si512();
    }
  }
  *in.sum = sum + _mm512_reduce_add_epi32(vsum);

  // The extra chunk: the last `tail` groups of every coordinate row, repeated every `span`
  // groups (span = tail rounded up to whole dword lanes), zero elsewhere.
  const int tail = in.groups % kChunk;
  if (tail > 0 && tail <= kChunk / 2) {
    const int span = (tail + 3) / 4 * 4;
    const int64_t from = in.groups - tail, to = gp - kChunk;
    for (int8_t* plane : {in.hi, in.lo})
      for (int i = 0; i < 8; ++i) {
        int8_t* row = plane + static_cast<int64_t>(i) * gp;
        for (int j = 0; j + span <= kChunk; j += span) std::memcpy(row + to + j, row + from, tail);
      }
  }
}

void dots_avx512(const DotArgs& a, int r0, int r1) {
  const int batch = a.act.batch;
  for (int s = 0; s < a.n_stages; ++s)
    for (int b = 0; b < batch; ++b)
      std::fill_n(a.dots + (static_cast<int64_t>(s) * batch + b) * a.rows + r0, r1 - r0, 0);
  const bool fused = batch == 1 && a.groups <= kMaxFusedGroups && a.stages[0].codebook == codec::Codebook::E8P16;
  if (fused) {
    // All stages in one pass over the rows; packed row tails (if any) per stage.
    const int tail = a.groups % kChunk;
    const bool packed_tails = tail > 0 && tail <= kChunk / 2;
    const int g_end = packed_tails ? a.groups - tail : a.groups;
    const int8_t* xh = a.act.planes;
    const int8_t* xl = xh + a.act.plane_bytes;
    const uint8_t* codes[2] = {a.stages[0].codes, a.n_stages > 1 ? a.stages[1].codes : nullptr};
    if (g_end > 0) {
      if (a.n_stages == 1)
        dot_rows_fused<1, codec::Codebook::E8P16>(codes, a.groups, g_end, a.rows, r0, r1, xh, xl,
                                                  a.act.groups_padded, a.dots);
      else if (a.stages[1].codebook == codec::Codebook::E8P16)
        dot_rows_fused<2, codec::Codebook::E8P16>(codes, a.groups, g_end, a.rows, r0, r1, xh, xl,
                                                  a.act.groups_padded, a.dots);
      else
        dot_rows_fused<2, codec::Codebook::E8R8>(codes, a.groups, g_end, a.rows, r0, r1, xh, xl,
                                                 a.act.groups_padded, a.dots);
    }
    if (packed_tails)
      for (int s = 0; s < a.n_stages; ++s) dot_tile(a, s, r0, r1, 0, 1, g_end, a.groups);
  } else if (batch == 1) {
    // Whole rows, one stage after the other: the codes stream through once.
    for (int s = 0; s < a.n_stages; ++s) dot_tile(a, s, r0, r1, 0, 1, 0, a.groups);
  } else {
    // A block of rows × a block of columns: its codes (64 · 256 · 2 bytes = 32 KiB) stay in L2
    // across every batch tile, and one tile's activations (16 KiB) stay in L1 while the rows
    // of the block pass.
    const int block = kBlockChunksGemm * kChunk;
    for (int rb = r0; rb < r1; rb += kRowBlockGemm) {
      const int re = std::min(r1, rb + kRowBlockGemm);
      for (int g0 = 0; g0 < a.groups; g0 += block) {
        const int g1 = std::min(a.groups, g0 + block);
        for (int b0 = 0; b0 < batch; b0 += kBatchTile) {
          const int nb = std::min(kBatchTile, batch - b0);
          for (int s = 0; s < a.n_stages; ++s) dot_tile(a, s, rb, re, b0, nb, g0, g1);
        }
      }
    }
  }
  // From nibbles to quarter units: Σ v·X = 2·Σ n·X − bias·Σ X (kernel_common.hpp).
  for (int s = 0; s < a.n_stages; ++s) {
    const int64_t bias = a.stages[s].codebook == codec::Codebook::E8P16 ? kNibbleBiasE8P : kNibbleBiasE8R8;
    for (int b = 0; b < batch; ++b) {
      int64_t* d = a.dots + (static_cast<int64_t>(s) * batch + b) * a.rows;
      const int64_t corr = bias * a.act.xsum[b];
      for (int r = r0; r < r1; ++r) d[r] = 2 * d[r] - corr;
    }
  }
}

void hadamard_avx512(const transform::HadamardPlan& plan, bool transpose, float* x, float* tmp) {
  hadamard_apply(plan, transpose, x, tmp);
}

}  // namespace glq::cpu::detail
