// GEMM for Linear layers: C (M,N) = act(A (M,K) . W (N,K)^T + bias) + residual.
//
// Goto/BLIS scheme. W is packed once per call into NR-wide panels, KC deep (shared by all
// threads); each thread takes MC x NC tiles of C, packs its MC x KC block of A and runs the
// MR x NR microkernel over it; the epilogue runs on each micro-tile after its last K block,
// while it is in L1. Rows of A few enough (M <= kSmallM) skip packing: each output is a dot
// product of an A row with a W row, 4 x 4 at a time, and W streams from memory once (the GEMV
// path for decoding one token). Measurements behind these choices: bench/gemm_notes.md.
#include <cstring>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/threading.h"
#include "cpu/buffer.h"
#include "cpu/epilogue.h"
#include "cpu/kernels.h"
#include "cpu/microkernel.h"

namespace cf::cpu::CF_ISA_NS {
namespace {

constexpr int64_t kKC = 256;
constexpr int64_t kMC = kMR * (144 / kMR);
constexpr int64_t kNC = kNR * (256 / kNR);
constexpr int64_t kSmallM = 16;

// Rows [m0, m0+mr) of C, columns [n0, n0+4) (nr <= 4 valid): dot products over K.
template <int MR>
inline void dot_block(const GemmArgs& g, int64_t m0, int64_t n0, int nr) {
  const int64_t K = g.K;
  const float* w[4];
  for (int j = 0; j < 4; ++j) w[j] = g.w + (n0 + (j < nr ? j : 0)) * g.ldw;
  const float* x[MR];
  for (int r = 0; r < MR; ++r) x[r] = g.a + (m0 + r) * g.lda;
  Vec acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = Vec::zero();
  int64_t k = 0;
  for (; k + Vec::W <= K; k += Vec::W) {
    Vec wv[4];
    for (int j = 0; j < 4; ++j) wv[j] = Vec::load(w[j] + k);
    for (int r = 0; r < MR; ++r) {
      Vec xv = Vec::load(x[r] + k);
      for (int j = 0; j < 4; ++j) acc[r][j] = fma(xv, wv[j], acc[r][j]);
    }
  }
  if (k < K) {
    int t = static_cast<int>(K - k);
    Vec wv[4];
    for (int j = 0; j < 4; ++j) wv[j] = Vec::load_partial(w[j] + k, t);
    for (int r = 0; r < MR; ++r) {
      Vec xv = Vec::load_partial(x[r] + k, t);
      for (int j = 0; j < 4; ++j) acc[r][j] = fma(xv, wv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    float* c = g.c + (m0 + r) * g.ldc + n0;
    for (int j = 0; j < nr; ++j) c[j] = reduce_add(acc[r][j]);
    epilogue_row(c, nr, g.bias ? g.bias + n0 : nullptr, g.residual ? g.residual + (m0 + r) * g.ldr + n0 : nullptr,
                 g.act);
  }
}

void gemm_small_m(const GemmArgs& g) {
  const int64_t nblocks = ceil_div(g.N, 4);
  const int nt = threads_for(g.N * g.K * g.M, 1 << 16);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t nb = 0; nb < nblocks; ++nb) {
    int64_t n0 = nb * 4;
    int nr = static_cast<int>(imin(4, g.N - n0));
    int64_t m0 = 0;
    for (; m0 + 4 <= g.M; m0 += 4) dot_block<4>(g, m0, n0, nr);
    switch (g.M - m0) {
      case 3: dot_block<3>(g, m0, n0, nr); break;
      case 2: dot_block<2>(g, m0, n0, nr); break;
      case 1: dot_block<1>(g, m0, n0, nr); break;
      default: break;
    }
  }
}

void gemm_packed(const GemmArgs& g) {
  const int64_t M = g.M, N = g.N, K = g.K;
  const int64_t np = ceil_div(N, kNR);  // B panels
  const int64_t nkb = ceil_div(K, kKC);
  Buffer bpack(static_cast<size_t>(np * kNR * K));
  float* const bp = bpack.get();
  const int64_t mt = ceil_div(M, kMC), ntiles = ceil_div(N, kNC);
  const int nt = threads_for(M * N * K, 1 << 18);
  Buffer apack(static_cast<size_t>(nt) * kMC * kKC);

#pragma omp parallel num_threads(nt)
  {
    // Block (kb, panel p) of packed W starts at k0*np*NR + p*kc*NR.
#pragma omp for schedule(static) collapse(2)
    for (int64_t kb = 0; kb < nkb; ++kb)
      for (int64_t p = 0; p < np; ++p) {
        int64_t k0 = kb * kKC, kc = imin(kKC, K - k0);
        pack_b_transposed(g.w + p * kNR * g.ldw + k0, g.ldw, imin(kNR, N - p * kNR), kc,
                          bp + k0 * np * kNR + p * kc * kNR);
      }

    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    float* ap = apack.get() + static_cast<int64_t>(tid) * kMC * kKC;
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < mt * ntiles; ++t) {
      const int64_t i0 = (t / ntiles) * kMC, j0 = (t % ntiles) * kNC;
      const int64_t mc = imin(kMC, M - i0), nc = imin(kNC, N - j0);
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const int64_t k0 = kb * kKC, kc = imin(kKC, K - k0);
        const bool last = kb + 1 == nkb;
        pack_a(g.a + i0 * g.lda + k0, g.lda, mc, kc, 1.0f, ap);
        for (int64_t jr = 0; jr < nc; jr += kNR) {
          const float* b = bp + k0 * np * kNR + ((j0 + jr) / kNR) * kc * kNR;
          const int n = static_cast<int>(imin(kNR, nc - jr));
          for (int64_t ir = 0; ir < mc; ir += kMR) {
            const int m = static_cast<int>(imin(kMR, mc - ir));
            float* c = g.c + (i0 + ir) * g.ldc + j0 + jr;
            microkernel<0>(kc, ap + ir * kc, b, c, g.ldc, m, n, kb > 0);
            if (last) {
              for (int r = 0; r < m; ++r)
                epilogue_row(c + r * g.ldc, n, g.bias ? g.bias + j0 + jr : nullptr,
                             g.residual ? g.residual + (i0 + ir + r) * g.ldr + j0 + jr : nullptr, g.act);
            }
          }
        }
      }
    }
  }
}

}  // namespace

void gemm(const GemmArgs& g) {
  if (g.M == 0 || g.N == 0) return;
  if (g.K == 0) {  // an empty sum: C = act(bias) + residual
    for (int64_t i = 0; i < g.M; ++i) {
      std::memset(g.c + i * g.ldc, 0, sizeof(float) * g.N);
      epilogue_row(g.c + i * g.ldc, g.N, g.bias, g.residual ? g.residual + i * g.ldr : nullptr, g.act);
    }
    return;
  }
  if (g.M <= kSmallM) gemm_small_m(g);
  else gemm_packed(g);
}

}  // namespace cf::cpu::CF_ISA_NS
