// Randomized Hadamard transforms for every dimension that is a multiple of 8.
//
// A dimension n = a·b, with b a power of two and a the order of a small orthonormal "mixing"
// matrix Q_a (a = 1 when n is a power of two). The transform is
//   T_n = Q_a ⊗ H_b / sqrt(b)
// where H_b is the Sylvester (Walsh) Hadamard matrix of order b. Viewing x (length n) as an
// a×b row-major matrix X, T_n x = vec(Q_a · X · H_b / sqrt(b)): a fast Walsh-Hadamard transform
// of each length-b row, then a small dense product across rows. T_n is orthogonal; its inverse
// is its transpose, T_n^T = Q_a^T ⊗ H_b / sqrt(b).
//
// Q_a is chosen by make_hadamard_plan() (the rule is in hadamard.cpp and docs/codec.md): a
// Paley Hadamard matrix of order a = 4m (normalized by 1/sqrt(a)) when n = 2^k·m with m odd and
// one exists with a ≤ 128 and a prime q (Paley I: q = 4m−1, else Paley II: q = 2m−1),
// otherwise an orthonormal DCT-II of order m. Nothing is padded.
//
// The randomized transform of a weight matrix W (rows × cols) uses sign vectors s_out (rows)
// and s_in (cols):  W̃ = T_out · diag(s_out) · W · diag(s_in) · T_in^T.
// Then W x = diag(s_out) · T_out^T · W̃ · T_in · diag(s_in) · x.
#pragma once

#include <cstdint>
#include <vector>

namespace glq::transform {

struct HadamardPlan {
  int n = 0;  // dimension, a multiple of 8
  int a = 1;  // order of the mixing matrix Q_a
  int b = 0;  // power of two, n = a·b
  std::vector<float> q;  // (a, a) row-major orthonormal Q_a; empty when a == 1
};

// Throws glq::Error(InvalidArgument) when n is not a positive multiple of 8.
HadamardPlan make_hadamard_plan(int n);

// Reference transforms, in place, on one vector of length plan.n.
void hadamard_forward(const HadamardPlan& plan, float* x);    // x ← T x
void hadamard_transpose(const HadamardPlan& plan, float* x);  // x ← T^T x

// The same on `count` contiguous vectors x (count, plan.n); faster, with float accumulation
// (agrees with the single-vector functions to about 1e-7 relative).
void hadamard_forward_batch(const HadamardPlan& plan, float* x, int64_t count);
void hadamard_transpose_batch(const HadamardPlan& plan, float* x, int64_t count);

// Random ±1 sign vector of length n from a seed (splitmix64, documented in docs/codec.md).
std::vector<float> random_signs(int n, uint64_t seed);

}  // namespace glq::transform
