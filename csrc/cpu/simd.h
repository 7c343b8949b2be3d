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
inline Vec fnma(Vec a, Vec b, Vec c) { return _mm512_fnmadd_ps(a.v, b.v, c.v); }  // c - a*b
// a * 2^n, n in the low bits of b's bit pattern (see exp_shifter), while the result stays normal
inline Vec add_exponent_bits(Vec a, Vec b) {
  return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(a.v), _mm512_slli_epi32(_mm512_castps_si512(b.v), 23)));
}
// the float whose bits are b's shifted left by 23: 2^(k - 127) for k in b's low bits (0 for k = 0)
inline Vec exponent_field(Vec b) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(b.v), 23)); }
inline Vec max(Vec a, Vec b) { return _mm512_max_ps(a.v, b.v); }
inline Vec min(Vec a, Vec b) { return _mm512_min_ps(a.v, b.v); }
inline Vec abs(Vec a) { return _mm512_abs_ps(a.v); }
inline Vec sqrt(Vec a) { return _mm512_sqrt_ps(a.v); }
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
inline Vec fnma(Vec a, Vec b, Vec c) { return _mm256_fnmadd_ps(a.v, b.v, c.v); }  // c - a*b
inline Vec add_exponent_bits(Vec a, Vec b) {
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(a.v), _mm256_slli_epi32(_mm256_castps_si256(b.v), 23)));
}
inline Vec exponent_field(Vec b) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(b.v), 23)); }
inline Vec max(Vec a, Vec b) { return _mm256_max_ps(a.v, b.v); }
inline Vec min(Vec a, Vec b) { return _mm256_min_ps(a.v, b.v); }
inline Vec abs(Vec a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v); }
inline Vec sqrt(Vec a) { return _mm256_sqrt_ps(a.v); }
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
inline Vec fnma(Vec a, Vec b, Vec c) { Vec r; for (int i = 0; i < Vec::W; ++i) r.v[i] = c.v[i] - a.v[i] * b.v[i]; return r; }
inline Vec add_exponent_bits(Vec a, Vec b) {
  Vec r;
  for (int i = 0; i < Vec::W; ++i) {
    uint32_t x, y;
    std::memcpy(&x, &a.v[i], 4);
    std::memcpy(&y, &b.v[i], 4);
    x += y << 23;
    std::memcpy(&r.v[i], &x, 4);
  }
  return r;
}
inline Vec exponent_field(Vec b) {
  Vec r;
  for (int i = 0; i < Vec::W; ++i) {
    uint32_t y;
    std::memcpy(&y, &b.v[i], 4);
    y <<= 23;
    std::memcpy(&r.v[i], &y, 4);
  }
  return r;
}
inline Vec abs(Vec a) { Vec r; for (int i = 0; i < Vec::W; ++i) r.v[i] = a.v[i] < 0 ? -a.v[i] : a.v[i]; return r; }
inline Vec sqrt(Vec a) { Vec r; for (int i = 0; i < Vec::W; ++i) r.v[i] = std::sqrt(a.v[i]); return r; }
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
constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- Elementary functions (float32, a few ulp), written once over Vec ----

constexpr double kLog2E = 1.4426950408889634074;   // log2 e
constexpr double kLn2 = 0.69314718055994530942;    // ln 2
// x + 1.5 * 2^23 rounds x to an integer (|x| < 2^22) and holds it in the low mantissa bits
constexpr float kRoundShifter = 12582912.0f;

// e^r for |r| <= ln2 / 2 (plus an ulp or two): 1 + r + r^2 P(r), P a degree-4 minimax fit for the
// relative error of e^r, by Estrin's scheme (a 3-FMA chain). Fitted and checked in float32 like
// Cephes' degree-5 polynomial it replaced (max. relative error 1.17e-7 for both), one FMA cheaper.
// With a scale S, the same polynomial at r = S f, evaluated in f: the coefficients are scaled at
// compile time (2^f = e^(f ln2) for f in [-1/2, 1/2] takes S = ln 2 at no extra cost).
// kTimes (a power of 2) multiplies every coefficient, so the result is kTimes e^r exactly as rounded.
struct ScaleOne { static constexpr double value = 1.0; };
struct ScaleLn2 { static constexpr double value = kLn2; };
template <typename S = ScaleOne, int kTimes = 1>
inline Vec exp_poly(Vec r) {
  constexpr double s = S::value, s2 = s * s, k = kTimes;
  auto c = [](double v) { return Vec::set1(static_cast<float>(v)); };
  const Vec r2 = r * r;
  const Vec p = fma(fma(c(k * 1.3814608101e-3 * s2 * s2 * s2), r2, fma(c(k * 8.3687100559e-3 * s2 * s2 * s), r, c(k * 4.1668388993e-2 * s2 * s2))),
                    r2, fma(c(k * 1.6666521132e-1 * s2 * s), r, c(k * 4.9999994040e-1 * s2)));
  if constexpr (s == 1.0 && kTimes == 1) return fma(p, r2, r + Vec::set1(1.0f));
  else return fma(p, r2, fma(r, c(k * s), c(k)));
}

// x - n ln2 for integral n (Cody-Waite: ln2 as a 9-bit high part, whose product with n is exact, plus
// the rest), so x's low bits survive the reduction
inline Vec sub_n_ln2(Vec x, Vec n) {
  return fma(n, Vec::set1(2.12194440e-4f), fma(n, Vec::set1(-0.693359375f), x));
}

// exp(hi + lo) for |lo| small: exp_poly on r = hi - n ln2 + lo, n = round((hi + lo) / ln2).
// hi - n ln2 is exact (Cody-Waite split of ln2), so an argument given as an exact sum (see
// product_error) keeps its low bits. exp(-inf) = 0 (softmax needs it), exp(inf) = inf, NaN stays NaN.
// kBounded: the caller guarantees a finite argument above -300, so where scalef does the scaling
// no clamp is needed at all (2^-433 and below scale to 0 exactly).
template <bool kHasLo, bool kBounded = false>
inline Vec exp_impl(Vec hi, Vec lo) {
  const Vec log2e = Vec::set1(static_cast<float>(kLog2E));
  const Vec arg = kHasLo ? hi + lo : hi;  // unclamped, for the underflow test below
  if constexpr (kLdexpFullRange && kBounded) {
    // nothing to clamp
  } else if constexpr (kLdexpFullRange) {
    // scalef over/underflows correctly by itself (to inf, denormals, 0): only keep the argument
    // finite and n in range. Operand order keeps NaN (x86 min/max return the 2nd on NaN).
    hi = min(Vec::set1(89.0f), max(Vec::set1(-104.0f), hi));
  } else {
    hi = min(Vec::set1(88.3762626647949f), max(Vec::set1(-87.3365447505531f), hi));
  }
  Vec n = round_nearest((kHasLo ? hi + lo : hi) * log2e);
  Vec r = sub_n_ln2(hi, n);
  if constexpr (kHasLo) r = r + lo;
  const Vec p = exp_poly(r);
  if constexpr (kLdexpFullRange) {
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
// exp(hi + lo) where lo is only hi's rounding error (or 0) and -86.5 <= hi <= 88 (a normal result).
// Fewer operations than exp_impl, for erf-GELU, whose throughput they bound (exp_le0 below is the
// same idea for x <= 0, with the underflow handled in the exponent field). n comes from hi alone (r grows by an ulp at most) by the round-to-nearest shifter 1.5 * 2^23, whose
// low bits are n itself, so 2^n is those bits shifted into the exponent field (no round, no conversion).
template <bool kHasLo>
inline Vec exp_shifter(Vec hi, Vec lo) {
  const Vec shifter = Vec::set1(kRoundShifter);
  const Vec big = fma(hi, Vec::set1(static_cast<float>(kLog2E)), shifter);
  const Vec n = big - shifter;
  Vec r = sub_n_ln2(hi, n);
  if constexpr (kHasLo) r = r + lo;
  return add_exponent_bits(exp_poly(r), big);
}

// exp(x) for x <= 0 (softmax's x - max), the way exp2_le0 below does 2^x: x is clamped at -126 ln 2,
// the shifter holds n + 126 (n = round(x log2 e)), and the result is 2 e^r (the polynomial's
// coefficients doubled) times the exponent field's 2^(n-1): a normal float above -125.5 ln 2 = -86.99,
// exactly 0 below it (-inf included; values under ~1.7e-38 are flushed, which no softmax can see next
// to its largest term, exp(0) = 1), with no compare and blend. NaN stays NaN.
inline Vec exp_le0(Vec x) {
  const Vec xc = max(Vec::set1(static_cast<float>(-126.0 * kLn2)), x);  // NaN kept (x86 max: 2nd operand)
  const Vec shifter = Vec::set1(kRoundShifter + 126.0f);
  const Vec big = fma(xc, Vec::set1(static_cast<float>(kLog2E)), shifter);  // low bits: n + 126
  return exp_poly<ScaleOne, 2>(sub_n_ln2(xc, big - shifter)) * exponent_field(big);
}

// 2^x for x <= 0, x in log2 units (attention scales its queries by log2 e, so scores arrive that way):
// n = round(x) by the shifter, f = x - n exact (|f| <= 1/2), 2^f = exp_poly at ln2 f -- no Cody-Waite
// reduction (1.18e-7 max relative error over [-125.5, 0]). x is clamped at -126 and the shifter holds
// n + 126, whose bits shifted into the exponent field are 2^(n-1) for n >= -125 and exactly 0 for
// n = -126: so below -125.5, -inf included, the result is 0 without a compare and a blend, and above
// it the product 2^(f+1) * 2^(n-1) is a normal float (never a denormal). NaN stays NaN.
// (bench/RESULTS.md, session 10: 6.9 cycles per 8 floats in the softmax row loop on Zen 3, was 8.5.)
inline Vec exp2_le0(Vec x) {
  const Vec xc = max(Vec::set1(-126.0f), x);  // NaN kept (x86 max returns its 2nd operand)
  const Vec shifter = Vec::set1(kRoundShifter + 126.0f);
  const Vec big = xc + shifter;       // low bits: n + 126, n = round(xc) in [-126, 0]
  const Vec f = xc - (big - shifter);  // exact
  return exp_poly<ScaleLn2, 2>(f) * exponent_field(big);
}

// The rounding error of p = x * y: x*y - p exactly (an FMA; Dekker's splits without one).
inline Vec product_error(Vec x, Vec y, Vec p) {
#if defined(CF_ISA_AVX2) || defined(CF_ISA_AVX512)
  return fms(x, y, p);
#else
  Vec cx = Vec::set1(4097.0f) * x, cy = Vec::set1(4097.0f) * y;
  Vec xh = cx - (cx - x), xl = x - xh, yh = cy - (cy - y), yl = y - yh;
  return ((xh * yh - p) + xh * yl + xl * yh) + xl * yl;
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
// The polynomial is evaluated by Estrin's scheme (t in (0, 1]). gelu uses it only where some lane
// has |x| > 13 (or is NaN); normal_tail_fast below is the common path.
inline Vec normal_tail(Vec x) {
  Vec z = x * Vec::set1(0.70710678118654752f);
  Vec x2 = x * x;
  Vec t = reciprocal(fma(Vec::set1(0.5f), z, Vec::set1(1.0f)));
  Vec t2 = t * t;
  Vec t4 = t2 * t2;
  Vec q0 = fma(Vec::set1(1.00002368f), t, Vec::set1(static_cast<float>(-1.26551223 - kLn2)));
  Vec q1 = fma(Vec::set1(0.09678418f), t, Vec::set1(0.37409196f));
  Vec q2 = fma(Vec::set1(0.27886807f), t, Vec::set1(-0.18628806f));
  Vec q3 = fma(Vec::set1(1.48851587f), t, Vec::set1(-1.13520398f));
  Vec q4 = fma(Vec::set1(0.17087277f), t, Vec::set1(-0.82215223f));
  Vec p = fma(fma(q3, t2, q2), t4, fma(q1, t2, q0));
  p = fma(q4, t4 * t4, p);
  const Vec minus_half = Vec::set1(-0.5f);
  const Vec hi = x2 * minus_half, lo = fma(product_error(x, x, x2), minus_half, p);
  return t * exp_sum_bounded(hi, lo);
}

// Phi(-x) for 0 <= x <= 13 as erfcx(x / sqrt 2) / 2 * exp(-x^2 / 2), erfcx(z) = exp(z^2) erfc(z) the
// scaled complementary error function: erfcx(z) / 2 = t Q(t), t = 1 / (1 + z / 2), Q a degree-9
// polynomial fitted here for relative error 5.6e-8 over the range (float32 evaluation: 3.6e-7; the
// fit: bench/fit_gelu_tail.py). Unlike normal_tail, exp's argument does not wait for the division
// and the polynomial: the two halves run side by side and meet in one product, so the dependency
// chain is ~45 cycles instead of ~100 and erf-GELU is bound by the multiply pipes' throughput (Zen 3:
// ~25 cycles per 8 floats, was ~33).
inline Vec normal_tail_fast(Vec x) {
  const Vec t = reciprocal(fma(Vec::set1(0.35355339059327376f), x, Vec::set1(1.0f)));  // z/2 = x/(2 sqrt 2)
  const Vec t2 = t * t, t4 = t2 * t2, t8 = t4 * t4;
  const Vec q0 = fma(Vec::set1(1.413760930e-01f), t, Vec::set1(1.410343051e-01f));
  const Vec q1 = fma(Vec::set1(1.095899716e-01f), t, Vec::set1(1.198748574e-01f));
  const Vec q2 = fma(Vec::set1(1.863073707e-01f), t, Vec::set1(-3.807811812e-02f));
  const Vec q3 = fma(Vec::set1(1.856069863e-01f), t, Vec::set1(-3.011808395e-01f));
  const Vec q4 = fma(Vec::set1(3.335902700e-03f), t, Vec::set1(-4.786654934e-02f));
  const Vec q = fma(q4, t8, fma(fma(q3, t2, q2), t4, fma(q1, t2, q0)));
  const Vec y = x * Vec::set1(-0.5f);  // exact
  const Vec hi = y * x;
  return (t * q) * exp_shifter<true>(hi, product_error(y, x, hi));
}

// gelu(x) = x * Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2, evaluated without cancellation on either side.
// Below x = -20, Phi is 0 in float32; clamping x at -FLT_MAX for the product gives gelu(-inf) = 0
// (not -inf * 0). NaN stays NaN (x86 max/min return the 2nd operand on NaN).
// Activations almost always lie within |x| <= 13 (every lane of a vector), where gelu(x) =
// relu(x) - |x| Phi(-|x|) on both sides (no select) with the fast tail; otherwise (NaN included) the
// exponent-polynomial tail with exp's full range handling, clamped at |x| = 20 to keep inf out.
inline Vec gelu(Vec x) {
  const Vec ax = abs(x);
  if (all_le(ax, Vec::set1(13.0f))) return fnma(ax, normal_tail_fast(ax), max(x, Vec::zero()));
  Vec tail = normal_tail(min(Vec::set1(20.0f), ax));
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

// The activations' derivatives, for their backward (x the forward's input). Beyond |x| = 20 both GELUs
// are 0 or x in float32, so x is clamped there where it multiplies a density (inf * 0 would be NaN).

// gelu'(x) = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi); Phi from the same tails as gelu.
inline Vec gelu_grad(Vec x) {
  const Vec ax = min(Vec::set1(20.0f), abs(x));
  const Vec tail = all_le(ax, Vec::set1(13.0f)) ? normal_tail_fast(ax) : normal_tail(ax);  // Phi(-|x|)
  const Vec cdf = select_lt(x, Vec::zero(), tail, Vec::set1(1.0f) - tail);
  const Vec xc = max(Vec::set1(-20.0f), min(Vec::set1(20.0f), x));  // NaN kept
  const Vec pdf = exp(xc * xc * Vec::set1(-0.5f)) * Vec::set1(0.3989422804014327f);
  return fma(xc, pdf, cdf);
}

// gelu_tanh'(x) = s + x s (1 - s) v', s = sigmoid(v), v = 2 sqrt(2/pi) (x + 0.044715 x^3).
inline Vec gelu_tanh_grad(Vec x) {
  constexpr float c = 2.0f * 0.7978845608028654f;
  const Vec xc = max(Vec::set1(-20.0f), min(Vec::set1(20.0f), x));
  const Vec x2 = xc * xc;
  const Vec v = xc * fma(Vec::set1(c * 0.044715f), x2, Vec::set1(c));
  const Vec s = Vec::set1(1.0f) / (Vec::set1(1.0f) + exp(min(Vec::set1(88.0f), Vec::zero() - v)));
  const Vec dv = fma(Vec::set1(3.0f * c * 0.044715f), x2, Vec::set1(c));
  return fma(xc * s * (Vec::set1(1.0f) - s), dv, s);
}

inline Vec relu_grad(Vec x) { return select_lt(Vec::zero(), x, Vec::set1(1.0f), Vec::zero()); }

}  // namespace cf::cpu::CF_ISA_NS
