// Continuous batching over one Model.
//
//   submit() ──► queue (bounded) ──► slots (at most `parallel`) ──► Model::forward_batch ──► sample
//                                                                      ▲ every step          │
//                                            new requests join between steps ◄───────────────┘
//
// One scheduler thread owns the slots. Each step it evaluates, in one forward_batch() call,
// every sequence in flight, each with its own KVCache:
//   - a slot still reading its prompt contributes its next prompt chunk (prefill); the chunks of
//     one step hold at most `prefill_chunk` prompt tokens together, so that a long prompt does
//     not stall the decoding of the others for long;
//   - a slot that is generating contributes its last sampled token (decode).
// Then every slot whose logits came out samples its next token (penalties, logit bias, then
// glq::model::Sampler) and its text goes to the waiting HTTP handler through its Generation.
// A slot is freed when its sequence ends (a stop token, a stop string, max_tokens) or when its
// Generation is cancelled (the client went away): the scheduler drops it before the next step.
//
// Memory: a slot's KVCache holds prompt + max_tokens positions, so the caches of all slots
// together never exceed parallel × context positions.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "glq/model/model.hpp"
#include "glq/server/api.hpp"

namespace glq::server {

// One sequence's part of a BatchBackend::forward() step.
struct BackendStep {
  int slot = 0;                      // the backend's cache slot of this sequence
  int pos = 0;                       // tokens already in that slot (0: a new sequence)
  std::span<const int32_t> tokens;   // new tokens (at least one)
  float* logits = nullptr;           // (vocab): logits of the last new token, or null
};

// Another engine for the scheduler's steps, with a KV cache of its own for `slots()` sequences
// (glq serve --device cuda: the GPU engine, glq/server/cuda_backend.hpp). Each admitted request
// gets a free slot; every step is one forward() over the sequences in flight, each entry with a
// distinct slot. Called from the scheduler thread only.
class BatchBackend {
 public:
  virtual ~BatchBackend() = default;
  virtual int slots() const = 0;    // sequences it holds at once (>= SchedulerOptions::parallel)
  virtual int context() const = 0;  // tokens per slot (>= SchedulerOptions::context)
  virtual void forward(std::span<const BackendStep> steps) = 0;
};

struct SchedulerOptions {
  int parallel = 4;           // sequences stepped together (slots)
  int queue = 32;             // requests waiting for a slot; beyond that submit() refuses
  int context = 2048;         // prompt + completion tokens of one sequence (<= model max_context)
  int prefill_chunk = 256;    // prompt tokens evaluated per step, all slots together
  // The engine of the steps: null runs Model::forward_batch on the CPU with a KVCache per
  // sequence; else this backend (which must outlive the scheduler).
  BatchBackend* backend = nullptr;
};

enum class FinishReason {
  Stop,       // a stop token or stop string
  Length,     // max_tokens reached
  Cancelled,  // cancel() (client gone) or the scheduler stopped
  Error,      // the engine threw; GenerationResult::error says what
};
// "stop", "length", "cancelled", "error".
const char* finish_reason_name(FinishReason reason);

struct GenerationResult {
  FinishReason reason = FinishReason::Cancelled;
  int prompt_tokens = 0;
  int completion_tokens = 0;  // tokens sampled (a final stop token included)
  std::string error;          // FinishReason::Error only
  double queue_ms = 0;        // submit → admitted to a slot
  double first_token_ms = 0;  // submit → first token sampled (0 if none)
  double total_ms = 0;        // submit → finished
};

// One request, shared by the HTTP handler that waits for it and the scheduler thread that
// produces it.
class Generation {
 public:
  Generation(std::vector<int32_t> prompt, GenerationParams params);

  // Waits up to `timeout` for news and appends the text produced since the last call to `text`.
  // Returns true once the generation has finished (result() is then final; no text follows).
  bool wait(std::chrono::milliseconds timeout, std::string& text);
  bool finished() const;
  // The client went away: the scheduler frees the slot (or queue place) before its next step.
  void cancel() { cancel_.store(true); }
  bool cancelled() const { return cancel_.load(); }
  GenerationResult result() const;  // final once wait() returned true
  int completion_tokens_so_far() const { return generated_.load(); }

  const std::vector<int32_t>& prompt() const { return prompt_; }
  const GenerationParams& params() const { return params_; }

 private:
  friend class Scheduler;
  void publish(const std::string& text);  // scheduler thread
  void finish(GenerationResult result);   // scheduler thread

  const std::vector<int32_t> prompt_;
  const GenerationParams params_;
  const std::chrono::steady_clock::time_point submitted_;
  std::atomic<bool> cancel_{false};
  std::atomic<int> generated_{0};
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::string pending_;  // produced, not yet taken by wait()
  bool done_ = false;
  GenerationResult result_;
};

enum class Admission {
  Accepted,
  QueueFull,     // parallel slots busy and `queue` requests waiting
  TooLong,       // prompt + max_tokens beyond the context, or an empty prompt
  ShuttingDown,  // stop() was called
};

struct SchedulerStats {
  int slots_total = 0;
  int slots_busy = 0;
  int queued = 0;
  int queue_capacity = 0;
  uint64_t accepted = 0;           // submit() calls admitted to the queue
  uint64_t refused = 0;            // submit() calls refused (queue full, shutting down)
  uint64_t completed = 0;          // finished with stop or length
  uint64_t cancelled = 0;
  uint64_t failed = 0;             // finished with an engine error
  uint64_t prompt_tokens = 0;      // prompt tokens evaluated
  uint64_t completion_tokens = 0;  // tokens sampled
  uint64_t steps = 0;              // forward_batch calls
  int max_batch = 0;               // most sequences in one step so far
};

class Scheduler {
 public:
  // The model (and its tokenizer, which must be loaded) must outlive the scheduler. Throws
  // InvalidArgument for options out of range.
  Scheduler(const model::Model& model, SchedulerOptions options);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request. On refusal returns nullptr and says why in *admission (never throws for
  // a full queue). prompt: token ids in the vocabulary, 1 <= size and size + max_tokens <= context.
  std::shared_ptr<Generation> submit(std::vector<int32_t> prompt, GenerationParams params,
                                     Admission* admission);
  // Finishes everything queued or in flight as Cancelled and joins the thread. Idempotent.
  void stop();

  SchedulerStats stats() const;
  const SchedulerOptions& options() const { return options_; }
  const model::Model& model() const { return model_; }

 private:
  struct Slot;
  void run();
  void step(std::vector<std::unique_ptr<Slot>>& slots);
  std::unique_ptr<Slot> make_slot(std::shared_ptr<Generation> gen);
  int32_t sample_token(Slot& slot);
  void accept_token(Slot& slot, int32_t token);
  void finish(Slot& slot, FinishReason reason, std::string error = {});
  void finish_unstarted(Generation& gen, FinishReason reason, const std::string& error);

  const model::Model& model_;
  const SchedulerOptions options_;

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Generation>> queue_;
  bool stopping_ = false;
  std::thread thread_;

  // Counters (the scheduler thread writes; stats() reads).
  std::atomic<int> busy_{0};
  std::atomic<uint64_t> accepted_{0}, refused_{0}, completed_{0}, cancelled_{0}, failed_{0};
  std::atomic<uint64_t> prompt_tokens_{0}, completion_tokens_{0}, steps_{0};
  std::atomic<int> max_batch_{0};
  std::atomic<uint64_t> seed_counter_{0};
  const uint64_t seed_base_;
  std::vector<int> free_backend_slots_;  // scheduler thread only (with options_.backend)
};

}  // namespace glq::server
