#include "glq/util/thread_pool.hpp"

#include <algorithm>
#include <cstdlib>

namespace glq {

namespace {

thread_local bool t_inside_pool_task = false;

// Chunk c of `parts` over [0, n), with boundaries rounded to multiples of grain.
void chunk_bounds(int64_t n, int64_t grain, int parts, int c, int64_t* begin, int64_t* end) {
  const int64_t blocks = (n + grain - 1) / grain;
  const int64_t b0 = blocks * c / parts;
  const int64_t b1 = blocks * (c + 1) / parts;
  *begin = std::min(n, b0 * grain);
  *end = std::min(n, b1 * grain);
}

}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int64_t, int64_t, int)>* task;
    int64_t n, grain;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      start_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      task = task_;
      n = task_n_;
      grain = task_grain_;
    }
    int64_t begin, end;
    chunk_bounds(n, grain, size(), index, &begin, &end);
    if (begin < end) {
      t_inside_pool_task = true;
      (*task)(begin, end, index);
      t_inside_pool_task = false;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                              int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  std::unique_lock<std::mutex> lock(mutex_);
  // Run inline when there is nothing to split, when called from a task, or when another
  // thread is using the pool right now.
  if (workers_.empty() || n <= grain || t_inside_pool_task || busy_) {
    lock.unlock();
    fn(0, n, 0);
    return;
  }
  busy_ = true;
  task_ = &fn;
  task_n_ = n;
  task_grain_ = grain;
  pending_ = static_cast<int>(workers_.size());
  ++generation_;
  lock.unlock();
  start_cv_.notify_all();

  int64_t begin, end;
  chunk_bounds(n, grain, size(), 0, &begin, &end);
  if (begin < end) {
    t_inside_pool_task = true;
    fn(begin, end, 0);
    t_inside_pool_task = false;
  }
  lock.lock();
  done_cv_.wait(lock, [&] { return pending_ == 0; });
  task_ = nullptr;
  busy_ = false;
}

ThreadPool& ThreadPool::global() {
  static ThreadPool pool([] {
    const char* env = std::getenv("GLQ_THREADS");
    return env ? std::atoi(env) : 0;
  }());
  return pool;
}

}  // namespace glq
