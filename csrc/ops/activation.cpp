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
  expect_float(x, "x");
  expect_out(out, shape_of(x), "activation");
  const Device dev = common_device({{"x", &x}, {"out", &out}});
  if (on_gpu(dev)) {
    expect_same_dtype({{"out", &out}}, x.dtype);
    cuda::activation(x.data, out.data, x.numel(), act, x.dtype, dev.index);
    return;
  }
  cpu::ActivationArgs a;
  a.n = x.numel();
  a.x = x.ptr<float>();
  a.y = out.ptr<float>();
  a.act = act;
  kernels().activation(a);
}

void activation_backward(const TensorView& x, const TensorView& grad_output, Activation act, const TensorView& out) {
  expect_float(x, "x");
  expect_float(grad_output, "grad_output");
  CF_CHECK(shape_of(grad_output) == shape_of(x), ValueError, "grad_output has shape ", grad_output.shape_str(),
           " but x has shape ", x.shape_str());
  expect_out(out, shape_of(x), "activation_backward");
  cpu_only(common_device({{"x", &x}, {"grad_output", &grad_output}, {"out", &out}}), "the activations' backward");
  cpu::ActivationBackwardArgs a;
  a.n = x.numel();
  a.x = x.ptr<float>();
  a.dy = grad_output.ptr<float>();
  a.dx = out.ptr<float>();
  a.act = act;
  kernels().activation_backward(a);
}

}  // namespace cf::ops
