// The decode kernel: ỹ (B, rows) = Σ_s scale_s ∘ (C_s x̃) for B ≤ 8 vectors (decode, batch 1..8).
// One and two vectors of the 2/3/4 bpw layouts run the ring kernel of qgemv_ring.cu instead
// (same decode, codes streamed through shared memory from the kernel's first instruction).
//
// Work split. Rows come in tiles of 8 (the GPU layout stores the codes of one group of 8 columns
// for 8 consecutive rows in one 16-byte word, see upload()). A warp owns one row tile at a time
// and walks its groups: lane l reads the word of group g0 + l + 32·i, so each warp load is 512
// contiguous bytes, and decodes 8 codes (8 rows × 8 columns) against the lane's 8 columns of
// x̃, which it reads from shared memory once per word (16 bytes per vector). Partial sums of the
// 8 rows stay in registers until the warp has covered its columns, then a shuffle reduction
// writes them. Each block covers one range of groups (blockIdx.y) for several tiles; when the
// columns are split over several ranges the partial sums are added with atomics into a zeroed ỹ.
//
// Why shared tables are "bank-private": table lookups by code are random, so a plain 1 KiB table
// in shared memory serves a warp in ~4 passes (bank conflicts). Each table is stored 32 times,
// entry e of lane l at word e·32 + l, so lane l only ever touches bank l: one pass per lookup,
// at 32 KiB of shared memory per table (filled with 16-byte stores at the start of each block).
// The E8P16 selector and sign tables are interleaved (entry e: 128 bytes of selector copies,
// then 128 bytes of sign copies), so that a lookup's byte address is one PRMT of a code byte
// and the lane offset.
//
// Codes are read with the streaming cache hint (__ldcs): weights are used once per product, so
// they should not push activations out of L2.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>

#include "glq/error.hpp"
#include "kernels/cuda/e8_decode.cuh"
#include "kernels/cuda/launch.hpp"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/qgemv_ring.cuh"

namespace glq::cuda::detail {

namespace {

constexpr int kWarps = 8;              // warps per block
constexpr int kThreads = kWarps * 32;
constexpr int kTableSmemWords = 256 * 32;  // one bank-private table
// Shared memory for x̃ and its group sums: at most this many bytes per block. With two tables
// (64 KiB) this leaves room for two blocks per SM on Hopper/Ampere (228/164 KiB).
constexpr int kXSmemBudget = 40 * 1024;

struct QgemvParams : StageArgs {
  int kb_groups;            // groups per column range (blockIdx.y)
  const __half* xt;         // (B, ld_x)
  int ld_x;
  float* yt;                // (B, ld_y)
  int ld_y;
  const uint32_t* tables;   // kTableWords words
  int has_r8;               // an E8R8 stage is present: third table loaded
  int atomic;               // accumulate with atomics (column ranges > 1)
};

__device__ __forceinline__ __half2 as_half2(uint32_t u) {
  return *reinterpret_cast<const __half2*>(&u);
}

// Dot of one decoded group (4 half2 of weights) with one vector's 8 inputs: products summed in
// fp16 pairs, the two halves added once more and converted to fp32.
__device__ __forceinline__ float dot8h(const uint32_t w[4], const __half2 x[4]) {
  __half2 h = __hmul2(*reinterpret_cast<const __half2*>(&w[0]), x[0]);
  h = __hfma2(*reinterpret_cast<const __half2*>(&w[1]), x[1], h);
  h = __hfma2(*reinterpret_cast<const __half2*>(&w[2]), x[2], h);
  h = __hfma2(*reinterpret_cast<const __half2*>(&w[3]), x[3], h);
  return __half2float(__hadd(__low2half(h), __high2half(h)));
}

template <int B>
__device__ __forceinline__ void load_x(const uint4* xs, const float* sx, int kb_groups, int gl,
                                       __half2 xv[B][4], float sxv[B]) {
#pragma unroll
  for (int b = 0; b < B; ++b) {
    const uint4 t = xs[b * kb_groups + gl];
    xv[b][0] = as_half2(t.x);
    xv[b][1] = as_half2(t.y);
    xv[b][2] = as_half2(t.z);
    xv[b][3] = as_half2(t.w);
    sxv[b] = sx[b * kb_groups + gl];
  }
}

// A value the compiler keeps in a register instead of re-materialising it before every use
// (it otherwise reloads PRMT's constant byte table before each PRMT: one extra instruction each).
__device__ __forceinline__ uint32_t opaque(uint32_t v) {
  uint32_t r;
  asm volatile("mov.b32 %0, %1;" : "=r"(r) : "r"(v));
  return r;
}

// One E8P16 word: 8 rows × one group. The selector and sign tables are interleaved in shared
// memory: entry e of lane l at byte e·256 + l·4 (selector) and e·256 + 128 + l·4 (sign), so one
// PRMT builds a lookup's address from the lane offset and a byte of the code word.
template <int B>
__device__ __forceinline__ void e8p_word(const uint4 c, const __half2 xv[B][4], const float sxv[B],
                                         const unsigned char* tab, uint32_t lane4, uint32_t bytes_lo,
                                         uint32_t bytes_hi, const float sc[8], float acc[8][B]) {
  const uint32_t words[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
  for (int r = 0; r < 8; ++r) {
    const uint32_t w = words[r >> 1];
    // bytes [lane·4, code byte, 0, 0]: byte 0/2 of w is a code's pattern index, 1/3 its signs.
    const uint32_t off_sel = __byte_perm(lane4, w, (r & 1) ? 0x1160u : 0x1140u);
    const uint32_t off_sign = __byte_perm(lane4, w, (r & 1) ? 0x1170u : 0x1150u);
    const uint32_t e = *reinterpret_cast<const uint32_t*>(tab + off_sel) ^
                       *reinterpret_cast<const uint32_t*>(tab + off_sign + 128);
    uint32_t wv[4];
    decode_pairs(e, bytes_lo, bytes_hi, wv);
#pragma unroll
    for (int b = 0; b < B; ++b) {
      // ±¼·Σx: the shift bit (bit 15 of the code) flips the sign of the precomputed ¼·Σx.
      const uint32_t shift_bit = ((r & 1) ? w : (w << 16)) & 0x80000000u;
      const float shift = __int_as_float(shift_bit ^ __float_as_uint(sxv[b]));
      acc[r][b] = fmaf(sc[r], dot8h(wv, xv[b]) + shift, acc[r][b]);
    }
  }
}

// One E8R8 word: 8 rows × one group, one byte each.
template <int B>
__device__ __forceinline__ void e8r_word(const uint2 c, const __half2 xv[B][4],
                                         const uint32_t* tab_r8, uint32_t bytes_lo, uint32_t bytes_hi,
                                         const float sc[8], float acc[8][B]) {
  const uint32_t words[2] = {c.x, c.y};
#pragma unroll
  for (int r = 0; r < 8; ++r) {
    const uint32_t code = (words[r >> 2] >> (8 * (r & 3))) & 0xFFu;
    uint32_t w[4];
    decode_pairs(tab_r8[code * 32], bytes_lo, bytes_hi, w);
#pragma unroll
    for (int b = 0; b < B; ++b) acc[r][b] = fmaf(sc[r], dot8h(w, xv[b]), acc[r][b]);
  }
}

template <int B, int kUnroll>
__global__ void __launch_bounds__(kThreads) qgemv_kernel(const QgemvParams p) {
  extern __shared__ uint4 smem4[];
  uint32_t* smem = reinterpret_cast<uint32_t*>(smem4);
  const int ntab = p.has_r8 ? 3 : 2;
  unsigned char* tab_e8p = reinterpret_cast<unsigned char*>(smem);  // (256, [sel, sign], 32 lanes)
  uint32_t* tab_r8 = smem + 2 * kTableSmemWords;                     // (256, 32 lanes)
  uint4* xs = reinterpret_cast<uint4*>(smem + ntab * kTableSmemWords);  // (B, kb_groups)
  float* sx = reinterpret_cast<float*>(xs + B * p.kb_groups);           // (B, kb_groups)

  // Every entry is stored for all 32 lanes, with 16-byte stores of 4 copies.
  for (int i = threadIdx.x; i < 2 * kTableSmemWords / 4; i += kThreads) {
    const int e = i >> 4, t = (i >> 3) & 1;
    const uint32_t v = __ldg(p.tables + (t ? kTableE8pSign : kTableE8pSel) + e);
    reinterpret_cast<uint4*>(smem)[i] = make_uint4(v, v, v, v);
  }
  if (p.has_r8)
    for (int i = threadIdx.x; i < kTableSmemWords / 4; i += kThreads) {
      const uint32_t v = __ldg(p.tables + kTableE8r8Sel + (i >> 3));
      reinterpret_cast<uint4*>(tab_r8)[i] = make_uint4(v, v, v, v);
    }
  // Everything above touches only shared memory and constant tables; x̃ and ỹ come from (and
  // go to) the kernels around this one.
  pdl_trigger();
  pdl_wait();
  const int g0 = blockIdx.y * p.kb_groups;
  const int gn = min(p.kb_groups, p.groups - g0);
  for (int i = threadIdx.x; i < B * gn; i += kThreads) {
    const int b = i / gn, gl = i - b * gn;
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p.xt + size_t(b) * p.ld_x) + g0 + gl);
    xs[b * p.kb_groups + gl] = v;
    const float2 f0 = __half22float2(as_half2(v.x)), f1 = __half22float2(as_half2(v.y));
    const float2 f2 = __half22float2(as_half2(v.z)), f3 = __half22float2(as_half2(v.w));
    sx[b * p.kb_groups + gl] = 0.25f * ((f0.x + f0.y) + (f1.x + f1.y) + (f2.x + f2.y) + (f3.x + f3.y));
  }
  __syncthreads();

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const uint32_t lane4 = opaque(uint32_t(lane) * 4);
  const uint32_t* my_r8 = tab_r8 + lane;
  const uint32_t p_lo = __ldg(p.tables + kTableBytesLo), p_hi = kE8pBytesHi;  // see kTableBytesLo
  const uint32_t r_lo = __ldg(p.tables + kTableBytesLo + 1), r_hi = kE8rBytesHi;
  for (int tile = blockIdx.x * kWarps + warp; tile < p.tiles; tile += gridDim.x * kWarps) {
    float acc[8][B];
#pragma unroll
    for (int r = 0; r < 8; ++r)
#pragma unroll
      for (int b = 0; b < B; ++b) acc[r][b] = 0.0f;

    for (int s = 0; s < p.stages; ++s) {
      float sc[8];
      {
        const float4* sp = reinterpret_cast<const float4*>(p.scales[s] + size_t(tile) * 8);
        const float4 s0 = __ldg(sp), s1 = __ldg(sp + 1);
        sc[0] = s0.x; sc[1] = s0.y; sc[2] = s0.z; sc[3] = s0.w;
        sc[4] = s1.x; sc[5] = s1.y; sc[6] = s1.z; sc[7] = s1.w;
      }
      if (p.codebook[s] == 1) {  // E8P16
        // Software pipelined: the loads of the next 32·kUnroll groups are in flight while the
        // current ones are decoded.
        const uint4* cp = static_cast<const uint4*>(p.codes[s]) + size_t(tile) * p.groups + g0;
        uint4 c[kUnroll], nx[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int gl = u * 32 + lane;
          c[u] = gl < gn ? __ldcs(cp + gl) : make_uint4(0, 0, 0, 0);
        }
        for (int base = 0; base < gn; base += 32 * kUnroll) {
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            const int gl = base + 32 * kUnroll + u * 32 + lane;
            nx[u] = gl < gn ? __ldcs(cp + gl) : make_uint4(0, 0, 0, 0);
          }
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            const int gl = base + u * 32 + lane;
            if (gl < gn) {
              __half2 xv[B][4];
              float sxv[B];
              load_x<B>(xs, sx, p.kb_groups, gl, xv, sxv);
              e8p_word<B>(c[u], xv, sxv, tab_e8p, lane4, p_lo, p_hi, sc, acc);
            }
          }
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) c[u] = nx[u];
        }
      } else {  // E8R8
        const uint2* cp = static_cast<const uint2*>(p.codes[s]) + size_t(tile) * p.groups + g0;
        uint2 c[kUnroll], nx[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int gl = u * 32 + lane;
          c[u] = gl < gn ? __ldcs(cp + gl) : make_uint2(0, 0);
        }
        for (int base = 0; base < gn; base += 32 * kUnroll) {
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            const int gl = base + 32 * kUnroll + u * 32 + lane;
            nx[u] = gl < gn ? __ldcs(cp + gl) : make_uint2(0, 0);
          }
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            const int gl = base + u * 32 + lane;
            if (gl < gn) {
              __half2 xv[B][4];
              float sxv[B];
              load_x<B>(xs, sx, p.kb_groups, gl, xv, sxv);
              e8r_word<B>(c[u], xv, my_r8, r_lo, r_hi, sc, acc);
            }
          }
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) c[u] = nx[u];
        }
      }
    }
#pragma unroll
    for (int r = 0; r < 8; ++r)
#pragma unroll
      for (int b = 0; b < B; ++b) {
        float v = acc[r][b];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, off);
        if (lane == 0) {
          float* dst = p.yt + size_t(b) * p.ld_y + size_t(tile) * 8 + r;
          if (p.atomic) atomicAdd(dst, v); else *dst = v;
        }
      }
  }
}

struct QgemvPlan {
  int kb_groups = 0, n_kb = 0, blocks_x = 0;
  size_t smem = 0;
  bool has_r8 = false;
};

template <int B>
constexpr int unroll_for() { return B <= 2 ? 4 : 2; }

template <int B>
void* kernel_ptr() { return reinterpret_cast<void*>(qgemv_kernel<B, unroll_for<B>()>); }

void* kernel_for(int batch) {
  switch (batch) {
    case 1: return kernel_ptr<1>();
    case 2: return kernel_ptr<2>();
    case 3: return kernel_ptr<3>();
    case 4: return kernel_ptr<4>();
    case 5: return kernel_ptr<5>();
    case 6: return kernel_ptr<6>();
    case 7: return kernel_ptr<7>();
    case 8: return kernel_ptr<8>();
  }
  throw_invalid("qgemv: batch " + std::to_string(batch) + " outside 1..8");
}

// Raises each instantiation's dynamic shared memory limit once.
void allow_smem(const DeviceInfo& info, int batch) {
  static std::once_flag flags[kGemvMaxBatch + 1];
  std::call_once(flags[batch], [&] {
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(kernel_for(batch), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(info.smem_optin)));
  });
}

// Launch shape. Blocks are not persistent: block (x, y) covers row tiles 8x .. 8x+7 (one per
// warp) over column range y. The number of column ranges is chosen so that the blocks fill
// whole waves of the device (two blocks per SM) and each warp's range is a whole number of
// 32-group steps, as far as both allow; x̃ of a range must fit kXSmemBudget.
QgemvPlan plan_qgemv(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch) {
  QgemvPlan plan;
  for (auto cb : w.codebooks) plan.has_r8 = plan.has_r8 || cb == codec::Codebook::E8R8;
  const int tables_bytes = (plan.has_r8 ? 3 : 2) * kTableSmemWords * 4;
  const int per_group = batch * (16 + 4);
  const int kb_max = std::max(32, kXSmemBudget / per_group);
  const int G = w.groups;
  const int tiles = w.rows / 8;
  const int bx = (tiles + kWarps - 1) / kWarps;
  const size_t smem_max = size_t(tables_bytes) + size_t(std::min(kb_max, G)) * per_group;
  const int per_sm = std::max(1, std::min(2, int(228 * 1024 / (smem_max + 1024))));
  // GLQ_QGEMV_WAVES (default 1): how many waves of blocks to aim for (more blocks, less work
  // each). GLQ_QGEMV_MIN_SPLIT (default 1): the fewest column ranges. For tuning runs.
  static const int waves = std::max(1, env_int("GLQ_QGEMV_WAVES", 1));
  static const int min_split = std::max(1, env_int("GLQ_QGEMV_MIN_SPLIT", 1));
  const int cap = per_sm * info.sm_count * waves;
  double best = -1;
  for (int n = min_split; n <= std::max(min_split, std::min(32, G / 32)); ++n) {
    const int kb = (G + n - 1) / n;
    if (kb > kb_max) continue;
    const int n_kb = (G + kb - 1) / kb;
    const long blocks = long(bx) * n_kb;
    const double wave_eff = double(blocks) / (double((blocks + cap - 1) / cap) * cap);
    const double lane_eff = double(kb) / (32.0 * ((kb + 31) / 32));
    const double eff = wave_eff * lane_eff;
    if (eff > best + 0.02) {
      best = eff;
      plan.kb_groups = kb;
      plan.n_kb = n_kb;
    }
  }
  if (plan.n_kb == 0) {  // only reached when even 32 ranges exceed kb_max: take the smallest fitting
    plan.kb_groups = kb_max;
    plan.n_kb = (G + kb_max - 1) / kb_max;
  }
  // GLQ_QGEMV_TILES_PER_WARP (default 1): row tiles each warp walks in turn (fewer blocks, each
  // filling its tables once for more work). For tuning runs.
  static const int tiles_per_warp = std::max(1, env_int("GLQ_QGEMV_TILES_PER_WARP", 1));
  plan.blocks_x = (bx + tiles_per_warp - 1) / tiles_per_warp;
  plan.smem = size_t(tables_bytes) + size_t(plan.kb_groups) * per_group;
  if (plan.smem > info.smem_optin)
    throw_unsupported("qgemv: needs " + std::to_string(plan.smem) + " bytes of shared memory, device allows " +
                      std::to_string(info.smem_optin));
  return plan;
}

}  // namespace

namespace {

// Which decode kernel launch_qgemv runs: the CUDA-core kernel below for up to 4 vectors
// (measured faster than the tensor-core kernel at batch 1, 2 and 4 on an H100), the tensor-core
// kernel (qmma.cu) for 5 to 8 (2x faster at batch 8). GLQ_QGEMV_KERNEL=cores or =mma forces
// one, for comparisons.
bool use_cores(int batch) {
  static const int forced = env_is("GLQ_QGEMV_KERNEL", "cores") ? 1 : env_is("GLQ_QGEMV_KERNEL", "mma") ? 2 : 0;
  return forced ? forced == 1 : batch <= kCoresMaxBatch;
}

}  // namespace

bool qgemv_needs_zeroed_output(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch) {
  return use_cores(batch) ? qgemv_cores_needs_zeroed_output(info, w, batch) : qmma_needs_zeroed_output(info, w, batch);
}

void launch_qgemv(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                  const uint16_t* xt_half, int ld_x, float* yt, int ld_y, int batch,
                  cudaStream_t stream) {
  if (batch < 1 || batch > kGemvMaxBatch)
    throw_invalid("qgemv: batch " + std::to_string(batch) + " outside 1.." + std::to_string(kGemvMaxBatch));
  if (use_cores(batch))
    launch_qgemv_cores(info, w, tables, xt_half, ld_x, yt, ld_y, batch, stream);
  else
    launch_qmma(info, w, tables, xt_half, ld_x, yt, ld_y, batch, stream);
}

// 1 and 2 vectors of the 2/3/4 bpw layouts go to the ring kernel (qgemv_ring.cu);
// GLQ_QGEMV_RING=0 keeps them on the kernel below, for comparisons.
bool qgemv_cores_needs_zeroed_output(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch) {
  if (qgemv_ring_supported(info, w, batch)) return qgemv_ring_needs_zeroed_output(info, w, batch);
  return plan_qgemv(info, w, batch).n_kb > 1;
}

void launch_qgemv_cores(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                        const uint16_t* xt_half, int ld_x, float* yt, int ld_y, int batch,
                        cudaStream_t stream) {
  if (batch < 1 || batch > kGemvMaxBatch)
    throw_invalid("qgemv: batch " + std::to_string(batch) + " outside 1.." + std::to_string(kGemvMaxBatch));
  if (w.codes.empty() || w.codes.size() > 4) throw_invalid("qgemv: matrix has no stages");
  if (w.codebooks[0] != codec::Codebook::E8P16 && w.codebooks[0] != codec::Codebook::E8R8)
    throw_unsupported("qgemv: unknown codebook");
  if ((reinterpret_cast<uintptr_t>(xt_half) & 15) || (ld_x % 8))
    throw_invalid("qgemv: x̃ must be 16-byte aligned with a row stride that is a multiple of 8");
  if (qgemv_ring_supported(info, w, batch)) {
    launch_qgemv_ring(info, w, tables, xt_half, ld_x, yt, ld_y, batch, stream);
    return;
  }
  const QgemvPlan plan = plan_qgemv(info, w, batch);
  QgemvParams p{};
  static_cast<StageArgs&>(p) = stage_args(w, "qgemv");
  p.kb_groups = plan.kb_groups;
  p.xt = reinterpret_cast<const __half*>(xt_half);
  p.ld_x = ld_x;
  p.yt = yt;
  p.ld_y = ld_y;
  p.tables = tables;
  p.has_r8 = plan.has_r8;
  p.atomic = plan.n_kb > 1;
  allow_smem(info, batch);
  const dim3 grid(plan.blocks_x, plan.n_kb);
  launch_checked(reinterpret_cast<void (*)(QgemvParams)>(kernel_for(batch)), grid, dim3(kThreads), plan.smem,
                 stream, pdl_enabled(info), "qgemv_kernel", p);
}

}  // namespace glq::cuda::detail
