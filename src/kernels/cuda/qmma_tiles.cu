// The tensor-core kernel for many vectors (kTilesMinBatch to kMmaMaxBatch): ỹ_k (B, rows) =
// Σ_s scale_s ∘ (C_s x̃) over column range k, with each weight decoded once for all B vectors.
//
// qmma.cu decodes the codes straight into mma fragments, so a warp holds the accumulators of
// every vector it serves: beyond 16 vectors it runs the weights again per chunk of vectors.
// Here the decoded weights go through shared memory instead, and the warps that share them
// split the rows:
//   - a block (8 warps) owns 256 rows and one column range; per step of 64 columns every thread
//     decodes one 8×8 item (row tile, group) of the 256×64 tile into fp16 (table decode as in
//     qgemv.cu, then one HFMA2 per coordinate pair and stage: c·scale ± scale/4, the row's
//     scales staged once per block as half2), while the x̃ tile of all 64 vectors (64×64, zero
//     beyond B) arrives by cp.async. Both tiles are double-buffered, and each thread's code
//     words come through a ring of three cp.async slots: the copies of steps s+1 (x̃) and s+2
//     (codes) and the decode of step s+1 overlap the multiplies of step s;
//   - warp w multiplies rows 32w..32w+31 (two m16 tiles) by all eight 8-vector tiles with
//     mma.sync.m16n8k16 (fp16 operands from ldmatrix, fp32 accumulators: 64 per lane); built
//     for sm_90a, warpgroup g instead issues wgmma.mma_async m64n64k16 on rows 128g..128g+127,
//     the tensor cores reading both tiles from shared memory, asynchronously, so that the
//     decode of step s+1 overlaps them too. Each decoded weight serves 64 vectors;
//   - rows of 128 bytes, their eight 16-byte chunks XOR-swizzled by row (the 128-byte swizzle
//     of wgmma's descriptors; ldmatrix reads eight rows without bank conflicts), the tiles
//     aligned to 1024 bytes;
//   - column range k writes its own slice of ỹ with plain stores (no zeroing, no atomics); the
//     output transform sums the slices (FinishParams::parts). On sm_90, where a row block has
//     2 to 8 column ranges, they run as one thread-block cluster: each block leaves its
//     partial tile in its shared memory, and block q of the cluster sums its share of the rows
//     of all C tiles through distributed shared memory and writes them: one slice of ỹ.
// A second kernel below (qmma_tiles_rs_kernel, the default on sm_90) keeps the decoded weights
// in registers as the multiply's A operand instead of a shared-memory tile; same work split,
// same output.
#include <cooperative_groups.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <string>

#include "glq/error.hpp"
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/e8_decode.cuh"
#include "kernels/cuda/launch.hpp"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/pdl.cuh"

namespace glq::cuda::detail {

namespace {

constexpr int kTileThreads = 256;                   // 8 warps
constexpr int kTileRows = 256;                      // rows per block: 32 per warp
constexpr int kTileK = 64;                          // columns per step: 8 groups
constexpr int kTileVecs = 64;                       // vectors per launch (zero-filled beyond B)
constexpr int kTileAHalfs = kTileRows * kTileK;     // 16384 (32 KB)
constexpr int kTileXHalfs = kTileVecs * kTileK;     // 4096 (8 KB)
constexpr int kTileBufHalfs = kTileAHalfs + kTileXHalfs;
constexpr int kTileRing = 3;                        // code-word slots per thread (32 bytes each)
// The rows' scales as uint2 (scale, scale/4 as half2 pairs), stage s of row r at scl_at(r, s):
// one uint2 of padding per 8 rows, so that the 4 row tiles a warp decodes at once (rows 8 apart)
// read 4 different bank pairs instead of one.
constexpr int kSclWords = kTileRows * 2 + kTileRows / 8;
__host__ __device__ constexpr int scl_at(int row, int s) { return row * 2 + s + (row >> 3); }
constexpr size_t kTileSmem = size_t(2) * kTileBufHalfs * 2 +          // A and x̃, double-buffered
                             size_t(kTileRing) * kTileThreads * 32 +  // code words
                             size_t(kSclWords) * 8 +                  // per row and stage: scale, scale/4
                             size_t(kTableWords) * 4 +                // decode tables
                             1024;  // the tiles aligned to 1024 bytes: 114,952 bytes in all, 2 blocks per SM
constexpr int kPartialLd = kTileRows + 4;  // floats per vector of a partial tile: conflict-free stores
static_assert(size_t(kTileVecs) * kPartialLd * 4 <= size_t(2) * kTileBufHalfs * 2, "partial tile fits the tile buffers");

struct TileParams : StageArgs {
  const uint32_t* tables;
  const __half* xt;   // (batch, cols)
  float* yt;          // (parts, batch, rows)
  int half_out;       // the slices in fp16 instead (yt then holds __half)
  int rows, cols, batch;
  int steps_per_part;  // steps of kTileK columns per column range
  int cluster;         // column ranges per thread-block cluster (1: each writes its own slice)
};

// Offset (in halfs) of chunk c (8 halfs) of row r in a tile of 64-half rows.
__device__ __forceinline__ int swz(int r, int c) { return r * kTileK + ((c ^ (r & 7)) << 3); }

// Hopper's warpgroup MMA (sm_90a): the four warps of a warpgroup multiply a 64-row slab of the
// A tile by the whole x̃ tile, both read from shared memory by the tensor cores (no ldmatrix),
// through descriptors of the 128-byte swizzle that the tiles already use: rows of 128 bytes,
// chunk c of row r at c ^ (r & 7), atoms of 8 rows (1024 bytes, 1024-aligned).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GLQ_TILES_WGMMA 1
__device__ __forceinline__ uint64_t sw128_desc(const void* p) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  return uint64_t((a & 0x3FFFF) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }
// Orders this thread's generic-proxy writes of shared memory (stores, cp.async) before later
// reads of the async proxy (wgmma).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// The 32 fp32 accumulators of an m64n64 wgmma: asm operands %0..%31 of d.
#define GLQ_WGMMA_D32                                                         \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define GLQ_WGMMA_D32_OPERANDS(d)                                                                                    \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),      \
      "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),       \
      "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),      \
      "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])

// d (m64n64, fp32) += A (64×16, K-major) · B (64×16, K-major)ᵀ, both in shared memory.
__device__ __forceinline__ void wgmma_m64n64k16(float (&d)[32], uint64_t da, uint64_t db) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " GLQ_WGMMA_D32 ", %32, %33, 1, 1, 1, 0, 0;"
               : GLQ_WGMMA_D32_OPERANDS(d)
               : "l"(da), "l"(db));
}

// The same with A (64×16) as register fragments (the mma.m16n8k16 layout per warp, warp w of the
// warpgroup rows 16w..16w+15) and B in shared memory.
__device__ __forceinline__ void wgmma_rs_m64n64k16(float (&d)[32], const uint32_t (&a)[4], uint64_t db) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " GLQ_WGMMA_D32 ", {%32, %33, %34, %35}, %36, 1, 1, 1, 0;"
               : GLQ_WGMMA_D32_OPERANDS(d)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}
#endif

#ifndef GLQ_TILES_WGMMA
__device__ __forceinline__ void ldsm4(uint32_t r[4], const __half* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

// The register kernels' multiply without wgmma (mma.sync), one step of 64 columns (four k16
// steps kk): acc[m][2jj] and acc[m][2jj + 1] += A_m · x̃ of vector tiles 2jj, 2jj + 1 for the
// warp's M slabs (A fragments a[m][kk]); each B fragment pair is read once by ldmatrix from the
// swizzled x̃ tile at xs (brow, bchunk: this lane's ldmatrix row and 16-byte chunk).
template <int M, int J>
__device__ __forceinline__ void mma_step_x(float (&acc)[M][J][4], const uint32_t (&a)[M][4][4], const __half* xs,
                                           int brow, int bchunk) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
    for (int jj = 0; jj < J / 2; ++jj) {
      uint32_t bf[4];
      ldsm4(bf, xs + swz(jj * 16 + brow, 2 * kk + bchunk));
#pragma unroll
      for (int m = 0; m < M; ++m) {
        mma16816(acc[m][2 * jj], a[m][kk][0], a[m][kk][1], a[m][kk][2], a[m][kk][3], bf[0], bf[1]);
        mma16816(acc[m][2 * jj + 1], a[m][kk][0], a[m][kk][1], a[m][kk][2], a[m][kk][3], bf[2], bf[3]);
      }
    }
  }
}

#endif

__device__ __forceinline__ uint32_t hfma2(uint32_t a, uint32_t b, uint32_t c) {
  const __half2 r = __hfma2(*reinterpret_cast<const __half2*>(&a), *reinterpret_cast<const __half2*>(&b),
                            *reinterpret_cast<const __half2*>(&c));
  return *reinterpret_cast<const uint32_t*>(&r);
}

// The block's row scales, per row and stage (scale, scale/4) as half2 pairs at scl_at(row, s);
// zero beyond the rows and the stages.
__device__ __forceinline__ void stage_scales(const TileParams& p, int tile0, uint2* scl) {
  for (int i = threadIdx.x; i < kTileRows * 2; i += kTileThreads) {
    const int row = tile0 * 8 + (i >> 1), s = i & 1;
    const float sc = row < p.rows && s < p.stages ? __ldg(p.scales[s] + row) : 0.0f;
    scl[scl_at(i >> 1, s)] = make_uint2(pack_half2(sc, sc), pack_half2(0.25f * sc, 0.25f * sc));
  }
}

// Copies this thread's code words of item (tile, g) into its ring slot (nothing out of range:
// decode_item then writes zeros).
template <int kS1>
__device__ __forceinline__ void load_codes(const TileParams& p, int tile, int g, unsigned char* slot) {
  if (tile >= p.tiles || g >= p.groups) return;
  const size_t idx = size_t(tile) * p.groups + g;
  cp_async16(slot, static_cast<const uint4*>(p.codes[0]) + idx);
  if (kS1 == 1) cp_async16(slot + 16, static_cast<const uint4*>(p.codes[1]) + idx);
  if (kS1 == 2) cp_async8(slot + 16, static_cast<const uint2*>(p.codes[1]) + idx);
}

// Row r of an E8P16 code word c (the codes of 8 rows): w = d·scale ± scale/4, added to w unless
// kFirst (sq: half2 (scale, scale), half2 (scale/4, scale/4)).
template <bool kFirst>
__device__ __forceinline__ void e8p_row(const uint32_t* tab, uint4 c, int r, uint2 sq, uint32_t lo_p, uint32_t w[4]) {
  const uint32_t word = r < 2 ? c.x : r < 4 ? c.y : r < 6 ? c.z : c.w;
  const uint32_t code = (r & 1) ? (word >> 16) : (word & 0xFFFFu);
  uint32_t d[4];
  decode_pairs(e8p_selector_word(code, tab + kTableE8pSel, tab + kTableE8pSign), lo_p, kE8pBytesHi, d);
  const uint32_t shift = sq.y ^ ((code >> 15) * 0x80008000u);
#pragma unroll
  for (int k = 0; k < 4; ++k) w[k] = hfma2(d[k], sq.x, kFirst ? shift : hfma2(shift, 0x3C003C00u, w[k]));
}

// Rows 8·lt .. 8·lt+7 (local tile lt) of chunk g of the A tile, from the code words in `slot`:
// stage 0 E8P16, stage 1 (kS1) none, E8P16 or E8R8; zero where out of range.
template <int kS1>
__device__ __forceinline__ void decode_item(const uint32_t* tab, const uint2* scl, const unsigned char* slot, bool ok,
                                            int lt, int g, __half* a, uint32_t lo_p, uint32_t lo_r) {
  const uint4 c0 = *reinterpret_cast<const uint4*>(slot);
  const uint4 c1 = kS1 ? *reinterpret_cast<const uint4*>(slot + 16) : make_uint4(0, 0, 0, 0);
#pragma unroll
  for (int r = 0; r < 8; ++r) {
    const int row = lt * 8 + r;
    uint4 out = make_uint4(0, 0, 0, 0);
    if (ok) {
      uint32_t w[4];
      e8p_row<true>(tab, c0, r, scl[scl_at(row, 0)], lo_p, w);
      if (kS1 == 1) {
        e8p_row<false>(tab, c1, r, scl[scl_at(row, 1)], lo_p, w);
      } else if (kS1 == 2) {
        const uint2 sq = scl[scl_at(row, 1)];
        const uint32_t word = r < 4 ? c1.x : c1.y;
        const uint32_t code = (word >> (8 * (r & 3))) & 0xFFu;
        uint32_t d[4];
        decode_pairs(tab[kTableE8r8Sel + code], lo_r, kE8rBytesHi, d);
#pragma unroll
        for (int k = 0; k < 4; ++k) w[k] = hfma2(d[k], sq.x, w[k]);
      }
      out = make_uint4(w[0], w[1], w[2], w[3]);
    }
    *reinterpret_cast<uint4*>(a + swz(row, g)) = out;
  }
}

// x̃ tile of step `step`: vector v, chunk c (two 16-byte copies per thread, zero beyond B and
// beyond the columns).
__device__ __forceinline__ void load_x(const TileParams& p, int step, __half* xs) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int e = threadIdx.x + i * kTileThreads;  // 0..511
    const int v = e >> 3, c = e & 7;
    const int g = step * 8 + c;
    const bool ok = v < p.batch && g < p.groups;
    cp_async_zfill(xs + swz(v, c), ok ? p.xt + size_t(v) * p.cols + size_t(g) * 8 : p.xt, 16, ok);
  }
}

// The block's accumulators out: acc[m][n][h] holds vector n·8 + 2t + (h & 1) of local row
// row_of(m, g, h >> 1), lane (g, t) = (lane / 4, lane % 4). Without a cluster: the block's slice
// of ỹ (fp32 or fp16); in a cluster (sm_90), through the partial tiles in shared memory (tsm,
// whose tile buffers the caller is done with): block q of the cluster sums its share of the rows.
template <typename RowOf>
__device__ __forceinline__ void store_tiles(const TileParams& p, const float (&acc)[2][8][4], unsigned char* tsm,
                                            int tile0, RowOf row_of) {
  const int lane = threadIdx.x & 31;
  // C fragment: rows g, g+8 of the m16 tile; vectors 2t, 2t+1 of the 8-vector tile.
  const int g = lane >> 2, t = lane & 3;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (p.cluster > 1) {
    namespace cg = cooperative_groups;
    cg::cluster_group cl = cg::this_cluster();
    cp_async_wait<0>();
    __syncthreads();  // every warp is done with the tiles: their buffers take the partial tile
    float* part = reinterpret_cast<float*>(tsm);  // (kTileVecs, kPartialLd)
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int h = 0; h < 4; ++h)
          part[(n * 8 + 2 * t + (h & 1)) * kPartialLd + row_of(m, g, h >> 1)] = acc[m][n][h];
    cl.sync();  // every partial tile of the cluster written
    // Block q of the cluster sums row quads [q·64/C, (q+1)·64/C) of the 256-row tile.
    const int rank = int(cl.block_rank()), q0 = rank * (kTileRows / 4) / p.cluster;
    const int quads = (rank + 1) * (kTileRows / 4) / p.cluster - q0;
    float* y = p.yt + size_t(blockIdx.y / p.cluster) * p.batch * p.rows;
    for (int e = threadIdx.x; e < p.batch * quads; e += kTileThreads) {
      const int v = e / quads, r = (q0 + e % quads) * 4;
      float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      for (int q = 0; q < p.cluster; ++q) {
        const float4 u = *reinterpret_cast<const float4*>(cl.map_shared_rank(part, q) + v * kPartialLd + r);
        sum.x += u.x;
        sum.y += u.y;
        sum.z += u.z;
        sum.w += u.w;
      }
      const int row = tile0 * 8 + r;  // rows % 8 == 0: a quad is wholly in or out
      if (row < p.rows) {
        if (p.half_out)
          *reinterpret_cast<uint2*>(reinterpret_cast<__half*>(y) + size_t(v) * p.rows + row) =
              make_uint2(pack_half2(sum.x, sum.y), pack_half2(sum.z, sum.w));
        else
          *reinterpret_cast<float4*>(y + size_t(v) * p.rows + row) = sum;
      }
    }
    cl.sync();  // no block leaves while the others still read its partial tile
    return;
  }
#endif
  // One slice of ỹ, fp32 or fp16 (the branch outside the store loops: inside them it changed
  // the kernel's register allocation and cost 1.2 us at 4096x4096).
  const size_t slice = size_t(blockIdx.y) * p.batch * p.rows;
  const auto store = [&](auto* y, auto convert) {
#pragma unroll
    for (int m = 0; m < 2; ++m) {
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        const int v = n * 8 + 2 * t;
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          const int r = tile0 * 8 + row_of(m, g, h >> 1), vv = v + (h & 1);
          if (r < p.rows && vv < p.batch) y[size_t(vv) * p.rows + r] = convert(acc[m][n][h]);
        }
      }
    }
  };
  if (p.half_out) store(reinterpret_cast<__half*>(p.yt) + slice, [](float a) { return __float2half_rn(a); });
  else store(p.yt + slice, [](float a) { return a; });
}

template <int kS1>
__global__ void __launch_bounds__(kTileThreads, 2) qmma_tiles_kernel(const TileParams p) {
  extern __shared__ __align__(16) unsigned char tsm_raw[];
  unsigned char* tsm = tsm_raw + ((1024 - (static_cast<uint32_t>(__cvta_generic_to_shared(tsm_raw)) & 1023)) & 1023);
  __half* buf = reinterpret_cast<__half*>(tsm);
  unsigned char* ring = tsm + size_t(2) * kTileBufHalfs * 2;
  uint2* scl = reinterpret_cast<uint2*>(ring + size_t(kTileRing) * kTileThreads * 32);
  uint32_t* tab = reinterpret_cast<uint32_t*>(scl + kSclWords);

  const int warp = threadIdx.x >> 5;
  const int tile0 = blockIdx.x * (kTileRows / 8);
  const int lt = threadIdx.x >> 3, lg = threadIdx.x & 7;  // this thread's decode item
  const int tile = tile0 + lt;
  const int total_steps = (p.groups + 7) / 8;
  const int s0 = blockIdx.y * p.steps_per_part;
  const int s1 = min(total_steps, s0 + p.steps_per_part);
  unsigned char* my_ring = ring + threadIdx.x * 32;
  auto slot = [&](int step) { return my_ring + ((step - s0) % kTileRing) * (kTileThreads * 32); };

  pdl_trigger();  // the output transform after this kernel may be scheduled (it waits for us)
  // Prologue: the codes of the first two steps, tables and scales (none of which the input
  // transform before this kernel writes: with programmatic dependent launch they overlap its
  // tail), then x̃ of the first step once that kernel is done.
  load_codes<kS1>(p, tile, s0 * 8 + lg, slot(s0));
  cp_async_commit();
  if (s0 + 1 < s1) load_codes<kS1>(p, tile, (s0 + 1) * 8 + lg, slot(s0 + 1));
  cp_async_commit();
  for (int i = threadIdx.x; i < kTableWords; i += kTileThreads) tab[i] = __ldg(p.tables + i);
  stage_scales(p, tile0, scl);
  pdl_wait();
  load_x(p, s0, buf + kTileAHalfs);
  cp_async_commit();
  __syncthreads();  // tables, scales
  const uint32_t lo_p = tab[kTableBytesLo], lo_r = tab[kTableBytesLo + 1];
  cp_async_wait<2>();  // this thread's codes of the first step
  decode_item<kS1>(tab, scl, slot(s0), tile < p.tiles && s0 * 8 + lg < p.groups, lt, lg, buf, lo_p, lo_r);

  float acc[2][8][4] = {};

#ifndef GLQ_TILES_WGMMA
  // ldmatrix addresses: A matrix (lane >> 3) of an m16k16 fragment: rows +8 for odd, k +8 for
  // the upper two; B matrices: vector tiles 2j (k low, high), 2j+1 (k low, high).
  const int lane = threadIdx.x & 31;
  const int mrow = (lane & 7) + ((lane >> 3) & 1) * 8, mchunk = lane >> 4;
  const int brow = (lane & 7) + (lane >> 4) * 8, bchunk = (lane >> 3) & 1;
#endif

  for (int step = s0; step < s1; ++step) {
    const int cur = (step - s0) & 1;
    const __half* a = buf + cur * kTileBufHalfs;
    const __half* xs = a + kTileAHalfs;
    if (step == s0) cp_async_wait<0>();  // x̃ of the first step: the last group of the prologue
    else cp_async_wait<1>();             // x̃ of this step (the codes of the next may still be in flight)
#ifdef GLQ_TILES_WGMMA
    fence_proxy_async();  // this thread's decode and copies of tile `cur`, before the tensor cores read them
#endif
    __syncthreads();  // tile `cur` decoded and copied; the other buffer free
    const bool more = step + 1 < s1;
    __half* na = buf + (cur ^ 1) * kTileBufHalfs;
    if (more) load_x(p, step + 1, na + kTileAHalfs);
    cp_async_commit();
    if (step + 2 < s1) load_codes<kS1>(p, tile, (step + 2) * 8 + lg, slot(step + 2));
    cp_async_commit();
#ifdef GLQ_TILES_WGMMA
    // Warpgroup wg: rows 128·wg + 64·m .. + 63 (m = 0, 1) by all 64 vectors, issued now and
    // waited for after the next tile's decode.
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const uint64_t db = sw128_desc(xs + kk * 16);
#pragma unroll
      for (int m = 0; m < 2; ++m)
        wgmma_m64n64k16(reinterpret_cast<float(&)[32]>(acc[m]), sw128_desc(a + ((warp >> 2) * 128 + m * 64) * kTileK + kk * 16), db);
    }
    wgmma_commit();
#else
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {  // k16 sub-steps: chunks 2kk, 2kk+1
      uint32_t af[2][4];
#pragma unroll
      for (int m = 0; m < 2; ++m) ldsm4(af[m], a + swz(warp * 32 + m * 16 + mrow, 2 * kk + mchunk));
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t bf[4];
        ldsm4(bf, xs + swz(j * 16 + brow, 2 * kk + bchunk));
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          mma16816(acc[m][2 * j], af[m][0], af[m][1], af[m][2], af[m][3], bf[0], bf[1]);
          mma16816(acc[m][2 * j + 1], af[m][0], af[m][1], af[m][2], af[m][3], bf[2], bf[3]);
        }
      }
    }
#endif
    if (more) {
      cp_async_wait<2>();  // this thread's codes of step + 1
      decode_item<kS1>(tab, scl, slot(step + 1), tile < p.tiles && (step + 1) * 8 + lg < p.groups, lt, lg, na, lo_p,
                       lo_r);
    }
#ifdef GLQ_TILES_WGMMA
    wgmma_wait_all();  // tile `cur` is rewritten after the next barrier
#endif
  }

  // Row (within the block's 256) of accumulator (m, h): mma.sync gives warp w rows 32w..32w+31
  // in m16 tiles; wgmma gives the warpgroup 128 rows in m64 tiles, warp w%4 16 rows of each.
#ifdef GLQ_TILES_WGMMA
  const int row_base = (warp >> 2) * 128 + (warp & 3) * 16, m_stride = 64;
#else
  const int row_base = warp * 32, m_stride = 16;
#endif
  store_tiles(p, acc, tsm, tile0, [&](int m, int g, int h) { return row_base + m * m_stride + g + h * 8; });
}


// ---------------------------------------------------------------------------------------------
// The register variant (sm_90 by default; GLQ_CUDA_TILES_RS=0/1): the decoded weights never
// touch shared memory.
//
// Why. The kernel above writes every decoded weight into its A tile and the tensor cores read it
// back: with the x̃ tile and the table lookups (random, across 32 banks) that is ~146 KB of
// shared-memory traffic per block and step, and it bounds that kernel. Here each thread decodes
// its codes straight into the A fragments of the multiply (wgmma's register operand on sm_90a,
// mma.sync elsewhere); only x̃ goes through shared memory, and the E8P16 tables are bank-private
// (as in qmma.cu: entry e of lane l at e·256 + 4l, its sign entry 128 bytes on), so that a
// random lookup is one conflict-free pass.
//
// Mapping. The A fragment of an m16k16 step holds, in lane (g, c) = (lane / 4, lane % 4), rows
// g and g + 8 at k = 2c, 2c+1, 2c+8, 2c+9 (wgmma: warp w of the warpgroup rows 16w.. of the m64
// tile, the same per warp). Rows and k may be permuted as long as the output rows are mapped back
// and x̃ is permuted alike, so:
//   - fragment rows g and g + 8 of a warp's 16-row slab are rows 2j and 2j + 1 (j = g & 3) of
//     tile g >> 2 of the slab: one 32-bit component of that tile's code word. The warp copies
//     the 32 words of a step (2 slabs × 2 tiles × 8 groups) into its own ring slot with one
//     16-byte cp.async per lane, and each lane reads its components from there;
//   - per block of 32 columns (4 groups) lane (g, c) decodes group c: its coordinate pairs 0 and
//     1 are k = (2c, 2c+1) and (2c+8, 2c+9) of the block's first k16 step, pairs 2 and 3 those of
//     the second;
//   - so pair q of group c of a block goes to chunk q (8 halfs), pair slot c of the block's 64
//     bytes of the x̃ tile: a 4×4 transpose of 4-byte pairs, done by the threads that stage x̃
//     (16-byte loads into registers, four 4-byte stores into the 128-byte-swizzled rows).
// Every code is decoded once, by one lane, per block of 64 vectors. Per step, each warpgroup's
// rows 0-63 multiply (asynchronously, wgmma) while its rows 64-127 are decoded.
constexpr int kRsTabBytes = 256 * 256;  // E8P16 selector and sign tables, interleaved, bank-private
constexpr size_t kRsSmem = size_t(2) * kTileXHalfs * 2 +           // x̃ tiles, double-buffered
                           size_t(kRsTabBytes) +                     // the private tables
                           size_t(kTileRing) * kTileThreads * 32 +  // code words
                           size_t(kSclWords) * 8 +                   // scales
                           size_t(kTableWords) * 4 +                 // E8R8 table, byte constants
                           1024;                                     // 114,824 bytes: 2 blocks per SM
static_assert(size_t(kTileVecs) * kPartialLd * 4 <= size_t(2) * kTileXHalfs * 2 + kRsTabBytes,
              "partial tile fits the x̃ tiles and the private tables");


// Local row (of the block's 256) of fragment row g (h = 0) or g + 8 (h = 1) of the slab at base.
__device__ __forceinline__ int rs_row(int base, int g, int h) { return base + 8 * (g >> 2) + 2 * (g & 3) + h; }

// The code words of step `step` for warp slab `tb` (the warp's first code tile): lane
// L = 16m + 8b + 4tt + c copies word (tile tb + 8m + tt, group 8·step + 4b + c) to wslot + 16L
// (stage 0) and + 512 + 16L (stage 1; E8R8 words are 8 bytes); zero where out of range. The lanes
// that decode a word read their component of it once the warp has waited for its copies.
// Code word idx of each stage to lane `lane`'s place in wslot: 16·lane (stage 0) and
// 512 + 16·lane (stage 1), zero-filled unless ok.
template <int kS1>
__device__ __forceinline__ void rs_copy_words(const TileParams& p, unsigned char* wslot, int lane, size_t idx, bool ok) {
  cp_async_zfill(wslot + 16 * lane, static_cast<const uint4*>(p.codes[0]) + idx, 16, ok);
  if (kS1 == 1) cp_async_zfill(wslot + 512 + 16 * lane, static_cast<const uint4*>(p.codes[1]) + idx, 16, ok);
  if (kS1 == 2) cp_async_zfill(wslot + 512 + 16 * lane, static_cast<const uint2*>(p.codes[1]) + idx, 8, ok);
}

template <int kS1>
__device__ __forceinline__ void rs_load_codes(const TileParams& p, int tb, int lane, int step, unsigned char* wslot) {
  const int m = lane >> 4, b = (lane >> 3) & 1, tt = (lane >> 2) & 1, c = lane & 3;
  const int tile = tb + 8 * m + tt, g = step * 8 + 4 * b + c;
  const bool ok = tile < p.tiles && g < p.groups;
  const size_t idx = ok ? size_t(tile) * p.groups + g : 0;
  rs_copy_words<kS1>(p, wslot, lane, idx, ok);
}

// The x̃ tile of step `step`, permuted: this thread's two 16-byte chunks (vector v, group
// 8·step + 4b + c; zero beyond B and beyond the columns) are loaded into registers, and
// rs_store_x puts pair q of each at chunk 4b + q, pair slot c of the tile (conflict-free: the
// eight (v, b) of a warp's store land in eight different swizzled chunks).
__device__ __forceinline__ void rs_fetch_x(const TileParams& p, int step, uint4 (&xr)[2]) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int e = threadIdx.x + i * kTileThreads;  // 0..511
    const int v = e >> 3, b = (e >> 2) & 1, c = e & 3;
    const int g = step * 8 + 4 * b + c;
    xr[i] = v < p.batch && g < p.groups ? __ldg(reinterpret_cast<const uint4*>(p.xt + size_t(v) * p.cols) + g)
                                        : make_uint4(0, 0, 0, 0);
  }
}
__device__ __forceinline__ void rs_store_x(const uint4 (&xr)[2], __half* xs) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int e = threadIdx.x + i * kTileThreads;
    const int v = e >> 3, b = (e >> 2) & 1, c = e & 3;
    uint32_t* row = reinterpret_cast<uint32_t*>(xs) + c;
    row[swz(v, 4 * b + 0) / 2] = xr[i].x;
    row[swz(v, 4 * b + 1) / 2] = xr[i].y;
    row[swz(v, 4 * b + 2) / 2] = xr[i].z;
    row[swz(v, 4 * b + 3) / 2] = xr[i].w;
  }
}

// The two E8P16 codes of word w (row A: low half, row B: high half) as 4 coordinate pairs each,
// d·scale ± scale/4 (added to a, b unless kFirst); sA, sB as in e8p_row.
template <bool kFirst>
__device__ __forceinline__ void rs_e8p(const unsigned char* ptab, uint32_t lane4, uint32_t w, uint32_t lo_p, uint2 sA,
                                       uint2 sB, uint32_t (&a)[4], uint32_t (&b)[4]) {
  uint32_t e0, e1;
  e8p_private_selectors(ptab, lane4, w, e0, e1);
  uint32_t d0[4], d1[4];
  decode_pairs(e0, lo_p, kE8pBytesHi, d0);
  decode_pairs(e1, lo_p, kE8pBytesHi, d1);
  // ±scale/4: the shift bit (bit 15 of each code) onto both sign bits.
  const uint32_t t0 = (byte_perm(w, 0u, 0x1010u) & 0x80008000u) ^ sA.y;
  const uint32_t t1 = (byte_perm(w, 0u, 0x3232u) & 0x80008000u) ^ sB.y;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    a[k] = hfma2(d0[k], sA.x, kFirst ? t0 : hfma2(t0, 0x3C003C00u, a[k]));
    b[k] = hfma2(d1[k], sB.x, kFirst ? t1 : hfma2(t1, 0x3C003C00u, b[k]));
  }
}

// The two E8R8 codes (bytes selA, selB of w: PRMT selectors 0x444k) added as d·scale.
__device__ __forceinline__ void rs_e8r(const uint32_t* tabw, uint32_t w, uint32_t selA, uint32_t selB, uint32_t lo_r,
                                      uint2 sA, uint2 sB, uint32_t (&a)[4], uint32_t (&b)[4]) {
  uint32_t d0[4], d1[4];
  decode_pairs(tabw[kTableE8r8Sel + byte_perm(w, 0u, selA)], lo_r, kE8rBytesHi, d0);
  decode_pairs(tabw[kTableE8r8Sel + byte_perm(w, 0u, selB)], lo_r, kE8rBytesHi, d1);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    a[k] = hfma2(d0[k], sA.x, a[k]);
    b[k] = hfma2(d1[k], sB.x, b[k]);
  }
}

// The register kernels' shared memory: the bank-private E8P16 tables (entry i/16: 8 uint4 of
// selector words, 8 of sign words, each word repeated for the four lanes of a bank quad) and the
// plain tables (E8R8, byte constants).
__device__ __forceinline__ void rs_stage_tables(const TileParams& p, unsigned char* ptab, uint32_t* tabw) {
  for (int i = threadIdx.x; i < kTableWords; i += kTileThreads) tabw[i] = __ldg(p.tables + i);
  for (int i = threadIdx.x; i < kRsTabBytes / 16; i += kTileThreads) {
    const uint32_t v = __ldg(p.tables + ((i & 8) ? kTableE8pSign : kTableE8pSel) + (i >> 4));
    reinterpret_cast<uint4*>(ptab)[i] = make_uint4(v, v, v, v);
  }
}

// What a lane decodes, and with what (the register kernels' mapping above).
struct RsLane {
  const unsigned char* ptab;
  const uint32_t* tabw;
  const uint2* scl;
  uint32_t lane4, lo_p, lo_r, selA, selB;
  int g, j, rd;
};

// The scales of a lane's two rows of slab m (local rows base + 64m..), per stage.
struct RsScales {
  uint2 a0, b0, a1, b1;
};

template <int kS1>
__device__ __forceinline__ RsScales rs_scales(const RsLane& L, int base, int m) {
  const int rA = rs_row(base + 64 * m, L.g, 0);
  RsScales s;
  s.a0 = L.scl[scl_at(rA, 0)];
  s.b0 = L.scl[scl_at(rA + 1, 0)];
  if (kS1) {
    s.a1 = L.scl[scl_at(rA, 1)];
    s.b1 = L.scl[scl_at(rA + 1, 1)];
  }
  return s;
}

// A fragments of one slab for one step: af[kk][R] (k16 step kk = 2b + h, register R of the mma
// layout), from the lane's code words at wd (+ 128b for 32-column block b, + 512 for stage 1).
template <int kS1>
__device__ __forceinline__ void rs_decode_words(const RsLane& L, const unsigned char* wd, const RsScales& sc,
                                                uint32_t (&af)[4][4]) {
#pragma unroll
  for (int b = 0; b < 2; ++b) {
    uint32_t ra[4], rb[4];
    const unsigned char* w = wd + 128 * b;
    rs_e8p<true>(L.ptab, L.lane4, *reinterpret_cast<const uint32_t*>(w), L.lo_p, sc.a0, sc.b0, ra, rb);
    if (kS1 == 1)
      rs_e8p<false>(L.ptab, L.lane4, *reinterpret_cast<const uint32_t*>(w + 512), L.lo_p, sc.a1, sc.b1, ra, rb);
    if (kS1 == 2)  // 8-byte words at the same 16-byte slots: rows 2j, 2j + 1 in bytes 2j, 2j + 1
      rs_e8r(L.tabw, *reinterpret_cast<const uint32_t*>(w + 512 - 4 * L.j + 4 * (L.j >> 1)), L.selA, L.selB, L.lo_r,
             sc.a1, sc.b1, ra, rb);
    af[2 * b][0] = ra[0];
    af[2 * b][1] = rb[0];
    af[2 * b][2] = ra[1];
    af[2 * b][3] = rb[1];
    af[2 * b + 1][0] = ra[2];
    af[2 * b + 1][1] = rb[2];
    af[2 * b + 1][2] = ra[3];
    af[2 * b + 1][3] = rb[3];
  }
}

// A fragments of slab m (local rows base + 64m..) for one step from the step's code words `sl`.
template <int kS1>
__device__ __forceinline__ void rs_decode(const RsLane& L, const unsigned char* sl, int base, int m,
                                          uint32_t (&af)[4][4]) {
  rs_decode_words<kS1>(L, sl + 256 * m + L.rd, rs_scales<kS1>(L, base, m), af);
}

template <int kS1>
__global__ void __launch_bounds__(kTileThreads, 2) qmma_tiles_rs_kernel(const TileParams p) {
  extern __shared__ __align__(16) unsigned char tsm_raw[];
  unsigned char* tsm = tsm_raw + ((1024 - (static_cast<uint32_t>(__cvta_generic_to_shared(tsm_raw)) & 1023)) & 1023);
  __half* xbuf = reinterpret_cast<__half*>(tsm);
  unsigned char* ptab = tsm + size_t(2) * kTileXHalfs * 2;
  unsigned char* ring = ptab + kRsTabBytes;
  uint2* scl = reinterpret_cast<uint2*>(ring + size_t(kTileRing) * kTileThreads * 32);
  uint32_t* tabw = reinterpret_cast<uint32_t*>(scl + kSclWords);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3, j = g & 3;
  const int tile0 = blockIdx.x * (kTileRows / 8);
  // This warp's 16-row slab of each m64 tile (m = 0: base, m = 1: base + 64); its fragment
  // rows g, g + 8 are rows 2j, 2j + 1 of code tile tb + (g >> 2) (+ 8 for m = 1).
  const int base = (warp >> 2) * 128 + (warp & 3) * 16;
  const int tb = tile0 + base / 8;  // the warp's first code tile
  const uint32_t lane4 = uint32_t(lane) * 4;
  const int total_steps = (p.groups + 7) / 8;
  const int s0 = blockIdx.y * p.steps_per_part;
  const int s1 = min(total_steps, s0 + p.steps_per_part);
  unsigned char* warp_ring = ring + warp * 1024;  // per slot: 8 warps × (512 + 512) bytes
  auto slot = [&](int step) { return warp_ring + ((step - s0) % kTileRing) * (kTileThreads * 32); };
  // This lane's word components: (m, b) word at 16·(16m + 8b + 4(g >> 2) + c) + 4j.
  const int rd = 16 * (4 * (g >> 2) + c) + 4 * j;

  pdl_trigger();
  // Prologue: the codes of the first two steps, the tables and scales (nothing the input
  // transform before this kernel writes), then x̃ of the first step once that kernel is done.
  rs_load_codes<kS1>(p, tb, lane, s0, slot(s0));
  cp_async_commit();
  if (s0 + 1 < s1) rs_load_codes<kS1>(p, tb, lane, s0 + 1, slot(s0 + 1));
  cp_async_commit();
  rs_stage_tables(p, ptab, tabw);
  stage_scales(p, tile0, scl);
  pdl_wait();
  {
    uint4 xr[2];
    rs_fetch_x(p, s0, xr);
    rs_store_x(xr, xbuf);
  }
  __syncthreads();  // tables, scales, the first x̃ tile
  const uint32_t selA = 0x4440u + 2 * (j & 1);  // E8R8: bytes of rows 2j, 2j + 1
  const RsLane L{ptab, tabw, scl, lane4, tabw[kTableBytesLo], tabw[kTableBytesLo + 1], selA, selA + 1, g, j, rd};

  float acc[2][8][4] = {};

#ifndef GLQ_TILES_WGMMA
  // ldmatrix addresses of the B matrices: vector tiles 2jj (k low, high), 2jj+1 (k low, high).
  const int brow = (lane & 7) + (lane >> 4) * 8, bchunk = (lane >> 3) & 1;
#endif

  for (int step = s0; step < s1; ++step) {
    const int cur = (step - s0) & 1;
    cp_async_wait<1>();  // this step's codes (the next step's may still be in flight)
    __syncwarp();        // ... and those the other lanes copied
    // A fragments of this step: m, k16 step kk = 2b + h, register (R0..R3 of the mma layout).
    uint32_t af[2][4][4];
    const unsigned char* sl = slot(step);
    const auto decode = [&](int m) { rs_decode<kS1>(L, sl, base, m, af[m]); };
    const __half* xs = xbuf + cur * kTileXHalfs;
    uint4 xr[2];  // x̃ of the next step, stored into the other tile once this step's multiplies are issued
#ifdef GLQ_TILES_WGMMA
    decode(0);
    fence_proxy_async();  // this thread's stores of x̃ tile `cur`, before the tensor cores read them
    __syncthreads();      // x̃ tile `cur` complete; the other one free (its multiplies were waited for)
    if (step + 1 < s1) rs_fetch_x(p, step + 1, xr);
    if (step + 2 < s1) rs_load_codes<kS1>(p, tb, lane, step + 2, slot(step + 2));
    cp_async_commit();
    // Rows 0-63 of the warpgroup multiply while rows 64-127 are decoded.
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      wgmma_rs_m64n64k16(reinterpret_cast<float(&)[32]>(acc[0]), af[0][kk], sw128_desc(xs + kk * 16));
    wgmma_commit();
    decode(1);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      wgmma_rs_m64n64k16(reinterpret_cast<float(&)[32]>(acc[1]), af[1][kk], sw128_desc(xs + kk * 16));
    wgmma_commit();
    if (step + 1 < s1) rs_store_x(xr, xbuf + (cur ^ 1) * kTileXHalfs);
    wgmma_wait_all();  // af is rewritten by the next step's decode, tile `cur` by the stores after the next barrier
#else
    decode(0);
    decode(1);
    __syncthreads();  // x̃ tile `cur` complete; the other one free
    if (step + 1 < s1) rs_fetch_x(p, step + 1, xr);
    if (step + 2 < s1) rs_load_codes<kS1>(p, tb, lane, step + 2, slot(step + 2));
    cp_async_commit();
    mma_step_x(acc, af, xs, brow, bchunk);
    if (step + 1 < s1) rs_store_x(xr, xbuf + (cur ^ 1) * kTileXHalfs);
#endif
  }
  store_tiles(p, acc, tsm, tile0, [&](int m, int g, int h) { return rs_row(base + 64 * m, g, h); });
}

// ---- Many vectors (prefill): the register kernel as a GEMM ----
//
// More than kMmaMaxBatch vectors took the weights through memory: a kernel wrote them dequantized
// in fp16 (rows·cols·2 bytes), then cuBLAS multiplied. qgemm_rs_kernel multiplies straight from
// the codes instead, with the register kernel's decode and mapping: a block owns 128 rows and
// kGemmVecs = 256 vectors and walks all the columns; each of its two warpgroups owns a 64-row
// slab and multiplies it by the 256-vector x̃ tile with wgmma m64n256k16 (128 accumulators per
// thread). Every code is decoded once per 256 vectors, one step ahead: a warpgroup decodes step
// s+1 into its second set of A fragments while the tensor cores multiply step s. x̃ arrives
// already in the fragments' order (the input transform permutes it: PrepareParams::permute) and
// goes by cp.async into four tiles, two steps ahead (a tile is rewritten two steps after its
// multiplies, which both warpgroups have waited for by then); the codes come through a ring of
// three slots, two steps ahead. ỹ leaves in fp16 (batch, rows) through shared memory, for the
// output transform, as the GEMM's did. Elsewhere than sm_90a the same kernel multiplies with
// mma.sync.
constexpr int kGemmThreads = kTileThreads;        // 8 warps: 2 warpgroups of one 64-row slab
constexpr int kGemmRows = 128;
constexpr int kGemmVecs = 256;
constexpr int kGemmXHalfs = kGemmVecs * kTileK;  // 16384 (32 KB)
constexpr int kGemmXTiles = 4;                    // a power of two
constexpr int kGemmRing = 3;                      // code-word slots per warp (1 KB each)
constexpr int kGemmOutLd = kGemmRows + 8;         // halfs per vector of the staged ỹ tile
constexpr size_t kGemmSmem = size_t(kGemmXTiles) * kGemmXHalfs * 2 +  // x̃ tiles
                             size_t(kRsTabBytes) +                     // the private tables
                             size_t(kGemmRing) * (kGemmThreads / 32) * 1024 +  // code words
                             size_t(kSclWords) * 8 +                   // scales
                             size_t(kTableWords) * 4 +                 // E8R8 table, byte constants
                             1024;                                     // 229,640 bytes: one block per SM
static_assert(size_t(kGemmVecs) * kGemmOutLd * 2 <= size_t(kGemmXTiles) * kGemmXHalfs * 2,
              "the staged ỹ tile fits the x̃ tiles");

#ifdef GLQ_TILES_WGMMA
// The 128 fp32 accumulators of an m64n256 wgmma.
#define GLQ_WGMMA_D128 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define GLQ_WGMMA_D128_OPERANDS(d) \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
  "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
  "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
  "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
  "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
  "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
  "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
  "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
  "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// d (m64n256, fp32) += A (64×16, register fragments as wgmma_rs_m64n64k16) · B (256×16, K-major)ᵀ.
__device__ __forceinline__ void wgmma_rs_m64n256k16(float (&d)[128], const uint32_t (&a)[4], uint64_t db) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 " GLQ_WGMMA_D128 ", {%128, %129, %130, %131}, %132, 1, 1, 1, 0;"
               : GLQ_WGMMA_D128_OPERANDS(d)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db));
}
// Until at most one committed group of wgmma is in flight.
__device__ __forceinline__ void wgmma_wait_1() { asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory"); }
#endif

template <int kS1>
__global__ void __launch_bounds__(kGemmThreads, 1) qgemm_rs_kernel(const TileParams p) {
  extern __shared__ __align__(16) unsigned char tsm_raw[];
  unsigned char* tsm = tsm_raw + ((1024 - (static_cast<uint32_t>(__cvta_generic_to_shared(tsm_raw)) & 1023)) & 1023);
  __half* xbuf = reinterpret_cast<__half*>(tsm);
  unsigned char* ptab = tsm + size_t(kGemmXTiles) * kGemmXHalfs * 2;
  unsigned char* ring = ptab + kRsTabBytes;
  uint2* scl = reinterpret_cast<uint2*>(ring + size_t(kGemmRing) * (kGemmThreads / 32) * 1024);
  uint32_t* tabw = reinterpret_cast<uint32_t*>(scl + kSclWords);
  constexpr int kSlotBytes = kGemmThreads / 32 * 1024, kXBytes = kGemmXHalfs * 2;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, c = lane & 3, j = g & 3;
  const int tile0 = blockIdx.x * (kGemmRows / 8);
  const int v0 = blockIdx.y * kGemmVecs;
  const int base = warp * 16;  // this warp's 16-row slab (warpgroup w: rows 64w..64w+63)
  const int tb = tile0 + base / 8;
  const int steps = (p.groups + 7) / 8;
  unsigned char* warp_ring = ring + warp * 1024;
  const int rd = 16 * (4 * (g >> 2) + c) + 4 * j;
  // x̃ (already permuted, PrepareParams::permute) by cp.async, coalesced: chunk e = threadIdx.x +
  // 256i of a step is vector v0 + v + 32i (v = threadIdx.x / 8), group 8·step + ch (ch =
  // threadIdx.x % 8), at row v + 32i, chunk ch ^ (v & 7) of the tile (the 128-byte swizzle; v + 32i
  // has v's low bits).
  const int xv = threadIdx.x >> 3, xch = threadIdx.x & 7;
  const int x_left = p.batch - (v0 + xv);  // vectors from this thread's first on
  const __half* x_src = p.xt + size_t(x_left > 0 ? v0 + xv : 0) * p.cols + 8 * xch;
  const size_t x_far = size_t(32) * p.cols;  // 32 vectors on, in halfs
  const uint32_t x_dst = uint32_t(xv * 128 + ((xch ^ (xv & 7)) << 4));
  const auto load_x = [&](int step, unsigned char* tile) {
    const bool okg = step * 8 + xch < p.groups;
    const __half* src = x_src + step * 64;
#pragma unroll
    for (int i = 0; i < kGemmVecs / 32; ++i)
    {
      const bool ok = okg && x_left > 32 * i;
      cp_async_zfill(tile + x_dst + 4096 * i, ok ? src + i * x_far : p.xt, 16, ok);
    }
  };
  // The codes, as rs_load_codes<kS1, 1>: lane L < 16 copies word (tile tb + tt, group
  // 8·step + 4b + c) of each stage.
  const int cw_tile = tb + ((lane >> 2) & 1), cw_g = 4 * ((lane >> 3) & 1) + (lane & 3);
  const bool c_ok = lane < 16 && cw_tile < p.tiles;
  const size_t c_idx = c_ok ? size_t(cw_tile) * p.groups + cw_g : 0;
  const auto load_codes = [&](int step, unsigned char* wslot) {
    if (lane >= 16) return;
    const bool ok = c_ok && step * 8 + cw_g < p.groups;
    const size_t idx = c_idx + (ok ? step * 8 : 0);
    rs_copy_words<kS1>(p, wslot, lane, idx, ok);
  };

  pdl_trigger();
  // Commit group s: the codes of step s (and from the wait on, its x̃).
  load_codes(0, warp_ring);
  rs_stage_tables(p, ptab, tabw);
  stage_scales(p, tile0, scl);
  pdl_wait();
  load_x(0, tsm);
  cp_async_commit();
  if (1 < steps) {
    load_codes(1, warp_ring + kSlotBytes);
    load_x(1, tsm + kXBytes);
  }
  cp_async_commit();
  cp_async_wait<1>();  // step 0
  __syncthreads();     // tables, scales, every thread's copies of step 0
  const uint32_t selA = 0x4440u + 2 * (j & 1);
  const RsLane L{ptab, tabw, scl, uint32_t(lane) * 4, tabw[kTableBytesLo], tabw[kTableBytesLo + 1], selA, selA + 1, g, j, rd};

  float acc[32][4] = {};
  uint32_t af0[4][4], af1[4][4];
  const RsScales sc = rs_scales<kS1>(L, base, 0);
  const unsigned char* lane_words = warp_ring + rd;
  rs_decode_words<kS1>(L, lane_words, sc, af0);

  // One step with fragments a (decoded) and the next step's into an (two steps an iteration, so
  // that both sets stay in registers). rx, rc: the step's x̃ tile and code slot.
#ifdef GLQ_TILES_WGMMA
  const uint64_t desc0 = sw128_desc(xbuf);
  const auto run_step = [&](int step, int rx, int rc, const uint32_t (&a)[4][4], uint32_t (&an)[4][4]) {
    fence_proxy_async();  // the copies of x̃ tile rx (waited for), before the tensor cores read them
    __syncthreads();      // every thread's copies of step `step`; x̃ tile rx + 2 read by no pending multiply;
                          // every lane done with code slot rc + 2 (step - 1's)
    if (step + 2 < steps) {
      const int rx2 = (rx + 2) & (kGemmXTiles - 1), rc2 = rc == 0 ? 2 : rc - 1;
      load_codes(step + 2, warp_ring + rc2 * kSlotBytes);
      load_x(step + 2, tsm + rx2 * kXBytes);
    }
    cp_async_commit();
    wgmma_fence();
    const uint64_t d = desc0 + uint64_t(rx * (kXBytes >> 4));
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_rs_m64n256k16(reinterpret_cast<float(&)[128]>(acc), a[kk], d + 2 * kk);
    wgmma_commit();
    if (step + 1 < steps) {
      wgmma_wait_1();      // the step before: its A fragments (an) free
      cp_async_wait<1>();  // step + 1's codes and x̃
      __syncwarp();        // ... and the codes the other lanes copied
      rs_decode_words<kS1>(L, lane_words + (rc == 2 ? 0 : rc + 1) * kSlotBytes, sc, an);
    }
  };
#else
  // ldmatrix addresses of the B matrices: vector tiles 2jj (k low, high), 2jj+1 (k low, high).
  const int brow = (lane & 7) + (lane >> 4) * 8, bchunk = (lane >> 3) & 1;
  const auto run_step = [&](int step, int rx, int rc, const uint32_t (&a)[4][4], uint32_t (&an)[4][4]) {
    const __half* xs = xbuf + rx * kGemmXHalfs;
    __syncthreads();
    if (step + 2 < steps) {
      const int rx2 = (rx + 2) & (kGemmXTiles - 1), rc2 = rc == 0 ? 2 : rc - 1;
      load_codes(step + 2, warp_ring + rc2 * kSlotBytes);
      load_x(step + 2, tsm + rx2 * kXBytes);
    }
    cp_async_commit();
    mma_step_x(reinterpret_cast<float(&)[1][32][4]>(acc), reinterpret_cast<const uint32_t(&)[1][4][4]>(a), xs, brow,
               bchunk);
    if (step + 1 < steps) {
      cp_async_wait<1>();
      __syncwarp();
      rs_decode_words<kS1>(L, lane_words + (rc == 2 ? 0 : rc + 1) * kSlotBytes, sc, an);
    }
  };
#endif
  int rx = 0, rc = 0;
#pragma unroll 1
  for (int step = 0; step < steps; step += 2) {
    const int rx1 = (rx + 1) & (kGemmXTiles - 1), rc1 = rc == 2 ? 0 : rc + 1;
    run_step(step, rx, rc, af0, af1);
    if (step + 1 < steps) run_step(step + 1, rx1, rc1, af1, af0);
    rx = (rx + 2) & (kGemmXTiles - 1);
    rc = rc1 == 2 ? 0 : rc1 + 1;
  }
#ifdef GLQ_TILES_WGMMA
  wgmma_wait_all();
#endif

  // ỹ out: the tile (kGemmVecs, 128 rows) in fp16 through shared memory (the x̃ tiles, which every
  // warp is done with), then 16-byte stores along the rows.
  cp_async_wait<0>();
  __syncthreads();
  __half* out = reinterpret_cast<__half*>(tsm);
#pragma unroll
  for (int n = 0; n < 32; ++n)
#pragma unroll
    for (int e = 0; e < 2; ++e)  // rows rs_row(.., 0) and (.., 1) are adjacent: one half2
      *reinterpret_cast<uint32_t*>(out + (n * 8 + 2 * c + e) * kGemmOutLd + rs_row(base, g, 0)) =
          pack_half2(acc[n][e], acc[n][2 + e]);
  __syncthreads();
  __half* y = reinterpret_cast<__half*>(p.yt);
  for (int e = threadIdx.x; e < kGemmVecs * (kGemmRows / 8); e += kGemmThreads) {
    const int v = e / (kGemmRows / 8), r8 = (e % (kGemmRows / 8)) * 8;
    const int row = tile0 * 8 + r8;  // rows % 8 == 0: a chunk is wholly in or out
    if (v0 + v < p.batch && row < p.rows)
      *reinterpret_cast<uint4*>(y + size_t(v0 + v) * p.rows + row) = *reinterpret_cast<const uint4*>(out + v * kGemmOutLd + r8);
  }
}

void set_tiles_smem_attribute() {
  static const bool attr = [] {
    for (const void* k : {reinterpret_cast<const void*>(qmma_tiles_kernel<0>),
                          reinterpret_cast<const void*>(qmma_tiles_kernel<1>),
                          reinterpret_cast<const void*>(qmma_tiles_kernel<2>)})
      GLQ_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kTileSmem)));
    for (const void* k : {reinterpret_cast<const void*>(qmma_tiles_rs_kernel<0>),
                          reinterpret_cast<const void*>(qmma_tiles_rs_kernel<1>),
                          reinterpret_cast<const void*>(qmma_tiles_rs_kernel<2>)})
      GLQ_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kRsSmem)));
    for (const void* k : {reinterpret_cast<const void*>(qgemm_rs_kernel<0>),
                          reinterpret_cast<const void*>(qgemm_rs_kernel<1>),
                          reinterpret_cast<const void*>(qgemm_rs_kernel<2>)})
      GLQ_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kGemmSmem)));
    return true;
  }();
  (void)attr;
}

std::atomic<int> g_tiles_registers{-1};

}  // namespace

void set_tiles_registers(int on) { g_tiles_registers.store(on < 0 ? -1 : on != 0); }

bool tiles_registers(const DeviceInfo& info) {
  const int forced = g_tiles_registers.load();
  if (forced >= 0) return forced != 0;
  static const int env = env_switch("GLQ_CUDA_TILES_RS");  // 0, 1, or -1: by the architecture
  return env >= 0 ? env != 0 : info.cc_major == 9;
}

bool qmma_tiles_supported(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch) {
  if (batch < 1 || batch > kTileVecs || w.codes.empty() || w.codes.size() > 2 || info.cc_major < 8) return false;
  if (w.codebooks[0] != codec::Codebook::E8P16) return false;
  if (info.smem_optin < std::max(kTileSmem, kRsSmem)) return false;
  if (w.cols % 8 != 0 || w.rows % 8 != 0) return false;
  static const int min_batch = env_min_batch("GLQ_CUDA_QMMA_TILES", "GLQ_CUDA_QMMA_TILES_MIN", kTilesMinBatch);
  return batch >= min_batch;
}

namespace {

struct TilesSplit {
  int ranges;   // column ranges (grid.y)
  int cluster;  // column ranges per cluster
};

// Column ranges per cluster: all of them (one slice of ỹ) where there are 2 to 8
// (GLQ_CUDA_TILES_CLUSTER=N: to N) and that many clusters fit on the device at once
// (cudaOccupancyMaxActiveClusters: a cluster runs within one GPC); otherwise none. Measured on
// an H100 at 64 vectors (docs/cuda.md): one slice instead of 2 or 4 gains 2-8 us (14336x4096,
// 28672x4096), while clusters of 8 of 16 ranges (2 slices instead of 16) lose 1.5-2.5 us
// (4096x4096, 4096x14336): the output transform reads the slices from L2 at little cost.
int tiles_cluster(const DeviceInfo& info, int ranges, int row_blocks) {
  static const int cap = std::clamp(env_int("GLQ_CUDA_TILES_CLUSTER", 8), 1, 8);
  static const bool sm90_code = compiled_for_sm90(qmma_tiles_kernel<0>) && compiled_for_sm90(qmma_tiles_rs_kernel<0>);
  if (info.cc_major < 9 || !sm90_code || ranges < 2 || ranges > cap) return 1;
  // Clusters of each size that fit at once, per kernel variant, found once (thread-safe static
  // initialisation; each variant's resources are the same for every shape).
  const auto active_clusters = [](auto* kernel, size_t smem) {
    std::array<int, 9> a{};
    set_tiles_smem_attribute();
    for (int c = 2; c <= 8; ++c) {
      cudaLaunchConfig_t config{};
      config.gridDim = dim3(1, c);
      config.blockDim = dim3(kTileThreads);
      config.dynamicSmemBytes = smem;
      cudaLaunchAttribute attr;
      attr.id = cudaLaunchAttributeClusterDimension;
      attr.val.clusterDim.x = 1;
      attr.val.clusterDim.y = c;
      attr.val.clusterDim.z = 1;
      config.attrs = &attr;
      config.numAttrs = 1;
      GLQ_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&a[c], kernel, &config));
    }
    return a;
  };
  if (tiles_registers(info)) {
    static const std::array<int, 9> active = active_clusters(qmma_tiles_rs_kernel<0>, kRsSmem);
    return active[ranges] >= row_blocks ? ranges : 1;
  }
  static const std::array<int, 9> active = active_clusters(qmma_tiles_kernel<0>, kTileSmem);
  return active[ranges] >= row_blocks ? ranges : 1;
}

TilesSplit tiles_split(const DeviceInfo& info, int rows, int cols) {
  const int row_blocks = (rows + kTileRows - 1) / kTileRows;
  const int steps = (cols / 8 + 7) / 8;
  // Two blocks per SM: at most 2·SMs blocks in all (one wave: a few blocks of a second wave
  // cost as much as the first, 58.7 against 44.6 us for 14336x4096 at 64 vectors on an H100),
  // column ranges of at least 4 steps (GLQ_CUDA_QMMA_TILES_PARTS=N asks for N ranges instead).
  static const int forced = std::max(0, env_int("GLQ_CUDA_QMMA_TILES_PARTS", 0));  // 0: the default
  const int want = forced ? forced : std::max(1, 2 * std::max(1, info.sm_count) / row_blocks);
  const int parts = std::clamp(want, 1, std::max(1, steps / 4));
  const int per = (steps + parts - 1) / parts;
  const int ranges = (steps + per - 1) / per;  // no empty range
  return {ranges, tiles_cluster(info, ranges, row_blocks)};
}

}  // namespace

int qmma_tiles_parts(const DeviceInfo& info, int rows, int cols) {
  const TilesSplit s = tiles_split(info, rows, cols);
  return s.ranges / s.cluster;
}

void launch_qmma_tiles(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                       const uint16_t* xt_half, float* yt_parts, int batch, int parts, cudaStream_t stream,
                       bool half_parts) {
  if (!qmma_tiles_supported(info, w, batch)) throw_invalid("launch_qmma_tiles: unsupported shape or batch");
  TileParams p{};
  static_cast<StageArgs&>(p) = stage_args(w, "qmma_tiles");
  p.tables = tables;
  p.xt = reinterpret_cast<const __half*>(xt_half);
  p.yt = yt_parts;
  p.half_out = half_parts ? 1 : 0;
  p.rows = w.rows;
  p.cols = w.cols;
  p.batch = batch;
  const TilesSplit split = tiles_split(info, w.rows, w.cols);
  if (parts != split.ranges / split.cluster)
    throw_invalid("launch_qmma_tiles: " + std::to_string(parts) + " slices of ỹ asked, the split writes " +
                  std::to_string(split.ranges / split.cluster) + " (qmma_tiles_parts)");
  const int steps = (w.groups + 7) / 8;
  p.steps_per_part = (steps + split.ranges - 1) / split.ranges;
  p.cluster = split.cluster;
  set_tiles_smem_attribute();
  const dim3 grid((w.rows + kTileRows - 1) / kTileRows, split.ranges);
  const bool pdl = pdl_enabled(info);
  const int k = p.stages == 1 ? 0 : w.codebooks[1] == codec::Codebook::E8P16 ? 1 : 2;
  if (tiles_registers(info)) {
    auto* kernel = k == 0 ? qmma_tiles_rs_kernel<0> : k == 1 ? qmma_tiles_rs_kernel<1> : qmma_tiles_rs_kernel<2>;
    launch_checked_cluster(kernel, grid, dim3(kTileThreads), kRsSmem, stream, pdl, dim3(1, split.cluster, 1),
                           "qmma_tiles_rs_kernel", p);
    return;
  }
  auto* kernel = k == 0 ? qmma_tiles_kernel<0> : k == 1 ? qmma_tiles_kernel<1> : qmma_tiles_kernel<2>;
  launch_checked_cluster(kernel, grid, dim3(kTileThreads), kTileSmem, stream, pdl, dim3(1, split.cluster, 1),
                         "qmma_tiles_kernel", p);
}

void launch_qmma_tiles_for_finish(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                                  const uint16_t* xt_half, float* yt_parts, int parts, FinishParams& f, int batch,
                                  cudaStream_t stream) {
  f.yt = yt_parts;
  f.yt_half = nullptr;
  f.parts = parts;
  f.part_stride = size_t(batch) * w.rows;
  const bool half_parts = tc_finish_half_parts(info, f, batch);
  launch_qmma_tiles(info, w, tables, xt_half, yt_parts, batch, parts, stream, half_parts);
  if (half_parts) {
    f.yt = nullptr;
    f.yt_half = reinterpret_cast<const uint16_t*>(yt_parts);
  }
}

namespace {
std::atomic<int> g_qgemm{-1};
}  // namespace

void set_qgemm(int on) { g_qgemm.store(on < 0 ? -1 : on != 0); }

bool qgemm_supported(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int batch) {
  // Opt-in: on an H100 it was measured slower than the dequantization + cuBLAS (docs/cuda.md),
  // but it needs no rows·cols·2-byte scratch for the dequantized weights.
  const int forced = g_qgemm.load();
  static const bool env_on = env_is("GLQ_CUDA_QGEMM", "1");
  if (forced == 0 || (forced < 0 && !env_on)) return false;
  if (info.cc_major < 8 || batch < 1 || w.codes.empty() || w.codes.size() > 2) return false;
  if (w.codebooks[0] != codec::Codebook::E8P16) return false;
  if (w.codes.size() == 2 && w.codebooks[1] != codec::Codebook::E8P16 && w.codebooks[1] != codec::Codebook::E8R8)
    return false;
  if (info.smem_optin < kGemmSmem) return false;
  return w.cols % 8 == 0 && w.rows % 8 == 0;
}

void launch_qgemm(const DeviceInfo& info, const DeviceQuantizedMatrix& w, const uint32_t* tables,
                  const uint16_t* xt_half, uint16_t* yt_half, int batch, cudaStream_t stream) {
  if (!qgemm_supported(info, w, batch)) throw_invalid("launch_qgemm: unsupported device, matrix or batch");
  TileParams p{};
  static_cast<StageArgs&>(p) = stage_args(w, "qgemm");
  p.tables = tables;
  p.xt = reinterpret_cast<const __half*>(xt_half);
  p.yt = reinterpret_cast<float*>(yt_half);
  p.half_out = 1;
  p.rows = w.rows;
  p.cols = w.cols;
  p.batch = batch;
  p.steps_per_part = (w.groups + 7) / 8;
  p.cluster = 1;
  set_tiles_smem_attribute();
  const dim3 grid((w.rows + kGemmRows - 1) / kGemmRows, (batch + kGemmVecs - 1) / kGemmVecs);
  const int k = p.stages == 1 ? 0 : w.codebooks[1] == codec::Codebook::E8P16 ? 1 : 2;
  auto* kernel = k == 0 ? qgemm_rs_kernel<0> : k == 1 ? qgemm_rs_kernel<1> : qgemm_rs_kernel<2>;
  launch_checked(kernel, grid, dim3(kGemmThreads), kGemmSmem, stream, pdl_enabled(info), "qgemm_rs_kernel", p);
}

}  // namespace glq::cuda::detail
