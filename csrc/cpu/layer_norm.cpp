// LayerNorm over the last axis, optionally of x + residual in the same pass (a post-LN block's
// add & norm; sum_out hands the sum back for a pre-LN block). One row per step, three sweeps
// over a row held in L1: sum, centred sum of squares (two-pass, so no cancellation), normalise.
#include <cmath>

#include "core/threading.h"
#include "cpu/kernels.h"
#include "cpu/simd.h"

namespace cf::cpu::CF_ISA_NS {

void layer_norm(const LayerNormArgs& a) {
  const int64_t n = a.n;
  if (a.rows == 0 || n == 0) return;
  const int nt = threads_for(a.rows * n, 1 << 15);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t r = 0; r < a.rows; ++r) {
    const float* x = a.x + r * n;
    float* y = a.y + r * n;
    const float* s = x;  // the row being normalised
    Vec acc = Vec::zero();
    int64_t j = 0;
    if (a.residual) {
      const float* res = a.residual + r * n;
      float* dst = a.sum_out ? a.sum_out + r * n : y;
      for (; j + Vec::W <= n; j += Vec::W) {
        Vec v = Vec::load(x + j) + Vec::load(res + j);
        v.store(dst + j);
        acc = acc + v;
      }
      if (j < n) {
        int t = static_cast<int>(n - j);
        Vec v = Vec::load_partial(x + j, t) + Vec::load_partial(res + j, t);
        v.store_partial(dst + j, t);
        acc = acc + v;
      }
      s = dst;
    } else {
      for (; j + Vec::W <= n; j += Vec::W) acc = acc + Vec::load(x + j);
      if (j < n) acc = acc + Vec::load_partial(x + j, static_cast<int>(n - j));
    }
    const float mean = reduce_add(acc) / static_cast<float>(n);
    const Vec vm = Vec::set1(mean);
    Vec sq = Vec::zero();
    for (j = 0; j + Vec::W <= n; j += Vec::W) { Vec d = Vec::load(s + j) - vm; sq = fma(d, d, sq); }
    if (j < n) {
      int t = static_cast<int>(n - j);
      float d[Vec::W] = {};  // lanes past n stay 0 rather than -mean
      (Vec::load_partial(s + j, t) - vm).store_partial(d, t);
      Vec dv = Vec::load(d);
      sq = fma(dv, dv, sq);
    }
    const float rstd = 1.0f / std::sqrt(reduce_add(sq) / static_cast<float>(n) + a.eps);
    const Vec vr = Vec::set1(rstd);
    for (j = 0; j < n; j += Vec::W) {
      int t = static_cast<int>(n - j < Vec::W ? n - j : Vec::W);
      Vec v = (Vec::load_partial(s + j, t) - vm) * vr;
      if (a.weight) v = v * Vec::load_partial(a.weight + j, t);
      if (a.bias) v = v + Vec::load_partial(a.bias + j, t);
      if (t == Vec::W) v.store(y + j); else v.store_partial(y + j, t);
    }
  }
}

}  // namespace cf::cpu::CF_ISA_NS
