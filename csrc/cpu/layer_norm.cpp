// LayerNorm over the last axis, optionally of x + residual in the same pass (a post-LN block's
// add & norm; sum_out hands the sum back for a pre-LN block). One row per step, three sweeps
// over a row held in L1: sum (in float64, so a constant row centres to exactly 0), centred sum of
// squares (two-pass, so no cancellation), normalise; the first two with four accumulators each (row.h).
#include <cmath>
#include <initializer_list>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/threading.h"
#include "cpu/buffer.h"
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

namespace {

// Rows per block of the weight and bias gradients: each block's partial sums are made by one thread
// and added in block order afterwards, so the result is the same whatever the thread count.
constexpr int64_t kGradBlock = 32;

// s = x + residual of one row into `row` (or x itself when there is no residual): the forward's sum.
const float* summed_row(const LayerNormBackwardArgs& a, int64_t r, float* row) {
  const float* x = a.x + r * a.n;
  if (!a.residual) return x;
  const float* res = a.residual + r * a.n;
  int64_t j = 0;
  for (; j + Vec::W <= a.n; j += Vec::W) (Vec::load(x + j) + Vec::load(res + j)).store(row + j);
  for (; j < a.n; ++j) row[j] = x[j] + res[j];
  return row;
}

}  // namespace

void layer_norm_backward(const LayerNormBackwardArgs& a) {
  const int64_t n = a.n, rows = a.rows;
  if (rows == 0 || n == 0) {
    for (float* g : {a.dweight, a.dbias})
      if (g) for (int64_t j = 0; j < n; ++j) g[j] = 0.0f;
    return;
  }
  const bool param_grads = a.dweight || a.dbias;
  const int64_t blocks = ceil_div(rows, kGradBlock);
  const int nt = threads_for(rows * n, 1 << 15);
  // per thread: the summed row and xhat; per block: partial dweight and dbias
  Buffer scratch(static_cast<size_t>(nt * 2 * n + (param_grads ? blocks * 2 * n : 0)));
  float* partial = scratch.get() + nt * 2 * n;
#pragma omp parallel num_threads(nt)
  {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    float* row = scratch.get() + tid * 2 * n;
    float* xhat = row + n;
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      float* pw = param_grads ? partial + blk * 2 * n : nullptr;
      float* pb = pw ? pw + n : nullptr;
      if (pw)
        for (int64_t j = 0; j < 2 * n; ++j) pw[j] = 0.0f;
      for (int64_t r = blk * kGradBlock; r < imin(rows, (blk + 1) * kGradBlock); ++r) {
        const float* s = summed_row(a, r, row);
        const float* dy = a.dy + r * n;
        const auto mean = static_cast<float>(row_sum_f64(s, n) / static_cast<double>(n));
        const float rstd = 1.0f / std::sqrt(row_sq_dev(s, n, mean) / static_cast<float>(n) + a.eps);
        // xhat and g = dy * weight into the thread's rows (g over the summed row: s is not read again)
        float* g = row;
        const Vec vm = Vec::set1(mean), vr = Vec::set1(rstd);
        int64_t j = 0;
        for (; j + Vec::W <= n; j += Vec::W) {
          const Vec xh = (Vec::load(s + j) - vm) * vr;
          const Vec d = Vec::load(dy + j);
          xh.store(xhat + j);
          (a.weight ? d * Vec::load(a.weight + j) : d).store(g + j);
          if (pw) {
            fma(d, xh, Vec::load(pw + j)).store(pw + j);
            (Vec::load(pb + j) + d).store(pb + j);
          }
        }
        for (; j < n; ++j) {
          xhat[j] = (s[j] - mean) * rstd;
          g[j] = a.weight ? dy[j] * a.weight[j] : dy[j];
          if (pw) {
            pw[j] += dy[j] * xhat[j];
            pb[j] += dy[j];
          }
        }
        // mean(g) and mean(g * xhat) in float64: their terms cancel
        const auto mg = static_cast<float>(row_sum_f64(g, n) / static_cast<double>(n));
        const auto mgx = static_cast<float>(row_dot_f64(g, xhat, n) / static_cast<double>(n));
        float* dx = a.dx + r * n;
        const Vec vmg = Vec::set1(mg), vmgx = Vec::set1(mgx);
        for (j = 0; j + Vec::W <= n; j += Vec::W)
          (vr * fnma(Vec::load(xhat + j), vmgx, Vec::load(g + j) - vmg)).store(dx + j);
        for (; j < n; ++j) dx[j] = rstd * (g[j] - mg - xhat[j] * mgx);
      }
    }
    if (param_grads) {
#pragma omp for schedule(static)
      for (int64_t j = 0; j < n; ++j) {  // the blocks in order, per column
        double w = 0.0, b = 0.0;
        for (int64_t blk = 0; blk < blocks; ++blk) {
          w += partial[blk * 2 * n + j];
          b += partial[blk * 2 * n + n + j];
        }
        if (a.dweight) a.dweight[j] = static_cast<float>(w);
        if (a.dbias) a.dbias[j] = static_cast<float>(b);
      }
    }
  }
}

}  // namespace cf::cpu::CF_ISA_NS
