// Checkpoint primitives of the core library: crash-safe files, and safetensors files written
// tensor by tensor and read back memory-mapped. They know nothing of models.
//
// safetensors layout: u64 little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "U16", "shape": [576, 72], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value", ...}}
// padded with spaces to a multiple of 8 bytes, then the tensor bytes (offsets relative to the
// end of the header, no holes). The writer stores tensors in the order they were declared.
//
// AtomicFile writes to "<path>.tmp-<pid>" and renames it to <path> only in commit(), after a
// checked flush and fsync, so a reader never sees a file that is half written: a failed write
// (disk full, file-size limit, I/O error) throws glq::Error(Io) naming the file and the cause,
// and the temporary file is removed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace glq::format {

// Element types of the tensors GLQ writes. Names are those of the safetensors specification.
enum class StDType : uint8_t { F32, F16, BF16, U8, U16, U32, I8, I16, I32, I64 };
const char* st_dtype_name(StDType dtype);
int st_dtype_size(StDType dtype);
// Throws glq::Error(Unsupported) naming `origin` for a dtype outside the list.
StDType parse_st_dtype(const std::string& name, const std::string& origin);

class AtomicFile {
 public:
  // Creates the temporary file; throws Io (e.g. the folder is missing or not writable).
  explicit AtomicFile(std::string path);
  ~AtomicFile();  // removes the temporary file unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t bytes);  // throws Io on a short or failed write
  uint64_t bytes_written() const { return written_; }
  // fsync, close and rename onto the final path; throws Io on failure (temporary removed).
  void commit();
  const std::string& path() const { return path_; }

 private:
  void fail(const std::string& what);
  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
  uint64_t written_ = 0;
  bool committed_ = false;
  std::vector<uint8_t> buffer_;  // write buffer, flushed in large blocks
};

struct StTensorSpec {
  std::string name;
  StDType dtype = StDType::F32;
  std::vector<int64_t> shape;  // row-major, outermost first
  int64_t numel() const;
  uint64_t nbytes() const { return static_cast<uint64_t>(numel()) * static_cast<uint64_t>(st_dtype_size(dtype)); }
};

// Streams a safetensors file: the tensors are declared up front (the header precedes the data),
// then their bytes are written one by one in declaration order, so that only one tensor need be
// in memory at a time.
class SafetensorsWriter {
 public:
  SafetensorsWriter(std::string path, std::vector<StTensorSpec> tensors,
                    const std::map<std::string, std::string>& metadata = {});
  // Bytes of the next declared tensor; throws InvalidArgument for a wrong name or size.
  void write(std::string_view name, std::span<const uint8_t> bytes);
  // Every declared tensor must have been written. Renames the file into place.
  void commit();
  uint64_t file_bytes() const { return file_bytes_; }

 private:
  AtomicFile file_;
  std::vector<StTensorSpec> tensors_;
  size_t next_ = 0;
  uint64_t file_bytes_ = 0;
};

// A whole tensor in memory, for small files.
struct StTensorData {
  StTensorSpec spec;
  std::vector<uint8_t> bytes;
};
void write_safetensors_atomic(const std::string& path, const std::vector<StTensorData>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// A tensor of a mapped file: `data` points into the mapping (no alignment is promised; copy
// with memcpy or use the typed helpers below).
struct StTensorView {
  std::string name;
  StDType dtype = StDType::F32;
  std::vector<int64_t> shape;
  std::span<const uint8_t> data;
  int64_t numel() const;
  std::string shape_string() const;  // "[576, 72]"
};

class SafetensorsReader {
 public:
  // Maps and validates the file (header bounds, dtype/shape/size agreement, no overlaps).
  // Throws Io (cannot open) or Format naming the file and the tensor.
  explicit SafetensorsReader(const std::string& path);
  ~SafetensorsReader();
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::vector<StTensorView>& tensors() const { return tensors_; }  // file order
  const StTensorView* find(const std::string& name) const;               // nullptr if absent
  // The tensor, checked against dtype and shape; Format error naming both otherwise.
  const StTensorView& get(const std::string& name, StDType dtype, std::span<const int64_t> shape) const;
  uint64_t file_bytes() const { return size_; }

 private:
  std::string path_;
  const uint8_t* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, std::string> metadata_;
  std::vector<StTensorView> tensors_;
  std::map<std::string, size_t> index_;
};

// Typed copies out of a view (unaligned-safe).
std::vector<float> copy_f32(const StTensorView& t);
std::vector<uint8_t> copy_bytes(const StTensorView& t);

}  // namespace glq::format
