// The Python-side QuantizedMatrix: a shared, immutable codec::QuantizedMatrix (so that torch
// layers, device copies and Python references can hold the same codes without copying them),
// with the report of the quantization that made it, when there was one.
#pragma once

#include <memory>
#include <optional>

#include "glq/codec/quantized_matrix.hpp"

namespace glq::python {

struct PyQuantizedMatrix {
  std::shared_ptr<const codec::QuantizedMatrix> q;
  std::optional<codec::QuantizeReport> report;

  const codec::QuantizedMatrix& get() const { return *q; }
};

}  // namespace glq::python
