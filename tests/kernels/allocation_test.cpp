// qmatmul allocates nothing once its per-thread scratch has grown to the shape (the hot path of
// decoding). Counts every global operator new of the test executable while the flag is set.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <vector>

#include "glq/kernels/cpu.hpp"
#include "kernels/kernel_test_util.hpp"

namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_allocations{0};
}  // namespace

void* operator new(std::size_t n) {
  if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace glq::cpu {
namespace {

TEST(Qmatmul, AllocatesNothingAfterWarmUp) {
  ThreadPool pool(2);
  for (int bits : {2, 3, 4}) {
    for (int batch : {1, 5, 17, 33}) {  // 17, 33: the float-tile paths at 3 and 4 bits
      const auto q = test::random_qmatrix(1008, 576, bits, 31 + bits);
      const auto x = test::random_input(static_cast<size_t>(batch) * q.cols, 32);
      std::vector<float> y(static_cast<size_t>(batch) * q.rows);
      for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
        if (!isa_supported(isa)) continue;
        qmatmul(q, x.data(), y.data(), batch, pool, isa);  // grows the scratch
        g_allocations = 0;
        g_counting = true;
        qmatmul(q, x.data(), y.data(), batch, pool, isa);
        g_counting = false;
        EXPECT_EQ(g_allocations.load(), 0) << isa_name(isa) << " bits " << bits << " batch " << batch;
      }
    }
  }
}

TEST(Hmatmul, AllocatesNothing) {
  ThreadPool pool(2);
  const int rows = 1000 + 8, cols = 576;
  const std::vector<uint16_t> w(static_cast<size_t>(rows) * cols, 0x3C00);
  for (int batch : {1, 17}) {
    const auto x = test::random_input(static_cast<size_t>(batch) * cols, 33);
    std::vector<float> y(static_cast<size_t>(batch) * rows);
    for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
      if (!isa_supported(isa)) continue;
      hmatmul(w.data(), Half::F16, rows, cols, x.data(), y.data(), batch, pool, isa);
      g_allocations = 0;
      g_counting = true;
      hmatmul(w.data(), Half::F16, rows, cols, x.data(), y.data(), batch, pool, isa);
      g_counting = false;
      EXPECT_EQ(g_allocations.load(), 0) << isa_name(isa) << " batch " << batch;
    }
  }
}

}  // namespace
}  // namespace glq::cpu
