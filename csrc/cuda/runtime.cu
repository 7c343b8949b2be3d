#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/error.h"
#include "cuda/runtime.h"
#include "cuda/util.cuh"

namespace cf::cuda {

void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  cudaGetLastError();  // clear a sticky error so later calls start clean
  raise<RuntimeError>("CUDA error in ", what, ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
}

bool built() { return true; }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

void require_device(int index) {
  const int n = device_count();
  CF_CHECK(n > 0, RuntimeError,
           "no CUDA device is available (coreformer.info()['cuda_devices'] is 0): no GPU, or no driver that can run it");
  CF_CHECK(index >= 0 && index < n, RuntimeError, "CUDA device cuda:", index, " does not exist (", n,
           n == 1 ? " device" : " devices", ": cuda:0 to cuda:", n - 1, ")");
}

DeviceGuard::DeviceGuard(int device) : device_(device) {
  check(cudaGetDevice(&previous_), "cudaGetDevice");
  if (previous_ != device_) check(cudaSetDevice(device_), "cudaSetDevice");
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0 && previous_ != device_) cudaSetDevice(previous_);
}

namespace {

void* raw_malloc(size_t bytes, int device, cudaError_t& e) {
  DeviceGuard g(device);
  void* p = nullptr;
  e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return p;
}

void raw_free(void* p, int device) noexcept {
  int previous = -1;
  if (cudaGetDevice(&previous) == cudaSuccess && previous != device) cudaSetDevice(device);
  cudaFree(p);  // waits for the whole device
  cudaGetLastError();
  if (previous >= 0 && previous != device) cudaSetDevice(previous);
}

// A caching allocator, as PyTorch's: a freed block keeps its device memory for the next request of its
// size class instead of going back through cudaFree, which waits for the whole device (and cudaMalloc
// costs tens of microseconds), so an op that returns a new Tensor costs what its kernel costs. Reuse
// is safe because all of coreformer's kernels and copies run in order on the device's legacy default
// stream. On an out-of-memory error the cache is emptied and the allocation tried again;
// coreformer.empty_cache() hands the cached memory back.
struct Cache {
  std::mutex mu;
  std::map<std::pair<int, size_t>, std::vector<void*>> idle;  // (device, size class) -> blocks
  std::unordered_map<void*, size_t> live;                      // block -> its size class
};

Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: Tensors may be freed during interpreter shutdown
  return *c;
}

size_t size_class(size_t bytes) {
  constexpr size_t kSmall = size_t(1) << 20, kQuantum = 512, kLarge = size_t(2) << 20;
  if (bytes <= kSmall) return (bytes + kQuantum - 1) / kQuantum * kQuantum;
  return (bytes + kLarge - 1) / kLarge * kLarge;
}

}  // namespace

size_t empty_cache(int device) {
  Cache& c = cache();
  std::vector<std::pair<void*, int>> blocks;
  size_t freed = 0;
  {
    std::lock_guard<std::mutex> g(c.mu);
    for (auto it = c.idle.begin(); it != c.idle.end();) {
      if (device >= 0 && it->first.first != device) {
        ++it;
        continue;
      }
      for (void* p : it->second) blocks.emplace_back(p, it->first.first), freed += it->first.second;
      it = c.idle.erase(it);
    }
  }
  for (const auto& b : blocks) raw_free(b.first, b.second);  // outside the lock: cudaFree waits for the device
  return freed;
}

void* malloc(size_t bytes, int device) {
  const size_t size = size_class(bytes ? bytes : 1);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> g(c.mu);
    auto it = c.idle.find({device, size});
    if (it != c.idle.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      c.live.emplace(p, size);
      return p;
    }
  }
  cudaError_t e = cudaSuccess;
  void* p = raw_malloc(size, device, e);
  if (!p && e == cudaErrorMemoryAllocation && empty_cache(device) > 0) p = raw_malloc(size, device, e);
  if (!p) {
    if (e == cudaErrorMemoryAllocation)
      raise<RuntimeError>("CUDA out of memory: could not allocate ", bytes, " bytes on cuda:", device);
    check(e, "cudaMalloc");
  }
  std::lock_guard<std::mutex> g(c.mu);
  c.live.emplace(p, size);
  return p;
}

void free(void* p, int device) noexcept {
  if (!p) return;
  Cache& c = cache();
  try {
    std::lock_guard<std::mutex> g(c.mu);
    auto it = c.live.find(p);
    if (it != c.live.end()) {
      c.idle[{device, it->second}].push_back(p);
      c.live.erase(it);
      return;
    }
  } catch (...) {  // no memory for the bookkeeping: give the block back to the driver instead
  }
  raw_free(p, device);
}

void memcpy(void* dst, const void* src, size_t bytes, Copy kind, int device) {
  if (bytes == 0) return;
  DeviceGuard g(device);
  const cudaMemcpyKind k = kind == Copy::host_to_device   ? cudaMemcpyHostToDevice
                           : kind == Copy::device_to_host ? cudaMemcpyDeviceToHost
                                                          : cudaMemcpyDeviceToDevice;
  check(cudaMemcpy(dst, src, bytes, k), "cudaMemcpy");
}

void synchronize(int device) {
  DeviceGuard g(device);
  check(cudaStreamSynchronize(0), "cudaStreamSynchronize");
}

}  // namespace cf::cuda
