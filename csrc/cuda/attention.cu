// Attention on the GPU. scaled_dot_product_attention is flash-attention-shaped: a block takes 16
// query rows of one (batch, head), walks the keys in tiles of 32 staged through shared memory
// (K and V, converted to float32), and keeps an online softmax (running max, sum and output) per
// row in registers -- the score matrix never reaches global memory. Each warp owns 4 rows; lane j
// scores key j of the tile, then every lane accumulates its slice of the head dimension with the
// probabilities broadcast by shuffles. SIMT float32 arithmetic: a first version for correctness
// and the CPU's semantics (masks, bottom-right causal, zeros for a row with no key); tensor cores
// (mma on Q K^T and P V, FlashAttention-2's layout) are the next step, measured on a GPU.
#include <cmath>

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

template <class T, int kDMax>
void launch_attention(const AttentionArgs& a) {
  const size_t bytes = sizeof(float) * (kBQ * kDMax + kBK * (kDMax + 1) + kBK * kDMax);
  auto kernel = attention_kernel<T, kDMax>;
  if (bytes > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
          "cudaFuncSetAttribute (attention)");
  const dim3 grid(static_cast<unsigned>((a.Sq + kBQ - 1) / kBQ), static_cast<unsigned>(a.H),
                  static_cast<unsigned>(a.B));
  kernel<<<grid, kWarps * 32, bytes>>>(a);
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
