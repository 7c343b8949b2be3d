// Packing Linear weights once, into the panel layout the GEMM reads (cpu::GemmArgs::wp):
// panel p holds columns [p*nr, p*nr + nr) of W^T over all of K, dst[p*K*nr + k*nr + j] = W[p*nr + j, k],
// zero past the last row of W. One-off work (model load), so plain loops, threaded over panels.
#include <cstdlib>
#include <cstring>
#include <new>

#include "ops/common.h"

namespace cf::ops {
namespace {

// float32 -> bfloat16, round to nearest even; NaN stays NaN (quiet).
inline uint16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float from_bf16(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

template <typename T>
inline T convert(float x) {
  if constexpr (sizeof(T) == 2) return to_bf16(x);
  else return x;
}

template <typename T>
void pack(const float* src, int64_t s_row, int64_t s_col, int64_t rows, int64_t cols, int nr, T* dst) {
  // W[n, k] = src[n*s_row + k*s_col]
  const int64_t np = (rows + nr - 1) / nr;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < np; ++p) {
    T* d = dst + p * cols * nr;
    for (int j = 0; j < nr; ++j) {
      const int64_t n = p * nr + j;
      if (n < rows) {
        const float* s = src + n * s_row;
        for (int64_t k = 0; k < cols; ++k) d[k * nr + j] = convert<T>(s[k * s_col]);
      } else {
        for (int64_t k = 0; k < cols; ++k) d[k * nr + j] = T(0);
      }
    }
  }
}

template <typename T>
void unpack(const T* src, int64_t rows, int64_t cols, int nr, float* dst) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < rows; ++n) {
    const T* s = src + (n / nr) * cols * nr + n % nr;
    for (int64_t k = 0; k < cols; ++k) {
      if constexpr (sizeof(T) == 2) dst[n * cols + k] = from_bf16(s[k * nr]);
      else dst[n * cols + k] = s[k * nr];
    }
  }
}

int64_t elem_size(DType t) { return t == DType::bf16 ? 2 : 4; }

}  // namespace

int64_t PackedWeight::nbytes() const { return (rows + nr - 1) / nr * nr * cols * elem_size(dtype); }
const void* PackedWeight::ptr() const {
  return static_cast<const char*>(data.get()) + panel0 * cols * nr * elem_size(dtype);
}

PackedWeight pack_weight(const TensorView& weight, DType dtype, bool transposed) {
  expect_cpu(weight, "weight");
  expect_dtype(weight, DType::f32, "weight");
  expect_ndim(weight, 2, "weight");
  CF_CHECK(dtype == DType::f32 || dtype == DType::bf16, TypeError, "a weight packs to float32 or bfloat16, not ",
           dtype_name(dtype));
  for (int i = 0; i < 2; ++i) CF_CHECK(weight.strides[i] >= 0, ValueError, "weight must not have negative strides");
  PackedWeight p;
  p.rows = weight.shape[transposed ? 1 : 0];
  p.cols = weight.shape[transposed ? 0 : 1];
  p.nr = kernels().gemm_nr;
  p.dtype = dtype;
  const size_t bytes = (static_cast<size_t>(p.nbytes()) + 63) / 64 * 64;
  void* mem = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
  if (!mem) throw std::bad_alloc();
  p.data = std::shared_ptr<void>(mem, std::free);
  const int64_t s_row = weight.strides[transposed ? 1 : 0], s_col = weight.strides[transposed ? 0 : 1];
  if (dtype == DType::bf16)
    pack(weight.ptr<float>(), s_row, s_col, p.rows, p.cols, p.nr, static_cast<uint16_t*>(mem));
  else
    pack(weight.ptr<float>(), s_row, s_col, p.rows, p.cols, p.nr, static_cast<float*>(mem));
  return p;
}

void unpack_weight(const PackedWeight& w, const TensorView& out) {
  expect_out(out, {w.rows, w.cols}, "unpack");
  if (w.dtype == DType::bf16) unpack(static_cast<const uint16_t*>(w.ptr()), w.rows, w.cols, w.nr, out.ptr<float>());
  else unpack(static_cast<const float*>(w.ptr()), w.rows, w.cols, w.nr, out.ptr<float>());
}

PackedWeight slice_rows(const PackedWeight& w, int64_t start, int64_t stop) {
  CF_CHECK(0 <= start && start <= stop && stop <= w.rows, IndexError, "rows [", start, ", ", stop,
           ") are out of range for a packed weight of ", w.rows, " rows");
  if (start % w.nr == 0) {
    PackedWeight v = w;
    v.panel0 += start / w.nr;
    v.rows = stop - start;
    return v;
  }
  auto full = scratch(w.rows * w.cols);
  unpack_weight(w, TensorView(full.get(), DType::f32, {w.rows, w.cols}));
  TensorView rows(full.get() + start * w.cols, DType::f32, {stop - start, w.cols});
  return pack_weight(rows, w.dtype, false);  // bfloat16 values round-trip exactly
}

int64_t WeightRef::rows() const { return packed ? packed->rows : array->shape[0]; }
int64_t WeightRef::cols() const { return packed ? packed->cols : array->shape[1]; }
std::string WeightRef::shape_str() const {
  if (!packed) return array->shape_str();
  std::ostringstream os;
  os << "(" << packed->rows << ", " << packed->cols << ")";
  return os.str();
}

void set_gemm_weight(cpu::GemmArgs& g, const WeightRef& w, int64_t row0, std::unique_ptr<float[]>& tmp) {
  const int64_t K = w.cols();
  if (!w.packed) {
    g.w = w.array->ptr<float>() + row0 * K;
    g.ldw = K;
    return;
  }
  const PackedWeight& p = *w.packed;
  if (p.nr == kernels().gemm_nr && row0 % p.nr == 0) {
    const int64_t offset = row0 / p.nr * K * p.nr * elem_size(p.dtype);
    g.wp = static_cast<const char*>(p.ptr()) + offset;
    g.wp_bf16 = p.dtype == DType::bf16;
    return;
  }
  tmp = scratch(p.rows * K);
  unpack_weight(p, TensorView(tmp.get(), DType::f32, {p.rows, K}));
  g.w = tmp.get() + row0 * K;
  g.ldw = K;
}

}  // namespace cf::ops
