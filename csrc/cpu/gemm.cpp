// GEMM for Linear layers: C (M,N) = act(A (M,K) . W (N,K)^T + bias) + residual.
//
// Goto/BLIS scheme. W is packed into NR-wide panels -- once per call (shared by all threads), or
// once and for all by ops::pack_weight (float32, bfloat16 or int8 with per-row scales; GemmArgs::wp).
// Each thread owns whole row blocks of C: it packs its block of A once per K block and runs the
// MR x NR microkernel across all of N; the epilogue runs on each micro-tile after its last K block,
// while it is in L1. Against pre-packed W, inputs whose A fits L2 read A in place (panel_rows), W
// streaming once. Without pre-packing, few rows (M <= kSmallM) skip packing altogether: each output
// is a dot product of an A row with a W row, as many W rows at once as the registers allow (the GEMV
// path for decoding one token). Measurements behind these choices: bench/gemm_notes.md.
#include <cstring>
#include <type_traits>
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
constexpr int64_t kKCOne = 384;
constexpr int64_t kMC = kMR * (144 / kMR);
constexpr int64_t kSmallM = 16;
constexpr int64_t kStageFloats = int64_t(1) << 20;  // per thread: 4 MiB of partial sums at most
// Against pre-packed W, rows are read in place (panel_rows) while A stays in L2 (M*K floats up to
// 384 KiB): at 768 -> 3072 that ran at 184-190 GFLOP/s for M = 16..128 against 117-180 for the
// blocked driver, whose packing of A only pays once A spills from L2.
constexpr int64_t kInPlaceAFloats = 96 * 1024;
// Narrow (bf16, int8) panels are prefetched 2 KiB ahead: decoding GPT-2 small's layers (M = 1, weights
// from DRAM) went from 28 to 38 GB/s with int8 and from 30 to 36 GB/s with bf16. Float32 panels are
// prefetched only for 4+ rows at a time (MiniLM, one 32-token sentence: 5.54-5.69 -> 5.32-5.40 ms);
// the float32 GEMV measured worse with it (0.96x -> 0.87x numpy), so it is left to the hardware.
constexpr int kPrefetchBytes = 2048;
// DRAM streams per thread for a decoding GEMV against packed weights (panels_one_row).
constexpr int kStreams = 4;

// Rows [m0, m0+MR) of C, columns [n0, n0+nr) (nr <= NB): dot products of A rows with W rows over K,
// NB W rows streaming at once.
template <int MR, int NB>
inline void dot_block(const GemmArgs& g, int64_t m0, int64_t n0, int nr) {
  const int64_t K = g.K;
  const float* w[NB];
  for (int j = 0; j < NB; ++j) w[j] = g.w + (n0 + (j < nr ? j : 0)) * g.ldw;
  const float* x[MR];
  for (int r = 0; r < MR; ++r) x[r] = g.a + (m0 + r) * g.lda;
  Vec acc[MR][NB];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NB; ++j) acc[r][j] = Vec::zero();
  int64_t k = 0;
  for (; k + Vec::W <= K; k += Vec::W) {
    Vec wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = Vec::load(w[j] + k);
    for (int r = 0; r < MR; ++r) {
      Vec xv = Vec::load(x[r] + k);
      for (int j = 0; j < NB; ++j) acc[r][j] = fma(xv, wv[j], acc[r][j]);
    }
  }
  if (k < K) {
    int t = static_cast<int>(K - k);
    Vec wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = Vec::load_partial(w[j] + k, t);
    for (int r = 0; r < MR; ++r) {
      Vec xv = Vec::load_partial(x[r] + k, t);
      for (int j = 0; j < NB; ++j) acc[r][j] = fma(xv, wv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    float* c = g.c + (m0 + r) * g.ldc + n0;
    for (int j = 0; j < nr; ++j) c[j] = reduce_add(acc[r][j]);
    epilogue_row(c, nr, g.bias ? g.bias + n0 : nullptr, g.residual ? g.residual + (m0 + r) * g.ldr + n0 : nullptr,
                 g.act);
  }
}

// One A row (M = 1) against NB W rows at any indices (rows[j], j < nr): C gets the raw dot products,
// the caller runs the epilogue over its whole share afterwards.
template <int NB>
inline void dot_rows(const GemmArgs& g, const int64_t* rows, int nr) {
  const int64_t K = g.K;
  const float* w[NB];
  for (int j = 0; j < NB; ++j) w[j] = g.w + rows[j < nr ? j : 0] * g.ldw;
  Vec acc[NB];
  for (int j = 0; j < NB; ++j) acc[j] = Vec::zero();
  int64_t k = 0;
  for (; k + Vec::W <= K; k += Vec::W) {
    const Vec xv = Vec::load(g.a + k);
    for (int j = 0; j < NB; ++j) acc[j] = fma(xv, Vec::load(w[j] + k), acc[j]);
  }
  if (k < K) {
    const int t = static_cast<int>(K - k);
    const Vec xv = Vec::load_partial(g.a + k, t);
    for (int j = 0; j < NB; ++j) acc[j] = fma(xv, Vec::load_partial(w[j] + k, t), acc[j]);
  }
  for (int j = 0; j < nr; ++j) g.c[rows[j]] = reduce_add(acc[j]);
}

// Vector registers: 32 zmm with AVX-512, 16 otherwise. A dot block of MR rows x NB W rows holds
// MR*NB accumulators and MR x vectors (the W loads fold into the FMAs).
constexpr int kVecRegs = Vec::W == 16 ? 32 : 16;

template <int NB>
void gemm_small_m_nb(const GemmArgs& g) {
  const int64_t nblocks = ceil_div(g.N, NB);
  const int nt = threads_for(g.N * g.K * g.M, 1 << 16);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t nb = 0; nb < nblocks; ++nb) {
    const int64_t n0 = nb * NB;
    const int nr = static_cast<int>(imin(NB, g.N - n0));
    int64_t m0 = 0;
    if constexpr (4 * NB + 4 <= kVecRegs)
      for (; m0 + 4 <= g.M; m0 += 4) dot_block<4, NB>(g, m0, n0, nr);
    if constexpr (2 * NB + 2 <= kVecRegs)
      for (; m0 + 2 <= g.M; m0 += 2) dot_block<2, NB>(g, m0, n0, nr);
    for (; m0 < g.M; ++m0) dot_block<1, NB>(g, m0, n0, nr);
  }
}

// The GEMV (M = 1): each thread's share of W's rows in kStreams parts, NB / kStreams
// rows of each part at a time, so a core reads several DRAM streams at once (as panels_one_row does
// for packed weights); the epilogue runs over the share at the end, from L2.
void gemv_streams(const GemmArgs& g) {
  constexpr int NB = kVecRegs / 2, per = NB / kStreams;
  static_assert(per * kStreams == NB, "NB rows = kStreams parts x per rows");
  const int nt = threads_for(g.N * g.K, 1 << 16);
#pragma omp parallel num_threads(nt)
  {
    const auto [r0, r1] = thread_share(g.N);
    const int64_t part = (r1 - r0) / kStreams / per * per;
    int64_t rows[NB];
    for (int64_t i = 0; i < part; i += per) {
      for (int q = 0; q < kStreams; ++q)
        for (int j = 0; j < per; ++j) rows[q * per + j] = r0 + q * part + i + j;
      dot_rows<NB>(g, rows, NB);
    }
    for (int64_t n0 = r0 + kStreams * part; n0 < r1; n0 += NB) {
      const int nr = static_cast<int>(imin(NB, r1 - n0));
      for (int j = 0; j < nr; ++j) rows[j] = n0 + j;
      dot_rows<NB>(g, rows, nr);
    }
    epilogue_row(g.c + r0, r1 - r0, g.bias ? g.bias + r0 : nullptr, g.residual ? g.residual + r0 : nullptr, g.act);
  }
}

// As many W rows in flight as the registers allow: GEMV (M = 1) is bound by loads in flight.
// Measured on AVX-512 at M=1 (1x768->50257): 16 rows 0.90x numpy, 8 rows 0.93x, 4 rows 0.88x,
// 1 row 0.85x -- all within the run-to-run spread; at M=2, 16 rows cut 3.4-4.0 ms to 2.7 ms.
void gemm_small_m(const GemmArgs& g) {
  if (g.M == 1) gemv_streams(g);
  else if (g.M == 2) gemm_small_m_nb<kVecRegs / 4>(g);
  else gemm_small_m_nb<kVecRegs / 8>(g);
}

// The next W panel, fetched a cache line at a time while the current one is reused from L1 by the
// later row blocks: a weight streamed from DRAM then arrives spread over all passes instead of in
// one burst on the first (a panel of 384 x 16 floats carries one line per k; the first of 6 passes
// would need ~34 GB/s per core).
struct PanelPrefetch {
  const char* next = nullptr;
  const char* end = nullptr;
  int every = 1;  // one line per `every` k iterations
  int countdown = 1;
  inline void step(int k_done) {
    countdown -= k_done;
    if (countdown <= 0) {
      countdown += every;
      if (next < end) {
        __builtin_prefetch(next);
        next += 64;
      }
    }
  }
};

// Rows [m0, m0+R) of C, columns [n0, n0+n) of one panel, from its accumulators: the int8 weight's
// per-column scales and the bias in registers, the store, then the epilogue (activation, residual).
template <int R, typename BT>
inline void finish_tile(const GemmArgs& g, EpilogueTile epi, int64_t m0, Vec (&acc)[R][kNV], int64_t n0, int n) {
  if constexpr (std::is_same_v<BT, int8_t>) {  // per-column scales of the int8 weight
    for (int j = 0; j < kNV; ++j) {
      const Vec sv = Vec::load(g.wp_scale + n0 + j * Vec::W);
      for (int r = 0; r < R; ++r) acc[r][j] = acc[r][j] * sv;
    }
  }
  if (g.bias) {  // in registers: the epilogue (if any) then has no bias to add
    for (int j = 0; j < kNV; ++j) {
      const int cols = n - j * Vec::W;
      if (cols <= 0) break;
      const float* bj = g.bias + n0 + j * Vec::W;
      const Vec bv = cols >= Vec::W ? Vec::load(bj) : Vec::load_partial(bj, cols);
      for (int r = 0; r < R; ++r) acc[r][j] = acc[r][j] + bv;
    }
  }
  for (int r = 0; r < R; ++r) {
    float* c = g.c + (m0 + r) * g.ldc + n0;
    for (int j = 0; j < kNV; ++j) {
      const int cols = n - j * Vec::W;
      if (cols >= Vec::W) acc[r][j].store(c + j * Vec::W);
      else if (cols > 0) acc[r][j].store_partial(c + j * Vec::W, cols);
    }
  }
  if (epi) epi(g.c + m0 * g.ldc + n0, g.ldc, R, n, nullptr, g.residual ? g.residual + m0 * g.ldr + n0 : nullptr, g.ldr);
}

// Rows [m0, m0+R) of C, the columns of one packed W panel (n <= NR of them, from column n0), over
// all of K: A rows are read in place, the panel streams once. For few rows against pre-packed
// weights (decoding), where packing A would cost more than it saves. With few accumulators
// (R*kNV < 8) U sets run on alternate k so the FMA latency stays hidden.
template <int R, typename BT>
inline void panel_rows(const GemmArgs& g, EpilogueTile epi, int64_t m0, const BT* b, int64_t n0, int n,
                       PanelPrefetch* pf = nullptr) {
  constexpr int U = R * kNV >= 8 ? 1 : 8 / (R * kNV);
  const int64_t K = g.K, lda = g.lda;
  const float* a = g.a + m0 * lda;
  Vec acc[U][R][kNV];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < kNV; ++j) acc[u][r][j] = Vec::zero();
  PanelPrefetch q = pf ? *pf : PanelPrefetch{};  // in registers for the loop
  int64_t k = 0;
  for (; k + U <= K; k += U) {
    if constexpr (sizeof(BT) < sizeof(float) || R >= 4) {
      constexpr int step = static_cast<int>(U * kNR * sizeof(BT));  // bytes of the panel per iteration
      for (int off = 0; off < step; off += 64)
        __builtin_prefetch(reinterpret_cast<const char*>(b + k * kNR) + kPrefetchBytes + off);
    }
    q.step(U);
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      Vec bv[kNV];
      for (int j = 0; j < kNV; ++j) bv[j] = load_b(b + (k + u) * kNR + j * Vec::W);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        Vec ar = Vec::set1(a[r * lda + k + u]);
        for (int j = 0; j < kNV; ++j) acc[u][r][j] = fma(ar, bv[j], acc[u][r][j]);
      }
    }
  }
  for (; k < K; ++k) {
    Vec bv[kNV];
    for (int j = 0; j < kNV; ++j) bv[j] = load_b(b + k * kNR + j * Vec::W);
    for (int r = 0; r < R; ++r) {
      Vec ar = Vec::set1(a[r * lda + k]);
      for (int j = 0; j < kNV; ++j) acc[0][r][j] = fma(ar, bv[j], acc[0][r][j]);
    }
  }
  if (pf) *pf = q;
  for (int u = 1; u < U; ++u)
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < kNV; ++j) acc[0][r][j] = acc[0][r][j] + acc[u][r][j];
  finish_tile<R, BT>(g, epi, m0, acc[0], n0, n);
}

// M = 1 (decoding) against pre-packed W: S panels from far-apart parts of the thread's share at once,
// one k at a time. A single sequential stream per core reads DRAM at 25-34 GB/s here; 4-8 streams per
// core at 35-40 (bench/gemm_notes.md, session 8), and the S * NV accumulators hide the FMA latency.
template <int S, typename BT>
inline void panels_one_row(const GemmArgs& g, EpilogueTile epi, const BT* wp, const int64_t* panel) {
  constexpr int kU = sizeof(BT) == 4 ? 1 : 64 / static_cast<int>(kNR * sizeof(BT));  // k per 64 B of a panel
  const int64_t K = g.K;
  const BT* b[S];
  for (int s = 0; s < S; ++s) b[s] = wp + panel[s] * K * kNR;
  Vec acc[S][1][kNV];  // one row of finish_tile's accumulators per panel
  for (int s = 0; s < S; ++s)
    for (int j = 0; j < kNV; ++j) acc[s][0][j] = Vec::zero();
  int64_t k = 0;
  for (; k + kU <= K; k += kU) {
    if constexpr (sizeof(BT) < sizeof(float)) {  // narrow panels: the hardware prefetcher trails (see kPrefetchBytes)
#pragma GCC unroll 8
      for (int s = 0; s < S; ++s) __builtin_prefetch(reinterpret_cast<const char*>(b[s] + k * kNR) + kPrefetchBytes);
    }
#pragma GCC unroll 4
    for (int u = 0; u < kU; ++u) {
      const Vec ar = Vec::set1(g.a[k + u]);
#pragma GCC unroll 8
      for (int s = 0; s < S; ++s)
        for (int j = 0; j < kNV; ++j) acc[s][0][j] = fma(ar, load_b(b[s] + (k + u) * kNR + j * Vec::W), acc[s][0][j]);
    }
  }
  for (; k < K; ++k) {
    const Vec ar = Vec::set1(g.a[k]);
    for (int s = 0; s < S; ++s)
      for (int j = 0; j < kNV; ++j) acc[s][0][j] = fma(ar, load_b(b[s] + k * kNR + j * Vec::W), acc[s][0][j]);
  }
  for (int s = 0; s < S; ++s)
    finish_tile<1, BT>(g, epi, 0, acc[s], panel[s] * kNR, static_cast<int>(imin(kNR, g.N - panel[s] * kNR)));
}

// panel_rows<r> for a run-time r in [1, R].
template <int R, typename BT>
inline void panel_rows_upto(int r, const GemmArgs& g, EpilogueTile epi, int64_t m0, const BT* b, int64_t n0, int n,
                            PanelPrefetch* pf) {
  if constexpr (R > 1) {
    if (r < R) return panel_rows_upto<R - 1, BT>(r, g, epi, m0, b, n0, n, pf);
  }
  panel_rows<R, BT>(g, epi, m0, b, n0, n, pf);
}

// Few rows against pre-packed W: the threads split the panels (each W byte is read by one thread).
template <typename BT>
void gemm_prepacked_small_m(const GemmArgs& g) {
  const BT* wp = static_cast<const BT*>(g.wp);
  const int64_t np = ceil_div(g.N, kNR);
  const int nt = threads_for(g.N * g.K * g.M, 1 << 16);
  const EpilogueTile epi = epilogue_for(g.act, false, g.residual);  // panel_rows adds the bias itself
  if (g.M == 1 && np >= kStreams * nt) {
    // Each thread's share of the panels in kStreams parts, read side by side (panels_one_row).
#pragma omp parallel num_threads(nt)
    {
      const auto [p0, p1] = thread_share(np);
      const int64_t part = (p1 - p0) / kStreams, full = part * kStreams;
      for (int64_t i = 0; i < part; ++i) {
        int64_t panel[kStreams];
        for (int s = 0; s < kStreams; ++s) panel[s] = p0 + s * part + i;
        panels_one_row<kStreams, BT>(g, epi, wp, panel);
      }
      for (int64_t p = p0 + full; p < p1; ++p)
        panel_rows<1, BT>(g, epi, 0, wp + p * g.K * kNR, p * kNR, static_cast<int>(imin(kNR, g.N - p * kNR)));
    }
    return;
  }
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t p = 0; p < np; ++p) {
    const int n = static_cast<int>(imin(kNR, g.N - p * kNR));
    const BT* b = wp + p * g.K * kNR;
    // With one row block (decoding) the panel is read once: the hardware prefetcher does better
    // alone there (bench/gemm_notes.md), so the next panel is fetched only across several passes.
    PanelPrefetch pf;
    const int64_t passes = ceil_div(g.M, kMR);
    if (passes > 1 && p + 1 < np) {
      const int64_t bytes = g.K * kNR * static_cast<int64_t>(sizeof(BT));
      pf.next = reinterpret_cast<const char*>(b + g.K * kNR);
      pf.end = pf.next + bytes;
      pf.every = pf.countdown = static_cast<int>(imax(1, passes * g.K / ceil_div(bytes, 64)));
    }
    auto pass = [&](int64_t m0, int64_t rows) {
      panel_rows_upto<kMR, BT>(static_cast<int>(rows), g, epi, m0, b, p * kNR, n, passes > 1 ? &pf : nullptr);
    };
    // Passes of kMR rows; a remainder of fewer than kMR / 2 rows joins the last full pass and the two
    // are split evenly (32 rows: 6+6+6+6+4+4, not ...+6+2), since few-row passes run below the FMA rate.
    const int64_t rem = g.M % kMR;
    const int64_t even_from = g.M > kMR && rem > 0 && 2 * rem < kMR ? g.M - kMR - rem : g.M;
    int64_t m0 = 0;
    for (; m0 < even_from; m0 += kMR) pass(m0, imin(kMR, g.M - m0));
    if (m0 < g.M) {
      const int64_t first = (g.M - m0 + 1) / 2;
      pass(m0, first);
      pass(m0 + first, g.M - m0 - first);
    }
  }
}

// The Goto/BLIS driver. W's panels are laid out as pre-packed weights are (panel p holds all of K:
// block (k0, p) at p*K*NR + k0*NR), so one loop serves both: W is packed here unless g.wp has it.
template <typename BT>
void gemm_packed(const GemmArgs& g) {
  const int64_t M = g.M, N = g.N, K = g.K;
  const int64_t np = ceil_div(N, kNR);  // W panels
  // K blocks of at most kKC, except that K up to kKCOne runs as one block (no second pass over C)
  const int64_t nkb = K <= kKCOne ? 1 : ceil_div(K, kKC);
  const int64_t kcb = ceil_div(K, nkb);
  const int nt = threads_for(M * N * K, 1 << 18);

  // Tiles: each thread owns whole row blocks of C (its block of A is packed once per K block and
  // swept across all of N). The MR-row panels of A are dealt out evenly: row block b covers panels
  // [b*P/T, (b+1)*P/T), each block at most MC rows, T a multiple of the thread count when there are
  // at least as many blocks as threads. When there are too few row blocks, N is cut into column
  // chunks too (A fits one block up to M = MC: the threads then split W's columns instead of each
  // reading all of W for a share of few rows).
  const int64_t panels = ceil_div(M, kMR);
  int64_t mt = ceil_div(panels, kMC / kMR);
  if (mt >= nt) mt = ceil_div(mt, nt) * nt;
  const int64_t col_chunks = mt >= 2 * nt ? 1 : ceil_div(2 * nt, mt);
  // With several K blocks, the partial sums of a thread's C block wait between them in a scratch
  // laid out tile by tile (MR x NR tiles contiguous) and C is written once, by the last block: C's
  // rows at a stride of 4 KiB multiples (N = 1024, 3072, ...) fall into the same few L1 sets, and
  // re-reading such a tile cost ~5% of the GEMM (bench/gemm_notes.md, session 8). The scratch caps the
  // column chunk (kStageFloats per thread); a wider N is cut into more chunks.
  const bool staged = nkb > 1;
  int64_t nc_blk = ceil_div(ceil_div(N, col_chunks), kNR) * kNR;
  if (staged) nc_blk = imin(nc_blk, imax(kNR, kStageFloats / kMC / kNR * kNR));
  const int64_t ntiles = ceil_div(N, nc_blk);

  static thread_local ThreadCache cache;
  const BT* bp = static_cast<const BT*>(g.wp);  // narrow (bf16, int8) W only ever comes pre-packed
  if constexpr (std::is_same_v<BT, float>) {
    if (!bp) {
      float* buf = cache.get(static_cast<size_t>(np * kNR * K));
      // Panels are independent: the threads pack them in parallel, KC deep at a time.
#pragma omp parallel for schedule(static) collapse(2) num_threads(nt)
      for (int64_t p = 0; p < np; ++p)
        for (int64_t kb = 0; kb < nkb; ++kb) {
          const int64_t k0 = kb * kcb;
          if (g.w_kn)
            pack_b(g.w + k0 * g.ldw + p * kNR, g.ldw, imin(kcb, K - k0), imin(kNR, N - p * kNR),
                   buf + p * K * kNR + k0 * kNR);
          else
            pack_b_transposed(g.w + p * kNR * g.ldw + k0, g.ldw, imin(kNR, N - p * kNR), imin(kcb, K - k0),
                              buf + p * K * kNR + k0 * kNR);
        }
      bp = buf;
    }
  }
  Buffer apack(static_cast<size_t>(nt) * kMC * kcb);
  static thread_local ThreadCache stage_cache;
  float* const stage = staged ? stage_cache.get(static_cast<size_t>(nt) * kMC * nc_blk) : nullptr;
  // The bias is added by the last K block's microkernel as it stores the tile; the epilogue is left
  // with the activation and the residual (none at all for a plain biased Linear).
  const EpilogueTile epi = epilogue_for(g.act, false, g.residual);

#pragma omp parallel num_threads(nt)
  {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    float* ap = apack.get() + static_cast<int64_t>(tid) * kMC * kcb;
    float* st = staged ? stage + static_cast<int64_t>(tid) * kMC * nc_blk : nullptr;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < mt * ntiles; ++t) {
      const int64_t rb = t / ntiles, j0 = (t % ntiles) * nc_blk;
      const int64_t i0 = imin(M, rb * panels / mt * kMR), i1 = imin(M, (rb + 1) * panels / mt * kMR);
      const int64_t mc = i1 - i0, nc = imin(nc_blk, N - j0);
      if (mc <= 0) continue;
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const int64_t k0 = kb * kcb, kc = imin(kcb, K - k0);
        const bool last = kb + 1 == nkb;
        if (g.a_km) pack_a_transposed(g.a + k0 * g.lda + i0, g.lda, mc, kc, ap);
        else pack_a(g.a + i0 * g.lda + k0, g.lda, mc, kc, 1.0f, ap);
        // The next W panel is fetched a share per row pass while this one is reused from L1: it
        // otherwise streams from L3 or DRAM at the first pass's demand (bench/gemm_notes.md, session 8).
        const int64_t panel_lines = ceil_div(kc * kNR * static_cast<int64_t>(sizeof(BT)), 64);
        const int64_t lines_per_pass = ceil_div(panel_lines, ceil_div(mc, kMR));
        for (int64_t jr = 0; jr < nc; jr += kNR) {
          const BT* b = bp + ((j0 + jr) / kNR) * K * kNR + k0 * kNR;
          const int n = static_cast<int>(imin(kNR, nc - jr));
          const char* next = jr + kNR < nc ? reinterpret_cast<const char*>(b + K * kNR) : nullptr;
          for (int64_t ir = 0, line = 0; ir < mc; ir += kMR) {
            const int m = static_cast<int>(imin(kMR, mc - ir));
            if (next)
              for (const int64_t end = imin(panel_lines, line + lines_per_pass); line < end; ++line)
                __builtin_prefetch(next + line * 64, 0, 3);
            float* c = g.c + (i0 + ir) * g.ldc + j0 + jr;
            const float* scale = g.wp_scale ? g.wp_scale + j0 + jr : nullptr;
            const float* bias = last && g.bias ? g.bias + j0 + jr : nullptr;
            // Staged: earlier K blocks write the scratch tile, the last reads it and writes C.
            float* dst = c;
            int64_t ld = g.ldc;
            const float* cin = nullptr;
            if (staged) {
              float* tile = st + jr * kMC + ir * kNR;  // column panel jr/NR: kMC rows of NR floats
              if (last) cin = tile;
              else { dst = tile; ld = kNR; }
            }
            microkernel<0, BT>(kc, ap + ir * kc, b, dst, ld, m, n, kb > 0, scale, cin, kNR, bias);
            if (last && epi)
              epi(c, g.ldc, m, n, nullptr, g.residual ? g.residual + (i0 + ir) * g.ldr + j0 + jr : nullptr, g.ldr);
          }
        }
      }
    }
  }
  cache.release();
  stage_cache.release();
}

}  // namespace

const int gemm_nr = kNR;

void gemm(const GemmArgs& g) {
  if (g.M == 0 || g.N == 0) return;
  if (g.K == 0) {  // an empty sum: C = act(bias) + residual
    for (int64_t i = 0; i < g.M; ++i) {
      std::memset(g.c + i * g.ldc, 0, sizeof(float) * g.N);
      epilogue_row(g.c + i * g.ldc, g.N, g.bias, g.residual ? g.residual + i * g.ldr : nullptr, g.act);
    }
    return;
  }
  if (g.wp) {
    const bool in_place = g.M * g.K <= kInPlaceAFloats;
    switch (g.wp_type) {
      case GemmArgs::bf16:
        return in_place ? gemm_prepacked_small_m<uint16_t>(g) : gemm_packed<uint16_t>(g);
      case GemmArgs::i8:
        return in_place ? gemm_prepacked_small_m<int8_t>(g) : gemm_packed<int8_t>(g);
      default:
        return in_place ? gemm_prepacked_small_m<float>(g) : gemm_packed<float>(g);
    }
  }
  if (g.M <= kSmallM && !g.w_kn && !g.a_km) gemm_small_m(g);  // (the small-M path reads A and W by rows)
  else gemm_packed<float>(g);
}

}  // namespace cf::cpu::CF_ISA_NS
