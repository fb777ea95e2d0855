// glq perplexity MODEL --text FILE [--ctx N] [--max-tokens N] [--json]
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/command.hpp"
#include "cli/cuda_session.hpp"
#include "cli/model_session.hpp"
#include "glq/error.hpp"
#include "glq/model/perplexity.hpp"

namespace {

struct PplArgs {
  std::string model;
  std::string text;
  int ctx = 1024;
  int64_t max_tokens = 0;
  bool json = false;
  std::string device = "cpu";
};

int perplexity(const PplArgs& a) {
  using namespace glq;
  cli::check_device(a.device);
  auto m = cli::load_model_verbose(a.model);
  std::ifstream in(a.text, std::ios::binary);
  if (!in) throw_io(a.text, "cannot open");
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  const auto& tok = m->tokenizer();
  auto t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> ids = tok.encode(text, tok.add_bos_default(), false);
  fmt::print(stderr, "glq: {} has {} bytes, {} tokens (tokenized in {:.1f} s)\n", a.text, text.size(), ids.size(), cli::seconds_since(t0));
  if (a.max_tokens > 0 && static_cast<int64_t>(ids.size()) > a.max_tokens) ids.resize(static_cast<size_t>(a.max_tokens));
  if (a.ctx > m->config().max_context)
    throw_invalid(fmt::format("--ctx {} exceeds the model's context length {}", a.ctx, m->config().max_context));
  fmt::print(stderr,
             "glq: protocol: the first {} tokens cut into non-overlapping windows of {} tokens (a shorter tail is dropped),\n"
             "     each window evaluated from an empty cache; every token of a window but its first is scored\n",
             ids.size(), a.ctx);
  auto progress = [](int done, int total) {
    const int width = 40, filled = total ? done * width / total : width;
    fmt::print(stderr, "\r[{}{}] {}/{} windows", std::string(static_cast<size_t>(filled), '#'),
               std::string(static_cast<size_t>(width - filled), '.'), done, total);
    if (done == total) fmt::print(stderr, "\n");
  };
  model::PerplexityResult r;
  std::string card;
  if (a.device == "cuda") {
#ifdef GLQ_HAVE_CUDA
    const int window = std::min<int64_t>(a.ctx, static_cast<int64_t>(ids.size()));
    auto gpu = cli::to_gpu_verbose(*m, window);
    card = gpu->context().info().name;
    r = model::evaluate_perplexity_cuda(gpu->engine(), ids, a.ctx, progress);
#endif
  } else {
    r = model::evaluate_perplexity(*m, ids, a.ctx, progress);
  }
  fmt::print(stderr, "glq: perplexity {:.4f} over {} scored tokens ({} windows of {}), {:.1f} s ({:.1f} tokens/s)\n", r.ppl,
             r.tokens_scored, r.windows, r.ctx, r.seconds, r.tokens_used / r.seconds);
  if (a.json) {
    nlohmann::json j = {{"ppl", r.ppl},
                        {"tokens", r.tokens_scored},
                        {"tokens_evaluated", r.tokens_used},
                        {"windows", r.windows},
                        {"ctx", r.ctx},
                        {"nll_mean", r.nll_sum / static_cast<double>(r.tokens_scored)},
                        {"seconds", r.seconds},
                        {"model", a.model},
                        {"device", a.device},
                        {"text", a.text},
                        {"protocol", "non-overlapping windows of ctx tokens from an empty cache; every token of a window except its first is scored"}};
    if (!card.empty()) j["card"] = card;
    fmt::print("{}\n", j.dump());
  } else {
    fmt::print("{:.4f}\n", r.ppl);
  }
  return 0;
}

}  // namespace

GLQ_COMMAND("perplexity", "perplexity of a model on a text file", [](CLI::App& app) {
  auto a = std::make_shared<PplArgs>();
  app.add_option("model", a->model, "GGUF file or Hugging Face checkpoint directory")->required();
  app.add_option("--text", a->text, "UTF-8 text file")->required();
  app.add_option("--ctx", a->ctx, "window length in tokens")->capture_default_str();
  app.add_option("--max-tokens", a->max_tokens, "use only the first N tokens of the text (0 = all)")->capture_default_str();
  app.add_flag("--json", a->json, "print one JSON object on stdout");
  app.add_option("--device", a->device, "cpu, or cuda (the GPU engine)")->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
  return [a] { return perplexity(*a); };
});
