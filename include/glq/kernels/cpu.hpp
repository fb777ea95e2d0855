// CPU kernels over GLQ's packed layout (see glq/codec/quantized_matrix.hpp).
//
// The scalar versions are the plain references; AVX2+FMA and AVX-512 versions are selected at
// run time by CPU feature checks (GLQ_CPU_ISA=scalar|avx2|avx512 forces one, for tests). All
// take raw pointers, allocate nothing on the hot path beyond a per-thread scratch that is grown
// once, and split rows over the shared ThreadPool.
//
// Numerics (docs/cpu-kernels.md): the transformed activations x̃ = T_in(sign_in ∘ x) are rounded
// to 16-bit fixed point with one scale per batch row (relative error ≤ 2^-16 of max|x̃|); the
// code products are then exact integers, identical in every ISA. Results differ from
// codec::matvec_reference only by that rounding and by float summation order in the transforms.
// Exception: two-stage matrices (3 and 4 bpw) at large batches on AVX-512 and AVX2 take a
// float-tile path (qmatmul_float_tiles()) that decodes weight tiles to float32 and keeps x̃
// unrounded.
#pragma once

#include <cstdint>
#include <string>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/util/thread_pool.hpp"

namespace glq::cpu {

// Avx512 needs F, BW, VL, DQ, VNNI, VBMI and GFNI (Ice Lake, Sapphire Rapids, Zen 4 or later);
// Avx2 needs AVX2, FMA and F16C. Reference is not a kernel: it routes qmatmul to the codec's float
// codec::matvec_reference (one thread, slow), so that whole-model results (perplexity) can be
// compared against it with GLQ_CPU_ISA=reference; detect_isa() never picks it by itself.
enum class Isa { Scalar, Avx2, Avx512, Reference };
Isa detect_isa();             // best ISA this CPU supports (and GLQ_CPU_ISA allows)
const char* isa_name(Isa isa);
bool isa_supported(Isa isa);  // can this CPU run it?
// "scalar" | "avx2" | "avx512" | "reference"; throws glq::Error(InvalidArgument) for anything else.
Isa parse_isa(const std::string& name);

// y (batch, rows) = x (batch, cols) · W^T for a quantized W, transforms included. Throws
// glq::Error(InvalidArgument) for a malformed QuantizedMatrix, (Unsupported) for an ISA this CPU
// lacks. x and y must not overlap.
void qmatmul(const codec::QuantizedMatrix& q, const float* x, float* y, int batch,
             ThreadPool& pool, Isa isa);
inline void qmatmul(const codec::QuantizedMatrix& q, const float* x, float* y, int batch,
                    ThreadPool& pool) {
  qmatmul(q, x, y, batch, pool, detect_isa());
}

// ---- 16-bit dense weights ----------------------------------------------------------------
// A dense W (rows, cols) stored row-major as IEEE half (F16) or bfloat16 (BF16) values: half the
// bytes of float32, widened to float32 in registers (F16C / AVX-512 conversions) and multiplied
// with fp32 FMAs against fp32 activations, fp32 accumulation. Used for the layers a GLQ checkpoint
// keeps in 16 bits (the output head by default).
enum class Half { F16, BF16 };
const char* half_name(Half type);  // "fp16" | "bf16"
float half_to_float(uint16_t h, Half type);
uint16_t float_to_half(float f, Half type);  // round to nearest even; overflow → ±inf

// y (batch, rows) = x (batch, cols) · W^T for a 16-bit W. Any rows, cols ≥ 1 (no multiple-of-8
// requirement). Scalar, AVX2 (+F16C) and AVX-512 paths chosen like qmatmul's (Isa::Reference
// runs the scalar one); rows are split over the pool. x and y must not overlap.
void hmatmul(const uint16_t* w, Half type, int rows, int cols, const float* x, float* y, int batch,
             ThreadPool& pool, Isa isa);
inline void hmatmul(const uint16_t* w, Half type, int rows, int cols, const float* x, float* y,
                    int batch, ThreadPool& pool) {
  hmatmul(w, type, rows, cols, x, y, batch, pool, detect_isa());
}

// The pieces of qmatmul, for tests and benchmarks.
// True when qmatmul(q, ·, ·, batch, ·, isa) takes the float-tile path (AVX-512 or AVX2, large batches:
// weights decoded tile by tile to float32 and multiplied with fp32 FMAs by the unrounded
// activations; docs/cpu-kernels.md) instead of the integer model.
bool qmatmul_float_tiles(const codec::QuantizedMatrix& q, int batch, Isa isa);
// x ← T_in (sign_in ∘ x) for each of `batch` rows of length q.cols (in place).
void transform_input(const codec::QuantizedMatrix& q, float* x, int batch, Isa isa);
// y ← sign_out ∘ (T_out^T y) for each of `batch` rows of length q.rows (in place).
void transform_output(const codec::QuantizedMatrix& q, float* y, int batch, Isa isa);
// x ← T x (or T^T x with `transpose`) for each of `batch` rows of length plan.n (in place, no
// signs): the ISA's transform, as transform_input / transform_output apply it.
void hadamard_rows(const transform::HadamardPlan& plan, bool transpose, float* x, int64_t batch, Isa isa);

}  // namespace glq::cpu
