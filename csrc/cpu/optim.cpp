// Optimiser steps over many tensors in one call (torch's "fused"/foreach in one OpenMP loop): the
// elements of a parameter group are cut into fixed chunks, spread over the threads; each element's update
// is torch.optim's formula in float32, so trajectories follow torch's. The gradient norm for clipping
// reduces chunk by chunk in float64, the chunks summed in order: the same on any thread count.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/threading.h"
#include "cpu/kernels.h"
#include "cpu/row.h"
#include "cpu/simd.h"

namespace cf::cpu::CF_ISA_NS {
namespace {

constexpr int64_t kChunk = 1 << 15;  // floats per work item

struct Chunk {
  int64_t tensor, begin, end;
};

// Each of `count` tensors (size_of(t) floats) cut into chunks, in order.
template <typename SizeOf>
std::vector<Chunk> chunks_of(int64_t count, SizeOf size_of) {
  std::vector<Chunk> out;
  for (int64_t t = 0; t < count; ++t) {
    const int64_t n = size_of(t);
    for (int64_t b = 0; b < n; b += kChunk) out.push_back({t, b, std::min(n, b + kChunk)});
  }
  return out;
}

// body(index, chunk) for every chunk, spread over the threads.
template <typename Body>
void for_chunks(const std::vector<Chunk>& work, Body&& body) {
  const int64_t total = static_cast<int64_t>(work.size());
  const int nt = threads_for(total * kChunk, 1 << 16);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t c = 0; c < total; ++c) body(c, work[static_cast<size_t>(c)]);
}

}  // namespace

void adamw(const AdamWArgs& a) {
  const std::vector<Chunk> work = chunks_of(a.count, [&](int64_t t) { return a.tensors[t].n; });
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
  for_chunks(work, [&](int64_t, const Chunk& c) {
    const OptimTensor& t = a.tensors[c.tensor];
    for_vectors(c.begin, c.end, [&](int64_t i, int n) {
      Vec g = load_n(t.grad + i, n);
      if (a.maximize) g = Vec::zero() - g;
      Vec p = load_n(t.param + i, n);
      if (decays) p = p * decay;
      Vec m = load_n(t.m + i, n);
      m = fma(w1, g - m, m);                      // exp_avg.lerp_(grad, 1 - beta1)
      const Vec v = fma(w2 * g, g, load_n(t.v + i, n) * b2);  // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
      const Vec denom = sqrt(v) / bc2_sqrt + eps;
      p = fma(neg_step, m / denom, p);            // param.addcdiv_(exp_avg, denom, value=-step_size)
      store_n(m, t.m + i, n);
      store_n(v, t.v + i, n);
      store_n(p, t.param + i, n);
    });
  });
}

void sgd(const SGDArgs& a) {
  const std::vector<Chunk> work = chunks_of(a.count, [&](int64_t t) { return a.tensors[t].n; });
  const Vec wd = Vec::set1(static_cast<float>(a.weight_decay)), mom = Vec::set1(static_cast<float>(a.momentum));
  const Vec keep = Vec::set1(static_cast<float>(1.0 - a.dampening)), neg_lr = Vec::set1(static_cast<float>(-a.lr));
  const bool decays = a.weight_decay != 0.0, momentum = a.momentum != 0.0;
  for_chunks(work, [&](int64_t, const Chunk& c) {
    const OptimTensor& t = a.tensors[c.tensor];
    for_vectors(c.begin, c.end, [&](int64_t i, int n) {
      Vec p = load_n(t.param + i, n);
      Vec d = load_n(t.grad + i, n);
      if (a.maximize) d = Vec::zero() - d;
      if (decays) d = fma(wd, p, d);                   // d_p = d_p.add(param, alpha=weight_decay)
      if (momentum) {
        Vec buf = a.first_step ? d : fma(keep, d, load_n(t.m + i, n) * mom);  // buf.mul_(momentum).add_(d_p, 1 - dampening)
        store_n(buf, t.m + i, n);
        d = a.nesterov ? fma(mom, buf, d) : buf;
      }
      store_n(fma(neg_lr, d, p), t.param + i, n);        // param.add_(d_p, alpha=-lr)
    });
  });
}

void multi_norm(const MultiNormArgs& a) {
  const std::vector<Chunk> work = chunks_of(a.count, [&](int64_t t) { return a.n[t]; });
  if (!a.out) {  // scale every element
    const Vec s = Vec::set1(a.scale);
    for_chunks(work, [&](int64_t, const Chunk& c) {
      float* x = a.x[c.tensor];
      for_vectors(c.begin, c.end, [&](int64_t i, int n) { store_n(load_n(x + i, n) * s, x + i, n); });
    });
    return;
  }
  std::vector<double> partial(work.size());
  for_chunks(work, [&](int64_t index, const Chunk& c) {
    const float* x = a.x[c.tensor];
    double acc;
    if (a.inf_norm) {
      Vec mx = Vec::zero(), sum = Vec::zero();  // the sum of |x| only carries a NaN (x86's max drops it)
      for_vectors(c.begin, c.end, [&](int64_t i, int n) {
        const Vec v = abs(load_n(x + i, n));  // the masked tail loads zeros
        sum = sum + v;
        mx = max(mx, v);
      });
      acc = std::isnan(reduce_add(sum)) ? std::nan("") : reduce_max(mx);
    } else {
      acc = row_dot_f64(x + c.begin, x + c.begin, c.end - c.begin);  // the sum of squares, in float64
    }
    partial[static_cast<size_t>(index)] = acc;
  });
  double r = 0.0;
  for (double p : partial) {
    if (a.inf_norm) r = (std::isnan(p) || std::isnan(r)) ? std::nan("") : std::max(r, p);
    else r += p;
  }
  *a.out = r;
}

}  // namespace cf::cpu::CF_ISA_NS
