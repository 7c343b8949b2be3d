// Scratch memory for kernels: 64-byte aligned, owned, allocated before any parallel region
// (so an allocation failure throws std::bad_alloc to the caller, never inside OpenMP).
#pragma once
#include <cstddef>
#include <cstdlib>
#include <new>

#include "core/thread_cache.h"

namespace cf::cpu::CF_ISA_NS {

class Buffer {
 public:
  explicit Buffer(std::size_t floats) {
    std::size_t bytes = ((floats * sizeof(float)) + 63) / 64 * 64;
    if (bytes == 0) bytes = 64;
    p_ = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!p_) throw std::bad_alloc();
  }
  ~Buffer() { std::free(p_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  float* get() const { return p_; }

 private:
  float* p_;
};

using ::cf::ThreadCache;  // core/thread_cache.h: scratch kept per calling thread between calls

}  // namespace cf::cpu::CF_ISA_NS
