// Row reductions: softmax and layer norm. Rows up to 1024 float32 (2048 float16/bfloat16) elements,
// 16-byte aligned with a length a multiple of 16 bytes (every Transformer width): one warp per row, the
// row held in registers, read once and written once with 16-byte accesses, warp shuffles for the
// reductions. Other rows: one block per row, each row read two or three times (L1/L2 serve the
// repeats). A softmax over an inner axis: one thread per column.
#include <cmath>
#include <initializer_list>

#include "cuda/kernels.h"
#include "cuda/runtime.h"
#include "cuda/util.cuh"

namespace cf::cuda {
namespace {

int row_threads(int64_t n) {
  int64_t warps = (n + 127) / 128;  // about four elements per thread
  if (warps < 1) warps = 1;
  if (warps > 16) warps = 16;
  return static_cast<int>(warps * 32);
}

// One warp per row, the row in registers: lane l holds vectors l, l + 32, ... (kIters of them).
constexpr int kRowWarps = 4;  // rows per block of 128 threads

template <class T, int kIters>
__global__ void __launch_bounds__(kRowWarps * 32) softmax_warp_rows(const T* __restrict__ x, T* __restrict__ y,
                                                                    int64_t rows, int64_t n) {
  using V = Vec16<T>;
  const int lane = threadIdx.x & 31;
  const int64_t nv = n / V::kN;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(kRowWarps) + (threadIdx.x >> 5); r < rows;
       r += static_cast<int64_t>(gridDim.x) * kRowWarps) {
    float v[kIters][V::kN];
    float m = -INFINITY;
#pragma unroll
    for (int j = 0; j < kIters; ++j) {
      const int64_t c = j * 32 + lane;
      if (c < nv) {
        V::load(x + r * n + c * V::kN, v[j]);
#pragma unroll
        for (int e = 0; e < V::kN; ++e) m = fmaxf(m, v[j][e]);
      }
    }
    m = warp_max(m);
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < kIters; ++j)
      if (j * 32 + lane < nv) {
#pragma unroll
        for (int e = 0; e < V::kN; ++e) {
          v[j][e] = m == -INFINITY ? 0.0f : expf(v[j][e] - m);  // a row of -inf only: zeros
          s += v[j][e];
        }
      }
    s = warp_sum(s);
    const float inv = m == -INFINITY ? 0.0f : 1.0f / s;
#pragma unroll
    for (int j = 0; j < kIters; ++j) {
      const int64_t c = j * 32 + lane;
      if (c < nv) {
#pragma unroll
        for (int e = 0; e < V::kN; ++e) v[j][e] *= inv;
        V::store(y + r * n + c * V::kN, v[j]);
      }
    }
  }
}

// A layer norm's arrays in their storage type (residual, weight, bias and sum_out may be null).
template <class T>
struct LayerNormPointers {
  const T* x;
  const T* res;
  const T* w;
  const T* b;
  T* y;
  T* sum_out;
};
template <class T>
__device__ __forceinline__ LayerNormPointers<T> pointers(const LayerNormArgs& a) {
  return {static_cast<const T*>(a.x), static_cast<const T*>(a.residual), static_cast<const T*>(a.weight),
          static_cast<const T*>(a.bias), static_cast<T*>(a.y), static_cast<T*>(a.sum_out)};
}

template <class T, int kIters>
__global__ void __launch_bounds__(kRowWarps * 32) layer_norm_warp_rows(LayerNormArgs a) {
  using V = Vec16<T>;
  const auto [x, res, w, b, y, sum_out] = pointers<T>(a);
  const int lane = threadIdx.x & 31;
  const int64_t n = a.n, nv = n / V::kN;
  const float inv_n = 1.0f / static_cast<float>(n);
  for (int64_t r = blockIdx.x * static_cast<int64_t>(kRowWarps) + (threadIdx.x >> 5); r < a.rows;
       r += static_cast<int64_t>(gridDim.x) * kRowWarps) {
    float v[kIters][V::kN];
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < kIters; ++j) {
      const int64_t c = j * 32 + lane;
      if (c < nv) {
        V::load(x + r * n + c * V::kN, v[j]);
        if (res) {
          float t[V::kN];
          V::load(res + r * n + c * V::kN, t);
#pragma unroll
          for (int e = 0; e < V::kN; ++e) v[j][e] += t[e];
        }
        if (sum_out) V::store(sum_out + r * n + c * V::kN, v[j]);
#pragma unroll
        for (int e = 0; e < V::kN; ++e) s += v[j][e];
      }
    }
    const float mean = warp_sum(s) * inv_n;
    float q = 0.0f;  // the variance from the registers, about the mean: no cancellation
#pragma unroll
    for (int j = 0; j < kIters; ++j)
      if (j * 32 + lane < nv) {
#pragma unroll
        for (int e = 0; e < V::kN; ++e) {
          const float d = v[j][e] - mean;
          q += d * d;
        }
      }
    const float rstd = rsqrtf(warp_sum(q) * inv_n + a.eps);
#pragma unroll
    for (int j = 0; j < kIters; ++j) {
      const int64_t c = j * 32 + lane;
      if (c < nv) {
        float wv[V::kN], bv[V::kN];
        if (w) V::load(w + c * V::kN, wv);
        if (b) V::load(b + c * V::kN, bv);
#pragma unroll
        for (int e = 0; e < V::kN; ++e) {
          float o = (v[j][e] - mean) * rstd;
          if (w) o *= wv[e];
          if (b) o += bv[e];
          v[j][e] = o;
        }
        V::store(y + r * n + c * V::kN, v[j]);
      }
    }
  }
}

// The warp kernel's vectors per lane for a row of n elements, or 0 when the block kernel must take it.
template <class T>
int warp_row_iters(int64_t n, std::initializer_list<const void*> ptrs) {
  constexpr int kN = Vec16<T>::kN;
  if (n % kN != 0 || n > 32 * 8 * kN) return 0;
  for (const void* p : ptrs)
    if (p && !aligned16(p)) return 0;
  const int64_t per_lane = (n / kN + 31) / 32;
  return per_lane <= 1 ? 1 : per_lane <= 2 ? 2 : per_lane <= 4 ? 4 : 8;
}

inline unsigned warp_row_blocks(int64_t rows) {
  const int64_t b = (rows + kRowWarps - 1) / kRowWarps;
  return static_cast<unsigned>(b < 65535LL * 8 ? b : 65535LL * 8);
}

template <class T>
__global__ void softmax_rows(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t n) {
  __shared__ float scratch[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * n;
    T* yr = y + r * n;
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, to_float(xr[i]));
    m = block_reduce<true>(m, scratch);
    if (m == -INFINITY) {  // every element -inf (or the row is empty): zeros, as attention does
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = from_float<T>(0.0f);
      continue;
    }
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += expf(to_float(xr[i]) - m);
    s = block_reduce<false>(s, scratch);
    const float inv = 1.0f / s;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = from_float<T>(expf(to_float(xr[i]) - m) * inv);
  }
}

// Softmax over the middle axis of (outer, n, inner): one thread per (outer, inner) column.
template <class T>
__global__ void softmax_columns(const T* __restrict__ x, T* __restrict__ y, int64_t outer, int64_t n, int64_t inner) {
  const int64_t cols = outer * inner;
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < cols;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = c / inner, i = c - o * inner;
    const T* xc = x + o * n * inner + i;
    T* yc = y + o * n * inner + i;
    float m = -INFINITY;
    for (int64_t j = 0; j < n; ++j) m = fmaxf(m, to_float(xc[j * inner]));
    if (m == -INFINITY) {
      for (int64_t j = 0; j < n; ++j) yc[j * inner] = from_float<T>(0.0f);
      continue;
    }
    float s = 0.0f;
    for (int64_t j = 0; j < n; ++j) s += expf(to_float(xc[j * inner]) - m);
    const float inv = 1.0f / s;
    for (int64_t j = 0; j < n; ++j) yc[j * inner] = from_float<T>(expf(to_float(xc[j * inner]) - m) * inv);
  }
}

template <class T>
__global__ void layer_norm_rows(LayerNormArgs a) {
  __shared__ float scratch[32];
  const auto [x, res, w, b, y, sum_out] = pointers<T>(a);
  const int64_t n = a.n;
  const float inv_n = 1.0f / static_cast<float>(n);
  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    const int64_t base = r * n;
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      float v = to_float(x[base + i]);
      if (res) v += to_float(res[base + i]);
      if (sum_out) sum_out[base + i] = from_float<T>(v);
      s += v;
    }
    const float mean = block_reduce<false>(s, scratch) * inv_n;
    float q = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      float v = to_float(x[base + i]);
      if (res) v += to_float(res[base + i]);
      const float d = v - mean;
      q += d * d;
    }
    const float rstd = rsqrtf(block_reduce<false>(q, scratch) * inv_n + a.eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      float v = to_float(x[base + i]);
      if (res) v += to_float(res[base + i]);
      float o = (v - mean) * rstd;
      if (w) o *= to_float(w[i]);
      if (b) o += to_float(b[i]);
      y[base + i] = from_float<T>(o);
    }
  }
}

// (value, index) ordered as numpy's argmax: NaN beats any number, then the larger value, then the
// smaller index.
__device__ __forceinline__ bool better(float v, int64_t i, float bv, int64_t bi) {
  const bool vn = v != v, bn = bv != bv;
  if (vn != bn) return vn;
  if (!vn && v != bv) return v > bv;
  return i < bi;
}

template <class T>
__global__ void argmax_rows(const T* __restrict__ x, int64_t rows, int64_t n, int64_t* __restrict__ out) {
  __shared__ float sv[32];
  __shared__ int64_t si[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float bv = -INFINITY;
    int64_t bi = n;  // past the end: loses to any element
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const float v = to_float(x[r * n + i]);
      if (bi == n || better(v, i, bv, bi)) { bv = v; bi = i; }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (oi != n && (bi == n || better(ov, oi, bv, bi))) { bv = ov; bi = oi; }
    }
    __syncthreads();
    if (lane == 0) { sv[warp] = bv; si[warp] = bi; }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < warps; ++w)
        if (si[w] != n && (bi == n || better(sv[w], si[w], bv, bi))) { bv = sv[w]; bi = si[w]; }
      out[r] = bi == n ? 0 : bi;
    }
  }
}

}  // namespace

void argmax(const void* x, int64_t rows, int64_t n, int64_t* out, DType dtype, int device) {
  if (rows == 0) return;
  DeviceGuard g(device);
  const unsigned blocks = static_cast<unsigned>(rows < 65535 * 8 ? rows : 65535 * 8);
  CF_CUDA_FLOAT_TYPES(dtype, T, { argmax_rows<T><<<blocks, 256>>>(static_cast<const T*>(x), rows, n, out); });
  check_launch("argmax");
}

void softmax(const void* x, void* y, int64_t outer, int64_t n, int64_t inner, DType dtype, int device) {
  if (outer * n * inner == 0) return;
  DeviceGuard g(device);
  CF_CUDA_FLOAT_TYPES(dtype, T, {
    if (inner == 1) {
      const T* xs = static_cast<const T*>(x);
      T* ys = static_cast<T*>(y);
      const unsigned wb = warp_row_blocks(outer);
      switch (warp_row_iters<T>(n, {x, y})) {
        case 1: softmax_warp_rows<T, 1><<<wb, kRowWarps * 32>>>(xs, ys, outer, n); break;
        case 2: softmax_warp_rows<T, 2><<<wb, kRowWarps * 32>>>(xs, ys, outer, n); break;
        case 4: softmax_warp_rows<T, 4><<<wb, kRowWarps * 32>>>(xs, ys, outer, n); break;
        case 8: softmax_warp_rows<T, 8><<<wb, kRowWarps * 32>>>(xs, ys, outer, n); break;
        default: {
          const unsigned blocks = static_cast<unsigned>(outer < 65535 * 8 ? outer : 65535 * 8);
          softmax_rows<T><<<blocks, row_threads(n)>>>(xs, ys, outer, n);
        }
      }
    } else {
      softmax_columns<T><<<blocks_for(outer * inner, 256), 256>>>(static_cast<const T*>(x), static_cast<T*>(y), outer,
                                                                   n, inner);
    }
  });
  check_launch("softmax");
}

void layer_norm(const LayerNormArgs& a) {
  if (a.rows == 0 || a.n == 0) return;
  DeviceGuard g(a.device);
  const unsigned blocks = static_cast<unsigned>(a.rows < 65535 * 8 ? a.rows : 65535 * 8);
  CF_CUDA_FLOAT_TYPES(a.dtype, T, {
    const unsigned wb = warp_row_blocks(a.rows);
    switch (warp_row_iters<T>(a.n, {a.x, a.residual, a.weight, a.bias, a.y, a.sum_out})) {
      case 1: layer_norm_warp_rows<T, 1><<<wb, kRowWarps * 32>>>(a); break;
      case 2: layer_norm_warp_rows<T, 2><<<wb, kRowWarps * 32>>>(a); break;
      case 4: layer_norm_warp_rows<T, 4><<<wb, kRowWarps * 32>>>(a); break;
      case 8: layer_norm_warp_rows<T, 8><<<wb, kRowWarps * 32>>>(a); break;
      default: layer_norm_rows<T><<<blocks, row_threads(a.n)>>>(a);
    }
  });
  check_launch("layer_norm");
}

}  // namespace cf::cuda
