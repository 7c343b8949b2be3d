#include <algorithm>
#include <cmath>
#include <memory>

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

void linear_backward(const TensorView& grad_output, const TensorView& x, const TensorView& weight,
                     const OptionalView& pre_activation, Activation act, const TensorView& dx, const TensorView& dw,
                     const TensorView& db) {
  const Shape out_shape = linear_shape(x, WeightRef(weight), OptionalView(), OptionalView());
  expect_float(grad_output, "grad_output");
  CF_CHECK(shape_of(grad_output) == out_shape, ValueError, "grad_output has shape ", grad_output.shape_str(),
           " but linear(x, weight) has shape ", shape_str(out_shape));
  CF_CHECK(act == Activation::none || pre_activation, ValueError,
           "linear_backward with an activation needs pre_activation (x @ weight.T + bias, before the activation)");
  if (pre_activation) {
    expect_float(*pre_activation, "pre_activation");
    CF_CHECK(shape_of(*pre_activation) == out_shape, ValueError, "pre_activation has shape ",
             pre_activation->shape_str(), " but linear(x, weight) has shape ", shape_str(out_shape));
  }
  expect_float(x, "x");
  expect_float(weight, "weight");  // both read by rows, C-contiguous (the binding converts what is not)
  const int64_t N = weight.shape[0], K = weight.shape[1];
  int64_t M = 1;
  for (int i = 0; i + 1 < x.ndim; ++i) M *= x.shape[i];
  expect_out(dx, shape_of(x), "linear_backward (dx)");
  expect_out(dw, {N, K}, "linear_backward (dweight)");
  expect_out(db, {N}, "linear_backward (dbias)");
  cpu_only(common_device({{"grad_output", &grad_output}, {"x", &x}, {"weight", &weight},
                          {"pre_activation", opt(pre_activation)}, {"dx", &dx}}),
           "linear's backward");
  // dZ = dY * act'(Z)
  const float* dz = grad_output.ptr<float>();
  std::unique_ptr<float[]> dz_own;
  if (act != Activation::none && M * N > 0) {
    dz_own = scratch(M * N);
    cpu::ActivationBackwardArgs ab;
    ab.n = M * N;
    ab.x = pre_activation->ptr<float>();
    ab.dy = dz;
    ab.dx = dz_own.get();
    ab.act = act;
    kernels().activation_backward(ab);
    dz = dz_own.get();
  }
  cpu::ColumnSumArgs cs;  // db = the rows of dZ summed
  cs.rows = M; cs.n = N; cs.x = dz; cs.out = db.ptr<float>();
  kernels().column_sum(cs);
  if (M == 0 || N == 0 || K == 0) {  // an empty product: zeros
    std::fill(dx.ptr<float>(), dx.ptr<float>() + dx.numel(), 0.0f);
    std::fill(dw.ptr<float>(), dw.ptr<float>() + dw.numel(), 0.0f);
    return;
  }
  // dX (M, K) = dZ (M, N) @ W (N, K), and dW (N, K) = dZ^T (N, M) @ X (M, K): the GEMM packs W and X from
  // their rows (w_kn) into its own reused panel buffer, and dZ^T straight from dZ (a_km): no copies first. Each thread owns whole rows of dW (the GEMM's row
  // blocks), so no two add into the same place.
  cpu::GemmArgs g;
  g.M = M; g.N = K; g.K = N;
  g.a = dz; g.lda = N;
  g.w = weight.ptr<float>(); g.ldw = K; g.w_kn = true;
  g.c = dx.ptr<float>(); g.ldc = K;
  kernels().gemm(g);
  cpu::GemmArgs gw;
  gw.M = N; gw.N = K; gw.K = M;
  gw.a = dz; gw.lda = N; gw.a_km = true;  // dZ^T read in place
  gw.w = x.ptr<float>(); gw.ldw = K; gw.w_kn = true;
  gw.c = dw.ptr<float>(); gw.ldc = K;
  kernels().gemm(gw);
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
