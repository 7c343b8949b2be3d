// Scaled dot-product attention, tiled with an online softmax (FlashAttention's recurrence on the CPU).
//
//   out (B,H,Sq,Dv) = softmax(scale * q k^T + mask) v,  q (B,H,Sq,D), k (B,H,Sk,D), v (B,H,Sk,Dv)
//
// Phase 1 packs K^T and V of every head once into microkernel panels (O(S*D) memory).
// Phase 2 runs tasks (b, h, query block of BQ rows) over the threads: for each key block of BK
// keys, S = Qblk K^T (BQ x BK, in L1/L2), masks, the online softmax update of the running max m
// and sum l, and O += P V. The full Sq x Sk score matrix never exists. With is_causal, key blocks
// past the diagonal are skipped and the mask is computed only on the blocks the diagonal crosses.
// A row with no key to attend keeps l = 0 and is written as zeros.
//
// One rule on every path: a key with zero weight -- masked (bool mask, causal, or -inf in a float mask)
// or with a weight that underflows -- contributes nothing, so inf/NaN in its key or value row never
// reaches the output (0 * NaN would make the row NaN in a GEMM). A NaN among a row's visible scores
// still makes that row NaN: bad input is not hidden.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/threading.h"
#include "cpu/buffer.h"
#include "cpu/kernels.h"
#include "cpu/microkernel.h"
#include "cpu/row.h"

namespace cf::cpu::CF_ISA_NS {
namespace {

constexpr int64_t kBQ = kMR * (48 / kMR);  // query rows per task
constexpr int64_t kBK = 256;               // keys per block; the P tile's compile-time leading dimension
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kFewQueries = 2;         // up to this many query rows, attend without packing K and V (measured: bench/gemm_notes.md)

// s[0, n) gets the mask of row (b, h, i), keys [j0, j0 + n).
// `unit` converts the float mask to the scores' units (log2 e where scores are in log2 units).
inline void apply_mask(const MaskArgs& mk, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t n, float* s,
                       float unit = 1.0f) {
  if (mk.kind == MaskArgs::none) return;
  const int64_t base = b * mk.sb + h * mk.sh + i * mk.sq + j0 * mk.sk;
  const Vec ninf = Vec::set1(kNegInf);
  if (mk.kind == MaskArgs::boolean) {
    const uint8_t* p = static_cast<const uint8_t*>(mk.data) + base;
    const uint8_t keep = mk.true_means_masked ? 0 : 1;
    if (mk.sk == 1) {
      int64_t j = 0;
      if (mk.true_means_masked) {
        for (; j + Vec::W <= n; j += Vec::W) select_bytes(p + j, ninf, Vec::load(s + j)).store(s + j);
      } else {
        for (; j + Vec::W <= n; j += Vec::W) select_bytes(p + j, Vec::load(s + j), ninf).store(s + j);
      }
      for (; j < n; ++j) if ((p[j] != 0) != keep) s[j] = kNegInf;
    } else {
      for (int64_t j = 0; j < n; ++j) if ((p[j * mk.sk] != 0) != keep) s[j] = kNegInf;
    }
  } else {  // added; -inf masks the key whatever its score (a NaN score there must not leak through)
    const float* p = static_cast<const float*>(mk.data) + base;
    auto add = [unit](float sj, float pj) { return pj == kNegInf ? kNegInf : sj + pj * unit; };
    if (mk.sk == 1) {
      int64_t j = 0;
      const Vec u = Vec::set1(unit), lowest = Vec::set1(std::numeric_limits<float>::lowest());
      for (; j + Vec::W <= n; j += Vec::W) {
        const Vec pj = Vec::load(p + j);
        select_lt(pj, lowest, ninf, Vec::load(s + j) + pj * u).store(s + j);
      }
      for (; j < n; ++j) s[j] = add(s[j], p[j]);
    } else {
      for (int64_t j = 0; j < n; ++j) s[j] = add(s[j], p[j * mk.sk]);
    }
  }
}

// Few queries (decoding against a KV cache): packing K and V would cost more than reading them. One
// task per (b, h) reads each K row and each V row once for all Sq queries: scores by dot products
// in place, a softmax per query row, then V's rows summed with those weights. Memory O(Sq * Sk)
// per thread, Sq <= kFewQueries.
void attention_few_queries(const AttentionArgs& a) {
  const int64_t B = a.B, H = a.H, Sq = a.Sq, Sk = a.Sk, D = a.D, Dv = a.Dv;
  const int64_t causal_off = Sk - Sq;
  const int nt = threads_for(B * H * Sq * Sk * (D + Dv), 1 << 15);
  const int64_t per_thread = Sq * (Sk + Dv + 1);
  Buffer scratch(static_cast<size_t>(nt * per_thread));
#pragma omp parallel num_threads(nt)
  {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    float* s = scratch.get() + tid * per_thread;  // (Sq, Sk) scores, then weights
    float* acc = s + Sq * Sk;                     // (Sq, Dv)
    float* inv = acc + Sq * Dv;                   // (Sq,) 1 / sum, or 0 for a row with nothing to attend
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const float* q = a.q + b * a.q_sb + h * a.q_sh;
      const float* k = a.k + b * a.k_sb + h * a.k_sh;
      const float* v = a.v + b * a.v_sb + h * a.v_sh;
      // query i sees keys [0, visible(i)); the last query sees the most
      auto visible = [&](int64_t i) { return a.causal ? imin(Sk, imax(0, i + causal_off + 1)) : Sk; };
      const int64_t jmax = visible(Sq - 1);
      for (int64_t j = 0; j < jmax; ++j)
        for (int64_t i = 0; i < Sq; ++i)
          if (j < visible(i)) s[i * Sk + j] = a.scale * dot(q + i * a.q_ss, k + j * a.k_ss, D);
      for (int64_t i = 0; i < Sq; ++i) {
        float* row = s + i * Sk;
        const int64_t n = visible(i);
        apply_mask(a.mask, b, h, i, 0, n, row);
        apply_mask(a.mask2, b, h, i, 0, n, row);
        const float mx = n > 0 ? row_max(row, n) : kNegInf;
        for (int64_t j = n; j < jmax; ++j) row[j] = 0.0f;
        float lse;
        if (mx == kNegInf) {  // nothing to attend: zeros (NaN scores: NaN)
          inv[i] = has_nan(row, n) ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
          lse = inv[i] == 0.0f ? kNegInf : inv[i];
          for (int64_t j = 0; j < n; ++j) row[j] = 0.0f;
        } else {
          const float sum = exp_sub_sum(row, row, n, mx);
          inv[i] = 1.0f / sum;
          lse = mx + std::log(sum);
        }
        if (a.lse) a.lse[bh * Sq + i] = lse;
      }
      std::memset(acc, 0, sizeof(float) * Sq * Dv);
      for (int64_t j = 0; j < jmax; ++j)
        for (int64_t i = 0; i < Sq; ++i) {
          const float p = s[i * Sk + j];
          if (p != 0.0f) axpy(p, v + j * a.v_ss, acc + i * Dv, Dv);
        }
      for (int64_t i = 0; i < Sq; ++i) {
        float* dst = a.out + b * a.o_sb + h * a.o_sh + i * a.o_ss;
        for (int64_t d = 0; d < Dv; ++d) dst[d] = acc[i * Dv + d] * inv[i];
      }
    }
  }
}

// The rows of one head's Q, K and V, fetched a few cache lines at a time (take(n)) while the thread
// works on the head before it: the many-small-heads path otherwise stalls on each head's first
// touch of memory (packing K and V, packing Q).
class HeadPrefetch {
 public:
  HeadPrefetch() = default;
  HeadPrefetch(const AttentionArgs& a, int64_t b, int64_t h) {
    add(a.q + b * a.q_sb + h * a.q_sh, a.q_ss, a.Sq, a.D);
    add(a.k + b * a.k_sb + h * a.k_sh, a.k_ss, a.Sk, a.D);
    add(a.v + b * a.v_sb + h * a.v_sh, a.v_ss, a.Sk, a.Dv);
  }
  int64_t lines() const { return lines_; }
  void take(int64_t n) {
    for (; n > 0 && t_ < nt_; --n) {
      const Rows& m = m_[t_];
      __builtin_prefetch(m.first + r_ * m.stride + off_, 0, 2);  // to L2: a head is 96 KiB
      off_ += 64;
      if (off_ >= m.span) {
        off_ = 0;
        if (++r_ == m.rows) { r_ = 0; ++t_; }
      }
    }
  }

 private:
  struct Rows {
    const char* first;   // the first row's first cache line
    int64_t stride = 0;  // bytes between rows
    int64_t rows = 0;
    int64_t span = 0;    // bytes from a row's first line to its end
  };
  void add(const float* p, int64_t row_stride, int64_t rows, int64_t cols) {
    if (rows <= 0 || cols <= 0) return;
    const auto addr = reinterpret_cast<uintptr_t>(p);
    const int64_t head = static_cast<int64_t>(addr & 63);
    const int64_t span = head + cols * static_cast<int64_t>(sizeof(float));
    m_[nt_++] = Rows{reinterpret_cast<const char*>(addr - head), row_stride * static_cast<int64_t>(sizeof(float)),
                     rows, span};
    lines_ += rows * ceil_div(span, 64);
  }
  Rows m_[3];
  int nt_ = 0, t_ = 0;
  int64_t r_ = 0, off_ = 0, lines_ = 0;
};

// Scratch of one thread for one query block.
struct BlockScratch {
  float* qp;  // (kBQ, D) packed, scaled queries
  float* s;   // (kBQ, kBK) scores, then probabilities
  float* o;   // (kBQ, Dv) running output
  float* m;   // (kBQ,) running max
  float* l;   // (kBQ,) running sum
  static int64_t floats(int64_t D, int64_t Dv) { return kBQ * D + kBQ * kBK + kBQ * Dv + 2 * kBQ; }
  BlockScratch(float* p, int64_t D, int64_t Dv)
      : qp(p), s(p + kBQ * D), o(s + kBQ * kBK), m(o + kBQ * Dv), l(m + kBQ) {}
  // The P.V microkernel reads whole MR-row panels of s, past the block's last row too (those
  // results are dropped): zeroed once per call, so they are never uninitialised memory.
  void clear_scores() const { std::memset(s, 0, sizeof(float) * kBQ * kBK); }
};

// Query rows [i0, i0 + mq) of head (b, h) against its packed K^T (kp) and V (vp): the online softmax
// over key blocks of kBK, then out = O / l. v_nonfinite[block]: that key block's values hold inf or NaN.
void attend_block(const AttentionArgs& a, int64_t b, int64_t h, int64_t i0, int64_t mq, const float* kp,
                  const float* vp, const uint8_t* v_nonfinite, const BlockScratch& w, HeadPrefetch* next = nullptr,
                  int64_t lines_per_row = 0) {
  const int64_t Sk = a.Sk, D = a.D, Dv = a.Dv;
  const int64_t dvp = ceil_div(Dv, kNR) * kNR;
  const int64_t causal_off = Sk - a.Sq;  // query i sees keys j <= i + causal_off
  float *const qp = w.qp, *const s = w.s, *const o = w.o, *const m = w.m, *const l = w.l;
  const bool drop = a.dropout.active();
  const uint64_t drop_base = a.dropout.offset + static_cast<uint64_t>((b * a.H + h) * a.Sq) * static_cast<uint64_t>(Sk);
  alignas(64) float keep[kBK];  // dropout: the factors of a row's block of probabilities
  // Scores in log2 units: q is scaled by scale * log2 e here, once per row, and the softmax takes 2^x
  // (no Cody-Waite reduction per score); float masks are converted as they are added.
  pack_a(a.q + b * a.q_sb + h * a.q_sh + i0 * a.q_ss, a.q_ss, mq, D,
         static_cast<float>(a.scale * kLog2E), qp);  // one rounding
  for (int64_t r = 0; r < mq; ++r) { m[r] = kNegInf; l[r] = 0.0f; }
  std::memset(o, 0, sizeof(float) * kBQ * Dv);

  // Keys past the last row's causal limit are never visible to this block.
  const int64_t j_end = a.causal ? imin(Sk, imax(0, i0 + mq + causal_off)) : Sk;
  for (int64_t j0 = 0; j0 < j_end; j0 += kBK) {
    const int64_t nk = imin(kBK, j_end - j0);           // keys used (causal may cut the block)
    const int64_t packed_rows = imin(kBK, Sk - j0);     // rows per V panel of this block
    // Whole NR-column panels even past nk: K^T is packed (zero-padded) to a multiple of NR keys and
    // a score row has kBK columns, so the last panel needs no masked stores; the softmax below reads
    // each row padded to a whole vector and ignores what lies past nk, and P.V stops at nk.
    for (int64_t ir = 0; ir < mq; ir += kMR)
      for (int64_t jr = 0; jr < nk; jr += kNR)
        microkernel<0, float, false>(D, qp + ir * D, kp + (j0 + jr) * D, s + ir * kBK + jr, kBK,
                       static_cast<int>(imin(kMR, mq - ir)), kNR, false);

    const bool diagonal = a.causal && j0 + nk - 1 > i0 + causal_off;
    for (int64_t r = 0; r < mq; ++r) {
      float* srow = s + r * kBK;
      const int64_t i = i0 + r;
      if (next) next->take(lines_per_row);
      apply_mask(a.mask, b, h, i, j0, nk, srow, static_cast<float>(kLog2E));
      apply_mask(a.mask2, b, h, i, j0, nk, srow, static_cast<float>(kLog2E));
      if (diagonal) {
        for (int64_t j = imax(0, i + causal_off + 1 - j0); j < nk; ++j) srow[j] = kNegInf;
      }
      const float mx = row_max<true>(srow, nk);
      const float m_new = mx > m[r] ? mx : m[r];
      if (m_new == kNegInf) {  // nothing visible yet: P = 0, state unchanged
        if (has_nan(srow, nk)) l[r] = std::numeric_limits<float>::quiet_NaN();  // NaN scores: a NaN row
        std::memset(srow, 0, sizeof(float) * nk);
        continue;
      }
      const float corr = m[r] == kNegInf ? 0.0f : std::exp2(m[r] - m_new);
      const float sum = exp_sub_sum<true, true>(srow, srow, nk, m_new);
      if (l[r] != 0.0f && corr != 1.0f) { scale_row(o + r * Dv, Dv, corr); }
      l[r] = l[r] * corr + sum;  // the undropped sum: softmax first, then dropout
      m[r] = m_new;
      if (drop) {
        dropout_factors(a.dropout.seed, drop_base + static_cast<uint64_t>(i * Sk + j0), nk, a.dropout.p, keep);
        for (int64_t j = 0; j < nk; ++j) srow[j] *= keep[j];
      }
    }
    if (v_nonfinite[j0 / kBK]) {
      // inf or NaN among this block's values: only the keys a row gives weight to are added (the GEMM
      // would add 0 * NaN for the others). Rare, so row by row from V itself.
      const float* v = a.v + b * a.v_sb + h * a.v_sh + j0 * a.v_ss;
      for (int64_t r = 0; r < mq; ++r)
        for (int64_t j = 0; j < nk; ++j)
          if (s[r * kBK + j] != 0.0f) axpy(s[r * kBK + j], v + j * a.v_ss, o + r * Dv, Dv);
      continue;
    }
    for (int64_t ir = 0; ir < mq; ir += kMR)
      for (int64_t jv = 0; jv < Dv; jv += kNR)
        microkernel<kBK, float, false>(nk, s + ir * kBK, vp + j0 * dvp + jv * packed_rows, o + ir * Dv + jv, Dv,
                         static_cast<int>(imin(kMR, mq - ir)), static_cast<int>(imin(kNR, Dv - jv)), true);
  }

  if (a.lse) {  // m and l are in log2 units: lse = ln 2 * (m + log2 l)
    float* lse = a.lse + (b * a.H + h) * a.Sq + i0;
    for (int64_t r = 0; r < mq; ++r)
      lse[r] = l[r] == 0.0f ? kNegInf : static_cast<float>(kLn2 * (static_cast<double>(m[r]) + std::log2(static_cast<double>(l[r]))));
  }
  for (int64_t r = 0; r < mq; ++r) {
    float* dst = a.out + b * a.o_sb + h * a.o_sh + (i0 + r) * a.o_ss;
    if (l[r] == 0.0f) {
      std::memset(dst, 0, sizeof(float) * Dv);
    } else {
      const float inv = 1.0f / l[r];
      const float* src = o + r * Dv;
      for (int64_t d = 0; d < Dv; ++d) dst[d] = src[d] * inv;
    }
  }
}

// K^T and V of head (b, h) into microkernel panels: kp (ceil(Sk / kNR) * kNR * D), then vp (Sk * dvp);
// v_nonfinite[block] says whether key block `block`'s values hold inf or NaN (checked on the packed
// panels while they are in L1).
void pack_head(const AttentionArgs& a, int64_t b, int64_t h, float* kp, float* vp, uint8_t* v_nonfinite) {
  const int64_t dvp = ceil_div(a.Dv, kNR) * kNR;
  pack_b_transposed(a.k + b * a.k_sb + h * a.k_sh, a.k_ss, a.Sk, a.D, kp);
  for (int64_t j0 = 0; j0 < a.Sk; j0 += kBK) {
    const int64_t rows = imin(kBK, a.Sk - j0);
    pack_b(a.v + b * a.v_sb + h * a.v_sh + j0 * a.v_ss, a.v_ss, rows, a.Dv, vp + j0 * dvp);
    v_nonfinite[j0 / kBK] = any_nonfinite(vp + j0 * dvp, rows * dvp);
  }
}

// Keys query i of a head sees (causal: j <= i + Sk - Sq), a prefix [0, visible).
inline int64_t visible_keys(const AttentionArgs& a, int64_t i) {
  return a.causal ? imin(a.Sk, imax(0, i + a.Sk - a.Sq + 1)) : a.Sk;
}

// Scores of query i of head (b, h) against keys [j0, j0 + n), scaled and masked (natural units), into s.
void row_scores(const AttentionArgs& a, int64_t b, int64_t h, int64_t i, int64_t j0, int64_t n, float* s) {
  const float* q = a.q + b * a.q_sb + h * a.q_sh + i * a.q_ss;
  const float* k = a.k + b * a.k_sb + h * a.k_sh + j0 * a.k_ss;
  for (int64_t j = 0; j < n; ++j) s[j] = a.scale * dot(q, k + j * a.k_ss, a.D);
  apply_mask(a.mask, b, h, i, j0, n, s);
  apply_mask(a.mask2, b, h, i, j0, n, s);
}

// The log-sum-exp of n scores (overwritten by exp(s - max)): -inf for none visible, NaN for a NaN among them.
// (*sum, when asked for, gets the sum of those exponentials.)
inline float scores_lse(float* s, int64_t n, float* sum = nullptr) {
  const float mx = n > 0 ? row_max(s, n) : kNegInf;  // skips NaN; a NaN then makes the sum NaN
  if (mx == kNegInf) return has_nan(s, n) ? std::numeric_limits<float>::quiet_NaN() : kNegInf;
  const float total = exp_sub_sum(s, s, n, mx);
  if (sum) *sum = total;
  return mx + std::log(total);
}

}  // namespace

void attention(const AttentionArgs& a) {
  const int64_t B = a.B, H = a.H, Sq = a.Sq, Sk = a.Sk, D = a.D, Dv = a.Dv;
  if (Dv == 0 && a.lse && B * H * Sq > 0) {  // no output, but the log-sum-exp is still asked for
    Buffer s(static_cast<size_t>(imax(Sk, 1)));
    for (int64_t bh = 0; bh < B * H; ++bh)
      for (int64_t i = 0; i < Sq; ++i) {
        const int64_t n = visible_keys(a, i);
        row_scores(a, bh / H, bh % H, i, 0, n, s.get());
        a.lse[bh * Sq + i] = scores_lse(s.get(), n);
      }
  }
  if (B == 0 || H == 0 || Sq == 0 || Dv == 0) return;
  if (Sk == 0) {  // no key at all: every query has nothing to attend, so zeros (the blocked paths divide by Sk)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < Sq; ++i)
          std::memset(a.out + b * a.o_sb + h * a.o_sh + i * a.o_ss, 0, sizeof(float) * Dv);
    if (a.lse)
      for (int64_t i = 0; i < B * H * Sq; ++i) a.lse[i] = kNegInf;
    return;
  }
  if (Sq <= kFewQueries && !a.dropout.active()) return attention_few_queries(a);
  const int64_t BH = B * H;
  const int64_t kp_head = ceil_div(Sk, kNR) * kNR * D;   // packed K^T of one head
  const int64_t dvp = ceil_div(Dv, kNR) * kNR;
  const int64_t vp_head = Sk * dvp;                       // packed V of one head
  const int64_t head_floats = kp_head + vp_head;
  const int64_t nqb = ceil_div(Sq, kBQ);
  const int64_t nkb = ceil_div(Sk, kBK);  // key blocks of a head
  const int nt = threads_for(BH * Sq * Sk * (D + Dv), 1 << 18);
  const int64_t per_thread = BlockScratch::floats(D, Dv);

  // Many heads whose packed K and V fit in L2 (BERT-sized sequences): one task per head packs them
  // into the thread's own scratch and runs all of the head's query blocks while they are hot. No
  // shared K/V buffer, no barrier between packing and attending.
  if (BH >= 4 * nt && head_floats <= (int64_t(1) << 16)) {
    Buffer scratch(static_cast<size_t>(nt * (per_thread + head_floats)));
    std::unique_ptr<uint8_t[]> flags(new uint8_t[static_cast<size_t>(nt * nkb)]);
#pragma omp parallel num_threads(nt)
    {
      int tid = 0;
#ifdef _OPENMP
      tid = omp_get_thread_num();
#endif
      float* mine = scratch.get() + tid * (per_thread + head_floats);
      const BlockScratch w(mine, D, Dv);
      w.clear_scores();
      float* kp = mine + per_thread;
      float* vp = kp + kp_head;
      uint8_t* v_nonfinite = flags.get() + tid * nkb;
      // Heads in contiguous ranges per thread, so each knows its next head and fetches it meanwhile
      // ((8,12,128,64): pack_head was 12% of the time, stalled on memory).
      const auto [bh_begin, bh_end] = thread_share(BH);
      const int64_t blocks_read = ceil_div(a.causal ? imin(Sk, Sq) : Sk, kBK);
      for (int64_t bh = bh_begin; bh < bh_end; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        HeadPrefetch next;
        if (bh + 1 < bh_end) next = HeadPrefetch(a, (bh + 1) / H, (bh + 1) % H);
        const int64_t per_row = ceil_div(next.lines(), Sq * blocks_read);
        pack_head(a, b, h, kp, vp, v_nonfinite);
        for (int64_t i0 = 0; i0 < Sq; i0 += kBQ)
          attend_block(a, b, h, i0, imin(kBQ, Sq - i0), kp, vp, v_nonfinite, w, &next, per_row);
      }
    }
    return;
  }

  static thread_local ThreadCache kv_cache;  // packed K and V of every head
  float* const kv = kv_cache.get(static_cast<size_t>(BH * head_floats));
  Buffer scratch(static_cast<size_t>(nt * per_thread));
  std::unique_ptr<uint8_t[]> flags(new uint8_t[static_cast<size_t>(BH * nkb)]);

#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < BH; ++bh) {
      float* kp = kv + bh * head_floats;
      pack_head(a, bh / H, bh % H, kp, kp + kp_head, flags.get() + bh * nkb);
    }

    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    const BlockScratch w(scratch.get() + tid * per_thread, D, Dv);
    w.clear_scores();

#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < BH * nqb; ++task) {
      const int64_t bh = task / nqb, i0 = (task % nqb) * kBQ;
      const float* kp = kv + bh * head_floats;
      attend_block(a, bh / H, bh % H, i0, imin(kBQ, Sq - i0), kp, kp + kp_head, flags.get() + bh * nkb, w);
    }
  }
  kv_cache.release();
}

}  // namespace cf::cpu::CF_ISA_NS

namespace cf::cpu::CF_ISA_NS {

namespace {

constexpr int64_t kGradBQ = kMR * (48 / kMR);          // query rows per block
constexpr int64_t kGradBK = 64;                        // keys per block (a multiple of kNR on every ISA)
constexpr int64_t kGradBKr = ceil_div(kGradBK, kMR) * kMR;  // rows of the transposed tiles (whole MR panels)
constexpr int64_t kGradHeads = 8;                      // fewer heads than this: split each head's keys

// One thread's scratch for a (head, key range) task. The head's Q and dO are packed once per task in
// both layouts the GEMMs read (A panels for S = Q K^T and dP = dO V^T, B panels for dK += dS^T Q and
// dV += P^T dO); a key block's K^T, V^T and K once per key block.
struct GradScratch {
  static int64_t floats(int64_t sq, int64_t d, int64_t dv) {
    const int64_t dp = ceil_div(d, kNR) * kNR, dvp = ceil_div(dv, kNR) * kNR;
    return sq * (d + dv + dp + dvp) + 2 * sq + kGradBK * (d + dv + dp) + 2 * kGradBQ * kGradBK +
           2 * kGradBKr * kGradBQ;
  }
  GradScratch(float* p, int64_t sq, int64_t d, int64_t dv) {
    const int64_t dp = ceil_div(d, kNR) * kNR, dvp = ceil_div(dv, kNR) * kNR;
    qa = p; doa = qa + sq * d; qb = doa + sq * dv; dob = qb + sq * dp;
    delta = dob + sq * dvp; l2 = delta + sq;
    kt = l2 + sq; vt = kt + kGradBK * d; kb = vt + kGradBK * dv;
    s = kb + kGradBK * dp; ds = s + kGradBQ * kGradBK; pt = ds + kGradBQ * kGradBK; dst = pt + kGradBKr * kGradBQ;
    // the microkernels read whole MR-row panels of these, past a block's last row: never uninitialised
    std::memset(s, 0, sizeof(float) * (2 * kGradBQ * kGradBK + 2 * kGradBKr * kGradBQ));
  }
  float *qa, *doa, *qb, *dob, *delta, *l2, *kt, *vt, *kb, *s, *ds, *pt, *dst;
};

// dst (cols x rows, leading dimension ldd) = src (rows x cols, leading dimension lds) transposed: 4 x 4
// blocks in SSE registers (baseline x86-64), the edges one by one.
inline void transpose_tile(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst, int64_t ldd) {
  int64_t r = 0;
#if defined(__SSE2__)
  for (; r + 4 <= rows; r += 4) {
    int64_t c = 0;
    for (; c + 4 <= cols; c += 4) {
      const float* s0 = src + r * lds + c;
      __m128 r0 = _mm_loadu_ps(s0), r1 = _mm_loadu_ps(s0 + lds), r2 = _mm_loadu_ps(s0 + 2 * lds),
             r3 = _mm_loadu_ps(s0 + 3 * lds);
      _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
      float* d0 = dst + c * ldd + r;
      _mm_storeu_ps(d0, r0);
      _mm_storeu_ps(d0 + ldd, r1);
      _mm_storeu_ps(d0 + 2 * ldd, r2);
      _mm_storeu_ps(d0 + 3 * ldd, r3);
    }
    for (; c < cols; ++c)
      for (int64_t x = r; x < r + 4; ++x) dst[c * ldd + x] = src[x * lds + c];
  }
#endif
  for (; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}

// Keys [c0, c1) of head (b, h): dK and dV of those keys (this task's alone), and their part of dQ added
// into dq (the head's (Sq, D), zeroed by the caller).
void attention_backward_task(const AttentionBackwardArgs& g, int64_t b, int64_t h, int64_t c0, int64_t c1,
                             float* dq, const GradScratch& w) {
  const AttentionArgs& a = g.f;
  const int64_t Sq = a.Sq, Sk = a.Sk, D = a.D, Dv = a.Dv, bh = b * a.H + h;
  const int64_t causal_off = Sk - Sq;  // query i sees keys j <= i + causal_off
  const int64_t dp = ceil_div(D, kNR) * kNR, dvp = ceil_div(Dv, kNR) * kNR;
  const float* q = a.q + b * a.q_sb + h * a.q_sh;
  const float* k = a.k + b * a.k_sb + h * a.k_sh;
  const float* v = a.v + b * a.v_sb + h * a.v_sh;
  const float* dout = g.dout + bh * Sq * Dv;
  const float* o = g.o + bh * Sq * Dv;
  const float* lse = g.lse + bh * Sq;
  float* dk = g.dk + bh * Sk * D;
  float* dv = g.dv + bh * Sk * Dv;
  std::memset(dk + c0 * D, 0, sizeof(float) * (c1 - c0) * D);
  std::memset(dv + c0 * Dv, 0, sizeof(float) * (c1 - c0) * Dv);

  // Queries that see any key of [c0, c1): causal ones from the first block that reaches c0.
  const int64_t i_first = a.causal ? imin(Sq, imax(0, c0 - causal_off)) / kGradBQ * kGradBQ : 0;
  const float qscale = static_cast<float>(a.scale * kLog2E);  // scores in log2 units, as the forward's
  for (int64_t i0 = i_first; i0 < Sq; i0 += kGradBQ) {
    const int64_t mq = imin(kGradBQ, Sq - i0);
    pack_a(q + i0 * a.q_ss, a.q_ss, mq, D, qscale, w.qa + i0 * D);
    pack_a(dout + i0 * Dv, Dv, mq, Dv, 1.0f, w.doa + i0 * Dv);
    pack_b(q + i0 * a.q_ss, a.q_ss, mq, D, w.qb + i0 * dp);
    pack_b(dout + i0 * Dv, Dv, mq, Dv, w.dob + i0 * dvp);
    for (int64_t i = i0; i < i0 + mq; ++i) {
      w.delta[i] = static_cast<float>(row_dot_f64(dout + i * Dv, o + i * Dv, Dv));
      // P = 2^(S - lse2): a row with nothing to attend (lse = -inf) gets P = 0 everywhere
      const float l = lse[i];
      w.l2[i] = l == kNegInf ? std::numeric_limits<float>::infinity() : static_cast<float>(l * kLog2E);
    }
  }

  const float scale = a.scale;
  const bool drop = a.dropout.active();
  const uint64_t drop_base = a.dropout.offset + static_cast<uint64_t>(bh * Sq) * static_cast<uint64_t>(Sk);
  alignas(64) float keep[kGradBK];  // dropout: the forward's factors for a row's block of keys
  for (int64_t j0 = c0; j0 < c1; j0 += kGradBK) {
    const int64_t nk = imin(kGradBK, c1 - j0);
    pack_b_transposed(k + j0 * a.k_ss, a.k_ss, nk, D, w.kt);
    pack_b_transposed(v + j0 * a.v_ss, a.v_ss, nk, Dv, w.vt);
    pack_b(k + j0 * a.k_ss, a.k_ss, nk, D, w.kb);
    const bool k_nonfinite = any_nonfinite(w.kb, nk * dp);
    float* dk_j = dk + j0 * D;
    float* dv_j = dv + j0 * Dv;
    const int64_t i_begin = a.causal ? imin(Sq, imax(0, j0 - causal_off)) / kGradBQ * kGradBQ : 0;
    for (int64_t i0 = i_begin; i0 < Sq; i0 += kGradBQ) {
      const int64_t mq = imin(kGradBQ, Sq - i0);
      // S = Q K^T (log2 units), dP = dO V^T
      for (int64_t ir = 0; ir < mq; ir += kMR) {
        const int m = static_cast<int>(imin(kMR, mq - ir));
        for (int64_t jr = 0; jr < nk; jr += kNR) {
          microkernel<0, float, false>(D, w.qa + (i0 + ir) * D, w.kt + jr * D, w.s + ir * kGradBK + jr, kGradBK,
                                       m, kNR, false);
          microkernel<0, float, false>(Dv, w.doa + (i0 + ir) * Dv, w.vt + jr * Dv, w.ds + ir * kGradBK + jr,
                                       kGradBK, m, kNR, false);
        }
      }
      // P = 2^(S - lse2) over what the row sees; dS = scale * P (dP - Delta), 0 where P = 0 (so inf/NaN in a
      // masked key's value row, which makes its dP non-finite, reaches nothing)
      const bool diagonal = a.causal && j0 + nk - 1 > i0 + causal_off;
      for (int64_t r = 0; r < mq; ++r) {
        const int64_t i = i0 + r;
        float* srow = w.s + r * kGradBK;
        float* dsrow = w.ds + r * kGradBK;
        apply_mask(a.mask, b, h, i, j0, nk, srow, static_cast<float>(kLog2E));
        apply_mask(a.mask2, b, h, i, j0, nk, srow, static_cast<float>(kLog2E));
        if (diagonal)
          for (int64_t j = imax(0, i + causal_off + 1 - j0); j < nk; ++j) srow[j] = kNegInf;
        const Vec l2 = Vec::set1(w.l2[i]), dl = Vec::set1(w.delta[i]), sc = Vec::set1(scale), zero = Vec::zero();
        if (drop) {  // the forward's mask: dV takes the dropped P; dS = P (dP * keep - Delta)
          dropout_factors(a.dropout.seed, drop_base + static_cast<uint64_t>(i * Sk + j0), nk, a.dropout.p, keep);
          for (int64_t j = 0; j < nk; j += Vec::W) {
            const Vec p = exp2_le0(Vec::load(srow + j) - l2), f = Vec::load_partial(keep + j, static_cast<int>(imin(Vec::W, nk - j)));
            (p * f).store(srow + j);
            const Vec d = sc * p * (Vec::load(dsrow + j) * f - dl);
            select_lt(zero, p, d, p * zero).store(dsrow + j);
          }
          continue;
        }
        for (int64_t j = 0; j < nk; j += Vec::W) {  // nk is a multiple of W but for the last block; the rest is scratch
          const Vec p = exp2_le0(Vec::load(srow + j) - l2);
          p.store(srow + j);
          const Vec d = sc * p * (Vec::load(dsrow + j) - dl);
          // P > 0 -> d; P = 0 -> 0; P NaN (a NaN row) -> NaN
          select_lt(zero, p, d, p * zero).store(dsrow + j);
        }
      }
      // The transposes, for the key-side products
      transpose_tile(w.s, kGradBK, mq, nk, w.pt, kGradBQ);
      transpose_tile(w.ds, kGradBK, mq, nk, w.dst, kGradBQ);
      // dV_j += P^T dO_i, dK_j += dS^T Q_i
      for (int64_t jr = 0; jr < nk; jr += kMR) {
        const int m = static_cast<int>(imin(kMR, nk - jr));
        for (int64_t c = 0; c < Dv; c += kNR)
          microkernel<kGradBQ, float, false>(mq, w.pt + jr * kGradBQ, w.dob + i0 * dvp + c * mq, dv_j + jr * Dv + c,
                                             Dv, m, static_cast<int>(imin(kNR, Dv - c)), true);
        for (int64_t c = 0; c < D; c += kNR)
          microkernel<kGradBQ, float, false>(mq, w.dst + jr * kGradBQ, w.qb + i0 * dp + c * mq, dk_j + jr * D + c,
                                             D, m, static_cast<int>(imin(kNR, D - c)), true);
      }
      // dQ_i += dS K_j
      if (k_nonfinite) {  // inf or NaN among these keys: only the keys a row gives weight to (rare)
        for (int64_t r = 0; r < mq; ++r)
          for (int64_t j = 0; j < nk; ++j) {
            const float d = w.ds[r * kGradBK + j];
            if (d != 0.0f) axpy(d, k + (j0 + j) * a.k_ss, dq + (i0 + r) * D, D);
          }
        continue;
      }
      for (int64_t ir = 0; ir < mq; ir += kMR)
        for (int64_t c = 0; c < D; c += kNR)
          microkernel<kGradBK, float, false>(nk, w.ds + ir * kGradBK, w.kb + c * nk, dq + (i0 + ir) * D + c, D,
                                             static_cast<int>(imin(kMR, mq - ir)), static_cast<int>(imin(kNR, D - c)),
                                             true);
    }
  }
}

}  // namespace

// FlashAttention-2's backward on the CPU: the probabilities are recomputed tile by tile from the forward's
// log-sum-exp, P = exp(S - lse), never stored (O(S * D) memory), with Delta = rowsum(dO * O):
//   dV = P^T dO,  dS = P * (dO V^T - Delta),  dQ = scale * dS K,  dK = scale * dS^T Q.
// A task is a head (or, with fewer than 8 heads, a fixed range of its keys): for each key block it runs
// over the query blocks, dK and dV of its keys accumulating in place. dQ is a head's own (one task) or
// summed from per-range partials in range order. The split depends on the shape alone, so the result is
// the same on any thread count; nothing is atomic.
// The forward's rule for zero weights holds: a key with P = 0 (masked, causal, underflow) adds nothing, so
// inf/NaN in its key or value row reaches no gradient; a NaN row's gradients are NaN; a row with nothing to
// attend has zero gradients.
void attention_backward(const AttentionBackwardArgs& g) {
  const AttentionArgs& a = g.f;
  const int64_t B = a.B, H = a.H, Sq = a.Sq, Sk = a.Sk, D = a.D, Dv = a.Dv, BH = B * H;
  if (BH == 0) return;
  if (Sq > 0) std::memset(g.dq, 0, sizeof(float) * BH * Sq * D);
  if (Sq == 0 || Sk == 0) {  // nothing attends or nothing to attend: zero gradients
    std::memset(g.dk, 0, sizeof(float) * BH * Sk * D);
    std::memset(g.dv, 0, sizeof(float) * BH * Sk * Dv);
    return;
  }
  // Key ranges per head: whole heads when there are enough of them, else up to kGradHeads ranges in all
  // (multiples of the key block), whatever the thread count.
  const int64_t nkb = ceil_div(Sk, kGradBK);
  const int64_t parts = BH >= kGradHeads ? 1 : imin(nkb, ceil_div(kGradHeads, BH));
  const int64_t range = ceil_div(nkb, parts) * kGradBK;
  const int64_t nparts = ceil_div(Sk, range);
  const int64_t sqp = ceil_div(Sq, kGradBQ) * kGradBQ;
  const int nt = static_cast<int>(imin(threads_for(BH * Sq * Sk * (D + Dv), 1 << 16), BH * nparts));
  const int64_t per_thread = GradScratch::floats(sqp, D, Dv);
  Buffer scratch(static_cast<size_t>(nt * per_thread));
  Buffer partial(static_cast<size_t>(nparts > 1 ? BH * nparts * Sq * D : 0));
  if (nparts > 1) std::memset(partial.get(), 0, sizeof(float) * BH * nparts * Sq * D);

#pragma omp parallel num_threads(nt)
  {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    const GradScratch w(scratch.get() + tid * per_thread, sqp, D, Dv);
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < BH * nparts; ++task) {
      const int64_t bh = task / nparts, part = task % nparts;
      const int64_t c0 = part * range, c1 = imin(Sk, c0 + range);
      float* dq = nparts > 1 ? partial.get() + task * Sq * D : g.dq + bh * Sq * D;
      attention_backward_task(g, bh / H, bh % H, c0, c1, dq, w);
    }
    if (nparts > 1) {
#pragma omp for schedule(static)
      for (int64_t bh = 0; bh < BH; ++bh) {
        float* dq = g.dq + bh * Sq * D;
        for (int64_t part = 0; part < nparts; ++part) {
          const float* src = partial.get() + (bh * nparts + part) * Sq * D;
          for (int64_t x = 0; x < Sq * D; ++x) dq[x] += src[x];
        }
      }
    }
  }
}

}  // namespace cf::cpu::CF_ISA_NS
