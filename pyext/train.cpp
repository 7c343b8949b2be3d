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

ArrayOut embedding_backward(const ArrayIn& grad_output, const ArrayIn& ids, int64_t num_embeddings,
                            const py::typing::Optional<py::int_>& padding_idx) {
  Arg ia = ids_arg(ids, "ids"), ga = float_arg(grad_output, "grad_output");
  CF_CHECK(num_embeddings >= 0, ValueError, "num_embeddings must be >= 0, got ", num_embeddings);
  CF_CHECK(ga.view.ndim >= 1, ValueError, "grad_output must have at least 1 dimension, got a scalar");
  int64_t pad = -1;
  if (!padding_idx.is_none()) {
    pad = padding_idx.cast<int64_t>();
    CF_CHECK(pad >= -num_embeddings && pad < num_embeddings, IndexError, "padding_idx ", pad, " is outside [-",
             num_embeddings, ", ", num_embeddings, ")");
    if (pad < 0) pad += num_embeddings;  // torch's negative index
  }
  Arg oa = output(py::none(), {num_embeddings, ga.view.size(-1)}, {}, false, &ga);
  {
    py::gil_scoped_release nogil;
    cf::ops::embedding_backward(ia.view, ga.view, num_embeddings, pad, oa.view);
  }
  return oa.result();
}

cf::ops::Reduction reduction_arg(const std::string& r) {
  if (r == "mean") return cf::ops::Reduction::mean;
  if (r == "sum") return cf::ops::Reduction::sum;
  if (r == "none") return cf::ops::Reduction::none;
  raise<ValueError>("reduction must be 'mean', 'sum' or 'none', got '", r, "'");
}

// (loss: float, or the per-row losses for "none"; dlogits or None)
py::tuple cross_entropy(const ArrayIn& logits, const ArrayIn& labels, int64_t ignore_index, float label_smoothing,
                        const std::string& reduction, bool return_grad) {
  const cf::ops::Reduction red = reduction_arg(reduction);
  Arg xa = float_arg(logits, "logits"), la = ids_arg(labels, "labels", /*int32_ok=*/false), ra, ga;
  OptionalView per_row, grad;
  if (red == cf::ops::Reduction::none) {
    CF_CHECK(xa.view.ndim >= 1, ValueError, "logits must have at least 1 dimension (the classes), got a scalar");
    ra = output(py::none(), {xa.view.shape, xa.view.shape + xa.view.ndim - 1}, {}, false, &xa);
    per_row = ra.view;
  }
  if (return_grad) {
    ga = output(py::none(), {xa.view.shape, xa.view.shape + xa.view.ndim}, {}, false, &xa);
    grad = ga.view;
  }
  cf::ops::CrossEntropyResult r;
  {
    py::gil_scoped_release nogil;
    r = cf::ops::cross_entropy(xa.view, la.view, ignore_index, label_smoothing, red, per_row, grad);
  }
  py::object loss = red == cf::ops::Reduction::none ? ra.result() : py::object(py::float_(r.loss));
  return py::make_tuple(loss, return_grad ? ga.result() : py::object(py::none()));
}

// (dx, dweight, dbias)
py::tuple linear_backward(const ArrayIn& grad_output, const ArrayIn& x, const ArrayIn& weight,
                          const py::typing::Optional<py::str>& activation, const OptionalArrayIn& pre_activation) {
  Arg ga = float_arg(grad_output, "grad_output"), xa = float_arg(x, "x"), pa;
  CF_CHECK(!py::isinstance<cf::ops::PackedWeight>(weight), TypeError,
           "linear_backward needs the float32 weight, not a PackedWeight (its .unpack() gives it back)");
  Arg wa = float_arg(weight, "weight");
  OptionalView pre = optional_float(pre_activation, "pre_activation", pa);
  Activation act = Activation::none;
  if (!activation.is_none()) {
    const std::string name = activation.cast<std::string>();
    CF_CHECK(name != "none", ValueError, "activation must be None, 'relu', 'gelu' or 'gelu_tanh', got 'none'");
    act = cf::ops::activation_from_name(name);
  }
  cf::ops::linear_shape(xa.view, cf::ops::WeightRef(wa.view), OptionalView(), OptionalView());
  Arg dx = output(py::none(), {xa.view.shape, xa.view.shape + xa.view.ndim}, {}, false, &xa);
  Arg dw = output(py::none(), {wa.view.shape[0], wa.view.shape[1]}, {}, false, &xa);
  Arg db = output(py::none(), {wa.view.shape[0]}, {}, false, &xa);
  {
    py::gil_scoped_release nogil;
    cf::ops::linear_backward(ga.view, xa.view, wa.view, pre, act, dx.view, dw.view, db.view);
  }
  return py::make_tuple(dx.result(), dw.result(), db.result());
}

}  // namespace

void register_train(py::module_& m) {
  m.def("linear_backward", &linear_backward, py::arg("grad_output"), py::arg("x"), py::arg("weight"),
        py::arg("activation") = py::none(), py::arg("pre_activation") = py::none());
  m.def("embedding_backward", &embedding_backward, py::arg("grad_output"), py::arg("ids"), py::arg("num_embeddings"),
        py::arg("padding_idx") = py::none());
  m.def("cross_entropy", &cross_entropy, py::arg("logits"), py::arg("labels"), py::arg("ignore_index") = -100,
        py::arg("label_smoothing") = 0.0, py::arg("reduction") = "mean", py::arg("return_grad") = false);
  m.def("layer_norm_backward", &layer_norm_backward, py::arg("grad_output"), py::arg("x"),
        py::arg("weight") = py::none(), py::arg("eps") = 1e-5, py::arg("residual") = py::none());
  m.def("gelu_backward", &gelu_backward, py::arg("grad_output"), py::arg("x"), py::arg("approximate") = "none");
  m.def("relu_backward",
        [](const ArrayIn& grad_output, const ArrayIn& x) { return activation_backward(grad_output, x, Activation::relu); },
        py::arg("grad_output"), py::arg("x"));
  m.def("softmax_backward", &softmax_backward, py::arg("grad_output"), py::arg("output"), py::arg("axis") = -1);
}

}  // namespace cf::pyext
