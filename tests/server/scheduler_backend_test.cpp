// The scheduler stepping its sequences through a BatchBackend (the path of glq serve --device
// cuda), here a backend over the CPU engine with one KVCache per slot that checks every step it
// is given: distinct slots in range, each slot's position equal to the tokens it holds (0 starts
// a new sequence). Chunked prefill through it equals the engine alone; sequences of different
// lengths reuse the slots; a cancelled request frees its slot; bad options are refused.
#include <gtest/gtest.h>

#include <set>

#include "glq/error.hpp"
#include "glq/server/scheduler.hpp"
#include "server_test_util.hpp"

namespace glq::server::test {
namespace {

using namespace std::chrono_literals;

class CheckingBackend : public BatchBackend {
 public:
  CheckingBackend(const model::Model& m, int slots, int context) : m_(m), context_(context) {
    for (int i = 0; i < slots; ++i) caches_.push_back(m.make_cache(context));
  }
  int slots() const override { return static_cast<int>(caches_.size()); }
  int context() const override { return context_; }
  void forward(std::span<const BackendStep> steps) override {
    std::vector<model::BatchEntry> entries;
    std::set<int> seen;
    for (const BackendStep& s : steps) {
      if (s.slot < 0 || s.slot >= slots()) ++violations;
      if (!seen.insert(s.slot).second) ++violations;
      model::KVCache& c = caches_[static_cast<size_t>(s.slot)];
      if (s.pos == 0) c.clear();
      if (c.size() != s.pos) ++violations;
      used.insert(s.slot);
      model::BatchEntry e;
      e.cache = &c;
      e.tokens = s.tokens;
      e.logits = s.logits;
      entries.push_back(e);
    }
    max_batch = std::max(max_batch, static_cast<int>(steps.size()));
    m_.forward_batch(entries);
  }
  int violations = 0;
  int max_batch = 0;
  std::set<int> used;

 private:
  const model::Model& m_;
  int context_;
  std::vector<model::KVCache> caches_;
};

TEST(SchedulerBackend, ChunkedPrefillEqualsTheEngineAlone) {
  GLQ_REQUIRE_MODEL();
  CheckingBackend b(*shared_model(), 3, 256);
  SchedulerOptions o;
  o.parallel = 3;
  o.context = 256;
  o.prefill_chunk = 7;
  o.backend = &b;
  Scheduler s(*shared_model(), o);
  const auto prompt = tokens_of("In 1492, the explorer sailed across the ocean and reached a land that was new to the people of Europe, and");
  Admission a;
  auto g = s.submit(prompt, greedy(13), &a);
  ASSERT_EQ(a, Admission::Accepted);
  const std::string text = drain(*g);
  const Reference ref = greedy_reference(prompt, 13);
  EXPECT_EQ(text, ref.text);
  EXPECT_EQ(g->result().completion_tokens, ref.completion_tokens);
  EXPECT_EQ(b.violations, 0);
}

TEST(SchedulerBackend, SequencesReuseSlotsAndCancelFreesOne) {
  GLQ_REQUIRE_MODEL();
  CheckingBackend b(*shared_model(), 2, 96);
  SchedulerOptions o;
  o.parallel = 2;
  o.queue = 8;
  o.context = 96;
  o.prefill_chunk = 5;
  o.backend = &b;
  Scheduler s(*shared_model(), o);
  const int lengths[] = {3, 6, 2, 1, 4};
  std::vector<std::shared_ptr<Generation>> gens;
  for (int i = 0; i < 5; ++i) {
    Admission a;
    gens.push_back(s.submit(tokens_of("Sentence number " + std::to_string(i) + ":"), greedy(lengths[i], true), &a));
    ASSERT_EQ(a, Admission::Accepted);
  }
  for (int i = 0; i < 5; ++i) {
    drain(*gens[static_cast<size_t>(i)]);
    EXPECT_EQ(gens[static_cast<size_t>(i)]->result().completion_tokens, lengths[i]) << i;
    EXPECT_EQ(gens[static_cast<size_t>(i)]->result().reason, FinishReason::Length) << i;
  }
  EXPECT_EQ(b.violations, 0);
  EXPECT_EQ(b.used, (std::set<int>{0, 1}));
  EXPECT_EQ(b.max_batch, 2);
  EXPECT_EQ(s.stats().max_batch, 2);
  // Both slots busy with long requests; cancelling one lets a third run.
  Admission a;
  auto long1 = s.submit(tokens_of("one"), greedy(48, true), &a);
  auto long2 = s.submit(tokens_of("two"), greedy(48, true), &a);
  auto third = s.submit(tokens_of("three"), greedy(4, true), &a);
  ASSERT_EQ(a, Admission::Accepted);
  long1->cancel();
  drain(*third);
  EXPECT_EQ(third->result().completion_tokens, 4);
  long2->cancel();
  drain(*long1);
  drain(*long2);
  EXPECT_EQ(long1->result().reason, FinishReason::Cancelled);
  EXPECT_EQ(b.violations, 0);
}

TEST(SchedulerBackend, RefusesABackendTooSmall) {
  GLQ_REQUIRE_MODEL();
  CheckingBackend few(*shared_model(), 1, 128), short_ctx(*shared_model(), 4, 32);
  SchedulerOptions o;
  o.parallel = 2;
  o.context = 64;
  o.backend = &few;
  EXPECT_THROW(Scheduler(*shared_model(), o), glq::Error);
  o.backend = &short_ctx;
  EXPECT_THROW(Scheduler(*shared_model(), o), glq::Error);
}

}  // namespace
}  // namespace glq::server::test
