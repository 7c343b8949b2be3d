// Row reductions: softmax and layer norm. One block per row (rows of a contiguous last axis), or for
// a softmax over an inner axis one thread per column. Memory-bound: each row is read from global
// memory two or three times, which the L1/L2 caches serve after the first.
#include <cmath>

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
  const T* x = static_cast<const T*>(a.x);
  const T* res = static_cast<const T*>(a.residual);
  const T* w = static_cast<const T*>(a.weight);
  const T* b = static_cast<const T*>(a.bias);
  T* y = static_cast<T*>(a.y);
  T* sum_out = static_cast<T*>(a.sum_out);
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
      const unsigned blocks = static_cast<unsigned>(outer < 65535 * 8 ? outer : 65535 * 8);
      softmax_rows<T><<<blocks, row_threads(n)>>>(static_cast<const T*>(x), static_cast<T*>(y), outer, n);
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
  CF_CUDA_FLOAT_TYPES(a.dtype, T, { layer_norm_rows<T><<<blocks, row_threads(a.n)>>>(a); });
  check_launch("layer_norm");
}

}  // namespace cf::cuda
