// `glq bench model MODEL`: prompt (prefill) and decode tokens per second of a model on the CPU,
// optionally against the same model with its linears quantized in the same run.
//
// With --baseline OTHER, OTHER is measured first (e.g. the fp32 GGUF that a GLQ checkpoint was
// quantized from) and every speed-up is relative to it.
//
// Method: a fixed prompt of --prompt-tokens ids goes through Model::forward in one call
// (prefill); then --decode-tokens tokens are generated one at a time, greedily. Each variant is
// measured --reps times and the median rate is reported. With --quantize-bits 2,4 the loaded
// model is measured first as it is (the baseline: its dense linears run on OpenBLAS fp32), then
// its decoder linears (q, k, v, o, gate, up, down of every layer; --quantize-lm-head adds the
// output projection) are replaced by GLQ matrices quantized directly from the loaded weights
// with quantize_matrix (identity Hessian, no calibration: a speed measurement, not a quality
// one) and measured again, in the same process with the same threads. The output projection of
// those variants is held in 16 bits, as `glq quantize` keeps it (--head-fp32: fp32;
// --quantize-lm-head: quantized too). With --device cuda or
// --synthetic the CUDA engine's benchmark runs instead.
#include <cblas.h>
#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <ctime>
#include <exception>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <optional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cli/bench_common.hpp"
#include "cli/command.hpp"
#include "glq/codec/quantized_matrix.hpp"
#include "glq/error.hpp"
#include "glq/kernels/cpu.hpp"
#include "glq/model/loader.hpp"
#include "glq/model/model.hpp"
#include "glq/model/perplexity.hpp"
#include "glq/model/tokenizer.hpp"
#include "glq/util/thread_pool.hpp"

namespace glq::cli {

namespace {

std::string today_utc() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M UTC", std::gmtime(&t));
  return buf;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Rates {
  double prefill_tok_s = 0;
  double decode_tok_s = 0;
  double decode_ms_per_token = 0;
  // CPU time of the calling thread (all the work when --threads 1; then a shared machine stretches
  // wall time but hardly this).
  double prefill_cpu_tok_s = 0;
  double decode_cpu_tok_s = 0;
};

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Median prefill and decode rates over `reps` runs on a fresh cache each time.
Rates measure(const model::Model& m, int prompt_tokens, int decode_tokens, int reps) {
  const int vocab = m.vocab_size();
  std::vector<int32_t> prompt(prompt_tokens);
  for (int i = 0; i < prompt_tokens; ++i) prompt[i] = static_cast<int32_t>((1 + 7919ll * i) % vocab);
  std::vector<float> logits(vocab);
  model::KVCache cache = m.make_cache(prompt_tokens + decode_tokens + 1);
  std::vector<double> prefill, decode, prefill_cpu, decode_cpu;
  for (int rep = 0; rep <= reps; ++rep) {  // rep 0 warms up scratch buffers and caches
    cache.clear();
    auto t0 = std::chrono::steady_clock::now();
    double c0 = thread_cpu_seconds();
    m.forward(prompt, cache, logits.data());
    const double tp = seconds_since(t0), cp = thread_cpu_seconds() - c0;
    t0 = std::chrono::steady_clock::now();
    c0 = thread_cpu_seconds();
    for (int i = 0; i < decode_tokens; ++i) {
      const int32_t next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      m.forward(std::span<const int32_t>(&next, 1), cache, logits.data());
    }
    const double td = seconds_since(t0), cd = thread_cpu_seconds() - c0;
    if (rep == 0) continue;
    prefill.push_back(prompt_tokens / tp);
    decode.push_back(decode_tokens / td);
    prefill_cpu.push_back(prompt_tokens / cp);
    decode_cpu.push_back(decode_tokens / cd);
  }
  Rates r;
  r.prefill_tok_s = median(prefill);
  r.decode_tok_s = median(decode);
  r.prefill_cpu_tok_s = median(prefill_cpu);
  r.decode_cpu_tok_s = median(decode_cpu);
  r.decode_ms_per_token = 1e3 / r.decode_tok_s;
  return r;
}

struct Target {
  int layer;  // −1: lm_head
  model::LinearKind kind;
  model::Linear* linear;
};

// Replaces the dense linears by GLQ matrices of `bits` (identity Hessian), quantizing several
// matrices at once over the pool. Returns the seconds it took.
double quantize_in_place(model::Model& m, int bits, bool lm_head, ThreadPool& pool) {
  std::vector<Target> targets;
  for (int l = 0; l < m.num_layers(); ++l)
    for (model::LinearKind kind : model::kAllLinearKinds) {
      model::Linear& lin = m.layer(l).linear(kind);
      if (!lin.is_quantized()) targets.push_back({l, kind, &lin});
    }
  if (lm_head && !m.lm_head().is_quantized())
    targets.push_back({-1, model::LinearKind::Q, &m.lm_head()});
  // Largest first, so the last chunks of the parallel loop are short.
  std::sort(targets.begin(), targets.end(), [](const Target& a, const Target& b) {
    return int64_t(a.linear->rows()) * a.linear->cols() > int64_t(b.linear->rows()) * b.linear->cols();
  });
  // The pool hands each thread a contiguous range: deal the size-sorted list out round-robin so
  // that every range holds a similar mix of sizes.
  const int parts = pool.size();
  std::vector<Target> dealt;
  for (int p = 0; p < parts; ++p)
    for (size_t i = p; i < targets.size(); i += parts) dealt.push_back(targets[i]);
  targets.swap(dealt);
  std::vector<model::Linear> done(targets.size());
  std::vector<std::exception_ptr> errors(targets.size());
  const auto t0 = std::chrono::steady_clock::now();
  pool.parallel_for(static_cast<int64_t>(targets.size()), [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; ++i) try {
      const model::Linear& src = *targets[i].linear;
      const float* w = src.dense_weight();
      if (!w) throw_invalid("bench model: linear " + src.describe() + " has no dense weight to quantize");
      codec::QuantizeOptions opt;
      opt.bits = bits;
      opt.use_ldlq = false;  // identity Hessian: LDLQ would change nothing
      opt.seed = 0x5eed + static_cast<uint64_t>(i);
      codec::QuantizedMatrix q = codec::quantize_matrix(
          std::span<const float>(w, size_t(src.rows()) * src.cols()), src.rows(), src.cols(), {}, opt);
      done[i] = model::Linear::quantized(std::move(q), std::vector<float>(src.bias().begin(), src.bias().end()));
    } catch (...) {
      errors[i] = std::current_exception();  // the pool's workers must not throw
    }
  });
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
  for (size_t i = 0; i < targets.size(); ++i) *targets[i].linear = std::move(done[i]);
  return seconds_since(t0);
}

// The head as `glq quantize` keeps it by default: 16-bit (fp16 when its values fit).
void head_to_16bit(model::Model& m) {
  model::Linear& head = m.lm_head();
  if (head.is_quantized() || head.is_dense16()) return;
  const std::vector<float> w = head.to_dense();
  head = model::Linear::dense16_from(w, head.rows(), head.cols(), std::vector<float>(head.bias().begin(), head.bias().end()));
}

struct WeightBytes {
  size_t quantized = 0, dense = 0;
};
WeightBytes linear_bytes(const model::Model& m) {
  WeightBytes wb;
  auto add = [&](const model::Linear& l) { (l.is_quantized() ? wb.quantized : wb.dense) += l.weight_bytes(); };
  for (int l = 0; l < m.num_layers(); ++l)
    for (model::LinearKind kind : model::kAllLinearKinds) add(m.layer(l).linear(kind));
  add(m.lm_head());
  return wb;
}

std::vector<int> parse_bits_list(const std::string& s) {
  std::vector<int> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    if (item.empty()) continue;
    int b = 0;
    try {
      b = std::stoi(item);
    } catch (const std::exception&) {
      throw_invalid("bench model: --quantize-bits expects a list like 2,4; got '" + s + "'");
    }
    if (b != 2 && b != 3 && b != 4) throw_invalid("bench model: --quantize-bits values must be 2, 3 or 4, got " + item);
    out.push_back(b);
  }
  return out;
}

// Perplexity check: the first `tokens` tokens of a text in windows of `ctx`, scored with the
// fast kernels and (for models with quantized linears) again with every quantized product routed
// to codec::matvec_reference (GLQ_CPU_ISA=reference), so the two can be compared digit by digit.
struct PplCheck {
  std::vector<int32_t> tokens;
  int ctx = 128;
};

double perplexity_with_isa(const model::Model& m, const PplCheck& c, const char* isa) {
  const char* old = std::getenv("GLQ_CPU_ISA");
  const std::string saved = old ? old : "";
  if (isa) setenv("GLQ_CPU_ISA", isa, 1);
  const double ppl = model::evaluate_perplexity(m, c.tokens, c.ctx).ppl;
  if (old)
    setenv("GLQ_CPU_ISA", saved.c_str(), 1);
  else
    unsetenv("GLQ_CPU_ISA");
  return ppl;
}

// With one thread: speed-ups in CPU time of the calling thread (all the work), printed too.
void add_cpu_speedups(nlohmann::json& v, const nlohmann::json& base) {
  if (!v.contains("decode_cpu_tok_s") || !base.contains("decode_cpu_tok_s")) return;
  v["decode_cpu_speedup"] = v["decode_cpu_tok_s"].get<double>() / base["decode_cpu_tok_s"].get<double>();
  v["prefill_cpu_speedup"] = v["prefill_cpu_tok_s"].get<double>() / base["prefill_cpu_tok_s"].get<double>();
  fmt::print(stderr, "{:<12} thread CPU time: decode {:.2f} tok/s ({:.2f}x), prefill {:.1f} tok/s ({:.2f}x)\n", "",
             v["decode_cpu_tok_s"].get<double>(), v["decode_cpu_speedup"].get<double>(),
             v["prefill_cpu_tok_s"].get<double>(), v["prefill_cpu_speedup"].get<double>());
}

nlohmann::json run_cpu_model_bench(const ModelBenchArgs& a, const std::string& baseline_path,
                                   const std::string& quantize_bits, bool lm_head, bool head_fp32, int reps,
                                   const std::optional<PplCheck>& ppl) {
  if (a.model.empty()) throw_invalid("bench model: a model path is required (or --synthetic with --device cuda)");
  if (a.prompt_tokens <= 0 || a.decode_tokens <= 0)
    throw_invalid(fmt::format("bench model: --prompt-tokens and --decode-tokens must be positive, got {} and {}",
                              a.prompt_tokens, a.decode_tokens));
  if (reps <= 0) throw_invalid(fmt::format("bench model: --reps must be positive, got {}", reps));
  const std::vector<int> bits_list = parse_bits_list(quantize_bits);
  ThreadPool pool(a.threads);
  openblas_set_num_threads(pool.size());
  model::LoadOptions lo;
  lo.load_tokenizer = false;
  const auto t_load = std::chrono::steady_clock::now();
  std::unique_ptr<model::Model> m = model::load_model(a.model, lo);
  const double load_s = seconds_since(t_load);
  m->set_pool(pool);

  nlohmann::json j;
  j["device"] = "cpu";
  j["date"] = today_utc();
  j["model"] = a.model;
  j["description"] = m->describe();
  j["isa"] = cpu::isa_name(cpu::detect_isa());
  j["threads"] = pool.size();
  j["prompt_tokens"] = a.prompt_tokens;
  j["decode_tokens"] = a.decode_tokens;
  j["reps"] = reps;
  j["load_seconds"] = load_s;

  auto variant = [&](const std::string& name) {
    const Rates r = measure(*m, a.prompt_tokens, a.decode_tokens, reps);
    const WeightBytes wb = linear_bytes(*m);
    nlohmann::json v;
    v["name"] = name;
    v["prefill_tok_s"] = r.prefill_tok_s;
    v["decode_tok_s"] = r.decode_tok_s;
    v["decode_ms_per_token"] = r.decode_ms_per_token;
    if (pool.size() == 1) {
      v["prefill_cpu_tok_s"] = r.prefill_cpu_tok_s;
      v["decode_cpu_tok_s"] = r.decode_cpu_tok_s;
    }
    v["quantized_linear_bytes"] = wb.quantized;
    v["dense_linear_bytes"] = wb.dense;
    v["lm_head"] = m->lm_head().describe();
    if (ppl) {
      const double fast = perplexity_with_isa(*m, *ppl, nullptr);
      v["ppl"] = fast;
      if (wb.quantized > 0) {
        const double ref = perplexity_with_isa(*m, *ppl, "reference");
        v["ppl_reference_kernels"] = ref;
        v["ppl_relative_difference"] = std::fabs(fast - ref) / ref;
        fmt::print(stderr, "{:<12} perplexity {:.6g} (reference kernels {:.6g}, relative difference {:.2g}) on {} tokens\n",
                   "", fast, ref, std::fabs(fast - ref) / ref, ppl->tokens.size());
      } else {
        fmt::print(stderr, "{:<12} perplexity {:.6g} on {} tokens\n", "", fast, ppl->tokens.size());
      }
    }
    fmt::print(stderr, "{:<12} prefill {:8.1f} tok/s   decode {:7.2f} tok/s ({:.2f} ms/token)   linears: {:.1f} MB "
               "quantized + {:.1f} MB dense (head {})\n",
               name, r.prefill_tok_s, r.decode_tok_s, r.decode_ms_per_token, wb.quantized / 1e6, wb.dense / 1e6,
               m->lm_head().describe());
    return v;
  };

  fmt::print(stderr, "{} ({}, {} threads, {} prompt + {} decode tokens, median of {})\n", m->describe(),
             cpu::isa_name(cpu::detect_isa()), pool.size(), a.prompt_tokens, a.decode_tokens, reps);
  nlohmann::json variants = nlohmann::json::array();
  if (!baseline_path.empty()) {
    // The baseline model first (e.g. the fp32 model a checkpoint was made from), same process.
    std::unique_ptr<model::Model> bm = model::load_model(baseline_path, lo);
    bm->set_pool(pool);
    if (bm->vocab_size() != m->vocab_size())
      throw_mismatch("bench model --baseline " + baseline_path + " vocabulary", std::to_string(m->vocab_size()),
                     std::to_string(bm->vocab_size()));
    std::swap(m, bm);
    variants.push_back(variant("baseline"));
    variants.back()["model"] = baseline_path;
    std::swap(m, bm);
  }
  variants.push_back(variant("as loaded"));
  variants.back()["model"] = a.model;
  const nlohmann::json base = variants[0];
  for (int bits : bits_list) {
    if (bits_list.size() > 1 && bits != bits_list.front()) {
      // Requantize from the original weights: reload so each width starts from the dense model.
      m = model::load_model(a.model, lo);
      m->set_pool(pool);
    }
    const double qs = quantize_in_place(*m, bits, lm_head, pool);
    if (!lm_head && !head_fp32) head_to_16bit(*m);
    nlohmann::json v = variant(fmt::format("glq-{}bit", bits));
    v["bits"] = bits;
    v["quantize_seconds"] = qs;
    v["decode_speedup"] = v["decode_tok_s"].get<double>() / base["decode_tok_s"].get<double>();
    v["prefill_speedup"] = v["prefill_tok_s"].get<double>() / base["prefill_tok_s"].get<double>();
    add_cpu_speedups(v, base);
    fmt::print(stderr, "{:<12} decode {:.2f}x, prefill {:.2f}x the {} (quantized in {:.1f} s)\n", "",
               v["decode_speedup"].get<double>(), v["prefill_speedup"].get<double>(),
               baseline_path.empty() ? "model as loaded" : "baseline", qs);
    variants.push_back(v);
  }
  if (!baseline_path.empty()) {
    nlohmann::json& loaded = variants[1];
    loaded["decode_speedup"] = loaded["decode_tok_s"].get<double>() / base["decode_tok_s"].get<double>();
    loaded["prefill_speedup"] = loaded["prefill_tok_s"].get<double>() / base["prefill_tok_s"].get<double>();
    add_cpu_speedups(loaded, base);
    fmt::print(stderr, "{:<12} decode {:.2f}x, prefill {:.2f}x the baseline\n", "",
               loaded["decode_speedup"].get<double>(), loaded["prefill_speedup"].get<double>());
  }
  const nlohmann::json& last = variants.back();
  j["prefill_tok_s"] = last["prefill_tok_s"];
  j["decode_tok_s"] = last["decode_tok_s"];
  j["variant"] = last["name"];
  j["baseline"] = baseline_path.empty() ? "model as loaded (dense linears: OpenBLAS fp32)"
                                        : "--baseline " + baseline_path;
  j["baseline_prefill_tok_s"] = base["prefill_tok_s"];
  j["baseline_decode_tok_s"] = base["decode_tok_s"];
  if (last.contains("decode_cpu_speedup")) {
    j["decode_cpu_speedup"] = last["decode_cpu_speedup"];
    j["prefill_cpu_speedup"] = last["prefill_cpu_speedup"];
  }
  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) == 3) j["load_average_1min"] = load[0];
  j["decode_speedup"] = last["decode_tok_s"].get<double>() / base["decode_tok_s"].get<double>();
  j["prefill_speedup"] = last["prefill_tok_s"].get<double>() / base["prefill_tok_s"].get<double>();
  j["quantize_lm_head"] = lm_head;
  j["lm_head"] = last.value("lm_head", std::string());
  j["variants"] = variants;
  return j;
}

RunFn setup(CLI::App& app) {
  struct Options {
    ModelBenchArgs args;
    std::string device = "cpu";
    std::string quantize_bits;
    std::string baseline;
    bool lm_head = false;
    bool head_fp32 = false;
    int reps = 3;
    std::string ppl_text;
    int ppl_tokens = 256;
    int ppl_ctx = 128;
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  o->args.prompt_tokens = 64;
  o->args.decode_tokens = 32;
  app.add_option("model", o->args.model, "GGUF file or Hugging Face directory");
  app.add_option("--device", o->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--synthetic", o->args.synthetic, "CUDA only: random model of this architecture (e.g. llama3-8b)");
  app.add_option("--bits", o->args.bits, "CUDA/synthetic only: 2, 3, 4 or 16");
  app.add_option("--ctx", o->args.ctx, "CUDA only: context length reached while decoding");
  app.add_option("--batch", o->args.batch, "CUDA only: sequences decoded together");
  app.add_option("--prompt-tokens", o->args.prompt_tokens, "prompt length for the prefill measurement");
  app.add_option("--decode-tokens", o->args.decode_tokens, "tokens generated for the decode measurement");
  app.add_option("--threads", o->args.threads, "CPU threads (0 = all)");
  app.add_option("--quantize-bits", o->quantize_bits,
                 "CPU: also measure the model with its linears quantized to these widths, e.g. 2,4");
  app.add_option("--baseline", o->baseline,
                 "CPU: measure this model first and report speed-ups against it (e.g. the fp32 GGUF a "
                 "checkpoint was made from)");
  app.add_flag("--quantize-lm-head", o->lm_head, "CPU: quantize the output projection too");
  app.add_flag("--head-fp32", o->head_fp32,
               "CPU: keep the output projection of --quantize-bits variants in fp32 (default: 16-bit, as glq "
               "quantize keeps it)");
  app.add_option("--reps", o->reps, "CPU: measurements per variant (median)");
  app.add_option("--ppl-text", o->ppl_text,
                 "CPU: also report each variant's perplexity on this text, for quantized ones with the "
                 "reference kernels too");
  app.add_option("--ppl-tokens", o->ppl_tokens, "CPU: tokens of --ppl-text to score");
  app.add_option("--ppl-ctx", o->ppl_ctx, "CPU: window length for --ppl-text");
  app.add_flag("--json", o->json, "print one JSON object on stdout");
  return [o]() {
    const bool cuda = o->device == "cuda" || !o->args.synthetic.empty();
    std::optional<PplCheck> ppl;
    if (!cuda && !o->ppl_text.empty()) {
      std::ifstream in(o->ppl_text, std::ios::binary);
      if (!in) throw_io(o->ppl_text, "cannot open the --ppl-text file");
      const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (o->ppl_ctx < 2 || o->ppl_tokens < o->ppl_ctx)
        throw_invalid(fmt::format("bench model: need --ppl-tokens ({}) >= --ppl-ctx ({}) >= 2", o->ppl_tokens,
                                  o->ppl_ctx));
      PplCheck c;
      c.ctx = o->ppl_ctx;
      c.tokens = model::load_tokenizer(o->args.model).encode(text);
      if (static_cast<int>(c.tokens.size()) > o->ppl_tokens) c.tokens.resize(o->ppl_tokens);
      ppl = std::move(c);
    }
    const nlohmann::json j = cuda ? run_cuda_model_bench(o->args)
                                  : run_cpu_model_bench(o->args, o->baseline, o->quantize_bits, o->lm_head,
                                                        o->head_fp32, o->reps, ppl);
    if (o->json)
      fmt::print("{}\n", j.dump());
    else if (cuda)
      fmt::print(stderr, "{}\n", j.dump(2));
    return 0;
  };
}

GLQ_COMMAND("bench model", "prompt and decode tokens/s of a model, dense against GLQ-quantized", setup);

}  // namespace

}  // namespace glq::cli
