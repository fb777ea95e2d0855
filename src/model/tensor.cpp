// DTypes, ggml block dequantization, memory-mapped files, WeightSource helpers.
#include "glq/model/tensor.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "glq/error.hpp"
#include "model/half.hpp"

namespace glq::model {

namespace {

struct DTypeTraits {
  const char* name;
  int64_t block_size;   // weights per block
  int64_t block_bytes;  // bytes per block
  bool is_float;        // convertible to float32
};

// Indexed by DType. Block layouts are ggml's (ggml-common.h): Q8_0 {f16 d; i8 q[32]},
// Q4_0 {f16 d; u8 q[16]}, Q4_1 {f16 d, m; u8 q[16]}, Q4_K {f16 d, dmin; u8 scales[12];
// u8 q[128]}, Q5_K {f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 q[128]},
// Q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}.
constexpr DTypeTraits kTraits[] = {
    {"F32", 1, 4, true},    {"F16", 1, 2, true},     {"BF16", 1, 2, true},
    {"Q8_0", 32, 34, true}, {"Q4_0", 32, 18, true},  {"Q4_1", 32, 20, true},
    {"Q4_K", 256, 144, true}, {"Q5_K", 256, 176, true}, {"Q6_K", 256, 210, true},
    {"I8", 1, 1, false},    {"I16", 1, 2, false},    {"I32", 1, 4, false},
    {"I64", 1, 8, false},
};

const DTypeTraits& traits(DType t) {
  const auto i = static_cast<size_t>(t);
  if (i >= std::size(kTraits)) throw Error(ErrorKind::Internal, "unknown dtype value");
  return kTraits[i];
}

// Scale and min of sub-block j (0..7) of a Q4_K/Q5_K super-block: 6-bit values packed in 12 bytes.
inline void scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
  }
}

void dequant_q8_0(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b));
  const auto* q = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = d * static_cast<float>(q[j]);
}

void dequant_q4_0(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b));
  const uint8_t* q = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((q[j] & 0xF) - 8);
    y[j + 16] = d * static_cast<float>((q[j] >> 4) - 8);
  }
}

void dequant_q4_1(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b));
  const float m = f16_to_f32(load_u16(b + 2));
  const uint8_t* q = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(q[j] & 0xF) + m;
    y[j + 16] = d * static_cast<float>(q[j] >> 4) + m;
  }
}

void dequant_q4_k(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b));
  const float dmin = f16_to_f32(load_u16(b + 2));
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  int is = 0;
  for (int j = 0; j < 256; j += 64) {
    uint8_t sc, m;
    scale_min_k4(is + 0, scales, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    scale_min_k4(is + 1, scales, &sc, &m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    q += 32;
    is += 2;
  }
}

void dequant_q5_k(const uint8_t* b, float* y) {
  const float d = f16_to_f32(load_u16(b));
  const float dmin = f16_to_f32(load_u16(b + 2));
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + 48;
  int is = 0;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0; j < 256; j += 64) {
    uint8_t sc, m;
    scale_min_k4(is + 0, scales, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    scale_min_k4(is + 1, scales, &sc, &m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l)
      *y++ = d1 * static_cast<float>((ql[l] & 0xF) + ((qh[l] & u1) ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l)
      *y++ = d2 * static_cast<float>((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
    ql += 32;
    is += 2;
    u1 = static_cast<uint8_t>(u1 << 2);
    u2 = static_cast<uint8_t>(u2 << 2);
  }
}

void dequant_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = f16_to_f32(load_u16(b + 208));
  for (int n = 0; n < 256; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l + 0] = d * sc[is + 0] * static_cast<float>(q1);
      y[l + 32] = d * sc[is + 2] * static_cast<float>(q2);
      y[l + 64] = d * sc[is + 4] * static_cast<float>(q3);
      y[l + 96] = d * sc[is + 6] * static_cast<float>(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

}  // namespace

const char* dtype_name(DType dtype) { return traits(dtype).name; }
int64_t dtype_block_size(DType dtype) { return traits(dtype).block_size; }
int64_t dtype_block_bytes(DType dtype) { return traits(dtype).block_bytes; }

int64_t dtype_bytes(DType dtype, int64_t count) {
  const auto& t = traits(dtype);
  if (count < 0) throw_invalid(fmt::format("negative element count {}", count));
  if (count % t.block_size != 0)
    throw Error(ErrorKind::Format, fmt::format("{} elements are not a whole number of {} blocks of {}",
                                               count, t.name, t.block_size));
  const int64_t blocks = count / t.block_size;
  if (blocks > std::numeric_limits<int64_t>::max() / t.block_bytes)
    throw Error(ErrorKind::Format, fmt::format("{} elements of {} overflow the size", count, t.name));
  return blocks * t.block_bytes;
}

void dequantize(DType dtype, const uint8_t* src, float* dst, int64_t count) {
  const auto& t = traits(dtype);
  if (!t.is_float) throw_unsupported(fmt::format("dtype {} cannot be converted to float32", t.name));
  if (count % t.block_size != 0)
    throw_invalid(fmt::format("{} elements are not a whole number of {} blocks", count, t.name));
  const int64_t blocks = count / t.block_size;
  switch (dtype) {
    case DType::F32: std::memcpy(dst, src, static_cast<size_t>(count) * 4); return;
    case DType::F16:
      for (int64_t i = 0; i < count; ++i) dst[i] = f16_to_f32(load_u16(src + 2 * i));
      return;
    case DType::BF16:
      for (int64_t i = 0; i < count; ++i) dst[i] = bf16_to_f32(load_u16(src + 2 * i));
      return;
    default: break;
  }
  void (*fn)(const uint8_t*, float*) = nullptr;
  switch (dtype) {
    case DType::Q8_0: fn = dequant_q8_0; break;
    case DType::Q4_0: fn = dequant_q4_0; break;
    case DType::Q4_1: fn = dequant_q4_1; break;
    case DType::Q4_K: fn = dequant_q4_k; break;
    case DType::Q5_K: fn = dequant_q5_k; break;
    case DType::Q6_K: fn = dequant_q6_k; break;
    default: throw_unsupported(fmt::format("dtype {} cannot be converted to float32", t.name));
  }
  for (int64_t b = 0; b < blocks; ++b) fn(src + b * t.block_bytes, dst + b * t.block_size);
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_io(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    throw_io(path, std::string("cannot stat: ") + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw_io(path, "not a regular file");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      throw_io(path, std::string("cannot map: ") + std::strerror(e));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorInfo::shape_string() const { return fmt::format("[{}]", fmt::join(shape, ", ")); }

const TensorInfo& WeightSource::get(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) throw Error(ErrorKind::Format, fmt::format("{}: missing tensor '{}'", description(), name));
  return *t;
}

const TensorInfo& WeightSource::checked_float_tensor(const std::string& name,
                                                     std::span<const int64_t> expected_shape) const {
  const TensorInfo& t = get(name);
  if (!std::equal(t.shape.begin(), t.shape.end(), expected_shape.begin(), expected_shape.end()))
    throw_mismatch(fmt::format("{}: tensor '{}'", t.file, name),
                   fmt::format("shape [{}]", fmt::join(expected_shape, ", ")),
                   "shape " + t.shape_string());
  if (!traits(t.dtype).is_float)
    throw Error(ErrorKind::Format, fmt::format("{}: tensor '{}' has dtype {}, expected a float type",
                                               t.file, name, dtype_name(t.dtype)));
  const int64_t n = t.numel();
  if (static_cast<int64_t>(t.data.size()) != dtype_bytes(t.dtype, n))
    throw_mismatch(fmt::format("{}: tensor '{}' data", t.file, name),
                   fmt::format("{} bytes", dtype_bytes(t.dtype, n)), fmt::format("{} bytes", t.data.size()));
  return t;
}

std::vector<float> WeightSource::load_f32(const std::string& name,
                                          std::span<const int64_t> expected_shape) const {
  const TensorInfo& t = checked_float_tensor(name, expected_shape);
  const int64_t n = t.numel();
  std::vector<float> out(static_cast<size_t>(n));
  dequantize(t.dtype, t.data.data(), out.data(), n);
  return out;
}

void WeightSource::load_rows_f32(const std::string& name, std::span<const int64_t> expected_shape, int64_t first,
                                 int64_t count, float* out) const {
  const TensorInfo& t = checked_float_tensor(name, expected_shape);
  const int64_t rows = t.shape.empty() ? 1 : t.shape[0];
  if (first < 0 || count < 0 || first > rows - count)
    throw_invalid(fmt::format("{}: tensor '{}' {}: rows [{}, {}) requested", t.file, name, t.shape_string(), first,
                              first + count));
  if (count == 0) return;
  const int64_t row = rows > 0 ? t.numel() / rows : 0;  // elements per row
  if (row % dtype_block_size(t.dtype) != 0)
    throw Error(ErrorKind::Format, fmt::format("{}: tensor '{}' {}: rows of {} elements are not whole {} blocks of {}",
                                               t.file, name, t.shape_string(), row, dtype_name(t.dtype),
                                               dtype_block_size(t.dtype)));
  const int64_t row_bytes = dtype_bytes(t.dtype, row);
  dequantize(t.dtype, t.data.data() + first * row_bytes, out, count * row);
}

}  // namespace glq::model
