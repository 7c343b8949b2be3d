#include <cmath>

#include "ops/common.h"

namespace cf::ops {

Shape linear_shape(const TensorView& x, const WeightRef& weight, const OptionalView& bias,
                   const OptionalView& residual) {
  expect_f32(x, "x");
  if (weight.array) {
    expect_f32(*weight.array, "weight");
    expect_ndim(*weight.array, 2, "weight");
  }
  CF_CHECK(x.ndim >= 1, ValueError, "linear: x must have at least 1 dimension, got a scalar");
  CF_CHECK(x.size(-1) == weight.cols(), ValueError, "linear: x has shape ", x.shape_str(), " and weight has shape ",
           weight.shape_str(), "; x's last axis (", x.size(-1), ") must equal weight.shape[1] (", weight.cols(), ")");
  expect_vector(bias, weight.rows(), "bias", "weight.shape[0]");
  Shape out = shape_of(x);
  out.back() = weight.rows();
  if (residual) {
    expect_f32(*residual, "residual");
    CF_CHECK(shape_of(*residual) == out, ValueError, "linear: residual has shape ", residual->shape_str(),
             " but the output has shape ", shape_str(out));
  }
  return out;
}

void linear(const TensorView& x, const WeightRef& weight, const OptionalView& bias, Activation act,
            const OptionalView& residual, const TensorView& out) {
  expect_out(out, linear_shape(x, weight, bias, residual), "linear");
  cpu::GemmArgs g;
  g.K = x.size(-1);
  g.M = 1;
  for (int i = 0; i + 1 < x.ndim; ++i) g.M *= x.shape[i];
  g.N = weight.rows();
  g.a = x.ptr<float>(); g.lda = g.K;
  std::unique_ptr<float[]> tmp;
  set_gemm_weight(g, weight, 0, tmp);
  g.c = out.ptr<float>(); g.ldc = g.N;
  g.bias = bias ? bias->ptr<float>() : nullptr;
  g.residual = residual ? residual->ptr<float>() : nullptr;
  g.ldr = g.N;
  g.act = act;
  kernels().gemm(g);
}

}  // namespace cf::ops
