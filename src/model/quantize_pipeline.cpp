// The quantization pipeline (see glq/model/quantize.hpp for the steps).
#include "glq/model/quantize.hpp"

#include <cblas.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <set>

#include <fmt/format.h>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/error.hpp"
#include "glq/format/half.hpp"
#include "glq/format/quantization_config.hpp"
#include "glq/format/quantized_tensors.hpp"
#include "glq/format/safetensors_io.hpp"
#include "glq/model/finetune.hpp"
#include "glq/model/glq_checkpoint.hpp"
#include "model/quantize_weights.hpp"

namespace glq::model {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Seed of a linear's sign vectors: a hash of the base seed and the linear's position, so that
// no two linears share signs and a resumed run draws the same ones.
uint64_t linear_seed(uint64_t base, int layer, LinearKind kind) {
  uint64_t s = base ^ (static_cast<uint64_t>(layer + 1) << 8) ^ static_cast<uint64_t>(static_cast<int>(kind) + 1);
  return splitmix64(s);
}

// The linear whose input Hessian a linear uses: q/k/v read the same normed input, as do gate/up.
LinearKind hessian_owner(LinearKind k) {
  switch (k) {
    case LinearKind::K:
    case LinearKind::V: return LinearKind::Q;
    case LinearKind::Up: return LinearKind::Gate;
    default: return k;
  }
}

// Σ xᵀx over every call, float64. Each call's product (one sequence of ≤ a few thousand
// tokens) is formed in float32 by BLAS and added to the float64 sum.
struct HessianAccumulator {
  int cols = 0;
  int64_t tokens = 0;
  std::vector<double> sum;   // (cols, cols), upper triangle
  std::vector<float> tmp;    // (cols, cols)

  void add(const float* x, int n, int c) {
    if (sum.empty()) {
      cols = c;
      sum.assign(static_cast<size_t>(c) * c, 0.0);
      tmp.assign(static_cast<size_t>(c) * c, 0.0f);
    }
    if (c != cols) throw Error(ErrorKind::Internal, fmt::format("Hessian of width {} fed rows of {}", cols, c));
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, c, n, 1.0f, x, c, 0.0f, tmp.data(), c);
    for (int i = 0; i < c; ++i)
      for (int j = i; j < c; ++j) sum[static_cast<size_t>(i) * c + j] += tmp[static_cast<size_t>(i) * c + j];
    tokens += n;
  }
  // H / tokens as a full symmetric float32 matrix.
  std::vector<float> mean() const {
    std::vector<float> h(sum.size());
    const double inv = tokens > 0 ? 1.0 / static_cast<double>(tokens) : 0.0;
    for (int i = 0; i < cols; ++i)
      for (int j = i; j < cols; ++j) {
        const float v = static_cast<float>(sum[static_cast<size_t>(i) * cols + j] * inv);
        h[static_cast<size_t>(i) * cols + j] = h[static_cast<size_t>(j) * cols + i] = v;
      }
    return h;
  }
};

// tr(W H Wᵀ): the output energy of the linear on the calibration data (H per token).
double output_energy(const float* W, int rows, int cols, const std::vector<float>& H) {
  std::vector<float> WH(static_cast<size_t>(rows) * cols);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, cols, 1.0f, W, cols, H.data(), cols, 0.0f, WH.data(), cols);
  double t = 0;
  for (size_t i = 0; i < WH.size(); ++i) t += static_cast<double>(WH[i]) * W[i];
  return t;
}

// E[(a_fp − a_q) x_qᵀ] over every call, float64: with a = x, codec::asymmetric_target's Δ
// (cols, cols); with a = the residual stream the linear's output is added to, its R (rows,
// cols). Each call's product is formed in float32 by BLAS and added to the float64 sum.
struct CrossAccumulator {
  int rows = 0, cols = 0;
  int64_t tokens = 0;
  std::vector<double> sum;   // (rows, cols)
  std::vector<float> diff;   // (n, rows)
  std::vector<float> tmp;    // (rows, cols)

  void add(const float* a_fp, const float* a_q, int r, const float* x_q, int n, int c) {
    if (sum.empty()) {
      rows = r;
      cols = c;
      sum.assign(static_cast<size_t>(r) * c, 0.0);
      tmp.assign(static_cast<size_t>(r) * c, 0.0f);
    }
    if (r != rows || c != cols)
      throw Error(ErrorKind::Internal, fmt::format("cross term of shape {}x{} fed {}x{}", rows, cols, r, c));
    diff.resize(static_cast<size_t>(n) * r);
    for (size_t i = 0; i < diff.size(); ++i) diff[i] = a_fp[i] - a_q[i];
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, c, n, 1.0f, diff.data(), r, x_q, c, 0.0f, tmp.data(), c);
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += tmp[i];
    tokens += n;
  }
  std::vector<float> mean() const {
    std::vector<float> d(sum.size());
    const double inv = tokens > 0 ? 1.0 / static_cast<double>(tokens) : 0.0;
    for (size_t i = 0; i < sum.size(); ++i) d[i] = static_cast<float>(sum[i] * inv);
    return d;
  }
};

// The strength of a correction (QuantizeSettings::asymmetric, residual_target) for a linear of
// `bits`: a negative setting means 1 below 4 bits and 0 at 4 bits.
double correction_strength(double setting, int bits) { return setting >= 0 ? setting : (bits < 4 ? 1.0 : 0.0); }

// Whether a linear's output is added to the residual stream (o_proj, down_proj).
bool writes_residual(LinearKind k) { return k == LinearKind::O || k == LinearKind::Down; }

// The inputs of a layer's linears (one per Hessian owner) and, with the residual correction,
// the residual stream that o_proj's and down_proj's outputs are added to, per calibration
// sequence: kind → sequence → (tokens, cols or hidden).
struct LayerInputs {
  std::map<LinearKind, std::vector<std::vector<float>>> x;
  std::map<LinearKind, std::vector<std::vector<float>>> residual;
};

// Runs layer `layer` in place over every sequence of `hidden`, keeping the linears' inputs (and
// the residual stream before o_proj's and down_proj's additions when `residual`). While a hook
// runs, the layer's in-place buffer holds exactly that residual stream.
LayerInputs run_layer_capture(const Model& model, int layer, std::vector<std::vector<float>>& hidden, int seq_len,
                              bool residual) {
  LayerInputs in;
  size_t seq = 0;
  const LinearHook hook = [&](int, LinearKind kind, const float* x, int tokens, int cols) {
    if (hessian_owner(kind) != kind) return;
    auto& v = in.x[kind];
    if (v.size() <= seq) v.resize(seq + 1);
    v[seq].assign(x, x + static_cast<size_t>(tokens) * cols);
    if (residual && writes_residual(kind)) {
      auto& r = in.residual[kind];
      if (r.size() <= seq) r.resize(seq + 1);
      r[seq] = hidden[seq];
    }
  };
  for (seq = 0; seq < hidden.size(); ++seq) model.run_layer(layer, hidden[seq].data(), seq_len, &hook);
  return in;
}

// The order in which a layer's linears are quantized: with true_sequential, each group's
// Hessian is collected after the groups before it were quantized.
std::vector<std::vector<LinearKind>> linear_groups(bool true_sequential) {
  using K = LinearKind;
  if (!true_sequential) return {{K::Q, K::K, K::V, K::O, K::Gate, K::Up, K::Down}};
  return {{K::Q, K::K, K::V}, {K::O}, {K::Gate, K::Up}, {K::Down}};
}

// Runs layer `layer` over copies of `hidden` (not modified), accumulating the Hessians of the
// owners in `group` and, with `fp` (the unquantized model's inputs of the same sequences), the
// cross terms Δ, and R for o_proj / down_proj where `fp` holds their residual stream.
void collect_statistics(const Model& model, int layer, const std::vector<std::vector<float>>& hidden, int seq_len,
                        const std::vector<LinearKind>& group, const LayerInputs* fp,
                        std::map<LinearKind, HessianAccumulator>& hs, std::map<LinearKind, CrossAccumulator>& ds,
                        std::map<LinearKind, CrossAccumulator>& rs) {
  size_t seq = 0;
  std::vector<float> h;
  const LinearHook hook = [&](int, LinearKind kind, const float* x, int tokens, int cols) {
    if (hessian_owner(kind) != kind || std::find(group.begin(), group.end(), kind) == group.end()) return;
    hs[kind].add(x, tokens, cols);
    if (!fp) return;
    ds[kind].add(fp->x.at(kind).at(seq).data(), x, cols, x, tokens, cols);
    const auto r = fp->residual.find(kind);
    if (r != fp->residual.end()) {
      const int hidden_size = static_cast<int>(h.size() / static_cast<size_t>(tokens));
      rs[kind].add(r->second.at(seq).data(), h.data(), hidden_size, x, tokens, cols);
    }
  };
  for (seq = 0; seq < hidden.size(); ++seq) {
    h = hidden[seq];
    model.run_layer(layer, h.data(), seq_len, &hook);
  }
}

// Runs layer `layer` over every calibration sequence (in place), the hook collecting Hessians.
void run_layer_all(Model& model, int layer, std::vector<std::vector<float>>& hidden, int seq_len,
                   std::map<LinearKind, HessianAccumulator>* hessians) {
  LinearHook hook;
  if (hessians) {
    hook = [hessians](int, LinearKind kind, const float* x, int tokens, int cols) {
      if (hessian_owner(kind) != kind) return;  // the shared input is seen once
      (*hessians)[kind].add(x, tokens, cols);
    };
  }
  for (auto& h : hidden) model.run_layer(layer, h.data(), seq_len, hessians ? &hook : nullptr);
}

std::vector<std::vector<float>> embed_all(const Model& model, const std::vector<std::vector<int32_t>>& calib) {
  std::vector<std::vector<float>> hidden;
  hidden.reserve(calib.size());
  for (const auto& seq : calib) {
    std::vector<float> h(seq.size() * static_cast<size_t>(model.hidden_size()));  // (L, hidden)
    model.embed(seq, h.data());
    hidden.push_back(std::move(h));
  }
  return hidden;
}

// QuantizeSettings::list_decode with 0 resolved by the model's width.
int list_decode_of(const QuantizeSettings& s) { return s.list_decode != 0 ? s.list_decode : default_list_decode(s.bits); }

// QuantizeSettings::damp, a negative value resolved by the model's width.
double damp_of(const QuantizeSettings& s) { return s.damp >= 0 ? s.damp : default_damp(s.bits); }

// The scale multipliers passed to the codec for a linear of `bits` bits.
std::vector<float> scale_multipliers(const QuantizeSettings& s, int bits) {
  const std::vector<double> m = s.scale_search.empty() ? default_scale_search(bits) : s.scale_search;
  return std::vector<float>(m.begin(), m.end());
}

// The widths that a target of `bits` may use.
std::pair<int, int> width_bounds(double bits) {
  const int lo = static_cast<int>(std::floor(bits + 1e-9));
  return {lo, std::min(4, lo + 1)};
}

void write_json_atomic(const fs::path& p, const std::string& text) {
  format::AtomicFile f(p.string());
  f.write(text.data(), text.size());
  f.commit();
}

nlohmann::json read_json_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw_io(p.string(), "cannot open");
  try {
    return nlohmann::json::parse(std::string(std::istreambuf_iterator<char>(in), {}));
  } catch (const nlohmann::json::exception& e) {
    throw_format(p.string(), fmt::format("invalid JSON: {}", e.what()));
  }
}

void fsync_dir(const fs::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

nlohmann::json report_json(const LinearReport& r) {
  return {{"name", r.name}, {"layer", r.layer}, {"bits", r.bits}, {"rows", r.rows}, {"cols", r.cols},
          {"proxy_loss", r.proxy_loss}, {"relative_weight_error", r.relative_weight_error},
          {"stored_bytes", r.stored_bytes}, {"warnings", r.warnings}};
}

LinearReport report_from_json(const nlohmann::json& j) {
  LinearReport r;
  r.name = j.at("name").get<std::string>();
  r.layer = j.at("layer").get<int>();
  r.bits = j.at("bits").get<int>();
  r.rows = j.at("rows").get<int>();
  r.cols = j.at("cols").get<int>();
  r.proxy_loss = j.at("proxy_loss").get<double>();
  r.relative_weight_error = j.at("relative_weight_error").get<double>();
  r.stored_bytes = j.at("stored_bytes").get<uint64_t>();
  r.warnings = j.value("warnings", std::string());
  return r;
}

std::vector<float> rms_norm_rows(const float* x, int tokens, int h, const std::vector<float>& w, float eps) {
  std::vector<float> out(static_cast<size_t>(tokens) * h);
  for (int t = 0; t < tokens; ++t) {
    const float* row = x + static_cast<size_t>(t) * h;
    double ss = 0;
    for (int i = 0; i < h; ++i) ss += static_cast<double>(row[i]) * row[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / h + eps));
    for (int i = 0; i < h; ++i) out[static_cast<size_t>(t) * h + i] = row[i] * inv * w[static_cast<size_t>(i)];
  }
  return out;
}

format::StTensorData f32_tensor(const std::string& name, const std::vector<float>& v) {
  format::StTensorData t;
  t.spec = {name, format::StDType::F32, {static_cast<int64_t>(v.size())}};
  t.bytes.resize(v.size() * 4);
  std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}

// The tuned gains of a finished end-to-end tuning, kept in OUT.partial/ so that a resumed run
// does not tune again.
void write_finetune(const std::string& path, const FinetuneResult& r) {
  std::vector<format::StTensorData> ts;
  // One vector per linear: tensors "<what>.<layer>.<kind>" (read_finetune's per_linear).
  auto per_linear = [&](const char* what, const std::vector<std::vector<float>>& v) {
    for (size_t i = 0; i < v.size(); ++i)
      if (!v[i].empty()) ts.push_back(f32_tensor(fmt::format("{}.{}.{}", what, i / 7, i % 7), v[i]));
  };
  per_linear("row_gain", r.row_gain);
  for (size_t l = 0; l < r.attn_norm.size(); ++l) {
    ts.push_back(f32_tensor(fmt::format("attn_norm.{}", l), r.attn_norm[l]));
    ts.push_back(f32_tensor(fmt::format("mlp_norm.{}", l), r.mlp_norm[l]));
  }
  ts.push_back(f32_tensor("final_norm", r.final_norm));
  per_linear("bias", r.bias);
  per_linear("stage_gain", r.stage_gain);
  const nlohmann::json meta = {{"kl_before", r.kl_before},   {"kl_after", r.kl_after},     {"epochs_run", r.epochs_run},
                               {"best_epoch", r.best_epoch}, {"seconds", r.seconds},       {"train_kl_first", r.train_kl_first}};
  format::write_safetensors_atomic(path, ts, {{"finetune", meta.dump()}});
}

FinetuneResult read_finetune(const std::string& path, const Model& model) {
  const format::SafetensorsReader f(path);
  const int L = model.num_layers();
  const int64_t h = model.hidden_size();
  FinetuneResult r;
  // One vector per linear (rows long), tensors "<what>.<layer>.<kind>".
  auto per_linear = [&](const char* what) {
    std::vector<std::vector<float>> v(static_cast<size_t>(L) * 7);
    for (int l = 0; l < L; ++l)
      for (LinearKind k : kAllLinearKinds) {
        const int64_t shape[] = {model.layer(l).linear(k).rows()};
        v[static_cast<size_t>(l) * 7 + static_cast<size_t>(k)] =
            format::copy_f32(f.get(fmt::format("{}.{}.{}", what, l, static_cast<int>(k)), format::StDType::F32, shape));
      }
    return v;
  };
  r.row_gain = per_linear("row_gain");
  const int64_t hs[] = {h};
  for (int l = 0; l < L; ++l) {
    r.attn_norm.push_back(format::copy_f32(f.get(fmt::format("attn_norm.{}", l), format::StDType::F32, hs)));
    r.mlp_norm.push_back(format::copy_f32(f.get(fmt::format("mlp_norm.{}", l), format::StDType::F32, hs)));
  }
  r.final_norm = format::copy_f32(f.get("final_norm", format::StDType::F32, hs));
  if (f.find("bias.0.0")) r.bias = per_linear("bias");
  // Later-stage gains: present for the linears with two stages (a linear without them keeps
  // an empty vector).
  bool any_stage = false;
  std::vector<std::vector<float>> sg(static_cast<size_t>(L) * 7);
  for (int l = 0; l < L; ++l)
    for (LinearKind k : kAllLinearKinds) {
      const std::string name = fmt::format("stage_gain.{}.{}", l, static_cast<int>(k));
      if (!f.find(name)) continue;
      const int64_t shape[] = {model.layer(l).linear(k).rows()};
      sg[static_cast<size_t>(l) * 7 + static_cast<size_t>(k)] = format::copy_f32(f.get(name, format::StDType::F32, shape));
      any_stage = true;
    }
  if (any_stage) r.stage_gain = std::move(sg);
  const auto meta = f.metadata().find("finetune");
  if (meta == f.metadata().end()) throw_format(path, "no 'finetune' metadata");
  const auto j = nlohmann::json::parse(meta->second);
  r.kl_before = j.at("kl_before");
  r.kl_after = j.at("kl_after");
  r.epochs_run = j.at("epochs_run");
  r.best_epoch = j.at("best_epoch");
  r.seconds = j.at("seconds");
  r.train_kl_first = j.at("train_kl_first");
  return r;
}

// The first `count` slots of a seeded Fisher-Yates shuffle of `slots` (splitmix64, so every
// platform draws alike). A longer draw begins with a shorter one's slots.
std::vector<int64_t> draw_slots(int64_t slots, int64_t count, uint64_t seed) {
  std::vector<int64_t> order(static_cast<size_t>(slots));
  std::iota(order.begin(), order.end(), 0);
  uint64_t state = seed;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t j = i + static_cast<int64_t>(splitmix64(state) % static_cast<uint64_t>(slots - i));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  order.resize(static_cast<size_t>(count));
  return order;
}

// Windows of slots order[from, to), in text order.
std::vector<std::vector<int32_t>> windows_of(std::span<const int32_t> tokens, std::vector<int64_t> order, int64_t from,
                                             int64_t to, int len) {
  std::sort(order.begin() + from, order.begin() + to);
  std::vector<std::vector<int32_t>> out;
  for (int64_t i = from; i < to; ++i) {
    const auto* p = tokens.data() + order[static_cast<size_t>(i)] * len;
    out.emplace_back(p, p + len);
  }
  return out;
}

}  // namespace

std::vector<double> default_scale_search(int bits) {
  if (bits < 2 || bits > 4) throw_invalid("default_scale_search: bits must be 2, 3 or 4, got " + std::to_string(bits));
  // Measured at 2 bits (docs/quantize.md): mean proxy loss 0.0286 -> 0.0276, perplexity -5 %,
  // for about 5 % more CPU time.
  return {0.85, 0.92, 1.0, 1.08, 1.16};
}

int default_calib_seqs(double bits) {
  // 32 -> 64 windows, with list decoding (docs/quantize.md): 3 bits 1.266x -> 1.205x the
  // reference over 8,192 tokens; 4 bits 1.056x -> 1.065x (no gain). 2 bits: 16 -> 32 measured.
  return bits >= 3 - 1e-9 && bits < 4 - 1e-9 ? 64 : 32;
}

double default_damp(double bits) {
  // Perplexity on brown-dev (docs/quantize.md): 3 bits, 100,000 tokens: 0.01 1.217x, 0.02 1.213x,
  // 0.03 1.207x, 0.05 1.199x the reference (0.1 worse than 0.05 over 8,192 and 20,480 tokens);
  // 2 bits, 8,192 tokens: 2.065x -> 1.931x; 2.5 bits: 1.605x -> 1.549x. Most of it regularises
  // the solves of the asymmetric and residual targets, which are on below 4 bits. 4 bits: 0.05
  // 1.064x against 1.056x over 8,192 tokens, so 0.01 stays there.
  return bits < 4 - 1e-9 ? 0.05 : 0.01;
}

int default_list_decode(double bits) {
  // 4 bits: proxy loss -8 %, perplexity 1.063x -> 1.056x over 8,192 tokens.
  return bits >= 3 - 1e-9 ? 8 : 1;
}

// ---- calibration set and bit allocation ------------------------------------------------------

std::vector<std::vector<int32_t>> make_calibration_set(std::span<const int32_t> tokens, int n, int len, uint64_t seed,
                                                       const std::string& origin) {
  if (n <= 0 || len <= 1) throw_invalid(fmt::format("calibration needs sequences >= 1 and length >= 2, got {} x {}", n, len));
  const int64_t need = static_cast<int64_t>(n) * len;
  const int64_t slots = static_cast<int64_t>(tokens.size()) / len;
  if (slots < n)
    throw_invalid(fmt::format("calibration text {} is too short: {} tokens, need {} sequences x {} tokens = {} "
                              "(use a longer text, or lower --calib-seqs / --seq-len)",
                              origin, tokens.size(), n, len, need));
  return windows_of(tokens, draw_slots(slots, n, seed), 0, n, len);
}

std::vector<std::vector<int32_t>> make_windows_after(std::span<const int32_t> tokens, int n, int v, int len, uint64_t seed) {
  if (n <= 0 || v <= 0 || len <= 1) throw_invalid(fmt::format("validation windows: bad sizes {} + {} x {}", n, v, len));
  const int64_t slots = static_cast<int64_t>(tokens.size()) / len;
  if (slots < static_cast<int64_t>(n) + v) return {};
  return windows_of(tokens, draw_slots(slots, static_cast<int64_t>(n) + v, seed), n, n + v, len);
}

std::vector<int> allocate_bits(const std::vector<SensitivityEntry>& entries, double bits) {
  const auto [lo, hi] = width_bounds(bits);
  std::vector<int> out(entries.size(), lo);
  if (hi == lo) return out;
  int64_t total = 0;
  for (const auto& e : entries) total += e.weights;
  // Budget of extra bits above `lo`; each raised linear spends (hi − lo)·weights of it.
  double budget = (bits - lo) * static_cast<double>(total);
  std::vector<size_t> order(entries.size());
  std::iota(order.begin(), order.end(), 0);
  auto gain = [&](size_t i) {
    return (entries[i].loss_lo - entries[i].loss_hi) / (static_cast<double>(hi - lo) * static_cast<double>(entries[i].weights));
  };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return gain(a) > gain(b); });
  for (size_t i : order) {
    const double cost = static_cast<double>(hi - lo) * static_cast<double>(entries[i].weights);
    if (cost <= budget + 1e-6 * static_cast<double>(total)) {
      out[i] = hi;
      budget -= cost;
    }
  }
  return out;
}

// ---- the pipeline ----------------------------------------------------------------------------

QuantizeResult quantize_model(Model& model, const std::vector<std::vector<int32_t>>& calibration,
                              const CheckpointSource& source, const std::string& out_dir,
                              const QuantizeSettings& s, const QuantizeProgress& progress,
                              const std::vector<std::vector<int32_t>>& validation,
                              const std::vector<std::vector<int32_t>>& extra) {
  const auto t_start = Clock::now();
  auto note = [&](const std::string& m) {
    if (progress.note) progress.note(m);
  };
  const ModelConfig& cfg = model.config();
  const int L = cfg.num_layers;
  if (!(s.bits >= 2 && s.bits <= 4)) throw_invalid(fmt::format("--bits {} is outside [2, 4]", s.bits));
  if (s.dtype_16bit != "float16" && s.dtype_16bit != "bfloat16" && s.dtype_16bit != "float32")
    throw_invalid(fmt::format("16-bit dtype '{}' (expected float16, bfloat16 or float32)", s.dtype_16bit));
  if (calibration.empty()) throw_invalid("quantize_model: empty calibration set");
  const int seq_len = static_cast<int>(calibration.front().size());
  for (const auto& c : calibration)
    if (static_cast<int>(c.size()) != seq_len) throw_invalid("quantize_model: calibration sequences differ in length");
  if (seq_len > cfg.max_context) throw_invalid(fmt::format("--seq-len {} exceeds the model's context {}", seq_len, cfg.max_context));

  // ---- checks before any work: shapes, finite weights, a writable output ----
  for (int i = 0; i < L; ++i)
    for (LinearKind k : kAllLinearKinds) {
      const Linear& lin = model.layer(i).linear(k);
      if (lin.is_quantized())
        throw_invalid(fmt::format("{} is already quantized ({})", linear_tensor_prefix(i, k), lin.describe()));
      if (lin.rows() % 8 || lin.cols() % 8)
        throw_unsupported(fmt::format("{} has shape {}x{}; GLQ needs both dimensions to be multiples of 8",
                                      linear_tensor_prefix(i, k), lin.rows(), lin.cols()));
    }
  // Every weight, one tensor in float32 at a time (the model may be larger than memory).
  quantize_weights::check_finite_weights(model);
  const bool head_tied = quantize_weights::head_is_embedding(model);
  const bool quantize_head = !s.keep_head_16bit;
  const bool ft = s.finetune_epochs > 0;
  if (ft && quantize_head)
    throw_unsupported("--finetune-epochs tunes against the 16-bit output head; it cannot be combined with --quantize-head");
  if (ft && !(s.finetune_lr > 0 && std::isfinite(s.finetune_lr)))
    throw_invalid(fmt::format("--finetune-lr must be positive, got {}", s.finetune_lr));
  if (ft && s.finetune_extra_only && extra.empty())
    throw_invalid("--finetune-extra-only needs extra tuning windows (--finetune-windows 0 leaves none)");
  if (ft && calibration.size() + validation.size() < 2)
    throw_invalid(fmt::format("--finetune-epochs needs at least 2 calibration windows, got {}", calibration.size()));
  for (const auto* set : {&validation, &extra})
    for (const auto& v : *set)
      if (static_cast<int>(v.size()) != seq_len) throw_invalid("quantize_model: tuning windows differ in length from the calibration's");
  if (quantize_head && (cfg.vocab_size % 8 || cfg.hidden_size % 8))
    throw_unsupported(fmt::format("lm_head {}x{} cannot be quantized: both dimensions must be multiples of 8", cfg.vocab_size, cfg.hidden_size));

  const fs::path out(out_dir);
  std::error_code ec;
  if (fs::exists(out, ec) && !s.overwrite) throw_invalid(fmt::format("output {} already exists (pass --overwrite to replace it)", out_dir));
  const fs::path partial = out_dir + ".partial";
  if (!s.resume) fs::remove_all(partial, ec);
  fs::create_directories(partial, ec);
  if (ec || !fs::is_directory(partial)) throw_io(partial.string(), fmt::format("cannot create the work directory: {}", ec.message()));

  // The settings a partial run must share to be resumed.
  uint64_t calib_hash = 0x5eed;
  for (const auto& seq : calibration)
    for (int32_t t : seq) {
      calib_hash ^= static_cast<uint64_t>(static_cast<uint32_t>(t));
      splitmix64(calib_hash);
    }
  nlohmann::json manifest = {{"source", source.fingerprint},       {"bits", s.bits},
                             {"seq_len", seq_len},                  {"sequences", calibration.size()},
                             {"calibration_hash", fmt::format("{:x}", calib_hash)},
                             {"seed", fmt::format("{:x}", s.seed)}, {"damp", damp_of(s)},
                             {"rht", s.rht},                        {"ldlq", s.ldlq},
                             {"keep_head_16bit", s.keep_head_16bit}, {"format_version", format::kGlqFormatVersion},
                             {"true_sequential", s.true_sequential}, {"asymmetric", s.asymmetric},
                             {"refit_scales", s.refit_scales}, {"residual_target", s.residual_target},
                             {"scale_search", s.scale_search}};
  if (list_decode_of(s) > 1) manifest["list_decode"] = list_decode_of(s);
  if (ft) manifest["finetune"] = {{"epochs", s.finetune_epochs}, {"lr", s.finetune_lr}, {"validation", validation.size()},
                                  {"extra", extra.size()}};
  if (ft && s.finetune_bias) manifest["finetune"]["bias"] = true;
  if (ft && s.finetune_stage_gains) manifest["finetune"]["stage_gains"] = true;
  if (ft && s.finetune_extra_only) manifest["finetune"]["extra_only"] = true;
  const fs::path manifest_path = partial / "manifest.json";
  if (fs::exists(manifest_path)) {
    const nlohmann::json old = read_json_file(manifest_path);
    if (old != manifest)
      throw_invalid(fmt::format("{} holds an interrupted run with other settings or another model:\n  {}\nnow:\n  {}\n"
                                "delete that directory (or pass --no-resume) to start over",
                                partial.string(), old.dump(), manifest.dump()));
    note(fmt::format("resuming the interrupted run in {}", partial.string()));
  } else {
    write_json_atomic(manifest_path, manifest.dump(2));  // also proves the folder is writable
  }

  // ---- bit allocation ----
  struct Job {
    int layer;
    LinearKind kind;
    std::string name;
    int rows, cols;
    int bits;
  };
  std::vector<Job> jobs;
  for (int i = 0; i < L; ++i)
    for (LinearKind k : kAllLinearKinds) {
      const Linear& lin = model.layer(i).linear(k);
      jobs.push_back({i, k, linear_tensor_prefix(i, k), lin.rows(), lin.cols(), 0});
    }
  const auto [lo, hi] = width_bounds(s.bits);
  const bool mixed = std::fabs(s.bits - std::round(s.bits)) > 1e-9;
  if (!mixed) {
    for (auto& j : jobs) j.bits = static_cast<int>(std::lround(s.bits));
  } else {
    const fs::path alloc_path = partial / "allocation.json";
    if (fs::exists(alloc_path)) {
      const nlohmann::json a = read_json_file(alloc_path);
      for (auto& j : jobs) j.bits = a.at("bits").at(j.name).get<int>();
      note("bit allocation read from " + alloc_path.string());
    } else {
      note(fmt::format("measuring sensitivity at {} and {} bits for a {:g}-bit average", lo, hi, s.bits));
      std::vector<SensitivityEntry> sens(jobs.size());
      auto hidden = embed_all(model, calibration);
      const auto t0 = Clock::now();
      for (int i = 0; i < L; ++i) {
        quantize_weights::LayerLinears in_file = quantize_weights::materialize_layer(model, i);
        std::map<LinearKind, HessianAccumulator> hs;
        std::vector<std::vector<float>> copy = hidden;
        run_layer_all(model, i, copy, seq_len, &hs);
        for (LinearKind k : kAllLinearKinds) {
          const Linear& lin = model.layer(i).linear(k);
          const std::vector<float> H = hs.at(hessian_owner(k)).mean();
          const std::span<const float> W(lin.dense_weight(), static_cast<size_t>(lin.rows()) * lin.cols());
          const double energy = output_energy(W.data(), lin.rows(), lin.cols(), H);
          SensitivityEntry& e = sens[static_cast<size_t>(i) * 7 + static_cast<size_t>(static_cast<int>(k))];
          e.weights = static_cast<int64_t>(lin.rows()) * lin.cols();
          for (int b : {lo, hi}) {
            codec::QuantizeOptions o;
            o.bits = b;
            o.seed = linear_seed(s.seed, i, k);
            o.use_rht = s.rht;
            o.use_ldlq = s.ldlq;
            o.damp = damp_of(s);
            o.refit_scales = s.refit_scales;
            o.scale_multipliers = scale_multipliers(s, o.bits);
            o.list_decode = list_decode_of(s);
            codec::QuantizeReport rep;
            codec::quantize_matrix(W, lin.rows(), lin.cols(), H, o, &rep);
            (b == lo ? e.loss_lo : e.loss_hi) = rep.proxy_loss * energy;
          }
        }
        quantize_weights::restore_layer(model, i, std::move(in_file));  // float32 weights released
        hidden.swap(copy);
        if (progress.step) {
          const double per = seconds_since(t0) / (i + 1);
          progress.step(i + 1, L, fmt::format("sensitivity, layer {}", i), per * (L - i - 1));
        }
      }
      const std::vector<int> widths = allocate_bits(sens, s.bits);
      nlohmann::json a = {{"target_bits", s.bits}, {"bits", nlohmann::json::object()}, {"loss", nlohmann::json::object()}};
      for (size_t j = 0; j < jobs.size(); ++j) {
        jobs[j].bits = widths[j];
        a["bits"][jobs[j].name] = widths[j];
        a["loss"][jobs[j].name] = {sens[j].loss_lo, sens[j].loss_hi};
      }
      write_json_atomic(alloc_path, a.dump(1));
    }
  }

  // ---- layer by layer ----
  QuantizeResult result;
  result.out_dir = out_dir;
  std::vector<LinearReport> reports;
  auto hidden = embed_all(model, calibration);
  // The unquantized model's hidden states, for the asymmetric targets.
  bool asym = false, residual = false;  // whether any linear uses the corrections
  for (const Job& j : jobs) {
    asym = asym || correction_strength(s.asymmetric, j.bits) != 0 || correction_strength(s.residual_target, j.bits) != 0;
    residual = residual || correction_strength(s.residual_target, j.bits) != 0;
  }
  // (Also the end-to-end tuning's teacher: the unquantized final hidden states.)
  std::vector<std::vector<float>> hidden_fp;
  if (asym || ft) hidden_fp = hidden;
  // The tuning's validation windows (never seen by the quantizer), through the unquantized layers.
  std::vector<std::vector<float>> hidden_val, hidden_extra;
  if (ft) {
    hidden_val = embed_all(model, validation);
    hidden_extra = embed_all(model, extra);
  }
  const std::vector<float> final_norm_fp = model.final_norm();
  // The tuning's validation and extra windows through layer i while it is still unquantized.
  auto run_tuning_windows = [&](int i) {
    if (!ft) return;
    run_layer_all(model, i, hidden_val, seq_len, nullptr);
    run_layer_all(model, i, hidden_extra, seq_len, nullptr);
  };
  const auto t_layers = Clock::now();
  int quantized_here = 0;
  double quantize_seconds = 0;
  for (int i = 0; i < L; ++i) {
    const auto t_layer = Clock::now();
    const fs::path layer_file = partial / fmt::format("layer-{:05d}.safetensors", i);
    DecoderLayer& layer = model.layer(i);
    // This layer's weights in float32 (read from the file for a mapped model) until its
    // quantized linears replace them.
    quantize_weights::materialize_layer(model, i);
    std::vector<LinearReport> layer_reports;
    if (fs::exists(layer_file)) {
      // Done by an earlier run: install its result and move on.
      if (asym || ft) run_layer_all(model, i, hidden_fp, seq_len, nullptr);  // still the unquantized layer
      run_tuning_windows(i);
      const format::SafetensorsReader f(layer_file.string());
      const auto meta = f.metadata().find("reports");
      if (meta == f.metadata().end()) throw_format(layer_file.string(), "no 'reports' metadata");
      const nlohmann::json reps = nlohmann::json::parse(meta->second);
      for (LinearKind k : kAllLinearKinds) {
        const Job& job = jobs[static_cast<size_t>(i) * 7 + static_cast<size_t>(static_cast<int>(k))];
        format::LinearQuantEntry e{job.name, job.bits, job.rows, job.cols, s.rht, linear_seed(s.seed, i, k), 0, 0};
        codec::QuantizedMatrix q = format::quantized_matrix_from_tensors(f, e);
        quantize_weights::install_quantized(layer.linear(k), std::move(q));
      }
      for (const auto& r : reps) layer_reports.push_back(report_from_json(r));
      ++result.resumed_layers;
      run_layer_all(model, i, hidden, seq_len, nullptr);
    } else {
      // The unquantized layer's inputs (and hidden_fp advanced through it) for the asymmetric
      // targets, before any of its linears is replaced.
      LayerInputs fp_inputs;
      if (asym) fp_inputs = run_layer_capture(model, i, hidden_fp, seq_len, residual);
      else if (ft) run_layer_all(model, i, hidden_fp, seq_len, nullptr);
      run_tuning_windows(i);
      std::vector<format::StTensorData> tensors;
      for (const auto& group : linear_groups(s.true_sequential)) {
        std::map<LinearKind, HessianAccumulator> hs;
        std::map<LinearKind, CrossAccumulator> ds, rs;
        collect_statistics(model, i, hidden, seq_len, group, asym ? &fp_inputs : nullptr, hs, ds, rs);
        for (LinearKind k : group) {
          const Job& job = jobs[static_cast<size_t>(i) * 7 + static_cast<size_t>(static_cast<int>(k))];
          Linear& lin = layer.linear(k);
          const std::vector<float> H = hs.at(hessian_owner(k)).mean();
          codec::QuantizeOptions o;
          o.bits = job.bits;
          o.seed = linear_seed(s.seed, i, k);
          o.use_rht = s.rht;
          o.use_ldlq = s.ldlq;
          o.damp = damp_of(s);
          o.refit_scales = s.refit_scales;
          o.scale_multipliers = scale_multipliers(s, o.bits);
          o.list_decode = list_decode_of(s);
          codec::QuantizeReport rep;
          std::span<const float> W(lin.dense_weight(), static_cast<size_t>(job.rows) * job.cols);
          codec::QuantizedMatrix q;
          try {
            std::vector<float> target;
            const double alpha = correction_strength(s.asymmetric, job.bits);
            const double beta = correction_strength(s.residual_target, job.bits);
            if (asym && (alpha != 0 || beta != 0)) {
              const auto r = rs.find(k);
              target = codec::asymmetric_target(W, job.rows, job.cols, H, ds.at(hessian_owner(k)).mean(), damp_of(s), alpha,
                                                r != rs.end() ? r->second.mean() : std::vector<float>(), beta);
              W = target;
            }
            q = codec::quantize_matrix(W, job.rows, job.cols, H, o, &rep);
          } catch (const Error& e) {
            throw Error(e.kind(), fmt::format("{}: {}", job.name, e.what()));
          }
          quantize_seconds += rep.seconds;
          LinearReport r{job.name, i, job.bits, job.rows, job.cols, rep.proxy_loss, rep.relative_weight_error, q.storage_bytes(),
                         rep.warnings};
          layer_reports.push_back(r);
          for (auto& t : format::quantized_matrix_tensors(job.name, q)) tensors.push_back(std::move(t));
          if (!lin.bias().empty())
            tensors.push_back(f32_tensor(job.name + ".bias", std::vector<float>(lin.bias().begin(), lin.bias().end())));
          // The next layers see this layer's quantized function, run by the CPU kernels; its
          // float32 weight is released.
          quantize_weights::install_quantized(lin, std::move(q));
        }
      }
      nlohmann::json reps = nlohmann::json::array();
      for (const auto& r : layer_reports) reps.push_back(report_json(r));
      format::write_safetensors_atomic(layer_file.string(), tensors, {{"reports", reps.dump()}});
      ++quantized_here;
      run_layer_all(model, i, hidden, seq_len, nullptr);
    }
    for (const auto& r : layer_reports) reports.push_back(r);
    if (progress.layer_done) {
      const double elapsed = seconds_since(t_layers);
      const double eta = quantized_here > 0 ? elapsed / (i + 1) * (L - i - 1) : -1;
      progress.layer_done(i, L, layer_reports, seconds_since(t_layer), eta);
    }
  }

  // ---- the output head ----
  const fs::path head_file = partial / "lm_head.safetensors";
  if (quantize_head) {
    const int bits = static_cast<int>(std::ceil(s.bits - 1e-9));
    LinearReport r;
    if (!fs::exists(head_file)) {
      HessianAccumulator acc;
      for (const auto& h : hidden) {
        const auto xn = rms_norm_rows(h.data(), seq_len, cfg.hidden_size, model.final_norm(), cfg.norm_eps);
        acc.add(xn.data(), seq_len, cfg.hidden_size);
      }
      codec::QuantizeOptions o;
      o.bits = bits;
      o.seed = linear_seed(s.seed, L, LinearKind::Q);
      o.use_rht = s.rht;
      o.use_ldlq = s.ldlq;
      o.damp = damp_of(s);
      o.refit_scales = s.refit_scales;
      o.scale_multipliers = scale_multipliers(s, o.bits);
      o.list_decode = list_decode_of(s);
      codec::QuantizeReport rep;
      const Linear head = quantize_weights::materialized_head(model);  // float32 while it is quantized
      const std::span<const float> W(head.dense_weight(), static_cast<size_t>(head.rows()) * head.cols());
      codec::QuantizedMatrix q = codec::quantize_matrix(W, head.rows(), head.cols(), acc.mean(), o, &rep);
      r = {"lm_head", -1, bits, head.rows(), head.cols(), rep.proxy_loss, rep.relative_weight_error, q.storage_bytes(), rep.warnings};
      format::write_safetensors_atomic(head_file.string(), format::quantized_matrix_tensors("lm_head", q),
                                       {{"reports", nlohmann::json::array({report_json(r)}).dump()}});
    } else {
      const format::SafetensorsReader f(head_file.string());
      r = report_from_json(nlohmann::json::parse(f.metadata().at("reports")).at(0));
    }
    reports.push_back(r);
    note(fmt::format("lm_head: {} bits, proxy loss {:.4g}, relative weight error {:.4g}", r.bits, r.proxy_loss, r.relative_weight_error));
  }

  // ---- end-to-end tuning of the row and norm gains ----
  if (ft) {
    hidden.clear();
    hidden.shrink_to_fit();
    const fs::path ft_file = partial / "finetune.safetensors";
    FinetuneResult fr;
    if (fs::exists(ft_file)) {
      fr = read_finetune(ft_file.string(), model);
      if (fr.bias.empty() == s.finetune_bias)
        throw_format(ft_file.string(), fmt::format("the tuning there was run {} biases; this run asks {} them",
                                                   fr.bias.empty() ? "without" : "with", s.finetune_bias ? "for" : "not for"));
      if (!fr.stage_gain.empty() && !s.finetune_stage_gains)
        throw_format(ft_file.string(), "the tuning there fitted a gain per stage; this run does not ask for them");
      note(fmt::format("finetune: resumed from {}", ft_file.string()));
    } else {
      FinetuneSettings fs_;
      fs_.epochs = s.finetune_epochs;
      fs_.lr = s.finetune_lr;
      fs_.seed = s.seed;
      fs_.bias = s.finetune_bias;
      fs_.stage_gains = s.finetune_stage_gains;
      FinetuneProgress fp;
      fp.note = progress.note;
      fp.step = progress.step;
      std::vector<std::vector<int32_t>> train;
      if (s.finetune_extra_only) {
        hidden_fp.clear();  // the calibration windows' teacher states: not trained on
      } else {
        train = calibration;
      }
      train.insert(train.end(), extra.begin(), extra.end());
      for (auto& h : hidden_extra) hidden_fp.push_back(std::move(h));
      fr = finetune(model, train, hidden_fp, validation, hidden_val, final_norm_fp, fs_, fp);
      write_finetune(ft_file.string(), fr);
    }
    apply_finetune(model, fr);
    result.finetune = {{"epochs", s.finetune_epochs},      {"lr", s.finetune_lr},
                       {"bias", s.finetune_bias},           {"stage_gains", s.finetune_stage_gains},
                       {"extra_windows", extra.size()},     {"validation_windows", validation.size()},
                       {"training_windows", (s.finetune_extra_only ? 0 : calibration.size()) + extra.size()},
                       {"epochs_run", fr.epochs_run},       {"best_epoch", fr.best_epoch},
                       {"heldout_kl_before", fr.kl_before}, {"heldout_kl_after", fr.kl_after}};
    result.finetune_seconds = fr.seconds;
    note(fmt::format("finetune: held-out KL {:.5f} -> {:.5f} nats/token (epoch {} of {} kept)", fr.kl_before, fr.kl_after,
                     fr.best_epoch, fr.epochs_run));
  }

  // ---- assemble the checkpoint in a temporary directory, then rename it into place ----
  note("writing the checkpoint");
  const fs::path tmp = fs::path(fmt::format("{}.tmp-{}", out_dir, static_cast<long>(::getpid())));
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) throw_io(tmp.string(), fmt::format("cannot create: {}", ec.message()));
  try {
    // Every tensor of model.safetensors: where its bytes come from.
    struct Item {
      format::StTensorSpec spec;
      std::function<std::vector<uint8_t>()> bytes;
    };
    std::vector<Item> items;
    std::vector<std::unique_ptr<format::SafetensorsReader>> parts;
    auto add_kept = [&](const std::string& name, quantize_weights::RowSource rows, std::vector<int64_t> shape) {
      // Scanned now to learn the dtype, converted when written, a block of rows at a time (an
      // embedding read from the file is never whole in float32).
      const int64_t n_rows = shape.front(), cols = format::StTensorSpec{name, format::StDType::F32, shape}.numel() / n_rows;
      const format::StDType dtype = quantize_weights::kept_dtype(s.dtype_16bit, rows, n_rows, cols);
      items.push_back({{name, dtype, shape}, [rows, dtype, n_rows, cols] { return quantize_weights::kept_bytes(dtype, rows, n_rows, cols); }});
    };
    auto in_memory = [](const std::vector<float>& v) { return quantize_weights::rows_in_memory(v.data(), 1); };
    const int64_t h = cfg.hidden_size;
    add_kept("model.embed_tokens.weight", quantize_weights::embedding_rows(model), {cfg.vocab_size, h});
    for (int i = 0; i < L; ++i) {
      add_kept(fmt::format("model.layers.{}.input_layernorm.weight", i), in_memory(model.layer(i).attn_norm), {h});
      add_kept(fmt::format("model.layers.{}.post_attention_layernorm.weight", i), in_memory(model.layer(i).mlp_norm), {h});
      parts.push_back(std::make_unique<format::SafetensorsReader>((partial / fmt::format("layer-{:05d}.safetensors", i)).string()));
    }
    add_kept("model.norm.weight", in_memory(model.final_norm()), {h});
    if (quantize_head) {
      parts.push_back(std::make_unique<format::SafetensorsReader>(head_file.string()));
    } else if (!head_tied) {
      add_kept("lm_head.weight", quantize_weights::head_rows(model), {cfg.vocab_size, h});
    }
    // Tuned stage scales (finetune) replace the stored ones.
    std::map<std::string, const std::vector<float>*> tuned;
    if (ft)
      for (const Job& j : jobs)
        if (const auto* q = model.layer(j.layer).linear(j.kind).quantized_weight())
          for (size_t st = 0; st < q->stages.size(); ++st)
            tuned[format::glq_scales_name(j.name, static_cast<int>(st))] = &q->stages[st].scales;
    // Tuned biases (finetune --finetune-bias) replace the stored ones or are added.
    std::map<std::string, std::vector<float>> tuned_bias;
    if (ft && s.finetune_bias)
      for (const Job& j : jobs) {
        const Linear& lin = model.layer(j.layer).linear(j.kind);
        tuned_bias[j.name + ".bias"].assign(lin.bias().begin(), lin.bias().end());
      }
    std::set<std::string> bias_written;
    // A float32 vector of the tuning as a tensor (its bytes taken when written).
    auto f32_item = [](const std::string& name, const std::vector<float>* v) {
      return Item{{name, format::StDType::F32, {static_cast<int64_t>(v->size())}}, [v] {
                    std::vector<uint8_t> b(v->size() * 4);
                    std::memcpy(b.data(), v->data(), b.size());
                    return b;
                  }};
    };
    for (const auto& p : parts)
      for (const auto& t : p->tensors()) {
        const format::StTensorView* view = &t;
        if (const auto b = tuned_bias.find(t.name); b != tuned_bias.end()) {
          items.push_back(f32_item(t.name, &b->second));
          bias_written.insert(t.name);
          continue;
        }
        const auto it = tuned.find(t.name);
        if (it != tuned.end()) {
          const std::vector<float>* v = it->second;
          if (t.dtype != format::StDType::F32 || t.shape != std::vector<int64_t>{static_cast<int64_t>(v->size())})
            throw Error(ErrorKind::Internal, fmt::format("{}: tuned scales do not match the stored tensor", t.name));
          items.push_back(f32_item(t.name, v));
        } else {
          items.push_back({{t.name, t.dtype, t.shape}, [view] { return format::copy_bytes(*view); }});
        }
      }
    for (const auto& [name, v] : tuned_bias)
      if (!bias_written.count(name)) items.push_back(f32_item(name, &v));
    // Widest elements first: with the header padded to 8 bytes, every tensor is then aligned
    // to its element size inside the file.
    std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
      return format::st_dtype_size(a.spec.dtype) > format::st_dtype_size(b.spec.dtype);
    });
    std::vector<format::StTensorSpec> specs;
    for (const auto& it : items) specs.push_back(it.spec);
    format::SafetensorsWriter w((tmp / "model.safetensors").string(), specs,
                                {{"format", "glq"}, {"glq_format_version", std::to_string(format::kGlqFormatVersion)}});
    for (const auto& it : items) w.write(it.spec.name, it.bytes());
    w.commit();
    result.file_bytes = w.file_bytes();

    format::QuantizationConfig qc;
    qc.target_bits = s.bits;
    qc.ldlq = s.ldlq;
    qc.rht = s.rht;
    qc.damp = damp_of(s);
    qc.seed = s.seed;
    qc.dtype_16bit = s.dtype_16bit;
    qc.head_quantized = quantize_head;
    qc.pack_version = codec::kGlqPackVersion;
    qc.calibration = {source.calib_name, static_cast<int>(calibration.size()), seq_len, s.seed};
    std::map<std::string, uint64_t> seeds;
    for (const Job& j : jobs) seeds[j.name] = linear_seed(s.seed, j.layer, j.kind);
    seeds["lm_head"] = linear_seed(s.seed, L, LinearKind::Q);
    for (const auto& r : reports)
      qc.linears.push_back({r.name, r.bits, r.rows, r.cols, s.rht, seeds.at(r.name), r.proxy_loss, r.relative_weight_error});
    nlohmann::ordered_json config = source.hf_config;
    config.erase("quantization_config");
    config["torch_dtype"] = s.dtype_16bit;
    config["quantization_config"] = format::to_json(qc);
    if (ft) config["quantization_config"]["finetune"] = result.finetune;
    write_json_atomic(tmp / "config.json", config.dump(2));
    if (source.write_tokenizer) source.write_tokenizer(tmp.string());
    fsync_dir(tmp);
    if (fs::exists(out)) {
      // --overwrite: the old checkpoint goes only once the new one is complete.
      const fs::path old = fs::path(fmt::format("{}.old-{}", out_dir, static_cast<long>(::getpid())));
      fs::rename(out, old);
      fs::rename(tmp, out);
      fs::remove_all(old, ec);
    } else {
      fs::rename(tmp, out);
    }
    fsync_dir(out.parent_path().empty() ? fs::path(".") : out.parent_path());
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(tmp, ec);
    throw_io(out_dir, fmt::format("writing the checkpoint failed: {} (work kept in {})", e.what(), partial.string()));
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  fs::remove_all(partial, ec);

  // ---- report ----
  result.linears = reports;
  for (const auto& r : reports) {
    result.linear_weights += static_cast<int64_t>(r.rows) * r.cols;
    result.linear_bytes += r.stored_bytes;
    if (ft && s.finetune_bias && r.layer >= 0) result.linear_bytes += 4 * static_cast<int64_t>(r.rows);  // the tuned bias
  }
  result.total_weights = cfg.parameter_count();
  result.linear_bpw = result.linear_weights ? 8.0 * static_cast<double>(result.linear_bytes) / static_cast<double>(result.linear_weights) : 0;
  result.file_bpw = result.total_weights ? 8.0 * static_cast<double>(result.file_bytes) / static_cast<double>(result.total_weights) : 0;
  result.seconds = seconds_since(t_start);
  (void)quantize_seconds;
  return result;
}

}  // namespace glq::model
