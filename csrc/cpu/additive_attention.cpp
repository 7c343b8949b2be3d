// Additive (Bahdanau, "weighted-sum") attention after the two projections:
//   score[b,i,j] = v . tanh(qp[b,i,:] + kp[b,j,:]),  p = softmax_j(score) where mask allows,
//   out[b,i,:] = sum_j p[b,i,j] values[b,j,:]
// One task per query row: its Sk scores live in a per-thread row buffer, never a (Sq, Sk) matrix
// unless the caller asked for the weights.
#include <cstring>
#include <limits>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/threading.h"
#include "cpu/buffer.h"
#include "cpu/kernels.h"
#include "cpu/row.h"
#include "cpu/simd.h"

namespace cf::cpu::CF_ISA_NS {

void additive_attention(const AdditiveArgs& a) {
  const int64_t B = a.B, Sq = a.Sq, Sk = a.Sk, A = a.A, Dv = a.Dv;
  if (B == 0 || Sq == 0) return;
  const float ninf = -std::numeric_limits<float>::infinity();
  const int nt = threads_for(B * Sq * Sk * (A + Dv), 1 << 16);
  Buffer scratch(static_cast<size_t>(nt) * (Sk + 1));

#pragma omp parallel num_threads(nt)
  {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    float* s = scratch.get() + tid * (Sk + 1);
#pragma omp for schedule(dynamic, 4)
    for (int64_t row = 0; row < B * Sq; ++row) {
      const int64_t b = row / Sq, i = row % Sq;
      const float* q = a.qp + row * A;
      const uint8_t* mrow = a.mask ? a.mask + b * a.m_sb + i * a.m_sq : nullptr;
      float mx = ninf;
      for (int64_t j = 0; j < Sk; ++j) {
        if (mrow && !mrow[j]) { s[j] = ninf; continue; }
        const float* k = a.kp + (b * Sk + j) * A;
        Vec acc = Vec::zero();
        int64_t c = 0;
        for (; c + Vec::W <= A; c += Vec::W)
          acc = fma(Vec::load(a.v_vec + c), tanh(Vec::load(q + c) + Vec::load(k + c)), acc);
        if (c < A) {
          int t = static_cast<int>(A - c);
          acc = fma(Vec::load_partial(a.v_vec + c, t), tanh(Vec::load_partial(q + c, t) + Vec::load_partial(k + c, t)), acc);
        }
        s[j] = reduce_add(acc);
        mx = s[j] > mx ? s[j] : mx;
      }
      float* out = a.out + row * Dv;
      std::memset(out, 0, sizeof(float) * Dv);
      float* w = a.weights ? a.weights + row * Sk : nullptr;
      if (mx == ninf) {  // no key to attend: zeros, as scaled_dot_product_attention (NaN scores: NaN)
        if (has_nan(s, Sk)) {
          const float qnan = std::numeric_limits<float>::quiet_NaN();
          for (int64_t d = 0; d < Dv; ++d) out[d] = qnan;
          if (w)
            for (int64_t j = 0; j < Sk; ++j) w[j] = qnan;
        } else if (w) {
          std::memset(w, 0, sizeof(float) * Sk);
        }
        continue;
      }
      const float sum = exp_sub_sum(s, s, Sk, mx);
      const float inv = 1.0f / sum;
      for (int64_t j = 0; j < Sk; ++j) {
        const float p = s[j] * inv;
        if (w) w[j] = p;
        if (p == 0.0f) continue;
        const float* v = a.values + (b * Sk + j) * Dv;
        const Vec vp = Vec::set1(p);
        int64_t d = 0;
        for (; d + Vec::W <= Dv; d += Vec::W) fma(vp, Vec::load(v + d), Vec::load(out + d)).store(out + d);
        for (; d < Dv; ++d) out[d] += p * v[d];
      }
    }
  }
}

}  // namespace cf::cpu::CF_ISA_NS
