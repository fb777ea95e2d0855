// glq run MODEL -p PROMPT [-n N]: generate a continuation, streaming it to stdout, and report
// prompt and decode speed on stderr.
#include <cstdio>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "cli/command.hpp"
#include "cli/cuda_session.hpp"
#include "cli/model_session.hpp"
#include "glq/error.hpp"

namespace {

struct RunArgs {
  std::string model;
  std::string prompt;
  int n = 64;
  bool chat = false;
  bool ignore_eos = false;
  std::string device = "cpu";
  glq::cli::SamplingFlags sampling;
};

int run(const RunArgs& a) {
  using namespace glq;
  cli::check_device(a.device);
  auto m = cli::load_model_verbose(a.model);
  const auto& tok = m->tokenizer();
  std::string text = a.prompt;
  if (a.chat) {
    const model::ChatMessage msg{"user", a.prompt};
    text = tok.apply_chat_template(std::span<const model::ChatMessage>(&msg, 1), true);
  }
  std::vector<int32_t> ids = tok.encode(text, a.chat ? false : tok.add_bos_default(), true);
  if (ids.empty()) throw_invalid("the prompt encodes to no tokens");
  const int capacity = std::min<int64_t>(m->config().max_context, static_cast<int64_t>(ids.size()) + a.n);
  if (static_cast<int64_t>(ids.size()) >= m->config().max_context)
    throw_invalid(fmt::format("prompt of {} tokens does not fit the context of {}", ids.size(), m->config().max_context));
  model::Sampler sampler(a.sampling.opt);
  // The CPU model with its KV cache, or the model's weights on the GPU.
  cli::SequenceEngine engine(*m, a.device, capacity);
  if (!a.chat) {
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
  }
  auto t0 = std::chrono::steady_clock::now();
  engine.forward(ids);
  const double prompt_s = cli::seconds_since(t0);
  const size_t prompt_n = ids.size();
  model::TokenStreamer streamer(tok);
  int generated = 0;
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < a.n; ++i) {
    const int32_t next = sampler.sample(engine.logits(), ids);
    ids.push_back(next);
    ++generated;
    if (!a.ignore_eos && tok.is_stop(next)) break;
    const std::string piece = streamer.push(next);
    std::fputs(piece.c_str(), stdout);
    std::fflush(stdout);
    if (i + 1 == a.n || engine.full()) break;
    engine.forward(std::span<const int32_t>(&next, 1));
  }
  const double decode_s = cli::seconds_since(t0);
  std::fputs(streamer.flush().c_str(), stdout);
  std::fputs("\n", stdout);
  std::fflush(stdout);
  fmt::print(stderr, "glq: prompt {} tokens in {:.3f} s ({:.1f} tokens/s); generated {} tokens in {:.3f} s ({:.1f} tokens/s)\n",
             prompt_n, prompt_s, prompt_n / prompt_s, generated, decode_s, generated > 0 ? generated / decode_s : 0.0);
  return 0;
}

}  // namespace

GLQ_COMMAND("run", "generate text from a prompt (GGUF file or checkpoint directory)", [](CLI::App& app) {
  auto a = std::make_shared<RunArgs>();
  app.add_option("model", a->model, "GGUF file or Hugging Face checkpoint directory")->required();
  app.add_option("-p,--prompt", a->prompt, "prompt text")->required();
  app.add_option("-n,--n-predict", a->n, "number of tokens to generate")->capture_default_str();
  app.add_flag("--chat", a->chat, "wrap the prompt in the model's chat template as a user message");
  app.add_flag("--ignore-eos", a->ignore_eos, "keep generating past end-of-sequence tokens");
  app.add_option("--device", a->device, "cpu, or cuda (the GPU engine)")->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
  a->sampling.add(app);
  return [a] { return run(*a); };
});
