// Arguments and CUDA entry points shared by `glq bench gemv` and `glq bench model`.
//
// The CPU paths live in cmd_bench_gemv.cpp / cmd_bench_model.cpp; the CUDA paths in
// bench_gemv_cuda.cpp / bench_model_cuda.cpp, which are always compiled and throw
// glq::Error(Unsupported) when this glq was built without GLQ_CUDA. Each returns the JSON object
// that --json prints; human-readable lines go to stderr.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "glq/codec/quantized_matrix.hpp"

namespace glq::cli {

struct GemvBenchArgs {
  int rows = 4096;     // output features
  int cols = 14336;    // input features
  int batch = 1;
  double bits = 2;     // 2, 3, 4 (16 = dense baseline only)
  int threads = 0;     // CPU only; 0 = all
  int iters = 0;       // 0 = pick automatically
  uint64_t seed = 1;
};

struct ModelBenchArgs {
  std::string model;      // path, or empty with synthetic
  std::string synthetic;  // e.g. "llama3-8b" (random weights quantized directly)
  double bits = 2;        // for synthetic: 2, 3, 4 or 16 (dense bf16 baseline)
  int ctx = 512;          // context length reached during the decode measurement
  int prompt_tokens = 128;
  int decode_tokens = 64;
  int batch = 1;
  int threads = 0;
};

// A QuantizedMatrix with uniformly random codes, scales in [0.01, 0.05), random signs and the
// real Hadamard plans of its shape: the kernels' speed does not depend on the code values.
codec::QuantizedMatrix random_quantized_matrix(int rows, int cols, int bits, uint64_t seed);

nlohmann::json run_cuda_gemv_bench(const GemvBenchArgs& args);
nlohmann::json run_cuda_model_bench(const ModelBenchArgs& args);

}  // namespace glq::cli
