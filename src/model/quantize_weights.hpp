// How the quantizer holds the source model's weights, so that its memory stays one layer's
// working set whatever the model's size.
//
// A model opened with LoadOptions::mapped keeps every linear in the memory-mapped file
// (Linear::deferred) and reads its embedding row by row. The pipeline materializes the float32
// weights of the one layer it works on (materialize_layer), and afterwards either puts the
// deferred linears back (restore_layer, the sensitivity pass) or installs the quantized
// matrices (install_quantized), which then run through the CPU kernels: the finished part of the
// model costs its compressed size, the unfinished part only clean, reclaimable page cache.
// A model built in memory (build_model) goes through the same calls, which then change nothing.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <vector>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/format/safetensors_io.hpp"
#include "glq/model/model.hpp"

namespace glq::model::quantize_weights {

// A layer's seven linears, indexed by LinearKind.
using LayerLinears = std::array<Linear, 7>;

// Replaces layer `layer`'s deferred linears by float32 ones read from the file; returns the
// linears as they were, for restore_layer().
LayerLinears materialize_layer(Model& model, int layer);
// Puts `saved` back into the layer (dropping the float32 weights that only the layer held).
void restore_layer(Model& model, int layer, LayerLinears saved);
// Replaces `lin` by the quantized matrix (bias kept); its float32 weight is released.
void install_quantized(Linear& lin, codec::QuantizedMatrix q);

// lm_head as a float32 dense linear (read from the file when deferred).
Linear materialized_head(const Model& model);
// Whether lm_head is the token embedding (tied), in memory or in the file.
bool head_is_embedding(const Model& model);

// Throws Numerical naming the tensor and flat index of the first non-finite weight: every linear
// (materialized one at a time), bias, norm, the embedding (a block of rows at a time) and an
// untied head.
void check_finite_weights(const Model& model);

// Rows [first, first + count) of a (rows, cols) float32 tensor into out (count, cols).
using RowReader = std::function<void(int64_t first, int64_t count, float* out)>;
// Calls `use` with a reader of a tensor that is valid during the call (so that a tensor read
// from the file is in float32 only meanwhile).
using RowSource = std::function<void(const std::function<void(const RowReader&)>& use)>;
RowSource rows_in_memory(const float* data, int64_t cols);
RowSource embedding_rows(const Model& model);
RowSource head_rows(const Model& model);

// The storage of a kept tensor: "float32" → F32; "float16" → F16 unless a value lies beyond its
// range (then BF16); "bfloat16" → BF16. Scans the tensor a block of rows at a time.
format::StDType kept_dtype(const std::string& dtype_16bit, const RowSource& rows, int64_t n_rows, int64_t cols);
// The tensor's bytes in `dtype`, converted a block of rows at a time.
std::vector<uint8_t> kept_bytes(format::StDType dtype, const RowSource& rows, int64_t n_rows, int64_t cols);

}  // namespace glq::model::quantize_weights
