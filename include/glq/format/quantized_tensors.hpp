// A QuantizedMatrix as the safetensors tensors of a GLQ checkpoint, and back
// (names and layout: glq/format/quantization_config.hpp).
#pragma once

#include <string>
#include <vector>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/format/quantization_config.hpp"
#include "glq/format/safetensors_io.hpp"

namespace glq::format {

// The tensors of `q` under `prefix` (codes, scales, and the signs when q.rht).
std::vector<StTensorData> quantized_matrix_tensors(const std::string& prefix, const codec::QuantizedMatrix& q);

// Rebuilds the matrix described by `entry` from the file; checks every tensor's dtype and shape
// against the entry and the codebooks of its width, and that scales are finite. Throws Format
// naming the file and tensor.
codec::QuantizedMatrix quantized_matrix_from_tensors(const SafetensorsReader& file, const LinearQuantEntry& entry);

// Bit-packing of ±1 sign vectors: bit j%8 of byte j/8 is 1 for -1.
std::vector<uint8_t> pack_signs(const std::vector<float>& signs);
std::vector<float> unpack_signs(const uint8_t* bits, int n);

}  // namespace glq::format
