// coreformer._core's training ops: the backward of each forward (and, as they arrive, losses and
// optimiser steps). Conversion, argument checks and GIL release only, as in module.cpp.
#include "train.h"

#include <string>

#include "convert.h"
#include "core/error.h"
#include "ops/ops.h"

namespace cf::pyext {
namespace {

using cf::ops::Activation;

ArrayOut activation_backward(const ArrayIn& grad_output, const ArrayIn& x, Activation act) {
  Arg ga = float_arg(grad_output, "grad_output"), xa = float_arg(x, "x");
  Arg oa = output(py::none(), {xa.view.shape, xa.view.shape + xa.view.ndim}, {}, false, &xa);
  {
    py::gil_scoped_release nogil;
    cf::ops::activation_backward(xa.view, ga.view, act, oa.view);
  }
  return oa.result();
}

ArrayOut gelu_backward(const ArrayIn& grad_output, const ArrayIn& x, const std::string& approximate) {
  if (approximate == "none") return activation_backward(grad_output, x, Activation::gelu);
  if (approximate == "tanh") return activation_backward(grad_output, x, Activation::gelu_tanh);
  raise<ValueError>("approximate must be 'none' or 'tanh', got '", approximate, "'");
}

ArrayOut softmax_backward(const ArrayIn& grad_output, const ArrayIn& output_, int64_t axis) {
  Arg ga = float_arg(grad_output, "grad_output"), ya = float_arg(output_, "output");
  cf::ops::softmax_axis(ya.view, axis);
  Arg oa = output(py::none(), {ya.view.shape, ya.view.shape + ya.view.ndim}, {}, false, &ya);
  {
    py::gil_scoped_release nogil;
    cf::ops::softmax_backward(ya.view, ga.view, axis, oa.view);
  }
  return oa.result();
}

}  // namespace

void register_train(py::module_& m) {
  m.def("gelu_backward", &gelu_backward, py::arg("grad_output"), py::arg("x"), py::arg("approximate") = "none");
  m.def("relu_backward",
        [](const ArrayIn& grad_output, const ArrayIn& x) { return activation_backward(grad_output, x, Activation::relu); },
        py::arg("grad_output"), py::arg("x"));
  m.def("softmax_backward", &softmax_backward, py::arg("grad_output"), py::arg("output"), py::arg("axis") = -1);
}

}  // namespace cf::pyext
