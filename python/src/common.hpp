// Shared helpers of the glq._glq extension: NumPy argument checks and the parts of the module.
//
// Array rule (docs/python.md): a C-contiguous, native-order float32 array is used in place; any
// other array of real numbers (float16/64, integers, strided or Fortran-ordered views, nested
// lists) is converted once to a C-contiguous float32 copy; booleans, complex numbers, objects
// and strings raise ValueError. Outputs are NumPy arrays that own the C++ buffer they were
// computed in (no copy on the way out).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <string>
#include <vector>

namespace glq::python {

namespace py = pybind11;

using F32Array = py::array_t<float, py::array::c_style>;

// `obj` as a C-contiguous float32 array (see the rule above); `what` names the argument.
F32Array as_f32(py::handle obj, const std::string& what);

// A NumPy array of `shape` that owns `data` (moved, not copied).
py::array_t<float> owning_array(std::vector<float>&& data, std::vector<py::ssize_t> shape);

// "(3, 4)" for messages.
std::string shape_string(const py::array& a);

// Parts of the module, one per file.
void bind_codec(py::module_& m);
void bind_model(py::module_& m);
void bind_quantize(py::module_& m);
void bind_cuda(py::module_& m);

}  // namespace glq::python
