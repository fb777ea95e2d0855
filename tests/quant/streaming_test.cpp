// The pipeline streams the source model: at most one layer's linears are ever in float32 (counted
// by the mapped loader), in every mode (fixed and mixed widths, resumed runs, a quantized head);
// finished layers hold their quantized matrices, whose outputs are those of the dequantized
// weights within the CPU kernels' activation rounding.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "glq/error.hpp"
#include "glq/model/glq_checkpoint.hpp"
#include "glq/model/loader.hpp"
#include "glq/model/quantize.hpp"
#include "quant/quant_test_util.hpp"

namespace glq::model {
namespace {

using quant_test::TempDir;
namespace fs = std::filesystem;

QuantizeSettings settings(double bits) {
  QuantizeSettings s;
  s.bits = bits;
  s.calib_seqs = 4;
  s.seq_len = 29;
  return s;
}

struct Source {
  TempDir dir;
  std::string model, calib;
  explicit Source(int layers) {
    model = dir.file("src");
    quant_test::write_tiny_model(model, {.layers = layers});
    calib = quant_test::write_text(dir.file("calib.txt"), quant_test::calibration_text(3000));
  }
};

// Float32 bytes of one layer's seven linears.
int64_t layer_bytes(const ModelConfig& c) {
  const int64_t h = c.hidden_size, f = c.intermediate_size;
  return 4 * (c.q_dim() * h + 2 * c.kv_dim() * h + h * c.q_dim() + 3 * f * h);
}

// Peak float32 bytes of source weights held while `fn` runs.
template <typename Fn>
int64_t peak_materialized(Fn fn) {
  EXPECT_EQ(materialized_weight_bytes().live, 0);
  reset_materialized_peak();
  fn();
  EXPECT_EQ(materialized_weight_bytes().live, 0) << "every materialized weight was released";
  return materialized_weight_bytes().peak;
}

TEST(StreamingQuantize, HoldsOneLayerOfFloat32WeightsAtATime) {
  Source src(4);
  const int64_t one_layer = layer_bytes(quant_test::tiny_config());
  // Fixed width.
  EXPECT_EQ(peak_materialized([&] { quantize_model_files(src.model, src.calib, src.dir.file("q2"), settings(2)); }), one_layer);
  // Mixed precision: the sensitivity pass materializes each layer once more, and releases it.
  EXPECT_EQ(peak_materialized([&] { quantize_model_files(src.model, src.calib, src.dir.file("q25"), settings(2.5)); }),
            one_layer);
  // Interrupted after layer 1, then resumed.
  QuantizeProgress stop;
  stop.layer_done = [](int layer, int, const std::vector<LinearReport>&, double, double) {
    if (layer == 1) throw std::runtime_error("interrupted");
  };
  const std::string out = src.dir.file("q3");
  EXPECT_EQ(peak_materialized([&] {
              EXPECT_THROW(quantize_model_files(src.model, src.calib, out, settings(3), stop), std::runtime_error);
            }),
            one_layer);
  EXPECT_EQ(peak_materialized([&] {
              const QuantizeResult r = quantize_model_files(src.model, src.calib, out, settings(3));
              EXPECT_EQ(r.resumed_layers, 2);
            }),
            one_layer);
  EXPECT_TRUE(is_glq_checkpoint(out));
  // A quantized head (tied: read from the embedding) is materialized after the layers.
  QuantizeSettings head = settings(4);
  head.keep_head_16bit = false;
  const ModelConfig c = quant_test::tiny_config();
  const int64_t head_bytes = int64_t{4} * c.vocab_size * c.hidden_size;
  EXPECT_EQ(peak_materialized([&] { quantize_model_files(src.model, src.calib, src.dir.file("q4h"), head); }),
            std::max(one_layer, head_bytes));
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

TEST(StreamingQuantize, FinishedLayersRunTheirQuantizedMatricesLikeTheDequantizedWeights) {
  Source src(3);
  LoadOptions o;
  o.mapped = true;
  auto model = load_model(src.model, o);
  std::ifstream cfg(src.model + "/config.json");
  CheckpointSource cs;
  cs.hf_config = nlohmann::ordered_json::parse(std::string(std::istreambuf_iterator<char>(cfg), {}));
  cs.fingerprint = "test";
  const Tokenizer& tok = model->tokenizer();
  std::ifstream text(src.calib);
  const auto ids = tok.encode(std::string(std::istreambuf_iterator<char>(text), {}), false, false);
  const auto calib = make_calibration_set(ids, 4, 29, 9, "calib");
  quantize_model(*model, calib, cs, src.dir.file("out"), settings(2));

  // Every linear now holds its compressed matrix; "today's" reference holds the dequantized
  // values as dense float32 weights.
  auto dense = load_model(src.model);
  int64_t compressed = 0, fp32 = 0;
  for (int i = 0; i < model->num_layers(); ++i)
    for (LinearKind k : kAllLinearKinds) {
      const Linear& q = model->layer(i).linear(k);
      ASSERT_TRUE(q.is_quantized()) << linear_tensor_prefix(i, k);
      compressed += static_cast<int64_t>(q.weight_bytes());
      fp32 += int64_t{4} * q.rows() * q.cols();
      dense->layer(i).linear(k) = Linear::dense(q.to_dense(), q.rows(), q.cols());
    }
  EXPECT_LT(compressed * 10, fp32) << "the finished layers cost their compressed size";

  // Each layer, fed the same input, gives the next layer the same hidden states.
  const std::vector<int32_t> seq = tok.encode("the quantized layer runs on eight numbers and with error feedback");
  const int T = static_cast<int>(seq.size()), h = model->hidden_size();
  std::vector<float> x(static_cast<size_t>(T) * h);
  dense->embed(seq, x.data());
  for (int i = 0; i < model->num_layers(); ++i) {
    std::vector<float> yq = x, yd = x;
    model->run_layer(i, yq.data(), T);
    dense->run_layer(i, yd.data(), T);
    const double scale = max_abs(yd);
    // The kernels round activations to fixed point (docs/cpu-kernels.md); the codec's own error
    // is above 1e-2 of the outputs at 2 bits.
    EXPECT_LT(max_diff(yq, yd), 1e-3 * scale) << "layer " << i;
    EXPECT_GT(max_diff(yd, x), 1e-2 * scale) << "the layer did something";
    x = yd;
  }
}

}  // namespace
}  // namespace glq::model
