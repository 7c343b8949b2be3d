// Row operations shared by softmax and the two attentions: max, exp-and-sum, scale.
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

inline void scale_row(float* y, int64_t n, float c) {
  const Vec vc = Vec::set1(c);
  int64_t j = 0;
  for (; j + Vec::W <= n; j += Vec::W) (Vec::load(y + j) * vc).store(y + j);
  if (j < n) (Vec::load_partial(y + j, static_cast<int>(n - j)) * vc).store_partial(y + j, static_cast<int>(n - j));
}

}  // namespace cf::cpu::CF_ISA_NS
