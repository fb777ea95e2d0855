// glq quantize MODEL --bits B --calib FILE -o OUT: calibrated E8-lattice quantization of a whole
// model into a GLQ checkpoint directory (pipeline: glq/model/quantize.hpp).
#include <cblas.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/command.hpp"
#include "glq/error.hpp"
#include "glq/model/quantize.hpp"

namespace {

struct QuantizeArgs {
  std::string model, calib, out, seed = "0x5eed";
  glq::model::QuantizeSettings s;
  bool no_rht = false, no_ldlq = false, no_resume = false, json = false;
  bool no_true_sequential = false, no_refit_scales = false;
  int threads = 0;
};

std::string duration(double s) {
  if (s < 0) return "?";
  const long t = static_cast<long>(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t / 60) % 60);
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

std::string bar(int done, int total) {
  const int width = 24, filled = total ? done * width / total : width;
  return std::string(static_cast<size_t>(filled), '#') + std::string(static_cast<size_t>(width - filled), '.');
}

const char* short_kind(const std::string& name) {
  for (const char* k : {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
    if (name.find(k) != std::string::npos) return k;
  return name.c_str();
}

int run_quantize(QuantizeArgs& a) {
  using namespace glq;
  if (a.threads > 0) {
    // Before the shared pool is first used; OpenBLAS is told directly.
    ::setenv("GLQ_THREADS", std::to_string(a.threads).c_str(), 1);
    openblas_set_num_threads(a.threads);
  }
  try {
    size_t used = 0;
    a.s.seed = std::stoull(a.seed, &used, 0);
    if (used != a.seed.size()) throw std::invalid_argument("trailing characters");
  } catch (const std::exception&) {
    throw_invalid(fmt::format("--seed '{}' is not an integer", a.seed));
  }
  a.s.rht = !a.no_rht;
  a.s.ldlq = !a.no_ldlq;
  a.s.resume = !a.no_resume;
  a.s.true_sequential = !a.no_true_sequential;
  a.s.refit_scales = !a.no_refit_scales;
  const bool tty = ::isatty(2);
  model::QuantizeProgress p;
  p.note = [](const std::string& m) { fmt::print(stderr, "glq: {}\n", m); };
  p.step = [tty](int done, int total, const std::string& what, double eta) {
    fmt::print(stderr, "{}[{}] {}/{} {}  ETA {}{}", tty ? "\r" : "", bar(done, total), done, total, what, duration(eta),
               tty && done < total ? "" : "\n");
  };
  p.layer_done = [](int layer, int total, const std::vector<model::LinearReport>& reps, double secs, double eta) {
    std::string losses;
    for (const auto& r : reps) losses += fmt::format(" {}:{}b/{:.4f}", short_kind(r.name), r.bits, r.proxy_loss);
    fmt::print(stderr, "[{}] layer {:3d}/{} {:6.1f} s  ETA {:>7}  proxy loss{}\n", bar(layer + 1, total), layer + 1, total, secs,
               duration(eta), losses);
    for (const auto& r : reps)
      if (!r.warnings.empty()) fmt::print(stderr, "glq: warning: {}: {}\n", r.name, r.warnings);
  };
  // A negative strength is chosen per linear by its width (1 below 4 bits, 0 at 4 bits).
  const int list_decode = a.s.list_decode != 0 ? a.s.list_decode : model::default_list_decode(a.s.bits);
  auto strength = [](double v) { return v < 0 ? std::string("1 below 4 bits, 0 at 4 bits") : fmt::format("{:g}", v); };
  fmt::print(stderr,
             "glq: quantizing {} to {:g} bits per weight (calibration {} x {} tokens of {}, seed {:#x}, damp {:g}, RHT {}, LDLQ {}, "
             "true-sequential {}, asymmetric target {}, residual target {}, scale refit {}, list decoding {}{})\n",
             a.model, a.s.bits, a.s.calib_seqs != 0 ? a.s.calib_seqs : model::default_calib_seqs(a.s.bits), a.s.seq_len, a.calib, a.s.seed,
             a.s.damp >= 0 ? a.s.damp : model::default_damp(a.s.bits), a.s.rht ? "on" : "off",
             a.s.ldlq ? "on" : "off", a.s.true_sequential ? "on" : "off", strength(a.s.asymmetric), strength(a.s.residual_target),
             a.s.refit_scales ? "on" : "off",
             list_decode > 1 ? fmt::format("{} candidates", list_decode) : std::string("off"),
             a.s.finetune_epochs > 0 ? fmt::format(", finetune {} epochs at lr {:g}{}", a.s.finetune_epochs, a.s.finetune_lr,
                                                      std::string(a.s.finetune_bias ? " with biases" : "") +
                                                          (a.s.finetune_stage_gains ? ", a gain per stage" : "") +
                                                          (a.s.finetune_extra_only ? ", on the extra windows only" : ""))
                                        : "");
  const model::QuantizeResult r = model::quantize_model_files(a.model, a.calib, a.out, a.s, p);

  fmt::print(stderr, "\n{:<40} {:>4} {:>11} {:>11} {:>10}\n", "linear", "bits", "proxy loss", "rel. error", "KiB");
  double sum_proxy = 0;
  for (const auto& l : r.linears) {
    fmt::print(stderr, "{:<40} {:>4} {:>11.5f} {:>11.5f} {:>10.1f}\n", l.name, l.bits, l.proxy_loss, l.relative_weight_error,
               l.stored_bytes / 1024.0);
    sum_proxy += l.proxy_loss;
  }
  std::map<int, int64_t> by_bits;
  for (const auto& l : r.linears) by_bits[l.bits] += static_cast<int64_t>(l.rows) * l.cols;
  std::string mix;
  for (auto& [b, n] : by_bits)
    mix += fmt::format("{}{} bits: {:.1f}%", mix.empty() ? "" : ", ", b, 100.0 * static_cast<double>(n) / static_cast<double>(r.linear_weights));
  fmt::print(stderr,
             "\nglq: wrote {} in {}{}\n"
             "glq: {} quantized linears, {:.2f}M weights ({}), mean proxy loss {:.5f}\n"
             "glq: linear layers: {:.2f} MiB = {:.3f} bits per weight (codes, scales and signs{})\n"
             "glq: model.safetensors: {:.2f} MiB = {:.3f} bits per weight over all {:.2f}M parameters (16-bit tensors included)\n",
             r.out_dir, duration(r.seconds), r.resumed_layers ? fmt::format(" ({} layers resumed)", r.resumed_layers) : "",
             r.linears.size(), r.linear_weights / 1e6, mix, r.linears.empty() ? 0.0 : sum_proxy / r.linears.size(),
             r.linear_bytes / 1048576.0, r.linear_bpw,
             !r.finetune.is_null() && r.finetune.value("bias", false) ? ", tuned biases" : "", r.file_bytes / 1048576.0, r.file_bpw, r.total_weights / 1e6);
  if (!r.finetune.is_null())
    fmt::print(stderr, "glq: finetune: validation KL to the unquantized model {:.5f} -> {:.5f} nats/token (epoch {} of {} kept, {})\n",
               r.finetune["heldout_kl_before"].get<double>(), r.finetune["heldout_kl_after"].get<double>(),
               r.finetune["best_epoch"].get<int>(), r.finetune["epochs_run"].get<int>(), duration(r.finetune_seconds));
  if (a.json) {
    nlohmann::json layers = nlohmann::json::array();
    for (const auto& l : r.linears)
      layers.push_back({{"name", l.name}, {"bits", l.bits}, {"proxy_loss", l.proxy_loss},
                        {"relative_weight_error", l.relative_weight_error}, {"bytes", l.stored_bytes}});
    nlohmann::json j = {{"out", r.out_dir},         {"bits", a.s.bits},           {"seconds", r.seconds},
                        {"file_bytes", r.file_bytes}, {"linear_bytes", r.linear_bytes}, {"linear_weights", r.linear_weights},
                        {"total_weights", r.total_weights}, {"linear_bpw", r.linear_bpw}, {"file_bpw", r.file_bpw},
                        {"resumed_layers", r.resumed_layers}, {"linears", layers}};
    if (!r.finetune.is_null()) {
      j["finetune"] = r.finetune;
      j["finetune"]["seconds"] = r.finetune_seconds;
    }
    fmt::print("{}\n", j.dump());
  }
  return 0;
}

}  // namespace

GLQ_COMMAND("quantize", "quantize a model (GGUF file or Hugging Face directory) into a GLQ checkpoint", [](CLI::App& app) {
  auto a = std::make_shared<QuantizeArgs>();
  app.add_option("model", a->model, "GGUF file or Hugging Face checkpoint directory")->required();
  app.add_option("--bits", a->s.bits, "bits per weight: 2, 3, 4, or a fractional average such as 2.5 (mixed precision)")
      ->required()
      ->check(CLI::Range(2.0, 4.0));
  app.add_option("--calib", a->calib, "UTF-8 calibration text")->required();
  app.add_option("-o,--out", a->out, "output checkpoint directory (written as OUT.tmp-PID, renamed when complete)")->required();
  app.add_option("--calib-seqs", a->s.calib_seqs,
                 "number of calibration sequences (0: by width, 64 at 3 bits (3 <= B < 4), 32 otherwise)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--seq-len", a->s.seq_len, "tokens per calibration sequence")->capture_default_str()->check(CLI::Range(2, 1 << 20));
  app.add_option("--seed", a->seed, "seed of the calibration draw and the sign vectors")->capture_default_str();
  app.add_option("--damp", a->s.damp,
                 "relative Hessian damping: H + damp*mean(diag H)*I (-1: by width, 0.05 below 4 bits, 0.01 at 4 "
                 "bits)")
      ->capture_default_str()
      ->check(CLI::Range(-1.0, 10.0));
  app.add_flag("--no-rht", a->no_rht, "no randomized Hadamard transform (baseline)");
  app.add_flag("--no-ldlq", a->no_ldlq, "round to nearest instead of block LDLQ (baseline)");
  app.add_flag("--no-true-sequential", a->no_true_sequential,
               "collect all of a layer's Hessians on the unquantized layer (default: q/k/v, then o_proj on the quantized "
               "attention, gate/up, then down_proj on the quantized MLP path)");
  app.add_option("--asym", a->s.asymmetric,
                 "strength of the asymmetric target W + a*W*D*H^-1, which also corrects the error already in a linear's "
                 "inputs (the unquantized model's hidden states are run alongside); 0: plain GPTQ target; "
                 "-1: 1 below 4 bits, 0 at 4 bits")
      ->capture_default_str()
      ->check(CLI::Range(-1.0, 2.0));
  app.add_option("--residual-target", a->s.residual_target,
                 "strength with which o_proj and down_proj also absorb the part of the residual stream's error that "
                 "their inputs predict (0: off; -1: 1 below 4 bits, 0 at 4 bits)")
      ->capture_default_str()
      ->check(CLI::Range(-1.0, 2.0));
  app.add_flag("--no-refit-scales", a->no_refit_scales,
               "keep the RMS-based stage scales (default: least-squares refit of each row's scales to its codes in the "
               "Hessian metric)");
  app.add_option("--scale-search", a->s.scale_search,
                 "multipliers of the RMS-based stage scales tried by LDLQ, each row keeping its best (comma-separated; "
                 "1: one pass; default: 0.85,0.92,1,1.08,1.16)")
      ->delimiter(',')
      ->check(CLI::Range(0.05, 20.0));
  app.add_option("--list-decode", a->s.list_decode,
                 "list decoding: the K nearest first-stage codewords of each group, each followed by the residual "
                 "stages, keeping the least error in the LDLQ objective (1: off; 0: by width, 8 from 3 bits up, "
                 "off below)")
      ->capture_default_str()
      ->check(CLI::Range(0, 64));
  app.add_option("--finetune-epochs", a->s.finetune_epochs,
                 "after quantizing, tune every row's scale gain and every norm gain end to end toward the unquantized "
                 "model's next-token distributions on windows of the calibration text, for this many epochs (0: off); "
                 "the gains of the epoch with the least KL on validation windows the quantizer never saw are kept")
      ->capture_default_str()
      ->check(CLI::Range(0, 100));
  app.add_option("--finetune-windows", a->s.finetune_windows,
                 "windows of --seq-len tokens the tuning trains on besides the calibration windows, drawn from the "
                 "same text (-1: 3 per calibration window, as many as the text holds)")
      ->capture_default_str()
      ->check(CLI::Range(-1, 100000));
  app.add_option("--finetune-lr", a->s.finetune_lr, "Adam step size of the tuning (the gains start at 1)")
      ->capture_default_str()
      ->check(CLI::Range(1e-6, 1.0));
  app.add_flag("--finetune-bias", a->s.finetune_bias,
               "the tuning also fits an output bias for every row of every quantized linear (stored as the linear's "
               "float32 bias: 32 bits per row more)");
  app.add_flag("--finetune-stage-gains", a->s.finetune_stage_gains,
               "the tuning fits a gain per stage of each row of a two-stage linear (3 and 4 bits: the first stage's "
               "scale and the second's) instead of one on both; no bits more");
  app.add_flag("--finetune-extra-only", a->s.finetune_extra_only,
               "the tuning trains on the extra windows (--finetune-windows) alone, not on the calibration windows, "
               "which the quantizer already fits far better than other text");
  app.add_flag("--keep-head-fp16,!--quantize-head", a->s.keep_head_16bit,
               "keep lm_head in 16 bits (default: on); --quantize-head quantizes it at ceil(bits)")
      ->capture_default_str();
  app.add_option("--dtype", a->s.dtype_16bit, "storage of the kept tensors (embeddings, norms, head)")
      ->capture_default_str()
      ->check(CLI::IsMember({"float16", "bfloat16", "float32"}));
  app.add_option("--threads", a->threads, "worker threads (0: GLQ_THREADS or all cores)")->capture_default_str();
  app.add_flag("--no-resume", a->no_resume, "discard OUT.partial/ of an interrupted run instead of resuming it");
  app.add_flag("--overwrite", a->s.overwrite, "replace OUT if it exists (only once the new checkpoint is complete)");
  app.add_flag("--json", a->json, "print one JSON object with the report on stdout");
  return [a] { return run_quantize(*a); };
});
