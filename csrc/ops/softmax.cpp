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

}  // namespace cf::ops
