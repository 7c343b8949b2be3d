// The machine's ceilings, measured: fp32 FMA throughput (AVX2 and AVX-512, 12 independent
// accumulators per thread) and copy bandwidth on an array far larger than L3.
//   g++ -O3 -fopenmp -mavx512f -mfma bench/peak.cpp -o /tmp/peak && OMP_NUM_THREADS=2 /tmp/peak
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

template <class V, class F>
double fma_gflops(F fma, V init, int lanes) {
  const long iters = 200000000 / lanes;
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    float sink = 0;
#pragma omp parallel reduction(+ : sink)
    {
      V a[12];
      for (int i = 0; i < 12; ++i) a[i] = init;
      const V m = init, c = init;
      for (long it = 0; it < iters; ++it)
#pragma GCC unroll 12
        for (int i = 0; i < 12; ++i) a[i] = fma(a[i], m, c);  // 12 chains in registers
      float tmp[16];
      std::memcpy(tmp, &a[0], sizeof(float) * lanes);
      sink += tmp[0];
    }
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * 12 * lanes * iters * omp_get_max_threads() / s / 1e9);
    if (sink == 12345) std::puts("");
  }
  return best;
}

int main() {
  double avx2 = fma_gflops([](__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); },
                           _mm256_set1_ps(0.999f), 8);
  double avx512 = fma_gflops([](__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); },
                             _mm512_set1_ps(0.999f), 16);
  const size_t n = size_t(64) << 20;  // 256 MiB of floats per array
  std::vector<float> src(n, 1.0f), dst(n, 0.0f);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel for schedule(static)
    for (long c = 0; c < 64; ++c) std::memcpy(dst.data() + c * (n / 64), src.data() + c * (n / 64), n / 64 * 4);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * n * 4 / s / 1e9);
  }
  std::printf("threads %d: fp32 FMA peak AVX2 %.0f GFLOP/s, AVX-512 %.0f GFLOP/s; copy (256 MiB, read+write) %.1f GB/s\n",
              omp_get_max_threads(), avx2, avx512, best);
}
