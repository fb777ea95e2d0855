// safetensors: u64 header length N, N bytes of JSON {name: {dtype, shape, data_offsets:[b, e]},
// "__metadata__": {str: str}}, then the data; offsets are relative to the end of the header.
#include "glq/model/safetensors.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include "glq/error.hpp"

namespace glq::model {

namespace {

constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;  // the reference implementation's cap

bool parse_dtype(const std::string& s, DType* out) {
  static const std::pair<const char*, DType> kMap[] = {
      {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}, {"I8", DType::I8},
      {"I16", DType::I16}, {"I32", DType::I32}, {"I64", DType::I64}};
  for (auto& [n, d] : kMap)
    if (s == n) { *out = d; return true; }
  return false;
}

const char* dtype_st_name(DType d) {
  switch (d) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I8: return "I8";
    case DType::I16: return "I16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    default: throw_unsupported(fmt::format("safetensors cannot store dtype {}", dtype_name(d)));
  }
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(std::make_unique<MappedFile>(path)) {
  const auto bytes = file_->bytes();
  if (bytes.size() < 8) throw Error(ErrorKind::Format, fmt::format("{}: {} bytes is too short for a safetensors file", path, bytes.size()));
  uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);
  if (header_len > kMaxHeaderBytes || header_len > bytes.size() - 8)
    throw Error(ErrorKind::Format, fmt::format("{}: header length {} exceeds the file ({} bytes)", path, header_len, bytes.size()));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<ptrdiff_t>(header_len));
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::Format, fmt::format("{}: header is not valid JSON: {}", path, e.what()));
  }
  if (!header.is_object()) throw Error(ErrorKind::Format, fmt::format("{}: header is not a JSON object", path));
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_len = bytes.size() - data_start;
  struct Range { uint64_t b, e; std::string name; };
  std::vector<Range> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw Error(ErrorKind::Format, fmt::format("{}: __metadata__ is not an object", path));
      for (auto m = v.begin(); m != v.end(); ++m)
        if (m.value().is_string()) metadata_[m.key()] = m.value().get<std::string>();
      continue;
    }
    auto bad = [&](const std::string& what) {
      throw Error(ErrorKind::Format, fmt::format("{}: tensor '{}': {}", path, name, what));
    };
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      bad("entry needs dtype, shape and data_offsets");
    if (!v["dtype"].is_string()) bad("dtype is not a string");
    TensorInfo t;
    t.name = name;
    t.file = path;
    if (!parse_dtype(v["dtype"].get<std::string>(), &t.dtype))
      throw Error(ErrorKind::Unsupported, fmt::format("{}: tensor '{}' has dtype {}, which GLQ does not read", path, name, v["dtype"].get<std::string>()));
    const auto& shape = v["shape"];
    if (!shape.is_array() || shape.size() > 8) bad("shape is not an array of at most 8 dimensions");
    int64_t numel = 1;
    for (const auto& d : shape) {
      if (!d.is_number_unsigned()) bad("shape holds a non-integer or negative dimension");
      const auto x = d.get<uint64_t>();
      if (x > (uint64_t{1} << 40) || (x > 0 && numel > std::numeric_limits<int64_t>::max() / static_cast<int64_t>(x)))
        bad(fmt::format("dimension {} is too large", x));
      t.shape.push_back(static_cast<int64_t>(x));
      numel *= static_cast<int64_t>(x);
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      bad("data_offsets is not a pair of unsigned integers");
    const auto b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (b > e || e > data_len)
      bad(fmt::format("data_offsets [{}, {}] lie outside the {} data bytes", b, e, data_len));
    const int64_t want = dtype_bytes(t.dtype, numel);
    if (static_cast<uint64_t>(want) != e - b)
      throw_mismatch(fmt::format("{}: tensor '{}' ({} {})", path, name, dtype_name(t.dtype), t.shape_string()),
                     fmt::format("{} bytes", want), fmt::format("{} bytes", e - b));
    t.data = bytes.subspan(data_start + b, static_cast<size_t>(e - b));
    ranges.push_back({b, e, name});
    index_[name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
  // Tensors must not overlap (a header that reuses bytes is corrupt).
  std::sort(ranges.begin(), ranges.end(), [](const Range& x, const Range& y) { return x.b < y.b; });
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].b < ranges[i - 1].e && ranges[i].e > ranges[i].b)
      throw Error(ErrorKind::Format, fmt::format("{}: tensors '{}' and '{}' overlap", path, ranges[i - 1].name, ranges[i].name));
}

SafetensorsFile::~SafetensorsFile() = default;

const std::string& SafetensorsFile::path() const { return file_->path(); }

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& t : tensors_) out.push_back(t.name);
  return out;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::string SafetensorsFile::description() const {
  std::map<std::string, int> counts;
  for (const auto& t : tensors_) counts[dtype_name(t.dtype)]++;
  std::string parts;
  for (auto& [k, n] : counts) parts += fmt::format("{}{}×{}", parts.empty() ? "" : ", ", n, k);
  return fmt::format("safetensors {} ({})", path(), parts);
}

namespace {

class ShardedSource final : public WeightSource {
 public:
  ShardedSource(std::string dir, std::vector<std::unique_ptr<SafetensorsFile>> shards)
      : dir_(std::move(dir)), shards_(std::move(shards)) {
    for (size_t s = 0; s < shards_.size(); ++s)
      for (const auto& n : shards_[s]->names()) {
        if (owner_.count(n))
          throw Error(ErrorKind::Format, fmt::format("{}: tensor '{}' appears in two shards", dir_, n));
        owner_[n] = s;
        order_.push_back(n);
      }
  }
  std::vector<std::string> names() const override { return order_; }
  const TensorInfo* find(const std::string& name) const override {
    auto it = owner_.find(name);
    return it == owner_.end() ? nullptr : shards_[it->second]->find(name);
  }
  std::string description() const override {
    if (shards_.size() == 1) return shards_[0]->description();
    return fmt::format("safetensors {} ({} shards, {} tensors)", dir_, shards_.size(), order_.size());
  }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, size_t> owner_;
  std::vector<std::string> order_;
};

std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw_io(p.string(), "cannot open");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

std::unique_ptr<WeightSource> open_safetensors_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path d(dir);
  std::vector<std::unique_ptr<SafetensorsFile>> shards;
  if (fs::exists(d / "model.safetensors")) {
    shards.push_back(std::make_unique<SafetensorsFile>((d / "model.safetensors").string()));
  } else if (fs::exists(d / "model.safetensors.index.json")) {
    const std::string index_path = (d / "model.safetensors.index.json").string();
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_text(index_path));
    } catch (const nlohmann::json::exception& e) {
      throw Error(ErrorKind::Format, fmt::format("{}: invalid JSON: {}", index_path, e.what()));
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw Error(ErrorKind::Format, fmt::format("{}: missing 'weight_map' object", index_path));
    std::set<std::string> files;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string()) throw Error(ErrorKind::Format, fmt::format("{}: weight_map['{}'] is not a file name", index_path, it.key()));
      const std::string f = it.value().get<std::string>();
      if (f.find('/') != std::string::npos || f.find("..") != std::string::npos)
        throw Error(ErrorKind::Format, fmt::format("{}: shard name '{}' leaves the directory", index_path, f));
      files.insert(f);
    }
    for (const auto& f : files) shards.push_back(std::make_unique<SafetensorsFile>((d / f).string()));
    auto src = std::make_unique<ShardedSource>(dir, std::move(shards));
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it)
      if (!src->find(it.key()))
        throw Error(ErrorKind::Format, fmt::format("{}: tensor '{}' is not in shard '{}'", index_path, it.key(), it.value().get<std::string>()));
    return src;
  } else {
    throw_io(dir, "no model.safetensors or model.safetensors.index.json");
  }
  return std::make_unique<ShardedSource>(dir, std::move(shards));
}

void write_safetensors(const std::string& path, const std::vector<TensorInfo>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    const int64_t want = dtype_bytes(t.dtype, t.numel());
    if (static_cast<int64_t>(t.data.size()) != want)
      throw_mismatch("write_safetensors: tensor '" + t.name + "'", fmt::format("{} bytes", want), fmt::format("{} bytes", t.data.size()));
    header[t.name] = {{"dtype", dtype_st_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.data.size()}}};
    offset += t.data.size();
  }
  std::string h = header.dump();
  while ((h.size() + 8) % 8 != 0) h.push_back(' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw_io(path, "cannot create");
  const uint64_t n = h.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out.write(h.data(), static_cast<std::streamsize>(h.size()));
  for (const auto& t : tensors) out.write(reinterpret_cast<const char*>(t.data.data()), static_cast<std::streamsize>(t.data.size()));
  if (!out) throw_io(path, "write failed");
}

}  // namespace glq::model
