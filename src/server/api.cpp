// Request validation and response bodies of the OpenAI-compatible API (see glq/server/api.hpp).
#include "glq/server/api.hpp"

#include "glq/error.hpp"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

namespace glq::server {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

ApiError::ApiError(int status, const std::string& message, std::string param, std::string code,
                   std::string type)
    : std::runtime_error(message), status_(status), param_(std::move(param)), code_(std::move(code)),
      type_(std::move(type)) {
  if (type_.empty()) type_ = status_ >= 500 ? "server_error" : "invalid_request_error";
}

std::string ApiError::to_json() const {
  ojson e;
  e["message"] = what();
  e["type"] = type_;
  e["param"] = param_.empty() ? ojson(nullptr) : ojson(param_);
  e["code"] = code_.empty() ? ojson(nullptr) : ojson(code_);
  ojson body;
  body["error"] = std::move(e);
  return body.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

// The largest max_tokens the parser lets through; the context check gives the precise limit.
constexpr int64_t kMaxTokensCeiling = 1 << 30;

[[noreturn]] void bad(const std::string& param, const std::string& message) {
  throw ApiError(400, message, param);
}

std::string describe(const json& v) {
  if (v.is_string()) {
    std::string s = v.get<std::string>();
    if (s.size() > 40) s = s.substr(0, 40) + "...";
    return fmt::format("string '{}'", s);
  }
  if (v.is_number() || v.is_boolean()) return fmt::format("{} {}", v.type_name(), v.dump());
  return v.type_name();
}

json parse_body(std::string_view body) {
  if (body.empty()) bad("", "The request body is empty; expected a JSON object.");
  json j;
  try {
    j = json::parse(body.begin(), body.end());
  } catch (const json::exception& e) {
    bad("", fmt::format("The request body is not valid JSON: {}", e.what()));
  }
  if (!j.is_object()) bad("", fmt::format("The request body must be a JSON object, got {}.", j.type_name()));
  return j;
}

// A field, or nullptr when absent or null (null means "not given" in the OpenAI API).
const json* field(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

int64_t as_integer(const json& v, const std::string& name, int64_t lo, int64_t hi) {
  int64_t x = 0;
  if (v.is_number_integer()) {  // signed or unsigned
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      bad(name, fmt::format("'{}' must be an integer from {} to {}, got {}.", name, lo, hi, v.dump()));
    x = v.get<int64_t>();
  } else if (v.is_number_float()) {
    const double d = v.get<double>();
    if (!std::isfinite(d) || d != std::floor(d))
      bad(name, fmt::format("'{}' must be an integer, got {}.", name, describe(v)));
    if (d < static_cast<double>(lo) || d > static_cast<double>(hi))
      bad(name, fmt::format("'{}' must be an integer from {} to {}, got {}.", name, lo, hi, v.dump()));
    x = static_cast<int64_t>(d);
  } else {
    bad(name, fmt::format("'{}' must be an integer, got {}.", name, describe(v)));
  }
  if (x < lo || x > hi) bad(name, fmt::format("'{}' must be an integer from {} to {}, got {}.", name, lo, hi, x));
  return x;
}

double as_number(const json& v, const std::string& name, double lo, double hi) {
  if (!v.is_number()) bad(name, fmt::format("'{}' must be a number, got {}.", name, describe(v)));
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    bad(name, fmt::format("'{}' must be a number from {} to {}, got {}.", name, lo, hi, v.dump()));
  return x;
}

bool as_bool(const json& v, const std::string& name) {
  if (!v.is_boolean()) bad(name, fmt::format("'{}' must be a boolean, got {}.", name, describe(v)));
  return v.get<bool>();
}

const std::string& as_string(const json& v, const std::string& name) {
  if (!v.is_string()) bad(name, fmt::format("'{}' must be a string, got {}.", name, describe(v)));
  return v.get_ref<const std::string&>();
}

void refuse_unknown(const json& j, const std::set<std::string>& known) {
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!known.count(it.key()))
      bad(it.key(), fmt::format("Unrecognized request argument supplied: {}", it.key()));
}

[[noreturn]] void unsupported(const std::string& name, const std::string& what) {
  bad(name, fmt::format("'{}' is not supported by this server: {}.", name, what));
}

// Fields of the OpenAI API this server does not implement: allowed only with a neutral value.
void check_neutral(const json& j) {
  if (const json* v = field(j, "n"); v && as_integer(*v, "n", 1, kMaxTokensCeiling) != 1)
    unsupported("n", "one choice per request (n = 1)");
  if (const json* v = field(j, "best_of"); v && as_integer(*v, "best_of", 1, kMaxTokensCeiling) != 1)
    unsupported("best_of", "best_of must be 1");
  if (const json* v = field(j, "logprobs"); v && !(v->is_boolean() && !v->get<bool>()))
    unsupported("logprobs", "log probabilities are not returned");
  if (const json* v = field(j, "top_logprobs"); v && as_integer(*v, "top_logprobs", 0, 20) != 0)
    unsupported("top_logprobs", "log probabilities are not returned");
  if (const json* v = field(j, "suffix"); v && !as_string(*v, "suffix").empty())
    unsupported("suffix", "insertion (a suffix after the completion)");
  for (const char* name : {"tools", "functions"}) {
    if (const json* v = field(j, name)) {
      if (!v->is_array()) bad(name, fmt::format("'{}' must be an array, got {}.", name, describe(*v)));
      if (!v->empty()) unsupported(name, "tool and function calling");
    }
  }
  for (const char* name : {"tool_choice", "function_call"}) {
    if (const json* v = field(j, name)) {
      if (!v->is_string() || (v->get<std::string>() != "none" && v->get<std::string>() != "auto"))
        unsupported(name, "tool and function calling ('none' and 'auto' are accepted)");
    }
  }
  if (const json* v = field(j, "parallel_tool_calls")) as_bool(*v, "parallel_tool_calls");
  if (const json* v = field(j, "response_format")) {
    if (!v->is_object()) bad("response_format", fmt::format("'response_format' must be an object, got {}.", describe(*v)));
    const json* t = field(*v, "type");
    if (!t || !t->is_string() || t->get<std::string>() != "text")
      unsupported("response_format", "only {\"type\": \"text\"}");
  }
  if (const json* v = field(j, "modalities")) {
    if (!(v->is_array() && v->size() == 1 && (*v)[0] == "text")) unsupported("modalities", "text output only");
  }
  for (const char* name : {"audio", "prediction"})
    if (field(j, name)) unsupported(name, "text output only");
}

void parse_common(const json& j, ApiRequest& r, int vocab_size) {
  if (const json* v = field(j, "model")) as_string(*v, "model");  // any name: one model is served
  check_neutral(j);
  SamplingParams& s = r.params.sampling;
  if (const json* v = field(j, "temperature")) s.temperature = static_cast<float>(as_number(*v, "temperature", 0, 2));
  if (const json* v = field(j, "top_p")) s.top_p = static_cast<float>(as_number(*v, "top_p", 0, 1));
  if (const json* v = field(j, "top_k")) {
    const int64_t k = as_integer(*v, "top_k", -1, vocab_size);
    s.top_k = k < 0 ? 0 : static_cast<int>(k);
  }
  if (const json* v = field(j, "presence_penalty")) s.presence_penalty = static_cast<float>(as_number(*v, "presence_penalty", -2, 2));
  if (const json* v = field(j, "frequency_penalty")) s.frequency_penalty = static_cast<float>(as_number(*v, "frequency_penalty", -2, 2));
  if (const json* v = field(j, "repetition_penalty")) {
    const double p = as_number(*v, "repetition_penalty", 0, 10);
    if (p <= 0) bad("repetition_penalty", fmt::format("'repetition_penalty' must be greater than 0, got {}.", v->dump()));
    s.repetition_penalty = static_cast<float>(p);
  }
  if (const json* v = field(j, "seed")) {
    s.seed = static_cast<uint64_t>(as_integer(*v, "seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()));
  }
  if (const json* v = field(j, "logit_bias")) {
    if (!v->is_object()) bad("logit_bias", fmt::format("'logit_bias' must be an object mapping token ids to biases, got {}.", describe(*v)));
    if (v->size() > kMaxLogitBias) bad("logit_bias", fmt::format("'logit_bias' has {} entries; at most {} are allowed.", v->size(), kMaxLogitBias));
    for (auto it = v->begin(); it != v->end(); ++it) {
      const std::string& key = it.key();
      size_t used = 0;
      long long id = -1;
      try {
        id = std::stoll(key, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != key.size() || key.empty() || id < 0 || id >= vocab_size)
        bad("logit_bias", fmt::format("'logit_bias' key '{}' is not a token id from 0 to {}.", key.substr(0, 40), vocab_size - 1));
      const double b = as_number(it.value(), "logit_bias", -100, 100);
      s.logit_bias.emplace_back(static_cast<int32_t>(id), static_cast<float>(b));
    }
  }
  if (const json* v = field(j, "stop")) {
    auto add = [&](const json& x) {
      const std::string& str = as_string(x, "stop");
      if (str.size() > kMaxStopBytes) bad("stop", fmt::format("A stop string has {} bytes; at most {} are allowed.", str.size(), kMaxStopBytes));
      if (!str.empty()) r.params.stop.push_back(str);  // an empty stop string stops nothing
    };
    if (v->is_array()) {
      if (v->size() > kMaxStopStrings) bad("stop", fmt::format("'stop' has {} strings; at most {} are allowed.", v->size(), kMaxStopStrings));
      for (const json& x : *v) add(x);
    } else {
      add(*v);
    }
  }
  if (const json* v = field(j, "ignore_eos")) r.params.ignore_eos = as_bool(*v, "ignore_eos");
  if (const json* v = field(j, "stream")) r.stream = as_bool(*v, "stream");
  if (const json* v = field(j, "stream_options")) {
    if (!r.stream) bad("stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled.");
    if (!v->is_object()) bad("stream_options", fmt::format("'stream_options' must be an object, got {}.", describe(*v)));
    refuse_unknown(*v, {"include_usage"});
    if (const json* u = field(*v, "include_usage")) r.include_usage = as_bool(*u, "stream_options.include_usage");
  }
}

void parse_max_tokens(const json& j, ApiRequest& r, const char* name) {
  if (const json* v = field(j, name)) {
    r.params.max_tokens = static_cast<int>(as_integer(*v, name, 1, kMaxTokensCeiling));
    r.max_tokens_given = true;
  }
}

std::vector<int32_t> token_array(const json& v, int vocab_size) {
  std::vector<int32_t> ids;
  ids.reserve(v.size());
  for (const json& x : v) {
    if (!x.is_number_integer()) bad("prompt", fmt::format("A prompt given as token ids holds {}, not an integer.", describe(x)));
    const int64_t id = x.is_number_unsigned() && x.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
                           ? -1 : x.get<int64_t>();
    if (id < 0 || id >= vocab_size)
      bad("prompt", fmt::format("Token id {} in the prompt is outside the vocabulary (0 to {}).", x.dump(), vocab_size - 1));
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

}  // namespace

ApiRequest parse_completion_request(std::string_view body, int vocab_size, const SamplingParams& defaults) {
  const json j = parse_body(body);
  refuse_unknown(j, {"model", "prompt", "suffix", "max_tokens", "temperature", "top_p", "n", "stream",
                     "stream_options", "logprobs", "echo", "stop", "presence_penalty", "frequency_penalty",
                     "best_of", "logit_bias", "user", "seed", "top_k", "repetition_penalty", "ignore_eos"});
  ApiRequest r;
  r.kind = ApiKind::Completion;
  r.params.sampling = defaults;
  const json* p = field(j, "prompt");
  if (!p) bad("prompt", "'prompt' is required.");
  if (p->is_string()) {
    r.prompt_text = p->get<std::string>();
  } else if (p->is_array()) {
    if (p->empty()) bad("prompt", "'prompt' is an empty array.");
    const json& first = (*p)[0];
    if (first.is_string() || first.is_array()) {
      if (p->size() != 1) unsupported("prompt", "one prompt per request (send several requests)");
      if (first.is_string()) {
        r.prompt_text = first.get<std::string>();
      } else {
        if (first.empty()) bad("prompt", "'prompt' holds an empty token array.");
        r.prompt_tokens = token_array(first, vocab_size);
        r.prompt_is_tokens = true;
      }
    } else {
      r.prompt_tokens = token_array(*p, vocab_size);
      r.prompt_is_tokens = true;
    }
  } else {
    bad("prompt", fmt::format("'prompt' must be a string, an array of token ids or an array of one string, got {}.", describe(*p)));
  }
  parse_max_tokens(j, r, "max_tokens");
  if (const json* v = field(j, "echo")) r.echo = as_bool(*v, "echo");
  parse_common(j, r, vocab_size);
  return r;
}

SamplingParams apply_generation_config(const std::filesystem::path& file, SamplingParams base, KeepSampling keep) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec)) return base;
  std::ifstream in(file);
  const json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
  auto fail = [&](const std::string& what) { throw Error(ErrorKind::Format, fmt::format("{}: {}", file.string(), what)); };
  if (!j.is_object()) fail("not a JSON object");
  auto number = [&](const char* key, bool kept, double lo, double hi) -> std::optional<double> {
    const auto it = j.find(key);
    if (kept || it == j.end() || it->is_null()) return std::nullopt;
    if (!it->is_number()) fail(fmt::format("'{}' must be a number, got {}", key, it->dump()));
    const double v = it->get<double>();
    if (!(v >= lo && v <= hi)) fail(fmt::format("'{}' is {}, outside [{}, {}]", key, v, lo, hi));
    return v;
  };
  if (auto v = number("temperature", keep.temperature, 0, 2)) base.temperature = static_cast<float>(*v);
  if (auto v = number("top_p", keep.top_p, 0, 1)) base.top_p = static_cast<float>(*v);
  if (auto v = number("top_k", keep.top_k, -1, std::numeric_limits<int>::max())) base.top_k = *v < 0 ? 0 : static_cast<int>(*v);
  if (auto v = number("repetition_penalty", keep.repetition_penalty, 1e-6, 10)) base.repetition_penalty = static_cast<float>(*v);
  const auto ds = j.find("do_sample");
  if (!keep.temperature && ds != j.end() && ds->is_boolean() && !ds->get<bool>()) base.temperature = 0;
  return base;
}

ApiRequest parse_chat_request(std::string_view body, int vocab_size, const SamplingParams& defaults) {
  const json j = parse_body(body);
  refuse_unknown(j, {"model", "messages", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
                     "max_tokens", "max_completion_tokens", "n", "presence_penalty", "response_format", "seed",
                     "service_tier", "stop", "stream", "stream_options", "temperature", "top_p", "tools",
                     "tool_choice", "parallel_tool_calls", "user", "function_call", "functions", "store",
                     "metadata", "modalities", "audio", "prediction", "reasoning_effort", "top_k",
                     "repetition_penalty", "ignore_eos"});
  ApiRequest r;
  r.kind = ApiKind::Chat;
  r.params.sampling = defaults;
  const json* m = field(j, "messages");
  if (!m) bad("messages", "'messages' is required.");
  if (!m->is_array()) bad("messages", fmt::format("'messages' must be an array, got {}.", describe(*m)));
  if (m->empty()) bad("messages", "'messages' must hold at least one message.");
  for (size_t i = 0; i < m->size(); ++i) {
    const json& msg = (*m)[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!msg.is_object()) bad(where, fmt::format("'{}' must be an object, got {}.", where, describe(msg)));
    refuse_unknown(msg, {"role", "content", "name", "tool_calls", "function_call", "refusal"});
    const json* role = field(msg, "role");
    if (!role) bad(where + ".role", fmt::format("'{}.role' is required.", where));
    std::string rs = as_string(*role, where + ".role");
    if (rs == "developer") rs = "system";
    if (rs == "tool" || rs == "function") unsupported(where + ".role", "tool and function messages");
    if (rs != "system" && rs != "user" && rs != "assistant")
      bad(where + ".role", fmt::format("'{}.role' must be 'system', 'developer', 'user' or 'assistant', got '{}'.", where, rs.substr(0, 40)));
    for (const char* name : {"tool_calls", "function_call"}) {
      const json* t = field(msg, name);
      if (t && !(t->is_array() && t->empty())) unsupported(where + "." + name, "tool and function calling");
    }
    if (const json* n = field(msg, "name")) as_string(*n, where + ".name");
    std::string content;
    const json* c = field(msg, "content");
    if (!c) {
      if (rs != "assistant") bad(where + ".content", fmt::format("'{}.content' is required.", where));
    } else if (c->is_string()) {
      content = c->get<std::string>();
    } else if (c->is_array()) {
      for (size_t k = 0; k < c->size(); ++k) {
        const json& part = (*c)[k];
        const std::string pw = fmt::format("{}.content[{}]", where, k);
        if (!part.is_object()) bad(pw, fmt::format("'{}' must be an object, got {}.", pw, describe(part)));
        const json* type = field(part, "type");
        if (!type || !type->is_string() || type->get<std::string>() != "text")
          unsupported(pw + ".type", "only text content parts ({\"type\": \"text\", \"text\": ...})");
        const json* text = field(part, "text");
        if (!text) bad(pw + ".text", fmt::format("'{}.text' is required.", pw));
        content += as_string(*text, pw + ".text");
      }
    } else {
      bad(where + ".content", fmt::format("'{}.content' must be a string or an array of text parts, got {}.", where, describe(*c)));
    }
    r.messages.push_back({rs, std::move(content)});
  }
  parse_max_tokens(j, r, "max_tokens");
  parse_max_tokens(j, r, "max_completion_tokens");  // the newer name wins when both are given
  parse_common(j, r, vocab_size);
  return r;
}

// ---- response bodies ------------------------------------------------------------------------

namespace {

ojson envelope(const ResponseMeta& meta, const char* object) {
  ojson o;
  o["id"] = meta.id;
  o["object"] = object;
  o["created"] = meta.created;
  o["model"] = meta.model;
  return o;
}

ojson usage_json(const Usage& u) {
  ojson o;
  o["prompt_tokens"] = u.prompt_tokens;
  o["completion_tokens"] = u.completion_tokens;
  o["total_tokens"] = u.prompt_tokens + u.completion_tokens;
  return o;
}

std::string dump(const ojson& o) { return o.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace

std::string response_body(const ResponseMeta& meta, const std::string& text, const std::string& finish_reason,
                          const Usage& usage) {
  const bool chat = meta.kind == ApiKind::Chat;
  ojson o = envelope(meta, chat ? "chat.completion" : "text_completion");
  ojson choice;
  choice["index"] = 0;
  if (chat) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = finish_reason;
  o["choices"] = ojson::array({std::move(choice)});
  o["usage"] = usage_json(usage);
  return dump(o);
}

std::string chunk_body(const ResponseMeta& meta, const std::string& text, bool role_delta,
                       const std::string& finish_reason) {
  const bool chat = meta.kind == ApiKind::Chat;
  ojson o = envelope(meta, chat ? "chat.completion.chunk" : "text_completion");
  ojson choice;
  choice["index"] = 0;
  if (chat) {
    ojson delta = ojson::object();
    if (role_delta) delta["role"] = "assistant";
    if (role_delta || !text.empty() || finish_reason.empty()) delta["content"] = text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = finish_reason.empty() ? ojson(nullptr) : ojson(finish_reason);
  o["choices"] = ojson::array({std::move(choice)});
  return dump(o);
}

std::string usage_chunk_body(const ResponseMeta& meta, const Usage& usage) {
  ojson o = envelope(meta, meta.kind == ApiKind::Chat ? "chat.completion.chunk" : "text_completion");
  o["choices"] = ojson::array();
  o["usage"] = usage_json(usage);
  return dump(o);
}

}  // namespace glq::server
