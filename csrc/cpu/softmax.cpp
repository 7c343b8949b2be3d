// Softmax over the middle axis of (outer, n, inner). inner == 1 (the last axis) runs along
// contiguous rows; otherwise the vector lanes run across `inner`. A slice whose every element is
// -inf gives zeros (the convention of scaled_dot_product_attention), not NaN.
#include <limits>

#include "core/threading.h"
#include "cpu/kernels.h"
#include "cpu/row.h"
#include "cpu/simd.h"

namespace cf::cpu::CF_ISA_NS {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void softmax_rows(const SoftmaxArgs& a) {
  const int64_t n = a.n;
  const int nt = threads_for(a.outer * n, 1 << 15);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t r = 0; r < a.outer; ++r) {
    const float* x = a.x + r * n;
    float* y = a.y + r * n;
    const float mx = row_max(x, n);
    if (mx == kNegInf) {  // every element -inf: zeros (NaN if any is NaN)
      const float fill = has_nan(x, n) ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
      for (int64_t j = 0; j < n; ++j) y[j] = fill;
      continue;
    }
    // the row after next is fetched meanwhile: row_max's sweep would otherwise wait on memory
    scale_row(y, n, 1.0f / exp_sub_sum(x, y, n, mx, r + 2 < a.outer ? x + 2 * n : nullptr));
  }
}

void softmax_strided(const SoftmaxArgs& a) {
  const int64_t n = a.n, inner = a.inner;
  const int64_t chunks = ceil_div(inner, Vec::W);
  const int nt = threads_for(a.outer * n * inner, 1 << 15);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t t = 0; t < a.outer * chunks; ++t) {
    const int64_t o = t / chunks, c0 = (t % chunks) * Vec::W;
    const int w = static_cast<int>(imin(Vec::W, inner - c0));
    const float* x = a.x + o * n * inner + c0;
    float* y = a.y + o * n * inner + c0;
    Vec vmax = Vec::set1(kNegInf);
    for (int64_t j = 0; j < n; ++j) vmax = max(vmax, Vec::load_partial(x + j * inner, w));
    // all -inf: subtract 0 instead, every exp is 0, and the 0-sum below gives zeros
    vmax = select_lt(vmax, Vec::set1(-std::numeric_limits<float>::max()), Vec::zero(), vmax);
    Vec sum = Vec::zero();
    for (int64_t j = 0; j < n; ++j) {
      Vec e = exp_le0(Vec::load_partial(x + j * inner, w) - vmax);
      e.store_partial(y + j * inner, w);
      sum = sum + e;
    }
    // a sum is ~1 or more (the max's own term) but for a slice of -inf (0: zeros); NaN stays NaN
    Vec inv = select_lt(sum, Vec::set1(std::numeric_limits<float>::min()), Vec::zero(), Vec::set1(1.0f) / sum);
    for (int64_t j = 0; j < n; ++j) (Vec::load_partial(y + j * inner, w) * inv).store_partial(y + j * inner, w);
  }
}

// dx = y (dy - <dy, y>) along each row, the dot in float64 (deterministic: one thread per row).
void softmax_backward_rows(const SoftmaxBackwardArgs& a) {
  const int64_t n = a.n;
  const int nt = threads_for(a.outer * n, 1 << 15);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t r = 0; r < a.outer; ++r) {
    const float* y = a.y + r * n;
    const float* dy = a.dy + r * n;
    float* dx = a.dx + r * n;
    const auto dot_yd = static_cast<float>(row_dot_f64(y, dy, n));
    const Vec d = Vec::set1(dot_yd);
    int64_t j = 0;
    for (; j + Vec::W <= n; j += Vec::W) (Vec::load(y + j) * (Vec::load(dy + j) - d)).store(dx + j);
    if (j < n) {
      const int t = static_cast<int>(n - j);
      (Vec::load_partial(y + j, t) * (Vec::load_partial(dy + j, t) - d)).store_partial(dx + j, t);
    }
  }
}

void softmax_backward_strided(const SoftmaxBackwardArgs& a) {
  const int64_t n = a.n, inner = a.inner;
  const int64_t chunks = ceil_div(inner, Vec::W);
  const int nt = threads_for(a.outer * n * inner, 1 << 15);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t t = 0; t < a.outer * chunks; ++t) {
    const int64_t o = t / chunks, c0 = (t % chunks) * Vec::W;
    const int w = static_cast<int>(imin(Vec::W, inner - c0));
    const int64_t base = o * n * inner + c0;
    Vec s = Vec::zero();
    for (int64_t j = 0; j < n; ++j)
      s = fma(Vec::load_partial(a.y + base + j * inner, w), Vec::load_partial(a.dy + base + j * inner, w), s);
    for (int64_t j = 0; j < n; ++j) {
      const int64_t at = base + j * inner;
      (Vec::load_partial(a.y + at, w) * (Vec::load_partial(a.dy + at, w) - s)).store_partial(a.dx + at, w);
    }
  }
}

}  // namespace

void softmax_backward(const SoftmaxBackwardArgs& a) {
  if (a.outer == 0 || a.n == 0 || a.inner == 0) return;
  if (a.inner == 1) softmax_backward_rows(a);
  else softmax_backward_strided(a);
}

void softmax(const SoftmaxArgs& a) {
  if (a.outer == 0 || a.n == 0 || a.inner == 0) return;
  if (a.inner == 1) softmax_rows(a);
  else softmax_strided(a);
}

}  // namespace cf::cpu::CF_ISA_NS
