// quantize_matrix, dequantize, matvec_reference, pack/unpack.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/error.hpp"

namespace glq::codec {
namespace {

std::vector<float> gaussian(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> v(n);
  for (float& x : v) x = scale * g(rng);
  return v;
}

// H = XᵀX / N for N samples of correlated inputs: each sample is an AR(1) sequence along the
// input dimension (ρ = 0.9) with a few loud channels, like activations of a real layer.
std::vector<float> correlated_hessian(int n, uint64_t seed, int samples = 0) {
  if (samples == 0) samples = 2 * n;
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g;
  std::vector<double> loud(n, 1.0);
  for (int i = 0; i < n; i += 37) loud[i] = 6.0;
  std::vector<double> H(static_cast<size_t>(n) * n, 0.0);
  std::vector<double> x(n);
  for (int s = 0; s < samples; ++s) {
    double prev = g(rng);
    for (int i = 0; i < n; ++i) {
      prev = 0.9 * prev + std::sqrt(1 - 0.81) * g(rng);
      x[i] = prev * loud[i];
    }
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j <= i; ++j) H[static_cast<size_t>(i) * n + j] += x[i] * x[j];
    }
  }
  std::vector<float> Hf(H.size());
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j <= i; ++j) {
      const float v = static_cast<float>(H[static_cast<size_t>(i) * n + j] / samples);
      Hf[static_cast<size_t>(i) * n + j] = Hf[static_cast<size_t>(j) * n + i] = v;
    }
  }
  return Hf;
}

// tr((W−Q)H(W−Q)ᵀ) / tr(WHWᵀ) in double, from scratch.
double proxy_loss(const std::vector<float>& W, const std::vector<float>& Q,
                  const std::vector<float>& H, int rows, int cols) {
  double num = 0, den = 0;
  std::vector<double> e(cols), w(cols);
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < cols; ++i) {
      w[i] = W[static_cast<size_t>(r) * cols + i];
      e[i] = w[i] - Q[static_cast<size_t>(r) * cols + i];
    }
    for (int i = 0; i < cols; ++i) {
      double he = 0, hw = 0;
      for (int j = 0; j < cols; ++j) {
        he += H[static_cast<size_t>(i) * cols + j] * e[j];
        hw += H[static_cast<size_t>(i) * cols + j] * w[j];
      }
      num += e[i] * he;
      den += w[i] * hw;
    }
  }
  return num / den;
}

double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

template <typename F>
ErrorKind error_kind_of(F&& f, std::string* message = nullptr) {
  try {
    f();
  } catch (const Error& e) {
    if (message) *message = e.what();
    return e.kind();
  }
  ADD_FAILURE() << "no glq::Error thrown";
  return ErrorKind::Internal;
}

TEST(QuantizeMatrix, LdlqBeatsNearestRoundingOnACorrelatedHessian) {
  const int rows = 72, cols = 576;
  const auto W = gaussian(size_t(rows) * cols, 1, 0.02f);
  const auto H = correlated_hessian(cols, 2);
  for (int bits : {2, 3, 4}) {
    QuantizeOptions opt;
    opt.bits = bits;
    QuantizeReport ldlq_rep, near_rep;
    const auto ql = quantize_matrix(W, rows, cols, H, opt, &ldlq_rep);
    opt.use_ldlq = false;
    const auto qn = quantize_matrix(W, rows, cols, H, opt, &near_rep);
    // The reported proxy losses are the real ones.
    const double pl = proxy_loss(W, dequantize(ql), H, rows, cols);
    const double pn = proxy_loss(W, dequantize(qn), H, rows, cols);
    EXPECT_NEAR(ldlq_rep.proxy_loss, pl, 0.02 * pl) << bits << " bpw";
    EXPECT_NEAR(near_rep.proxy_loss, pn, 0.02 * pn) << bits << " bpw";
    EXPECT_LE(pl, 0.8 * pn) << bits << " bpw: LDLQ " << pl << ", nearest " << pn;
    std::printf("%d bpw: proxy loss LDLQ %.5f, nearest %.5f, ratio %.3f\n", bits, pl, pn, pl / pn);
  }
}

TEST(QuantizeMatrix, LdlqNeverWorseThanNearestRounding) {
  struct Case {
    int rows, cols, bits;
    uint64_t seed;
  };
  for (Case c : {Case{8, 24, 2, 3}, Case{24, 72, 3, 4}, Case{16, 192, 4, 5}, Case{40, 104, 2, 6},
                 Case{8, 1008, 2, 7}}) {
    const auto W = gaussian(size_t(c.rows) * c.cols, c.seed);
    // Hessians from few samples (rank-deficient before damping) and from many.
    for (int samples : {c.cols / 3, 3 * c.cols}) {
      const auto H = correlated_hessian(c.cols, c.seed + 100, samples);
      QuantizeOptions opt;
      opt.bits = c.bits;
      const auto ql = quantize_matrix(W, c.rows, c.cols, H, opt);
      opt.use_ldlq = false;
      const auto qn = quantize_matrix(W, c.rows, c.cols, H, opt);
      const double pl = proxy_loss(W, dequantize(ql), H, c.rows, c.cols);
      const double pn = proxy_loss(W, dequantize(qn), H, c.rows, c.cols);
      EXPECT_LE(pl, pn) << "shape " << c.rows << "x" << c.cols << " bits " << c.bits
                        << " samples " << samples;
    }
  }
}

TEST(QuantizeMatrix, IdentityHessianIsNearestRounding) {
  const int rows = 24, cols = 72;
  const auto W = gaussian(size_t(rows) * cols, 9);
  std::vector<float> I(size_t(cols) * cols, 0.0f);
  for (int i = 0; i < cols; ++i) I[size_t(i) * cols + i] = 1.0f;
  QuantizeOptions opt;
  opt.damp = 0;
  const auto a = quantize_matrix(W, rows, cols, I, opt);
  const auto b = quantize_matrix(W, rows, cols, {}, opt);
  EXPECT_EQ(a.stages[0].codes, b.stages[0].codes);
}

TEST(QuantizeMatrix, GaussianDistortionPerBitWidth) {
  // i.i.d. Gaussian rows, identity Hessian: the MSE per weight relative to the variance is the
  // codec's Gaussian distortion (bars 0.092, 0.032, 0.0095), up to the per-row RMS estimate.
  const int rows = 64, cols = 1024;
  const auto W = gaussian(size_t(rows) * cols, 11);
  const double bars[] = {0, 0, 0.092, 0.032, 0.0095};
  double prev = 1;
  for (int bits : {2, 3, 4}) {
    QuantizeOptions opt;
    opt.bits = bits;
    QuantizeReport rep;
    const auto q = quantize_matrix(W, rows, cols, {}, opt, &rep);
    const double mse = rep.relative_weight_error * rep.relative_weight_error;
    EXPECT_LE(mse, bars[bits] * 1.03) << bits << " bpw";
    EXPECT_LT(mse, prev);
    prev = mse;
    EXPECT_NEAR(rel_err(dequantize(q), W), rep.relative_weight_error, 1e-4);
    EXPECT_NEAR(rep.proxy_loss, mse, 1e-6);
    EXPECT_GT(rep.seconds, 0.0);
    EXPECT_TRUE(rep.warnings.empty()) << rep.warnings;
  }
}

TEST(QuantizeMatrix, ZeroAndExtremeRowsWithoutRht) {
  // Without the transform rows keep their own magnitudes: a zero row stays exactly zero and
  // rows at 1e-30 and 1e30 are quantized relative to their own scale.
  const int rows = 24, cols = 72;
  auto W = gaussian(size_t(rows) * cols, 40);
  for (int c = 0; c < cols; ++c) {
    W[c] = 0.0f;
    W[size_t(1) * cols + c] *= 1e-30f;
    W[size_t(2) * cols + c] *= 1e30f;
  }
  for (int bits : {2, 3, 4}) {
    QuantizeOptions opt;
    opt.bits = bits;
    opt.use_rht = false;
    const auto D = dequantize(quantize_matrix(W, rows, cols, {}, opt));
    for (int c = 0; c < cols; ++c) ASSERT_EQ(D[c], 0.0f);
    for (int r : {1, 2}) {
      double e = 0, n = 0;
      for (int c = 0; c < cols; ++c) {
        const double w = W[size_t(r) * cols + c], d = D[size_t(r) * cols + c];
        e += (w - d) * (w - d);
        n += w * w;
      }
      EXPECT_LT(std::sqrt(e / n), 0.45) << "row " << r << ", " << bits << " bpw";
    }
  }
}

TEST(QuantizeMatrix, StorageMatchesBitWidth) {
  const int rows = 24, cols = 1008;
  const auto W = gaussian(size_t(rows) * cols, 12);
  for (int bits : {2, 3, 4}) {
    QuantizeOptions opt;
    opt.bits = bits;
    const auto q = quantize_matrix(W, rows, cols, {}, opt);
    const size_t code_bytes_total = size_t(rows) * cols * bits / 8;
    const size_t extra = q.stages.size() * rows * 4 + (rows + 7) / 8 + (cols + 7) / 8;
    EXPECT_EQ(q.storage_bytes(), code_bytes_total + extra);
  }
}

TEST(QuantizeMatrix, WithoutRhtReconstructsInTheOriginalBasis) {
  const int rows = 16, cols = 24;
  const auto W = gaussian(size_t(rows) * cols, 13);
  QuantizeOptions opt;
  opt.use_rht = false;
  QuantizeReport rep;
  const auto q = quantize_matrix(W, rows, cols, {}, opt, &rep);
  EXPECT_FALSE(q.rht);
  EXPECT_NEAR(rel_err(dequantize(q), W), rep.relative_weight_error, 1e-5);
  // Without the transform every group is quantized on its own: check one group directly.
  float rec[8];
  uint16_t code;
  const float scale = q.stages[0].scales[0];
  const Codebook cb = Codebook::E8P16;
  quantize_group(W.data(), std::span<const Codebook>(&cb, 1), &scale, &code, rec);
  EXPECT_EQ(code, q.stages[0].codes16()[0]);
}

TEST(QuantizeMatrix, MatvecReferenceEqualsDequantizeThenMultiply) {
  struct Shape {
    int rows, cols;
  };
  for (Shape s : {Shape{8, 8}, Shape{8, 24}, Shape{24, 72}, Shape{72, 8}, Shape{576, 1008},
                  Shape{1008, 576}, Shape{104, 72}}) {
    for (int bits : {2, 3, 4}) {
      const auto W = gaussian(size_t(s.rows) * s.cols, s.rows * 7 + s.cols + bits);
      QuantizeOptions opt;
      opt.bits = bits;
      const auto q = quantize_matrix(W, s.rows, s.cols, {}, opt);
      const auto D = dequantize(q);
      const int batch = 3;
      const auto x = gaussian(size_t(batch) * s.cols, 99);
      std::vector<float> y(size_t(batch) * s.rows);
      matvec_reference(q, x.data(), y.data(), batch);
      double err = 0, ref = 0;
      for (int b = 0; b < batch; ++b) {
        for (int r = 0; r < s.rows; ++r) {
          double acc = 0;
          for (int c = 0; c < s.cols; ++c) {
            acc += double(D[size_t(r) * s.cols + c]) * x[size_t(b) * s.cols + c];
          }
          const double d = acc - y[size_t(b) * s.rows + r];
          err += d * d;
          ref += acc * acc;
        }
      }
      EXPECT_LE(std::sqrt(err / ref), 2e-6) << s.rows << "x" << s.cols << " " << bits << " bpw";
    }
  }
}

TEST(QuantizeMatrix, BadInputsGiveDocumentedErrors) {
  const int rows = 16, cols = 24;
  auto W = gaussian(size_t(rows) * cols, 14);
  QuantizeOptions opt;
  std::string msg;
  EXPECT_EQ(error_kind_of([&] { quantize_matrix(W, 12, 32, {}, opt); }, &msg),
            ErrorKind::InvalidArgument);
  EXPECT_NE(msg.find("multiples of 8"), std::string::npos) << msg;
  EXPECT_EQ(error_kind_of([&] { quantize_matrix(W, 16, 32, {}, opt); }, &msg),
            ErrorKind::InvalidArgument);
  EXPECT_EQ(error_kind_of([&] {
              std::vector<float> H(10, 1.0f);
              quantize_matrix(W, rows, cols, H, opt);
            }, &msg),
            ErrorKind::InvalidArgument);
  EXPECT_NE(msg.find("Hessian"), std::string::npos) << msg;
  QuantizeOptions bad_bits;
  bad_bits.bits = 5;
  EXPECT_EQ(error_kind_of([&] { quantize_matrix(W, rows, cols, {}, bad_bits); }),
            ErrorKind::InvalidArgument);
  auto Wn = W;
  Wn[5 * cols + 7] = std::nanf("");
  EXPECT_EQ(error_kind_of([&] { quantize_matrix(Wn, rows, cols, {}, opt); }, &msg),
            ErrorKind::Numerical);
  EXPECT_NE(msg.find("[5, 7]"), std::string::npos) << msg;
  Wn[5 * cols + 7] = INFINITY;
  EXPECT_EQ(error_kind_of([&] { quantize_matrix(Wn, rows, cols, {}, opt); }), ErrorKind::Numerical);
}

TEST(QuantizeMatrix, NonFiniteHessianChannelsAreDroppedAndReported) {
  const int rows = 16, cols = 72;
  const auto W = gaussian(size_t(rows) * cols, 14);
  auto H = correlated_hessian(cols, 15);
  H[3 * cols + 4] = std::nanf("");
  H[50 * cols + 50] = INFINITY;
  QuantizeOptions opt;
  QuantizeReport rep;
  const auto q = quantize_matrix(W, rows, cols, H, opt, &rep);
  EXPECT_NE(rep.warnings.find("non-finite"), std::string::npos) << rep.warnings;
  EXPECT_NE(rep.warnings.find("[3, 4]"), std::string::npos) << rep.warnings;
  EXPECT_NE(rep.warnings.find("in 3 input channels"), std::string::npos) << rep.warnings;
  EXPECT_TRUE(std::isfinite(rep.proxy_loss));
  EXPECT_LT(rel_err(dequantize(q), W), 0.6);
  // All channels bad: the identity.
  std::vector<float> Hn(size_t(cols) * cols, std::nanf(""));
  QuantizeReport rep2;
  const auto q2 = quantize_matrix(W, rows, cols, Hn, opt, &rep2);
  EXPECT_NE(rep2.warnings.find("all zeros"), std::string::npos) << rep2.warnings;
  EXPECT_EQ(q2.stages[0].codes, quantize_matrix(W, rows, cols, {}, opt).stages[0].codes);
}

TEST(QuantizeMatrix, BadHessiansRaiseDampingAndReport) {
  const int rows = 16, cols = 72;
  const auto W = gaussian(size_t(rows) * cols, 16);
  QuantizeOptions opt;
  opt.damp = 0;
  // Singular: rank 5.
  const auto H1 = correlated_hessian(cols, 17, 5);
  QuantizeReport rep;
  quantize_matrix(W, rows, cols, H1, opt, &rep);
  EXPECT_GT(rep.damp_used, 0.0);
  EXPECT_NE(rep.warnings.find("not positive definite"), std::string::npos) << rep.warnings;
  EXPECT_TRUE(std::isfinite(rep.proxy_loss));
  // Indefinite: negative eigenvalues.
  auto H2 = correlated_hessian(cols, 18);
  for (int i = 0; i < cols; i += 3) H2[size_t(i) * cols + i] -= 5.0f;
  opt.damp = 0.01;
  QuantizeReport rep2;
  const auto q2 = quantize_matrix(W, rows, cols, H2, opt, &rep2);
  EXPECT_GT(rep2.damp_used, 0.01);
  EXPECT_FALSE(rep2.warnings.empty());
  EXPECT_LT(rel_err(dequantize(q2), W), 0.5);
  // All zeros: identity.
  std::vector<float> H3(size_t(cols) * cols, 0.0f);
  QuantizeReport rep3;
  quantize_matrix(W, rows, cols, H3, opt, &rep3);
  EXPECT_NE(rep3.warnings.find("all zeros"), std::string::npos) << rep3.warnings;
  // Negative definite: damping relative to max |H| (the mean diagonal is negative) until the
  // damped matrix is positive definite; reported, and the result is usable.
  std::vector<float> H4(size_t(cols) * cols, 0.0f);
  for (int i = 0; i < cols; ++i) H4[size_t(i) * cols + i] = -1.0f;
  H4[0] = 1e-3f;
  QuantizeReport rep4;
  const auto q4 = quantize_matrix(W, rows, cols, H4, opt, &rep4);
  EXPECT_GE(rep4.damp_used, 1.0);
  EXPECT_NE(rep4.warnings.find("non-positive mean diagonal"), std::string::npos) << rep4.warnings;
  EXPECT_LT(rel_err(dequantize(q4), W), 0.5);
}

TEST(Pack, BitExactRoundTrip) {
  for (int bits : {2, 3, 4}) {
    const int rows = 24, cols = 72;
    const auto W = gaussian(size_t(rows) * cols, 20 + bits);
    QuantizeOptions opt;
    opt.bits = bits;
    opt.use_rht = bits != 3;  // one case without the transform
    const auto q = quantize_matrix(W, rows, cols, correlated_hessian(cols, 3), opt);
    const auto bytes = pack(q);
    EXPECT_EQ(bytes.size() % 8, 0u);
    const auto u = unpack(bytes);
    EXPECT_EQ(u.rows, q.rows);
    EXPECT_EQ(u.cols, q.cols);
    EXPECT_EQ(u.bits, q.bits);
    EXPECT_EQ(u.rht, q.rht);
    ASSERT_EQ(u.stages.size(), q.stages.size());
    for (size_t s = 0; s < q.stages.size(); ++s) {
      EXPECT_EQ(u.stages[s].codebook, q.stages[s].codebook);
      EXPECT_EQ(u.stages[s].codes, q.stages[s].codes);
      EXPECT_EQ(0, std::memcmp(u.stages[s].scales.data(), q.stages[s].scales.data(), rows * 4));
    }
    EXPECT_EQ(u.sign_in, q.sign_in);
    EXPECT_EQ(u.sign_out, q.sign_out);
    EXPECT_EQ(u.plan_in.q, q.plan_in.q);
    EXPECT_EQ(pack(u), bytes);
    EXPECT_EQ(dequantize(u), dequantize(q));
  }
}

TEST(Pack, RejectsTruncatedCorruptedAndUnknownData) {
  const int rows = 16, cols = 24;
  const auto q = quantize_matrix(gaussian(size_t(rows) * cols, 30), rows, cols, {}, QuantizeOptions{});
  const auto bytes = pack(q);
  std::string msg;
  for (size_t len : {size_t(0), size_t(3), size_t(31), size_t(40), bytes.size() / 2, bytes.size() - 1}) {
    std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + len);
    EXPECT_EQ(error_kind_of([&] { unpack(cut); }, &msg), ErrorKind::Format) << len;
    EXPECT_NE(msg.find("truncated"), std::string::npos) << len << ": " << msg;
  }
  auto v = bytes;
  v[4] = 2;  // version 2
  EXPECT_EQ(error_kind_of([&] { unpack(v); }, &msg), ErrorKind::Format);
  EXPECT_NE(msg.find("version 2"), std::string::npos) << msg;
  v = bytes;
  v[0] = 'X';
  EXPECT_EQ(error_kind_of([&] { unpack(v); }, &msg), ErrorKind::Format);
  EXPECT_NE(msg.find("magic"), std::string::npos) << msg;
  v = bytes;
  v[bytes.size() / 2] ^= 0x10;  // flip one bit of the payload
  EXPECT_EQ(error_kind_of([&] { unpack(v); }, &msg), ErrorKind::Format);
  EXPECT_NE(msg.find("checksum"), std::string::npos) << msg;
  v = bytes;
  v.push_back(0);
  EXPECT_EQ(error_kind_of([&] { unpack(v); }), ErrorKind::Format);
  v = bytes;
  v[16] = 5;  // bits = 5
  EXPECT_EQ(error_kind_of([&] { unpack(v); }), ErrorKind::Format);
}

TEST(QuantizeMatrix, ScaleRefitNeverRaisesTheProxyLoss) {
  // The refit changes only the scales (the codes are those of the unrefit run) and lowers, or
  // keeps, the proxy loss; without the transform the rows are the stored rows, and the loss of
  // every row is lowered or kept (with it, rows of the transformed domain are refit, and the
  // total is what is invariant).
  struct Case {
    int rows, cols, bits;
    uint64_t seed;
  };
  for (Case c : {Case{8, 24, 2, 21}, Case{24, 72, 3, 22}, Case{16, 192, 4, 23}, Case{40, 104, 2, 24},
                 Case{8, 1008, 3, 25}, Case{56, 136, 4, 26}}) {
    const auto W = gaussian(size_t(c.rows) * c.cols, c.seed, 0.05f);
    for (int samples : {c.cols / 3, 3 * c.cols}) {
      const auto H = correlated_hessian(c.cols, c.seed + 100, samples);
      for (int variant = 0; variant < 3; ++variant) {
        const bool ldlq = variant != 1, rht = variant != 2;
        QuantizeOptions opt;
        opt.bits = c.bits;
        opt.use_ldlq = ldlq;
        opt.use_rht = rht;
        opt.refit_scales = false;
        const auto q0 = quantize_matrix(W, c.rows, c.cols, H, opt);
        opt.refit_scales = true;
        QuantizeReport rep;
        const auto q1 = quantize_matrix(W, c.rows, c.cols, H, opt, &rep);
        const std::string what = "shape " + std::to_string(c.rows) + "x" + std::to_string(c.cols) + " bits " +
                                 std::to_string(c.bits) + " samples " + std::to_string(samples) + " ldlq " +
                                 std::to_string(ldlq) + " rht " + std::to_string(rht);
        ASSERT_EQ(q0.stages.size(), q1.stages.size());
        for (size_t s = 0; s < q0.stages.size(); ++s) EXPECT_EQ(q0.stages[s].codes, q1.stages[s].codes) << what;
        const auto D0 = dequantize(q0), D1 = dequantize(q1);
        for (int r = 0; r < c.rows && !rht; ++r) {
          // Row r's own loss, in double.
          auto row_loss = [&](const std::vector<float>& D) {
            double l = 0;
            for (int i = 0; i < c.cols; ++i) {
              double he = 0;
              for (int j = 0; j < c.cols; ++j)
                he += double(H[size_t(i) * c.cols + j]) * (double(D[size_t(r) * c.cols + j]) - W[size_t(r) * c.cols + j]);
              l += (double(D[size_t(r) * c.cols + i]) - W[size_t(r) * c.cols + i]) * he;
            }
            return l;
          };
          const double l0 = row_loss(D0), l1 = row_loss(D1);
          EXPECT_LE(l1, l0 * (1 + 1e-4) + 1e-12) << what << " row " << r;
        }
        const double p0 = proxy_loss(W, D0, H, c.rows, c.cols), p1 = proxy_loss(W, D1, H, c.rows, c.cols);
        EXPECT_LE(p1, p0 * (1 + 1e-5)) << what;
        EXPECT_NEAR(rep.proxy_loss, p1, 0.02 * p1 + 1e-9) << what;
        for (const auto& st : q1.stages)
          for (float sc : st.scales) EXPECT_GT(sc, 0.0f) << what;
      }
    }
  }
}

TEST(QuantizeMatrix, ScaleRefitLowersTheLossOfACorrelatedLayer) {
  const int rows = 72, cols = 576;
  const auto W = gaussian(size_t(rows) * cols, 31, 0.02f);
  const auto H = correlated_hessian(cols, 32);
  for (int bits : {2, 3, 4}) {
    QuantizeOptions opt;
    opt.bits = bits;
    opt.refit_scales = false;
    QuantizeReport r0, r1;
    quantize_matrix(W, rows, cols, H, opt, &r0);
    opt.refit_scales = true;
    quantize_matrix(W, rows, cols, H, opt, &r1);
    EXPECT_LT(r1.proxy_loss, r0.proxy_loss) << bits << " bpw";
    std::printf("%d bpw: proxy loss %.5f without scale refit, %.5f with\n", bits, r0.proxy_loss, r1.proxy_loss);
  }
}

// Inputs x_fp (n, cols) and x_q = x_fp + noise, the statistics H = x_qᵀx_q/n and
// Δ = (x_fp − x_q)ᵀx_q/n in double, returned as float.
struct AsymProblem {
  std::vector<float> H, Delta;
  std::vector<double> xfp, xq;
};
AsymProblem asym_problem(int n, int cols, double noise, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g;
  AsymProblem p;
  p.xfp.resize(size_t(n) * cols);
  p.xq.resize(p.xfp.size());
  for (int t = 0; t < n; ++t) {
    double prev = g(rng);
    for (int i = 0; i < cols; ++i) {
      prev = 0.8 * prev + 0.6 * g(rng);
      p.xfp[size_t(t) * cols + i] = prev;
      p.xq[size_t(t) * cols + i] = prev + noise * g(rng);
    }
  }
  p.H.assign(size_t(cols) * cols, 0.0f);
  p.Delta.assign(p.H.size(), 0.0f);
  for (int i = 0; i < cols; ++i)
    for (int j = 0; j < cols; ++j) {
      double h = 0, d = 0;
      for (int t = 0; t < n; ++t) {
        h += p.xq[size_t(t) * cols + i] * p.xq[size_t(t) * cols + j];
        d += (p.xfp[size_t(t) * cols + i] - p.xq[size_t(t) * cols + i]) * p.xq[size_t(t) * cols + j];
      }
      p.H[size_t(i) * cols + j] = float(h / n);
      p.Delta[size_t(i) * cols + j] = float(d / n);
    }
  return p;
}

// E‖A x_q − W x_fp‖² over the samples.
double asym_loss(const std::vector<float>& A, const std::vector<float>& W, const AsymProblem& p, int rows, int cols) {
  const size_t n = p.xq.size() / cols;
  double l = 0;
  for (size_t t = 0; t < n; ++t)
    for (int r = 0; r < rows; ++r) {
      double e = 0;
      for (int i = 0; i < cols; ++i)
        e += double(A[size_t(r) * cols + i]) * p.xq[t * cols + i] - double(W[size_t(r) * cols + i]) * p.xfp[t * cols + i];
      l += e * e;
    }
  return l / double(n);
}

TEST(AsymmetricTarget, EqualInputsGiveThePlainTarget) {
  const int rows = 24, cols = 104;
  const auto W = gaussian(size_t(rows) * cols, 41);
  const AsymProblem p = asym_problem(300, cols, 0.0, 42);
  for (double damp : {0.0, 0.01, 1.0}) {
    const auto T = asymmetric_target(W, rows, cols, p.H, p.Delta, damp, 1.0);
    EXPECT_EQ(T, W) << "damp " << damp;
  }
  // And so does alpha = 0 with unequal inputs.
  const AsymProblem p2 = asym_problem(300, cols, 0.3, 43);
  EXPECT_EQ(asymmetric_target(W, rows, cols, p2.H, p2.Delta, 0.01, 0.0), W);
}

TEST(AsymmetricTarget, MinimisesTheOutputErrorAgainstTheUnquantizedInputs) {
  const int rows = 16, cols = 72;
  const auto W = gaussian(size_t(rows) * cols, 51);
  const AsymProblem p = asym_problem(500, cols, 0.3, 52);
  const auto T = asymmetric_target(W, rows, cols, p.H, p.Delta, 0.0, 1.0);
  const double base = asym_loss(W, W, p, rows, cols), best = asym_loss(T, W, p, rows, cols);
  EXPECT_LT(best, 0.8 * base);
  // A stationary point: small perturbations of T do not lower the loss.
  std::mt19937_64 rng(53);
  std::normal_distribution<float> g;
  for (int trial = 0; trial < 5; ++trial) {
    auto P = T;
    for (float& v : P) v += 1e-2f * g(rng);
    EXPECT_GE(asym_loss(P, W, p, rows, cols), best * (1 - 1e-6));
  }
  // Half strength lies in between; damping moves the target towards W.
  const auto half = asymmetric_target(W, rows, cols, p.H, p.Delta, 0.0, 0.5);
  const double lh = asym_loss(half, W, p, rows, cols);
  EXPECT_LT(lh, base);
  EXPECT_GT(lh, best);
  const auto damped = asymmetric_target(W, rows, cols, p.H, p.Delta, 0.1, 1.0);
  EXPECT_LT(rel_err(damped, W), rel_err(T, W));
}

TEST(AsymmetricTarget, ResidualTermAbsorbsThePredictableResidualError) {
  // r_fp − r_q = G x_q + noise: the target minimises E‖W' x_q + r_q − W x_fp − r_fp‖².
  const int rows = 16, cols = 40, n = 400;
  const auto W = gaussian(size_t(rows) * cols, 71);
  const AsymProblem p = asym_problem(n, cols, 0.2, 72);
  const auto Gm = gaussian(size_t(rows) * cols, 73, 0.1f);
  std::mt19937_64 rng(74);
  std::normal_distribution<double> g;
  std::vector<double> rd(size_t(n) * rows);
  for (int t = 0; t < n; ++t)
    for (int r = 0; r < rows; ++r) {
      double v = 0.05 * g(rng);
      for (int i = 0; i < cols; ++i) v += double(Gm[size_t(r) * cols + i]) * p.xq[size_t(t) * cols + i];
      rd[size_t(t) * rows + r] = v;
    }
  std::vector<float> R(size_t(rows) * cols);
  for (int r = 0; r < rows; ++r)
    for (int i = 0; i < cols; ++i) {
      double v = 0;
      for (int t = 0; t < n; ++t) v += rd[size_t(t) * rows + r] * p.xq[size_t(t) * cols + i];
      R[size_t(r) * cols + i] = float(v / n);
    }
  auto loss = [&](const std::vector<float>& A) {
    double l = 0;
    for (int t = 0; t < n; ++t)
      for (int r = 0; r < rows; ++r) {
        double e = -rd[size_t(t) * rows + r];
        for (int i = 0; i < cols; ++i)
          e += double(A[size_t(r) * cols + i]) * p.xq[size_t(t) * cols + i] -
               double(W[size_t(r) * cols + i]) * p.xfp[size_t(t) * cols + i];
        l += e * e;
      }
    return l / n;
  };
  const auto T = asymmetric_target(W, rows, cols, p.H, p.Delta, 0.0, 1.0, R, 1.0);
  const auto T0 = asymmetric_target(W, rows, cols, p.H, p.Delta, 0.0, 1.0);
  const double best = loss(T);
  EXPECT_LT(best, 0.9 * loss(T0));
  std::mt19937_64 rng2(75);
  std::normal_distribution<float> gf;
  for (int trial = 0; trial < 5; ++trial) {
    auto P = T;
    for (float& v : P) v += 1e-2f * gf(rng2);
    EXPECT_GE(loss(P), best * (1 - 1e-6));
  }
  // beta = 0, or no R, is the plain asymmetric target.
  EXPECT_EQ(asymmetric_target(W, rows, cols, p.H, p.Delta, 0.0, 1.0, R, 0.0), T0);
  EXPECT_EQ(error_kind_of([&] { asymmetric_target(W, rows, cols, p.H, p.Delta, 0.0, 1.0, std::vector<float>(7), 1.0); }),
            ErrorKind::InvalidArgument);
}

TEST(AsymmetricTarget, ChecksItsArguments) {
  const int rows = 8, cols = 16;
  const auto W = gaussian(size_t(rows) * cols, 61);
  std::vector<float> H(size_t(cols) * cols, 0.0f), D(H.size(), 0.0f);
  EXPECT_EQ(error_kind_of([&] { asymmetric_target(W, rows, cols + 8, H, D, 0.01, 1.0); }), ErrorKind::InvalidArgument);
  EXPECT_EQ(error_kind_of([&] { asymmetric_target(W, rows, cols, H, std::vector<float>(10), 0.01, 1.0); }),
            ErrorKind::InvalidArgument);
  D[3] = std::nanf("");
  EXPECT_EQ(error_kind_of([&] { asymmetric_target(W, rows, cols, H, D, 0.01, 1.0); }), ErrorKind::Numerical);
}


}  // namespace
}  // namespace glq::codec
