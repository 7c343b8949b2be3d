#include "ops/common.h"

namespace cf::ops {

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
