// Elementwise activations (relu, exact erf GELU, tanh GELU): memory-bound, so the only goals
// are full vectors, enough math throughput to stay under the bandwidth, and both cores streaming.
#include "core/threading.h"
#include "cpu/epilogue.h"
#include "cpu/kernels.h"
#include "cpu/simd.h"

namespace cf::cpu::CF_ISA_NS {

void activation(const ActivationArgs& a) {
  constexpr int64_t kChunk = 1 << 14;  // floats per task: 64 KiB, a multiple of every vector width
  const int64_t chunks = ceil_div(a.n, kChunk);
  const int nt = threads_for(a.n, 1 << 15);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t j0 = c * kChunk, j1 = imin(a.n, j0 + kChunk);
    int64_t j = j0;
    switch (a.act) {  // the switch sits outside the loop so each loop body is one straight line
#define CF_ACT_LOOP(fn)                                                                       \
  for (; j + Vec::W <= j1; j += Vec::W) fn(Vec::load(a.x + j)).store(a.y + j);                 \
  if (j < j1) fn(Vec::load_partial(a.x + j, static_cast<int>(j1 - j))).store_partial(a.y + j, static_cast<int>(j1 - j)); \
  break;
      case Activation::relu: CF_ACT_LOOP(relu)
      case Activation::gelu: CF_ACT_LOOP(gelu)
      case Activation::gelu_tanh: CF_ACT_LOOP(gelu_tanh)
#undef CF_ACT_LOOP
      default:
        for (; j < j1; ++j) a.y[j] = a.x[j];
    }
  }
}

}  // namespace cf::cpu::CF_ISA_NS
