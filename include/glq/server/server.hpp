// `glq serve`: an OpenAI-compatible HTTP server over one Model (docs/server.md).
//
//   POST /v1/completions        a prompt (text or token ids) → completion
//   POST /v1/chat/completions   messages, rendered with the model's chat template → reply
//   GET  /v1/models             the served model; GET /v1/models/{id}
//   GET  /health                status and scheduler counters (never needs the API key)
//
// Threads: cpp-httplib's pool runs the handlers, which parse and validate the request, tokenize
// it and submit it to the Scheduler (continuous batching, glq/server/scheduler.hpp); then each
// handler waits on its Generation and writes the answer, all at once or as server-sent events.
// Every request that waits holds one HTTP thread (and a kept-alive connection holds its thread
// between requests), so the pool has parallel + queue + 64 threads: a request beyond the queue
// gets its 503 at once instead of waiting for a thread.
//
// Every error is an OpenAI-style JSON body with a 4xx/5xx status; nothing a client sends stops
// the server. One line per request goes to the log (stderr by default).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "glq/model/model.hpp"
#include "glq/server/scheduler.hpp"

namespace glq::server {

struct ServerOptions {
  std::string host = "127.0.0.1";   // loopback unless asked otherwise
  int port = 8080;                  // 0: any free port (see Server::port())
  std::string api_key;              // non-empty: /v1/* need "Authorization: Bearer <key>"
  std::string model_id = "glq";     // the name in /v1/models and in responses
  SchedulerOptions scheduler;
  // What a request's left-out temperature, top_p, top_k and repetition_penalty mean (OpenAI's
  // defaults unless set; `glq serve` sets them from its flags or the model's generation_config).
  SamplingParams sampling;
  size_t max_body_bytes = 1 << 20;  // larger request bodies get 413
  int http_threads = 0;             // 0: parallel + queue + 64
  int heartbeat_ms = 2000;          // streams: an SSE comment after this long without data
  // One line per request (method, path, status, tokens, ms); empty: written to stderr.
  std::function<void(const std::string&)> log;
};

class Server {
 public:
  // The model must outlive the server and have its tokenizer. Throws InvalidArgument for bad
  // options.
  Server(const model::Model& model, ServerOptions options);
  ~Server();  // stop()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port and listens; returns the port. Throws Io when the address cannot be bound.
  int bind();
  // Serves until stop() (binds first if bind() was not called). Blocks.
  void run();
  // bind() if needed, then run() on a background thread; connections are accepted on return.
  void start();
  // Finishes the requests in flight (as cancelled), stops listening and joins. Idempotent.
  void stop();

  int port() const;  // -1 before bind()
  const Scheduler& scheduler() const;
  const ServerOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace glq::server
