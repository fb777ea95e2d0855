// Named tensors read from checkpoint files (GGUF, safetensors), memory-mapped.
//
// A WeightSource is a set of named tensors whose bytes stay in the mapped file until a caller
// asks for them as float32 (load_f32), which converts or dequantizes and checks the shape. Names
// are the Hugging Face names of the Llama family ("model.layers.3.self_attn.q_proj.weight");
// a GGUF source translates them to its own ("blk.3.attn_q.weight") and undoes llama.cpp's Q/K
// row permutation, so the engine sees one layout whatever the file. Shapes are row-major,
// outermost dimension first, as in PyTorch: a linear weight is (out_features, in_features).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace glq::model {

enum class DType : uint8_t {
  F32, F16, BF16,
  Q8_0, Q4_0, Q4_1,   // ggml blocks of 32 weights
  Q4_K, Q5_K, Q6_K,   // ggml super-blocks of 256 weights
  I8, I16, I32, I64,  // integer tensors (rejected where weights are expected)
};

const char* dtype_name(DType dtype);
// Weights per block (1 for plain types) and bytes per block.
int64_t dtype_block_size(DType dtype);
int64_t dtype_block_bytes(DType dtype);
// Bytes of `count` elements; throws Format if count is not a whole number of blocks or the size
// overflows.
int64_t dtype_bytes(DType dtype, int64_t count);
// Converts `count` elements of `dtype` at `src` to float32 (count a multiple of the block size).
// Throws Unsupported for integer dtypes.
void dequantize(DType dtype, const uint8_t* src, float* dst, int64_t count);

// A read-only memory-mapped file. Empty files map to an empty span.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

struct TensorInfo {
  std::string name;              // name in the source's naming (see WeightSource)
  DType dtype = DType::F32;
  std::vector<int64_t> shape;    // row-major, outermost first
  std::span<const uint8_t> data; // exactly dtype_bytes(dtype, numel()) bytes, bounds-checked
  std::string file;              // file it lives in, for messages

  int64_t numel() const;
  std::string shape_string() const;  // "[576, 192]"
};

// A set of named tensors. Implementations: GGUF (glq/model/gguf.hpp), safetensors
// (glq/model/safetensors.hpp), and any checkpoint format that wants to reuse build_model().
class WeightSource {
 public:
  virtual ~WeightSource() = default;

  // All tensor names, in file order.
  virtual std::vector<std::string> names() const = 0;
  // nullptr when absent.
  virtual const TensorInfo* find(const std::string& name) const = 0;
  // Short description for logs: "GGUF v3 /path/x.gguf (Q4_1)".
  virtual std::string description() const = 0;

  // The tensor, or Format error naming it and the source.
  const TensorInfo& get(const std::string& name) const;
  bool contains(const std::string& name) const { return find(name) != nullptr; }

  // The tensor as float32, row-major. Throws (naming the tensor) when it is absent, its shape
  // differs from `expected_shape`, or its dtype cannot be converted.
  virtual std::vector<float> load_f32(const std::string& name,
                                      std::span<const int64_t> expected_shape) const;

  // Rows [first, first + count) of the tensor as float32 into out (count × row floats, a row being
  // the product of the dimensions after the first), converting only those rows' bytes: one
  // embedding row, or a large tensor a chunk at a time, read from the mapped file. Same checks as
  // load_f32, and InvalidArgument for rows outside the tensor; Format when a row is not a whole
  // number of the dtype's blocks.
  virtual void load_rows_f32(const std::string& name, std::span<const int64_t> expected_shape, int64_t first,
                             int64_t count, float* out) const;

  // The tensor, checked to exist, to have `expected_shape`, a float dtype and its byte size.
  const TensorInfo& checked_float_tensor(const std::string& name, std::span<const int64_t> expected_shape) const;
};

}  // namespace glq::model
