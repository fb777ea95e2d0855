// ggml block dequantization against the `gguf` Python package (tests/data/ggml_dequant_golden.json).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "glq/error.hpp"
#include "glq/model/tensor.hpp"
#include "model/half.hpp"
#include "model_test_util.hpp"

namespace glq::model {
namespace {

DType parse(const std::string& s) {
  for (DType d : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q4_K, DType::Q5_K, DType::Q6_K})
    if (s == dtype_name(d)) return d;
  throw std::runtime_error("dtype " + s);
}

TEST(Dequantize, MatchesGgufPythonReference) {
  std::ifstream in(test::data_path("ggml_dequant_golden.json"));
  ASSERT_TRUE(in.good());
  const auto golden = nlohmann::json::parse(in);
  int checked = 0;
  for (const auto& c : golden["cases"]) {
    const DType d = parse(c["dtype"].get<std::string>());
    const std::string hex = c["bytes"].get<std::string>();
    std::vector<uint8_t> bytes(hex.size() / 2);
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
    std::vector<double> want;
    for (const auto& v : c["values"])
      want.push_back(v.is_string() ? (v.get<std::string>() == "inf" ? INFINITY : -INFINITY) : v.get<double>());
    ASSERT_EQ(dtype_bytes(d, static_cast<int64_t>(want.size())), static_cast<int64_t>(bytes.size())) << dtype_name(d);
    std::vector<float> got(want.size());
    dequantize(d, bytes.data(), got.data(), static_cast<int64_t>(want.size()));
    for (size_t i = 0; i < want.size(); ++i) {
      if (std::isinf(want[i])) {
        EXPECT_EQ(got[i], static_cast<float>(want[i])) << dtype_name(d) << " element " << i;
      } else {
        EXPECT_NEAR(got[i], want[i], 1e-6 * std::max(1.0, std::abs(want[i]))) << dtype_name(d) << " element " << i;
      }
    }
    ++checked;
  }
  EXPECT_EQ(checked, 8);
}

TEST(Dequantize, HalfRoundTripAndSizes) {
  for (float f : {0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 0.333251953125f})
    EXPECT_EQ(f16_to_f32(f32_to_f16(f)), f) << f;
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.5f)), 1.5f);
  EXPECT_EQ(dtype_bytes(DType::Q4_1, 64), 40);
  EXPECT_EQ(dtype_bytes(DType::Q6_K, 512), 420);
  EXPECT_THROW(dtype_bytes(DType::Q4_K, 100), Error);  // not whole blocks
  std::vector<float> out(4);
  const uint8_t ints[16] = {};
  EXPECT_THROW(dequantize(DType::I32, ints, out.data(), 4), Error);
}

}  // namespace
}  // namespace glq::model
