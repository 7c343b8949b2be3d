// The CUDA kernels as csrc/ops/ calls them: plain structs of device pointers, sizes and strides (in
// elements), already checked there. Float tensors are float32, float16 or bfloat16 (`dtype`, the
// same for every float argument of a call); arithmetic is float32 (accumulation included). Masks
// are bool or float32 as on the CPU. Built only with the CUDA backend (csrc/cuda/stub.cpp otherwise).
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "cpu/kernels.h"

namespace cf::cuda {

using cpu::Activation;
using cpu::MaskArgs;

// C (M,N) = act(A (M,K) @ W (N,K)^T + bias (N)) + residual (M,N); tensor cores for 16-bit types.
struct GemmArgs {
  int64_t M = 0, N = 0, K = 0;
  const void* a = nullptr; int64_t lda = 0;
  const void* w = nullptr; int64_t ldw = 0;
  void* c = nullptr; int64_t ldc = 0;
  const void* bias = nullptr;
  const void* residual = nullptr; int64_t ldr = 0;
  Activation act = Activation::none;
  DType dtype = DType::f32;
  int device = 0;
};
void gemm(const GemmArgs& g);

// out (B,H,Sq,Dv) = softmax(scale * q k^T + masks) v; strides for b, h, s; last axes contiguous.
// The CPU's semantics: bottom-right causal, a row with no key left gives zeros. D, Dv <= 256.
struct AttentionArgs {
  int64_t B = 0, H = 0, Sq = 0, Sk = 0, D = 0, Dv = 0;
  const void* q = nullptr; int64_t q_sb = 0, q_sh = 0, q_ss = 0;
  const void* k = nullptr; int64_t k_sb = 0, k_sh = 0, k_ss = 0;
  const void* v = nullptr; int64_t v_sb = 0, v_sh = 0, v_ss = 0;
  void* out = nullptr; int64_t o_sb = 0, o_sh = 0, o_ss = 0;
  MaskArgs mask, mask2;
  bool causal = false;
  float scale = 1.0f;
  DType dtype = DType::f32;
  int device = 0;
};
constexpr int64_t kMaxHeadDim = 256;
void attention(const AttentionArgs& a);

void activation(const void* x, void* y, int64_t n, Activation act, DType dtype, int device);
// Softmax over the middle axis of a contiguous (outer, n, inner) array; an all -inf slice gives 0.
void softmax(const void* x, void* y, int64_t outer, int64_t n, int64_t inner, DType dtype, int device);

struct LayerNormArgs {
  int64_t rows = 0, n = 0;
  const void* x = nullptr;
  const void* residual = nullptr;  // optional: normalise x + residual
  const void* weight = nullptr;    // optional
  const void* bias = nullptr;      // optional
  void* y = nullptr;
  void* sum_out = nullptr;         // optional: x + residual
  float eps = 1e-5f;
  DType dtype = DType::f32;
  int device = 0;
};
void layer_norm(const LayerNormArgs& a);

// out (n, D) = table[ids]; ids int32 or int64 in device memory. Raises IndexError naming the first
// id outside [0, V) before anything is written.
void embedding(const void* ids, bool ids64, int64_t n, const void* table, int64_t V, int64_t D, void* out,
               DType dtype, int device);

// Additive attention after the projections qp (B,Sq,A), kp (B,Sk,A) (dtype), v_vec (A,),
// values (B,Sk,Dv); mask uint8 True = attend with strides (key axis 1); weights optional.
struct AdditiveArgs {
  int64_t B = 0, Sq = 0, Sk = 0, A = 0, Dv = 0;
  const void* qp = nullptr;
  const void* kp = nullptr;
  const void* v_vec = nullptr;
  const void* values = nullptr;
  const uint8_t* mask = nullptr;
  int64_t m_sb = 0, m_sq = 0;
  void* out = nullptr;
  void* weights = nullptr;
  DType dtype = DType::f32;
  int device = 0;
};
void additive_attention(const AdditiveArgs& a);

// A layer's new keys and values into its cache: rows b*S + s of k and v (ld elements apart; head h
// at columns [h*Dh, (h+1)*Dh)) to k_cache/v_cache (B, H, capacity, Dh) at positions [past, past + S).
void kv_append(const void* k, const void* v, int64_t ld, void* k_cache, void* v_cache, int64_t B, int64_t S,
               int64_t H, int64_t Dh, int64_t capacity, int64_t past, DType dtype, int device);

// out[r] (int64) = the index of the largest of x[r, 0:n] (first on ties, NaN largest).
void argmax(const void* x, int64_t rows, int64_t n, int64_t* out, DType dtype, int device);

// dst (C-contiguous) = src (any non-negative strides), both on the device; float dtypes convert
// among themselves, other dtypes copy as they are (same dtype).
void copy(const TensorView& src, const TensorView& dst);

}  // namespace cf::cuda
