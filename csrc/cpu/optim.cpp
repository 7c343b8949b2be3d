// Optimiser steps over many tensors in one call (torch's "fused"/foreach in one OpenMP loop): the
// elements of a parameter group are cut into fixed chunks, spread over the threads; each element's update
// is torch.optim's formula in float32, so trajectories follow torch's. The gradient norm for clipping
// reduces chunk by chunk in float64, the chunks summed in order: the same on any thread count.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/threading.h"
#include "cpu/kernels.h"
#include "cpu/simd.h"

namespace cf::cpu::CF_ISA_NS {
namespace {

constexpr int64_t kChunk = 1 << 15;  // floats per work item

struct Chunk {
  int64_t tensor, begin, end;
};

template <typename T>
std::vector<Chunk> chunks_of(const T* tensors, int64_t count, int64_t (*size)(const T&)) {
  std::vector<Chunk> out;
  for (int64_t t = 0; t < count; ++t)
    for (int64_t b = 0; b < size(tensors[t]); b += kChunk) out.push_back({t, b, std::min(size(tensors[t]), b + kChunk)});
  return out;
}

int64_t optim_size(const OptimTensor& t) { return t.n; }

// Masked loads and stores for a chunk's tail, so one loop body serves every element.
template <typename F>
inline void for_vectors(int64_t begin, int64_t end, F&& body) {
  int64_t i = begin;
  for (; i + Vec::W <= end; i += Vec::W) body(i, Vec::W);
  if (i < end) body(i, static_cast<int>(end - i));
}

inline Vec load(const float* p, int n) { return n == Vec::W ? Vec::load(p) : Vec::load_partial(p, n); }
inline void store(Vec v, float* p, int n) {
  if (n == Vec::W) v.store(p);
  else v.store_partial(p, n);
}

}  // namespace

void adamw(const AdamWArgs& a) {
  const std::vector<Chunk> work = chunks_of(a.tensors, a.count, optim_size);
  const double bc1 = 1.0 - std::pow(a.beta1, static_cast<double>(a.step));
  const double bc2 = 1.0 - std::pow(a.beta2, static_cast<double>(a.step));
  // torch computes these in Python floats (double); the tensor ops then round them to float32
  const Vec decay = Vec::set1(static_cast<float>(1.0 - a.lr * a.weight_decay));
  const Vec w1 = Vec::set1(static_cast<float>(1.0 - a.beta1)), b2 = Vec::set1(static_cast<float>(a.beta2));
  const Vec w2 = Vec::set1(static_cast<float>(1.0 - a.beta2));
  const Vec bc2_sqrt = Vec::set1(static_cast<float>(std::sqrt(bc2)));
  const Vec neg_step = Vec::set1(static_cast<float>(-(a.lr / bc1)));
  const Vec eps = Vec::set1(static_cast<float>(a.eps));
  const bool decays = a.weight_decay != 0.0;
  const int64_t total = static_cast<int64_t>(work.size());
  const int nt = threads_for(total * kChunk, 1 << 16);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t c = 0; c < total; ++c) {
    const OptimTensor& t = a.tensors[work[c].tensor];
    for_vectors(work[c].begin, work[c].end, [&](int64_t i, int n) {
      Vec g = load(t.grad + i, n);
      if (a.maximize) g = Vec::zero() - g;
      Vec p = load(t.param + i, n);
      if (decays) p = p * decay;
      Vec m = load(t.m + i, n);
      m = fma(w1, g - m, m);                      // exp_avg.lerp_(grad, 1 - beta1)
      const Vec v = fma(w2 * g, g, load(t.v + i, n) * b2);  // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
      const Vec denom = sqrt(v) / bc2_sqrt + eps;
      p = fma(neg_step, m / denom, p);            // param.addcdiv_(exp_avg, denom, value=-step_size)
      store(m, t.m + i, n);
      store(v, t.v + i, n);
      store(p, t.param + i, n);
    });
  }
}

void sgd(const SGDArgs& a) {
  const std::vector<Chunk> work = chunks_of(a.tensors, a.count, optim_size);
  const Vec wd = Vec::set1(static_cast<float>(a.weight_decay)), mom = Vec::set1(static_cast<float>(a.momentum));
  const Vec keep = Vec::set1(static_cast<float>(1.0 - a.dampening)), neg_lr = Vec::set1(static_cast<float>(-a.lr));
  const bool decays = a.weight_decay != 0.0, momentum = a.momentum != 0.0;
  const int64_t total = static_cast<int64_t>(work.size());
  const int nt = threads_for(total * kChunk, 1 << 16);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t c = 0; c < total; ++c) {
    const OptimTensor& t = a.tensors[work[c].tensor];
    for_vectors(work[c].begin, work[c].end, [&](int64_t i, int n) {
      Vec p = load(t.param + i, n);
      Vec d = load(t.grad + i, n);
      if (a.maximize) d = Vec::zero() - d;
      if (decays) d = fma(wd, p, d);                   // d_p = d_p.add(param, alpha=weight_decay)
      if (momentum) {
        Vec buf = a.first_step ? d : fma(keep, d, load(t.m + i, n) * mom);  // buf.mul_(momentum).add_(d_p, 1 - dampening)
        store(buf, t.m + i, n);
        d = a.nesterov ? fma(mom, buf, d) : buf;
      }
      store(fma(neg_lr, d, p), t.param + i, n);        // param.add_(d_p, alpha=-lr)
    });
  }
}

void multi_norm(const MultiNormArgs& a) {
  std::vector<Chunk> work;
  for (int64_t t = 0; t < a.count; ++t)
    for (int64_t b = 0; b < a.n[t]; b += kChunk) work.push_back({t, b, std::min(a.n[t], b + kChunk)});
  const int64_t total = static_cast<int64_t>(work.size());
  const int nt = threads_for(total * kChunk, 1 << 16);
  if (!a.out) {  // scale every element
    const Vec s = Vec::set1(a.scale);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t c = 0; c < total; ++c) {
      float* x = a.x[work[c].tensor];
      for_vectors(work[c].begin, work[c].end, [&](int64_t i, int n) { store(load(x + i, n) * s, x + i, n); });
    }
    return;
  }
  std::vector<double> partial(static_cast<size_t>(total));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t c = 0; c < total; ++c) {
    const float* x = a.x[work[c].tensor];
    double acc = 0.0;
    if (a.inf_norm) {
      Vec mx = Vec::zero(), sum = Vec::zero();  // the sum of |x| only carries a NaN (x86's max drops it)
      for_vectors(work[c].begin, work[c].end, [&](int64_t i, int n) {
        const Vec v = abs(load(x + i, n));  // the masked tail loads zeros
        sum = sum + v;
        mx = max(mx, v);
      });
      acc = std::isnan(reduce_add(sum)) ? std::nan("") : reduce_max(mx);
    } else {
      // float64 per block of 256 (float32 partial sums of squares are exact enough there), in order
      for (int64_t b = work[c].begin; b < work[c].end; b += 256) {
        Vec s0 = Vec::zero(), s1 = Vec::zero();
        const int64_t e = std::min(work[c].end, b + 256);
        int64_t i = b;
        for (; i + 2 * Vec::W <= e; i += 2 * Vec::W) {
          const Vec v0 = Vec::load(x + i), v1 = Vec::load(x + i + Vec::W);
          s0 = fma(v0, v0, s0);
          s1 = fma(v1, v1, s1);
        }
        for (; i < e; i += Vec::W) {
          const int n = static_cast<int>(std::min<int64_t>(Vec::W, e - i));
          const Vec v = Vec::load_partial(x + i, n);
          s0 = fma(v, v, s0);
        }
        acc += static_cast<double>(reduce_add(s0 + s1));
      }
    }
    partial[static_cast<size_t>(c)] = acc;
  }
  double r = 0.0;
  for (double p : partial) {
    if (a.inf_norm) r = (std::isnan(p) || std::isnan(r)) ? std::nan("") : std::max(r, p);
    else r += p;
  }
  *a.out = r;
}

}  // namespace cf::cpu::CF_ISA_NS
