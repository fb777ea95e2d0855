// The GPU decoder engine (see glq/kernels/cuda_engine.hpp): its own kernels (embedding, RoPE
// with the KV-cache write, chunked attention, greedy sampling) and the orchestration.
//
// Attention is split over chunks of 32 to 256 keys, by the token's context length (flash-decoding;
// chunk_keys): at batch 1 a single block per head would read a whole head's cache alone and
// leave most SMs idle. Each (token, kv head, chunk) block serves the query heads that share the
// kv head (grouped-query attention), so each key and value row is read once; the last block of a
// token's chunks merges their partials (see attention_kernel). The grid covers the cache's
// capacity in the shortest chunks, so a decode graph stays valid as the context grows (chunks
// past the current length exit at once); one graph per kernel kind (attention_kind).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cmath>
#include <string>

#include "glq/error.hpp"
#include "glq/kernels/cuda_engine.hpp"
#include "glq/transform/hadamard.hpp"
#include "kernels/cuda/launch.hpp"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/qgemv_ring.cuh"

namespace glq::cuda {

namespace {

constexpr int kAttnMinChunk = 32;     // keys per attention block: 32, 64, 128 or 256 (chunk_keys)
constexpr int kAttnMaxChunk = 256;
constexpr int kAttnTargetChunks = 24; // chunk_keys: the shortest chunks that make at most this many
constexpr int kAttnGroup = 8;         // query heads per attention block (of one kv head)
constexpr int kAttnMaxHeadDim = 256;
constexpr int kMaxStepTokens = 512;   // longer inputs are run in pieces of this many tokens

void check_cublas(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw Error(ErrorKind::Cuda, std::string(what) + ": " + cublasGetStatusString(st));
}

// ---- kernels --------------------------------------------------------------------------------

__global__ void embed_kernel(const int32_t* __restrict__ tokens, const __nv_bfloat16* __restrict__ emb,
                             int hidden, int vocab, float* __restrict__ h) {
  const int t = blockIdx.x;
  int tok = tokens[t];
  tok = min(max(tok, 0), vocab - 1);  // ids are checked on the host; sampled ids are in range
  const __nv_bfloat16* row = emb + size_t(tok) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) h[size_t(t) * hidden + i] = __bfloat162float(row[i]);
}

// Positions of n tokens of one sequence in slot 0 that starts at *pos (single-sequence mode,
// inside the decode graphs).
__global__ void seq_positions_kernel(const int* __restrict__ pos, int n, int* __restrict__ tok_pos,
                                     int* __restrict__ tok_slot) {
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    tok_pos[t] = *pos + t;
    tok_slot[t] = 0;
  }
}

// Element d of a head rotated by RoPE at position pos: rotate-half pairs (i, i + head_dim/2),
// x = the head's values. The one definition of the rotation for rope_cache_kernel and
// attention_kernel.
__device__ __forceinline__ float rope_at(const float* x, int d, int half_d, int pos, const float* inv_freq) {
  const int i = d < half_d ? d : d - half_d;
  float s, c;
  sincosf(float(pos) * inv_freq[i], &s, &c);
  const float x0 = x[i], x1 = x[i + half_d];
  return d < half_d ? x0 * c - x1 * s : x1 * c + x0 * s;
}

// RoPE on q and k of each token, in place, and the write of k and v into the cache of the
// token's slot at the token's position. Block (hh, t) takes head hh of token t: the q heads, then
// the kv heads (whose blocks also copy v).
__global__ void rope_cache_kernel(float* __restrict__ qkv, int ld, int heads, int kv_heads, int head_dim,
                                  const float* __restrict__ inv_freq, const int* __restrict__ tok_pos,
                                  const int* __restrict__ tok_slot, size_t slot_stride,
                                  __half* __restrict__ k_cache, __half* __restrict__ v_cache) {
  const int hh = blockIdx.x, t = blockIdx.y;
  const int pos = tok_pos[t];
  const int half_d = head_dim / 2;
  float* row = qkv + size_t(t) * ld;
  const int q_dim = heads * head_dim, kv_dim = kv_heads * head_dim;
  const size_t at = size_t(tok_slot[t]) * slot_stride + size_t(pos) * kv_dim + size_t(hh - heads) * head_dim;
  float* base = row + hh * head_dim;  // q heads, then k heads (k starts at q_dim)
  for (int i = threadIdx.x; i < half_d; i += blockDim.x) {
    const float y0 = rope_at(base, i, half_d, pos, inv_freq), y1 = rope_at(base, i + half_d, half_d, pos, inv_freq);
    if (hh < heads) {
      base[i] = y0;
      base[i + half_d] = y1;
    } else {
      k_cache[at + i] = __float2half_rn(y0);
      k_cache[at + i + half_d] = __float2half_rn(y1);
    }
  }
  if (hh >= heads)
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x)
      v_cache[at + i] = __float2half_rn(row[q_dim + kv_dim + (hh - heads) * head_dim + i]);
}

__device__ __forceinline__ void half8_to_float(const uint4 u, float* f) {
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 v = __half22float2(h[e]);
    f[2 * e] = v.x;
    f[2 * e + 1] = v.y;
  }
}

// Dynamic shared memory of attention_kernel with T threads for `grp` query heads per block:
// q (grp rows of 8·LK), the chunk's probabilities (grp rows of CK, the most keys per chunk) and
// the key slices' partial outputs (T / LK slices of grp rows of 8·LK = grp · 8 · T floats).
size_t attention_smem(int lk, int threads, int grp, int ck) { return size_t(grp) * (8 * lk + ck + 8 * threads) * 4; }

// Keys per chunk for a token that attends kv_len keys: `fixed` where set (a test or benchmark
// choice), else the shortest of 32, 64, 128, 256 that cuts kv_len into at most
// kAttnTargetChunks chunks; at most `most` (the kernel's CK). Every block of the token computes
// the same. The merge's serial chain grows with the chunks, a block's with its keys per thread:
// on an H200, Llama-3-8B's decode at 2 bpw ran fastest with 32-key chunks at context 512-576
// (18 chunks), 64 at ~1,000 (17) and 256 at ~4,000 (16) (docs/cuda.md).
__host__ __device__ __forceinline__ int chunk_keys(int kv_len, int fixed, int most) {
  int ck = fixed;
  if (!ck) {
    ck = kAttnMinChunk;
    while (ck < most && (kv_len + ck - 1) / ck > kAttnTargetChunks) ck *= 2;
  }
  return ck < most ? ck : most;
}

// Block (chunk c, kv head kvh · groups + gg, token t) attends the query heads h0 .. h0 + gn of
// kv head kvh (at most kAttnGroup of its G = heads / kv_heads heads, so the chunk's keys and
// values are read once for all of them) over the chunk's keys [ck·c, ck·c + ck), ck =
// chunk_keys(...) ≤ CK (the grid covers the cache in chunks of kAttnMinChunk). LK lanes hold
// one key or value row, 8 fp16 values each (one 16-byte load); the T / LK key
// slices take keys s, s + S, ... Where the token's keys span several chunks, each block writes
// its partial max m, sum l and unnormalised output, and the last block of the (token, head
// group) to finish (a counter, reset by that block) merges them into `out`; a single chunk
// writes `out` at once. Chunks past the token's position exit at once, so the grid may cover
// the cache's capacity (one decode graph for every length).
//
// With inv_freq (steps of one token: nothing else of the step needs the cache), the kernel also
// does rope_cache_kernel's work, one kernel fewer per layer: q is rotated as it is staged, and
// the block(s) of the last chunk compute the token's own rotated k row and its v row from qkv
// (rounded to fp16, as the cache holds them), use them, and write them into the cache.
template <int LK, int T, int CK>
__global__ void __launch_bounds__(T)
attention_kernel(const float* __restrict__ qkv, int ld, int heads, int kv_heads, int head_dim,
                 __half* __restrict__ k_cache_all, __half* __restrict__ v_cache_all,
                 const float* __restrict__ inv_freq, const int* __restrict__ tok_pos,
                 const int* __restrict__ tok_slot, size_t slot_stride,
                 float scale, int chunks, int fixed_chunk, float* __restrict__ part_m, float* __restrict__ part_l,
                 float* __restrict__ part_acc, unsigned* __restrict__ done, float* __restrict__ out) {
  constexpr int S = T / LK, HP = 8 * LK;  // key slices, padded head dim
  const int G = heads / kv_heads, groups = (G + kAttnGroup - 1) / kAttnGroup;
  const int grp = min(G, kAttnGroup);     // query heads of the fullest block: the smem rows
  extern __shared__ __align__(16) float sm[];
  float* qs = sm;                  // (grp, HP)
  float* ps = qs + grp * HP;       // (grp, CK)
  float* red = ps + grp * CK;  // (S, grp, HP)
  __shared__ float ms[kAttnGroup], ls[kAttnGroup];
  const int c = blockIdx.x, kvh = blockIdx.y / groups, gg = blockIdx.y % groups, t = blockIdx.z;
  const int h0 = kvh * G + gg * kAttnGroup, gn = min(kAttnGroup, G - gg * kAttnGroup);
  const int kv_len = tok_pos[t] + 1;
  const int ck = chunk_keys(kv_len, fixed_chunk, CK);
  const int active = (kv_len + ck - 1) / ck;
  if (c >= active) return;
  const int j0 = c * ck, n = min(ck, kv_len - j0);
  const int kv_dim = kv_heads * head_dim;
  const size_t cache0 = size_t(tok_slot[t]) * slot_stride + size_t(j0) * kv_dim + size_t(kvh) * head_dim;
  const int s = threadIdx.x / LK, l = threadIdx.x % LK;
  const bool lane_on = l * 8 < head_dim;
  // Every key and value row of the thread is requested before the first is used: one memory
  // round trip for the chunk instead of one per key (values for R ≤ 8, to bound the registers).
  constexpr int R = CK / S > 0 ? CK / S : 1;  // keys per thread at most (rounds r with r·S ≥ n are skipped)
  constexpr bool kPrefetchV = R <= 8;
  // The token's own row (j = n - 1 of the last chunk) where this kernel applies RoPE.
  const int fresh = inv_freq && c == active - 1 ? n - 1 : -1;
  uint4 kr[R], vr[kPrefetchV ? R : 1];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int j = s + r * S;
    const bool on = j < n && j != fresh && lane_on;
    kr[r] = on ? __ldg(reinterpret_cast<const uint4*>(k_cache_all + cache0 + size_t(j) * kv_dim) + l) : make_uint4(0, 0, 0, 0);
    if (kPrefetchV)
      vr[r] = on ? __ldg(reinterpret_cast<const uint4*>(v_cache_all + cache0 + size_t(j) * kv_dim) + l) : make_uint4(0, 0, 0, 0);
  }
  const int half_d = head_dim / 2;
  const float* qrow = qkv + size_t(t) * ld;
  // RoPE of element d of the head at qrow + base.
  const auto rope = [&](int base, int d) { return rope_at(qrow + base, d, half_d, kv_len - 1, inv_freq); };
  uint4 fk = make_uint4(0, 0, 0, 0), fv = fk;  // the fresh row's 8 values of this lane
  if (fresh >= 0 && lane_on && (fresh - s) % S == 0 && fresh >= s) {
    const int kbase = heads * head_dim + kvh * head_dim, vbase = kbase + kv_dim;
    __half2* kh = reinterpret_cast<__half2*>(&fk);
    __half2* vh = reinterpret_cast<__half2*>(&fv);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int d = 8 * l + 2 * e;
      kh[e] = d < head_dim ? __floats2half2_rn(rope(kbase, d), rope(kbase, d + 1)) : __floats2half2_rn(0.0f, 0.0f);
      vh[e] = d < head_dim ? __floats2half2_rn(qrow[vbase + d], qrow[vbase + d + 1]) : __floats2half2_rn(0.0f, 0.0f);
    }
    // Rows of 8 values: head_dim is a multiple of 8, so a lane's row part is whole or absent.
    reinterpret_cast<uint4*>(k_cache_all + cache0 + size_t(fresh) * kv_dim)[l] = fk;
    reinterpret_cast<uint4*>(v_cache_all + cache0 + size_t(fresh) * kv_dim)[l] = fv;
#pragma unroll
    for (int r = 0; r < R; ++r)
      if (s + r * S == fresh) {
        kr[r] = fk;
        if (kPrefetchV) vr[r] = fv;
      }
  }
  for (int e = threadIdx.x; e < gn * HP; e += T) {
    const int g = e / HP, d = e - g * HP;
    const int base = (h0 + g) * head_dim;
    qs[e] = d < head_dim ? (inv_freq ? rope(base, d) : qrow[base + d]) * scale : 0.0f;
  }
  __syncthreads();
  // Scores: every lane runs the same rounds (the shuffles need the whole warp; n is the block's).
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (r * S >= n) break;
    const int j = s + r * S;
    float kf[8];
    half8_to_float(kr[r], kf);
#pragma unroll
    for (int g = 0; g < kAttnGroup; ++g) {
      if (g >= gn) break;
      const float4 qa = reinterpret_cast<const float4*>(qs + g * HP)[2 * l];
      const float4 qb = reinterpret_cast<const float4*>(qs + g * HP)[2 * l + 1];
      float d = qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] + qb.x * kf[4] + qb.y * kf[5] +
                qb.z * kf[6] + qb.w * kf[7];
#pragma unroll
      for (int off = LK / 2; off > 0; off >>= 1) d += __shfl_xor_sync(0xFFFFFFFFu, d, off);
      if (l == 0 && j < n) ps[g * CK + j] = d;
    }
  }
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int g = warp; g < gn; g += T / 32) {
    float m = -INFINITY;
    for (int j = lane; j < n; j += 32) m = fmaxf(m, ps[g * CK + j]);
    m = detail::warp_max(m);
    float sum = 0.0f;
    for (int j = lane; j < n; j += 32) {
      const float e = __expf(ps[g * CK + j] - m);
      ps[g * CK + j] = e;
      sum += e;
    }
    sum = detail::warp_sum(sum);
    if (lane == 0) {
      ms[g] = m;
      ls[g] = sum;
    }
  }
  __syncthreads();
  float acc[kAttnGroup][8];
#pragma unroll
  for (int g = 0; g < kAttnGroup; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.0f;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (r * S >= n) break;
    const int j = s + r * S;
    if (j >= n || !lane_on) continue;
    float vf[8];
    half8_to_float(kPrefetchV  ? vr[kPrefetchV ? r : 0]
                   : j == fresh ? fv
                                : __ldg(reinterpret_cast<const uint4*>(v_cache_all + cache0 + size_t(j) * kv_dim) + l),
                   vf);
#pragma unroll
    for (int g = 0; g < kAttnGroup; ++g) {
      if (g >= gn) break;
      const float p = ps[g * CK + j];
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(p, vf[e], acc[g][e]);
    }
  }
#pragma unroll
  for (int g = 0; g < kAttnGroup; ++g) {
    if (g >= gn) break;
    float4* r = reinterpret_cast<float4*>(red + (s * grp + g) * HP + 8 * l);
    r[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
    r[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
  }
  __syncthreads();
  const bool single = active == 1;
  for (int e = threadIdx.x; e < gn * head_dim; e += T) {
    const int g = e / head_dim, d = e - g * head_dim;
    float v = 0.0f;
    for (int k = 0; k < S; ++k) v += red[(k * grp + g) * HP + d];
    if (single)
      out[size_t(t) * heads * head_dim + size_t(h0 + g) * head_dim + d] = v / ls[g];
    else
      part_acc[((size_t(t) * heads + h0 + g) * chunks + c) * head_dim + d] = v;
  }
  if (single) return;
  if (threadIdx.x < gn) {
    part_m[(size_t(t) * heads + h0 + threadIdx.x) * chunks + c] = ms[threadIdx.x];
    part_l[(size_t(t) * heads + h0 + threadIdx.x) * chunks + c] = ls[threadIdx.x];
  }
  // The last block of this (token, head group) merges; it reads the partials from L2.
  unsigned* counter = done + (size_t(t) * kv_heads + kvh) * groups + gg;
  if (!detail::last_block_done(counter, unsigned(active))) return;
  // Each chunk's weight exp(m_k - M) once, in shared memory (the slices' sums are consumed),
  // where it fits; then every output element is a sum of independent loads.
  float* wts = red;  // (gn, active)
  const bool staged = gn * active <= grp * 8 * T;
  for (int g = warp; g < gn; g += T / 32) {
    const size_t base = (size_t(t) * heads + h0 + g) * chunks;
    float m = -INFINITY;
    for (int k = lane; k < active; k += 32) m = fmaxf(m, __ldcg(part_m + base + k));
    m = detail::warp_max(m);
    float sum = 0.0f;
    for (int k = lane; k < active; k += 32) {
      const float w = __expf(__ldcg(part_m + base + k) - m);
      if (staged) wts[g * active + k] = w;
      sum += w * __ldcg(part_l + base + k);
    }
    sum = detail::warp_sum(sum);
    if (lane == 0) {
      ms[g] = m;
      ls[g] = sum;
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < gn * head_dim; e += T) {
    const int g = e / head_dim, d = e - g * head_dim;
    const size_t base = (size_t(t) * heads + h0 + g) * chunks;
    float v = 0.0f;
    if (staged) {
#pragma unroll 16
      for (int k = 0; k < active; ++k) v = fmaf(wts[g * active + k], __ldcg(part_acc + (base + k) * head_dim + d), v);
    } else {
#pragma unroll 4
      for (int k = 0; k < active; ++k)
        v = fmaf(__expf(__ldcg(part_m + base + k) - ms[g]), __ldcg(part_acc + (base + k) * head_dim + d), v);
    }
    out[size_t(t) * heads * head_dim + size_t(h0 + g) * head_dim + d] = v / ls[g];
  }
  if (threadIdx.x == 0) *counter = 0;
}

std::atomic<int> g_rope_in_attention{-1}, g_attention_threads{0}, g_attention_chunk{0};

// RoPE and the cache write inside the attention kernel for steps of one token
// (GLQ_CUDA_ROPE_IN_ATTENTION=0: always the separate rope_cache_kernel).
bool rope_in_attention_enabled() {
  const int forced = g_rope_in_attention.load();
  if (forced >= 0) return forced != 0;
  static const bool on = !detail::env_is("GLQ_CUDA_ROPE_IN_ATTENTION", "0");
  return on;
}

// Threads per attention block where chosen (set_attention_threads, GLQ_CUDA_ATTN_THREADS = 128,
// 256 or 512), else 0: by the kind (attention_kind).
int attention_forced_threads() {
  const int forced = g_attention_threads.load();
  if (forced) return forced;
  static const int env = [] {
    const int n = detail::env_int("GLQ_CUDA_ATTN_THREADS", 0);
    return n == 128 || n == 256 || n == 512 ? n : 0;
  }();
  return env;
}

// The decode attention's kernel for a step whose longest context is kv_len keys (each kind is
// a CUDA graph of its own; Engine::attn_kind_): 0 up to 1,024 keys, blocks of 512 threads
// (16 warps) and chunks of 32 or 64 keys (chunk_keys); 1 up to 3,072, blocks of 256 threads and
// 64-key chunks; 2 beyond, blocks of 512 threads and chunks of up to 256 keys (8 keys per
// thread at head_dim 128: more registers and loop rounds per block, which measured 1.5 % slower
// at context 512 and 1.7 % at 2,048 than the kernels above, and 2.3 % faster at 4,096 and 9.4 %
// at 8,000, where 64-key chunks are 64-125 partials for one block to merge). A block's work is a
// chain of dependent loads, shuffles and FMAs, so more warps per chunk shorten it where few
// chunks leave most SMs idle (H200, 64-key chunks at context 512: 353 tok/s with 512 threads,
// 344 with 256, 306 with 128); docs/cuda.md.
int attention_kind(int kv_len) { return kv_len <= 1024 ? 0 : kv_len <= 3072 ? 1 : 2; }

// Keys per attention chunk where fixed (the test hook set_attention_chunk, else
// GLQ_CUDA_ATTN_CHUNK = 32, 64, 128 or 256), else 0: by the context length (chunk_keys).
int attention_fixed_chunk() {
  const int forced = g_attention_chunk.load();
  if (forced) return forced;
  static const int env = [] {
    const int n = detail::env_int("GLQ_CUDA_ATTN_CHUNK", 0);
    return n == 32 || n == 64 || n == 128 || n == 256 ? n : 0;
  }();
  return env;
}

// The shared memory the largest head grouping needs, opted into once per kernel (by the engine's
// constructor for every kernel a step may take, outside any graph capture; attention_opt_in).
template <int LK, int T, int CK>
void attention_opt_in_t() {
  static const bool opted_in = [] {
    const size_t most = attention_smem(LK, T, kAttnGroup, CK);
    if (most > 48 * 1024)
      GLQ_CUDA_CHECK(
          cudaFuncSetAttribute(attention_kernel<LK, T, CK>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(most)));
    return true;
  }();
  (void)opted_in;
}

// Lanes per key row: ceil(head_dim / 8) rounded up to a power of two.
int attention_lanes(int head_dim) {
  int lk = 1;
  while (lk * 8 < head_dim) lk *= 2;
  return lk;
}

// The attention kernels there are, in one place: f.template operator()<LK, T, CK>() for
// head_dim's lanes per key row LK and the block shape: 128 or 256 threads with chunks of up to 64
// keys, 512 with up to 64 or (`long_chunks`) up to kAttnMaxChunk.
struct AttentionShape {
  int threads;
  bool long_chunks;
};
constexpr AttentionShape kAttentionShapes[] = {{128, false}, {256, false}, {512, false}, {512, true}};

template <typename F>
void with_attention_kernel(int head_dim, AttentionShape shape, F&& f) {
  const auto by_shape = [&]<int LK>() {
    switch (shape.threads) {
      case 128: f.template operator()<LK, 128, 64>(); break;
      case 256: f.template operator()<LK, 256, 64>(); break;
      default:
        if (shape.long_chunks)
          f.template operator()<LK, 512, kAttnMaxChunk>();
        else
          f.template operator()<LK, 512, 64>();
    }
  };
  switch (attention_lanes(head_dim)) {
    case 1: by_shape.template operator()<1>(); break;
    case 2: by_shape.template operator()<2>(); break;
    case 4: by_shape.template operator()<4>(); break;
    case 8: by_shape.template operator()<8>(); break;
    case 16: by_shape.template operator()<16>(); break;
    default: by_shape.template operator()<32>(); break;
  }
}

// Every attention kernel of head_dim's lanes opts into its shared memory now (the engine's
// constructor): a step of a kind first met while a graph is being captured must not change a
// kernel's attributes then.
void attention_opt_in(int head_dim) {
  for (const AttentionShape& shape : kAttentionShapes)
    with_attention_kernel(head_dim, shape, [&]<int LK, int T, int CK>() { attention_opt_in_t<LK, T, CK>(); });
}

// ---- Prefill attention on the tensor cores --------------------------------------------------
//
// The tokens of one sequence (a prompt, or a piece of one), FlashAttention-2 style: block (tile,
// head) takes the kPfRows query rows of tokens tile·64 .. tile·64 + 63 of query head `head`, four
// warps of 16 rows. It walks the keys 0 .. (its last token's position) in tiles of kPfKeys: the
// tile's keys and values go to shared memory (fp16, zero past the last key), S = Q·Kᵀ by
// mma.m16n8k16 (fp16 in, fp32 accumulators; Q scaled by 1/√d and rounded to fp16 once, held
// in registers), the causal mask (key ≤ the row's position), the online softmax on the
// accumulators (row max and sum across the four lanes of a row), P rounded to fp16 straight
// from the accumulator layout into the A fragments of O += P·V (V through ldmatrix.trans).
// Every key is read once per block instead of once per token; no partials to merge.
constexpr int kPfRows = 64, kPfKeys = 64, kPfThreads = 128;

template <int HD>
constexpr int pf_ld() { return HD + 8; }  // halves per shared row: 16 bytes of padding spread ldmatrix rows over banks

template <int HD>
constexpr size_t pf_smem() { return size_t(kPfRows + 2 * kPfKeys) * pf_ld<HD>() * 2; }

template <int HD>
__global__ void __launch_bounds__(kPfThreads)
attention_prefill_kernel(const float* __restrict__ qkv, int ld, int heads, int kv_heads,
                         const __half* __restrict__ k_cache_all, const __half* __restrict__ v_cache_all,
                         const int* __restrict__ tok_pos, const int* __restrict__ tok_slot, size_t slot_stride,
                         float scale, int n_tok, float* __restrict__ out) {
  constexpr int LD = pf_ld<HD>(), KS = HD / 16, NT = kPfKeys / 8, OT = HD / 8;
  extern __shared__ __align__(16) __half pf[];
  __half* qsm = pf;                    // (kPfRows, LD)
  __half* ksm = qsm + kPfRows * LD;    // (kPfKeys, LD)
  __half* vsm = ksm + kPfKeys * LD;    // (kPfKeys, LD)
  const int head = blockIdx.y, kvh = head / (heads / kv_heads);
  const int t0 = blockIdx.x * kPfRows, nt = min(kPfRows, n_tok - t0);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int kv_dim = kv_heads * HD;
  const __half* kc = k_cache_all + size_t(tok_slot[t0]) * slot_stride + size_t(kvh) * HD;
  const __half* vc = v_cache_all + size_t(tok_slot[t0]) * slot_stride + size_t(kvh) * HD;
  const int last_pos = tok_pos[t0 + nt - 1];
  for (int e = threadIdx.x; e < kPfRows * HD / 2; e += kPfThreads) {
    const int r = e / (HD / 2), d = 2 * (e - r * (HD / 2));
    float2 v = make_float2(0.0f, 0.0f);
    if (r < nt) v = *reinterpret_cast<const float2*>(qkv + size_t(t0 + r) * ld + size_t(head) * HD + d);
    *reinterpret_cast<uint32_t*>(qsm + r * LD + d) = detail::pack_half2(v.x * scale, v.y * scale);
  }
  __syncthreads();
  uint32_t qa[KS][4];
#pragma unroll
  for (int ks = 0; ks < KS; ++ks) {
    const unsigned a = static_cast<unsigned>(
        __cvta_generic_to_shared(qsm + (warp * 16 + (lane & 15)) * LD + ks * 16 + (lane >> 4) * 8));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(qa[ks][0]), "=r"(qa[ks][1]), "=r"(qa[ks][2]), "=r"(qa[ks][3])
                 : "r"(a));
  }
  // This thread's two rows (lane / 4 and lane / 4 + 8 of the warp's 16) and their positions.
  const int r0 = warp * 16 + (lane >> 2);
  const int pos0 = r0 < nt ? tok_pos[t0 + r0] : -1, pos1 = r0 + 8 < nt ? tok_pos[t0 + r0 + 8] : -1;
  float o[OT][4];
#pragma unroll
  for (int i = 0; i < OT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
  const int tiles = last_pos / kPfKeys + 1;
  for (int kt = 0; kt < tiles; ++kt) {
    const int key0 = kt * kPfKeys;
    __syncthreads();  // the previous tile's K and V are no longer read
    for (int e = threadIdx.x; e < kPfKeys * HD / 8; e += kPfThreads) {
      const int j = e / (HD / 8), d = 8 * (e - j * (HD / 8));
      uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (key0 + j <= last_pos) {
        kv = __ldg(reinterpret_cast<const uint4*>(kc + size_t(key0 + j) * kv_dim + d));
        vv = __ldg(reinterpret_cast<const uint4*>(vc + size_t(key0 + j) * kv_dim + d));
      }
      *reinterpret_cast<uint4*>(ksm + j * LD + d) = kv;
      *reinterpret_cast<uint4*>(vsm + j * LD + d) = vv;
    }
    __syncthreads();
    float sc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        uint32_t b0, b1;
        const unsigned a = static_cast<unsigned>(
            __cvta_generic_to_shared(ksm + (n * 8 + (lane & 7)) * LD + ks * 16 + ((lane >> 3) & 1) * 8));
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];" : "=r"(b0), "=r"(b1) : "r"(a));
        detail::mma16816(sc[n], qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3], b0, b1);
      }
    }
    // Causal mask and the tile's row maxima.
    float tm0 = -INFINITY, tm1 = -INFINITY;
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int j = key0 + n * 8 + 2 * (lane & 3) + e;
        if (j > pos0) sc[n][e] = -INFINITY;
        if (j > pos1) sc[n][2 + e] = -INFINITY;
        tm0 = fmaxf(tm0, sc[n][e]);
        tm1 = fmaxf(tm1, sc[n][2 + e]);
      }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
      tm0 = fmaxf(tm0, __shfl_xor_sync(0xFFFFFFFFu, tm0, off));
      tm1 = fmaxf(tm1, __shfl_xor_sync(0xFFFFFFFFu, tm1, off));
    }
    const float nm0 = fmaxf(m0, tm0), nm1 = fmaxf(m1, tm1);
    // Rows with no key yet (past the sequence's tokens) keep m = -inf: their factors stay 0.
    const float b0m = nm0 == -INFINITY ? 0.0f : nm0, b1m = nm1 == -INFINITY ? 0.0f : nm1;
    const float al0 = __expf(m0 - b0m), al1 = __expf(m1 - b1m);
    m0 = nm0;
    m1 = nm1;
    float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      sc[n][0] = __expf(sc[n][0] - b0m);
      sc[n][1] = __expf(sc[n][1] - b0m);
      sc[n][2] = __expf(sc[n][2] - b1m);
      sc[n][3] = __expf(sc[n][3] - b1m);
      s0 += sc[n][0] + sc[n][1];
      s1 += sc[n][2] + sc[n][3];
    }
    l0 = l0 * al0 + s0;  // (the quad's lanes sum their parts at the end)
    l1 = l1 * al1 + s1;
#pragma unroll
    for (int i = 0; i < OT; ++i) {
      o[i][0] *= al0;
      o[i][1] *= al0;
      o[i][2] *= al1;
      o[i][3] *= al1;
    }
#pragma unroll
    for (int kk = 0; kk < kPfKeys / 16; ++kk) {
      const uint32_t a0 = detail::pack_half2(sc[2 * kk][0], sc[2 * kk][1]);
      const uint32_t a1 = detail::pack_half2(sc[2 * kk][2], sc[2 * kk][3]);
      const uint32_t a2 = detail::pack_half2(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
      const uint32_t a3 = detail::pack_half2(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
      for (int i = 0; i < OT; ++i) {
        uint32_t b0, b1;
        const unsigned a = static_cast<unsigned>(
            __cvta_generic_to_shared(vsm + (kk * 16 + (lane & 15)) * LD + i * 8));
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];" : "=r"(b0), "=r"(b1) : "r"(a));
        detail::mma16816(o[i], a0, a1, a2, a3, b0, b1);
      }
    }
  }
#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    l0 += __shfl_xor_sync(0xFFFFFFFFu, l0, off);
    l1 += __shfl_xor_sync(0xFFFFFFFFu, l1, off);
  }
  const int q_dim = heads * HD;
#pragma unroll
  for (int i = 0; i < OT; ++i) {
    const int d = i * 8 + 2 * (lane & 3);
    if (r0 < nt)
      *reinterpret_cast<float2*>(out + size_t(t0 + r0) * q_dim + size_t(head) * HD + d) =
          make_float2(o[i][0] / l0, o[i][1] / l0);
    if (r0 + 8 < nt)
      *reinterpret_cast<float2*>(out + size_t(t0 + r0 + 8) * q_dim + size_t(head) * HD + d) =
          make_float2(o[i][2] / l1, o[i][3] / l1);
  }
}

template <int HD>
void launch_prefill_hd(dim3 grid, cudaStream_t stream, const float* qkv, int ld, int heads, int kv_heads,
                       const __half* kc, const __half* vc, const int* tok_pos, const int* tok_slot, size_t slot_stride,
                       float scale, int n_tok, float* out) {
  static const bool attr = [] {
    GLQ_CUDA_CHECK(cudaFuncSetAttribute(attention_prefill_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(pf_smem<HD>())));
    return true;
  }();
  (void)attr;
  attention_prefill_kernel<HD><<<grid, kPfThreads, pf_smem<HD>(), stream>>>(
      qkv, ld, heads, kv_heads, kc, vc, tok_pos, tok_slot, slot_stride, scale, n_tok, out);
  GLQ_CUDA_CHECK_LAUNCH("attention_prefill_kernel");
}

// The tensor-core prefill takes head_dim 16, 32, 64 and 128 (GLQ_CUDA_PREFILL_ATTENTION=0: never).
bool prefill_attention_supported(int head_dim) {
  static const bool enabled = !detail::env_is("GLQ_CUDA_PREFILL_ATTENTION", "0");
  return enabled && (head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128);
}

void launch_prefill_attention(int n, cudaStream_t stream, const float* qkv, int ld, int heads, int kv_heads,
                              int head_dim, const __half* kc, const __half* vc, const int* tok_pos, const int* tok_slot,
                              size_t slot_stride, float scale, float* out) {
  const dim3 grid((n + kPfRows - 1) / kPfRows, heads);
  switch (head_dim) {
    case 16: launch_prefill_hd<16>(grid, stream, qkv, ld, heads, kv_heads, kc, vc, tok_pos, tok_slot, slot_stride, scale, n, out); break;
    case 32: launch_prefill_hd<32>(grid, stream, qkv, ld, heads, kv_heads, kc, vc, tok_pos, tok_slot, slot_stride, scale, n, out); break;
    case 64: launch_prefill_hd<64>(grid, stream, qkv, ld, heads, kv_heads, kc, vc, tok_pos, tok_slot, slot_stride, scale, n, out); break;
    default: launch_prefill_hd<128>(grid, stream, qkv, ld, heads, kv_heads, kc, vc, tok_pos, tok_slot, slot_stride, scale, n, out); break;
  }
}

// grid.x: the chunks of kAttnMinChunk keys that cover the cache (the most any length takes);
// kind: attention_kind; fixed_chunk: attention_fixed_chunk().
// The kernels opted into their shared memory when the engine was built (attention_opt_in).
void launch_attention(dim3 grid, int kind, int fixed_chunk, cudaStream_t stream, const float* qkv, int ld, int heads,
                      int kv_heads, int head_dim, __half* kc, __half* vc, const float* inv_freq, const int* tok_pos,
                      const int* tok_slot, size_t slot_stride, float scale, int chunks, float* pm, float* pl, float* pa,
                      unsigned* done, float* out) {
  const int forced = attention_forced_threads();
  const int t = forced ? forced : kind == 1 && !fixed_chunk ? 256 : 512;
  const bool long_chunks = t == 512 && (fixed_chunk ? fixed_chunk > 64 : kind == 2);
  with_attention_kernel(head_dim, {t, long_chunks}, [&]<int LK, int T, int CK>() {
    const size_t smem = attention_smem(LK, T, std::min(heads / kv_heads, kAttnGroup), CK);
    attention_kernel<LK, T, CK><<<grid, T, smem, stream>>>(qkv, ld, heads, kv_heads, head_dim, kc, vc, inv_freq,
                                                           tok_pos, tok_slot, slot_stride, scale, chunks, fixed_chunk,
                                                           pm, pl, pa, done, out);
  });
  GLQ_CUDA_CHECK_LAUNCH("attention_kernel");
}

// Greedy sampling: token = argmax(logits) (lowest id on ties; NaN never wins); appends it to
// out[*step] and advances the position by `advance`. kArgmaxBlocks blocks scan a slice of the
// vocabulary each (one block alone took ~50 us for 128256 logits under Nsight Compute); the last
// block to finish (a counter it resets) reduces their results.
constexpr int kArgmaxBlocks = 64, kArgmaxThreads = 256;

__device__ __forceinline__ void argmax_merge(float& bv, int& bi, float v, int i) {
  if (v > bv || (v == bv && i < bi)) {
    bv = v;
    bi = i;
  }
}

// Block-wide (value, index) argmax; the result is valid in thread 0.
__device__ __forceinline__ void argmax_block(float& bv, int& bi, float* sv, int* si) {
  for (int off = 16; off > 0; off >>= 1)
    argmax_merge(bv, bi, __shfl_xor_sync(0xFFFFFFFFu, bv, off), __shfl_xor_sync(0xFFFFFFFFu, bi, off));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    sv[warp] = bv;
    si[warp] = bi;
  }
  __syncthreads();
  if (threadIdx.x == 0)
    for (int w = 1; w < int(blockDim.x >> 5); ++w) argmax_merge(bv, bi, sv[w], si[w]);
}

__global__ void __launch_bounds__(kArgmaxThreads)
argmax_kernel(const float* __restrict__ logits, int vocab, int32_t* __restrict__ token, int32_t* __restrict__ out,
              int* __restrict__ step, int* __restrict__ pos, int advance, float* __restrict__ part_v,
              int* __restrict__ part_i, unsigned* __restrict__ done) {
  __shared__ float sv[32];
  __shared__ int si[32];
  const int per = (vocab + gridDim.x - 1) / gridDim.x;
  const int i0 = blockIdx.x * per, i1 = min(vocab, i0 + per);
  float bv = -INFINITY;
  int bi = 0x7FFFFFFF;
#pragma unroll 8
  for (int i = i0 + threadIdx.x; i < i1; i += blockDim.x) argmax_merge(bv, bi, logits[i], i);
  argmax_block(bv, bi, sv, si);
  if (threadIdx.x == 0) {
    part_v[blockIdx.x] = bv;
    part_i[blockIdx.x] = bi;
  }
  if (!detail::last_block_done(done, gridDim.x)) return;
  bv = -INFINITY;
  bi = 0x7FFFFFFF;
  for (int k = threadIdx.x; k < int(gridDim.x); k += blockDim.x) argmax_merge(bv, bi, __ldcg(part_v + k), __ldcg(part_i + k));
  argmax_block(bv, bi, sv, si);
  if (threadIdx.x == 0) {
    if (bi == 0x7FFFFFFF) bi = 0;  // all NaN: keep a valid id
    *token = bi;
    out[*step] = bi;
    *step += 1;
    *pos += advance;
    *done = 0;
  }
}

__global__ void advance_kernel(int* pos, int n) { *pos += n; }
__global__ void set_kernel(int* pos, int n) { *pos = n; }

// y[t][0..rows) += bias, one block per token.
__global__ void add_bias_kernel(float* __restrict__ y, int ld, const float* __restrict__ bias, int rows) {
  float* row = y + size_t(blockIdx.x) * ld;
  for (int i = threadIdx.x; i < rows; i += blockDim.x) row[i] += bias[i];
}

// out (k, hidden) = rows rows[0..k) of h (the tokens whose logits are wanted).
__global__ void gather_rows_kernel(const float* __restrict__ h, const int* __restrict__ rows, int hidden,
                                   float* __restrict__ out) {
  const float* src = h + size_t(rows[blockIdx.x]) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) out[size_t(blockIdx.x) * hidden + i] = src[i];
}

// out[r] = logsumexp(logits row r) − logits[r][targets[r]], one block per row.
__global__ void nll_kernel(const float* __restrict__ logits, int vocab, const int32_t* __restrict__ targets,
                           double* __restrict__ out) {
  __shared__ float red_f[32];
  __shared__ double red_d[32];
  const float* row = logits + size_t(blockIdx.x) * vocab;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, row[i]);
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFFu, m, off));
  if (lane == 0) red_f[warp] = m;
  __syncthreads();
  m = red_f[0];
  for (int w = 1; w < nwarps; ++w) m = fmaxf(m, red_f[w]);
  double s = 0.0;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) s += double(expf(row[i] - m));
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xFFFFFFFFu, s, off);
  if (lane == 0) red_d[warp] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < nwarps; ++w) total += red_d[w];
    out[blockIdx.x] = log(total) + double(m) - double(row[targets[blockIdx.x]]);
  }
}

__device__ __forceinline__ uint32_t hash32(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return uint32_t((x ^ (x >> 31)) >> 16);
}

__global__ void fill_random_words(uint32_t* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = hash32(seed * 0x100000001B3ull + i);
}

// Uniform in [-amp, amp) as bf16.
__global__ void fill_random_bf16(__nv_bfloat16* p, size_t n, uint64_t seed, float amp) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float u = float(hash32(seed * 0x100000001B3ull + i) & 0xFFFFFF) / 16777216.0f;
    p[i] = __float2bfloat16_rn((2.0f * u - 1.0f) * amp);
  }
}

void launch_fill_words(void* p, size_t bytes, uint64_t seed) {
  const size_t n = bytes / 4;
  if (n == 0) return;
  fill_random_words<<<int(std::min<size_t>((n + 255) / 256, 8192)), 256>>>(static_cast<uint32_t*>(p), n, seed);
  GLQ_CUDA_CHECK_LAUNCH("fill_random_words");
}

void launch_fill_bf16(void* p, size_t n, uint64_t seed, float amp) {
  fill_random_bf16<<<int(std::min<size_t>((n + 255) / 256, 8192)), 256>>>(static_cast<__nv_bfloat16*>(p), n, seed, amp);
  GLQ_CUDA_CHECK_LAUNCH("fill_random_bf16");
}

DeviceHadamard device_plan(int n) {
  const auto p = transform::make_hadamard_plan(n);
  DeviceHadamard d;
  d.n = p.n;
  d.a = p.a;
  d.b = p.b;
  if (p.a > 1) d.q = to_device(p.q);
  return d;
}

}  // namespace

namespace detail {
void set_attention_threads(int threads) {
  g_attention_threads.store(threads == 128 || threads == 256 || threads == 512 ? threads : 0);
}
void set_rope_in_attention(int on) { g_rope_in_attention.store(on < 0 ? -1 : on != 0); }
void set_attention_chunk(int keys) {
  g_attention_chunk.store(keys == 32 || keys == 64 || keys == 128 || keys == 256 ? keys : 0);
}
}  // namespace detail

// ---- weights --------------------------------------------------------------------------------

size_t EngineLinear::weight_bytes() const {
  return q ? q->weight_bytes() : dense ? dense->weight_bytes() : 0;
}
EngineLinear EngineLinear::from(DeviceQuantizedMatrix m) {
  EngineLinear l;
  l.rows = m.rows;
  l.cols = m.cols;
  l.q = std::make_unique<DeviceQuantizedMatrix>(std::move(m));
  return l;
}
EngineLinear EngineLinear::from(DeviceDenseMatrix m) {
  EngineLinear l;
  l.rows = m.rows;
  l.cols = m.cols;
  l.dense = std::make_unique<DeviceDenseMatrix>(std::move(m));
  return l;
}

DeviceQuantizedMatrix random_device_qmatrix(int rows, int cols, int bits, uint64_t seed) {
  if (rows % 8 || cols % 8 || rows <= 0 || cols <= 0) throw_invalid("random_device_qmatrix: rows and cols must be positive multiples of 8");
  DeviceQuantizedMatrix d;
  d.rows = rows;
  d.cols = cols;
  d.bits = bits;
  d.groups = cols / 8;
  // E[c²] of a random E8P16 codeword is about 1.3 per coordinate: a first-stage scale of
  // 0.8/sqrt(cols) keeps |y| ≈ |x|; residual stages are a tenth of that.
  float scale = 0.8f / std::sqrt(float(cols));
  int s = 0;
  for (auto cb : codec::stages_for_bits(bits)) {
    DeviceMemory codes(size_t(rows) * d.groups * codec::code_bytes(cb));
    launch_fill_words(codes.data(), codes.bytes(), seed * 31 + s);
    d.codebooks.push_back(cb);
    d.codes.push_back(std::move(codes));
    d.scales.push_back(to_device(std::vector<float>(rows, scale)));
    scale *= 0.1f;
    ++s;
  }
  const auto sign_in = transform::random_signs(cols, seed + 101);
  d.sign_in = to_device(sign_in);
  d.sign_in_bits = detail::sign_bits_to_device(sign_in);
  const auto sign_out = transform::random_signs(rows, seed + 102);
  d.sign_out = to_device(sign_out);
  d.sign_out_bits = detail::sign_bits_to_device(sign_out);
  d.plan_in = device_plan(cols);
  d.plan_out = device_plan(rows);
  return d;
}

namespace {

EngineLinear random_linear(int rows, int cols, int bits, uint64_t seed) {
  if (bits == 16) {
    DeviceDenseMatrix m;
    m.rows = rows;
    m.cols = cols;
    m.w = DeviceMemory(size_t(rows) * cols * 2);
    launch_fill_bf16(m.w.data(), size_t(rows) * cols, seed, std::sqrt(3.0f / float(cols)));
    return EngineLinear::from(std::move(m));
  }
  return EngineLinear::from(random_device_qmatrix(rows, cols, bits, seed));
}

}  // namespace

EngineWeights random_engine_weights(const EngineConfig& c, int bits, uint64_t seed) {
  if (bits != 2 && bits != 3 && bits != 4 && bits != 16)
    throw_invalid("random_engine_weights: bits must be 2, 3, 4 or 16, got " + std::to_string(bits));
  EngineWeights w;
  w.embedding = DeviceMemory(size_t(c.vocab) * c.hidden * 2);
  launch_fill_bf16(w.embedding.data(), size_t(c.vocab) * c.hidden, seed, 1.0f);
  const int q_dim = c.heads * c.head_dim, kv_dim = c.kv_heads * c.head_dim;
  for (int l = 0; l < c.layers; ++l) {
    EngineLayer L;
    const uint64_t s = seed + 1000 * (l + 1);
    L.attn_norm = to_device(std::vector<float>(c.hidden, 1.0f));
    L.mlp_norm = to_device(std::vector<float>(c.hidden, 1.0f));
    L.qkv.push_back(random_linear(q_dim + 2 * kv_dim, c.hidden, bits, s + 1));
    L.o = random_linear(c.hidden, q_dim, bits, s + 2);
    L.gate_up.push_back(random_linear(2 * c.intermediate, c.hidden, bits, s + 3));
    L.down = random_linear(c.hidden, c.intermediate, bits, s + 4);
    w.layers.push_back(std::move(L));
  }
  w.final_norm = to_device(std::vector<float>(c.hidden, 1.0f));
  // The output head stays dense bf16 (as QuIP# and llama.cpp's low-bit formats keep it at a
  // higher precision); its output transform over a 128K vocabulary would not fit one block.
  w.lm_head = random_linear(c.vocab, c.hidden, 16, seed + 7);
  GLQ_CUDA_CHECK(cudaDeviceSynchronize());
  return w;
}

double measure_copy_bandwidth(Context& ctx) {
  const size_t bytes = size_t(1) << 30;
  DeviceMemory a(bytes), b(bytes);
  GLQ_CUDA_CHECK(cudaMemsetAsync(a.data(), 1, bytes, ctx.stream()));
  GLQ_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, ctx.stream()));
  cudaEvent_t e0, e1;
  GLQ_CUDA_CHECK(cudaEventCreate(&e0));
  GLQ_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int i = 0; i < 5; ++i) {
    GLQ_CUDA_CHECK(cudaEventRecord(e0, ctx.stream()));
    GLQ_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, ctx.stream()));
    GLQ_CUDA_CHECK(cudaEventRecord(e1, ctx.stream()));
    GLQ_CUDA_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    GLQ_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    ms.push_back(t);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::sort(ms.begin(), ms.end());
  return 2.0 * bytes / (ms[ms.size() / 2] * 1e6);
}

// ---- engine ---------------------------------------------------------------------------------

struct Engine::Buffers {
  int chunks = 0;       // attention chunks of kAttnMinChunk keys covering the cache capacity
  int max_tokens = 0;   // tokens per step
  size_t slot_stride = 0;  // elements of one slot of one layer's K (or V) cache
  DeviceMemory tokens;  // (max_tokens) int32
  DeviceMemory tok_pos, tok_slot;  // (max_tokens) int: each token's position and slot
  DeviceMemory rows;    // (max_tokens) int: rows of h whose logits are wanted (HeadRows::Gather)
  DeviceMemory targets; // (max_tokens) int32: token_nll
  DeviceMemory nll;     // (max_tokens) double
  DeviceMemory pos;     // int: tokens in the cache (slot 0, single-sequence mode)
  DeviceMemory step;    // int: tokens generated
  DeviceMemory generated;  // (capacity) int32
  DeviceMemory h;       // (max_tokens, hidden) residual stream
  DeviceMemory h2;      // (max_tokens, hidden) its second buffer, for the fused transforms (Bridge)
  DeviceMemory hsel;    // (max_tokens, hidden) gathered rows for the output head
  DeviceMemory qkv;     // (max_tokens, q_dim + 2 kv_dim)
  DeviceMemory gu;      // (max_tokens, 2 intermediate)
  DeviceMemory part_m, part_l, part_acc;  // attention partials (token, head, chunk[, head_dim])
  DeviceMemory attn_done;  // (max_tokens, kv_heads, head groups) unsigned: chunks done, zero between steps
  DeviceMemory attn;       // (max_tokens, q_dim) attention output
  DeviceMemory argmax_v, argmax_i, argmax_done;  // greedy sampling: per-block results, blocks done
  DeviceMemory k_cache, v_cache;          // (layers, slots, capacity, kv_dim) fp16
  DeviceMemory logits;  // (max_tokens, vocab)
  DeviceMemory inv_freq;
  // forward_slots staging (host)
  std::vector<int32_t> h_tokens, h_pos, h_slot, h_rows;
  std::vector<float> h_logits;
};

namespace {

// ỹ scratch of a quantized linear: max_tokens rows, or the tile kernel's `parts` slices of n
// vectors where it runs (parts > 0).
size_t yt_scratch_bytes(size_t max_tokens, const DeviceQuantizedMatrix& w, int n, int parts) {
  return std::max(max_tokens, size_t(std::max(parts, 0)) * size_t(n)) * w.rows * 4;
}

// Slices of ỹ of the tile kernel where a step of n tokens of w runs it (17-64 tokens), else 0.
int engine_tile_parts(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int n) {
  return n > 2 * kGemvMaxBatch && detail::qmma_tiles_supported(info, w, n) ? detail::qmma_tiles_parts(info, w.rows, w.cols)
                                                                          : 0;
}

}  // namespace

Engine::Engine(Context& ctx, EngineConfig config, EngineWeights weights)
    : ctx_(ctx), config_(std::move(config)), w_(std::move(weights)), b_(std::make_unique<Buffers>()) {
  const auto& c = config_;
  if (c.hidden <= 0 || c.layers <= 0 || c.heads <= 0 || c.kv_heads <= 0 || c.heads % c.kv_heads ||
      c.head_dim <= 0 || c.head_dim % 2 || c.max_context <= 0 || c.vocab <= 0 || c.slots <= 0)
    throw_invalid("Engine: inconsistent configuration");
  if (c.head_dim % 8 || c.head_dim > kAttnMaxHeadDim)
    throw_unsupported("Engine: head_dim " + std::to_string(c.head_dim) + " (the attention kernel takes multiples of 8 up to " +
                      std::to_string(kAttnMaxHeadDim) + ")");
  if (int(c.rope_inv_freq.size()) != c.head_dim / 2)
    throw_mismatch("Engine: rope_inv_freq size", std::to_string(c.head_dim / 2), std::to_string(c.rope_inv_freq.size()));
  if (int(w_.layers.size()) != c.layers)
    throw_mismatch("Engine: layers", std::to_string(c.layers), std::to_string(w_.layers.size()));
  if (w_.lm_head.rows != c.vocab || w_.lm_head.cols != c.hidden)
    throw_mismatch("Engine: output head shape", std::to_string(c.vocab) + "x" + std::to_string(c.hidden),
                   std::to_string(w_.lm_head.rows) + "x" + std::to_string(w_.lm_head.cols));
  if (w_.embedding.bytes() != size_t(c.vocab) * c.hidden * 2)
    throw_mismatch("Engine: embedding bytes (bf16)", std::to_string(size_t(c.vocab) * c.hidden * 2),
                   std::to_string(w_.embedding.bytes()));
  const int q_dim = c.heads * c.head_dim, kv_dim = c.kv_heads * c.head_dim;
  auto& b = *b_;
  b.chunks = (c.max_context + kAttnMinChunk - 1) / kAttnMinChunk;
  b.max_tokens = std::min(kMaxStepTokens, std::max(c.max_context, c.slots));
  b.slot_stride = size_t(c.max_context) * kv_dim;
  const size_t T = b.max_tokens;
  b.tokens = DeviceMemory(T * 4);
  b.tok_pos = DeviceMemory(T * 4);
  b.tok_slot = DeviceMemory(T * 4);
  b.rows = DeviceMemory(T * 4);
  b.targets = DeviceMemory(T * 4);
  b.nll = DeviceMemory(T * 8);
  b.pos = DeviceMemory(4);
  b.step = DeviceMemory(4);
  b.generated = DeviceMemory(size_t(c.max_context + 1) * 4);
  b.h = DeviceMemory(T * c.hidden * 4);
  b.h2 = DeviceMemory(T * c.hidden * 4);
  b.hsel = DeviceMemory(T * c.hidden * 4);
  b.qkv = DeviceMemory(T * (q_dim + 2 * kv_dim) * 4);
  b.gu = DeviceMemory(T * 2 * c.intermediate * 4);
  b.part_m = DeviceMemory(T * c.heads * b.chunks * 4);
  b.part_l = DeviceMemory(T * c.heads * b.chunks * 4);
  b.part_acc = DeviceMemory(T * c.heads * b.chunks * c.head_dim * 4);
  b.attn_done = DeviceMemory(T * c.kv_heads * ((c.heads / c.kv_heads + kAttnGroup - 1) / kAttnGroup) * 4);
  GLQ_CUDA_CHECK(cudaMemsetAsync(b.attn_done.data(), 0, b.attn_done.bytes(), ctx_.stream()));
  b.attn = DeviceMemory(T * q_dim * 4);
  b.argmax_v = DeviceMemory(kArgmaxBlocks * 4);
  b.argmax_i = DeviceMemory(kArgmaxBlocks * 4);
  b.argmax_done = DeviceMemory(4);
  GLQ_CUDA_CHECK(cudaMemsetAsync(b.argmax_done.data(), 0, 4, ctx_.stream()));
  b.k_cache = DeviceMemory(size_t(c.layers) * c.slots * b.slot_stride * 2);
  b.v_cache = DeviceMemory(size_t(c.layers) * c.slots * b.slot_stride * 2);
  b.logits = DeviceMemory(T * c.vocab * 4);
  b.inv_freq = to_device(c.rope_inv_freq);
  // ỹ scratch: the tile kernel (17-64 tokens) writes one slice per column range (or cluster of
  // them), so it may need more than max_tokens rows; reserved now, since a captured graph cannot
  // grow it.
  size_t yt_bytes = 0;
  auto reserve_yt = [&](const EngineLinear& l) {
    if (!l.q) return;
    const int n = std::min<int>(kMmaMaxBatch, b.max_tokens);
    yt_bytes = std::max(yt_bytes, yt_scratch_bytes(T, *l.q, n, engine_tile_parts(ctx_.info(), *l.q, n)));
  };
  for (const auto& L : w_.layers) {
    for (const auto& l : L.qkv) reserve_yt(l);
    for (const auto& l : L.gate_up) reserve_yt(l);
    reserve_yt(L.o);
    reserve_yt(L.down);
  }
  reserve_yt(w_.lm_head);
  if (yt_bytes) ctx_.scratch(1, yt_bytes);
  attention_opt_in(c.head_dim);
  reset();
}

Engine::~Engine() {
  auto destroy = [](const Graphs& graphs) {
    for (auto g : graphs)
      if (g) cudaGraphExecDestroy(g);
  };
  destroy(decode_graph_);
  destroy(step_graph_);
  for (const auto& g : batch_graphs_) destroy(g);
}

void Engine::reset() { truncate(0); }

void Engine::truncate(int n) {
  if (n < 0 || n > position_)
    throw_invalid("Engine::truncate: " + std::to_string(n) + " outside [0, " + std::to_string(position_) + "]");
  set_kernel<<<1, 1, 0, ctx_.stream()>>>(b_->pos.as<int>(), n);
  GLQ_CUDA_CHECK_LAUNCH("set_kernel");
  GLQ_CUDA_CHECK(cudaMemsetAsync(b_->step.data(), 0, 4, ctx_.stream()));
  position_ = n;
}

int Engine::max_step_tokens() const { return b_->max_tokens; }

const float* Engine::logits() const { return b_->logits.as<const float>(); }

std::vector<float> Engine::logits_host(int rows) {
  std::vector<float> out(size_t(rows) * config_.vocab);
  GLQ_CUDA_CHECK(cudaStreamSynchronize(ctx_.stream()));
  b_->logits.download(out.data(), out.size() * 4);
  return out;
}

std::vector<double> Engine::token_nll(const int32_t* targets, int rows) {
  if (rows <= 0 || rows > b_->max_tokens)
    throw_invalid("Engine::token_nll: rows " + std::to_string(rows) + " outside [1, " + std::to_string(b_->max_tokens) + "]");
  for (int i = 0; i < rows; ++i)
    if (targets[i] < 0 || targets[i] >= config_.vocab)
      throw_invalid("Engine::token_nll: token id " + std::to_string(targets[i]) + " outside [0, " +
                    std::to_string(config_.vocab) + ")");
  cudaStream_t stream = ctx_.stream();
  GLQ_CUDA_CHECK(cudaMemcpyAsync(b_->targets.data(), targets, size_t(rows) * 4, cudaMemcpyHostToDevice, stream));
  nll_kernel<<<rows, 256, 0, stream>>>(b_->logits.as<const float>(), config_.vocab, b_->targets.as<const int32_t>(),
                                       b_->nll.as<double>());
  GLQ_CUDA_CHECK_LAUNCH("nll_kernel");
  std::vector<double> out(rows);
  GLQ_CUDA_CHECK(cudaMemcpyAsync(out.data(), b_->nll.data(), size_t(rows) * 8, cudaMemcpyDeviceToHost, stream));
  GLQ_CUDA_CHECK(cudaStreamSynchronize(stream));
  return out;
}

size_t Engine::weight_bytes() const {
  size_t total = w_.lm_head.weight_bytes();
  for (const auto& L : w_.layers) {
    for (const auto& l : L.qkv) total += l.weight_bytes();
    for (const auto& l : L.gate_up) total += l.weight_bytes();
    total += L.o.weight_bytes() + L.down.weight_bytes() + L.attn_norm.bytes() + L.mlp_norm.bytes();
  }
  return total + w_.final_norm.bytes();
}

size_t Engine::bytes_per_token(int context) const {
  const size_t kv = size_t(2) * config_.layers * context * config_.kv_heads * config_.head_dim * 2;
  return weight_bytes() + size_t(config_.hidden) * 2 + kv;
}

namespace {

// 1-2 vectors of a quantized linear, GLQ_FUSED_FINISH=1: the output transform runs in the ring
// kernel's last block (qgemv_ring.cuh); ỹ, with the kernel's done counter behind it, is zeroed
// by the input transform. False, with nothing launched, where that path does not apply.
bool fused_linear(Context& ctx, const DeviceQuantizedMatrix& w, detail::PrepareParams p, size_t max_tokens,
                  float* y, int ld_y, bool accumulate, int n) {
  const auto& info = ctx.info();
  const int ld = detail::qgemv_ring_fused_ld(w.rows);
  if (n > detail::kRingMaxBatch || size_t(n) * ld > max_tokens * w.rows ||
      !detail::qgemv_ring_fused_enabled() || !detail::qgemv_ring_fused_supported(info, w, n))
    return false;
  auto* xt = static_cast<uint16_t*>(ctx.scratch(0, max_tokens * w.cols * 2));
  auto* yt = static_cast<float*>(ctx.scratch(1, max_tokens * w.rows * 4));
  p.t = detail::transform_in(w);
  p.out_type = detail::OutType::Half;
  p.out = xt;
  p.ld_out = w.cols;
  p.zero_ptr = yt;
  p.zero_count = ld;
  detail::launch_prepare(info, p, n, ctx.stream());
  detail::FinishParams f;
  f.t = detail::transform_out(w);
  f.y = y;
  f.ld_out = ld_y;
  f.accumulate = accumulate;
  detail::launch_qgemv_ring_fused(info, w, ctx.tables(), xt, w.cols, yt, n, f, ctx.stream());
  return true;
}

}  // namespace

struct Engine::Bridge {
  const EngineLinear* next = nullptr;  // the product whose input transform is fused in
  detail::PrepareParams pre;           // its pre-operation (RMSNorm; x is the new residual)
  float* h_out = nullptr;              // where the new residual goes (not y)
};

namespace {

// Whether the n-token products of w accumulate ỹ with atomics (ỹ zeroed first).
bool gemv_needs_zero(const DeviceInfo& info, const DeviceQuantizedMatrix& w, int n) {
  bool zero = false;
  for (int c0 = 0; c0 < n; c0 += kGemvMaxBatch)
    zero = zero || detail::qgemv_needs_zeroed_output(info, w, std::min(kGemvMaxBatch, n - c0));
  return zero;
}

// ỹ of a product run after a Bridge: its own scratch slot, since the bridge zeroes it while it
// still reads the ỹ of the product before (slot 1).
constexpr int kBridgedYtSlot = 4;

}  // namespace

bool Engine::run_linear(const EngineLinear& l, const void* prepare_params, float* y, int ld_y,
                        bool accumulate, int n, const Bridge* into, bool prepared) {
  detail::PrepareParams p = *static_cast<const detail::PrepareParams*>(prepare_params);
  const auto& info = ctx_.info();
  cudaStream_t stream = ctx_.stream();
  auto handle = static_cast<cublasHandle_t>(ctx_.cublas_handle());
  const float alpha = 1.0f, beta_acc = 1.0f, beta_zero = 0.0f;
  const bool gemv = n <= 2 * kGemvMaxBatch;
  if (prepared && !(l.q && gemv && !detail::qgemv_ring_fused_enabled()))
    throw_invalid("Engine::run_linear: a prepared product must be a quantized one of at most " +
                  std::to_string(2 * kGemvMaxBatch) + " tokens");
  if (l.q && !prepared && fused_linear(ctx_, *l.q, p, size_t(b_->max_tokens), y, ld_y, accumulate, n)) {
    // (input transform, then the decode kernel with the output transform in its last block)
  } else if (l.q) {
    const auto& w = *l.q;
    auto* xt = static_cast<uint16_t*>(ctx_.scratch(0, size_t(b_->max_tokens) * w.cols * 2));
    // 17-64 tokens: the shared-memory tile kernel, its slices of ỹ in the same scratch (reserved
    // for them by the constructor), summed by the output transform.
    const int tile_parts = engine_tile_parts(info, w, n);
    const bool tiles = tile_parts > 0;
    auto* yt = static_cast<float*>(ctx_.scratch(prepared ? kBridgedYtSlot : 1,
                                                yt_scratch_bytes(size_t(b_->max_tokens), w, n, tile_parts)));
    const bool zero = gemv && gemv_needs_zero(info, w, n);
    p.t = detail::transform_in(w);
    p.out_type = detail::OutType::Half;
    p.out = xt;
    p.ld_out = w.cols;
    p.zero_ptr = zero ? yt : nullptr;
    p.zero_count = zero ? w.rows : 0;
    // Straight from the codes (x̃ permuted for them), or dequantized for cuBLAS.
    const bool qgemm = !gemv && !tiles && detail::qgemm_supported(info, w, n) && detail::prepare_permutes(info, p, n);
    p.permute = qgemm ? 1 : 0;
    const bool half_out = qgemm || (!gemv && !tiles && detail::gemm_half_out());  // ỹ in fp16, as qmatmul's
    if (!prepared) detail::launch_prepare(info, p, n, stream);
    detail::FinishParams f;
    f.t = detail::transform_out(w);
    f.yt = yt;
    f.ld_in = w.rows;
    f.y = y;
    f.ld_out = ld_y;
    f.accumulate = accumulate;
    f.half_ok = 1;  // ỹ from fp16 x̃: the tensor-core output transform's fp16 steps are within its error
    if (tiles) {
      detail::launch_qmma_tiles_for_finish(info, w, ctx_.tables(), xt, yt, tile_parts, f, n, stream);
    } else if (gemv) {
      for (int c0 = 0; c0 < n; c0 += kGemvMaxBatch)
        detail::launch_qgemv(info, w, ctx_.tables(), xt + size_t(c0) * w.cols, w.cols, yt + size_t(c0) * w.rows,
                             w.rows, std::min(kGemvMaxBatch, n - c0), stream);
    } else if (qgemm) {
      detail::launch_qgemm(info, w, ctx_.tables(), xt, reinterpret_cast<uint16_t*>(yt), n, stream);
    } else {
      auto* wt = static_cast<uint16_t*>(ctx_.scratch(2, size_t(w.rows) * w.cols * 2));
      detail::launch_dequantize(info, w, ctx_.tables(), wt, true, stream);
      check_cublas(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, w.rows, n, w.cols, &alpha, wt, CUDA_R_16F,
                                w.cols, xt, CUDA_R_16F, w.cols, &beta_zero, yt, half_out ? CUDA_R_16F : CUDA_R_32F,
                                w.rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                   "cublasGemmEx (dequantized fp16)");
    }
    if (half_out) {
      f.yt = nullptr;
      f.yt_half = reinterpret_cast<const uint16_t*>(yt);
    }
    const EngineLinear* next = into ? into->next : nullptr;
    if (next && next->q && gemv && !half_out && !detail::qgemv_ring_fused_enabled() &&
        (!l.bias.bytes() || l.bias.bytes() == size_t(l.rows) * 4)) {
      // The next product's input transform fused in (its x̃ in slot 0, its ỹ zeroed in its slot).
      const auto& wn = *next->q;
      detail::PrepareParams pn = into->pre;
      pn.t = detail::transform_in(wn);
      pn.out_type = detail::OutType::Half;
      pn.out = ctx_.scratch(0, size_t(b_->max_tokens) * wn.cols * 2);
      pn.ld_out = wn.cols;
      pn.permute = 0;
      const bool zero_next = gemv_needs_zero(info, wn, n);
      pn.zero_ptr = zero_next ? static_cast<float*>(ctx_.scratch(kBridgedYtSlot, yt_scratch_bytes(size_t(b_->max_tokens), wn, n, 0)))
                              : nullptr;
      pn.zero_count = zero_next ? wn.rows : 0;
      if (detail::bridge_supported(info, f, pn, into->h_out, n)) {
        detail::launch_bridge(info, f, pn, into->h_out, l.bias.bytes() ? l.bias.as<const float>() : nullptr, n, stream);
        return true;
      }
    }
    detail::launch_finish(info, f, n, stream);
  } else if (l.dense) {
    const auto& w = *l.dense;
    auto* xb = static_cast<uint16_t*>(ctx_.scratch(3, size_t(b_->max_tokens) * w.cols * 2));
    p.t = detail::TransformShape{};
    p.t.n = w.cols;
    p.out_type = detail::OutType::BFloat16;
    p.out = xb;
    p.ld_out = w.cols;
    p.zero_ptr = nullptr;
    p.zero_count = 0;
    detail::launch_prepare(info, p, n, stream);
    check_cublas(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, w.rows, n, w.cols, &alpha, w.w.data(), CUDA_R_16BF,
                              w.cols, xb, CUDA_R_16BF, w.cols, accumulate ? &beta_acc : &beta_zero, y, CUDA_R_32F,
                              ld_y, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "cublasGemmEx (dense bf16)");
  } else {
    throw_invalid("Engine: a linear layer has no weights");
  }
  if (l.bias.bytes()) {
    if (l.bias.bytes() != size_t(l.rows) * 4)
      throw_mismatch("Engine: bias bytes", std::to_string(size_t(l.rows) * 4), std::to_string(l.bias.bytes()));
    add_bias_kernel<<<n, 256, 0, stream>>>(y, ld_y, l.bias.as<const float>(), l.rows);
    GLQ_CUDA_CHECK_LAUNCH("add_bias_kernel");
  }
  return false;
}

void Engine::enqueue_tokens(int n, bool single, HeadRows head_rows, int gather) {
  const auto& c = config_;
  auto& b = *b_;
  cudaStream_t stream = ctx_.stream();
  const int q_dim = c.heads * c.head_dim, kv_dim = c.kv_heads * c.head_dim;
  const int ld_qkv = q_dim + 2 * kv_dim;
  const int attn_groups = (c.heads / c.kv_heads + kAttnGroup - 1) / kAttnGroup;
  const int rope_threads = std::min(128, std::max(32, (c.head_dim / 2 + 31) / 32 * 32));
  // The residual stream: h, or its second buffer after a product whose output transform ran fused
  // with the next one's input transform (Bridge), which cannot write the vector its blocks read.
  float* h = b.h.as<float>();
  float* h_other = b.h2.as<float>();
  float* qkv = b.qkv.as<float>();
  float* gu = b.gu.as<float>();
  const int* tok_pos = b.tok_pos.as<const int>();
  const int* tok_slot = b.tok_slot.as<const int>();

  if (single) {
    seq_positions_kernel<<<1, 256, 0, stream>>>(b.pos.as<const int>(), n, b.tok_pos.as<int>(), b.tok_slot.as<int>());
    GLQ_CUDA_CHECK_LAUNCH("seq_positions_kernel");
  }
  embed_kernel<<<n, 256, 0, stream>>>(b.tokens.as<const int32_t>(), w_.embedding.as<const __nv_bfloat16>(),
                                      c.hidden, c.vocab, h);
  GLQ_CUDA_CHECK_LAUNCH("embed_kernel");
  const size_t layer_stride = size_t(c.slots) * b.slot_stride;
  const auto norm_params = [&](const DeviceMemory& norm_w) {
    detail::PrepareParams p;
    p.pre = detail::PreOp::RmsNorm;
    p.x = h;
    p.ld_x = c.hidden;
    p.norm_w = norm_w.as<const float>();
    p.eps = c.norm_eps;
    return p;
  };
  // y += l(pre(x)) into the residual stream, fused with the input transform of `next` (RMSNorm
  // with norm_w) where run_linear can: then the stream moves to the other buffer. Returns whether
  // it did (next then runs `prepared`).
  const auto residual_linear = [&](const EngineLinear& l, const detail::PrepareParams& pre, const EngineLinear* next,
                                   const DeviceMemory* norm_w) {
    Bridge br;
    if (next) {
      br.next = next;
      br.pre = norm_params(*norm_w);
      br.h_out = h_other;
    }
    const bool fused = run_linear(l, &pre, h, c.hidden, true, n, next ? &br : nullptr);
    if (fused) std::swap(h, h_other);
    return fused;
  };
  bool qkv_prepared = false;  // the first q/k/v product's x̃ was written by the layer before
  for (int li = 0; li < c.layers; ++li) {
    const auto& L = w_.layers[li];
    __half* kc = b.k_cache.as<__half>() + size_t(li) * layer_stride;
    __half* vc = b.v_cache.as<__half>() + size_t(li) * layer_stride;
    // [q | k | v] = rmsnorm(h) · Wqkv^T
    detail::PrepareParams pn = norm_params(L.attn_norm);
    int off = 0;
    for (const auto& part : L.qkv) {
      run_linear(part, &pn, qkv + off, ld_qkv, false, n, nullptr, qkv_prepared && off == 0);
      off += part.rows;
    }
    if (off != ld_qkv) throw_mismatch("Engine: q/k/v rows of layer " + std::to_string(li), std::to_string(ld_qkv), std::to_string(off));
    // A step of one token attends with RoPE and the cache write inside the attention kernel.
    const bool rope_in_attention = n == 1 && rope_in_attention_enabled();
    if (!rope_in_attention) {
      rope_cache_kernel<<<dim3(c.heads + c.kv_heads, n), rope_threads, 0, stream>>>(
          qkv, ld_qkv, c.heads, c.kv_heads, c.head_dim, b.inv_freq.as<const float>(), tok_pos, tok_slot, b.slot_stride,
          kc, vc);
      GLQ_CUDA_CHECK_LAUNCH("rope_cache_kernel");
    }
    if (single && n > 1 && prefill_attention_supported(c.head_dim)) {
      launch_prefill_attention(n, stream, qkv, ld_qkv, c.heads, c.kv_heads, c.head_dim, kc, vc, tok_pos, tok_slot,
                               b.slot_stride, 1.0f / std::sqrt(float(c.head_dim)), b.attn.as<float>());
    } else {
      const int fixed_chunk = attention_fixed_chunk();
      launch_attention(dim3(b.chunks, c.kv_heads * attn_groups, n), attn_kind_, fixed_chunk, stream, qkv, ld_qkv,
                       c.heads, c.kv_heads, c.head_dim, kc, vc,
                       rope_in_attention ? b.inv_freq.as<const float>() : nullptr, tok_pos, tok_slot, b.slot_stride,
                       1.0f / std::sqrt(float(c.head_dim)), b.chunks, b.part_m.as<float>(),
                       b.part_l.as<float>(), b.part_acc.as<float>(), b.attn_done.as<unsigned>(), b.attn.as<float>());
    }
    // h += attention · Wo^T
    detail::PrepareParams pc;
    pc.pre = detail::PreOp::Plain;
    pc.x = b.attn.as<const float>();
    pc.ld_x = q_dim;
    const bool gu_prepared = residual_linear(L.o, pc, L.gate_up.empty() ? nullptr : &L.gate_up[0], &L.mlp_norm);
    // [gate | up] = rmsnorm(h) · Wgu^T
    detail::PrepareParams pm = norm_params(L.mlp_norm);
    off = 0;
    for (const auto& part : L.gate_up) {
      run_linear(part, &pm, gu + off, 2 * c.intermediate, false, n, nullptr, gu_prepared && off == 0);
      off += part.rows;
    }
    if (off != 2 * c.intermediate) throw_mismatch("Engine: gate/up rows of layer " + std::to_string(li), std::to_string(2 * c.intermediate), std::to_string(off));
    // h += (silu(gate) ∘ up) · Wd^T
    detail::PrepareParams ps;
    ps.pre = detail::PreOp::SwiGlu;
    ps.x = gu;
    ps.ld_x = 2 * c.intermediate;
    const bool last = li + 1 == c.layers || w_.layers[li + 1].qkv.empty();
    qkv_prepared = residual_linear(L.down, ps, last ? nullptr : &w_.layers[li + 1].qkv[0],
                                   last ? nullptr : &w_.layers[li + 1].attn_norm);
  }
  // logits = rmsnorm(h) · lm_head^T, for the chosen rows
  if (head_rows == HeadRows::None) return;
  detail::PrepareParams pf;
  pf.pre = detail::PreOp::RmsNorm;
  pf.ld_x = c.hidden;
  pf.norm_w = w_.final_norm.as<const float>();
  pf.eps = c.norm_eps;
  int rows = 1;
  switch (head_rows) {
    case HeadRows::Last: pf.x = h + size_t(n - 1) * c.hidden; break;
    case HeadRows::All: pf.x = h; rows = n; break;
    case HeadRows::Gather:
      gather_rows_kernel<<<gather, 256, 0, stream>>>(h, b.rows.as<const int>(), c.hidden, b.hsel.as<float>());
      GLQ_CUDA_CHECK_LAUNCH("gather_rows_kernel");
      pf.x = b.hsel.as<const float>();
      rows = gather;
      break;
    case HeadRows::None: break;
  }
  run_linear(w_.lm_head, &pf, b.logits.as<float>(), c.vocab, false, rows);
}

namespace {

// Captures what `body` enqueues on `stream` into an executable graph.
template <typename F>
cudaGraphExec_t capture_graph(cudaStream_t stream, F&& body) {
  cudaGraph_t graph;
  GLQ_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  try {
    body();
  } catch (...) {
    cudaStreamEndCapture(stream, &graph);
    if (graph) cudaGraphDestroy(graph);
    throw;
  }
  GLQ_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  GLQ_CUDA_CHECK(err);
  return exec;
}

constexpr int kMaxGraphBatch = 64;  // decode passes of more sequences run without a graph

}  // namespace

void Engine::forward(const int32_t* tokens, int n, bool all_logits) {
  if (n <= 0) throw_invalid("Engine::forward: no tokens");
  if (position_ + n > config_.max_context)
    throw_invalid("Engine::forward: " + std::to_string(position_ + n) + " tokens exceed the cache capacity " +
                  std::to_string(config_.max_context));
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= config_.vocab)
      throw_invalid("Engine::forward: token id " + std::to_string(tokens[i]) + " outside [0, " +
                    std::to_string(config_.vocab) + ")");
  if (all_logits && n > b_->max_tokens)
    throw_invalid("Engine::forward: all_logits for more than " + std::to_string(b_->max_tokens) + " tokens at once");
  cudaStream_t stream = ctx_.stream();
  for (int done = 0; done < n;) {
    const int m = std::min(b_->max_tokens, n - done);
    GLQ_CUDA_CHECK(cudaMemcpyAsync(b_->tokens.data(), tokens + done, size_t(m) * 4, cudaMemcpyHostToDevice, stream));
    auto body = [&] {
      enqueue_tokens(m, true, all_logits ? HeadRows::All : HeadRows::Last);
      advance_kernel<<<1, 1, 0, stream>>>(b_->pos.as<int>(), m);
      GLQ_CUDA_CHECK_LAUNCH("advance_kernel");
    };
    attn_kind_ = attention_kind(position_ + m);
    if (m == 1 && !all_logits) {
      // One decode token: the second such call captures the pass (scratch and cuBLAS were set
      // up by the first), later ones replay it.
      cudaGraphExec_t& graph = step_graph_[size_t(attn_kind_)];
      if (!graph && step_calls_++ >= 1) graph = capture_graph(stream, body);
      if (graph) {
        GLQ_CUDA_CHECK(cudaGraphLaunch(graph, stream));
      } else {
        body();
      }
    } else {
      body();
    }
    GLQ_CUDA_CHECK(cudaStreamSynchronize(stream));  // the host token buffer may be reused
    done += m;
    position_ += m;
    last_row_ = all_logits ? m - 1 : 0;
  }
}

void Engine::forward_slots(const SlotStep* steps, int count) {
  const auto& c = config_;
  auto& b = *b_;
  if (count <= 0) throw_invalid("Engine::forward_slots: no sequences");
  std::vector<char> seen(size_t(c.slots), 0);
  for (int i = 0; i < count; ++i) {
    const SlotStep& s = steps[i];
    const std::string what = "Engine::forward_slots: sequence " + std::to_string(i);
    if (s.slot < 0 || s.slot >= c.slots)
      throw_invalid(what + ": slot " + std::to_string(s.slot) + " outside [0, " + std::to_string(c.slots) + ")");
    if (seen[size_t(s.slot)]++) throw_invalid(what + ": slot " + std::to_string(s.slot) + " appears twice");
    if (s.n <= 0 || !s.tokens) throw_invalid(what + ": no tokens");
    if (s.pos < 0 || s.pos + s.n > c.max_context)
      throw_invalid(what + ": positions " + std::to_string(s.pos) + ".." + std::to_string(s.pos + s.n) +
                    " exceed the cache capacity " + std::to_string(c.max_context));
    for (int t = 0; t < s.n; ++t)
      if (s.tokens[t] < 0 || s.tokens[t] >= c.vocab)
        throw_invalid(what + ": token id " + std::to_string(s.tokens[t]) + " outside [0, " + std::to_string(c.vocab) + ")");
  }
  const int T = b.max_tokens;
  std::vector<float*> outs;
  int si = 0, off = 0;
  while (si < count) {
    b.h_tokens.clear();
    b.h_pos.clear();
    b.h_slot.clear();
    b.h_rows.clear();
    outs.clear();
    bool decode_only = true;
    int n = 0;
    while (si < count && n < T) {
      const SlotStep& s = steps[si];
      const int len = std::min(s.n - off, T - n);
      for (int j = 0; j < len; ++j) {
        b.h_tokens.push_back(s.tokens[off + j]);
        b.h_pos.push_back(s.pos + off + j);
        b.h_slot.push_back(s.slot);
      }
      n += len;
      off += len;
      if (s.n != 1) decode_only = false;
      if (off == s.n) {
        if (s.logits) {
          b.h_rows.push_back(n - 1);
          outs.push_back(s.logits);
        } else {
          decode_only = false;
        }
        ++si;
        off = 0;
      } else {
        decode_only = false;
      }
    }
    run_pass(n, int(outs.size()), decode_only);
    for (size_t r = 0; r < outs.size(); ++r)
      std::copy_n(b.h_logits.data() + r * size_t(c.vocab), c.vocab, outs[r]);
  }
}

void Engine::run_pass(int n, int k, bool decode_only) {
  auto& b = *b_;
  cudaStream_t stream = ctx_.stream();
  GLQ_CUDA_CHECK(cudaMemcpyAsync(b.tokens.data(), b.h_tokens.data(), size_t(n) * 4, cudaMemcpyHostToDevice, stream));
  GLQ_CUDA_CHECK(cudaMemcpyAsync(b.tok_pos.data(), b.h_pos.data(), size_t(n) * 4, cudaMemcpyHostToDevice, stream));
  GLQ_CUDA_CHECK(cudaMemcpyAsync(b.tok_slot.data(), b.h_slot.data(), size_t(n) * 4, cudaMemcpyHostToDevice, stream));
  attn_kind_ = attention_kind(*std::max_element(b.h_pos.begin(), b.h_pos.begin() + n) + 1);
  if (decode_only && n <= kMaxGraphBatch) {
    // Every sequence decodes one token and wants its logits: the rows are the tokens. The
    // second pass of n sequences captures a graph, later ones replay it.
    if (batch_graphs_.size() <= size_t(n)) {
      batch_graphs_.resize(size_t(n) + 1, Graphs{});
      batch_calls_.resize(size_t(n) + 1, 0);
    }
    auto body = [&] { enqueue_tokens(n, false, HeadRows::All); };
    cudaGraphExec_t& graph = batch_graphs_[size_t(n)][size_t(attn_kind_)];
    if (!graph && batch_calls_[n]++ >= 1) graph = capture_graph(stream, body);
    if (graph) {
      GLQ_CUDA_CHECK(cudaGraphLaunch(graph, stream));
    } else {
      body();
    }
  } else if (decode_only) {
    enqueue_tokens(n, false, HeadRows::All);
  } else {
    if (k > 0)
      GLQ_CUDA_CHECK(cudaMemcpyAsync(b.rows.data(), b.h_rows.data(), size_t(k) * 4, cudaMemcpyHostToDevice, stream));
    enqueue_tokens(n, false, k > 0 ? HeadRows::Gather : HeadRows::None, k);
  }
  b.h_logits.resize(size_t(k) * config_.vocab);
  if (k > 0)
    GLQ_CUDA_CHECK(cudaMemcpyAsync(b.h_logits.data(), b.logits.data(), b.h_logits.size() * 4, cudaMemcpyDeviceToHost, stream));
  GLQ_CUDA_CHECK(cudaStreamSynchronize(stream));
}

std::vector<int32_t> Engine::generate_greedy(int n, double* graph_seconds) {
  if (n <= 0) return {};
  if (position_ + n > config_.max_context)
    throw_invalid("Engine::generate_greedy: " + std::to_string(position_ + n) + " tokens exceed the cache capacity");
  auto& b = *b_;
  cudaStream_t stream = ctx_.stream();
  GLQ_CUDA_CHECK(cudaMemsetAsync(b.step.data(), 0, 4, stream));
  int row = last_row_;  // the last token's row of the logits of the last forward()
  auto sample = [&](int advance) {
    argmax_kernel<<<kArgmaxBlocks, kArgmaxThreads, 0, stream>>>(
        b.logits.as<const float>() + size_t(row) * config_.vocab, config_.vocab, b.tokens.as<int32_t>(),
        b.generated.as<int32_t>(), b.step.as<int>(), b.pos.as<int>(), advance, b.argmax_v.as<float>(),
        b.argmax_i.as<int>(), b.argmax_done.as<unsigned>());
    GLQ_CUDA_CHECK_LAUNCH("argmax_kernel");
  };
  sample(0);  // the first token from the logits of the last forward()
  row = 0;    // decode steps write one row
  last_row_ = 0;
  auto step = [&] {
    enqueue_tokens(1, true, HeadRows::Last);
    sample(1);
  };
  int done = 1;
  if (done < n) {  // one step outside the graph: scratch and cuBLAS set up before capture
    attn_kind_ = attention_kind(position_ + 1);
    step();
    ++done;
    ++position_;
  }
  // Graph step i attends position_ + i + 1 keys: the graphs of the kinds the steps need, captured
  // before the timed replays.
  const int graph_steps = n - done;
  for (int i = 0; i < graph_steps; ++i) {
    attn_kind_ = attention_kind(position_ + i + 1);
    if (!decode_graph_[size_t(attn_kind_)]) decode_graph_[size_t(attn_kind_)] = capture_graph(stream, step);
  }
  cudaEvent_t e0, e1;
  GLQ_CUDA_CHECK(cudaEventCreate(&e0));
  GLQ_CUDA_CHECK(cudaEventCreate(&e1));
  GLQ_CUDA_CHECK(cudaEventRecord(e0, stream));
  for (int i = 0; i < graph_steps; ++i)
    GLQ_CUDA_CHECK(cudaGraphLaunch(decode_graph_[size_t(attention_kind(position_ + i + 1))], stream));
  GLQ_CUDA_CHECK(cudaEventRecord(e1, stream));
  GLQ_CUDA_CHECK(cudaEventSynchronize(e1));
  float ms = 0;
  GLQ_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  if (graph_seconds) *graph_seconds = ms / 1e3;
  position_ += graph_steps;
  std::vector<int32_t> out(n);
  b.generated.download(out.data(), size_t(n) * 4);
  return out;
}

}  // namespace glq::cuda
