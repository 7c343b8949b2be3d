#include "ops/backend.h"

#include <cstring>

#include "core/thread_cache.h"

namespace cf::ops {
namespace {
thread_local ThreadCache t_workspace;  // the CPU ops' scratch, per calling thread

// The GPU's gemm_rows: every pointer in device memory of w's dtype; w a Tensor.
void gpu_gemm_rows(const void* x, int64_t rows, int64_t kdim, const TensorView& w, const OptionalView& b, int64_t w0,
                   int64_t n, void* y, Activation act, const void* residual) {
  const size_t es = dtype_size(w.dtype);
  cuda::GemmArgs g;
  g.M = rows; g.N = n; g.K = kdim;
  g.a = x; g.lda = kdim;
  g.w = static_cast<const char*>(w.data) + static_cast<size_t>(w0 * kdim) * es; g.ldw = kdim;
  g.c = y; g.ldc = n;
  g.bias = b ? static_cast<const char*>(b->data) + static_cast<size_t>(w0) * es : nullptr;
  g.residual = residual; g.ldr = n;
  g.act = act;
  g.dtype = w.dtype;
  g.device = w.device.index;
  cuda::gemm(g);
}

}  // namespace

Backend::Backend(Device device, DType dtype)
    : device_(device), dtype_(dtype), itemsize_(dtype_size(dtype)) {}

Backend::~Backend() {
  if (cpu_scratch_) t_workspace.release();
}

void* Backend::scratch(int64_t elements) {
  if (gpu()) {
    gpu_scratch_ = std::make_unique<cuda::Buffer>(itemsize_ * static_cast<size_t>(elements), device_.index);
    return gpu_scratch_->get<void>();
  }
  CF_CHECK(!cpu_scratch_, ValueError, "Backend: one scratch per op call");
  cpu_scratch_ = true;
  return t_workspace.get(static_cast<size_t>(elements));
}

void Backend::gemm(const void* x, int64_t rows, int64_t kdim, const WeightRef& w, const OptionalView& b,
                        int64_t w0, int64_t n, void* y, Activation act, const void* residual) const {
  if (gpu()) {
    gpu_gemm_rows(x, rows, kdim, gpu_weight(w, "weight"), b, w0, n, y, act, residual);
    return;
  }
  gemm_rows(static_cast<const float*>(x), rows, kdim, w, b, w0, n, static_cast<float*>(y), act,
            static_cast<const float*>(residual));
}

void Backend::norm(const void* x, int64_t rows, int64_t n, const OptionalView& weight, const OptionalView& bias,
                        float eps, void* y, const void* residual, void* sum_out) const {
  if (gpu()) {
    cuda::LayerNormArgs a;
    a.rows = rows; a.n = n;
    a.x = x; a.residual = residual; a.sum_out = sum_out;
    a.weight = weight ? weight->data : nullptr;
    a.bias = bias ? bias->data : nullptr;
    a.y = y;
    a.eps = eps;
    a.dtype = dtype_;
    a.device = device_.index;
    cuda::layer_norm(a);
    return;
  }
  cpu::LayerNormArgs a;
  a.rows = rows; a.n = n;
  a.x = static_cast<const float*>(x);
  a.residual = static_cast<const float*>(residual);
  a.sum_out = static_cast<float*>(sum_out);
  a.weight = weight ? weight->ptr<float>() : nullptr;
  a.bias = bias ? bias->ptr<float>() : nullptr;
  a.y = static_cast<float*>(y);
  a.eps = eps;
  kernels().layer_norm(a);
}

void Backend::attention(AttentionPlan a, float* lse, const cpu::AttentionDropout& dropout) const {
  if (gpu()) {
    a.dtype = dtype_;
    a.device = device_.index;
    cuda::attention(a);
    return;
  }
  cpu::AttentionArgs c;
  c.B = a.B; c.H = a.H; c.Sq = a.Sq; c.Sk = a.Sk; c.D = a.D; c.Dv = a.Dv;
  c.q = static_cast<const float*>(a.q); c.q_sb = a.q_sb; c.q_sh = a.q_sh; c.q_ss = a.q_ss;
  c.k = static_cast<const float*>(a.k); c.k_sb = a.k_sb; c.k_sh = a.k_sh; c.k_ss = a.k_ss;
  c.v = static_cast<const float*>(a.v); c.v_sb = a.v_sb; c.v_sh = a.v_sh; c.v_ss = a.v_ss;
  c.out = static_cast<float*>(a.out); c.o_sb = a.o_sb; c.o_sh = a.o_sh; c.o_ss = a.o_ss;
  c.mask = a.mask; c.mask2 = a.mask2;
  c.causal = a.causal;
  c.scale = a.scale;
  c.lse = lse;
  c.dropout = dropout;
  kernels().attention(c);
}

void Backend::kv_append(const void* k, const void* v, int64_t ld, const KVCacheRef& cache, int64_t B, int64_t S,
                             int64_t H, int64_t Dh, int64_t past) const {
  const int64_t cap = cache.k.shape[2];
  if (gpu()) {
    cuda::kv_append(k, v, ld, cache.k.data, cache.v.data, B, S, H, Dh, cap, past, dtype_, device_.index);
    return;
  }
  float* const kc = cache.k.ptr<float>();
  float* const vc = cache.v.ptr<float>();
  const float* const ks = static_cast<const float*>(k);
  const float* const vs = static_cast<const float*>(v);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t s = 0; s < S; ++s) {
        const int64_t src = (b * S + s) * ld + h * Dh, dst = ((b * H + h) * cap + past + s) * Dh;
        std::memcpy(kc + dst, ks + src, sizeof(float) * Dh);
        std::memcpy(vc + dst, vs + src, sizeof(float) * Dh);
      }
}

}  // namespace cf::ops
