// Helpers of the server tests: the shared model, an in-process server on a loopback port, a raw
// socket client (to hang up at will) and a server-sent-events parser. All traffic goes to
// 127.0.0.1; every wait is bounded.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "glq/model/loader.hpp"
#include "glq/model/sampler.hpp"
#include "glq/server/scheduler.hpp"
#include "glq/server/server.hpp"

namespace glq::server::test {

using json = nlohmann::json;

inline std::string model_path() {
  return std::string(GLQ_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// Loaded once for the whole executable; nullptr when the file is absent.
inline const model::Model* shared_model() {
  static std::unique_ptr<model::Model> m = [] {
    std::unique_ptr<model::Model> p;
    if (std::filesystem::exists(model_path())) p = model::load_model(model_path());
    return p;
  }();
  return m.get();
}

#define GLQ_REQUIRE_MODEL()                                                              \
  do {                                                                                   \
    if (!::glq::server::test::shared_model())                                            \
      GTEST_SKIP() << "model file absent: " << ::glq::server::test::model_path()         \
                   << " (run tools/fetch_model.sh)";                                     \
  } while (0)

// Greedy continuation by the engine alone (Model::forward on one sequence): the reference the
// server's answers at temperature 0 must equal.
struct Reference {
  std::string text;
  int completion_tokens = 0;
  std::string finish_reason;
};
inline Reference greedy_reference(const std::vector<int32_t>& prompt, int max_tokens) {
  const model::Model& m = *shared_model();
  const model::Tokenizer& tok = m.tokenizer();
  model::KVCache cache = m.make_cache(static_cast<int>(prompt.size()) + max_tokens);
  std::vector<float> logits(static_cast<size_t>(m.vocab_size()));
  m.forward(prompt, cache, logits.data());
  std::vector<int32_t> out;
  Reference r;
  r.finish_reason = "length";
  for (int i = 0; i < max_tokens; ++i) {
    const int32_t t = model::argmax(logits);
    ++r.completion_tokens;
    if (tok.is_stop(t)) {
      r.finish_reason = "stop";
      break;
    }
    out.push_back(t);
    if (i + 1 < max_tokens) m.forward(std::span<const int32_t>(&t, 1), cache, logits.data());
  }
  r.text = tok.decode(out, true);
  return r;
}

// A Server on 127.0.0.1, any free port, capturing its log lines.
class TestServer {
 public:
  explicit TestServer(ServerOptions o = {}, const model::Model* m = shared_model()) {
    o.host = "127.0.0.1";
    o.port = 0;
    if (o.model_id == "glq") o.model_id = "smollm2-test";
    o.log = [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(mutex_);
      lines_.push_back(line);
    };
    server_ = std::make_unique<Server>(*m, o);
    server_->start();
  }
  ~TestServer() { server_->stop(); }

  int port() const { return server_->port(); }
  Server& server() { return *server_; }
  std::unique_ptr<httplib::Client> client() const {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", port());
    c->set_read_timeout(120, 0);
    c->set_write_timeout(30, 0);
    c->set_connection_timeout(10, 0);
    return c;
  }
  std::vector<std::string> log_lines() {
    std::lock_guard<std::mutex> lock(mutex_);
    return lines_;
  }
  // Waits (bounded) until the log lines satisfy pred.
  bool wait_log(const std::function<bool(const std::vector<std::string>&)>& pred, std::chrono::milliseconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      if (pred(log_lines())) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return pred(log_lines());
  }
  json health() const {
    auto c = client();
    auto r = c->Get("/health");
    if (!r || r->status != 200) return json::object();
    return json::parse(r->body);
  }
  // Polls /health until pred holds or the deadline passes; returns whether it held.
  bool wait_health(const std::function<bool(const json&)>& pred, std::chrono::milliseconds limit) const {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      const json h = health();
      if (!h.empty() && pred(h)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

 private:
  std::mutex mutex_;
  std::vector<std::string> lines_;
  std::unique_ptr<Server> server_;
};

// POST with a JSON body; the result (status -1 when the connection failed) and the body.
struct Reply {
  int status = -1;
  std::string body;
  httplib::Headers headers;
  json parsed() const { return json::parse(body); }
};
inline Reply post(const TestServer& s, const std::string& path, const std::string& body,
                  const httplib::Headers& headers = {}) {
  auto c = s.client();
  auto r = c->Post(path.c_str(), headers, body, "application/json");
  Reply out;
  if (r) {
    out.status = r->status;
    out.body = r->body;
    out.headers = r->headers;
  }
  return out;
}

// A plain TCP client to 127.0.0.1 that can hang up at any point.
class RawClient {
 public:
  explicit RawClient(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    timeval tv{10, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) close();
  }
  ~RawClient() { close(); }
  bool ok() const { return fd_ >= 0; }
  bool send_post(const std::string& path, const std::string& body) {
    const std::string req = "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
                            "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    return ::send(fd_, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size());
  }
  // Reads until `needle` has arrived (or 10 s without data); returns what was read.
  std::string read_until(const std::string& needle) {
    std::string got;
    char buf[4096];
    while (got.find(needle) == std::string::npos) {
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) break;
      got.append(buf, static_cast<size_t>(n));
    }
    return got;
  }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// The "data:" payloads of a server-sent-events body, in order.
inline std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find('\n', pos);
    if (end == std::string::npos) end = body.size();
    const std::string line = body.substr(pos, end - pos);
    if (line.rfind("data: ", 0) == 0) out.push_back(line.substr(6));
    pos = end + 1;
  }
  return out;
}

// Scheduler tests: waits (bounded) for the end of a generation and returns its text.
inline std::string drain(Generation& g, std::chrono::seconds limit = std::chrono::seconds(60)) {
  std::string text;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!g.wait(std::chrono::milliseconds(50), text) && std::chrono::steady_clock::now() < deadline) {
  }
  EXPECT_TRUE(g.finished()) << "generation did not finish in time";
  return text;
}

inline GenerationParams greedy(int max_tokens, bool ignore_eos = false) {
  GenerationParams p;
  p.max_tokens = max_tokens;
  p.sampling.temperature = 0;
  p.ignore_eos = ignore_eos;
  return p;
}

// The shared model's tokens of text, as the server encodes a prompt.
inline std::vector<int32_t> tokens_of(const std::string& text) {
  const model::Tokenizer& tok = shared_model()->tokenizer();
  return tok.encode(text, tok.add_bos_default(), true);
}

}  // namespace glq::server::test
