// Dense products with 16-bit weights (IEEE half or bfloat16): dispatch, threading, and the scalar
// kernel (the plain yardstick of the SIMD ones in hmatmul_avx2.cpp / hmatmul_avx512.cpp).
//
// A 16-bit weight widens to float32 exactly, so every ISA computes the same products; only the
// order of the float32 sums differs (SIMD lanes, then a horizontal reduction).
#include <algorithm>
#include <string>

#include "glq/error.hpp"
#include "glq/format/half.hpp"
#include "glq/kernels/cpu.hpp"
#include "kernels/cpu/kernel_common.hpp"

namespace glq::cpu {

namespace {

// Rows per chunk of the pool's split: a multiple of every kernel's row block (4).
constexpr int kRowGrain = 16;
// Below this many multiply-adds (about 30 us of one core) the product stays on the calling
// thread; waking the pool costs more than it saves.
constexpr int64_t kMinParallelMacs = int64_t{1} << 18;

}  // namespace

const char* half_name(Half type) { return type == Half::BF16 ? "bf16" : "fp16"; }

float half_to_float(uint16_t h, Half type) {
  return type == Half::BF16 ? format::bf16_to_f32(h) : format::f16_to_f32(h);
}

uint16_t float_to_half(float f, Half type) {
  return type == Half::BF16 ? format::f32_to_bf16(f) : format::f32_to_f16(f);
}

void hmatmul(const uint16_t* w, Half type, int rows, int cols, const float* x, float* y, int batch,
             ThreadPool& pool, Isa isa) {
  if (rows <= 0 || cols <= 0 || batch < 0)
    throw_invalid("hmatmul: shape " + std::to_string(rows) + "x" + std::to_string(cols) + ", batch " +
                  std::to_string(batch) + " (rows and cols must be positive, batch >= 0)");
  if (batch == 0) return;
  if (!w || !x || !y) throw_invalid("hmatmul: null weight, input or output pointer");
  if (!isa_supported(isa))
    throw_unsupported(std::string("hmatmul: this CPU cannot run ISA '") + isa_name(isa) + "'");
  detail::HalfArgs a;
  a.w = w;
  a.bf16 = type == Half::BF16;
  a.rows = rows;
  a.cols = cols;
  a.batch = batch;
  a.x = x;
  a.y = y;
  const auto task = [&a, isa](int64_t r0, int64_t r1, int) {
    switch (isa) {
      case Isa::Avx512: detail::hgemm_avx512(a, int(r0), int(r1)); break;
      case Isa::Avx2: detail::hgemm_avx2(a, int(r0), int(r1)); break;
      default: detail::hgemm_scalar(a, int(r0), int(r1)); break;
    }
  };
  const int64_t macs = int64_t{rows} * cols * batch;
  if (macs < kMinParallelMacs || pool.size() == 1 || rows < 2 * kRowGrain)
    task(0, rows, 0);
  else
    pool.parallel_for(rows, [t = &task](int64_t b, int64_t e, int i) { (*t)(b, e, i); }, kRowGrain);
}

namespace detail {

void hgemm_scalar(const HalfArgs& a, int r0, int r1) {
  for (int b = 0; b < a.batch; ++b) {
    const float* x = a.x + static_cast<int64_t>(b) * a.cols;
    float* y = a.y + static_cast<int64_t>(b) * a.rows;
    for (int r = r0; r < r1; ++r) {
      const uint16_t* w = a.w + static_cast<int64_t>(r) * a.cols;
      float acc = 0.0f;
      if (a.bf16)
        for (int c = 0; c < a.cols; ++c) acc += format::bf16_to_f32(w[c]) * x[c];
      else
        for (int c = 0; c < a.cols; ++c) acc += format::f16_to_f32(w[c]) * x[c];
      y[r] = acc;
    }
  }
}

}  // namespace detail

}  // namespace glq::cpu
