// coreformer._core's training ops: the backward of each forward (and, as they arrive, losses and
// optimiser steps). Conversion, argument checks and GIL release only, as in module.cpp.
#include "train.h"

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "convert.h"
#include "core/philox.h"
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
// An optional array the caller gives for a result (a parameter's slot of a flat gradient buffer): checked
// here so the message names it; None lets output() allocate.
void check_given_out(py::handle out, const std::vector<int64_t>& shape, const char* name) {
  if (out.is_none()) return;
  CF_CHECK(py::isinstance<py::array>(out), TypeError, name, " must be None or a float32 numpy array, got ",
           std::string(py::str(py::type::of(out).attr("__name__"))));
  const Arg a = inout_float_arg(out, name);  // float32, C-contiguous, aligned, writable: or an error naming it
  std::vector<int64_t> got(a.view.shape, a.view.shape + a.view.ndim);
  CF_CHECK(got == shape, ValueError, name, " has shape ", cf::shape_str(got.data(), got.size()), " but the gradient has shape ",
           cf::shape_str(shape.data(), shape.size()));
}

py::tuple cross_entropy(const ArrayIn& logits, const ArrayIn& labels, int64_t ignore_index, float label_smoothing,
                        const std::string& reduction, bool return_grad, py::handle grad_out) {
  const cf::ops::Reduction red = reduction_arg(reduction);
  Arg xa = float_arg(logits, "logits"), la = ids_arg(labels, "labels", /*int32_ok=*/false), ra, ga;
  OptionalView per_row, grad;
  if (red == cf::ops::Reduction::none) {
    CF_CHECK(xa.view.ndim >= 1, ValueError, "logits must have at least 1 dimension (the classes), got a scalar");
    ra = output(py::none(), {xa.view.shape, xa.view.shape + xa.view.ndim - 1}, {}, false, &xa);
    per_row = ra.view;
  }
  CF_CHECK(return_grad || grad_out.is_none(), ValueError, "grad_out is for return_grad=True");
  if (return_grad) {
    const std::vector<int64_t> shape(xa.view.shape, xa.view.shape + xa.view.ndim);
    check_given_out(grad_out, shape, "grad_out");
    ga = output(grad_out, shape, {&xa, &la}, false, &xa);
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
                          const py::typing::Optional<py::str>& activation, const OptionalArrayIn& pre_activation,
                          py::handle dweight_out, py::handle dbias_out) {
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
  const std::vector<int64_t> wshape{wa.view.shape[0], wa.view.shape[1]}, bshape{wa.view.shape[0]};
  check_given_out(dweight_out, wshape, "dweight_out");
  check_given_out(dbias_out, bshape, "dbias_out");
  Arg dw = output(dweight_out, wshape, {&ga, &xa, &wa, &pa}, false, &xa);
  Arg db = output(dbias_out, bshape, {&ga, &xa, &wa, &pa, &dw}, false, &xa);
  {
    py::gil_scoped_release nogil;
    cf::ops::linear_backward(ga.view, xa.view, wa.view, pre, act, dx.view, dw.view, db.view);
  }
  return py::make_tuple(dx.result(), dw.result(), db.result());
}

std::optional<float> scale_arg(const py::typing::Optional<py::float_>& scale) {
  if (scale.is_none()) return std::nullopt;
  const float s = scale.cast<float>();
  CF_CHECK(std::isfinite(s), ValueError, "scale must be finite, got ", s);
  return s;
}

// (out, lse): the forward of scaled_dot_product_attention with each row's log-sum-exp, for the backward.
py::tuple sdpa_forward(const ArrayIn& query, const ArrayIn& key, const ArrayIn& value,
                       const OptionalArrayIn& attn_mask, bool is_causal, const py::typing::Optional<py::float_>& scale,
                       double dropout_p, uint64_t seed, uint64_t offset) {
  const cf::cpu::AttentionDropout drop{dropout_p, seed, offset};
  Arg qa = strided_float_arg(query, "query"), ka = strided_float_arg(key, "key"), va = strided_float_arg(value, "value"), ma;
  OptionalView m = optional_mask(attn_mask, "attn_mask", ma);
  const std::optional<float> s = scale_arg(scale);
  Arg oa = output(py::none(), cf::ops::attention_shape(qa.view, ka.view, va.view, m), {}, false, &qa);
  Arg la = output(py::none(), {qa.view.shape, qa.view.shape + qa.view.ndim - 1}, {}, false, &qa);
  {
    py::gil_scoped_release nogil;
    cf::ops::scaled_dot_product_attention(qa.view, ka.view, va.view, m, is_causal, s, oa.view, la.view, drop);
  }
  return py::make_tuple(oa.result(), la.result());
}

// (dquery, dkey, dvalue)
py::tuple sdpa_backward(const ArrayIn& grad_output, const ArrayIn& query, const ArrayIn& key, const ArrayIn& value,
                        const OptionalArrayIn& output_, const OptionalArrayIn& lse, const OptionalArrayIn& attn_mask,
                        bool is_causal, const py::typing::Optional<py::float_>& scale, double dropout_p, uint64_t seed,
                        uint64_t offset) {
  const cf::cpu::AttentionDropout drop{dropout_p, seed, offset};
  Arg ga = float_arg(grad_output, "grad_output"), qa = strided_float_arg(query, "query"),
      ka = strided_float_arg(key, "key"), va = strided_float_arg(value, "value"), oa, la, ma;
  OptionalView o = optional_float(output_, "output", oa);
  OptionalView l = optional_float(lse, "lse", la);
  OptionalView m = optional_mask(attn_mask, "attn_mask", ma);
  const std::optional<float> s = scale_arg(scale);
  cf::ops::attention_shape(qa.view, ka.view, va.view, m);
  Arg dq = output(py::none(), {qa.view.shape, qa.view.shape + qa.view.ndim}, {}, false, &ga);
  Arg dk = output(py::none(), {ka.view.shape, ka.view.shape + ka.view.ndim}, {}, false, &ga);
  Arg dv = output(py::none(), {va.view.shape, va.view.shape + va.view.ndim}, {}, false, &ga);
  {
    py::gil_scoped_release nogil;
    cf::ops::scaled_dot_product_attention_backward(ga.view, qa.view, ka.view, va.view, o, l, m, is_causal, s, dq.view,
                                                   dk.view, dv.view, drop);
  }
  return py::make_tuple(dq.result(), dk.result(), dv.result());
}

// Lists of arrays: parameters and optimiser state written in place (float32, C-contiguous, writable);
// gradients read (converted if need be). The Args keep the arrays alive while the GIL is released.
std::vector<Arg> inout_list(const py::typing::Iterable<ArrayIn>& xs, const char* name) {
  std::vector<Arg> out;
  size_t i = 0;
  for (py::handle x : xs) out.push_back(inout_float_arg(x, (std::string(name) + "[" + std::to_string(i++) + "]").c_str()));
  return out;
}

std::vector<Arg> in_list(const py::typing::Iterable<ArrayIn>& xs, const char* name) {
  std::vector<Arg> out;
  size_t i = 0;
  for (py::handle x : xs) out.push_back(float_arg(x, (std::string(name) + "[" + std::to_string(i++) + "]").c_str()));
  return out;
}

std::vector<cf::TensorView> views(const std::vector<Arg>& args) {
  std::vector<cf::TensorView> out;
  for (const Arg& a : args) out.push_back(a.view);
  return out;
}

double finite_arg(double x, const char* name, bool positive = false) {
  CF_CHECK(std::isfinite(x) && (!positive || x >= 0), ValueError, name, " must be a finite",
           positive ? " non-negative" : "", " number, got ", x);
  return x;
}

void adamw_step(const py::typing::Iterable<ArrayIn>& params, const py::typing::Iterable<ArrayIn>& grads,
                const py::typing::Iterable<ArrayIn>& exp_avgs, const py::typing::Iterable<ArrayIn>& exp_avg_sqs, double lr,
                double beta1, double beta2, double eps, double weight_decay, int64_t step, bool maximize) {
  const std::vector<Arg> p = inout_list(params, "params"), g = in_list(grads, "grads"),
                         m = inout_list(exp_avgs, "exp_avgs"), v = inout_list(exp_avg_sqs, "exp_avg_sqs");
  cf::ops::AdamWHyper h;
  h.lr = finite_arg(lr, "lr", true);
  CF_CHECK(beta1 >= 0 && beta1 < 1, ValueError, "betas[0] must be in [0, 1), got ", beta1);
  CF_CHECK(beta2 >= 0 && beta2 < 1, ValueError, "betas[1] must be in [0, 1), got ", beta2);
  h.beta1 = beta1;
  h.beta2 = beta2;
  h.eps = finite_arg(eps, "eps", true);
  h.weight_decay = finite_arg(weight_decay, "weight_decay", true);
  h.step = step;
  h.maximize = maximize;
  py::gil_scoped_release nogil;
  cf::ops::adamw_step(views(p), views(g), views(m), views(v), h);
}

void sgd_step(const py::typing::Iterable<ArrayIn>& params, const py::typing::Iterable<ArrayIn>& grads,
              const py::typing::Iterable<ArrayIn>& momentum_buffers, double lr, double momentum, double dampening,
              double weight_decay, bool nesterov, bool first_step, bool maximize) {
  const std::vector<Arg> p = inout_list(params, "params"), g = in_list(grads, "grads"),
                         b = inout_list(momentum_buffers, "momentum_buffers");
  cf::ops::SGDHyper h;
  h.lr = finite_arg(lr, "lr", true);
  h.momentum = finite_arg(momentum, "momentum", true);
  h.dampening = finite_arg(dampening, "dampening");
  h.weight_decay = finite_arg(weight_decay, "weight_decay", true);
  h.nesterov = nesterov;
  h.first_step = first_step;
  h.maximize = maximize;
  py::gil_scoped_release nogil;
  cf::ops::sgd_step(views(p), views(g), views(b), h);
}

double total_norm(const py::typing::Iterable<ArrayIn>& xs, bool inf_norm) {
  const std::vector<Arg> a = in_list(xs, "grads");
  py::gil_scoped_release nogil;
  return cf::ops::total_norm(views(a), inf_norm);
}

void scale_all(const py::typing::Iterable<ArrayIn>& xs, double s) {
  const std::vector<Arg> a = inout_list(xs, "grads");
  const float f = static_cast<float>(finite_arg(s, "scale"));
  py::gil_scoped_release nogil;
  cf::ops::scale_all(views(a), f);
}

// dropout(x) (and its backward: the same call on the gradient), optionally with the kept mask (bool)
// (seed and offset: Python ints in [0, 2**64); pybind11 refuses others with a TypeError)
py::object dropout(const ArrayIn& x, double p, uint64_t s, uint64_t o, bool return_mask) {
  Arg xa = float_arg(x, "x");
  Arg ya = output(py::none(), {xa.view.shape, xa.view.shape + xa.view.ndim}, {}, false, &xa);
  py::array mask;
  cf::OptionalView mv;
  if (return_mask) {
    mask = py::array(py::dtype::of<bool>(), std::vector<py::ssize_t>(xa.view.shape, xa.view.shape + xa.view.ndim));
    mv = cf::TensorView(mask.mutable_data(), cf::DType::boolean, xa.view.ndim, xa.view.shape);
  }
  {
    py::gil_scoped_release nogil;
    cf::ops::dropout(xa.view, p, s, o, ya.view, mv);
  }
  if (return_mask) return py::make_tuple(ya.result(), mask);
  return ya.result();
}

// Words [offset, offset + n) of the Philox stream of `seed` that dropout reads (for tests and for users
// who reproduce a mask elsewhere).
py::array_t<uint32_t> philox_words(int64_t n, uint64_t seed, uint64_t offset) {
  CF_CHECK(n >= 0, ValueError, "n must be >= 0, got ", n);
  py::array_t<uint32_t> out(n);
  uint32_t* w = out.mutable_data();
  for (int64_t i = 0; i < n; ++i) w[i] = cf::philox_word(seed, offset + static_cast<uint64_t>(i));
  return out;
}

// (dquery, dkeys, dvalues, dw_query, dw_key, dv)
py::tuple additive_attention_backward(const ArrayIn& grad_output, const ArrayIn& query, const ArrayIn& keys,
                                      const ArrayIn& values, const ArrayIn& w_query, const ArrayIn& w_key,
                                      const ArrayIn& v, const OptionalArrayIn& mask) {
  Arg ga = float_arg(grad_output, "grad_output"), qa = float_arg(query, "query"), ka = float_arg(keys, "keys"),
      va = float_arg(values, "values"), wqa = float_arg(w_query, "w_query"), wka = float_arg(w_key, "w_key"),
      vva = float_arg(v, "v"), ma;
  OptionalView m = optional_bool(mask, "mask", ma);
  cf::ops::additive_attention_shape(qa.view, ka.view, va.view, wqa.view, wka.view, vva.view, m);
  auto like = [&](const Arg& x) {
    return output(py::none(), {x.view.shape, x.view.shape + x.view.ndim}, {}, false, &ga);
  };
  Arg dq = like(qa), dk = like(ka), dv = like(va), dwq = like(wqa), dwk = like(wka), dvv = like(vva);
  {
    py::gil_scoped_release nogil;
    cf::ops::additive_attention_backward(ga.view, qa.view, ka.view, va.view, wqa.view, wka.view, vva.view, m, dq.view,
                                         dk.view, dv.view, dwq.view, dwk.view, dvv.view);
  }
  return py::make_tuple(dq.result(), dk.result(), dv.result(), dwq.result(), dwk.result(), dvv.result());
}

}  // namespace

void register_train(py::module_& m) {
  m.def("additive_attention_backward", &additive_attention_backward, py::arg("grad_output"), py::arg("query"),
        py::arg("keys"), py::arg("values"), py::arg("w_query"), py::arg("w_key"), py::arg("v"),
        py::arg("mask") = py::none());
  m.def("philox_words", &philox_words, py::arg("n"), py::arg("seed"), py::arg("offset") = 0);
  m.def("dropout", &dropout, py::arg("x"), py::arg("p"), py::arg("seed"), py::arg("offset") = 0,
        py::arg("return_mask") = false);
  m.def("adamw_step", &adamw_step, py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
        py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("step"),
        py::arg("maximize") = false);
  m.def("sgd_step", &sgd_step, py::arg("params"), py::arg("grads"), py::arg("momentum_buffers"), py::arg("lr"),
        py::arg("momentum") = 0.0, py::arg("dampening") = 0.0, py::arg("weight_decay") = 0.0,
        py::arg("nesterov") = false, py::arg("first_step") = false, py::arg("maximize") = false);
  m.def("total_norm", &total_norm, py::arg("arrays"), py::arg("inf_norm") = false);
  m.def("scale_all", &scale_all, py::arg("arrays"), py::arg("scale"));
  m.def("scaled_dot_product_attention_forward", &sdpa_forward, py::arg("query"), py::arg("key"), py::arg("value"),
        py::arg("attn_mask") = py::none(), py::arg("is_causal") = false, py::arg("scale") = py::none(), py::kw_only(),
        py::arg("dropout_p") = 0.0, py::arg("seed") = 0, py::arg("offset") = 0);
  m.def("scaled_dot_product_attention_backward", &sdpa_backward, py::arg("grad_output"), py::arg("query"),
        py::arg("key"), py::arg("value"), py::arg("output") = py::none(), py::arg("lse") = py::none(),
        py::arg("attn_mask") = py::none(), py::arg("is_causal") = false, py::arg("scale") = py::none(), py::kw_only(),
        py::arg("dropout_p") = 0.0, py::arg("seed") = 0, py::arg("offset") = 0);
  m.def("linear_backward", &linear_backward, py::arg("grad_output"), py::arg("x"), py::arg("weight"),
        py::arg("activation") = py::none(), py::arg("pre_activation") = py::none(), py::kw_only(),
        py::arg("dweight_out") = py::none(), py::arg("dbias_out") = py::none());
  m.def("embedding_backward", &embedding_backward, py::arg("grad_output"), py::arg("ids"), py::arg("num_embeddings"),
        py::arg("padding_idx") = py::none());
  m.def("cross_entropy", &cross_entropy, py::arg("logits"), py::arg("labels"), py::arg("ignore_index") = -100,
        py::arg("label_smoothing") = 0.0, py::arg("reduction") = "mean", py::arg("return_grad") = false, py::kw_only(),
        py::arg("grad_out") = py::none());
  m.def("layer_norm_backward", &layer_norm_backward, py::arg("grad_output"), py::arg("x"),
        py::arg("weight") = py::none(), py::arg("eps") = 1e-5, py::arg("residual") = py::none());
  m.def("gelu_backward", &gelu_backward, py::arg("grad_output"), py::arg("x"), py::arg("approximate") = "none");
  m.def("relu_backward",
        [](const ArrayIn& grad_output, const ArrayIn& x) { return activation_backward(grad_output, x, Activation::relu); },
        py::arg("grad_output"), py::arg("x"));
  m.def("softmax_backward", &softmax_backward, py::arg("grad_output"), py::arg("output"), py::arg("axis") = -1);
}

}  // namespace cf::pyext
