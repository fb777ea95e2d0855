// The GPU decoder engine against a plain double-precision forward pass on the CPU, on a tiny
// random model whose linears are GLQ-quantized at mixed widths (q/k/v and gate/up given as
// separate parts, as checkpoints store them) with a dense bf16 output head. Checks prefill
// logits of every token and the logits after greedy decoding through the CUDA graph.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <random>
#include <vector>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/error.hpp"
#include "glq/kernels/cuda.hpp"
#include "glq/kernels/cuda_engine.hpp"
#include "kernels/cuda/launch.hpp"
#include "glq/transform/hadamard.hpp"
#include "cuda_test_util.hpp"

namespace {

struct Dense {
  int rows = 0, cols = 0;
  std::vector<float> w;  // (rows, cols)
  std::vector<double> apply(const std::vector<double>& x) const {
    std::vector<double> y(rows, 0.0);
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) y[r] += double(w[size_t(r) * cols + c]) * x[c];
    return y;
  }
};

float bf16_round(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t bf16_bits(float f) {
  uint32_t u;
  f = bf16_round(f);
  std::memcpy(&u, &f, 4);
  return uint16_t(u >> 16);
}

struct CpuLayer {
  std::vector<float> attn_norm, mlp_norm;
  Dense q, k, v, o, gate, up, down;
};

struct TinyModel {
  glq::cuda::EngineConfig cfg;
  std::vector<float> embedding;  // (vocab, hidden), bf16-rounded
  std::vector<CpuLayer> layers;
  std::vector<float> final_norm;
  Dense lm_head;                 // bf16-rounded
};

std::vector<double> rmsnorm(const std::vector<double>& x, const std::vector<float>& g, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double r = 1.0 / std::sqrt(ss / x.size() + eps);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * r * g[i];
  return y;
}

// Logits of every token of `tokens`, run one at a time with a KV cache.
std::vector<std::vector<double>> cpu_forward(const TinyModel& m, const std::vector<int32_t>& tokens) {
  const auto& c = m.cfg;
  const int hd = c.head_dim, group = c.heads / c.kv_heads;
  std::vector<std::vector<std::vector<double>>> kc(c.layers), vc(c.layers);
  std::vector<std::vector<double>> out;
  for (size_t p = 0; p < tokens.size(); ++p) {
    std::vector<double> h(c.hidden);
    for (int i = 0; i < c.hidden; ++i) h[i] = m.embedding[size_t(tokens[p]) * c.hidden + i];
    for (int l = 0; l < c.layers; ++l) {
      const auto& L = m.layers[l];
      const auto a = rmsnorm(h, L.attn_norm, c.norm_eps);
      auto q = L.q.apply(a), k = L.k.apply(a), v = L.v.apply(a);
      auto rope = [&](std::vector<double>& x, int heads) {
        for (int hh = 0; hh < heads; ++hh)
          for (int i = 0; i < hd / 2; ++i) {
            const double ang = double(p) * c.rope_inv_freq[i];
            double& x0 = x[hh * hd + i];
            double& x1 = x[hh * hd + i + hd / 2];
            const double y0 = x0 * std::cos(ang) - x1 * std::sin(ang), y1 = x1 * std::cos(ang) + x0 * std::sin(ang);
            x0 = y0;
            x1 = y1;
          }
      };
      rope(q, c.heads);
      rope(k, c.kv_heads);
      kc[l].push_back(k);
      vc[l].push_back(v);
      std::vector<double> att(size_t(c.heads) * hd, 0.0);
      for (int hh = 0; hh < c.heads; ++hh) {
        const int kvh = hh / group;
        std::vector<double> s(p + 1);
        double mx = -1e300;
        for (size_t j = 0; j <= p; ++j) {
          double d = 0;
          for (int i = 0; i < hd; ++i) d += q[hh * hd + i] * kc[l][j][kvh * hd + i];
          s[j] = d / std::sqrt(double(hd));
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (auto& x : s) sum += (x = std::exp(x - mx));
        for (size_t j = 0; j <= p; ++j)
          for (int i = 0; i < hd; ++i) att[hh * hd + i] += s[j] / sum * vc[l][j][kvh * hd + i];
      }
      const auto o = L.o.apply(att);
      for (int i = 0; i < c.hidden; ++i) h[i] += o[i];
      const auto mm = rmsnorm(h, L.mlp_norm, c.norm_eps);
      const auto g = L.gate.apply(mm), u = L.up.apply(mm);
      std::vector<double> act(c.intermediate);
      for (int i = 0; i < c.intermediate; ++i) act[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      const auto d = L.down.apply(act);
      for (int i = 0; i < c.hidden; ++i) h[i] += d[i];
    }
    out.push_back(m.lm_head.apply(rmsnorm(h, m.final_norm, c.norm_eps)));
  }
  return out;
}

double rel_err(const float* got, const std::vector<double>& ref) {
  return glq::test::rel_err(got, ref.data(), ref.size());
}

// Prefill, graph decoding and long prompts of a tiny mixed 2/3/4-bit model against the CPU
// forward pass in double precision, for one attention layout (query heads, kv heads, head_dim).
// `wide`: one layer of hidden 3072 (a = 12, b = 256) and intermediate 5120 (a = 20, b = 256),
// the shapes of the tensor-core transforms, prefilled with 24, 40 and 64 tokens: the transforms
// split over thread-block clusters (sm_90) with RMSNorm and SwiGLU fused, the tile kernel's
// fp16 slices of ỹ and the residual add in the output side. `long_context`: a cache of `capacity`
// tokens, a `prompt_tokens`-token prompt and graph decoding after it, whose attention merges several
// key chunks.
void check_engine(int heads, int kv_heads, int head_dim, bool wide = false, bool long_context = false,
                  int capacity = 700, int prompt_tokens = 600, int decode_steps = 4) {
  TinyModel m;
  auto& c = m.cfg;
  c.vocab = 152; c.hidden = wide ? 3072 : 64; c.intermediate = wide ? 5120 : 96; c.layers = wide ? 1 : 2;
  c.heads = heads; c.kv_heads = kv_heads; c.head_dim = head_dim; c.max_context = long_context ? capacity : 100; c.norm_eps = 1e-5f;
  for (int i = 0; i < c.head_dim / 2; ++i) c.rope_inv_freq.push_back(std::pow(10000.0f, -2.0f * i / c.head_dim));
  std::mt19937_64 rng(42);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(0.8f, 1.2f);

  glq::cuda::EngineWeights w;
  m.embedding.resize(size_t(c.vocab) * c.hidden);
  std::vector<uint16_t> emb16(m.embedding.size());
  for (size_t i = 0; i < m.embedding.size(); ++i) {
    m.embedding[i] = bf16_round(nd(rng));
    emb16[i] = bf16_bits(m.embedding[i]);
  }
  w.embedding = glq::cuda::to_device(emb16);
  const int q_dim = c.heads * c.head_dim, kv_dim = c.kv_heads * c.head_dim;
  uint64_t seed = 100;
  auto quant = [&](int rows, int cols, int bits, Dense& cpu) {
    const auto q = glq::test::random_quantized(rows, cols, bits, seed++);
    cpu.rows = rows;
    cpu.cols = cols;
    cpu.w = glq::codec::dequantize(q);
    return glq::cuda::EngineLinear::from(glq::cuda::upload(q));
  };
  for (int l = 0; l < c.layers; ++l) {
    CpuLayer L;
    glq::cuda::EngineLayer G;
    L.attn_norm.resize(c.hidden);
    L.mlp_norm.resize(c.hidden);
    for (auto& v : L.attn_norm) v = ud(rng);
    for (auto& v : L.mlp_norm) v = ud(rng);
    G.attn_norm = glq::cuda::to_device(L.attn_norm);
    G.mlp_norm = glq::cuda::to_device(L.mlp_norm);
    G.qkv.push_back(quant(q_dim, c.hidden, 2, L.q));
    G.qkv.push_back(quant(kv_dim, c.hidden, 3, L.k));
    G.qkv.push_back(quant(kv_dim, c.hidden, 4, L.v));
    G.o = quant(c.hidden, q_dim, 2, L.o);
    G.gate_up.push_back(quant(c.intermediate, c.hidden, 3, L.gate));
    G.gate_up.push_back(quant(c.intermediate, c.hidden, 2, L.up));
    G.down = quant(c.hidden, c.intermediate, 4, L.down);
    m.layers.push_back(std::move(L));
    w.layers.push_back(std::move(G));
  }
  m.final_norm.resize(c.hidden);
  for (auto& v : m.final_norm) v = ud(rng);
  w.final_norm = glq::cuda::to_device(m.final_norm);
  m.lm_head.rows = c.vocab;
  m.lm_head.cols = c.hidden;
  m.lm_head.w.resize(size_t(c.vocab) * c.hidden);
  for (auto& v : m.lm_head.w) v = bf16_round(nd(rng) / std::sqrt(float(c.hidden)));
  w.lm_head = glq::cuda::EngineLinear::from(glq::cuda::upload_dense_bf16(m.lm_head.w.data(), c.vocab, c.hidden));

  glq::cuda::Context ctx;
  glq::cuda::Engine engine(ctx, c, std::move(w));
  // A prompt of n tokens (id i·mul + add) from an empty cache against the CPU forward pass:
  // every step-th token's logits and the last one's.
  auto check_prefill = [&](size_t n, size_t mul, size_t add, size_t step, const char* what) {
    engine.reset();
    std::vector<int32_t> p(n);
    for (size_t i = 0; i < n; ++i) p[i] = int32_t((i * mul + add) % c.vocab);
    engine.forward(p.data(), int(n), true);
    const auto got = engine.logits_host(int(n));
    const auto ref = cpu_forward(m, p);
    for (size_t t = 0; t < n; t += step)
      EXPECT_LT(rel_err(got.data() + t * c.vocab, ref[t]), 2e-2) << what << " token " << t;
    EXPECT_LT(rel_err(got.data() + (n - 1) * c.vocab, ref.back()), 2e-2) << what << " last token";
    return p;
  };
  // `steps` greedy steps through the graph after `prompt` (in the cache), against the CPU pass
  // fed the same tokens: the last step's logits.
  auto check_decode_after = [&](std::vector<int32_t> all, int steps, const char* what) {
    const auto gen = engine.generate_greedy(steps);
    all.insert(all.end(), gen.begin(), gen.end() - 1);
    const auto ref = cpu_forward(m, all);
    const auto last = engine.logits_host(1);
    EXPECT_LT(rel_err(last.data(), ref.back()), 2e-2) << what;
  };
  if (long_context) {
    // The prompt in one pass (logits of the last only), then `decode_steps` through the graph.
    engine.reset();
    std::vector<int32_t> p(size_t(prompt_tokens), 0);
    for (size_t i = 0; i < p.size(); ++i) p[i] = int32_t((i * 53 + 7) % c.vocab);
    engine.forward(p.data(), int(p.size()), false);
    check_decode_after(p, decode_steps, "logits after decoding over several key chunks");
    return;
  }
  if (wide) {
    check_prefill(24, 41, 3, 5, "24-token prefill (wide)");
    check_prefill(40, 37, 11, 9, "40-token prefill (wide)");
    check_prefill(64, 53, 7, 13, "64-token prefill (wide)");
    return;
  }
  std::vector<int32_t> prompt = {3, 17, 150, 42, 99, 0, 77, 5, 61, 120, 8};
  engine.forward(prompt.data(), int(prompt.size()), /*all_logits=*/true);
  const auto gpu = engine.logits_host(int(prompt.size()));
  const auto ref = cpu_forward(m, prompt);
  for (size_t t = 0; t < prompt.size(); ++t)
    EXPECT_LT(rel_err(gpu.data() + t * c.vocab, ref[t]), 2e-2) << "prefill token " << t;

  // Greedy decoding through the graph; the CPU pass is fed the same tokens.
  const int n = 6;
  const auto gen = engine.generate_greedy(n);
  ASSERT_EQ(int(gen.size()), n);
  EXPECT_EQ(engine.position(), int(prompt.size()) + n - 1);
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), gen.begin(), gen.end() - 1);
  const auto ref2 = cpu_forward(m, all);
  const auto last = engine.logits_host(1);
  EXPECT_LT(rel_err(last.data(), ref2.back()), 2e-2) << "logits after graph decoding";
  // The first generated token is the argmax of the prefill's last logits (GPU's own).
  int best = 0;
  for (int i = 1; i < c.vocab; ++i)
    if (gpu[(prompt.size() - 1) * c.vocab + i] > gpu[(prompt.size() - 1) * c.vocab + best]) best = i;
  EXPECT_EQ(gen[0], best);

  // 20 tokens: the dequantize + cuBLAS path (fp16 ỹ) and the whole-vector transforms.
  check_prefill(20, 41, 3, 7, "20-token prefill");
  // 40 tokens: the shared-memory tile decode kernel (17-64 vectors), its column ranges summed by
  // the output transform.
  check_prefill(40, 37, 11, 13, "long prefill");
  // 80 tokens: the whole-vector transforms of 64+ vectors inside the engine (RMSNorm fused into
  // the q/k/v input, the residual add into the outputs), and attention over two key chunks
  // merged by the last block of each token.
  const auto p80 = check_prefill(80, 53, 7, 11, "80-token prefill");
  // Decoding after it, through the graph: each step's attention spans two key chunks, merged by
  // the last block to finish.
  check_decode_after(p80, 4, "logits after decoding past the first key chunk");
}

TEST(CudaEngine, MatchesCpuForwardPrefillAndGraphDecode) {
  if (glq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  check_engine(4, 2, 16);
}

// Ten query heads on one kv head (two head groups of the attention kernel) of 32 dimensions.
TEST(CudaEngine, MatchesCpuForwardWithTenQueryHeadsPerKvHead) {
  if (glq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  check_engine(10, 1, 32);
}

// The decode attention with 128 and 512 threads per block (the default is 256), and with RoPE and
// the cache write in their own kernel (by default the attention kernel does them for one-token
// steps): 512 threads with ten query heads (two head groups) exceed 48 KB of shared memory.
TEST(CudaEngine, MatchesCpuForwardWithOtherAttentionBlocks) {
  if (glq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  namespace d = glq::cuda::detail;
  struct Restore {
    ~Restore() {
      glq::cuda::detail::set_attention_threads(0);
      glq::cuda::detail::set_rope_in_attention(-1);
    }
  } restore;
  for (const int threads : {128, 512}) {
    for (const int rope_inside : {0, 1}) {
      SCOPED_TRACE(testing::Message() << threads << " threads, RoPE inside the attention kernel: " << rope_inside);
      d::set_attention_threads(threads);
      d::set_rope_in_attention(rope_inside);
      check_engine(10, 1, 32);
    }
  }
  d::set_attention_threads(256);
  d::set_rope_in_attention(0);
  check_engine(4, 2, 16);
}

// Decoding after a long prompt, over several key chunks (the last block of each head group
// merges their partials). The three kernels by context length (attention_kind): 600 tokens
// (512 threads, 19 chunks of 32 keys), 1,100 (256 threads, 18 of 64) and 3,200 (512 threads, 13
// of 256); then 600 tokens in chunks of 32, 64, 128 and 256 keys (19, 10, 5 and 3 chunks), and in
// 64-key chunks with blocks of 256 and 128 threads; head_dim 16, 32 (ten query heads on one kv
// head: two head groups) and 128.
TEST(CudaEngine, DecodeMergesManyKeyChunks) {
  if (glq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  namespace d = glq::cuda::detail;
  struct Restore {
    ~Restore() {
      glq::cuda::detail::set_attention_threads(0);
      glq::cuda::detail::set_attention_chunk(0);
    }
  } restore;
  d::set_attention_threads(0);
  d::set_attention_chunk(0);
  check_engine(4, 2, 16, false, true);
  check_engine(10, 1, 32, false, true);
  check_engine(8, 2, 128, false, true);
  check_engine(4, 2, 16, false, true, 1200, 1100);
  check_engine(8, 2, 128, false, true, 1200, 1100);
  check_engine(4, 2, 16, false, true, 3300, 3200);
  // Steps across the first two kinds' boundary (contexts 1,021-1,027): two decode graphs.
  check_engine(8, 2, 128, false, true, 1100, 1020, 8);
  for (const int keys : {32, 64, 128, 256}) {
    SCOPED_TRACE(testing::Message() << keys << " keys per attention chunk");
    d::set_attention_chunk(keys);
    check_engine(4, 2, 16, false, true);
    check_engine(10, 1, 32, false, true);
    check_engine(8, 2, 128, false, true);
  }
  d::set_attention_chunk(64);
  for (const int threads : {256, 128}) {
    SCOPED_TRACE(testing::Message() << threads << " threads per attention block");
    d::set_attention_threads(threads);
    check_engine(4, 2, 16, false, true);
    check_engine(8, 2, 128, false, true);
  }
}

// The shapes of the tensor-core transforms (see check_engine): 24 query heads of 128 on 6 kv heads.
TEST(CudaEngine, MatchesCpuForwardPrefillOnTensorCoreTransformShapes) {
  if (glq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  check_engine(24, 6, 128, true);
}

// The same with the opt-in GEMM straight from the codes for the 80-token prefill (its input
// transforms write x̃ permuted for it, with RMSNorm and SwiGLU fused in).
TEST(CudaEngine, MatchesCpuForwardPrefillThroughQgemm) {
  if (glq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  struct Restore {
    ~Restore() { glq::cuda::detail::set_qgemm(-1); }
  } restore;
  glq::cuda::detail::set_qgemm(1);
  check_engine(24, 6, 128, true);
}

// The attention kernel takes head_dim in multiples of 8 up to 256; others are refused.
TEST(CudaEngine, RefusesHeadDimTheAttentionKernelCannotTake) {
  if (glq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  glq::cuda::EngineConfig c;
  c.vocab = 16; c.hidden = 12; c.intermediate = 8; c.layers = 1;
  c.heads = 1; c.kv_heads = 1; c.head_dim = 12; c.max_context = 8;
  for (int i = 0; i < c.head_dim / 2; ++i) c.rope_inv_freq.push_back(1.0f);
  glq::cuda::Context ctx;
  glq::cuda::EngineWeights w;
  try {
    glq::cuda::Engine engine(ctx, c, std::move(w));
    ADD_FAILURE() << "head_dim 12 was accepted";
  } catch (const glq::Error& e) {
    EXPECT_EQ(e.kind(), glq::ErrorKind::Unsupported);
    EXPECT_NE(std::string(e.what()).find("head_dim 12"), std::string::npos) << e.what();
  }
}

}  // namespace
