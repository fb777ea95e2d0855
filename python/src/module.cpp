// glq._glq: the Python extension over the GLQ C++ library. The public Python API is the `glq`
// package (python/glq); this module holds the compiled parts it wraps.
//
// Errors: glq::Error of kind InvalidArgument becomes ValueError, every other glq::Error (and any
// other C++ exception) RuntimeError; the message is the C++ one, which names the tensor or file,
// the expected and the actual values.
#include <sstream>

#include "common.hpp"
#include "glq/error.hpp"

namespace glq::python {

F32Array as_f32(py::handle obj, const std::string& what) {
  py::array a;
  if (py::isinstance<py::array>(obj)) {
    a = py::reinterpret_borrow<py::array>(obj);
  } else {
    a = py::array::ensure(obj);  // lists, buffers, objects with __array__
    if (!a) {
      PyErr_Clear();
      throw py::value_error(what + ": expected an array of real numbers, got " +
                            std::string(py::str(py::type::of(obj).attr("__name__"))));
    }
  }
  if (py::isinstance<F32Array>(a)) return py::reinterpret_borrow<F32Array>(a);
  const char kind = a.dtype().kind();
  if (kind != 'f' && kind != 'i' && kind != 'u')
    throw py::value_error(what + ": expected real numbers (float32 preferred), got dtype " +
                          std::string(py::str(a.dtype())));
  auto converted = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
  if (!converted) throw py::error_already_set();
  return py::reinterpret_borrow<F32Array>(converted);
}

py::array_t<float> owning_array(std::vector<float>&& data, std::vector<py::ssize_t> shape) {
  auto* holder = new std::vector<float>(std::move(data));
  py::capsule owner(holder, [](void* p) { delete static_cast<std::vector<float>*>(p); });
  return py::array_t<float>(shape, holder->data(), owner);
}

std::string shape_string(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.shape(i);
  if (a.ndim() == 1) s << ",";
  s << ")";
  return s.str();
}

}  // namespace glq::python

PYBIND11_MODULE(_glq, m) {
  namespace py = pybind11;
  m.doc() = "GLQ C++ core: codec, CPU kernels, model engine, quantization pipeline";
  m.attr("__version__") = GLQ_VERSION;

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const glq::Error& e) {
      if (e.kind() == glq::ErrorKind::InvalidArgument)
        PyErr_SetString(PyExc_ValueError, e.what());
      else
        PyErr_SetString(PyExc_RuntimeError,
                        (std::string(glq::to_string(e.kind())) + ": " + e.what()).c_str());
    }
  });

  glq::python::bind_codec(m);
  glq::python::bind_model(m);
  glq::python::bind_quantize(m);
  glq::python::bind_cuda(m);
}
