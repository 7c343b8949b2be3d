// Cycles per 8 floats of erf-GELU's fast path (csrc/cpu/simd.h) on one core, input in L1, and of
// variants that drop or change one part: what each part of the ~45 vector operations costs.
// Session 9 used it to see whether op count or the dependency chain bounds erf-GELU on Zen 3:
//   g++ -O3 -std=c++17 -mavx2 -mfma -DCF_ISA_AVX2=1 -DCF_ISA_NS=avx2 -Icsrc bench/gelu_cycles.cpp -o /tmp/gc
//   /tmp/gc            (cycles from a dependent-FMA chain, 4 cycles per FMA; best of 7; run it 3 times)
// Session 9 (Zen 3), two runs: gelu 25.4-25.6 cycles, tail polynomial by Horner 24.5-24.6, a degree-5
// exp polynomial 24.0-24.3, without the exp (~10 operations) 15.5-16.0, without the tail polynomial
// (11 fewer) 17.7-17.9, gelu_tanh 20.3, exp_le0 8.5-8.7. Session 10: exp2_le0 and exp_le0 without
// their compare and blend (the shifter holds n + 126; 2^(n-1) from its bits is 0 at the clamp), see
// simd.h: exp2_le0 5.85-5.93 (was 6.87-7.06), exp_le0 6.71-6.81 (was 8.52-8.81), quiet runs, old and
// new binaries alternated. Dropping n operations saves ~n cycles: the
// count of operations binds, not the dependency chain (two vectors interleaved by hand spill registers
// on AVX2 and ran at 35-51 cycles; the polynomial and the exp in two passes over L1, 28.9-30.6).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/simd.h"

using namespace cf::cpu::avx2;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

__attribute__((noinline)) float fma_chain(long n) {
  __m256 a = _mm256_set1_ps(1.0f), b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(0.001f);
  for (long i = 0; i < n; ++i) {
    a = _mm256_fmadd_ps(a, b, c);
    asm volatile("" : "+x"(a));
  }
  return _mm256_cvtss_f32(a);
}

// e^r on [-ln2/2, ln2/2] with one coefficient fewer than exp_poly (timing only: not refitted).
inline Vec exp_poly5(Vec r) {
  const Vec r2 = r * r;
  const Vec p = fma(fma(Vec::set1(8.3687100559e-3f), r, Vec::set1(4.1668388993e-2f)), r2,
                    fma(Vec::set1(1.6666521132e-1f), r, Vec::set1(4.9999994040e-1f)));
  return fma(p, r2, r + Vec::set1(1.0f));
}

enum Kind { kBase, kHorner, kDeg5, kNoExp, kNoPoly };

// normal_tail_fast with one part changed. kBase repeats the kernel's arithmetic so that the other
// variants can change one part of it; its row should time as gelu's does, which checks the copy. The
// repetition is deliberate: splitting normal_tail_fast so this file could call its polynomial changed
// the package's code generation (GELU op 1.12x the time; bench/RESULTS.md, session 9).
template <Kind K>
inline Vec tail(Vec x) {
  const Vec t = reciprocal(fma(Vec::set1(0.35355339059327376f), x, Vec::set1(1.0f)));
  Vec q;
  if constexpr (K == kNoPoly) {
    q = fma(Vec::set1(1.4e-01f), t, Vec::set1(1.41e-01f));
  } else if constexpr (K == kHorner) {
    const float c[] = {-4.786654934e-02f, 1.856069863e-01f, -3.011808395e-01f, 1.863073707e-01f, -3.807811812e-02f,
                       1.095899716e-01f,  1.198748574e-01f, 1.413760930e-01f,  1.410343051e-01f};
    q = Vec::set1(3.335902700e-03f);
    for (float ci : c) q = fma(q, t, Vec::set1(ci));
  } else {
    const Vec t2 = t * t, t4 = t2 * t2, t8 = t4 * t4;
    const Vec q0 = fma(Vec::set1(1.413760930e-01f), t, Vec::set1(1.410343051e-01f));
    const Vec q1 = fma(Vec::set1(1.095899716e-01f), t, Vec::set1(1.198748574e-01f));
    const Vec q2 = fma(Vec::set1(1.863073707e-01f), t, Vec::set1(-3.807811812e-02f));
    const Vec q3 = fma(Vec::set1(1.856069863e-01f), t, Vec::set1(-3.011808395e-01f));
    const Vec q4 = fma(Vec::set1(3.335902700e-03f), t, Vec::set1(-4.786654934e-02f));
    q = fma(q4, t8, fma(fma(q3, t2, q2), t4, fma(q1, t2, q0)));
  }
  const Vec y = x * Vec::set1(-0.5f);
  const Vec hi = y * x;
  if constexpr (K == kNoExp) return (t * q) * hi;
  const Vec shifter = Vec::set1(kRoundShifter);
  const Vec big = fma(hi, Vec::set1(static_cast<float>(kLog2E)), shifter);
  const Vec r = sub_n_ln2(hi, big - shifter) + fms(y, x, hi);
  return (t * q) * add_exponent_bits(K == kDeg5 ? exp_poly5(r) : exp_poly(r), big);
}

template <Kind K>
inline Vec variant(Vec x) {
  const Vec ax = abs(x);
  if (all_le(ax, Vec::set1(13.0f))) return fnma(ax, tail<K>(ax), max(x, Vec::zero()));
  return gelu(x);
}

template <class F>
double seconds_per_vector(F f, const std::vector<float>& x, std::vector<float>& y) {
  const int n = static_cast<int>(x.size()), reps = 4000;
  double best = 1e9;
  for (int t = 0; t < 7; ++t) {
    const double t0 = now();
    for (int r = 0; r < reps; ++r) {
      for (int j = 0; j < n; j += 8) f(Vec::load(x.data() + j)).store(y.data() + j);
      asm volatile("" ::: "memory");
    }
    best = std::min(best, now() - t0);
  }
  return best / reps / (n / 8);
}

}  // namespace

int main() {
  std::vector<float> x(4096), y(4096);  // 16 KiB each: L1
  std::mt19937 g(1);
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (auto& v : x) v = d(g);
  const double t0 = now();
  fma_chain(100000000);
  const double cycle = (now() - t0) / 4e8;
  std::printf("%.2f GHz (FMA chain)\n", 1e-9 / cycle);
  auto row = [&](const char* name, auto f) { std::printf("%-24s %6.2f cycles / 8 floats\n", name, seconds_per_vector(f, x, y) / cycle); };
  row("gelu (simd.h)", [](Vec v) { return gelu(v); });
  row("same arithmetic", [](Vec v) { return variant<kBase>(v); });
  row("tail poly by Horner", [](Vec v) { return variant<kHorner>(v); });
  row("exp poly degree 5", [](Vec v) { return variant<kDeg5>(v); });
  row("without the exp", [](Vec v) { return variant<kNoExp>(v); });
  row("without the tail poly", [](Vec v) { return variant<kNoPoly>(v); });
  row("gelu_tanh", [](Vec v) { return gelu_tanh(v); });
  row("exp_le0", [](Vec v) { return exp_le0(v); });
  row("exp2_le0 (attention)", [](Vec v) { return exp2_le0(v - Vec::set1(8.0f)); });
}
