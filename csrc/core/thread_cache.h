// ThreadCache, used by the kernels (cpu/) and by the ops that compose them (ops/encoder_layer.cpp).
#pragma once
#include <cstddef>
#include <cstdlib>
#include <new>

namespace cf {

// Scratch kept per calling thread between calls, for the large per-call buffers (packed W in GEMM,
// packed K/V in attention, an encoder layer's activations): a fresh multi-MB buffer every call costs its page faults each time
// (~7% of a 1024x768x3072 GEMM). Each user has its own instance; release() frees a buffer above
// kKeepFloats (64 MiB), so a one-off huge call does not pin its memory.
class ThreadCache {
 public:
  static constexpr std::size_t kKeepFloats = std::size_t(16) << 20;
  ~ThreadCache() { std::free(p_); }
  float* get(std::size_t floats) {
    if (floats > n_) {
      std::free(p_);
      n_ = 0;
      p_ = static_cast<float*>(std::aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64));
      if (!p_) throw std::bad_alloc();
      n_ = floats;
    }
    return p_;
  }
  void release() {
    if (n_ > kKeepFloats) { std::free(p_); p_ = nullptr; n_ = 0; }
  }

 private:
  float* p_ = nullptr;
  std::size_t n_ = 0;
};

}  // namespace cf
