// glq serve MODEL: an OpenAI-compatible HTTP server (docs/server.md). Runs until SIGINT or
// SIGTERM, then finishes the requests in flight as cancelled and exits 0.
#include <pthread.h>
#include <signal.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "cli/command.hpp"
#include "cli/cuda_session.hpp"
#include "cli/model_session.hpp"
#include "glq/error.hpp"
#include "glq/server/cuda_backend.hpp"
#include "glq/server/server.hpp"

namespace {

struct ServeArgs {
  std::string model;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string api_key;
  std::string alias;
  int parallel = 4;
  int queue = 32;
  int ctx = 0;
  int prefill_chunk = 256;
  size_t max_body = 1 << 20;
  std::string device = "cpu";
  // Sampling for requests that leave it out (docs/server.md): the model's generation_config.json
  // where it sets a value, else these; a flag given on the command line wins over both.
  float temperature = 0.7f;
  float top_p = 0.9f;
  int top_k = 0;
  float repetition_penalty = 1.0f;
  std::vector<const CLI::Option*> sampling_flags;  // --temp, --top-p, --top-k, --repeat-penalty
};

// The sampling defaults: the flags' values, where the model's generation_config.json does not set
// them and the flag was not given.
glq::server::SamplingParams sampling_defaults(const ServeArgs& a) {
  glq::server::SamplingParams d;
  d.temperature = a.temperature;
  d.top_p = a.top_p;
  d.top_k = a.top_k;
  d.repetition_penalty = a.repetition_penalty;
  const auto& f = a.sampling_flags;
  return glq::server::apply_generation_config(std::filesystem::path(a.model) / "generation_config.json", d,
                                              {f[0]->count() > 0, f[1]->count() > 0, f[2]->count() > 0, f[3]->count() > 0});
}

// The name clients see: the file name without .gguf, or the directory name.
std::string default_model_id(const std::string& path) {
  std::filesystem::path p(path);
  while (!p.empty() && !p.has_filename()) p = p.parent_path();
  std::string name = p.filename().string();
  if (name.size() > 5 && name.substr(name.size() - 5) == ".gguf") name.resize(name.size() - 5);
  return name.empty() ? "glq" : name;
}

int serve(const ServeArgs& a) {
  using namespace glq;
  cli::check_device(a.device);
  // SIGINT/SIGTERM are taken by sigwait() below: block them before any thread starts so that
  // every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client that hangs up must not kill the server

  auto m = cli::load_model_verbose(a.model);
  server::ServerOptions o;
  o.host = a.host;
  o.port = a.port;
  o.api_key = a.api_key;
  if (o.api_key.empty()) {
    if (const char* env = std::getenv("GLQ_API_KEY")) o.api_key = env;
  }
  o.model_id = a.alias.empty() ? default_model_id(a.model) : a.alias;
  o.scheduler.parallel = a.parallel;
  o.scheduler.queue = a.queue;
  o.scheduler.context = a.ctx > 0 ? a.ctx : std::min(m->config().max_context, 4096);
  if (o.scheduler.context > m->config().max_context)
    throw_invalid(fmt::format("--ctx {} is beyond the model's context length of {}", a.ctx, m->config().max_context));
  o.scheduler.prefill_chunk = a.prefill_chunk;
  o.max_body_bytes = a.max_body;
  o.sampling = sampling_defaults(a);
  std::unique_ptr<server::CudaBackend> gpu;
  if (a.device == "cuda") {
    // The GPU engine with one KV-cache slot per parallel sequence of the scheduler's context.
    const auto t0 = std::chrono::steady_clock::now();
    gpu = std::make_unique<server::CudaBackend>(*m, o.scheduler.parallel, o.scheduler.context);
    o.scheduler.backend = gpu.get();
    fmt::print(stderr, "glq serve: engine on {} ({:.1f} MB of weights, KV cache {} x {} tokens, uploaded in {:.2f} s)\n",
               gpu->device_name(), gpu->weight_mb(), o.scheduler.parallel, o.scheduler.context, cli::seconds_since(t0));
  }

  server::Server srv(*m, o);
  const int port = srv.bind();
  fmt::print(stderr, "glq serve: model '{}' on http://{}:{}/v1 ({} slots, queue {}, context {}, API key {})\n", o.model_id,
             a.host, port, o.scheduler.parallel, o.scheduler.queue, o.scheduler.context,
             o.api_key.empty() ? "off" : "required");
  fmt::print(stderr, "glq serve: requests without them sample at temperature {:g}, top_p {:g}, top_k {}, repetition_penalty {:g}\n",
             o.sampling.temperature, o.sampling.top_p, o.sampling.top_k, o.sampling.repetition_penalty);
  if (a.host != "127.0.0.1" && a.host != "localhost" && a.host != "::1")
    fmt::print(stderr, "glq serve: listening on {}: reachable from other machines{}\n", a.host,
               o.api_key.empty() ? ", without an API key" : "");
  srv.start();
  int sig = 0;
  sigwait(&signals, &sig);
  fmt::print(stderr, "glq serve: {} received, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  srv.stop();
  return 0;
}

}  // namespace

GLQ_COMMAND("serve", "OpenAI-compatible HTTP server (completions, chat, streaming, continuous batching)", [](CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  app.add_option("model", a->model, "GGUF file or Hugging Face checkpoint directory")->required();
  app.add_option("--host", a->host, "address to listen on (loopback by default)")->capture_default_str();
  app.add_option("--port", a->port, "TCP port (0: any free port)")->capture_default_str()->check(CLI::Range(0, 65535));
  app.add_option("--api-key", a->api_key, "require 'Authorization: Bearer KEY' on /v1/* (or set GLQ_API_KEY)");
  app.add_option("--alias", a->alias, "model name in /v1/models and responses (default: the file name)");
  app.add_option("--parallel", a->parallel, "sequences decoded together (continuous batching slots)")
      ->capture_default_str()->check(CLI::Range(1, 1024));
  app.add_option("--queue", a->queue, "requests that may wait for a slot; more get 503")
      ->capture_default_str()->check(CLI::Range(0, 1 << 20));
  app.add_option("--ctx", a->ctx, "tokens per sequence, prompt + completion (default: the model's, at most 4096)")
      ->check(CLI::Range(0, 1 << 24));
  app.add_option("--prefill-chunk", a->prefill_chunk, "prompt tokens evaluated per step, all slots together")
      ->capture_default_str()->check(CLI::Range(1, 1 << 20));
  app.add_option("--max-body", a->max_body, "largest request body in bytes (larger: 413)")->capture_default_str();
  app.add_option("--device", a->device, "cpu, or cuda (the GPU engine; needs a CUDA build)")
      ->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
  auto& flags = a->sampling_flags;
  flags.push_back(app.add_option("--temp", a->temperature,
                                 "temperature of requests that set none (0 = greedy; the model's generation_config.json wins over the default)")
                      ->capture_default_str()->check(CLI::Range(0.0, 2.0)));
  flags.push_back(app.add_option("--top-p", a->top_p, "top_p of requests that set none (1 = off)")->capture_default_str()->check(CLI::Range(0.0, 1.0)));
  flags.push_back(app.add_option("--top-k", a->top_k, "top_k of requests that set none (0 = off)")->capture_default_str()->check(CLI::NonNegativeNumber));
  flags.push_back(app.add_option("--repeat-penalty", a->repetition_penalty, "repetition_penalty of requests that set none (1 = off)")
                      ->capture_default_str()->check(CLI::Range(0.01, 10.0)));
  return [a] { return serve(*a); };
});
