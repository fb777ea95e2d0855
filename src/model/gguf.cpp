// GGUF reader. Layout (little-endian): "GGUF", u32 version (2 or 3), u64 tensor_count,
// u64 kv_count, kv_count × {string key, u32 type, value}, tensor_count × {string name,
// u32 n_dims, u64 ne[n_dims] (innermost first), u32 ggml_type, u64 offset}, padding to
// general.alignment (default 32), tensor data. Strings are u64 length + bytes.
#include "glq/model/gguf.hpp"

#include <algorithm>
#include <limits>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "glq/error.hpp"
#include "model/byte_reader.hpp"

namespace glq::model {

namespace {

// Caps on what a header may claim, far above real models, so a lying count cannot make us
// allocate unbounded memory before the bounds checks catch it.
constexpr uint64_t kMaxStringBytes = uint64_t{1} << 26;  // one metadata string
constexpr uint64_t kMaxDims = 4;                          // GGML_MAX_DIMS

enum GgufType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

std::string read_gguf_string(ByteReader& r, const char* what) {
  const auto len = r.read<uint64_t>(what);
  if (len > kMaxStringBytes)
    throw Error(ErrorKind::Format, fmt::format("{}: string of {} bytes at byte {} is too long", r.file(), len, r.offset()));
  return r.read_string(len, what);
}

// Reads one scalar of `type` into v (for arrays: appended to the matching vector).
void read_scalar(ByteReader& r, uint32_t type, GgufValue& v, bool in_array) {
  auto put_int = [&](int64_t x, bool is_unsigned) {
    if (in_array) {
      v.ints.push_back(x);
    } else if (is_unsigned) {
      v.type = GgufValue::Type::UInt;
      v.u = static_cast<uint64_t>(x);
      v.i = x;
    } else {
      v.type = GgufValue::Type::Int;
      v.i = x;
      v.u = static_cast<uint64_t>(x);
    }
  };
  auto put_float = [&](double x) {
    if (in_array) v.floats.push_back(x);
    else { v.type = GgufValue::Type::Float; v.f = x; }
  };
  switch (type) {
    case kU8: put_int(r.read<uint8_t>("u8"), true); break;
    case kI8: put_int(r.read<int8_t>("i8"), false); break;
    case kU16: put_int(r.read<uint16_t>("u16"), true); break;
    case kI16: put_int(r.read<int16_t>("i16"), false); break;
    case kU32: put_int(r.read<uint32_t>("u32"), true); break;
    case kI32: put_int(r.read<int32_t>("i32"), false); break;
    case kU64: {
      const auto x = r.read<uint64_t>("u64");
      if (in_array) v.ints.push_back(static_cast<int64_t>(x));
      else { v.type = GgufValue::Type::UInt; v.u = x; v.i = static_cast<int64_t>(x); }
      break;
    }
    case kI64: put_int(r.read<int64_t>("i64"), false); break;
    case kF32: put_float(r.read<float>("f32")); break;
    case kF64: put_float(r.read<double>("f64")); break;
    case kBool: {
      const auto b = r.read<uint8_t>("bool");
      if (b > 1) throw Error(ErrorKind::Format, fmt::format("{}: bool value {} at byte {}", r.file(), b, r.offset() - 1));
      if (in_array) v.ints.push_back(b);
      else { v.type = GgufValue::Type::Bool; v.b = b != 0; v.u = b; v.i = b; }
      break;
    }
    case kString: {
      auto s = read_gguf_string(r, "string value");
      if (in_array) v.strings.push_back(std::move(s));
      else { v.type = GgufValue::Type::String; v.s = std::move(s); }
      break;
    }
    default:
      throw Error(ErrorKind::Format, fmt::format("{}: unknown metadata type {} at byte {}", r.file(), type, r.offset()));
  }
}

uint64_t min_bytes_of(uint32_t type) {
  switch (type) {
    case kU8: case kI8: case kBool: return 1;
    case kU16: case kI16: return 2;
    case kU32: case kI32: case kF32: return 4;
    case kU64: case kI64: case kF64: case kString: return 8;
    case kArray: return 12;
    default: return 1;
  }
}

void read_value(ByteReader& r, uint32_t type, GgufValue& v, int depth) {
  if (type != kArray) {
    read_scalar(r, type, v, false);
    return;
  }
  v.type = GgufValue::Type::Array;
  const auto elem = r.read<uint32_t>("array type");
  const auto n = r.read<uint64_t>("array length");
  // Each element needs at least min_bytes_of(elem) bytes: a length that cannot fit is a lie.
  if (n > r.remaining() / min_bytes_of(elem))
    throw Error(ErrorKind::Format, fmt::format("{}: array of {} elements at byte {} exceeds the file", r.file(), n, r.offset()));
  if (elem == kArray) {
    if (depth > 2) throw Error(ErrorKind::Format, fmt::format("{}: arrays nested too deep", r.file()));
    for (uint64_t i = 0; i < n; ++i) {
      GgufValue skip;
      read_value(r, kArray, skip, depth + 1);  // nested arrays are read and dropped
    }
    return;
  }
  if (elem == kString) v.strings.reserve(n);
  else if (elem == kF32 || elem == kF64) v.floats.reserve(n);
  else v.ints.reserve(n);
  for (uint64_t i = 0; i < n; ++i) read_scalar(r, elem, v, true);
}

bool ggml_type_to_dtype(uint32_t t, DType* out) {
  switch (t) {
    case 0: *out = DType::F32; return true;
    case 1: *out = DType::F16; return true;
    case 2: *out = DType::Q4_0; return true;
    case 3: *out = DType::Q4_1; return true;
    case 8: *out = DType::Q8_0; return true;
    case 12: *out = DType::Q4_K; return true;
    case 13: *out = DType::Q5_K; return true;
    case 14: *out = DType::Q6_K; return true;
    case 24: *out = DType::I8; return true;
    case 25: *out = DType::I16; return true;
    case 26: *out = DType::I32; return true;
    case 27: *out = DType::I64; return true;
    case 30: *out = DType::BF16; return true;
    default: return false;
  }
}

}  // namespace

GgufFile::GgufFile(const std::string& path) : file_(std::make_unique<MappedFile>(path)) {
  ByteReader r(file_->bytes(), path);
  const auto magic = r.read<uint32_t>("magic");
  if (magic != 0x46554747u)  // "GGUF"
    throw Error(ErrorKind::Format, fmt::format("{}: not a GGUF file (magic 0x{:08x})", path, magic));
  version_ = r.read<uint32_t>("version");
  if (version_ != 2 && version_ != 3)
    throw Error(ErrorKind::Format, fmt::format("{}: GGUF version {} is not supported (2 or 3)", path, version_));
  const auto n_tensors = r.read<uint64_t>("tensor count");
  const auto n_kv = r.read<uint64_t>("metadata count");
  // A kv entry takes at least 8+4+1 bytes, a tensor entry 8+4+4+8 bytes.
  if (n_kv > r.remaining() / 13 || n_tensors > r.remaining() / 24)
    throw Error(ErrorKind::Format, fmt::format("{}: header claims {} metadata entries and {} tensors, more than the file holds",
                                               path, n_kv, n_tensors));
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = read_gguf_string(r, "metadata key");
    const auto type = r.read<uint32_t>("metadata type");
    GgufValue v;
    read_value(r, type, v, 0);
    metadata_[std::move(key)] = std::move(v);
  }
  uint64_t alignment = 32;
  if (const GgufValue* a = find_value("general.alignment")) {
    if (a->type != GgufValue::Type::UInt || a->u == 0 || a->u > 65536 || (a->u & (a->u - 1)) != 0)
      throw Error(ErrorKind::Format, fmt::format("{}: general.alignment {} is not a power of two <= 65536", path, a->u));
    alignment = a->u;
  }
  struct Raw {
    std::string name;
    std::vector<int64_t> shape;
    DType dtype;
    uint64_t offset;
  };
  std::vector<Raw> raws;
  raws.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    Raw t;
    t.name = read_gguf_string(r, "tensor name");
    const auto n_dims = r.read<uint32_t>("tensor rank");
    if (n_dims == 0 || n_dims > kMaxDims)
      throw Error(ErrorKind::Format, fmt::format("{}: tensor '{}' has rank {} (1..4)", path, t.name, n_dims));
    std::vector<int64_t> ne(n_dims);
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const auto x = r.read<uint64_t>("tensor dimension");
      if (x == 0 || x > (uint64_t{1} << 40) || numel > std::numeric_limits<int64_t>::max() / static_cast<int64_t>(x))
        throw Error(ErrorKind::Format, fmt::format("{}: tensor '{}' has dimension {} = {}", path, t.name, d, x));
      ne[d] = static_cast<int64_t>(x);
      numel *= ne[d];
    }
    t.shape.assign(ne.rbegin(), ne.rend());  // row-major, outermost first
    const auto type = r.read<uint32_t>("tensor type");
    if (!ggml_type_to_dtype(type, &t.dtype))
      throw Error(ErrorKind::Unsupported, fmt::format("{}: tensor '{}' has ggml type {}, which GLQ does not read", path, t.name, type));
    if (ne[0] % dtype_block_size(t.dtype) != 0)
      throw Error(ErrorKind::Format, fmt::format("{}: tensor '{}' row of {} is not a multiple of the {} block of {}",
                                                 path, t.name, ne[0], dtype_name(t.dtype), dtype_block_size(t.dtype)));
    t.offset = r.read<uint64_t>("tensor offset");
    if (t.offset % alignment != 0)
      throw Error(ErrorKind::Format, fmt::format("{}: tensor '{}' offset {} is not aligned to {}", path, t.name, t.offset, alignment));
    if (index_.count(t.name) || std::any_of(raws.begin(), raws.end(), [&](const Raw& o) { return o.name == t.name; }))
      throw Error(ErrorKind::Format, fmt::format("{}: tensor '{}' appears twice", path, t.name));
    raws.push_back(std::move(t));
  }
  const uint64_t data_start = (r.offset() + alignment - 1) / alignment * alignment;
  const uint64_t file_size = file_->bytes().size();
  if (data_start > file_size && n_tensors > 0)
    throw Error(ErrorKind::Format, fmt::format("{}: tensor data would start at byte {}, past the end ({} bytes)", path, data_start, file_size));
  tensors_.reserve(raws.size());
  for (auto& t : raws) {
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    const int64_t bytes = dtype_bytes(t.dtype, numel);
    if (t.offset > file_size - std::min(file_size, data_start) ||
        static_cast<uint64_t>(bytes) > file_size - data_start - t.offset)
      throw Error(ErrorKind::Format, fmt::format("{}: tensor '{}' ({} bytes at data offset {}) runs past the end of the file ({} bytes)",
                                                 path, t.name, bytes, t.offset, file_size));
    TensorInfo info;
    info.name = t.name;
    info.dtype = t.dtype;
    info.shape = std::move(t.shape);
    info.data = file_->bytes().subspan(data_start + t.offset, static_cast<size_t>(bytes));
    info.file = path;
    index_[info.name] = tensors_.size();
    tensors_.push_back(std::move(info));
  }
}

GgufFile::~GgufFile() = default;

const std::string& GgufFile::path() const { return file_->path(); }

const GgufValue* GgufFile::find_value(const std::string& key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

std::string GgufFile::get_string(const std::string& key) const {
  const GgufValue* v = find_value(key);
  if (!v) throw Error(ErrorKind::Format, fmt::format("{}: missing metadata key '{}'", path(), key));
  if (v->type != GgufValue::Type::String)
    throw Error(ErrorKind::Format, fmt::format("{}: metadata key '{}' is not a string", path(), key));
  return v->s;
}

std::optional<int64_t> GgufFile::get_int_or(const std::string& key) const {
  const GgufValue* v = find_value(key);
  if (!v) return std::nullopt;
  if (v->type == GgufValue::Type::UInt || v->type == GgufValue::Type::Int || v->type == GgufValue::Type::Bool) return v->i;
  throw Error(ErrorKind::Format, fmt::format("{}: metadata key '{}' is not an integer", path(), key));
}

std::optional<double> GgufFile::get_float_or(const std::string& key) const {
  const GgufValue* v = find_value(key);
  if (!v) return std::nullopt;
  if (v->type == GgufValue::Type::Float) return v->f;
  if (v->type == GgufValue::Type::UInt || v->type == GgufValue::Type::Int) return static_cast<double>(v->i);
  throw Error(ErrorKind::Format, fmt::format("{}: metadata key '{}' is not a number", path(), key));
}

int64_t GgufFile::get_int(const std::string& key) const {
  auto v = get_int_or(key);
  if (!v) throw Error(ErrorKind::Format, fmt::format("{}: missing metadata key '{}'", path(), key));
  return *v;
}

double GgufFile::get_float(const std::string& key) const {
  auto v = get_float_or(key);
  if (!v) throw Error(ErrorKind::Format, fmt::format("{}: missing metadata key '{}'", path(), key));
  return *v;
}

std::vector<std::string> GgufFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& t : tensors_) out.push_back(t.name);
  return out;
}

const TensorInfo* GgufFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::string GgufFile::description() const {
  std::map<std::string, int> counts;
  for (const auto& t : tensors_) counts[dtype_name(t.dtype)]++;
  std::vector<std::string> parts;
  for (auto& [k, n] : counts) parts.push_back(fmt::format("{}×{}", n, k));
  return fmt::format("GGUF v{} {} ({})", version_, path(), fmt::join(parts, ", "));
}

}  // namespace glq::model
