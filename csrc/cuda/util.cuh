// What the CUDA kernel files share: error checks, float16/bfloat16 <-> float conversion, dtype
// dispatch, warp and block reductions. Device code computes in float32 whatever the storage.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/error.h"
#include "core/tensor.h"

namespace cf::cuda {

void check(cudaError_t e, const char* what);  // RuntimeError with CUDA's message
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

template <class T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Runs `body` with T bound to the storage type of a float dtype (float32, float16, bfloat16).
#define CF_CUDA_FLOAT_TYPES(dtype, T, ...)                                                  \
  switch (dtype) {                                                                         \
    case ::cf::DType::f32: { using T = float; __VA_ARGS__; break; }                        \
    case ::cf::DType::f16: { using T = __half; __VA_ARGS__; break; }                       \
    case ::cf::DType::bf16: { using T = __nv_bfloat16; __VA_ARGS__; break; }               \
    default: ::cf::raise<::cf::TypeError>("CUDA kernels take float32, float16 or bfloat16, got ", \
                                          ::cf::dtype_name(dtype));                        \
  }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide reductions for blockDim.x a multiple of 32 (at most 1024); every thread gets the
// result. `scratch` holds 32 floats; the call ends with the block synchronised.
template <bool kMax>
__device__ float block_reduce(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = kMax ? warp_max(v) : warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < warps ? scratch[lane] : (kMax ? -INFINITY : 0.0f);
  r = kMax ? warp_max(r) : warp_sum(r);
  return r;
}

// The activations, shared by the elementwise kernel and the GEMM epilogue (the CPU's semantics).
// gelu(x) = x Phi(x) with Phi(x) = erfc(-x / sqrt 2) / 2: no cancellation on either side. Below
// x = -20 Phi is 0 in float32 (this also gives gelu(-inf) = 0, not -inf * 0); NaN stays NaN.
__device__ __forceinline__ float gelu_erf(float x) {
  return x < -20.0f ? 0.0f : 0.5f * x * erfcf(-0.70710678118654752f * x);
}
__device__ __forceinline__ float gelu_tanh(float x) {
  const float u = 0.7978845608028654f * fmaf(0.044715f * x, x * x, x);
  return x < -20.0f ? 0.0f : 0.5f * x * (1.0f + tanhf(u));
}
__device__ __forceinline__ float relu(float x) { return x < 0.0f ? 0.0f : x; }  // NaN stays NaN
// For float16/bfloat16 results: 1 + erf(x / sqrt 2) instead of erfc, about half the instructions (the
// erf GELU of a bfloat16 array ran at 67% of the copy rate on an H100 with erfc, compute-bound). Its
// cancellation below x = -3 costs an absolute error under 2e-7, far below what 16 bits keep.
__device__ __forceinline__ float gelu_erf_fast(float x) {
  return x < -20.0f ? 0.0f : 0.5f * x * (1.0f + erff(0.70710678118654752f * x));
}
// kAct: 0 none, 1 relu, 2 gelu (erf), 3 gelu_tanh (cpu::Activation's values); T: the storage type
template <int kAct, class T = float>
__device__ __forceinline__ float activate(float x) {
  if constexpr (kAct == 1) return relu(x);
  if constexpr (kAct == 2) {
    if constexpr (sizeof(T) == 2) return gelu_erf_fast(x);
    else return gelu_erf(x);
  }
  if constexpr (kAct == 3) return gelu_tanh(x);
  return x;
}

// 16-byte vectors of a storage type: 4 float32 or 8 float16/bfloat16 per load and store.
template <class T>
struct Vec16 {
  static constexpr int kN = 16 / static_cast<int>(sizeof(T));
  __device__ __forceinline__ static void load(const T* p, float (&v)[kN]) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int i = 0; i < kN; ++i) v[i] = to_float(e[i]);
  }
  __device__ __forceinline__ static void store(T* p, const float (&v)[kN]) {
    uint4 u;
    T* e = reinterpret_cast<T*>(&u);
#pragma unroll
    for (int i = 0; i < kN; ++i) e[i] = from_float<T>(v[i]);
    *reinterpret_cast<uint4*>(p) = u;
  }
};

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Grid-stride kernels that move 16 bytes per thread stop growing the grid here: 16 blocks of 256 threads
// on each of an H100's 132 SMs, eight times over, then each thread loops.
constexpr int64_t kStreamBlocks = 132LL * 16 * 8;

inline unsigned blocks_for(int64_t n, int threads, int64_t cap = 65535LL * 8) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  return static_cast<unsigned>(b < cap ? b : cap);
}

}  // namespace cf::cuda
