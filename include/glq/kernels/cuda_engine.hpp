// A Llama-family decoder on the GPU: embeddings, RMSNorm, RoPE, grouped-query attention over a
// KV cache (prefill and decode), SwiGLU, residuals and greedy sampling, with every linear either
// GLQ-quantized (decode kernels) or dense bf16 (cuBLAS). The KV cache has `slots` independent
// sequences: forward()/generate_greedy() run one sequence (slot 0) whose decode step is captured
// once in a CUDA graph and replayed, reading the token and its position from device memory, so
// a generated token never returns to the host between steps; forward_slots() steps several
// sequences together in one pass (the linears see all their tokens at once, attention runs per
// sequence over its own slot), which is what continuous batching needs.
//
// Activations are fp32 in device memory; the inputs of linears are fp16 (quantized) or bf16
// (dense); the KV cache is fp16. The layer (as glq/model/model.hpp):
//   a = rmsnorm(h) ∘ attn_norm;  [q | k | v] = a · Wqkv^T;  RoPE(q, k) at the token's position
//   h += attention(q, K, V) · Wo^T;  m = rmsnorm(h) ∘ mlp_norm;  h += (silu(m Wg^T) ∘ m Wu^T) Wd^T
// RMSNorm, SwiGLU, the merge of attention partials and the residual adds run inside the
// Hadamard transform kernels of the neighbouring linears (see docs/cuda.md).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "glq/kernels/cuda.hpp"

namespace glq::cuda {

struct EngineConfig {
  int vocab = 0, hidden = 0, intermediate = 0, layers = 0;
  int heads = 0, kv_heads = 0, head_dim = 0;
  int max_context = 0;               // KV cache capacity in tokens, per slot
  int slots = 1;                     // independent sequences in the KV cache (forward_slots)
  float norm_eps = 1e-5f;
  std::vector<float> rope_inv_freq;  // (head_dim / 2), any frequency scaling already applied
};

// A linear layer on the GPU: GLQ-quantized or dense bf16 (exactly one of the two is set).
struct EngineLinear {
  int rows = 0, cols = 0;
  std::unique_ptr<DeviceQuantizedMatrix> q;
  std::unique_ptr<DeviceDenseMatrix> dense;
  DeviceMemory bias;  // (rows) fp32, or empty: added to the output (Qwen2's q/k/v biases)
  size_t weight_bytes() const;
  static EngineLinear from(DeviceQuantizedMatrix m);
  static EngineLinear from(DeviceDenseMatrix m);
};

struct EngineLayer {
  DeviceMemory attn_norm;             // (hidden) fp32
  std::vector<EngineLinear> qkv;      // outputs concatenated to [q | k | v]: one fused matrix or parts
  EngineLinear o;                     // (hidden, q_dim)
  DeviceMemory mlp_norm;              // (hidden) fp32
  std::vector<EngineLinear> gate_up;  // outputs concatenated to [gate | up]
  EngineLinear down;                  // (hidden, intermediate)
};

struct EngineWeights {
  DeviceMemory embedding;   // (vocab, hidden) bf16
  std::vector<EngineLayer> layers;
  DeviceMemory final_norm;  // (hidden) fp32
  EngineLinear lm_head;     // (vocab, hidden)
};

// One sequence's part of a forward_slots() pass.
struct SlotStep {
  int slot = 0;                     // KV-cache slot, 0 .. slots - 1 (distinct within one call)
  int pos = 0;                      // tokens already in the slot: the first new token's position
  const int32_t* tokens = nullptr;  // n new tokens (host)
  int n = 0;
  float* logits = nullptr;          // host (vocab): the last new token's logits, or null
};

class Engine {
 public:
  Engine(Context& ctx, EngineConfig config, EngineWeights weights);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const EngineConfig& config() const { return config_; }
  int position() const { return position_; }  // tokens in the KV cache (slot 0)
  void reset();                               // empties the KV cache (slot 0)
  void truncate(int n);                       // forgets slot 0's tokens from position n on

  // Appends tokens to the cache; writes the logits of the last token, or of every token with
  // all_logits, to logits() ((n or 1, vocab) fp32 on the device). Asynchronous.
  void forward(const int32_t* tokens, int n, bool all_logits = false);
  const float* logits() const;
  // Copies `rows` rows of logits to the host (synchronises).
  std::vector<float> logits_host(int rows = 1);

  // Greedy decoding after forward(): returns n tokens, the first chosen from the current
  // logits; each later one costs one replay of the decode graph. If graph_seconds is given it
  // receives the time (CUDA events) of the graph replays, n - 2 steps, the first step being run
  // outside the graph as warm-up.
  std::vector<int32_t> generate_greedy(int n, double* graph_seconds = nullptr);

  // out[i] = −log softmax(row i of logits())[targets[i]] for rows 0 .. rows − 1 of the last
  // forward(..., all_logits = true) (synchronises). For perplexity without copying logits.
  std::vector<double> token_nll(const int32_t* targets, int rows);

  // Several sequences in one forward pass, each in its own KV-cache slot at its own position
  // (SlotStep); the logits of each step's last token go to its host buffer. Passes longer than
  // the engine's step size are cut into several (a sequence's tokens stay in order). Decode
  // passes (one token per sequence, every one with logits) are captured in a CUDA graph per
  // number of sequences and replayed. Synchronous. Leaves position() alone: slot 0 belongs to
  // either forward()/generate_greedy() or forward_slots(), not both at once.
  void forward_slots(const SlotStep* steps, int count);
  int max_step_tokens() const;

  // Bytes a decode step reads from device memory: weights, embedding row, KV cache at `context`.
  size_t bytes_per_token(int context) const;
  size_t weight_bytes() const;

 private:
  struct Buffers;
  enum class HeadRows { None, Last, All, Gather };
  // The forward pass over n tokens in d_tokens. single: one sequence in slot 0 at d_pos (the
  // positions are computed on the device); else d_tok_pos / d_tok_slot hold them. The output
  // head runs on no row, the last, all n, or the `gather` rows listed in d_rows.
  void enqueue_tokens(int n, bool single, HeadRows rows, int gather = 0);
  void run_pass(int n, int k, bool decode_only);
  // y (+)= l(pre(x)) for n tokens. With `into` (a Bridge: the next quantized product, its
  // RMSNorm and a second residual buffer), the output transform may instead run fused with the
  // next product's input transform (detail::launch_bridge): then the result lands in the Bridge's
  // buffer, not y, and the call returns true; the next product is then run with `prepared`, its
  // x̃ and zeroed ỹ already in place.
  struct Bridge;
  bool run_linear(const EngineLinear& l, const void* prepare_params, float* y, int ld_y, bool accumulate, int n,
                  const Bridge* into = nullptr, bool prepared = false);

  Context& ctx_;
  EngineConfig config_;
  EngineWeights w_;
  std::unique_ptr<Buffers> b_;
  int position_ = 0;
  int last_row_ = 0;  // row of logits() holding the last token's logits
  // The decode attention takes one of kAttnKinds kernels by the step's longest context (engine.cu,
  // attention_kind); enqueue_tokens launches attn_kind_'s, and each graph is captured per kind.
  static constexpr int kAttnKinds = 3;
  using Graphs = std::array<cudaGraphExec_t, kAttnKinds>;
  int attn_kind_ = 0;
  Graphs decode_graph_{};  // generate_greedy: a step and the argmax
  Graphs step_graph_{};    // forward() of one token
  int step_calls_ = 0;
  std::vector<Graphs> batch_graphs_;  // forward_slots decode passes, by sequences
  std::vector<int> batch_calls_;
};

// A QuantizedMatrix-shaped product with random codes drawn on the device (every code of both
// codebooks is valid) and scales that keep activations O(1): for benchmarks at real sizes.
DeviceQuantizedMatrix random_device_qmatrix(int rows, int cols, int bits, uint64_t seed);
// Random weights of a given shape; bits 16 gives dense bf16 linears. q/k/v and gate/up are
// fused into one matrix each (sharing the input transform), as deployments do.
EngineWeights random_engine_weights(const EngineConfig& config, int bits, uint64_t seed);

// Device-to-device copy bandwidth in GB/s (bytes read plus written), measured now.
double measure_copy_bandwidth(Context& ctx);

}  // namespace glq::cuda
