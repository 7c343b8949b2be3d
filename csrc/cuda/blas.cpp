// cuBLAS through dlopen (see blas.h). Only the handful of entry points and enum values used here are
// declared; their values are cuBLAS's ABI (cublas_api.h, library_types.h), stable across releases.
#include "cuda/blas.h"

#include <dlfcn.h>

#include <climits>
#include <cstdlib>
#include <mutex>
#include <utility>

#include <cuda_runtime_api.h>

#include "core/error.h"

namespace cf::cuda::blas {
namespace {

using Handle = void*;
using CreateFn = int (*)(Handle*);
using GetVersionFn = int (*)(Handle, int*);
using GemmExFn = int (*)(Handle, int transa, int transb, int m, int n, int k, const void* alpha, const void* A,
                         int Atype, int lda, const void* B, int Btype, int ldb, const void* beta, void* C, int Ctype,
                         int ldc, int compute, int algo);
constexpr int kOpN = 0, kOpT = 1;                     // cublasOperation_t
constexpr int kR32F = 0, kR16F = 2, kR16BF = 14;      // cudaDataType_t
constexpr int kCompute32F = 68;                       // CUBLAS_COMPUTE_32F: float32 accumulation, no TF32
constexpr int kGemmDefault = -1;                      // CUBLAS_GEMM_DEFAULT

struct Library {
  std::mutex mu;
  bool tried = false;
  bool enabled = true;
  void* so = nullptr;
  std::string name, why = "not loaded yet";
  std::vector<std::string> dirs;
  CreateFn create = nullptr;
  GetVersionFn get_version = nullptr;
  GemmExFn gemm_ex = nullptr;
  std::vector<std::pair<int, Handle>> idle;  // handles not in use, by device (one thread uses one at a time)
  int version = 0;
};

Library& lib() {
  static Library* l = new Library;  // never destroyed: handles may outlive static destruction order
  return *l;
}

void* open(const std::string& path, int flags) { return dlopen(path.c_str(), flags); }

// Caller holds l.mu.
void load(Library& l) {
  if (l.tried) return;
  l.tried = true;
  const char* env = std::getenv("COREFORMER_CUBLAS");
  if (env && std::string(env) == "0") {
    l.enabled = false;
    l.why = "disabled by COREFORMER_CUBLAS=0";
  }
  const std::string major = std::to_string(CUDART_VERSION / 1000);
  const std::string so = "libcublas.so." + major, lt = "libcublasLt.so." + major;
  std::vector<std::string> tries = {so};
  for (const std::string& d : l.dirs) tries.push_back(d + "/" + so);
  tries.push_back("/usr/local/cuda/lib64/" + so);
  for (const std::string& path : tries) {
    if (path != so) {  // a full path: its cublasLt beside it first, for libraries without an RPATH
      const std::string dir = path.substr(0, path.rfind('/'));
      open(dir + "/" + lt, RTLD_NOW | RTLD_GLOBAL);
    }
    if ((l.so = open(path, RTLD_NOW | RTLD_LOCAL))) {
      l.name = path;
      break;
    }
  }
  if (!l.so) {
    l.why = so + " not found (looked in the loader's path, NVIDIA's PyPI package and /usr/local/cuda/lib64)";
    return;
  }
  l.create = reinterpret_cast<CreateFn>(dlsym(l.so, "cublasCreate_v2"));
  l.get_version = reinterpret_cast<GetVersionFn>(dlsym(l.so, "cublasGetVersion_v2"));
  l.gemm_ex = reinterpret_cast<GemmExFn>(dlsym(l.so, "cublasGemmEx"));
  if (!l.create || !l.gemm_ex) {
    l.why = l.name + " lacks cublasCreate_v2 or cublasGemmEx";
    l.so = nullptr;
    return;
  }
  if (l.enabled) l.why.clear();
}

Handle take(Library& l, int device) {
  {
    std::lock_guard<std::mutex> g(l.mu);
    for (size_t i = 0; i < l.idle.size(); ++i)
      if (l.idle[i].first == device) {
        Handle h = l.idle[i].second;
        l.idle.erase(l.idle.begin() + static_cast<std::ptrdiff_t>(i));
        return h;
      }
  }
  Handle h = nullptr;  // on the caller's current device (the GEMM's DeviceGuard)
  const int st = l.create(&h);
  CF_CHECK(st == 0 && h, RuntimeError, "cublasCreate failed with status ", st, " on cuda:", device);
  if (l.get_version && !l.version) l.get_version(h, &l.version);
  return h;
}

void give_back(Library& l, int device, Handle h) {
  std::lock_guard<std::mutex> g(l.mu);
  l.idle.emplace_back(device, h);
}

}  // namespace

void set_search_dirs(std::vector<std::string> dirs) {
  Library& l = lib();
  std::lock_guard<std::mutex> g(l.mu);
  l.dirs = std::move(dirs);
}

bool available() {
  Library& l = lib();
  std::lock_guard<std::mutex> g(l.mu);
  load(l);
  return l.so && l.enabled;
}

bool set_enabled(bool on) {
  Library& l = lib();
  std::lock_guard<std::mutex> g(l.mu);
  load(l);
  const bool was = l.enabled;
  l.enabled = on;
  return was;
}

std::string describe() {
  Library& l = lib();
  std::lock_guard<std::mutex> g(l.mu);
  load(l);
  if (!l.so) return l.why;
  std::string s = l.name + (l.version ? " (version " + std::to_string(l.version) + ")" : "");
  return l.enabled ? s : s + ", disabled";
}

bool gemm(const GemmArgs& g, bool accumulate) {
  if (!available()) return false;
  const int64_t most = INT_MAX;
  if (g.M > most || g.N > most || g.K > most || g.lda > most || g.ldw > most || g.ldc > most) return false;
  const int type = g.dtype == DType::f32 ? kR32F : g.dtype == DType::f16 ? kR16F : kR16BF;
  Library& l = lib();
  // cuBLAS calls the driver in the calling thread's current context. A thread whose CUDA work so far
  // came from the caches (a Tensor from the allocator, a pooled handle) may have none bound yet: that
  // failed on the H100 with CUBLAS_STATUS_INTERNAL_ERROR from 8 new threads. cudaSetDevice binds the
  // device's primary context to this thread (a no-op when it is already current).
  CF_CHECK(cudaSetDevice(g.device) == cudaSuccess, RuntimeError, "cudaSetDevice(", g.device, ") failed before cuBLAS");
  Handle h = take(l, g.device);
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  // Row-major C (M,N) = A (M,K) W (N,K)^T is column-major C^T (N,M) = W^T A^T: cuBLAS's A is W (K x N
  // column-major, transposed), its B is A (K x M column-major).
  const int st = l.gemm_ex(h, kOpT, kOpN, static_cast<int>(g.N), static_cast<int>(g.M), static_cast<int>(g.K), &alpha,
                           g.w, type, static_cast<int>(g.ldw), g.a, type, static_cast<int>(g.lda), &beta, g.c, type,
                           static_cast<int>(g.ldc), kCompute32F, kGemmDefault);
  give_back(l, g.device, h);
  CF_CHECK(st == 0, RuntimeError, "cublasGemmEx failed with status ", st, " (M=", g.M, ", N=", g.N, ", K=", g.K, ")");
  return true;
}

}  // namespace cf::cuda::blas
