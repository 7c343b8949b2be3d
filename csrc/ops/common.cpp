// The checks and conversions every op shares.
#include <utility>

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

void expect_matrix(const WeightRef& w, int64_t rows, int64_t cols, const char* name) {
  if (w.array) {
    expect_float(*w.array, name);
    expect_ndim(*w.array, 2, name);
  }
  CF_CHECK(w.rows() == rows && w.cols() == cols, ValueError, name, " must have shape (", rows, ", ", cols, "), got ",
           w.shape_str());
}

int64_t check_kv_cache(const KVCacheRef& cache, int64_t B, int64_t H, int64_t Dh, int64_t extra, const char* k_name,
                       const char* v_name, const char* length_name) {
  const int64_t cap = cache.k.ndim == 4 ? cache.k.shape[2] : 0;
  for (const auto& [t, name] : {std::pair{&cache.k, k_name}, std::pair{&cache.v, v_name}}) {
    expect_float(*t, name);
    CF_CHECK(t->ndim == 4 && t->shape[0] == B && t->shape[1] == H && t->shape[2] == cap && t->shape[3] == Dh,
             ValueError, name, " must have shape (", B, ", ", H, ", capacity, ", Dh, ") like ", k_name, ", got ",
             t->shape_str());
  }
  CF_CHECK(cache.length >= 0 && cache.length <= cap && extra <= cap - cache.length, ValueError, length_name, " (",
           cache.length, ") + ", extra, " new positions must fit the cache's capacity (", cap, ")");
  return cap;
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
