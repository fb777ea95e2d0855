// Crash-safe files and streamed safetensors files (see glq/format/safetensors_io.hpp).
#include "glq/format/safetensors_io.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "glq/error.hpp"

namespace glq::format {

namespace {

// Writes are gathered into blocks of this size: large enough that the system call count is
// negligible, small enough to stay out of the way of the quantizer's working set.
constexpr size_t kWriteBlockBytes = size_t{4} << 20;
// The same cap on header size as the reference safetensors implementation.
constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;

struct DTypeRow {
  StDType dtype;
  const char* name;
  int size;
};
constexpr DTypeRow kDTypes[] = {
    {StDType::F32, "F32", 4}, {StDType::F16, "F16", 2}, {StDType::BF16, "BF16", 2},
    {StDType::U8, "U8", 1},   {StDType::U16, "U16", 2}, {StDType::U32, "U32", 4},
    {StDType::I8, "I8", 1},   {StDType::I16, "I16", 2}, {StDType::I32, "I32", 4},
    {StDType::I64, "I64", 8},
};

const DTypeRow& row_of(StDType d) {
  for (const auto& r : kDTypes)
    if (r.dtype == d) return r;
  throw Error(ErrorKind::Internal, "unknown StDType");
}

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

}  // namespace

const char* st_dtype_name(StDType dtype) { return row_of(dtype).name; }
int st_dtype_size(StDType dtype) { return row_of(dtype).size; }

StDType parse_st_dtype(const std::string& name, const std::string& origin) {
  for (const auto& r : kDTypes)
    if (name == r.name) return r.dtype;
  throw Error(ErrorKind::Unsupported, fmt::format("{}: dtype '{}' is not one GLQ reads", origin, name));
}

int64_t StTensorSpec::numel() const { return numel_of(shape); }
int64_t StTensorView::numel() const { return numel_of(shape); }
std::string StTensorView::shape_string() const { return shape_str(shape); }

// ---- AtomicFile ------------------------------------------------------------------------------

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  tmp_path_ = fmt::format("{}.tmp-{}", path_, static_cast<long>(::getpid()));
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw_io(path_, fmt::format("cannot create {}: {}", tmp_path_, std::strerror(errno)));
  buffer_.reserve(kWriteBlockBytes);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_path_.c_str());
}

void AtomicFile::fail(const std::string& what) {
  const int err = errno;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  ::unlink(tmp_path_.c_str());
  committed_ = false;
  throw_io(path_, fmt::format("{}: {} ({} bytes written; the partial file was removed)", what, std::strerror(err), written_));
}

namespace {

// Writes all bytes or reports errno (EINTR retried; a zero-length write is reported as ENOSPC).
bool write_all(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (w == 0) {
      errno = ENOSPC;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

void AtomicFile::write(const void* data, size_t bytes) {
  if (fd_ < 0) throw Error(ErrorKind::Internal, fmt::format("{}: write after commit or failure", path_));
  const auto* p = static_cast<const uint8_t*>(data);
  while (bytes > 0) {
    if (buffer_.empty() && bytes >= kWriteBlockBytes) {  // large pieces bypass the buffer
      if (!write_all(fd_, p, bytes)) fail("write failed");
      written_ += bytes;
      return;
    }
    const size_t take = std::min(bytes, kWriteBlockBytes - buffer_.size());
    buffer_.insert(buffer_.end(), p, p + take);
    p += take;
    bytes -= take;
    written_ += take;
    if (buffer_.size() == kWriteBlockBytes) {
      if (!write_all(fd_, buffer_.data(), buffer_.size())) fail("write failed");
      buffer_.clear();
    }
  }
}

void AtomicFile::commit() {
  if (fd_ < 0) throw Error(ErrorKind::Internal, fmt::format("{}: commit after commit or failure", path_));
  if (!buffer_.empty() && !write_all(fd_, buffer_.data(), buffer_.size())) fail("write failed");
  buffer_.clear();
  if (::fsync(fd_) != 0) fail("fsync failed");
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    fd_ = -1;
    fail("close failed");
  }
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) fail(fmt::format("rename from {} failed", tmp_path_));
  committed_ = true;
}

// ---- SafetensorsWriter -----------------------------------------------------------------------

SafetensorsWriter::SafetensorsWriter(std::string path, std::vector<StTensorSpec> tensors,
                                     const std::map<std::string, std::string>& metadata)
    : file_(std::move(path)), tensors_(std::move(tensors)) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    if (t.name.empty() || t.name == "__metadata__") throw_invalid(fmt::format("{}: bad tensor name '{}'", file_.path(), t.name));
    if (header.contains(t.name)) throw_invalid(fmt::format("{}: tensor '{}' declared twice", file_.path(), t.name));
    for (int64_t d : t.shape)
      if (d < 0) throw_invalid(fmt::format("{}: tensor '{}' has shape {}", file_.path(), t.name, shape_str(t.shape)));
    const uint64_t n = t.nbytes();
    header[t.name] = {{"dtype", st_dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t len = text.size();
  uint8_t len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<uint8_t>(len >> (8 * i));
  file_.write(len_bytes, 8);
  file_.write(text.data(), text.size());
  file_bytes_ = 8 + len + offset;
}

void SafetensorsWriter::write(std::string_view name, std::span<const uint8_t> bytes) {
  if (next_ >= tensors_.size())
    throw_invalid(fmt::format("{}: tensor '{}' written but all {} declared tensors are done", file_.path(), name, tensors_.size()));
  const StTensorSpec& t = tensors_[next_];
  if (t.name != name) throw_mismatch(fmt::format("{}: next tensor", file_.path()), fmt::format("'{}'", t.name), fmt::format("'{}'", name));
  if (bytes.size() != t.nbytes())
    throw_mismatch(fmt::format("{}: tensor '{}' ({} {})", file_.path(), t.name, st_dtype_name(t.dtype), shape_str(t.shape)),
                   fmt::format("{} bytes", t.nbytes()), fmt::format("{} bytes", bytes.size()));
  file_.write(bytes.data(), bytes.size());
  ++next_;
}

void SafetensorsWriter::commit() {
  if (next_ != tensors_.size())
    throw Error(ErrorKind::Internal, fmt::format("{}: {} of {} declared tensors written (next '{}')", file_.path(), next_,
                                                 tensors_.size(), tensors_[next_].name));
  file_.commit();
}

void write_safetensors_atomic(const std::string& path, const std::vector<StTensorData>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<StTensorSpec> specs;
  specs.reserve(tensors.size());
  for (const auto& t : tensors) specs.push_back(t.spec);
  SafetensorsWriter w(path, std::move(specs), metadata);
  for (const auto& t : tensors) w.write(t.spec.name, t.bytes);
  w.commit();
}

// ---- SafetensorsReader -----------------------------------------------------------------------

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_io(path, fmt::format("cannot open: {}", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw_io(path, fmt::format("cannot stat: {}", std::strerror(err)));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw_io(path, fmt::format("cannot map {} bytes: {}", size_, std::strerror(err)));
    }
    map_ = static_cast<const uint8_t*>(m);
  }
  ::close(fd);
  try {
    if (size_ < 8) throw_format(path, fmt::format("{} bytes is too short for a safetensors file", size_));
    uint64_t header_len = 0;
    for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(map_[i]) << (8 * i);
    if (header_len > kMaxHeaderBytes || header_len > size_ - 8)
      throw_format(path, fmt::format("header length {} exceeds the file ({} bytes)", header_len, size_));
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(map_ + 8, map_ + 8 + header_len);
    } catch (const nlohmann::json::exception& e) {
      throw_format(path, fmt::format("header is not valid JSON: {}", e.what()));
    }
    if (!header.is_object()) throw_format(path, "header is not a JSON object");
    const uint64_t data_start = 8 + header_len, data_len = size_ - data_start;
    struct Range {
      uint64_t begin, end;
      std::string name;
    };
    std::vector<Range> ranges;
    for (auto it = header.begin(); it != header.end(); ++it) {
      const auto& v = it.value();
      if (it.key() == "__metadata__") {
        if (!v.is_object()) throw_format(path, "__metadata__ is not an object");
        for (auto m = v.begin(); m != v.end(); ++m)
          if (m.value().is_string()) metadata_[m.key()] = m.value().get<std::string>();
        continue;
      }
      auto bad = [&](const std::string& what) { throw_format(path, fmt::format("tensor '{}': {}", it.key(), what)); };
      if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets") || !v["dtype"].is_string())
        bad("entry needs dtype, shape and data_offsets");
      StTensorView t;
      t.name = it.key();
      t.dtype = parse_st_dtype(v["dtype"].get<std::string>(), fmt::format("{}: tensor '{}'", path, t.name));
      const auto& shape = v["shape"];
      if (!shape.is_array() || shape.size() > 8) bad("shape is not an array of at most 8 dimensions");
      int64_t numel = 1;
      for (const auto& d : shape) {
        if (!d.is_number_unsigned()) bad("shape holds a non-integer or negative dimension");
        const auto x = d.get<uint64_t>();
        if (x > (uint64_t{1} << 40) || (x > 0 && numel > std::numeric_limits<int64_t>::max() / 8 / static_cast<int64_t>(x)))
          bad(fmt::format("dimension {} is too large", x));
        t.shape.push_back(static_cast<int64_t>(x));
        numel *= static_cast<int64_t>(x);
      }
      const auto& off = v["data_offsets"];
      if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
        bad("data_offsets is not a pair of unsigned integers");
      const auto b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
      if (b > e || e > data_len) bad(fmt::format("data_offsets [{}, {}] lie outside the {} data bytes", b, e, data_len));
      const uint64_t want = static_cast<uint64_t>(numel) * static_cast<uint64_t>(st_dtype_size(t.dtype));
      if (want != e - b)
        bad(fmt::format("{} {}: expected {} bytes, got {} bytes (data_offsets [{}, {}])", st_dtype_name(t.dtype),
                        shape_str(t.shape), want, e - b, b, e));
      t.data = std::span<const uint8_t>(map_ + data_start + b, static_cast<size_t>(e - b));
      ranges.push_back({b, e, t.name});
      index_[t.name] = tensors_.size();
      tensors_.push_back(std::move(t));
    }
    std::sort(ranges.begin(), ranges.end(), [](const Range& x, const Range& y) { return x.begin < y.begin; });
    for (size_t i = 1; i < ranges.size(); ++i)
      if (ranges[i].begin < ranges[i - 1].end)
        throw_format(path, fmt::format("tensors '{}' and '{}' overlap", ranges[i - 1].name, ranges[i].name));
    // File order (the header's JSON object order is not kept by the parser).
    std::sort(tensors_.begin(), tensors_.end(),
              [](const StTensorView& a, const StTensorView& b) { return a.data.data() < b.data.data(); });
    index_.clear();
    for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
  } catch (...) {
    if (map_) ::munmap(const_cast<uint8_t*>(map_), size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsReader::~SafetensorsReader() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), size_);
}

const StTensorView* SafetensorsReader::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const StTensorView& SafetensorsReader::get(const std::string& name, StDType dtype, std::span<const int64_t> shape) const {
  const StTensorView* t = find(name);
  if (!t) throw_format(path_, fmt::format("tensor '{}' is missing", name));
  const std::vector<int64_t> want(shape.begin(), shape.end());
  if (t->dtype != dtype || t->shape != want)
    throw Error(ErrorKind::Format, fmt::format("{}: tensor '{}': expected {} {}, got {} {}", path_, name, st_dtype_name(dtype),
                                               shape_str(want), st_dtype_name(t->dtype), shape_str(t->shape)));
  return *t;
}

std::vector<float> copy_f32(const StTensorView& t) {
  if (t.dtype != StDType::F32) throw_invalid(fmt::format("tensor '{}' is {}, not F32", t.name, st_dtype_name(t.dtype)));
  std::vector<float> out(static_cast<size_t>(t.numel()));
  if (!out.empty()) std::memcpy(out.data(), t.data.data(), t.data.size());
  return out;
}

std::vector<uint8_t> copy_bytes(const StTensorView& t) { return {t.data.begin(), t.data.end()}; }

}  // namespace glq::format
