// Additive (Bahdanau, "weighted-sum") attention after the two projections:
//   score[b,i,j] = v . tanh(qp[b,i,:] + kp[b,j,:]),  p = softmax_j(score) where mask allows,
//   out[b,i,:] = sum_j p[b,i,j] values[b,j,:]
// One task per query row: its Sk scores live in a per-thread row buffer, never a (Sq, Sk) matrix
// unless the caller asked for the weights.
#include <algorithm>
#include <cmath>
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

namespace {

// s[j] = v . tanh(qp[b,i] + kp[b,j]) for every key, -inf where the mask forbids it; returns their max
// (-inf when none is visible; NaN scores are skipped by the max and left in s).
float row_scores(const AdditiveArgs& a, int64_t b, int64_t i, float* s) {
  const int64_t Sk = a.Sk, A = a.A;
  const float ninf = -std::numeric_limits<float>::infinity();
  const float* q = a.qp + (b * a.Sq + i) * A;
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
      const int t = static_cast<int>(A - c);
      acc = fma(Vec::load_partial(a.v_vec + c, t), tanh(Vec::load_partial(q + c, t) + Vec::load_partial(k + c, t)),
                acc);
    }
    s[j] = reduce_add(acc);
    mx = s[j] > mx ? s[j] : mx;
  }
  return mx;
}

}  // namespace

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
      const float mx = row_scores(a, b, i, s);
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

// Backward: per query row i of batch b, with t_j = tanh(qp_i + kp_j) recomputed,
//   p = softmax_j(v . t_j),  dp_j = dout_i . values_j,  ds_j = p_j (dp_j - sum_k p_k dp_k)
//   dvalues_j += p_j dout_i;  g = ds_j v (1 - t_j^2):  dqp_i += g, dkp_j += g;  dv_vec += ds_j t_j
// Keys with p = 0 (masked, underflow) add nothing (inf/NaN in their rows reaches no gradient).
void additive_attention_backward(const AdditiveBackwardArgs& g) {
  const AdditiveArgs& a = g.f;
  const int64_t B = a.B, Sq = a.Sq, Sk = a.Sk, A = a.A, Dv = a.Dv;
  std::memset(g.dqp, 0, sizeof(float) * B * Sq * A);
  std::memset(g.dkp, 0, sizeof(float) * B * Sk * A);
  std::memset(g.dvalues, 0, sizeof(float) * B * Sk * Dv);
  std::memset(g.dv_vec, 0, sizeof(float) * A);
  if (B == 0 || Sq == 0 || Sk == 0) return;
  const float ninf = -std::numeric_limits<float>::infinity();
  const int nt = static_cast<int>(std::min<int64_t>(threads_for(B * Sq * Sk * (A + Dv), 1 << 16), B));
  const int64_t per_thread = 2 * Sk + A;
  Buffer scratch(static_cast<size_t>(nt) * per_thread);
  Buffer dv_parts(static_cast<size_t>(B) * A);

#pragma omp parallel num_threads(nt)
  {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    float* s = scratch.get() + tid * per_thread;  // scores, then p
    float* dp = s + Sk;
    float* gq = dp + Sk;                           // dqp of the row, summed over its keys
#pragma omp for schedule(dynamic)
    for (int64_t b = 0; b < B; ++b) {
      float* dvb = dv_parts.get() + b * A;
      std::memset(dvb, 0, sizeof(float) * A);
      for (int64_t i = 0; i < Sq; ++i) {
        const int64_t row = b * Sq + i;
        const float* q = a.qp + row * A;
        const float* dout = g.dout + row * Dv;
        const float mx = row_scores(a, b, i, s);
        if (mx == ninf) {  // nothing to attend (zero output, zero gradients), or NaN scores (NaN gradients)
          if (has_nan(s, Sk)) {
            const float qnan = std::numeric_limits<float>::quiet_NaN();
            for (int64_t c = 0; c < A; ++c) g.dqp[row * A + c] = qnan;
          }
          continue;
        }
        const float inv = 1.0f / exp_sub_sum(s, s, Sk, mx);
        double delta = 0.0;
        for (int64_t j = 0; j < Sk; ++j) {
          s[j] *= inv;
          dp[j] = s[j] == 0.0f ? 0.0f : dot(dout, a.values + (b * Sk + j) * Dv, Dv);
          delta += static_cast<double>(s[j]) * dp[j];
        }
        std::memset(gq, 0, sizeof(float) * A);
        for (int64_t j = 0; j < Sk; ++j) {
          const float p = s[j];
          if (p == 0.0f) continue;
          axpy(p, dout, g.dvalues + (b * Sk + j) * Dv, Dv);
          const float ds = p * (dp[j] - static_cast<float>(delta));
          const float* k = a.kp + (b * Sk + j) * A;
          float* dk = g.dkp + (b * Sk + j) * A;
          const Vec vds = Vec::set1(ds), one = Vec::set1(1.0f);
          int64_t c = 0;
          for (; c + Vec::W <= A; c += Vec::W) {
            const Vec th = tanh(Vec::load(q + c) + Vec::load(k + c));
            const Vec gv = vds * Vec::load(a.v_vec + c) * (one - th * th);
            (Vec::load(gq + c) + gv).store(gq + c);
            (Vec::load(dk + c) + gv).store(dk + c);
            fma(vds, th, Vec::load(dvb + c)).store(dvb + c);
          }
          if (c < A) {  // the tail as the forward computes it (a partial vector)
            const int r = static_cast<int>(A - c);
            const Vec th = tanh(Vec::load_partial(q + c, r) + Vec::load_partial(k + c, r));
            const Vec gv = vds * Vec::load_partial(a.v_vec + c, r) * (one - th * th);
            (Vec::load_partial(gq + c, r) + gv).store_partial(gq + c, r);
            (Vec::load_partial(dk + c, r) + gv).store_partial(dk + c, r);
            fma(vds, th, Vec::load_partial(dvb + c, r)).store_partial(dvb + c, r);
          }
        }
        float* dq = g.dqp + row * A;
        for (int64_t c = 0; c < A; ++c) dq[c] += gq[c];
      }
    }
  }
  for (int64_t b = 0; b < B; ++b)  // the batch entries' parts in order
    for (int64_t c = 0; c < A; ++c) g.dv_vec[c] += dv_parts.get()[b * A + c];
}

}  // namespace cf::cpu::CF_ISA_NS
