#include "ops/common.h"

namespace cf::ops {

Activation activation_from_name(const std::string& name) {
  if (name == "none") return Activation::none;
  if (name == "relu") return Activation::relu;
  if (name == "gelu") return Activation::gelu;
  if (name == "gelu_tanh") return Activation::gelu_tanh;
  raise<ValueError>("activation must be None, 'relu', 'gelu' or 'gelu_tanh', got '", name, "'");
}

void activation(const TensorView& x, Activation act, const TensorView& out) {
  expect_f32(x, "x");
  expect_out(out, shape_of(x), "activation");
  cpu::ActivationArgs a;
  a.n = x.numel();
  a.x = x.ptr<float>();
  a.y = out.ptr<float>();
  a.act = act;
  kernels().activation(a);
}

}  // namespace cf::ops
