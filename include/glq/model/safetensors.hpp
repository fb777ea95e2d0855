// safetensors checkpoints: one file, or shards listed by model.safetensors.index.json.
// Files are memory-mapped; the JSON header's offsets and the dtype/shape/size agreement of
// every tensor are checked before use.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "glq/model/tensor.hpp"

namespace glq::format {
class SafetensorsReader;
}

namespace glq::model {

class SafetensorsFile final : public WeightSource {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile() override;

  const std::string& path() const;
  // The optional "__metadata__" string map of the header.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  std::vector<std::string> names() const override;
  const TensorInfo* find(const std::string& name) const override;
  std::string description() const override;

 private:
  std::unique_ptr<format::SafetensorsReader> file_;  // maps and validates the file
  std::map<std::string, std::string> metadata_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
};

// All tensors of a checkpoint directory: model.safetensors, or the shards named by
// model.safetensors.index.json. Throws Io/Format naming the missing or broken file.
std::unique_ptr<WeightSource> open_safetensors_dir(const std::string& dir);

// Writes tensors as one safetensors file (F32/F16/BF16/I* data given as raw bytes) through the
// core's crash-safe writer. Used by tests and tools; `tensors[i].data` must hold
// dtype_bytes(dtype, numel) bytes.
void write_safetensors(const std::string& path, const std::vector<TensorInfo>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace glq::model
