// The scheduler without HTTP: chunked prefill against the engine alone, admission, cancelling
// queued and running requests, many sequences of different lengths stepped together.
#include <gtest/gtest.h>

#include "glq/error.hpp"
#include "glq/server/scheduler.hpp"
#include "server_test_util.hpp"

namespace glq::server::test {
namespace {

using namespace std::chrono_literals;

TEST(Scheduler, ChunkedPrefillEqualsTheEngineAlone) {
  GLQ_REQUIRE_MODEL();
  SchedulerOptions o;
  o.parallel = 3;
  o.context = 256;
  o.prefill_chunk = 7;  // the 20-odd prompt tokens arrive over several steps
  Scheduler s(*shared_model(), o);
  const auto prompt = tokens_of("In 1492, the explorer sailed across the ocean and reached a land that was new to the people of Europe, and");
  ASSERT_GT(prompt.size(), 14u);
  Admission a;
  auto g = s.submit(prompt, greedy(13), &a);
  ASSERT_EQ(a, Admission::Accepted);
  ASSERT_TRUE(g);
  const std::string text = drain(*g);
  const Reference ref = greedy_reference(prompt, 13);
  EXPECT_EQ(text, ref.text);
  const GenerationResult r = g->result();
  EXPECT_EQ(r.completion_tokens, ref.completion_tokens);
  EXPECT_EQ(finish_reason_name(r.reason), ref.finish_reason);
  EXPECT_EQ(r.prompt_tokens, static_cast<int>(prompt.size()));
  EXPECT_GE(s.stats().steps, (prompt.size() + 6) / 7 + 12 - 1);
}

TEST(Scheduler, Admission) {
  GLQ_REQUIRE_MODEL();
  SchedulerOptions o;
  o.parallel = 1;
  o.queue = 0;
  o.context = 64;
  Scheduler s(*shared_model(), o);
  Admission a;
  EXPECT_FALSE(s.submit(tokens_of("hello"), greedy(64), &a));
  EXPECT_EQ(a, Admission::TooLong);
  EXPECT_FALSE(s.submit({}, greedy(3), &a));
  EXPECT_EQ(a, Admission::TooLong);
  EXPECT_THROW(s.submit({shared_model()->vocab_size()}, greedy(3), &a), glq::Error);
  auto running = s.submit(tokens_of("hello"), greedy(50, true), &a);
  ASSERT_EQ(a, Admission::Accepted);
  EXPECT_FALSE(s.submit(tokens_of("again"), greedy(3), &a));
  EXPECT_EQ(a, Admission::QueueFull);
  running->cancel();
  drain(*running);
  EXPECT_EQ(running->result().reason, FinishReason::Cancelled);
  // The slot is free again.
  auto next = s.submit(tokens_of("again"), greedy(2, true), &a);
  ASSERT_EQ(a, Admission::Accepted);
  drain(*next);
  EXPECT_EQ(next->result().reason, FinishReason::Length);
  s.stop();
  EXPECT_FALSE(s.submit(tokens_of("late"), greedy(2), &a));
  EXPECT_EQ(a, Admission::ShuttingDown);
}

TEST(Scheduler, CancelQueuedAndRunning) {
  GLQ_REQUIRE_MODEL();
  SchedulerOptions o;
  o.parallel = 1;
  o.queue = 2;
  o.context = 512;
  Scheduler s(*shared_model(), o);
  Admission a;
  auto running = s.submit(tokens_of("Once upon a time"), greedy(400, true), &a);
  auto queued = s.submit(tokens_of("Far away"), greedy(400, true), &a);
  ASSERT_TRUE(running && queued);
  queued->cancel();
  drain(*queued);
  EXPECT_EQ(queued->result().reason, FinishReason::Cancelled);
  EXPECT_EQ(queued->result().completion_tokens, 0);
  EXPECT_FALSE(running->finished());
  running->cancel();
  drain(*running);
  EXPECT_EQ(running->result().reason, FinishReason::Cancelled);
  EXPECT_LT(running->result().completion_tokens, 400);
  const SchedulerStats st = s.stats();
  EXPECT_EQ(st.cancelled, 2u);
  EXPECT_EQ(st.slots_busy, 0);
  EXPECT_EQ(st.queued, 0);
}

TEST(Scheduler, SequencesOfDifferentLengthsStepTogether) {
  GLQ_REQUIRE_MODEL();
  SchedulerOptions o;
  o.parallel = 3;
  o.queue = 8;
  o.context = 128;
  Scheduler s(*shared_model(), o);
  const int lengths[] = {3, 11, 5, 1, 7};
  std::vector<std::shared_ptr<Generation>> gens;
  for (int i = 0; i < 5; ++i) {
    Admission a;
    GenerationParams p = greedy(lengths[i], true);
    p.sampling.temperature = 0.9f;
    p.sampling.seed = static_cast<uint64_t>(i);
    p.sampling.presence_penalty = 0.5f;
    p.sampling.frequency_penalty = 0.25f;
    p.sampling.logit_bias = {{11, -100.0f}};
    gens.push_back(s.submit(tokens_of("Sentence number " + std::to_string(i) + ":"), p, &a));
    ASSERT_EQ(a, Admission::Accepted);
  }
  for (int i = 0; i < 5; ++i) {
    drain(*gens[static_cast<size_t>(i)]);
    const GenerationResult r = gens[static_cast<size_t>(i)]->result();
    EXPECT_EQ(r.reason, FinishReason::Length) << i;
    EXPECT_EQ(r.completion_tokens, lengths[i]) << i;
  }
  const SchedulerStats st = s.stats();
  EXPECT_EQ(st.completed, 5u);
  EXPECT_EQ(st.completion_tokens, 3u + 11 + 5 + 1 + 7);
  EXPECT_EQ(st.max_batch, 3);
  EXPECT_LT(st.steps, 27u) << "sequences shared steps";
}

TEST(Scheduler, RefusesBadOptions) {
  GLQ_REQUIRE_MODEL();
  SchedulerOptions o;
  o.parallel = 0;
  EXPECT_THROW({ Scheduler bad(*shared_model(), o); }, glq::Error);
  o.parallel = 2;
  o.context = shared_model()->config().max_context + 1;
  EXPECT_THROW({ Scheduler bad(*shared_model(), o); }, glq::Error);
  o.context = 128;
  o.prefill_chunk = 0;
  EXPECT_THROW({ Scheduler bad(*shared_model(), o); }, glq::Error);
}

}  // namespace
}  // namespace glq::server::test
