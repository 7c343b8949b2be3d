// Cross-entropy over a vocabulary, fused with its gradient: per row, one pass for the max, the sum of
// exp and the sum of the logits (for label smoothing), one pass writing dlogits -- never a matrix of
// probabilities. Rows are independent (one thread each), so the result does not depend on the thread count.
#include <algorithm>
#include <cmath>

#include "core/threading.h"
#include "cpu/kernels.h"
#include "cpu/row.h"
#include "cpu/simd.h"

namespace cf::cpu::CF_ISA_NS {

void cross_entropy(const CrossEntropyArgs& a) {
  const int64_t C = a.C;
  const float s = a.smoothing, on = 1.0f - s, uniform = s / static_cast<float>(C);
  const int nt = threads_for(a.rows * C, 1 << 15);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t r = 0; r < a.rows; ++r) {
    const float* x = a.logits + r * C;
    float* dx = a.dlogits ? a.dlogits + r * C : nullptr;
    const int64_t label = a.labels[r];
    if (label == a.ignore_index) {
      a.losses[r] = 0.0f;
      if (dx) std::fill(dx, dx + C, 0.0f);
      continue;
    }
    const float mx = row_max(x, C);
    // sum exp(x - mx) (float64 of per-vector float sums) and, for smoothing, the sum of the logits
    const Vec vm = Vec::set1(mx);
    Vec acc = Vec::zero(), xs = Vec::zero();
    int64_t j = 0;
    for (; j + Vec::W <= C; j += Vec::W) {
      const Vec v = Vec::load(x + j);
      acc = acc + exp(v - vm);
      xs = xs + v;
    }
    double sum = reduce_add(acc), xsum = reduce_add(xs);
    for (; j < C; ++j) {
      sum += std::exp(static_cast<double>(x[j]) - mx);
      xsum += x[j];
    }
    const double lse = mx + std::log(sum);
    // loss = lse - (1 - s) x[label] - s/C sum_c x[c]
    a.losses[r] = static_cast<float>(lse - on * static_cast<double>(x[label]) - (s > 0.0f ? uniform * xsum : 0.0));
    if (!dx) continue;
    const auto lse_f = static_cast<float>(lse);
    const Vec vl = Vec::set1(lse_f), scale = Vec::set1(a.grad_scale), vu = Vec::set1(uniform);
    for (j = 0; j + Vec::W <= C; j += Vec::W)
      ((exp(Vec::load(x + j) - vl) - vu) * scale).store(dx + j);
    for (; j < C; ++j) dx[j] = (std::exp(x[j] - lse_f) - uniform) * a.grad_scale;
    dx[label] -= on * a.grad_scale;
  }
}

}  // namespace cf::cpu::CF_ISA_NS
