// Continuous batching: the scheduler thread and the per-request channel (see
// glq/server/scheduler.hpp).
#include "glq/server/scheduler.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <random>
#include <span>
#include <unordered_map>

#include "glq/error.hpp"
#include "glq/model/sampler.hpp"
#include "glq/server/stop_matcher.hpp"

namespace glq::server {

namespace {

using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Error: return "error";
  }
  return "?";
}

// ---- Generation -----------------------------------------------------------------------------

Generation::Generation(std::vector<int32_t> prompt, GenerationParams params)
    : prompt_(std::move(prompt)), params_(std::move(params)), submitted_(Clock::now()) {}

bool Generation::wait(std::chrono::milliseconds timeout, std::string& text) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (pending_.empty() && !done_) cv_.wait_for(lock, timeout, [&] { return !pending_.empty() || done_; });
  text += pending_;
  pending_.clear();
  return done_;
}

bool Generation::finished() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return done_;
}

GenerationResult Generation::result() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return result_;
}

void Generation::publish(const std::string& text) {
  if (text.empty()) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    pending_ += text;
  }
  cv_.notify_all();
}

void Generation::finish(GenerationResult result) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    result_ = std::move(result);
    done_ = true;
  }
  cv_.notify_all();
}

// ---- Scheduler ------------------------------------------------------------------------------

struct Scheduler::Slot {
  explicit Slot(const model::Tokenizer& tokenizer) : streamer(tokenizer) {}

  ~Slot() {
    if (free_list && backend_slot >= 0) free_list->push_back(backend_slot);
  }

  std::shared_ptr<Generation> gen;
  model::KVCache cache;               // prompt + max_tokens positions (CPU engine)
  int backend_slot = -1;              // the backend's cache slot (SchedulerOptions::backend)
  int position = 0;                   // tokens in that slot
  int capacity = 0;                   // prompt + max_tokens
  std::vector<int>* free_list = nullptr;  // where backend_slot returns
  std::unique_ptr<model::Sampler> sampler;
  std::vector<int32_t> history;       // prompt + sampled tokens (repetition penalty)
  std::unordered_map<int32_t, int> counts;  // sampled tokens → occurrences (presence/frequency)
  std::vector<float> logits;          // (vocab) of the last evaluated position
  std::vector<float> work;            // (vocab) logits with bias and penalties
  model::TokenStreamer streamer;
  StopMatcher stop;
  int prompt_done = 0;                // prompt tokens already in the cache
  int chunk = 0;                      // prompt tokens in the current step
  int generated = 0;
  int32_t next = -1;                  // token fed at the next decode step
  bool done = false;
  Clock::time_point admitted;
  Clock::time_point first_token;
};

Scheduler::Scheduler(const model::Model& model, SchedulerOptions options)
    : model_(model), options_(options), seed_base_(std::random_device{}()) {
  const int max_ctx = model.config().max_context;
  if (!model.has_tokenizer()) throw_invalid("scheduler: the model was loaded without a tokenizer");
  if (options.parallel < 1 || options.parallel > 1024)
    throw_invalid(fmt::format("scheduler: parallel {} must be from 1 to 1024", options.parallel));
  if (options.queue < 0 || options.queue > 1 << 20)
    throw_invalid(fmt::format("scheduler: queue {} must be from 0 to {}", options.queue, 1 << 20));
  if (options.context < 2 || options.context > max_ctx)
    throw_invalid(fmt::format("scheduler: context {} must be from 2 to the model's {}", options.context, max_ctx));
  if (options.prefill_chunk < 1)
    throw_invalid(fmt::format("scheduler: prefill_chunk {} must be at least 1", options.prefill_chunk));
  if (options.backend) {
    if (options.backend->slots() < options.parallel)
      throw_invalid(fmt::format("scheduler: the backend holds {} sequences, fewer than parallel {}",
                                options.backend->slots(), options.parallel));
    if (options.backend->context() < options.context)
      throw_invalid(fmt::format("scheduler: the backend's context {} is below the context {}", options.backend->context(),
                                options.context));
    for (int i = options.parallel - 1; i >= 0; --i) free_backend_slots_.push_back(i);
  }
  thread_ = std::thread([this] { run(); });
}

Scheduler::~Scheduler() { stop(); }

void Scheduler::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<Generation> Scheduler::submit(std::vector<int32_t> prompt, GenerationParams params,
                                              Admission* admission) {
  const int vocab = model_.vocab_size();
  for (int32_t id : prompt)
    if (id < 0 || id >= vocab) throw_invalid(fmt::format("scheduler: token id {} outside the vocabulary of {}", id, vocab));
  if (params.max_tokens < 1) throw_invalid(fmt::format("scheduler: max_tokens {} must be at least 1", params.max_tokens));
  Admission a = Admission::Accepted;
  std::shared_ptr<Generation> gen;
  if (prompt.empty() || static_cast<int64_t>(prompt.size()) + params.max_tokens > options_.context) {
    a = Admission::TooLong;
  } else {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) {
      a = Admission::ShuttingDown;
    } else if (busy_.load() + static_cast<int64_t>(queue_.size()) >= options_.parallel + options_.queue) {
      a = Admission::QueueFull;
    } else {
      gen = std::make_shared<Generation>(std::move(prompt), std::move(params));
      queue_.push_back(gen);
    }
  }
  if (admission) *admission = a;
  if (gen) {
    ++accepted_;
    cv_.notify_all();
  } else {
    ++refused_;
  }
  return gen;
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  s.slots_total = options_.parallel;
  s.queue_capacity = options_.queue;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    s.queued = static_cast<int>(queue_.size());
    s.slots_busy = busy_.load();
  }
  s.accepted = accepted_.load();
  s.refused = refused_.load();
  s.completed = completed_.load();
  s.cancelled = cancelled_.load();
  s.failed = failed_.load();
  s.prompt_tokens = prompt_tokens_.load();
  s.completion_tokens = completion_tokens_.load();
  s.steps = steps_.load();
  s.max_batch = max_batch_.load();
  return s;
}

std::unique_ptr<Scheduler::Slot> Scheduler::make_slot(std::shared_ptr<Generation> gen) {
  auto s = std::make_unique<Slot>(model_.tokenizer());
  const GenerationParams& p = gen->params();
  const int capacity = static_cast<int>(gen->prompt().size()) + p.max_tokens;
  s->capacity = capacity;
  if (options_.backend) {
    if (free_backend_slots_.empty()) throw Error(ErrorKind::Internal, "scheduler: no free backend slot");
    s->backend_slot = free_backend_slots_.back();
    free_backend_slots_.pop_back();
    s->free_list = &free_backend_slots_;
  } else {
    s->cache = model_.make_cache(capacity);
  }
  model::SamplingOptions so;
  so.temperature = p.sampling.top_p <= 0 ? 0.0f : p.sampling.temperature;  // top_p 0 keeps only the top token
  so.top_p = p.sampling.top_p <= 0 ? 1.0f : p.sampling.top_p;
  so.top_k = p.sampling.top_k;
  so.repetition_penalty = p.sampling.repetition_penalty;
  so.repetition_window = options_.context;  // the whole sequence, as vLLM and Transformers do
  so.seed = p.sampling.seed ? *p.sampling.seed : seed_base_ + 0x9e3779b97f4a7c15ULL * ++seed_counter_;
  s->sampler = std::make_unique<model::Sampler>(so);
  s->history.reserve(static_cast<size_t>(capacity));
  s->history = gen->prompt();
  s->logits.resize(static_cast<size_t>(model_.vocab_size()));
  s->stop = StopMatcher(p.stop);
  s->admitted = Clock::now();
  s->gen = std::move(gen);
  return s;
}

void Scheduler::finish_unstarted(Generation& gen, FinishReason reason, const std::string& error) {
  GenerationResult r;
  r.reason = reason;
  r.prompt_tokens = static_cast<int>(gen.prompt().size());
  r.error = error;
  r.total_ms = ms_between(gen.submitted_, Clock::now());
  r.queue_ms = r.total_ms;
  (reason == FinishReason::Error ? failed_ : cancelled_)++;
  gen.finish(std::move(r));
}

void Scheduler::finish(Slot& s, FinishReason reason, std::string error) {
  const auto now = Clock::now();
  GenerationResult r;
  r.reason = reason;
  r.prompt_tokens = static_cast<int>(s.gen->prompt().size());
  r.completion_tokens = s.generated;
  r.error = std::move(error);
  r.queue_ms = ms_between(s.gen->submitted_, s.admitted);
  r.first_token_ms = s.generated > 0 ? ms_between(s.gen->submitted_, s.first_token) : 0.0;
  r.total_ms = ms_between(s.gen->submitted_, now);
  switch (reason) {
    case FinishReason::Stop:
    case FinishReason::Length: ++completed_; break;
    case FinishReason::Cancelled: ++cancelled_; break;
    case FinishReason::Error: ++failed_; break;
  }
  {
    // The slot is free from now on, for admission and for stats(), before the client hears.
    std::lock_guard<std::mutex> lock(mutex_);
    busy_.store(busy_.load() - 1);
  }
  s.gen->finish(std::move(r));
  s.done = true;
}

void Scheduler::run() {
  std::vector<std::unique_ptr<Slot>> slots;
  for (;;) {
    std::vector<std::shared_ptr<Generation>> admitted, dropped;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (slots.empty()) cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) break;
      for (auto it = queue_.begin(); it != queue_.end();) {
        if ((*it)->cancelled()) {
          dropped.push_back(std::move(*it));
          it = queue_.erase(it);
        } else {
          ++it;
        }
      }
      while (static_cast<int>(slots.size() + admitted.size()) < options_.parallel && !queue_.empty()) {
        admitted.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      busy_.store(static_cast<int>(slots.size() + admitted.size()));
    }
    for (auto& g : dropped) finish_unstarted(*g, FinishReason::Cancelled, {});
    for (auto& g : admitted) {
      try {
        slots.push_back(make_slot(g));
      } catch (const std::exception& e) {  // e.g. no memory for the KV cache
        {
          std::lock_guard<std::mutex> lock(mutex_);
          busy_.store(busy_.load() - 1);
        }
        finish_unstarted(*g, FinishReason::Error, e.what());
      }
    }
    if (!slots.empty()) step(slots);
    std::erase_if(slots, [](const std::unique_ptr<Slot>& s) { return s->done; });
  }
  for (auto& s : slots) finish(*s, FinishReason::Cancelled, "the server is shutting down");
  std::deque<std::shared_ptr<Generation>> rest;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    rest.swap(queue_);
    busy_.store(0);
  }
  for (auto& g : rest) finish_unstarted(*g, FinishReason::Cancelled, "the server is shutting down");
}

void Scheduler::step(std::vector<std::unique_ptr<Slot>>& slots) {
  for (auto& s : slots)
    if (s->gen->cancelled()) finish(*s, FinishReason::Cancelled);
  std::erase_if(slots, [](const std::unique_ptr<Slot>& s) { return s->done; });
  if (slots.empty()) return;

  // One entry per slot: its next prompt chunk (within the step's prefill budget) or its last
  // sampled token.
  std::vector<model::BatchEntry> entries;
  std::vector<BackendStep> steps;
  std::vector<Slot*> batch;
  entries.reserve(slots.size());
  batch.reserve(slots.size());
  int budget = options_.prefill_chunk;
  for (auto& sp : slots) {
    Slot& s = *sp;
    const auto& prompt = s.gen->prompt();
    const int plen = static_cast<int>(prompt.size());
    s.chunk = 0;
    model::BatchEntry e;
    e.cache = &s.cache;
    if (s.prompt_done < plen) {
      if (budget <= 0) continue;  // waits for a later step
      s.chunk = std::min(plen - s.prompt_done, budget);
      budget -= s.chunk;
      e.tokens = std::span<const int32_t>(prompt).subspan(static_cast<size_t>(s.prompt_done), static_cast<size_t>(s.chunk));
      e.logits = s.prompt_done + s.chunk == plen ? s.logits.data() : nullptr;
    } else {
      e.tokens = std::span<const int32_t>(&s.next, 1);
      e.logits = s.logits.data();
    }
    entries.push_back(e);
    if (options_.backend) steps.push_back({s.backend_slot, s.position, e.tokens, e.logits});
    batch.push_back(&s);
  }
  try {
    if (options_.backend) {
      options_.backend->forward(steps);
      for (size_t i = 0; i < batch.size(); ++i) batch[i]->position += static_cast<int>(steps[i].tokens.size());
    } else {
      model_.forward_batch(entries);
    }
  } catch (const std::exception& e) {
    for (Slot* s : batch) finish(*s, FinishReason::Error, e.what());
    return;
  }
  ++steps_;
  if (static_cast<int>(batch.size()) > max_batch_.load()) max_batch_.store(static_cast<int>(batch.size()));

  std::vector<Slot*> sampling;
  bool any_random = false;
  for (size_t i = 0; i < batch.size(); ++i) {
    Slot& s = *batch[i];
    if (s.chunk > 0) {
      s.prompt_done += s.chunk;
      prompt_tokens_ += static_cast<uint64_t>(s.chunk);
    }
    if (entries[i].logits) {
      sampling.push_back(&s);
      any_random = any_random || s.sampler->options().temperature > 0;
    }
  }
  // Sampling a 49k vocabulary with top-p sorts it: worth spreading over the pool when several
  // slots sample at once. Every slot has its own sampler and buffers.
  std::vector<int32_t> tokens(sampling.size(), -1);
  std::vector<std::string> errors(sampling.size());
  auto sample_range = [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i) {
      try {
        tokens[static_cast<size_t>(i)] = sample_token(*sampling[static_cast<size_t>(i)]);
      } catch (const std::exception& e) {  // must not escape a pool task
        errors[static_cast<size_t>(i)] = e.what();
      }
    }
  };
  if (any_random && sampling.size() > 1) {
    model_.pool().parallel_for(static_cast<int64_t>(sampling.size()), sample_range);
  } else {
    sample_range(0, static_cast<int64_t>(sampling.size()), 0);
  }
  for (size_t i = 0; i < sampling.size(); ++i) {
    if (tokens[i] < 0) {
      finish(*sampling[i], FinishReason::Error, errors[i].empty() ? "sampling failed" : errors[i]);
    } else {
      accept_token(*sampling[i], tokens[i]);
    }
  }
}

int32_t Scheduler::sample_token(Slot& s) {
  const SamplingParams& p = s.gen->params().sampling;
  const float* src = s.logits.data();
  if (!p.logit_bias.empty() || p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
    // OpenAI's definition: logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty,
    // counting the tokens of the completion so far; then the bias is added.
    s.work.assign(s.logits.begin(), s.logits.end());
    for (const auto& [id, n] : s.counts)
      s.work[static_cast<size_t>(id)] -= static_cast<float>(n) * p.frequency_penalty + p.presence_penalty;
    for (const auto& [id, bias] : p.logit_bias) s.work[static_cast<size_t>(id)] += bias;
    src = s.work.data();
  }
  return s.sampler->sample(std::span<const float>(src, s.logits.size()), s.history);
}

void Scheduler::accept_token(Slot& s, int32_t token) {
  const GenerationParams& p = s.gen->params();
  const model::Tokenizer& tok = model_.tokenizer();
  ++s.generated;
  s.gen->generated_.store(s.generated);
  ++completion_tokens_;
  if (s.generated == 1) s.first_token = Clock::now();
  s.history.push_back(token);
  ++s.counts[token];

  auto drain = [&] {  // the text held back by the UTF-8 streamer and the stop matcher
    std::string t = s.stop.push(s.streamer.flush());
    if (!s.stop.stopped()) t += s.stop.flush();
    return t;
  };
  if (!p.ignore_eos && tok.is_stop(token)) {
    s.gen->publish(drain());
    finish(s, FinishReason::Stop);
    return;
  }
  std::string text = s.stop.push(s.streamer.push(token));
  if (s.stop.stopped()) {
    s.gen->publish(text);
    finish(s, FinishReason::Stop);
    return;
  }
  if (s.generated >= p.max_tokens || (options_.backend ? s.position >= s.capacity : s.cache.size() >= s.cache.capacity())) {
    text += drain();
    s.gen->publish(text);
    finish(s, s.stop.stopped() ? FinishReason::Stop : FinishReason::Length);
    return;
  }
  s.gen->publish(text);
  s.next = token;
}

}  // namespace glq::server
