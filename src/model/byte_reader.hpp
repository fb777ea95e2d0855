// Bounds-checked little-endian reader over a byte span (private to glq_model). Every read
// checks the remaining length first and throws Format naming the file and offset otherwise.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#include <fmt/format.h>

#include "glq/error.hpp"

namespace glq::model {

class ByteReader {
 public:
  ByteReader(std::span<const uint8_t> bytes, std::string file) : bytes_(bytes), file_(std::move(file)) {}

  size_t offset() const { return pos_; }
  size_t remaining() const { return bytes_.size() - pos_; }
  const std::string& file() const { return file_; }

  void need(uint64_t n, const char* what) const {
    if (n > remaining())
      throw Error(ErrorKind::Format,
                  fmt::format("{}: truncated at byte {} reading {} ({} bytes needed, {} left)", file_,
                              pos_, what, n, remaining()));
  }
  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(uint64_t len, const char* what) {
    need(len, what);
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return s;
  }
  void skip(uint64_t n, const char* what) {
    need(n, what);
    pos_ += static_cast<size_t>(n);
  }

 private:
  std::span<const uint8_t> bytes_;
  std::string file_;
  size_t pos_ = 0;
};

}  // namespace glq::model
