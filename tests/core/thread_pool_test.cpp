#include <gtest/gtest.h>

#include <atomic>
#include <vector>

#include "glq/util/thread_pool.hpp"

TEST(ThreadPool, CoversEveryIndexOnceWithAlignedChunks) {
  glq::ThreadPool pool(3);
  for (int64_t n : {1, 7, 19, 111, 989, 4096}) {
    for (int64_t grain : {1, 8, 64}) {
      std::vector<std::atomic<int>> hits(n);
      pool.parallel_for(n, [&](int64_t b, int64_t e, int) {
        if (e < n) { EXPECT_EQ(e % grain, 0) << "n=" << n << " grain=" << grain; }
        for (int64_t i = b; i < e; ++i) hits[i]++;
      }, grain);
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " i=" << i;
    }
  }
}

TEST(ThreadPool, NestedCallsRunInline) {
  glq::ThreadPool pool(2);
  std::atomic<int64_t> total{0};
  pool.parallel_for(10, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i)
      pool.parallel_for(5, [&](int64_t b2, int64_t e2, int) { total += e2 - b2; });
  });
  EXPECT_EQ(total.load(), 50);
}
