// safetensors checkpoints as WeightSources: one file or the shards of an index. The format itself
// (header parsing and checks, writing) is the core's (src/core/format/safetensors_io.cpp).
#include "glq/model/safetensors.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include "glq/error.hpp"
#include "glq/format/safetensors_io.hpp"

namespace glq::model {

namespace {

// The dtypes the engine reads as weights (or rejects with a clear message where it expects a
// float); the GLQ code dtypes U8/U16/U32 are not among them.
bool to_dtype(format::StDType d, DType* out) {
  switch (d) {
    case format::StDType::F32: *out = DType::F32; return true;
    case format::StDType::F16: *out = DType::F16; return true;
    case format::StDType::BF16: *out = DType::BF16; return true;
    case format::StDType::I8: *out = DType::I8; return true;
    case format::StDType::I16: *out = DType::I16; return true;
    case format::StDType::I32: *out = DType::I32; return true;
    case format::StDType::I64: *out = DType::I64; return true;
    default: return false;
  }
}

format::StDType to_st_dtype(DType d) {
  switch (d) {
    case DType::F32: return format::StDType::F32;
    case DType::F16: return format::StDType::F16;
    case DType::BF16: return format::StDType::BF16;
    case DType::I8: return format::StDType::I8;
    case DType::I16: return format::StDType::I16;
    case DType::I32: return format::StDType::I32;
    case DType::I64: return format::StDType::I64;
    default: throw_unsupported(fmt::format("safetensors cannot store dtype {}", dtype_name(d)));
  }
}

}  // namespace

// The header is parsed and checked once, by the core's reader (glq/format/safetensors_io.hpp),
// which also reads GLQ checkpoints; this class only names its tensors in the engine's dtypes.
SafetensorsFile::SafetensorsFile(const std::string& path) : file_(std::make_unique<format::SafetensorsReader>(path)) {
  metadata_ = file_->metadata();
  for (const format::StTensorView& v : file_->tensors()) {
    TensorInfo t;
    t.name = v.name;
    t.file = path;
    if (!to_dtype(v.dtype, &t.dtype))
      throw Error(ErrorKind::Unsupported, fmt::format("{}: tensor '{}' has dtype {}, which GLQ does not read as a weight", path,
                                                      v.name, format::st_dtype_name(v.dtype)));
    t.shape = v.shape;
    t.data = v.data;
    index_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
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
  std::vector<format::StTensorSpec> specs;
  for (const auto& t : tensors) {
    const int64_t want = dtype_bytes(t.dtype, t.numel());
    if (static_cast<int64_t>(t.data.size()) != want)
      throw_mismatch("write_safetensors: tensor '" + t.name + "'", fmt::format("{} bytes", want), fmt::format("{} bytes", t.data.size()));
    specs.push_back({t.name, to_st_dtype(t.dtype), t.shape});
  }
  format::SafetensorsWriter w(path, std::move(specs), metadata);
  for (const auto& t : tensors) w.write(t.name, t.data);
  w.commit();
}

}  // namespace glq::model
