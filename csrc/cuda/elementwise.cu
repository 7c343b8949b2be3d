// Elementwise kernels: activations, the strided copy/cast behind Tensor.to() and from_dlpack(),
// and the embedding gather. Memory-bound: grid-stride loops; the activations move 16 bytes per load
// and store where the arrays are 16-byte aligned (one element at a time otherwise).
#include <cmath>

#include "cuda/kernels.h"
#include "cuda/runtime.h"
#include "cuda/util.cuh"

namespace cf::cuda {
namespace {

template <class T, int kAct>
__global__ void activation_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] = from_float<T>(activate<kAct, T>(to_float(x[i])));
  }
}

// 16 bytes per thread per step: n / kN whole vectors, the last n % kN elements one by one.
template <class T, int kAct>
__global__ void activation_vec_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  using V = Vec16<T>;
  const int64_t vecs = n / V::kN;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < vecs; i += step) {
    float v[V::kN];
    V::load(x + i * V::kN, v);
#pragma unroll
    for (int j = 0; j < V::kN; ++j) v[j] = activate<kAct, T>(v[j]);
    V::store(y + i * V::kN, v);
  }
  for (int64_t i = vecs * V::kN + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += step)
    y[i] = from_float<T>(activate<kAct, T>(to_float(x[i])));
}

template <class T, int kAct>
void launch_activation(const T* x, T* y, int64_t n) {
  if (aligned16(x) && aligned16(y)) {
    const int64_t vecs = (n + Vec16<T>::kN - 1) / Vec16<T>::kN;
    activation_vec_kernel<T, kAct><<<blocks_for(vecs, 256, kStreamBlocks), 256>>>(x, y, n);
  } else {
    activation_kernel<T, kAct><<<blocks_for(n, 256), 256>>>(x, y, n);
  }
}

struct Strided {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};
};

__device__ __forceinline__ int64_t offset_of(int64_t i, const Strided& s) {
  int64_t off = 0;
  for (int d = s.ndim - 1; d >= 0; --d) {
    const int64_t idx = i % s.shape[d];
    i /= s.shape[d];
    off += idx * s.strides[d];
  }
  return off;
}

template <class Tin, class Tout>
__global__ void cast_kernel(const Tin* __restrict__ src, Strided s, Tout* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = from_float<Tout>(to_float(src[offset_of(i, s)]));
}

template <class T>
__global__ void copy_kernel(const T* __restrict__ src, Strided s, T* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = src[offset_of(i, s)];
}

template <class I>
__global__ void find_bad_id(const I* __restrict__ ids, int64_t n, int64_t V, unsigned long long* first_bad) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t id = static_cast<int64_t>(ids[i]);
    if (id < 0 || id >= V) atomicMin(first_bad, static_cast<unsigned long long>(i));
  }
}

template <class I, class T>
__global__ void gather_rows(const I* __restrict__ ids, int64_t n, const T* __restrict__ table, int64_t D,
                            T* __restrict__ out) {
  const int64_t total = n * D;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / D, c = i - r * D;
    out[i] = table[static_cast<int64_t>(ids[r]) * D + c];
  }
}

template <class T>
__global__ void kv_append_kernel(const T* __restrict__ k, const T* __restrict__ v, int64_t ld, T* __restrict__ kc,
                                 T* __restrict__ vc, int64_t B, int64_t S, int64_t H, int64_t Dh, int64_t cap,
                                 int64_t past) {
  const int64_t E = H * Dh, total = B * S * E;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t col = i % E, row = i / E;  // row = b * S + s, col = h * Dh + d
    const int64_t s = row % S, b = row / S, h = col / Dh, d = col - h * Dh;
    const int64_t dst = ((b * H + h) * cap + past + s) * Dh + d;
    kc[dst] = k[row * ld + col];
    vc[dst] = v[row * ld + col];
  }
}

}  // namespace

void activation(const void* x, void* y, int64_t n, Activation act, DType dtype, int device) {
  if (n == 0) return;
  DeviceGuard g(device);
  CF_CUDA_FLOAT_TYPES(dtype, T, {
    const T* xs = static_cast<const T*>(x);
    T* ys = static_cast<T*>(y);
    switch (act) {
      case Activation::none: launch_activation<T, 0>(xs, ys, n); break;
      case Activation::relu: launch_activation<T, 1>(xs, ys, n); break;
      case Activation::gelu: launch_activation<T, 2>(xs, ys, n); break;
      case Activation::gelu_tanh: launch_activation<T, 3>(xs, ys, n); break;
    }
  });
  check_launch("activation");
}

void copy(const TensorView& src, const TensorView& dst) {
  const int64_t n = dst.numel();
  CF_CHECK(src.numel() == n, ValueError, "copy: source ", src.shape_str(), " and destination ", dst.shape_str(),
           " differ in size");
  if (n == 0) return;
  DeviceGuard g(dst.device.index);
  Strided s;
  s.ndim = src.ndim;
  for (int i = 0; i < src.ndim; ++i) {
    s.shape[i] = src.shape[i];
    s.strides[i] = src.strides[i];
  }
  const int threads = 256;
  const unsigned blocks = blocks_for(n, threads);
  if (src.dtype != dst.dtype && is_floating(src.dtype) && is_floating(dst.dtype)) {
    CF_CUDA_FLOAT_TYPES(src.dtype, Tin, {
      CF_CUDA_FLOAT_TYPES(dst.dtype, Tout, {
        cast_kernel<Tin, Tout><<<blocks, threads>>>(static_cast<const Tin*>(src.data), s, static_cast<Tout*>(dst.data), n);
      });
    });
  } else {
    CF_CHECK(src.dtype == dst.dtype, TypeError, "cannot convert ", dtype_name(src.dtype), " to ", dtype_name(dst.dtype),
             " on the GPU");
    switch (dtype_size(src.dtype)) {
      case 8: copy_kernel<<<blocks, threads>>>(static_cast<const uint64_t*>(src.data), s, static_cast<uint64_t*>(dst.data), n); break;
      case 4: copy_kernel<<<blocks, threads>>>(static_cast<const uint32_t*>(src.data), s, static_cast<uint32_t*>(dst.data), n); break;
      case 2: copy_kernel<<<blocks, threads>>>(static_cast<const uint16_t*>(src.data), s, static_cast<uint16_t*>(dst.data), n); break;
      default: copy_kernel<<<blocks, threads>>>(static_cast<const uint8_t*>(src.data), s, static_cast<uint8_t*>(dst.data), n); break;
    }
  }
  check_launch("copy");
}

void kv_append(const void* k, const void* v, int64_t ld, void* k_cache, void* v_cache, int64_t B, int64_t S,
               int64_t H, int64_t Dh, int64_t capacity, int64_t past, DType dtype, int device) {
  const int64_t n = B * S * H * Dh;
  if (n == 0) return;
  DeviceGuard g(device);
  CF_CUDA_FLOAT_TYPES(dtype, T, {
    kv_append_kernel<T><<<blocks_for(n, 256), 256>>>(static_cast<const T*>(k), static_cast<const T*>(v), ld,
                                                     static_cast<T*>(k_cache), static_cast<T*>(v_cache), B, S, H, Dh,
                                                     capacity, past);
  });
  check_launch("kv_append");
}

void embedding(const void* ids, bool ids64, int64_t n, const void* table, int64_t V, int64_t D, void* out,
               DType dtype, int device) {
  if (n == 0) return;
  DeviceGuard g(device);
  Buffer flag(sizeof(unsigned long long), device);
  const unsigned long long none = ~0ULL;
  cf::cuda::memcpy(flag.get<void>(), &none, sizeof none, Copy::host_to_device, device);
  const int threads = 256;
  if (ids64) find_bad_id<<<blocks_for(n, threads), threads>>>(static_cast<const int64_t*>(ids), n, V, flag.get<unsigned long long>());
  else find_bad_id<<<blocks_for(n, threads), threads>>>(static_cast<const int32_t*>(ids), n, V, flag.get<unsigned long long>());
  check_launch("embedding (id check)");
  unsigned long long bad = none;
  cf::cuda::memcpy(&bad, flag.get<void>(), sizeof bad, Copy::device_to_host, device);
  if (bad != none) {
    int64_t id = 0;
    if (ids64) {
      cf::cuda::memcpy(&id, static_cast<const int64_t*>(ids) + bad, 8, Copy::device_to_host, device);
    } else {
      int32_t id32 = 0;
      cf::cuda::memcpy(&id32, static_cast<const int32_t*>(ids) + bad, 4, Copy::device_to_host, device);
      id = id32;
    }
    raise<IndexError>("ids[", bad, "] (flat index) is ", id, ", outside the table's ", V, " rows [0, ", V, ")");
  }
  const unsigned blocks = blocks_for(n * D, threads);
  CF_CUDA_FLOAT_TYPES(dtype, T, {
    if (ids64) gather_rows<<<blocks, threads>>>(static_cast<const int64_t*>(ids), n, static_cast<const T*>(table), D, static_cast<T*>(out));
    else gather_rows<<<blocks, threads>>>(static_cast<const int32_t*>(ids), n, static_cast<const T*>(table), D, static_cast<T*>(out));
  });
  check_launch("embedding");
}

}  // namespace cf::cuda
