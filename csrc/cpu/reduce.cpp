// Reductions of the backward passes: the sum over rows (a bias's gradient). (The GEMM reads a weight
// gradient's dY transposed in place: GemmArgs::a_km.)
#include <algorithm>

#include "core/threading.h"
#include "cpu/buffer.h"
#include "cpu/kernels.h"
#include "cpu/simd.h"

namespace cf::cpu::CF_ISA_NS {

void column_sum(const ColumnSumArgs& a) {
  constexpr int64_t kBlock = 32;  // rows per partial sum: fixed, so the sums do not depend on the threads
  const int64_t n = a.n, blocks = ceil_div(a.rows, kBlock);
  if (n == 0) return;
  Buffer partial(static_cast<size_t>(std::max<int64_t>(blocks, 1) * n));
  const int nt = threads_for(a.rows * n, 1 << 15);
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      float* p = partial.get() + blk * n;
      std::fill(p, p + n, 0.0f);
      for (int64_t r = blk * kBlock; r < std::min(a.rows, (blk + 1) * kBlock); ++r) {
        const float* x = a.x + r * n;
        int64_t j = 0;
        for (; j + Vec::W <= n; j += Vec::W) (Vec::load(p + j) + Vec::load(x + j)).store(p + j);
        for (; j < n; ++j) p[j] += x[j];
      }
    }
#pragma omp for schedule(static)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (int64_t blk = 0; blk < blocks; ++blk) s += partial.get()[blk * n + j];
      a.out[j] = static_cast<float>(s);
    }
  }
}

}  // namespace cf::cpu::CF_ISA_NS
