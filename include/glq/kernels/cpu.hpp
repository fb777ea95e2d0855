// CPU kernels over GLQ's packed layout (see glq/codec/quantized_matrix.hpp).
//
// The scalar versions are the plain references; AVX2+FMA and AVX-512 versions are selected at
// run time by CPU feature checks (GLQ_CPU_ISA=scalar|avx2|avx512 forces one, for tests). All
// take raw pointers, allocate nothing on the hot path beyond a per-thread scratch that is grown
// once, and split rows over the shared ThreadPool.
#pragma once

#include <cstdint>
#include <string>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/util/thread_pool.hpp"

namespace glq::cpu {

enum class Isa { Scalar, Avx2, Avx512 };
Isa detect_isa();             // best ISA this CPU supports (and GLQ_CPU_ISA allows)
const char* isa_name(Isa isa);

// y (batch, rows) = x (batch, cols) · W^T for a quantized W, transforms included.
void qmatmul(const codec::QuantizedMatrix& q, const float* x, float* y, int batch,
             ThreadPool& pool, Isa isa);
inline void qmatmul(const codec::QuantizedMatrix& q, const float* x, float* y, int batch,
                    ThreadPool& pool) {
  qmatmul(q, x, y, batch, pool, detect_isa());
}

}  // namespace glq::cpu
