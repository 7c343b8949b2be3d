// Elementwise activations (relu, exact erf GELU, tanh GELU): memory-bound, so the only goals
// are full vectors, enough math throughput to stay under the bandwidth, and both cores streaming.
#include "core/threading.h"
#include "cpu/epilogue.h"
#include "cpu/kernels.h"
#include "cpu/row.h"
#include "cpu/simd.h"

namespace cf::cpu::CF_ISA_NS {
namespace {

// One straight-line loop per activation: A is a template argument, so activate()'s switch folds away.
// body(i, w) over [0, n) in chunks of 64 KiB (a multiple of every vector width) spread over the threads.
template <typename Body>
void chunked(int64_t n, Body&& body) {
  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks = ceil_div(n, kChunk);
  const int nt = threads_for(n, 1 << 15);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t c = 0; c < chunks; ++c) for_vectors(c * kChunk, imin(n, (c + 1) * kChunk), body);
}

template <Activation A>
void apply(const ActivationArgs& a) {
  chunked(a.n, [&](int64_t j, int w) { store_n(activate(load_n(a.x + j, w), A), a.y + j, w); });
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
  chunked(a.n, [&](int64_t j, int w) { store_n(load_n(a.dy + j, w) * derivative<A>(load_n(a.x + j, w)), a.dx + j, w); });
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
