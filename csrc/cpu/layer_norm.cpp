// LayerNorm over the last axis, optionally of x + residual in the same pass (a post-LN block's
// add & norm; sum_out hands the sum back for a pre-LN block). One row per step, three sweeps
// over a row held in L1: sum (in float64, so a constant row centres to exactly 0), centred sum of
// squares (two-pass, so no cancellation), normalise; the first two with four accumulators each (row.h).
#include <cmath>

#include "core/threading.h"
#include "cpu/kernels.h"
#include "cpu/row.h"
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
    if (a.residual) {
      const float* res = a.residual + r * n;
      float* dst = a.sum_out ? a.sum_out + r * n : y;
      int64_t j = 0;
      for (; j + Vec::W <= n; j += Vec::W) (Vec::load(x + j) + Vec::load(res + j)).store(dst + j);
      if (j < n) {
        const int t = static_cast<int>(n - j);
        (Vec::load_partial(x + j, t) + Vec::load_partial(res + j, t)).store_partial(dst + j, t);
      }
      s = dst;
    }
    const auto mean = static_cast<float>(row_sum_f64(s, n) / static_cast<double>(n));
    const Vec vm = Vec::set1(mean);
    const float rstd = 1.0f / std::sqrt(row_sq_dev(s, n, mean) / static_cast<float>(n) + a.eps);
    const Vec vr = Vec::set1(rstd);
    const Vec one = Vec::set1(1.0f);
    // the row after next is fetched while this one is written: the first sweep of each row would
    // otherwise wait on memory with nothing to overlap
    const float* ahead = r + 2 < a.rows ? a.x + (r + 2) * n : nullptr;
    const float* ahead_res = ahead && a.residual ? a.residual + (r + 2) * n : nullptr;
    int64_t j = 0;
    for (; j + Vec::W <= n; j += Vec::W) {
      if (ahead && (j & 15) == 0) {
        __builtin_prefetch(ahead + j);
        if (ahead_res) __builtin_prefetch(ahead_res + j);
      }
      const Vec w = a.weight ? Vec::load(a.weight + j) : one;
      const Vec b = a.bias ? Vec::load(a.bias + j) : Vec::zero();
      fma((Vec::load(s + j) - vm) * vr, w, b).store(y + j);
    }
    if (j < n) {
      const int t = static_cast<int>(n - j);
      const Vec w = a.weight ? Vec::load_partial(a.weight + j, t) : one;
      const Vec b = a.bias ? Vec::load_partial(a.bias + j, t) : Vec::zero();
      fma((Vec::load_partial(s + j, t) - vm) * vr, w, b).store_partial(y + j, t);
    }
  }
}

}  // namespace cf::cpu::CF_ISA_NS
