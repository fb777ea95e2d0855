// The Llama-family decoder (Llama 2/3, SmolLM, Mistral, Qwen2) on the CPU, float32 activations.
//
//   h = embed[tokens]                                   (tokens, hidden)
//   for each layer:  a = rmsnorm(h) · attn_norm
//                    q, k, v = a·Wq^T (+bq), a·Wk^T (+bk), a·Wv^T (+bv); RoPE on q, k
//                    h += softmax(q k^T / sqrt(head_dim), causal) v · Wo^T   (grouped-query)
//                    m = rmsnorm(h) · mlp_norm
//                    h += (silu(m·Wg^T) ∘ (m·Wu^T)) · Wd^T
//   logits = (rmsnorm(h) · final_norm) · lm_head^T
// RoPE is the Hugging Face "rotate half" form (pairs (i, i + head_dim/2)); GGUF weights are
// converted to it on load (see gguf.hpp).
//
// Three ways in:
//  - forward(): tokens of one sequence appended to its KVCache, logits out (generation).
//  - forward_batch(): several independent sequences, each with its own KVCache, stepped in one
//    pass (the linears see all their tokens at once; attention is per sequence).
//  - embed() / run_layer() / final_logits(): layer by layer over a whole sequence, with a hook
//    that sees the input of every linear (the quantizer's Hessian collection), and mutable
//    access to each layer's linears so they can be swapped for quantized ones.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "glq/model/config.hpp"
#include "glq/model/kv_cache.hpp"
#include "glq/model/linear.hpp"
#include "glq/model/tokenizer.hpp"
#include "glq/util/thread_pool.hpp"

namespace glq::model {

enum class LinearKind { Q, K, V, O, Gate, Up, Down };
inline constexpr LinearKind kAllLinearKinds[] = {LinearKind::Q,    LinearKind::K,  LinearKind::V,
                                                 LinearKind::O,    LinearKind::Gate,
                                                 LinearKind::Up,   LinearKind::Down};
// "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj".
const char* linear_kind_name(LinearKind kind);
// Hugging Face tensor name of a layer's linear: "model.layers.3.self_attn.q_proj".
std::string linear_tensor_prefix(int layer, LinearKind kind);

struct DecoderLayer {
  std::vector<float> attn_norm;  // (hidden)
  Linear q, k, v, o;             // q: (q_dim, hidden), k/v: (kv_dim, hidden), o: (hidden, q_dim)
  std::vector<float> mlp_norm;   // (hidden)
  Linear gate, up, down;         // gate/up: (intermediate, hidden), down: (hidden, intermediate)

  Linear& linear(LinearKind kind);
  const Linear& linear(LinearKind kind) const;
};

// Sees the input activations x (tokens, cols) row-major of a linear just before it is applied.
// q/k/v receive the same x (as do gate/up); the pointer is valid only during the call.
using LinearHook =
    std::function<void(int layer, LinearKind kind, const float* x, int tokens, int cols)>;

// One sequence in forward_batch().
struct BatchEntry {
  KVCache* cache = nullptr;           // positions cache->size() .. + tokens.size() are written
  std::span<const int32_t> tokens;    // new tokens (at least one)
  bool all_logits = false;            // logits of every new token, else of the last one only
  float* logits = nullptr;            // (all_logits ? tokens.size() : 1, vocab); may be nullptr
};

class Model {
 public:
  // embedding (vocab, hidden); a tied lm_head may share it (Linear::dense_shared).
  Model(ModelConfig config, std::shared_ptr<const std::vector<float>> embedding,
        std::vector<DecoderLayer> layers, std::vector<float> final_norm, Linear lm_head);
  // The token embedding read on demand instead of held as a float32 table (a model whose weights
  // stay in a memory-mapped file): `rows(first, count, out)` writes rows [first, first + count)
  // of the (vocab, hidden) embedding to out. embedding() is then unavailable.
  using EmbeddingRows = std::function<void(int64_t first, int64_t count, float* out)>;
  Model(ModelConfig config, EmbeddingRows embedding_rows, std::vector<DecoderLayer> layers,
        std::vector<float> final_norm, Linear lm_head);
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& config() const { return config_; }
  int num_layers() const { return static_cast<int>(layers_.size()); }
  int vocab_size() const { return config_.vocab_size; }
  int hidden_size() const { return config_.hidden_size; }

  DecoderLayer& layer(int i);
  const DecoderLayer& layer(int i) const;
  // (vocab, hidden); throws InvalidArgument when the embedding is read on demand.
  const std::vector<float>& embedding() const;
  bool has_embedding_table() const { return embedding_ != nullptr; }
  // Rows [first, first + count) of the embedding (count, hidden), from the table or the file.
  void embedding_rows(int64_t first, int64_t count, float* out) const;
  const std::vector<float>& final_norm() const { return final_norm_; }  // (hidden)
  void set_final_norm(std::vector<float> w);  // throws InvalidArgument unless (hidden)
  Linear& lm_head() { return lm_head_; }                                // (vocab, hidden)
  const Linear& lm_head() const { return lm_head_; }
  // RoPE inverse frequencies (head_dim / 2), frequency scaling applied (for other engines).
  const std::vector<float>& rope_inv_freq() const { return rope_inv_freq_; }

  // Tokenizer loaded with the model (GGUF metadata or tokenizer.json); throws if none.
  bool has_tokenizer() const { return tokenizer_ != nullptr; }
  const Tokenizer& tokenizer() const;
  void set_tokenizer(Tokenizer tokenizer);

  // What was loaded, for logs: "llama, 134.5M parameters, 30 layers, weights fp32 (from Q4_1
  // GGUF), context 8192". set_source_description() is for loaders.
  std::string describe() const;
  const std::string& source_description() const { return source_; }
  void set_source_description(std::string s) { source_ = std::move(s); }
  // Number of weights (embedding counted once when tied).
  int64_t parameter_count() const { return config_.parameter_count(); }

  KVCache make_cache(int capacity = 0) const;  // 0: config().max_context

  // ---- generation -------------------------------------------------------------------------
  // Appends tokens to the cache and writes logits of the last token (vocab), or of every token
  // (tokens.size(), vocab) with all_logits. Throws InvalidArgument for an id out of range or
  // when the cache is full.
  void forward(std::span<const int32_t> tokens, KVCache& cache, float* logits,
               bool all_logits = false) const;
  // Several independent sequences in one pass. Entries must use distinct caches.
  void forward_batch(std::span<const BatchEntry> entries, const LinearHook* hook = nullptr) const;

  // ---- layer by layer (whole sequence, positions 0..tokens-1, no cache) ---------------------
  // hidden (tokens, hidden) = embedding rows of the tokens.
  void embed(std::span<const int32_t> tokens, float* hidden) const;
  // Applies decoder layer i in place to hidden (tokens, hidden), causal attention over the
  // whole sequence. The hook (optional) sees the input of each of the layer's linears.
  void run_layer(int i, float* hidden, int tokens, const LinearHook* hook = nullptr) const;
  // logits (tokens, vocab) = lm_head(final_norm(hidden)); hidden is not modified.
  void final_logits(const float* hidden, int tokens, float* logits) const;

  ThreadPool& pool() const { return *pool_; }
  void set_pool(ThreadPool& pool) { pool_ = &pool; }

 private:
  Model(ModelConfig config, std::shared_ptr<const std::vector<float>> embedding, std::vector<DecoderLayer> layers,
        std::vector<float> final_norm, Linear lm_head, EmbeddingRows embedding_rows);

  ModelConfig config_;
  std::shared_ptr<const std::vector<float>> embedding_;  // (vocab, hidden); null when read on demand
  EmbeddingRows embedding_rows_;                          // set when read on demand
  std::vector<DecoderLayer> layers_;
  std::vector<float> final_norm_;  // (hidden)
  Linear lm_head_;
  std::vector<float> rope_inv_freq_;  // (head_dim / 2), scaling applied
  std::unique_ptr<Tokenizer> tokenizer_;
  std::string source_;
  ThreadPool* pool_;
};

}  // namespace glq::model
