// Fuzzing the GGUF and safetensors loaders: valid tiny files made here are truncated and
// mutated (random bytes, lying sizes and counts, edited JSON headers) and loaded end to end,
// for a bounded time (GLQ_FUZZ_SECONDS, default 2 s per format). Every outcome must be a
// loaded model or a glq::Error: any other exception fails the test, and a crash fails it too.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>

#include "glq/error.hpp"
#include "glq/model/gguf.hpp"
#include "glq/model/loader.hpp"
#include "glq/model/safetensors.hpp"
#include "tiny_gguf.hpp"

namespace glq::model {
namespace {

double fuzz_seconds() {
  const char* s = std::getenv("GLQ_FUZZ_SECONDS");
  return s ? std::atof(s) : 2.0;
}

struct FuzzStats {
  int runs = 0, loaded = 0, errors = 0;
};

// Applies one to three random mutations. `header_end` bounds the region most mutations hit.
std::vector<uint8_t> mutate(const std::vector<uint8_t>& good, size_t header_end, std::mt19937_64& rng) {
  std::vector<uint8_t> b = good;
  const int n = 1 + static_cast<int>(rng() % 3);
  for (int m = 0; m < n; ++m) {
    const size_t region = (rng() % 10 < 8) ? std::min(header_end, b.size()) : b.size();
    if (region == 0) break;
    switch (rng() % 5) {
      case 0:  // truncate
        b.resize(rng() % b.size());
        break;
      case 1: {  // random bytes
        const int k = 1 + static_cast<int>(rng() % 8);
        for (int i = 0; i < k; ++i) b[rng() % region] = static_cast<uint8_t>(rng());
        break;
      }
      case 2: {  // a lying 64-bit size or count
        static const uint64_t kLies[] = {0, 1, 0xFFFFFFFFFFFFFFFFull, 0x7FFFFFFFFFFFFFFFull, uint64_t{1} << 32,
                                         uint64_t{1} << 40, 0x100000001ull, 31, 33};
        if (region < 8) break;
        const size_t at = rng() % (region - 7);
        const uint64_t v = kLies[rng() % std::size(kLies)];
        std::memcpy(b.data() + at, &v, 8);
        break;
      }
      case 3: {  // a lying 32-bit type or rank
        if (region < 4) break;
        const size_t at = rng() % (region - 3);
        const uint32_t v = static_cast<uint32_t>(rng() % 40);
        std::memcpy(b.data() + at, &v, 4);
        break;
      }
      case 4: {  // delete or duplicate a span
        const size_t at = rng() % region, len = 1 + rng() % 16;
        if (rng() % 2) b.erase(b.begin() + static_cast<ptrdiff_t>(at), b.begin() + static_cast<ptrdiff_t>(std::min(b.size(), at + len)));
        else b.insert(b.begin() + static_cast<ptrdiff_t>(at), b.begin() + static_cast<ptrdiff_t>(at),
                      b.begin() + static_cast<ptrdiff_t>(std::min(b.size(), at + len)));
        break;
      }
    }
    if (b.empty()) break;
  }
  return b;
}

template <typename Fn>
void run_one(Fn fn, FuzzStats& st, const std::vector<uint8_t>& bytes, uint64_t seed) {
  ++st.runs;
  try {
    fn();
    ++st.loaded;
  } catch (const Error&) {
    ++st.errors;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "seed " << seed << " (" << bytes.size() << " bytes): non-glq exception: " << e.what();
  }
}

TEST(Fuzz, GgufLoaderNeverCrashes) {
  const ModelConfig c = test::tiny_config();
  const auto good = test::tiny_gguf(c, test::random_weights(c, 31));
  // Bytes before the tensor data (metadata and tensor directory) take most mutations.
  size_t header_end = 0;
  {
    test::TempDir d;
    test::write_bytes(d.file("g.gguf"), good);
    GgufFile f(d.file("g.gguf"));
    const uint8_t* lowest = nullptr;
    const uint8_t* highest = nullptr;
    for (const auto& n : f.names()) {
      const auto& t = f.get(n);
      if (!lowest || t.data.data() < lowest) lowest = t.data.data();
      if (!highest || t.data.data() + t.data.size() > highest) highest = t.data.data() + t.data.size();
    }
    header_end = good.size() - static_cast<size_t>(highest - lowest);
  }
  test::TempDir dir;
  const std::string path = dir.file("fuzz.gguf");
  FuzzStats st;
  std::mt19937_64 rng(0x6775);
  const auto t0 = std::chrono::steady_clock::now();
  const double budget = fuzz_seconds();
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < budget) {
    const uint64_t seed = rng();
    std::mt19937_64 r(seed);
    const auto bytes = mutate(good, header_end, r);
    test::write_bytes(path, bytes);
    run_one([&] {
      auto m = load_model(path);
      const auto ids = m->tokenizer().encode("hello <|im_end|> wörld 42", false, true);
      (void)m->tokenizer().decode(ids);
    }, st, bytes, seed);
  }
  std::fprintf(stderr, "gguf fuzz: %d runs, %d loaded, %d clear errors\n", st.runs, st.loaded, st.errors);
  EXPECT_GT(st.runs, 20);
  EXPECT_GT(st.errors, 0);
}

TEST(Fuzz, SafetensorsLoaderNeverCrashes) {
  const ModelConfig c = test::tiny_config();
  const auto bag = test::random_weights(c, 32);
  test::TempDir src;
  test::write_checkpoint(src.path.string(), c, bag);
  const auto good = test::read_bytes(src.file("model.safetensors"));
  uint64_t header_len = 0;
  std::memcpy(&header_len, good.data(), 8);
  const std::string header(good.begin() + 8, good.begin() + 8 + static_cast<ptrdiff_t>(header_len));
  test::TempDir dir;
  std::ofstream(dir.file("config.json")) << test::config_json(c);
  const std::string path = dir.file("model.safetensors");
  FuzzStats st;
  std::mt19937_64 rng(0x5afe);
  LoadOptions o;
  o.load_tokenizer = false;
  const auto t0 = std::chrono::steady_clock::now();
  const double budget = fuzz_seconds();
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < budget) {
    const uint64_t seed = rng();
    std::mt19937_64 r(seed);
    std::vector<uint8_t> bytes;
    if (r() % 2) {
      bytes = mutate(good, 8 + header_len, r);
    } else {
      // Edit the JSON text: change digits (offsets, shapes), drop or swap characters; keep
      // the length field honest half of the time.
      std::string h = header;
      const int k = 1 + static_cast<int>(r() % 4);
      for (int i = 0; i < k; ++i) {
        const size_t at = r() % h.size();
        switch (r() % 4) {
          case 0: if (std::isdigit(static_cast<unsigned char>(h[at]))) h[at] = static_cast<char>('0' + r() % 10); break;
          case 1: h.erase(at, 1 + r() % 3); break;
          case 2: h.insert(at, 1, "0123456789[]{},:\"-"[r() % 18]); break;
          case 3: h[at] = static_cast<char>(r()); break;
        }
        if (h.empty()) h = "{";
      }
      uint64_t n = h.size();
      if (r() % 2) n = n + (r() % 64) - 32;
      bytes.resize(8);
      std::memcpy(bytes.data(), &n, 8);
      bytes.insert(bytes.end(), h.begin(), h.end());
      bytes.insert(bytes.end(), good.begin() + 8 + static_cast<ptrdiff_t>(header_len), good.end());
    }
    test::write_bytes(path, bytes);
    run_one([&] { (void)load_model(dir.path.string(), o); }, st, bytes, seed);
  }
  std::fprintf(stderr, "safetensors fuzz: %d runs, %d loaded, %d clear errors\n", st.runs, st.loaded, st.errors);
  EXPECT_GT(st.runs, 20);
  EXPECT_GT(st.errors, 0);
}

}  // namespace
}  // namespace glq::model
