// qmatmul against the codec's own references (glq/codec/quantized_matrix.hpp and
// glq/transform/hadamard.hpp): real Hadamard plans, matrices made by quantize_matrix.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/kernels/cpu.hpp"
#include "glq/transform/hadamard.hpp"
#include "kernels/kernel_test_util.hpp"

namespace glq::cpu {
namespace {

const Isa kIsas[] = {Isa::Scalar, Isa::Avx2, Isa::Avx512};

codec::QuantizedMatrix with_real_plans(codec::QuantizedMatrix q, uint64_t seed) {
  q.plan_in = transform::make_hadamard_plan(q.cols);
  q.plan_out = transform::make_hadamard_plan(q.rows);
  q.sign_in = transform::random_signs(q.cols, seed);
  q.sign_out = transform::random_signs(q.rows, seed + 1);
  return q;
}

TEST(QmatmulVsCodec, RandomCodesMatchMatvecReferenceOnEveryIsa) {
  struct Shape {
    int rows, cols, bits, batch;
  };
  const Shape shapes[] = {{8, 8, 2, 1},      {24, 72, 3, 3},   {72, 24, 4, 17},
                          {576, 1008, 2, 3}, {8, 14336, 3, 1}, {1008, 576, 4, 9}, {72, 576, 4, 64},
                          {40, 1000 + 8, 2, 17}};
  for (const auto& s : shapes) {
    const auto q = with_real_plans(test::random_qmatrix(s.rows, s.cols, s.bits, 42 + s.rows), 7);
    const auto x = test::random_input(static_cast<size_t>(s.batch) * s.cols, 99 + s.cols);
    std::vector<float> ref(static_cast<size_t>(s.batch) * s.rows);
    codec::matvec_reference(q, x.data(), ref.data(), s.batch);
    for (Isa isa : kIsas) {
      if (!isa_supported(isa)) continue;
      std::vector<float> y(ref.size());
      ThreadPool pool(2);
      qmatmul(q, x.data(), y.data(), s.batch, pool, isa);
      EXPECT_LT(test::max_error_over_rms(y, ref), 2e-3)
          << isa_name(isa) << " rows " << s.rows << " cols " << s.cols << " bits " << s.bits
          << " batch " << s.batch;
    }
  }
}

TEST(QmatmulVsCodec, QuantizedMatricesMatchMatvecReference) {
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal;
  for (int bits : {2, 3, 4}) {
    const int rows = 72, cols = 1000 + 8;
    std::vector<float> w(static_cast<size_t>(rows) * cols);
    for (auto& v : w) v = normal(rng);
    codec::QuantizeOptions opt;
    opt.bits = bits;
    opt.use_ldlq = false;
    const auto q = codec::quantize_matrix(w, rows, cols, {}, opt);
    const auto x = test::random_input(3 * static_cast<size_t>(cols), 17 + bits);
    std::vector<float> ref(3 * static_cast<size_t>(rows));
    codec::matvec_reference(q, x.data(), ref.data(), 3);
    for (Isa isa : kIsas) {
      if (!isa_supported(isa)) continue;
      std::vector<float> y(ref.size());
      qmatmul(q, x.data(), y.data(), 3, ThreadPool::global(), isa);
      EXPECT_LT(test::max_error_over_rms(y, ref), 2e-3) << isa_name(isa) << " bits " << bits;
    }
  }
}

TEST(QmatmulVsCodec, MatricesWithoutTransformMatchMatvecReference) {
  std::mt19937_64 rng(6);
  std::normal_distribution<float> normal;
  const int rows = 24, cols = 1000 + 8;
  std::vector<float> w(static_cast<size_t>(rows) * cols);
  for (auto& v : w) v = normal(rng);
  codec::QuantizeOptions opt;
  opt.bits = 3;
  opt.use_rht = false;
  opt.use_ldlq = false;
  const auto q = codec::quantize_matrix(w, rows, cols, {}, opt);
  ASSERT_FALSE(q.rht);
  const auto x = test::random_input(17 * static_cast<size_t>(cols), 23);
  std::vector<float> ref(17 * static_cast<size_t>(rows));
  codec::matvec_reference(q, x.data(), ref.data(), 17);
  for (Isa isa : kIsas) {
    if (!isa_supported(isa)) continue;
    std::vector<float> y(ref.size());
    qmatmul(q, x.data(), y.data(), 17, ThreadPool::global(), isa);
    EXPECT_LT(test::max_error_over_rms(y, ref), 2e-3) << isa_name(isa);
  }
}

TEST(QmatmulVsCodec, TransformsMatchHadamardReference) {
  for (int n : {8, 24, 72, 576, 1008, 14336}) {
    codec::QuantizedMatrix q;
    q.rows = n;
    q.cols = n;
    q.plan_in = q.plan_out = transform::make_hadamard_plan(n);
    q.sign_in = q.sign_out = transform::random_signs(n, 3);
    const auto x = test::random_input(static_cast<size_t>(n), 11 + n);
    std::vector<float> ref_in(x);
    for (int i = 0; i < n; ++i) ref_in[i] *= q.sign_in[i];
    transform::hadamard_forward(q.plan_in, ref_in.data());
    std::vector<float> ref_out(x);
    transform::hadamard_transpose(q.plan_out, ref_out.data());
    for (int i = 0; i < n; ++i) ref_out[i] *= q.sign_out[i];
    for (Isa isa : kIsas) {
      if (!isa_supported(isa)) continue;
      std::vector<float> a(x), b(x);
      transform_input(q, a.data(), 1, isa);
      transform_output(q, b.data(), 1, isa);
      EXPECT_LT(test::max_error_over_rms(a, ref_in), 1e-5) << isa_name(isa) << " n " << n;
      EXPECT_LT(test::max_error_over_rms(b, ref_out), 1e-5) << isa_name(isa) << " n " << n;
    }
  }
}

// hadamard_rows: every row of a batch transformed as the reference transforms one vector, both
// directions, on the sizes of SmolLM2's linears and awkward ones.
TEST(QmatmulVsCodec, HadamardRowsMatchTheReferenceRowByRow) {
  for (int n : {8, 24, 192, 576, 1008, 1536}) {
    const auto plan = transform::make_hadamard_plan(n);
    for (int batch : {1, 3, 17}) {
      const auto x = test::random_input(static_cast<size_t>(batch) * n, 5 + n + batch);
      for (bool transpose : {false, true}) {
        std::vector<float> ref(x);
        for (int b = 0; b < batch; ++b) {
          float* row = ref.data() + static_cast<size_t>(b) * n;
          if (transpose) transform::hadamard_transpose(plan, row);
          else transform::hadamard_forward(plan, row);
        }
        for (Isa isa : kIsas) {
          if (!isa_supported(isa)) continue;
          std::vector<float> a(x);
          hadamard_rows(plan, transpose, a.data(), batch, isa);
          EXPECT_LT(test::max_error_over_rms(a, ref), 1e-5)
              << isa_name(isa) << " n " << n << " batch " << batch << (transpose ? " transpose" : "");
        }
      }
    }
  }
  float x[8] = {};
  EXPECT_THROW(hadamard_rows(transform::HadamardPlan{}, false, x, 1, Isa::Scalar), std::exception) << "an empty plan";
}

}  // namespace
}  // namespace glq::cpu
