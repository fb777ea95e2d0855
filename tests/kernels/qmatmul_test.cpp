// qmatmul on every ISA against (a) an independent double-precision product built from the
// definitions and (b) the scalar kernel, on awkward shapes, all bit widths and batch sizes.
// Cases are named by their parameters so a failure can be rerun with --gtest_filter.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "glq/error.hpp"
#include "glq/kernels/cpu.hpp"
#include "kernels/kernel_test_util.hpp"

namespace glq::cpu {
namespace {

struct Case {
  int rows, cols, bits, batch;
};

std::string case_name(const testing::TestParamInfo<std::tuple<Isa, Case>>& info) {
  const auto& [isa, c] = info.param;
  return std::string(isa_name(isa)) + "_rows" + std::to_string(c.rows) + "_cols" +
         std::to_string(c.cols) + "_bits" + std::to_string(c.bits) + "_batch" +
         std::to_string(c.batch);
}

// Rounding x̃ to 16 bits gives errors near 2^-16 · max|x̃| per element; 2e-3 of the rms of y
// bounds the worst element of every case with a wide margin while catching any wrong weight
// (one wrong coordinate moves y by ~0.1 of its rms).
constexpr double kTolVsReference = 2e-3;
// The ISAs share the integer arithmetic; only float summation order in the transforms differs,
// which can move a rounded activation by one unit (2^-15 of max|x̃|).
constexpr double kTolVsScalar = 1e-4;
// The float-tile path (AVX-512, large batches) has no activation rounding.
constexpr double kTolFloatTilesVsReference = 2e-5;

class QmatmulTest : public testing::TestWithParam<std::tuple<Isa, Case>> {};

TEST_P(QmatmulTest, MatchesReferenceAndScalarKernel) {
  const auto& [isa, c] = GetParam();
  if (!isa_supported(isa)) GTEST_SKIP() << "this CPU cannot run " << isa_name(isa);
  const uint64_t seed = 1000003ull * c.rows + 7919ull * c.cols + 31ull * c.bits + c.batch;
  const auto q = test::random_qmatrix(c.rows, c.cols, c.bits, seed);
  const auto x = test::random_input(static_cast<size_t>(c.batch) * c.cols, seed + 1);
  ThreadPool pool(2);
  std::vector<float> y(static_cast<size_t>(c.batch) * c.rows, -1.0f);
  qmatmul(q, x.data(), y.data(), c.batch, pool, isa);
  const auto ref = test::reference_product(q, x.data(), c.batch);
  if (qmatmul_float_tiles(q, c.batch, isa)) {
    // Float weights and unrounded activations: only float32 summation separates it from the
    // double reference.
    EXPECT_LT(test::max_error_over_rms(y, ref), kTolFloatTilesVsReference);
    return;
  }
  EXPECT_LT(test::max_error_over_rms(y, ref), kTolVsReference);
  if (isa != Isa::Scalar) {
    std::vector<float> ys(y.size());
    qmatmul(q, x.data(), ys.data(), c.batch, pool, Isa::Scalar);
    EXPECT_LT(test::max_error_over_rms(y, ys), kTolVsScalar);
  }
}

const Case kCases[] = {
    {8, 8, 2, 1},      {8, 8, 3, 3},       {8, 8, 4, 17},     {24, 72, 2, 3},
    {72, 24, 3, 1},    {24, 72, 4, 64},    {576, 576, 2, 1},  {576, 576, 3, 3},
    {576, 576, 4, 1},  {8, 1008, 2, 17},   {1008, 72, 3, 17}, {72, 1008, 4, 3},
    {8, 14336, 2, 1},  {8, 14336, 3, 3},   {16, 14336, 4, 1}, {1008, 1008, 2, 17},
    {104, 1000 + 8, 3, 64}, {40, 2048, 4, 17}, {8, 14336, 2, 64}, {4096, 8, 2, 3},
    // Batch 1 at 3 and 4 bpw runs both stages in one pass (AVX-512): a partial last chunk
    // (1008 columns: 126 groups; 832: 104), packed row tails (576: 72 groups; 72: tails only),
    // whole chunks (14336).
    {24, 1000 + 8, 4, 1},  {72, 832, 4, 1},    {1000 + 8, 72, 4, 1}, {8, 14336, 4, 1},
    {24, 1000 + 8, 3, 1},  {72, 832, 3, 1},    {1000 + 8, 72, 3, 1}, {576, 576, 3, 1},
    {24, 1000 + 8, 2, 1},
    // Float tiles (AVX-512 from batch 8; AVX2 from 10 at 3 bpw, 14 at 4 bpw): row tiles cut short
    // (40 = 32 + 8, 1000 + 8 = 31·32 + 16), column blocks cut short (832: 104 groups = 6·16 + 8),
    // batch tiles of every width.
    {40, 832, 4, 33},      {1000 + 8, 72, 3, 24},  {24, 1000 + 8, 4, 30},
};

INSTANTIATE_TEST_SUITE_P(AllIsas, QmatmulTest,
                         testing::Combine(testing::Values(Isa::Scalar, Isa::Avx2, Isa::Avx512),
                                          testing::ValuesIn(kCases)),
                         case_name);

TEST(Qmatmul, ThreadCountDoesNotChangeTheResult) {
  const auto q = test::random_qmatrix(200, 1000 + 8 * 13, 3, 77);
  const auto x = test::random_input(5 * static_cast<size_t>(q.cols), 78);
  const Isa isa = detect_isa();
  std::vector<float> y1(5 * static_cast<size_t>(q.rows)), y3(y1.size());
  ThreadPool one(1), three(3);
  qmatmul(q, x.data(), y1.data(), 5, one, isa);
  qmatmul(q, x.data(), y3.data(), 5, three, isa);
  EXPECT_EQ(y1, y3);
}

TEST(Qmatmul, ZeroInputGivesZeroOutput) {
  const auto q = test::random_qmatrix(24, 72, 2, 5);
  std::vector<float> x(72, 0.0f), y(24, 1.0f);
  qmatmul(q, x.data(), y.data(), 1, ThreadPool::global());
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

TEST(Qmatmul, RejectsMalformedMatrices) {
  auto q = test::random_qmatrix(24, 72, 3, 9);
  std::vector<float> x(72), y(24);
  q.stages[1].scales.pop_back();
  EXPECT_THROW(qmatmul(q, x.data(), y.data(), 1, ThreadPool::global()), Error);
  q = test::random_qmatrix(24, 72, 3, 9);
  q.stages[0].codes.resize(10);
  EXPECT_THROW(qmatmul(q, x.data(), y.data(), 1, ThreadPool::global()), Error);
  q = test::random_qmatrix(24, 72, 3, 9);
  q.bits = 4;  // stage list says 3 bits
  EXPECT_THROW(qmatmul(q, x.data(), y.data(), 1, ThreadPool::global()), Error);
}

TEST(Qmatmul, RejectsNonFiniteInput) {
  const auto q = test::random_qmatrix(24, 72, 2, 11);
  std::vector<float> x(72, 1.0f), y(24);
  x[5] = std::nanf("");
  EXPECT_THROW(qmatmul(q, x.data(), y.data(), 1, ThreadPool::global()), Error);
}

TEST(Dispatch, EnvironmentForcesAnIsaAndRejectsUnknownNames) {
  const char* old = std::getenv("GLQ_CPU_ISA");
  const std::string saved = old ? old : "";
  setenv("GLQ_CPU_ISA", "scalar", 1);
  EXPECT_EQ(detect_isa(), Isa::Scalar);
  setenv("GLQ_CPU_ISA", "avx9000", 1);
  EXPECT_THROW(detect_isa(), Error);
  if (old) setenv("GLQ_CPU_ISA", saved.c_str(), 1); else unsetenv("GLQ_CPU_ISA");
  EXPECT_TRUE(isa_supported(Isa::Scalar));
  EXPECT_EQ(parse_isa("avx512"), Isa::Avx512);
  EXPECT_EQ(parse_isa("reference"), Isa::Reference);
}

TEST(Dispatch, ReferenceIsaIsTheCodecReference) {
  const auto q = test::random_qmatrix(24, 72, 3, 21);
  const auto x = test::random_input(3 * 72, 22);
  std::vector<float> y(3 * 24), ref(3 * 24);
  qmatmul(q, x.data(), y.data(), 3, ThreadPool::global(), Isa::Reference);
  codec::matvec_reference(q, x.data(), ref.data(), 3);
  EXPECT_EQ(y, ref);
}

}  // namespace
}  // namespace glq::cpu
