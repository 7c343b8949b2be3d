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

// (dx, dweight or None, dbias)
py::tuple layer_norm_backward(const ArrayIn& grad_output, const ArrayIn& x, const OptionalArrayIn& weight, float eps,
                              const OptionalArrayIn& residual) {
  Arg ga = float_arg(grad_output, "grad_output"), xa = float_arg(x, "x"), wa, ra;
  OptionalView w = optional_float(weight, "weight", wa);
  OptionalView r = optional_float(residual, "residual", ra);
  cf::ops::layer_norm_check(xa.view, w, OptionalView(), r, eps, false);
  const int64_t n = xa.view.size(-1);
  Arg dx = output(py::none(), {xa.view.shape, xa.view.shape + xa.view.ndim}, {}, false, &xa);
  Arg db = output(py::none(), {n}, {}, false, &xa), dw;
  OptionalView dwv;
  if (w) {
    dw = output(py::none(), {n}, {}, false, &xa);
    dwv = dw.view;
  }
  {
    py::gil_scoped_release nogil;
    cf::ops::layer_norm_backward(ga.view, xa.view, w, r, eps, dx.view, dwv, db.view);
  }
  return py::make_tuple(dx.result(), w ? dw.result() : py::object(py::none()), db.result());
}

}  // namespace

void register_train(py::module_& m) {
  m.def("layer_norm_backward", &layer_norm_backward, py::arg("grad_output"), py::arg("x"),
        py::arg("weight") = py::none(), py::arg("eps") = 1e-5, py::arg("residual") = py::none());
  m.def("gelu_backward", &gelu_backward, py::arg("grad_output"), py::arg("x"), py::arg("approximate") = "none");
  m.def("relu_backward",
        [](const ArrayIn& grad_output, const ArrayIn& x) { return activation_backward(grad_output, x, Activation::relu); },
        py::arg("grad_output"), py::arg("x"));
  m.def("softmax_backward", &softmax_backward, py::arg("grad_output"), py::arg("output"), py::arg("axis") = -1);
}

}  // namespace cf::pyext
