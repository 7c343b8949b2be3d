// Attention on the GPU. float16/bfloat16 with D == Dv of 32, 64 or 128 and 16-byte-aligned rows (any
// mask, causal or not): FlashAttention-2's forward on the tensor cores (flash_tc below). Everything
// else: a flash-attention-shaped SIMT kernel in float32 -- a block takes 16 query rows of one (batch,
// head), walks the keys in tiles of 32 staged through shared memory (K and V, converted to float32),
// and keeps an online softmax (running max, sum and output) per row in registers; each warp owns 4
// rows, lane j scores key j of the tile, then every lane accumulates its slice of the head dimension
// with the probabilities broadcast by shuffles. Both keep the CPU's semantics (masks, bottom-right
// causal, zeros for a row with no key) and never write the score matrix to global memory.
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cuda/kernels.h"
#include "cuda/runtime.h"
#include "cuda/util.cuh"

namespace cf::cuda {
namespace {

constexpr int kWarps = 4, kRowsPerWarp = 4, kBQ = kWarps * kRowsPerWarp, kBK = 32;

// Applies one mask to score s of (b, h, i, j): false when the key may not be attended.
__device__ __forceinline__ bool apply_mask(const MaskArgs& mk, int64_t b, int64_t h, int64_t i, int64_t j, float& s) {
  if (mk.kind == MaskArgs::none) return true;
  const int64_t off = b * mk.sb + h * mk.sh + i * mk.sq + j * mk.sk;
  if (mk.kind == MaskArgs::boolean) {
    const bool v = static_cast<const uint8_t*>(mk.data)[off] != 0;
    return mk.true_means_masked ? !v : v;
  }
  s += static_cast<const float*>(mk.data)[off];
  return true;
}

template <class T, int kDMax>
__global__ void __launch_bounds__(kWarps * 32) attention_kernel(AttentionArgs a) {
  constexpr int kDPL = kDMax / 32;  // head-dimension elements per lane
  constexpr int kKLD = kDMax + 1;   // K rows padded: lane j reads row j without bank conflicts
  extern __shared__ float smem[];
  float* Qs = smem;                   // [kBQ][kDMax], pre-scaled
  float* Ks = Qs + kBQ * kDMax;       // [kBK][kKLD]
  float* Vs = Ks + kBK * kKLD;        // [kBK][kDMax]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t b = blockIdx.z, h = blockIdx.y, q0 = static_cast<int64_t>(blockIdx.x) * kBQ;
  const T* q = static_cast<const T*>(a.q) + b * a.q_sb + h * a.q_sh;
  const T* k = static_cast<const T*>(a.k) + b * a.k_sb + h * a.k_sh;
  const T* v = static_cast<const T*>(a.v) + b * a.v_sb + h * a.v_sh;
  T* out = static_cast<T*>(a.out) + b * a.o_sb + h * a.o_sh;
  const int D = static_cast<int>(a.D), Dv = static_cast<int>(a.Dv);
  const int64_t shift = a.Sk - a.Sq;  // causal: query i sees keys j <= i + shift

  for (int e = threadIdx.x; e < kBQ * D; e += blockDim.x) {
    const int r = e / D, d = e % D;
    Qs[r * kDMax + d] = q0 + r < a.Sq ? to_float(q[(q0 + r) * a.q_ss + d]) * a.scale : 0.0f;
  }
  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kDPL];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    m[rr] = -INFINITY;
    l[rr] = 0.0f;
#pragma unroll
    for (int t = 0; t < kDPL; ++t) acc[rr][t] = 0.0f;
  }
  int64_t kend = a.Sk;
  if (a.causal) {
    const int64_t last = (q0 + kBQ - 1 < a.Sq ? q0 + kBQ - 1 : a.Sq - 1) + shift;  // the block's last row's last key
    kend = last + 1 < 0 ? 0 : (last + 1 < a.Sk ? last + 1 : a.Sk);
  }
  for (int64_t k0 = 0; k0 < kend; k0 += kBK) {
    __syncthreads();  // the previous tile has been read (and Qs written, the first time)
    for (int e = threadIdx.x; e < kBK * D; e += blockDim.x) {
      const int j = e / D, d = e % D;
      Ks[j * kKLD + d] = k0 + j < a.Sk ? to_float(k[(k0 + j) * a.k_ss + d]) : 0.0f;
    }
    for (int e = threadIdx.x; e < kBK * Dv; e += blockDim.x) {
      const int j = e / Dv, d = e % Dv;
      Vs[j * kDMax + d] = k0 + j < a.Sk ? to_float(v[(k0 + j) * a.v_ss + d]) : 0.0f;
    }
    __syncthreads();
    const int tile = static_cast<int>(a.Sk - k0 < kBK ? a.Sk - k0 : kBK);
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr;
      const int64_t i = q0 + r;
      if (i >= a.Sq) continue;  // warp-uniform
      const int64_t j = k0 + lane;
      float s = -INFINITY;
      if (lane < tile && (!a.causal || j <= i + shift)) {
        float dot = 0.0f;
        const float* qr = Qs + r * kDMax;
        const float* kr = Ks + lane * kKLD;
        for (int d = 0; d < D; ++d) dot = fmaf(qr[d], kr[d], dot);
        bool ok = apply_mask(a.mask, b, h, i, j, dot);
        ok = apply_mask(a.mask2, b, h, i, j, dot) && ok;
        s = ok ? dot : -INFINITY;
      }
      const float m_new = fmaxf(m[rr], warp_max(s));
      if (m_new == -INFINITY) continue;  // no key attended so far (warp-uniform)
      const float p = s == -INFINITY ? 0.0f : expf(s - m_new);
      const float corr = expf(m[rr] - m_new);  // 0 while m was -inf
      l[rr] = l[rr] * corr + warp_sum(p);
      m[rr] = m_new;
#pragma unroll
      for (int t = 0; t < kDPL; ++t) acc[rr][t] *= corr;
      for (int jj = 0; jj < tile; ++jj) {
        const float pj = __shfl_sync(0xffffffffu, p, jj);
        const float* vr = Vs + jj * kDMax;
#pragma unroll
        for (int t = 0; t < kDPL; ++t) {
          const int d = lane + 32 * t;
          if (d < Dv) acc[rr][t] = fmaf(pj, vr[d], acc[rr][t]);
        }
      }
    }
  }
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int64_t i = q0 + warp * kRowsPerWarp + rr;
    if (i >= a.Sq) continue;
    const float inv = l[rr] > 0.0f ? 1.0f / l[rr] : 0.0f;  // no key attended: zeros, not NaN
#pragma unroll
    for (int t = 0; t < kDPL; ++t) {
      const int d = lane + 32 * t;
      if (d < Dv) out[i * a.o_ss + d] = from_float<T>(acc[rr][t] * inv);
    }
  }
}

// Launches an attention kernel over blocks of `rows` query rows x heads x batches, with `bytes` of dynamic
// shared memory (the limit raised past the default 48 KB where needed).
void launch_rows(void (*kernel)(AttentionArgs), const AttentionArgs& a, int64_t rows, int threads, size_t bytes) {
  if (bytes > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
          "cudaFuncSetAttribute (attention)");
  const dim3 grid(static_cast<unsigned>((a.Sq + rows - 1) / rows), static_cast<unsigned>(a.H),
                  static_cast<unsigned>(a.B));
  kernel<<<grid, threads, bytes>>>(a);
}

// ---- Tensor cores: FlashAttention-2's forward (Dao 2023) with mma.sync m16n8k16 ----------------------
// A block of 4 warps takes 64 query rows of one (batch, head), 16 per warp, and walks the keys in tiles
// of 64 staged in shared memory by cp.async (rows past the end zero-filled; the next tile loads while
// this one is used). Each warp computes its 16x64 score tile S = Q K^T with Q's fragments held in
// registers and K's loaded by ldmatrix, applies the causal / length mask, updates
// the online softmax in the exp2 domain (each thread owns 2 rows; row max and sum over the 4 threads of
// a quad), and multiplies P, converted to 16 bits in the accumulator layout that is also the A-operand
// layout, by V loaded transposed by ldmatrix. float32 accumulation throughout; one division per row at
// the end; shared-memory rows padded by 16 bytes, so fragment loads and ldmatrix are conflict-free.
namespace tc {

constexpr int kWarps = 4, kBM = 64, kBN = 64;

template <class T>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {  // lo in the low 16 bits (the smaller index)
  if constexpr (std::is_same_v<T, __half>) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool ok) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = ok ? 16 : 0;  // 0: nothing read, 16 zero bytes written
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int kPending>  // waits until at most kPending of this thread's copy groups are still in flight
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory"); }

__device__ __forceinline__ float exp2_approx(float x) {  // ex2.approx: 2 ulp, exp2(-inf) = 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Four 8x8 matrices of 16-bit values: lane l gives the address of row l % 8 of matrix l / 8 and gets
// row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 of each (the mma fragment layout).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Four 8x8 matrices of 16-bit values, transposed: lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Rows [r0, r0 + rows_here) of a (rows, kD) tile from global rows `stride` elements apart; the rest zeros.
template <class T, int kD, int kRows>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t stride, int64_t rows_here) {
  constexpr int kLD = kD + 8, kChunks = kD / 8;
  for (int c = threadIdx.x; c < kRows * kChunks; c += kWarps * 32) {
    const int r = c / kChunks, cc = (c - r * kChunks) * 8;
    const bool ok = r < rows_here;
    cp_async16(dst + r * kLD + cc, ok ? src + r * stride + cc : src, ok);
  }
}

template <class T, int kD, bool kMasked>
__global__ void __launch_bounds__(kWarps * 32) flash_tc(AttentionArgs a) {
  constexpr int kLD = kD + 8;  // shared-memory row stride in elements (16 bytes of padding)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);
  T* Ks = Qs + kBM * kLD;      // two buffers: the next tile loads while this one is used
  T* Vs = Ks + 2 * kBN * kLD;  // two buffers
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tig = lane & 3;
  const int64_t b = blockIdx.z, h = blockIdx.y, q0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const T* q = static_cast<const T*>(a.q) + b * a.q_sb + h * a.q_sh;
  const T* k = static_cast<const T*>(a.k) + b * a.k_sb + h * a.k_sh;
  const T* v = static_cast<const T*>(a.v) + b * a.v_sb + h * a.v_sh;
  T* out = static_cast<T*>(a.out) + b * a.o_sb + h * a.o_sh;
  const int64_t shift = a.Sk - a.Sq;  // causal: query i sees keys j <= i + shift

  int64_t kend = a.Sk;
  if (a.causal) {
    const int64_t last = (q0 + kBM - 1 < a.Sq ? q0 + kBM - 1 : a.Sq - 1) + shift;  // the block's last row's last key
    kend = last + 1 < 0 ? 0 : (last + 1 < a.Sk ? last + 1 : a.Sk);
  }
  load_tile<T, kD, kBM>(Qs, q + q0 * a.q_ss, a.q_ss, a.Sq - q0);
  if (kend > 0) {
    load_tile<T, kD, kBN>(Ks, k, a.k_ss, a.Sk);
    load_tile<T, kD, kBN>(Vs, v, a.v_ss, a.Sk);
  }
  cp_async_commit();  // Q and the first K/V tile
  const float scale2 = a.scale * 1.4426950408889634f;  // scores in the exp2 domain
  const int64_t row0 = q0 + warp * 16 + g;              // this thread's rows: row0 and row0 + 8
  float o[kD / 8][4];
#pragma unroll
  for (int d = 0; d < kD / 8; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  uint32_t qf[kD / 16][4];
  const int mi = lane >> 3;  // which of ldmatrix's four matrices this lane addresses

  for (int64_t k0 = 0, t = 0; k0 < kend; k0 += kBN, ++t) {
    const T* Kb = Ks + (t & 1) * kBN * kLD;
    const T* Vb = Vs + (t & 1) * kBN * kLD;
    if (k0 + kBN < kend) {  // prefetch the next tile into the other buffers (free since the last barrier)
      load_tile<T, kD, kBN>(Ks + ((t + 1) & 1) * kBN * kLD, k + (k0 + kBN) * a.k_ss, a.k_ss, a.Sk - k0 - kBN);
      load_tile<T, kD, kBN>(Vs + ((t + 1) & 1) * kBN * kLD, v + (k0 + kBN) * a.v_ss, a.v_ss, a.Sk - k0 - kBN);
      cp_async_commit();
      cp_async_wait<1>();  // this tile (and Q) are in; the prefetch may still fly
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (t == 0) {
      const T* qr = Qs + (warp * 16 + g) * kLD + tig * 2;
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        qf[kk][0] = *reinterpret_cast<const uint32_t*>(qr + kk * 16);
        qf[kk][1] = *reinterpret_cast<const uint32_t*>(qr + 8 * kLD + kk * 16);
        qf[kk][2] = *reinterpret_cast<const uint32_t*>(qr + kk * 16 + 8);
        qf[kk][3] = *reinterpret_cast<const uint32_t*>(qr + 8 * kLD + kk * 16 + 8);
      }
    }
    float s[kBN / 8][4];
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk)
#pragma unroll
      for (int j = 0; j < kBN / 8; j += 2) {  // K fragments of key groups j and j + 1 in one ldmatrix
        uint32_t kb[4];
        ldmatrix_x4(kb, Kb + ((j + (mi >> 1)) * 8 + (lane & 7)) * kLD + kk * 16 + (mi & 1) * 8);
        mma<T>(s[j], qf[kk], kb[0], kb[1]);
        mma<T>(s[j + 1], qf[kk], kb[2], kb[3]);
      }
    // keys past the end, after a row's causal limit or masked out score -inf; a float mask adds to the
    // scaled score. Element by element only in tiles that cross an edge, or in the masked variant (a
    // separate instantiation: its mask code in the unmasked kernel cost 20% on an H100, 206 registers)
    const bool edge = kMasked || k0 + kBN > a.Sk || (a.causal && k0 + kBN - 1 > q0 + shift);
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if constexpr (kMasked) {
          const int64_t col = k0 + j * 8 + tig * 2 + (e & 1), row = row0 + (e >> 1) * 8;
          float x = s[j][e] * a.scale;
          bool ok = col < a.Sk && !(a.causal && col > row + shift);
          if (ok && row < a.Sq) {
            ok = apply_mask(a.mask, b, h, row, col, x);
            ok = apply_mask(a.mask2, b, h, row, col, x) && ok;
          }
          s[j][e] = ok ? x * 1.4426950408889634f : -INFINITY;
        } else {
          s[j][e] *= scale2;
          if (edge) {
            const int64_t col = k0 + j * 8 + tig * 2 + (e & 1), row = row0 + (e >> 1) * 8;
            if (col >= a.Sk || (a.causal && col > row + shift)) s[j][e] = -INFINITY;
          }
        }
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[r], mx);
      // no key for this row yet: p = exp2(-inf) = 0 and nothing to rescale
      const float base = m_new == -INFINITY ? 0.0f : m_new;
      const float corr = m_new == -INFINITY ? 1.0f : exp2_approx(m[r] - m_new);
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
        s[j][2 * r] = exp2_approx(s[j][2 * r] - base);
        s[j][2 * r + 1] = exp2_approx(s[j][2 * r + 1] - base);
        sum += s[j][2 * r] + s[j][2 * r + 1];
      }
      l[r] = l[r] * corr + sum;  // this thread's share; the quad's shares are added at the end
      m[r] = m_new;
#pragma unroll
      for (int d = 0; d < kD / 8; ++d) {
        o[d][2 * r] *= corr;
        o[d][2 * r + 1] *= corr;
      }
    }
    // O += P V: P's accumulator fragments are the A fragments of the next mma; V^T fragments by ldmatrix
#pragma unroll
    for (int kt = 0; kt < kBN / 16; ++kt) {
      const uint32_t pa[4] = {pack2<T>(s[2 * kt][0], s[2 * kt][1]), pack2<T>(s[2 * kt][2], s[2 * kt][3]),
                              pack2<T>(s[2 * kt + 1][0], s[2 * kt + 1][1]),
                              pack2<T>(s[2 * kt + 1][2], s[2 * kt + 1][3])};
      const T* vrow = Vb + (kt * 16 + (mi & 1) * 8 + (lane & 7)) * kLD + (mi >> 1) * 8;
#pragma unroll
      for (int d = 0; d < kD / 8; d += 2) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, vrow + d * 8);
        mma<T>(o[d], pa, vb[0], vb[1]);
        mma<T>(o[d + 1], pa, vb[2], vb[3]);
      }
    }
    __syncthreads();  // every warp is done with these buffers before the next prefetch overwrites them
  }
  cp_async_wait<0>();  // a block with no key at all still has its Q copy in flight
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = l[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // no key attended: zeros, not NaN
    const int64_t row = row0 + r * 8;
    if (row >= a.Sq) continue;
    T* orow = out + row * a.o_ss + tig * 2;
#pragma unroll
    for (int d = 0; d < kD / 8; ++d)
      *reinterpret_cast<uint32_t*>(orow + d * 8) = pack2<T>(o[d][2 * r] * inv, o[d][2 * r + 1] * inv);
  }
}

template <class T, int kD>
void launch(const AttentionArgs& a) {
  constexpr size_t bytes = sizeof(T) * (kBM + 4 * kBN) * (kD + 8);  // Q, and K and V twice
  const bool masked = a.mask.kind != MaskArgs::none || a.mask2.kind != MaskArgs::none;
  launch_rows(masked ? flash_tc<T, kD, true> : flash_tc<T, kD, false>, a, kBM, kWarps * 32, bytes);
}

// Whether flash_tc takes this call: 16-bit types, D == Dv in {32, 64, 128}, every row of q, k, v and out
// 16-byte aligned (so cp.async and the paired stores apply). Masks of any kind are read per element.
bool applies(const AttentionArgs& a) {
  if (a.dtype != DType::f16 && a.dtype != DType::bf16) return false;
  if (a.D != a.Dv || (a.D != 32 && a.D != 64 && a.D != 128)) return false;
  for (const int64_t st :
       {a.q_sb, a.q_sh, a.q_ss, a.k_sb, a.k_sh, a.k_ss, a.v_sb, a.v_sh, a.v_ss, a.o_sb, a.o_sh, a.o_ss})
    if (st % 8 != 0) return false;
  return aligned16(a.q) && aligned16(a.k) && aligned16(a.v) && aligned16(a.out);
}

}  // namespace tc

template <class T, int kDMax>
void launch_attention(const AttentionArgs& a) {
  const size_t bytes = sizeof(float) * (kBQ * kDMax + kBK * (kDMax + 1) + kBK * kDMax);
  launch_rows(attention_kernel<T, kDMax>, a, kBQ, kWarps * 32, bytes);
}

// Additive attention, one block per query row (b, i): scores v . tanh(qp_i + kp_j) into a float32
// scratch row, the masked softmax over them, then the weighted sum of the values.
template <class T>
__global__ void additive_kernel(AdditiveArgs a, float* scores) {
  __shared__ float scratch[32];
  extern __shared__ float qrow[];  // qp[b, i, :] as float32
  const int64_t bi = blockIdx.x, b = bi / a.Sq, i = bi - b * a.Sq;
  const T* qp = static_cast<const T*>(a.qp) + bi * a.A;
  const T* kp = static_cast<const T*>(a.kp) + b * a.Sk * a.A;
  const T* vv = static_cast<const T*>(a.v_vec);
  const T* values = static_cast<const T*>(a.values) + b * a.Sk * a.Dv;
  float* s = scores + bi * a.Sk;
  for (int64_t t = threadIdx.x; t < a.A; t += blockDim.x) qrow[t] = to_float(qp[t]);
  __syncthreads();
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < a.Sk; j += blockDim.x) {
    float sj = -INFINITY;
    if (!a.mask || a.mask[b * a.m_sb + i * a.m_sq + j]) {
      sj = 0.0f;
      const T* kr = kp + j * a.A;
      for (int64_t t = 0; t < a.A; ++t) sj = fmaf(to_float(vv[t]), tanhf(qrow[t] + to_float(kr[t])), sj);
    }
    s[j] = sj;
    mx = fmaxf(mx, sj);
  }
  mx = block_reduce<true>(mx, scratch);  // also orders the score writes before the reads below
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < a.Sk; j += blockDim.x) {
    const float p = mx == -INFINITY || s[j] == -INFINITY ? 0.0f : expf(s[j] - mx);
    s[j] = p;
    sum += p;
  }
  sum = block_reduce<false>(sum, scratch);
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // no key to attend: zeros
  if (a.weights) {
    T* w = static_cast<T*>(a.weights) + bi * a.Sk;
    for (int64_t j = threadIdx.x; j < a.Sk; j += blockDim.x) w[j] = from_float<T>(s[j] * inv);
  }
  T* o = static_cast<T*>(a.out) + bi * a.Dv;
  for (int64_t d = threadIdx.x; d < a.Dv; d += blockDim.x) {
    float r = 0.0f;
    for (int64_t j = 0; j < a.Sk; ++j) r = fmaf(s[j], to_float(values[j * a.Dv + d]), r);
    o[d] = from_float<T>(r * inv);
  }
}

}  // namespace

void attention(const AttentionArgs& a) {
  if (a.B == 0 || a.H == 0 || a.Sq == 0 || a.Dv == 0) return;
  CF_CHECK(a.H <= 65535 && a.B <= 65535, ValueError, "attention on the GPU: at most 65535 batches and heads, got B=",
           a.B, ", H=", a.H);
  const int64_t dmax = a.D > a.Dv ? a.D : a.Dv;
  CF_CHECK(dmax <= kMaxHeadDim, ValueError, "attention on the GPU: head dimensions up to ", kMaxHeadDim,
           ", got D=", a.D, ", Dv=", a.Dv);
  DeviceGuard g(a.device);
  if (a.Sk > 0 && tc::applies(a)) {
    if (a.dtype == DType::f16) {
      if (a.D == 32) tc::launch<__half, 32>(a);
      else if (a.D == 64) tc::launch<__half, 64>(a);
      else tc::launch<__half, 128>(a);
    } else {
      if (a.D == 32) tc::launch<__nv_bfloat16, 32>(a);
      else if (a.D == 64) tc::launch<__nv_bfloat16, 64>(a);
      else tc::launch<__nv_bfloat16, 128>(a);
    }
    check_launch("attention (tensor cores)");
    return;
  }
  CF_CUDA_FLOAT_TYPES(a.dtype, T, {
    if (dmax <= 64) launch_attention<T, 64>(a);
    else if (dmax <= 128) launch_attention<T, 128>(a);
    else launch_attention<T, 256>(a);
  });
  check_launch("attention");
}

void additive_attention(const AdditiveArgs& a) {
  if (a.B == 0 || a.Sq == 0) return;
  DeviceGuard g(a.device);
  Buffer scores(sizeof(float) * static_cast<size_t>(a.B * a.Sq * (a.Sk > 0 ? a.Sk : 1)), a.device);
  const size_t qbytes = sizeof(float) * static_cast<size_t>(a.A > 0 ? a.A : 1);
  CF_CHECK(qbytes <= 48 * 1024, ValueError, "additive_attention on the GPU: attention dimension A up to 12288, got ",
           a.A);
  CF_CUDA_FLOAT_TYPES(a.dtype, T, {
    additive_kernel<T><<<static_cast<unsigned>(a.B * a.Sq), 256, qbytes>>>(a, scores.get<float>());
  });
  check_launch("additive_attention");
}

}  // namespace cf::cuda
