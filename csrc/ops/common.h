// Helpers shared by the op files: shape printing and the checks every op makes.
#pragma once
#include <cstddef>
#include <memory>
#include <sstream>
#include <string>

#include "core/dispatch.h"
#include "core/tensor.h"
#include "ops/ops.h"

namespace cf::ops {

inline std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << s[i] << (i + 1 < s.size() || s.size() == 1 ? ", " : "");
  std::string r = os.str();
  if (s.size() == 1) r.pop_back();
  return r + ")";
}

inline Shape shape_of(const TensorView& t) { return Shape(t.shape, t.shape + t.ndim); }

// A float32, C-contiguous array in CPU memory: what every CPU kernel reads.
inline void expect_f32(const TensorView& t, const char* name) {
  expect_cpu(t, name);
  expect_dtype(t, DType::f32, name);
  expect_contiguous(t, name);
}

// A float32 CPU array whose last axis is contiguous and whose other strides are non-negative: what
// the attention kernel reads (a head split out of a packed QKV projection, or a prefix of a
// preallocated KV cache, without a copy).
inline void expect_f32_rows(const TensorView& t, const char* name) {
  expect_cpu(t, name);
  expect_dtype(t, DType::f32, name);
  CF_CHECK(t.ndim == 0 || t.size(-1) <= 1 || t.stride(-1) == 1, ValueError, name,
           " must have a contiguous last axis");
  for (int i = 0; i < t.ndim; ++i) CF_CHECK(t.strides[i] >= 0, ValueError, name, " must not have negative strides");
}

inline void expect_ndim(const TensorView& t, int ndim, const char* name) {
  CF_CHECK(t.ndim == ndim, ValueError, name, " must have ", ndim, " dimensions, got shape ", t.shape_str());
}

inline void expect_vector(const OptionalView& t, int64_t n, const char* name, const char* what) {
  if (!t) return;
  expect_f32(*t, name);
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

// Strides that broadcast a mask of up to 4 dimensions to (B, H, Sq, Sk), right-aligned as numpy does.
cpu::MaskArgs broadcast_mask(const TensorView& mask, int64_t B, int64_t H, int64_t Sq, int64_t Sk, const char* name,
                             bool true_means_masked);

}  // namespace cf::ops
