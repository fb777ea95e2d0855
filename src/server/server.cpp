// The HTTP side of `glq serve`: routes, authentication, streaming, errors and the request log
// (see glq/server/server.hpp).
#include "glq/server/server.hpp"

#include <fmt/format.h>
#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "glq/error.hpp"
#include "glq/server/api.hpp"
#include "peer_probe.hpp"

namespace glq::server {

namespace {

using Clock = std::chrono::steady_clock;
using ojson = nlohmann::ordered_json;

// How often a waiting handler looks at its client's connection.
constexpr std::chrono::milliseconds kPollInterval{50};

// What the request log needs to know about the request this thread is serving. cpp-httplib
// runs the pre-routing handler, the handler, the content provider (streams) and the logger of
// one request on the same thread, one request at a time.
struct RequestLog {
  bool started = false;
  Clock::time_point start;
  std::shared_ptr<Generation> gen;
  std::string note;  // error code, "client closed", ...
};
thread_local RequestLog t_log;

void set_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status();
  res.set_content(e.to_json(), "application/json");
  t_log.note = e.code().empty() ? e.type() : e.code();
}

// Compares without an early exit, so the time taken does not reveal how much of the key matched.
bool constant_time_equal(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

const char* reason_phrase(int status) {
  switch (status) {
    case 400: return "bad request";
    case 401: return "unauthorized";
    case 404: return "not found";
    case 405: return "method not allowed";
    case 408: return "request timeout";
    case 413: return "payload too large";
    case 414: return "URI too long";
    case 415: return "unsupported media type";
    case 503: return "service unavailable";
    default: return status >= 500 ? "server error" : "request error";
  }
}

}  // namespace

struct Server::Impl {
  Impl(const model::Model& m, ServerOptions o)
      : model(m), opt(std::move(o)), scheduler(m, opt.scheduler), id_rng(std::random_device{}()) {
    // A prompt longer than context × the longest token (in bytes) cannot fit: refused before
    // tokenizing it.
    const model::Tokenizer& tok = m.tokenizer();
    size_t longest = 1;
    for (int32_t id = 0; id < tok.vocab_size(); ++id) longest = std::max(longest, tok.token_bytes(id).size());
    max_prompt_bytes = static_cast<size_t>(opt.scheduler.context) * longest;
    setup();
  }

  void setup();
  void log_line(const std::string& line) {
    if (opt.log) {
      opt.log(line);
    } else {
      std::fputs((line + "\n").c_str(), stderr);  // one call: lines of threads do not interleave
    }
  }
  std::string new_id(ApiKind kind);
  void handle_generate(const httplib::Request& req, httplib::Response& res, ApiKind kind);
  void handle_health(httplib::Response& res);
  void handle_models(const httplib::Request& req, httplib::Response& res);

  const model::Model& model;
  ServerOptions opt;
  Scheduler scheduler;
  httplib::Server http;
  std::thread thread;
  int port = -1;
  size_t max_prompt_bytes = 0;
  std::mutex id_mutex;
  std::mt19937_64 id_rng;
  std::mutex stop_mutex;
  bool stopped = false;
  const int64_t created = static_cast<int64_t>(std::time(nullptr));
};

std::string Server::Impl::new_id(ApiKind kind) {
  uint64_t a, b;
  {
    std::lock_guard<std::mutex> lock(id_mutex);
    a = id_rng();
    b = id_rng();
  }
  return fmt::format("{}-{:016x}{:08x}", kind == ApiKind::Chat ? "chatcmpl" : "cmpl", a, static_cast<uint32_t>(b));
}

void Server::Impl::setup() {
  // A connection holds its thread for as long as it is kept alive, so beyond the requests that
  // can run or wait, 64 threads are left to answer the rest (503) at once.
  const int threads = opt.http_threads > 0 ? opt.http_threads : opt.scheduler.parallel + opt.scheduler.queue + 64;
  http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  http.set_payload_max_length(opt.max_body_bytes);
  http.set_keep_alive_max_count(100);
  http.set_keep_alive_timeout(5);
  http.set_read_timeout(10, 0);
  http.set_write_timeout(10, 0);
  http.set_tcp_nodelay(true);  // streamed chunks go out as they are written

  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    t_log = RequestLog{};
    t_log.started = true;
    t_log.start = Clock::now();
    if (opt.api_key.empty() || req.path.rfind("/v1/", 0) != 0) return httplib::Server::HandlerResponse::Unhandled;
    const std::string auth = req.get_header_value("Authorization");
    const std::string prefix = "Bearer ";
    if (auth.empty()) {
      set_error(res, ApiError(401, "Missing API key: send the header 'Authorization: Bearer <key>'.", "", "invalid_api_key"));
      return httplib::Server::HandlerResponse::Handled;
    }
    if (auth.rfind(prefix, 0) != 0 || !constant_time_equal(auth.substr(prefix.size()), opt.api_key)) {
      set_error(res, ApiError(401, "Incorrect API key provided.", "", "invalid_api_key"));
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  // Statuses cpp-httplib sets itself (404 no route, 413 body too large, 400 broken HTTP) get an
  // OpenAI-style body too; bodies set by the handlers are left alone.
  http.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    std::string message;
    std::string code;
    if (res.status == 404) {
      message = fmt::format("No route for {} {}.", req.method, req.path.substr(0, 200));
      code = "not_found";
    } else if (res.status == 413 && req.get_header_value("Content-Type").rfind("application/x-www-form-urlencoded", 0) == 0) {
      // cpp-httplib parses form bodies itself and caps them at 8 KiB.
      message = "A form-encoded body is limited to 8192 bytes; send the request as 'Content-Type: application/json'.";
      code = "payload_too_large";
    } else if (res.status == 413) {
      message = fmt::format("The request body is larger than {} bytes.", opt.max_body_bytes);
      code = "payload_too_large";
    } else {
      message = fmt::format("HTTP {} ({}).", res.status, reason_phrase(res.status));
    }
    set_error(res, ApiError(res.status, message, "", code));
    return httplib::Server::HandlerResponse::Handled;
  }));

  http.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown exception";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    set_error(res, ApiError(500, fmt::format("Internal error: {}", what)));
  });

  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    std::string tokens = "-";
    std::string finish;
    if (t_log.gen) {
      const int prompt = static_cast<int>(t_log.gen->prompt().size());
      if (t_log.gen->finished()) {
        const GenerationResult r = t_log.gen->result();
        tokens = fmt::format("{}+{}", prompt, r.completion_tokens);
        finish = finish_reason_name(r.reason);
      } else {
        tokens = fmt::format("{}+{}", prompt, t_log.gen->completion_tokens_so_far());
        finish = t_log.gen->cancelled() ? "cancelled" : "unfinished";
      }
    }
    if (!t_log.note.empty()) finish += finish.empty() ? t_log.note : " " + t_log.note;
    const std::string ms =
        t_log.started ? fmt::format("{:.1f}", std::chrono::duration<double, std::milli>(Clock::now() - t_log.start).count()) : "-";
    log_line(fmt::format("glq serve: {} {} {} {} tokens {} {} ms{}{}", req.remote_addr, req.method, req.path.substr(0, 200),
                         res.status, tokens, ms, finish.empty() ? "" : " ", finish));
    t_log = RequestLog{};
  });

  auto guarded = [this](auto fn) {
    return [this, fn](const httplib::Request& req, httplib::Response& res) {
      try {
        fn(req, res);
      } catch (const ApiError& e) {
        set_error(res, e);
      } catch (const Error& e) {
        const int status = e.kind() == ErrorKind::InvalidArgument ? 400 : 500;
        set_error(res, ApiError(status, e.what()));
      } catch (const std::exception& e) {
        set_error(res, ApiError(500, fmt::format("Internal error: {}", e.what())));
      }
    };
  };
  http.Post("/v1/completions", guarded([this](const httplib::Request& req, httplib::Response& res) {
    handle_generate(req, res, ApiKind::Completion);
  }));
  http.Post("/v1/chat/completions", guarded([this](const httplib::Request& req, httplib::Response& res) {
    handle_generate(req, res, ApiKind::Chat);
  }));
  http.Get("/v1/models", guarded([this](const httplib::Request& req, httplib::Response& res) { handle_models(req, res); }));
  http.Get("/v1/models/(.+)", guarded([this](const httplib::Request& req, httplib::Response& res) { handle_models(req, res); }));
  http.Get("/health", guarded([this](const httplib::Request&, httplib::Response& res) { handle_health(res); }));
}

void Server::Impl::handle_models(const httplib::Request& req, httplib::Response& res) {
  ojson m;
  m["id"] = opt.model_id;
  m["object"] = "model";
  m["created"] = created;
  m["owned_by"] = "glq";
  if (req.matches.size() > 1) {
    if (req.matches[1].str() != opt.model_id)
      throw ApiError(404, fmt::format("The model '{}' does not exist; this server serves '{}'.", req.matches[1].str().substr(0, 200), opt.model_id),
                     "model", "model_not_found");
    res.set_content(m.dump(), "application/json");
    return;
  }
  ojson list;
  list["object"] = "list";
  list["data"] = ojson::array({m});
  res.set_content(list.dump(), "application/json");
}

void Server::Impl::handle_health(httplib::Response& res) {
  const SchedulerStats s = scheduler.stats();
  ojson h;
  h["status"] = "ok";
  h["model"] = opt.model_id;
  h["context"] = opt.scheduler.context;
  h["slots_total"] = s.slots_total;
  h["slots_busy"] = s.slots_busy;
  h["queue_capacity"] = s.queue_capacity;
  h["queued"] = s.queued;
  h["requests_accepted"] = s.accepted;
  h["requests_refused"] = s.refused;
  h["requests_completed"] = s.completed;
  h["requests_cancelled"] = s.cancelled;
  h["requests_failed"] = s.failed;
  h["prompt_tokens"] = s.prompt_tokens;
  h["completion_tokens"] = s.completion_tokens;
  h["steps"] = s.steps;
  h["max_batch"] = s.max_batch;
  res.set_content(h.dump(), "application/json");
}

namespace {

// The state of one streamed answer, shared by the content provider and its releaser.
struct StreamState {
  std::shared_ptr<Generation> gen;
  ResponseMeta meta;
  PeerProbe probe;
  bool include_usage = false;
  std::string echo;  // completions with echo: the prompt, sent first
  bool started = false;
  Clock::time_point last_write;
};

}  // namespace

void Server::Impl::handle_generate(const httplib::Request& req, httplib::Response& res, ApiKind kind) {
  const model::Tokenizer& tok = model.tokenizer();
  const int context = opt.scheduler.context;
  ApiRequest r = kind == ApiKind::Chat ? parse_chat_request(req.body, model.vocab_size(), opt.sampling)
                                       : parse_completion_request(req.body, model.vocab_size(), opt.sampling);

  // Tokenize (a text too long to fit the context in any tokenization is refused first).
  auto too_long = [&](size_t prompt_tokens_or_more, bool exact) {
    return ApiError(400,
                    exact ? fmt::format("This model's maximum context length is {} tokens, but the prompt has {} tokens.",
                                        context, prompt_tokens_or_more)
                          : fmt::format("This model's maximum context length is {} tokens; a prompt of {} bytes cannot fit it.",
                                        context, prompt_tokens_or_more),
                    kind == ApiKind::Chat ? "messages" : "prompt", "context_length_exceeded");
  };
  std::vector<int32_t> prompt;
  if (kind == ApiKind::Chat) {
    size_t bytes = 0;
    for (const auto& m : r.messages) bytes += m.content.size();
    if (bytes > max_prompt_bytes) throw too_long(bytes, false);
    const std::string text = tok.apply_chat_template(r.messages, true);
    prompt = tok.encode(text, false, true);
  } else if (r.prompt_is_tokens) {
    prompt = std::move(r.prompt_tokens);
  } else {
    if (r.prompt_text.size() > max_prompt_bytes) throw too_long(r.prompt_text.size(), false);
    prompt = tok.encode(r.prompt_text, tok.add_bos_default(), true);
  }
  if (prompt.empty()) {  // an empty completion prompt starts from the beginning of a document
    const int32_t start = tok.bos_id() >= 0 ? tok.bos_id() : tok.eos_id();
    if (start < 0) throw ApiError(400, "The prompt is empty and the model has no begin-of-sequence token.", "prompt");
    prompt.push_back(start);
  }
  const int64_t n_prompt = static_cast<int64_t>(prompt.size());
  if (n_prompt >= context) throw too_long(prompt.size(), true);
  if (!r.max_tokens_given) {
    // OpenAI's defaults: 16 for completions; chat replies may use the rest of the context.
    r.params.max_tokens = static_cast<int>(kind == ApiKind::Chat ? context - n_prompt : std::min<int64_t>(16, context - n_prompt));
  } else if (n_prompt + r.params.max_tokens > context) {
    throw ApiError(400,
                   fmt::format("This model's maximum context length is {} tokens. However, you requested {} tokens "
                               "({} in the prompt, {} for the completion). Please reduce the prompt or max_tokens.",
                               context, n_prompt + r.params.max_tokens, n_prompt, r.params.max_tokens),
                   "max_tokens", "context_length_exceeded");
  }
  std::string echo;
  if (r.echo) echo = r.prompt_is_tokens ? tok.decode(prompt, false) : r.prompt_text;

  Admission admission = Admission::Accepted;
  std::shared_ptr<Generation> gen = scheduler.submit(std::move(prompt), r.params, &admission);
  if (!gen) {
    if (admission == Admission::QueueFull) {
      res.set_header("Retry-After", "1");
      throw ApiError(503,
                     fmt::format("The server is at capacity: {} requests are running and {} are waiting, the most it "
                                 "holds. Retry later.",
                                 opt.scheduler.parallel, opt.scheduler.queue),
                     "", "queue_full");
    }
    if (admission == Admission::ShuttingDown) throw ApiError(503, "The server is shutting down.", "", "shutting_down");
    throw ApiError(400, "The prompt and max_tokens do not fit the context.", "max_tokens", "context_length_exceeded");
  }
  t_log.gen = gen;

  ResponseMeta meta;
  meta.kind = kind;
  meta.id = new_id(kind);
  meta.created = static_cast<int64_t>(std::time(nullptr));
  meta.model = opt.model_id;
  PeerProbe probe(req.local_addr, req.local_port, req.remote_addr, req.remote_port);

  if (!r.stream) {
    std::string text;
    while (!gen->wait(kPollInterval, text)) {
      if (probe.closed()) gen->cancel();
    }
    const GenerationResult result = gen->result();
    if (result.reason == FinishReason::Error) throw ApiError(500, fmt::format("The engine failed: {}", result.error));
    if (result.reason == FinishReason::Cancelled) {
      if (probe.closed()) {  // nobody reads this answer
        set_error(res, ApiError(499, "The client closed the connection.", "", "client_closed"));
        return;
      }
      throw ApiError(503, "The server is shutting down.", "", "shutting_down");
    }
    const Usage usage{result.prompt_tokens, result.completion_tokens};
    res.set_content(response_body(meta, echo + text, finish_reason_name(result.reason), usage), "application/json");
    return;
  }

  auto st = std::make_shared<StreamState>();
  st->gen = gen;
  st->meta = meta;
  st->probe = probe;
  st->include_usage = r.include_usage;
  st->echo = std::move(echo);
  const auto heartbeat = std::chrono::milliseconds(std::max(opt.heartbeat_ms, 1));
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [st, heartbeat](size_t, httplib::DataSink& sink) -> bool {
        auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
        auto event = [&](const std::string& data) { return write("data: " + data + "\n\n"); };
        auto gone = [&] {  // the client went away: free the slot; false makes httplib stop
          st->gen->cancel();
          t_log.note = "client closed";
          return false;
        };
        if (!st->started) {
          st->started = true;
          st->last_write = Clock::now();
          if (st->meta.kind == ApiKind::Chat && !event(chunk_body(st->meta, "", true, ""))) return gone();
          if (!st->echo.empty() && !event(chunk_body(st->meta, st->echo, false, ""))) return gone();
        }
        std::string text;
        const bool done = st->gen->wait(kPollInterval, text);
        if (!text.empty()) {
          if (!event(chunk_body(st->meta, text, false, ""))) return gone();
          st->last_write = Clock::now();
        }
        if (done) {
          const GenerationResult r = st->gen->result();
          if (r.reason == FinishReason::Error || r.reason == FinishReason::Cancelled) {
            if (st->probe.closed()) return gone();
            const ApiError e = r.reason == FinishReason::Error
                                   ? ApiError(500, fmt::format("The engine failed: {}", r.error))
                                   : ApiError(503, "The server is shutting down.", "", "shutting_down");
            t_log.note = e.code().empty() ? e.type() : e.code();
            event(e.to_json());
          } else {
            event(chunk_body(st->meta, "", false, finish_reason_name(r.reason)));
            if (st->include_usage) event(usage_chunk_body(st->meta, Usage{r.prompt_tokens, r.completion_tokens}));
          }
          write("data: [DONE]\n\n");
          sink.done();
          return true;
        }
        if (st->probe.closed()) return gone();
        if (Clock::now() - st->last_write >= heartbeat) {  // SSE comment: keeps proxies open, finds dead peers
          if (!write(": keep-alive\n\n")) return gone();
          st->last_write = Clock::now();
        }
        return true;
      },
      [st](bool) {
        if (!st->gen->finished()) st->gen->cancel();
      });
}

// ---- Server ---------------------------------------------------------------------------------

Server::Server(const model::Model& model, ServerOptions options) {
  if (options.max_body_bytes < 1024) throw_invalid(fmt::format("server: max_body_bytes {} must be at least 1024", options.max_body_bytes));
  if (options.port < 0 || options.port > 65535) throw_invalid(fmt::format("server: port {} must be from 0 to 65535", options.port));
  if (options.model_id.empty()) throw_invalid("server: model_id must not be empty");
  const SamplingParams& d = options.sampling;
  if (!(d.temperature >= 0 && d.temperature <= 2)) throw_invalid(fmt::format("server: default temperature {} must be from 0 to 2", d.temperature));
  if (!(d.top_p >= 0 && d.top_p <= 1)) throw_invalid(fmt::format("server: default top_p {} must be from 0 to 1", d.top_p));
  if (d.top_k < 0) throw_invalid(fmt::format("server: default top_k {} must be >= 0", d.top_k));
  if (!(d.repetition_penalty > 0 && d.repetition_penalty <= 10))
    throw_invalid(fmt::format("server: default repetition_penalty {} must be in (0, 10]", d.repetition_penalty));
  impl_ = std::make_unique<Impl>(model, std::move(options));
}

Server::~Server() { stop(); }

int Server::bind() {
  if (impl_->port >= 0) return impl_->port;
  const ServerOptions& o = impl_->opt;
  if (o.port == 0) {
    impl_->port = impl_->http.bind_to_any_port(o.host);
  } else {
    impl_->port = impl_->http.bind_to_port(o.host, o.port) ? o.port : -1;
  }
  if (impl_->port < 0) throw_io(fmt::format("{}:{}", o.host, o.port), "cannot listen on this address (in use, or not an address of this machine)");
  return impl_->port;
}

void Server::run() {
  bind();
  impl_->http.listen_after_bind();
}

void Server::start() {
  bind();
  impl_->thread = std::thread([this] { impl_->http.listen_after_bind(); });
}

void Server::stop() {
  if (!impl_) return;
  {
    std::lock_guard<std::mutex> lock(impl_->stop_mutex);
    if (impl_->stopped) return;
    impl_->stopped = true;
  }
  impl_->scheduler.stop();  // waiting handlers get their generation finished as cancelled
  impl_->http.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

int Server::port() const { return impl_->port; }
const Scheduler& Server::scheduler() const { return impl_->scheduler; }
const ServerOptions& Server::options() const { return impl_->opt; }

}  // namespace glq::server
