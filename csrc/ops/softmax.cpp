#include "ops/common.h"

namespace cf::ops {

int softmax_axis(const TensorView& x, int64_t axis) {
  expect_float(x, "x");
  CF_CHECK(x.ndim >= 1, ValueError, "softmax: x must have at least 1 dimension, got a scalar");
  CF_CHECK(axis >= -x.ndim && axis < x.ndim, IndexError, "axis ", axis, " is out of bounds for x of shape ",
           x.shape_str());
  return static_cast<int>(axis < 0 ? axis + x.ndim : axis);
}

void softmax(const TensorView& x, int64_t axis, const TensorView& out) {
  const int ax = softmax_axis(x, axis);
  expect_out(out, shape_of(x), "softmax");
  cpu::SoftmaxArgs a;
  a.outer = 1; a.inner = 1;
  for (int i = 0; i < ax; ++i) a.outer *= x.shape[i];
  for (int i = ax + 1; i < x.ndim; ++i) a.inner *= x.shape[i];
  a.n = x.shape[ax];
  const Device dev = common_device({{"x", &x}, {"out", &out}});
  if (on_gpu(dev)) {
    expect_same_dtype({{"out", &out}}, x.dtype);
    cuda::softmax(x.data, out.data, a.outer, a.n, a.inner, x.dtype, dev.index);
    return;
  }
  a.x = x.ptr<float>();
  a.y = out.ptr<float>();
  kernels().softmax(a);
}

void softmax_backward(const TensorView& output, const TensorView& grad_output, int64_t axis, const TensorView& out) {
  const int ax = softmax_axis(output, axis);
  expect_float(grad_output, "grad_output");
  CF_CHECK(shape_of(grad_output) == shape_of(output), ValueError, "grad_output has shape ", grad_output.shape_str(),
           " but output has shape ", output.shape_str());
  expect_out(out, shape_of(output), "softmax_backward");
  cpu_only(common_device({{"output", &output}, {"grad_output", &grad_output}, {"out", &out}}), "softmax's backward");
  cpu::SoftmaxBackwardArgs a;
  a.outer = 1; a.inner = 1;
  for (int i = 0; i < ax; ++i) a.outer *= output.shape[i];
  for (int i = ax + 1; i < output.ndim; ++i) a.inner *= output.shape[i];
  a.n = output.shape[ax];
  a.y = output.ptr<float>();
  a.dy = grad_output.ptr<float>();
  a.dx = out.ptr<float>();
  kernels().softmax_backward(a);
}

}  // namespace cf::ops

namespace cf::ops {

void argmax(const TensorView& x, const TensorView& out) {
  expect_float(x, "x");
  CF_CHECK(x.ndim >= 1, ValueError, "argmax: x must have at least 1 dimension, got a scalar");
  const int64_t n = x.size(-1);
  int64_t rows = 1;
  for (int i = 0; i + 1 < x.ndim; ++i) rows *= x.shape[i];
  CF_CHECK(n >= 1 || rows == 0, ValueError, "argmax: x's last axis is empty, shape ", x.shape_str());
  const Device dev = common_device({{"x", &x}, {"out", &out}});
  CF_CHECK(out.dtype == DType::i64 && out.is_contiguous(), TypeError, "argmax: out must be a contiguous int64 array");
  const Shape want(x.shape, x.shape + x.ndim - 1);
  CF_CHECK(shape_of(out) == want, ValueError, "argmax: out has shape ", out.shape_str(), " but the result has shape ",
           shape_str(want));
  if (on_gpu(dev)) {
    cuda::argmax(x.data, rows, n, out.ptr<int64_t>(), x.dtype, dev.index);
    return;
  }
  const float* p = x.ptr<float>();
  int64_t* o = out.ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = p + r * n;
    int64_t best = 0;
    for (int64_t i = 1; i < n && row[best] == row[best]; ++i)  // NaN wins: stop at the first one
      if (row[i] > row[best] || row[i] != row[i]) best = i;
    o[r] = best;
  }
}

}  // namespace cf::ops
