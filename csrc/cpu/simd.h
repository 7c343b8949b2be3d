// One vector type per ISA, chosen by the CF_ISA_* macro of the translation unit that includes it.
// Kernels are written once against Vec and compiled three times (scalar, avx2, avx512).
// Everything here lives in cf::cpu::<isa> so the three copies never collide at link time.
#pragma once
#include <cstdint>
#include <cmath>
#include <cstring>
#if defined(CF_ISA_AVX2) || defined(CF_ISA_AVX512)
#include <immintrin.h>
#endif

namespace cf::cpu::CF_ISA_NS {

#if defined(CF_ISA_AVX512)
struct Vec {
  static constexpr int W = 16;
  __m512 v;
  Vec() = default;
  Vec(__m512 x) : v(x) {}  // NOLINT
  static __mmask16 first(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static Vec zero() { return _mm512_setzero_ps(); }
  static Vec set1(float x) { return _mm512_set1_ps(x); }
  static Vec load(const float* p) { return _mm512_loadu_ps(p); }
  static Vec load_partial(const float* p, int n) { return _mm512_maskz_loadu_ps(first(n), p); }
  // W bfloat16 values widened exactly to float32 (a bfloat16 is the top half of a float32)
  static Vec load_bf16(const uint16_t* p) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  static Vec load_i8(const int8_t* p) {  // W int8 values, exactly
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void store_partial(float* p, int n) const { _mm512_mask_storeu_ps(p, first(n), v); }
};
inline Vec operator+(Vec a, Vec b) { return _mm512_add_ps(a.v, b.v); }
inline Vec operator-(Vec a, Vec b) { return _mm512_sub_ps(a.v, b.v); }
inline Vec operator*(Vec a, Vec b) { return _mm512_mul_ps(a.v, b.v); }
inline Vec operator/(Vec a, Vec b) { return _mm512_div_ps(a.v, b.v); }
inline Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a.v, b.v, c.v); }
inline Vec fms(Vec a, Vec b, Vec c) { return _mm512_fmsub_ps(a.v, b.v, c.v); }
inline Vec max(Vec a, Vec b) { return _mm512_max_ps(a.v, b.v); }
inline Vec min(Vec a, Vec b) { return _mm512_min_ps(a.v, b.v); }
inline Vec abs(Vec a) { return _mm512_abs_ps(a.v); }
inline float reduce_add(Vec a) { return _mm512_reduce_add_ps(a.v); }
inline float reduce_max(Vec a) { return _mm512_reduce_max_ps(a.v); }
inline Vec round_nearest(Vec a) { return _mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// every lane a <= b (false where either is NaN)
inline bool all_le(Vec a, Vec b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_LE_OQ) == 0xFFFF; }
// a * 2^n for integral n (scalef handles any n, overflow and underflow included)
inline Vec ldexp(Vec a, Vec n) { return _mm512_scalef_ps(a.v, n.v); }
constexpr bool kLdexpFullRange = true;
// 1/a to ~1 ulp: the 14-bit estimate and one Newton step
inline Vec reciprocal(Vec a) {
  __m512 r = _mm512_rcp14_ps(a.v);
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(a.v, r, _mm512_set1_ps(2.0f)));
}
inline Vec select_lt(Vec a, Vec b, Vec x, Vec y) { return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ), y.v, x.v); }
inline Vec copysign(Vec mag, Vec sgn) {
  const __m512i m = _mm512_set1_epi32(0x80000000);
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_andnot_si512(m, _mm512_castps_si512(mag.v)),
                                             _mm512_and_si512(m, _mm512_castps_si512(sgn.v))));
}
// p[i] != 0 ? x : y, for W bytes at p
inline Vec select_bytes(const uint8_t* p, Vec x, Vec y) {
  __mmask16 m = _mm_test_epi8_mask(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), _mm_set1_epi8(-1));
  return _mm512_mask_blend_ps(m, y.v, x.v);
}

#elif defined(CF_ISA_AVX2)
struct Vec {
  static constexpr int W = 8;
  __m256 v;
  Vec() = default;
  Vec(__m256 x) : v(x) {}  // NOLINT
  static __m256i first(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static Vec zero() { return _mm256_setzero_ps(); }
  static Vec set1(float x) { return _mm256_set1_ps(x); }
  static Vec load(const float* p) { return _mm256_loadu_ps(p); }
  static Vec load_partial(const float* p, int n) { return _mm256_maskload_ps(p, first(n)); }
  static Vec load_bf16(const uint16_t* p) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static Vec load_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  void store_partial(float* p, int n) const { _mm256_maskstore_ps(p, first(n), v); }
};
inline Vec operator+(Vec a, Vec b) { return _mm256_add_ps(a.v, b.v); }
inline Vec operator-(Vec a, Vec b) { return _mm256_sub_ps(a.v, b.v); }
inline Vec operator*(Vec a, Vec b) { return _mm256_mul_ps(a.v, b.v); }
inline Vec operator/(Vec a, Vec b) { return _mm256_div_ps(a.v, b.v); }
inline Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a.v, b.v, c.v); }
inline Vec fms(Vec a, Vec b, Vec c) { return _mm256_fmsub_ps(a.v, b.v, c.v); }
inline Vec max(Vec a, Vec b) { return _mm256_max_ps(a.v, b.v); }
inline Vec min(Vec a, Vec b) { return _mm256_min_ps(a.v, b.v); }
inline Vec abs(Vec a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v); }
inline float reduce_add(Vec a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float reduce_max(Vec a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline Vec round_nearest(Vec a) { return _mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline bool all_le(Vec a, Vec b) { return _mm256_movemask_ps(_mm256_cmp_ps(a.v, b.v, _CMP_LE_OQ)) == 0xFF; }
// a * 2^n for integral n while the result stays a normal float (exponent-field arithmetic)
inline Vec ldexp(Vec a, Vec n) {
  __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n.v), 23);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(a.v), e));
}
constexpr bool kLdexpFullRange = false;
inline Vec reciprocal(Vec a) { return _mm256_div_ps(_mm256_set1_ps(1.0f), a.v); }
inline Vec select_lt(Vec a, Vec b, Vec x, Vec y) { return _mm256_blendv_ps(y.v, x.v, _mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ)); }
inline Vec copysign(Vec mag, Vec sgn) {
  const __m256 m = _mm256_set1_ps(-0.0f);
  return _mm256_or_ps(_mm256_andnot_ps(m, mag.v), _mm256_and_ps(m, sgn.v));
}
inline Vec select_bytes(const uint8_t* p, Vec x, Vec y) {
  __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  __m256 is_zero = _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, _mm256_setzero_si256()));
  return _mm256_blendv_ps(x.v, y.v, is_zero);
}

#else  // portable fallback: plain loops the compiler vectorises for the baseline ISA
struct Vec {
  static constexpr int W = 8;
  float v[W];
  static Vec zero() { return set1(0.0f); }
  static Vec set1(float x) { Vec r; for (int i = 0; i < W; ++i) r.v[i] = x; return r; }
  static Vec load(const float* p) { Vec r; std::memcpy(r.v, p, sizeof r.v); return r; }
  static Vec load_partial(const float* p, int n) { Vec r = zero(); for (int i = 0; i < n; ++i) r.v[i] = p[i]; return r; }
  static Vec load_bf16(const uint16_t* p) {
    Vec r;
    for (int i = 0; i < W; ++i) {
      uint32_t u = static_cast<uint32_t>(p[i]) << 16;
      std::memcpy(&r.v[i], &u, sizeof u);
    }
    return r;
  }
  static Vec load_i8(const int8_t* p) { Vec r; for (int i = 0; i < W; ++i) r.v[i] = p[i]; return r; }
  void store(float* p) const { std::memcpy(p, v, sizeof v); }
  void store_partial(float* p, int n) const { for (int i = 0; i < n; ++i) p[i] = v[i]; }
};
#define CF_VEC_BINARY(name, expr) \
  inline Vec name(Vec a, Vec b) { Vec r; for (int i = 0; i < Vec::W; ++i) { float x = a.v[i], y = b.v[i]; r.v[i] = (expr); } return r; }
CF_VEC_BINARY(operator+, x + y)
CF_VEC_BINARY(operator-, x - y)
CF_VEC_BINARY(operator*, x * y)
CF_VEC_BINARY(operator/, x / y)
CF_VEC_BINARY(max, x > y ? x : y)
CF_VEC_BINARY(min, x < y ? x : y)
#undef CF_VEC_BINARY
inline Vec fma(Vec a, Vec b, Vec c) { Vec r; for (int i = 0; i < Vec::W; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i]; return r; }
inline Vec fms(Vec a, Vec b, Vec c) { Vec r; for (int i = 0; i < Vec::W; ++i) r.v[i] = a.v[i] * b.v[i] - c.v[i]; return r; }
inline Vec abs(Vec a) { Vec r; for (int i = 0; i < Vec::W; ++i) r.v[i] = a.v[i] < 0 ? -a.v[i] : a.v[i]; return r; }
inline float reduce_add(Vec a) { float s = 0; for (int i = 0; i < Vec::W; ++i) s += a.v[i]; return s; }
inline float reduce_max(Vec a) { float s = a.v[0]; for (int i = 1; i < Vec::W; ++i) s = a.v[i] > s ? a.v[i] : s; return s; }
inline bool all_le(Vec a, Vec b) {
  bool r = true;
  for (int i = 0; i < Vec::W; ++i) r = r && a.v[i] <= b.v[i];
  return r;
}
inline Vec round_nearest(Vec a) {
  Vec r;
  for (int i = 0; i < Vec::W; ++i) r.v[i] = static_cast<float>(static_cast<int32_t>(a.v[i] + (a.v[i] >= 0 ? 0.5f : -0.5f)));
  return r;
}
inline Vec ldexp(Vec a, Vec n) {
  Vec r;
  for (int i = 0; i < Vec::W; ++i) {
    uint32_t bits; std::memcpy(&bits, &a.v[i], 4);
    bits += static_cast<uint32_t>(static_cast<int32_t>(n.v[i])) << 23;
    std::memcpy(&r.v[i], &bits, 4);
  }
  return r;
}
constexpr bool kLdexpFullRange = false;
inline Vec reciprocal(Vec a) { Vec r; for (int i = 0; i < Vec::W; ++i) r.v[i] = 1.0f / a.v[i]; return r; }
inline Vec select_lt(Vec a, Vec b, Vec x, Vec y) { Vec r; for (int i = 0; i < Vec::W; ++i) r.v[i] = a.v[i] < b.v[i] ? x.v[i] : y.v[i]; return r; }
inline Vec copysign(Vec mag, Vec sgn) {
  Vec r;
  for (int i = 0; i < Vec::W; ++i) { float m = mag.v[i] < 0 ? -mag.v[i] : mag.v[i]; r.v[i] = std::signbit(sgn.v[i]) ? -m : m; }
  return r;
}
inline Vec select_bytes(const uint8_t* p, Vec x, Vec y) { Vec r; for (int i = 0; i < Vec::W; ++i) r.v[i] = p[i] ? x.v[i] : y.v[i]; return r; }
#endif

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- Elementary functions (float32, a few ulp), written once over Vec ----

// exp(hi + lo) for |lo| small: Cephes' polynomial on r = hi - n ln2 + lo, n = round((hi + lo) / ln2).
// hi - n ln2 is exact (Cody-Waite split of ln2), so an argument given as an exact sum (see
// square_error) keeps its low bits. exp(-inf) = 0 (softmax needs it), exp(inf) = inf, NaN stays NaN.
// kBounded: the caller guarantees a finite argument above -300, so where scalef does the scaling
// no clamp is needed at all (2^-433 and below scale to 0 exactly).
// kNormal: the caller guarantees -87 <= hi + lo <= 88, so the result is a normal float and one
// exponent-field step scales it on every ISA (no clamp, no underflow select).
template <bool kHasLo, bool kBounded = false, bool kNormal = false>
inline Vec exp_impl(Vec hi, Vec lo) {
  const Vec log2e = Vec::set1(1.44269504088896341f);
  const Vec arg = kHasLo ? hi + lo : hi;  // unclamped, for the underflow test below
  if constexpr (kNormal || (kLdexpFullRange && kBounded)) {
    // nothing to clamp
  } else if constexpr (kLdexpFullRange) {
    // scalef over/underflows correctly by itself (to inf, denormals, 0): only keep the argument
    // finite and n in range. Operand order keeps NaN (x86 min/max return the 2nd on NaN).
    hi = min(Vec::set1(89.0f), max(Vec::set1(-104.0f), hi));
  } else {
    hi = min(Vec::set1(88.3762626647949f), max(Vec::set1(-87.3365447505531f), hi));
  }
  Vec n = round_nearest((kHasLo ? hi + lo : hi) * log2e);
  Vec r = fma(n, Vec::set1(-0.693359375f), hi);
  r = fma(n, Vec::set1(2.12194440e-4f), r);
  if constexpr (kHasLo) r = r + lo;
  Vec p = Vec::set1(1.9875691500e-4f);
  p = fma(p, r, Vec::set1(1.3981999507e-3f));
  p = fma(p, r, Vec::set1(8.3334519073e-3f));
  p = fma(p, r, Vec::set1(4.1665795894e-2f));
  p = fma(p, r, Vec::set1(1.6666665459e-1f));
  p = fma(p, r, Vec::set1(5.0000001201e-1f));
  p = fma(p, r * r, r + Vec::set1(1.0f));
  if constexpr (kLdexpFullRange || kNormal) {
    return ldexp(p, n);
  } else {
    // exponent-field arithmetic: 2^n in two halves so n = 128 does not overflow the field, and
    // 0 below ln(FLT_MIN), where the true value is no longer a normal float
    Vec half = round_nearest(n * Vec::set1(0.5f));
    Vec y = ldexp(ldexp(p, half), n - half);
    return select_lt(arg, Vec::set1(-87.3365447505531f), Vec::zero(), y);
  }
}

inline Vec exp(Vec x) { return exp_impl<false>(x, Vec::zero()); }
inline Vec exp_sum_bounded(Vec hi, Vec lo) { return exp_impl<true, true>(hi, lo); }
inline Vec exp_sum_normal(Vec hi, Vec lo) { return exp_impl<true, true, true>(hi, lo); }

// The rounding error of a = x * x: x*x - a exactly (an FMA, or Dekker's split without one).
inline Vec square_error(Vec x, Vec a) {
#if defined(CF_ISA_AVX2) || defined(CF_ISA_AVX512)
  return fms(x, x, a);
#else
  Vec c = Vec::set1(4097.0f) * x;
  Vec xh = c - (c - x), xl = x - xh;
  return ((xh * xh - a) + Vec::set1(2.0f) * xh * xl) + xl * xl;
#endif
}

// tanh: Cephes' odd polynomial for |x| < 0.625, else 1 - 2 / (exp(2|x|) + 1) with the sign of x.
inline Vec tanh(Vec x) {
  Vec ax = abs(x);
  Vec z = x * x;
  Vec p = Vec::set1(-5.70498872745e-3f);
  p = fma(p, z, Vec::set1(2.06390887954e-2f));
  p = fma(p, z, Vec::set1(-5.37397155531e-2f));
  p = fma(p, z, Vec::set1(1.33314422036e-1f));
  p = fma(p, z, Vec::set1(-3.33332819422e-1f));
  Vec small = fma(p * z, x, x);
  Vec e = exp(min(Vec::set1(88.0f), ax + ax));
  Vec large = copysign(Vec::set1(1.0f) - Vec::set1(2.0f) / (e + Vec::set1(1.0f)), x);
  return select_lt(ax, Vec::set1(0.625f), small, large);
}

// Phi(-x) = erfc(x / sqrt 2) / 2 for 0 <= x <= 20, with fractional error < 1.2e-7 (Numerical Recipes'
// Chebyshev fit, erfcc; the 1/2 is folded into the exponent as -ln 2). The exponent -x^2/2 is passed
// to exp as an exact sum: rounding it would cost |x^2/2| * 6e-8 of relative error, 1e-5 in the tail.
// The polynomial is evaluated by Estrin's scheme (t in (0, 1]): a 16-cycle dependency chain instead
// of Horner's 40, which is what bounded erf-GELU's throughput. kNormal: the caller guarantees
// x <= 13, so exp's argument (>= -86.6) gives a normal float and needs no range handling.
template <bool kNormal = false>
inline Vec normal_tail(Vec x) {
  Vec z = x * Vec::set1(0.70710678118654752f);
  Vec x2 = x * x;
  Vec t = reciprocal(fma(Vec::set1(0.5f), z, Vec::set1(1.0f)));
  Vec t2 = t * t;
  Vec t4 = t2 * t2;
  Vec q0 = fma(Vec::set1(1.00002368f), t, Vec::set1(-1.26551223f - 0.69314718055994531f));
  Vec q1 = fma(Vec::set1(0.09678418f), t, Vec::set1(0.37409196f));
  Vec q2 = fma(Vec::set1(0.27886807f), t, Vec::set1(-0.18628806f));
  Vec q3 = fma(Vec::set1(1.48851587f), t, Vec::set1(-1.13520398f));
  Vec q4 = fma(Vec::set1(0.17087277f), t, Vec::set1(-0.82215223f));
  Vec p = fma(fma(q3, t2, q2), t4, fma(q1, t2, q0));
  p = fma(q4, t4 * t4, p);
  const Vec minus_half = Vec::set1(-0.5f);
  const Vec hi = x2 * minus_half, lo = fma(square_error(x, x2), minus_half, p);
  if constexpr (kNormal) return t * exp_sum_normal(hi, lo);
  else return t * exp_sum_bounded(hi, lo);
}

// gelu(x) = x * Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2, evaluated without cancellation on either side.
// Below x = -20, Phi is 0 in float32; clamping x at -FLT_MAX for the product gives gelu(-inf) = 0
// (not -inf * 0). NaN stays NaN (x86 max/min return the 2nd operand on NaN).
inline Vec gelu(Vec x) {
  const Vec ax = abs(x);
  // Phi(-|x|); |x| <= 20 keeps inf out. Activations almost always lie within 13, where exp's range
  // handling can be skipped.
  Vec tail = all_le(ax, Vec::set1(13.0f)) ? normal_tail<true>(ax) : normal_tail(min(Vec::set1(20.0f), ax));
  Vec phi = select_lt(x, Vec::zero(), tail, Vec::set1(1.0f) - tail);
  return max(Vec::set1(-3.4028235e38f), x) * phi;
}

// gelu_tanh(x) = x / 2 (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3).
// Below x = -20 it is 0 in float32 (|gelu| < 1e-80): selecting 0 there also gives gelu(-inf) = 0.
inline Vec gelu_tanh(Vec x) {
  Vec u2 = x * fma(Vec::set1(2.0f * 0.7978845608028654f * 0.044715f), x * x, Vec::set1(2.0f * 0.7978845608028654f));
  Vec e = exp(min(Vec::set1(88.0f), Vec::zero() - u2));
  return select_lt(x, Vec::set1(-20.0f), Vec::zero(), x / (Vec::set1(1.0f) + e));
}

inline Vec relu(Vec x) { return max(Vec::zero(), x); }  // NaN stays NaN

}  // namespace cf::cpu::CF_ISA_NS
