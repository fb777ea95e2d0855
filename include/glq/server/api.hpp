// The OpenAI-compatible request and response bodies of `glq serve` (docs/server.md).
//
// parse_completion_request() / parse_chat_request() turn a request body into a validated
// ApiRequest or throw ApiError, which the HTTP layer answers with its status and an OpenAI-style
// error object:
//   {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}
// Policy on fields:
//   - unknown top-level fields are refused with 400 ("Unrecognized request argument supplied:
//     max_token"), as the OpenAI API does, so that a misspelt parameter is never silently ignored;
//   - fields of the OpenAI API that this server does not implement (logprobs, tools, n > 1, ...)
//     are accepted only with their neutral value (null, false, 1, [] ...), else 400;
//   - null means "not given" for every field, as in the OpenAI API;
//   - fields that only describe the caller (user, metadata, store, service_tier) are ignored.
// Extensions (accepted by vLLM and llama.cpp too): top_k, repetition_penalty, ignore_eos.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "glq/model/tokenizer.hpp"

namespace glq::server {

// An answer to the client other than 200: HTTP status and the fields of an OpenAI error object.
// It never leaves the server layer: the HTTP code turns it into a response.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, const std::string& message, std::string param = "",
           std::string code = "", std::string type = "");
  int status() const { return status_; }
  // "invalid_request_error" (4xx), "server_error" (5xx) unless given.
  const std::string& type() const { return type_; }
  const std::string& param() const { return param_; }  // "" → null
  const std::string& code() const { return code_; }    // "" → null
  // {"error": {"message", "type", "param", "code"}}
  std::string to_json() const;

 private:
  int status_;
  std::string param_;
  std::string code_;
  std::string type_;
};

// Most stop strings per request and bytes per stop string (OpenAI allows 4 stop sequences).
inline constexpr size_t kMaxStopStrings = 4;
inline constexpr size_t kMaxStopBytes = 256;
// Most logit_bias entries (OpenAI's documented limit is 300).
inline constexpr size_t kMaxLogitBias = 300;

struct SamplingParams {
  float temperature = 1.0f;         // [0, 2], OpenAI's default 1; 0 = greedy
  float top_p = 1.0f;               // (0, 1]; 0 is accepted and means greedy
  int top_k = 0;                    // extension; 0 (or -1) = off
  float presence_penalty = 0.0f;    // [-2, 2]: subtracted once from every token already generated
  float frequency_penalty = 0.0f;   // [-2, 2]: subtracted per occurrence in the completion so far
  float repetition_penalty = 1.0f;  // extension, (0, 10]: CTRL-style over prompt and completion
  std::vector<std::pair<int32_t, float>> logit_bias;  // (token id, bias in [-100, 100])
  std::optional<uint64_t> seed;     // none: a fresh seed per request
};

struct GenerationParams {
  int max_tokens = 16;             // completion tokens at most (>= 1)
  SamplingParams sampling;
  std::vector<std::string> stop;   // up to kMaxStopStrings strings of 1..kMaxStopBytes bytes
  bool ignore_eos = false;         // extension: end-of-sequence tokens do not end the completion
};

enum class ApiKind { Completion, Chat };

struct ApiRequest {
  ApiKind kind = ApiKind::Completion;
  // Completion: the prompt as text, or as token ids when prompt_is_tokens.
  std::string prompt_text;
  std::vector<int32_t> prompt_tokens;
  bool prompt_is_tokens = false;
  // Chat: the conversation ("developer" messages are read as "system").
  std::vector<model::ChatMessage> messages;

  GenerationParams params;
  bool max_tokens_given = false;  // else the server chooses (see docs/server.md)
  bool stream = false;
  bool include_usage = false;     // stream_options.include_usage
  bool echo = false;              // completions: the prompt text is prepended to the answer
};

// Throw ApiError(400) naming the offending field. vocab_size bounds token ids (a prompt given
// as ids, logit_bias keys). The sampling fields a request leaves out take their values from
// `defaults` (the server's; OpenAI's when default-constructed).
ApiRequest parse_completion_request(std::string_view body, int vocab_size, const SamplingParams& defaults = {});
ApiRequest parse_chat_request(std::string_view body, int vocab_size, const SamplingParams& defaults = {});

// A server's sampling defaults from a Hugging Face generation_config.json: temperature, top_p,
// top_k and repetition_penalty replace base's where the file sets them (`do_sample: false`
// means greedy) and the matching `keep` flag is false (a value the user gave). No file: base.
// Throws Format naming the file and field for a file that is not a JSON object or a value out
// of the API's range.
struct KeepSampling {
  bool temperature = false, top_p = false, top_k = false, repetition_penalty = false;
};
SamplingParams apply_generation_config(const std::filesystem::path& file, SamplingParams base, KeepSampling keep = {});

// ---- response bodies ------------------------------------------------------------------------

struct ResponseMeta {
  ApiKind kind = ApiKind::Completion;
  std::string id;       // "cmpl-..." / "chatcmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;
};

struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
};

// Whole answer: "text_completion" or "chat.completion" with one choice and usage.
// finish_reason: "stop" or "length". Invalid UTF-8 in text is replaced by U+FFFD.
std::string response_body(const ResponseMeta& meta, const std::string& text,
                           const std::string& finish_reason, const Usage& usage);
// One streamed chunk ("text_completion" or "chat.completion.chunk"). For chat, role_delta puts
// {"role": "assistant"} in the delta (first chunk); an empty finish_reason is null.
std::string chunk_body(const ResponseMeta& meta, const std::string& text, bool role_delta,
                       const std::string& finish_reason);
// The usage chunk of stream_options.include_usage: empty choices and the counts.
std::string usage_chunk_body(const ResponseMeta& meta, const Usage& usage);

}  // namespace glq::server
