// GGUF files (llama.cpp's format, versions 2 and 3): metadata, tensor directory, and the
// tensors themselves, memory-mapped. Every offset and size read from the file is checked
// against the file's length before use; a file that lies throws glq::Error (Format).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "glq/model/config.hpp"
#include "glq/model/tensor.hpp"

namespace glq::model {

// One metadata value. Scalars of every integer width are widened; arrays hold one of the
// vectors (arrays of arrays are skipped on read).
struct GgufValue {
  enum class Type { UInt, Int, Float, Bool, String, Array };
  Type type = Type::UInt;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string s;
  std::vector<std::string> strings;  // array of strings
  std::vector<int64_t> ints;         // array of integers (or bools)
  std::vector<double> floats;        // array of floats
};

class GgufFile final : public WeightSource {
 public:
  // Maps and parses the file. Tensor names are GGUF's own ("blk.0.attn_q.weight").
  explicit GgufFile(const std::string& path);
  ~GgufFile() override;

  uint32_t version() const { return version_; }
  const std::string& path() const;
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const GgufValue* find_value(const std::string& key) const;
  // Typed getters: throw Format naming the key when absent or of another type.
  std::string get_string(const std::string& key) const;
  int64_t get_int(const std::string& key) const;      // UInt, Int or Bool
  double get_float(const std::string& key) const;     // Float, UInt or Int
  std::optional<int64_t> get_int_or(const std::string& key) const;
  std::optional<double> get_float_or(const std::string& key) const;

  std::vector<std::string> names() const override;
  const TensorInfo* find(const std::string& name) const override;
  std::string description() const override;

 private:
  std::unique_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  std::map<std::string, GgufValue> metadata_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
};

// The model config stored in a GGUF file's metadata ("<arch>.block_count", ...). Throws
// Unsupported naming general.architecture when it is not a Llama-family architecture.
ModelConfig gguf_model_config(const GgufFile& gguf);

// A WeightSource over a GGUF file that answers Hugging Face names (see tensor.hpp), mapping
// them to GGUF names, reversing GGUF's dimension order to row-major, and undoing llama.cpp's
// interleaving permutation of q_proj/k_proj rows for the llama/mistral architectures.
std::unique_ptr<WeightSource> gguf_hf_weights(std::shared_ptr<const GgufFile> gguf,
                                              const ModelConfig& config);

}  // namespace glq::model
