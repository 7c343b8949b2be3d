// The register-blocked inner kernel shared by GEMM and attention:
//   C (m x n, m <= MR, n <= NR) (+)= A (m x kc) . B (kc x n)
// A is an MR-row panel, either packed (a[k*MR + r]) or row-major with a compile-time leading
// dimension LDA (a[r*LDA + k]; rows past m may hold anything, their results are dropped).
// B is an NR-wide packed panel, b[k*NR + j], zero-padded past n: float32, bfloat16 or int8 (load_b).
// MR x NV accumulators stay in registers: 24 zmm on AVX-512, 12 ymm on AVX2 -- enough independent
// FMA chains to hide the FMA latency on both FMA pipes (see bench/gemm_notes.md).
#pragma once
#include <cstdint>
#include <type_traits>
#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#include "cpu/simd.h"

namespace cf::cpu::CF_ISA_NS {

#if defined(CF_ISA_AVX512)
constexpr int kMR = 12, kNV = 2;
#elif defined(CF_ISA_AVX2)
constexpr int kMR = 6, kNV = 2;
#else
constexpr int kMR = 4, kNV = 2;
#endif
constexpr int kNR = kNV * Vec::W;

// B panels hold float32, or bfloat16 widened on load (weights packed by ops::pack_weight).
inline Vec load_b(const float* p) { return Vec::load(p); }
inline Vec load_b(const uint16_t* p) { return Vec::load_bf16(p); }
inline Vec load_b(const int8_t* p) { return Vec::load_i8(p); }

// `scale` (int8 B only): column j of this product is multiplied by scale[j] (NR of them) before it is
// stored or accumulated.
// kPrefetchC: the C tile is touched only after the k loop; fetch its lines first (for writing), so a
// tile that is not in cache (a large GEMM's C, revisited once per K block) does not stall the stores.
// Attention's tiles live in its L1-sized scratch and skip it.
// `cin` (optional): with `accumulate`, the partial sums are read from cin (leading dimension ldcin)
// instead of from c -- the GEMM keeps a large C's partial sums in a contiguous scratch between K
// blocks and writes the strided C once, on the last.
// `bias` (optional, n floats): added to the tile before it is stored (C = A.B + C_in + bias), so the
// GEMM's epilogue needs no pass of its own for a bias alone.
template <int LDA, typename BT = float, bool kPrefetchC = true>
inline void microkernel(int64_t kc, const float* a, const BT* b, float* c, int64_t ldc, int m, int n,
                        bool accumulate, const float* scale = nullptr, const float* cin = nullptr,
                        int64_t ldcin = 0, const float* bias = nullptr) {
  if (!cin) { cin = c; ldcin = ldc; }
  if constexpr (kPrefetchC) {
#pragma GCC unroll 16
    for (int r = 0; r < kMR; ++r) {
      __builtin_prefetch(c + r * ldc, 1);
      __builtin_prefetch(c + r * ldc + kNR - 1, 1);
    }
  }
  Vec acc[kMR][kNV];
#pragma GCC unroll 16
  for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < kNV; ++j) acc[r][j] = Vec::zero();

  for (int64_t k = 0; k < kc; ++k) {
    Vec bv[kNV];
#pragma GCC unroll 4
    for (int j = 0; j < kNV; ++j) bv[j] = load_b(b + k * kNR + j * Vec::W);
#pragma GCC unroll 16
    for (int r = 0; r < kMR; ++r) {
      Vec ar = Vec::set1(LDA == 0 ? a[k * kMR + r] : a[r * LDA + k]);
#pragma GCC unroll 4
      for (int j = 0; j < kNV; ++j) acc[r][j] = fma(ar, bv[j], acc[r][j]);
    }
  }

  if constexpr (std::is_same_v<BT, int8_t>) {
    Vec sv[kNV];
#pragma GCC unroll 4
    for (int j = 0; j < kNV; ++j) sv[j] = Vec::load(scale + j * Vec::W);
#pragma GCC unroll 16
    for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
      for (int j = 0; j < kNV; ++j) acc[r][j] = acc[r][j] * sv[j];
  }

  if (m == kMR && n == kNR) {
    if (accumulate) {
#pragma GCC unroll 16
      for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
        for (int j = 0; j < kNV; ++j) acc[r][j] = acc[r][j] + Vec::load(cin + r * ldcin + j * Vec::W);
    }
    if (bias) {
#pragma GCC unroll 4
      for (int j = 0; j < kNV; ++j) {
        const Vec bj = Vec::load(bias + j * Vec::W);
#pragma GCC unroll 16
        for (int r = 0; r < kMR; ++r) acc[r][j] = acc[r][j] + bj;
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
      for (int j = 0; j < kNV; ++j) acc[r][j].store(c + r * ldc + j * Vec::W);
    return;
  }
#pragma GCC unroll 16
  for (int r = 0; r < kMR; ++r) {
    if (r >= m) break;
#pragma GCC unroll 4
    for (int j = 0; j < kNV; ++j) {
      int cols = n - j * Vec::W;
      if (cols <= 0) break;
      float* p = c + r * ldc + j * Vec::W;
      const float* q = cin + r * ldcin + j * Vec::W;
      if (cols >= Vec::W) {
        Vec x = accumulate ? acc[r][j] + Vec::load(q) : acc[r][j];
        if (bias) x = x + Vec::load(bias + j * Vec::W);
        x.store(p);
      } else {
        Vec x = accumulate ? acc[r][j] + Vec::load_partial(q, cols) : acc[r][j];
        if (bias) x = x + Vec::load_partial(bias + j * Vec::W, cols);
        x.store_partial(p, cols);
      }
    }
  }
}

#if defined(CF_ISA_AVX2)
// One full 6-row panel, 8 columns at a time: the 6 x 8 block is transposed in registers (an 8 x 8
// transpose's first six rows) and each column's 6 floats leave in two stores, instead of 48 scalar
// stores (packing took ~3x the operations, a few % of the GEMMs with N = 384 and of attention's Q).
inline int64_t pack_a_panel6(const float* src, int64_t ld, int64_t kc, float scale, float* dst) {
  static_assert(kMR == 6, "AVX2 panels are 6 rows");
  const __m256 vs = _mm256_set1_ps(scale);
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8, dst += 48) {
    const __m256 r0 = _mm256_mul_ps(vs, _mm256_loadu_ps(src + k)), r1 = _mm256_mul_ps(vs, _mm256_loadu_ps(src + ld + k));
    const __m256 r2 = _mm256_mul_ps(vs, _mm256_loadu_ps(src + 2 * ld + k)), r3 = _mm256_mul_ps(vs, _mm256_loadu_ps(src + 3 * ld + k));
    const __m256 r4 = _mm256_mul_ps(vs, _mm256_loadu_ps(src + 4 * ld + k)), r5 = _mm256_mul_ps(vs, _mm256_loadu_ps(src + 5 * ld + k));
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);  // r0[0] r1[0] r0[1] r1[1] | [4] [5]
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    const __m256 c04 = _mm256_shuffle_ps(t0, t2, 0x44), c15 = _mm256_shuffle_ps(t0, t2, 0xEE);  // rows 0-3 of columns 0 | 4, ...
    const __m256 c26 = _mm256_shuffle_ps(t1, t3, 0x44), c37 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m128 lo4 = _mm256_castps256_ps128(t4), hi4 = _mm256_extractf128_ps(t4, 1);  // rows 4-5 of columns 0, 1 | 4, 5
    const __m128 lo5 = _mm256_castps256_ps128(t5), hi5 = _mm256_extractf128_ps(t5, 1);  // columns 2, 3 | 6, 7
    _mm_storeu_ps(dst, _mm256_castps256_ps128(c04));       _mm_storel_pi(reinterpret_cast<__m64*>(dst + 4), lo4);
    _mm_storeu_ps(dst + 6, _mm256_castps256_ps128(c15));   _mm_storeh_pi(reinterpret_cast<__m64*>(dst + 10), lo4);
    _mm_storeu_ps(dst + 12, _mm256_castps256_ps128(c26));  _mm_storel_pi(reinterpret_cast<__m64*>(dst + 16), lo5);
    _mm_storeu_ps(dst + 18, _mm256_castps256_ps128(c37));  _mm_storeh_pi(reinterpret_cast<__m64*>(dst + 22), lo5);
    _mm_storeu_ps(dst + 24, _mm256_extractf128_ps(c04, 1)); _mm_storel_pi(reinterpret_cast<__m64*>(dst + 28), hi4);
    _mm_storeu_ps(dst + 30, _mm256_extractf128_ps(c15, 1)); _mm_storeh_pi(reinterpret_cast<__m64*>(dst + 34), hi4);
    _mm_storeu_ps(dst + 36, _mm256_extractf128_ps(c26, 1)); _mm_storel_pi(reinterpret_cast<__m64*>(dst + 40), hi5);
    _mm_storeu_ps(dst + 42, _mm256_extractf128_ps(c37, 1)); _mm_storeh_pi(reinterpret_cast<__m64*>(dst + 46), hi5);
  }
  return k;  // columns done; the caller packs the rest
}
#endif

// Pack rows [0, rows) x cols [0, kc) of a row-major matrix (leading dimension ld) into MR-row
// panels: dst[p][k*MR + r] = scale * src[(p*MR + r)*ld + k], zero rows past `rows`.
inline void pack_a(const float* src, int64_t ld, int64_t rows, int64_t kc, float scale, float* dst) {
  for (int64_t p0 = 0; p0 < rows; p0 += kMR, dst += kc * kMR) {
    int64_t pr = rows - p0 < kMR ? rows - p0 : kMR;
#if defined(CF_ISA_AVX2)
    if (pr == kMR) {
      const float* s = src + p0 * ld;
      for (int64_t k = pack_a_panel6(s, ld, kc, scale, dst); k < kc; ++k)
        for (int64_t r = 0; r < kMR; ++r) dst[k * kMR + r] = scale * s[r * ld + k];
      continue;
    }
#endif
    for (int64_t r = 0; r < kMR; ++r) {
      if (r < pr) {
        const float* s = src + (p0 + r) * ld;
        for (int64_t k = 0; k < kc; ++k) dst[k * kMR + r] = scale * s[k];
      } else {
        for (int64_t k = 0; k < kc; ++k) dst[k * kMR + r] = 0.0f;
      }
    }
  }
}

// pack_a of the transpose of a row-major (kc, rows) matrix: dst[p][k*MR + r] = src[k*ld + p*MR + r] -- each
// panel's MR values of a k are contiguous in the source (the weight gradient's dZ^T, read without a copy).
inline void pack_a_transposed(const float* src, int64_t ld, int64_t rows, int64_t kc, float* dst) {
  for (int64_t p0 = 0; p0 < rows; p0 += kMR, dst += kc * kMR) {
    const int64_t pr = rows - p0 < kMR ? rows - p0 : kMR;
    for (int64_t k = 0; k < kc; ++k) {
      const float* s = src + k * ld + p0;
      float* d = dst + k * kMR;
      int64_t r = 0;
      for (; r < pr; ++r) d[r] = s[r];
      for (; r < kMR; ++r) d[r] = 0.0f;
    }
  }
}

// Pack the transpose of rows [0, rows) x cols [0, kc) of a row-major matrix into NR-wide panels:
// dst[p][k*NR + j] = src[(p*NR + j)*ld + k] (a Linear weight (out, in), or K in attention).
inline void pack_b_transposed(const float* src, int64_t ld, int64_t rows, int64_t kc, float* dst) {
  for (int64_t p0 = 0; p0 < rows; p0 += kNR, dst += kc * kNR) {
    int64_t pr = rows - p0 < kNR ? rows - p0 : kNR;
#if defined(__SSE2__)
    if (pr == kNR) {  // full panel: 4 x 4 transposes (SSE is baseline x86-64, so every ISA build has it)
      int64_t k = 0;
      for (; k + 4 <= kc; k += 4)
        for (int64_t j = 0; j < kNR; j += 4) {
          const float* s0 = src + (p0 + j) * ld + k;
          __m128 r0 = _mm_loadu_ps(s0), r1 = _mm_loadu_ps(s0 + ld), r2 = _mm_loadu_ps(s0 + 2 * ld),
                 r3 = _mm_loadu_ps(s0 + 3 * ld);
          _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
          _mm_storeu_ps(dst + k * kNR + j, r0);
          _mm_storeu_ps(dst + (k + 1) * kNR + j, r1);
          _mm_storeu_ps(dst + (k + 2) * kNR + j, r2);
          _mm_storeu_ps(dst + (k + 3) * kNR + j, r3);
        }
      for (; k < kc; ++k)
        for (int64_t j = 0; j < kNR; ++j) dst[k * kNR + j] = src[(p0 + j) * ld + k];
      continue;
    }
#endif
    for (int64_t j = 0; j < kNR; ++j) {
      if (j < pr) {
        const float* s = src + (p0 + j) * ld;
        for (int64_t k = 0; k < kc; ++k) dst[k * kNR + j] = s[k];
      } else {
        for (int64_t k = 0; k < kc; ++k) dst[k * kNR + j] = 0.0f;
      }
    }
  }
}

// Pack rows [0, kc) x cols [0, cols) of a row-major matrix into NR-wide panels:
// dst[p][k*NR + j] = src[k*ld + p*NR + j] (V in attention).
inline void pack_b(const float* src, int64_t ld, int64_t kc, int64_t cols, float* dst) {
  for (int64_t p0 = 0; p0 < cols; p0 += kNR, dst += kc * kNR) {
    int64_t pc = cols - p0 < kNR ? cols - p0 : kNR;
    for (int64_t k = 0; k < kc; ++k) {
      const float* s = src + k * ld + p0;
      float* d = dst + k * kNR;
      int64_t j = 0;
      for (; j < pc; ++j) d[j] = s[j];
      for (; j < kNR; ++j) d[j] = 0.0f;
    }
  }
}

}  // namespace cf::cpu::CF_ISA_NS
