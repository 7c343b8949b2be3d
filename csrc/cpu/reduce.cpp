// Layout and reduction helpers of the backward passes: the sum over rows (a bias's gradient) and a
// blocked transpose (the GEMM of a weight's gradient reads dY transposed).
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

void transpose(const TransposeArgs& a) {
  constexpr int64_t kTile = 32;  // a 32 x 32 tile: 4 KiB read and written while in L1
  const int64_t tr = ceil_div(a.rows, kTile), tc = ceil_div(a.cols, kTile);
  const int nt = threads_for(a.rows * a.cols, 1 << 16);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t t = 0; t < tr * tc; ++t) {
    const int64_t r0 = (t / tc) * kTile, c0 = (t % tc) * kTile;
    const int64_t r1 = std::min(a.rows, r0 + kTile), c1 = std::min(a.cols, c0 + kTile);
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t r = r0; r < r1; ++r) a.dst[c * a.rows + r] = a.src[r * a.cols + c];
  }
}

}  // namespace cf::cpu::CF_ISA_NS
