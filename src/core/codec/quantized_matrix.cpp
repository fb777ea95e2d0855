// Reference operations on a QuantizedMatrix and its versioned packed form.
//
// Packed layout, version 1 (all integers little-endian; every section starts at an offset that
// is a multiple of 16 from the start of the blob, zero padded, so that the codes can be read
// with 16-byte loads straight from a mapped file):
//   header (32 bytes)
//     0  char[4]  magic "GLQM"
//     4  u32      version (1)
//     8  u32      rows
//    12  u32      cols
//    16  u32      bits (2, 3, 4)
//    20  u32      flags: bit 0 = randomized Hadamard transform applied (QuantizedMatrix::rht)
//    24  u32      stage count S
//    28  u32      reserved, 0
//   S stage descriptors (16 bytes each): u32 codebook id (1 = E8P16, 2 = E8R8), u32 code bytes,
//                                        u64 byte offset of the stage's codes
//   for each stage: codes  (rows, cols/8) × code bytes, row-major (as in memory)
//                   scales (rows) float32
//   sign_in  bit-packed, ceil(cols/8) bytes: bit i%8 of byte i/8 set ⇔ sign_in[i] = −1
//   sign_out bit-packed, ceil(rows/8) bytes
//   trailer: u64 FNV-1a hash of every preceding byte
// The Hadamard plans are not stored: make_hadamard_plan(n) rebuilds them (its rule is part of
// format version 1).
#include <cstring>
#include <string>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/error.hpp"

namespace glq::codec {
namespace {

constexpr char kMagic[4] = {'G', 'L', 'Q', 'M'};
constexpr size_t kHeaderBytes = 32;
constexpr size_t kStageDescBytes = 16;
constexpr int kMaxStages = 8;

size_t align16(size_t v) { return (v + 15) & ~size_t{15}; }

uint64_t fnv1a(const uint8_t* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

void put_u32(std::vector<uint8_t>& b, size_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[off + i] = static_cast<uint8_t>(v >> (8 * i));
}
void put_u64(std::vector<uint8_t>& b, size_t off, uint64_t v) {
  for (int i = 0; i < 8; ++i) b[off + i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t get_u32(std::span<const uint8_t> b, size_t off) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(b[off + i]) << (8 * i);
  return v;
}
uint64_t get_u64(std::span<const uint8_t> b, size_t off) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(b[off + i]) << (8 * i);
  return v;
}

void check_consistent(const QuantizedMatrix& q, const char* what) {
  const std::string ctx = std::string(what) + ": quantized matrix";
  if (q.rows <= 0 || q.cols <= 0 || q.rows % 8 || q.cols % 8) {
    throw_invalid(ctx + " has shape [" + std::to_string(q.rows) + ", " + std::to_string(q.cols) +
                  "], expected positive multiples of 8");
  }
  const std::vector<Codebook> expect = stages_for_bits(q.bits);
  if (q.stages.size() != expect.size()) {
    throw_mismatch(ctx + " stages", std::to_string(expect.size()) + " for " +
                                        std::to_string(q.bits) + " bpw",
                   std::to_string(q.stages.size()));
  }
  const size_t groups = static_cast<size_t>(q.rows) * (q.cols / 8);
  for (size_t s = 0; s < q.stages.size(); ++s) {
    const CodeStage& st = q.stages[s];
    if (st.codebook != expect[s]) {
      throw_mismatch(ctx + " stage " + std::to_string(s) + " codebook", codebook_id(expect[s]),
                     codebook_id(st.codebook));
    }
    if (st.codes.size() != groups * code_bytes(st.codebook) || st.scales.size() != size_t(q.rows)) {
      throw_mismatch(ctx + " stage " + std::to_string(s) + " sizes",
                     std::to_string(groups * code_bytes(st.codebook)) + " code bytes, " +
                         std::to_string(q.rows) + " scales",
                     std::to_string(st.codes.size()) + " code bytes, " +
                         std::to_string(st.scales.size()) + " scales");
    }
  }
  if (q.sign_in.size() != size_t(q.cols) || q.sign_out.size() != size_t(q.rows)) {
    throw_mismatch(ctx + " sign vectors", std::to_string(q.cols) + " and " + std::to_string(q.rows),
                   std::to_string(q.sign_in.size()) + " and " + std::to_string(q.sign_out.size()));
  }
  if (q.rht && (q.plan_in.n != q.cols || q.plan_out.n != q.rows)) {
    throw_mismatch(ctx + " Hadamard plans", "orders " + std::to_string(q.cols) + " and " +
                                                std::to_string(q.rows),
                   std::to_string(q.plan_in.n) + " and " + std::to_string(q.plan_out.n));
  }
}

// Row r of W̃ = Σ_s diag(scale_s)·C_s (cols values).
void reconstruct_row(const QuantizedMatrix& q, int r, float* out) {
  const int G = q.cols / 8;
  const auto& e8p = e8p_abs_table();
  const auto& e8r8 = e8r8_table();
  for (int i = 0; i < q.cols; ++i) out[i] = 0.0f;
  for (const CodeStage& st : q.stages) {
    const float scale = st.scales[r];
    for (int g = 0; g < G; ++g) {
      float c[8];
      const size_t idx = static_cast<size_t>(r) * G + g;
      if (st.codebook == Codebook::E8P16) {
        decode_e8p(st.codes16()[idx], e8p, c);
      } else {
        decode_e8r8(st.codes8()[idx], e8r8, c);
      }
      for (int i = 0; i < 8; ++i) out[8 * g + i] += scale * c[i];
    }
  }
}

}  // namespace

size_t QuantizedMatrix::storage_bytes() const {
  size_t bytes = 0;
  for (const CodeStage& st : stages) bytes += st.codes.size() + st.scales.size() * sizeof(float);
  bytes += (sign_in.size() + 7) / 8 + (sign_out.size() + 7) / 8;
  return bytes;
}

std::vector<float> dequantize(const QuantizedMatrix& q) {
  check_consistent(q, "dequantize");
  const int rows = q.rows, cols = q.cols;
  std::vector<float> W(static_cast<size_t>(rows) * cols);  // (rows, cols)
  for (int r = 0; r < rows; ++r) {
    float* row = &W[static_cast<size_t>(r) * cols];
    reconstruct_row(q, r, row);
    if (q.rht) {  // row ← S_in · T_inᵀ · row
      transform::hadamard_transpose(q.plan_in, row);
      for (int i = 0; i < cols; ++i) row[i] *= q.sign_in[i];
    }
  }
  if (q.rht) {  // columns ← S_out · T_outᵀ · column
    std::vector<float> col(rows);
    for (int c = 0; c < cols; ++c) {
      for (int r = 0; r < rows; ++r) col[r] = W[static_cast<size_t>(r) * cols + c];
      transform::hadamard_transpose(q.plan_out, col.data());
      for (int r = 0; r < rows; ++r) W[static_cast<size_t>(r) * cols + c] = col[r] * q.sign_out[r];
    }
  }
  return W;
}

void matvec_reference(const QuantizedMatrix& q, const float* x, float* y, int batch) {
  check_consistent(q, "matvec_reference");
  if (batch < 0) throw_invalid("matvec_reference: negative batch " + std::to_string(batch));
  const int rows = q.rows, cols = q.cols, G = cols / 8;
  const auto& e8p = e8p_abs_table();
  const auto& e8r8 = e8r8_table();
  std::vector<float> xt(cols);  // x̃ (cols)
  std::vector<float> yt(rows);  // ỹ (rows)
  for (int b = 0; b < batch; ++b) {
    const float* xb = x + static_cast<size_t>(b) * cols;
    for (int i = 0; i < cols; ++i) xt[i] = q.sign_in[i] * xb[i];
    if (q.rht) transform::hadamard_forward(q.plan_in, xt.data());
    for (int r = 0; r < rows; ++r) {
      double acc = 0;
      for (const CodeStage& st : q.stages) {
        double dot = 0;
        for (int g = 0; g < G; ++g) {
          float c[8];
          const size_t idx = static_cast<size_t>(r) * G + g;
          if (st.codebook == Codebook::E8P16) {
            decode_e8p(st.codes16()[idx], e8p, c);
          } else {
            decode_e8r8(st.codes8()[idx], e8r8, c);
          }
          for (int i = 0; i < 8; ++i) dot += static_cast<double>(c[i]) * xt[8 * g + i];
        }
        acc += static_cast<double>(st.scales[r]) * dot;
      }
      yt[r] = static_cast<float>(acc);
    }
    if (q.rht) transform::hadamard_transpose(q.plan_out, yt.data());
    float* yb = y + static_cast<size_t>(b) * rows;
    for (int r = 0; r < rows; ++r) yb[r] = q.sign_out[r] * yt[r];
  }
}

std::vector<uint8_t> pack(const QuantizedMatrix& q) {
  check_consistent(q, "pack");
  const size_t S = q.stages.size();
  size_t off = align16(kHeaderBytes + S * kStageDescBytes);
  std::vector<size_t> code_off(S), scale_off(S);
  for (size_t s = 0; s < S; ++s) {
    code_off[s] = off;
    off = align16(off + q.stages[s].codes.size());
    scale_off[s] = off;
    off = align16(off + q.stages[s].scales.size() * 4);
  }
  const size_t sin_off = off;
  off = align16(off + (q.cols + 7) / 8);
  const size_t sout_off = off;
  off = align16(off + (q.rows + 7) / 8);
  const size_t trailer = off;
  std::vector<uint8_t> b(trailer + 8, 0);
  std::memcpy(b.data(), kMagic, 4);
  put_u32(b, 4, kGlqPackVersion);
  put_u32(b, 8, static_cast<uint32_t>(q.rows));
  put_u32(b, 12, static_cast<uint32_t>(q.cols));
  put_u32(b, 16, static_cast<uint32_t>(q.bits));
  put_u32(b, 20, q.rht ? 1u : 0u);
  put_u32(b, 24, static_cast<uint32_t>(S));
  for (size_t s = 0; s < S; ++s) {
    const CodeStage& st = q.stages[s];
    const size_t d = kHeaderBytes + s * kStageDescBytes;
    put_u32(b, d, static_cast<uint32_t>(st.codebook));
    put_u32(b, d + 4, static_cast<uint32_t>(code_bytes(st.codebook)));
    put_u64(b, d + 8, code_off[s]);
    std::memcpy(&b[code_off[s]], st.codes.data(), st.codes.size());  // already little-endian
    for (size_t r = 0; r < st.scales.size(); ++r) {
      uint32_t bits;
      std::memcpy(&bits, &st.scales[r], 4);
      put_u32(b, scale_off[s] + 4 * r, bits);
    }
  }
  for (int i = 0; i < q.cols; ++i) {
    if (q.sign_in[i] < 0) b[sin_off + i / 8] |= static_cast<uint8_t>(1u << (i % 8));
  }
  for (int i = 0; i < q.rows; ++i) {
    if (q.sign_out[i] < 0) b[sout_off + i / 8] |= static_cast<uint8_t>(1u << (i % 8));
  }
  put_u64(b, trailer, fnv1a(b.data(), trailer));
  return b;
}

QuantizedMatrix unpack(std::span<const uint8_t> bytes) {
  const std::string ctx = "packed quantized matrix";
  auto need = [&](size_t off, size_t n, const std::string& what) {
    if (off > bytes.size() || n > bytes.size() - off) {
      throw_format(ctx, "truncated: " + what + " needs bytes [" + std::to_string(off) + ", " +
                            std::to_string(off + n) + "), have " + std::to_string(bytes.size()));
    }
  };
  need(0, kHeaderBytes, "header");
  if (std::memcmp(bytes.data(), kMagic, 4) != 0) {
    throw_format(ctx, "bad magic: expected \"GLQM\"");
  }
  const uint32_t version = get_u32(bytes, 4);
  if (version != static_cast<uint32_t>(kGlqPackVersion)) {
    throw_format(ctx, "unsupported version " + std::to_string(version) + " (this build reads " +
                          std::to_string(kGlqPackVersion) + ")");
  }
  QuantizedMatrix q;
  const uint32_t rows = get_u32(bytes, 8), cols = get_u32(bytes, 12), bits = get_u32(bytes, 16);
  const uint32_t flags = get_u32(bytes, 20), S = get_u32(bytes, 24);
  if (rows == 0 || cols == 0 || rows % 8 || cols % 8 || rows > (1u << 30) || cols > (1u << 30)) {
    throw_format(ctx, "bad shape [" + std::to_string(rows) + ", " + std::to_string(cols) + "]");
  }
  if (bits < 2 || bits > 4) throw_format(ctx, "bad bits per weight " + std::to_string(bits));
  if (flags > 1) throw_format(ctx, "unknown flags " + std::to_string(flags));
  const std::vector<Codebook> expect = stages_for_bits(static_cast<int>(bits));
  if (S != expect.size() || S > kMaxStages) {
    throw_format(ctx, "expected " + std::to_string(expect.size()) + " stages for " +
                          std::to_string(bits) + " bpw, got " + std::to_string(S));
  }
  q.rows = static_cast<int>(rows);
  q.cols = static_cast<int>(cols);
  q.bits = static_cast<int>(bits);
  q.rht = (flags & 1u) != 0;
  const size_t groups = static_cast<size_t>(rows) * (cols / 8);
  need(kHeaderBytes, S * kStageDescBytes, "stage descriptors");
  size_t off = align16(kHeaderBytes + S * kStageDescBytes);
  q.stages.resize(S);
  for (size_t s = 0; s < S; ++s) {
    const size_t d = kHeaderBytes + s * kStageDescBytes;
    const uint32_t cb = get_u32(bytes, d), cbytes = get_u32(bytes, d + 4);
    const uint64_t coff = get_u64(bytes, d + 8);
    if (cb != static_cast<uint32_t>(expect[s])) {
      throw_format(ctx, "stage " + std::to_string(s) + ": codebook id " + std::to_string(cb) +
                            ", expected " + std::to_string(static_cast<int>(expect[s])) + " (" +
                            codebook_id(expect[s]) + ")");
    }
    if (cbytes != static_cast<uint32_t>(code_bytes(expect[s])) || coff != off) {
      throw_format(ctx, "stage " + std::to_string(s) + ": bad descriptor (code bytes " +
                            std::to_string(cbytes) + ", offset " + std::to_string(coff) +
                            ", expected offset " + std::to_string(off) + ")");
    }
    CodeStage& st = q.stages[s];
    st.codebook = expect[s];
    const size_t nbytes = groups * cbytes;
    need(off, nbytes, "stage " + std::to_string(s) + " codes");
    st.codes.assign(bytes.begin() + off, bytes.begin() + off + nbytes);
    off = align16(off + nbytes);
    need(off, static_cast<size_t>(rows) * 4, "stage " + std::to_string(s) + " scales");
    st.scales.resize(rows);
    for (uint32_t r = 0; r < rows; ++r) {
      const uint32_t v = get_u32(bytes, off + 4 * r);
      std::memcpy(&st.scales[r], &v, 4);
    }
    off = align16(off + static_cast<size_t>(rows) * 4);
  }
  need(off, (cols + 7) / 8, "sign_in");
  q.sign_in.resize(cols);
  for (uint32_t i = 0; i < cols; ++i) q.sign_in[i] = ((bytes[off + i / 8] >> (i % 8)) & 1) ? -1.0f : 1.0f;
  off = align16(off + (cols + 7) / 8);
  need(off, (rows + 7) / 8, "sign_out");
  q.sign_out.resize(rows);
  for (uint32_t i = 0; i < rows; ++i) q.sign_out[i] = ((bytes[off + i / 8] >> (i % 8)) & 1) ? -1.0f : 1.0f;
  off = align16(off + (rows + 7) / 8);
  need(off, 8, "checksum");
  const uint64_t stored = get_u64(bytes, off), actual = fnv1a(bytes.data(), off);
  if (stored != actual) throw_format(ctx, "checksum mismatch (corrupted data)");
  if (off + 8 != bytes.size()) {
    throw_format(ctx, "expected " + std::to_string(off + 8) + " bytes, got " +
                          std::to_string(bytes.size()) + " (trailing data)");
  }
  q.plan_in = transform::make_hadamard_plan(q.cols);
  q.plan_out = transform::make_hadamard_plan(q.rows);
  return q;
}

}  // namespace glq::codec
