#include <cuda_runtime.h>

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
