// numpy <-> TensorView for the binding. Inputs: float32 C-contiguous arrays are viewed without a
// copy; other real dtypes and non-contiguous arrays are converted; complex, string, object and
// other non-numeric input is a TypeError naming the argument.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/typing.h>

#include <vector>

#include "core/tensor.h"
#include "tensor.h"

namespace cf::pyext {

namespace py = pybind11;

// Any object, named numpy.typing.ArrayLike in signatures: the argument types below exist only so that
// the stub generated from the module (python/coreformer/_core.pyi, tools/gen_stubs.py) says what each
// argument takes; they accept any object, and the functions of this file convert or refuse it.
class ArrayLike : public py::object {
  PYBIND11_OBJECT_DEFAULT(ArrayLike, object, PyObject_Type)
  using object::object;
};
using ArrayIn = py::typing::Union<ArrayLike, Tensor>;                   // an array (converted) or a Tensor
using OptionalArrayIn = py::typing::Optional<ArrayIn>;
using FloatArray = py::array_t<float>;                                   // NDArray[numpy.float32]
using ArrayOut = py::typing::Union<FloatArray, Tensor>;                  // a result: on the inputs' side
using OptionalOut = py::typing::Optional<ArrayOut>;                      // an `out=` argument

// Looks numpy.ndarray and numpy.asarray up once, at module import (single-threaded, under the GIL),
// so that a call converts its arguments without an import or an attribute lookup per array.
void init_numpy();

// An argument converted for the core: `array` (a numpy array) or `tensor` (a coreformer.Tensor,
// on any device, passed as it is) keeps the memory alive while `view` is used.
struct Arg {
  py::array array;
  TensorView view;
  py::object tensor;
  py::object result() const { return tensor ? tensor : py::object(array); }  // an op's return value
};

Arg float_arg(py::handle obj, const char* name);
// float32 arrays whose last axis is contiguous (other strides non-negative multiples of 4 bytes)
// are viewed in place, strides and all; anything else is converted as float_arg does. For the
// kernels that take strided rows (attention).
Arg strided_float_arg(py::handle obj, const char* name);
// float32 arrays with any non-negative strides (a transposed view too) are viewed in place; anything
// else is converted as float_arg does. For code that reads through strides (packing a weight).
Arg any_strided_float_arg(py::handle obj, const char* name);
OptionalView optional_float(py::handle obj, const char* name, Arg& holder);
// bool or float32 (an attention mask)
OptionalView optional_mask(py::handle obj, const char* name, Arg& holder);
// bool only; other real dtypes are converted with != 0
OptionalView optional_bool(py::handle obj, const char* name, Arg& holder);
// int32 or int64 (int32_ok: int32 arrays as they are; else converted to int64 too)
Arg ids_arg(py::handle obj, const char* name, bool int32_ok = true);
// A float32, C-contiguous, writeable numpy array the op writes (a KV cache, `out`); anything else is
// a TypeError or ValueError naming the argument.
Arg inout_float_arg(py::handle obj, const char* name);
// Whether two converted arguments share any byte of memory.
bool overlap(const Arg& a, const Arg& b);

// A new float32 array of the given shape, or the caller's `out` checked to be writeable float32
// C-contiguous and not overlapping `inputs` (except, where allowed, being exactly the same memory).
// When an input is a coreformer.Tensor (the first such one, or `like` when given), the result is a
// new Tensor on its device with its dtype, and `out` must be such a Tensor.
Arg output(py::handle out, const std::vector<int64_t>& shape, const std::vector<const Arg*>& inputs,
           bool allow_same = false, const Arg* like = nullptr);

// As output, but a caller's `out` only needs a contiguous last axis and non-overlapping elements
// (a (B, S, H, Dh) buffer transposed to (B, H, S, Dh), so heads merge without a copy).
Arg strided_output(py::handle out, const std::vector<int64_t>& shape, const std::vector<const Arg*>& inputs);

}  // namespace cf::pyext

namespace pybind11::detail {
template <>
struct handle_type_name<cf::pyext::ArrayLike> {
  static constexpr auto name = const_name("numpy.typing.ArrayLike");
};
}  // namespace pybind11::detail
