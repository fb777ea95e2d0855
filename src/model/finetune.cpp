// End-to-end tuning of row gains and norm gains (see glq/model/finetune.hpp).
//
// The network is run here on its own, in float (tuning) or double (the gradient tests), with
// plain row-major (tokens, features) matrices and BLAS products; the forward pass is the one of
// Model::run_layer (same RoPE, same causal grouped-query attention), which the tests check
// against Model's logits. Flat parameter order: for each layer, the row gains of its linears in
// kAllLinearKinds order, then the attention-norm and MLP-norm factors; then the final-norm
// factors.
#include "glq/model/finetune.hpp"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include <fmt/format.h>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/error.hpp"
#include "glq/kernels/cpu.hpp"
#include "glq/transform/hadamard.hpp"
#include "glq/util/thread_pool.hpp"

namespace glq::model {

namespace {

// fn(begin, end) over chunks of [0, n) on the process's worker pool (`--threads`; OpenBLAS has
// its own). Each index is computed exactly as one thread would, and nothing is summed across
// chunks, so the tuning's results do not depend on the number of threads.
template <typename F>
void par(int64_t n, int64_t grain, F&& fn) {
  ThreadPool::global().parallel_for(n, [&](int64_t begin, int64_t end, int) { fn(begin, end); }, grain);
}

using Clock = std::chrono::steady_clock;

void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb, float beta,
          float* c, int ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb,
              beta, c, ldc);
}
void gemm(bool ta, bool tb, int m, int n, int k, double alpha, const double* a, int lda, const double* b, int ldb,
          double beta, double* c, int ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb,
              beta, c, ldc);
}

template <typename S>
std::vector<S> to_s(const float* p, size_t n) {
  return std::vector<S>(p, p + n);
}

// n = x / rms(x) per row (no gain), r = 1 / rms.
template <typename S>
void rms_forward(const S* x, int T, int d, double eps, S* n, S* r) {
  for (int t = 0; t < T; ++t) {
    const S* xr = x + size_t(t) * d;
    double ss = 0;
    for (int i = 0; i < d; ++i) ss += double(xr[i]) * xr[i];
    const S inv = S(1.0 / std::sqrt(ss / d + eps));
    r[t] = inv;
    for (int i = 0; i < d; ++i) n[size_t(t) * d + i] = xr[i] * inv;
  }
}

// dx (+)= r · (dn − n · ⟨dn, n⟩ / d) per row.
template <typename S>
void rms_backward(const S* dn, const S* n, const S* r, int T, int d, S* dx, bool add) {
  for (int t = 0; t < T; ++t) {
    const S* g = dn + size_t(t) * d;
    const S* nr = n + size_t(t) * d;
    double dot = 0;
    for (int i = 0; i < d; ++i) dot += double(g[i]) * nr[i];
    const S m = S(dot / d);
    S* o = dx + size_t(t) * d;
    for (int i = 0; i < d; ++i) {
      const S v = r[t] * (g[i] - nr[i] * m);
      o[i] = add ? o[i] + v : v;
    }
  }
}

// RoPE in the "rotate half" form at positions 0..T-1 (angles in float32, as Model computes them);
// inverse: the transpose (rotation by −angle).
template <typename S>
void rope(S* x, int T, int heads, int hd, const std::vector<float>& inv_freq, bool inverse) {
  const int half = hd / 2;
  std::vector<S> cs(half), sn(half);
  for (int t = 0; t < T; ++t) {
    for (int i = 0; i < half; ++i) {
      const float a = float(t) * inv_freq[size_t(i)];
      cs[size_t(i)] = S(std::cos(a));
      sn[size_t(i)] = inverse ? -S(std::sin(a)) : S(std::sin(a));
    }
    for (int h = 0; h < heads; ++h) {
      S* v = x + (size_t(t) * heads + h) * hd;
      for (int i = 0; i < half; ++i) {
        const S x1 = v[i], x2 = v[i + half];
        v[i] = x1 * cs[size_t(i)] - x2 * sn[size_t(i)];
        v[i + half] = x2 * cs[size_t(i)] + x1 * sn[size_t(i)];
      }
    }
  }
}

// v (count, n) ← rows of T(s ∘ v) (forward) or s ∘ Tᵀ v (transpose), float arithmetic, with the
// CPU kernels' transform for this machine's ISA (as the engine applies it), rows over the pool.
void out_transform(const transform::HadamardPlan& plan, const std::vector<float>& sign, float* v, int count, bool forward,
                   cpu::Isa isa) {
  const int n = plan.n;
  par(count, 8, [&](int64_t c0, int64_t c1) {
    if (forward)
      for (int64_t c = c0; c < c1; ++c)
        for (int i = 0; i < n; ++i) v[size_t(c) * n + i] *= sign[size_t(i)];
    cpu::hadamard_rows(plan, !forward, v + size_t(c0) * n, c1 - c0, isa);
    if (!forward)
      for (int64_t c = c0; c < c1; ++c)
        for (int i = 0; i < n; ++i) v[size_t(c) * n + i] *= sign[size_t(i)];
  });
}

// The same in double precision (the gradient tests: their central differences need a loss
// without float rounding): T = Q ⊗ H_b/√b with the plan's Q, its transpose Qᵀ ⊗ H_b/√b.
void out_transform(const transform::HadamardPlan& plan, const std::vector<float>& sign, double* v, int count, bool forward,
                   cpu::Isa /*isa*/) {
  const int n = plan.n, a = plan.a, b = plan.b;
  const double inv = 1.0 / std::sqrt(double(b));
  std::vector<double> tmp(static_cast<size_t>(n));
  auto fwht_rows = [&](double* x) {
    for (int r = 0; r < a; ++r) {
      double* row = x + size_t(r) * b;
      for (int h = 1; h < b; h <<= 1)
        for (int i = 0; i < b; i += 2 * h)
          for (int j = i; j < i + h; ++j) {
            const double u = row[j], w = row[j + h];
            row[j] = u + w;
            row[j + h] = u - w;
          }
      for (int j = 0; j < b; ++j) row[j] *= inv;
    }
  };
  auto mix = [&](double* x, bool transpose) {  // X ← Q X (or Qᵀ X), X (a, b)
    if (a == 1) return;
    std::fill(tmp.begin(), tmp.end(), 0.0);
    for (int i = 0; i < a; ++i)
      for (int k = 0; k < a; ++k) {
        const double q = plan.q[transpose ? size_t(k) * a + i : size_t(i) * a + k];
        for (int j = 0; j < b; ++j) tmp[size_t(i) * b + j] += q * x[size_t(k) * b + j];
      }
    std::copy(tmp.begin(), tmp.end(), x);
  };
  for (int c = 0; c < count; ++c) {
    double* x = v + size_t(c) * n;
    if (forward) {
      for (int i = 0; i < n; ++i) x[i] *= sign[size_t(i)];
      fwht_rows(x);
      mix(x, false);
    } else {
      mix(x, true);
      fwht_rows(x);
      for (int i = 0; i < n; ++i) x[i] *= sign[size_t(i)];
    }
  }
}

template <typename S>
struct Net {
  // A quantized linear's rows are those of W̃ = T_out S_out W (T_in S_in)ᵀ: its stage scales, and
  // so its row gains γ, act in the output's Hadamard domain, W(γ) = (T_out S_out)ᵀ diag(γ) T_out
  // S_out W. A dense linear's gains scale the rows of W itself (rht false).
  struct Lin {
    int rows = 0, cols = 0;
    std::vector<S> w;     // (rows, cols), without gains: the first stage alone where w2 is not empty
    std::vector<S> w2;    // (rows, cols): the later stages, when they have gains of their own
    int64_t off2 = -1;    // parameter offset of the later stages' row gains (-1: they share off's)
    std::vector<S> bias;  // (rows) or empty
    int64_t off = 0;      // parameter offset of its row gains
    int64_t boff = -1;    // parameter offset of its tuned bias (-1: none)
    S bscale = S(1);      // the tuned bias is bscale · θ: θ in units of the output's RMS
    mutable double probe_sq = 0, probe_n = 0;  // sums for the RMS (set_bias_scales)
    bool rht = false;
    transform::HadamardPlan plan_out;
    std::vector<float> sign_out;
  };
  struct Layer {
    Lin lin[7];
    std::vector<S> g1, g2;  // the model's norm weights (hidden)
    int64_t off1 = 0, off2 = 0;
  };
  int L = 0, d = 0, qd = 0, kvd = 0, f = 0, hd = 0, H = 0, KV = 0, V = 0;
  double eps = 1e-5;
  std::vector<float> inv_freq;
  std::vector<Layer> layers;
  std::vector<S> gf;       // final norm weight
  std::vector<S> gf_fp;    // the unquantized model's final norm weight (teacher)
  int64_t offf = 0, nparams = 0;
  bool tuned_bias = false;  // the linears' biases are parameters (after the gains, from `bias_start`)
  int64_t bias_start = 0;
  mutable bool probing = false;
  std::vector<S> head;     // (V, d)

  struct Cache {
    std::vector<S> n1, r1, zq, zk, zv, q, k, v, P, attn, zo, n2, r2, zg, zu, g, u, act, zd;
  };

  cpu::Isa isa = cpu::detect_isa();  // the output transforms' code (read once, not per call)

  // Builds the network from the model; quantized linears are dequantized.
  Net(const Model& m, const std::vector<float>& teacher_final_norm, bool with_bias, bool stage_gains) {
    const ModelConfig& c = m.config();
    L = c.num_layers;
    d = c.hidden_size;
    qd = c.q_dim();
    kvd = c.kv_dim();
    f = c.intermediate_size;
    hd = c.head_dim;
    H = c.num_heads;
    KV = c.num_kv_heads;
    V = c.vocab_size;
    eps = c.norm_eps;
    inv_freq = m.rope_inv_freq();
    int64_t off = 0;
    layers.resize(size_t(L));
    for (int l = 0; l < L; ++l) {
      const DecoderLayer& D = m.layer(l);
      Layer& Y = layers[size_t(l)];
      for (LinearKind k : kAllLinearKinds) {
        const Linear& src = D.linear(k);
        Lin& dst = Y.lin[int(k)];
        dst.rows = src.rows();
        dst.cols = src.cols();
        std::vector<float> w;
        if (const auto* q = src.quantized_weight(); q && q->rht) {
          dst.rht = true;
          dst.plan_out = q->plan_out;
          dst.sign_out = q->sign_out;
        }
        if (const auto* q = src.quantized_weight(); q && stage_gains && q->stages.size() > 1) {
          // First stage and later stages apart: each its own gains.
          codec::QuantizedMatrix first = *q, later = *q;
          for (size_t st = 1; st < first.stages.size(); ++st) std::fill(first.stages[st].scales.begin(), first.stages[st].scales.end(), 0.0f);
          std::fill(later.stages[0].scales.begin(), later.stages[0].scales.end(), 0.0f);
          w = codec::dequantize(first);
          const std::vector<float> w2 = codec::dequantize(later);
          dst.w2 = to_s<S>(w2.data(), w2.size());
        } else if (src.quantized_weight()) w = codec::dequantize(*src.quantized_weight());
        else if (src.dense_weight()) w.assign(src.dense_weight(), src.dense_weight() + size_t(src.rows()) * src.cols());
        else w = src.to_dense();
        dst.w = to_s<S>(w.data(), w.size());
        dst.bias = to_s<S>(src.bias().data(), src.bias().size());
        dst.off = off;
        off += dst.rows;
      }
      Y.g1 = to_s<S>(D.attn_norm.data(), D.attn_norm.size());
      Y.g2 = to_s<S>(D.mlp_norm.data(), D.mlp_norm.size());
      Y.off1 = off;
      off += d;
      Y.off2 = off;
      off += d;
    }
    gf = to_s<S>(m.final_norm().data(), m.final_norm().size());
    gf_fp = to_s<S>(teacher_final_norm.data(), teacher_final_norm.size());
    if (int(gf_fp.size()) != d) throw_mismatch("finetune: teacher final norm length", std::to_string(d), std::to_string(gf_fp.size()));
    offf = off;
    off += d;
    bias_start = off;
    tuned_bias = with_bias;
    if (with_bias)
      for (auto& Y : layers)
        for (auto& l : Y.lin) {
          l.boff = off;
          off += l.rows;
        }
    for (auto& Y : layers)
      for (auto& l : Y.lin)
        if (!l.w2.empty()) {
          l.off2 = off;
          off += l.rows;
        }
    nparams = off;
    const Linear& hl = m.lm_head();
    if (hl.rows() != V || hl.cols() != d) throw_invalid("finetune: the output head's shape does not match the vocabulary");
    std::vector<float> hw;
    if (hl.dense_weight()) hw.assign(hl.dense_weight(), hl.dense_weight() + size_t(V) * d);
    else if (hl.is_quantized()) throw_unsupported("finetune: a quantized output head is not supported (keep it in 16 bits)");
    else hw = hl.to_dense();
    head = to_s<S>(hw.data(), hw.size());
  }

  // The parameters' starting point: gains 1, biases 0.
  std::vector<S> initial() const {
    std::vector<S> theta(size_t(nparams), S(1));
    for (const auto& Y : layers)
      for (const auto& l : Y.lin)
        if (l.boff >= 0) std::fill(theta.begin() + l.boff, theta.begin() + l.boff + l.rows, S(0));
    return theta;
  }

  // Elements of a linear's Z for T tokens (the later stages' part follows the first's).
  static size_t z_size(const Lin& l, int T) { return size_t(T) * l.rows * (l.w2.empty() ? 1 : 2); }

  // Y = A^T((A X Wᵀ) ∘ γ) + b₀ + b with A = T_out S_out (the identity for a dense linear); Z = A X Wᵀ,
  // the output in the domain where the gains act. With later-stage gains γ₂: Y = A^T(γ ∘ A X W₁ᵀ +
  // γ₂ ∘ A X W₂ᵀ) + ..., Z holding both products (z_size).
  void lin_forward(const Lin& l, const S* theta, const S* X, int T, S* Z, S* Y) const {
    const bool two = !l.w2.empty();
    const size_t n = size_t(T) * l.rows;
    gemm(false, true, T, l.rows, l.cols, S(1), X, l.cols, l.w.data(), l.cols, S(0), Z, l.rows);
    if (two) gemm(false, true, T, l.rows, l.cols, S(1), X, l.cols, l.w2.data(), l.cols, S(0), Z + n, l.rows);
    if (l.rht) out_transform(l.plan_out, l.sign_out, Z, two ? 2 * T : T, true, isa);
    const S* gam = theta + l.off;
    const size_t R = size_t(l.rows);
    for (int t = 0; t < T; ++t)
      for (size_t r = 0; r < R; ++r) Y[size_t(t) * R + r] = Z[size_t(t) * R + r] * gam[r];
    if (two) {
      const S* gam2 = theta + l.off2;
      for (int t = 0; t < T; ++t)
        for (size_t r = 0; r < R; ++r) Y[size_t(t) * R + r] += Z[n + size_t(t) * R + r] * gam2[r];
    }
    if (l.rht) out_transform(l.plan_out, l.sign_out, Y, T, false, isa);
    if (!l.bias.empty())
      for (int t = 0; t < T; ++t)
        for (size_t r = 0; r < R; ++r) Y[size_t(t) * R + r] += l.bias[r];
    if (probing) {
      for (size_t i = 0; i < n; ++i) l.probe_sq += double(Y[i]) * double(Y[i]);
      l.probe_n += double(n);
    }
    if (l.boff >= 0)
      for (int t = 0; t < T; ++t)
        for (size_t r = 0; r < R; ++r) Y[size_t(t) * R + r] += l.bscale * theta[l.boff + int64_t(r)];
  }

  // The biases' units: each linear's output RMS over the window x0 (T tokens) with the factors
  // at their start, so that Adam's step means the same for a bias as for a gain.
  void set_bias_scales(const S* x0, int T) {
    if (!tuned_bias) return;
    const std::vector<S> theta = initial();
    std::vector<S> x(x0, x0 + size_t(T) * d);
    Cache c;
    probing = true;
    for (int l = 0; l < L; ++l) layer_forward(l, theta.data(), x.data(), T, c);
    probing = false;
    for (auto& Y : layers)
      for (auto& l : Y.lin) {
        l.bscale = S(std::max(1e-6, std::sqrt(l.probe_sq / std::max(1.0, l.probe_n))));
        l.probe_sq = l.probe_n = 0;
      }
  }

  // From dY (overwritten): the row gains' and bias's gradients, dX (+)= (A^T((A dY) ∘ γ)) W (and
  // (+)= (A^T((A dY) ∘ γ₂)) W₂ with later-stage gains).
  void lin_backward(const Lin& l, const S* theta, const S* Z, S* dY, int T, S* dX, bool add, S* grad) const {
    const S* gam = theta + l.off;
    S* gg = grad + l.off;
    const bool two = !l.w2.empty();
    const size_t n = size_t(T) * l.rows;
    if (l.boff >= 0)
      par(l.rows, 16, [&](int64_t r0, int64_t r1) {
        for (int t = 0; t < T; ++t)
          for (int64_t r = r0; r < r1; ++r) grad[l.boff + r] += l.bscale * dY[size_t(t) * l.rows + r];
      });
    if (l.rht) out_transform(l.plan_out, l.sign_out, dY, T, true, isa);
    std::vector<S> d2(two ? n : 0);  // A dY ∘ γ₂
    const S* gam2 = two ? theta + l.off2 : nullptr;
    S* gg2 = two ? grad + l.off2 : nullptr;
    par(l.rows, 16, [&](int64_t r0, int64_t r1) {  // each row's sums over t in the same order
      for (int t = 0; t < T; ++t)
        for (int64_t r = r0; r < r1; ++r) {
          const size_t i = size_t(t) * l.rows + r;
          const S d = dY[i];
          gg[r] += d * Z[i];
          dY[i] = d * gam[r];
          if (two) {
            gg2[r] += d * Z[n + i];
            d2[i] = d * gam2[r];
          }
        }
    });
    if (l.rht) out_transform(l.plan_out, l.sign_out, dY, T, false, isa);
    gemm(false, false, T, l.cols, l.rows, S(1), dY, l.rows, l.w.data(), l.cols, add ? S(1) : S(0), dX, l.cols);
    if (two) {
      if (l.rht) out_transform(l.plan_out, l.sign_out, d2.data(), T, false, isa);
      gemm(false, false, T, l.cols, l.rows, S(1), d2.data(), l.rows, l.w2.data(), l.cols, S(1), dX, l.cols);
    }
  }

  // a = n ∘ g ∘ β.
  void gain_forward(const S* n, const std::vector<S>& g, const S* beta, int T, S* a) const {
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < d; ++i) a[size_t(t) * d + i] = n[size_t(t) * d + i] * g[size_t(i)] * beta[i];
  }
  // From da: dβ += Σ da ∘ n ∘ g; dn = da ∘ g ∘ β (in place in da).
  void gain_backward(const S* n, const std::vector<S>& g, const S* beta, int T, S* da, S* dbeta) const {
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < d; ++i) {
        const size_t j = size_t(t) * d + i;
        dbeta[i] += da[j] * n[j] * g[size_t(i)];
        da[j] *= g[size_t(i)] * beta[i];
      }
  }

  // Layer l applied to x (T, d) in place; the cache (if given) keeps what the backward needs.
  void layer_forward(int l, const S* theta, S* x, int T, Cache& c) const {
    const Layer& Y = layers[size_t(l)];
    const size_t Td = size_t(T) * d;
    c.n1.resize(Td);
    c.r1.resize(static_cast<size_t>(T));
    rms_forward(x, T, d, eps, c.n1.data(), c.r1.data());
    std::vector<S> a(Td);
    gain_forward(c.n1.data(), Y.g1, theta + Y.off1, T, a.data());
    c.zq.resize(z_size(Y.lin[int(LinearKind::Q)], T));
    c.q.resize(size_t(T) * qd);
    c.zk.resize(z_size(Y.lin[int(LinearKind::K)], T));
    c.k.resize(size_t(T) * kvd);
    c.zv.resize(z_size(Y.lin[int(LinearKind::V)], T));
    c.v.resize(size_t(T) * kvd);
    lin_forward(Y.lin[int(LinearKind::Q)], theta, a.data(), T, c.zq.data(), c.q.data());
    lin_forward(Y.lin[int(LinearKind::K)], theta, a.data(), T, c.zk.data(), c.k.data());
    lin_forward(Y.lin[int(LinearKind::V)], theta, a.data(), T, c.zv.data(), c.v.data());
    rope(c.q.data(), T, H, hd, inv_freq, false);
    rope(c.k.data(), T, KV, hd, inv_freq, false);
    // Causal attention per query head.
    const int group = H / KV;
    const S sc = S(1.0 / std::sqrt(double(hd)));
    c.P.assign(size_t(H) * T * T, S(0));
    c.attn.resize(size_t(T) * qd);
    for (int h = 0; h < H; ++h) {
      const int kh = h / group;
      S* P = c.P.data() + size_t(h) * T * T;
      gemm(false, true, T, T, hd, sc, c.q.data() + h * hd, qd, c.k.data() + kh * hd, kvd, S(0), P, T);
      par(T, 8, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          S* row = P + size_t(t) * T;
          S mx = row[0];
          for (int64_t j = 1; j <= t; ++j) mx = std::max(mx, row[j]);
          S sum = 0;
          for (int64_t j = 0; j <= t; ++j) sum += (row[j] = std::exp(row[j] - mx));
          const S inv = S(1) / sum;
          for (int64_t j = 0; j <= t; ++j) row[j] *= inv;
          for (int64_t j = t + 1; j < T; ++j) row[j] = S(0);
        }
      });
      gemm(false, false, T, hd, T, S(1), P, T, c.v.data() + kh * hd, kvd, S(0), c.attn.data() + h * hd, qd);
    }
    c.zo.resize(z_size(Y.lin[int(LinearKind::O)], T));
    std::vector<S> yo(Td);
    lin_forward(Y.lin[int(LinearKind::O)], theta, c.attn.data(), T, c.zo.data(), yo.data());
    for (size_t i = 0; i < Td; ++i) x[i] += yo[i];
    c.n2.resize(Td);
    c.r2.resize(static_cast<size_t>(T));
    rms_forward(x, T, d, eps, c.n2.data(), c.r2.data());
    gain_forward(c.n2.data(), Y.g2, theta + Y.off2, T, a.data());
    const size_t Tf = size_t(T) * f;
    c.zg.resize(z_size(Y.lin[int(LinearKind::Gate)], T));
    c.g.resize(Tf);
    c.zu.resize(z_size(Y.lin[int(LinearKind::Up)], T));
    c.u.resize(Tf);
    lin_forward(Y.lin[int(LinearKind::Gate)], theta, a.data(), T, c.zg.data(), c.g.data());
    lin_forward(Y.lin[int(LinearKind::Up)], theta, a.data(), T, c.zu.data(), c.u.data());
    c.act.resize(Tf);
    par(int64_t(Tf), 256, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) c.act[size_t(i)] = c.g[size_t(i)] / (S(1) + std::exp(-c.g[size_t(i)])) * c.u[size_t(i)];
    });
    c.zd.resize(z_size(Y.lin[int(LinearKind::Down)], T));
    lin_forward(Y.lin[int(LinearKind::Down)], theta, c.act.data(), T, c.zd.data(), yo.data());
    for (size_t i = 0; i < Td; ++i) x[i] += yo[i];
  }

  // dx: d(layer output) in, d(layer input) out. c from layer_forward of the same input.
  void layer_backward(int l, const S* theta, Cache& c, S* dx, int T, S* grad) const {
    const Layer& Y = layers[size_t(l)];
    const size_t Td = size_t(T) * d, Tf = size_t(T) * f;
    // MLP: x_out = x_mid + down(act).
    std::vector<S> dy(dx, dx + Td);  // d(down output)
    std::vector<S> dact(Tf);
    lin_backward(Y.lin[int(LinearKind::Down)], theta, c.zd.data(), dy.data(), T, dact.data(), false, grad);
    std::vector<S> dg(Tf), du(Tf);
    par(int64_t(Tf), 256, [&](int64_t i0, int64_t i1) {
      for (size_t i = size_t(i0); i < size_t(i1); ++i) {
        const S g = c.g[i], s = S(1) / (S(1) + std::exp(-g));
        du[i] = dact[i] * g * s;
        dg[i] = dact[i] * c.u[i] * s * (S(1) + g * (S(1) - s));
      }
    });
    std::vector<S> da(Td);
    lin_backward(Y.lin[int(LinearKind::Gate)], theta, c.zg.data(), dg.data(), T, da.data(), false, grad);
    lin_backward(Y.lin[int(LinearKind::Up)], theta, c.zu.data(), du.data(), T, da.data(), true, grad);
    gain_backward(c.n2.data(), Y.g2, theta + Y.off2, T, da.data(), grad + Y.off2);
    rms_backward(da.data(), c.n2.data(), c.r2.data(), T, d, dx, true);  // dx is now d(x_mid)
    // Attention: x_mid = x_in + o(attn).
    dy.assign(dx, dx + Td);
    std::vector<S> dattn(size_t(T) * qd);
    lin_backward(Y.lin[int(LinearKind::O)], theta, c.zo.data(), dy.data(), T, dattn.data(), false, grad);
    std::vector<S> dq(size_t(T) * qd, S(0)), dk(size_t(T) * kvd, S(0)), dv(size_t(T) * kvd, S(0));
    const int group = H / KV;
    const S sc = S(1.0 / std::sqrt(double(hd)));
    std::vector<S> dP(size_t(T) * T);
    for (int h = 0; h < H; ++h) {
      const int kh = h / group;
      const S* P = c.P.data() + size_t(h) * T * T;
      gemm(false, true, T, T, hd, S(1), dattn.data() + h * hd, qd, c.v.data() + kh * hd, kvd, S(0), dP.data(), T);
      gemm(true, false, T, hd, T, S(1), P, T, dattn.data() + h * hd, qd, S(1), dv.data() + kh * hd, kvd);
      par(T, 8, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          S* dr = dP.data() + size_t(t) * T;
          const S* pr = P + size_t(t) * T;
          S dot = 0;
          for (int64_t j = 0; j <= t; ++j) dot += dr[j] * pr[j];
          for (int64_t j = 0; j <= t; ++j) dr[j] = pr[j] * (dr[j] - dot);
          for (int64_t j = t + 1; j < T; ++j) dr[j] = S(0);
        }
      });
      gemm(false, false, T, hd, T, sc, dP.data(), T, c.k.data() + kh * hd, kvd, S(0), dq.data() + h * hd, qd);
      gemm(true, false, T, hd, T, sc, dP.data(), T, c.q.data() + h * hd, qd, S(1), dk.data() + kh * hd, kvd);
    }
    rope(dq.data(), T, H, hd, inv_freq, true);
    rope(dk.data(), T, KV, hd, inv_freq, true);
    lin_backward(Y.lin[int(LinearKind::Q)], theta, c.zq.data(), dq.data(), T, da.data(), false, grad);
    lin_backward(Y.lin[int(LinearKind::K)], theta, c.zk.data(), dk.data(), T, da.data(), true, grad);
    lin_backward(Y.lin[int(LinearKind::V)], theta, c.zv.data(), dv.data(), T, da.data(), true, grad);
    gain_backward(c.n1.data(), Y.g1, theta + Y.off1, T, da.data(), grad + Y.off1);
    rms_backward(da.data(), c.n1.data(), c.r1.data(), T, d, dx, true);  // dx is now d(x_in)
  }

  // Mean KL(p_fp ‖ p_q) over the window's tokens; with grad, its gradient is added to grad.
  // x0: the embedding rows (T, d); teacher: the unquantized final hidden states (T, d).
  double loss(const S* theta, const S* x0, const float* teacher, int T, S* grad) const {
    const size_t Td = size_t(T) * d;
    std::vector<S> x(x0, x0 + Td);
    std::vector<std::vector<S>> inputs;
    Cache c;
    for (int l = 0; l < L; ++l) {
      if (grad) inputs.emplace_back(x);
      layer_forward(l, theta, x.data(), T, c);
    }
    std::vector<S> nf(Td), rf(static_cast<size_t>(T)), af(Td), nt(Td), rt(static_cast<size_t>(T)), at(Td);
    rms_forward(x.data(), T, d, eps, nf.data(), rf.data());
    gain_forward(nf.data(), gf, theta + offf, T, af.data());
    {
      const std::vector<S> ts = to_s<S>(teacher, Td);
      rms_forward(ts.data(), T, d, eps, nt.data(), rt.data());
      for (int t = 0; t < T; ++t)
        for (int i = 0; i < d; ++i) at[size_t(t) * d + i] = nt[size_t(t) * d + i] * gf_fp[size_t(i)];
    }
    std::vector<S> daf(grad ? Td : 0);
    const int chunk = 32;
    std::vector<S> ls(size_t(chunk) * V), lt(size_t(chunk) * V);
    std::vector<double> row_kl(static_cast<size_t>(chunk));
    double kl = 0;
    for (int t0 = 0; t0 < T; t0 += chunk) {
      const int n = std::min(chunk, T - t0);
      gemm(false, true, n, V, d, S(1), af.data() + size_t(t0) * d, d, head.data(), d, S(0), ls.data(), V);
      gemm(false, true, n, V, d, S(1), at.data() + size_t(t0) * d, d, head.data(), d, S(0), lt.data(), V);
      par(n, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          S* s = ls.data() + size_t(r) * V;
          const S* tt = lt.data() + size_t(r) * V;
          const S ms = *std::max_element(s, s + V), mt = *std::max_element(tt, tt + V);
          double zs = 0, zt = 0;
          for (int v = 0; v < V; ++v) {
            zs += std::exp(double(s[v] - ms));
            zt += std::exp(double(tt[v] - mt));
          }
          const double lzs = std::log(zs) + ms, lzt = std::log(zt) + mt;
          double row = 0;
          for (int v = 0; v < V; ++v) {
            const double lpt = tt[v] - lzt, lps = s[v] - lzs, pt = std::exp(lpt);
            row += pt * (lpt - lps);
            if (grad) s[v] = S((std::exp(lps) - pt) / T);
          }
          row_kl[size_t(r)] = row;
        }
      });
      for (int r = 0; r < n; ++r) kl += row_kl[size_t(r)];  // in row order, as one thread would
      if (grad) gemm(false, false, n, d, V, S(1), ls.data(), V, head.data(), d, S(0), daf.data() + size_t(t0) * d, d);
    }
    if (!grad) return kl / T;
    std::vector<S> dx(Td, S(0));
    gain_backward(nf.data(), gf, theta + offf, T, daf.data(), grad + offf);
    rms_backward(daf.data(), nf.data(), rf.data(), T, d, dx.data(), false);
    for (int l = L - 1; l >= 0; --l) {
      std::vector<S> xl = inputs[size_t(l)];
      layer_forward(l, theta, xl.data(), T, c);
      layer_backward(l, theta, c, dx.data(), T, grad);
    }
    return kl / T;
  }
};

template <typename S>
std::vector<S> embed_s(const Model& m, std::span<const int32_t> tokens) {
  std::vector<float> x(tokens.size() * size_t(m.hidden_size()));
  m.embed(tokens, x.data());
  return to_s<S>(x.data(), x.size());
}

}  // namespace

int64_t finetune_parameter_count(const Model& model, bool bias, bool stage_gains) {
  const ModelConfig& c = model.config();
  int64_t n = c.hidden_size;
  for (int l = 0; l < c.num_layers; ++l) {
    for (LinearKind k : kAllLinearKinds) {
      const Linear& lin = model.layer(l).linear(k);
      n += (bias ? 2 : 1) * int64_t(lin.rows());
      if (const auto* q = lin.quantized_weight(); stage_gains && q && q->stages.size() > 1) n += lin.rows();
    }
    n += 2 * c.hidden_size;
  }
  return n;
}

double finetune_loss_double(const Model& model, std::span<const int32_t> tokens, std::span<const float> teacher_hidden,
                            const std::vector<float>& teacher_final_norm, int64_t index, double delta,
                            std::vector<double>* grad, bool bias, bool stage_gains) {
  Net<double> net(model, teacher_final_norm, bias, stage_gains);
  std::vector<double> theta = net.initial();
  if (index >= 0) theta.at(size_t(index)) += delta;
  const int T = int(tokens.size());
  if (teacher_hidden.size() != size_t(T) * net.d) throw_invalid("finetune_loss_double: teacher_hidden size");
  const auto x0 = embed_s<double>(model, tokens);
  net.set_bias_scales(x0.data(), T);
  if (grad) grad->assign(size_t(net.nparams), 0.0);
  return net.loss(theta.data(), x0.data(), teacher_hidden.data(), T, grad ? grad->data() : nullptr);
}

double finetune_kl(const Model& model, const std::vector<std::vector<int32_t>>& tokens,
                   const std::vector<std::vector<float>>& teacher_hidden, const std::vector<float>& teacher_final_norm) {
  if (tokens.empty() || teacher_hidden.size() != tokens.size()) throw_invalid("finetune_kl: one block of hidden states per window");
  const Net<float> net(model, teacher_final_norm, false, false);
  const std::vector<float> theta = net.initial();
  double sum = 0;
  for (size_t w = 0; w < tokens.size(); ++w) {
    if (teacher_hidden[w].size() != tokens[w].size() * size_t(net.d)) throw_invalid("finetune_kl: hidden states of the wrong size");
    const auto x0 = embed_s<float>(model, tokens[w]);
    sum += net.loss(theta.data(), x0.data(), teacher_hidden[w].data(), int(tokens[w].size()), nullptr);
  }
  return sum / double(tokens.size());
}

FinetuneResult finetune(const Model& model, const std::vector<std::vector<int32_t>>& train_tokens,
                        const std::vector<std::vector<float>>& train_hidden,
                        const std::vector<std::vector<int32_t>>& val_tokens, const std::vector<std::vector<float>>& val_hidden,
                        const std::vector<float>& teacher_final_norm, const FinetuneSettings& s,
                        const FinetuneProgress& progress) {
  const auto t0 = Clock::now();
  auto note = [&](const std::string& m) {
    if (progress.note) progress.note(m);
  };
  if (train_hidden.size() != train_tokens.size() || val_hidden.size() != val_tokens.size())
    throw_invalid("finetune: one block of teacher hidden states per window");
  // Training windows first, then the held-out ones.
  std::vector<std::vector<int32_t>> tokens = train_tokens;
  std::vector<const std::vector<float>*> teacher_hidden;
  for (const auto& h : train_hidden) teacher_hidden.push_back(&h);
  for (size_t i = 0; i < val_tokens.size(); ++i) {
    tokens.push_back(val_tokens[i]);
    teacher_hidden.push_back(&val_hidden[i]);
  }
  const int N = int(tokens.size());
  if (N < 2) throw_invalid(fmt::format("finetune: needs at least 2 windows, got {}", N));
  if (s.lr <= 0 || !std::isfinite(s.lr)) throw_invalid(fmt::format("finetune: learning rate must be positive, got {}", s.lr));
  Net<float> net(model, teacher_final_norm, s.bias, s.stage_gains);
  for (int w = 0; w < N; ++w)
    if (teacher_hidden[size_t(w)]->size() != tokens[size_t(w)].size() * size_t(net.d))
      throw_invalid(fmt::format("finetune: window {}: teacher hidden states of the wrong size", w));
  net.set_bias_scales(embed_s<float>(model, tokens[0]).data(), int(tokens[0].size()));
  const int given = int(val_tokens.size());
  const int holdout = given > 0 ? given : s.holdout > 0 ? std::min(s.holdout, N - 1) : std::max(1, N / 8);
  const int train = N - holdout;
  if (train < 1) throw_invalid("finetune: no training windows");

  std::vector<float> theta = net.initial(), best = theta, grad(theta.size());
  std::vector<double> m1(theta.size(), 0.0), m2(theta.size(), 0.0);
  auto held_out_kl = [&](const std::vector<float>& th) {
    double sum = 0;
    for (int w = train; w < N; ++w) {
      const auto x0 = embed_s<float>(model, tokens[size_t(w)]);
      sum += net.loss(th.data(), x0.data(), teacher_hidden[size_t(w)]->data(), int(tokens[size_t(w)].size()), nullptr);
    }
    return sum / holdout;
  };
  FinetuneResult r;
  r.kl_before = held_out_kl(theta);
  double best_kl = r.kl_before;
  note(fmt::format("finetune: {} parameters, {} training and {} {} windows; held-out KL {:.5f} nats/token", net.nparams,
                   train, holdout, given > 0 ? "validation" : "held-out", r.kl_before));
  std::vector<int> order(static_cast<size_t>(train));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(s.seed);
  const double b1 = 0.9, b2 = 0.999, adam_eps = 1e-8;
  int64_t step = 0;
  const int total = s.epochs * train;
  const auto t_train = Clock::now();
  for (int e = 1; e <= s.epochs; ++e) {
    std::shuffle(order.begin(), order.end(), rng);
    double train_sum = 0;
    for (int i = 0; i < train; ++i) {
      const int w = order[size_t(i)];
      const auto x0 = embed_s<float>(model, tokens[size_t(w)]);
      std::fill(grad.begin(), grad.end(), 0.0f);
      train_sum += net.loss(theta.data(), x0.data(), teacher_hidden[size_t(w)]->data(), int(tokens[size_t(w)].size()), grad.data());
      ++step;
      const double c1 = 1 - std::pow(b1, double(step)), c2 = 1 - std::pow(b2, double(step));
      const double lr = s.lr * (1.0 - 0.9 * double(step - 1) / double(std::max(1, total)));  // linear decay to lr/10
      for (size_t j = 0; j < theta.size(); ++j) {
        const double g = grad[j];
        if (!std::isfinite(g)) throw Error(ErrorKind::Internal, fmt::format("finetune: non-finite gradient at parameter {}", j));
        m1[j] = b1 * m1[j] + (1 - b1) * g;
        m2[j] = b2 * m2[j] + (1 - b2) * g * g;
        theta[j] = float(theta[j] - lr * (m1[j] / c1) / (std::sqrt(m2[j] / c2) + adam_eps));
      }
      if (progress.step) {
        const int done = (e - 1) * train + i + 1;
        const double el = std::chrono::duration<double>(Clock::now() - t_train).count();
        progress.step(done, total, fmt::format("finetune epoch {}/{}", e, s.epochs), el / done * (total - done));
      }
    }
    const double kl = held_out_kl(theta);
    if (e == 1) r.train_kl_first = train_sum / train;
    r.epochs_run = e;
    const bool better = kl < best_kl;
    if (better) {
      best_kl = kl;
      best = theta;
      r.best_epoch = e;
    }
    const bool stop = e - r.best_epoch >= 2;  // two epochs in a row without a better held-out fit
    note(fmt::format("finetune epoch {}: training KL {:.5f}, held-out KL {:.5f}{}", e, train_sum / train, kl,
                     better ? "" : stop ? " (not better twice: stopping)" : " (not better)"));
    if (stop) break;
  }
  r.kl_after = best_kl;
  // The kept factors as gains.
  r.row_gain.resize(size_t(net.L) * 7);
  r.attn_norm.resize(size_t(net.L));
  r.mlp_norm.resize(size_t(net.L));
  for (int l = 0; l < net.L; ++l) {
    const auto& Y = net.layers[size_t(l)];
    for (int k = 0; k < 7; ++k) {
      const auto& lin = Y.lin[k];
      r.row_gain[size_t(l) * 7 + k].assign(best.begin() + lin.off, best.begin() + lin.off + lin.rows);
    }
    r.attn_norm[size_t(l)].resize(size_t(net.d));
    r.mlp_norm[size_t(l)].resize(size_t(net.d));
    for (int i = 0; i < net.d; ++i) {
      r.attn_norm[size_t(l)][size_t(i)] = Y.g1[size_t(i)] * best[size_t(Y.off1 + i)];
      r.mlp_norm[size_t(l)][size_t(i)] = Y.g2[size_t(i)] * best[size_t(Y.off2 + i)];
    }
  }
  if (s.stage_gains) {
    r.stage_gain.resize(size_t(net.L) * 7);
    for (int l = 0; l < net.L; ++l)
      for (int k = 0; k < 7; ++k) {
        const auto& lin = net.layers[size_t(l)].lin[k];
        if (lin.off2 >= 0) r.stage_gain[size_t(l) * 7 + k].assign(best.begin() + lin.off2, best.begin() + lin.off2 + lin.rows);
      }
  }
  r.final_norm.resize(size_t(net.d));
  for (int i = 0; i < net.d; ++i) r.final_norm[size_t(i)] = net.gf[size_t(i)] * best[size_t(net.offf + i)];
  if (s.bias) {
    r.bias.resize(size_t(net.L) * 7);
    for (int l = 0; l < net.L; ++l)
      for (int k = 0; k < 7; ++k) {
        const auto& lin = net.layers[size_t(l)].lin[k];
        auto& b = r.bias[size_t(l) * 7 + k];
        b.resize(size_t(lin.rows));
        for (int i = 0; i < lin.rows; ++i)
          b[size_t(i)] = lin.bscale * best[size_t(lin.boff + i)] + (lin.bias.empty() ? 0.0f : float(lin.bias[size_t(i)]));
      }
  }
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return r;
}

void apply_finetune(Model& model, const FinetuneResult& r) {
  const int L = model.num_layers();
  if (r.row_gain.size() != size_t(L) * 7 || r.attn_norm.size() != size_t(L) || r.mlp_norm.size() != size_t(L) ||
      (!r.bias.empty() && r.bias.size() != size_t(L) * 7) || (!r.stage_gain.empty() && r.stage_gain.size() != size_t(L) * 7))
    throw_invalid("apply_finetune: result does not match the model's layers");
  for (int l = 0; l < L; ++l) {
    DecoderLayer& D = model.layer(l);
    for (LinearKind k : kAllLinearKinds) {
      Linear& lin = D.linear(k);
      const auto& gain = r.row_gain[size_t(l) * 7 + int(k)];
      if (int(gain.size()) != lin.rows()) throw_invalid("apply_finetune: row gains of the wrong length");
      std::vector<float> bias(lin.bias().begin(), lin.bias().end());
      if (!r.bias.empty()) {
        const auto& b = r.bias[size_t(l) * 7 + int(k)];
        if (int(b.size()) != lin.rows()) throw_invalid("apply_finetune: a bias of the wrong length");
        bias = b;
      }
      const std::vector<float>* later = r.stage_gain.empty() || r.stage_gain[size_t(l) * 7 + int(k)].empty()
                                            ? nullptr : &r.stage_gain[size_t(l) * 7 + int(k)];
      if (later && (!lin.quantized_weight() || lin.quantized_weight()->stages.size() < 2 || int(later->size()) != lin.rows()))
        throw_invalid("apply_finetune: later-stage gains for a linear without later stages, or of the wrong length");
      if (const auto* q = lin.quantized_weight()) {
        codec::QuantizedMatrix m = *q;
        for (size_t st = 0; st < m.stages.size(); ++st) {
          const auto& g = st > 0 && later ? *later : gain;
          for (int row = 0; row < m.rows; ++row) m.stages[st].scales[size_t(row)] *= g[size_t(row)];
        }
        lin = Linear::quantized(std::move(m), bias);
      } else {
        std::vector<float> w = lin.to_dense();
        for (int row = 0; row < lin.rows(); ++row)
          for (int col = 0; col < lin.cols(); ++col) w[size_t(row) * lin.cols() + col] *= gain[size_t(row)];
        const int rows = lin.rows(), cols = lin.cols();
        lin = Linear::dense(std::move(w), rows, cols, bias);
      }
    }
    D.attn_norm = r.attn_norm[size_t(l)];
    D.mlp_norm = r.mlp_norm[size_t(l)];
  }
  model.set_final_norm(r.final_norm);
}

}  // namespace glq::model
