// Dropout from a counter-based generator (Philox4x32-10, csrc/core/philox.h): element i of a call keeps
// its value when word offset + i of the seed's stream is below (1 - p) 2^32, scaled by 1 / (1 - p) as
// torch's. Nothing is stored for the backward: the same (seed, offset) gives the same mask.
#include <algorithm>
#include <cstring>
#if defined(CF_ISA_AVX512) || defined(CF_ISA_AVX2)
#include <immintrin.h>
#endif

#include "core/philox.h"
#include "core/threading.h"
#include "cpu/kernels.h"
#include "cpu/row.h"

namespace cf::cpu::CF_ISA_NS {

namespace {

constexpr int kLanes = 16;  // Philox blocks computed side by side: 64 words, one loop the compiler vectorises

#if defined(CF_ISA_AVX512) || defined(CF_ISA_AVX2)
#if defined(CF_ISA_AVX512)
using VecU = __m512i;  // 16 blocks at a time
constexpr int kVec = 16;
inline VecU set1(uint32_t x) { return _mm512_set1_epi32(static_cast<int>(x)); }
inline VecU xor3(VecU a, VecU b, VecU c) { return _mm512_xor_si512(_mm512_xor_si512(a, b), c); }
// (hi, lo) of the 32 x 32 -> 64-bit products, lane by lane: even lanes from one vpmuludq, odd from another
inline void mulhilo(VecU a, VecU m, VecU& hi, VecU& lo) {
  const VecU even = _mm512_mul_epu32(a, m), odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}
inline void store(uint32_t* p, VecU v) { _mm512_storeu_si512(p, v); }
inline VecU iota(uint64_t base) {
  return _mm512_add_epi32(set1(static_cast<uint32_t>(base)),
                          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}
#else
using VecU = __m256i;  // 8 blocks at a time
constexpr int kVec = 8;
inline VecU set1(uint32_t x) { return _mm256_set1_epi32(static_cast<int>(x)); }
inline VecU xor3(VecU a, VecU b, VecU c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
inline void mulhilo(VecU a, VecU m, VecU& hi, VecU& lo) {
  const VecU even = _mm256_mul_epu32(a, m), odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}
inline void store(uint32_t* p, VecU v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
inline VecU iota(uint64_t base) {
  return _mm256_add_epi32(set1(static_cast<uint32_t>(base)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#endif

// Words of blocks [block, block + kLanes) into w (4 * kLanes words, in stream order).
inline void philox_blocks(uint64_t block, uint64_t seed, uint32_t* w) {
  alignas(64) uint32_t out[4][kLanes];
  for (int v0 = 0; v0 < kLanes; v0 += kVec) {
    const uint64_t b = block + static_cast<uint64_t>(v0);
    VecU c0 = iota(b), c2 = set1(0u), c3 = set1(0u);
    // the high word: b's, plus one in the lanes where the low word wrapped past 2^32
    alignas(64) uint32_t hi_words[kVec];
    for (int l = 0; l < kVec; ++l) hi_words[l] = static_cast<uint32_t>((b + static_cast<uint64_t>(l)) >> 32);
    VecU c1;
    std::memcpy(&c1, hi_words, sizeof(c1));
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    const VecU m0 = set1(0xD2511F53u), m1 = set1(0xCD9E8D57u);
    for (int round = 0; round < 10; ++round) {
      VecU hi0, lo0, hi1, lo1;
      mulhilo(c0, m0, hi0, lo0);
      mulhilo(c2, m1, hi1, lo1);
      c0 = xor3(hi1, c1, set1(k0));
      c1 = lo1;
      c2 = xor3(hi0, c3, set1(k1));
      c3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    store(out[0] + v0, c0);
    store(out[1] + v0, c1);
    store(out[2] + v0, c2);
    store(out[3] + v0, c3);
  }
  for (int l = 0; l < kLanes; ++l)
    for (int k = 0; k < 4; ++k) w[4 * l + k] = out[k][l];
}
#else
// Words of blocks [block, block + kLanes) into w (4 * kLanes words, in stream order).
inline void philox_blocks(uint64_t block, uint64_t seed, uint32_t* w) {
  for (int l = 0; l < kLanes; ++l) {
    const Philox4 r = philox4x32_10(static_cast<uint32_t>(block + l), static_cast<uint32_t>((block + l) >> 32), 0u, 0u,
                                    static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    for (int k = 0; k < 4; ++k) w[4 * l + k] = r.v[k];
  }
}
#endif

// Which words keep their element: word < (1 - p) 2^32, i.e. word <= last_kept (32-bit compares vectorise;
// 64-bit ones did not); kept elements are scaled by 1 / (1 - p). p = 1 (or within 2^-32 of it) keeps none.
struct KeepRule {
  uint32_t last_kept = 0;
  bool none_kept = false;
  float scale = 0.0f;
  explicit KeepRule(double p) {
    const uint64_t threshold = static_cast<uint64_t>((1.0 - p) * 4294967296.0);
    none_kept = threshold == 0;
    last_kept = none_kept ? 0u : static_cast<uint32_t>(std::min<uint64_t>(threshold - 1, 0xFFFFFFFFu));
    scale = none_kept ? 0.0f : static_cast<float>(1.0 / (1.0 - p));
  }
  bool keeps(uint32_t word) const { return word <= last_kept && !none_kept; }
};

// body(i, words, m) for consecutive runs covering [0, n): words[j] is word index + i + j of the stream
// (words index & 3 ... of the first Philox block onwards, as far as a batch of blocks reaches).
template <class Body>
inline void for_words(uint64_t seed, uint64_t index, int64_t n, Body&& body) {
  uint32_t w[4 * kLanes];
  int64_t i = 0;
  while (i < n) {
    const uint64_t g = index + static_cast<uint64_t>(i);
    philox_blocks(g >> 2, seed, w);
    const int64_t first = static_cast<int64_t>(g & 3);
    const int64_t m = std::min<int64_t>(n - i, 4 * kLanes - first);
    body(i, static_cast<const uint32_t*>(w + first), m);
    i += m;
  }
}

}  // namespace

void dropout_factors(uint64_t seed, uint64_t index, int64_t n, double p, float* f) {
  const KeepRule rule(p);
  for_words(seed, index, n, [&](int64_t i, const uint32_t* word, int64_t m) {
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) f[i + j] = rule.keeps(word[j]) ? rule.scale : 0.0f;
  });
}

void dropout(const DropoutArgs& a) {
  if (a.n == 0) return;
  const KeepRule rule(a.p);
  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks = (a.n + kChunk - 1) / kChunk;
  const int nt = threads_for(a.n * 4, 1 << 16);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk, end = std::min(a.n, begin + kChunk);
    for_words(a.seed, a.offset + static_cast<uint64_t>(begin), end - begin,
              [&](int64_t i, const uint32_t* word, int64_t m) {
                float* y = a.y + begin + i;
                const float* x = a.x + begin + i;
                // x * mask as torch's: a dropped NaN stays NaN
#pragma omp simd
                for (int64_t j = 0; j < m; ++j) y[j] = x[j] * (rule.keeps(word[j]) ? rule.scale : 0.0f);
                if (a.mask)
                  for (int64_t j = 0; j < m; ++j) a.mask[begin + i + j] = rule.keeps(word[j]);
              });
  }
}

}  // namespace cf::cpu::CF_ISA_NS
