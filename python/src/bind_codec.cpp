// QuantizedMatrix and quantize_matrix on NumPy arrays; the raw-pointer product that the PyTorch
// layer calls on CPU tensors.
#include <pybind11/stl.h>

#include <cstring>
#include <string>

#include "common.hpp"
#include "glq/codec/codebook.hpp"
#include "glq/error.hpp"
#include "glq/kernels/cpu.hpp"
#include "qmatrix.hpp"

namespace glq::python {

namespace {

using codec::QuantizedMatrix;

std::string describe(const QuantizedMatrix& q) {
  return "QuantizedMatrix(rows=" + std::to_string(q.rows) + ", cols=" + std::to_string(q.cols) +
         ", bits=" + std::to_string(q.bits) + ", rht=" + (q.rht ? "True" : "False") +
         ", storage_bytes=" + std::to_string(q.storage_bytes()) + ")";
}

py::dict report_dict(const codec::QuantizeReport& r) {
  py::dict d;
  d["proxy_loss"] = r.proxy_loss;
  d["relative_weight_error"] = r.relative_weight_error;
  d["damp_used"] = r.damp_used;
  d["warnings"] = r.warnings;
  d["seconds"] = r.seconds;
  return d;
}

cpu::Isa isa_of(const std::optional<std::string>& name) {
  return name ? cpu::parse_isa(*name) : cpu::detect_isa();
}

// x: (cols,) or (batch, cols) → y: (rows,) or (batch, rows). `out`, when given, must be a
// C-contiguous float32 array of that shape; it is written in place and returned.
py::array matvec(const PyQuantizedMatrix& self, py::handle x_obj, py::object out,
                 const std::string& method, const std::optional<std::string>& isa_name) {
  const QuantizedMatrix& q = self.get();
  F32Array x = as_f32(x_obj, "matvec: x");
  if (x.ndim() != 1 && x.ndim() != 2)
    throw py::value_error("matvec: x must have shape (" + std::to_string(q.cols) + ",) or (batch, " +
                          std::to_string(q.cols) + "), got " + shape_string(x));
  const py::ssize_t cols = x.shape(x.ndim() - 1);
  if (cols != q.cols)
    throw py::value_error("matvec: x has " + std::to_string(cols) + " columns, the matrix " +
                          std::to_string(q.cols) + " (x shape " + shape_string(x) + ")");
  const int batch = x.ndim() == 2 ? static_cast<int>(x.shape(0)) : 1;
  std::vector<py::ssize_t> shape = x.ndim() == 2 ? std::vector<py::ssize_t>{batch, q.rows}
                                                 : std::vector<py::ssize_t>{q.rows};
  F32Array y;
  if (out.is_none()) {
    y = F32Array(shape);
  } else {
    if (!py::isinstance<F32Array>(out))
      throw py::value_error("matvec: out must be a C-contiguous float32 array");
    y = py::reinterpret_borrow<F32Array>(out);
    if (!y.writeable()) throw py::value_error("matvec: out is read-only");
    bool same = y.ndim() == static_cast<py::ssize_t>(shape.size());
    for (size_t i = 0; same && i < shape.size(); ++i) same = y.shape(i) == shape[i];
    if (!same) throw py::value_error("matvec: out has shape " + shape_string(y) + ", expected " +
                                     shape_string(F32Array(shape)));
    const char* xb = reinterpret_cast<const char*>(x.data());
    const char* yb = reinterpret_cast<const char*>(y.data());
    if (xb < yb + y.nbytes() && yb < xb + x.nbytes())
      throw py::value_error("matvec: out overlaps x");
  }
  if (batch == 0) return std::move(y);
  const float* xp = x.data();
  float* yp = y.mutable_data();
  if (method == "fused") {
    const cpu::Isa isa = isa_of(isa_name);
    py::gil_scoped_release nogil;
    cpu::qmatmul(q, xp, yp, batch, ThreadPool::global(), isa);
  } else if (method == "reference") {
    py::gil_scoped_release nogil;
    codec::matvec_reference(q, xp, yp, batch);
  } else {
    throw py::value_error("matvec: method must be 'fused' or 'reference', got '" + method + "'");
  }
  return std::move(y);
}

PyQuantizedMatrix quantize(py::handle w_obj, py::handle h_obj, int bits, uint64_t seed, bool rht,
                           bool ldlq, double damp) {
  F32Array w = as_f32(w_obj, "quantize_matrix: W");
  if (w.ndim() != 2)
    throw py::value_error("quantize_matrix: W must be 2-D (rows, cols), got shape " + shape_string(w));
  const int rows = static_cast<int>(w.shape(0)), cols = static_cast<int>(w.shape(1));
  F32Array h;
  if (!h_obj.is_none()) {
    h = as_f32(h_obj, "quantize_matrix: H");
    if (h.ndim() != 2 || h.shape(0) != cols || h.shape(1) != cols)
      throw py::value_error("quantize_matrix: H must have shape (" + std::to_string(cols) + ", " +
                            std::to_string(cols) + ") for W of shape " + shape_string(w) + ", got " +
                            shape_string(h));
  }
  codec::QuantizeOptions opt;
  opt.bits = bits;
  opt.seed = seed;
  opt.use_rht = rht;
  opt.use_ldlq = ldlq;
  opt.damp = damp;
  std::span<const float> ws(w.data(), static_cast<size_t>(w.size()));
  std::span<const float> hs;
  if (h) hs = std::span<const float>(h.data(), static_cast<size_t>(h.size()));
  PyQuantizedMatrix out;
  codec::QuantizeReport report;
  {
    py::gil_scoped_release nogil;
    out.q = std::make_shared<const QuantizedMatrix>(codec::quantize_matrix(ws, rows, cols, hs, opt, &report));
  }
  out.report = report;
  return out;
}

PyQuantizedMatrix unpack_bytes(py::bytes data) {
  std::string_view s = data;
  PyQuantizedMatrix out;
  out.q = std::make_shared<const QuantizedMatrix>(
      codec::unpack(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size())));
  return out;
}

}  // namespace

void bind_codec(py::module_& m) {
  py::class_<PyQuantizedMatrix>(m, "QuantizedMatrix",
                                "A weight matrix (rows, cols) = (out, in) compressed by GLQ.")
      .def_property_readonly("rows", [](const PyQuantizedMatrix& s) { return s.get().rows; })
      .def_property_readonly("cols", [](const PyQuantizedMatrix& s) { return s.get().cols; })
      .def_property_readonly("shape", [](const PyQuantizedMatrix& s) { return py::make_tuple(s.get().rows, s.get().cols); })
      .def_property_readonly("bits", [](const PyQuantizedMatrix& s) { return s.get().bits; })
      .def_property_readonly("rht", [](const PyQuantizedMatrix& s) { return s.get().rht; })
      .def_property_readonly("storage_bytes", [](const PyQuantizedMatrix& s) { return s.get().storage_bytes(); },
                             "bytes of every stored bit: codes, scales, sign vectors")
      .def_property_readonly("bits_per_weight", [](const PyQuantizedMatrix& s) {
        const auto& q = s.get();
        return 8.0 * static_cast<double>(q.storage_bytes()) / (static_cast<double>(q.rows) * q.cols);
      })
      .def_property_readonly("codebooks", [](const PyQuantizedMatrix& s) {
        std::vector<std::string> names;
        for (const auto& st : s.get().stages) names.push_back(codec::codebook_id(st.codebook));
        return names;
      })
      .def_property_readonly("report", [](const PyQuantizedMatrix& s) -> py::object {
        if (!s.report) return py::none();
        return report_dict(*s.report);
      }, "proxy_loss, relative_weight_error, damp_used, warnings, seconds of quantize_matrix (None if loaded)")
      .def("matvec", &matvec, py::arg("x"), py::arg("out") = py::none(), py::arg("method") = "fused",
           py::arg("isa") = py::none(),
           "y = W x for x of shape (cols,) or (batch, cols), without materialising W.\n"
           "method 'fused' runs the CPU kernels (isa: 'scalar'|'avx2'|'avx512', default the best\n"
           "this CPU has); 'reference' the plain codec reference.")
      .def("dequantize", [](const PyQuantizedMatrix& s) {
        const auto& q = s.get();
        std::vector<float> w;
        {
          py::gil_scoped_release nogil;
          w = codec::dequantize(q);
        }
        return owning_array(std::move(w), {q.rows, q.cols});
      }, "the dense W (rows, cols) float32")
      .def("pack", [](const PyQuantizedMatrix& s) {
        const std::vector<uint8_t> b = codec::pack(s.get());
        return py::bytes(reinterpret_cast<const char*>(b.data()), b.size());
      }, "versioned, bit-exact serialization of the packed layout")
      .def_static("unpack", &unpack_bytes, py::arg("data"))
      .def(py::pickle([](const PyQuantizedMatrix& s) {
                        const std::vector<uint8_t> b = codec::pack(s.get());
                        return py::make_tuple(py::bytes(reinterpret_cast<const char*>(b.data()), b.size()));
                      },
                      [](py::tuple t) {
                        if (t.size() != 1) throw py::value_error("QuantizedMatrix: bad pickle state");
                        return unpack_bytes(t[0].cast<py::bytes>());
                      }))
      .def("__repr__", [](const PyQuantizedMatrix& s) { return describe(s.get()); });

  m.def("quantize_matrix", &quantize, py::arg("W"), py::arg("H") = py::none(), py::arg("bits") = 2,
        py::arg("seed") = 0x5eed, py::arg("rht") = true, py::arg("ldlq") = true, py::arg("damp") = 0.01,
        "Quantizes W (rows, cols); H (cols, cols) is the Hessian proxy (None: identity).");

  m.def("qmatmul_ptr", [](const PyQuantizedMatrix& s, uintptr_t x, uintptr_t y, int batch) {
    if (!x || !y) throw py::value_error("qmatmul_ptr: null pointer");
    if (batch < 0) throw py::value_error("qmatmul_ptr: negative batch");
    if (batch == 0) return;
    py::gil_scoped_release nogil;
    cpu::qmatmul(s.get(), reinterpret_cast<const float*>(x), reinterpret_cast<float*>(y), batch,
                 ThreadPool::global());
  }, py::arg("matrix"), py::arg("x_ptr"), py::arg("y_ptr"), py::arg("batch"),
  "y (batch, rows) = x (batch, cols) W^T on raw float32 CPU pointers (C-contiguous, not overlapping).");

  m.def("cpu_isa", [] { return std::string(cpu::isa_name(cpu::detect_isa())); },
        "the CPU kernel instruction set in use ('scalar', 'avx2' or 'avx512')");
  m.def("num_threads", [] { return ThreadPool::global().size(); },
        "threads of the shared pool (set by GLQ_THREADS before the first use)");
}

}  // namespace glq::python
