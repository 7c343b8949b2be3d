// Row operations shared by softmax and the two attentions (max, exp-and-sum, scale, dot, axpy) and the
// elementwise loop of the activations and optimisers.
#pragma once
#include <cstdint>
#include <limits>

#include "cpu/simd.h"

namespace cf::cpu::CF_ISA_NS {

// 0, 1, ..., W - 1: picks the lanes of a row's last, partial vector without masked loads or stores
// (a masked store costs as much as several whole vectors of exp on Zen 3).
inline Vec lane_index() {
  alignas(64) static constexpr float k[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  return Vec::load(k);
}

// row_max skips NaN (max keeps its other operand), so a row of NaN (and -inf) reads as "all -inf";
// the callers that then give zeros for "nothing to attend" check this first, so NaN in gives NaN out
// (a rare path: only rows whose max is -inf are scanned).
inline bool has_nan(const float* x, int64_t n) {
  for (int64_t j = 0; j < n; ++j)
    if (x[j] != x[j]) return true;
  return false;
}

// The sweeps below keep four independent accumulators: with one, the add's (or max's) latency, not
// the loads, bounds a sweep over a row already in L1 (layer_norm's sum took ~3 cycles per vector).
// kPadded: the row may be read up to the next multiple of W (the lanes past n are ignored, whatever
// they hold), so its last vector is read whole.
template <bool kPadded = false>
inline float row_max(const float* x, int64_t n) {
  const Vec ninf = Vec::set1(-std::numeric_limits<float>::infinity());
  Vec m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
  int64_t j = 0;
  for (; j + 4 * Vec::W <= n; j += 4 * Vec::W) {
    m0 = max(m0, Vec::load(x + j));
    m1 = max(m1, Vec::load(x + j + Vec::W));
    m2 = max(m2, Vec::load(x + j + 2 * Vec::W));
    m3 = max(m3, Vec::load(x + j + 3 * Vec::W));
  }
  for (; j + Vec::W <= n; j += Vec::W) m0 = max(m0, Vec::load(x + j));
  if constexpr (kPadded) {
    if (j < n) m1 = max(m1, select_lt(lane_index(), Vec::set1(static_cast<float>(n - j)), Vec::load(x + j), ninf));
    return reduce_max(max(max(m0, m1), max(m2, m3)));
  }
  float r = reduce_max(max(max(m0, m1), max(m2, m3)));
  for (; j < n; ++j) r = x[j] > r ? x[j] : r;
  return r;
}

// Whether any of x[0, n) is inf or NaN (x - x is NaN exactly there, 0 elsewhere).
inline bool any_nonfinite(const float* x, int64_t n) {
  Vec acc = Vec::zero();
  int64_t j = 0;
  for (; j + Vec::W <= n; j += Vec::W) {
    const Vec v = Vec::load(x + j);
    acc = acc + (v - v);
  }
  float r = reduce_add(acc);
  for (; j < n; ++j) r += x[j] - x[j];
  return r != r;
}

// The sum of x[0, n) accumulated in float64. Exact for a row of one repeated value c (n * c needs at most
// 24 + log2(n) bits), so a constant row's mean is c itself and layer_norm centres it to exactly 0: a float32
// sum is off by up to ~n/2 ulps of c, which the normalisation then scales up to O(1) (10000.3 repeated
// over 4096 features normalised to 0.9, not 0). Widening costs a conversion per 4-8 floats of a row in L1.
inline double row_sum_f64(const float* x, int64_t n) {
  int64_t j = 0;
  double s = 0.0;
#if defined(CF_ISA_AVX512)
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd(), a2 = _mm512_setzero_pd(), a3 = _mm512_setzero_pd();
  for (; j + 32 <= n; j += 32) {
    a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm256_loadu_ps(x + j)));
    a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_loadu_ps(x + j + 8)));
    a2 = _mm512_add_pd(a2, _mm512_cvtps_pd(_mm256_loadu_ps(x + j + 16)));
    a3 = _mm512_add_pd(a3, _mm512_cvtps_pd(_mm256_loadu_ps(x + j + 24)));
  }
  s = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(a0, a1), _mm512_add_pd(a2, a3)));
#elif defined(CF_ISA_AVX2)
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd(), a2 = _mm256_setzero_pd(), a3 = _mm256_setzero_pd();
  for (; j + 16 <= n; j += 16) {
    a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm_loadu_ps(x + j)));
    a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm_loadu_ps(x + j + 4)));
    a2 = _mm256_add_pd(a2, _mm256_cvtps_pd(_mm_loadu_ps(x + j + 8)));
    a3 = _mm256_add_pd(a3, _mm256_cvtps_pd(_mm_loadu_ps(x + j + 12)));
  }
  const __m256d t = _mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3));
  const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1));
  s = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
#endif
  for (; j < n; ++j) s += x[j];
  return s;
}

// sum over j of x[j] * y[j], accumulated in float64 (the softmax backward's <dy, y>: its terms cancel).
inline double row_dot_f64(const float* x, const float* y, int64_t n) {
  int64_t j = 0;
  double s = 0.0;
#if defined(CF_ISA_AVX512)
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  for (; j + 16 <= n; j += 16) {
    a0 = _mm512_fmadd_pd(_mm512_cvtps_pd(_mm256_loadu_ps(x + j)), _mm512_cvtps_pd(_mm256_loadu_ps(y + j)), a0);
    a1 = _mm512_fmadd_pd(_mm512_cvtps_pd(_mm256_loadu_ps(x + j + 8)), _mm512_cvtps_pd(_mm256_loadu_ps(y + j + 8)),
                         a1);
  }
  s = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
#elif defined(CF_ISA_AVX2)
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  for (; j + 8 <= n; j += 8) {
    a0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + j)), _mm256_cvtps_pd(_mm_loadu_ps(y + j)), a0);
    a1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + j + 4)), _mm256_cvtps_pd(_mm_loadu_ps(y + j + 4)), a1);
  }
  const __m256d t = _mm256_add_pd(a0, a1);
  const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1));
  s = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
#endif
  for (; j < n; ++j) s += static_cast<double>(x[j]) * y[j];
  return s;
}

// sum over j of (x[j] - c)^2
inline float row_sq_dev(const float* x, int64_t n, float c) {
  const Vec vc = Vec::set1(c);
  Vec a0 = Vec::zero(), a1 = Vec::zero(), a2 = Vec::zero(), a3 = Vec::zero();
  int64_t j = 0;
  for (; j + 4 * Vec::W <= n; j += 4 * Vec::W) {
    Vec d0 = Vec::load(x + j) - vc, d1 = Vec::load(x + j + Vec::W) - vc;
    Vec d2 = Vec::load(x + j + 2 * Vec::W) - vc, d3 = Vec::load(x + j + 3 * Vec::W) - vc;
    a0 = fma(d0, d0, a0);
    a1 = fma(d1, d1, a1);
    a2 = fma(d2, d2, a2);
    a3 = fma(d3, d3, a3);
  }
  for (; j + Vec::W <= n; j += Vec::W) { Vec d = Vec::load(x + j) - vc; a0 = fma(d, d, a0); }
  if (j < n) {
    const int t = static_cast<int>(n - j);
    float d[Vec::W] = {};  // lanes past n stay 0 rather than -c
    (Vec::load_partial(x + j, t) - vc).store_partial(d, t);
    Vec dv = Vec::load(d);
    a1 = fma(dv, dv, a1);
  }
  return reduce_add((a0 + a1) + (a2 + a3));
}

// y[j] = exp(x[j] - mx) (y may be x), mx >= every x[j]; returns the sum of the y[j]. `ahead`, if
// given, is the next row to be read from memory (n floats): it is prefetched along the way.
// kLog2: x and mx in log2 units (y = 2^(x - mx)), as attention's scores are. kPadded: x and y may be
// read and written up to the next multiple of W (what lands past n is scratch), as row_max's.
template <bool kLog2 = false, bool kPadded = false>
inline float exp_sub_sum(const float* x, float* y, int64_t n, float mx, const float* ahead = nullptr) {
  auto ex = [](Vec v) {
    if constexpr (kLog2) return exp2_le0(v);
    else return exp_le0(v);
  };
  const Vec vm = Vec::set1(mx);
  Vec acc = Vec::zero();
  int64_t j = 0;
  for (; j + Vec::W <= n; j += Vec::W) {
    if (ahead && (j & 15) == 0) __builtin_prefetch(ahead + j);
    Vec e = ex(Vec::load(x + j) - vm);
    e.store(y + j);
    acc = acc + e;
  }
  if (kPadded && j < n) {
    const Vec e = ex(Vec::load(x + j) - vm);
    e.store(y + j);
    acc = acc + select_lt(lane_index(), Vec::set1(static_cast<float>(n - j)), e, Vec::zero());
  } else if (j < n) {
    const int t = static_cast<int>(n - j);
    ex(Vec::load_partial(x + j, t) - vm).store_partial(y + j, t);
    acc = acc + Vec::load_partial(y + j, t);  // reloaded: lanes past n are 0, not exp(-mx)
  }
  return reduce_add(acc);
}

inline float dot(const float* x, const float* y, int64_t n) {
  Vec acc0 = Vec::zero(), acc1 = Vec::zero();
  int64_t j = 0;
  for (; j + 2 * Vec::W <= n; j += 2 * Vec::W) {
    acc0 = fma(Vec::load(x + j), Vec::load(y + j), acc0);
    acc1 = fma(Vec::load(x + j + Vec::W), Vec::load(y + j + Vec::W), acc1);
  }
  for (; j < n; j += Vec::W) {
    const int t = static_cast<int>(n - j < Vec::W ? n - j : Vec::W);
    acc0 = fma(Vec::load_partial(x + j, t), Vec::load_partial(y + j, t), acc0);
  }
  return reduce_add(acc0 + acc1);
}

// y[0, n) += c * x[0, n)
inline void axpy(float c, const float* x, float* y, int64_t n) {
  const Vec vc = Vec::set1(c);
  int64_t j = 0;
  for (; j + Vec::W <= n; j += Vec::W) fma(vc, Vec::load(x + j), Vec::load(y + j)).store(y + j);
  if (j < n) {
    const int t = static_cast<int>(n - j);
    fma(vc, Vec::load_partial(x + j, t), Vec::load_partial(y + j, t)).store_partial(y + j, t);
  }
}

inline void scale_row(float* y, int64_t n, float c) {
  const Vec vc = Vec::set1(c);
  int64_t j = 0;
  for (; j + Vec::W <= n; j += Vec::W) (Vec::load(y + j) * vc).store(y + j);
  if (j < n) (Vec::load_partial(y + j, static_cast<int>(n - j)) * vc).store_partial(y + j, static_cast<int>(n - j));
}

// Elementwise loops with one body for whole vectors and the tail: body(i, w) handles the w floats from i,
// w == Vec::W but for the last (masked) vector; load_n / store_n are the matching loads and stores.
template <typename Body>
inline void for_vectors(int64_t begin, int64_t end, Body&& body) {
  int64_t i = begin;
  for (; i + Vec::W <= end; i += Vec::W) body(i, Vec::W);
  if (i < end) body(i, static_cast<int>(end - i));
}

// f[j] = 1 / (1 - p) where word index + j of stream `seed` keeps its element, else 0, for j in [0, n):
// ops.dropout's mask as factors (csrc/cpu/dropout.cpp), for a kernel that drops what it computes (attention).
void dropout_factors(uint64_t seed, uint64_t index, int64_t n, double p, float* f);

inline Vec load_n(const float* p, int w) { return w == Vec::W ? Vec::load(p) : Vec::load_partial(p, w); }
inline void store_n(Vec v, float* p, int w) {
  if (w == Vec::W) v.store(p);
  else v.store_partial(p, w);
}

}  // namespace cf::cpu::CF_ISA_NS
