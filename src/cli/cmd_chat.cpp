// glq chat MODEL: an interactive conversation using the model's chat template. The KV cache
// keeps the tokens of the conversation so far; each turn only the new tokens are evaluated.
#include <iostream>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "cli/command.hpp"
#include "cli/cuda_session.hpp"
#include "cli/model_session.hpp"
#include "glq/error.hpp"

namespace {

struct ChatArgs {
  std::string model;
  std::string system;
  int n = 512;
  int ctx = 0;
  std::string device = "cpu";
  glq::cli::SamplingFlags sampling;
};

int chat(ChatArgs& a) {
  using namespace glq;
  cli::check_device(a.device);
  auto m = cli::load_model_verbose(a.model);
  const auto& tok = m->tokenizer();
  const int ctx = a.ctx > 0 ? std::min(a.ctx, m->config().max_context) : std::min(m->config().max_context, 4096);
  model::Sampler sampler(a.sampling.opt);
  // The CPU model with its KV cache, or the model's weights on the GPU.
  cli::SequenceEngine engine(*m, a.device, ctx);
  std::vector<model::ChatMessage> messages;
  if (!a.system.empty()) messages.push_back({"system", a.system});
  std::vector<int32_t> cached;  // tokens whose keys/values are in the cache
  fmt::print(stderr, "glq: chat ({} format, context {}); /reset starts over, /exit or end of input quits\n",
             model::chat_format_name(tok.chat_format()), ctx);
  std::string line;
  while (true) {
    fmt::print(stderr, "> ");
    if (!std::getline(std::cin, line) || line == "/exit") break;
    if (line == "/reset") {
      messages.resize(a.system.empty() ? 0 : 1);
      engine.truncate(0);
      cached.clear();
      continue;
    }
    if (line.empty()) continue;
    messages.push_back({"user", line});
    const std::string text = tok.apply_chat_template(messages, true);
    std::vector<int32_t> ids = tok.encode(text, false, true);
    if (static_cast<int>(ids.size()) + 1 >= ctx) {
      fmt::print(stderr, "glq: the conversation ({} tokens) fills the context of {}; /reset to start over\n", ids.size(), ctx);
      messages.pop_back();
      continue;
    }
    // Reuse the cached prefix that the new rendering shares.
    size_t common = 0;
    while (common < cached.size() && common < ids.size() - 1 && cached[common] == ids[common]) ++common;
    engine.truncate(static_cast<int>(common));
    cached.resize(common);
    auto t0 = std::chrono::steady_clock::now();
    engine.forward(std::span<const int32_t>(ids).subspan(common));
    const double prompt_s = cli::seconds_since(t0);
    const size_t prompt_n = ids.size() - common;
    cached = ids;
    std::vector<int32_t> reply;
    model::TokenStreamer streamer(tok);
    t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < a.n && engine.position() < ctx; ++i) {
      const int32_t next = sampler.sample(engine.logits(), cached);
      if (tok.is_stop(next)) break;
      reply.push_back(next);
      std::cout << streamer.push(next) << std::flush;
      engine.forward(std::span<const int32_t>(&next, 1));
      cached.push_back(next);
    }
    std::cout << streamer.flush() << std::endl;
    const double decode_s = cli::seconds_since(t0);
    fmt::print(stderr, "glq: [{} prompt tokens at {:.1f} tokens/s, {} generated at {:.1f} tokens/s]\n", prompt_n,
               prompt_n / std::max(prompt_s, 1e-9), reply.size(), reply.size() / std::max(decode_s, 1e-9));
    messages.push_back({"assistant", tok.decode(reply, true)});
  }
  return 0;
}

}  // namespace

GLQ_COMMAND("chat", "interactive chat with a model using its chat template", [](CLI::App& app) {
  auto a = std::make_shared<ChatArgs>();
  app.add_option("model", a->model, "GGUF file or Hugging Face checkpoint directory")->required();
  app.add_option("--system", a->system, "system message");
  app.add_option("-n,--n-predict", a->n, "most tokens per reply")->capture_default_str();
  app.add_option("--ctx", a->ctx, "context length (default: the model's, at most 4096)");
  a->sampling.opt.temperature = 0.7f;
  a->sampling.opt.top_p = 0.9f;
  a->sampling.opt.repetition_penalty = 1.1f;
  app.add_option("--device", a->device, "cpu, or cuda (the GPU engine)")->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
  a->sampling.add(app);
  return [a] { return chat(*a); };
});
