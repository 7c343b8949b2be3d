// The primitives the ops are made of -- GEMM against a Linear weight, layer norm (+ residual, + sum),
// attention, appending to a KV cache, scratch -- on the op's device and in its dtype, so that each op
// and each whole layer (encoder_layer.cpp, decoder_layer.cpp) is written once for the CPU and the GPU.
// Pointers are untyped: float32 on the CPU; float32, float16 or bfloat16 on a GPU.
#pragma once
#include <cstdint>
#include <memory>

#include "ops/common.h"

namespace cf::ops {

// Attention as an op plans it (untyped pointers, strides in elements); device and dtype are the
// backend's.
using AttentionPlan = cuda::AttentionArgs;

class Backend {
 public:
  Backend(Device device, DType dtype);
  ~Backend();
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  bool gpu() const { return device_.type == DeviceType::cuda; }
  // p advanced by n elements of the layer's dtype
  void* at(const void* p, int64_t n) const {
    return static_cast<char*>(const_cast<void*>(p)) + n * static_cast<int64_t>(itemsize_);
  }
  // Scratch for `elements` activations (one per op call), valid until the backend is destroyed: on the
  // CPU the calling thread's cache (kept from call to call: no page faults layer after layer), on a GPU
  // a buffer from the calling thread's pool.
  void* scratch(int64_t elements);

  // y (rows, n) = act(x (rows, kdim) @ w[w0 : w0+n]^T + b[w0 : w0+n]) + residual (rows, n)
  void gemm(const void* x, int64_t rows, int64_t kdim, const WeightRef& w, const OptionalView& b, int64_t w0,
            int64_t n, void* y, Activation act = Activation::none, const void* residual = nullptr) const;
  // y = LN(x + residual) over rows of n; sum_out = x + residual
  void norm(const void* x, int64_t rows, int64_t n, const OptionalView& weight, const OptionalView& bias, float eps,
            void* y, const void* residual = nullptr, void* sum_out = nullptr) const;
  // lse: optional (B,H,Sq) contiguous log-sum-exp output, CPU only (the caller checks)
  void attention(AttentionPlan a, float* lse = nullptr, const cpu::AttentionDropout& dropout = {}) const;
  // Keys and values of B*S rows (head h at columns [h*Dh, (h+1)*Dh) of each row, rows ld apart) into a
  // cache (B, H, capacity, Dh) at positions [past, past + S).
  void kv_append(const void* k, const void* v, int64_t ld, const KVCacheRef& cache, int64_t B, int64_t S,
                 int64_t H, int64_t Dh, int64_t past) const;

 private:
  Device device_;
  DType dtype_;
  size_t itemsize_;
  std::unique_ptr<cuda::Buffer> gpu_scratch_;
  bool cpu_scratch_ = false;
};

}  // namespace cf::ops
