// glq logits MODEL -p PROMPT [--device cpu|cuda] [-o FILE] [--compare FILE] [--json]
//
// The logits of every token of a prompt, computed the way generation computes them: the first
// --prefill tokens in one pass, then the rest one token at a time (the decode path; on the GPU
// the graph-replayed step). Written to FILE (-o) and/or compared with a FILE written earlier,
// e.g. by the CPU engine on another machine: per-token relative error ‖a − b‖ / ‖b‖ and whether
// the top token agrees. Exit status 1 when the largest relative error exceeds --tol.
//
// File: "GLQLOGIT", int32 rows, int32 vocab, int32 tokens[rows], float32 logits[rows][vocab]
// (little-endian).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/command.hpp"
#include "cli/cuda_session.hpp"
#include "cli/model_session.hpp"
#include "glq/error.hpp"

namespace {

struct LogitsArgs {
  std::string model;
  std::string prompt;
  std::string device = "cpu";
  std::string out;
  std::string compare;
  int prefill = -1;  // -1: half the prompt
  double tol = 2e-2;
  bool json = false;
};

constexpr char kMagic[8] = {'G', 'L', 'Q', 'L', 'O', 'G', 'I', 'T'};

void write_file(const std::string& path, const std::vector<int32_t>& tokens, const std::vector<float>& logits, int vocab) {
  std::ofstream f(path, std::ios::binary);
  if (!f) glq::throw_io(path, "cannot create");
  const int32_t rows = static_cast<int32_t>(tokens.size());
  f.write(kMagic, 8);
  f.write(reinterpret_cast<const char*>(&rows), 4);
  f.write(reinterpret_cast<const char*>(&vocab), 4);
  f.write(reinterpret_cast<const char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * 4));
  f.write(reinterpret_cast<const char*>(logits.data()), static_cast<std::streamsize>(logits.size() * 4));
  if (!f) glq::throw_io(path, "write failed");
}

void read_file(const std::string& path, std::vector<int32_t>& tokens, std::vector<float>& logits, int& vocab) {
  std::ifstream f(path, std::ios::binary);
  if (!f) glq::throw_io(path, "cannot open");
  char magic[8];
  int32_t rows = 0;
  f.read(magic, 8);
  f.read(reinterpret_cast<char*>(&rows), 4);
  f.read(reinterpret_cast<char*>(&vocab), 4);
  if (!f || std::string(magic, 8) != std::string(kMagic, 8) || rows <= 0 || vocab <= 0 || rows > (1 << 20) || vocab > (1 << 24))
    throw glq::Error(glq::ErrorKind::Format, path + ": not a glq logits file");
  tokens.resize(static_cast<size_t>(rows));
  logits.resize(static_cast<size_t>(rows) * static_cast<size_t>(vocab));
  f.read(reinterpret_cast<char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * 4));
  f.read(reinterpret_cast<char*>(logits.data()), static_cast<std::streamsize>(logits.size() * 4));
  if (!f) throw glq::Error(glq::ErrorKind::Format, path + ": truncated");
}

int logits_cmd(const LogitsArgs& a) {
  using namespace glq;
  cli::check_device(a.device);
  auto m = cli::load_model_verbose(a.model);
  const auto& tok = m->tokenizer();
  const std::vector<int32_t> ids = tok.encode(a.prompt, tok.add_bos_default(), false);
  if (ids.size() < 2) throw_invalid("the prompt must encode to at least 2 tokens");
  const int n = static_cast<int>(ids.size());
  if (n > m->config().max_context) throw_invalid(fmt::format("{} tokens exceed the model's context {}", n, m->config().max_context));
  const int prefill = a.prefill < 0 ? n / 2 : std::min(a.prefill, n);
  const int vocab = m->vocab_size();
  std::vector<float> logits(static_cast<size_t>(n) * vocab);
  if (a.device == "cuda") {
#ifdef GLQ_HAVE_CUDA
    auto gpu = cli::to_gpu_verbose(*m, n);
    auto& e = gpu->engine();
    if (prefill > 0) {
      e.forward(ids.data(), prefill, /*all_logits=*/true);
      const auto l = e.logits_host(prefill);
      std::copy(l.begin(), l.end(), logits.begin());
    }
    for (int t = prefill; t < n; ++t) {
      e.forward(ids.data() + t, 1);
      const auto l = e.logits_host(1);
      std::copy(l.begin(), l.end(), logits.begin() + static_cast<ptrdiff_t>(t) * vocab);
    }
#endif
  } else {
    model::KVCache cache = m->make_cache(n);
    if (prefill > 0) m->forward(std::span<const int32_t>(ids.data(), static_cast<size_t>(prefill)), cache, logits.data(), true);
    for (int t = prefill; t < n; ++t)
      m->forward(std::span<const int32_t>(ids.data() + t, 1), cache, logits.data() + static_cast<size_t>(t) * vocab);
  }
  fmt::print(stderr, "glq: logits of {} tokens ({} in one pass, {} one at a time) on {}\n", n, prefill, n - prefill, a.device);
  if (!a.out.empty()) write_file(a.out, ids, logits, vocab);
  nlohmann::json j = {{"model", a.model}, {"device", a.device}, {"tokens", n}, {"prefill", prefill}, {"vocab", vocab}};
  int rc = 0;
  if (!a.compare.empty()) {
    std::vector<int32_t> ref_ids;
    std::vector<float> ref;
    int ref_vocab = 0;
    read_file(a.compare, ref_ids, ref, ref_vocab);
    if (ref_ids != ids || ref_vocab != vocab)
      throw_mismatch(a.compare + ": tokens and vocabulary", fmt::format("{} tokens, vocab {}", n, vocab),
                     fmt::format("{} tokens, vocab {} (another prompt or model?)", ref_ids.size(), ref_vocab));
    double max_err = 0, sum_err = 0, max_prefill = 0, max_decode = 0;
    int top_agree = 0;
    for (int t = 0; t < n; ++t) {
      const float* x = logits.data() + static_cast<size_t>(t) * vocab;
      const float* r = ref.data() + static_cast<size_t>(t) * vocab;
      double num = 0, den = 0;
      int bx = 0, br = 0;
      bool finite = true;
      for (int i = 0; i < vocab; ++i) {
        finite = finite && std::isfinite(x[i]);
        num += (double(x[i]) - r[i]) * (double(x[i]) - r[i]);
        den += double(r[i]) * r[i];
        if (x[i] > x[bx]) bx = i;
        if (r[i] > r[br]) br = i;
      }
      const double err = finite ? std::sqrt(num / std::max(den, 1e-30)) : INFINITY;
      max_err = std::max(max_err, err);
      (t < prefill ? max_prefill : max_decode) = std::max(t < prefill ? max_prefill : max_decode, err);
      sum_err += err;
      top_agree += bx == br;
    }
    j["reference"] = a.compare;
    j["max_rel_err"] = max_err;
    j["mean_rel_err"] = sum_err / n;
    j["max_rel_err_prefill"] = max_prefill;
    j["max_rel_err_decode"] = max_decode;
    j["top1_agreement"] = static_cast<double>(top_agree) / n;
    j["tol"] = a.tol;
    j["pass"] = max_err <= a.tol;
    fmt::print(stderr, "glq: against {}: relative error max {:.3e} (one pass {:.3e}, one at a time {:.3e}), mean {:.3e}; "
                       "top token agrees on {}/{}; {} (tolerance {:.0e})\n",
               a.compare, max_err, max_prefill, max_decode, sum_err / n, top_agree, n, max_err <= a.tol ? "PASS" : "FAIL", a.tol);
    rc = max_err <= a.tol ? 0 : 1;
  }
  if (a.json) fmt::print("{}\n", j.dump());
  return rc;
}

}  // namespace

GLQ_COMMAND("logits", "logits of every prompt token (CPU or GPU), written to a file or compared with one", [](CLI::App& app) {
  auto a = std::make_shared<LogitsArgs>();
  app.add_option("model", a->model, "GGUF file or Hugging Face checkpoint directory")->required();
  app.add_option("-p,--prompt", a->prompt, "prompt text")->required();
  app.add_option("--device", a->device, "cpu, or cuda (the GPU engine)")->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--prefill", a->prefill, "tokens evaluated in the first pass; the rest one at a time (default: half)");
  app.add_option("-o,--out", a->out, "write the logits to this file");
  app.add_option("--compare", a->compare, "compare with a logits file written earlier");
  app.add_option("--tol", a->tol, "largest relative error accepted by --compare")->capture_default_str();
  app.add_flag("--json", a->json, "print one JSON object on stdout");
  return [a] { return logits_cmd(*a); };
});
