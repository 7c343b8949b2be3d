// The checks and conversions every op shares.
#include "ops/common.h"

namespace cf::ops {

Device common_device(std::initializer_list<Named> args) {
  const Named* first = nullptr;
  for (const Named& a : args) {
    if (!a.view) continue;
    if (!first) { first = &a; continue; }
    CF_CHECK(a.view->device == first->view->device, ValueError, "arguments on different devices: ", first->name,
             " is on ", device_str(first->view->device), " but ", a.name, " is on ", device_str(a.view->device),
             " (move them with coreformer.tensor(..., device=...) or Tensor.to())");
  }
  return first ? first->view->device : Device{};
}

void expect_same_dtype(std::initializer_list<Named> args, DType dtype) {
  for (const Named& a : args)
    CF_CHECK(!a.view || a.view->dtype == dtype, TypeError, a.name, " is ", dtype_name(a.view->dtype),
             " but the op computes in ", dtype_name(dtype), " (the float arguments of a GPU op share one dtype)");
}

void expect_out(const TensorView& out, const Shape& shape, const char* op) {
  expect_float(out, "out");
  CF_CHECK(shape_of(out) == shape, ValueError, op, ": out has shape ", out.shape_str(), " but the result has shape ",
           shape_str(shape));
}

cpu::MaskArgs broadcast_mask(const TensorView& mask, int64_t B, int64_t H, int64_t Sq, int64_t Sk, const char* name,
                             bool true_means_masked) {
  CF_CHECK(mask.dtype == DType::boolean || mask.dtype == DType::f32, TypeError, name,
           " must be a bool or float array, got ", dtype_name(mask.dtype));
  CF_CHECK(mask.ndim <= 4, ValueError, name, " has shape ", mask.shape_str(), "; it must broadcast to (", B, ", ", H,
           ", ", Sq, ", ", Sk, ")");
  const int64_t target[4] = {B, H, Sq, Sk};
  int64_t st[4] = {0, 0, 0, 0};
  for (int i = 0; i < mask.ndim; ++i) {
    const int t = 4 - mask.ndim + i;
    const int64_t d = mask.shape[i];
    CF_CHECK(d == target[t] || d == 1, ValueError, name, " has shape ", mask.shape_str(), " which does not broadcast to (",
             B, ", ", H, ", ", Sq, ", ", Sk, ")");
    st[t] = d == 1 ? 0 : mask.strides[i];
  }
  cpu::MaskArgs m;
  m.kind = mask.dtype == DType::boolean ? cpu::MaskArgs::boolean : cpu::MaskArgs::additive;
  m.data = mask.data;
  m.sb = st[0]; m.sh = st[1]; m.sq = st[2]; m.sk = st[3];
  m.true_means_masked = true_means_masked;
  return m;
}

}  // namespace cf::ops
