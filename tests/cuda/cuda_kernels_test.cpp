// CUDA kernels against the CPU references (matvec_reference, hadamard_forward/transpose) on
// random inputs of awkward shapes. The decode-table test runs without a GPU; every other test
// skips cleanly when no CUDA device is present.
#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "glq/codec/codebook.hpp"
#include "glq/codec/quantized_matrix.hpp"
#include "glq/error.hpp"
#include "glq/kernels/cpu.hpp"
#include "glq/kernels/cuda.hpp"
#include "glq/transform/hadamard.hpp"
#include "kernels/cuda/e8_decode.cuh"
#include "kernels/cuda/launch.hpp"
#include "kernels/cuda/qgemv_ring.cuh"

namespace {

using glq::codec::Codebook;
using glq::codec::QuantizedMatrix;

#define SKIP_WITHOUT_GPU()                                               \
  do {                                                                   \
    if (glq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

float half_bits_to_float(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  float v;
  if (exp == 0) v = std::ldexp(float(man), -24);
  else v = std::ldexp(float(man | 0x400), exp - 25);
  return sign ? -v : v;
}

// Random codes, positive scales, random signs: every code of both codebooks is valid.
QuantizedMatrix random_qmatrix(int rows, int cols, int bits, uint64_t seed) {
  std::mt19937_64 rng(seed);
  QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.bits = bits;
  std::uniform_real_distribution<float> scale(0.01f, 0.05f);
  for (Codebook cb : glq::codec::stages_for_bits(bits)) {
    glq::codec::CodeStage st;
    st.codebook = cb;
    st.codes.resize(size_t(rows) * (cols / 8) * glq::codec::code_bytes(cb));
    for (auto& c : st.codes) c = static_cast<uint8_t>(rng());
    st.scales.resize(rows);
    for (auto& s : st.scales) s = scale(rng);
    q.stages.push_back(std::move(st));
  }
  q.sign_in = glq::transform::random_signs(cols, seed + 1);
  q.sign_out = glq::transform::random_signs(rows, seed + 2);
  q.plan_in = glq::transform::make_hadamard_plan(cols);
  q.plan_out = glq::transform::make_hadamard_plan(rows);
  return q;
}

std::vector<float> random_vector(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

double relative_error(const std::vector<float>& got, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
    num += double(got[i] - ref[i]) * (got[i] - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

const std::vector<float> kPoison(1, std::numeric_limits<float>::quiet_NaN());

std::vector<float> run_qmatmul(glq::cuda::Context& ctx, const glq::cuda::DeviceQuantizedMatrix& dq,
                               const std::vector<float>& x, int batch, glq::cuda::QPath path) {
  auto dx = glq::cuda::to_device(x);
  std::vector<float> y(size_t(batch) * dq.rows, std::numeric_limits<float>::quiet_NaN());
  auto dy = glq::cuda::to_device(y);  // poisoned: every element must be written
  glq::cuda::qmatmul(ctx, dq, dx.as<const float>(), dy.as<float>(), batch, path);
  GLQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
  dy.download(y.data(), y.size() * 4);
  return y;
}

// ---- no GPU needed --------------------------------------------------------------------------

TEST(CudaDecodeTables, E8P16MatchesReferenceDecoderForEveryCode) {
  uint32_t tables[glq::cuda::detail::kTableWords];
  glq::cuda::detail::build_decode_tables(tables);
  const auto& abs = glq::codec::e8p_abs_table();
  for (uint32_t code = 0; code < 65536; ++code) {
    float ref[8];
    glq::codec::decode_e8p(static_cast<uint16_t>(code), abs, ref);
    const uint32_t e = glq::cuda::detail::e8p_selector_word(
        code, tables + glq::cuda::detail::kTableE8pSel, tables + glq::cuda::detail::kTableE8pSign);
    uint32_t pairs[4];
    glq::cuda::detail::decode_pairs(e, glq::cuda::detail::kE8pBytesLo, glq::cuda::detail::kE8pBytesHi, pairs);
    const float shift = (code & 0x8000) ? -0.25f : 0.25f;
    for (int c = 0; c < 8; ++c) {
      const uint16_t h = static_cast<uint16_t>(pairs[c / 2] >> (16 * (c % 2)));
      ASSERT_EQ(half_bits_to_float(h) + shift, ref[c]) << "code " << code << " coordinate " << c;
    }
  }
}

TEST(CudaDecodeTables, E8R8MatchesReferenceDecoderForEveryCode) {
  uint32_t tables[glq::cuda::detail::kTableWords];
  glq::cuda::detail::build_decode_tables(tables);
  const auto& table = glq::codec::e8r8_table();
  for (uint32_t code = 0; code < 256; ++code) {
    float ref[8];
    glq::codec::decode_e8r8(static_cast<uint8_t>(code), table, ref);
    uint32_t pairs[4];
    glq::cuda::detail::decode_pairs(tables[glq::cuda::detail::kTableE8r8Sel + code],
                                    glq::cuda::detail::kE8rBytesLo, glq::cuda::detail::kE8rBytesHi, pairs);
    for (int c = 0; c < 8; ++c) {
      const uint16_t h = static_cast<uint16_t>(pairs[c / 2] >> (16 * (c % 2)));
      ASSERT_EQ(half_bits_to_float(h), ref[c]) << "code " << code << " coordinate " << c;
    }
  }
}

TEST(CudaDevice, CountNeverThrows) { EXPECT_GE(glq::cuda::device_count(), 0); }

// ---- GPU ------------------------------------------------------------------------------------

// The plan on the device.
glq::cuda::DeviceHadamard device_plan(const glq::transform::HadamardPlan& plan) {
  glq::cuda::DeviceHadamard dplan;
  dplan.n = plan.n;
  dplan.a = plan.a;
  dplan.b = plan.b;
  if (plan.a > 1) dplan.q = glq::cuda::to_device(plan.q);
  return dplan;
}

// Both transform directions of `batch` vectors of length n against the reference (signs and
// inputs drawn from the seeds).
void check_hadamard_both_directions(int n, int batch, uint64_t sign_seed, uint64_t x_seed) {
  glq::cuda::Context ctx;
  const auto plan = glq::transform::make_hadamard_plan(n);
  const auto dplan = device_plan(plan);
  const auto sign = glq::transform::random_signs(n, sign_seed);
  const auto x = random_vector(size_t(batch) * n, x_seed);
  auto dsign = glq::cuda::to_device(sign);
  auto dx = glq::cuda::to_device(x);

  // Output direction, fp32: y = sign ∘ T^T x.
  std::vector<float> ref = x;
  for (int b = 0; b < batch; ++b) {
    glq::transform::hadamard_transpose(plan, ref.data() + size_t(b) * n);
    for (int i = 0; i < n; ++i) ref[size_t(b) * n + i] *= sign[i];
  }
  std::vector<float> y(x.size(), std::numeric_limits<float>::quiet_NaN());
  auto dy = glq::cuda::to_device(y);
  glq::cuda::hadamard_output(ctx, dplan, dsign.as<const float>(), dx.as<const float>(), dy.as<float>(), batch);
  GLQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
  dy.download(y.data(), y.size() * 4);
  EXPECT_LT(relative_error(y, ref), 1e-5) << "n=" << n << " a=" << plan.a << " b=" << plan.b << " batch " << batch;

  // Input direction, fp16 out: x̃ = T (sign ∘ x).
  std::vector<float> ref_in = x;
  for (int b = 0; b < batch; ++b) {
    for (int i = 0; i < n; ++i) ref_in[size_t(b) * n + i] *= sign[i];
    glq::transform::hadamard_forward(plan, ref_in.data() + size_t(b) * n);
  }
  glq::cuda::DeviceMemory dh(x.size() * 2);
  glq::cuda::hadamard_input(ctx, dplan, dsign.as<const float>(), dx.as<const float>(), dh.as<uint16_t>(), batch);
  GLQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
  std::vector<uint16_t> h(x.size());
  dh.download(h.data(), h.size() * 2);
  std::vector<float> got(x.size());
  for (size_t i = 0; i < h.size(); ++i) got[i] = half_bits_to_float(h[i]);
  EXPECT_LT(relative_error(got, ref_in), 1e-3) << "n=" << n << " a=" << plan.a << " b=" << plan.b << " batch " << batch;
}

class CudaHadamard : public ::testing::TestWithParam<int> {};

TEST_P(CudaHadamard, MatchesReferenceBothDirections) {
  SKIP_WITHOUT_GPU();
  check_hadamard_both_directions(GetParam(), 3, 7, 11 + GetParam());
  check_hadamard_both_directions(GetParam(), 1, 8, 12 + GetParam());  // (a = 1, b ≥ 2048: Sylvester rows)
}

// Test names of the size-parameterised suites: n<size>.
std::string size_param_name(const ::testing::TestParamInfo<int>& info) {
  return std::string("n").append(std::to_string(info.param));
}

INSTANTIATE_TEST_SUITE_P(Sizes, CudaHadamard, ::testing::Values(8, 24, 152, 576, 1536, 2048, 4096, 7912, 8192, 14336),
                         size_param_name);

// Many vectors (more than the row kernels take): the block-per-vector kernels, both their
// shapes (b ≤ 1024: one FWHT step; b > 1024: a second step over the high bits) and the shapes
// that fall back to the general kernels (b < 32, a > 32).
class CudaHadamardMany : public ::testing::TestWithParam<int> {};

TEST_P(CudaHadamardMany, MatchesReferenceBothDirections) {
  SKIP_WITHOUT_GPU();
  check_hadamard_both_directions(GetParam(), 37, 5, 13 + GetParam());
}

INSTANTIATE_TEST_SUITE_P(Sizes, CudaHadamardMany,
                         ::testing::Values(8, 152, 576, 1536, 2560, 4096, 14336, 24576),
                         size_param_name);

// T (sign ∘ pre(x)) of `batch` rows of x (row stride ld, [gate | up] for SwiGlu), with the
// pre-operations as transform_kernels.cuh defines them (RMSNorm eps 1e-5).
std::vector<float> prepare_reference(const glq::transform::HadamardPlan& plan, const float* x, int ld, int batch,
                                     glq::cuda::detail::PreOp pre, const std::vector<float>& norm_w,
                                     const std::vector<float>& sign) {
  using glq::cuda::detail::PreOp;
  const int n = plan.n;
  std::vector<float> ref(size_t(batch) * n);
  for (int v = 0; v < batch; ++v) {
    const float* xv = x + size_t(v) * ld;
    float* r = ref.data() + size_t(v) * n;
    double ss = 0.0;
    for (int i = 0; i < n; ++i) ss += double(xv[i]) * xv[i];
    const float scale = float(1.0 / std::sqrt(ss / n + 1e-5));
    for (int i = 0; i < n; ++i) {
      const float g = xv[i], u = xv[n + i];
      const float val = pre == PreOp::RmsNorm ? g * scale * norm_w[i] : pre == PreOp::SwiGlu ? g / (1.0f + std::exp(-g)) * u : g;
      r[i] = val * sign[i];
    }
    glq::transform::hadamard_forward(plan, r);
  }
  return ref;
}

// The fused pre-operations (RMSNorm, SwiGLU) and the zeroing of a following product's output
// in the many-vector and row input transforms, through the internal API.
TEST(CudaHadamardManyPre, MatchesReference) {
  SKIP_WITHOUT_GPU();
  namespace d = glq::cuda::detail;
  glq::cuda::Context ctx;
  // 19 vectors: the row-group kernel; 1-3: the row kernels, where a = 1 with b ≥ 2048 runs as
  // Sylvester-mixed rows for 1-2 vectors (2048 = 32·64, 4096 = 64·64, 8192 = 64·128).
  for (const auto& [n, batch] : {std::pair{1536, 19}, std::pair{14336, 19}, std::pair{2048, 1}, std::pair{4096, 2},
                                 std::pair{4096, 3}, std::pair{8192, 2}}) {
    const auto plan = glq::transform::make_hadamard_plan(n);
    const auto dplan = device_plan(plan);
    const auto sign = glq::transform::random_signs(n, 9);
    const auto norm_w = random_vector(n, 3 + n);
    const auto x = random_vector(size_t(batch) * 2 * n, 17 + n);  // [gate | up] rows for SwiGLU
    auto dsign = glq::cuda::to_device(sign);
    auto dw = glq::cuda::to_device(norm_w);
    auto dx = glq::cuda::to_device(x);
    for (const auto pre : {d::PreOp::RmsNorm, d::PreOp::SwiGlu}) {
      const auto ref = prepare_reference(plan, x.data(), 2 * n, batch, pre, norm_w, sign);
      const int zero_count = 111;
      std::vector<float> junk(size_t(batch) * zero_count, 1.0f);
      auto dz = glq::cuda::to_device(junk);
      glq::cuda::DeviceMemory dh(ref.size() * 2);
      d::PrepareParams p;
      p.t = d::transform_shape(dplan, dsign.as<const float>());
      p.pre = pre;
      p.x = dx.as<const float>();
      p.ld_x = 2 * n;
      p.norm_w = dw.as<const float>();
      p.eps = 1e-5f;
      p.out = dh.as<uint16_t>();
      p.ld_out = n;
      p.zero_ptr = dz.as<float>();
      p.zero_count = zero_count;
      d::launch_prepare(ctx.info(), p, batch, ctx.stream());
      GLQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
      std::vector<uint16_t> h(ref.size());
      dh.download(h.data(), h.size() * 2);
      std::vector<float> got(ref.size());
      for (size_t i = 0; i < h.size(); ++i) got[i] = half_bits_to_float(h[i]);
      EXPECT_LT(relative_error(got, ref), 1e-3) << "n=" << n << " pre=" << int(pre);
      dz.download(junk.data(), junk.size() * 4);
      EXPECT_EQ(std::count(junk.begin(), junk.end(), 0.0f), std::ptrdiff_t(junk.size())) << "n=" << n;
    }
  }
}

// One product's output side fused with the next one's input side (launch_bridge, the engine's
// residual add and RMSNorm between products of ≤ 16 tokens): h_out = h + sign_out ∘ T_outᵀ(Σ ỹ
// slices) + bias, and T_in (sign_in ∘ RMSNorm(h_out)) in fp16, against the CPU transforms, on
// every output layout (a = 1 with the whole FWHT in one block up to b = 8192, a = 9, 12, 44) and
// input row view (Sylvester rows for a = 1), with 1-4 slices, strided rows, and the next product's
// ỹ zeroed. h is left as it was; buffers the kernel would read while writing are refused.
struct BridgeCase {
  int n, batch, parts;
  bool bias;
};

class CudaBridge : public ::testing::TestWithParam<BridgeCase> {};

TEST_P(CudaBridge, MatchesReference) {
  SKIP_WITHOUT_GPU();
  namespace d = glq::cuda::detail;
  const auto [n, batch, parts, with_bias] = GetParam();
  glq::cuda::Context ctx;
  const auto plan = glq::transform::make_hadamard_plan(n);
  const auto dplan = device_plan(plan);
  const int ld = n + 8, ld_in = n + 4;  // strided rows of h and of ỹ
  const size_t part_stride = size_t(batch) * ld_in + 12;
  const auto sign_out = glq::transform::random_signs(n, 21 + n);
  const auto sign_in = glq::transform::random_signs(n, 22 + n);
  const auto norm_w = random_vector(n, 23 + n);
  const auto bias = random_vector(n, 24 + n);
  const auto h = random_vector(size_t(batch) * ld, 25 + n);
  const auto yt = random_vector(part_stride * parts, 26 + n);
  // Reference: the new residual, then the next input transform of its RMSNorm.
  std::vector<float> h_ref(size_t(batch + 1) * n), row(n);  // (prepare_reference reads a row past the last)
  for (int v = 0; v < batch; ++v) {
    for (int i = 0; i < n; ++i) {
      float acc = 0.0f;
      for (int k = 0; k < parts; ++k) acc += yt[k * part_stride + size_t(v) * ld_in + i];
      row[size_t(i)] = acc;
    }
    glq::transform::hadamard_transpose(plan, row.data());
    for (int i = 0; i < n; ++i)
      h_ref[size_t(v) * n + i] = h[size_t(v) * ld + i] + sign_out[i] * row[i] + (with_bias ? bias[i] : 0.0f);
  }
  const auto x_ref = prepare_reference(plan, h_ref.data(), n, batch, d::PreOp::RmsNorm, norm_w, sign_in);
  h_ref.resize(size_t(batch) * n);

  auto dsign_out = glq::cuda::to_device(sign_out);
  auto dsign_in = glq::cuda::to_device(sign_in);
  auto dw = glq::cuda::to_device(norm_w);
  auto dbias = glq::cuda::to_device(bias);
  auto dh = glq::cuda::to_device(h);
  auto dyt = glq::cuda::to_device(yt);
  std::vector<float> poison(size_t(batch) * ld, std::numeric_limits<float>::quiet_NaN());
  auto dh_out = glq::cuda::to_device(poison);
  const int zero_count = 333;
  std::vector<float> junk(size_t(batch) * zero_count, 1.0f);
  auto dz = glq::cuda::to_device(junk);
  glq::cuda::DeviceMemory dx(size_t(batch) * n * 2);
  d::FinishParams f;
  f.t = d::transform_shape(dplan, dsign_out.as<const float>());
  f.yt = dyt.as<const float>();
  f.ld_in = ld_in;
  f.parts = parts;
  f.part_stride = part_stride;
  f.y = dh.as<float>();
  f.ld_out = ld;
  f.accumulate = 1;
  d::PrepareParams p;
  p.t = d::transform_shape(dplan, dsign_in.as<const float>());
  p.pre = d::PreOp::RmsNorm;
  p.norm_w = dw.as<const float>();
  p.eps = 1e-5f;
  p.out = dx.as<uint16_t>();
  p.ld_out = n;
  p.zero_ptr = dz.as<float>();
  p.zero_count = zero_count;
  ASSERT_TRUE(d::bridge_supported(ctx.info(), f, p, dh_out.as<float>(), batch)) << "n=" << n;
  d::launch_bridge(ctx.info(), f, p, dh_out.as<float>(), with_bias ? dbias.as<const float>() : nullptr, batch,
                   ctx.stream());
  GLQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
  std::vector<float> h_got(size_t(batch) * ld), h_after(h.size());
  dh_out.download(h_got.data(), h_got.size() * 4);
  dh.download(h_after.data(), h_after.size() * 4);
  EXPECT_EQ(h_after, h) << "h_in changed";
  std::vector<float> h_cmp(size_t(batch) * n);
  for (int v = 0; v < batch; ++v) {
    std::copy_n(h_got.begin() + size_t(v) * ld, n, h_cmp.begin() + size_t(v) * n);
    for (int i = n; i < ld; ++i) ASSERT_TRUE(std::isnan(h_got[size_t(v) * ld + i])) << "wrote past row " << v;
  }
  EXPECT_LT(relative_error(h_cmp, h_ref), 1e-5) << "n=" << n << " a=" << plan.a << " batch=" << batch;
  std::vector<uint16_t> xh(size_t(batch) * n);
  dx.download(xh.data(), xh.size() * 2);
  std::vector<float> x_got(xh.size());
  for (size_t i = 0; i < xh.size(); ++i) x_got[i] = half_bits_to_float(xh[i]);
  EXPECT_LT(relative_error(x_got, x_ref), 1e-3) << "n=" << n << " a=" << plan.a << " batch=" << batch;
  dz.download(junk.data(), junk.size() * 4);
  EXPECT_EQ(std::count(junk.begin(), junk.end(), 0.0f), std::ptrdiff_t(junk.size())) << "n=" << n;

  // Refused: writing the vector it reads, zeroing what it reads, more than the row kernels' batch.
  EXPECT_FALSE(d::bridge_supported(ctx.info(), f, p, dh.as<float>(), batch));
  d::PrepareParams pz = p;
  pz.zero_ptr = dyt.as<float>();
  EXPECT_FALSE(d::bridge_supported(ctx.info(), f, pz, dh_out.as<float>(), batch));
  EXPECT_THROW(d::launch_bridge(ctx.info(), f, pz, dh_out.as<float>(), nullptr, batch, ctx.stream()), glq::Error);
  EXPECT_FALSE(d::bridge_supported(ctx.info(), f, p, dh_out.as<float>(), 17));
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaBridge,
                         ::testing::Values(BridgeCase{4096, 1, 4, false}, BridgeCase{4096, 1, 1, true},
                                           BridgeCase{4096, 3, 2, true}, BridgeCase{2048, 16, 3, false},
                                           BridgeCase{8192, 1, 2, true}, BridgeCase{576, 1, 1, true},
                                           BridgeCase{576, 5, 4, false}, BridgeCase{1536, 2, 2, true},
                                           BridgeCase{2816, 1, 3, true}, BridgeCase{64, 7, 1, false}),
                         [](const auto& info) {
                           return std::string("n")
                               .append(std::to_string(info.param.n))
                               .append("_batch")
                               .append(std::to_string(info.param.batch))
                               .append("_parts")
                               .append(std::to_string(info.param.parts))
                               .append(info.param.bias ? "_bias" : "");
                         });

// Many vectors, whole vector per block (launch_prepare_wide / launch_finish_wide, which
// launch_prepare / launch_finish take from kWideMinBatch vectors on), at any batch through the
// internal launchers: both directions on every FWHT layout (b = 64 ... 8192, one or two passes)
// and mixing order (a = 1, 12, 20, 28, 44), fewer and more vectors than the persistent grid has
// blocks, outputs poisoned first; the output side summing 3 parts into a strided, accumulated y.
struct WideCase {
  int n, batch;
};

class CudaHadamardWide : public ::testing::TestWithParam<WideCase> {};

std::vector<float> download_half(const glq::cuda::DeviceMemory& dh, size_t count) {
  std::vector<uint16_t> h(count);
  dh.download(h.data(), h.size() * 2);
  std::vector<float> got(count);
  for (size_t i = 0; i < count; ++i) got[i] = half_bits_to_float(h[i]);
  return got;
}

TEST_P(CudaHadamardWide, MatchesReferenceBothDirections) {
  SKIP_WITHOUT_GPU();
  namespace d = glq::cuda::detail;
  const auto [n, batch] = GetParam();
  glq::cuda::Context ctx;
  const auto plan = glq::transform::make_hadamard_plan(n);
  const auto dplan = device_plan(plan);
  const auto sign = glq::transform::random_signs(n, 21 + n);
  const auto x = random_vector(size_t(batch) * n, 23 + n + batch);
  auto dsign = glq::cuda::to_device(sign);
  auto dx = glq::cuda::to_device(x);

  std::vector<float> ref_in = x;
  for (int v = 0; v < batch; ++v) {
    for (int i = 0; i < n; ++i) ref_in[size_t(v) * n + i] *= sign[i];
    glq::transform::hadamard_forward(plan, ref_in.data() + size_t(v) * n);
  }
  glq::cuda::DeviceMemory dh(x.size() * 2);
  GLQ_CUDA_CHECK(cudaMemsetAsync(dh.data(), 0xFF, dh.bytes(), ctx.stream()));  // fp16 NaN
  d::PrepareParams p;
  p.t = d::transform_shape(dplan, dsign.as<const float>());
  p.x = dx.as<const float>();
  p.ld_x = n;
  p.out = dh.as<uint16_t>();
  p.ld_out = n;
  ASSERT_TRUE(d::launch_prepare_wide(ctx.info(), p, batch, ctx.stream())) << "n=" << n;
  GLQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
  EXPECT_LT(relative_error(download_half(dh, x.size()), ref_in), 1e-3)
      << "n=" << n << " a=" << plan.a << " b=" << plan.b << " batch=" << batch;

  // Output side: ỹ in 3 parts, y (row stride n + 4) accumulated; the 4 extra columns stay.
  const int parts = 3, ld = n + 4;
  const auto yparts = random_vector(size_t(parts) * batch * n, 29 + n);
  const auto y0 = random_vector(size_t(batch) * ld, 31 + n);
  std::vector<float> ref = y0;
  std::vector<float> row(n);
  for (int v = 0; v < batch; ++v) {
    for (int i = 0; i < n; ++i) {
      double s = 0.0;
      for (int k = 0; k < parts; ++k) s += yparts[(size_t(k) * batch + v) * n + i];
      row[i] = float(s);
    }
    glq::transform::hadamard_transpose(plan, row.data());
    for (int i = 0; i < n; ++i) ref[size_t(v) * ld + i] += sign[i] * row[i];
  }
  auto dparts = glq::cuda::to_device(yparts);
  auto dy = glq::cuda::to_device(y0);
  d::FinishParams f;
  f.t = d::transform_shape(dplan, dsign.as<const float>());
  f.yt = dparts.as<const float>();
  f.ld_in = n;
  f.y = dy.as<float>();
  f.ld_out = ld;
  f.accumulate = 1;
  f.parts = parts;
  f.part_stride = size_t(batch) * n;
  ASSERT_TRUE(d::launch_finish_wide(ctx.info(), f, batch, ctx.stream())) << "n=" << n;
  GLQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
  std::vector<float> y(y0.size());
  dy.download(y.data(), y.size() * 4);
  EXPECT_LT(relative_error(y, ref), 1e-5) << "n=" << n << " a=" << plan.a << " b=" << plan.b << " batch=" << batch;
  for (int v = 0; v < batch; ++v)
    for (int i = n; i < ld; ++i) ASSERT_EQ(y[size_t(v) * ld + i], y0[size_t(v) * ld + i]) << "v=" << v;

  // ỹ as fp16 (the dequantize + GEMM path), written over y, through the wide kernel and through
  // launch_finish at a batch below the wide kernel's (the row kernels read it element by element).
  std::vector<uint16_t> yh(size_t(batch) * n);
  std::vector<float> yh_f(yh.size());
  for (size_t i = 0; i < yh.size(); ++i) {
    yh[i] = glq::cpu::float_to_half(yparts[i], glq::cpu::Half::F16);
    yh_f[i] = half_bits_to_float(yh[i]);
  }
  std::vector<float> ref_h(size_t(batch) * ld, 0.0f);
  for (int v = 0; v < batch; ++v) {
    std::copy(yh_f.begin() + size_t(v) * n, yh_f.begin() + size_t(v + 1) * n, row.begin());
    glq::transform::hadamard_transpose(plan, row.data());
    for (int i = 0; i < n; ++i) ref_h[size_t(v) * ld + i] = sign[i] * row[i];
  }
  glq::cuda::DeviceMemory dyh(yh.size() * 2);
  dyh.upload(yh.data(), yh.size() * 2);
  for (int wide = 1; wide >= 0; --wide) {
    GLQ_CUDA_CHECK(cudaMemsetAsync(dy.data(), 0, dy.bytes(), ctx.stream()));
    d::FinishParams fh;
    fh.t = d::transform_shape(dplan, dsign.as<const float>());
    fh.yt_half = dyh.as<const uint16_t>();
    fh.ld_in = n;
    fh.y = dy.as<float>();
    fh.ld_out = ld;
    if (wide) {
      ASSERT_TRUE(d::launch_finish_wide(ctx.info(), fh, batch, ctx.stream())) << "n=" << n;
    } else {
      const int nb = std::min(batch, 5);
      d::launch_finish(ctx.info(), fh, nb, ctx.stream());
      std::fill(ref_h.begin() + size_t(nb) * ld, ref_h.end(), 0.0f);
    }
    GLQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
    dy.download(y.data(), y.size() * 4);
    EXPECT_LT(relative_error(y, ref_h), 1e-5) << "fp16 ỹ, wide " << wide << ", n=" << n << " batch=" << batch;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaHadamardWide,
                         ::testing::Values(WideCase{64, 130}, WideCase{256, 33}, WideCase{1536, 17},
                                           WideCase{2560, 65}, WideCase{4096, 130}, WideCase{14336, 19},
                                           WideCase{24576, 17},
                                           // a = 44 (2816 = 44·64): a mixing order above 32
                                           // (more than the row-group kernel takes)
                                           WideCase{2816, 70},
                                           // more vectors than blocks: each block loops, two buffers
                                           WideCase{1536, 1000}, WideCase{14336, 300}),
                         [](const auto& info) {
                           return std::string("n")
                               .append(std::to_string(info.param.n))
                               .append("_batch")
                               .append(std::to_string(info.param.batch));
                         });

// Shapes the wide kernels refuse (b < 32; a > 64) launch nothing and say so.
TEST(CudaHadamardWide, RefusesShapesItCannotTake) {
  SKIP_WITHOUT_GPU();
  namespace d = glq::cuda::detail;
  glq::cuda::Context ctx;
  for (const int n : {576, 7912}) {
    const auto plan = glq::transform::make_hadamard_plan(n);
    const auto dplan = device_plan(plan);
    glq::cuda::DeviceMemory dx(size_t(n) * 4), dh(size_t(n) * 2);
    d::PrepareParams p;
    p.t = d::transform_shape(dplan, nullptr);
    p.x = dx.as<const float>();
    p.ld_x = n;
    p.out = dh.as<uint16_t>();
    p.ld_out = n;
    EXPECT_FALSE(d::launch_prepare_wide(ctx.info(), p, 1, ctx.stream())) << "n=" << n << " a=" << plan.a;
  }
}

// The fused pre-operations, the zeroing of a following product's output and rows that are not
// 16-byte aligned (plain loads instead of cp.async) in the wide input kernel.
TEST(CudaHadamardWide, PreOperationsAndUnalignedRows) {
  SKIP_WITHOUT_GPU();
  namespace d = glq::cuda::detail;
  glq::cuda::Context ctx;
  // 19 vectors: the row-group kernel; 1-3: the row kernels, where a = 1 with b ≥ 2048 runs as
  // Sylvester-mixed rows for 1-2 vectors (2048 = 32·64, 4096 = 64·64, 8192 = 64·128).
  for (const auto& [n, batch] : {std::pair{1536, 19}, std::pair{14336, 19}, std::pair{2048, 1}, std::pair{4096, 2},
                                 std::pair{4096, 3}, std::pair{8192, 2}}) {
    const auto plan = glq::transform::make_hadamard_plan(n);
    const auto dplan = device_plan(plan);
    const auto sign = glq::transform::random_signs(n, 41);
    const auto norm_w = random_vector(n, 43 + n);
    const auto x = random_vector(size_t(batch) * 2 * n + 1, 47 + n);  // [gate | up] rows, one spare
    auto dsign = glq::cuda::to_device(sign);
    auto dw = glq::cuda::to_device(norm_w);
    auto dx = glq::cuda::to_device(x);
    for (const int mode : {0, 1, 2}) {  // RmsNorm, SwiGlu, Plain on rows offset by one float
      const auto pre = mode == 0 ? d::PreOp::RmsNorm : mode == 1 ? d::PreOp::SwiGlu : d::PreOp::Plain;
      const int off = mode == 2 ? 1 : 0;
      const auto ref = prepare_reference(plan, x.data() + off, 2 * n, batch, pre, norm_w, sign);
      const int zero_count = 111;
      std::vector<float> junk(size_t(batch) * zero_count, 1.0f);
      auto dz = glq::cuda::to_device(junk);
      glq::cuda::DeviceMemory dh(ref.size() * 2);
      GLQ_CUDA_CHECK(cudaMemsetAsync(dh.data(), 0xFF, dh.bytes(), ctx.stream()));
      d::PrepareParams p;
      p.t = d::transform_shape(dplan, dsign.as<const float>());
      p.pre = pre;
      p.x = dx.as<const float>() + off;
      p.ld_x = 2 * n;
      p.norm_w = dw.as<const float>();
      p.eps = 1e-5f;
      p.out = dh.as<uint16_t>();
      p.ld_out = n;
      p.zero_ptr = dz.as<float>();
      p.zero_count = zero_count;
      ASSERT_TRUE(d::launch_prepare_wide(ctx.info(), p, batch, ctx.stream()));
      GLQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
      EXPECT_LT(relative_error(download_half(dh, ref.size()), ref), 1e-3) << "n=" << n << " mode=" << mode;
      dz.download(junk.data(), junk.size() * 4);
      EXPECT_EQ(std::count(junk.begin(), junk.end(), 0.0f), std::ptrdiff_t(junk.size())) << "n=" << n;
    }
  }
}

// The cluster paths are planned exactly where the device code has them: on an sm_90 card, with
// this build's sm_90 code (the default architectures), and not when the driver runs the PTX of
// an older architecture (a build without sm_90 code).
TEST(CudaClusters, AvailableWhereCompiled) {
  SKIP_WITHOUT_GPU();
  glq::cuda::Context ctx;
  std::string archs = GLQ_TEST_CUDA_ARCHS;
  const bool sm90_code = archs.find("90") != std::string::npos;
  EXPECT_EQ(glq::cuda::detail::tc_clusters_available(ctx.info()), ctx.info().cc_major >= 9 && sm90_code)
      << "architectures " << archs;
}

// Blocks per vector to test: one, and on sm_90 (with device code for it) clusters of 2, 4 and 8.
std::vector<int> tc_clusters(const glq::cuda::Context& ctx) {
  return glq::cuda::detail::tc_clusters_available(ctx.info()) ? std::vector<int>{1, 2, 4, 8} : std::vector<int>{1};
}

// The transforms on the tensor cores (launch_prepare_tc, launch_finish_tc): every shape they take (a = 12, 20,
// 28 with b = 256, 512, 1024; a = 1 with b = 4096, 8192, 16384), each pre-operation, the zeroing
// of a following product's output, the signs as floats or as bits, odd batches, one block per
// vector and (sm_90) a vector split over a cluster of 2, 4 or 8 blocks (rows and columns that
// do not divide evenly: a = 12, 20, 28 over 8 blocks); it refuses rows that are not 16-byte aligned and
// shapes outside its set, launching nothing.
TEST(CudaHadamardTc, BothSidesMatchReference) {
  SKIP_WITHOUT_GPU();
  namespace d = glq::cuda::detail;
  glq::cuda::Context ctx;
  for (const auto& [n, batch] : {std::pair{14336, 67}, std::pair{3072, 5}, std::pair{20480, 3}, std::pair{4096, 70},
                                 std::pair{8192, 9}, std::pair{16384, 2}, std::pair{7168, 1}, std::pair{14336, 19}})
  for (const int cl : tc_clusters(ctx)) {
    const auto plan = glq::transform::make_hadamard_plan(n);
    const auto dplan = device_plan(plan);
    const auto sign = glq::transform::random_signs(n, 61 + n);
    const auto norm_w = random_vector(n, 63 + n);
    const auto x = random_vector(size_t(batch) * 2 * n + 4, 67 + n);  // [gate | up] rows, spare
    auto dsign = glq::cuda::to_device(sign);
    auto dw = glq::cuda::to_device(norm_w);
    auto dx = glq::cuda::to_device(x);
    auto dbits = d::sign_bits_to_device(sign);
    for (const int mode : {0, 1, 2, 3}) {  // RmsNorm, SwiGlu, Plain; Plain with the signs as bits
      const auto pre = mode == 0 ? d::PreOp::RmsNorm : mode == 1 ? d::PreOp::SwiGlu : d::PreOp::Plain;
      const auto ref = prepare_reference(plan, x.data(), 2 * n, batch, pre, norm_w, sign);
      const int zero_count = 37;
      std::vector<float> junk(size_t(batch) * zero_count, 1.0f);
      auto dz = glq::cuda::to_device(junk);
      const int ld_out = n + 8;
      glq::cuda::DeviceMemory dh(size_t(batch) * ld_out * 2);
      GLQ_CUDA_CHECK(cudaMemsetAsync(dh.data(), 0xFF, dh.bytes(), ctx.stream()));  // fp16 NaN
      d::PrepareParams p;
      p.t = d::transform_shape(dplan, mode == 3 ? nullptr : dsign.as<const float>(),
                               mode == 3 ? dbits.as<const uint32_t>() : nullptr);
      p.pre = pre;
      p.x = dx.as<const float>();
      p.ld_x = 2 * n;
      p.norm_w = dw.as<const float>();
      p.eps = 1e-5f;
      p.out = dh.as<uint16_t>();
      p.ld_out = ld_out;
      p.zero_ptr = dz.as<float>();
      p.zero_count = zero_count;
      ASSERT_TRUE(d::launch_prepare_tc(ctx.info(), p, batch, ctx.stream(), cl)) << "n=" << n << " cluster " << cl;
      GLQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
      std::vector<uint16_t> bits(size_t(batch) * ld_out);
      dh.download(bits.data(), bits.size() * 2);
      std::vector<float> got(ref.size());
      for (int v = 0; v < batch; ++v) {
        for (int i = 0; i < n; ++i) got[size_t(v) * n + i] = half_bits_to_float(bits[size_t(v) * ld_out + i]);
        for (int i = n; i < ld_out; ++i) EXPECT_EQ(bits[size_t(v) * ld_out + i], 0xFFFF) << "n=" << n << " vector " << v;
      }
      EXPECT_LT(relative_error(got, ref), 1e-3) << "n=" << n << " a=" << plan.a << " b=" << plan.b << " mode=" << mode
                                                << " cluster " << cl;
      dz.download(junk.data(), junk.size() * 4);
      EXPECT_EQ(std::count(junk.begin(), junk.end(), 0.0f), std::ptrdiff_t(junk.size())) << "n=" << n;
      // Rows one float off 16-byte alignment: refused.
      p.x = dx.as<const float>() + 1;
      EXPECT_FALSE(d::launch_prepare_tc(ctx.info(), p, batch, ctx.stream(), cl)) << "n=" << n;
    }
  }
  // Output side from fp16 ỹ (launch_finish_tc): y with row stride n + 6, written or accumulated,
  // the signs as floats or as bits; the 6 extra columns stay.
  for (const auto& [n, batch] : {std::pair{14336, 66}, std::pair{3072, 5}, std::pair{20480, 3}, std::pair{4096, 70},
                                 std::pair{8192, 9}, std::pair{16384, 2}, std::pair{4096, 21}})
  for (const int cl : tc_clusters(ctx)) {
    const auto plan = glq::transform::make_hadamard_plan(n);
    const auto dplan = device_plan(plan);
    const auto sign = glq::transform::random_signs(n, 73 + n);
    std::mt19937 rng(79 + n);
    std::vector<uint16_t> yh(size_t(batch) * n);
    for (auto& h : yh) {  // |ỹ| in [2^-4, 2^2), random sign
      const uint32_t r = rng();
      h = uint16_t(((r >> 31) << 15) | ((11 + (r >> 16) % 6) << 10) | (r & 0x3FF));
    }
    const int ld = n + 6;
    const auto y0 = random_vector(size_t(batch) * ld, 83 + n);
    auto dsign = glq::cuda::to_device(sign);
    auto dbits = d::sign_bits_to_device(sign);
    auto dyh = glq::cuda::to_device(yh);
    for (const int mode : {0, 1, 2, 3}) {  // bit 0: accumulate; bit 1: signs as bits
      std::vector<float> ref(y0);
      for (int v = 0; v < batch; ++v) {
        std::vector<float> t(n);
        for (int i = 0; i < n; ++i) t[i] = half_bits_to_float(yh[size_t(v) * n + i]);
        glq::transform::hadamard_transpose(plan, t.data());
        for (int i = 0; i < n; ++i) {
          float& r = ref[size_t(v) * ld + i];
          r = (mode & 1 ? r : 0.0f) + t[i] * sign[i];
        }
      }
      d::FinishParams f;
      f.t = d::transform_shape(dplan, mode & 2 ? nullptr : dsign.as<const float>(),
                               mode & 2 ? dbits.as<const uint32_t>() : nullptr);
      f.yt_half = dyh.as<const uint16_t>();
      f.ld_in = n;
      f.ld_out = ld;
      f.accumulate = mode & 1;
      // Runs g into a fresh copy of y0: y against the reference, and the extra columns untouched.
      auto expect_finish = [&](d::FinishParams g, const std::string& what) {
        auto dy = glq::cuda::to_device(y0);
        g.y = dy.as<float>();
        ASSERT_TRUE(d::launch_finish_tc(ctx.info(), g, batch, ctx.stream(), cl)) << what << " n=" << n << " cluster " << cl;
        GLQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
        std::vector<float> y(y0.size());
        dy.download(y.data(), y.size() * 4);
        std::string bad;
        for (size_t k = 0, shown = 0; k < y.size() && shown < 8; ++k)
          if (std::abs(y[k] - ref[k]) > 0.05) bad += " [" + std::to_string(k / ld) + "," + std::to_string(k % ld) + "] " + std::to_string(y[k]) + " vs " + std::to_string(ref[k]), ++shown;
        EXPECT_LT(relative_error(y, ref), 1e-3) << what << " n=" << n << " a=" << plan.a << " b=" << plan.b
                                                << " mode=" << mode << " cluster " << cl << bad;
        for (int v = 0; v < batch; ++v)
          for (int i = n; i < ld; ++i) ASSERT_EQ(y[size_t(v) * ld + i], y0[size_t(v) * ld + i]) << what << " n=" << n;
      };
      expect_finish(f, "fp16");

      // The same ỹ as fp32 in 3 slices (row stride n + 4) that sum to it, with half_ok: the
      // products' output side; without half_ok: refused.
      const int parts = 3, ld3 = n + 4;
      std::vector<float> slices(size_t(parts) * batch * ld3);
      for (int v = 0; v < batch; ++v)
        for (int i = 0; i < n; ++i) {
          const float t = half_bits_to_float(yh[size_t(v) * n + i]);
          const float a = std::ldexp(float(int(rng() % 2001) - 1000), -10), b2 = -0.375f * a;
          slices[size_t(v) * ld3 + i] = a;
          slices[(size_t(batch) + v) * ld3 + i] = b2;
          slices[(size_t(2 * batch) + v) * ld3 + i] = t - a - b2;  // exact: t and a are multiples of 2^-14 and 2^-13
        }
      auto dsl = glq::cuda::to_device(slices);
      d::FinishParams g = f;
      g.yt_half = nullptr;
      g.yt = dsl.as<const float>();
      g.ld_in = ld3;
      g.parts = parts;
      g.part_stride = size_t(batch) * ld3;
      EXPECT_FALSE(d::launch_finish_tc(ctx.info(), g, batch, ctx.stream(), cl)) << "n=" << n;
      g.half_ok = 1;
      expect_finish(g, "fp32 slices");
      {  // tc_finish_half_parts: the same slices (row stride n) as fp16 where the clustered kernel
         // takes them (sm_90, 17+ vectors), never for a y it cannot write (4-byte aligned only).
        glq::cuda::DeviceMemory dyt(y0.size() * 4 + 16);
        d::FinishParams hp = g;
        hp.ld_in = n;
        hp.part_stride = size_t(batch) * n;
        hp.y = dyt.as<float>();
        const bool want = d::tc_clusters_available(ctx.info()) && batch >= d::kTilesMinBatch &&
                          d::tc_cluster(ctx.info(), batch) > 1;
        EXPECT_EQ(d::tc_finish_half_parts(ctx.info(), hp, batch), want) << "n=" << n << " batch " << batch;
        hp.y = dyt.as<float>() + 1;
        EXPECT_FALSE(d::tc_finish_half_parts(ctx.info(), hp, batch)) << "n=" << n;
      }
      // ỹ as fp16 in 3 slices c, ỹ, −c (the tile kernel's fp16 slices; row stride n + 8): the
      // sums are exact.
      const int ldh = n + 8;
      std::vector<uint16_t> hslices(size_t(parts) * batch * ldh, 0x7E00);  // NaN between the rows
      for (int v = 0; v < batch; ++v)
        for (int i = 0; i < n; ++i) {
          const uint16_t c = uint16_t(((11 + rng() % 6) << 10) | (rng() & 0x3FF));
          hslices[size_t(v) * ldh + i] = c;
          hslices[(size_t(batch) + v) * ldh + i] = yh[size_t(v) * n + i];
          hslices[(size_t(2 * batch) + v) * ldh + i] = uint16_t(c | 0x8000);
        }
      auto dhs = glq::cuda::to_device(hslices);
      g = f;
      g.yt_half = dhs.as<const uint16_t>();
      g.ld_in = ldh;
      g.parts = parts;
      g.part_stride = size_t(batch) * ldh;
      expect_finish(g, "fp16 slices");
      // ỹ and y in one buffer: refused.
      g = f;
      g.y = reinterpret_cast<float*>(dyh.as<uint16_t>());
      g.ld_out = n / 2;
      EXPECT_FALSE(d::launch_finish_tc(ctx.info(), g, batch, ctx.stream(), cl)) << "n=" << n;
    }
  }
  for (const int n : {1536, 2048, 576, 11008, 32768}) {  // b = 128; b = 2048; a = 36; a = 43; b = 32768
    const auto plan = glq::transform::make_hadamard_plan(n);
    const auto dplan = device_plan(plan);
    glq::cuda::DeviceMemory dx(size_t(n) * 4), dh(size_t(n) * 2);
    d::PrepareParams p;
    p.t = d::transform_shape(dplan, nullptr);
    p.x = dx.as<const float>();
    p.ld_x = n;
    p.out = dh.as<uint16_t>();
    p.ld_out = n;
    EXPECT_FALSE(d::launch_prepare_tc(ctx.info(), p, 1, ctx.stream())) << "n=" << n;
  }
}

// Prefill-sized batches through the public transforms (the wide kernels by default), the output
// side in place (yt = y).
TEST(CudaHadamardWide, PrefillBatchesThroughPublicApi) {
  SKIP_WITHOUT_GPU();
  glq::cuda::Context ctx;
  for (const auto& [n, batch] : {std::pair{14336, 2048}, std::pair{4096, 2048}, std::pair{14336, 130}}) {
    const auto plan = glq::transform::make_hadamard_plan(n);
    const auto dplan = device_plan(plan);
    const auto sign = glq::transform::random_signs(n, 51);
    const auto x = random_vector(size_t(batch) * n, 53 + n + batch);
    auto dsign = glq::cuda::to_device(sign);
    auto dx = glq::cuda::to_device(x);
    std::vector<float> ref = x, ref_in = x;
    glq::transform::hadamard_transpose_batch(plan, ref.data(), batch);
    for (int v = 0; v < batch; ++v)
      for (int i = 0; i < n; ++i) {
        ref[size_t(v) * n + i] *= sign[i];
        ref_in[size_t(v) * n + i] *= sign[i];
      }
    glq::transform::hadamard_forward_batch(plan, ref_in.data(), batch);
    glq::cuda::DeviceMemory dh(x.size() * 2);
    GLQ_CUDA_CHECK(cudaMemsetAsync(dh.data(), 0xFF, dh.bytes(), ctx.stream()));
    glq::cuda::hadamard_input(ctx, dplan, dsign.as<const float>(), dx.as<const float>(), dh.as<uint16_t>(), batch);
    glq::cuda::hadamard_output(ctx, dplan, dsign.as<const float>(), dx.as<const float>(), dx.as<float>(), batch);
    GLQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
    EXPECT_LT(relative_error(download_half(dh, x.size()), ref_in), 1e-3) << "n=" << n << " batch=" << batch;
    std::vector<float> y(x.size());
    dx.download(y.data(), y.size() * 4);
    EXPECT_LT(relative_error(y, ref), 1e-5) << "n=" << n << " batch=" << batch;
  }
}

struct QCase {
  int rows, cols, bits, batch;
  glq::cuda::QPath path;
};

std::string case_name(const QCase& c) {
  const char* p = c.path == glq::cuda::QPath::Gemv          ? "gemv"
                  : c.path == glq::cuda::QPath::DequantGemm ? "dequant"
                  : c.path == glq::cuda::QPath::Mma         ? "mma"
                                                            : "auto";
  return "r" + std::to_string(c.rows) + "_c" + std::to_string(c.cols) + "_b" + std::to_string(c.bits) +
         "_n" + std::to_string(c.batch) + "_" + p;
}

// A random quantized matrix of case c (its seed from qseed and the shape), uploaded, a random
// input of c.batch vectors (seed xseed + batch) and the CPU reference product.
struct RefCase {
  glq::codec::QuantizedMatrix q;
  glq::cuda::DeviceQuantizedMatrix dq;
  std::vector<float> x, ref;
};

RefCase reference_case(const QCase& c, int qseed, int rows_factor, int xseed) {
  RefCase r;
  r.q = random_qmatrix(c.rows, c.cols, c.bits, qseed + c.rows * rows_factor + c.cols + c.bits);
  r.dq = glq::cuda::upload(r.q);
  r.x = random_vector(size_t(c.batch) * c.cols, xseed + c.batch);
  r.ref.resize(size_t(c.batch) * c.rows);
  glq::codec::matvec_reference(r.q, r.x.data(), r.ref.data(), c.batch);
  return r;
}

class CudaQmatmul : public ::testing::TestWithParam<QCase> {};

TEST_P(CudaQmatmul, MatchesMatvecReference) {
  SKIP_WITHOUT_GPU();
  const QCase c = GetParam();
  glq::cuda::Context ctx;
  const auto [q, dq, x, ref] = reference_case(c, 1000, 7, 77);
  const auto y = run_qmatmul(ctx, dq, x, c.batch, c.path);
  // fp16 activations and fp16 partial sums of 8 products: ~1e-3 expected.
  EXPECT_LT(relative_error(y, ref), 5e-3) << case_name(c);
  // Same inputs again: a race would move the result by more than rounding.
  const auto y2 = run_qmatmul(ctx, dq, x, c.batch, c.path);
  EXPECT_LT(relative_error(y2, y), 1e-5) << case_name(c);
}

using glq::cuda::QPath;
INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaQmatmul,
    ::testing::Values(QCase{8, 8, 2, 1, QPath::Gemv}, QCase{152, 88, 2, 1, QPath::Gemv},
                      QCase{888, 152, 2, 1, QPath::Gemv}, QCase{888, 152, 3, 2, QPath::Gemv},
                      QCase{888, 152, 4, 3, QPath::Gemv}, QCase{576, 1536, 2, 8, QPath::Gemv},
                      QCase{1536, 576, 3, 5, QPath::Gemv}, QCase{1024, 7912, 2, 1, QPath::Gemv},
                      QCase{1024, 7912, 4, 8, QPath::Gemv}, QCase{256, 14336, 3, 1, QPath::Gemv},
                      QCase{4096, 4096, 2, 1, QPath::Gemv}, QCase{184, 4096, 2, 7, QPath::Gemv},
                      QCase{888, 152, 2, 13, QPath::Auto}, QCase{152, 888, 3, 19, QPath::Auto},
                      QCase{576, 1536, 4, 40, QPath::Auto}, QCase{888, 152, 2, 3, QPath::DequantGemm},
                      // Tensor-core decode kernel: row counts that leave partial 64-row slabs,
                      // group counts that leave partial 4-group steps, 1 to 3 vector tiles,
                      // several launches (70 vectors), every bit width.
                      QCase{8, 8, 2, 1, QPath::Mma}, QCase{152, 88, 3, 1, QPath::Mma},
                      QCase{888, 152, 2, 5, QPath::Mma}, QCase{1024, 7912, 4, 1, QPath::Mma},
                      QCase{184, 4096, 3, 8, QPath::Mma}, QCase{576, 1536, 2, 13, QPath::Mma},
                      QCase{1536, 576, 4, 33, QPath::Mma}, QCase{888, 1528, 3, 64, QPath::Mma},
                      QCase{4096, 4096, 2, 1, QPath::Mma}, QCase{256, 14336, 2, 2, QPath::Mma},
                      QCase{152, 888, 2, 70, QPath::Mma}, QCase{1024, 4096, 4, 19, QPath::Mma},
                      // The shared-memory tile kernel (17-64 vectors): partial 256-row blocks,
                      // partial 64-column steps, one and several column ranges, on sm_90 in
                      // clusters of 8 (184 x 4096, 2048 x 2048, 4096 x 14336) and 4 (264 x 1000)
                      // and one range without a cluster (8192 x 256).
                      QCase{184, 4096, 2, 47, QPath::Mma}, QCase{264, 1000, 2, 33, QPath::Mma},
                      QCase{4096, 14336, 3, 64, QPath::Mma}, QCase{2048, 2048, 4, 50, QPath::Mma},
                      QCase{8192, 256, 2, 40, QPath::Mma},
                      // Many vectors: the per-vector transform kernels (small and large mixing
                      // orders a) around the dequantize + GEMM path.
                      QCase{152, 888, 3, 80, QPath::Auto}, QCase{1536, 576, 2, 40, QPath::DequantGemm},
                      QCase{256, 14336, 2, 20, QPath::DequantGemm},
                      // Prefill batches (the wide transform kernels on the sides that take them:
                      // a = 28 in and out, a = 12 out, a = 1; 576 = 36 x 16 falls back).
                      QCase{64, 14336, 2, 260, QPath::Auto}, QCase{14336, 64, 4, 257, QPath::Auto},
                      QCase{1536, 576, 3, 300, QPath::Auto}, QCase{1536, 576, 2, 130, QPath::Auto},
                      // The dequantize + GEMM path at every bit width, with more 8x8 weight
                      // blocks to decode than one thread each (65,536 for 1024 x 4096).
                      QCase{1024, 4096, 3, 100, QPath::Auto}, QCase{2048, 2048, 4, 64, QPath::Auto},
                      QCase{4096, 1024, 2, 65, QPath::DequantGemm}),
    [](const auto& info) { return case_name(info.param); });

// Both kernels of the tile path (17-64 vectors), whatever the default: the decoded weights
// through a shared-memory tile, and in registers as the multiply's A operand with x̃ permuted to
// match. Partial 256-row blocks (184, 264, 520 rows), partial 64-column steps and 32-column
// blocks (1000 = 125 groups, 888 = 111 groups), one and several column ranges (in clusters on
// sm_90), every bit width, 17 to 64 vectors. Each against the CPU reference, and the two
// kernels against each other: the same fp16 weights and x̃, summed in another order.
TEST(CudaQmmaTiles, BothKernelsMatchReference) {
  SKIP_WITHOUT_GPU();
  namespace d = glq::cuda::detail;
  glq::cuda::Context ctx;
  struct Restore {
    ~Restore() { d::set_tiles_registers(-1); }
  } restore;
  for (const QCase& c : {QCase{184, 4096, 2, 47, QPath::Mma}, QCase{264, 1000, 3, 33, QPath::Mma},
                         QCase{520, 888, 4, 64, QPath::Mma}, QCase{4096, 14336, 2, 64, QPath::Mma},
                         QCase{2048, 2048, 3, 50, QPath::Mma}, QCase{8192, 256, 4, 40, QPath::Mma},
                         QCase{1024, 1528, 2, 17, QPath::Mma}}) {
    const auto [q, dq, x, ref] = reference_case(c, 3000, 5, 91);
    std::vector<float> y[2];
    for (int rs : {0, 1}) {
      d::set_tiles_registers(rs);
      ASSERT_EQ(d::tiles_registers(ctx.info()), rs == 1);
      ASSERT_TRUE(d::qmma_tiles_supported(ctx.info(), dq, c.batch)) << case_name(c);
      y[rs] = run_qmatmul(ctx, dq, x, c.batch, c.path);
      EXPECT_LT(relative_error(y[rs], ref), 5e-3) << case_name(c) << ", registers " << rs;
      const auto again = run_qmatmul(ctx, dq, x, c.batch, c.path);
      EXPECT_LT(relative_error(again, y[rs]), 1e-5) << case_name(c) << ", registers " << rs;
    }
    EXPECT_LT(relative_error(y[1], y[0]), 1e-4) << case_name(c);
  }
}

// More than 64 vectors: the opt-in GEMM straight from the codes (wgmma on sm_90a, else mma.sync)
// against the CPU reference and against the dequantization + cuBLAS path. Partial 128-row blocks
// (184, 264, 520 rows; 8 rows: one block, mostly empty), partial 64-column steps (1000 = 125
// groups, 888 = 111), partial 256-vector blocks (65, 130, 257, 300), every bit width.
TEST(CudaQgemm, MatchesReferenceAndDequantPath) {
  SKIP_WITHOUT_GPU();
  namespace d = glq::cuda::detail;
  glq::cuda::Context ctx;
  struct Restore {
    ~Restore() { d::set_qgemm(-1); }
  } restore;
  for (const QCase& c : {QCase{184, 4096, 2, 65, QPath::DequantGemm}, QCase{264, 1000, 3, 130, QPath::DequantGemm},
                         QCase{520, 888, 4, 300, QPath::DequantGemm}, QCase{1024, 1528, 2, 257, QPath::DequantGemm},
                         QCase{2048, 2048, 3, 129, QPath::DequantGemm}, QCase{8, 256, 4, 70, QPath::DequantGemm},
                         QCase{1536, 512, 4, 128, QPath::DequantGemm}}) {
    const auto [q, dq, x, ref] = reference_case(c, 5000, 3, 17);
    d::set_qgemm(1);
    EXPECT_EQ(d::qgemm_supported(ctx.info(), dq, c.batch), ctx.info().cc_major >= 8) << case_name(c);
    const auto y = run_qmatmul(ctx, dq, x, c.batch, c.path);
    EXPECT_LT(relative_error(y, ref), 5e-3) << case_name(c);
    const auto again = run_qmatmul(ctx, dq, x, c.batch, c.path);
    EXPECT_LT(relative_error(again, y), 1e-6) << case_name(c);
    d::set_qgemm(0);
    EXPECT_FALSE(d::qgemm_supported(ctx.info(), dq, c.batch));
    const auto y_dequant = run_qmatmul(ctx, dq, x, c.batch, c.path);
    EXPECT_LT(relative_error(y_dequant, ref), 5e-3) << case_name(c);
    EXPECT_LT(relative_error(y, y_dequant), 1e-3) << case_name(c);
  }
}

// The ring decode kernel (qgemv_ring.cu) that launch_qgemv_cores runs for 1 and 2 vectors of
// the 2/3/4 bpw layouts: fewer than 16 row tiles (19), a partial last block of tiles (111 =
// 6·16 + 15), one column range and many (989 groups: atomics into the zeroed ỹ), group counts
// that leave a partial 32-lane word and an odd number of words per lane. Where the groups per row
// are a multiple of 64 (2056x4096, 1000x1536) the planner may take segments instead of column
// ranges (scripts/gpu_check.sh also runs this with GLQ_QGEMV_RING_FLAT=1, and planned for one SM,
// where a warp's segment crosses many tiles, and with GLQ_QGEMV_RING_FLAT=0).
TEST(CudaQgemvRing, MatchesMatvecReference) {
  SKIP_WITHOUT_GPU();
  glq::cuda::Context ctx;
  const char* env = std::getenv("GLQ_QGEMV_RING");
  const bool ring_on = !(env && std::string(env) == "0");
  // 152x12008: 1,501 groups, more than the byte path keeps in registers while staging when a
  // range holds all columns (GLQ_QGEMV_RING_SMS=1, as scripts/gpu_check.sh also runs it).
  for (const auto& [rows, cols] : {std::pair{152, 88}, std::pair{888, 7912}, std::pair{8, 1528}, std::pair{1528, 152},
                                   std::pair{2056, 4096}, std::pair{152, 12008}, std::pair{1000, 1536}}) {
    for (int bits : {2, 3, 4}) {
      const auto q = random_qmatrix(rows, cols, bits, 7 * rows + cols + bits);
      const auto dq = glq::cuda::upload(q);
      for (int batch : {1, 2}) {
        const std::string name = std::to_string(rows) + "x" + std::to_string(cols) + " " + std::to_string(bits) +
                                 " bpw, batch " + std::to_string(batch);
        EXPECT_EQ(glq::cuda::detail::qgemv_ring_supported(ctx.info(), dq, batch), ring_on) << name;
        const auto x = random_vector(size_t(batch) * cols, 3 + rows + batch);
        std::vector<float> ref(size_t(batch) * rows);
        glq::codec::matvec_reference(q, x.data(), ref.data(), batch);
        const auto y = run_qmatmul(ctx, dq, x, batch, QPath::Gemv);
        EXPECT_LT(relative_error(y, ref), 5e-3) << name;
        const auto y2 = run_qmatmul(ctx, dq, x, batch, QPath::Gemv);
        EXPECT_LT(relative_error(y2, y), 1e-5) << name;
      }
    }
  }
}

// A NaN in the input comes out as NaN in every output of the ring kernel, whichever of its
// paths the shape takes (fp16 products propagate it; the byte path's scale does), at 1 and 2
// vectors (the other vector finite).
TEST(CudaQgemvRing, PropagatesNaN) {
  SKIP_WITHOUT_GPU();
  glq::cuda::Context ctx;
  for (const auto& [rows, cols] : {std::pair{2056, 4096}, std::pair{888, 7912}, std::pair{152, 88}}) {
    const auto q = random_qmatrix(rows, cols, 2, 5 * rows + cols);
    const auto dq = glq::cuda::upload(q);
    for (int batch : {1, 2}) {
      auto x = random_vector(size_t(batch) * cols, 17 + rows + batch);
      x[size_t(cols) / 3] = std::numeric_limits<float>::quiet_NaN();  // in the first vector
      const auto y = run_qmatmul(ctx, dq, x, batch, QPath::Gemv);
      for (int r = 0; r < rows; ++r) ASSERT_TRUE(std::isnan(y[size_t(r)])) << rows << "x" << cols << " row " << r;
      for (size_t i = size_t(rows); i < y.size(); ++i)
        ASSERT_TRUE(std::isfinite(y[i])) << rows << "x" << cols << ": the second vector is finite, output " << i;
    }
  }
}

// The ring kernel with the output transform fused (its last block transforms the whole of ỹ),
// through the internal API (whatever GLQ_FUSED_FINISH says): output lengths that are not powers of two (152 = 76·2 and
// 1000 + 8 = 63·16 with a DCT mixing, 2056 = 257·8, 14336 = 28·512) and one that is (4096),
// 1 and 2 vectors, written and added into y (the fused residual add), each launch run twice on
// the same buffers (the done counter must come back to zero through the input transform, whose
// buffer is poisoned first).
TEST(CudaQgemvRingFused, OutputTransformInKernelMatchesReference) {
  SKIP_WITHOUT_GPU();
  namespace d = glq::cuda::detail;
  glq::cuda::Context ctx;
  const char* env = std::getenv("GLQ_QGEMV_RING");
  const bool ring_on = !(env && std::string(env) == "0");
  int k = 0;
  for (const auto& [rows, cols] : {std::pair{152, 88}, std::pair{1008, 1528}, std::pair{2056, 7912},
                                   std::pair{14336, 256}, std::pair{4096, 1024}}) {
    const int bits = 2 + (k++ % 3);
    const auto q = random_qmatrix(rows, cols, bits, 11 * rows + cols + bits);
    const auto dq = glq::cuda::upload(q);
    for (int batch : {1, 2}) {
      const std::string name = std::to_string(rows) + "x" + std::to_string(cols) + " " + std::to_string(bits) +
                               " bpw, batch " + std::to_string(batch);
      const bool supported = d::qgemv_ring_fused_supported(ctx.info(), dq, batch);
      ASSERT_EQ(supported, ring_on && dq.plan_out.a <= d::kFusedFinishMaxA) << name;
      if (!supported) continue;
      const auto x = random_vector(size_t(batch) * cols, 5 + rows + batch);
      std::vector<float> ref(size_t(batch) * rows);
      glq::codec::matvec_reference(q, x.data(), ref.data(), batch);
      const int ld = d::qgemv_ring_fused_ld(rows);
      auto dx = glq::cuda::to_device(x);
      glq::cuda::DeviceMemory xt(size_t(batch) * cols * 2), yf(size_t(batch) * ld * 4);
      GLQ_CUDA_CHECK(cudaMemsetAsync(yf.data(), 0xFF, yf.bytes(), ctx.stream()));
      for (int accumulate : {0, 1}) {
        const auto y0 = random_vector(size_t(batch) * rows, 9 + rows + batch);
        auto dy = glq::cuda::to_device(accumulate ? y0 : std::vector<float>(y0.size(), std::numeric_limits<float>::quiet_NaN()));
        d::FinishParams f;
        f.t = d::transform_shape(dq.plan_out, dq.sign_out.as<const float>());
        f.y = dy.as<float>();
        f.ld_out = rows;
        f.accumulate = accumulate;
        for (int run = 1; run <= 2; ++run) {
          d::launch_hadamard(ctx.info(), dq.plan_in, true, dq.sign_in.as<const float>(), dx.as<const float>(),
                             xt.data(), batch, yf.as<float>(), ld, ctx.stream());
          d::launch_qgemv_ring_fused(ctx.info(), dq, ctx.tables(), xt.as<const uint16_t>(), cols, yf.as<float>(),
                                     batch, f, ctx.stream());
          GLQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
          std::vector<float> y(y0.size());
          dy.download(y.data(), y.size() * 4);
          std::vector<float> want = ref;
          if (accumulate)
            for (size_t i = 0; i < y.size(); ++i) y[i] = (y[i] - y0[i]) / float(run);
          EXPECT_LT(relative_error(y, want), 5e-3) << name << ", accumulate " << accumulate << ", run " << run;
        }
      }
    }
  }
}

// The tensor-core kernel with the input transform fused (batch 1) and its output in parts,
// summed by the output transform (the path of GLQ_CUDA_FUSED_INPUT=1), through the internal API.
TEST(CudaQmmaFusedInput, MatchesMatvecReference) {
  SKIP_WITHOUT_GPU();
  glq::cuda::Context ctx;
  namespace d = glq::cuda::detail;
  for (const auto& [rows, cols, bits] : {std::tuple{888, 152, 2}, std::tuple{1024, 4096, 3}, std::tuple{256, 14336, 4},
                                         std::tuple{152, 7912, 2}}) {
    const auto q = random_qmatrix(rows, cols, bits, 31 + rows + cols);
    const auto dq = glq::cuda::upload(q);
    ASSERT_TRUE(d::qmma_fused_supported(ctx.info(), dq)) << rows << "x" << cols;
    const auto x = random_vector(cols, 5 + cols);
    std::vector<float> ref(rows);
    glq::codec::matvec_reference(q, x.data(), ref.data(), 1);
    const int parts = d::qmma_parts(ctx.info(), dq, 1, true);
    auto dx = glq::cuda::to_device(x);
    glq::cuda::DeviceMemory yp(size_t(parts) * rows * 4);
    std::vector<float> y(rows, std::numeric_limits<float>::quiet_NaN());
    auto dy = glq::cuda::to_device(y);
    d::launch_qmma_parts(ctx.info(), dq, ctx.tables(), nullptr, dx.as<const float>(), yp.as<float>(), 1, ctx.stream());
    d::FinishParams f;
    f.t = d::transform_shape(dq.plan_out, dq.sign_out.as<const float>());
    f.yt = yp.as<const float>();
    f.ld_in = rows;
    f.y = dy.as<float>();
    f.ld_out = rows;
    f.parts = parts;
    f.part_stride = size_t(rows);
    d::launch_finish(ctx.info(), f, 1, ctx.stream());
    GLQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
    dy.download(y.data(), y.size() * 4);
    EXPECT_LT(relative_error(y, ref), 5e-3) << rows << "x" << cols << " " << bits << " bpw, " << parts << " parts";
  }
}

TEST(CudaQmatmulNoTransform, MatchesMatvecReference) {
  SKIP_WITHOUT_GPU();
  glq::cuda::Context ctx;
  auto q = random_qmatrix(152, 88, 3, 9);
  q.rht = false;
  std::fill(q.sign_in.begin(), q.sign_in.end(), 1.0f);
  std::fill(q.sign_out.begin(), q.sign_out.end(), 1.0f);
  const auto dq = glq::cuda::upload(q);
  for (int batch : {1, 4, 21}) {
    const auto x = random_vector(size_t(batch) * q.cols, 5 + batch);
    std::vector<float> ref(size_t(batch) * q.rows);
    glq::codec::matvec_reference(q, x.data(), ref.data(), batch);
    EXPECT_LT(relative_error(run_qmatmul(ctx, dq, x, batch, QPath::Auto), ref), 5e-3) << "batch " << batch;
  }
}

TEST(CudaDense, MatchesCpuProduct) {
  SKIP_WITHOUT_GPU();
  glq::cuda::Context ctx;
  const int rows = 111 * 8, cols = 19 * 8, batch = 5;
  const auto w = random_vector(size_t(rows) * cols, 3);
  const auto x = random_vector(size_t(batch) * cols, 4);
  const auto dw = glq::cuda::upload_dense_bf16(w.data(), rows, cols);
  std::vector<float> ref(size_t(batch) * rows, 0.0f);
  for (int b = 0; b < batch; ++b)
    for (int r = 0; r < rows; ++r) {
      double s = 0;
      for (int k = 0; k < cols; ++k) s += double(w[size_t(r) * cols + k]) * x[size_t(b) * cols + k];
      ref[size_t(b) * rows + r] = float(s);
    }
  auto dx = glq::cuda::to_device(x);
  std::vector<float> y(ref.size(), std::numeric_limits<float>::quiet_NaN());
  auto dy = glq::cuda::to_device(y);
  glq::cuda::dense_matmul(ctx, dw, dx.as<const float>(), dy.as<float>(), batch);
  GLQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream()));
  dy.download(y.data(), y.size() * 4);
  EXPECT_LT(relative_error(y, ref), 1e-2);  // bf16 operands
}

TEST(CudaErrors, BadArgumentsThrowTypedErrors) {
  SKIP_WITHOUT_GPU();
  glq::cuda::Context ctx;
  const auto q = random_qmatrix(16, 16, 2, 5);
  const auto dq = glq::cuda::upload(q);
  glq::cuda::DeviceMemory x(64 * 4), y(64 * 4);
  try {
    glq::cuda::qmatmul(ctx, dq, x.as<const float>(), y.as<float>(), 0);
    FAIL() << "batch 0 accepted";
  } catch (const glq::Error& e) {
    EXPECT_EQ(e.kind(), glq::ErrorKind::InvalidArgument);
  }
  auto bad = q;
  bad.sign_in.pop_back();
  EXPECT_THROW(glq::cuda::upload(bad), glq::Error);
}

}  // namespace
