// Elementwise activations (relu, exact erf GELU, tanh GELU): memory-bound, so the only goals
// are full vectors, enough math throughput to stay under the bandwidth, and both cores streaming.
#include "core/threading.h"
#include "cpu/epilogue.h"
#include "cpu/kernels.h"
#include "cpu/simd.h"

namespace cf::cpu::CF_ISA_NS {
namespace {

// One straight-line loop per activation: A is a template argument, so activate()'s switch folds away.
template <Activation A>
void apply(const ActivationArgs& a) {
  constexpr int64_t kChunk = 1 << 14;  // floats per task: 64 KiB, a multiple of every vector width
  const int64_t chunks = ceil_div(a.n, kChunk);
  const int nt = threads_for(a.n, 1 << 15);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t j0 = c * kChunk, j1 = imin(a.n, j0 + kChunk);
    int64_t j = j0;
    for (; j + Vec::W <= j1; j += Vec::W) activate(Vec::load(a.x + j), A).store(a.y + j);
    if (j < j1) {
      const int t = static_cast<int>(j1 - j);
      activate(Vec::load_partial(a.x + j, t), A).store_partial(a.y + j, t);
    }
  }
}

template <Activation A>
Vec derivative(Vec x) {
  if constexpr (A == Activation::relu) return relu_grad(x);
  else if constexpr (A == Activation::gelu) return gelu_grad(x);
  else if constexpr (A == Activation::gelu_tanh) return gelu_tanh_grad(x);
  else return Vec::set1(1.0f);
}

// dx = dy * act'(x), in the forward's chunks.
template <Activation A>
void apply_backward(const ActivationBackwardArgs& a) {
  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks = ceil_div(a.n, kChunk);
  const int nt = threads_for(a.n, 1 << 15);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t j0 = c * kChunk, j1 = imin(a.n, j0 + kChunk);
    int64_t j = j0;
    for (; j + Vec::W <= j1; j += Vec::W) (Vec::load(a.dy + j) * derivative<A>(Vec::load(a.x + j))).store(a.dx + j);
    if (j < j1) {
      const int t = static_cast<int>(j1 - j);
      (Vec::load_partial(a.dy + j, t) * derivative<A>(Vec::load_partial(a.x + j, t))).store_partial(a.dx + j, t);
    }
  }
}

}  // namespace

void activation_backward(const ActivationBackwardArgs& a) {
  switch (a.act) {
    case Activation::relu: return apply_backward<Activation::relu>(a);
    case Activation::gelu: return apply_backward<Activation::gelu>(a);
    case Activation::gelu_tanh: return apply_backward<Activation::gelu_tanh>(a);
    default: return apply_backward<Activation::none>(a);
  }
}

void activation(const ActivationArgs& a) {
  switch (a.act) {
    case Activation::relu: return apply<Activation::relu>(a);
    case Activation::gelu: return apply<Activation::gelu>(a);
    case Activation::gelu_tanh: return apply<Activation::gelu_tanh>(a);
    default: return apply<Activation::none>(a);
  }
}

}  // namespace cf::cpu::CF_ISA_NS
