// The quantization pipeline end to end on a tiny random Llama: quantize, save, reload, compare
// the quantized model's logits with the same model built from the dequantized weights; mixed
// precision; resuming an interrupted run; and every error that must leave no checkpoint behind.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <fstream>

#include "glq/error.hpp"
#include "glq/format/safetensors_io.hpp"
#include "glq/model/glq_checkpoint.hpp"
#include "glq/model/loader.hpp"
#include "glq/model/quantize.hpp"
#include "quant/quant_test_util.hpp"

namespace glq::model {
namespace {

using quant_test::TempDir;
namespace fs = std::filesystem;

// Progress that interrupts a run when it starts writing the checkpoint (its tuning done and kept
// in OUT.partial/); `watch` sees every note before that.
QuantizeProgress stopped_at_assembly(std::function<void(const std::string&)> watch = {}) {
  QuantizeProgress p;
  p.note = [watch = std::move(watch)](const std::string& m) {
    if (watch) watch(m);
    if (m == "writing the checkpoint") throw std::runtime_error("interrupted");
  };
  return p;
}

QuantizeSettings small_settings(double bits) {
  QuantizeSettings s;
  s.bits = bits;
  s.calib_seqs = 5;
  s.seq_len = 37;
  return s;
}

struct Fixture {
  TempDir dir;
  std::string model, calib, out;
  explicit Fixture(quant_test::TinyModelOptions o = {}, size_t text_bytes = 4000) {
    model = dir.file("src");
    quant_test::write_tiny_model(model, o);
    calib = quant_test::write_text(dir.file("calib.txt"), quant_test::calibration_text(text_bytes));
    out = dir.file("out");
  }
};

std::vector<float> logits_of(const Model& m, const std::vector<int32_t>& tokens) {
  KVCache cache = m.make_cache(static_cast<int>(tokens.size()));
  std::vector<float> out(tokens.size() * static_cast<size_t>(m.config().vocab_size));
  m.forward(tokens, cache, out.data(), true);
  return out;
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, static_cast<double>(std::fabs(a[i] - b[i])));
  return m;
}

// Quantizes the tiny model with s and returns every linear's dequantized weights, in order.
std::vector<float> quantized_weights(const QuantizeSettings& s) {
  Fixture f;
  quantize_model_files(f.model, f.calib, f.out, s);
  auto m = load_model(f.out);
  std::vector<float> all;
  for (int i = 0; i < 2; ++i)
    for (LinearKind k : kAllLinearKinds) {
      const auto d = m->layer(i).linear(k).to_dense();
      all.insert(all.end(), d.begin(), d.end());
    }
  return all;
}

// quantized_weights of small_settings(bits) changed by set(settings): how the tests compare a
// default with explicit settings.
template <typename Set>
std::vector<float> quantized_weights_with(double bits, Set set) {
  QuantizeSettings s = small_settings(bits);
  set(s);
  return quantized_weights(s);
}

bool leftovers(const Fixture& f) {
  for (const auto& e : fs::directory_iterator(f.dir.path)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("out", 0) == 0) return true;
  }
  return false;
}

TEST(QuantizePipeline, CheckpointRunsLikeItsDequantizedWeights) {
  Fixture f;
  const QuantizeResult r = quantize_model_files(f.model, f.calib, f.out, small_settings(3));
  ASSERT_TRUE(is_glq_checkpoint(f.out));
  EXPECT_FALSE(fs::exists(f.out + ".partial")) << "the work directory goes once the checkpoint is complete";
  EXPECT_EQ(r.linears.size(), 14u);
  for (const auto& l : r.linears) {
    EXPECT_EQ(l.bits, 3);
    EXPECT_GT(l.relative_weight_error, 0.0);
    EXPECT_LT(l.relative_weight_error, 0.3) << l.name;
    EXPECT_GE(l.proxy_loss, 0.0);
  }
  // Every stored bit (docs/format.md): 3 bits of codes, two float32 scales per row, one sign bit
  // per row and per column.
  double bits = 0, weights = 0;
  for (const auto& l : r.linears) {
    bits += 3.0 * l.rows * l.cols + 2 * 32.0 * l.rows + l.rows + l.cols;
    weights += static_cast<double>(l.rows) * l.cols;
    EXPECT_EQ(l.stored_bytes * 8, 3ull * l.rows * l.cols + 64ull * l.rows + l.rows + l.cols) << l.name;
  }
  EXPECT_NEAR(r.linear_bpw, bits / weights, 1e-9);

  auto quantized = load_model(f.out);  // through load_model's GLQ detection
  for (int i = 0; i < 2; ++i)
    for (LinearKind k : kAllLinearKinds) ASSERT_TRUE(quantized->layer(i).linear(k).is_quantized());
  auto reference = load_model(f.out);
  for (int i = 0; i < 2; ++i)
    for (LinearKind k : kAllLinearKinds) {
      Linear& l = reference->layer(i).linear(k);
      l = Linear::dense(l.to_dense(), l.rows(), l.cols());
    }
  auto original = load_model(f.model);
  const std::vector<int32_t> tokens = quantized->tokenizer().encode("the quantized layer runs on eight numbers");
  ASSERT_GT(tokens.size(), 20u);
  const auto lq = logits_of(*quantized, tokens);
  const auto lr = logits_of(*reference, tokens);
  const auto lo = logits_of(*original, tokens);
  const double scale = max_abs(lr);
  // The kernels round activations to 16 bits (docs/cpu-kernels.md): far below the codec error.
  EXPECT_LT(max_diff(lq, lr), 2e-3 * scale) << "quantized kernels vs dequantized weights";
  const double err3 = max_diff(lr, lo);
  EXPECT_GT(err3, 1e-3 * scale) << "the weights did change";
  EXPECT_LT(err3, 0.5 * scale) << "3-bit logits stay near the original";

  // 16-bit tensors are stored as float16 and read back exactly so.
  const auto summary = summarize_glq_checkpoint(f.out);
  EXPECT_EQ(summary.quant.linears.size(), 14u);
  EXPECT_EQ(summary.quant.linears.front().name, "model.layers.0.self_attn.q_proj");
  EXPECT_EQ(summary.quant.linears.back().name, "model.layers.1.mlp.down_proj");
  EXPECT_EQ(summary.file_bytes, r.file_bytes);
  EXPECT_NEAR(summary.linear_bpw(), r.linear_bpw, 1e-9);
  EXPECT_EQ(summary.tokenizer_files.size(), 2u);

  // Fewer bits, larger error: the widths really differ.
  Fixture f2;
  quantize_model_files(f2.model, f2.calib, f2.out, small_settings(2));
  auto q2 = load_model(f2.out);
  EXPECT_GT(max_diff(logits_of(*q2, tokens), lo), err3);
}

TEST(QuantizePipeline, AsymmetricTargetIsThePlainTargetWhereInputsAgree) {
  // Layer 0's q/k/v read the embeddings, identical in the quantized and the unquantized model
  // (Δ = 0): their quantization is the same with and without the asymmetric target. Later
  // linears see the error of the ones before them, and the target changes them.
  std::vector<std::unique_ptr<Model>> models;
  std::vector<std::unique_ptr<Fixture>> fixtures;
  for (double asym : {0.0, 1.0}) {
    fixtures.push_back(std::make_unique<Fixture>());
    QuantizeSettings s = small_settings(2);
    s.asymmetric = asym;
    s.residual_target = asym;
    quantize_model_files(fixtures.back()->model, fixtures.back()->calib, fixtures.back()->out, s);
    models.push_back(load_model(fixtures.back()->out));
  }
  auto dense = [&](int m, int layer, LinearKind k) { return models[static_cast<size_t>(m)]->layer(layer).linear(k).to_dense(); };
  for (LinearKind k : {LinearKind::Q, LinearKind::K, LinearKind::V}) EXPECT_EQ(dense(0, 0, k), dense(1, 0, k)) << linear_kind_name(k);
  for (LinearKind k : {LinearKind::O, LinearKind::Down}) EXPECT_NE(dense(0, 0, k), dense(1, 0, k)) << linear_kind_name(k);
  for (LinearKind k : kAllLinearKinds) EXPECT_NE(dense(0, 1, k), dense(1, 1, k)) << linear_kind_name(k);
}

TEST(QuantizePipeline, CorrectionsDefaultToOnBelowFourBitsAndOffAtFour) {
  // The default strengths (-1) mean 1 below 4 bits and 0 at 4 bits: the same checkpoints as
  // the explicit settings.
  auto dense_of = [](double bits, double asym, double residual) {
    return quantized_weights_with(bits, [&](QuantizeSettings& s) {
      s.asymmetric = asym;
      s.residual_target = residual;
    });
  };
  EXPECT_EQ(dense_of(4, -1, -1), dense_of(4, 0, 0));
  EXPECT_EQ(dense_of(3, -1, -1), dense_of(3, 1, 1));
  EXPECT_NE(dense_of(3, -1, -1), dense_of(3, 0, 0));
}

TEST(QuantizePipeline, MixedPrecisionAveragesTheTarget) {
  Fixture f;
  const QuantizeResult r = quantize_model_files(f.model, f.calib, f.out, small_settings(2.5));
  int64_t bits_weights = 0, weights = 0;
  int twos = 0, threes = 0;
  for (const auto& l : r.linears) {
    bits_weights += static_cast<int64_t>(l.bits) * l.rows * l.cols;
    weights += static_cast<int64_t>(l.rows) * l.cols;
    twos += l.bits == 2;
    threes += l.bits == 3;
  }
  EXPECT_GT(twos, 0);
  EXPECT_GT(threes, 0);
  const double avg = static_cast<double>(bits_weights) / static_cast<double>(weights);
  EXPECT_LE(avg, 2.5 + 1e-9);
  EXPECT_GT(avg, 2.3);  // the greedy fill leaves at most the last linears' worth unused
  const auto s = summarize_glq_checkpoint(f.out);
  for (size_t i = 0; i < r.linears.size(); ++i) EXPECT_EQ(s.quant.linears[i].bits, r.linears[i].bits);
  auto m = load_model(f.out);
  EXPECT_TRUE(m->layer(1).down.is_quantized());
}

TEST(QuantizePipeline, AllocationSpendsTheBudgetWhereLossDropsMost) {
  // Three linears of 100 weights: the budget of 2.5 bits buys one upgrade (100 extra bits of 150).
  std::vector<SensitivityEntry> e = {{100, 5.0, 4.0}, {100, 9.0, 1.0}, {100, 3.0, 2.9}};
  EXPECT_EQ(allocate_bits(e, 2.5), (std::vector<int>{2, 3, 2}));
  EXPECT_EQ(allocate_bits(e, 3.0), (std::vector<int>{3, 3, 3}));
  // A large linear that does not fit is skipped for smaller ones that do.
  std::vector<SensitivityEntry> g = {{1000, 100.0, 0.0}, {100, 2.0, 1.0}, {100, 2.0, 1.5}};
  EXPECT_EQ(allocate_bits(g, 2.1), (std::vector<int>{2, 3, 2}));
}

TEST(QuantizePipeline, CalibrationSetIsSeededAndChecked) {
  std::vector<int32_t> tokens(1000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(i);
  const auto a = make_calibration_set(tokens, 7, 111, 3, "t");
  const auto b = make_calibration_set(tokens, 7, 111, 3, "t");
  const auto c = make_calibration_set(tokens, 7, 111, 4, "t");
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].size(), 111u);
    EXPECT_EQ(a[i][0] % 111, 0) << "windows sit on slot boundaries";
    for (size_t t = 1; t < a[i].size(); ++t) EXPECT_EQ(a[i][t], a[i][t - 1] + 1);
    if (i) {
      EXPECT_GT(a[i][0], a[i - 1][0]) << "distinct, sorted windows";
    }
  }
  try {
    make_calibration_set(tokens, 10, 111, 3, "short.txt");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("short.txt is too short: 1000 tokens"), std::string::npos) << e.what();
  }
}

TEST(QuantizePipeline, InterruptedRunResumesAndMatchesAnUninterruptedOne) {
  Fixture f({.layers = 3});
  QuantizeProgress stop_after_first;
  stop_after_first.layer_done = [](int layer, int, const std::vector<LinearReport>&, double, double) {
    if (layer == 0) throw std::runtime_error("interrupted");
  };
  EXPECT_THROW(quantize_model_files(f.model, f.calib, f.out, small_settings(2), stop_after_first), std::runtime_error);
  EXPECT_FALSE(fs::exists(f.out)) << "no checkpoint until it is complete";
  EXPECT_TRUE(fs::exists(f.out + ".partial/layer-00000.safetensors"));
  // Other settings do not silently reuse the partial work.
  EXPECT_THROW(quantize_model_files(f.model, f.calib, f.out, small_settings(3)), Error);
  const QuantizeResult resumed = quantize_model_files(f.model, f.calib, f.out, small_settings(2));
  EXPECT_EQ(resumed.resumed_layers, 1);

  const std::string clean = f.dir.file("clean");
  const QuantizeResult fresh = quantize_model_files(f.model, f.calib, clean, small_settings(2));
  EXPECT_EQ(fresh.resumed_layers, 0);
  EXPECT_EQ(model::test::read_bytes(f.out + "/model.safetensors"), model::test::read_bytes(clean + "/model.safetensors"));
  ASSERT_EQ(resumed.linears.size(), fresh.linears.size());
  for (size_t i = 0; i < fresh.linears.size(); ++i) EXPECT_EQ(resumed.linears[i].proxy_loss, fresh.linears[i].proxy_loss);

  // An existing output is not replaced without --overwrite; with it, it is.
  EXPECT_THROW(quantize_model_files(f.model, f.calib, f.out, small_settings(2)), Error);
  QuantizeSettings over = small_settings(4);
  over.overwrite = true;
  quantize_model_files(f.model, f.calib, f.out, over);
  EXPECT_EQ(summarize_glq_checkpoint(f.out).quant.linears[0].bits, 4);
}

// End-to-end tuning inside the pipeline: the held-out KL does not rise, the checkpoint keeps the
// codes of the untuned run and stores tuned scales and norms that load and run, the config
// records the tuning, a run interrupted after tuning resumes without tuning again, and a
// quantized head is refused.
TEST(QuantizePipeline, ValidationWindowsAreDisjointFromTheCalibration) {
  std::vector<int32_t> tokens(1000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(i);
  const auto calib = make_calibration_set(tokens, 12, 10, 42, "t");
  const auto val = make_windows_after(tokens, 12, 5, 10, 42);
  ASSERT_EQ(val.size(), 5u);
  EXPECT_EQ(val, make_windows_after(tokens, 12, 5, 10, 42)) << "seeded";
  for (const auto& v : val) {
    ASSERT_EQ(v.size(), 10u);
    EXPECT_EQ(v[0] % 10, 0) << "whole slots";
    for (const auto& c : calib) EXPECT_NE(v[0], c[0]) << "a validation window is also a calibration window";
  }
  EXPECT_TRUE(make_windows_after(tokens, 98, 3, 10, 42).empty()) << "100 slots hold 98 + 2, not 98 + 3";
}

// Settings of the tuning tests: 8 calibration windows and 4 extra ones.
QuantizeSettings tuning_settings(int bits, int epochs, double lr) {
  QuantizeSettings s = small_settings(bits);
  s.calib_seqs = 8;
  s.finetune_epochs = epochs;
  s.finetune_lr = lr;
  s.finetune_windows = 4;
  return s;
}

TEST(QuantizePipeline, FinetuneTunesScalesAndNormsAndResumes) {
  Fixture f({.layers = 2}, 12000);
  QuantizeSettings s = small_settings(2);
  s.calib_seqs = 8;
  const std::string plain = f.dir.file("plain");
  quantize_model_files(f.model, f.calib, plain, s);
  s.finetune_epochs = 3;
  s.finetune_lr = 0.01;
  s.finetune_windows = 4;
  bool tuned = false, validated = false;
  const QuantizeProgress stop_at_assembly = stopped_at_assembly([&](const std::string& m) {
    if (m.rfind("finetune: held-out KL", 0) == 0) tuned = true;
    if (m.find("12 training and 2 validation windows; held-out KL") != std::string::npos) validated = true;
  });
  EXPECT_THROW(quantize_model_files(f.model, f.calib, f.out, s, stop_at_assembly), std::runtime_error);
  EXPECT_TRUE(tuned);
  EXPECT_TRUE(validated) << "8 calibration + 4 extra training windows, 2 validation windows beyond them";
  ASSERT_TRUE(fs::exists(f.out + ".partial/finetune.safetensors"));
  bool retuned = false, resumed = false;
  QuantizeProgress watch;
  watch.note = [&](const std::string& m) {
    if (m.rfind("finetune: resumed", 0) == 0) resumed = true;
    if (m.rfind("finetune epoch", 0) == 0 || m.find("windows; held-out KL") != std::string::npos) retuned = true;
  };
  const QuantizeResult r = quantize_model_files(f.model, f.calib, f.out, s, watch);
  EXPECT_TRUE(resumed);
  EXPECT_FALSE(retuned) << "the resumed run reuses the finished tuning";
  ASSERT_FALSE(r.finetune.is_null());
  EXPECT_GT(r.finetune["heldout_kl_before"].get<double>(), 0.0);
  EXPECT_LE(r.finetune["heldout_kl_after"].get<double>(), r.finetune["heldout_kl_before"].get<double>());
  EXPECT_GE(r.finetune["epochs_run"].get<int>(), 1);

  std::ifstream cfg_in(f.out + "/config.json");
  const auto cfg = nlohmann::json::parse(cfg_in);
  ASSERT_TRUE(cfg["quantization_config"].contains("finetune"));
  EXPECT_EQ(cfg["quantization_config"]["finetune"]["epochs"], 3);
  EXPECT_EQ(cfg["quantization_config"]["finetune"]["heldout_kl_after"].get<double>(), r.finetune["heldout_kl_after"].get<double>());
  EXPECT_EQ(cfg["quantization_config"]["finetune"]["extra_windows"], 4);

  auto tuned_model = load_model(f.out);
  auto plain_model = load_model(plain);
  bool scales_differ = false, norms_differ = false;
  for (int i = 0; i < 2; ++i) {
    for (LinearKind k : kAllLinearKinds) {
      const auto* a = tuned_model->layer(i).linear(k).quantized_weight();
      const auto* b = plain_model->layer(i).linear(k).quantized_weight();
      ASSERT_TRUE(a && b);
      for (size_t st = 0; st < a->stages.size(); ++st) {
        EXPECT_EQ(a->stages[st].codes, b->stages[st].codes) << "tuning keeps the codes";
        scales_differ = scales_differ || a->stages[st].scales != b->stages[st].scales;
      }
    }
    norms_differ = norms_differ || tuned_model->layer(i).attn_norm != plain_model->layer(i).attn_norm;
  }
  EXPECT_TRUE(scales_differ);
  EXPECT_TRUE(norms_differ);
  const std::vector<int32_t> tokens = tuned_model->tokenizer().encode("the tuned model still runs on eight numbers");
  const auto lt = logits_of(*tuned_model, tokens);
  for (float v : lt) ASSERT_TRUE(std::isfinite(v));

  QuantizeSettings head = s;
  head.keep_head_16bit = false;
  EXPECT_THROW(quantize_model_files(f.model, f.calib, f.dir.file("head"), head), Error);
}

// --finetune-extra-only: the tuning trains on the extra windows alone (the calibration windows
// are left out of its training set, and the setting is part of what a resumed run must share).
TEST(QuantizePipeline, FinetuneExtraOnlyLeavesTheCalibrationWindowsOut) {
  Fixture f({.layers = 2}, 12000);
  QuantizeSettings s = tuning_settings(2, 1, 0.01);
  s.finetune_extra_only = true;
  bool four = false;
  QuantizeProgress watch;
  watch.note = [&](const std::string& m) {
    if (m.find("4 training and 2 validation windows; held-out KL") != std::string::npos) four = true;
  };
  const QuantizeResult r = quantize_model_files(f.model, f.calib, f.out, s, watch);
  EXPECT_TRUE(four) << "4 extra training windows, the 8 calibration windows left out";
  ASSERT_FALSE(r.finetune.is_null());
  EXPECT_EQ(r.finetune["training_windows"], 4);
  EXPECT_EQ(r.finetune["extra_windows"], 4);

  s.finetune_windows = 0;
  s.overwrite = true;
  try {
    quantize_model_files(f.model, f.calib, f.dir.file("none"), s);
    ADD_FAILURE() << "tuning on no windows was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("--finetune-extra-only"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(f.dir.file("none")));
  EXPECT_FALSE(fs::exists(f.dir.file("none") + ".partial")) << "refused before any work folder";
}

// --finetune-bias: every quantized linear of the checkpoint carries its tuned bias (counted in the
// linears' bytes), the loaded model runs with it, and a tuning with biases is not resumed by a run
// without (nor the reverse).
TEST(QuantizePipeline, FinetuneBiasesAreStoredAndLoaded) {
  Fixture f({.layers = 2}, 12000);
  QuantizeSettings s = tuning_settings(2, 2, 0.002);
  const std::string gains = f.dir.file("gains");
  const QuantizeResult g = quantize_model_files(f.model, f.calib, gains, s);
  s.finetune_bias = true;
  EXPECT_THROW(quantize_model_files(f.model, f.calib, f.out, s, stopped_at_assembly()), std::runtime_error);
  QuantizeSettings without = s;
  without.finetune_bias = false;
  EXPECT_THROW(quantize_model_files(f.model, f.calib, f.out, without), Error) << "a different tuning is not resumed";
  const QuantizeResult r = quantize_model_files(f.model, f.calib, f.out, s);
  ASSERT_FALSE(r.finetune.is_null());
  EXPECT_EQ(r.finetune["bias"], true);
  ASSERT_GE(r.finetune["best_epoch"].get<int>(), 1) << "the tuning with biases did not improve: nothing to check";
  EXPECT_EQ(g.finetune["bias"], false);
  int64_t rows = 0;
  for (const auto& l : r.linears) rows += l.layer >= 0 ? l.rows : 0;
  EXPECT_EQ(r.linear_bytes, g.linear_bytes + uint64_t(4 * rows)) << "the biases are counted in the linears' bytes";

  std::ifstream cfg_in(f.out + "/config.json");
  const auto cfg = nlohmann::json::parse(cfg_in);
  EXPECT_EQ(cfg["quantization_config"]["finetune"]["bias"], true);
  auto tuned = load_model(f.out);
  auto plain = load_model(gains);
  bool moved = false;
  for (int i = 0; i < 2; ++i)
    for (LinearKind k : kAllLinearKinds) {
      const auto& lin = tuned->layer(i).linear(k);
      ASSERT_TRUE(lin.is_quantized());
      ASSERT_EQ(int(lin.bias().size()), lin.rows()) << linear_tensor_prefix(i, k);
      EXPECT_TRUE(plain->layer(i).linear(k).bias().empty());
      for (float v : lin.bias()) {
        ASSERT_TRUE(std::isfinite(v));
        moved = moved || v != 0.0f;
      }
    }
  EXPECT_TRUE(moved) << "no bias was tuned";
  EXPECT_FALSE(r.finetune["stage_gains"].get<bool>());
  const std::vector<int32_t> tokens = tuned->tokenizer().encode("biases are part of the tuned model");
  const auto lt = logits_of(*tuned, tokens), lp = logits_of(*plain, tokens);
  double diff = 0;
  for (size_t i = 0; i < lt.size(); ++i) {
    ASSERT_TRUE(std::isfinite(lt[i]));
    diff = std::max(diff, double(std::abs(lt[i] - lp[i])));
  }
  EXPECT_GT(diff, 1e-4) << "the biases change the model";
}

// --finetune-stage-gains at 3 bits: the two stages of a row get gains of their own (their scales'
// ratio moves), the tuning is kept in OUT.partial/ and resumed with them, and not by a run without.
TEST(QuantizePipeline, FinetuneStageGainsScaleEachStage) {
  Fixture f({.layers = 2}, 12000);
  QuantizeSettings s = small_settings(3);
  s.calib_seqs = 8;
  const std::string plain = f.dir.file("plain3");
  quantize_model_files(f.model, f.calib, plain, s);
  s.finetune_epochs = 2;
  s.finetune_lr = 0.002;
  s.finetune_windows = 4;
  s.finetune_stage_gains = true;
  EXPECT_THROW(quantize_model_files(f.model, f.calib, f.out, s, stopped_at_assembly()), std::runtime_error);
  QuantizeSettings without = s;
  without.finetune_stage_gains = false;
  EXPECT_THROW(quantize_model_files(f.model, f.calib, f.out, without), Error) << "a different tuning is not resumed";
  bool resumed = false;
  QuantizeProgress watch;
  watch.note = [&](const std::string& m) {
    if (m.rfind("finetune: resumed", 0) == 0) resumed = true;
  };
  const QuantizeResult r = quantize_model_files(f.model, f.calib, f.out, s, watch);
  EXPECT_TRUE(resumed);
  ASSERT_FALSE(r.finetune.is_null());
  EXPECT_TRUE(r.finetune["stage_gains"].get<bool>());
  ASSERT_GE(r.finetune["best_epoch"].get<int>(), 1) << "the tuning did not improve: nothing to check";
  auto tuned = load_model(f.out);
  auto base = load_model(plain);
  double moved = 0;
  for (int i = 0; i < 2; ++i)
    for (LinearKind k : kAllLinearKinds) {
      const auto* a = tuned->layer(i).linear(k).quantized_weight();
      const auto* b = base->layer(i).linear(k).quantized_weight();
      ASSERT_TRUE(a && b);
      ASSERT_EQ(a->stages.size(), 2u);
      for (int row = 0; row < a->rows; ++row) {
        const double ra = a->stages[1].scales[size_t(row)] / a->stages[0].scales[size_t(row)];
        const double rb = b->stages[1].scales[size_t(row)] / b->stages[0].scales[size_t(row)];
        moved = std::max(moved, std::abs(ra / rb - 1));
      }
    }
  EXPECT_GT(moved, 1e-3) << "no row's stages were scaled apart";
}

void expect_error(const std::function<void()>& fn, ErrorKind kind, const std::string& needle) {
  try {
    fn();
    FAIL() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(QuantizeErrors, MissingTokenizer) {
  Fixture f({.tokenizer = false});
  expect_error([&] { quantize_model_files(f.model, f.calib, f.out, small_settings(2)); }, ErrorKind::Io, "missing tokenizer");
  EXPECT_FALSE(leftovers(f));
}

TEST(QuantizePipeline, CalibrationSizeAndListDecodingDefaultByWidth) {
  // 0 means: 64 windows at 3 bits (3 <= B < 4) and 32 otherwise; 8 list-decoding candidates from
  // 3 bits up and none below, by the requested average (a 2.5-bit mixed model keeps both off).
  EXPECT_EQ(default_calib_seqs(2), 32);
  EXPECT_EQ(default_calib_seqs(2.5), 32);
  EXPECT_EQ(default_calib_seqs(3), 64);
  EXPECT_EQ(default_calib_seqs(3.5), 64);
  EXPECT_EQ(default_calib_seqs(4), 32);
  EXPECT_EQ(default_list_decode(2), 1);
  EXPECT_EQ(default_list_decode(2.75), 1);
  EXPECT_EQ(default_list_decode(3), 8);
  EXPECT_EQ(default_list_decode(4), 8);
  EXPECT_EQ(QuantizeSettings{}.calib_seqs, 0);
  EXPECT_EQ(QuantizeSettings{}.list_decode, 0);

  // The default is the same checkpoint as the explicit setting, and list decoding changes it.
  auto dense_of = [](double bits, int list_decode) {
    return quantized_weights_with(bits, [&](QuantizeSettings& s) { s.list_decode = list_decode; });
  };
  const auto d4 = dense_of(4, 0);
  EXPECT_EQ(d4, dense_of(4, 8));
  EXPECT_NE(d4, dense_of(4, 1));
  EXPECT_EQ(dense_of(2, 0), dense_of(2, 1));

  // Windows of 37 tokens from a text of about 1,800 bytes (one token per byte): 0 asks for 64
  // windows (2,368 tokens) at 3 bits, which it does not hold.
  Fixture f({}, 1800);
  QuantizeSettings s = small_settings(3);
  s.calib_seqs = 0;
  expect_error([&] { quantize_model_files(f.model, f.calib, f.out, s); }, ErrorKind::InvalidArgument,
               "need 64 sequences x 37 tokens");
  EXPECT_FALSE(leftovers(f));
}

TEST(QuantizePipeline, DampingDefaultByWidth) {
  // Negative means: 0.05 below 4 bits and 0.01 at 4 bits, by the requested average.
  EXPECT_EQ(default_damp(2), 0.05);
  EXPECT_EQ(default_damp(2.5), 0.05);
  EXPECT_EQ(default_damp(3), 0.05);
  EXPECT_EQ(default_damp(3.5), 0.05);
  EXPECT_EQ(default_damp(4), 0.01);
  EXPECT_LT(QuantizeSettings{}.damp, 0);
  // The default is the same checkpoint as the explicit value, and another value changes it.
  auto dense_of = [](double bits, double damp) {
    return quantized_weights_with(bits, [&](QuantizeSettings& s) { s.damp = damp; });
  };
  const auto d3 = dense_of(3, -1);
  EXPECT_EQ(d3, dense_of(3, 0.05));
  EXPECT_NE(d3, dense_of(3, 0.01));
  EXPECT_EQ(dense_of(4, -1), dense_of(4, 0.01));
}

TEST(QuantizeErrors, CalibrationTooShort) {
  Fixture f({}, 100);
  expect_error([&] { quantize_model_files(f.model, f.calib, f.out, small_settings(2)); }, ErrorKind::InvalidArgument,
               "too short");
  EXPECT_FALSE(leftovers(f));
  expect_error([&] { quantize_model_files(f.model, f.dir.file("absent.txt"), f.out, small_settings(2)); }, ErrorKind::Io,
               "absent.txt");
}

TEST(QuantizeErrors, NanWeights) {
  Fixture f({.nan_weight = true});
  expect_error([&] { quantize_model_files(f.model, f.calib, f.out, small_settings(2)); }, ErrorKind::Numerical,
               "model.layers.0.mlp.down_proj.weight");
  EXPECT_FALSE(leftovers(f));
}

TEST(QuantizeErrors, UnwritableOutputFolder) {
  Fixture f;
  expect_error([&] { quantize_model_files(f.model, f.calib, f.dir.file("no/such/dir/out"), small_settings(2)); },
               ErrorKind::Io, "does not exist");
  // A file where the folder should be.
  quant_test::write_text(f.dir.file("plain"), "x");
  expect_error([&] { quantize_model_files(f.model, f.calib, f.dir.file("plain/out"), small_settings(2)); }, ErrorKind::Io,
               "plain");
  if (::geteuid() != 0) {  // permissions do not bind root
    fs::create_directories(f.dir.file("ro"));
    fs::permissions(f.dir.file("ro"), fs::perms::owner_read | fs::perms::owner_exec);
    expect_error([&] { quantize_model_files(f.model, f.calib, f.dir.file("ro/out"), small_settings(2)); }, ErrorKind::Io,
                 "not writable");
    fs::permissions(f.dir.file("ro"), fs::perms::owner_all);
  }
}

// The disk fills up while the checkpoint is written (a file-size limit fails write() with EFBIG
// like ENOSPC would): a clear Io error, no OUT, no temporary directory; the finished layers stay
// in OUT.partial so that the run resumes once there is room.
TEST(QuantizeErrors, DiskFullLeavesNoCheckpoint) {
  Fixture f;
  struct rlimit old {};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  auto handler = signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old;
  lim.rlim_cur = 40000;  // a layer file fits, the 64 KiB float16 embedding does not
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
  bool threw = false;
  try {
    quantize_model_files(f.model, f.calib, f.out, small_settings(2));
  } catch (const Error& e) {
    threw = true;
    EXPECT_EQ(e.kind(), ErrorKind::Io) << e.what();
    EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos) << e.what();
  }
  setrlimit(RLIMIT_FSIZE, &old);
  signal(SIGXFSZ, handler);
  ASSERT_TRUE(threw);
  EXPECT_FALSE(fs::exists(f.out));
  for (const auto& e : fs::directory_iterator(f.dir.path))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  EXPECT_TRUE(fs::exists(f.out + ".partial/layer-00001.safetensors"));
  const QuantizeResult r = quantize_model_files(f.model, f.calib, f.out, small_settings(2));
  EXPECT_EQ(r.resumed_layers, 2);
  EXPECT_TRUE(is_glq_checkpoint(f.out));
}

TEST(GlqCheckpoint, VersionAndTensorsAreChecked) {
  Fixture f;
  quantize_model_files(f.model, f.calib, f.out, small_settings(2));
  const std::string cfg_path = f.out + "/config.json";
  const std::string original = [&] {
    std::ifstream in(cfg_path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  nlohmann::json cfg = nlohmann::json::parse(original);
  cfg["quantization_config"]["format_version"] = 99;
  std::ofstream(cfg_path) << cfg.dump();
  expect_error([&] { load_model(f.out); }, ErrorKind::Format, "format_version 99");
  // A linear whose listed width disagrees with its stored codes.
  cfg = nlohmann::json::parse(original);
  cfg["quantization_config"]["linears"][3]["bits"] = 4;
  std::ofstream(cfg_path) << cfg.dump();
  expect_error([&] { load_model(f.out); }, ErrorKind::Format, "model.layers.0.self_attn.o_proj.glq_codes.1");
  std::ofstream(cfg_path) << original;
  EXPECT_NO_THROW(load_model(f.out));
  EXPECT_THROW(quantize_model_files(f.out, f.calib, f.dir.file("again"), small_settings(2)), Error) << "already quantized";
}

TEST(GlqCheckpoint, HeadCanBeQuantized) {
  Fixture f;
  QuantizeSettings s = small_settings(4);
  s.keep_head_16bit = false;
  s.dtype_16bit = "bfloat16";
  const QuantizeResult r = quantize_model_files(f.model, f.calib, f.out, s);
  EXPECT_EQ(r.linears.back().name, "lm_head");
  auto m = load_model(f.out);
  EXPECT_TRUE(m->lm_head().is_quantized());
  const auto sum = summarize_glq_checkpoint(f.out);
  EXPECT_TRUE(sum.quant.head_quantized);
  EXPECT_EQ(sum.quant.dtype_16bit, "bfloat16");
  const format::SafetensorsReader st(f.out + "/model.safetensors");
  EXPECT_EQ(st.find("model.embed_tokens.weight")->dtype, format::StDType::BF16);
}

}  // namespace
}  // namespace glq::model
