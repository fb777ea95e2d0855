// QuantizedMatrix <-> checkpoint tensors (layout in glq/format/quantization_config.hpp).
#include "glq/format/quantized_tensors.hpp"

#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "glq/error.hpp"
#include "glq/transform/hadamard.hpp"

namespace glq::format {

namespace {

StDType code_dtype(codec::Codebook cb) { return codec::code_bytes(cb) == 2 ? StDType::U16 : StDType::U8; }

}  // namespace

std::vector<uint8_t> pack_signs(const std::vector<float>& signs) {
  std::vector<uint8_t> out((signs.size() + 7) / 8, 0);
  for (size_t j = 0; j < signs.size(); ++j)
    if (signs[j] < 0) out[j / 8] |= static_cast<uint8_t>(1u << (j % 8));
  return out;
}

std::vector<float> unpack_signs(const uint8_t* bits, int n) {
  std::vector<float> out(static_cast<size_t>(n));
  for (int j = 0; j < n; ++j) out[static_cast<size_t>(j)] = ((bits[j / 8] >> (j % 8)) & 1u) ? -1.0f : 1.0f;
  return out;
}

std::vector<StTensorData> quantized_matrix_tensors(const std::string& prefix, const codec::QuantizedMatrix& q) {
  std::vector<StTensorData> out;
  const int64_t groups = q.cols / 8;
  for (size_t s = 0; s < q.stages.size(); ++s) {
    const auto& st = q.stages[s];
    StTensorData codes;
    codes.spec = {glq_codes_name(prefix, static_cast<int>(s)), code_dtype(st.codebook), {q.rows, groups}};
    if (st.codes.size() != codes.spec.nbytes())
      throw Error(ErrorKind::Internal, fmt::format("{}: stage {} holds {} code bytes, expected {}", prefix, s, st.codes.size(),
                                                   codes.spec.nbytes()));
    codes.bytes = st.codes;  // little-endian, as the packed layout
    out.push_back(std::move(codes));
    StTensorData scales;
    scales.spec = {glq_scales_name(prefix, static_cast<int>(s)), StDType::F32, {q.rows}};
    scales.bytes.resize(st.scales.size() * sizeof(float));
    std::memcpy(scales.bytes.data(), st.scales.data(), scales.bytes.size());
    out.push_back(std::move(scales));
  }
  if (q.rht) {
    StTensorData si, so;
    si.spec = {glq_sign_in_name(prefix), StDType::U8, {(q.cols + 7) / 8}};
    si.bytes = pack_signs(q.sign_in);
    so.spec = {glq_sign_out_name(prefix), StDType::U8, {(q.rows + 7) / 8}};
    so.bytes = pack_signs(q.sign_out);
    out.push_back(std::move(si));
    out.push_back(std::move(so));
  }
  return out;
}

codec::QuantizedMatrix quantized_matrix_from_tensors(const SafetensorsReader& file, const LinearQuantEntry& e) {
  codec::QuantizedMatrix q;
  q.rows = e.rows;
  q.cols = e.cols;
  q.bits = e.bits;
  const auto books = codec::stages_for_bits(e.bits);
  for (size_t s = 0; s < books.size(); ++s) {
    codec::CodeStage st;
    st.codebook = books[s];
    const int64_t cshape[] = {e.rows, e.cols / 8};
    st.codes = copy_bytes(file.get(glq_codes_name(e.name, static_cast<int>(s)), code_dtype(books[s]), cshape));
    const int64_t sshape[] = {e.rows};
    st.scales = copy_f32(file.get(glq_scales_name(e.name, static_cast<int>(s)), StDType::F32, sshape));
    for (float v : st.scales)
      if (!std::isfinite(v))
        throw_format(file.path(), fmt::format("tensor '{}' holds a non-finite scale", glq_scales_name(e.name, static_cast<int>(s))));
    q.stages.push_back(std::move(st));
  }
  if (e.rht) {
    const int64_t in_shape[] = {(e.cols + 7) / 8}, out_shape[] = {(e.rows + 7) / 8};
    q.sign_in = unpack_signs(file.get(glq_sign_in_name(e.name), StDType::U8, in_shape).data.data(), e.cols);
    q.sign_out = unpack_signs(file.get(glq_sign_out_name(e.name), StDType::U8, out_shape).data.data(), e.rows);
  } else {
    q.sign_in.assign(static_cast<size_t>(e.cols), 1.0f);
    q.sign_out.assign(static_cast<size_t>(e.rows), 1.0f);
  }
  q.rht = e.rht;
  q.plan_in = transform::make_hadamard_plan(e.cols);
  q.plan_out = transform::make_hadamard_plan(e.rows);
  return q;
}

}  // namespace glq::format
