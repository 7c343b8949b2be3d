// Bias, activation and residual applied to a row of C while it is still in L1.
#pragma once
#include <cstdint>

#include "cpu/kernels.h"
#include "cpu/simd.h"

namespace cf::cpu::CF_ISA_NS {

inline Vec activate(Vec x, Activation act) {
  switch (act) {
    case Activation::relu: return relu(x);
    case Activation::gelu: return gelu(x);
    case Activation::gelu_tanh: return gelu_tanh(x);
    default: return x;
  }
}

// c[j] = act(c[j] + bias[j]) + res[j] for j < n; bias and res may be null.
inline void epilogue_row(float* c, int64_t n, const float* bias, const float* res, Activation act) {
  if (!bias && !res && act == Activation::none) return;
  int64_t j = 0;
  for (; j + Vec::W <= n; j += Vec::W) {
    Vec x = Vec::load(c + j);
    if (bias) x = x + Vec::load(bias + j);
    x = activate(x, act);
    if (res) x = x + Vec::load(res + j);
    x.store(c + j);
  }
  if (j < n) {
    int t = static_cast<int>(n - j);
    Vec x = Vec::load_partial(c + j, t);
    if (bias) x = x + Vec::load_partial(bias + j, t);
    x = activate(x, act);
    if (res) x = x + Vec::load_partial(res + j, t);
    x.store_partial(c + j, t);
  }
}

}  // namespace cf::cpu::CF_ISA_NS
