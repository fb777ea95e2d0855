// Quantized linears in the engine: Linear::quantized (glq::cpu::qmatmul) against the dense
// product with the dequantized matrix, alone and inside a model.
#include <gtest/gtest.h>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/model/loader.hpp"
#include "model_test_util.hpp"

namespace glq::model {
namespace {

double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0, scale = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, static_cast<double>(std::abs(a[i] - b[i])));
    scale = std::max(scale, static_cast<double>(std::abs(b[i])));
  }
  return worst / scale;
}

TEST(QuantizedLinear, MatchesDenseDequantizedProduct) {
  std::mt19937 rng(111);
  const int rows = 56, cols = 40;
  const auto w = test::random_vec(static_cast<size_t>(rows) * cols, rng, 0.3f);
  const auto bias = test::random_vec(static_cast<size_t>(rows), rng, 0.1f);
  for (int bits : {2, 3, 4}) {
    codec::QuantizeOptions o;
    o.bits = bits;
    codec::QuantizedMatrix q = codec::quantize_matrix(w, rows, cols, {}, o);
    const Linear dense = Linear::dense(codec::dequantize(q), rows, cols, bias);
    const Linear quant = Linear::quantized(std::move(q), bias);
    EXPECT_TRUE(quant.is_quantized());
    EXPECT_LT(quant.weight_bytes(), dense.weight_bytes());
    for (int batch : {1, 3}) {
      const auto x = test::random_vec(static_cast<size_t>(batch) * cols, rng, 1.0f);
      std::vector<float> yq(static_cast<size_t>(batch) * rows), yd(yq.size());
      quant.forward(x.data(), yq.data(), batch);
      dense.forward(x.data(), yd.data(), batch);
      EXPECT_LT(rel_diff(yq, yd), 1e-4) << bits << " bits, batch " << batch;
    }
  }
}

TEST(QuantizedLinear, ModelWithQuantizedLayerMatchesDequantizedModel) {
  const ModelConfig c = test::tiny_config();
  const auto bag = test::random_weights(c, 51);
  test::TempDir dir;
  test::write_checkpoint(dir.path.string(), c, bag);
  LoadOptions lo;
  lo.load_tokenizer = false;
  auto a = load_model(dir.path.string(), lo);
  auto b = load_model(dir.path.string(), lo);
  for (LinearKind k : {LinearKind::Q, LinearKind::Down}) {
    const Linear& l = a->layer(1).linear(k);
    codec::QuantizeOptions o;
    o.bits = 3;
    codec::QuantizedMatrix q = codec::quantize_matrix(l.to_dense(), l.rows(), l.cols(), {}, o);
    b->layer(1).linear(k) = Linear::dense(codec::dequantize(q), l.rows(), l.cols());
    a->layer(1).linear(k) = Linear::quantized(std::move(q));
  }
  std::vector<int32_t> ids = {5, 17, 99, 3, 42, 64, 7, 8, 110};
  std::vector<float> la(ids.size() * c.vocab_size), lb(la.size());
  KVCache ca = a->make_cache(16), cb = b->make_cache(16);
  a->forward(ids, ca, la.data(), true);
  b->forward(ids, cb, lb.data(), true);
  EXPECT_LT(rel_diff(la, lb), 1e-4);
  EXPECT_NE(a->describe().find("2 of 14 linears GLQ-quantized"), std::string::npos) << a->describe();
}

}  // namespace
}  // namespace glq::model
