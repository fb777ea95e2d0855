// quantize_matrix: randomized Hadamard transform, per-row stage scales, block LDLQ.
//
// 1. Incoherence. W̃ = T_out·S_out·W·S_in·T_inᵀ and H̃ = T_in·S_in·H·S_in·T_inᵀ (H is the
//    Hessian of the inputs, so the proxy loss tr((W−Q)H(W−Q)ᵀ) = tr((W̃−Q̃)H̃(W̃−Q̃)ᵀ)).
// 2. Scales. Stage s of row r has scale factor_s·rms(W̃_r), factor_s from stage_scale_factors().
// 3. Block LDLQ (QuIP#'s BlockLDLQ, GPTQ's error feedback on 8-column blocks). Damp,
//    H̃ + λI with λ = damp·mean(diag H̃), and factor it as L·D·Lᵀ with L unit lower block
//    triangular (8×8 identity blocks on the diagonal) and D block diagonal: from the Cholesky
//    factor C, L = C·blockdiag(C_kk)⁻¹ and D_k = C_kk·C_kkᵀ. Blocks are quantized from the last
//    to the first; block k's target is
//        W̃_k − Σ_{j>k} E_j·L_jk,        E_j = Q̃_j − W̃_j,
//    so that the residuals η = E·L are what the codebook rounds, and the damped proxy loss is
//    tr(E·(H̃+λI)·Eᵀ) = Σ_k tr(η_k·D_k·η_kᵀ). Updates are applied lazily: immediately inside
//    a super-block of kSuperBlock blocks, and with one GEMM to all earlier columns after it.
// 4. Bad Hessians. Input channels with non-finite entries lose their correlations (their rows
//    and columns become mean-diagonal·identity; reported). A zero Hessian is replaced by the
//    identity (reported). When the Cholesky factorisation fails the damping is multiplied by 10 and the
//    failure reported, up to kMaxDamp; past that the Hessian is unusable and an error is thrown.
// 5. Scale refit (options.refit_scales). With the codes fixed, the proxy loss of row r is a
//    quadratic in its stage scales a: (Σ_s a_s c_s − w̃)ᵀ H̃ (Σ_s a_s c_s − w̃). Its minimiser
//    solves G a = b with G_st = c_sᵀ H̃ c_t, b_s = c_sᵀ H̃ w̃ (one GEMM C_s·H̃ per stage); it
//    replaces the RMS-based scales where it lowers the row's loss and keeps them positive.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/error.hpp"
#include "glq/util/thread_pool.hpp"

// LAPACK's Cholesky factorisation (Fortran interface, provided by the linked LAPACK/OpenBLAS).
extern "C" void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info,
                        size_t uplo_len);
extern "C" void dpotrs_(const char* uplo, const int* n, const int* nrhs, const double* a, const int* lda,
                        double* b, const int* ldb, int* info, size_t uplo_len);

namespace glq::codec {
namespace {

// Cholesky A = L·Lᵀ of a row-major symmetric matrix, L in the lower triangle. A row-major
// matrix is its transpose in column-major order, so this is LAPACK's upper factorisation.
int cholesky_lower_row_major(double* a, int n) {
  int info = 0;
  dpotrf_("U", &n, a, &n, &info, 1);
  return info;
}

constexpr int kSuperBlock = 16;    // 8-column blocks per lazy-update super-block (128 columns)
constexpr double kMaxDamp = 1e4;   // relative damping beyond which a Hessian is unusable
constexpr uint64_t kSignOutSalt = 0xD1B54A32D192ED03ull;  // seeds sign_out from options.seed

std::string shape(int64_t r, int64_t c) {
  return std::string("[").append(std::to_string(r)).append(", ").append(std::to_string(c)).append("]");
}

// x ← T(s ∘ x) for every row of X (count, plan.n), in parallel.
void transform_rows(const transform::HadamardPlan& plan, const std::vector<float>& signs,
                    float* X, int64_t count) {
  const int n = plan.n;
  ThreadPool::global().parallel_for(count, [&](int64_t begin, int64_t end, int) {
    for (int64_t r = begin; r < end; ++r) {
      float* row = X + r * n;
      for (int i = 0; i < n; ++i) row[i] *= signs[i];
    }
    transform::hadamard_forward_batch(plan, X + begin * n, end - begin);
  });
}

// out (c, r) = in (r, c)ᵀ, blocked for the cache.
void transpose(const float* in, int64_t r, int64_t c, float* out) {
  constexpr int64_t B = 32;
  for (int64_t i0 = 0; i0 < r; i0 += B) {
    for (int64_t j0 = 0; j0 < c; j0 += B) {
      const int64_t i1 = std::min(r, i0 + B), j1 = std::min(c, j0 + B);
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t j = j0; j < j1; ++j) out[j * r + i] = in[i * c + j];
      }
    }
  }
}

// tr(A·H·Aᵀ) for A (rows, n) and H (n, n), both row-major float, in row chunks.
double trace_quadratic(const float* A, int64_t rows, const float* H, int64_t n) {
  constexpr int64_t kChunk = 256;
  std::vector<float> P(static_cast<size_t>(std::min(rows, kChunk) * n));
  double total = 0;
  for (int64_t r0 = 0; r0 < rows; r0 += kChunk) {
    const int64_t m = std::min(kChunk, rows - r0);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m),
                static_cast<int>(n), static_cast<int>(n), 1.0f, A + r0 * n, static_cast<int>(n), H,
                static_cast<int>(n), 0.0f, P.data(), static_cast<int>(n));
    for (int64_t i = 0; i < m * n; ++i) total += static_cast<double>(P[i]) * A[r0 * n + i];
  }
  return total;
}

double frob2(const float* A, int64_t count) {
  double s = 0;
  for (int64_t i = 0; i < count; ++i) s += static_cast<double>(A[i]) * A[i];
  return s;
}

void add_warning(QuantizeReport& rep, const std::string& w) {
  if (!rep.warnings.empty()) rep.warnings += "; ";
  rep.warnings += w;
}

// The damped block LDL factor of H̃ (n, n): Lf (n, n) float, holding L_jk for j > k block-wise
// (zero elsewhere), and D (n/8 blocks of 8×8, row-major). Returns the absolute damping λ.
struct BlockLdl {
  std::vector<float> L;   // (n, n)
  std::vector<double> D;  // (n/8, 8, 8)
  double lambda = 0;
};

BlockLdl factor_hessian(const std::vector<float>& Ht, int n, double damp, QuantizeReport& rep) {
  double mean_diag = 0, max_abs = 0;
  for (int i = 0; i < n; ++i) mean_diag += Ht[static_cast<size_t>(i) * n + i];
  mean_diag /= n;
  for (float v : Ht) max_abs = std::max(max_abs, static_cast<double>(std::fabs(v)));
  double base = mean_diag;
  if (!(base > 0)) {
    base = max_abs;
    add_warning(rep, "Hessian has non-positive mean diagonal " + std::to_string(mean_diag) +
                         "; damping relative to max |H| = " + std::to_string(max_abs));
  }
  std::vector<double> C(static_cast<size_t>(n) * n);
  // Damping schedule: options.damp, then ×10 each failure (from kFirstRaise when it was 0).
  constexpr double kFirstRaise = 1e-4;
  for (double d = damp;; d = d > 0 ? d * 10 : kFirstRaise) {
    if (d > kMaxDamp) {
      throw_numerical("Hessian (" + std::to_string(n) + " x " + std::to_string(n) +
                      ") is not positive definite even with relative damping " +
                      std::to_string(kMaxDamp));
    }
    const double lambda = d * base;
    for (size_t i = 0; i < C.size(); ++i) C[i] = Ht[i];
    for (int i = 0; i < n; ++i) C[static_cast<size_t>(i) * n + i] += lambda;
    const int info = cholesky_lower_row_major(C.data(), n);
    if (info == 0) {
      rep.damp_used = d;
      BlockLdl f;
      f.lambda = lambda;
      const int G = n / 8;
      f.D.assign(static_cast<size_t>(G) * 64, 0.0);
      for (int k = 0; k < G; ++k) {
        const double* Ckk = &C[static_cast<size_t>(8 * k) * n + 8 * k];
        double* Dk = &f.D[static_cast<size_t>(k) * 64];
        for (int i = 0; i < 8; ++i) {
          for (int j = 0; j < 8; ++j) {
            double s = 0;
            for (int t = 0; t <= std::min(i, j); ++t) s += Ckk[i * n + t] * Ckk[j * n + t];
            Dk[i * 8 + j] = s;
          }
        }
        const int below = n - 8 * (k + 1);
        if (below > 0) {
          cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, below, 8,
                      1.0, Ckk, n, &C[static_cast<size_t>(8 * (k + 1)) * n + 8 * k], n);
        }
      }
      f.L.assign(static_cast<size_t>(n) * n, 0.0f);
      for (int i = 0; i < n; ++i) {
        const int row_block_start = (i / 8) * 8;
        for (int j = 0; j < row_block_start; ++j) {
          f.L[static_cast<size_t>(i) * n + j] = static_cast<float>(C[static_cast<size_t>(i) * n + j]);
        }
      }
      return f;
    }
    add_warning(rep, "Hessian not positive definite with relative damping " + std::to_string(d) +
                         " (LAPACK dpotrf info " + std::to_string(info) + "); damping raised to " +
                         std::to_string(d > 0 ? d * 10 : kFirstRaise));
  }
}

}  // namespace

std::vector<Codebook> stages_for_bits(int bits) {
  switch (bits) {
    case 2: return {Codebook::E8P16};
    case 3: return {Codebook::E8P16, Codebook::E8R8};
    case 4: return {Codebook::E8P16, Codebook::E8P16};
    default: throw_invalid("bits per weight must be 2, 3 or 4, got " + std::to_string(bits));
  }
}

std::vector<float> asymmetric_target(std::span<const float> W, int rows, int cols, std::span<const float> H,
                                     std::span<const float> Delta, double damp, double alpha,
                                     std::span<const float> residual, double beta) {
  const int64_t nW = static_cast<int64_t>(rows) * cols, nH = static_cast<int64_t>(cols) * cols;
  if (rows <= 0 || cols <= 0 || static_cast<int64_t>(W.size()) != nW) {
    throw_mismatch("asymmetric_target: W", std::to_string(nW) + " values for shape " + shape(rows, cols),
                   std::to_string(W.size()) + " values");
  }
  if (static_cast<int64_t>(H.size()) != nH || static_cast<int64_t>(Delta.size()) != nH) {
    throw_mismatch("asymmetric_target: H and Delta", shape(cols, cols) + " each",
                   std::to_string(H.size()) + " and " + std::to_string(Delta.size()) + " values");
  }
  const bool use_residual = !residual.empty() && beta != 0;
  if (!residual.empty() && static_cast<int64_t>(residual.size()) != nW) {
    throw_mismatch("asymmetric_target: residual cross term", shape(rows, cols), std::to_string(residual.size()) + " values");
  }
  if (!(damp >= 0) || !std::isfinite(damp) || !std::isfinite(alpha) || !std::isfinite(beta)) {
    throw_invalid("asymmetric_target: damping must be finite and >= 0 and alpha finite, got " + std::to_string(damp) +
                  " and " + std::to_string(alpha));
  }
  std::vector<float> out(W.begin(), W.end());
  bool zero = true;
  for (float v : Delta) {
    if (!std::isfinite(v)) throw_numerical("asymmetric_target: Delta has a non-finite value");
    zero = zero && v == 0.0f;
  }
  if (use_residual) {
    for (float v : residual) {
      if (!std::isfinite(v)) throw_numerical("asymmetric_target: the residual cross term has a non-finite value");
    }
  }
  if ((zero || alpha == 0) && !use_residual) return out;
  double mean_diag = 0;
  for (int i = 0; i < cols; ++i) mean_diag += H[static_cast<size_t>(i) * cols + i];
  mean_diag /= cols;
  if (!(mean_diag > 0)) return out;  // no input energy: nothing to correct
  std::vector<double> A(static_cast<size_t>(nH)), B(static_cast<size_t>(nH));
  constexpr double kFirstRaise = 1e-4;
  for (double d = damp;; d = d > 0 ? d * 10 : kFirstRaise) {
    if (d > kMaxDamp) {
      throw_numerical("asymmetric_target: Hessian (" + std::to_string(cols) + " x " + std::to_string(cols) +
                      ") is not positive definite even with relative damping " + std::to_string(kMaxDamp));
    }
    for (int i = 0; i < cols; ++i) {
      for (int j = 0; j < cols; ++j) {
        const size_t ij = static_cast<size_t>(i) * cols + j, ji = static_cast<size_t>(j) * cols + i;
        A[ij] = 0.5 * (static_cast<double>(H[ij]) + H[ji]);
      }
      A[static_cast<size_t>(i) * cols + i] += d * mean_diag;
    }
    if (cholesky_lower_row_major(A.data(), cols) == 0) break;
  }
  // M = Δ (H + λI)⁻¹ solves (H + λI) Mᵀ = Δᵀ; a row-major buffer is its transpose to LAPACK, so
  // B (row-major Δ) is Δᵀ column-major and comes back as Mᵀ column-major = M row-major.
  int info = 0;
  if (!zero && alpha != 0) {
    for (size_t i = 0; i < B.size(); ++i) B[i] = Delta[i];
    dpotrs_("U", &cols, &cols, A.data(), &cols, B.data(), &cols, &info, 1);
    if (info != 0) throw_numerical("asymmetric_target: LAPACK dpotrs info " + std::to_string(info));
    std::vector<float> M(B.begin(), B.end());
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, cols, static_cast<float>(alpha), W.data(), cols,
                M.data(), cols, 1.0f, out.data(), cols);
  }
  if (use_residual) {
    // X = R (H + λI)⁻¹ solves (H + λI) Xᵀ = Rᵀ: the row-major (rows, cols) R is Rᵀ column-major
    // with `rows` right-hand sides, and comes back as X row-major.
    std::vector<double> Rb(residual.begin(), residual.end());
    dpotrs_("U", &cols, &rows, A.data(), &cols, Rb.data(), &cols, &info, 1);
    if (info != 0) throw_numerical("asymmetric_target: LAPACK dpotrs info " + std::to_string(info));
    for (int64_t i = 0; i < nW; ++i) out[i] += static_cast<float>(beta * Rb[i]);
  }
  for (int64_t i = 0; i < nW; ++i) {
    if (!std::isfinite(out[i])) throw_numerical("asymmetric_target: the target has a non-finite value");
  }
  return out;
}

std::vector<float> stage_scale_factors(int bits) {
  // Minimisers of the MSE per weight on 2^16 i.i.d. N(0,1) groups, found by a grid search over
  // the factors (step 0.005-0.01); `glq bench codec` repeats the search and reports the MSE.
  //   2 bpw: 0.96            → MSE 0.0910
  //   3 bpw: 1.02, 0.495     → MSE 0.0294 (the first stage coarser than alone: the E8R8 residual
  //                            stage then has more to work with)
  //   4 bpw: 1.12, 0.29      → MSE 0.0083
  switch (bits) {
    case 2: return {0.96f};
    case 3: return {1.02f, 0.495f};
    case 4: return {1.12f, 0.29f};
    default: throw_invalid("bits per weight must be 2, 3 or 4, got " + std::to_string(bits));
  }
}

namespace {

// Stages [first, end) of one group: each encodes the residual r in its scale's lattice units
// (nearest codeword), then r loses and acc gains the decoded codeword times the scale.
void encode_stages(std::span<const Codebook> stages, size_t first, const float* scales, float r[8], float acc[8],
                   uint16_t* codes) {
  const auto& e8p = e8p_abs_table();
  const auto& e8r8 = e8r8_table();
  for (size_t s = first; s < stages.size(); ++s) {
    const float scale = scales[s];
    const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
    float y[8], c[8];
    for (int i = 0; i < 8; ++i) y[i] = r[i] * inv;
    if (stages[s] == Codebook::E8P16) {
      codes[s] = encode_e8p(y);
      decode_e8p(codes[s], e8p, c);
    } else {
      codes[s] = encode_e8r8(y);
      decode_e8r8(static_cast<uint8_t>(codes[s]), e8r8, c);
    }
    for (int i = 0; i < 8; ++i) {
      const float v = scale * c[i];
      acc[i] += v;
      r[i] -= v;
    }
  }
}

}  // namespace

void quantize_group(const float x[8], std::span<const Codebook> stages, const float* scales,
                    uint16_t* codes, float* out) {
  float r[8], acc[8] = {};
  for (int i = 0; i < 8; ++i) r[i] = x[i];
  encode_stages(stages, 0, scales, r, acc, codes);
  if (out) {
    for (int i = 0; i < 8; ++i) out[i] = acc[i];
  }
}

namespace {

// The E8P16 abs patterns as doubles, with their squared norms and parity bits.
struct E8pPatterns {
  double m[256][8];
  double norm2[256];
  unsigned parity[256];
};

const E8pPatterns& e8p_patterns() {
  static const E8pPatterns p = [] {
    E8pPatterns t{};
    const auto& tab = e8p_abs_table();
    for (int k = 0; k < 256; ++k) {
      t.norm2[k] = 0;
      for (int i = 0; i < 8; ++i) {
        t.m[k][i] = 0.5 * static_cast<double>((tab[k] >> (4 * i)) & 0x7);
        t.norm2[k] += t.m[k][i] * t.m[k][i];
      }
      t.parity[k] = tab[k] >> 31;
    }
    return t;
  }();
  return p;
}

// The K nearest E8P16 codewords of y (lattice units), nearest first, by exhaustive search over
// the 512 (pattern, shift) pairs, each with its best signs: σ_i = sign(y_i − t), and when the
// number of minus signs has the wrong parity, the coordinate with the least p_i·|y_i − t|
// flipped (cost 4·p_i·|y_i − t|). Returns the number found (K ≤ 512).
int e8p_k_nearest(const float y[8], int K, uint16_t* codes, double* dist) {
  const E8pPatterns& P = e8p_patterns();
  int n = 0;
  for (int h = 0; h < 2; ++h) {
    const double shift = h ? -0.25 : 0.25;
    double a[8], a2 = 0;
    unsigned neg = 0;
    for (int i = 0; i < 8; ++i) {
      const double v = static_cast<double>(y[i]) - shift;
      a[i] = std::fabs(v);
      a2 += v * v;
      if (v < 0) neg |= 1u << i;
    }
    const unsigned negpar = static_cast<unsigned>(__builtin_popcount(neg)) & 1u;
    for (int k = 0; k < 256; ++k) {
      double dot = 0, tmin = 1e300;
      int imin = 0;
      for (int i = 0; i < 8; ++i) {
        const double t = a[i] * P.m[k][i];
        dot += t;
        if (t < tmin) {
          tmin = t;
          imin = i;
        }
      }
      double d = a2 - 2 * dot + P.norm2[k];
      unsigned signs = neg;
      if (P.parity[k] != negpar) {
        d += 4 * tmin;
        signs ^= 1u << imin;
      }
      if (n == K && !(d < dist[n - 1])) continue;
      int j = n < K ? n++ : n - 1;
      while (j > 0 && dist[j - 1] > d) {
        dist[j] = dist[j - 1];
        codes[j] = codes[j - 1];
        --j;
      }
      dist[j] = d;
      codes[j] = static_cast<uint16_t>(k | ((signs & 0x7Fu) << 8) | (h ? 0x8000u : 0u));
    }
  }
  return n;
}

// quantize_group with list decoding of the first stage (QuantizeOptions::list_decode): each of
// the K nearest first-stage codewords is followed by the residual stages' nearest codewords, and
// the combination with the least error (in the metric D when given, else Euclidean) is kept.
// K ≤ 1 (or a first stage other than E8P16) is quantize_group itself.
void quantize_group_list(const float x[8], std::span<const Codebook> stages, const float* scales, int K,
                         const double* D, uint16_t* codes, float* out) {
  if (K <= 1 || stages.empty() || stages[0] != Codebook::E8P16) {
    quantize_group(x, stages, scales, codes, out);
    return;
  }
  const auto& e8p = e8p_abs_table();
  constexpr int kMaxList = 64;
  K = std::min(K, kMaxList);
  uint16_t cand[kMaxList];
  double cd[kMaxList];
  const float inv0 = scales[0] != 0.0f ? 1.0f / scales[0] : 0.0f;
  float y[8];
  for (int i = 0; i < 8; ++i) y[i] = x[i] * inv0;
  const int n = e8p_k_nearest(y, K, cand, cd);
  double best = std::numeric_limits<double>::infinity();
  for (int c = 0; c < n; ++c) {
    uint16_t cc[4];
    float acc[8], r[8], dec[8];
    cc[0] = cand[c];
    decode_e8p(cand[c], e8p, dec);
    for (int i = 0; i < 8; ++i) {
      acc[i] = scales[0] * dec[i];
      r[i] = x[i] - acc[i];
    }
    encode_stages(stages, 1, scales, r, acc, cc);
    double err = 0;
    if (D) {
      for (int i = 0; i < 8; ++i) {
        double t = 0;
        for (int j = 0; j < 8; ++j) t += D[i * 8 + j] * static_cast<double>(r[j]);
        err += static_cast<double>(r[i]) * t;
      }
    } else {
      for (int i = 0; i < 8; ++i) err += static_cast<double>(r[i]) * r[i];
    }
    if (err < best) {
      best = err;
      for (size_t s = 0; s < stages.size(); ++s) codes[s] = cc[s];
      if (out) {
        for (int i = 0; i < 8; ++i) out[i] = acc[i];
      }
    }
  }
}

}  // namespace

QuantizedMatrix quantize_matrix(std::span<const float> W, int rows, int cols,
                                std::span<const float> H, const QuantizeOptions& options,
                                QuantizeReport* report) {
  const auto t_start = std::chrono::steady_clock::now();
  QuantizeReport rep;
  // ---- argument checks ----
  if (rows <= 0 || cols <= 0 || rows % 8 != 0 || cols % 8 != 0) {
    throw_invalid("quantize_matrix: rows and cols must be positive multiples of 8, got shape " +
                  shape(rows, cols));
  }
  const int64_t nW = static_cast<int64_t>(rows) * cols;
  if (static_cast<int64_t>(W.size()) != nW) {
    throw_mismatch("quantize_matrix: W", std::to_string(nW) + " values for shape " + shape(rows, cols),
                   std::to_string(W.size()) + " values");
  }
  if (!H.empty() && static_cast<int64_t>(H.size()) != static_cast<int64_t>(cols) * cols) {
    throw_mismatch("quantize_matrix: Hessian", shape(cols, cols) + " (" +
                       std::to_string(static_cast<int64_t>(cols) * cols) + " values) or empty",
                   std::to_string(H.size()) + " values");
  }
  const std::vector<Codebook> stages = stages_for_bits(options.bits);
  const std::vector<float> factors = stage_scale_factors(options.bits);
  if (!(options.damp >= 0) || !std::isfinite(options.damp)) {
    throw_invalid("quantize_matrix: damping must be finite and >= 0, got " +
                  std::to_string(options.damp));
  }
  if (options.list_decode < 1 || options.list_decode > 64) {
    throw_invalid("quantize_matrix: list_decode must be in [1, 64], got " + std::to_string(options.list_decode));
  }
  for (float m : options.scale_multipliers) {
    if (!(m > 0) || !std::isfinite(m)) {
      throw_invalid("quantize_matrix: scale multipliers must be finite and > 0, got " + std::to_string(m));
    }
  }
  for (int64_t i = 0; i < nW; ++i) {
    if (!std::isfinite(W[i])) {
      throw_numerical("quantize_matrix: W " + shape(rows, cols) + " has a non-finite value (" +
                      std::to_string(W[i]) + ") at [" + std::to_string(i / cols) + ", " +
                      std::to_string(i % cols) + "]");
    }
  }
  bool have_h = !H.empty();
  std::vector<float> Hclean;  // H with non-finite channels replaced (only when needed)
  if (have_h) {
    // Non-finite entries: the input channels they touch lose their correlations (row and
    // column zeroed, diagonal set to the mean of the finite diagonal), reported.
    int64_t bad = 0, first = -1;
    std::vector<char> bad_channel(cols, 0);
    for (size_t i = 0; i < H.size(); ++i) {
      if (!std::isfinite(H[i])) {
        if (first < 0) first = static_cast<int64_t>(i);
        ++bad;
        bad_channel[i / cols] = bad_channel[i % cols] = 1;
      }
    }
    if (bad > 0) {
      int nbad = 0;
      double diag_sum = 0;
      for (int i = 0; i < cols; ++i) {
        if (bad_channel[i]) {
          ++nbad;
        } else {
          diag_sum += H[static_cast<size_t>(i) * cols + i];
        }
      }
      const double fill = nbad < cols ? diag_sum / (cols - nbad) : 0.0;
      Hclean.assign(H.begin(), H.end());
      for (int i = 0; i < cols; ++i) {
        for (int j = 0; j < cols; ++j) {
          if (bad_channel[i] || bad_channel[j]) {
            Hclean[static_cast<size_t>(i) * cols + j] = (i == j) ? static_cast<float>(fill) : 0.0f;
          }
        }
      }
      add_warning(rep, "Hessian " + shape(cols, cols) + " has " + std::to_string(bad) +
                           " non-finite values (first at [" + std::to_string(first / cols) + ", " +
                           std::to_string(first % cols) + "]) in " + std::to_string(nbad) +
                           " input channels; their rows and columns were replaced by the mean "
                           "diagonal times the identity");
      H = Hclean;
    }
    bool all_zero = true;
    for (float v : H) all_zero = all_zero && v == 0.0f;
    if (all_zero) {
      add_warning(rep, "Hessian is all zeros; using the identity (no error feedback)");
      have_h = false;
    }
  }

  QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.bits = options.bits;
  q.rht = options.use_rht;
  q.plan_in = transform::make_hadamard_plan(cols);
  q.plan_out = transform::make_hadamard_plan(rows);
  if (options.use_rht) {
    q.sign_in = transform::random_signs(cols, options.seed);
    q.sign_out = transform::random_signs(rows, options.seed ^ kSignOutSalt);
  } else {
    q.sign_in.assign(cols, 1.0f);
    q.sign_out.assign(rows, 1.0f);
  }

  // ---- 1. incoherence processing ----
  std::vector<float> Wt(W.begin(), W.end());  // W̃ (rows, cols)
  std::vector<float> Ht;                      // H̃ (cols, cols)
  if (options.use_rht) {
    std::vector<float> tmp(static_cast<size_t>(nW));
    transform_rows(q.plan_in, q.sign_in, Wt.data(), rows);
    transpose(Wt.data(), rows, cols, tmp.data());
    transform_rows(q.plan_out, q.sign_out, tmp.data(), cols);
    transpose(tmp.data(), cols, rows, Wt.data());
  }
  if (have_h) {
    Ht.assign(H.begin(), H.end());
    // Symmetrise (only the lower triangle would be read by the factorisation otherwise), in
    // 64×64 tiles so that the column accesses stay in the cache.
    constexpr int kTile = 64;
    for (int i0 = 0; i0 < cols; i0 += kTile) {
      for (int j0 = 0; j0 <= i0; j0 += kTile) {
        const int i1 = std::min(cols, i0 + kTile), j1 = std::min(cols, j0 + kTile);
        for (int i = i0; i < i1; ++i) {
          for (int j = j0; j < std::min(j1, i); ++j) {
            float& lo = Ht[static_cast<size_t>(i) * cols + j];
            float& up = Ht[static_cast<size_t>(j) * cols + i];
            lo = up = 0.5f * (lo + up);
          }
        }
      }
    }
    if (options.use_rht) {
      std::vector<float> tmp(Ht.size());
      transform_rows(q.plan_in, q.sign_in, Ht.data(), cols);  // H·S·Tᵀ, row by row
      transpose(Ht.data(), cols, cols, tmp.data());
      transform_rows(q.plan_in, q.sign_in, tmp.data(), cols);  // T·S·(H·S·Tᵀ)
      Ht.swap(tmp);
    }
  }

  // ---- 2. per-row stage scales ----
  const int G = cols / 8;
  const int S = static_cast<int>(stages.size());
  q.stages.resize(S);
  for (int s = 0; s < S; ++s) {
    q.stages[s].codebook = stages[s];
    q.stages[s].codes.assign(static_cast<size_t>(rows) * G * code_bytes(stages[s]), 0);
    q.stages[s].scales.resize(rows);
  }
  for (int r = 0; r < rows; ++r) {
    const double rms = std::sqrt(frob2(&Wt[static_cast<size_t>(r) * cols], cols) / cols);
    for (int s = 0; s < S; ++s) q.stages[s].scales[r] = static_cast<float>(factors[s] * rms);
  }

  // Quantizes block k (columns 8k..8k+8) of every row from targets T with the scales `sc`
  // (per stage, per row), writing codes into `cs` and E_k = Q̃_k − W̃_k into `Eo`; adds
  // η_rᵀ·D·η_r (η = Q̃_k − target) to rowloss[r] when D is given.
  auto quantize_block = [&](const std::vector<float>& T, int k, const double* Dk, const std::vector<std::vector<float>>& sc,
                            std::vector<std::vector<uint8_t>>& cs, std::vector<float>& Eo, std::vector<double>* rowloss) {
    ThreadPool::global().parallel_for(rows, [&](int64_t begin, int64_t end, int) {
      float scales[4];
      uint16_t codes[4];
      for (int64_t r = begin; r < end; ++r) {
        const size_t off = static_cast<size_t>(r) * cols + 8 * k;
        for (int s = 0; s < S; ++s) scales[s] = sc[s][r];
        float rec[8];
        quantize_group_list(&T[off], stages, scales, options.list_decode, Dk, codes, rec);
        for (int s = 0; s < S; ++s) {
          const size_t g = static_cast<size_t>(r) * G + k;
          if (stages[s] == Codebook::E8P16) {
            cs[s][2 * g] = static_cast<uint8_t>(codes[s] & 0xFF);
            cs[s][2 * g + 1] = static_cast<uint8_t>(codes[s] >> 8);
          } else {
            cs[s][g] = static_cast<uint8_t>(codes[s]);
          }
        }
        double eta[8];
        for (int i = 0; i < 8; ++i) {
          Eo[off + i] = rec[i] - Wt[off + i];
          eta[i] = static_cast<double>(rec[i]) - T[off + i];
        }
        if (Dk) {
          double local = 0;
          for (int i = 0; i < 8; ++i) {
            double s = 0;
            for (int j = 0; j < 8; ++j) s += Dk[i * 8 + j] * eta[j];
            local += eta[i] * s;
          }
          (*rowloss)[r] += local;
        }
      }
    });
  };
  std::vector<float> E(static_cast<size_t>(nW), 0.0f);  // Q̃ − W̃ (rows, cols)
  std::vector<std::vector<float>> base_scales(S);
  std::vector<std::vector<uint8_t>> codes_out(S);
  for (int s = 0; s < S; ++s) {
    base_scales[s] = q.stages[s].scales;
    codes_out[s] = q.stages[s].codes;
  }

  // ---- 3. rounding: block LDLQ or nearest ----
  const double w_energy = frob2(Wt.data(), nW);
  double proxy_num = 0, proxy_den = 0;
  if (have_h && options.use_ldlq) {
    const BlockLdl f = factor_hessian(Ht, cols, options.damp, rep);
    // One LDLQ pass with the scales `sc`: codes into cs, E into Eo, each row's damped proxy
    // loss tr(E_r (H̃+λI) E_rᵀ) − λ‖E_r‖² into rowloss.
    auto ldlq_pass = [&](const std::vector<std::vector<float>>& sc, std::vector<std::vector<uint8_t>>& cs,
                         std::vector<float>& Eo, std::vector<double>& rowloss) {
      rowloss.assign(rows, 0.0);
      std::vector<float> T = Wt;  // targets with feedback applied
      for (int k1 = G; k1 > 0; k1 -= kSuperBlock) {
        const int k0 = std::max(0, k1 - kSuperBlock);
        for (int k = k1 - 1; k >= k0; --k) {
          quantize_block(T, k, &f.D[static_cast<size_t>(k) * 64], sc, cs, Eo, &rowloss);
          if (k > k0) {  // T[:, 8k0 : 8k] −= E_k · L[8k : 8k+8, 8k0 : 8k]
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, 8 * (k - k0), 8, -1.0f, &Eo[8 * k], cols,
                        &f.L[static_cast<size_t>(8 * k) * cols + 8 * k0], cols, 1.0f, &T[8 * k0], cols);
          }
        }
        if (k0 > 0) {  // T[:, 0 : 8k0] −= E[:, 8k0 : 8k1] · L[8k0 : 8k1, 0 : 8k0]
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, 8 * k0, 8 * (k1 - k0), -1.0f, &Eo[8 * k0], cols,
                      &f.L[static_cast<size_t>(8 * k0) * cols], cols, 1.0f, T.data(), cols);
        }
      }
      // tr(E·H̃·Eᵀ) = tr(E·(H̃+λI)·Eᵀ) − λ‖E‖² = Σ_k tr(η_k·D_k·η_kᵀ) − λ‖E‖², row by row.
      for (int r = 0; r < rows; ++r) rowloss[r] -= f.lambda * frob2(&Eo[static_cast<size_t>(r) * cols], cols);
    };
    // Scale search: rows are independent under LDLQ (the feedback runs along a row), so each
    // multiplier m of the RMS-based scales gets a full pass and every row keeps the pass with
    // its least proxy loss.
    std::vector<float> mults = options.scale_multipliers;
    if (mults.empty()) mults = {1.0f};
    std::vector<double> best_loss, loss;
    std::vector<std::vector<float>> sc(S);
    std::vector<std::vector<uint8_t>> cs = codes_out;
    std::vector<float> Ec(static_cast<size_t>(nW));
    for (size_t m = 0; m < mults.size(); ++m) {
      for (int s = 0; s < S; ++s) {
        sc[s] = base_scales[s];
        for (float& v : sc[s]) v *= mults[m];
      }
      if (m == 0) {
        ldlq_pass(sc, codes_out, E, best_loss);
        for (int s = 0; s < S; ++s) q.stages[s].scales = sc[s];
        continue;
      }
      ldlq_pass(sc, cs, Ec, loss);
      for (int r = 0; r < rows; ++r) {
        if (!(loss[r] < best_loss[r])) continue;
        best_loss[r] = loss[r];
        for (int s = 0; s < S; ++s) {
          q.stages[s].scales[r] = sc[s][r];
          const size_t per_row = static_cast<size_t>(G) * code_bytes(stages[s]);
          std::copy_n(&cs[s][r * per_row], per_row, &codes_out[s][r * per_row]);
        }
        std::copy_n(&Ec[static_cast<size_t>(r) * cols], cols, &E[static_cast<size_t>(r) * cols]);
      }
    }
    for (int s = 0; s < S; ++s) q.stages[s].codes.swap(codes_out[s]);
    for (double v : best_loss) proxy_num += v;
    proxy_num = std::max(0.0, proxy_num);
    // The same identity for W̃: tr(W̃·H̃·W̃ᵀ) = Σ_k tr(V_k·D_k·V_kᵀ) − λ‖W̃‖² with V = W̃·L (L is unit
    // lower triangular as a plain matrix: its strictly lower part is f.L), half a GEMM.
    std::vector<float> V = Wt;
    cblas_strmm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasUnit, rows, cols, 1.0f,
                f.L.data(), cols, V.data(), cols);
    double den = 0;
    for (int r = 0; r < rows; ++r) {
      for (int k = 0; k < G; ++k) {
        const float* v = &V[static_cast<size_t>(r) * cols + 8 * k];
        const double* Dk = &f.D[static_cast<size_t>(k) * 64];
        for (int i = 0; i < 8; ++i) {
          double s = 0;
          for (int j = 0; j < 8; ++j) s += Dk[i * 8 + j] * v[j];
          den += v[i] * s;
        }
      }
    }
    proxy_den = den - f.lambda * w_energy;
  } else {
    if (have_h && !options.use_ldlq) rep.damp_used = 0;
    for (int k = 0; k < G; ++k) quantize_block(Wt, k, nullptr, base_scales, codes_out, E, nullptr);
    for (int s = 0; s < S; ++s) q.stages[s].codes.swap(codes_out[s]);
    if (have_h) {
      proxy_num = trace_quadratic(E.data(), rows, Ht.data(), cols);
      proxy_den = trace_quadratic(Wt.data(), rows, Ht.data(), cols);
    } else {
      proxy_num = frob2(E.data(), nW);
      proxy_den = w_energy;
    }
  }

  // ---- 5. least-squares refit of the stage scales ----
  if (have_h && options.refit_scales) {
    const auto& e8p = e8p_abs_table();
    const auto& e8r8 = e8r8_table();
    std::vector<std::vector<float>> C(S, std::vector<float>(static_cast<size_t>(nW)));  // decoded codes
    ThreadPool::global().parallel_for(rows, [&](int64_t begin, int64_t end, int) {
      for (int64_t r = begin; r < end; ++r) {
        for (int s = 0; s < S; ++s) {
          const CodeStage& st = q.stages[s];
          for (int g = 0; g < G; ++g) {
            const size_t gi = static_cast<size_t>(r) * G + g;
            float* out = &C[s][static_cast<size_t>(r) * cols + 8 * g];
            if (st.codebook == Codebook::E8P16) {
              decode_e8p(st.codes16()[gi], e8p, out);
            } else {
              decode_e8r8(st.codes8()[gi], e8r8, out);
            }
          }
        }
      }
    });
    std::vector<std::vector<float>> P(S, std::vector<float>(static_cast<size_t>(nW)));  // C_s·H̃
    for (int s = 0; s < S; ++s) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, cols, 1.0f, C[s].data(), cols, Ht.data(), cols,
                  0.0f, P[s].data(), cols);
    }
    int refit_rows = 0;
    for (int r = 0; r < rows; ++r) {
      const size_t off = static_cast<size_t>(r) * cols;
      double Gm[2][2] = {}, b[2] = {};
      for (int s = 0; s < S; ++s) {
        for (int t = 0; t < S; ++t) {
          double v = 0;
          for (int i = 0; i < cols; ++i) v += static_cast<double>(C[s][off + i]) * P[t][off + i];
          Gm[s][t] = v;
        }
        double v = 0;
        for (int i = 0; i < cols; ++i) v += static_cast<double>(P[s][off + i]) * Wt[off + i];
        b[s] = v;
      }
      double a_old[2] = {}, a_new[2] = {};
      for (int s = 0; s < S; ++s) a_old[s] = q.stages[s].scales[r];
      bool ok = true;
      if (S == 1) {
        ok = Gm[0][0] > 0;
        if (ok) a_new[0] = b[0] / Gm[0][0];
      } else {
        const double det = Gm[0][0] * Gm[1][1] - Gm[0][1] * Gm[1][0];
        ok = det > 1e-12 * std::fabs(Gm[0][0] * Gm[1][1]) && det > 0;
        if (ok) {
          a_new[0] = (Gm[1][1] * b[0] - Gm[0][1] * b[1]) / det;
          a_new[1] = (Gm[0][0] * b[1] - Gm[1][0] * b[0]) / det;
        }
      }
      // Loss up to the constant w̃ᵀH̃w̃: aᵀGa − 2aᵀb.
      auto loss = [&](const double* a) {
        double l = 0;
        for (int s = 0; s < S; ++s) {
          l -= 2 * a[s] * b[s];
          for (int t = 0; t < S; ++t) l += a[s] * Gm[s][t] * a[t];
        }
        return l;
      };
      for (int s = 0; s < S && ok; ++s) ok = std::isfinite(a_new[s]) && a_new[s] > 0;
      if (!ok || !(loss(a_new) < loss(a_old))) continue;
      ++refit_rows;
      for (int s = 0; s < S; ++s) q.stages[s].scales[r] = static_cast<float>(a_new[s]);
      for (int i = 0; i < cols; ++i) {
        float v = 0;
        for (int s = 0; s < S; ++s) v += q.stages[s].scales[r] * C[s][off + i];
        E[off + i] = v - Wt[off + i];
      }
    }
    if (refit_rows > 0) {
      proxy_num = trace_quadratic(E.data(), rows, Ht.data(), cols);
      if (!(proxy_den > 0)) proxy_den = trace_quadratic(Wt.data(), rows, Ht.data(), cols);
    }
  }
  rep.proxy_loss = proxy_den > 0 ? proxy_num / proxy_den : 0.0;
  rep.relative_weight_error = w_energy > 0 ? std::sqrt(frob2(E.data(), nW) / w_energy) : 0.0;
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  if (report) *report = rep;
  return q;
}

}  // namespace glq::codec
