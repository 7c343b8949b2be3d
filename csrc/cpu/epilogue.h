// Bias, activation and residual applied to a tile (or a row) of C while it is still in L1.
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

// An m x n tile of C (row stride ldc): c = act(c + bias) + res, with the activation fixed at compile
// time; bias (n) and res (m x n, row stride ldr) may be null. The GEMMs call one of these per
// micro-tile through a pointer chosen once per call (epilogue_for): a call per tile row, with the
// activation switched per vector inside, had cost erf-GELU's epilogue ~1.8x its arithmetic.
template <Activation A>
void epilogue_tile(float* c, int64_t ldc, int m, int64_t n, const float* bias, const float* res, int64_t ldr) {
  for (int r = 0; r < m; ++r) {
    float* cr = c + r * ldc;
    const float* rr = res ? res + r * ldr : nullptr;
    int64_t j = 0;
    for (; j + Vec::W <= n; j += Vec::W) {
      Vec x = Vec::load(cr + j);
      if (bias) x = x + Vec::load(bias + j);
      x = activate(x, A);
      if (rr) x = x + Vec::load(rr + j);
      x.store(cr + j);
    }
    if (j < n) {
      const int t = static_cast<int>(n - j);
      Vec x = Vec::load_partial(cr + j, t);
      if (bias) x = x + Vec::load_partial(bias + j, t);
      x = activate(x, A);
      if (rr) x = x + Vec::load_partial(rr + j, t);
      x.store_partial(cr + j, t);
    }
  }
}

using EpilogueTile = void (*)(float*, int64_t, int, int64_t, const float*, const float*, int64_t);

// The tile epilogue for act, or null when there is nothing to do.
inline EpilogueTile epilogue_for(Activation act, bool bias, bool res) {
  switch (act) {
    case Activation::relu: return epilogue_tile<Activation::relu>;
    case Activation::gelu: return epilogue_tile<Activation::gelu>;
    case Activation::gelu_tanh: return epilogue_tile<Activation::gelu_tanh>;
    default: return bias || res ? epilogue_tile<Activation::none> : nullptr;
  }
}

// c[j] = act(c[j] + bias[j]) + res[j] for j < n (a one-row tile); bias and res may be null.
inline void epilogue_row(float* c, int64_t n, const float* bias, const float* res, Activation act) {
  if (const EpilogueTile f = epilogue_for(act, bias, res)) f(c, 0, 1, n, bias, res, 0);
}

}  // namespace cf::cpu::CF_ISA_NS
