#include <cmath>

#include "ops/backend.h"
#include "ops/common.h"

namespace cf::ops {

Shape linear_shape(const TensorView& x, const WeightRef& weight, const OptionalView& bias,
                   const OptionalView& residual) {
  expect_float(x, "x");
  if (weight.array) {
    expect_float(*weight.array, "weight");
    expect_ndim(*weight.array, 2, "weight");
  }
  CF_CHECK(x.ndim >= 1, ValueError, "linear: x must have at least 1 dimension, got a scalar");
  CF_CHECK(x.size(-1) == weight.cols(), ValueError, "linear: x has shape ", x.shape_str(), " and weight has shape ",
           weight.shape_str(), "; x's last axis (", x.size(-1), ") must equal weight.shape[1] (", weight.cols(), ")");
  expect_vector(bias, weight.rows(), "bias", "weight.shape[0]");
  Shape out = shape_of(x);
  out.back() = weight.rows();
  if (residual) {
    expect_float(*residual, "residual");
    CF_CHECK(shape_of(*residual) == out, ValueError, "linear: residual has shape ", residual->shape_str(),
             " but the output has shape ", shape_str(out));
  }
  return out;
}

void linear(const TensorView& x, const WeightRef& weight, const OptionalView& bias, Activation act,
            const OptionalView& residual, const TensorView& out) {
  expect_out(out, linear_shape(x, weight, bias, residual), "linear");
  int64_t rows = 1;
  for (int i = 0; i + 1 < x.ndim; ++i) rows *= x.shape[i];
  const Device dev = common_device({{"x", &x}, {"weight", weight.array}, {"bias", opt(bias)},
                                    {"residual", opt(residual)}, {"out", &out}});
  if (on_gpu(dev))
    expect_same_dtype({{"weight", &gpu_weight(weight, "weight")}, {"bias", opt(bias)}, {"residual", opt(residual)},
                       {"out", &out}}, x.dtype);
  Backend(dev, x.dtype).gemm(x.data, rows, x.size(-1), weight, bias, 0, weight.rows(), out.data, act,
                             residual ? residual->data : nullptr);
}

const TensorView& gpu_weight(const WeightRef& w, const char* name) {
  CF_CHECK(w.array, ValueError, name, " is a PackedWeight, which lives in CPU memory; on the GPU pass the weight as a "
           "coreformer.Tensor");
  return *w.array;
}

void gemm_rows(const float* x, int64_t rows, int64_t kdim, const WeightRef& w, const OptionalView& b, int64_t w0,
               int64_t n, float* y, Activation act, const float* residual) {
  cpu::GemmArgs g;
  g.M = rows; g.N = n; g.K = kdim;
  g.a = x; g.lda = kdim;
  std::unique_ptr<float[]> tmp;
  set_gemm_weight(g, w, w0, tmp);
  g.c = y; g.ldc = n;
  g.bias = b ? b->ptr<float>() + w0 : nullptr;
  g.residual = residual; g.ldr = n;
  g.act = act;
  kernels().gemm(g);
}

}  // namespace cf::ops
