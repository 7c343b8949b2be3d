// The CUDA backend's functions in a build without it (COREFORMER_CUDA=OFF, or AUTO without nvcc):
// no device is ever found, and anything that would touch one says how to get a CUDA build.
#include "core/error.h"
#include "cuda/blas.h"
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace cf::cuda {
namespace {
[[noreturn]] void unavailable() {
  raise<RuntimeError>("coreformer was built without CUDA (coreformer.info()['cuda_built'] is False); reinstall "
                      "from source with a CUDA toolkit: pip install . -C cmake.define.COREFORMER_CUDA=ON");
}
}  // namespace

bool built() { return false; }
int device_count() { return 0; }
void require_device(int) { unavailable(); }
void* malloc(size_t, int) { unavailable(); }
void free(void*, int) noexcept {}
size_t empty_cache(int) { return 0; }
void memcpy(void*, const void*, size_t, Copy, int) { unavailable(); }
void synchronize(int) {}
DeviceGuard::DeviceGuard(int device) : device_(device) {}
DeviceGuard::~DeviceGuard() = default;

void gemm(const GemmArgs&) { unavailable(); }
void attention(const AttentionArgs&) { unavailable(); }
void activation(const void*, void*, int64_t, Activation, DType, int) { unavailable(); }
void softmax(const void*, void*, int64_t, int64_t, int64_t, DType, int) { unavailable(); }
void layer_norm(const LayerNormArgs&) { unavailable(); }
void embedding(const void*, bool, int64_t, const void*, int64_t, int64_t, void*, DType, int) { unavailable(); }
void additive_attention(const AdditiveArgs&) { unavailable(); }
void copy(const TensorView&, const TensorView&) { unavailable(); }
void argmax(const void*, int64_t, int64_t, int64_t*, DType, int) { unavailable(); }
void kv_append(const void*, const void*, int64_t, void*, void*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
               DType, int) {
  unavailable();
}

namespace blas {
void set_search_dirs(std::vector<std::string>) {}
bool available() { return false; }
bool set_enabled(bool) { return false; }
std::string describe() { return "coreformer was built without CUDA"; }
bool gemm(const GemmArgs&, bool) { return false; }
}  // namespace blas

}  // namespace cf::cuda
