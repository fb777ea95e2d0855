// The GPU engine as the scheduler's BatchBackend (glq serve --device cuda): the model's weights
// on the GPU (glq/model/cuda_model.hpp) with a KV cache of `slots` sequences of `context` tokens;
// each scheduler step is one Engine::forward_slots() pass (decode-only steps replay a CUDA graph
// per number of sequences).
#pragma once

#include <memory>
#include <string>

#include "glq/model/model.hpp"
#include "glq/server/scheduler.hpp"

namespace glq::server {

class CudaBackend : public BatchBackend {
 public:
  // Uploads the weights. Throws Unsupported in a build without CUDA, Cuda without a device.
  CudaBackend(const model::Model& model, int slots, int context);
  ~CudaBackend() override;
  int slots() const override;
  int context() const override;
  void forward(std::span<const BackendStep> steps) override;
  std::string device_name() const;
  double weight_mb() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace glq::server
