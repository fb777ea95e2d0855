// The HTTP server end to end on a loopback port with the real model: answers against the engine
// alone, streaming against non-streaming, every error case, a full queue, clients that hang up.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "glq/error.hpp"
#include "server_test_util.hpp"

namespace glq::server::test {
namespace {

using namespace std::chrono_literals;

std::vector<int32_t> chat_prompt(const std::string& user) {
  const model::Tokenizer& tok = shared_model()->tokenizer();
  const model::ChatMessage msg{"user", user};
  return tok.encode(tok.apply_chat_template(std::span<const model::ChatMessage>(&msg, 1), true), false, true);
}

std::vector<int32_t> completion_prompt(const std::string& text) {
  const model::Tokenizer& tok = shared_model()->tokenizer();
  return tok.encode(text, tok.add_bos_default(), true);
}

ServerOptions small_server(int parallel = 4, int queue = 8) {
  ServerOptions o;
  o.scheduler.parallel = parallel;
  o.scheduler.queue = queue;
  o.scheduler.context = 512;
  return o;
}

// Text, finish reason and usage from a streamed body; checks the framing on the way.
struct Streamed {
  std::string text;
  std::string finish_reason;
  json usage;
  int chunks = 0;
};
Streamed reassemble(const std::string& body, bool chat) {
  Streamed s;
  const auto events = sse_data(body);
  EXPECT_FALSE(events.empty());
  if (events.empty()) return s;
  EXPECT_EQ(events.back(), "[DONE]");
  std::string id;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json c = json::parse(events[i]);
    EXPECT_EQ(c["object"], chat ? "chat.completion.chunk" : "text_completion");
    if (id.empty()) id = c["id"];
    EXPECT_EQ(c["id"], id) << "every chunk carries the id of the answer";
    if (c.contains("usage")) {
      EXPECT_TRUE(c["choices"].empty());
      s.usage = c["usage"];
      continue;
    }
    ++s.chunks;
    const json& ch = c["choices"][0];
    if (chat) {
      if (i == 0) {
        EXPECT_EQ(ch["delta"]["role"], "assistant");
      }
      if (ch["delta"].contains("content")) s.text += ch["delta"]["content"].get<std::string>();
    } else {
      s.text += ch["text"].get<std::string>();
    }
    if (!ch["finish_reason"].is_null()) {
      EXPECT_TRUE(s.finish_reason.empty()) << "one finish_reason per answer";
      s.finish_reason = ch["finish_reason"];
    }
  }
  return s;
}

TEST(Server, HealthAndModels) {
  GLQ_REQUIRE_MODEL();
  TestServer s(small_server());
  auto c = s.client();
  auto h = c->Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  const json hj = json::parse(h->body);
  EXPECT_EQ(hj["status"], "ok");
  EXPECT_EQ(hj["slots_total"], 4);
  EXPECT_EQ(hj["slots_busy"], 0);
  auto m = c->Get("/v1/models");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 200);
  const json mj = json::parse(m->body);
  EXPECT_EQ(mj["object"], "list");
  ASSERT_EQ(mj["data"].size(), 1u);
  EXPECT_EQ(mj["data"][0]["id"], "smollm2-test");
  auto one = c->Get("/v1/models/smollm2-test");
  ASSERT_TRUE(one);
  EXPECT_EQ(one->status, 200);
  auto none = c->Get("/v1/models/gpt-4");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 404);
  EXPECT_EQ(json::parse(none->body)["error"]["code"], "model_not_found");
}

TEST(Server, CompletionEqualsEngineGreedy) {
  GLQ_REQUIRE_MODEL();
  TestServer s(small_server());
  const std::string prompt = "The three primary colours are";
  const Reply r = post(s, "/v1/completions",
                       json{{"model", "x"}, {"prompt", prompt}, {"max_tokens", 11}, {"temperature", 0}}.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = r.parsed();
  const Reference ref = greedy_reference(completion_prompt(prompt), 11);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "smollm2-test");
  EXPECT_EQ(j["choices"][0]["text"], ref.text);
  EXPECT_EQ(j["choices"][0]["finish_reason"], ref.finish_reason);
  EXPECT_EQ(j["usage"]["prompt_tokens"], completion_prompt(prompt).size());
  EXPECT_EQ(j["usage"]["completion_tokens"], ref.completion_tokens);
  EXPECT_EQ(j["usage"]["total_tokens"], completion_prompt(prompt).size() + ref.completion_tokens);
  // A prompt given as token ids is the same request.
  const Reply ids = post(s, "/v1/completions",
                         json{{"prompt", completion_prompt(prompt)}, {"max_tokens", 11}, {"temperature", 0}}.dump());
  ASSERT_EQ(ids.status, 200) << ids.body;
  EXPECT_EQ(ids.parsed()["choices"][0]["text"], ref.text);
}

TEST(Server, DefaultSamplingAppliesToRequestsWithoutIt) {
  GLQ_REQUIRE_MODEL();
  ServerOptions o = small_server();
  o.sampling.temperature = 0;  // the server's default: greedy
  TestServer s(o);
  const std::string prompt = "The three primary colours are";
  const Reply r = post(s, "/v1/completions", json{{"prompt", prompt}, {"max_tokens", 9}}.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.parsed()["choices"][0]["text"], greedy_reference(completion_prompt(prompt), 9).text);
  ServerOptions bad = small_server();
  bad.sampling.top_p = 1.5f;
  EXPECT_THROW(Server(*shared_model(), bad), ::glq::Error);
}

TEST(Server, ChatCompletionEqualsEngineGreedy) {
  GLQ_REQUIRE_MODEL();
  TestServer s(small_server());
  const std::string question = "What is the capital of France?";
  const json body = {{"messages", json::array({{{"role", "user"}, {"content", question}}})},
                     {"max_tokens", 19}, {"temperature", 0}};
  const Reply r = post(s, "/v1/chat/completions", body.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = r.parsed();
  const Reference ref = greedy_reference(chat_prompt(question), 19);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], ref.text);
  EXPECT_FALSE(ref.text.empty());
  EXPECT_EQ(j["choices"][0]["finish_reason"], ref.finish_reason);
  EXPECT_EQ(j["usage"]["prompt_tokens"], chat_prompt(question).size());
  EXPECT_EQ(j["usage"]["completion_tokens"], ref.completion_tokens);
}

TEST(Server, StreamReassemblesIntoTheNonStreamedAnswer) {
  GLQ_REQUIRE_MODEL();
  TestServer s(small_server());
  for (const bool chat : {true, false}) {
    SCOPED_TRACE(chat ? "chat" : "completion");
    json body = chat ? json{{"messages", json::array({{{"role", "system"}, {"content", "Answer briefly."}},
                                                      {{"role", "user"}, {"content", "Name a large mammal."}}})}}
                     : json{{"prompt", "A list of fruits: apple, banana,"}};
    body["max_tokens"] = 17;
    body["temperature"] = 0;
    const std::string path = chat ? "/v1/chat/completions" : "/v1/completions";
    const Reply whole = post(s, path, body.dump());
    ASSERT_EQ(whole.status, 200) << whole.body;
    const json w = whole.parsed();
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
    const Reply streamed = post(s, path, body.dump());
    ASSERT_EQ(streamed.status, 200) << streamed.body;
    EXPECT_NE(streamed.headers.find("Content-Type")->second.find("text/event-stream"), std::string::npos);
    const Streamed st = reassemble(streamed.body, chat);
    const std::string expected = chat ? w["choices"][0]["message"]["content"] : w["choices"][0]["text"];
    EXPECT_EQ(st.text, expected);
    EXPECT_GT(st.chunks, 2) << "the answer comes in several chunks";
    EXPECT_EQ(st.finish_reason, w["choices"][0]["finish_reason"]);
    EXPECT_EQ(st.usage, w["usage"]);
  }
}

TEST(Server, StopStringCutsTheAnswer) {
  GLQ_REQUIRE_MODEL();
  TestServer s(small_server());
  const std::string prompt = "Counting slowly: one, two, three, four, five,";
  const Reference ref = greedy_reference(completion_prompt(prompt), 23);
  ASSERT_GT(ref.text.size(), 12u);
  // A stop string taken from the middle of the answer, straddling a token boundary.
  const std::string stop = ref.text.substr(ref.text.size() / 2 - 1, 3);
  const std::string expected = ref.text.substr(0, ref.text.find(stop));
  json body = {{"prompt", prompt}, {"max_tokens", 23}, {"temperature", 0}, {"stop", json::array({"@@never@@", stop})}};
  const Reply r = post(s, "/v1/completions", body.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.parsed()["choices"][0]["text"], expected);
  EXPECT_EQ(r.parsed()["choices"][0]["finish_reason"], "stop");
  body["stream"] = true;
  const Reply st = post(s, "/v1/completions", body.dump());
  ASSERT_EQ(st.status, 200);
  const Streamed got = reassemble(st.body, false);
  EXPECT_EQ(got.text, expected);
  EXPECT_EQ(got.finish_reason, "stop");
}

TEST(Server, ConcurrentRequestsShareForwardPasses) {
  GLQ_REQUIRE_MODEL();
  TestServer s(small_server(4, 8));
  constexpr int kClients = 7;
  std::vector<Reply> replies(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      json body = {{"prompt", "Item number " + std::to_string(i * 37 + 5) + " on the list is"},
                   {"max_tokens", 9}, {"ignore_eos", true}, {"temperature", 0.8}, {"seed", i}};
      if (i % 2) body["stream"] = true;
      replies[static_cast<size_t>(i)] = post(s, "/v1/completions", body.dump());
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    const Reply& r = replies[static_cast<size_t>(i)];
    ASSERT_EQ(r.status, 200) << r.body;
    if (i % 2) {
      const Streamed st = reassemble(r.body, false);
      EXPECT_EQ(st.finish_reason, "length");
    } else {
      EXPECT_EQ(r.parsed()["usage"]["completion_tokens"], 9);
    }
  }
  const json h = s.health();
  EXPECT_EQ(h["requests_completed"], kClients);
  EXPECT_EQ(h["completion_tokens"], kClients * 9);
  EXPECT_GE(h["max_batch"].get<int>(), 2) << "sequences in flight were stepped together";
  EXPECT_LE(h["max_batch"].get<int>(), 4);
  EXPECT_LT(h["steps"].get<int>(), kClients * 9) << "fewer steps than one sequence at a time (9 each)";
}

TEST(Server, SeedMakesSamplingReproducible) {
  GLQ_REQUIRE_MODEL();
  TestServer s(small_server());
  const json body = {{"prompt", "Once upon a time"}, {"max_tokens", 13}, {"temperature", 1.3},
                     {"top_p", 0.95}, {"seed", 111}, {"ignore_eos", true}};
  const Reply a = post(s, "/v1/completions", body.dump());
  const Reply b = post(s, "/v1/completions", body.dump());
  ASSERT_EQ(a.status, 200);
  ASSERT_EQ(b.status, 200);
  EXPECT_EQ(a.parsed()["choices"][0]["text"], b.parsed()["choices"][0]["text"]);
}

TEST(Server, BadRequestsGetOpenAIStyleErrors) {
  GLQ_REQUIRE_MODEL();
  TestServer s(small_server());
  struct Case {
    std::string path, body;
    int status;
    std::string param;  // "" = not checked
  };
  const std::string C = "/v1/completions", K = "/v1/chat/completions";
  const std::string big_prompt(5000, 'x');
  std::string many_words;
  for (int i = 0; i < 989; ++i) many_words += " word" + std::to_string(i);
  const std::vector<Case> cases = {
      {C, "{\"prompt\": \"hi\"", 400, ""},                                   // truncated JSON
      {C, "not json at all", 400, ""},
      {C, "", 400, ""},
      {C, "[1, 2, 3]", 400, ""},                                            // not an object
      {C, std::string(100000, '[') + std::string(100000, ']'), 400, ""},    // deep nesting
      {C, R"({"max_tokens": 5})", 400, "prompt"},                           // missing prompt
      {C, R"({"prompt": 42})", 400, "prompt"},                              // wrong types
      {C, R"({"prompt": "hi", "max_tokens": "10"})", 400, "max_tokens"},
      {C, R"({"prompt": "hi", "max_tokens": 2.5})", 400, "max_tokens"},
      {C, R"({"prompt": "hi", "temperature": "hot"})", 400, "temperature"},
      {C, R"({"prompt": "hi", "stream": "yes"})", 400, "stream"},
      {C, R"({"prompt": "hi", "stop": 7})", 400, "stop"},
      {C, R"({"prompt": "hi", "max_tokens": 1000000000})", 400, "max_tokens"},  // absurd limits
      {C, R"({"prompt": "hi", "max_tokens": 0})", 400, "max_tokens"},
      {C, R"({"prompt": "hi", "max_tokens": -3})", 400, "max_tokens"},
      {C, R"({"prompt": "hi", "max_tokens": 99999999999999999999999})", 400, ""},
      {C, R"({"prompt": "hi", "temperature": 2.5})", 400, "temperature"},
      {C, R"({"prompt": "hi", "top_p": 1.01})", 400, "top_p"},
      {C, R"({"prompt": "hi", "presence_penalty": -2.5})", 400, "presence_penalty"},
      {C, R"({"prompt": "hi", "frequency_penalty": 3})", 400, "frequency_penalty"},
      {C, R"({"prompt": "hi", "repetition_penalty": 0})", 400, "repetition_penalty"},
      {C, R"({"prompt": "hi", "n": 3})", 400, "n"},
      {C, R"({"prompt": "hi", "logprobs": 2})", 400, "logprobs"},
      {C, R"({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]})", 400, "stop"},
      {C, R"({"prompt": "hi", "logit_bias": {"49152": 1}})", 400, "logit_bias"},
      {C, R"({"prompt": "hi", "logit_bias": {"5": 101}})", 400, "logit_bias"},
      {C, R"({"prompt": "hi", "stream_options": {"include_usage": true}})", 400, "stream_options"},
      {C, R"({"prompt": "hi", "max_token": 5})", 400, "max_token"},         // unknown field
      {C, R"({"prompt": [1, 2, 99999]})", 400, "prompt"},                   // token id out of range
      {C, R"({"prompt": ["one", "two"]})", 400, "prompt"},                  // batched prompts
      {C, json{{"prompt", many_words}}.dump(), 400, "prompt"},              // longer than the context
      {C, json{{"prompt", big_prompt}, {"max_tokens", 1}}.dump(), 400, "prompt"},
      {K, R"({"messages": "hello"})", 400, "messages"},
      {K, R"({"messages": []})", 400, "messages"},
      {K, R"({"messages": [{"role": "wizard", "content": "hi"}]})", 400, "messages[0].role"},
      {K, R"({"messages": [{"role": "user"}]})", 400, "messages[0].content"},
      {K, R"({"messages": [{"role": "user", "content": 5}]})", 400, "messages[0].content"},
      {K, R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", 400, "messages[0].content[0].type"},
      {K, R"({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]})", 400, "tools"},
      {K, R"({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 600})", 400, "max_tokens"},
      {K, R"({"messages": [{"role": "user", "content": "hi"}], "temperature": null, "foo": 1})", 400, "foo"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.path + " " + c.body.substr(0, 80));
    const Reply r = post(s, c.path, c.body);
    ASSERT_EQ(r.status, c.status) << r.body;
    const json e = r.parsed();
    ASSERT_TRUE(e.contains("error")) << r.body;
    EXPECT_EQ(e["error"]["type"], "invalid_request_error");
    EXPECT_FALSE(e["error"]["message"].get<std::string>().empty());
    if (!c.param.empty()) {
      EXPECT_EQ(e["error"]["param"], c.param);
    }
  }
  // Neutral values of unsupported fields and nulls are accepted.
  const Reply ok = post(s, K, R"({"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                               "max_tokens": 2, "n": 1, "logprobs": false, "tools": [], "tool_choice": "none", "temperature": null,
                               "response_format": {"type": "text"}, "user": "u-19", "seed": -5})");
  EXPECT_EQ(ok.status, 200) << ok.body;

  // 10 MB body: refused by size before it is parsed.
  const Reply huge = post(s, C, json{{"prompt", std::string(10 << 20, 'a')}}.dump());
  EXPECT_EQ(huge.status, 413);
  EXPECT_EQ(huge.parsed()["error"]["code"], "payload_too_large");
  // No such route.
  auto c = s.client();
  auto nf = c->Get("/v1/engines");
  ASSERT_TRUE(nf);
  EXPECT_EQ(nf->status, 404);
  EXPECT_EQ(json::parse(nf->body)["error"]["code"], "not_found");
  // Still up and idle, nothing was queued by the refusals.
  const json h = s.health();
  EXPECT_EQ(h["status"], "ok");
  EXPECT_EQ(h["slots_busy"], 0);
  EXPECT_EQ(h["requests_accepted"], 1);
}

TEST(Server, ApiKeyIsRequiredOnV1Routes) {
  GLQ_REQUIRE_MODEL();
  ServerOptions o = small_server();
  o.api_key = "k-111-secret";
  TestServer s(o);
  const std::string body = R"({"prompt": "hi", "max_tokens": 2})";
  const Reply none = post(s, "/v1/completions", body);
  EXPECT_EQ(none.status, 401);
  EXPECT_EQ(none.parsed()["error"]["code"], "invalid_api_key");
  const Reply wrong = post(s, "/v1/completions", body, {{"Authorization", "Bearer k-111-secreT"}});
  EXPECT_EQ(wrong.status, 401);
  const Reply prefix = post(s, "/v1/completions", body, {{"Authorization", "Bearer k-111"}});
  EXPECT_EQ(prefix.status, 401);
  const Reply right = post(s, "/v1/completions", body, {{"Authorization", "Bearer k-111-secret"}});
  EXPECT_EQ(right.status, 200) << right.body;
  auto c = s.client();
  auto models = c->Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 401);
  auto health = c->Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
}

// A long answer that only stops when its client goes away (at most 480 tokens).
const std::string kEndless = R"({"prompt": "Once upon a time", "max_tokens": 480, "ignore_eos": true, "stream": true})";
const std::string kEndlessWhole = R"({"prompt": "Once upon a time", "max_tokens": 480, "ignore_eos": true})";

TEST(Server, FullQueueIsRefusedWith503) {
  GLQ_REQUIRE_MODEL();
  TestServer s(small_server(1, 1));
  RawClient running(s.port()), waiting(s.port());
  ASSERT_TRUE(running.ok() && waiting.ok());
  ASSERT_TRUE(running.send_post("/v1/completions", kEndless));
  ASSERT_TRUE(s.wait_health([](const json& h) { return h["slots_busy"] == 1; }, 20s));
  ASSERT_TRUE(waiting.send_post("/v1/completions", kEndless));
  ASSERT_TRUE(s.wait_health([](const json& h) { return h["queued"] == 1; }, 20s));

  const Reply refused = post(s, "/v1/completions", R"({"prompt": "hi", "max_tokens": 3})");
  EXPECT_EQ(refused.status, 503);
  EXPECT_EQ(refused.parsed()["error"]["code"], "queue_full");
  EXPECT_EQ(refused.parsed()["error"]["type"], "server_error");
  EXPECT_NE(refused.headers.find("Retry-After"), refused.headers.end());

  // Both hang up: the queued request leaves the queue, the running one frees its slot.
  waiting.close();
  running.close();
  ASSERT_TRUE(s.wait_health([](const json& h) { return h["slots_busy"] == 0 && h["queued"] == 0; }, 20s));
  const json h = s.health();
  EXPECT_EQ(h["requests_cancelled"], 2);
  EXPECT_EQ(h["requests_refused"], 1);
  EXPECT_LT(h["completion_tokens"].get<int>(), 480) << "the running request was stopped early";
  const Reply after = post(s, "/v1/completions", R"({"prompt": "hi", "max_tokens": 3})");
  EXPECT_EQ(after.status, 200) << after.body;
}

TEST(Server, ClientThatHangsUpFreesItsSlot) {
  GLQ_REQUIRE_MODEL();
  TestServer s(small_server(2, 2));
  // Streamed, through an HTTP client that stops reading after the first token chunks.
  {
    auto c = s.client();
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = kEndless;
    req.set_header("Content-Type", "application/json");
    int chunks = 0;
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
      return ++chunks < 3;  // false: the client aborts and closes the connection
    };
    auto r = c->send(req);
    EXPECT_EQ(r.error(), httplib::Error::Canceled);
  }
  ASSERT_TRUE(s.wait_health([](const json& h) { return h["slots_busy"] == 0 && h["requests_cancelled"] == 1; }, 20s));
  // Not streamed: the client gives up while the answer is being generated.
  {
    RawClient raw(s.port());
    ASSERT_TRUE(raw.send_post("/v1/completions", kEndlessWhole));
    ASSERT_TRUE(s.wait_health([](const json& h) { return h["slots_busy"] == 1 && h["completion_tokens"] > 0; }, 20s));
  }
  ASSERT_TRUE(s.wait_health([](const json& h) { return h["slots_busy"] == 0 && h["requests_cancelled"] == 2; }, 20s));
  EXPECT_LT(s.health()["completion_tokens"].get<int>(), 2 * 480);
  // One log line per request, the abandoned ones included.
  auto generate_lines = [](const std::vector<std::string>& lines) {
    size_t n = 0;
    for (const auto& l : lines) n += l.find("POST /v1/completions") != std::string::npos;
    return n;
  };
  EXPECT_TRUE(s.wait_log([&](const std::vector<std::string>& l) { return generate_lines(l) >= 2; }, 10s));
  EXPECT_EQ(generate_lines(s.log_lines()), 2u);
}

TEST(Server, LogsOneLinePerRequest) {
  GLQ_REQUIRE_MODEL();
  TestServer s(small_server());
  EXPECT_EQ(post(s, "/v1/completions", R"({"prompt": "Hello", "max_tokens": 3, "ignore_eos": true})").status, 200);
  EXPECT_EQ(post(s, "/v1/completions", R"({"prompt": 3})").status, 400);
  auto c = s.client();
  ASSERT_TRUE(c->Get("/nowhere"));
  // The line is written after the last byte of the answer: wait for it.
  ASSERT_TRUE(s.wait_log([](const std::vector<std::string>& l) { return l.size() >= 3; }, 10s));
  // Each line is written after its answer's last byte, so a request's line may follow the next
  // request's: look for each line, not at a position.
  const auto lines = s.log_lines();
  ASSERT_EQ(lines.size(), 3u);
  auto find_line = [&](const std::string& what) -> std::string {
    std::string found;
    int n = 0;
    for (const auto& l : lines)
      if (l.find(what) != std::string::npos) found = l, ++n;
    EXPECT_EQ(n, 1) << "lines with \"" << what << "\"";
    return found;
  };
  const std::string ok = find_line("POST /v1/completions 200 tokens ");
  EXPECT_NE(ok.find("+3 "), std::string::npos) << ok;
  EXPECT_NE(ok.find(" ms length"), std::string::npos) << ok;
  find_line("POST /v1/completions 400");
  find_line("GET /nowhere 404");
}

TEST(Server, StopFinishesRequestsInFlight) {
  GLQ_REQUIRE_MODEL();
  auto s = std::make_unique<TestServer>(small_server(1, 2));
  Reply r;
  std::thread t([&] { r = post(*s, "/v1/completions", kEndlessWhole); });
  ASSERT_TRUE(s->wait_health([](const json& h) { return h["slots_busy"] == 1; }, 20s));
  s->server().stop();
  t.join();
  EXPECT_EQ(r.status, 503);
  s.reset();
}

}  // namespace
}  // namespace glq::server::test
