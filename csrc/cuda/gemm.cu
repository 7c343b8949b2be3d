// C = act(A @ W^T + bias) + residual on the GPU, both operands row-major with K contiguous (the
// Linear layout). Where cuBLAS is loaded (csrc/cuda/blas.h) it computes A @ W^T and one more pass applies
// bias, activation and residual. Otherwise our own kernels: float16/bfloat16 on tensor cores through WMMA
// (16x16x16 fragments, float32 accumulators), 64x64 tiles per block of 4 warps, K in steps of 32 through
// shared memory; float32 a 64x64 SIMT tile, 4x4 outputs per thread; the epilogue runs once per output
// element. These are a portable fallback, no cp.async pipelining, no swizzled layouts, no split-K: on an
// H100 they ran at 38-41 TFLOP/s (float16/bfloat16, 8192x4096->4096) against cuBLAS's ~550.
#include <mma.h>

#include "cuda/blas.h"
#include "cuda/kernels.h"
#include "cuda/runtime.h"
#include "cuda/util.cuh"

namespace cf::cuda {
namespace {

constexpr int kBM = 64, kBN = 64;

template <class T, int kAct>
__device__ __forceinline__ void store_output(const GemmArgs& g, int64_t m, int64_t n, float v) {
  if (g.bias) v += to_float(static_cast<const T*>(g.bias)[n]);
  v = activate<kAct, T>(v);
  if (g.residual) v += to_float(static_cast<const T*>(g.residual)[m * g.ldr + n]);
  static_cast<T*>(g.c)[m * g.ldc + n] = from_float<T>(v);
}

template <int kAct>
__global__ void __launch_bounds__(256) gemm_f32(GemmArgs g) {
  constexpr int BK = 16;
  __shared__ float As[BK][kBM + 4];
  __shared__ float Ws[BK][kBN + 4];
  const float* A = static_cast<const float*>(g.a);
  const float* W = static_cast<const float*>(g.w);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM, n0 = static_cast<int64_t>(blockIdx.y) * kBN;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < g.K; k0 += BK) {
    for (int e = threadIdx.x; e < kBM * BK; e += 256) {
      const int r = e / BK, kk = e % BK;
      const int64_t m = m0 + r, n = n0 + r, k = k0 + kk;
      As[kk][r] = (m < g.M && k < g.K) ? A[m * g.lda + k] : 0.0f;
      Ws[kk][r] = (n < g.N && k < g.K) ? W[n * g.ldw + k] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float a[4], w[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) w[j] = Ws[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], w[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < g.M && n < g.N) store_output<float, kAct>(g, m, n, acc[i][j]);
    }
}

template <class T, int kAct>
__global__ void __launch_bounds__(128) gemm_wmma(GemmArgs g) {
  using namespace nvcuda;
  constexpr int BK = 32, LDS = BK + 8, LDC = kBN + 4;
  __shared__ __align__(32) T As[kBM][LDS];
  __shared__ __align__(32) T Ws[kBN][LDS];
  __shared__ __align__(32) float Cs[kBM][LDC];
  const T* A = static_cast<const T*>(g.a);
  const T* W = static_cast<const T*>(g.w);
  const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM, n0 = static_cast<int64_t>(blockIdx.y) * kBN;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  const T zero = from_float<T>(0.0f);
  for (int64_t k0 = 0; k0 < g.K; k0 += BK) {
    for (int e = threadIdx.x; e < kBM * BK; e += 128) {
      const int r = e / BK, kk = e % BK;
      const int64_t m = m0 + r, n = n0 + r, k = k0 + kk;
      As[r][kk] = (m < g.M && k < g.K) ? A[m * g.lda + k] : zero;
      Ws[r][kk] = (n < g.N && k < g.K) ? W[n * g.ldw + k] : zero;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> af[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bf[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(af[i], &As[wm * 32 + i * 16][kk], LDS);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(bf[j], &Ws[wn * 32 + j * 16][kk], LDS);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], af[i], bf[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&Cs[wm * 32 + i * 16][wn * 32 + j * 16], acc[i][j], LDC, wmma::mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < kBM * kBN; e += 128) {
    const int r = e / kBN, c = e % kBN;
    const int64_t m = m0 + r, n = n0 + c;
    if (m < g.M && n < g.N) store_output<T, kAct>(g, m, n, Cs[r][c]);
  }
}

template <int kAct>
void launch(const GemmArgs& g, dim3 grid) {
  switch (g.dtype) {
    case DType::f32: gemm_f32<kAct><<<grid, 256>>>(g); break;
    case DType::f16: gemm_wmma<__half, kAct><<<grid, 128>>>(g); break;
    case DType::bf16: gemm_wmma<__nv_bfloat16, kAct><<<grid, 128>>>(g); break;
    default: raise<TypeError>("CUDA GEMM takes float32, float16 or bfloat16, got ", dtype_name(g.dtype));
  }
}

// After cuBLAS: c = act(c + bias) + residual, in place, one pass over the output; kVec elements per
// thread (16-byte accesses where every row and the bias are 16-byte aligned, else 1).
template <class T, int kAct, int kVec>
__global__ void epilogue(GemmArgs g, const T* __restrict__ residual, int64_t ldr) {
  const int64_t nv = g.N / kVec, total = g.M * nv;
  const T* bias = static_cast<const T*>(g.bias);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = i / nv, n = (i - m * nv) * kVec;
    T* c = static_cast<T*>(g.c) + m * g.ldc + n;
    float v[kVec], t[kVec];
    if constexpr (kVec == 1) {
      v[0] = to_float(*c);
      if (bias) t[0] = to_float(bias[n]);
    } else {
      Vec16<T>::load(c, v);
      if (bias) Vec16<T>::load(bias + n, t);
    }
#pragma unroll
    for (int e = 0; e < kVec; ++e) v[e] = activate<kAct, T>(bias ? v[e] + t[e] : v[e]);
    if (residual) {
      if constexpr (kVec == 1) t[0] = to_float(residual[m * ldr + n]);
      else Vec16<T>::load(residual + m * ldr + n, t);
#pragma unroll
      for (int e = 0; e < kVec; ++e) v[e] += t[e];
    }
    if constexpr (kVec == 1) *c = from_float<T>(v[0]);
    else Vec16<T>::store(c, v);
  }
}

template <int kAct>
void launch_epilogue(const GemmArgs& g, const void* residual, int64_t ldr) {
  CF_CUDA_FLOAT_TYPES(g.dtype, T, {
    constexpr int kN = Vec16<T>::kN;
    const bool vec = g.N % kN == 0 && g.ldc % kN == 0 && aligned16(g.c) && (!g.bias || aligned16(g.bias)) &&
                     (!residual || (ldr % kN == 0 && aligned16(residual)));
    const T* r = static_cast<const T*>(residual);
    if (vec) epilogue<T, kAct, kN><<<blocks_for(g.M * (g.N / kN), 256, kStreamBlocks), 256>>>(g, r, ldr);
    else epilogue<T, kAct, 1><<<blocks_for(g.M * g.N, 256), 256>>>(g, r, ldr);
  });
}

// The product through cuBLAS, then our epilogue when there is one. False when cuBLAS cannot take it.
bool gemm_blas(const GemmArgs& g) {
  if (g.K == 0 || !blas::available()) return false;
  const size_t esize = dtype_size(g.dtype);
  const char* c0 = static_cast<const char*>(g.c);
  const char* c1 = c0 + ((g.M - 1) * g.ldc + g.N) * esize;
  const char* r0 = static_cast<const char*>(g.residual);
  const int64_t rspan = g.residual ? (g.M - 1) * g.ldr + g.N : 0;
  const char* r1 = r0 + rspan * esize;
  const bool aliased = g.residual && r0 < c1 && c0 < r1;
  if (aliased && r0 == c0 && g.ldr == g.ldc && !g.bias && g.act == Activation::none)
    return blas::gemm(g, /*accumulate=*/true);  // c += A W^T
  Buffer saved(aliased ? static_cast<size_t>(rspan) * esize : 0, g.device);
  const void* residual = g.residual;
  if (aliased) {  // cuBLAS overwrites the residual before the epilogue reads it: keep a copy
    cf::cuda::memcpy(saved.get<void>(), g.residual, static_cast<size_t>(rspan) * esize, Copy::device_to_device,
                     g.device);
    residual = saved.get<void>();
  }
  if (!blas::gemm(g, false)) return false;
  if (g.bias || g.residual || g.act != Activation::none) {
    switch (g.act) {
      case Activation::none: launch_epilogue<0>(g, residual, g.ldr); break;
      case Activation::relu: launch_epilogue<1>(g, residual, g.ldr); break;
      case Activation::gelu: launch_epilogue<2>(g, residual, g.ldr); break;
      case Activation::gelu_tanh: launch_epilogue<3>(g, residual, g.ldr); break;
    }
    check_launch("gemm epilogue");
  }
  return true;
}

}  // namespace

void gemm(const GemmArgs& g) {
  if (g.M == 0 || g.N == 0) return;
  DeviceGuard guard(g.device);
  if (gemm_blas(g)) return;
  CF_CHECK((g.N + kBN - 1) / kBN <= 65535, ValueError, "linear on the GPU: at most ", 65535LL * kBN,
           " output features, got ", g.N);
  const dim3 grid(static_cast<unsigned>((g.M + kBM - 1) / kBM), static_cast<unsigned>((g.N + kBN - 1) / kBN));
  switch (g.act) {
    case Activation::none: launch<0>(g, grid); break;
    case Activation::relu: launch<1>(g, grid); break;
    case Activation::gelu: launch<2>(g, grid); break;
    case Activation::gelu_tanh: launch<3>(g, grid); break;
  }
  check_launch("gemm");
}

}  // namespace cf::cuda
