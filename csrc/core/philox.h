// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a counter-based
// generator -- the random numbers of counter c under key k are a pure function of (k, c), so a dropout
// mask is recomputed from (seed, offset) in the backward instead of being stored, on any thread count
// and any device (the same header compiles for CUDA). Checked against Random123's known-answer vectors.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define CF_PHILOX_FN __host__ __device__ inline
#else
#define CF_PHILOX_FN inline
#endif

namespace cf {

struct Philox4 {
  uint32_t v[4];
};

CF_PHILOX_FN Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kM0) * c0, p1 = static_cast<uint64_t>(kM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return {{c0, c1, c2, c3}};
}

// The 32 random bits of element `index` of the stream (seed, ...): counter index / 4, word index % 4.
// Streams that start at different offsets are windows of one sequence, so offset + i never repeats a word.
CF_PHILOX_FN uint32_t philox_word(uint64_t seed, uint64_t index) {
  const uint64_t block = index >> 2;
  const Philox4 r = philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u,
                                  static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return r.v[index & 3];
}

}  // namespace cf
