// The quantizer's hold on the source weights (see quantize_weights.hpp).
#include "model/quantize_weights.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "glq/error.hpp"
#include "glq/format/half.hpp"

namespace glq::model::quantize_weights {

namespace {

// Rows converted at a time when a tensor is scanned or stored: about 4 MB of float32, so the
// embedding of a large vocabulary never exists in float32 as a whole.
constexpr int64_t kBlockFloats = int64_t{1} << 20;

int64_t block_rows(int64_t cols) { return std::max<int64_t>(1, kBlockFloats / std::max<int64_t>(1, cols)); }

// Calls fn(first_row, count, values) over the tensor a block of rows at a time.
void for_each_block(const RowReader& read, int64_t n_rows, int64_t cols,
                    const std::function<void(int64_t first, int64_t count, const float* v)>& fn) {
  const int64_t step = block_rows(cols);
  std::vector<float> buf(static_cast<size_t>(std::min(step, n_rows) * cols));
  for (int64_t r = 0; r < n_rows; r += step) {
    const int64_t n = std::min(step, n_rows - r);
    read(r, n, buf.data());
    fn(r, n, buf.data());
  }
}

void check_finite(const float* p, size_t n, size_t offset, size_t total, const std::string& name) {
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i]))
      throw Error(ErrorKind::Numerical, fmt::format("weight '{}' holds a non-finite value ({}) at flat index {} of {}; "
                                                    "the source model is broken",
                                                    name, p[i], offset + i, total));
}

void check_finite_rows(const RowSource& source, int64_t n_rows, int64_t cols, const std::string& name) {
  source([&](const RowReader& read) {
    for_each_block(read, n_rows, cols, [&](int64_t first, int64_t count, const float* v) {
      check_finite(v, static_cast<size_t>(count * cols), static_cast<size_t>(first * cols),
                   static_cast<size_t>(n_rows * cols), name);
    });
  });
}

}  // namespace

LayerLinears materialize_layer(Model& model, int layer) {
  DecoderLayer& L = model.layer(layer);
  LayerLinears saved;
  for (LinearKind k : kAllLinearKinds) {
    Linear& lin = L.linear(k);
    saved[static_cast<size_t>(k)] = lin;
    if (lin.is_deferred()) lin = lin.materialized();
  }
  return saved;
}

void restore_layer(Model& model, int layer, LayerLinears saved) {
  DecoderLayer& L = model.layer(layer);
  for (LinearKind k : kAllLinearKinds) L.linear(k) = std::move(saved[static_cast<size_t>(k)]);
}

void install_quantized(Linear& lin, codec::QuantizedMatrix q) {
  std::vector<float> bias(lin.bias().begin(), lin.bias().end());
  lin = Linear::quantized(std::move(q), std::move(bias));
}

Linear materialized_head(const Model& model) { return model.lm_head().materialized(); }

bool head_is_embedding(const Model& model) {
  const Linear& head = model.lm_head();
  if (model.has_embedding_table()) return head.dense_weight() && head.dense_weight() == model.embedding().data();
  return head.is_deferred() && head.origin() == "model.embed_tokens.weight";
}

void check_finite_weights(const Model& model) {
  const ModelConfig& c = model.config();
  for (int i = 0; i < model.num_layers(); ++i) {
    const DecoderLayer& L = model.layer(i);
    for (LinearKind k : kAllLinearKinds) {
      const Linear& lin = L.linear(k);
      const std::string name = linear_tensor_prefix(i, k);
      if (lin.is_deferred()) {
        const Linear m = lin.materialized();  // one linear in float32 at a time
        check_finite(m.dense_weight(), static_cast<size_t>(m.rows()) * m.cols(), 0,
                     static_cast<size_t>(m.rows()) * m.cols(), name + ".weight");
      } else if (lin.dense_weight()) {
        check_finite(lin.dense_weight(), static_cast<size_t>(lin.rows()) * lin.cols(), 0,
                     static_cast<size_t>(lin.rows()) * lin.cols(), name + ".weight");
      }
      check_finite(lin.bias().data(), lin.bias().size(), 0, lin.bias().size(), name + ".bias");
    }
    check_finite(L.attn_norm.data(), L.attn_norm.size(), 0, L.attn_norm.size(),
                 fmt::format("model.layers.{}.input_layernorm.weight", i));
    check_finite(L.mlp_norm.data(), L.mlp_norm.size(), 0, L.mlp_norm.size(),
                 fmt::format("model.layers.{}.post_attention_layernorm.weight", i));
  }
  check_finite_rows(embedding_rows(model), c.vocab_size, c.hidden_size, "model.embed_tokens.weight");
  check_finite(model.final_norm().data(), model.final_norm().size(), 0, model.final_norm().size(), "model.norm.weight");
  if (!head_is_embedding(model) && !model.lm_head().is_quantized())
    check_finite_rows(head_rows(model), model.lm_head().rows(), model.lm_head().cols(), "lm_head.weight");
}

RowSource rows_in_memory(const float* data, int64_t cols) {
  return [data, cols](const std::function<void(const RowReader&)>& use) {
    use([data, cols](int64_t first, int64_t count, float* out) {
      std::memcpy(out, data + first * cols, static_cast<size_t>(count * cols) * sizeof(float));
    });
  };
}

RowSource embedding_rows(const Model& model) {
  return [&model](const std::function<void(const RowReader&)>& use) {
    use([&model](int64_t first, int64_t count, float* out) { model.embedding_rows(first, count, out); });
  };
}

RowSource head_rows(const Model& model) {
  return [&model](const std::function<void(const RowReader&)>& use) {
    const Linear head = materialized_head(model);  // float32 for the duration of the call only
    if (!head.dense_weight()) throw_invalid(fmt::format("lm_head is {}, not a float weight", head.describe()));
    rows_in_memory(head.dense_weight(), head.cols())(use);
  };
}

format::StDType kept_dtype(const std::string& dtype_16bit, const RowSource& rows, int64_t n_rows, int64_t cols) {
  if (dtype_16bit == "float32") return format::StDType::F32;
  if (dtype_16bit != "float16") return format::StDType::BF16;
  // float16 holds weights more precisely than bfloat16; a tensor with values beyond its range
  // falls back to bfloat16 (the header records each tensor's dtype).
  bool fits = true;
  rows([&](const RowReader& read) {
    for_each_block(read, n_rows, cols, [&](int64_t, int64_t count, const float* v) {
      for (int64_t i = 0; i < count * cols && fits; ++i) fits = format::f16_representable(v[i]);
    });
  });
  return fits ? format::StDType::F16 : format::StDType::BF16;
}

std::vector<uint8_t> kept_bytes(format::StDType dtype, const RowSource& rows, int64_t n_rows, int64_t cols) {
  const int size = format::st_dtype_size(dtype);
  std::vector<uint8_t> out(static_cast<size_t>(n_rows * cols) * static_cast<size_t>(size));
  rows([&](const RowReader& read) {
    for_each_block(read, n_rows, cols, [&](int64_t first, int64_t count, const float* v) {
      uint8_t* dst = out.data() + static_cast<size_t>(first * cols) * static_cast<size_t>(size);
      const size_t n = static_cast<size_t>(count * cols);
      if (dtype == format::StDType::F32) {
        std::memcpy(dst, v, n * 4);
        return;
      }
      for (size_t i = 0; i < n; ++i) {
        const uint16_t h = dtype == format::StDType::F16 ? format::f32_to_f16(v[i]) : format::f32_to_bf16(v[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
    });
  });
  return out;
}

}  // namespace glq::model::quantize_weights
