// The CUDA runtime as the rest of the core sees it: devices, memory and copies. Every function
// raises cf::RuntimeError with CUDA's own message on failure (no device, out of memory, a kernel
// fault) and never leaves a sticky error behind. Built only with the CUDA backend; in a build
// without it, csrc/cuda/stub.cpp defines the same functions to report that (device_count() = 0).
//
// Streams: every kernel and copy runs on the legacy default stream of the tensor's device, so
// calls are ordered with each other and with cudaMemcpy; a copy back to the host waits for them.
#pragma once
#include <cstddef>
#include <cstdint>

namespace cf::cuda {

bool built();                                  // the CUDA backend was compiled in
int device_count();                            // 0 without a driver or GPU (never raises)
void require_device(int index);                // RuntimeError when cuda:index cannot be used
// Device memory through a caching allocator (runtime.cu): free keeps a block for the next malloc of its
// size class on that device; kernels and copies all run in order on the legacy default stream, so a
// reused block is never still in use. RuntimeError when out of memory even after emptying the cache.
void* malloc(size_t bytes, int device);
void free(void* p, int device) noexcept;
size_t empty_cache(int device);                // hands the cached blocks back (device < 0: all); bytes freed
enum class Copy { host_to_device, device_to_host, device_to_device };
void memcpy(void* dst, const void* src, size_t bytes, Copy kind, int device);
void synchronize(int device);                  // waits for the device's default stream

// Sets the current device for its lifetime (the caller's device comes back after).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
  int device_ = 0;
};

// Scratch for one op call: a block from the caching allocator above, back to it at scope end (a later
// call reuses it without cudaMalloc or cudaFree; the stream order keeps reuse safe).
class Buffer {
 public:
  Buffer(size_t bytes, int device) : device_(device) { p_ = bytes ? cf::cuda::malloc(bytes, device) : nullptr; }
  ~Buffer() { cf::cuda::free(p_, device_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  template <class T> T* get() const { return static_cast<T*>(p_); }

 private:
  void* p_ = nullptr;
  int device_;
};

}  // namespace cf::cuda
