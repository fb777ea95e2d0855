// quantization_config of GLQ checkpoints: JSON in and out, with the version check.
#include "glq/format/quantization_config.hpp"

#include <cmath>

#include <fmt/format.h>

#include "glq/codec/codebook.hpp"
#include "glq/codec/quantized_matrix.hpp"
#include "glq/error.hpp"

namespace glq::format {

namespace {

std::string seed_string(uint64_t seed) { return fmt::format("0x{:x}", seed); }

// Seeds are written as hex strings: JSON readers in other languages keep only 53 bits of a number.
uint64_t parse_seed(const nlohmann::json& v, const std::string& origin, const std::string& key) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    try {
      size_t used = 0;
      const uint64_t x = std::stoull(s, &used, 0);
      if (used == s.size()) return x;
    } catch (const std::exception&) {
    }
  }
  throw_format(origin, fmt::format("quantization_config.{} = {} is not a seed (hex string)", key, v.dump()));
}

template <class T>
T field(const nlohmann::json& obj, const char* key, const std::string& origin, const std::string& where) {
  if (!obj.contains(key)) throw_format(origin, fmt::format("{} has no '{}'", where, key));
  try {
    return obj.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    throw_format(origin, fmt::format("{}.{} = {} has the wrong type", where, key, obj.at(key).dump()));
  }
}

}  // namespace

const LinearQuantEntry* QuantizationConfig::find(const std::string& name) const {
  for (const auto& e : linears)
    if (e.name == name) return &e;
  return nullptr;
}

std::vector<std::string> codebook_ids_for_bits(int bits) {
  std::vector<std::string> ids;
  for (codec::Codebook cb : codec::stages_for_bits(bits)) ids.emplace_back(codec::codebook_id(cb));
  return ids;
}

nlohmann::ordered_json to_json(const QuantizationConfig& qc) {
  nlohmann::ordered_json j;
  j["quant_method"] = kGlqQuantMethod;
  j["format_version"] = qc.format_version;
  j["pack_version"] = qc.pack_version;
  j["bits"] = qc.target_bits;
  nlohmann::ordered_json books;
  for (int b : {2, 3, 4}) books[std::to_string(b)] = codebook_ids_for_bits(b);
  j["codebooks"] = books;
  j["transform"] = {{"type", qc.rht ? kRhtTransformId : "none"},
                    {"description", qc.rht ? "W~ = T_out diag(sign_out) W diag(sign_in) T_in^T; T_n = Q_a (x) H_b / sqrt(b) "
                                             "from make_hadamard_plan(n); signs stored bit-packed per linear"
                                           : "none: codes approximate W itself"}};
  j["ldlq"] = qc.ldlq;
  j["damp"] = qc.damp;
  j["seed"] = seed_string(qc.seed);
  j["dtype_16bit"] = qc.dtype_16bit;
  j["head_quantized"] = qc.head_quantized;
  j["calibration"] = {{"file", qc.calibration.file},
                      {"sequences", qc.calibration.sequences},
                      {"seq_len", qc.calibration.seq_len},
                      {"seed", seed_string(qc.calibration.seed)}};
  // A list (not an object keyed by name) so that every JSON reader keeps the model order.
  nlohmann::ordered_json lin = nlohmann::ordered_json::array();
  for (const auto& e : qc.linears) {
    lin.push_back({{"name", e.name},
                   {"bits", e.bits},
                   {"shape", {e.rows, e.cols}},
                   {"transform", e.rht ? kRhtTransformId : "none"},
                   {"seed", seed_string(e.seed)},
                   {"proxy_loss", e.proxy_loss},
                   {"relative_weight_error", e.relative_weight_error}});
  }
  j["linears"] = lin;
  return j;
}

bool is_glq_config(const nlohmann::json& config) {
  if (!config.is_object() || !config.contains("quantization_config")) return false;
  const auto& qc = config["quantization_config"];
  return qc.is_object() && qc.contains("quant_method") && qc["quant_method"].is_string() &&
         qc["quant_method"].get<std::string>() == kGlqQuantMethod;
}

QuantizationConfig parse_quantization_config(const nlohmann::json& j, const std::string& origin) {
  const std::string where = "quantization_config";
  if (!j.is_object()) throw_format(origin, "quantization_config is not an object");
  const auto method = field<std::string>(j, "quant_method", origin, where);
  if (method != kGlqQuantMethod)
    throw_format(origin, fmt::format("quantization_config.quant_method is '{}', expected '{}'", method, kGlqQuantMethod));
  QuantizationConfig qc;
  qc.format_version = field<int>(j, "format_version", origin, where);
  if (qc.format_version != kGlqFormatVersion)
    throw_format(origin, fmt::format("GLQ checkpoint format_version {} is not supported: this build reads version {}",
                                     qc.format_version, kGlqFormatVersion));
  qc.pack_version = field<int>(j, "pack_version", origin, where);
  if (qc.pack_version != codec::kGlqPackVersion)
    throw_format(origin, fmt::format("GLQ pack_version {} is not supported: this build reads version {}", qc.pack_version,
                                     codec::kGlqPackVersion));
  qc.target_bits = field<double>(j, "bits", origin, where);
  // The codebook ids must be those this build decodes.
  const auto& books = j.contains("codebooks") ? j["codebooks"] : nlohmann::json::object();
  for (auto it = books.begin(); it != books.end(); ++it) {
    int bits = 0;
    try {
      bits = std::stoi(it.key());
    } catch (const std::exception&) {
      throw_format(origin, fmt::format("quantization_config.codebooks has key '{}', not a bit width", it.key()));
    }
    if (bits < 2 || bits > 4) throw_format(origin, fmt::format("quantization_config.codebooks has width {}", bits));
    std::vector<std::string> ids;
    try {
      ids = it.value().get<std::vector<std::string>>();
    } catch (const nlohmann::json::exception&) {
      throw_format(origin, fmt::format("quantization_config.codebooks.{} is not a list of ids", it.key()));
    }
    if (ids != codebook_ids_for_bits(bits))
      throw_format(origin, fmt::format("quantization_config.codebooks.{} = {} but this build decodes {}", it.key(),
                                       it.value().dump(), nlohmann::json(codebook_ids_for_bits(bits)).dump()));
  }
  const auto& tr = j.contains("transform") ? j["transform"] : nlohmann::json();
  const std::string ttype = tr.is_object() ? field<std::string>(tr, "type", origin, where + ".transform") : std::string("?");
  if (ttype != kRhtTransformId && ttype != "none")
    throw_format(origin, fmt::format("quantization_config.transform.type '{}' is unknown (expected '{}' or 'none')", ttype,
                                     kRhtTransformId));
  qc.rht = ttype == kRhtTransformId;
  qc.ldlq = field<bool>(j, "ldlq", origin, where);
  qc.damp = field<double>(j, "damp", origin, where);
  qc.seed = parse_seed(j.value("seed", nlohmann::json("0")), origin, "seed");
  qc.dtype_16bit = field<std::string>(j, "dtype_16bit", origin, where);
  if (qc.dtype_16bit != "float16" && qc.dtype_16bit != "bfloat16" && qc.dtype_16bit != "float32")
    throw_format(origin, fmt::format("quantization_config.dtype_16bit '{}' is unknown", qc.dtype_16bit));
  qc.head_quantized = j.value("head_quantized", false);
  if (j.contains("calibration") && j["calibration"].is_object()) {
    const auto& c = j["calibration"];
    qc.calibration.file = c.value("file", std::string());
    qc.calibration.sequences = c.value("sequences", 0);
    qc.calibration.seq_len = c.value("seq_len", 0);
    qc.calibration.seed = parse_seed(c.value("seed", nlohmann::json("0")), origin, "calibration.seed");
  }
  if (!j.contains("linears") || !j["linears"].is_array()) throw_format(origin, "quantization_config.linears is missing or not a list");
  for (size_t idx = 0; idx < j["linears"].size(); ++idx) {
    const auto& v = j["linears"][idx];
    const std::string w = fmt::format("{}.linears[{}]", where, idx);
    if (!v.is_object()) throw_format(origin, w + " is not an object");
    LinearQuantEntry e;
    e.name = field<std::string>(v, "name", origin, w);
    e.bits = field<int>(v, "bits", origin, w);
    if (e.bits < 2 || e.bits > 4) throw_format(origin, fmt::format("{}.bits = {} (expected 2, 3 or 4)", w, e.bits));
    const auto shape = field<std::vector<int>>(v, "shape", origin, w);
    if (shape.size() != 2 || shape[0] <= 0 || shape[1] <= 0 || shape[0] % 8 || shape[1] % 8)
      throw_format(origin, fmt::format("{}.shape = {} (expected two positive multiples of 8)", w, v["shape"].dump()));
    e.rows = shape[0];
    e.cols = shape[1];
    const std::string t = field<std::string>(v, "transform", origin, w);
    if (t != kRhtTransformId && t != "none") throw_format(origin, fmt::format("{}.transform '{}' is unknown", w, t));
    e.rht = t == kRhtTransformId;
    e.seed = parse_seed(v.value("seed", nlohmann::json("0")), origin, w + ".seed");
    e.proxy_loss = v.value("proxy_loss", 0.0);
    e.relative_weight_error = v.value("relative_weight_error", 0.0);
    qc.linears.push_back(std::move(e));
  }
  return qc;
}

std::string glq_codes_name(const std::string& prefix, int stage) { return fmt::format("{}.glq_codes.{}", prefix, stage); }
std::string glq_scales_name(const std::string& prefix, int stage) { return fmt::format("{}.glq_scales.{}", prefix, stage); }
std::string glq_sign_in_name(const std::string& prefix) { return prefix + ".glq_sign_in"; }
std::string glq_sign_out_name(const std::string& prefix) { return prefix + ".glq_sign_out"; }

}  // namespace glq::format
