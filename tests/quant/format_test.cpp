// Checkpoint primitives: streamed safetensors round trips, crash-safe writes under a full disk,
// corrupt headers, half conversions, quantization_config and its version check.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/resource.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "glq/error.hpp"
#include "glq/format/half.hpp"
#include "glq/format/quantization_config.hpp"
#include "glq/format/quantized_tensors.hpp"
#include "glq/format/safetensors_io.hpp"
#include "quant/quant_test_util.hpp"

namespace glq::format {
namespace {

using quant_test::TempDir;
namespace fs = std::filesystem;

bool has_temp_files(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) return true;
  return false;
}

TEST(Safetensors, RoundTripOfAwkwardShapesAndDtypes) {
  TempDir d;
  std::mt19937 rng(1);
  std::vector<StTensorData> ts;
  const std::vector<std::pair<StDType, std::vector<int64_t>>> specs = {
      {StDType::U8, {19}}, {StDType::F32, {111, 3}}, {StDType::U16, {7, 13}}, {StDType::F16, {989}}, {StDType::I32, {0}}, {StDType::BF16, {5, 1, 3}}};
  for (size_t i = 0; i < specs.size(); ++i) {
    StTensorData t;
    t.spec = {std::string("t").append(std::to_string(i)), specs[i].first, specs[i].second};
    t.bytes.resize(t.spec.nbytes());
    for (auto& b : t.bytes) b = static_cast<uint8_t>(rng());
    ts.push_back(std::move(t));
  }
  write_safetensors_atomic(d.file("a.safetensors"), ts, {{"k", "v"}});
  EXPECT_FALSE(has_temp_files(d.path));
  SafetensorsReader r(d.file("a.safetensors"));
  EXPECT_EQ(r.metadata().at("k"), "v");
  ASSERT_EQ(r.tensors().size(), ts.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    EXPECT_EQ(r.tensors()[i].name, ts[i].spec.name) << "file order";
    const auto& v = r.get(ts[i].spec.name, ts[i].spec.dtype, ts[i].spec.shape);
    EXPECT_EQ(copy_bytes(v), ts[i].bytes) << ts[i].spec.name;
  }
  // The engine's reader accepts the file too (dtypes it knows), i.e. the layout is standard.
  EXPECT_THROW(r.get("t1", StDType::F32, std::vector<int64_t>{3, 111}), Error);
  EXPECT_THROW(r.get("absent", StDType::F32, std::vector<int64_t>{1}), Error);
}

TEST(Safetensors, WriterChecksOrderAndSizes) {
  TempDir d;
  {
    SafetensorsWriter w(d.file("b.safetensors"), {{"x", StDType::F32, {3}}, {"y", StDType::U8, {2}}});
    const std::vector<uint8_t> wrong(11);
    EXPECT_THROW(w.write("x", wrong), Error);                    // 12 bytes needed
    EXPECT_THROW(w.write("y", std::vector<uint8_t>(2)), Error);  // x comes first
    w.write("x", std::vector<uint8_t>(12));
    EXPECT_THROW(w.commit(), Error);  // y never written
  }
  EXPECT_FALSE(fs::exists(d.file("b.safetensors"))) << "an uncommitted file never appears";
  EXPECT_FALSE(has_temp_files(d.path)) << "nor does its temporary";
}

TEST(Safetensors, ReaderRejectsCorruptFiles) {
  TempDir d;
  write_safetensors_atomic(d.file("c.safetensors"), {{{"x", StDType::F32, {4}}, std::vector<uint8_t>(16, 0)}});
  auto bytes = model::test::read_bytes(d.file("c.safetensors"));
  // Truncated data.
  model::test::write_bytes(d.file("trunc.safetensors"), std::vector<uint8_t>(bytes.begin(), bytes.end() - 3));
  EXPECT_THROW(SafetensorsReader(d.file("trunc.safetensors")), Error);
  // Header length beyond the file.
  auto big = bytes;
  big[5] = 0x7F;
  model::test::write_bytes(d.file("big.safetensors"), big);
  try {
    SafetensorsReader r(d.file("big.safetensors"));
    FAIL() << "accepted a header longer than the file";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Format);
    EXPECT_NE(std::string(e.what()).find("big.safetensors"), std::string::npos) << e.what();
  }
  EXPECT_THROW(SafetensorsReader(d.file("missing.safetensors")), Error);
}

// A disk that fills up: the file-size limit makes write() fail with EFBIG part way through,
// exactly as ENOSPC would; the error names the file and nothing is left behind.
TEST(AtomicFile, FailedWriteLeavesNothing) {
  TempDir d;
  struct rlimit old {};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  auto old_handler = signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old;
  lim.rlim_cur = 100000;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
  bool threw = false;
  try {
    AtomicFile f(d.file("full.bin"));
    std::vector<uint8_t> block(64 << 10, 7);
    for (int i = 0; i < 200; ++i) f.write(block.data(), block.size());
    f.commit();
  } catch (const Error& e) {
    threw = true;
    EXPECT_EQ(e.kind(), ErrorKind::Io);
    EXPECT_NE(std::string(e.what()).find("full.bin"), std::string::npos) << e.what();
  }
  setrlimit(RLIMIT_FSIZE, &old);
  signal(SIGXFSZ, old_handler);
  EXPECT_TRUE(threw);
  EXPECT_FALSE(fs::exists(d.file("full.bin")));
  EXPECT_FALSE(has_temp_files(d.path));
}

TEST(AtomicFile, UnwritableFolderIsAnIoError) {
  try {
    AtomicFile f("/nonexistent-glq-dir/x.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Io);
    EXPECT_NE(std::string(e.what()).find("/nonexistent-glq-dir/x.json"), std::string::npos);
  }
}

TEST(Half, ConversionsRoundToNearestEven) {
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.0f, 3.0f);
  for (int i = 0; i < 20000; ++i) {
    const float x = g(rng) * (i % 7 == 0 ? 1e-5f : 1.0f);
    const float h = f16_to_f32(f32_to_f16(x));
    // The nearest half: no other half is closer (checked against the neighbours).
    const uint16_t bits = f32_to_f16(x);
    for (int dlt : {-1, 1}) {
      const float other = f16_to_f32(static_cast<uint16_t>(bits + dlt));
      if (std::isfinite(other) && (std::signbit(other) == std::signbit(h) || other == 0.0f)) {
        EXPECT_LE(std::fabs(h - x), std::fabs(other - x)) << x;
      }
    }
    const float b = bf16_to_f32(f32_to_bf16(x));
    EXPECT_LE(std::fabs(b - x), std::fabs(x) * (1.0f / 256.0f) + 1e-30f) << x;
  }
  EXPECT_EQ(f16_to_f32(f32_to_f16(65504.0f)), 65504.0f);
  EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(1e6f))));
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(std::nanf("")))));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
  EXPECT_FALSE(f16_representable(70000.0f));
}

QuantizationConfig sample_config() {
  QuantizationConfig qc;
  qc.target_bits = 2.5;
  qc.seed = 0xfedcba9876543210ull;  // above 2^53: must survive JSON
  qc.calibration = {"calib.txt", 19, 111, 42};
  qc.linears.push_back({"model.layers.0.self_attn.q_proj", 2, 64, 64, true, 0xffffffffffffffffull, 0.01, 0.3});
  qc.linears.push_back({"model.layers.0.mlp.down_proj", 3, 64, 192, false, 5, 0.002, 0.1});
  return qc;
}

TEST(QuantizationConfig, RoundTrip) {
  const QuantizationConfig qc = sample_config();
  const nlohmann::json j = nlohmann::json::parse(to_json(qc).dump());
  const QuantizationConfig back = parse_quantization_config(j, "config.json");
  EXPECT_EQ(back.target_bits, 2.5);
  EXPECT_EQ(back.seed, qc.seed);
  EXPECT_EQ(back.calibration.sequences, 19);
  ASSERT_EQ(back.linears.size(), 2u);
  EXPECT_EQ(back.linears[0].seed, 0xffffffffffffffffull);
  EXPECT_EQ(back.linears[1].bits, 3);
  EXPECT_EQ(back.linears[1].cols, 192);
  EXPECT_FALSE(back.linears[1].rht);
  EXPECT_TRUE(is_glq_config(nlohmann::json{{"quantization_config", j}}));
  EXPECT_FALSE(is_glq_config(nlohmann::json{{"quantization_config", {{"quant_method", "gptq"}}}}));
}

TEST(QuantizationConfig, RejectsOtherVersionsAndCodebooks) {
  nlohmann::json j = nlohmann::json::parse(to_json(sample_config()).dump());
  auto expect_format = [](const nlohmann::json& v, const std::string& needle) {
    try {
      parse_quantization_config(v, "x/config.json");
      FAIL() << "accepted " << needle;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Format);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("x/config.json"), std::string::npos) << e.what();
    }
  };
  auto v = j;
  v["format_version"] = kGlqFormatVersion + 1;
  expect_format(v, "format_version " + std::to_string(kGlqFormatVersion + 1));
  v = j;
  v["codebooks"]["2"] = {"e8p16-v2"};
  expect_format(v, "e8p16-v2");
  v = j;
  v["linears"][0]["bits"] = 5;
  expect_format(v, "bits = 5");
  v = j;
  v["linears"][0]["shape"] = {64, 60};
  expect_format(v, "shape");
  v = j;
  v["transform"]["type"] = "rht-v9";
  expect_format(v, "rht-v9");
}

TEST(QuantizedTensors, SignsAndMatrixRoundTrip) {
  std::mt19937 rng(9);
  std::vector<float> signs(19);
  for (auto& s : signs) s = (rng() & 1) ? -1.0f : 1.0f;
  const auto packed = pack_signs(signs);
  ASSERT_EQ(packed.size(), 3u);
  EXPECT_EQ(unpack_signs(packed.data(), 19), signs);

  const int rows = 24, cols = 40;
  std::normal_distribution<float> g;
  std::vector<float> W(static_cast<size_t>(rows) * cols);
  for (auto& w : W) w = g(rng);
  for (int bits : {2, 3, 4})
    for (bool rht : {true, false}) {
      codec::QuantizeOptions o;
      o.bits = bits;
      o.use_rht = rht;
      const auto q = codec::quantize_matrix(W, rows, cols, {}, o);
      TempDir d;
      write_safetensors_atomic(d.file("q.safetensors"), quantized_matrix_tensors("p", q));
      SafetensorsReader r(d.file("q.safetensors"));
      const auto back = quantized_matrix_from_tensors(r, {"p", bits, rows, cols, rht, o.seed, 0, 0});
      EXPECT_EQ(codec::dequantize(back), codec::dequantize(q)) << bits << " bits, rht " << rht;
      EXPECT_EQ(back.rht, rht);
      // A width that disagrees with the stored codes is a format error, not garbage.
      if (bits == 3) {
        EXPECT_THROW(quantized_matrix_from_tensors(r, {"p", 4, rows, cols, rht, 0, 0, 0}), Error);
      }
    }
}

}  // namespace
}  // namespace glq::format
