// Helpers shared by the op files: shape printing and the checks every op makes.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include "core/dispatch.h"
#include "core/storage.h"
#include "core/tensor.h"
#include "cuda/kernels.h"
#include "cuda/runtime.h"
#include "ops/ops.h"

namespace cf::ops {

inline std::string shape_str(const Shape& s) {
  return cf::shape_str(s.data(), s.size());
}

inline Shape shape_of(const TensorView& t) { return Shape(t.shape, t.shape + t.ndim); }

// The dtype of a float argument: float32 on the CPU; float32, float16 or bfloat16 on a GPU (one
// dtype for all the float arguments of a call there: expect_same_dtype).
inline void expect_float_dtype(const TensorView& t, const char* name) {
  if (t.device.type == DeviceType::cpu) {
    expect_dtype(t, DType::f32, name);
    return;
  }
  CF_CHECK(t.dtype == DType::f32 || t.dtype == DType::f16 || t.dtype == DType::bf16, TypeError, name,
           " must be float32, float16 or bfloat16, got ", dtype_name(t.dtype));
}

// A float, C-contiguous tensor: what every kernel reads.
inline void expect_float(const TensorView& t, const char* name) {
  expect_float_dtype(t, name);
  expect_contiguous(t, name);
}

// A float tensor whose last axis is contiguous and whose other strides are non-negative: what
// the attention kernels read (a head split out of a packed QKV projection, or a prefix of a
// preallocated KV cache, without a copy).
inline void expect_float_rows(const TensorView& t, const char* name) {
  expect_float_dtype(t, name);
  CF_CHECK(t.ndim == 0 || t.size(-1) <= 1 || t.stride(-1) == 1, ValueError, name,
           " must have a contiguous last axis");
  for (int i = 0; i < t.ndim; ++i) CF_CHECK(t.strides[i] >= 0, ValueError, name, " must not have negative strides");
}

// An argument by name, for the checks over all of a call's arguments (nullptr: an absent optional).
struct Named {
  const char* name;
  const TensorView* view;
};
inline const TensorView* opt(const OptionalView& o) { return o ? &o.view : nullptr; }
// The device every present argument is on; ValueError naming two arguments on different devices
// (a numpy array is in CPU memory, a coreformer.Tensor wherever it was put).
Device common_device(std::initializer_list<Named> args);
// On a GPU the float arguments of one call share a dtype: TypeError naming the first that differs.
void expect_same_dtype(std::initializer_list<Named> args, DType dtype);
inline bool on_gpu(Device d) { return d.type == DeviceType::cuda; }
// The backward ops run on the CPU so far: RuntimeError naming `what` for Tensors on a GPU.
inline void cpu_only(Device d, const char* what) {
  CF_CHECK(!on_gpu(d), RuntimeError, what, " runs on the CPU only in this version (the arguments are on ",
           device_str(d), ")");
}

inline void expect_ndim(const TensorView& t, int ndim, const char* name) {
  CF_CHECK(t.ndim == ndim, ValueError, name, " must have ", ndim, " dimensions, got shape ", t.shape_str());
}

// num_heads heads of E / num_heads features each: at least one head, at most E (one feature each), E
// divisible by it. `what` names E in the message ("embed_dim", "x's last axis").
inline void expect_num_heads(int64_t E, int64_t num_heads, const char* what) {
  CF_CHECK(num_heads >= 1, ValueError, "num_heads must be >= 1, got ", num_heads);
  CF_CHECK(num_heads <= (E > 0 ? E : 1), ValueError, "num_heads (", num_heads, ") must not exceed ", what, " (", E, ")");
  CF_CHECK(E % num_heads == 0, ValueError, what, " (", E, ") must be divisible by num_heads (", num_heads, ")");
}

inline void expect_vector(const OptionalView& t, int64_t n, const char* name, const char* what) {
  if (!t) return;
  expect_float(*t, name);
  CF_CHECK(t->ndim == 1 && t->shape[0] == n, ValueError, name, " must have shape (", n, ",) to match ", what,
           ", got ", t->shape_str());
}

// Scratch the op writes before it reads: new float[n] without the zero-fill a std::vector would do
// (9 MB of memset per multi_head_attention call at B=8, S=128, E=768).
inline std::unique_ptr<float[]> scratch(int64_t n) { return std::unique_ptr<float[]>(new float[static_cast<size_t>(n)]); }

// Points g.w (or g.wp) at rows [row0, row0 + g.N) of a Linear weight. A packed weight is used in
// place when it was packed for the active ISA and row0 starts a panel; otherwise it is unpacked into
// `tmp` (correct, only slower).
void set_gemm_weight(cpu::GemmArgs& g, const WeightRef& w, int64_t row0, std::unique_ptr<float[]>& tmp);

// y (rows, n) = act(x (rows, kdim) @ w[w0 : w0+n, :]^T + b[w0 : w0+n]) + residual (rows, n): one GEMM
// over rows [w0, w0 + n) of a Linear weight (all of it: w0 = 0, n = w.rows()).
void gemm_rows(const float* x, int64_t rows, int64_t kdim, const WeightRef& w, const OptionalView& b, int64_t w0,
               int64_t n, float* y, Activation act = Activation::none, const float* residual = nullptr);

// A PackedWeight on a GPU call: ValueError (it lives in CPU memory).
const TensorView& gpu_weight(const WeightRef& w, const char* name);

// A Linear weight of shape (rows, cols): a 2-D float array or a PackedWeight; ValueError naming it.
void expect_matrix(const WeightRef& w, int64_t rows, int64_t cols, const char* name);
// A layer's KV cache for B batches of H heads of Dh: k_cache and v_cache (B, H, capacity, Dh) alike,
// with room for `extra` positions after its length. Returns the capacity.
int64_t check_kv_cache(const KVCacheRef& cache, int64_t B, int64_t H, int64_t Dh, int64_t extra, const char* k_name,
                       const char* v_name, const char* length_name);

// A contiguous array seen as (d0, d1, d2, d3) with the same element order.
inline TensorView as_4d(const TensorView& t, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
  return TensorView(t.data, t.dtype, {d0, d1, d2, d3}, t.device);
}

// torch.nn.MultiheadAttention's masks for B batches of num_heads heads, Sq queries, Sk keys:
// attn_mask (Sq, Sk) or (B*num_heads, Sq, Sk), bool True = may NOT attend or float added;
// key_padding_mask (B, Sk), bool True = padding or float added. check_mha_masks raises on a
// shape or dtype that does not fit; set_mha_masks puts them on the attention's arguments.
void check_mha_masks(const OptionalView& attn_mask, const OptionalView& key_padding_mask, int64_t B,
                     int64_t num_heads, int64_t Sq, int64_t Sk, const char* mask_name = "attn_mask",
                     const char* padding_name = "key_padding_mask");
void set_mha_masks(cuda::AttentionArgs& a, const OptionalView& attn_mask, const OptionalView& key_padding_mask);

// Strides that broadcast a mask of up to 4 dimensions to (B, H, Sq, Sk), right-aligned as numpy does.
cpu::MaskArgs broadcast_mask(const TensorView& mask, int64_t B, int64_t H, int64_t Sq, int64_t Sk, const char* name,
                             bool true_means_masked);

}  // namespace cf::ops
