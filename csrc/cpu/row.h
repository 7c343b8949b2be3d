// Row operations shared by softmax and the two attentions: max, exp-and-sum, scale, dot, axpy.
#pragma once
#include <cstdint>
#include <limits>

#include "cpu/simd.h"

namespace cf::cpu::CF_ISA_NS {

inline float row_max(const float* x, int64_t n) {
  Vec m = Vec::set1(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + Vec::W <= n; j += Vec::W) m = max(m, Vec::load(x + j));
  float r = reduce_max(m);
  for (; j < n; ++j) r = x[j] > r ? x[j] : r;
  return r;
}

// y[j] = exp(x[j] - mx) (y may be x); returns the sum of the y[j].
inline float exp_sub_sum(const float* x, float* y, int64_t n, float mx) {
  const Vec vm = Vec::set1(mx);
  Vec acc = Vec::zero();
  int64_t j = 0;
  for (; j + Vec::W <= n; j += Vec::W) {
    Vec e = exp(Vec::load(x + j) - vm);
    e.store(y + j);
    acc = acc + e;
  }
  if (j < n) {
    const int t = static_cast<int>(n - j);
    exp(Vec::load_partial(x + j, t) - vm).store_partial(y + j, t);
    acc = acc + Vec::load_partial(y + j, t);  // reloaded: lanes past n are 0, not exp(-mx)
  }
  return reduce_add(acc);
}

inline float dot(const float* x, const float* y, int64_t n) {
  Vec acc0 = Vec::zero(), acc1 = Vec::zero();
  int64_t j = 0;
  for (; j + 2 * Vec::W <= n; j += 2 * Vec::W) {
    acc0 = fma(Vec::load(x + j), Vec::load(y + j), acc0);
    acc1 = fma(Vec::load(x + j + Vec::W), Vec::load(y + j + Vec::W), acc1);
  }
  for (; j < n; j += Vec::W) {
    const int t = static_cast<int>(n - j < Vec::W ? n - j : Vec::W);
    acc0 = fma(Vec::load_partial(x + j, t), Vec::load_partial(y + j, t), acc0);
  }
  return reduce_add(acc0 + acc1);
}

// y[0, n) += c * x[0, n)
inline void axpy(float c, const float* x, float* y, int64_t n) {
  const Vec vc = Vec::set1(c);
  int64_t j = 0;
  for (; j + Vec::W <= n; j += Vec::W) fma(vc, Vec::load(x + j), Vec::load(y + j)).store(y + j);
  if (j < n) {
    const int t = static_cast<int>(n - j);
    fma(vc, Vec::load_partial(x + j, t), Vec::load_partial(y + j, t)).store_partial(y + j, t);
  }
}

inline void scale_row(float* y, int64_t n, float c) {
  const Vec vc = Vec::set1(c);
  int64_t j = 0;
  for (; j + Vec::W <= n; j += Vec::W) (Vec::load(y + j) * vc).store(y + j);
  if (j < n) (Vec::load_partial(y + j, static_cast<int>(n - j)) * vc).store_partial(y + j, static_cast<int>(n - j));
}

}  // namespace cf::cpu::CF_ISA_NS
