// Request validation and response bodies of the OpenAI-compatible API, without a model.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "glq/error.hpp"
#include "glq/server/api.hpp"

namespace glq::server {
namespace {

using json = nlohmann::json;
constexpr int kVocab = 989;

// The ApiError a body raises (status 0 when it parses).
ApiError error_of(const std::string& body, bool chat = false) {
  try {
    if (chat) {
      parse_chat_request(body, kVocab);
    } else {
      parse_completion_request(body, kVocab);
    }
  } catch (const ApiError& e) {
    return e;
  }
  return ApiError(0, "parsed");
}

TEST(Api, CompletionFieldsAreRead) {
  const ApiRequest r = parse_completion_request(
      R"({"model": "m", "prompt": "Hi there", "max_tokens": 19, "temperature": 0.25, "top_p": 0.5, "top_k": 7,
          "presence_penalty": -1.5, "frequency_penalty": 0.75, "repetition_penalty": 1.1, "seed": -2,
          "stop": ["\n\n", "", "END"], "logit_bias": {"17": -100, "3": 2.5}, "echo": true, "stream": true,
          "stream_options": {"include_usage": true}, "ignore_eos": true, "n": 1, "best_of": 1, "logprobs": null,
          "suffix": "", "user": "someone"})",
      kVocab);
  EXPECT_EQ(r.kind, ApiKind::Completion);
  EXPECT_EQ(r.prompt_text, "Hi there");
  EXPECT_FALSE(r.prompt_is_tokens);
  EXPECT_TRUE(r.max_tokens_given);
  EXPECT_EQ(r.params.max_tokens, 19);
  EXPECT_FLOAT_EQ(r.params.sampling.temperature, 0.25f);
  EXPECT_FLOAT_EQ(r.params.sampling.top_p, 0.5f);
  EXPECT_EQ(r.params.sampling.top_k, 7);
  EXPECT_FLOAT_EQ(r.params.sampling.presence_penalty, -1.5f);
  EXPECT_FLOAT_EQ(r.params.sampling.frequency_penalty, 0.75f);
  EXPECT_FLOAT_EQ(r.params.sampling.repetition_penalty, 1.1f);
  ASSERT_TRUE(r.params.sampling.seed.has_value());
  EXPECT_EQ(*r.params.sampling.seed, static_cast<uint64_t>(-2));
  EXPECT_EQ(r.params.stop, (std::vector<std::string>{"\n\n", "END"}));
  ASSERT_EQ(r.params.sampling.logit_bias.size(), 2u);
  EXPECT_TRUE(r.echo);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_TRUE(r.params.ignore_eos);
}

TEST(Api, DefaultsAndNulls) {
  const ApiRequest r = parse_completion_request(R"({"prompt": "x", "max_tokens": null, "temperature": null, "stop": null})", kVocab);
  EXPECT_FALSE(r.max_tokens_given);
  EXPECT_FLOAT_EQ(r.params.sampling.temperature, 1.0f);  // OpenAI's default
  EXPECT_TRUE(r.params.stop.empty());
  EXPECT_FALSE(r.params.sampling.seed.has_value());
  EXPECT_FALSE(r.stream);
}

TEST(Api, ServerDefaultsFillWhatARequestLeavesOut) {
  SamplingParams d;
  d.temperature = 0.7f;
  d.top_p = 0.9f;
  d.top_k = 40;
  d.repetition_penalty = 1.2f;
  // Left out or null: the server's values.
  for (const bool chat : {false, true}) {
    const std::string body = chat ? R"({"messages": [{"role": "user", "content": "x"}], "top_p": null})"
                                  : R"({"prompt": "x", "top_p": null})";
    const ApiRequest r = chat ? parse_chat_request(body, kVocab, d) : parse_completion_request(body, kVocab, d);
    EXPECT_FLOAT_EQ(r.params.sampling.temperature, 0.7f);
    EXPECT_FLOAT_EQ(r.params.sampling.top_p, 0.9f);
    EXPECT_EQ(r.params.sampling.top_k, 40);
    EXPECT_FLOAT_EQ(r.params.sampling.repetition_penalty, 1.2f);
  }
  // Given: the request's, including 0 and the values that turn a filter off.
  const ApiRequest g = parse_completion_request(
      R"({"prompt": "x", "temperature": 0, "top_p": 1, "top_k": -1, "repetition_penalty": 1})", kVocab, d);
  EXPECT_FLOAT_EQ(g.params.sampling.temperature, 0.0f);
  EXPECT_FLOAT_EQ(g.params.sampling.top_p, 1.0f);
  EXPECT_EQ(g.params.sampling.top_k, 0);
  EXPECT_FLOAT_EQ(g.params.sampling.repetition_penalty, 1.0f);
}

TEST(Api, GenerationConfigSetsTheServersDefaults) {
  const auto dir = std::filesystem::temp_directory_path() / ("glq_gencfg_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto file = dir / "generation_config.json";
  auto write = [&](const std::string& text) { std::ofstream(file) << text; };
  SamplingParams base;
  base.temperature = 0.7f;
  base.top_p = 0.9f;
  // No file: the base unchanged.
  EXPECT_FLOAT_EQ(apply_generation_config(dir / "absent.json", base).temperature, 0.7f);
  write(R"({"bos_token_id": 1, "temperature": 0.2, "top_p": 0.95, "top_k": 50, "repetition_penalty": 1.05})");
  SamplingParams d = apply_generation_config(file, base);
  EXPECT_FLOAT_EQ(d.temperature, 0.2f);
  EXPECT_FLOAT_EQ(d.top_p, 0.95f);
  EXPECT_EQ(d.top_k, 50);
  EXPECT_FLOAT_EQ(d.repetition_penalty, 1.05f);
  // Values the user gave stay.
  d = apply_generation_config(file, base, {.temperature = true, .top_k = true});
  EXPECT_FLOAT_EQ(d.temperature, 0.7f);
  EXPECT_FLOAT_EQ(d.top_p, 0.95f);
  EXPECT_EQ(d.top_k, 0);
  write(R"({"do_sample": false, "top_p": null})");
  d = apply_generation_config(file, base);
  EXPECT_FLOAT_EQ(d.temperature, 0.0f);
  EXPECT_FLOAT_EQ(d.top_p, 0.9f);
  // Bad files name the file and the field.
  for (const char* bad : {"[1, 2]", R"({"temperature": "hot"})", R"({"top_p": 3})", R"({"temperature")"}) {
    write(bad);
    try {
      apply_generation_config(file, base);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Format) << bad;
      EXPECT_NE(std::string(e.what()).find("generation_config.json"), std::string::npos) << e.what();
    }
  }
  std::filesystem::remove_all(dir);
}

TEST(Api, PromptForms) {
  EXPECT_EQ(parse_completion_request(R"({"prompt": ["one string"]})", kVocab).prompt_text, "one string");
  const ApiRequest ids = parse_completion_request(R"({"prompt": [5, 0, 988]})", kVocab);
  EXPECT_TRUE(ids.prompt_is_tokens);
  EXPECT_EQ(ids.prompt_tokens, (std::vector<int32_t>{5, 0, 988}));
  EXPECT_EQ(parse_completion_request(R"({"prompt": [[7, 8]]})", kVocab).prompt_tokens, (std::vector<int32_t>{7, 8}));
  EXPECT_EQ(error_of(R"({"prompt": [5, 989]})").param(), "prompt");
  EXPECT_EQ(error_of(R"({"prompt": [5, -1]})").param(), "prompt");
  EXPECT_EQ(error_of(R"({"prompt": [5, 1.5]})").param(), "prompt");
  EXPECT_EQ(error_of(R"({"prompt": []})").param(), "prompt");
  EXPECT_EQ(error_of(R"({"prompt": [[]]})").param(), "prompt");
  EXPECT_EQ(error_of(R"({"prompt": [[1], [2]]})").param(), "prompt");
  EXPECT_EQ(error_of(R"({"prompt": {"text": "x"}})").param(), "prompt");
}

TEST(Api, ChatMessages) {
  const ApiRequest r = parse_chat_request(
      R"({"messages": [{"role": "developer", "content": "Be terse."},
                       {"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}], "name": "ann"},
                       {"role": "assistant", "content": null, "tool_calls": []},
                       {"role": "user", "content": "again"}],
          "max_tokens": 5, "max_completion_tokens": 7})",
      kVocab);
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "Hello, world");
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(r.params.max_tokens, 7);  // max_completion_tokens wins
  EXPECT_EQ(error_of(R"({"messages": [{"role": "tool", "content": "x"}]})", true).param(), "messages[0].role");
  EXPECT_EQ(error_of(R"({"messages": [{"role": "user", "content": "x", "extra": 1}]})", true).param(), "extra");
  EXPECT_EQ(error_of(R"({"messages": [{"content": "x"}]})", true).param(), "messages[0].role");
  EXPECT_EQ(error_of(R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}})", true).param(),
            "response_format");
  EXPECT_EQ(error_of(R"({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"})", true).param(), "tool_choice");
}

TEST(Api, RangesAndTypes) {
  struct Case {
    const char* body;
    const char* param;
  };
  const Case cases[] = {
      {R"({"prompt": "x", "temperature": -0.01})", "temperature"},
      {R"({"prompt": "x", "temperature": true})", "temperature"},
      {R"({"prompt": "x", "top_p": -1})", "top_p"},
      {R"({"prompt": "x", "top_k": -2})", "top_k"},
      {R"({"prompt": "x", "top_k": 990})", "top_k"},
      {R"({"prompt": "x", "max_tokens": 1073741825})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 18446744073709551615})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": [1]})", "max_tokens"},
      {R"({"prompt": "x", "seed": "1"})", "seed"},
      {R"({"prompt": "x", "stop": ["ok", 3]})", "stop"},
      {R"({"prompt": "x", "stop": "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"})", "stop"},
      {R"({"prompt": "x", "logit_bias": [1]})", "logit_bias"},
      {R"({"prompt": "x", "logit_bias": {"12x": 1}})", "logit_bias"},
      {R"({"prompt": "x", "logit_bias": {"12": "1"}})", "logit_bias"},
      {R"({"prompt": "x", "stream": true, "stream_options": {"include_usage": 1}})", "stream_options.include_usage"},
      {R"({"prompt": "x", "stream": true, "stream_options": {"other": 1}})", "other"},
      {R"({"prompt": "x", "echo": "true"})", "echo"},
      {R"({"prompt": "x", "best_of": 2})", "best_of"},
      {R"({"prompt": "x", "suffix": "tail"})", "suffix"},
      {R"({"prompt": "x", "model": 7})", "model"},
      {R"({"prompt": "x", "Max_Tokens": 3})", "Max_Tokens"},
  };
  for (const Case& c : cases) {
    const ApiError e = error_of(c.body);
    EXPECT_EQ(e.status(), 400) << c.body;
    EXPECT_EQ(e.param(), c.param) << c.body << ": " << e.what();
  }
  // Integral floats are integers; 0 for top_p and -1 for top_k are accepted.
  EXPECT_EQ(parse_completion_request(R"({"prompt": "x", "max_tokens": 8.0, "top_p": 0, "top_k": -1})", kVocab).params.max_tokens, 8);
}

TEST(Api, BodiesThatAreNotRequests) {
  for (const char* body : {"", "   ", "{", "{\"prompt\": \"x\",}", "null", "\"text\"", "42", "[{}]", "{\"prompt\": \"\\ud800\"}"}) {
    const ApiError e = error_of(body);
    EXPECT_EQ(e.status(), 400) << body;
  }
  // Invalid UTF-8 inside a string is not valid JSON.
  EXPECT_EQ(error_of(std::string("{\"prompt\": \"\xff\xfe\"}")).status(), 400);
}

TEST(Api, ErrorBody) {
  const json e = json::parse(ApiError(400, "bad 'x'", "x").to_json());
  EXPECT_EQ(e["error"]["message"], "bad 'x'");
  EXPECT_EQ(e["error"]["type"], "invalid_request_error");
  EXPECT_EQ(e["error"]["param"], "x");
  EXPECT_TRUE(e["error"]["code"].is_null());
  const json s = json::parse(ApiError(503, "busy", "", "queue_full").to_json());
  EXPECT_EQ(s["error"]["type"], "server_error");
  EXPECT_TRUE(s["error"]["param"].is_null());
  EXPECT_EQ(s["error"]["code"], "queue_full");
}

TEST(Api, ResponseBodies) {
  ResponseMeta meta{ApiKind::Chat, "chatcmpl-19", 1700000000, "m"};
  const json whole = json::parse(response_body(meta, "hi \xff", "stop", Usage{11, 3}));
  EXPECT_EQ(whole["object"], "chat.completion");
  EXPECT_EQ(whole["choices"][0]["message"]["content"], "hi \xef\xbf\xbd");  // invalid UTF-8 replaced
  EXPECT_EQ(whole["usage"]["total_tokens"], 14);
  const json first = json::parse(chunk_body(meta, "", true, ""));
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  const json last = json::parse(chunk_body(meta, "", false, "length"));
  EXPECT_TRUE(last["choices"][0]["delta"].empty());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  meta.kind = ApiKind::Completion;
  const json text = json::parse(chunk_body(meta, "abc", false, ""));
  EXPECT_EQ(text["object"], "text_completion");
  EXPECT_EQ(text["choices"][0]["text"], "abc");
  const json usage = json::parse(usage_chunk_body(meta, Usage{2, 5}));
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 5);
}

}  // namespace
}  // namespace glq::server
