#include <cuda_runtime.h>

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

void* malloc(size_t bytes, int device) {
  DeviceGuard g(device);
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    raise<RuntimeError>("CUDA out of memory: could not allocate ", bytes, " bytes on cuda:", device);
  }
  check(e, "cudaMalloc");
  return p;
}

void free(void* p, int device) noexcept {
  if (!p) return;
  int previous = -1;
  if (cudaGetDevice(&previous) == cudaSuccess && previous != device) cudaSetDevice(device);
  cudaFree(p);  // waits for the kernels that use p
  cudaGetLastError();
  if (previous >= 0 && previous != device) cudaSetDevice(previous);
}

namespace {

struct Block {
  void* p;
  size_t bytes;
  int device;
};

constexpr size_t kKeepBytes = size_t(1) << 30;

// A thread's free scratch blocks; returned to the driver when the thread ends.
struct Pool {
  std::vector<Block> free;
  size_t held = 0;
  ~Pool() {
    for (const Block& b : free) cf::cuda::free(b.p, b.device);
  }
};

thread_local Pool t_pool;

}  // namespace

void* scratch_alloc(size_t& bytes, int device) {
  bytes = (bytes + (size_t(1) << 20) - 1) & ~((size_t(1) << 20) - 1);  // whole MiB: blocks get reused
  Pool& pool = t_pool;
  size_t best = pool.free.size();
  for (size_t i = 0; i < pool.free.size(); ++i) {
    const Block& b = pool.free[i];
    if (b.device == device && b.bytes >= bytes && b.bytes <= 2 * bytes &&
        (best == pool.free.size() || b.bytes < pool.free[best].bytes))
      best = i;
  }
  if (best < pool.free.size()) {
    const Block b = pool.free[best];
    pool.free.erase(pool.free.begin() + static_cast<std::ptrdiff_t>(best));
    pool.held -= b.bytes;
    bytes = b.bytes;
    return b.p;
  }
  return cf::cuda::malloc(bytes, device);
}

void scratch_free(void* p, size_t bytes, int device) noexcept {
  Pool& pool = t_pool;
  try {
    pool.free.push_back({p, bytes, device});
  } catch (...) {
    cf::cuda::free(p, device);
    return;
  }
  pool.held += bytes;
  while (pool.held > kKeepBytes && !pool.free.empty()) {  // oldest first
    const Block b = pool.free.front();
    pool.free.erase(pool.free.begin());
    pool.held -= b.bytes;
    cf::cuda::free(b.p, b.device);
  }
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
