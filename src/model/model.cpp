// The Llama-family forward pass (see glq/model/model.hpp for the equations).
//
// All new tokens of all sequences of a step are stacked into one activation matrix, so every
// linear is one sgemm (or one qmatmul) per step. Attention is per sequence: queries of the new
// tokens against the keys of that sequence's cache (past + new), causal. Long chunks (prefill)
// use sgemm for Q·K^T and P·V per head; short ones (decode) use dot products split over heads.
#include "glq/model/model.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <numbers>

#include <fmt/format.h>

#include "glq/error.hpp"

namespace glq::model {

namespace {

// Below this many new tokens per sequence, attention uses per-head dot products; from it on,
// per-head sgemm (chosen so that decode steps avoid BLAS call overhead).
constexpr int kGemmAttentionMinTokens = 8;

void rms_norm(const float* x, const float* w, float* y, int n, float eps) {
  double ss = 0;
  for (int i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float inv = 1.0f / std::sqrt(static_cast<float>(ss / n) + eps);
  for (int i = 0; i < n; ++i) y[i] = x[i] * inv * w[i];
}

void rms_norm_rows(const float* x, const std::vector<float>& w, float* y, int rows, int n, float eps, ThreadPool& pool) {
  pool.parallel_for(rows, [&](int64_t b, int64_t e, int) {
    for (int64_t r = b; r < e; ++r) rms_norm(x + r * n, w.data(), y + r * n, n, eps);
  });
}

// One sequence's share of a step: rows [row, row + n) of the stacked activations are its new
// tokens at positions past .. past + n - 1; k/v hold (past + n, kv_dim) rows.
struct SeqSlice {
  int row = 0;
  int n = 0;
  int past = 0;
  float* k = nullptr;
  float* v = nullptr;
};

}  // namespace

const char* linear_kind_name(LinearKind kind) {
  switch (kind) {
    case LinearKind::Q: return "q_proj";
    case LinearKind::K: return "k_proj";
    case LinearKind::V: return "v_proj";
    case LinearKind::O: return "o_proj";
    case LinearKind::Gate: return "gate_proj";
    case LinearKind::Up: return "up_proj";
    case LinearKind::Down: return "down_proj";
  }
  return "?";
}

std::string linear_tensor_prefix(int layer, LinearKind kind) {
  const bool attn = kind == LinearKind::Q || kind == LinearKind::K || kind == LinearKind::V || kind == LinearKind::O;
  return fmt::format("model.layers.{}.{}.{}", layer, attn ? "self_attn" : "mlp", linear_kind_name(kind));
}

Linear& DecoderLayer::linear(LinearKind kind) {
  switch (kind) {
    case LinearKind::Q: return q;
    case LinearKind::K: return k;
    case LinearKind::V: return v;
    case LinearKind::O: return o;
    case LinearKind::Gate: return gate;
    case LinearKind::Up: return up;
    case LinearKind::Down: return down;
  }
  throw Error(ErrorKind::Internal, "unknown LinearKind");
}

const Linear& DecoderLayer::linear(LinearKind kind) const { return const_cast<DecoderLayer*>(this)->linear(kind); }

Model::Model(ModelConfig config, std::shared_ptr<const std::vector<float>> embedding, std::vector<DecoderLayer> layers,
             std::vector<float> final_norm, Linear lm_head)
    : Model(std::move(config), std::move(embedding), std::move(layers), std::move(final_norm), std::move(lm_head),
            EmbeddingRows()) {}

Model::Model(ModelConfig config, std::shared_ptr<const std::vector<float>> embedding, std::vector<DecoderLayer> layers,
             std::vector<float> final_norm, Linear lm_head, EmbeddingRows embedding_rows)
    : config_(std::move(config)),
      embedding_(std::move(embedding)),
      embedding_rows_(std::move(embedding_rows)),
      layers_(std::move(layers)),
      final_norm_(std::move(final_norm)),
      lm_head_(std::move(lm_head)),
      pool_(&ThreadPool::global()) {
  const ModelConfig& c = config_;
  c.validate();
  const int h = c.hidden_size;
  if (!embedding_rows_ && (!embedding_ || embedding_->size() != static_cast<size_t>(c.vocab_size) * h))
    throw_mismatch("Model: embedding", fmt::format("{} x {}", c.vocab_size, h), fmt::format("{} values", embedding_ ? embedding_->size() : 0));
  if (static_cast<int>(layers_.size()) != c.num_layers)
    throw_mismatch("Model: layers", fmt::format("{}", c.num_layers), fmt::format("{}", layers_.size()));
  if (final_norm_.size() != static_cast<size_t>(h))
    throw_mismatch("Model: final norm", fmt::format("{} values", h), fmt::format("{}", final_norm_.size()));
  auto check = [](const Linear& l, int rows, int cols, const std::string& name) {
    if (l.rows() != rows || l.cols() != cols)
      throw_mismatch(name, fmt::format("{}x{}", rows, cols), fmt::format("{}x{}", l.rows(), l.cols()));
  };
  check(lm_head_, c.vocab_size, h, "Model: lm_head");
  for (int i = 0; i < c.num_layers; ++i) {
    const DecoderLayer& L = layers_[i];
    if (L.attn_norm.size() != static_cast<size_t>(h) || L.mlp_norm.size() != static_cast<size_t>(h))
      throw_mismatch(fmt::format("Model: layer {} norms", i), fmt::format("{} values", h),
                     fmt::format("{} and {}", L.attn_norm.size(), L.mlp_norm.size()));
    check(L.q, c.q_dim(), h, linear_tensor_prefix(i, LinearKind::Q));
    check(L.k, c.kv_dim(), h, linear_tensor_prefix(i, LinearKind::K));
    check(L.v, c.kv_dim(), h, linear_tensor_prefix(i, LinearKind::V));
    check(L.o, h, c.q_dim(), linear_tensor_prefix(i, LinearKind::O));
    check(L.gate, c.intermediate_size, h, linear_tensor_prefix(i, LinearKind::Gate));
    check(L.up, c.intermediate_size, h, linear_tensor_prefix(i, LinearKind::Up));
    check(L.down, h, c.intermediate_size, linear_tensor_prefix(i, LinearKind::Down));
  }
  // RoPE inverse frequencies, as Hugging Face computes them (base^(-2i/d)), then scaled.
  const int half = c.head_dim / 2;
  rope_inv_freq_.resize(static_cast<size_t>(half));
  const auto& rs = c.rope_scaling;
  for (int i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(static_cast<double>(c.rope_theta), 2.0 * i / c.head_dim);
    if (!rs.freq_factors.empty()) {
      f /= rs.freq_factors[static_cast<size_t>(i)];
    } else if (rs.type == "linear") {
      f /= rs.factor;
    } else if (rs.type == "llama3") {
      // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between
      // interpolated (transformers' _compute_llama3_parameters).
      const double old_ctx = rs.original_max_position;
      const double low_wavelen = old_ctx / rs.low_freq_factor, high_wavelen = old_ctx / rs.high_freq_factor;
      const double wavelen = 2 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f /= rs.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        f = (1 - smooth) * f / rs.factor + smooth * f;
      }
    }
    rope_inv_freq_[static_cast<size_t>(i)] = static_cast<float>(f);
  }
}

Model::Model(ModelConfig config, EmbeddingRows embedding_rows, std::vector<DecoderLayer> layers,
             std::vector<float> final_norm, Linear lm_head)
    : Model(std::move(config), std::shared_ptr<const std::vector<float>>(), std::move(layers), std::move(final_norm),
            std::move(lm_head), std::move(embedding_rows)) {}

const std::vector<float>& Model::embedding() const {
  if (!embedding_) throw_invalid("this model reads its token embedding from its file on demand (no float32 table)");
  return *embedding_;
}

void Model::embedding_rows(int64_t first, int64_t count, float* out) const {
  const int h = config_.hidden_size;
  if (first < 0 || count < 0 || first + count > config_.vocab_size)
    throw_invalid(fmt::format("embedding rows [{}, {}) of {}", first, first + count, config_.vocab_size));
  if (embedding_rows_) {
    embedding_rows_(first, count, out);
  } else {
    std::copy_n(embedding_->data() + static_cast<size_t>(first) * h, static_cast<size_t>(count) * h, out);
  }
}

DecoderLayer& Model::layer(int i) {
  if (i < 0 || i >= num_layers()) throw_invalid(fmt::format("layer {} of {}", i, num_layers()));
  return layers_[static_cast<size_t>(i)];
}
const DecoderLayer& Model::layer(int i) const { return const_cast<Model*>(this)->layer(i); }

const Tokenizer& Model::tokenizer() const {
  if (!tokenizer_) throw_invalid("this model was loaded without a tokenizer");
  return *tokenizer_;
}
void Model::set_tokenizer(Tokenizer tokenizer) { tokenizer_ = std::make_unique<Tokenizer>(std::move(tokenizer)); }

std::string Model::describe() const {
  const ModelConfig& c = config_;
  int quantized = 0, deferred = 0;
  for (const auto& L : layers_)
    for (LinearKind k : kAllLinearKinds) {
      quantized += L.linear(k).is_quantized();
      deferred += L.linear(k).is_deferred();
    }
  const char* head = lm_head_.is_quantized() ? "GLQ-quantized" : lm_head_.is_dense16() ? "16-bit" : "fp32";
  std::string weights = quantized ? fmt::format("{} of {} linears GLQ-quantized, output head {}", quantized,
                                                7 * num_layers(), head)
                                  : fmt::format("weights fp32, output head {}", head);
  if (deferred) weights = fmt::format("{} of {} linears in the mapped file, {} GLQ-quantized", deferred, 7 * num_layers(), quantized);
  return fmt::format("{}, {:.1f}M parameters, {} layers, hidden {}, heads {}/{} (kv), vocab {}, {}{}, context {}",
                     arch_name(c.arch), parameter_count() / 1e6, c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads,
                     c.vocab_size, weights, source_.empty() ? "" : " (" + source_ + ")", c.max_context);
}

KVCache Model::make_cache(int capacity) const {
  return KVCache(config_, capacity > 0 ? capacity : config_.max_context);
}

void Model::embed(std::span<const int32_t> tokens, float* hidden) const {
  const int h = config_.hidden_size;
  for (size_t t = 0; t < tokens.size(); ++t) {
    const int32_t id = tokens[t];
    if (id < 0 || id >= config_.vocab_size)
      throw_invalid(fmt::format("token id {} at position {} is outside the vocabulary of {}", id, t, config_.vocab_size));
    embedding_rows(id, 1, hidden + t * h);
  }
}

namespace {

// Applies RoPE in place to rows (n, heads * head_dim) at positions pos0 .. pos0 + n - 1.
void apply_rope(float* x, int n, int heads, int head_dim, int pos0, const std::vector<float>& inv_freq) {
  const int half = head_dim / 2;
  std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
  for (int t = 0; t < n; ++t) {
    const float pos = static_cast<float>(pos0 + t);
    for (int i = 0; i < half; ++i) {
      const float a = pos * inv_freq[static_cast<size_t>(i)];  // float32, as the reference computes it
      cs[static_cast<size_t>(i)] = std::cos(a);
      sn[static_cast<size_t>(i)] = std::sin(a);
    }
    for (int h = 0; h < heads; ++h) {
      float* v = x + (static_cast<size_t>(t) * heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * cs[static_cast<size_t>(i)] - x2 * sn[static_cast<size_t>(i)];
        v[i + half] = x2 * cs[static_cast<size_t>(i)] + x1 * sn[static_cast<size_t>(i)];
      }
    }
  }
}

// out (n, heads*hd) = causal softmax(q k^T / sqrt(hd)) v for one sequence, grouped-query.
void attention(const ModelConfig& c, const float* q, const SeqSlice& s, float* out, ThreadPool& pool) {
  const int hd = c.head_dim, heads = c.num_heads, group = c.num_heads / c.num_kv_heads;
  const int qd = c.q_dim(), kvd = c.kv_dim();
  const int total = s.past + s.n;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  if (s.n >= kGemmAttentionMinTokens) {
    std::vector<float> scores(static_cast<size_t>(s.n) * total);  // (n, total)
    for (int h = 0; h < heads; ++h) {
      const int kvh = h / group;
      // scores = q_h (n, hd) · k_kvh^T (hd, total)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.n, total, hd, scale, q + h * hd, qd, s.k + kvh * hd, kvd,
                  0.0f, scores.data(), total);
      pool.parallel_for(s.n, [&](int64_t b, int64_t e, int) {
        for (int64_t t = b; t < e; ++t) {
          float* row = scores.data() + t * total;
          const int upto = s.past + static_cast<int>(t) + 1;  // causal: keys 0 .. past + t
          float mx = row[0];
          for (int j = 1; j < upto; ++j) mx = std::max(mx, row[j]);
          double sum = 0;
          for (int j = 0; j < upto; ++j) {
            row[j] = std::exp(row[j] - mx);
            sum += row[j];
          }
          const float inv = static_cast<float>(1.0 / sum);
          for (int j = 0; j < upto; ++j) row[j] *= inv;
          std::fill(row + upto, row + total, 0.0f);
        }
      });
      // out_h (n, hd) = scores (n, total) · v_kvh (total, hd)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s.n, hd, total, 1.0f, scores.data(), total, s.v + kvh * hd,
                  kvd, 0.0f, out + h * hd, qd);
    }
    return;
  }
  pool.parallel_for(static_cast<int64_t>(s.n) * heads, [&](int64_t b, int64_t e, int) {
    std::vector<float> sc(static_cast<size_t>(total));
    for (int64_t job = b; job < e; ++job) {
      const int t = static_cast<int>(job / heads), h = static_cast<int>(job % heads), kvh = h / group;
      const float* qv = q + static_cast<size_t>(t) * qd + h * hd;
      const int upto = s.past + t + 1;
      float mx = -INFINITY;
      for (int j = 0; j < upto; ++j) {
        const float* kv = s.k + static_cast<size_t>(j) * kvd + kvh * hd;
        float d = 0;
        for (int i = 0; i < hd; ++i) d += qv[i] * kv[i];
        sc[static_cast<size_t>(j)] = d * scale;
        mx = std::max(mx, sc[static_cast<size_t>(j)]);
      }
      double sum = 0;
      for (int j = 0; j < upto; ++j) {
        sc[static_cast<size_t>(j)] = std::exp(sc[static_cast<size_t>(j)] - mx);
        sum += sc[static_cast<size_t>(j)];
      }
      const float inv = static_cast<float>(1.0 / sum);
      float* o = out + static_cast<size_t>(t) * qd + h * hd;
      std::fill(o, o + hd, 0.0f);
      for (int j = 0; j < upto; ++j) {
        const float p = sc[static_cast<size_t>(j)] * inv;
        const float* vv = s.v + static_cast<size_t>(j) * kvd + kvh * hd;
        for (int i = 0; i < hd; ++i) o[i] += p * vv[i];
      }
    }
  });
}

}  // namespace

// One decoder layer over the stacked rows x (T, hidden) of several sequences.
static void layer_step(const ModelConfig& c, const DecoderLayer& L, int layer_index, const std::vector<float>& inv_freq,
                       float* x, int T, std::span<const SeqSlice> seqs, const LinearHook* hook, ThreadPool& pool) {
  const int h = c.hidden_size, qd = c.q_dim(), kvd = c.kv_dim(), f = c.intermediate_size;
  std::vector<float> xn(static_cast<size_t>(T) * h);
  std::vector<float> q(static_cast<size_t>(T) * qd), k(static_cast<size_t>(T) * kvd), v(static_cast<size_t>(T) * kvd);
  std::vector<float> att(static_cast<size_t>(T) * qd), tmp(static_cast<size_t>(T) * h);
  auto call_hook = [&](LinearKind kind, const float* in, int cols) {
    if (hook && *hook) (*hook)(layer_index, kind, in, T, cols);
  };

  rms_norm_rows(x, L.attn_norm, xn.data(), T, h, c.norm_eps, pool);
  call_hook(LinearKind::Q, xn.data(), h);
  L.q.forward(xn.data(), q.data(), T, pool);
  call_hook(LinearKind::K, xn.data(), h);
  L.k.forward(xn.data(), k.data(), T, pool);
  call_hook(LinearKind::V, xn.data(), h);
  L.v.forward(xn.data(), v.data(), T, pool);
  for (const SeqSlice& s : seqs) {
    apply_rope(q.data() + static_cast<size_t>(s.row) * qd, s.n, c.num_heads, c.head_dim, s.past, inv_freq);
    apply_rope(k.data() + static_cast<size_t>(s.row) * kvd, s.n, c.num_kv_heads, c.head_dim, s.past, inv_freq);
    std::copy_n(k.data() + static_cast<size_t>(s.row) * kvd, static_cast<size_t>(s.n) * kvd, s.k + static_cast<size_t>(s.past) * kvd);
    std::copy_n(v.data() + static_cast<size_t>(s.row) * kvd, static_cast<size_t>(s.n) * kvd, s.v + static_cast<size_t>(s.past) * kvd);
    attention(c, q.data() + static_cast<size_t>(s.row) * qd, s, att.data() + static_cast<size_t>(s.row) * qd, pool);
  }
  call_hook(LinearKind::O, att.data(), qd);
  L.o.forward(att.data(), tmp.data(), T, pool);
  for (size_t i = 0; i < tmp.size(); ++i) x[i] += tmp[i];

  rms_norm_rows(x, L.mlp_norm, xn.data(), T, h, c.norm_eps, pool);
  std::vector<float> g(static_cast<size_t>(T) * f), u(static_cast<size_t>(T) * f);
  call_hook(LinearKind::Gate, xn.data(), h);
  L.gate.forward(xn.data(), g.data(), T, pool);
  call_hook(LinearKind::Up, xn.data(), h);
  L.up.forward(xn.data(), u.data(), T, pool);
  pool.parallel_for(static_cast<int64_t>(g.size()), [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      const float a = g[static_cast<size_t>(i)];
      g[static_cast<size_t>(i)] = a / (1.0f + std::exp(-a)) * u[static_cast<size_t>(i)];  // silu(gate) * up
    }
  }, 1024);
  call_hook(LinearKind::Down, g.data(), f);
  L.down.forward(g.data(), tmp.data(), T, pool);
  for (size_t i = 0; i < tmp.size(); ++i) x[i] += tmp[i];
}

void Model::run_layer(int i, float* hidden, int tokens, const LinearHook* hook) const {
  if (tokens <= 0) return;
  const DecoderLayer& L = layer(i);
  std::vector<float> k(static_cast<size_t>(tokens) * config_.kv_dim()), v(k.size());
  const SeqSlice s{0, tokens, 0, k.data(), v.data()};
  layer_step(config_, L, i, rope_inv_freq_, hidden, tokens, std::span<const SeqSlice>(&s, 1), hook, *pool_);
}

void Model::set_final_norm(std::vector<float> w) {
  if (static_cast<int>(w.size()) != config_.hidden_size)
    throw_mismatch("final norm length", std::to_string(config_.hidden_size), std::to_string(w.size()));
  final_norm_ = std::move(w);
}

void Model::final_logits(const float* hidden, int tokens, float* logits) const {
  if (tokens <= 0) return;
  const int h = config_.hidden_size;
  std::vector<float> xn(static_cast<size_t>(tokens) * h);
  rms_norm_rows(hidden, final_norm_, xn.data(), tokens, h, config_.norm_eps, *pool_);
  lm_head_.forward(xn.data(), logits, tokens, *pool_);
}

void Model::forward(std::span<const int32_t> tokens, KVCache& cache, float* logits, bool all_logits) const {
  const BatchEntry e{&cache, tokens, all_logits, logits};
  forward_batch(std::span<const BatchEntry>(&e, 1));
}

void Model::forward_batch(std::span<const BatchEntry> entries, const LinearHook* hook) const {
  const ModelConfig& c = config_;
  const int h = c.hidden_size;
  int T = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const BatchEntry& e = entries[i];
    if (!e.cache) throw_invalid(fmt::format("forward_batch: entry {} has no cache", i));
    if (e.tokens.empty()) throw_invalid(fmt::format("forward_batch: entry {} has no tokens", i));
    if (e.cache->num_layers() != c.num_layers || e.cache->kv_dim() != c.kv_dim())
      throw_mismatch(fmt::format("forward_batch: entry {} cache", i), fmt::format("{} layers x kv_dim {}", c.num_layers, c.kv_dim()),
                     fmt::format("{} layers x kv_dim {}", e.cache->num_layers(), e.cache->kv_dim()));
    if (e.cache->size() + static_cast<int64_t>(e.tokens.size()) > e.cache->capacity())
      throw_invalid(fmt::format("forward_batch: entry {}: {} cached + {} new tokens exceed the cache capacity of {}", i,
                                e.cache->size(), e.tokens.size(), e.cache->capacity()));
    for (size_t j = 0; j < i; ++j)
      if (entries[j].cache == e.cache) throw_invalid(fmt::format("forward_batch: entries {} and {} share a cache", j, i));
    T += static_cast<int>(e.tokens.size());
  }
  if (T == 0) return;
  std::vector<float> x(static_cast<size_t>(T) * h);
  std::vector<SeqSlice> seqs(entries.size());
  int row = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    embed(entries[i].tokens, x.data() + static_cast<size_t>(row) * h);
    seqs[i].row = row;
    seqs[i].n = static_cast<int>(entries[i].tokens.size());
    seqs[i].past = entries[i].cache->size();
    row += seqs[i].n;
  }
  for (int l = 0; l < c.num_layers; ++l) {
    for (size_t i = 0; i < entries.size(); ++i) {
      seqs[i].k = entries[i].cache->keys(l);
      seqs[i].v = entries[i].cache->values(l);
    }
    layer_step(c, layers_[static_cast<size_t>(l)], l, rope_inv_freq_, x.data(), T, seqs, hook, *pool_);
  }
  for (size_t i = 0; i < entries.size(); ++i) entries[i].cache->advance(seqs[i].n);
  // Logits: gather the rows that want them and run the head once.
  std::vector<float> rows;
  std::vector<std::pair<size_t, int>> where;  // (entry, rows)
  for (size_t i = 0; i < entries.size(); ++i) {
    if (!entries[i].logits) continue;
    const int first = entries[i].all_logits ? seqs[i].row : seqs[i].row + seqs[i].n - 1;
    const int count = entries[i].all_logits ? seqs[i].n : 1;
    rows.insert(rows.end(), x.begin() + static_cast<ptrdiff_t>(first) * h, x.begin() + static_cast<ptrdiff_t>(first + count) * h);
    where.emplace_back(i, count);
  }
  if (where.empty()) return;
  const int n = static_cast<int>(rows.size() / h);
  std::vector<float> out(static_cast<size_t>(n) * c.vocab_size);
  final_logits(rows.data(), n, out.data());
  size_t at = 0;
  for (auto [i, count] : where) {
    std::copy_n(out.data() + at, static_cast<size_t>(count) * c.vocab_size, entries[i].logits);
    at += static_cast<size_t>(count) * c.vocab_size;
  }
}

}  // namespace glq::model
