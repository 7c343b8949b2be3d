#include "ops/backend.h"
#include "ops/common.h"

namespace cf::ops {

void layer_norm_check(const TensorView& x, const OptionalView& weight, const OptionalView& bias,
                      const OptionalView& residual, float eps, bool with_sum) {
  expect_float(x, "x");
  CF_CHECK(x.ndim >= 1, ValueError, "layer_norm: x must have at least 1 dimension, got a scalar");
  CF_CHECK(eps >= 0.0f, ValueError, "eps must be >= 0, got ", eps);
  expect_vector(weight, x.size(-1), "weight", "x's last axis");
  expect_vector(bias, x.size(-1), "bias", "x's last axis");
  CF_CHECK(!with_sum || residual, ValueError,
           "layer_norm: the sum x + residual (return_sum=True) needs a residual to add");
  if (residual) {
    expect_float(*residual, "residual");
    CF_CHECK(shape_of(*residual) == shape_of(x), ValueError, "residual has shape ", residual->shape_str(),
             " but x has shape ", x.shape_str());
  }
}

void layer_norm(const TensorView& x, const OptionalView& weight, const OptionalView& bias,
                const OptionalView& residual, float eps, const TensorView& out, const OptionalView& sum_out) {
  layer_norm_check(x, weight, bias, residual, eps, static_cast<bool>(sum_out));
  expect_out(out, shape_of(x), "layer_norm");
  if (sum_out) expect_out(*sum_out, shape_of(x), "layer_norm (sum)");
  const Device dev = common_device({{"x", &x}, {"weight", opt(weight)}, {"bias", opt(bias)},
                                    {"residual", opt(residual)}, {"out", &out}, {"sum", opt(sum_out)}});
  if (on_gpu(dev))
    expect_same_dtype({{"weight", opt(weight)}, {"bias", opt(bias)}, {"residual", opt(residual)}, {"out", &out},
                       {"sum", opt(sum_out)}}, x.dtype);
  const int64_t n = x.size(-1), rows = n == 0 ? 0 : x.numel() / n;
  Backend(dev, x.dtype).norm(x.data, rows, n, weight, bias, eps, out.data, residual ? residual->data : nullptr,
                             sum_out ? sum_out->data : nullptr);
}

void layer_norm_backward(const TensorView& grad_output, const TensorView& x, const OptionalView& weight,
                         const OptionalView& residual, float eps, const TensorView& dx, const OptionalView& dweight,
                         const TensorView& dbias) {
  layer_norm_check(x, weight, OptionalView(), residual, eps, false);
  expect_float(grad_output, "grad_output");
  CF_CHECK(shape_of(grad_output) == shape_of(x), ValueError, "grad_output has shape ", grad_output.shape_str(),
           " but x has shape ", x.shape_str());
  const int64_t n = x.size(-1), rows = n == 0 ? 0 : x.numel() / n;
  expect_out(dx, shape_of(x), "layer_norm_backward");
  expect_out(dbias, {n}, "layer_norm_backward (dbias)");
  if (dweight) expect_out(*dweight, {n}, "layer_norm_backward (dweight)");
  cpu_only(common_device({{"grad_output", &grad_output}, {"x", &x}, {"weight", opt(weight)},
                          {"residual", opt(residual)}, {"dx", &dx}}),
           "layer_norm's backward");
  cpu::LayerNormBackwardArgs a;
  a.rows = rows;
  a.n = n;
  a.x = x.ptr<float>();
  a.residual = residual ? residual->ptr<float>() : nullptr;
  a.weight = weight ? weight->ptr<float>() : nullptr;
  a.dy = grad_output.ptr<float>();
  a.dx = dx.ptr<float>();
  a.dweight = dweight ? dweight->ptr<float>() : nullptr;
  a.dbias = dbias.ptr<float>();
  a.eps = eps;
  kernels().layer_norm_backward(a);
}

}  // namespace cf::ops
