// The GEMM driver's loop nest over the real microkernel (csrc/cpu/microkernel.h), one thread, A and W
// already packed, to see what the memory system costs around a kernel that runs at the FMA peak in L1.
// Session 8 used it to find the blocked driver's two losses on 1008x768->3072 (bench/gemm_notes.md):
//   g++ -O3 -std=c++17 -mavx2 -mfma -DCF_ISA_AVX2=1 -DCF_ISA_NS=avx2 -Icsrc bench/gemm_driver_harness.cpp -o /tmp/gdh
//   /tmp/gdh 1008 768 3072 256 && /tmp/gdh 1008 3072 768 256        (M K N KC; GFLOP/s, best-but-one of 7)
// "plain": the session-7 driver (C tiles re-read at the caller's stride each K block, each W panel
// streamed at the first row pass's demand); "staged": partial sums in a tile-major scratch, C written
// on the last K block; "prefetch": the next W panel fetched a share per row pass; "both": what
// csrc/cpu/gemm.cpp does now.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cpu/microkernel.h"

using namespace cf::cpu::avx2;

namespace {
int M = 1008, N = 3072, K = 768, KC = 256;
constexpr int MC = 144;
std::vector<float> A, B, C, S;

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// A: per row block, MR-row panels of every K block (s * nkb + kb); B: panel p holds all of K (p*K*NR).
template <bool kStaged, bool kPrefetch>
void driver() {
  const int nkb = K / KC, np = N / kNR, lines = KC * kNR * 4 / 64;
  for (int i0 = 0; i0 < M; i0 += MC) {
    const int ns = std::min(MC, M - i0) / kMR, per = (lines + ns - 1) / ns;
    for (int kb = 0; kb < nkb; ++kb) {
      const bool last = kb + 1 == nkb;
      for (int p = 0; p < np; ++p) {
        const float* b = B.data() + static_cast<size_t>(p) * K * kNR + kb * KC * kNR;
        const char* next = reinterpret_cast<const char*>(b + K * kNR);
        for (int s = 0; s < ns; ++s) {
          if (kPrefetch && p + 1 < np)
            for (int l = s * per; l < std::min(lines, (s + 1) * per); ++l) __builtin_prefetch(next + l * 64, 0, 3);
          const float* a = A.data() + static_cast<size_t>(s * nkb + kb) * KC * kMR;
          float* c = C.data() + static_cast<size_t>(i0 + s * kMR) * N + p * kNR;
          if (!kStaged) {
            microkernel<0, float>(KC, a, b, c, N, kMR, kNR, kb > 0);
          } else {
            float* tile = S.data() + static_cast<size_t>(p) * kNR * MC + s * kMR * kNR;
            if (last) microkernel<0, float>(KC, a, b, c, N, kMR, kNR, true, nullptr, tile, kNR);
            else microkernel<0, float>(KC, a, b, tile, kNR, kMR, kNR, kb > 0);
          }
        }
      }
    }
  }
}

template <class F>
void bench(const char* name, F f) {
  std::vector<double> ts;
  for (int r = 0; r < 7; ++r) {
    const double t = now();
    f();
    ts.push_back(now() - t);
  }
  std::sort(ts.begin(), ts.end());
  std::printf("%-10s %6.1f GFLOP/s\n", name, 2.0 * M * N * K / ts[1] / 1e9);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc > 4) { M = std::atoi(argv[1]); K = std::atoi(argv[2]); N = std::atoi(argv[3]); KC = std::atoi(argv[4]); }
  A.assign(static_cast<size_t>(M) * K + 64, 0.01f);
  B.assign(static_cast<size_t>(N) * K + 64, 0.02f);
  C.assign(static_cast<size_t>(M) * N + 64, 0.0f);
  S.assign(static_cast<size_t>(MC) * N + 64, 0.0f);
  for (int round = 0; round < 2; ++round) {
    bench("plain", driver<false, false>);
    bench("staged", driver<true, false>);
    bench("prefetch", driver<false, true>);
    bench("both", driver<true, true>);
  }
}
