// `glq bench model --device cuda`: decode and prefill speed of the GPU engine.
//
// --synthetic llama3-8b builds a model of Llama-3-8B's shape (32 layers, hidden 4096, SwiGLU
// 14336, 32 heads with 8 KV heads of 128, vocabulary 128256) whose linears get random codes
// drawn on the device (every code is a valid E8P16/E8R8 codeword; no calibration: this
// measures speed, not quality) at --bits 2, 3, 4, or dense bf16 weights at --bits 16, the
// baseline run by the same engine through cuBLAS. q/k/v and gate/up are fused into one matrix
// each; the output head stays dense bf16.
//
// Decode: the prompt fills the cache to ctx - decode_tokens, then decode_tokens tokens are
// generated greedily; the timed part is the replays of the decode graph, so the context grows
// to ctx during the measurement. Prefill: prompt_tokens tokens from an empty cache, timed with
// CUDA events after one warm-up pass. limit_tok_s is the copy bandwidth measured in the same
// run over the bytes a decode step reads (weights, the embedding row, the KV cache at ctx).
#include "cli/bench_common.hpp"

#include "glq/error.hpp"

#ifdef GLQ_HAVE_CUDA
#include <cuda_runtime_api.h>
#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <random>
#include <vector>

#include <chrono>

#include "glq/kernels/cuda_engine.hpp"
#include "glq/model/cuda_model.hpp"
#include "glq/model/loader.hpp"
#endif

namespace glq::cli {

#ifndef GLQ_HAVE_CUDA

nlohmann::json run_cuda_model_bench(const ModelBenchArgs&) {
  throw Error(ErrorKind::Unsupported, "this glq was built without CUDA; rebuild with GLQ_CUDA=1");
}

#else

namespace {

cuda::EngineConfig synthetic_config(const std::string& name, int capacity) {
  cuda::EngineConfig c;
  float theta = 500000.0f;
  if (name == "llama3-8b") {
    c.vocab = 128256; c.hidden = 4096; c.intermediate = 14336; c.layers = 32;
    c.heads = 32; c.kv_heads = 8; c.head_dim = 128;
  } else if (name == "llama2-7b") {
    c.vocab = 32000; c.hidden = 4096; c.intermediate = 11008; c.layers = 32;
    c.heads = 32; c.kv_heads = 32; c.head_dim = 128;
    theta = 10000.0f;
  } else if (name == "tiny") {  // a quick check of the whole path
    c.vocab = 4096; c.hidden = 576; c.intermediate = 1536; c.layers = 4;
    c.heads = 9; c.kv_heads = 3; c.head_dim = 64;
    theta = 10000.0f;
  } else {
    throw_invalid("--synthetic: unknown model '" + name + "' (known: llama3-8b, llama2-7b, tiny)");
  }
  c.max_context = capacity;
  c.norm_eps = 1e-5f;
  for (int i = 0; i < c.head_dim / 2; ++i)
    c.rope_inv_freq.push_back(std::pow(theta, -2.0f * i / c.head_dim));
  return c;
}

std::string today_utc() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d", std::gmtime(&t));
  return buf;
}

}  // namespace

// A model file on the GPU: decode of --batch sequences stepped together through
// Engine::forward_slots (each pass: tokens up, the engine's passes, every sequence's logits back
// to the host, as the server runs it), timed with the host clock after warm-up, and at batch 1
// also the graph-replayed greedy decode (generate_greedy, CUDA events) with no host round trip.
namespace {

nlohmann::json run_cuda_real_model_bench(const ModelBenchArgs& a) {
  if (a.batch < 1 || a.batch > 256) throw_invalid("bench model: --batch must be from 1 to 256");
  if (a.decode_tokens < 3) throw_invalid("bench model: --decode-tokens must be at least 3");
  if (a.ctx <= a.decode_tokens) throw_invalid("bench model: --ctx must exceed --decode-tokens");
  auto m = model::load_model(a.model);
  const int capacity = std::max(a.ctx, a.prompt_tokens) + 8;
  model::CudaModel gpu(*m, capacity, a.batch);
  auto& e = gpu.engine();
  const auto& info = gpu.context().info();
  const int V = m->vocab_size();
  fmt::print(stderr, "glq: {} on {}: {:.1f} MB of weights, {} sequences\n", a.model, info.name, e.weight_bytes() / 1e6, a.batch);
  const double bw_gbs = cuda::measure_copy_bandwidth(gpu.context());
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> tok(0, V - 1);
  using Clock = std::chrono::steady_clock;
  // Prefill of one sequence (slot 0), after a warm-up pass.
  std::vector<int32_t> prompt(a.prompt_tokens);
  for (auto& t : prompt) t = tok(rng);
  std::vector<float> logits(static_cast<size_t>(V) * a.batch);
  cuda::SlotStep p{0, 0, prompt.data(), a.prompt_tokens, logits.data()};
  e.forward_slots(&p, 1);
  auto t0 = Clock::now();
  e.forward_slots(&p, 1);
  const double prefill_tok_s = a.prompt_tokens / std::chrono::duration<double>(Clock::now() - t0).count();
  // Every sequence filled to ctx - decode_tokens, then decode_tokens passes of `batch` tokens.
  const int fill = a.ctx - a.decode_tokens;
  std::vector<std::vector<int32_t>> fills(a.batch, std::vector<int32_t>(fill));
  std::vector<cuda::SlotStep> steps;
  for (int s = 0; s < a.batch; ++s) {
    for (auto& t : fills[s]) t = tok(rng);
    steps.push_back({s, 0, fills[s].data(), fill, logits.data() + size_t(s) * V});
  }
  e.forward_slots(steps.data(), a.batch);
  std::vector<int32_t> next(a.batch);
  double decode_s = 0;
  int timed = 0;
  for (int k = 0; k < a.decode_tokens; ++k) {
    for (int s = 0; s < a.batch; ++s) {
      next[s] = tok(rng);
      steps[s] = {s, fill + k, &next[s], 1, logits.data() + size_t(s) * V};
    }
    t0 = Clock::now();
    e.forward_slots(steps.data(), a.batch);
    if (k >= 2) {  // the first two passes run eagerly and capture the graph
      decode_s += std::chrono::duration<double>(Clock::now() - t0).count();
      ++timed;
    }
  }
  const double decode_tok_s = double(timed) * a.batch / decode_s;
  const size_t bytes = e.bytes_per_token(a.ctx - a.decode_tokens / 2);
  const double limit_tok_s = bw_gbs * 1e9 / double(bytes);
  nlohmann::json j;
  j["device"] = "cuda";
  j["card"] = info.name;
  j["date"] = today_utc();
  j["model"] = a.model;
  j["batch"] = a.batch;
  j["ctx"] = a.ctx;
  j["prompt_tokens"] = a.prompt_tokens;
  j["decode_tokens"] = a.decode_tokens;
  j["decode_tok_s"] = decode_tok_s;  // all sequences together
  j["ms_per_step"] = 1e3 * decode_s / timed;
  j["prefill_tok_s"] = prefill_tok_s;
  j["limit_tok_s"] = limit_tok_s;  // one sequence: bytes a decode step reads over the copy bandwidth
  j["bytes_per_token"] = bytes;
  j["weight_bytes"] = e.weight_bytes();
  j["copy_bandwidth_gbs"] = bw_gbs;
  std::string graph_note;
  if (a.batch == 1) {
    e.reset();
    e.forward(fills[0].data(), fill);
    double graph_s = 0;
    e.generate_greedy(a.decode_tokens, &graph_s);
    const double greedy_tok_s = (a.decode_tokens - 2) / graph_s;
    j["greedy_graph_tok_s"] = greedy_tok_s;
    graph_note = fmt::format(", greedy on the device {:.1f} tok/s", greedy_tok_s);
  }
  fmt::print(stderr,
             "{} | {} | batch {} | decode {:.1f} tok/s together ({:.2f} ms per pass, logits to the host){} | limit "
             "{:.0f} tok/s ({:.1f} MB per token at {:.0f} GB/s) | prefill {} tokens {:.0f} tok/s\n",
             info.name, a.model, a.batch, decode_tok_s, 1e3 * decode_s / timed, graph_note, limit_tok_s, bytes / 1e6,
             bw_gbs, a.prompt_tokens, prefill_tok_s);
  return j;
}

}  // namespace

nlohmann::json run_cuda_model_bench(const ModelBenchArgs& a) {
  if (a.synthetic.empty()) return run_cuda_real_model_bench(a);
  const int bits = static_cast<int>(a.bits);
  if (a.batch != 1) throw Error(ErrorKind::Unsupported, "bench model --device cuda: batch 1 only");
  if (a.decode_tokens < 3) throw_invalid("bench model: --decode-tokens must be at least 3");
  if (a.ctx <= a.decode_tokens) throw_invalid("bench model: --ctx must exceed --decode-tokens");
  const int capacity = std::max(a.ctx, a.prompt_tokens) + 8;
  const auto config = synthetic_config(a.synthetic, capacity);
  cuda::Context ctx;
  const auto& info = ctx.info();
  fmt::print(stderr, "glq: building synthetic {} at {} bpw on {}\n", a.synthetic, bits, info.name);
  cuda::Engine engine(ctx, config, cuda::random_engine_weights(config, bits, 1234));
  const double bw_gbs = cuda::measure_copy_bandwidth(ctx);

  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> tok(0, config.vocab - 1);
  // Prefill: warm-up pass, then the timed one.
  std::vector<int32_t> prompt(a.prompt_tokens);
  for (auto& t : prompt) t = tok(rng);
  engine.reset();
  engine.forward(prompt.data(), int(prompt.size()));
  engine.reset();
  cudaEvent_t e0, e1;
  GLQ_CUDA_CHECK(cudaEventCreate(&e0));
  GLQ_CUDA_CHECK(cudaEventCreate(&e1));
  GLQ_CUDA_CHECK(cudaEventRecord(e0, ctx.stream()));
  engine.forward(prompt.data(), int(prompt.size()));
  GLQ_CUDA_CHECK(cudaEventRecord(e1, ctx.stream()));
  GLQ_CUDA_CHECK(cudaEventSynchronize(e1));
  float prefill_ms = 0;
  GLQ_CUDA_CHECK(cudaEventElapsedTime(&prefill_ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  const double prefill_tok_s = a.prompt_tokens / (prefill_ms / 1e3);

  // Decode up to ctx.
  engine.reset();
  std::vector<int32_t> fill(a.ctx - a.decode_tokens);
  for (auto& t : fill) t = tok(rng);
  engine.forward(fill.data(), int(fill.size()));
  double graph_s = 0;
  const auto generated = engine.generate_greedy(a.decode_tokens, &graph_s);
  const int graph_steps = a.decode_tokens - 2;
  const double decode_tok_s = graph_steps / graph_s;
  const size_t bytes = engine.bytes_per_token(a.ctx - a.decode_tokens / 2);
  const double limit_tok_s = bw_gbs * 1e9 / double(bytes);

  nlohmann::json j;
  j["device"] = "cuda";
  j["card"] = info.name;
  j["date"] = today_utc();
  j["model"] = a.synthetic + " (synthetic, random codes)";
  j["bits"] = bits;
  j["batch"] = 1;
  j["ctx"] = a.ctx;
  j["prompt_tokens"] = a.prompt_tokens;
  j["decode_tokens"] = a.decode_tokens;
  j["decode_tok_s"] = decode_tok_s;
  j["ms_per_token"] = 1e3 / decode_tok_s;
  j["prefill_tok_s"] = prefill_tok_s;
  j["limit_tok_s"] = limit_tok_s;
  j["fraction_of_limit"] = decode_tok_s / limit_tok_s;
  j["bytes_per_token"] = bytes;
  j["weight_bytes"] = engine.weight_bytes();
  j["copy_bandwidth_gbs"] = bw_gbs;
  j["last_token"] = generated.back();
  fmt::print(stderr,
             "{} | synthetic {} {} bpw | decode {:.1f} tok/s ({:.2f} ms/token, {:.0f}% of the {:.0f} tok/s limit: "
             "{:.2f} GB per token at {:.0f} GB/s) | prefill {} tokens {:.0f} tok/s\n",
             info.name, a.synthetic, bits, decode_tok_s, 1e3 / decode_tok_s, 100.0 * decode_tok_s / limit_tok_s,
             limit_tok_s, bytes / 1e9, bw_gbs, a.prompt_tokens, prefill_tok_s);
  return j;
}

#endif

}  // namespace glq::cli
